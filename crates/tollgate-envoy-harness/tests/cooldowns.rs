//! Cooldowns (`routing.cooldown`): the filter keeps one table per VM, feeds
//! it every attempt (the router's first attempt and `dispatch_http_call`
//! fallbacks, with their `retry-after`), and a cooling model is passed over:
//! the first attempt then goes through Envoy's router to the next model.

// Helpers outside #[test] fns fail the test by panicking too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use tollgate_envoy_harness::{Action, Host, Stream};

const FIRST: &str = "gpt-4o-mini";
const SECOND: &str = "gpt-4.1-nano";

fn cooling() -> Value {
    let mut t = routed_tenant("cooling", json!({"cache": {"enabled": false}}));
    t["routing"]["cooldown"] = json!({"failures": 2, "seconds": 30});
    t
}

fn answer(model: &str) -> Vec<u8> {
    openai_completion(model, "Hi", 9, 4)
}

/// A request on `worker`; returns the stream and the model its first
/// attempt (through Envoy's router) went to.
fn ask(host: &Host, worker: usize) -> (Stream, String) {
    let mut s = host.stream_on(worker);
    let action = send_chat(&mut s, &key_for("cooling"), &simple_chat("Say hi"));
    assert_eq!(action, Action::Continue, "{:?}\n{}", s.local_reply(), host.log_text());
    let sent: Value = serde_json::from_slice(&s.upstream_request().unwrap().body).unwrap();
    let model = sent["model"].as_str().unwrap().to_owned();
    (s, model)
}

/// The first attempt answers `status` (with `retry-after`, if given), the
/// fallback callout to the next model answers `fallback_status`.
fn fails_then_falls_back(host: &Host, worker: usize, status: &str, retry_after: Option<&str>, fallback_status: u16) {
    let (mut s, model) = ask(host, worker);
    assert_eq!(model, FIRST);
    let body = br#"{"error":{"message":"overloaded","type":"server_error"}}"#;
    let mut headers = vec![(":status", status), ("content-type", "application/json")];
    if let Some(r) = retry_after {
        headers.push(("retry-after", r));
    }
    assert_eq!(s.send_response(&headers, &[body]), Action::Pause);
    let call = s.http_calls().pop().expect("a fallback callout");
    let sent: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(sent["model"], json!(SECOND));
    let (answer_body, answer_headers) = if fallback_status == 200 {
        (answer(SECOND), vec![("content-type", "application/json")])
    } else {
        (body.to_vec(), vec![("content-type", "application/json"), ("retry-after", "10")])
    };
    host.respond_http_call(call.token, fallback_status, &answer_headers, &answer_body);
    // An OpenAI request's chain ends there (the rest speak Anthropic).
    for next in s.http_calls() {
        host.fail_http_call(next.token);
    }
    assert!(s.local_reply().is_some());
    s.finish();
}

/// The forwarded first attempt answers 200.
fn answered(mut s: Stream, model: &str) -> Stream {
    let body = answer(model);
    s.send_response(&[(":status", "200"), ("content-type", "application/json")], &[&body]);
    s
}

#[test]
fn a_model_that_keeps_failing_is_passed_over_on_its_vm_until_its_cooldown_ends() {
    let mut host = host_for(&[cooling()]);
    for _ in 0..2 {
        fails_then_falls_back(&host, 0, "503", None, 200);
    }
    assert_eq!(host.metric("tollgate.cooldowns_started.model.gpt-4o-mini"), Some(1), "{:?}", host.metrics());

    let (s, model) = ask(&host, 0);
    assert_eq!(model, SECOND, "straight to the next model, through Envoy's router");
    let mut s = answered(s, SECOND);
    let reply = s.downstream_response().unwrap();
    assert!(reply.header("x-tollgate-reasons").unwrap().contains("cooldown:openai/gpt-4o-mini"), "{:?}", reply.headers);
    assert_eq!(reply.header("x-tollgate-fallbacks"), Some("1"));
    s.finish();
    assert_eq!(host.metric("tollgate.cooldown_skips.model.gpt-4o-mini"), Some(1), "{:?}", host.metrics());
    assert_eq!(host.metric("tollgate.fallbacks.tier.cheap"), Some(2), "a skip is not a fallback attempt");

    // Per VM: another worker thread has seen no failure.
    let other = host.add_worker();
    let (s, model) = ask(&host, other);
    assert_eq!(model, FIRST);
    answered(s, FIRST).finish();

    // After the cooldown the first model is tried again, and its answer clears it.
    host.advance(Duration::from_secs(30));
    let (s, model) = ask(&host, 0);
    assert_eq!(model, FIRST);
    answered(s, FIRST).finish();
    host.advance(Duration::from_secs(1));
    fails_then_falls_back(&host, 0, "503", None, 200);
    let (s, model) = ask(&host, 0);
    assert_eq!(model, FIRST, "one failure after an answer is below the threshold");
    answered(s, FIRST).finish();
}

#[test]
fn retry_after_is_read_from_the_router_and_from_fallback_callouts() {
    let host = host_for(&[cooling()]);
    // The first attempt's 429 says 10 s; so does the fallback's.
    fails_then_falls_back(&host, 0, "429", Some("10"), 429);
    assert_eq!(host.metric("tollgate.cooldowns_started.model.gpt-4o-mini"), Some(1), "{:?}", host.metrics());
    assert_eq!(host.metric("tollgate.cooldowns_started.model.gpt-4_1-nano"), Some(1), "{:?}", host.metrics());
    // Every model of the chain is cooling down: it is tried from its first.
    let (s, model) = ask(&host, 0);
    assert_eq!(model, FIRST);
    answered(s, FIRST).finish();
    // The first answered; only the second is cooling, which the first never needs.
    let (s, model) = ask(&host, 0);
    assert_eq!(model, FIRST);
    let mut s = answered(s, FIRST);
    assert!(!s.downstream_response().unwrap().header("x-tollgate-reasons").unwrap_or("").contains("cooldown"));
    s.finish();
    assert_eq!(host.metric("tollgate.cooldown_skips.model.gpt-4_1-nano"), None);
}

#[test]
fn a_tenant_without_cooldowns_always_tries_its_first_model() {
    let plain = routed_tenant("cooling", json!({"cache": {"enabled": false}}));
    let host = host_for(&[plain]);
    for _ in 0..5 {
        fails_then_falls_back(&host, 0, "503", None, 200);
    }
    let (s, model) = ask(&host, 0);
    assert_eq!(model, FIRST);
    answered(s, FIRST).finish();
    assert_eq!(host.metric("tollgate.cooldowns_started.model.gpt-4o-mini"), None);
}
