//! Property tests: counts equal tiktoken-rs's on random texts.

#![cfg(all(feature = "o200k", feature = "cl100k"))]

// On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use proptest::prelude::*;
use tollgate_tokens::{Encoding, count};

fn check(text: &str) -> Result<(), TestCaseError> {
    let o200k = tiktoken_rs::o200k_base_singleton();
    let cl100k = tiktoken_rs::cl100k_base_singleton();
    prop_assert_eq!(
        count(Encoding::O200kBase, text),
        Some(o200k.encode_ordinary(text).len()),
        "o200k_base count of {:?}",
        text
    );
    prop_assert_eq!(
        count(Encoding::Cl100kBase, text),
        Some(cl100k.encode_ordinary(text).len()),
        "cl100k_base count of {:?}",
        text
    );
    Ok(())
}

/// Characters each scanner treats specially, plus one of every class.
const TRICKY: &[&str] = &[
    " ",
    " ",
    "  ",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "\u{a0}",
    "\u{2028}",
    "\u{3000}",
    "0",
    "7",
    "123",
    "٣",
    "a",
    "e",
    "s",
    "t",
    "l",
    "d",
    "m",
    "v",
    "r",
    "E",
    "S",
    "L",
    "D",
    "ſ",
    "Q",
    "ǅ",
    "ʰ",
    "中",
    "の",
    "ß",
    "'",
    "’",
    "\"",
    "/",
    "//",
    "!",
    ".",
    ",",
    "-",
    "_",
    "\u{301}",
    "\u{327}",
    "😀",
    "👍🏽",
    "👨‍👩‍👧",
    "🇺🇸",
    "\u{200d}",
    "\u{fe0f}",
    "<|endoftext|>",
    "the",
    " the",
    "ing",
    "The",
];

fn tricky_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TRICKY), 0..max).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn printable_unicode(text in "\\PC{0,80}") {
        check(&text)?;
    }

    #[test]
    fn any_characters(chars in prop::collection::vec(any::<char>(), 0..60)) {
        let text: String = chars.into_iter().collect();
        check(&text)?;
    }

    #[test]
    fn tricky_alphabet(text in tricky_text(60)) {
        check(&text)?;
    }

    /// Long single pieces: both of tiktoken's merge paths (below and from
    /// 100 bytes) against both of ours (below and above 64 bytes).
    #[test]
    fn long_words(text in "[a-zA-Z]{40,300}") {
        check(&text)?;
    }

    #[test]
    fn long_mixed_pieces(text in "[a-z\u{301}ʰ中]{20,200}|[!-/:-@]{20,300}|[ \t\n\r]{20,300}") {
        check(&text)?;
    }

    #[test]
    fn repeated_units(unit in prop::sample::select(TRICKY), n in 1usize..400) {
        check(&unit.repeat(n))?;
    }
}
