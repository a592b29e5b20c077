//! Whole answers: a provider's JSON answer (or error) in the client's API.

use super::{AnswerContext, Finish};
use crate::api::ApiFormat;
use crate::response::{self, AnthropicTokens, Usage};
use serde_json::{Map, Value, json};

/// One answer, in no API's shape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    pub model: String,
    pub text: String,
    pub refusal: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub finish: Option<Finish>,
    pub usage: Option<NeutralUsage>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

/// Usage with every count the three APIs report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeutralUsage {
    /// All prompt tokens, cache reads and writes included.
    pub input: u64,
    pub cached: u64,
    pub cache_write: u64,
    pub output: u64,
    pub reasoning: u64,
}

impl From<Usage> for NeutralUsage {
    fn from(u: Usage) -> Self {
        NeutralUsage {
            input: u.input_tokens,
            cached: u.cached_input_tokens,
            cache_write: u.cache_write_input_tokens,
            output: u.output_tokens,
            reasoning: 0,
        }
    }
}

impl NeutralUsage {
    /// From a chat `usage` object (read as the router reads it for pricing).
    pub fn from_chat(u: &Value) -> NeutralUsage {
        let mut usage = NeutralUsage::from(response::openai_usage(u).unwrap_or_default());
        usage.reasoning = response::token_count(u.pointer("/completion_tokens_details/reasoning_tokens")).unwrap_or(0);
        usage
    }

    /// From Anthropic's usage counts (one object, or a stream's merged).
    pub(crate) fn from_anthropic_tokens(tokens: AnthropicTokens) -> NeutralUsage {
        tokens.to_usage().map(NeutralUsage::from).unwrap_or_default()
    }

    /// From an Anthropic `usage` object.
    pub fn from_anthropic(u: &Value) -> NeutralUsage {
        NeutralUsage::from_anthropic_tokens(AnthropicTokens::from_value(u))
    }

    pub fn chat(&self) -> Value {
        json!({
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.input.saturating_add(self.output),
            "prompt_tokens_details": { "cached_tokens": self.cached },
            "completion_tokens_details": { "reasoning_tokens": self.reasoning },
        })
    }

    pub fn anthropic(&self) -> Value {
        json!({
            "input_tokens": self.input.saturating_sub(self.cached).saturating_sub(self.cache_write),
            "cache_read_input_tokens": self.cached,
            "cache_creation_input_tokens": self.cache_write,
            "output_tokens": self.output,
        })
    }

    pub fn responses(&self) -> Value {
        json!({
            "input_tokens": self.input,
            "input_tokens_details": { "cached_tokens": self.cached },
            "output_tokens": self.output,
            "output_tokens_details": { "reasoning_tokens": self.reasoning },
            "total_tokens": self.input.saturating_add(self.output),
        })
    }
}

impl Answer {
    /// Read a provider's answer; None when it is not one.
    pub fn read(api: ApiFormat, value: &Value) -> Option<Answer> {
        match api {
            ApiFormat::OpenAi => Answer::read_chat(value),
            ApiFormat::Anthropic => Answer::read_anthropic(value),
            _ => None,
        }
    }

    fn read_chat(value: &Value) -> Option<Answer> {
        let choice = value.get("choices")?.get(0)?;
        let message = choice.get("message")?;
        let tool_calls = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| ToolCall {
                id: c.get("id").and_then(Value::as_str).unwrap_or_default().to_owned(),
                name: c.pointer("/function/name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                arguments: c.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}").to_owned(),
            })
            .collect();
        Some(Answer {
            model: value.get("model").and_then(Value::as_str).unwrap_or_default().to_owned(),
            text: message.get("content").and_then(Value::as_str).unwrap_or_default().to_owned(),
            refusal: message.get("refusal").and_then(Value::as_str).filter(|r| !r.is_empty()).map(str::to_owned),
            tool_calls,
            finish: choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(|r| Finish::read(ApiFormat::OpenAi, r, None)),
            usage: value.get("usage").filter(|u| u.is_object()).map(NeutralUsage::from_chat),
        })
    }

    fn read_anthropic(value: &Value) -> Option<Answer> {
        let blocks = value.get("content")?.as_array()?;
        let mut answer = Answer {
            model: value.get("model").and_then(Value::as_str).unwrap_or_default().to_owned(),
            usage: value.get("usage").filter(|u| u.is_object()).map(NeutralUsage::from_anthropic),
            ..Answer::default()
        };
        for block in blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => answer.text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
                Some("tool_use") => answer.tool_calls.push(ToolCall {
                    id: block.get("id").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    name: block.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    arguments: block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                }),
                // Thinking is never asked for through translation.
                _ => {}
            }
        }
        let stop_sequence = value.get("stop_sequence").and_then(Value::as_str);
        answer.finish = value
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(|r| Finish::read(ApiFormat::Anthropic, r, stop_sequence));
        Some(answer)
    }

    /// The answer in `api`'s shape.
    pub fn write(&self, api: ApiFormat, ctx: &AnswerContext) -> Value {
        match api {
            ApiFormat::Anthropic => self.write_anthropic(ctx),
            ApiFormat::Responses => self.write_responses(ctx, "completed"),
            _ => self.write_chat(ctx),
        }
    }

    fn write_chat(&self, ctx: &AnswerContext) -> Value {
        let mut message = Map::new();
        message.insert("role".into(), json!("assistant"));
        let content = if self.text.is_empty() && (self.refusal.is_some() || !self.tool_calls.is_empty()) {
            Value::Null
        } else {
            json!(self.text)
        };
        message.insert("content".into(), content);
        message.insert("refusal".into(), self.refusal.as_ref().map_or(Value::Null, |r| json!(r)));
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .iter()
                .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
                .collect();
            message.insert("tool_calls".into(), Value::Array(calls));
        }
        let mut out = json!({
            "id": format!("chatcmpl-{}", ctx.id_seed),
            "object": "chat.completion",
            "created": ctx.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": self.finish.as_ref().map(Finish::chat),
            }],
        });
        if let (Some(usage), Some(obj)) = (self.usage, out.as_object_mut()) {
            obj.insert("usage".into(), usage.chat());
        }
        out
    }

    fn write_anthropic(&self, ctx: &AnswerContext) -> Value {
        let mut content: Vec<Value> = Vec::new();
        let text = match &self.refusal {
            Some(r) if self.text.is_empty() => r.as_str(),
            _ => self.text.as_str(),
        };
        if !text.is_empty() || self.tool_calls.is_empty() {
            content.push(json!({ "type": "text", "text": text }));
        }
        for call in &self.tool_calls {
            content.push(
                json!({ "type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(&call.arguments) }),
            );
        }
        let stop_sequence = match &self.finish {
            Some(Finish::StopSequence(Some(s))) => json!(s),
            _ => Value::Null,
        };
        json!({
            "id": format!("msg_{}", ctx.id_seed),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.finish.as_ref().map(Finish::anthropic),
            "stop_sequence": stop_sequence,
            "usage": self.usage.unwrap_or_default().anthropic(),
        })
    }

    /// A Responses `response` object; `status` for a stream still going.
    pub(super) fn write_responses(&self, ctx: &AnswerContext, status: &str) -> Value {
        let mut output: Vec<Value> = Vec::new();
        if !self.text.is_empty() || self.refusal.is_some() {
            let part = match &self.refusal {
                Some(r) if self.text.is_empty() => json!({ "type": "refusal", "refusal": r }),
                _ => json!({ "type": "output_text", "text": self.text, "annotations": [] }),
            };
            output.push(json!({
                "type": "message",
                "id": format!("msg_{}", ctx.id_seed),
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }));
        }
        for (i, call) in self.tool_calls.iter().enumerate() {
            output.push(json!({
                "type": "function_call",
                "id": format!("fc_{}_{i}", ctx.id_seed),
                "call_id": call.id,
                "name": call.name,
                "arguments": call.arguments,
                "status": "completed",
            }));
        }
        let (status, incomplete) = match (status, &self.finish) {
            ("completed", Some(Finish::Length)) => ("incomplete", json!({ "reason": "max_output_tokens" })),
            ("completed", Some(Finish::ContentFilter)) => ("incomplete", json!({ "reason": "content_filter" })),
            (status, _) => (status, Value::Null),
        };
        let mut response = json!({
            "id": format!("resp_{}", ctx.id_seed),
            "object": "response",
            "created_at": ctx.created,
            "status": status,
            "error": null,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "tool_choice": "auto",
            "tools": [],
            "metadata": {},
            "store": false,
            "text": { "format": { "type": "text" } },
            "usage": self.usage.map(|u| u.responses()),
        });
        // What the client asked, repeated as the API does (never `store`:
        // a translated answer is not stored at OpenAI).
        if let (Some(echo), Some(obj)) = (&ctx.echo, response.as_object_mut()) {
            for (key, value) in echo {
                obj.insert(key.clone(), value.clone());
            }
        }
        response
    }
}

/// Tool-call arguments as an Anthropic `input` object. Arguments that are
/// not a JSON object (a model's malformed call) are kept as a string under
/// `_arguments`, not lost.
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ if arguments.trim().is_empty() => json!({}),
        _ => json!({ "_arguments": arguments }),
    }
}

/// A provider's successful JSON answer in the client's API (None: not an
/// answer the provider's API gives, so it cannot be translated).
pub fn translate_answer(provider: ApiFormat, client: ApiFormat, body: &[u8], ctx: &AnswerContext) -> Option<Vec<u8>> {
    let value: Value = serde_json::from_slice(body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)).ok()?;
    let answer = Answer::read(provider, &value)?;
    serde_json::to_vec(&answer.write(client, ctx)).ok()
}

/// [`translate_answer`] on an already parsed body (a stream's assembled answer).
pub fn translate_answer_value(
    provider: ApiFormat,
    client: ApiFormat,
    value: &Value,
    ctx: &AnswerContext,
) -> Option<Value> {
    Answer::read(provider, value).map(|a| a.write(client, ctx))
}

/// A provider's error answer (any status) in the client's API's error
/// shape, with its message kept, so the client's SDK raises its own typed
/// error with the provider's words.
pub fn translate_error(provider: ApiFormat, client: ApiFormat, status: u16, body: &[u8]) -> Vec<u8> {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the provider answered HTTP {status}"));
    let message = format!("{message} (from the {} API)", provider.as_str());
    let body = match client {
        ApiFormat::Anthropic => {
            let kind = match status {
                400 | 413 | 422 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                529 | 503 => "overloaded_error",
                _ => "api_error",
            };
            json!({ "type": "error", "error": { "type": kind, "message": message } })
        }
        _ => {
            let kind = match status {
                400 | 404 | 413 | 422 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                429 => "rate_limit_exceeded",
                _ => "server_error",
            };
            json!({ "error": { "message": message, "type": kind, "param": null, "code": null } })
        }
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn ctx() -> AnswerContext {
        AnswerContext {
            id_seed: "abc".into(),
            created: 1_700_000_000,
            prompt_tokens: 10,
            include_usage: true,
            echo: None,
        }
    }

    #[test]
    fn an_anthropic_tool_use_answer_reads_as_a_chat_completion_with_tool_calls() {
        let body = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-latest",
            "content": [{"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0, "output_tokens": 7}
        });
        let out =
            translate_answer(ApiFormat::Anthropic, ApiFormat::OpenAi, body.to_string().as_bytes(), &ctx()).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(out["choices"][0]["message"]["content"], "Let me check.");
        assert_eq!(out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(out["usage"]["prompt_tokens"], 25);
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
        assert_eq!(out["usage"]["completion_tokens"], 7);
    }

    #[test]
    fn a_chat_completion_reads_as_an_anthropic_message_and_as_a_response() {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "Hello"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}}
        });
        let anthropic = translate_answer_value(ApiFormat::OpenAi, ApiFormat::Anthropic, &body, &ctx()).unwrap();
        assert_eq!(anthropic["stop_reason"], "max_tokens");
        assert_eq!(anthropic["content"][0]["text"], "Hello");
        assert_eq!(anthropic["usage"]["input_tokens"], 10);
        assert_eq!(anthropic["usage"]["cache_read_input_tokens"], 2);
        let responses = translate_answer_value(ApiFormat::OpenAi, ApiFormat::Responses, &body, &ctx()).unwrap();
        assert_eq!(responses["status"], "incomplete");
        assert_eq!(responses["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(responses["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(responses["usage"]["input_tokens"], 12);
    }

    #[test]
    fn errors_keep_the_providers_message_in_the_clients_shape() {
        let anthropic_error =
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"}}"#;
        let out: Value =
            serde_json::from_slice(&translate_error(ApiFormat::Anthropic, ApiFormat::OpenAi, 400, anthropic_error))
                .unwrap();
        assert_eq!(out["error"]["type"], "invalid_request_error");
        assert!(out["error"]["message"].as_str().unwrap().contains("prompt is too long"));
        let out: Value =
            serde_json::from_slice(&translate_error(ApiFormat::OpenAi, ApiFormat::Anthropic, 429, b"not json"))
                .unwrap();
        assert_eq!(out["error"]["type"], "rate_limit_error");
    }

    #[test]
    fn malformed_tool_arguments_are_kept_not_lost() {
        assert_eq!(tool_input("{\"a\":1}"), json!({"a": 1}));
        assert_eq!(tool_input("{\"a\":"), json!({"_arguments": "{\"a\":"}));
        assert_eq!(tool_input(""), json!({}));
    }
}
