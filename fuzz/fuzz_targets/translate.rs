//! Cross-API translation: requests, whole answers and streams.
//!
//! Input: `[flags][k][k × u16 cut offsets][bytes]` (see the crate docs).
//! flags bits 0–1: the request direction (chat → Messages, Messages →
//! chat, Responses → chat, Responses → Messages); bit 2: the provider's
//! stream API (chat or Messages); bits 3–4: the client's (chat, Messages,
//! Responses); bit 5: the chat client asked for the usage chunk.
//!
//! Properties: nothing panics on any body; a translated request is a JSON
//! object with `messages`; a translated answer parses as JSON; a stream's
//! translation does not depend on its chunking (whole, cut where the input
//! says, and up to 512 bytes one byte at a time give the same bytes), and
//! every event it writes is well-formed SSE carrying JSON (or `[DONE]`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_core::api::ApiFormat;
use tollgate_core::translate::{AnswerContext, StreamTranslator, translate_answer, translate_error, translate_request};
use tollgate_fuzz::{bytewise, chunks, split_header};

const DIRECTIONS: [(ApiFormat, ApiFormat); 4] = [
    (ApiFormat::OpenAi, ApiFormat::Anthropic),
    (ApiFormat::Anthropic, ApiFormat::OpenAi),
    (ApiFormat::Responses, ApiFormat::OpenAi),
    (ApiFormat::Responses, ApiFormat::Anthropic),
];

fn context(flags: u8) -> AnswerContext {
    AnswerContext { id_seed: "f".into(), created: 1, prompt_tokens: 7, include_usage: flags & 32 != 0, echo: None }
}

fn stream_apis(flags: u8) -> (ApiFormat, ApiFormat) {
    let provider = if flags & 4 == 0 { ApiFormat::OpenAi } else { ApiFormat::Anthropic };
    let client = match (flags >> 3) & 3 {
        0 => ApiFormat::OpenAi,
        1 => ApiFormat::Anthropic,
        _ => ApiFormat::Responses,
    };
    (provider, client)
}

fn translate_stream(flags: u8, pieces: &[&[u8]]) -> Vec<u8> {
    let (provider, client) = stream_apis(flags);
    let Some(mut translator) = StreamTranslator::new(provider, client, context(flags)) else { return Vec::new() };
    let mut out = Vec::new();
    for piece in pieces {
        translator.feed(piece, &mut out);
    }
    translator.finish(&mut out);
    out
}

fn check_sse(out: &[u8]) {
    let text = std::str::from_utf8(out).expect("translated events are UTF-8");
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let data = block.lines().find_map(|l| l.strip_prefix("data: ")).expect("every event has data");
        if data != "[DONE]" {
            serde_json::from_str::<Value>(data).expect("event data is JSON");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((flags, cuts, body)) = split_header(data) else { return };

    if let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) {
        let (client, provider) = DIRECTIONS[usize::from(flags & 3)];
        if let Ok(translated) = translate_request(client, provider, &request) {
            assert!(translated.get("messages").is_some_and(Value::is_array), "{translated:?}");
        }
    }

    let (provider, client) = stream_apis(flags);
    if let Some(answer) = translate_answer(provider, client, body, &context(flags)) {
        serde_json::from_slice::<Value>(&answer).expect("a translated answer is JSON");
    }
    serde_json::from_slice::<Value>(&translate_error(provider, client, 400, body)).expect("an error is JSON");

    let whole = translate_stream(flags, &[body]);
    check_sse(&whole);
    assert_eq!(translate_stream(flags, &chunks(body, &cuts)), whole, "chunking changed the stream");
    if body.len() <= 512 {
        assert_eq!(translate_stream(flags, &bytewise(body)), whole, "byte-by-byte changed the stream");
    }
});
