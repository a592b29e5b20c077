//! Token counting, ours against tiktoken-rs `encode_ordinary(text).len()`,
//! on the same texts: prompts of 1, 4 and 64 KB (English prose, code, mixed
//! multilingual), runs of one character (64 KB and 1 MB), and the cost of a
//! first call (tiktoken-rs builds its tokenizer; this crate has nothing to
//! build).
//!
//! `cargo bench -p tollgate-tokens --bench count`

#[path = "../tests/common/mod.rs"]
mod common;

use divan::counter::BytesCount;
use divan::{Bencher, black_box};
use std::collections::HashMap;
use std::sync::LazyLock;
use tiktoken_rs::CoreBPE;
use tollgate_tokens::{Encoding, count};

fn main() {
    // Build tiktoken-rs's tokenizers before timing anything.
    LazyLock::force(&TEXTS);
    let _ = tiktoken_rs::o200k_base_singleton();
    let _ = tiktoken_rs::cl100k_base_singleton();
    divan::main();
}

const PROMPTS: &[&str] = &[
    "prose-1KB",
    "prose-4KB",
    "prose-64KB",
    "code-1KB",
    "code-4KB",
    "code-64KB",
    "multilingual-1KB",
    "multilingual-4KB",
    "multilingual-64KB",
];

const RUNS_64KB: &[&str] = &["a-64KB", "space-64KB", "digit-64KB", "newline-64KB", "emoji-64KB"];

const RUNS_1MB: &[&str] = &["a-1MB", "space-1MB", "digit-1MB", "newline-1MB", "emoji-1MB"];

/// tiktoken-rs 0.12 panics on a megabyte of spaces under o200k_base (its
/// regex engine gives up on `\s+(?!\S)` with a stack-overflow error, and
/// `encode_ordinary` unwraps it), so that run is left out for it.
const TIKTOKEN_O200K_RUNS_1MB: &[&str] = &["a-1MB", "digit-1MB", "newline-1MB", "emoji-1MB"];

static TEXTS: LazyLock<HashMap<&'static str, String>> = LazyLock::new(|| {
    let mut texts = HashMap::new();
    for (size, label) in [(1 << 10, "1KB"), (4 << 10, "4KB"), (64 << 10, "64KB")] {
        texts.insert(name("prose", label), common::prose(size, 11));
        texts.insert(name("code", label), common::code(size, 12));
        texts.insert(name("multilingual", label), common::multilingual(size, 13));
    }
    for (size, label) in [(64 << 10, "64KB"), (1 << 20, "1MB")] {
        for (unit, unit_name) in [("a", "a"), (" ", "space"), ("1", "digit"), ("\n", "newline"), ("😀", "emoji")] {
            texts.insert(name(unit_name, label), unit.repeat(size / unit.len()));
        }
    }
    texts
});

fn name(kind: &str, size: &str) -> &'static str {
    Box::leak(format!("{kind}-{size}").into_boxed_str())
}

fn text(name: &str) -> &'static str {
    TEXTS.get(name).map_or("", String::as_str)
}

fn bench_ours(bencher: Bencher, encoding: Encoding, name: &str) {
    let text = text(name);
    bencher.counter(BytesCount::of_str(text)).bench(|| count(encoding, black_box(text)));
}

fn bench_tiktoken(bencher: Bencher, bpe: &CoreBPE, name: &str) {
    let text = text(name);
    bencher.counter(BytesCount::of_str(text)).bench(|| bpe.encode_ordinary(black_box(text)).len());
}

mod o200k {
    use super::*;

    #[divan::bench(args = PROMPTS)]
    fn ours(bencher: Bencher, name: &str) {
        bench_ours(bencher, Encoding::O200kBase, name);
    }

    #[divan::bench(args = PROMPTS)]
    fn tiktoken(bencher: Bencher, name: &str) {
        bench_tiktoken(bencher, tiktoken_rs::o200k_base_singleton(), name);
    }

    #[divan::bench(args = RUNS_64KB, sample_count = 20)]
    fn ours_runs(bencher: Bencher, name: &str) {
        bench_ours(bencher, Encoding::O200kBase, name);
    }

    #[divan::bench(args = RUNS_64KB, sample_count = 20)]
    fn tiktoken_runs(bencher: Bencher, name: &str) {
        bench_tiktoken(bencher, tiktoken_rs::o200k_base_singleton(), name);
    }

    #[divan::bench(args = RUNS_1MB, sample_count = 5, sample_size = 1)]
    fn ours_runs_1mb(bencher: Bencher, name: &str) {
        bench_ours(bencher, Encoding::O200kBase, name);
    }

    #[divan::bench(args = TIKTOKEN_O200K_RUNS_1MB, sample_count = 3, sample_size = 1)]
    fn tiktoken_runs_1mb(bencher: Bencher, name: &str) {
        bench_tiktoken(bencher, tiktoken_rs::o200k_base_singleton(), name);
    }
}

mod cl100k {
    use super::*;

    #[divan::bench(args = PROMPTS)]
    fn ours(bencher: Bencher, name: &str) {
        bench_ours(bencher, Encoding::Cl100kBase, name);
    }

    #[divan::bench(args = PROMPTS)]
    fn tiktoken(bencher: Bencher, name: &str) {
        bench_tiktoken(bencher, tiktoken_rs::cl100k_base_singleton(), name);
    }

    #[divan::bench(args = RUNS_64KB, sample_count = 20)]
    fn ours_runs(bencher: Bencher, name: &str) {
        bench_ours(bencher, Encoding::Cl100kBase, name);
    }

    #[divan::bench(args = RUNS_64KB, sample_count = 20)]
    fn tiktoken_runs(bencher: Bencher, name: &str) {
        bench_tiktoken(bencher, tiktoken_rs::cl100k_base_singleton(), name);
    }

    #[divan::bench(args = RUNS_1MB, sample_count = 5, sample_size = 1)]
    fn ours_runs_1mb(bencher: Bencher, name: &str) {
        bench_ours(bencher, Encoding::Cl100kBase, name);
    }

    #[divan::bench(args = RUNS_1MB, sample_count = 3, sample_size = 1)]
    fn tiktoken_runs_1mb(bencher: Bencher, name: &str) {
        bench_tiktoken(bencher, tiktoken_rs::cl100k_base_singleton(), name);
    }
}

/// What the first call costs. tiktoken-rs must build a tokenizer (decode
/// the vocabulary, fill hash maps, compile regexes) before counting; this
/// crate counts straight from static tables, so its "first call" is a call.
/// (A fresh process also faults in the pages it touches: see
/// `examples/first_call.rs` for that measured in a new process.)
mod first_call {
    use super::*;

    #[divan::bench]
    fn ours_o200k() -> Option<usize> {
        count(Encoding::O200kBase, black_box("Hello, world!"))
    }

    #[divan::bench]
    fn ours_cl100k() -> Option<usize> {
        count(Encoding::Cl100kBase, black_box("Hello, world!"))
    }

    #[divan::bench(sample_count = 5, sample_size = 1)]
    fn tiktoken_o200k_init_and_count() -> Option<usize> {
        tiktoken_rs::o200k_base().ok().map(|bpe| bpe.encode_ordinary(black_box("Hello, world!")).len())
    }

    #[divan::bench(sample_count = 5, sample_size = 1)]
    fn tiktoken_cl100k_init_and_count() -> Option<usize> {
        tiktoken_rs::cl100k_base().ok().map(|bpe| bpe.encode_ordinary(black_box("Hello, world!")).len())
    }
}
