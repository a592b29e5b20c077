//! A mock OpenAI- and Anthropic-compatible upstream for tollgate's tests and
//! benchmarks.
//!
//! It answers `POST …/chat/completions`, `POST …/responses` and
//! `POST …/embeddings` (OpenAI) and `POST …/messages` (Anthropic) under any
//! path prefix with deterministic,
//! realistically shaped responses, streams when asked, injects faults on
//! demand, and records every API request for inspection through the
//! `/__mock/` control API.
//!
//! Offered function tools, the chat and messages endpoints call one, as the
//! real APIs do (`tool_calls` / `tool_use`, JSON and streamed argument
//! fragments), until the tool's result comes back (`src/tools.rs`). They check
//! request shapes as strictly as the real APIs (unknown fields, roles,
//! blocks, tool results that answer no call, Anthropic's required
//! `max_tokens` …) and answer with the real error shapes, so a request
//! translated from another API that the provider would refuse fails loudly.
//!
//! The binary (`tollgate-mock`) is a thin wrapper over [`serve`]; the tests
//! run the same server in-process.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

mod answer;
mod anthropic;
mod api;
mod body;
mod control;
mod embeddings;
mod faults;
mod openai;
mod record;
mod responses;
mod tools;

use crate::faults::FaultRules;
use crate::record::Recorder;

pub use crate::record::DEFAULT_RECORD_CAPACITY;

/// Server settings.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Delay before the response headers of every API response (`--latency-ms`).
    pub base_latency: Duration,
    /// How many API requests `GET /__mock/requests` keeps.
    pub record_capacity: usize,
}

impl Default for MockOptions {
    fn default() -> MockOptions {
        MockOptions { base_latency: Duration::ZERO, record_capacity: DEFAULT_RECORD_CAPACITY }
    }
}

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct MockState {
    pub options: MockOptions,
    pub recorder: Arc<Recorder>,
    pub faults: FaultRules,
    /// Webhook deliveries received (`POST /__mock/webhooks`), oldest first.
    pub webhooks: std::sync::Mutex<Vec<serde_json::Value>>,
}

/// Serves HTTP/1.1 (keep-alive, chunked streaming) on `listener` until the
/// task is dropped. Each connection gets its own task, so hundreds of
/// concurrent clients are served in parallel.
pub async fn serve(listener: TcpListener, options: MockOptions) {
    let state = Arc::new(MockState {
        recorder: Arc::new(Recorder::new(options.record_capacity)),
        faults: FaultRules::default(),
        webhooks: std::sync::Mutex::new(Vec::new()),
        options,
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Usually transient (e.g. out of file descriptors under a
                // load test): report, back off briefly, keep serving.
                eprintln!("tollgate-mock: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // SSE events are small writes that must leave at once.
        if let Err(error) = stream.set_nodelay(true) {
            eprintln!("tollgate-mock: could not set TCP_NODELAY: {error}");
        }
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| control::route(state.clone(), request));
            // An error here means the client went away or a drop_after fault
            // cut the connection; both are expected, and the request record
            // already says what happened.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Locks a mutex, ignoring poisoning: a panic elsewhere cannot leave the
/// log or the rule list in a state worse than "slightly stale", and the mock
/// should keep answering rather than fail every later request.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
