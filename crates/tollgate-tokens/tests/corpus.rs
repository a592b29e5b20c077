//! Counts against tiktoken-rs 0.12 (`encode_ordinary(text).len()`) on the
//! shared routing prompts and on generated texts, for both encodings.

#![cfg(all(feature = "o200k", feature = "cl100k"))]

mod common;

// On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use tollgate_tokens::{Encoding, count};

/// Compares every text under both encodings; returns how many texts.
fn compare_all<S: AsRef<str>>(texts: &[S]) -> usize {
    let o200k = tiktoken_rs::o200k_base_singleton();
    let cl100k = tiktoken_rs::cl100k_base_singleton();
    for text in texts {
        let text = text.as_ref();
        assert_eq!(
            count(Encoding::O200kBase, text),
            Some(o200k.encode_ordinary(text).len()),
            "o200k_base count of {text:?}"
        );
        assert_eq!(
            count(Encoding::Cl100kBase, text),
            Some(cl100k.encode_ordinary(text).len()),
            "cl100k_base count of {text:?}"
        );
    }
    texts.len()
}

#[test]
fn shared_dev_prompts_match_tiktoken() {
    let path = common::shared_dev_path();
    let Some(prompts) = common::shared_prompts() else {
        println!("skipped: shared data not found at {}", path.display());
        return;
    };
    assert!(prompts.len() > 1000, "expected thousands of prompts");
    let n = compare_all(&prompts);
    // The prompts joined into one long text, as a chat transcript would be.
    let joined = prompts[..500].join("\n\n");
    compare_all(&[joined]);
    println!("compared {n} prompts from {} under both encodings", path.display());
}

#[test]
fn generated_texts_match_tiktoken() {
    let texts = common::generated_texts();
    let n = compare_all(&texts);
    println!("compared {n} generated texts under both encodings");
}
