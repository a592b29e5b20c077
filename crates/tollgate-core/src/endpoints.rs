//! Bodies for the router's own endpoints, shared by both hosts.

use crate::budget::{self, BudgetState, LimitStatus};
use crate::config::TenantConfig;
use crate::engine::AUTO_MODELS;
use crate::error::{ApiError, RequestError};
use crate::outcomes::{OutcomeOp, OutcomeReply, TierTotals};
use crate::store::{TenantOp, TenantReply};
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
    usage_report_with_scopes(config, limits, Vec::new(), outcomes, now)
}

fn limit_json(s: LimitStatus) -> Value {
    let mut v = json!({
        "name": s.name,
        "window": s.window.as_str(),
        "spent_tokens": s.spent.tokens,
        "spent_usd": crate::pricing::format_usd(s.spent.micros),
        "reserved_tokens": s.reserved.tokens,
        "reserved_usd": crate::pricing::format_usd(s.reserved.micros),
        "leased_tokens": s.leased.tokens,
        "leased_usd": crate::pricing::format_usd(s.leased.micros),
        "limit_tokens": s.limit_tokens,
        "limit_usd": s.limit_micros.map(crate::pricing::format_usd),
        "resets_at": budget::iso8601(s.resets_at),
    });
    if let (Some(limit), Some(obj)) = (s.limit_requests, v.as_object_mut()) {
        // Requests are shown only for a limit that counts them.
        obj.insert("spent_requests".to_owned(), json!(s.spent.requests));
        obj.insert("reserved_requests".to_owned(), json!(s.reserved.requests));
        obj.insert("leased_requests".to_owned(), json!(s.leased.requests));
        obj.insert("limit_requests".to_owned(), json!(limit));
    }
    v
}

/// [`usage_report_from`] with the limits below the tenant: `keys` and
/// `users`, each `{id, budgets}` (a key's limits are shown for the key
/// asking; other keys' entries show their spend).
pub fn usage_report_with_scopes(
    config: &TenantConfig,
    limits: Vec<LimitStatus>,
    scoped: Vec<budget::ScopeStatus>,
    outcomes: Option<&[TierTotals]>,
    now: u64,
) -> Value {
    let limits: Vec<Value> = limits.into_iter().map(limit_json).collect();
    let mut report =
        json!({"object": "usage", "tenant_id": config.tenant_id, "budgets": limits, "as_of": budget::iso8601(now)});
    let (mut keys, mut users) = (Vec::new(), Vec::new());
    for entry in scoped {
        let item = json!({"id": entry.id, "budgets": entry.limits.into_iter().map(limit_json).collect::<Vec<_>>()});
        match entry.level {
            budget::scope::Level::Key => keys.push(item),
            _ => users.push(item),
        }
    }
    if let Some(obj) = report.as_object_mut() {
        if !keys.is_empty() {
            obj.insert("keys".to_owned(), Value::Array(keys));
        }
        if !users.is_empty() {
            obj.insert("users".to_owned(), Value::Array(users));
        }
        if let Some(tiers) = outcomes {
            obj.insert("resolution".to_owned(), crate::outcomes::report(tiers));
        }
    }
    report
}

/// The router's endpoints, as both hosts serve them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions` or `POST /v1/messages`.
    Chat(crate::api::ApiFormat),
    Models,
    Usage,
    Feedback,
    /// `GET /v1/feedback/export`: the tenant's recent requests with feedback, as NDJSON.
    FeedbackExport,
    Health,
    /// `GET /dashboard`: the usage page ([`dashboard`]).
    Dashboard,
}

/// Which endpoint `method` and `path` name, or the error to send: 404 for
/// an unknown path, 405 (with the `allow` header) for a known path asked
/// with the wrong method. `method` is upper-case (`GET`, `POST`, …).
pub fn resolve(method: &str, path: &str) -> Result<Endpoint, ApiError> {
    let path = path.split('?').next().unwrap_or(path);
    // (endpoint, methods allowed, as the `allow` header lists them)
    let (endpoint, allowed): (Endpoint, &'static str) = if let Some(api) = crate::api::ApiFormat::from_path(path) {
        (Endpoint::Chat(api), "POST")
    } else {
        match path.trim_end_matches('/') {
            "/healthz" => (Endpoint::Health, "GET, HEAD"),
            "/dashboard" => (Endpoint::Dashboard, "GET"),
            "/v1/models" => (Endpoint::Models, "GET"),
            "/v1/usage" => (Endpoint::Usage, "GET"),
            "/v1/feedback" => (Endpoint::Feedback, "POST"),
            "/v1/feedback/export" => (Endpoint::FeedbackExport, "GET"),
            _ => return Err(RequestError::UnknownEndpoint { path: path.to_owned() }.into()),
        }
    };
    if allowed.split(", ").any(|m| m == method) {
        Ok(endpoint)
    } else {
        let mut err =
            ApiError::new(405, "invalid_request_error", "method_not_allowed", format!("{path} accepts {allowed} only"));
        err.allow = Some(allowed);
        Err(err)
    }
}

/// `GET /dashboard`: (headers, body) of the usage page, one self-contained
/// HTML document. It needs no key to load: the tenant types its key in the
/// page, which sends it as a header to `/v1/usage` (never in a URL) and
/// keeps it only in the page's memory. Its charts are SVG it draws itself,
/// with no script or font from elsewhere (an edge may have no outbound
/// access), and the content security policy lets it talk only to its own
/// origin.
pub fn dashboard() -> (Vec<(String, String)>, &'static [u8]) {
    let headers = [
        ("content-type", "text/html; charset=utf-8"),
        ("cache-control", "no-store"),
        (
            "content-security-policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
             img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    ];
    (headers.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(), DASHBOARD_HTML.as_bytes())
}

const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// `GET /healthz`.
pub fn health(host: &str) -> Value {
    json!({"status": "ok", "service": "tollgate", "host": host})
}

/// The ops a host sends to the tenant's store for `GET /v1/usage`.
/// `key`: the asking key's level (its limits are shown with its spend);
/// `path`: the request's path with its query, which may ask for recent
/// spend grouped (`group_by=key|user|tag|model|tier`), since when
/// (`hours=N`, default 24, or `since=<unix seconds>`) and in which buckets
/// (`bucket=hour|day`; by default hours while they cover the range). A bad
/// query is a 400.
pub fn usage_ops(
    config: &TenantConfig,
    key: Option<&budget::scope::KeyScope>,
    path: &str,
    now: u64,
) -> Result<Vec<TenantOp>, ApiError> {
    let scopes =
        budget::scope::Scopes { key: key.filter(|k| !k.limits.is_empty()).map(|k| Box::new(k.clone())), user: None };
    let (since, group_by, period) = usage_query(path, now)?;
    Ok(vec![
        TenantOp::Budget(budget::LedgerOp::Status { budgets: config.budgets.clone(), scopes }),
        TenantOp::Outcome(OutcomeOp::Report),
        TenantOp::Outcome(OutcomeOp::Recent { since, group_by, period }),
    ])
}

/// `/v1/usage`'s query: (since, group_by, bucket).
type UsageQuery = (u64, Option<crate::outcomes::Dimension>, Option<crate::outcomes::rollup::Period>);

fn usage_query(path: &str, now: u64) -> Result<UsageQuery, ApiError> {
    let invalid = |field: &str, message: &str| -> ApiError {
        RequestError::Invalid { field: field.to_owned(), message: message.to_owned() }.into()
    };
    let (mut since, mut group_by, mut period) = (now.saturating_sub(24 * 3600), None, None);
    let query = path.split_once('?').map_or("", |(_, q)| q);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "group_by" => {
                group_by = Some(
                    crate::outcomes::Dimension::parse(value)
                        .ok_or_else(|| invalid("group_by", "must be one of key, user, tag, model, tier"))?,
                );
            }
            "hours" => {
                let hours: u64 = value
                    .parse()
                    .ok()
                    .filter(|h| (1..=24 * 400).contains(h))
                    .ok_or_else(|| invalid("hours", "must be a whole number of hours, 1 or more"))?;
                since = now.saturating_sub(hours * 3600);
            }
            "since" => {
                since = value.parse().map_err(|_| invalid("since", "must be a time in unix seconds"))?;
            }
            "bucket" => {
                period = Some(
                    crate::outcomes::rollup::Period::parse(value)
                        .ok_or_else(|| invalid("bucket", "must be hour or day"))?,
                );
            }
            _ => return Err(invalid(name, "unknown parameter (group_by, hours, since, bucket)")),
        }
    }
    Ok((since, group_by, period))
}

/// `GET /v1/usage` from the store's replies to [`usage_ops`]; None when the
/// store could not be reached.
pub fn usage_from_replies(
    config: &TenantConfig,
    replies: Option<Vec<TenantReply>>,
    now: u64,
) -> Result<Value, ApiError> {
    let replies = replies.ok_or_else(crate::outcomes::ledger_unavailable)?;
    let (mut limits, mut tiers, mut scoped, mut recent) = (None, None, Vec::new(), None);
    for reply in replies {
        match reply {
            recent_reply @ TenantReply::Outcome(OutcomeReply::Recent { .. }) => recent = Some(recent_reply),
            TenantReply::Budget(budget::LedgerReply::Status { limits: l, scoped: s }) => {
                limits = Some(l);
                scoped = s;
            }
            TenantReply::Outcome(OutcomeReply::Report { tiers: t }) => tiers = Some(t),
            _ => {}
        }
    }
    let (Some(limits), Some(tiers)) = (limits, tiers) else {
        return Err(crate::outcomes::ledger_unavailable());
    };
    let mut report = usage_report_with_scopes(config, limits, scoped, Some(&tiers), now);
    if let (
        Some(TenantReply::Outcome(OutcomeReply::Recent {
            top,
            groups,
            oldest,
            hours,
            days,
            period,
            groups_since,
            series,
        })),
        Some(obj),
    ) = (recent, report.as_object_mut())
    {
        let buckets = |b: Vec<crate::outcomes::SpendBucket>| -> Value {
            b.into_iter()
                .map(|b| {
                    json!({"start": budget::iso8601(b.start), "requests": b.requests, "tokens": b.tokens,
                           "cost_usd": crate::pricing::format_usd(b.micros)})
                })
                .collect()
        };
        obj.insert("spend_by_hour".to_owned(), buckets(hours));
        obj.insert("spend_by_day".to_owned(), buckets(days));
        let cost = |micros: u64| crate::pricing::format_usd(micros);
        let top: Vec<Value> = top
            .into_iter()
            .map(|r| {
                json!({
                    "request_id": r.id,
                    "model": r.attribution.model,
                    "tier": r.tier,
                    "tokens": r.tokens,
                    "cost_usd": cost(r.micros),
                    "at": budget::iso8601(r.at),
                    "key": r.attribution.key,
                    "user": r.attribution.user,
                    "tags": r.attribution.tags,
                })
            })
            .collect();
        obj.insert("top_requests".to_owned(), Value::Array(top));
        let groups_json = |groups: Vec<crate::outcomes::Group>| -> Value {
            groups
                .into_iter()
                .map(|g| json!({"value": g.value, "requests": g.requests, "tokens": g.tokens, "cost_usd": cost(g.micros)}))
                .collect()
        };
        if let Some(period) = period {
            obj.insert("groups".to_owned(), groups_json(groups));
            obj.insert("groups_bucket".to_owned(), json!(period.as_str()));
            obj.insert("groups_since".to_owned(), json!(groups_since.map(budget::iso8601)));
            let series: Vec<Value> = series
                .into_iter()
                .map(|s| json!({"start": budget::iso8601(s.start), "groups": groups_json(s.groups)}))
                .collect();
            obj.insert("groups_by_bucket".to_owned(), Value::Array(series));
        }
        // What "recent" covers: the ring's oldest request.
        obj.insert("recent_since".to_owned(), json!(oldest.map(budget::iso8601)));
    }
    Ok(report)
}

/// `POST /v1/feedback`'s answer from the store's reply to the feedback op.
/// `Ok(None)`: the id is not (yet) known; the host may retry shortly (the
/// outcome is recorded just after the answer it names) before calling
/// [`feedback_unknown`].
pub fn feedback_from_reply(reply: Option<TenantReply>) -> Result<Option<Value>, ApiError> {
    match reply {
        Some(TenantReply::Outcome(OutcomeReply::FeedbackRecorded { request_id, tier, resolved })) => {
            Ok(Some(json!({"object": "feedback", "request_id": request_id, "tier": tier, "resolved": resolved})))
        }
        Some(TenantReply::Outcome(OutcomeReply::UnknownRequest { .. })) => Ok(None),
        _ => Err(crate::outcomes::ledger_unavailable()),
    }
}

/// The 404 for feedback naming a request the tenant's ledger does not know.
pub fn feedback_unknown(request_id: &str) -> ApiError {
    crate::outcomes::unknown_request(request_id)
}

/// The content type of `GET /v1/feedback/export`.
pub const NDJSON: &str = "application/x-ndjson";

/// The op a host sends to the tenant's store for `GET /v1/feedback/export`.
pub fn feedback_export_ops() -> Vec<TenantOp> {
    vec![TenantOp::Outcome(OutcomeOp::Export)]
}

/// `GET /v1/feedback/export`'s body (NDJSON, one line per request with
/// feedback: `{request_id, tier, escalated, resolved, at}`) from the
/// store's reply; None when the store could not be reached.
pub fn feedback_export_from_reply(reply: Option<TenantReply>) -> Result<String, ApiError> {
    match reply {
        Some(TenantReply::Outcome(OutcomeReply::Export { requests })) => Ok(crate::outcomes::export_ndjson(&requests)),
        _ => Err(crate::outcomes::ledger_unavailable()),
    }
}

/// Largest `POST /v1/feedback` body read.
pub const MAX_FEEDBACK_BYTES: usize = 16 * 1024;

/// Feedback naming an id the store does not know yet is asked about again
/// this many times, after [`FEEDBACK_RETRY_WAIT_MS`] each, before the 404:
/// a request's outcome is recorded just after its answer is handed over,
/// so feedback sent the moment the answer arrives can beat it. Both hosts.
pub const FEEDBACK_RETRIES: u8 = 2;
pub const FEEDBACK_RETRY_WAIT_MS: u64 = 250;

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::api::ApiFormat;

    #[test]
    fn endpoints_resolve_by_path_and_method() {
        assert_eq!(resolve("POST", "/v1/chat/completions"), Ok(Endpoint::Chat(ApiFormat::OpenAi)));
        assert_eq!(resolve("POST", "/v1/messages?beta=true"), Ok(Endpoint::Chat(ApiFormat::Anthropic)));
        assert_eq!(resolve("GET", "/v1/usage/"), Ok(Endpoint::Usage));
        assert_eq!(resolve("HEAD", "/healthz"), Ok(Endpoint::Health));
        assert_eq!(resolve("GET", "/v1/feedback/export"), Ok(Endpoint::FeedbackExport));
        assert_eq!(resolve("POST", "/v1/feedback/export").unwrap_err().allow, Some("GET"));
        let wrong = resolve("GET", "/v1/chat/completions").unwrap_err();
        assert_eq!((wrong.status, wrong.code, wrong.allow), (405, "method_not_allowed", Some("POST")));
        assert!(wrong.headers().contains(&("allow".to_owned(), "POST".to_owned())));
        assert_eq!(resolve("GET", "/v2/nothing").unwrap_err().status, 404);
    }

    #[test]
    fn usage_needs_both_replies_and_feedback_tells_unknown_from_unreachable() {
        let cfg = TenantConfig::example().unwrap();
        assert_eq!(usage_from_replies(&cfg, None, 0).unwrap_err().status, 503);
        assert_eq!(usage_from_replies(&cfg, Some(vec![]), 0).unwrap_err().status, 503);
        let unknown = TenantReply::Outcome(OutcomeReply::UnknownRequest { request_id: "r".into() });
        assert_eq!(feedback_from_reply(Some(unknown)), Ok(None));
        assert_eq!(feedback_from_reply(None).unwrap_err().status, 503);
        assert_eq!(feedback_export_from_reply(None).unwrap_err().status, 503);
        let export = TenantReply::Outcome(OutcomeReply::Export { requests: vec![] });
        assert_eq!(feedback_export_from_reply(Some(export)), Ok(String::new()));
    }
}
