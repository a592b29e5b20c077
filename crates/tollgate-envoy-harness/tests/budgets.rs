//! Budgets in shared data: holds while a request is in flight, usage
//! settled from the provider's answer (streamed or not), refusals once a
//! limit is spent, and one budget for every worker of the node.

// Helpers outside #[test] fns fail the test by panicking too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use tollgate_envoy_harness::{Action, Host, Stream};

/// A daily limit of 400 tokens, refused (not clamped) once spent; no cache.
fn tiny(tenant_id: &str) -> Value {
    routed_tenant(
        tenant_id,
        json!({
            "budgets": {"limits": [{"name": "daily", "window": "day", "tokens": 400}],
                        "on_exhausted": "reject", "clamp_max_tokens": false, "consistency": "per_request"},
            "cache": {"enabled": false}
        }),
    )
}

/// One tier of gpt-4o, $50 a day, no cache (like tests/e2e STREAM_OPENAI).
fn streaming(tenant_id: &str) -> Value {
    json!({
        "version": 1,
        "tenant_id": tenant_id,
        "routing": {"tiers": [{"name": "only", "models": ["openai/gpt-4o", "anthropic/claude-sonnet-4-5"]}]},
        "budgets": {"limits": [{"name": "daily", "window": "day", "usd": 50.0}], "on_exhausted": "reject",
                    "consistency": "per_request"},
        "cache": {"enabled": false}
    })
}

fn budget(host: &Host, tenant: &str) -> Value {
    let raw = host.shared_data_str(&format!("tollgate:budget:{tenant}")).unwrap_or_default();
    if raw.is_empty() { json!({}) } else { serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}")) }
}

fn spent_tokens(host: &Host, tenant: &str) -> u64 {
    let b = budget(host, tenant);
    b["windows"]
        .as_array()
        .map_or(0, |w| w.iter().map(|w| w["spent"]["tokens"].as_u64().unwrap_or(0)).max().unwrap_or(0))
}

fn holds(host: &Host, tenant: &str) -> usize {
    budget(host, tenant)["outstanding"].as_array().map_or(0, Vec::len)
}

fn chat(host: &Host, worker: usize, tenant: &str, body: &Value) -> Stream {
    let mut s = host.stream_on(worker);
    send_chat(&mut s, &key_for(tenant), body);
    s
}

fn capped(content: &str, max_tokens: u64) -> Value {
    json!({"model": "tollgate/auto", "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]})
}

#[test]
fn a_request_holds_budget_while_in_flight_and_settles_the_reported_usage() {
    let host = host_for(&[tiny("tiny")]);
    let mut s = chat(&host, 0, "tiny", &capped("Say hi", 50));
    assert!(s.upstream_request().is_some(), "{:?}", s.local_reply());
    assert_eq!(holds(&host, "tiny"), 1, "no hold while in flight: {}", budget(&host, "tiny"));
    answer_json(&mut s, &openai_completion("gpt-4o-mini", "Hi", 30, 20));
    s.finish();
    assert_eq!(holds(&host, "tiny"), 0, "the hold outlived its request: {}", budget(&host, "tiny"));
    assert_eq!(spent_tokens(&host, "tiny"), 50, "{}", budget(&host, "tiny"));
}

#[test]
fn an_exhausted_budget_is_refused_locally_and_counted_in_budget_refusals() {
    let host = host_for(&[tiny("tiny")]);
    let mut s = chat(&host, 0, "tiny", &capped("Say hi", 50));
    assert!(s.upstream_request().is_some(), "{:?}", s.local_reply());
    answer_json(&mut s, &openai_completion("gpt-4o-mini", "Hi", 100, 300));
    s.finish();
    assert_eq!(spent_tokens(&host, "tiny"), 400);

    let mut s = chat(&host, 0, "tiny", &capped("Say hi again", 50));
    let reply = s.local_reply().expect("a spent budget is refused locally");
    assert!(reply.status == 429 || reply.status == 402, "status {}: {}", reply.status, reply.body_str());
    let body = reply_json(&reply);
    let code = body["error"]["code"].as_str().unwrap_or_default().to_owned();
    assert!(code.starts_with("budget"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("daily"), "names the budget: {body}");
    assert!(s.upstream_request().is_none());
    s.finish();
    // By code and by the level of the limit that refused, as the reply's header says.
    let level = reply.headers.iter().find(|(n, _)| n == "x-tollgate-limit-level").map(|(_, v)| v.clone());
    assert_eq!(level.as_deref(), Some("tenant"));
    let metric = format!("tollgate.budget_refusals.code.{code}.level.tenant");
    assert_eq!(host.metric(&metric), Some(1), "{:?}", host.metrics());
    assert_eq!(spent_tokens(&host, "tiny"), 400, "a refusal spends nothing");
    assert_eq!(holds(&host, "tiny"), 0);
}

#[test]
fn every_worker_of_the_node_shares_one_budget() {
    let mut host = host_for(&[tiny("tiny")]);
    let other = host.add_worker();
    let mut s = chat(&host, 0, "tiny", &capped("Say hi", 50));
    answer_json(&mut s, &openai_completion("gpt-4o-mini", "Hi", 100, 300));
    s.finish();
    let mut s = chat(&host, other, "tiny", &capped("Say hi", 50));
    let reply = s.local_reply().expect("worker 1 must see what worker 0 spent");
    assert!(reply.status == 429 || reply.status == 402, "{}", reply.body_str());
    s.finish();
}

#[test]
fn concurrent_holds_on_two_workers_cannot_overspend() {
    // 400 tokens; each request holds its prompt plus 150 output tokens, so
    // two fit and the third does not, whichever worker it lands on.
    let mut host = host_for(&[tiny("tiny")]);
    let other = host.add_worker();
    let a = chat(&host, 0, "tiny", &capped("one", 150));
    let b = chat(&host, other, "tiny", &capped("two", 150));
    assert!(
        a.upstream_request().is_some() && b.upstream_request().is_some(),
        "{:?} {:?}",
        a.local_reply(),
        b.local_reply()
    );
    assert_eq!(holds(&host, "tiny"), 2);
    let mut c = chat(&host, 0, "tiny", &capped("three", 150));
    let reply = c.local_reply().expect("the third hold does not fit");
    assert_eq!(reply.status, 429, "{}", reply.body_str());
    c.finish();
    for mut s in [a, b] {
        s.finish();
    }
    assert_eq!(holds(&host, "tiny"), 0, "{}", budget(&host, "tiny"));
    assert_eq!(spent_tokens(&host, "tiny"), 0, "unanswered requests are released, not charged");
}

#[test]
fn a_streamed_answer_is_parsed_chunk_by_chunk_and_its_usage_settled() {
    let host = host_for(&[streaming("stream")]);
    let mut s = host.stream();
    let body =
        json!({"model": "tollgate/auto", "stream": true, "messages": [{"role": "user", "content": "Count to three"}]});
    assert_eq!(send_chat(&mut s, &key_for("stream"), &body), Action::Continue, "{:?}", s.local_reply());
    let sent = forwarded_json(&s);
    assert_eq!(sent["stream_options"]["include_usage"], json!(true), "usage must be asked for: {sent}");
    assert_eq!(holds(&host, "stream"), 1);

    let events = openai_sse("gpt-4o", &["One", ", two", ", three."], 21, 4);
    let wire: Vec<u8> = events.concat();
    // A stream's headers wait for its first bytes (a provider that breaks
    // off before them costs the client a clean 502, not an empty 200).
    assert_eq!(s.response_headers(&[(":status", "200"), ("content-type", "text/event-stream")], false), Action::Pause);
    // Chunk boundaries fall anywhere, mid-line and mid-JSON.
    let pieces: Vec<&[u8]> = wire.chunks(13).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        assert_eq!(s.response_body(piece, last), Action::Continue, "SSE must stream, not buffer (chunk {i})");
    }
    let down = s.downstream_response().expect("streamed to the client");
    let text = down.body_str();
    assert!(text.contains("One") && text.contains(", three."), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(!text.contains("\"prompt_tokens\""), "the client did not ask for the usage chunk: {text}");
    assert_eq!(down.header("content-length"), None, "a rewritten stream cannot keep a content-length");
    s.finish();

    assert_eq!(holds(&host, "stream"), 0, "{}", budget(&host, "stream"));
    assert_eq!(spent_tokens(&host, "stream"), 25, "{}", budget(&host, "stream"));
    let micros: u64 = budget(&host, "stream")["windows"][0]["spent"]["micros"].as_u64().unwrap_or(0);
    // gpt-4o list price: $2.50 in, $10 out per million tokens, so 52.5 + 40
    // micro-dollars, rounded up.
    assert_eq!(micros, 93, "{}", budget(&host, "stream"));
    assert_eq!(host.metric("tollgate.input_tokens.tier.only.model.gpt-4o"), Some(21), "{:?}", host.metrics());
    assert_eq!(host.metric("tollgate.output_tokens.tier.only.model.gpt-4o"), Some(4), "{:?}", host.metrics());
}

#[test]
fn a_stream_cut_off_by_the_client_is_charged_for_what_was_sent() {
    let host = host_for(&[streaming("stream")]);
    let mut s = host.stream();
    let body = json!({"model": "tollgate/auto", "stream": true, "max_tokens": 100,
                      "messages": [{"role": "user", "content": "Count to three"}]});
    send_chat(&mut s, &key_for("stream"), &body);
    s.response_headers(&[(":status", "200"), ("content-type", "text/event-stream")], false);
    let events = openai_sse("gpt-4o", &["One", ", two", ", three."], 21, 4);
    for e in &events[..2] {
        s.response_body(e, false);
    }
    s.finish();
    assert_eq!(holds(&host, "stream"), 0, "{}", budget(&host, "stream"));
    let spent = spent_tokens(&host, "stream");
    assert!(spent > 0 && spent < 21 + 100, "charged {spent}: the prompt and the output seen, not the whole hold");
}

// ---------------------------------------------------------------- leases

/// `tiny`, leased (the default `consistency`).
fn tiny_leased(tenant_id: &str, tokens: u64) -> Value {
    routed_tenant(
        tenant_id,
        json!({
            "budgets": {"limits": [{"name": "daily", "window": "day", "tokens": tokens}],
                        "on_exhausted": "reject", "clamp_max_tokens": false},
            "cache": {"enabled": false}
        }),
    )
}

fn lease_holds(host: &Host, tenant: &str) -> usize {
    budget(host, tenant)["outstanding"]
        .as_array()
        .map_or(0, |o| o.iter().filter(|h| h["id"].as_str().is_some_and(|id| id.starts_with("lease:"))).count())
}

fn answered(host: &Host, worker: usize, tenant: &str, prompt: &str, output: u64) {
    let mut s = chat(host, worker, tenant, &capped(prompt, 50));
    assert!(s.upstream_request().is_some(), "{:?}", s.local_reply());
    answer_json(&mut s, &openai_completion("gpt-4o-mini", "Hi", 10, output));
    s.finish();
}

#[test]
fn a_leased_tenants_later_requests_hold_in_the_vms_lease_and_reach_shared_data_only_as_spend() {
    let host = host_for(&[tiny_leased("leased", 100_000)]);
    // The first request reserves in shared data and takes a lease along.
    let mut first = chat(&host, 0, "leased", &capped("Say hi", 50));
    assert!(first.upstream_request().is_some(), "{:?}", first.local_reply());
    assert_eq!((holds(&host, "leased"), lease_holds(&host, "leased")), (2, 1), "{}", budget(&host, "leased"));
    let writes = host.metric_or_zero("tollgate.store_batches.path.request");
    // The next one, while the first is in flight, holds in the lease only.
    let mut second = chat(&host, 0, "leased", &capped("Say hello", 50));
    assert!(second.upstream_request().is_some(), "{:?}", second.local_reply());
    assert_eq!(holds(&host, "leased"), 2, "no hold of its own in shared data: {}", budget(&host, "leased"));
    assert_eq!(host.metric_or_zero("tollgate.store_batches.path.request"), writes, "it did not wait for the store");
    answer_json(&mut second, &openai_completion("gpt-4o-mini", "Hello", 10, 5));
    second.finish();
    answer_json(&mut first, &openai_completion("gpt-4o-mini", "Hi", 10, 20));
    first.finish();
    // What waits goes to shared data at the next tick (the writer is in
    // this process), off the requests' callbacks.
    assert_eq!(spent_tokens(&host, "leased"), 0, "not yet: {}", budget(&host, "leased"));
    host.tick();
    assert_eq!(spent_tokens(&host, "leased"), 45, "{}", budget(&host, "leased"));
    assert_eq!(holds(&host, "leased"), 1, "only the lease: {}", budget(&host, "leased"));
}

#[test]
fn an_idle_vm_hands_its_lease_back_on_a_tick_and_a_busy_one_keeps_it() {
    let host = host_for(&[tiny_leased("leased", 100_000)]);
    answered(&host, 0, "leased", "Say hi", 20);
    let mut busy = chat(&host, 0, "leased", &capped("Say hello", 50));
    assert!(busy.upstream_request().is_some());
    host.advance(std::time::Duration::from_secs(10));
    host.tick();
    assert_eq!(lease_holds(&host, "leased"), 1, "a lease a request holds part of stays: {}", budget(&host, "leased"));
    answer_json(&mut busy, &openai_completion("gpt-4o-mini", "Hello", 10, 5));
    busy.finish();
    host.advance(std::time::Duration::from_secs(10));
    host.tick();
    assert_eq!(holds(&host, "leased"), 0, "idle, the lease went back: {}", budget(&host, "leased"));
    assert_eq!(spent_tokens(&host, "leased"), 45, "{}", budget(&host, "leased"));
}

#[test]
fn leased_requests_on_two_workers_cannot_overspend_and_the_tail_is_decided_exactly() {
    // 400 tokens; each request holds its prompt plus 150 output tokens.
    let mut host = host_for(&[tiny_leased("tail", 400)]);
    let other = host.add_worker();
    let a = chat(&host, 0, "tail", &capped("one", 150));
    let b = chat(&host, other, "tail", &capped("two", 150));
    assert!(a.upstream_request().is_some() && b.upstream_request().is_some());
    let mut c = chat(&host, 0, "tail", &capped("three", 150));
    let reply = c.local_reply().expect("the third hold does not fit");
    assert_eq!(reply.status, 429, "{}", reply.body_str());
    c.finish();
    for mut s in [a, b] {
        answer_json(&mut s, &openai_completion("gpt-4o-mini", "Hi", 10, 40));
        s.finish();
    }
    host.tick();
    assert_eq!(spent_tokens(&host, "tail"), 100, "{}", budget(&host, "tail"));
    // With both answers settled, what is left (300, less the leases) pays
    // one more: the worker whose lease is too small frees it and the store
    // decides on all that is left.
    let mut d = chat(&host, 0, "tail", &capped("four", 150));
    assert!(d.upstream_request().is_some(), "refused with 300 tokens left: {:?}", d.local_reply());
    answer_json(&mut d, &openai_completion("gpt-4o-mini", "Hi", 10, 40));
    d.finish();
    host.advance(std::time::Duration::from_secs(10));
    host.tick();
    assert_eq!(spent_tokens(&host, "tail"), 150, "{}", budget(&host, "tail"));
    assert_eq!(holds(&host, "tail"), 0, "{}", budget(&host, "tail"));
}

#[test]
fn a_replaced_root_context_hands_its_leases_back() {
    let env = provider_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut host = Host::configured(&plugin_config(&[tiny_leased("leased", 100_000)]).to_string(), &env);
    answered(&host, 0, "leased", "Say hi", 20);
    assert_eq!(lease_holds(&host, "leased"), 1, "{}", budget(&host, "leased"));
    let mut config = plugin_config(&[tiny_leased("leased", 100_000)]);
    config["upstream_timeout_ms"] = json!(61_000);
    assert!(host.reconfigure(&config.to_string()), "{}", host.log_text());
    let first = host.root_contexts(0)[0];
    host.retire_root(0, first);
    assert_eq!(holds(&host, "leased"), 0, "the old configuration's lease went back: {}", budget(&host, "leased"));
    assert_eq!(spent_tokens(&host, "leased"), 30, "{}", budget(&host, "leased"));
}

#[test]
fn a_batch_of_outcome_records_is_a_few_shared_data_writes_not_two_per_request() {
    // No budgets: what a close sends is its outcome record, which waits in
    // the VM's desk while other requests of the tenant are in flight.
    let mut tenant = routed_tenant("records", json!({"cache": {"enabled": false}}));
    tenant.as_object_mut().unwrap().remove("budgets");
    let host = host_for(&[tenant]);
    let n = 20;
    let mut streams: Vec<Stream> =
        (0..n).map(|i| chat(&host, 0, "records", &capped(&format!("Question {i}"), 20))).collect();
    assert!(streams.iter().all(|s| s.upstream_request().is_some()));
    let before = host.shared_data_writes();
    for s in &mut streams {
        answer_json(s, &openai_completion("gpt-4o-mini", "Answer", 10, 5));
        s.finish();
    }
    // The last close, with nothing else in flight, sends the 20 records:
    // one write of the totals and one of each ring chunk they fall in
    // (the ring starts empty, so one chunk). One record at a time was two
    // writes per request.
    let writes = host.shared_data_writes() - before;
    assert!(writes <= 3, "{writes} shared-data writes for {n} records");
    let usage = {
        let mut s = host.stream();
        let headers = [
            (":method", "GET"),
            (":path", "/v1/usage"),
            (":authority", "gw"),
            ("authorization", "Bearer tg-harness-records-key"),
        ];
        s.request_headers(&headers, true);
        reply_json(&s.local_reply().expect("a usage reply"))
    };
    let recorded: u64 =
        usage["resolution"]["tiers"].as_array().unwrap().iter().map(|t| t["requests"].as_u64().unwrap()).sum();
    assert_eq!(recorded, n, "{usage}");
}

/// Feedback on a request, sent to `worker`: the filter's local reply.
fn feedback(host: &Host, worker: usize, tenant: &str, request_id: &str) -> tollgate_envoy_harness::LocalReply {
    let body = serde_json::to_vec(&json!({"request_id": request_id, "resolved": true})).unwrap();
    let mut headers = chat_headers(&key_for(tenant), body.len());
    headers.retain(|(name, _)| name != ":path");
    headers.push((":path".into(), "/v1/feedback".into()));
    let mut s = host.stream_on(worker);
    s.send_request(&refs(&headers), &body);
    s.local_reply().expect("the filter answers feedback itself")
}

#[test]
fn a_request_answered_on_one_worker_takes_feedback_on_another_a_tick_later() {
    // The default (leased) tenant: each worker's desk batches its outcome
    // records. With the writer in shared data, a batch goes out at the next
    // tick, so feedback that lands on the other worker finds the record.
    let leased = routed_tenant("leased", json!({"cache": {"enabled": false}}));
    let mut host = host_for(&[leased]);
    host.add_worker();
    let mut s = chat(&host, 0, "leased", &capped("Say hi", 50));
    assert!(s.upstream_request().is_some(), "{:?}", s.local_reply());
    // Another request of the worker still in flight: the close waits for
    // a batch (alone, it would go to the writer at once).
    let other = chat(&host, 0, "leased", &capped("Say hello", 50));
    assert!(other.upstream_request().is_some(), "{:?}", other.local_reply());
    answer_json(&mut s, &openai_completion("gpt-4o-mini", "Hi", 30, 20));
    let request_id = s.response_header("x-tollgate-request-id").expect("a request id");
    s.finish();
    host.advance(host.tick_period());
    host.tick();
    let reply = feedback(&host, 1, "leased", &request_id);
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    drop(other);
}
