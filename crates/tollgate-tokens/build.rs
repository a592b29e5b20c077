//! Writes the static tables the token counter reads in place:
//!
//! * `unicode.stage1` / `unicode.stage2`: a two-stage table giving each code
//!   point its character class (see `src/shared.rs`), derived from
//!   `regex-syntax`, the crate tiktoken-rs's regexes are built on, so the two
//!   agree on the Unicode version.
//! * `<enc>.buckets` / `<enc>.blob` / `<enc>.pairs` for each enabled
//!   encoding: a two-choice bucketed hash table from token bytes to rank and
//!   a direct table of the two-byte tokens, built from the vocabulary that
//!   tiktoken-rs embeds. Layouts in `src/shared.rs` and `src/vocab.rs`.

use std::collections::{HashMap, HashSet};
use std::env;
use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "src/shared.rs"]
mod shared;

use shared::class;

type BoxResult<T> = Result<T, Box<dyn Error>>;

fn main() {
    if let Err(e) = run() {
        eprintln!("tollgate-tokens build script failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> BoxResult<()> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/shared.rs");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    write_unicode(&out)?;

    if env::var_os("CARGO_FEATURE_O200K").is_some() {
        let bpe = tiktoken_rs::o200k_base()?;
        write_vocab(&out, "o200k", &bpe)?;
    }
    if env::var_os("CARGO_FEATURE_CL100K").is_some() {
        let bpe = tiktoken_rs::cl100k_base()?;
        write_vocab(&out, "cl100k", &bpe)?;
    }
    Ok(())
}

/// The ranges of a regex character class, as `regex-syntax` resolves it.
fn class_ranges(pattern: &str) -> BoxResult<Vec<(u32, u32)>> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::ParserBuilder::new().build().parse(pattern)?;
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => {
            Ok(c.ranges().iter().map(|r| (u32::from(r.start()), u32::from(r.end()))).collect())
        }
        _ => Err(format!("{pattern} is not a Unicode class").into()),
    }
}

fn write_unicode(out: &Path) -> BoxResult<()> {
    const CODE_POINTS: usize = 0x11_0000;
    const UNSET: u8 = u8::MAX;
    let mut table = vec![UNSET; CODE_POINTS];
    let sets = [
        (r"\p{Ll}", class::LL),
        (r"[\p{Lu}\p{Lt}]", class::LU),
        (r"[\p{Lm}\p{Lo}]", class::LO),
        (r"\p{M}", class::MARK),
        (r"\p{N}", class::NUM),
        (r"\s", class::WS),
    ];
    for (pattern, cls) in sets {
        for (lo, hi) in class_ranges(pattern)? {
            for cp in lo..=hi {
                let slot = &mut table[cp as usize];
                if *slot != UNSET {
                    return Err(format!("U+{cp:04X} is in two classes").into());
                }
                *slot = cls;
            }
        }
    }
    for slot in &mut table {
        if *slot == UNSET {
            *slot = class::OTHER;
        }
    }
    // \p{L} must be exactly the three letter classes.
    let mut letters = 0usize;
    for (lo, hi) in class_ranges(r"\p{L}")? {
        for cp in lo..=hi {
            if !matches!(table[cp as usize], class::LL | class::LU | class::LO) {
                return Err(format!("U+{cp:04X} is a letter but not classed as one").into());
            }
            letters += 1;
        }
    }
    let classed = table.iter().filter(|&&c| matches!(c, class::LL | class::LU | class::LO)).count();
    if letters != classed {
        return Err("letter classes disagree with \\p{L}".into());
    }
    // The contraction matcher (src/pretokenize.rs) knows, by hand, which
    // characters the case-insensitive letters of `'s|'t|'re|'ve|'m|'ll|'d`
    // match: the ASCII pair, plus U+017F for `s`. Check that here.
    let folded = class_ranges(r"(?i:[sdmtlvre])")?;
    let expected: Vec<(u32, u32)> = {
        let mut v: Vec<u32> = b"sdmtlvreSDMTLVRE".iter().map(|&b| u32::from(b)).collect();
        v.push(0x17F);
        v.sort_unstable();
        v.into_iter().map(|c| (c, c)).collect()
    };
    let flattened: Vec<(u32, u32)> = folded.iter().flat_map(|&(lo, hi)| (lo..=hi).map(|c| (c, c))).collect();
    if flattened != expected {
        return Err(format!("unexpected case folding for contractions: {folded:?}").into());
    }

    let block = 1usize << shared::BLOCK_SHIFT;
    let mut ids: HashMap<&[u8], usize> = HashMap::new();
    let mut stage1 = Vec::with_capacity(CODE_POINTS / block);
    let mut stage2 = Vec::new();
    for chunk in table.chunks(block) {
        let next = ids.len();
        let id = *ids.entry(chunk).or_insert(next);
        if id == next {
            stage2.extend_from_slice(chunk);
        }
        stage1.push(u8::try_from(id).map_err(|_| "more than 256 distinct Unicode blocks")?);
    }
    fs::write(out.join("unicode.stage1"), &stage1)?;
    fs::write(out.join("unicode.stage2"), &stage2)?;
    Ok(())
}

/// Every ordinary (non-special) token of `bpe`, as (rank, bytes).
fn ordinary_tokens(bpe: &tiktoken_rs::CoreBPE) -> BoxResult<Vec<(u32, Vec<u8>)>> {
    let specials: HashSet<&str> = bpe.special_tokens();
    let mut tokens = Vec::new();
    // Ranks are dense up to the special tokens. Probe until a long gap
    // (far longer than any in tiktoken's vocabularies) follows the last
    // token found, so a token beyond the rank field is reported, not dropped.
    let mut last_found = 0u32;
    let mut rank = 0u32;
    while rank < last_found.saturating_add(1 << 16) {
        let probe = rank;
        rank += 1;
        let Ok(bytes) = bpe.decode_bytes(&[probe]) else {
            continue;
        };
        last_found = probe;
        let rank = probe;
        if std::str::from_utf8(&bytes).is_ok_and(|s| specials.contains(s)) {
            continue;
        }
        if rank > shared::RANK_MASK - 1 {
            return Err(format!("rank {rank} does not fit the rank field").into());
        }
        if bytes.is_empty() || bytes.len() > shared::MAX_TOKEN_LEN {
            return Err(format!("token {rank} has {} bytes", bytes.len()).into());
        }
        tokens.push((rank, bytes));
    }
    let distinct: HashSet<&[u8]> = tokens.iter().map(|(_, b)| b.as_slice()).collect();
    if distinct.len() != tokens.len() {
        return Err("two ranks share the same bytes".into());
    }
    for byte in 0..=255u8 {
        if !distinct.contains(&[byte][..]) {
            return Err(format!("byte {byte} is not a token").into());
        }
    }
    Ok(tokens)
}

/// Checks what the linear merge of long pieces (`src/bpe.rs`,
/// `merge_large`) relies on: encoding a token's bytes alone, the last merge
/// joins two parts of lower rank than the token. (Parts that merge into a
/// token anywhere are exactly that last merge, so no merge can create a
/// pair of lower or equal rank than the one being merged.) Tokens the
/// byte-pair merge cannot reach are skipped: they never appear as a merge.
fn check_merges_rise(name: &str, tokens: &[(u32, Vec<u8>)]) -> BoxResult<()> {
    let ranks: HashMap<&[u8], u32> = tokens.iter().map(|(r, b)| (b.as_slice(), *r)).collect();
    let mut parts: Vec<(usize, usize)> = Vec::new();
    for (rank, bytes) in tokens.iter().filter(|(_, b)| b.len() >= 2) {
        parts.clear();
        parts.extend((0..bytes.len()).map(|i| (i, i + 1)));
        let mut last = None;
        loop {
            // tiktoken's rule: the adjacent pair of lowest rank, leftmost.
            let best = (0..parts.len().saturating_sub(1))
                .filter_map(|k| ranks.get(&bytes[parts[k].0..parts[k + 1].1]).map(|&r| (r, k)))
                .min();
            let Some((_, k)) = best else { break };
            let (a, b) = (parts[k], parts[k + 1]);
            last = Some((ranks[&bytes[a.0..a.1]], ranks[&bytes[b.0..b.1]]));
            parts[k] = (a.0, b.1);
            parts.remove(k + 1);
        }
        if parts.len() != 1 {
            continue;
        }
        if let Some((a, b)) = last
            && (a >= *rank || b >= *rank)
        {
            return Err(format!("{name}: token {rank} is last merged from {a} and {b}, not both of lower rank").into());
        }
    }
    Ok(())
}

fn write_vocab(out: &Path, name: &str, bpe: &tiktoken_rs::CoreBPE) -> BoxResult<()> {
    let tokens = ordinary_tokens(bpe)?;
    check_merges_rise(name, &tokens)?;
    let hashes: Vec<u64> = tokens.iter().map(|(_, bytes)| shared::hash_bytes(bytes)).collect();
    // About 95% full; a little emptier if the placement does not succeed.
    let mut count = (tokens.len() * 20).div_ceil(shared::ENTRIES_PER_BUCKET * 19);
    let buckets = loop {
        if let Some(buckets) = place(&hashes, count) {
            break buckets;
        }
        count += count / 100 + 1;
    };
    let mut table = Vec::with_capacity(count * shared::BUCKET_BYTES);
    let mut blob = Vec::new();
    for mut bucket in buckets {
        // Lowest rank (most frequent) first.
        bucket.sort_by_key(|&t| tokens[t].0);
        let base = u32::try_from(blob.len())?;
        if base >> shared::BASE_BITS != 0 {
            return Err("the blob outgrew the bucket header".into());
        }
        let entries = u32::try_from(bucket.len())?;
        table.extend_from_slice(&(base | (entries << shared::BASE_BITS)).to_le_bytes());
        let mut fingerprints = [0u8; shared::ENTRIES_PER_BUCKET];
        let mut words = [0u32; shared::ENTRIES_PER_BUCKET];
        for (k, &t) in bucket.iter().enumerate() {
            let (rank, bytes) = &tokens[t];
            blob.extend_from_slice(bytes);
            let end = u32::try_from(blob.len())? - base;
            if end > shared::END_MASK {
                return Err("a bucket's tokens outgrew the end field".into());
            }
            fingerprints[k] = shared::fingerprint(hashes[t]);
            words[k] = rank | (end << shared::END_SHIFT);
        }
        table.extend_from_slice(&fingerprints);
        for word in words {
            table.extend_from_slice(&word.to_le_bytes());
        }
    }
    fs::write(out.join(format!("{name}.buckets")), &table)?;
    fs::write(out.join(format!("{name}.pairs")), pair_table(&tokens)?)?;
    fs::write(out.join(format!("{name}.blob")), &blob)?;
    Ok(())
}

/// The two-byte tokens, for direct look-up: a bitmap over all 65536 byte
/// pairs (little-endian `u64` words), the number of set bits before each
/// word (little-endian `u16`s), and the ranks of the set bits in order
/// (little-endian `u32`s); then the rank of each single byte (256
/// little-endian `u32`s, the last 1024 bytes of the table).
fn pair_table(tokens: &[(u32, Vec<u8>)]) -> BoxResult<Vec<u8>> {
    let mut byte_ranks = [None; 256];
    for (rank, bytes) in tokens {
        if let &[b] = bytes.as_slice() {
            byte_ranks[usize::from(b)] = Some(*rank);
        }
    }
    let mut ranks = vec![None; 1 << 16];
    for (rank, bytes) in tokens {
        if let &[a, b] = bytes.as_slice() {
            ranks[(usize::from(a) << 8) | usize::from(b)] = Some(*rank);
        }
    }
    let mut bitmap = Vec::with_capacity(8192);
    let mut counts = Vec::with_capacity(2048);
    let mut values = Vec::new();
    let mut seen = 0u16;
    for word in ranks.chunks(64) {
        let mut bits = 0u64;
        counts.extend_from_slice(&seen.to_le_bytes());
        for (i, rank) in word.iter().enumerate() {
            if let Some(rank) = rank {
                bits |= 1 << i;
                values.extend_from_slice(&rank.to_le_bytes());
                seen += 1;
            }
        }
        bitmap.extend_from_slice(&bits.to_le_bytes());
    }
    let mut table = bitmap;
    table.extend_from_slice(&counts);
    table.extend_from_slice(&values);
    for (b, rank) in byte_ranks.iter().enumerate() {
        let rank = rank.ok_or_else(|| format!("byte {b} is not a token"))?;
        table.extend_from_slice(&rank.to_le_bytes());
    }
    Ok(table)
}

/// Places every key in one of its two buckets (cuckoo hashing: a key that
/// finds both full evicts one at random, which moves to its other bucket).
/// `None` when that does not settle.
fn place(hashes: &[u64], count: usize) -> Option<Vec<Vec<usize>>> {
    let capacity = shared::ENTRIES_PER_BUCKET;
    let mut buckets: Vec<Vec<usize>> = vec![Vec::with_capacity(capacity); count];
    let mut random = 0x2545_F491_4F6C_DD1Du64;
    for key in 0..hashes.len() {
        let mut current = key;
        let mut kicks = 0;
        loop {
            let (a, b) = shared::buckets_of(hashes[current], count);
            let emptier = if buckets[a].len() <= buckets[b].len() { a } else { b };
            if buckets[emptier].len() < capacity {
                buckets[emptier].push(current);
                break;
            }
            kicks += 1;
            if kicks > 500 {
                return None;
            }
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            let victim_bucket = if random & 1 == 0 { a } else { b };
            let victim = (random >> 8) as usize % capacity;
            std::mem::swap(&mut buckets[victim_bucket][victim], &mut current);
        }
    }
    Some(buckets)
}
