//! Prompt-complexity classifier.
//!
//! Scores a prompt in `[0, 1]`: the higher the score, the more likely the
//! prompt needs the premium model tier. The score is
//! `logistic(bias + Σ weight · feature)`, where every feature is a cheap,
//! explainable heuristic with a value in `[0, 1]`, computed by a single
//! byte-level pass over the last user turn (plus a lighter pass over earlier
//! turns for code and maths context). No allocation happens while scanning;
//! the only allocations are the returned `features` and `reasons` vectors.
//!
//! The score is a *ranking* score: it orders prompts by how much they are
//! likely to gain from the strong model. It is not a calibrated probability.
//!
//! Everything here is deterministic and platform-independent: the scan only
//! counts, and the floating-point work uses basic IEEE operations only (the
//! logistic function uses a local `exp`), so native and wasm builds produce
//! bit-identical scores.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------
// Input
// ---------------------------------------------------------------------------

/// The parts of a chat request the classifier looks at. The caller extracts
/// the text and counts the tokens.
#[derive(Clone, Copy, Debug)]
pub struct PromptView<'a> {
    /// All system/developer text joined with `"\n"` (`""` if none).
    pub system: &'a str,
    /// Non-system messages in order.
    pub turns: &'a [Turn<'a>],
    /// Tools/functions declared in the request.
    pub tool_count: usize,
    /// Prompt tokens, already counted by the caller.
    pub tokens: u32,
}

/// One non-system message.
#[derive(Clone, Copy, Debug)]
pub struct Turn<'a> {
    /// Who wrote it.
    pub role: TurnRole,
    /// Its text (all text parts joined).
    pub text: &'a str,
}

/// The author of a [`Turn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnRole {
    /// The end user.
    User,
    /// The model, in an earlier turn.
    Assistant,
    /// A tool/function result.
    Tool,
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// The classifier's verdict on one prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    /// In `[0, 1]`; higher means more likely to need the strong model.
    pub score: f64,
    /// Human-readable reasons, most important first, e.g.
    /// `"code block (+0.90)"`; at most [`MAX_REASONS`].
    pub reasons: Vec<String>,
    /// Every feature's raw value and contribution, in [`Feature::ALL`] order.
    pub features: Vec<FeatureValue>,
}

/// One feature's value for one prompt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeatureValue {
    /// Which feature.
    pub feature: Feature,
    /// Its raw value, in `[0, 1]`.
    pub value: f64,
    /// `weight · value`, in logit units.
    pub contribution: f64,
}

/// At most this many reasons are reported.
pub const MAX_REASONS: usize = 5;

/// A feature is only given as a reason when its contribution is at least
/// this large in absolute value (logit units).
pub const MIN_REASON_CONTRIBUTION: f64 = 0.05;

// ---------------------------------------------------------------------------
// Features
// ---------------------------------------------------------------------------

/// A classifier feature. [`Feature::name`] is its key in the tenant config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// Prompt size in tokens, log-scaled.
    Tokens,
    /// Conversation length in turns, log-scaled.
    Turns,
    /// Fenced code, code-like unfenced text, programming vocabulary.
    Code,
    /// Mathematical notation: operators between operands, LaTeX, symbols, maths words.
    Math,
    /// Numeric quantities in the question (word-problem shape).
    Quantities,
    /// Reasoning and design verbs: analyze, design, optimize, debug, derive...
    Reasoning,
    /// Explicit asks: step by step, prove, compare, explain why, justify...
    ExplicitAsk,
    /// Multi-constraint instructions: requirement lists, must, should, at least...
    Constraints,
    /// Several statements, scenarios or sub-questions to handle together.
    MultiPart,
    /// Tools/functions declared in the request.
    Tools,
    /// Size of the system prompt, log-scaled.
    SystemPrompt,
    /// A short, single factual question (who/what/when/where/which/how many...).
    ShortFactual,
    /// The question offers answer options ("A. …", "B. …"): pick, not produce.
    AnswerChoices,
    /// Share of non-English text (non-Latin scripts, accented letters, foreign words).
    NonEnglish,
}

impl Feature {
    /// How many features there are.
    pub const COUNT: usize = 14;

    /// Every feature, in a stable order (the order of [`Classification::features`]).
    pub const ALL: [Feature; Feature::COUNT] = [
        Feature::Tokens,
        Feature::Turns,
        Feature::Code,
        Feature::Math,
        Feature::Quantities,
        Feature::Reasoning,
        Feature::ExplicitAsk,
        Feature::Constraints,
        Feature::MultiPart,
        Feature::Tools,
        Feature::SystemPrompt,
        Feature::ShortFactual,
        Feature::AnswerChoices,
        Feature::NonEnglish,
    ];

    /// The snake_case name used as a config key and in traces.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Tokens => "tokens",
            Feature::Turns => "turns",
            Feature::Code => "code",
            Feature::Math => "math",
            Feature::Quantities => "quantities",
            Feature::Reasoning => "reasoning",
            Feature::ExplicitAsk => "explicit_ask",
            Feature::Constraints => "constraints",
            Feature::MultiPart => "multi_part",
            Feature::Tools => "tools",
            Feature::SystemPrompt => "system_prompt",
            Feature::ShortFactual => "short_factual",
            Feature::AnswerChoices => "answer_choices",
            Feature::NonEnglish => "non_english",
        }
    }

    /// The feature called `name`, if any.
    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The tuned default weight (logit units per unit of feature value).
    pub fn default_weight(self) -> f64 {
        match self {
            Feature::Tokens => 1.0,
            Feature::Turns => 1.0,
            Feature::Code => 1.5,
            Feature::Math => 1.0,
            Feature::Quantities => 1.0,
            Feature::Reasoning => 1.0,
            Feature::ExplicitAsk => 1.0,
            Feature::Constraints => 1.0,
            Feature::MultiPart => 1.0,
            Feature::Tools => 1.0,
            Feature::SystemPrompt => 0.5,
            Feature::ShortFactual => -1.0,
            Feature::AnswerChoices => -0.5,
            Feature::NonEnglish => 0.5,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The tuned default bias (logit of the score of a prompt with no signals).
pub const DEFAULT_BIAS: f64 = -1.0;

/// Largest absolute bias or weight a tenant may set. Beyond this the logistic
/// is saturated anyway, so a larger number is almost certainly a mistake.
pub const MAX_ABS_PARAMETER: f64 = 50.0;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Validated classifier settings. [`Default`] gives the tuned defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassifierConfig {
    bias: f64,
    weights: [f64; Feature::COUNT],
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig { bias: DEFAULT_BIAS, weights: Feature::ALL.map(Feature::default_weight) }
    }
}

impl ClassifierConfig {
    /// The bias (logit of the score when no feature fires).
    pub fn bias(&self) -> f64 {
        self.bias
    }

    /// The weight of `feature`.
    pub fn weight(&self, feature: Feature) -> f64 {
        self.weights[feature.index()]
    }

    /// This config with another bias.
    pub fn with_bias(mut self, bias: f64) -> Result<Self, ClassifierConfigError> {
        self.bias = check_parameter("bias", bias)?;
        Ok(self)
    }

    /// This config with another weight for `feature`.
    pub fn with_weight(mut self, feature: Feature, weight: f64) -> Result<Self, ClassifierConfigError> {
        self.weights[feature.index()] = check_parameter_at(|| format!("weights.{}", feature.name()), weight)?;
        Ok(self)
    }
}

/// Tenant-supplied overrides, as they appear in the tenant config JSON under
/// `"classifier"`, e.g. `{"bias": -1.2, "weights": {"code": 0.9, "math": 0.4}}`.
/// Every field is optional; what is left out keeps its default.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawClassifierConfig {
    /// Logit of the score of a prompt on which no feature fires. Lower sends
    /// fewer prompts to the strong model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<f64>,
    /// Per-feature weights by feature name (tokens, turns, code, math,
    /// quantities, reasoning, explicit_ask, constraints, multi_part, tools,
    /// system_prompt, short_factual, answer_choices, non_english). Positive pushes towards the
    /// strong model, 0 turns a feature off.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, f64>,
}

/// An invalid classifier setting. `path` is the JSON path below the
/// classifier object, e.g. `"weights.cde"` or `"bias"`.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{path}: {message}")]
pub struct ClassifierConfigError {
    /// Where the bad value is, below the classifier object.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

fn check_parameter(path: &str, value: f64) -> Result<f64, ClassifierConfigError> {
    check_parameter_at(|| path.to_owned(), value)
}

fn check_parameter_at(path: impl FnOnce() -> String, value: f64) -> Result<f64, ClassifierConfigError> {
    if !value.is_finite() {
        return Err(ClassifierConfigError { path: path(), message: "must be a finite number".to_owned() });
    }
    if value.abs() > MAX_ABS_PARAMETER {
        return Err(ClassifierConfigError {
            path: path(),
            message: format!("must be between -{MAX_ABS_PARAMETER} and {MAX_ABS_PARAMETER}"),
        });
    }
    Ok(value)
}

impl TryFrom<RawClassifierConfig> for ClassifierConfig {
    type Error = ClassifierConfigError;

    fn try_from(raw: RawClassifierConfig) -> Result<Self, Self::Error> {
        let mut config = ClassifierConfig::default();
        if let Some(bias) = raw.bias {
            config = config.with_bias(bias)?;
        }
        for (name, weight) in raw.weights {
            let Some(feature) = Feature::from_name(&name) else {
                let known: Vec<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
                return Err(ClassifierConfigError {
                    path: format!("weights.{name}"),
                    message: format!("unknown feature; expected one of: {}", known.join(", ")),
                });
            };
            config = config.with_weight(feature, weight)?;
        }
        Ok(config)
    }
}

impl From<&ClassifierConfig> for RawClassifierConfig {
    /// The full, explicit form of a config (every weight listed).
    fn from(config: &ClassifierConfig) -> Self {
        RawClassifierConfig {
            bias: Some(config.bias),
            weights: Feature::ALL.iter().map(|f| (f.name().to_owned(), config.weight(*f))).collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------

/// Bytes of the last user turn that are scanned; a longer turn is scanned as
/// its first and last `LAST_TURN_SCAN_LIMIT / 2` bytes.
const LAST_TURN_SCAN_LIMIT: usize = 32 * 1024;

/// Bytes of earlier turns (newest first) scanned for context.
const CONTEXT_SCAN_LIMIT: usize = 16 * 1024;

/// Context (earlier turns) counts for this share of a code/maths signal.
const CONTEXT_DISCOUNT: f64 = 0.5;

/// Scores `prompt`. Deterministic; never panics; `score` is always finite
/// and within `[0, 1]`.
pub fn classify(prompt: &PromptView<'_>, config: &ClassifierConfig) -> Classification {
    let signals = Signals::extract(prompt);
    let values = signals.values();

    let mut logit = config.bias;
    let mut features = Vec::with_capacity(Feature::COUNT);
    for feature in Feature::ALL {
        let value = values[feature.index()];
        let contribution = config.weight(feature) * value;
        logit += contribution;
        features.push(FeatureValue { feature, value, contribution });
    }
    let score = logistic(logit);
    let reasons = reasons(&features, &signals);
    Classification { score, reasons, features }
}

fn reasons(features: &[FeatureValue], signals: &Signals) -> Vec<String> {
    let mut ranked: [Option<FeatureValue>; Feature::COUNT] = [None; Feature::COUNT];
    for (slot, fv) in ranked.iter_mut().zip(features) {
        if fv.contribution.abs() >= MIN_REASON_CONTRIBUTION {
            *slot = Some(*fv);
        }
    }
    // Stable: equal contributions keep feature order.
    ranked.sort_by(|a, b| {
        let a = a.map_or(-1.0, |f| f.contribution.abs());
        let b = b.map_or(-1.0, |f| f.contribution.abs());
        b.total_cmp(&a)
    });
    ranked
        .iter()
        .flatten()
        .take(MAX_REASONS)
        .map(|fv| format!("{} ({:+.2})", signals.label(fv.feature), fv.contribution))
        .collect()
}

/// Everything [`classify`] derives from a prompt before weighting.
#[derive(Debug)]
struct Signals {
    last: Counts,
    context: Counts,
    tokens: u32,
    turns: usize,
    tool_count: usize,
    system_bytes: usize,
}

impl Signals {
    fn extract(prompt: &PromptView<'_>) -> Signals {
        let last_user =
            prompt.turns.iter().rposition(|t| t.role == TurnRole::User).or_else(|| prompt.turns.len().checked_sub(1));

        let mut last = Counts::default();
        let mut context = Counts::default();
        if let Some(index) = last_user {
            let text = prompt.turns[index].text.as_bytes();
            let mut scanner = Scanner::new(&mut last);
            if text.len() <= LAST_TURN_SCAN_LIMIT {
                scanner.feed(text);
            } else {
                let half = LAST_TURN_SCAN_LIMIT / 2;
                scanner.feed(&text[..half]);
                scanner.end_line();
                scanner.feed(&text[text.len() - half..]);
            }
            scanner.finish();

            let mut budget = CONTEXT_SCAN_LIMIT;
            let mut scanner = Scanner::new(&mut context);
            for (i, turn) in prompt.turns.iter().enumerate().rev() {
                if i == index {
                    continue;
                }
                if budget == 0 {
                    break;
                }
                let text = turn.text.as_bytes();
                let take = text.len().min(budget);
                budget -= take;
                scanner.feed(&text[..take]);
                scanner.end_line();
            }
            scanner.finish();
        }

        Signals {
            last,
            context,
            tokens: prompt.tokens,
            turns: prompt.turns.len(),
            tool_count: prompt.tool_count,
            system_bytes: prompt.system.len(),
        }
    }

    fn values(&self) -> [f64; Feature::COUNT] {
        let mut v = [0.0; Feature::COUNT];
        for f in Feature::ALL {
            v[f.index()] = self.value(f);
        }
        v
    }

    fn value(&self, feature: Feature) -> f64 {
        let c = &self.last;
        let value = match feature {
            // 16 tokens or fewer → 0, each doubling +0.1, 16k tokens → 1.
            Feature::Tokens => (log2(f64::from(self.tokens)) - 4.0) / 10.0,
            // 1 turn → 0, 2 → 0.2, 4 → 0.4, 32 → 1.
            Feature::Turns => log2(self.turns as f64) / 5.0,
            Feature::Code => self.last.code().max(CONTEXT_DISCOUNT * self.context.code()),
            Feature::Math => self.last.math().max(CONTEXT_DISCOUNT * self.context.math()),
            Feature::Quantities => c.quantities(),
            Feature::Reasoning => saturate(f64::from(c.reasoning), 1.0),
            Feature::ExplicitAsk => saturate(c.ask_units(), 0.5),
            Feature::Constraints => c.constraints(),
            Feature::MultiPart => saturate(c.extra_parts(), 1.0),
            Feature::Tools => {
                if self.tool_count == 0 {
                    0.0
                } else {
                    // 1 tool → 0.5, 4 → 0.75, 16 or more → 1.
                    0.5 + log2(self.tool_count as f64) / 8.0
                }
            }
            // 64 bytes or fewer → 0, 1 KB → 0.5, 16 KB → 1.
            Feature::SystemPrompt => (log2(self.system_bytes as f64) - 6.0) / 8.0,
            Feature::ShortFactual => c.short_factual(),
            Feature::AnswerChoices => {
                if c.answer_choices {
                    1.0
                } else {
                    0.0
                }
            }
            Feature::NonEnglish => c.non_english(),
        };
        clamp01(value)
    }

    fn label(&self, feature: Feature) -> String {
        let c = &self.last;
        match feature {
            Feature::Tokens => format!("long prompt ({} tokens)", self.tokens),
            Feature::Turns => format!("long conversation ({} turns)", self.turns),
            Feature::Code => {
                let own = c.code();
                if own < CONTEXT_DISCOUNT * self.context.code() {
                    "code in earlier turns".to_owned()
                } else if c.fences > 0 {
                    "code block".to_owned()
                } else if c.syntax_code() >= c.prog_terms_code() {
                    "code-like text".to_owned()
                } else {
                    "programming request".to_owned()
                }
            }
            Feature::Math => {
                if c.math() < CONTEXT_DISCOUNT * self.context.math() {
                    "math in earlier turns".to_owned()
                } else if c.latex > 0 {
                    "LaTeX math".to_owned()
                } else if c.math_ops + c.math_symbols > 0 {
                    "math notation".to_owned()
                } else {
                    "math vocabulary".to_owned()
                }
            }
            Feature::Quantities => format!("{} numeric quantities", c.numbers),
            Feature::Reasoning => match c.first_reason {
                Some(word) => format!("asks to {word}"),
                None => "reasoning verbs".to_owned(),
            },
            Feature::ExplicitAsk => match c.first_ask {
                Some(ask) => format!("asks {ask}"),
                None => "asks to explain".to_owned(),
            },
            Feature::Constraints => "multiple constraints".to_owned(),
            Feature::MultiPart => format!("multi-part question ({} parts)", 1.0 + c.extra_parts()),
            Feature::Tools => format!("{} tools declared", self.tool_count),
            Feature::SystemPrompt => format!("long system prompt ({} bytes)", self.system_bytes),
            Feature::ShortFactual => "short factual question".to_owned(),
            Feature::AnswerChoices => format!("{} answer choices offered", c.option_lines),
            Feature::NonEnglish => "non-English text".to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------
// Counting
// ---------------------------------------------------------------------------

/// What one scan counted. Plain integers, so the scan is exact and cheap.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    // Letters and scripts.
    ascii_letters: u32,
    latin_ext: u32,
    non_latin: u32,
    greek: u32,
    words: u32,
    foreign_words: u32,
    // Code.
    fences: u32,
    inline_code: u32,
    code_line_ends: u32,
    code_ops: u32,
    code_keywords: u32,
    code_punct: u32,
    indented_lines: u32,
    prog_terms: u32,
    prog_terms_weak: u32,
    // Maths.
    math_ops: u32,
    latex: u32,
    math_symbols: u32,
    math_words: u32,
    // Asks and instructions.
    reasoning: u32,
    asks: u32,
    explains: u32,
    list_items: u32,
    constraint_words: u32,
    // Question shape.
    part_markers: u32,
    roman_items: u32,
    option_lines: u32,
    /// The text ends with an answer-option block ("A. …", "B. …"); the
    /// other counts then cover only the question stem before it.
    answer_choices: bool,
    questions: u32,
    sentences: u32,
    numbers: u32,
    ratio_words: u32,
    factual_start: bool,
    capital_of: bool,
    first_reason: Option<&'static str>,
    first_ask: Option<&'static str>,
}

impl Counts {
    fn syntax_code(&self) -> f64 {
        let mut evidence = f64::from(self.code_line_ends)
            + f64::from(self.code_ops)
            + f64::from(self.code_keywords)
            + 0.25 * f64::from(self.code_punct + self.inline_code);
        if evidence > 0.0 {
            evidence += 0.5 * f64::from(self.indented_lines);
        }
        saturate(evidence, 3.0)
    }

    fn prog_terms_code(&self) -> f64 {
        // Talking about programming is a coding request even without code;
        // one ambiguous word ("function", "program") alone is not enough.
        let units = f64::from(self.prog_terms) + 0.5 * f64::from(self.prog_terms_weak);
        0.5 * saturate(units - 0.5, 1.0)
    }

    fn code(&self) -> f64 {
        let fenced = if self.fences > 0 { 1.0 } else { 0.0 };
        clamp01(f64::max(fenced, self.syntax_code()) + self.prog_terms_code())
    }

    fn math(&self) -> f64 {
        let evidence = f64::from(self.math_ops)
            + 1.5 * f64::from(self.latex)
            + f64::from(self.math_symbols)
            + 0.5 * f64::from(self.math_words);
        saturate(evidence, 3.0)
    }

    /// Numbers in the question, and relations between them ("twice as many").
    fn quantities(&self) -> f64 {
        saturate(f64::from(self.numbers) + f64::from(self.ratio_words), 4.0)
    }

    fn ask_units(&self) -> f64 {
        f64::from(self.asks) + 0.5 * f64::from(self.explains)
    }

    fn constraint_units(&self) -> f64 {
        f64::from(self.constraint_words) + 0.5 * f64::from(self.list_items)
    }

    /// Many constraints, densely packed: instructions rather than narrative
    /// prose that happens to say "should" or "never" now and then.
    fn constraints(&self) -> f64 {
        let units = self.constraint_units();
        let per_100_words = 100.0 * units / f64::from(self.words.max(1));
        saturate(units, 3.0) * (per_100_words / 3.0).min(1.0)
    }

    /// Parts beyond the first: "Statement 1 … Statement 2 …", "I. … II. …",
    /// several question marks.
    fn extra_parts(&self) -> f64 {
        let romans = if self.roman_items >= 2 { self.roman_items } else { 0 };
        let parts = self.part_markers.max(romans).max(self.questions);
        f64::from(parts.saturating_sub(1))
    }

    fn short_factual(&self) -> f64 {
        if !(self.factual_start || self.capital_of)
            || self.questions > 1
            || self.sentences > 2
            || self.reasoning > 0
            || self.asks > 0
            || self.explains > 0
            || self.fences > 0
            || self.syntax_code() > 0.3
            || self.part_markers > 1
        {
            return 0.0;
        }
        // Up to 12 words → 1, fading out by 25 words.
        clamp01((25.0 - f64::from(self.words)) / 13.0)
    }

    fn non_english(&self) -> f64 {
        let letters = self.ascii_letters + self.latin_ext + self.non_latin;
        if letters < 4 {
            return 0.0;
        }
        let script = (f64::from(self.non_latin) + 0.5 * f64::from(self.latin_ext)) / f64::from(letters);
        let words = if self.words >= 4 { 4.0 * f64::from(self.foreign_words) / f64::from(self.words) } else { 0.0 };
        clamp01(script.max(words))
    }
}

/// Single-pass byte scanner filling a [`Counts`].
struct Scanner<'c> {
    c: &'c mut Counts,
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
    /// The two previous words, most recent first, for phrases.
    prev: [Kw; 2],
    /// The previous token is an operand (number, one-letter variable, `)`).
    operand_before: bool,
    /// An operator followed an operand; counted if an operand follows.
    pending_op: bool,
}

impl<'c> Scanner<'c> {
    fn new(c: &'c mut Counts) -> Self {
        Scanner {
            c,
            line_tokens: 0,
            line_indent: 0,
            line_last: b'\n',
            stem: None,
            option_line: false,
            words_after_options: 0,
            prev: [Kw::None; 2],
            operand_before: false,
            pending_op: false,
        }
    }

    fn feed(&mut self, t: &[u8]) {
        let n = t.len();
        let mut i = 0;
        while i < n {
            let b = t[i];
            if b.is_ascii_alphabetic() {
                let start = i;
                i += 1;
                while i < n && (t[i].is_ascii_alphanumeric() || t[i] == b'_') {
                    i += 1;
                }
                let before = if start > 0 { t[start - 1] } else { b'\n' };
                self.word(&t[start..i], before, t.get(i).copied(), t.get(i + 1).copied());
                continue;
            }
            if b.is_ascii_digit() {
                let start = i;
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
                let digits = &t[start..i];
                self.number(digits, t.get(i).copied(), t.get(i + 1).copied());
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
            if b == b'(' {
                if let (Some(l @ b'A'..=b'J'), Some(b')')) = (next, t.get(i + 2).copied()) {
                    self.option_line(l);
                    return 3;
                }
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
                if let Some(n2) = next {
                    if is_code_op(b, n2) && !(b == b'/' && n2 == b'/' && i > 0 && t[i - 1] == b':') {
                        self.c.code_ops += 1;
                        self.clear_operands();
                        return 2;
                    }
                }
                match b {
                    b'=' | b'-' | b'<' | b'>' | b'+' | b'*' | b'/' | b'^' => {
                        // "<=" and ">=" are one relational operator.
                        let width = if matches!(b, b'<' | b'>') && next == Some(b'=') { 2 } else { 1 };
                        if self.operand_before {
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
            self.stem = Some(*self.c);
        }
        self.c.option_lines += 1;
        self.option_line = true;
        self.prev = [Kw::None; 2];
        self.clear_operands();
    }

    fn end_line(&mut self) {
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

    fn finish(&mut self) {
        self.end_line();
        if let Some(stem) = self.stem.take() {
            // A trailing "Answer:" is fine; more text means the lettered
            // lines were not the answer options of a final question.
            if self.c.option_lines >= 2 && self.words_after_options <= 3 {
                let option_lines = self.c.option_lines;
                *self.c = stem;
                self.c.option_lines = option_lines;
                self.c.answer_choices = true;
            }
        }
        let c = &mut *self.c;
        if c.greek > 0 {
            // A few Greek letters in Latin text are symbols (α, π, σ), not a language.
            if c.greek * 5 < c.ascii_letters + c.latin_ext + c.non_latin {
                c.math_symbols += c.greek;
            } else {
                c.non_latin += c.greek;
            }
            c.greek = 0;
        }
    }

    fn number(&mut self, digits: &[u8], next: Option<u8>, next2: Option<u8>) {
        let first_on_line = self.line_tokens == 0;
        self.line_tokens += 1;
        self.line_last = b'0';
        if first_on_line && matches!(next, Some(b'.' | b')')) && is_blank(next2) {
            self.c.list_items += 1;
            self.prev = [Kw::None; 2];
            self.clear_operands();
            return;
        }
        self.operand_start();
        self.operand_before = true;
        if self.prev[0] == Kw::PartNoun {
            // "Statement 2": a label, not a quantity.
            self.c.part_markers += 1;
        } else if !is_year(digits) {
            self.c.numbers += 1;
        }
        self.prev = [Kw::Number, self.prev[0]];
    }

    fn word(&mut self, w: &[u8], before: u8, next: Option<u8>, next2: Option<u8>) {
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

        if first_on_line {
            let closes = matches!(next, Some(b'.' | b')')) && is_blank(next2);
            if closes && is_roman(w) && (w != b"I" || self.stem.is_none()) {
                self.c.roman_items += 1;
                self.prev = [Kw::None; 2];
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
        if w.len() > MAX_KEYWORD_LEN {
            self.prev = [Kw::None, self.prev[0]];
            return;
        }

        let mut lower = [0u8; MAX_KEYWORD_LEN];
        let mut hash = FNV_OFFSET;
        let mut upper = 0;
        for (dst, &src) in lower.iter_mut().zip(w) {
            upper += u32::from(src.is_ascii_uppercase());
            let l = src.to_ascii_lowercase();
            *dst = l;
            hash = (hash ^ u32::from(l)).wrapping_mul(FNV_PRIME);
        }
        let lower = &lower[..w.len()];
        let all_caps = w.len() >= 3 && upper as usize == w.len();
        let kw = lookup(lower, hash);
        let [p0, p1] = self.prev;
        let text_start = self.c.words == 1;

        match kw {
            Kw::Reason(label) => self.reason(label),
            Kw::Ask(label) => self.ask(label),
            Kw::Explain => self.c.explains += 1,
            Kw::Constraint => self.constraint(),
            Kw::Code => {
                // `#include`, `#define`, … count twice: unmistakable.
                self.c.code_keywords += if before == b'#' { 2 } else { 1 };
            }
            Kw::Sql => {
                if all_caps {
                    self.c.code_keywords += 1;
                }
            }
            Kw::Prog => self.c.prog_terms += 1,
            Kw::ProgWeak => self.c.prog_terms_weak += 1,
            Kw::MathWord => self.c.math_words += 1,
            Kw::Ratio => self.c.ratio_words += 1,
            Kw::Foreign => self.c.foreign_words += 1,
            Kw::Wh => {
                if text_start {
                    self.c.factual_start = true;
                }
            }
            Kw::Why => {
                if p0 == Kw::Explain {
                    self.ask("to explain why");
                } else if text_start {
                    self.ask("why");
                }
            }
            Kw::How => {
                if p0 == Kw::Explain {
                    self.ask("to explain how");
                }
            }
            Kw::HowWhat => {
                if p0 == Kw::How && self.c.words == 2 {
                    self.c.factual_start = true;
                }
            }
            Kw::Step => {
                if p0 == Kw::By && p1 == Kw::Step {
                    self.ask("for step-by-step reasoning");
                }
            }
            Kw::That => {
                if p0 == Kw::Show {
                    self.ask("to show that");
                }
            }
            Kw::Through => {
                if p0 == Kw::Walk || (p0 == Kw::Me && p1 == Kw::Walk) {
                    self.ask("for a walk-through");
                }
            }
            Kw::Cons => {
                if p0 == Kw::And && p1 == Kw::Pros {
                    self.ask("for pros and cons");
                }
            }
            Kw::Detail => {
                if p0 == Kw::In {
                    self.ask("for detail");
                }
            }
            Kw::Between => {
                if p0 == Kw::Difference {
                    self.ask("to compare");
                }
            }
            Kw::Least | Kw::Most => {
                if p0 == Kw::At {
                    self.constraint();
                }
            }
            Kw::Not => {
                if p0 == Kw::Do {
                    self.constraint();
                }
            }
            Kw::T => {
                if p0 == Kw::Don && before == b'\'' {
                    self.constraint();
                }
            }
            Kw::Than => {
                if p0 == Kw::More && p1 == Kw::No {
                    self.constraint();
                }
            }
            Kw::Sure => {
                if p0 == Kw::Make {
                    self.constraint();
                }
            }
            Kw::Off => {
                if p0 == Kw::Trade {
                    self.reason("weigh trade-offs");
                }
            }
            Kw::Of => {
                if p0 == Kw::Capital {
                    self.c.capital_of = true;
                }
            }
            _ => {}
        }
        if p0 == Kw::PartNoun && is_roman(w) && upper as usize == w.len() {
            self.c.part_markers += 1;
        }
        self.prev = [kw, p0];
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

    /// Handles the non-ASCII character starting at `t[i]`; returns its width.
    fn non_ascii(&mut self, t: &[u8], i: usize) -> usize {
        let lead = t[i];
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
            Script::Greek => self.c.greek += 1,
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

/// 1000–2099 written as four bare digits: a date, not a quantity.
fn is_year(digits: &[u8]) -> bool {
    digits.len() == 4 && (digits[0] == b'1' || (digits[0] == b'2' && digits[1] == b'0'))
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

// ---------------------------------------------------------------------------
// Keywords
// ---------------------------------------------------------------------------

/// What a (lower-cased) word means to the classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kw {
    None,
    Number,
    /// A reasoning or design verb; the label completes "asks to …".
    Reason(&'static str),
    /// An explicit ask on its own; the label completes "asks …".
    Ask(&'static str),
    Explain,
    Constraint,
    /// Rarely prose: fn, def, printf, nullptr…
    Code,
    /// SQL, counted when written in capitals.
    Sql,
    /// Programming vocabulary: python, regex, api…
    Prog,
    /// Programming vocabulary that is also common in prose: function, program…
    ProgWeak,
    MathWord,
    /// Multiplicative relations between quantities: twice, half, times…
    Ratio,
    /// Common function words of other languages.
    Foreign,
    /// who, what, when, where, which, whose, whom.
    Wh,
    /// many, much, old, long, far… after "how".
    HowWhat,
    /// statement, scenario, part… followed by a number.
    PartNoun,
    // Phrase pieces.
    Why,
    How,
    At,
    By,
    Step,
    Show,
    That,
    Walk,
    Me,
    Through,
    Pros,
    And,
    Cons,
    In,
    Detail,
    Difference,
    Between,
    Least,
    Most,
    Do,
    Not,
    Don,
    T,
    No,
    More,
    Than,
    Make,
    Sure,
    Trade,
    Off,
    Capital,
    Of,
}

const MAX_KEYWORD_LEN: usize = 16;

#[rustfmt::skip]
const KEYWORDS: &[(&str, Kw)] = &[
    // Reasoning and design verbs.
    ("analyze", Kw::Reason("analyze")), ("analyse", Kw::Reason("analyze")),
    ("analyzing", Kw::Reason("analyze")), ("analysing", Kw::Reason("analyze")),
    ("analysis", Kw::Reason("analyze")),
    ("design", Kw::Reason("design")), ("designing", Kw::Reason("design")),
    ("architect", Kw::Reason("architect")), ("architecture", Kw::Reason("architect")),
    ("optimize", Kw::Reason("optimize")), ("optimise", Kw::Reason("optimize")),
    ("optimizing", Kw::Reason("optimize")), ("optimization", Kw::Reason("optimize")),
    ("optimisation", Kw::Reason("optimize")),
    ("debug", Kw::Reason("debug")), ("debugging", Kw::Reason("debug")),
    ("refactor", Kw::Reason("refactor")), ("refactoring", Kw::Reason("refactor")),
    ("derive", Kw::Reason("derive")), ("derivation", Kw::Reason("derive")),
    ("evaluate", Kw::Reason("evaluate")), ("evaluating", Kw::Reason("evaluate")),
    ("assess", Kw::Reason("assess")), ("critique", Kw::Reason("critique")),
    ("tradeoff", Kw::Reason("weigh trade-offs")), ("tradeoffs", Kw::Reason("weigh trade-offs")),
    ("implications", Kw::Reason("weigh implications")),
    ("diagnose", Kw::Reason("diagnose")), ("troubleshoot", Kw::Reason("troubleshoot")),
    ("investigate", Kw::Reason("investigate")), ("synthesize", Kw::Reason("synthesize")),
    ("formulate", Kw::Reason("formulate")), ("strategy", Kw::Reason("plan a strategy")),
    ("hypothesis", Kw::Reason("reason about a hypothesis")),
    ("infer", Kw::Reason("infer")), ("deduce", Kw::Reason("deduce")),
    ("reasoning", Kw::Reason("reason")), ("scalable", Kw::Reason("design for scale")),
    ("scalability", Kw::Reason("design for scale")), ("bottleneck", Kw::Reason("find bottlenecks")),
    ("migrate", Kw::Reason("migrate")), ("implement", Kw::Reason("implement")),
    // Explicit asks.
    ("prove", Kw::Ask("to prove")), ("proof", Kw::Ask("for a proof")),
    ("justify", Kw::Ask("to justify")), ("compare", Kw::Ask("to compare")),
    ("comparison", Kw::Ask("to compare")), ("contrast", Kw::Ask("to contrast")),
    ("demonstrate", Kw::Ask("to demonstrate")), ("elaborate", Kw::Ask("to elaborate")),
    ("rigorous", Kw::Ask("for rigour")), ("rigorously", Kw::Ask("for rigour")),
    ("thoroughly", Kw::Ask("for thoroughness")),
    ("explain", Kw::Explain), ("why", Kw::Why), ("how", Kw::How),
    ("step", Kw::Step), ("by", Kw::By), ("show", Kw::Show), ("that", Kw::That),
    ("walk", Kw::Walk), ("me", Kw::Me), ("through", Kw::Through),
    ("pros", Kw::Pros), ("and", Kw::And), ("cons", Kw::Cons),
    ("in", Kw::In), ("detail", Kw::Detail),
    ("difference", Kw::Difference), ("differences", Kw::Difference), ("between", Kw::Between),
    // Constraints.
    ("must", Kw::Constraint), ("should", Kw::Constraint), ("ensure", Kw::Constraint),
    ("without", Kw::Constraint), ("exactly", Kw::Constraint), ("never", Kw::Constraint),
    ("always", Kw::Constraint), ("require", Kw::Constraint), ("requires", Kw::Constraint),
    ("required", Kw::Constraint), ("requirement", Kw::Constraint),
    ("requirements", Kw::Constraint), ("constraint", Kw::Constraint),
    ("constraints", Kw::Constraint), ("strictly", Kw::Constraint),
    ("mandatory", Kw::Constraint), ("avoid", Kw::Constraint), ("only", Kw::Constraint),
    ("at", Kw::At), ("least", Kw::Least), ("most", Kw::Most),
    ("do", Kw::Do), ("not", Kw::Not), ("don", Kw::Don), ("t", Kw::T),
    ("no", Kw::No), ("more", Kw::More), ("than", Kw::Than),
    ("make", Kw::Make), ("sure", Kw::Sure),
    ("trade", Kw::Trade), ("off", Kw::Off), ("offs", Kw::Off),
    // Factual question shape.
    ("who", Kw::Wh), ("what", Kw::Wh), ("when", Kw::Wh), ("where", Kw::Wh),
    ("which", Kw::Wh), ("whose", Kw::Wh), ("whom", Kw::Wh),
    ("many", Kw::HowWhat), ("much", Kw::HowWhat), ("old", Kw::HowWhat),
    ("long", Kw::HowWhat), ("far", Kw::HowWhat), ("tall", Kw::HowWhat),
    ("big", Kw::HowWhat), ("large", Kw::HowWhat), ("high", Kw::HowWhat),
    ("capital", Kw::Capital), ("of", Kw::Of),
    // Enumerated parts.
    ("statement", Kw::PartNoun), ("scenario", Kw::PartNoun), ("part", Kw::PartNoun),
    ("case", Kw::PartNoun), ("claim", Kw::PartNoun), ("premise", Kw::PartNoun),
    ("question", Kw::PartNoun), ("task", Kw::PartNoun), ("problem", Kw::PartNoun),
    // Code that is rarely prose.
    ("fn", Kw::Code), ("def", Kw::Code), ("elif", Kw::Code), ("impl", Kw::Code),
    ("struct", Kw::Code), ("println", Kw::Code), ("printf", Kw::Code),
    ("nullptr", Kw::Code), ("typedef", Kw::Code), ("namespace", Kw::Code),
    ("lambda", Kw::Code), ("const", Kw::Code), ("async", Kw::Code), ("await", Kw::Code),
    ("usize", Kw::Code), ("void", Kw::Code), ("bool", Kw::Code), ("mut", Kw::Code),
    ("func", Kw::Code), ("endif", Kw::Code), ("cout", Kw::Code), ("std", Kw::Code),
    ("malloc", Kw::Code), ("sizeof", Kw::Code), ("isinstance", Kw::Code),
    ("kwargs", Kw::Code), ("null", Kw::Code), ("undefined", Kw::Code),
    ("include", Kw::Code), ("define", Kw::Code), ("pragma", Kw::Code),
    ("self", Kw::Code), ("args", Kw::Code), ("len", Kw::Code), ("str", Kw::Code),
    ("dict", Kw::Code), ("console", Kw::Code), ("int", Kw::Code),
    // SQL in capitals.
    ("select", Kw::Sql), ("from", Kw::Sql), ("join", Kw::Sql),
    ("insert", Kw::Sql), ("update", Kw::Sql), ("delete", Kw::Sql), ("group", Kw::Sql),
    ("order", Kw::Sql), ("create", Kw::Sql), ("table", Kw::Sql), ("values", Kw::Sql),
    ("into", Kw::Sql), ("having", Kw::Sql),
    // Programming vocabulary.
    ("python", Kw::Prog), ("javascript", Kw::Prog), ("typescript", Kw::Prog),
    ("java", Kw::ProgWeak), ("rust", Kw::ProgWeak), ("golang", Kw::Prog), ("kotlin", Kw::Prog),
    ("php", Kw::Prog), ("sql", Kw::Prog), ("html", Kw::Prog), ("css", Kw::Prog),
    ("json", Kw::Prog), ("yaml", Kw::Prog), ("regex", Kw::Prog), ("api", Kw::Prog),
    ("apis", Kw::Prog), ("function", Kw::ProgWeak), ("functions", Kw::ProgWeak),
    ("method", Kw::ProgWeak), ("algorithm", Kw::ProgWeak), ("algorithms", Kw::ProgWeak),
    ("compiler", Kw::Prog), ("compile", Kw::ProgWeak), ("runtime", Kw::Prog),
    ("bug", Kw::ProgWeak), ("bugs", Kw::ProgWeak), ("code", Kw::ProgWeak), ("coding", Kw::Prog),
    ("program", Kw::ProgWeak), ("programming", Kw::Prog), ("script", Kw::ProgWeak),
    ("database", Kw::Prog), ("query", Kw::ProgWeak), ("endpoint", Kw::Prog),
    ("backend", Kw::Prog), ("frontend", Kw::Prog), ("kubernetes", Kw::Prog),
    ("docker", Kw::Prog), ("git", Kw::Prog), ("server", Kw::ProgWeak),
    ("recursion", Kw::Prog), ("recursive", Kw::ProgWeak), ("pointer", Kw::ProgWeak),
    ("thread", Kw::ProgWeak), ("threads", Kw::ProgWeak), ("concurrency", Kw::ProgWeak),
    ("mutex", Kw::Prog), ("deadlock", Kw::Prog), ("microservice", Kw::Prog),
    ("microservices", Kw::Prog), ("array", Kw::ProgWeak), ("variable", Kw::ProgWeak),
    ("exception", Kw::ProgWeak), ("stacktrace", Kw::Prog),
    // Maths vocabulary.
    ("equation", Kw::MathWord), ("equations", Kw::MathWord), ("integral", Kw::MathWord),
    ("derivative", Kw::MathWord), ("theorem", Kw::MathWord), ("lemma", Kw::MathWord),
    ("matrix", Kw::MathWord), ("matrices", Kw::MathWord), ("eigenvalue", Kw::MathWord),
    ("eigenvalues", Kw::MathWord), ("polynomial", Kw::MathWord),
    ("probability", Kw::MathWord), ("logarithm", Kw::MathWord),
    ("factorial", Kw::MathWord), ("variance", Kw::MathWord), ("prime", Kw::MathWord),
    ("integer", Kw::MathWord), ("integers", Kw::MathWord), ("sqrt", Kw::MathWord),
    ("sin", Kw::MathWord), ("cos", Kw::MathWord), ("tan", Kw::MathWord),
    ("log", Kw::MathWord), ("ln", Kw::MathWord), ("solve", Kw::MathWord),
    ("calculate", Kw::MathWord), ("modulo", Kw::MathWord), ("vector", Kw::MathWord),
    ("converge", Kw::MathWord), ("convergence", Kw::MathWord), ("algebra", Kw::MathWord),
    ("calculus", Kw::MathWord), ("inequality", Kw::MathWord), ("quadratic", Kw::MathWord),
    ("exponent", Kw::MathWord), ("fraction", Kw::MathWord), ("divisible", Kw::MathWord),
    // Relations between quantities (word problems).
    ("twice", Kw::Ratio), ("half", Kw::Ratio), ("double", Kw::Ratio), ("triple", Kw::Ratio),
    ("thrice", Kw::Ratio), ("quarter", Kw::Ratio), ("percent", Kw::Ratio),
    // Other languages' function words that English text hardly uses.
    ("der", Kw::Foreign), ("das", Kw::Foreign), ("und", Kw::Foreign), ("ist", Kw::Foreign),
    ("nicht", Kw::Foreign), ("mit", Kw::Foreign), ("ein", Kw::Foreign), ("eine", Kw::Foreign),
    ("ich", Kw::Foreign), ("sie", Kw::Foreign), ("wie", Kw::Foreign), ("auf", Kw::Foreign),
    ("les", Kw::Foreign), ("une", Kw::Foreign), ("dans", Kw::Foreign), ("pour", Kw::Foreign),
    ("avec", Kw::Foreign), ("sont", Kw::Foreign), ("nous", Kw::Foreign), ("vous", Kw::Foreign),
    ("que", Kw::Foreign), ("una", Kw::Foreign), ("por", Kw::Foreign), ("para", Kw::Foreign),
    ("como", Kw::Foreign), ("della", Kw::Foreign), ("sono", Kw::Foreign), ("uma", Kw::Foreign),
    ("pero", Kw::Foreign), ("est", Kw::Foreign), ("sur", Kw::Foreign), ("wir", Kw::Foreign),
];

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;
const TABLE_BITS: u32 = 10;
const TABLE_MASK: usize = (1 << TABLE_BITS) - 1;

const fn fnv(w: &[u8]) -> u32 {
    let mut h = FNV_OFFSET;
    let mut i = 0;
    while i < w.len() {
        h = (h ^ w[i] as u32).wrapping_mul(FNV_PRIME);
        i += 1;
    }
    h
}

const fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Open-addressing hash table from keyword to `KEYWORDS` index + 1 (0 = empty),
/// built at compile time. Duplicate keywords are a compile error.
static KEYWORD_TABLE: [u16; 1 << TABLE_BITS] = {
    assert!(KEYWORDS.len() * 2 < (1 << TABLE_BITS), "keyword table too full");
    let mut table = [0u16; 1 << TABLE_BITS];
    let mut k = 0;
    while k < KEYWORDS.len() {
        let word = KEYWORDS[k].0.as_bytes();
        assert!(word.len() <= MAX_KEYWORD_LEN, "keyword too long");
        let mut slot = fnv(word) as usize & TABLE_MASK;
        while table[slot] != 0 {
            assert!(!bytes_eq(KEYWORDS[table[slot] as usize - 1].0.as_bytes(), word), "duplicate keyword");
            slot = (slot + 1) & TABLE_MASK;
        }
        table[slot] = k as u16 + 1;
        k += 1;
    }
    table
};

fn lookup(lower: &[u8], hash: u32) -> Kw {
    let mut slot = hash as usize & TABLE_MASK;
    for _ in 0..KEYWORD_TABLE.len() {
        let entry = KEYWORD_TABLE[slot];
        if entry == 0 {
            return Kw::None;
        }
        let (word, kw) = KEYWORDS[usize::from(entry) - 1];
        if word.as_bytes() == lower {
            return kw;
        }
        slot = (slot + 1) & TABLE_MASK;
    }
    Kw::None
}

// ---------------------------------------------------------------------------
// Arithmetic (basic IEEE operations only, so results are bit-identical on
// every platform)
// ---------------------------------------------------------------------------

fn clamp01(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// `x / (x + half)`: 0 at 0, ½ at `half`, → 1.
fn saturate(x: f64, half: f64) -> f64 {
    if x <= 0.0 { 0.0 } else { x / (x + half) }
}

/// Piecewise-linear log2 (exact at powers of two, monotone); 0 for x ≤ 1.
fn log2(x: f64) -> f64 {
    if !(x > 1.0) {
        return 0.0;
    }
    let x = x.min(1e15);
    let mut k = 0.0;
    let mut p = 1.0;
    while p * 2.0 <= x {
        p *= 2.0;
        k += 1.0;
    }
    k + (x - p) / p
}

/// `1 / (1 + e^-x)`, finite and within `[0, 1]` for every input.
fn logistic(x: f64) -> f64 {
    if x.is_nan() {
        return 0.5;
    }
    let x = x.clamp(-40.0, 40.0);
    1.0 / (1.0 + exp(-x))
}

/// `e^x` for `x` in `[-40, 40]`: range reduction to `2^k · e^r`, `|r| ≤ ln2/2`,
/// then a degree-12 Taylor polynomial (relative error < 1e-15).
fn exp(x: f64) -> f64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    let k = (x / LN_2 + 0.5).floor();
    let r = x - k * LN_2;
    let mut sum = 1.0;
    let mut term = 1.0;
    for n in 1..=12 {
        term = term * r / f64::from(n);
        sum += term;
    }
    // 2^k by exponent bits; k is within ±58 here.
    let bits = ((k as i64 + 1023) as u64) << 52;
    sum * f64::from_bits(bits)
}
