//! The decision trace: what the router decided and why, rendered by both
//! hosts as `x-tollgate-*` response headers.

use crate::pricing::format_usd;
use serde::Serialize;

/// How the cache was involved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Served from cache.
    Hit,
    /// Looked up, not found.
    Miss,
    /// Not looked up; the reason (`disabled`, `sampled`, `no_store`, `no_cache`, `multiple_choices`).
    Bypass(String),
}

impl CacheOutcome {
    pub fn header_value(&self) -> String {
        match self {
            CacheOutcome::Hit => "hit".to_owned(),
            CacheOutcome::Miss => "miss".to_owned(),
            CacheOutcome::Bypass(why) => format!("bypass; reason={why}"),
        }
    }
}

/// One request's decision, as the client sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecisionTrace {
    pub request_id: String,
    /// `auto`, `tier` (client named a tier), or `pinned`.
    pub route: &'static str,
    pub tier: Option<String>,
    pub score: Option<f64>,
    /// `provider/model` actually asked.
    pub model: Option<String>,
    pub cache: Option<CacheOutcome>,
    /// Estimated cost before the call; actual once usage is known.
    pub cost_micros: Option<u64>,
    pub cost_is_estimate: bool,
    pub budget_remaining_micros: Option<u64>,
    pub budget_remaining_tokens: Option<u64>,
    pub downgraded: bool,
    pub fallbacks: u32,
    /// Each tier climbed: `from->to; reason=signal`.
    pub escalations: Vec<String>,
    pub reasons: Vec<String>,
    /// `client->provider` when the answering model's provider speaks
    /// another API than the client's (see `translate`).
    pub translated: Option<String>,
}

impl DecisionTrace {
    pub fn new(request_id: String) -> Self {
        DecisionTrace {
            request_id,
            route: "auto",
            tier: None,
            score: None,
            model: None,
            cache: None,
            cost_micros: None,
            cost_is_estimate: true,
            budget_remaining_micros: None,
            budget_remaining_tokens: None,
            downgraded: false,
            fallbacks: 0,
            escalations: Vec::new(),
            reasons: Vec::new(),
            translated: None,
        }
    }

    /// The `x-tollgate-*` headers. Values are ASCII-only and single-line, so
    /// no host can reject them and no client can inject a header through them.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut h = Vec::with_capacity(12);
        let mut put = |name: &str, value: String| h.push((name.to_owned(), header_safe(&value)));
        put("x-tollgate-request-id", self.request_id.clone());
        put("x-tollgate-route", self.route.to_owned());
        if let Some(t) = &self.tier {
            put("x-tollgate-tier", t.clone());
        }
        if let Some(s) = self.score {
            put("x-tollgate-score", format!("{s:.3}"));
        }
        if let Some(m) = &self.model {
            put("x-tollgate-model", m.clone());
        }
        if let Some(c) = &self.cache {
            put("x-tollgate-cache", c.header_value());
        }
        if let Some(c) = self.cost_micros {
            let name = if self.cost_is_estimate { "x-tollgate-cost-estimate-usd" } else { "x-tollgate-cost-usd" };
            put(name, format_usd(c));
        }
        if let Some(m) = self.budget_remaining_micros {
            put("x-tollgate-budget-remaining-usd", format_usd(m));
        }
        if let Some(t) = self.budget_remaining_tokens {
            put("x-tollgate-budget-remaining-tokens", t.to_string());
        }
        if self.downgraded {
            put("x-tollgate-downgraded", "soft-budget-threshold".to_owned());
        }
        if self.fallbacks > 0 {
            put("x-tollgate-fallbacks", self.fallbacks.to_string());
        }
        if !self.escalations.is_empty() {
            put("x-tollgate-escalated", self.escalations.join(", "));
        }
        if let Some(direction) = &self.translated {
            put("x-tollgate-translated", direction.clone());
        }
        if !self.reasons.is_empty() {
            put("x-tollgate-reasons", self.reasons.join("; "));
        }
        h
    }
}

/// Printable ASCII only, at most 1 KiB (reasons name the models a request
/// skipped and why).
fn header_safe(value: &str) -> String {
    let mut out: String = value.chars().map(|c| if (' '..='~').contains(&c) { c } else { '?' }).collect();
    out.truncate(1024);
    out
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn headers_are_single_line_ascii_even_for_hostile_reasons() {
        let mut t = DecisionTrace::new("req_1".into());
        t.reasons = vec!["evil\r\nset-cookie: x".into(), "ünïcode".into()];
        t.cost_micros = Some(1234);
        for (_, v) in t.headers() {
            assert!(v.bytes().all(|b| (0x20..0x7f).contains(&b)), "{v:?}");
        }
        assert!(t.headers().contains(&("x-tollgate-cost-estimate-usd".into(), "0.001234".into())));
    }
}
