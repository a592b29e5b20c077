//! Request bodies: the client's body in the provider's API, or why it
//! cannot be said there.
//!
//! The rules are conservative on purpose. A field the target API has no
//! way to express is a reason to skip the model, not to drop the field:
//! the client asked for it. Unknown fields are treated the same way. Only
//! hints that change nothing in the answer are left behind (prompt-cache
//! keys and markers, stream options the router sets itself).
//!
//! The router owns `model`, the output cap and stream usage: those are set
//! by the plan after translation, as for any forwarded body.

use crate::api::ApiFormat;
use serde_json::{Map, Value, json};

/// Why a request cannot go to a model of another API.
pub type Untranslatable = String;

type Body = Map<String, Value>;

/// `body`, a valid request of the `client` API (the router parsed it),
/// said in the `provider` API.
pub fn translate_request(client: ApiFormat, provider: ApiFormat, body: &Body) -> Result<Body, Untranslatable> {
    match (client, provider) {
        (ApiFormat::OpenAi, ApiFormat::Anthropic) => chat_to_messages(body),
        (ApiFormat::Anthropic, ApiFormat::OpenAi) => messages_to_chat(body),
        (ApiFormat::Responses, ApiFormat::OpenAi) => responses_to_chat(body),
        (ApiFormat::Responses, ApiFormat::Anthropic) => chat_to_messages(&responses_to_chat(body)?),
        (from, to) if from == to => Ok(body.clone()),
        (from, to) => Err(format!("no translation from the {} API to the {} API", from.as_str(), to.as_str())),
    }
}

fn no_equivalent(field: &str, api: &str) -> Untranslatable {
    format!("`{field}` has no {api} equivalent")
}

fn is_null_or(v: &Value, ok: impl Fn(&Value) -> bool) -> bool {
    v.is_null() || ok(v)
}

fn is_zero(v: &Value) -> bool {
    v.as_f64() == Some(0.0)
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

// ------------------------------------------------------- chat → Messages

/// OpenAI Chat Completions → Anthropic Messages.
fn chat_to_messages(body: &Body) -> Result<Body, Untranslatable> {
    const API: &str = "Anthropic";
    let mut out = Body::new();
    let mut system: Vec<Value> = Vec::new();
    let mut parallel_off = false;
    // A field sent as null is a field not sent.
    for (key, value) in body.iter().filter(|(_, v)| !v.is_null()) {
        match key.as_str() {
            "model" | "messages" | "stream_options" | "prompt_cache_key" => {}
            // `max_completion_tokens` wins over `max_tokens`, as at OpenAI.
            "max_completion_tokens" if !value.is_null() => {
                out.insert("max_tokens".into(), value.clone());
            }
            "max_tokens" if !value.is_null() && body.get("max_completion_tokens").is_none_or(Value::is_null) => {
                out.insert("max_tokens".into(), value.clone());
            }
            "max_tokens" | "max_completion_tokens" => {}
            "stream" => {
                out.insert("stream".into(), value.clone());
            }
            "temperature" => match value.as_f64() {
                Some(t) if t > 1.0 => return Err(format!("temperature {t} is above Anthropic's maximum of 1")),
                _ if value.is_null() => {}
                _ => {
                    out.insert("temperature".into(), value.clone());
                }
            },
            "top_p" if !value.is_null() => {
                out.insert("top_p".into(), value.clone());
            }
            "stop" => match value {
                Value::Null => {}
                Value::String(s) => {
                    out.insert("stop_sequences".into(), json!([s]));
                }
                Value::Array(_) => {
                    out.insert("stop_sequences".into(), value.clone());
                }
                _ => return Err("`stop` must be a string or an array".into()),
            },
            "user" | "safety_identifier" => {
                if let Some(user) = value.as_str() {
                    out.insert("metadata".into(), json!({ "user_id": user }));
                }
            }
            "tools" => {
                if let Some(tools) = value.as_array() {
                    let tools = tools.iter().map(chat_tool_to_anthropic).collect::<Result<Vec<_>, _>>()?;
                    if !tools.is_empty() {
                        out.insert("tools".into(), Value::Array(tools));
                    }
                }
            }
            "tool_choice" => {
                if let Some(choice) = chat_tool_choice_to_anthropic(value)? {
                    out.insert("tool_choice".into(), choice);
                }
            }
            "parallel_tool_calls" => parallel_off = value.as_bool() == Some(false),
            // Neutral values of fields Anthropic lacks say nothing.
            "n" if is_null_or(value, |v| v.as_u64() == Some(1)) => {}
            "top_logprobs" if is_null_or(value, is_zero) => {}
            "logprobs" if is_null_or(value, |v| v.as_bool() == Some(false)) => {}
            "presence_penalty" | "frequency_penalty" if is_null_or(value, is_zero) => {}
            "logit_bias" if is_null_or(value, |v| v.as_object().is_some_and(Map::is_empty)) => {}
            "store" if is_null_or(value, |v| v.as_bool() == Some(false)) => {}
            "metadata" if is_null_or(value, |v| v.as_object().is_some_and(Map::is_empty)) => {}
            "service_tier" if is_null_or(value, |v| matches!(v.as_str(), Some("auto" | "default"))) => {}
            "modalities" if is_null_or(value, |v| v == &json!(["text"])) => {}
            "response_format" if is_null_or(value, |v| str_of(v, "type") == Some("text")) => {}
            "n" => return Err("`n` above 1: Anthropic answers with one message".into()),
            "metadata" => return Err("`metadata` is stored with OpenAI completions; Anthropic keeps nothing".into()),
            other => return Err(no_equivalent(other, API)),
        }
    }
    let messages = body.get("messages").and_then(Value::as_array).ok_or("`messages` is not an array")?;
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for message in messages {
        let role = str_of(message, "role").unwrap_or_default();
        for (key, value) in message.as_object().into_iter().flatten() {
            // `annotations` describe an earlier answer's citations: nothing
            // the model is asked (apps send back the SDK's message object).
            let known =
                matches!(key.as_str(), "role" | "content" | "tool_calls" | "tool_call_id" | "refusal" | "annotations");
            if !known && !value.is_null() {
                return Err(format!("`messages[].{key}` has no Anthropic equivalent"));
            }
        }
        match role {
            "system" | "developer" => {
                for block in chat_content_to_blocks(message.get("content"))? {
                    if str_of(&block, "type") != Some("text") {
                        return Err("a system message with non-text content has no Anthropic equivalent".into());
                    }
                    system.push(block);
                }
            }
            "user" => push_turn(&mut turns, "user", chat_content_to_blocks(message.get("content"))?),
            "assistant" => {
                let mut blocks = chat_content_to_blocks(message.get("content"))?;
                if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
                    blocks.push(json!({ "type": "text", "text": refusal }));
                }
                for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    if str_of(call, "type").is_some_and(|t| t != "function") {
                        return Err("a custom tool call has no Anthropic equivalent".into());
                    }
                    let function = call.get("function").ok_or("a tool call without `function`")?;
                    let arguments = str_of(function, "arguments").unwrap_or("{}");
                    let input: Value = if arguments.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(arguments)
                            .map_err(|_| "a tool call's arguments are not JSON: Anthropic needs an object")?
                    };
                    if !input.is_object() {
                        return Err("a tool call's arguments are not a JSON object: Anthropic needs one".into());
                    }
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": anthropic_id(str_of(call, "id").unwrap_or_default()),
                        "name": str_of(function, "name").unwrap_or_default(),
                        "input": input,
                    }));
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" => {
                let content = match message.get("content") {
                    Some(Value::String(s)) => Value::String(s.clone()),
                    other => {
                        let blocks = chat_content_to_blocks(other)?;
                        if blocks.iter().any(|b| str_of(b, "type") != Some("text")) {
                            return Err("a tool result with non-text content has no Anthropic equivalent".into());
                        }
                        Value::Array(blocks)
                    }
                };
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": anthropic_id(message.get("tool_call_id").and_then(Value::as_str).unwrap_or_default()),
                    "content": content,
                });
                push_turn(&mut turns, "user", vec![block]);
            }
            other => return Err(format!("`{other}` messages have no Anthropic equivalent")),
        }
    }
    if parallel_off {
        let choice = out.entry("tool_choice").or_insert_with(|| json!({ "type": "auto" }));
        if let Some(choice) = choice.as_object_mut()
            && choice.get("type").and_then(Value::as_str) != Some("none")
        {
            choice.insert("disable_parallel_tool_use".into(), Value::Bool(true));
        }
    }
    if !out.contains_key("tools") {
        // A tool choice without tools asks nothing (and the APIs refuse it).
        out.remove("tool_choice");
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    if turns.iter().any(|(_, content)| content.is_empty()) {
        return Err("an empty message has no Anthropic equivalent (it refuses empty turns)".into());
    }
    match turns.last() {
        None => return Err("a conversation of system text only has no Anthropic equivalent".into()),
        // Anthropic would continue that turn (a prefill); OpenAI models write a new one.
        Some((role, _)) if role == "assistant" => {
            return Err("a conversation ending in an assistant turn asks Anthropic to continue it".into());
        }
        Some(_) => {}
    }
    let messages: Vec<Value> =
        turns.into_iter().map(|(role, content)| json!({ "role": role, "content": content })).collect();
    if !out.contains_key("tools") {
        // A tool choice without tools asks nothing (and the APIs refuse it).
        out.remove("tool_choice");
        out.remove("parallel_tool_calls");
    }
    out.insert("messages".into(), Value::Array(messages));
    Ok(out)
}

/// A tool-call id as Anthropic accepts it (`^[a-zA-Z0-9_-]+$`): any other
/// character becomes `_`, the same way in a call and in its result, so
/// they still pair.
fn anthropic_id(id: &str) -> String {
    let id: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if id.is_empty() { "call_".to_owned() } else { id }
}

/// Consecutive messages of one role are one Anthropic turn (tool results
/// and the user's next words go in the same user message).
fn push_turn(turns: &mut Vec<(String, Vec<Value>)>, role: &str, blocks: Vec<Value>) {
    match turns.last_mut() {
        Some((last, content)) if last == role => content.extend(blocks),
        _ => turns.push((role.to_owned(), blocks)),
    }
}

/// A chat message's `content` (string, parts, or null) as Anthropic blocks.
fn chat_content_to_blocks(content: Option<&Value>) -> Result<Vec<Value>, Untranslatable> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({ "type": "text", "text": s })]),
        Some(Value::Array(parts)) => parts.iter().map(chat_part_to_block).collect(),
        Some(_) => Err("message `content` must be a string or an array of parts".into()),
    }
}

fn chat_part_to_block(part: &Value) -> Result<Value, Untranslatable> {
    match str_of(part, "type") {
        Some("text") => Ok(json!({ "type": "text", "text": str_of(part, "text").unwrap_or_default() })),
        Some("refusal") => Ok(json!({ "type": "text", "text": str_of(part, "refusal").unwrap_or_default() })),
        Some("image_url") => {
            let url = part
                .get("image_url")
                .and_then(|i| i.as_str().or_else(|| str_of(i, "url")))
                .ok_or("an image part without a URL")?;
            image_source(url).map(|source| json!({ "type": "image", "source": source }))
        }
        Some(other) => Err(format!("`{other}` content parts have no Anthropic equivalent")),
        None => Err("a content part without a type".into()),
    }
}

/// An image URL (a `data:` URL or http(s)) as an Anthropic image source.
fn image_source(url: &str) -> Result<Value, Untranslatable> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or("a data URL without data")?;
        let media_type = meta.strip_suffix(";base64").ok_or("a data URL that is not base64")?;
        return Ok(json!({ "type": "base64", "media_type": media_type, "data": data }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({ "type": "url", "url": url }));
    }
    Err("an image URL that is neither data: nor http(s)".into())
}

fn chat_tool_to_anthropic(tool: &Value) -> Result<Value, Untranslatable> {
    if str_of(tool, "type") != Some("function") {
        return Err(format!("`{}` tools have no Anthropic equivalent", str_of(tool, "type").unwrap_or("untyped")));
    }
    let function = tool.get("function").ok_or("a function tool without `function`")?;
    let mut out = Map::new();
    out.insert("name".into(), function.get("name").cloned().unwrap_or(Value::Null));
    if let Some(d) = function.get("description").filter(|d| !d.is_null()) {
        out.insert("description".into(), d.clone());
    }
    let schema = match function.get("parameters") {
        Some(p) if p.is_object() => p.clone(),
        _ => json!({ "type": "object", "properties": {} }),
    };
    out.insert("input_schema".into(), schema);
    if let Some(strict) = function.get("strict").filter(|s| s.as_bool() == Some(true)) {
        out.insert("strict".into(), strict.clone());
    }
    Ok(Value::Object(out))
}

fn chat_tool_choice_to_anthropic(choice: &Value) -> Result<Option<Value>, Untranslatable> {
    Ok(match choice {
        Value::Null => None,
        Value::String(s) => match s.as_str() {
            "auto" => Some(json!({ "type": "auto" })),
            "required" => Some(json!({ "type": "any" })),
            "none" => Some(json!({ "type": "none" })),
            other => return Err(format!("tool_choice `{other}` has no Anthropic equivalent")),
        },
        Value::Object(o) => match (o.get("type").and_then(Value::as_str), o.get("function")) {
            (Some("function"), Some(f)) => Some(json!({ "type": "tool", "name": str_of(f, "name") })),
            _ => return Err("this `tool_choice` has no Anthropic equivalent".into()),
        },
        _ => return Err("`tool_choice` must be a string or an object".into()),
    })
}

// ------------------------------------------------------- Messages → chat

/// Anthropic Messages → OpenAI Chat Completions.
fn messages_to_chat(body: &Body) -> Result<Body, Untranslatable> {
    const API: &str = "OpenAI chat";
    let mut out = Body::new();
    let mut messages: Vec<Value> = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({ "role": "system", "content": s })),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for block in blocks {
                if str_of(block, "type") != Some("text") {
                    return Err("a non-text `system` block has no OpenAI chat equivalent".into());
                }
                text.push_str(str_of(block, "text").unwrap_or_default());
            }
            messages.push(json!({ "role": "system", "content": text }));
        }
        Some(_) => return Err("`system` must be a string or text blocks".into()),
    }
    // A field sent as null is a field not sent.
    for (key, value) in body.iter().filter(|(_, v)| !v.is_null()) {
        match key.as_str() {
            "model" | "messages" | "system" => {}
            "max_tokens" => {
                out.insert("max_tokens".into(), value.clone());
            }
            "stream" | "temperature" | "top_p" => {
                out.insert(key.clone(), value.clone());
            }
            "stop_sequences" => match value.as_array() {
                Some(s) if s.len() > 4 => return Err("more than 4 `stop_sequences`: OpenAI chat takes 4".into()),
                Some(s) if !s.is_empty() => {
                    out.insert("stop".into(), value.clone());
                }
                _ => {}
            },
            "metadata" => {
                if let Some(user) = value.get("user_id").and_then(Value::as_str) {
                    out.insert("user".into(), Value::String(user.to_owned()));
                }
                if value.as_object().is_some_and(|m| m.keys().any(|k| k != "user_id")) {
                    return Err(no_equivalent("metadata", API));
                }
            }
            "tools" => {
                if let Some(tools) = value.as_array() {
                    let tools = tools.iter().map(anthropic_tool_to_chat).collect::<Result<Vec<_>, _>>()?;
                    if !tools.is_empty() {
                        out.insert("tools".into(), Value::Array(tools));
                    }
                }
            }
            "tool_choice" => {
                let (choice, parallel_off) = anthropic_tool_choice_to_chat(value)?;
                if let Some(choice) = choice {
                    out.insert("tool_choice".into(), choice);
                }
                if parallel_off {
                    out.insert("parallel_tool_calls".into(), Value::Bool(false));
                }
            }
            "thinking" if is_null_or(value, |v| str_of(v, "type") == Some("disabled")) => {}
            // OpenAI's default tier is Anthropic's standard one.
            "service_tier" if is_null_or(value, |v| matches!(v.as_str(), Some("auto" | "standard_only"))) => {}
            "thinking" => return Err("extended `thinking` has no OpenAI chat equivalent".into()),
            other => return Err(no_equivalent(other, API)),
        }
    }
    let turns = body.get("messages").and_then(Value::as_array).ok_or("`messages` is not an array")?;
    if turns.last().and_then(|t| str_of(t, "role")) == Some("assistant") {
        // A prefill: Anthropic continues it, an OpenAI model would not.
        return Err("a final assistant turn (a prefill) has no OpenAI chat equivalent".into());
    }
    for turn in turns {
        let role = str_of(turn, "role").unwrap_or_default();
        let blocks: Vec<Value> = match turn.get("content") {
            Some(Value::String(s)) => vec![json!({ "type": "text", "text": s })],
            Some(Value::Array(b)) => b.clone(),
            _ => return Err("message `content` must be a string or blocks".into()),
        };
        match role {
            "user" => {
                // Tool results answer the previous assistant turn's calls:
                // chat wants them first, one `tool` message each.
                let mut parts: Vec<Value> = Vec::new();
                for block in &blocks {
                    match str_of(block, "type") {
                        Some("tool_result") => {
                            if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                                return Err("a tool result marked `is_error` has no OpenAI chat equivalent".into());
                            }
                            messages.push(json!({
                                "role": "tool",
                                "tool_call_id": str_of(block, "tool_use_id").unwrap_or_default(),
                                "content": tool_result_text(block.get("content"))?,
                            }));
                        }
                        _ => parts.push(anthropic_block_to_part(block)?),
                    }
                }
                if !parts.is_empty() {
                    messages.push(json!({ "role": "user", "content": parts }));
                }
            }
            "assistant" => {
                let mut text = String::new();
                let mut calls: Vec<Value> = Vec::new();
                for block in &blocks {
                    match str_of(block, "type") {
                        Some("text") => text.push_str(str_of(block, "text").unwrap_or_default()),
                        Some("tool_use") => calls.push(json!({
                            "id": str_of(block, "id").unwrap_or_default(),
                            "type": "function",
                            "function": {
                                "name": str_of(block, "name").unwrap_or_default(),
                                "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                            },
                        })),
                        Some(other) => {
                            return Err(format!("assistant `{other}` blocks have no OpenAI chat equivalent"));
                        }
                        None => return Err("a content block without a type".into()),
                    }
                }
                let mut message = Map::new();
                message.insert("role".into(), json!("assistant"));
                message.insert(
                    "content".into(),
                    if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
                );
                if !calls.is_empty() {
                    message.insert("tool_calls".into(), Value::Array(calls));
                }
                messages.push(Value::Object(message));
            }
            other => return Err(format!("`{other}` turns have no OpenAI chat equivalent")),
        }
    }
    if !out.contains_key("tools") {
        // A tool choice without tools asks nothing (and the APIs refuse it).
        out.remove("tool_choice");
        out.remove("parallel_tool_calls");
    }
    out.insert("messages".into(), Value::Array(messages));
    Ok(out)
}

fn anthropic_block_to_part(block: &Value) -> Result<Value, Untranslatable> {
    match str_of(block, "type") {
        Some("text") => Ok(json!({ "type": "text", "text": str_of(block, "text").unwrap_or_default() })),
        Some("image") => {
            let source = block.get("source").ok_or("an image without a source")?;
            let url = match str_of(source, "type") {
                Some("base64") => format!(
                    "data:{};base64,{}",
                    str_of(source, "media_type").unwrap_or("image/png"),
                    str_of(source, "data").unwrap_or_default()
                ),
                Some("url") => str_of(source, "url").unwrap_or_default().to_owned(),
                _ => return Err("an image source other than base64 or url has no OpenAI chat equivalent".into()),
            };
            Ok(json!({ "type": "image_url", "image_url": { "url": url } }))
        }
        Some(other) => Err(format!("`{other}` blocks have no OpenAI chat equivalent")),
        None => Err("a content block without a type".into()),
    }
}

fn tool_result_text(content: Option<&Value>) -> Result<String, Untranslatable> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for block in blocks {
                if str_of(block, "type") != Some("text") {
                    return Err("a tool result with non-text content has no OpenAI chat equivalent".into());
                }
                text.push_str(str_of(block, "text").unwrap_or_default());
            }
            Ok(text)
        }
        Some(_) => Err("a tool result's `content` must be a string or blocks".into()),
    }
}

fn anthropic_tool_to_chat(tool: &Value) -> Result<Value, Untranslatable> {
    if let Some(kind) = str_of(tool, "type").filter(|t| *t != "custom") {
        return Err(format!("Anthropic's server tool `{kind}` has no OpenAI chat equivalent"));
    }
    let mut function = Map::new();
    function.insert("name".into(), tool.get("name").cloned().unwrap_or(Value::Null));
    if let Some(d) = tool.get("description").filter(|d| !d.is_null()) {
        function.insert("description".into(), d.clone());
    }
    function.insert("parameters".into(), tool.get("input_schema").cloned().unwrap_or_else(|| json!({})));
    if let Some(strict) = tool.get("strict").filter(|s| !s.is_null()) {
        function.insert("strict".into(), strict.clone());
    }
    Ok(json!({ "type": "function", "function": function }))
}

fn anthropic_tool_choice_to_chat(choice: &Value) -> Result<(Option<Value>, bool), Untranslatable> {
    let parallel_off = choice.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true);
    let choice = match str_of(choice, "type") {
        None if choice.is_null() => None,
        Some("auto") => Some(json!("auto")),
        Some("any") => Some(json!("required")),
        Some("none") => Some(json!("none")),
        Some("tool") => Some(json!({ "type": "function", "function": { "name": str_of(choice, "name") } })),
        _ => return Err("this `tool_choice` has no OpenAI chat equivalent".into()),
    };
    Ok((choice, parallel_off))
}

// ------------------------------------------------------ Responses → chat

/// OpenAI Responses → OpenAI Chat Completions (and on to Anthropic).
fn responses_to_chat(body: &Body) -> Result<Body, Untranslatable> {
    const API: &str = "chat";
    let mut out = Body::new();
    let mut messages: Vec<Value> = Vec::new();
    if let Some(instructions) = body.get("instructions").and_then(Value::as_str) {
        messages.push(json!({ "role": "system", "content": instructions }));
    }
    // A field sent as null is a field not sent.
    for (key, value) in body.iter().filter(|(_, v)| !v.is_null()) {
        match key.as_str() {
            "model" | "input" | "instructions" | "prompt_cache_key" | "stream_options" => {}
            // Echoed back in the response object; it asks nothing of the model.
            "metadata" => {}
            "max_output_tokens" if !value.is_null() => {
                out.insert("max_tokens".into(), value.clone());
            }
            "stream" | "temperature" | "top_p" | "parallel_tool_calls" if !value.is_null() => {
                out.insert(key.clone(), value.clone());
            }
            "user" | "safety_identifier" => {
                if let Some(user) = value.as_str() {
                    out.insert("user".into(), Value::String(user.to_owned()));
                }
            }
            "tools" => {
                if let Some(tools) = value.as_array() {
                    let tools = tools.iter().map(responses_tool_to_chat).collect::<Result<Vec<_>, _>>()?;
                    if !tools.is_empty() {
                        out.insert("tools".into(), Value::Array(tools));
                    }
                }
            }
            "tool_choice" => match value {
                Value::Null => {}
                Value::String(_) => {
                    out.insert("tool_choice".into(), value.clone());
                }
                Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                    out.insert(
                        "tool_choice".into(),
                        json!({ "type": "function", "function": { "name": o.get("name") } }),
                    );
                }
                _ => return Err("a `tool_choice` naming a built-in tool runs only at OpenAI".into()),
            },
            "reasoning" => {
                if let Some(effort) = value.get("effort").filter(|e| !e.is_null()) {
                    out.insert("reasoning_effort".into(), effort.clone());
                }
                if value.get("summary").is_some_and(|s| !s.is_null()) {
                    return Err("reasoning summaries are the Responses API's own".into());
                }
            }
            "text" => {
                if let Some(format) = value.get("format").filter(|f| !f.is_null()) {
                    match str_of(format, "type") {
                        Some("text") => {}
                        Some("json_object") => {
                            out.insert("response_format".into(), json!({ "type": "json_object" }));
                        }
                        Some("json_schema") => {
                            let mut schema = format.as_object().cloned().unwrap_or_default();
                            schema.remove("type");
                            out.insert(
                                "response_format".into(),
                                json!({ "type": "json_schema", "json_schema": schema }),
                            );
                        }
                        _ => return Err("this `text.format` has no chat equivalent".into()),
                    }
                }
                if value.get("verbosity").is_some_and(|v| !v.is_null()) {
                    return Err(no_equivalent("text.verbosity", API));
                }
            }
            "previous_response_id" if !value.is_null() => {
                return Err("`previous_response_id` continues a conversation stored at OpenAI".into());
            }
            "store" if value.as_bool() == Some(true) => {
                return Err("`store: true` keeps the response at OpenAI".into());
            }
            "background" if value.as_bool() == Some(true) => {
                return Err("`background` responses run only at OpenAI".into());
            }
            "previous_response_id" | "store" | "background" => {}
            "service_tier" if is_null_or(value, |v| matches!(v.as_str(), Some("auto" | "default"))) => {}
            // Caps built-in tool calls, which never reach another API.
            "max_tool_calls" => {}
            "top_logprobs" if is_null_or(value, is_zero) => {}
            "truncation" if is_null_or(value, |v| v.as_str() == Some("disabled")) => {}
            "include" if is_null_or(value, |v| v.as_array().is_some_and(Vec::is_empty)) => {}
            other => return Err(format!("`{other}` is the Responses API's own")),
        }
    }
    match body.get("input") {
        Some(Value::String(s)) => messages.push(json!({ "role": "user", "content": s })),
        Some(Value::Array(items)) => {
            for item in items {
                responses_item_to_chat(item, &mut messages)?;
            }
        }
        _ => return Err("`input` must be a string or an array of items".into()),
    }
    if !out.contains_key("tools") {
        // A tool choice without tools asks nothing (and the APIs refuse it).
        out.remove("tool_choice");
        out.remove("parallel_tool_calls");
    }
    out.insert("messages".into(), Value::Array(messages));
    Ok(out)
}

fn responses_item_to_chat(item: &Value, messages: &mut Vec<Value>) -> Result<(), Untranslatable> {
    let kind = str_of(item, "type").unwrap_or("message");
    match kind {
        "message" => {
            let role = str_of(item, "role").unwrap_or("user");
            let content = match item.get("content") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => {
                    let parts = parts.iter().map(responses_part_to_chat).collect::<Result<Vec<_>, _>>()?;
                    if role == "user" {
                        Value::Array(parts)
                    } else {
                        // System and assistant turns take text only.
                        let mut text = String::new();
                        for part in &parts {
                            match part.get("text").and_then(Value::as_str) {
                                Some(t) => text.push_str(t),
                                None => return Err(format!("a non-text part in a `{role}` message")),
                            }
                        }
                        Value::String(text)
                    }
                }
                _ => return Err("a message item's `content` must be a string or parts".into()),
            };
            if !matches!(role, "user" | "assistant" | "system" | "developer") {
                return Err(format!("`{role}` messages have no chat equivalent"));
            }
            messages.push(json!({ "role": role, "content": content }));
        }
        "function_call" => {
            let call = json!({
                "id": str_of(item, "call_id").unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": str_of(item, "name").unwrap_or_default(),
                    "arguments": str_of(item, "arguments").unwrap_or("{}"),
                },
            });
            // Calls made in one turn are one assistant message.
            let last_is_calling = messages.last().is_some_and(|m| {
                str_of(m, "role") == Some("assistant") && m.get("tool_calls").is_some_and(Value::is_array)
            });
            match messages.last_mut().and_then(|m| m.get_mut("tool_calls")).and_then(Value::as_array_mut) {
                Some(calls) if last_is_calling => calls.push(call),
                _ => messages.push(json!({ "role": "assistant", "content": null, "tool_calls": [call] })),
            }
        }
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (str_of(part, "type"), str_of(part, "text")) {
                            (Some("input_text" | "output_text"), Some(t)) => text.push_str(t),
                            _ => return Err("a function output with non-text parts has no chat equivalent".into()),
                        }
                    }
                    text
                }
                _ => return Err("a `function_call_output` without `output`".into()),
            };
            messages.push(json!({
                "role": "tool",
                "tool_call_id": str_of(item, "call_id").unwrap_or_default(),
                "content": output,
            }));
        }
        "reasoning" => return Err("reasoning items are OpenAI's own (encrypted) state".into()),
        other => return Err(format!("`{other}` input items are the Responses API's own")),
    }
    Ok(())
}

fn responses_part_to_chat(part: &Value) -> Result<Value, Untranslatable> {
    match str_of(part, "type") {
        Some("input_text" | "output_text") => {
            Ok(json!({ "type": "text", "text": str_of(part, "text").unwrap_or_default() }))
        }
        Some("refusal") => Ok(json!({ "type": "text", "text": str_of(part, "refusal").unwrap_or_default() })),
        Some("input_image") => {
            let url = str_of(part, "image_url").ok_or("an `input_image` by `file_id` is stored at OpenAI")?;
            let mut image = Map::new();
            image.insert("url".into(), json!(url));
            if let Some(detail) = part.get("detail").filter(|d| !d.is_null()) {
                image.insert("detail".into(), detail.clone());
            }
            Ok(json!({ "type": "image_url", "image_url": image }))
        }
        Some("input_file") => Err("`input_file` parts are read only by OpenAI".into()),
        Some(other) => Err(format!("`{other}` parts have no chat equivalent")),
        None => Err("a content part without a type".into()),
    }
}

fn responses_tool_to_chat(tool: &Value) -> Result<Value, Untranslatable> {
    match str_of(tool, "type") {
        Some("function") => {
            let mut function = Map::new();
            for key in ["name", "description", "parameters", "strict"] {
                if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                    function.insert(key.into(), v.clone());
                }
            }
            Ok(json!({ "type": "function", "function": function }))
        }
        Some(other) => Err(format!("the built-in tool `{other}` runs only at OpenAI")),
        None => Err("a tool without a type".into()),
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn body(v: Value) -> Body {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_chat_request_with_system_tools_and_a_tool_round_trip_becomes_a_messages_request() {
        let chat = body(json!({
            "model": "tollgate/auto",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                              {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "user", "content": "Thanks; and tomorrow?"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "d", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "max_completion_tokens": 100,
            "stop": "END",
            "temperature": 0.5,
            "user": "u-1",
            "stream": true,
            "stream_options": {"include_usage": true}
        }));
        let out = translate_request(ApiFormat::OpenAi, ApiFormat::Anthropic, &chat).unwrap();
        assert_eq!(out["system"], json!([{"type": "text", "text": "Be brief."}]));
        assert_eq!(out["max_tokens"], json!(100));
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["metadata"], json!({"user_id": "u-1"}));
        assert_eq!(out["tool_choice"], json!({"type": "any", "disable_parallel_tool_use": true}));
        assert_eq!(out["tools"][0]["input_schema"], json!({"type": "object"}));
        assert!(out.get("stream_options").is_none());
        let messages = out["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert_eq!(
            messages[0]["content"][1]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "AAAA"})
        );
        assert_eq!(messages[1]["content"][0]["input"], json!({"city": "Paris"}));
        // The tool result and the next user words share one user turn.
        assert_eq!(messages[2]["content"][0]["type"], "tool_result");
        assert_eq!(messages[2]["content"][0]["tool_use_id"], "call_1");
        assert_eq!(messages[2]["content"][1]["text"], "Thanks; and tomorrow?");
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens_whatever_their_order() {
        let chat = body(json!({"model": "m", "max_completion_tokens": 5, "max_tokens": 60,
            "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(translate_request(ApiFormat::OpenAi, ApiFormat::Anthropic, &chat).unwrap()["max_tokens"], 5);
        let only_old = body(json!({"model": "m", "max_tokens": 60, "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(translate_request(ApiFormat::OpenAi, ApiFormat::Anthropic, &only_old).unwrap()["max_tokens"], 60);
    }

    #[test]
    fn tool_call_ids_anthropic_would_refuse_are_rewritten_alike_in_the_call_and_its_result() {
        let chat = body(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call.a:1", "type": "function",
                "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call.a:1", "content": "done"}
        ]}));
        let out = translate_request(ApiFormat::OpenAi, ApiFormat::Anthropic, &chat).unwrap();
        assert_eq!(out["messages"][1]["content"][0]["id"], "call_a_1");
        assert_eq!(out["messages"][2]["content"][0]["tool_use_id"], "call_a_1");
    }

    #[test]
    fn a_tool_choice_without_tools_is_left_out_rather_than_refused_upstream() {
        let messages = body(json!({"model": "m", "max_tokens": 10, "tool_choice": {"type": "auto"},
            "messages": [{"role": "user", "content": "hi"}]}));
        let chat = translate_request(ApiFormat::Anthropic, ApiFormat::OpenAi, &messages).unwrap();
        assert!(chat.get("tool_choice").is_none() && chat.get("parallel_tool_calls").is_none(), "{chat:?}");
        let chat_in = body(json!({"model": "m", "tool_choice": "auto", "parallel_tool_calls": false,
            "messages": [{"role": "user", "content": "hi"}]}));
        let anthropic = translate_request(ApiFormat::OpenAi, ApiFormat::Anthropic, &chat_in).unwrap();
        assert!(anthropic.get("tool_choice").is_none(), "{anthropic:?}");
    }

    #[test]
    fn an_empty_turn_anthropic_would_refuse_skips_the_model() {
        let empty = body(json!({"model": "m", "messages": [{"role": "user", "content": ""}]}));
        assert!(translate_request(ApiFormat::OpenAi, ApiFormat::Anthropic, &empty).is_err());
        let system_only = body(json!({"model": "m", "messages": [{"role": "system", "content": "x"}]}));
        assert!(translate_request(ApiFormat::OpenAi, ApiFormat::Anthropic, &system_only).is_err());
        // A final assistant turn is a prefill for Anthropic, a new reply for OpenAI.
        let prefill = body(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "{"}]}),
        );
        assert!(translate_request(ApiFormat::OpenAi, ApiFormat::Anthropic, &prefill).is_err());
        let mut anthropic_prefill = prefill.clone();
        anthropic_prefill.insert("max_tokens".into(), json!(5));
        assert!(translate_request(ApiFormat::Anthropic, ApiFormat::OpenAi, &anthropic_prefill).is_err());
        // Null fields and an SDK message's `annotations` ask nothing.
        let returned = body(json!({"model": "m", "top_p": null, "seed": null, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "annotations": [], "audio": null, "function_call": null},
            {"role": "user", "content": "and?"}]}));
        assert!(translate_request(ApiFormat::OpenAi, ApiFormat::Anthropic, &returned).is_ok());
    }

    #[test]
    fn chat_fields_anthropic_cannot_express_are_reasons_not_silent_drops() {
        for (field, value) in [
            ("logprobs", json!(true)),
            ("n", json!(2)),
            ("presence_penalty", json!(0.5)),
            ("response_format", json!({"type": "json_object"})),
            ("seed", json!(7)),
            ("temperature", json!(1.5)),
            ("reasoning_effort", json!("high")),
            ("some_future_field", json!(1)),
        ] {
            let mut chat = body(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
            chat.insert(field.into(), value);
            let why = translate_request(ApiFormat::OpenAi, ApiFormat::Anthropic, &chat).unwrap_err();
            assert!(!why.is_empty(), "{field}");
        }
        let neutral = body(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "n": 1, "logprobs": false, "presence_penalty": 0, "response_format": {"type": "text"}}));
        assert!(translate_request(ApiFormat::OpenAi, ApiFormat::Anthropic, &neutral).is_ok());
    }

    #[test]
    fn a_messages_request_with_tool_results_becomes_chat_with_tool_messages_first() {
        let messages = body(json!({
            "model": "m",
            "system": [{"type": "text", "text": "Be brief."}],
            "max_tokens": 50,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-2"},
            "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"},
                    {"type": "text", "text": "And?"}]}
            ]
        }));
        let out = translate_request(ApiFormat::Anthropic, ApiFormat::OpenAi, &messages).unwrap();
        let m = out["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(m[2]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
        assert_eq!(m[3], json!({"role": "tool", "tool_call_id": "toolu_1", "content": "cold"}));
        assert_eq!(m[4]["content"][0]["text"], "And?");
        assert_eq!(out["tool_choice"], json!({"type": "function", "function": {"name": "weather"}}));
        assert_eq!(out["parallel_tool_calls"], json!(false));
        assert_eq!(out["user"], "u-2");
        assert_eq!(out["stop"], json!(["END"]));
        for (field, value) in [("top_k", json!(5)), ("thinking", json!({"type": "enabled", "budget_tokens": 1024}))] {
            let mut with = messages.clone();
            with.insert(field.into(), value);
            assert!(translate_request(ApiFormat::Anthropic, ApiFormat::OpenAi, &with).is_err(), "{field}");
        }
    }

    #[test]
    fn a_responses_request_becomes_chat_or_messages_and_server_side_features_are_refused() {
        let responses = body(json!({
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "function_call", "call_id": "call_9", "name": "weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_9", "output": "warm"}
            ],
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
            "max_output_tokens": 64,
            "metadata": {"app": "x"}
        }));
        let chat = translate_request(ApiFormat::Responses, ApiFormat::OpenAi, &responses).unwrap();
        let m = chat["messages"].as_array().unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[2]["tool_calls"][0]["id"], "call_9");
        assert_eq!(m[3]["role"], "tool");
        assert_eq!(chat["max_tokens"], 64);
        let anthropic = translate_request(ApiFormat::Responses, ApiFormat::Anthropic, &responses).unwrap();
        assert_eq!(anthropic["system"][0]["text"], "Be brief.");
        assert_eq!(anthropic["messages"][2]["content"][0]["type"], "tool_result");
        for (field, value) in [
            ("previous_response_id", json!("resp_1")),
            ("store", json!(true)),
            ("tools", json!([{"type": "web_search"}])),
            ("background", json!(true)),
        ] {
            let mut with = responses.clone();
            with.insert(field.into(), value);
            assert!(translate_request(ApiFormat::Responses, ApiFormat::Anthropic, &with).is_err(), "{field}");
        }
        let mut reasoning = responses.clone();
        reasoning.insert("reasoning".into(), json!({"effort": "high"}));
        assert!(translate_request(ApiFormat::Responses, ApiFormat::OpenAi, &reasoning).is_ok());
        assert!(translate_request(ApiFormat::Responses, ApiFormat::Anthropic, &reasoning).is_err());
    }
}
