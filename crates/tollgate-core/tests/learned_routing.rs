//! A tenant that routes with the learned router: the compiled-in model, or
//! its own model attached by the host; the score the plan routes by is the
//! model's score of the user's text and the heuristic features.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use std::sync::Arc;
use tollgate_core::api::ApiFormat;
use tollgate_core::config::TenantConfig;
use tollgate_core::engine::{self, Inbound, Plan};
use tollgate_core::learned::{self, LinearRouter};
use tollgate_core::plugin::PluginConfig;
use tollgate_core::request::ChatRequest;

fn tenant(classifier: serde_json::Value) -> TenantConfig {
    let c = json!({
        "version": 1, "tenant_id": "t1",
        "routing": {"tiers": [
            {"name": "cheap", "up_to_score": 0.5, "models": ["openai/gpt-4o-mini"]},
            {"name": "premium", "models": ["openai/gpt-4o"]}
        ]},
        "classifier": classifier
    });
    TenantConfig::from_json(c.to_string().as_bytes()).unwrap()
}

fn plan(config: &TenantConfig, prompt: &str) -> Plan {
    let body = json!({"model": "tollgate/auto", "messages": [{"role": "user", "content": prompt}]}).to_string();
    let inbound = Inbound {
        tenant_id: "t1",
        api: ApiFormat::OpenAi,
        body: body.as_bytes(),
        cache_control: None,
        now: 1_795_000_000,
        entropy: [3; 16],
        key: None,
        user_header: None,
        tags_header: None,
    };
    Plan::new(config, &inbound).unwrap()
}

fn features(config: &TenantConfig, prompt: &str) -> Vec<f64> {
    let body = json!({"model": "tollgate/auto", "messages": [{"role": "user", "content": prompt}]}).to_string();
    let req = ChatRequest::parse(ApiFormat::OpenAi, body.as_bytes(), usize::MAX).unwrap();
    let tokens = tollgate_core::count::prompt_tokens(&req, &req.model).tokens;
    engine::classify_request(&req, tokens, config).features.iter().map(|f| f.value).collect()
}

const PROMPT: &str = "Prove that the square root of two is irrational, step by step.";

#[test]
fn the_compiled_in_model_parses_and_fits_the_weight_budget() {
    let model = learned::builtin().expect("models/default-router.json is a valid model");
    let bytes = (model.ngram_weights.len() + model.feature_weights.len()) * 4;
    assert!(bytes <= 256 * 1024, "{bytes} bytes of weights");
}

#[test]
fn a_learned_tenant_routes_by_the_compiled_in_models_score() {
    let config = tenant(json!({"router": "learned"}));
    let p = plan(&config, PROMPT);
    let expected = learned::builtin().unwrap().score(PROMPT, &features(&config, PROMPT));
    assert_eq!(p.score, expected);
    assert!(p.reasons[0].starts_with("learned router ("), "{:?}", p.reasons);
    let heuristic = plan(&tenant(json!({})), PROMPT);
    assert_ne!(heuristic.score, p.score, "the heuristic router scores differently");
}

#[test]
fn a_tenants_own_model_replaces_the_compiled_in_one_once_attached() {
    let mut config = tenant(json!({"router": "learned", "model_key": "model:t1"}));
    assert!(config.classifier.needs_model());
    let mut own = learned::builtin().unwrap().clone();
    own.bias += 3.0;
    config.classifier.attach_model(Arc::new(own.clone()));
    assert!(!config.classifier.needs_model());
    let p = plan(&config, PROMPT);
    assert_eq!(p.score, own.score(PROMPT, &features(&config, PROMPT)));
}

#[test]
fn a_model_key_without_the_learned_router_is_refused() {
    let c = json!({"version": 1, "tenant_id": "t1",
        "routing": {"tiers": [{"name": "only", "models": ["openai/gpt-4o"]}]},
        "classifier": {"model_key": "model:x"}});
    let err = TenantConfig::from_json(c.to_string().as_bytes()).unwrap_err().to_string();
    assert!(err.contains("classifier.model_key"), "{err}");
}

#[test]
fn a_broken_model_file_is_refused_with_the_reason() {
    let mut model = learned::builtin().unwrap().clone();
    model.ngram_weights.pop();
    let err = LinearRouter::from_json(&serde_json::to_vec(&model).unwrap()).unwrap_err().to_string();
    assert!(err.contains("n-gram weights"), "{err}");
    assert!(LinearRouter::from_json(b"{\"kind\": 1}").unwrap_err().to_string().contains("not a model file"));
}

#[test]
fn the_envoy_plugin_config_attaches_named_models_and_refuses_unknown_names() {
    let tenant_json = json!({"version": 1, "tenant_id": "t1",
        "routing": {"tiers": [{"name": "only", "models": ["openai/gpt-4o"]}]},
        "classifier": {"router": "learned", "model_key": "m1"}});
    let key = "0".repeat(64);
    let model = serde_json::to_value(learned::builtin().unwrap()).unwrap();
    let with = json!({"tenants": {"t1": tenant_json}, "api_keys": {key.clone(): {"tenant_id": "t1"}}, "models": {"m1": model}});
    let parsed = PluginConfig::from_json(with.to_string().as_bytes()).unwrap();
    assert!(!parsed.tenants["t1"].classifier.needs_model());
    let without = json!({"tenants": {"t1": tenant_json}, "api_keys": {key: {"tenant_id": "t1"}}});
    let err = PluginConfig::from_json(without.to_string().as_bytes()).unwrap_err().to_string();
    assert!(err.contains("tenants.t1.classifier.model_key"), "{err}");
}
