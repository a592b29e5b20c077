//! Errors, one enum per concern, each with an explicit HTTP status and an
//! OpenAI-shaped body.
//!
//! Every error a client can cause ends as an [`ApiError`]: a status, an
//! OpenAI error `type` and `code`, a message that says what to do, and for
//! budgets a `retry-after`. The body carries both the OpenAI shape
//! (`error.message/type/param/code`) and Anthropic's top-level
//! `"type": "error"`, so both official SDKs parse it.

use serde::Serialize;

/// An error ready to be sent to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// OpenAI's `error.type`, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// A stable machine-readable code, e.g. `budget_exceeded`.
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// Seconds until retrying can succeed (429, 503).
    /// (32 bits: a month is 2.6 million seconds; it keeps the error small.)
    pub retry_after_secs: Option<u32>,
    /// The methods a 405's `allow` header lists.
    pub allow: Option<&'static str>,
    /// The budget limit a 429 hit: (level, name), sent as the
    /// `x-tollgate-limit-level` and `x-tollgate-limit` headers.
    pub budget_limit: Option<Box<(&'static str, String)>>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    envelope: &'static str,
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: &'static str,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            retry_after_secs: None,
            allow: None,
            budget_limit: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(u32::try_from(secs).unwrap_or(u32::MAX));
        self
    }

    /// The JSON body: `{"type":"error","error":{"message","type","param","code"}}`.
    pub fn body(&self) -> Vec<u8> {
        let body = ErrorBody {
            envelope: "error",
            error: ErrorFields {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        // Serialising plain strings cannot fail; fall back to a fixed body rather than panic.
        serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"type":"error","error":{"message":"internal error","type":"api_error","param":null,"code":"internal"}}"#.to_vec())
    }

    /// Headers that go with the body.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if let Some(secs) = self.retry_after_secs {
            headers.push(("retry-after".to_owned(), secs.to_string()));
        }
        if let Some(allow) = self.allow {
            headers.push(("allow".to_owned(), allow.to_owned()));
        }
        if let Some((level, name)) = self.budget_limit.as_deref() {
            headers.push(("x-tollgate-limit-level".to_owned(), (*level).to_owned()));
            headers.push(("x-tollgate-limit".to_owned(), name.clone()));
        }
        headers
    }
}

/// Problems with the request body or its shape. 400, or 413 when too large.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request body is {actual} bytes; the limit is {limit} bytes")]
    TooLarge { limit: usize, actual: usize },
    #[error("request body is empty; send a JSON object")]
    Empty,
    #[error("request body is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("request body is not valid JSON: {detail}")]
    MalformedJson { detail: String },
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("missing required field `{field}`")]
    MissingField { field: String },
    #[error("`{field}` must be {expected}")]
    WrongType { field: String, expected: &'static str },
    #[error("`{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("`messages` must contain at least one message")]
    EmptyMessages,
    #[error("`input` must contain at least one item")]
    EmptyInput,
    #[error(
        "model `{model}` is not allowed for this key; use `tollgate/auto`, a tier such as `tollgate/{example_tier}`, or one of the allowed models"
    )]
    ModelNotAllowed { model: String, example_tier: String },
    #[error(
        "model `{model}` is not allowed for embeddings; use `tollgate/auto`, a model of the tenant's embedding chain, or a pinned embedding model"
    )]
    EmbeddingModelNotAllowed { model: String },
    /// No model of the tenant's can take the request as sent (its API is
    /// spoken by none, or a field cannot be expressed in theirs).
    #[error("{message}")]
    NoModelForRequest { message: String },
    #[error("prompt is {tokens} tokens; the limit is {limit}")]
    PromptTooLong { tokens: u64, limit: u64 },
    #[error("unknown endpoint `{path}`")]
    UnknownEndpoint { path: String },
}

impl From<RequestError> for ApiError {
    fn from(err: RequestError) -> Self {
        let message = err.to_string();
        let (status, code, param) = match &err {
            RequestError::TooLarge { .. } => (413, "request_too_large", None),
            RequestError::Empty => (400, "empty_body", None),
            RequestError::NotUtf8 { .. } => (400, "invalid_encoding", None),
            RequestError::MalformedJson { .. } => (400, "invalid_json", None),
            RequestError::NotAnObject => (400, "invalid_json", None),
            RequestError::MissingField { field } => (400, "missing_required_parameter", Some(field.clone())),
            RequestError::WrongType { field, .. } => (400, "invalid_type", Some(field.clone())),
            RequestError::Invalid { field, .. } => (400, "invalid_value", Some(field.clone())),
            RequestError::EmptyMessages => (400, "empty_messages", Some("messages".to_owned())),
            RequestError::EmptyInput => (400, "invalid_value", Some("input".to_owned())),
            RequestError::ModelNotAllowed { .. } | RequestError::EmbeddingModelNotAllowed { .. } => {
                (400, "model_not_allowed", Some("model".to_owned()))
            }
            RequestError::PromptTooLong { .. } => (400, "context_length_exceeded", Some("messages".to_owned())),
            RequestError::NoModelForRequest { .. } => (400, "no_model_for_request", Some("model".to_owned())),
            RequestError::UnknownEndpoint { .. } => (404, "unknown_url", None),
        };
        let mut api = ApiError::new(status, "invalid_request_error", code, message);
        api.param = param;
        api
    }
}

/// Authentication failures: 401, or 503 when the key store cannot be read
/// (auth never fails open). The message never echoes the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no API key: send `Authorization: Bearer <tollgate key>` or `x-api-key: <tollgate key>`")]
    MissingKey,
    #[error("the API key is not recognised")]
    UnknownKey,
    #[error("the API key's record is malformed; ask the operator to re-create it")]
    MalformedRecord,
    #[error("API keys cannot be checked right now (the key store is unreachable); retry shortly")]
    StoreUnavailable,
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::StoreUnavailable => {
                ApiError::new(503, "api_error", "auth_store_unavailable", err.to_string()).with_retry_after(5)
            }
            _ => ApiError::new(401, "invalid_request_error", "invalid_api_key", err.to_string()),
        }
    }
}

/// Budget refusals (429) and an unreachable budget store (503).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BudgetError {
    #[error("{message}")]
    Exceeded {
        message: String,
        retry_after_secs: u64,
        /// The level of the limit reached: tenant, key or user.
        #[serde(default = "tenant_level")]
        level: crate::budget::scope::Level,
        /// The limit's name.
        #[serde(default)]
        limit: String,
        #[serde(default = "day_window")]
        window: crate::budget::Window,
        /// The key's or user's entry id at that level ("" for the tenant).
        #[serde(default)]
        scope_id: String,
    },
    #[error("{message}")]
    NeverFits { message: String },
    #[error("too many requests in flight for this tenant ({limit}); retry shortly")]
    TooManyInFlight { limit: usize },
    #[error("the budget store is unreachable, and this tenant fails closed; retry shortly")]
    StoreUnavailable,
}

fn tenant_level() -> crate::budget::scope::Level {
    crate::budget::scope::Level::Tenant
}

fn day_window() -> crate::budget::Window {
    crate::budget::Window::Day
}

impl From<BudgetError> for ApiError {
    fn from(err: BudgetError) -> Self {
        let message = err.to_string();
        match err {
            BudgetError::Exceeded { retry_after_secs, level, limit, window, .. } => {
                // A per-minute limit is a rate; the others are amounts of money or tokens.
                let (kind, code) = match window {
                    crate::budget::Window::Minute => ("rate_limit_error", "rate_limit_exceeded"),
                    _ => ("insufficient_quota", "budget_exceeded"),
                };
                let mut err = ApiError::new(429, kind, code, message).with_retry_after(retry_after_secs);
                err.budget_limit = Some(Box::new((level.as_str(), limit)));
                err
            }
            BudgetError::NeverFits { .. } => {
                ApiError::new(400, "invalid_request_error", "exceeds_budget_limit", message).with_param("max_tokens")
            }
            BudgetError::TooManyInFlight { .. } => {
                ApiError::new(429, "rate_limit_exceeded", "too_many_in_flight", message).with_retry_after(1)
            }
            BudgetError::StoreUnavailable => {
                ApiError::new(503, "api_error", "budget_store_unavailable", message).with_retry_after(5)
            }
        }
    }
}

/// Failures reaching or understanding the provider. 502 or 503.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("every model in the `{tier}` fallback chain failed; last error: {last}")]
    Exhausted { tier: String, last: String },
    #[error("no model in the `{tier}` fallback chain answered in time")]
    Timeout { tier: String },
    #[error("the provider's response could not be read: {detail}")]
    BadResponse { detail: String },
    #[error("no upstream is configured for provider `{provider}`")]
    NotConfigured { provider: String },
}

impl From<UpstreamError> for ApiError {
    fn from(err: UpstreamError) -> Self {
        let message = err.to_string();
        match err {
            UpstreamError::Exhausted { .. } => ApiError::new(502, "api_error", "upstream_failed", message),
            UpstreamError::Timeout { .. } => {
                ApiError::new(503, "api_error", "upstream_timeout", message).with_retry_after(2)
            }
            UpstreamError::BadResponse { .. } => ApiError::new(502, "api_error", "upstream_bad_response", message),
            UpstreamError::NotConfigured { .. } => ApiError::new(503, "api_error", "upstream_not_configured", message),
        }
    }
}

/// A tenant whose configuration is missing or invalid cannot be served. 503:
/// it is the operator's problem, not the client's, and it goes away when fixed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("this tenant's configuration is invalid ({0}); ask the operator to run `tollgate config validate`")]
    InvalidConfig(String),
    #[error("this tenant's configuration could not be loaded; retry shortly")]
    Unavailable,
}

impl From<TenantError> for ApiError {
    fn from(err: TenantError) -> Self {
        ApiError::new(503, "api_error", "tenant_unavailable", err.to_string()).with_retry_after(5)
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn every_error_body_is_openai_shaped_and_parses_as_json() {
        let errors: Vec<ApiError> = vec![
            RequestError::TooLarge { limit: 1, actual: 2 }.into(),
            RequestError::MalformedJson { detail: "x".into() }.into(),
            AuthError::UnknownKey.into(),
            BudgetError::Exceeded {
                message: "daily".into(),
                retry_after_secs: 7,
                level: crate::budget::scope::Level::Tenant,
                limit: "daily".into(),
                window: crate::budget::Window::Day,
                scope_id: String::new(),
            }
            .into(),
            BudgetError::StoreUnavailable.into(),
            UpstreamError::Timeout { tier: "cheap".into() }.into(),
            TenantError::Unavailable.into(),
        ];
        for err in errors {
            let v: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], err.kind);
            assert_eq!(v["error"]["code"], err.code);
            assert_eq!(v["error"]["message"], err.message.as_str());
        }
    }

    #[test]
    fn statuses_follow_the_documented_mapping() {
        assert_eq!(ApiError::from(RequestError::TooLarge { limit: 1, actual: 2 }).status, 413);
        assert_eq!(ApiError::from(RequestError::EmptyMessages).status, 400);
        assert_eq!(ApiError::from(AuthError::MissingKey).status, 401);
        let budget = ApiError::from(BudgetError::Exceeded {
            message: "m".into(),
            retry_after_secs: 9,
            level: crate::budget::scope::Level::Tenant,
            limit: "daily".into(),
            window: crate::budget::Window::Day,
            scope_id: String::new(),
        });
        assert_eq!(budget.status, 429);
        assert!(budget.headers().contains(&("retry-after".to_owned(), "9".to_owned())));
        assert_eq!(ApiError::from(BudgetError::StoreUnavailable).status, 503);
        assert_eq!(ApiError::from(UpstreamError::Exhausted { tier: "t".into(), last: "500".into() }).status, 502);
    }
}
