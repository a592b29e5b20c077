//! The per-request decision, as a state machine the hosts drive.
//!
//! The core never does I/O. [`Plan::new`] parses, counts, classifies and
//! routes; from then on every method returns a [`Next`] step telling the
//! host what to do (look something up, reserve budget, forward, respond),
//! and the host feeds the result back in. Both hosts run exactly this code,
//! so they make the same decisions; only the I/O differs.
//!
//! ```text
//! Plan::new ─► start ─► LookupCache ─► on_cache ─┬─► Respond (hit)
//!                  │                              ├─► CheckBudget ─► on_budget_check ─► Respond
//!                  └──────────────► Reserve ◄─────┘
//!                                     │ on_reserve
//!                                     ▼
//!                                  Forward ─► on_upstream_failure ─► Forward (fallback) | Respond
//!                                     │ response complete
//!                                     ▼
//!                                  finish ─► Settlement + optional cache fill
//! ```
//!
//! Escalation (off unless the tenant turns it on) adds one loop: a complete
//! JSON answer from a cheaper tier goes through [`Plan::review`] before
//! `finish`, and a tier whose every model failed goes through
//! `on_upstream_failure`; either may return [`Next::Escalate`], after which
//! the host applies the settlement and calls [`Plan::escalate`], which
//! reserves for and forwards to the next tier. The unresolved answer is kept
//! in the plan, so if the next tier fails too the client still gets it.

use crate::api::ApiFormat;
use crate::budget::{Amount, Granted, ReserveRequest};
use crate::cache::{self, CacheEntry, CacheKey, ClientCacheControl, Doorkeeper, NotAdmitted};
use crate::classify::{self, Classification, PromptView, Turn, TurnRole};
use crate::config::{FailureMode, ModelRef, OnExhausted, TenantConfig};
use crate::cooldown::{CooldownSettings, CooldownUpdate, Cooldowns};
use crate::count::{self, PromptCount};
use crate::error::{ApiError, BudgetError, RequestError, TenantError, UpstreamError};
use crate::escalation::{self, EscalationSettings, Signal};
use crate::pricing::ModelPrice;
use crate::request::{ChatRequest, Rewrite, Role};
use crate::response::{self, ResponseSummary, Usage};
use crate::trace::{CacheOutcome, DecisionTrace};
use serde::Serialize;

/// What the host hands in for one request.
#[derive(Clone, Copy, Debug)]
pub struct Inbound<'a> {
    /// The tenant the API key authenticated as (never a client header).
    /// A config that names another tenant is refused.
    pub tenant_id: &'a str,
    pub api: ApiFormat,
    pub body: &'a [u8],
    /// The client's `Cache-Control` header, if any.
    pub cache_control: Option<&'a str>,
    /// Unix seconds, from the host's clock.
    pub now: u64,
    /// 16 random bytes from the host, for the request id.
    pub entropy: [u8; 16],
}

/// A response the host sends without calling a provider.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// An error response with the trace headers of `trace` (if any).
    pub fn error(err: &ApiError, trace: Option<&DecisionTrace>) -> LocalResponse {
        let mut headers = err.headers();
        if let Some(t) = trace {
            headers.extend(t.headers());
        }
        LocalResponse { status: err.status, headers, body: err.body() }
    }
}

/// What to do with the budget hold when a request ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Settlement {
    /// Drop the hold; nothing was spent.
    Release { id: String },
    /// Replace the hold with the actual spend.
    Charge { id: String, amount: Amount },
}

impl Settlement {
    /// The ledger operation that applies this settlement.
    pub fn to_op(&self, budgets: &crate::config::Budgets) -> crate::budget::LedgerOp {
        use crate::budget::LedgerOp;
        match self {
            Settlement::Release { id } => LedgerOp::Release { budgets: budgets.clone(), id: id.clone() },
            Settlement::Charge { id, amount } => {
                LedgerOp::Settle { budgets: budgets.clone(), id: id.clone(), amount: *amount }
            }
        }
    }
}

/// A call to a provider.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Upstream {
    pub target: ModelRef,
    pub api: ApiFormat,
    /// Path on the provider's base URL.
    pub path: &'static str,
    #[serde(skip)]
    pub body: Vec<u8>,
    /// 0 for the first model of the chain, then 1, 2, … for fallbacks.
    pub attempt: usize,
    /// The router asked an OpenAI stream for a usage chunk the client did not
    /// ask for; strip it on the way back (see `response::StreamObserver`).
    pub strip_usage_chunk: bool,
}

/// The host's next step.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Send this response; with a settlement to apply if budget was held.
    Respond(LocalResponse, Option<Settlement>),
    /// Get this key from the cache, then call [`Plan::on_cache`].
    LookupCache(CacheKey),
    /// Apply [`crate::budget::LedgerOp::Check`] where the tenant's budget
    /// state lives, then pass the answer to [`Plan::on_budget_check`].
    CheckBudget,
    /// Apply [`crate::budget::LedgerOp::Reserve`] with this request where the
    /// tenant's budget state lives, then call [`Plan::on_reserve`]. A
    /// [`Settlement`] later becomes `LedgerOp::Settle` or `LedgerOp::Release`.
    Reserve(ReserveRequest),
    /// Send this request to the provider.
    Forward(Upstream),
    /// The answer (or the whole tier) looked unresolved and the request
    /// climbs to the next tier: apply the settlement of the attempt that
    /// ended (a charge for an answer, a release for a failed tier), then
    /// call [`Plan::escalate`]. Nothing has reached the client yet.
    Escalate(Option<Settlement>),
}

/// What the budget store said to a [`Next::CheckBudget`].
#[derive(Clone, Debug, PartialEq)]
pub enum BudgetCheck {
    /// Nothing is exhausted.
    Clear,
    /// A limit is reached ([`crate::budget::exhausted`]'s answer).
    Exhausted(BudgetError),
    /// The store could not be reached.
    StoreUnavailable,
}

impl From<Option<BudgetError>> for BudgetCheck {
    fn from(exhausted: Option<BudgetError>) -> Self {
        exhausted.map_or(BudgetCheck::Clear, BudgetCheck::Exhausted)
    }
}

/// What the budget store said.
#[derive(Clone, Debug, PartialEq)]
pub enum ReserveOutcome {
    Granted(Granted),
    Refused(BudgetError),
    /// The store could not be reached.
    StoreUnavailable,
}

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

/// A cache write the host should perform.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheFill {
    pub key: CacheKey,
    pub value: Vec<u8>,
    pub ttl_seconds: u64,
}

/// What to do once the provider's response has ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    pub settlement: Option<Settlement>,
    pub cache_fill: Option<CacheFill>,
    pub not_cached: Option<NotAdmitted>,
    pub usage: Option<Usage>,
    pub cost_micros: u64,
}

/// One request's routing decision and progress.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub request_id: String,
    pub tenant_id: String,
    pub api: ApiFormat,
    pub requested_model: String,
    pub route: RouteKind,
    pub tier: Option<String>,
    pub score: f64,
    pub reasons: Vec<String>,
    pub prompt: PromptCount,
    /// Output tokens held: the client's cap (× choices) or the tenant default.
    pub output_cap: u64,
    pub chain: Vec<ModelRef>,
    /// The cheapest tier's chain, used when the soft budget threshold is crossed.
    pub downgrade_chain: Vec<ModelRef>,
    pub cache: CachePlan,
    pub trace: DecisionTrace,
    #[serde(skip)]
    request: ChatRequest,
    #[serde(skip)]
    on_exhausted: OnExhausted,
    #[serde(skip)]
    budgets_enforced: bool,
    #[serde(skip)]
    store_failure: FailureMode,
    #[serde(skip)]
    cache_ttl: u64,
    #[serde(skip)]
    pending_hit: Option<CacheEntry>,
    #[serde(skip)]
    granted: Option<Granted>,
    #[serde(skip)]
    active_chain: Vec<ModelRef>,
    #[serde(skip)]
    attempt: usize,
    #[serde(skip)]
    reserve_request: Option<ReserveRequest>,
    /// Every attempt so far failed by timeout (for 503 rather than 502).
    #[serde(skip)]
    only_timeouts: bool,
    #[serde(skip)]
    max_entry_bytes: usize,
    /// What the cached answer served to this request originally cost.
    #[serde(skip)]
    hit_saved_micros: Option<u64>,
    #[serde(skip)]
    escalation: EscalationSettings,
    /// The tiers above the routed one, cheapest first, with their chains for
    /// this API (empty chain: the tier has no model for it) and prices.
    #[serde(skip)]
    ladder: Vec<Rung>,
    /// Escalations made so far.
    #[serde(skip)]
    escalations: u32,
    /// Tokens and dollars of the attempts before the current one, already
    /// charged to their own holds; the logical request's totals include them.
    #[serde(skip)]
    prior: Amount,
    /// The best unresolved answer so far, returned if the climb fails.
    #[serde(skip)]
    held: Option<HeldAnswer>,
    /// The client got the held answer rather than the last attempt's.
    #[serde(skip)]
    served_held: bool,
    #[serde(skip)]
    wants_json: bool,
    /// The tenant's `routing.cooldown` (None: off).
    #[serde(skip)]
    cooldown: Option<CooldownSettings>,
    /// Models of this request's chains that were cooling down when the plan
    /// consulted the host's table ([`Plan::consult_cooldowns`]).
    #[serde(skip)]
    cooling: Vec<ModelRef>,
    /// The order in which `active_chain` is tried (indexes into it): the
    /// chain's order, with cooling models moved behind the others. Set when
    /// a chain's first attempt is forwarded.
    #[serde(skip)]
    order: Vec<usize>,
    /// Cooling models passed over so far, in every chain this request tried.
    #[serde(skip)]
    skipped: Vec<ModelRef>,
}

/// A tier a request can escalate to.
#[derive(Clone, Debug)]
struct Rung {
    name: String,
    chain: Vec<ModelRef>,
    price: Option<ModelPrice>,
}

/// An answer kept back while a stronger tier is asked.
#[derive(Clone, Debug)]
struct HeldAnswer {
    status: u16,
    body: Vec<u8>,
    signal: Signal,
    tier: Option<String>,
    model: String,
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

        let first_count = count::prompt_tokens(&request, &request.model);
        if let Some(limit) = config.limits.max_prompt_tokens
            && first_count.tokens > limit
        {
            return Err(refuse(RequestError::PromptTooLong { tokens: first_count.tokens, limit }.into(), &trace));
        }
        let classification = classify_request(&request, first_count.tokens, config);
        trace.score = Some(classification.score);
        trace.reasons = classification.reasons.clone();

        let routing = &config.routing;
        let model = request.model.as_str();
        let (route, tier_index, chain) = if let Some(pinned) = routing.pinned(model) {
            if pinned.provider.api() != request.api {
                return Err(refuse(
                    RequestError::Invalid {
                        field: "model".into(),
                        message: format!("pinned model `{pinned}` does not speak the {} API", request.api.as_str()),
                    }
                    .into(),
                    &trace,
                ));
            }
            (RouteKind::Pinned, None, vec![pinned.clone()])
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
            let found = routing
                .serving_tier(wanted, request.api)
                .and_then(|i| routing.tiers.get(i).map(|t| (i, t.chain(request.api).cloned().collect::<Vec<_>>())));
            let Some((i, chain)) = found else {
                return Err(refuse(
                    RequestError::Invalid {
                        field: "model".into(),
                        message: format!("this tenant has no models for the {} API", request.api.as_str()),
                    }
                    .into(),
                    &trace,
                ));
            };
            (route, Some(i), chain)
        };
        let tier = tier_index.and_then(|i| routing.tiers.get(i)).map(|t| t.name.clone());
        // Only the classifier's choices are second-guessed: a client that
        // named a tier or a model gets what it asked for.
        let ladder: Vec<Rung> = match (route, tier_index) {
            (RouteKind::Auto, Some(i)) if config.escalation.enabled => routing
                .tiers
                .iter()
                .skip(i + 1)
                .map(|t| {
                    let chain: Vec<ModelRef> = t.chain(request.api).cloned().collect();
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
                .map(|t| t.chain(request.api).cloned().collect::<Vec<_>>())
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
        let output_cap = request
            .max_output_tokens
            .unwrap_or(config.budgets.default_output_reservation)
            .saturating_mul(request.choices);

        let wants_json = escalation::wants_json(&request);
        let cc = ClientCacheControl::parse(inbound.cache_control);
        let cache_plan = match cache::bypass_reason(&config.cache, &request, cc) {
            Some(b) => CachePlan { key: None, serve: false, bypass: Some(bypass_name(b)), seen_before: false },
            None => {
                let target = chain.first();
                let key = target.map(|t| CacheKey::derive(&config.tenant_id, t.provider, &t.model, &request));
                let bypass = cc.no_cache.then(|| "no_cache".to_owned());
                // `no-cache` asks for a fresh answer; storing it needs no second sighting.
                CachePlan { key, serve: !cc.no_cache, bypass, seen_before: !config.cache.doorkeeper || cc.no_cache }
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

        let price = chain_price(config, &chain);
        let downgrade_price = chain_price(config, &downgrade_chain);
        let reserve_request = price.map(|price| ReserveRequest {
            id: trace.request_id.clone(),
            prompt_tokens: prompt.tokens,
            output_tokens: output_cap,
            price,
            downgrade_price,
        });
        if let Some(r) = &reserve_request {
            trace.cost_micros = Some(r.price.estimate_micros(r.prompt_tokens, r.output_tokens));
        }

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
            budgets_enforced: !config.budgets.limits.is_empty(),
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
        })
    }

    /// Before [`Plan::start`]: note which models of this request's chains are
    /// cooling down in the host's `table` at `now`, for this tenant's
    /// `routing.cooldown`. While another model of a chain can be tried, they
    /// are passed over (tried last, after every other model failed); when
    /// every model of a chain is cooling down it is tried in its own order,
    /// so a chain never goes dark. Nothing happens for a tenant without
    /// cooldowns.
    pub fn consult_cooldowns(&mut self, table: &Cooldowns, now: u64) {
        let Some(settings) = self.cooldown else { return };
        if table.is_empty() {
            return;
        }
        let chains = std::iter::once(&self.active_chain)
            .chain(std::iter::once(&self.downgrade_chain))
            .chain(self.ladder.iter().map(|r| &r.chain));
        let mut cooling: Vec<ModelRef> = Vec::new();
        for model in chains.flatten() {
            if !cooling.contains(model) && table.cooling_until(model, now, &settings).is_some() {
                cooling.push(model.clone());
            }
        }
        self.cooling = cooling;
    }

    /// After an attempt at `upstream` ended: what the host's [`Cooldowns`]
    /// should learn from it, for [`Cooldowns::apply`]. `status` is the
    /// provider's HTTP status (None: a timeout or a connection failure),
    /// `retry_after` its `retry-after` header, `now` the host's clock.
    /// Failed means what [`Plan::on_upstream_failure`] falls back on; any
    /// other status is an answer. Call it once per attempt, before or after
    /// telling the plan; it changes nothing in the plan.
    pub fn attempt_ended(
        &self,
        upstream: &Upstream,
        status: Option<u16>,
        retry_after: Option<&str>,
        now: u64,
    ) -> CooldownUpdate {
        CooldownUpdate::for_attempt(self.cooldown, &upstream.target, status, retry_after, now)
    }

    /// The cooling models this request passed over (for metrics).
    pub fn cooldown_skips(&self) -> &[ModelRef] {
        &self.skipped
    }

    /// The parsed request.
    pub fn request(&self) -> &ChatRequest {
        &self.request
    }

    /// The first step.
    pub fn start(&mut self) -> Next {
        match (&self.cache.key, self.cache.serve) {
            (Some(key), true) => Next::LookupCache(key.clone()),
            _ => self.reserve_step(),
        }
    }

    fn reserve_step(&mut self) -> Next {
        match (&self.reserve_request, self.budgets_enforced) {
            (Some(r), true) => Next::Reserve(r.clone()),
            // No limits configured: nothing to hold, go straight upstream.
            _ => self.forward(0),
        }
    }

    /// The cache answered. `doorkeeper` is the host's, when the tenant uses one.
    pub fn on_cache(&mut self, found: Option<CacheEntry>, doorkeeper: Option<&mut Doorkeeper>) -> Next {
        match found {
            // An entry that cannot be replayed the way this client wants
            // (say, a stream of a body with non-text blocks) is a miss.
            Some(entry) if self.hit_body(&entry).is_some() => {
                self.trace.cache = Some(CacheOutcome::Hit);
                if self.granted.is_some() {
                    // A hit after the hold was made (the downgraded lookup): give it back.
                    let release = self.release();
                    return Next::Respond(self.serve_hit(&entry), release);
                }
                if self.budgets_enforced && self.on_exhausted == OnExhausted::Reject {
                    self.pending_hit = Some(entry);
                    Next::CheckBudget
                } else {
                    Next::Respond(self.serve_hit(&entry), None)
                }
            }
            _ => {
                self.trace.cache = Some(CacheOutcome::Miss);
                if let (Some(key), Some(dk)) = (&self.cache.key, doorkeeper) {
                    self.cache.seen_before = self.cache.seen_before || dk.seen_before(key);
                }
                if self.granted.is_some() { self.forward(0) } else { self.reserve_step() }
            }
        }
    }

    /// The budget check before a hit, under `on_exhausted: reject`.
    pub fn on_budget_check(&mut self, check: BudgetCheck) -> Next {
        let entry = self.pending_hit.take();
        let refusal: Option<ApiError> = match check {
            BudgetCheck::Clear => None,
            BudgetCheck::Exhausted(err) => Some(err.into()),
            BudgetCheck::StoreUnavailable if self.store_failure == FailureMode::Closed => {
                Some(BudgetError::StoreUnavailable.into())
            }
            BudgetCheck::StoreUnavailable => None,
        };
        match (refusal, entry) {
            (Some(err), _) => Next::Respond(LocalResponse::error(&err, Some(&self.trace)), None),
            (None, Some(entry)) => Next::Respond(self.serve_hit(&entry), None),
            (None, None) => self.reserve_step(),
        }
    }

    /// The body a hit is served with, as JSON or replayed as SSE.
    fn hit_body(&self, entry: &CacheEntry) -> Option<Vec<u8>> {
        if self.request.stream {
            response::replay_as_sse(self.api, &entry.body, self.request.client_wants_usage).ok()
        } else {
            serde_json::to_vec(&entry.body).ok()
        }
    }

    fn serve_hit(&mut self, entry: &CacheEntry) -> LocalResponse {
        self.trace.cost_micros = Some(0);
        self.trace.cost_is_estimate = false;
        let mut headers = Vec::new();
        if self.request.stream {
            headers.push(("content-type".to_owned(), "text/event-stream; charset=utf-8".to_owned()));
            headers.push(("cache-control".to_owned(), "no-cache".to_owned()));
        } else {
            headers.push(("content-type".to_owned(), "application/json".to_owned()));
        }
        let body = self.hit_body(entry).unwrap_or_default();
        self.hit_saved_micros = Some(entry.cost_micros);
        headers.extend(self.trace.headers());
        headers.push(("x-tollgate-saved-usd".to_owned(), crate::pricing::format_usd(entry.cost_micros)));
        LocalResponse { status: 200, headers, body }
    }

    /// The budget store answered the reservation.
    pub fn on_reserve(&mut self, outcome: ReserveOutcome) -> Next {
        match outcome {
            ReserveOutcome::Granted(granted) => {
                self.trace.budget_remaining_micros = granted.remaining.micros;
                self.trace.budget_remaining_tokens = granted.remaining.tokens;
                self.trace.cost_micros = Some(granted.amount.micros);
                let mut relookup = None;
                if granted.downgraded && !self.downgrade_chain.is_empty() {
                    self.active_chain = self.downgrade_chain.clone();
                    self.order.clear();
                    self.trace.downgraded = true;
                    self.trace.model = self.active_chain.first().map(ToString::to_string);
                    // The cheaper model has its own cache entries: look there
                    // too, so exact repeats still hit while money is tight.
                    if let (Some(_), Some(first)) = (&self.cache.key, self.active_chain.first()) {
                        let key = CacheKey::derive(&self.tenant_id, first.provider, &first.model, &self.request);
                        self.cache.key = Some(key.clone());
                        relookup = self.cache.serve.then_some(key);
                    }
                }
                self.granted = Some(granted);
                match relookup {
                    Some(key) => Next::LookupCache(key),
                    None => self.forward(0),
                }
            }
            ReserveOutcome::Refused(err) if self.held.is_some() => {
                let why = ApiError::from(err).message;
                self.respond_held(&format!("escalation refused by the budget ({why})"), None)
            }
            ReserveOutcome::StoreUnavailable if self.held.is_some() && self.store_failure == FailureMode::Closed => {
                self.respond_held("escalation not metered: budget store unreachable", None)
            }
            ReserveOutcome::Refused(err) => {
                let mut api: ApiError = err.into();
                if self.on_exhausted == OnExhausted::CacheOnly && api.code == "budget_exceeded" {
                    api.message.push_str(" Only cached responses are served until then.");
                }
                Next::Respond(LocalResponse::error(&api, Some(&self.trace)), None)
            }
            ReserveOutcome::StoreUnavailable => match self.store_failure {
                FailureMode::Closed => {
                    Next::Respond(LocalResponse::error(&BudgetError::StoreUnavailable.into(), Some(&self.trace)), None)
                }
                FailureMode::Open => {
                    self.trace.reasons.push("budget store unreachable: served unmetered (fail-open)".to_owned());
                    self.forward(0)
                }
            },
        }
    }

    /// The order to try `active_chain` in: cooling models behind the
    /// others, unless every model is cooling (then the chain's own order).
    fn order_chain(&mut self) {
        let (mut order, demoted): (Vec<usize>, Vec<usize>) = (0..self.active_chain.len())
            .partition(|&i| self.active_chain.get(i).is_some_and(|m| !self.cooling.contains(m)));
        if order.is_empty() {
            self.order = demoted;
        } else {
            order.extend(demoted);
            self.order = order;
        }
    }

    /// The position in `active_chain` of attempt `attempt`.
    fn chain_index(&self, attempt: usize) -> usize {
        self.order.get(attempt).copied().unwrap_or(attempt)
    }

    fn forward(&mut self, attempt: usize) -> Next {
        if attempt == 0 {
            self.order_chain();
        }
        let current = self.chain_index(attempt);
        let Some(target) = self.active_chain.get(current).cloned() else {
            let err =
                UpstreamError::Exhausted { tier: self.tier.clone().unwrap_or_default(), last: "no model left".into() };
            return Next::Respond(LocalResponse::error(&err.into(), Some(&self.trace)), self.release());
        };
        self.attempt = attempt;
        self.trace.model = Some(target.to_string());
        // Cooling models ahead of this one in the chain, not tried yet: passed over.
        let passed_over: Vec<ModelRef> = (attempt + 1..self.order.len())
            .map(|k| self.chain_index(k))
            .filter(|&i| i < current)
            .filter_map(|i| self.active_chain.get(i).cloned())
            .collect();
        // The models before this one: the attempts that failed and those passed over.
        self.trace.fallbacks = u32::try_from(attempt + passed_over.len()).unwrap_or(u32::MAX);
        for model in passed_over {
            let reason = format!("cooldown:{model}");
            if !self.trace.reasons.contains(&reason) {
                self.trace.reasons.push(reason);
                self.skipped.push(model);
            }
        }
        let strip_usage_chunk =
            self.api == ApiFormat::OpenAi && self.request.stream && !self.request.client_wants_usage;
        // The cap written upstream is per choice. A clamped hold is shared by
        // `n` choices; a request without a cap gets the one its hold assumed,
        // so a metered request can never spend past what was reserved.
        let choices = self.request.choices.max(1);
        let cap = match &self.granted {
            Some(g) => match g.clamped_output_tokens {
                Some(total) => Some((total / choices).max(1)),
                None => self.request.max_output_tokens.is_none().then_some(self.output_cap / choices),
            },
            None => None,
        };
        let body = self.request.rewritten_body(&Rewrite {
            provider: target.provider,
            model: &target.model,
            clamp_output_tokens: cap,
            include_usage: true,
        });
        Next::Forward(Upstream { target, api: self.api, path: self.api.path(), body, attempt, strip_usage_chunk })
    }

    fn release(&self) -> Option<Settlement> {
        self.granted.as_ref().map(|g| Settlement::Release { id: g.id.clone() })
    }

    /// Whether an upstream status is worth trying the next model for: 408,
    /// 429 and 5xx, and also 401/403, which mean *our* credential for that
    /// provider is wrong or lacks access. Those are never passed to the
    /// client: it cannot fix them, and a provider's 401 body can echo part
    /// of the router's key.
    pub fn is_retryable(status: u16) -> bool {
        matches!(status, 401 | 403 | 408 | 429) || (500..=599).contains(&status)
    }

    /// Whether a provider answer with this status can be relayed as it is.
    /// Bodiless statuses (204, 205, 304) and anything outside 200–599 are
    /// not answers to a chat request; hosts treat them as failures
    /// ([`Plan::on_upstream_failure`]), which ends in a 502.
    pub fn can_pass_through(status: u16) -> bool {
        (200..=599).contains(&status) && !matches!(status, 204 | 205 | 304)
    }

    /// The client went away before any answer reached it: give the hold
    /// back. (Once a provider is generating, use [`Plan::finish`] with what
    /// was seen instead, so the tokens already spent are charged.)
    pub fn cancel(&mut self) -> Option<Settlement> {
        self.release()
    }

    /// The provider failed before any byte reached the client: `status` is
    /// its HTTP status, or None for a timeout or connection failure. Returns
    /// the next model of the chain, or the error to send (with the hold released).
    ///
    /// Only for retryable statuses ([`Plan::is_retryable`]) and timeouts: any
    /// other provider answer (a 400 for a too-long context, say) is passed
    /// through to the client via [`Plan::finish`].
    pub fn on_upstream_failure(&mut self, status: Option<u16>) -> Next {
        let last = match status {
            Some(s) => format!("HTTP {s}"),
            None => "timeout or connection failure".to_owned(),
        };
        self.only_timeouts &= status.is_none();
        if status.is_none_or(Plan::is_retryable) && self.attempt + 1 < self.active_chain.len() {
            return self.forward(self.attempt + 1);
        }
        if self.held.is_some() {
            return self.respond_held(&format!("escalated tier failed ({last})"), self.release());
        }
        if self.can_escalate(Signal::UpstreamError) {
            self.note_escalation(Signal::UpstreamError);
            return Next::Escalate(self.release());
        }
        let tier = self.tier.clone().unwrap_or_else(|| "pinned".into());
        let err: ApiError = if self.only_timeouts {
            UpstreamError::Timeout { tier }.into()
        } else {
            UpstreamError::Exhausted { tier, last }.into()
        };
        Next::Respond(LocalResponse::error(&err, Some(&self.trace)), self.release())
    }

    /// The host cannot call the provider at all (say, no base URL or key is
    /// configured for it): answer with `err` and release the hold.
    pub fn abandon(&mut self, err: &ApiError) -> Next {
        Next::Respond(LocalResponse::error(err, Some(&self.trace)), self.release())
    }

    /// The observer for a streamed answer from `upstream`: it passes bytes
    /// through (minus an injected usage chunk), reads usage on the way, and
    /// assembles a cacheable body no larger than the tenant's entry limit.
    pub fn stream_observer(&self, upstream: &Upstream) -> response::StreamObserver {
        response::StreamObserver::new(self.api, upstream.strip_usage_chunk, self.max_entry_bytes)
    }

    /// What a non-streamed answer says: its summary and, for the cache, the body.
    pub fn read_json_response(&self, body: &[u8]) -> (ResponseSummary, Option<serde_json::Value>) {
        let summary = response::summarize_json(self.api, body).unwrap_or_default();
        let assembled = if summary.complete { serde_json::from_slice(body).ok() } else { None };
        (summary, assembled)
    }

    /// The model currently being called.
    pub fn current_target(&self) -> Option<&ModelRef> {
        self.active_chain.get(self.chain_index(self.attempt))
    }

    /// Headers to add to the provider's response.
    pub fn response_headers(&self) -> Vec<(String, String)> {
        self.trace.headers()
    }

    /// Whether this request was answered from the cache (a hit that was
    /// then refused by the budget check was not).
    pub fn served_from_cache(&self) -> bool {
        self.hit_saved_micros.is_some()
    }

    /// Whether the request ended with an answer that is not a `finish`ed
    /// provider response: a cache hit, or an unresolved answer held back
    /// during an escalation. Its outcome is recorded all the same.
    pub fn answered_without_finish(&self) -> bool {
        self.served_from_cache() || self.served_held
    }

    /// Look at a complete, non-streamed provider answer before it is
    /// relayed: None to go on with [`Plan::finish`] and relay it; otherwise
    /// the step to take instead ([`Next::Escalate`], or [`Next::Respond`]
    /// with an earlier, better answer). Streamed answers are not reviewed:
    /// their first bytes are already with the client.
    pub fn review(
        &mut self,
        status: u16,
        summary: &ResponseSummary,
        body: &[u8],
        config: &TenantConfig,
    ) -> Option<Next> {
        if !(200..300).contains(&status) || !summary.complete || !self.escalation.enabled {
            return None;
        }
        let signal = escalation::judge_json(self.api, body, summary, self.wants_json, &self.escalation);
        let keep_held = self.held.as_ref().is_some_and(|h| escalation::worse(signal, Some(h.signal)));
        let can_climb = signal.is_some_and(|s| self.can_escalate(s));
        if !keep_held && !can_climb {
            return None;
        }
        // This answer is not relayed: charge what it cost to its own hold.
        let (usage, cost_micros) = self.attempt_cost(status, summary, config);
        let amount =
            Amount { tokens: usage.map_or(0, |u| u.input_tokens.saturating_add(u.output_tokens)), micros: cost_micros };
        self.prior = Amount {
            tokens: self.prior.tokens.saturating_add(amount.tokens),
            micros: self.prior.micros.saturating_add(amount.micros),
        };
        let settlement = self.granted.as_ref().map(|g| Settlement::Charge { id: g.id.clone(), amount });
        if keep_held {
            let what = signal.map_or("unresolved", Signal::as_str);
            return Some(self.respond_held(&format!("escalated answer was worse ({what})"), settlement));
        }
        let signal = signal?;
        if !self.held.as_ref().is_some_and(|h| escalation::worse(Some(signal), Some(h.signal))) {
            self.held = Some(HeldAnswer {
                status,
                body: body.to_vec(),
                signal,
                tier: self.trace.tier.clone(),
                model: self.trace.model.clone().unwrap_or_default(),
            });
        }
        self.note_escalation(signal);
        Some(Next::Escalate(settlement))
    }

    /// After [`Next::Escalate`]'s settlement is applied: reserve for (or
    /// forward to) the next tier.
    pub fn escalate(&mut self) -> Next {
        self.granted = None;
        self.attempt = 0;
        self.only_timeouts = true;
        let Some(rung) = (!self.ladder.is_empty()).then(|| self.ladder.remove(0)) else {
            return self.respond_held("no tier left to escalate to", None);
        };
        self.active_chain = rung.chain;
        self.order.clear();
        self.trace.tier = Some(rung.name);
        self.trace.model = self.active_chain.first().map(ToString::to_string);
        self.trace.fallbacks = 0;
        let reserve = rung.price.map(|price| ReserveRequest {
            id: format!("{}.e{}", self.request_id, self.escalations),
            prompt_tokens: self.prompt.tokens,
            output_tokens: self.output_cap,
            price,
            downgrade_price: None,
        });
        match (reserve, self.budgets_enforced) {
            (Some(r), true) => {
                self.reserve_request = Some(r.clone());
                Next::Reserve(r)
            }
            _ => self.forward(0),
        }
    }

    /// Whether this request may climb a tier for `signal` now.
    fn can_escalate(&self, signal: Signal) -> bool {
        self.escalation.triggers(signal)
            && self.escalations < self.escalation.max_attempts
            && !self.trace.downgraded
            && self.ladder.iter().any(|r| !r.chain.is_empty())
    }

    fn note_escalation(&mut self, signal: Signal) {
        // Tiers without a model for this API are skipped.
        while self.ladder.first().is_some_and(|r| r.chain.is_empty()) {
            self.ladder.remove(0);
        }
        self.escalations += 1;
        let from = self.trace.tier.clone().unwrap_or_default();
        let to = self.ladder.first().map(|r| r.name.clone()).unwrap_or_default();
        self.trace.escalations.push(format!("{from}->{to}; reason={}", signal.as_str()));
    }

    /// Answer with the held answer, applying `settlement` for the attempt
    /// that did not make it.
    fn respond_held(&mut self, why: &str, settlement: Option<Settlement>) -> Next {
        let Some(held) = self.held.clone() else {
            let tier = self.tier.clone().unwrap_or_default();
            let err = UpstreamError::Exhausted { tier, last: why.to_owned() };
            return Next::Respond(LocalResponse::error(&err.into(), Some(&self.trace)), settlement);
        };
        self.served_held = true;
        self.trace.tier = held.tier;
        self.trace.model = Some(held.model);
        self.trace.cost_micros = Some(self.prior.micros);
        self.trace.cost_is_estimate = false;
        self.trace.reasons.push(format!("{why}: returned the {} answer", held.signal.as_str()));
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        headers.extend(self.trace.headers());
        Next::Respond(LocalResponse { status: held.status, headers, body: held.body }, settlement)
    }

    /// The usage and cost of the current attempt's answer.
    fn attempt_cost(&self, status: u16, summary: &ResponseSummary, config: &TenantConfig) -> (Option<Usage>, u64) {
        let price = self.current_target().and_then(|t| config.price(&t.model));
        let usage = summary.usage.map(|u| {
            // A stream cut short reports usage only as far as it got:
            // Anthropic's `message_start` carries a placeholder output count
            // until `message_delta`. Charge at least the output seen.
            if summary.complete {
                u
            } else {
                Usage { output_tokens: u.output_tokens.max(summary.output_tokens_estimate), ..u }
            }
        });
        let usage = usage.or_else(|| {
            // No usage reported (aborted stream, provider omitted it): charge
            // the prompt we counted and the output seen so far, estimated.
            (summary.output_tokens_estimate > 0 || (200..300).contains(&status)).then_some(Usage {
                input_tokens: self.prompt.tokens,
                output_tokens: summary.output_tokens_estimate,
                ..Usage::default()
            })
        });
        let cost_micros = match (price, usage) {
            (Some(p), Some(u)) => p.cost_micros(&u),
            _ => 0,
        };
        (usage, cost_micros)
    }

    /// What the cost-per-resolution ledger records for this request, once it
    /// has ended: after [`Plan::finish`] (pass its result) or after serving a
    /// cache hit (pass None). Requests refused before routing record nothing.
    pub fn outcome(&self, finish: Option<&Finish>) -> crate::outcomes::RequestOutcome {
        let (tokens, micros) = finish
            .and_then(|f| f.usage.map(|u| (u.input_tokens.saturating_add(u.output_tokens), f.cost_micros)))
            .unwrap_or((0, 0));
        // An escalated request is one logical request: every attempt's cost.
        let (tokens, micros) = (tokens.saturating_add(self.prior.tokens), micros.saturating_add(self.prior.micros));
        crate::outcomes::RequestOutcome {
            request_id: self.request_id.clone(),
            tier: self.tier.clone().unwrap_or_else(|| "pinned".to_owned()),
            tokens,
            micros,
            cache_hit: self.hit_saved_micros.is_some(),
            saved_micros: self.hit_saved_micros.unwrap_or(0),
            escalated: self.escalations > 0,
            fallbacks: self.trace.fallbacks,
        }
    }

    /// The provider's response has ended (completely, or cut short by an
    /// abort or error). `summary` is what the response observer saw;
    /// `assembled` the cacheable non-streamed body, when there is one.
    pub fn finish(
        &mut self,
        status: u16,
        summary: &ResponseSummary,
        assembled: Option<serde_json::Value>,
        config: &TenantConfig,
        now: u64,
    ) -> Finish {
        let target = self.current_target().cloned();
        let (usage, cost_micros) = self.attempt_cost(status, summary, config);
        self.trace.cost_micros = Some(cost_micros.saturating_add(self.prior.micros));
        self.trace.cost_is_estimate = false;
        let settlement = self.granted.as_ref().map(|g| match usage {
            Some(u) => Settlement::Charge {
                id: g.id.clone(),
                amount: Amount { tokens: u.input_tokens.saturating_add(u.output_tokens), micros: cost_micros },
            },
            None => Settlement::Release { id: g.id.clone() },
        });

        let mut not_cached = None;
        let mut cache_fill = None;
        if let (Some(key), Some(target)) = (&self.cache.key, &target) {
            let body_len = assembled.as_ref().map_or(0, |b| b.to_string().len());
            let admitted = match cache::admit(status, summary, body_len, &config.cache) {
                Ok(()) if assembled.is_none() => Err(NotAdmitted::Incomplete),
                Ok(()) if !self.cache.seen_before => Err(NotAdmitted::FirstSighting),
                // A fallback model's answer (or one reached by passing over a
                // cooling first model) would go under a key that lookups
                // (made for the chain's first model) never read: a wasted write.
                Ok(()) if self.chain_index(self.attempt) > 0 => Err(NotAdmitted::Fallback),
                other => other,
            };
            let fill_key = key.clone();
            match (admitted, assembled) {
                (Ok(()), Some(body)) => {
                    let entry = CacheEntry {
                        api: self.api,
                        model: target.model.clone(),
                        stored_at: now,
                        expires_at: now + self.cache_ttl,
                        usage,
                        // What a hit avoids: every attempt this answer took.
                        cost_micros: cost_micros.saturating_add(self.prior.micros),
                        body,
                    };
                    cache_fill =
                        Some(CacheFill { key: fill_key, value: entry.to_bytes(), ttl_seconds: self.cache_ttl });
                }
                (Err(why), _) => not_cached = Some(why),
                (Ok(()), None) => not_cached = Some(NotAdmitted::Incomplete),
            }
        }
        Finish { settlement, cache_fill, not_cached, usage, cost_micros }
    }
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
