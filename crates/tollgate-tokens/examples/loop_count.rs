//! Times this crate against tiktoken-rs on one generated text, alternating
//! the two over several rounds and keeping each one's best round, which
//! holds up better than a single run on a busy machine. Also handy under
//! `perf record`.
//!
//! `cargo run --release --example loop_count -- o200k multilingual 4096 2000 [rounds] [ours-only|tiktoken-only]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};
use tollgate_tokens::{Encoding, count};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_owned());
    let encoding = Encoding::from_name(&format!("{}_base", arg(1, "o200k"))).unwrap_or(Encoding::O200kBase);
    let size: usize = arg(3, "4096").parse().unwrap_or(4096);
    let iterations: u32 = arg(4, "2000").parse().unwrap_or(2000);
    let rounds: usize = arg(5, "7").parse().unwrap_or(7);
    let text = match arg(2, "prose").as_str() {
        "code" => common::code(size, 12),
        "multilingual" => common::multilingual(size, 13),
        "a" => "a".repeat(size),
        "space" => " ".repeat(size),
        "emoji" => "😀".repeat(size / 4),
        _ => common::prose(size, 11),
    };
    let mode = arg(6, "");
    let ours_only = mode == "ours-only";
    let theirs_only = mode == "tiktoken-only";
    let bpe = match encoding {
        _ if ours_only => None,
        Encoding::O200kBase => Some(tiktoken_rs::o200k_base_singleton()),
        Encoding::Cl100kBase => Some(tiktoken_rs::cl100k_base_singleton()),
    };
    let time = |f: &dyn Fn() -> usize| {
        let start = Instant::now();
        for _ in 0..iterations {
            std::hint::black_box(f());
        }
        start.elapsed() / iterations
    };
    let (mut ours, mut theirs) = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds {
        if !theirs_only {
            ours = ours.min(time(&|| count(encoding, std::hint::black_box(&text)).unwrap_or(0)));
        }
        if let Some(bpe) = bpe {
            theirs = theirs.min(time(&|| bpe.encode_ordinary(std::hint::black_box(&text)).len()));
        }
    }
    println!(
        "{} {} {} bytes: ours {ours:?}, tiktoken-rs {theirs:?}, ratio {:.2}",
        encoding.name(),
        arg(2, "prose"),
        text.len(),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}
