//! A vocabulary: token bytes → rank, read in place from static tables.
//!
//! Three tables, all written by the build script:
//!
//! * `buckets`: `2^k + 1` records of two little-endian `u32`s, the index of
//!   the bucket's first entry and the offset of its first token in `blob`.
//!   Record `b + 1` ends bucket `b`. The bucket of a key is the top `k` bits
//!   of [`hash_bytes`].
//! * `entries`: one little-endian `u32` per token, grouped by bucket: the rank
//!   in bits 0..18, the length minus one in bits 18..25 and a 7-bit
//!   fingerprint of the hash in bits 25..32.
//! * `blob`: the token bytes, concatenated in entry order.
//!
//! A look-up reads one bucket record, scans its few entries (about three),
//! and compares bytes only when length and fingerprint both match.

use crate::shared::{MAX_TOKEN_LEN, RANK_BITS, RANK_MASK, entry_tag, hash_bytes};

#[derive(Debug)]
pub(crate) struct Vocab {
    buckets: &'static [u8],
    entries: &'static [u8],
    blob: &'static [u8],
    shift: u32,
}

#[inline(always)]
fn le_u32(data: &[u8], at: usize) -> u32 {
    match data.get(at..at + 4) {
        Some(&[b0, b1, b2, b3]) => u32::from_le_bytes([b0, b1, b2, b3]),
        _ => 0,
    }
}

impl Vocab {
    pub(crate) const fn new(buckets: &'static [u8], entries: &'static [u8], blob: &'static [u8]) -> Vocab {
        let count = (buckets.len() / 8).saturating_sub(1);
        Vocab { buckets, entries, blob, shift: 64 - count.trailing_zeros() }
    }

    /// Rank of the token whose bytes are `key`, if there is one.
    #[inline]
    pub(crate) fn rank(&self, key: &[u8]) -> Option<u32> {
        let len = key.len();
        if len == 0 || len > MAX_TOKEN_LEN {
            return None;
        }
        let hash = hash_bytes(key);
        let at = (hash.checked_shr(self.shift).unwrap_or(0) as usize) * 8;
        let mut i = le_u32(self.buckets, at) as usize;
        let mut offset = le_u32(self.buckets, at + 4) as usize;
        let end = le_u32(self.buckets, at + 8) as usize;
        let tag = entry_tag(len, hash);
        while i < end {
            let entry = le_u32(self.entries, i * 4);
            let entry_tag = entry >> RANK_BITS;
            if entry_tag == tag && self.blob.get(offset..offset + len) == Some(key) {
                return Some(entry & RANK_MASK);
            }
            offset += (entry_tag & (MAX_TOKEN_LEN as u32 - 1)) as usize + 1;
            i += 1;
        }
        None
    }

    /// Number of tokens in the vocabulary.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len() / 4
    }

    /// Every (bytes, rank) pair, in table order.
    #[cfg(test)]
    pub(crate) fn tokens(&self) -> Vec<(&'static [u8], u32)> {
        let mut out = Vec::with_capacity(self.len());
        let mut offset = 0usize;
        for i in 0..self.len() {
            let entry = le_u32(self.entries, i * 4);
            let len = ((entry >> RANK_BITS) & (MAX_TOKEN_LEN as u32 - 1)) as usize + 1;
            out.push((&self.blob[offset..offset + len], entry & RANK_MASK));
            offset += len;
        }
        out
    }
}
