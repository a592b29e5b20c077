//! The node-local response cache in shared data: a cacheable answer is
//! stored (on the doorkeeper's second sighting) and the next identical
//! request is answered locally from it, on any worker.

// Helpers outside #[test] fns fail the test by panicking too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use tollgate_envoy_harness::{Action, Host, Stream};

const QUESTION: &str = "What is the capital of France?";

/// One identical request; `Ok(stream)` forwarded, `Err(stream)` answered locally.
fn ask(host: &Host, worker: usize, tenant: &str, extra: &[(&str, &str)]) -> Result<Stream, Stream> {
    let mut s = host.stream_on(worker);
    let body = serde_json::to_vec(&simple_chat(QUESTION)).unwrap();
    let mut headers = chat_headers(&key_for(tenant), body.len());
    headers.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    match s.send_request(&refs(&headers), &body) {
        Action::Continue => Ok(s),
        _ => Err(s),
    }
}

fn ask_and_answer(host: &Host, worker: usize, tenant: &str) {
    let mut s = ask(host, worker, tenant, &[])
        .unwrap_or_else(|s| panic!("expected a miss, got a local reply {:?}\n{}", s.local_reply(), host.log_text()));
    answer_json(&mut s, &openai_completion("gpt-4o-mini", "Paris.", 14, 2));
    s.finish();
}

fn assert_served_from_cache(host: &Host, s: &mut Stream) {
    assert!(s.upstream_request().is_none(), "a cache hit went upstream");
    let reply = s.local_reply().expect("a cache hit is a local reply");
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let body: Value = reply_json(&reply);
    assert_eq!(body["choices"][0]["message"]["content"], json!("Paris."), "{body}");
    assert_eq!(reply.header("x-tollgate-cache"), Some("hit"), "{:?}", reply.headers);
    s.finish();
    assert!(host.metric_or_zero("tollgate.cache_hits") >= 1, "{:?}", host.metrics());
}

#[test]
fn a_cacheable_answer_is_served_from_the_cache_after_the_doorkeeper_admits_it() {
    // The doorkeeper is on by default: the first sighting only remembers
    // the request, the second stores its answer, the third is a hit.
    let host = host_for(&[routed_tenant("cache-dk", json!({}))]);
    ask_and_answer(&host, 0, "cache-dk");
    assert!(
        host.shared_data_keys()
            .iter()
            .all(|k| !k.starts_with("tollgate:cache:") || host.shared_data(k).unwrap().is_empty()),
        "stored on the first sighting: {:?}",
        host.shared_data_keys()
    );
    ask_and_answer(&host, 0, "cache-dk");
    let mut third = ask(&host, 0, "cache-dk", &[]).expect_err("the third identical request must be a cache hit");
    assert_served_from_cache(&host, &mut third);
    assert_eq!(host.metric("tollgate.cache_hits"), Some(1), "{:?}", host.metrics());
    assert_eq!(host.metric("tollgate.cache_misses"), Some(2), "{:?}", host.metrics());
}

#[test]
fn without_the_doorkeeper_the_next_identical_request_is_a_hit_on_another_worker() {
    let mut host = host_for(&[routed_tenant("cache-a", json!({"cache": {"doorkeeper": false}}))]);
    let other = host.add_worker();
    ask_and_answer(&host, 0, "cache-a");
    let mut second = ask(&host, other, "cache-a", &[]).expect_err("stored by worker 0, served by worker 1");
    assert_served_from_cache(&host, &mut second);
}

#[test]
fn a_cache_hit_is_served_as_sse_to_a_streaming_client() {
    let host = host_for(&[routed_tenant("cache-a", json!({"cache": {"doorkeeper": false}}))]);
    ask_and_answer(&host, 0, "cache-a");
    let mut s = host.stream();
    let mut body = simple_chat(QUESTION);
    body["stream"] = json!(true);
    let body = serde_json::to_vec(&body).unwrap();
    let headers = chat_headers(&key_for("cache-a"), body.len());
    assert_eq!(s.send_request(&refs(&headers), &body), Action::Pause);
    let reply = s.local_reply().expect("a hit");
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").is_some_and(|v| v.starts_with("text/event-stream")), "{:?}", reply.headers);
    let text = reply.body_str();
    assert!(text.contains("Paris.") && text.trim_end().ends_with("data: [DONE]"), "{text}");
    s.finish();
}

#[test]
fn no_store_and_nonzero_temperature_skip_the_cache() {
    let host = host_for(&[routed_tenant("cache-a", json!({"cache": {"doorkeeper": false}}))]);
    ask_and_answer(&host, 0, "cache-a");
    let mut s =
        ask(&host, 0, "cache-a", &[("cache-control", "no-store")]).expect("no-store must not be served from the cache");
    s.finish();
    let mut s = host.stream();
    let body = serde_json::to_vec(&json!({"model": "tollgate/auto", "temperature": 0.7,
                                          "messages": [{"role": "user", "content": QUESTION}]}))
    .unwrap();
    let headers = chat_headers(&key_for("cache-a"), body.len());
    assert_eq!(
        s.send_request(&refs(&headers), &body),
        Action::Continue,
        "temperature 0.7 must not hit: {:?}",
        s.local_reply()
    );
    s.finish();
    assert_eq!(host.metric_or_zero("tollgate.cache_hits"), 0, "{:?}", host.metrics());
}

#[test]
fn a_truncated_answer_is_not_cached() {
    let host = host_for(&[routed_tenant("cache-a", json!({"cache": {"doorkeeper": false}}))]);
    let mut s = ask(&host, 0, "cache-a", &[]).unwrap_or_else(|_| panic!("miss expected"));
    let mut answer: Value = serde_json::from_slice(&openai_completion("gpt-4o-mini", "Par", 14, 2)).unwrap();
    answer["choices"][0]["finish_reason"] = json!("length");
    answer_json(&mut s, &serde_json::to_vec(&answer).unwrap());
    s.finish();
    let mut again = ask(&host, 0, "cache-a", &[]).expect("a length-truncated answer must not be replayed");
    again.finish();
}
