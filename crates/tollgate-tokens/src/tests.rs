//! White-box tests: the scanners' piece boundaries against the real regexes
//! (run by fancy-regex, as tiktoken-rs runs them), and the static tables
//! against tiktoken-rs's vocabularies. Count-level tests are in `tests/`.

#![cfg(any(feature = "o200k", feature = "cl100k"))]

// On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crate::pretokenize::{next_cl100k, next_o200k, pieces};
use fancy_regex::Regex;
use proptest::prelude::*;
use std::sync::LazyLock;

/// The cl100k_base pattern exactly as tiktoken-rs 0.12 compiles it (its
/// possessive form, with `\s++$`).
const CL100K_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

fn regex_pieces<'t>(re: &Regex, text: &'t str) -> Vec<&'t str> {
    re.find_iter(text).map(|m| m.unwrap().as_str()).collect()
}

fn o200k_regex() -> &'static Regex {
    static RE: LazyLock<Regex> = LazyLock::new(|| Regex::new(tiktoken_rs::O200K_BASE_PAT_STR).unwrap());
    &RE
}

fn cl100k_regex() -> &'static Regex {
    static RE: LazyLock<Regex> = LazyLock::new(|| Regex::new(CL100K_PATTERN).unwrap());
    &RE
}

fn check_pieces(o200k: &Regex, cl100k: &Regex, text: &str) {
    assert_eq!(pieces(text, next_o200k), regex_pieces(o200k, text), "o200k pieces of {text:?}");
    assert_eq!(pieces(text, next_cl100k), regex_pieces(cl100k, text), "cl100k pieces of {text:?}");
}

/// Hand-picked edge cases, each aimed at one branch of a scanner.
pub(crate) const TRICKY: &[&str] = &[
    "",
    "a",
    " ",
    "\n",
    "hello world",
    "Hello World HELLO WORLD hElLo",
    "don't DON'T Don'T we'll WE'LL I'm I'M you're YOU'RE we've WE'VE he'd HE'D it's IT'S",
    "'s 'S 'll 'LL 'Ll 're 've 'm 'd 't 'x ''s '' '",
    "'ſ ſ 'ſt don'ſ",
    "’s ‘quoted’ “double” don’t",
    "x'sy x's  x'  'sup",
    "12345678901 1 12 123 1234 ١٢٣٤٥ Ⅻ ½¾ 2²",
    "a1b2c3 abc123def 123abc",
    "  leading and trailing  ",
    "trailing spaces before letters   x",
    "tabs\tand\t\tdouble\t\t\tx",
    "\r\n\r\n  \r\n\tx\r\n",
    "a\n\nb\n \nc \n d\n\n\n",
    "line\r\rcr\r \r x",
    "ends with newline\n",
    "ends with spaces and newline  \n",
    "ends with newline and spaces\n  ",
    "ends with spaces   ",
    "nbsp\u{a0}word\u{a0}\u{a0}word \u{a0}x\u{a0}",
    "line sep\u{2028}para sep\u{2029}x\u{2028}\u{2028}y",
    "ideographic\u{3000}space\u{3000}\u{3000}x",
    "nel\u{85}x\u{85}\u{85}",
    "zwsp\u{200b}x\u{200b}\u{200b}",
    "vertical\u{b}tab\u{c}formfeed\u{1c}\u{1f}",
    "!!! ?? ... !?\n\n/// //\n/ /path/to/file.rs\r\n/",
    "a/b/c // comment\n/* block */",
    "<|endoftext|> <|endofprompt|><|fim_prefix|>",
    "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
    "def f(x):\n\treturn x**2  # square\n\n\nclass A:\n    pass\n",
    "SELECT * FROM users WHERE id = 42;\n",
    "<div class=\"a\">&nbsp;</div>",
    "中文文本，包括标点。日本語のテキスト、カタカナ。한국어 텍스트입니다.",
    "العربية نص مع أرقام ١٢٣ و تشكيل: مُحَمَّد",
    "עברית עם ניקוד: שָׁלוֹם",
    "हिन्दी पाठ, देवनागरी लिपि में।",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Русский текст, ЗАГЛАВНЫЕ буквы и Смешанный Регистр.",
    "Ελληνικά κείμενα ΚΕΦΑΛΑΙΑ",
    "emoji 😀😃 👍🏽 👨‍👩‍👧‍👦 🇺🇸🇫🇷 ❤️ ✔︎",
    "combining: e\u{301}e\u{301}\u{301} \u{301}start A\u{301}B \u{301}\u{301}",
    "\u{301}AB. \u{301}ABc \u{2b0}BBB. x\u{2b0}Y",
    "ǅungla ǈ ǋ ǲ Titlecase ǅǅ",
    "ʰʰʰ ˢup ᵃᵇᶜ Ⅷ",
    "MixedCASEWordsAndCamelCaseHTTPServer XMLHttpRequest",
    "ABCdef ABC'S abc'S A'LL ÀÉÎ'd",
    "\u{0}\u{1}\u{7f}\u{80}\u{9f}",
    "\u{feff}bom\u{fffd}\u{e000}\u{10ffff}",
    "\u{e0100}\u{e0101} x\u{e0100}y",
    "  \u{301}  '  's  \n's",
    "1,000,000.00 $3.50 -42 +7 3.14e-10",
    "http://example.com/path?q=1&r=2#frag",
    "    indented\n        more\n\t\tmixed \t \n",
];

#[test]
fn tricky_pieces_match_the_regexes() {
    let (o, c) = (o200k_regex(), cl100k_regex());
    for text in TRICKY {
        check_pieces(o, c, text);
    }
}

/// Every pair and triple of characters from a small alphabet that covers
/// every class and every character a scanner tests by value.
#[test]
fn all_short_combinations_match_the_regexes() {
    let (o, c) = (o200k_regex(), cl100k_regex());
    let mut text = String::new();
    for a in ALPHABET {
        for b in ALPHABET {
            text.clear();
            text.push(*a);
            text.push(*b);
            check_pieces(o, c, &text);
            for d in ALPHABET {
                text.truncate(a.len_utf8() + b.len_utf8());
                text.push(*d);
                check_pieces(o, c, &text);
            }
        }
    }
}

const ALPHABET: &[char] = &[
    'a', 'Z', 's', 'S', 'l', 'e', 'ſ', '\'', '1', '١', ' ', '\t', '\n', '\r', '\u{a0}', '/', '!', '\u{301}', 'ǅ', 'ʰ',
    '中', '😀', '\u{200b}',
];

fn tricky_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(ALPHABET), 0..40).prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_tricky_pieces_match_the_regexes(text in tricky_text()) {
        let (o, c) = (o200k_regex(), cl100k_regex());
        check_pieces(o, c, &text);
    }

    #[test]
    fn random_unicode_pieces_match_the_regexes(text in "\\PC{0,60}") {
        let (o, c) = (o200k_regex(), cl100k_regex());
        check_pieces(o, c, &text);
    }

    #[test]
    fn random_any_char_pieces_match_the_regexes(chars in prop::collection::vec(any::<char>(), 0..40)) {
        let text: String = chars.into_iter().collect();
        let (o, c) = (o200k_regex(), cl100k_regex());
        check_pieces(o, c, &text);
    }
}

/// Each character between letters of both cases and a space splits as the
/// regexes say: this checks every class of every character of planes 0 to 3
/// (where all assigned letters, marks and numbers are), and a sample of the
/// rest, which holds only tags, variation selectors and private use.
#[test]
fn every_character_matches_the_regexes() {
    let (o, c) = (o200k_regex(), cl100k_regex());
    let mut batch = String::new();
    let mut n = 0;
    let sampled = (0..=0x10FFFFu32).filter(|&cp| cp < 0x40000 || (0xE0000..0xE0200).contains(&cp) || cp % 61 == 0);
    for ch in sampled.filter_map(char::from_u32) {
        // Mix each character with neighbours of several classes.
        batch.push(ch);
        batch.push('a');
        batch.push(ch);
        batch.push('Q');
        batch.push(ch);
        batch.push(' ');
        n += 1;
        if n % 4096 == 0 {
            check_pieces(o, c, &batch);
            batch.clear();
        }
    }
    check_pieces(o, c, &batch);
}

fn check_vocab(vocab: &crate::vocab::Vocab, bpe: &tiktoken_rs::CoreBPE) {
    let tokens = vocab.tokens();
    let specials = bpe.special_tokens();
    let mut expected = 0;
    for rank in 0..300_000 {
        if let Ok(bytes) = bpe.decode_bytes(&[rank]) {
            if std::str::from_utf8(&bytes).is_ok_and(|s| specials.contains(s)) {
                continue;
            }
            expected += 1;
            assert_eq!(vocab.rank(&bytes), Some(rank));
        }
    }
    assert_eq!(tokens.len(), expected);
    for (bytes, rank) in tokens {
        assert_eq!(bpe.decode_bytes(&[rank]).unwrap(), bytes);
        assert_eq!(vocab.rank(bytes), Some(rank));
        // A near miss is not found.
        let mut longer = bytes.to_vec();
        longer.push(0xFF);
        assert_eq!(vocab.rank(&longer), None);
    }
    for special in specials {
        assert_eq!(vocab.rank(special.as_bytes()), None);
    }
    assert_eq!(vocab.rank(b""), None);
    assert_eq!(vocab.rank(&[b'a'; 200]), None);
}

#[cfg(feature = "o200k")]
#[test]
fn o200k_table_is_tiktokens_vocabulary() {
    check_vocab(&crate::O200K, tiktoken_rs::o200k_base_singleton());
}

#[cfg(feature = "cl100k")]
#[test]
fn cl100k_table_is_tiktokens_vocabulary() {
    check_vocab(&crate::CL100K, tiktoken_rs::cl100k_base_singleton());
}
