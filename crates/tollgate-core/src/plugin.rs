//! The Envoy filter's plugin configuration: every tenant, its hashed API
//! keys, where each provider is reached, and which backend holds budgets
//! and the cache.
//!
//! Parsed in two stages like tenant configs: [`RawPluginConfig`] (unknown
//! fields refused) then [`PluginConfig`] via `TryFrom`, which validates every
//! tenant with the same rules the Worker applies to its KV configs. The
//! filter parses it once in `on_configure`; `tollgate config validate
//! --envoy` checks the same file offline.

use crate::auth::ApiKeyRecord;
use crate::budget::scope::KeyScope;
use crate::config::{ConfigError, ConfigErrors, Provider, RawTenantConfig, TenantConfig, parse_raw};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginConfig {
    pub tenants: BTreeMap<String, RawTenantConfig>,
    pub api_keys: BTreeMap<String, ApiKeyRecord>,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProviderRoute>,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub metrics: RawMetrics,
    pub upstream_timeout_ms: Option<u64>,
    /// The Envoy cluster tenants' alert webhooks are sent through (one
    /// that reaches their URLs, e.g. a dynamic forward proxy); without it,
    /// alerts are logged only.
    #[serde(default)]
    pub alerts_cluster: Option<String>,
    /// Learned routers (`tollgate train`'s output) by name, for tenants whose
    /// `classifier.model_key` names one. Parsed and checked once, here.
    #[serde(default)]
    pub models: BTreeMap<String, crate::learned::LinearRouter>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProviderRoute {
    pub cluster: Option<String>,
    pub authority: Option<String>,
    pub path_prefix: Option<String>,
    pub api_key_env: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub budgets: Option<BudgetBackend>,
    pub cache: Option<CacheBackend>,
    pub redis: Option<RawRedis>,
    pub local_cache_slots: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub cluster: Option<String>,
    pub authority: Option<String>,
    pub timeout_ms: Option<u64>,
    pub key_prefix: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    #[serde(default)]
    pub per_tenant: bool,
}

/// Where budgets live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetBackend {
    /// Proxy-wasm shared data: shared by this Envoy's worker threads only.
    #[default]
    Local,
    /// Redis through webdis: shared by every Envoy pointed at it.
    Redis,
}

/// Where cached answers live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheBackend {
    #[default]
    Local,
    Redis,
    Off,
}

/// How the filter reaches one provider through Envoy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderRoute {
    /// The Envoy cluster fallbacks are dispatched to (the route table picks
    /// the first attempt's cluster from `x-tollgate-provider`).
    pub cluster: String,
    pub authority: String,
    /// Prepended to `/chat/completions` or `/messages`.
    pub path_prefix: String,
    /// The environment variable (WASI environ, from the VM's
    /// `environment_variables`) holding the provider's API key.
    pub api_key_env: String,
}

impl ProviderRoute {
    /// The route used when the config names none for `provider`.
    pub fn default_for(provider: Provider) -> ProviderRoute {
        let (authority, path_prefix) = match provider {
            Provider::OpenAi => ("api.openai.com", "/v1"),
            Provider::Anthropic => ("api.anthropic.com", "/v1"),
            Provider::Google => ("generativelanguage.googleapis.com", "/v1beta/openai"),
            Provider::Mistral => ("api.mistral.ai", "/v1"),
            // Workers AI's path carries an account id: configure it.
            Provider::WorkersAi => ("api.cloudflare.com", "/client/v4/accounts/ACCOUNT_ID/ai/v1"),
        };
        ProviderRoute {
            cluster: provider.as_str().to_owned(),
            authority: authority.to_owned(),
            path_prefix: path_prefix.to_owned(),
            api_key_env: crate::upstream::secret_name(provider).to_owned(),
        }
    }

    /// The request path for `api` on this provider.
    pub fn path(&self, api: crate::ApiFormat) -> String {
        crate::upstream::endpoint_url(&self.path_prefix, api)
    }
}

/// Redis as reached through webdis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    pub cluster: String,
    pub authority: String,
    pub timeout_ms: u64,
    pub key_prefix: String,
}

/// A validated plugin configuration.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    pub tenants: BTreeMap<String, Arc<TenantConfig>>,
    /// sha256 hex of the key → its record.
    pub api_keys: BTreeMap<String, ApiKeyRecord>,
    /// sha256 hex of the key → the key as a budget level (its own limits).
    pub key_scopes: BTreeMap<String, Arc<KeyScope>>,
    pub providers: BTreeMap<Provider, ProviderRoute>,
    pub budgets: BudgetBackend,
    pub cache: CacheBackend,
    pub redis: RedisSettings,
    pub local_cache_slots: usize,
    pub per_tenant_metrics: bool,
    pub upstream_timeout_ms: u64,
    pub alerts_cluster: Option<String>,
}

/// The most node-local cache slots allowed: each slot is one shared-data key.
pub const MAX_LOCAL_CACHE_SLOTS: usize = 1 << 20;

impl PluginConfig {
    pub fn from_json(bytes: &[u8]) -> Result<PluginConfig, ConfigErrors> {
        PluginConfig::try_from(parse_raw::<RawPluginConfig>(bytes)?)
    }

    pub fn route(&self, provider: Provider) -> ProviderRoute {
        self.providers.get(&provider).cloned().unwrap_or_else(|| ProviderRoute::default_for(provider))
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Cluster names, authorities and prefixes go into pseudo-headers: no
/// whitespace or control characters.
fn is_header_safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

impl TryFrom<RawPluginConfig> for PluginConfig {
    type Error = ConfigErrors;

    fn try_from(raw: RawPluginConfig) -> Result<Self, ConfigErrors> {
        let mut problems: Vec<ConfigError> = Vec::new();

        let mut models = BTreeMap::new();
        for (name, model) in raw.models {
            match model.validate() {
                Ok(()) => {
                    models.insert(name, Arc::new(model));
                }
                Err(e) => add(&mut problems, format!("models.{name}"), &e.to_string()),
            }
        }
        let mut tenants = BTreeMap::new();
        for (id, raw_tenant) in raw.tenants {
            match TenantConfig::try_from(raw_tenant) {
                Ok(t) if t.tenant_id != id => {
                    add(&mut problems, format!("tenants.{id}.tenant_id"), "must equal the key it is under")
                }
                Ok(mut t) => {
                    if let Some(key) = t.classifier.model_key().map(str::to_owned) {
                        match models.get(&key) {
                            Some(model) => t.classifier.attach_model(Arc::clone(model)),
                            None => add(
                                &mut problems,
                                format!("tenants.{id}.classifier.model_key"),
                                &format!("names no model under `models` (`{key}`)"),
                            ),
                        }
                    }
                    tenants.insert(id, Arc::new(t));
                }
                Err(errors) => {
                    for e in errors.0 {
                        let path = if e.path.is_empty() {
                            format!("tenants.{id}")
                        } else {
                            format!("tenants.{id}.{}", e.path)
                        };
                        add(&mut problems, path, &e.message);
                    }
                }
            }
        }
        let mut key_scopes = BTreeMap::new();
        for (hash, record) in &raw.api_keys {
            if !is_sha256_hex(hash) {
                add(
                    &mut problems,
                    format!("api_keys.{hash}"),
                    "must be the lower-case sha256 hex of the API key, not the key itself",
                );
            }
            if !tenants.contains_key(&record.tenant_id) {
                add(&mut problems, format!("api_keys.{hash}.tenant_id"), "names no tenant in `tenants`");
            }
            let scope = record.scope(hash, |path, message| {
                add(&mut problems, format!("api_keys.{hash}.{path}"), &message);
            });
            key_scopes.insert(hash.clone(), Arc::new(scope));
        }

        let mut providers = BTreeMap::new();
        for (name, route) in raw.providers {
            let Some(provider) = Provider::from_name(&name) else {
                add(
                    &mut problems,
                    format!("providers.{name}"),
                    "unknown provider (openai, anthropic, google, mistral, workers_ai)",
                );
                continue;
            };
            let d = ProviderRoute::default_for(provider);
            let r = ProviderRoute {
                cluster: route.cluster.unwrap_or(d.cluster),
                authority: route.authority.unwrap_or(d.authority),
                path_prefix: route.path_prefix.unwrap_or(d.path_prefix),
                api_key_env: route.api_key_env.unwrap_or(d.api_key_env),
            };
            for (field, value) in
                [("cluster", &r.cluster), ("authority", &r.authority), ("api_key_env", &r.api_key_env)]
            {
                if !is_header_safe(value) {
                    add(
                        &mut problems,
                        format!("providers.{name}.{field}"),
                        "must be non-empty, without spaces or control characters",
                    );
                }
            }
            if !r.path_prefix.starts_with('/') || !is_header_safe(&r.path_prefix) {
                add(
                    &mut problems,
                    format!("providers.{name}.path_prefix"),
                    "must start with `/` and contain no spaces",
                );
            }
            providers.insert(provider, r);
        }

        let redis_raw = raw.state.redis.unwrap_or_default();
        let redis = RedisSettings {
            cluster: redis_raw.cluster.unwrap_or_else(|| "webdis".to_owned()),
            authority: redis_raw.authority.unwrap_or_else(|| "webdis".to_owned()),
            timeout_ms: redis_raw.timeout_ms.unwrap_or(250),
            key_prefix: redis_raw.key_prefix.unwrap_or_else(|| "tollgate:".to_owned()),
        };
        if !is_header_safe(&redis.cluster) || !is_header_safe(&redis.authority) {
            add(&mut problems, "state.redis".into(), "cluster and authority must be non-empty, without spaces");
        }
        if redis.timeout_ms == 0 || redis.timeout_ms > 60_000 {
            add(&mut problems, "state.redis.timeout_ms".into(), "must be between 1 and 60000");
        }
        if redis.key_prefix.contains(['/', ' ']) {
            add(&mut problems, "state.redis.key_prefix".into(), "must not contain `/` or spaces");
        }
        let slots = raw.state.local_cache_slots.unwrap_or(4096);
        if slots == 0 || slots > MAX_LOCAL_CACHE_SLOTS {
            add(&mut problems, "state.local_cache_slots".into(), "must be between 1 and 1048576");
        }
        let upstream_timeout_ms = raw.upstream_timeout_ms.unwrap_or(60_000);
        if upstream_timeout_ms == 0 || upstream_timeout_ms > 600_000 {
            add(&mut problems, "upstream_timeout_ms".into(), "must be between 1 and 600000");
        }
        if tenants.is_empty() && problems.is_empty() {
            add(&mut problems, "tenants".into(), "must name at least one tenant");
        }
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        Ok(PluginConfig {
            tenants,
            api_keys: raw.api_keys,
            key_scopes,
            providers,
            budgets: raw.state.budgets.unwrap_or_default(),
            cache: raw.state.cache.unwrap_or_default(),
            redis,
            local_cache_slots: slots,
            per_tenant_metrics: raw.metrics.per_tenant,
            upstream_timeout_ms,
            alerts_cluster: raw.alerts_cluster.filter(|c| !c.is_empty()),
        })
    }
}

fn add(problems: &mut Vec<ConfigError>, path: String, message: &str) {
    problems.push(ConfigError { path, message: message.to_owned() });
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::EXAMPLE_TENANT_JSON;

    fn config_with(extra: &str) -> String {
        let key = crate::auth::hash_api_key("tg-live-acme");
        format!(
            r#"{{"tenants": {{"acme": {EXAMPLE_TENANT_JSON}}}, "api_keys": {{"{key}": {{"tenant_id": "acme"}}}}{extra}}}"#
        )
    }

    #[test]
    fn a_minimal_config_takes_defaults_for_providers_and_state() {
        let cfg = PluginConfig::from_json(config_with("").as_bytes()).unwrap();
        assert_eq!(cfg.budgets, BudgetBackend::Local);
        assert_eq!(cfg.cache, CacheBackend::Local);
        let openai = cfg.route(Provider::OpenAi);
        assert_eq!(
            (openai.cluster.as_str(), openai.path(crate::ApiFormat::OpenAi).as_str()),
            ("openai", "/v1/chat/completions")
        );
        assert_eq!(cfg.route(Provider::Anthropic).api_key_env, "ANTHROPIC_API_KEY");
    }

    #[test]
    fn errors_name_the_path_inside_the_plugin_config() {
        let bad = config_with(r#", "state": {"budgets": "postgres"}"#);
        let err = PluginConfig::from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with("state.budgets"), "{err}");
        let bad = config_with(r#", "providers": {"openai": {"cluster": "has space"}, "nope": {}}"#);
        let err = PluginConfig::from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("providers.openai.cluster") && err.contains("providers.nope"), "{err}");
        let raw_key = r#"{"tenants": {}, "api_keys": {"sk-plain": {"tenant_id": "ghost"}}}"#;
        let err = PluginConfig::from_json(raw_key.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("sha256") && err.contains("names no tenant"), "{err}");
        let inner = config_with("").replace(r#""tenant_id": "acme""#, r#""tenant_id": "other""#);
        let err = PluginConfig::from_json(inner.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("tenants.acme"), "{err}");
    }
}
