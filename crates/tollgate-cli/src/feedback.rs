//! `tollgate feedback labels`: training labels from the tenant's own
//! request log joined with the feedback its router exported.
//!
//! The router never stores prompt text, so `GET /v1/feedback/export` gives
//! only `{request_id, tier, escalated, resolved, at}` per request with
//! feedback. The operator's log has the prompts, and the `request_id` each
//! response carried in `x-tollgate-request-id`. Joined on that id, each
//! request becomes a row `{id, source, prompt, weak, strong}` for
//! `tollgate train`, by [`tollgate_core::outcomes::training_label`].

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use tollgate_core::config::TenantConfig;
use tollgate_core::outcomes::{self, SkipReason};
use tollgate_core::request::{ChatRequest, Role};

/// One line of the export.
struct Exported {
    tier: String,
    escalated: bool,
    resolved: Option<bool>,
}

fn read_export(path: &Path) -> Result<HashMap<String, Exported>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (i, line) in text.split('\n').enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{}: bad JSON: {e}", at()))?;
        let id = v.get("request_id").and_then(Value::as_str).ok_or_else(|| format!("{}: needs `request_id`", at()))?;
        let tier = v.get("tier").and_then(Value::as_str).ok_or_else(|| format!("{}: needs `tier`", at()))?;
        let resolved = match v.get("resolved") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(format!("{}: `resolved` must be true, false or null", at())),
        };
        let escalated = v.get("escalated").and_then(Value::as_bool).unwrap_or(false);
        out.insert(id.to_owned(), Exported { tier: tier.to_owned(), escalated, resolved });
    }
    Ok(out)
}

/// The text a label row stands for: the request's last user message.
fn prompt_of(api: tollgate_core::api::ApiFormat, body: &str) -> Option<String> {
    let req = ChatRequest::parse(api, body.as_bytes(), usize::MAX).ok()?;
    req.messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.text.clone()).filter(|t| !t.trim().is_empty())
}

pub fn labels(log: &Path, export: &Path, config: &TenantConfig, output: &Path) -> Result<(), String> {
    let lines = crate::simulate::read_log(log)?;
    let mut feedback = read_export(export)?;
    let total_feedback = feedback.len();
    let tiers: Vec<String> = config.routing.tiers.iter().map(|t| t.name.clone()).collect();
    let mut rows = Vec::new();
    let (mut without_id, mut without_feedback, mut without_prompt) = (0usize, 0usize, 0usize);
    let mut skipped: BTreeMap<SkipReason, usize> = BTreeMap::new();
    for line in &lines {
        let Some(id) = &line.request_id else {
            without_id += 1;
            continue;
        };
        // Taken out so a request logged twice is labelled once.
        let Some(fb) = feedback.remove(id) else {
            without_feedback += 1;
            continue;
        };
        let Some(resolved) = fb.resolved else {
            without_feedback += 1;
            continue;
        };
        let Some(prompt) = prompt_of(line.api, &line.body) else {
            without_prompt += 1;
            continue;
        };
        match outcomes::training_label(&fb.tier, fb.escalated, resolved, &tiers) {
            Ok((weak, strong)) => {
                let source = line.source.clone().or_else(|| line.tenant.clone()).unwrap_or(config.tenant_id.clone());
                rows.push(json!({"id": id, "source": source, "prompt": prompt, "weak": weak, "strong": strong}));
            }
            Err(reason) => *skipped.entry(reason).or_default() += 1,
        }
    }
    let mut file = std::fs::File::create(output).map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    for r in &rows {
        writeln!(file, "{r}").map_err(|e| format!("{}: {e}", output.display()))?;
    }
    let need_strong = rows.iter().filter(|r| r["weak"].as_f64() < r["strong"].as_f64()).count();
    println!(
        "{}: {} labelled prompts ({} where only the strong model is credited) from {} log lines and {} exported feedback",
        output.display(),
        rows.len(),
        need_strong,
        lines.len(),
        total_feedback
    );
    let report = |n: usize, why: &str| {
        if n > 0 {
            println!("  skipped {n}: {why}");
        }
    };
    for (reason, n) in &skipped {
        report(*n, reason.as_str());
    }
    report(without_id, "log line without `request_id`");
    report(without_feedback, "no feedback exported for the request");
    report(without_prompt, "no user message text in the logged request");
    report(feedback.len(), "exported feedback for a request not in the log");
    if rows.is_empty() {
        return Err(format!("no labelled prompts: nothing in {} joined {}", log.display(), export.display()));
    }
    Ok(())
}
