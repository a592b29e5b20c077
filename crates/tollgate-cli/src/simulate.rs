//! `tollgate simulate`: an operator's own request log, replayed offline
//! through the core, to see what routing and caching would have saved.
//!
//! Each log line is `{"at", "tenant"?, "api"?, "request" | "prompt", "cache_control"?,
//! "request_id"?, "source"?, "logged"?}` (README, "Simulating a request
//! log"); `examples/workload.jsonl` is one too. Every request goes through a
//! [`Simulator`] (the hosts' plan, cache and budget, in memory) against the
//! simulated provider of `tollgate replay`, which answers with the logged
//! answer's length when the line has one. Three costs come out, all priced
//! by the core at the tenant's prices:
//! - routed: what the simulator's plan was charged (cache hits cost nothing);
//! - always-premium: the same answer from the most premium tier's first
//!   model, with no cache;
//! - as logged: `logged.cost_usd`, or `logged.usage` priced for
//!   `logged.model`, on the lines that carry it.
//!
//! This module only reads files, drives the simulator and prints.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tollgate_core::api::ApiFormat;
use tollgate_core::chart::{LineChart, Series};
use tollgate_core::config::TenantConfig;
use tollgate_core::count;
use tollgate_core::engine::Inbound;
use tollgate_core::pricing::{format_usd, usd_to_micros};
use tollgate_core::request::ChatRequest;
use tollgate_core::response::Usage;
use tollgate_core::sim::Simulator;

/// Times below this are offsets from the start of the log; above, Unix times.
const UNIX_TIME_FROM: u64 = 1_000_000_000;
/// Where a log of offsets starts (any fixed day: budgets reset by window).
const LOG_START: u64 = 1_795_000_000;

/// One parsed log line.
pub struct LogLine {
    /// 1-based line number in the file.
    pub line: usize,
    pub tenant: Option<String>,
    pub api: ApiFormat,
    pub body: String,
    pub cache_control: Option<String>,
    pub at: Option<u64>,
    pub request_id: Option<String>,
    pub source: Option<String>,
    pub logged: Option<Logged>,
}

/// What the log says the request really used.
pub struct Logged {
    pub model: Option<String>,
    pub usage: Option<Usage>,
    pub cost_usd: Option<f64>,
}

fn bare(model: &str) -> &str {
    model.split_once('/').map_or(model, |(_, m)| m)
}

fn usage_of(v: &Value) -> Option<Usage> {
    let n = |names: &[&str]| names.iter().find_map(|k| v.get(*k).and_then(Value::as_u64));
    Some(Usage {
        input_tokens: n(&["input_tokens", "prompt_tokens"])?,
        output_tokens: n(&["output_tokens", "completion_tokens"])?,
        cached_input_tokens: n(&["cached_input_tokens"]).unwrap_or(0),
        ..Usage::default()
    })
}

fn parse_line(path: &Path, line: usize, text: &str) -> Result<LogLine, String> {
    let at = || format!("{}:{line}", path.display());
    let v: Value = serde_json::from_str(text).map_err(|e| format!("{}: bad JSON: {e}", at()))?;
    if !v.is_object() {
        return Err(format!("{}: each line must be a JSON object", at()));
    }
    let string = |name: &str| -> Result<Option<String>, String> {
        match v.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{}: `{name}` must be a string", at())),
        }
    };
    let api = match string("api")?.as_deref() {
        None | Some("openai") => ApiFormat::OpenAi,
        Some("anthropic") => ApiFormat::Anthropic,
        Some(other) => return Err(format!("{}: `api` must be \"openai\" or \"anthropic\", not `{other}`", at())),
    };
    let body = match (v.get("request"), v.get("prompt")) {
        (Some(r @ Value::Object(_)), _) => r.to_string(),
        // A labelled prompt (`tollgate eval`'s format): a one-message
        // `tollgate/auto` request, so a labelled set replays as traffic.
        (None, Some(Value::String(prompt))) if api == ApiFormat::OpenAi => {
            String::from_utf8_lossy(&crate::chat_body_for_prompt(prompt)).into_owned()
        }
        _ => {
            return Err(format!(
                "{}: needs `request`, the client's request body (a JSON object), or a string `prompt`",
                at()
            ));
        }
    };
    let when = match v.get("at") {
        None | Some(Value::Null) => None,
        Some(t) => Some(t.as_u64().ok_or_else(|| format!("{}: `at` must be a whole number of seconds", at()))?),
    };
    let logged = match v.get("logged") {
        None | Some(Value::Null) => None,
        Some(l @ Value::Object(_)) => {
            let usage = match l.get("usage") {
                None | Some(Value::Null) => None,
                Some(u) => Some(usage_of(u).ok_or_else(|| {
                    format!("{}: `logged.usage` needs whole numbers `input_tokens` and `output_tokens`", at())
                })?),
            };
            let cost_usd = match l.get("cost_usd") {
                None | Some(Value::Null) => None,
                Some(c) => Some(
                    c.as_f64()
                        .filter(|c| c.is_finite() && *c >= 0.0)
                        .ok_or_else(|| format!("{}: `logged.cost_usd` must be a number ≥ 0", at()))?,
                ),
            };
            let model = l.get("model").and_then(Value::as_str).map(str::to_owned);
            if cost_usd.is_none() && (usage.is_none() || model.is_none()) {
                return Err(format!("{}: `logged` needs `cost_usd`, or `model` and `usage`", at()));
            }
            Some(Logged { model, usage, cost_usd })
        }
        Some(_) => return Err(format!("{}: `logged` must be an object", at())),
    };
    Ok(LogLine {
        line,
        tenant: string("tenant")?,
        api,
        body,
        cache_control: string("cache_control")?,
        at: when,
        request_id: string("request_id")?,
        source: string("source")?,
        logged,
    })
}

/// Every non-blank line of a request log, parsed; the first bad one is an error.
pub fn read_log(path: &Path) -> Result<Vec<LogLine>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let lines: Vec<LogLine> = text
        .split('\n')
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(path, i + 1, l))
        .collect::<Result<_, _>>()?;
    if lines.is_empty() {
        return Err(format!("{}: no requests in the log", path.display()));
    }
    Ok(lines)
}

/// The tenant configs given with `--config`, by tenant id.
pub fn load_configs(paths: &[PathBuf]) -> Result<BTreeMap<String, TenantConfig>, String> {
    let mut out = BTreeMap::new();
    for p in paths {
        let cfg = crate::load_config(Some(p))?;
        out.insert(cfg.tenant_id.clone(), cfg);
    }
    if out.is_empty() {
        return Err("give the tenant's config with --config tenant.json".to_owned());
    }
    Ok(out)
}

/// The tenant a line belongs to: its `tenant`, or the only config given.
pub fn tenant_of<'a>(
    path: &Path,
    line: &LogLine,
    configs: &'a BTreeMap<String, TenantConfig>,
) -> Result<&'a TenantConfig, String> {
    let known = || configs.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    match &line.tenant {
        Some(t) => configs.get(t).ok_or_else(|| {
            format!("{}:{}: unknown tenant `{t}` (--config gives {})", path.display(), line.line, known())
        }),
        None if configs.len() == 1 => configs.values().next().ok_or_else(|| "no config".to_owned()),
        None => Err(format!(
            "{}:{}: no `tenant` on the line, and several configs ({}) could serve it",
            path.display(),
            line.line,
            known()
        )),
    }
}

/// What the log says a request cost: `cost_usd`, or its usage priced for its model.
fn logged_micros(path: &Path, line: &LogLine, config: &TenantConfig) -> Result<Option<u64>, String> {
    let Some(logged) = &line.logged else { return Ok(None) };
    if let Some(usd) = logged.cost_usd {
        return usd_to_micros(usd)
            .map(Some)
            .ok_or_else(|| format!("{}:{}: `logged.cost_usd` is out of range", path.display(), line.line));
    }
    match (&logged.model, &logged.usage) {
        (Some(model), Some(usage)) => config.price(bare(model)).map(|p| Some(p.cost_micros(usage))).ok_or_else(|| {
            format!(
                "{}:{}: no price for the logged model `{model}` (add it to the tenant's `prices`, or log `cost_usd`)",
                path.display(),
                line.line
            )
        }),
        _ => Ok(None),
    }
}

/// One request's simulated result.
struct Row {
    line: usize,
    tenant: String,
    status: u16,
    tier: String,
    model: String,
    cache: String,
    routed_micros: u64,
    premium_micros: u64,
    logged_micros: Option<u64>,
}

#[derive(Default)]
struct Totals {
    requests: u64,
    refused: u64,
    hits: u64,
    routed: u64,
    premium: u64,
    logged: u64,
    logged_lines: u64,
    tiers: BTreeMap<String, u64>,
}

pub struct SimulateOptions<'a> {
    pub chart: Option<&'a Path>,
    pub as_json: bool,
    /// Print one row per request before the summary.
    pub verbose: bool,
}

pub fn run(log: &Path, config_paths: &[PathBuf], options: &SimulateOptions<'_>) -> Result<(), String> {
    let configs = load_configs(config_paths)?;
    let lines = read_log(log)?;
    let mut sims: BTreeMap<String, Simulator> =
        configs.iter().map(|(id, cfg)| (id.clone(), Simulator::new(cfg.clone(), [42; 32]))).collect();
    let mut rows = Vec::with_capacity(lines.len());
    for (n, line) in lines.iter().enumerate() {
        let config = tenant_of(log, line, &configs)?;
        let logged_micros = logged_micros(log, line, config)?;
        let sim = sims.get_mut(&config.tenant_id).ok_or("no simulator for the tenant")?;
        let now = match line.at {
            Some(t) if t >= UNIX_TIME_FROM => t,
            Some(t) => LOG_START + t,
            None => LOG_START + n as u64 * 10,
        };
        let mut entropy = [0u8; 16];
        entropy[..8].copy_from_slice(&(n as u64).to_le_bytes());
        let inbound = Inbound {
            tenant_id: &config.tenant_id,
            api: line.api,
            body: line.body.as_bytes(),
            cache_control: line.cache_control.as_deref(),
            now,
            entropy,
            key: None,
            user_header: None,
            tags_header: None,
        };
        let logged_output = line.logged.as_ref().and_then(|l| l.usage).map(|u| u.output_tokens);
        let outcome =
            sim.handle(&inbound, &mut |up| Some(crate::replay::simulated_reply_of_length(up, now, logged_output)));
        let answered = outcome.status < 400;
        // Every attempt's cost (escalations included); a cache hit costs nothing.
        let routed_micros = outcome.plan.as_ref().map_or(0, |p| p.outcome(outcome.finish.as_ref()).micros);
        // The same answer from the most premium tier, without a cache.
        let premium =
            config.routing.tiers.last().and_then(|t| config.routing.tier_chain(t, line.api).into_iter().next());
        let premium = premium.as_ref();
        let premium_micros = match (premium, ChatRequest::parse(line.api, line.body.as_bytes(), usize::MAX)) {
            (Some(p), Ok(req)) if answered => {
                let output = logged_output.unwrap_or_else(|| crate::replay::simulated_output_tokens(&req));
                let usage = Usage {
                    input_tokens: count::prompt_tokens(&req, &p.model).tokens,
                    output_tokens: req.max_output_tokens.map_or(output, |cap| output.min(cap)),
                    ..Usage::default()
                };
                config.price(&p.model).map_or(0, |price| price.cost_micros(&usage))
            }
            _ => 0,
        };
        let cache = outcome.header("x-tollgate-cache").unwrap_or("-").split(';').next().unwrap_or("-").to_owned();
        let tier = if !answered {
            "refused".to_owned()
        } else if cache == "hit" {
            "cache".to_owned()
        } else {
            // No tier header: a pinned model, which is not routed.
            let mut t = outcome.header("x-tollgate-tier").unwrap_or("pinned").to_owned();
            if outcome.header("x-tollgate-downgraded").is_some() {
                t.push('↓');
            }
            t
        };
        let model = if answered {
            outcome.header("x-tollgate-model").unwrap_or("-").to_owned()
        } else {
            let err: Value = serde_json::from_slice(&outcome.body).unwrap_or(Value::Null);
            format!("{} {}", outcome.status, err["error"]["code"].as_str().unwrap_or(""))
        };
        rows.push(Row {
            line: line.line,
            tenant: config.tenant_id.clone(),
            status: outcome.status,
            tier,
            model,
            cache,
            routed_micros,
            premium_micros,
            logged_micros,
        });
    }

    let mut t = Totals::default();
    for r in &rows {
        t.requests += 1;
        t.refused += u64::from(r.status >= 400);
        t.hits += u64::from(r.tier == "cache");
        t.routed += r.routed_micros;
        t.premium += r.premium_micros;
        if let Some(l) = r.logged_micros {
            t.logged += l;
            t.logged_lines += 1;
        }
        *t.tiers.entry(r.tier.clone()).or_default() += 1;
    }
    let all_logged = t.logged_lines == t.requests;
    if let Some(path) = options.chart {
        let cumulative = |f: &dyn Fn(&Row) -> u64| -> Vec<u64> {
            rows.iter()
                .scan(0u64, |sum, r| {
                    *sum += f(r);
                    Some(*sum)
                })
                .collect()
        };
        let mut series = Vec::new();
        if all_logged {
            series.push(("as logged", cumulative(&|r| r.logged_micros.unwrap_or(0))));
        }
        series.push(("always premium", cumulative(&|r| r.premium_micros)));
        series.push(("routed and cached", cumulative(&|r| r.routed_micros)));
        let name = log.file_name().map_or_else(|| log.display().to_string(), |n| n.to_string_lossy().into_owned());
        let title = format!("{name}: cumulative cost over {} requests", rows.len());
        std::fs::write(path, cost_chart_svg(&title, &series))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let pct = |saved: i64, of: u64| if of > 0 { saved as f64 * 100.0 / of as f64 } else { 0.0 };
    let saved_vs_premium = t.premium as i64 - t.routed as i64;
    let saved_vs_logged = t.logged as i64 - t.routed as i64;
    let signed_usd = |m: i64| {
        if m < 0 { format!("-{}", format_usd(m.unsigned_abs())) } else { format_usd(m.unsigned_abs()) }
    };

    if options.as_json {
        let out = json!({
            "log": log.display().to_string(),
            "tenants": configs.keys().collect::<Vec<_>>(),
            "requests": t.requests,
            "refused": t.refused,
            "cache_hits": t.hits,
            "cache_hit_rate": if t.requests > 0 { t.hits as f64 / t.requests as f64 } else { 0.0 },
            "tiers": t.tiers,
            "logged_lines": t.logged_lines,
            "cost_micros": {"always_premium": t.premium, "as_logged": all_logged.then_some(t.logged), "routed": t.routed},
            "cost_usd": {
                "always_premium": format_usd(t.premium),
                "as_logged": all_logged.then(|| format_usd(t.logged)),
                "routed": format_usd(t.routed),
            },
            "saved_pct": {
                "vs_always_premium": pct(saved_vs_premium, t.premium),
                "vs_as_logged": all_logged.then(|| pct(saved_vs_logged, t.logged)),
            },
            "chart": options.chart.map(|p| p.display().to_string()),
        });
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
        return Ok(());
    }
    if options.verbose {
        println!(
            "{:<5} {:<8} {:<10} {:<34} {:<7} {:>10} {:>10} {:>10}",
            "line", "tenant", "tier", "model", "cache", "routed $", "premium $", "logged $"
        );
        for r in &rows {
            println!(
                "{:<5} {:<8} {:<10} {:<34} {:<7} {:>10} {:>10} {:>10}",
                r.line,
                r.tenant,
                r.tier,
                r.model,
                r.cache,
                format_usd(r.routed_micros),
                format_usd(r.premium_micros),
                r.logged_micros.map_or("-".to_owned(), format_usd)
            );
        }
        println!();
    }
    let tenants: Vec<&str> = configs.keys().map(String::as_str).collect();
    println!("{}: {} requests, tenant {}", log.display(), t.requests, tenants.join(", "));
    println!("cost before, always premium:    ${}", format_usd(t.premium));
    if all_logged {
        println!("cost before, as logged:         ${}", format_usd(t.logged));
    } else if t.logged_lines == 0 {
        println!("cost before, as logged:         n/a (no line carries `logged`)");
    } else {
        println!(
            "cost before, as logged:         n/a (only {} of {} lines carry `logged`: ${} on those)",
            t.logged_lines,
            t.requests,
            format_usd(t.logged)
        );
    }
    println!("cost after, routed and cached:  ${}", format_usd(t.routed));
    println!(
        "saving: ${} ({:.1}%) against always premium",
        signed_usd(saved_vs_premium),
        pct(saved_vs_premium, t.premium)
    );
    if all_logged {
        println!("        ${} ({:.1}%) against as logged", signed_usd(saved_vs_logged), pct(saved_vs_logged, t.logged));
    }
    let mix: Vec<String> = t.tiers.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("tier mix: {}", mix.join("  "));
    println!(
        "cache hits: {} of {} ({:.1}%)",
        t.hits,
        t.requests,
        if t.requests > 0 { t.hits as f64 * 100.0 / t.requests as f64 } else { 0.0 }
    );
    if t.refused > 0 {
        println!("refused: {} (not priced in any of the totals but `as logged`)", t.refused);
    }
    if let Some(path) = options.chart {
        println!("chart: {}", path.display());
    }
    Ok(())
}

/// An SVG line chart of cumulative cost (micro-dollars) against the
/// request's position in the log, one line per series.
fn cost_chart_svg(title: &str, series: &[(&str, Vec<u64>)]) -> String {
    let n = series.iter().map(|(_, v)| v.len()).max().unwrap_or(0).max(1);
    let top = series.iter().filter_map(|(_, v)| v.last().copied()).max().unwrap_or(0).max(1);
    let quarters = (0..=4u32).map(|k| f64::from(k) / 4.0);
    LineChart {
        title: title.to_owned(),
        x_label: "requests, in log order".to_owned(),
        y_label: None,
        x_range: (0.0, n as f64),
        y_range: (0.0, top as f64),
        x_ticks: quarters
            .clone()
            .map(|f| {
                let i = (n as f64 * f) as usize;
                (i as f64, i.to_string())
            })
            .collect(),
        y_ticks: quarters
            .map(|f| {
                let m = (top as f64 * f) as u64;
                (m as f64, format!("${}", format_usd(m)))
            })
            .collect(),
        guides: Vec::new(),
        series: series
            .iter()
            .map(|(name, values)| Series {
                name: (*name).to_owned(),
                legend: format!("{name} ${}", format_usd(values.last().copied().unwrap_or(0))),
                points: std::iter::once((0.0, 0.0))
                    .chain(values.iter().enumerate().map(|(i, m)| ((i + 1) as f64, *m as f64)))
                    .collect(),
            })
            .collect(),
        right_margin: 20.0,
    }
    .to_svg()
}
