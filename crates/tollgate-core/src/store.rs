//! One wire format for everything a tenant's state store does.
//!
//! A host keeps two things per tenant where they can be changed atomically
//! (the Worker: one Durable Object per tenant; Envoy: a shared-data or Redis
//! key): its [`BudgetState`] and its [`OutcomeLedger`]. Requests to that
//! store are a batch of [`TenantOp`]s applied in order, so settling a request
//! and recording its outcome is one round trip. [`apply`] is the only code
//! that changes either, in both hosts.

use crate::budget::{self, BudgetState, LedgerOp, LedgerReply};
use crate::outcomes::rollup::{ROLLUP_SLOTS, Rollup};
use crate::outcomes::{self, OutcomeLedger, OutcomeOp, OutcomeReply, OutcomeTotals, RECENT_CHUNKS, RecentChunk};

use crate::config::Budgets;
use crate::engine::{BudgetCheck, Finish, Plan, ReserveOutcome, Settlement};
use serde::{Deserialize, Serialize};

/// A budget or an outcome operation. The two enums' `op` names do not
/// overlap, so the untagged form reads back unambiguously.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TenantOp {
    Budget(LedgerOp),
    Outcome(OutcomeOp),
}

/// The answer to a [`TenantOp`], in the same order as the batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TenantReply {
    Budget(LedgerReply),
    Outcome(OutcomeReply),
}

/// A batch as sent to the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantBatch {
    pub ops: Vec<TenantOp>,
}

/// Which parts of the state a batch changed, so the store writes only those.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    pub budget: bool,
    pub outcome_totals: bool,
    /// Indexes of the outcome ring's chunks that changed (see [`OutcomeLedger::chunk`]).
    pub outcome_chunks: Vec<usize>,
    /// Slots of the outcome rollups that changed (see [`OutcomeLedger::rollup`]).
    pub outcome_rollups: Vec<usize>,
}

/// What a store's answer to a [`LedgerOp::Reserve`] means for the plan.
/// `None` (no answer, or not the expected one) is an unreachable store.
pub fn reserve_outcome(reply: Option<TenantReply>) -> ReserveOutcome {
    match reply {
        Some(TenantReply::Budget(LedgerReply::Granted { granted })) => ReserveOutcome::Granted(granted),
        Some(TenantReply::Budget(LedgerReply::Refused { error })) => ReserveOutcome::Refused(error),
        _ => ReserveOutcome::StoreUnavailable,
    }
}

/// What a store's answer to a [`LedgerOp::Check`] means for the plan.
pub fn budget_check(reply: Option<TenantReply>) -> BudgetCheck {
    match reply {
        Some(TenantReply::Budget(LedgerReply::Check { exhausted })) => BudgetCheck::from(exhausted),
        _ => BudgetCheck::StoreUnavailable,
    }
}

/// The ops that close a request in its tenant's store: apply the
/// settlement (if budget was held) and record the outcome (if the request
/// was answered: served from cache, or `finish`ed after a provider call).
pub fn closing_ops(
    plan: &Plan,
    budgets: &Budgets,
    settlement: Option<&Settlement>,
    finish: Option<&Finish>,
) -> Vec<TenantOp> {
    let mut ops: Vec<TenantOp> = settlement.iter().map(|s| TenantOp::Budget(s.to_op(budgets, plan.scopes()))).collect();
    if finish.is_some() || plan.answered_without_finish() {
        ops.push(TenantOp::Outcome(OutcomeOp::Record { outcome: plan.outcome(finish) }));
    }
    ops
}

/// The alert settings the budget ops of a batch carry (the tenant's
/// `budgets.alerts`), for the writer to send the alerts its apply found.
pub fn alert_settings(ops: &[TenantOp]) -> Option<&crate::budget::alerts::AlertSettings> {
    ops.iter().find_map(|op| match op {
        TenantOp::Budget(op) => op.budgets().alerts.as_deref(),
        TenantOp::Outcome(_) => None,
    })
}

/// One alert as a structured log line (JSON after a fixed prefix, so log
/// pipelines can pick it out).
pub fn alert_log_line(alert: &crate::budget::alerts::Alert) -> String {
    format!("tollgate alert {}", serde_json::to_string(alert).unwrap_or_default())
}

/// Where a tenant's state is stored, as key → JSON value: the budget under
/// one key, the outcome totals under another, and the outcome ring in
/// [`RECENT_CHUNKS`] chunk keys, so a batch rewrites only what it changed.
pub const BUDGET_KEY: &str = "budget";
pub const OUTCOME_TOTALS_KEY: &str = "outcomes:totals";

pub fn outcome_chunk_key(index: usize) -> String {
    format!("outcomes:recent:{index}")
}

/// The key of the outcome rollup in `slot` ([`crate::outcomes::rollup`]).
pub fn outcome_rollup_key(slot: usize) -> String {
    format!("outcomes:rollup:{slot}")
}

/// One key and its new JSON value.
pub type StoredWrite = (String, String);

/// A tenant's budget state and outcome ledger, as a host holds them between
/// batches, with the key/value layout it persists them in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantState {
    pub budget: BudgetState,
    pub outcomes: OutcomeLedger,
}

impl TenantState {
    /// Every key to read when loading.
    pub fn stored_keys() -> Vec<String> {
        let mut keys = vec![BUDGET_KEY.to_owned(), OUTCOME_TOTALS_KEY.to_owned()];
        keys.extend((0..RECENT_CHUNKS).map(outcome_chunk_key));
        keys.extend((0..ROLLUP_SLOTS).map(outcome_rollup_key));
        keys
    }

    /// Rebuild from what was read for [`TenantState::stored_keys`] (`None`
    /// for an absent key). A value that does not parse starts empty: only
    /// the host writes these keys, so that means a format change without a
    /// migration, and serving the tenant matters more than its history. The
    /// keys that did not parse are returned for the host to log.
    pub fn from_stored(read: impl Fn(&str) -> Option<String>) -> (TenantState, Vec<String>) {
        let mut unreadable = Vec::new();
        fn value<T: serde::de::DeserializeOwned + Default>(
            read: &dyn Fn(&str) -> Option<String>,
            key: &str,
            unreadable: &mut Vec<String>,
        ) -> T {
            match read(key).map(|text| serde_json::from_str::<T>(&text)) {
                Some(Ok(v)) => v,
                Some(Err(_)) => {
                    unreadable.push(key.to_owned());
                    T::default()
                }
                None => T::default(),
            }
        }
        let budget = value::<BudgetState>(&read, BUDGET_KEY, &mut unreadable);
        let totals = value::<OutcomeTotals>(&read, OUTCOME_TOTALS_KEY, &mut unreadable);
        let chunks = (0..RECENT_CHUNKS)
            .map(|c| Some(value::<RecentChunk>(&read, &outcome_chunk_key(c), &mut unreadable)))
            .collect();
        let rollups: Vec<(usize, Rollup)> = (0..ROLLUP_SLOTS)
            .map(|slot| (slot, value::<Rollup>(&read, &outcome_rollup_key(slot), &mut unreadable)))
            .collect();
        let outcomes = OutcomeLedger::from_parts(totals, chunks).with_rollups(rollups);
        (TenantState { budget, outcomes }, unreadable)
    }

    /// Apply a batch at `now`: the replies, and the (key, JSON) writes that
    /// persist what changed, to be written together before replying.
    pub fn apply(
        &mut self,
        ops: &[TenantOp],
        now: u64,
    ) -> Result<(Vec<TenantReply>, Vec<StoredWrite>), serde_json::Error> {
        let (replies, dirty) = apply(&mut self.budget, &mut self.outcomes, ops, now);
        let mut writes = Vec::new();
        if dirty.budget {
            writes.push((BUDGET_KEY.to_owned(), serde_json::to_string(&self.budget)?));
        }
        if dirty.outcome_totals {
            writes.push((OUTCOME_TOTALS_KEY.to_owned(), serde_json::to_string(&self.outcomes.totals)?));
        }
        for c in dirty.outcome_chunks {
            writes.push((outcome_chunk_key(c), serde_json::to_string(&self.outcomes.chunk(c))?));
        }
        for slot in dirty.outcome_rollups {
            writes.push((outcome_rollup_key(slot), serde_json::to_string(&self.outcomes.rollup(slot))?));
        }
        Ok((replies, writes))
    }
}

/// Apply `ops` in order at `now`.
pub fn apply(
    budget_state: &mut BudgetState,
    outcome_ledger: &mut OutcomeLedger,
    ops: &[TenantOp],
    now: u64,
) -> (Vec<TenantReply>, Dirty) {
    let mut dirty = Dirty::default();
    let replies = ops
        .iter()
        .map(|op| match op {
            TenantOp::Budget(op) => {
                // Reads (check, status) can still change the state (a new
                // window, an expired hold) but usually do not: persist only
                // when they did, so `/v1/usage` is not a write.
                let before =
                    matches!(op, LedgerOp::Check { .. } | LedgerOp::Status { .. }).then(|| budget_state.clone());
                let reply = budget::apply(budget_state, op, now);
                dirty.budget |= before.is_none_or(|b| b != *budget_state);
                TenantReply::Budget(reply)
            }
            TenantOp::Outcome(op) => {
                let (reply, touched) = outcomes::apply(outcome_ledger, op, now);
                dirty.outcome_totals |= touched.totals;
                if let Some(c) = touched.chunk.filter(|c| !dirty.outcome_chunks.contains(c)) {
                    dirty.outcome_chunks.push(c);
                }
                for slot in touched.rollups.into_iter().flatten() {
                    if !dirty.outcome_rollups.contains(&slot) {
                        dirty.outcome_rollups.push(slot);
                    }
                }
                TenantReply::Outcome(reply)
            }
        })
        .collect();
    (replies, dirty)
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::TenantConfig;
    use crate::outcomes::RequestOutcome;

    #[test]
    fn state_round_trips_through_its_stored_writes_and_reads_write_nothing() {
        let budgets = TenantConfig::example().unwrap().budgets;
        let mut state = TenantState::default();
        let record = TenantOp::Outcome(OutcomeOp::Record {
            outcome: RequestOutcome { request_id: "r1".into(), tier: "cheap".into(), ..Default::default() },
        });
        let (_, first) = state
            .apply(
                &[TenantOp::Budget(LedgerOp::Status { budgets: budgets.clone(), scopes: Default::default() }), record],
                100,
            )
            .unwrap();
        let stored: std::collections::HashMap<String, String> = first.into_iter().collect();
        let (loaded, unreadable) = TenantState::from_stored(|k| stored.get(k).cloned());
        assert!(unreadable.is_empty());
        assert_eq!(loaded, state);
        // The same read again changes nothing, so nothing is written.
        let (_, again) =
            state.apply(&[TenantOp::Budget(LedgerOp::Status { budgets, scopes: Default::default() })], 100).unwrap();
        assert!(again.is_empty(), "{again:?}");
        let (empty, unreadable) = TenantState::from_stored(|k| (k == BUDGET_KEY).then(|| "{broken".to_owned()));
        assert_eq!((empty, unreadable), (TenantState::default(), vec![BUDGET_KEY.to_owned()]));
    }

    #[test]
    fn batches_round_trip_through_json_and_apply_in_order() {
        let budgets = TenantConfig::example().unwrap().budgets;
        let batch = TenantBatch {
            ops: vec![
                TenantOp::Budget(LedgerOp::Status { budgets: budgets.clone(), scopes: Default::default() }),
                TenantOp::Outcome(OutcomeOp::Record {
                    outcome: RequestOutcome { request_id: "r1".into(), tier: "cheap".into(), ..Default::default() },
                }),
                TenantOp::Outcome(OutcomeOp::Feedback { request_id: "r1".into(), resolved: true }),
            ],
        };
        let wire = serde_json::to_string(&batch).unwrap();
        let back: TenantBatch = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, batch);

        let (mut b, mut o) = (BudgetState::default(), OutcomeLedger::default());
        let (replies, dirty) = apply(&mut b, &mut o, &back.ops, 100);
        // At 100 s: the first hour's slot and the first day's (after the hours).
        let rollups = vec![0, outcomes::rollup::HOUR_SLOTS];
        assert_eq!(
            dirty,
            Dirty { budget: true, outcome_totals: true, outcome_chunks: vec![0], outcome_rollups: rollups }
        );
        let wire = serde_json::to_string(&replies).unwrap();
        let back: Vec<TenantReply> = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, replies);
        assert!(matches!(back[2], TenantReply::Outcome(OutcomeReply::FeedbackRecorded { .. })));
    }
}
