//! Exact `tiktoken` token counts for `o200k_base` and `cl100k_base`.
//!
//! [`count`] returns what tiktoken-rs 0.12's
//! `CoreBPE::encode_ordinary(text).len()` returns (special-token strings such
//! as `<|endoftext|>` count as plain text), without building a tokenizer.
//!
//! # Design
//!
//! * **No start-up cost.** The build script reads each vocabulary out of
//!   tiktoken-rs once and writes it as static tables (a bucketed hash index
//!   from token bytes to rank; see `vocab.rs`) that are `include_bytes!`-ed
//!   and read in place with little-endian loads. Nothing is decoded, hashed
//!   into a map or compiled at run time, so the first call costs what any
//!   call costs; tiktoken-rs spends 130–300 ms building its maps and regexes.
//!   Each vocabulary is compiled in only with its feature (`o200k`,
//!   `cl100k`).
//! * **Pre-tokenisation by hand.** The two regexes are replaced by scanners
//!   (`pretokenize.rs`) that reproduce fancy-regex's leftmost-first,
//!   backtracking semantics alternative by alternative, possessive
//!   quantifiers, `$` and the `\s+(?!\S)` look-ahead included. Character
//!   classes come from a two-stage table generated from `regex-syntax`, the
//!   crate under tiktoken-rs's regexes, so the Unicode version is the same.
//!   ASCII takes one table load per byte.
//! * **Linear merging.** tiktoken's byte-pair merge is quadratic on long
//!   pieces (openai/tiktoken#195). Short pieces use the same quadratic loop
//!   (fast at that size, on the stack); long ones a min-heap keyed by
//!   (rank, position) with lazy invalidation, which performs the same merges
//!   in the same order in `O(n log n)`. Only the number of parts is kept.
//! * **Exactness** is argued in the comments of the scanners and checked by
//!   the tests: piece boundaries against the real regexes, and counts
//!   against tiktoken-rs on thousands of prompts, generated multilingual and
//!   adversarial texts, and property tests.
//!
//! The crate has no dependencies at run time and uses no threads, clock,
//! I/O or randomness, so it builds for `wasm32-unknown-unknown` and
//! `wasm32-wasip1` as well as natively.

#[cfg(any(feature = "o200k", feature = "cl100k"))]
mod bpe;
#[cfg(any(feature = "o200k", feature = "cl100k"))]
mod pretokenize;
#[cfg_attr(not(any(feature = "o200k", feature = "cl100k")), allow(dead_code))]
mod shared;
#[cfg(any(feature = "o200k", feature = "cl100k"))]
mod unicode;
#[cfg(any(feature = "o200k", feature = "cl100k"))]
mod vocab;

#[cfg(test)]
mod tests;

/// A tiktoken encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `o200k_base`: GPT-4o, GPT-4.1, GPT-5, o-series.
    O200kBase,
    /// `cl100k_base`: GPT-4, GPT-3.5-turbo, text-embedding-ada-002.
    Cl100kBase,
}

impl Encoding {
    /// tiktoken's name for the encoding: `"o200k_base"` or `"cl100k_base"`.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    /// The encoding tiktoken calls `name`, if it is one of these.
    pub fn from_name(name: &str) -> Option<Encoding> {
        match name {
            "o200k_base" => Some(Encoding::O200kBase),
            "cl100k_base" => Some(Encoding::Cl100kBase),
            _ => None,
        }
    }

    /// Whether this encoding's vocabulary was compiled in (its cargo feature,
    /// `o200k` or `cl100k`, is on).
    pub fn is_available(self) -> bool {
        match self {
            Encoding::O200kBase => cfg!(feature = "o200k"),
            Encoding::Cl100kBase => cfg!(feature = "cl100k"),
        }
    }
}

#[cfg(feature = "o200k")]
static O200K: vocab::Vocab = vocab::Vocab::new(
    include_bytes!(concat!(env!("OUT_DIR"), "/o200k.buckets")),
    include_bytes!(concat!(env!("OUT_DIR"), "/o200k.entries")),
    include_bytes!(concat!(env!("OUT_DIR"), "/o200k.blob")),
);

#[cfg(feature = "cl100k")]
static CL100K: vocab::Vocab = vocab::Vocab::new(
    include_bytes!(concat!(env!("OUT_DIR"), "/cl100k.buckets")),
    include_bytes!(concat!(env!("OUT_DIR"), "/cl100k.entries")),
    include_bytes!(concat!(env!("OUT_DIR"), "/cl100k.blob")),
);

/// Number of tokens `text` encodes to, as ordinary text. `None` only when
/// the encoding's vocabulary was not compiled in (its feature is off).
pub fn count(encoding: Encoding, text: &str) -> Option<usize> {
    match encoding {
        #[cfg(feature = "o200k")]
        Encoding::O200kBase => Some(count_with(&O200K, text, pretokenize::next_o200k)),
        #[cfg(feature = "cl100k")]
        Encoding::Cl100kBase => Some(count_with(&CL100K, text, pretokenize::next_cl100k)),
        #[allow(unreachable_patterns)]
        _ => {
            let _ = text;
            None
        }
    }
}

#[cfg(any(feature = "o200k", feature = "cl100k"))]
#[inline(always)]
fn count_with(vocab: &vocab::Vocab, text: &str, next: impl Fn(&[u8], usize) -> usize) -> usize {
    let s = text.as_bytes();
    let mut total = 0;
    let mut p = 0;
    while p < s.len() {
        let e = next(s, p);
        total += bpe::piece_tokens(vocab, s.get(p..e).unwrap_or_default());
        p = e;
    }
    total
}
