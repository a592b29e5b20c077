//! `tollgate replay`: a workload through the core against a simulated provider.
//!
//! The provider is deterministic: it answers with the model's name and a
//! length derived from the prompt, and reports usage as a real one would
//! (prompt tokens as counted for that model). The same simulated answer is
//! priced twice, once as routed and once as if every request had gone to
//! the most capable tier, so the saving printed is a like-for-like ratio.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use tollgate_core::api::ApiFormat;
use tollgate_core::config::TenantConfig;
use tollgate_core::count;
use tollgate_core::engine::{Inbound, Upstream};
use tollgate_core::pricing::format_usd;
use tollgate_core::request::ChatRequest;
use tollgate_core::response::{self, Usage};
use tollgate_core::sim::{Simulator, UpstreamReply};

/// Output length the simulated provider gives a conversation: stable per
/// conversation (whatever the model or `max_tokens`), capped by `max_tokens`.
pub(crate) fn simulated_output_tokens(req: &ChatRequest) -> u64 {
    let cap = req.max_output_tokens;
    let conversation = req.raw_field("messages").unwrap_or_default();
    let h = conversation
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    let n = 40 + h % 400;
    cap.map_or(n, |c| n.min(c))
}

fn simulated_reply(up: &Upstream, now: u64) -> UpstreamReply {
    simulated_reply_of_length(up, now, None)
}

/// The simulated provider's answer, `output` tokens long when given (a
/// logged answer's length), else of the length derived from the prompt;
/// either way capped by the request's `max_tokens`.
pub(crate) fn simulated_reply_of_length(up: &Upstream, now: u64, output: Option<u64>) -> UpstreamReply {
    let Ok(req) = ChatRequest::parse(up.api, &up.body, usize::MAX) else {
        return UpstreamReply { status: 400, body: br#"{"error":{"message":"bad request"}}"#.to_vec(), stream: false };
    };
    let prompt = count::prompt_tokens(&req, &up.target.model).tokens;
    let output = match output {
        Some(n) => req.max_output_tokens.map_or(n, |cap| n.min(cap)),
        None => simulated_output_tokens(&req),
    };
    let text = format!("[{}] simulated answer of {output} tokens", up.target.model);
    let body = match up.api {
        ApiFormat::OpenAi => json!({
            "id": format!("chatcmpl-sim-{now}"), "object": "chat.completion", "created": now, "model": up.target.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output,
                      "prompt_tokens_details": {"cached_tokens": 0}}
        }),
        ApiFormat::Anthropic => json!({
            "id": format!("msg_sim_{now}"), "type": "message", "role": "assistant", "model": up.target.model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": prompt, "output_tokens": output}
        }),
        ApiFormat::Responses => json!({
            "id": format!("resp_sim_{now}"), "object": "response", "created_at": now, "status": "completed",
            "model": up.target.model,
            "output": [{"type": "message", "id": format!("msg_sim_{now}"), "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output}
        }),
        ApiFormat::Embeddings => {
            let items = req.embedding_inputs.as_ref().map_or(1, |i| i.items);
            let data: Vec<serde_json::Value> = (0..items)
                .map(|index| json!({"object": "embedding", "index": index, "embedding": [0.0, 0.0, 0.0, 0.0]}))
                .collect();
            json!({"object": "list", "data": data, "model": up.target.model,
                   "usage": {"prompt_tokens": prompt, "total_tokens": prompt}})
        }
    };
    if req.stream && up.api == ApiFormat::Responses {
        let sse =
            format!("event: response.completed\ndata: {}\n\n", json!({"type": "response.completed", "response": body}));
        UpstreamReply { status: 200, body: sse.into_bytes(), stream: true }
    } else if req.stream {
        let sse = response::replay_as_sse(up.api, &body, true).unwrap_or_default();
        UpstreamReply { status: 200, body: sse, stream: true }
    } else {
        UpstreamReply { status: 200, body: body.to_string().into_bytes(), stream: false }
    }
}

#[derive(Default)]
struct Totals {
    requests: u64,
    routed_micros: u64,
    premium_micros: u64,
    hits: u64,
    refused: u64,
    tiers: BTreeMap<String, u64>,
}

fn load_tenants(args: &[String]) -> Result<BTreeMap<String, TenantConfig>, String> {
    let mut paths: Vec<(Option<String>, std::path::PathBuf)> = Vec::new();
    if args.is_empty() {
        let dir = std::fs::read_dir("examples").map_err(|e| format!("examples/: {e}"))?;
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("tenant") && name.ends_with(".json") {
                paths.push((None, entry.path()));
            }
        }
        paths.sort();
    } else {
        for a in args {
            let (id, path) = a.split_once('=').ok_or_else(|| format!("--tenant takes id=config.json, got `{a}`"))?;
            paths.push((Some(id.to_owned()), path.into()));
        }
    }
    let mut out = BTreeMap::new();
    for (id, p) in paths {
        let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let cfg = TenantConfig::from_json(&bytes).map_err(|e| format!("{}: {e}", p.display()))?;
        if let Some(id) = id.filter(|id| *id != cfg.tenant_id) {
            return Err(format!("{}: config is for tenant `{}`, not `{id}`", p.display(), cfg.tenant_id));
        }
        out.insert(cfg.tenant_id.clone(), cfg);
    }
    Ok(out)
}

pub fn run(workload: &Path, tenant_args: &[String], quiet: bool, out: Option<&Path>) -> Result<ExitCode, String> {
    let tenants = load_tenants(tenant_args)?;
    let text = std::fs::read_to_string(workload).map_err(|e| format!("{}: {e}", workload.display()))?;
    let mut sims: BTreeMap<String, Simulator> =
        tenants.into_iter().map(|(id, cfg)| (id, Simulator::new(cfg, [42; 32]))).collect();
    let mut out_file = match out {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let start: u64 = 1_795_000_000;
    let mut totals = Totals::default();
    if !quiet {
        println!(
            "{:<4} {:<8} {:<9} {:<6} {:<8} {:<34} {:<7} {:>10} {:>10}",
            "#", "tenant", "api", "score", "tier", "model", "cache", "cost $", "premium $"
        );
    }
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let item: Value = serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", workload.display(), n + 1))?;
        let tenant = item.get("tenant").and_then(Value::as_str).unwrap_or("");
        let sim = sims.get_mut(tenant).ok_or_else(|| format!("line {}: unknown tenant `{tenant}`", n + 1))?;
        let api = if item.get("api").and_then(Value::as_str) == Some("anthropic") {
            ApiFormat::Anthropic
        } else {
            ApiFormat::OpenAi
        };
        let body = item.get("request").map(|r| r.to_string()).unwrap_or_default();
        let now = start + item.get("at").and_then(Value::as_u64).unwrap_or(n as u64 * 10);
        let mut entropy = [0u8; 16];
        entropy[..8].copy_from_slice(&(n as u64).to_le_bytes());
        let inbound = Inbound {
            tenant_id: tenant,
            api,
            body: body.as_bytes(),
            cache_control: item.get("cache_control").and_then(Value::as_str),
            now,
            entropy,
            key: None,
            user_header: None,
            tags_header: None,
        };
        let outcome = sim.handle(&inbound, &mut |up| Some(simulated_reply(up, now)));

        // What the same answer would have cost on the most capable tier.
        let premium =
            sim.config.routing.tiers.last().and_then(|t| sim.config.routing.tier_chain(t, api).into_iter().next());
        let premium_micros = match (&premium, ChatRequest::parse(api, body.as_bytes(), usize::MAX)) {
            (Some(p), Ok(req)) if outcome.status < 400 => {
                let prompt = count::prompt_tokens(&req, &p.model).tokens;
                // The premium model would not have been clamped: its own cap applies.
                let output = simulated_output_tokens(&req);
                let usage = Usage { input_tokens: prompt, output_tokens: output, ..Usage::default() };
                sim.config.price(&p.model).map_or(0, |price| price.cost_micros(&usage))
            }
            _ => 0,
        };
        let routed_micros = outcome.finish.as_ref().map_or(0, |f| f.cost_micros);
        let cache = outcome.header("x-tollgate-cache").unwrap_or("-").split(';').next().unwrap_or("-").to_owned();
        let mut tier = outcome.header("x-tollgate-tier").unwrap_or("-").to_owned();
        if outcome.header("x-tollgate-downgraded").is_some() {
            // Over the soft budget threshold: served by the cheapest tier.
            tier.push('↓');
        }
        totals.requests += 1;
        totals.routed_micros += routed_micros;
        totals.premium_micros += premium_micros;
        if cache == "hit" && outcome.status < 400 {
            totals.hits += 1;
        }
        if outcome.status >= 400 {
            totals.refused += 1;
        } else {
            *totals.tiers.entry(if cache == "hit" { "cache".to_owned() } else { tier.clone() }).or_default() += 1;
        }
        let model = if outcome.status >= 400 {
            let err: Value = serde_json::from_slice(&outcome.body).unwrap_or(Value::Null);
            format!("{} {}", outcome.status, err["error"]["code"].as_str().unwrap_or(""))
        } else {
            outcome.header("x-tollgate-model").unwrap_or("-").to_owned()
        };
        let score = outcome.header("x-tollgate-score").unwrap_or("-");
        if !quiet {
            println!(
                "{:<4} {:<8} {:<9} {:<6} {:<8} {:<34} {:<7} {:>10} {:>10}",
                n + 1,
                tenant,
                api.as_str(),
                score,
                tier,
                model,
                cache,
                format_usd(routed_micros),
                format_usd(premium_micros)
            );
        }
        if let Some(f) = out_file.as_mut() {
            let rec = json!({"line": n + 1, "tenant": tenant, "status": outcome.status, "score": score, "tier": tier,
                "model": model, "cache": cache, "cost_micros": routed_micros, "premium_micros": premium_micros,
                "reasons": outcome.header("x-tollgate-reasons")});
            writeln!(f, "{rec}").map_err(|e| e.to_string())?;
        }
    }
    let saved = totals.premium_micros.saturating_sub(totals.routed_micros);
    let pct = if totals.premium_micros > 0 { saved as f64 * 100.0 / totals.premium_micros as f64 } else { 0.0 };
    println!();
    println!("requests: {}   cache hits: {}   refused: {}", totals.requests, totals.hits, totals.refused);
    let mix: Vec<String> = totals.tiers.iter().map(|(t, n)| format!("{t}={n}")).collect();
    println!("tier mix: {}", mix.join("  "));
    println!(
        "cost: ${} routed vs ${} always-premium  → saved ${} ({pct:.1}%)",
        format_usd(totals.routed_micros),
        format_usd(totals.premium_micros),
        format_usd(saved)
    );
    Ok(ExitCode::SUCCESS)
}
