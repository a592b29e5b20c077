//! Helpers shared by the fuzz targets: how a target's input is laid out,
//! and the fixed tenant the planning target routes for.
//!
//! Inputs that need more than the bytes under test start with a small
//! header, so the seeds in `fuzz/corpus/<target>/` are the test vectors'
//! bytes behind a few header bytes (`scripts/fuzz-seeds` writes them):
//!
//! - `flags`: one byte of switches (the API, stripping, ...);
//! - `splits`: a count byte `k` (taken modulo [`MAX_SPLITS`] + 1), then `k`
//!   little-endian `u16` offsets: where the body is cut into chunks (each
//!   taken modulo the body's length + 1, then sorted).

use tollgate_core::api::ApiFormat;

/// Most cut points one input can name.
pub const MAX_SPLITS: usize = 16;

/// `flags` bit 0: the API.
pub fn api(flags: u8) -> ApiFormat {
    if flags & 1 == 0 { ApiFormat::OpenAi } else { ApiFormat::Anthropic }
}

/// `[flags][k][k × u16 LE][body]` → (flags, raw cut offsets, body).
/// `None` when the input is too short for its own header.
pub fn split_header(data: &[u8]) -> Option<(u8, Vec<u16>, &[u8])> {
    let (&flags, rest) = data.split_first()?;
    let (&k, rest) = rest.split_first()?;
    let k = usize::from(k) % (MAX_SPLITS + 1);
    if rest.len() < 2 * k {
        return None;
    }
    let (cuts, body) = rest.split_at(2 * k);
    let cuts = cuts.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    Some((flags, cuts, body))
}

/// `body` cut at `cuts` (each modulo `body.len() + 1`), in order; empty
/// chunks included, since a host can be handed an empty chunk too.
pub fn chunks<'a>(body: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|&c| usize::from(c) % (body.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for end in at {
        out.push(&body[start..end]);
        start = end;
    }
    out.push(&body[start..]);
    out
}

/// `body` one byte at a time: the finest chunking there is.
pub fn bytewise(body: &[u8]) -> Vec<&[u8]> {
    body.chunks(1).collect()
}

/// The usage invariant documented on [`tollgate_core::response::Usage`]:
/// cached plus cache-written prompt tokens never exceed all prompt tokens.
pub fn check_usage(usage: Option<&tollgate_core::response::Usage>) {
    if let Some(u) = usage {
        assert!(
            u.cached_input_tokens.saturating_add(u.cache_write_input_tokens) <= u.input_tokens,
            "usage invariant broken: {u:?}"
        );
    }
}
