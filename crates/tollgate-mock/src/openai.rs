//! OpenAI Chat Completions: request reading and response shapes
//! (`chat.completion`, `chat.completion.chunk` SSE, error objects), modelled
//! on what api.openai.com sends so the official SDKs parse them.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::answer::{self, Answer, CREATED_UNIX_SECONDS, Prompt};
use crate::api::RequestError;

/// Stands in for the backend build id OpenAI reports.
const SYSTEM_FINGERPRINT: &str = "fp_tollgate_mock";

/// Reads the parts of a chat completion request that shape the answer.
pub fn parse_prompt(body: &Value) -> Result<Prompt, RequestError> {
    let object =
        body.as_object().ok_or_else(|| RequestError::invalid("The request body must be a JSON object.", None))?;
    let model = match object.get("model") {
        Some(Value::String(model)) => model.clone(),
        _ => return Err(RequestError::missing("model", "you must provide a model parameter")),
    };
    let messages = match object.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => {
            return Err(RequestError::invalid("[] is too short - 'messages'", Some("messages")));
        }
        Some(_) => return Err(RequestError::invalid("'messages' must be an array", Some("messages"))),
        None => return Err(RequestError::missing("messages", "Missing required parameter: 'messages'.")),
    };
    let mut texts = Vec::with_capacity(messages.len());
    let mut last_user_text = String::new();
    for message in messages {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| RequestError::invalid("Each message must be an object with a 'role'.", Some("messages")))?;
        let text = answer::content_text(message.get("content"));
        if role == "user" {
            last_user_text.clone_from(&text);
        }
        texts.push(text);
    }
    // max_completion_tokens is the current name; max_tokens the legacy one.
    let max_output_tokens = match object.get("max_completion_tokens").filter(|v| !v.is_null()) {
        Some(value) => Some(non_negative(value, "max_completion_tokens")?),
        None => match object.get("max_tokens").filter(|v| !v.is_null()) {
            Some(value) => Some(non_negative(value, "max_tokens")?),
            None => None,
        },
    };
    Ok(Prompt {
        model,
        last_user_text,
        prompt_tokens: answer::prompt_tokens(texts.iter().map(String::as_str)),
        max_output_tokens,
        stream: object.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false),
    })
}

fn non_negative(value: &Value, name: &'static str) -> Result<u64, RequestError> {
    value.as_u64().ok_or_else(|| RequestError::invalid(&format!("'{name}' must be a non-negative integer"), Some(name)))
}

pub fn completion_id(hash: &str) -> String {
    format!("chatcmpl-{hash}")
}

fn finish_reason(answer: &Answer) -> &'static str {
    if answer.truncated { "length" } else { "stop" }
}

fn usage(prompt: &Prompt, answer: &Answer) -> Value {
    let completion_tokens = answer.output_tokens();
    json!({
        "prompt_tokens": prompt.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt.prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

/// A non-streaming `chat.completion` object.
pub fn completion(id: &str, prompt: &Prompt, answer: &Answer) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": CREATED_UNIX_SECONDS,
        "model": prompt.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer.content(), "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": finish_reason(answer)
        }],
        "usage": usage(prompt, answer),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT
    })
}

/// The SSE events of a streamed completion, each a complete `data: …\n\n`
/// block: a role chunk, one chunk per content delta, a finish chunk, the
/// usage chunk when `stream_options.include_usage` is set, then `[DONE]`.
pub fn stream_events(id: &str, prompt: &Prompt, answer: &Answer) -> Vec<Bytes> {
    let chunk = |delta: Value, finish_reason: Value| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": CREATED_UNIX_SECONDS,
            "model": prompt.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]
        });
        // With include_usage every chunk carries `"usage": null` until the
        // final one, as the real API does.
        if prompt.include_usage
            && let Some(object) = chunk.as_object_mut()
        {
            object.insert("usage".into(), Value::Null);
        }
        data_event(&chunk)
    };
    let mut events = Vec::with_capacity(answer.words.len() + 4);
    events.push(chunk(json!({"role": "assistant", "content": "", "refusal": null}), Value::Null));
    for delta in answer.deltas() {
        events.push(chunk(json!({"content": delta}), Value::Null));
    }
    events.push(chunk(json!({}), json!(finish_reason(answer))));
    if prompt.include_usage {
        events.push(data_event(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": CREATED_UNIX_SECONDS,
            "model": prompt.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [],
            "usage": usage(prompt, answer)
        })));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

fn data_event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// An OpenAI error object: `{"error": {message, type, param, code}}`.
pub fn error_body(status: u16, message: &str, param: Option<&str>, code: Option<&str>) -> Value {
    let (kind, default_code) = match status {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        429 => ("requests", Some("rate_limit_exceeded")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    json!({"error": {"message": message, "type": kind, "param": param, "code": code.or(default_code)}})
}

/// The message of an injected status fault, close to the real wording.
pub fn fault_message(status: u16) -> String {
    let message = match status {
        429 => "Rate limit reached for requests. Please try again later.",
        500 => "The server had an error while processing your request. Sorry about that!",
        503 => "The engine is currently overloaded, please try again later.",
        _ => "The request failed.",
    };
    format!("{message} (injected by tollgate-mock)")
}
