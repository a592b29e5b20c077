//! One wire format for everything a tenant's state store does.
//!
//! A host keeps two things per tenant where they can be changed atomically
//! (the Worker: one Durable Object per tenant; Envoy: a shared-data or Redis
//! key): its [`BudgetState`] and its [`OutcomeLedger`]. Requests to that
//! store are a batch of [`TenantOp`]s applied in order, so settling a request
//! and recording its outcome is one round trip. [`apply`] is the only code
//! that changes either, in both hosts.

use crate::budget::{self, BudgetState, LedgerOp, LedgerReply};
use crate::outcomes::{self, OutcomeLedger, OutcomeOp, OutcomeReply};

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
    let mut ops: Vec<TenantOp> = settlement.iter().map(|s| TenantOp::Budget(s.to_op(budgets))).collect();
    if finish.is_some() || plan.served_from_cache() {
        ops.push(TenantOp::Outcome(OutcomeOp::Record { outcome: plan.outcome(finish) }));
    }
    ops
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
                // Even reads sync windows and age out holds, which is a change.
                dirty.budget = true;
                TenantReply::Budget(budget::apply(budget_state, op, now))
            }
            TenantOp::Outcome(op) => {
                let (reply, touched) = outcomes::apply(outcome_ledger, op, now);
                dirty.outcome_totals |= touched.totals;
                if let Some(c) = touched.chunk.filter(|c| !dirty.outcome_chunks.contains(c)) {
                    dirty.outcome_chunks.push(c);
                }
                TenantReply::Outcome(reply)
            }
        })
        .collect();
    (replies, dirty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TenantConfig;
    use crate::outcomes::RequestOutcome;

    #[test]
    fn batches_round_trip_through_json_and_apply_in_order() {
        let budgets = TenantConfig::example().unwrap().budgets;
        let batch = TenantBatch {
            ops: vec![
                TenantOp::Budget(LedgerOp::Status { budgets: budgets.clone() }),
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
        assert_eq!(dirty, Dirty { budget: true, outcome_totals: true, outcome_chunks: vec![0] });
        let wire = serde_json::to_string(&replies).unwrap();
        let back: Vec<TenantReply> = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, replies);
        assert!(matches!(back[2], TenantReply::Outcome(OutcomeReply::FeedbackRecorded { .. })));
    }
}
