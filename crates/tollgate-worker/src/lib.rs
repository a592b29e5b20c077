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
mod http;
mod ledger;
mod proxy;
mod settings;
mod tenants;

pub use ledger::TenantLedger;

use http::{error_response, json_response};
use settings::Settings;
use tollgate_core::error::RequestError;
use tollgate_core::outcomes::{self, OutcomeOp, OutcomeReply};
use tollgate_core::store::{TenantOp, TenantReply};
use tollgate_core::{ApiError, ApiFormat, budget, endpoints};
use worker::{Context, Env, Method, Request, Response, Result, console_error, event};

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
    let path = req.path();
    let method = req.method();
    if let Some(api) = ApiFormat::from_path(&path) {
        if method != Method::Post {
            return method_not_allowed(&path, "POST");
        }
        return proxy::handle(req, api, env, ctx, settings).await;
    }
    match (method, path.trim_end_matches('/')) {
        (Method::Get | Method::Head, "/healthz") => json_response(
            200,
            &serde_json::json!({"status": "ok", "service": "tollgate", "host": "cloudflare-worker"}),
            &[],
        ),
        (Method::Get, "/v1/models") => {
            let tenant = match tenants::authenticate(&req, &env, &settings).await {
                Ok(t) => t,
                Err(e) => return error_response(&e, &[]),
            };
            json_response(200, &endpoints::models_list(&tenant.config), &[])
        }
        (Method::Get, "/v1/usage") => usage(&req, &env, &settings).await,
        (Method::Post, "/v1/feedback") => feedback(req, &env, &settings).await,
        (_, p @ ("/healthz" | "/v1/models" | "/v1/usage")) => method_not_allowed(p, "GET"),
        (_, "/v1/feedback") => method_not_allowed("/v1/feedback", "POST"),
        _ => error_response(&RequestError::UnknownEndpoint { path }.into(), &[]),
    }
}

fn method_not_allowed(path: &str, allowed: &str) -> Result<Response> {
    let err =
        ApiError::new(405, "invalid_request_error", "method_not_allowed", format!("{path} accepts {allowed} only"));
    error_response(&err, &[("allow".to_owned(), allowed.to_owned())])
}

/// `GET /v1/usage`: the calling tenant's budgets and cost per resolution,
/// read from its own ledger only (the tenant comes from the key, never from
/// the request).
async fn usage(req: &Request, env: &Env, settings: &Settings) -> Result<Response> {
    let tenant = match tenants::authenticate(req, env, settings).await {
        Ok(t) => t,
        Err(e) => return error_response(&e, &[]),
    };
    let ops = vec![
        TenantOp::Budget(budget::LedgerOp::Status { budgets: tenant.config.budgets.clone() }),
        TenantOp::Outcome(OutcomeOp::Report),
    ];
    let replies = match ledger::call(env, &tenant.id, &ops, settings).await {
        Ok(r) => r,
        Err(()) => return error_response(&outcomes::ledger_unavailable(), &[]),
    };
    let mut limits = Vec::new();
    let mut tiers = Vec::new();
    for reply in replies {
        match reply {
            TenantReply::Budget(budget::LedgerReply::Status { limits: l }) => limits = l,
            TenantReply::Outcome(OutcomeReply::Report { tiers: t }) => tiers = t,
            _ => {}
        }
    }
    let now = settings::now_secs();
    json_response(200, &endpoints::usage_report_from(&tenant.config, limits, Some(&tiers), now), &[])
}

/// `POST /v1/feedback {request_id, resolved}`: marks one of the calling
/// tenant's recent requests resolved or not, for cost per resolution.
async fn feedback(mut req: Request, env: &Env, settings: &Settings) -> Result<Response> {
    let tenant = match tenants::authenticate(&req, env, settings).await {
        Ok(t) => t,
        Err(e) => return error_response(&e, &[]),
    };
    let body = match http::read_body(&mut req, 16 * 1024).await {
        Ok(b) => b,
        Err(e) => return error_response(&e, &[]),
    };
    let fb = match outcomes::parse_feedback(&body) {
        Ok(f) => f,
        Err(e) => return error_response(&e, &[]),
    };
    let ops = vec![TenantOp::Outcome(OutcomeOp::Feedback { request_id: fb.request_id.clone(), resolved: fb.resolved })];
    // A request's outcome is recorded just after its answer is handed over,
    // so feedback sent the moment the answer arrives can beat it: give an
    // unknown id two short retries before answering 404.
    let mut reply = ledger::call(env, &tenant.id, &ops, settings).await.map(|mut r| r.pop());
    for _ in 0..2 {
        if !matches!(reply, Ok(Some(TenantReply::Outcome(OutcomeReply::UnknownRequest { .. })))) {
            break;
        }
        worker::Delay::from(std::time::Duration::from_millis(250)).await;
        reply = ledger::call(env, &tenant.id, &ops, settings).await.map(|mut r| r.pop());
    }
    match reply {
        Ok(Some(TenantReply::Outcome(OutcomeReply::FeedbackRecorded { request_id, tier, resolved }))) => json_response(
            200,
            &serde_json::json!({"object": "feedback", "request_id": request_id, "tier": tier, "resolved": resolved}),
            &[],
        ),
        Ok(Some(TenantReply::Outcome(OutcomeReply::UnknownRequest { request_id }))) => {
            error_response(&outcomes::unknown_request(&request_id), &[])
        }
        _ => error_response(&outcomes::ledger_unavailable(), &[]),
    }
}
