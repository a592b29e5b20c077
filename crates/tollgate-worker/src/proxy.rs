//! `POST /v1/chat/completions` and `POST /v1/messages`: drive the core's
//! [`Plan`] through cache, ledger and provider.
//!
//! Once the request is parsed, everything that touches the budget runs inside
//! `ctx.wait_until`, and the handler only waits for the response to be handed
//! over. If the client goes away, the runtime stops reading the response but
//! the `wait_until` task goes on, so the hold is settled or released rather
//! than left to expire. Mid-stream, a disconnect cancels the client's body,
//! which sets a flag the driver reads within `timer::WATCH_TICK_MS`;
//! workerd does not signal a disconnect before response headers, and the call
//! then completes and is settled.
//!
//! The driver is only ever woken by its own I/O and timers, never directly
//! by a runtime callback: see `timer` for why (a task polled from another
//! request's context, or from none, does its I/O there, and panics or hangs).

use crate::http::{self, error_response, header_pairs, with_headers};
use crate::settings::{Settings, now_secs, random_bytes};
use crate::timer::{Timer, watch};
use crate::{cache_store, client_stream, ledger, tenants};
use futures_channel::oneshot;
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use std::cell::RefCell;
use std::rc::Rc;
use tollgate_core::budget::LedgerOp;
use tollgate_core::cache::Doorkeeper;
use tollgate_core::cooldown::Cooldowns;
use tollgate_core::engine::{Finish, Inbound, ReserveOutcome, Upstream, request_id};
use tollgate_core::error::UpstreamError;
use tollgate_core::store::{self, TenantOp};
use tollgate_core::{ApiError, ApiFormat, Next, Plan, TenantConfig, upstream};
use worker::wasm_bindgen::JsValue;
use worker::{
    AbortController, ByteStream, Context, Env, Fetch, Headers, Method, Request, RequestInit, Response, Result,
    console_error, js_sys,
};

/// Keys the doorkeeper remembers per isolate (about 120 KB of bits).
const DOORKEEPER_CAPACITY: usize = 100_000;

thread_local! {
    // Admission filter: an answer is cached the second time its key is seen.
    // Per isolate; a new isolate starts empty and admits from the second sighting it sees.
    static DOORKEEPER: RefCell<Option<Doorkeeper>> = RefCell::new(Doorkeeper::new(DOORKEEPER_CAPACITY, random_bytes()));
    // Models that keep failing, per isolate: the core decides, from what
    // each attempt ended with, which to pass over for a while.
    static COOLDOWNS: RefCell<Cooldowns> = RefCell::new(Cooldowns::default());
}

/// Tell the isolate's cooldown table how an attempt on `up` ended.
fn attempt_ended(plan: &Plan, up: &Upstream, status: Option<u16>, retry_after: Option<&str>) {
    let update = plan.attempt_ended(up, status, retry_after, now_secs());
    COOLDOWNS.with(|c| c.borrow_mut().apply(&update));
}

/// Everything the request's `wait_until` task owns.
struct Job {
    plan: Plan,
    tenant_id: String,
    config: Rc<TenantConfig>,
    env: Env,
    ctx: Rc<Context>,
    settings: Settings,
    client_headers: Vec<(String, String)>,
}

pub async fn handle(mut req: Request, api: ApiFormat, env: Env, ctx: Context, settings: Settings) -> Result<Response> {
    // Drawn first so that even a request refused before routing (401, 413)
    // carries the id the plan will use.
    let entropy: [u8; 16] = random_bytes();
    let id_header = [("x-tollgate-request-id".to_owned(), request_id(entropy))];
    let tenant = match tenants::authenticate(&req, &env, &settings).await {
        Ok(t) => t,
        Err(e) => return error_response(&e, &id_header),
    };
    let body = match http::read_body(&mut req, tenant.config.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return error_response(&e, &id_header),
    };
    let client_headers = header_pairs(req.headers());
    let cache_control = client_headers.iter().find(|(n, _)| n == "cache-control").map(|(_, v)| v.as_str());
    let now = now_secs();
    let inbound = Inbound { tenant_id: &tenant.id, api, body: &body, cache_control, now, entropy };
    let mut plan = match Plan::new(&tenant.config, &inbound) {
        Ok(p) => p,
        Err(refused) => return http::local(refused.response()),
    };
    COOLDOWNS.with(|c| plan.consult_cooldowns(&c.borrow(), now));
    drop(body);

    let (reply_tx, reply_rx) = oneshot::channel::<Response>();
    let ctx = Rc::new(ctx);
    let job =
        Job { plan, tenant_id: tenant.id, config: tenant.config, env, ctx: ctx.clone(), settings, client_headers };
    ctx.wait_until(async move {
        drive(job, reply_tx).await;
    });
    match reply_rx.await {
        Ok(response) => Ok(response),
        Err(_) => error_response(
            &ApiError::new(503, "api_error", "internal_unavailable", "the request was dropped before it was answered")
                .with_retry_after(1),
            &[],
        ),
    }
}

/// Walk the plan to its end: reply to the client through `reply`, then
/// settle, record and fill the cache.
async fn drive(mut job: Job, mut reply: oneshot::Sender<Response>) {
    let mut next = job.plan.start();
    loop {
        next = match next {
            Next::Respond(local, settlement) => {
                let ops = store::closing_ops(&job.plan, &job.config.budgets, settlement.as_ref(), None);
                send(reply, http::local(local));
                if !ops.is_empty() {
                    ledger::call_until_applied(job.env.clone(), job.tenant_id.clone(), ops, job.settings).await;
                }
                return;
            }
            Next::LookupCache(key) => {
                let found = cache_store::lookup(&job.env, &key, job.plan.api, now_secs()).await;
                let use_doorkeeper = job.config.cache.doorkeeper;
                DOORKEEPER.with(|d| {
                    let mut d = d.borrow_mut();
                    job.plan.on_cache(found, if use_doorkeeper { d.as_mut() } else { None })
                })
            }
            Next::CheckBudget => {
                let op = TenantOp::Budget(LedgerOp::Check { budgets: job.config.budgets.clone() });
                let reply =
                    ledger::call(&job.env, &job.tenant_id, &[op], &job.settings).await.ok().and_then(|mut r| r.pop());
                job.plan.on_budget_check(store::budget_check(reply))
            }
            Next::Reserve(request) => {
                let hold_id = request.id.clone();
                let op = TenantOp::Budget(LedgerOp::Reserve { budgets: job.config.budgets.clone(), request });
                let reply =
                    ledger::call(&job.env, &job.tenant_id, &[op], &job.settings).await.ok().and_then(|mut r| r.pop());
                let outcome = store::reserve_outcome(reply);
                if outcome == ReserveOutcome::StoreUnavailable {
                    // The call may have landed after we stopped waiting; release
                    // by id so that hold (or the reserve, if it arrives later) holds nothing.
                    let release =
                        vec![TenantOp::Budget(LedgerOp::Release { budgets: job.config.budgets.clone(), id: hold_id })];
                    job.ctx.wait_until(ledger::call_until_applied(
                        job.env.clone(),
                        job.tenant_id.clone(),
                        release,
                        job.settings,
                    ));
                }
                job.plan.on_reserve(outcome)
            }
            Next::Escalate(settlement) => {
                // Settle the attempt that ended before reserving for the next
                // tier, so that reservation sees what the first one cost.
                if let Some(s) = settlement {
                    let ops = vec![TenantOp::Budget(s.to_op(&job.config.budgets))];
                    ledger::call_until_applied(job.env.clone(), job.tenant_id.clone(), ops, job.settings).await;
                }
                job.plan.escalate()
            }
            Next::Forward(up) => match call_provider(&up, &job).await {
                Ok(CallResult::Answered(resp)) => {
                    let status = resp.status_code();
                    match answer(&mut job, &up, resp, reply).await {
                        Answered::Done => {
                            attempt_ended(&job.plan, &up, Some(status), None);
                            return;
                        }
                        Answered::Failed(back) => {
                            // Nothing reached the client yet: try the next model.
                            attempt_ended(&job.plan, &up, None, None);
                            reply = back;
                            job.plan.on_upstream_failure(None)
                        }
                        Answered::Reviewed(back, step) => {
                            // The answer was held back (escalation): nothing reached the client.
                            attempt_ended(&job.plan, &up, Some(status), None);
                            reply = back;
                            step
                        }
                    }
                }
                Ok(CallResult::Failed(status, retry_after)) => {
                    attempt_ended(&job.plan, &up, status, retry_after.as_deref());
                    job.plan.on_upstream_failure(status)
                }
                Err(err) => job.plan.abandon(&err),
            },
        };
    }
}

fn send(reply: oneshot::Sender<Response>, response: Result<Response>) {
    let response = response.or_else(|e| {
        console_error!("tollgate: could not build the response: {e}");
        error_response(
            &ApiError::new(502, "api_error", "upstream_bad_response", "the provider's answer could not be relayed"),
            &[],
        )
    });
    if let Ok(r) = response {
        // Err only when the client has gone; the settlement still follows.
        let _ = reply.send(r);
    }
}

enum CallResult {
    Answered(Response),
    /// A retryable status, or None for a timeout or connection failure.
    /// With the provider's `retry-after`, if it sent one.
    Failed(Option<u16>, Option<String>),
}

/// Send the rewritten request to the provider and wait for its headers.
async fn call_provider(up: &Upstream, job: &Job) -> std::result::Result<CallResult, ApiError> {
    let provider = up.target.provider;
    let base = job.env.var(upstream::base_url_name(provider)).map(|v| v.to_string()).unwrap_or_default();
    let key = job.env.var(upstream::secret_name(provider)).map(|v| v.to_string()).unwrap_or_default();
    if base.is_empty() || key.is_empty() {
        return Err(UpstreamError::NotConfigured { provider: provider.to_string() }.into());
    }
    let url = upstream::endpoint_url(&base, up.api);
    let build = || -> Result<Request> {
        let headers = Headers::new();
        for (name, value) in upstream::provider_headers(provider, &key, &job.client_headers) {
            headers.set(&name, &value)?;
        }
        let body = js_sys::Uint8Array::from(up.body.as_slice());
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_headers(headers).with_body(Some(JsValue::from(body)));
        Request::new_with_init(&url, &init)
    };
    let request = build().map_err(|e| {
        ApiError::from(UpstreamError::BadResponse { detail: format!("could not build the provider request: {e}") })
    })?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(request);
    let sent = Box::pin(fetch.send_with_signal(&signal));
    let timeout = Timer::after_ms(job.settings.upstream_timeout_ms);
    match select(sent, timeout).await {
        Either::Left((Ok(resp), _)) => {
            let status = resp.status_code();
            if Plan::is_retryable(status) || !Plan::can_pass_through(status) {
                // Dropping the response cancels its body; nothing of it reaches the client.
                console_error!("tollgate: {} answered HTTP {status}; trying the next model", up.target);
                let retry_after = resp.headers().get("retry-after").ok().flatten();
                Ok(CallResult::Failed(Some(status), retry_after))
            } else {
                Ok(CallResult::Answered(resp))
            }
        }
        Either::Left((Err(e), _)) => {
            console_error!("tollgate: {} unreachable: {e}", up.target);
            Ok(CallResult::Failed(None, None))
        }
        Either::Right(_) => {
            controller.abort();
            Ok(CallResult::Failed(None, None))
        }
    }
}

enum Answered {
    Done,
    /// A streamed answer failed before its first byte reached the client.
    Failed(oneshot::Sender<Response>),
    /// The core held a complete answer back (to escalate it): the next step.
    Reviewed(oneshot::Sender<Response>, Next),
}

/// Pass the provider's answer to the client, then settle and cache.
async fn answer(job: &mut Job, up: &Upstream, mut resp: Response, reply: oneshot::Sender<Response>) -> Answered {
    let status = resp.status_code();
    let content_type = resp.headers().get("content-type").ok().flatten().unwrap_or_default();
    let streamed = content_type.contains("text/event-stream") && (200..300).contains(&status);
    if streamed {
        return answer_stream(job, up, resp, reply, content_type).await;
    }
    // The handler is still waiting for this answer, so no client has gone
    // yet as far as this task can tell: the read is bounded by the deadline.
    let deadline = Timer::after_ms(job.settings.upstream_timeout_ms);
    let bytes = match select(Box::pin(resp.bytes()), deadline).await {
        Either::Left((Ok(b), _)) => b,
        Either::Left((Err(_), _)) | Either::Right(_) => return Answered::Failed(reply),
    };
    let (summary, assembled) = job.plan.read_json_response(&bytes);
    if let Some(step) = job.plan.review(status, &summary, &bytes, &job.config) {
        return Answered::Reviewed(reply, step);
    }
    let fin = job.plan.finish(status, &summary, assembled, &job.config, now_secs());
    let mut headers = vec![(
        "content-type".to_owned(),
        if content_type.is_empty() { "application/json".into() } else { content_type },
    )];
    headers.extend(job.plan.response_headers());
    send(reply, Response::from_bytes(bytes).map(|r| r.with_status(status)).and_then(|r| with_headers(r, &headers)));
    after_answer(job, fin).await;
    Answered::Done
}

async fn answer_stream(
    job: &mut Job,
    up: &Upstream,
    mut resp: Response,
    reply: oneshot::Sender<Response>,
    content_type: String,
) -> Answered {
    let status = resp.status_code();
    let mut observer = job.plan.stream_observer(up);
    let Ok(mut body) = resp.stream() else { return Answered::Failed(reply) };
    // Hold the response until the first chunk: until a byte reaches the
    // client, a failed stream can still fall back to the next model.
    let first = match next_chunk(&mut body, job.settings.upstream_timeout_ms).await {
        Chunk::Data(c) => c,
        Chunk::End | Chunk::Broken => return Answered::Failed(reply),
    };
    let mut first_out = Vec::new();
    observer.feed(&first, &mut first_out);

    let (client, client_body) = client_stream::channel(job.settings.client_stall_timeout_ms);
    let mut headers =
        vec![("content-type".to_owned(), content_type), ("cache-control".to_owned(), "no-cache".to_owned())];
    headers.extend(job.plan.response_headers());
    send(
        reply,
        Response::from_stream(client_body).map(|r| r.with_status(status)).and_then(|r| with_headers(r, &headers)),
    );

    let mut client_gone = !first_out.is_empty() && !client.send(Ok(first_out)).await;
    let mut broken = false;
    while !client_gone {
        // `watch` gives up once the client has gone, read at each provider
        // chunk and at least every WATCH_TICK_MS, so a silent provider does
        // not keep a departed client's hold out until the idle timeout.
        let Some(chunk) = watch(next_chunk(&mut body, job.settings.stream_idle_timeout_ms), client.gone()).await else {
            client_gone = true;
            break;
        };
        match chunk {
            Chunk::Data(chunk) => {
                let mut out = Vec::new();
                observer.feed(&chunk, &mut out);
                client_gone = !out.is_empty() && !client.send(Ok(out)).await;
            }
            Chunk::End => break,
            Chunk::Broken => {
                broken = true;
                break;
            }
        }
    }
    // On a client abort, dropping `body` cancels the provider request, so
    // generation (and its cost) stops; the settlement charges what was seen.
    drop(body);
    let mut tail = Vec::new();
    let outcome = observer.finish(&mut tail);
    if !client_gone {
        if broken {
            // An error event the SDKs raise on, then a transport error: a
            // proxy in front (wrangler's, say) may turn the latter into a
            // clean end, and a client must never take a cut answer for a whole one.
            let message = format!("the provider's stream broke off ({}); the answer is incomplete", up.target);
            client.send(Ok(observer.broken_stream_event(&message))).await;
            client.send(Err(worker::Error::RustError("the provider's stream broke".into()))).await;
        } else if !tail.is_empty() {
            client.send(Ok(tail)).await;
        }
    }
    drop(client);
    let fin = job.plan.finish(status, &outcome.summary, outcome.assembled, &job.config, now_secs());
    after_answer(job, fin).await;
    Answered::Done
}

enum Chunk {
    Data(Vec<u8>),
    End,
    Broken,
}

async fn next_chunk(body: &mut ByteStream, timeout_ms: u64) -> Chunk {
    match select(body.next(), Timer::after_ms(timeout_ms)).await {
        Either::Left((Some(Ok(c)), _)) => Chunk::Data(c),
        Either::Left((None, _)) => Chunk::End,
        Either::Left((Some(Err(_)), _)) | Either::Right(_) => Chunk::Broken,
    }
}

/// Settle, record the outcome, and fill the cache.
async fn after_answer(job: &mut Job, fin: Finish) {
    // Already inside the request's waitUntil task: await the fill here, and
    // before the outcome record, so a recorded request's cache entry exists.
    if let Some(fill) = fin.cache_fill.clone() {
        cache_store::fill(job.env.clone(), fill).await;
    }
    let ops = store::closing_ops(&job.plan, &job.config.budgets, fin.settlement.as_ref(), Some(&fin));
    ledger::call_until_applied(job.env.clone(), job.tenant_id.clone(), ops, job.settings).await;
}
