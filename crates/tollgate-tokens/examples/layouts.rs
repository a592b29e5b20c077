//! Compares in-place layouts for a vocabulary (token bytes → rank), side by
//! side on the real vocabularies: raw size, gzipped size (what counts
//! against a Worker's bundle limit) and look-up time on a stream of hits
//! and near-misses like the ones byte-pair merging makes. Every layout's
//! answers are checked against a `HashMap` before it is timed.
//!
//! `cargo run --release -p tollgate-tokens --example layouts` (or
//! `scripts/bench-tokens`, which runs it).
//!
//! The layouts:
//! * **shipped**: this crate's tables (two-choice buckets of 64 bytes with
//!   byte fingerprints over a blob in bucket order, a bitmap for two-byte
//!   tokens);
//! * **sorted + hash index**: the token bytes sorted, with offsets, a rank
//!   per sorted token and an open-addressing index (sorted position and a
//!   fingerprint per slot);
//! * **FST**: the `fst` crate's map from bytes to rank (sorted keys, shared
//!   prefixes and suffixes);
//! * **perfect hash**: a PTHash-style perfect hash (a 16-bit pilot per
//!   bucket of about four keys) giving a slot, a rank per slot, and the
//!   token bytes in rank order with offsets to check the key.
//!
//! It also prints a floor: the deflated size of the token set alone (sorted
//! and front-coded) plus `log2(n!)` bits, the information in which rank
//! goes with which token if ranks were unrelated to the bytes. Any layout
//! that stores the set and an exact rank per token, compressed by gzip,
//! sits near or above that floor.

// A measurement program, not shipped code: a failed step stops it loudly.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::Instant;
use tollgate_tokens::{Encoding, probe};

fn main() {
    for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
        if !encoding.is_available() {
            println!("{}: not compiled in", encoding.name());
            continue;
        }
        compare(encoding);
    }
}

/// Ordinary tokens by rank, read out of tiktoken-rs.
fn vocabulary(encoding: Encoding) -> Vec<Vec<u8>> {
    let bpe = match encoding {
        Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
        Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
    };
    let specials: HashSet<&str> = bpe.special_tokens();
    let mut tokens = Vec::new();
    for rank in 0u32.. {
        match bpe.decode_bytes(&[rank]) {
            Ok(bytes) if !std::str::from_utf8(&bytes).is_ok_and(|s| specials.contains(s)) => tokens.push(bytes),
            _ => break,
        }
    }
    tokens
}

fn gzipped(data: &[u8]) -> usize {
    // Deflate at level 9 plus gzip's 18 bytes of header and trailer.
    miniz_oxide::deflate::compress_to_vec(data, 9).len() + 18
}

/// A fast 64-bit hash of a byte string, used by the two hashed layouts.
fn hash(key: &[u8], seed: u64) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = seed ^ (key.len() as u64).wrapping_mul(K);
    let mut chunks = key.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    h ^ (h >> 32)
}

fn le_u32(data: &[u8], at: usize) -> usize {
    let mut word = [0u8; 4];
    word.copy_from_slice(&data[at..at + 4]);
    u32::from_le_bytes(word) as usize
}

fn le_u24(data: &[u8], at: usize) -> u32 {
    u32::from(data[at]) | (u32::from(data[at + 1]) << 8) | (u32::from(data[at + 2]) << 16)
}

fn push_u24(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes()[..3]);
}

/// Offsets of concatenated tokens, `n + 1` little-endian `u32`s.
fn offsets<'a>(tokens: impl Iterator<Item = &'a Vec<u8>>) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0];
    let mut end = 0u32;
    for t in tokens {
        end += t.len() as u32;
        out.extend_from_slice(&end.to_le_bytes());
    }
    out
}

trait Layout {
    fn name(&self) -> &'static str;
    /// (part, bytes) of what would be compiled in.
    fn parts(&self) -> Vec<(&'static str, &[u8])>;
    fn rank(&self, key: &[u8]) -> Option<u32>;
}

struct Shipped(Encoding);

impl Layout for Shipped {
    fn name(&self) -> &'static str {
        "shipped (two-choice buckets)"
    }
    fn parts(&self) -> Vec<(&'static str, &[u8])> {
        probe::tables(self.0).map(|t| t.to_vec()).unwrap_or_default()
    }
    fn rank(&self, key: &[u8]) -> Option<u32> {
        probe::rank(self.0, key)
    }
}

struct SortedHash {
    blob: Vec<u8>,
    offsets: Vec<u8>,
    ranks: Vec<u8>,
    slots: Vec<u8>,
    mask: usize,
}

impl SortedHash {
    fn new(tokens: &[Vec<u8>]) -> SortedHash {
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by(|&a, &b| tokens[a].cmp(&tokens[b]));
        let blob: Vec<u8> = order.iter().flat_map(|&t| tokens[t].iter().copied()).collect();
        let offsets = offsets(order.iter().map(|&t| &tokens[t]));
        let mut ranks = Vec::new();
        for &t in &order {
            push_u24(&mut ranks, t as u32);
        }
        // A load factor of 0.6-0.8 (next power of two above n / 0.8).
        let size = (tokens.len() * 5 / 4).next_power_of_two();
        let mask = size - 1;
        let mut slots = vec![0u32; size];
        for (sorted, &t) in order.iter().enumerate() {
            let h = hash(&tokens[t], 0);
            let mut at = (h as usize) & mask;
            while slots[at] != 0 {
                at = (at + 1) & mask;
            }
            // Sorted position + 1 in bits 0..18, a fingerprint above.
            slots[at] = (sorted as u32 + 1) | (((h >> 50) as u32) << 18);
        }
        let slots = slots.iter().flat_map(|s| s.to_le_bytes()).collect();
        SortedHash { blob, offsets, ranks, slots, mask }
    }
}

impl Layout for SortedHash {
    fn name(&self) -> &'static str {
        "sorted + hash index"
    }
    fn parts(&self) -> Vec<(&'static str, &[u8])> {
        vec![("blob", &self.blob), ("offsets", &self.offsets), ("ranks", &self.ranks), ("index", &self.slots)]
    }
    fn rank(&self, key: &[u8]) -> Option<u32> {
        let h = hash(key, 0);
        let wanted = (h >> 50) as usize;
        let mut at = (h as usize) & self.mask;
        loop {
            let slot = le_u32(&self.slots, at * 4);
            if slot == 0 {
                return None;
            }
            if slot >> 18 == wanted {
                let sorted = (slot & 0x3_FFFF) - 1;
                let (start, end) = (le_u32(&self.offsets, sorted * 4), le_u32(&self.offsets, sorted * 4 + 4));
                if &self.blob[start..end] == key {
                    return Some(le_u24(&self.ranks, sorted * 3));
                }
            }
            at = (at + 1) & self.mask;
        }
    }
}

struct Fst(fst::Map<Vec<u8>>);

impl Fst {
    fn new(tokens: &[Vec<u8>]) -> Fst {
        let mut pairs: Vec<(&[u8], u64)> = tokens.iter().enumerate().map(|(r, t)| (t.as_slice(), r as u64)).collect();
        pairs.sort();
        match fst::Map::from_iter(pairs) {
            Ok(map) => Fst(map),
            Err(e) => panic!("fst: {e}"),
        }
    }
}

impl Layout for Fst {
    fn name(&self) -> &'static str {
        "FST (fst crate)"
    }
    fn parts(&self) -> Vec<(&'static str, &[u8])> {
        vec![("fst", self.0.as_fst().as_bytes())]
    }
    fn rank(&self, key: &[u8]) -> Option<u32> {
        self.0.get(key).map(|r| r as u32)
    }
}

struct PerfectHash {
    pilots: Vec<u8>,
    slot_ranks: Vec<u8>,
    blob: Vec<u8>,
    offsets: Vec<u8>,
    buckets: u64,
    slots: u64,
}

const KEYS_PER_BUCKET: usize = 4;
const NO_RANK: u32 = 0xFF_FFFF;

impl PerfectHash {
    fn slot(h: u64, pilot: u16, slots: u64) -> usize {
        let mixed = (h ^ u64::from(pilot).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)).wrapping_mul(0x1656_67B1_9E37_79F9);
        ((u128::from(mixed) * u128::from(slots)) >> 64) as usize
    }

    fn bucket(h: u64, buckets: u64) -> usize {
        ((u128::from(h.rotate_left(32)) * u128::from(buckets)) >> 64) as usize
    }

    fn new(tokens: &[Vec<u8>]) -> PerfectHash {
        let n = tokens.len();
        let buckets = n.div_ceil(KEYS_PER_BUCKET) as u64;
        // 98% full: a little room makes the pilot search fast.
        let slots = (n * 100 / 98) as u64;
        let hashes: Vec<u64> = tokens.iter().map(|t| hash(t, 7)).collect();
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); buckets as usize];
        for (t, &h) in hashes.iter().enumerate() {
            members[Self::bucket(h, buckets)].push(t);
        }
        let mut order: Vec<usize> = (0..buckets as usize).collect();
        order.sort_by_key(|&b| std::cmp::Reverse(members[b].len()));
        let mut taken = vec![NO_RANK; slots as usize];
        let mut pilots = vec![0u16; buckets as usize];
        let mut tried = Vec::new();
        for b in order {
            let found = (0..=u16::MAX).find(|&pilot| {
                tried.clear();
                for &t in &members[b] {
                    let s = Self::slot(hashes[t], pilot, slots);
                    if taken[s] != NO_RANK || tried.contains(&s) {
                        return false;
                    }
                    tried.push(s);
                }
                true
            });
            let Some(pilot) = found else { panic!("no pilot for a bucket of {}", members[b].len()) };
            pilots[b] = pilot;
            for &t in &members[b] {
                taken[Self::slot(hashes[t], pilot, slots)] = t as u32;
            }
        }
        let mut slot_ranks = Vec::new();
        for &r in &taken {
            push_u24(&mut slot_ranks, r);
        }
        PerfectHash {
            pilots: pilots.iter().flat_map(|p| p.to_le_bytes()).collect(),
            slot_ranks,
            blob: tokens.concat(),
            offsets: offsets(tokens.iter()),
            buckets,
            slots,
        }
    }
}

impl Layout for PerfectHash {
    fn name(&self) -> &'static str {
        "perfect hash (PTHash-style)"
    }
    fn parts(&self) -> Vec<(&'static str, &[u8])> {
        vec![
            ("pilots", &self.pilots),
            ("slot ranks", &self.slot_ranks),
            ("blob", &self.blob),
            ("offsets", &self.offsets),
        ]
    }
    fn rank(&self, key: &[u8]) -> Option<u32> {
        let h = hash(key, 7);
        let b = Self::bucket(h, self.buckets);
        let pilot = u16::from_le_bytes([self.pilots[b * 2], self.pilots[b * 2 + 1]]);
        let rank = le_u24(&self.slot_ranks, Self::slot(h, pilot, self.slots) * 3);
        if rank == NO_RANK {
            return None;
        }
        let r = rank as usize;
        let (start, end) = (le_u32(&self.offsets, r * 4), le_u32(&self.offsets, r * 4 + 4));
        (&self.blob[start..end] == key).then_some(rank)
    }
}

/// Hits and near-misses in a fixed shuffled order: every token, and every
/// token followed by the first byte of the next one.
fn queries(tokens: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = tokens.to_vec();
    for pair in tokens.windows(2) {
        let mut q = pair[0].clone();
        q.push(pair[1][0]);
        out.push(q);
    }
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..out.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.swap(i, (state % (i as u64 + 1)) as usize);
    }
    out
}

fn floor(tokens: &[Vec<u8>]) -> (usize, usize) {
    let mut sorted: Vec<&Vec<u8>> = tokens.iter().collect();
    sorted.sort();
    let mut front_coded = Vec::new();
    let mut previous: &[u8] = &[];
    for t in sorted {
        let shared = t.iter().zip(previous).take_while(|(a, b)| a == b).count();
        front_coded.push(shared as u8);
        front_coded.push((t.len() - shared) as u8);
        front_coded.extend_from_slice(&t[shared..]);
        previous = t;
    }
    let log2_factorial: f64 = (2..=tokens.len()).map(|k| (k as f64).log2()).sum();
    (gzipped(&front_coded), (log2_factorial / 8.0) as usize)
}

fn kib(bytes: usize) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}

fn compare(encoding: Encoding) {
    let tokens = vocabulary(encoding);
    let truth: HashMap<&[u8], u32> = tokens.iter().enumerate().map(|(r, t)| (t.as_slice(), r as u32)).collect();
    let queries = queries(&tokens);
    let expected: Vec<Option<u32>> = queries.iter().map(|q| truth.get(q.as_slice()).copied()).collect();
    let hits = expected.iter().filter(|e| e.is_some()).count();
    println!(
        "\n{}: {} tokens, {} of token bytes; {} look-ups ({} hits)",
        encoding.name(),
        tokens.len(),
        kib(tokens.iter().map(Vec::len).sum()),
        queries.len(),
        hits
    );
    let start = Instant::now();
    let layouts: Vec<Box<dyn Layout>> = vec![
        Box::new(Shipped(encoding)),
        Box::new(SortedHash::new(&tokens)),
        Box::new(Fst::new(&tokens)),
        Box::new(PerfectHash::new(&tokens)),
    ];
    println!("(built the comparison layouts in {:.1?})", start.elapsed());
    println!("| layout | raw | gzipped | ns per look-up | parts, gzipped |");
    println!("|---|---|---|---|---|");
    for layout in &layouts {
        for (q, e) in queries.iter().zip(&expected) {
            assert_eq!(layout.rank(q), *e, "{} disagrees on {:?}", layout.name(), String::from_utf8_lossy(q));
        }
        // Best of five passes over all queries.
        let best = (0..5)
            .map(|_| {
                let start = Instant::now();
                let mut found = 0u64;
                for q in &queries {
                    found += u64::from(std::hint::black_box(layout.rank(std::hint::black_box(q))).is_some());
                }
                assert_eq!(found as usize, hits);
                start.elapsed()
            })
            .min()
            .unwrap_or_default();
        let parts = layout.parts();
        let raw: usize = parts.iter().map(|(_, p)| p.len()).sum();
        let each: Vec<(&str, usize)> = parts.iter().map(|(name, p)| (*name, gzipped(p))).collect();
        let total: usize = each.iter().map(|(_, g)| g).sum();
        let detail: Vec<String> = each.iter().map(|(name, g)| format!("{name} {}", kib(*g))).collect();
        println!(
            "| {} | {} | {} | {:.1} | {} |",
            layout.name(),
            kib(raw),
            kib(total),
            best.as_nanos() as f64 / queries.len() as f64,
            detail.join(", ")
        );
    }
    let (set, permutation) = floor(&tokens);
    println!(
        "| floor: the token set (sorted, front-coded, gzipped) + log2(n!) bits of rank | | {} | | set {}, ranks {} |",
        kib(set + permutation),
        kib(set),
        kib(permutation)
    );
}
