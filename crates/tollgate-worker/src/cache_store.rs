//! The response cache in Workers KV (`TOLLGATE_CACHE`).
//!
//! The core decides what is cached, under which key and for how long; this
//! only reads and writes. KV is eventually consistent and per-location
//! cached, which suits an exact-match cache: a miss where another location
//! already has the entry costs one provider call, never a wrong answer (the
//! key covers tenant, model and every answer-affecting field).

use tollgate_core::ApiFormat;
use tollgate_core::cache::{CacheEntry, CacheKey};
use tollgate_core::engine::CacheFill;
use worker::{Env, console_error};

pub const CACHE_BINDING: &str = "TOLLGATE_CACHE";

/// KV refuses expirations under 60 s; shorter tenant TTLs are still honoured
/// because every entry carries its own expiry, checked on read.
const KV_MIN_TTL_SECS: u64 = 60;

fn kv_key(key: &CacheKey) -> String {
    format!("cache:{}", key.as_str())
}

/// The entry under `key`, if it exists and has not expired. An unreachable
/// cache is a miss: the cache is an optimisation, never a reason to fail.
pub async fn lookup(env: &Env, key: &CacheKey, api: ApiFormat, now: u64) -> Option<CacheEntry> {
    let kv = env.kv(CACHE_BINDING).map_err(|e| console_error!("tollgate: cache binding missing: {e}")).ok()?;
    match kv.get(&kv_key(key)).bytes().await {
        Ok(Some(bytes)) => CacheEntry::from_bytes(&bytes, api, now),
        Ok(None) => None,
        Err(e) => {
            console_error!("tollgate: cache read failed, treating as a miss: {e}");
            None
        }
    }
}

/// Store an admitted answer (run inside `ctx.wait_until`, after the client has it).
pub async fn fill(env: Env, fill: CacheFill) {
    let Ok(kv) = env.kv(CACHE_BINDING) else {
        console_error!("tollgate: cache binding missing; answer not cached");
        return;
    };
    let put = match kv.put_bytes(&kv_key(&fill.key), &fill.value) {
        Ok(p) => p.expiration_ttl(fill.ttl_seconds.max(KV_MIN_TTL_SECS)),
        Err(e) => {
            console_error!("tollgate: cache write refused: {e}");
            return;
        }
    };
    if let Err(e) = put.execute().await {
        console_error!("tollgate: cache write failed: {e}");
    }
}
