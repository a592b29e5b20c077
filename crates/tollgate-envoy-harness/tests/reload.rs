//! A plugin configuration change with Redis writes still queued or in
//! flight (envoy/README.md, "Plugin configuration"; crates/tollgate-envoy
//! root.rs). Envoy keeps the VM, adds a root context for the new
//! configuration, and calls the old root context's `on_done` once the last
//! stream of the old configuration ended; saying "done" then would get it
//! deleted with its settlements and outcome records unsent and its webdis
//! calls cancelled. The old root context must finish them first, then call
//! `proxy_done`.

// Helpers outside #[test] fns fail the test by panicking too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use tollgate_envoy_harness::{Host, HttpCall};

const TENANT: &str = "reload";

fn tenant() -> Value {
    json!({
        "version": 1,
        "tenant_id": TENANT,
        "routing": {"tiers": [{"name": "only", "models": ["openai/gpt-4o-mini"]}]},
        "budgets": {"limits": [{"name": "daily", "window": "day", "usd": 50.0}], "on_exhausted": "reject",
                    "clamp_max_tokens": false, "consistency": "per_request"},
        "cache": {"enabled": false}
    })
}

/// Budgets and outcomes in Redis through webdis; `version` makes each
/// configuration a different one (an unused upstream timeout).
fn redis_config(version: u64) -> String {
    let mut config = plugin_config(&[tenant()]);
    config["state"] = json!({"budgets": "redis", "cache": "off",
                             "redis": {"cluster": "webdis", "authority": "webdis", "timeout_ms": 250}});
    config["upstream_timeout_ms"] = json!(60_000 + version);
    config.to_string()
}

/// Redis behind webdis, for the commands the filter's budget and outcome
/// ops send: HMGET and the two compare-and-set scripts.
#[derive(Default)]
struct FakeRedis(HashMap<String, HashMap<String, String>>);

fn decode(arg: &str) -> String {
    let bytes = arg.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&arg[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

impl FakeRedis {
    fn answer(&mut self, body: &[u8]) -> Value {
        let text = String::from_utf8(body.to_vec()).unwrap();
        let parts: Vec<String> = text.split('/').map(decode).collect();
        match parts[0].as_str() {
            "HMGET" => {
                let hash = self.0.get(&parts[1]);
                let values: Vec<Value> =
                    parts[2..].iter().map(|f| hash.and_then(|h| h.get(f)).map_or(Value::Null, |v| json!(v))).collect();
                json!({ "HMGET": values })
            }
            "EVAL" => {
                let (script, key, version) = (&parts[1], &parts[3], &parts[4]);
                let hash = self.0.entry(key.clone()).or_default();
                let current = hash.get("v").cloned().unwrap_or_else(|| "0".into());
                let whole_document = script.contains("'data'");
                if &current != version {
                    let data = hash.get("data").cloned().unwrap_or_default();
                    return if whole_document {
                        json!({"EVAL": [0, current, data]})
                    } else {
                        json!({"EVAL": [0, current]})
                    };
                }
                let next = (current.parse::<u64>().unwrap() + 1).to_string();
                hash.insert("v".into(), next.clone());
                if whole_document {
                    hash.insert("data".into(), parts[5].clone());
                } else {
                    for pair in parts[5..].chunks(2) {
                        hash.insert(pair[0].clone(), pair[1].clone());
                    }
                }
                json!({"EVAL": [1, next]})
            }
            other => panic!("unexpected webdis command {other}: {text}"),
        }
    }

    fn field(&self, key: &str, field: &str) -> Value {
        let raw = self.0.get(key).and_then(|h| h.get(field)).cloned().unwrap_or_default();
        if raw.is_empty() { json!({}) } else { serde_json::from_str(&raw).unwrap() }
    }

    fn budget(&self) -> Value {
        self.field(&format!("tollgate:budget:{TENANT}"), "data")
    }

    fn holds(&self) -> usize {
        self.budget()["outstanding"].as_array().map_or(0, Vec::len)
    }

    fn spent_tokens(&self) -> u64 {
        let b = self.budget();
        b["windows"].as_array().map_or(0, |w| w.iter().map(|w| w["spent"]["tokens"].as_u64().unwrap()).max().unwrap())
    }

    fn recorded(&self) -> u64 {
        let totals = self.field(&format!("tollgate:outcomes:{TENANT}"), "totals");
        totals["tiers"].as_array().map_or(0, |t| t.iter().map(|t| t["requests"].as_u64().unwrap()).sum())
    }
}

fn webdis_calls(host: &Host) -> Vec<HttpCall> {
    host.http_calls().into_iter().filter(|c| c.upstream == "webdis").collect()
}

/// Answers every webdis call until none is left.
fn pump(host: &Host, redis: &mut FakeRedis) {
    for _ in 0..100 {
        let calls = webdis_calls(host);
        if calls.is_empty() {
            return;
        }
        for call in calls {
            let answer = redis.answer(&call.body).to_string();
            host.respond_http_call(call.token, 200, &[("content-type", "application/json")], answer.as_bytes());
        }
    }
    panic!("webdis calls never stopped: {:?}", webdis_calls(host));
}

/// A request of the first configuration answered (reserve in Redis, the
/// provider's JSON answer, the end of the stream); its settlement and its
/// outcome record are then queued on the first root context.
fn answered_request(host: &Host, redis: &mut FakeRedis) {
    let mut s = host.stream();
    send_chat(&mut s, &key_for(TENANT), &simple_chat("Say hi"));
    assert_eq!(webdis_calls(host).len(), 1, "the reserve goes to Redis first: {:?}", s.local_reply());
    pump(host, redis);
    assert!(s.upstream_request().is_some(), "{:?}\n{}", s.local_reply(), host.log_text());
    assert_eq!(redis.holds(), 1, "{}", redis.budget());
    answer_json(&mut s, &openai_completion("gpt-4o-mini", "Hi", 30, 20));
    s.finish();
}

fn replaced_root_context_finishes_its_redis_writes(in_flight: bool) {
    let env = provider_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut host = Host::configured(&redis_config(1), &env);
    let mut redis = FakeRedis::default();
    let [first] = host.root_contexts(0)[..] else { panic!("{:?}", host.root_contexts(0)) };

    answered_request(&host, &mut redis);
    assert!(host.reconfigure(&redis_config(2)), "{}", host.log_text());
    let second = *host.root_contexts(0).last().unwrap();
    assert_ne!(first, second);
    if in_flight {
        // The first root context already sent them: its webdis calls are out.
        host.tick();
        assert!(webdis_calls(&host).iter().all(|c| c.context_id == first), "{:?}", webdis_calls(&host));
        // The request's close is one batch: its settlement, then its
        // outcome record, one round at a time.
        assert_eq!(webdis_calls(&host).len(), 1, "the settlement's round is out");
    } else {
        assert!(webdis_calls(&host).is_empty());
    }

    // The last stream of the first configuration ended: Envoy is done with
    // its root context. It is not done yet: its writes have not landed.
    assert!(!host.retire_root(0, first), "the root context said done with Redis writes left:\n{}", host.log_text());
    assert_eq!(host.root_contexts(0), [first, second]);
    for _ in 0..10 {
        host.tick();
        pump(&host, &mut redis);
        if host.root_contexts(0) == [second] {
            break;
        }
    }
    assert_eq!(host.root_contexts(0), [second], "never called proxy_done:\n{}", host.log_text());
    assert_eq!(redis.holds(), 0, "the hold was left reserved: {}", redis.budget());
    assert_eq!(redis.spent_tokens(), 50, "{}", redis.budget());
    assert_eq!(redis.recorded(), 1, "the answered request was not recorded");
    assert_eq!(host.logs_containing("gave up on a Redis write").len(), 0, "{}", host.log_text());

    // The new configuration's root context serves on.
    answered_request(&host, &mut redis);
    host.tick();
    pump(&host, &mut redis);
    assert_eq!((redis.holds(), redis.spent_tokens(), redis.recorded()), (0, 100, 2), "{}", redis.budget());
}

#[test]
fn a_replaced_root_context_sends_its_queued_redis_writes_before_it_is_done() {
    replaced_root_context_finishes_its_redis_writes(false);
}

#[test]
fn a_replaced_root_context_waits_for_its_webdis_calls_in_flight_before_it_is_done() {
    replaced_root_context_finishes_its_redis_writes(true);
}

#[test]
fn a_replaced_root_context_with_nothing_left_is_done_at_once() {
    let env = provider_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut host = Host::configured(&redis_config(1), &env);
    let mut redis = FakeRedis::default();
    answered_request(&host, &mut redis);
    host.tick();
    pump(&host, &mut redis);
    let [first] = host.root_contexts(0)[..] else { panic!("{:?}", host.root_contexts(0)) };
    assert!(host.reconfigure(&redis_config(2)), "{}", host.log_text());
    assert!(host.retire_root(0, first), "{}", host.log_text());
    assert_eq!(host.root_contexts(0).len(), 1);
    assert_eq!((redis.holds(), redis.spent_tokens(), redis.recorded()), (0, 50, 1), "{}", redis.budget());
}

/// A leased tenant on Redis with webdis far away: each webdis call is
/// answered only once the next request has started. After the first
/// request, requests reserve from the VM's lease: none waits for webdis.
/// A configured host (one worker) for this tenant config, budgets in
/// Redis through webdis with a 5 s timeout.
fn leased_redis_host(tenant: Value) -> Host {
    let mut config = plugin_config(&[tenant]);
    config["state"] = json!({"budgets": "redis", "cache": "off",
                             "redis": {"cluster": "webdis", "authority": "webdis", "timeout_ms": 5000}});
    let env = provider_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Host::configured(&config.to_string(), &env)
}

#[test]
fn sequential_requests_on_a_leased_redis_tenant_do_not_wait_for_a_slow_webdis() {
    let leased = json!({
        "version": 1,
        "tenant_id": TENANT,
        "routing": {"tiers": [{"name": "only", "models": ["openai/gpt-4o-mini"]}]},
        "budgets": {"limits": [{"name": "daily", "window": "day", "usd": 50.0}], "on_exhausted": "reject"},
        "cache": {"enabled": false}
    });
    let host = leased_redis_host(leased);
    let mut redis = FakeRedis::default();
    let mut waited = Vec::new();
    for n in 0..40 {
        // Whatever webdis was asked before this request is answered now.
        let earlier: Vec<HttpCall> = webdis_calls(&host);
        let mut s = host.stream();
        send_chat(&mut s, &key_for(TENANT), &simple_chat(&format!("Say hi {n}")));
        if s.upstream_request().is_none() {
            waited.push(n);
            pump(&host, &mut redis);
        } else {
            for call in earlier {
                let answer = redis.answer(&call.body).to_string();
                host.respond_http_call(call.token, 200, &[("content-type", "application/json")], answer.as_bytes());
            }
        }
        assert!(s.upstream_request().is_some(), "request {n}: {:?}\n{}", s.local_reply(), host.log_text());
        answer_json(&mut s, &openai_completion("gpt-4o-mini", "Hi", 30, 20));
        s.finish();
        host.advance(std::time::Duration::from_millis(30));
        host.tick();
    }
    assert!(waited.len() <= 2, "requests that waited for webdis: {waited:?}");
}

/// Micro-dollars the fake Redis's budget has spent or holds (requests'
/// holds and leases): what must never pass the limit.
fn committed_micros(redis: &FakeRedis) -> u64 {
    let budget = redis.budget();
    let amounts = |list: &Value, field: &str| -> u64 {
        list.as_array().map_or(0, |l| l.iter().map(|e| e[field]["micros"].as_u64().unwrap_or(0)).sum())
    };
    amounts(&budget["windows"], "spent") + amounts(&budget["outstanding"], "amount")
}

/// Holds in the fake Redis's budget that belong to requests (not leases).
fn request_holds(redis: &FakeRedis) -> Vec<Value> {
    redis.budget()["outstanding"]
        .as_array()
        .map(|o| o.iter().filter(|h| !h["id"].as_str().unwrap_or("").starts_with("lease:")).cloned().collect())
        .unwrap_or_default()
}

#[test]
fn leased_requests_racing_through_redis_from_two_envoys_leave_no_request_hold_behind() {
    // A small daily limit (the tail is reached: requests reserve one by one
    // at Redis, and many are refused), two worker VMs, Redis running
    // commands in one order and webdis answering in another, clients
    // leaving while their reserve is out (its compare-and-set may still
    // land), ticks in between. Once everything is answered and the VMs
    // have flushed, no request may still hold budget in Redis.
    for seed in 0..48u64 {
        // Both ways a request reserves: from its VM's lease, then one by
        // one at Redis near the end; or always at Redis.
        let consistency = if seed % 2 == 0 { "leased" } else { "per_request" };
        let leased = json!({
            "version": 1,
            "tenant_id": TENANT,
            "routing": {"tiers": [{"name": "only", "models": ["openai/gpt-4o"]}]},
            "budgets": {"limits": [{"name": "daily", "window": "day", "usd": 0.004}], "on_exhausted": "reject",
                        "clamp_max_tokens": false, "consistency": consistency},
            "cache": {"enabled": false}
        });
        // Two Envoys of two workers each, on one Redis.
        let hosts: Vec<Host> = (0..2u64)
            .map(|n| {
                let mut host = leased_redis_host(leased.clone());
                host.add_worker();
                // Each Envoy draws its own request ids.
                host.seed_random(seed * 2 + n + 1);
                host
            })
            .collect();
        let mut redis = FakeRedis::default();
        let mut rng = Rng(seed);
        let mut streams: Vec<(usize, tollgate_envoy_harness::Stream)> = Vec::new();
        // Calls Redis already ran whose answers webdis has not delivered
        // yet: (Envoy, token, answer). Redis runs commands in one order and
        // a VM may read the answers in another.
        let mut ran: Vec<(usize, u32, String)> = Vec::new();
        let not_run = |ran: &[(usize, u32, String)], h: usize, calls: Vec<HttpCall>| -> Vec<HttpCall> {
            calls.into_iter().filter(|c| !ran.iter().any(|(rh, t, _)| *rh == h && *t == c.token)).collect()
        };
        let mut started = 0;
        let mut answered = 0u64;
        for _ in 0..800 {
            let h = rng.below(2);
            let host = &hosts[h];
            match rng.below(9) {
                0 | 1 if started < 100 => {
                    let mut s = host.stream_on(rng.below(2));
                    let body = json!({"model": "tollgate/auto", "max_tokens": 60,
                                      "messages": [{"role": "user", "content": format!("Fact {started} please")}]});
                    send_chat(&mut s, &key_for(TENANT), &body);
                    started += 1;
                    streams.push((h, s));
                }
                2 => {
                    let calls = not_run(&ran, h, webdis_calls(host));
                    if !calls.is_empty() {
                        let call = rng.pick(&calls);
                        let answer = redis.answer(&call.body).to_string();
                        host.respond_http_call(
                            call.token,
                            200,
                            &[("content-type", "application/json")],
                            answer.as_bytes(),
                        );
                    }
                }
                3 => {
                    // Redis runs a command now; its answer arrives later,
                    // maybe after answers to commands Redis ran after it.
                    let calls = not_run(&ran, h, webdis_calls(host));
                    if !ran.is_empty() && (calls.is_empty() || rng.below(2) == 0) {
                        let (rh, token, answer) = ran.swap_remove(rng.below(ran.len()));
                        if webdis_calls(&hosts[rh]).iter().any(|c| c.token == token) {
                            let headers = [("content-type", "application/json")];
                            hosts[rh].respond_http_call(token, 200, &headers, answer.as_bytes());
                        }
                    } else if !calls.is_empty() {
                        let call = rng.pick(&calls);
                        ran.push((h, call.token, redis.answer(&call.body).to_string()));
                    }
                }
                4 => {
                    // webdis times out: the command may or may not have run.
                    let calls = webdis_calls(host);
                    if !calls.is_empty() && rng.below(4) == 0 {
                        let call = rng.pick(&calls).clone();
                        let already = ran.iter().position(|(rh, t, _)| *rh == h && *t == call.token);
                        match already {
                            Some(i) => drop(ran.swap_remove(i)),
                            None if rng.below(2) == 0 => drop(redis.answer(&call.body)),
                            None => {}
                        }
                        host.fail_http_call(call.token);
                    }
                }
                5 if !streams.is_empty() => {
                    let i = rng.below(streams.len());
                    let (_, mut s) = streams.swap_remove(i);
                    if s.upstream_request().is_some() && s.local_reply().is_none() {
                        answer_json(&mut s, &openai_completion("gpt-4o", "A fact.", 12, 60));
                        answered += u64::from(s.local_reply().is_none());
                    }
                    s.finish();
                }
                6 if !streams.is_empty() => {
                    // The client leaves. Envoy cancels the stream's callouts,
                    // but a compare-and-set already sent may still land.
                    let i = rng.below(streams.len());
                    let (h, mut s) = streams.swap_remove(i);
                    let (worker, id) = s.context();
                    let out: Vec<HttpCall> = webdis_calls(&hosts[h])
                        .into_iter()
                        .filter(|c| c.worker == worker && c.context_id == id)
                        .collect();
                    s.finish();
                    for call in not_run(&ran, h, out) {
                        if rng.below(2) == 0 {
                            redis.answer(&call.body);
                        }
                    }
                }
                _ => {
                    for host in &hosts {
                        host.advance(std::time::Duration::from_millis(150));
                        host.tick();
                    }
                }
            }
            let committed = committed_micros(&redis);
            assert!(
                committed <= 4_000,
                "seed {seed}: {committed} micro-dollars committed of 4,000\n{}",
                redis.budget()
            );
        }
        // Everything left is answered, then the VMs flush and go idle.
        for (rh, token, answer) in std::mem::take(&mut ran) {
            if webdis_calls(&hosts[rh]).iter().any(|c| c.token == token) {
                hosts[rh].respond_http_call(token, 200, &[("content-type", "application/json")], answer.as_bytes());
            }
        }
        for _ in 0..60 {
            for host in &hosts {
                pump(host, &mut redis);
            }
            for (_, mut s) in std::mem::take(&mut streams) {
                if s.upstream_request().is_some() && s.local_reply().is_none() {
                    answer_json(&mut s, &openai_completion("gpt-4o", "A fact.", 12, 60));
                    answered += u64::from(s.local_reply().is_none());
                }
                s.finish();
            }
            for host in &hosts {
                host.advance(std::time::Duration::from_millis(500));
                host.tick();
            }
        }
        for host in &hosts {
            pump(host, &mut redis);
        }
        let holds = request_holds(&redis);
        assert!(holds.is_empty(), "seed {seed}: request holds left in Redis: {holds:?}\n{}", redis.budget());
        // Every answer relayed was charged (12 + 60 tokens of gpt-4o: 630
        // micro-dollars), whatever else the ledger holds (a lease that
        // expired unreported is charged in full): no hold of a served
        // request was released behind its back, which would drop its settle.
        let spent = committed_micros(&redis);
        assert!(spent >= answered * 630, "seed {seed}: {answered} answers relayed, {spent} micro-dollars charged");
    }
}
