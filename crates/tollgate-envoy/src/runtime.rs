//! What every request of a VM shares: the configuration, the provider keys,
//! the shared-data stores, the counters, the budget board, the cooldown
//! table and the queue of Redis writes the root context sends (see
//! [`crate::root`] for why the root sends them).

use crate::host::{Counters, EnvoyShared};
use crate::local_state::LocalCache;
use crate::redis::{BudgetBoard, BudgetCas, OutcomeCas};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use tollgate_core::budget::LedgerOp;
use tollgate_core::config::Provider;
use tollgate_core::cooldown::Cooldowns;
use tollgate_core::engine::CacheFill;
use tollgate_core::outcomes::OutcomeOp;
use tollgate_core::plugin::{BudgetBackend, PluginConfig};

/// Everything a VM's requests share.
#[derive(Debug)]
pub struct Runtime {
    pub config: PluginConfig,
    /// Provider API keys read from the VM's environment at configure time.
    pub provider_keys: BTreeMap<Provider, String>,
    pub shared: EnvoyShared,
    pub cache: LocalCache,
    pub counters: Counters,
    pub board: RefCell<BudgetBoard>,
    pub jobs: RefCell<VecDeque<Job>>,
    /// Models failing on this VM (`routing.cooldown`). Per VM, like the
    /// Worker's per isolate: each worker thread learns on its own.
    pub cooldowns: RefCell<Cooldowns>,
}

impl Runtime {
    pub fn redis_budgets(&self) -> bool {
        self.config.budgets == BudgetBackend::Redis
    }

    /// A webdis call's headers.
    pub fn webdis_headers(&self) -> Vec<(&str, &str)> {
        vec![
            (":method", "POST"),
            (":path", "/"),
            (":authority", self.config.redis.authority.as_str()),
            ("content-type", "text/plain"),
        ]
    }

    /// Queue budget ops for the root to apply in Redis.
    pub fn queue_budget(&self, tenant: &str, ops: Vec<LedgerOp>, now: u64) {
        if !ops.is_empty() {
            self.jobs.borrow_mut().push_back(Job { work: Work::Budget(BudgetCas::new(tenant, ops, now)), attempts: 0 });
        }
    }

    /// Queue an outcome record for the root to apply in Redis.
    pub fn queue_outcome(&self, tenant: &str, op: OutcomeOp, now: u64) {
        self.jobs.borrow_mut().push_back(Job { work: Work::Outcome(OutcomeCas::new(tenant, op, now)), attempts: 0 });
    }

    pub fn queue_cache_fill(&self, fill: CacheFill) {
        self.jobs.borrow_mut().push_back(Job { work: Work::CacheFill(fill), attempts: 0 });
    }
}

/// A write the root owns until it lands.
#[derive(Debug)]
pub struct Job {
    pub(crate) work: Work,
    pub(crate) attempts: u32,
}

#[derive(Debug)]
pub(crate) enum Work {
    Budget(BudgetCas),
    Outcome(OutcomeCas),
    CacheFill(CacheFill),
}
