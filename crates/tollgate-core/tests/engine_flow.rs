//! The decision state machine driven end to end by the in-memory host
//! (`sim::Simulator`), exactly as the Worker and the Envoy filter drive it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{merge, rand_bytes};
use serde_json::{Value, json};
use tollgate_core::api::ApiFormat;
use tollgate_core::config::TenantConfig;
use tollgate_core::engine::{Inbound, Settlement, Upstream};
use tollgate_core::response;
use tollgate_core::sim::{Outcome, Simulator, UpstreamReply};

const NOW: u64 = 1_795_000_000;

fn config(extra: Value) -> TenantConfig {
    let mut base = json!({
        "version": 1,
        "tenant_id": "t1",
        "routing": {
            "tiers": [
                {"name": "cheap", "up_to_score": 0.5, "models": ["openai/gpt-4o-mini", "openai/gpt-4.1-nano", "anthropic/claude-3-5-haiku-latest"]},
                {"name": "premium", "models": ["openai/gpt-4o", "anthropic/claude-sonnet-4-5"]}
            ],
            "pinned_models": ["openai/gpt-4o-2024-08-06"]
        },
        "cache": {"doorkeeper": false}
    });
    merge(&mut base, extra);
    TenantConfig::from_json(base.to_string().as_bytes()).unwrap()
}

fn openai_reply(up: &Upstream) -> UpstreamReply {
    let body: Value = serde_json::from_slice(&up.body).unwrap();
    let model = body["model"].as_str().unwrap().to_owned();
    let answer = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": NOW, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer from {model}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
    });
    if body["stream"] == json!(true) {
        let sse = response::replay_as_sse(ApiFormat::OpenAi, &answer, true).unwrap();
        UpstreamReply { status: 200, body: sse, stream: true }
    } else {
        UpstreamReply { status: 200, body: answer.to_string().into_bytes(), stream: false }
    }
}

fn send(sim: &mut Simulator, body: Value, upstream: &mut dyn FnMut(&Upstream) -> Option<UpstreamReply>) -> Outcome {
    send_at(sim, ApiFormat::OpenAi, body, None, NOW, upstream)
}

fn send_at(
    sim: &mut Simulator,
    api: ApiFormat,
    body: Value,
    cache_control: Option<&str>,
    now: u64,
    upstream: &mut dyn FnMut(&Upstream) -> Option<UpstreamReply>,
) -> Outcome {
    let bytes = body.to_string();
    let tenant = sim.config.tenant_id.clone();
    let inbound = Inbound {
        tenant_id: &tenant,
        api,
        body: bytes.as_bytes(),
        cache_control,
        now,
        entropy: rand_bytes(&bytes, now),
        key: None,
        user_header: None,
        tags_header: None,
    };
    sim.handle(&inbound, upstream)
}

/// Spend the tenant made through other requests, settled straight into its ledger.
fn spend_elsewhere(sim: &mut Simulator, tokens: u64) {
    let amount = tollgate_core::budget::Amount { tokens, micros: 0, requests: 0 };
    tollgate_core::budget::settle(&mut sim.budget, &sim.config.budgets, &format!("elsewhere-{tokens}"), amount, NOW);
}

fn ask(prompt: &str) -> Value {
    json!({"model": "tollgate/auto", "messages": [{"role": "user", "content": prompt}], "temperature": 0})
}

fn error_code(o: &Outcome) -> String {
    let v: Value = serde_json::from_slice(&o.body).unwrap();
    assert_eq!(v["type"], "error", "error bodies carry both shapes");
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[test]
fn a_named_tier_routes_to_the_first_model_of_that_tiers_chain() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let o = send(
        &mut sim,
        json!({"model": "tollgate/premium", "messages": [{"role": "user", "content": "hi"}]}),
        &mut |u| Some(openai_reply(u)),
    );
    assert_eq!(o.status, 200);
    assert_eq!(o.upstream_calls[0].target.to_string(), "openai/gpt-4o");
    assert_eq!(o.header("x-tollgate-tier"), Some("premium"));
    assert_eq!(o.header("x-tollgate-route"), Some("tier"));
}

#[test]
fn easy_prompts_go_cheap_and_hard_prompts_go_premium() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let easy = send(&mut sim, ask("What is the capital of France?"), &mut |u| Some(openai_reply(u)));
    let hard = send(
        &mut sim,
        ask(
            "Design a distributed, multi-region payments ledger with exactly-once settlement. Compare consensus protocols, \
             prove the safety invariant step by step, and write the Rust code for the commit path:\n```rust\nfn commit() {}\n```",
        ),
        &mut |u| Some(openai_reply(u)),
    );
    assert_eq!(easy.header("x-tollgate-tier"), Some("cheap"), "{:?}", easy.headers);
    assert_eq!(hard.header("x-tollgate-tier"), Some("premium"), "{:?}", hard.headers);
    let score = |o: &Outcome| o.header("x-tollgate-score").unwrap().parse::<f64>().unwrap();
    assert!(score(&easy) < score(&hard));
}

#[test]
fn the_rewritten_body_changes_only_the_model() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let body = json!({"model": "tollgate/cheap", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.3, "seed": 7, "user": "u"});
    let o = send(&mut sim, body.clone(), &mut |u| Some(openai_reply(u)));
    let mut sent: Value = serde_json::from_slice(&o.upstream_calls[0].body).unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini");
    sent["model"] = body["model"].clone();
    assert_eq!(sent, body);
}

#[test]
fn a_repeated_deterministic_request_is_served_from_cache_without_an_upstream_call() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let first = send(&mut sim, ask("What is 2+2?"), &mut |u| Some(openai_reply(u)));
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    assert!(first.finish.as_ref().unwrap().cache_fill.is_some());
    let mut calls = 0;
    let second = send(&mut sim, ask("What is 2+2?"), &mut |u| {
        calls += 1;
        Some(openai_reply(u))
    });
    assert_eq!(calls, 0);
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-tollgate-cache"), Some("hit"));
    let a: Value = serde_json::from_slice(&first.body).unwrap();
    let b: Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(a["choices"], b["choices"]);
}

#[test]
fn a_cached_json_answer_replays_as_a_stream_to_a_streaming_client() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    send(&mut sim, ask("Name a colour."), &mut |u| Some(openai_reply(u)));
    let mut streamed = ask("Name a colour.");
    streamed["stream"] = json!(true);
    let o = send(&mut sim, streamed, &mut |_| panic!("must be a hit"));
    assert_eq!(o.header("x-tollgate-cache"), Some("hit"));
    assert!(o.header("content-type").unwrap().starts_with("text/event-stream"));
    let text = String::from_utf8(o.body.clone()).unwrap();
    assert!(text.contains("answer from gpt-4o-mini"));
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert!(!text.contains("\"usage\":{"), "the client did not ask for usage");
}

#[test]
fn the_doorkeeper_stores_only_on_second_sight() {
    let mut sim = Simulator::new(config(json!({"cache": {"doorkeeper": true}})), [1; 32]);
    let first = send(&mut sim, ask("one-off?"), &mut |u| Some(openai_reply(u)));
    assert!(first.finish.as_ref().unwrap().cache_fill.is_none());
    let second = send(&mut sim, ask("one-off?"), &mut |u| Some(openai_reply(u)));
    assert!(second.finish.as_ref().unwrap().cache_fill.is_some());
    let third = send(&mut sim, ask("one-off?"), &mut |_| None);
    assert_eq!(third.header("x-tollgate-cache"), Some("hit"));
}

#[test]
fn sampled_no_store_and_tool_call_answers_are_never_cached() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let mut hot = ask("tell me a joke");
    hot["temperature"] = json!(0.9);
    let o = send(&mut sim, hot, &mut |u| Some(openai_reply(u)));
    assert_eq!(o.header("x-tollgate-cache"), Some("bypass; reason=sampled"));
    let o = send_at(&mut sim, ApiFormat::OpenAi, ask("private"), Some("no-store"), NOW, &mut |u| Some(openai_reply(u)));
    assert_eq!(o.header("x-tollgate-cache"), Some("bypass; reason=no_store"));
    let tool_answer = |_: &Upstream| {
        let body = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5}});
        Some(UpstreamReply { status: 200, body: body.to_string().into_bytes(), stream: false })
    };
    let o = send(&mut sim, ask("call the tool"), &mut { tool_answer });
    assert!(o.finish.as_ref().unwrap().cache_fill.is_none());
    assert!(sim.cache.is_empty());
}

#[test]
fn tenants_never_see_each_others_cache() {
    let mut a = Simulator::new(config(json!({})), [1; 32]);
    let mut b = Simulator::new(config(json!({"tenant_id": "t2"})), [1; 32]);
    let o = send(&mut a, ask("shared question"), &mut |u| Some(openai_reply(u)));
    let key = o.plan.unwrap().cache.key.unwrap();
    let ob = send(&mut b, ask("shared question"), &mut |u| Some(openai_reply(u)));
    assert_ne!(ob.plan.unwrap().cache.key.unwrap(), key);
    // Even sharing one store, a fresh tenant does not hit the other's entry.
    let mut c = Simulator::new(config(json!({"tenant_id": "t3"})), [1; 32]);
    c.cache.extend(a.cache.clone());
    let again = send(&mut c, ask("shared question"), &mut |u| Some(openai_reply(u)));
    assert_eq!(again.header("x-tollgate-cache"), Some("miss"));
}

#[test]
fn over_budget_requests_get_429_naming_the_budget_and_leak_nothing() {
    let cfg = config(json!({"budgets": {"limits": [{"name": "daily", "window": "day", "tokens": 5000}]}}));
    let mut sim = Simulator::new(cfg, [1; 32]);
    // A request that fits is charged its actual usage (30 tokens), not its hold.
    let mut ok = ask("hello");
    ok["max_tokens"] = json!(100);
    let o = send(&mut sim, ok, &mut |u| Some(openai_reply(u)));
    assert_eq!(o.status, 200);
    assert!(matches!(o.settlement, Some(Settlement::Charge { amount, .. }) if amount.tokens == 30));
    assert_eq!(sim.spent(NOW).tokens, 30);
    // Spend most of the rest; a request that would fit tomorrow gets 429.
    spend_elsewhere(&mut sim, 4900);
    let mut big = ask("hello again");
    big["max_tokens"] = json!(500);
    let o = send(&mut sim, big, &mut |_| panic!("must not reach the provider"));
    assert_eq!(o.status, 429);
    assert_eq!(error_code(&o), "budget_exceeded");
    let msg: Value = serde_json::from_slice(&o.body).unwrap();
    let message = msg["error"]["message"].as_str().unwrap();
    assert!(message.contains("`daily` budget") && message.contains("resets at"), "{message}");
    assert!(o.header("retry-after").is_some());
    assert!(sim.budget.outstanding.is_empty());
    assert_eq!(sim.spent(NOW).tokens, 4930);
}

#[test]
fn a_request_bigger_than_the_whole_budget_gets_400_not_a_pointless_retry_after() {
    let cfg = config(json!({"budgets": {"limits": [{"name": "daily", "window": "day", "tokens": 5000}]}}));
    let mut sim = Simulator::new(cfg, [1; 32]);
    let mut huge = ask("hello");
    huge["max_tokens"] = json!(6000);
    let o = send(&mut sim, huge, &mut |_| panic!("must not reach the provider"));
    assert_eq!(o.status, 400);
    assert_eq!(error_code(&o), "exceeds_budget_limit");
    assert!(o.header("retry-after").is_none());
    assert!(sim.budget.outstanding.is_empty());
}

#[test]
fn a_metered_request_without_max_tokens_is_capped_at_what_was_reserved() {
    let cfg = config(
        json!({"budgets": {"default_output_reservation": 700, "limits": [{"window": "day", "tokens": 100000}]}}),
    );
    let mut sim = Simulator::new(cfg, [1; 32]);
    let o = send(&mut sim, ask("no cap"), &mut |u| Some(openai_reply(u)));
    let sent: Value = serde_json::from_slice(&o.upstream_calls[0].body).unwrap();
    assert_eq!(sent["max_completion_tokens"], 700);
}

#[test]
fn a_clamped_cap_is_shared_between_n_choices() {
    let cfg = config(json!({"budgets": {"clamp_max_tokens": true, "limits": [{"window": "day", "tokens": 2000}]}}));
    let mut sim = Simulator::new(cfg, [1; 32]);
    let body =
        json!({"model": "tollgate/cheap", "n": 4, "max_tokens": 1000, "messages": [{"role": "user", "content": "x"}]});
    let o = send(&mut sim, body, &mut |u| Some(openai_reply(u)));
    let sent: Value = serde_json::from_slice(&o.upstream_calls[0].body).unwrap();
    let per_choice = sent["max_tokens"].as_u64().unwrap();
    assert!(per_choice * 4 <= 2000, "{per_choice} per choice × 4 must fit the 2000-token hold");
}

#[test]
fn no_cache_requests_skip_the_lookup_but_store_the_fresh_answer() {
    let mut sim = Simulator::new(config(json!({"cache": {"doorkeeper": true}})), [1; 32]);
    let o = send_at(&mut sim, ApiFormat::OpenAi, ask("fresh please"), Some("no-cache"), NOW, &mut |u| {
        Some(openai_reply(u))
    });
    assert_eq!(o.header("x-tollgate-cache"), Some("bypass; reason=no_cache"));
    assert!(o.finish.unwrap().cache_fill.is_some());
    let hit = send(&mut sim, ask("fresh please"), &mut |_| None);
    assert_eq!(hit.header("x-tollgate-cache"), Some("hit"));
}

#[test]
fn a_config_naming_another_tenant_is_refused() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let body = ask("x").to_string();
    let inbound = Inbound {
        tenant_id: "someone-else",
        api: ApiFormat::OpenAi,
        body: body.as_bytes(),
        cache_control: None,
        now: NOW,
        entropy: [0; 16],
        key: None,
        user_header: None,
        tags_header: None,
    };
    let o = sim.handle(&inbound, &mut |_| panic!("must not reach the provider"));
    assert_eq!(o.status, 503);
    assert_eq!(error_code(&o), "tenant_unavailable");
}

#[test]
fn a_chain_that_only_times_out_answers_503() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let o =
        send(&mut sim, json!({"model": "tollgate/cheap", "messages": [{"role": "user", "content": "x"}]}), &mut |_| {
            None
        });
    assert_eq!(o.status, 503);
    assert_eq!(error_code(&o), "upstream_timeout");
    assert_eq!(o.upstream_calls.len(), 2, "both OpenAI models of the cheap tier were tried");
}

#[test]
fn reject_mode_refuses_even_cache_hits_once_exhausted_but_cache_only_serves_them() {
    for (mode, want) in [("reject", 429), ("cache_only", 200)] {
        let cfg = config(json!({"budgets": {"on_exhausted": mode, "limits": [{"window": "day", "tokens": 100}]}}));
        let mut sim = Simulator::new(cfg, [1; 32]);
        let mut q = ask("cached?");
        q["max_tokens"] = json!(20);
        assert_eq!(send(&mut sim, q.clone(), &mut |u| Some(openai_reply(u))).status, 200);
        // Spend the rest of the budget.
        let mut other = ask("spend");
        other["max_tokens"] = json!(20);
        let burn = |_: &Upstream| {
            let body = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 40}});
            Some(UpstreamReply { status: 200, body: body.to_string().into_bytes(), stream: false })
        };
        assert_eq!(send(&mut sim, other, &mut { burn }).status, 200);
        let hit = send(&mut sim, q, &mut |_| panic!("no upstream"));
        assert_eq!(hit.status, want, "mode {mode}");
        // The cost-per-resolution ledger records a served hit, never a refused one.
        let plan = hit.plan.expect("planned");
        let ops = tollgate_core::store::closing_ops(&plan, &sim.config.budgets, hit.settlement.as_ref(), None);
        let recorded = ops.iter().any(|op| {
            matches!(op, tollgate_core::store::TenantOp::Outcome(tollgate_core::outcomes::OutcomeOp::Record { outcome }) if outcome.cache_hit)
        });
        assert_eq!(recorded, want == 200, "mode {mode}: {ops:?}");
    }
}

#[test]
fn upstream_failures_walk_the_fallback_chain_then_fail_with_502_and_release_the_hold() {
    let cfg = config(json!({"budgets": {"limits": [{"window": "day", "tokens": 100000}]}}));
    let mut sim = Simulator::new(cfg, [1; 32]);
    let mut tried = Vec::new();
    let o =
        send(&mut sim, json!({"model": "tollgate/cheap", "messages": [{"role": "user", "content": "x"}]}), &mut |u| {
            tried.push(u.target.model.clone());
            if u.attempt == 0 {
                Some(UpstreamReply { status: 503, body: b"{}".to_vec(), stream: false })
            } else {
                Some(openai_reply(u))
            }
        });
    assert_eq!(o.status, 200);
    assert_eq!(tried, vec!["gpt-4o-mini", "gpt-4.1-nano"]);
    assert_eq!(o.header("x-tollgate-fallbacks"), Some("1"));
    assert_eq!(o.header("x-tollgate-model"), Some("openai/gpt-4.1-nano"));

    let o =
        send(&mut sim, json!({"model": "tollgate/cheap", "messages": [{"role": "user", "content": "y"}]}), &mut |u| {
            if u.attempt == 0 { Some(UpstreamReply { status: 429, body: b"{}".to_vec(), stream: false }) } else { None }
        });
    assert_eq!(o.status, 502);
    assert_eq!(error_code(&o), "upstream_failed");
    assert!(matches!(o.settlement, Some(Settlement::Release { .. })));
    assert!(sim.budget.outstanding.is_empty());
}

#[test]
fn a_fallback_answer_is_not_written_under_a_key_no_lookup_reads() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let q = json!({"model": "tollgate/cheap", "temperature": 0, "messages": [{"role": "user", "content": "z"}]});
    let o = send(&mut sim, q, &mut |u| {
        if u.attempt == 0 {
            Some(UpstreamReply { status: 500, body: b"{}".to_vec(), stream: false })
        } else {
            Some(openai_reply(u))
        }
    });
    assert_eq!(o.status, 200);
    assert_eq!(o.finish.unwrap().not_cached, Some(tollgate_core::cache::NotAdmitted::Fallback));
    assert!(sim.cache.is_empty());
}

#[test]
fn a_provider_client_error_passes_through_uncached_and_uncharged() {
    let cfg = config(json!({"budgets": {"limits": [{"window": "day", "tokens": 100000}]}}));
    let mut sim = Simulator::new(cfg, [1; 32]);
    let o = send(&mut sim, ask("bad for provider"), &mut |_| {
        Some(UpstreamReply {
            status: 400,
            body: br#"{"error":{"message":"nope","type":"invalid_request_error"}}"#.to_vec(),
            stream: false,
        })
    });
    assert_eq!(o.status, 400);
    assert!(matches!(o.settlement, Some(Settlement::Release { .. })));
    assert!(sim.cache.is_empty());
    assert_eq!(sim.spent(NOW).tokens, 0);
}

#[test]
fn an_unreachable_budget_store_fails_closed_by_default_and_open_when_configured() {
    let mut closed =
        Simulator::new(config(json!({"budgets": {"limits": [{"window": "day", "tokens": 1000}]}})), [1; 32]);
    closed.budget_store_down = true;
    let o = send(&mut closed, ask("x"), &mut |_| panic!("fail closed"));
    assert_eq!(o.status, 503);
    assert_eq!(error_code(&o), "budget_store_unavailable");

    let mut open = Simulator::new(
        config(json!({"budgets": {"store_failure": "open", "limits": [{"window": "day", "tokens": 1000}]}})),
        [1; 32],
    );
    open.budget_store_down = true;
    let o = send(&mut open, ask("x"), &mut |u| Some(openai_reply(u)));
    assert_eq!(o.status, 200);
    assert!(o.header("x-tollgate-reasons").unwrap().contains("fail-open"));
}

#[test]
fn crossing_the_soft_threshold_downgrades_premium_requests_to_the_cheapest_tier() {
    let cfg = config(json!({"budgets": {"soft_threshold_pct": 50, "limits": [{"window": "day", "tokens": 10000}]}}));
    let mut sim = Simulator::new(cfg, [1; 32]);
    let premium = |n: u32| json!({"model": "tollgate/premium", "messages": [{"role": "user", "content": format!("q{n}")}], "max_tokens": 100});
    let o = send(&mut sim, premium(1), &mut |u| Some(openai_reply(u)));
    assert_eq!(o.header("x-tollgate-model"), Some("openai/gpt-4o"));
    spend_elsewhere(&mut sim, 6000);
    let o = send(&mut sim, premium(2), &mut |u| Some(openai_reply(u)));
    assert_eq!(o.header("x-tollgate-model"), Some("openai/gpt-4o-mini"));
    assert_eq!(o.header("x-tollgate-downgraded"), Some("soft-budget-threshold"));
}

#[test]
fn exact_repeats_still_hit_the_cache_after_a_soft_downgrade() {
    let cfg = config(json!({"budgets": {"soft_threshold_pct": 50, "limits": [{"window": "day", "tokens": 100000}]}}));
    let mut sim = Simulator::new(cfg, [1; 32]);
    spend_elsewhere(&mut sim, 60000);
    let q = json!({"model": "tollgate/premium", "messages": [{"role": "user", "content": "repeat me"}], "temperature": 0, "max_tokens": 50});
    let first = send(&mut sim, q.clone(), &mut |u| Some(openai_reply(u)));
    assert_eq!(first.header("x-tollgate-model"), Some("openai/gpt-4o-mini"));
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    assert!(first.finish.as_ref().unwrap().cache_fill.is_some(), "{:?}", first.finish);
    let second = send(&mut sim, q, &mut |_| panic!("must be served from cache"));
    assert_eq!(second.header("x-tollgate-cache"), Some("hit"));
    assert!(matches!(second.settlement, Some(Settlement::Release { .. })));
    assert!(sim.budget.outstanding.is_empty());
}

#[test]
fn clamping_rewrites_max_tokens_to_what_the_budget_can_pay_for() {
    let cfg = config(json!({"budgets": {"clamp_max_tokens": true, "limits": [{"window": "day", "tokens": 500}]}}));
    let mut sim = Simulator::new(cfg, [1; 32]);
    let mut q = ask("long answer please");
    q["max_tokens"] = json!(5000);
    let o = send(&mut sim, q, &mut |u| Some(openai_reply(u)));
    assert_eq!(o.status, 200);
    let sent: Value = serde_json::from_slice(&o.upstream_calls[0].body).unwrap();
    let cap = sent["max_tokens"].as_u64().unwrap();
    assert!((16..500).contains(&cap), "clamped to {cap}");
}

#[test]
fn pinned_models_pass_through_and_unknown_models_are_refused() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let o = send(
        &mut sim,
        json!({"model": "gpt-4o-2024-08-06", "messages": [{"role": "user", "content": "Prove P != NP step by step"}]}),
        &mut |u| Some(openai_reply(u)),
    );
    assert_eq!(o.upstream_calls[0].target.model, "gpt-4o-2024-08-06");
    assert_eq!(o.header("x-tollgate-route"), Some("pinned"));
    let o = send(
        &mut sim,
        json!({"model": "gpt-3.5-turbo-instruct", "messages": [{"role": "user", "content": "x"}]}),
        &mut |_| None,
    );
    assert_eq!(o.status, 400);
    assert_eq!(error_code(&o), "model_not_allowed");
}

#[test]
fn streaming_openai_requests_get_usage_injected_and_the_usage_chunk_stripped() {
    let mut sim =
        Simulator::new(config(json!({"budgets": {"limits": [{"window": "day", "tokens": 100000}]}})), [1; 32]);
    let body =
        json!({"model": "tollgate/cheap", "stream": true, "messages": [{"role": "user", "content": "stream me"}]});
    let o = send(&mut sim, body, &mut |u| Some(openai_reply(u)));
    let sent: Value = serde_json::from_slice(&o.upstream_calls[0].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let text = String::from_utf8(o.body.clone()).unwrap();
    assert!(
        !text.contains("\"usage\":{\"prompt_tokens\""),
        "usage chunk must not reach a client that did not ask: {text}"
    );
    assert!(matches!(o.settlement, Some(Settlement::Charge { amount, .. }) if amount.tokens == 30));
}

#[test]
fn anthropic_requests_route_to_anthropic_models_only() {
    let mut sim = Simulator::new(config(json!({})), [1; 32]);
    let body = json!({"model": "tollgate/auto", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    let o = send_at(&mut sim, ApiFormat::Anthropic, body, None, NOW, &mut |u| {
        assert_eq!(u.path, "/v1/messages");
        let answer = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [{"type": "text", "text": "hello"}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 12, "output_tokens": 3}});
        Some(UpstreamReply { status: 200, body: answer.to_string().into_bytes(), stream: false })
    });
    assert_eq!(o.status, 200);
    assert_eq!(o.upstream_calls[0].target.provider.as_str(), "anthropic");
}

#[test]
fn bad_inputs_get_openai_shaped_errors_and_touch_no_budget() {
    let cfg =
        config(json!({"budgets": {"limits": [{"window": "day", "tokens": 1000}]}, "limits": {"max_body_bytes": 4096}}));
    let mut sim = Simulator::new(cfg, [1; 32]);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "invalid_json"),
        (b"\xc3\x28".to_vec(), 400, "invalid_encoding"),
        (b"".to_vec(), 400, "empty_body"),
        (br#"{"model":"tollgate/auto","messages":[]}"#.to_vec(), 400, "empty_messages"),
        (br#"{"model":"tollgate/auto","messages":"x"}"#.to_vec(), 400, "invalid_type"),
        (
            br#"{"model":"tollgate/auto","messages":[{"role":"user","content":"x"}],"max_tokens":"9"}"#.to_vec(),
            400,
            "invalid_type",
        ),
        (
            format!(r#"{{"model":"tollgate/auto","messages":[{{"role":"user","content":"{}"}}]}}"#, "a".repeat(5000))
                .into_bytes(),
            413,
            "request_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let inbound = Inbound {
            tenant_id: "t1",
            api: ApiFormat::OpenAi,
            body: &body,
            cache_control: None,
            now: NOW,
            entropy: [0; 16],
            key: None,
            user_header: None,
            tags_header: None,
        };
        let o = sim.handle(&inbound, &mut |_| panic!("bad input must not reach the provider"));
        assert_eq!((o.status, error_code(&o).as_str()), (status, code), "{}", String::from_utf8_lossy(&body));
        assert!(o.header("x-tollgate-request-id").is_some());
    }
    assert!(sim.budget.outstanding.is_empty());
    assert!(sim.cache.is_empty());
}

#[test]
fn a_huge_single_character_prompt_is_counted_and_routed_without_trouble() {
    let cfg = config(json!({"limits": {"max_body_bytes": 4_194_304}}));
    let mut sim = Simulator::new(cfg, [1; 32]);
    let o = send(&mut sim, ask(&"a".repeat(1_000_000)), &mut |u| Some(openai_reply(u)));
    assert_eq!(o.status, 200);
    assert!(o.plan.unwrap().prompt.tokens > 1000);
}

#[test]
fn with_translation_off_a_tier_with_no_model_for_the_clients_api_is_passed_over_visibly_not_silently() {
    let cfg = config(json!({"routing": {
        "translation": "off",
        "tiers": [
            {"name": "cheap", "up_to_score": 0.5, "models": ["anthropic/claude-3-5-haiku-latest"]},
            {"name": "premium", "models": ["openai/gpt-4o"]}
        ]
    }}));
    let mut sim = Simulator::new(cfg, [1; 32]);
    let o = send(&mut sim, ask("What is the capital of France?"), &mut |u| Some(openai_reply(u)));
    assert_eq!(o.status, 200);
    assert_eq!(o.header("x-tollgate-tier"), Some("premium"));
    let reasons = o.header("x-tollgate-reasons").unwrap_or_default();
    assert!(reasons.contains("tier cheap has no model for the openai API: served by tier premium"), "{reasons}");
}
