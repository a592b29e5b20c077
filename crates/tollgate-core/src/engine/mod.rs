//! The per-request decision, as a state machine the hosts drive.
//!
//! The core never does I/O. [`Plan::new`] parses, counts, classifies and
//! routes; from then on every method returns a [`Next`] step telling the
//! host what to do (look something up, reserve budget, forward, respond),
//! and the host feeds the result back in. Both hosts run exactly this code,
//! so they make the same decisions; only the I/O differs.
//!
//! ```text
//! Plan::new ─► start ─► LookupCache ─► on_cache ─┬─► Respond (hit) + Closing
//!                  │                              ├─► CheckBudget(op) ─► on_budget_reply ─► Respond
//!                  └──────────────► Reserve(op) ◄─┘
//!                                     │ on_reserve_reply   (lost: Duty::Detached release)
//!                                     ▼
//!                                  Forward ─► on_answer_head ─┬─► Failed(next): fallback | Escalate | Respond
//!                                                             ├─► Stream: on_stream_chunk … on_stream_end ─► Closing
//!                                                             └─► ReadBody: on_json_answer ─► Relay + Closing
//!                                                                                          └─► Escalate(ops) ─► escalate
//! ```
//!
//! A [`Closing`] is what ends a request in the tenant's store: the ledger
//! operations (settle or release, and the outcome record) and the cache
//! fill. Work that waits for nothing (a lost reserve's release, cooldown
//! updates) is drained with [`Plan::poll_duty`] after every call.
//! [`drive`] is the loop written once: the simulator runs it, and the two
//! hosts pump the same steps in the same order with their own I/O.
//!
//! Escalation (off unless the tenant turns it on) adds one loop: a complete
//! JSON answer from a cheaper tier is reviewed in [`Plan::on_json_answer`],
//! and a tier whose every model failed is seen in `on_answer_head`; either
//! may return [`Next::Escalate`], after which the host applies its
//! operations and calls [`Plan::escalate`], which reserves for and forwards
//! to the next tier. The unresolved answer is kept in the plan, so if the
//! next tier fails too the client still gets it.
//!
//! The code follows that protocol, one file per stretch of it: `routing.rs`
//! builds the plan ([`Plan::new`]: parse, count, classify, choose the tier
//! and its chain); `steps.rs` takes the request side (start, cache, budget
//! check, reservation, forwarding, fallback and cooldown ordering);
//! `answer.rs` takes the provider's answer (its head, the stream, the JSON
//! body, review and escalation); `closing.rs` ends the request (finish,
//! settlement, outcome, cache fill, release, cancel, abandon); `drive.rs` is
//! the reference driver.

mod answer;
mod closing;
mod drive;
mod routing;
mod steps;

pub use closing::{CacheFill, Finish, Settlement};
pub use drive::{Driven, ProviderAnswer, StepHost, drive};
pub use routing::{
    AUTO_MODELS, CachePlan, DEFAULT_MAX_TOOL_CALLS, Refused, RouteKind, classify_request, prompt_view_parts, request_id,
};
pub use steps::{BudgetCheck, ReserveOutcome, Upstream};

use crate::api::ApiFormat;
use crate::budget::scope::{KeyScope, Scopes};
use crate::budget::{Amount, Granted, ReserveRequest};
use crate::cache::{CacheEntry, CacheKey};
use crate::config::{Budgets, CacheSettings, FailureMode, ModelRef, OnExhausted};
use crate::cooldown::{CooldownSettings, CooldownUpdate};
use crate::count::PromptCount;
use crate::error::ApiError;
use crate::escalation::{EscalationSettings, Signal};
use crate::pricing::ModelPrice as Price;
use crate::pricing::ModelPrice;
use crate::request::ChatRequest;
use crate::response::StreamObserver;
use crate::store::TenantOp;
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
    /// The API key the request came with, as a budget level (its record's
    /// limits), when the host knows its record.
    pub key: Option<&'a KeyScope>,
    /// The value of the header the tenant names for end users
    /// ([`crate::config::TenantConfig::user_header`]), if the request has it.
    pub user_header: Option<&'a str>,
    /// The request's `x-tollgate-tags` header ([`TAGS_HEADER`]), if any.
    pub tags_header: Option<&'a str>,
}

/// The request header naming a request's tags: comma-separated, at most
/// [`MAX_TAGS`], each 1 to [`MAX_TAG_BYTES`] of letters, digits and
/// `_ - . : = /`.
pub const TAGS_HEADER: &str = "x-tollgate-tags";

/// The request headers [`Inbound`] carries, read from the client's
/// `headers` (name, value) by the names the router and the tenant's config
/// use: (the end-user header the tenant names, [`TAGS_HEADER`]). Both hosts
/// call this, so they read the same headers the same way.
pub fn inbound_headers<'a>(
    config: &crate::config::TenantConfig,
    headers: &'a [(String, String)],
) -> (Option<&'a str>, Option<&'a str>) {
    let find = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    (config.user_header().and_then(find), find(TAGS_HEADER))
}
pub const MAX_TAGS: usize = 8;
pub const MAX_TAG_BYTES: usize = 64;

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
///
/// Every step that touches the tenant's store carries the ready ledger
/// operations, and every step that ends the request carries its
/// [`Closing`], so a host never builds an operation or reads the config
/// back: it moves bytes. Besides the step, a host drains [`Plan::poll_duty`]
/// after every call (work that waits for nothing: a lost reserve's release,
/// a cooldown update).
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Send this response, then apply the [`Closing`].
    Respond(LocalResponse, Closing),
    /// Get this key from the cache, then call [`Plan::on_cache`].
    LookupCache(CacheKey),
    /// Apply this [`crate::budget::LedgerOp::Check`] where the tenant's
    /// budget state lives, then pass the reply to [`Plan::on_budget_reply`].
    CheckBudget(TenantOp),
    /// Apply this [`crate::budget::LedgerOp::Reserve`] where the tenant's
    /// budget state lives, then pass the reply to [`Plan::on_reserve_reply`].
    Reserve(TenantOp),
    /// Send this request to the provider, then tell [`Plan::on_answer_head`]
    /// how its answer starts.
    Forward(Upstream),
    /// The answer (or the whole tier) looked unresolved and the request
    /// climbs to the next tier: apply these operations (the settlement of
    /// the attempt that ended) and wait for them, so the next reservation
    /// sees what the first one cost; then call [`Plan::escalate`]. Nothing
    /// has reached the client yet.
    Escalate(Vec<TenantOp>),
}

impl Next {
    /// The step's name, for logs and the step-order test.
    pub fn name(&self) -> &'static str {
        match self {
            Next::Respond(..) => "respond",
            Next::LookupCache(_) => "lookup_cache",
            Next::CheckBudget(_) => "check_budget",
            Next::Reserve(_) => "reserve",
            Next::Forward(_) => "forward",
            Next::Escalate(_) => "escalate",
        }
    }
}

/// What to do with a whole JSON answer ([`Plan::on_json_answer`]).
#[derive(Clone, Debug, PartialEq)]
pub enum JsonAnswer {
    /// Relay the answer the host holds.
    Relay(Relay),
    /// It is not relayed (it looked unresolved: [`Next::Escalate`], or
    /// [`Next::Respond`] with an earlier, better answer): take this step.
    Replace(Next),
}

/// A provider's JSON answer, to be relayed as it is: send the body the
/// host holds with `status` and these headers, then apply the [`Closing`].
#[derive(Clone, Debug, PartialEq)]
pub struct Relay {
    pub status: u16,
    /// The content type and the decision headers.
    pub headers: Vec<(String, String)>,
    /// The body to send instead of the provider's (its answer translated
    /// to the client's API); None: relay the provider's body as it is.
    pub body: Option<Vec<u8>>,
    pub closing: Closing,
}

/// What ends a request in the tenant's store and cache: apply `ops` in one
/// batch (the settlement and the outcome record), after writing
/// `cache_fill` (so a recorded request's entry exists).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Closing {
    pub ops: Vec<TenantOp>,
    pub cache_fill: Option<CacheFill>,
    /// The settlement among `ops`, for reports and tests.
    pub settlement: Option<Settlement>,
    /// What the provider's answer cost, when one was read (for metrics).
    pub finish: Option<Finish>,
}

impl Closing {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.cache_fill.is_none()
    }
}

/// How to take a provider's answer, from its head ([`Plan::on_answer_head`]).
#[derive(Clone, Debug, PartialEq)]
pub enum AnswerStart {
    /// Relay it as a stream: send `status` with these headers (content type,
    /// `cache-control`, decision headers) along with its first bytes, pass
    /// every chunk through [`Plan::on_stream_chunk`], and end with
    /// [`Plan::on_stream_end`].
    Stream { status: u16, headers: Vec<(String, String)> },
    /// Read the whole body, then pass it to [`Plan::on_json_answer`].
    ReadBody,
    /// The attempt failed and nothing of it may reach the client: drop it
    /// and take this step (the next model, an escalation, or an error).
    Failed(Box<Next>),
}

/// Work that waits for nothing, drained with [`Plan::poll_duty`].
#[derive(Clone, Debug, PartialEq)]
pub enum Duty {
    /// Apply these operations in the background, without waiting (a
    /// reserve whose answer was lost, released by id whichever lands first).
    Detached(Vec<TenantOp>),
    /// Tell the host instance's [`crate::cooldown::Cooldowns`] how an
    /// attempt ended.
    Cooldown(CooldownUpdate),
}

/// One request's routing decision and progress.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub request_id: String,
    /// The key and end user the request is charged at besides the tenant.
    scopes: Scopes,
    /// Its key, end user and tags, for its outcome record.
    attribution: crate::outcomes::Attribution,
    /// The top tier's first model's price (None: no tiers, or unpriced):
    /// what "always premium" would have paid.
    premium_price: Option<ModelPrice>,
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
    /// The tenant's budgets, for the ledger operations the steps carry.
    #[serde(skip)]
    budgets: Budgets,
    /// The tenant's cache settings, for admitting an answer.
    #[serde(skip)]
    cache_settings: CacheSettings,
    /// The price of every model this request may call (None: unpriced).
    #[serde(skip)]
    prices: Vec<(String, Option<Price>)>,
    /// The reserve sent and not yet answered: released if the request ends first.
    #[serde(skip)]
    reserve_out: Option<String>,
    /// The current attempt's answer, once its head arrived.
    #[serde(skip)]
    answer: Option<AnswerState>,
    /// Work for the host that waits for nothing ([`Plan::poll_duty`]).
    #[serde(skip)]
    duties: Vec<Duty>,
    /// The request has closed (its [`Closing`] was handed out).
    #[serde(skip)]
    closed: bool,
    /// The request said in each other API a model of its chains speaks
    /// (translated once, in [`Plan::new`]).
    #[serde(skip)]
    translations: Vec<(ApiFormat, serde_json::Map<String, serde_json::Value>)>,
    /// A Responses client's fields a translated answer repeats.
    #[serde(skip)]
    client_echo: Option<serde_json::Map<String, serde_json::Value>>,
    /// What the request's metered built-in tool calls may cost at most
    /// (held with its tokens), in micro-dollars.
    #[serde(skip)]
    tool_hold_micros: u64,
    /// A Responses stream's next `sequence_number` when it ended (for the
    /// error event of one that broke).
    #[serde(skip)]
    next_sequence: u64,
    /// `max_tool_calls` to write upstream (the client set none).
    #[serde(skip)]
    tool_calls_cap: Option<u64>,
}

/// The answer being relayed.
#[derive(Debug, Default)]
struct AnswerState {
    status: u16,
    content_type: String,
    /// For a streamed answer.
    observer: Option<StreamObserver>,
    /// For a streamed answer in another API than the client's.
    translator: Option<crate::translate::StreamTranslator>,
    /// The attempt's cooldown update, handed out once the answer is known
    /// to have started (its first relayed bytes, or its end).
    cooldown: Option<CooldownUpdate>,
}

impl Clone for AnswerState {
    /// A copy of a plan (for a report) does not go on relaying: the stream
    /// observer stays with the original.
    fn clone(&self) -> Self {
        AnswerState {
            status: self.status,
            content_type: self.content_type.clone(),
            observer: None,
            translator: None,
            cooldown: self.cooldown.clone(),
        }
    }
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
    /// The key and end user the request is charged at besides the tenant.
    pub fn scopes(&self) -> &Scopes {
        &self.scopes
    }
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
