//! Escalation driven end to end by the in-memory host (`sim::Simulator`),
//! the way the Worker drives it: an unresolved cheap answer is retried once
//! on the next tier, both attempts are charged to one logical request, and
//! the better answer reaches the client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use tollgate_core::api::ApiFormat;
use tollgate_core::budget;
use tollgate_core::config::TenantConfig;
use tollgate_core::engine::{Inbound, Upstream};
use tollgate_core::response;
use tollgate_core::sim::{Outcome, Simulator, UpstreamReply};

const NOW: u64 = 1_795_000_000;

fn config(escalation: Value) -> TenantConfig {
    let c = json!({
        "version": 1,
        "tenant_id": "t1",
        "routing": {"tiers": [
            {"name": "cheap", "up_to_score": 0.5, "models": ["openai/gpt-4o-mini", "openai/gpt-4.1-nano"]},
            {"name": "premium", "models": ["openai/gpt-4o", "openai/gpt-4.1"]}
        ]},
        "budgets": {"limits": [{"name": "daily", "window": "day", "usd": 10.0}]},
        "cache": {"doorkeeper": false},
        "escalation": escalation
    });
    TenantConfig::from_json(c.to_string().as_bytes()).unwrap()
}

fn on() -> Value {
    json!({"enabled": true})
}

/// A provider whose answer depends on the model asked: `cheap` for the
/// cheap tier's models, `premium` for the rest.
fn provider<'a>(
    cheap: &'a dyn Fn(&str) -> Option<UpstreamReply>,
    premium: &'a dyn Fn(&str) -> Option<UpstreamReply>,
) -> impl FnMut(&Upstream) -> Option<UpstreamReply> + 'a {
    move |up: &Upstream| {
        let body: Value = serde_json::from_slice(&up.body).unwrap();
        let model = body["model"].as_str().unwrap().to_owned();
        let stream = body["stream"] == json!(true);
        let reply = if model.contains("mini") || model.contains("nano") { cheap(&model) } else { premium(&model) };
        reply.map(|r| if stream && r.status == 200 { as_sse(&r) } else { r })
    }
}

fn as_sse(r: &UpstreamReply) -> UpstreamReply {
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    UpstreamReply { status: 200, body: response::replay_as_sse(ApiFormat::OpenAi, &v, true).unwrap(), stream: true }
}

fn answer(model: &str, content: &str, finish: &str, completion_tokens: u64) -> Option<UpstreamReply> {
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": NOW, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 100, "completion_tokens": completion_tokens, "total_tokens": 100 + completion_tokens}
    });
    Some(UpstreamReply { status: 200, body: body.to_string().into_bytes(), stream: false })
}

fn down(_: &str) -> Option<UpstreamReply> {
    Some(UpstreamReply { status: 503, body: br#"{"error":{"message":"overloaded"}}"#.to_vec(), stream: false })
}

fn send(sim: &mut Simulator, body: Value, upstream: &mut dyn FnMut(&Upstream) -> Option<UpstreamReply>) -> Outcome {
    static CALLS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    let bytes = body.to_string();
    let tenant = sim.config.tenant_id.clone();
    let mut entropy = [9u8; 16];
    entropy[0] = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let inbound = Inbound {
        tenant_id: &tenant,
        api: ApiFormat::OpenAi,
        body: bytes.as_bytes(),
        cache_control: None,
        now: NOW,
        entropy,
        key: None,
        user_header: None,
        tags_header: None,
    };
    sim.handle(&inbound, upstream)
}

fn easy(extra: Value) -> Value {
    let mut v = json!({"model": "tollgate/auto", "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0});
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

fn content(o: &Outcome) -> String {
    let v: Value = serde_json::from_slice(&o.body).unwrap();
    v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned()
}

fn models_called(o: &Outcome) -> Vec<String> {
    o.upstream_calls.iter().map(|u| u.target.model.clone()).collect()
}

/// Dollars spent and still held in the tenant's daily window.
fn ledger(sim: &mut Simulator) -> (u64, u64) {
    let s = budget::status(&mut sim.budget, &sim.config.budgets, NOW);
    (s[0].spent.micros, s[0].reserved.micros)
}

fn micros(model: &str, prompt: u64, completion: u64, config: &TenantConfig) -> u64 {
    let usage = response::Usage { input_tokens: prompt, output_tokens: completion, ..Default::default() };
    config.price(model).unwrap().cost_micros(&usage)
}

#[test]
fn without_escalation_a_cut_cheap_answer_is_relayed_as_it_is() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let mut up = provider(&|m| answer(m, "Paris is", "length", 5), &|m| answer(m, "Paris.", "stop", 3));
    let o = send(&mut sim, easy(json!({})), &mut up);
    assert_eq!((o.status, content(&o)), (200, "Paris is".to_owned()));
    assert_eq!(models_called(&o), ["gpt-4o-mini"]);
    assert_eq!(o.header("x-tollgate-escalated"), None);
}

#[test]
fn a_cut_cheap_answer_is_retried_on_premium_and_both_attempts_are_charged_to_one_request() {
    let mut sim = Simulator::new(config(on()), [1; 32]);
    let mut up = provider(&|m| answer(m, "Paris is", "length", 5), &|m| answer(m, "Paris.", "stop", 3));
    let o = send(&mut sim, easy(json!({})), &mut up);
    assert_eq!((o.status, content(&o)), (200, "Paris.".to_owned()));
    assert_eq!(models_called(&o), ["gpt-4o-mini", "gpt-4o"]);
    assert_eq!(o.header("x-tollgate-escalated"), Some("cheap->premium; reason=length"));
    assert_eq!(o.header("x-tollgate-tier"), Some("premium"));
    let both = micros("gpt-4o-mini", 100, 5, &sim.config) + micros("gpt-4o", 100, 3, &sim.config);
    assert_eq!(o.header("x-tollgate-cost-usd"), Some(tollgate_core::pricing::format_usd(both).as_str()));
    let plan = o.plan.as_ref().unwrap();
    let outcome = plan.outcome(o.finish.as_ref());
    assert!(outcome.escalated);
    assert_eq!((outcome.tier.as_str(), outcome.micros, outcome.tokens), ("cheap", both, 208));
    assert_eq!(ledger(&mut sim), (both, 0), "both attempts spent, nothing left held");
}

#[test]
fn if_the_premium_tier_fails_the_client_still_gets_the_cheap_answer_and_pays_only_for_it() {
    let mut sim = Simulator::new(config(on()), [1; 32]);
    let mut up = provider(&|m| answer(m, "", "stop", 0), &down);
    let o = send(&mut sim, easy(json!({})), &mut up);
    assert_eq!(o.status, 200);
    assert_eq!(models_called(&o), ["gpt-4o-mini", "gpt-4o", "gpt-4.1"]);
    assert_eq!(o.header("x-tollgate-tier"), Some("cheap"));
    assert!(o.header("x-tollgate-reasons").unwrap().contains("escalated tier failed"), "{:?}", o.headers);
    let cheap = micros("gpt-4o-mini", 100, 0, &sim.config);
    assert_eq!(ledger(&mut sim), (cheap, 0));
    let plan = o.plan.as_ref().unwrap();
    assert!(plan.answered_without_finish(), "the held answer's outcome is recorded");
    assert_eq!(plan.outcome(None).micros, cheap);
}

#[test]
fn malformed_json_escalates_only_when_the_client_asked_for_json() {
    let json_mode = json!({"response_format": {"type": "json_object"}});
    let mut sim = Simulator::new(config(on()), [1; 32]);
    let mut up =
        provider(&|m| answer(m, "{\"city\": \"Par", "stop", 5), &|m| answer(m, "{\"city\": \"Paris\"}", "stop", 6));
    let asked = send(&mut sim, easy(json_mode), &mut up);
    assert_eq!(content(&asked), "{\"city\": \"Paris\"}");
    assert_eq!(asked.header("x-tollgate-escalated"), Some("cheap->premium; reason=malformed_json"));
    let not_asked = send(&mut sim, easy(json!({})), &mut up);
    assert_eq!(models_called(&not_asked), ["gpt-4o-mini"]);
}

#[test]
fn a_refusal_escalates_but_not_when_the_tenant_only_escalates_on_length() {
    let refuse = |m: &str| answer(m, "I'm sorry, but I can't help with that.", "stop", 9);
    let fine = |m: &str| answer(m, "Paris.", "stop", 3);
    let mut sim = Simulator::new(config(on()), [1; 32]);
    let o = send(&mut sim, easy(json!({})), &mut provider(&refuse, &fine));
    assert_eq!(o.header("x-tollgate-escalated"), Some("cheap->premium; reason=refusal"));
    let mut only_length = Simulator::new(config(json!({"enabled": true, "on": ["length"]})), [1; 32]);
    let o = send(&mut only_length, easy(json!({})), &mut provider(&refuse, &fine));
    assert_eq!(models_called(&o), ["gpt-4o-mini"]);
}

#[test]
fn when_the_premium_answer_is_worse_the_cheap_one_is_returned_and_both_are_paid() {
    let mut sim = Simulator::new(config(on()), [1; 32]);
    let mut up = provider(&|m| answer(m, "Paris is", "length", 5), &|m| answer(m, "", "stop", 0));
    let o = send(&mut sim, easy(json!({})), &mut up);
    assert_eq!(content(&o), "Paris is");
    assert_eq!(o.header("x-tollgate-tier"), Some("cheap"));
    let both = micros("gpt-4o-mini", 100, 5, &sim.config) + micros("gpt-4o", 100, 0, &sim.config);
    assert_eq!(ledger(&mut sim), (both, 0));
}

#[test]
fn a_failed_cheap_tier_escalates_to_premium_for_json_and_for_streams_before_the_first_byte() {
    let mut sim = Simulator::new(config(on()), [1; 32]);
    let fine = |m: &str| answer(m, "Paris.", "stop", 3);
    let o = send(&mut sim, easy(json!({})), &mut provider(&down, &fine));
    assert_eq!((o.status, content(&o)), (200, "Paris.".to_owned()));
    assert_eq!(models_called(&o), ["gpt-4o-mini", "gpt-4.1-nano", "gpt-4o"]);
    assert_eq!(o.header("x-tollgate-escalated"), Some("cheap->premium; reason=upstream_error"));
    assert_eq!(ledger(&mut sim).1, 0, "the failed tier's hold was released");
    // A new tenant state, so the stream is not served from the cache.
    let mut sim = Simulator::new(config(on()), [1; 32]);
    let streamed = send(&mut sim, easy(json!({"stream": true})), &mut provider(&down, &fine));
    assert_eq!(streamed.status, 200);
    assert!(String::from_utf8_lossy(&streamed.body).contains("Paris."));
    assert_eq!(streamed.header("x-tollgate-escalated"), Some("cheap->premium; reason=upstream_error"));
    assert_eq!(ledger(&mut sim).1, 0, "the failed tier's hold was released");
}

#[test]
fn streamed_answers_are_never_escalated_for_their_content() {
    let mut sim = Simulator::new(config(on()), [1; 32]);
    let mut up = provider(&|m| answer(m, "Paris is", "length", 5), &|m| answer(m, "Paris.", "stop", 3));
    let o = send(&mut sim, easy(json!({"stream": true})), &mut up);
    assert_eq!(models_called(&o), ["gpt-4o-mini"]);
}

#[test]
fn a_client_that_named_its_tier_is_not_escalated() {
    let mut sim = Simulator::new(config(on()), [1; 32]);
    let mut up = provider(&|m| answer(m, "Paris is", "length", 5), &|m| answer(m, "Paris.", "stop", 3));
    let body =
        json!({"model": "tollgate/cheap", "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let o = send(&mut sim, body, &mut up);
    assert_eq!(models_called(&o), ["gpt-4o-mini"]);
}

#[test]
fn an_escalation_the_budget_cannot_afford_returns_the_cheap_answer() {
    let mut sim = Simulator::new(config(on()), [1; 32]);
    // Leave enough for the cheap hold (4096 output tokens of gpt-4o-mini)
    // but not for a premium one.
    budget::settle(
        &mut sim.budget,
        &sim.config.budgets,
        "elsewhere",
        budget::Amount { tokens: 0, micros: 9_990_000, requests: 0 },
        NOW,
    );
    let mut up = provider(&|m| answer(m, "Paris is", "length", 5), &|m| answer(m, "Paris.", "stop", 3));
    let o = send(&mut sim, easy(json!({})), &mut up);
    assert_eq!((o.status, content(&o)), (200, "Paris is".to_owned()));
    assert_eq!(models_called(&o), ["gpt-4o-mini"]);
    assert!(o.header("x-tollgate-reasons").unwrap().contains("escalation refused by the budget"));
    assert_eq!(ledger(&mut sim), (9_990_000 + micros("gpt-4o-mini", 100, 5, &sim.config), 0));
}

#[test]
fn escalated_answers_are_cached_under_the_routed_key_with_what_they_cost() {
    let mut sim = Simulator::new(config(on()), [1; 32]);
    let mut up = provider(&|m| answer(m, "Paris is", "length", 5), &|m| answer(m, "Paris.", "stop", 3));
    let first = send(&mut sim, easy(json!({})), &mut up);
    let again = send(&mut sim, easy(json!({})), &mut up);
    assert_eq!(again.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(content(&again), "Paris.");
    assert_eq!(again.header("x-tollgate-saved-usd"), first.header("x-tollgate-cost-usd"));
}
