//! The planning entry: `Plan::new` with an `Inbound`, driven to the end by
//! the core's in-memory host (`sim::Simulator`, which steps the plan exactly
//! as the Worker and the Envoy filter do), for the example tenants.
//!
//! Input: `[flags][body]`. flags bit 0: API (OpenAI, Anthropic); bit 1:
//! `Cache-Control: no-store`; bit 2: tenant globex instead of acme; bit 3:
//! the first provider call fails with 503 (fallback); bit 4: the answer hit
//! its output limit; bit 5: send the request twice (cache hit paths).
//!
//! Properties: no panic; every answer has a real HTTP status and the
//! request-id header; every provider call carries a body the router itself
//! accepts for that provider's API, naming exactly the model it routed to.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tollgate_core::api::ApiFormat;
use tollgate_core::config::{EXAMPLE_TENANT_JSON, TenantConfig};
use tollgate_core::engine::{Inbound, Upstream};
use tollgate_core::request::ChatRequest;
use tollgate_core::sim::{Simulator, UpstreamReply};
use tollgate_fuzz::api;

const NOW: u64 = 1_795_000_000;

fn tenants() -> &'static [TenantConfig; 2] {
    static TENANTS: OnceLock<[TenantConfig; 2]> = OnceLock::new();
    TENANTS.get_or_init(|| {
        let parse = |json: &str| TenantConfig::from_json(json.as_bytes()).expect("example tenant");
        [parse(EXAMPLE_TENANT_JSON), parse(include_str!("../../examples/tenant-globex.json"))]
    })
}

fn answer(up: &Upstream, stream: bool, length: bool) -> Vec<u8> {
    let model = &up.target.model;
    let (openai_finish, anthropic_stop) = if length { ("length", "max_tokens") } else { ("stop", "end_turn") };
    match (up.api, stream) {
        (ApiFormat::OpenAi, false) => format!(
            r#"{{"id":"chatcmpl-f","object":"chat.completion","created":1,"model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"Paris."}},"finish_reason":"{openai_finish}"}}],"usage":{{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14,"prompt_tokens_details":{{"cached_tokens":4}}}}}}"#
        ),
        (ApiFormat::OpenAi, true) => format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"Par\"}}}}]}}\n\n\
             data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"is.\"}},\"finish_reason\":\"{openai_finish}\"}}]}}\n\n\
             data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":2,\"total_tokens\":14}}}}\n\n\
             data: [DONE]\n\n"
        ),
        (ApiFormat::Anthropic, false) => format!(
            r#"{{"id":"msg_f","type":"message","role":"assistant","model":"{model}","content":[{{"type":"text","text":"Paris."}}],"stop_reason":"{anthropic_stop}","stop_sequence":null,"usage":{{"input_tokens":12,"cache_read_input_tokens":3,"output_tokens":2}}}}"#
        ),
        (ApiFormat::Anthropic, true) => format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_f\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"{model}\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":12,\"output_tokens\":1}}}}}}\n\n\
             event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n\
             event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"Paris.\"}}}}\n\n\
             event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n\
             event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{anthropic_stop}\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":2}}}}\n\n\
             event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
        ),
        // The plan target sends chat and messages only (`tollgate_fuzz::api`).
        (ApiFormat::Embeddings | ApiFormat::Responses, _) => String::new(),
    }
    .into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else { return };
    let config = tenants()[usize::from(flags >> 2 & 1)].clone();
    let mut sim = Simulator::new(config, [7; 32]);
    let inbound = Inbound {
        tenant_id: &sim.config.tenant_id.clone(),
        api: api(flags),
        body,
        cache_control: (flags & 2 != 0).then_some("no-store"),
        now: NOW,
        entropy: [flags; 16],
        key: None,
        user_header: None,
        tags_header: None,
    };
    let (fail_first, length) = (flags & 8 != 0, flags & 16 != 0);
    for round in 0..if flags & 32 != 0 { 2 } else { 1 } {
        let mut calls = 0;
        let mut upstream = |up: &Upstream| {
            calls += 1;
            let request = match ChatRequest::parse(up.api, &up.body, usize::MAX) {
                Ok(r) => r,
                Err(e) => panic!(
                    "upstream body refused ({e:?}):\n in:  {}\n out: {}",
                    String::from_utf8_lossy(body),
                    String::from_utf8_lossy(&up.body)
                ),
            };
            assert_eq!(request.model, up.target.model, "the body names the routed model");
            if fail_first && calls == 1 {
                return Some(UpstreamReply { status: 503, body: b"{}".to_vec(), stream: false });
            }
            Some(UpstreamReply { status: 200, body: answer(up, request.stream, length), stream: request.stream })
        };
        let outcome = sim.handle(&inbound, &mut upstream);
        assert!((200..600).contains(&outcome.status), "status {}", outcome.status);
        assert!(outcome.header("x-tollgate-request-id").is_some(), "round {round}: {:?}", outcome.headers);
        if outcome.status == 200 {
            assert!(outcome.header("x-tollgate-model").is_some(), "{:?}", outcome.headers);
        }
    }
});
