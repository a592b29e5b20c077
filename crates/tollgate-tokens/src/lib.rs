//! Exact `tiktoken` token counts for `o200k_base` and `cl100k_base`.
//!
//! [`count`] returns what tiktoken-rs 0.12's
//! `CoreBPE::encode_ordinary(text).len()` returns (special-token strings such
//! as `<|endoftext|>` count as plain text), without building a tokenizer.
//!
//! # Design
//!
//! * **No start-up cost.** The build script reads each vocabulary out of
//!   tiktoken-rs once and writes it as static tables that are
//!   `include_bytes!`-ed and read in place with little-endian loads: a
//!   two-choice hash table of 64-byte buckets (one cache line, twelve tokens,
//!   byte fingerprints compared a word at a time) over a blob of token bytes,
//!   plus a bitmap for the two-byte tokens (see `vocab.rs`). Nothing is
//!   decoded, hashed into a map or compiled at run time, so the first call
//!   costs what any call costs (tens of microseconds of page faults in a new
//!   process) where tiktoken-rs spends 130–300 ms building its maps and
//!   regexes. Each vocabulary is compiled in only with its feature (`o200k`,
//!   `cl100k`): about 2.5 MB (1.9 MB gzipped) for o200k, 1.2 MB (0.9 MB
//!   gzipped) for cl100k.
//! * **Pre-tokenisation by hand.** The two regexes are replaced by scanners
//!   (`pretokenize.rs`) that reproduce fancy-regex's leftmost-first,
//!   backtracking semantics alternative by alternative, possessive
//!   quantifiers, `$` and the `\s+(?!\S)` look-ahead included, in linear time.
//!   Character classes come from a two-stage table generated from
//!   `regex-syntax`, the crate under tiktoken-rs's regexes, so the Unicode
//!   version is the same. ASCII takes one table load per byte.
//! * **Linear merging.** tiktoken's byte-pair merge is quadratic on long
//!   pieces (openai/tiktoken#195). Short pieces (up to 64 bytes) use a
//!   quadratic loop on the stack, fastest at that size; longer ones take
//!   the pending pairs rank by rank, which performs the same merges in the
//!   same order in linear time, because no merge creates a pair of lower
//!   rank than its own (the build script checks the property this rests on
//!   for every token). Ranks of merged pairs are remembered by the ranks of
//!   their halves, in a memo each thread keeps across texts. Only the
//!   number of parts is kept.
//! * **Exactness** is argued in the comments of the scanners and checked by
//!   the tests: piece boundaries against the real regexes (fancy-regex, as
//!   tiktoken-rs runs them) for every character and random texts, the tables
//!   against tiktoken-rs's vocabularies, and counts against tiktoken-rs on
//!   thousands of prompts and generated, multilingual, random and
//!   adversarial texts.
//!
//! The crate has no dependencies at run time and uses no threads, clock,
//! I/O, randomness or `unsafe`, so it builds for `wasm32-unknown-unknown`
//! and `wasm32-wasip1` as well as natively.

#[cfg(any(feature = "o200k", feature = "cl100k"))]
mod bpe;
#[cfg(any(feature = "o200k", feature = "cl100k"))]
// With one feature, the other encoding's scanner is unused outside tests.
#[cfg_attr(not(all(feature = "o200k", feature = "cl100k")), allow(dead_code))]
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
static O200K_BUCKETS: &vocab::Aligned<[u8]> =
    &vocab::Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/o200k.buckets")));

#[cfg(feature = "o200k")]
static O200K: vocab::Vocab = vocab::Vocab::new(
    O200K_BUCKETS,
    include_bytes!(concat!(env!("OUT_DIR"), "/o200k.blob")),
    include_bytes!(concat!(env!("OUT_DIR"), "/o200k.pairs")),
);

#[cfg(feature = "cl100k")]
static CL100K_BUCKETS: &vocab::Aligned<[u8]> =
    &vocab::Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/cl100k.buckets")));

#[cfg(feature = "cl100k")]
static CL100K: vocab::Vocab = vocab::Vocab::new(
    CL100K_BUCKETS,
    include_bytes!(concat!(env!("OUT_DIR"), "/cl100k.blob")),
    include_bytes!(concat!(env!("OUT_DIR"), "/cl100k.pairs")),
);

/// The compiled vocabulary tables and their look-up, for the comparison of
/// table layouts (`examples/layouts.rs`). Not part of the API.
#[doc(hidden)]
pub mod probe {
    use crate::Encoding;

    /// The static tables of `encoding` (name, bytes), if it is compiled in.
    pub fn tables(encoding: Encoding) -> Option<[(&'static str, &'static [u8]); 3]> {
        match encoding {
            #[cfg(feature = "o200k")]
            Encoding::O200kBase => Some(crate::O200K.tables()),
            #[cfg(feature = "cl100k")]
            Encoding::Cl100kBase => Some(crate::CL100K.tables()),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The rank of the token whose bytes are `key`, by the compiled tables.
    pub fn rank(encoding: Encoding, key: &[u8]) -> Option<u32> {
        match encoding {
            #[cfg(feature = "o200k")]
            Encoding::O200kBase => crate::O200K.rank(key),
            #[cfg(feature = "cl100k")]
            Encoding::Cl100kBase => crate::CL100K.rank(key),
            #[allow(unreachable_patterns)]
            _ => {
                let _ = key;
                None
            }
        }
    }
}

/// Number of tokens `text` encodes to, as ordinary text. `None` only when
/// the encoding's vocabulary was not compiled in (its feature is off).
pub fn count(encoding: Encoding, text: &str) -> Option<usize> {
    match encoding {
        #[cfg(feature = "o200k")]
        Encoding::O200kBase => Some(O200K_MEMO.with(|memo| count_with(&O200K, text, pretokenize::next_o200k, memo))),
        #[cfg(feature = "cl100k")]
        Encoding::Cl100kBase => {
            Some(CL100K_MEMO.with(|memo| count_with(&CL100K, text, pretokenize::next_cl100k, memo)))
        }
        #[allow(unreachable_patterns)]
        _ => {
            let _ = text;
            None
        }
    }
}

// One pair memo per vocabulary and thread, kept across calls. Its entries
// are exact (keyed by both halves' ranks, see `bpe::PairMemo`), so an entry
// from an earlier text is as good as one from this text: a host that counts
// every prompt (a proxy's worker thread, a Worker isolate) no longer fills
// 32 KiB per call, and the pairs common text repeats are found at once.
#[cfg(feature = "o200k")]
std::thread_local! {
    static O200K_MEMO: std::cell::RefCell<bpe::PairMemo> = std::cell::RefCell::new(bpe::PairMemo::largest());
}
#[cfg(feature = "cl100k")]
std::thread_local! {
    static CL100K_MEMO: std::cell::RefCell<bpe::PairMemo> = std::cell::RefCell::new(bpe::PairMemo::largest());
}

#[cfg(any(feature = "o200k", feature = "cl100k"))]
#[inline(always)]
fn count_with(
    vocab: &vocab::Vocab,
    text: &str,
    next: impl Fn(&[u8], usize) -> usize,
    kept: &std::cell::RefCell<bpe::PairMemo>,
) -> usize {
    let s = text.as_bytes();
    // The kept memo, unless it is in use (it cannot be: counting calls
    // nothing that counts; a fresh one is as exact, only slower).
    let mut fresh;
    let mut borrowed = kept.try_borrow_mut();
    let memo = match borrowed.as_deref_mut() {
        Ok(memo) => memo,
        Err(_) => {
            fresh = bpe::PairMemo::new(s.len());
            &mut fresh
        }
    };
    let mut total = 0;
    let mut p = 0;
    while p < s.len() {
        let e = next(s, p);
        debug_assert!(e > p && e <= s.len());
        total += bpe::piece_tokens(vocab, s.get(p..e).unwrap_or_default(), memo);
        p = e;
    }
    total
}
