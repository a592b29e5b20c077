//! An in-memory host: runs the core's reference driver ([`drive`]), the
//! step order the Worker and the Envoy filter follow, with a map for the
//! cache, a [`BudgetState`] and an [`OutcomeLedger`] for the tenant's store
//! and a caller-supplied function for the provider.
//!
//! The CLI uses it to route requests and replay workloads offline; tests use
//! it as the fake host. It does no I/O itself: the clock and the provider
//! are the caller's.

use crate::api::ApiFormat;
use crate::budget::{self, Amount, BudgetState};
use crate::cache::{CacheEntry, CacheKey, Doorkeeper};
use crate::config::TenantConfig;
use crate::cooldown::{CooldownUpdate, Cooldowns};
use crate::engine::{CacheFill, Finish, Inbound, Plan, ProviderAnswer, Settlement, StepHost, Upstream, drive};
use crate::outcomes::OutcomeLedger;
use crate::store::{self, TenantOp, TenantReply};
use std::collections::BTreeMap;

/// What a provider answered.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamReply {
    pub status: u16,
    /// JSON, or the whole SSE stream when `stream` is set.
    pub body: Vec<u8>,
    pub stream: bool,
}

/// Everything that happened to one request.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The plan, when the request got that far.
    pub plan: Option<Plan>,
    /// Every provider call made, in order.
    pub upstream_calls: Vec<Upstream>,
    pub finish: Option<Finish>,
    pub settlement: Option<Settlement>,
}

impl Outcome {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A tenant's cache and budget, in memory.
#[derive(Debug)]
pub struct Simulator {
    pub config: TenantConfig,
    pub cache: BTreeMap<String, Vec<u8>>,
    pub budget: BudgetState,
    pub doorkeeper: Option<Doorkeeper>,
    /// Pretend the budget store is down (to exercise fail-open/closed).
    pub budget_store_down: bool,
    /// The host instance's cooldown table, kept across requests.
    pub cooldowns: Cooldowns,
    /// The tenant's outcome ledger.
    pub outcomes: OutcomeLedger,
}

impl Simulator {
    pub fn new(config: TenantConfig, doorkeeper_seed: [u8; 32]) -> Simulator {
        let doorkeeper = if config.cache.doorkeeper { Doorkeeper::new(100_000, doorkeeper_seed) } else { None };
        Simulator {
            config,
            cache: BTreeMap::new(),
            budget: BudgetState::default(),
            doorkeeper,
            budget_store_down: false,
            cooldowns: Cooldowns::default(),
            outcomes: OutcomeLedger::default(),
        }
    }

    /// Handle one request end to end, with the reference driver.
    pub fn handle(
        &mut self,
        inbound: &Inbound<'_>,
        upstream: &mut dyn FnMut(&Upstream) -> Option<UpstreamReply>,
    ) -> Outcome {
        let now = inbound.now;
        let mut plan = match Plan::new(&self.config, inbound) {
            Ok(p) => p,
            Err(refused) => {
                let resp = refused.response();
                return Outcome {
                    status: resp.status,
                    headers: resp.headers,
                    body: resp.body,
                    plan: None,
                    upstream_calls: Vec::new(),
                    finish: None,
                    settlement: None,
                };
            }
        };
        plan.consult_cooldowns(&self.cooldowns, now);
        let driven = drive(&mut plan, &mut SimHost { sim: self, upstream, now }, now);
        Outcome {
            status: driven.response.status,
            headers: driven.response.headers,
            body: driven.response.body,
            plan: Some(plan),
            upstream_calls: driven.calls,
            finish: driven.closing.finish,
            settlement: driven.closing.settlement,
        }
    }

    /// Spend so far across the tenant's first limit, for reports.
    pub fn spent(&mut self, now: u64) -> Amount {
        budget::status(&mut self.budget, &self.config.budgets, now).first().map(|s| s.spent).unwrap_or_default()
    }
}

/// The simulator as the reference driver's host.
struct SimHost<'a, 'u> {
    sim: &'a mut Simulator,
    upstream: &'u mut dyn FnMut(&Upstream) -> Option<UpstreamReply>,
    now: u64,
}

impl StepHost for SimHost<'_, '_> {
    fn lookup_cache(&mut self, key: &CacheKey, api: ApiFormat) -> Option<CacheEntry> {
        self.sim.cache.get(key.as_str()).and_then(|b| CacheEntry::from_bytes(b, api, self.now))
    }

    fn doorkeeper(&mut self) -> Option<&mut Doorkeeper> {
        self.sim.doorkeeper.as_mut()
    }

    fn ask(&mut self, op: TenantOp) -> Option<TenantReply> {
        // A store that is down answers nothing (settlements still land:
        // the simulator models a store that is unreachable only for the
        // request-path calls).
        if self.sim.budget_store_down {
            return None;
        }
        store::apply(&mut self.sim.budget, &mut self.sim.outcomes, &[op], self.now).0.pop()
    }

    fn apply(&mut self, ops: Vec<TenantOp>) {
        store::apply(&mut self.sim.budget, &mut self.sim.outcomes, &ops, self.now);
    }

    fn cooldown(&mut self, update: &CooldownUpdate) {
        self.sim.cooldowns.apply(update);
    }

    fn call(&mut self, upstream: &Upstream) -> Option<ProviderAnswer> {
        (self.upstream)(upstream).map(|r| ProviderAnswer {
            status: r.status,
            content_type: if r.stream { "text/event-stream; charset=utf-8" } else { "application/json" }.to_owned(),
            retry_after: None,
            body: r.body,
        })
    }

    fn fill_cache(&mut self, fill: &CacheFill) {
        self.sim.cache.insert(fill.key.0.clone(), fill.value.clone());
    }
}
