//! An incremental Server-Sent-Events parser.
//!
//! Follows the WHATWG "event stream interpretation" rules: lines end in
//! `\n`, `\r\n` or `\r`; a leading byte-order mark is ignored; lines starting
//! with `:` are comments; `field: value` loses one space after the colon;
//! `data` lines are joined with `\n`; `event` names the event; a blank line
//! dispatches the event, unless no `data` line was seen. Unlike a browser,
//! [`SseParser::finish`] also dispatches a last event that was not followed by
//! a blank line: an upstream that closes right after its final `data:` line
//! still delivered it.
//!
//! Chunks may be split anywhere, including inside `\r\n` and inside a UTF-8
//! sequence: bytes are collected per line and only decoded once the line is
//! complete (invalid UTF-8 becomes U+FFFD, as in a browser).

use std::mem;

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if the event had a non-empty one.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Where a block of raw bytes ended, for callers that forward raw bytes.
#[derive(Debug, PartialEq)]
pub(crate) enum Boundary {
    /// A blank line ended a block (the bytes since the previous boundary);
    /// it dispatched this event, if any.
    Block(Option<SseEvent>),
    /// The `\n` of a `\r\n` whose `\r` ended the previous block in the
    /// previous chunk: these bytes belong with that block.
    CrLfTail,
}

/// What a `\r` at the very end of a chunk left open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingCr {
    No,
    /// It ended a non-blank line: a following `\n` is part of the same block.
    InBlock,
    /// It ended a block: a following `\n` belongs to that finished block.
    AfterBlock,
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Incremental SSE parser; see the module docs for the rules.
///
/// Memory is bounded by `max_event_bytes`: once the raw bytes of one event
/// (everything since the previous blank line) exceed it, the event is
/// dropped, [`SseParser::overflowed`] turns true, and the rest of it is
/// skipped without being stored.
#[derive(Clone, Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// Bytes of the current line, without its terminator (not kept while
    /// discarding).
    line: Vec<u8>,
    /// Length of the current line, counted even while discarding.
    line_len: usize,
    event_type: String,
    data: String,
    /// Raw bytes of the current block so far.
    block_bytes: usize,
    /// The current block went over the limit; skip to the next blank line.
    discarding: bool,
    pending_cr: PendingCr,
    /// How many bytes of a leading BOM have been matched; `None` once the
    /// start of the stream has been decided.
    bom_matched: Option<usize>,
    overflowed: bool,
}

impl SseParser {
    /// A parser that drops (and flags) any event larger than
    /// `max_event_bytes` raw bytes.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            line: Vec::new(),
            line_len: 0,
            event_type: String::new(),
            data: String::new(),
            block_bytes: 0,
            discarding: false,
            pending_cr: PendingCr::No,
            bom_matched: Some(0),
            overflowed: false,
        }
    }

    /// Feeds the next bytes; appends every event they complete to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        self.push_with(chunk, &mut |_, boundary| {
            if let Boundary::Block(Some(event)) = boundary {
                out.push(event);
            }
        });
    }

    /// End of stream: appends the last event to `out` if it was not followed
    /// by a blank line. The parser then starts afresh (a new stream), except
    /// that [`SseParser::overflowed`] stays set.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if let Some(event) = self.finish_with() {
            out.push(event);
        }
    }

    /// Whether any event was dropped for exceeding the size limit.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Feeds `chunk`, reporting each [`Boundary`] with the offset in `chunk`
    /// just past its last byte. Bytes after the last reported offset belong
    /// to a block not yet finished.
    pub(crate) fn push_with(&mut self, chunk: &[u8], on: &mut impl FnMut(usize, Boundary)) {
        let mut i = 0;
        if !chunk.is_empty() {
            let pending = mem::replace(&mut self.pending_cr, PendingCr::No);
            if chunk.first() == Some(&b'\n') {
                match pending {
                    PendingCr::No => {}
                    PendingCr::InBlock => {
                        self.add_block_bytes(1);
                        i = 1;
                    }
                    PendingCr::AfterBlock => {
                        on(1, Boundary::CrLfTail);
                        i = 1;
                    }
                }
            }
        }
        if let Some(matched) = self.bom_matched {
            let mut matched = matched;
            while let (Some(&byte), Some(&want)) = (chunk.get(i), BOM.get(matched)) {
                if byte != want {
                    break;
                }
                matched += 1;
                i += 1;
            }
            if matched == BOM.len() {
                // A whole BOM: skipped, but its bytes are part of the block.
                self.bom_matched = None;
                self.add_block_bytes(BOM.len());
            } else if i < chunk.len() {
                // Not a BOM after all: what matched is ordinary content.
                self.bom_matched = None;
                self.content(BOM.get(..matched).unwrap_or_default());
            } else {
                self.bom_matched = Some(matched);
                return;
            }
        }
        while let Some(rest) = chunk.get(i..).filter(|r| !r.is_empty()) {
            let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.content(rest);
                break;
            };
            self.content(rest.get(..pos).unwrap_or_default());
            let mut end = i + pos + 1;
            let mut split_crlf = false;
            if rest.get(pos) == Some(&b'\r') {
                match chunk.get(end) {
                    Some(b'\n') => end += 1,
                    Some(_) => {}
                    None => split_crlf = true,
                }
            }
            let blank = self.line_len == 0;
            self.end_line(end - (i + pos), end, on);
            if split_crlf {
                self.pending_cr = if blank { PendingCr::AfterBlock } else { PendingCr::InBlock };
            }
            i = end;
        }
    }

    /// End of stream: the last event if it was not followed by a blank line.
    pub(crate) fn finish_with(&mut self) -> Option<SseEvent> {
        if let Some(matched) = self.bom_matched.take() {
            self.content(BOM.get(..matched).unwrap_or_default());
        }
        if self.line_len > 0 && !self.discarding {
            self.process_line();
        }
        let event = if self.discarding { None } else { self.take_event() };
        let overflowed = self.overflowed;
        *self = Self::new(self.max_event_bytes);
        self.overflowed = overflowed;
        event
    }

    /// Bytes of a line (no terminator in them).
    fn content(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.line_len = self.line_len.saturating_add(bytes.len());
        self.add_block_bytes(bytes.len());
        if !self.discarding {
            self.line.extend_from_slice(bytes);
        }
    }

    fn add_block_bytes(&mut self, n: usize) {
        self.block_bytes = self.block_bytes.saturating_add(n);
        if self.block_bytes > self.max_event_bytes && !self.discarding {
            self.discarding = true;
            self.overflowed = true;
            // Give the memory back, not just the length.
            self.line = Vec::new();
            self.data = String::new();
            self.event_type = String::new();
        }
    }

    /// A line terminator of `term_len` bytes ending at `end` in the chunk.
    fn end_line(&mut self, term_len: usize, end: usize, on: &mut impl FnMut(usize, Boundary)) {
        if self.line_len == 0 {
            let event = if self.discarding { None } else { self.take_event() };
            self.block_bytes = 0;
            self.discarding = false;
            self.data.clear();
            self.event_type.clear();
            on(end, Boundary::Block(event));
        } else {
            self.add_block_bytes(term_len);
            if !self.discarding {
                self.process_line();
            }
            self.line.clear();
            self.line_len = 0;
        }
    }

    /// Interprets the complete line in `self.line`.
    fn process_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => {
                self.event_type.clear();
                self.event_type.push_str(value);
            }
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            // `id` and `retry` matter to reconnecting browsers, not here.
            _ => {}
        }
    }

    /// Dispatch: the event built so far, if it had any `data` line.
    fn take_event(&mut self) -> Option<SseEvent> {
        let event_type = mem::take(&mut self.event_type);
        if self.data.is_empty() {
            return None;
        }
        let mut data = mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        Some(SseEvent { event: (!event_type.is_empty()).then_some(event_type), data })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// A realistic OpenAI stream with `include_usage`, multi-byte text and a
    /// keep-alive comment.
    pub(crate) const OPENAI_STREAM: &str = concat!(
        ": keep-alive\n\n",
        r#"data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":"héllo "},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":"😀 世界"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[],"usage":{"prompt_tokens":1200,"completion_tokens":5,"total_tokens":1205,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
        "\n\n",
        "data: [DONE]\n\n",
    );

    /// A realistic Anthropic stream with prompt caching and multi-byte text.
    pub(crate) const ANTHROPIC_STREAM: &str = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":1,"service_tier":"standard"}}}"#,
        "\n\n",
        "event: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        "\n\n",
        "event: ping\n",
        r#"data: {"type": "ping"}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"héllo "}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"😀 世界"}}"#,
        "\n\n",
        "event: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\n",
        "event: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
        "\n\n",
        "event: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    );

    /// `s` with every `\n` turned into `ending`.
    pub(crate) fn with_line_endings(s: &str, ending: &str) -> String {
        s.replace('\n', ending)
    }

    fn parse_chunks(chunks: &[&[u8]]) -> (Vec<SseEvent>, bool) {
        let mut parser = SseParser::new(1 << 16);
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk, &mut out);
        }
        parser.finish(&mut out);
        (out, parser.overflowed())
    }

    fn parse(s: &str) -> Vec<SseEvent> {
        parse_chunks(&[s.as_bytes()]).0
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent { event: event.map(str::to_owned), data: data.to_owned() }
    }

    #[test]
    fn splitting_a_stream_at_every_byte_offset_yields_the_same_events() {
        for stream in [OPENAI_STREAM, ANTHROPIC_STREAM] {
            for ending in ["\n", "\r\n", "\r"] {
                let text = with_line_endings(stream, ending);
                let bytes = text.as_bytes();
                let whole = parse_chunks(&[bytes]).0;
                assert!(whole.len() >= 6);
                assert!(whole.iter().any(|e| e.data.contains("😀 世界")));
                for cut in 0..=bytes.len() {
                    let (a, b) = bytes.split_at(cut);
                    assert_eq!(parse_chunks(&[a, b]).0, whole, "cut at {cut}, ending {ending:?}");
                }
                for cut in (0..bytes.len()).step_by(7) {
                    let (a, rest) = bytes.split_at(cut);
                    let (b, c) = rest.split_at(rest.len() / 2);
                    assert_eq!(parse_chunks(&[a, b, c]).0, whole);
                }
            }
        }
    }

    #[test]
    fn feeding_one_byte_at_a_time_yields_the_same_events() {
        for stream in [OPENAI_STREAM, ANTHROPIC_STREAM] {
            let text = with_line_endings(stream, "\r\n");
            let bytes = text.as_bytes();
            let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(parse_chunks(&chunks).0, parse_chunks(&[bytes]).0);
        }
    }

    #[test]
    fn anthropic_events_carry_their_event_names() {
        let events = parse(ANTHROPIC_STREAM);
        let names: Vec<Option<&str>> = events.iter().map(|e| e.event.as_deref()).collect();
        assert_eq!(
            names,
            [
                Some("message_start"),
                Some("content_block_start"),
                Some("ping"),
                Some("content_block_delta"),
                Some("content_block_delta"),
                Some("content_block_stop"),
                Some("message_delta"),
                Some("message_stop"),
            ]
        );
    }

    #[test]
    fn data_lines_are_joined_with_newlines_and_one_leading_space_is_stripped() {
        assert_eq!(parse("data:  two spaces\ndata:none\ndata\ndata: \n\n"), [ev(None, " two spaces\nnone\n\n")]);
        assert_eq!(parse("data: a:b: c\n\n"), [ev(None, "a:b: c")]);
    }

    #[test]
    fn comments_ids_retries_and_unknown_fields_are_ignored() {
        assert_eq!(
            parse(": hello\nid: 7\nretry: 1000\nfoo: bar\nDATA: shouting\nevent: x\ndata: y\n\n"),
            [ev(Some("x"), "y")]
        );
    }

    #[test]
    fn blocks_without_data_dispatch_nothing_and_reset_the_event_name() {
        assert_eq!(
            parse("event: lonely\n\n\n\ndata: after\n\nevent:\ndata: unnamed\n\n"),
            [ev(None, "after"), ev(None, "unnamed")]
        );
        assert_eq!(parse("data:\n\n"), [ev(None, "")]);
    }

    #[test]
    fn the_event_name_does_not_leak_into_the_next_event() {
        assert_eq!(parse("event: a\ndata: 1\n\ndata: 2\n\n"), [ev(Some("a"), "1"), ev(None, "2")]);
    }

    #[test]
    fn a_final_event_without_a_blank_line_is_dispatched_only_by_finish() {
        let mut parser = SseParser::new(1024);
        let mut out = Vec::new();
        parser.push(b"data: first\n\ndata: last", &mut out);
        assert_eq!(out, [ev(None, "first")]);
        parser.push(b"\n", &mut out);
        assert_eq!(out.len(), 1);
        parser.finish(&mut out);
        assert_eq!(out, [ev(None, "first"), ev(None, "last")]);
        parser.finish(&mut out);
        assert_eq!(out.len(), 2);
        let mut out = Vec::new();
        parser.push(b"data: unterminated line", &mut out);
        parser.finish(&mut out);
        assert_eq!(out, [ev(None, "unterminated line")]);
    }

    #[test]
    fn lone_carriage_returns_end_lines() {
        assert_eq!(parse("data: a\rdata: b\r\rdata: c\r\n\r\n"), [ev(None, "a\nb"), ev(None, "c")]);
    }

    #[test]
    fn an_event_over_the_limit_is_dropped_and_flagged_and_the_next_one_survives() {
        let big = format!("data: {}\n\ndata: small\n\n", "x".repeat(5000));
        for chunk_size in [1, 7, 100, big.len()] {
            let mut parser = SseParser::new(1000);
            let mut out = Vec::new();
            for chunk in big.as_bytes().chunks(chunk_size) {
                parser.push(chunk, &mut out);
                assert!(parser.line.capacity() <= 2048, "line buffer grew");
                assert!(parser.data.capacity() <= 2048, "data buffer grew");
            }
            parser.finish(&mut out);
            assert_eq!(out, [ev(None, "small")]);
            assert!(parser.overflowed());
        }
        let mut parser = SseParser::new(1000);
        let mut out = Vec::new();
        parser.push(b"data: fine\n\n", &mut out);
        assert!(!parser.overflowed());
    }

    #[test]
    fn many_data_lines_count_towards_the_limit() {
        let many = format!("{}\n", "data: 0123456789\n".repeat(1000));
        let (events, overflowed) = {
            let mut parser = SseParser::new(4096);
            let mut out = Vec::new();
            parser.push(many.as_bytes(), &mut out);
            parser.finish(&mut out);
            (out, parser.overflowed())
        };
        assert!(events.is_empty());
        assert!(overflowed);
    }

    #[test]
    fn a_huge_unterminated_event_is_dropped_at_finish() {
        let mut parser = SseParser::new(100);
        let mut out = Vec::new();
        parser.push("data: ".as_bytes(), &mut out);
        parser.push(&[b'y'; 1000], &mut out);
        parser.finish(&mut out);
        assert!(out.is_empty());
        assert!(parser.overflowed());
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped_even_when_split() {
        let text = "\u{feff}data: x\n\n";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(parse_chunks(&[a, b]).0, [ev(None, "x")], "cut at {cut}");
        }
        // Only at the very start; a partial BOM is content.
        assert_eq!(parse("data: \u{feff}x\n\n"), [ev(None, "\u{feff}x")]);
        assert_eq!(parse_chunks(&[b"\xEF\xBB", b"data: x\n\n"]).0, []);
        assert_eq!(parse_chunks(&[b"\xEF"]).0, []);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(parse_chunks(&[b"data: \xff\xfe ok \xf0\x9f\n\n"]).0, [ev(None, "\u{fffd}\u{fffd} ok \u{fffd}")]);
    }

    #[test]
    fn garbage_bytes_never_panic() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut bytes = Vec::new();
        for _ in 0..20_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            // Bias towards the bytes the parser cares about.
            let b = match (seed >> 59) as u8 {
                0..=3 => b'\n',
                4..=5 => b'\r',
                6..=7 => b':',
                8 => b' ',
                _ => (seed >> 32) as u8,
            };
            bytes.push(b);
        }
        for chunk_size in [1, 3, 64, 4096] {
            let mut parser = SseParser::new(256);
            let mut out = Vec::new();
            for chunk in bytes.chunks(chunk_size) {
                parser.push(chunk, &mut out);
            }
            parser.finish(&mut out);
            assert!(out.iter().all(|e| e.data.len() <= 256));
        }
    }

    #[test]
    fn boundaries_cover_every_byte_of_each_block() {
        let text = with_line_endings("data: a\n\n: c\n\ndata: b\n\n", "\r\n");
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            let mut parser = SseParser::new(1024);
            let mut pieces: Vec<(Vec<u8>, bool)> = Vec::new();
            let mut current = Vec::new();
            for chunk in [a, b] {
                let mut start = 0;
                parser.push_with(chunk, &mut |end, boundary| {
                    let piece = &chunk[start..end];
                    match boundary {
                        Boundary::Block(event) => {
                            current.extend_from_slice(piece);
                            pieces.push((mem::take(&mut current), event.is_some()));
                        }
                        Boundary::CrLfTail => pieces.last_mut().unwrap().0.extend_from_slice(piece),
                    }
                    start = end;
                });
                current.extend_from_slice(&chunk[start..]);
            }
            let expected: Vec<(Vec<u8>, bool)> = vec![
                (b"data: a\r\n\r\n".to_vec(), true),
                (b": c\r\n\r\n".to_vec(), false),
                (b"data: b\r\n\r\n".to_vec(), true),
            ];
            assert_eq!(pieces, expected, "cut at {cut}");
            assert!(current.is_empty());
        }
    }
}
