//! Prompt-complexity classifier.
//!
//! Scores a prompt in `[0, 1]`: the higher the score, the more likely the
//! prompt needs the premium model tier. The score is
//! `logistic(bias + Σ weight · feature)`, where every feature is a cheap,
//! explainable heuristic with a value in `[0, 1]`, computed by a single
//! byte-level pass over the last user turn (its first and last 16 KB when it
//! is longer than 32 KB), plus a lighter pass (no keyword lookups) over up to
//! 16 KB of earlier turns, of which only code and maths syntax count, at half
//! strength. Keywords come from a
//! small static table, looked up through a compile-time hash table; there is
//! no regex. No allocation happens while scanning; the only allocations are
//! the returned `features` and `reasons` vectors.
//!
//! When the question ends with lettered answer options ("A. …", "B. …"), the
//! features describe the question stem only, and [`Feature::AnswerChoices`]
//! fires instead.
//!
//! The score is a *ranking* score: it orders prompts by how much they are
//! likely to gain from the strong model. It is not a calibrated probability.
//!
//! Everything here is deterministic and platform-independent: the scan only
//! counts, and the floating-point work uses basic IEEE operations only (the
//! logistic function uses a local `exp`), so native and wasm builds produce
//! bit-identical scores.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

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
    pub const COUNT: usize = 13;

    /// Every feature, in a stable order (the order of [`Classification::features`]).
    pub const ALL: [Feature; Feature::COUNT] = [
        Feature::Tokens,
        Feature::Turns,
        Feature::Code,
        Feature::Math,
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

    /// The default weight (logit units per unit of feature value).
    ///
    /// Tokens, multi-part and answer choices were fitted on routing labels
    /// (GSM8K and MMLU, weak vs strong model) and then moderated; the data
    /// holds no code, tools, system prompts, conversations or other
    /// languages, so those weights are priors, as are the ones where exam
    /// questions say little about real traffic (math, reasoning, asks,
    /// constraints, short factual).
    pub fn default_weight(self) -> f64 {
        match self {
            // The strongest single signal in the labels: +0.3 per doubling.
            Feature::Tokens => 3.0,
            // Prior: a long back-and-forth carries context a small model loses.
            Feature::Turns => 1.0,
            // Prior: code is where premium models pull ahead; a fence alone gives +1.5.
            Feature::Code => 1.5,
            // Prior, kept modest: the exam labels show no gain from notation alone.
            Feature::Math => 0.8,
            // Prior: design/analysis verbs ask for multi-step work.
            Feature::Reasoning => 1.0,
            // Prior: "prove", "step by step", "compare" are the clearest asks for depth.
            Feature::ExplicitAsk => 2.0,
            // Prior: each extra requirement is another way for a small model to slip.
            Feature::Constraints => 1.0,
            // Fitted (capped): several statements judged together is the biggest
            // between-question signal in the labels.
            Feature::MultiPart => 2.0,
            // Prior: tool use is agentic, multi-step work.
            Feature::Tools => 1.0,
            // Prior, small: long system prompts mean elaborate apps, but are often boilerplate.
            Feature::SystemPrompt => 0.5,
            // Prior: short recall questions are where small models match big ones.
            Feature::ShortFactual => -1.0,
            // Fitted (moderated): picking from given options narrows the gap.
            Feature::AnswerChoices => -1.0,
            // Prior: small models degrade faster outside English.
            Feature::NonEnglish => 0.8,
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

/// The default bias: the logit of a prompt with no signals ("hi" scores
/// 0.18, "What is the capital of Australia?" 0.08).
pub const DEFAULT_BIAS: f64 = -1.5;

/// Largest absolute bias or weight a tenant may set. Beyond this the logistic
/// is saturated anyway, so a larger number is almost certainly a mistake.
pub const MAX_ABS_PARAMETER: f64 = 50.0;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Which model turns a prompt into its routing score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum RouterKind {
    /// The weighted heuristic features (`bias`, `weights`).
    #[default]
    Heuristic,
    /// The learned linear router (`crate::learned`): the compiled-in model,
    /// or the one stored under `model_key`.
    Learned,
}

/// Validated classifier settings. [`Default`] gives the tuned defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassifierConfig {
    bias: f64,
    weights: [f64; Feature::COUNT],
    router: RouterKind,
    model_key: Option<String>,
    /// The tenant's own learned model, attached by the host once it has
    /// loaded `model_key` (see [`ClassifierConfig::attach_model`]).
    model: Option<std::sync::Arc<crate::learned::LinearRouter>>,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            bias: DEFAULT_BIAS,
            weights: Feature::ALL.map(Feature::default_weight),
            router: RouterKind::Heuristic,
            model_key: None,
            model: None,
        }
    }
}

impl ClassifierConfig {
    /// Which router scores prompts.
    pub fn router(&self) -> RouterKind {
        self.router
    }

    /// Where the host finds the tenant's learned model (a KV key on the
    /// Worker, a name under `models` in the Envoy plugin config); None: the
    /// compiled-in model.
    pub fn model_key(&self) -> Option<&str> {
        self.model_key.as_deref()
    }

    /// The learned model that scores this tenant's prompts: its own once
    /// attached, else the compiled-in one. None for the heuristic router,
    /// and for a `model_key` whose model the host has not attached (the
    /// host refuses such a tenant rather than route it differently).
    pub fn learned_model(&self) -> Option<&crate::learned::LinearRouter> {
        match (self.router, &self.model_key, &self.model) {
            (RouterKind::Heuristic, _, _) => None,
            (RouterKind::Learned, _, Some(m)) => Some(m),
            (RouterKind::Learned, None, None) => crate::learned::builtin(),
            (RouterKind::Learned, Some(_), None) => None,
        }
    }

    /// Whether the host still has to load and attach `model_key`'s model.
    pub fn needs_model(&self) -> bool {
        self.router == RouterKind::Learned && self.model_key.is_some() && self.model.is_none()
    }

    /// Attach the model the host loaded for `model_key`.
    pub fn attach_model(&mut self, model: std::sync::Arc<crate::learned::LinearRouter>) {
        self.model = Some(model);
    }

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
    /// reasoning, explicit_ask, constraints, multi_part, tools,
    /// system_prompt, short_factual, answer_choices, non_english). Positive pushes towards the
    /// strong model, 0 turns a feature off.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, f64>,
    /// `heuristic` (default) or `learned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterKind>,
    /// For `learned`: where the tenant's model (`tollgate train`'s output)
    /// is stored: a Workers KV key, or a name under `models` in the Envoy
    /// plugin config. Omit for the compiled-in model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_key: Option<String>,
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
        config.router = raw.router.unwrap_or_default();
        if let Some(key) = raw.model_key {
            if config.router != RouterKind::Learned {
                return Err(ClassifierConfigError {
                    path: "model_key".to_owned(),
                    message: "only the learned router loads a model; set router to \"learned\"".to_owned(),
                });
            }
            if key.is_empty() || key.len() > 512 {
                return Err(ClassifierConfigError {
                    path: "model_key".to_owned(),
                    message: "must be 1-512 characters".to_owned(),
                });
            }
            config.model_key = Some(key);
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
            router: Some(config.router),
            model_key: config.model_key.clone(),
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
        .map(|fv| {
            let mut reason = String::with_capacity(48);
            signals.write_label(fv.feature, &mut reason);
            reason.push_str(" (");
            write_signed_2dp(&mut reason, fv.contribution);
            reason.push(')');
            reason
        })
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
            let mut scanner = Scanner::new(true);
            if text.len() <= LAST_TURN_SCAN_LIMIT {
                scanner.feed(text);
            } else {
                let half = LAST_TURN_SCAN_LIMIT / 2;
                scanner.feed(&text[..half]);
                scanner.end_line();
                scanner.feed(&text[text.len() - half..]);
            }
            last = scanner.finish();

            let mut budget = CONTEXT_SCAN_LIMIT;
            let mut scanner = Scanner::new(false);
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
            context = scanner.finish();
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

    /// Writes the human-readable name of why `feature` fired.
    fn write_label(&self, feature: Feature, out: &mut String) {
        let c = &self.last;
        let plural = |n: u64| if n == 1 { "" } else { "s" };
        // Writing to a String cannot fail.
        let _ = match feature {
            Feature::Tokens => write!(out, "prompt size ({} tokens)", self.tokens),
            Feature::Turns => write!(out, "long conversation ({} turns)", self.turns),
            Feature::Code => out.write_str(if c.code() < CONTEXT_DISCOUNT * self.context.code() {
                "code in earlier turns"
            } else if c.fences > 0 {
                "code block"
            } else if c.syntax_code() >= c.prog_terms_code() {
                "code-like text"
            } else {
                "programming request"
            }),
            Feature::Math => out.write_str(if c.math() < CONTEXT_DISCOUNT * self.context.math() {
                "math in earlier turns"
            } else if c.latex > 0 {
                "LaTeX math"
            } else if c.math_ops + c.math_symbols > 0 {
                "math notation"
            } else {
                "math vocabulary"
            }),
            Feature::Reasoning => match c.first_reason {
                Some(verb) => write!(out, "asks to {verb}"),
                None => out.write_str("reasoning verbs"),
            },
            Feature::ExplicitAsk => match c.first_ask.or(c.first_weak_ask) {
                Some(ask) => write!(out, "asks {ask}"),
                None => out.write_str("asks to explain"),
            },
            Feature::Constraints => out.write_str("multiple constraints"),
            Feature::MultiPart => write!(out, "multi-part question ({} parts)", 1 + c.extra_parts_count()),
            Feature::Tools => {
                let n = self.tool_count as u64;
                write!(out, "{n} tool{} declared", plural(n))
            }
            Feature::SystemPrompt => {
                write!(out, "long system prompt ({} bytes)", self.system_bytes)
            }
            Feature::ShortFactual => out.write_str("short factual question"),
            Feature::AnswerChoices => write!(out, "{} answer choices offered", c.option_lines),
            Feature::NonEnglish => out.write_str("non-English text"),
        };
    }
}

/// Appends `x` with an explicit sign and two decimals ("+0.25", "-1.00")
/// without the float formatter.
fn write_signed_2dp(out: &mut String, x: f64) {
    let hundredths = (x.abs() * 100.0 + 0.5).floor().min(1e15) as u64;
    out.push(if x < 0.0 && hundredths > 0 { '-' } else { '+' });
    let _ = write!(out, "{}.{:02}", hundredths / 100, hundredths % 100);
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
    /// Greek letters right after another Greek letter (words, not symbols).
    greek_pairs: u32,
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
    /// Half-strength asks: "explain …", "why …?", "elaborate", "in detail".
    weak_asks: u32,
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
    factual_start: bool,
    capital_of: bool,
    first_reason: Option<&'static str>,
    first_ask: Option<&'static str>,
    first_weak_ask: Option<&'static str>,
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

    fn ask_units(&self) -> f64 {
        f64::from(self.asks) + 0.5 * f64::from(self.weak_asks)
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
        f64::from(self.extra_parts_count())
    }

    fn extra_parts_count(&self) -> u32 {
        let romans = if self.roman_items >= 2 { self.roman_items } else { 0 };
        let parts = self.part_markers.max(romans).max(self.questions);
        parts.saturating_sub(1)
    }

    fn short_factual(&self) -> f64 {
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

    fn non_english(&self) -> f64 {
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

/// Single-pass byte scanner filling a [`Counts`].
struct Scanner {
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
    fn new(keywords: bool) -> Self {
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

    fn feed(&mut self, t: &[u8]) {
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

    fn finish(mut self) -> Counts {
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

// ---------------------------------------------------------------------------
// Keywords
// ---------------------------------------------------------------------------

/// What a (lower-cased) word means to the classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kw {
    None,
    Number,
    /// A reasoning or design verb; its label completes "asks to …".
    Reason,
    /// An explicit ask on its own; its label completes "asks …".
    Ask,
    /// A half-strength ask ("elaborate"); its label completes "asks …".
    WeakAsk,
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
    /// Common function words of other languages.
    Foreign,
    /// statement, scenario, part… followed by a number.
    PartNoun,
    // Phrase openers (the next word completes them).
    Explain,
    Show,
    Walk,
    Pros,
    Difference,
    Capital,
    // Phrase closers (they look back at the previous words).
    Step,
    Detail,
    Least,
    Most,
    Not,
    Don,
    Than,
    Sure,
    Off,
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

const MAX_KEYWORD_LEN: usize = 16;

/// A keyword: the word (lower case), what it means, and for reasoning verbs
/// and explicit asks the label used in reasons.
type Keyword = (&'static str, Kw, &'static str);

static NOT_A_KEYWORD: Keyword = ("", Kw::None, "");

#[rustfmt::skip]
static KEYWORDS: &[Keyword] = &[
    // Reasoning and design verbs.
    ("analyze", Kw::Reason, "analyze"), ("analyse", Kw::Reason, "analyze"),
    ("analyzing", Kw::Reason, "analyze"), ("analysing", Kw::Reason, "analyze"),
    ("analysis", Kw::Reason, "analyze"),
    ("design", Kw::Reason, "design"), ("designing", Kw::Reason, "design"),
    ("architect", Kw::Reason, "architect"), ("architecture", Kw::Reason, "architect"),
    ("optimize", Kw::Reason, "optimize"), ("optimise", Kw::Reason, "optimize"),
    ("optimizing", Kw::Reason, "optimize"), ("optimization", Kw::Reason, "optimize"),
    ("optimisation", Kw::Reason, "optimize"),
    ("debug", Kw::Reason, "debug"), ("debugging", Kw::Reason, "debug"),
    ("refactor", Kw::Reason, "refactor"), ("refactoring", Kw::Reason, "refactor"),
    ("derive", Kw::Reason, "derive"), ("derivation", Kw::Reason, "derive"),
    ("evaluate", Kw::Reason, "evaluate"), ("evaluating", Kw::Reason, "evaluate"),
    ("assess", Kw::Reason, "assess"), ("critique", Kw::Reason, "critique"),
    ("tradeoff", Kw::Reason, "weigh trade-offs"), ("tradeoffs", Kw::Reason, "weigh trade-offs"),
    ("implications", Kw::Reason, "weigh implications"),
    ("diagnose", Kw::Reason, "diagnose"), ("troubleshoot", Kw::Reason, "troubleshoot"),
    ("investigate", Kw::Reason, "investigate"), ("synthesize", Kw::Reason, "synthesize"),
    ("formulate", Kw::Reason, "formulate"), ("strategy", Kw::Reason, "plan a strategy"),
    ("hypothesis", Kw::Reason, "reason about a hypothesis"),
    ("infer", Kw::Reason, "infer"), ("deduce", Kw::Reason, "deduce"),
    ("reasoning", Kw::Reason, "reason"), ("scalable", Kw::Reason, "design for scale"),
    ("scalability", Kw::Reason, "design for scale"), ("bottleneck", Kw::Reason, "find bottlenecks"),
    ("migrate", Kw::Reason, "migrate"), ("implement", Kw::Reason, "implement"),
    // Explicit asks.
    ("prove", Kw::Ask, "to prove"), ("proof", Kw::Ask, "for a proof"),
    ("justify", Kw::Ask, "to justify"), ("compare", Kw::Ask, "to compare"),
    ("comparison", Kw::Ask, "to compare"), ("contrast", Kw::Ask, "to contrast"),
    ("demonstrate", Kw::Ask, "to demonstrate"), ("elaborate", Kw::WeakAsk, "to elaborate"),
    ("rigorous", Kw::Ask, "for rigour"), ("rigorously", Kw::Ask, "for rigour"),
    ("thoroughly", Kw::WeakAsk, "for thoroughness"),
    ("explain", Kw::Explain, ""), ("show", Kw::Show, ""), ("walk", Kw::Walk, ""), ("pros", Kw::Pros, ""),
    ("difference", Kw::Difference, ""), ("differences", Kw::Difference, ""),
    ("step", Kw::Step, ""), ("detail", Kw::Detail, ""),
    // Constraints.
    ("must", Kw::Constraint, ""), ("should", Kw::Constraint, ""), ("ensure", Kw::Constraint, ""),
    ("without", Kw::Constraint, ""), ("exactly", Kw::Constraint, ""), ("never", Kw::Constraint, ""),
    ("always", Kw::Constraint, ""), ("require", Kw::Constraint, ""), ("requires", Kw::Constraint, ""),
    ("required", Kw::Constraint, ""), ("requirement", Kw::Constraint, ""),
    ("requirements", Kw::Constraint, ""), ("constraint", Kw::Constraint, ""),
    ("constraints", Kw::Constraint, ""), ("strictly", Kw::Constraint, ""),
    ("mandatory", Kw::Constraint, ""), ("avoid", Kw::Constraint, ""), ("only", Kw::Constraint, ""),
    // "at least", "at most", "do not", "don't", "no more than", "make sure".
    ("least", Kw::Least, ""), ("most", Kw::Most, ""), ("not", Kw::Not, ""), ("don", Kw::Don, ""),
    ("than", Kw::Than, ""), ("sure", Kw::Sure, ""),
    // "trade-off(s)", "capital of".
    ("off", Kw::Off, ""), ("offs", Kw::Off, ""), ("capital", Kw::Capital, ""),
    // Enumerated parts.
    ("statement", Kw::PartNoun, ""), ("scenario", Kw::PartNoun, ""), ("part", Kw::PartNoun, ""),
    ("case", Kw::PartNoun, ""), ("claim", Kw::PartNoun, ""), ("premise", Kw::PartNoun, ""),
    ("question", Kw::PartNoun, ""), ("task", Kw::PartNoun, ""), ("problem", Kw::PartNoun, ""),
    // Code that is rarely prose.
    ("fn", Kw::Code, ""), ("def", Kw::Code, ""), ("elif", Kw::Code, ""), ("impl", Kw::Code, ""),
    ("struct", Kw::Code, ""), ("println", Kw::Code, ""), ("printf", Kw::Code, ""),
    ("nullptr", Kw::Code, ""), ("typedef", Kw::Code, ""), ("namespace", Kw::Code, ""),
    ("lambda", Kw::Code, ""), ("const", Kw::Code, ""), ("async", Kw::Code, ""), ("await", Kw::Code, ""),
    ("usize", Kw::Code, ""), ("void", Kw::Code, ""), ("bool", Kw::Code, ""), ("mut", Kw::Code, ""),
    ("func", Kw::Code, ""), ("endif", Kw::Code, ""), ("cout", Kw::Code, ""), ("std", Kw::Code, ""),
    ("malloc", Kw::Code, ""), ("sizeof", Kw::Code, ""), ("isinstance", Kw::Code, ""),
    ("kwargs", Kw::Code, ""), ("null", Kw::Code, ""), ("undefined", Kw::Code, ""),
    ("include", Kw::Code, ""), ("define", Kw::Code, ""), ("pragma", Kw::Code, ""),
    ("self", Kw::Code, ""), ("args", Kw::Code, ""), ("len", Kw::Code, ""), ("str", Kw::Code, ""),
    ("dict", Kw::Code, ""), ("console", Kw::Code, ""), ("int", Kw::Code, ""),
    // SQL in capitals.
    ("select", Kw::Sql, ""), ("from", Kw::Sql, ""), ("join", Kw::Sql, ""),
    ("insert", Kw::Sql, ""), ("update", Kw::Sql, ""), ("delete", Kw::Sql, ""), ("group", Kw::Sql, ""),
    ("order", Kw::Sql, ""), ("create", Kw::Sql, ""), ("table", Kw::Sql, ""), ("values", Kw::Sql, ""),
    ("into", Kw::Sql, ""), ("having", Kw::Sql, ""),
    // Programming vocabulary.
    ("python", Kw::Prog, ""), ("javascript", Kw::Prog, ""), ("typescript", Kw::Prog, ""),
    ("java", Kw::ProgWeak, ""), ("rust", Kw::ProgWeak, ""), ("golang", Kw::Prog, ""), ("kotlin", Kw::Prog, ""),
    ("php", Kw::Prog, ""), ("sql", Kw::Prog, ""), ("html", Kw::Prog, ""), ("css", Kw::Prog, ""),
    ("json", Kw::Prog, ""), ("yaml", Kw::Prog, ""), ("regex", Kw::Prog, ""), ("api", Kw::Prog, ""),
    ("apis", Kw::Prog, ""), ("function", Kw::ProgWeak, ""), ("functions", Kw::ProgWeak, ""),
    ("method", Kw::ProgWeak, ""), ("algorithm", Kw::ProgWeak, ""), ("algorithms", Kw::ProgWeak, ""),
    ("compiler", Kw::Prog, ""), ("compile", Kw::ProgWeak, ""), ("runtime", Kw::Prog, ""),
    ("bug", Kw::ProgWeak, ""), ("bugs", Kw::ProgWeak, ""), ("code", Kw::ProgWeak, ""), ("coding", Kw::Prog, ""),
    ("program", Kw::ProgWeak, ""), ("programming", Kw::Prog, ""), ("script", Kw::ProgWeak, ""),
    ("database", Kw::Prog, ""), ("query", Kw::ProgWeak, ""), ("endpoint", Kw::Prog, ""),
    ("backend", Kw::Prog, ""), ("frontend", Kw::Prog, ""), ("kubernetes", Kw::Prog, ""),
    ("docker", Kw::Prog, ""), ("git", Kw::Prog, ""), ("server", Kw::ProgWeak, ""),
    ("recursion", Kw::Prog, ""), ("recursive", Kw::ProgWeak, ""), ("pointer", Kw::ProgWeak, ""),
    ("thread", Kw::ProgWeak, ""), ("threads", Kw::ProgWeak, ""), ("concurrency", Kw::ProgWeak, ""),
    ("mutex", Kw::Prog, ""), ("deadlock", Kw::Prog, ""), ("microservice", Kw::Prog, ""),
    ("microservices", Kw::Prog, ""), ("array", Kw::ProgWeak, ""), ("variable", Kw::ProgWeak, ""),
    ("exception", Kw::ProgWeak, ""), ("stacktrace", Kw::Prog, ""),
    // Maths vocabulary.
    ("equation", Kw::MathWord, ""), ("equations", Kw::MathWord, ""), ("integral", Kw::MathWord, ""),
    ("derivative", Kw::MathWord, ""), ("theorem", Kw::MathWord, ""), ("lemma", Kw::MathWord, ""),
    ("matrix", Kw::MathWord, ""), ("matrices", Kw::MathWord, ""), ("eigenvalue", Kw::MathWord, ""),
    ("eigenvalues", Kw::MathWord, ""), ("polynomial", Kw::MathWord, ""),
    ("probability", Kw::MathWord, ""), ("logarithm", Kw::MathWord, ""),
    ("factorial", Kw::MathWord, ""), ("variance", Kw::MathWord, ""), ("prime", Kw::MathWord, ""),
    ("integer", Kw::MathWord, ""), ("integers", Kw::MathWord, ""), ("sqrt", Kw::MathWord, ""),
    ("sin", Kw::MathWord, ""), ("cos", Kw::MathWord, ""), ("tan", Kw::MathWord, ""),
    ("log", Kw::MathWord, ""), ("ln", Kw::MathWord, ""), ("solve", Kw::MathWord, ""),
    ("calculate", Kw::MathWord, ""), ("modulo", Kw::MathWord, ""), ("vector", Kw::MathWord, ""),
    ("converge", Kw::MathWord, ""), ("convergence", Kw::MathWord, ""), ("algebra", Kw::MathWord, ""),
    ("calculus", Kw::MathWord, ""), ("inequality", Kw::MathWord, ""), ("quadratic", Kw::MathWord, ""),
    ("exponent", Kw::MathWord, ""), ("fraction", Kw::MathWord, ""), ("divisible", Kw::MathWord, ""),
    // Other languages' function words that English text hardly uses.
    ("der", Kw::Foreign, ""), ("das", Kw::Foreign, ""), ("und", Kw::Foreign, ""), ("ist", Kw::Foreign, ""),
    ("nicht", Kw::Foreign, ""), ("mit", Kw::Foreign, ""), ("ein", Kw::Foreign, ""), ("eine", Kw::Foreign, ""),
    ("ich", Kw::Foreign, ""), ("sie", Kw::Foreign, ""), ("wie", Kw::Foreign, ""), ("auf", Kw::Foreign, ""),
    ("les", Kw::Foreign, ""), ("une", Kw::Foreign, ""), ("dans", Kw::Foreign, ""), ("pour", Kw::Foreign, ""),
    ("avec", Kw::Foreign, ""), ("sont", Kw::Foreign, ""), ("nous", Kw::Foreign, ""), ("vous", Kw::Foreign, ""),
    ("que", Kw::Foreign, ""), ("una", Kw::Foreign, ""), ("por", Kw::Foreign, ""), ("para", Kw::Foreign, ""),
    ("como", Kw::Foreign, ""), ("della", Kw::Foreign, ""), ("sono", Kw::Foreign, ""), ("uma", Kw::Foreign, ""),
    ("pero", Kw::Foreign, ""), ("est", Kw::Foreign, ""), ("sur", Kw::Foreign, ""), ("wir", Kw::Foreign, ""),
];

const TABLE_BITS: u32 = 11;
const TABLE_MASK: usize = (1 << TABLE_BITS) - 1;

/// The end of the word whose remaining bytes start at `t[i]`: eight bytes at
/// a time without a branch per byte (a branch per byte mispredicts at the end
/// of nearly every word, which dominated the scan).
fn word_end(t: &[u8], mut i: usize) -> usize {
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
static WORD_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric() || b == b'_' as usize;
        b += 1;
    }
    table
};

/// A word of up to 16 bytes as an exact, case-folded 128-bit key: its bytes
/// `| 0x20` (which lower-cases letters and maps no other word byte onto a
/// letter), zero-padded. Word bytes are never zero, so the length is implied.
const fn fold_key(w: &[u8]) -> u128 {
    let mut key = 0u128;
    let mut i = 0;
    while i < w.len() && i < 16 {
        key |= ((w[i] | 0x20) as u128) << (8 * i);
        i += 1;
    }
    key
}

/// [`fold_key`] of the word `t[start..end]` (`end - start <= 16`), with one
/// 16-byte load instead of a loop when the text allows it.
fn word_key(t: &[u8], start: usize, end: usize) -> u128 {
    let n = end - start;
    let raw = match t.get(start..start + 16) {
        Some(bytes) => {
            let mut chunk = [0u8; 16];
            chunk.copy_from_slice(bytes);
            u128::from_le_bytes(chunk)
        }
        None => return fold_key(&t[start..end]),
    };
    (raw | 0x2020_2020_2020_2020_2020_2020_2020_2020) & KEY_MASKS[n]
}

/// `KEY_MASKS[n]` keeps the low `n` bytes of a key.
static KEY_MASKS: [u128; MAX_KEYWORD_LEN + 1] = {
    let mut masks = [0u128; MAX_KEYWORD_LEN + 1];
    let mut n = 1;
    while n <= MAX_KEYWORD_LEN {
        masks[n] = (masks[n - 1] << 8) | 0xFF;
        n += 1;
    }
    masks
};

/// Table slot of a key: multiplicative hashing of both halves.
const fn slot_of(key: u128) -> usize {
    let folded = (key as u64) ^ ((key >> 64) as u64).rotate_left(29);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - TABLE_BITS)) as usize
}

/// [`fold_key`] of every keyword, in `KEYWORDS` order.
static KEYWORD_KEYS: [u128; KEYWORDS.len()] = {
    let mut keys = [0u128; KEYWORDS.len()];
    let mut k = 0;
    while k < KEYWORDS.len() {
        let word = KEYWORDS[k].0.as_bytes();
        assert!(!word.is_empty() && word.len() <= MAX_KEYWORD_LEN, "bad keyword length");
        let mut i = 0;
        while i < word.len() {
            assert!(word[i].is_ascii_lowercase(), "keywords are lower-case letters");
            i += 1;
        }
        keys[k] = fold_key(word);
        k += 1;
    }
    keys
};

/// Open-addressing hash table from key slot to `KEYWORDS` index + 1 (0 =
/// empty), built at compile time; duplicate keywords fail the build.
static KEYWORD_TABLE: [u16; 1 << TABLE_BITS] = {
    assert!(KEYWORDS.len() * 4 < (1 << TABLE_BITS), "keyword table too full");
    let mut table = [0u16; 1 << TABLE_BITS];
    let mut k = 0;
    while k < KEYWORDS.len() {
        let key = KEYWORD_KEYS[k];
        let mut slot = slot_of(key);
        while table[slot] != 0 {
            assert!(KEYWORD_KEYS[table[slot] as usize - 1] != key, "duplicate keyword");
            slot = (slot + 1) & TABLE_MASK;
        }
        table[slot] = k as u16 + 1;
        k += 1;
    }
    table
};

/// Index into [`KEYWORD_FILTER`]: the low five bits of the first and last
/// bytes (case-insensitive for letters; other bytes only share entries).
const fn filter_index(first: u8, last: u8) -> usize {
    (((first & 0x1F) as usize) << 5) | (last & 0x1F) as usize
}

/// A cheap pre-check that rejects most words before hashing: bit `n - 1` of
/// `KEYWORD_FILTER[filter_index(first, last)]` is set when some keyword of
/// length `n` starts and ends with those letters.
static KEYWORD_FILTER: [u16; 1024] = {
    let mut filter = [0u16; 1024];
    let mut k = 0;
    while k < KEYWORDS.len() {
        let word = KEYWORDS[k].0.as_bytes();
        filter[filter_index(word[0], word[word.len() - 1])] |= 1 << (word.len() - 1);
        k += 1;
    }
    filter
};

/// The keyword `t[start..end]` is (ignoring ASCII case), or [`NOT_A_KEYWORD`].
fn lookup(t: &[u8], start: usize, end: usize) -> &'static Keyword {
    let n = end - start;
    if n == 0 || n > MAX_KEYWORD_LEN || KEYWORD_FILTER[filter_index(t[start], t[end - 1])] >> (n - 1) & 1 == 0 {
        return &NOT_A_KEYWORD;
    }
    let key = word_key(t, start, end);
    let mut slot = slot_of(key);
    for _ in 0..KEYWORD_TABLE.len() {
        let entry = usize::from(KEYWORD_TABLE[slot]);
        if entry == 0 {
            break;
        }
        if KEYWORD_KEYS[entry - 1] == key {
            return &KEYWORDS[entry - 1];
        }
        slot = (slot + 1) & TABLE_MASK;
    }
    &NOT_A_KEYWORD
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
    // Also 0 for NaN.
    if x.is_nan() || x <= 1.0 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Classification {
        let turns = [Turn { role: TurnRole::User, text }];
        classify(&view(&turns), &ClassifierConfig::default())
    }

    fn view<'a>(turns: &'a [Turn<'a>]) -> PromptView<'a> {
        let bytes: usize = turns.iter().map(|t| t.text.len()).sum();
        PromptView { system: "", turns, tool_count: 0, tokens: u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX) }
    }

    fn value_of(c: &Classification, feature: Feature) -> f64 {
        c.features.iter().find(|f| f.feature == feature).map(|f| f.value).unwrap()
    }

    fn value(text: &str, feature: Feature) -> f64 {
        value_of(&user(text), feature)
    }

    /// `feature` fires (value ≥ `min`) on every positive and stays at 0 on every negative.
    fn fires(feature: Feature, min: f64, positives: &[&str], negatives: &[&str]) {
        for text in positives {
            let v = value(text, feature);
            assert!(v >= min, "{feature} should fire on {text:?} (value {v})");
        }
        for text in negatives {
            let v = value(text, feature);
            assert!(v == 0.0, "{feature} should not fire on {text:?} (value {v})");
        }
    }

    const EASY: &[&str] = &[
        "What is the capital of Australia?",
        "How many days are in a leap year?",
        "Who wrote Pride and Prejudice?",
        "When did the Berlin Wall fall?",
        "Translate 'good morning' into Spanish.",
        "Give me a synonym for 'happy'.",
        "hi",
        "Reply with OK.",
    ];

    const HARD: &[&str] = &[
        "Design a multi-region, active-active architecture for a payments ledger that must guarantee \
         exactly-once settlement. Compare the trade-offs of a TrueTime-style clock versus a deterministic \
         scheduler, and explain step by step how you would handle a partition between regions.",
        "```rust\nfn merge(a: &mut Vec<i32>, b: &[i32]) {\n    for x in b { a.push(*x); }\n    a.sort();\n}\n```\n\
         Refactor this to run in O(n+m) without extra allocation. It must stay stable, should not use unsafe, \
         and explain why your version is correct.",
        "Prove that there are infinitely many primes of the form 4k+3. Justify every step rigorously.",
        "Derive the closed form of \\sum_{k=1}^{n} k^2 and prove it by induction. Then generalise the method \
         to k^3 and analyze the complexity of computing it.",
        "You are reviewing a distributed cache. Requirements:\n1. reads must be linearizable\n2. writes must \
         survive the loss of any two nodes\n3. p99 latency must stay under 5 ms\nEvaluate whether a \
         quorum design meets all three, and justify your answer.",
    ];

    #[test]
    fn the_same_input_always_gives_the_identical_output() {
        let system = "You are a careful assistant.";
        let turns = [
            Turn { role: TurnRole::User, text: HARD[1] },
            Turn { role: TurnRole::Assistant, text: "Here is a first attempt: ```let x = 1;```" },
            Turn { role: TurnRole::User, text: HARD[0] },
        ];
        let prompt = PromptView { system, turns: &turns, tool_count: 2, tokens: 700 };
        let config = ClassifierConfig::default();
        let first = classify(&prompt, &config);
        for _ in 0..3 {
            let again = classify(&prompt, &config);
            assert_eq!(again, first);
            assert_eq!(again.score.to_bits(), first.score.to_bits());
        }
    }

    #[test]
    fn easy_factual_questions_score_below_hard_multi_constraint_prompts() {
        let easiest_hard = HARD.iter().map(|t| user(t).score).fold(f64::INFINITY, f64::min);
        let hardest_easy = EASY.iter().map(|t| user(t).score).fold(f64::NEG_INFINITY, f64::max);
        assert!(hardest_easy < easiest_hard, "easy up to {hardest_easy}, hard from {easiest_hard}");
        // With room to spare around the usual 0.5 threshold.
        assert!(hardest_easy < 0.25, "easy prompts should stay cheap: {hardest_easy}");
        assert!(easiest_hard > 0.6, "hard prompts should go premium: {easiest_hard}");
    }

    #[test]
    fn every_feature_is_reported_once_in_a_stable_order() {
        let c = user(HARD[0]);
        let order: Vec<Feature> = c.features.iter().map(|f| f.feature).collect();
        assert_eq!(order, Feature::ALL.to_vec());
        for fv in &c.features {
            assert!((0.0..=1.0).contains(&fv.value), "{fv:?}");
            let expected = ClassifierConfig::default().weight(fv.feature) * fv.value;
            assert_eq!(fv.contribution.to_bits(), expected.to_bits());
        }
    }

    #[test]
    fn feature_names_round_trip_and_are_snake_case() {
        for f in Feature::ALL {
            assert_eq!(Feature::from_name(f.name()), Some(f));
            assert!(f.name().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{f}");
        }
        assert_eq!(Feature::from_name("Code"), None);
        assert_eq!(Feature::ALL.len(), Feature::COUNT);
    }

    #[test]
    fn tokens_grow_with_the_prompt_size() {
        let size = |tokens| {
            let turns = [Turn { role: TurnRole::User, text: "x" }];
            let prompt = PromptView { system: "", turns: &turns, tool_count: 0, tokens };
            value_of(&classify(&prompt, &ClassifierConfig::default()), Feature::Tokens)
        };
        assert_eq!(size(10), 0.0);
        assert!(size(200) > size(100));
        assert!(size(4000) > size(200));
        assert_eq!(size(u32::MAX), 1.0);
    }

    #[test]
    fn turns_fire_on_a_long_conversation_and_not_on_a_single_message() {
        let turns: Vec<Turn<'_>> = (0..8)
            .map(|i| Turn { role: if i % 2 == 0 { TurnRole::User } else { TurnRole::Assistant }, text: "ok" })
            .collect();
        assert!(value_of(&classify(&view(&turns), &ClassifierConfig::default()), Feature::Turns) >= 0.5);
        assert_eq!(value("ok", Feature::Turns), 0.0);
    }

    #[test]
    fn code_fires_on_fenced_and_unfenced_code_and_programming_requests_but_not_on_prose() {
        fires(
            Feature::Code,
            0.3,
            &[
                "```\nprint('hi')\n```",
                "Why does this fail?\nfn main() {\n    let v = vec![1, 2];\n    println!(\"{}\", v[2]);\n}",
                "def area(r):\n    return 3.14 * r ** 2\n\nprint(area(2))",
                "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name;",
                "Write a Python function that parses JSON from a REST API.",
            ],
            &[
                "The king returned from the war; nothing escaped him, and he saw everybody.",
                "What is the capital of Australia?",
                "Select the best answer from the list below.",
            ],
        );
    }

    #[test]
    fn code_in_earlier_turns_counts_at_half_strength() {
        let code = "```python\nimport os\nprint(os.getcwd())\n```";
        let turns = [
            Turn { role: TurnRole::User, text: code },
            Turn { role: TurnRole::Assistant, text: "Sure." },
            Turn { role: TurnRole::User, text: "Now make it shorter." },
        ];
        let with_context = value_of(&classify(&view(&turns), &ClassifierConfig::default()), Feature::Code);
        assert_eq!(with_context, CONTEXT_DISCOUNT * value(code, Feature::Code));
        let c = classify(&view(&turns), &ClassifierConfig::default());
        assert!(c.reasons.iter().any(|r| r.starts_with("code in earlier turns")), "{:?}", c.reasons);
    }

    #[test]
    fn math_fires_on_equations_latex_and_symbols_but_not_on_prose() {
        fires(
            Feature::Math,
            0.25,
            &[
                "Solve for x: 3x + 5 = 20",
                "Compute \\int_0^1 x^2 \\, dx.",
                "Show that ∑ 1/n² = π²/6.",
                "Find the eigenvalues of the matrix and the derivative of the polynomial.",
            ],
            &["Tell me a story about a dragon.", "The well-known trade-off is speed versus safety.", "Meet at 3-4pm."],
        );
    }

    #[test]
    fn reasoning_fires_on_design_and_analysis_verbs_and_not_on_chat() {
        fires(
            Feature::Reasoning,
            0.5,
            &[
                "Analyze the failure.",
                "Design a rate limiter.",
                "Optimize this query.",
                "Debug my service.",
                "What are the trade-offs here?",
            ],
            &["Thanks, that was helpful!", "Write a haiku about autumn."],
        );
    }

    #[test]
    fn explicit_asks_fire_on_proofs_comparisons_and_step_by_step_but_not_on_statements() {
        fires(
            Feature::ExplicitAsk,
            0.6,
            &[
                "Think step by step.",
                "Think step-by-step.",
                "Prove it.",
                "Compare Rust and Go.",
                "Explain why the sky is blue.",
                "Justify your answer.",
                "What is the difference between TCP and UDP?",
                "List the pros and cons.",
                "Walk me through it.",
            ],
            &["I took a step back.", "The proofreader left.", "Show me the door."],
        );
    }

    #[test]
    fn constraints_fire_on_requirement_lists_and_not_on_narrative() {
        fires(
            Feature::Constraints,
            0.3,
            &[
                "Requirements:\n- must run offline\n- must not allocate\n- should use at most 2 MB\n- ensure it is \
                 deterministic",
                "Write it without recursion. It must be stable, should handle empty input, and make sure you \
                 don't use globals.",
            ],
            &["Tell me a story about a dragon who lived in a cave by the sea."],
        );
        // A long passage that says "should" now and then is narrative, not instructions.
        let passage = "The river ran through the valley and the villagers fished in it every morning. ".repeat(20)
            + "They should have known.";
        assert!(value(&passage, Feature::Constraints) < 0.1);
    }

    #[test]
    fn multi_part_fires_on_several_statements_or_questions_and_not_on_one() {
        fires(
            Feature::MultiPart,
            0.5,
            &[
                "Statement 1 | Every group is abelian. Statement 2 | Every ring is a field.",
                "Which are true?\nI. Cats purr.\nII. Dogs bark.\nIII. Fish fly.",
                "What is a monad? Why would I use one?",
                "Consider (i) the cost and (ii) the risk.",
            ],
            &["What is a monad?", "Statement 1 is long."],
        );
    }

    #[test]
    fn tools_fire_when_tools_are_declared_and_not_otherwise() {
        let turns = [Turn { role: TurnRole::User, text: "Book me a flight." }];
        let with = PromptView { tool_count: 3, ..view(&turns) };
        assert!(value_of(&classify(&with, &ClassifierConfig::default()), Feature::Tools) >= 0.5);
        assert_eq!(value_of(&classify(&view(&turns), &ClassifierConfig::default()), Feature::Tools), 0.0);
    }

    #[test]
    fn system_prompt_fires_on_a_long_system_prompt_and_not_on_a_short_one() {
        let turns = [Turn { role: TurnRole::User, text: "Hello" }];
        let long = "You are a support agent for ACME. Follow the policy below.\n".repeat(60);
        let with = PromptView { system: &long, ..view(&turns) };
        assert!(value_of(&classify(&with, &ClassifierConfig::default()), Feature::SystemPrompt) >= 0.5);
        let short = PromptView { system: "Be brief.", ..view(&turns) };
        assert_eq!(value_of(&classify(&short, &ClassifierConfig::default()), Feature::SystemPrompt), 0.0);
    }

    #[test]
    fn short_factual_fires_on_short_wh_questions_and_not_on_long_or_reasoning_ones() {
        fires(
            Feature::ShortFactual,
            1.0,
            &[
                "What is the capital of Australia?",
                "Who wrote Hamlet?",
                "How many legs does a spider have?",
                "capital of France",
                "When did WW2 end?",
            ],
            &[
                "Why is the sky blue?",
                "What are the trade-offs between Raft and Paxos?",
                "How do I design a cache?",
                "Write a poem.",
                "What is X? What is Y?",
                "What is the time complexity of this code? ```\nfor i in range(n):\n    print(i)\n```",
            ],
        );
        let longer = "What is the name of the small town on the northern coast where the author spent the \
                      last summers of his life writing letters?";
        assert!(value(longer, Feature::ShortFactual) < 0.5);
    }

    #[test]
    fn answer_choices_fire_on_a_final_lettered_option_block_and_not_on_an_outline() {
        fires(
            Feature::AnswerChoices,
            1.0,
            &[
                "Which gas is most abundant in air?\nA. Oxygen\nB. Nitrogen\nC. Argon\nD. Helium\nAnswer:",
                "Pick one:\n(A) red\n(B) blue",
            ],
            &[
                "Outline:\nA. Introduction\nB. Methods\nThen write the full paper with citations and figures.",
                "A. Smith wrote this.",
            ],
        );
    }

    #[test]
    fn answer_options_do_not_count_as_part_of_the_question() {
        let with_options = "Which is largest?\nA. 10 + 20 = 30\nB. 2^10\nC. 1000 - 1\nD. 3 * 300\nAnswer:";
        assert_eq!(value(with_options, Feature::Math), 0.0);
        assert_eq!(value(with_options, Feature::ShortFactual), 1.0);
    }

    #[test]
    fn non_english_fires_on_other_scripts_and_languages_and_not_on_english() {
        fires(
            Feature::NonEnglish,
            0.3,
            &[
                "请解释一下分布式系统中的一致性协议。",
                "Объясни, пожалуйста, как работает этот алгоритм.",
                "Quelle est la capitale du Canada ? Je voudrais une réponse avec des détails pour les enfants.",
                "Erkläre mir bitte, wie das funktioniert und warum es nicht mit einer Datenbank geht.",
            ],
            &["Explain how a hash map handles collisions.", "The café serves crème brûlée."],
        );
        // A few Greek letters in English are maths symbols, not a language.
        assert_eq!(value("Let α + β = π and find σ.", Feature::NonEnglish), 0.0);
        assert!(value("Let α + β = π and find σ.", Feature::Math) > 0.0);
    }

    #[test]
    fn reasons_are_ordered_by_absolute_contribution_and_few() {
        for text in HARD.iter().chain(EASY) {
            let c = user(text);
            assert!(c.reasons.len() <= MAX_REASONS);
            let mut contributions: Vec<f64> =
                c.features.iter().map(|f| f.contribution).filter(|x| x.abs() >= MIN_REASON_CONTRIBUTION).collect();
            contributions.sort_by(|a, b| b.abs().total_cmp(&a.abs()));
            contributions.truncate(MAX_REASONS);
            assert_eq!(c.reasons.len(), contributions.len(), "{:?}", c.reasons);
            for (reason, x) in c.reasons.iter().zip(&contributions) {
                let mut suffix = String::from(" (");
                write_signed_2dp(&mut suffix, *x);
                suffix.push(')');
                assert!(reason.ends_with(&suffix), "{reason:?} should end with {suffix:?}");
            }
        }
        let c = user("What is the capital of Australia?");
        assert_eq!(c.reasons.first().map(String::as_str), Some("short factual question (-1.00)"));
    }

    #[test]
    fn contributions_are_written_with_a_sign_and_two_decimals() {
        let fmt = |x| {
            let mut s = String::new();
            write_signed_2dp(&mut s, x);
            s
        };
        assert_eq!(fmt(0.214), "+0.21");
        assert_eq!(fmt(-0.155), "-0.16");
        assert_eq!(fmt(1.0), "+1.00");
        assert_eq!(fmt(-0.001), "+0.00");
        assert_eq!(fmt(12.345), "+12.35");
    }

    #[test]
    fn the_score_is_finite_and_within_bounds_for_hostile_input() {
        let one_char = "a".repeat(1 << 20);
        let euros = "€".repeat(400_000);
        let emoji = "😀🔥🚀".repeat(1000);
        let nul = "\0".repeat(10_000);
        let spaces = " \t\n\r".repeat(10_000);
        let garbage: String = (0u32..5000).filter_map(|i| char::from_u32((i * 7919) % 0x11_0000)).collect();
        let punctuation = "`\\{}()[];:=+-*/^<>!?.|&#$%'\"".repeat(2000);
        let texts = ["", one_char.as_str(), &euros, &emoji, &nul, &spaces, &garbage, &punctuation];
        let configs = [
            ClassifierConfig::default(),
            ClassifierConfig::default().with_bias(MAX_ABS_PARAMETER).unwrap(),
            Feature::ALL.iter().fold(ClassifierConfig::default().with_bias(-MAX_ABS_PARAMETER).unwrap(), |c, f| {
                c.with_weight(*f, -MAX_ABS_PARAMETER).unwrap()
            }),
        ];
        for text in texts {
            let turns = [Turn { role: TurnRole::User, text }, Turn { role: TurnRole::Tool, text }];
            let prompts = [
                view(&turns),
                PromptView { system: text, turns: &turns, tool_count: usize::MAX, tokens: u32::MAX },
                PromptView { system: "", turns: &[], tool_count: 0, tokens: 0 },
            ];
            for prompt in &prompts {
                for config in &configs {
                    let c = classify(prompt, config);
                    assert!(c.score.is_finite() && (0.0..=1.0).contains(&c.score), "{}", c.score);
                    for fv in &c.features {
                        assert!(fv.value.is_finite() && (0.0..=1.0).contains(&fv.value), "{fv:?}");
                        assert!(fv.contribution.is_finite(), "{fv:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn random_text_split_across_turns_never_panics() {
        // Deterministic xorshift; pieces chosen to exercise every scanner path.
        let pieces = [
            "a",
            "Z",
            "7",
            "3.5",
            "-",
            "+",
            "=",
            "^",
            "/",
            "*",
            "(",
            ")",
            "{",
            "}",
            ";",
            "`",
            "```",
            "\\frac",
            "\n",
            " ",
            "\t",
            "?",
            ".",
            "!",
            "'",
            "’t",
            "don",
            "by",
            "step",
            "A.",
            "B)",
            "(C)",
            "I.",
            "II.",
            "é",
            "€",
            "😀",
            "α",
            "中文",
            "Жж",
            "\0",
            "Statement",
            "explain",
            "how",
            "#include",
            "SELECT",
            "::",
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300 {
            let mut texts: Vec<String> = Vec::new();
            for _ in 0..(next() % 4 + 1) {
                let len = next() % 40;
                texts.push((0..len).map(|_| pieces[(next() % pieces.len() as u64) as usize]).collect());
            }
            let roles = [TurnRole::User, TurnRole::Assistant, TurnRole::Tool];
            let turns: Vec<Turn<'_>> = texts
                .iter()
                .enumerate()
                .map(|(i, text)| Turn { role: roles[(i + (next() % 3) as usize) % 3], text })
                .collect();
            let c = classify(&view(&turns), &ClassifierConfig::default());
            assert!(c.score.is_finite() && (0.0..=1.0).contains(&c.score));
        }
        // A turn that starts with "-" right after a turn that ends with a number.
        let turns = [
            Turn { role: TurnRole::User, text: "-1" },
            Turn { role: TurnRole::Assistant, text: "2" },
            Turn { role: TurnRole::User, text: "ok" },
        ];
        let c = classify(&view(&turns), &ClassifierConfig::default());
        assert!(c.score.is_finite());
    }

    #[test]
    fn a_question_at_the_end_of_a_very_long_prompt_is_still_seen() {
        let text = "lorem ipsum dolor sit amet ".repeat(20_000) + "Now prove that the algorithm terminates.";
        assert!(value(&text, Feature::ExplicitAsk) > 0.5);
    }

    #[test]
    fn config_overrides_change_the_score() {
        let text = HARD[1];
        let turns = [Turn { role: TurnRole::User, text }];
        let default = classify(&view(&turns), &ClassifierConfig::default()).score;
        let raw: RawClassifierConfig = serde_json::from_str(r#"{"bias": -3.0, "weights": {"code": 0.0}}"#).unwrap();
        let config = ClassifierConfig::try_from(raw).unwrap();
        assert_eq!(config.bias(), -3.0);
        assert_eq!(config.weight(Feature::Code), 0.0);
        assert_eq!(config.weight(Feature::Math), Feature::Math.default_weight());
        let overridden = classify(&view(&turns), &config).score;
        assert!(overridden < default, "{overridden} should be below {default}");
        let c = classify(&view(&turns), &config);
        assert!(!c.reasons.iter().any(|r| r.starts_with("code")), "{:?}", c.reasons);
    }

    #[test]
    fn an_empty_override_is_the_default_config() {
        let raw: RawClassifierConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(ClassifierConfig::try_from(raw).unwrap(), ClassifierConfig::default());
        let full = RawClassifierConfig::from(&ClassifierConfig::default());
        assert_eq!(full.weights.len(), Feature::COUNT);
        let json = serde_json::to_string(&full).unwrap();
        let back: RawClassifierConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(ClassifierConfig::try_from(back).unwrap(), ClassifierConfig::default());
    }

    #[test]
    fn unknown_weight_names_are_rejected_with_their_path() {
        let raw: RawClassifierConfig = serde_json::from_str(r#"{"weights": {"code": 1.0, "cde": 0.5}}"#).unwrap();
        let err = ClassifierConfig::try_from(raw).unwrap_err();
        assert_eq!(err.path, "weights.cde");
        assert!(err.message.contains("unknown feature"), "{err}");
        assert!(err.to_string().starts_with("weights.cde: "), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<RawClassifierConfig>(r#"{"bais": 1.0}"#).is_err());
        assert!(serde_json::from_str::<RawClassifierConfig>(r#"{"weights": {"code": "high"}}"#).is_err());
    }

    #[test]
    fn non_finite_numbers_are_rejected_with_their_path() {
        let bias = RawClassifierConfig { bias: Some(f64::NAN), ..Default::default() };
        assert_eq!(ClassifierConfig::try_from(bias).unwrap_err().path, "bias");
        let mut weights = BTreeMap::new();
        weights.insert("math".to_owned(), f64::INFINITY);
        let weight = RawClassifierConfig { bias: None, weights, ..RawClassifierConfig::default() };
        let err = ClassifierConfig::try_from(weight).unwrap_err();
        assert_eq!(
            err,
            ClassifierConfigError { path: "weights.math".into(), message: "must be a finite number".into() }
        );
        let mut weights = BTreeMap::new();
        weights.insert("tools".to_owned(), 1e6);
        let huge = RawClassifierConfig { bias: None, weights, ..RawClassifierConfig::default() };
        assert_eq!(ClassifierConfig::try_from(huge).unwrap_err().path, "weights.tools");
        assert!(ClassifierConfig::default().with_weight(Feature::Code, f64::NEG_INFINITY).is_err());
    }

    #[test]
    fn every_keyword_is_found_whatever_its_case() {
        for (k, keyword) in KEYWORDS.iter().enumerate() {
            let word = keyword.0;
            for variant in
                [word.to_owned(), word.to_ascii_uppercase(), format!("{}{}", &word[..1].to_uppercase(), &word[1..])]
            {
                // At the end of the text (no 16-byte load) and in the middle of it.
                for text in [variant.clone(), format!("{variant} and then some more words")] {
                    let found = lookup(text.as_bytes(), 0, variant.len());
                    assert!(std::ptr::eq(found, &KEYWORDS[k]), "{variant:?} in {text:?}");
                }
            }
        }
        assert_eq!(lookup(b"designs", 0, 7).1, Kw::None);
        assert_eq!(lookup(b"desig", 0, 5).1, Kw::None);
        assert_eq!(lookup(b"x_1", 0, 3).1, Kw::None);
    }

    #[test]
    fn the_fast_word_scanner_agrees_with_the_byte_loop() {
        let slow = |t: &[u8], mut i: usize| {
            while i < t.len() && WORD_BYTE[usize::from(t[i])] {
                i += 1;
            }
            i
        };
        let text = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789 x1_y2 é€😀 \0\x7f@[`{~ a";
        let bytes = text.as_bytes();
        for start in 0..bytes.len() {
            assert_eq!(word_end(bytes, start), slow(bytes, start), "at {start}");
        }
        for b in 0..=255u8 {
            let t = [b'a', b'b', b, b'c', b'd', b'e', b'f', b'g', b'h', b'i', b'j'];
            assert_eq!(word_end(&t, 1), slow(&t, 1), "byte {b:#x}");
        }
    }

    #[test]
    fn the_logistic_matches_the_standard_library() {
        for i in -4000..=4000 {
            let x = f64::from(i) / 100.0;
            let expected = 1.0 / (1.0 + (-x).exp());
            assert!((logistic(x) - expected).abs() < 1e-14, "{x}");
        }
        assert_eq!(logistic(f64::NAN), 0.5);
        assert_eq!(logistic(f64::INFINITY), logistic(40.0));
        assert!(logistic(-1e300) >= 0.0);
    }

    #[test]
    fn log2_is_exact_at_powers_of_two_and_monotone() {
        for k in 0..40 {
            assert_eq!(log2(f64::from(2u32).powi(k)), f64::from(k));
        }
        let mut last = 0.0;
        for x in 1..5000 {
            let y = log2(f64::from(x));
            assert!(y >= last);
            last = y;
        }
    }
}
