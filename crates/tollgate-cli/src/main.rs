//! `tollgate`: the operator's front door to the routing core.
//!
//! Everything here runs the same `tollgate-core` code the hosts run, so an
//! offline answer (`classify`, `route`, `replay`) is the answer production
//! gives for the same config and request.

mod eval;
mod feedback;
mod price;
mod replay;
mod simulate;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use std::io::{BufRead, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tollgate_core::api::ApiFormat;
use tollgate_core::budget::{self, BudgetState, LedgerOp, LedgerReply};
use tollgate_core::config::TenantConfig;
use tollgate_core::count::{self, Encoding};
use tollgate_core::engine::{self, Inbound, Next, Plan};
use tollgate_core::request::ChatRequest;
use tollgate_core::response::Usage;
use tollgate_core::store::{TenantOp, TenantReply};

#[derive(Parser)]
#[command(name = "tollgate", version, about = "LLM cost router: validate config, classify, count and route offline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Api {
    Openai,
    Anthropic,
}

impl From<Api> for ApiFormat {
    fn from(a: Api) -> Self {
        match a {
            Api::Openai => ApiFormat::OpenAi,
            Api::Anthropic => ApiFormat::Anthropic,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Score a prompt's complexity and pick its tier.
    ///
    /// With --jsonl, reads lines {"id","prompt"} or {"id","request":{chat body}}
    /// on stdin and writes {"id","score","tier","tokens","reasons"} per line.
    Classify {
        /// The prompt text (omit with --jsonl).
        text: Option<String>,
        #[arg(long)]
        jsonl: bool,
        /// Tenant config whose classifier settings and tiers to use (default: the example tenant).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Count tokens of a text, or of a chat request's prompt.
    ///
    /// With --jsonl, reads {"id","text"} lines and writes {"id","tokens"},
    /// counting text as ordinary text (special-token strings are plain text).
    Count {
        text: Option<String>,
        #[arg(long, default_value = "o200k_base")]
        encoding: String,
        #[arg(long)]
        jsonl: bool,
        /// Count a request body's prompt (with chat framing) instead of a text.
        #[arg(long)]
        request: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "openai")]
        api: Api,
    },
    /// Route one request offline and print the full decision as JSON.
    Route {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        request: PathBuf,
        #[arg(long, value_enum, default_value = "openai")]
        api: Api,
        /// Budget state JSON to reserve against (default: nothing spent yet).
        #[arg(long)]
        budget_state: Option<PathBuf>,
        /// Unix time to decide at (default: now).
        #[arg(long)]
        now: Option<u64>,
    },
    /// Tenant configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Routing quality on labelled prompts (RouteLLM's APGR, CPT(50%),
    /// CPT(80%), cost saved at 95% of strong quality), overall and per source.
    ///
    /// LABELS is JSONL of {"id","source","prompt","weak","strong"}, the scores a
    /// weak and a strong model got on each prompt. Prices come from the
    /// config's cheapest and most premium tier.
    Eval {
        labels: PathBuf,
        /// Tenant config whose classifier and tiers to use (default: the example tenant).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also evaluate a prompt-length router, a random router and the oracle.
        #[arg(long)]
        baselines: bool,
        /// Write an SVG chart of quality against strong-call share here.
        #[arg(long)]
        chart: Option<PathBuf>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Also evaluate this trained model (from `tollgate train`).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Also train and evaluate the learned router leave-one-source-out:
        /// each source scored by a model that never saw it.
        #[arg(long)]
        cv: bool,
    },
    /// Train the learned router on labelled prompts (as for `eval`) and write
    /// the model file: logistic regression over hashed word n-grams and the
    /// heuristic features.
    Train {
        labels: PathBuf,
        /// Where to write the model (JSON).
        #[arg(long, short)]
        output: PathBuf,
        /// Tenant config whose classifier supplies the heuristic features (default: the example tenant).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        epochs: u32,
        /// log2 of the number of n-gram weights (8-16): 15 is 128 KiB of weights, 12 is 16 KiB.
        #[arg(long, default_value_t = tollgate_core::learned::DEFAULT_HASH_BITS)]
        hash_bits: u32,
    },
    /// Price token counts at a tenant's prices, as the hosts charge them.
    ///
    /// Prints {"model","input_tokens","output_tokens","micros","usd"}. The
    /// model is --model (provider/model or bare) or --tier's first model for
    /// --api. With --jsonl, reads lines {"id","tenant"?,"model" | "tier","api"?,
    /// "input_tokens","output_tokens","cached_input_tokens"?} on stdin and
    /// writes the same fields after "id" (and "tenant"); --config may then be
    /// repeated, each line naming its tenant.
    Price {
        /// Tenant config whose prices to use (default: the example tenant).
        #[arg(long)]
        config: Vec<PathBuf>,
        /// The model, e.g. openai/gpt-4o or claude-sonnet-4-5.
        #[arg(long, conflicts_with = "tier")]
        model: Option<String>,
        /// Price the first model of this tier that serves --api instead.
        #[arg(long)]
        tier: Option<String>,
        #[arg(long, value_enum, default_value = "openai")]
        api: Api,
        /// Prompt tokens, cached ones included.
        #[arg(long, default_value_t = 0)]
        input: u64,
        /// Completion tokens.
        #[arg(long, default_value_t = 0)]
        output: u64,
        /// Prompt tokens served from the provider's prompt cache.
        #[arg(long, default_value_t = 0)]
        cached_input: u64,
        /// Price JSON lines from stdin instead (see above).
        #[arg(long, conflicts_with_all = ["model", "tier"])]
        jsonl: bool,
    },
    /// Replay a request log offline through the core and report what routing
    /// and caching would have cost: before (always premium, and as logged),
    /// after, the saving, the tier mix and the cache hit rate.
    ///
    /// Each line: {"at", "tenant"?, "api"?, "request", "cache_control"?,
    /// "request_id"?, "source"?, "logged"?: {"model", "usage":
    /// {"input_tokens", "output_tokens"}} or {"cost_usd"}} (README).
    Simulate {
        /// The request log (JSONL).
        #[arg(long)]
        log: PathBuf,
        /// Tenant config; repeat for a log of several tenants (each line names its `tenant`).
        #[arg(long, required = true)]
        config: Vec<PathBuf>,
        /// Write an SVG chart of cumulative cost (as logged, always premium, routed) here.
        #[arg(long)]
        chart: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also print one row per request.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Feedback the router collected, for training.
    Feedback {
        #[command(subcommand)]
        command: FeedbackCommand,
    },
    /// Replay a workload through the core against a simulated provider and
    /// report decisions, cache hits and cost against always-premium.
    Replay {
        #[arg(long, default_value = "examples/workload.jsonl")]
        workload: PathBuf,
        /// tenant_id=config.json pairs; default: every examples/tenant*.json.
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// Print only the summary.
        #[arg(long)]
        quiet: bool,
        /// Write the per-request decisions as JSONL here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a tenant config (or, with --envoy, the Envoy filter's plugin
    /// configuration): exit 0, or print every error with its JSON path.
    Validate {
        file: PathBuf,
        /// The file is the Envoy filter's plugin configuration (envoy/README.md).
        #[arg(long)]
        envoy: bool,
    },
    /// Print the tenant config JSON Schema.
    Schema,
}

#[derive(Subcommand)]
enum FeedbackCommand {
    /// Join your request log (with the `request_id` of each response) and
    /// `GET /v1/feedback/export`'s lines into labelled prompts
    /// {"id","source","prompt","weak","strong"} for `tollgate train`.
    ///
    /// Cheapest tier resolved: weak 1, strong 1; cheapest tier unresolved:
    /// weak 0, strong 1; escalated and resolved: weak 0, strong 1; escalated
    /// from the tier below the premium one and still unresolved: weak 0,
    /// strong 0; anything else (served above the cheapest tier) is skipped,
    /// because the weak model's score is unknown, and counted.
    Labels {
        /// The request log (as for `simulate`), lines carrying `request_id`.
        #[arg(long)]
        log: PathBuf,
        /// What `GET /v1/feedback/export` returned (NDJSON).
        #[arg(long)]
        feedback: PathBuf,
        /// Tenant config whose tiers the export names (default: the example tenant).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where to write the labels (JSONL).
        #[arg(long, short)]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print the SHA-256 a key is stored under, and the KV key for its record.
    Hash { key: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tollgate: {message}");
            ExitCode::from(2)
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn load_config(path: Option<&Path>) -> Result<TenantConfig, String> {
    let Some(p) = path else {
        return TenantConfig::example().map_err(|e| format!("built-in example config: {e}"));
    };
    let mut config = TenantConfig::from_json(&read_file(p)?).map_err(|e| format!("{}: {e}", p.display()))?;
    if let Some(key) = config.classifier.model_key().map(str::to_owned) {
        // Offline, a model key is a file: next to the config, or a path as
        // written. The hosts read the same model from KV / the plugin
        // config, so the scores printed here are the ones they route by.
        let beside = p.parent().map(|d| d.join(&key)).filter(|f| f.is_file());
        let file = beside.unwrap_or_else(|| std::path::PathBuf::from(&key));
        let bytes = std::fs::read(&file).map_err(|e| {
            format!(
                "{}: classifier.model_key `{key}`: {e} (offline, the model is read from a file of that name next to the config)",
                p.display()
            )
        })?;
        let model =
            tollgate_core::learned::LinearRouter::from_json(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        config.classifier.attach_model(std::sync::Arc::new(model));
    }
    Ok(config)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn entropy() -> [u8; 16] {
    // Request ids only need to be unique, not secret: time and a counter.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
    out[8..].copy_from_slice(&(COUNTER.fetch_add(1, Ordering::Relaxed) ^ u64::from(std::process::id())).to_le_bytes());
    out
}

fn print_json(v: &Value) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    println!("{s}");
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Eval { labels, config, baselines, chart, json, model, cv } => {
            let config = load_config(config.as_deref())?;
            let options = eval::EvalOptions {
                baselines,
                chart: chart.as_deref(),
                as_json: json,
                model: model.as_deref(),
                cross_validate: cv,
            };
            eval::run(&config, &labels, &options)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Train { labels, output, config, epochs, hash_bits } => {
            let config = load_config(config.as_deref())?;
            eval::train(&config, &labels, &output, epochs, hash_bits)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Classify { text, jsonl, config } => {
            let config = load_config(config.as_deref())?;
            if jsonl {
                return jsonl_lines(|line| classify_line(&config, line));
            }
            let text = text.ok_or("give a prompt, or --jsonl")?;
            let v = classify_value(&config, &chat_body_for_prompt(&text), ApiFormat::OpenAi)?;
            print_json(&v)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Count { text, encoding, jsonl, request, api } => {
            let enc = Encoding::from_name(&encoding)
                .ok_or_else(|| format!("unknown encoding `{encoding}`; use o200k_base or cl100k_base"))?;
            if jsonl {
                return jsonl_lines(|line| {
                    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
                    let text = v.get("text").and_then(Value::as_str).ok_or("each line needs a string `text`")?;
                    Ok(
                        json!({"id": v.get("id").cloned().unwrap_or(Value::Null), "tokens": count::count_text(enc, text)}),
                    )
                });
            }
            if let Some(path) = request {
                let req = ChatRequest::parse(api.into(), &read_file(&path)?, usize::MAX).map_err(|e| e.to_string())?;
                let c = count::prompt_tokens(&req, &req.model);
                print_json(&serde_json::to_value(c).map_err(|e| e.to_string())?)?;
                return Ok(ExitCode::SUCCESS);
            }
            let text = match text {
                Some(t) => t,
                None => {
                    let mut s = String::new();
                    std::io::stdin().read_to_string(&mut s).map_err(|e| e.to_string())?;
                    s
                }
            };
            println!("{}", count::count_text(enc, &text));
            Ok(ExitCode::SUCCESS)
        }
        Command::Route { config, request, api, budget_state, now } => {
            let config = load_config(Some(&config))?;
            let body = read_file(&request)?;
            let mut state: BudgetState = match budget_state {
                Some(p) => serde_json::from_slice(&read_file(&p)?).map_err(|e| format!("budget state: {e}"))?,
                None => BudgetState::default(),
            };
            let v = route_offline(&config, api.into(), &body, &mut state, now.unwrap_or_else(now_secs));
            print_json(&v)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { command: ConfigCommand::Validate { file, envoy: true } } => {
            let bytes = read_file(&file)?;
            match tollgate_core::plugin::PluginConfig::from_json(&bytes) {
                Ok(cfg) => {
                    println!(
                        "{}: valid Envoy plugin configuration ({} tenants, {} API keys, budgets {:?}, cache {:?})",
                        file.display(),
                        cfg.tenants.len(),
                        cfg.api_keys.len(),
                        cfg.budgets,
                        cfg.cache
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in &errors.0 {
                        let path = if e.path.is_empty() { "(root)" } else { &e.path };
                        eprintln!("{}: {path}: {}", file.display(), e.message);
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Config { command: ConfigCommand::Validate { file, envoy: false } } => {
            let bytes = read_file(&file)?;
            match TenantConfig::from_json(&bytes) {
                Ok(cfg) => {
                    println!(
                        "{}: valid (tenant `{}`, {} tiers, {} budget limits)",
                        file.display(),
                        cfg.tenant_id,
                        cfg.routing.tiers.len(),
                        cfg.budgets.limits.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in &errors.0 {
                        let path = if e.path.is_empty() { "(root)" } else { &e.path };
                        eprintln!("{}: {path}: {}", file.display(), e.message);
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Config { command: ConfigCommand::Schema } => {
            print_json(&tollgate_core::config::json_schema())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Key { command: KeyCommand::Hash { key } } => {
            let hash = tollgate_core::auth::hash_api_key(&key);
            println!("{hash}");
            eprintln!("store the tenant record under KV key: {}", tollgate_core::auth::api_key_storage_key(&hash));
            Ok(ExitCode::SUCCESS)
        }
        Command::Price { config, model, tier, api, input, output, cached_input, jsonl } => {
            let configs = price::load_configs(&config)?;
            if jsonl {
                return jsonl_lines(|line| price::price_line(&configs, line));
            }
            let usage = Usage {
                input_tokens: input,
                output_tokens: output,
                cached_input_tokens: cached_input,
                ..Usage::default()
            };
            price::run_one(
                &configs,
                &price::Item { model: model.as_deref(), tier: tier.as_deref(), api: api.into(), usage },
            )
        }
        Command::Simulate { log, config, chart, json, verbose } => {
            simulate::run(
                &log,
                &config,
                &simulate::SimulateOptions { chart: chart.as_deref(), as_json: json, verbose },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Feedback { command: FeedbackCommand::Labels { log, feedback, config, output } } => {
            let config = load_config(config.as_deref())?;
            feedback::labels(&log, &feedback, &config, &output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { workload, tenants, quiet, out } => replay::run(&workload, &tenants, quiet, out.as_deref()),
    }
}

/// Process stdin line by line; a bad line gets an `error` line and a non-zero exit at the end.
fn jsonl_lines(mut f: impl FnMut(&str) -> Result<Value, String>) -> Result<ExitCode, String> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut failed = 0usize;
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = match f(&line) {
            Ok(v) => v,
            Err(message) => {
                failed += 1;
                let id =
                    serde_json::from_str::<Value>(&line).ok().and_then(|v| v.get("id").cloned()).unwrap_or(Value::Null);
                eprintln!("tollgate: line {}: {message}", n + 1);
                json!({"id": id, "error": message})
            }
        };
        writeln!(out, "{v}").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn chat_body_for_prompt(prompt: &str) -> Vec<u8> {
    json!({"model": engine::AUTO_MODELS[0], "messages": [{"role": "user", "content": prompt}]}).to_string().into_bytes()
}

fn classify_line(config: &TenantConfig, line: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let (body, api) = if let Some(prompt) = v.get("prompt").and_then(Value::as_str) {
        (chat_body_for_prompt(prompt), ApiFormat::OpenAi)
    } else if let Some(request) = v.get("request") {
        let api = match v.get("api").and_then(Value::as_str) {
            Some("anthropic") => ApiFormat::Anthropic,
            _ => ApiFormat::OpenAi,
        };
        (request.to_string().into_bytes(), api)
    } else {
        return Err("each line needs `prompt` (string) or `request` (chat body)".into());
    };
    let mut out = classify_value(config, &body, api)?;
    if let Value::Object(m) = &mut out {
        m.shift_insert(0, "id".into(), id);
    }
    Ok(out)
}

fn classify_value(config: &TenantConfig, body: &[u8], api: ApiFormat) -> Result<Value, String> {
    let req = ChatRequest::parse(api, body, usize::MAX).map_err(|e| e.to_string())?;
    let tokens = count::prompt_tokens(&req, &req.model).tokens;
    let c = engine::classify_request(&req, tokens, config);
    // The tier that would serve it, as `route` and the hosts pick it.
    let routing = &config.routing;
    let tier = routing
        .serving_tier(routing.tier_for_score(c.score), api)
        .and_then(|i| routing.tiers.get(i))
        .map(|t| t.name.clone());
    Ok(json!({"score": c.score, "tier": tier, "tokens": tokens, "reasons": c.reasons}))
}

/// Apply a budget op to the offline ledger, as a store would.
fn ledger_reply(state: &mut BudgetState, op: TenantOp, now: u64) -> Option<TenantReply> {
    match op {
        TenantOp::Budget(op) => Some(TenantReply::Budget(budget::apply(state, &op, now))),
        TenantOp::Outcome(_) => None,
    }
}

fn route_offline(config: &TenantConfig, api: ApiFormat, body: &[u8], state: &mut BudgetState, now: u64) -> Value {
    let inbound = Inbound {
        tenant_id: &config.tenant_id,
        api,
        body,
        cache_control: None,
        now,
        entropy: entropy(),
        key: None,
        user_header: None,
        tags_header: None,
    };
    let mut plan = match Plan::new(config, &inbound) {
        Ok(p) => p,
        Err(refused) => {
            return json!({"outcome": "refused", "status": refused.error.status, "error": serde_json::from_slice::<Value>(&refused.error.body()).unwrap_or(Value::Null)});
        }
    };
    let mut steps = Vec::new();
    let mut next = plan.start();
    let result = loop {
        next = match next {
            Next::LookupCache(key) => {
                steps.push(json!({"step": "lookup_cache", "key": key.0, "found": false}));
                plan.on_cache(None, None)
            }
            Next::CheckBudget(op) => {
                steps.push(json!({"step": "check_budget"}));
                let reply = ledger_reply(state, op, now);
                plan.on_budget_reply(reply)
            }
            Next::Reserve(op) => {
                let tokens = match &op {
                    TenantOp::Budget(LedgerOp::Reserve { request, .. }) => {
                        request.prompt_tokens.saturating_add(request.output_tokens)
                    }
                    _ => 0,
                };
                let reply = ledger_reply(state, op, now);
                let granted = matches!(reply, Some(TenantReply::Budget(LedgerReply::Granted { .. })));
                steps.push(json!({"step": "reserve", "tokens": tokens, "granted": granted}));
                plan.on_reserve_reply(reply)
            }
            // Escalation follows a provider's answer, which this never gets to.
            Next::Escalate(_) => break json!({"outcome": "escalate"}),
            Next::Forward(up) => {
                let body: Value = serde_json::from_slice(&up.body).unwrap_or(Value::Null);
                break json!({"outcome": "forward", "provider": up.target.provider, "model": up.target.model, "path": up.path, "strip_usage_chunk": up.strip_usage_chunk, "body": body});
            }
            Next::Respond(resp, _) => {
                let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
                break json!({"outcome": "respond", "status": resp.status, "body": body});
            }
        };
    };
    let headers: serde_json::Map<String, Value> =
        plan.trace.headers().into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    json!({
        "decision": serde_json::to_value(&plan).unwrap_or(Value::Null),
        "steps": steps,
        "result": result,
        "headers": headers,
    })
}
