//! The isolate's lease desk ([`tollgate_core::desk`]) in front of the
//! tenants' Durable Objects.
//!
//! Every batch of ledger ops goes through [`call`] (or
//! [`call_until_applied`]): the desk answers in memory what its lease can
//! (a reserve, a settle, an outcome record), and what it cannot goes to the
//! Durable Object with the desk's own reports and lease requests.
//!
//! What the desk has due in the background (spend and records waiting,
//! renewals, returns) is sent by [`flush_in_background`], which a request
//! runs in its own `ctx.waitUntil` after it closed. A Worker has no timer
//! outside a request (`setTimeout` throws without a request's I/O context,
//! see `timer`), so the isolate's flusher is always some request's task:
//! the first request to close when none is flushing becomes it, and keeps
//! flushing (its own timers and Durable Object calls, in its own context)
//! until nothing is leased or waiting, or for at most
//! [`FLUSHER_LIFETIME_MS`], within waitUntil's 30 s. An isolate that is
//! evicted with a lease loses it: the Durable Object charges it in full
//! when it expires (docs/config.md "Leases").

use crate::ledger;
use crate::settings::{Settings, now_ms, now_secs, random_bytes};
use crate::timer::Timer;
use std::cell::{Cell, RefCell};
use tollgate_core::desk::{LeaseDesk, Routed};
use tollgate_core::store::{TenantOp, TenantReply};
use worker::{Env, console_error};

/// How long one request's task keeps flushing for the isolate.
const FLUSHER_LIFETIME_MS: f64 = 20_000.0;
/// How often the flusher asks the desk what is due.
const FLUSH_POLL_MS: u64 = 250;
/// A flusher not seen for this long is gone (its request's task was
/// cancelled): the next request to close takes over.
const FLUSHER_STALE_MS: f64 = 2_000.0;
/// Background batches in a row a tenant's Durable Object may fail before
/// the flusher gives up on it until one of its requests closes (what waits
/// stays in the desk and goes with its next batch), as a batch sent on its
/// own (`call_until_applied`) gives up after three attempts.
const FLUSH_ATTEMPTS: u32 = 3;

thread_local! {
    static DESK: RefCell<LeaseDesk> = RefCell::new(LeaseDesk::new(&instance_id()));
    /// Background batches in a row each tenant's Durable Object failed
    /// (tenants absent: none); at [`FLUSH_ATTEMPTS`] the flusher stops
    /// sending that tenant's until one of its requests closes.
    static FAILED_BATCHES: RefCell<Vec<(String, u32)>> = const { RefCell::new(Vec::new()) };
    /// When the isolate's flusher last looked (0: none has).
    static FLUSHER_SEEN_MS: Cell<f64> = const { Cell::new(0.0) };
    /// Batches sent to a Durable Object from this isolate, waited for by a
    /// request or an endpoint, and sent in the background (closes, the
    /// desk's flushes), and requests closed: `GET /healthz` reports them.
    static LEDGER_CALLS_WAITED: Cell<u64> = const { Cell::new(0) };
    static LEDGER_CALLS: Cell<u64> = const { Cell::new(0) };
    static REQUESTS_CLOSED: Cell<u64> = const { Cell::new(0) };
}

/// The isolate's id for its leases: random per isolate, so two isolates
/// (or one evicted and restarted) never share a lease.
fn instance_id() -> String {
    random_bytes::<8>().iter().map(|b| format!("{b:02x}")).collect()
}

/// A request of the tenant has a plan (see [`LeaseDesk::request_started`]).
pub fn request_started(tenant_id: &str) {
    DESK.with(|d| d.borrow_mut().request_started(tenant_id));
}

/// The request is closing (once, before its closing ops).
pub fn request_ended(tenant_id: &str) {
    DESK.with(|d| d.borrow_mut().request_ended(tenant_id));
}

/// Apply `ops` in the tenant's ledger, through the desk. `Err(())` when the
/// Durable Object was needed and could not be reached in time.
pub async fn call(
    env: &Env,
    tenant_id: &str,
    ops: Vec<TenantOp>,
    settings: &Settings,
) -> std::result::Result<Vec<TenantReply>, ()> {
    let routed = DESK.with(|d| d.borrow_mut().route(tenant_id, ops, now_secs()));
    match routed {
        Routed::Answered(replies) => Ok(replies),
        Routed::Send { ops, ticket } => {
            LEDGER_CALLS_WAITED.set(LEDGER_CALLS_WAITED.get() + 1);
            let replies = ledger::call(env, tenant_id, &ops, settings).await.ok();
            DESK.with(|d| d.borrow_mut().on_replies(ticket, replies, now_secs())).ok_or(())
        }
    }
}

/// Settlements and outcome records must not be lost to a transient failure:
/// what the desk sends is retried a few times. Safe to repeat: the ledger
/// treats a second settle, release or report of the same request, and a
/// second record of it, as no-ops.
pub async fn call_until_applied(env: Env, tenant_id: String, ops: Vec<TenantOp>, settings: Settings) {
    let routed = DESK.with(|d| d.borrow_mut().route(&tenant_id, ops, now_secs()));
    let Routed::Send { ops, ticket } = routed else { return };
    let mut replies = None;
    for attempt in 0..3u64 {
        LEDGER_CALLS.set(LEDGER_CALLS.get() + 1);
        if let Ok(r) = ledger::call(&env, &tenant_id, &ops, &settings).await {
            replies = Some(r);
            break;
        }
        Timer::after_ms(100 * (attempt + 1)).await;
    }
    if replies.is_none() {
        // The hold, if any, expires by itself (holds carry an expiry), and
        // what the desk carried goes again with its next batch.
        console_error!("tollgate: gave up settling for `{tenant_id}` after 3 attempts; the hold will expire");
    }
    let _ = DESK.with(|d| d.borrow_mut().on_replies(ticket, replies, now_secs()));
}

/// A request has closed (inside its waitUntil task): become the isolate's
/// flusher unless another request's task is one.
pub async fn flush_in_background(env: Env, settings: Settings, tenant_id: &str) {
    REQUESTS_CLOSED.set(REQUESTS_CLOSED.get() + 1);
    // A request of the tenant closed: its batches are tried afresh.
    FAILED_BATCHES.with(|f| f.borrow_mut().retain(|(t, _)| t != tenant_id));
    let started = now_ms();
    if started - FLUSHER_SEEN_MS.get() < FLUSHER_STALE_MS {
        return;
    }
    FLUSHER_SEEN_MS.set(started);
    loop {
        let due = DESK.with(|d| d.borrow_mut().due(now_secs(), false));
        for (tenant_id, ops, ticket) in due {
            if failures_of(&tenant_id) >= FLUSH_ATTEMPTS {
                // Given up on until one of its requests closes again: what
                // waits stays in the desk for then.
                let _ = DESK.with(|d| d.borrow_mut().on_replies(ticket, None, now_secs()));
                continue;
            }
            LEDGER_CALLS.set(LEDGER_CALLS.get() + 1);
            let replies = ledger::call(&env, &tenant_id, &ops, &settings).await.ok();
            let failed = replies.is_none();
            let _ = DESK.with(|d| d.borrow_mut().on_replies(ticket, replies, now_secs()));
            let failures = FAILED_BATCHES.with(|f| {
                let mut f = f.borrow_mut();
                let n = f.iter().find(|(t, _)| *t == tenant_id).map_or(0, |(_, n)| *n);
                f.retain(|(t, _)| *t != tenant_id);
                if failed {
                    f.push((tenant_id.clone(), n + 1));
                }
                if failed { n + 1 } else { 0 }
            });
            if failures == FLUSH_ATTEMPTS {
                // A lone request's hold, if any, expires by itself; a lease
                // left unreported is charged in full at its expiry.
                console_error!(
                    "tollgate: gave up settling for `{tenant_id}` after {FLUSH_ATTEMPTS} attempts; what waits goes with its next batch"
                );
            }
        }
        let now = now_ms();
        FLUSHER_SEEN_MS.set(now);
        if !DESK.with(|d| d.borrow().has_work()) {
            break;
        }
        if now - started > FLUSHER_LIFETIME_MS {
            // No request may follow to flush: hand back the leases nothing
            // holds (the next request asks again) rather than leave them to
            // expire and be charged in full.
            let last = DESK.with(|d| d.borrow_mut().due(now_secs(), true));
            for (tenant_id, ops, ticket) in last {
                LEDGER_CALLS.set(LEDGER_CALLS.get() + 1);
                let replies = ledger::call(&env, &tenant_id, &ops, &settings).await.ok();
                let _ = DESK.with(|d| d.borrow_mut().on_replies(ticket, replies, now_secs()));
            }
            break;
        }
        Timer::after_ms(FLUSH_POLL_MS).await;
    }
    // The next request to close takes over at once.
    FLUSHER_SEEN_MS.set(0.0);
}

fn failures_of(tenant_id: &str) -> u32 {
    FAILED_BATCHES.with(|f| f.borrow().iter().find(|(t, _)| t == tenant_id).map_or(0, |(_, n)| *n))
}

/// What this isolate did: Durable Object batches waited for, sent in the
/// background, and requests closed.
pub struct Counts {
    pub waited: u64,
    pub background: u64,
    pub requests_closed: u64,
}

pub fn counts() -> Counts {
    Counts { waited: LEDGER_CALLS_WAITED.get(), background: LEDGER_CALLS.get(), requests_closed: REQUESTS_CLOSED.get() }
}
