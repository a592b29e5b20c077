//! A compact binary layout for the outcome ledger's parts, for a store
//! that keeps them in memory and rewrites them often (Envoy's shared data,
//! read and written on every flush of recorded requests).
//!
//! JSON costs a full parse with escape scanning and a full re-serialisation
//! of a 64-slot chunk per write; this layout is a length-prefixed copy.
//! It is not a wire or disk format: shared data lives and dies with the
//! Envoy process, so there is no version to migrate. A leading marker byte
//! still tells it apart from JSON (which starts with `[` or `{`), and
//! [`decode_chunk`] and [`decode_totals`] read either, so a store written by
//! an older filter in the same process (a hot reload) still reads.
//!
//! Layout (integers little-endian):
//! - chunk: `0xC3`, slot count `u16`, then per slot `0` (empty) or `1`,
//!   `at: u64`, flags `u8` (bits 0-1 resolved: 0 none, 1 no, 2 yes; bit 2
//!   escalated), `id` and `tier` as `u16` length + UTF-8 bytes, then
//!   `tokens: u64`, `micros: u64`, `model`, `key` and `user` as strings
//!   (empty for none), a tag count `u8` and the tags as strings. Chunks of
//!   the older layout (`0xC1`: no fields after `tier`) still read;
//! - totals: `0xC4`, `next_slot: u64`, tier count `u16`, then per tier its
//!   name as above and its ten counters as `u64`s, in
//!   `TierTotals::counters_mut` order; then the hourly and the daily spend
//!   buckets, each a count `u16` and per bucket `start`, `requests`,
//!   `tokens`, `micros` as `u64`s. Totals of the older layout (`0xC2`: nine
//!   counters, no buckets) still read.

use crate::outcomes::{Attribution, OutcomeTotals, RecentChunk, RecentRequest, SpendBucket, TierTotals};

const CHUNK_MARK: u8 = 0xC3;
const CHUNK_MARK_V1: u8 = 0xC1;
const TOTALS_MARK: u8 = 0xC4;
const TOTALS_MARK_V1: u8 = 0xC2;
/// Counters per tier in the older totals layout (before `premium_micros`).
const V1_COUNTERS: usize = 9;

/// The chunk in the compact layout.
pub fn encode_chunk(chunk: &RecentChunk) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + chunk.len() * 64);
    out.push(CHUNK_MARK);
    put_len(&mut out, chunk.len());
    for slot in chunk {
        match slot {
            None => out.push(0),
            Some(r) => {
                out.push(1);
                out.extend_from_slice(&r.at.to_le_bytes());
                let resolved = match r.resolved {
                    None => 0,
                    Some(false) => 1,
                    Some(true) => 2,
                };
                out.push(resolved | if r.escalated { 4 } else { 0 });
                put_str(&mut out, &r.id);
                put_str(&mut out, &r.tier);
                out.extend_from_slice(&r.tokens.to_le_bytes());
                out.extend_from_slice(&r.micros.to_le_bytes());
                let a = &r.attribution;
                put_str(&mut out, &a.model);
                put_str(&mut out, a.key.as_deref().unwrap_or(""));
                put_str(&mut out, a.user.as_deref().unwrap_or(""));
                let tags = &a.tags[..a.tags.len().min(usize::from(u8::MAX))];
                out.push(u8::try_from(tags.len()).unwrap_or(u8::MAX));
                for tag in tags {
                    put_str(&mut out, tag);
                }
            }
        }
    }
    out
}

/// A chunk from its compact layout or from JSON; `None` when it is neither
/// (the caller treats that as empty, as it does an absent key).
pub fn decode_chunk(bytes: &[u8]) -> Option<RecentChunk> {
    let attributed = match bytes.first() {
        Some(&CHUNK_MARK) => true,
        Some(&CHUNK_MARK_V1) => false,
        _ => return serde_json::from_slice(bytes).ok(),
    };
    let mut r = Reader { bytes, at: 1 };
    let slots = r.len()?;
    let mut chunk = Vec::with_capacity(slots);
    for _ in 0..slots {
        chunk.push(match r.u8()? {
            0 => None,
            1 => {
                let at = r.u64()?;
                let flags = r.u8()?;
                let resolved = match flags & 3 {
                    0 => None,
                    1 => Some(false),
                    2 => Some(true),
                    _ => return None,
                };
                let id = r.string()?;
                let tier = r.string()?;
                let mut request = RecentRequest {
                    id,
                    tier,
                    at,
                    resolved,
                    escalated: flags & 4 != 0,
                    attribution: Attribution::default(),
                    tokens: 0,
                    micros: 0,
                };
                if attributed {
                    request.tokens = r.u64()?;
                    request.micros = r.u64()?;
                    let some = |s: String| (!s.is_empty()).then_some(s);
                    let a = &mut request.attribution;
                    a.model = r.string()?;
                    a.key = some(r.string()?);
                    a.user = some(r.string()?);
                    let tags = r.u8()?;
                    a.tags = (0..tags).map(|_| r.string()).collect::<Option<Vec<_>>>()?;
                }
                Some(request)
            }
            _ => return None,
        });
    }
    r.done().then_some(chunk)
}

/// The totals in the compact layout.
pub fn encode_totals(totals: &OutcomeTotals) -> Vec<u8> {
    let mut out = Vec::with_capacity(11 + totals.tiers.len() * 90);
    out.push(TOTALS_MARK);
    out.extend_from_slice(&(totals.next_slot as u64).to_le_bytes());
    put_len(&mut out, totals.tiers.len());
    for tier in &totals.tiers {
        put_str(&mut out, &tier.tier);
        for counter in tier.counters() {
            out.extend_from_slice(&counter.to_le_bytes());
        }
    }
    for buckets in [&totals.hours, &totals.days] {
        put_len(&mut out, buckets.len());
        for b in buckets.iter().take(usize::from(u16::MAX)) {
            for n in [b.start, b.requests, b.tokens, b.micros] {
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
    }
    out
}

/// Totals from their compact layout or from JSON (see [`decode_chunk`]).
pub fn decode_totals(bytes: &[u8]) -> Option<OutcomeTotals> {
    let current = match bytes.first() {
        Some(&TOTALS_MARK) => true,
        Some(&TOTALS_MARK_V1) => false,
        _ => return serde_json::from_slice(bytes).ok(),
    };
    let mut r = Reader { bytes, at: 1 };
    let next_slot = usize::try_from(r.u64()?).ok()?;
    let count = r.len()?;
    let mut tiers = Vec::with_capacity(count);
    for _ in 0..count {
        let mut tier = TierTotals { tier: r.string()?, ..TierTotals::default() };
        let stored = if current { usize::MAX } else { V1_COUNTERS };
        for counter in tier.counters_mut().into_iter().take(stored) {
            *counter = r.u64()?;
        }
        tiers.push(tier);
    }
    let mut buckets = || -> Option<Vec<SpendBucket>> {
        let count = r.len()?;
        (0..count)
            .map(|_| Some(SpendBucket { start: r.u64()?, requests: r.u64()?, tokens: r.u64()?, micros: r.u64()? }))
            .collect()
    };
    let (hours, days) = if current { (buckets()?, buckets()?) } else { (Vec::new(), Vec::new()) };
    r.done().then_some(OutcomeTotals { tiers, next_slot, hours, days })
}

/// Lengths are `u16`: a chunk has 64 slots, a tenant a handful of tiers, and
/// ids and tier names are far shorter; anything longer is cut (an id or a
/// tier name past 65,535 bytes is not one a client can name in feedback).
fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_len(out, end);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn len(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(u16::from_le_bytes([b[0], b[1]])))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        Some(u64::from_le_bytes(word))
    }

    fn string(&mut self) -> Option<String> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).ok().map(str::to_owned)
    }

    fn done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn request(i: u64) -> RecentRequest {
        RecentRequest {
            id: format!("req-{i}-é"),
            tier: ["cheap", "premium", "pinned"][(i % 3) as usize].to_owned(),
            at: 1_795_000_000 + i,
            resolved: [None, Some(false), Some(true)][(i % 3) as usize],
            escalated: i.is_multiple_of(2),
            attribution: Attribution {
                model: if i.is_multiple_of(4) { String::new() } else { "gpt-4o-mini".to_owned() },
                key: i.is_multiple_of(2).then(|| "0123456789abcdef".to_owned()),
                user: i.is_multiple_of(3).then(|| format!("user-{i}-ü")),
                tags: (0..i % 3).map(|t| format!("tag{t}")).collect(),
            },
            tokens: i * 7,
            micros: i * 11,
        }
    }

    #[test]
    fn a_chunk_of_the_older_layout_still_reads() {
        // 0xC1, one slot: at 5, resolved yes, id "a", tier "cheap".
        let mut old = vec![0xC1, 1, 0, 1];
        old.extend_from_slice(&5u64.to_le_bytes());
        old.extend_from_slice(&[2, 1, 0, b'a', 5, 0]);
        old.extend_from_slice(b"cheap");
        let chunk = decode_chunk(&old).unwrap();
        let r = chunk[0].clone().unwrap();
        assert_eq!((r.id.as_str(), r.tier.as_str(), r.at, r.resolved, r.micros), ("a", "cheap", 5, Some(true), 0));
    }

    #[test]
    fn a_chunk_reads_back_as_it_was_written() {
        let chunk: RecentChunk = (0..64).map(|i| (i % 5 != 0).then(|| request(i))).collect();
        let bytes = encode_chunk(&chunk);
        assert_eq!(decode_chunk(&bytes), Some(chunk.clone()));
        // and JSON written by another version still reads
        assert_eq!(decode_chunk(&serde_json::to_vec(&chunk).unwrap()), Some(chunk));
    }

    #[test]
    fn totals_read_back_as_they_were_written() {
        let mut totals = OutcomeTotals { next_slot: 5000, ..OutcomeTotals::default() };
        for (k, name) in ["cheap", "premium"].iter().enumerate() {
            let mut t = TierTotals { tier: (*name).to_owned(), ..TierTotals::default() };
            for (j, c) in t.counters_mut().into_iter().enumerate() {
                *c = (k as u64 + 1) * 1000 + j as u64 + u64::from(u32::MAX);
            }
            totals.tiers.push(t);
        }
        let bytes = encode_totals(&totals);
        assert_eq!(decode_totals(&bytes), Some(totals.clone()));
        assert_eq!(decode_totals(&serde_json::to_vec(&totals).unwrap()), Some(totals));
    }

    #[test]
    fn totals_of_the_older_layout_still_read_with_no_premium_and_no_buckets() {
        // 0xC2, next_slot 3, one tier "t" with counters 1..=9.
        let mut old = vec![0xC2];
        old.extend_from_slice(&3u64.to_le_bytes());
        old.extend_from_slice(&[1, 0, 1, 0, b't']);
        for n in 1..=9u64 {
            old.extend_from_slice(&n.to_le_bytes());
        }
        let totals = decode_totals(&old).unwrap();
        assert_eq!((totals.next_slot, totals.tiers[0].requests, totals.tiers[0].cache_saved_micros), (3, 1, 9));
        assert_eq!(totals.tiers[0].premium_micros, 0);
        assert!(totals.hours.is_empty() && totals.days.is_empty());
        let mut with_buckets = totals.clone();
        with_buckets.hours.push(SpendBucket { start: 7_200, requests: 2, tokens: 30, micros: 40 });
        with_buckets.days.push(SpendBucket { start: 0, requests: 2, tokens: 30, micros: 40 });
        assert_eq!(decode_totals(&encode_totals(&with_buckets)), Some(with_buckets));
    }

    #[test]
    fn a_compact_chunk_is_a_fraction_of_its_json() {
        let chunk: RecentChunk = (0..64).map(|i| Some(request(i))).collect();
        let json = serde_json::to_vec(&chunk).unwrap().len();
        // Well under its JSON: the strings (id, tier, model, key, user, tags)
        // cost the same in both; the numbers, names and quotes do not.
        assert!(encode_chunk(&chunk).len() * 5 < json * 3, "{} vs {json}", encode_chunk(&chunk).len());
    }

    #[test]
    fn truncated_or_corrupt_bytes_decode_to_none_never_a_panic() {
        let chunk: RecentChunk = (0..8).map(|i| Some(request(i))).collect();
        let bytes = encode_chunk(&chunk);
        for cut in 0..bytes.len() {
            let _ = decode_chunk(&bytes[..cut]);
        }
        assert_eq!(decode_chunk(&bytes[..bytes.len() - 1]), None);
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode_chunk(&extra), None, "trailing bytes are not a chunk");
        let mut bad_flag = bytes;
        bad_flag[3 + 8 + 1] = 3; // the first slot's resolved bits: 3 is not a value
        assert_eq!(decode_chunk(&bad_flag), None);
        let totals = encode_totals(&OutcomeTotals::default());
        for cut in 0..totals.len() {
            assert_eq!(decode_totals(&totals[..cut]).filter(|_| cut > 0), None);
        }
    }

    #[test]
    fn an_overlong_name_is_cut_at_a_character_boundary() {
        let mut r = request(1);
        r.id = "é".repeat(40_000); // 80,000 bytes
        let back = decode_chunk(&encode_chunk(&vec![Some(r)])).unwrap();
        let id = &back[0].as_ref().unwrap().id;
        assert!(id.len() <= usize::from(u16::MAX) && id.chars().all(|c| c == 'é'), "{}", id.len());
    }
}
