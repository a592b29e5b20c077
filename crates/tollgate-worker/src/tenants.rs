//! Who is calling: the API key, hashed, looked up in KV, and the tenant's
//! config, memoised in isolate memory.
//!
//! KV layout (namespace bound as `TOLLGATE_CONFIG`):
//! - `apikey:<sha256 hex of the key>` → `{"tenant_id": "...", "label": "...", "disabled": false, "limits": [...]}`
//! - `tenant:<tenant id>` → the tenant config (`docs/config.md`)
//!
//! Keys are stored hashed so a KV export leaks no usable key. Records and
//! configs are memoised per isolate for `CONFIG_CACHE_SECONDS` (default 30):
//! KV reads cost a few milliseconds at the edge and every routed request
//! needs both. KV is eventually consistent anyway (up to 60 s between a write
//! and every location seeing it), so a revoked key or changed budget applies
//! within KV's propagation delay plus this window. Unknown keys are never
//! memoised, so a new key works as soon as KV serves it.

use crate::settings::{Settings, now_ms};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use tollgate_core::auth::{self, ApiKeyRecord};
use tollgate_core::budget::scope::KeyScope;
use tollgate_core::error::{AuthError, TenantError};
use tollgate_core::learned::LinearRouter;
use tollgate_core::{ApiError, TenantConfig};
use worker::{Env, Request, console_error};

/// The KV binding holding configs and key records.
pub const CONFIG_BINDING: &str = "TOLLGATE_CONFIG";

/// Entries kept per map before the memo starts over; bounds isolate memory
/// whatever the number of tenants and keys.
const MEMO_CAPACITY: usize = 512;

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub id: String,
    pub config: Rc<TenantConfig>,
    /// The key as a budget level (its record's own limits).
    pub key: KeyScope,
}

#[derive(Default)]
struct Memo {
    keys: HashMap<String, (f64, (ApiKeyRecord, KeyScope))>,
    configs: HashMap<String, (f64, Rc<TenantConfig>)>,
}

thread_local! {
    // One isolate runs one thread; requests interleave only at await points,
    // and no borrow of this is held across one.
    static MEMO: RefCell<Memo> = RefCell::new(Memo::default());
}

fn remembered<T: Clone>(map: &HashMap<String, (f64, T)>, key: &str, now: f64) -> Option<T> {
    map.get(key).filter(|(expires, _)| *expires > now).map(|(_, v)| v.clone())
}

fn remember<T>(map: &mut HashMap<String, (f64, T)>, key: String, value: T, expires: f64) {
    if map.len() >= MEMO_CAPACITY {
        map.clear();
    }
    map.insert(key, (expires, value));
}

/// Authenticate the request's key and load its tenant's config.
pub async fn authenticate(req: &Request, env: &Env, settings: &Settings) -> Result<Tenant, ApiError> {
    let headers = req.headers();
    let authorization = headers.get("authorization").ok().flatten();
    let x_api_key = headers.get("x-api-key").ok().flatten();
    let key = auth::extract_api_key(authorization.as_deref(), x_api_key.as_deref())?;
    let key_hash = auth::hash_api_key(key);
    let now = now_ms();
    let ttl = settings.config_cache_ms;

    let (record, key_scope) = match MEMO.with(|m| remembered(&m.borrow().keys, &key_hash, now)) {
        Some(r) => r,
        None => {
            let kv = env.kv(CONFIG_BINDING).map_err(|e| store_down("key", e))?;
            let bytes = kv
                .get(&auth::api_key_storage_key(&key_hash))
                .bytes()
                .await
                .map_err(|e| store_down("key", e))?
                .ok_or(AuthError::UnknownKey)?;
            let record = ApiKeyRecord::from_json(&bytes)?;
            // `from_json` refused a record whose limits do not validate.
            let scope = record.scope(&key_hash, |_, _| {});
            if ttl > 0.0 {
                MEMO.with(|m| {
                    remember(&mut m.borrow_mut().keys, key_hash.clone(), (record.clone(), scope.clone()), now + ttl)
                });
            }
            (record, scope)
        }
    };
    if record.disabled {
        return Err(AuthError::UnknownKey.into());
    }

    let config = match MEMO.with(|m| remembered(&m.borrow().configs, &record.tenant_id, now)) {
        Some(c) => c,
        None => {
            let kv = env.kv(CONFIG_BINDING).map_err(|e| config_down(&record.tenant_id, e))?;
            let bytes = kv
                .get(&auth::tenant_storage_key(&record.tenant_id))
                .bytes()
                .await
                .map_err(|e| config_down(&record.tenant_id, e))?
                .ok_or(TenantError::Unavailable)?;
            let mut config = TenantConfig::from_json(&bytes).map_err(|e| {
                console_error!("tollgate: tenant `{}` config is invalid: {e}", record.tenant_id);
                TenantError::InvalidConfig(e.to_string())
            })?;
            if let Some(key) = config.classifier.model_key().map(str::to_owned) {
                // Memoised with the config, so a model is fetched and parsed
                // once per isolate per CONFIG_CACHE_SECONDS, not per request.
                let model = load_model(&kv, &record.tenant_id, &key).await?;
                config.classifier.attach_model(Arc::new(model));
            }
            let config = Rc::new(config);
            if ttl > 0.0 {
                MEMO.with(|m| {
                    remember(&mut m.borrow_mut().configs, record.tenant_id.clone(), config.clone(), now + ttl)
                });
            }
            config
        }
    };
    if config.tenant_id != record.tenant_id {
        // A key must never reach another tenant's budgets or cache.
        console_error!("tollgate: key for `{}` resolves to config of `{}`", record.tenant_id, config.tenant_id);
        return Err(TenantError::InvalidConfig("the config's tenant_id does not match its key".into()).into());
    }
    Ok(Tenant { id: record.tenant_id, config, key: key_scope })
}

/// The tenant's learned router, stored in KV under its `model_key`. A
/// missing or broken model makes the tenant unavailable (503) rather than
/// routed by something it did not ask for.
async fn load_model(kv: &worker::kv::KvStore, tenant: &str, key: &str) -> Result<LinearRouter, ApiError> {
    let bytes = kv.get(key).bytes().await.map_err(|e| config_down(tenant, e))?.ok_or_else(|| {
        console_error!("tollgate: tenant `{tenant}` names model `{key}`, which is not in KV");
        ApiError::from(TenantError::InvalidConfig(format!("classifier.model_key `{key}` is not stored")))
    })?;
    LinearRouter::from_json(&bytes).map_err(|e| {
        console_error!("tollgate: tenant `{tenant}` model `{key}` is unusable: {e}");
        TenantError::InvalidConfig(format!("classifier.model_key `{key}`: {e}")).into()
    })
}

fn store_down(what: &str, err: impl std::fmt::Display) -> ApiError {
    console_error!("tollgate: KV unreachable reading a {what}: {err}");
    AuthError::StoreUnavailable.into()
}

fn config_down(tenant: &str, err: impl std::fmt::Display) -> ApiError {
    console_error!("tollgate: KV unreachable reading tenant `{tenant}`: {err}");
    TenantError::Unavailable.into()
}
