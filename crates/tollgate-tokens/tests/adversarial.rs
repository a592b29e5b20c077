//! Adversarial inputs: long runs of one character, long digit and
//! whitespace runs, and inputs that make a backtracking regex scan far.
//! Up to about 20 KB they are compared with tiktoken-rs directly; at 1 MB
//! (where tiktoken is slow) with a count extrapolated from tiktoken-rs's own
//! counts on short runs. No timing is asserted.

#![cfg(all(feature = "o200k", feature = "cl100k"))]

// On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use tiktoken_rs::CoreBPE;
use tollgate_tokens::{Encoding, count};

const ENCODINGS: [Encoding; 2] = [Encoding::O200kBase, Encoding::Cl100kBase];

fn tiktoken(e: Encoding) -> &'static CoreBPE {
    match e {
        Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
        Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
    }
}

fn reference(e: Encoding, text: &str) -> usize {
    tiktoken(e).encode_ordinary(text).len()
}

fn check(e: Encoding, text: &str) {
    let shown: String = text.chars().take(40).collect();
    assert_eq!(
        count(e, text),
        Some(reference(e, text)),
        "{} count of {} bytes starting {shown:?}",
        e.name(),
        text.len()
    );
}

#[test]
fn repeated_characters_up_to_20kb() {
    let units = ["a", " ", "1", "\n", "😀", "A", "\t", "!", "ab", "\u{301}", "中", "\r\n", " a", "'s", "\u{a0}"];
    let mut compared = 0;
    for unit in units {
        let mut sizes: Vec<usize> = (1..=130).collect();
        sizes.extend([255, 256, 257, 1000, 4096, 20_000 / unit.len()]);
        for n in sizes {
            let text = unit.repeat(n);
            for e in ENCODINGS {
                check(e, &text);
                compared += 1;
            }
        }
    }
    println!("compared {compared} repeated-unit texts");
}

#[test]
fn scanner_stress_inputs_up_to_20kb() {
    let k = 20_000;
    let texts = [
        format!("{}x", " ".repeat(k)),
        format!("x{}", " ".repeat(k)),
        format!("{}x", " \n".repeat(k / 2)),
        format!("{}a", "\r".repeat(k)),
        format!("{}\n", "\t ".repeat(k / 2)),
        format!("{}a", "1".repeat(k)),
        format!("{}.", "A".repeat(k)),
        format!("ʰ{}.", "B".repeat(k)),
        format!("\u{301}{}.", "A".repeat(k)),
        format!("a{}", "\u{301}".repeat(k / 2)),
        format!("{}'s", "Ab".repeat(k / 2)),
        "'".repeat(k),
        "'s".repeat(k / 2),
        "!/".repeat(k / 2),
        format!("!{}", "\n/".repeat(k / 2)),
        "1a".repeat(k / 2),
        "a1".repeat(k / 2),
        "aA".repeat(k / 2),
        "ʰB".repeat(k / 2),
        " \u{301}".repeat(k / 2),
        "\u{a0}a".repeat(k / 2),
        "\u{2028}\n".repeat(k / 2),
        "x \n".repeat(k / 3),
        "😀 ".repeat(k / 5),
    ];
    for text in &texts {
        for e in ENCODINGS {
            check(e, text);
        }
    }
}

/// tiktoken-rs's count for `n` repetitions of `unit`, extrapolated from its
/// counts on runs of a few hundred: BPE on a run of one repeated unit is
/// eventually periodic (no token is longer than 128 units), so find the
/// smallest period `p` and increment `c` with `T(m + p) = T(m) + c` over a
/// window of two periods, then `T(n) = T(m) + c (n - m) / p` for the `m` in
/// the window with `m ≡ n (mod p)`. `None` if no period is found.
fn extrapolated(e: Encoding, unit: &str, n: usize) -> Option<usize> {
    const START: usize = 256;
    const MAX_PERIOD: usize = 128;
    let t: Vec<i64> = (START..START + 2 * MAX_PERIOD).map(|m| reference(e, &unit.repeat(m)) as i64).collect();
    for p in 1..=MAX_PERIOD {
        let c = t[p] - t[0];
        if (0..t.len() - p).all(|i| t[i + p] - t[i] == c) {
            let i = (n - START) % p;
            return Some((t[i] + c * ((n - START - i) / p) as i64) as usize);
        }
    }
    None
}

#[test]
fn one_megabyte_runs() {
    const MB: usize = 1 << 20;
    for unit in ["a", " ", "1", "\n", "😀"] {
        let n = MB / unit.len();
        let text = unit.repeat(n);
        for e in ENCODINGS {
            let ours = count(e, &text);
            let expected = extrapolated(e, unit, n);
            assert!(expected.is_some(), "no period found for {unit:?}");
            assert_eq!(ours, expected, "{} count of 1 MB of {unit:?}", e.name());
            println!("{}: 1 MB of {unit:?} = {} tokens", e.name(), expected.unwrap_or_default());
        }
    }
}

#[test]
fn one_megabyte_of_mixed_text_equals_the_sum_of_its_lines() {
    // Lines end in "\n" and the next starts with a letter, so every piece
    // boundary of the whole is a boundary of the lines: the count of the
    // whole is the sum of tiktoken's counts of the lines.
    let line = "The quick brown fox jumps over the lazy dog; it's 12345 and done!\n";
    let n = (1 << 20) / line.len();
    let text = line.repeat(n);
    for e in ENCODINGS {
        assert_eq!(count(e, &text), Some(n * reference(e, line)), "{}", e.name());
    }
}
