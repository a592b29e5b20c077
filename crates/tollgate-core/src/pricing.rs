//! Model prices and request cost.
//!
//! Prices are list prices in US dollars per million tokens, held as integer
//! micro-dollars per million tokens so that arithmetic is exact and the same
//! in both hosts. Costs are rounded *up* to the next micro-dollar: budgets
//! err towards over-counting by less than a millionth of a dollar, never under.
//! Tenants override any entry (or price a model the table lacks) in config.

use crate::response::Usage;
use serde::{Deserialize, Serialize};

/// The date the built-in table was last checked against the providers' price pages.
pub const PRICES_AS_OF: &str = "2026-11-01";

/// The published price of one call of a Responses API built-in tool, in
/// micro-dollars, by the tool's `type` (None: no per-call price is
/// published, so the tool is not metered: the tenant must allow it by
/// name in `routing.builtin_tools`). Tokens the tool adds to the prompt
/// are billed as input tokens and counted from the answer's usage.
pub fn builtin_tool_price(tool: &str) -> Option<u64> {
    if tool.starts_with("web_search") {
        // $10.00 per 1,000 calls.
        Some(10_000)
    } else if tool == "file_search" {
        // $2.50 per 1,000 calls.
        Some(2_500)
    } else if tool == "code_interpreter" {
        // $0.03 per container session: at most one per call.
        Some(30_000)
    } else {
        None
    }
}

/// The built-in tool an output item of a Responses answer calls
/// (`web_search_call` → `web_search`), if it is one.
pub fn builtin_tool_of_call(item_type: &str) -> Option<&str> {
    item_type.strip_suffix("_call").filter(|t| !matches!(*t, "function" | "custom_tool"))
}

/// One model's prices, in micro-dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub input: u64,
    /// Prompt tokens served from the provider's prompt cache.
    pub cached_input: u64,
    pub output: u64,
}

impl ModelPrice {
    /// From dollars per million tokens, as people write prices.
    pub fn from_usd_per_mtok(input: f64, cached_input: f64, output: f64) -> Option<Self> {
        Some(ModelPrice {
            input: usd_to_micros(input)?,
            cached_input: usd_to_micros(cached_input)?,
            output: usd_to_micros(output)?,
        })
    }

    /// Cost of reported usage, in micro-dollars (rounded up).
    ///
    /// Anthropic cache writes are priced at 1.25× input, as Anthropic bills
    /// five-minute cache writes; cached reads at the cached-input price.
    pub fn cost_micros(&self, usage: &Usage) -> u64 {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let writes = usage.cache_write_input_tokens.min(usage.input_tokens.saturating_sub(cached));
        let plain = usage.input_tokens.saturating_sub(cached).saturating_sub(writes);
        // Sum in micro-dollar-tokens per million, then divide once, rounding up.
        let total: u128 = u128::from(plain) * u128::from(self.input)
            + u128::from(cached) * u128::from(self.cached_input)
            + u128::from(writes) * u128::from(self.input) * 5 / 4
            + u128::from(usage.output_tokens) * u128::from(self.output);
        div_ceil_million(total)
    }

    /// Cost of `input` prompt tokens and `output` completion tokens at list price.
    pub fn estimate_micros(&self, input: u64, output: u64) -> u64 {
        div_ceil_million(u128::from(input) * u128::from(self.input) + u128::from(output) * u128::from(self.output))
    }

    /// The most output tokens that `budget_micros` pays for after `input` tokens.
    pub fn affordable_output(&self, input: u64, budget_micros: u64) -> u64 {
        let input_cost = div_ceil_million(u128::from(input) * u128::from(self.input));
        let left = budget_micros.saturating_sub(input_cost);
        if self.output == 0 {
            return u64::MAX;
        }
        let tokens = u128::from(left) * 1_000_000 / u128::from(self.output);
        u64::try_from(tokens).unwrap_or(u64::MAX)
    }
}

fn div_ceil_million(v: u128) -> u64 {
    u64::try_from(v.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// Dollars to micro-dollars; None for negative, non-finite or absurd values.
pub fn usd_to_micros(usd: f64) -> Option<u64> {
    if !usd.is_finite() || !(0.0..=1.0e12).contains(&usd) {
        return None;
    }
    // Rounded to the nearest micro-dollar: config values such as 0.15 are not
    // exactly representable in binary.
    Some((usd * 1_000_000.0).round() as u64)
}

/// Micro-dollars as a dollar string with six decimals, e.g. `0.001250`.
pub fn format_usd(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// Built-in list prices, $ per 1M tokens: (model id prefix, input, cached input, output).
/// Longest prefix wins, so `gpt-4o-mini-2024-07-18` prices as `gpt-4o-mini`.
const TABLE: &[(&str, f64, f64, f64)] = &[
    // OpenAI embeddings: input only.
    ("text-embedding-3-small", 0.02, 0.02, 0.0),
    ("text-embedding-3-large", 0.13, 0.13, 0.0),
    ("text-embedding-ada-002", 0.10, 0.10, 0.0),
    // OpenAI
    ("gpt-5", 1.25, 0.125, 10.0),
    ("gpt-5-mini", 0.25, 0.025, 2.0),
    ("gpt-5-nano", 0.05, 0.005, 0.40),
    ("gpt-4.1", 2.0, 0.50, 8.0),
    ("gpt-4.1-mini", 0.40, 0.10, 1.60),
    ("gpt-4.1-nano", 0.10, 0.025, 0.40),
    ("gpt-4o", 2.50, 1.25, 10.0),
    ("chatgpt-4o", 5.0, 5.0, 15.0),
    ("gpt-4o-mini", 0.15, 0.075, 0.60),
    ("o1", 15.0, 7.50, 60.0),
    ("o1-mini", 1.10, 0.55, 4.40),
    ("o3", 2.0, 0.50, 8.0),
    ("o3-mini", 1.10, 0.55, 4.40),
    ("o3-pro", 20.0, 20.0, 80.0),
    ("o4-mini", 1.10, 0.275, 4.40),
    ("gpt-4-turbo", 10.0, 10.0, 30.0),
    ("gpt-4", 30.0, 30.0, 60.0),
    ("gpt-3.5-turbo", 0.50, 0.50, 1.50),
    // Anthropic
    ("claude-opus-4-5", 5.0, 0.50, 25.0),
    ("claude-opus-4-1", 15.0, 1.50, 75.0),
    ("claude-opus-4", 15.0, 1.50, 75.0),
    ("claude-sonnet-4-5", 3.0, 0.30, 15.0),
    ("claude-sonnet-4", 3.0, 0.30, 15.0),
    ("claude-3-7-sonnet", 3.0, 0.30, 15.0),
    ("claude-3-5-sonnet", 3.0, 0.30, 15.0),
    ("claude-haiku-4-5", 1.0, 0.10, 5.0),
    ("claude-3-5-haiku", 0.80, 0.08, 4.0),
    ("claude-3-haiku", 0.25, 0.03, 1.25),
    // Google (OpenAI-compatible endpoint), prompts up to 200k tokens
    ("gemini-2.5-pro", 1.25, 0.31, 10.0),
    ("gemini-2.5-flash", 0.30, 0.075, 2.50),
    ("gemini-2.5-flash-lite", 0.10, 0.025, 0.40),
    ("gemini-2.0-flash", 0.10, 0.025, 0.40),
    // Mistral
    ("mistral-large", 2.0, 2.0, 6.0),
    ("mistral-medium", 0.40, 0.40, 2.0),
    ("mistral-small", 0.10, 0.10, 0.30),
    ("codestral", 0.30, 0.30, 0.90),
    ("ministral-8b", 0.10, 0.10, 0.10),
    // Cloudflare Workers AI
    ("@cf/meta/llama-3.3-70b-instruct-fp8-fast", 0.293, 0.293, 2.253),
    ("@cf/meta/llama-3.1-8b-instruct-fp8-fast", 0.045, 0.045, 0.384),
    ("@cf/meta/llama-3.1-8b-instruct", 0.282, 0.282, 0.827),
    ("@cf/meta/llama-3.2-3b-instruct", 0.051, 0.051, 0.335),
    ("@cf/meta/llama-3.2-1b-instruct", 0.027, 0.027, 0.201),
    ("@cf/mistral/mistral-7b-instruct-v0.1", 0.110, 0.110, 0.190),
];

/// The built-in price of `model`, by longest matching prefix.
///
/// A prefix only matches at a boundary (`-`, `@`, `.` or end), so `o1`
/// prices `o1-2024-12-17` but not `o10`, and `gpt-4` does not claim `gpt-4o`
/// (which has its own, longer entry).
pub fn builtin_price(model: &str) -> Option<ModelPrice> {
    let mut best: Option<(usize, ModelPrice)> = None;
    for &(prefix, input, cached, output) in TABLE {
        let Some(rest) = model.strip_prefix(prefix) else { continue };
        let boundary = rest.is_empty() || rest.starts_with('-') || rest.starts_with('@') || rest.starts_with(':');
        if !boundary {
            continue;
        }
        if best.is_none_or(|(len, _)| prefix.len() > len)
            && let Some(price) = ModelPrice::from_usd_per_mtok(input, cached, output)
        {
            best = Some((prefix.len(), price));
        }
    }
    best.map(|(_, p)| p)
}

/// Every built-in entry, for `tollgate pricing` and docs.
pub fn builtin_table() -> impl Iterator<Item = (&'static str, ModelPrice)> {
    TABLE.iter().filter_map(|&(m, i, c, o)| ModelPrice::from_usd_per_mtok(i, c, o).map(|p| (m, p)))
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn dated_model_names_price_as_their_family() {
        assert_eq!(builtin_price("gpt-4o-mini-2024-07-18"), builtin_price("gpt-4o-mini"));
        assert_eq!(builtin_price("gpt-4o-2024-08-06").unwrap().input, 2_500_000);
        assert_eq!(builtin_price("claude-3-5-haiku-20241022").unwrap().output, 4_000_000);
        assert_eq!(builtin_price("o1-2024-12-17").unwrap().input, 15_000_000);
    }

    #[test]
    fn prefixes_match_only_at_a_name_boundary() {
        assert_eq!(builtin_price("gpt-4o").unwrap().input, 2_500_000);
        assert_eq!(builtin_price("gpt-4").unwrap().input, 30_000_000);
        assert!(builtin_price("o10").is_none());
        assert!(builtin_price("unknown-model").is_none());
    }

    #[test]
    fn workers_ai_names_with_slashes_are_priced() {
        assert!(builtin_price("@cf/meta/llama-3.1-8b-instruct").is_some());
    }

    #[test]
    fn cost_rounds_up_and_prices_cached_tokens_separately() {
        let p = builtin_price("gpt-4o-mini").unwrap();
        let usage =
            Usage { input_tokens: 1000, cached_input_tokens: 0, cache_write_input_tokens: 0, output_tokens: 1000 };
        // 1000 * 0.15 + 1000 * 0.60 micro-dollars = 750
        assert_eq!(p.cost_micros(&usage), 750);
        let cached = Usage { cached_input_tokens: 1000, ..usage };
        assert_eq!(p.cost_micros(&cached), 75 + 600);
        let one = Usage { input_tokens: 1, cached_input_tokens: 0, cache_write_input_tokens: 0, output_tokens: 0 };
        assert_eq!(p.cost_micros(&one), 1, "a fraction of a micro-dollar rounds up");
    }

    #[test]
    fn affordable_output_inverts_the_estimate() {
        let p = builtin_price("gpt-4o").unwrap();
        let n = p.affordable_output(1000, 10_000);
        assert!(p.estimate_micros(1000, n) <= 10_000);
        assert!(p.estimate_micros(1000, n + 1) > 10_000 - 1);
    }

    #[test]
    fn usd_conversion_rejects_nonsense() {
        assert_eq!(usd_to_micros(0.15), Some(150_000));
        assert_eq!(usd_to_micros(-1.0), None);
        assert_eq!(usd_to_micros(f64::NAN), None);
        assert_eq!(format_usd(1_250), "0.001250");
    }
}
