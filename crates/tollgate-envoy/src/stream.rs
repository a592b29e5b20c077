//! One HTTP stream: drives the core's [`Plan`] through Envoy's callbacks.
//!
//! Request side: the headers callback authenticates and then pauses; the
//! body is buffered to its end (the model is in the body, and so is
//! everything the router decides on); then the plan runs. Cache and budget
//! steps are synchronous against shared data, or `dispatch_http_call`s to
//! webdis with the stream paused. Forwarding rewrites the buffered body and
//! headers and lets the request continue to Envoy's router.
//!
//! Response side: a streamed answer passes chunk by chunk through the
//! core's stream observer (usage is read on the way); a JSON answer passes
//! through and is copied for usage and the cache. A retryable failure is
//! held back, and the next model of the chain is called with
//! `dispatch_http_call`; its answer replaces the failed one.

use crate::host;
use crate::local_state;
use crate::metrics;
use crate::redis::{self, BudgetCas, CasStep, OutcomeCas, OutcomeStep};
use crate::runtime::Runtime;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::auth::{self, ApiKeyRecord};
use tollgate_core::budget::{LedgerOp, LedgerReply};
use tollgate_core::cache::CacheEntry;
use tollgate_core::endpoints::{self, Endpoint};
use tollgate_core::engine::{Finish, Inbound, LocalResponse, ReserveOutcome, Settlement, Upstream, request_id};
use tollgate_core::error::{AuthError, RequestError, TenantError, UpstreamError};
use tollgate_core::outcomes::{self, OutcomeOp};
use tollgate_core::plugin::CacheBackend;
use tollgate_core::response::{ResponseSummary, StreamObserver, StreamOutcome};
use tollgate_core::store::{self, TenantOp, TenantReply};
use tollgate_core::trace::CacheOutcome;
use tollgate_core::{ApiError, ApiFormat, Next, Plan, TenantConfig, upstream};

/// Largest JSON answer read for usage and the cache; beyond it usage is
/// estimated and nothing is cached (the answer itself passes untouched).
const MAX_COPIED_RESPONSE: usize = 16 * 1024 * 1024;

/// Where the plan stands after a step.
enum Flow {
    /// The rewritten request may continue to the router.
    Forwarded,
    /// A callout is out; its answer continues the plan.
    Waiting,
    /// A local reply was sent.
    Responded,
}

/// What an outstanding callout is for.
pub(crate) enum Pending {
    CacheLookup,
    Budget {
        cas: BudgetCas,
        reserve_id: Option<String>,
    },
    Fallback(Upstream),
    /// `/v1/usage` in Redis mode: the budget status first, then the report.
    Usage(BudgetCas),
    UsageReport(Option<TenantReply>, OutcomeCas),
    /// `/v1/feedback` in Redis mode, with the retries left for an unknown id.
    Feedback(OutcomeCas, u8),
    /// A short wait before asking again about an unknown id.
    FeedbackWait(OutcomeCas, u8),
    /// `/v1/feedback/export` in Redis mode.
    FeedbackExport(OutcomeCas),
}

/// Retries for feedback naming an id Redis does not know yet (its record
/// is sent just after the answer it names), and the wait before each, as
/// on the Worker.
pub(crate) const FEEDBACK_RETRIES: u8 = 2;
const FEEDBACK_RETRY_WAIT: &[u8] = b"0.25";

/// The answer being relayed from the router.
struct Relay {
    status: u16,
    observer: Option<StreamObserver>,
    /// The stream's end, once its last chunk went through the observer.
    ended: Option<StreamOutcome>,
    json: Vec<u8>,
    overflow: bool,
}

pub struct Stream {
    rt: Option<Rc<Runtime>>,
    entropy: [u8; 16],
    request_id: String,
    endpoint: Option<Endpoint>,
    pub(crate) tenant: Option<(String, Arc<TenantConfig>)>,
    client_headers: Vec<(String, String)>,
    plan: Option<Plan>,
    pending: Option<(u32, Pending)>,
    /// The first attempt went to the router; its response is ours to read.
    forwarded: Option<Upstream>,
    relay: Option<Relay>,
    /// The failed first answer is being replaced (fallback or error).
    replacing: bool,
    local_reply: bool,
    finished: bool,
    /// A reserve sent to Redis whose answer has not come back.
    reserve_in_flight: Option<String>,
    /// The tenant id as a metric label, when the operator asked for it.
    metric_tenant: Option<String>,
    /// The next webdis request of an outcome op in progress.
    next_round: Option<Vec<u8>>,
}

fn count(rt: Option<&Runtime>, tenant: Option<&str>, metric: &str, labels: &[(&str, &str)], by: u64) {
    if let Some(rt) = rt {
        rt.counters.add(&metrics::name(metric, tenant, labels), by);
    }
}

fn internal() -> Next {
    let err = ApiError::new(503, "api_error", "internal_unavailable", "tollgate lost the request's state; retry")
        .with_retry_after(1);
    Next::Respond(LocalResponse::error(&err, None), None)
}

impl Stream {
    pub fn new(_context_id: u32, rt: Option<Rc<Runtime>>) -> Self {
        let entropy: [u8; 16] = host::random_bytes();
        Stream {
            rt,
            entropy,
            request_id: request_id(entropy),
            endpoint: None,
            tenant: None,
            client_headers: Vec::new(),
            plan: None,
            pending: None,
            forwarded: None,
            relay: None,
            replacing: false,
            local_reply: false,
            finished: false,
            reserve_in_flight: None,
            metric_tenant: None,
            next_round: None,
        }
    }

    fn count(&self, metric: &str, labels: &[(&str, &str)], by: u64) {
        count(self.rt.as_deref(), self.metric_tenant.as_deref(), metric, labels, by);
    }

    /// The plan's next step from `f`, or an internal error if the plan is gone.
    fn with_plan(&mut self, f: impl FnOnce(&mut Plan) -> Next) -> Next {
        match self.plan.as_mut() {
            Some(plan) => f(plan),
            None => internal(),
        }
    }

    // ---- local replies ----------------------------------------------------

    pub(crate) fn send(&mut self, status: u16, headers: &[(String, String)], body: &[u8]) {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        if let Err(status) = hostcalls::send_http_response(u32::from(status), pairs, Some(body)) {
            log::error!("tollgate: could not send a local reply: {status:?}");
        }
        self.local_reply = true;
    }

    fn send_local(&mut self, local: &LocalResponse) {
        if local.status >= 400 {
            let code = serde_json::from_slice::<serde_json::Value>(&local.body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_else(|| local.status.to_string());
            if matches!(local.status, 402 | 429) || code.starts_with("budget") {
                self.count(metrics::BUDGET_REFUSALS, &[("code", &code)], 1);
            }
            self.count(metrics::ERRORS, &[("code", &code)], 1);
        }
        let mut headers = local.headers.clone();
        if !headers.iter().any(|(n, _)| n == "x-tollgate-request-id") {
            headers.push(("x-tollgate-request-id".to_owned(), self.request_id.clone()));
        }
        self.send(local.status, &headers, &local.body);
    }

    /// An error before (or outside) a plan: OpenAI-shaped, with the id.
    pub(crate) fn send_error(&mut self, err: &ApiError) {
        self.send_local(&LocalResponse::error(err, None));
    }

    pub(crate) fn send_json(&mut self, status: u16, value: &serde_json::Value) {
        let body = serde_json::to_vec(value).unwrap_or_default();
        let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        self.send(status, &headers, &body);
    }

    // ---- request side -----------------------------------------------------

    fn authenticate(&self, rt: &Runtime) -> Result<(String, Arc<TenantConfig>), ApiError> {
        let authorization = host::header(MapType::HttpRequestHeaders, "authorization");
        let x_api_key = host::header(MapType::HttpRequestHeaders, "x-api-key");
        let key = auth::extract_api_key(authorization.as_deref(), x_api_key.as_deref())?;
        let record: &ApiKeyRecord =
            rt.config.api_keys.get(&auth::hash_api_key(key)).ok_or(ApiError::from(AuthError::UnknownKey))?;
        if record.disabled {
            return Err(AuthError::UnknownKey.into());
        }
        let config = rt.config.tenants.get(&record.tenant_id).ok_or(ApiError::from(TenantError::Unavailable))?;
        Ok((record.tenant_id.clone(), config.clone()))
    }

    fn body_limit(&self) -> usize {
        match (self.endpoint, &self.tenant) {
            (Some(Endpoint::Feedback), _) => endpoints::MAX_FEEDBACK_BYTES,
            (_, Some((_, config))) => config.limits.max_body_bytes,
            _ => 0,
        }
    }

    fn too_large(&mut self, actual: usize) {
        let limit = self.body_limit();
        self.send_error(&RequestError::TooLarge { limit, actual }.into());
    }

    fn on_chat_body(&mut self, rt: &Rc<Runtime>, api: ApiFormat, body: &[u8]) -> Action {
        let Some((tenant_id, config)) = self.tenant.clone() else { return Action::Pause };
        let cache_control = self.client_headers.iter().find(|(n, _)| n == "cache-control").map(|(_, v)| v.as_str());
        let now = host::now_secs();
        let inbound = Inbound { tenant_id: &tenant_id, api, body, cache_control, now, entropy: self.entropy };
        let mut plan = match Plan::new(&config, &inbound) {
            Ok(p) => p,
            Err(refused) => {
                self.send_local(&refused.response());
                return Action::Pause;
            }
        };
        plan.consult_cooldowns(&rt.cooldowns.borrow(), now);
        let next = plan.start();
        self.plan = Some(plan);
        match self.drive(rt, next) {
            Flow::Forwarded => Action::Continue,
            Flow::Waiting | Flow::Responded => Action::Pause,
        }
    }

    /// Run the plan until it forwards, waits on a callout or responds.
    fn drive(&mut self, rt: &Rc<Runtime>, mut next: Next) -> Flow {
        loop {
            let Some((tenant_id, config)) = self.tenant.clone() else { return Flow::Responded };
            next = match next {
                Next::Respond(local, settlement) => {
                    // A cache hit counts in `tollgate.cache_hits`, not in
                    // `tollgate.requests` (requests sent to a model).
                    self.close(rt, settlement.as_ref(), None);
                    self.send_local(&local);
                    return Flow::Responded;
                }
                Next::LookupCache(key) => match rt.config.cache {
                    CacheBackend::Redis => {
                        let k = redis::cache_key(&rt.config.redis.key_prefix, key.as_str());
                        let body = redis::command("GET", &[k.as_bytes()]);
                        match self.call_webdis(rt, &body, Pending::CacheLookup) {
                            Ok(()) => return Flow::Waiting,
                            Err(p) => match self.on_webdis_answer(rt, *p, None) {
                                Some(n) => n,
                                None => return Flow::Waiting,
                            },
                        }
                    }
                    CacheBackend::Local => {
                        let api = self.plan.as_ref().map_or(ApiFormat::OpenAi, |p| p.api);
                        let found = rt.cache.lookup(&rt.shared, &key, api, host::now_secs());
                        self.on_cache(rt, found)
                    }
                    CacheBackend::Off => self.on_cache(rt, None),
                },
                Next::CheckBudget => {
                    let op = LedgerOp::Check { budgets: config.budgets.clone() };
                    if rt.redis_budgets() {
                        let cas = BudgetCas::new(&tenant_id, vec![op], host::now_secs());
                        match self.start_budget_call(rt, cas, None) {
                            Some(n) => n,
                            None => return Flow::Waiting,
                        }
                    } else {
                        let reply = local_state::apply_budget(&rt.shared, &tenant_id, &[op], host::now_secs());
                        let check = store::budget_check(first_budget_reply(reply));
                        self.with_plan(|p| p.on_budget_check(check))
                    }
                }
                Next::Reserve(request) => {
                    let id = request.id.clone();
                    let op = LedgerOp::Reserve { budgets: config.budgets.clone(), request };
                    if rt.redis_budgets() {
                        let cas = BudgetCas::new(&tenant_id, vec![op], host::now_secs());
                        match self.start_budget_call(rt, cas, Some(id)) {
                            Some(n) => n,
                            None => return Flow::Waiting,
                        }
                    } else {
                        let reply = local_state::apply_budget(&rt.shared, &tenant_id, &[op], host::now_secs());
                        let outcome = store::reserve_outcome(first_budget_reply(reply));
                        self.with_plan(|p| p.on_reserve(outcome))
                    }
                }
                Next::Escalate(settlement) => {
                    if let Some(settlement) = settlement {
                        self.settle_attempt(rt, &tenant_id, &config, &settlement);
                    }
                    self.with_plan(Plan::escalate)
                }
                Next::Forward(up) => match rt.provider_keys.get(&up.target.provider).cloned() {
                    None => {
                        let err: ApiError =
                            UpstreamError::NotConfigured { provider: up.target.provider.to_string() }.into();
                        self.with_plan(|p| p.abandon(&err))
                    }
                    Some(key) => {
                        if up.attempt > 0 {
                            let tier =
                                self.plan.as_ref().and_then(|p| p.tier.clone()).unwrap_or_else(|| "pinned".into());
                            self.count(metrics::FALLBACKS, &[("tier", &tier)], 1);
                        }
                        if self.forwarded.is_none() && !self.replacing {
                            self.rewrite_request(rt, &up, &key);
                            self.forwarded = Some(up);
                            return Flow::Forwarded;
                        }
                        match self.call_fallback(rt, up, &key) {
                            Some(n) => n,
                            None => return Flow::Waiting,
                        }
                    }
                },
            };
        }
    }

    fn on_cache(&mut self, rt: &Runtime, found: Option<CacheEntry>) -> Next {
        let use_doorkeeper = self.tenant.as_ref().is_some_and(|(_, c)| c.cache.doorkeeper);
        let hit = found.is_some();
        let Some(plan) = self.plan.as_mut() else { return internal() };
        if use_doorkeeper
            && !hit
            && let Some(key) = &plan.cache.key
        {
            // The doorkeeper lives in shared data, not in the core's per-VM
            // Bloom filter: Envoy spreads connections over worker threads,
            // and a per-thread doorkeeper would rarely see a prompt twice.
            plan.cache.seen_before |= rt.cache.seen_before(&rt.shared, key);
        }
        let next = plan.on_cache(found, None);
        let served = hit && self.plan.as_ref().is_some_and(|p| p.trace.cache == Some(CacheOutcome::Hit));
        self.count(if served { metrics::CACHE_HITS } else { metrics::CACHE_MISSES }, &[], 1);
        next
    }

    /// Send `body` to webdis; `Err` gives `pending` back when the call
    /// could not even be made.
    pub(crate) fn call_webdis(&mut self, rt: &Runtime, body: &[u8], pending: Pending) -> Result<(), Box<Pending>> {
        let timeout = Duration::from_millis(rt.config.redis.timeout_ms);
        match self.dispatch_http_call(&rt.config.redis.cluster, rt.webdis_headers(), Some(body), vec![], timeout) {
            Ok(token) => {
                self.pending = Some((token, pending));
                Ok(())
            }
            Err(status) => {
                log::warn!("tollgate: could not call webdis cluster `{}`: {status:?}", rt.config.redis.cluster);
                Err(Box::new(pending))
            }
        }
    }

    /// The first round of a Redis budget update. None: waiting on webdis.
    fn start_budget_call(&mut self, rt: &Rc<Runtime>, mut cas: BudgetCas, reserve_id: Option<String>) -> Option<Next> {
        let body = cas.start(&rt.config.redis.key_prefix, &mut rt.board.borrow_mut());
        if reserve_id.is_some() {
            self.reserve_in_flight.clone_from(&reserve_id);
        }
        match self.call_webdis(rt, &body, Pending::Budget { cas, reserve_id }) {
            Ok(()) => None,
            Err(p) => self.on_webdis_answer(rt, *p, None),
        }
    }

    /// The plan's next step after webdis answered `body` (None: the call
    /// failed). Returns None when nothing is left to drive: another round
    /// went out, or the reply was sent.
    pub(crate) fn on_webdis_answer(
        &mut self,
        rt: &Rc<Runtime>,
        pending: Pending,
        body: Option<Vec<u8>>,
    ) -> Option<Next> {
        let prefix = rt.config.redis.key_prefix.clone();
        match pending {
            Pending::CacheLookup => {
                let now = host::now_secs();
                let api = self.plan.as_ref().map_or(ApiFormat::OpenAi, |p| p.api);
                let found = body
                    .as_deref()
                    .and_then(|b| redis::reply_value("GET", b))
                    .and_then(|v| v.as_str().and_then(|s| CacheEntry::from_bytes(s.as_bytes(), api, now)));
                Some(self.on_cache(rt, found))
            }
            Pending::Budget { mut cas, mut reserve_id } => {
                let mut body = body;
                let reply = loop {
                    let step = cas.on_reply(&prefix, body.as_deref(), &mut rt.board.borrow_mut());
                    match step {
                        CasStep::Send(next_body) => {
                            match self.call_webdis(rt, &next_body, Pending::Budget { cas, reserve_id }) {
                                Ok(()) => return None,
                                Err(p) => match *p {
                                    Pending::Budget { cas: c, reserve_id: r } => (cas, reserve_id, body) = (c, r, None),
                                    _ => return Some(internal()),
                                },
                            }
                        }
                        CasStep::Done(replies) => break first_budget_reply(Some(replies)),
                        CasStep::Failed => break None,
                    }
                };
                self.reserve_in_flight = None;
                match reserve_id {
                    Some(id) => {
                        let outcome = store::reserve_outcome(reply);
                        if outcome == ReserveOutcome::StoreUnavailable
                            && let Some((tenant, config)) = &self.tenant
                        {
                            // The write may have landed after we gave up on
                            // it: release by id, so that hold holds nothing.
                            let op = LedgerOp::Release { budgets: config.budgets.clone(), id };
                            rt.queue_budget(tenant, vec![op], host::now_secs());
                        }
                        Some(self.with_plan(|p| p.on_reserve(outcome)))
                    }
                    None => {
                        let check = store::budget_check(reply);
                        Some(self.with_plan(|p| p.on_budget_check(check)))
                    }
                }
            }
            Pending::Usage(mut cas) => {
                let mut body = body;
                loop {
                    let step = cas.on_reply(&prefix, body.as_deref(), &mut rt.board.borrow_mut());
                    match step {
                        CasStep::Send(next_body) => match self.call_webdis(rt, &next_body, Pending::Usage(cas)) {
                            Ok(()) => return None,
                            Err(p) => match *p {
                                Pending::Usage(c) => (cas, body) = (c, None),
                                _ => break self.answer_usage(None, None),
                            },
                        },
                        CasStep::Done(replies) => break self.usage_report(rt, first_budget_reply(Some(replies))),
                        CasStep::Failed => break self.answer_usage(None, None),
                    }
                }
                None
            }
            Pending::UsageReport(budget, mut cas) => {
                match self.outcome_round(rt, &mut cas, body) {
                    Ok(Some(step)) => match step {
                        OutcomeStep::Done(report) => self.answer_usage(budget, Some(report)),
                        _ => self.answer_usage(None, None),
                    },
                    Ok(None) => {
                        if self.call_webdis_again(rt, &mut cas, |cas| Pending::UsageReport(budget, cas)).is_err() {
                            self.answer_usage(None, None);
                        }
                    }
                    Err(()) => self.answer_usage(None, None),
                }
                None
            }
            Pending::Feedback(mut cas, retries) => {
                match self.outcome_round(rt, &mut cas, body) {
                    Ok(Some(OutcomeStep::Done(reply))) => {
                        let unknown = matches!(reply, outcomes::OutcomeReply::UnknownRequest { .. });
                        if unknown && retries > 0 {
                            let wait = redis::command("BLPOP", &[b"tollgate:feedback-wait", FEEDBACK_RETRY_WAIT]);
                            let fresh = OutcomeCas::new(&cas.tenant, cas.op.clone(), cas.now);
                            if self.call_webdis(rt, &wait, Pending::FeedbackWait(fresh, retries - 1)).is_ok() {
                                return None;
                            }
                        }
                        self.answer_feedback(Some(TenantReply::Outcome(reply)), &cas.op);
                    }
                    Ok(Some(_)) | Err(()) => self.answer_feedback(None, &cas.op),
                    Ok(None) => {
                        let op = cas.op.clone();
                        if self.call_webdis_again(rt, &mut cas, |cas| Pending::Feedback(cas, retries)).is_err() {
                            self.answer_feedback(None, &op);
                        }
                    }
                }
                None
            }
            Pending::FeedbackWait(mut cas, retries) => {
                // Whatever the wait answered, ask again.
                let first = cas.start(&prefix);
                let op = cas.op.clone();
                if self.call_webdis(rt, &first, Pending::Feedback(cas, retries)).is_err() {
                    self.answer_feedback(None, &op);
                }
                None
            }
            Pending::FeedbackExport(mut cas) => {
                match self.outcome_round(rt, &mut cas, body) {
                    Ok(Some(OutcomeStep::Done(reply))) => self.answer_export(Some(TenantReply::Outcome(reply))),
                    Ok(Some(_)) | Err(()) => self.answer_export(None),
                    Ok(None) => {
                        if self.call_webdis_again(rt, &mut cas, Pending::FeedbackExport).is_err() {
                            self.answer_export(None);
                        }
                    }
                }
                None
            }
            Pending::Fallback(_) => Some(internal()),
        }
    }

    /// Feed webdis's answer to an outcome op. `Ok(Some(Done))`: finished;
    /// `Ok(None)`: the op sent another round's request (in `cas`), to be
    /// dispatched by the caller; `Err`: failed.
    fn outcome_round(
        &mut self,
        rt: &Runtime,
        cas: &mut OutcomeCas,
        body: Option<Vec<u8>>,
    ) -> Result<Option<OutcomeStep>, ()> {
        match cas.on_reply(&rt.config.redis.key_prefix, body.as_deref()) {
            OutcomeStep::Done(reply) => Ok(Some(OutcomeStep::Done(reply))),
            OutcomeStep::Send(next) => {
                self.next_round = Some(next);
                Ok(None)
            }
            OutcomeStep::Failed => Err(()),
        }
    }

    /// Dispatch the round `outcome_round` prepared.
    fn call_webdis_again(
        &mut self,
        rt: &Runtime,
        cas: &mut OutcomeCas,
        pending: impl FnOnce(OutcomeCas) -> Pending,
    ) -> Result<(), Box<Pending>> {
        let body = self.next_round.take().unwrap_or_default();
        let cas = std::mem::replace(cas, OutcomeCas::new("", OutcomeOp::Report, 0));
        self.call_webdis(rt, &body, pending(cas))
    }

    /// Set the provider's headers and the rewritten body on the paused
    /// request; the route table then sends it to the provider's cluster.
    fn rewrite_request(&mut self, rt: &Runtime, up: &Upstream, key: &str) {
        let route = rt.config.route(up.target.provider);
        let path = route.path(up.api);
        let provider_headers = upstream::provider_headers(up.target.provider, key, &self.client_headers);
        let length = up.body.len().to_string();
        let mut set: Vec<(&str, &str)> = vec![
            (":authority", route.authority.as_str()),
            (":path", path.as_str()),
            ("x-tollgate-provider", up.target.provider.as_str()),
            ("content-length", length.as_str()),
        ];
        set.extend(provider_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        // A JSON answer gets the configured deadline, as a fallback call
        // does; a stream is bounded by the route's timeouts instead (a
        // whole-response deadline would cut long answers off).
        let deadline = rt.config.upstream_timeout_ms.to_string();
        if !self.plan.as_ref().is_some_and(|p| p.request().stream) {
            set.push(("x-envoy-upstream-rq-timeout-ms", deadline.as_str()));
        }
        // Everything else the client sent stays behind: above all its
        // tollgate key (the provider gets the provider's key), cookies and
        // any x-tollgate-provider it tried to set. Pseudo-headers and
        // Envoy's own x-forwarded-*/x-request-id stay.
        for (name, _) in host::headers(MapType::HttpRequestHeaders) {
            let lower = name.to_ascii_lowercase();
            let keep = lower.starts_with(':')
                || lower.starts_with("x-forwarded-")
                || lower == "x-request-id"
                || set.iter().any(|(n, _)| *n == lower);
            if !keep {
                let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, &name);
            }
        }
        for (name, value) in set {
            if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)) {
                log::error!("tollgate: could not set request header `{name}`: {status:?}");
            }
        }
        if let Err(status) = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, usize::MAX, &up.body) {
            log::error!("tollgate: could not rewrite the request body: {status:?}");
        }
        // Replacing headers already clears Envoy's route cache; ask again
        // explicitly in case a host version does not.
        let _ = hostcalls::call_foreign_function("clear_route_cache", None);
    }

    /// Send a fallback attempt. None: waiting on the provider.
    fn call_fallback(&mut self, rt: &Runtime, up: Upstream, key: &str) -> Option<Next> {
        let route = rt.config.route(up.target.provider);
        let path = route.path(up.api);
        let provider_headers = upstream::provider_headers(up.target.provider, key, &self.client_headers);
        let mut headers: Vec<(&str, &str)> =
            vec![(":method", "POST"), (":path", path.as_str()), (":authority", route.authority.as_str())];
        headers.extend(provider_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let timeout = Duration::from_millis(rt.config.upstream_timeout_ms);
        match self.dispatch_http_call(&route.cluster, headers, Some(&up.body), vec![], timeout) {
            Ok(token) => {
                self.pending = Some((token, Pending::Fallback(up)));
                None
            }
            Err(status) => {
                log::warn!("tollgate: could not call cluster `{}` for {}: {status:?}", route.cluster, up.target);
                self.note_attempt(rt, &up, None, None);
                Some(self.with_plan(|p| p.on_upstream_failure(None)))
            }
        }
    }

    fn on_fallback_answer(&mut self, rt: &Rc<Runtime>, up: Upstream, num_headers: usize, body_size: usize) -> Flow {
        let status = (num_headers > 0)
            .then(|| host::header(MapType::HttpCallResponseHeaders, ":status"))
            .flatten()
            .and_then(|s| s.parse::<u16>().ok());
        let body = host::buffer(BufferType::HttpCallResponseBody, body_size);
        let content_type = host::header(MapType::HttpCallResponseHeaders, "content-type").unwrap_or_default();
        // A callout that timed out (or could not connect) is a failure
        // without a provider status, whatever status Envoy gave it.
        let status = status.filter(|&s| !host::callout_made_by_envoy(s, &content_type, &body));
        let retry_after = host::header(MapType::HttpCallResponseHeaders, "retry-after");
        self.note_attempt(rt, &up, status, retry_after.as_deref());
        let status = match status {
            Some(s) if !Plan::is_retryable(s) && Plan::can_pass_through(s) => s,
            other => {
                log::warn!("tollgate: fallback {} failed: {other:?}", up.target);
                let next = self.with_plan(|p| p.on_upstream_failure(other));
                return self.drive(rt, next);
            }
        };
        let Some((_, config)) = self.tenant.clone() else { return Flow::Responded };
        let Some(plan) = self.plan.as_mut() else { return Flow::Responded };
        let streamed = content_type.contains("text/event-stream") && (200..300).contains(&status);
        let (out, summary, assembled) = if streamed {
            // A callout's answer arrives whole, so a fallback's stream
            // reaches the client in one piece (envoy/README.md).
            let mut observer = plan.stream_observer(&up);
            let mut out = Vec::new();
            observer.feed(&body, &mut out);
            let outcome = observer.finish(&mut out);
            (out, outcome.summary, outcome.assembled)
        } else {
            let (summary, assembled) = plan.read_json_response(&body);
            if let Some(step) = plan.review(status, &summary, &body, &config) {
                return self.drive(rt, step);
            }
            (body, summary, assembled)
        };
        let fin = plan.finish(status, &summary, assembled, &config, host::now_secs());
        let content_type = if content_type.is_empty() { "application/json".to_owned() } else { content_type };
        let mut headers = vec![("content-type".to_owned(), content_type)];
        if streamed {
            headers.push(("cache-control".to_owned(), "no-cache".to_owned()));
        }
        headers.extend(plan.response_headers());
        self.after_answer(rt, &fin);
        self.send(status, &headers, &out);
        Flow::Responded
    }

    /// Settle an attempt that ended without closing the request (an answer
    /// held back for escalation, or a failed tier). With Redis the
    /// settlement is queued like any other; the next tier's reservation may
    /// reach Redis first and then sees the earlier hold still out, which
    /// errs on the side of refusing the escalation.
    fn settle_attempt(&self, rt: &Runtime, tenant: &str, config: &TenantConfig, settlement: &Settlement) {
        let now = host::now_secs();
        let op = settlement.to_op(&config.budgets);
        if rt.redis_budgets() {
            rt.queue_budget(tenant, vec![op], now);
        } else if local_state::apply_budget(&rt.shared, tenant, &[op], now).is_none() {
            log::error!("tollgate: could not settle an escalated attempt for tenant `{tenant}` in shared data");
        }
    }

    /// Escalation: whether the core holds a complete JSON answer back (to
    /// ask the next tier, or to answer with an earlier one), and its step.
    fn review_json(&mut self, status: u16, body: &[u8]) -> Option<Next> {
        let (_, config) = self.tenant.clone()?;
        let plan = self.plan.as_mut()?;
        let (summary, _) = plan.read_json_response(body);
        plan.review(status, &summary, body, &config)
    }

    /// Tell the VM's cooldown table how the attempt at `up` ended (`status`
    /// None: timeout or connection failure).
    fn note_attempt(&self, rt: &Runtime, up: &Upstream, status: Option<u16>, retry_after: Option<&str>) {
        let Some(plan) = self.plan.as_ref() else { return };
        let update = plan.attempt_ended(up, status, retry_after, host::now_secs());
        if rt.cooldowns.borrow_mut().apply(&update) {
            self.count(metrics::COOLDOWNS_STARTED, &[("model", &up.target.model)], 1);
        }
    }

    /// Apply what closes the request: the settlement (budget store) and the
    /// outcome record (node-local ledger).
    fn close(&mut self, rt: &Runtime, settlement: Option<&Settlement>, finish: Option<&Finish>) {
        let (Some(plan), Some((tenant, config))) = (self.plan.as_ref(), self.tenant.as_ref()) else { return };
        if !self.finished {
            for skipped in plan.cooldown_skips() {
                self.count(metrics::COOLDOWN_SKIPS, &[("model", &skipped.model)], 1);
            }
        }
        self.finished = true;
        let now = host::now_secs();
        for op in store::closing_ops(plan, &config.budgets, settlement, finish) {
            match op {
                TenantOp::Budget(op) if rt.redis_budgets() => rt.queue_budget(tenant, vec![op], now),
                TenantOp::Budget(op) => {
                    if local_state::apply_budget(&rt.shared, tenant, &[op], now).is_none() {
                        log::error!("tollgate: could not settle a hold for tenant `{tenant}` in shared data");
                    }
                }
                TenantOp::Outcome(op) if rt.redis_budgets() => rt.queue_outcome(tenant, op, now),
                TenantOp::Outcome(op) => {
                    if local_state::apply_outcome(&rt.shared, tenant, &op, now).is_none() {
                        log::error!("tollgate: could not record an outcome for tenant `{tenant}` in shared data");
                    }
                }
            }
        }
    }

    /// Metrics, cache fill and closing ops for an answered request.
    fn after_answer(&mut self, rt: &Runtime, fin: &Finish) {
        self.count_routed(fin);
        if let Some(fill) = fin.cache_fill.clone() {
            match rt.config.cache {
                CacheBackend::Local => {
                    rt.cache.fill(&rt.shared, &fill);
                }
                CacheBackend::Redis => rt.queue_cache_fill(fill),
                CacheBackend::Off => {}
            }
        }
        self.close(rt, fin.settlement.as_ref(), Some(fin));
    }

    /// `tollgate.requests` and its tokens and cost: one answered request
    /// sent to a model (a cache hit is not one).
    fn count_routed(&self, fin: &Finish) {
        let Some(plan) = self.plan.as_ref() else { return };
        let tier = plan.tier.clone().unwrap_or_else(|| "pinned".to_owned());
        let model = plan.current_target().map_or_else(|| "none".to_owned(), |t| t.model.clone());
        let labels = [("tier", tier.as_str()), ("model", model.as_str())];
        self.count(metrics::REQUESTS, &labels, 1);
        if let Some(usage) = fin.usage {
            self.count(metrics::INPUT_TOKENS, &labels, usage.input_tokens);
            self.count(metrics::OUTPUT_TOKENS, &labels, usage.output_tokens);
        }
        self.count(metrics::COST_MICROS, &labels, fin.cost_micros);
    }

    // ---- response side ----------------------------------------------------

    fn finish_relay(&mut self) {
        let Some(rt) = self.rt.clone() else { return };
        let Some((_, config)) = self.tenant.clone() else { return };
        let (Some(relay), Some(plan)) = (self.relay.as_mut(), self.plan.as_mut()) else { return };
        let (summary, assembled) = match (relay.ended.take(), relay.observer.as_mut()) {
            (Some(outcome), _) => (outcome.summary, outcome.assembled),
            (None, Some(observer)) => {
                // Cut off: what was seen so far (the tail is never sent).
                let outcome = observer.finish(&mut Vec::new());
                (outcome.summary, outcome.assembled)
            }
            (None, None) if relay.overflow => (ResponseSummary::default(), None),
            (None, None) => plan.read_json_response(&relay.json),
        };
        let status = relay.status;
        relay.json = Vec::new();
        let fin = plan.finish(status, &summary, assembled, &config, host::now_secs());
        self.after_answer(&rt, &fin);
    }
}

/// The decision headers on the (held) response.
fn set_response_headers(plan: &Plan) {
    for (name, value) in plan.response_headers() {
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, &name, Some(&value));
    }
}

pub(crate) fn first_budget_reply(replies: Option<Vec<LedgerReply>>) -> Option<TenantReply> {
    replies.and_then(|r| r.into_iter().next()).map(TenantReply::Budget)
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        let Some(rt) = self.rt.clone() else { return };
        let Some((expected, pending)) = self.pending.take() else { return };
        if expected != token {
            self.pending = Some((expected, pending));
            return;
        }
        let in_request = self.forwarded.is_none() && !self.replacing;
        let flow = match pending {
            Pending::Fallback(up) => self.on_fallback_answer(&rt, up, num_headers, body_size),
            webdis => {
                let ok = num_headers > 0
                    && host::header(MapType::HttpCallResponseHeaders, ":status").as_deref() == Some("200");
                let body = ok.then(|| host::buffer(BufferType::HttpCallResponseBody, body_size));
                match self.on_webdis_answer(&rt, webdis, body) {
                    Some(next) => self.drive(&rt, next),
                    None => return,
                }
            }
        };
        if let (Flow::Forwarded, true) = (flow, in_request)
            && let Err(status) = hostcalls::resume_http_request()
        {
            log::error!("tollgate: could not resume the request: {status:?}");
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(rt) = self.rt.clone() else {
            // on_configure failed: Envoy would not have created this stream.
            return Action::Continue;
        };
        let method = host::header(MapType::HttpRequestHeaders, ":method").unwrap_or_default();
        let path = host::header(MapType::HttpRequestHeaders, ":path").unwrap_or_default();
        let endpoint = match endpoints::resolve(&method, &path) {
            Ok(e) => e,
            Err(e) => {
                self.send_error(&e);
                return Action::Pause;
            }
        };
        self.endpoint = Some(endpoint);
        if endpoint == Endpoint::Health {
            self.send_json(200, &endpoints::health("envoy"));
            return Action::Pause;
        }
        match self.authenticate(&rt) {
            Ok(t) => {
                self.metric_tenant = rt.config.per_tenant_metrics.then(|| t.0.clone());
                self.tenant = Some(t);
            }
            Err(e) => {
                self.send_error(&e);
                return Action::Pause;
            }
        }
        match endpoint {
            Endpoint::Models => {
                if let Some((_, config)) = self.tenant.clone() {
                    self.send_json(200, &endpoints::models_list(&config));
                }
                Action::Pause
            }
            Endpoint::Usage => {
                self.on_usage(&rt);
                Action::Pause
            }
            Endpoint::FeedbackExport => {
                self.on_feedback_export(&rt);
                Action::Pause
            }
            Endpoint::Chat(_) | Endpoint::Feedback | Endpoint::Health => {
                let declared = host::header(MapType::HttpRequestHeaders, "content-length")
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if let Some(len) = declared.filter(|len| *len > self.body_limit()) {
                    self.too_large(len);
                    return Action::Pause;
                }
                self.client_headers = host::headers(MapType::HttpRequestHeaders)
                    .into_iter()
                    .map(|(n, v)| (n.to_ascii_lowercase(), v))
                    .filter(|(n, _)| !n.starts_with(':'))
                    .collect();
                if end_of_stream {
                    // No body at all: the plan refuses it with the usual 400.
                    return self.on_http_request_body(0, true);
                }
                // Pause until the whole body is in: the model, the prompt and
                // everything routing, counting and caching decide on are in
                // the body, and the provider's headers (route, key, length)
                // can only be set while the headers are still held here.
                // Needs `allow_on_headers_stop_iteration: true`, or Envoy
                // would hold the body back too (envoy/README.md).
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(rt) = self.rt.clone() else { return Action::Continue };
        if self.local_reply || self.plan.is_some() || self.pending.is_some() {
            return Action::Pause;
        }
        if body_size > self.body_limit() {
            self.too_large(body_size);
            return Action::Pause;
        }
        if !end_of_stream {
            // Buffer: the next call sees everything so far.
            return Action::Pause;
        }
        let body = host::buffer(BufferType::HttpRequestBody, body_size);
        match self.endpoint {
            Some(Endpoint::Chat(api)) => self.on_chat_body(&rt, api, &body),
            Some(Endpoint::Feedback) => {
                self.on_feedback(&rt, &body);
                Action::Pause
            }
            _ => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.local_reply || self.forwarded.is_none() {
            return Action::Continue;
        }
        let Some(rt) = self.rt.clone() else { return Action::Continue };
        if self.relay.is_some() {
            return Action::Continue;
        }
        let status = host::header(MapType::HttpResponseHeaders, ":status").and_then(|s| s.parse::<u16>().ok());
        if let Some(up) = &self.forwarded {
            let provider_status = if host::response_made_by_envoy() { None } else { status };
            let retry_after = host::header(MapType::HttpResponseHeaders, "retry-after");
            self.note_attempt(&rt, up, provider_status, retry_after.as_deref());
        }
        let status = match status {
            Some(s) if !host::response_made_by_envoy() && !Plan::is_retryable(s) && Plan::can_pass_through(s) => s,
            failed => {
                // Envoy's own reply (a route timeout, a reset or refused
                // connection) is a failure without a provider status.
                let failed = if host::response_made_by_envoy() { None } else { failed };
                // Nothing has reached the client: hold this answer back and
                // try the next model (or answer with the plan's error).
                log::warn!("tollgate: the provider answered {failed:?}; trying the next model");
                self.replacing = true;
                let next = self.with_plan(|p| p.on_upstream_failure(failed));
                self.drive(&rt, next);
                return Action::Pause;
            }
        };
        let Some(plan) = self.plan.as_mut() else { return Action::Continue };
        let content_type = host::header(MapType::HttpResponseHeaders, "content-type").unwrap_or_default();
        let streamed = content_type.contains("text/event-stream") && (200..300).contains(&status);
        let observer = match (&self.forwarded, streamed) {
            (Some(up), true) => Some(plan.stream_observer(up)),
            _ => None,
        };
        if streamed {
            // A stream's headers go out now, with the estimate; its cost is
            // known only at its end (as on the Worker).
            set_response_headers(plan);
            // The observer may drop the usage chunk the router asked for.
            let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, "content-length");
        }
        self.relay = Some(Relay { status, observer, ended: None, json: Vec::new(), overflow: false });
        if end_of_stream {
            self.finish_relay();
            if !streamed && let Some(plan) = &self.plan {
                set_response_headers(plan);
            }
            return Action::Continue;
        }
        if streamed {
            // A stream's headers wait for its first bytes, so a provider that
            // breaks off before them costs the client a clean 502 (which
            // SDKs retry) rather than a 200 with an empty, broken stream.
            // It cannot fall back here: once an upstream answer's headers
            // reached this filter, Envoy sends its own reply for a broken
            // upstream straight to the client, past the filters
            // (envoy/README.md, "Differences from the Worker"). Needs
            // `allow_on_headers_stop_iteration`, so the body still reaches
            // this filter while the headers wait.
            return Action::Pause;
        }
        // A JSON answer is held to its end (the client waits for all of it
        // anyway) so that its headers carry the real cost, not the estimate.
        Action::Pause
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.local_reply {
            // Our own reply (it may pass through this filter's encoder side).
            return Action::Continue;
        }
        if self.replacing {
            // The failed answer's body, held until the reply replacing it is sent.
            return Action::Pause;
        }
        if self.finished {
            return Action::Continue;
        }
        let Some(relay) = self.relay.as_mut() else { return Action::Continue };
        let chunk = host::buffer(BufferType::HttpResponseBody, body_size);
        match relay.observer.as_mut() {
            Some(observer) => {
                // Continuing from here sends the held headers with these bytes.
                let mut out = Vec::with_capacity(chunk.len());
                observer.feed(&chunk, &mut out);
                if end_of_stream {
                    // Whatever the observer held back ends the stream.
                    relay.ended = Some(observer.finish(&mut out));
                }
                if out != chunk {
                    let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out);
                }
            }
            None => {
                if !end_of_stream {
                    // Buffered by Envoy: the next call sees everything so far.
                    return Action::Pause;
                }
                relay.overflow = chunk.len() > MAX_COPIED_RESPONSE;
                let status = relay.status;
                if !relay.overflow {
                    // Held to its end already (headers included), so it can
                    // still be replaced: escalation asks the next tier with
                    // `dispatch_http_call` and sends that answer instead.
                    if let (Some(step), Some(rt)) = (self.review_json(status, &chunk), self.rt.clone()) {
                        self.relay = None;
                        self.replacing = true;
                        self.drive(&rt, step);
                        return Action::Pause;
                    }
                    if let Some(relay) = self.relay.as_mut() {
                        relay.json = chunk;
                    }
                }
                self.finish_relay();
                if let Some(plan) = &self.plan {
                    set_response_headers(plan);
                }
                return Action::Continue;
            }
        }
        if end_of_stream {
            self.finish_relay();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // The stream is over, whatever happened: nothing may stay held.
        let Some(rt) = self.rt.clone() else { return };
        if let Some((_, Pending::Budget { cas, .. } | Pending::Usage(cas))) = self.pending.as_mut() {
            // Nobody will pick up its reply: other requests stop carrying it.
            cas.leave(&mut rt.board.borrow_mut());
        }
        if let (Some(id), Some((tenant, config))) = (self.reserve_in_flight.take(), &self.tenant) {
            // The client left while a Redis reserve was out: release by id,
            // so whichever lands first, nothing stays held.
            let op = LedgerOp::Release { budgets: config.budgets.clone(), id };
            rt.queue_budget(tenant, vec![op], host::now_secs());
        }
        if self.finished || self.plan.is_none() {
            return;
        }
        if self.relay.is_some() {
            // Cut off mid-answer (client abort or upstream reset): charge the
            // prompt and the output seen.
            self.finish_relay();
        } else if let Some(release) = self.plan.as_mut().and_then(Plan::cancel) {
            // Nothing was relayed: give the hold back.
            self.close(&rt, Some(&release), None);
        }
    }
}
