//! Cooldowns driven end to end: the in-memory host (`sim::Simulator`) keeps
//! one `Cooldowns` table across requests, consults it for every plan and
//! feeds it every attempt, exactly as the Worker and the Envoy filter do.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use tollgate_core::api::ApiFormat;
use tollgate_core::cache::NotAdmitted;
use tollgate_core::config::{ModelRef, TenantConfig};
use tollgate_core::cooldown::{CooldownUpdate, Cooldowns};
use tollgate_core::engine::{Inbound, Next, Plan, Upstream};
use tollgate_core::sim::{Outcome, Simulator, UpstreamReply};

const NOW: u64 = 1_795_000_000;
const A: &str = "gpt-4o-mini";
const B: &str = "gpt-4.1-nano";
const C: &str = "gpt-4.1-mini";

fn config(models: &[&str], cooldown: Option<Value>) -> TenantConfig {
    let models: Vec<String> = models.iter().map(|m| format!("openai/{m}")).collect();
    let mut routing = json!({"tiers": [{"name": "only", "models": models}]});
    if let Some(c) = cooldown {
        routing["cooldown"] = c;
    }
    let cfg = json!({"version": 1, "tenant_id": "t1", "routing": routing, "cache": {"doorkeeper": false}});
    TenantConfig::from_json(cfg.to_string().as_bytes()).unwrap()
}

fn n3_t30() -> Option<Value> {
    Some(json!({"failures": 3, "seconds": 30}))
}

fn model_of(up: &Upstream) -> String {
    up.target.model.clone()
}

fn answer(up: &Upstream) -> UpstreamReply {
    let model = model_of(up);
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": NOW, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer from {model}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
    });
    UpstreamReply { status: 200, body: body.to_string().into_bytes(), stream: false }
}

/// `failing` answer 503, everything else answers.
fn provider(failing: &'static [&'static str]) -> impl FnMut(&Upstream) -> Option<UpstreamReply> {
    move |up| {
        if failing.contains(&up.target.model.as_str()) {
            Some(UpstreamReply { status: 503, body: b"{}".to_vec(), stream: false })
        } else {
            Some(answer(up))
        }
    }
}

fn send(sim: &mut Simulator, now: u64, upstream: &mut dyn FnMut(&Upstream) -> Option<UpstreamReply>) -> Outcome {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = json!({"model": "tollgate/auto", "messages": [{"role": "user", "content": format!("What is {call}?")}], "temperature": 0}).to_string();
    let mut entropy = [0u8; 16];
    entropy[..8].copy_from_slice(&call.to_le_bytes());
    let inbound = Inbound {
        tenant_id: "t1",
        api: ApiFormat::OpenAi,
        body: body.as_bytes(),
        cache_control: None,
        now,
        entropy,
        key: None,
        user_header: None,
        tags_header: None,
    };
    sim.handle(&inbound, upstream)
}

fn called(o: &Outcome) -> Vec<String> {
    o.upstream_calls.iter().map(model_of).collect()
}

fn reasons(o: &Outcome) -> String {
    o.header("x-tollgate-reasons").unwrap_or_default().to_owned()
}

#[test]
fn after_the_threshold_the_failing_model_is_passed_over_until_its_cooldown_ends() {
    let mut sim = Simulator::new(config(&[A, B], n3_t30()), [1; 32]);
    let mut up = provider(&[A]);
    for i in 0..3 {
        let o = send(&mut sim, NOW + i, &mut up);
        assert_eq!(called(&o), [A, B], "request {i} still tries the first model");
        assert!(!reasons(&o).contains("cooldown"));
    }
    let o = send(&mut sim, NOW + 3, &mut up);
    assert_eq!(o.status, 200);
    assert_eq!(called(&o), [B], "straight to the second model");
    assert!(reasons(&o).contains(&format!("cooldown:openai/{A}")), "{}", reasons(&o));
    assert_eq!(o.header("x-tollgate-fallbacks"), Some("1"), "the model passed over counts as a fallback");
    assert_eq!(o.header("x-tollgate-model"), Some(&*format!("openai/{B}")));
    assert_eq!(o.upstream_calls[0].attempt, 0, "no failed attempt before it");
    assert_eq!(o.plan.as_ref().unwrap().cooldown_skips(), [ModelRef::parse(&format!("openai/{A}")).unwrap()]);
    assert_eq!(o.finish.unwrap().not_cached, Some(NotAdmitted::Fallback), "not cached under the first model's key");
    // Still cooling 30 s after the last failure (at NOW + 2), not after.
    assert_eq!(called(&send(&mut sim, NOW + 31, &mut up)), [B]);
    let o = send(&mut sim, NOW + 32, &mut up);
    assert_eq!(called(&o), [A, B], "tried again once the cooldown is over");
    // That one more failure cools it again at once.
    assert_eq!(called(&send(&mut sim, NOW + 33, &mut up)), [B]);
    // It recovers: the next try after the cooldown answers, and it stays first.
    let mut healthy = provider(&[]);
    assert_eq!(called(&send(&mut sim, NOW + 62, &mut healthy)), [A]);
    assert!(sim.cooldowns.is_empty());
    assert_eq!(called(&send(&mut sim, NOW + 63, &mut healthy)), [A]);
}

#[test]
fn a_success_resets_the_count() {
    let mut sim = Simulator::new(config(&[A, B], n3_t30()), [1; 32]);
    let mut failing = provider(&[A]);
    let mut healthy = provider(&[]);
    send(&mut sim, NOW, &mut failing);
    send(&mut sim, NOW, &mut failing);
    assert_eq!(called(&send(&mut sim, NOW, &mut healthy)), [A]);
    send(&mut sim, NOW, &mut failing);
    send(&mut sim, NOW, &mut failing);
    assert_eq!(called(&send(&mut sim, NOW, &mut failing)), [A, B], "two failures since the answer: not yet");
    assert_eq!(called(&send(&mut sim, NOW, &mut failing)), [B]);
}

#[test]
fn a_chain_whose_every_model_is_cooling_down_is_still_tried_from_its_first() {
    let mut sim = Simulator::new(config(&[A, B], n3_t30()), [1; 32]);
    let mut both = provider(&[A, B]);
    for _ in 0..3 {
        assert_eq!(send(&mut sim, NOW, &mut both).status, 502);
    }
    let o = send(&mut sim, NOW + 1, &mut both);
    assert_eq!(called(&o), [A, B], "never dark: tried in the chain's own order");
    assert!(!reasons(&o).contains("cooldown"), "nothing was passed over");
    // B recovers while both are cooling down: A is tried first, then B answers.
    let mut only_a = provider(&[A]);
    let o = send(&mut sim, NOW + 2, &mut only_a);
    assert_eq!((o.status, called(&o)), (200, vec![A.to_owned(), B.to_owned()]));
    // Now only A is cooling down.
    assert_eq!(called(&send(&mut sim, NOW + 3, &mut only_a)), [B]);
}

#[test]
fn a_cooling_model_is_the_last_resort_not_dropped() {
    let mut sim = Simulator::new(config(&[A, B, C], n3_t30()), [1; 32]);
    let mut b_fails = provider(&[B]);
    let mut b_and_c_fail = provider(&[B, C]);
    // A and B fail three times in a row (C answers).
    let mut a_and_b_fail = provider(&[A, B]);
    for _ in 0..3 {
        send(&mut sim, NOW, &mut a_and_b_fail);
    }
    // Now A and B are cooling: C first, then the cooling ones in chain order.
    let o = send(&mut sim, NOW + 1, &mut b_and_c_fail);
    assert_eq!(called(&o), [C, A], "C failed, so the cooling A answers");
    assert_eq!(o.header("x-tollgate-fallbacks"), Some("1"), "one failed attempt, nothing before A passed over");
    let o = send(&mut sim, NOW + 1, &mut b_fails);
    assert_eq!(called(&o), [A], "A answered last time: no longer cooling");
    assert_eq!(o.header("x-tollgate-fallbacks"), None);
}

#[test]
fn the_fallback_count_names_only_models_passed_over_before_the_answer() {
    // [A, B, C] with B cooling: A answers first (B is after it), no fallback.
    let mut sim = Simulator::new(config(&[A, B, C], n3_t30()), [1; 32]);
    for _ in 0..3 {
        sim.cooldowns.record_failure(&ModelRef::parse(&format!("openai/{B}")).unwrap(), NOW, None);
    }
    let mut a_fails = provider(&[A]);
    let o = send(&mut sim, NOW, &mut provider(&[]));
    assert_eq!((called(&o), o.header("x-tollgate-fallbacks")), (vec![A.to_owned()], None));
    assert!(!reasons(&o).contains("cooldown"), "B was never needed, so never passed over");
    assert!(o.plan.as_ref().unwrap().cooldown_skips().is_empty());
    let o = send(&mut sim, NOW, &mut a_fails);
    assert_eq!(called(&o), [A, C]);
    assert_eq!(o.header("x-tollgate-fallbacks"), Some("2"), "A failed and B was passed over");
    assert!(reasons(&o).contains(&format!("cooldown:openai/{B}")), "{}", reasons(&o));
}

#[test]
fn tenants_without_cooldowns_neither_read_nor_write_the_table() {
    let mut sim = Simulator::new(config(&[A, B], None), [1; 32]);
    let mut failing = provider(&[A]);
    for _ in 0..5 {
        assert_eq!(called(&send(&mut sim, NOW, &mut failing)), [A, B]);
    }
    assert!(sim.cooldowns.is_empty());
    for _ in 0..3 {
        sim.cooldowns.record_failure(&ModelRef::parse(&format!("openai/{A}")).unwrap(), NOW, None);
    }
    assert_eq!(called(&send(&mut sim, NOW, &mut failing)), [A, B]);
}

#[test]
fn a_429_with_retry_after_cools_the_model_until_then() {
    let cfg = config(&[A, B], n3_t30());
    let mut table = Cooldowns::new();
    // One request driven by hand, as a host does: the first attempt gets
    // 429 with `retry-after: 10`.
    let body = json!({"model": "tollgate/auto", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let inbound = Inbound {
        tenant_id: "t1",
        api: ApiFormat::OpenAi,
        body: body.as_bytes(),
        cache_control: None,
        now: NOW,
        entropy: [7; 16],
        key: None,
        user_header: None,
        tags_header: None,
    };
    let mut plan = Plan::new(&cfg, &inbound).unwrap();
    plan.consult_cooldowns(&table, NOW);
    let Next::Forward(up) = plan.start() else { panic!("expected a forward") };
    assert_eq!(model_of(&up), A);
    let update = plan.attempt_ended(&up, Some(429), Some("10"), NOW);
    assert!(matches!(update, CooldownUpdate::Failed { retry_after: Some(10), .. }));
    assert!(table.apply(&update), "one 429 with retry-after starts a cooldown");
    let Next::Forward(next) = plan.on_upstream_failure(Some(429)) else { panic!("expected the fallback") };
    assert_eq!(model_of(&next), B);
    assert!(!table.apply(&plan.attempt_ended(&next, Some(200), None, NOW)));

    let mut sim = Simulator::new(cfg, [1; 32]);
    sim.cooldowns = table;
    let mut healthy = provider(&[]);
    assert_eq!(called(&send(&mut sim, NOW + 9, &mut healthy)), [B]);
    assert_eq!(called(&send(&mut sim, NOW + 10, &mut healthy)), [A], "tried again when retry-after says");
}

#[test]
fn a_tenant_without_cooldowns_gets_no_updates_to_apply() {
    let cfg = config(&[A, B], None);
    let body = json!({"model": "tollgate/auto", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let inbound = Inbound {
        tenant_id: "t1",
        api: ApiFormat::OpenAi,
        body: body.as_bytes(),
        cache_control: None,
        now: NOW,
        entropy: [8; 16],
        key: None,
        user_header: None,
        tags_header: None,
    };
    let mut plan = Plan::new(&cfg, &inbound).unwrap();
    let Next::Forward(up) = plan.start() else { panic!("expected a forward") };
    assert_eq!(plan.attempt_ended(&up, Some(429), Some("10"), NOW), CooldownUpdate::Nothing);
}
