//! Hand-written pre-tokenisers that split text exactly where tiktoken-rs's
//! regexes (run by fancy-regex, leftmost-first with backtracking) split it.
//!
//! Every function takes the text as bytes of a `&str` and a character
//! boundary `p < len`, and returns the end of the piece that starts at `p`.
//! Each regex can match at every position (every character is a letter, a
//! number, whitespace or "other", and some alternative takes each), and no
//! alternative matches the empty string, so the pieces tile the text and a
//! scanner only needs "where does the match starting here end".
//!
//! Below, `L`, `N`, `\s` are the regex classes; `P` is `[^\s\p{L}\p{N}]`
//! ("punctuation": other characters and, as `\p{M}` is not `\p{L}`, marks).
//!
//! Every scan is linear in what it reads, and what it reads beyond the piece
//! it returns is always a run that the next one or two pieces consume whole,
//! so a whole text is scanned in linear time.

use crate::shared::class::{LL, LO, LU, MARK, NUM, OTHER, WS};
use crate::unicode::class_at;

const fn bit(c: u8) -> u32 {
    1 << c
}

/// `\p{L}`.
const LETTER: u32 = bit(LL) | bit(LU) | bit(LO);
/// `[^\s\p{L}\p{N}]`.
const PUNCT: u32 = bit(OTHER) | bit(MARK);
/// o200k's `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`.
const UPPER: u32 = bit(LU) | bit(LO) | bit(MARK);
/// o200k's `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`.
const LOWER: u32 = bit(LL) | bit(LO) | bit(MARK);

#[inline(always)]
fn is(class: u8, set: u32) -> bool {
    set & (1u32 << (class & 31)) != 0
}

/// End of the run of characters whose class is in `set`, from `i`.
#[inline(always)]
fn run(s: &[u8], mut i: usize, set: u32) -> usize {
    while i < s.len() {
        let (c, l) = class_at(s, i);
        if !is(c, set) {
            break;
        }
        i += l;
    }
    i
}

/// End of the run of bytes in `bytes` (all ASCII), from `i`.
#[inline(always)]
fn byte_run(s: &[u8], mut i: usize, bytes: &[u8]) -> usize {
    while s.get(i).is_some_and(|b| bytes.contains(b)) {
        i += 1;
    }
    i
}

/// `\p{N}{1,3}` after the first number, which ends at `i`.
#[inline(always)]
fn numbers(s: &[u8], mut i: usize) -> usize {
    for _ in 0..2 {
        if i >= s.len() {
            break;
        }
        let (c, l) = class_at(s, i);
        if c != NUM {
            break;
        }
        i += l;
    }
    i
}

/// Given an apostrophe ending at `i`, the end of `(?i:s|t|re|ve|m|ll|d)`
/// when it matches at `i`. Case-insensitively these letters match only their
/// ASCII pair, plus U+017F LATIN SMALL LETTER LONG S for `s` (the build script
/// checks this against regex-syntax's case folding).
#[inline]
fn contraction(s: &[u8], i: usize) -> Option<usize> {
    let b = *s.get(i)?;
    match b | 0x20 {
        b's' | b't' | b'm' | b'd' => Some(i + 1),
        b'l' => ((s.get(i + 1)? | 0x20) == b'l').then_some(i + 2),
        b'r' | b'v' => ((s.get(i + 1)? | 0x20) == b'e').then_some(i + 2),
        // U+017F is C5 BF in UTF-8.
        _ => (b == 0xC5 && s.get(i + 1) == Some(&0xBF)).then_some(i + 2),
    }
}

/// `e`, extended by an optional trailing contraction (o200k).
#[inline(always)]
fn with_contraction(s: &[u8], e: usize) -> usize {
    if s.get(e) == Some(&b'\'') { contraction(s, e + 1).unwrap_or(e) } else { e }
}

/// The piece of `cl100k_base` starting at `p`. The regex, as tiktoken-rs
/// compiles it:
///
/// ```text
/// '(?i:[sdmt]|ll|ve|re)            1
/// |[^\r\n\p{L}\p{N}]?+\p{L}++      2
/// |\p{N}{1,3}+                     3
/// | ?[^\s\p{L}\p{N}]++[\r\n]*+     4
/// |\s++$                           5
/// |\s*[\r\n]                       6
/// |\s+(?!\S)                       7
/// |\s                              8
/// ```
pub(crate) fn next_cl100k(s: &[u8], p: usize) -> usize {
    let n = s.len();
    let b = s.get(p).copied().unwrap_or(0);
    let (c, l) = class_at(s, p);
    let q = p + l;
    // 1: an apostrophe and a contraction.
    if b == b'\''
        && let Some(e) = contraction(s, q)
    {
        return e;
    }
    // 2 without the optional prefix: letters. (The prefix class excludes
    // letters, so a letter here can only start the letter run.)
    if is(c, LETTER) {
        return run(s, q, LETTER);
    }
    // 3: a number (the prefix class of 2 excludes numbers, so 2 cannot match).
    if c == NUM {
        return numbers(s, q);
    }
    // 2 with the prefix: one character that is not \r, \n, L or N, then
    // letters. Possessive `?+`: once taken the prefix is kept, and without it
    // the run would have to start at a non-letter, so either way 2 fails if no
    // letter follows.
    if b != b'\r' && b != b'\n' && q < n {
        let (c2, l2) = class_at(s, q);
        if is(c2, LETTER) {
            return run(s, q + l2, LETTER);
        }
    }
    // 4: an optional space, punctuation, then \r and \n.
    if is(c, PUNCT) {
        return byte_run(s, run(s, q, PUNCT), b"\r\n");
    }
    if b == b' ' && q < n {
        let (c2, l2) = class_at(s, q);
        if is(c2, PUNCT) {
            return byte_run(s, run(s, q + l2, PUNCT), b"\r\n");
        }
    }
    // Only whitespace is left: c == WS.
    let ws = whitespace_run(s, p);
    if ws.end == n {
        // 5: the run reaches the end of the text.
        return n;
    }
    if let Some(e) = ws.newline_end {
        // 6: greedy \s* gives back characters until one is \r or \n.
        return e;
    }
    if ws.last_start > p {
        // 7: all but the last character, which (being whitespace) satisfies
        // the look-ahead; the last one is followed by non-whitespace.
        return ws.last_start;
    }
    // 8: a single whitespace character before non-whitespace.
    ws.end
}

/// The piece of `o200k_base` starting at `p`. The regex:
///
/// ```text
/// [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?   1
/// |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?  2
/// |\p{N}{1,3}                      3
/// | ?[^\s\p{L}\p{N}]+[\r\n/]*      4
/// |\s*[\r\n]+                      5
/// |\s+(?!\S)                       6
/// |\s+                             7
/// ```
///
/// With `U` = `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]` and `W` =
/// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`, a backtracking engine tries 1 with the prefix
/// taken, 1 without it, 2 with it, 2 without it, then 3 to 7.
pub(crate) fn next_o200k(s: &[u8], p: usize) -> usize {
    let n = s.len();
    let b = s.get(p).copied().unwrap_or(0);
    let (c, l) = class_at(s, p);
    let q = p + l;
    // `[^\r\n\p{L}\p{N}]`: marks, other characters, whitespace but \r \n.
    let prefix = b != b'\r' && b != b'\n' && !is(c, LETTER | bit(NUM));
    if prefix && let Some(e) = upper_then_lower(s, q) {
        return e;
    }
    if is(c, UPPER | LOWER)
        && let Some(e) = upper_then_lower(s, p)
    {
        return e;
    }
    if prefix && let Some(e) = upper_word(s, q) {
        return e;
    }
    if is(c, UPPER)
        && let Some(e) = upper_word(s, p)
    {
        return e;
    }
    // 3
    if c == NUM {
        return numbers(s, q);
    }
    // 4. (A mark never gets here: 1 without the prefix always matches it.)
    if is(c, PUNCT) {
        return byte_run(s, run(s, q, PUNCT), b"\r\n/");
    }
    if b == b' ' && q < n {
        let (c2, l2) = class_at(s, q);
        if is(c2, PUNCT) {
            return byte_run(s, run(s, q + l2, PUNCT), b"\r\n/");
        }
    }
    // Only whitespace is left.
    let ws = whitespace_run(s, p);
    if let Some(e) = ws.newline_end {
        // 5: \s* gives back characters until one is \r or \n; [\r\n]+ then
        // takes just that one, as the next is not \r or \n.
        return e;
    }
    if ws.end == n || ws.last_start == p {
        // 6 at the end of the text (the look-ahead holds there), or 7 for a
        // single whitespace character before non-whitespace.
        return ws.end;
    }
    // 6: all but the last character.
    ws.last_start
}

/// `U* W+ (?i:'s|…)?` from `start`, as a backtracking engine matches it:
/// the longest run of `U` after which a `W` follows, then the longest run of
/// `W`. When the whole `U` run is not followed by a `W`, `U*` gives back
/// characters until the next one is a `W` that is also a `U` (`Lm`, `Lo` or
/// `M`): the last such one in the run, which `W+` then takes alone (the
/// character after it is `Lu`/`Lt` or ends the run, neither being `W`).
#[inline]
fn upper_then_lower(s: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    let mut last_lower_end = None;
    while i < s.len() {
        let (c, l) = class_at(s, i);
        if !is(c, UPPER) {
            if c == LL {
                return Some(with_contraction(s, run(s, i + l, LOWER)));
            }
            break;
        }
        i += l;
        if is(c, LOWER) {
            last_lower_end = Some(i);
        }
    }
    last_lower_end.map(|e| with_contraction(s, e))
}

/// `U+ W* (?i:'s|…)?` from `start`: both runs greedy, nothing to give back.
#[inline]
fn upper_word(s: &[u8], start: usize) -> Option<usize> {
    if start >= s.len() {
        return None;
    }
    let (c, l) = class_at(s, start);
    if !is(c, UPPER) {
        return None;
    }
    let upper_end = run(s, start + l, UPPER);
    Some(with_contraction(s, run(s, upper_end, LOWER)))
}

struct WhitespaceRun {
    /// End of the maximal whitespace run.
    end: usize,
    /// Start of its last character.
    last_start: usize,
    /// End of its last \r or \n, if it has one.
    newline_end: Option<usize>,
}

#[inline]
fn whitespace_run(s: &[u8], p: usize) -> WhitespaceRun {
    let mut i = p;
    let mut last_start = p;
    let mut newline_end = None;
    while i < s.len() {
        let (c, l) = class_at(s, i);
        if c != WS {
            break;
        }
        if matches!(s.get(i), Some(b'\r' | b'\n')) {
            newline_end = Some(i + 1);
        }
        last_start = i;
        i += l;
    }
    WhitespaceRun { end: i, last_start, newline_end }
}

/// The pieces of `text` under a scanner (tests only).
#[cfg(test)]
pub(crate) fn pieces(text: &str, next: fn(&[u8], usize) -> usize) -> Vec<&str> {
    let s = text.as_bytes();
    let mut out = Vec::new();
    let mut p = 0;
    while p < s.len() {
        let e = next(s, p);
        assert!(e > p && e <= s.len() && text.is_char_boundary(e));
        out.push(&text[p..e]);
        p = e;
    }
    out
}
