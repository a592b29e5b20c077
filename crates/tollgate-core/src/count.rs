//! Prompt token counts.
//!
//! OpenAI models are counted exactly with their tiktoken encoding
//! (`o200k_base` for gpt-4o, gpt-4.1, gpt-5 and the o-series; `cl100k_base`
//! for gpt-4 and gpt-3.5), including the chat framing OpenAI documents:
//! 3 tokens per message, 1 more when a message has a `name`, and 3 to prime
//! the reply. Two parts are estimates by nature, because OpenAI does not
//! publish the formula: declared tools (counted as their JSON text) and
//! images (85 tokens at low detail, 765 otherwise: a 1024×1024 tile estimate).
//!
//! Other models (Anthropic, Gemini, Mistral, Llama) do not use tiktoken.
//! Their counts are **estimates**: the `cl100k_base` count scaled by 1.15 for
//! Anthropic (Claude's tokenizer yields more tokens for the same text), and
//! the `o200k_base` count for the rest. Estimates err high, which suits
//! budget reservations; settlement always uses the provider's reported usage.

use crate::api::ApiFormat;
use crate::request::{ChatRequest, ImageDetail, Message};
use serde::Serialize;
pub use tollgate_tokens::Encoding;

/// How a model's prompt is counted.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum CountMethod {
    /// Exactly as the provider counts.
    Exact { encoding: &'static str },
    /// An estimate from another tokenizer, scaled.
    Estimate { encoding: &'static str, scale: f64 },
}

/// The encoding an OpenAI model uses, if it is one tiktoken knows.
pub fn openai_encoding(model: &str) -> Option<Encoding> {
    const O200K: &[&str] = &["gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-4o", "o1", "o3", "o4", "gpt-oss"];
    const CL100K: &[&str] = &["gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002"];
    if O200K.iter().any(|p| model.starts_with(p)) {
        Some(Encoding::O200kBase)
    } else if CL100K.iter().any(|p| model.starts_with(p)) {
        Some(Encoding::Cl100kBase)
    } else {
        None
    }
}

/// How prompts for `model` in `api` format are counted. When the exact
/// vocabulary was compiled out (a size-trimmed build), the other one gives
/// an estimate.
pub fn method_for(api: ApiFormat, model: &str) -> CountMethod {
    let cl100k = Encoding::Cl100kBase.is_available();
    // The Responses API's models are OpenAI's chat models, counted alike.
    let api = if api == ApiFormat::Responses { ApiFormat::OpenAi } else { api };
    match (api, openai_encoding(model)) {
        (ApiFormat::OpenAi, Some(enc)) if enc.is_available() => CountMethod::Exact { encoding: enc.name() },
        (ApiFormat::OpenAi, Some(Encoding::O200kBase)) if cl100k => {
            CountMethod::Estimate { encoding: Encoding::Cl100kBase.name(), scale: 0.9 }
        }
        (ApiFormat::OpenAi, Some(_)) => CountMethod::Estimate { encoding: Encoding::O200kBase.name(), scale: 1.1 },
        // Claude's tokenizer yields about 15% more tokens than cl100k, and
        // cl100k about 10% more than o200k on English text.
        (ApiFormat::Anthropic, _) if cl100k => {
            CountMethod::Estimate { encoding: Encoding::Cl100kBase.name(), scale: 1.15 }
        }
        (ApiFormat::Anthropic, _) => CountMethod::Estimate { encoding: Encoding::O200kBase.name(), scale: 1.25 },
        (ApiFormat::OpenAi, None) => CountMethod::Estimate { encoding: Encoding::O200kBase.name(), scale: 1.0 },
        // OpenAI's embedding models (text-embedding-3-*, ada-002) use cl100k_base.
        (ApiFormat::Embeddings, _) if cl100k && model.starts_with("text-embedding") => {
            CountMethod::Exact { encoding: Encoding::Cl100kBase.name() }
        }
        (ApiFormat::Embeddings, _) if cl100k => {
            CountMethod::Estimate { encoding: Encoding::Cl100kBase.name(), scale: 1.0 }
        }
        (ApiFormat::Embeddings, _) => CountMethod::Estimate { encoding: Encoding::O200kBase.name(), scale: 1.1 },
        (ApiFormat::Responses, _) => CountMethod::Estimate { encoding: Encoding::O200kBase.name(), scale: 1.0 },
    }
}

/// Whether two methods give the same number (same encoding and scale), so
/// a count made with one need not be redone for the other.
pub fn same_counting(a: CountMethod, b: CountMethod) -> bool {
    let parts = |m: CountMethod| match m {
        CountMethod::Exact { encoding } => (encoding, 1.0),
        CountMethod::Estimate { encoding, scale } => (encoding, scale),
    };
    parts(a) == parts(b)
}

/// Tokens in `text` under `encoding`. Falls back to a bytes/3 estimate only
/// when the vocabulary was compiled out.
pub fn count_text(encoding: Encoding, text: &str) -> u64 {
    match tollgate_tokens::count(encoding, text) {
        Some(n) => n as u64,
        None => (text.len() as u64).div_ceil(3),
    }
}

const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
const REPLY_PRIMING: u64 = 3;

/// Tokens of one page of a file, as the Responses API reads a PDF: its
/// extracted text and an image of the page.
const FILE_PAGE_TOKENS: u64 = 1_500;
/// File bytes per page assumed for a file sent inline.
const FILE_BYTES_PER_PAGE: u64 = 20_000;
/// A file sent by id or URL, whose size the router cannot see: ten pages.
const UNSEEN_FILE_TOKENS: u64 = 10 * FILE_PAGE_TOKENS;

/// An estimate of an `input_file` part's tokens: from its inline
/// `file_data` (base64, possibly a data URL), a page per 20 KB decoded (at
/// least one); a file by id or URL counts as ten pages. The answer's usage
/// settles the real count.
pub fn file_tokens(file_data: Option<&str>) -> u64 {
    let Some(data) = file_data else { return UNSEEN_FILE_TOKENS };
    let base64 = data.split_once(',').map_or(data, |(_, b)| b);
    let bytes = (base64.len() as u64).saturating_mul(3) / 4;
    bytes.div_ceil(FILE_BYTES_PER_PAGE).max(1).saturating_mul(FILE_PAGE_TOKENS)
}

fn image_tokens(images: &[ImageDetail]) -> u64 {
    images.iter().map(|d| if *d == ImageDetail::Low { 85 } else { 765 }).sum()
}

fn message_tokens(enc: Encoding, m: &Message) -> u64 {
    let mut n = TOKENS_PER_MESSAGE + count_text(enc, m.role.as_str()) + count_text(enc, &m.text);
    if let Some(name) = &m.name {
        n += TOKENS_PER_NAME + count_text(enc, name);
    }
    if !m.tool_text.is_empty() {
        n += count_text(enc, &m.tool_text);
    }
    n + image_tokens(&m.images) + m.file_tokens
}

/// A prompt's token count and how it was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PromptCount {
    pub tokens: u64,
    #[serde(flatten)]
    pub method: CountMethod,
}

/// Count a whole request's prompt as `model` would see it.
pub fn prompt_tokens(request: &ChatRequest, model: &str) -> PromptCount {
    let method = method_for(request.api, model);
    let (enc, scale) = match method {
        CountMethod::Exact { encoding } | CountMethod::Estimate { encoding, .. } => (
            Encoding::from_name(encoding).unwrap_or(Encoding::O200kBase),
            match method {
                CountMethod::Estimate { scale, .. } => scale,
                CountMethod::Exact { .. } => 1.0,
            },
        ),
    };
    if let Some(inputs) = &request.embedding_inputs {
        // Embeddings have no chat framing: each input's own tokens.
        // Token ids are already tokens: only text is estimated.
        let n: u64 = inputs.texts.iter().map(|t| count_text(enc, t)).fold(0, u64::saturating_add);
        let texts = if scale == 1.0 { n } else { (n as f64 * scale).ceil() as u64 };
        return PromptCount { tokens: texts.saturating_add(inputs.token_ids), method };
    }
    let mut n: u64 = request.messages.iter().map(|m| message_tokens(enc, m)).sum();
    if !request.system.is_empty() {
        n += TOKENS_PER_MESSAGE + count_text(enc, &request.system);
    }
    if !request.tools_text.is_empty() {
        n += count_text(enc, &request.tools_text);
    }
    n += REPLY_PRIMING;
    let tokens = if scale == 1.0 { n } else { (n as f64 * scale).ceil() as u64 };
    PromptCount { tokens, method }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn an_input_file_counts_a_page_per_20_kb_inline_and_ten_pages_by_id() {
        assert_eq!(file_tokens(Some("data:application/pdf;base64,AAAA")), FILE_PAGE_TOKENS);
        // 80,000 base64 characters are 60,000 bytes: three pages.
        let inline = "A".repeat(80_000);
        assert_eq!(file_tokens(Some(&inline)), 3 * FILE_PAGE_TOKENS);
        assert_eq!(file_tokens(None), UNSEEN_FILE_TOKENS);
        let with_file = |part: &str| {
            let body = format!(
                r#"{{"model":"gpt-4o-mini","input":[{{"role":"user","content":[{{"type":"input_text","text":"Summarise"}},{part}]}}]}}"#
            );
            let request = ChatRequest::parse(ApiFormat::Responses, body.as_bytes(), 1 << 20).unwrap();
            prompt_tokens(&request, "gpt-4o-mini").tokens
        };
        let text_only = with_file(r#"{"type":"input_text","text":""}"#);
        let by_id = with_file(r#"{"type":"input_file","file_id":"file-1"}"#);
        // (The empty text part adds a newline to the text: one token at most.)
        assert!((by_id - text_only).abs_diff(UNSEEN_FILE_TOKENS) <= 1, "{by_id} - {text_only}");
    }

    #[test]
    fn model_families_map_to_their_documented_encodings() {
        assert_eq!(openai_encoding("gpt-4o-mini"), Some(Encoding::O200kBase));
        assert_eq!(openai_encoding("gpt-4.1-nano"), Some(Encoding::O200kBase));
        assert_eq!(openai_encoding("o3-mini"), Some(Encoding::O200kBase));
        assert_eq!(openai_encoding("gpt-5"), Some(Encoding::O200kBase));
        assert_eq!(openai_encoding("gpt-4-turbo"), Some(Encoding::Cl100kBase));
        assert_eq!(openai_encoding("gpt-3.5-turbo"), Some(Encoding::Cl100kBase));
        assert_eq!(openai_encoding("mistral-small-latest"), None);
        assert!(matches!(method_for(ApiFormat::Anthropic, "claude-sonnet-4-5"), CountMethod::Estimate { .. }));
    }

    #[test]
    fn chat_framing_matches_openais_published_example() {
        // OpenAI's cookbook example: these seven messages are 129 prompt tokens
        // for gpt-4o-class models (o200k_base), as the API reports.
        let body = serde_json::json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
            {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
            {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
            {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
            {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
            {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."}
        ]});
        let req = ChatRequest::parse(ApiFormat::OpenAi, body.to_string().as_bytes(), 1 << 20).unwrap();
        let count = prompt_tokens(&req, "gpt-4o");
        assert_eq!(count.tokens, 124);
        let count = prompt_tokens(&req, "gpt-4");
        assert_eq!(count.tokens, 129);
    }

    #[test]
    fn message_framing_equals_tiktoken_counts_plus_overhead() {
        let bpe = tiktoken_rs::o200k_base().unwrap();
        let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "Write a haiku about the sea, then explain it step by step."}
        ]});
        let req = ChatRequest::parse(ApiFormat::OpenAi, body.to_string().as_bytes(), 1 << 20).unwrap();
        let want = 3
            + bpe.encode_ordinary("user").len() as u64
            + bpe.encode_ordinary("Write a haiku about the sea, then explain it step by step.").len() as u64
            + 3;
        assert_eq!(prompt_tokens(&req, "gpt-4o-mini").tokens, want);
    }
}
