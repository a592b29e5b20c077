//! Escalation: when a cheaper tier's answer looks unresolved, ask the next
//! tier once and return the better of the two answers.
//!
//! The judgement is deliberately cheap and conservative: it reads only what
//! the provider already said about its answer (finish reason, refusal
//! field, content) and whether the client asked for JSON. It never calls a
//! model to grade a model. [`crate::engine::Plan`] drives the retry; this
//! module holds the tenant's settings and the signals.

use crate::api::ApiFormat;
use crate::request::ChatRequest;
use crate::response::ResponseSummary;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most escalations one request may make (one per tier climbed).
pub const MAX_ATTEMPTS_LIMIT: u32 = 3;

/// A reason to think an answer did not resolve the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Signal {
    /// The answer stopped at the output limit (`finish_reason: length`,
    /// Anthropic `stop_reason: max_tokens`).
    Length,
    /// No text and no tool call.
    Empty,
    /// The model declined: OpenAI's `refusal` field, a content filter stop,
    /// Anthropic's `refusal` stop, or a short answer that opens with a refusal.
    Refusal,
    /// The client asked for JSON (`response_format` `json_object` or
    /// `json_schema`) and the answer's text does not parse as JSON.
    MalformedJson,
    /// Every model of the tier failed (retryable status, timeout, connection).
    UpstreamError,
}

impl Signal {
    pub const ALL: [Signal; 5] =
        [Signal::Length, Signal::Empty, Signal::Refusal, Signal::MalformedJson, Signal::UpstreamError];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Length => "length",
            Signal::Empty => "empty",
            Signal::Refusal => "refusal",
            Signal::MalformedJson => "malformed_json",
            Signal::UpstreamError => "upstream_error",
        }
    }

    /// How bad an answer with this signal is, for choosing between two
    /// unresolved answers: a cut answer still says something, a refusal or
    /// an empty answer says nothing.
    fn badness(self) -> u8 {
        match self {
            Signal::Length => 1,
            Signal::MalformedJson => 2,
            Signal::Refusal => 3,
            Signal::Empty => 4,
            Signal::UpstreamError => 5,
        }
    }
}

/// `escalation` in the tenant config, as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawEscalation {
    /// Off unless set: an escalation pays for two answers.
    #[serde(default)]
    pub enabled: bool,
    /// The signals that trigger it; default all of them.
    #[serde(default)]
    pub on: Option<Vec<Signal>>,
    /// How many tiers one request may climb (1-3); default 1.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// Validated escalation settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EscalationSettings {
    pub enabled: bool,
    pub signals: Vec<Signal>,
    pub max_attempts: u32,
}

impl Default for EscalationSettings {
    fn default() -> Self {
        EscalationSettings { enabled: false, signals: Signal::ALL.to_vec(), max_attempts: 1 }
    }
}

impl EscalationSettings {
    /// Validate; errors are `(path under escalation, message)`.
    pub fn from_raw(raw: RawEscalation) -> Result<EscalationSettings, (String, String)> {
        let max_attempts = raw.max_attempts.unwrap_or(1);
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(("max_attempts".into(), format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}")));
        }
        let mut signals = raw.on.unwrap_or_else(|| Signal::ALL.to_vec());
        if raw.enabled && signals.is_empty() {
            return Err(("on".into(), "name at least one signal, or set enabled to false".into()));
        }
        signals.sort();
        signals.dedup();
        Ok(EscalationSettings { enabled: raw.enabled, signals, max_attempts })
    }

    /// Whether `signal` triggers an escalation for this tenant.
    pub fn triggers(&self, signal: Signal) -> bool {
        self.enabled && self.signals.contains(&signal)
    }
}

/// Whether an answer that has `a` is worse than one that has `b` (None: resolved).
pub fn worse(a: Option<Signal>, b: Option<Signal>) -> bool {
    a.map_or(0, Signal::badness) > b.map_or(0, Signal::badness)
}

/// Whether the client asked for a JSON answer.
pub fn wants_json(request: &ChatRequest) -> bool {
    // Chat asks with `response_format`, the Responses API with `text.format`.
    let (field, pointer) = match request.api {
        ApiFormat::OpenAi => ("response_format", "/type"),
        ApiFormat::Responses => ("text", "/format/type"),
        ApiFormat::Anthropic | ApiFormat::Embeddings => return false,
    };
    request
        .raw_field(field)
        .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
        .and_then(|v| v.pointer(pointer).and_then(Value::as_str).map(str::to_owned))
        .is_some_and(|t| t == "json_object" || t == "json_schema")
}

/// Answers longer than this are not read as refusals by their wording: a
/// long answer that opens with "I'm sorry" usually goes on to help.
const REFUSAL_MAX_CHARS: usize = 400;

/// Openings of a refusal, lower-case, with a plain apostrophe.
const REFUSAL_OPENINGS: [&str; 14] = [
    "i'm sorry, but i can",
    "i am sorry, but i can",
    "i'm sorry, i can",
    "i'm sorry, but i won",
    "sorry, i can't",
    "sorry, but i can't",
    "i can't help with",
    "i cannot help with",
    "i can't assist",
    "i cannot assist",
    "i'm unable to",
    "i am unable to",
    "i won't be able to",
    "i'm not able to",
];

/// The first signal a complete 2xx JSON answer shows, among those `settings`
/// act on; None when it looks resolved (or escalation is off).
pub fn judge_json(
    api: ApiFormat,
    body: &[u8],
    summary: &ResponseSummary,
    wants_json: bool,
    settings: &EscalationSettings,
) -> Option<Signal> {
    // An embedding has no answer to judge.
    if !settings.enabled || api == ApiFormat::Embeddings {
        return None;
    }
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let value: Value = serde_json::from_slice(body).ok()?;
    let answer = Answer::read(api, &value);
    let finish = summary.finish_reason.as_deref().unwrap_or("");
    let found = [
        (
            Signal::Refusal,
            answer.refused || matches!(finish, "content_filter" | "refusal") || answer.opens_with_refusal(),
        ),
        (Signal::Empty, answer.text.trim().is_empty() && !summary.has_tool_calls),
        (Signal::Length, matches!(finish, "length" | "max_tokens")),
        (Signal::MalformedJson, wants_json && !summary.has_tool_calls && !parses_as_json(&answer.text)),
    ];
    found.into_iter().find(|(signal, seen)| *seen && settings.triggers(*signal)).map(|(signal, _)| signal)
}

/// The first choice's (or the message's) text and refusal.
struct Answer {
    text: String,
    refused: bool,
}

impl Answer {
    fn read(api: ApiFormat, value: &Value) -> Answer {
        match api {
            ApiFormat::OpenAi => {
                let message = value.pointer("/choices/0/message");
                let refused =
                    message.and_then(|m| m.get("refusal")).is_some_and(|r| r.as_str().is_some_and(|s| !s.is_empty()));
                let text = match message.and_then(|m| m.get("content")) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => {
                        parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("")
                    }
                    _ => String::new(),
                };
                Answer { text, refused }
            }
            ApiFormat::Responses => {
                let parts: Vec<&Value> = value
                    .get("output")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|item| item.get("type").and_then(Value::as_str) == Some("message"))
                    .filter_map(|item| item.get("content").and_then(Value::as_array))
                    .flatten()
                    .collect();
                let refused = parts.iter().any(|p| p.get("type").and_then(Value::as_str) == Some("refusal"));
                let text = parts
                    .iter()
                    .filter(|p| p.get("type").and_then(Value::as_str) == Some("output_text"))
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("");
                Answer { text, refused }
            }
            ApiFormat::Embeddings => Answer { text: String::new(), refused: false },
            ApiFormat::Anthropic => {
                let text = value
                    .get("content")
                    .and_then(Value::as_array)
                    .map(|blocks| {
                        blocks
                            .iter()
                            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                            .filter_map(|b| b.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join("")
                    })
                    .unwrap_or_default();
                Answer { text, refused: false }
            }
        }
    }

    fn opens_with_refusal(&self) -> bool {
        let text = self.text.trim();
        if text.chars().count() > REFUSAL_MAX_CHARS {
            return false;
        }
        let opening: String = text
            .chars()
            .take(40)
            .flat_map(char::to_lowercase)
            .map(|c| if c == '\u{2019}' { '\'' } else { c })
            .collect();
        REFUSAL_OPENINGS.iter().any(|o| opening.starts_with(o))
    }
}

/// JSON mode answers are a JSON text, possibly wrapped in a Markdown fence.
fn parses_as_json(text: &str) -> bool {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|rest| rest.trim_end().strip_suffix("```"))
        .unwrap_or(t);
    serde_json::from_str::<Value>(t.trim()).is_ok()
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::response::summarize_json;

    fn all_on() -> EscalationSettings {
        EscalationSettings { enabled: true, ..EscalationSettings::default() }
    }

    fn openai(content: &str, finish: &str, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"id":"x","object":"chat.completion","model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":{}{extra}}},"finish_reason":"{finish}"}}],"usage":{{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}}}"#,
            serde_json::to_string(content).unwrap()
        )
        .into_bytes()
    }

    fn judge(api: ApiFormat, body: &[u8], wants_json: bool, s: &EscalationSettings) -> Option<Signal> {
        let summary = summarize_json(api, body).unwrap();
        judge_json(api, body, &summary, wants_json, s)
    }

    #[test]
    fn a_plain_complete_answer_is_resolved() {
        assert_eq!(judge(ApiFormat::OpenAi, &openai("Paris.", "stop", ""), false, &all_on()), None);
    }

    #[test]
    fn each_signal_is_recognised_in_openai_answers() {
        let s = all_on();
        assert_eq!(judge(ApiFormat::OpenAi, &openai("Paris is the", "length", ""), false, &s), Some(Signal::Length));
        assert_eq!(judge(ApiFormat::OpenAi, &openai("  ", "stop", ""), false, &s), Some(Signal::Empty));
        assert_eq!(
            judge(ApiFormat::OpenAi, &openai("I’m sorry, but I can’t help with that.", "stop", ""), false, &s),
            Some(Signal::Refusal)
        );
        assert_eq!(
            judge(ApiFormat::OpenAi, &openai("", "stop", r#","refusal":"no""#), false, &s),
            Some(Signal::Refusal)
        );
        assert_eq!(judge(ApiFormat::OpenAi, &openai("{\"a\": 1", "stop", ""), true, &s), Some(Signal::MalformedJson));
        assert_eq!(judge(ApiFormat::OpenAi, &openai("```json\n{\"a\": 1}\n```", "stop", ""), true, &s), None);
        // Not asked for JSON: prose is fine.
        assert_eq!(judge(ApiFormat::OpenAi, &openai("{\"a\": 1", "stop", ""), false, &s), None);
    }

    #[test]
    fn a_long_answer_that_opens_with_an_apology_is_not_a_refusal() {
        let long = format!("I'm sorry, but I can only sketch it: {}", "step. ".repeat(100));
        assert_eq!(judge(ApiFormat::OpenAi, &openai(&long, "stop", ""), false, &all_on()), None);
    }

    #[test]
    fn anthropic_max_tokens_and_empty_text_are_signals() {
        let cut = br#"{"id":"m","type":"message","role":"assistant","model":"c","content":[{"type":"text","text":"The"}],"stop_reason":"max_tokens","usage":{"input_tokens":1,"output_tokens":1}}"#;
        assert_eq!(judge(ApiFormat::Anthropic, cut, false, &all_on()), Some(Signal::Length));
        let empty = br#"{"id":"m","type":"message","role":"assistant","model":"c","content":[],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":0}}"#;
        assert_eq!(judge(ApiFormat::Anthropic, empty, false, &all_on()), Some(Signal::Empty));
    }

    #[test]
    fn only_the_configured_signals_trigger_and_nothing_when_disabled() {
        let only_length = EscalationSettings { enabled: true, signals: vec![Signal::Length], max_attempts: 1 };
        assert_eq!(judge(ApiFormat::OpenAi, &openai("", "stop", ""), false, &only_length), None);
        assert_eq!(judge(ApiFormat::OpenAi, &openai("a", "length", ""), false, &only_length), Some(Signal::Length));
        let off = EscalationSettings::default();
        assert_eq!(judge(ApiFormat::OpenAi, &openai("a", "length", ""), false, &off), None);
    }

    #[test]
    fn settings_are_validated() {
        let bad = RawEscalation { enabled: true, on: None, max_attempts: Some(0) };
        assert_eq!(EscalationSettings::from_raw(bad).unwrap_err().0, "max_attempts");
        let none = RawEscalation { enabled: true, on: Some(vec![]), max_attempts: None };
        assert_eq!(EscalationSettings::from_raw(none).unwrap_err().0, "on");
        let ok = RawEscalation {
            enabled: true,
            on: Some(vec![Signal::Empty, Signal::Length, Signal::Empty]),
            max_attempts: Some(2),
        };
        let s = EscalationSettings::from_raw(ok).unwrap();
        assert_eq!((s.signals.clone(), s.max_attempts), (vec![Signal::Length, Signal::Empty], 2));
    }

    #[test]
    fn a_cut_answer_is_better_than_an_empty_one_and_a_resolved_one_beats_both() {
        assert!(worse(Some(Signal::Empty), Some(Signal::Length)));
        assert!(worse(Some(Signal::Length), None));
        assert!(!worse(None, Some(Signal::Refusal)));
    }
}
