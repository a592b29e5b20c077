//! The request side: authentication, size limits, pausing until the body
//! is in, and the rewrite that sends a routed request to its provider.

// Helpers outside #[test] fns fail the test by panicking too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use tollgate_envoy_harness::{Action, Host, Stream};

fn acme() -> Value {
    routed_tenant("acme", json!({"limits": {"max_body_bytes": 4096}}))
}

fn host() -> Host {
    host_for(&[acme()])
}

/// Sends a routed request and returns its stream, forwarded.
fn forwarded(host: &Host, extra_headers: &[(&str, &str)], body: &Value) -> Stream {
    let mut s = host.stream();
    let body = serde_json::to_vec(body).unwrap();
    let mut headers = chat_headers(&key_for("acme"), body.len());
    headers.extend(extra_headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let action = s.send_request(&refs(&headers), &body);
    assert_eq!(action, Action::Continue, "not forwarded: {:?}\nlog:\n{}", s.local_reply(), host.log_text());
    s
}

#[test]
fn an_unknown_api_key_gets_an_openai_shaped_401_local_reply() {
    let host = host();
    let mut s = host.stream();
    let body = serde_json::to_vec(&simple_chat("hi")).unwrap();
    let action = s.send_request(&refs(&chat_headers("tg-not-a-key", body.len())), &body);
    assert_eq!(action, Action::Pause);
    let reply = s.local_reply().expect("a local reply");
    assert_error_reply(&reply, 401, "invalid_api_key");
    assert!(reply.header("x-tollgate-request-id").is_some_and(|v| !v.is_empty()), "{:?}", reply.headers);
    assert!(s.upstream_request().is_none(), "an unauthenticated request went upstream");
    s.finish();
    assert_eq!(host.metric("tollgate.errors.code.invalid_api_key"), Some(1), "{:?}", host.metrics());
}

#[test]
fn a_request_without_a_key_or_with_basic_auth_gets_401() {
    let host = host();
    for auth in [None, Some("Basic dGctZTJlOmtleQ==")] {
        let mut s = host.stream();
        let mut headers = vec![(":method", "POST"), (":path", "/v1/chat/completions"), (":authority", "gw")];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        assert_eq!(s.request_headers(&headers, false), Action::Pause);
        assert_error_reply(&s.local_reply().expect("a local reply"), 401, "invalid_api_key");
        s.finish();
    }
}

#[test]
fn a_declared_content_length_over_the_limit_gets_413_before_any_body() {
    let host = host();
    let mut s = host.stream();
    let headers = chat_headers(&key_for("acme"), 4097);
    assert_eq!(s.request_headers(&refs(&headers), false), Action::Pause);
    let reply = s.local_reply().expect("413 from the headers alone");
    let body = assert_error_reply(&reply, 413, "request_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("4096"), "{body}");
    assert!(s.upstream_request().is_none());
    s.finish();
}

#[test]
fn a_chunked_body_over_the_limit_gets_413_while_it_is_buffered() {
    let host = host();
    let mut s = host.stream();
    let mut headers = chat_headers(&key_for("acme"), 0);
    headers.retain(|(k, _)| k != "content-length");
    assert_eq!(s.request_headers(&refs(&headers), false), Action::Pause);
    assert_eq!(s.request_body(&[b'a'; 2000], false), Action::Pause);
    assert!(s.local_reply().is_none(), "refused at 2000 of 4096 bytes");
    assert_eq!(s.request_body(&[b'a'; 2000], false), Action::Pause);
    assert!(s.local_reply().is_none(), "refused at 4000 of 4096 bytes");
    assert_eq!(s.request_body(&[b'a'; 2000], false), Action::Pause);
    assert_error_reply(&s.local_reply().expect("413 once past the limit"), 413, "request_too_large");
    assert!(s.upstream_request().is_none());
    s.finish();
}

#[test]
fn request_headers_pause_until_the_end_of_the_body() {
    let host = host();
    let mut s = host.stream();
    let body = serde_json::to_vec(&simple_chat("What is the capital of France?")).unwrap();
    let headers = chat_headers(&key_for("acme"), body.len());
    assert_eq!(s.request_headers(&refs(&headers), false), Action::Pause, "headers must wait for the body");
    let (first, rest) = body.split_at(body.len() / 2);
    assert_eq!(s.request_body(first, false), Action::Pause, "half a body must be buffered");
    assert!(s.upstream_request().is_none(), "forwarded before the body was complete");
    assert_eq!(s.request_body(rest, true), Action::Continue);
    let up = s.upstream_request().expect("forwarded at the end of the body");
    assert!(up.complete, "the end of stream went on too");
    assert!(s.local_reply().is_none());
    s.finish();
}

#[test]
fn the_forwarded_body_names_the_routed_model_and_carries_no_stale_content_length() {
    let host = host();
    let sent = json!({"model": "tollgate/auto", "temperature": 0, "top_p": 0.5,
                      "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]});
    let mut s = forwarded(&host, &[], &sent);
    let up = s.upstream_request().unwrap();
    let body: Value = forwarded_json(&s);
    assert_eq!(body["model"], json!("gpt-4o-mini"), "a short prompt routes to the cheap tier's first model");
    assert_eq!(body["messages"], sent["messages"]);
    assert_eq!(body["temperature"], json!(0));
    assert_eq!(body["top_p"], json!(0.5));
    let client_length = serde_json::to_vec(&sent).unwrap().len().to_string();
    match up.header("content-length") {
        None => {}
        Some(len) => assert_eq!(len, up.body.len().to_string(), "content-length must match the rewritten body"),
    }
    assert!(
        up.body.len().to_string() == client_length || up.header("content-length") != Some(client_length.as_str()),
        "the client's content-length went on with a body of another length"
    );
    s.finish();
}

#[test]
fn the_forwarded_headers_route_to_the_provider_and_never_carry_the_client_key() {
    let host = host();
    let client_key = key_for("acme");
    let mut s = forwarded(
        &host,
        &[("x-tollgate-provider", "anthropic"), ("cookie", "session=1"), ("x-api-key", &client_key)],
        &simple_chat("Say hi"),
    );
    let up = s.upstream_request().unwrap();
    assert_eq!(up.header("x-tollgate-provider"), Some("openai"), "{:?}", up.headers);
    assert_eq!(up.headers.iter().filter(|(k, _)| k == "x-tollgate-provider").count(), 1, "{:?}", up.headers);
    assert_eq!(up.header(":path"), Some("/openai/v1/chat/completions"));
    assert_eq!(up.header(":authority"), Some("mock-openai"));
    assert_eq!(up.header(":method"), Some("POST"));
    assert_eq!(up.header("authorization"), Some("Bearer sk-mock-openai"));
    assert_eq!(up.header("user-agent"), Some("harness-test/1"), "user-agent is passed on");
    assert_eq!(up.header("cookie"), None, "client cookies must not reach the provider");
    for (name, value) in &up.headers {
        assert!(!value.contains(&client_key), "the client's tollgate key went upstream in `{name}`");
    }
    assert!(!up.body_str().contains(&client_key));
    s.finish();
}

#[test]
fn an_anthropic_request_goes_to_anthropic_with_the_provider_key_in_x_api_key() {
    let host = host();
    let mut s = host.stream();
    let body = serde_json::to_vec(&json!({"model": "tollgate/auto", "max_tokens": 64,
                                          "messages": [{"role": "user", "content": "Say hi"}]}))
    .unwrap();
    let len = body.len().to_string();
    let key = key_for("acme");
    let headers = [
        (":method", "POST"),
        (":path", "/v1/messages"),
        (":authority", "gw"),
        ("content-length", len.as_str()),
        ("x-api-key", key.as_str()),
        ("anthropic-version", "2023-06-01"),
    ];
    assert_eq!(s.send_request(&headers, &body), Action::Continue, "{:?}\n{}", s.local_reply(), host.log_text());
    let up = s.upstream_request().unwrap();
    assert_eq!(up.header("x-tollgate-provider"), Some("anthropic"));
    assert_eq!(up.header(":path"), Some("/anthropic/v1/messages"));
    assert_eq!(up.header(":authority"), Some("mock-anthropic"));
    assert_eq!(up.header("x-api-key"), Some("sk-mock-anthropic"));
    assert_eq!(up.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(up.header("authorization"), None);
    let body: Value = forwarded_json(&s);
    assert_eq!(body["model"], json!("claude-3-5-haiku-latest"));
    s.finish();
}

#[test]
fn the_route_cache_is_cleared_when_the_request_is_rewritten() {
    let host = host();
    let mut s = forwarded(&host, &[], &simple_chat("Say hi"));
    let calls = s.foreign_calls();
    assert!(
        calls.iter().any(|c| c.name == "clear_route_cache") || s.request_header_mutations() > 0,
        "neither a header write nor clear_route_cache: Envoy would keep the catch-all route"
    );
    assert!(calls.iter().any(|c| c.name == "clear_route_cache"), "foreign calls: {calls:?}");
    s.finish();
}

#[test]
fn the_upstream_answer_passes_with_the_routing_trace_headers() {
    let host = host();
    let mut s = forwarded(&host, &[], &simple_chat("Say hi"));
    let answer = openai_completion("gpt-4o-mini", "Hi!", 9, 3);
    answer_json(&mut s, &answer);
    let down = s.downstream_response().expect("the answer reached the client");
    assert_eq!(down.body, answer, "a JSON answer passes untouched");
    assert!(down.complete);
    assert_eq!(down.header("x-tollgate-model"), Some("openai/gpt-4o-mini"), "{:?}", down.headers);
    assert_eq!(down.header("x-tollgate-tier"), Some("cheap"));
    assert!(down.header("x-tollgate-request-id").is_some_and(|v| !v.is_empty()));
    s.finish();
    assert_eq!(host.metric("tollgate.requests.tier.cheap.model.gpt-4o-mini"), Some(1), "{:?}", host.metrics());
    assert_eq!(host.metric("tollgate.input_tokens.tier.cheap.model.gpt-4o-mini"), Some(9));
    assert_eq!(host.metric("tollgate.output_tokens.tier.cheap.model.gpt-4o-mini"), Some(3));
}

#[test]
fn health_models_and_unknown_paths_are_answered_locally() {
    let host = host();
    let key = format!("Bearer {}", key_for("acme"));
    let cases: [(&str, &str, Option<&str>, u32); 4] = [
        ("GET", "/healthz", None, 200),
        ("GET", "/v1/models", Some(key.as_str()), 200),
        ("GET", "/v1/nothing-here", Some(key.as_str()), 404),
        ("GET", "/v1/chat/completions", Some(key.as_str()), 405),
    ];
    for (method, path, auth, status) in cases {
        let mut s = host.stream();
        let mut headers = vec![(":method", method), (":path", path), (":authority", "gw")];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        assert_eq!(s.request_headers(&headers, true), Action::Pause, "{method} {path}");
        let reply = s.local_reply().unwrap_or_else(|| panic!("{method} {path}: no local reply"));
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.body_str());
        let body = reply_json(&reply);
        match status {
            200 if path == "/healthz" => assert_eq!(body["host"], json!("envoy"), "{body}"),
            200 => assert!(body["data"].as_array().is_some_and(|d| !d.is_empty()), "{body}"),
            _ => assert!(body["error"]["message"].is_string(), "{body}"),
        }
        assert!(s.upstream_request().is_none());
        s.finish();
    }
}
