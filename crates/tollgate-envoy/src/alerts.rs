//! Budget alerts found where this VM updated a tenant's budget state (in
//! shared data, or in Redis by compare-and-set), waiting for the root
//! context to send them: each as a structured log line and, when the tenant
//! names a webhook and the operator names a cluster for them
//! (`alerts_cluster`), as a signed POST through that cluster. The core
//! found and deduplicated them ([`tollgate_core::budget::alerts`]); only
//! the update that landed queues its alerts, so each is sent once.

use std::cell::RefCell;
use tollgate_core::budget::LedgerOp;
use tollgate_core::budget::alerts::{self, Alert, AlertSettings};

thread_local! {
    // One VM is one thread; the queue is drained at every root tick.
    static PENDING: RefCell<Vec<(AlertSettings, Alert)>> = const { RefCell::new(Vec::new()) };
}

/// The most alerts waiting; more (a writer that cannot send) are dropped
/// after their log line.
const MAX_PENDING: usize = 256;

/// Queue `found` (from a state updated with `ops`, now persisted).
pub fn queue(ops: &[LedgerOp], found: Vec<Alert>) {
    if found.is_empty() {
        return;
    }
    let Some(settings) = ops.iter().find_map(|op| op.budgets().alerts.as_deref()) else { return };
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        for alert in found {
            if pending.len() < MAX_PENDING {
                pending.push((settings.clone(), alert));
            } else {
                log::warn!("{} (not posted: too many alerts waiting)", tollgate_core::store::alert_log_line(&alert));
            }
        }
    });
}

/// Take what waits: (settings, alert, webhook call if any) at `now`.
pub fn take(now: u64) -> Vec<(Alert, Option<alerts::WebhookCall>)> {
    PENDING.with(|p| {
        p.borrow_mut()
            .drain(..)
            .map(|(settings, alert)| {
                let call = alerts::webhook(&settings, &alert, now);
                (alert, call)
            })
            .collect()
    })
}
