//! Shared by the harness tests: plugin configurations built from the
//! repository's examples, request headers, and upstream answers shaped like
//! the providers' (and tollgate-mock's).

// Each test file uses some of these; a failed helper fails the test by panicking.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use tollgate_envoy_harness::{Action, Host, LocalReply, Stream};

pub const PROVIDERS: [&str; 5] = ["openai", "anthropic", "google", "mistral", "workers_ai"];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn read_json(relative: &str) -> Value {
    let path = root().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An examples/ tenant under another id, top-level sections replaced.
pub fn like_example(file: &str, tenant_id: &str, changes: Value) -> Value {
    let mut config = read_json(&format!("examples/{file}"));
    config["tenant_id"] = json!(tenant_id);
    if let Value::Object(changes) = changes {
        for (k, v) in changes {
            config[k.as_str()] = v;
        }
    }
    config
}

/// A two-tier tenant like tests/e2e/tenants.py `routed_tenant`: cheap
/// (gpt-4o-mini, gpt-4.1-nano, then Anthropic) up to 0.5, then premium.
pub fn routed_tenant(tenant_id: &str, extra: Value) -> Value {
    let mut config = json!({
        "version": 1,
        "tenant_id": tenant_id,
        "routing": {
            "tiers": [
                {"name": "cheap", "up_to_score": 0.5,
                 "models": ["openai/gpt-4o-mini", "openai/gpt-4.1-nano",
                            "anthropic/claude-3-5-haiku-latest", "anthropic/claude-3-haiku-20240307"]},
                {"name": "premium",
                 "models": ["openai/gpt-4o", "openai/gpt-4.1",
                            "anthropic/claude-sonnet-4-5", "anthropic/claude-3-7-sonnet-latest"]}
            ]
        }
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            config[k.as_str()] = v;
        }
    }
    config
}

pub fn key_for(tenant_id: &str) -> String {
    format!("tg-harness-{tenant_id}-key")
}

pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The plugin configuration for these tenants (each with the key
/// [`key_for`] its id), every provider routed like the e2e suite's mock:
/// cluster `<p>`, authority `mock-<p>`, path prefix `/<p>/v1`.
pub fn plugin_config(tenants: &[Value]) -> Value {
    let mut t = serde_json::Map::new();
    let mut keys = serde_json::Map::new();
    for tenant in tenants {
        let id = tenant["tenant_id"].as_str().expect("tenant_id").to_owned();
        keys.insert(sha256_hex(&key_for(&id)), json!({"tenant_id": id, "label": "harness", "disabled": false}));
        t.insert(id, tenant.clone());
    }
    let mut providers = serde_json::Map::new();
    for p in PROVIDERS {
        providers.insert(
            p.to_owned(),
            json!({"cluster": p, "authority": format!("mock-{p}"), "path_prefix": format!("/{p}/v1")}),
        );
    }
    json!({
        "tenants": t,
        "api_keys": keys,
        "providers": providers,
        "state": {"budgets": "local", "cache": "local"},
    })
}

/// Provider keys as the e2e suite sets them: `<P>_API_KEY = sk-mock-<p>`.
pub fn provider_env() -> Vec<(String, String)> {
    PROVIDERS.iter().map(|p| (format!("{}_API_KEY", p.to_uppercase()), format!("sk-mock-{p}"))).collect()
}

/// A configured host for these tenants (worker 0 only).
pub fn host_for(tenants: &[Value]) -> Host {
    let env = provider_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Host::configured(&plugin_config(tenants).to_string(), &env)
}

/// Headers of a chat completion (OpenAI API) with this key as a bearer token.
pub fn chat_headers(key: &str, body_len: usize) -> Vec<(String, String)> {
    vec![
        (":method".into(), "POST".into()),
        (":scheme".into(), "http".into()),
        (":path".into(), "/v1/chat/completions".into()),
        (":authority".into(), "gateway.local".into()),
        ("content-type".into(), "application/json".into()),
        ("content-length".into(), body_len.to_string()),
        ("authorization".into(), format!("Bearer {key}")),
        ("user-agent".into(), "harness-test/1".into()),
    ]
}

pub fn refs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Sends a chat completion request (headers, then the body in one chunk).
pub fn send_chat(s: &mut Stream, key: &str, body: &Value) -> Action {
    let body = serde_json::to_vec(body).unwrap();
    let headers = chat_headers(key, body.len());
    s.send_request(&refs(&headers), &body)
}

pub fn simple_chat(content: &str) -> Value {
    json!({"model": "tollgate/auto", "temperature": 0, "messages": [{"role": "user", "content": content}]})
}

/// The local reply's body as JSON.
pub fn reply_json(reply: &LocalReply) -> Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("local reply body is not JSON ({e}): {}", reply.body_str()))
}

/// Asserts an OpenAI-shaped error reply: status, `error.code`, `error.type` and `error.message` present.
pub fn assert_error_reply(reply: &LocalReply, status: u32, code: &str) -> Value {
    let body = reply_json(reply);
    assert_eq!(reply.status, status, "status of {}", reply.body_str());
    assert_eq!(body["error"]["code"], json!(code), "error code of {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "error message in {body}");
    assert!(body["error"]["type"].is_string(), "error type in {body}");
    assert!(
        reply.header("content-type").is_some_and(|v| v.starts_with("application/json")),
        "content-type of {:?}",
        reply.headers
    );
    body
}

/// A non-streamed OpenAI chat completion.
pub fn openai_completion(model: &str, content: &str, prompt_tokens: u64, completion_tokens: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "chatcmpl-harness",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}
    }))
    .unwrap()
}

/// The SSE events of a streamed OpenAI completion with a usage chunk, as tollgate-mock sends them.
pub fn openai_sse(model: &str, words: &[&str], prompt_tokens: u64, completion_tokens: u64) -> Vec<Vec<u8>> {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-harness", "object": "chat.completion.chunk", "created": 1_700_000_000,
                   "model": model, "usage": null,
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        )
        .into_bytes()
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    for w in words {
        events.push(chunk(json!({"content": w}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    events.push(
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-harness", "object": "chat.completion.chunk", "created": 1_700_000_000,
                   "model": model, "choices": [],
                   "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}})
        )
        .into_bytes(),
    );
    events.push(b"data: [DONE]\n\n".to_vec());
    events
}

/// The forwarded request body as JSON (panics if nothing was forwarded).
pub fn forwarded_json(s: &Stream) -> Value {
    let up = s.upstream_request().expect("the request went upstream");
    serde_json::from_slice(&up.body).unwrap_or_else(|e| panic!("forwarded body is not JSON ({e}): {}", up.body_str()))
}

/// Answers a forwarded request with a JSON completion and ends the stream.
pub fn answer_json(s: &mut Stream, body: &[u8]) {
    let len = body.len().to_string();
    s.send_response(&[(":status", "200"), ("content-type", "application/json"), ("content-length", &len)], &[body]);
}

/// Standard base64 (with padding), for the vectors' `{"base64": ...}` bodies.
pub fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap_or_else(|| panic!("bad base64 byte {c}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// A tests/vectors/bad_input.json body: text, base64, or a generator.
pub fn vector_body(spec: &Value) -> Vec<u8> {
    if let Some(text) = spec["text"].as_str() {
        return text.as_bytes().to_vec();
    }
    if let Some(b64) = spec["base64"].as_str() {
        return base64_decode(b64);
    }
    let repeat = spec["repeat"].as_str().expect("generator needs `repeat`").as_bytes();
    let mut body = spec["prefix"].as_str().unwrap_or("").as_bytes().to_vec();
    if let Some(times) = spec["times"].as_u64() {
        for _ in 0..times {
            body.extend_from_slice(repeat);
        }
    } else {
        let n = spec["bytes"].as_u64().expect("generator needs `times` or `bytes`") as usize;
        body.extend(repeat.iter().cycle().take(n));
    }
    body.extend_from_slice(spec["suffix"].as_str().unwrap_or("").as_bytes());
    body
}

/// A small deterministic PRNG (splitmix64) for the fuzz-style loops.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}
