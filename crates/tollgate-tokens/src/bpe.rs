//! Byte-pair merging of one piece, counting the resulting tokens.
//!
//! tiktoken's rule: start from single bytes and repeatedly merge the adjacent
//! pair whose concatenation is the token of lowest rank, the leftmost one on
//! ties, until no adjacent pair is a token. (tiktoken-rs does this with a
//! rescanning loop below 100 bytes and with a heap from 100 bytes; both
//! perform exactly this sequence of merges.)
//!
//! Pieces up to 64 bytes, nearly all of them, use the rescanning loop over
//! stack arrays and a bitmask of part starts. Longer ones take the pending
//! pairs rank by rank over a linked list of parts, with stale entries
//! skipped: linear in the piece's length (plus a map keyed by the distinct
//! ranks pending), and the same merges in the same order (the global
//! minimum of (rank, position) every time; `merge_large` says why). There
//! the ranks of new pairs are remembered by the ranks of their halves,
//! which turns the vocabulary look-ups of repetitive input into single
//! loads.

use crate::vocab::Vocab;
use std::collections::BTreeMap;

/// Pieces up to this many bytes use the quadratic loop on the stack.
const SMALL: usize = 64;

const NONE: u32 = u32::MAX;

/// Number of tokens `piece` encodes to.
#[inline]
pub(crate) fn piece_tokens(vocab: &Vocab, piece: &[u8], memo: &mut PairMemo) -> usize {
    if piece.len() <= 1 || vocab.rank(piece).is_some() {
        return piece.len().min(1);
    }
    if piece.len() <= SMALL { merge_small(vocab, piece, memo) } else { merge_large(vocab, piece, memo) }
}

#[inline(always)]
fn rank(vocab: &Vocab, piece: &[u8], start: usize, end: usize) -> u32 {
    piece.get(start..end).and_then(|key| vocab.rank(key)).unwrap_or(NONE)
}

/// The quadratic merge for `2 <= piece.len() <= SMALL`.
///
/// Parts are identified by their first byte: bit `i` of `starts` is set
/// when a part starts at byte `i`, and `ranks[i]` is the rank of that part
/// merged with the next one (`NONE` when that is no token, or when no part
/// starts at `i`). Each step scans `ranks` for the minimum (leftmost on
/// ties, as `<` keeps the first) and finds neighbours with bit operations,
/// so nothing is ever shifted. `tokens[i]` is the rank of the part at `i`,
/// the key of the pair memo: the pairs that merges create (three bytes or
/// more) recur across the pieces of a text, and a memo hit is one load
/// where the vocabulary costs a hash and two cache lines.
fn merge_small(vocab: &Vocab, piece: &[u8], memo: &mut PairMemo) -> usize {
    let n = piece.len();
    let mut ranks = [NONE; SMALL];
    for (i, r) in ranks.iter_mut().enumerate().take(n - 1) {
        *r = rank(vocab, piece, i, i + 2);
    }
    let mut tokens = [NONE; SMALL];
    for (t, &b) in tokens.iter_mut().zip(piece) {
        *t = vocab.byte_rank(b);
    }
    let mut starts: u64 = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
    // Start of the first part after byte `i`, or `n`.
    let next = |starts: u64, i: usize| -> usize {
        let above = starts.checked_shr(i as u32 + 1).unwrap_or(0);
        if above == 0 { n } else { i + 1 + above.trailing_zeros() as usize }
    };
    let mut parts = n;
    loop {
        let mut best = NONE;
        let mut at = 0;
        for (i, &r) in ranks.iter().enumerate().take(n) {
            if r < best {
                best = r;
                at = i;
            }
        }
        if best == NONE {
            return parts;
        }
        // Merge the part at `at` with the one at `right`.
        let right = next(starts, at);
        starts &= !(1u64 << right);
        ranks[right] = NONE;
        tokens[at] = best;
        parts -= 1;
        let end = next(starts, at);
        ranks[at] = if end < n { memo.rank(vocab, piece, (best, tokens[end]), (at, next(starts, end))) } else { NONE };
        let below = starts & ((1u64 << at) - 1);
        if below != 0 {
            let before = 63 - below.leading_zeros() as usize;
            ranks[before] = memo.rank(vocab, piece, (tokens[before], best), (before, end));
        }
    }
}

/// Ranks of concatenated tokens, remembered by the ranks of the two halves:
/// per text, or kept by the caller across texts (`count` keeps one per
/// vocabulary and thread).
///
/// A rank determines a token's bytes, so the rank of the concatenation of
/// tokens `a` and `b` is a function of `(a, b)`: the memo stores that whole
/// key and is exact. Long pieces are where the same pairs recur (a run of
/// one character repeats a handful of pairs thousands of times), and there
/// this replaces most vocabulary look-ups with one load.
pub(crate) struct PairMemo {
    slots: Vec<u64>,
    /// 64 minus log2 of the number of slots.
    shift: u32,
}

/// Ranks are below 2^18: the key (two ranks) takes 36 bits, the value 19
/// (`VALUE_NONE` for "no token").
const VALUE_BITS: u32 = 19;
const VALUE_NONE: u64 = (1 << VALUE_BITS) - 1;
/// At most 2^12 slots (32 KiB); a text gets about one slot per byte, so a
/// short text does not pay for filling the largest memo.
const MEMO_BITS: u32 = 12;

impl PairMemo {
    /// A memo for counting a text of `text_len` bytes.
    pub(crate) fn new(text_len: usize) -> PairMemo {
        let bits = text_len.next_power_of_two().trailing_zeros().clamp(6, MEMO_BITS);
        PairMemo { slots: vec![u64::MAX; 1 << bits], shift: 64 - bits }
    }

    /// The largest memo, for keeping across texts.
    pub(crate) fn largest() -> PairMemo {
        PairMemo::new(1 << MEMO_BITS)
    }

    /// Rank of `piece[start..end]`, the concatenation of tokens `a` and `b`.
    #[inline]
    fn rank(&mut self, vocab: &Vocab, piece: &[u8], (a, b): (u32, u32), (start, end): (usize, usize)) -> u32 {
        let key = (u64::from(a) << 18) | u64::from(b);
        let slot = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize;
        if let Some(entry) = self.slots.get_mut(slot) {
            if *entry >> VALUE_BITS == key {
                let value = *entry & VALUE_NONE;
                return if value == VALUE_NONE { NONE } else { value as u32 };
            }
            let r = rank(vocab, piece, start, end);
            *entry = (key << VALUE_BITS) | u64::from(r).min(VALUE_NONE);
            return r;
        }
        rank(vocab, piece, start, end)
    }
}

/// The merge for pieces longer than `SMALL`, in linear time.
///
/// The pending pairs are grouped by rank (a map from rank to the starts of
/// the parts whose pair has that rank) and taken rank by rank, lowest
/// first, each group's starts left to right. That is tiktoken's order (the
/// global minimum of (rank, position) every time) because a merge never
/// creates a pair of lower or equal rank: if parts `a` and `b` are adjacent
/// and their bytes together are token `u`, the merges inside `u`'s span so
/// far are exactly those of encoding `u`'s bytes alone (a merge across the
/// span's edge would have consumed part of it), so `(a, b)` is the last
/// merge of that encoding, and `u` was learned after both halves: its rank
/// is higher. A group is therefore complete when its turn comes. A pair
/// recorded under a rank that is no longer its current one is stale and
/// skipped (a part's pair only grows to the right, so its rank never
/// returns to an earlier value). Each merge costs O(1) plus a map update
/// keyed by the few distinct ranks pending, instead of a heap operation
/// over all pending pairs.
fn merge_large(vocab: &Vocab, piece: &[u8], memo: &mut PairMemo) -> usize {
    let n = piece.len();
    // Parts are identified by their start; `next[i]` is the start of the
    // following part (n at the end), `prev[i]` that of the preceding one,
    // `token[i]` its rank. `pair[i]` is the rank of part i merged with its
    // successor, NONE when that is no token or when i no longer starts a
    // part.
    let mut next: Vec<u32> = (1..=n as u32).collect();
    let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect();
    let mut token: Vec<u32> = piece.iter().map(|&b| vocab.byte_rank(b)).collect();
    let mut pair: Vec<u32> = vec![NONE; n];
    let mut pending = Pending::default();
    for (i, slot) in pair.iter_mut().enumerate().take(n - 1) {
        let r = rank(vocab, piece, i, i + 2);
        if r != NONE {
            *slot = r;
            pending.push(r, i as u32);
        }
    }
    let mut parts = n;
    while let Some((r, mut starts)) = pending.pop_lowest() {
        // Pushed in ascending order unless a later merge reached back to
        // the left; sorting is then needed for the leftmost-first rule.
        if !starts.is_sorted() {
            starts.sort_unstable();
        }
        for &start in &starts {
            let i = start as usize;
            if pair[i] != r {
                continue;
            }
            let right = next[i] as usize;
            let end = next[right] as usize;
            pair[right] = NONE;
            next[i] = end as u32;
            token[i] = r;
            if end < n {
                prev[end] = i as u32;
            }
            parts -= 1;
            pair[i] = NONE;
            if end < n {
                let after = memo.rank(vocab, piece, (r, token[end]), (i, next[end] as usize));
                if after != NONE {
                    pair[i] = after;
                    pending.push_above(r, after, i as u32);
                }
            }
            if i > 0 {
                let before = prev[i] as usize;
                let merged = memo.rank(vocab, piece, (token[before], r), (before, end));
                pair[before] = merged;
                if merged != NONE {
                    pending.push_above(r, merged, before as u32);
                }
            }
        }
        pending.recycle(starts);
    }
    parts
}

/// Starts of parts by the rank of their pair, lowest rank first.
#[derive(Default)]
struct Pending {
    by_rank: BTreeMap<u32, Vec<u32>>,
    /// Emptied vectors, reused so that a long piece allocates few.
    spare: Vec<Vec<u32>>,
}

impl Pending {
    #[inline]
    fn push(&mut self, rank: u32, start: u32) {
        let spare = &mut self.spare;
        self.by_rank.entry(rank).or_insert_with(|| spare.pop().unwrap_or_default()).push(start);
    }

    /// A pair created while merging rank `current`. Its rank is higher (see
    /// `merge_large`; the build script checks the property it rests on for
    /// every token of the compiled vocabularies and fails otherwise).
    #[inline]
    fn push_above(&mut self, current: u32, rank: u32, start: u32) {
        debug_assert!(rank > current, "a merge created a pair of rank {rank}, not above {current}");
        self.push(rank, start);
    }

    fn pop_lowest(&mut self) -> Option<(u32, Vec<u32>)> {
        self.by_rank.pop_first()
    }

    fn recycle(&mut self, mut starts: Vec<u32>) {
        starts.clear();
        self.spare.push(starts);
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// Both merges on every prefix of a few strings must agree.
    fn agree(vocab: &Vocab, text: &str) {
        let s = text.as_bytes();
        for end in 2..=s.len().min(SMALL) {
            let piece = &s[..end];
            let (small, large) =
                (merge_small(vocab, piece, &mut PairMemo::new(64)), merge_large(vocab, piece, &mut PairMemo::new(64)));
            assert_eq!(small, large, "{:?}", String::from_utf8_lossy(piece));
        }
    }

    #[cfg(feature = "cl100k")]
    #[test]
    fn small_and_large_agree_cl100k() {
        for t in SAMPLES {
            agree(&crate::CL100K, t);
        }
    }

    #[cfg(feature = "o200k")]
    #[test]
    fn small_and_large_agree_o200k() {
        for t in SAMPLES {
            agree(&crate::O200K, t);
        }
    }

    #[cfg(any(feature = "o200k", feature = "cl100k"))]
    const SAMPLES: &[&str] = &[
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "antidisestablishmentarianismantidisestablishmentarianism",
        "xqzvbnmlkjhgfdsapoiuytrewqxqzvbnmlkjhgfdsapoiuytrewq",
        "の日本語のテキストです日本語のテキストです",
        "😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀",
        "                                                                    ",
        "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
    ];
}
