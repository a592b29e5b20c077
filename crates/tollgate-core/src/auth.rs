//! Tenant authentication.
//!
//! A tenant is identified only by an API key that the operator issued: the
//! key's SHA-256 is looked up (`apikey:<hex>` in KV, or the Envoy plugin
//! config) to find the tenant id. A client-supplied header never names the
//! tenant by itself, and the key itself is never stored or logged.

use crate::budget::RawBudgetLimit;
use crate::budget::scope::KeyScope;
use crate::cache::hex;
use crate::error::AuthError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of a key, as `sha256sum` prints it.
pub fn hash_api_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Where a key's record lives in KV.
pub fn api_key_storage_key(key_hash: &str) -> String {
    format!("apikey:{key_hash}")
}

/// Where a tenant's config lives in KV.
pub fn tenant_storage_key(tenant_id: &str) -> String {
    format!("tenant:{tenant_id}")
}

/// The key from `Authorization: Bearer …` (OpenAI SDKs) or `x-api-key`
/// (Anthropic SDKs).
pub fn extract_api_key<'a>(authorization: Option<&'a str>, x_api_key: Option<&'a str>) -> Result<&'a str, AuthError> {
    if let Some(auth) = authorization {
        let auth = auth.trim();
        let token = auth.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer ")).map(|_| auth[7..].trim());
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            return Ok(token);
        }
    }
    match x_api_key.map(str::trim) {
        Some(k) if !k.is_empty() => Ok(k),
        _ => Err(AuthError::MissingKey),
    }
}

/// What an API key maps to.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRecord {
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    /// The key's own budget limits, inside the tenant's (same shape as
    /// `budgets.limits`): a key can be given $5 a day inside a $500 tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<RawBudgetLimit>,
}

impl ApiKeyRecord {
    /// Parse a stored record; a disabled key is as good as unknown, and a
    /// record whose limits do not validate is malformed.
    pub fn from_json(bytes: &[u8]) -> Result<ApiKeyRecord, AuthError> {
        let record: ApiKeyRecord = serde_json::from_slice(bytes).map_err(|_| AuthError::MalformedRecord)?;
        if record.disabled {
            return Err(AuthError::UnknownKey);
        }
        let mut bad = false;
        record.scope("", |_, _| bad = true);
        if bad { Err(AuthError::MalformedRecord) } else { Ok(record) }
    }

    /// The key as a budget level, for a key whose SHA-256 is `key_hash`;
    /// each problem with its limits goes to `problem` as (path, message).
    pub fn scope(&self, key_hash: &str, problem: impl FnMut(String, String)) -> KeyScope {
        KeyScope::from_record(key_hash, self.label.as_deref(), &self.limits, problem)
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn key_hashes_match_sha256sum() {
        // printf 'tg-test' | sha256sum
        assert_eq!(hash_api_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn keys_come_from_bearer_or_x_api_key() {
        assert_eq!(extract_api_key(Some("Bearer tg-1"), None), Ok("tg-1"));
        assert_eq!(extract_api_key(Some("bearer   tg-1 "), None), Ok("tg-1"));
        assert_eq!(extract_api_key(None, Some("tg-2")), Ok("tg-2"));
        assert_eq!(extract_api_key(Some("Basic xyz"), None), Err(AuthError::MissingKey));
        assert_eq!(extract_api_key(Some("Bearer "), Some(" ")), Err(AuthError::MissingKey));
        assert_eq!(extract_api_key(Some("é"), None), Err(AuthError::MissingKey));
    }

    #[test]
    fn disabled_or_malformed_records_do_not_authenticate() {
        assert!(ApiKeyRecord::from_json(br#"{"tenant_id":"a"}"#).is_ok());
        assert_eq!(ApiKeyRecord::from_json(br#"{"tenant_id":"a","disabled":true}"#), Err(AuthError::UnknownKey));
        assert_eq!(ApiKeyRecord::from_json(b"nope"), Err(AuthError::MalformedRecord));
    }
}
