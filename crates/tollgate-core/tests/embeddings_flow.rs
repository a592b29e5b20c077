//! `POST /v1/embeddings` through the in-memory host: routed without
//! classification, budgeted on input tokens, cached at the first sighting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use tollgate_core::api::ApiFormat;
use tollgate_core::config::TenantConfig;
use tollgate_core::engine::{Inbound, Settlement, Upstream};
use tollgate_core::request::ChatRequest;
use tollgate_core::sim::{Outcome, Simulator, UpstreamReply};

const NOW: u64 = 1_795_000_000;

fn config(embeddings: Option<Value>) -> TenantConfig {
    let mut routing = json!({
        "tiers": [
            {"name": "cheap", "up_to_score": 0.5, "models": ["openai/gpt-4o-mini"]},
            {"name": "premium", "models": ["openai/gpt-4o"]}
        ],
        "pinned_models": ["openai/text-embedding-3-large"]
    });
    if let Some(e) = embeddings {
        routing["embeddings"] = e;
    }
    let config = json!({
        "version": 1,
        "tenant_id": "t1",
        "routing": routing,
        "budgets": {"limits": [{"window": "day", "usd": 5.0}]},
        "cache": {"enabled": true, "doorkeeper": true}
    });
    TenantConfig::from_json(config.to_string().as_bytes()).unwrap()
}

fn with_chain() -> TenantConfig {
    config(Some(json!({"models": ["openai/text-embedding-3-small", "openai/text-embedding-ada-002"]})))
}

/// An OpenAI-shaped embeddings answer: one vector per input, usage as given.
fn embedding_reply(up: &Upstream, prompt_tokens: u64) -> UpstreamReply {
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    let items = match &sent["input"] {
        Value::Array(items) if items.first().is_some_and(|i| !i.is_number()) => items.len(),
        _ => 1,
    };
    let data: Vec<Value> =
        (0..items).map(|i| json!({"object": "embedding", "index": i, "embedding": [0.25, -0.5, i]})).collect();
    let body = json!({"object": "list", "data": data, "model": sent["model"],
                      "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}});
    UpstreamReply { status: 200, body: body.to_string().into_bytes(), stream: false }
}

fn send(sim: &mut Simulator, body: &Value, upstream: &mut dyn FnMut(&Upstream) -> Option<UpstreamReply>) -> Outcome {
    let bytes = body.to_string();
    let inbound = Inbound {
        tenant_id: "t1",
        api: ApiFormat::Embeddings,
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

fn error_code(out: &Outcome) -> String {
    let body: Value = serde_json::from_slice(&out.body).unwrap();
    body["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn an_auto_embedding_goes_to_the_tenants_embedding_chain_unclassified_with_nothing_written_but_the_model() {
    let mut sim = Simulator::new(with_chain(), [1; 32]);
    let mut sent = Vec::new();
    let body = json!({"model": "tollgate/auto", "input": ["alpha", "beta"], "encoding_format": "base64"});
    let out = send(&mut sim, &body, &mut |up| {
        sent.push(up.clone());
        Some(embedding_reply(up, 4))
    });
    assert_eq!(out.status, 200);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "/v1/embeddings");
    assert_eq!(sent[0].target.model, "text-embedding-3-small");
    let forwarded: Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(
        forwarded,
        json!({"model": "text-embedding-3-small", "input": ["alpha", "beta"], "encoding_format": "base64"}),
        "only the model is rewritten: no output cap, no stream options"
    );
    assert_eq!(out.header("x-tollgate-tier"), Some("embeddings"));
    let plan = out.plan.as_ref().unwrap();
    assert_eq!(plan.score, 0.0);
    assert_eq!(plan.output_cap, 0);
}

#[test]
fn an_embedding_is_charged_its_input_tokens_only_and_a_repeat_is_a_hit_even_with_a_doorkeeper() {
    let mut sim = Simulator::new(with_chain(), [1; 32]);
    let body = json!({"model": "tollgate/auto", "input": "the same chunk, embedded again"});
    let mut calls = 0;
    let first = send(&mut sim, &body, &mut |up| {
        calls += 1;
        Some(embedding_reply(up, 1_000_000))
    });
    assert_eq!(first.status, 200);
    // text-embedding-3-small: $0.02 per million input tokens.
    let Some(Settlement::Charge { amount, .. }) = &first.settlement else { panic!("{:?}", first.settlement) };
    assert_eq!((amount.tokens, amount.micros), (1_000_000, 20_000));
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));

    let again = send(&mut sim, &body, &mut |up| {
        calls += 1;
        Some(embedding_reply(up, 1_000_000))
    });
    assert_eq!(again.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(calls, 1, "the repeat never reached the provider");
    assert_eq!(again.body, first.body);
    assert_eq!(sim.spent(NOW).micros, 20_000);
}

#[test]
fn each_embedding_input_is_counted_on_its_own_without_chat_framing() {
    let mut sim = Simulator::new(with_chain(), [1; 32]);
    let body = json!({"model": "tollgate/auto", "input": ["one two three", "four five", "six"]});
    let out = send(&mut sim, &body, &mut |up| Some(embedding_reply(up, 7)));
    let plan = out.plan.as_ref().unwrap();
    // Each input counted on its own (cl100k_base), with no chat framing.
    let request = ChatRequest::parse(ApiFormat::Embeddings, body.to_string().as_bytes(), 1 << 20).unwrap();
    let per_item: u64 = request
        .embedding_inputs
        .as_ref()
        .unwrap()
        .texts
        .iter()
        .map(|t| tollgate_core::count::count_text(tollgate_core::count::Encoding::Cl100kBase, t))
        .sum();
    assert_eq!(plan.prompt.tokens, per_item);
    assert_eq!(request.embedding_inputs.as_ref().unwrap().items, 3);
}

#[test]
fn token_id_inputs_count_their_ids() {
    let request = ChatRequest::parse(
        ApiFormat::Embeddings,
        br#"{"model": "tollgate/auto", "input": [[1, 2, 3], [4, 5]]}"#,
        1 << 20,
    )
    .unwrap();
    let inputs = request.embedding_inputs.unwrap();
    assert_eq!((inputs.token_ids, inputs.items), (5, 2));
}

#[test]
fn a_failing_embedding_model_falls_back_to_the_next_of_the_chain() {
    let mut sim = Simulator::new(with_chain(), [1; 32]);
    let body = json!({"model": "tollgate/auto", "input": "x"});
    let out = send(&mut sim, &body, &mut |up| {
        if up.attempt == 0 {
            Some(UpstreamReply { status: 503, body: b"{}".to_vec(), stream: false })
        } else {
            Some(embedding_reply(up, 3))
        }
    });
    assert_eq!(out.status, 200);
    assert_eq!(out.upstream_calls.len(), 2);
    assert_eq!(out.upstream_calls[1].target.model, "text-embedding-ada-002");
}

#[test]
fn a_pinned_embedding_model_is_served_by_name() {
    let mut sim = Simulator::new(config(None), [1; 32]);
    let body = json!({"model": "text-embedding-3-large", "input": "x"});
    let out = send(&mut sim, &body, &mut |up| Some(embedding_reply(up, 3)));
    assert_eq!(out.status, 200);
    assert_eq!(out.upstream_calls[0].target.model, "text-embedding-3-large");
}

#[test]
fn embeddings_without_a_configured_chain_or_with_a_chat_model_are_refused_with_a_400() {
    let mut sim = Simulator::new(config(None), [1; 32]);
    let mut never = |_: &Upstream| -> Option<UpstreamReply> { panic!("nothing may be forwarded") };
    let out = send(&mut sim, &json!({"model": "tollgate/auto", "input": "x"}), &mut never);
    assert_eq!((out.status, error_code(&out).as_str()), (400, "invalid_value"));
    let mut sim = Simulator::new(with_chain(), [1; 32]);
    let out = send(&mut sim, &json!({"model": "gpt-4o", "input": "x"}), &mut never);
    assert_eq!(out.status, 400);
    assert_eq!(sim.spent(NOW).micros, 0);
}

#[test]
fn malformed_embedding_inputs_are_refused_before_anything_is_held() {
    let cases = [
        json!({"model": "tollgate/auto"}),
        json!({"model": "tollgate/auto", "input": ""}),
        json!({"model": "tollgate/auto", "input": []}),
        json!({"model": "tollgate/auto", "input": [[]]}),
        json!({"model": "tollgate/auto", "input": ["ok", 3]}),
        json!({"model": "tollgate/auto", "input": [1, "two"]}),
        json!({"model": "tollgate/auto", "input": {"text": "x"}}),
        json!({"model": "tollgate/auto", "input": "x", "encoding_format": "int8"}),
        json!({"model": "tollgate/auto", "input": "x", "dimensions": 0}),
    ];
    let mut sim = Simulator::new(with_chain(), [1; 32]);
    for body in cases {
        let out = send(&mut sim, &body, &mut |_| panic!("nothing may be forwarded for {body}"));
        assert_eq!(out.status, 400, "{body}: {}", String::from_utf8_lossy(&out.body));
    }
    assert_eq!(sim.spent(NOW).micros, 0);
}

#[test]
fn an_embedding_route_naming_an_anthropic_model_or_an_unpriced_one_is_a_config_error() {
    for models in [json!(["anthropic/claude-3-5-haiku-latest"]), json!(["openai/my-embedder"]), json!([])] {
        let config = json!({
            "version": 1, "tenant_id": "t1",
            "routing": {"tiers": [{"name": "only", "models": ["openai/gpt-4o-mini"]}], "embeddings": {"models": models}}
        });
        assert!(TenantConfig::from_json(config.to_string().as_bytes()).is_err(), "{models}");
    }
}

#[test]
fn a_chain_model_named_directly_goes_first_with_the_rest_of_the_chain_behind_it() {
    let mut sim = Simulator::new(with_chain(), [1; 32]);
    let body = json!({"model": "text-embedding-ada-002", "input": "x"});
    let out = send(&mut sim, &body, &mut |up| {
        if up.attempt == 0 {
            Some(UpstreamReply { status: 429, body: b"{}".to_vec(), stream: false })
        } else {
            Some(embedding_reply(up, 1))
        }
    });
    assert_eq!(out.status, 200);
    let models: Vec<&str> = out.upstream_calls.iter().map(|u| u.target.model.as_str()).collect();
    assert_eq!(models, ["text-embedding-ada-002", "text-embedding-3-small"]);
}

#[test]
fn a_pinned_chat_model_is_not_sent_to_embeddings_nor_a_pinned_embedding_model_to_chat() {
    let config = json!({
        "version": 1, "tenant_id": "t1",
        "routing": {"tiers": [{"name": "only", "models": ["openai/gpt-4o-mini"]}],
                    "pinned_models": ["openai/gpt-4o-2024-08-06", "openai/text-embedding-3-large"]}
    });
    let mut sim = Simulator::new(TenantConfig::from_json(config.to_string().as_bytes()).unwrap(), [1; 32]);
    let out = send(&mut sim, &json!({"model": "gpt-4o-2024-08-06", "input": "x"}), &mut |_| panic!("not forwarded"));
    assert_eq!((out.status, error_code(&out).as_str()), (400, "invalid_value"));
    let chat = json!({"model": "text-embedding-3-large", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let inbound = Inbound {
        tenant_id: "t1",
        api: ApiFormat::OpenAi,
        body: chat.as_bytes(),
        cache_control: None,
        now: NOW,
        entropy: [9; 16],
        key: None,
        user_header: None,
        tags_header: None,
    };
    let out = sim.handle(&inbound, &mut |_| panic!("not forwarded"));
    assert_eq!((out.status, error_code(&out).as_str()), (400, "invalid_value"));
}

#[test]
fn token_ids_are_reserved_as_they_are_even_when_text_is_estimated() {
    let request =
        ChatRequest::parse(ApiFormat::Embeddings, br#"{"model": "tollgate/auto", "input": [[1, 2, 3, 4]]}"#, 1 << 20)
            .unwrap();
    // Whatever the vocabulary build, ids are counted one each.
    assert_eq!(tollgate_core::count::prompt_tokens(&request, "any-embedder").tokens, 4);
}
