//! Definitions shared by the build script (which writes the tables) and the
//! library (which reads them). The build script includes this file with
//! `#[path]`, so both sides agree on the hash and on every bit layout.

/// Character classes, as the tokenisers' regexes see them. Every Unicode
/// scalar value falls in exactly one (the build script checks that the
/// Unicode sets are disjoint).
pub(crate) mod class {
    /// Anything else: punctuation, symbols, controls, unassigned.
    pub(crate) const OTHER: u8 = 0;
    /// `\p{Ll}`.
    pub(crate) const LL: u8 = 1;
    /// `\p{Lu}` or `\p{Lt}`.
    pub(crate) const LU: u8 = 2;
    /// `\p{Lm}` or `\p{Lo}`.
    pub(crate) const LO: u8 = 3;
    /// `\p{M}`.
    pub(crate) const MARK: u8 = 4;
    /// `\p{N}`.
    pub(crate) const NUM: u8 = 5;
    /// `\s` as the regex crate defines it: `\p{White_Space}`.
    pub(crate) const WS: u8 = 6;
}

/// Code points per block of the two-stage Unicode class table.
pub(crate) const BLOCK_SHIFT: u32 = 7;

/// A vocabulary is an array of buckets of `BUCKET_BYTES` (one cache line):
///
/// * bytes 0..4: a little-endian `u32`, the offset in the blob of the
///   bucket's first token (bits 0..24) and the number of entries (24..28);
/// * bytes 4..16: one fingerprint byte per entry;
/// * bytes 16..64: one little-endian `u32` per entry, the rank (bits 0..18)
///   and the end of the token's bytes relative to the bucket's first token
///   (bits 18..29). A token starts where the previous entry's ends (at 0
///   for the first).
pub(crate) const BUCKET_BYTES: usize = 64;
pub(crate) const ENTRIES_PER_BUCKET: usize = 12;
pub(crate) const FINGERPRINTS_AT: usize = 4;
pub(crate) const ENTRIES_AT: usize = 16;
pub(crate) const BASE_BITS: u32 = 24;
pub(crate) const END_SHIFT: u32 = RANK_BITS;
pub(crate) const END_MASK: u32 = (1 << 11) - 1;

/// Entries hold the rank in bits 0..18.
pub(crate) const RANK_BITS: u32 = 18;
pub(crate) const RANK_MASK: u32 = (1 << RANK_BITS) - 1;
/// Tokens are 1..=128 bytes long.
pub(crate) const MAX_TOKEN_LEN: usize = 128;

/// The fingerprint byte of a hash (its low bits; buckets use the high ones).
#[inline(always)]
pub(crate) fn fingerprint(hash: u64) -> u8 {
    hash as u8
}

/// The two buckets, out of `buckets`, where a key with this hash may be.
#[inline(always)]
pub(crate) fn buckets_of(hash: u64, buckets: usize) -> (usize, usize) {
    let n = buckets as u64;
    let first = ((hash >> 32) * n) >> 32;
    let mixed = (hash ^ (hash >> 29)).wrapping_mul(M2);
    let second = ((mixed >> 32) * n) >> 32;
    (first as usize, second as usize)
}

const M1: u64 = 0x9E37_79B9_7F4A_7C15;
const M2: u64 = 0xBF58_476D_1CE4_E5B9;
const M3: u64 = 0x94D0_49BB_1331_11EB;

#[inline(always)]
fn read_u64(b: &[u8], i: usize) -> u64 {
    match b.get(i..i + 8) {
        Some(&[b0, b1, b2, b3, b4, b5, b6, b7]) => u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
        _ => 0,
    }
}

#[inline(always)]
fn read_u32(b: &[u8], i: usize) -> u64 {
    match b.get(i..i + 4) {
        Some(&[b0, b1, b2, b3]) => u64::from(u32::from_le_bytes([b0, b1, b2, b3])),
        _ => 0,
    }
}

/// Hash of a byte string (a token or a candidate token). The bucket is taken
/// from the high bits and the fingerprint from the low bits.
#[inline(always)]
pub(crate) fn hash_bytes(b: &[u8]) -> u64 {
    let n = b.len();
    let mut h = (n as u64).wrapping_mul(M1);
    if n <= 8 {
        let v = if n >= 4 {
            read_u32(b, 0) | (read_u32(b, n - 4) << 32)
        } else if let (Some(&first), Some(&mid), Some(&last)) = (b.first(), b.get(n / 2), b.last()) {
            u64::from(first) | (u64::from(mid) << 8) | (u64::from(last) << 16)
        } else {
            0
        };
        h = (h ^ v).wrapping_mul(M2);
    } else {
        let mut i = 0;
        while i + 8 < n {
            h = (h ^ read_u64(b, i)).wrapping_mul(M2);
            h ^= h >> 31;
            i += 8;
        }
        h = (h ^ read_u64(b, n - 8)).wrapping_mul(M2);
    }
    h ^= h >> 32;
    h = h.wrapping_mul(M3);
    h ^ (h >> 29)
}
