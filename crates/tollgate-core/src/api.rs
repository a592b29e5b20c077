//! The two client-facing API shapes tollgate speaks.

use serde::{Deserialize, Serialize};

/// Which wire format a request and its response use.
///
/// OpenAI-compatible providers (OpenAI, Google's and Mistral's OpenAI
/// endpoints, Workers AI) all speak [`ApiFormat::OpenAi`]; Anthropic speaks
/// [`ApiFormat::Anthropic`]. A request is only ever routed to models whose
/// provider speaks the request's format, so bodies are never translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ApiFormat {
    /// `POST /v1/chat/completions`
    #[serde(rename = "openai")]
    OpenAi,
    /// `POST /v1/messages`
    #[serde(rename = "anthropic")]
    Anthropic,
}

impl ApiFormat {
    /// The name used in config, traces and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiFormat::OpenAi => "openai",
            ApiFormat::Anthropic => "anthropic",
        }
    }

    /// The request path this format is served on.
    pub fn path(self) -> &'static str {
        match self {
            ApiFormat::OpenAi => "/v1/chat/completions",
            ApiFormat::Anthropic => "/v1/messages",
        }
    }

    /// The format served on `path`, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        match path {
            "/v1/chat/completions" | "/chat/completions" => Some(ApiFormat::OpenAi),
            "/v1/messages" | "/messages" => Some(ApiFormat::Anthropic),
            _ => None,
        }
    }
}
