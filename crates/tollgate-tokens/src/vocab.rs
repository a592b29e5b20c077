//! A vocabulary: token bytes → rank, read in place from two static tables
//! written by the build script.
//!
//! * `buckets`: an array of 64-byte buckets (one cache line each; the array
//!   is 64-byte aligned) holding up to 12 tokens: a header (where the
//!   bucket's tokens start in `blob`, how many there are), one fingerprint
//!   byte per token, and one word per token with its rank and where its
//!   bytes end. Exact layout in `shared.rs`.
//! * `blob`: the token bytes, bucket after bucket, token after token.
//!
//! Every token sits in one of two buckets chosen by its hash (cuckoo hashing,
//! about 95% full). A look-up computes both bucket addresses first, so the
//! two loads overlap; in each bucket it compares the twelve fingerprints at
//! once with word arithmetic (a zero-byte test on `fingerprints ^ wanted`),
//! and only for a matching fingerprint checks the length and the bytes. A
//! miss, the common case while merging, costs two cache lines and a few
//! dozen instructions.

use crate::shared::{
    BASE_BITS, BUCKET_BYTES, END_MASK, END_SHIFT, ENTRIES_AT, ENTRIES_PER_BUCKET, FINGERPRINTS_AT, MAX_TOKEN_LEN,
    RANK_MASK, buckets_of, fingerprint, hash_bytes,
};

type Bucket = [u8; BUCKET_BYTES];

#[derive(Debug)]
pub(crate) struct Vocab {
    buckets: &'static [u8],
    blob: &'static [u8],
    pairs: &'static [u8],
    count: usize,
}

/// Layout of the two-byte table: a bitmap over all byte pairs (1024
/// little-endian `u64` words), the number of set bits before each word
/// (1024 little-endian `u16`s), then the ranks of the set bits, in order
/// (little-endian `u32`s), and last the ranks of the 256 single bytes
/// (little-endian `u32`s). Two-byte keys are a third or more of the
/// look-ups made while merging (every adjacent byte pair at the start).
const PAIR_COUNTS_AT: usize = 8192;
const PAIR_RANKS_AT: usize = PAIR_COUNTS_AT + 2048;

/// A 64-byte aligned wrapper, so that each bucket is one cache line.
#[repr(C, align(64))]
pub(crate) struct Aligned<T: ?Sized>(pub(crate) T);

#[inline(always)]
fn le_u32(data: &[u8], at: usize) -> u32 {
    match data.get(at..at + 4) {
        Some(&[b0, b1, b2, b3]) => u32::from_le_bytes([b0, b1, b2, b3]),
        _ => 0,
    }
}

#[inline(always)]
fn le_u64(data: &[u8], at: usize) -> u64 {
    match data.get(at..at + 8) {
        Some(&[b0, b1, b2, b3, b4, b5, b6, b7]) => u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
        _ => 0,
    }
}

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Bit `k` set when byte `k` of `x` may be zero: every zero byte is
/// reported (a borrow can add a false one above a zero byte, which the
/// caller's checks reject).
#[inline(always)]
fn zero_bytes(x: u64) -> u32 {
    let high = x.wrapping_sub(LOW_BITS) & !x & HIGH_BITS;
    // Gather the eight high bits into one byte.
    ((high >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
}

/// `a == b`, with word loads (two overlapping ones) instead of a `memcmp`
/// call for the usual short tokens.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n >= 8 {
        if n > 16 {
            return a == b;
        }
        le_u64(a, 0) == le_u64(b, 0) && le_u64(a, n - 8) == le_u64(b, n - 8)
    } else if n >= 4 {
        le_u32(a, 0) == le_u32(b, 0) && le_u32(a, n - 4) == le_u32(b, n - 4)
    } else {
        // Positions 0, n/2 and n-1 cover every byte when n <= 3.
        n == 0 || (a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1])
    }
}

/// End of entry `k`'s bytes, relative to the bucket's first token.
#[inline(always)]
fn end_of(bucket: &Bucket, k: usize) -> usize {
    ((le_u32(bucket, ENTRIES_AT + 4 * k) >> END_SHIFT) & END_MASK) as usize
}

impl Vocab {
    pub(crate) const fn new(buckets: &'static Aligned<[u8]>, blob: &'static [u8], pairs: &'static [u8]) -> Vocab {
        Vocab { buckets: &buckets.0, blob, pairs, count: buckets.0.len() / BUCKET_BYTES }
    }

    /// Rank of the two-byte token `a b`, if there is one.
    #[inline(always)]
    fn pair_rank(&self, a: u8, b: u8) -> Option<u32> {
        let i = (usize::from(a) << 8) | usize::from(b);
        let word = le_u64(self.pairs, (i >> 6) * 8);
        let bit = i & 63;
        if (word >> bit) & 1 == 0 {
            return None;
        }
        let before = match self.pairs.get(PAIR_COUNTS_AT + (i >> 6) * 2..PAIR_COUNTS_AT + (i >> 6) * 2 + 2) {
            Some(&[lo, hi]) => usize::from(u16::from_le_bytes([lo, hi])),
            _ => 0,
        };
        let index = before + (word & ((1u64 << bit) - 1)).count_ones() as usize;
        Some(le_u32(self.pairs, PAIR_RANKS_AT + 4 * index))
    }

    #[inline(always)]
    fn bucket(&self, b: usize) -> Option<&'static Bucket> {
        let start = b * BUCKET_BYTES;
        self.buckets.get(start..start + BUCKET_BYTES)?.try_into().ok()
    }

    /// Rank of the single byte `b` (every byte is a token).
    #[inline(always)]
    pub(crate) fn byte_rank(&self, b: u8) -> u32 {
        le_u32(self.pairs, self.pairs.len().saturating_sub(1024) + 4 * usize::from(b))
    }

    /// The three static tables, by name (for `probe::tables`).
    pub(crate) fn tables(&self) -> [(&'static str, &'static [u8]); 3] {
        [("buckets", self.buckets), ("blob", self.blob), ("pairs", self.pairs)]
    }

    /// Rank of the token whose bytes are `key`, if there is one.
    #[inline]
    pub(crate) fn rank(&self, key: &[u8]) -> Option<u32> {
        let len = key.len();
        if let &[a, b] = key {
            return self.pair_rank(a, b);
        }
        if len == 0 || len > MAX_TOKEN_LEN {
            return None;
        }
        let hash = hash_bytes(key);
        let wanted = u64::from(fingerprint(hash)) * LOW_BITS;
        let (a, b) = buckets_of(hash, self.count);
        let (first, second) = (self.bucket(a)?, self.bucket(b)?);
        self.find(first, wanted, key).or_else(|| self.find(second, wanted, key))
    }

    #[inline(always)]
    fn find(&self, bucket: &Bucket, wanted: u64, key: &[u8]) -> Option<u32> {
        let header = le_u32(bucket, 0);
        let entries = ((header >> BASE_BITS) & 0xF).min(ENTRIES_PER_BUCKET as u32);
        let low = le_u64(bucket, FINGERPRINTS_AT) ^ wanted;
        let high = u64::from(le_u32(bucket, FINGERPRINTS_AT + 8)) ^ wanted;
        let mut candidates = (zero_bytes(low) | (zero_bytes(high) << 8)) & ((1u32 << entries) - 1);
        while candidates != 0 {
            let k = candidates.trailing_zeros() as usize;
            candidates &= candidates - 1;
            let start = if k == 0 { 0 } else { end_of(bucket, k - 1) };
            let end = end_of(bucket, k);
            if end.wrapping_sub(start) != key.len() {
                continue;
            }
            let base = (header & ((1 << BASE_BITS) - 1)) as usize;
            if let Some(token) = self.blob.get(base + start..base + end)
                && same_bytes(token, key)
            {
                return Some(le_u32(bucket, ENTRIES_AT + 4 * k) & RANK_MASK);
            }
        }
        None
    }

    /// Every (bytes, rank) pair, in table order.
    #[cfg(test)]
    pub(crate) fn tokens(&self) -> Vec<(&'static [u8], u32)> {
        let mut out = Vec::new();
        for b in 0..self.count {
            let Some(bucket) = self.bucket(b) else { continue };
            let header = le_u32(bucket, 0);
            let base = (header & ((1 << BASE_BITS) - 1)) as usize;
            let entries = ((header >> BASE_BITS) & 0xF) as usize;
            assert!(entries <= ENTRIES_PER_BUCKET);
            let mut start = 0;
            for k in 0..entries {
                let end = end_of(bucket, k);
                out.push((&self.blob[base + start..base + end], le_u32(bucket, ENTRIES_AT + 4 * k) & RANK_MASK));
                start = end;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn same_bytes_is_equality() {
        let data: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        for n in 0..=32 {
            let a = &data[..n];
            assert!(same_bytes(a, a));
            for i in 0..n {
                let mut b = a.to_vec();
                b[i] ^= 1;
                assert!(!same_bytes(a, &b), "{n} {i}");
            }
            assert!(!same_bytes(a, &data[..n + 1]));
        }
    }

    #[test]
    fn zero_bytes_reports_every_zero_byte() {
        let mut x: u64 = 0x1234_5678_9ABC_DEF1;
        for _ in 0..10_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            for zeroed in 0..256u32 {
                let mut v = x;
                for k in 0..8 {
                    if zeroed & (1 << k) != 0 {
                        v &= !(0xFF << (8 * k));
                    }
                }
                let mask = zero_bytes(v);
                for k in 0..8 {
                    if (v >> (8 * k)) & 0xFF == 0 {
                        assert!(mask & (1 << k) != 0, "{v:016x}");
                    }
                }
                // Nothing is reported below the lowest zero byte.
                let lowest = (0..8).find(|k| (v >> (8 * k)) & 0xFF == 0).unwrap_or(8);
                assert_eq!(mask & ((1 << lowest) - 1), 0, "{v:016x}");
            }
        }
    }
}
