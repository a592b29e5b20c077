//! OpenAI Chat Completions: request reading and response shapes
//! (`chat.completion`, `chat.completion.chunk` SSE, error objects), modelled
//! on what api.openai.com sends so the official SDKs parse them.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::answer::{self, CREATED_UNIX_SECONDS, Prompt};
use crate::api::RequestError;
use crate::tools::{self, Choice, Reply};

/// Stands in for the backend build id OpenAI reports.
const SYSTEM_FINGERPRINT: &str = "fp_tollgate_mock";

/// Top-level fields of a chat completion request the real API knows; any
/// other is refused ("Unrecognized request argument supplied"), so a body
/// carrying another API's fields (`system`, `top_k`, `stop_sequences` …)
/// fails loudly.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "prompt_cache_retention",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
];

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];

/// Content part types each role may send.
const USER_PARTS: &[&str] = &["text", "image_url", "input_audio", "file"];
const ASSISTANT_PARTS: &[&str] = &["text", "refusal"];
const TEXT_PARTS: &[&str] = &["text"];

/// Reads a chat completion request, refusing what the real API refuses
/// (unknown fields and roles, malformed tools and tool calls, a `tool`
/// message answering no earlier tool call, an unanswered tool call), and
/// plans a call of a function tool when one is offered and the
/// conversation does not end with a tool's result ([`crate::tools`]).
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
    if let Some(unknown) = object.keys().find(|key| !KNOWN_FIELDS.contains(&key.as_str())) {
        return Err(RequestError::invalid(&format!("Unrecognized request argument supplied: {unknown}"), None));
    }
    let texts = read_messages(messages)?;
    let last_user_text = messages
        .iter()
        .rev()
        .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
        .map(|message| answer::content_text(message.get("content")))
        .unwrap_or_default();
    let last_is_tool_result =
        messages.last().and_then(|message| message.get("role")).and_then(Value::as_str) == Some("tool");

    // max_completion_tokens is the current name; max_tokens the legacy one.
    let max_output_tokens = match object.get("max_completion_tokens").filter(|v| !v.is_null()) {
        Some(value) => Some(non_negative(value, "max_completion_tokens")?),
        None => match object.get("max_tokens").filter(|v| !v.is_null()) {
            Some(value) => Some(non_negative(value, "max_tokens")?),
            None => None,
        },
    };
    check_range(object, "temperature", 2.0)?;
    check_range(object, "top_p", 1.0)?;
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(invalid_type("stream", "a boolean")),
    };
    if object.get("stream_options").is_some_and(|options| !options.is_null()) && !stream {
        return Err(RequestError::invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            Some("stream_options"),
        ));
    }
    let tools = read_tools(object)?;
    let choice = read_tool_choice(object)?;
    let call = if last_is_tool_result { Ok(None) } else { tools::plan_call(&tools, &choice) };
    let call = call.map_err(|name| {
        RequestError::invalid(
            &format!("Invalid value for 'tool_choice': no function named '{name}' was specified in 'tools'."),
            Some("tool_choice"),
        )
    })?;
    Ok(Prompt {
        model,
        last_user_text,
        prompt_tokens: answer::prompt_tokens(texts.iter().map(String::as_str)),
        max_output_tokens,
        stream,
        include_usage: body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false),
        call,
    })
}

/// Checks every message; returns the text each contributes to the prompt
/// estimate (an assistant's tool calls count their names and arguments).
fn read_messages(messages: &[Value]) -> Result<Vec<String>, RequestError> {
    let mut texts = Vec::with_capacity(messages.len());
    // The tool call ids of the latest assistant message, and those of them
    // no `tool` message has answered yet.
    let mut offered: Vec<String> = Vec::new();
    let mut unanswered: Vec<String> = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let message = message
            .as_object()
            .ok_or_else(|| invalid_type_at(&format!("messages[{index}]"), "an object", message, "messages"))?;
        let role = match message.get("role") {
            Some(Value::String(role)) => role.as_str(),
            _ => return Err(missing_at(&format!("messages[{index}].role"))),
        };
        if !ROLES.contains(&role) {
            return Err(RequestError {
                status: 400,
                message: format!(
                    "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', \
                     'tool', and 'developer'."
                ),
                param: Some("messages"),
                code: Some("invalid_value"),
            });
        }
        if role != "tool" {
            if !unanswered.is_empty() {
                return Err(RequestError::invalid(
                    &format!(
                        "An assistant message with 'tool_calls' must be followed by tool messages responding to \
                         each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
                        unanswered.join(", ")
                    ),
                    Some("messages"),
                ));
            }
            offered.clear();
        }
        let content = message.get("content");
        let text = match role {
            "tool" => {
                let id = match message.get("tool_call_id") {
                    Some(Value::String(id)) => id,
                    _ => return Err(missing_at(&format!("messages[{index}].tool_call_id"))),
                };
                if offered.is_empty() {
                    return Err(RequestError::invalid(
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message \
                         with 'tool_calls'.",
                        Some("messages"),
                    ));
                }
                if !offered.contains(id) {
                    return Err(RequestError::invalid(
                        &format!(
                            "Invalid parameter: 'tool_call_id' of '{id}' not found in 'tool_calls' of previous message."
                        ),
                        Some("messages"),
                    ));
                }
                unanswered.retain(|waiting| waiting != id);
                check_content(index, content, TEXT_PARTS, false)?;
                answer::content_text(content)
            }
            "assistant" => {
                let calls = read_tool_calls(index, message.get("tool_calls"))?;
                let has_calls = !calls.is_empty() || message.get("function_call").is_some_and(|c| !c.is_null());
                check_content(index, content, ASSISTANT_PARTS, has_calls)?;
                let mut text = answer::content_text(content);
                for (id, name, arguments) in calls {
                    text.push_str(&name);
                    text.push_str(&arguments);
                    offered.push(id.clone());
                    unanswered.push(id);
                }
                text
            }
            "user" => {
                check_content(index, content, USER_PARTS, false)?;
                answer::content_text(content)
            }
            // system, developer, and the legacy function result.
            _ => {
                check_content(index, content, TEXT_PARTS, role == "function")?;
                answer::content_text(content)
            }
        };
        texts.push(text);
    }
    Ok(texts)
}

/// A message's `content`: a string, or an array of parts of the role's
/// types; absent or null only where `nullable`.
fn check_content(index: usize, content: Option<&Value>, parts: &[&str], nullable: bool) -> Result<(), RequestError> {
    let at = |what: &str| format!("messages[{index}].{what}");
    match content {
        None | Some(Value::Null) if nullable => Ok(()),
        None => Err(missing_at(&at("content"))),
        Some(Value::Null) => Err(RequestError::invalid(
            &format!("Invalid value for '{}': expected a string, got null.", at("content")),
            Some("messages"),
        )),
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(items)) => {
            for (part_index, part) in items.iter().enumerate() {
                let where_ = at(&format!("content[{part_index}]"));
                let kind = match part.get("type") {
                    Some(Value::String(kind)) => kind.as_str(),
                    _ => return Err(missing_at(&format!("{where_}.type"))),
                };
                if !parts.contains(&kind) {
                    let supported: Vec<String> = parts.iter().map(|p| format!("'{p}'")).collect();
                    return Err(RequestError {
                        status: 400,
                        message: format!("Invalid value: '{kind}'. Supported values are: {}.", supported.join(", ")),
                        param: Some("messages"),
                        code: Some("invalid_value"),
                    });
                }
                let field = match kind {
                    "text" => part.get("text").filter(|text| text.is_string()).map(|_| ()),
                    "refusal" => part.get("refusal").filter(|text| text.is_string()).map(|_| ()),
                    "image_url" => part.pointer("/image_url/url").filter(|url| url.is_string()).map(|_| ()),
                    _ => Some(()),
                };
                if field.is_none() {
                    let name = match kind {
                        "image_url" => "image_url.url",
                        other => other,
                    };
                    return Err(missing_at(&format!("{where_}.{name}")));
                }
            }
            Ok(())
        }
        Some(other) => Err(invalid_type_at(&at("content"), "one of a string or array of objects", other, "messages")),
    }
}

/// An assistant message's `tool_calls`: (id, name, arguments) of each.
fn read_tool_calls(index: usize, calls: Option<&Value>) -> Result<Vec<(String, String, String)>, RequestError> {
    let calls = match calls {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(calls)) => calls,
        Some(other) => {
            return Err(invalid_type_at(&format!("messages[{index}].tool_calls"), "an array", other, "messages"));
        }
    };
    let mut read = Vec::with_capacity(calls.len());
    for (call_index, call) in calls.iter().enumerate() {
        let at = |what: &str| format!("messages[{index}].tool_calls[{call_index}].{what}");
        let string = |pointer: &str, what: &str| match call.pointer(pointer) {
            Some(Value::String(text)) => Ok(text.clone()),
            None | Some(Value::Null) => Err(missing_at(&at(what))),
            Some(other) => Err(invalid_type_at(&at(what), "a string", other, "messages")),
        };
        let id = string("/id", "id")?;
        if string("/type", "type")? != "function" {
            return Err(RequestError {
                status: 400,
                message: format!("Invalid value for '{}': expected 'function'.", at("type")),
                param: Some("messages"),
                code: Some("invalid_value"),
            });
        }
        read.push((
            id,
            string("/function/name", "function.name")?,
            string("/function/arguments", "function.arguments")?,
        ));
    }
    Ok(read)
}

/// The function tools offered: (name, parameter schema) of each, in order.
/// `tools` must be a non-empty array of `function` (or `custom`) tools,
/// each with a name; `tool_choice` and `parallel_tool_calls` need tools.
fn read_tools(object: &Map<String, Value>) -> Result<Vec<(String, Value)>, RequestError> {
    let present = |name: &str| object.get(name).is_some_and(|value| !value.is_null());
    let tools = match object.get("tools") {
        None | Some(Value::Null) => {
            for name in ["tool_choice", "parallel_tool_calls"] {
                if present(name) {
                    return Err(RequestError::invalid(
                        &format!("Invalid value for '{name}': '{name}' is only allowed when 'tools' are specified."),
                        Some(if name == "tool_choice" { "tool_choice" } else { "parallel_tool_calls" }),
                    ));
                }
            }
            return Ok(Vec::new());
        }
        Some(Value::Array(tools)) if tools.is_empty() => {
            return Err(RequestError {
                status: 400,
                message: "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty \
                          array instead."
                    .to_owned(),
                param: Some("tools"),
                code: Some("empty_array"),
            });
        }
        Some(Value::Array(tools)) => tools,
        Some(other) => return Err(invalid_type_at("tools", "an array", other, "tools")),
    };
    let mut functions = Vec::new();
    for (index, tool) in tools.iter().enumerate() {
        let missing = |what: &str| RequestError {
            status: 400,
            message: format!("Missing required parameter: 'tools[{index}].{what}'."),
            param: Some("tools"),
            code: Some("missing_required_parameter"),
        };
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {
                let function = tool.get("function").filter(|f| f.is_object()).ok_or_else(|| missing("function"))?;
                let name = function.get("name").and_then(Value::as_str).ok_or_else(|| missing("function.name"))?;
                if name.is_empty()
                    || name.len() > 64
                    || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(RequestError::invalid(
                        &format!(
                            "Invalid 'tools[{index}].function.name': string does not match pattern. Expected a \
                             string that matches the pattern '^[a-zA-Z0-9_-]{{1,64}}$'."
                        ),
                        Some("tools"),
                    ));
                }
                let parameters = function.get("parameters").cloned().unwrap_or(Value::Null);
                if !(parameters.is_null() || parameters.is_object()) {
                    return Err(invalid_type_at(
                        &format!("tools[{index}].function.parameters"),
                        "an object",
                        &parameters,
                        "tools",
                    ));
                }
                functions.push((name.to_owned(), parameters));
            }
            // Free-form custom tools are valid but never called by the mock.
            Some("custom") => {
                tool.pointer("/custom/name").and_then(Value::as_str).ok_or_else(|| missing("custom.name"))?;
            }
            Some(other) => {
                return Err(RequestError {
                    status: 400,
                    message: format!("Invalid value: '{other}'. Supported values are: 'function' and 'custom'."),
                    param: Some("tools"),
                    code: Some("invalid_value"),
                });
            }
            None => return Err(missing("type")),
        }
    }
    Ok(functions)
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"`, or
/// `{"type": "function", "function": {"name": …}}` (also `allowed_tools`
/// and `custom`).
fn read_tool_choice(object: &Map<String, Value>) -> Result<Choice, RequestError> {
    let invalid = || RequestError {
        status: 400,
        message: "Invalid value for 'tool_choice': expected 'none', 'auto', 'required', or an object naming a \
                      function."
            .to_owned(),
        param: Some("tool_choice"),
        code: Some("invalid_value"),
    };
    match object.get("tool_choice") {
        None | Some(Value::Null) => Ok(Choice::First),
        Some(Value::String(choice)) => match choice.as_str() {
            "none" => Ok(Choice::Forbidden),
            "auto" | "required" => Ok(Choice::First),
            _ => Err(invalid()),
        },
        Some(Value::Object(choice)) => match choice.get("type").and_then(Value::as_str) {
            Some("function") => match choice.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
                Some(name) => Ok(Choice::Named(name.to_owned())),
                None => Err(RequestError::missing(
                    "tool_choice",
                    "Missing required parameter: 'tool_choice.function.name'.",
                )),
            },
            Some("allowed_tools" | "custom") => Ok(Choice::First),
            _ => Err(invalid()),
        },
        Some(_) => Err(invalid()),
    }
}

/// `name`, when present, is a number in [0, `max`].
fn check_range(object: &Map<String, Value>, name: &'static str, max: f64) -> Result<(), RequestError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(number)) => {
            let value = number.as_f64().unwrap_or(f64::NAN);
            if value > max {
                Err(RequestError {
                    status: 400,
                    message: format!(
                        "Invalid '{name}': decimal above maximum value. Expected a value <= {max}, but got {value} \
                         instead."
                    ),
                    param: Some(name),
                    code: Some("decimal_above_max_value"),
                })
            } else if value < 0.0 || value.is_nan() {
                Err(RequestError {
                    status: 400,
                    message: format!(
                        "Invalid '{name}': decimal below minimum value. Expected a value >= 0, but got {value} \
                         instead."
                    ),
                    param: Some(name),
                    code: Some("decimal_below_min_value"),
                })
            } else {
                Ok(())
            }
        }
        Some(_) => Err(invalid_type(name, "a number")),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid_type(param: &'static str, expected: &str) -> RequestError {
    RequestError {
        status: 400,
        message: format!("Invalid type for '{param}': expected {expected}."),
        param: Some(param),
        code: Some("invalid_type"),
    }
}

fn invalid_type_at(at: &str, expected: &str, got: &Value, param: &'static str) -> RequestError {
    RequestError {
        status: 400,
        message: format!("Invalid type for '{at}': expected {expected}, but got {} instead.", kind_of(got)),
        param: Some(param),
        code: Some("invalid_type"),
    }
}

fn missing_at(at: &str) -> RequestError {
    RequestError {
        status: 400,
        message: format!("Missing required parameter: '{at}'."),
        param: Some("messages"),
        code: Some("missing_required_parameter"),
    }
}

fn non_negative(value: &Value, name: &'static str) -> Result<u64, RequestError> {
    value.as_u64().ok_or_else(|| RequestError::invalid(&format!("'{name}' must be a non-negative integer"), Some(name)))
}

pub fn completion_id(hash: &str) -> String {
    format!("chatcmpl-{hash}")
}

/// The id of the tool call in a completion, derived from the completion's.
pub fn call_id(id: &str) -> String {
    format!("call_{}", id.strip_prefix("chatcmpl-").unwrap_or(id))
}

fn finish_reason(reply: &Reply) -> &'static str {
    match reply {
        _ if reply.truncated() => "length",
        Reply::Text(_) => "stop",
        Reply::Call { .. } => "tool_calls",
    }
}

fn usage(prompt: &Prompt, reply: &Reply) -> Value {
    let completion_tokens = reply.output_tokens();
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

/// A non-streaming `chat.completion` object: the text as `content`, or the
/// call as `tool_calls` with `content: null`.
pub fn completion(id: &str, prompt: &Prompt, reply: &Reply) -> Value {
    let message = match reply {
        Reply::Text(answer) => {
            json!({"role": "assistant", "content": answer.content(), "refusal": null, "annotations": []})
        }
        Reply::Call { name, arguments, .. } => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{"id": call_id(id), "type": "function", "function": {"name": name, "arguments": arguments}}],
            "refusal": null,
            "annotations": []
        }),
    };
    json!({
        "id": id,
        "object": "chat.completion",
        "created": CREATED_UNIX_SECONDS,
        "model": prompt.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(reply)
        }],
        "usage": usage(prompt, reply),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT
    })
}

/// The SSE events of a streamed completion, each a complete `data: …\n\n`
/// block: a role chunk, one chunk per content delta (a call: the role chunk
/// carries the call's id, type and name with empty arguments, then one
/// chunk per argument fragment), a finish chunk, the usage chunk when
/// `stream_options.include_usage` is set, then `[DONE]`.
pub fn stream_events(id: &str, prompt: &Prompt, reply: &Reply) -> Vec<Bytes> {
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
    let mut events = Vec::new();
    match reply {
        Reply::Text(answer) => {
            events.push(chunk(json!({"role": "assistant", "content": "", "refusal": null}), Value::Null));
            for delta in answer.deltas() {
                events.push(chunk(json!({"content": delta}), Value::Null));
            }
        }
        Reply::Call { name, arguments, .. } => {
            let start = json!({
                "index": 0,
                "id": call_id(id),
                "type": "function",
                "function": {"name": name, "arguments": ""}
            });
            events.push(chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [start], "refusal": null}),
                Value::Null,
            ));
            for fragment in tools::fragments(arguments) {
                events.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
                    Value::Null,
                ));
            }
        }
    }
    events.push(chunk(json!({}), json!(finish_reason(reply))));
    if prompt.include_usage {
        events.push(data_event(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": CREATED_UNIX_SECONDS,
            "model": prompt.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [],
            "usage": usage(prompt, reply)
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
