//! Could routing skip exact token counting? Issue 16 asked to measure
//! whether a safe upper bound (tokens <= bytes) changes any decision. This
//! scores every prompt of a labelled set twice with the example tenant's
//! classifier, once with the exact count and once with the bound, and
//! prints how many tiers and `x-tollgate-score` headers change, next to
//! what the count costs.
//!
//!   cargo run --release -p tollgate-cli --example count_bound_study -- ../shared/data/routing/dev.jsonl
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::time::Instant;
use tollgate_core::api::ApiFormat;
use tollgate_core::config::TenantConfig;
use tollgate_core::count;
use tollgate_core::engine;
use tollgate_core::request::ChatRequest;

fn tier(config: &TenantConfig, score: f64) -> usize {
    let tiers = &config.routing.tiers;
    tiers.iter().position(|t| score <= t.up_to_score).unwrap_or(tiers.len())
}

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "../shared/data/routing/dev.jsonl".to_owned());
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("{path} is not here: nothing to study (the labelled set is not part of the repository)");
        return;
    };
    let config = TenantConfig::example().unwrap();
    let (mut n, mut tier_flips, mut header_changes, mut sum_diff) = (0usize, 0usize, 0usize, 0.0f64);
    let (mut counting, mut rest) = (0.0f64, 0.0f64);
    let mut bytes_per_token = Vec::new();
    for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let prompt = v["prompt"].as_str().unwrap_or_default();
        let body = json!({"model": "tollgate/auto", "messages": [{"role": "user", "content": prompt}]}).to_string();
        let req = ChatRequest::parse(ApiFormat::OpenAi, body.as_bytes(), usize::MAX).unwrap();
        let t0 = Instant::now();
        let exact = count::prompt_tokens(&req, &req.model).tokens;
        let t1 = Instant::now();
        let with_exact = engine::classify_request(&req, exact, &config);
        let t2 = Instant::now();
        counting += (t1 - t0).as_secs_f64();
        rest += (t2 - t1).as_secs_f64();
        let bound = u64::try_from(body.len()).unwrap_or(u64::MAX);
        let with_bound = engine::classify_request(&req, bound, &config);
        n += 1;
        tier_flips += usize::from(tier(&config, with_exact.score) != tier(&config, with_bound.score));
        header_changes += usize::from(format!("{:.3}", with_exact.score) != format!("{:.3}", with_bound.score));
        sum_diff += (with_bound.score - with_exact.score).abs();
        bytes_per_token.push(prompt.len() as f64 / exact.max(1) as f64);
    }
    bytes_per_token.sort_by(f64::total_cmp);
    let pct = |k: usize| 100.0 * k as f64 / n.max(1) as f64;
    println!("{n} prompts from {path}, the example tenant's classifier");
    println!(
        "bytes per token: median {:.2}, 5th percentile {:.2}",
        bytes_per_token[bytes_per_token.len() / 2],
        bytes_per_token[bytes_per_token.len() / 20]
    );
    println!("with tokens <= bytes in place of the count:");
    println!("  tier changes:            {tier_flips} ({:.1}%)", pct(tier_flips));
    println!("  x-tollgate-score changes: {header_changes} ({:.1}%)", pct(header_changes));
    println!("  mean |score change|:      {:.4}", sum_diff / n.max(1) as f64);
    println!(
        "time, native: counting {:.1} µs per prompt, classifying {:.1} µs",
        counting * 1e6 / n.max(1) as f64,
        rest * 1e6 / n.max(1) as f64
    );
}
