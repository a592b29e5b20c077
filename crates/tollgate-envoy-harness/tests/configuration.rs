//! The plugin configuration: `on_configure` accepts a good one on every
//! worker and refuses a bad one with one log line naming what is wrong
//! (Envoy then refuses the listener).

// Helpers outside #[test] fns fail the test by panicking too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;
use tollgate_envoy_harness::{Host, LogLevel};

fn refusal_line(host: &Host) -> String {
    let lines = host.logs_containing("plugin configuration refused");
    assert_eq!(lines.len(), 1, "one refusal line expected; log:\n{}", host.log_text());
    assert!(lines[0].level >= LogLevel::Error, "refusal logged at {:?}", lines[0].level);
    lines[0].message.clone()
}

fn refused(config: &str) -> String {
    let env = provider_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut host = Host::new(config, &env);
    assert!(!host.configure(), "the filter accepted a bad configuration:\n{config}");
    refusal_line(&host)
}

#[test]
fn a_good_configuration_is_accepted_on_every_worker() {
    let config = plugin_config(&[
        like_example("tenant.json", "acme", json!({})),
        like_example("tenant-globex.json", "globex", json!({})),
    ]);
    let env = provider_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut host = Host::new(&config.to_string(), &env);
    host.add_worker();
    assert!(host.configure(), "refused:\n{}", host.log_text());
    assert_eq!(host.logs_containing("tollgate: configured 2 tenant(s)").len(), 2, "{}", host.log_text());
    assert!(host.logs_containing("refused").is_empty(), "{}", host.log_text());
}

#[test]
fn an_unknown_top_level_field_is_refused_and_named() {
    let mut config = plugin_config(&[routed_tenant("acme", json!({}))]);
    config["tennants"] = json!({});
    let line = refused(&config.to_string());
    assert!(line.contains("tennants"), "{line}");
}

#[test]
fn an_unknown_field_inside_a_tenant_is_refused_with_its_path() {
    let mut tenant = routed_tenant("acme", json!({}));
    tenant["cache"] = json!({"enabled": true, "ttl": 60});
    let line = refused(&plugin_config(&[tenant]).to_string());
    assert!(line.contains("tenants.acme") && line.contains("ttl"), "{line}");
}

#[test]
fn a_model_without_a_price_is_refused_naming_the_model() {
    let mut tenant = routed_tenant("acme", json!({}));
    tenant["routing"]["tiers"][0]["models"] = json!(["openai/gpt-9-turbo"]);
    let line = refused(&plugin_config(&[tenant]).to_string());
    assert!(line.contains("tenants.acme.routing") && line.contains("gpt-9-turbo"), "{line}");
}

#[test]
fn an_api_key_stored_in_clear_or_naming_no_tenant_is_refused() {
    let mut config = plugin_config(&[routed_tenant("acme", json!({}))]);
    config["api_keys"]["sk-plain-text-key"] = json!({"tenant_id": "acme", "label": "oops", "disabled": false});
    config["api_keys"][sha256_hex("other")] = json!({"tenant_id": "nobody", "label": "x", "disabled": false});
    let line = refused(&config.to_string());
    assert!(line.contains("api_keys.sk-plain-text-key"), "{line}");
    assert!(line.contains("names no tenant"), "{line}");
}

#[test]
fn a_tenant_filed_under_another_id_is_refused() {
    let mut config = plugin_config(&[routed_tenant("acme", json!({}))]);
    config["tenants"]["globex"] = routed_tenant("acme", json!({}));
    let line = refused(&config.to_string());
    assert!(line.contains("tenants.globex.tenant_id"), "{line}");
}

#[test]
fn an_unknown_provider_route_and_state_backend_are_refused() {
    let mut config = plugin_config(&[routed_tenant("acme", json!({}))]);
    config["providers"]["opneai"] = json!({"cluster": "x"});
    config["state"]["budgets"] = json!("memcached");
    let line = refused(&config.to_string());
    assert!(line.contains("budgets") || line.contains("memcached"), "{line}");
}

#[test]
fn configuration_that_is_not_json_is_refused() {
    for bad in ["", "not json", "{\"tenants\":", "[]", "null"] {
        let line = refused(bad);
        assert!(line.starts_with("tollgate: plugin configuration refused"), "{bad:?}: {line}");
    }
}
