//! Fault injection: the fault language, the rules registered through
//! `POST /__mock/faults`, and the merged plan applied to one request.
//!
//! A fault string is one or more comma-separated faults, e.g.
//! `status:429`, `slow:200`, `chunk_delay:50,drop_after:3`.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::lock;

/// One injected misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this error status and a provider-shaped error body.
    Status(u16),
    /// Extra delay before the response headers.
    Slow(Duration),
    /// Delay between SSE events.
    ChunkDelay(Duration),
    /// Send this many SSE events (or half of a JSON body), then abort the
    /// connection without finishing the response.
    DropAfter(usize),
    /// Value of the `retry-after` header (seconds) sent with a status fault.
    RetryAfter(u64),
    /// A successful answer that looks unresolved (for escalation tests).
    Answer(AnswerFault),
}

/// How `answer:<kind>` spoils a successful answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerFault {
    /// Cut at three words with finish_reason `length` / stop_reason `max_tokens`.
    Length,
    /// No content at all.
    Empty,
    /// A short refusal.
    Refusal,
    /// Text that is not JSON, whatever the request asked for.
    BadJson,
}

impl AnswerFault {
    fn name(self) -> &'static str {
        match self {
            AnswerFault::Length => "length",
            AnswerFault::Empty => "empty",
            AnswerFault::Refusal => "refusal",
            AnswerFault::BadJson => "bad_json",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Status(code) => write!(f, "status:{code}"),
            Fault::Slow(delay) => write!(f, "slow:{}", delay.as_millis()),
            Fault::ChunkDelay(delay) => write!(f, "chunk_delay:{}", delay.as_millis()),
            Fault::DropAfter(n) => write!(f, "drop_after:{n}"),
            Fault::RetryAfter(seconds) => write!(f, "retry_after:{seconds}"),
            Fault::Answer(kind) => write!(f, "answer:{}", kind.name()),
        }
    }
}

/// Parses a comma-separated fault list. Unknown names and bad numbers are
/// errors (rather than ignored) so a typo in a test shows up at once.
pub fn parse_faults(text: &str) -> Result<Vec<Fault>, String> {
    text.split(',').map(str::trim).filter(|part| !part.is_empty()).map(parse_fault).collect()
}

fn parse_fault(text: &str) -> Result<Fault, String> {
    let (name, argument) = text
        .split_once(':')
        .ok_or_else(|| format!("fault {text:?} has no argument (expected e.g. status:429, slow:100)"))?;
    let number = |what: &str| -> Result<u64, String> {
        argument.trim().parse::<u64>().map_err(|_| format!("fault {text:?}: {what} must be a non-negative integer"))
    };
    match name.trim() {
        "status" => {
            let code = number("status")?;
            match u16::try_from(code) {
                Ok(code) if (400..=599).contains(&code) => Ok(Fault::Status(code)),
                _ => Err(format!("fault {text:?}: status must be between 400 and 599")),
            }
        }
        "slow" => Ok(Fault::Slow(Duration::from_millis(number("milliseconds")?))),
        "chunk_delay" => Ok(Fault::ChunkDelay(Duration::from_millis(number("milliseconds")?))),
        "drop_after" => Ok(Fault::DropAfter(usize::try_from(number("count")?).unwrap_or(usize::MAX))),
        "retry_after" => Ok(Fault::RetryAfter(number("seconds")?)),
        "answer" => match argument.trim() {
            "length" => Ok(Fault::Answer(AnswerFault::Length)),
            "empty" => Ok(Fault::Answer(AnswerFault::Empty)),
            "refusal" => Ok(Fault::Answer(AnswerFault::Refusal)),
            "bad_json" => Ok(Fault::Answer(AnswerFault::BadJson)),
            _ => Err(format!("fault {text:?}: answer must be length, empty, refusal or bad_json")),
        },
        other => {
            Err(format!("unknown fault {other:?} (known: status, slow, chunk_delay, drop_after, retry_after, answer)"))
        }
    }
}

/// The faults in effect for one request, one slot per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub status: Option<u16>,
    pub slow: Option<Duration>,
    pub chunk_delay: Option<Duration>,
    pub drop_after: Option<usize>,
    pub retry_after: Option<u64>,
    pub answer: Option<AnswerFault>,
    /// Every fault that took effect, as text, for the request record.
    pub applied: Vec<String>,
}

impl FaultPlan {
    /// Adds a fault unless one of the same kind is already planned: the
    /// first source wins (the request header, then rules in the order they
    /// were registered).
    pub fn add(&mut self, fault: Fault) {
        let added = match fault {
            Fault::Status(code) => fill(&mut self.status, code),
            Fault::Slow(delay) => fill(&mut self.slow, delay),
            Fault::ChunkDelay(delay) => fill(&mut self.chunk_delay, delay),
            Fault::DropAfter(n) => fill(&mut self.drop_after, n),
            Fault::RetryAfter(seconds) => fill(&mut self.retry_after, seconds),
            Fault::Answer(kind) => fill(&mut self.answer, kind),
        };
        if added {
            self.applied.push(fault.to_string());
        }
    }
}

fn fill<T>(slot: &mut Option<T>, value: T) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = Some(value);
    true
}

/// A registered rule: which model it applies to, what it does, how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// `None` matches every request, including ones without a model.
    pub model: Option<String>,
    pub faults: Vec<Fault>,
    /// Requests left before the rule expires; `None` = forever.
    pub remaining: Option<u64>,
}

/// How a rule is shown by the control API.
#[derive(Debug, Serialize)]
pub struct FaultRuleView {
    pub model: Option<String>,
    pub fault: String,
    /// Remaining requests the rule will still affect (`null` = forever).
    pub times: Option<u64>,
}

impl FaultRule {
    /// Reads a rule from the control API's JSON:
    /// `{"model": "gpt-4o" | null, "fault": "status:429", "times": 2 | null}`.
    pub fn from_json(value: &Value) -> Result<FaultRule, String> {
        let object = value.as_object().ok_or("a fault rule must be a JSON object")?;
        let model = match object.get("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(model)) => Some(model.clone()),
            Some(_) => return Err("\"model\" must be a string or null".into()),
        };
        let fault_text = object.get("fault").and_then(Value::as_str).ok_or("\"fault\" must be a string")?;
        let faults = parse_faults(fault_text)?;
        if faults.is_empty() {
            return Err("\"fault\" is empty".into());
        }
        let remaining = match object.get("times") {
            None | Some(Value::Null) => None,
            Some(times) => match times.as_u64() {
                Some(n) if n >= 1 => Some(n),
                _ => return Err("\"times\" must be a positive integer or null".into()),
            },
        };
        Ok(FaultRule { model, faults, remaining })
    }

    fn matches(&self, model: Option<&str>) -> bool {
        match &self.model {
            None => true,
            Some(wanted) => model == Some(wanted.as_str()),
        }
    }

    fn view(&self) -> FaultRuleView {
        FaultRuleView {
            model: self.model.clone(),
            fault: self.faults.iter().map(Fault::to_string).collect::<Vec<_>>().join(","),
            times: self.remaining,
        }
    }
}

/// The registered rules, shared by all connections.
#[derive(Debug, Default)]
pub struct FaultRules {
    rules: Mutex<Vec<FaultRule>>,
}

impl FaultRules {
    pub fn add(&self, new_rules: Vec<FaultRule>) {
        lock(&self.rules).extend(new_rules);
    }

    /// Removes every rule; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut rules = lock(&self.rules);
        let count = rules.len();
        rules.clear();
        count
    }

    pub fn list(&self) -> Vec<FaultRuleView> {
        lock(&self.rules).iter().map(FaultRule::view).collect()
    }

    /// Adds the faults of every rule matching `model` to `plan`, using up one
    /// of each matching rule's `times`; rules that reach zero are removed.
    /// Check and decrement happen under one lock, so with `times: 1` exactly
    /// one of many concurrent requests gets the fault.
    pub fn apply(&self, model: Option<&str>, plan: &mut FaultPlan) {
        let mut rules = lock(&self.rules);
        for rule in rules.iter_mut().filter(|rule| rule.matches(model)) {
            for fault in &rule.faults {
                plan.add(*fault);
            }
            if let Some(remaining) = rule.remaining.as_mut() {
                *remaining = remaining.saturating_sub(1);
            }
        }
        rules.retain(|rule| rule.remaining != Some(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_fault_lists() {
        assert_eq!(
            parse_faults("status:429, slow:10,chunk_delay:5,drop_after:2,retry_after:0").unwrap(),
            vec![
                Fault::Status(429),
                Fault::Slow(Duration::from_millis(10)),
                Fault::ChunkDelay(Duration::from_millis(5)),
                Fault::DropAfter(2),
                Fault::RetryAfter(0),
            ]
        );
        assert!(parse_faults("status:200").is_err());
        assert!(parse_faults("slow").is_err());
        assert!(parse_faults("explode:1").is_err());
        assert!(parse_faults("slow:-1").is_err());
    }

    #[test]
    fn first_fault_of_a_kind_wins() {
        let mut plan = FaultPlan::default();
        plan.add(Fault::Status(503));
        plan.add(Fault::Status(429));
        assert_eq!(plan.status, Some(503));
        assert_eq!(plan.applied, vec!["status:503"]);
    }

    #[test]
    fn rules_count_down_and_expire() {
        let rules = FaultRules::default();
        let rule = FaultRule::from_json(&json!({"model": "a", "fault": "status:500", "times": 2})).unwrap();
        rules.add(vec![rule, FaultRule::from_json(&json!({"fault": "slow:1"})).unwrap()]);
        for expected in [Some(500), Some(500), None] {
            let mut plan = FaultPlan::default();
            rules.apply(Some("a"), &mut plan);
            assert_eq!(plan.status, expected);
            assert_eq!(plan.slow, Some(Duration::from_millis(1)));
        }
        let mut other = FaultPlan::default();
        rules.apply(Some("b"), &mut other);
        assert_eq!(other.status, None);
        assert_eq!(rules.list().len(), 1);
        assert_eq!(rules.clear(), 1);
    }

    #[test]
    fn rejects_bad_rules() {
        assert!(FaultRule::from_json(&json!({"fault": "status:500", "times": 0})).is_err());
        assert!(FaultRule::from_json(&json!({"fault": 5})).is_err());
        assert!(FaultRule::from_json(&json!({"model": 1, "fault": "slow:1"})).is_err());
        assert!(FaultRule::from_json(&json!([])).is_err());
    }
}
