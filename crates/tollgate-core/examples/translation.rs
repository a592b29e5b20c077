//! The added cost of cross-API translation on a 4 KB chat request, natively
//! or as wasm; `scripts/bench` runs it both ways and prints the figures side
//! by side. Measured in one run, same request:
//!
//! * the whole request side (parse, count, classify, route, forward body)
//!   to a model that speaks the client's API (bytes copied through), and to
//!   one that does not (the body translated to Anthropic Messages);
//! * the translation of a 4 KB answer (JSON) and of a 4 KB stream back.
//!
//! `cargo run --release -p tollgate-core --example translation`

use serde_json::json;
use std::time::{Duration, Instant};
use tollgate_core::api::ApiFormat;
use tollgate_core::config::TenantConfig;
use tollgate_core::engine::{Inbound, Next, Plan};
use tollgate_core::translate::{AnswerContext, StreamTranslator, translate_answer};

fn text(bytes: usize) -> String {
    let para = "Our checkout service times out under load. Explain step by step why p99 latency doubles \
        when the connection pool is exhausted, compare two fixes, and cover retries and back-pressure. ";
    let mut s = String::new();
    while s.len() < bytes {
        s.push_str(para);
    }
    s.truncate(bytes);
    s
}

/// A 4 KB chat request: system, three turns, a tool round trip, one tool.
fn request() -> Vec<u8> {
    json!({
        "model": "tollgate/cheap",
        "temperature": 0,
        "max_tokens": 512,
        "messages": [
            {"role": "system", "content": text(600)},
            {"role": "user", "content": text(1400)},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "lookup", "arguments": "{\"service\":\"checkout\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": text(600)},
            {"role": "user", "content": text(1100)}
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "Find a service",
            "parameters": {"type": "object", "properties": {"service": {"type": "string"}}, "required": ["service"]}}}]
    })
    .to_string()
    .into_bytes()
}

fn config(model: &str) -> TenantConfig {
    let config = json!({"version": 1, "tenant_id": "bench",
        "routing": {"tiers": [{"name": "cheap", "models": [model]}]}, "cache": {"enabled": false}});
    match TenantConfig::from_json(config.to_string().as_bytes()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("bench config: {e:?}");
            std::process::exit(1)
        }
    }
}

fn forward_once(config: &TenantConfig, body: &[u8]) -> usize {
    let inbound = Inbound {
        tenant_id: "bench",
        api: ApiFormat::OpenAi,
        body,
        cache_control: None,
        now: 1_795_000_000,
        entropy: [7; 16],
        key: None,
        user_header: None,
        tags_header: None,
    };
    match Plan::new(config, &inbound).map(|mut p| p.start()) {
        Ok(Next::Forward(up)) => up.body.len(),
        _ => 0,
    }
}

fn best_of(rounds: u32, iterations: u32, mut f: impl FnMut() -> usize) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..iterations {
            std::hint::black_box(f());
        }
        best = best.min(start.elapsed() / iterations);
    }
    best
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let body = request();
    let native = config("openai/gpt-4o-mini");
    let foreign = config("anthropic/claude-3-5-haiku-latest");
    assert!(forward_once(&native, &body) > 0 && forward_once(&foreign, &body) > 0, "both plans forward");
    let iterations = 400;
    let same_api = best_of(7, iterations, || forward_once(&native, &body));
    let translated = best_of(7, iterations, || forward_once(&foreign, &body));

    let ctx =
        AnswerContext { id_seed: "0".repeat(32), created: 1, prompt_tokens: 1000, include_usage: true, echo: None };
    let answer = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-latest",
        "content": [{"type": "text", "text": text(4096)}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 1000, "output_tokens": 900}})
    .to_string()
    .into_bytes();
    let json_answer = best_of(7, iterations, || {
        translate_answer(ApiFormat::Anthropic, ApiFormat::OpenAi, &answer, &ctx).map_or(0, |b| b.len())
    });

    let mut stream = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":1000,\"output_tokens\":1}}}\n\n",
    );
    let words = text(4096);
    for chunk in words.as_bytes().chunks(32) {
        let delta = json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": String::from_utf8_lossy(chunk)}});
        stream.push_str(&format!("event: content_block_delta\ndata: {delta}\n\n"));
    }
    stream.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":900}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    let stream_bytes = stream.into_bytes();
    let streamed = best_of(7, 100, || {
        let Some(mut t) = StreamTranslator::new(ApiFormat::Anthropic, ApiFormat::OpenAi, ctx.clone()) else { return 0 };
        let mut out = Vec::with_capacity(stream_bytes.len() * 2);
        for piece in stream_bytes.chunks(512) {
            t.feed(piece, &mut out);
        }
        t.finish(&mut out);
        out.len()
    });
    println!(
        "4 KB chat request, whole request side: same API {:.1} µs, translated to Anthropic {:.1} µs (+{:.1} µs, x{:.2}); \
         4 KB answer back: JSON {:.1} µs, stream of 128 events {:.1} µs",
        us(same_api),
        us(translated),
        us(translated.saturating_sub(same_api)),
        translated.as_secs_f64() / same_api.as_secs_f64(),
        us(json_answer),
        us(streamed),
    );
}
