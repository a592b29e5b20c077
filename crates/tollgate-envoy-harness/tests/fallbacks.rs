//! Fallbacks: a retryable failure of the first attempt is held back and
//! the next model of the chain is called with `dispatch_http_call`; its
//! answer (or the plan's error) replaces the failed one.

// Helpers outside #[test] fns fail the test by panicking too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use tollgate_envoy_harness::{Action, Host, Stream};

fn faults() -> Value {
    routed_tenant(
        "faults",
        json!({"budgets": {"limits": [{"name": "daily", "window": "day", "usd": 50.0}], "consistency": "per_request"},
               "cache": {"doorkeeper": false}}),
    )
}

/// A forwarded request whose first attempt answers `status`.
fn first_attempt_fails(host: &Host, status: &str) -> Stream {
    let mut s = host.stream();
    assert_eq!(
        send_chat(&mut s, &key_for("faults"), &simple_chat("Say hi")),
        Action::Continue,
        "{:?}",
        s.local_reply()
    );
    let body = br#"{"error":{"message":"overloaded","type":"server_error"}}"#;
    let len = body.len().to_string();
    let a = s.response_headers(
        &[(":status", status), ("content-type", "application/json"), ("content-length", &len)],
        false,
    );
    assert_eq!(a, Action::Pause, "a retryable failure must be held back from the client");
    assert_eq!(s.response_body(body, true), Action::Pause, "the failed body must not reach the client");
    s
}

#[test]
fn a_retryable_upstream_failure_falls_back_to_the_next_model_by_callout() {
    let host = host_for(&[faults()]);
    let mut s = first_attempt_fails(&host, "503");
    let calls = s.http_calls();
    assert_eq!(calls.len(), 1, "one fallback callout: {calls:?}\n{}", host.log_text());
    let call = &calls[0];
    assert_eq!(call.upstream, "openai", "the provider's cluster");
    assert_eq!(call.header(":path"), Some("/openai/v1/chat/completions"));
    assert_eq!(call.header(":authority"), Some("mock-openai"));
    assert_eq!(call.header("authorization"), Some("Bearer sk-mock-openai"));
    assert!(call.timeout_ms > 0);
    let sent: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(sent["model"], json!("gpt-4.1-nano"), "the next model of the cheap chain");
    assert!(!call.headers.iter().any(|(_, v)| v.contains(&key_for("faults"))), "client key in the callout");

    let answer = openai_completion("gpt-4.1-nano", "Hi from the fallback", 9, 4);
    host.respond_http_call(call.token, 200, &[("content-type", "application/json")], &answer);
    let reply = s.local_reply().expect("the fallback's answer replaces the failed one");
    assert_eq!(reply.status, 200);
    assert_eq!(reply_json(&reply)["choices"][0]["message"]["content"], json!("Hi from the fallback"));
    assert_eq!(reply.header("x-tollgate-fallbacks"), Some("1"), "{:?}", reply.headers);
    assert_eq!(reply.header("x-tollgate-model"), Some("openai/gpt-4.1-nano"), "{:?}", reply.headers);
    s.finish();
    assert_eq!(host.metric("tollgate.fallbacks.tier.cheap"), Some(1), "{:?}", host.metrics());
    assert_eq!(host.metric("tollgate.requests.tier.cheap.model.gpt-4.1-nano"), None, "label values keep no dots");
    assert_eq!(host.metric("tollgate.requests.tier.cheap.model.gpt-4_1-nano"), Some(1), "{:?}", host.metrics());
}

#[test]
fn a_fallback_callout_that_fails_ends_in_an_error_reply_not_a_trap() {
    let host = host_for(&[faults()]);
    let mut s = first_attempt_fails(&host, "502");
    let call = s.http_calls().pop().expect("a fallback callout");
    // A reset: on_http_call_response(token, 0, 0, 0) with no response to read.
    host.fail_http_call(call.token);
    // The chain for an OpenAI-shaped request ends there (the rest speak Anthropic).
    for next in s.http_calls() {
        host.fail_http_call(next.token);
    }
    let reply = s.local_reply().expect("an error reply once the chain is exhausted");
    assert!(reply.status >= 500, "{} {}", reply.status, reply.body_str());
    assert!(reply_json(&reply)["error"]["message"].is_string(), "{}", reply.body_str());
    s.finish();
    let budget: Value = serde_json::from_str(&host.shared_data_str("tollgate:budget:faults").unwrap()).unwrap();
    assert_eq!(budget["outstanding"], json!([]), "the hold must be released: {budget}");
}

#[test]
fn a_client_error_from_upstream_passes_through_without_a_fallback() {
    let host = host_for(&[faults()]);
    let mut s = host.stream();
    send_chat(&mut s, &key_for("faults"), &simple_chat("Say hi"));
    let body = br#"{"error":{"message":"bad request","type":"invalid_request_error"}}"#;
    let a = s.send_response(&[(":status", "400"), ("content-type", "application/json")], &[body]);
    assert_eq!(a, Action::Continue);
    assert!(s.http_calls().is_empty(), "a 400 is not retried");
    assert_eq!(s.downstream_response().unwrap().body, body.to_vec());
    s.finish();
}
