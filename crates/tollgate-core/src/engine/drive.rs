//! The reference driver: the order in which a host takes the plan's steps.
//!
//! [`drive`] is the loop every host runs, written once against a small
//! [`StepHost`] trait, synchronously. The simulator (and through it the CLI
//! and the core's flow tests) runs it as it is. The Worker (async, `await`
//! at each I/O) and the Envoy filter (callbacks, a step per callback) cannot
//! run a synchronous loop, so each pumps the same steps in the same order
//! with its own I/O, and decides nothing: every branch of theirs is a branch
//! on a [`Next`] or an [`AnswerStart`]. `tests/step_order.rs` pins the order.

use super::{AnswerStart, Closing, Duty, JsonAnswer, LocalResponse, Next, Plan, Upstream};
use crate::api::ApiFormat;
use crate::cache::{CacheEntry, CacheKey, Doorkeeper};
use crate::cooldown::CooldownUpdate;
use crate::engine::CacheFill;
use crate::store::{TenantOp, TenantReply};

/// A provider's whole answer, as the reference driver takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderAnswer {
    pub status: u16,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

/// The I/O behind the steps.
pub trait StepHost {
    /// Read `key` from the cache (None: a miss, or unreadable).
    fn lookup_cache(&mut self, key: &CacheKey, api: ApiFormat) -> Option<CacheEntry>;
    /// The host's doorkeeper (the plan consults it only for a tenant that uses one).
    fn doorkeeper(&mut self) -> Option<&mut Doorkeeper> {
        None
    }
    /// Send one operation to the tenant's store and wait for its reply
    /// (None: the store could not be reached).
    fn ask(&mut self, op: TenantOp) -> Option<TenantReply>;
    /// Apply a batch in the tenant's store, waiting until it is applied.
    fn apply(&mut self, ops: Vec<TenantOp>);
    /// Apply a batch without waiting for it.
    fn apply_detached(&mut self, ops: Vec<TenantOp>) {
        self.apply(ops);
    }
    /// Update the host instance's cooldown table.
    fn cooldown(&mut self, update: &CooldownUpdate);
    /// Call the provider (None: a timeout or a connection failure).
    fn call(&mut self, upstream: &Upstream) -> Option<ProviderAnswer>;
    /// Write a cache entry.
    fn fill_cache(&mut self, fill: &CacheFill);
}

/// What the reference driver did with one request.
#[derive(Clone, Debug)]
pub struct Driven {
    /// What the client got.
    pub response: LocalResponse,
    pub closing: Closing,
    /// Every provider call made, in order.
    pub calls: Vec<Upstream>,
    /// The steps taken, in order, by name (see [`Next::name`]), with the
    /// answer side's `answer_head`, `stream` / `json_answer`, and `close`.
    pub steps: Vec<&'static str>,
}

/// Take `plan` from its first step to its close against `host`, at `now`.
pub fn drive(plan: &mut Plan, host: &mut impl StepHost, now: u64) -> Driven {
    let mut calls = Vec::new();
    let mut steps = Vec::new();
    let mut next = plan.start();
    loop {
        drain_duties(plan, host, &mut steps);
        steps.push(next.name());
        next = match next {
            Next::Respond(response, closing) => {
                close(host, &closing, &mut steps);
                return Driven { response, closing, calls, steps };
            }
            Next::LookupCache(key) => {
                let found = host.lookup_cache(&key, plan.api);
                plan.on_cache(found, host.doorkeeper())
            }
            Next::CheckBudget(op) => {
                let reply = host.ask(op);
                plan.on_budget_reply(reply)
            }
            Next::Reserve(op) => {
                let reply = host.ask(op);
                plan.on_reserve_reply(reply)
            }
            Next::Escalate(ops) => {
                if !ops.is_empty() {
                    host.apply(ops);
                }
                plan.escalate()
            }
            Next::Forward(upstream) => {
                let answer = host.call(&upstream);
                calls.push(upstream);
                steps.push("answer_head");
                let Some(answer) = answer else {
                    next = match plan.on_answer_head(None, "", None, now) {
                        AnswerStart::Failed(step) => *step,
                        _ => plan.on_answer_lost(now),
                    };
                    continue;
                };
                let start =
                    plan.on_answer_head(Some(answer.status), &answer.content_type, answer.retry_after.as_deref(), now);
                match start {
                    AnswerStart::Failed(step) => *step,
                    AnswerStart::ReadBody => {
                        steps.push("json_answer");
                        match plan.on_json_answer(Some(&answer.body), now) {
                            JsonAnswer::Replace(step) => step,
                            JsonAnswer::Relay(relay) => {
                                drain_duties(plan, host, &mut steps);
                                steps.push("relay");
                                close(host, &relay.closing, &mut steps);
                                let response = LocalResponse {
                                    status: relay.status,
                                    headers: relay.headers,
                                    body: relay.body.unwrap_or(answer.body),
                                };
                                return Driven { response, closing: relay.closing, calls, steps };
                            }
                        }
                    }
                    AnswerStart::Stream { status, headers } => {
                        steps.push("stream");
                        let mut body = Vec::with_capacity(answer.body.len());
                        plan.on_stream_chunk(&answer.body, &mut body);
                        let closing = plan.on_stream_end(&mut body, now);
                        drain_duties(plan, host, &mut steps);
                        close(host, &closing, &mut steps);
                        let response = LocalResponse { status, headers, body };
                        return Driven { response, closing, calls, steps };
                    }
                }
            }
        };
    }
}

/// Hand the host what waits for nothing.
fn drain_duties(plan: &mut Plan, host: &mut impl StepHost, steps: &mut Vec<&'static str>) {
    while let Some(duty) = plan.poll_duty() {
        match duty {
            Duty::Detached(ops) => {
                steps.push("detached");
                host.apply_detached(ops);
            }
            Duty::Cooldown(update) => {
                steps.push("cooldown");
                host.cooldown(&update);
            }
        }
    }
}

/// The fill first, so a recorded request's cache entry exists; then the ops.
fn close(host: &mut impl StepHost, closing: &Closing, steps: &mut Vec<&'static str>) {
    if let Some(fill) = &closing.cache_fill {
        steps.push("fill_cache");
        host.fill_cache(fill);
    }
    if !closing.ops.is_empty() {
        steps.push("close");
        host.apply(closing.ops.clone());
    }
}
