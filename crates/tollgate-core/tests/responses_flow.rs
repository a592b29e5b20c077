//! `POST /v1/responses` (OpenAI's Responses API) through the in-memory
//! host: classified and routed like chat to OpenAI models, usage read from
//! the JSON body or the stream's terminal event, cached only when complete
//! and free of tool calls.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use tollgate_core::api::ApiFormat;
use tollgate_core::config::TenantConfig;
use tollgate_core::engine::{Inbound, Settlement, Upstream};
use tollgate_core::request::ChatRequest;
use tollgate_core::sim::{Outcome, Simulator, UpstreamReply};

const NOW: u64 = 1_795_000_000;

fn config() -> TenantConfig {
    let config = json!({
        "version": 1,
        "tenant_id": "t1",
        "routing": {"tiers": [
            {"name": "cheap", "up_to_score": 0.5, "models": ["anthropic/claude-3-5-haiku-latest", "openai/gpt-4o-mini"]},
            {"name": "premium", "models": ["openai/gpt-4o"]}
        ]},
        "budgets": {"limits": [{"window": "day", "usd": 5.0}]},
        "cache": {"enabled": true, "doorkeeper": false}
    });
    TenantConfig::from_json(config.to_string().as_bytes()).unwrap()
}

fn response_body(model: &str, output: Value, status: &str) -> Value {
    json!({
        "id": "resp_1", "object": "response", "created_at": NOW, "status": status, "model": model,
        "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "output": output,
        "usage": {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": 500, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1500}
    })
}

fn text_output(text: &str) -> Value {
    json!([{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}])
}

fn reply(up: &Upstream, output: Value, status: &str) -> UpstreamReply {
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    let body = response_body(sent["model"].as_str().unwrap(), output, status);
    if sent["stream"] == json!(true) {
        let mut sse = String::new();
        let mut event = |kind: &str, data: Value| {
            sse.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
        };
        event(
            "response.created",
            json!({"type": "response.created", "response": {"id": "resp_1", "model": body["model"], "status": "in_progress"}}),
        );
        for word in ["Paris ", "is ", "the ", "capital."] {
            event("response.output_text.delta", json!({"type": "response.output_text.delta", "delta": word}));
        }
        event("response.completed", json!({"type": "response.completed", "response": body}));
        UpstreamReply { status: 200, body: sse.into_bytes(), stream: true }
    } else {
        UpstreamReply { status: 200, body: body.to_string().into_bytes(), stream: false }
    }
}

fn send(sim: &mut Simulator, body: &Value, upstream: &mut dyn FnMut(&Upstream) -> Option<UpstreamReply>) -> Outcome {
    let bytes = body.to_string();
    let inbound = Inbound {
        tenant_id: "t1",
        api: ApiFormat::Responses,
        body: bytes.as_bytes(),
        cache_control: None,
        now: NOW,
        entropy: [bytes.len() as u8; 16],
        key: None,
        user_header: None,
        tags_header: None,
    };
    sim.handle(&inbound, upstream)
}

fn charged(out: &Outcome) -> (u64, u64) {
    match &out.settlement {
        Some(Settlement::Charge { amount, .. }) => (amount.tokens, amount.micros),
        other => panic!("expected a charge, got {other:?}"),
    }
}

#[test]
fn an_easy_response_request_goes_to_the_cheap_tiers_openai_model_and_is_charged_its_usage() {
    let mut sim = Simulator::new(config(), [1; 32]);
    let body = json!({"model": "tollgate/auto", "input": "What is the capital of France?", "temperature": 0});
    let out = send(&mut sim, &body, &mut |up| Some(reply(up, text_output("Paris."), "completed")));
    assert_eq!(out.status, 200);
    assert_eq!(out.upstream_calls[0].path, "/v1/responses");
    assert_eq!(out.upstream_calls[0].target.model, "gpt-4o-mini", "Anthropic cannot take the Responses API");
    assert_eq!(out.header("x-tollgate-tier"), Some("cheap"));
    // gpt-4o-mini: $0.15 in, $0.60 out per million.
    assert_eq!(charged(&out), (1500, 150 + 300));
}

#[test]
fn a_repeat_is_a_cache_hit_but_not_across_previous_response_ids() {
    let mut sim = Simulator::new(config(), [1; 32]);
    let mut calls = 0;
    let mut provider = |up: &Upstream| {
        calls += 1;
        Some(reply(up, text_output("Paris."), "completed"))
    };
    let body = json!({"model": "tollgate/auto", "input": "What is the capital of France?", "temperature": 0});
    send(&mut sim, &body, &mut provider);
    let again = send(&mut sim, &body, &mut provider);
    assert_eq!(again.header("x-tollgate-cache"), Some("hit"));
    let mut follow = body.clone();
    follow["previous_response_id"] = json!("resp_a");
    send(&mut sim, &follow, &mut provider);
    follow["previous_response_id"] = json!("resp_b");
    let other = send(&mut sim, &follow, &mut provider);
    assert_eq!(other.header("x-tollgate-cache"), Some("miss"));
    assert_eq!(calls, 3);
}

#[test]
fn a_streamed_response_is_relayed_as_is_and_charged_from_its_completed_event() {
    let mut sim = Simulator::new(config(), [1; 32]);
    let body = json!({"model": "tollgate/auto", "input": "What is the capital of France?", "stream": true});
    let out = send(&mut sim, &body, &mut |up| Some(reply(up, text_output("Paris is the capital."), "completed")));
    assert_eq!(out.status, 200);
    let text = String::from_utf8(out.body.clone()).unwrap();
    assert!(text.contains("event: response.completed"), "{text}");
    assert_eq!(charged(&out).0, 1500);
    let forwarded: Value = serde_json::from_slice(&out.upstream_calls[0].body).unwrap();
    assert!(forwarded.get("stream_options").is_none(), "the Responses API needs no usage option");
}

#[test]
fn a_function_call_answer_is_relayed_but_never_cached() {
    let mut sim = Simulator::new(config(), [1; 32]);
    let call = json!([{"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "lookup",
                       "arguments": "{}", "status": "completed"}]);
    let body = json!({"model": "tollgate/auto", "input": "Look it up", "temperature": 0,
                      "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]});
    let mut calls = 0;
    for _ in 0..2 {
        let out = send(&mut sim, &body, &mut |up| {
            calls += 1;
            Some(reply(up, call.clone(), "completed"))
        });
        assert_eq!(out.header("x-tollgate-cache"), Some("miss"));
    }
    assert_eq!(calls, 2);
    assert!(sim.cache.is_empty());
}

#[test]
fn a_tool_round_trip_input_is_read_item_by_item() {
    let body = json!({"model": "tollgate/auto", "instructions": "Be brief.", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "reasoning", "id": "rs_1", "summary": []}
    ]});
    let request = ChatRequest::parse(ApiFormat::Responses, body.to_string().as_bytes(), 1 << 20).unwrap();
    assert_eq!(request.system, "Be brief.");
    assert_eq!(request.messages.len(), 3);
    assert!(request.messages[1].tool_text.contains("weather"));
    assert_eq!(request.messages[2].text, "sunny");
}

#[test]
fn the_budget_clamp_rewrites_max_output_tokens_and_an_incomplete_answer_is_relayed_uncached() {
    let config = json!({
        "version": 1, "tenant_id": "t1",
        "routing": {"tiers": [{"name": "only", "models": ["openai/gpt-4o-mini"]}]},
        "budgets": {"limits": [{"window": "day", "tokens": 3000}], "clamp_max_tokens": true},
        "cache": {"enabled": true, "doorkeeper": false}
    });
    let mut sim = Simulator::new(TenantConfig::from_json(config.to_string().as_bytes()).unwrap(), [1; 32]);
    let body =
        json!({"model": "tollgate/auto", "input": "Write an essay.", "max_output_tokens": 100000, "temperature": 0});
    let out = send(&mut sim, &body, &mut |up| Some(reply(up, text_output("An essay"), "incomplete")));
    assert_eq!(out.status, 200);
    let forwarded: Value = serde_json::from_slice(&out.upstream_calls[0].body).unwrap();
    let cap = forwarded["max_output_tokens"].as_u64().unwrap();
    assert!(cap < 3000, "clamped to what the budget can hold: {cap}");
    assert!(sim.cache.is_empty(), "an incomplete answer is not cached");
}

#[test]
fn malformed_responses_requests_are_refused_before_anything_is_held() {
    let cases = [
        json!({"model": "tollgate/auto"}),
        json!({"model": "tollgate/auto", "input": ""}),
        json!({"model": "tollgate/auto", "input": []}),
        json!({"model": "tollgate/auto", "input": 7}),
        json!({"model": "tollgate/auto", "input": ["text"]}),
        json!({"model": "tollgate/auto", "input": [{"role": "wizard", "content": "x"}]}),
        json!({"model": "tollgate/auto", "input": "x", "instructions": 3}),
        json!({"model": "tollgate/auto", "input": "x", "max_output_tokens": 0}),
    ];
    let mut sim = Simulator::new(config(), [1; 32]);
    for body in cases {
        let out = send(&mut sim, &body, &mut |_| panic!("nothing may be forwarded for {body}"));
        assert_eq!(out.status, 400, "{body}: {}", String::from_utf8_lossy(&out.body));
    }
    assert!(sim.budget.outstanding.is_empty());
}

#[test]
fn a_built_in_tool_without_a_published_price_is_refused_by_name_unless_the_tenant_enables_it() {
    let body = json!({"model": "tollgate/auto", "input": "Open the page", "tools": [{"type": "computer_use_preview"}]});
    let mut sim = Simulator::new(config(), [1; 32]);
    let out = send(&mut sim, &body, &mut |_| panic!("not forwarded"));
    assert_eq!(out.status, 400);
    assert!(String::from_utf8_lossy(&out.body).contains("computer_use_preview"));

    let mut enabled = json!({
        "version": 1, "tenant_id": "t1",
        "routing": {"tiers": [{"name": "only", "models": ["openai/gpt-4o-mini"]}], "builtin_tools": ["computer_use_preview"]},
        "budgets": {"limits": [{"window": "day", "usd": 5.0}]}
    });
    let mut sim = Simulator::new(TenantConfig::from_json(enabled.to_string().as_bytes()).unwrap(), [1; 32]);
    let out = send(&mut sim, &body, &mut |up| {
        let sent: Value = serde_json::from_slice(&up.body).unwrap();
        assert!(sent.get("max_tool_calls").is_none(), "an unmetered tool is not capped: {sent}");
        Some(reply(up, text_output("Nothing much."), "completed"))
    });
    assert_eq!(out.status, 200);
    enabled["routing"]["builtin_tools"] = json!([]);
    let mut sim = Simulator::new(TenantConfig::from_json(enabled.to_string().as_bytes()).unwrap(), [1; 32]);
    let function_only = json!({"model": "tollgate/auto", "input": "x",
                               "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]});
    let out = send(&mut sim, &function_only, &mut |up| Some(reply(up, text_output("ok"), "completed")));
    assert_eq!(out.status, 200, "function tools need no enabling");
}

#[test]
fn built_in_tools_with_a_published_price_are_metered_per_call_held_and_capped() {
    let one_tier = json!({
        "version": 1, "tenant_id": "t1",
        "routing": {"tiers": [{"name": "only", "models": ["openai/gpt-4o-mini"]}]},
        "budgets": {"limits": [{"window": "day", "usd": 5.0}]}
    });
    let config = TenantConfig::from_json(one_tier.to_string().as_bytes()).unwrap();
    let searched = json!([
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "news"}},
        {"type": "web_search_call", "id": "ws_2", "status": "completed", "action": {"type": "search", "query": "more"}},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "Here is the news.", "annotations": []}]}
    ]);
    let tokens_only = {
        let price = tollgate_core::pricing::builtin_price("gpt-4o-mini").unwrap();
        price.cost_micros(&tollgate_core::response::Usage {
            input_tokens: 1000,
            output_tokens: 500,
            ..Default::default()
        })
    };

    // Without a cap of its own, the request is capped at the default and held for it.
    let body = json!({"model": "tollgate/auto", "input": "News today?", "tools": [{"type": "web_search"}]});
    let mut sim = Simulator::new(config.clone(), [1; 32]);
    let out = send(&mut sim, &body, &mut |up| {
        let sent: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(sent["max_tool_calls"], json!(tollgate_core::engine::DEFAULT_MAX_TOOL_CALLS), "{sent}");
        Some(reply(up, searched.clone(), "completed"))
    });
    assert_eq!(out.status, 200, "{}", String::from_utf8_lossy(&out.body));
    let plan = out.plan.as_ref().unwrap();
    let cost = plan.trace.cost_micros.unwrap();
    assert_eq!(cost, tokens_only + 2 * 10_000, "two searches at $10 per 1,000 calls on top of the tokens");
    match out.settlement {
        Some(Settlement::Charge { amount, .. }) => assert_eq!(amount.micros, tokens_only + 20_000),
        other => panic!("{other:?}"),
    }

    // A client cap is the one held, and the body is not touched.
    let capped = json!({"model": "tollgate/auto", "input": "News?", "max_tool_calls": 2, "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]});
    let mut sim = Simulator::new(config.clone(), [1; 32]);
    let out = send(&mut sim, &capped, &mut |up| {
        let sent: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(sent["max_tool_calls"], json!(2));
        Some(reply(up, text_output("none found"), "completed"))
    });
    assert_eq!(out.status, 200);

    // The hold covers the cap: eight searches ($0.08) do not fit in $0.05.
    let mut small = one_tier.clone();
    small["budgets"]["limits"][0]["usd"] = json!(0.05);
    let mut sim = Simulator::new(TenantConfig::from_json(small.to_string().as_bytes()).unwrap(), [1; 32]);
    let out = send(&mut sim, &body, &mut |_| panic!("refused before forwarding"));
    let refusal = String::from_utf8_lossy(&out.body).into_owned();
    assert_eq!(out.status, 400, "{refusal}");
    assert!(refusal.contains("exceeds_budget_limit") && refusal.contains("max_tool_calls"), "{refusal}");
    let plain = json!({"model": "tollgate/auto", "input": "News today?"});
    let out = send(&mut sim, &plain, &mut |up| Some(reply(up, text_output("ok"), "completed")));
    assert_eq!(out.status, 200);
}

#[test]
fn an_unresolved_cheap_answer_escalates_on_the_responses_api_too() {
    let config = json!({
        "version": 1, "tenant_id": "t1",
        "routing": {"tiers": [
            {"name": "cheap", "up_to_score": 0.5, "models": ["openai/gpt-4o-mini"]},
            {"name": "premium", "models": ["openai/gpt-4o"]}
        ]},
        "escalation": {"enabled": true}
    });
    let mut sim = Simulator::new(TenantConfig::from_json(config.to_string().as_bytes()).unwrap(), [1; 32]);
    let body = json!({"model": "tollgate/auto", "input": "Give me a JSON object with the capital of France.",
                      "text": {"format": {"type": "json_object"}}});
    let out = send(&mut sim, &body, &mut |up| {
        let text = if up.target.model == "gpt-4o-mini" { "Sure! Paris." } else { "{\"capital\": \"Paris\"}" };
        Some(reply(up, text_output(text), "completed"))
    });
    let models: Vec<&str> = out.upstream_calls.iter().map(|u| u.target.model.as_str()).collect();
    assert_eq!(models, ["gpt-4o-mini", "gpt-4o"], "malformed JSON for text.format climbs a tier");
    assert!(String::from_utf8_lossy(&out.body).contains("capital"));
}

#[test]
fn a_stream_of_a_stored_answer_is_replayed_as_the_responses_apis_own_events() {
    let mut sim = Simulator::new(config(), [1; 32]);
    let body = json!({"model": "tollgate/auto", "input": "What is the capital of France?", "temperature": 0});
    send(&mut sim, &body, &mut |up| Some(reply(up, text_output("Paris."), "completed")));
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let out = send(&mut sim, &streamed, &mut |_| panic!("served from the cache"));
    assert_eq!(out.header("x-tollgate-cache"), Some("hit"));
    let text = String::from_utf8(out.body.clone()).unwrap();
    let kinds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    // Read back by the core's own stream observer, it is the stored answer.
    let mut observer = tollgate_core::response::StreamObserver::new(ApiFormat::Responses, false, 1 << 20);
    observer.feed(&out.body, &mut Vec::new());
    let outcome = observer.finish(&mut Vec::new());
    assert!(outcome.summary.complete);
    assert_eq!(outcome.assembled.unwrap()["output"][0]["content"][0]["text"], "Paris.");
}
