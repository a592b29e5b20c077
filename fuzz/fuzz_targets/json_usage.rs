//! The JSON usage observer: `summarize_json` on a non-streamed answer.
//!
//! Hosts hand the core the whole body (the Worker reads it whole, the Envoy
//! filter buffers it to the end), so the chunking a host received it in
//! cannot matter; what must not matter either is its encoding. Input:
//! `[flags][body]`, flags bit 0: API.
//!
//! Properties: the summary depends on the JSON value, not on its bytes: a
//! leading byte-order mark, and the body re-serialised compactly and
//! pretty-printed, give the same summary (or the same error kind). Any
//! usage reported keeps the `Usage` invariant. Only non-JSON and non-object
//! bodies are errors.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::response::{ResponseError, summarize_json};
use tollgate_fuzz::{api, check_usage};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else { return };
    let api = api(flags);
    let summary = summarize_json(api, body);
    // One BOM is skipped; a second one would be part of the body.
    let bom_free = !body.starts_with(b"\xEF\xBB\xBF");
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(body);
    let bom = summarize_json(api, &with_bom);
    match (&summary, &bom) {
        _ if !bom_free => {}
        (Ok(a), Ok(b)) => assert_eq!(a, b, "a BOM changed the summary"),
        (Err(ResponseError::InvalidJson(_)), Err(ResponseError::InvalidJson(_))) => {}
        (a, b) => assert_eq!(a, b, "a BOM changed the outcome"),
    }
    let Ok(summary) = summary else { return };
    check_usage(summary.usage.as_ref());
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let value: serde_json::Value = serde_json::from_slice(body).expect("summarised, so it parses");
    for again in [serde_json::to_vec(&value), serde_json::to_vec_pretty(&value)] {
        let again = again.expect("a value serialises");
        assert_eq!(summarize_json(api, &again).as_ref(), Ok(&summary), "the summary depends on the bytes");
    }
});
