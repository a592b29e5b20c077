//! Classifier settings: the tenant's bias, weights and router, validated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::features::Feature;
use super::learned::{self, LinearRouter};

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// The default bias: the logit of a prompt with no signals ("hi" scores
/// 0.18, "What is the capital of Australia?" 0.08).
pub const DEFAULT_BIAS: f64 = -1.5;

/// Largest absolute bias or weight a tenant may set. Beyond this the logistic
/// is saturated anyway, so a larger number is almost certainly a mistake.
pub const MAX_ABS_PARAMETER: f64 = 50.0;

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
    model: Option<std::sync::Arc<LinearRouter>>,
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
    pub fn learned_model(&self) -> Option<&LinearRouter> {
        match (self.router, &self.model_key, &self.model) {
            (RouterKind::Heuristic, _, _) => None,
            (RouterKind::Learned, _, Some(m)) => Some(m),
            (RouterKind::Learned, None, None) => learned::builtin(),
            (RouterKind::Learned, Some(_), None) => None,
        }
    }

    /// Whether the host still has to load and attach `model_key`'s model.
    pub fn needs_model(&self) -> bool {
        self.router == RouterKind::Learned && self.model_key.is_some() && self.model.is_none()
    }

    /// Attach the model the host loaded for `model_key`.
    pub fn attach_model(&mut self, model: std::sync::Arc<LinearRouter>) {
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
