//! The request side of the protocol: the first step, the cache lookup, the
//! budget check and reservation, forwarding, and what happens when a
//! provider fails (fallback through the chain, cooling models tried last).

use super::{Duty, LocalResponse, Next, Plan};
use crate::api::ApiFormat;
use crate::budget::{Granted, LedgerOp, ReserveRequest};
use crate::cache::{CacheEntry, CacheKey, Doorkeeper};
use crate::config::{FailureMode, ModelRef, OnExhausted};
use crate::cooldown::{CooldownUpdate, Cooldowns};
use crate::error::{ApiError, BudgetError, UpstreamError};
use crate::escalation::Signal;
use crate::provider::Provider;
use crate::request::Rewrite;
use crate::response;
use crate::store::{self, TenantOp, TenantReply};
use crate::trace::CacheOutcome;
use crate::translate;
use crate::upstream;
use serde::Serialize;
use serde_json::Value;

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

impl Plan {
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

    /// The first step.
    pub fn start(&mut self) -> Next {
        match (&self.cache.key, self.cache.serve) {
            (Some(key), true) => Next::LookupCache(key.clone()),
            _ => self.reserve_step(),
        }
    }

    fn reserve_step(&mut self) -> Next {
        match (&self.reserve_request, self.budgets_enforced) {
            (Some(r), true) => self.reserve_op(r.clone()),
            // No limits configured: nothing to hold, go straight upstream.
            _ => self.forward(0),
        }
    }

    /// The reserve step for `request`; the plan remembers it is out, so a
    /// request that ends before its answer releases it by id.
    pub(super) fn reserve_op(&mut self, request: ReserveRequest) -> Next {
        self.reserve_out = Some(request.id.clone());
        Next::Reserve(TenantOp::Budget(LedgerOp::Reserve { budgets: self.budgets.clone(), request }))
    }

    /// The store's reply to [`Next::Reserve`] (None: no reply, or the store
    /// failed): [`Plan::on_reserve`] with what it means.
    pub fn on_reserve_reply(&mut self, reply: Option<TenantReply>) -> Next {
        self.on_reserve(store::reserve_outcome(reply))
    }

    /// The store's reply to [`Next::CheckBudget`] (None: no reply).
    pub fn on_budget_reply(&mut self, reply: Option<TenantReply>) -> Next {
        self.on_budget_check(store::budget_check(reply))
    }

    /// The cache answered. `doorkeeper` is the host's (consulted only for a
    /// tenant that uses one).
    pub fn on_cache(&mut self, found: Option<CacheEntry>, doorkeeper: Option<&mut Doorkeeper>) -> Next {
        self.on_cache_lookup(found, |key| doorkeeper.is_some_and(|dk| dk.seen_before(key)))
    }

    /// [`Plan::on_cache`] for a host whose doorkeeper is not the core's
    /// [`Doorkeeper`] (Envoy keeps its bits in shared data, across worker
    /// threads): `seen_before` says whether a key was seen before, and notes
    /// it. Called only on a miss, for a tenant that uses a doorkeeper.
    pub fn on_cache_lookup(&mut self, found: Option<CacheEntry>, seen_before: impl FnOnce(&CacheKey) -> bool) -> Next {
        match found {
            // An entry that cannot be replayed the way this client wants
            // (say, a stream of a body with non-text blocks) is a miss.
            Some(entry) if self.hit_body(&entry).is_some() => {
                self.trace.cache = Some(CacheOutcome::Hit);
                if self.granted.is_some() {
                    // A hit after the hold was made (the downgraded lookup): give it back.
                    let release = self.release();
                    let hit = self.serve_hit(&entry);
                    return self.respond(hit, release);
                }
                if self.budgets_enforced && self.on_exhausted == OnExhausted::Reject {
                    self.pending_hit = Some(entry);
                    Next::CheckBudget(TenantOp::Budget(LedgerOp::Check {
                        budgets: self.budgets.clone(),
                        scopes: self.scopes.clone(),
                    }))
                } else {
                    let hit = self.serve_hit(&entry);
                    self.respond(hit, None)
                }
            }
            _ => {
                self.trace.cache = Some(CacheOutcome::Miss);
                if self.cache_settings.doorkeeper
                    && !self.cache.seen_before
                    && let Some(key) = &self.cache.key
                {
                    self.cache.seen_before = seen_before(key);
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
            (Some(err), _) => self.respond(LocalResponse::error(&err, Some(&self.trace)), None),
            (None, Some(entry)) => {
                let hit = self.serve_hit(&entry);
                self.respond(hit, None)
            }
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
        let sent = self.reserve_out.take();
        if let (ReserveOutcome::StoreUnavailable, Some(id)) = (&outcome, sent) {
            // The reserve may have landed after the host stopped waiting:
            // release it by id, so that hold (or the reserve, if it arrives
            // later) holds nothing.
            let op = TenantOp::Budget(LedgerOp::Release { budgets: self.budgets.clone(), id });
            self.duties.push(Duty::Detached(vec![op]));
        }
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
                self.respond(LocalResponse::error(&api, Some(&self.trace)), None)
            }
            ReserveOutcome::StoreUnavailable => match self.store_failure {
                FailureMode::Closed => {
                    self.respond(LocalResponse::error(&BudgetError::StoreUnavailable.into(), Some(&self.trace)), None)
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
    pub(super) fn chain_index(&self, attempt: usize) -> usize {
        self.order.get(attempt).copied().unwrap_or(attempt)
    }

    pub(super) fn forward(&mut self, attempt: usize) -> Next {
        if attempt == 0 {
            self.order_chain();
        }
        let current = self.chain_index(attempt);
        let Some(target) = self.active_chain.get(current).cloned() else {
            let err =
                UpstreamError::Exhausted { tier: self.tier.clone().unwrap_or_default(), last: "no model left".into() };
            let release = self.release();
            return self.respond(LocalResponse::error(&err.into(), Some(&self.trace)), release);
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
        let api = translate::provider_api(self.api, target.provider).unwrap_or(self.api);
        if api != self.api {
            self.trace.translated = Some(translate::direction(self.api, api));
            let body = self.translated_body(api, &target, cap);
            return Next::Forward(Upstream { target, api, path: api.path(), body, attempt, strip_usage_chunk: false });
        }
        self.trace.translated = None;
        let strip_usage_chunk =
            self.api == ApiFormat::OpenAi && self.request.stream && !self.request.client_wants_usage;
        let body = self.request.rewritten_body(&Rewrite {
            provider: target.provider,
            model: &target.model,
            clamp_output_tokens: cap,
            include_usage: true,
            // The metered built-in tools stop where the hold does.
            max_tool_calls: self.tool_calls_cap.filter(|_| self.budgets_enforced),
        });
        Next::Forward(Upstream { target, api: self.api, path: self.api.path(), body, attempt, strip_usage_chunk })
    }

    /// The request in the provider's `api`, for `target`: the translation
    /// made when the plan was built, with the fields the router owns set as
    /// for any forwarded body (the model, the output cap, stream usage).
    fn translated_body(&self, api: ApiFormat, target: &ModelRef, cap: Option<u64>) -> Vec<u8> {
        let Some(mut body) = self.translations.iter().find(|(a, _)| *a == api).map(|(_, b)| b.clone()) else {
            // Every chain model was checked against these translations.
            return Vec::new();
        };
        body.insert("model".into(), Value::String(target.model.clone()));
        let asked = body.remove("max_tokens").and_then(|v| v.as_u64());
        let cap = cap.or(asked);
        match api {
            ApiFormat::Anthropic => {
                // Anthropic requires a cap: the one the hold assumed.
                let cap = cap.unwrap_or(self.output_cap.max(1));
                body.insert("max_tokens".into(), Value::from(cap));
            }
            _ => {
                if let Some(cap) = cap {
                    // o-series models refuse `max_tokens`; other OpenAI-compatible providers know only it.
                    let field =
                        if target.provider == Provider::OpenAi { "max_completion_tokens" } else { "max_tokens" };
                    body.insert(field.into(), Value::from(cap));
                }
                if self.request.stream {
                    body.insert("stream_options".into(), serde_json::json!({ "include_usage": true }));
                }
            }
        }
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The provider failed before any byte reached the client: `status` is
    /// its HTTP status, or None for a timeout or connection failure. Returns
    /// the next model of the chain, or the error to send (with the hold released).
    ///
    /// Only for retryable statuses ([`upstream::is_retryable`]) and timeouts: any
    /// other provider answer (a 400 for a too-long context, say) is passed
    /// through to the client (see [`Plan::on_answer_head`]).
    pub fn on_upstream_failure(&mut self, status: Option<u16>) -> Next {
        let last = match status {
            Some(s) => format!("HTTP {s}"),
            None => "timeout or connection failure".to_owned(),
        };
        self.only_timeouts &= status.is_none();
        if status.is_none_or(upstream::is_retryable) && self.attempt + 1 < self.active_chain.len() {
            return self.forward(self.attempt + 1);
        }
        if self.held.is_some() {
            let release = self.release();
            return self.respond_held(&format!("escalated tier failed ({last})"), release);
        }
        if self.can_escalate(Signal::UpstreamError) {
            self.note_escalation(Signal::UpstreamError);
            let ops = self.release().iter().map(|s| self.settlement_op(s)).collect();
            return Next::Escalate(ops);
        }
        let tier = self.tier.clone().unwrap_or_else(|| "pinned".into());
        let err: ApiError = if self.only_timeouts {
            UpstreamError::Timeout { tier }.into()
        } else {
            UpstreamError::Exhausted { tier, last }.into()
        };
        let release = self.release();
        self.respond(LocalResponse::error(&err, Some(&self.trace)), release)
    }
}
