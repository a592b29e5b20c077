//! The two client-facing API shapes tollgate speaks.

use serde::{Deserialize, Serialize};

/// Which wire format a request and its response use.
///
/// OpenAI-compatible providers (OpenAI, Google's and Mistral's OpenAI
/// endpoints, Workers AI) all speak [`ApiFormat::OpenAi`] and its
/// [`ApiFormat::Embeddings`]; Anthropic speaks [`ApiFormat::Anthropic`]. A
/// request is only ever routed to models whose provider speaks the
/// request's format (see [`ApiFormat::spoken_by`]), so bodies are never
/// translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ApiFormat {
    /// `POST /v1/chat/completions`
    #[serde(rename = "openai")]
    OpenAi,
    /// `POST /v1/messages`
    #[serde(rename = "anthropic")]
    Anthropic,
    /// `POST /v1/embeddings` (OpenAI's shape)
    #[serde(rename = "embeddings")]
    Embeddings,
    /// `POST /v1/responses` (OpenAI's Responses API)
    #[serde(rename = "responses")]
    Responses,
}

impl ApiFormat {
    /// The name used in config, traces and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiFormat::OpenAi => "openai",
            ApiFormat::Anthropic => "anthropic",
            ApiFormat::Embeddings => "embeddings",
            ApiFormat::Responses => "responses",
        }
    }

    /// Whether `provider` serves this format.
    pub fn spoken_by(self, provider: crate::provider::Provider) -> bool {
        match self {
            ApiFormat::Embeddings => provider.api() == ApiFormat::OpenAi,
            // The Responses API is OpenAI's own.
            ApiFormat::Responses => provider == crate::provider::Provider::OpenAi,
            api => provider.api() == api,
        }
    }

    /// The request path this format is served on.
    pub fn path(self) -> &'static str {
        match self {
            ApiFormat::OpenAi => "/v1/chat/completions",
            ApiFormat::Anthropic => "/v1/messages",
            ApiFormat::Embeddings => "/v1/embeddings",
            ApiFormat::Responses => "/v1/responses",
        }
    }

    /// The format served on `path`, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        match path {
            "/v1/chat/completions" | "/chat/completions" => Some(ApiFormat::OpenAi),
            "/v1/messages" | "/messages" => Some(ApiFormat::Anthropic),
            "/v1/embeddings" | "/embeddings" => Some(ApiFormat::Embeddings),
            "/v1/responses" | "/responses" => Some(ApiFormat::Responses),
            _ => None,
        }
    }
}
