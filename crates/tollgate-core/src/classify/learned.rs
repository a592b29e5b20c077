//! A learned lightweight router: logistic regression over hashed word
//! unigrams and bigrams of the prompt plus the heuristic classifier's
//! feature values, predicting whether the strong model is needed (it did
//! better than the weak one on a labelled prompt).
//!
//! Edge-cheap by construction: a decision hashes each word once or twice
//! and adds that many weights, with no allocation beyond the word buffer;
//! the weights are `2^hash_bits` floats (16 KiB at the default 12 bits).
//!
//! Pure: training takes its examples and a seed, and returns the model.

use super::features::Feature;
use serde::{Deserialize, Serialize};

/// Default number of hash bits: 4,096 weights, 16 KiB as `f32` (on the
/// shared dev set 12 bits generalised best across sources: leave-one-source-out
/// APGR 0.62, against 0.61 at 10 bits and 0.52 at 14).
pub const DEFAULT_HASH_BITS: u32 = 12;
/// Largest accepted: 65,536 weights, 256 KiB.
pub const MAX_HASH_BITS: u32 = 16;

/// A trained model, as `tollgate train` writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearRouter {
    /// Always `"tollgate-linear-router"`.
    pub kind: String,
    pub hash_bits: u32,
    pub bias: f32,
    /// One weight per heuristic feature, in `Feature::ALL` order.
    pub feature_weights: Vec<f32>,
    /// `2^hash_bits` weights of hashed word unigrams and bigrams.
    pub ngram_weights: Vec<f32>,
}

/// Why a model file is not usable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("not a tollgate model (kind `{0}`)")]
    Kind(String),
    #[error("hash_bits must be 8..={MAX_HASH_BITS}, not {0}")]
    HashBits(u32),
    #[error("expected {expected} {what}, found {found}")]
    Length { what: &'static str, expected: usize, found: usize },
    #[error("weights must be finite numbers")]
    NotFinite,
    #[error("not a model file: {0}")]
    Json(String),
}

const KIND: &str = "tollgate-linear-router";

impl LinearRouter {
    /// Checks a deserialised model before use.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.kind != KIND {
            return Err(ModelError::Kind(self.kind.clone()));
        }
        if !(8..=MAX_HASH_BITS).contains(&self.hash_bits) {
            return Err(ModelError::HashBits(self.hash_bits));
        }
        let expected = 1usize << self.hash_bits;
        if self.ngram_weights.len() != expected {
            return Err(ModelError::Length { what: "n-gram weights", expected, found: self.ngram_weights.len() });
        }
        if self.feature_weights.len() != Feature::COUNT {
            return Err(ModelError::Length {
                what: "feature weights",
                expected: Feature::COUNT,
                found: self.feature_weights.len(),
            });
        }
        let finite = |w: &f32| w.is_finite();
        if !self.bias.is_finite() || !self.feature_weights.iter().all(finite) || !self.ngram_weights.iter().all(finite)
        {
            return Err(ModelError::NotFinite);
        }
        Ok(())
    }

    /// The probability that the strong model is needed, in `(0, 1)`.
    /// `features` are the heuristic classifier's raw values, in
    /// `Feature::ALL` order.
    pub fn score(&self, text: &str, features: &[f64]) -> f64 {
        let mut z = f64::from(self.bias);
        for (w, v) in self.feature_weights.iter().zip(features) {
            z += f64::from(*w) * v;
        }
        // Every n-gram has the same value, 1 / sqrt(count): add the weights
        // first and scale once.
        let mask = (1u64 << self.hash_bits) - 1;
        let mut sum = 0f32;
        let count = for_each_ngram(text, |hash| {
            if let Some(w) = self.ngram_weights.get((hash & mask) as usize) {
                sum += *w;
            }
        });
        if count > 0 {
            z += f64::from(sum) / (count as f64).sqrt();
        }
        sigmoid(z)
    }
}

/// The compiled-in model (`models/default-router.json`): what a tenant
/// with `"router": "learned"` and no `model_key` routes with, so no model is
/// fetched at run time. Trained by `scripts/train-default-router` on the
/// shared labelled prompts; README "Routing quality" has its held-out
/// figures. Parsed once, on first use; None only if the file shipped
/// broken, which a unit test rules out.
pub fn builtin() -> Option<&'static LinearRouter> {
    static BUILTIN: std::sync::OnceLock<Option<LinearRouter>> = std::sync::OnceLock::new();
    BUILTIN.get_or_init(|| LinearRouter::from_json(include_bytes!("../../models/default-router.json")).ok()).as_ref()
}

impl LinearRouter {
    /// Parse and validate a model file (`tollgate train`'s output).
    pub fn from_json(bytes: &[u8]) -> Result<LinearRouter, ModelError> {
        let model: LinearRouter = serde_json::from_slice(bytes).map_err(|e| ModelError::Json(e.to_string()))?;
        model.validate()?;
        Ok(model)
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Calls `f(hash)` for each lower-cased word and each pair of adjacent
/// words of `text` and returns how many there were (each counts
/// `1 / sqrt(that number)`, so long and short prompts weigh alike). ASCII
/// is hashed byte by byte; other characters are decoded, tested with
/// Unicode's alphanumeric property and lower-cased.
fn for_each_ngram(text: &str, mut f: impl FnMut(u64)) -> usize {
    let mut count = 0usize;
    let mut previous: Option<u64> = None;
    let mut h = FNV_OFFSET;
    let mut in_word = false;
    let mut end_word = |h: u64, count: &mut usize, previous: &mut Option<u64>| {
        f(mix(h));
        *count += 1;
        if let Some(p) = *previous {
            f(mix(p.rotate_left(17) ^ h.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            *count += 1;
        }
        *previous = Some(h);
    };
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (alnum, len) = if b < 0x80 {
            let alnum = b.is_ascii_alphanumeric();
            if alnum {
                h = (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(FNV_PRIME);
            }
            (alnum, 1)
        } else {
            let c = text.get(i..).and_then(|rest| rest.chars().next()).unwrap_or('\u{fffd}');
            let alnum = c.is_alphanumeric();
            if alnum {
                for lower in c.to_lowercase() {
                    let mut buf = [0u8; 4];
                    for &x in lower.encode_utf8(&mut buf).as_bytes() {
                        h = (h ^ u64::from(x)).wrapping_mul(FNV_PRIME);
                    }
                }
            }
            (alnum, c.len_utf8())
        };
        if alnum {
            in_word = true;
        } else if in_word {
            end_word(h, &mut count, &mut previous);
            h = FNV_OFFSET;
            in_word = false;
        }
        i += len;
    }
    if in_word {
        end_word(h, &mut count, &mut previous);
    }
    count
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

/// One labelled training example.
#[derive(Clone, Debug)]
pub struct Example<'a> {
    pub text: &'a str,
    /// The heuristic classifier's raw feature values, `Feature::ALL` order.
    pub features: Vec<f64>,
    /// 1 when the strong model did better than the weak one, else 0.
    pub needs_strong: bool,
}

/// Training settings; `Default` is what `tollgate train` uses.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    pub hash_bits: u32,
    pub epochs: u32,
    pub learning_rate: f64,
    pub l2: f64,
    /// Seeds the order in which examples are visited.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { hash_bits: DEFAULT_HASH_BITS, epochs: 8, learning_rate: 0.2, l2: 1e-6, seed: 1 }
    }
}

/// Logistic regression by stochastic gradient descent with per-weight
/// (Adagrad) step sizes, which suits sparse hashed features.
pub fn train(examples: &[Example<'_>], options: &TrainOptions) -> LinearRouter {
    let hash_bits = options.hash_bits.clamp(8, MAX_HASH_BITS);
    let size = 1usize << hash_bits;
    let mask = (size - 1) as u64;
    let mut ngrams = vec![0f64; size];
    let mut ngram_g2 = vec![1e-8f64; size];
    let mut feats = [0f64; Feature::COUNT];
    let mut feat_g2 = [1e-8f64; Feature::COUNT];
    let (mut bias, mut bias_g2) = (0f64, 1e-8f64);
    // Hashed n-grams of each example, once.
    let sparse: Vec<Vec<(usize, f64)>> = examples
        .iter()
        .map(|e| {
            let mut indices = Vec::new();
            let count = for_each_ngram(e.text, |h| indices.push((h & mask) as usize));
            let value = if count > 0 { 1.0 / (count as f64).sqrt() } else { 0.0 };
            indices.into_iter().map(|j| (j, value)).collect::<Vec<(usize, f64)>>()
        })
        .collect();
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut state = options.seed | 1;
    let lr = options.learning_rate;
    for _ in 0..options.epochs {
        for i in (1..order.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        for &k in &order {
            let (e, x) = (&examples[k], &sparse[k]);
            let mut z = bias;
            z += feats.iter().zip(&e.features).map(|(w, v)| w * v).sum::<f64>();
            z += x.iter().map(|&(j, v)| ngrams[j] * v).sum::<f64>();
            let y = if e.needs_strong { 1.0 } else { 0.0 };
            let err = sigmoid(z) - y;
            bias_g2 += err * err;
            bias -= lr * err / bias_g2.sqrt();
            for (j, v) in e.features.iter().enumerate().take(Feature::COUNT) {
                let g = err * v + options.l2 * feats[j];
                feat_g2[j] += g * g;
                feats[j] -= lr * g / feat_g2[j].sqrt();
            }
            for &(j, v) in x {
                let g = err * v + options.l2 * ngrams[j];
                ngram_g2[j] += g * g;
                ngrams[j] -= lr * g / ngram_g2[j].sqrt();
            }
        }
    }
    LinearRouter {
        kind: KIND.to_owned(),
        hash_bits,
        bias: bias as f32,
        feature_weights: feats.iter().map(|&w| w as f32).collect(),
        ngram_weights: ngrams.iter().map(|&w| w as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn example(text: &str, needs_strong: bool) -> Example<'_> {
        Example { text, features: vec![0.0; Feature::COUNT], needs_strong }
    }

    #[test]
    fn training_learns_which_words_need_the_strong_model() {
        let mut data = Vec::new();
        for _ in 0..20 {
            data.push(example("prove the theorem about primes", true));
            data.push(example("derive and prove the bound", true));
            data.push(example("what is the capital of france", false));
            data.push(example("say hello to my friend", false));
        }
        let model = train(&data, &TrainOptions { hash_bits: 10, ..TrainOptions::default() });
        assert!(model.validate().is_ok());
        let none = vec![0.0; Feature::COUNT];
        let hard = model.score("please prove this theorem", &none);
        let easy = model.score("what is the capital of spain", &none);
        assert!(hard > 0.5 && easy < 0.3, "hard {hard}, easy {easy}");
    }

    #[test]
    fn training_is_deterministic_for_a_seed() {
        let data = vec![example("prove it", true), example("hello there", false)];
        let options = TrainOptions { hash_bits: 8, ..TrainOptions::default() };
        assert_eq!(train(&data, &options), train(&data, &options));
    }

    #[test]
    fn scoring_is_case_insensitive_and_ignores_punctuation() {
        let data = vec![example("prove it", true), example("hello there", false)];
        let model = train(&data, &TrainOptions { hash_bits: 8, ..TrainOptions::default() });
        let none = vec![0.0; Feature::COUNT];
        assert_eq!(model.score("Prove, it!", &none), model.score("prove it", &none));
    }

    #[test]
    fn a_model_with_the_wrong_number_of_weights_is_refused() {
        let mut model = train(&[example("a", true)], &TrainOptions { hash_bits: 8, ..TrainOptions::default() });
        model.ngram_weights.pop();
        assert!(matches!(model.validate(), Err(ModelError::Length { .. })));
        model.ngram_weights.push(f32::NAN);
        assert_eq!(model.validate(), Err(ModelError::NotFinite));
    }

    #[test]
    fn an_empty_prompt_scores_by_the_bias_and_features_alone() {
        let model = train(&[example("x", true)], &TrainOptions { hash_bits: 8, ..TrainOptions::default() });
        let s = model.score("", &[0.0; Feature::COUNT]);
        assert!((s - sigmoid(f64::from(model.bias))).abs() < 1e-12);
    }
}
