//! Replaying a cached non-streamed response as a stream.

use serde_json::{Map, Value};

use super::usage::{ANTHROPIC_INPUT, ANTHROPIC_OUTPUT};
use super::{ResponseError, carries};
use crate::api::ApiFormat;

/// Renders a cached non-streamed response body as a complete SSE stream that
/// the official OpenAI / Anthropic SDKs accept.
///
/// OpenAI: `chat.completion.chunk` events (a role delta, a content delta, a
/// finish-reason chunk per choice; with `include_usage`, every chunk carries
/// `"usage": null` and a last `choices: []` chunk carries the usage, as the
/// API does), then `data: [DONE]`.
///
/// Anthropic: `message_start` (usage with input counts, `output_tokens` 0),
/// `content_block_start` / `content_block_delta` / `content_block_stop` per
/// text block, `message_delta` with the stop reason and `output_tokens`,
/// `message_stop`, each with its `event:` line. `include_usage` does not
/// apply: Anthropic streams always carry usage.
///
/// Only text can be replayed: tool calls, non-text content blocks,
/// citations, logprobs and the like are [`ResponseError::NotReplayable`];
/// a body without choices/content or without a finish/stop reason is
/// [`ResponseError::UnexpectedShape`].
pub fn replay_as_sse(api: ApiFormat, response: &Value, include_usage: bool) -> Result<Vec<u8>, ResponseError> {
    let obj = response.as_object().ok_or(ResponseError::NotAnObject)?;
    match api {
        ApiFormat::OpenAi => replay_openai(obj, include_usage),
        ApiFormat::Anthropic => replay_anthropic(obj),
        ApiFormat::Embeddings => Err(not_replayable("embeddings are not streamed")),
        ApiFormat::Responses => replay_responses(obj),
    }
}

/// A completed Responses API answer as the event stream the API sends:
/// `response.created`, `response.in_progress`, then per message item its
/// `output_item.added`, per text part `content_part.added`, one
/// `output_text.delta`, `output_text.done` and `content_part.done`, then
/// `output_item.done`; last `response.completed` with the whole response.
/// Every event carries its `type` and a `sequence_number` from 0. Only
/// message items with `output_text` parts can be replayed.
fn replay_responses(obj: &Map<String, Value>) -> Result<Vec<u8>, ResponseError> {
    if obj.get("status").and_then(Value::as_str) != Some("completed") {
        return Err(not_replayable("a Responses API answer that is not completed"));
    }
    let items = obj.get("output").and_then(Value::as_array).ok_or_else(|| shape("output is missing"))?;
    let mut events: Vec<Value> = Vec::new();
    let mut pending = obj.clone();
    pending.insert("status".to_owned(), Value::from("in_progress"));
    pending.insert("output".to_owned(), Value::Array(Vec::new()));
    pending.insert("usage".to_owned(), Value::Null);
    events.push(object([("type", "response.created".into()), ("response", Value::Object(pending.clone()))]));
    events.push(object([("type", "response.in_progress".into()), ("response", Value::Object(pending))]));
    for (output_index, item) in items.iter().enumerate() {
        let item_obj = item.as_object().ok_or_else(|| shape(format!("output[{output_index}] is not an object")))?;
        if item_obj.get("type").and_then(Value::as_str) != Some("message") {
            return Err(not_replayable("an output item other than a message"));
        }
        let item_id = item_obj.get("id").cloned().unwrap_or(Value::Null);
        let parts = item_obj.get("content").and_then(Value::as_array).ok_or_else(|| shape("content is missing"))?;
        let mut started = item_obj.clone();
        started.insert("status".to_owned(), Value::from("in_progress"));
        started.insert("content".to_owned(), Value::Array(Vec::new()));
        events.push(object([
            ("type", "response.output_item.added".into()),
            ("output_index", output_index.into()),
            ("item", Value::Object(started)),
        ]));
        for (content_index, part) in parts.iter().enumerate() {
            if part.get("type").and_then(Value::as_str) != Some("output_text") {
                return Err(not_replayable("a content part other than output_text"));
            }
            let text = part.get("text").and_then(Value::as_str).ok_or_else(|| shape("output_text without text"))?;
            let at = |kind: &str, extra: [(&str, Value); 2]| {
                let mut event = object([
                    ("type", kind.into()),
                    ("item_id", item_id.clone()),
                    ("output_index", output_index.into()),
                    ("content_index", content_index.into()),
                ]);
                if let Value::Object(map) = &mut event {
                    for (key, value) in extra {
                        map.insert(key.to_owned(), value);
                    }
                }
                event
            };
            let empty = object([
                ("type", "output_text".into()),
                ("text", "".into()),
                ("annotations", Value::Array(Vec::new())),
                ("logprobs", Value::Array(Vec::new())),
            ]);
            events.push(at("response.content_part.added", [("part", empty), ("logprobs", Value::Null)]));
            events.push(at(
                "response.output_text.delta",
                [("delta", text.into()), ("logprobs", Value::Array(Vec::new()))],
            ));
            events
                .push(at("response.output_text.done", [("text", text.into()), ("logprobs", Value::Array(Vec::new()))]));
            events.push(at("response.content_part.done", [("part", part.clone()), ("logprobs", Value::Null)]));
        }
        events.push(object([
            ("type", "response.output_item.done".into()),
            ("output_index", output_index.into()),
            ("item", item.clone()),
        ]));
    }
    events.push(object([("type", "response.completed".into()), ("response", Value::Object(obj.clone()))]));
    let mut out = Vec::new();
    for (sequence_number, mut event) in events.into_iter().enumerate() {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
        if let Value::Object(map) = &mut event {
            // Parts events carry no logprobs of their own.
            if map.get("logprobs") == Some(&Value::Null) {
                map.remove("logprobs");
            }
            map.insert("sequence_number".to_owned(), sequence_number.into());
        }
        write_event(&mut out, Some(&kind), &event)?;
    }
    Ok(out)
}

fn shape(message: impl Into<String>) -> ResponseError {
    ResponseError::UnexpectedShape(message.into())
}

fn not_replayable(message: impl Into<String>) -> ResponseError {
    ResponseError::NotReplayable(message.into())
}

/// Appends one event: an optional `event:` line, a `data:` line, a blank line.
/// Serialised JSON never contains a raw newline, so one `data:` line suffices.
fn write_event(out: &mut Vec<u8>, name: Option<&str>, data: &Value) -> Result<(), ResponseError> {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *out, data).map_err(|e| ResponseError::Serialize(e.to_string()))?;
    out.extend_from_slice(b"\n\n");
    Ok(())
}

fn object<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Object(entries.into_iter().map(|(key, value)| (key.to_owned(), value)).collect())
}

/// One OpenAI choice, checked and ready to replay.
struct OpenAiChoice<'a> {
    index: Value,
    role: &'a str,
    content: Option<&'a str>,
    refusal: Option<&'a str>,
    finish_reason: &'a str,
}

fn openai_choice(position: usize, choice: &Value) -> Result<OpenAiChoice<'_>, ResponseError> {
    let choice = choice.as_object().ok_or_else(|| shape(format!("choices[{position}] is not an object")))?;
    let message = choice
        .get("message")
        .and_then(Value::as_object)
        .ok_or_else(|| shape(format!("choices[{position}].message is missing")))?;
    if carries(choice.get("logprobs")) {
        return Err(not_replayable("logprobs"));
    }
    for (key, value) in message {
        match key.as_str() {
            "role" | "content" | "refusal" => {}
            "tool_calls" | "function_call" if carries(Some(value)) => {
                return Err(not_replayable("tool calls"));
            }
            other if carries(Some(value)) => {
                return Err(not_replayable(format!("message field `{other}`")));
            }
            _ => {}
        }
    }
    let text = |key: &str| match message.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(not_replayable(format!("non-text message `{key}`"))),
    };
    Ok(OpenAiChoice {
        index: choice.get("index").filter(|i| i.is_u64()).cloned().unwrap_or_else(|| Value::from(position)),
        role: message.get("role").and_then(Value::as_str).unwrap_or("assistant"),
        content: text("content")?,
        refusal: text("refusal")?,
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .ok_or_else(|| shape(format!("choices[{position}] has no finish_reason")))?,
    })
}

fn replay_openai(obj: &Map<String, Value>, include_usage: bool) -> Result<Vec<u8>, ResponseError> {
    let choices =
        obj.get("choices").and_then(Value::as_array).ok_or_else(|| shape("`choices` is missing or not an array"))?;
    if choices.is_empty() {
        return Err(shape("`choices` is empty"));
    }
    let choices = choices
        .iter()
        .enumerate()
        .map(|(position, choice)| openai_choice(position, choice))
        .collect::<Result<Vec<_>, _>>()?;

    let mut base = Map::new();
    let string_or_empty =
        |key: &str| obj.get(key).filter(|v| v.is_string()).cloned().unwrap_or_else(|| Value::from(""));
    base.insert("id".to_owned(), string_or_empty("id"));
    base.insert("object".to_owned(), Value::from("chat.completion.chunk"));
    base.insert(
        "created".to_owned(),
        obj.get("created").filter(|v| v.is_number()).cloned().unwrap_or_else(|| Value::from(0)),
    );
    base.insert("model".to_owned(), string_or_empty("model"));
    for key in ["service_tier", "system_fingerprint"] {
        if let Some(value) = obj.get(key).filter(|v| v.is_string()) {
            base.insert(key.to_owned(), value.clone());
        }
    }
    let chunk = |choices: Vec<Value>, usage: Value| {
        let mut chunk = base.clone();
        chunk.insert("choices".to_owned(), Value::Array(choices));
        if include_usage {
            chunk.insert("usage".to_owned(), usage);
        }
        Value::Object(chunk)
    };
    let delta_chunk = |index: &Value, delta: Value, finish_reason: Value| {
        chunk(
            vec![object([
                ("index", index.clone()),
                ("delta", delta),
                ("logprobs", Value::Null),
                ("finish_reason", finish_reason),
            ])],
            Value::Null,
        )
    };

    let mut out = Vec::new();
    for choice in &choices {
        let first_content = if choice.content.is_some() { Value::from("") } else { Value::Null };
        let role = object([("role", Value::from(choice.role)), ("content", first_content)]);
        write_event(&mut out, None, &delta_chunk(&choice.index, role, Value::Null))?;
        if let Some(content) = choice.content.filter(|c| !c.is_empty()) {
            let delta = object([("content", Value::from(content))]);
            write_event(&mut out, None, &delta_chunk(&choice.index, delta, Value::Null))?;
        }
        if let Some(refusal) = choice.refusal {
            let delta = object([("refusal", Value::from(refusal))]);
            write_event(&mut out, None, &delta_chunk(&choice.index, delta, Value::Null))?;
        }
        let finish = Value::from(choice.finish_reason);
        write_event(&mut out, None, &delta_chunk(&choice.index, object([]), finish))?;
    }
    if include_usage && let Some(usage) = obj.get("usage").filter(|u| u.is_object()) {
        write_event(&mut out, None, &chunk(Vec::new(), usage.clone()))?;
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    Ok(out)
}

fn anthropic_text(position: usize, block: &Value) -> Result<&str, ResponseError> {
    let block = block.as_object().ok_or_else(|| shape(format!("content[{position}] is not an object")))?;
    match block.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some(other) => return Err(not_replayable(format!("`{other}` content block"))),
        None => return Err(shape(format!("content[{position}] has no type"))),
    }
    if carries(block.get("citations")) {
        return Err(not_replayable("citations"));
    }
    block.get("text").and_then(Value::as_str).ok_or_else(|| shape(format!("content[{position}] has no text")))
}

fn replay_anthropic(obj: &Map<String, Value>) -> Result<Vec<u8>, ResponseError> {
    let texts = obj
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("`content` is missing or not an array"))?
        .iter()
        .enumerate()
        .map(|(position, block)| anthropic_text(position, block))
        .collect::<Result<Vec<_>, _>>()?;
    let stop_reason = obj.get("stop_reason").and_then(Value::as_str).ok_or_else(|| shape("no `stop_reason`"))?;
    let stop_sequence = obj.get("stop_sequence").cloned().unwrap_or(Value::Null);

    let usage = obj.get("usage").and_then(Value::as_object).cloned().unwrap_or_default();
    let output_tokens = usage.get(ANTHROPIC_OUTPUT).filter(|v| !v.is_null()).cloned().unwrap_or_else(|| Value::from(0));
    // The start carries the prompt counts; output is counted up in the delta.
    let mut start_usage = usage;
    if !start_usage.contains_key(ANTHROPIC_INPUT) {
        start_usage.insert(ANTHROPIC_INPUT.to_owned(), Value::from(0));
    }
    start_usage.insert(ANTHROPIC_OUTPUT.to_owned(), Value::from(0));

    let mut message = obj.clone();
    message.entry("type").or_insert_with(|| Value::from("message"));
    message.entry("role").or_insert_with(|| Value::from("assistant"));
    message.insert("content".to_owned(), Value::Array(Vec::new()));
    message.insert("stop_reason".to_owned(), Value::Null);
    message.insert("stop_sequence".to_owned(), Value::Null);
    message.insert("usage".to_owned(), Value::Object(start_usage));

    let mut out = Vec::new();
    let start = object([("type", Value::from("message_start")), ("message", Value::Object(message))]);
    write_event(&mut out, Some("message_start"), &start)?;
    for (index, text) in texts.into_iter().enumerate() {
        let block_start = object([
            ("type", Value::from("content_block_start")),
            ("index", Value::from(index)),
            ("content_block", object([("type", Value::from("text")), ("text", Value::from(""))])),
        ]);
        write_event(&mut out, Some("content_block_start"), &block_start)?;
        if !text.is_empty() {
            let delta = object([
                ("type", Value::from("content_block_delta")),
                ("index", Value::from(index)),
                ("delta", object([("type", Value::from("text_delta")), ("text", Value::from(text))])),
            ]);
            write_event(&mut out, Some("content_block_delta"), &delta)?;
        }
        let block_stop = object([("type", Value::from("content_block_stop")), ("index", Value::from(index))]);
        write_event(&mut out, Some("content_block_stop"), &block_stop)?;
    }
    let delta = object([
        ("type", Value::from("message_delta")),
        ("delta", object([("stop_reason", Value::from(stop_reason)), ("stop_sequence", stop_sequence)])),
        ("usage", object([(ANTHROPIC_OUTPUT, output_tokens)])),
    ]);
    write_event(&mut out, Some("message_delta"), &delta)?;
    let stop = object([("type", Value::from("message_stop"))]);
    write_event(&mut out, Some("message_stop"), &stop)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::observe::tests::observe;
    use super::super::sse::SseParser;
    use super::super::sse::tests::{ANTHROPIC_STREAM, OPENAI_STREAM};
    use super::super::{ResponseSummary, summarize_json};
    use super::*;
    use serde_json::json;

    fn assemble(api: ApiFormat, stream: &[u8]) -> (ResponseSummary, Value) {
        let (out, outcome) = observe(api, false, &[stream]);
        assert_eq!(out, stream);
        (outcome.summary, outcome.assembled.expect("assembled"))
    }

    fn events(stream: &[u8]) -> Vec<(Option<String>, String)> {
        let mut parser = SseParser::new(1 << 20);
        let mut out = Vec::new();
        parser.push(stream, &mut out);
        parser.finish(&mut out);
        out.into_iter().map(|e| (e.event, e.data)).collect()
    }

    #[test]
    fn an_assembled_openai_stream_replays_and_reassembles_to_the_same_body() {
        let (summary, original) = assemble(ApiFormat::OpenAi, OPENAI_STREAM.as_bytes());
        let replayed = replay_as_sse(ApiFormat::OpenAi, &original, true).unwrap();
        let (again_summary, again) = assemble(ApiFormat::OpenAi, &replayed);
        assert_eq!(again, original);
        assert_eq!(again_summary, summary);
        // Byte-split replays too.
        for cut in (0..replayed.len()).step_by(13) {
            let (a, b) = replayed.split_at(cut);
            assert_eq!(observe(ApiFormat::OpenAi, false, &[a, b]).1.assembled, Some(original.clone()));
        }
    }

    #[test]
    fn an_assembled_anthropic_stream_replays_and_reassembles_to_the_same_body() {
        let (summary, original) = assemble(ApiFormat::Anthropic, ANTHROPIC_STREAM.as_bytes());
        for include_usage in [true, false] {
            let replayed = replay_as_sse(ApiFormat::Anthropic, &original, include_usage).unwrap();
            let (again_summary, again) = assemble(ApiFormat::Anthropic, &replayed);
            assert_eq!(again, original);
            assert_eq!(again_summary, summary);
        }
    }

    #[test]
    fn an_openai_replay_without_usage_has_no_usage_chunk() {
        let (_, original) = assemble(ApiFormat::OpenAi, OPENAI_STREAM.as_bytes());
        let replayed = replay_as_sse(ApiFormat::OpenAi, &original, false).unwrap();
        let (summary, again) = assemble(ApiFormat::OpenAi, &replayed);
        assert_eq!(summary.usage, None);
        assert!(summary.complete);
        let mut expected = original.clone();
        expected.as_object_mut().unwrap().remove("usage");
        assert_eq!(again, expected);
        for (_, data) in events(&replayed) {
            assert!(!data.contains("usage"), "{data}");
        }
    }

    #[test]
    fn a_real_non_streamed_openai_body_round_trips_its_content_finish_reason_and_usage() {
        let body = json!({
            "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion",
            "created": 1741569952, "model": "gpt-4.1-2025-04-14",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Line one\nline \"two\" ✓",
                    "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "length"},
                {"index": 1, "message": {"role": "assistant", "content": "",
                    "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0}},
            "service_tier": "default", "system_fingerprint": null
        });
        let replayed = replay_as_sse(ApiFormat::OpenAi, &body, true).unwrap();
        let (summary, again) = assemble(ApiFormat::OpenAi, &replayed);
        let bytes = serde_json::to_vec(&body).unwrap();
        assert_eq!(summary, summarize_json(ApiFormat::OpenAi, &bytes).unwrap());
        for i in 0..2 {
            assert_eq!(again["choices"][i]["message"]["content"], body["choices"][i]["message"]["content"]);
            assert_eq!(again["choices"][i]["finish_reason"], body["choices"][i]["finish_reason"]);
            assert_eq!(again["choices"][i]["index"], body["choices"][i]["index"]);
        }
        for key in ["id", "created", "model", "usage", "service_tier"] {
            assert_eq!(again[key], body[key], "{key}");
        }
    }

    #[test]
    fn a_real_non_streamed_anthropic_body_round_trips_exactly() {
        let body = json!({
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
            "model": "claude-opus-4-1-20250805",
            "content": [{"type": "text", "text": "First\n\"block\" — ✓"}, {"type": "text", "text": ""},
                {"type": "text", "text": "third"}],
            "stop_reason": "stop_sequence", "stop_sequence": "\n\nHuman:",
            "usage": {"input_tokens": 2095, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0, "output_tokens": 503, "service_tier": "standard"}
        });
        let replayed = replay_as_sse(ApiFormat::Anthropic, &body, false).unwrap();
        let (summary, again) = assemble(ApiFormat::Anthropic, &replayed);
        assert_eq!(again, body);
        let bytes = serde_json::to_vec(&body).unwrap();
        assert_eq!(summary, summarize_json(ApiFormat::Anthropic, &bytes).unwrap());
    }

    #[test]
    fn openai_replay_chunks_look_like_the_api_s() {
        let (_, original) = assemble(ApiFormat::OpenAi, OPENAI_STREAM.as_bytes());
        let replayed = replay_as_sse(ApiFormat::OpenAi, &original, true).unwrap();
        assert!(replayed.ends_with(b"\n\ndata: [DONE]\n\n"));
        let events = events(&replayed);
        let (last, chunks) = events.split_last().unwrap();
        assert_eq!(last, &(None, "[DONE]".to_owned()));
        let chunks: Vec<Value> = chunks
            .iter()
            .map(|(name, data)| {
                assert_eq!(name, &None);
                serde_json::from_str(data).unwrap()
            })
            .collect();
        assert_eq!(chunks.len(), 4);
        for chunk in &chunks {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["id"], original["id"]);
            assert_eq!(chunk["created"], original["created"]);
            assert_eq!(chunk["model"], original["model"]);
            assert_eq!(chunk["system_fingerprint"], original["system_fingerprint"]);
        }
        assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(chunks[0]["usage"], Value::Null);
        assert!(chunks[0].as_object().unwrap().contains_key("usage"));
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "héllo 😀 世界");
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[2]["choices"][0]["delta"], json!({}));
        assert_eq!(chunks[3]["choices"], json!([]));
        assert_eq!(chunks[3]["usage"], original["usage"]);
    }

    #[test]
    fn anthropic_replay_events_are_named_after_their_types() {
        let (_, original) = assemble(ApiFormat::Anthropic, ANTHROPIC_STREAM.as_bytes());
        let replayed = replay_as_sse(ApiFormat::Anthropic, &original, true).unwrap();
        let events = events(&replayed);
        let mut names = Vec::new();
        for (name, data) in &events {
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(name.as_deref(), data["type"].as_str());
            names.push(name.clone().unwrap());
        }
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let start: Value = serde_json::from_str(&events[0].1).unwrap();
        assert_eq!(start["message"]["content"], json!([]));
        assert_eq!(start["message"]["stop_reason"], Value::Null);
        assert_eq!(start["message"]["usage"]["input_tokens"], 25);
        assert_eq!(start["message"]["usage"]["output_tokens"], 0);
        let delta: Value = serde_json::from_str(&events[4].1).unwrap();
        assert_eq!(
            delta,
            json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": 15}})
        );
    }

    #[test]
    fn a_refusal_replays_as_a_refusal_delta() {
        let body = json!({"id": "c", "created": 1, "model": "m", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                "refusal": "I can't help with that."}, "logprobs": null, "finish_reason": "stop"}]});
        let replayed = replay_as_sse(ApiFormat::OpenAi, &body, false).unwrap();
        let (_, again) = assemble(ApiFormat::OpenAi, &replayed);
        assert_eq!(again["choices"][0]["message"], body["choices"][0]["message"]);
    }

    #[test]
    fn tool_calls_and_non_text_content_are_not_replayable() {
        let openai_tools = json!({"choices": [{"index": 0, "message": {"role": "assistant",
            "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]});
        assert_eq!(
            replay_as_sse(ApiFormat::OpenAi, &openai_tools, true),
            Err(ResponseError::NotReplayable("tool calls".to_owned()))
        );
        let openai_logprobs = json!({"choices": [{"message": {"content": "x"},
            "logprobs": {"content": [{"token": "x", "logprob": 0.0}]}, "finish_reason": "stop"}]});
        assert!(matches!(
            replay_as_sse(ApiFormat::OpenAi, &openai_logprobs, true),
            Err(ResponseError::NotReplayable(_))
        ));
        let openai_audio = json!({"choices": [{"message": {"content": null,
            "audio": {"id": "a", "data": "..."}}, "finish_reason": "stop"}]});
        assert!(matches!(replay_as_sse(ApiFormat::OpenAi, &openai_audio, true), Err(ResponseError::NotReplayable(_))));
        let openai_parts = json!({"choices": [{"message": {"content": [{"type": "text", "text": "x"}]},
            "finish_reason": "stop"}]});
        assert!(matches!(replay_as_sse(ApiFormat::OpenAi, &openai_parts, true), Err(ResponseError::NotReplayable(_))));
        let anthropic_tools = json!({"content": [{"type": "text", "text": "hi"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}], "stop_reason": "tool_use"});
        assert_eq!(
            replay_as_sse(ApiFormat::Anthropic, &anthropic_tools, true),
            Err(ResponseError::NotReplayable("`tool_use` content block".to_owned()))
        );
        let anthropic_thinking = json!({"content": [{"type": "thinking", "thinking": "hmm",
            "signature": "s"}, {"type": "text", "text": "hi"}], "stop_reason": "end_turn"});
        assert!(matches!(
            replay_as_sse(ApiFormat::Anthropic, &anthropic_thinking, true),
            Err(ResponseError::NotReplayable(_))
        ));
        let anthropic_citations = json!({"content": [{"type": "text", "text": "hi",
            "citations": [{"type": "char_location"}]}], "stop_reason": "end_turn"});
        assert!(matches!(
            replay_as_sse(ApiFormat::Anthropic, &anthropic_citations, true),
            Err(ResponseError::NotReplayable(_))
        ));
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for api in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
            for body in [json!(null), json!([]), json!("x"), json!(3)] {
                assert_eq!(replay_as_sse(api, &body, true), Err(ResponseError::NotAnObject));
            }
            for body in [
                json!({}),
                json!({"choices": [], "content": []}),
                json!({"choices": "x", "content": "x"}),
                json!({"choices": [null], "content": [null]}),
                json!({"choices": [{"message": {"content": "x"}}], "content": [{"type": "text", "text": "x"}]}),
                json!({"choices": [{"finish_reason": "stop"}], "content": [{"type": "text"}], "stop_reason": "end_turn"}),
                json!({"content": [{"text": "x"}], "stop_reason": "end_turn"}),
            ] {
                assert!(
                    matches!(replay_as_sse(api, &body, true), Err(ResponseError::UnexpectedShape(_))),
                    "{api:?} {body}"
                );
            }
        }
    }

    #[test]
    fn a_minimal_body_replays_with_defaults_the_sdks_accept() {
        let body = json!({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]});
        let replayed = replay_as_sse(ApiFormat::OpenAi, &body, true).unwrap();
        let (summary, again) = assemble(ApiFormat::OpenAi, &replayed);
        assert!(summary.complete);
        assert_eq!(again["choices"][0]["message"], json!({"role": "assistant", "content": "hi"}));
        assert_eq!(again["id"], "");
        assert_eq!(again["created"], 0);

        let body = json!({"content": [], "stop_reason": "max_tokens"});
        let replayed = replay_as_sse(ApiFormat::Anthropic, &body, true).unwrap();
        let (summary, again) = assemble(ApiFormat::Anthropic, &replayed);
        assert!(summary.complete);
        assert_eq!(summary.usage.map(|u| u.input_tokens), Some(0));
        assert_eq!(again["content"], json!([]));
        assert_eq!(again["type"], "message");
        assert_eq!(again["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
    }
}
