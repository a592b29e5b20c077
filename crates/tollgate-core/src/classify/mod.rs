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

mod arithmetic;
mod config;
mod counts;
mod features;
mod keywords;
pub(crate) mod learned;
mod scanner;

#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use self::arithmetic::logistic;
pub use self::config::{
    ClassifierConfig, ClassifierConfigError, DEFAULT_BIAS, MAX_ABS_PARAMETER, RawClassifierConfig, RouterKind,
};
pub use self::features::Feature;
use self::features::Signals;

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
// Classification
// ---------------------------------------------------------------------------

/// Scores `prompt`. Deterministic; never panics; `score` is always finite
/// and within `[0, 1]`.
pub fn classify(prompt: &PromptView<'_>, config: &ClassifierConfig) -> Classification {
    let signals = Signals::extract(prompt);
    let values = signals.values();

    let mut logit = config.bias();
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

/// Appends `x` with an explicit sign and two decimals ("+0.25", "-1.00")
/// without the float formatter.
fn write_signed_2dp(out: &mut String, x: f64) {
    let hundredths = (x.abs() * 100.0 + 0.5).floor().min(1e15) as u64;
    out.push(if x < 0.0 && hundredths > 0 { '-' } else { '+' });
    let _ = write!(out, "{}.{:02}", hundredths / 100, hundredths % 100);
}
