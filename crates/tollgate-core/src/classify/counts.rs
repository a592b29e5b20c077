//! What a scan of a text counted, and the measures derived from the counts.

use super::arithmetic::{clamp01, saturate};

// ---------------------------------------------------------------------------
// Counting
// ---------------------------------------------------------------------------

/// What one scan counted. Plain integers, so the scan is exact and cheap.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    // Letters and scripts.
    pub(super) ascii_letters: u32,
    pub(super) latin_ext: u32,
    pub(super) non_latin: u32,
    pub(super) greek: u32,
    /// Greek letters right after another Greek letter (words, not symbols).
    pub(super) greek_pairs: u32,
    pub(super) words: u32,
    pub(super) foreign_words: u32,
    // Code.
    pub(super) fences: u32,
    pub(super) inline_code: u32,
    pub(super) code_line_ends: u32,
    pub(super) code_ops: u32,
    pub(super) code_keywords: u32,
    pub(super) code_punct: u32,
    pub(super) indented_lines: u32,
    pub(super) prog_terms: u32,
    pub(super) prog_terms_weak: u32,
    // Maths.
    pub(super) math_ops: u32,
    pub(super) latex: u32,
    pub(super) math_symbols: u32,
    pub(super) math_words: u32,
    // Asks and instructions.
    pub(super) reasoning: u32,
    pub(super) asks: u32,
    /// Half-strength asks: "explain …", "why …?", "elaborate", "in detail".
    pub(super) weak_asks: u32,
    pub(super) list_items: u32,
    pub(super) constraint_words: u32,
    // Question shape.
    pub(super) part_markers: u32,
    pub(super) roman_items: u32,
    pub(super) option_lines: u32,
    /// The text ends with an answer-option block ("A. …", "B. …"); the
    /// other counts then cover only the question stem before it.
    pub(super) answer_choices: bool,
    pub(super) questions: u32,
    pub(super) sentences: u32,
    pub(super) factual_start: bool,
    pub(super) capital_of: bool,
    pub(super) first_reason: Option<&'static str>,
    pub(super) first_ask: Option<&'static str>,
    pub(super) first_weak_ask: Option<&'static str>,
}

impl Counts {
    pub(super) fn syntax_code(&self) -> f64 {
        let mut evidence = f64::from(self.code_line_ends)
            + f64::from(self.code_ops)
            + f64::from(self.code_keywords)
            + 0.25 * f64::from(self.code_punct + self.inline_code);
        if evidence > 0.0 {
            evidence += 0.5 * f64::from(self.indented_lines);
        }
        saturate(evidence, 3.0)
    }

    pub(super) fn prog_terms_code(&self) -> f64 {
        // Talking about programming is a coding request even without code;
        // one ambiguous word ("function", "program") alone is not enough.
        let units = f64::from(self.prog_terms) + 0.5 * f64::from(self.prog_terms_weak);
        0.5 * saturate(units - 0.5, 1.0)
    }

    pub(super) fn code(&self) -> f64 {
        let fenced = if self.fences > 0 { 1.0 } else { 0.0 };
        clamp01(f64::max(fenced, self.syntax_code()) + self.prog_terms_code())
    }

    pub(super) fn math(&self) -> f64 {
        let evidence = f64::from(self.math_ops)
            + 1.5 * f64::from(self.latex)
            + f64::from(self.math_symbols)
            + 0.5 * f64::from(self.math_words);
        saturate(evidence, 3.0)
    }

    pub(super) fn ask_units(&self) -> f64 {
        f64::from(self.asks) + 0.5 * f64::from(self.weak_asks)
    }

    fn constraint_units(&self) -> f64 {
        f64::from(self.constraint_words) + 0.5 * f64::from(self.list_items)
    }

    /// Many constraints, densely packed: instructions rather than narrative
    /// prose that happens to say "should" or "never" now and then.
    pub(super) fn constraints(&self) -> f64 {
        let units = self.constraint_units();
        let per_100_words = 100.0 * units / f64::from(self.words.max(1));
        saturate(units, 3.0) * (per_100_words / 3.0).min(1.0)
    }

    /// Parts beyond the first: "Statement 1 … Statement 2 …", "I. … II. …",
    /// several question marks.
    pub(super) fn extra_parts(&self) -> f64 {
        f64::from(self.extra_parts_count())
    }

    pub(super) fn extra_parts_count(&self) -> u32 {
        let romans = if self.roman_items >= 2 { self.roman_items } else { 0 };
        let parts = self.part_markers.max(romans).max(self.questions);
        parts.saturating_sub(1)
    }

    pub(super) fn short_factual(&self) -> f64 {
        if !(self.factual_start || self.capital_of)
            || self.questions > 1
            || self.sentences > 2
            || self.reasoning > 0
            || self.asks > 0
            || self.weak_asks > 0
            || self.fences > 0
            || self.syntax_code() > 0.3
            || self.part_markers > 1
        {
            return 0.0;
        }
        // Up to 12 words → 1, fading out by 25 words.
        clamp01((25.0 - f64::from(self.words)) / 13.0)
    }

    pub(super) fn non_english(&self) -> f64 {
        let letters = self.ascii_letters + self.latin_ext + self.non_latin;
        if letters < 4 {
            return 0.0;
        }
        // A few accented letters ("café") are loanwords, not another language.
        let share = (f64::from(self.non_latin) + 0.5 * f64::from(self.latin_ext)) / f64::from(letters);
        let script = (share - 0.1) / 0.4;
        let words = if self.words >= 4 { 4.0 * f64::from(self.foreign_words) / f64::from(self.words) } else { 0.0 };
        clamp01(script.max(words))
    }
}
