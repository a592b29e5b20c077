//! What every request of a VM shares: the configuration, the provider keys,
//! the shared-data stores, the counters, the budget board, the cooldown
//! table and the queue of Redis writes the root context sends (see
//! [`crate::root`] for why the root sends them).

use crate::host::{Counters, EnvoyShared};
use crate::local_state::LocalCache;
use crate::redis::BudgetBoard;
use crate::store::Job;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use tollgate_core::config::Provider;
use tollgate_core::cooldown::Cooldowns;
use tollgate_core::desk::LeaseDesk;
use tollgate_core::plugin::PluginConfig;

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
    /// Redis writes waiting for the root's next tick ([`crate::store::apply_detached`]).
    pub jobs: RefCell<VecDeque<Job>>,
    /// Models failing on this VM (`routing.cooldown`). Per VM, like the
    /// Worker's per isolate: each worker thread learns on its own.
    pub cooldowns: RefCell<Cooldowns>,
    /// This VM's budget leases and the spend and records waiting for the
    /// next batch ([`tollgate_core::desk`]); the root's tick sends them.
    pub desk: RefCell<LeaseDesk>,
}
