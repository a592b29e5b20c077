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
//!
//! The code follows that protocol, one file per stretch of it: `routing.rs`
//! builds the plan ([`Plan::new`]: parse, count, classify, choose the tier
//! and its chain); `steps.rs` takes the request side (start, cache, budget
//! check, reservation, forwarding, fallback and cooldown ordering);
//! `answer.rs` reads the provider's answer (stream observer, JSON reading,
//! review and escalation); `closing.rs` ends the request (finish,
//! settlement, outcome, cache fill, release, cancel, abandon).

mod answer;
mod closing;
mod routing;
mod steps;

pub use closing::{CacheFill, Finish, Settlement};
pub use routing::{AUTO_MODELS, CachePlan, Refused, RouteKind, classify_request, prompt_view_parts, request_id};
pub use steps::{BudgetCheck, ReserveOutcome, Upstream};

use crate::api::ApiFormat;
use crate::budget::{Amount, Granted, ReserveRequest};
use crate::cache::{CacheEntry, CacheKey};
use crate::config::{FailureMode, ModelRef, OnExhausted};
use crate::cooldown::CooldownSettings;
use crate::count::PromptCount;
use crate::error::ApiError;
use crate::escalation::{EscalationSettings, Signal};
use crate::pricing::ModelPrice;
use crate::request::ChatRequest;
use crate::trace::DecisionTrace;
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

impl Plan {
    /// The parsed request.
    pub fn request(&self) -> &ChatRequest {
        &self.request
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
}
