//! Time of one learned-router decision on a 4 KB prompt (hashing its words
//! and adding their weights), natively or as wasm; `scripts/bench` runs it
//! both ways. The weights' values do not change the time, so the model is
//! trained on a few synthetic prompts.
//!
//! `cargo run --release -p tollgate-core --example learned_decision`

use std::time::{Duration, Instant};
use tollgate_core::classify::Feature;
use tollgate_core::learned::{self, Example, TrainOptions};

fn prompt(bytes: usize) -> String {
    let para = "Our checkout service times out under load. Explain step by step why p99 latency doubles \
        when the connection pool is exhausted, compare two fixes, and cover retries, idempotency keys \
        and back-pressure in the answer. ";
    let mut s = String::new();
    while s.len() < bytes {
        s.push_str(para);
    }
    s.truncate(bytes);
    s
}

fn main() {
    let features = vec![0.5; Feature::COUNT];
    let data =
        [("prove the theorem", true), ("say hello", false), ("derive the bound", true), ("capital of France", false)];
    let examples: Vec<Example<'_>> =
        data.iter().map(|&(text, needs_strong)| Example { text, features: features.clone(), needs_strong }).collect();
    let model = learned::train(&examples, &TrainOptions::default());
    let text = prompt(4096);
    let iterations = 2000u32;
    let mut best = Duration::MAX;
    for _ in 0..7 {
        let start = Instant::now();
        for _ in 0..iterations {
            std::hint::black_box(model.score(std::hint::black_box(&text), &features));
        }
        best = best.min(start.elapsed() / iterations);
    }
    println!(
        "learned router, one decision on a 4 KB prompt: {:.1} µs ({} weights, {} KiB as f32; best of 7 rounds of {iterations})",
        best.as_secs_f64() * 1e6,
        model.ngram_weights.len() + model.feature_weights.len() + 1,
        (model.ngram_weights.len() + model.feature_weights.len() + 1) * 4 / 1024
    );
}
