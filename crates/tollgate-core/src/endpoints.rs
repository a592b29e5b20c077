//! Bodies for the router's own endpoints, shared by both hosts.

use crate::budget::{self, BudgetState};
use crate::config::TenantConfig;
use crate::engine::AUTO_MODELS;
use serde_json::{Value, json};

/// `GET /v1/models`: the tenant's tiers as virtual models plus its pinned models.
pub fn models_list(config: &TenantConfig) -> Value {
    let mut data = vec![json!({"id": AUTO_MODELS[0], "object": "model", "created": 0, "owned_by": "tollgate"})];
    for tier in &config.routing.tiers {
        data.push(
            json!({"id": format!("tollgate/{}", tier.name), "object": "model", "created": 0, "owned_by": "tollgate"}),
        );
    }
    for m in &config.routing.pinned {
        data.push(json!({"id": m.model, "object": "model", "created": 0, "owned_by": m.provider.as_str()}));
    }
    json!({"object": "list", "data": data})
}

/// `GET /v1/usage`: the calling tenant's own budget state.
pub fn usage_report(config: &TenantConfig, state: &mut BudgetState, now: u64) -> Value {
    let limits: Vec<Value> = budget::status(state, &config.budgets, now)
        .into_iter()
        .map(|s| {
            json!({
                "name": s.name,
                "window": s.window.as_str(),
                "spent_tokens": s.spent.tokens,
                "spent_usd": crate::pricing::format_usd(s.spent.micros),
                "reserved_tokens": s.reserved.tokens,
                "reserved_usd": crate::pricing::format_usd(s.reserved.micros),
                "limit_tokens": s.limit_tokens,
                "limit_usd": s.limit_micros.map(crate::pricing::format_usd),
                "resets_at": budget::iso8601(s.resets_at),
            })
        })
        .collect();
    json!({"object": "usage", "tenant_id": config.tenant_id, "budgets": limits, "as_of": budget::iso8601(now)})
}
