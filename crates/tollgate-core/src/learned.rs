//! A learned lightweight router: logistic regression over hashed word
//! unigrams and bigrams of the prompt plus the heuristic classifier's
//! feature values, predicting whether the strong model is needed.
//!
//! It lives in `classify/learned.rs`, beside the heuristic features it reads
//! and the classifier settings that select it (so the classifier does not
//! import this module); this is its public path.

pub use crate::classify::learned::*;
