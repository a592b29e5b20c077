//! Metric names. Proxy-wasm ABI 0.2.1 has no labels, so labels are encoded
//! as `.label.value` segments and the bootstrap's `stats_config.stats_tags`
//! (envoy/envoy.yaml) turns them back into Prometheus labels:
//! `tollgate.requests.tier.cheap.model.gpt-4o-mini` is exported as
//! `tollgate_requests{tier="cheap",model="gpt-4o-mini"}`.
//!
//! Every label value comes from configuration (tiers, models, error codes),
//! never from a request, so the number of series is bounded by the config.
//! Tenant ids are added only when the operator asks (`metrics.per_tenant`).

pub const REQUESTS: &str = "tollgate.requests";
pub const CACHE_HITS: &str = "tollgate.cache_hits";
pub const CACHE_MISSES: &str = "tollgate.cache_misses";
pub const INPUT_TOKENS: &str = "tollgate.input_tokens";
pub const OUTPUT_TOKENS: &str = "tollgate.output_tokens";
pub const COST_MICROS: &str = "tollgate.cost_micros";
pub const BUDGET_REFUSALS: &str = "tollgate.budget_refusals";
pub const FALLBACKS: &str = "tollgate.fallbacks";
pub const ERRORS: &str = "tollgate.errors";
/// A cooling model passed over (`routing.cooldown`), by model.
pub const COOLDOWN_SKIPS: &str = "tollgate.cooldown_skips";
/// A model starting a cooldown on this VM, by model.
pub const COOLDOWNS_STARTED: &str = "tollgate.cooldowns_started";

/// Batches sent to a tenant's writer (shared data or Redis), by `path`:
/// `request` (a request waited for it), `detached` (a request's close,
/// not waited for), `background` (the lease desk's, from the tick). With
/// leases, routed requests per batch is the point of them.
pub const STORE_BATCHES: &str = "tollgate.store_batches";

/// A label value as a single stat-name segment: `.` separates segments and
/// tag regexes stop at it, so anything outside `[A-Za-z0-9_-]` becomes `_`.
pub fn segment(value: &str) -> String {
    let s: String =
        value.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if s.is_empty() { "none".to_owned() } else { s }
}

/// `metric[.tenant.<id>](.label.value)*`, labels in the order given (the tag
/// regexes expect tier before model).
pub fn name(metric: &str, tenant: Option<&str>, labels: &[(&str, &str)]) -> String {
    let mut out = metric.to_owned();
    if let Some(t) = tenant {
        out.push_str(".tenant.");
        out.push_str(&segment(t));
    }
    for (label, value) in labels {
        out.push('.');
        out.push_str(label);
        out.push('.');
        out.push_str(&segment(value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_cannot_add_segments() {
        assert_eq!(
            name(REQUESTS, None, &[("tier", "cheap"), ("model", "openai/gpt-4.1-mini")]),
            "tollgate.requests.tier.cheap.model.openai_gpt-4_1-mini"
        );
        assert_eq!(name(ERRORS, Some("acme.eu"), &[("code", "")]), "tollgate.errors.tenant.acme_eu.code.none");
    }
}
