//! The one seam between the filter and where a tenant's state lives.
//!
//! Budgets and the outcome ledger live in proxy-wasm shared data
//! ([`crate::local_state`], node-local) or in Redis through webdis
//! ([`crate::redis`], cluster-wide); the cache in shared data, in Redis, or
//! nowhere. Callers hand over the core's [`TenantOp`]s or a cache key and
//! never ask which: shared data answers at once ([`Applied::Now`]); webdis
//! answers in a later `on_http_call_response` ([`Applied::Later`]), which the
//! caller passes to [`Call::on_answer`] until it too answers now.
//!
//! Work that waits for nothing (a request's settlement and outcome record,
//! a cache fill, a lost reserve's release) goes through [`apply_detached`]
//! and [`fill_cache`]: applied at once in shared data, or queued as a
//! [`Job`] for the root context to send to Redis (see [`crate::root`] for
//! why the root sends them).

use crate::host;
use crate::local_state;
use crate::redis::{self, BudgetCas, CasStep, OutcomeCas, OutcomeStep};
use crate::runtime::Runtime;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::collections::VecDeque;
use std::time::Duration;
use tollgate_core::ApiFormat;
use tollgate_core::budget::LedgerOp;
use tollgate_core::cache::{CacheEntry, CacheKey};
use tollgate_core::engine::CacheFill;
use tollgate_core::plugin::{BudgetBackend, CacheBackend};
use tollgate_core::store::{TenantOp, TenantReply};

/// Attempts for a queued write before it is dropped with an error log (a
/// dropped settle leaves its hold to expire, see docs/config.md).
const JOB_ATTEMPTS: u32 = 50;

/// What the store answered.
#[derive(Debug)]
pub enum Answer {
    /// The replies to a batch of ops, in order (None: the store could not
    /// be reached, or failed).
    Replies(Option<Vec<TenantReply>>),
    /// A cache lookup (None: a miss, or unreadable).
    Entry(Option<CacheEntry>),
    /// A [`wait`] is over.
    Waited,
}

impl Answer {
    pub fn replies(self) -> Option<Vec<TenantReply>> {
        match self {
            Answer::Replies(replies) => replies,
            Answer::Entry(_) | Answer::Waited => None,
        }
    }

    /// The reply to a batch of one op.
    pub fn first_reply(self) -> Option<TenantReply> {
        self.replies().and_then(|r| r.into_iter().next())
    }

    pub fn entry(self) -> Option<CacheEntry> {
        match self {
            Answer::Entry(entry) => entry,
            Answer::Replies(_) | Answer::Waited => None,
        }
    }
}

/// A store call: answered, or out to webdis with this token.
#[derive(Debug)]
pub enum Applied {
    Now(Answer),
    Later(u32, Call),
}

/// A store call out to webdis, waiting for its answer.
#[derive(Debug)]
pub enum Call {
    /// A batch of ops, one compare-and-set at a time: `round` is the one
    /// out, `rest` the ops after it, `replies` those of the rounds done.
    Ops {
        tenant: String,
        now: u64,
        round: Round,
        rest: VecDeque<TenantOp>,
        replies: Vec<TenantReply>,
    },
    CacheGet {
        api: ApiFormat,
    },
    Wait,
}

/// One compare-and-set of a batch in Redis: the consecutive budget ops
/// together, or one outcome op.
#[derive(Debug)]
pub enum Round {
    Budget(BudgetCas),
    Outcome(OutcomeCas),
}

/// Apply `ops` to `tenant`'s budget and outcome ledger, in order.
pub fn apply(rt: &Runtime, tenant: &str, ops: Vec<TenantOp>, now: u64) -> Applied {
    match rt.config.budgets {
        BudgetBackend::Local => Applied::Now(Answer::Replies(local_state::apply_ops(&rt.shared, tenant, &ops, now))),
        BudgetBackend::Redis => next_round(rt, tenant.to_owned(), now, ops.into(), Vec::new()),
    }
}

/// Apply `ops` without waiting for them: at once in shared data (a failure
/// is logged), or queued for the root to send to Redis. With Redis, a later
/// reservation of the same request (an escalation's) may reach Redis first
/// and then sees the earlier hold still out, which errs on the side of
/// refusing it.
pub fn apply_detached(rt: &Runtime, tenant: &str, ops: Vec<TenantOp>, now: u64) {
    match rt.config.budgets {
        BudgetBackend::Local => {
            for op in &ops {
                if local_state::apply_op(&rt.shared, tenant, op, now).is_none() {
                    let what = match op {
                        TenantOp::Budget(_) => "settle a hold",
                        TenantOp::Outcome(_) => "record an outcome",
                    };
                    log::error!("tollgate: could not {what} for tenant `{tenant}` in shared data");
                }
            }
        }
        BudgetBackend::Redis => {
            let mut ops: VecDeque<TenantOp> = ops.into();
            while let Some(op) = ops.pop_front() {
                let work = match op {
                    TenantOp::Budget(op) => Work::Budget(BudgetCas::new(tenant, budget_run(op, &mut ops), now)),
                    TenantOp::Outcome(op) => Work::Outcome(OutcomeCas::new(tenant, op, now)),
                };
                rt.jobs.borrow_mut().push_back(Job { work, attempts: 0 });
            }
        }
    }
}

/// `first` and the budget ops right after it in `rest` (taken from it).
fn budget_run(first: LedgerOp, rest: &mut VecDeque<TenantOp>) -> Vec<LedgerOp> {
    let mut run = vec![first];
    while let Some(TenantOp::Budget(_)) = rest.front() {
        if let Some(TenantOp::Budget(op)) = rest.pop_front() {
            run.push(op);
        }
    }
    run
}

/// Look `key` up in the cache.
pub fn lookup_cache(rt: &Runtime, key: &CacheKey, api: ApiFormat, now: u64) -> Applied {
    match rt.config.cache {
        CacheBackend::Off => Applied::Now(Answer::Entry(None)),
        CacheBackend::Local => Applied::Now(Answer::Entry(rt.cache.lookup(&rt.shared, key, api, now))),
        CacheBackend::Redis => {
            let k = redis::cache_key(&rt.config.redis.key_prefix, key.as_str());
            Call::CacheGet { api }.send(rt, &redis::command("GET", &[k.as_bytes()]))
        }
    }
}

/// Write a cache entry, without waiting for it.
pub fn fill_cache(rt: &Runtime, fill: CacheFill) {
    match rt.config.cache {
        CacheBackend::Off => {}
        CacheBackend::Local => {
            rt.cache.fill(&rt.shared, &fill);
        }
        CacheBackend::Redis => rt.jobs.borrow_mut().push_back(Job { work: Work::CacheFill(fill), attempts: 0 }),
    }
}

/// The doorkeeper: whether `key` was looked up before, remembering it. It
/// lives in shared data whatever the cache backend, not in the core's
/// per-VM Bloom filter: Envoy spreads connections over worker threads, and
/// a per-thread doorkeeper would rarely see a prompt twice.
pub fn seen_before(rt: &Runtime, key: &CacheKey) -> bool {
    rt.cache.seen_before(&rt.shared, key)
}

/// A pause of about `ms` before asking the tenant's store again. None when
/// the store cannot wait (shared data: a stream has no timer, and needs
/// none, its writes land before the answer's last byte is passed on) or
/// the wait could not be started. Redis waits with a `BLPOP` on a key that
/// never fills, webdis being the only timer a stream has.
pub fn wait(rt: &Runtime, ms: u64) -> Option<(u32, Call)> {
    if rt.config.budgets != BudgetBackend::Redis {
        return None;
    }
    let seconds = format!("{}.{:03}", ms / 1000, ms % 1000);
    let body = redis::command("BLPOP", &[b"tollgate:feedback-wait", seconds.as_bytes()]);
    dispatch(rt, &body).map(|token| (token, Call::Wait))
}

/// Start the Redis round for the next op of a batch, or answer the batch
/// when none is left.
fn next_round(
    rt: &Runtime,
    tenant: String,
    now: u64,
    mut rest: VecDeque<TenantOp>,
    replies: Vec<TenantReply>,
) -> Applied {
    let Some(first) = rest.pop_front() else { return Applied::Now(Answer::Replies(Some(replies))) };
    let prefix = &rt.config.redis.key_prefix;
    let (round, body) = match first {
        TenantOp::Budget(op) => {
            let mut cas = BudgetCas::new(&tenant, budget_run(op, &mut rest), now);
            let body = cas.start(prefix, &mut rt.board.borrow_mut());
            (Round::Budget(cas), body)
        }
        TenantOp::Outcome(op) => {
            let mut cas = OutcomeCas::new(&tenant, op, now);
            let body = cas.start(prefix);
            (Round::Outcome(cas), body)
        }
    };
    Call::Ops { tenant, now, round, rest, replies }.send(rt, &body)
}

/// How a Redis round went.
enum RoundStep {
    Done(Vec<TenantReply>),
    Send(Vec<u8>),
    Failed,
}

impl Call {
    /// Send `body` to webdis. A call that cannot even be made is answered
    /// with nothing, at once.
    fn send(self, rt: &Runtime, body: &[u8]) -> Applied {
        match dispatch(rt, body) {
            Some(token) => Applied::Later(token, self),
            None => self.answered(rt, None),
        }
    }

    /// webdis answered (in `on_http_call_response`, with its sizes).
    pub fn on_answer(self, rt: &Runtime, num_headers: usize, body_size: usize) -> Applied {
        let body = webdis_body(num_headers, body_size);
        self.answered(rt, body)
    }

    fn answered(self, rt: &Runtime, body: Option<Vec<u8>>) -> Applied {
        let prefix = &rt.config.redis.key_prefix;
        match self {
            Call::Wait => Applied::Now(Answer::Waited),
            Call::CacheGet { api } => {
                let now = host::now_secs();
                let entry = body
                    .as_deref()
                    .and_then(|b| redis::reply_value("GET", b))
                    .and_then(|v| v.as_str().and_then(|s| CacheEntry::from_bytes(s.as_bytes(), api, now)));
                Applied::Now(Answer::Entry(entry))
            }
            Call::Ops { tenant, now, mut round, rest, mut replies } => {
                let step = match &mut round {
                    Round::Budget(cas) => match cas.on_reply(prefix, body.as_deref(), &mut rt.board.borrow_mut()) {
                        CasStep::Done(r) => RoundStep::Done(r.into_iter().map(TenantReply::Budget).collect()),
                        CasStep::Send(next) => RoundStep::Send(next),
                        CasStep::Failed => RoundStep::Failed,
                    },
                    Round::Outcome(cas) => match cas.on_reply(prefix, body.as_deref()) {
                        OutcomeStep::Done(reply) => RoundStep::Done(vec![TenantReply::Outcome(reply)]),
                        OutcomeStep::Send(next) => RoundStep::Send(next),
                        OutcomeStep::Failed => RoundStep::Failed,
                    },
                };
                match step {
                    RoundStep::Done(done) => {
                        replies.extend(done);
                        next_round(rt, tenant, now, rest, replies)
                    }
                    RoundStep::Send(next) => Call::Ops { tenant, now, round, rest, replies }.send(rt, &next),
                    RoundStep::Failed => Applied::Now(Answer::Replies(None)),
                }
            }
        }
    }

    /// Nobody will read this call's answer (the stream is gone): a budget
    /// round stops waiting, so other requests stop carrying its ops.
    pub fn abandon(self, rt: &Runtime) {
        if let Call::Ops { round: Round::Budget(mut cas), .. } = self {
            cas.leave(&mut rt.board.borrow_mut());
        }
    }
}

/// A webdis call's headers.
fn webdis_headers(rt: &Runtime) -> Vec<(&str, &str)> {
    vec![
        (":method", "POST"),
        (":path", "/"),
        (":authority", rt.config.redis.authority.as_str()),
        ("content-type", "text/plain"),
    ]
}

/// Send `body` to webdis from the current context (a stream's, or the
/// root's): the answer comes back to that context's
/// `on_http_call_response` with the token. None: the call could not be made.
pub fn dispatch(rt: &Runtime, body: &[u8]) -> Option<u32> {
    let timeout = Duration::from_millis(rt.config.redis.timeout_ms);
    match hostcalls::dispatch_http_call(&rt.config.redis.cluster, webdis_headers(rt), Some(body), vec![], timeout) {
        Ok(token) => Some(token),
        Err(status) => {
            log::warn!("tollgate: could not call webdis cluster `{}`: {status:?}", rt.config.redis.cluster);
            None
        }
    }
}

/// The body of webdis's answer, when it answered 200.
pub fn webdis_body(num_headers: usize, body_size: usize) -> Option<Vec<u8>> {
    let ok = num_headers > 0 && host::header(MapType::HttpCallResponseHeaders, ":status").as_deref() == Some("200");
    ok.then(|| host::buffer(BufferType::HttpCallResponseBody, body_size))
}

/// A Redis write the root owns until it lands.
#[derive(Debug)]
pub struct Job {
    work: Work,
    attempts: u32,
}

#[derive(Debug)]
enum Work {
    Budget(BudgetCas),
    Outcome(OutcomeCas),
    CacheFill(CacheFill),
}

/// What to do with a job after webdis answered.
pub enum JobStep {
    Done,
    /// Another round: send this.
    Send(Vec<u8>),
    /// Try again later ([`Job::retry`]).
    Failed,
}

impl Job {
    /// The job's first webdis request.
    pub fn start(&mut self, rt: &Runtime) -> Vec<u8> {
        let prefix = &rt.config.redis.key_prefix;
        match &mut self.work {
            Work::Budget(cas) => cas.start(prefix, &mut rt.board.borrow_mut()),
            Work::Outcome(cas) => cas.start(prefix),
            Work::CacheFill(fill) => {
                let key = redis::cache_key(prefix, fill.key.as_str());
                let ttl = fill.ttl_seconds.max(1).to_string();
                redis::command("SET", &[key.as_bytes(), &fill.value, b"EX", ttl.as_bytes()])
            }
        }
    }

    /// Read webdis's answer (`body` None: the call failed).
    pub fn on_answer(&mut self, rt: &Runtime, body: Option<&[u8]>) -> JobStep {
        let prefix = &rt.config.redis.key_prefix;
        match &mut self.work {
            Work::Budget(cas) => match cas.on_reply(prefix, body, &mut rt.board.borrow_mut()) {
                CasStep::Done(_) => JobStep::Done,
                CasStep::Send(next) => JobStep::Send(next),
                CasStep::Failed => JobStep::Failed,
            },
            Work::Outcome(cas) => match cas.on_reply(prefix, body) {
                OutcomeStep::Done(_) => JobStep::Done,
                OutcomeStep::Send(next) => JobStep::Send(next),
                OutcomeStep::Failed => JobStep::Failed,
            },
            Work::CacheFill(_) => match body.and_then(|b| redis::reply_value("SET", b)) {
                Some(_) => JobStep::Done,
                None => JobStep::Failed,
            },
        }
    }

    /// After a failure: the job for a later tick, as a fresh round from
    /// whatever the memo holds then; None when it has been tried
    /// [`JOB_ATTEMPTS`] times (dropped, with an error log).
    pub fn retry(mut self, rt: &Runtime) -> Option<Job> {
        self.attempts += 1;
        if let Work::Budget(cas) = &mut self.work {
            cas.leave(&mut rt.board.borrow_mut());
        }
        if self.attempts >= JOB_ATTEMPTS {
            log::error!("tollgate: gave up on a Redis write after {} attempts: {:?}", self.attempts, self.work);
            return None;
        }
        match &mut self.work {
            Work::Budget(cas) => self.work = Work::Budget(BudgetCas::new(&cas.tenant, cas.ops.clone(), cas.now)),
            Work::Outcome(cas) => self.work = Work::Outcome(OutcomeCas::new(&cas.tenant, cas.op.clone(), cas.now)),
            Work::CacheFill(_) => {}
        }
        Some(self)
    }
}
