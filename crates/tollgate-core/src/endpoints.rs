//! Bodies for the router's own endpoints, shared by both hosts.

use crate::budget::{self, BudgetState, LimitStatus};
use crate::config::TenantConfig;
use crate::engine::AUTO_MODELS;
use crate::outcomes::TierTotals;
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
    usage_report_from(config, budget::status(state, &config.budgets, now), None, now)
}

/// `GET /v1/usage` from what the tenant's store answered: its limits
/// ([`budget::LedgerOp::Status`]) and, when kept, its outcome totals.
pub fn usage_report_from(
    config: &TenantConfig,
    limits: Vec<LimitStatus>,
    outcomes: Option<&[TierTotals]>,
    now: u64,
) -> Value {
    let limits: Vec<Value> = limits
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
    let mut report =
        json!({"object": "usage", "tenant_id": config.tenant_id, "budgets": limits, "as_of": budget::iso8601(now)});
    if let (Some(tiers), Some(obj)) = (outcomes, report.as_object_mut()) {
        obj.insert("resolution".to_owned(), crate::outcomes::report(tiers));
    }
    report
}
