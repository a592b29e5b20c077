//! Inputs the fuzz targets (fuzz/, scripts/fuzz) found that broke the core,
//! each reproduced through the public API the way a host meets it, so the
//! bug cannot come back. Test builds check overflow, as the fuzz builds do;
//! the hosts' release builds would wrap silently instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use tollgate_core::budget::{LedgerOp, Window};
use tollgate_core::config::TenantConfig;
use tollgate_core::outcomes::{OutcomeOp, RequestOutcome};
use tollgate_core::store::{BUDGET_KEY, OUTCOME_TOTALS_KEY, TenantOp, TenantState};

const NOW: u64 = 1_795_000_000;

fn load(stored: &[(&str, &str)]) -> TenantState {
    let stored: HashMap<String, String> = stored.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let (state, unreadable) = TenantState::from_stored(|k| stored.get(k).cloned());
    assert!(unreadable.is_empty(), "{unreadable:?}");
    state
}

/// fuzz target `store`: a stored rolling-hour bucket stamped at the last
/// minute there is (a host with a broken clock, a hand-edited key) made
/// every budget operation overflow (`minute + 60` when ageing buckets out,
/// `(oldest + 60) * 60` for the reset time): a panic in a debug build, a
/// wrapped reset time in release.
#[test]
fn a_stored_bucket_at_the_end_of_time_does_not_overflow() {
    let budget = r#"{"windows":[{"name":"hourly","window":"rolling_hour","period_start":0,
        "spent":{"tokens":1,"micros":1},
        "buckets":[{"minute":18446744073709551615,"spent":{"tokens":1,"micros":1}}]}],
        "outstanding":[],"recently_settled":[]}"#;
    let mut state = load(&[(BUDGET_KEY, budget)]);
    let budgets = TenantConfig::example().unwrap().budgets;
    let (replies, _) =
        state.apply(&[TenantOp::Budget(LedgerOp::Status { budgets, scopes: Default::default() })], NOW).unwrap();
    let text = serde_json::to_string(&replies).unwrap();
    let hourly = state.budget.windows.iter().find(|w| w.window == Window::RollingHour).unwrap();
    // A bucket from the future is kept (a host with a fast clock), and the
    // reset time saturates instead of wrapping to the past.
    assert_eq!(hourly.buckets.len(), 1, "{text}");
    assert!(text.contains(&format!("\"resets_at\":{}", u64::MAX)), "{text}");
}

/// fuzz target `store`: stored per-tier totals at `u64::MAX` made recording
/// an outcome, or feedback on it, overflow its counters (`requests += 1`
/// and the like): a panic in a debug build, a counter back at 0 in release.
#[test]
fn stored_outcome_counters_at_their_maximum_saturate() {
    let max = u64::MAX;
    let totals = format!(
        r#"{{"tiers":[{{"tier":"cheap","requests":{max},"resolved":{max},"unresolved":{max},"tokens":0,"micros":0,
        "escalations":{max},"fallbacks":{max},"cache_hits":{max},"cache_saved_micros":0}}],"next_slot":0}}"#
    );
    let mut state = load(&[(OUTCOME_TOTALS_KEY, &totals)]);
    let outcome = RequestOutcome {
        request_id: "r1".into(),
        tier: "cheap".into(),
        cache_hit: true,
        escalated: true,
        fallbacks: 1,
        ..RequestOutcome::default()
    };
    let ops = [
        TenantOp::Outcome(OutcomeOp::Record { outcome }),
        TenantOp::Outcome(OutcomeOp::Feedback { request_id: "r1".into(), resolved: true }),
        TenantOp::Outcome(OutcomeOp::Feedback { request_id: "r1".into(), resolved: false }),
        TenantOp::Outcome(OutcomeOp::Report),
    ];
    state.apply(&ops, NOW).unwrap();
    let t = &state.outcomes.tiers()[0];
    assert_eq!((t.requests, t.escalations, t.fallbacks, t.cache_hits), (max, max, max, max));
    // The second feedback moved the request from resolved to unresolved.
    assert_eq!((t.resolved, t.unresolved), (max - 1, max));
    let _ = tollgate_core::outcomes::report(state.outcomes.tiers());
}
