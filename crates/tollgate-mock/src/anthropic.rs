//! Anthropic Messages: request reading and response shapes (`message`
//! objects, the named SSE event sequence, error objects), modelled on what
//! api.anthropic.com sends so the official SDKs parse them.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::answer::{self, Answer, Prompt};
use crate::api::RequestError;

/// Reads the parts of a Messages request that shape the answer.
///
/// `max_tokens` is optional here although the real API requires it: the
/// mock's job is to exercise the router, not to police clients.
pub fn parse_prompt(body: &Value) -> Result<Prompt, RequestError> {
    let object =
        body.as_object().ok_or_else(|| RequestError::invalid("The request body must be a JSON object.", None))?;
    let model = match object.get("model") {
        Some(Value::String(model)) => model.clone(),
        _ => return Err(RequestError::missing("model", "model: Field required")),
    };
    let messages = match object.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => {
            return Err(RequestError::invalid("messages: at least one message is required", Some("messages")));
        }
        Some(_) => return Err(RequestError::invalid("messages: Input should be a valid list", Some("messages"))),
        None => return Err(RequestError::missing("messages", "messages: Field required")),
    };
    // The system prompt is top-level here (a string or text blocks) and is
    // counted like one more message.
    let mut texts = Vec::with_capacity(messages.len() + 1);
    if let Some(system) = object.get("system").filter(|system| !system.is_null()) {
        texts.push(answer::content_text(Some(system)));
    }
    let mut last_user_text = String::new();
    for message in messages {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| RequestError::invalid("messages: each message needs a 'role'", Some("messages")))?;
        let text = answer::content_text(message.get("content"));
        if role == "user" {
            last_user_text.clone_from(&text);
        }
        texts.push(text);
    }
    let max_output_tokens =
        match object.get("max_tokens").filter(|value| !value.is_null()) {
            Some(value) => Some(value.as_u64().ok_or_else(|| {
                RequestError::invalid("max_tokens: Input should be a valid integer", Some("max_tokens"))
            })?),
            None => None,
        };
    Ok(Prompt {
        model,
        last_user_text,
        prompt_tokens: answer::prompt_tokens(texts.iter().map(String::as_str)),
        max_output_tokens,
        stream: object.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: false,
    })
}

pub fn message_id(hash: &str) -> String {
    format!("msg_{hash}")
}

fn stop_reason(answer: &Answer) -> &'static str {
    if answer.truncated { "max_tokens" } else { "end_turn" }
}

fn usage(input_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens
    })
}

/// A non-streaming `message` object.
pub fn message(id: &str, prompt: &Prompt, answer: &Answer) -> Value {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": [{"type": "text", "text": answer.content()}],
        "stop_reason": stop_reason(answer),
        "stop_sequence": null,
        "usage": usage(prompt.prompt_tokens, answer.output_tokens())
    })
}

/// The SSE events of a streamed message, in the real API's order:
/// message_start, content_block_start, ping, one content_block_delta per
/// word, content_block_stop, message_delta (final output_tokens),
/// message_stop.
pub fn stream_events(id: &str, prompt: &Prompt, answer: &Answer) -> Vec<Bytes> {
    let mut events = Vec::with_capacity(answer.words.len() + 6);
    // The real API reports a provisional output_tokens of 1 at the start;
    // the total comes in message_delta.
    let mut start_message = message(id, prompt, answer);
    if let Some(object) = start_message.as_object_mut() {
        object.insert("content".into(), json!([]));
        object.insert("stop_reason".into(), Value::Null);
        object.insert("usage".into(), usage(prompt.prompt_tokens, 1));
    }
    events.push(named_event("message_start", &json!({"type": "message_start", "message": start_message})));
    events.push(named_event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    events.push(named_event("ping", &json!({"type": "ping"})));
    for delta in answer.deltas() {
        events.push(named_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": delta}}),
        ));
    }
    events.push(named_event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
    events.push(named_event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(answer), "stop_sequence": null},
            "usage": {"output_tokens": answer.output_tokens()}
        }),
    ));
    events.push(named_event("message_stop", &json!({"type": "message_stop"})));
    events
}

fn named_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// An Anthropic error object: `{"type": "error", "error": {type, message}}`.
pub fn error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// The message of an injected status fault, close to the real wording.
pub fn fault_message(status: u16) -> String {
    let message = match status {
        429 => "Number of requests has exceeded your rate limit. Please try again later.",
        503 | 529 => "Overloaded",
        500..=599 => "Internal server error",
        _ => "The request failed.",
    };
    format!("{message} (injected by tollgate-mock)")
}
