//! The Envoy plugin configuration parser: `PluginConfig::from_json` on any
//! bytes (what the filter reads in `on_configure`; a bad one is refused).
//!
//! Properties: a refusal names at least one problem and renders; parsing is
//! deterministic; every tenant of an accepted configuration is a valid
//! tenant config on its own and every route is header-safe.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::api::ApiFormat;
use tollgate_core::config::Provider;
use tollgate_core::plugin::PluginConfig;

fuzz_target!(|data: &[u8]| {
    match PluginConfig::from_json(data) {
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refusal names a problem");
            let _ = errors.to_string();
        }
        Ok(config) => {
            let again = PluginConfig::from_json(data).expect("deterministic");
            assert_eq!(format!("{config:?}"), format!("{again:?}"));
            let safe = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
            for provider in
                [Provider::OpenAi, Provider::Anthropic, Provider::Google, Provider::Mistral, Provider::WorkersAi]
            {
                let route = config.route(provider);
                assert!(safe(&route.cluster) && safe(&route.authority), "{route:?}");
                for api in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
                    let path = route.path(api);
                    assert!(safe(&path) && path.starts_with('/'), "route path {path:?}");
                }
            }
            for (id, tenant) in &config.tenants {
                assert_eq!(&tenant.tenant_id, id, "a tenant is filed under its own id");
            }
        }
    }
});
