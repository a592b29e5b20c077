//! The SSE parser and the streamed-response observer, fed one stream cut
//! into chunks at points taken from the input.
//!
//! Input: `[flags][k][k × u16 cut offsets][stream bytes]` (see the crate
//! docs). flags bit 0: API; bit 1: strip the injected usage chunk; bit 2: a
//! small assembly bound (64 bytes) instead of 1 MiB.
//!
//! Property: the result does not depend on the chunking. The same bytes
//! fed whole, cut where the input says, and (up to 512 bytes) one byte at a time give the
//! same events, the same bytes to the client, the same summary (usage,
//! finish reason, completeness, model, output estimate), the same assembled
//! body for the cache and the same `started`. Without stripping the client
//! gets the upstream bytes unchanged; with it, a subsequence of them. Any
//! usage reported keeps the `Usage` invariant.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::response::{SseEvent, SseParser, StreamObserver, StreamOutcome};
use tollgate_fuzz::{api, bytewise, check_usage, chunks, split_header};

fn events(chunks: &[&[u8]]) -> (Vec<SseEvent>, bool) {
    let mut parser = SseParser::new(4096);
    let mut out = Vec::new();
    for chunk in chunks {
        parser.push(chunk, &mut out);
    }
    parser.finish(&mut out);
    (out, parser.overflowed())
}

fn observe(flags: u8, chunks: &[&[u8]]) -> (Vec<u8>, StreamOutcome, bool, bool) {
    let max_assembled = if flags & 4 != 0 { 64 } else { 1 << 20 };
    let mut observer = StreamObserver::new(api(flags), flags & 2 != 0, max_assembled);
    let mut out = Vec::new();
    for chunk in chunks {
        observer.feed(chunk, &mut out);
    }
    // Settling after a client abort reads the summary before the end.
    let partial = observer.summary();
    let started = observer.started();
    let outcome = observer.finish(&mut out);
    assert!(partial.usage.is_none() || outcome.summary.usage.is_some());
    (out, outcome, started, observer.started())
}

/// `sub` is a subsequence of `all` (what stripping may drop is whole blocks).
fn is_subsequence(sub: &[u8], all: &[u8]) -> bool {
    let mut it = all.iter();
    sub.iter().all(|b| it.any(|a| a == b))
}

fuzz_target!(|data: &[u8]| {
    let Some((flags, cuts, body)) = split_header(data) else { return };
    let whole: [&[u8]; 1] = [body];
    let cut = chunks(body, &cuts);
    // Byte by byte for short streams only: it costs a feed call per byte,
    // and the cut points already reach any split of longer ones.
    let bytes = if body.len() <= 512 { bytewise(body) } else { vec![body] };

    let reference = events(&whole);
    assert_eq!(events(&cut), reference, "SSE events depend on the chunking {cuts:?}");
    assert_eq!(events(&bytes), reference, "SSE events differ fed byte by byte");

    let (out, outcome, started, started_at_end) = observe(flags, &whole);
    check_usage(outcome.summary.usage.as_ref());
    if flags & 2 == 0 {
        assert_eq!(out, body, "without stripping the client gets the bytes unchanged");
    } else {
        assert!(is_subsequence(&out, body), "stripping only removes bytes");
    }
    assert_eq!(started_at_end, !out.is_empty());
    for (name, chunking) in [("cut", &cut), ("bytewise", &bytes)] {
        let (o, oc, s, se) = observe(flags, chunking);
        assert!(o == out, "{name}: client bytes depend on the chunking {cuts:?}");
        assert_eq!(oc.summary, outcome.summary, "{name}: summary depends on the chunking {cuts:?}");
        assert_eq!(oc.assembled, outcome.assembled, "{name}: assembled body depends on the chunking {cuts:?}");
        assert_eq!(se, started_at_end, "{name}");
        // Before `finish`, a chunking may still hold back an unfinished event.
        let _ = (s, started);
    }
});
