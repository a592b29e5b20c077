//! Client requests: OpenAI Chat Completions and Anthropic Messages bodies.
//!
//! Parsing validates exactly what the router relies on and keeps the rest
//! of the body untouched. Rewriting changes only the fields the router owns
//! (`model`, a clamped output cap, `stream_options.include_usage`); every
//! other field keeps its value and its position, because the body is held as
//! an order-preserving JSON map.

use crate::api::ApiFormat;
use crate::config::Provider;
use crate::error::RequestError;
use serde_json::{Map, Value};

/// A message's author, across both APIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

impl Role {
    fn parse(s: &str, api: ApiFormat) -> Option<Role> {
        match (api, s) {
            (ApiFormat::OpenAi, "system") => Some(Role::System),
            (ApiFormat::OpenAi, "developer") => Some(Role::Developer),
            (_, "user") => Some(Role::User),
            (_, "assistant") => Some(Role::Assistant),
            (ApiFormat::OpenAi, "tool") => Some(Role::Tool),
            (ApiFormat::OpenAi, "function") => Some(Role::Function),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
        }
    }

    pub fn is_system(self) -> bool {
        matches!(self, Role::System | Role::Developer)
    }
}

/// Image detail levels, for token estimates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageDetail {
    Low,
    High,
}

/// One message, reduced to what counting and classifying need.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    /// All text parts joined with "\n".
    pub text: String,
    pub name: Option<String>,
    pub images: Vec<ImageDetail>,
    /// Tool-call names and arguments, tool-use inputs: text the model reads.
    pub tool_text: String,
}

/// A parsed, validated request.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    pub api: ApiFormat,
    pub model: String,
    pub stream: bool,
    /// The client itself asked for `stream_options.include_usage`.
    pub client_wants_usage: bool,
    /// `max_tokens` / `max_completion_tokens` as sent.
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<f64>,
    /// Number of choices (`n`, OpenAI only); output is reserved once per choice.
    pub choices: u64,
    pub tool_count: usize,
    /// Anthropic's top-level `system`, joined. OpenAI system text stays in `messages`.
    pub system: String,
    pub messages: Vec<Message>,
    /// JSON text of the declared tools, for counting.
    pub tools_text: String,
    body: Map<String, Value>,
}

/// What a rewrite changes.
#[derive(Clone, Debug, PartialEq)]
pub struct Rewrite<'a> {
    pub provider: Provider,
    pub model: &'a str,
    /// A lower output cap to write into the body.
    pub clamp_output_tokens: Option<u64>,
    /// Ask an OpenAI-format upstream to append a usage chunk to the stream.
    pub include_usage: bool,
}

/// Body fields that do not change what the model answers, left out of the cache key.
const NOT_IN_CACHE_KEY: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
];

impl ChatRequest {
    /// Parse a raw body. `max_body_bytes` is checked first, before any parsing work.
    pub fn parse(api: ApiFormat, bytes: &[u8], max_body_bytes: usize) -> Result<ChatRequest, RequestError> {
        if bytes.len() > max_body_bytes {
            return Err(RequestError::TooLarge { limit: max_body_bytes, actual: bytes.len() });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(RequestError::Empty);
        }
        let text = std::str::from_utf8(bytes).map_err(|e| RequestError::NotUtf8 { offset: e.valid_up_to() })?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| RequestError::MalformedJson { detail: e.to_string() })?;
        let Value::Object(body) = value else { return Err(RequestError::NotAnObject) };
        match api {
            ApiFormat::OpenAi => parse_openai(body),
            ApiFormat::Anthropic => parse_anthropic(body),
        }
    }

    /// The client's body as parsed.
    pub fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    /// The body to send upstream.
    pub fn rewritten_body(&self, rw: &Rewrite<'_>) -> Vec<u8> {
        let mut body = self.body.clone();
        body.insert("model".to_owned(), Value::String(rw.model.to_owned()));
        if let Some(cap) = rw.clamp_output_tokens {
            let field = match self.api {
                ApiFormat::Anthropic => "max_tokens",
                ApiFormat::OpenAi if body.contains_key("max_completion_tokens") => "max_completion_tokens",
                ApiFormat::OpenAi if body.contains_key("max_tokens") => "max_tokens",
                // o-series models refuse `max_tokens`; other OpenAI-compatible providers know only it.
                ApiFormat::OpenAi if rw.provider == Provider::OpenAi => "max_completion_tokens",
                ApiFormat::OpenAi => "max_tokens",
            };
            body.insert(field.to_owned(), Value::from(cap));
        }
        if rw.include_usage && self.stream && self.api == ApiFormat::OpenAi && !self.client_wants_usage {
            let options = body.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(options) = options {
                options.insert("include_usage".to_owned(), Value::Bool(true));
            } else {
                *options = serde_json::json!({ "include_usage": true });
            }
        }
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// A canonical serialisation of every field that affects the answer:
    /// keys sorted at every depth, no whitespace, router-owned and
    /// client-metadata fields left out.
    pub fn canonical_for_cache(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        let mut keys: Vec<&String> = self.body.keys().filter(|k| !NOT_IN_CACHE_KEY.contains(&k.as_str())).collect();
        keys.sort();
        for (i, key) in keys.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_canonical_str(key, &mut out);
            out.push(b':');
            if let Some(v) = self.body.get(key) {
                write_canonical(v, &mut out);
            }
        }
        out.push(b'}');
        out
    }

    /// Whether the client asked for output that may vary between calls.
    /// No temperature means the provider default, which is 1 for both APIs.
    pub fn is_sampled(&self) -> bool {
        self.temperature.is_none_or(|t| t > 0.0)
    }

    /// Every piece of text in the request, for counting a whole prompt roughly.
    pub fn all_text_len(&self) -> usize {
        self.system.len()
            + self.tools_text.len()
            + self.messages.iter().map(|m| m.text.len() + m.tool_text.len()).sum::<usize>()
    }
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            out.push(b'{');
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical_str(key, out);
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        // Numbers, booleans, null and strings in serde_json's compact form.
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

fn write_canonical_str(s: &str, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
}

// ------------------------------------------------------------------ helpers

fn field_str(body: &Map<String, Value>, field: &str) -> Result<String, RequestError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(RequestError::MissingField { field: field.to_owned() }),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(RequestError::Invalid { field: field.to_owned(), message: "must not be empty".to_owned() })
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(RequestError::WrongType { field: field.to_owned(), expected: "a string" }),
    }
}

fn opt_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, RequestError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(RequestError::WrongType { field: field.to_owned(), expected: "a boolean" }),
    }
}

fn opt_positive_int(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, RequestError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= 1 => Ok(Some(v)),
            _ => {
                Err(RequestError::Invalid { field: field.to_owned(), message: "must be a positive integer".to_owned() })
            }
        },
        Some(_) => Err(RequestError::WrongType { field: field.to_owned(), expected: "a positive integer" }),
    }
}

fn opt_number_in(body: &Map<String, Value>, field: &str, lo: f64, hi: f64) -> Result<Option<f64>, RequestError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if (lo..=hi).contains(&v) => Ok(Some(v)),
            _ => Err(RequestError::Invalid {
                field: field.to_owned(),
                message: format!("must be between {lo} and {hi}"),
            }),
        },
        Some(_) => Err(RequestError::WrongType { field: field.to_owned(), expected: "a number" }),
    }
}

fn tools(body: &Map<String, Value>, field: &str) -> Result<(usize, String), RequestError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok((0, String::new())),
        Some(Value::Array(items)) => {
            if let Some(i) = items.iter().position(|t| !t.is_object()) {
                return Err(RequestError::WrongType { field: format!("{field}[{i}]"), expected: "an object" });
            }
            Ok((items.len(), if items.is_empty() { String::new() } else { Value::Array(items.clone()).to_string() }))
        }
        Some(_) => Err(RequestError::WrongType { field: field.to_owned(), expected: "an array" }),
    }
}

fn push_line(buf: &mut String, text: &str) {
    if !buf.is_empty() {
        buf.push('\n');
    }
    buf.push_str(text);
}

// ------------------------------------------------------------------ OpenAI

fn parse_openai(body: Map<String, Value>) -> Result<ChatRequest, RequestError> {
    let model = field_str(&body, "model")?;
    let stream = opt_bool(&body, "stream")?.unwrap_or(false);
    let client_wants_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(RequestError::WrongType {
                    field: "stream_options.include_usage".into(),
                    expected: "a boolean",
                });
            }
        },
        Some(_) => return Err(RequestError::WrongType { field: "stream_options".into(), expected: "an object" }),
    };
    let max_completion = opt_positive_int(&body, "max_completion_tokens")?;
    let max_tokens = opt_positive_int(&body, "max_tokens")?;
    let temperature = opt_number_in(&body, "temperature", 0.0, 2.0)?;
    let choices = opt_positive_int(&body, "n")?.unwrap_or(1);
    if choices > 128 {
        return Err(RequestError::Invalid { field: "n".into(), message: "must be at most 128".into() });
    }
    let (mut tool_count, mut tools_text) = tools(&body, "tools")?;
    let (fn_count, fn_text) = tools(&body, "functions")?;
    tool_count += fn_count;
    tools_text.push_str(&fn_text);

    let raw_messages = match body.get("messages") {
        None | Some(Value::Null) => return Err(RequestError::MissingField { field: "messages".into() }),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(RequestError::WrongType { field: "messages".into(), expected: "an array of messages" }),
    };
    if raw_messages.is_empty() {
        return Err(RequestError::EmptyMessages);
    }
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (i, raw) in raw_messages.iter().enumerate() {
        messages.push(openai_message(i, raw)?);
    }
    Ok(ChatRequest {
        api: ApiFormat::OpenAi,
        model,
        stream,
        client_wants_usage,
        max_output_tokens: max_completion.or(max_tokens),
        temperature,
        choices,
        tool_count,
        system: String::new(),
        messages,
        tools_text,
        body,
    })
}

fn openai_message(i: usize, raw: &Value) -> Result<Message, RequestError> {
    let Value::Object(m) = raw else {
        return Err(RequestError::WrongType { field: format!("messages[{i}]"), expected: "an object" });
    };
    let role = match m.get("role") {
        Some(Value::String(r)) => Role::parse(r, ApiFormat::OpenAi).ok_or_else(|| RequestError::Invalid {
            field: format!("messages[{i}].role"),
            message: format!("unknown role `{r}`; expected system, developer, user, assistant or tool"),
        })?,
        None | Some(Value::Null) => return Err(RequestError::MissingField { field: format!("messages[{i}].role") }),
        Some(_) => return Err(RequestError::WrongType { field: format!("messages[{i}].role"), expected: "a string" }),
    };
    let name = match m.get("name") {
        Some(Value::String(n)) => Some(n.clone()),
        None | Some(Value::Null) => None,
        Some(_) => return Err(RequestError::WrongType { field: format!("messages[{i}].name"), expected: "a string" }),
    };
    let mut text = String::new();
    let mut images = Vec::new();
    let has_tool_calls =
        m.get("tool_calls").is_some_and(|v| !v.is_null()) || m.get("function_call").is_some_and(|v| !v.is_null());
    match m.get("content") {
        Some(Value::String(s)) => text.push_str(s),
        None | Some(Value::Null) if role == Role::Assistant || has_tool_calls => {}
        None | Some(Value::Null) => return Err(RequestError::MissingField { field: format!("messages[{i}].content") }),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let field = format!("messages[{i}].content[{j}]");
                let Value::Object(p) = part else {
                    return Err(RequestError::WrongType { field, expected: "an object" });
                };
                match p.get("type").and_then(Value::as_str) {
                    Some("text") | Some("input_text") => match p.get("text") {
                        Some(Value::String(t)) => push_line(&mut text, t),
                        _ => {
                            return Err(RequestError::WrongType {
                                field: format!("{field}.text"),
                                expected: "a string",
                            });
                        }
                    },
                    Some("refusal") => {
                        if let Some(Value::String(t)) = p.get("refusal") {
                            push_line(&mut text, t);
                        }
                    }
                    Some("image_url") => {
                        let low =
                            p.get("image_url").and_then(|u| u.get("detail")).and_then(Value::as_str) == Some("low");
                        images.push(if low { ImageDetail::Low } else { ImageDetail::High });
                    }
                    Some(_) => {}
                    None => return Err(RequestError::MissingField { field: format!("{field}.type") }),
                }
            }
        }
        Some(_) => {
            return Err(RequestError::WrongType {
                field: format!("messages[{i}].content"),
                expected: "a string or an array of content parts",
            });
        }
    }
    let mut tool_text = String::new();
    if let Some(Value::Array(calls)) = m.get("tool_calls") {
        for call in calls {
            if let Some(f) = call.get("function") {
                push_line(&mut tool_text, f.get("name").and_then(Value::as_str).unwrap_or(""));
                push_line(&mut tool_text, f.get("arguments").and_then(Value::as_str).unwrap_or(""));
            }
        }
    }
    if let Some(f) = m.get("function_call").filter(|v| v.is_object()) {
        push_line(&mut tool_text, f.get("name").and_then(Value::as_str).unwrap_or(""));
        push_line(&mut tool_text, f.get("arguments").and_then(Value::as_str).unwrap_or(""));
    }
    Ok(Message { role, text, name, images, tool_text })
}

// ---------------------------------------------------------------- Anthropic

fn parse_anthropic(body: Map<String, Value>) -> Result<ChatRequest, RequestError> {
    let model = field_str(&body, "model")?;
    let stream = opt_bool(&body, "stream")?.unwrap_or(false);
    // Anthropic requires max_tokens; refusing here gives the client the same answer sooner.
    let max_tokens =
        opt_positive_int(&body, "max_tokens")?.ok_or(RequestError::MissingField { field: "max_tokens".into() })?;
    let temperature = opt_number_in(&body, "temperature", 0.0, 1.0)?;
    let (tool_count, tools_text) = tools(&body, "tools")?;
    let mut system = String::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => system.push_str(s),
        Some(Value::Array(blocks)) => {
            for (j, b) in blocks.iter().enumerate() {
                match b.get("text") {
                    Some(Value::String(t)) => push_line(&mut system, t),
                    _ => {
                        return Err(RequestError::WrongType {
                            field: format!("system[{j}]"),
                            expected: "a text block",
                        });
                    }
                }
            }
        }
        Some(_) => {
            return Err(RequestError::WrongType {
                field: "system".into(),
                expected: "a string or an array of text blocks",
            });
        }
    }
    let raw_messages = match body.get("messages") {
        None | Some(Value::Null) => return Err(RequestError::MissingField { field: "messages".into() }),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(RequestError::WrongType { field: "messages".into(), expected: "an array of messages" }),
    };
    if raw_messages.is_empty() {
        return Err(RequestError::EmptyMessages);
    }
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (i, raw) in raw_messages.iter().enumerate() {
        messages.push(anthropic_message(i, raw)?);
    }
    Ok(ChatRequest {
        api: ApiFormat::Anthropic,
        model,
        stream,
        client_wants_usage: false,
        max_output_tokens: Some(max_tokens),
        temperature,
        choices: 1,
        tool_count,
        system,
        messages,
        tools_text,
        body,
    })
}

fn anthropic_message(i: usize, raw: &Value) -> Result<Message, RequestError> {
    let Value::Object(m) = raw else {
        return Err(RequestError::WrongType { field: format!("messages[{i}]"), expected: "an object" });
    };
    let role = match m.get("role") {
        Some(Value::String(r)) => Role::parse(r, ApiFormat::Anthropic).ok_or_else(|| RequestError::Invalid {
            field: format!("messages[{i}].role"),
            message: format!("unknown role `{r}`; expected user or assistant"),
        })?,
        None | Some(Value::Null) => return Err(RequestError::MissingField { field: format!("messages[{i}].role") }),
        Some(_) => return Err(RequestError::WrongType { field: format!("messages[{i}].role"), expected: "a string" }),
    };
    let mut text = String::new();
    let mut images = Vec::new();
    let mut tool_text = String::new();
    match m.get("content") {
        Some(Value::String(s)) => text.push_str(s),
        None | Some(Value::Null) => return Err(RequestError::MissingField { field: format!("messages[{i}].content") }),
        Some(Value::Array(blocks)) => {
            for (j, block) in blocks.iter().enumerate() {
                let field = format!("messages[{i}].content[{j}]");
                let Value::Object(b) = block else {
                    return Err(RequestError::WrongType { field, expected: "an object" });
                };
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => match b.get("text") {
                        Some(Value::String(t)) => push_line(&mut text, t),
                        _ => {
                            return Err(RequestError::WrongType {
                                field: format!("{field}.text"),
                                expected: "a string",
                            });
                        }
                    },
                    Some("image") | Some("document") => images.push(ImageDetail::High),
                    Some("tool_use") => {
                        push_line(&mut tool_text, b.get("name").and_then(Value::as_str).unwrap_or(""));
                        if let Some(input) = b.get("input") {
                            push_line(&mut tool_text, &input.to_string());
                        }
                    }
                    Some("tool_result") => match b.get("content") {
                        Some(Value::String(t)) => push_line(&mut tool_text, t),
                        Some(Value::Array(inner)) => {
                            for ib in inner {
                                if let Some(t) = ib.get("text").and_then(Value::as_str) {
                                    push_line(&mut tool_text, t);
                                }
                            }
                        }
                        _ => {}
                    },
                    Some(_) => {}
                    None => return Err(RequestError::MissingField { field: format!("{field}.type") }),
                }
            }
        }
        Some(_) => {
            return Err(RequestError::WrongType {
                field: format!("messages[{i}].content"),
                expected: "a string or an array of content blocks",
            });
        }
    }
    Ok(Message { role, text, name: None, images, tool_text })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai(json: &str) -> Result<ChatRequest, RequestError> {
        ChatRequest::parse(ApiFormat::OpenAi, json.as_bytes(), 1 << 20)
    }

    fn anthropic(json: &str) -> Result<ChatRequest, RequestError> {
        ChatRequest::parse(ApiFormat::Anthropic, json.as_bytes(), 1 << 20)
    }

    #[test]
    fn openai_bodies_with_string_and_part_contents_parse() {
        let r = openai(
            r#"{"model":"tollgate/auto","messages":[
                {"role":"system","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"image_url","image_url":{"url":"x","detail":"low"}}]},
                {"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"1","content":"42"}],
              "stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":50,"temperature":0,"n":2,
              "tools":[{"type":"function","function":{"name":"f"}}]}"#,
        )
        .unwrap();
        assert_eq!(r.messages.len(), 4);
        assert_eq!(r.messages[1].images, vec![ImageDetail::Low]);
        assert!(r.messages[2].tool_text.contains('f'));
        assert!(r.stream && r.client_wants_usage);
        assert_eq!((r.max_output_tokens, r.choices, r.tool_count), (Some(50), 2, 1));
        assert!(!r.is_sampled());
    }

    #[test]
    fn anthropic_bodies_with_system_blocks_parse() {
        let r = anthropic(
            r#"{"model":"claude-sonnet-4-5","max_tokens":100,"system":[{"type":"text","text":"Rules."}],
               "messages":[{"role":"user","content":[{"type":"text","text":"Hello"}]}]}"#,
        )
        .unwrap();
        assert_eq!(r.system, "Rules.");
        assert_eq!(r.messages[0].text, "Hello");
        assert_eq!(r.max_output_tokens, Some(100));
    }

    #[test]
    fn bad_inputs_give_the_right_error_and_never_panic() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "Empty"),
            (b"   ", "Empty"),
            (b"{", "MalformedJson"),
            (b"[1,2]", "NotAnObject"),
            (b"\xff\xfe{}", "NotUtf8"),
            (br#"{"messages":[{"role":"user","content":"x"}]}"#, "MissingField"),
            (br#"{"model":5,"messages":[]}"#, "WrongType"),
            (br#"{"model":"m","messages":[]}"#, "EmptyMessages"),
            (br#"{"model":"m","messages":"hi"}"#, "WrongType"),
            (br#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#, "Invalid"),
            (br#"{"model":"m","messages":[{"role":"user"}]}"#, "MissingField"),
            (br#"{"model":"m","messages":[{"role":"user","content":7}]}"#, "WrongType"),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#, "WrongType"),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":9}"#, "Invalid"),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#, "Invalid"),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#, "WrongType"),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":1000}"#, "Invalid"),
            (br#"{"model":"m","messages":[{"role":"user","content":[{"text":"no type"}]}]}"#, "MissingField"),
        ];
        for (body, want) in cases {
            let err = ChatRequest::parse(ApiFormat::OpenAi, body, 1 << 20).unwrap_err();
            assert!(
                format!("{err:?}").starts_with(want),
                "{:?} gave {err:?}, wanted {want}",
                String::from_utf8_lossy(body)
            );
        }
        let deep = "[".repeat(10_000);
        assert!(matches!(openai(&deep), Err(RequestError::MalformedJson { .. })));
        let big = vec![b' '; 2048];
        assert!(matches!(ChatRequest::parse(ApiFormat::OpenAi, &big, 1024), Err(RequestError::TooLarge { .. })));
        assert!(matches!(
            anthropic(r#"{"model":"c","messages":[{"role":"user","content":"x"}]}"#),
            Err(RequestError::MissingField { .. })
        ));
        assert!(matches!(
            anthropic(r#"{"model":"c","max_tokens":5,"messages":[{"role":"system","content":"x"}]}"#),
            Err(RequestError::Invalid { .. })
        ));
    }

    #[test]
    fn rewriting_changes_only_the_fields_the_router_owns() {
        let original = r#"{"temperature":0.7,"model":"tollgate/auto","messages":[{"role":"user","content":"x"}],"stream":true,"user":"u1","logit_bias":{"50256":-100},"seed":12345678901}"#;
        let r = openai(original).unwrap();
        let out = r.rewritten_body(&Rewrite {
            provider: Provider::OpenAi,
            model: "gpt-4o-mini",
            clamp_output_tokens: Some(64),
            include_usage: true,
        });
        let mut got: Map<String, Value> = serde_json::from_slice(&out).unwrap();
        assert_eq!(got.shift_remove("model"), Some(Value::from("gpt-4o-mini")));
        assert_eq!(got.shift_remove("max_completion_tokens"), Some(Value::from(64)));
        assert_eq!(got.shift_remove("stream_options"), Some(serde_json::json!({"include_usage": true})));
        let mut want: Map<String, Value> = serde_json::from_str(original).unwrap();
        want.shift_remove("model");
        assert_eq!(got, want);
        // Key order is the client's.
        let keys: Vec<&String> = got.keys().collect();
        assert_eq!(keys, vec!["temperature", "messages", "stream", "user", "logit_bias", "seed"]);
    }

    #[test]
    fn the_cache_form_ignores_key_order_stream_and_metadata() {
        let a = openai(
            r#"{"model":"a","messages":[{"role":"user","content":"x"}],"temperature":0,"stream":true,"user":"1"}"#,
        )
        .unwrap();
        let b =
            openai(r#"{"temperature":0,"messages":[{"content":"x","role":"user"}],"model":"b","user":"2"}"#).unwrap();
        assert_eq!(a.canonical_for_cache(), b.canonical_for_cache());
        let c = openai(r#"{"model":"a","messages":[{"role":"user","content":"y"}],"temperature":0}"#).unwrap();
        assert_ne!(a.canonical_for_cache(), c.canonical_for_cache());
    }
}
