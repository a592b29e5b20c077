//! Where the filter's own time goes, callback by callback: runs the built
//! filter (the same .wasm Envoy loads) in wasmtime for N routed 4 KB chat
//! requests and prints the median time of each stream callback. For a
//! function-level profile, run it under perf with perf-map support:
//!
//!   TOLLGATE_HARNESS_PERFMAP=1 perf record -F 4000 -g \
//!     cargo run --release -p tollgate-envoy-harness --example profile_filter -- 20000 32 [metered]
//!   perf report --sort symbol
//!
//! wasmtime is not V8, so the figures are relative, not Envoy's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tollgate_envoy_harness::Action;

fn chat_body(id: usize) -> Vec<u8> {
    let note = "Decision: the billing service moves to the new queue next sprint; Dana owns the rollout and \
        the rollback plan. Open question: do we keep the old webhook signature header for a release? ";
    let mut text = format!("Request {id}. Summarise the decisions and list the open questions.\n\n");
    while text.len() < 3800 {
        text.push_str(note);
    }
    serde_json::to_vec(&json!({
        "model": "tollgate/auto",
        "messages": [{"role": "system", "content": "You are a careful assistant."},
                     {"role": "user", "content": text}],
        "max_tokens": 64
    }))
    .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5000);
    let metered = args.iter().any(|a| a == "metered");
    let in_flight: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    let mut tenant = like_example("tenant.json", "bench", json!({}));
    if metered {
        for limit in tenant["budgets"]["limits"].as_array_mut().unwrap() {
            if limit.get("tokens").is_some() {
                limit["tokens"] = json!(1_000_000_000_000_u64);
            }
            if limit.get("usd").is_some() {
                limit["usd"] = json!(1e9);
            }
        }
    } else {
        tenant.as_object_mut().unwrap().remove("budgets");
    }
    let host = host_for(&[tenant]);
    let key = key_for("bench");
    let answer = openai_completion("gpt-4o", "The decisions were: move billing to the new queue.", 900, 12);
    let mut phases = [Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n)];
    // `in_flight` streams at a time, as under load: each batch's requests
    // are all forwarded before any is answered.
    let mut i = 0;
    while i < n {
        let batch: Vec<usize> = (i..(i + in_flight).min(n)).collect();
        i += batch.len();
        let mut streams = Vec::with_capacity(batch.len());
        for &id in &batch {
            let body = chat_body(id);
            let headers = chat_headers(&key, body.len());
            let mut s = host.stream();
            let t0 = Instant::now();
            assert_eq!(s.request_headers(&refs(&headers), false), Action::Pause);
            let t1 = Instant::now();
            let action = s.request_body(&body, true);
            let t2 = Instant::now();
            assert_eq!(action, Action::Continue, "not forwarded: {:?}", s.local_reply());
            phases[0].push(t1 - t0);
            phases[1].push(t2 - t1);
            streams.push(s);
        }
        for mut s in streams {
            let len = answer.len().to_string();
            let t2 = Instant::now();
            s.send_response(
                &[(":status", "200"), ("content-type", "application/json"), ("content-length", &len)],
                &[&answer],
            );
            let t3 = Instant::now();
            s.finish();
            let t4 = Instant::now();
            phases[2].push(t3 - t2);
            phases[3].push(t4 - t3);
        }
        host.tick();
    }
    let names = [
        "request headers (route, authenticate, copy headers)",
        "request body (decision, rewrite)",
        "response (headers, body: usage, price, settle, cost headers)",
        "stream end (on_log, on_done)",
    ];
    let mut total = Duration::ZERO;
    println!(
        "{n} requests, {in_flight} in flight, {}; median and mean per callback:",
        if metered { "metered (leased)" } else { "no budgets" }
    );
    for (name, p) in names.iter().zip(phases.iter_mut()) {
        p.sort();
        let median = p[p.len() / 2];
        let mean = p.iter().sum::<Duration>() / u32::try_from(p.len()).unwrap_or(u32::MAX);
        total += mean;
        println!("  {:>8.1} µs  {:>8.1} µs  {name}", median.as_secs_f64() * 1e6, mean.as_secs_f64() * 1e6);
    }
    println!("  {:>8}     {:>8.1} µs  in all (means)", "", total.as_secs_f64() * 1e6);
}
