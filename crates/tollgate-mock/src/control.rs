//! Request routing and the `/__mock/` control API used by tests:
//!
//! - `GET /__mock/healthz` → 200 `ok`
//! - `GET /__mock/requests` → recorded API requests (JSON array, oldest first)
//! - `DELETE /__mock/requests` → forget them
//! - `GET /__mock/faults` → active fault rules
//! - `POST /__mock/faults` → add a rule (or an array of rules)
//! - `DELETE /__mock/faults` → remove every rule
//! - `POST /__mock/webhooks` → record a webhook delivery (path, headers, body as text)
//! - `GET /__mock/webhooks` → the deliveries (JSON array, oldest first); `DELETE` forgets them

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::MockState;
use crate::api::{self, Api, Endpoint, RequestError};
use crate::body::MockBody;
use crate::faults::FaultRule;

const CONTROL_PREFIX: &str = "/__mock/";

/// Control requests are small JSON documents.
const MAX_CONTROL_BODY_BYTES: usize = 1024 * 1024;

/// Entry point for every request on every connection.
pub async fn route(state: Arc<MockState>, request: Request<Incoming>) -> Result<Response<MockBody>, Infallible> {
    let path = request.uri().path().to_owned();
    if let Some(endpoint) = path.strip_prefix(CONTROL_PREFIX) {
        return Ok(control(&state, endpoint, request).await);
    }
    let Some(endpoint) = Endpoint::for_path(&path) else {
        let error = RequestError {
            status: 404,
            message: format!(
                "Unknown path {path}: the mock serves POST …/chat/completions, POST …/responses, POST …/embeddings \
                 and POST …/messages"
            ),
            param: None,
            code: Some("unknown_url"),
        };
        return Ok(Api::OpenAi.error_response(&error));
    };
    if request.method() != Method::POST {
        let error = RequestError {
            status: 405,
            message: format!("Method {} not allowed on {path}; use POST", request.method()),
            param: None,
            code: None,
        };
        return Ok(endpoint.api().error_response(&error));
    }
    Ok(api::handle(endpoint, state, request).await)
}

async fn control(state: &MockState, endpoint: &str, request: Request<Incoming>) -> Response<MockBody> {
    let method = request.method().clone();
    match (endpoint, method) {
        ("healthz", Method::GET) => {
            let mut response = Response::new(MockBody::full("ok"));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            response
        }
        ("requests", Method::GET) => match serde_json::to_value(state.recorder.list()) {
            Ok(list) => api::json_response(StatusCode::OK, &list),
            Err(error) => control_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot serialise: {error}")),
        },
        ("requests", Method::DELETE) => api::json_response(StatusCode::OK, &json!({"cleared": state.recorder.clear()})),
        ("faults", Method::GET) => list_faults(state),
        ("faults", Method::POST) => add_faults(state, request).await,
        ("faults", Method::DELETE) => api::json_response(StatusCode::OK, &json!({"cleared": state.faults.clear()})),
        ("webhooks", Method::POST) => record_webhook(state, request).await,
        ("webhooks", Method::GET) => {
            let list = state.webhooks.lock().map(|w| w.clone()).unwrap_or_default();
            api::json_response(StatusCode::OK, &Value::Array(list))
        }
        ("webhooks", Method::DELETE) => {
            let cleared = state.webhooks.lock().map(|mut w| std::mem::take(&mut *w).len()).unwrap_or(0);
            api::json_response(StatusCode::OK, &json!({"cleared": cleared}))
        }
        ("healthz" | "requests" | "faults" | "webhooks", _) => {
            control_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => control_error(StatusCode::NOT_FOUND, "unknown control endpoint (healthz, requests, faults)"),
    }
}

/// `POST /__mock/webhooks`: keep what arrived, byte for byte (the body as
/// text), so a test can check a signature over it.
async fn record_webhook(state: &MockState, request: Request<Incoming>) -> Response<MockBody> {
    let headers: serde_json::Map<String, Value> = request
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), Value::String(value.to_str().unwrap_or("").to_owned())))
        .collect();
    let path = request.uri().to_string();
    let bytes = match Limited::new(request.into_body(), MAX_CONTROL_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return control_error(StatusCode::BAD_REQUEST, &format!("cannot read the body: {error}")),
    };
    let body = String::from_utf8_lossy(&bytes).into_owned();
    if let Ok(mut webhooks) = state.webhooks.lock() {
        webhooks.push(json!({"path": path, "headers": headers, "body": body}));
    }
    api::json_response(StatusCode::OK, &json!({"received": true}))
}

/// `POST /__mock/faults`: one rule object or an array of them. All are
/// checked before any is added, so a bad rule leaves the set unchanged.
async fn add_faults(state: &MockState, request: Request<Incoming>) -> Response<MockBody> {
    let bytes = match Limited::new(request.into_body(), MAX_CONTROL_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return control_error(StatusCode::BAD_REQUEST, &format!("cannot read the body: {error}")),
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(error) => return control_error(StatusCode::BAD_REQUEST, &format!("body is not JSON: {error}")),
    };
    let items = match value {
        Value::Array(items) => items,
        single => vec![single],
    };
    let rules: Result<Vec<FaultRule>, String> = items.iter().map(FaultRule::from_json).collect();
    match rules {
        Ok(rules) => {
            state.faults.add(rules);
            list_faults(state)
        }
        Err(reason) => control_error(StatusCode::BAD_REQUEST, &reason),
    }
}

fn list_faults(state: &MockState) -> Response<MockBody> {
    match serde_json::to_value(state.faults.list()) {
        Ok(list) => api::json_response(StatusCode::OK, &list),
        Err(error) => control_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot serialise: {error}")),
    }
}

fn control_error(status: StatusCode, message: &str) -> Response<MockBody> {
    api::json_response(status, &json!({"error": message}))
}
