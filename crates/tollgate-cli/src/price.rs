//! `tollgate price`: what token counts cost at a tenant's prices (its
//! `pricing.overrides`, then the built-in table), computed exactly as the
//! hosts charge a request (`ModelPrice::cost_micros`, rounded up to the
//! micro-dollar).
//!
//! The model is named (`openai/gpt-4o`, or bare `gpt-4o`), or is a tier's
//! first model for an API format: `--tier premium --api anthropic` prices
//! what that tier would have served, as `tollgate replay` prices its
//! always-premium counterfactual.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate_core::api::ApiFormat;
use tollgate_core::config::{ModelRef, TenantConfig};
use tollgate_core::pricing::format_usd;
use tollgate_core::response::Usage;

/// What to price: a model or a tier's model, and the tokens.
pub struct Item<'a> {
    pub model: Option<&'a str>,
    pub tier: Option<&'a str>,
    pub api: ApiFormat,
    pub usage: Usage,
}

/// The configs given with `--config`, by tenant id; the example tenant when none.
pub fn load_configs(paths: &[PathBuf]) -> Result<BTreeMap<String, TenantConfig>, String> {
    let mut out = BTreeMap::new();
    if paths.is_empty() {
        let cfg = crate::load_config(None)?;
        out.insert(cfg.tenant_id.clone(), cfg);
    }
    for path in paths {
        let cfg = crate::load_config(Some(path))?;
        if out.contains_key(&cfg.tenant_id) {
            return Err(format!("{}: tenant `{}` given twice", path.display(), cfg.tenant_id));
        }
        out.insert(cfg.tenant_id.clone(), cfg);
    }
    Ok(out)
}

/// `{"model","input_tokens","output_tokens","micros","usd"}` for one item
/// (`cached_input_tokens` too when there are any).
pub fn price_value(config: &TenantConfig, item: &Item<'_>) -> Result<Value, String> {
    let target = match (item.model, item.tier) {
        (Some(model), None) => ModelRef::parse(model).ok_or("the model name is empty")?,
        (None, Some(tier)) => tier_model(config, tier, item.api)?,
        (Some(_), Some(_)) => return Err("give a model or a tier, not both".into()),
        (None, None) => return Err("give a model or a tier".into()),
    };
    let price = config.price(&target.model).ok_or_else(|| {
        format!(
            "no price for `{}`: neither in the built-in table nor in tenant `{}`'s pricing.overrides",
            target.model, config.tenant_id
        )
    })?;
    let micros = price.cost_micros(&item.usage);
    let mut v = json!({
        "model": target.to_string(),
        "input_tokens": item.usage.input_tokens,
        "output_tokens": item.usage.output_tokens,
        "micros": micros,
        "usd": format_usd(micros),
    });
    if item.usage.cached_input_tokens > 0
        && let Value::Object(m) = &mut v
    {
        m.shift_insert(2, "cached_input_tokens".into(), json!(item.usage.cached_input_tokens));
    }
    Ok(v)
}

/// The first model of tier `name` that serves `api`.
fn tier_model(config: &TenantConfig, name: &str, api: ApiFormat) -> Result<ModelRef, String> {
    let tiers = &config.routing.tiers;
    let tier = tiers.iter().find(|t| t.name == name).ok_or_else(|| {
        let names: Vec<&str> = tiers.iter().map(|t| t.name.as_str()).collect();
        format!("tenant `{}` has no tier `{name}` (its tiers: {})", config.tenant_id, names.join(", "))
    })?;
    config.routing.tier_chain(tier, api).into_iter().next().ok_or_else(|| {
        format!("tier `{name}` of tenant `{}` has no model for the {} API", config.tenant_id, api.as_str())
    })
}

/// One `--jsonl` line: `{"id", "tenant"?, "model" | "tier" (+ "api"),
/// "input_tokens", "output_tokens", "cached_input_tokens"?}`.
pub fn price_line(configs: &BTreeMap<String, TenantConfig>, line: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
    let text = |field: &str| -> Result<Option<&str>, String> {
        match v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("`{field}` must be a string")),
        }
    };
    let count = |field: &str, required: bool| -> Result<u64, String> {
        match v.get(field) {
            None | Some(Value::Null) if required => Err(format!("each line needs `{field}`")),
            None | Some(Value::Null) => Ok(0),
            Some(n) => n.as_u64().ok_or_else(|| format!("`{field}` must be a whole number of tokens")),
        }
    };
    let tenant = text("tenant")?;
    let config = match tenant {
        Some(id) => configs.get(id).ok_or_else(|| format!("no --config for tenant `{id}`"))?,
        None if configs.len() == 1 => configs.values().next().ok_or("no config")?,
        None => return Err("several --config given: each line needs `tenant`".into()),
    };
    let api = match text("api")? {
        None | Some("openai") => ApiFormat::OpenAi,
        Some("anthropic") => ApiFormat::Anthropic,
        Some(other) => return Err(format!("`api` is openai or anthropic, not `{other}`")),
    };
    let usage = Usage {
        input_tokens: count("input_tokens", true)?,
        output_tokens: count("output_tokens", true)?,
        cached_input_tokens: count("cached_input_tokens", false)?,
        ..Usage::default()
    };
    let mut out = price_value(config, &Item { model: text("model")?, tier: text("tier")?, api, usage })?;
    if let Value::Object(m) = &mut out {
        m.shift_insert(0, "id".into(), v.get("id").cloned().unwrap_or(Value::Null));
        if let Some(id) = tenant {
            m.shift_insert(1, "tenant".into(), json!(id));
        }
    }
    Ok(out)
}

/// The one-item form: exactly one config (or the example tenant).
pub fn run_one(configs: &BTreeMap<String, TenantConfig>, item: &Item<'_>) -> Result<ExitCode, String> {
    let mut all = configs.values();
    let (Some(config), None) = (all.next(), all.next()) else {
        return Err("give one --config (several are for --jsonl lines that name their tenant)".into());
    };
    crate::print_json(&price_value(config, item)?)?;
    Ok(ExitCode::SUCCESS)
}
