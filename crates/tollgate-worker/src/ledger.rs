//! The tenant's ledger: one Durable Object per tenant, the single writer of
//! its spend and outcomes.
//!
//! Reserve, settle, release and rollover are atomic because a Durable Object
//! handles one event at a time and the state lives in its memory: a batch is
//! applied synchronously (no await between reading and changing the state),
//! then persisted. Workers' output gate holds the reply until the write is
//! durable, so no caller ever acts on a grant that could be lost. KV holds
//! the tenant's budget *settings*; every op carries them, so the object needs
//! no config of its own and never reads KV.

use crate::settings::{Settings, now_secs};
use futures_util::future::{Either, select};
use std::cell::RefCell;
use tollgate_core::budget::alerts;
use tollgate_core::store::{self, TenantBatch, TenantOp, TenantReply, TenantState};
use worker::{
    DurableObject, Env, Fetch, Headers, Method, Request, RequestInit, Response, Result, State, console_error,
    console_log, durable_object, js_sys, wasm_bindgen::JsValue,
};

/// The Durable Object binding in `wrangler.toml`.
pub const LEDGER_BINDING: &str = "TENANT_LEDGER";

#[durable_object]
pub struct TenantLedger {
    state: State,
    loaded: RefCell<Option<TenantState>>,
}

impl std::fmt::Debug for TenantLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLedger").field("loaded", &self.loaded.borrow().is_some()).finish_non_exhaustive()
    }
}

impl DurableObject for TenantLedger {
    fn new(state: State, _env: Env) -> Self {
        TenantLedger { state, loaded: RefCell::new(None) }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let batch: TenantBatch = match serde_json::from_slice(&req.bytes().await?) {
            Ok(b) => b,
            Err(e) => return Response::error(format!("malformed ledger batch: {e}"), 400),
        };
        let storage = self.state.storage();
        if self.loaded.borrow().is_none() {
            // Storage reads close the input gate, so no other event runs
            // between this read and the state being installed.
            // One storage call per 128 keys (the most one `get` takes),
            // not one per key: a tenant has about a hundred.
            let mut stored = std::collections::HashMap::new();
            for keys in TenantState::stored_keys().chunks(128) {
                let found = storage.get_multiple(keys.to_vec()).await?;
                for key in keys {
                    if let Some(value) = found.get(&JsValue::from_str(key)).as_string() {
                        stored.insert(key.clone(), value);
                    }
                }
            }
            let (state, unreadable) = TenantState::from_stored(|k| stored.get(k).cloned());
            if !unreadable.is_empty() {
                console_error!("tollgate: stored ledger keys unreadable, started empty: {unreadable:?}");
            }
            let mut slot = self.loaded.borrow_mut();
            if slot.is_none() {
                *slot = Some(state);
            }
        }
        // Apply and serialise with no await in between: this is the atomic step.
        let now = now_secs();
        let (replies, writes, alerts) = {
            let mut slot = self.loaded.borrow_mut();
            let Some(state) = slot.as_mut() else {
                return Response::error("ledger state missing", 500);
            };
            let (replies, writes) = state.apply(&batch.ops, now)?;
            (replies, writes, state.budget.take_alerts())
        };
        // One put_multiple: the keys change together or not at all. The
        // output gate holds the reply until the write is durable, so no
        // caller acts on a grant that could be lost.
        if !writes.is_empty() {
            let object = js_sys::Object::new();
            for (key, json) in writes {
                js_sys::Reflect::set(&object, &JsValue::from_str(&key), &JsValue::from_str(&json))?;
            }
            if let Err(e) = storage.put_multiple_raw(object).await {
                // Memory is now ahead of storage: drop it, so the next event
                // reloads what is durable instead of building on a lost write.
                self.loaded.replace(None);
                return Err(e);
            }
        }
        // Persisted: now the alerts this batch found go out, each once.
        if let Some(settings) = store::alert_settings(&batch.ops) {
            for alert in &alerts {
                console_log!("{}", store::alert_log_line(alert));
                if let Some(call) = alerts::webhook(settings, alert, now) {
                    self.state.wait_until(post_webhook(call));
                }
            }
        }
        Response::from_json(&replies)
    }
}

/// POST a signed alert; a failure is logged, not retried (the alert is in
/// the log line already).
async fn post_webhook(call: alerts::WebhookCall) {
    let send = async {
        let headers = Headers::new();
        for (name, value) in &call.headers {
            headers.set(name, value)?;
        }
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_headers(headers)
            .with_body(Some(JsValue::from(js_sys::Uint8Array::from(call.body.as_slice()))));
        let response = Fetch::Request(Request::new_with_init(&call.url, &init)?).send().await?;
        Ok::<u16, worker::Error>(response.status_code())
    };
    match send.await {
        Ok(status) if (200..300).contains(&status) => {}
        Ok(status) => console_error!("tollgate: alert webhook {} answered {status}", call.url),
        Err(e) => console_error!("tollgate: alert webhook {} failed: {e}", call.url),
    }
}

/// Apply `ops` in the tenant's ledger. `Err(())` when it cannot be reached
/// in time; the caller turns that into the tenant's fail-open or fail-closed
/// behaviour.
pub async fn call(
    env: &Env,
    tenant_id: &str,
    ops: &[TenantOp],
    settings: &Settings,
) -> std::result::Result<Vec<TenantReply>, ()> {
    let request = async {
        if settings.ledger_delay_ms > 0 {
            // A simulated round trip to a far-away object (measurements only).
            crate::timer::Timer::after_ms(settings.ledger_delay_ms).await;
        }
        let stub = env.durable_object(LEDGER_BINDING)?.id_from_name(tenant_id)?.get_stub()?;
        let body = serde_json::to_string(&TenantBatch { ops: ops.to_vec() })?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_body(Some(JsValue::from_str(&body)));
        let req = Request::new_with_init("https://tenant-ledger/batch", &init)?;
        let mut resp = stub.fetch_with_request(req).await?;
        if resp.status_code() != 200 {
            return Err(worker::Error::RustError(format!(
                "ledger answered {}: {}",
                resp.status_code(),
                resp.text().await?
            )));
        }
        resp.json::<Vec<TenantReply>>().await
    };
    let timeout = crate::timer::Timer::after_ms(settings.ledger_timeout_ms);
    match select(Box::pin(request), timeout).await {
        Either::Left((Ok(replies), _)) if replies.len() == ops.len() => Ok(replies),
        Either::Left((Ok(_), _)) => {
            console_error!("tollgate: ledger for `{tenant_id}` answered the wrong number of replies");
            Err(())
        }
        Either::Left((Err(e), _)) => {
            console_error!("tollgate: ledger for `{tenant_id}` unreachable: {e}");
            Err(())
        }
        Either::Right(_) => {
            console_error!("tollgate: ledger for `{tenant_id}` timed out after {} ms", settings.ledger_timeout_ms);
            Err(())
        }
    }
}
