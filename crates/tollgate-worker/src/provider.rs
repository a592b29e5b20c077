//! The provider call: build the rewritten request, send it with a deadline,
//! and read a streamed answer chunk by chunk. Host I/O only; what an answer
//! means is the core's (`Plan::on_answer_head`).

use crate::settings::Settings;
use crate::timer::Timer;
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use tollgate_core::engine::Upstream;
use tollgate_core::error::UpstreamError;
use tollgate_core::{ApiError, upstream};
use worker::wasm_bindgen::JsValue;
use worker::{
    AbortController, ByteStream, Env, Fetch, Headers, Method, Request, RequestInit, Response, Result, console_error,
    js_sys,
};

/// Send the rewritten request to the provider and wait for its headers.
/// `Ok(None)`: a timeout or a connection failure. `Err`: the provider
/// cannot be called at all (no base URL or key configured).
pub async fn call(
    up: &Upstream,
    env: &Env,
    client_headers: &[(String, String)],
    settings: &Settings,
) -> std::result::Result<Option<Response>, ApiError> {
    let provider = up.target.provider;
    let base = env.var(upstream::base_url_name(provider)).map(|v| v.to_string()).unwrap_or_default();
    let key = env.var(upstream::secret_name(provider)).map(|v| v.to_string()).unwrap_or_default();
    if base.is_empty() || key.is_empty() {
        return Err(UpstreamError::NotConfigured { provider: provider.to_string() }.into());
    }
    let url = upstream::endpoint_url(&base, up.api);
    let build = || -> Result<Request> {
        let headers = Headers::new();
        for (name, value) in upstream::provider_headers(provider, &key, client_headers) {
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
    let timeout = Timer::after_ms(settings.upstream_timeout_ms);
    match select(sent, timeout).await {
        Either::Left((Ok(resp), _)) => Ok(Some(resp)),
        Either::Left((Err(e), _)) => {
            console_error!("tollgate: {} unreachable: {e}", up.target);
            Ok(None)
        }
        Either::Right(_) => {
            controller.abort();
            Ok(None)
        }
    }
}

pub enum Chunk {
    Data(Vec<u8>),
    End,
    Broken,
}

/// The stream's next chunk, or its end, or a break (an error, or nothing
/// for `timeout_ms`).
pub async fn next_chunk(body: &mut ByteStream, timeout_ms: u64) -> Chunk {
    match select(body.next(), Timer::after_ms(timeout_ms)).await {
        Either::Left((Some(Ok(c)), _)) => Chunk::Data(c),
        Either::Left((None, _)) => Chunk::End,
        Either::Left((Some(Err(_)), _)) | Either::Right(_) => Chunk::Broken,
    }
}
