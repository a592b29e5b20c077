//! The features: what each one measures, its default weight, and its value
//! for a prompt (the scan of the prompt's turns, turned into numbers in
//! `[0, 1]`).

use std::fmt::{self, Write as _};

use super::arithmetic::{clamp01, log2, saturate};
use super::counts::Counts;
use super::scanner::Scanner;
use super::{PromptView, TurnRole};

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

    /// Every feature, in a stable order (the order of [`Classification::features`](super::Classification::features)).
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

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes of the last user turn that are scanned; a longer turn is scanned as
/// its first and last `LAST_TURN_SCAN_LIMIT / 2` bytes.
const LAST_TURN_SCAN_LIMIT: usize = 32 * 1024;

/// Bytes of earlier turns (newest first) scanned for context.
const CONTEXT_SCAN_LIMIT: usize = 16 * 1024;

/// Context (earlier turns) counts for this share of a code/maths signal.
pub(super) const CONTEXT_DISCOUNT: f64 = 0.5;

/// Everything [`classify`](super::classify) derives from a prompt before weighting.
#[derive(Debug)]
pub(super) struct Signals {
    last: Counts,
    context: Counts,
    tokens: u32,
    turns: usize,
    tool_count: usize,
    system_bytes: usize,
}

impl Signals {
    pub(super) fn extract(prompt: &PromptView<'_>) -> Signals {
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

    pub(super) fn values(&self) -> [f64; Feature::COUNT] {
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
    pub(super) fn write_label(&self, feature: Feature, out: &mut String) {
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
