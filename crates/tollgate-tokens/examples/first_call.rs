//! The cost of the very first count in a fresh process, against building
//! tiktoken-rs's tokenizer (what its first call pays). Run it as a new
//! process each time, natively or under a WASI runtime:
//!
//! `cargo run --release --example first_call`

use std::time::Instant;
use tollgate_tokens::{Encoding, count};

fn main() {
    let text = "Hello, world! How many tokens is this?";
    for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
        let start = Instant::now();
        let first = count(encoding, text);
        let first_time = start.elapsed();
        let start = Instant::now();
        let second = count(encoding, text);
        let second_time = start.elapsed();
        println!(
            "ours {}: first call {first_time:?} ({first:?} tokens), second call {second_time:?} ({second:?})",
            encoding.name()
        );
    }
    let start = Instant::now();
    let o200k = tiktoken_rs::o200k_base().map(|bpe| bpe.encode_ordinary(text).len());
    println!("tiktoken-rs o200k_base: build + first call {:?} ({o200k:?} tokens)", start.elapsed());
    let start = Instant::now();
    let cl100k = tiktoken_rs::cl100k_base().map(|bpe| bpe.encode_ordinary(text).len());
    println!("tiktoken-rs cl100k_base: build + first call {:?} ({cl100k:?} tokens)", start.elapsed());
}
