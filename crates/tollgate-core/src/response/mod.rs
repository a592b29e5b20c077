//! The response side of a routed request: what the provider sent back.
//!
//! Everything here is a pure function of the bytes handed in:
//!
//! * [`summarize_json`] reads a non-streamed body: usage, finish reason,
//!   tool calls, model.
//! * [`SseParser`] splits a Server-Sent-Events byte stream into events, however
//!   the bytes were chunked.
//! * [`StreamObserver`] watches a streamed response pass through, optionally
//!   hides the usage-only chunk the router asked for on the client's behalf,
//!   and at the end assembles the equivalent non-streamed body for the cache.
//! * [`replay_as_sse`] turns such a cached body back into a stream the official
//!   SDKs accept.
//!
//! Nothing here panics on any input: provider bodies are parsed leniently
//! (unknown fields and nulls are ignored, token counts may arrive as strings
//! or floats), and every buffer is bounded.

mod observe;
mod replay;
mod sse;
mod usage;

pub use observe::{StreamObserver, StreamOutcome};
pub use replay::replay_as_sse;
pub use sse::{SseEvent, SseParser};
pub(crate) use usage::{AnthropicTokens, openai_usage, token_count};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::ApiFormat;

/// Token usage a provider reported for one response.
///
/// Invariant: `cached_input_tokens + cache_write_input_tokens <= input_tokens`
/// (OpenAI's cached count is clamped to `prompt_tokens`; Anthropic's total is
/// built from the parts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// All prompt tokens, including cache reads and cache writes: OpenAI
    /// `prompt_tokens`; Anthropic `input_tokens + cache_read_input_tokens +
    /// cache_creation_input_tokens`.
    pub input_tokens: u64,
    /// Prompt tokens served from the provider's cache: OpenAI
    /// `prompt_tokens_details.cached_tokens`; Anthropic `cache_read_input_tokens`.
    pub cached_input_tokens: u64,
    /// Prompt tokens written to the provider's cache: Anthropic
    /// `cache_creation_input_tokens`; always 0 for OpenAI.
    pub cache_write_input_tokens: u64,
    /// Generated tokens: OpenAI `completion_tokens` (reasoning included);
    /// Anthropic `output_tokens`.
    pub output_tokens: u64,
}

/// What the router needs to know about one complete or partial response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResponseSummary {
    /// The usage the provider reported, if it reported any.
    pub usage: Option<Usage>,
    /// OpenAI `choices[0].finish_reason` (`"stop"`, `"length"`, `"tool_calls"`,
    /// `"content_filter"`, ...); Anthropic `stop_reason` (`"end_turn"`,
    /// `"max_tokens"`, `"stop_sequence"`, `"tool_use"`, ...).
    pub finish_reason: Option<String>,
    /// Any OpenAI choice with `tool_calls` / `function_call`; any Anthropic
    /// `tool_use` content block.
    pub has_tool_calls: bool,
    /// JSON: parsed and has a finish/stop reason. Stream: saw the terminal
    /// event (`[DONE]` or `message_stop`) with a finish reason and no error.
    pub complete: bool,
    /// The model the provider says answered.
    pub model: Option<String>,
    /// Rough output tokens from the generated text seen (content, refusals,
    /// tool names and arguments, thinking): its UTF-8 bytes / 3, rounded up,
    /// erring high like the prompt counter's fallback. For settling when the
    /// provider reported no usage (an aborted stream, a provider that omits
    /// it); prefer `usage` whenever it is there.
    pub output_tokens_estimate: u64,
    /// Calls of the Responses API's built-in tools, by tool
    /// (`web_search`, `file_search`, ...), as the answer's output items say.
    pub builtin_calls: Vec<(String, u64)>,
}

/// Why a response body could not be read or replayed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResponseError {
    /// The body is not valid JSON (or nests deeper than the parser allows).
    #[error("response body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body is valid JSON but not an object.
    #[error("response body is not a JSON object")]
    NotAnObject,
    /// The body is an object but lacks something a response must have.
    #[error("response body has an unexpected shape: {0}")]
    UnexpectedShape(String),
    /// The body is a valid response whose content cannot be rendered as a
    /// stream (tool calls, non-text blocks, logprobs, ...).
    #[error("response cannot be replayed as a stream: {0}")]
    NotReplayable(String),
    /// Serialising the replayed stream failed.
    #[error("could not serialise the replayed stream: {0}")]
    Serialize(String),
}

/// Summarise a non-streamed JSON response body.
///
/// Errors only when the body is not JSON or not an object. A provider error
/// object (`{"error": ...}`, `{"type": "error", ...}`) summarises as
/// incomplete with no usage, because it has no finish reason.
pub fn summarize_json(api: ApiFormat, body: &[u8]) -> Result<ResponseSummary, ResponseError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let value: Value = serde_json::from_slice(body).map_err(|e| ResponseError::InvalidJson(e.to_string()))?;
    let obj = value.as_object().ok_or(ResponseError::NotAnObject)?;
    Ok(match api {
        ApiFormat::OpenAi => summarize_openai(obj),
        ApiFormat::Anthropic => summarize_anthropic(obj),
        ApiFormat::Embeddings => summarize_embeddings(obj),
        ApiFormat::Responses => summarize_responses(obj),
    })
}

/// A Responses API `response` object: `status` `completed` reads as the
/// finish reason `"stop"`, `incomplete` for `max_output_tokens` as
/// `"length"` (any other reason under its own name); an output item that
/// calls a tool (`function_call`, or a built-in `*_call`) is a tool call.
pub(crate) fn summarize_responses(obj: &Map<String, Value>) -> ResponseSummary {
    let status = obj.get("status").and_then(Value::as_str);
    let finish_reason = match status {
        Some("completed") => Some("stop".to_owned()),
        Some("incomplete") => {
            Some(match obj.get("incomplete_details").and_then(|d| d.get("reason")).and_then(Value::as_str) {
                Some("max_output_tokens") | None => "length".to_owned(),
                Some(other) => other.to_owned(),
            })
        }
        _ => None,
    };
    let output = obj.get("output").and_then(Value::as_array);
    let has_tool_calls = output.is_some_and(|items| {
        items.iter().any(|item| item.get("type").and_then(Value::as_str).is_some_and(|t| t.ends_with("_call")))
    });
    let generated =
        output.map_or(0, |items| items.iter().fold(0, |sum: u64, i| sum.saturating_add(generated_text_bytes(i))));
    let mut builtin_calls: Vec<(String, u64)> = Vec::new();
    for kind in output.into_iter().flatten().filter_map(|i| i.get("type").and_then(Value::as_str)) {
        if let Some(tool) = crate::pricing::builtin_tool_of_call(kind) {
            match builtin_calls.iter_mut().find(|(t, _)| t == tool) {
                Some((_, n)) => *n = n.saturating_add(1),
                None => builtin_calls.push((tool.to_owned(), 1)),
            }
        }
    }
    ResponseSummary {
        usage: obj.get("usage").and_then(usage::responses_usage),
        complete: finish_reason.is_some(),
        finish_reason,
        has_tool_calls,
        model: string_field(obj, "model"),
        output_tokens_estimate: estimate_tokens(generated),
        builtin_calls,
    }
}

/// An embeddings answer is complete when it carries one embedding per
/// item; it has no finish reason, so a complete one reads as `"stop"` (it
/// ended naturally) for the cache's admission rule.
fn summarize_embeddings(obj: &Map<String, Value>) -> ResponseSummary {
    let complete = obj.get("data").and_then(Value::as_array).is_some_and(|data| {
        !data.is_empty() && data.iter().all(|item| item.get("embedding").is_some_and(|e| e.is_array() || e.is_string()))
    });
    ResponseSummary {
        usage: obj.get("usage").and_then(usage::openai_usage),
        complete,
        finish_reason: complete.then(|| "stop".to_owned()),
        has_tool_calls: false,
        model: string_field(obj, "model"),
        output_tokens_estimate: 0,
        builtin_calls: Vec::new(),
    }
}

fn summarize_openai(obj: &Map<String, Value>) -> ResponseSummary {
    let choices = obj.get("choices").and_then(Value::as_array);
    let finish_reason =
        choices.and_then(|c| c.first()).and_then(|c| c.get("finish_reason")).and_then(Value::as_str).map(str::to_owned);
    let has_tool_calls = choices.is_some_and(|choices| {
        choices.iter().any(|choice| {
            choice.get("message").is_some_and(|m| carries(m.get("tool_calls")) || carries(m.get("function_call")))
        })
    });
    let generated = choices.map_or(0, |choices| {
        choices
            .iter()
            .filter_map(|choice| choice.get("message"))
            .fold(0, |sum: u64, m| sum.saturating_add(generated_text_bytes(m)))
    });
    ResponseSummary {
        usage: obj.get("usage").and_then(usage::openai_usage),
        complete: finish_reason.is_some(),
        finish_reason,
        has_tool_calls,
        model: string_field(obj, "model"),
        output_tokens_estimate: estimate_tokens(generated),
        builtin_calls: Vec::new(),
    }
}

fn summarize_anthropic(obj: &Map<String, Value>) -> ResponseSummary {
    let finish_reason = string_field(obj, "stop_reason");
    let blocks = obj.get("content").filter(|c| c.is_array());
    let has_tool_calls = blocks
        .and_then(Value::as_array)
        .is_some_and(|blocks| blocks.iter().any(|b| b.get("type").and_then(Value::as_str) == Some("tool_use")));
    ResponseSummary {
        usage: obj.get("usage").map(usage::AnthropicTokens::from_value).and_then(usage::AnthropicTokens::to_usage),
        complete: finish_reason.is_some(),
        finish_reason,
        has_tool_calls,
        model: string_field(obj, "model"),
        output_tokens_estimate: estimate_tokens(blocks.map_or(0, generated_text_bytes)),
        builtin_calls: Vec::new(),
    }
}

/// `obj[key]` when it is a string.
fn string_field(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Keys whose string values are metadata, not generated text.
const NOT_GENERATED: &[&str] = &[
    "type",
    "id",
    "role",
    "index",
    "signature",
    "finish_reason",
    "stop_reason",
    "logprobs",
    "annotations",
    "citations",
    "data",
];

/// UTF-8 bytes of the generated text in `value`: every string inside it,
/// except under the [`NOT_GENERATED`] keys. Object keys are not counted.
fn generated_text_bytes(value: &Value) -> u64 {
    let mut total: u64 = 0;
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::String(s) => total = total.saturating_add(s.len() as u64),
            Value::Array(items) => stack.extend(items),
            Value::Object(obj) => {
                stack.extend(obj.iter().filter(|(key, _)| !NOT_GENERATED.contains(&key.as_str())).map(|(_, v)| v))
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    total
}

/// Tokens for `bytes` of generated text, erring high.
fn estimate_tokens(bytes: u64) -> u64 {
    bytes.div_ceil(3)
}

/// Whether a field carries something: present and not null, `""`, `[]` or `{}`.
fn carries(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Bool(_) | Value::Number(_)) => true,
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn openai(body: &str) -> ResponseSummary {
        summarize_json(ApiFormat::OpenAi, body.as_bytes()).unwrap()
    }

    fn anthropic(body: &str) -> ResponseSummary {
        summarize_json(ApiFormat::Anthropic, body.as_bytes()).unwrap()
    }

    const OPENAI_BODY: &str = r#"{
        "id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "Hi!", "refusal": null, "annotations": []},
            "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 30, "total_tokens": 1230,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 10}},
        "service_tier": "default", "system_fingerprint": "fp_1"
    }"#;

    const ANTHROPIC_BODY: &str = r#"{
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hi!"}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 25, "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 2000, "output_tokens": 12, "service_tier": "standard"}
    }"#;

    #[test]
    fn openai_json_reports_prompt_cached_and_completion_tokens() {
        let s = openai(OPENAI_BODY);
        assert_eq!(
            s.usage,
            Some(Usage {
                input_tokens: 1200,
                cached_input_tokens: 1024,
                cache_write_input_tokens: 0,
                output_tokens: 30,
            })
        );
        assert_eq!(s.finish_reason.as_deref(), Some("stop"));
        assert_eq!(s.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        assert!(s.complete);
        assert!(!s.has_tool_calls);
    }

    #[test]
    fn anthropic_json_input_tokens_include_cache_reads_and_writes() {
        let s = anthropic(ANTHROPIC_BODY);
        assert_eq!(
            s.usage,
            Some(Usage {
                input_tokens: 2125,
                cached_input_tokens: 2000,
                cache_write_input_tokens: 100,
                output_tokens: 12,
            })
        );
        assert_eq!(s.finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(s.model.as_deref(), Some("claude-sonnet-4-5"));
        assert!(s.complete);
    }

    #[test]
    fn null_empty_or_missing_usage_gives_no_usage() {
        for body in [
            r#"{"choices":[{"message":{"content":"x"},"finish_reason":"stop"}],"usage":null}"#,
            r#"{"choices":[{"message":{"content":"x"},"finish_reason":"stop"}],"usage":{}}"#,
            r#"{"choices":[{"message":{"content":"x"},"finish_reason":"stop"}]}"#,
        ] {
            let s = openai(body);
            assert_eq!(s.usage, None, "{body}");
            assert!(s.complete);
        }
        for body in [
            r#"{"stop_reason":"end_turn","usage":null}"#,
            r#"{"stop_reason":"end_turn"}"#,
            r#"{"stop_reason":"end_turn","usage":{"input_tokens":null,"output_tokens":null}}"#,
        ] {
            assert_eq!(anthropic(body).usage, None, "{body}");
        }
    }

    #[test]
    fn null_detail_fields_count_as_zero() {
        let s = openai(r#"{"usage":{"prompt_tokens":10,"completion_tokens":null,"prompt_tokens_details":null}}"#);
        assert_eq!(s.usage, Some(Usage { input_tokens: 10, ..Usage::default() }));
        let s = anthropic(r#"{"usage":{"input_tokens":10,"cache_read_input_tokens":null,"output_tokens":3}}"#);
        assert_eq!(s.usage, Some(Usage { input_tokens: 10, output_tokens: 3, ..Usage::default() }));
    }

    #[test]
    fn tool_calls_are_detected_in_both_formats() {
        let s = openai(
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]},
            "finish_reason":"tool_calls"}]}"#,
        );
        assert!(s.has_tool_calls);
        assert_eq!(s.finish_reason.as_deref(), Some("tool_calls"));
        let s = openai(
            r#"{"choices":[{"message":{"function_call":{"name":"f","arguments":"{}"}},"finish_reason":"function_call"}]}"#,
        );
        assert!(s.has_tool_calls);
        let s = openai(
            r#"{"choices":[{"message":{"content":"x","tool_calls":[],"function_call":null},"finish_reason":"stop"}]}"#,
        );
        assert!(!s.has_tool_calls);
        let s = anthropic(
            r#"{"content":[{"type":"text","text":"let me look"},
            {"type":"tool_use","id":"toolu_1","name":"f","input":{}}],"stop_reason":"tool_use"}"#,
        );
        assert!(s.has_tool_calls);
    }

    #[test]
    fn a_response_without_a_finish_reason_is_not_complete() {
        assert!(!openai(r#"{"choices":[{"message":{"content":"x"},"finish_reason":null}]}"#).complete);
        assert!(!openai(r#"{"choices":[]}"#).complete);
        assert!(!anthropic(r#"{"content":[],"stop_reason":null}"#).complete);
    }

    #[test]
    fn an_error_body_summarises_as_incomplete_without_usage() {
        let s = openai(r#"{"error":{"message":"Rate limit","type":"requests","code":"rate_limit_exceeded"}}"#);
        assert_eq!(s, ResponseSummary::default());
        let s = anthropic(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
        assert_eq!(s, ResponseSummary::default());
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        for body in [&b""[..], b"{", b"\xff\xfe\x00", b"null,", b"{\"usage\": }"] {
            assert!(matches!(summarize_json(ApiFormat::OpenAi, body), Err(ResponseError::InvalidJson(_))));
        }
        for body in ["[]", "null", "42", "\"text\""] {
            assert_eq!(summarize_json(ApiFormat::Anthropic, body.as_bytes()), Err(ResponseError::NotAnObject));
        }
    }

    #[test]
    fn deeply_nested_json_is_rejected_without_overflowing_the_stack() {
        let depth = 100_000;
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(matches!(summarize_json(ApiFormat::OpenAi, body.as_bytes()), Err(ResponseError::InvalidJson(_))));
        let body = format!(r#"{{"usage":{}1{}}}"#, r#"{"a":"#.repeat(depth), "}".repeat(depth));
        assert!(summarize_json(ApiFormat::Anthropic, body.as_bytes()).is_err());
    }

    #[test]
    fn token_counts_as_strings_floats_or_negatives_are_read_sensibly() {
        let s = openai(
            r#"{"usage":{"prompt_tokens":"120","completion_tokens":7.9,
            "prompt_tokens_details":{"cached_tokens":-5}}}"#,
        );
        assert_eq!(
            s.usage,
            Some(Usage { input_tokens: 120, cached_input_tokens: 0, cache_write_input_tokens: 0, output_tokens: 7 })
        );
        let s = anthropic(r#"{"usage":{"input_tokens":-3,"output_tokens":"nope","cache_read_input_tokens":" 40 "}}"#);
        assert_eq!(
            s.usage,
            Some(Usage { input_tokens: 40, cached_input_tokens: 40, cache_write_input_tokens: 0, output_tokens: 0 })
        );
        let s = anthropic(
            r#"{"usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":1e300,
            "cache_creation_input_tokens":99999999999999999999999,"output_tokens":true}}"#,
        );
        assert_eq!(
            s.usage,
            Some(Usage {
                input_tokens: u64::MAX,
                cached_input_tokens: u64::MAX,
                cache_write_input_tokens: u64::MAX,
                output_tokens: 0,
            })
        );
    }

    #[test]
    fn openai_cached_tokens_never_exceed_prompt_tokens() {
        let s = openai(
            r#"{"usage":{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":50}}}"#,
        );
        assert_eq!(s.usage.map(|u| u.cached_input_tokens), Some(10));
    }

    #[test]
    fn wrong_types_in_known_fields_are_ignored() {
        let s = openai(r#"{"choices":{"0":1},"usage":[1,2],"model":7}"#);
        assert_eq!(s, ResponseSummary::default());
        let s = anthropic(r#"{"content":"text","usage":"many","model":null,"stop_reason":5}"#);
        assert_eq!(s, ResponseSummary::default());
        let s = openai(r#"{"choices":[null,1,"x"],"usage":{"prompt_tokens":{"a":1}}}"#);
        assert_eq!(s, ResponseSummary::default());
    }

    #[test]
    fn output_is_estimated_from_generated_text_only() {
        // "Hi!" is 3 bytes: one token.
        assert_eq!(openai(OPENAI_BODY).output_tokens_estimate, 1);
        assert_eq!(anthropic(ANTHROPIC_BODY).output_tokens_estimate, 1);
        let s = openai(
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"call_abcdefghijklmnop","type":"function",
            "function":{"name":"get","arguments":"{\"q\":1}"}}]},"finish_reason":"tool_calls"}]}"#,
        );
        // "get" + `{"q":1}`: 10 bytes.
        assert_eq!(s.output_tokens_estimate, 4);
        let s = anthropic(
            r#"{"content":[{"type":"thinking","thinking":"abc","signature":"zzzzzzzzzzzz"},
            {"type":"tool_use","id":"toolu_1","name":"get","input":{"q":"abcdef"}}],"stop_reason":"tool_use"}"#,
        );
        assert_eq!(s.output_tokens_estimate, 4);
    }

    #[test]
    fn a_leading_byte_order_mark_is_tolerated() {
        let body = format!("\u{feff}{ANTHROPIC_BODY}");
        assert!(anthropic(&body).complete);
    }

    #[test]
    fn usage_serialises_with_its_field_names() {
        let u = Usage { input_tokens: 1, cached_input_tokens: 2, cache_write_input_tokens: 3, output_tokens: 4 };
        let v = serde_json::to_value(u).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"input_tokens":1,"cached_input_tokens":2,"cache_write_input_tokens":3,"output_tokens":4})
        );
        assert_eq!(serde_json::from_value::<Usage>(v).unwrap(), u);
    }
}
