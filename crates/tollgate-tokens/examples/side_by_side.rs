//! This crate against tiktoken-rs, measured in one process, natively or as
//! wasm under a WASI runtime; `scripts/bench-tokens` runs every part both
//! ways and prints the two side by side. Each part prints JSON lines
//! (`{"part", "metric", "ours", "tiktoken", "unit"}`).
//!
//! `side_by_side startup-ours|startup-tiktoken|speed|linear|memory-tiktoken|corpus`
//!
//! `corpus` prints the generated texts of the corpus test as `{"id","text"}`
//! lines, for the whole-process comparison.
//!
//! The start-up and memory parts must each run in a fresh process: they
//! measure what the first call pays and the peak a process reaches.

// A measurement program, not shipped code: a failed step stops it loudly.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};
use tollgate_tokens::{Encoding, count};

const ENCODINGS: [Encoding; 2] = [Encoding::O200kBase, Encoding::Cl100kBase];

fn main() {
    let part = std::env::args().nth(1).unwrap_or_default();
    match part.as_str() {
        "startup-ours" => startup_ours(),
        "startup-tiktoken" => startup_tiktoken(),
        "speed" => speed(),
        "linear" => linear(),
        "memory-tiktoken" => memory_tiktoken(),
        "corpus" => corpus(),
        other => {
            eprintln!("unknown part {other:?}: startup-ours, startup-tiktoken, speed, linear, memory-tiktoken, corpus");
            std::process::exit(2);
        }
    }
}

fn line(part: &str, metric: &str, ours: Option<f64>, tiktoken: Option<f64>, unit: &str) {
    let value = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.3}"));
    println!(
        "{{\"part\":\"{part}\",\"metric\":\"{metric}\",\"ours\":{},\"tiktoken\":{},\"unit\":\"{unit}\"}}",
        value(ours),
        value(tiktoken)
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Never drops a tokenizer: under node's WASI, dropping tiktoken-rs's
/// (its regexes) crashed node 20 with a segfault. The process ends soon
/// after anyway.
fn keep(bpe: tiktoken_rs::CoreBPE) {
    std::mem::forget(bpe);
}

fn tiktoken(encoding: Encoding) -> tiktoken_rs::CoreBPE {
    let built = match encoding {
        Encoding::O200kBase => tiktoken_rs::o200k_base(),
        Encoding::Cl100kBase => tiktoken_rs::cl100k_base(),
    };
    match built {
        Ok(bpe) => bpe,
        Err(e) => panic!("tiktoken-rs: {e}"),
    }
}

const HELLO: &str = "Hello, world! How many tokens is this?";

/// The first count in a fresh process: the tables are used in place, so
/// this is page faults and nothing else.
fn startup_ours() {
    for encoding in ENCODINGS.into_iter().filter(|e| e.is_available()) {
        let start = Instant::now();
        let n = count(encoding, HELLO);
        let first = start.elapsed();
        std::hint::black_box(n);
        line("startup", &format!("first count, {}", encoding.name()), Some(micros(first)), None, "µs");
    }
}

/// tiktoken-rs builds its maps and regexes before its first count.
fn startup_tiktoken() {
    for encoding in ENCODINGS {
        let start = Instant::now();
        let bpe = tiktoken(encoding);
        let n = bpe.encode_ordinary(HELLO).len();
        let first = start.elapsed();
        keep(bpe);
        std::hint::black_box(n);
        line("startup", &format!("first count, {}", encoding.name()), None, Some(micros(first)), "µs");
    }
}

/// Best of `rounds` averages over `iterations` calls, the two counters
/// alternating round by round so both see the same machine.
fn best_of(
    rounds: usize,
    iterations: u32,
    ours: &dyn Fn() -> usize,
    theirs: &dyn Fn() -> usize,
) -> (Duration, Duration) {
    let time = |f: &dyn Fn() -> usize| {
        let start = Instant::now();
        for _ in 0..iterations {
            std::hint::black_box(f());
        }
        start.elapsed() / iterations
    };
    let (mut a, mut b) = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds {
        a = a.min(time(ours));
        b = b.min(time(theirs));
    }
    (a, b)
}

/// 4 KB texts: the size of a typical prompt.
fn speed() {
    for encoding in ENCODINGS.into_iter().filter(|e| e.is_available()) {
        let bpe = tiktoken(encoding);
        for (kind, text) in [
            ("prose", common::prose(4096, 11)),
            ("code", common::code(4096, 12)),
            ("multilingual", common::multilingual(4096, 13)),
        ] {
            let ours = count(encoding, &text).unwrap_or(0);
            let theirs = bpe.encode_ordinary(&text).len();
            assert_eq!(ours, theirs, "{} {kind}: counts differ", encoding.name());
            let (a, b) = best_of(7, 200, &|| count(encoding, std::hint::black_box(&text)).unwrap_or(0), &|| {
                bpe.encode_ordinary(std::hint::black_box(&text)).len()
            });
            line("speed", &format!("4 KB {kind}, {}", encoding.name()), Some(micros(a)), Some(micros(b)), "µs");
        }
        keep(bpe);
    }
}

/// Adversarial inputs: time per MiB at 64 KiB and at 1 MiB. Linear means
/// the two are about equal.
fn linear() {
    let Some(encoding) = ENCODINGS.into_iter().find(|e| e.is_available()) else { return };
    for (k, kind) in common::ADVERSARIAL.iter().enumerate() {
        let (s, l) = (common::adversarial_text(k, 64 << 10), common::adversarial_text(k, 1 << 20));
        let per_mib = |text: &str, repeats: u32| {
            let mut best = Duration::MAX;
            for _ in 0..3 {
                let start = Instant::now();
                for _ in 0..repeats {
                    std::hint::black_box(count(encoding, std::hint::black_box(text)));
                }
                best = best.min(start.elapsed() / repeats);
            }
            best.as_secs_f64() * 1e3 * (1 << 20) as f64 / text.len() as f64
        };
        let (at_64k, at_1m) = (per_mib(&s, 16), per_mib(&l, 1));
        line("linear", &format!("{kind}, {}: ms per MiB at 64 KiB", encoding.name()), Some(at_64k), None, "ms");
        line("linear", &format!("{kind}, {}: ms per MiB at 1 MiB", encoding.name()), Some(at_1m), None, "ms");
    }
}

/// Peak memory after building tiktoken-rs's tokenizers and counting 4 KB
/// texts of every kind with both (`examples/peak_memory.rs` measures this
/// crate alone, in a binary without tiktoken-rs).
fn memory_tiktoken() {
    for encoding in ENCODINGS {
        let bpe = tiktoken(encoding);
        for t in common::typical_texts() {
            std::hint::black_box(bpe.encode_ordinary(&t).len());
        }
        keep(bpe);
    }
    line("memory", "peak memory, 4 KB texts (both encodings)", None, common::peak_memory_mib(), "MiB");
}

/// The corpus test's generated texts (code, scripts, emoji, edge cases,
/// random mixes) as JSON lines.
fn corpus() {
    for (i, text) in common::generated_texts().into_iter().enumerate() {
        let text = serde_json::Value::String(text);
        println!("{{\"id\":\"generated-{i}\",\"text\":{text}}}");
    }
}
