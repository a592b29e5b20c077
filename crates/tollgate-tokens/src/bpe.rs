//! Byte-pair merging of one piece, counting the resulting tokens.
//!
//! tiktoken's rule: start from single bytes and repeatedly merge the adjacent
//! pair whose concatenation is the token of lowest rank, the leftmost one on
//! ties, until no adjacent pair is a token. Short pieces use the direct
//! quadratic loop over a stack buffer; long ones a min-heap keyed by
//! (rank, position) over a linked list of parts, with stale heap entries
//! skipped on pop, which is `O(n log n)` and merges in exactly the same order
//! (the global minimum of (rank, position) every time).

use crate::vocab::Vocab;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Pieces up to this many bytes use the quadratic loop on the stack.
const SMALL: usize = 64;

const NONE: u32 = u32::MAX;

/// Number of tokens `piece` encodes to.
#[inline]
pub(crate) fn piece_tokens(vocab: &Vocab, piece: &[u8]) -> usize {
    if piece.len() <= 1 || vocab.rank(piece).is_some() {
        return piece.len().min(1);
    }
    if piece.len() <= SMALL { merge_small(vocab, piece) } else { merge_large(vocab, piece) }
}

#[inline(always)]
fn rank(vocab: &Vocab, piece: &[u8], start: usize, end: usize) -> u32 {
    piece.get(start..end).and_then(|key| vocab.rank(key)).unwrap_or(NONE)
}

/// The quadratic merge for `2 <= piece.len() <= SMALL`.
fn merge_small(vocab: &Vocab, piece: &[u8]) -> usize {
    let n = piece.len();
    // Part k spans starts[k]..starts[k + 1]; ranks[k] is the rank of parts
    // k and k + 1 merged. `parts` parts, `parts - 1` pairs.
    let mut starts = [0u8; SMALL + 1];
    let mut ranks = [NONE; SMALL];
    for (k, start) in starts.iter_mut().enumerate().take(n + 1) {
        *start = k as u8;
    }
    for (k, r) in ranks.iter_mut().enumerate().take(n - 1) {
        *r = rank(vocab, piece, k, k + 2);
    }
    let mut parts = n;
    loop {
        let mut best = NONE;
        let mut at = 0;
        for (k, &r) in ranks.iter().enumerate().take(parts - 1) {
            if r < best {
                best = r;
                at = k;
            }
        }
        if best == NONE {
            return parts;
        }
        // Merge parts `at` and `at + 1`: drop the boundary between them and
        // the pair rank that described it.
        starts.copy_within(at + 2..=parts, at + 1);
        ranks.copy_within(at + 1..parts - 1, at);
        parts -= 1;
        ranks[at] =
            if at + 1 < parts { rank(vocab, piece, starts[at] as usize, starts[at + 2] as usize) } else { NONE };
        if at > 0 {
            ranks[at - 1] = rank(vocab, piece, starts[at - 1] as usize, starts[at + 1] as usize);
        }
    }
}

/// The heap merge, for pieces longer than `SMALL`.
fn merge_large(vocab: &Vocab, piece: &[u8]) -> usize {
    let n = piece.len();
    // Parts are identified by their start; `next[i]` is the start of the
    // following part (n at the end), `prev[i]` that of the preceding one.
    // `pair[i]` is the rank of part i merged with its successor, NONE when
    // that is no token or when i no longer starts a part.
    let mut next: Vec<u32> = (1..=n as u32).collect();
    let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect();
    let mut pair: Vec<u32> = vec![NONE; n];
    let mut heap: BinaryHeap<Reverse<u64>> = BinaryHeap::with_capacity(n);
    let key = |r: u32, i: usize| Reverse((u64::from(r) << 32) | i as u64);
    for (i, slot) in pair.iter_mut().enumerate().take(n - 1) {
        let r = rank(vocab, piece, i, i + 2);
        if r != NONE {
            *slot = r;
            heap.push(key(r, i));
        }
    }
    let mut parts = n;
    while let Some(Reverse(k)) = heap.pop() {
        let r = (k >> 32) as u32;
        let i = (k & 0xFFFF_FFFF) as usize;
        // A part's pair only ever grows to the right, so its rank never
        // returns to an earlier value: an entry is current iff it matches.
        if pair[i] != r {
            continue;
        }
        let right = next[i] as usize;
        let end = next[right] as usize;
        pair[right] = NONE;
        next[i] = end as u32;
        if end < n {
            prev[end] = i as u32;
        }
        parts -= 1;
        pair[i] = NONE;
        if end < n {
            let r = rank(vocab, piece, i, next[end] as usize);
            if r != NONE {
                pair[i] = r;
                heap.push(key(r, i));
            }
        }
        if i > 0 {
            let before = prev[i] as usize;
            let r = rank(vocab, piece, before, end);
            pair[before] = r;
            if r != NONE {
                heap.push(key(r, before));
            }
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both merges on every prefix of a few strings must agree.
    fn agree(vocab: &Vocab, text: &str) {
        let s = text.as_bytes();
        for end in 2..=s.len().min(SMALL) {
            let piece = &s[..end];
            assert_eq!(merge_small(vocab, piece), merge_large(vocab, piece), "{:?}", String::from_utf8_lossy(piece));
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
