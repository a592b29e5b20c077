//! The shared decision vectors (tests/vectors/decisions.json) run through the
//! core. tests/e2e/test_decision_vectors.py sends the same cases to the Worker
//! and to the Envoy filter and checks the same expectations, so the three
//! agree only if the hosts make exactly the core's decisions.
//!
//! Each case goes through `sim::Simulator`, the in-memory host that drives
//! `engine::Plan` step by step as the real hosts do (cache lookup, budget
//! reservation, forward), against a provider that always answers 200. Keys
//! are checked the way both hosts check them (the core's `auth` functions
//! against the tenants' key records); a request refused there carries no
//! decision headers.
//!
//! Regenerate (after editing a case's inputs, or when a decision changes on
//! purpose), with the vocabularies the hosts ship, then review the diff:
//!
//! ```text
//! TOLLGATE_WRITE_VECTORS=1 cargo nextest run -p tollgate-core \
//!     --no-default-features --features o200k --test decision_vectors
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use tollgate_core::ApiError;
use tollgate_core::api::ApiFormat;
use tollgate_core::auth::{self, ApiKeyRecord};
use tollgate_core::config::TenantConfig;
use tollgate_core::count::{self, Encoding};
use tollgate_core::engine::{Inbound, Upstream};
use tollgate_core::error::AuthError;
use tollgate_core::request::ChatRequest;
use tollgate_core::response;
use tollgate_core::sim::{Outcome, Simulator, UpstreamReply};
use tollgate_core::upstream;

/// Any fixed time: no case depends on it (budgets are far from their limits).
const NOW: u64 = 1_795_000_000;
const WRITE_ENV: &str = "TOLLGATE_WRITE_VECTORS";

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/decisions.json")
}

/// The vocabularies this build of the core counts with.
fn built_vocabularies() -> Vec<&'static str> {
    let mut v = Vec::new();
    if Encoding::O200kBase.is_available() {
        v.push("o200k");
    }
    if Encoding::Cl100kBase.is_available() {
        v.push("cl100k");
    }
    v
}

struct Tenant {
    config: TenantConfig,
}

struct Vectors {
    doc: Value,
    tenants: BTreeMap<String, Tenant>,
    /// `apikey:<hash>` records, as the hosts store them.
    key_records: BTreeMap<String, Vec<u8>>,
    compared_headers: Vec<String>,
    vocabularies: Vec<String>,
}

fn load() -> Vectors {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut tenants = BTreeMap::new();
    let mut key_records = BTreeMap::new();
    for (id, t) in doc["tenants"].as_object().expect("`tenants` is an object") {
        let config = TenantConfig::from_json(t["config"].to_string().as_bytes())
            .unwrap_or_else(|e| panic!("tenant {id}: config refused: {e:?}"));
        assert_eq!(&config.tenant_id, id, "tenant {id}: the config names another tenant");
        for k in t["keys"].as_array().expect("tenant keys are an array") {
            let secret = k["key"].as_str().expect("key.key is a string");
            let record = json!({"tenant_id": id, "label": format!("e2e {id}"), "disabled": k["disabled"].as_bool().unwrap_or(false)});
            let hash = auth::hash_api_key(secret);
            assert!(key_records.insert(hash, record.to_string().into_bytes()).is_none(), "key {secret} listed twice");
        }
        tenants.insert(id.clone(), Tenant { config });
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().expect("a list of strings").iter().map(|s| s.as_str().unwrap().to_owned()).collect()
    };
    let compared_headers = strings(&doc["compared_headers"]);
    let vocabularies = strings(&doc["vocabularies"]);
    Vectors { doc, tenants, key_records, compared_headers, vocabularies }
}

/// The bytes a case sends (tests/e2e/test_decision_vectors.py builds the same).
fn body_bytes(spec: &Value) -> Vec<u8> {
    if let Some(v) = spec.get("json") {
        return serde_json::to_vec(v).unwrap();
    }
    if let Some(t) = spec.get("text") {
        return t.as_str().expect("body.text is a string").as_bytes().to_vec();
    }
    let s = |k: &str| spec.get(k).and_then(Value::as_str).unwrap_or("");
    let times = spec["times"].as_u64().expect("body: json, text, or prefix/repeat/times/suffix");
    let mut out = s("prefix").as_bytes().to_vec();
    for _ in 0..times {
        out.extend_from_slice(s("repeat").as_bytes());
    }
    out.extend_from_slice(s("suffix").as_bytes());
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn api_of(case: &Value) -> ApiFormat {
    match case["api"].as_str() {
        Some("openai") => ApiFormat::OpenAi,
        Some("anthropic") => ApiFormat::Anthropic,
        Some("embeddings") => ApiFormat::Embeddings,
        Some("responses") => ApiFormat::Responses,
        other => panic!("case {}: api {other:?}", case["name"]),
    }
}

/// The request headers a case sends: its key as each SDK sends it, then its own headers.
fn request_headers(case: &Value, api: ApiFormat) -> BTreeMap<String, String> {
    let mut h = BTreeMap::new();
    if let Some(key) = case["key"].as_str() {
        match api {
            ApiFormat::OpenAi | ApiFormat::Embeddings | ApiFormat::Responses => {
                h.insert("authorization".to_owned(), format!("Bearer {key}"))
            }
            ApiFormat::Anthropic => h.insert("x-api-key".to_owned(), key.to_owned()),
        };
    }
    if let Some(extra) = case.get("headers").and_then(Value::as_object) {
        for (k, v) in extra {
            h.insert(k.to_ascii_lowercase(), v.as_str().expect("header values are strings").to_owned());
        }
    }
    h
}

/// Unique per call, as a host's random bytes are (request ids name budget holds).
fn entropy() -> [u8; 16] {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut e = [0u8; 16];
    e[..8].copy_from_slice(&n.to_le_bytes());
    e
}

/// A provider that answers every call with a short, complete 200.
fn provider(up: &Upstream) -> Option<UpstreamReply> {
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    let model = sent["model"].as_str().unwrap_or("unknown").to_owned();
    let stream = sent["stream"] == json!(true);
    let answer = match up.api {
        ApiFormat::OpenAi => json!({
            "id": "chatcmpl-v", "object": "chat.completion", "created": NOW, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}
        }),
        ApiFormat::Anthropic => json!({
            "id": "msg_v", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 2}
        }),
        ApiFormat::Responses => json!({
            "id": "resp_v", "object": "response", "created_at": NOW, "status": "completed", "model": model,
            "output": [{"type": "message", "id": "msg_v", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": "ok", "annotations": []}]}],
            "usage": {"input_tokens": 20, "output_tokens": 2, "total_tokens": 22}
        }),
        ApiFormat::Embeddings => json!({
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}],
            "usage": {"prompt_tokens": 20, "total_tokens": 20}
        }),
    };
    Some(if stream {
        let body = match up.api {
            // The Responses API's stream ends with the whole response.
            ApiFormat::Responses => format!(
                "event: response.output_text.delta\ndata: {}\n\nevent: response.completed\ndata: {}\n\n",
                json!({"type": "response.output_text.delta", "delta": "ok"}),
                json!({"type": "response.completed", "response": answer})
            )
            .into_bytes(),
            api => response::replay_as_sse(api, &answer, true).unwrap(),
        };
        UpstreamReply { status: 200, body, stream: true }
    } else {
        UpstreamReply { status: 200, body: answer.to_string().into_bytes(), stream: false }
    })
}

/// What a host does with a case, and what the client and provider see.
struct Run {
    observed: Value,
    /// The cache key a hit would be read from, if the request uses the cache.
    cache_key: Option<String>,
}

/// A host's authentication step: the key from the headers, its record, the tenant.
fn authenticate<'a>(v: &'a Vectors, headers: &BTreeMap<String, String>) -> Result<(&'a str, &'a Tenant), ApiError> {
    let key = auth::extract_api_key(
        headers.get("authorization").map(String::as_str),
        headers.get("x-api-key").map(String::as_str),
    )?;
    let record = v.key_records.get(&auth::hash_api_key(key)).ok_or(AuthError::UnknownKey)?;
    let record = ApiKeyRecord::from_json(record)?;
    let (id, tenant) = v.tenants.get_key_value(&record.tenant_id).ok_or(AuthError::UnknownKey)?;
    Ok((id.as_str(), tenant))
}

fn run_case(v: &Vectors, case: &Value, sims: Option<&mut BTreeMap<String, Simulator>>) -> Run {
    let api = api_of(case);
    let headers = request_headers(case, api);
    let body = body_bytes(&case["body"]);
    let (tenant_id, tenant) = match authenticate(v, &headers) {
        Ok(t) => t,
        Err(err) => {
            let observed = observation(&v.compared_headers, err.status, &err.body(), &[], &[]);
            return Run { observed, cache_key: None };
        }
    };
    assert_eq!(case["tenant"].as_str(), Some(tenant_id), "case {}: `tenant` is not the key's tenant", case["name"]);
    let inbound = Inbound {
        tenant_id,
        api,
        body: &body,
        cache_control: headers.get("cache-control").map(String::as_str),
        now: NOW,
        entropy: entropy(),
        key: None,
        user_header: None,
        tags_header: None,
    };
    let new_sim = || Simulator::new(tenant.config.clone(), [7; 32]);
    let outcome: Outcome = match sims {
        Some(sims) => sims.entry(tenant_id.to_owned()).or_insert_with(new_sim).handle(&inbound, &mut provider),
        None => new_sim().handle(&inbound, &mut provider),
    };
    let cache_key = outcome.plan.as_ref().and_then(|p| p.cache.key.as_ref()).map(|k| k.as_str().to_owned());
    let observed =
        observation(&v.compared_headers, outcome.status, &outcome.body, &outcome.headers, &outcome.upstream_calls);
    Run { observed, cache_key }
}

/// The `expect` object for what a host answered and sent upstream.
fn observation(
    compared: &[String],
    status: u16,
    body: &[u8],
    headers: &[(String, String)],
    calls: &[Upstream],
) -> Value {
    let error = if status >= 400 {
        let v: Value = serde_json::from_slice(body).expect("error bodies are JSON");
        json!({"code": v["error"]["code"], "param": v["error"]["param"]})
    } else {
        Value::Null
    };
    let mut h = Map::new();
    for name in compared {
        if let Some((_, value)) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            h.insert(name.clone(), Value::String(value.clone()));
        }
    }
    let upstream: Vec<Value> = calls
        .iter()
        .map(|up| {
            let sent: Value = serde_json::from_slice(&up.body).unwrap();
            json!({
                "provider": up.target.provider.as_str(),
                // Under the provider's base URL, as both hosts join them.
                "path": upstream::endpoint_url("", up.api),
                "model": sent["model"],
                "stream": sent["stream"] == json!(true),
            })
        })
        .collect();
    json!({"status": status, "error": error, "headers": h, "upstream": upstream})
}

/// Whether this build counts the case's prompt with a vocabulary the hosts
/// do not ship (or the other way round), so its score and the size in its
/// reasons may differ: Anthropic prompts and cl100k models are counted with
/// cl100k when it is compiled in, else estimated from o200k.
fn counted_differently(v: &Vectors, case: &Value) -> bool {
    let cl100k_hosts = v.vocabularies.iter().any(|s| s == "cl100k");
    if Encoding::Cl100kBase.is_available() == cl100k_hosts {
        return false;
    }
    let api = api_of(case);
    let Ok(request) = ChatRequest::parse(api, &body_bytes(&case["body"]), usize::MAX) else {
        return false;
    };
    api == ApiFormat::Anthropic || count::openai_encoding(&request.model) == Some(Encoding::Cl100kBase)
}

fn without_score(mut e: Value) -> Value {
    if let Some(h) = e.get_mut("headers").and_then(Value::as_object_mut) {
        h.remove("x-tollgate-score");
        h.remove("x-tollgate-reasons");
    }
    e
}

/// Field-by-field differences between two `expect` objects, one line each.
fn diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            // Want's keys in file order, then any the answer added.
            let mut seen = std::collections::BTreeSet::new();
            for k in a.keys().chain(b.keys()).filter(|k| seen.insert(*k)) {
                diff(&format!("{path}.{k}"), a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null), out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if want == got => {}
        _ => out.push(format!("{path}: expected {want}, got {got}")),
    }
}

#[test]
fn the_core_makes_every_decision_in_the_shared_vectors() {
    let v = load();
    let write = std::env::var(WRITE_ENV).is_ok_and(|s| s == "1");
    let built = built_vocabularies();
    if write {
        assert_eq!(
            built, v.vocabularies,
            "{WRITE_ENV}=1: regenerate with the vocabularies the hosts ship ({:?}): \
             cargo nextest run -p tollgate-core --no-default-features --features o200k --test decision_vectors",
            v.vocabularies
        );
    }
    let cases = v.doc["cases"].as_array().expect("`cases` is a list").clone();
    let mut problems: Vec<String> = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    let mut cache_keys: BTreeMap<String, String> = BTreeMap::new();
    // Every tenant's cases also run in file order through one host, as the
    // e2e test sends them: a decision must not depend on what came before.
    let mut shared: BTreeMap<String, Simulator> = BTreeMap::new();
    let mut written = Vec::with_capacity(cases.len());
    let mut partial = 0;
    for case in &cases {
        let name = case["name"].as_str().expect("every case has a name").to_owned();
        assert!(names.insert(name.clone()), "case name {name} is used twice");
        if let Some(t) = case["tenant"].as_str() {
            assert!(v.tenants.contains_key(t), "case {name}: tenant {t} is not in `tenants`");
        }
        let fresh = run_case(&v, case, None);
        let in_order = run_case(&v, case, Some(&mut shared));
        let mut lines = Vec::new();
        diff("", &fresh.observed, &in_order.observed, &mut lines);
        for l in lines {
            problems.push(format!("{name}: depends on earlier requests (alone vs after the others){l}"));
        }
        if let Some(key) = &fresh.cache_key
            && let Some(other) = cache_keys.insert(key.clone(), name.clone())
        {
            problems.push(format!(
                "{name}: same cache key as {other}; a host could serve one from the other's entry (change a prompt)"
            ));
        }
        let sha = sha256_hex(&body_bytes(&case["body"]));
        if write {
            written.push(with_expectations(case, &sha, &fresh.observed));
            continue;
        }
        if case["body_sha256"].as_str() != Some(sha.as_str()) {
            problems.push(format!("{name}: body_sha256 is stale (regenerate)"));
        }
        let Some(want) = case.get("expect") else {
            problems.push(format!("{name}: no `expect` (regenerate)"));
            continue;
        };
        let (want, got) = if counted_differently(&v, case) {
            partial += 1;
            (without_score(want.clone()), without_score(fresh.observed.clone()))
        } else {
            (want.clone(), fresh.observed.clone())
        };
        let mut lines = Vec::new();
        diff("expect", &want, &got, &mut lines);
        problems.extend(lines.into_iter().map(|l| format!("{name}: {l}")));
    }
    if write {
        let mut doc = v.doc.clone();
        doc["cases"] = Value::Array(written);
        let mut text = serde_json::to_string_pretty(&doc).unwrap();
        text.push('\n');
        std::fs::write(vectors_path(), text).unwrap();
        assert!(problems.is_empty(), "written, but fix these:\n{}", problems.join("\n"));
        eprintln!("wrote {} cases to {}", cases.len(), vectors_path().display());
        return;
    }
    if partial > 0 {
        eprintln!(
            "note: built with {built:?}, the vectors are for {:?}: {partial} cases counted with another vocabulary \
             were compared without score and reasons",
            v.vocabularies
        );
    }
    let mut report = String::new();
    for p in &problems {
        let _ = writeln!(report, "  {p}");
    }
    assert!(
        problems.is_empty(),
        "the core's decisions differ from tests/vectors/decisions.json ({} differences):\n{report}\
         If the change is intended, regenerate ({WRITE_ENV}=1, see this file's header) and review the diff.",
        problems.len()
    );
}

/// A case with `body_sha256` and `expect` (re)written, keys in a fixed order.
fn with_expectations(case: &Value, sha: &str, observed: &Value) -> Value {
    let mut out = Map::new();
    let src = case.as_object().unwrap();
    for k in ["name", "description", "tenant", "api", "key", "headers", "body"] {
        if let Some(val) = src.get(k) {
            out.insert(k.to_owned(), val.clone());
        }
    }
    for (k, val) in src {
        if !out.contains_key(k) && k != "body_sha256" && k != "expect" {
            out.insert(k.clone(), val.clone());
        }
    }
    out.insert("body_sha256".to_owned(), Value::String(sha.to_owned()));
    out.insert("expect".to_owned(), observed.clone());
    Value::Object(out)
}
