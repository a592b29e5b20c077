//! Client requests: OpenAI Chat Completions and Anthropic Messages bodies.
//!
//! Parsing validates exactly what the router relies on and keeps the rest
//! of the body untouched. The top-level fields are held as the exact JSON
//! text the client sent, in the client's order; only the fields the router
//! reads are parsed further. Rewriting changes only the fields the router
//! owns (`model`, a clamped output cap, `stream_options.include_usage`) and
//! copies every other field through byte for byte.

use crate::api::ApiFormat;
use crate::config::Provider;
use crate::error::RequestError;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;

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
    /// Estimated tokens of attached files (Responses `input_file` parts).
    pub file_tokens: u64,
}

/// A body's top-level fields in the client's order, each as the exact JSON
/// text sent. Duplicate keys are refused: a router and a provider that read
/// different copies of `model` would disagree about what was asked.
#[derive(Clone, Debug, Default)]
struct RawFields(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for RawFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = RawFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFields, A::Error> {
                let mut fields: Vec<(String, Box<RawValue>)> = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<String>()? {
                    // Bounded, so the duplicate scan below stays cheap on hostile bodies.
                    if fields.len() >= MAX_TOP_LEVEL_FIELDS {
                        return Err(de::Error::custom(format_args!(
                            "more than {MAX_TOP_LEVEL_FIELDS} top-level fields"
                        )));
                    }
                    let value: Box<RawValue> = map.next_value()?;
                    if fields.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                    }
                    fields.push((key, value));
                }
                Ok(RawFields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// How deep arrays and objects may nest inside one top-level field: what
/// serde_json's recursion limit (128, counting the level that fails) lets a
/// field parsed into a [`Value`] hold, and so what every field is held to.
const MAX_NESTING: usize = 127;

/// A JSON value checked by exactly the rules a field parsed into a [`Value`]
/// gets, without building it: serde_json's `deserialize_any` drives the same
/// number parsing (out-of-range numbers such as `1e400` are refused), the same
/// string decoding (lone surrogate escapes are refused) and the same bounded
/// recursion (so a hostile body cannot deepen the call stack past
/// [`MAX_NESTING`]). `IgnoredAny` would not do: serde_json skips it like a
/// `RawValue`, checking syntax only.
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

/// One `invalid_json` error for a field whose value breaks the JSON rules,
/// worded the same whether or not the router reads the field. serde_json's
/// position is within the field's value, not the body, so it is left out.
fn field_json_error(field: &str, e: &serde_json::Error) -> RequestError {
    let text = e.to_string();
    let what = text.strip_suffix(&format!(" at line {} column {}", e.line(), e.column())).unwrap_or(&text);
    let hint = if what == "recursion limit exceeded" {
        format!(" (arrays and objects nest at most {MAX_NESTING} deep)")
    } else {
        String::new()
    };
    // The client chose the key: name it, but not at any length.
    let field = match field.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &field[..cut]),
        None => field.to_owned(),
    };
    RequestError::MalformedJson { detail: format!("{what} in `{field}`{hint}") }
}

/// Chat bodies have a few dozen top-level fields at most.
const MAX_TOP_LEVEL_FIELDS: usize = 256;

/// The top-level fields the router reads, parsed; everything else stays raw.
const ROUTER_READS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "n",
    "tools",
    "functions",
    "messages",
    "system",
    "input",
    "encoding_format",
    "dimensions",
    "instructions",
    "max_output_tokens",
];

/// A parsed, validated request.
#[derive(Clone, Debug)]
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
    /// An embeddings request's inputs (None for chat).
    pub embedding_inputs: Option<EmbeddingInputs>,
    /// Every top-level field as sent (`metadata.tollgate_tags` taken out).
    raw: RawFields,
    /// `metadata.tollgate_tags` as sent: the router's, so it is taken out of
    /// `metadata` before anything is forwarded, translated or keyed
    /// (Anthropic accepts only `user_id` there).
    pub metadata_tags: Option<Value>,
    /// The fields in [`ROUTER_READS`] that were present, parsed.
    parsed: Map<String, Value>,
}

/// What an embeddings request embeds: each input counted on its own.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EmbeddingInputs {
    /// The text inputs.
    pub texts: Vec<String>,
    /// Tokens sent as token ids (already counted).
    pub token_ids: u64,
    /// How many inputs (texts or token-id arrays).
    pub items: usize,
}

/// OpenAI's limit on inputs per embeddings request.
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// What a rewrite changes.
#[derive(Clone, Debug, PartialEq)]
pub struct Rewrite<'a> {
    pub provider: Provider,
    pub model: &'a str,
    /// A lower output cap to write into the body.
    pub clamp_output_tokens: Option<u64>,
    /// Ask an OpenAI-format upstream to append a usage chunk to the stream.
    pub include_usage: bool,
    /// A Responses `max_tool_calls` to write (a metered request's built-in
    /// tool calls stop where its hold does); replaces the client's.
    pub max_tool_calls: Option<u64>,
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
        if !text.trim_start().starts_with('{') {
            // Valid JSON that is not an object gets its own message.
            return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => Err(RequestError::NotAnObject),
                Err(e) => Err(RequestError::MalformedJson { detail: e.to_string() }),
            };
        }
        let raw: RawFields =
            serde_json::from_str(text).map_err(|e| RequestError::MalformedJson { detail: e.to_string() })?;
        // Every field is held to the same JSON rules, read or not: the
        // top-level scan above (RawValue) checks syntax only, with no nesting
        // limit and no number range, and a provider must never be sent what
        // the router itself would refuse to parse.
        let mut parsed = Map::new();
        for (key, value) in &raw.0 {
            if ROUTER_READS.contains(&key.as_str()) {
                let v: Value = serde_json::from_str(value.get()).map_err(|e| field_json_error(key, &e))?;
                parsed.insert(key.clone(), v);
            } else {
                serde_json::from_str::<Checked>(value.get()).map_err(|e| field_json_error(key, &e))?;
            }
        }
        let mut request = match api {
            ApiFormat::OpenAi => parse_openai(parsed)?,
            ApiFormat::Anthropic => parse_anthropic(parsed)?,
            ApiFormat::Embeddings => parse_embeddings(parsed)?,
            ApiFormat::Responses => parse_responses(parsed)?,
        };
        request.raw = raw;
        request.metadata_tags = request.take_metadata_tags();
        Ok(request)
    }

    /// Remove `tollgate_tags` from the body's `metadata` object (dropping
    /// `metadata` if nothing else is in it) and return it.
    fn take_metadata_tags(&mut self) -> Option<Value> {
        let at = self.raw.0.iter().position(|(k, _)| k == "metadata")?;
        let Ok(Value::Object(mut metadata)) = serde_json::from_str::<Value>(self.raw.0[at].1.get()) else {
            return None;
        };
        let tags = metadata.remove("tollgate_tags")?;
        if metadata.is_empty() {
            self.raw.0.remove(at);
        } else if let Ok(rest) = RawValue::from_string(Value::Object(metadata).to_string()) {
            self.raw.0[at].1 = rest;
        }
        Some(tags)
    }

    /// The Responses API's built-in tools this request declares (`tools`
    /// entries of a type other than `function` or `custom`), by type.
    pub fn builtin_tools(&self) -> Vec<String> {
        if self.api != ApiFormat::Responses {
            return Vec::new();
        }
        let Some(Value::Array(tools)) = self.parsed.get("tools") else { return Vec::new() };
        tools
            .iter()
            .filter_map(|t| t.get("type").and_then(Value::as_str))
            .filter(|t| !matches!(*t, "function" | "custom"))
            .map(str::to_owned)
            .collect()
    }

    /// The whole body as JSON, for translation into another API. Every
    /// field passed the router's JSON rules in [`ChatRequest::parse`].
    pub fn body_map(&self) -> Map<String, Value> {
        let mut body = Map::new();
        for (key, raw) in &self.raw.0 {
            let value = match self.parsed.get(key) {
                Some(v) => v.clone(),
                None => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
            };
            body.insert(key.clone(), value);
        }
        body
    }

    /// A top-level field exactly as the client sent it.
    pub fn raw_field(&self, name: &str) -> Option<&str> {
        self.raw.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.get())
    }

    /// The body to send upstream: the client's fields in the client's order,
    /// byte for byte, except the ones this rewrite changes.
    pub fn rewritten_body(&self, rw: &Rewrite<'_>) -> Vec<u8> {
        // An embedding has no output to cap.
        let clamp = rw.clamp_output_tokens.filter(|_| self.api != ApiFormat::Embeddings);
        let clamp_field = clamp.map(|cap| {
            let has = |f: &str| self.parsed.contains_key(f);
            let field = match self.api {
                ApiFormat::Anthropic => "max_tokens",
                ApiFormat::OpenAi if has("max_completion_tokens") => "max_completion_tokens",
                ApiFormat::OpenAi if has("max_tokens") => "max_tokens",
                // o-series models refuse `max_tokens`; other OpenAI-compatible providers know only it.
                ApiFormat::OpenAi if rw.provider == Provider::OpenAi => "max_completion_tokens",
                ApiFormat::OpenAi | ApiFormat::Embeddings => "max_tokens",
                ApiFormat::Responses => "max_output_tokens",
            };
            (field, cap)
        });
        let inject_usage = rw.include_usage && self.stream && self.api == ApiFormat::OpenAi && !self.client_wants_usage;
        let with_usage = || {
            let mut options = match self.parsed.get("stream_options") {
                Some(Value::Object(o)) => o.clone(),
                _ => Map::new(),
            };
            options.insert("include_usage".to_owned(), Value::Bool(true));
            Value::Object(options).to_string()
        };

        let size: usize = self.raw.0.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum();
        let mut out = Vec::with_capacity(size + rw.model.len() + 64);
        let mut wrote_cap = false;
        let mut wrote_usage = false;
        let tool_calls = rw.max_tool_calls.filter(|_| self.api == ApiFormat::Responses);
        let mut wrote_tool_calls = false;
        out.push(b'{');
        for (key, value) in &self.raw.0 {
            if out.len() > 1 {
                out.push(b',');
            }
            write_json_str(key, &mut out);
            out.push(b':');
            let is_cap_field = key == "max_tokens" || key == "max_completion_tokens";
            match (key.as_str(), clamp_field) {
                ("model", _) => write_json_str(rw.model, &mut out),
                // Every cap field the client sent gets the cap, whichever the provider honours.
                (k, Some((field, cap))) if k == field || (is_cap_field && self.api == ApiFormat::OpenAi) => {
                    out.extend_from_slice(cap.to_string().as_bytes());
                    wrote_cap = true;
                }
                ("stream_options", _) if inject_usage => {
                    out.extend_from_slice(with_usage().as_bytes());
                    wrote_usage = true;
                }
                ("max_tool_calls", _) if tool_calls.is_some() => {
                    out.extend_from_slice(tool_calls.unwrap_or_default().to_string().as_bytes());
                    wrote_tool_calls = true;
                }
                _ => out.extend_from_slice(value.get().as_bytes()),
            }
        }
        if let Some((field, cap)) = clamp_field.filter(|_| !wrote_cap) {
            out.push(b',');
            write_json_str(field, &mut out);
            out.push(b':');
            out.extend_from_slice(cap.to_string().as_bytes());
        }
        if inject_usage && !wrote_usage {
            out.extend_from_slice(b",\"stream_options\":");
            out.extend_from_slice(with_usage().as_bytes());
        }
        if let Some(calls) = tool_calls.filter(|_| !wrote_tool_calls) {
            out.extend_from_slice(b",\"max_tool_calls\":");
            out.extend_from_slice(calls.to_string().as_bytes());
        }
        out.push(b'}');
        out
    }

    /// A canonical encoding of every field that affects the answer, for the
    /// cache key: keys sorted at every depth, router-owned and client-metadata
    /// fields left out, strings length-prefixed (so nothing needs escaping and
    /// no two different bodies encode alike). It is hashed, never parsed.
    pub fn canonical_for_cache(&self) -> Vec<u8> {
        let mut fields: Vec<&(String, Box<RawValue>)> =
            self.raw.0.iter().filter(|(k, _)| !NOT_IN_CACHE_KEY.contains(&k.as_str())).collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::with_capacity(self.raw.0.iter().map(|(_, v)| v.get().len()).sum::<usize>() + 64);
        out.push(b'{');
        put_len(fields.len(), &mut out);
        for (key, raw) in fields {
            put_str(key, &mut out);
            match self.parsed.get(key) {
                Some(v) => encode_canonical(v, &mut out),
                None => match serde_json::from_str::<Value>(raw.get()) {
                    Ok(v) => encode_canonical(&v, &mut out),
                    // Every field was checked by these rules in `parse`, so never reached.
                    Err(_) => put_str(raw.get(), &mut out),
                },
            }
        }
        out
    }

    /// Whether the client asked for output that may vary between calls.
    /// No temperature means the provider default, which is 1 for both APIs.
    pub fn is_sampled(&self) -> bool {
        // Embeddings are deterministic.
        self.api != ApiFormat::Embeddings && self.temperature.is_none_or(|t| t > 0.0)
    }

    /// Every piece of text in the request, for counting a whole prompt roughly.
    pub fn all_text_len(&self) -> usize {
        self.system.len()
            + self.tools_text.len()
            + self.messages.iter().map(|m| m.text.len() + m.tool_text.len()).sum::<usize>()
    }
}

fn put_len(n: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

fn put_str(s: &str, out: &mut Vec<u8>) {
    put_len(s.len(), out);
    out.extend_from_slice(s.as_bytes());
}

/// Tagged, length-prefixed, keys sorted: equal JSON values encode equally
/// whatever their key order or whitespace.
fn encode_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(b'z'),
        Value::Bool(b) => out.push(if *b { b't' } else { b'f' }),
        Value::Number(n) => {
            out.push(b'n');
            put_str(&n.to_string(), out);
        }
        Value::String(s) => {
            out.push(b's');
            put_str(s, out);
        }
        Value::Array(items) => {
            out.push(b'[');
            put_len(items.len(), out);
            for item in items {
                encode_canonical(item, out);
            }
        }
        Value::Object(map) => {
            out.push(b'{');
            put_len(map.len(), out);
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in entries {
                put_str(k, out);
                encode_canonical(v, out);
            }
        }
    }
}

fn write_json_str(s: &str, out: &mut Vec<u8>) {
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

fn message_role(i: usize, m: &Map<String, Value>, api: ApiFormat, expected: &str) -> Result<Role, RequestError> {
    let field = || format!("messages[{i}].role");
    match m.get("role") {
        Some(Value::String(r)) => Role::parse(r, api).ok_or_else(|| RequestError::Invalid {
            field: field(),
            message: format!("unknown role `{r}`; expected {expected}"),
        }),
        None | Some(Value::Null) => Err(RequestError::MissingField { field: field() }),
        Some(_) => Err(RequestError::WrongType { field: field(), expected: "a string" }),
    }
}

/// `messages`: present, an array, not empty.
fn messages_array(body: &Map<String, Value>) -> Result<&Vec<Value>, RequestError> {
    match body.get("messages") {
        None | Some(Value::Null) => Err(RequestError::MissingField { field: "messages".into() }),
        Some(Value::Array(items)) if items.is_empty() => Err(RequestError::EmptyMessages),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(RequestError::WrongType { field: "messages".into(), expected: "an array of messages" }),
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

    let raw_messages = messages_array(&body)?;
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (i, raw) in raw_messages.iter().enumerate() {
        messages.push(openai_message(i, raw)?);
    }
    Ok(ChatRequest {
        api: ApiFormat::OpenAi,
        model,
        stream,
        client_wants_usage,
        // Both sent: a provider may honour either, so hold the larger.
        max_output_tokens: match (max_completion, max_tokens) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
        temperature,
        choices,
        tool_count,
        system: String::new(),
        messages,
        tools_text,
        embedding_inputs: None,
        raw: RawFields::default(),
        metadata_tags: None,
        parsed: body,
    })
}

/// `POST /v1/responses`: `input` is a string (one user message) or a list
/// of items (messages with text, image and file parts; function calls and
/// their outputs; reasoning items, which carry no prompt text); the
/// top-level `instructions` is the system text; `max_output_tokens` the cap.
fn parse_responses(body: Map<String, Value>) -> Result<ChatRequest, RequestError> {
    let model = field_str(&body, "model")?;
    let stream = opt_bool(&body, "stream")?.unwrap_or(false);
    let max_output_tokens = opt_positive_int(&body, "max_output_tokens")?;
    let temperature = opt_number_in(&body, "temperature", 0.0, 2.0)?;
    let system = match body.get("instructions") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(RequestError::WrongType { field: "instructions".into(), expected: "a string" }),
    };
    let (tool_count, tools_text) = tools(&body, "tools")?;
    let messages = match body.get("input") {
        None | Some(Value::Null) => return Err(RequestError::MissingField { field: "input".into() }),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(RequestError::Invalid { field: "input".into(), message: "must not be empty".into() });
        }
        Some(Value::String(s)) => vec![Message {
            role: Role::User,
            text: s.clone(),
            name: None,
            images: Vec::new(),
            tool_text: String::new(),
            file_tokens: 0,
        }],
        Some(Value::Array(items)) if items.is_empty() => return Err(RequestError::EmptyInput),
        Some(Value::Array(items)) => {
            let mut messages = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                if let Some(m) = responses_item(i, item)? {
                    messages.push(m);
                }
            }
            messages
        }
        Some(_) => {
            return Err(RequestError::WrongType {
                field: "input".into(),
                expected: "a string or an array of input items",
            });
        }
    };
    Ok(ChatRequest {
        api: ApiFormat::Responses,
        model,
        stream,
        // Responses streams always end with the usage.
        client_wants_usage: true,
        max_output_tokens,
        temperature,
        choices: 1,
        tool_count,
        system,
        messages,
        tools_text,
        embedding_inputs: None,
        raw: RawFields::default(),
        metadata_tags: None,
        parsed: body,
    })
}

/// One item of a Responses `input` list, as a message (None: an item with
/// no prompt text, such as a reasoning item or an item reference).
fn responses_item(i: usize, item: &Value) -> Result<Option<Message>, RequestError> {
    let Value::Object(m) = item else {
        return Err(RequestError::WrongType { field: format!("input[{i}]"), expected: "an object" });
    };
    let text_of = |v: Option<&Value>| -> String {
        match v {
            Some(Value::String(s)) => s.clone(),
            Some(other @ (Value::Array(_) | Value::Object(_))) => other.to_string(),
            _ => String::new(),
        }
    };
    let message = |role: Role, text: String, tool_text: String, images: Vec<ImageDetail>| Message {
        role,
        text,
        name: None,
        images,
        tool_text,
        file_tokens: 0,
    };
    match m.get("type").and_then(Value::as_str) {
        None | Some("message") => {
            let role = message_role(i, m, ApiFormat::OpenAi, "system, developer, user or assistant")
                .map_err(|e| rename_field(e, "messages", "input"))?;
            let mut text = String::new();
            let mut images = Vec::new();
            let mut file_tokens = 0u64;
            match m.get("content") {
                Some(Value::String(s)) => text.push_str(s),
                Some(Value::Array(parts)) => {
                    let mut read = PartsRead { text: &mut text, images: &mut images, file_tokens: &mut file_tokens };
                    read_parts(parts, &format!("input[{i}].content"), &mut read)?;
                }
                None | Some(Value::Null) => {
                    return Err(RequestError::MissingField { field: format!("input[{i}].content") });
                }
                Some(_) => {
                    return Err(RequestError::WrongType {
                        field: format!("input[{i}].content"),
                        expected: "a string or an array of content parts",
                    });
                }
            }
            let mut message = message(role, text, String::new(), images);
            message.file_tokens = file_tokens;
            Ok(Some(message))
        }
        Some("function_call") => {
            let mut tool_text = text_of(m.get("name"));
            push_line(&mut tool_text, &text_of(m.get("arguments")));
            Ok(Some(message(Role::Assistant, String::new(), tool_text, Vec::new())))
        }
        Some("function_call_output") => {
            Ok(Some(message(Role::Tool, text_of(m.get("output")), String::new(), Vec::new())))
        }
        Some(_) => Ok(None),
    }
}

/// An error about `messages[…]` reworded for an API whose list is named otherwise.
fn rename_field(err: RequestError, from: &str, to: &str) -> RequestError {
    let rename = |f: String| f.replacen(from, to, 1);
    match err {
        RequestError::MissingField { field } => RequestError::MissingField { field: rename(field) },
        RequestError::WrongType { field, expected } => RequestError::WrongType { field: rename(field), expected },
        RequestError::Invalid { field, message } => RequestError::Invalid { field: rename(field), message },
        other => other,
    }
}

/// `POST /v1/embeddings`: `input` is a string, an array of strings, an
/// array of token ids or an array of token-id arrays, as OpenAI takes it.
fn parse_embeddings(body: Map<String, Value>) -> Result<ChatRequest, RequestError> {
    let model = field_str(&body, "model")?;
    let inputs = embedding_inputs(body.get("input"))?;
    match body.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "float" || s == "base64" => {}
        Some(_) => {
            return Err(RequestError::Invalid {
                field: "encoding_format".into(),
                message: "must be \"float\" or \"base64\"".into(),
            });
        }
    }
    opt_positive_int(&body, "dimensions")?;
    Ok(ChatRequest {
        api: ApiFormat::Embeddings,
        model,
        stream: false,
        client_wants_usage: false,
        max_output_tokens: None,
        temperature: None,
        choices: 1,
        tool_count: 0,
        system: String::new(),
        messages: Vec::new(),
        tools_text: String::new(),
        embedding_inputs: Some(inputs),
        raw: RawFields::default(),
        metadata_tags: None,
        parsed: body,
    })
}

fn embedding_inputs(input: Option<&Value>) -> Result<EmbeddingInputs, RequestError> {
    let invalid = |message: &str| RequestError::Invalid { field: "input".into(), message: message.to_owned() };
    let expected = "a string, an array of strings, an array of token ids or an array of token-id arrays";
    let token_ids = |items: &[Value]| -> Result<u64, RequestError> {
        if items.is_empty() {
            return Err(invalid("a token-id array must not be empty"));
        }
        if items.iter().all(|v| v.as_u64().is_some()) {
            Ok(items.len() as u64)
        } else {
            Err(RequestError::WrongType { field: "input".into(), expected })
        }
    };
    let mut inputs = EmbeddingInputs::default();
    match input {
        None | Some(Value::Null) => return Err(RequestError::MissingField { field: "input".into() }),
        Some(Value::String(s)) if s.is_empty() => return Err(invalid("must not be empty")),
        Some(Value::String(s)) => {
            inputs.texts.push(s.clone());
            inputs.items = 1;
        }
        Some(Value::Array(items)) if items.is_empty() => return Err(invalid("must not be an empty array")),
        Some(Value::Array(items)) if items.len() > MAX_EMBEDDING_INPUTS => {
            return Err(invalid(&format!("at most {MAX_EMBEDDING_INPUTS} inputs per request")));
        }
        Some(Value::Array(items)) => match items.first() {
            Some(Value::String(_)) => {
                for item in items {
                    match item {
                        Value::String(s) if s.is_empty() => return Err(invalid("an input string must not be empty")),
                        Value::String(s) => inputs.texts.push(s.clone()),
                        _ => return Err(RequestError::WrongType { field: "input".into(), expected }),
                    }
                }
                inputs.items = items.len();
            }
            Some(Value::Number(_)) => {
                inputs.token_ids = token_ids(items)?;
                inputs.items = 1;
            }
            Some(Value::Array(_)) => {
                for item in items {
                    match item {
                        Value::Array(ids) => inputs.token_ids = inputs.token_ids.saturating_add(token_ids(ids)?),
                        _ => return Err(RequestError::WrongType { field: "input".into(), expected }),
                    }
                }
                inputs.items = items.len();
            }
            _ => return Err(RequestError::WrongType { field: "input".into(), expected }),
        },
        Some(_) => return Err(RequestError::WrongType { field: "input".into(), expected }),
    }
    Ok(inputs)
}

fn openai_message(i: usize, raw: &Value) -> Result<Message, RequestError> {
    let Value::Object(m) = raw else {
        return Err(RequestError::WrongType { field: format!("messages[{i}]"), expected: "an object" });
    };
    let role = message_role(i, m, ApiFormat::OpenAi, "system, developer, user, assistant or tool")?;
    let name = match m.get("name") {
        Some(Value::String(n)) => Some(n.clone()),
        None | Some(Value::Null) => None,
        Some(_) => return Err(RequestError::WrongType { field: format!("messages[{i}].name"), expected: "a string" }),
    };
    let mut text = String::new();
    let mut images = Vec::new();
    let mut file_tokens = 0u64;
    let has_tool_calls =
        m.get("tool_calls").is_some_and(|v| !v.is_null()) || m.get("function_call").is_some_and(|v| !v.is_null());
    match m.get("content") {
        Some(Value::String(s)) => text.push_str(s),
        None | Some(Value::Null) if role == Role::Assistant || has_tool_calls => {}
        None | Some(Value::Null) => return Err(RequestError::MissingField { field: format!("messages[{i}].content") }),
        Some(Value::Array(parts)) => {
            let mut read = PartsRead { text: &mut text, images: &mut images, file_tokens: &mut file_tokens };
            read_parts(parts, &format!("messages[{i}].content"), &mut read)?;
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
    Ok(Message { role, text, name, images, tool_text, file_tokens })
}

/// Where the content parts of one message are read to.
struct PartsRead<'a> {
    text: &'a mut String,
    images: &'a mut Vec<ImageDetail>,
    file_tokens: &'a mut u64,
}

/// A message's content parts, as chat (`text`, `image_url`, `refusal`) and
/// the Responses API (`input_text`, `output_text`, `input_image`,
/// `input_file`, `refusal`) send them; `field` names the list in errors.
/// Part types the router does not count are left to the provider.
fn read_parts(parts: &[Value], field: &str, read: &mut PartsRead<'_>) -> Result<(), RequestError> {
    for (j, part) in parts.iter().enumerate() {
        let field = format!("{field}[{j}]");
        let Value::Object(p) = part else {
            return Err(RequestError::WrongType { field, expected: "an object" });
        };
        match p.get("type").and_then(Value::as_str) {
            Some("text" | "input_text" | "output_text") => match p.get("text") {
                Some(Value::String(t)) => push_line(read.text, t),
                _ => return Err(RequestError::WrongType { field: format!("{field}.text"), expected: "a string" }),
            },
            Some("refusal") => {
                if let Some(Value::String(t)) = p.get("refusal") {
                    push_line(read.text, t);
                }
            }
            Some("image_url") => {
                let low = p.get("image_url").and_then(|u| u.get("detail")).and_then(Value::as_str) == Some("low");
                read.images.push(if low { ImageDetail::Low } else { ImageDetail::High });
            }
            Some("input_image") => {
                let low = p.get("detail").and_then(Value::as_str) == Some("low");
                read.images.push(if low { ImageDetail::Low } else { ImageDetail::High });
            }
            Some("input_file") => {
                let data = p.get("file_data").and_then(Value::as_str);
                *read.file_tokens = read.file_tokens.saturating_add(crate::count::file_tokens(data));
            }
            // Chat's file part: `{"type": "file", "file": {"file_data" | "file_id"}}`.
            Some("file") => {
                let data = p.get("file").and_then(|f| f.get("file_data")).and_then(Value::as_str);
                *read.file_tokens = read.file_tokens.saturating_add(crate::count::file_tokens(data));
            }
            Some(_) => {}
            None => return Err(RequestError::MissingField { field: format!("{field}.type") }),
        }
    }
    Ok(())
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
    let raw_messages = messages_array(&body)?;
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
        embedding_inputs: None,
        raw: RawFields::default(),
        metadata_tags: None,
        parsed: body,
    })
}

fn anthropic_message(i: usize, raw: &Value) -> Result<Message, RequestError> {
    let Value::Object(m) = raw else {
        return Err(RequestError::WrongType { field: format!("messages[{i}]"), expected: "an object" });
    };
    let role = message_role(i, m, ApiFormat::Anthropic, "user or assistant")?;
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
    Ok(Message { role, text, name: None, images, tool_text, file_tokens: 0 })
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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
    fn tollgate_tags_are_taken_out_of_metadata_before_anything_is_forwarded_or_keyed() {
        let rewrite = |r: &ChatRequest| -> Value {
            let out = r.rewritten_body(&Rewrite {
                provider: Provider::Anthropic,
                model: "claude-3-5-haiku-latest",
                clamp_output_tokens: None,
                include_usage: false,
                max_tool_calls: None,
            });
            serde_json::from_slice(&out).unwrap()
        };
        let body = |metadata: &str| {
            format!(
                r#"{{"model":"m","max_tokens":9,"messages":[{{"role":"user","content":"x"}}],"metadata":{metadata}}}"#
            )
        };
        let with_user = ChatRequest::parse(
            ApiFormat::Anthropic,
            body(r#"{"user_id":"u-1","tollgate_tags":"a,b"}"#).as_bytes(),
            1 << 20,
        )
        .unwrap();
        assert_eq!(with_user.metadata_tags, Some(Value::from("a,b")));
        assert_eq!(rewrite(&with_user)["metadata"], serde_json::json!({"user_id": "u-1"}));
        let only_tags =
            ChatRequest::parse(ApiFormat::Anthropic, body(r#"{"tollgate_tags":"a"}"#).as_bytes(), 1 << 20).unwrap();
        assert!(rewrite(&only_tags).get("metadata").is_none(), "an emptied metadata is dropped");
        assert!(only_tags.body_map().get("metadata").is_none(), "and is not translated either");
        let plain = ChatRequest::parse(ApiFormat::Anthropic, body(r#"{"user_id":"u-1"}"#).as_bytes(), 1 << 20).unwrap();
        assert_eq!(plain.metadata_tags, None);
        assert_eq!(with_user.canonical_for_cache(), plain.canonical_for_cache());
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
            max_tool_calls: None,
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
    fn untouched_fields_pass_through_byte_for_byte() {
        let original = r#"{"model" : "tollgate/auto", "messages":[ {"role":"user","content":"caf\u00e9  x"} ],"metadata": {"b" : 1.50, "a":"\/"} }"#;
        let r = openai(original).unwrap();
        let out = r.rewritten_body(&Rewrite {
            provider: Provider::OpenAi,
            model: "m",
            clamp_output_tokens: None,
            include_usage: false,
            max_tool_calls: None,
        });
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            r#"{"model":"m","messages":[ {"role":"user","content":"caf\u00e9  x"} ],"metadata":{"b" : 1.50, "a":"\/"}}"#
        );
    }

    const CHAT: &str = r#""model":"tollgate/auto","messages":[{"role":"user","content":"x"}]"#;
    const MESSAGES: &str = r#""model":"tollgate/auto","max_tokens":5,"messages":[{"role":"user","content":"x"}]"#;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    fn malformed_detail(result: Result<ChatRequest, RequestError>) -> String {
        match result {
            Err(RequestError::MalformedJson { detail }) => detail,
            other => panic!("wanted MalformedJson, got {other:?}"),
        }
    }

    #[test]
    fn deep_nesting_in_a_field_the_router_does_not_read_is_refused_for_both_apis() {
        let deep = nested(100_000);
        let chat = format!(r#"{{{CHAT},"metadata":{{"tags":{deep}}}}}"#);
        let detail = malformed_detail(openai(&chat));
        assert!(detail.starts_with("recursion limit exceeded in `metadata`"), "{detail}");
        let messages = format!(r#"{{{MESSAGES},"metadata":{deep}}}"#);
        let detail = malformed_detail(anthropic(&messages));
        assert!(detail.starts_with("recursion limit exceeded in `metadata`"), "{detail}");
        // One client-facing error, OpenAI-shaped, naming the field and the limit.
        let api = crate::error::ApiError::from(RequestError::MalformedJson { detail });
        assert_eq!((api.status, api.code, api.param.as_deref()), (400, "invalid_json", None));
        assert_eq!(
            api.message,
            "request body is not valid JSON: recursion limit exceeded in `metadata` \
             (arrays and objects nest at most 127 deep)"
        );

        // A million levels: the top-level scan is iterative and the check
        // stops at the limit, so neither deepens the call stack.
        let body = format!(r#"{{{CHAT},"metadata":{}}}"#, nested(1_000_000));
        assert!(matches!(
            ChatRequest::parse(ApiFormat::OpenAi, body.as_bytes(), 4 << 20),
            Err(RequestError::MalformedJson { .. })
        ));
    }

    #[test]
    fn an_unread_field_nests_exactly_as_deep_as_a_parsed_one() {
        // `stream_options` is parsed into a Value (only `include_usage` is
        // looked at); `metadata` is never parsed. The same value must get the
        // same answer in both.
        for depth in [MAX_NESTING - 1, MAX_NESTING, MAX_NESTING + 1, MAX_NESTING + 2] {
            let arrays = format!(r#"{{"a":{}}}"#, nested(depth - 1));
            let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
            for value in [nested(depth), arrays, objects] {
                let read = openai(&format!(r#"{{{CHAT},"stream_options":{value}}}"#));
                let unread = openai(&format!(r#"{{{CHAT},"metadata":{value}}}"#));
                if depth <= MAX_NESTING {
                    assert!(unread.is_ok(), "depth {depth}: {:?}", unread.err());
                    // An array at the top of `stream_options` is a type error, not a JSON one.
                    assert!(!matches!(read, Err(RequestError::MalformedJson { .. })), "depth {depth}: {read:?}");
                } else {
                    let read = malformed_detail(read);
                    let unread = malformed_detail(unread);
                    assert_eq!(read.replace("`stream_options`", "`metadata`"), unread, "depth {depth}");
                    assert!(unread.starts_with("recursion limit exceeded in `metadata`"), "{unread}");
                }
            }
        }
        // The limit is serde_json's own, as the parsed fields get it.
        assert!(serde_json::from_str::<Value>(&nested(MAX_NESTING)).is_ok());
        assert!(serde_json::from_str::<Value>(&nested(MAX_NESTING + 1)).is_err());
    }

    #[test]
    fn numbers_and_strings_in_unread_fields_follow_the_parsed_fields_rules() {
        let f64_max_digits = format!("{:.0}", f64::MAX);
        let too_many_digits = format!("{f64_max_digits}0");
        let cases: &[(&str, bool)] = &[
            ("1e400", false),
            ("-1e400", false),
            ("1E+400", false),
            ("1e999999999999999999999", false),
            ("-0.5e99999", false),
            ("1.7976931348623159e308", false),
            (&too_many_digits, false),
            (r#""\ud800""#, false),
            (r#""\udc00 x""#, false),
            // Finite as f64, or rounding to zero: serde_json takes these.
            ("1e-400", true),
            ("0e999999", true),
            ("1.7976931348623157e308", true),
            (&f64_max_digits, true),
            ("123456789012345678901234567890", true),
            ("-123456789012345678901234567890.5e-3", true),
            (r#""\ud83d\ude00""#, true),
        ];
        for (item, ok) in cases {
            for value in [item.to_string(), format!(r#"{{"w":[{item}]}}"#)] {
                let read = openai(&format!(r#"{{{CHAT},"stream_options":{{"v":{value}}}}}"#));
                let unread = openai(&format!(r#"{{{CHAT},"metadata":{{"v":{value}}}}}"#));
                let unread_anthropic = anthropic(&format!(r#"{{{MESSAGES},"metadata":{{"v":{value}}}}}"#));
                if *ok {
                    assert!(read.is_ok() && unread.is_ok() && unread_anthropic.is_ok(), "{value}: {unread:?}");
                } else {
                    let read = malformed_detail(read);
                    let unread = malformed_detail(unread);
                    assert_eq!(read.replace("`stream_options`", "`metadata`"), unread, "{value}");
                    assert_eq!(malformed_detail(unread_anthropic), unread, "{value}");
                }
            }
        }
        let detail = malformed_detail(openai(&format!(r#"{{{CHAT},"metadata":{{"v":1e400}}}}"#)));
        assert_eq!(detail, "number out of range in `metadata`");
        let detail = malformed_detail(openai(&format!(r#"{{"temperature":-1e400,{CHAT}}}"#)));
        assert_eq!(detail, "number out of range in `temperature`");
        // The first bad field in the body's order is the one named.
        let detail = malformed_detail(openai(&format!(r#"{{"user":{},{CHAT},"seed":1e400}}"#, nested(200))));
        assert!(detail.starts_with("recursion limit exceeded in `user`"), "{detail}");
        let long_key = "k".repeat(10_000);
        let detail = malformed_detail(openai(&format!(r#"{{{CHAT},"{long_key}":1e400}}"#)));
        assert_eq!(detail, format!("number out of range in `{}…`", &long_key[..64]));
    }

    #[test]
    fn valid_unread_fields_still_pass_through_byte_for_byte() {
        let metadata = format!(r#"{{"a" : {} , "b":1.50}}"#, nested(MAX_NESTING - 1));
        let extra = r#"[1e-400, -0.0, 1E3, 123456789012345678901234567890, "\ud83d\ude00\u00e9\/"]"#;
        let original = format!(r#"{{"model":"tollgate/auto","metadata": {metadata} ,{CHAT_TAIL},"x":{extra}}}"#);
        let r = openai(&original).unwrap();
        let out = r.rewritten_body(&Rewrite {
            provider: Provider::OpenAi,
            model: "m",
            clamp_output_tokens: None,
            include_usage: false,
            max_tool_calls: None,
        });
        let want = format!(r#"{{"model":"m","metadata":{metadata},{CHAT_TAIL},"x":{extra}}}"#);
        assert_eq!(String::from_utf8(out).unwrap(), want);
        assert_eq!(r.raw_field("metadata"), Some(metadata.as_str()));
    }

    const CHAT_TAIL: &str = r#""messages":[{"role":"user","content":"x"}]"#;

    #[test]
    fn duplicate_top_level_keys_are_refused() {
        let err = openai(r#"{"model":"a","messages":[{"role":"user","content":"x"}],"model":"b"}"#).unwrap_err();
        assert!(
            matches!(&err, RequestError::MalformedJson { detail } if detail.contains("duplicate field `model`")),
            "{err:?}"
        );
    }

    #[test]
    fn a_responses_rewrite_writes_max_tool_calls_in_place_or_at_the_end_and_other_apis_never_get_it() {
        let rw = |calls| Rewrite {
            provider: Provider::OpenAi,
            model: "m",
            clamp_output_tokens: None,
            include_usage: false,
            max_tool_calls: calls,
        };
        let without = ChatRequest::parse(ApiFormat::Responses, br#"{"model":"a","input":"x"}"#, 1 << 20).unwrap();
        assert_eq!(without.rewritten_body(&rw(Some(8))), br#"{"model":"m","input":"x","max_tool_calls":8}"#);
        let with =
            ChatRequest::parse(ApiFormat::Responses, br#"{"max_tool_calls":20,"model":"a","input":"x"}"#, 1 << 20)
                .unwrap();
        assert_eq!(with.rewritten_body(&rw(Some(3))), br#"{"max_tool_calls":3,"model":"m","input":"x"}"#);
        let chat = openai(r#"{"model":"a","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert!(!String::from_utf8(chat.rewritten_body(&rw(Some(8)))).unwrap().contains("max_tool_calls"));
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
