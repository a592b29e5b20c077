//! One HTTP stream: drives the core's [`Plan`] through Envoy's callbacks.
//!
//! The filter decides nothing: it takes the plan's steps in the order of
//! the core's reference driver (`tollgate_core::engine::drive`), one
//! callback at a time, and every branch here is on a [`Next`], an
//! [`AnswerStart`], a [`Duty`] or host I/O.
//!
//! Request side: the headers callback authenticates and then pauses; the
//! body is buffered to its end (the model is in the body, and so is
//! everything the router decides on); then the plan runs. Cache and budget
//! steps go to the tenant's store ([`crate::store`]), which answers at once
//! or with the stream paused until webdis answers. Forwarding rewrites the
//! buffered body and headers and lets the request continue to Envoy's router.
//!
//! Response side: the answer's head tells the plan how to take it. A
//! streamed answer passes chunk by chunk through the plan (usage is read on
//! the way); a JSON answer is held to its end and handed to the plan, which
//! relays it or replaces it (escalation). A failed attempt is held back, and
//! the next model is called with `dispatch_http_call`; its answer replaces
//! the failed one.

use crate::endpoints::Awaiting;
use crate::host;
use crate::metrics;
use crate::provider;
use crate::runtime::Runtime;
use crate::store::{self, Answer, Applied, Call};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::rc::Rc;
use std::sync::Arc;
use tollgate_core::auth::{self, ApiKeyRecord};
use tollgate_core::budget::scope::KeyScope;
use tollgate_core::config::ModelRef;
use tollgate_core::cooldown::CooldownUpdate;
use tollgate_core::endpoints::{self, Endpoint};
use tollgate_core::engine::{AnswerStart, Closing, Duty, Finish, Inbound, JsonAnswer, LocalResponse, request_id};
use tollgate_core::error::{AuthError, RequestError, TenantError, UpstreamError};
use tollgate_core::trace::CacheOutcome;
use tollgate_core::{ApiError, ApiFormat, Next, Plan, TenantConfig};

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
    /// The store's answer to a step of the plan.
    Step(Call, StoreStep),
    /// The store's answer for an endpoint.
    Endpoint(Call, Awaiting),
    /// A fallback attempt at this model.
    Fallback(ModelRef),
}

/// The plan's steps that ask the tenant's store.
pub(crate) enum StoreStep {
    Cache,
    BudgetCheck,
    Reserve,
}

/// How the router's answer is being taken ([`AnswerStart`]).
#[derive(Clone, Copy)]
enum Taking {
    Stream,
    Json,
}

pub struct Stream {
    pub(crate) rt: Option<Rc<Runtime>>,
    entropy: [u8; 16],
    pub(crate) request_id: String,
    endpoint: Option<Endpoint>,
    pub(crate) tenant: Option<(String, Arc<TenantConfig>)>,
    /// The caller's key as a budget level, when its record sets limits.
    pub(crate) key_scope: Option<Arc<KeyScope>>,
    client_headers: Vec<(String, String)>,
    plan: Option<Plan>,
    pub(crate) pending: Option<(u32, Pending)>,
    /// The first attempt went to the router; its response is ours to read.
    forwarded: bool,
    /// The router's answer, once its head arrived and the plan took it.
    taking: Option<Taking>,
    /// The failed first answer is being replaced (fallback or error).
    replacing: bool,
    /// The filter sent its own reply ([`Stream::send`]).
    pub(crate) local_reply: bool,
    /// The request's closing was applied.
    finished: bool,
    /// The tenant id as a metric label, when the operator asked for it.
    metric_tenant: Option<String>,
}

fn internal() -> Next {
    let err = ApiError::new(503, "api_error", "internal_unavailable", "tollgate lost the request's state; retry")
        .with_retry_after(1);
    Next::Respond(LocalResponse::error(&err, None), Closing::default())
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
            key_scope: None,
            plan: None,
            pending: None,
            forwarded: false,
            taking: None,
            replacing: false,
            local_reply: false,
            finished: false,
            metric_tenant: None,
        }
    }

    pub(crate) fn count(&self, metric: &str, labels: &[(&str, &str)], by: u64) {
        if let Some(rt) = &self.rt {
            rt.counters.add(&metrics::name(metric, self.metric_tenant.as_deref(), labels), by);
        }
    }

    /// Call into the plan, then hand out the work it left that waits for
    /// nothing: a lost reserve's release, a cooldown update. None when
    /// there is no plan.
    fn with_plan<T>(&mut self, rt: &Runtime, f: impl FnOnce(&mut Plan) -> T) -> Option<T> {
        let plan = self.plan.as_mut()?;
        let out = f(plan);
        let duties: Vec<Duty> = std::iter::from_fn(|| plan.poll_duty()).collect();
        for duty in duties {
            match duty {
                Duty::Detached(ops) => {
                    if let Some((tenant, _)) = &self.tenant {
                        store::apply_detached(rt, tenant, ops, host::now_secs());
                    }
                }
                Duty::Cooldown(update) => {
                    if rt.cooldowns.borrow_mut().apply(&update)
                        && let CooldownUpdate::Failed { model, .. } = &update
                    {
                        self.count(metrics::COOLDOWNS_STARTED, &[("model", &model.model)], 1);
                    }
                }
            }
        }
        Some(out)
    }

    /// The plan's next step from `f`, or an internal error if the plan is gone.
    fn next_step(&mut self, rt: &Runtime, f: impl FnOnce(&mut Plan) -> Next) -> Next {
        self.with_plan(rt, f).unwrap_or_else(internal)
    }

    // ---- request side -----------------------------------------------------

    fn authenticate(&mut self, rt: &Runtime) -> Result<(String, Arc<TenantConfig>), ApiError> {
        let authorization = host::header(MapType::HttpRequestHeaders, "authorization");
        let x_api_key = host::header(MapType::HttpRequestHeaders, "x-api-key");
        let key = auth::extract_api_key(authorization.as_deref(), x_api_key.as_deref())?;
        let key_hash = auth::hash_api_key(key);
        let record: &ApiKeyRecord = rt.config.api_keys.get(&key_hash).ok_or(ApiError::from(AuthError::UnknownKey))?;
        if record.disabled {
            return Err(AuthError::UnknownKey.into());
        }
        // The key's id for attribution, and its limits if it has any
        // (shared with the config: no copy per request).
        self.key_scope = rt.config.key_scopes.get(&key_hash).cloned();
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
        let (user_header, tags_header) = tollgate_core::engine::inbound_headers(&config, &self.client_headers);
        let inbound = Inbound {
            tenant_id: &tenant_id,
            api,
            body,
            cache_control,
            now,
            entropy: self.entropy,
            key: self.key_scope.as_deref(),
            user_header,
            tags_header,
        };
        let mut plan = match Plan::new(&config, &inbound) {
            Ok(p) => p,
            Err(refused) => {
                self.send_local(&refused.response());
                return Action::Pause;
            }
        };
        plan.consult_cooldowns(&rt.cooldowns.borrow(), now);
        // The desk batches this tenant's closes while its requests overlap.
        rt.desk.borrow_mut().request_started(&tenant_id);
        self.plan = Some(plan);
        let next = self.next_step(rt, Plan::start);
        match self.drive(rt, next) {
            Flow::Forwarded => Action::Continue,
            Flow::Waiting | Flow::Responded => Action::Pause,
        }
    }

    /// Take the plan's steps until it forwards, waits on a callout or responds.
    fn drive(&mut self, rt: &Rc<Runtime>, mut next: Next) -> Flow {
        loop {
            let Some((tenant, _)) = self.tenant.clone() else { return Flow::Responded };
            let now = host::now_secs();
            // The step after this one; None while a callout is out.
            let step = match next {
                Next::Respond(local, closing) => {
                    // A cache hit counts in `tollgate.cache_hits`, not in
                    // `tollgate.requests` (requests sent to a model).
                    self.close(rt, closing);
                    self.send_local(&local);
                    return Flow::Responded;
                }
                Next::LookupCache(key) => {
                    let api = self.plan.as_ref().map_or(ApiFormat::OpenAi, |p| p.api);
                    self.ask_store(rt, StoreStep::Cache, store::lookup_cache(rt, &key, api, now))
                }
                Next::CheckBudget(op) => {
                    self.ask_store(rt, StoreStep::BudgetCheck, store::apply(rt, &tenant, vec![op], now))
                }
                Next::Reserve(op) => self.ask_store(rt, StoreStep::Reserve, store::apply(rt, &tenant, vec![op], now)),
                Next::Escalate(ops) => {
                    // The attempt that ended is settled without waiting, as
                    // every settlement is (see `store::apply_detached`).
                    store::apply_detached(rt, &tenant, ops, now);
                    Some(self.next_step(rt, Plan::escalate))
                }
                Next::Forward(up) => match rt.provider_keys.get(&up.target.provider).cloned() {
                    None => {
                        let err: ApiError =
                            UpstreamError::NotConfigured { provider: up.target.provider.to_string() }.into();
                        Some(self.next_step(rt, |p| p.abandon(&err)))
                    }
                    Some(key) => {
                        if up.attempt > 0 {
                            let tier =
                                self.plan.as_ref().and_then(|p| p.tier.clone()).unwrap_or_else(|| "pinned".into());
                            self.count(metrics::FALLBACKS, &[("tier", &tier)], 1);
                        }
                        if !self.forwarded && !self.replacing {
                            // The first attempt: the held request goes on to the router.
                            let streamed = self.plan.as_ref().is_some_and(|p| p.request().stream);
                            provider::rewrite_request(rt, &up, &key, &self.client_headers, streamed);
                            self.forwarded = true;
                            return Flow::Forwarded;
                        }
                        match provider::call(rt, &up, &key, &self.client_headers) {
                            Some(token) => {
                                self.pending = Some((token, Pending::Fallback(up.target)));
                                None
                            }
                            None => Some(self.attempt_lost(rt, now)),
                        }
                    }
                },
            };
            match step {
                Some(step) => next = step,
                None => return Flow::Waiting,
            }
        }
    }

    /// An attempt that got no answer at all: a timeout, as the reference
    /// driver takes it.
    fn attempt_lost(&mut self, rt: &Runtime, now: u64) -> Next {
        self.next_step(rt, |p| p.on_no_answer(None, None, now))
    }

    /// Ask the tenant's store for `step`: the plan's next step if it
    /// answered now; else None, and its answer continues the plan later.
    fn ask_store(&mut self, rt: &Runtime, step: StoreStep, applied: Applied) -> Option<Next> {
        match applied {
            Applied::Now(answer) => Some(self.on_store_answer(rt, step, answer)),
            Applied::Later(token, call) => {
                self.pending = Some((token, Pending::Step(call, step)));
                None
            }
        }
    }

    /// The store answered a step of the plan: the plan's next step.
    fn on_store_answer(&mut self, rt: &Runtime, step: StoreStep, answer: Answer) -> Next {
        match step {
            StoreStep::Cache => {
                let found = answer.entry();
                let hit = found.is_some();
                let next = self.next_step(rt, |p| p.on_cache_lookup(found, |key| store::seen_before(rt, key)));
                let served = hit && self.plan.as_ref().is_some_and(|p| p.trace.cache == Some(CacheOutcome::Hit));
                self.count(if served { metrics::CACHE_HITS } else { metrics::CACHE_MISSES }, &[], 1);
                next
            }
            StoreStep::BudgetCheck => self.next_step(rt, |p| p.on_budget_reply(answer.first_reply())),
            StoreStep::Reserve => self.next_step(rt, |p| p.on_reserve_reply(answer.first_reply())),
        }
    }

    /// A fallback's answer, whole (a callout's answer arrives in one piece).
    fn on_fallback_answer(
        &mut self,
        rt: &Rc<Runtime>,
        target: &ModelRef,
        num_headers: usize,
        body_size: usize,
    ) -> Flow {
        let status = (num_headers > 0)
            .then(|| host::header(MapType::HttpCallResponseHeaders, ":status"))
            .flatten()
            .and_then(|s| s.parse::<u16>().ok());
        let body = host::buffer(BufferType::HttpCallResponseBody, body_size);
        let content_type = host::header(MapType::HttpCallResponseHeaders, "content-type").unwrap_or_default();
        // A callout that timed out (or could not connect) is a failure
        // without a provider status, whatever status Envoy gave it.
        let status = status.filter(|&s| !crate::header_map::callout_made_by_envoy(s, &content_type, &body));
        let retry_after = host::header(MapType::HttpCallResponseHeaders, "retry-after");
        let now = host::now_secs();
        let start = self.with_plan(rt, |p| p.on_answer_head(status, &content_type, retry_after.as_deref(), now));
        match start {
            None => self.drive(rt, internal()),
            Some(AnswerStart::Failed(next)) => {
                log::warn!("tollgate: fallback {target} failed: {status:?}");
                self.drive(rt, *next)
            }
            Some(AnswerStart::ReadBody) => match self.with_plan(rt, |p| p.on_json_answer(Some(&body), now)) {
                Some(JsonAnswer::Relay(relay)) => {
                    self.close(rt, relay.closing);
                    self.send(relay.status, &relay.headers, relay.body.as_deref().unwrap_or(&body));
                    Flow::Responded
                }
                Some(JsonAnswer::Replace(next)) => self.drive(rt, next),
                None => self.drive(rt, internal()),
            },
            Some(AnswerStart::Stream { status, headers }) => {
                // A callout's answer arrives whole, so a fallback's stream
                // reaches the client in one piece (envoy/README.md).
                let mut out = Vec::with_capacity(body.len());
                let closing = self.with_plan(rt, |p| {
                    p.on_stream_chunk(&body, &mut out);
                    p.on_stream_end(&mut out, now)
                });
                self.close(rt, closing.unwrap_or_default());
                self.send(status, &headers, &out);
                Flow::Responded
            }
        }
    }

    /// The router's JSON answer was read: relay it (the held response goes
    /// on, with the plan's headers) or replace it with the plan's next step.
    fn on_router_json(&mut self, rt: &Rc<Runtime>, answer: Option<JsonAnswer>) -> Action {
        let next = match answer {
            Some(JsonAnswer::Relay(relay)) => {
                self.close(rt, relay.closing);
                set_response_headers(&relay.headers);
                if let Some(body) = &relay.body {
                    // The answer translated into the client's API: the held
                    // body is replaced, so the provider's length is wrong.
                    let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, "content-length");
                    let status = relay.status.to_string();
                    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, ":status", Some(&status));
                    if let Err(status) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, usize::MAX, body) {
                        log::error!("tollgate: could not replace the response body: {status:?}");
                    }
                }
                return Action::Continue;
            }
            Some(JsonAnswer::Replace(next)) => next,
            None => internal(),
        };
        // Held to its end already (headers included), so it can still be
        // replaced: escalation asks the next tier with `dispatch_http_call`
        // and sends that answer instead.
        self.taking = None;
        self.replacing = true;
        self.drive(rt, next);
        Action::Pause
    }

    /// Apply what closes the request: the cache fill first (so a recorded
    /// request's entry exists), then the settlement and the outcome record.
    fn close(&mut self, rt: &Runtime, closing: Closing) {
        if let (false, Some(plan)) = (self.finished, self.plan.as_ref()) {
            for skipped in plan.cooldown_skips() {
                self.count(metrics::COOLDOWN_SKIPS, &[("model", &skipped.model)], 1);
            }
            if let Some((tenant, _)) = &self.tenant {
                rt.desk.borrow_mut().request_ended(tenant);
            }
        }
        self.finished = true;
        if let Some(finish) = &closing.finish {
            self.count_routed(finish);
        }
        let Some((tenant, _)) = self.tenant.clone() else { return };
        if let Some(fill) = closing.cache_fill {
            store::fill_cache(rt, fill);
        }
        store::apply_detached(rt, &tenant, closing.ops, host::now_secs());
    }

    /// `tollgate.requests` and its tokens and cost: one answered request
    /// sent to a model (a cache hit is not one).
    fn count_routed(&self, finish: &Finish) {
        let Some(plan) = self.plan.as_ref() else { return };
        let tier = plan.tier.clone().unwrap_or_else(|| "pinned".to_owned());
        let model = plan.current_target().map_or_else(|| "none".to_owned(), |t| t.model.clone());
        let labels = [("tier", tier.as_str()), ("model", model.as_str())];
        self.count(metrics::REQUESTS, &labels, 1);
        if let Some(usage) = finish.usage {
            self.count(metrics::INPUT_TOKENS, &labels, usage.input_tokens);
            self.count(metrics::OUTPUT_TOKENS, &labels, usage.output_tokens);
        }
        self.count(metrics::COST_MICROS, &labels, finish.cost_micros);
    }
}

/// Set these headers on the (held) response.
fn set_response_headers(headers: &[(String, String)]) {
    for (name, value) in headers {
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
    }
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        let Some(rt) = self.rt.clone() else { return };
        let Some((expected, pending)) = self.pending.take() else { return };
        if expected != token {
            self.pending = Some((expected, pending));
            return;
        }
        let in_request = !self.forwarded && !self.replacing;
        let flow = match pending {
            Pending::Fallback(target) => self.on_fallback_answer(&rt, &target, num_headers, body_size),
            Pending::Step(call, step) => match call.on_answer(&rt, num_headers, body_size) {
                Applied::Now(answer) => {
                    let next = self.on_store_answer(&rt, step, answer);
                    self.drive(&rt, next)
                }
                Applied::Later(token, call) => {
                    self.pending = Some((token, Pending::Step(call, step)));
                    return;
                }
            },
            Pending::Endpoint(call, awaiting) => {
                match call.on_answer(&rt, num_headers, body_size) {
                    Applied::Now(answer) => self.on_endpoint_answer(answer, awaiting),
                    Applied::Later(token, call) => self.pending = Some((token, Pending::Endpoint(call, awaiting))),
                }
                return;
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
        if endpoint == Endpoint::Dashboard {
            let (headers, body) = endpoints::dashboard();
            self.send(200, &headers, body);
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
                self.on_usage();
                Action::Pause
            }
            Endpoint::FeedbackExport => {
                self.on_feedback_export();
                Action::Pause
            }
            Endpoint::Chat(_) | Endpoint::Feedback | Endpoint::Health | Endpoint::Dashboard => {
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
                self.on_feedback(&body);
                Action::Pause
            }
            _ => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.local_reply || !self.forwarded || self.taking.is_some() {
            return Action::Continue;
        }
        let Some(rt) = self.rt.clone() else { return Action::Continue };
        // Envoy's own reply (a route timeout, a reset or refused connection)
        // is a failure without a provider status.
        let status = if host::response_made_by_envoy() {
            None
        } else {
            host::header(MapType::HttpResponseHeaders, ":status").and_then(|s| s.parse::<u16>().ok())
        };
        let content_type = host::header(MapType::HttpResponseHeaders, "content-type").unwrap_or_default();
        let retry_after = host::header(MapType::HttpResponseHeaders, "retry-after");
        let now = host::now_secs();
        let start = self.with_plan(&rt, |p| p.on_answer_head(status, &content_type, retry_after.as_deref(), now));
        match start {
            None => Action::Continue,
            Some(AnswerStart::Failed(next)) => {
                // Nothing has reached the client: hold this answer back and
                // try the next model (or answer with the plan's error).
                log::warn!("tollgate: the provider answered {status:?}; trying the next model");
                self.replacing = true;
                self.drive(&rt, *next);
                Action::Pause
            }
            Some(AnswerStart::ReadBody) => {
                self.taking = Some(Taking::Json);
                if end_of_stream {
                    let answer = self.with_plan(&rt, |p| p.on_json_answer(Some(&[]), now));
                    return self.on_router_json(&rt, answer);
                }
                // A JSON answer is held to its end (the client waits for all
                // of it anyway) so that its headers carry the real cost, not
                // the estimate, and so that it can still be replaced.
                Action::Pause
            }
            Some(AnswerStart::Stream { headers, .. }) => {
                self.taking = Some(Taking::Stream);
                // A stream's headers go out with its first bytes, with the
                // estimate; its cost is known only at its end (as on the Worker).
                set_response_headers(&headers);
                // The plan may drop the usage chunk the router asked for.
                let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, "content-length");
                if end_of_stream {
                    let closing = self.with_plan(&rt, |p| p.on_stream_end(&mut Vec::new(), now));
                    self.close(&rt, closing.unwrap_or_default());
                    return Action::Continue;
                }
                // A stream's headers wait for its first bytes, so a provider that
                // breaks off before them costs the client a clean 502 (which
                // SDKs retry) rather than a 200 with an empty, broken stream.
                // It cannot fall back here: once an upstream answer's headers
                // reached this filter, Envoy sends its own reply for a broken
                // upstream straight to the client, past the filters
                // (envoy/README.md, "Differences from the Worker"). Needs
                // `allow_on_headers_stop_iteration`, so the body still reaches
                // this filter while the headers wait.
                Action::Pause
            }
        }
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
        let (Some(taking), Some(rt)) = (self.taking, self.rt.clone()) else { return Action::Continue };
        let chunk = host::buffer(BufferType::HttpResponseBody, body_size);
        let now = host::now_secs();
        match taking {
            Taking::Stream => {
                // Continuing from here sends the held headers with these bytes.
                let mut out = Vec::with_capacity(chunk.len());
                let closing = self.with_plan(&rt, |p| {
                    p.on_stream_chunk(&chunk, &mut out);
                    // Whatever the plan held back ends the stream.
                    end_of_stream.then(|| p.on_stream_end(&mut out, now))
                });
                if out != chunk {
                    let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out);
                }
                if let Some(Some(closing)) = closing {
                    self.close(&rt, closing);
                }
                Action::Continue
            }
            Taking::Json => {
                if !end_of_stream {
                    // Buffered by Envoy: the next call sees everything so far.
                    return Action::Pause;
                }
                let read = (chunk.len() <= MAX_COPIED_RESPONSE).then_some(chunk.as_slice());
                let answer = self.with_plan(&rt, |p| p.on_json_answer(read, now));
                self.on_router_json(&rt, answer)
            }
        }
    }

    fn on_log(&mut self) {
        // The stream is over, whatever happened: nothing may stay held.
        let Some(rt) = self.rt.clone() else { return };
        if let Some((_, Pending::Step(call, _) | Pending::Endpoint(call, _))) = self.pending.take() {
            // Nobody will pick up its answer.
            call.abandon(&rt);
        }
        if self.finished || self.plan.is_none() {
            return;
        }
        // Cut off (client abort or upstream reset): the plan charges what
        // was seen of an answer, or gives the hold back.
        let now = host::now_secs();
        let closing = self.with_plan(&rt, |p| p.on_cut_off(now));
        self.close(&rt, closing.unwrap_or_default());
    }
}
