//! Anthropic Messages: request reading and response shapes (`message`
//! objects, the named SSE event sequence, error objects), modelled on what
//! api.anthropic.com sends so the official SDKs parse them.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::answer::{self, Prompt};
use crate::api::RequestError;
use crate::tools::{self, Choice, Reply};

/// Top-level fields of a Messages request the real API knows; any other is
/// refused ("Extra inputs are not permitted"), so a body carrying another
/// API's fields (`stream_options`, `n`, `response_format` …) fails loudly.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_k",
    "top_p",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
];

/// Block types a user message may hold, and an assistant message.
const USER_BLOCKS: &[&str] = &["text", "image", "document", "tool_result", "search_result", "container_upload"];
const ASSISTANT_BLOCKS: &[&str] = &[
    "text",
    "tool_use",
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
    "container_upload",
];
/// Blocks a `tool_result`'s content may hold.
const TOOL_RESULT_BLOCKS: &[&str] = &["text", "image", "document", "search_result"];

fn invalid(message: String) -> RequestError {
    RequestError::invalid(&message, None)
}

/// Reads a Messages request, refusing what the real API refuses: a missing
/// or non-integer `max_tokens`, unknown top-level fields, a `system` role in
/// `messages`, content of unknown block types or malformed blocks, a
/// `tool_result` answering no `tool_use` of the message before (or a
/// `tool_use` left unanswered), malformed `tools`/`tool_choice`/`thinking`,
/// `temperature` or `top_p` outside [0, 1]. Plans a call of a custom tool
/// when one is offered and the conversation does not end with a tool's
/// result ([`crate::tools`]).
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
    let max_output_tokens = match object.get("max_tokens") {
        None => return Err(RequestError::missing("max_tokens", "max_tokens: Field required")),
        Some(value) => match value.as_u64() {
            Some(0) => return Err(invalid("max_tokens: Input should be greater than or equal to 1".into())),
            Some(max) => max,
            None => {
                return Err(RequestError::invalid("max_tokens: Input should be a valid integer", Some("max_tokens")));
            }
        },
    };
    if let Some(unknown) = object.keys().find(|key| !KNOWN_FIELDS.contains(&key.as_str())) {
        return Err(invalid(format!("{unknown}: Extra inputs are not permitted")));
    }

    // The system prompt is top-level here (a string or text blocks) and is
    // counted like one more message.
    let mut texts = Vec::with_capacity(messages.len() + 1);
    match object.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(system)) => texts.push(system.clone()),
        Some(Value::Array(blocks)) => {
            for (index, block) in blocks.iter().enumerate() {
                if block.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(invalid(format!("system.{index}.type: Input should be 'text'")));
                }
                check_block(&format!("system.{index}"), block, &["text"])?;
            }
            texts.push(answer::content_text(object.get("system")));
        }
        Some(_) => return Err(invalid("system: Input should be a valid string".into())),
    }
    let conversation = read_messages(messages)?;
    texts.extend(conversation.texts);

    check_number(object, "temperature", 1.0)?;
    check_number(object, "top_p", 1.0)?;
    if object.get("top_k").is_some_and(|top_k| !top_k.is_null() && top_k.as_u64().is_none()) {
        return Err(invalid("top_k: Input should be a valid integer, greater than or equal to 0".into()));
    }
    match object.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {}
        Some(_) => return Err(invalid("stop_sequences: Input should be a valid list of strings".into())),
    }
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(invalid("stream: Input should be a valid boolean".into())),
    };
    match object.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(metadata)) => {
            if let Some(extra) = metadata.keys().find(|key| *key != "user_id") {
                return Err(invalid(format!("metadata.{extra}: Extra inputs are not permitted")));
            }
            if metadata.get("user_id").is_some_and(|id| !(id.is_string() || id.is_null())) {
                return Err(invalid("metadata.user_id: Input should be a valid string".into()));
            }
        }
        Some(_) => return Err(invalid("metadata: Input should be a valid dictionary".into())),
    }
    check_thinking(object, max_output_tokens)?;
    let tools = read_tools(object)?;
    let choice = read_tool_choice(object)?;
    let call = if conversation.ends_with_tool_result { Ok(None) } else { tools::plan_call(&tools, &choice) };
    let call = call.map_err(|name| invalid(format!("tool_choice.name: Tool '{name}' not found in provided tools")))?;
    Ok(Prompt {
        model,
        last_user_text: conversation.last_user_text,
        prompt_tokens: answer::prompt_tokens(texts.iter().map(String::as_str)),
        max_output_tokens: Some(max_output_tokens),
        stream,
        include_usage: false,
        call,
    })
}

/// What the messages contribute, once checked.
struct Conversation {
    /// Per message: its text, a `tool_use`'s name and input, a
    /// `tool_result`'s content.
    texts: Vec<String>,
    last_user_text: String,
    ends_with_tool_result: bool,
}

/// Consecutive messages of one role, which the API treats as one turn.
#[derive(Default)]
struct Turn {
    role: String,
    /// (message index, id) of each `tool_use`.
    tool_uses: Vec<(usize, String)>,
    /// (message index, block index, id) of each `tool_result`.
    tool_results: Vec<(usize, usize, String)>,
}

fn read_messages(messages: &[Value]) -> Result<Conversation, RequestError> {
    let mut texts = Vec::with_capacity(messages.len());
    let mut last_user_text = String::new();
    let mut turns: Vec<Turn> = Vec::new();
    let last = messages.len() - 1;
    for (index, message) in messages.iter().enumerate() {
        let message = message
            .as_object()
            .ok_or_else(|| invalid(format!("messages.{index}: Input should be a valid dictionary")))?;
        let role = match message.get("role") {
            Some(Value::String(role)) => role.as_str(),
            None => return Err(invalid(format!("messages.{index}.role: Field required"))),
            Some(_) => return Err(invalid(format!("messages.{index}.role: Input should be 'user' or 'assistant'"))),
        };
        match role {
            "user" | "assistant" => {}
            "system" => {
                return Err(invalid(
                    "messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, \
                     not \"system\" as an input message role."
                        .into(),
                ));
            }
            other => {
                return Err(invalid(format!(
                    "messages.{index}.role: Input should be 'user' or 'assistant' (got '{other}')"
                )));
            }
        }
        if let Some(extra) = message.keys().find(|key| !matches!(key.as_str(), "role" | "content")) {
            return Err(invalid(format!("messages.{index}.{extra}: Extra inputs are not permitted")));
        }
        if turns.last().is_none_or(|turn| turn.role != role) {
            turns.push(Turn { role: role.to_owned(), ..Turn::default() });
        }
        let turn = turns.last_mut().ok_or_else(|| invalid("messages: no turn".into()))?;
        let final_assistant = index == last && role == "assistant";
        let empty = || {
            invalid(format!(
                "messages.{index}: all messages must have non-empty content except for the optional final \
                 assistant message"
            ))
        };
        let text = match message.get("content") {
            None => return Err(invalid(format!("messages.{index}.content: Field required"))),
            Some(Value::String(text)) => {
                if text.is_empty() && !final_assistant {
                    return Err(empty());
                }
                text.clone()
            }
            Some(Value::Array(blocks)) => {
                if blocks.is_empty() && !final_assistant {
                    return Err(empty());
                }
                let allowed = if role == "user" { USER_BLOCKS } else { ASSISTANT_BLOCKS };
                let mut seen_other = false;
                let mut parts = Vec::new();
                for (block_index, block) in blocks.iter().enumerate() {
                    let at = format!("messages.{index}.content.{block_index}");
                    let kind = check_block(&at, block, allowed)?;
                    match kind {
                        "tool_result" => {
                            if seen_other {
                                return Err(invalid(format!(
                                    "{at}: tool_result blocks must come first in a user message's content, before \
                                     any other block"
                                )));
                            }
                            let id = block.get("tool_use_id").and_then(Value::as_str).unwrap_or_default();
                            turn.tool_results.push((index, block_index, id.to_owned()));
                            parts.push(answer::content_text(block.get("content")));
                        }
                        "tool_use" => {
                            let id = block.get("id").and_then(Value::as_str).unwrap_or_default();
                            turn.tool_uses.push((index, id.to_owned()));
                            let name = block.get("name").and_then(Value::as_str).unwrap_or_default();
                            parts.push(format!("{name}{}", block.get("input").unwrap_or(&Value::Null)));
                        }
                        _ => {
                            seen_other = true;
                            if let Some(text) = block.get("text").and_then(Value::as_str) {
                                parts.push(text.to_owned());
                            }
                        }
                    }
                }
                parts.join("\n")
            }
            Some(_) => return Err(invalid(format!("messages.{index}.content: Input should be a valid list"))),
        };
        if role == "user" {
            last_user_text = answer::content_text(message.get("content"));
        }
        texts.push(text);
    }
    // A tool_result answers a tool_use of the turn just before; every
    // tool_use is answered in the turn just after (when there is one).
    for (position, turn) in turns.iter().enumerate() {
        let before = position.checked_sub(1).and_then(|p| turns.get(p));
        for (index, block_index, id) in &turn.tool_results {
            if !before.is_some_and(|before| before.tool_uses.iter().any(|(_, used)| used == id)) {
                return Err(invalid(format!(
                    "messages.{index}.content.{block_index}: unexpected `tool_use_id` found in `tool_result` \
                     blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the \
                     previous message."
                )));
            }
        }
    }
    for (turn, after) in turns.iter().zip(turns.iter().skip(1)) {
        let unanswered: Vec<&str> = turn
            .tool_uses
            .iter()
            .filter(|(_, id)| !after.tool_results.iter().any(|(_, _, answered)| answered == id))
            .map(|(_, id)| id.as_str())
            .collect();
        if let (Some((index, _)), false) = (turn.tool_uses.first(), unanswered.is_empty()) {
            return Err(invalid(format!(
                "messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. \
                 Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                unanswered.join(", ")
            )));
        }
    }
    let ends_with_tool_result = turns.last().is_some_and(|turn| turn.role == "user" && !turn.tool_results.is_empty());
    Ok(Conversation { texts, last_user_text, ends_with_tool_result })
}

/// Checks one content block at `at` (e.g. `messages.1.content.0`) whose
/// type must be one of `allowed`; returns its type.
fn check_block<'a>(at: &str, block: &'a Value, allowed: &[&str]) -> Result<&'a str, RequestError> {
    let object = block.as_object().ok_or_else(|| invalid(format!("{at}: Input should be a valid dictionary")))?;
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        _ => return Err(invalid(format!("{at}: Unable to extract tag using discriminator 'type'"))),
    };
    if !allowed.contains(&kind) {
        let expected: Vec<String> = allowed.iter().map(|a| format!("'{a}'")).collect();
        return Err(invalid(format!(
            "{at}: Input tag '{kind}' found using 'type' does not match any of the expected tags: {}",
            expected.join(", ")
        )));
    }
    let fields: &[&str] = match kind {
        "text" => &["type", "text", "cache_control", "citations"],
        "image" => &["type", "source", "cache_control"],
        "document" => &["type", "source", "cache_control", "citations", "context", "title"],
        "tool_use" => &["type", "id", "name", "input", "cache_control"],
        "tool_result" => &["type", "tool_use_id", "content", "is_error", "cache_control"],
        "thinking" => &["type", "thinking", "signature"],
        "redacted_thinking" => &["type", "data"],
        // Server tools' blocks and the like: not checked further.
        _ => return Ok(kind),
    };
    if let Some(extra) = object.keys().find(|key| !fields.contains(&key.as_str())) {
        return Err(invalid(format!("{at}.{kind}.{extra}: Extra inputs are not permitted")));
    }
    let string = |name: &str| match object.get(name) {
        Some(Value::String(text)) => Ok(text.as_str()),
        None => Err(invalid(format!("{at}.{kind}.{name}: Field required"))),
        Some(_) => Err(invalid(format!("{at}.{kind}.{name}: Input should be a valid string"))),
    };
    match kind {
        "text" => {
            let text = string("text")?;
            if text.is_empty() {
                return Err(invalid("messages: text content blocks must be non-empty".into()));
            }
            if text.trim().is_empty() {
                return Err(invalid("messages: text content blocks must contain non-whitespace text".into()));
            }
        }
        "image" | "document" => check_source(at, kind, object.get("source"))?,
        "tool_use" => {
            let id = string("id")?;
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(invalid(format!("{at}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'")));
            }
            string("name")?;
            match object.get("input") {
                Some(Value::Object(_)) => {}
                None => return Err(invalid(format!("{at}.tool_use.input: Field required"))),
                Some(_) => return Err(invalid(format!("{at}.tool_use.input: Input should be a valid dictionary"))),
            }
        }
        "tool_result" => {
            string("tool_use_id")?;
            match object.get("content") {
                None | Some(Value::String(_)) => {}
                Some(Value::Array(blocks)) => {
                    for (index, inner) in blocks.iter().enumerate() {
                        check_block(&format!("{at}.tool_result.content.{index}"), inner, TOOL_RESULT_BLOCKS)?;
                    }
                }
                Some(_) => {
                    return Err(invalid(format!("{at}.tool_result.content: Input should be a valid string or list")));
                }
            }
            if object.get("is_error").is_some_and(|flag| !flag.is_boolean()) {
                return Err(invalid(format!("{at}.tool_result.is_error: Input should be a valid boolean")));
            }
        }
        "thinking" => {
            string("thinking")?;
            string("signature")?;
        }
        _ => {
            string("data")?;
        }
    }
    Ok(kind)
}

/// An image's or document's `source`.
fn check_source(at: &str, kind: &str, source: Option<&Value>) -> Result<(), RequestError> {
    let source = match source {
        Some(source @ Value::Object(_)) => source,
        None => return Err(invalid(format!("{at}.{kind}.source: Field required"))),
        Some(_) => return Err(invalid(format!("{at}.{kind}.source: Input should be a valid dictionary"))),
    };
    let has = |name: &str| source.get(name).is_some_and(Value::is_string);
    let source_type = source.get("type").and_then(Value::as_str).unwrap_or_default();
    let valid = match (kind, source_type) {
        ("image", "base64") => {
            has("data")
                && matches!(
                    source.get("media_type").and_then(Value::as_str),
                    Some("image/jpeg" | "image/png" | "image/gif" | "image/webp")
                )
        }
        ("document", "base64") => has("data") && has("media_type"),
        ("document", "text") => has("data"),
        ("document", "content") => source.get("content").is_some(),
        (_, "url") => has("url"),
        (_, "file") => has("file_id"),
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(invalid(format!("{at}.{kind}.source: Input should be a valid {kind} source (base64, url or file)")))
    }
}

/// `name`, when present, is a number in [0, `max`].
fn check_number(object: &Map<String, Value>, name: &str, max: f64) -> Result<(), RequestError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(number)) => {
            let value = number.as_f64().unwrap_or(f64::NAN);
            if value > max {
                Err(invalid(format!("{name}: Input should be less than or equal to {max}")))
            } else if value < 0.0 || value.is_nan() {
                Err(invalid(format!("{name}: Input should be greater than or equal to 0")))
            } else {
                Ok(())
            }
        }
        Some(_) => Err(invalid(format!("{name}: Input should be a valid number"))),
    }
}

/// `thinking`: `{"type": "enabled", "budget_tokens": n}` with
/// 1024 <= n < max_tokens, `{"type": "disabled"}` or `{"type": "adaptive"}`.
fn check_thinking(object: &Map<String, Value>, max_tokens: u64) -> Result<(), RequestError> {
    let Some(thinking) = object.get("thinking").filter(|v| !v.is_null()) else { return Ok(()) };
    match thinking.get("type").and_then(Value::as_str) {
        Some("enabled") => match thinking.get("budget_tokens").and_then(Value::as_u64) {
            None => Err(invalid("thinking.enabled.budget_tokens: Field required".into())),
            Some(budget) if budget < 1024 => {
                Err(invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024".into()))
            }
            Some(budget) if budget >= max_tokens => {
                Err(invalid("`max_tokens` must be greater than `thinking.budget_tokens`".into()))
            }
            Some(_) => Ok(()),
        },
        Some("disabled" | "adaptive") => Ok(()),
        _ => Err(invalid(
            "thinking: Input tag found using 'type' does not match any of the expected tags: 'enabled', \
             'disabled', 'adaptive'"
                .into(),
        )),
    }
}

/// The custom tools offered: (name, input schema) of each, in order. Server
/// tools (`"type": "<name>_YYYYMMDD"`) are accepted but never called.
fn read_tools(object: &Map<String, Value>) -> Result<Vec<(String, Value)>, RequestError> {
    let tools = match object.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(invalid("tools: Input should be a valid list".into())),
    };
    let mut custom = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (index, tool) in tools.iter().enumerate() {
        let tool =
            tool.as_object().ok_or_else(|| invalid(format!("tools.{index}: Input should be a valid dictionary")))?;
        let name = match tool.get("name") {
            Some(Value::String(name)) => name.as_str(),
            _ => return Err(invalid(format!("tools.{index}.custom.name: Field required"))),
        };
        match tool.get("type").and_then(Value::as_str) {
            None | Some("custom") => {
                if name.is_empty()
                    || name.len() > 128
                    || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(invalid(format!(
                        "tools.{index}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                    )));
                }
                const FIELDS: &[&str] = &["type", "name", "description", "input_schema", "cache_control", "strict"];
                if let Some(extra) = tool.keys().find(|key| !FIELDS.contains(&key.as_str())) {
                    return Err(invalid(format!("tools.{index}.custom.{extra}: Extra inputs are not permitted")));
                }
                let schema = match tool.get("input_schema") {
                    Some(schema @ Value::Object(_)) => schema,
                    None => return Err(invalid(format!("tools.{index}.custom.input_schema: Field required"))),
                    Some(_) => {
                        return Err(invalid(format!(
                            "tools.{index}.custom.input_schema: Input should be a valid dictionary"
                        )));
                    }
                };
                if schema.get("type").and_then(Value::as_str) != Some("object") {
                    return Err(invalid(format!("tools.{index}.custom.input_schema.type: Input should be 'object'")));
                }
                if tool.get("description").is_some_and(|d| !d.is_string()) {
                    return Err(invalid(format!("tools.{index}.custom.description: Input should be a valid string")));
                }
                custom.push((name.to_owned(), schema.clone()));
            }
            Some(server) if is_server_tool_type(server) => {}
            Some(other) => {
                return Err(invalid(format!(
                    "tools.{index}: Input tag '{other}' found using 'type' does not match any of the expected tags: \
                     'custom', or a server tool's dated type"
                )));
            }
        }
        if names.contains(&name) {
            return Err(invalid("tools: Tool names must be unique.".into()));
        }
        names.push(name);
    }
    Ok(custom)
}

/// A server tool's versioned type, like `web_search_20250305`.
fn is_server_tool_type(kind: &str) -> bool {
    kind.rsplit_once('_')
        .is_some_and(|(name, date)| !name.is_empty() && date.len() == 8 && date.chars().all(|c| c.is_ascii_digit()))
}

/// `tool_choice`: `{"type": "auto" | "any" | "none"}` or
/// `{"type": "tool", "name": …}`, with `disable_parallel_tool_use` on all
/// but `none`.
fn read_tool_choice(object: &Map<String, Value>) -> Result<Choice, RequestError> {
    let choice = match object.get("tool_choice") {
        None | Some(Value::Null) => return Ok(Choice::First),
        Some(Value::Object(choice)) => choice,
        Some(_) => {
            return Err(invalid(
                "tool_choice: Input should be a valid dictionary or object to extract fields from".into(),
            ));
        }
    };
    let kind = choice.get("type").and_then(Value::as_str).unwrap_or_default();
    let fields: &[&str] = match kind {
        "auto" | "any" => &["type", "disable_parallel_tool_use"],
        "tool" => &["type", "name", "disable_parallel_tool_use"],
        "none" => &["type"],
        _ => {
            return Err(invalid(format!(
                "tool_choice: Input tag '{kind}' found using 'type' does not match any of the expected tags: 'auto', \
                 'any', 'tool', 'none'"
            )));
        }
    };
    if let Some(extra) = choice.keys().find(|key| !fields.contains(&key.as_str())) {
        return Err(invalid(format!("tool_choice.{kind}.{extra}: Extra inputs are not permitted")));
    }
    if choice.get("disable_parallel_tool_use").is_some_and(|flag| !flag.is_boolean()) {
        return Err(invalid(format!("tool_choice.{kind}.disable_parallel_tool_use: Input should be a valid boolean")));
    }
    match kind {
        "tool" => match choice.get("name") {
            Some(Value::String(name)) => Ok(Choice::Named(name.clone())),
            _ => Err(invalid("tool_choice.tool.name: Field required".into())),
        },
        "none" => Ok(Choice::Forbidden),
        _ => Ok(Choice::First),
    }
}

pub fn message_id(hash: &str) -> String {
    format!("msg_{hash}")
}

/// The id of the `tool_use` block in a message, derived from the message's.
pub fn tool_use_id(id: &str) -> String {
    format!("toolu_{}", id.strip_prefix("msg_").unwrap_or(id))
}

fn stop_reason(reply: &Reply) -> &'static str {
    match reply {
        _ if reply.truncated() => "max_tokens",
        Reply::Text(_) => "end_turn",
        Reply::Call { .. } => "tool_use",
    }
}

fn usage(input_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens
    })
}

/// A non-streaming `message` object: a `text` block, or a `tool_use` block.
pub fn message(id: &str, prompt: &Prompt, reply: &Reply) -> Value {
    let content = match reply {
        Reply::Text(answer) => json!([{"type": "text", "text": answer.content()}]),
        Reply::Call { name, arguments, .. } => {
            json!([{"type": "tool_use", "id": tool_use_id(id), "name": name, "input": Reply::input(arguments)}])
        }
    };
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": content,
        "stop_reason": stop_reason(reply),
        "stop_sequence": null,
        "usage": usage(prompt.prompt_tokens, reply.output_tokens())
    })
}

/// The SSE events of a streamed message, in the real API's order:
/// message_start, content_block_start, ping, then one content_block_delta
/// per word (`text_delta`; for a call: an empty `input_json_delta`, then one
/// per argument fragment), content_block_stop, message_delta (stop reason,
/// final output_tokens), message_stop.
pub fn stream_events(id: &str, prompt: &Prompt, reply: &Reply) -> Vec<Bytes> {
    let mut events = Vec::new();
    // The real API reports a provisional output_tokens of 1 at the start;
    // the total comes in message_delta.
    let mut start_message = message(id, prompt, reply);
    if let Some(object) = start_message.as_object_mut() {
        object.insert("content".into(), json!([]));
        object.insert("stop_reason".into(), Value::Null);
        object.insert("usage".into(), usage(prompt.prompt_tokens, 1));
    }
    events.push(named_event("message_start", &json!({"type": "message_start", "message": start_message})));
    let (block, deltas) = match reply {
        Reply::Text(answer) => (
            json!({"type": "text", "text": ""}),
            answer.deltas().into_iter().map(|text| json!({"type": "text_delta", "text": text})).collect::<Vec<_>>(),
        ),
        Reply::Call { name, arguments, .. } => (
            json!({"type": "tool_use", "id": tool_use_id(id), "name": name, "input": {}}),
            std::iter::once(String::new())
                .chain(tools::fragments(arguments))
                .map(|partial| json!({"type": "input_json_delta", "partial_json": partial}))
                .collect(),
        ),
    };
    events.push(named_event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": block}),
    ));
    events.push(named_event("ping", &json!({"type": "ping"})));
    for delta in deltas {
        events.push(named_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ));
    }
    events.push(named_event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
    events.push(named_event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(reply), "stop_sequence": null},
            "usage": {"output_tokens": reply.output_tokens()}
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
