//! What the core's flow tests share: tenant configs built from JSON, and
//! requests sent through the in-memory host (`sim::Simulator`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use tollgate_core::api::ApiFormat;
use tollgate_core::config::TenantConfig;
use tollgate_core::engine::{Inbound, Upstream};
use tollgate_core::sim::{Outcome, Simulator, UpstreamReply};

pub const NOW: u64 = 1_795_000_000;

/// A tenant config: `base` with `extra` merged over it (objects key by
/// key, anything else replaced).
pub fn config_from(mut base: Value, extra: Value) -> TenantConfig {
    merge(&mut base, extra);
    TenantConfig::from_json(base.to_string().as_bytes()).unwrap()
}

pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// Send `body` in `api` through `sim`; `upstream` answers each provider call.
pub fn send_api(
    sim: &mut Simulator,
    api: ApiFormat,
    body: &Value,
    upstream: &mut dyn FnMut(&Upstream) -> Option<UpstreamReply>,
) -> Outcome {
    let bytes = body.to_string();
    let tenant = sim.config.tenant_id.clone();
    let inbound = Inbound {
        tenant_id: &tenant,
        api,
        body: bytes.as_bytes(),
        cache_control: None,
        now: NOW,
        entropy: rand_bytes(&bytes, NOW),
        key: None,
        user_header: None,
        tags_header: None,
    };
    sim.handle(&inbound, upstream)
}

/// Unique per call, as a host's random bytes are (request ids name budget holds).
pub fn rand_bytes(s: &str, now: u64) -> [u8; 16] {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in s.bytes().chain(now.to_le_bytes()).chain(call.to_le_bytes()) {
        h = (h ^ u128::from(b)).wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    h.to_le_bytes()
}

/// The JSON body of an outcome or an upstream call.
pub fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

/// The `data:` payloads of an SSE body, `[DONE]` left out.
pub fn sse_data(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// An error outcome's `error.code`.
pub fn error_code(o: &Outcome) -> String {
    json_of(&o.body)["error"]["code"].as_str().unwrap_or_default().to_owned()
}

/// A user turn in `api`'s request shape, routed by the classifier.
pub fn ask_in(api: ApiFormat, prompt: &str) -> Value {
    match api {
        ApiFormat::Anthropic => json!({"model": "tollgate/auto", "max_tokens": 200, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}),
        ApiFormat::Responses => json!({"model": "tollgate/auto", "temperature": 0, "input": prompt}),
        _ => json!({"model": "tollgate/auto", "temperature": 0, "messages": [{"role": "user", "content": prompt}]}),
    }
}
