//! `tollgate eval`: routing quality on labelled prompts, in RouteLLM's terms
//! (see `tollgate_core::eval`), for the tenant's classifier and, with
//! `--baselines`, a prompt-length router, a random router and the oracle.

use serde_json::{Value, json};
use std::path::Path;
use tollgate_core::api::ApiFormat;
use tollgate_core::config::TenantConfig;
use tollgate_core::eval::{self, QualityReport, ScoredRow};

/// One labelled prompt: `{id, source, prompt, weak, strong}`.
struct Labelled {
    source: String,
    prompt: String,
    weak: f64,
    strong: f64,
}

fn read_labels(path: &Path) -> Result<Vec<Labelled>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    // JSON lines end at '\n' only: prompts may hold other line separators.
    for (i, line) in text.split('\n').enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{}: bad JSON: {e}", at()))?;
        let field = |name: &str| v.get(name).and_then(Value::as_f64).filter(|x| (0.0..=1.0).contains(x));
        let (Some(weak), Some(strong)) = (field("weak"), field("strong")) else {
            return Err(format!("{}: `weak` and `strong` must be numbers in [0, 1]", at()));
        };
        let prompt =
            v.get("prompt").and_then(Value::as_str).ok_or_else(|| format!("{}: needs a string `prompt`", at()))?;
        let source = v.get("source").and_then(Value::as_str).unwrap_or("unknown").to_owned();
        rows.push(Labelled { source, prompt: prompt.to_owned(), weak, strong });
    }
    if rows.is_empty() {
        return Err(format!("{}: no labelled prompts", path.display()));
    }
    Ok(rows)
}

/// What a weak call costs relative to a strong one: the first model of the
/// cheapest and of the most premium tier (OpenAI format), at equal input
/// and output tokens.
fn models_and_cost_ratio(config: &TenantConfig) -> Result<(String, String, f64), String> {
    let tiers = &config.routing.tiers;
    let first_model = |tier: Option<&tollgate_core::config::Tier>| {
        tier.and_then(|t| t.chain(ApiFormat::OpenAi).next()).map(ToString::to_string)
    };
    let weak = first_model(tiers.first()).ok_or("the cheapest tier has no OpenAI model")?;
    let strong = first_model(tiers.last()).ok_or("the most premium tier has no OpenAI model")?;
    let bare = |m: &str| m.split_once('/').map_or(m, |(_, b)| b).to_owned();
    let cost = |m: &str| {
        config.price(&bare(m)).map(|p| p.estimate_micros(1000, 1000) as f64).ok_or(format!("no price for {m}"))
    };
    let (w, s) = (cost(&weak)?, cost(&strong)?);
    if s <= 0.0 {
        return Err(format!("{strong} costs nothing: no cost ratio"));
    }
    Ok((weak, strong, w / s))
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

fn num(x: Option<f64>) -> String {
    x.map_or("–".to_owned(), |v| format!("{v:.3}"))
}

fn report_json(r: &QualityReport) -> Value {
    json!({
        "prompts": r.rows, "weak_quality": r.weak_quality, "strong_quality": r.strong_quality,
        "apgr": r.apgr, "cpt50": r.cpt50, "cpt80": r.cpt80,
        "strong_share_at_95": r.share_at_95, "saving_at_95": r.saving_at_95,
    })
}

/// The routers compared: the tenant's classifier, then the baselines.
fn routers(
    rows: &[ScoredRow],
    lengths: &[ScoredRow],
    cost_ratio: f64,
    baselines: bool,
) -> Vec<(&'static str, QualityReport)> {
    let mut out = vec![("tollgate classifier", eval::evaluate(rows, cost_ratio))];
    if baselines {
        out.push(("prompt length", eval::evaluate(lengths, cost_ratio)));
        out.push(("random", eval::random_router(rows, cost_ratio)));
        out.push(("oracle", eval::oracle_router(rows, cost_ratio)));
    }
    out
}

pub fn run(
    config: &TenantConfig,
    labels: &Path,
    baselines: bool,
    chart: Option<&Path>,
    as_json: bool,
) -> Result<(), String> {
    let labelled = read_labels(labels)?;
    let (weak_model, strong_model, cost_ratio) = models_and_cost_ratio(config)?;
    let mut scored = Vec::with_capacity(labelled.len());
    let mut lengths = Vec::with_capacity(labelled.len());
    for l in &labelled {
        let v = crate::classify_value(config, &crate::chat_body_for_prompt(&l.prompt), ApiFormat::OpenAi)?;
        let score = v.get("score").and_then(Value::as_f64).ok_or("the classifier gave no score")?;
        let row = |score: f64| ScoredRow { source: l.source.clone(), score, weak: l.weak, strong: l.strong };
        scored.push(row(score));
        lengths.push(row(l.prompt.chars().count() as f64));
    }
    let overall = routers(&scored, &lengths, cost_ratio, baselines);
    let length_groups = eval::by_source(&lengths);
    let per_source: Vec<(String, Vec<(&'static str, QualityReport)>)> = eval::by_source(&scored)
        .into_iter()
        .map(|(source, rows)| {
            let lengths = length_groups.get(source).map(Vec::as_slice).unwrap_or_default();
            (source.to_owned(), routers(&rows, lengths, cost_ratio, baselines))
        })
        .collect();

    if let Some(path) = chart {
        let curves: Vec<(&str, &QualityReport)> = overall.iter().map(|(n, r)| (*n, r)).collect();
        let name =
            labels.file_name().map_or_else(|| labels.display().to_string(), |n| n.to_string_lossy().into_owned());
        let title = format!("{name}: quality against strong-call share ({} prompts)", labelled.len());
        std::fs::write(path, eval::chart_svg(&title, &curves)).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if as_json {
        let routers_json = |rs: &[(&str, QualityReport)]| -> Value {
            rs.iter().map(|(n, r)| ((*n).to_owned(), report_json(r))).collect::<serde_json::Map<_, _>>().into()
        };
        let sources: serde_json::Map<String, Value> =
            per_source.iter().map(|(s, rs)| (s.clone(), routers_json(rs))).collect();
        let out = json!({
            "labels": labels.display().to_string(), "weak_model": weak_model, "strong_model": strong_model,
            "cost_ratio": cost_ratio, "overall": routers_json(&overall), "by_source": sources,
        });
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let first = overall.first().map(|(_, r)| r);
    println!(
        "{}: {} prompts, {} sources; weak {:.3}, strong {:.3}",
        labels.display(),
        labelled.len(),
        per_source.len(),
        first.map_or(0.0, |r| r.weak_quality),
        first.map_or(0.0, |r| r.strong_quality)
    );
    println!(
        "prices: weak = {weak_model}, strong = {strong_model}; a weak call costs {:.1}% of a strong one (equal input and output tokens)\n",
        cost_ratio * 100.0
    );
    println!("| router | APGR | CPT(50%) | CPT(80%) | strong calls at 95% of strong quality | cost saved there |");
    println!("|---|---|---|---|---|---|");
    for (name, r) in &overall {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            num(r.apgr),
            pct(r.cpt50),
            pct(r.cpt80),
            pct(r.share_at_95),
            pct(r.saving_at_95)
        );
    }
    println!();
    let names: Vec<&str> = overall.iter().map(|(n, _)| *n).collect();
    println!(
        "| source | prompts | weak | strong | {} |",
        names.iter().map(|n| format!("APGR {n}")).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|---|---|---|{}", "---|".repeat(names.len()));
    for (source, rs) in &per_source {
        let Some((_, r)) = rs.first() else { continue };
        let apgrs: Vec<String> = rs.iter().map(|(_, r)| num(r.apgr)).collect();
        println!("| {source} | {} | {:.3} | {:.3} | {} |", r.rows, r.weak_quality, r.strong_quality, apgrs.join(" | "));
    }
    if let Some(path) = chart {
        println!("\nchart: {}", path.display());
    }
    Ok(())
}
