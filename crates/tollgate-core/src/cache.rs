//! The exact-match response cache: keys, admission rules, entries and the
//! doorkeeper. Storage is the host's (Workers KV, Envoy shared data, Redis).

use crate::api::ApiFormat;
use crate::config::{CacheSettings, Provider};
use crate::request::ChatRequest;
use crate::response::{ResponseSummary, Usage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped whenever the key derivation or entry format changes, so old
/// entries simply stop matching.
const KEY_DOMAIN: &[u8] = b"tollgate-cache-v1";

/// A cache key: lowercase hex SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CacheKey(pub String);

impl CacheKey {
    /// SHA-256 over tenant, provider, final model and the canonical request
    /// (every field that affects the answer; not `stream` or client metadata),
    /// each length-prefixed so no two inputs share an encoding.
    pub fn derive(tenant_id: &str, provider: Provider, model: &str, request: &ChatRequest) -> CacheKey {
        let mut h = Sha256::new();
        // The client's API is part of the key: an entry is stored in the
        // client's shape, and a chat body and a Messages body can be the
        // same JSON while asking different APIs (one model, translated).
        let api = request.api.as_str().as_bytes();
        for part in [KEY_DOMAIN, tenant_id.as_bytes(), api, provider.as_str().as_bytes(), model.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let canonical = request.canonical_for_cache();
        h.update((canonical.len() as u64).to_le_bytes());
        h.update(&canonical);
        CacheKey(hex(&h.finalize()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Why a request does not use the cache at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bypass {
    /// The tenant turned the cache off.
    Disabled,
    /// `temperature > 0` (or unset) without the tenant's opt-in.
    Sampled,
    /// The client sent `Cache-Control: no-store`.
    NoStore,
    /// More than one choice requested.
    MultipleChoices,
}

/// The client's `Cache-Control` request directives that matter here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientCacheControl {
    /// `no-store`: neither read nor write.
    pub no_store: bool,
    /// `no-cache`: do not serve from cache, but the fresh answer may be stored.
    pub no_cache: bool,
}

impl ClientCacheControl {
    pub fn parse(header: Option<&str>) -> Self {
        let mut cc = ClientCacheControl::default();
        for directive in header.unwrap_or("").split(',') {
            match directive.trim().to_ascii_lowercase().as_str() {
                "no-store" => cc.no_store = true,
                "no-cache" => cc.no_cache = true,
                _ => {}
            }
        }
        cc
    }
}

/// Whether the cache may be used for this request at all.
pub fn bypass_reason(settings: &CacheSettings, request: &ChatRequest, cc: ClientCacheControl) -> Option<Bypass> {
    if !settings.enabled {
        Some(Bypass::Disabled)
    } else if cc.no_store {
        Some(Bypass::NoStore)
    } else if request.choices > 1 {
        Some(Bypass::MultipleChoices)
    } else if request.is_sampled() && !settings.allow_nonzero_temperature {
        Some(Bypass::Sampled)
    } else {
        None
    }
}

/// Why a finished response was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotAdmitted {
    NotSuccess,
    Incomplete,
    ToolCalls,
    Truncated,
    TooLarge,
    FirstSighting,
    /// Answered by a fallback model, not the one the key names.
    Fallback,
}

/// The admission rule: only complete 2xx answers that ended naturally, with
/// no tool calls, within the size limit.
pub fn admit(
    status: u16,
    summary: &ResponseSummary,
    body_len: usize,
    settings: &CacheSettings,
) -> Result<(), NotAdmitted> {
    if !(200..300).contains(&status) {
        return Err(NotAdmitted::NotSuccess);
    }
    if !summary.complete {
        return Err(NotAdmitted::Incomplete);
    }
    if summary.has_tool_calls {
        return Err(NotAdmitted::ToolCalls);
    }
    match summary.finish_reason.as_deref() {
        Some("stop") | Some("end_turn") | Some("stop_sequence") => {}
        _ => return Err(NotAdmitted::Truncated),
    }
    if body_len > settings.max_entry_bytes {
        return Err(NotAdmitted::TooLarge);
    }
    Ok(())
}

/// A stored response: the non-streamed body, whatever the original request's
/// stream flag, so it can be replayed either way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub api: ApiFormat,
    pub model: String,
    pub stored_at: u64,
    pub expires_at: u64,
    /// What the original call cost; a hit saves this much.
    pub usage: Option<Usage>,
    pub cost_micros: u64,
    pub body: serde_json::Value,
}

impl CacheEntry {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// None for anything that is not a well-formed, unexpired entry of this API.
    pub fn from_bytes(bytes: &[u8], api: ApiFormat, now: u64) -> Option<CacheEntry> {
        let entry: CacheEntry = serde_json::from_slice(bytes).ok()?;
        (entry.api == api && entry.expires_at > now && entry.body.is_object()).then_some(entry)
    }
}

/// Caches a prompt only on its second sighting, so one-off prompts cost no
/// cache writes. A Bloom filter: false positives admit a one-off prompt
/// early (harmless); it never forgets within a generation. When it has seen
/// its capacity, it starts a new generation so it does not fill up.
#[derive(Debug)]
pub struct Doorkeeper {
    filter: bloomfilter::Bloom<str>,
    capacity: usize,
    seen: usize,
}

impl Doorkeeper {
    /// `seed` must come from the host's random source, so that clients cannot
    /// craft keys that collide in every deployment.
    pub fn new(capacity: usize, seed: [u8; 32]) -> Option<Doorkeeper> {
        let capacity = capacity.max(64);
        let filter = bloomfilter::Bloom::new_for_fp_rate_with_seed(capacity, 0.01, &seed).ok()?;
        Some(Doorkeeper { filter, capacity, seen: 0 })
    }

    /// Record a sighting; true when the key had been seen before.
    pub fn seen_before(&mut self, key: &CacheKey) -> bool {
        let before = self.filter.check_and_set(key.as_str());
        if !before {
            self.seen += 1;
            if self.seen > self.capacity {
                self.filter.clear();
                self.filter.set(key.as_str());
                self.seen = 1;
            }
        }
        before
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn req(json: &str) -> ChatRequest {
        ChatRequest::parse(ApiFormat::OpenAi, json.as_bytes(), 1 << 20).unwrap()
    }

    fn settings() -> CacheSettings {
        CacheSettings {
            enabled: true,
            ttl_seconds: 60,
            allow_nonzero_temperature: false,
            doorkeeper: true,
            max_entry_bytes: 1000,
        }
    }

    const BODY: &str = r#"{"model":"tollgate/auto","messages":[{"role":"user","content":"hi"}],"temperature":0}"#;

    #[test]
    fn keys_separate_tenants_providers_and_models_but_not_stream_or_user() {
        let r = req(BODY);
        let k = CacheKey::derive("t1", Provider::OpenAi, "gpt-4o-mini", &r);
        assert_eq!(k.0.len(), 64);
        assert_ne!(k, CacheKey::derive("t2", Provider::OpenAi, "gpt-4o-mini", &r));
        assert_ne!(k, CacheKey::derive("t1", Provider::Mistral, "gpt-4o-mini", &r));
        assert_ne!(k, CacheKey::derive("t1", Provider::OpenAi, "gpt-4o", &r));
        let streamed = req(&BODY.replace(r#""temperature":0"#, r#""temperature":0,"stream":true,"user":"x""#));
        assert_eq!(k, CacheKey::derive("t1", Provider::OpenAi, "gpt-4o-mini", &streamed));
    }

    #[test]
    fn sampled_requests_bypass_unless_the_tenant_opts_in() {
        let hot = req(&BODY.replace(r#""temperature":0"#, r#""temperature":0.7"#));
        let unset = req(&BODY.replace(r#","temperature":0"#, ""));
        let mut s = settings();
        assert_eq!(bypass_reason(&s, &hot, ClientCacheControl::default()), Some(Bypass::Sampled));
        assert_eq!(bypass_reason(&s, &unset, ClientCacheControl::default()), Some(Bypass::Sampled));
        assert_eq!(bypass_reason(&s, &req(BODY), ClientCacheControl::default()), None);
        s.allow_nonzero_temperature = true;
        assert_eq!(bypass_reason(&s, &hot, ClientCacheControl::default()), None);
    }

    #[test]
    fn no_store_from_the_client_bypasses_the_cache() {
        let cc = ClientCacheControl::parse(Some("max-age=0, No-Store"));
        assert!(cc.no_store);
        assert_eq!(bypass_reason(&settings(), &req(BODY), cc), Some(Bypass::NoStore));
    }

    #[test]
    fn only_complete_natural_tool_free_successes_are_admitted() {
        let ok = ResponseSummary { complete: true, finish_reason: Some("stop".into()), ..Default::default() };
        let s = settings();
        assert_eq!(admit(200, &ok, 10, &s), Ok(()));
        assert_eq!(admit(500, &ok, 10, &s), Err(NotAdmitted::NotSuccess));
        assert_eq!(
            admit(200, &ResponseSummary { complete: false, ..ok.clone() }, 10, &s),
            Err(NotAdmitted::Incomplete)
        );
        assert_eq!(
            admit(200, &ResponseSummary { has_tool_calls: true, ..ok.clone() }, 10, &s),
            Err(NotAdmitted::ToolCalls)
        );
        assert_eq!(
            admit(200, &ResponseSummary { finish_reason: Some("length".into()), ..ok.clone() }, 10, &s),
            Err(NotAdmitted::Truncated)
        );
        assert_eq!(admit(200, &ok, 1001, &s), Err(NotAdmitted::TooLarge));
    }

    #[test]
    fn expired_or_foreign_entries_are_not_served() {
        let e = CacheEntry {
            api: ApiFormat::OpenAi,
            model: "m".into(),
            stored_at: 1,
            expires_at: 100,
            usage: None,
            cost_micros: 0,
            body: serde_json::json!({"id":"x"}),
        };
        let bytes = e.to_bytes();
        assert!(CacheEntry::from_bytes(&bytes, ApiFormat::OpenAi, 50).is_some());
        assert!(CacheEntry::from_bytes(&bytes, ApiFormat::OpenAi, 100).is_none());
        assert!(CacheEntry::from_bytes(&bytes, ApiFormat::Anthropic, 50).is_none());
        assert!(CacheEntry::from_bytes(b"garbage", ApiFormat::OpenAi, 50).is_none());
    }

    #[test]
    fn the_doorkeeper_admits_on_second_sight_and_renews_when_full() {
        let mut d = Doorkeeper::new(64, [7; 32]).unwrap();
        let k = CacheKey("a".repeat(64));
        assert!(!d.seen_before(&k));
        assert!(d.seen_before(&k));
        for i in 0..200 {
            d.seen_before(&CacheKey(format!("{i:064}")));
        }
        assert!(d.seen <= 64);
    }
}
