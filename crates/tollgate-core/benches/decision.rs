//! The per-request cost of the core, native: the full decision for 1 KB,
//! 4 KB and 64 KB chat requests, the same requests' token counting alone
//! (so the decision minus counting can be read off side by side), the
//! classifier alone, and our counter against tiktoken-rs on the same text.
//!
//! Run: `cargo bench -p tollgate-core --bench decision` (or scripts/bench).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use divan::{Bencher, black_box};
use tollgate_core::api::ApiFormat;
use tollgate_core::budget::{self, BudgetState};
use tollgate_core::config::TenantConfig;
use tollgate_core::count::{self, Encoding};
use tollgate_core::engine::{self, Inbound, Next, Plan};
use tollgate_core::request::ChatRequest;
use tollgate_core::store::{TenantOp, TenantReply};

fn main() {
    divan::main();
}

const SIZES: &[usize] = &[1024, 4096, 65536];

/// Realistic mixed prose and code, about `bytes` long.
fn prompt_text(bytes: usize) -> String {
    let para = "Our checkout service times out under load. Here is the handler:\n\
        ```rust\nasync fn checkout(cart: Cart) -> Result<Order, Error> {\n    let total = cart.items.iter().map(|i| i.price * i.qty).sum();\n    db.insert(order(total)).await\n}\n```\n\
        Explain step by step why p99 latency doubles when the connection pool is exhausted, \
        compare two fixes, and make sure the answer covers retries, idempotency keys and back-pressure. ";
    let mut s = String::with_capacity(bytes + para.len());
    while s.len() < bytes {
        s.push_str(para);
    }
    s.truncate(bytes);
    s
}

fn body(bytes: usize) -> Vec<u8> {
    serde_json::json!({
        "model": "tollgate/auto",
        "messages": [
            {"role": "system", "content": "You are a senior engineer."},
            {"role": "user", "content": prompt_text(bytes)}
        ],
        "temperature": 0,
        "max_tokens": 800
    })
    .to_string()
    .into_bytes()
}

fn inbound(body: &[u8]) -> Inbound<'_> {
    Inbound {
        tenant_id: "acme",
        api: ApiFormat::OpenAi,
        body,
        cache_control: None,
        now: 1_795_000_000,
        entropy: [7; 16],
        key: None,
        user_header: None,
        tags_header: None,
    }
}

/// Plan, miss the cache, reserve, and produce the forwarded body: everything
/// the core does before the provider is called.
#[divan::bench(args = SIZES)]
fn full_decision(bencher: Bencher, bytes: usize) {
    let config = TenantConfig::example().unwrap();
    let body = body(bytes);
    bencher.bench_local(|| {
        let inbound = inbound(&body);
        let mut plan = Plan::new(&config, &inbound).unwrap();
        let mut state = BudgetState::default();
        let mut next = plan.start();
        loop {
            next = match next {
                Next::LookupCache(_) => plan.on_cache(None, None),
                Next::Reserve(TenantOp::Budget(op)) => {
                    let reply = budget::apply(&mut state, &op, 1_795_000_000);
                    plan.on_reserve_reply(Some(TenantReply::Budget(reply)))
                }
                other => break black_box(other),
            };
        }
    });
}

/// The breakdown: parsing alone, and planning (parse, count, classify, route, key).
#[divan::bench(args = SIZES)]
fn parse_only(bencher: Bencher, bytes: usize) {
    let body = body(bytes);
    bencher.bench_local(|| black_box(ChatRequest::parse(ApiFormat::OpenAi, black_box(&body), usize::MAX)));
}

#[divan::bench(args = SIZES)]
fn plan_only(bencher: Bencher, bytes: usize) {
    let config = TenantConfig::example().unwrap();
    let body = body(bytes);
    bencher.bench_local(|| {
        let inbound = inbound(&body);
        black_box(Plan::new(&config, &inbound))
    });
}

/// Just the prompt counting inside the full decision, for the subtraction.
#[divan::bench(args = SIZES)]
fn counting_inside_decision(bencher: Bencher, bytes: usize) {
    let req = ChatRequest::parse(ApiFormat::OpenAi, &body(bytes), usize::MAX).unwrap();
    bencher.bench_local(|| black_box(count::prompt_tokens(&req, "gpt-4o-mini")));
}

#[divan::bench(args = SIZES)]
fn classifier_only(bencher: Bencher, bytes: usize) {
    let config = TenantConfig::example().unwrap();
    let req = ChatRequest::parse(ApiFormat::OpenAi, &body(bytes), usize::MAX).unwrap();
    bencher.bench_local(|| black_box(engine::classify_request(&req, 1000, &config)));
}

mod count_4kb {
    use super::*;

    #[divan::bench]
    fn tollgate(bencher: Bencher) {
        let text = prompt_text(4096);
        let _ = count::count_text(Encoding::O200kBase, "warm");
        bencher.bench_local(|| black_box(count::count_text(Encoding::O200kBase, black_box(&text))));
    }

    #[divan::bench]
    fn tiktoken_rs(bencher: Bencher) {
        let text = prompt_text(4096);
        let bpe = tiktoken_rs::o200k_base().unwrap();
        assert_eq!(
            bpe.encode_ordinary(&text).len() as u64,
            count::count_text(Encoding::O200kBase, &text),
            "identical counts"
        );
        bencher.bench_local(|| black_box(bpe.encode_ordinary(black_box(&text)).len()));
    }
}

mod pieces_4kb {
    use super::*;
    use tollgate_core::cache::CacheKey;
    use tollgate_core::config::Provider;
    use tollgate_core::request::Rewrite;

    /// About 4 KB with the fields clients send that the router does not
    /// read (held raw, but checked by the same JSON rules as the rest).
    #[divan::bench]
    fn parse_with_unread_fields(bencher: Bencher) {
        let body = serde_json::json!({
            "user": "user-8f2a91", "seed": 42, "top_p": 0.9, "presence_penalty": 0.1,
            "logit_bias": {"50256": -100, "1734": 5},
            "metadata": {"session": "s-123", "tags": ["prod", "checkout"], "trace": {"id": "abc123", "span": 7}},
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "strict": true, "schema": {
                "type": "object", "required": ["steps", "summary"], "additionalProperties": false,
                "properties": {"summary": {"type": "string"}, "steps": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "title": {"type": "string"},
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1}
                    }
                }}}
            }}},
            "model": "tollgate/auto", "temperature": 0, "max_tokens": 800,
            "messages": [
                {"role": "system", "content": "You are a senior engineer."},
                {"role": "user", "content": prompt_text(3072)}
            ],
        })
        .to_string()
        .into_bytes();
        bencher.bench_local(|| black_box(ChatRequest::parse(ApiFormat::OpenAi, black_box(&body), usize::MAX)));
    }

    #[divan::bench]
    fn cache_key(bencher: Bencher) {
        let req = ChatRequest::parse(ApiFormat::OpenAi, &body(4096), usize::MAX).unwrap();
        bencher.bench_local(|| black_box(CacheKey::derive("acme", Provider::OpenAi, "gpt-4o-mini", &req)));
    }

    #[divan::bench]
    fn rewrite(bencher: Bencher) {
        let req = ChatRequest::parse(ApiFormat::OpenAi, &body(4096), usize::MAX).unwrap();
        let rw = Rewrite {
            provider: Provider::OpenAi,
            model: "gpt-4o-mini",
            clamp_output_tokens: None,
            include_usage: true,
            max_tool_calls: None,
        };
        bencher.bench_local(|| black_box(req.rewritten_body(&rw)));
    }
}
