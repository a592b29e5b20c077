//! Tenant configuration: the JSON a tenant keeps in KV (or an Envoy plugin
//! config carries per tenant).
//!
//! Parsed in two stages. Stage one deserialises into `Raw*` types that
//! refuse unknown fields, so a typo (`"ttl_secs"`) is an error rather than a
//! silently ignored setting. Stage two validates into [`TenantConfig`],
//! whose fields are all known-good: prices resolved, thresholds ordered,
//! dollar amounts in integer micro-dollars. Every error names its JSON path.

use crate::api::ApiFormat;
use crate::classify::{ClassifierConfig, RawClassifierConfig};
use crate::cooldown::{CooldownSettings, RawCooldown};
use crate::escalation::{EscalationSettings, RawEscalation};
use crate::pricing::{ModelPrice, builtin_price};
use crate::translate::TranslationMode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

// The `budgets` section lives in `budget`, next to the ledger it configures,
// and `Provider`/`ModelRef` in `provider`, so that neither needs this module;
// re-exported so the whole tenant config can still be named from here.
pub use crate::budget::{
    BudgetLimit, Budgets, DEFAULT_OUTPUT_RESERVATION, FailureMode, OnExhausted, RawBudgetLimit, RawBudgets,
};
pub use crate::provider::{ModelRef, Provider};

/// The schema version this build reads.
pub const CONFIG_VERSION: u32 = 1;

// ---------------------------------------------------------------- raw stage

/// A tenant's configuration as written. See `docs/config.md` and
/// `schema/tenant-config.schema.json`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawTenantConfig {
    /// Schema version; must be 1.
    pub version: u32,
    /// The tenant this config belongs to; API-key records point here.
    pub tenant_id: String,
    pub routing: RawRouting,
    #[serde(default)]
    pub budgets: Option<RawBudgets>,
    #[serde(default)]
    pub cache: Option<RawCache>,
    #[serde(default)]
    pub pricing: Option<RawPricing>,
    #[serde(default)]
    pub classifier: Option<RawClassifierConfig>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    /// Retry an unresolved cheaper-tier answer on the next tier (off by default).
    #[serde(default)]
    pub escalation: Option<RawEscalation>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawRouting {
    /// Tiers from cheapest to most capable. A prompt goes to the first tier
    /// whose `up_to_score` is at least the prompt's score; the last tier takes the rest.
    pub tiers: Vec<RawTier>,
    /// Models that pass through unrouted when a client names them
    /// (`"provider/model"` or a bare model name).
    #[serde(default)]
    pub pinned_models: Vec<String>,
    /// Model names clients may send that are routed like `tollgate/auto`.
    /// Exact names or a prefix ending in `*`, e.g. `"gpt-4o*"`.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Pass over a model that keeps failing, for a while, in every chain
    /// (off unless present).
    #[serde(default)]
    pub cooldown: Option<RawCooldown>,
    /// What `POST /v1/embeddings` with a virtual model name (`tollgate/auto`)
    /// is sent to (absent: such a request is refused).
    #[serde(default)]
    pub embeddings: Option<RawEmbeddingRoute>,
    /// Responses API built-in tools (`web_search`, `file_search`, …) a
    /// request may declare. Their calls are billed by the provider beyond
    /// tokens and are not metered, so none is allowed unless listed.
    #[serde(default)]
    pub builtin_tools: Vec<String>,
    /// When a tier's models whose provider does not speak the client's API
    /// are used, their requests and answers translated: `when_needed`
    /// (default: only when the tier has no model of the client's API),
    /// `native_first` (after those, as fallbacks), `as_listed` (in the
    /// tier's order) or `off`.
    #[serde(default)]
    pub translation: TranslationMode,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawEmbeddingRoute {
    /// Ordered fallback chain of embedding models, `"provider/model"`.
    pub models: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawTier {
    pub name: String,
    /// Highest classifier score (0..1) this tier takes; omit on the last tier.
    #[serde(default)]
    pub up_to_score: Option<f64>,
    /// Ordered fallback chain, `"provider/model"`: the first model that speaks
    /// the request's API is tried first, then the next on 429/5xx/timeout.
    pub models: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawCache {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Also cache requests with `temperature > 0` (or no temperature, whose
    /// provider default is 1). Off by default: such answers are meant to vary.
    #[serde(default)]
    pub allow_nonzero_temperature: Option<bool>,
    /// Cache a prompt only the second time it is seen, so one-off prompts cost no writes.
    #[serde(default)]
    pub doorkeeper: Option<bool>,
    /// Largest response body stored.
    #[serde(default)]
    pub max_entry_bytes: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawPricing {
    /// Model name → price in dollars per million tokens.
    #[serde(default)]
    pub overrides: BTreeMap<String, RawPrice>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawPrice {
    pub input: f64,
    /// Defaults to `input`.
    #[serde(default)]
    pub cached_input: Option<f64>,
    pub output: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawLimits {
    /// Largest request body accepted (413 above). Default 4 MiB.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Largest prompt accepted, in tokens (400 above). Default: no limit.
    #[serde(default)]
    pub max_prompt_tokens: Option<u64>,
}

// ----------------------------------------------------------- validated stage

#[derive(Clone, Debug, PartialEq)]
pub struct Tier {
    pub name: String,
    /// Highest score this tier takes; 1.0 on the last tier.
    pub up_to_score: f64,
    pub models: Vec<ModelRef>,
}

impl Tier {
    /// The fallback chain for requests in `api` format.
    pub fn chain(&self, api: ApiFormat) -> impl Iterator<Item = &ModelRef> {
        self.models.iter().filter(move |m| api.spoken_by(m.provider))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    pub tiers: Vec<Tier>,
    pub pinned: Vec<ModelRef>,
    pub allowed: Vec<String>,
    /// None: cooldowns are off for this tenant.
    pub cooldown: Option<CooldownSettings>,
    /// The chain for embeddings requests that name a virtual model (empty:
    /// none configured).
    pub embeddings: Vec<ModelRef>,
    /// Responses API built-in tools requests may declare.
    pub builtin_tools: Vec<String>,
    pub translation: TranslationMode,
}

impl Routing {
    /// The tier a score falls in: the first whose `up_to_score` covers it.
    pub fn tier_for_score(&self, score: f64) -> usize {
        self.tiers.iter().position(|t| score <= t.up_to_score).unwrap_or(self.tiers.len().saturating_sub(1))
    }

    /// The tier that serves a request wanting tier `wanted` in `api` format:
    /// `wanted` itself if it has a model for that API, else the nearest tier
    /// that does, preferring more capable ones. None if no tier has one.
    pub fn serving_tier(&self, wanted: usize, api: ApiFormat) -> Option<usize> {
        let order = (wanted..self.tiers.len()).chain((0..wanted.min(self.tiers.len())).rev());
        order.into_iter().find(|&i| self.tiers.get(i).is_some_and(|t| !self.tier_chain(t, api).is_empty()))
    }

    /// `tier`'s chain for requests in `api` format under `translation`
    /// (before a request's own fields are checked: the plan also skips a
    /// model that cannot express them).
    pub fn tier_chain(&self, tier: &Tier, api: ApiFormat) -> Vec<ModelRef> {
        let native: Vec<ModelRef> = tier.chain(api).cloned().collect();
        let reachable = |m: &&ModelRef| crate::translate::provider_api(api, m.provider).is_some();
        match self.translation {
            TranslationMode::Off => native,
            TranslationMode::WhenNeeded if !native.is_empty() => native,
            TranslationMode::WhenNeeded | TranslationMode::AsListed => {
                tier.models.iter().filter(reachable).cloned().collect()
            }
            TranslationMode::NativeFirst => {
                let mut chain = native;
                let others: Vec<ModelRef> =
                    tier.models.iter().filter(reachable).filter(|m| !chain.contains(m)).cloned().collect();
                chain.extend(others);
                chain
            }
        }
    }

    pub fn tier_index(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }

    pub fn pinned(&self, model: &str) -> Option<&ModelRef> {
        self.pinned.iter().find(|m| m.model == model || m.to_string() == model)
    }

    pub fn is_allowed(&self, model: &str) -> bool {
        self.allowed.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => model == pattern,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CacheSettings {
    pub enabled: bool,
    pub ttl_seconds: u64,
    pub allow_nonzero_temperature: bool,
    pub doorkeeper: bool,
    pub max_entry_bytes: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_prompt_tokens: Option<u64>,
}

/// A validated tenant configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantConfig {
    pub tenant_id: String,
    pub routing: Routing,
    pub budgets: Budgets,
    pub cache: CacheSettings,
    pub price_overrides: BTreeMap<String, ModelPrice>,
    pub classifier: ClassifierConfig,
    pub limits: Limits,
    pub escalation: EscalationSettings,
}

/// Defaults, documented in docs/config.md.
pub const DEFAULT_CACHE_TTL_SECONDS: u64 = 3600;
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 256 * 1024;
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Workers KV refuses an `expirationTtl` below 60 seconds.
pub const MIN_CACHE_TTL_SECONDS: u64 = 60;
pub const MAX_CACHE_TTL_SECONDS: u64 = 30 * 24 * 3600;

impl TenantConfig {
    /// The request header naming the end user (`budgets.users.header`), for
    /// the host to read into [`crate::engine::Inbound::user_header`].
    pub fn user_header(&self) -> Option<&str> {
        self.budgets.users.as_ref().and_then(|u| u.header.as_deref())
    }

    /// Parse and validate tenant config JSON.
    pub fn from_json(bytes: &[u8]) -> Result<TenantConfig, ConfigErrors> {
        let raw = parse_raw::<RawTenantConfig>(bytes)?;
        TenantConfig::try_from(raw)
    }

    /// The price of a model: the tenant's override, else the built-in table.
    pub fn price(&self, model: &str) -> Option<ModelPrice> {
        self.price_overrides.get(model).copied().or_else(|| builtin_price(model))
    }

    /// The configuration the CLI uses when none is given: the example tenant
    /// shipped with the crate (cheap and premium tiers for both APIs).
    pub fn example() -> Result<TenantConfig, ConfigErrors> {
        TenantConfig::from_json(EXAMPLE_TENANT_JSON.as_bytes())
    }
}

/// The example tenant configuration, also shipped as `examples/tenant.json`.
pub const EXAMPLE_TENANT_JSON: &str = include_str!("../../../examples/tenant.json");

/// Stage one: JSON → a `Raw*` type, with the failing path on error.
pub fn parse_raw<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigErrors> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    match value {
        Ok(v) => {
            de.end().map_err(|e| ConfigErrors::one("", format!("trailing characters after the JSON value: {e}")))?;
            Ok(v)
        }
        Err(err) => {
            let path = err.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let inner = err.into_inner();
            Err(ConfigErrors::one(path, strip_serde_position(&inner.to_string())))
        }
    }
}

fn strip_serde_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// One problem in a configuration, with its JSON path (e.g. `routing.tiers[0].models[1]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// All the problems found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError { path: path.into(), message: message.into() }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError { path: path.into(), message: message.into() });
    }
}

impl TryFrom<RawTenantConfig> for TenantConfig {
    type Error = ConfigErrors;

    fn try_from(raw: RawTenantConfig) -> Result<Self, Self::Error> {
        let mut p = Problems::default();
        if raw.version != CONFIG_VERSION {
            p.add("version", format!("unsupported version {}; this build reads version {CONFIG_VERSION}", raw.version));
        }
        let tenant_id = raw.tenant_id.trim().to_owned();
        if tenant_id.is_empty()
            || tenant_id.len() > 128
            || !tenant_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            p.add("tenant_id", "must be 1-128 characters of letters, digits, '-', '_' or '.'");
        }

        let price_overrides = validate_pricing(raw.pricing.unwrap_or_default(), &mut p);
        let is_priced = |model: &str| price_overrides.contains_key(model) || builtin_price(model).is_some();

        let routing = validate_routing(raw.routing, &mut p, &is_priced);
        let budgets = validate_budgets(raw.budgets, &raw.tenant_id, &mut p);
        let cache = validate_cache(raw.cache, &mut p);
        let limits = validate_limits(raw.limits, &mut p);
        let classifier = match raw.classifier.map(ClassifierConfig::try_from).transpose() {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => {
                let path = if e.path.is_empty() { "classifier".to_owned() } else { format!("classifier.{}", e.path) };
                p.add(path, e.message);
                ClassifierConfig::default()
            }
        };

        let escalation = match EscalationSettings::from_raw(raw.escalation.unwrap_or_default()) {
            Ok(e) => e,
            Err((path, message)) => {
                p.add(format!("escalation.{path}"), message);
                EscalationSettings::default()
            }
        };

        if !p.0.is_empty() {
            return Err(ConfigErrors(p.0));
        }
        Ok(TenantConfig { tenant_id, routing, budgets, cache, price_overrides, classifier, limits, escalation })
    }
}

fn validate_pricing(raw: RawPricing, p: &mut Problems) -> BTreeMap<String, ModelPrice> {
    let mut out = BTreeMap::new();
    for (model, price) in raw.overrides {
        let path = format!("pricing.overrides.{model}");
        let cached = price.cached_input.unwrap_or(price.input);
        match ModelPrice::from_usd_per_mtok(price.input, cached, price.output) {
            Some(mp) => {
                out.insert(model, mp);
            }
            None => p.add(path, "prices must be finite, non-negative dollars per million tokens"),
        }
    }
    out
}

fn validate_routing(raw: RawRouting, p: &mut Problems, is_priced: &dyn Fn(&str) -> bool) -> Routing {
    let mut tiers = Vec::new();
    if raw.tiers.is_empty() {
        p.add("routing.tiers", "at least one tier is required");
    }
    let last = raw.tiers.len().saturating_sub(1);
    let mut previous = f64::NEG_INFINITY;
    for (i, tier) in raw.tiers.into_iter().enumerate() {
        let base = format!("routing.tiers[{i}]");
        let name = tier.name.trim().to_owned();
        if name.is_empty() || name == "auto" || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
            p.add(format!("{base}.name"), "must be letters, digits, '-' or '_', and not `auto`");
        }
        if tiers.iter().any(|t: &Tier| t.name == name) {
            p.add(format!("{base}.name"), format!("duplicate tier name `{name}`"));
        }
        let up_to = match (tier.up_to_score, i == last) {
            (Some(s), _) if !(0.0..=1.0).contains(&s) => {
                p.add(format!("{base}.up_to_score"), "must be between 0 and 1");
                1.0
            }
            (Some(s), _) if s <= previous => {
                p.add(format!("{base}.up_to_score"), "must be greater than the previous tier's");
                s
            }
            (Some(s), _) => s,
            (None, true) => 1.0,
            (None, false) => {
                p.add(format!("{base}.up_to_score"), "required on every tier but the last");
                1.0
            }
        };
        previous = up_to;
        if tier.models.is_empty() {
            p.add(format!("{base}.models"), "at least one model is required");
        }
        let mut models = Vec::new();
        for (j, text) in tier.models.iter().enumerate() {
            let path = format!("{base}.models[{j}]");
            match ModelRef::parse(text) {
                Some(m) if !is_priced(&m.model) => {
                    p.add(path, format!("no price known for `{}`; add it under pricing.overrides", m.model))
                }
                Some(m) => models.push(m),
                None => p.add(path, "must be \"provider/model\" or a model name"),
            }
        }
        tiers.push(Tier { name, up_to_score: if i == last { 1.0 } else { up_to }, models });
    }
    let mut pinned = Vec::new();
    for (j, text) in raw.pinned_models.iter().enumerate() {
        let path = format!("routing.pinned_models[{j}]");
        match ModelRef::parse(text) {
            Some(m) if !is_priced(&m.model) => {
                p.add(path, format!("no price known for `{}`; add it under pricing.overrides", m.model))
            }
            Some(m) => pinned.push(m),
            None => p.add(path, "must be \"provider/model\" or a model name"),
        }
    }
    let mut allowed = Vec::new();
    for (j, pattern) in raw.allowed_models.into_iter().enumerate() {
        let star = pattern.find('*');
        if pattern.trim().is_empty() || star.is_some_and(|i| i != pattern.len() - 1) {
            p.add(format!("routing.allowed_models[{j}]"), "must be a model name, or a prefix ending in a single `*`");
        } else {
            allowed.push(pattern);
        }
    }
    let cooldown = match raw.cooldown.map(CooldownSettings::from_raw).transpose() {
        Ok(c) => c,
        Err((path, message)) => {
            p.add(format!("routing.cooldown.{path}"), message);
            None
        }
    };
    let mut embeddings = Vec::new();
    if let Some(route) = raw.embeddings {
        if route.models.is_empty() {
            p.add("routing.embeddings.models", "at least one model is required");
        }
        for (j, text) in route.models.iter().enumerate() {
            let path = format!("routing.embeddings.models[{j}]");
            match ModelRef::parse(text) {
                Some(m) if !is_priced(&m.model) => {
                    p.add(path, format!("no price known for `{}`; add it under pricing.overrides", m.model))
                }
                Some(m) if !ApiFormat::Embeddings.spoken_by(m.provider) => {
                    p.add(path, format!("{} has no OpenAI-compatible embeddings API", m.provider))
                }
                Some(m) => embeddings.push(m),
                None => p.add(path, "must be \"provider/model\" or a model name"),
            }
        }
    }
    Routing {
        tiers,
        pinned,
        allowed,
        cooldown,
        embeddings,
        builtin_tools: raw.builtin_tools,
        translation: raw.translation,
    }
}

fn validate_budgets(raw: Option<RawBudgets>, tenant_id: &str, p: &mut Problems) -> Budgets {
    let mut budgets =
        Budgets::from_raw(raw.unwrap_or_default(), |path, message| p.add(format!("budgets.{path}"), message));
    if let Some(alerts) = budgets.alerts.as_mut() {
        alerts.tenant_id = tenant_id.to_owned();
    }
    budgets
}

fn validate_cache(raw: Option<RawCache>, p: &mut Problems) -> CacheSettings {
    let enabled = raw.as_ref().and_then(|c| c.enabled).unwrap_or(true);
    let ttl_seconds = raw.as_ref().and_then(|c| c.ttl_seconds).unwrap_or(DEFAULT_CACHE_TTL_SECONDS);
    if !(MIN_CACHE_TTL_SECONDS..=MAX_CACHE_TTL_SECONDS).contains(&ttl_seconds) {
        p.add(
            "cache.ttl_seconds",
            format!(
                "must be between {MIN_CACHE_TTL_SECONDS} (Workers KV's minimum expiry) and {MAX_CACHE_TTL_SECONDS}"
            ),
        );
    }
    let max_entry_bytes = raw.as_ref().and_then(|c| c.max_entry_bytes).unwrap_or(DEFAULT_MAX_ENTRY_BYTES);
    // Workers KV values may be up to 25 MiB.
    if max_entry_bytes == 0 || max_entry_bytes > 25 * 1024 * 1024 {
        p.add("cache.max_entry_bytes", "must be between 1 byte and 25 MiB");
    }
    CacheSettings {
        enabled,
        ttl_seconds,
        allow_nonzero_temperature: raw.as_ref().and_then(|c| c.allow_nonzero_temperature).unwrap_or(false),
        doorkeeper: raw.as_ref().and_then(|c| c.doorkeeper).unwrap_or(true),
        max_entry_bytes,
    }
}

fn validate_limits(raw: Option<RawLimits>, p: &mut Problems) -> Limits {
    let max_body_bytes = raw.as_ref().and_then(|l| l.max_body_bytes).unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes < 1024 {
        p.add("limits.max_body_bytes", "must be at least 1024");
    }
    let max_prompt_tokens = raw.as_ref().and_then(|l| l.max_prompt_tokens);
    if max_prompt_tokens == Some(0) {
        p.add("limits.max_prompt_tokens", "must be at least 1");
    }
    Limits { max_body_bytes, max_prompt_tokens }
}

/// The JSON Schema of the tenant config (`schema/tenant-config.schema.json`).
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RawTenantConfig)).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn parse(json: &str) -> Result<TenantConfig, ConfigErrors> {
        TenantConfig::from_json(json.as_bytes())
    }

    const MINIMAL: &str =
        r#"{"version":1,"tenant_id":"t1","routing":{"tiers":[{"name":"only","models":["openai/gpt-4o-mini"]}]}}"#;

    #[test]
    fn the_shipped_example_config_is_valid() {
        let cfg = TenantConfig::example().unwrap();
        assert!(cfg.routing.tiers.len() >= 2);
    }

    #[test]
    fn a_minimal_config_gets_documented_defaults() {
        let cfg = parse(MINIMAL).unwrap();
        assert!(cfg.cache.enabled);
        assert_eq!(cfg.cache.ttl_seconds, DEFAULT_CACHE_TTL_SECONDS);
        assert_eq!(cfg.budgets.on_exhausted, OnExhausted::Reject);
        assert_eq!(cfg.budgets.store_failure, FailureMode::Closed);
        assert_eq!(cfg.routing.tiers[0].up_to_score, 1.0);
        assert_eq!(cfg.routing.cooldown, None, "cooldowns are off unless asked for");
    }

    #[test]
    fn cooldown_settings_get_defaults_and_are_validated() {
        let on = parse(&MINIMAL.replace(r#""tiers""#, r#""cooldown":{},"tiers""#)).unwrap();
        assert_eq!(on.routing.cooldown, Some(CooldownSettings { failures: 3, seconds: 30 }));
        let set = parse(&MINIMAL.replace(r#""tiers""#, r#""cooldown":{"failures":1,"seconds":4},"tiers""#)).unwrap();
        assert_eq!(set.routing.cooldown, Some(CooldownSettings { failures: 1, seconds: 4 }));
        let err = parse(&MINIMAL.replace(r#""tiers""#, r#""cooldown":{"seconds":0},"tiers""#)).unwrap_err();
        assert_eq!(err.0[0].path, "routing.cooldown.seconds");
        let err = parse(&MINIMAL.replace(r#""tiers""#, r#""cooldown":{"failure":2},"tiers""#)).unwrap_err();
        assert_eq!(err.0[0].path, "routing.cooldown.failure");
    }

    #[test]
    fn unknown_fields_are_errors_that_name_their_path() {
        let json = MINIMAL.replace(r#""models""#, r#""modles":[],"models""#);
        let err = parse(&json).unwrap_err();
        assert_eq!(err.0[0].path, "routing.tiers[0].modles");
        assert!(err.0[0].message.contains("modles"), "{err}");
    }

    #[test]
    fn wrong_types_name_their_path() {
        let json = r#"{"version":1,"tenant_id":"t","routing":{"tiers":[]},"cache":{"ttl_seconds":"long"}}"#;
        let err = parse(json).unwrap_err();
        assert_eq!(err.0[0].path, "cache.ttl_seconds");
    }

    #[test]
    fn validation_collects_every_problem_with_its_path() {
        let json = r#"{"version":2,"tenant_id":"bad id!","routing":{"tiers":[
            {"name":"cheap","up_to_score":0.7,"models":["openai/gpt-4o-mini","openai/no-such-model"]},
            {"name":"cheap","up_to_score":0.5,"models":[]}]},
            "budgets":{"limits":[{"window":"day"}],"soft_threshold_pct":150},
            "cache":{"ttl_seconds":5}}"#;
        let err = parse(json).unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "version",
            "tenant_id",
            "routing.tiers[0].models[1]",
            "routing.tiers[1].name",
            "routing.tiers[1].up_to_score",
            "routing.tiers[1].models",
            "budgets.limits[0]",
            "budgets.soft_threshold_pct",
            "cache.ttl_seconds",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    #[test]
    fn tenant_price_overrides_win_over_the_builtin_table() {
        let json = MINIMAL.replace(
            r#""routing""#,
            r#""pricing":{"overrides":{"gpt-4o-mini":{"input":1,"output":2},"my-model":{"input":0.5,"output":1}}},"routing""#,
        );
        let cfg = parse(&json).unwrap();
        assert_eq!(cfg.price("gpt-4o-mini").unwrap().input, 1_000_000);
        assert_eq!(cfg.price("my-model").unwrap().cached_input, 500_000);
    }

    #[test]
    fn scores_map_to_the_first_tier_that_covers_them() {
        let cfg = TenantConfig::example().unwrap();
        assert_eq!(cfg.routing.tier_for_score(0.0), 0);
        assert_eq!(cfg.routing.tier_for_score(1.0), cfg.routing.tiers.len() - 1);
    }

    #[test]
    fn with_translation_off_a_tier_without_a_model_for_the_api_hands_over_to_the_nearest_capable_one() {
        let json = r#"{"version":1,"tenant_id":"t","routing":{"translation":"off","tiers":[
            {"name":"a","up_to_score":0.3,"models":["anthropic/claude-3-5-haiku-latest"]},
            {"name":"b","up_to_score":0.6,"models":["openai/gpt-4o-mini"]},
            {"name":"c","models":["anthropic/claude-sonnet-4-5"]}]}}"#;
        let r = parse(json).unwrap().routing;
        assert_eq!(r.serving_tier(0, ApiFormat::OpenAi), Some(1));
        assert_eq!(r.serving_tier(2, ApiFormat::OpenAi), Some(1));
        assert_eq!(r.serving_tier(1, ApiFormat::Anthropic), Some(2));
        assert_eq!(r.serving_tier(0, ApiFormat::Anthropic), Some(0));
    }

    #[test]
    fn with_translation_every_tier_serves_every_chat_api_and_chains_follow_the_mode() {
        let tiers = r#""tiers":[{"name":"a","models":["anthropic/claude-3-5-haiku-latest","openai/gpt-4o-mini"]}]"#;
        let chain = |mode: &str, api: ApiFormat| {
            let json = format!(r#"{{"version":1,"tenant_id":"t","routing":{{"translation":"{mode}",{tiers}}}}}"#);
            let r = parse(&json).unwrap().routing;
            let tier = r.tiers[0].clone();
            r.tier_chain(&tier, api).iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        assert_eq!(chain("when_needed", ApiFormat::OpenAi), ["openai/gpt-4o-mini"]);
        assert_eq!(
            chain("native_first", ApiFormat::OpenAi),
            ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"]
        );
        assert_eq!(chain("as_listed", ApiFormat::OpenAi), ["anthropic/claude-3-5-haiku-latest", "openai/gpt-4o-mini"]);
        assert_eq!(chain("off", ApiFormat::Anthropic), ["anthropic/claude-3-5-haiku-latest"]);
        assert!(chain("as_listed", ApiFormat::Embeddings).iter().all(|m| m.starts_with("openai/")));
    }

    #[test]
    fn allowed_model_patterns_match_exactly_or_by_prefix() {
        let json = MINIMAL.replace(r#""tiers""#, r#""allowed_models":["gpt-4o*","exact"],"tiers""#);
        let cfg = parse(&json).unwrap();
        assert!(cfg.routing.is_allowed("gpt-4o-2024-08-06"));
        assert!(cfg.routing.is_allowed("exact"));
        assert!(!cfg.routing.is_allowed("exactly"));
    }
}
