//! Streams: a provider's SSE stream in the client's API, event by event.
//!
//! A reader turns each provider event into neutral [`Event`]s; a writer
//! turns those into the client's events as they come. Nothing is held
//! back but the unfinished SSE event (bounded by the parser) and, for a
//! Responses client, the text and arguments its closing events repeat.

use super::answer::{Answer, NeutralUsage, ToolCall};
use super::{AnswerContext, Finish};
use crate::api::ApiFormat;
use crate::response::{AnthropicTokens, SseEvent, SseParser};
use serde_json::{Map, Value, json};

/// The largest provider event read (larger ones are dropped, as the
/// observer does).
const MAX_EVENT_BYTES: usize = 1 << 20;

/// What happened in a stream, in no API's shape.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Start { model: String },
    Text(String),
    ToolStart { index: usize, id: String, name: String },
    ToolArgs { index: usize, args: String },
    Finish(Finish),
    Usage(NeutralUsage),
    Error(String),
    Done,
}

/// Translates one streamed answer from the provider's API to the client's.
#[derive(Debug)]
pub struct StreamTranslator {
    parser: SseParser,
    reader: Reader,
    writer: Writer,
    events: Vec<SseEvent>,
    done: bool,
    finished: bool,
    overflowed: bool,
}

impl StreamTranslator {
    /// None when there is no such translation.
    pub fn new(provider: ApiFormat, client: ApiFormat, ctx: AnswerContext) -> Option<StreamTranslator> {
        let reader = match provider {
            ApiFormat::OpenAi => Reader::Chat(ChatReader::default()),
            ApiFormat::Anthropic => Reader::Anthropic(AnthropicReader::default()),
            _ => return None,
        };
        let writer = match client {
            ApiFormat::OpenAi => Writer::Chat(ChatWriter { ctx, model: String::new(), started: false, usage: None }),
            ApiFormat::Anthropic => Writer::Anthropic(AnthropicWriter::new(ctx)),
            ApiFormat::Responses => Writer::Responses(ResponsesWriter::new(ctx)),
            ApiFormat::Embeddings => return None,
        };
        Some(StreamTranslator {
            parser: SseParser::new(MAX_EVENT_BYTES),
            reader,
            writer,
            events: Vec::new(),
            done: false,
            finished: false,
            overflowed: false,
        })
    }

    /// A chunk of the provider's stream: the client's events for it go to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.parser.push(chunk, &mut self.events);
        self.pump(out);
    }

    /// The provider's stream ended: whatever it completed goes to `out`. A
    /// stream that finished its answer without its terminal event (`[DONE]`,
    /// `message_stop`) is closed properly; a broken one is left open (the
    /// host appends the client API's error event).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.parser.finish(&mut self.events);
        self.pump(out);
        if !self.done && self.finished {
            self.writer.write(Event::Done, out);
            self.done = true;
        }
    }

    /// A Responses client's next `sequence_number` (0 for other clients).
    pub fn next_sequence(&self) -> u64 {
        match &self.writer {
            Writer::Responses(w) => w.sequence,
            _ => 0,
        }
    }

    fn pump(&mut self, out: &mut Vec<u8>) {
        let mut neutral = Vec::new();
        for event in self.events.drain(..) {
            self.reader.read(&event, &mut neutral);
        }
        if self.parser.overflowed() && !self.overflowed {
            // An event too large to read is lost: the client must not take
            // the rest for a whole answer.
            self.overflowed = true;
            neutral.push(Event::Error("an event of the provider's stream was too large to translate".to_owned()));
        }
        for event in neutral {
            if self.done {
                break;
            }
            match &event {
                // An error ends the client's stream: nothing after it.
                Event::Done | Event::Error(_) => self.done = true,
                Event::Finish(_) => self.finished = true,
                _ => {}
            }
            self.writer.write(event, out);
        }
    }
}

// ----------------------------------------------------------------- readers

#[derive(Debug)]
enum Reader {
    Chat(ChatReader),
    Anthropic(AnthropicReader),
}

impl Reader {
    fn read(&mut self, event: &SseEvent, out: &mut Vec<Event>) {
        match self {
            Reader::Chat(r) => r.read(event, out),
            Reader::Anthropic(r) => r.read(event, out),
        }
    }
}

/// The most tool calls one streamed answer may carry through translation
/// (more ends the stream with an error: a bound on a hostile provider).
const MAX_TOOL_CALLS: usize = 256;

/// A tool call being read: its provider index and id, and whether any
/// arguments came (a call without any gets `{}`, as a JSON answer does).
#[derive(Debug)]
struct ReadCall {
    index: u64,
    id: String,
    has_args: bool,
}

#[derive(Debug, Default)]
struct ChatReader {
    started: bool,
    /// Tool calls in the order they started; the client's index is the position.
    calls: Vec<ReadCall>,
    /// Gave up on a hostile stream (an error was sent): reads nothing more.
    failed: bool,
}

impl ChatReader {
    /// The calls that got no arguments get `{}` (when the answer finishes).
    fn close_calls(&mut self, out: &mut Vec<Event>) {
        for (slot, call) in self.calls.iter_mut().enumerate() {
            if !call.has_args {
                call.has_args = true;
                out.push(Event::ToolArgs { index: slot, args: "{}".to_owned() });
            }
        }
    }

    fn read(&mut self, event: &SseEvent, out: &mut Vec<Event>) {
        if self.failed {
            return;
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            out.push(Event::Done);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else { return };
        if let Some(error) = chunk.get("error") {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("the provider's stream failed");
            out.push(Event::Error(message.to_owned()));
            return;
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start { model: chunk.get("model").and_then(Value::as_str).unwrap_or_default().to_owned() });
        }
        if let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) {
            let delta = choice.get("delta");
            for key in ["content", "refusal"] {
                if let Some(text) = delta.and_then(|d| d.get(key)).and_then(Value::as_str).filter(|t| !t.is_empty()) {
                    out.push(Event::Text(text.to_owned()));
                }
            }
            for call in delta.and_then(|d| d.get("tool_calls")).and_then(Value::as_array).into_iter().flatten() {
                let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let id = call.get("id").and_then(Value::as_str).filter(|i| !i.is_empty());
                // A new call: an index not seen yet, or a new id at a known
                // one (some providers leave `index` out, all at 0).
                let known = self.calls.iter().rposition(|c| c.index == index);
                let new = match (known, id) {
                    (None, _) => true,
                    (Some(k), Some(id)) => self.calls.get(k).is_some_and(|c| c.id != id),
                    (Some(_), None) => false,
                };
                let slot = if new {
                    if self.calls.len() >= MAX_TOOL_CALLS {
                        self.failed = true;
                        out.push(Event::Error(format!("more than {MAX_TOOL_CALLS} tool calls in one answer")));
                        return;
                    }
                    // The call before it is over: `{}` if it got no arguments.
                    if let Some(last) = self.calls.last_mut().filter(|c| !c.has_args) {
                        last.has_args = true;
                        out.push(Event::ToolArgs { index: self.calls.len() - 1, args: "{}".to_owned() });
                    }
                    self.calls.push(ReadCall { index, id: id.unwrap_or_default().to_owned(), has_args: false });
                    let slot = self.calls.len() - 1;
                    out.push(Event::ToolStart {
                        index: slot,
                        id: id.unwrap_or_default().to_owned(),
                        name: call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    });
                    slot
                } else {
                    known.unwrap_or_default()
                };
                if let Some(args) =
                    call.pointer("/function/arguments").and_then(Value::as_str).filter(|a| !a.is_empty())
                {
                    if let Some(c) = self.calls.get_mut(slot) {
                        c.has_args = true;
                    }
                    out.push(Event::ToolArgs { index: slot, args: args.to_owned() });
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.close_calls(out);
                let finish = match Finish::read(ApiFormat::OpenAi, reason, None) {
                    // Calls were made, whatever the provider calls its ending.
                    Finish::Stop if !self.calls.is_empty() => Finish::ToolCalls,
                    finish => finish,
                };
                out.push(Event::Finish(finish));
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            out.push(Event::Usage(NeutralUsage::from_chat(usage)));
        }
    }
}

#[derive(Debug, Default)]
struct AnthropicReader {
    /// Content block index → tool index, and whether arguments came.
    tool_blocks: Vec<(u64, usize, bool)>,
    /// `message_start`'s counts merged with `message_delta`'s, as the
    /// observer merges them for pricing.
    tokens: AnthropicTokens,
    failed: bool,
}

impl AnthropicReader {
    fn read(&mut self, event: &SseEvent, out: &mut Vec<Event>) {
        if self.failed {
            return;
        }
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else { return };
        let kind = data.get("type").and_then(Value::as_str).or(event.event.as_deref()).unwrap_or_default();
        match kind {
            "message_start" => {
                let message = data.get("message");
                out.push(Event::Start {
                    model: message.and_then(|m| m.get("model")).and_then(Value::as_str).unwrap_or_default().to_owned(),
                });
                if let Some(usage) = message.and_then(|m| m.get("usage")) {
                    self.tokens = self.tokens.max(AnthropicTokens::from_value(usage));
                }
            }
            "content_block_start" => {
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let Some(block) = data.get("content_block") else { return };
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(text) = block.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                            out.push(Event::Text(text.to_owned()));
                        }
                    }
                    Some("tool_use") => {
                        let tool = self.tool_blocks.len();
                        if tool >= MAX_TOOL_CALLS {
                            self.failed = true;
                            out.push(Event::Error(format!("more than {MAX_TOOL_CALLS} tool calls in one answer")));
                            return;
                        }
                        self.tool_blocks.push((index, tool, false));
                        out.push(Event::ToolStart {
                            index: tool,
                            id: block.get("id").and_then(Value::as_str).unwrap_or_default().to_owned(),
                            name: block.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                        });
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let Some(delta) = data.get("delta") else { return };
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        if let Some(text) = delta.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                            out.push(Event::Text(text.to_owned()));
                        }
                    }
                    Some("input_json_delta") => {
                        let args = delta.get("partial_json").and_then(Value::as_str).unwrap_or_default();
                        let block = self.tool_blocks.iter_mut().rev().find(|(b, _, _)| *b == index);
                        if let Some((_, tool, has_args)) = block.filter(|_| !args.is_empty()) {
                            *has_args = true;
                            out.push(Event::ToolArgs { index: *tool, args: args.to_owned() });
                        }
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                // A tool called without input streams no JSON: its arguments are `{}`.
                if let Some((_, tool, has_args)) =
                    self.tool_blocks.iter_mut().rev().find(|(b, _, has)| *b == index && !*has)
                {
                    *has_args = true;
                    out.push(Event::ToolArgs { index: *tool, args: "{}".to_owned() });
                }
            }
            "message_delta" => {
                if let Some(usage) = data.get("usage") {
                    self.tokens = self.tokens.max(AnthropicTokens::from_value(usage));
                }
                let stop_sequence = data.pointer("/delta/stop_sequence").and_then(Value::as_str);
                if let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    out.push(Event::Finish(Finish::read(ApiFormat::Anthropic, reason, stop_sequence)));
                }
                out.push(Event::Usage(NeutralUsage::from_anthropic_tokens(self.tokens)));
            }
            "message_stop" => out.push(Event::Done),
            "error" => {
                let message =
                    data.pointer("/error/message").and_then(Value::as_str).unwrap_or("the provider's stream failed");
                out.push(Event::Error(message.to_owned()));
            }
            _ => {}
        }
    }
}

// ----------------------------------------------------------------- writers

#[derive(Debug)]
enum Writer {
    Chat(ChatWriter),
    Anthropic(AnthropicWriter),
    Responses(ResponsesWriter),
}

impl Writer {
    fn write(&mut self, event: Event, out: &mut Vec<u8>) {
        match self {
            Writer::Chat(w) => w.write(event, out),
            Writer::Anthropic(w) => w.write(event, out),
            Writer::Responses(w) => w.write(event, out),
        }
    }
}

fn data_line(out: &mut Vec<u8>, value: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(value.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

fn named_event(out: &mut Vec<u8>, name: &str, value: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    data_line(out, value);
}

#[derive(Debug)]
struct ChatWriter {
    ctx: AnswerContext,
    model: String,
    started: bool,
    usage: Option<NeutralUsage>,
}

impl ChatWriter {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": format!("chatcmpl-{}", self.ctx.id_seed),
            "object": "chat.completion.chunk",
            "created": self.ctx.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        })
    }

    /// A text chunk, written straight out: the most frequent event by far,
    /// so it skips building a JSON tree (same bytes as [`Self::chunk`]).
    fn text_chunk(&self, text: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: {\"id\":\"chatcmpl-");
        out.extend_from_slice(self.ctx.id_seed.as_bytes());
        out.extend_from_slice(b"\",\"object\":\"chat.completion.chunk\",\"created\":");
        out.extend_from_slice(self.ctx.created.to_string().as_bytes());
        out.extend_from_slice(b",\"model\":");
        out.extend_from_slice(serde_json::to_string(&self.model).unwrap_or_default().as_bytes());
        out.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":{\"content\":");
        out.extend_from_slice(serde_json::to_string(text).unwrap_or_default().as_bytes());
        out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            data_line(out, &self.chunk(json!({ "role": "assistant", "content": "" }), None));
        }
    }

    fn write(&mut self, event: Event, out: &mut Vec<u8>) {
        match event {
            Event::Start { model } => {
                self.model = model;
                self.start(out);
            }
            Event::Text(text) => {
                self.start(out);
                self.text_chunk(&text, out);
            }
            Event::ToolStart { index, id, name } => {
                self.start(out);
                let call = json!({ "index": index, "id": id, "type": "function", "function": { "name": name, "arguments": "" } });
                data_line(out, &self.chunk(json!({ "tool_calls": [call] }), None));
            }
            Event::ToolArgs { index, args } => {
                let call = json!({ "index": index, "function": { "arguments": args } });
                data_line(out, &self.chunk(json!({ "tool_calls": [call] }), None));
            }
            Event::Finish(finish) => {
                self.start(out);
                data_line(out, &self.chunk(json!({}), Some(finish.chat())));
            }
            Event::Usage(usage) => self.usage = Some(usage),
            Event::Done => {
                if let (true, Some(usage)) = (self.ctx.include_usage, self.usage) {
                    let mut chunk = self.chunk(json!({}), None);
                    if let Some(obj) = chunk.as_object_mut() {
                        obj.insert("choices".into(), json!([]));
                        obj.insert("usage".into(), usage.chat());
                    }
                    data_line(out, &chunk);
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            Event::Error(message) => {
                data_line(
                    out,
                    &json!({ "error": { "message": message, "type": "server_error", "param": null, "code": null } }),
                );
            }
        }
    }
}

#[derive(Debug)]
enum OpenBlock {
    None,
    Text(usize),
    Tool { tool: usize, block: usize },
}

#[derive(Debug)]
struct AnthropicWriter {
    ctx: AnswerContext,
    started: bool,
    open: OpenBlock,
    next_block: usize,
    finish: Option<Finish>,
    usage: Option<NeutralUsage>,
}

impl AnthropicWriter {
    fn new(ctx: AnswerContext) -> Self {
        Self { ctx, started: false, open: OpenBlock::None, next_block: 0, finish: None, usage: None }
    }

    fn start(&mut self, model: &str, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        // An OpenAI provider reports usage at the end: the start carries
        // the router's own count, the end the provider's.
        let message = json!({
            "type": "message_start",
            "message": {
                "id": format!("msg_{}", self.ctx.id_seed),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": { "input_tokens": self.ctx.prompt_tokens, "output_tokens": 0 },
            },
        });
        named_event(out, "message_start", &message);
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        let index = match self.open {
            OpenBlock::None => return,
            OpenBlock::Text(i) | OpenBlock::Tool { block: i, .. } => i,
        };
        named_event(out, "content_block_stop", &json!({ "type": "content_block_stop", "index": index }));
        self.open = OpenBlock::None;
    }

    fn open(&mut self, block: Value, out: &mut Vec<u8>) -> usize {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        named_event(
            out,
            "content_block_start",
            &json!({ "type": "content_block_start", "index": index, "content_block": block }),
        );
        index
    }

    fn write(&mut self, event: Event, out: &mut Vec<u8>) {
        match event {
            Event::Start { model } => self.start(&model, out),
            Event::Text(text) => {
                self.start("", out);
                let index = match self.open {
                    OpenBlock::Text(i) => i,
                    _ => {
                        let i = self.open(json!({ "type": "text", "text": "" }), out);
                        self.open = OpenBlock::Text(i);
                        i
                    }
                };
                let delta = json!({ "type": "content_block_delta", "index": index, "delta": { "type": "text_delta", "text": text } });
                named_event(out, "content_block_delta", &delta);
            }
            Event::ToolStart { index, id, name } => {
                self.start("", out);
                let block = self.open(json!({ "type": "tool_use", "id": id, "name": name, "input": {} }), out);
                self.open = OpenBlock::Tool { tool: index, block };
            }
            Event::ToolArgs { index, args } => {
                if let OpenBlock::Tool { tool, block } = self.open
                    && tool == index
                {
                    let delta = json!({
                        "type": "content_block_delta",
                        "index": block,
                        "delta": { "type": "input_json_delta", "partial_json": args },
                    });
                    named_event(out, "content_block_delta", &delta);
                }
            }
            Event::Finish(finish) => {
                self.close(out);
                self.finish = Some(finish);
            }
            Event::Usage(usage) => self.usage = Some(usage),
            Event::Done => {
                self.start("", out);
                self.close(out);
                let stop_sequence = match &self.finish {
                    Some(Finish::StopSequence(Some(s))) => json!(s),
                    _ => Value::Null,
                };
                let usage = self.usage.map_or_else(|| json!({ "output_tokens": 0 }), |u| u.anthropic());
                let delta = json!({
                    "type": "message_delta",
                    "delta": { "stop_reason": self.finish.as_ref().map(Finish::anthropic), "stop_sequence": stop_sequence },
                    "usage": usage,
                });
                named_event(out, "message_delta", &delta);
                named_event(out, "message_stop", &json!({ "type": "message_stop" }));
            }
            Event::Error(message) => {
                named_event(
                    out,
                    "error",
                    &json!({ "type": "error", "error": { "type": "api_error", "message": message } }),
                );
            }
        }
    }
}

#[derive(Debug)]
enum OpenItem {
    None,
    Message { output_index: usize, text: String },
    Call { tool: usize, output_index: usize, call: ToolCall },
}

#[derive(Debug)]
struct ResponsesWriter {
    ctx: AnswerContext,
    model: String,
    sequence: u64,
    started: bool,
    open: OpenItem,
    /// Finished output items, in order, for the closing `response` object.
    items: Vec<Value>,
    finish: Option<Finish>,
    usage: Option<NeutralUsage>,
}

impl ResponsesWriter {
    fn new(ctx: AnswerContext) -> Self {
        Self {
            ctx,
            model: String::new(),
            sequence: 0,
            started: false,
            open: OpenItem::None,
            items: Vec::new(),
            finish: None,
            usage: None,
        }
    }

    fn emit(&mut self, kind: &str, fields: Value, out: &mut Vec<u8>) {
        let mut event = Map::new();
        event.insert("type".into(), json!(kind));
        if let Value::Object(fields) = fields {
            event.extend(fields);
        }
        event.insert("sequence_number".into(), json!(self.sequence));
        self.sequence += 1;
        named_event(out, kind, &Value::Object(event));
    }

    fn response(&self, status: &str) -> Value {
        let answer =
            Answer { model: self.model.clone(), finish: self.finish.clone(), usage: self.usage, ..Answer::default() };
        let mut response = answer.write_responses(&self.ctx, status);
        if let Some(obj) = response.as_object_mut() {
            obj.insert("output".into(), Value::Array(self.items.clone()));
            if status == "in_progress" {
                obj.insert("usage".into(), Value::Null);
            }
        }
        response
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.response("in_progress");
        self.emit("response.created", json!({ "response": response }), out);
        self.emit("response.in_progress", json!({ "response": response }), out);
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        match std::mem::replace(&mut self.open, OpenItem::None) {
            OpenItem::None => {}
            OpenItem::Message { output_index, text } => {
                let item_id = format!("msg_{}_{output_index}", self.ctx.id_seed);
                let part = json!({ "type": "output_text", "text": text, "annotations": [] });
                let at = json!({ "item_id": item_id, "output_index": output_index, "content_index": 0 });
                let mut done = at.clone();
                merge(&mut done, json!({ "text": text, "logprobs": [] }));
                self.emit("response.output_text.done", done, out);
                let mut part_done = at;
                merge(&mut part_done, json!({ "part": part }));
                self.emit("response.content_part.done", part_done, out);
                let item = json!({
                    "id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part],
                });
                self.emit("response.output_item.done", json!({ "output_index": output_index, "item": item }), out);
                self.items.push(item);
            }
            OpenItem::Call { output_index, call, .. } => {
                let item_id = format!("fc_{}_{output_index}", self.ctx.id_seed);
                self.emit(
                    "response.function_call_arguments.done",
                    json!({ "item_id": item_id, "output_index": output_index, "arguments": call.arguments }),
                    out,
                );
                let item = json!({
                    "id": item_id, "type": "function_call", "status": "completed",
                    "call_id": call.id, "name": call.name, "arguments": call.arguments,
                });
                self.emit("response.output_item.done", json!({ "output_index": output_index, "item": item }), out);
                self.items.push(item);
            }
        }
    }

    fn write(&mut self, event: Event, out: &mut Vec<u8>) {
        match event {
            Event::Start { model } => {
                self.model = model;
                self.start(out);
            }
            Event::Text(delta) => {
                self.start(out);
                if !matches!(self.open, OpenItem::Message { .. }) {
                    self.close(out);
                    let output_index = self.items.len();
                    let item_id = format!("msg_{}_{output_index}", self.ctx.id_seed);
                    let item = json!({ "id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": [] });
                    self.emit("response.output_item.added", json!({ "output_index": output_index, "item": item }), out);
                    let part = json!({ "type": "output_text", "text": "", "annotations": [] });
                    self.emit(
                        "response.content_part.added",
                        json!({ "item_id": item_id, "output_index": output_index, "content_index": 0, "part": part }),
                        out,
                    );
                    self.open = OpenItem::Message { output_index, text: String::new() };
                }
                if let OpenItem::Message { output_index, text } = &mut self.open {
                    text.push_str(&delta);
                    let fields = json!({
                        "item_id": format!("msg_{}_{output_index}", self.ctx.id_seed),
                        "output_index": *output_index,
                        "content_index": 0,
                        "delta": delta,
                        "logprobs": [],
                    });
                    self.emit("response.output_text.delta", fields, out);
                }
            }
            Event::ToolStart { index, id, name } => {
                self.start(out);
                self.close(out);
                let output_index = self.items.len();
                let item = json!({
                    "id": format!("fc_{}_{output_index}", self.ctx.id_seed), "type": "function_call",
                    "status": "in_progress", "call_id": id, "name": name, "arguments": "",
                });
                self.emit("response.output_item.added", json!({ "output_index": output_index, "item": item }), out);
                self.open =
                    OpenItem::Call { tool: index, output_index, call: ToolCall { id, name, arguments: String::new() } };
            }
            Event::ToolArgs { index, args } => {
                if let OpenItem::Call { tool, output_index, call } = &mut self.open
                    && *tool == index
                {
                    call.arguments.push_str(&args);
                    let fields = json!({
                        "item_id": format!("fc_{}_{output_index}", self.ctx.id_seed),
                        "output_index": *output_index,
                        "delta": args,
                    });
                    self.emit("response.function_call_arguments.delta", fields, out);
                }
            }
            Event::Finish(finish) => self.finish = Some(finish),
            Event::Usage(usage) => self.usage = Some(usage),
            Event::Done => {
                self.start(out);
                self.close(out);
                let response = self.response("completed");
                let kind = match response.get("status").and_then(Value::as_str) {
                    Some("incomplete") => "response.incomplete",
                    _ => "response.completed",
                };
                self.emit(kind, json!({ "response": response }), out);
            }
            Event::Error(message) => {
                self.emit("error", json!({ "code": "server_error", "message": message, "param": null }), out);
            }
        }
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn ctx(include_usage: bool) -> AnswerContext {
        AnswerContext { id_seed: "s1".into(), created: 1, prompt_tokens: 9, include_usage, echo: None }
    }

    const ANTHROPIC_TOOL_STREAM: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-3-5-haiku-latest\",\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\":\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":6}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    fn chunks_of(out: &[u8]) -> Vec<Value> {
        String::from_utf8_lossy(out)
            .split("\n\n")
            .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    }

    #[test]
    fn an_anthropic_tool_stream_reads_as_chat_chunks_whatever_the_split() {
        let whole = {
            let mut t = StreamTranslator::new(ApiFormat::Anthropic, ApiFormat::OpenAi, ctx(true)).unwrap();
            let mut out = Vec::new();
            t.feed(ANTHROPIC_TOOL_STREAM.as_bytes(), &mut out);
            t.finish(&mut out);
            out
        };
        let text = String::from_utf8_lossy(&whole);
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        let chunks = chunks_of(&whole);
        let content: String = chunks.iter().filter_map(|c| c.pointer("/choices/0/delta/content")?.as_str()).collect();
        assert_eq!(content, "Checking");
        let args: String = chunks
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0/function/arguments")?.as_str())
            .collect();
        assert_eq!(args, "{\"city\":\"Paris\"}");
        assert!(chunks.iter().any(|c| c.pointer("/choices/0/finish_reason") == Some(&json!("tool_calls"))));
        let usage = chunks.iter().find_map(|c| c.get("usage")).unwrap();
        assert_eq!((usage["prompt_tokens"].as_u64(), usage["completion_tokens"].as_u64()), (Some(11), Some(6)));
        // Byte by byte gives the same stream.
        let mut t = StreamTranslator::new(ApiFormat::Anthropic, ApiFormat::OpenAi, ctx(true)).unwrap();
        let mut split = Vec::new();
        for byte in ANTHROPIC_TOOL_STREAM.as_bytes() {
            t.feed(std::slice::from_ref(byte), &mut split);
        }
        t.finish(&mut split);
        assert_eq!(split, whole);
    }

    #[test]
    fn a_text_chunk_written_straight_out_is_the_chunk_the_json_tree_writes() {
        let writer = ChatWriter { ctx: ctx(false), model: "claude \"q\"".into(), started: true, usage: None };
        let text = "line\nwith \"quotes\" and \u{1F600}";
        let mut fast = Vec::new();
        writer.text_chunk(text, &mut fast);
        let mut slow = Vec::new();
        data_line(&mut slow, &writer.chunk(json!({ "content": text }), None));
        assert_eq!(chunks_of(&fast), chunks_of(&slow));
        assert!(fast.ends_with(b"\n\n") && fast.starts_with(b"data: {"));
    }

    #[test]
    fn a_chat_stream_reads_as_anthropic_events_with_the_providers_usage_at_the_end() {
        let stream = concat!(
            "data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi \"}}]}\n\n",
            "data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"there\"}}]}\n\n",
            "data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        );
        let mut t = StreamTranslator::new(ApiFormat::OpenAi, ApiFormat::Anthropic, ctx(false)).unwrap();
        let mut out = Vec::new();
        t.feed(stream.as_bytes(), &mut out);
        t.finish(&mut out);
        let events = chunks_of(&out);
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let delta = &events[5];
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], 2);
        assert_eq!(delta["usage"]["input_tokens"], 14);
    }

    #[test]
    fn an_anthropic_stream_reads_as_responses_events_ending_in_a_completed_response() {
        let mut t = StreamTranslator::new(ApiFormat::Anthropic, ApiFormat::Responses, ctx(false)).unwrap();
        let mut out = Vec::new();
        t.feed(ANTHROPIC_TOOL_STREAM.as_bytes(), &mut out);
        t.finish(&mut out);
        let events = chunks_of(&out);
        let sequence: Vec<u64> = events.iter().filter_map(|e| e["sequence_number"].as_u64()).collect();
        assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.completed");
        let output = last["response"]["output"].as_array().unwrap();
        assert_eq!(output[0]["content"][0]["text"], "Checking");
        assert_eq!(output[1]["type"], "function_call");
        assert_eq!(output[1]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(last["response"]["usage"]["output_tokens"], 6);
    }

    #[test]
    fn a_stream_cut_before_its_end_is_left_open_for_the_hosts_error_event() {
        let cut = &ANTHROPIC_TOOL_STREAM[..ANTHROPIC_TOOL_STREAM.find("event: message_delta").unwrap()];
        let mut t = StreamTranslator::new(ApiFormat::Anthropic, ApiFormat::OpenAi, ctx(true)).unwrap();
        let mut out = Vec::new();
        t.feed(cut.as_bytes(), &mut out);
        t.finish(&mut out);
        assert!(!String::from_utf8_lossy(&out).contains("[DONE]"));
    }
}
