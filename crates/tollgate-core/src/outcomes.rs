//! The cost-per-resolution ledger: what each tier spent, and how often the
//! client said its answer resolved the task.
//!
//! Every routed request is recorded when it settles ([`OutcomeOp::Record`]);
//! `POST /v1/feedback {request_id, resolved}` later marks it resolved or not
//! ([`OutcomeOp::Feedback`]). Per tier the ledger keeps requests, resolutions,
//! tokens, dollars, escalations, fallbacks, cache hits and the dollars those
//! hits avoided, so `/v1/usage` can report cost per resolution.
//!
//! Like [`crate::budget`], this is pure: the host persists an
//! [`OutcomeLedger`] per tenant next to its budget state and changes it only
//! through [`apply`]. Memory is bounded: the ledger remembers the last
//! [`RECENT_CAPACITY`] requests (and none older than [`FEEDBACK_WINDOW_SECS`])
//! for matching feedback; the per-tier totals are a fixed handful of numbers.

use crate::error::ApiError;
use crate::pricing::format_usd;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::VecDeque;

/// How many recent requests feedback can still name. At ~80 bytes each this
/// keeps a tenant's serialised ledger near 100 KB, under the 128 KiB value
/// limit of Durable Object storage.
pub const RECENT_CAPACITY: usize = 1024;

/// Feedback older than this (7 days) no longer counts.
pub const FEEDBACK_WINDOW_SECS: u64 = 7 * 24 * 3600;

/// One request's outcome, as the host records it once the request has ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestOutcome {
    pub request_id: String,
    /// The tier that served it, or `pinned` for unrouted models.
    pub tier: String,
    pub tokens: u64,
    pub micros: u64,
    #[serde(default)]
    pub cache_hit: bool,
    /// For a cache hit: what the original answer cost, i.e. what the hit avoided.
    #[serde(default)]
    pub saved_micros: u64,
    #[serde(default)]
    pub escalated: bool,
    #[serde(default)]
    pub fallbacks: u32,
}

/// Running totals for one tier.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierTotals {
    pub tier: String,
    pub requests: u64,
    pub resolved: u64,
    pub unresolved: u64,
    pub tokens: u64,
    pub micros: u64,
    pub escalations: u64,
    pub fallbacks: u64,
    pub cache_hits: u64,
    pub cache_saved_micros: u64,
}

/// A recent request feedback can still name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentRequest {
    pub id: String,
    pub tier: String,
    pub at: u64,
    /// The feedback given so far, if any (it can be changed).
    #[serde(default)]
    pub resolved: Option<bool>,
}

/// Everything a host persists for one tenant's outcomes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeLedger {
    #[serde(default)]
    pub tiers: Vec<TierTotals>,
    #[serde(default)]
    pub recent: VecDeque<RecentRequest>,
}

/// One operation on the outcome ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OutcomeOp {
    Record { outcome: RequestOutcome },
    Feedback { request_id: String, resolved: bool },
    Report,
}

/// The answer to an [`OutcomeOp`]. Tag values differ from
/// [`crate::budget::LedgerReply`]'s so both can share one wire format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum OutcomeReply {
    Recorded,
    FeedbackRecorded { request_id: String, tier: String, resolved: bool },
    UnknownRequest { request_id: String },
    Report { tiers: Vec<TierTotals> },
}

impl OutcomeLedger {
    fn totals(&mut self, tier: &str) -> &mut TierTotals {
        let at = match self.tiers.iter().position(|t| t.tier == tier) {
            Some(i) => i,
            None => {
                self.tiers.push(TierTotals { tier: tier.to_owned(), ..TierTotals::default() });
                self.tiers.len() - 1
            }
        };
        &mut self.tiers[at]
    }

    fn forget_old(&mut self, now: u64) {
        while self.recent.front().is_some_and(|r| r.at.saturating_add(FEEDBACK_WINDOW_SECS) < now) {
            self.recent.pop_front();
        }
        while self.recent.len() > RECENT_CAPACITY {
            self.recent.pop_front();
        }
    }
}

/// Apply one operation at `now`. The caller persists the ledger afterwards.
pub fn apply(ledger: &mut OutcomeLedger, op: &OutcomeOp, now: u64) -> OutcomeReply {
    ledger.forget_old(now);
    match op {
        OutcomeOp::Record { outcome } => {
            // A retried record (the host's call timed out after it landed) must not double-count.
            if ledger.recent.iter().any(|r| r.id == outcome.request_id) {
                return OutcomeReply::Recorded;
            }
            let t = ledger.totals(&outcome.tier);
            t.requests += 1;
            t.tokens = t.tokens.saturating_add(outcome.tokens);
            t.micros = t.micros.saturating_add(outcome.micros);
            t.escalations += u64::from(outcome.escalated);
            t.fallbacks += u64::from(outcome.fallbacks);
            if outcome.cache_hit {
                t.cache_hits += 1;
                t.cache_saved_micros = t.cache_saved_micros.saturating_add(outcome.saved_micros);
            }
            ledger.recent.push_back(RecentRequest {
                id: outcome.request_id.clone(),
                tier: outcome.tier.clone(),
                at: now,
                resolved: None,
            });
            ledger.forget_old(now);
            OutcomeReply::Recorded
        }
        OutcomeOp::Feedback { request_id, resolved } => {
            let Some(recent) = ledger.recent.iter_mut().find(|r| &r.id == request_id) else {
                return OutcomeReply::UnknownRequest { request_id: request_id.clone() };
            };
            let before = recent.resolved.replace(*resolved);
            let tier = recent.tier.clone();
            let t = ledger.totals(&tier);
            // Changed feedback moves the request between the two counts.
            match before {
                Some(true) => t.resolved = t.resolved.saturating_sub(1),
                Some(false) => t.unresolved = t.unresolved.saturating_sub(1),
                None => {}
            }
            if *resolved {
                t.resolved += 1;
            } else {
                t.unresolved += 1;
            }
            OutcomeReply::FeedbackRecorded { request_id: request_id.clone(), tier, resolved: *resolved }
        }
        OutcomeOp::Report => OutcomeReply::Report { tiers: ledger.tiers.clone() },
    }
}

/// A validated `POST /v1/feedback` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feedback {
    pub request_id: String,
    pub resolved: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeedback {
    request_id: String,
    resolved: bool,
}

/// Parse `{request_id, resolved}`; 400 with the reason otherwise.
pub fn parse_feedback(body: &[u8]) -> Result<Feedback, ApiError> {
    let raw: RawFeedback = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            "invalid_request_error",
            "invalid_feedback",
            format!("feedback must be {{\"request_id\": \"req_…\", \"resolved\": true|false}}: {e}"),
        )
    })?;
    let well_formed = raw.request_id.len() == 36
        && raw.request_id.starts_with("req_")
        && raw.request_id[4..].bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(ApiError::new(
            400,
            "invalid_request_error",
            "invalid_feedback",
            "`request_id` must be the x-tollgate-request-id of a response (req_ and 32 hex digits)",
        )
        .with_param("request_id"));
    }
    Ok(Feedback { request_id: raw.request_id, resolved: raw.resolved })
}

/// The error for feedback naming a request the ledger does not know.
pub fn unknown_request(request_id: &str) -> ApiError {
    ApiError::new(
        404,
        "invalid_request_error",
        "unknown_request_id",
        format!(
            "no routed request `{request_id}` in the last {RECENT_CAPACITY} requests or 7 days for this tenant; \
             feedback can only name this tenant's recent requests"
        ),
    )
    .with_param("request_id")
}

/// The `resolution` section of `/v1/usage`: per tier, and cost per resolution.
pub fn report(tiers: &[TierTotals]) -> Value {
    let rows: Vec<Value> = tiers
        .iter()
        .map(|t| {
            json!({
                "tier": t.tier,
                "requests": t.requests,
                "resolved": t.resolved,
                "unresolved": t.unresolved,
                "tokens": t.tokens,
                "spent_usd": format_usd(t.micros),
                "escalations": t.escalations,
                "fallbacks": t.fallbacks,
                "cache_hits": t.cache_hits,
                "cache_saved_usd": format_usd(t.cache_saved_micros),
                "cost_per_resolution_usd": (t.resolved > 0).then(|| format_usd(t.micros / t.resolved)),
            })
        })
        .collect();
    json!({ "tiers": rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str, tier: &str, micros: u64) -> RequestOutcome {
        RequestOutcome {
            request_id: id.to_owned(),
            tier: tier.to_owned(),
            tokens: 100,
            micros,
            ..RequestOutcome::default()
        }
    }

    #[test]
    fn feedback_counts_resolutions_per_tier_and_cost_per_resolution_follows() {
        let mut l = OutcomeLedger::default();
        apply(&mut l, &OutcomeOp::Record { outcome: outcome("a", "cheap", 300) }, 10);
        apply(&mut l, &OutcomeOp::Record { outcome: outcome("b", "cheap", 300) }, 10);
        apply(&mut l, &OutcomeOp::Record { outcome: outcome("c", "premium", 5000) }, 10);
        let r = apply(&mut l, &OutcomeOp::Feedback { request_id: "a".into(), resolved: true }, 11);
        assert_eq!(r, OutcomeReply::FeedbackRecorded { request_id: "a".into(), tier: "cheap".into(), resolved: true });
        apply(&mut l, &OutcomeOp::Feedback { request_id: "b".into(), resolved: false }, 11);
        let cheap = &l.tiers[0];
        assert_eq!((cheap.requests, cheap.resolved, cheap.unresolved, cheap.micros), (2, 1, 1, 600));
        let report = report(&l.tiers);
        assert_eq!(report["tiers"][0]["cost_per_resolution_usd"], "0.000600");
        assert_eq!(report["tiers"][1]["cost_per_resolution_usd"], Value::Null);
    }

    #[test]
    fn changed_feedback_moves_the_request_rather_than_counting_it_twice() {
        let mut l = OutcomeLedger::default();
        apply(&mut l, &OutcomeOp::Record { outcome: outcome("a", "cheap", 1) }, 0);
        for resolved in [true, true, false] {
            apply(&mut l, &OutcomeOp::Feedback { request_id: "a".into(), resolved }, 1);
        }
        assert_eq!((l.tiers[0].resolved, l.tiers[0].unresolved), (0, 1));
    }

    #[test]
    fn a_retried_record_is_counted_once() {
        let mut l = OutcomeLedger::default();
        for _ in 0..2 {
            apply(&mut l, &OutcomeOp::Record { outcome: outcome("a", "cheap", 7) }, 0);
        }
        assert_eq!((l.tiers[0].requests, l.tiers[0].micros), (1, 7));
    }

    #[test]
    fn feedback_for_unknown_or_forgotten_requests_is_refused() {
        let mut l = OutcomeLedger::default();
        apply(&mut l, &OutcomeOp::Record { outcome: outcome("old", "cheap", 1) }, 0);
        let later = FEEDBACK_WINDOW_SECS + 10;
        let r = apply(&mut l, &OutcomeOp::Feedback { request_id: "old".into(), resolved: true }, later);
        assert_eq!(r, OutcomeReply::UnknownRequest { request_id: "old".into() });
        let r = apply(&mut l, &OutcomeOp::Feedback { request_id: "never".into(), resolved: true }, 0);
        assert!(matches!(r, OutcomeReply::UnknownRequest { .. }));
    }

    #[test]
    fn the_recent_list_stays_bounded() {
        let mut l = OutcomeLedger::default();
        for i in 0..(RECENT_CAPACITY + 50) {
            apply(&mut l, &OutcomeOp::Record { outcome: outcome(&format!("r{i}"), "cheap", 1) }, 5);
        }
        assert_eq!(l.recent.len(), RECENT_CAPACITY);
        assert_eq!(l.tiers[0].requests, (RECENT_CAPACITY + 50) as u64);
        let bytes = serde_json::to_vec(&l).unwrap_or_default();
        assert!(bytes.len() < 128 * 1024, "ledger serialises to {} bytes", bytes.len());
    }

    #[test]
    fn cache_hits_record_the_dollars_they_avoided() {
        let mut l = OutcomeLedger::default();
        let hit = RequestOutcome { cache_hit: true, saved_micros: 900, ..outcome("h", "premium", 0) };
        apply(&mut l, &OutcomeOp::Record { outcome: hit }, 0);
        assert_eq!((l.tiers[0].cache_hits, l.tiers[0].cache_saved_micros), (1, 900));
    }

    #[test]
    fn feedback_bodies_are_validated() {
        let ok = parse_feedback(br#"{"request_id":"req_0123456789abcdef0123456789abcdef","resolved":true}"#);
        assert!(ok.is_ok());
        for bad in [
            &br#"{"request_id":"nope","resolved":true}"#[..],
            br#"{"request_id":"req_0123456789abcdef0123456789abcdef"}"#,
            br#"{"request_id":"req_0123456789abcdef0123456789abcdef","resolved":"yes"}"#,
            b"not json",
        ] {
            let err = parse_feedback(bad).err().map(|e| (e.status, e.code));
            assert_eq!(err, Some((400, "invalid_feedback")), "{}", String::from_utf8_lossy(bad));
        }
    }
}
