//! The single-pass byte scanner: words, numbers, punctuation and scripts,
//! counted into a [`Counts`].

use super::counts::Counts;
use super::keywords::{Keyword, Kw, lookup};

/// Single-pass byte scanner filling a [`Counts`].
pub(super) struct Scanner {
    /// Look words up in the keyword table.
    keywords: bool,
    c: Counts,
    /// Tokens seen on the current line so far.
    line_tokens: u32,
    line_indent: u32,
    line_last: u8,
    /// The counts as they were when an answer-option block ("A. …") started.
    stem: Option<Counts>,
    /// The current line is an answer option.
    option_line: bool,
    /// Words after the options started that are not on an option line.
    words_after_options: u32,
    /// The previous word's keyword (`Kw::Number` for a number).
    prev_kw: Kw,
    /// Where the two previous words start in the current chunk, most recent
    /// first ([`NO_WORD`] if none), for phrases completed by looking back.
    prev_words: [usize; 2],
    /// A phrase opened by the previous word.
    pending: Pending,
    /// The previous token is an operand (number, one-letter variable, `)`).
    operand_before: bool,
    /// The previous operand was a number.
    number_before: bool,
    /// Where the last Greek letter ended in the current chunk.
    greek_end: usize,
    /// An operator followed an operand; counted if an operand follows.
    pending_op: bool,
}

impl Scanner {
    /// A scanner; `keywords: false` skips keyword lookups (for context turns,
    /// where only code and maths syntax count).
    pub(super) fn new(keywords: bool) -> Self {
        Scanner {
            keywords,
            c: Counts::default(),
            line_tokens: 0,
            line_indent: 0,
            line_last: b'\n',
            stem: None,
            option_line: false,
            words_after_options: 0,
            prev_kw: Kw::None,
            prev_words: [NO_WORD; 2],
            pending: Pending::None,
            operand_before: false,
            number_before: false,
            greek_end: usize::MAX,
            pending_op: false,
        }
    }

    pub(super) fn feed(&mut self, t: &[u8]) {
        // Word positions refer to the chunk they were seen in.
        self.forget_words();
        self.greek_end = usize::MAX;
        let n = t.len();
        let mut i = 0;
        while i < n {
            let b = t[i];
            if b == b' ' {
                if self.line_tokens == 0 {
                    self.line_indent += 1;
                }
                i += 1;
                continue;
            }
            if b.is_ascii_alphabetic() {
                let start = i;
                i = word_end(t, i + 1);
                self.word(t, start, i);
                continue;
            }
            if b.is_ascii_digit() {
                i += 1;
                loop {
                    while i < n && t[i].is_ascii_digit() {
                        i += 1;
                    }
                    if i + 1 < n && (t[i] == b'.' || t[i] == b',') && t[i + 1].is_ascii_digit() {
                        i += 2;
                        continue;
                    }
                    break;
                }
                self.number(t.get(i).copied(), t.get(i + 1).copied());
                continue;
            }
            if b >= 0x80 {
                i += self.non_ascii(t, i);
                continue;
            }
            i += self.punct(t, i);
        }
    }

    /// Handles the ASCII non-alphanumeric byte at `t[i]`; returns bytes consumed.
    fn punct(&mut self, t: &[u8], i: usize) -> usize {
        let b = t[i];
        let next = t.get(i + 1).copied();
        match b {
            b'\n' => {
                self.end_line();
                return 1;
            }
            b' ' | b'\r' | 0x0c | 0x0b => {
                if self.line_tokens == 0 {
                    self.line_indent += 1;
                }
                return 1;
            }
            b'\t' => {
                if self.line_tokens == 0 {
                    self.line_indent += 4;
                }
                return 1;
            }
            _ => {}
        }
        let first_on_line = self.line_tokens == 0;
        let before = self.line_last;
        self.line_tokens += 1;
        self.line_last = b;

        // Line-start shapes: bullets and "(A)" options.
        if first_on_line {
            if matches!(b, b'-' | b'*' | b'+') && is_blank(next) {
                self.c.list_items += 1;
                self.clear_operands();
                return 1;
            }
            if b == b'('
                && let (Some(l @ b'A'..=b'J'), Some(b')')) = (next, t.get(i + 2).copied())
            {
                self.option_line(l);
                return 3;
            }
        }

        match b {
            b'`' => {
                let run = t[i..].iter().take_while(|&&x| x == b'`').count();
                if run >= 3 {
                    self.c.fences += 1;
                } else {
                    self.c.inline_code += 1;
                }
                self.clear_operands();
                run
            }
            b'\\' => {
                let letters = t[i + 1..].iter().take_while(|x| x.is_ascii_alphabetic()).count();
                if letters >= 2 {
                    self.c.latex += 1;
                }
                self.clear_operands();
                1 + letters
            }
            b'{' | b'}' => {
                if b == b'{' && next == Some(b'}') {
                    self.c.code_ops += 1;
                    self.clear_operands();
                    return 2;
                }
                // `) {`, `= {`, `=> {` open code blocks and literals; a brace
                // elsewhere mid-line may be a set ("{1, 2}") or a template.
                if b == b'{' && matches!(before, b')' | b'=' | b'>') {
                    self.c.code_punct += 1;
                }
                self.clear_operands();
                1
            }
            b'=' | b'-' | b'<' | b'>' | b':' | b'&' | b'|' | b'+' | b'*' | b'/' | b'^' | b'[' => {
                // "//" after ':' is a URL ("https://"), not a comment.
                if let Some(n2) = next
                    && is_code_op(b, n2)
                    && !(b == b'/' && n2 == b'/' && i > 0 && t[i - 1] == b':')
                {
                    self.c.code_ops += 1;
                    self.clear_operands();
                    return 2;
                }
                match b {
                    b'=' | b'-' | b'<' | b'>' | b'+' | b'*' | b'/' | b'^' => {
                        // "<=" and ">=" are one relational operator.
                        let width = if matches!(b, b'<' | b'>') && next == Some(b'=') { 2 } else { 1 };
                        // "3-4pm", "pages 10-20": a range, not a subtraction.
                        let range = b == b'-' && self.number_before && i > 0 && t[i - 1].is_ascii_digit();
                        if range {
                            self.clear_operands();
                        } else if self.operand_before {
                            self.pending_op = true;
                            self.operand_before = false;
                        } else if b == b'-' {
                            // Leading minus: "= -3" keeps the pending operator.
                        } else {
                            self.pending_op = false;
                        }
                        width
                    }
                    _ => {
                        self.clear_operands();
                        1
                    }
                }
            }
            b'(' => {
                // "(i)", "(ii)", "(iv)": inline enumerated parts.
                let roman = t[i + 1..].iter().take_while(|x| matches!(x, b'i' | b'v' | b'x')).count();
                if (1..=4).contains(&roman) && t.get(i + 1 + roman) == Some(&b')') {
                    self.c.part_markers += 1;
                }
                self.operand_start();
                self.operand_before = false;
                1
            }
            b')' => {
                self.operand_before = true;
                self.number_before = false;
                1
            }
            b'?' => {
                if i == 0 || t[i - 1] != b'?' {
                    self.c.questions += 1;
                    self.c.sentences += 1;
                }
                self.clear_operands();
                1
            }
            b'!' if next == Some(b'=') => {
                self.c.code_ops += 1;
                self.clear_operands();
                2
            }
            b'.' | b'!' => {
                let after_letter = i > 0 && t[i - 1].is_ascii_alphabetic();
                if after_letter && is_blank(next) {
                    self.c.sentences += 1;
                }
                self.clear_operands();
                1
            }
            // Transparent around numbers: "$5 + $3", "20% - 5%".
            b'$' | b'%' => 1,
            _ => {
                self.clear_operands();
                1
            }
        }
    }

    fn clear_operands(&mut self) {
        self.operand_before = false;
        self.number_before = false;
        self.pending_op = false;
    }

    /// An operand starts: completes a pending "operand op operand".
    fn operand_start(&mut self) {
        if self.pending_op {
            self.c.math_ops += 1;
            self.pending_op = false;
        }
    }

    fn option_line(&mut self, letter: u8) {
        if letter == b'A' && self.stem.is_none() {
            self.stem = Some(self.c);
        }
        self.c.option_lines += 1;
        self.option_line = true;
        self.forget_words();
        self.clear_operands();
    }

    pub(super) fn end_line(&mut self) {
        if self.line_tokens > 0 {
            if matches!(self.line_last, b';' | b'{' | b'}') {
                self.c.code_line_ends += 1;
            }
            if self.line_indent >= 4 {
                self.c.indented_lines += 1;
            }
        }
        self.line_tokens = 0;
        self.line_indent = 0;
        self.option_line = false;
        self.line_last = b'\n';
        self.clear_operands();
    }

    pub(super) fn finish(mut self) -> Counts {
        self.end_line();
        if let Some(stem) = self.stem.take() {
            // A trailing "Answer:" is fine; more text means the lettered
            // lines were not the answer options of a final question.
            if self.c.option_lines >= 2 && self.words_after_options <= 3 {
                let option_lines = self.c.option_lines;
                self.c = stem;
                self.c.option_lines = option_lines;
                self.c.answer_choices = true;
            }
        }
        let mut c = self.c;
        if c.greek > 0 {
            // Lone Greek letters are symbols (α + β = π), Greek words a language.
            if c.greek_pairs * 2 < c.greek {
                c.math_symbols += c.greek;
            } else {
                c.non_latin += c.greek;
            }
            c.greek = 0;
        }
        c
    }

    fn number(&mut self, next: Option<u8>, next2: Option<u8>) {
        let first_on_line = self.line_tokens == 0;
        self.line_tokens += 1;
        self.line_last = b'0';
        if first_on_line && matches!(next, Some(b'.' | b')')) && is_blank(next2) {
            self.c.list_items += 1;
            self.forget_words();
            self.clear_operands();
            return;
        }
        self.operand_start();
        self.operand_before = true;
        self.number_before = true;
        if self.prev_kw == Kw::PartNoun {
            // "Statement 2", "Scenario 1".
            self.c.part_markers += 1;
        }
        self.prev_kw = Kw::Number;
        self.prev_words = [NO_WORD, self.prev_words[0]];
        self.pending = Pending::None;
    }

    fn word(&mut self, t: &[u8], start: usize, end: usize) {
        let w = &t[start..end];
        let first_on_line = self.line_tokens == 0;
        self.line_tokens += 1;
        self.line_last = b'a';
        self.c.words += 1;
        self.c.ascii_letters += w.len() as u32;

        let single = w.len() == 1;
        if single {
            self.operand_start();
        } else {
            self.pending_op = false;
        }
        self.operand_before = single;
        self.number_before = false;

        if first_on_line {
            let next = t.get(end).copied();
            let closes = matches!(next, Some(b'.' | b')')) && is_blank(t.get(end + 1).copied());
            if closes && is_roman(w) && (w != b"I" || self.stem.is_none()) {
                self.c.roman_items += 1;
                self.forget_words();
                self.operand_before = false;
                return;
            }
            if closes && single && matches!(w[0], b'A'..=b'J') {
                self.option_line(w[0]);
                return;
            }
            if is_line_code_keyword(w) && matches!(next, Some(b' ' | b'(' | b':' | b'\n') | None) {
                self.c.code_keywords += 1;
            }
        }
        if self.stem.is_some() && !self.option_line {
            self.words_after_options += 1;
        }
        if !self.keywords {
            return;
        }

        let pending = std::mem::replace(&mut self.pending, Pending::None);
        if pending != Pending::None {
            self.resolve(pending, w);
        }
        if self.c.words == 1 {
            self.first_word(w);
        }

        let entry = lookup(t, start, end);
        let kw = entry.1;
        if kw != Kw::None {
            self.keyword(t, start, end, entry);
        }
        if self.prev_kw == Kw::PartNoun && is_roman(w) && w[0].is_ascii_uppercase() {
            self.c.part_markers += 1;
        }
        self.prev_kw = kw;
        self.prev_words = [start, self.prev_words[0]];
    }

    /// Counts the keyword `t[start..end]`.
    fn keyword(&mut self, t: &[u8], start: usize, end: usize, entry: &'static Keyword) {
        let w = &t[start..end];
        match entry.1 {
            Kw::None | Kw::Number => {}
            Kw::Reason => self.reason(entry.2),
            Kw::Ask => self.ask(entry.2),
            Kw::Constraint => self.constraint(),
            Kw::Code => {
                // `#include`, `#define`, … count twice: unmistakable.
                let hash = start > 0 && t[start - 1] == b'#';
                self.c.code_keywords += if hash { 2 } else { 1 };
            }
            Kw::Sql => {
                if w.iter().all(u8::is_ascii_uppercase) {
                    self.c.code_keywords += 1;
                }
            }
            Kw::Prog => self.c.prog_terms += 1,
            Kw::ProgWeak => self.c.prog_terms_weak += 1,
            Kw::MathWord => self.c.math_words += 1,
            Kw::Foreign => self.c.foreign_words += 1,
            Kw::PartNoun => {}
            // Phrases: a rarer word either opens a phrase that the next
            // word completes, or completes one by looking back.
            Kw::Explain => {
                self.weak_ask("to explain");
                self.pending = Pending::Explain;
            }
            Kw::WeakAsk => self.weak_ask(entry.2),
            Kw::Show => self.pending = Pending::Show,
            Kw::Walk => self.pending = Pending::Walk,
            Kw::Pros => self.pending = Pending::Pros,
            Kw::Difference => self.pending = Pending::Difference,
            Kw::Capital => self.pending = Pending::Capital,
            Kw::Step => {
                if self.prev_is(t, 0, b"by") && self.prev_is(t, 1, b"step") {
                    self.ask("for step-by-step reasoning");
                }
            }
            Kw::Detail => {
                if self.prev_is(t, 0, b"in") {
                    self.weak_ask("for detail");
                }
            }
            Kw::Least | Kw::Most => {
                if self.prev_is(t, 0, b"at") {
                    self.constraint();
                }
            }
            Kw::Not => {
                if self.prev_is(t, 0, b"do") {
                    self.constraint();
                }
            }
            Kw::Don => {
                let rest = &t[end..];
                if rest.starts_with(b"'t") || rest.starts_with("\u{2019}t".as_bytes()) {
                    self.constraint();
                }
            }
            Kw::Than => {
                if self.prev_is(t, 0, b"more") && self.prev_is(t, 1, b"no") {
                    self.constraint();
                }
            }
            Kw::Sure => {
                if self.prev_is(t, 0, b"make") {
                    self.constraint();
                }
            }
            Kw::Off => {
                if self.prev_is(t, 0, b"trade") {
                    self.reason("weigh trade-offs");
                }
            }
        }
    }

    /// Whether the `k`-th previous word (0 = the last one) is `lit`, ignoring case.
    fn prev_is(&self, t: &[u8], k: usize, lit: &[u8]) -> bool {
        let start = self.prev_words[k];
        let end = start.saturating_add(lit.len());
        match t.get(start..end) {
            Some(word) => word.eq_ignore_ascii_case(lit) && !t.get(end).is_some_and(|&b| WORD_BYTE[usize::from(b)]),
            None => false,
        }
    }

    /// Completes a phrase opened by the previous word.
    fn resolve(&mut self, pending: Pending, w: &[u8]) {
        let is = |lit: &[u8]| w.eq_ignore_ascii_case(lit);
        match pending {
            Pending::None => {}
            Pending::Explain => {
                // "explain why/how" upgrades the half-strength "explain".
                if is(b"why") || is(b"how") {
                    self.c.weak_asks = self.c.weak_asks.saturating_sub(1);
                    self.ask(if is(b"why") { "to explain why" } else { "to explain how" });
                }
            }
            Pending::Show => {
                if is(b"that") {
                    self.ask("to show that");
                }
            }
            Pending::Walk => {
                if is(b"me") {
                    self.pending = Pending::WalkMe;
                } else if is(b"through") {
                    self.ask("for a walk-through");
                }
            }
            Pending::WalkMe => {
                if is(b"through") {
                    self.ask("for a walk-through");
                }
            }
            Pending::Pros => {
                if is(b"and") {
                    self.pending = Pending::ProsAnd;
                }
            }
            Pending::ProsAnd => {
                if is(b"cons") {
                    self.ask("for pros and cons");
                }
            }
            Pending::Difference => {
                if is(b"between") {
                    self.ask("to compare");
                }
            }
            Pending::Capital => {
                if is(b"of") {
                    self.c.capital_of = true;
                }
            }
            Pending::How => {
                if matches_any(w, &[b"many", b"much", b"old", b"long", b"far", b"tall", b"big", b"large", b"high"]) {
                    self.c.factual_start = true;
                }
            }
        }
    }

    /// The first word of the text: the shape of a factual question.
    fn first_word(&mut self, w: &[u8]) {
        if matches_any(w, &[b"who", b"what", b"when", b"where", b"which", b"whose", b"whom"]) {
            self.c.factual_start = true;
        } else if w.eq_ignore_ascii_case(b"why") {
            self.weak_ask("why");
        } else if w.eq_ignore_ascii_case(b"how") {
            self.pending = Pending::How;
        }
    }

    fn forget_words(&mut self) {
        self.prev_kw = Kw::None;
        self.prev_words = [NO_WORD; 2];
        self.pending = Pending::None;
    }

    fn constraint(&mut self) {
        self.c.constraint_words += 1;
    }

    fn reason(&mut self, label: &'static str) {
        self.c.reasoning += 1;
        self.c.first_reason.get_or_insert(label);
    }

    fn ask(&mut self, label: &'static str) {
        self.c.asks += 1;
        self.c.first_ask.get_or_insert(label);
    }

    fn weak_ask(&mut self, label: &'static str) {
        self.c.weak_asks += 1;
        self.c.first_weak_ask.get_or_insert(label);
    }

    /// Handles the non-ASCII character starting at `t[i]`; returns its width.
    fn non_ascii(&mut self, t: &[u8], i: usize) -> usize {
        let lead = t[i];
        // Fast path for runs of CJK ideographs (U+4000–U+9FFF, lead bytes
        // E4–E9) and Cyrillic (U+0400–U+052F, lead bytes D0–D4): no decoding.
        let width = match lead {
            0xE4..=0xE9 => 3,
            0xD0..=0xD4 => 2,
            _ => 0,
        };
        if width > 0 && t.get(i + 1..i + width).is_some_and(|c| c.iter().all(|&b| b & 0xC0 == 0x80)) {
            self.line_tokens += 1;
            self.line_last = b'a';
            self.c.non_latin += 1;
            self.clear_operands();
            return width;
        }
        let (width, init) = match lead {
            0xC0..=0xDF => (2, u32::from(lead & 0x1F)),
            0xE0..=0xEF => (3, u32::from(lead & 0x0F)),
            0xF0..=0xF7 => (4, u32::from(lead & 0x07)),
            // A stray continuation byte (a slice cut mid-character).
            _ => return 1,
        };
        let mut cp = init;
        for k in 1..width {
            match t.get(i + k) {
                Some(&cont) if cont & 0xC0 == 0x80 => cp = (cp << 6) | u32::from(cont & 0x3F),
                _ => return k,
            }
        }
        let first_on_line = self.line_tokens == 0;
        self.line_tokens += 1;
        self.line_last = b'a';
        match script(cp) {
            Script::LatinExt => self.c.latin_ext += 1,
            Script::Greek => {
                self.c.greek += 1;
                if self.greek_end == i {
                    self.c.greek_pairs += 1;
                }
                self.greek_end = i + width;
            }
            Script::NonLatin => self.c.non_latin += 1,
            Script::MathSymbol => self.c.math_symbols += 1,
            Script::Bullet => {
                if first_on_line {
                    self.c.list_items += 1;
                }
            }
            Script::Other => {}
        }
        self.clear_operands();
        width
    }
}

fn is_blank(b: Option<u8>) -> bool {
    matches!(b, None | Some(b' ' | b'\t' | b'\n' | b'\r'))
}

fn is_code_op(a: u8, b: u8) -> bool {
    matches!(
        (a, b),
        (b'=', b'=')
            | (b'!', b'=')
            | (b'-', b'>')
            | (b'=', b'>')
            | (b':', b':')
            | (b'&', b'&')
            | (b'|', b'|')
            | (b'+', b'=')
            | (b'-', b'=')
            | (b'*', b'=')
            | (b'/', b'=')
            | (b'+', b'+')
            | (b'/', b'/')
            | (b'/', b'*')
            | (b'*', b'/')
            | (b'<', b'/')
            | (b'/', b'>')
            | (b'[', b']')
    )
}

fn is_roman(w: &[u8]) -> bool {
    matches!(
        w,
        b"I" | b"II" | b"III" | b"IV" | b"V" | b"VI" | b"VII" | b"VIII" | b"IX" | b"X" | b"i" | b"ii" | b"iii" | b"iv"
    )
}

/// Lower-case words that start a line of code far more often than a line of prose.
fn is_line_code_keyword(w: &[u8]) -> bool {
    matches!(
        w,
        b"return"
            | b"import"
            | b"class"
            | b"def"
            | b"print"
            | b"const"
            | b"var"
            | b"fn"
            | b"pub"
            | b"func"
            | b"public"
            | b"private"
            | b"protected"
            | b"static"
            | b"elif"
            | b"else"
            | b"try"
            | b"except"
            | b"catch"
            | b"finally"
            | b"struct"
            | b"impl"
            | b"export"
            | b"package"
            | b"async"
            | b"await"
            | b"int"
            | b"void"
            | b"while"
            | b"for"
            | b"if"
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    LatinExt,
    Greek,
    NonLatin,
    MathSymbol,
    Bullet,
    Other,
}

fn script(cp: u32) -> Script {
    match cp {
        0xD7 | 0xF7 | 0xB1 | 0xB2 | 0xB3 | 0xB9 | 0xBC..=0xBE | 0xAC => Script::MathSymbol,
        0xC0..=0x24F => Script::LatinExt,
        0x370..=0x3FF | 0x1F00..=0x1FFF => Script::Greek,
        0x400..=0x1DFF => Script::NonLatin,
        0x1E00..=0x1EFF => Script::LatinExt,
        0x2022 => Script::Bullet,
        0x2070..=0x209F | 0x2200..=0x22FF | 0x27C0..=0x27EF | 0x2980..=0x2AFF | 0x1D400..=0x1D7FF => Script::MathSymbol,
        0x3040..=0x9FFF | 0xA000..=0xA4CF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF | 0x20000..=0x3FFFF => Script::NonLatin,
        _ => Script::Other,
    }
}

/// A phrase opened by the previous word, waiting for the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    /// "explain" → why/how
    Explain,
    /// "show" → that
    Show,
    /// "walk" → (me) through
    Walk,
    WalkMe,
    /// "pros" → and cons
    Pros,
    ProsAnd,
    /// "difference(s)" → between
    Difference,
    /// "capital" → of
    Capital,
    /// "how" as the first word → many/much/old…
    How,
}

/// No previous word.
const NO_WORD: usize = usize::MAX;

fn matches_any(w: &[u8], words: &[&[u8]]) -> bool {
    words.iter().any(|x| w.eq_ignore_ascii_case(x))
}

/// The end of the word whose remaining bytes start at `t[i]`: eight bytes at
/// a time without a branch per byte (a branch per byte mispredicts at the end
/// of nearly every word, which dominated the scan).
pub(super) fn word_end(t: &[u8], mut i: usize) -> usize {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const ONES: u64 = 0x0101_0101_0101_0101;
    /// High bit set in each byte of `y` (all < 0x80) that is ≥ `lo`.
    const fn at_least(y: u64, lo: u8) -> u64 {
        ((y | HIGH) - ONES * lo as u64) & HIGH
    }
    // Letters eight at a time; a digit or `_` (rare inside words) ends the
    // fast path and the byte loop below finishes the word.
    while i + 8 <= t.len() {
        let mut chunk = [0u8; 8];
        chunk.copy_from_slice(&t[i..i + 8]);
        let x = u64::from_le_bytes(chunk);
        let lower = (x & LOW7) | (ONES * 0x20);
        // ASCII only: a byte with the high bit set is never part of a word.
        let letter = at_least(lower, b'a') & !at_least(lower, b'z' + 1) & !x;
        let run = (!letter & HIGH).trailing_zeros() / 8;
        i += run as usize;
        if run < 8 {
            break;
        }
    }
    while i < t.len() && WORD_BYTE[usize::from(t[i])] {
        i += 1;
    }
    i
}

/// Bytes that continue a word: ASCII letters, digits and `_`.
pub(super) static WORD_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric() || b == b'_' as usize;
        b += 1;
    }
    table
};
