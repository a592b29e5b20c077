//! Cross-API translation driven end to end through the in-memory host: a
//! tier model whose provider does not speak the client's API gets the
//! request in its own API, and the client gets the answer (JSON or stream)
//! in its own, priced from the provider's usage.
//!
//! The provider replies below are shaped like the APIs' documented answers
//! (an Anthropic `message` with `tool_use`, its SSE events with
//! `input_json_delta`; a `chat.completion` and its chunks).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{NOW, ask_in, config_from, error_code, json_of, send_api, sse_data};
use serde_json::{Value, json};
use tollgate_core::api::ApiFormat;
use tollgate_core::config::TenantConfig;
use tollgate_core::engine::Upstream;
use tollgate_core::sim::{Simulator, UpstreamReply};

/// Cheap tier: Claude only. Premium: gpt-4o only. Metered, cached.
fn config(extra: Value) -> TenantConfig {
    config_from(
        json!({
            "version": 1,
            "tenant_id": "t1",
            "routing": {"tiers": [
                {"name": "cheap", "up_to_score": 0.5, "models": ["anthropic/claude-3-5-haiku-latest"]},
                {"name": "premium", "models": ["openai/gpt-4o"]}
            ]},
            "budgets": {"limits": [{"window": "day", "usd": 10.0}]},
            "cache": {"doorkeeper": false}
        }),
        extra,
    )
}

fn has_tools(body: &Value) -> bool {
    body["tools"].as_array().is_some_and(|t| !t.is_empty())
}

/// Anthropic's answer: a tool call when tools are offered and the last
/// turn is not a tool result, else text.
fn anthropic_reply(up: &Upstream) -> UpstreamReply {
    assert_eq!(up.api, ApiFormat::Anthropic);
    let body = json_of(&up.body);
    assert!(body["max_tokens"].as_u64().is_some(), "Anthropic requires max_tokens: {body}");
    for m in body["messages"].as_array().unwrap() {
        assert!(m["role"] == "user" || m["role"] == "assistant", "{body}");
    }
    let last_is_result = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"));
    let call = has_tools(&body) && !last_is_result;
    let model = body["model"].as_str().unwrap();
    if body["stream"] == json!(true) {
        let mut sse = String::new();
        let mut event = |name: &str, data: Value| sse.push_str(&format!("event: {name}\ndata: {data}\n\n"));
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "usage": {"input_tokens": 40, "cache_read_input_tokens": 8, "output_tokens": 1}}}),
        );
        event("ping", json!({"type": "ping"}));
        if call {
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_7", "name": "weather", "input": {}}}),
            );
            for part in ["{\"city\"", ": \"Oslo\"}"] {
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": part}}),
                );
            }
        } else {
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            );
            for part in ["Paris ", "is the ", "capital."] {
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": part}}),
                );
            }
        }
        event("content_block_stop", json!({"type": "content_block_stop", "index": 0}));
        let stop = if call { "tool_use" } else { "end_turn" };
        event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 12}}),
        );
        event("message_stop", json!({"type": "message_stop"}));
        return UpstreamReply { status: 200, body: sse.into_bytes(), stream: true };
    }
    let content = if call {
        json!([{"type": "tool_use", "id": "toolu_7", "name": "weather", "input": {"city": "Oslo"}}])
    } else {
        json!([{"type": "text", "text": "Paris is the capital."}])
    };
    let answer = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": if call { "tool_use" } else { "end_turn" }, "stop_sequence": null,
        "usage": {"input_tokens": 40, "cache_read_input_tokens": 8, "cache_creation_input_tokens": 0, "output_tokens": 12}
    });
    UpstreamReply { status: 200, body: answer.to_string().into_bytes(), stream: false }
}

/// OpenAI chat's answer, with a tool call when tools are offered and the
/// last message is not a tool result.
fn openai_reply(up: &Upstream) -> UpstreamReply {
    assert_eq!(up.api, ApiFormat::OpenAi);
    let body = json_of(&up.body);
    let messages = body["messages"].as_array().unwrap();
    let call = has_tools(&body) && messages.last().is_some_and(|m| m["role"] != "tool");
    let model = body["model"].as_str().unwrap();
    if body["stream"] == json!(true) {
        assert_eq!(body["stream_options"]["include_usage"], json!(true), "{body}");
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
        if call {
            chunks.push(chunk(json!({"tool_calls": [{"index": 0, "id": "call_3", "type": "function", "function": {"name": "weather", "arguments": ""}}]}), Value::Null));
            for part in ["{\"city\":", "\"Rome\"}"] {
                chunks.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}), Value::Null));
            }
            chunks.push(chunk(json!({}), json!("tool_calls")));
        } else {
            for part in ["Rome ", "is the ", "capital."] {
                chunks.push(chunk(json!({"content": part}), Value::Null));
            }
            chunks.push(chunk(json!({}), json!("stop")));
        }
        chunks.push(json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "model": model, "choices": [],
                           "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}}));
        let mut sse: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        sse.push_str("data: [DONE]\n\n");
        return UpstreamReply { status: 200, body: sse.into_bytes(), stream: true };
    }
    let message = if call {
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_3", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}]})
    } else {
        json!({"role": "assistant", "content": "Rome is the capital."})
    };
    let answer = json!({
        "id": "chatcmpl-9", "object": "chat.completion", "created": NOW, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": if call { "tool_calls" } else { "stop" }}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}
    });
    UpstreamReply { status: 200, body: answer.to_string().into_bytes(), stream: false }
}

fn provider(up: &Upstream) -> Option<UpstreamReply> {
    Some(if up.api == ApiFormat::Anthropic { anthropic_reply(up) } else { openai_reply(up) })
}

const EASY: &str = "What is the capital of France?";
const WEATHER_TOOL_CHAT: &str = r#"[{"type":"function","function":{"name":"weather","description":"Weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]"#;

#[test]
fn an_openai_chat_request_to_a_claude_only_cheap_tier_is_translated_not_sent_up_a_tier() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let mut body = ask_in(ApiFormat::OpenAi, EASY);
    body["messages"] = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": EASY}]);
    let o = send_api(&mut sim, ApiFormat::OpenAi, &body, &mut provider);
    assert_eq!(o.status, 200, "{}", String::from_utf8_lossy(&o.body));
    assert_eq!(o.header("x-tollgate-tier"), Some("cheap"));
    assert_eq!(o.header("x-tollgate-model"), Some("anthropic/claude-3-5-haiku-latest"));
    assert_eq!(o.header("x-tollgate-translated"), Some("openai->anthropic"));
    let [call] = o.upstream_calls.as_slice() else { panic!("{:?}", o.upstream_calls) };
    assert_eq!(call.path, "/v1/messages");
    let sent = json_of(&call.body);
    assert_eq!(sent["system"], json!([{"type": "text", "text": "Be brief."}]));
    assert_eq!(sent["model"], "claude-3-5-haiku-latest");
    let answer = json_of(&o.body);
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["message"]["content"], "Paris is the capital.");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    // Anthropic's parts add up to OpenAI's prompt count.
    assert_eq!(answer["usage"]["prompt_tokens"], 48);
    assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], 8);
    // Priced from the provider's usage: 40 fresh + 8 cached input, 12 output.
    let finish = o.finish.unwrap();
    let usage = finish.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.cached_input_tokens, usage.output_tokens), (48, 8, 12));
    assert!(finish.cost_micros > 0);
}

#[test]
fn a_streamed_chat_tool_call_from_claude_reaches_the_client_as_chat_chunks_with_usage() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let mut body = ask_in(ApiFormat::OpenAi, "What is the weather in Oslo?");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body["tools"] = serde_json::from_str(WEATHER_TOOL_CHAT).unwrap();
    let o = send_api(&mut sim, ApiFormat::OpenAi, &body, &mut provider);
    assert_eq!(o.status, 200);
    let sent = json_of(&o.upstream_calls[0].body);
    assert_eq!(sent["tools"][0]["input_schema"]["required"], json!(["city"]));
    assert_eq!(sent["stream"], json!(true));
    assert!(String::from_utf8_lossy(&o.body).ends_with("data: [DONE]\n\n"));
    let chunks = sse_data(&o.body);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let arguments: String =
        chunks.iter().filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0/function/arguments")?.as_str()).collect();
    assert_eq!(arguments, "{\"city\": \"Oslo\"}");
    let first_call = chunks.iter().find_map(|c| c.pointer("/choices/0/delta/tool_calls/0/id")).unwrap();
    assert_eq!(first_call, "toolu_7");
    assert!(chunks.iter().any(|c| c.pointer("/choices/0/finish_reason") == Some(&json!("tool_calls"))));
    let usage = chunks.iter().find_map(|c| c.get("usage").filter(|u| u.is_object())).unwrap();
    assert_eq!((usage["prompt_tokens"].as_u64(), usage["completion_tokens"].as_u64()), (Some(48), Some(12)));
    assert_eq!(o.finish.unwrap().usage.unwrap().output_tokens, 12);
}

#[test]
fn without_include_usage_a_translated_chat_stream_has_no_usage_chunk() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let mut body = ask_in(ApiFormat::OpenAi, EASY);
    body["stream"] = json!(true);
    let o = send_api(&mut sim, ApiFormat::OpenAi, &body, &mut provider);
    let chunks = sse_data(&o.body);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{chunks:?}");
    let text: String = chunks.iter().filter_map(|c| c.pointer("/choices/0/delta/content")?.as_str()).collect();
    assert_eq!(text, "Paris is the capital.");
    // Still settled from the provider's stream usage.
    assert_eq!(o.finish.unwrap().usage.unwrap().input_tokens, 48);
}

#[test]
fn an_anthropic_tool_round_trip_routed_to_gpt_4o_is_said_in_chat_and_answered_in_messages() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let tools = json!([{"name": "weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let first = json!({"model": "tollgate/premium", "max_tokens": 300, "tools": tools,
        "messages": [{"role": "user", "content": "Weather in Rome?"}]});
    let o = send_api(&mut sim, ApiFormat::Anthropic, &first, &mut provider);
    assert_eq!(o.status, 200);
    assert_eq!(o.header("x-tollgate-translated"), Some("anthropic->openai"));
    let sent = json_of(&o.upstream_calls[0].body);
    assert_eq!(sent["max_completion_tokens"], 300, "OpenAI's own models take max_completion_tokens: {sent}");
    assert_eq!(sent["tools"][0]["function"]["name"], "weather");
    let answer = json_of(&o.body);
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["stop_reason"], "tool_use");
    assert_eq!(
        answer["content"][0],
        json!({"type": "tool_use", "id": "call_3", "name": "weather", "input": {"city": "Rome"}})
    );
    assert_eq!(answer["usage"]["input_tokens"], 50);
    assert_eq!(answer["usage"]["output_tokens"], 9);

    let second = json!({"model": "tollgate/premium", "max_tokens": 300, "tools": tools, "messages": [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": answer["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_3", "content": "sunny"}]}
    ]});
    let o = send_api(&mut sim, ApiFormat::Anthropic, &second, &mut provider);
    let sent = json_of(&o.upstream_calls[0].body);
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages[1]["tool_calls"][0]["id"], "call_3");
    assert_eq!(messages[2], json!({"role": "tool", "tool_call_id": "call_3", "content": "sunny"}));
    let answer = json_of(&o.body);
    assert_eq!(answer["content"][0]["text"], "Rome is the capital.");
    assert_eq!(answer["stop_reason"], "end_turn");
}

#[test]
fn a_streamed_anthropic_request_to_gpt_4o_gets_messages_events_in_order() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let body = json!({"model": "tollgate/premium", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "Capital of Italy?"}]});
    let o = send_api(&mut sim, ApiFormat::Anthropic, &body, &mut provider);
    let sent = json_of(&o.upstream_calls[0].body);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    let events = sse_data(&o.body);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert_eq!(&kinds[kinds.len() - 2..], ["message_delta", "message_stop"]);
    let delta = &events[events.len() - 2];
    assert_eq!(delta["usage"]["output_tokens"], 9);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
}

#[test]
fn a_responses_request_to_claude_is_answered_as_a_response_json_and_stream() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let body = json!({"model": "tollgate/cheap", "instructions": "Be brief.", "input": EASY,
        "max_output_tokens": 64, "metadata": {"app": "docs"}});
    let o = send_api(&mut sim, ApiFormat::Responses, &body, &mut provider);
    assert_eq!(o.header("x-tollgate-translated"), Some("responses->anthropic"));
    let sent = json_of(&o.upstream_calls[0].body);
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(sent["system"][0]["text"], "Be brief.");
    let answer = json_of(&o.body);
    assert_eq!(answer["object"], "response");
    assert_eq!(answer["status"], "completed");
    assert_eq!(answer["output"][0]["content"][0]["text"], "Paris is the capital.");
    assert_eq!(answer["usage"]["input_tokens"], 48);
    assert_eq!(answer["metadata"], json!({"app": "docs"}));
    // The request's own fields, repeated as the Responses API does.
    assert_eq!((answer["instructions"].as_str(), answer["max_output_tokens"].as_u64()), (Some("Be brief."), Some(64)));
    assert_eq!(answer["store"], json!(false));

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["input"] = json!("Weather in Oslo?");
    streamed["tools"] = json!([{"type": "function", "name": "weather", "parameters": {"type": "object"}}]);
    let o = send_api(&mut sim, ApiFormat::Responses, &streamed, &mut provider);
    let events = sse_data(&o.body);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed");
    assert_eq!(last["response"]["output"][0]["type"], "function_call");
    assert_eq!(last["response"]["output"][0]["arguments"], "{\"city\": \"Oslo\"}");
    let numbers: Vec<u64> = events.iter().filter_map(|e| e["sequence_number"].as_u64()).collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
}

#[test]
fn a_field_no_tier_model_can_express_is_a_400_that_says_why() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let mut body = ask_in(ApiFormat::OpenAi, EASY);
    body["model"] = json!("tollgate/cheap");
    body["logprobs"] = json!(true);
    // `tollgate/cheap` names the tier; its only model is Claude, and the
    // premium tier's gpt-4o takes the request natively.
    let o = send_api(&mut sim, ApiFormat::OpenAi, &body, &mut provider);
    assert_eq!(o.status, 200);
    assert_eq!(o.header("x-tollgate-tier"), Some("premium"));
    let reasons = o.header("x-tollgate-reasons").unwrap_or_default();
    assert!(
        reasons.contains("skipped anthropic/claude-3-5-haiku-latest: `logprobs` has no Anthropic equivalent"),
        "{reasons}"
    );

    let only_claude =
        config(json!({"routing": {"tiers": [{"name": "only", "models": ["anthropic/claude-3-5-haiku-latest"]}]}}));
    let mut sim = Simulator::new(only_claude, [1; 32]);
    body["model"] = json!("tollgate/auto");
    let o = send_api(&mut sim, ApiFormat::OpenAi, &body, &mut |_| panic!("nothing may be forwarded"));
    assert_eq!(o.status, 400);
    assert_eq!(error_code(&o), "no_model_for_request");
    let message = json_of(&o.body)["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("logprobs"), "{message}");
}

#[test]
fn a_translated_answer_is_cached_in_the_clients_api_and_a_hit_never_crosses_apis() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    // The same JSON is a valid chat body and a valid Messages body.
    let chat = json!({"model": "tollgate/auto", "temperature": 0, "max_tokens": 200,
        "messages": [{"role": "user", "content": EASY}]});
    let first = send_api(&mut sim, ApiFormat::OpenAi, &chat, &mut provider);
    assert!(first.finish.as_ref().unwrap().cache_fill.is_some());
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let hit = send_api(&mut sim, ApiFormat::OpenAi, &streamed, &mut |_| panic!("a hit calls no provider"));
    assert_eq!(hit.header("x-tollgate-cache"), Some("hit"));
    let text: String =
        sse_data(&hit.body).iter().filter_map(|c| c.pointer("/choices/0/delta/content")?.as_str()).collect();
    assert_eq!(text, "Paris is the capital.");
    // The same words from an Anthropic client: its own entry, not the chat one.
    let messages = chat.clone();
    let mut called = false;
    let o = send_api(&mut sim, ApiFormat::Anthropic, &messages, &mut |u| {
        called = true;
        provider(u)
    });
    assert!(called, "a chat entry was served to a Messages client");
    assert_eq!(json_of(&o.body)["type"], "message");
}

#[test]
fn with_native_first_a_failing_native_model_falls_back_to_a_translated_one() {
    let cfg = config(json!({"routing": {"translation": "native_first", "tiers": [
        {"name": "only", "models": ["anthropic/claude-3-5-haiku-latest", "openai/gpt-4o-mini"]}
    ]}}));
    let mut sim = Simulator::new(cfg, [1; 32]);
    let o = send_api(&mut sim, ApiFormat::OpenAi, &ask_in(ApiFormat::OpenAi, EASY), &mut |u| {
        if u.target.provider.as_str() == "openai" {
            Some(UpstreamReply { status: 503, body: b"{}".to_vec(), stream: false })
        } else {
            provider(u)
        }
    });
    let order: Vec<String> = o.upstream_calls.iter().map(|u| u.target.to_string()).collect();
    assert_eq!(order, ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"]);
    assert_eq!(o.status, 200);
    assert_eq!(o.header("x-tollgate-translated"), Some("openai->anthropic"));
    assert_eq!(o.header("x-tollgate-fallbacks"), Some("1"));
}

#[test]
fn a_provider_error_is_relayed_in_the_clients_error_shape() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let o = send_api(&mut sim, ApiFormat::OpenAi, &ask_in(ApiFormat::OpenAi, EASY), &mut |_| {
        let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens"}}"#;
        Some(UpstreamReply { status: 400, body: body.to_vec(), stream: false })
    });
    assert_eq!(o.status, 400);
    let error = json_of(&o.body);
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(error["error"]["message"].as_str().unwrap().contains("prompt is too long"));
    // Nothing answered: the hold is given back.
    assert!(o.finish.unwrap().usage.is_none_or(|u| u.output_tokens == 0));
}

#[test]
fn a_translated_answer_too_large_to_read_is_a_502_to_the_client_but_still_charged_for_its_prompt() {
    use tollgate_core::engine::{AnswerStart, Inbound, JsonAnswer, Next, Plan};
    let cfg = config(json!({"cache": {"enabled": false}}));
    let body = ask_in(ApiFormat::OpenAi, EASY).to_string();
    let inbound = Inbound {
        tenant_id: "t1",
        api: ApiFormat::OpenAi,
        body: body.as_bytes(),
        cache_control: None,
        now: NOW,
        entropy: [3; 16],
        key: None,
        user_header: None,
        tags_header: None,
    };
    let mut plan = Plan::new(&cfg, &inbound).unwrap();
    let mut next = plan.start();
    if let Next::Reserve(_) = next {
        next = plan.on_reserve(tollgate_core::engine::ReserveOutcome::Granted(tollgate_core::budget::Granted {
            id: plan.request_id.clone(),
            amount: tollgate_core::budget::Amount { tokens: 2_000, micros: 5_000, requests: 0 },
            downgraded: false,
            clamped_output_tokens: None,
            remaining: Default::default(),
        }));
    }
    assert!(matches!(next, Next::Forward(_)), "{next:?}");
    assert!(matches!(plan.on_answer_head(Some(200), "application/json", None, NOW), AnswerStart::ReadBody));
    let JsonAnswer::Relay(relay) = plan.on_json_answer(None, NOW) else { panic!("a relay") };
    assert_eq!(relay.status, 502);
    let error = json_of(relay.body.as_deref().unwrap());
    assert!(error["error"]["message"].as_str().unwrap().contains("too large to translate"));
    let usage = relay.closing.finish.and_then(|f| f.usage).expect("the provider answered: the prompt is charged");
    assert!(usage.input_tokens > 0);
}

#[test]
fn a_provider_that_leaves_out_tool_call_indexes_still_gets_each_call_through() {
    use tollgate_core::translate::{AnswerContext, StreamTranslator};
    // Gemini's OpenAI-compatible stream: no `index`, two calls in one chunk, `stop`.
    let stream = concat!(
        "data: {\"model\":\"gemini\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"tool_calls\":[",
        "{\"id\":\"a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":1}\"}},",
        "{\"id\":\"b\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{\\\"y\\\":2}\"}}]}}]}\n\n",
        "data: {\"model\":\"gemini\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    let ctx = AnswerContext { id_seed: "s".into(), created: 1, prompt_tokens: 1, include_usage: false, echo: None };
    let mut t = StreamTranslator::new(ApiFormat::OpenAi, ApiFormat::Anthropic, ctx).unwrap();
    let mut out = Vec::new();
    t.feed(stream.as_bytes(), &mut out);
    t.finish(&mut out);
    let events = sse_data(&out);
    let starts: Vec<&Value> =
        events.iter().filter(|e| e["type"] == "content_block_start").map(|e| &e["content_block"]).collect();
    assert_eq!(starts.len(), 2, "{events:?}");
    assert_eq!((starts[0]["id"].as_str(), starts[1]["name"].as_str()), (Some("a"), Some("g")));
    let stop = events.iter().find(|e| e["type"] == "message_delta").unwrap();
    assert_eq!(stop["delta"]["stop_reason"], "tool_use", "tools were called, whatever the provider called its ending");
}

#[test]
fn a_streamed_tool_call_without_input_reaches_a_chat_client_with_empty_object_arguments() {
    use tollgate_core::translate::{AnswerContext, StreamTranslator};
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"now\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":3}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    for client in [ApiFormat::OpenAi, ApiFormat::Responses] {
        let ctx = AnswerContext { id_seed: "s".into(), created: 1, prompt_tokens: 1, include_usage: false, echo: None };
        let mut t = StreamTranslator::new(ApiFormat::Anthropic, client, ctx).unwrap();
        let mut out = Vec::new();
        t.feed(stream.as_bytes(), &mut out);
        t.finish(&mut out);
        let events = sse_data(&out);
        let arguments: String = match client {
            ApiFormat::OpenAi => events
                .iter()
                .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0/function/arguments")?.as_str())
                .collect(),
            _ => events.last().unwrap()["response"]["output"][0]["arguments"].as_str().unwrap().to_owned(),
        };
        assert_eq!(arguments, "{}", "{client:?}");
    }
}
