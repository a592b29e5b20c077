//! Lenient readers for the providers' usage objects.

use serde_json::{Map, Value};

use super::Usage;

/// A token count as a provider might send it.
///
/// Non-negative integers are taken as they are; negative numbers count as 0;
/// floats are truncated (saturating at `u64::MAX`); decimal strings are read
/// the same way. Anything else (null, bool, array, object, non-numeric or
/// non-finite string) is no count at all.
pub(crate) fn token_count(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Some(u)
            } else if n.as_i64().is_some() {
                Some(0)
            } else {
                n.as_f64().map(float_count)
            }
        }
        Value::String(s) => {
            let s = s.trim();
            if let Ok(u) = s.parse::<u64>() {
                Some(u)
            } else if s.parse::<i64>().is_ok() {
                Some(0)
            } else {
                s.parse::<f64>().ok().filter(|f| f.is_finite()).map(float_count)
            }
        }
        _ => None,
    }
}

/// A float as a count: truncated, negatives and NaN as 0, saturating above.
fn float_count(f: f64) -> u64 {
    if f.is_nan() || f <= 0.0 {
        0
    } else {
        // `as` saturates: values above u64::MAX become u64::MAX.
        f as u64
    }
}

/// An OpenAI `usage` object: `prompt_tokens`, `completion_tokens`,
/// `prompt_tokens_details.cached_tokens`. `None` unless it is an object with
/// at least one readable count.
pub(crate) fn openai_usage(value: &Value) -> Option<Usage> {
    let obj = value.as_object()?;
    let prompt = token_count(obj.get("prompt_tokens"));
    let completion = token_count(obj.get("completion_tokens"));
    let cached = token_count(obj.get("prompt_tokens_details").and_then(|d| d.get("cached_tokens")));
    if prompt.is_none() && completion.is_none() && cached.is_none() {
        return None;
    }
    let input_tokens = prompt.unwrap_or(0);
    Some(Usage {
        input_tokens,
        cached_input_tokens: cached.unwrap_or(0).min(input_tokens),
        cache_write_input_tokens: 0,
        output_tokens: completion.unwrap_or(0),
    })
}

/// A Responses API `usage` object: `input_tokens` (with
/// `input_tokens_details.cached_tokens`) and `output_tokens` (reasoning
/// tokens included, as OpenAI bills them).
pub(crate) fn responses_usage(value: &Value) -> Option<Usage> {
    let obj = value.as_object()?;
    let input = token_count(obj.get("input_tokens"));
    let output = token_count(obj.get("output_tokens"));
    if input.is_none() && output.is_none() {
        return None;
    }
    let input_tokens = input.unwrap_or(0);
    let cached = token_count(obj.get("input_tokens_details").and_then(|d| d.get("cached_tokens"))).unwrap_or(0);
    Some(Usage {
        input_tokens,
        cached_input_tokens: cached.min(input_tokens),
        cache_write_input_tokens: 0,
        output_tokens: output.unwrap_or(0),
    })
}

/// The four counts of an Anthropic `usage` object, each as reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AnthropicTokens {
    pub(crate) input: Option<u64>,
    pub(crate) cache_read: Option<u64>,
    pub(crate) cache_write: Option<u64>,
    pub(crate) output: Option<u64>,
}

/// The Anthropic usage field names, in the order the API sends them.
pub(crate) const ANTHROPIC_INPUT: &str = "input_tokens";
pub(crate) const ANTHROPIC_CACHE_WRITE: &str = "cache_creation_input_tokens";
pub(crate) const ANTHROPIC_CACHE_READ: &str = "cache_read_input_tokens";
pub(crate) const ANTHROPIC_OUTPUT: &str = "output_tokens";

impl AnthropicTokens {
    /// Reads `usage`; anything that is not an object reads as no counts.
    pub(crate) fn from_value(value: &Value) -> Self {
        let Some(obj) = value.as_object() else {
            return Self::default();
        };
        Self {
            input: token_count(obj.get(ANTHROPIC_INPUT)),
            cache_read: token_count(obj.get(ANTHROPIC_CACHE_READ)),
            cache_write: token_count(obj.get(ANTHROPIC_CACHE_WRITE)),
            output: token_count(obj.get(ANTHROPIC_OUTPUT)),
        }
    }

    /// Field by field, the larger of two reports (streamed counts are
    /// cumulative, so the largest is the latest).
    pub(crate) fn max(self, other: Self) -> Self {
        fn pick(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, None) => a,
                (None, b) => b,
            }
        }
        Self {
            input: pick(self.input, other.input),
            cache_read: pick(self.cache_read, other.cache_read),
            cache_write: pick(self.cache_write, other.cache_write),
            output: pick(self.output, other.output),
        }
    }

    /// The router's view; `None` when no count was readable.
    pub(crate) fn to_usage(self) -> Option<Usage> {
        if self == Self::default() {
            return None;
        }
        let cache_read = self.cache_read.unwrap_or(0);
        let cache_write = self.cache_write.unwrap_or(0);
        Some(Usage {
            input_tokens: self.input.unwrap_or(0).saturating_add(cache_read).saturating_add(cache_write),
            cached_input_tokens: cache_read,
            cache_write_input_tokens: cache_write,
            output_tokens: self.output.unwrap_or(0),
        })
    }

    /// Writes the readable counts into a usage object, keeping its other
    /// fields and its key order.
    pub(crate) fn write_into(self, obj: &mut Map<String, Value>) {
        for (key, count) in [
            (ANTHROPIC_INPUT, self.input),
            (ANTHROPIC_CACHE_WRITE, self.cache_write),
            (ANTHROPIC_CACHE_READ, self.cache_read),
            (ANTHROPIC_OUTPUT, self.output),
        ] {
            if let Some(count) = count {
                obj.insert(key.to_owned(), Value::from(count));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    #[test]
    fn token_counts_accept_integers_strings_and_floats() {
        let cases = [
            (json!(12), Some(12)),
            (json!(0), Some(0)),
            (json!(-4), Some(0)),
            (json!(7.9), Some(7)),
            (json!(-0.5), Some(0)),
            (json!(1e300), Some(u64::MAX)),
            (json!("42"), Some(42)),
            (json!(" 42\n"), Some(42)),
            (json!("-42"), Some(0)),
            (json!("3.5"), Some(3)),
            (json!("NaN"), None),
            (json!("inf"), None),
            (json!("12 tokens"), None),
            (json!(""), None),
            (json!(null), None),
            (json!(true), None),
            (json!([1]), None),
            (json!({"n": 1}), None),
        ];
        for (value, expected) in cases {
            assert_eq!(token_count(Some(&value)), expected, "{value}");
        }
        assert_eq!(token_count(None), None);
    }

    #[test]
    fn anthropic_reports_merge_by_taking_the_larger_count() {
        let start =
            AnthropicTokens::from_value(&json!({"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}));
        let delta = AnthropicTokens::from_value(&json!({"output_tokens": 40, "input_tokens": 10}));
        let merged = start.max(delta);
        assert_eq!(
            merged,
            AnthropicTokens { input: Some(10), cache_read: Some(5), cache_write: None, output: Some(40) }
        );
        assert_eq!(
            merged.to_usage(),
            Some(Usage { input_tokens: 15, cached_input_tokens: 5, cache_write_input_tokens: 0, output_tokens: 40 })
        );
    }

    #[test]
    fn writing_counts_back_keeps_key_order_and_other_fields() {
        let mut obj =
            json!({"input_tokens": 1, "service_tier": "standard", "output_tokens": 1}).as_object().cloned().unwrap();
        AnthropicTokens { input: Some(3), cache_read: None, cache_write: None, output: Some(9) }.write_into(&mut obj);
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys, ["input_tokens", "service_tier", "output_tokens"]);
        assert_eq!(Value::Object(obj), json!({"input_tokens": 3, "service_tier": "standard", "output_tokens": 9}));
    }
}
