//! The reference for the whole-process comparison in `scripts/bench-tokens`:
//! tiktoken-rs behind the same contract as `tollgate count --jsonl`
//! (`{"id","text"}` lines in, `{"id","tokens"}` lines out).
//!
//! `tiktoken_count o200k_base < texts.jsonl`

use serde_json::{Value, json};
use std::io::{BufRead, Write};

fn main() {
    let encoding = std::env::args().nth(1).unwrap_or_else(|| "o200k_base".to_owned());
    let built = match encoding.as_str() {
        "o200k_base" => tiktoken_rs::o200k_base(),
        "cl100k_base" => tiktoken_rs::cl100k_base(),
        other => {
            eprintln!("unknown encoding {other:?}");
            std::process::exit(2);
        }
    };
    let bpe = match built {
        Ok(bpe) => bpe,
        Err(e) => {
            eprintln!("tiktoken-rs: {e}");
            std::process::exit(1);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { std::process::exit(1) };
        if line.trim().is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&line) else { std::process::exit(1) };
        let text = v.get("text").and_then(Value::as_str).unwrap_or_default();
        let tokens = bpe.encode_ordinary(text).len();
        let id = v.get("id").cloned().unwrap_or(Value::Null);
        if writeln!(out, "{}", json!({"id": id, "tokens": tokens})).is_err() {
            std::process::exit(1);
        }
    }
}
