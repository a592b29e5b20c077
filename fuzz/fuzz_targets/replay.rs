//! The cache replay: a stored entry (or a bare non-streamed answer) turned
//! back into a stream by `replay_as_sse`, as a cache hit on a streamed
//! request is served.
//!
//! Input: `[flags][k][k × u16 cut offsets][bytes]`. flags bit 0: API; bit 1:
//! the client asked for usage (`stream_options.include_usage`). The bytes
//! are read as a cache entry first (`CacheEntry::from_bytes`, as both hosts
//! read the cache), else as a response body.
//!
//! Properties, when a body replays: the stream is one the observer reads as
//! complete, with no tool calls, the body's finish reason and (where the
//! stream carries it) the body's usage (zeros for a body without any); it reads the same however it is
//! chunked (cut where the input says); the body it reassembles replays and
//! reassembles to itself (a fixed point after one normalising round).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::api::ApiFormat;
use tollgate_core::cache::CacheEntry;
use tollgate_core::response::{StreamObserver, StreamOutcome, Usage, replay_as_sse, summarize_json};
use tollgate_fuzz::{api, check_usage, chunks, split_header};

fn observe(api: ApiFormat, chunks: &[&[u8]]) -> (Vec<u8>, StreamOutcome) {
    let mut observer = StreamObserver::new(api, false, 1 << 20);
    let mut out = Vec::new();
    for chunk in chunks {
        observer.feed(chunk, &mut out);
    }
    let outcome = observer.finish(&mut out);
    (out, outcome)
}

fuzz_target!(|data: &[u8]| {
    let Some((flags, cuts, bytes)) = split_header(data) else { return };
    let (api, include_usage) = (api(flags), flags & 2 != 0);
    let body = match CacheEntry::from_bytes(bytes, api, 0) {
        Some(entry) => {
            // What a host wrote reads back as the same entry.
            assert_eq!(CacheEntry::from_bytes(&entry.to_bytes(), api, 0).as_ref(), Some(&entry));
            entry.body
        }
        None => match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(v) => v,
            Err(_) => return,
        },
    };
    let Ok(stream) = replay_as_sse(api, &body, include_usage) else { return };
    let (out, outcome) = observe(api, &[&stream]);
    assert_eq!(out, stream);
    let summary = &outcome.summary;
    check_usage(summary.usage.as_ref());
    assert!(summary.complete, "a replayed stream is complete: {}", String::from_utf8_lossy(&stream));
    assert!(!summary.has_tool_calls);

    let json = summarize_json(api, &serde_json::to_vec(&body).expect("serialises")).expect("an object");
    assert_eq!(summary.finish_reason, json.finish_reason, "finish reason");
    if api == ApiFormat::Anthropic || include_usage {
        match json.usage {
            Some(usage) => assert_eq!(summary.usage, Some(usage), "usage: {}", String::from_utf8_lossy(&stream)),
            // An Anthropic stream always carries usage: zeros stand in for none.
            None => assert!(summary.usage.is_none_or(|u| u == Usage::default()), "usage made up"),
        }
    } else {
        assert_eq!(summary.usage, None, "no usage chunk unless asked");
    }

    let (_, cut) = observe(api, &chunks(&stream, &cuts));
    assert_eq!(cut, outcome, "the replay reads differently cut at {cuts:?}");

    // One round normalises what the stream re-encodes (token counts sent as
    // `-0.0` or `"12"` come back as integers); from then on a body is a fixed
    // point: it replays and reassembles to itself, byte for byte.
    let assembled = outcome.assembled.expect("a replayed stream reassembles");
    let again = replay_as_sse(api, &assembled, include_usage).expect("a reassembled body replays");
    let (_, second) = observe(api, &[&again]);
    assert_eq!(second.summary, outcome.summary, "a second round reads differently");
    let reassembled = second.assembled.expect("a second round reassembles");
    assert!(
        reassembled == assembled,
        "replay is not a fixed point:\n first:  {assembled}\n second: {reassembled}\n stream: {}",
        String::from_utf8_lossy(&again)
    );
});
