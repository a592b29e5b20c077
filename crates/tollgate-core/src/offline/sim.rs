//! An in-memory host: drives [`Plan`] exactly as the Worker and the Envoy
//! filter do, with a map for the cache, a [`BudgetState`] for the ledger
//! and a caller-supplied function for the provider.
//!
//! The CLI uses it to route requests and replay workloads offline; tests use
//! it as the fake host. It does no I/O itself: the clock and the provider
//! are the caller's.

use crate::budget::{self, Amount, BudgetState, LedgerOp, LedgerReply};
use crate::cache::{CacheEntry, Doorkeeper};
use crate::config::TenantConfig;
use crate::cooldown::Cooldowns;
use crate::engine::{BudgetCheck, Finish, Inbound, LocalResponse, Next, Plan, ReserveOutcome, Settlement, Upstream};
use crate::response::{ResponseSummary, StreamObserver};
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
        }
    }

    /// Every change to the ledger goes through [`budget::apply`], as the
    /// real hosts' budget stores do.
    fn ledger(&mut self, op: LedgerOp, now: u64) -> LedgerReply {
        budget::apply(&mut self.budget, &op, now)
    }

    fn settle(&mut self, s: &Settlement, now: u64) {
        let op = s.to_op(&self.config.budgets);
        self.ledger(op, now);
    }

    /// Handle one request end to end.
    pub fn handle(
        &mut self,
        inbound: &Inbound<'_>,
        upstream: &mut dyn FnMut(&Upstream) -> Option<UpstreamReply>,
    ) -> Outcome {
        let now = inbound.now;
        let mut plan = match Plan::new(&self.config, inbound) {
            Ok(p) => p,
            Err(refused) => return finished(refused.response(), None, Vec::new(), None, None),
        };
        plan.consult_cooldowns(&self.cooldowns, now);
        let mut calls = Vec::new();
        let mut next = plan.start();
        loop {
            next = match next {
                Next::Respond(resp, settlement) => {
                    if let Some(s) = &settlement {
                        self.settle(s, now);
                    }
                    return finished(resp, Some(plan), calls, None, settlement);
                }
                Next::LookupCache(key) => {
                    let entry = self.cache.get(key.as_str()).and_then(|b| CacheEntry::from_bytes(b, plan.api, now));
                    plan.on_cache(entry, self.doorkeeper.as_mut())
                }
                Next::CheckBudget => {
                    let check = if self.budget_store_down {
                        BudgetCheck::StoreUnavailable
                    } else {
                        match self.ledger(LedgerOp::Check { budgets: self.config.budgets.clone() }, now) {
                            LedgerReply::Check { exhausted } => exhausted.into(),
                            _ => BudgetCheck::StoreUnavailable,
                        }
                    };
                    plan.on_budget_check(check)
                }
                Next::Reserve(req) => {
                    let outcome = if self.budget_store_down {
                        ReserveOutcome::StoreUnavailable
                    } else {
                        match self.ledger(LedgerOp::Reserve { budgets: self.config.budgets.clone(), request: req }, now)
                        {
                            LedgerReply::Granted { granted } => ReserveOutcome::Granted(granted),
                            LedgerReply::Refused { error } => ReserveOutcome::Refused(error),
                            _ => ReserveOutcome::StoreUnavailable,
                        }
                    };
                    plan.on_reserve(outcome)
                }
                Next::Escalate(settlement) => {
                    if let Some(s) = &settlement {
                        self.settle(s, now);
                    }
                    plan.escalate()
                }
                Next::Forward(up) => {
                    let reply = upstream(&up);
                    self.cooldowns.apply(&plan.attempt_ended(&up, reply.as_ref().map(|r| r.status), None, now));
                    let observer = plan.stream_observer(&up);
                    calls.push(up);
                    match reply {
                        None => plan.on_upstream_failure(None),
                        Some(r) if crate::upstream::is_retryable(r.status) => plan.on_upstream_failure(Some(r.status)),
                        Some(r) => {
                            let (summary, assembled, body) = observe(&plan, observer, &r);
                            // Streams are relayed as they come: only JSON answers are reviewed.
                            let review =
                                if r.stream { None } else { plan.review(r.status, &summary, &body, &self.config) };
                            if let Some(step) = review {
                                next = step;
                                continue;
                            }
                            let fin = plan.finish(r.status, &summary, assembled, &self.config, now);
                            if let Some(s) = &fin.settlement {
                                self.settle(s, now);
                            }
                            if let Some(fill) = &fin.cache_fill {
                                self.cache.insert(fill.key.0.clone(), fill.value.clone());
                            }
                            let content_type =
                                if r.stream { "text/event-stream; charset=utf-8" } else { "application/json" };
                            let mut headers = vec![("content-type".to_owned(), content_type.to_owned())];
                            headers.extend(plan.response_headers());
                            let settlement = fin.settlement.clone();
                            let resp = LocalResponse { status: r.status, headers, body };
                            return finished(resp, Some(plan), calls, Some(fin), settlement);
                        }
                    }
                }
            };
        }
    }

    /// Spend so far across the tenant's first limit, for reports.
    pub fn spent(&mut self, now: u64) -> Amount {
        budget::status(&mut self.budget, &self.config.budgets, now).first().map(|s| s.spent).unwrap_or_default()
    }
}

fn observe(
    plan: &Plan,
    mut observer: StreamObserver,
    r: &UpstreamReply,
) -> (ResponseSummary, Option<serde_json::Value>, Vec<u8>) {
    if r.stream {
        let mut out = Vec::with_capacity(r.body.len());
        observer.feed(&r.body, &mut out);
        let outcome = observer.finish(&mut out);
        (outcome.summary, outcome.assembled, out)
    } else {
        let (summary, assembled) = plan.read_json_response(&r.body);
        (summary, assembled, r.body.clone())
    }
}

fn finished(
    resp: LocalResponse,
    plan: Option<Plan>,
    calls: Vec<Upstream>,
    finish: Option<Finish>,
    settlement: Option<Settlement>,
) -> Outcome {
    Outcome {
        status: resp.status,
        headers: resp.headers,
        body: resp.body,
        plan,
        upstream_calls: calls,
        finish,
        settlement,
    }
}
