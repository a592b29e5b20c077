//! Where a request can go: the [`Provider`]s tollgate forwards to and a
//! [`ModelRef`], a concrete model at one of them (`"provider/model"` in a
//! tenant config).

use crate::api::ApiFormat;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A provider tollgate can forward to. Each speaks one API format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    #[serde(rename = "openai")]
    OpenAi,
    Anthropic,
    Google,
    Mistral,
    WorkersAi,
}

impl Provider {
    pub const ALL: [Provider; 5] =
        [Provider::OpenAi, Provider::Anthropic, Provider::Google, Provider::Mistral, Provider::WorkersAi];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Google => "google",
            Provider::Mistral => "mistral",
            Provider::WorkersAi => "workers_ai",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Provider::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The wire format the provider's endpoint speaks. Google, Mistral and
    /// Workers AI are reached through their OpenAI-compatible endpoints.
    pub fn api(self) -> ApiFormat {
        match self {
            Provider::Anthropic => ApiFormat::Anthropic,
            _ => ApiFormat::OpenAi,
        }
    }

    /// The provider a bare model name belongs to.
    pub fn infer(model: &str) -> Provider {
        if model.starts_with("claude") {
            Provider::Anthropic
        } else if model.starts_with("gemini") {
            Provider::Google
        } else if model.starts_with("mistral") || model.starts_with("codestral") || model.starts_with("ministral") {
            Provider::Mistral
        } else if model.starts_with("@cf/") {
            Provider::WorkersAi
        } else {
            Provider::OpenAi
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A concrete model at a provider.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ModelRef {
    pub provider: Provider,
    pub model: String,
}

impl ModelRef {
    /// `"provider/model"` or a bare model name (provider inferred).
    pub fn parse(text: &str) -> Option<ModelRef> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if let Some((head, rest)) = text.split_once('/')
            && let Some(provider) = Provider::from_name(head)
        {
            return (!rest.is_empty()).then(|| ModelRef { provider, model: rest.to_owned() });
        }
        Some(ModelRef { provider: Provider::infer(text), model: text.to_owned() })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn model_refs_parse_with_explicit_or_inferred_providers() {
        assert_eq!(ModelRef::parse("anthropic/claude-3-5-haiku-latest").unwrap().provider, Provider::Anthropic);
        assert_eq!(ModelRef::parse("claude-sonnet-4-5").unwrap().provider, Provider::Anthropic);
        let cf = ModelRef::parse("@cf/meta/llama-3.1-8b-instruct").unwrap();
        assert_eq!((cf.provider, cf.model.as_str()), (Provider::WorkersAi, "@cf/meta/llama-3.1-8b-instruct"));
        assert_eq!(ModelRef::parse("gpt-4o").unwrap().provider, Provider::OpenAi);
        assert!(ModelRef::parse("  ").is_none());
    }
}
