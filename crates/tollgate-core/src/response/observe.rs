//! Watching a streamed response as it passes through to the client.

use serde_json::{Map, Value};

use super::sse::{Boundary, SseEvent, SseParser};
use super::usage::{
    ANTHROPIC_CACHE_READ, ANTHROPIC_CACHE_WRITE, ANTHROPIC_INPUT, ANTHROPIC_OUTPUT, AnthropicTokens, openai_usage,
};
use super::{ResponseSummary, Usage, carries, estimate_tokens, generated_text_bytes};
use crate::api::ApiFormat;

/// Largest single SSE event the observer parses (and, when stripping, holds
/// back). Provider events are a few hundred bytes; anything larger is passed
/// on untouched and makes the response uncacheable.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// Most choices (OpenAI) or content blocks (Anthropic) tracked for assembly;
/// a response with more is not cacheable.
const MAX_PARTS: usize = 256;

/// The end of a streamed response.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamOutcome {
    /// Everything seen, as for a non-streamed response.
    pub summary: ResponseSummary,
    /// The equivalent non-streamed body (OpenAI `chat.completion` object,
    /// Anthropic `message` object) for the cache. `None` when the stream was
    /// incomplete or failed, had tool calls or content other than text (or
    /// logprobs), lost an event to the size limit, or its text exceeded
    /// `max_assembled_bytes`.
    pub assembled: Option<Value>,
}

/// Watches a streamed response as it passes through, chunk by chunk.
#[derive(Debug)]
pub struct StreamObserver {
    api: ApiFormat,
    strip_usage_chunk: bool,
    parser: SseParser,
    /// When stripping: raw bytes of the unfinished event, not yet forwarded.
    pending: Vec<u8>,
    /// When stripping: the unfinished event outgrew the hold-back limit and
    /// is being forwarded as it arrives.
    passthrough_block: bool,
    /// When stripping: the last finished event was held back.
    last_block_dropped: bool,
    started: bool,
    watch: Watch,
}

impl StreamObserver {
    /// `strip_usage_chunk`: the router injected `stream_options.include_usage`
    /// for an OpenAI client that did not ask for it; the usage-only chunk
    /// (`choices: []` with `usage`) must then not reach the client. Ignored
    /// for Anthropic, whose usage travels in events every client expects.
    ///
    /// `max_assembled_bytes`: bound on the text kept to assemble a cacheable
    /// response.
    pub fn new(api: ApiFormat, strip_usage_chunk: bool, max_assembled_bytes: usize) -> Self {
        Self {
            api,
            strip_usage_chunk: strip_usage_chunk && api == ApiFormat::OpenAi,
            parser: SseParser::new(MAX_EVENT_BYTES),
            pending: Vec::new(),
            passthrough_block: false,
            last_block_dropped: false,
            started: false,
            watch: Watch::new(api, max_assembled_bytes),
        }
    }

    /// Feeds upstream bytes; appends to `out` the bytes to send to the client
    /// now.
    ///
    /// Without stripping, `out` gets `chunk` unchanged, at once. With
    /// stripping, `out` gets each event's original bytes as soon as the event
    /// is complete (its blank line has arrived), except the usage-only chunk;
    /// bytes of an unfinished event wait for the rest of it (up to 1 MiB,
    /// after which they are forwarded as they come).
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if !self.strip_usage_chunk {
            emit(out, &mut self.started, chunk);
            self.watch_only(chunk);
            return;
        }
        let Self {
            api: _,
            strip_usage_chunk: _,
            parser,
            pending,
            passthrough_block,
            last_block_dropped,
            started,
            watch,
        } = self;
        let mut start = 0;
        parser.push_with(chunk, &mut |end, boundary| {
            let piece = chunk.get(start..end).unwrap_or_default();
            start = end;
            match boundary {
                Boundary::CrLfTail => {
                    if !*last_block_dropped {
                        emit(out, started, piece);
                    }
                }
                Boundary::Block(event) => {
                    let usage_only = event.is_some_and(|event| watch.on_event(&event));
                    // Part of an oversized event may already be out: never
                    // hold back the rest of it.
                    let drop = usage_only && !*passthrough_block;
                    if !drop {
                        emit(out, started, pending);
                        emit(out, started, piece);
                    }
                    pending.clear();
                    *last_block_dropped = drop;
                    *passthrough_block = false;
                }
            }
        });
        let rest = chunk.get(start..).unwrap_or_default();
        if *passthrough_block {
            emit(out, started, rest);
        } else {
            pending.extend_from_slice(rest);
            if pending.len() > MAX_EVENT_BYTES {
                emit(out, started, pending);
                *pending = Vec::new();
                *passthrough_block = true;
            }
        }
    }

    /// A chunk the client gets in another form (translated): read for the
    /// summary and the body to cache, nothing relayed.
    pub fn watch_only(&mut self, chunk: &[u8]) {
        let Self { parser, watch, started, .. } = self;
        *started |= !chunk.is_empty();
        parser.push_with(chunk, &mut |_, boundary| {
            if let Boundary::Block(Some(event)) = boundary {
                watch.on_event(&event);
            }
        });
    }

    /// End of the upstream stream: flushes what remains to `out` (an event
    /// not followed by a blank line is still an event) and reports the
    /// outcome.
    /// The provider's stream broke after bytes reached the client: the
    /// closing event to send instead of [`StreamObserver::finish`]'s tail, so
    /// SDKs raise an error rather than return a silently short answer (a
    /// transport-level abort is not always visible to them: a proxy may turn
    /// it into a clean end). It starts with a blank line, which completes or
    /// discards any event the client holds half-received.
    pub fn broken_stream_event(&self, message: &str) -> Vec<u8> {
        self.broken_stream_event_at(message, self.next_sequence())
    }

    /// A Responses stream's next `sequence_number` (0 for other APIs).
    pub fn next_sequence(&self) -> u64 {
        match &self.watch.format {
            Format::Responses(w) => w.next_sequence,
            _ => 0,
        }
    }

    /// [`StreamObserver::broken_stream_event`] for a stream whose events the
    /// client got numbered up to `next_sequence` (a translated one).
    pub fn broken_stream_event_at(&self, message: &str, next_sequence: u64) -> Vec<u8> {
        let error = serde_json::json!({
            "message": message, "type": "api_error", "param": null, "code": "upstream_stream_broken"
        });
        match self.api {
            // openai-python raises APIError on a data object with `error`.
            // (Embeddings are never streamed.)
            ApiFormat::OpenAi | ApiFormat::Embeddings => {
                format!("\n\ndata: {}\n\n", serde_json::json!({ "error": error })).into_bytes()
            }
            // anthropic-sdk raises on `event: error`, the event Anthropic itself sends mid-stream.
            // The Responses API's own error event, which its SDK raises on.
            ApiFormat::Responses => format!(
                "\n\nevent: error\ndata: {}\n\n",
                serde_json::json!({"type": "error", "code": "upstream_stream_broken", "message": message,
                                   "param": null, "sequence_number": next_sequence})
            )
            .into_bytes(),
            ApiFormat::Anthropic => format!(
                "\n\nevent: error\ndata: {}\n\n",
                serde_json::json!({"type": "error", "error": {"type": "api_error", "message": message}})
            )
            .into_bytes(),
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) -> StreamOutcome {
        let usage_only = self.parser.finish_with().is_some_and(|event| self.watch.on_event(&event));
        if self.strip_usage_chunk {
            if !usage_only || self.passthrough_block {
                emit(out, &mut self.started, &self.pending);
            }
            self.pending = Vec::new();
            self.passthrough_block = false;
        }
        StreamOutcome { summary: self.summary(), assembled: self.assembled() }
    }

    /// What has been seen so far (for settling after a client abort).
    pub fn summary(&self) -> ResponseSummary {
        self.watch.summary()
    }

    /// Whether any byte of the response has been passed to the client.
    pub fn started(&self) -> bool {
        self.started
    }

    fn assembled(&self) -> Option<Value> {
        if self.parser.overflowed() {
            return None;
        }
        self.watch.assembled()
    }
}

fn emit(out: &mut Vec<u8>, started: &mut bool, bytes: &[u8]) {
    if !bytes.is_empty() {
        out.extend_from_slice(bytes);
        *started = true;
    }
}

/// The events seen so far, reduced to what the summary and the assembled
/// body need.
#[derive(Debug)]
struct Watch {
    flags: Flags,
    format: Format,
}

#[derive(Debug)]
struct Flags {
    errored: bool,
    has_tool_calls: bool,
    /// Something the assembled body cannot represent was seen (non-text
    /// content, logprobs, malformed data, too many parts).
    uncacheable: bool,
    /// The text outgrew `max_assembled_bytes` and was let go.
    too_big: bool,
    text_bytes: usize,
    max_text_bytes: usize,
    /// Bytes of generated text seen, kept or not (for the output estimate).
    generated_bytes: u64,
}

#[derive(Debug)]
enum Format {
    OpenAi(OpenAiWatch),
    Anthropic(AnthropicWatch),
    Responses(ResponsesWatch),
}

/// The Responses API's stream: typed events, the last of which
/// (`response.completed`, `response.incomplete` or `response.failed`)
/// carries the whole `response` object, usage included.
#[derive(Debug, Default)]
struct ResponsesWatch {
    model: Option<String>,
    /// The terminal event's `response`.
    last: Option<Map<String, Value>>,
    /// One past the highest `sequence_number` seen: an event the router
    /// adds (a broken stream's error) goes on from there.
    next_sequence: u64,
}

impl ResponsesWatch {
    fn on_event(&mut self, flags: &mut Flags, event: &SseEvent) {
        let Some(obj) = parse_object(event.data.trim()) else {
            flags.uncacheable = true;
            return;
        };
        if let Some(n) = obj.get("sequence_number").and_then(Value::as_u64) {
            self.next_sequence = self.next_sequence.max(n.saturating_add(1));
        }
        let kind = obj.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "error" | "response.failed" => flags.errored = true,
            "response.output_text.delta" | "response.function_call_arguments.delta" | "response.refusal.delta" => {
                if let Some(delta) = obj.get("delta") {
                    flags.saw_generated(delta);
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                let item_type = obj.get("item").and_then(|i| i.get("type")).and_then(Value::as_str);
                if item_type.is_some_and(|t| t.ends_with("_call")) {
                    flags.has_tool_calls = true;
                }
            }
            _ => {}
        }
        if let Some(Value::Object(response)) = obj.get("response") {
            if let Some(model) = response.get("model").and_then(Value::as_str) {
                self.model = Some(model.to_owned());
            }
            if matches!(kind, "response.completed" | "response.incomplete" | "response.failed") {
                self.last = Some(response.clone());
            }
        }
    }

    fn summary(&self, flags: &Flags) -> ResponseSummary {
        match &self.last {
            Some(response) => {
                let mut summary = super::summarize_responses(response);
                summary.complete &= !flags.errored;
                summary.has_tool_calls |= flags.has_tool_calls;
                summary.output_tokens_estimate =
                    summary.output_tokens_estimate.max(estimate_tokens(flags.generated_bytes));
                summary
            }
            None => ResponseSummary {
                usage: None,
                complete: false,
                finish_reason: None,
                has_tool_calls: flags.has_tool_calls,
                model: self.model.clone(),
                output_tokens_estimate: estimate_tokens(flags.generated_bytes),
                builtin_calls: Vec::new(),
            },
        }
    }
}

#[derive(Debug, Default)]
struct OpenAiWatch {
    id: Option<String>,
    created: Option<Value>,
    model: Option<String>,
    system_fingerprint: Option<String>,
    service_tier: Option<String>,
    choices: Vec<ChoicePart>,
    usage: Option<Usage>,
    usage_value: Option<Value>,
    saw_done: bool,
}

#[derive(Debug)]
struct ChoicePart {
    index: u64,
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    finish_reason: Option<String>,
}

#[derive(Debug, Default)]
struct AnthropicWatch {
    /// `message_start.message`, content and all.
    message: Option<Map<String, Value>>,
    model: Option<String>,
    blocks: Vec<(u64, String)>,
    stop_reason: Option<String>,
    stop_sequence: Option<Value>,
    tokens: AnthropicTokens,
    /// Non-count fields of `message_delta.usage` (e.g. `server_tool_use`).
    usage_extra: Map<String, Value>,
    saw_stop: bool,
}

impl Flags {
    fn saw_generated(&mut self, value: &Value) {
        self.generated_bytes = self.generated_bytes.saturating_add(generated_text_bytes(value));
    }

    /// Appends `text` to `dst` unless the assembled text would outgrow its
    /// bound; then everything kept is released and nothing more is kept.
    fn append(&mut self, dst: &mut String, text: &str) -> bool {
        if self.too_big {
            return false;
        }
        self.text_bytes = self.text_bytes.saturating_add(text.len());
        if self.text_bytes > self.max_text_bytes {
            self.too_big = true;
            return false;
        }
        dst.push_str(text);
        true
    }
}

/// A JSON event payload as an object, or `None` for anything else.
fn parse_object(data: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(obj)) => Some(obj),
        _ => None,
    }
}

impl Watch {
    fn new(api: ApiFormat, max_text_bytes: usize) -> Self {
        Self {
            flags: Flags {
                errored: false,
                has_tool_calls: false,
                uncacheable: false,
                too_big: false,
                text_bytes: 0,
                max_text_bytes,
                generated_bytes: 0,
            },
            format: match api {
                ApiFormat::OpenAi | ApiFormat::Embeddings => Format::OpenAi(OpenAiWatch::default()),
                ApiFormat::Responses => Format::Responses(ResponsesWatch::default()),
                ApiFormat::Anthropic => Format::Anthropic(AnthropicWatch::default()),
            },
        }
    }

    /// Takes in one event; returns whether it is an OpenAI usage-only chunk.
    fn on_event(&mut self, event: &SseEvent) -> bool {
        if event.event.as_deref() == Some("error") {
            self.flags.errored = true;
        }
        let was_too_big = self.flags.too_big;
        let usage_only = match &mut self.format {
            Format::OpenAi(w) => w.on_event(&mut self.flags, event),
            Format::Anthropic(w) => {
                w.on_event(&mut self.flags, event);
                false
            }
            Format::Responses(w) => {
                w.on_event(&mut self.flags, event);
                false
            }
        };
        if self.flags.too_big && !was_too_big {
            self.format.release_text();
        }
        usage_only
    }

    fn summary(&self) -> ResponseSummary {
        let flags = &self.flags;
        match &self.format {
            Format::OpenAi(w) => {
                let finish_reason = w.finish_reason();
                ResponseSummary {
                    usage: w.usage,
                    complete: w.saw_done && finish_reason.is_some() && !flags.errored,
                    finish_reason,
                    has_tool_calls: flags.has_tool_calls,
                    model: w.model.clone(),
                    output_tokens_estimate: estimate_tokens(flags.generated_bytes),
                    builtin_calls: Vec::new(),
                }
            }
            Format::Responses(w) => w.summary(flags),
            Format::Anthropic(w) => ResponseSummary {
                usage: w.tokens.to_usage(),
                complete: w.saw_stop && w.stop_reason.is_some() && !flags.errored,
                finish_reason: w.stop_reason.clone(),
                has_tool_calls: flags.has_tool_calls,
                model: w.model.clone(),
                output_tokens_estimate: estimate_tokens(flags.generated_bytes),
                builtin_calls: Vec::new(),
            },
        }
    }

    fn assembled(&self) -> Option<Value> {
        let flags = &self.flags;
        if flags.has_tool_calls || flags.uncacheable || flags.too_big || !self.summary().complete {
            return None;
        }
        match &self.format {
            Format::OpenAi(w) => w.assembled(),
            Format::Anthropic(w) => w.assembled(),
            // The terminal event's `response` is the non-streamed body.
            Format::Responses(w) => w.last.clone().map(Value::Object),
        }
    }
}

impl Format {
    fn release_text(&mut self) {
        match self {
            Format::OpenAi(w) => {
                for choice in &mut w.choices {
                    choice.content = None;
                    choice.refusal = None;
                }
            }
            Format::Anthropic(w) => {
                for (_, text) in &mut w.blocks {
                    *text = String::new();
                }
            }
            Format::Responses(_) => {}
        }
    }
}

impl OpenAiWatch {
    fn on_event(&mut self, flags: &mut Flags, event: &SseEvent) -> bool {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.saw_done = true;
            return false;
        }
        let Some(obj) = parse_object(data) else {
            // Not a chunk: whatever it held is missing from the assembly.
            flags.uncacheable = true;
            return false;
        };
        if carries(obj.get("error")) || obj.get("type").and_then(Value::as_str) == Some("error") {
            flags.errored = true;
            return false;
        }
        if self.id.is_none() {
            self.id = obj.get("id").and_then(Value::as_str).map(str::to_owned);
        }
        if self.created.is_none() {
            self.created = obj.get("created").filter(|c| c.is_number()).cloned();
        }
        if self.model.is_none() {
            self.model = obj.get("model").and_then(Value::as_str).map(str::to_owned);
        }
        if let Some(fp) = obj.get("system_fingerprint").and_then(Value::as_str) {
            self.system_fingerprint = Some(fp.to_owned());
        }
        if let Some(tier) = obj.get("service_tier").and_then(Value::as_str) {
            self.service_tier = Some(tier.to_owned());
        }
        let usage = obj.get("usage").filter(|u| u.is_object());
        if let Some(usage) = usage {
            if let Some(parsed) = openai_usage(usage) {
                self.usage = Some(parsed);
            }
            self.usage_value = Some(usage.clone());
        }
        let no_choices = match obj.get("choices") {
            Some(Value::Array(choices)) => {
                for (position, choice) in choices.iter().enumerate() {
                    self.on_choice(flags, position, choice);
                }
                choices.is_empty()
            }
            None | Some(Value::Null) => true,
            Some(_) => {
                flags.uncacheable = true;
                false
            }
        };
        usage.is_some() && no_choices
    }

    fn on_choice(&mut self, flags: &mut Flags, position: usize, choice: &Value) {
        let Some(choice) = choice.as_object() else {
            flags.uncacheable = true;
            return;
        };
        let index = choice.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
        let Some(part) = self.choice_mut(index) else {
            flags.uncacheable = true;
            return;
        };
        if let Some(delta) = choice.get("delta").filter(|d| d.is_object()) {
            flags.saw_generated(delta);
        }
        if let Some(delta) = choice.get("delta").and_then(Value::as_object) {
            for (key, value) in delta {
                match (key.as_str(), value) {
                    (_, Value::Null) => {}
                    ("role", Value::String(role)) => part.role = Some(role.clone()),
                    ("content", Value::String(text)) => {
                        let dst = part.content.get_or_insert_with(String::new);
                        flags.append(dst, text);
                    }
                    ("refusal", Value::String(text)) => {
                        let dst = part.refusal.get_or_insert_with(String::new);
                        flags.append(dst, text);
                    }
                    ("tool_calls" | "function_call", value) => {
                        if carries(Some(value)) {
                            flags.has_tool_calls = true;
                        }
                    }
                    // Audio, reasoning, annotations, ...: not representable.
                    (_, value) => {
                        if carries(Some(value)) {
                            flags.uncacheable = true;
                        }
                    }
                }
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            part.finish_reason = Some(reason.to_owned());
        }
        if carries(choice.get("logprobs")) {
            flags.uncacheable = true;
        }
    }

    fn choice_mut(&mut self, index: u64) -> Option<&mut ChoicePart> {
        let position = match self.choices.iter().position(|c| c.index == index) {
            Some(position) => position,
            None if self.choices.len() < MAX_PARTS => {
                self.choices.push(ChoicePart { index, role: None, content: None, refusal: None, finish_reason: None });
                self.choices.len() - 1
            }
            None => return None,
        };
        self.choices.get_mut(position)
    }

    /// Choice 0's finish reason, else the lowest-indexed one's.
    fn finish_reason(&self) -> Option<String> {
        self.choices
            .iter()
            .filter(|c| c.finish_reason.is_some())
            .min_by_key(|c| c.index)
            .and_then(|c| c.finish_reason.clone())
    }

    fn assembled(&self) -> Option<Value> {
        if self.choices.is_empty() {
            return None;
        }
        let mut parts: Vec<&ChoicePart> = self.choices.iter().collect();
        parts.sort_by_key(|c| c.index);
        let mut choices = Vec::with_capacity(parts.len());
        for part in parts {
            let finish_reason = part.finish_reason.clone()?;
            let mut message = Map::new();
            message.insert("role".to_owned(), Value::from(part.role.as_deref().unwrap_or("assistant")));
            message.insert("content".to_owned(), part.content.clone().map_or(Value::Null, Value::String));
            if let Some(refusal) = &part.refusal {
                message.insert("refusal".to_owned(), Value::String(refusal.clone()));
            }
            let mut choice = Map::new();
            choice.insert("index".to_owned(), Value::from(part.index));
            choice.insert("message".to_owned(), Value::Object(message));
            choice.insert("finish_reason".to_owned(), Value::String(finish_reason));
            choice.insert("logprobs".to_owned(), Value::Null);
            choices.push(Value::Object(choice));
        }
        let mut body = Map::new();
        body.insert("id".to_owned(), Value::from(self.id.as_deref().unwrap_or_default()));
        body.insert("object".to_owned(), Value::from("chat.completion"));
        body.insert("created".to_owned(), self.created.clone().unwrap_or(Value::from(0)));
        body.insert("model".to_owned(), Value::from(self.model.as_deref().unwrap_or_default()));
        body.insert("choices".to_owned(), Value::Array(choices));
        if let Some(usage) = &self.usage_value {
            body.insert("usage".to_owned(), usage.clone());
        }
        if let Some(tier) = &self.service_tier {
            body.insert("service_tier".to_owned(), Value::from(tier.as_str()));
        }
        if let Some(fp) = &self.system_fingerprint {
            body.insert("system_fingerprint".to_owned(), Value::from(fp.as_str()));
        }
        Some(Value::Object(body))
    }
}

impl AnthropicWatch {
    fn on_event(&mut self, flags: &mut Flags, event: &SseEvent) {
        let Some(obj) = parse_object(&event.data) else {
            flags.uncacheable = true;
            return;
        };
        let kind = obj.get("type").and_then(Value::as_str).or(event.event.as_deref()).unwrap_or_default();
        match kind {
            "message_start" => {
                if let Some(message) = obj.get("message").and_then(Value::as_object) {
                    self.on_message_start(message);
                }
            }
            "content_block_start" => {
                let index = block_index(&obj);
                let block = obj.get("content_block");
                if let Some(block) = block {
                    flags.saw_generated(block);
                }
                match block.and_then(|b| b.get("type")).and_then(Value::as_str) {
                    Some("text") => {
                        if carries(block.and_then(|b| b.get("citations"))) {
                            flags.uncacheable = true;
                        }
                        let text = block.and_then(|b| b.get("text")).and_then(Value::as_str).unwrap_or_default();
                        self.append(flags, index, text);
                    }
                    Some("tool_use") => flags.has_tool_calls = true,
                    _ => flags.uncacheable = true,
                }
            }
            "content_block_delta" => {
                let index = block_index(&obj);
                let delta = obj.get("delta");
                if let Some(delta) = delta {
                    flags.saw_generated(delta);
                }
                match delta.and_then(|d| d.get("type")).and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta.and_then(|d| d.get("text")).and_then(Value::as_str).unwrap_or_default();
                        self.append(flags, index, text);
                    }
                    _ => flags.uncacheable = true,
                }
            }
            "message_delta" => {
                if let Some(delta) = obj.get("delta").and_then(Value::as_object) {
                    if let Some(reason) = delta.get("stop_reason").and_then(Value::as_str) {
                        self.stop_reason = Some(reason.to_owned());
                    }
                    if let Some(sequence) = delta.get("stop_sequence") {
                        self.stop_sequence = Some(sequence.clone());
                    }
                }
                if let Some(usage) = obj.get("usage") {
                    self.on_usage(usage);
                }
            }
            "message_stop" => self.saw_stop = true,
            "error" => flags.errored = true,
            // ping, content_block_stop, and whatever comes next.
            _ => {}
        }
    }

    fn on_message_start(&mut self, message: &Map<String, Value>) {
        if self.model.is_none() {
            self.model = message.get("model").and_then(Value::as_str).map(str::to_owned);
        }
        if let Some(reason) = message.get("stop_reason").and_then(Value::as_str) {
            self.stop_reason = Some(reason.to_owned());
        }
        if let Some(usage) = message.get("usage") {
            self.tokens = self.tokens.max(AnthropicTokens::from_value(usage));
        }
        if self.message.is_none() {
            let mut message = message.clone();
            // Text arrives in deltas; what was in `content` is rebuilt.
            message.insert("content".to_owned(), Value::Array(Vec::new()));
            self.message = Some(message);
        }
    }

    fn on_usage(&mut self, usage: &Value) {
        self.tokens = self.tokens.max(AnthropicTokens::from_value(usage));
        if let Some(usage) = usage.as_object() {
            for (key, value) in usage {
                let is_count = [ANTHROPIC_INPUT, ANTHROPIC_CACHE_WRITE, ANTHROPIC_CACHE_READ, ANTHROPIC_OUTPUT]
                    .contains(&key.as_str());
                if !is_count && !value.is_null() {
                    self.usage_extra.insert(key.clone(), value.clone());
                }
            }
        }
    }

    fn append(&mut self, flags: &mut Flags, index: u64, text: &str) {
        let position = match self.blocks.iter().position(|(i, _)| *i == index) {
            Some(position) => position,
            None if self.blocks.len() < MAX_PARTS => {
                self.blocks.push((index, String::new()));
                self.blocks.len() - 1
            }
            None => {
                flags.uncacheable = true;
                return;
            }
        };
        if let Some((_, dst)) = self.blocks.get_mut(position) {
            flags.append(dst, text);
        }
    }

    fn assembled(&self) -> Option<Value> {
        let mut message = self.message.clone()?;
        let mut blocks: Vec<&(u64, String)> = self.blocks.iter().collect();
        blocks.sort_by_key(|(index, _)| *index);
        let content = blocks
            .into_iter()
            .map(|(_, text)| {
                let mut block = Map::new();
                block.insert("type".to_owned(), Value::from("text"));
                block.insert("text".to_owned(), Value::from(text.as_str()));
                Value::Object(block)
            })
            .collect();
        message.insert("content".to_owned(), Value::Array(content));
        message.insert("stop_reason".to_owned(), Value::from(self.stop_reason.as_deref()?));
        message.insert("stop_sequence".to_owned(), self.stop_sequence.clone().unwrap_or(Value::Null));
        let mut usage = message.get("usage").and_then(Value::as_object).cloned().unwrap_or_default();
        for (key, value) in &self.usage_extra {
            usage.insert(key.clone(), value.clone());
        }
        self.tokens.write_into(&mut usage);
        message.insert("usage".to_owned(), Value::Object(usage));
        Some(Value::Object(message))
    }
}

/// A content block event's `index` (0 when missing or unreadable).
fn block_index(obj: &Map<String, Value>) -> u64 {
    obj.get("index").and_then(Value::as_u64).unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::sse::tests::{ANTHROPIC_STREAM, OPENAI_STREAM, with_line_endings};
    use super::*;
    use serde_json::json;

    #[test]
    fn a_broken_responses_stream_numbers_its_error_event_after_the_last_one_relayed() {
        let mut observer = StreamObserver::new(ApiFormat::Responses, false, 1 << 20);
        let mut out = Vec::new();
        for n in 0..4 {
            let event = format!(
                "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"x\",\"sequence_number\":{n}}}\n\n"
            );
            observer.feed(event.as_bytes(), &mut out);
        }
        let tail = String::from_utf8(observer.broken_stream_event("cut")).unwrap();
        let data = tail.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let event: Value = serde_json::from_str(data).unwrap();
        assert_eq!(event["sequence_number"], 4);
    }

    /// Runs `chunks` through a fresh observer; returns client bytes and outcome.
    #[test]
    fn a_broken_stream_ends_with_an_error_event_each_sdk_raises_on() {
        let openai = StreamObserver::new(ApiFormat::OpenAi, true, 1024).broken_stream_event("cut");
        let mut parser = SseParser::new(1 << 16);
        let mut events = Vec::new();
        parser.push(&openai, &mut events);
        let data: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(data["error"]["code"], "upstream_stream_broken");
        let anthropic = StreamObserver::new(ApiFormat::Anthropic, false, 1024).broken_stream_event("cut");
        let mut events = Vec::new();
        SseParser::new(1 << 16).push(&anthropic, &mut events);
        assert_eq!(events[0].event.as_deref(), Some("error"));
    }

    pub(crate) fn observe(api: ApiFormat, strip: bool, chunks: &[&[u8]]) -> (Vec<u8>, StreamOutcome) {
        let mut observer = StreamObserver::new(api, strip, 1 << 20);
        let mut out = Vec::new();
        for chunk in chunks {
            observer.feed(chunk, &mut out);
        }
        let outcome = observer.finish(&mut out);
        (out, outcome)
    }

    fn observe_str(api: ApiFormat, stream: &str) -> StreamOutcome {
        observe(api, false, &[stream.as_bytes()]).1
    }

    /// `stream` without its block (data line plus blank line) containing `needle`.
    fn without_block(stream: &str, needle: &str, ending: &str) -> String {
        let separator = format!("{ending}{ending}");
        stream.split_inclusive(separator.as_str()).filter(|block| !block.contains(needle)).collect()
    }

    fn openai_stream_usage() -> Usage {
        Usage { input_tokens: 1200, cached_input_tokens: 1024, cache_write_input_tokens: 0, output_tokens: 5 }
    }

    fn anthropic_stream_usage() -> Usage {
        Usage { input_tokens: 2125, cached_input_tokens: 2000, cache_write_input_tokens: 100, output_tokens: 15 }
    }

    #[test]
    fn an_openai_stream_is_summarised_and_assembled() {
        let outcome = observe_str(ApiFormat::OpenAi, OPENAI_STREAM);
        assert_eq!(
            outcome.summary,
            ResponseSummary {
                usage: Some(openai_stream_usage()),
                finish_reason: Some("stop".to_owned()),
                has_tool_calls: false,
                complete: true,
                model: Some("gpt-4o-mini-2024-07-18".to_owned()),
                output_tokens_estimate: ("héllo 😀 世界".len() as u64).div_ceil(3),
                builtin_calls: Vec::new(),
            }
        );
        assert_eq!(
            outcome.assembled,
            Some(json!({
                "id": "chatcmpl-7",
                "object": "chat.completion",
                "created": 1700000000,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0,
                    "message": {"role": "assistant", "content": "héllo 😀 世界"},
                    "finish_reason": "stop", "logprobs": null}],
                "usage": {"prompt_tokens": 1200, "completion_tokens": 5, "total_tokens": 1205,
                    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                        "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
                "system_fingerprint": "fp_44709d6fcb"
            }))
        );
        // The summary of a parsed non-streamed equivalent agrees.
        let body = serde_json::to_vec(&outcome.assembled).unwrap();
        assert_eq!(super::super::summarize_json(ApiFormat::OpenAi, &body).unwrap(), outcome.summary);
    }

    #[test]
    fn an_anthropic_stream_is_summarised_and_assembled() {
        let outcome = observe_str(ApiFormat::Anthropic, ANTHROPIC_STREAM);
        assert_eq!(
            outcome.summary,
            ResponseSummary {
                usage: Some(anthropic_stream_usage()),
                finish_reason: Some("end_turn".to_owned()),
                has_tool_calls: false,
                complete: true,
                model: Some("claude-sonnet-4-5-20250929".to_owned()),
                output_tokens_estimate: ("héllo 😀 世界".len() as u64).div_ceil(3),
                builtin_calls: Vec::new(),
            }
        );
        assert_eq!(
            outcome.assembled,
            Some(json!({
                "id": "msg_01", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [{"type": "text", "text": "héllo 😀 世界"}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 25, "cache_creation_input_tokens": 100,
                    "cache_read_input_tokens": 2000, "output_tokens": 15,
                    "service_tier": "standard"}
            }))
        );
        let body = serde_json::to_vec(&outcome.assembled).unwrap();
        assert_eq!(super::super::summarize_json(ApiFormat::Anthropic, &body).unwrap(), outcome.summary);
    }

    #[test]
    fn splitting_at_every_byte_offset_gives_the_same_summary_body_and_bytes() {
        for (api, stream) in [(ApiFormat::OpenAi, OPENAI_STREAM), (ApiFormat::Anthropic, ANTHROPIC_STREAM)] {
            for ending in ["\n", "\r\n"] {
                let text = with_line_endings(stream, ending);
                let bytes = text.as_bytes();
                let (whole_out, whole) = observe(api, false, &[bytes]);
                assert!(whole.summary.complete);
                assert!(whole.assembled.is_some());
                assert_eq!(whole_out, bytes);
                for cut in 0..=bytes.len() {
                    let (a, b) = bytes.split_at(cut);
                    let (out, outcome) = observe(api, false, &[a, b]);
                    assert_eq!(outcome, whole, "cut at {cut}");
                    assert_eq!(out, bytes, "cut at {cut}");
                }
                let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
                assert_eq!(observe(api, false, &chunks), (whole_out, whole));
            }
        }
    }

    #[test]
    fn without_stripping_each_chunk_is_forwarded_at_once_and_unchanged() {
        let mut observer = StreamObserver::new(ApiFormat::OpenAi, false, 1 << 20);
        let mut out = Vec::new();
        assert!(!observer.started());
        observer.feed(b"", &mut out);
        assert!(!observer.started());
        observer.feed(b"data: {\"cho", &mut out);
        assert_eq!(out, b"data: {\"cho");
        assert!(observer.started());
        observer.feed(b"\xff garbage \r", &mut out);
        assert_eq!(out, b"data: {\"cho\xff garbage \r");
    }

    #[test]
    fn stripping_removes_exactly_the_usage_only_event_wherever_the_stream_is_split() {
        for ending in ["\n", "\r\n", "\r"] {
            let text = with_line_endings(OPENAI_STREAM, ending);
            let bytes = text.as_bytes();
            let expected = without_block(&text, "\"choices\":[],\"usage\"", ending);
            assert!(expected.len() < bytes.len());
            assert!(!expected.contains("\"choices\":[],"));
            let (_, reference) = observe(ApiFormat::OpenAi, false, &[bytes]);
            for cut in 0..=bytes.len() {
                let (a, b) = bytes.split_at(cut);
                let (out, outcome) = observe(ApiFormat::OpenAi, true, &[a, b]);
                assert_eq!(String::from_utf8_lossy(&out), expected, "cut at {cut}, ending {ending:?}");
                // The usage is still seen, and the body still assembled.
                assert_eq!(outcome, reference);
            }
            let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(observe(ApiFormat::OpenAi, true, &chunks).0, expected.as_bytes());
        }
    }

    #[test]
    fn stripping_forwards_each_event_as_soon_as_it_is_complete() {
        let mut observer = StreamObserver::new(ApiFormat::OpenAi, true, 1 << 20);
        let mut out = Vec::new();
        observer.feed(b": ping\n\ndata: {\"choices\":[{\"index\":0,", &mut out);
        assert_eq!(out, b": ping\n\n");
        observer.feed(b"\"delta\":{\"content\":\"hi\"}}]}\n", &mut out);
        assert_eq!(out, b": ping\n\n");
        observer.feed(b"\n", &mut out);
        assert_eq!(out, b": ping\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n");
        let before = out.len();
        observer.feed(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n", &mut out);
        assert_eq!(out.len(), before);
        observer.feed(b"data: [DONE]\n\n", &mut out);
        assert!(out.ends_with(b"}]}\n\ndata: [DONE]\n\n"));
        let outcome = observer.finish(&mut out);
        assert_eq!(outcome.summary.usage, Some(Usage { input_tokens: 3, output_tokens: 1, ..Usage::default() }));
    }

    #[test]
    fn stripping_has_not_started_until_the_first_event_is_complete() {
        let mut observer = StreamObserver::new(ApiFormat::OpenAi, true, 1 << 20);
        let mut out = Vec::new();
        observer.feed(b"data: {\"choices\":[]", &mut out);
        assert!(!observer.started());
        observer.feed(b",\"usage\":{\"prompt_tokens\":1}}\n\n", &mut out);
        assert!(!observer.started(), "the usage chunk alone is not sent");
        observer.feed(b"data: [DONE]\n\n", &mut out);
        assert!(observer.started());
    }

    #[test]
    fn stripping_keeps_chunks_without_usage_even_with_empty_choices() {
        // Azure's first chunk carries prompt filter results and no choices.
        let stream = concat!(
            r#"data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}"#,
            "\n\n",
            r#"data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}],"usage":null}"#,
            "\n\n",
            r#"data: {"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":9,"completion_tokens":1}}"#,
            "\n\n",
            "data: [DONE]\n\n",
        );
        let (out, outcome) = observe(ApiFormat::OpenAi, true, &[stream.as_bytes()]);
        assert_eq!(out, stream.as_bytes());
        assert_eq!(outcome.summary.usage.map(|u| u.input_tokens), Some(9));
    }

    #[test]
    fn stripping_a_final_usage_chunk_without_a_blank_line_still_works() {
        let stream = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2}}";
        let (out, outcome) = observe(ApiFormat::OpenAi, true, &[stream.as_bytes()]);
        assert_eq!(
            out,
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\n"
        );
        assert_eq!(outcome.summary.usage.map(|u| u.input_tokens), Some(2));
        assert!(!outcome.summary.complete, "no [DONE]");
    }

    #[test]
    fn stripping_is_ignored_for_anthropic() {
        let bytes = ANTHROPIC_STREAM.as_bytes();
        let (out, outcome) = observe(ApiFormat::Anthropic, true, &[bytes]);
        assert_eq!(out, bytes);
        assert!(outcome.summary.complete);
    }

    #[test]
    fn an_openai_stream_without_done_is_incomplete_but_reports_usage() {
        let text = OPENAI_STREAM.replace("data: [DONE]\n\n", "");
        let outcome = observe_str(ApiFormat::OpenAi, &text);
        assert!(!outcome.summary.complete);
        assert_eq!(outcome.summary.usage, Some(openai_stream_usage()));
        assert_eq!(outcome.summary.finish_reason.as_deref(), Some("stop"));
        assert_eq!(outcome.assembled, None);
    }

    #[test]
    fn an_openai_stream_without_a_finish_reason_is_incomplete() {
        let text = OPENAI_STREAM.replace("\"finish_reason\":\"stop\"", "\"finish_reason\":null");
        let outcome = observe_str(ApiFormat::OpenAi, &text);
        assert!(!outcome.summary.complete);
        assert_eq!(outcome.assembled, None);
    }

    #[test]
    fn an_openai_error_chunk_fails_the_stream() {
        let text = OPENAI_STREAM.replace(
            "data: [DONE]",
            "data: {\"error\":{\"message\":\"server overloaded\",\"type\":\"server_error\"}}\n\ndata: [DONE]",
        );
        let outcome = observe_str(ApiFormat::OpenAi, &text);
        assert!(!outcome.summary.complete);
        assert_eq!(outcome.summary.usage, Some(openai_stream_usage()));
        assert_eq!(outcome.assembled, None);
        let text = OPENAI_STREAM.replace("data: [DONE]", "event: error\ndata: boom\n\ndata: [DONE]");
        assert!(!observe_str(ApiFormat::OpenAi, &text).summary.complete);
    }

    #[test]
    fn an_anthropic_error_event_fails_the_stream_but_keeps_usage() {
        let cut = ANTHROPIC_STREAM.find("event: content_block_stop").unwrap();
        let text = format!(
            "{}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n",
            &ANTHROPIC_STREAM[..cut]
        );
        let outcome = observe_str(ApiFormat::Anthropic, &text);
        assert!(!outcome.summary.complete);
        assert_eq!(outcome.assembled, None);
        assert_eq!(outcome.summary.usage, Some(Usage { output_tokens: 1, ..anthropic_stream_usage() }));
        // An error even after message_stop means the response failed.
        let text = format!("{ANTHROPIC_STREAM}event: error\ndata: {{\"type\":\"error\"}}\n\n");
        assert!(!observe_str(ApiFormat::Anthropic, &text).summary.complete);
    }

    #[test]
    fn a_stream_dropped_mid_event_is_incomplete_but_reports_usage_so_far() {
        for (api, stream) in [(ApiFormat::OpenAi, OPENAI_STREAM), (ApiFormat::Anthropic, ANTHROPIC_STREAM)] {
            let (_, full) = observe(api, false, &[stream.as_bytes()]);
            for cut in 0..stream.len() - 2 {
                let (_, outcome) = observe(api, false, &[&stream.as_bytes()[..cut]]);
                assert!(!outcome.summary.complete, "cut at {cut}");
                assert_eq!(outcome.assembled, None, "cut at {cut}");
                if let (Some(seen), Some(all)) = (outcome.summary.usage, full.summary.usage) {
                    assert!(seen.output_tokens <= all.output_tokens);
                    assert!(seen.input_tokens <= all.input_tokens);
                }
            }
        }
        let cut = ANTHROPIC_STREAM.find("event: content_block_delta").unwrap();
        let mut observer = StreamObserver::new(ApiFormat::Anthropic, false, 1 << 20);
        observer.feed(&ANTHROPIC_STREAM.as_bytes()[..cut + 30], &mut Vec::new());
        let summary = observer.summary();
        assert!(!summary.complete);
        assert_eq!(summary.usage.map(|u| u.input_tokens), Some(2125));
        assert_eq!(summary.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    }

    #[test]
    fn an_aborted_stream_without_usage_estimates_the_output_seen_so_far() {
        let mut observer = StreamObserver::new(ApiFormat::OpenAi, false, 1 << 20);
        let mut out = Vec::new();
        assert_eq!(observer.summary().output_tokens_estimate, 0);
        let cut = OPENAI_STREAM.find("data: {\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{},").unwrap();
        observer.feed(&OPENAI_STREAM.as_bytes()[..cut], &mut out);
        let summary = observer.summary();
        assert_eq!(summary.usage, None);
        assert!(!summary.complete);
        assert_eq!(summary.output_tokens_estimate, 6);

        // Tool-call arguments and thinking count; names of fields do not.
        let stream = concat!(
            r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get","arguments":""}}]}}]}"#,
            "\n\n",
            r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"q\":1}"}}]}}]}"#,
            "\n\n",
        );
        assert_eq!(observe_str(ApiFormat::OpenAi, stream).summary.output_tokens_estimate, 4);
        let stream = concat!(
            "event: content_block_start\n",
            r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            "\n\nevent: content_block_delta\n",
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"abcdef"}}"#,
            "\n\nevent: content_block_delta\n",
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sssssssssssssssss"}}"#,
            "\n\n",
        );
        assert_eq!(observe_str(ApiFormat::Anthropic, stream).summary.output_tokens_estimate, 2);
    }

    #[test]
    fn anthropic_usage_takes_the_largest_count_reported() {
        let text = ANTHROPIC_STREAM.replace(
            r#""usage":{"output_tokens":15}"#,
            r#""usage":{"input_tokens":25,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":15,"server_tool_use":{"web_search_requests":0}}"#,
        );
        let outcome = observe_str(ApiFormat::Anthropic, &text);
        assert_eq!(outcome.summary.usage, Some(anthropic_stream_usage()));
        let usage = &outcome.assembled.unwrap()["usage"];
        assert_eq!(usage["server_tool_use"], json!({"web_search_requests": 0}));
        assert_eq!(usage["output_tokens"], json!(15));
        // Two message_deltas: cumulative, the later (larger) one wins.
        let text = ANTHROPIC_STREAM.replace(
            "event: message_stop",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":\"21\"}}\n\nevent: message_stop",
        );
        let outcome = observe_str(ApiFormat::Anthropic, &text);
        assert_eq!(outcome.summary.usage.map(|u| u.output_tokens), Some(21));
        assert_eq!(outcome.summary.finish_reason.as_deref(), Some("end_turn"));
    }

    #[test]
    fn openai_usage_comes_from_the_last_usage_object() {
        let stream = concat!(
            r#"data: {"choices":[{"index":0,"delta":{"content":"a"}}],"usage":{"prompt_tokens":4,"completion_tokens":1}}"#,
            "\n\n",
            r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":{"prompt_tokens":4,"completion_tokens":"2"}}"#,
            "\n\n",
            r#"data: {"choices":[{"index":0,"delta":{}}],"usage":null}"#,
            "\n\n",
            "data: [DONE]\n\n",
        );
        let outcome = observe_str(ApiFormat::OpenAi, stream);
        assert_eq!(outcome.summary.usage, Some(Usage { input_tokens: 4, output_tokens: 2, ..Usage::default() }));
        assert_eq!(outcome.summary.finish_reason.as_deref(), Some("length"));
        assert!(outcome.summary.complete);
    }

    #[test]
    fn a_stream_without_usage_has_no_usage() {
        let text = without_block(OPENAI_STREAM, "\"choices\":[]", "\n");
        let outcome = observe_str(ApiFormat::OpenAi, &text);
        assert_eq!(outcome.summary.usage, None);
        assert!(outcome.summary.complete);
        let body = outcome.assembled.unwrap();
        assert!(body.get("usage").is_none());
    }

    #[test]
    fn openai_tool_call_streams_report_tool_calls_and_are_not_assembled() {
        let stream = concat!(
            r#"data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
            "\n\n",
            r#"data: {"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":null}]}"#,
            "\n\n",
            r#"data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            "\n\ndata: [DONE]\n\n",
        );
        let outcome = observe_str(ApiFormat::OpenAi, stream);
        assert!(outcome.summary.has_tool_calls);
        assert!(outcome.summary.complete);
        assert_eq!(outcome.summary.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(outcome.assembled, None);
    }

    #[test]
    fn anthropic_tool_use_and_thinking_blocks_are_not_assembled() {
        let tool = ANTHROPIC_STREAM.replace(
            "event: message_delta",
            concat!(
                "event: content_block_start\n",
                r#"data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
                "\n\nevent: content_block_delta\n",
                r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}}"#,
                "\n\nevent: message_delta"
            ),
        ).replace("end_turn", "tool_use");
        let outcome = observe_str(ApiFormat::Anthropic, &tool);
        assert!(outcome.summary.has_tool_calls);
        assert!(outcome.summary.complete);
        assert_eq!(outcome.assembled, None);

        let thinking = ANTHROPIC_STREAM.replace(
            r#""content_block":{"type":"text","text":""}"#,
            r#""content_block":{"type":"thinking","thinking":""}"#,
        );
        let outcome = observe_str(ApiFormat::Anthropic, &thinking);
        assert!(!outcome.summary.has_tool_calls);
        assert!(outcome.summary.complete);
        assert_eq!(outcome.assembled, None);
    }

    #[test]
    fn openai_logprobs_and_unknown_content_are_not_assembled() {
        let with_logprobs = OPENAI_STREAM.replace(
            r#""delta":{"content":"héllo "},"logprobs":null"#,
            r#""delta":{"content":"héllo "},"logprobs":{"content":[]}"#,
        );
        assert_eq!(observe_str(ApiFormat::OpenAi, &with_logprobs).assembled, None);
        let with_reasoning = OPENAI_STREAM
            .replace(r#""delta":{"content":"héllo "}"#, r#""delta":{"reasoning_content":"hmm","content":"héllo "}"#);
        let outcome = observe_str(ApiFormat::OpenAi, &with_reasoning);
        assert!(outcome.summary.complete);
        assert_eq!(outcome.assembled, None);
    }

    #[test]
    fn several_choices_are_assembled_by_index() {
        let stream = concat!(
            r#"data: {"id":"c","created":1,"model":"m","choices":[{"index":1,"delta":{"role":"assistant","content":"B"}},{"index":0,"delta":{"role":"assistant","content":"A"}}]}"#,
            "\n\n",
            r#"data: {"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}"#,
            "\n\n",
            r#"data: {"id":"c","created":1,"model":"m","choices":[{"index":1,"delta":{"content":"b"},"finish_reason":"length"}]}"#,
            "\n\ndata: [DONE]\n\n",
        );
        let body = observe_str(ApiFormat::OpenAi, stream).assembled.unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "Aa");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["choices"][1]["message"]["content"], "Bb");
        assert_eq!(body["choices"][1]["finish_reason"], "length");
    }

    #[test]
    fn an_openai_refusal_is_assembled_with_null_content() {
        let stream = concat!(
            r#"data: {"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","refusal":""}}]}"#,
            "\n\n",
            r#"data: {"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#,
            "\n\ndata: [DONE]\n\n",
        );
        let body = observe_str(ApiFormat::OpenAi, stream).assembled.unwrap();
        assert_eq!(
            body["choices"][0]["message"],
            json!({"role": "assistant", "content": null, "refusal": "I can't help with that."})
        );
    }

    #[test]
    fn text_beyond_the_assembly_bound_is_not_kept_and_not_assembled() {
        let text_bytes = "héllo 😀 世界".len();
        for (api, stream) in [(ApiFormat::OpenAi, OPENAI_STREAM), (ApiFormat::Anthropic, ANTHROPIC_STREAM)] {
            let run = |max: usize| {
                let mut observer = StreamObserver::new(api, false, max);
                let mut out = Vec::new();
                observer.feed(stream.as_bytes(), &mut out);
                observer.finish(&mut out)
            };
            assert!(run(text_bytes).assembled.is_some());
            let outcome = run(text_bytes - 1);
            assert!(outcome.summary.complete);
            assert!(outcome.summary.usage.is_some());
            assert_eq!(outcome.assembled, None);
        }
    }

    #[test]
    fn an_event_over_the_size_limit_is_passed_on_and_makes_the_body_uncacheable() {
        let huge = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}}}}],\"usage\":{{\"prompt_tokens\":1}}}}\n\n",
            "z".repeat(MAX_EVENT_BYTES + 10)
        );
        let text = OPENAI_STREAM.replacen("data: ", &format!("{huge}data: "), 1);
        for strip in [false, true] {
            let mut observer = StreamObserver::new(ApiFormat::OpenAi, strip, usize::MAX);
            let mut out = Vec::new();
            for chunk in text.as_bytes().chunks(4096) {
                observer.feed(chunk, &mut out);
            }
            let outcome = observer.finish(&mut out);
            let expected = if strip { without_block(&text, "\"choices\":[],", "\n") } else { text.clone() };
            assert!(out == expected.as_bytes(), "strip = {strip}");
            assert!(outcome.summary.complete);
            assert_eq!(outcome.assembled, None);
        }
    }

    #[test]
    fn hostile_streams_never_panic() {
        let nasty = [
            "data: {\"choices\":[{\"index\":18446744073709551615,\"delta\":{\"content\":1}}]}\n\n".to_owned(),
            "data: {\"choices\":[{\"index\":-1,\"delta\":\"x\",\"finish_reason\":7}]}\n\n".to_owned(),
            "data: {\"choices\":\"nope\",\"usage\":{\"prompt_tokens\":-9,\"completion_tokens\":1.5e300}}\n\n".to_owned(),
            "data: [1,2,3]\n\ndata: null\n\ndata: \"[DONE]\"\n\n".to_owned(),
            format!("data: {}\n\n", "[".repeat(10_000)),
            format!("data: {{\"type\":\"message_start\",\"message\":{}1{}}}\n\n", "{\"a\":".repeat(5000), "}".repeat(5000)),
            "event: content_block_delta\ndata: {\"index\":\"0\",\"delta\":{\"type\":\"text_delta\",\"text\":null}}\n\n".to_owned(),
            "data: {\"type\":\"message_delta\",\"delta\":null,\"usage\":[]}\n\ndata: {\"type\":\"message_start\",\"message\":null}\n\n".to_owned(),
        ];
        for api in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
            for text in &nasty {
                for strip in [false, true] {
                    let (_, outcome) = observe(api, strip, &[text.as_bytes()]);
                    assert!(!outcome.summary.complete);
                    assert_eq!(outcome.assembled, None);
                }
            }
        }
        let (_, outcome) = observe(ApiFormat::OpenAi, false, &[nasty[2].as_bytes()]);
        assert_eq!(outcome.summary.usage, Some(Usage { input_tokens: 0, output_tokens: u64::MAX, ..Usage::default() }));
        // Many distinct indices: bounded, not assembled.
        let mut many = String::new();
        for i in 0..1000 {
            many.push_str(&format!(
                "data: {{\"choices\":[{{\"index\":{i},\"delta\":{{\"content\":\"x\"}},\"finish_reason\":\"stop\"}}]}}\n\n"
            ));
        }
        many.push_str("data: [DONE]\n\n");
        let outcome = observe_str(ApiFormat::OpenAi, &many);
        assert!(outcome.summary.complete);
        assert_eq!(outcome.assembled, None);
    }

    #[test]
    fn garbage_bytes_pass_through_without_panicking() {
        let mut seed: u64 = 42;
        let mut bytes = Vec::new();
        for _ in 0..50_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            bytes.push(match (seed >> 60) as u8 {
                0..=2 => b'\n',
                3 => b'\r',
                4 => b'{',
                5 => b'"',
                _ => (seed >> 33) as u8,
            });
        }
        for api in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
            let chunks: Vec<&[u8]> = bytes.chunks(333).collect();
            let (out, outcome) = observe(api, false, &chunks);
            assert_eq!(out, bytes);
            assert!(!outcome.summary.complete);
            let (out, _) = observe(api, true, &chunks);
            assert_eq!(out, bytes, "nothing here is a usage-only chunk");
        }
    }

    #[test]
    fn a_non_sse_error_body_is_flushed_at_finish_when_stripping() {
        let body = b"{\"error\":{\"message\":\"bad\",\"type\":\"invalid_request_error\"}}";
        let mut observer = StreamObserver::new(ApiFormat::OpenAi, true, 1 << 20);
        let mut out = Vec::new();
        observer.feed(body, &mut out);
        let outcome = observer.finish(&mut out);
        assert_eq!(out, body);
        assert!(!outcome.summary.complete);
    }
}
