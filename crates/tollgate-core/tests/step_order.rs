//! The order of a request's steps, as the core's reference driver takes
//! them (`engine::drive`). The Worker (`crates/tollgate-worker/src/proxy.rs`)
//! and the Envoy filter (`crates/tollgate-envoy/src/stream.rs`) pump the same
//! steps in this order with their own I/O; this pins the order, including
//! the answer side and what a host applies when.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::collections::BTreeMap;
use tollgate_core::api::ApiFormat;
use tollgate_core::budget::{BudgetState, LedgerOp};
use tollgate_core::cache::{CacheEntry, CacheKey};
use tollgate_core::config::TenantConfig;
use tollgate_core::cooldown::{CooldownUpdate, Cooldowns};
use tollgate_core::engine::{CacheFill, Inbound, Next, Plan, ProviderAnswer, StepHost, Upstream, drive};
use tollgate_core::outcomes::{OutcomeLedger, OutcomeOp};
use tollgate_core::response;
use tollgate_core::store::{self, TenantOp, TenantReply};

const NOW: u64 = 1_795_000_000;

fn config(extra: Value) -> TenantConfig {
    let mut base = json!({
        "version": 1,
        "tenant_id": "t1",
        "routing": {
            "tiers": [
                {"name": "cheap", "up_to_score": 0.5, "models": ["openai/gpt-4o-mini", "openai/gpt-4.1-nano"]},
                {"name": "premium", "models": ["openai/gpt-4o"]}
            ]
        },
        "budgets": {"limits": [{"window": "day", "usd": 10.0}]},
        "cache": {"enabled": true, "doorkeeper": false}
    });
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
    TenantConfig::from_json(base.to_string().as_bytes()).unwrap()
}

/// A host that records every duty it is given, in order.
#[derive(Default)]
struct Recorder {
    cache: BTreeMap<String, Vec<u8>>,
    budget: BudgetState,
    outcomes: OutcomeLedger,
    cooldowns: Cooldowns,
    store_down: bool,
    /// What each call answers, in turn (None: a timeout).
    answers: Vec<Option<ProviderAnswer>>,
    /// Every op applied, and how: "ask", "apply" or "detached".
    applied: Vec<(&'static str, TenantOp)>,
    cooldown_updates: Vec<CooldownUpdate>,
}

impl StepHost for Recorder {
    fn lookup_cache(&mut self, key: &CacheKey, api: ApiFormat) -> Option<CacheEntry> {
        self.cache.get(key.as_str()).and_then(|b| CacheEntry::from_bytes(b, api, NOW))
    }
    fn ask(&mut self, op: TenantOp) -> Option<TenantReply> {
        self.applied.push(("ask", op.clone()));
        if self.store_down {
            return None;
        }
        store::apply(&mut self.budget, &mut self.outcomes, &[op], NOW).0.pop()
    }
    fn apply(&mut self, ops: Vec<TenantOp>) {
        self.applied.extend(ops.iter().map(|op| ("apply", op.clone())));
        store::apply(&mut self.budget, &mut self.outcomes, &ops, NOW);
    }
    fn apply_detached(&mut self, ops: Vec<TenantOp>) {
        self.applied.extend(ops.iter().map(|op| ("detached", op.clone())));
        store::apply(&mut self.budget, &mut self.outcomes, &ops, NOW);
    }
    fn cooldown(&mut self, update: &CooldownUpdate) {
        self.cooldown_updates.push(update.clone());
        self.cooldowns.apply(update);
    }
    fn call(&mut self, _upstream: &Upstream) -> Option<ProviderAnswer> {
        if self.answers.is_empty() { None } else { self.answers.remove(0) }
    }
    fn fill_cache(&mut self, fill: &CacheFill) {
        self.cache.insert(fill.key.as_str().to_owned(), fill.value.clone());
    }
}

fn completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": NOW, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
    })
}

fn json_answer(status: u16, body: &Value) -> Option<ProviderAnswer> {
    Some(ProviderAnswer {
        status,
        content_type: "application/json".into(),
        retry_after: None,
        body: body.to_string().into_bytes(),
    })
}

fn sse_answer(body: &Value) -> Option<ProviderAnswer> {
    Some(ProviderAnswer {
        status: 200,
        content_type: "text/event-stream".into(),
        retry_after: None,
        body: response::replay_as_sse(ApiFormat::OpenAi, body, true).unwrap(),
    })
}

fn plan(config: &TenantConfig, body: &Value) -> Plan {
    let bytes = body.to_string();
    let inbound = Inbound {
        tenant_id: "t1",
        api: ApiFormat::OpenAi,
        body: bytes.as_bytes(),
        cache_control: None,
        now: NOW,
        entropy: [7; 16],
        key: None,
        user_header: None,
        tags_header: None,
    };
    Plan::new(config, &inbound).unwrap()
}

fn easy(stream: bool) -> Value {
    json!({"model": "tollgate/auto", "stream": stream, "temperature": 0, "messages": [{"role": "user", "content": "What is the capital of France?"}]})
}

fn op_names(applied: &[(&'static str, TenantOp)]) -> Vec<String> {
    applied
        .iter()
        .map(|(how, op)| {
            let what = match op {
                TenantOp::Budget(LedgerOp::Check { .. }) => "check",
                TenantOp::Budget(LedgerOp::Reserve { .. }) => "reserve",
                TenantOp::Budget(LedgerOp::Settle { .. }) => "settle",
                TenantOp::Budget(LedgerOp::Release { .. }) => "release",
                TenantOp::Budget(_) => "budget",
                TenantOp::Outcome(OutcomeOp::Record { .. }) => "record",
                TenantOp::Outcome(_) => "outcome",
            };
            format!("{how}:{what}")
        })
        .collect()
}

#[test]
fn a_json_answer_is_reserved_forwarded_relayed_then_cached_before_it_is_settled_and_recorded() {
    let config = config(json!({}));
    let mut host = Recorder { answers: vec![json_answer(200, &completion("Paris."))], ..Recorder::default() };
    let driven = drive(&mut plan(&config, &easy(false)), &mut host, NOW);
    assert_eq!(driven.response.status, 200);
    assert_eq!(
        driven.steps,
        ["lookup_cache", "reserve", "forward", "answer_head", "json_answer", "relay", "fill_cache", "close"]
    );
    assert_eq!(op_names(&host.applied), ["ask:reserve", "apply:settle", "apply:record"]);
}

#[test]
fn a_repeat_is_served_from_the_cache_after_a_budget_check_and_recorded_without_a_settlement() {
    let config = config(json!({}));
    let mut host = Recorder { answers: vec![json_answer(200, &completion("Paris."))], ..Recorder::default() };
    drive(&mut plan(&config, &easy(false)), &mut host, NOW);
    host.applied.clear();
    let driven = drive(&mut plan(&config, &easy(false)), &mut host, NOW);
    assert_eq!(driven.steps, ["lookup_cache", "check_budget", "respond", "close"]);
    assert_eq!(op_names(&host.applied), ["ask:check", "apply:record"]);
    assert!(driven.calls.is_empty());
}

#[test]
fn a_stream_is_relayed_as_it_comes_and_closed_at_its_end() {
    let config = config(json!({}));
    let mut host = Recorder { answers: vec![sse_answer(&completion("Paris."))], ..Recorder::default() };
    let driven = drive(&mut plan(&config, &easy(true)), &mut host, NOW);
    assert_eq!(driven.steps, ["lookup_cache", "reserve", "forward", "answer_head", "stream", "fill_cache", "close"]);
    assert_eq!(op_names(&host.applied), ["ask:reserve", "apply:settle", "apply:record"]);
    assert!(String::from_utf8_lossy(&driven.response.body).contains("Paris."));
}

#[test]
fn a_failed_model_is_told_to_the_cooldown_table_before_the_next_model_is_forwarded() {
    let config = config(json!({"routing": {
        "tiers": [
            {"name": "cheap", "up_to_score": 0.5, "models": ["openai/gpt-4o-mini", "openai/gpt-4.1-nano"]},
            {"name": "premium", "models": ["openai/gpt-4o"]}
        ],
        "cooldown": {"failures": 1, "seconds": 30}
    }}));
    let overloaded = json!({"error": {"message": "overloaded"}});
    let mut host = Recorder {
        answers: vec![json_answer(503, &overloaded), json_answer(200, &completion("Paris."))],
        ..Recorder::default()
    };
    let driven = drive(&mut plan(&config, &easy(false)), &mut host, NOW);
    assert_eq!(driven.response.status, 200);
    assert_eq!(
        driven.steps,
        [
            "lookup_cache",
            "reserve",
            "forward",
            "answer_head",
            "cooldown",
            "forward",
            "answer_head",
            "json_answer",
            "cooldown",
            "relay",
            "close"
        ]
    );
    assert!(matches!(host.cooldown_updates[0], CooldownUpdate::Failed { .. }));
    assert!(matches!(host.cooldown_updates[1], CooldownUpdate::Answered { .. }));
    // A fallback's answer is not cached (lookups use the first model's key).
    assert!(host.cache.is_empty());
}

#[test]
fn a_reserve_whose_answer_is_lost_is_released_by_id_in_the_background_before_the_request_goes_on() {
    let config = config(json!({"budgets": {"limits": [{"window": "day", "usd": 10.0}], "store_failure": "open"}}));
    let mut host =
        Recorder { store_down: true, answers: vec![json_answer(200, &completion("Paris."))], ..Recorder::default() };
    let mut plan = plan(&config, &easy(false));
    let driven = drive(&mut plan, &mut host, NOW);
    assert_eq!(driven.response.status, 200);
    assert_eq!(
        driven.steps,
        [
            "lookup_cache",
            "reserve",
            "detached",
            "forward",
            "answer_head",
            "json_answer",
            "relay",
            "fill_cache",
            "close"
        ]
    );
    let released: Vec<&TenantOp> =
        host.applied.iter().filter(|(how, _)| *how == "detached").map(|(_, op)| op).collect();
    assert!(
        matches!(released[..], [TenantOp::Budget(LedgerOp::Release { id, .. })] if *id == plan.request_id),
        "{released:?}"
    );
}

#[test]
fn a_request_that_ends_while_its_reserve_is_out_releases_that_reserve_by_id() {
    let config = config(json!({}));
    let mut plan = plan(&config, &easy(false));
    let Next::LookupCache(_) = plan.start() else { panic!("expected a cache lookup") };
    let Next::Reserve(_) = plan.on_cache(None, None) else { panic!("expected a reserve") };
    // The client leaves before the store answers.
    let closing = plan.cancel();
    assert!(
        matches!(&closing.ops[..], [TenantOp::Budget(LedgerOp::Release { id, .. })] if *id == plan.request_id),
        "{:?}",
        closing.ops
    );
    assert!(plan.cancel().ops.is_empty(), "a request closes once");
}

#[test]
fn an_unresolved_answer_is_charged_before_the_next_tier_is_reserved() {
    let config = config(json!({"escalation": {"enabled": true, "on": ["empty"]}}));
    let mut host = Recorder {
        answers: vec![json_answer(200, &completion("")), json_answer(200, &completion("Paris."))],
        ..Recorder::default()
    };
    let driven = drive(&mut plan(&config, &easy(false)), &mut host, NOW);
    assert_eq!(driven.response.status, 200);
    assert_eq!(
        driven.steps,
        [
            "lookup_cache",
            "reserve",
            "forward",
            "answer_head",
            "json_answer",
            "escalate",
            "reserve",
            "forward",
            "answer_head",
            "json_answer",
            "relay",
            // The resolved answer is what an exact repeat should get.
            "fill_cache",
            "close"
        ]
    );
    assert_eq!(op_names(&host.applied), ["ask:reserve", "apply:settle", "ask:reserve", "apply:settle", "apply:record"]);
}

#[test]
fn a_stream_cut_off_midway_is_charged_for_what_was_seen_and_closes_once() {
    let config = config(json!({}));
    let mut plan = plan(&config, &easy(true));
    let Next::LookupCache(_) = plan.start() else { panic!("expected a cache lookup") };
    let Next::Reserve(TenantOp::Budget(op)) = plan.on_cache(None, None) else { panic!("expected a reserve") };
    let mut budget = BudgetState::default();
    let granted = tollgate_core::budget::apply(&mut budget, &op, NOW);
    let Next::Forward(_) = plan.on_reserve_reply(Some(TenantReply::Budget(granted))) else {
        panic!("expected a forward")
    };
    let tollgate_core::engine::AnswerStart::Stream { .. } =
        plan.on_answer_head(Some(200), "text/event-stream", None, NOW)
    else {
        panic!("expected a stream")
    };
    let whole =
        response::replay_as_sse(ApiFormat::OpenAi, &completion("Paris is the capital of France."), true).unwrap();
    let mut out = Vec::new();
    plan.on_stream_chunk(&whole[..whole.len() / 2], &mut out);
    // The client leaves.
    let closing = plan.on_cut_off(NOW);
    assert!(
        matches!(&closing.ops[..], [TenantOp::Budget(LedgerOp::Settle { amount, .. }), TenantOp::Outcome(OutcomeOp::Record { .. })] if amount.tokens > 0),
        "{:?}",
        closing.ops
    );
    assert!(closing.cache_fill.is_none(), "a cut answer is never cached");
    assert!(plan.on_cut_off(NOW).ops.is_empty());
}
