//! `tollgate eval`: routing quality on labelled prompts, in RouteLLM's terms
//! (see `tollgate_core::eval`), for the tenant's classifier and, with
//! `--baselines`, a prompt-length router, a random router and the oracle.

use serde_json::{Value, json};
use std::path::Path;
use tollgate_core::api::ApiFormat;
use tollgate_core::config::TenantConfig;
use tollgate_core::count;
use tollgate_core::engine;
use tollgate_core::eval::{self, QualityReport, ScoredRow};
use tollgate_core::learned::{self, Example, LinearRouter, TrainOptions};
use tollgate_core::request::ChatRequest;

/// One labelled prompt: `{id, source, prompt, weak, strong}`, with the
/// heuristic classifier's score and raw feature values.
struct Labelled {
    source: String,
    prompt: String,
    weak: f64,
    strong: f64,
    heuristic_score: f64,
    features: Vec<f64>,
}

/// The heuristic classifier on a prompt: its score and raw feature values.
fn heuristics(config: &TenantConfig, prompt: &str) -> Result<(f64, Vec<f64>), String> {
    let body = crate::chat_body_for_prompt(prompt);
    let req = ChatRequest::parse(ApiFormat::OpenAi, &body, usize::MAX).map_err(|e| e.to_string())?;
    let tokens = count::prompt_tokens(&req, &req.model).tokens;
    let c = engine::classify_request(&req, tokens, config);
    Ok((c.score, c.features.iter().map(|f| f.value).collect()))
}

fn read_labels(config: &TenantConfig, path: &Path) -> Result<Vec<Labelled>, String> {
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
        let (heuristic_score, features) = heuristics(config, prompt)?;
        rows.push(Labelled { source, prompt: prompt.to_owned(), weak, strong, heuristic_score, features });
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
        tier.and_then(|t| config.routing.tier_chain(t, ApiFormat::OpenAi).into_iter().next()).map(|m| m.to_string())
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

/// The routers compared: the tenant's classifier, the learned ones asked
/// for, then the baselines.
fn routers(
    rows: &[ScoredRow],
    lengths: &[ScoredRow],
    extra: &[(&'static str, Vec<ScoredRow>)],
    cost_ratio: f64,
    baselines: bool,
) -> Vec<(&'static str, QualityReport)> {
    let mut out = vec![("tollgate classifier", eval::evaluate(rows, cost_ratio))];
    out.extend(extra.iter().map(|(name, rows)| (*name, eval::evaluate(rows, cost_ratio))));
    if baselines {
        out.push(("prompt length", eval::evaluate(lengths, cost_ratio)));
        out.push(("random", eval::random_router(rows, cost_ratio)));
        out.push(("oracle", eval::oracle_router(rows, cost_ratio)));
    }
    out
}

/// What `tollgate eval` compares besides the tenant's classifier.
pub struct EvalOptions<'a> {
    pub baselines: bool,
    pub chart: Option<&'a Path>,
    pub as_json: bool,
    /// A trained model to evaluate as it is.
    pub model: Option<&'a Path>,
    /// Also train and evaluate the learned router leave-one-source-out.
    pub cross_validate: bool,
}

pub fn run(config: &TenantConfig, labels: &Path, options: &EvalOptions<'_>) -> Result<(), String> {
    let EvalOptions { baselines, chart, as_json, model, cross_validate } = *options;
    let labelled = read_labels(config, labels)?;
    let (weak_model, strong_model, cost_ratio) = models_and_cost_ratio(config)?;
    let row = |l: &Labelled, score: f64| ScoredRow { source: l.source.clone(), score, weak: l.weak, strong: l.strong };
    let scored: Vec<ScoredRow> = labelled.iter().map(|l| row(l, l.heuristic_score)).collect();
    let lengths: Vec<ScoredRow> = labelled.iter().map(|l| row(l, l.prompt.chars().count() as f64)).collect();
    let mut extra: Vec<(&'static str, Vec<ScoredRow>)> = Vec::new();
    if let Some(path) = model {
        let m = load_model(path)?;
        extra.push((
            "learned model (as given)",
            labelled.iter().map(|l| row(l, m.score(&l.prompt, &l.features))).collect(),
        ));
    }
    if cross_validate {
        let sources: Vec<String> = labelled.iter().map(|l| l.source.clone()).collect();
        extra.push(("learned, leave-one-source-out", cross_validated(&labelled, &sources, true)));
        // The heuristic features alone, their weights fitted by the same
        // regression: is there a better weighting than the hand-set one?
        extra.push(("heuristic features refitted, leave-one-source-out", cross_validated(&labelled, &sources, false)));
        // Folds by position after a fixed shuffle: every source is in
        // every fold, as when a tenant trains on its own traffic.
        let folds: Vec<String> =
            (0..labelled.len()).map(|i| format!("fold {}", (i.wrapping_mul(0x9E37_79B9) >> 7) % 5)).collect();
        extra.push(("learned, 5-fold", cross_validated(&labelled, &folds, true)));
    }
    let overall = routers(&scored, &lengths, &extra, cost_ratio, baselines);
    let length_groups = eval::by_source(&lengths);
    let extra_groups: Vec<(&'static str, std::collections::BTreeMap<&str, Vec<ScoredRow>>)> =
        extra.iter().map(|(name, rows)| (*name, eval::by_source(rows))).collect();
    let per_source: Vec<(String, Vec<(&'static str, QualityReport)>)> = eval::by_source(&scored)
        .into_iter()
        .map(|(source, rows)| {
            let lengths = length_groups.get(source).map(Vec::as_slice).unwrap_or_default();
            let extra: Vec<(&'static str, Vec<ScoredRow>)> = extra_groups
                .iter()
                .map(|(name, groups)| (*name, groups.get(source).cloned().unwrap_or_default()))
                .collect();
            (source.to_owned(), routers(&rows, lengths, &extra, cost_ratio, baselines))
        })
        .collect();

    // Per router (in `overall`'s order), its median APGR within a source.
    let medians: Vec<Option<f64>> = (0..overall.len())
        .map(|k| eval::median_apgr(per_source.iter().filter_map(|(_, rs)| rs.get(k).map(|(_, r)| r))))
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
        let mut overall_json = routers_json(&overall);
        for ((name, _), median) in overall.iter().zip(&medians) {
            if let Some(obj) = overall_json.get_mut(*name).and_then(Value::as_object_mut) {
                obj.insert("median_source_apgr".to_owned(), json!(median));
            }
        }
        let sources: serde_json::Map<String, Value> =
            per_source.iter().map(|(s, rs)| (s.clone(), routers_json(rs))).collect();
        let out = json!({
            "labels": labels.display().to_string(), "weak_model": weak_model, "strong_model": strong_model,
            "cost_ratio": cost_ratio, "overall": overall_json, "by_source": sources,
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
    println!(
        "| router | APGR | CPT(50%) | CPT(80%) | strong calls at 95% of strong quality | cost saved there | median APGR within a source |"
    );
    println!("|---|---|---|---|---|---|---|");
    for ((name, r), median) in overall.iter().zip(&medians) {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            num(r.apgr),
            pct(r.cpt50),
            pct(r.cpt80),
            pct(r.share_at_95),
            pct(r.saving_at_95),
            num(*median)
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

fn load_model(path: &Path) -> Result<LinearRouter, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let model: LinearRouter = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    model.validate().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(model)
}

fn training_examples<'a>(rows: impl Iterator<Item = &'a Labelled>) -> Vec<Example<'a>> {
    rows.map(|l| Example { text: &l.prompt, features: l.features.clone(), needs_strong: l.strong > l.weak }).collect()
}

/// Each group's prompts scored by a model trained on all other groups.
/// Grouped by source, that is what the learned router does on a kind of
/// prompt it has never seen.
/// `with_text: false` leaves the words out: the heuristic features only.
fn cross_validated(labelled: &[Labelled], groups: &[String], with_text: bool) -> Vec<ScoredRow> {
    let text = |l: &Labelled| if with_text { l.prompt.clone() } else { String::new() };
    let mut names: Vec<&String> = groups.iter().collect();
    names.sort_unstable();
    names.dedup();
    let mut scores = vec![0.0; labelled.len()];
    for held_out in names {
        let training = labelled.iter().zip(groups).filter(|(_, g)| *g != held_out).map(|(l, _)| l);
        let texts: Vec<(String, &Labelled)> = training.map(|l| (text(l), l)).collect();
        let examples: Vec<Example<'_>> = texts
            .iter()
            .map(|(t, l)| Example { text: t, features: l.features.clone(), needs_strong: l.strong > l.weak })
            .collect();
        let model = learned::train(&examples, &TrainOptions::default());
        for ((l, g), score) in labelled.iter().zip(groups).zip(scores.iter_mut()) {
            if g == held_out {
                *score = model.score(&text(l), &l.features);
            }
        }
    }
    labelled
        .iter()
        .zip(scores)
        .map(|(l, score)| ScoredRow { source: l.source.clone(), score, weak: l.weak, strong: l.strong })
        .collect()
}

/// `tollgate train`: fits the learned router on every labelled prompt and
/// writes the model file.
pub fn train(config: &TenantConfig, labels: &Path, output: &Path, epochs: u32, hash_bits: u32) -> Result<(), String> {
    if !(8..=learned::MAX_HASH_BITS).contains(&hash_bits) {
        return Err(format!("--hash-bits must be 8..={}", learned::MAX_HASH_BITS));
    }
    let labelled = read_labels(config, labels)?;
    let examples = training_examples(labelled.iter());
    let positives = examples.iter().filter(|e| e.needs_strong).count();
    let model = learned::train(&examples, &TrainOptions { epochs, hash_bits, ..TrainOptions::default() });
    model.validate().map_err(|e| e.to_string())?;
    let json = serde_json::to_vec(&model).map_err(|e| e.to_string())?;
    std::fs::write(output, &json).map_err(|e| format!("{}: {e}", output.display()))?;
    let rows: Vec<ScoredRow> = labelled
        .iter()
        .map(|l| ScoredRow {
            source: l.source.clone(),
            score: model.score(&l.prompt, &l.features),
            weak: l.weak,
            strong: l.strong,
        })
        .collect();
    let (_, _, cost_ratio) = models_and_cost_ratio(config)?;
    let in_sample = eval::evaluate(&rows, cost_ratio);
    println!(
        "{}: {} prompts, {positives} where the strong model did better; {} weights ({} KiB as f32), {} KiB of JSON",
        output.display(),
        examples.len(),
        model.ngram_weights.len() + model.feature_weights.len() + 1,
        (model.ngram_weights.len() + model.feature_weights.len() + 1) * 4 / 1024,
        json.len() / 1024
    );
    println!(
        "in-sample APGR {} (optimistic: measured on the prompts it was trained on; `tollgate eval --cv` gives held-out figures)",
        num(in_sample.apgr)
    );
    Ok(())
}
