//! Texts shared by the integration tests and the benchmark: the prompts of
//! the shared routing data set when present, and deterministic generated
//! texts (prose, code, many scripts, emoji, whitespace and digit edge cases).

#![allow(dead_code)]

use std::path::PathBuf;

/// Where the shared routing data set is expected: `$TOLLGATE_SHARED_DIR/
/// data/routing/dev.jsonl`, else `../shared` next to the workspace.
pub fn shared_dev_path() -> PathBuf {
    match std::env::var_os("TOLLGATE_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir).join("data/routing/dev.jsonl"),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/routing/dev.jsonl")),
    }
}

/// The prompts of the shared data set, or `None` when it is absent (a clone
/// of the repository alone has no `../shared`).
pub fn shared_prompts() -> Option<Vec<String>> {
    let text = std::fs::read_to_string(shared_dev_path()).ok()?;
    let mut prompts = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        prompts.push(value.get("prompt")?.as_str()?.to_owned());
    }
    Some(prompts)
}

/// A small deterministic generator (64-bit LCG, high bits out).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// `s` cut to at most `len` bytes, at a character boundary.
pub fn cut(mut s: String, len: usize) -> String {
    if s.len() > len {
        let mut end = len;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

pub const PROSE: &[&str] = &[
    "The committee met on Tuesday to review the quarterly budget, and after a long discussion it agreed to postpone the decision until the auditors had finished their report.",
    "Most of the cost of running a language model in production comes from the tokens it reads, not the ones it writes, which is why routing short questions to a smaller model saves so much.",
    "She couldn't remember where she'd left the keys; they weren't on the table, and the drawer was empty.",
    "In 1969, Apollo 11 landed on the Moon, and Neil Armstrong's first words were broadcast to roughly 600 million people.",
    "A careful reader will notice that the argument assumes what it sets out to prove: it's circular.",
    "Photosynthesis converts light energy into chemical energy, storing it in the bonds of glucose molecules.",
    "If the train leaves at 3:45 PM and travels at 80 km/h, how far will it have gone by 6:15 PM?",
    "Please summarize the following email thread and list any action items, with owners and due dates.",
    "The defendant argued that the contract was void because it had been signed under duress.",
    "We'll need at least three volunteers, and I'd rather we didn't ask the same people again.",
    "Explain, step by step, why the derivative of sin(x) is cos(x).",
    "Prices rose 3.2% year over year, the fastest pace since 2008, driven mostly by energy and housing.",
];

pub const CODE: &[&str] = &[
    "fn main() {\n    let values: Vec<u32> = (1..=10).collect();\n    let total: u32 = values.iter().sum();\n    println!(\"total = {total}\");\n}\n",
    "impl<'a> Parser<'a> {\n    pub fn new(input: &'a str) -> Self {\n        Self { input, pos: 0 }\n    }\n}\n",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nprint([fibonacci(i) for i in range(20)])\n",
    "class Stack:\n\tdef __init__(self):\n\t\tself.items = []\n\n\tdef push(self, x):\n\t\tself.items.append(x)\n",
    "const sum = (xs) => xs.reduce((a, b) => a + b, 0);\nconsole.log(`sum: ${sum([1, 2, 3])}`);\n",
    "async function fetchJson(url) {\r\n  const res = await fetch(url, { headers: { 'Accept': 'application/json' } });\r\n  if (!res.ok) throw new Error(res.statusText);\r\n  return res.json();\r\n}\r\n",
    "#include <stdio.h>\n\nint main(int argc, char **argv) {\n    for (int i = 0; i < argc; ++i) {\n        printf(\"%d: %s\\n\", i, argv[i]);\n    }\n    return 0;\n}\n",
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tm := map[string]int{\"a\": 1, \"b\": 2}\n\tfor k, v := range m {\n\t\tfmt.Println(k, v)\n\t}\n}\n",
    "SELECT u.id, u.name, COUNT(o.id) AS orders\nFROM users u\nLEFT JOIN orders o ON o.user_id = u.id\nWHERE u.created_at >= '2024-01-01'\nGROUP BY u.id, u.name\nORDER BY orders DESC\nLIMIT 10;\n",
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Test</title></head>\n<body>\n  <div class=\"main\">&nbsp;Hello&amp;bye</div>\n</body>\n</html>\n",
    "#!/usr/bin/env bash\nset -euo pipefail\nfor f in ./*.log; do\n  gzip -9 \"$f\" && echo \"compressed $f\"\ndone\n",
    "{\"model\": \"gpt-4o\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi!\"}], \"temperature\": 0.2, \"max_tokens\": 256}\n",
    "public static <T extends Comparable<T>> void sort(List<T> list) {\n        Collections.sort(list);\n}\n",
    "    if (x == null) { return; }\n\n\n    // TODO: handle the error   \n    x++;  \n",
];

pub const SCRIPTS: &[&str] = &[
    "中文文本处理需要考虑分词问题，例如“自然语言处理”是一个常见的术语。",
    "日本語の文章には、ひらがな、カタカナ、漢字が混在しています。東京は日本の首都です。",
    "한국어는 한글로 표기하며, 띄어쓰기를 사용합니다. 서울은 대한민국의 수도입니다.",
    "اللغة العربية تكتب من اليمين إلى اليسار، وتحتوي على تشكيل مثل: مُحَمَّدٌ رَسُولُ. الأرقام: ١٢٣٤٥٦",
    "עברית נכתבת מימין לשמאל. שָׁלוֹם עֲלֵיכֶם! ירושלים היא עיר עתיקה.",
    "हिन्दी भारत की एक प्रमुख भाषा है। देवनागरी लिपि में संयुक्ताक्षर जैसे क्ष, त्र, ज्ञ होते हैं। ०१२३४५",
    "ภาษาไทยเขียนโดยไม่เว้นวรรคระหว่างคำ กรุงเทพมหานครเป็นเมืองหลวง",
    "Русский язык использует кириллицу. ЗАГЛАВНЫЕ БУКВЫ и строчные; Москва — столица России.",
    "Η ελληνική γλώσσα έχει μακρά ιστορία. ΑΘΗΝΑ είναι η πρωτεύουσα. ά έ ή ί ό ύ ώ",
    "Tiếng Việt có nhiều dấu: ă â đ ê ô ơ ư, và thanh điệu như à á ả ã ạ.",
    "Ελληνικά, Русский, 中文, العربية, हिन्दी, ไทย, 한국어 — all in one line!",
    "ᚠᚢᚦᚨᚱᚲ ᚷᚹ ·  Ꭰ Ꭱ Ꭲ  ·  ⵜⴰⵎⴰⵣⵉⵖⵜ · ܐܪܡܝܐ · ߒߞߏ",
    "Ａｂｃ　全角スペース　１２３　ｈｔｔｐ：／／",
    "Straße, façade, naïve, Ærøskøbing, Łódź, Čeština, İstanbul, ǅungla",
];

pub const EMOJI: &[&str] = &[
    "Great job! 🎉🎉🎉 Keep going 💪🏽",
    "Family: 👨‍👩‍👧‍👦 👩‍❤️‍💋‍👨 🧑🏿‍🤝‍🧑🏻 — flags: 🇺🇸 🇫🇷 🇯🇵 🇧🇷 🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    "Keycaps 1️⃣ #️⃣ and hearts ❤️ 🧡 💛 and text-style ✔︎ ☺︎",
    "😀😃😄😁😆😅😂🤣🥲☺️😊😇🙂🙃😉😌😍🥰😘",
];

pub const EDGES: &[&str] = &[
    "",
    " ",
    "\n",
    "\r\n",
    "a",
    "<|endoftext|>",
    "<|endoftext|>Hello<|endoftext|> <|endofprompt|> <|fim_prefix|><|fim_middle|><|fim_suffix|>",
    "line one\r\nline two\n\rline three\r\r\n\n\nline four\r\n  \r\n\t\r\n",
    "tabs\tbetween\t\twords\t\t\tand\t \ttrailing\t",
    "non\u{a0}breaking\u{a0}\u{a0}spaces \u{a0}here\u{a0} \u{a0}",
    "line\u{2028}separator\u{2029}paragraph\u{2028}\u{2028}x \u{2028} y",
    "trailing spaces before letters:    x  y   z",
    "   leading spaces",
    "trailing spaces   ",
    "trailing newline\n",
    "trailing spaces then newline   \n",
    "trailing newline then spaces\n   ",
    "digits 0 12 345 6789 01234 567890 1234567890123456789",
    "mixed 12abc 3.14159 2,718,281 1e10 0x1F 0b1010 #42 $1,000.00 -7",
    "Arabic-Indic ٠١٢٣٤٥٦٧٨٩ Devanagari ०१२३४५६७८९ fullwidth ０１２３ Roman ⅠⅡⅢⅣ fractions ½⅓¼ superscripts ²³",
    "contractions: it's IT'S It'S we'll WE'LL We'Ll I'm I'M you're YOU'RE they've THEY'VE she'd SHE'D don't DON'T",
    "lone: 's 'S 't 'T 're 'RE 've 'VE 'm 'M 'll 'LL 'd 'D ' '' ''' 'x 'sa",
    "apostrophes: don’t don‘t don`t don´t donʼt donʹt don＇t 'quoted' \"double\" ‘single’ “curly”",
    "long s: 'ſ Iſ it ſo? the 'ſt",
    "combining: e\u{301} a\u{300}\u{301}\u{302} \u{301}leading Z\u{327}\u{301}Z n\u{303}o \u{20dd}",
    "marks after caps: A\u{301}BC\u{301}d É\u{301}É ÀÀÀ\u{301}x",
    "modifier letters: ʰʲʷ ˢᵘᵖ Xʰ ʰX ʰXX.",
    "titlecase: ǅ ǈ ǋ ǲ ǅa ǅA Aǅ",
    "zero-width: a\u{200b}b\u{200c}c\u{200d}d\u{2060}e\u{feff}f",
    "controls: \u{0}\u{1}\u{7}\u{8}\u{b}\u{c}\u{1b}[0m\u{7f}\u{85}\u{9f}",
    "private use \u{e000}\u{f8ff}\u{f0000}\u{10fffd} replacement \u{fffd}",
    "variation selectors: \u{e0100}\u{e01ef} x\u{e0100}y \u{fe0f}",
    "paths: /usr/local/bin/ C:\\Windows\\System32 ./a/b/../c // /// //\n/\n//",
    "urls: https://example.com/a/b?c=d&e=f#g mailto:someone@example.com",
    "punct runs: !!! ??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}}\n\n",
    "  \n  \n\t\n \t \n",
    "x\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\ny",
    "                                                                         x",
    "wide space:\u{3000}\u{3000}x\u{3000} ogham\u{1680}x en\u{2002}em\u{2003}thin\u{2009}x",
];

/// English-like prose of about `len` bytes.
pub fn prose(len: usize, seed: u64) -> String {
    let mut rng = Lcg::new(seed);
    let mut s = String::new();
    while s.len() < len {
        s.push_str(rng.pick(PROSE));
        s.push_str(if rng.below(4) == 0 { "\n\n" } else { " " });
    }
    cut(s, len)
}

/// Source code of about `len` bytes.
pub fn code(len: usize, seed: u64) -> String {
    let mut rng = Lcg::new(seed);
    let mut s = String::new();
    while s.len() < len {
        s.push_str(rng.pick(CODE));
        s.push('\n');
    }
    cut(s, len)
}

/// Mixed multilingual text of about `len` bytes: scripts, prose, emoji.
pub fn multilingual(len: usize, seed: u64) -> String {
    let mut rng = Lcg::new(seed);
    let mut s = String::new();
    while s.len() < len {
        let part = match rng.below(5) {
            0 | 1 => rng.pick(SCRIPTS),
            2 => rng.pick(PROSE),
            3 => rng.pick(EMOJI),
            _ => rng.pick(EDGES),
        };
        s.push_str(part);
        s.push(' ');
    }
    cut(s, len)
}

/// Every generated text for the corpus test: each fixed text, pairwise
/// joins, and random mixes of fragments of all kinds.
pub fn generated_texts() -> Vec<String> {
    let fixed: Vec<&str> = PROSE.iter().chain(CODE).chain(SCRIPTS).chain(EMOJI).chain(EDGES).copied().collect();
    let mut out: Vec<String> = fixed.iter().map(|s| (*s).to_owned()).collect();
    // Every ordered pair, joined directly and with separators that shift
    // the boundary between the two.
    for a in &fixed {
        for b in &fixed {
            out.push(format!("{a}{b}"));
        }
    }
    for sep in ["\n", " ", "  ", "\r\n", "\t", "'", "'s ", "1", "\u{a0}"] {
        for (i, a) in fixed.iter().enumerate() {
            let b = fixed[(i * 7 + 3) % fixed.len()];
            out.push(format!("{a}{sep}{b}"));
        }
    }
    // Random mixes of fragments, cut at random character boundaries.
    let mut rng = Lcg::new(7);
    for i in 0..2000u64 {
        let len = 1 + rng.below(600);
        let mut s = multilingual(len * 2, i);
        let start = rng.below(s.len().max(1));
        let mut start = start.min(s.len());
        while !s.is_char_boundary(start) {
            start -= 1;
        }
        s.drain(..start);
        out.push(cut(s, len));
    }
    out.push(prose(8192, 1));
    out.push(code(8192, 2));
    out.push(multilingual(8192, 3));
    out
}

/// The kinds of adversarial text, in `adversarial_text`'s order.
pub const ADVERSARIAL: [&str; 6] =
    ["one repeated character (a)", "digits", "spaces", "newlines and spaces", "random Unicode", "one emoji repeated"];

/// The `k`th adversarial text, `len` bytes long.
pub fn adversarial_text(k: usize, len: usize) -> String {
    match k {
        0 => "a".repeat(len),
        1 => "1234567890".repeat(len / 10),
        2 => " ".repeat(len),
        3 => " \n".repeat(len / 2),
        4 => {
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            let mut random = String::new();
            while random.len() < len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if let Some(c) = char::from_u32((state % 0x11_0000) as u32) {
                    random.push(c);
                }
            }
            cut(random, len)
        }
        _ => "\u{1F600}".repeat(len / 4),
    }
}

/// A 4 KB text of each common kind: prose, code, multilingual.
pub fn typical_texts() -> [String; 3] {
    [prose(4096, 1), code(4096, 2), multilingual(4096, 3)]
}

/// Natively, the process's peak resident set (`VmHWM`). In wasm, the size
/// of the instance's linear memory, which never shrinks: its data segments
/// (the tables), stack and heap.
pub fn peak_memory_mib() -> Option<f64> {
    #[cfg(target_arch = "wasm32")]
    {
        Some((core::arch::wasm32::memory_size(0) * 65536) as f64 / (1 << 20) as f64)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}
