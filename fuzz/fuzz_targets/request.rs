//! Request parsing, both APIs: `ChatRequest::parse` on any bytes.
//!
//! Property (beyond "does not panic"): a body the router accepts, rewritten
//! for a provider (another model, a clamped output cap, an injected usage
//! request), is a body the router accepts again, and reads back the same:
//! the new model and cap, and the same messages, system text, tools,
//! stream flag and temperature. With only the model changed, the cache key
//! input (`canonical_for_cache`) is unchanged, since the model is not part of it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::api::ApiFormat;
use tollgate_core::config::Provider;
use tollgate_core::request::{ChatRequest, Rewrite};

fuzz_target!(|data: &[u8]| {
    for api in [ApiFormat::OpenAi, ApiFormat::Anthropic, ApiFormat::Embeddings, ApiFormat::Responses] {
        let Ok(request) = ChatRequest::parse(api, data, usize::MAX) else { continue };
        // Everything a plan reads must not panic either.
        let _ = (request.is_sampled(), request.all_text_len(), request.raw_field("model"));
        let canonical = request.canonical_for_cache();
        assert_eq!(canonical, request.canonical_for_cache(), "canonical encoding is deterministic");

        let provider = match api {
            ApiFormat::Anthropic => Provider::Anthropic,
            ApiFormat::OpenAi | ApiFormat::Embeddings | ApiFormat::Responses => Provider::OpenAi,
        };
        let cap = (data.len() as u64 % 5000) + 1;
        let rewrites = [
            Rewrite { provider, model: "gpt-4o-mini", clamp_output_tokens: None, include_usage: false, max_tool_calls: None },
            Rewrite {
                provider,
                model: "m\"\\\u{0}\u{2028}é😀",
                clamp_output_tokens: Some(cap),
                include_usage: true,
                max_tool_calls: Some(cap),
            },
        ];
        for rw in rewrites {
            let body = request.rewritten_body(&rw);
            let again = match ChatRequest::parse(api, &body, usize::MAX) {
                Ok(r) => r,
                Err(e) => panic!(
                    "rewritten body refused ({e:?}):\n in:  {}\n out: {}",
                    String::from_utf8_lossy(data),
                    String::from_utf8_lossy(&body)
                ),
            };
            assert_eq!(again.model, rw.model);
            assert_eq!(again.messages, request.messages);
            assert_eq!(again.system, request.system);
            assert_eq!(again.tools_text, request.tools_text);
            assert_eq!(again.tool_count, request.tool_count);
            assert_eq!(again.stream, request.stream);
            assert_eq!(again.choices, request.choices);
            assert_eq!(again.temperature.map(f64::to_bits), request.temperature.map(f64::to_bits));
            assert_eq!(again.embedding_inputs, request.embedding_inputs);
            match rw.clamp_output_tokens {
                // An embedding has no output to cap.
                Some(_) if api == ApiFormat::Embeddings => assert_eq!(again.max_output_tokens, None),
                Some(cap) => assert_eq!(again.max_output_tokens, Some(cap)),
                None => {
                    assert_eq!(again.max_output_tokens, request.max_output_tokens);
                    assert_eq!(again.canonical_for_cache(), canonical, "model is not in the cache key");
                }
            }
            if rw.include_usage && request.stream && api == ApiFormat::OpenAi {
                assert!(again.client_wants_usage, "usage injected into a stream");
            }
        }
    }
});
