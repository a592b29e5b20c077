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
use crate::provider::{self, Chunk};
use crate::settings::{Settings, now_secs, random_bytes};
use crate::timer::{Timer, watch};
use crate::{cache_store, client_stream, desk, tenants};
use futures_channel::oneshot;
use futures_util::future::{Either, select};
use std::cell::RefCell;
use std::rc::Rc;
use tollgate_core::cache::Doorkeeper;
use tollgate_core::cooldown::Cooldowns;
use tollgate_core::engine::{AnswerStart, Closing, Duty, Inbound, JsonAnswer, Upstream, request_id};
use tollgate_core::store::TenantOp;
use tollgate_core::{ApiError, ApiFormat, Next, Plan};
use worker::{Context, Env, Request, Response, Result, console_error};

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

/// Everything the request's `wait_until` task owns.
struct Job {
    plan: Plan,
    tenant_id: String,
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
    let (user_header, tags_header) = tollgate_core::engine::inbound_headers(&tenant.config, &client_headers);
    let inbound = Inbound {
        tenant_id: &tenant.id,
        api,
        body: &body,
        cache_control,
        now,
        entropy,
        key: Some(&tenant.key),
        user_header,
        tags_header,
    };
    let mut plan = match Plan::new(&tenant.config, &inbound) {
        Ok(p) => p,
        Err(refused) => return http::local(refused.response()),
    };
    COOLDOWNS.with(|c| plan.consult_cooldowns(&c.borrow(), now));
    drop(body);
    desk::request_started(&tenant.id);

    let (reply_tx, reply_rx) = oneshot::channel::<Response>();
    let ctx = Rc::new(ctx);
    let job = Job { plan, tenant_id: tenant.id, env, ctx: ctx.clone(), settings, client_headers };
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
/// close the request (cache fill, settlement, outcome). Every branch is a
/// step of the core's; the order is the core's reference driver's
/// (`tollgate_core::engine::drive`).
async fn drive(mut job: Job, mut reply: oneshot::Sender<Response>) {
    let mut next = job.plan.start();
    loop {
        job.do_duties();
        next = match next {
            Next::Respond(local, closing) => {
                send(reply, http::local(local));
                job.close(closing).await;
                return;
            }
            Next::LookupCache(key) => {
                let found = cache_store::lookup(&job.env, &key, job.plan.api, now_secs()).await;
                DOORKEEPER.with(|d| job.plan.on_cache(found, d.borrow_mut().as_mut()))
            }
            Next::CheckBudget(op) => {
                let answer = desk::call(&job.env, &job.tenant_id, vec![op], &job.settings).await;
                job.plan.on_budget_reply(answer.ok().and_then(|mut r| r.pop()))
            }
            Next::Reserve(op) => {
                let answer = desk::call(&job.env, &job.tenant_id, vec![op], &job.settings).await;
                job.plan.on_reserve_reply(answer.ok().and_then(|mut r| r.pop()))
            }
            Next::Escalate(ops) => {
                // Applied before reserving for the next tier, so that
                // reservation sees what the first attempt cost.
                job.apply(ops).await;
                job.plan.escalate()
            }
            Next::Forward(up) => match provider::call(&up, &job.env, &job.client_headers, &job.settings).await {
                Err(err) => job.plan.abandon(&err),
                Ok(None) => job.plan.on_no_answer(None, None, now_secs()),
                Ok(Some(resp)) => match answer(&mut job, &up, resp, reply).await {
                    Answered::Done => return,
                    Answered::Next(back, step) => {
                        // Nothing reached the client: the plan's next step.
                        reply = back;
                        *step
                    }
                },
            },
        };
    }
}

impl Job {
    /// What waits for nothing: a lost reserve's release (in the background)
    /// and the isolate's cooldown table.
    fn do_duties(&mut self) {
        while let Some(duty) = self.plan.poll_duty() {
            match duty {
                Duty::Detached(ops) => {
                    let call = desk::call_until_applied(self.env.clone(), self.tenant_id.clone(), ops, self.settings);
                    self.ctx.wait_until(call);
                }
                Duty::Cooldown(update) => {
                    COOLDOWNS.with(|c| c.borrow_mut().apply(&update));
                }
            }
        }
    }

    async fn apply(&self, ops: Vec<TenantOp>) {
        if !ops.is_empty() {
            desk::call_until_applied(self.env.clone(), self.tenant_id.clone(), ops, self.settings).await;
        }
    }

    /// Already inside the request's waitUntil task: await the fill here, and
    /// before the outcome record, so a recorded request's cache entry exists.
    async fn close(&mut self, closing: Closing) {
        self.do_duties();
        desk::request_ended(&self.tenant_id);
        if let Some(fill) = closing.cache_fill {
            cache_store::fill(self.env.clone(), fill).await;
        }
        self.apply(closing.ops).await;
        // Still inside this request's waitUntil: flush the isolate's desk
        // (waiting spend and records, lease renewals) if nobody else is.
        desk::flush_in_background(self.env.clone(), self.settings, &self.tenant_id).await;
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
        // Err only when the client has gone; the closing still follows.
        let _ = reply.send(r);
    }
}

enum Answered {
    /// The answer went to the client and the request closed.
    Done,
    /// Nothing reached the client (a failed attempt, or an answer held back
    /// to escalate): the plan's next step.
    Next(oneshot::Sender<Response>, Box<Next>),
}

/// Take the provider's answer as the plan says: drop it, relay it as a
/// stream, or read it whole and relay (or replace) it.
async fn answer(job: &mut Job, up: &Upstream, mut resp: Response, reply: oneshot::Sender<Response>) -> Answered {
    let status = resp.status_code();
    let content_type = resp.headers().get("content-type").ok().flatten().unwrap_or_default();
    let retry_after = resp.headers().get("retry-after").ok().flatten();
    match job.plan.on_answer_head(Some(status), &content_type, retry_after.as_deref(), now_secs()) {
        AnswerStart::Failed(step) => {
            // Dropping the response cancels its body; nothing of it reaches the client.
            console_error!("tollgate: {} answered HTTP {status}; the plan goes on", up.target);
            Answered::Next(reply, step)
        }
        AnswerStart::Stream { status, headers } => answer_stream(job, up, resp, reply, status, headers).await,
        AnswerStart::ReadBody => {
            // The handler is still waiting for this answer, so no client has
            // gone yet as far as this task can tell: the read is bounded by the deadline.
            let deadline = Timer::after_ms(job.settings.upstream_timeout_ms);
            let bytes = match select(Box::pin(resp.bytes()), deadline).await {
                Either::Left((Ok(b), _)) => b,
                Either::Left((Err(_), _)) | Either::Right(_) => {
                    return Answered::Next(reply, Box::new(job.plan.on_answer_lost(now_secs())));
                }
            };
            match job.plan.on_json_answer(Some(&bytes), now_secs()) {
                JsonAnswer::Relay(relay) => {
                    let response =
                        Response::from_bytes(relay.body.unwrap_or(bytes)).map(|r| r.with_status(relay.status));
                    send(reply, response.and_then(|r| with_headers(r, &relay.headers)));
                    job.close(relay.closing).await;
                    Answered::Done
                }
                JsonAnswer::Replace(step) => Answered::Next(reply, Box::new(step)),
            }
        }
    }
}

async fn answer_stream(
    job: &mut Job,
    up: &Upstream,
    mut resp: Response,
    reply: oneshot::Sender<Response>,
    status: u16,
    headers: Vec<(String, String)>,
) -> Answered {
    let Ok(mut body) = resp.stream() else {
        return Answered::Next(reply, Box::new(job.plan.on_answer_lost(now_secs())));
    };
    // Hold the response until the first chunk: until a byte reaches the
    // client, a failed stream can still fall back to the next model.
    let first = match provider::next_chunk(&mut body, job.settings.upstream_timeout_ms).await {
        Chunk::Data(c) => c,
        Chunk::End | Chunk::Broken => return Answered::Next(reply, Box::new(job.plan.on_answer_lost(now_secs()))),
    };
    let mut first_out = Vec::new();
    job.plan.on_stream_chunk(&first, &mut first_out);
    job.do_duties();

    let (client, client_body) = client_stream::channel(job.settings.client_stall_timeout_ms);
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
        let idle_ms = job.settings.stream_idle_timeout_ms;
        let Some(chunk) = watch(provider::next_chunk(&mut body, idle_ms), client.gone()).await else {
            client_gone = true;
            break;
        };
        match chunk {
            Chunk::Data(chunk) => {
                let mut out = Vec::new();
                job.plan.on_stream_chunk(&chunk, &mut out);
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
    // generation (and its cost) stops; the closing charges what was seen.
    drop(body);
    let mut tail = Vec::new();
    let closing = job.plan.on_stream_end(&mut tail, now_secs());
    if !client_gone {
        if broken {
            // An error event the SDKs raise on, then a transport error: a
            // proxy in front (wrangler's, say) may turn the latter into a
            // clean end, and a client must never take a cut answer for a whole one.
            let message = format!("the provider's stream broke off ({}); the answer is incomplete", up.target);
            client.send(Ok(job.plan.broken_stream_event(&message))).await;
            client.send(Err(worker::Error::RustError("the provider's stream broke".into()))).await;
        } else if !tail.is_empty() {
            client.send(Ok(tail)).await;
        }
    }
    drop(client);
    job.close(closing).await;
    Answered::Done
}
