//! Function tools, shared by the three chat-like endpoints (chat
//! completions, messages, responses): what the model "says" (text or a call
//! of one tool), which tool it calls, the arguments it passes, what the call
//! costs, and how its arguments are split into stream fragments.
//!
//! A model offered function tools (that the request's tool choice does not
//! forbid) calls one when the conversation does not end with a tool's
//! result: the one the tool choice names, else the first. Once the result
//! comes back it answers with text, so a whole round trip can be played.
//! The call "costs" ceil(len(name) / 4) + ceil(len(arguments) / 4) output
//! tokens; an output limit smaller than that cuts it off (no arguments,
//! finish reason "length" / stop reason "max_tokens" / status
//! "incomplete").

use serde_json::{Map, Value, json};

use crate::answer::{self, Answer, Prompt};
use crate::faults::AnswerFault;

/// The function the model will call, decided when the request is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedCall {
    pub name: String,
    /// The arguments as JSON text (chat's `function.arguments`; parsed into
    /// Anthropic's `input`).
    pub arguments: String,
}

/// What the model "said": text, or a call of one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Text(Answer),
    Call {
        name: String,
        /// JSON text; empty when cut off.
        arguments: String,
        /// The output limit was smaller than the call: it is cut off
        /// (arguments empty, finish reason "length" and the like).
        truncated: bool,
        output_tokens: u64,
    },
}

impl Reply {
    /// The reply to `prompt`: the call it plans, or the text answer. An
    /// `answer:<kind>` fault always makes it a (spoiled) text answer.
    pub fn for_prompt(prompt: &Prompt, fault: Option<AnswerFault>) -> Reply {
        match (&prompt.call, fault) {
            (Some(call), None) => {
                let cost = answer::text_tokens(&call.name) + answer::text_tokens(&call.arguments);
                let limit = prompt.max_output_tokens.unwrap_or(u64::MAX);
                let truncated = cost > limit;
                Reply::Call {
                    name: call.name.clone(),
                    arguments: if truncated { String::new() } else { call.arguments.clone() },
                    truncated,
                    output_tokens: cost.min(limit),
                }
            }
            (_, fault) => {
                let answer = Answer::for_prompt(prompt);
                Reply::Text(match fault {
                    Some(fault) => answer.spoiled(fault),
                    None => answer,
                })
            }
        }
    }

    pub fn truncated(&self) -> bool {
        match self {
            Reply::Text(answer) => answer.truncated,
            Reply::Call { truncated, .. } => *truncated,
        }
    }

    pub fn output_tokens(&self) -> u64 {
        match self {
            Reply::Text(answer) => answer.output_tokens(),
            Reply::Call { output_tokens, .. } => *output_tokens,
        }
    }

    /// The call's arguments parsed (Anthropic's `input`): `{}` when cut off.
    pub fn input(arguments: &str) -> Value {
        serde_json::from_str(arguments).unwrap_or_else(|_| json!({}))
    }
}

/// How a request's tool choice reads, whatever its API's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The model decides ("auto", "required", "any", or no choice given):
    /// the mock calls the first tool.
    First,
    /// Only this tool.
    Named(String),
    /// No tool ("none").
    Forbidden,
}

/// The call to make among `tools` (name and parameter schema, in the
/// request's order): `None` when there are none or `choice` forbids them;
/// `Err(name)` when `choice` names a tool that is not offered.
pub fn plan_call(tools: &[(String, Value)], choice: &Choice) -> Result<Option<PlannedCall>, String> {
    let chosen = match choice {
        Choice::Forbidden => return Ok(None),
        Choice::First => tools.first(),
        Choice::Named(name) => Some(tools.iter().find(|(tool, _)| tool == name).ok_or_else(|| name.clone())?),
    };
    Ok(chosen.map(|(name, schema)| PlannedCall { name: name.clone(), arguments: arguments_for(schema) }))
}

/// Deepest nesting of object properties filled in; deeper ones get `{}`.
const MAX_SCHEMA_DEPTH: usize = 4;

/// Small JSON arguments for a parameter schema: each required property gets
/// a value of its type (the first `enum` value or the `const` if there is
/// one; `"mock"`, `1`, `true`, `[]`, `null`; an object recursively), the
/// optional ones are left out. Compact, in the schema's order.
pub fn arguments_for(schema: &Value) -> String {
    match example_value(schema, 0) {
        object @ Value::Object(_) => object.to_string(),
        // A schema that is not an object's: call with no arguments.
        _ => "{}".to_owned(),
    }
}

fn example_value(schema: &Value, depth: usize) -> Value {
    if let Some(value) = schema.get("const") {
        return value.clone();
    }
    if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|values| values.first()) {
        return first.clone();
    }
    // `"type": ["string", "null"]` is a nullable string: take the first non-null.
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => Some(kind.as_str()),
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).find(|kind| *kind != "null"),
        _ => None,
    };
    let kind = kind.or_else(|| schema.get("properties").map(|_| "object"));
    match kind {
        Some("object") => {
            let mut object = Map::new();
            if depth < MAX_SCHEMA_DEPTH {
                let properties = schema.get("properties");
                for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                    let Some(name) = name.as_str() else { continue };
                    let property = properties.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
                    object.insert(name.to_owned(), example_value(property, depth + 1));
                }
            }
            Value::Object(object)
        }
        Some("integer" | "number") => json!(1),
        Some("boolean") => json!(true),
        Some("array") => json!([]),
        Some("null") => Value::Null,
        _ => json!("mock"),
    }
}

/// Most characters in one streamed argument fragment.
const FRAGMENT_CHARS: usize = 5;

/// The arguments as stream fragments, concatenating to exactly `arguments`,
/// as the real APIs stream them: a few characters at a time.
pub fn fragments(arguments: &str) -> Vec<String> {
    let chars: Vec<char> = arguments.chars().collect();
    chars.chunks(FRAGMENT_CHARS).map(|chunk| chunk.iter().collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "detailed": {"type": "boolean"},
                "where": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "note": {"type": ["null", "string"]}
            },
            "required": ["city", "unit", "days", "detailed", "where", "tags", "note"]
        })
    }

    #[test]
    fn arguments_fill_the_required_properties_in_order() {
        assert_eq!(
            arguments_for(&weather()),
            r#"{"city":"mock","unit":"celsius","days":1,"detailed":true,"where":{"lat":1},"tags":[],"note":"mock"}"#
        );
        let optional_only = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        assert_eq!(arguments_for(&optional_only), "{}");
        assert_eq!(arguments_for(&json!({"type": "object"})), "{}");
        assert_eq!(arguments_for(&Value::Null), "{}");
        assert_eq!(arguments_for(&json!({"type": "string"})), "{}");
        let constant = json!({"type": "object", "properties": {"v": {"const": 2}}, "required": ["v", "missing"]});
        assert_eq!(arguments_for(&constant), r#"{"v":2,"missing":"mock"}"#);
    }

    #[test]
    fn a_self_nesting_schema_stops() {
        let mut schema = json!({"type": "object"});
        for _ in 0..10 {
            schema = json!({"type": "object", "properties": {"inner": schema}, "required": ["inner"]});
        }
        assert_eq!(arguments_for(&schema), r#"{"inner":{"inner":{"inner":{"inner":{}}}}}"#);
    }

    #[test]
    fn the_named_tool_or_else_the_first_is_called() {
        let tools = vec![("first".to_owned(), json!({})), ("second".to_owned(), weather())];
        let call = |choice| plan_call(&tools, &choice);
        assert_eq!(call(Choice::First).unwrap().unwrap().name, "first");
        let second = call(Choice::Named("second".into())).unwrap().unwrap();
        assert_eq!(second.name, "second");
        assert_eq!(second.arguments, arguments_for(&weather()));
        assert_eq!(call(Choice::Forbidden), Ok(None));
        assert_eq!(call(Choice::Named("third".into())), Err("third".to_owned()));
        assert_eq!(plan_call(&[], &Choice::First), Ok(None));
    }

    #[test]
    fn fragments_concatenate_to_the_arguments() {
        let arguments = r#"{"city":"Zürich","n":1}"#;
        let pieces = fragments(arguments);
        assert!(pieces.len() > 3, "{pieces:?}");
        assert_eq!(pieces.concat(), arguments);
        assert_eq!(fragments("{}"), ["{}"]);
        assert!(fragments("").is_empty());
    }

    #[test]
    fn a_call_costs_its_name_and_arguments_and_a_small_limit_cuts_it() {
        let prompt = |max| Prompt {
            model: "m".into(),
            last_user_text: "x".into(),
            prompt_tokens: 5,
            max_output_tokens: max,
            stream: false,
            include_usage: false,
            call: Some(PlannedCall { name: "get_weather".into(), arguments: r#"{"city":"mock"}"#.into() }),
        };
        let cost = answer::text_tokens("get_weather") + answer::text_tokens(r#"{"city":"mock"}"#);
        assert_eq!(
            Reply::for_prompt(&prompt(None), None),
            Reply::Call {
                name: "get_weather".into(),
                arguments: r#"{"city":"mock"}"#.into(),
                truncated: false,
                output_tokens: cost
            }
        );
        let cut = Reply::for_prompt(&prompt(Some(2)), None);
        assert_eq!(
            cut,
            Reply::Call { name: "get_weather".into(), arguments: String::new(), truncated: true, output_tokens: 2 }
        );
        assert!(cut.truncated());
        assert!(matches!(Reply::for_prompt(&prompt(None), Some(AnswerFault::Empty)), Reply::Text(_)));
        assert_eq!(Reply::input(""), json!({}));
        assert_eq!(Reply::input(r#"{"a":1}"#), json!({"a": 1}));
    }
}
