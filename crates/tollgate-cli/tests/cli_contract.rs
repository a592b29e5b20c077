//! The `tollgate` command's stable contracts, run against the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tollgate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.unwrap_or("").to_owned();
    let writer = std::thread::spawn(move || input.write_all(data.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn shared_dev_jsonl() -> Option<PathBuf> {
    let dir = std::env::var_os("TOLLGATE_SHARED_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("../shared"));
    let path = dir.join("data/routing/dev.jsonl");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipped: shared data not found at {} (CI has it)", path.display());
        None
    }
}

#[test]
fn classify_jsonl_writes_one_line_per_input_with_the_contract_fields() {
    let input = [
        json!({"id": "a", "prompt": "What is the capital of France?"}),
        json!({"id": 7, "request": {"model": "tollgate/auto", "messages": [{"role": "user", "content": "Prove that sqrt(2) is irrational, step by step."}]}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    let out = tollgate(&["classify", "--jsonl"], Some(&input));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = lines(&out);
    assert_eq!(got.len(), 2);
    for (line, id) in got.iter().zip([json!("a"), json!(7)]) {
        let keys: Vec<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["id", "score", "tier", "tokens", "reasons"]);
        assert_eq!(line["id"], id);
        let score = line["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score));
        assert!(line["tokens"].as_u64().unwrap() > 0);
    }
    assert!(got[0]["score"].as_f64() < got[1]["score"].as_f64(), "a proof scores above a capital-city question");
}

#[test]
fn classify_jsonl_reports_a_bad_line_and_carries_on() {
    let out = tollgate(&["classify", "--jsonl"], Some("{\"id\":1}\nnot json\n{\"id\":2,\"prompt\":\"hi\"}\n"));
    assert_eq!(out.status.code(), Some(1));
    let got = lines(&out);
    assert_eq!(got.len(), 3);
    assert!(got[0]["error"].is_string() && got[1]["error"].is_string());
    assert_eq!(got[2]["id"], 2);
}

#[test]
fn count_jsonl_matches_tiktoken_for_both_encodings_and_treats_special_tokens_as_text() {
    let texts = [
        "hello world",
        "<|endoftext|> is plain text here",
        "naïve café 😀 世界",
        "   \n\n\t 12345678901234 'll 'S",
        "",
    ];
    let input: String = texts.iter().enumerate().map(|(i, t)| json!({"id": i, "text": t}).to_string() + "\n").collect();
    for (name, bpe) in
        [("o200k_base", tiktoken_rs::o200k_base().unwrap()), ("cl100k_base", tiktoken_rs::cl100k_base().unwrap())]
    {
        let out = tollgate(&["count", "--encoding", name, "--jsonl"], Some(&input));
        assert!(out.status.success());
        let got = lines(&out);
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(got[i], json!({"id": i, "tokens": bpe.encode_ordinary(t).len()}), "{name}: {t:?}");
        }
    }
}

#[test]
fn route_prints_the_full_decision_and_the_forwarded_body() {
    let out = tollgate(
        &[
            "route",
            "--config",
            "examples/tenant.json",
            "--request",
            "examples/request-hard.json",
            "--now",
            "1795000000",
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["outcome"], "forward");
    assert_eq!(v["decision"]["tier"], "premium");
    assert_eq!(v["result"]["body"]["model"], v["result"]["model"]);
    assert_eq!(v["result"]["body"]["max_tokens"], 1500);
    assert!(v["headers"]["x-tollgate-request-id"].as_str().unwrap().starts_with("req_"));
    assert!(v["steps"].as_array().unwrap().iter().any(|s| s["step"] == "reserve"));
}

#[test]
fn config_validate_accepts_the_examples_and_names_paths_of_errors() {
    for f in ["examples/tenant.json", "examples/tenant-globex.json"] {
        let out = tollgate(&["config", "validate", f], None);
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = std::env::temp_dir().join(format!("tollgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"version":1,"tenant_id":"x","routing":{"tiers":[{"name":"a","models":["openai/nope"]}]},"cache":{"ttl_seconds":1}}"#).unwrap();
    let out = tollgate(&["config", "validate", bad.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("routing.tiers[0].models[0]: no price known"), "{err}");
    assert!(err.contains("cache.ttl_seconds"), "{err}");
}

#[test]
fn the_committed_json_schema_is_the_one_the_code_generates() {
    let out = tollgate(&["config", "schema"], None);
    assert!(out.status.success());
    let generated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("schema/tenant-config.schema.json")).unwrap())
            .unwrap();
    assert!(
        generated == committed,
        "schema/tenant-config.schema.json is stale: run `tollgate config schema > schema/tenant-config.schema.json`"
    );
    assert_eq!(generated["additionalProperties"], false, "unknown fields are refused");
}

#[test]
fn key_hash_prints_the_sha256_that_kv_records_are_stored_under() {
    let out = tollgate(&["key", "hash", "abc"], None);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(String::from_utf8(out.stderr).unwrap().contains("apikey:ba7816bf"));
}

#[test]
fn replay_of_the_example_workload_reports_savings_against_always_premium() {
    let out = tollgate(&["replay", "--workload", "examples/workload.jsonl", "--quiet"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let requests: usize = text.split("requests: ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(requests >= 50, "{text}");
    let hits: usize = text.split("cache hits: ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(hits > 0, "{text}");
    let pct: f64 = text.split('(').next_back().unwrap().trim_end().trim_end_matches("%)").parse().unwrap();
    assert!(pct > 20.0 && pct < 100.0, "{text}");
}

#[test]
fn classify_jsonl_handles_every_shared_routing_prompt() {
    let Some(path) = shared_dev_jsonl() else { return };
    let input = std::fs::read_to_string(path).unwrap();
    let n = input.lines().filter(|l| !l.trim().is_empty()).count();
    let out = tollgate(&["classify", "--jsonl"], Some(&input));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = lines(&out);
    assert_eq!(got.len(), n);
    assert!(got.iter().all(|l| (0.0..=1.0).contains(&l["score"].as_f64().unwrap())));
}

#[test]
fn price_prints_the_cost_of_tokens_at_the_tenants_prices() {
    let out = tollgate(
        &["price", "--config", "examples/tenant.json", "--model", "openai/gpt-4o", "--input", "120", "--output", "300"],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // gpt-4o: $2.50 in, $10 out per million tokens.
    assert_eq!(
        v,
        json!({"model": "openai/gpt-4o", "input_tokens": 120, "output_tokens": 300, "micros": 3300, "usd": "0.003300"})
    );

    // A tier's first model for the API: what `replay` calls always-premium.
    let out = tollgate(
        &[
            "price",
            "--config",
            "examples/tenant.json",
            "--tier",
            "premium",
            "--api",
            "anthropic",
            "--input",
            "1",
            "--output",
            "0",
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"], "anthropic/claude-sonnet-4-5");
    // $3 per million: three millionths of a dollar, exactly.
    assert_eq!(v["micros"], 3);

    let out = tollgate(&["price", "--config", "examples/tenant.json", "--tier", "nope", "--input", "1"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tier `nope`"));
}

#[test]
fn price_jsonl_prices_each_line_with_its_tenants_config_and_rounds_up() {
    let input = [
        // globex overrides gpt-4.1-nano's price; acme has the built-in one.
        json!({"id": "g", "tenant": "globex", "model": "gpt-4.1-nano", "input_tokens": 1_000_000, "output_tokens": 1_000_000}),
        json!({"id": "a", "tenant": "acme", "model": "gpt-4o-mini", "input_tokens": 1, "output_tokens": 0}),
        json!({"id": "p", "tenant": "globex", "tier": "premium", "api": "openai", "input_tokens": 100, "output_tokens": 10}),
        json!({"id": "x", "tenant": "acme", "model": "no-such-model", "input_tokens": 1, "output_tokens": 1}),
        json!({"id": "y", "tenant": "initech", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    let out = tollgate(
        &["price", "--jsonl", "--config", "examples/tenant.json", "--config", "examples/tenant-globex.json"],
        Some(&input),
    );
    // A line that cannot be priced gets an `error` line and a failing exit; the rest are priced.
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let got = lines(&out);
    assert_eq!(got.len(), 5);
    assert_eq!(
        got[0],
        json!({"id": "g", "tenant": "globex", "model": "openai/gpt-4.1-nano", "input_tokens": 1_000_000,
               "output_tokens": 1_000_000, "micros": 500_000, "usd": "0.500000"})
    );
    // $0.15 per million tokens: 0.15 of a micro-dollar, charged as 1.
    assert_eq!(got[1]["micros"], 1);
    // gpt-4.1, globex's premium model for OpenAI: 100 × $2 + 10 × $8 per million.
    assert_eq!((got[2]["model"].as_str(), got[2]["micros"].as_u64()), (Some("openai/gpt-4.1"), Some(280)));
    assert!(got[3]["error"].as_str().unwrap().contains("no price for `no-such-model`"), "{}", got[3]);
    assert!(got[4]["error"].as_str().unwrap().contains("no --config for tenant `initech`"), "{}", got[4]);
}

#[test]
fn config_validate_envoy_checks_a_plugin_configuration_and_every_tenant_in_it() {
    let tenant: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("examples/tenant.json")).unwrap()).unwrap();
    let key_hash = tollgate_core::auth::hash_api_key("tg-live-acme");
    let good = serde_json::json!({
        "tenants": {"acme": tenant},
        "api_keys": {key_hash: {"tenant_id": "acme"}},
        "state": {"budgets": "redis", "cache": "local"}
    });
    let dir = std::env::temp_dir().join(format!("tollgate-cli-envoy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plugin.json");
    std::fs::write(&file, good.to_string()).unwrap();
    let out = tollgate(&["config", "validate", "--envoy", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 tenants, 1 API keys, budgets Redis"));

    let mut bad = good.clone();
    bad["tenants"]["acme"]["cache"]["ttl_seconds"] = serde_json::json!(1);
    bad["api_keys"] = serde_json::json!({"tg-live-acme": {"tenant_id": "acme"}});
    std::fs::write(&file, bad.to_string()).unwrap();
    let out = tollgate(&["config", "validate", "--envoy", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("tenants.acme.cache.ttl_seconds"), "{err}");
    assert!(err.contains("api_keys.tg-live-acme: must be the lower-case sha256 hex"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tollgate-cli-{}-{name}", std::process::id()))
}

/// Hard prompts only the strong model solves; easy ones both solve.
fn labels_where_hard_prompts_need_the_strong_model() -> String {
    let hard = [
        "Prove that there are infinitely many primes, then write a Rust function that returns the nth prime and analyse its complexity step by step.",
        "Derive the closed form of the integral of x^2 e^x dx, justify each step, and prove the result by differentiation.",
        "Write a lock-free multi-producer queue in C++ with memory orderings explained, and prove it is linearizable.",
        "Explain, with a formal proof, why the halting problem is undecidable, and relate it to Rice's theorem.",
    ];
    let easy =
        ["What is the capital of France?", "Say hello.", "What colour is the sky?", "Translate 'cat' to French."];
    let mut out = String::new();
    for (i, p) in hard.iter().enumerate() {
        out +=
            &format!("{}\n", json!({"id": format!("h{i}"), "source": "hard", "prompt": p, "weak": 0.0, "strong": 1.0}));
    }
    for (i, p) in easy.iter().enumerate() {
        out +=
            &format!("{}\n", json!({"id": format!("e{i}"), "source": "easy", "prompt": p, "weak": 1.0, "strong": 1.0}));
    }
    out
}

#[test]
fn eval_reports_apgr_for_the_classifier_and_the_baselines_and_writes_a_chart() {
    let (labels, chart) = (temp_path("labels.jsonl"), temp_path("chart.svg"));
    std::fs::write(&labels, labels_where_hard_prompts_need_the_strong_model()).unwrap();
    let out = tollgate(
        &["eval", labels.to_str().unwrap(), "--baselines", "--json", "--chart", chart.to_str().unwrap()],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let overall = &v["overall"];
    assert_eq!(overall["tollgate classifier"]["prompts"], 8);
    assert_eq!(overall["tollgate classifier"]["weak_quality"], 0.5);
    assert_eq!(overall["tollgate classifier"]["strong_quality"], 1.0);
    let apgr = |router: &str| overall[router]["apgr"].as_f64().unwrap();
    assert!((apgr("random") - 0.5).abs() < 1e-9, "{v}");
    // The heuristics score proofs and code above greetings: every hard
    // prompt first, so the gap is recovered at a 50% strong-call share.
    assert!(apgr("tollgate classifier") > 0.7, "{v}");
    assert!(apgr("oracle") >= apgr("tollgate classifier"), "{v}");
    assert!(v["by_source"]["hard"].is_object() && v["by_source"]["easy"].is_object(), "{v}");
    assert!(v["cost_ratio"].as_f64().unwrap() > 0.0 && v["cost_ratio"].as_f64().unwrap() < 1.0);
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 4, "one line per router");
    let _ = (std::fs::remove_file(labels), std::fs::remove_file(chart));
}

#[test]
fn eval_refuses_labels_outside_zero_to_one_with_the_line_number() {
    let labels = temp_path("bad-labels.jsonl");
    std::fs::write(&labels, "{\"id\":1,\"source\":\"s\",\"prompt\":\"hi\",\"weak\":0,\"strong\":1}\n{\"id\":2,\"source\":\"s\",\"prompt\":\"hi\",\"weak\":2,\"strong\":1}\n").unwrap();
    let out = tollgate(&["eval", labels.to_str().unwrap()], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2:") && err.contains("[0, 1]"), "{err}");
    let _ = std::fs::remove_file(labels);
}

#[test]
fn eval_on_the_shared_routing_prompts_beats_a_random_router() {
    let Some(path) = shared_dev_jsonl() else { return };
    let out = tollgate(&["eval", path.to_str().unwrap(), "--baselines", "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = &v["overall"]["tollgate classifier"];
    assert_eq!(ours["prompts"], 7689);
    assert!(ours["apgr"].as_f64().unwrap() > 0.55, "{ours}");
    assert_eq!(v["by_source"].as_object().unwrap().len(), 29);
}

#[test]
fn train_writes_a_model_that_eval_scores_and_cross_validation_holds_out() {
    let (labels, model) = (temp_path("train-labels.jsonl"), temp_path("model.json"));
    std::fs::write(&labels, labels_where_hard_prompts_need_the_strong_model()).unwrap();
    let out = tollgate(&["train", labels.to_str().unwrap(), "-o", model.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    assert_eq!(m["kind"], "tollgate-linear-router");
    assert_eq!(m["ngram_weights"].as_array().unwrap().len(), 1 << 12, "the default: 12 hash bits");

    let out = tollgate(&["eval", labels.to_str().unwrap(), "--model", model.to_str().unwrap(), "--cv", "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Scored on the prompts it learned from, the model ranks every hard
    // prompt first.
    let given = v["overall"]["learned model (as given)"]["apgr"].as_f64().unwrap();
    assert!(given > 0.7, "{v}");
    for router in ["learned, leave-one-source-out", "learned, 5-fold"] {
        assert_eq!(v["overall"][router]["prompts"], 8, "{v}");
    }

    // A model file that is not one is refused with its path.
    std::fs::write(
        &model,
        "{\"kind\":\"something else\",\"hash_bits\":15,\"bias\":0,\"feature_weights\":[],\"ngram_weights\":[]}",
    )
    .unwrap();
    let out = tollgate(&["eval", labels.to_str().unwrap(), "--model", model.to_str().unwrap()], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a tollgate model"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = (std::fs::remove_file(labels), std::fs::remove_file(model));
}

#[test]
fn eval_prints_each_routers_median_apgr_within_a_source_next_to_the_overall_one() {
    // Two sources, each mixing prompts only the strong model solves with
    // prompts both solve, so every source has a gap to recover.
    let mut text = String::new();
    for (i, line) in labels_where_hard_prompts_need_the_strong_model().lines().enumerate() {
        let mut v: Value = serde_json::from_str(line).unwrap();
        v["source"] = json!(format!("s{}", i % 2));
        text += &format!("{v}\n");
    }
    let labels = temp_path("median-labels.jsonl");
    std::fs::write(&labels, text).unwrap();
    let out = tollgate(&["eval", labels.to_str().unwrap(), "--baselines", "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for router in ["tollgate classifier", "prompt length", "random", "oracle"] {
        let mut apgrs: Vec<f64> =
            ["s0", "s1"].iter().map(|s| v["by_source"][s][router]["apgr"].as_f64().unwrap()).collect();
        apgrs.sort_by(f64::total_cmp);
        let median = v["overall"][router]["median_source_apgr"].as_f64().unwrap();
        assert!((median - (apgrs[0] + apgrs[1]) / 2.0).abs() < 1e-9, "{router}: {v}");
    }
    assert!((v["overall"]["random"]["median_source_apgr"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    // Within each source the oracle sends both unsolved prompts first: the gap is recovered at 50%.
    assert!((v["overall"]["oracle"]["median_source_apgr"].as_f64().unwrap() - 0.75).abs() < 1e-9, "{v}");

    let out = tollgate(&["eval", labels.to_str().unwrap(), "--baselines"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| APGR |") && table.contains("| median APGR within a source |"), "{table}");
    let random = table.lines().find(|l| l.starts_with("| random |")).unwrap();
    assert!(random.trim_end().ends_with("| 0.500 | 0.500 |") || random.contains("| 0.500 |"), "{random}");
    assert_eq!(random.split('|').filter(|c| !c.trim().is_empty()).count(), 7, "{random}");
    let _ = std::fs::remove_file(labels);
}

/// The published list prices (micro-dollars per million tokens) of the
/// models the example log says it used, to price it without the core.
fn list_price(model: &str) -> (u64, u64) {
    match model {
        "openai/gpt-4o" => (2_500_000, 10_000_000),
        "anthropic/claude-sonnet-4-5" => (3_000_000, 15_000_000),
        other => panic!("no list price for {other}"),
    }
}

#[test]
fn simulate_prices_the_example_log_before_and_after_and_charts_all_three_series() {
    let chart = temp_path("simulate.svg");
    let out = tollgate(
        &[
            "simulate",
            "--log",
            "examples/requests.jsonl",
            "--config",
            "examples/tenant.json",
            "--json",
            "--chart",
            chart.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();

    // As logged, priced here from the file at list prices (rounded up per request).
    let log = std::fs::read_to_string(root().join("examples/requests.jsonl")).unwrap();
    let lines: Vec<Value> =
        log.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut as_logged = 0u64;
    for line in &lines {
        let logged = &line["logged"];
        as_logged += match logged["cost_usd"].as_f64() {
            Some(usd) => (usd * 1e6).round() as u64,
            None => {
                let (input, output) = list_price(logged["model"].as_str().unwrap());
                let usage = &logged["usage"];
                let total =
                    usage["input_tokens"].as_u64().unwrap() * input + usage["output_tokens"].as_u64().unwrap() * output;
                total.div_ceil(1_000_000)
            }
        };
    }
    let cost = &v["cost_micros"];
    assert_eq!(cost["as_logged"].as_u64(), Some(as_logged), "{v}");
    let (premium, routed) = (cost["always_premium"].as_u64().unwrap(), cost["routed"].as_u64().unwrap());
    // The log already went to the premium models, with the same answer lengths:
    // always-premium differs from it only by how the prompt tokens were counted.
    assert!(premium.abs_diff(as_logged) * 20 < as_logged, "premium {premium} vs as logged {as_logged}");
    assert!(routed * 10 < premium * 9, "routing and caching save over 10%: {routed} vs {premium}");
    assert!(v["saved_pct"]["vs_always_premium"].as_f64().unwrap() > 10.0, "{v}");

    let requests = v["requests"].as_u64().unwrap();
    assert_eq!(requests, lines.len() as u64);
    let tiers = v["tiers"].as_object().unwrap();
    assert_eq!(tiers.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), requests, "{v}");
    assert!(tiers["cheap"].as_u64().unwrap() > 0 && tiers["premium"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(tiers.get("cache").and_then(Value::as_u64).unwrap_or(0), v["cache_hits"].as_u64().unwrap());
    assert!(v["cache_hits"].as_u64().unwrap() > 0, "the log repeats questions: {v}");
    let rate = v["cache_hit_rate"].as_f64().unwrap();
    assert!((rate - v["cache_hits"].as_f64().unwrap() / requests as f64).abs() < 1e-12);

    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
    for (series, usd) in
        [("as logged", "as_logged"), ("always premium", "always_premium"), ("routed and cached", "routed")]
    {
        assert!(svg.contains(&format!("data-series=\"{series}\"")), "{series}");
        // The legend shows each line's end: the total printed in the JSON.
        assert!(svg.contains(&format!(">{series} ${}<", v["cost_usd"][usd].as_str().unwrap())), "{series}: {svg}");
    }
    // Each polyline has a point per request plus the origin.
    let points = svg.split("points=\"").nth(1).unwrap().split('"').next().unwrap().split(' ').count();
    assert_eq!(points as u64, requests + 1);
    let _ = std::fs::remove_file(chart);

    // The text output says the same.
    let out = tollgate(&["simulate", "--log", "examples/requests.jsonl", "--config", "examples/tenant.json"], None);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "cost before, always premium:",
        "cost before, as logged:",
        "cost after, routed and cached:",
        "saving:",
        "tier mix:",
        "cache hits:",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}

#[test]
fn simulate_replays_the_shared_labelled_prompts_as_traffic() {
    let Some(path) = shared_dev_jsonl() else { return };
    let out =
        tollgate(&["simulate", "--log", path.to_str().unwrap(), "--config", "examples/tenant.json", "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tiers: u64 = v["tiers"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(tiers, 7689, "{v}");
    let (routed, premium) =
        (v["cost_micros"]["routed"].as_u64().unwrap(), v["cost_micros"]["always_premium"].as_u64().unwrap());
    assert!(routed < premium, "{v}");
}

#[test]
fn simulate_takes_labelled_prompts_as_one_message_auto_requests() {
    let log = temp_path("prompts-log.jsonl");
    std::fs::write(&log, "{\"id\":\"a\",\"prompt\":\"What is 2+2?\"}\n{\"id\":\"b\",\"prompt\":\"Prove that there are infinitely many primes, step by step.\"}\n").unwrap();
    let out =
        tollgate(&["simulate", "--log", log.to_str().unwrap(), "--config", "examples/tenant.json", "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tiers"], serde_json::json!({"cheap": 1, "premium": 1}), "{v}");
    let _ = std::fs::remove_file(log);
}

#[test]
fn simulate_accepts_the_workload_format_and_agrees_with_replay() {
    let out = tollgate(
        &[
            "simulate",
            "--log",
            "examples/workload.jsonl",
            "--config",
            "examples/tenant.json",
            "--config",
            "examples/tenant-globex.json",
            "--json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cost_micros"]["as_logged"], Value::Null, "workload lines carry no `logged`");
    let replay = tollgate(&["replay", "--workload", "examples/workload.jsonl", "--quiet"], None);
    let text = String::from_utf8(replay.stdout).unwrap();
    let cost = text.lines().find(|l| l.starts_with("cost: $")).unwrap();
    let routed = format!("${} routed", v["cost_usd"]["routed"].as_str().unwrap());
    let premium = format!("${} always-premium", v["cost_usd"]["always_premium"].as_str().unwrap());
    assert!(cost.contains(&routed) && cost.contains(&premium), "{cost} vs {v}");
}

#[test]
fn simulate_refuses_bad_input_with_exit_code_2_and_a_message() {
    let bad = temp_path("bad-log.jsonl");
    let good = r#"{"at":0,"request":{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}}"#;
    let cases: [(&str, &str); 5] = [
        ("{\"at\":0,\"request\":", ":2: bad JSON"),
        (r#"{"at":1,"api":"gemini","request":{}}"#, ":2: `api` must be"),
        (r#"{"at":1}"#, ":2: needs `request`"),
        (r#"{"at":1,"tenant":"initech","request":{"model":"gpt-4o","messages":[]}}"#, ":2: unknown tenant `initech`"),
        (
            r#"{"at":1,"request":{"model":"gpt-4o","messages":[]},"logged":{"model":"x/unknown-model","usage":{"input_tokens":1,"output_tokens":1}}}"#,
            ":2: no price for the logged model",
        ),
    ];
    for (second, want) in cases {
        std::fs::write(&bad, format!("{good}\n{second}\n")).unwrap();
        let out = tollgate(&["simulate", "--log", bad.to_str().unwrap(), "--config", "examples/tenant.json"], None);
        assert_eq!(out.status.code(), Some(2), "{second}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("tollgate: ") && err.contains(want), "{want}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = tollgate(&["simulate", "--log", "no/such/log.jsonl", "--config", "examples/tenant.json"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read no/such/log.jsonl"));
    let out = tollgate(&["simulate", "--log", "examples/requests.jsonl", "--config", "no/such/tenant.json"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/tenant.json"));
    let _ = std::fs::remove_file(bad);
}

#[test]
fn feedback_labels_join_the_log_with_the_export_and_feed_train() {
    let (export, labels, model) =
        (temp_path("export.ndjson"), temp_path("fb-labels.jsonl"), temp_path("fb-model.json"));
    let log = std::fs::read_to_string(root().join("examples/requests.jsonl")).unwrap();
    let logged: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // What the router exported for all but the last request, plus one the log does not have.
    let mut lines = Vec::new();
    for (i, line) in logged.iter().enumerate().take(logged.len() - 1) {
        let (tier, escalated, resolved) = match i % 4 {
            0 => ("cheap", false, true),
            1 => ("cheap", false, false),
            // Escalated from the tier the router chose.
            2 => ("cheap", true, true),
            _ => ("premium", false, true),
        };
        lines.push(json!({"request_id": line["request_id"], "tier": tier, "escalated": escalated, "resolved": resolved, "at": 1_795_000_000 + i}));
    }
    lines.push(json!({"request_id": "req_ffffffffffffffffffffffffffffffff", "tier": "cheap", "escalated": false, "resolved": true, "at": 1}));
    std::fs::write(&export, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();

    let out = tollgate(
        &[
            "feedback",
            "labels",
            "--log",
            "examples/requests.jsonl",
            "--feedback",
            export.to_str().unwrap(),
            "--config",
            "examples/tenant.json",
            "-o",
            labels.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Value> =
        std::fs::read_to_string(&labels).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let exported = logged.len() - 1;
    let premium_only = (0..exported).filter(|i| i % 4 == 3).count();
    assert_eq!(rows.len(), exported - premium_only, "{report}");
    assert!(report.contains(&format!("skipped {premium_only}: served above the cheapest tier")), "{report}");
    assert!(report.contains("skipped 1: no feedback exported for the request"), "{report}");
    assert!(report.contains("skipped 1: exported feedback for a request not in the log"), "{report}");
    for row in &rows {
        let keys: Vec<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["id", "source", "prompt", "weak", "strong"]);
        let i = logged.iter().position(|l| l["request_id"] == row["id"]).unwrap();
        assert_eq!(row["source"], logged[i]["source"]);
        assert_eq!(row["prompt"], logged[i]["request"]["messages"][0]["content"]);
        let want = match i % 4 {
            0 => (1.0, 1.0),
            _ => (0.0, 1.0),
        };
        assert_eq!((row["weak"].as_f64().unwrap(), row["strong"].as_f64().unwrap()), want, "{row}");
    }

    // The rows are what `tollgate train` and `tollgate eval` read.
    let out = tollgate(&["train", labels.to_str().unwrap(), "-o", model.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tollgate(&["eval", labels.to_str().unwrap(), "--model", model.to_str().unwrap(), "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["overall"]["learned model (as given)"]["prompts"], rows.len());

    // An export line that is not one is refused with its line number.
    std::fs::write(&export, "{\"request_id\":\"req_1\",\"tier\":\"cheap\",\"resolved\":\"yes\"}\n").unwrap();
    let out = tollgate(
        &[
            "feedback",
            "labels",
            "--log",
            "examples/requests.jsonl",
            "--feedback",
            export.to_str().unwrap(),
            "-o",
            labels.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(":1: `resolved` must be"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = (std::fs::remove_file(export), std::fs::remove_file(labels), std::fs::remove_file(model));
}
