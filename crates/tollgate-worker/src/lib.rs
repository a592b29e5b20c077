//! tollgate as a Cloudflare Worker.
//!
//! A thin adapter: every decision is `tollgate-core`'s. This crate does the
//! Worker's I/O and translates to and from the core:
//! - tenant config and hashed API keys come from the `TOLLGATE_CONFIG` KV
//!   namespace ([`tenants`]), memoised in isolate memory for a few seconds;
//! - cached answers live in the `TOLLGATE_CACHE` KV namespace ([`cache_store`]);
//! - each tenant's spend lives in one [`TenantLedger`] Durable Object, the
//!   single writer for its budgets and outcomes ([`ledger`]);
//! - requests are forwarded with `fetch`, and streamed answers pass through
//!   chunk by chunk ([`proxy`]).

mod cache_store;
mod client_stream;
mod desk;
mod http;
mod ledger;
mod provider;
mod proxy;
mod settings;
mod tenants;
mod timer;

pub use ledger::TenantLedger;

use http::{error_response, json_response};
use settings::Settings;
use tollgate_core::ApiError;
use tollgate_core::endpoints::{self, Endpoint};
use tollgate_core::outcomes::{self, OutcomeOp};
use tollgate_core::store::TenantOp;
use worker::{Context, Env, Request, Response, Result, console_error, event};

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    let settings = Settings::from_env(&env);
    match route(req, env, ctx, settings).await {
        Ok(response) => Ok(response),
        Err(err) => {
            // A host failure we did not map to a specific error (a JS exception
            // from a binding, say). Never let it surface as the runtime's HTML 500.
            console_error!("tollgate: unhandled host error: {err}");
            error_response(
                &ApiError::new(
                    503,
                    "api_error",
                    "internal_unavailable",
                    "tollgate could not complete the request; retry shortly",
                )
                .with_retry_after(2),
                &[],
            )
        }
    }
}

async fn route(req: Request, env: Env, ctx: Context, settings: Settings) -> Result<Response> {
    let endpoint = match endpoints::resolve(req.method().as_ref(), &req.path()) {
        Ok(e) => e,
        Err(e) => return error_response(&e, &[]),
    };
    match endpoint {
        Endpoint::Chat(api) => proxy::handle(req, api, env, ctx, settings).await,
        Endpoint::Dashboard => {
            let (headers, body) = endpoints::dashboard();
            let mut response = Response::from_bytes(body.to_vec())?;
            for (name, value) in &headers {
                response.headers_mut().set(name, value)?;
            }
            Ok(response)
        }
        Endpoint::Health => {
            // Per isolate: how many Durable Object batches its requests
            // needed (leases make that far fewer than requests).
            let mut body = endpoints::health("cloudflare-worker");
            let counts = desk::counts();
            body["instance"] = serde_json::json!({
                "ledger_calls_waited": counts.waited,
                "ledger_calls_background": counts.background,
                "requests_closed": counts.requests_closed,
            });
            json_response(200, &body, &[])
        }
        Endpoint::Models => {
            let tenant = match tenants::authenticate(&req, &env, &settings).await {
                Ok(t) => t,
                Err(e) => return error_response(&e, &[]),
            };
            json_response(200, &endpoints::models_list(&tenant.config), &[])
        }
        Endpoint::Usage => usage(&req, &env, &settings).await,
        Endpoint::Feedback => feedback(req, &env, &settings).await,
        Endpoint::FeedbackExport => feedback_export(&req, &env, &settings).await,
    }
}

/// `GET /v1/feedback/export`: the calling tenant's recent requests that got
/// feedback, one JSON object per line (`{request_id, tier, escalated,
/// resolved, at}`), from its own ledger. No prompt text: the router keeps
/// none. `tollgate feedback labels` joins it with the tenant's request log.
async fn feedback_export(req: &Request, env: &Env, settings: &Settings) -> Result<Response> {
    let tenant = match tenants::authenticate(req, env, settings).await {
        Ok(t) => t,
        Err(e) => return error_response(&e, &[]),
    };
    let reply =
        desk::call(env, &tenant.id, endpoints::feedback_export_ops(), settings).await.ok().and_then(|mut r| r.pop());
    match endpoints::feedback_export_from_reply(reply) {
        Ok(body) => http::local(tollgate_core::engine::LocalResponse {
            status: 200,
            headers: vec![
                ("content-type".to_owned(), endpoints::NDJSON.to_owned()),
                ("cache-control".to_owned(), "no-store".to_owned()),
            ],
            body: body.into_bytes(),
        }),
        Err(e) => error_response(&e, &[]),
    }
}

/// `GET /v1/usage`: the calling tenant's budgets and cost per resolution,
/// read from its own ledger only (the tenant comes from the key, never from
/// the request).
async fn usage(req: &Request, env: &Env, settings: &Settings) -> Result<Response> {
    let tenant = match tenants::authenticate(req, env, settings).await {
        Ok(t) => t,
        Err(e) => return error_response(&e, &[]),
    };
    let url = req.url()?;
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let ops = match endpoints::usage_ops(&tenant.config, Some(&tenant.key), &path, settings::now_secs()) {
        Ok(ops) => ops,
        Err(e) => return error_response(&e, &[]),
    };
    let replies = desk::call(env, &tenant.id, ops, settings).await.ok();
    match endpoints::usage_from_replies(&tenant.config, replies, settings::now_secs()) {
        Ok(report) => json_response(200, &report, &[]),
        Err(e) => error_response(&e, &[]),
    }
}

/// `POST /v1/feedback {request_id, resolved}`: marks one of the calling
/// tenant's recent requests resolved or not, for cost per resolution.
async fn feedback(mut req: Request, env: &Env, settings: &Settings) -> Result<Response> {
    let tenant = match tenants::authenticate(&req, env, settings).await {
        Ok(t) => t,
        Err(e) => return error_response(&e, &[]),
    };
    let body = match http::read_body(&mut req, endpoints::MAX_FEEDBACK_BYTES).await {
        Ok(b) => b,
        Err(e) => return error_response(&e, &[]),
    };
    let fb = match outcomes::parse_feedback(&body) {
        Ok(f) => f,
        Err(e) => return error_response(&e, &[]),
    };
    let ops = vec![TenantOp::Outcome(OutcomeOp::Feedback { request_id: fb.request_id.clone(), resolved: fb.resolved })];
    // An unknown id is asked about again a few times (the core's policy:
    // its outcome may not be recorded yet) before the 404.
    for attempt in 0..=endpoints::FEEDBACK_RETRIES {
        let reply = desk::call(env, &tenant.id, ops.clone(), settings).await.ok().and_then(|mut r| r.pop());
        match endpoints::feedback_from_reply(reply) {
            Ok(Some(answer)) => return json_response(200, &answer, &[]),
            Ok(None) if attempt < endpoints::FEEDBACK_RETRIES => {
                timer::Timer::after_ms(endpoints::FEEDBACK_RETRY_WAIT_MS).await;
            }
            Ok(None) => break,
            Err(e) => return error_response(&e, &[]),
        }
    }
    error_response(&endpoints::feedback_unknown(&fb.request_id), &[])
}
