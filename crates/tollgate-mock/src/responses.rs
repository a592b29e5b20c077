//! OpenAI Responses (`POST …/responses`): request reading and the response
//! shapes (the `response` object, the named SSE event sequence), modelled on
//! what api.openai.com sends so the official SDKs, streaming helpers
//! included, parse them.
//!
//! The answer is the chat endpoints' ([`Answer::for_prompt`]): `[mock:<model>]`
//! and a sentence chosen by the last user message, one output token per word,
//! cut to `max_output_tokens` (the response is then `incomplete`, reason
//! `max_output_tokens`). The input is counted like chat messages: each input
//! item (message text, a function call's name and arguments, a function
//! call's output) is one "message", `instructions` one more.
//!
//! When the request offers function tools (and `tool_choice` is not
//! `"none"`) and its last input item is not a `function_call_output`, the
//! answer is a call of the first tool (or the one `tool_choice` names) with
//! arguments `{}` instead of a message; the call "costs"
//! ceil(len(name) / 4) + ceil(len(arguments) / 4) output tokens. Sending the
//! call back with a `function_call_output` gets a text answer, so a whole
//! tool round trip can be played.
//!
//! Lenient where the real API polices clients (no `max_output_tokens`
//! minimum of 16, unknown input item types accepted and counted for their
//! text), strict where a router must be: no model, no input, an input of the
//! wrong type, an empty input list or a malformed item are 400s.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::answer::{self, CREATED_UNIX_SECONDS, Prompt};
use crate::api::RequestError;
use crate::tools::{self, Choice, PlannedCall, Reply};

/// A Responses request reduced to what decides the answer, plus the
/// settings the `response` object echoes back.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsesRequest {
    /// Model, last user text, input estimate, `max_output_tokens`, `stream`,
    /// and the function to call instead of answering with text, if any.
    pub prompt: Prompt,
    /// Request fields echoed in the `response` object.
    echo: Map<String, Value>,
    /// Web searches the answer reports (`web_search_call` items, after the
    /// message): two when a `web_search*` tool is offered, capped by
    /// `max_tool_calls`.
    searches: u64,
}

/// How many web searches an answer reports when a `web_search` tool is offered.
const MOCK_SEARCHES: u64 = 2;

/// The `web_search_call` output items of an answer.
fn search_items(id: &str, request: &ResponsesRequest) -> Vec<Value> {
    (0..request.searches)
        .map(|n| {
            json!({"id": format!("ws_{n}_{id}"), "type": "web_search_call", "status": "completed",
                   "action": {"type": "search", "query": request.prompt.last_user_text}})
        })
        .collect()
}

/// The arguments every mock function call of the Responses API carries
/// (the chat endpoints build theirs from the schema, [`crate::tools`]).
const CALL_ARGUMENTS: &str = "{}";

/// Reads a Responses request.
pub fn parse_request(body: &Value) -> Result<ResponsesRequest, RequestError> {
    let object =
        body.as_object().ok_or_else(|| RequestError::invalid("The request body must be a JSON object.", None))?;
    let model = match object.get("model") {
        Some(Value::String(model)) => model.clone(),
        _ => return Err(RequestError::missing("model", "Missing required parameter: 'model'.")),
    };
    let mut texts = Vec::new();
    if let Some(instructions) = object.get("instructions").filter(|value| !value.is_null()) {
        match instructions {
            Value::String(text) => texts.push(text.clone()),
            _ => return Err(invalid_type("instructions", "a string")),
        }
    }
    let mut last_user_text = String::new();
    let mut last_is_tool_output = false;
    match object.get("input") {
        None | Some(Value::Null) => {
            return Err(RequestError::missing("input", "Missing required parameter: 'input'."));
        }
        Some(Value::String(text)) => {
            last_user_text.clone_from(text);
            texts.push(text.clone());
        }
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(RequestError {
                status: 400,
                message: "Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty \
                          array instead."
                    .to_owned(),
                param: Some("input"),
                code: Some("empty_array"),
            });
        }
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                let item = parse_item(index, item)?;
                last_is_tool_output = item.kind == ItemKind::ToolOutput;
                if item.kind == ItemKind::User {
                    last_user_text.clone_from(&item.text);
                }
                texts.push(item.text);
            }
        }
        Some(_) => return Err(invalid_type("input", "a string or an array of input items")),
    }
    let max_output_tokens = match object.get("max_output_tokens").filter(|value| !value.is_null()) {
        Some(value) => Some(value.as_u64().ok_or_else(|| {
            RequestError::invalid(
                "Invalid 'max_output_tokens': expected a non-negative integer.",
                Some("max_output_tokens"),
            )
        })?),
        None => None,
    };
    let call = if last_is_tool_output { None } else { function_to_call(object)? };
    let prompt = Prompt {
        model,
        last_user_text,
        prompt_tokens: answer::prompt_tokens(texts.iter().map(String::as_str)),
        max_output_tokens,
        stream: object.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: false,
        call: call.map(|name| PlannedCall { name, arguments: CALL_ARGUMENTS.to_owned() }),
    };
    let echo = ECHOED
        .iter()
        .filter_map(|name| object.get(*name).filter(|value| !value.is_null()).map(|v| ((*name).to_owned(), v.clone())))
        .collect();
    let offers_search = object.get("tools").and_then(Value::as_array).is_some_and(|tools| {
        tools.iter().any(|t| t.get("type").and_then(Value::as_str).is_some_and(|k| k.starts_with("web_search")))
    });
    let cap = object.get("max_tool_calls").and_then(Value::as_u64).unwrap_or(u64::MAX);
    let searches = if offers_search { MOCK_SEARCHES.min(cap) } else { 0 };
    Ok(ResponsesRequest { prompt, echo, searches })
}

fn invalid_type(param: &'static str, expected: &str) -> RequestError {
    RequestError {
        status: 400,
        message: format!("Invalid type for '{param}': expected {expected}."),
        param: Some(param),
        code: Some("invalid_type"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    User,
    /// Another role's message, a function call, anything else.
    Other,
    ToolOutput,
}

struct Item {
    kind: ItemKind,
    /// The text the item contributes to the input estimate.
    text: String,
}

/// One input item: a message (`role` + `content`, `type` "message" or
/// absent), a `function_call`, a `function_call_output`, or another type
/// (reasoning, item references …), counted for whatever text it carries.
fn parse_item(index: usize, item: &Value) -> Result<Item, RequestError> {
    let invalid = |what: &str| RequestError::invalid(&format!("Invalid 'input[{index}]': {what}"), Some("input"));
    let object = item.as_object().ok_or_else(|| invalid("expected an object."))?;
    let kind = object.get("type").map(|kind| kind.as_str().ok_or_else(|| invalid("'type' must be a string.")));
    match kind.transpose()? {
        None | Some("message") => {
            let role = object.get("role").and_then(Value::as_str).ok_or_else(|| invalid("missing 'role'."))?;
            if !matches!(role, "user" | "assistant" | "system" | "developer") {
                return Err(invalid(&format!("unknown role '{role}'.")));
            }
            let text = match object.get("content") {
                Some(content @ (Value::String(_) | Value::Array(_))) => answer::content_text(Some(content)),
                _ => return Err(invalid("'content' must be a string or an array of content parts.")),
            };
            Ok(Item { kind: if role == "user" { ItemKind::User } else { ItemKind::Other }, text })
        }
        Some("function_call") => {
            let field = |name: &str| {
                object
                    .get(name)
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(&format!("a function_call needs a string '{name}'.")))
            };
            field("call_id")?;
            Ok(Item { kind: ItemKind::Other, text: format!("{}{}", field("name")?, field("arguments")?) })
        }
        Some("function_call_output") => {
            object
                .get("call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("a function_call_output needs a string 'call_id'."))?;
            let text = match object.get("output") {
                Some(output @ (Value::String(_) | Value::Array(_))) => answer::content_text(Some(output)),
                _ => return Err(invalid("a function_call_output needs an 'output'.")),
            };
            Ok(Item { kind: ItemKind::ToolOutput, text })
        }
        Some(_) => Ok(Item { kind: ItemKind::Other, text: answer::content_text(object.get("content")) }),
    }
}

/// The function the model calls, by `tools` and `tool_choice`: none for
/// `"none"` or without function tools; the named one for
/// `{"type": "function", "name": …}`; else the first function tool.
fn function_to_call(object: &Map<String, Value>) -> Result<Option<String>, RequestError> {
    let tools = match object.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(invalid_type("tools", "an array of tools")),
    };
    let mut functions = Vec::new();
    for tool in tools {
        if tool.get("type").and_then(Value::as_str) == Some("function") {
            let name = tool
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| RequestError::missing("tools", "Missing required parameter: 'tools[].name'."))?;
            functions.push((name.to_owned(), tool.get("parameters").cloned().unwrap_or(Value::Null)));
        }
    }
    let choice = match object.get("tool_choice") {
        Some(Value::String(choice)) if choice == "none" => Choice::Forbidden,
        Some(Value::Object(choice)) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            Choice::Named(choice.get("name").and_then(Value::as_str).unwrap_or_default().to_owned())
        }
        _ => Choice::First,
    };
    match tools::plan_call(&functions, &choice) {
        Ok(call) => Ok(call.map(|call| call.name)),
        Err(_) => {
            Err(RequestError::invalid("Invalid 'tool_choice': it names no function in 'tools'.", Some("tool_choice")))
        }
    }
}

/// Request fields the `response` object echoes.
const ECHOED: [&str; 12] = [
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "previous_response_id",
    "reasoning",
    "store",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
];

/// What the `response` object shows for an [`ECHOED`] field the request
/// left out, as the real API fills them in.
fn echo_default(name: &str) -> Value {
    match name {
        "metadata" => json!({}),
        "parallel_tool_calls" | "store" => json!(true),
        "reasoning" => json!({"effort": null, "summary": null}),
        "temperature" | "top_p" => json!(1.0),
        "text" => json!({"format": {"type": "text"}, "verbosity": "medium"}),
        "tool_choice" => json!("auto"),
        "tools" => json!([]),
        _ => Value::Null,
    }
}

pub fn response_id(hash: &str) -> String {
    format!("resp_{hash}")
}

/// Ids of the output item, derived from the response's.
fn item_ids(id: &str) -> (String, String) {
    let hash = id.strip_prefix("resp_").unwrap_or(id);
    (format!("msg_{hash}"), format!("fc_{hash}"))
}

fn call_id(id: &str) -> String {
    let hash = id.strip_prefix("resp_").unwrap_or(id);
    format!("call_{hash}")
}

fn usage(request: &ResponsesRequest, reply: &Reply) -> Value {
    let input = request.prompt.prompt_tokens;
    let output = reply.output_tokens();
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output
    })
}

fn item_status(done: bool, truncated: bool) -> &'static str {
    match (done, truncated) {
        (false, _) => "in_progress",
        (true, false) => "completed",
        (true, true) => "incomplete",
    }
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// The one output item: with `done` false, as `response.output_item.added`
/// shows it (no content yet, empty arguments).
fn output_item(id: &str, reply: &Reply, done: bool) -> Value {
    let (message_id, call_item_id) = item_ids(id);
    let status = item_status(done, reply.truncated());
    match reply {
        Reply::Text(answer) => {
            let content = if done { json!([text_part(&answer.content())]) } else { json!([]) };
            json!({"id": message_id, "type": "message", "status": status, "content": content, "role": "assistant"})
        }
        Reply::Call { name, arguments, .. } => json!({
            "id": call_item_id,
            "type": "function_call",
            "status": status,
            "arguments": if done { arguments.as_str() } else { "" },
            "call_id": call_id(id),
            "name": name
        }),
    }
}

/// The `response` object: with `done` false, as `response.created` and
/// `response.in_progress` show it (in progress, no output, no usage).
fn response_object(id: &str, request: &ResponsesRequest, reply: &Reply, done: bool) -> Value {
    let truncated = reply.truncated();
    let status = match (done, truncated) {
        (false, _) => "in_progress",
        (true, false) => "completed",
        (true, true) => "incomplete",
    };
    let mut object = Map::new();
    object.insert("id".into(), json!(id));
    object.insert("object".into(), json!("response"));
    object.insert("created_at".into(), json!(CREATED_UNIX_SECONDS));
    object.insert("status".into(), json!(status));
    object.insert("background".into(), json!(false));
    object.insert("completed_at".into(), if done && !truncated { json!(CREATED_UNIX_SECONDS) } else { Value::Null });
    object.insert("error".into(), Value::Null);
    object.insert(
        "incomplete_details".into(),
        if done && truncated { json!({"reason": "max_output_tokens"}) } else { Value::Null },
    );
    object.insert("max_tool_calls".into(), Value::Null);
    object.insert("model".into(), json!(request.prompt.model));
    let output: Vec<Value> = if done {
        std::iter::once(output_item(id, reply, true)).chain(search_items(id, request)).collect()
    } else {
        Vec::new()
    };
    object.insert("output".into(), Value::Array(output));
    object.insert("service_tier".into(), json!("default"));
    object.insert("truncation".into(), json!("disabled"));
    object.insert("usage".into(), if done { usage(request, reply) } else { Value::Null });
    object.insert("user".into(), Value::Null);
    for name in ECHOED {
        let value = request.echo.get(name).cloned().unwrap_or_else(|| echo_default(name));
        object.insert(name.to_owned(), value);
    }
    Value::Object(object)
}

/// A non-streaming `response` object.
pub fn response(id: &str, request: &ResponsesRequest, reply: &Reply) -> Value {
    response_object(id, request, reply, true)
}

/// The SSE events of a streamed response, each `event: <type>` with a data
/// object carrying the same `type` and a `sequence_number` from 0:
/// `response.created`, `response.in_progress`, `response.output_item.added`,
/// then for text `response.content_part.added`, one
/// `response.output_text.delta` per word, `response.output_text.done`,
/// `response.content_part.done`, or for a function call one
/// `response.function_call_arguments.delta` and `.done`; then
/// `response.output_item.done` and `response.completed` (or
/// `response.incomplete`) with the whole response, usage included. No
/// `[DONE]`: the Responses API ends with the last event.
pub fn stream_events(id: &str, request: &ResponsesRequest, reply: &Reply) -> Vec<Bytes> {
    let mut events: Vec<Value> = Vec::new();
    let pending = response_object(id, request, reply, false);
    events.push(json!({"type": "response.created", "response": pending}));
    events.push(json!({"type": "response.in_progress", "response": pending}));
    events
        .push(json!({"type": "response.output_item.added", "output_index": 0, "item": output_item(id, reply, false)}));
    let (message_id, call_item_id) = item_ids(id);
    match reply {
        Reply::Text(answer) => {
            let at = |mut event: Value| {
                if let Some(object) = event.as_object_mut() {
                    object.insert("item_id".into(), json!(message_id));
                    object.insert("output_index".into(), json!(0));
                    object.insert("content_index".into(), json!(0));
                }
                event
            };
            events.push(at(json!({"type": "response.content_part.added", "part": text_part("")})));
            for delta in answer.deltas() {
                events.push(at(json!({"type": "response.output_text.delta", "delta": delta, "logprobs": []})));
            }
            let text = answer.content();
            events.push(at(json!({"type": "response.output_text.done", "text": text, "logprobs": []})));
            events.push(at(json!({"type": "response.content_part.done", "part": text_part(&text)})));
        }
        Reply::Call { name, arguments, .. } => {
            if !arguments.is_empty() {
                events.push(json!({
                    "type": "response.function_call_arguments.delta",
                    "item_id": call_item_id,
                    "output_index": 0,
                    "delta": arguments
                }));
            }
            events.push(json!({
                "type": "response.function_call_arguments.done",
                "item_id": call_item_id,
                "output_index": 0,
                "name": name,
                "arguments": arguments
            }));
        }
    }
    events.push(json!({"type": "response.output_item.done", "output_index": 0, "item": output_item(id, reply, true)}));
    for (n, item) in search_items(id, request).into_iter().enumerate() {
        events.push(json!({"type": "response.output_item.added", "output_index": n + 1, "item": item}));
        events.push(json!({"type": "response.output_item.done", "output_index": n + 1, "item": item}));
    }
    let last = if reply.truncated() { "response.incomplete" } else { "response.completed" };
    events.push(json!({"type": last, "response": response(id, request, reply)}));
    events
        .into_iter()
        .enumerate()
        .map(|(sequence_number, mut event)| {
            let kind = event["type"].as_str().unwrap_or_default().to_owned();
            if let Some(object) = event.as_object_mut() {
                object.insert("sequence_number".into(), json!(sequence_number));
            }
            Bytes::from(format!("event: {kind}\ndata: {event}\n\n"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::AnswerFault;

    fn called(request: &ResponsesRequest) -> Option<&str> {
        request.prompt.call.as_ref().map(|call| call.name.as_str())
    }

    fn parse(body: Value) -> Result<ResponsesRequest, RequestError> {
        parse_request(&body)
    }

    fn tool(name: &str) -> Value {
        json!({"type": "function", "name": name, "parameters": {"type": "object", "properties": {}}})
    }

    #[test]
    fn reads_a_string_input_and_an_item_list_like_chat_messages() {
        let plain = parse(json!({"model": "gpt-4o", "input": "hello there"})).unwrap();
        assert_eq!(plain.prompt.last_user_text, "hello there");
        assert_eq!(plain.prompt.prompt_tokens, answer::prompt_tokens(["hello there"]));
        assert_eq!(plain.prompt.call, None);
        let items = parse(json!({
            "model": "gpt-4o",
            "instructions": "Be terse.",
            "max_output_tokens": 64,
            "stream": true,
            "input": [
                {"role": "user", "content": "first"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "reply"}]},
                {"role": "user", "content": [{"type": "input_text", "text": "second"}, {"type": "input_image"}]},
                {"type": "reasoning", "summary": []}
            ]
        }))
        .unwrap();
        assert_eq!(items.prompt.last_user_text, "second");
        assert_eq!(items.prompt.prompt_tokens, answer::prompt_tokens(["Be terse.", "first", "reply", "second", ""]));
        assert_eq!((items.prompt.max_output_tokens, items.prompt.stream), (Some(64), true));
    }

    #[test]
    fn function_tools_get_a_call_until_the_output_comes_back() {
        let ask = json!({"role": "user", "content": "weather?"});
        let call = json!({"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"});
        let output = json!({"type": "function_call_output", "call_id": "call_1", "output": "sunny"});
        let tools = json!([{"type": "web_search"}, tool("get_weather"), tool("other")]);
        let first = parse(json!({"model": "m", "input": [ask], "tools": tools})).unwrap();
        assert_eq!(called(&first), Some("get_weather"));
        let named = json!({"type": "function", "name": "other"});
        let chosen = parse(json!({"model": "m", "input": [ask], "tools": tools, "tool_choice": named})).unwrap();
        assert_eq!(called(&chosen), Some("other"));
        let none = parse(json!({"model": "m", "input": [ask], "tools": tools, "tool_choice": "none"})).unwrap();
        assert_eq!(none.prompt.call, None);
        let second = parse(json!({"model": "m", "input": [ask, call, output], "tools": tools})).unwrap();
        assert_eq!(second.prompt.call, None);
        assert_eq!(second.prompt.last_user_text, "weather?");
        assert_eq!(second.prompt.prompt_tokens, answer::prompt_tokens(["weather?", "get_weather{}", "sunny"]));

        let reply = Reply::for_prompt(&first.prompt, None);
        let cost = answer::text_tokens("get_weather") + answer::text_tokens("{}");
        assert_eq!(
            reply,
            Reply::Call { name: "get_weather".into(), arguments: "{}".into(), truncated: false, output_tokens: cost }
        );
        // An answer fault makes it text all the same.
        assert!(matches!(Reply::for_prompt(&first.prompt, Some(AnswerFault::Refusal)), Reply::Text(_)));
        let tight = ResponsesRequest { prompt: Prompt { max_output_tokens: Some(1), ..first.prompt.clone() }, ..first };
        assert_eq!(
            Reply::for_prompt(&tight.prompt, None),
            Reply::Call { name: "get_weather".into(), arguments: String::new(), truncated: true, output_tokens: 1 }
        );
    }

    #[test]
    fn refuses_what_a_router_must_not_forward() {
        let error = |body: Value| parse(body).unwrap_err();
        assert_eq!(error(json!({"input": "x"})).param, Some("model"));
        let missing = error(json!({"model": "m"}));
        assert_eq!((missing.param, missing.code), (Some("input"), Some("missing_required_parameter")));
        assert_eq!(error(json!({"model": "m", "input": null})).code, Some("missing_required_parameter"));
        assert_eq!(error(json!({"model": "m", "input": []})).code, Some("empty_array"));
        for input in [json!(42), json!({"role": "user"}), json!(true)] {
            let refused = error(json!({"model": "m", "input": input}));
            assert_eq!((refused.status, refused.param, refused.code), (400, Some("input"), Some("invalid_type")));
        }
        for item in [
            json!("text"),
            json!({"content": "no role"}),
            json!({"role": "robot", "content": "x"}),
            json!({"role": "user", "content": 5}),
            json!({"type": "function_call", "name": "f", "arguments": "{}"}),
            json!({"type": "function_call_output", "call_id": "c"}),
            json!({"type": 7}),
        ] {
            let refused = error(json!({"model": "m", "input": [item]}));
            assert_eq!((refused.status, refused.param), (400, Some("input")), "{item}");
        }
        assert_eq!(
            error(json!({"model": "m", "input": "x", "max_output_tokens": -1})).param,
            Some("max_output_tokens")
        );
        assert_eq!(error(json!({"model": "m", "input": "x", "instructions": 3})).param, Some("instructions"));
        assert_eq!(error(json!({"model": "m", "input": "x", "tools": {}})).param, Some("tools"));
        let unknown =
            json!({"model": "m", "input": "x", "tools": [tool("f")], "tool_choice": {"type": "function", "name": "g"}});
        assert_eq!(error(unknown).param, Some("tool_choice"));
        assert_eq!(error(json!("not an object")).status, 400);
    }

    #[test]
    fn the_response_object_echoes_the_settings_and_counts_usage() {
        let request = parse(json!({
            "model": "gpt-4o-mini", "input": "hi", "temperature": 0, "metadata": {"k": "v"},
            "previous_response_id": "resp_prev", "store": false, "max_output_tokens": 3
        }))
        .unwrap();
        let reply = Reply::for_prompt(&request.prompt, None);
        let body = response("resp_abc", &request, &reply);
        assert_eq!(body["object"], "response");
        assert_eq!(body["status"], "incomplete");
        assert_eq!(body["incomplete_details"], json!({"reason": "max_output_tokens"}));
        assert_eq!((body["temperature"].clone(), body["top_p"].clone()), (json!(0), json!(1.0)));
        assert_eq!(body["metadata"], json!({"k": "v"}));
        assert_eq!(body["previous_response_id"], "resp_prev");
        assert_eq!((body["store"].clone(), body["max_output_tokens"].clone()), (json!(false), json!(3)));
        assert_eq!((body["tool_choice"].clone(), body["tools"].clone()), (json!("auto"), json!([])));
        assert_eq!(body["parallel_tool_calls"], true);
        let item = &body["output"][0];
        assert_eq!(
            (item["type"].as_str(), item["id"].as_str(), item["status"].as_str()),
            (Some("message"), Some("msg_abc"), Some("incomplete"))
        );
        assert_eq!(item["content"][0]["text"].as_str().unwrap().split(' ').count(), 3);
        assert_eq!(body["usage"]["output_tokens"], 3);
        assert_eq!(body["usage"]["input_tokens"], request.prompt.prompt_tokens);
        assert_eq!(body["usage"]["total_tokens"], request.prompt.prompt_tokens + 3);
    }

    fn events(bytes: &[Bytes]) -> Vec<Value> {
        bytes
            .iter()
            .map(|event| {
                let text = std::str::from_utf8(event).unwrap();
                let (head, data) = text.split_once('\n').unwrap();
                let value: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap().trim_end()).unwrap();
                assert_eq!(head.strip_prefix("event: "), value["type"].as_str());
                value
            })
            .collect()
    }

    #[test]
    fn a_text_stream_numbers_its_events_and_ends_with_the_whole_response() {
        let request = parse(json!({"model": "m", "input": "stream", "stream": true})).unwrap();
        let reply = Reply::for_prompt(&request.prompt, None);
        let Reply::Text(answer) = &reply else { panic!("text expected") };
        let events = events(&stream_events("resp_1", &request, &reply));
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let words = answer.words.len();
        assert_eq!(
            kinds[..5],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta"
            ]
        );
        assert_eq!(kinds.len(), 4 + words + 4);
        assert_eq!(
            kinds[kinds.len() - 4..],
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        for (index, event) in events.iter().enumerate() {
            assert_eq!(event["sequence_number"], index);
        }
        assert_eq!(events[0]["response"]["status"], "in_progress");
        assert!(events[0]["response"]["usage"].is_null());
        let text: String = events.iter().filter_map(|e| e.get("delta").and_then(Value::as_str)).collect();
        assert_eq!(text, answer.content());
        assert_eq!(events.last().unwrap()["response"], response("resp_1", &request, &reply));
    }

    #[test]
    fn a_function_call_stream_carries_the_arguments() {
        let request = parse(json!({"model": "m", "input": "x", "tools": [tool("lookup")], "stream": true})).unwrap();
        let reply = Reply::for_prompt(&request.prompt, None);
        let events = events(&stream_events("resp_2", &request, &reply));
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        assert_eq!(events[2]["item"]["arguments"], "");
        assert_eq!(events[2]["item"]["status"], "in_progress");
        let item = &events[5]["item"];
        assert_eq!(
            (item["type"].as_str(), item["name"].as_str(), item["arguments"].as_str()),
            (Some("function_call"), Some("lookup"), Some("{}"))
        );
        assert_eq!((item["id"].as_str(), item["call_id"].as_str()), (Some("fc_2"), Some("call_2")));
        assert_eq!(events[6]["response"]["output"][0], *item);
    }
}
