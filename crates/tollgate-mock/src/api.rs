//! Handling of one API request, common to both providers and every endpoint:
//! read and record the request, work out faults, wait, then answer in the
//! provider's shape.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use crate::answer::{self, Prompt};
use crate::body::MockBody;
use crate::faults::{FaultPlan, parse_faults};
use crate::record::{RequestRecord, ResponseTracker};
use crate::responses::{self, ResponsesRequest};
use crate::tools::Reply;
use crate::{MockState, anthropic, embeddings, openai};

/// Request header carrying faults for this one request.
pub const FAULT_HEADER: &str = "x-mock-fault";

/// Largest request body accepted; far above any real prompt, small enough
/// that a runaway client cannot exhaust memory.
const MAX_REQUEST_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Seconds announced in `retry-after` with a 429 unless `retry_after:<s>` says otherwise.
const DEFAULT_RETRY_AFTER_SECONDS: u64 = 1;

/// Which endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// OpenAI `…/chat/completions`.
    ChatCompletions,
    /// OpenAI `…/embeddings`.
    Embeddings,
    /// OpenAI `…/responses` (the Responses API).
    Responses,
    /// Anthropic `…/messages`.
    Messages,
}

impl Endpoint {
    /// The endpoint served at `path`, judged by its ending so that any
    /// prefix (`/v1`, `/openai/v1`, …) works.
    pub fn for_path(path: &str) -> Option<Endpoint> {
        if path.ends_with("/chat/completions") {
            Some(Endpoint::ChatCompletions)
        } else if path.ends_with("/embeddings") {
            Some(Endpoint::Embeddings)
        } else if path.ends_with("/responses") {
            Some(Endpoint::Responses)
        } else if path.ends_with("/messages") {
            Some(Endpoint::Messages)
        } else {
            None
        }
    }

    /// The provider API the endpoint belongs to (its error shapes, headers).
    pub fn api(self) -> Api {
        match self {
            Endpoint::ChatCompletions | Endpoint::Embeddings | Endpoint::Responses => Api::OpenAi,
            Endpoint::Messages => Api::Anthropic,
        }
    }
}

/// Which provider's API a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Anthropic,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::OpenAi => "openai",
            Api::Anthropic => "anthropic",
        }
    }

    fn parse_prompt(self, body: &Value) -> Result<Prompt, RequestError> {
        match self {
            Api::OpenAi => openai::parse_prompt(body),
            Api::Anthropic => anthropic::parse_prompt(body),
        }
    }

    fn error_body(self, error: &RequestError) -> Value {
        match self {
            Api::OpenAi => openai::error_body(error.status, &error.message, error.param, error.code),
            Api::Anthropic => anthropic::error_body(error.status, &error.message),
        }
    }

    fn fault_message(self, status: u16) -> String {
        match self {
            Api::OpenAi => openai::fault_message(status),
            Api::Anthropic => anthropic::fault_message(status),
        }
    }

    /// Header naming the request id, as each provider calls it.
    fn request_id_header(self) -> &'static str {
        match self {
            Api::OpenAi => "x-request-id",
            Api::Anthropic => "request-id",
        }
    }

    fn response_id(self, hash: &str) -> String {
        match self {
            Api::OpenAi => openai::completion_id(hash),
            Api::Anthropic => anthropic::message_id(hash),
        }
    }

    fn json_response(self, id: &str, prompt: &Prompt, reply: &Reply) -> Value {
        match self {
            Api::OpenAi => openai::completion(id, prompt, reply),
            Api::Anthropic => anthropic::message(id, prompt, reply),
        }
    }

    fn stream_events(self, id: &str, prompt: &Prompt, reply: &Reply) -> Vec<Bytes> {
        match self {
            Api::OpenAi => openai::stream_events(id, prompt, reply),
            Api::Anthropic => anthropic::stream_events(id, prompt, reply),
        }
    }

    /// A provider-shaped error response outside the normal flow (wrong
    /// method, unreadable body); not recorded.
    pub fn error_response(self, error: &RequestError) -> Response<MockBody> {
        json_response(status_code(error.status), &self.error_body(error))
    }
}

/// A request the provider would reject, with what to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `param` (the offending field).
    pub param: Option<&'static str>,
    /// OpenAI's `code`.
    pub code: Option<&'static str>,
}

impl RequestError {
    pub fn invalid(message: &str, param: Option<&'static str>) -> RequestError {
        RequestError { status: 400, message: message.to_owned(), param, code: None }
    }

    pub fn missing(param: &'static str, message: &str) -> RequestError {
        RequestError {
            status: 400,
            message: message.to_owned(),
            param: Some(param),
            code: Some("missing_required_parameter"),
        }
    }

    fn with_status(status: u16, message: String) -> RequestError {
        RequestError { status, message, param: None, code: None }
    }
}

/// What the mock decided to answer, worked out before any waiting.
enum Outcome {
    Failure {
        error: RequestError,
        retry_after: Option<u64>,
    },
    /// A chat completion or message (text or a tool call), JSON or streamed.
    Success {
        prompt: Prompt,
        reply: Reply,
    },
    /// An embeddings response, complete (never streamed).
    Embeddings(Value),
    /// A Responses API answer, JSON or streamed.
    Responses {
        request: ResponsesRequest,
        reply: Reply,
    },
}

/// Serves one API request.
pub async fn handle(endpoint: Endpoint, state: Arc<MockState>, request: Request<Incoming>) -> Response<MockBody> {
    let api = endpoint.api();
    let (parts, body) = request.into_parts();
    let raw_body = match Limited::new(body, MAX_REQUEST_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let too_large = error.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            let status = if too_large { 413 } else { 400 };
            return api.error_response(&RequestError::with_status(
                status,
                format!("could not read the request body: {error}"),
            ));
        }
    };
    let parsed_body: Result<Value, serde_json::Error> = serde_json::from_slice(&raw_body);
    let model = parsed_body.as_ref().ok().and_then(|body| body.get("model")).and_then(Value::as_str).map(str::to_owned);
    // Embeddings never stream, whatever the body says.
    let stream = endpoint != Endpoint::Embeddings
        && parsed_body.as_ref().ok().and_then(|body| body.get("stream")).and_then(Value::as_bool).unwrap_or(false);

    // Faults: the request's own header first (it wins per kind), then the
    // registered rules for this model.
    let mut plan = FaultPlan::default();
    let header_faults = parts
        .headers
        .get(FAULT_HEADER)
        .map(|value| value.to_str().map_err(|_| "not valid text".to_owned()).and_then(parse_faults));
    let header_fault_error = match header_faults {
        Some(Ok(faults)) => {
            faults.into_iter().for_each(|fault| plan.add(fault));
            None
        }
        Some(Err(reason)) => Some(RequestError::invalid(&format!("invalid {FAULT_HEADER} header: {reason}"), None)),
        None => None,
    };
    state.faults.apply(model.as_deref(), &mut plan);

    let outcome = if let Some(error) = header_fault_error {
        Outcome::Failure { error, retry_after: None }
    } else if let Some(status) = plan.status {
        let retry_after = plan.retry_after.or((status == 429).then_some(DEFAULT_RETRY_AFTER_SECONDS));
        Outcome::Failure { error: RequestError::with_status(status, api.fault_message(status)), retry_after }
    } else {
        match parsed_body.as_ref() {
            Err(error) => Outcome::Failure {
                error: RequestError::invalid(
                    &format!("We could not parse the JSON body of your request. ({error})"),
                    None,
                ),
                retry_after: None,
            },
            Ok(body) if endpoint == Endpoint::Embeddings => match embeddings::parse_request(body) {
                // The answer faults (answer:<kind>) spoil chat text; an
                // embedding has none, so they change nothing here.
                Ok(request) => Outcome::Embeddings(embeddings::response(&request)),
                Err(error) => Outcome::Failure { error, retry_after: None },
            },
            Ok(body) if endpoint == Endpoint::Responses => match responses::parse_request(body) {
                Ok(request) => {
                    let reply = Reply::for_prompt(&request.prompt, plan.answer);
                    Outcome::Responses { request, reply }
                }
                Err(error) => Outcome::Failure { error, retry_after: None },
            },
            Ok(body) => match api.parse_prompt(body) {
                Ok(prompt) => {
                    let reply = Reply::for_prompt(&prompt, plan.answer);
                    Outcome::Success { prompt, reply }
                }
                Err(error) => Outcome::Failure { error, retry_after: None },
            },
        }
    };

    let status = match &outcome {
        Outcome::Failure { error, .. } => error.status,
        Outcome::Success { .. } | Outcome::Embeddings(_) | Outcome::Responses { .. } => 200,
    };
    let seq = state.recorder.insert(RequestRecord {
        seq: 0,
        api: api.name(),
        path: parts.uri.path().to_owned(),
        model,
        stream,
        headers: header_record(&parts.headers),
        body: parsed_body.unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw_body).into_owned())),
        status,
        faults: plan.applied.clone(),
        completed: false,
        client_aborted: false,
    });
    // From here on, dropping the tracker before the response is finished
    // (hyper drops this future or the body when the client disconnects)
    // records client_aborted.
    let tracker = ResponseTracker::new(state.recorder.clone(), seq);

    let delay = state.options.base_latency + plan.slow.unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    // Same request bytes → same ids, so identical requests get identical bodies.
    let hash = answer::hash_hex(&[api.name().as_bytes(), &raw_body], 12);
    let mut response = match outcome {
        Outcome::Failure { error, retry_after } => {
            let mut response = json_body_response(&api.error_body(&error), plan.drop_after.is_some());
            *response.status_mut() = status_code(error.status);
            if let Some(seconds) = retry_after {
                response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
        Outcome::Success { prompt, reply } => {
            let id = api.response_id(&hash);
            if prompt.stream {
                event_stream_response(api.stream_events(&id, &prompt, &reply), &plan)
            } else {
                json_body_response(&api.json_response(&id, &prompt, &reply), plan.drop_after.is_some())
            }
        }
        Outcome::Embeddings(body) => json_body_response(&body, plan.drop_after.is_some()),
        Outcome::Responses { request, reply } => {
            let id = responses::response_id(&hash);
            if request.prompt.stream {
                event_stream_response(responses::stream_events(&id, &request, &reply), &plan)
            } else {
                json_body_response(&responses::response(&id, &request, &reply), plan.drop_after.is_some())
            }
        }
    };
    let headers = response.headers_mut();
    if let Ok(request_id) = HeaderValue::from_str(&format!("req_{hash}")) {
        headers.insert(HeaderName::from_static(api.request_id_header()), request_id);
    }
    headers.insert(HeaderName::from_static("x-mock-seq"), HeaderValue::from(seq));
    response.map(|body| body.with_tracker(tracker))
}

/// An SSE response sending `events` with the plan's stream faults
/// (`chunk_delay` between events, `drop_after` events then a cut).
fn event_stream_response(events: Vec<Bytes>, plan: &FaultPlan) -> Response<MockBody> {
    let mut response = Response::new(MockBody::event_stream(events, plan.chunk_delay, plan.drop_after));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    headers.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A JSON response; with `truncate` only half of it is sent before the
/// connection is cut (`drop_after` on a non-streaming response).
fn json_body_response(value: &Value, truncate: bool) -> Response<MockBody> {
    let bytes = Bytes::from(value.to_string());
    let body = if truncate { MockBody::truncated(bytes) } else { MockBody::full(bytes) };
    let mut response = Response::new(body);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A complete JSON response with the given status.
pub fn json_response(status: StatusCode, value: &Value) -> Response<MockBody> {
    let mut response = json_body_response(value, false);
    *response.status_mut() = status;
    response
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Request headers as recorded: names are already lowercase in hyper;
/// repeated headers are joined with ", " as HTTP allows.
fn header_record(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut record: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        record
            .entry(name.as_str().to_owned())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    record
}
