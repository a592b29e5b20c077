//! Translation between the client's API and the provider's, for a tier
//! model whose provider does not speak the client's API: OpenAI Chat
//! Completions ⇄ Anthropic Messages, and the Responses API → either.
//!
//! Everything here is a pure function of what is handed in (ids and times
//! come from the plan), and nothing panics on any input.
//!
//! * [`request`] turns the client's body into the provider's, or says why
//!   it cannot be expressed there: a field with no equivalent is never
//!   dropped silently, the model is skipped instead (the plan says so in
//!   `x-tollgate-reasons`).
//! * [`answer`] turns a provider's JSON answer (or error) into the client's.
//! * [`stream`] does the same for a stream, event by event, as the bytes
//!   arrive: nothing is buffered beyond one event.
//!
//! Answers go through one neutral shape ([`answer::Answer`] and
//! [`stream::Event`]): each API has a reader and a writer, so the three
//! client APIs and the two provider APIs need five pieces, not six pairs.
//!
//! When the API already matches nothing here runs: the body is forwarded
//! byte for byte.

pub mod answer;
pub mod request;
pub mod stream;

use crate::api::ApiFormat;
use crate::provider::Provider;
use serde::{Deserialize, Serialize};

pub use answer::{translate_answer, translate_error};
pub use request::translate_request;
pub use stream::StreamTranslator;

/// When a tier's models that do not speak the client's API are used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum TranslationMode {
    /// A tier's models that speak the client's API serve it; its other
    /// models are used (translated) only when it has none.
    #[default]
    WhenNeeded,
    /// The models that speak the client's API first, then the others,
    /// translated, as fallbacks.
    NativeFirst,
    /// The tier's models in the order listed, translating where needed.
    AsListed,
    /// Never translate: a tier without a model of the client's API is
    /// passed over.
    Off,
}

/// The API to speak to `provider` for a client of `client`'s API: the
/// client's own when the provider speaks it, else the provider's (None:
/// no translation exists, as for embeddings).
pub fn provider_api(client: ApiFormat, provider: Provider) -> Option<ApiFormat> {
    if client.spoken_by(provider) {
        return Some(client);
    }
    match client {
        ApiFormat::OpenAi | ApiFormat::Anthropic | ApiFormat::Responses => Some(provider.api()),
        ApiFormat::Embeddings => None,
    }
}

/// `client->provider`, as the `x-tollgate-translated` header says it.
pub fn direction(client: ApiFormat, provider: ApiFormat) -> String {
    format!("{}->{}", client.as_str(), provider.as_str())
}

/// The request fields a Responses answer repeats.
pub const RESPONSES_ECHO: &[&str] = &[
    "instructions",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "max_output_tokens",
    "parallel_tool_calls",
    "text",
    "reasoning",
    "metadata",
    "user",
    "truncation",
];

/// The ids and times a translated answer is given (the provider's own are
/// in the other API's format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerContext {
    /// Hex digits unique to the request (and attempt), for ids.
    pub id_seed: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The client's prompt, as counted: Anthropic streams announce input
    /// tokens at their start, before an OpenAI provider reports them.
    pub prompt_tokens: u64,
    /// Whether a chat client asked for the usage chunk.
    pub include_usage: bool,
    /// A Responses client's request fields the response object repeats
    /// (`instructions`, `tools`, `tool_choice`, `temperature`, `metadata`, …).
    pub echo: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Why a neutral finish reason: across the three APIs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    /// A stop sequence matched (Anthropic names it).
    StopSequence(Option<String>),
    Length,
    ToolCalls,
    ContentFilter,
    /// Anything else, under the provider's name.
    Other(String),
}

impl Finish {
    /// From a provider's finish (OpenAI) or stop (Anthropic) reason.
    pub fn read(api: ApiFormat, reason: &str, stop_sequence: Option<&str>) -> Finish {
        match (api, reason) {
            (ApiFormat::Anthropic, "end_turn") | (_, "stop") => Finish::Stop,
            (ApiFormat::Anthropic, "stop_sequence") => Finish::StopSequence(stop_sequence.map(str::to_owned)),
            // Cut by the output cap or the context window, whatever the provider calls it.
            (_, "length" | "max_tokens" | "model_context_window_exceeded" | "model_length") => Finish::Length,
            (_, "tool_calls" | "tool_use" | "function_call") => Finish::ToolCalls,
            (_, "content_filter" | "refusal") => Finish::ContentFilter,
            (_, other) => Finish::Other(other.to_owned()),
        }
    }

    /// The chat API's `finish_reason`.
    pub fn chat(&self) -> &str {
        match self {
            Finish::Stop | Finish::StopSequence(_) => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
            Finish::ContentFilter => "content_filter",
            Finish::Other(other) => other,
        }
    }

    /// The Messages API's `stop_reason`.
    pub fn anthropic(&self) -> &str {
        match self {
            Finish::Stop => "end_turn",
            Finish::StopSequence(_) => "stop_sequence",
            Finish::Length => "max_tokens",
            Finish::ToolCalls => "tool_use",
            Finish::ContentFilter => "refusal",
            Finish::Other(other) => other,
        }
    }

    /// The finish reason the router's summary uses for `api` (the Responses
    /// API's read as chat's, see `response::summarize_responses`).
    pub fn for_summary(&self, api: ApiFormat) -> String {
        match api {
            ApiFormat::Anthropic => self.anthropic().to_owned(),
            _ => self.chat().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn each_api_reaches_each_provider_natively_or_through_translation_but_embeddings_only_natively() {
        assert_eq!(provider_api(ApiFormat::OpenAi, Provider::Anthropic), Some(ApiFormat::Anthropic));
        assert_eq!(provider_api(ApiFormat::Anthropic, Provider::Google), Some(ApiFormat::OpenAi));
        assert_eq!(provider_api(ApiFormat::Responses, Provider::OpenAi), Some(ApiFormat::Responses));
        assert_eq!(provider_api(ApiFormat::Responses, Provider::Mistral), Some(ApiFormat::OpenAi));
        assert_eq!(provider_api(ApiFormat::Responses, Provider::Anthropic), Some(ApiFormat::Anthropic));
        assert_eq!(provider_api(ApiFormat::Embeddings, Provider::Anthropic), None);
        assert_eq!(provider_api(ApiFormat::Embeddings, Provider::Google), Some(ApiFormat::Embeddings));
    }

    #[test]
    fn finish_reasons_map_between_the_apis() {
        assert_eq!(Finish::read(ApiFormat::Anthropic, "end_turn", None).chat(), "stop");
        assert_eq!(Finish::read(ApiFormat::Anthropic, "tool_use", None).chat(), "tool_calls");
        assert_eq!(Finish::read(ApiFormat::Anthropic, "max_tokens", None).chat(), "length");
        assert_eq!(Finish::read(ApiFormat::OpenAi, "length", None).anthropic(), "max_tokens");
        assert_eq!(Finish::read(ApiFormat::OpenAi, "tool_calls", None).anthropic(), "tool_use");
        assert_eq!(Finish::read(ApiFormat::OpenAi, "content_filter", None).anthropic(), "refusal");
        assert_eq!(
            Finish::read(ApiFormat::Anthropic, "stop_sequence", Some("END")),
            Finish::StopSequence(Some("END".into()))
        );
    }
}
