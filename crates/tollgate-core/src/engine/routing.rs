//! Building a plan: parse, count, classify, and choose the tier and its
//! chain (with the escalation ladder, the downgrade chain and the cache plan).

use super::{Inbound, LocalResponse, Plan, Rung};
use crate::api::ApiFormat;
use crate::budget::{Amount, ReserveRequest};
use crate::cache::{self, CacheKey, ClientCacheControl};
use crate::classify::{self, Classification, PromptView, Turn, TurnRole};
use crate::config::{ModelRef, Routing, TenantConfig, Tier};
use crate::count::{self, PromptCount};
use crate::error::{ApiError, RequestError, TenantError};
use crate::escalation;
use crate::pricing::{self, ModelPrice};
use crate::request::{ChatRequest, Role};
use crate::trace::{CacheOutcome, DecisionTrace};
use crate::translate::{self, TranslationMode};
use serde::Serialize;
use serde_json::{Map, Value};

/// How the request's model was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// `tollgate/auto` or an allowed model: the classifier picks the tier.
    Auto,
    /// `tollgate/<tier>`: the client picked the tier.
    Tier,
    /// A pinned model: passed through unrouted.
    Pinned,
}

/// The cache's part in this request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CachePlan {
    /// Where a hit would be found and a fill written; None when bypassed.
    pub key: Option<CacheKey>,
    /// False under `Cache-Control: no-cache`: store, but do not serve.
    pub serve: bool,
    pub bypass: Option<String>,
    /// The doorkeeper has seen this key before (fills are admitted).
    pub seen_before: bool,
}

/// A request refused before planning finished.
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    pub error: ApiError,
    pub trace: DecisionTrace,
}

impl Refused {
    pub fn response(&self) -> LocalResponse {
        LocalResponse::error(&self.error, Some(&self.trace))
    }
}

/// `req_` and 32 hex digits.
pub fn request_id(entropy: [u8; 16]) -> String {
    format!("req_{}", cache::hex(&entropy))
}

/// The cap on metered built-in tool calls (`max_tool_calls`) when the
/// client sets none: what the request's hold covers.
pub const DEFAULT_MAX_TOOL_CALLS: u64 = 8;

/// Virtual model names that mean "let the router choose".
pub const AUTO_MODELS: &[&str] = &["tollgate/auto", "tollgate", "auto"];

/// Build the text view the classifier reads.
pub fn prompt_view_parts(request: &ChatRequest) -> (String, Vec<(TurnRole, &str)>) {
    let mut system = request.system.clone();
    let mut turns = Vec::with_capacity(request.messages.len());
    for m in &request.messages {
        match m.role {
            Role::System | Role::Developer => {
                if !system.is_empty() {
                    system.push('\n');
                }
                system.push_str(&m.text);
            }
            Role::User => turns.push((TurnRole::User, m.text.as_str())),
            Role::Assistant => turns.push((TurnRole::Assistant, m.text.as_str())),
            Role::Tool | Role::Function => turns.push((TurnRole::Tool, m.text.as_str())),
        }
    }
    (system, turns)
}

/// Classify a parsed request.
pub fn classify_request(request: &ChatRequest, tokens: u64, config: &TenantConfig) -> Classification {
    let (system, turn_parts) = prompt_view_parts(request);
    let turns: Vec<Turn<'_>> = turn_parts.iter().map(|&(role, text)| Turn { role, text }).collect();
    let view = PromptView {
        system: &system,
        turns: &turns,
        tool_count: request.tool_count,
        tokens: u32::try_from(tokens).unwrap_or(u32::MAX),
    };
    let heuristic = classify::classify(&view, &config.classifier);
    match config.classifier.learned_model() {
        Some(model) => {
            // The learned router reads what its training prompts were: the
            // user's text. Its features are the heuristic ones, unweighted.
            let text = turn_parts
                .iter()
                .filter(|(role, _)| *role == TurnRole::User)
                .map(|(_, t)| *t)
                .collect::<Vec<_>>()
                .join("\n");
            let values: Vec<f64> = heuristic.features.iter().map(|f| f.value).collect();
            let score = model.score(&text, &values);
            let mut reasons = vec![format!("learned router ({score:.3})")];
            reasons.extend(heuristic.reasons);
            reasons.truncate(classify::MAX_REASONS);
            Classification { score, reasons, features: heuristic.features }
        }
        None => heuristic,
    }
}

impl Plan {
    /// Parse, count, classify and route one request for `config`'s tenant.
    pub fn new(config: &TenantConfig, inbound: &Inbound<'_>) -> Result<Plan, Box<Refused>> {
        let mut trace = DecisionTrace::new(request_id(inbound.entropy));
        let refuse = |error: ApiError, trace: &DecisionTrace| Box::new(Refused { error, trace: trace.clone() });
        if config.tenant_id != inbound.tenant_id {
            let err = TenantError::InvalidConfig("it names another tenant".into());
            return Err(refuse(err.into(), &trace));
        }
        let request = ChatRequest::parse(inbound.api, inbound.body, config.limits.max_body_bytes)
            .map_err(|e| refuse(e.into(), &trace))?;

        // A built-in tool with a published per-call price is metered; any
        // other must be allowed by name, and is then not metered.
        let builtin = request.builtin_tools();
        let allowed = |t: &String| config.routing.builtin_tools.contains(t);
        if let Some(tool) = builtin.iter().find(|t| pricing::builtin_tool_price(t).is_none() && !allowed(t)) {
            let err = RequestError::Invalid {
                field: "tools".into(),
                message: format!(
                    "built-in tool `{tool}` has no published per-call price and is not enabled for this tenant (routing.builtin_tools): tollgate could not meter its calls"
                ),
            };
            return Err(refuse(err.into(), &trace));
        }
        // Metered calls are capped, the cap held at the dearest tool's price
        // and written into the request (`max_tool_calls`) when the client set
        // none, so the provider stops where the hold does.
        let dearest_call = builtin.iter().filter_map(|t| pricing::builtin_tool_price(t)).max();
        let client_tool_calls = request.raw_field("max_tool_calls").and_then(|v| v.trim().parse::<u64>().ok());
        let tool_calls_cap = dearest_call.map(|_| client_tool_calls.unwrap_or(DEFAULT_MAX_TOOL_CALLS));
        let tool_hold_micros = match (dearest_call, tool_calls_cap) {
            (Some(price), Some(cap)) => price.saturating_mul(cap),
            _ => 0,
        };
        let mut reach = Reach::new(&request, config.routing.translation);
        let first_count = count::prompt_tokens(&request, &request.model);
        if let Some(limit) = config.limits.max_prompt_tokens
            && first_count.tokens > limit
        {
            return Err(refuse(RequestError::PromptTooLong { tokens: first_count.tokens, limit }.into(), &trace));
        }
        let embeddings = request.api == ApiFormat::Embeddings;
        // Embeddings are not classified: there is no harder or easier one.
        let classification = if embeddings {
            Classification { score: 0.0, reasons: vec!["embeddings".to_owned()], features: Vec::new() }
        } else {
            classify_request(&request, first_count.tokens, config)
        };
        trace.score = Some(classification.score);
        trace.reasons = classification.reasons.clone();

        let routing = &config.routing;
        let model = request.model.as_str();
        let (route, tier_index, chain) = if let Some(pinned) = routing.pinned(model) {
            // Embedding models are the ones priced for input only.
            let embedding_model = config.price(&pinned.model).is_some_and(|p| p.output == 0);
            if embeddings != embedding_model {
                let err = RequestError::Invalid {
                    field: "model".into(),
                    message: if embeddings {
                        format!("pinned model `{pinned}` is not an embedding model")
                    } else {
                        format!("pinned model `{pinned}` is an embedding model: send it to /v1/embeddings")
                    },
                };
                return Err(refuse(err.into(), &trace));
            }
            if let Err(why) = reach.check(pinned) {
                let message = if reach.mode == TranslationMode::Off || why.is_empty() {
                    format!("pinned model `{pinned}` does not speak the {} API", request.api.as_str())
                } else {
                    format!("pinned model `{pinned}` cannot take this request: {why}")
                };
                return Err(refuse(RequestError::NoModelForRequest { message }.into(), &trace));
            }
            (RouteKind::Pinned, None, vec![pinned.clone()])
        } else if embeddings {
            // A virtual name takes the chain; a model of the chain named
            // directly goes first, the rest of the chain behind it.
            let named = routing.embeddings.iter().position(|m| m.model == model || m.to_string() == model);
            if !(AUTO_MODELS.contains(&model) || named.is_some()) {
                let err = RequestError::EmbeddingModelNotAllowed { model: model.to_owned() };
                return Err(refuse(err.into(), &trace));
            }
            if routing.embeddings.is_empty() {
                let err = RequestError::Invalid {
                    field: "model".into(),
                    message: "this tenant has no embedding models (routing.embeddings)".into(),
                };
                return Err(refuse(err.into(), &trace));
            }
            let mut chain = routing.embeddings.clone();
            if let Some(i) = named {
                let first = chain.remove(i);
                chain.insert(0, first);
            }
            (RouteKind::Auto, None, chain)
        } else {
            let (route, wanted) = if AUTO_MODELS.contains(&model) || routing.is_allowed(model) {
                (RouteKind::Auto, routing.tier_for_score(classification.score))
            } else if let Some(i) = model.strip_prefix("tollgate/").and_then(|t| routing.tier_index(t)) {
                (RouteKind::Tier, i)
            } else {
                let example_tier = routing.tiers.first().map(|t| t.name.clone()).unwrap_or_default();
                return Err(refuse(
                    RequestError::ModelNotAllowed { model: model.to_owned(), example_tier }.into(),
                    &trace,
                ));
            };
            // The wanted tier, else the nearest one that can take the
            // request, preferring more capable ones.
            let order = (wanted..routing.tiers.len()).chain((0..wanted.min(routing.tiers.len())).rev());
            let mut skips: Vec<String> = Vec::new();
            let mut found = None;
            for i in order {
                let Some(t) = routing.tiers.get(i) else { continue };
                let mut tier_skips = Vec::new();
                let chain = reach.chain(routing, t, &mut tier_skips);
                for skip in tier_skips {
                    if !skips.contains(&skip) {
                        skips.push(skip);
                    }
                }
                if !chain.is_empty() {
                    found = Some((i, chain));
                    break;
                }
            }
            let Some((i, chain)) = found else {
                let message = if skips.is_empty() {
                    format!("this tenant has no models for the {} API", request.api.as_str())
                } else {
                    format!("no model of this tenant can take this request: {}", skips.join("; "))
                };
                return Err(refuse(RequestError::NoModelForRequest { message }.into(), &trace));
            };
            trace.reasons.extend(skips.iter().cloned());
            if i != wanted {
                // Say so, rather than serve another tier silently.
                let name = |k: usize| routing.tiers.get(k).map_or("?", |t| t.name.as_str());
                let why = if skips.is_empty() {
                    format!("has no model for the {} API", request.api.as_str())
                } else {
                    "cannot take this request".to_owned()
                };
                trace.reasons.push(format!("tier {} {why}: served by tier {}", name(wanted), name(i)));
            }
            (route, Some(i), chain)
        };
        let tier = match (embeddings, route) {
            (true, RouteKind::Auto) => Some("embeddings".to_owned()),
            _ => tier_index.and_then(|i| routing.tiers.get(i)).map(|t| t.name.clone()),
        };
        // Only the classifier's choices are second-guessed: a client that
        // named a tier or a model gets what it asked for.
        let ladder: Vec<Rung> = match (route, tier_index) {
            (RouteKind::Auto, Some(i)) if config.escalation.enabled => routing
                .tiers
                .iter()
                .skip(i + 1)
                .map(|t| {
                    let chain = reach.chain(routing, t, &mut Vec::new());
                    Rung { name: t.name.clone(), price: chain_price(config, &chain), chain }
                })
                .collect(),
            _ => Vec::new(),
        };
        let downgrade_chain: Vec<ModelRef> = match (route, tier_index) {
            (RouteKind::Pinned, _) | (_, Some(0)) | (_, None) => Vec::new(),
            _ => routing
                .tiers
                .iter()
                .map(|t| reach.chain(routing, t, &mut Vec::new()))
                .find(|c| !c.is_empty())
                .unwrap_or_default(),
        };

        // Recount only if the routed model counts differently from the one asked for.
        let primary = chain.first().map(|m| m.model.clone()).unwrap_or_default();
        let prompt = if count::same_counting(count::method_for(request.api, &primary), first_count.method) {
            PromptCount { method: count::method_for(request.api, &primary), ..first_count }
        } else {
            count::prompt_tokens(&request, &primary)
        };
        // An embedding has no output tokens.
        let output_cap = if embeddings {
            0
        } else {
            request
                .max_output_tokens
                .unwrap_or(config.budgets.default_output_reservation)
                .saturating_mul(request.choices)
        };

        let wants_json = escalation::wants_json(&request);
        let cc = ClientCacheControl::parse(inbound.cache_control);
        let cache_plan = match cache::bypass_reason(&config.cache, &request, cc) {
            Some(b) => CachePlan { key: None, serve: false, bypass: Some(bypass_name(b)), seen_before: false },
            None => {
                let target = chain.first();
                let key = target.map(|t| CacheKey::derive(&config.tenant_id, t.provider, &t.model, &request));
                let bypass = cc.no_cache.then(|| "no_cache".to_owned());
                // `no-cache` asks for a fresh answer; storing it needs no
                // second sighting. Nor does an embedding: deterministic, and
                // re-embedding the same chunks is what it is cached for.
                let seen_before = !config.cache.doorkeeper || cc.no_cache || embeddings;
                CachePlan { key, serve: !cc.no_cache, bypass, seen_before }
            }
        };
        trace.route = match route {
            RouteKind::Auto => "auto",
            RouteKind::Tier => "tier",
            RouteKind::Pinned => "pinned",
        };
        trace.tier = tier.clone();
        trace.model = chain.first().map(ToString::to_string);
        trace.cache = cache_plan.bypass.clone().map(CacheOutcome::Bypass);

        let scopes = request_scopes(config, inbound, &request).map_err(|e| refuse(e.into(), &trace))?;
        let attribution = crate::outcomes::Attribution {
            model: String::new(),
            key: inbound.key.map(|k| k.id.clone()),
            user: scopes.user.clone().or_else(|| end_user(inbound, &request).filter(|u| u.len() <= MAX_USER_ID)),
            tags: request_tags(inbound, &request).map_err(|e| refuse(e.into(), &trace))?,
        };
        let price = chain_price(config, &chain);
        let downgrade_price = chain_price(config, &downgrade_chain);
        let reserve_request = price.map(|price| ReserveRequest {
            scopes: scopes.clone(),
            id: trace.request_id.clone(),
            prompt_tokens: prompt.tokens,
            output_tokens: output_cap,
            price,
            downgrade_price,
            extra_micros: tool_hold_micros,
        });
        if let Some(r) = &reserve_request {
            trace.cost_micros =
                Some(r.price.estimate_micros(r.prompt_tokens, r.output_tokens).saturating_add(r.extra_micros));
        }

        let mut prices: Vec<(String, Option<ModelPrice>)> = Vec::new();
        let models = chain.iter().chain(&downgrade_chain).chain(ladder.iter().flat_map(|r| &r.chain));
        for m in models {
            if !prices.iter().any(|(name, _)| *name == m.model) {
                prices.push((m.model.clone(), config.price(&m.model)));
            }
        }

        let client_echo = reach.body.as_ref().filter(|_| request.api == ApiFormat::Responses).map(|b| {
            b.iter()
                .filter(|(k, v)| translate::RESPONSES_ECHO.contains(&k.as_str()) && !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        });
        let translations = reach.into_translations();
        Ok(Plan {
            request_id: trace.request_id.clone(),
            tenant_id: config.tenant_id.clone(),
            api: request.api,
            requested_model: request.model.clone(),
            route,
            tier,
            score: classification.score,
            reasons: classification.reasons,
            prompt,
            output_cap,
            active_chain: chain.clone(),
            chain,
            downgrade_chain,
            cache: cache_plan,
            trace,
            on_exhausted: config.budgets.on_exhausted,
            budgets_enforced: !config.budgets.limits.is_empty() || !scopes.is_empty(),
            scopes,
            attribution,
            premium_price: (!embeddings)
                .then(|| config.routing.tiers.last())
                .flatten()
                .and_then(|tier| config.routing.tier_chain(tier, request.api).first().cloned())
                .and_then(|m| config.price(&m.model)),
            store_failure: config.budgets.store_failure,
            cache_ttl: config.cache.ttl_seconds,
            request,
            pending_hit: None,
            granted: None,
            attempt: 0,
            reserve_request,
            only_timeouts: true,
            max_entry_bytes: config.cache.max_entry_bytes,
            hit_saved_micros: None,
            escalation: config.escalation.clone(),
            ladder,
            escalations: 0,
            prior: Amount::default(),
            held: None,
            served_held: false,
            wants_json,
            cooldown: config.routing.cooldown,
            cooling: Vec::new(),
            order: Vec::new(),
            skipped: Vec::new(),
            budgets: config.budgets.clone(),
            cache_settings: config.cache.clone(),
            prices,
            reserve_out: None,
            answer: None,
            duties: Vec::new(),
            closed: false,
            client_echo,
            translations,
            tool_hold_micros,
            next_sequence: 0,
            // Written upstream only when the client set no cap of its own.
            tool_calls_cap: tool_calls_cap.filter(|_| client_tool_calls.is_none()),
        })
    }
}

/// Which models can take this request, and in which API: natively, or
/// translated under the tenant's `routing.translation`. Each other API's
/// translation is made once, when a model first needs it.
struct Reach<'a> {
    request: &'a ChatRequest,
    mode: TranslationMode,
    /// The body as JSON (built for the first translation).
    body: Option<Body>,
    translated: Vec<(ApiFormat, Result<Body, String>)>,
}

/// A request body as JSON.
type Body = Map<String, Value>;

impl<'a> Reach<'a> {
    fn new(request: &'a ChatRequest, mode: TranslationMode) -> Self {
        Reach { request, mode, body: None, translated: Vec::new() }
    }

    /// Ok when `model` can take the request; else why not (empty: its
    /// provider does not speak the API and translation is off).
    fn check(&mut self, model: &ModelRef) -> Result<(), String> {
        let api = self.request.api;
        let to = match translate::provider_api(api, model.provider) {
            Some(to) if to == api => return Ok(()),
            Some(_) if self.mode == TranslationMode::Off => return Err(String::new()),
            Some(to) => to,
            None => return Err(String::new()),
        };
        if !self.translated.iter().any(|(a, _)| *a == to) {
            let request = self.request;
            let body = self.body.get_or_insert_with(|| request.body_map());
            let result = translate::translate_request(api, to, body);
            self.translated.push((to, result));
        }
        match self.translated.iter().find(|(a, _)| *a == to).map(|(_, r)| r) {
            Some(Ok(_)) => Ok(()),
            Some(Err(why)) => Err(why.clone()),
            None => Err(String::new()),
        }
    }

    /// `tier`'s chain for this request: its chain under the tenant's
    /// `routing.translation` ([`Routing::tier_chain`]), less each model that
    /// cannot express the request, noted in `skips`.
    fn chain(&mut self, routing: &Routing, tier: &Tier, skips: &mut Vec<String>) -> Vec<ModelRef> {
        let mut chain = routing.tier_chain(tier, self.request.api);
        chain.retain(|model| match self.check(model) {
            Ok(()) => true,
            Err(why) => {
                if !why.is_empty() {
                    skips.push(format!("skipped {model}: {why}"));
                }
                false
            }
        });
        chain
    }

    /// The successful translations, for the plan's forwarded bodies.
    fn into_translations(self) -> Vec<(ApiFormat, Body)> {
        self.translated.into_iter().filter_map(|(api, r)| r.ok().map(|body| (api, body))).collect()
    }
}

fn chain_price(config: &TenantConfig, chain: &[ModelRef]) -> Option<ModelPrice> {
    let mut best: Option<ModelPrice> = None;
    for m in chain {
        let p = config.price(&m.model)?;
        best = Some(match best {
            None => p,
            Some(b) => ModelPrice {
                input: b.input.max(p.input),
                cached_input: b.cached_input.max(p.cached_input),
                output: b.output.max(p.output),
            },
        });
    }
    best
}

fn bypass_name(b: cache::Bypass) -> String {
    match b {
        cache::Bypass::Disabled => "disabled",
        cache::Bypass::Sampled => "sampled",
        cache::Bypass::NoStore => "no_store",
        cache::Bypass::MultipleChoices => "multiple_choices",
    }
    .to_owned()
}

/// The levels below the tenant `request` is charged at: its key, when the
/// key's record sets limits, and its end user, when the tenant limits
/// users. The user is the tenant's header if it names one and the request
/// has it, else the body's `safety_identifier` or `user` (OpenAI, Responses,
/// embeddings) or `metadata.user_id` (Anthropic).
fn request_scopes(
    config: &TenantConfig,
    inbound: &Inbound<'_>,
    request: &ChatRequest,
) -> Result<crate::budget::scope::Scopes, RequestError> {
    use crate::budget::scope::{MAX_USER_ID_BYTES, OVERFLOW_USER, Scopes};
    let key = inbound.key.filter(|k| !k.limits.is_empty()).map(|k| Box::new(k.clone()));
    let Some(users) = config.budgets.users.as_ref().filter(|u| u.limits_anyone()) else {
        return Ok(Scopes { key, user: None });
    };
    let field = match (inbound.user_header.map(str::trim).filter(|v| !v.is_empty()), request.api) {
        (Some(_), _) => users.header.clone().unwrap_or_default(),
        (None, ApiFormat::Anthropic) => "metadata.user_id".to_owned(),
        (None, _) if request.raw_field("safety_identifier").is_some() => "safety_identifier".to_owned(),
        (None, _) => "user".to_owned(),
    };
    let user = end_user(inbound, request);
    if let Some(u) = &user
        && (u.len() > MAX_USER_ID_BYTES || u == OVERFLOW_USER)
    {
        return Err(RequestError::Invalid {
            field,
            message: format!("an end-user id is at most {MAX_USER_ID_BYTES} bytes, and not `{OVERFLOW_USER}`"),
        });
    }
    Ok(Scopes { key, user })
}

/// The longest end-user id recorded for a tenant that does not limit users
/// (a longer one is refused only where users are limited).
const MAX_USER_ID: usize = crate::budget::scope::MAX_USER_ID_BYTES;

/// The end user a request names: the tenant's header if it has it, else
/// the body's `safety_identifier` or `user` (OpenAI, Responses,
/// embeddings) or `metadata.user_id` (Anthropic); None for none or empty.
fn end_user(inbound: &Inbound<'_>, request: &ChatRequest) -> Option<String> {
    let string_field = |raw: Option<&str>| raw.and_then(|v| serde_json::from_str::<String>(v).ok());
    let user = match inbound.user_header.map(str::trim).filter(|v| !v.is_empty()) {
        Some(value) => Some(value.to_owned()),
        None => match request.api {
            ApiFormat::Anthropic => {
                let metadata: Option<Map<String, Value>> =
                    request.raw_field("metadata").and_then(|v| serde_json::from_str(v).ok());
                metadata.and_then(|m| m.get("user_id").and_then(Value::as_str).map(str::to_owned))
            }
            _ => {
                string_field(request.raw_field("safety_identifier")).or_else(|| string_field(request.raw_field("user")))
            }
        },
    };
    user.filter(|u| !u.is_empty())
}

/// The request's tags: the `x-tollgate-tags` header and the body's
/// `metadata.tollgate_tags` (taken out of the body when it was parsed, so
/// no provider sees it), comma-separated; at most [`super::MAX_TAGS`]
/// distinct ones.
fn request_tags(inbound: &Inbound<'_>, request: &ChatRequest) -> Result<Vec<String>, RequestError> {
    use super::{MAX_TAG_BYTES, MAX_TAGS, TAGS_HEADER};
    let mut sources: Vec<(String, String)> = Vec::new();
    if let Some(header) = inbound.tags_header {
        sources.push((TAGS_HEADER.to_owned(), header.to_owned()));
    }
    if let Some(tags) = &request.metadata_tags {
        let Some(text) = tags.as_str() else {
            return Err(RequestError::Invalid {
                field: "metadata.tollgate_tags".into(),
                message: "must be a string of comma-separated tags".into(),
            });
        };
        sources.push(("metadata.tollgate_tags".to_owned(), text.to_owned()));
    }
    let mut tags: Vec<String> = Vec::new();
    for (field, text) in sources {
        for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.:=/".contains(c);
            if tag.len() > MAX_TAG_BYTES || !tag.chars().all(allowed) {
                return Err(RequestError::Invalid {
                    field,
                    message: format!(
                        "a tag is 1 to {MAX_TAG_BYTES} letters, digits or `_ - . : = /`; got `{}`",
                        tag.chars().take(80).collect::<String>()
                    ),
                });
            }
            if !tags.iter().any(|t| t == tag) {
                tags.push(tag.to_owned());
            }
        }
        if tags.len() > MAX_TAGS {
            return Err(RequestError::Invalid { field, message: format!("at most {MAX_TAGS} tags per request") });
        }
    }
    Ok(tags)
}
