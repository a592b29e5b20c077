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
use tollgate_core::desk::{Routed, Ticket};
use tollgate_core::engine::CacheFill;
use tollgate_core::outcomes::OutcomeOp;
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
        /// What the lease desk added to the batch, to read its replies by.
        ticket: Box<Ticket>,
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

/// Apply `ops` to `tenant`'s budget and outcome ledger, in order: through
/// the VM's lease desk, which answers what it can in memory and sends the
/// rest (with its own reports and lease requests) to the writer.
pub fn apply(rt: &Runtime, tenant: &str, ops: Vec<TenantOp>, now: u64) -> Applied {
    let routed = rt.desk.borrow_mut().route(tenant, ops, now);
    match routed {
        Routed::Answered(replies) => Applied::Now(Answer::Replies(Some(replies))),
        Routed::Send { ops, ticket } => send_batch(rt, tenant, ops, ticket, now),
    }
}

/// Send a batch the desk routed to the tenant's writer.
fn send_batch(rt: &Runtime, tenant: &str, ops: Vec<TenantOp>, ticket: Ticket, now: u64) -> Applied {
    count_batch(rt, "request");
    match rt.config.budgets {
        BudgetBackend::Local => {
            let replies = local_state::apply_ops(&rt.shared, tenant, &ops, now);
            Applied::Now(Answer::Replies(rt.desk.borrow_mut().on_replies(ticket, replies, now)))
        }
        BudgetBackend::Redis => next_round(rt, tenant.to_owned(), now, ops.into(), Vec::new(), ticket),
    }
}

fn count_batch(rt: &Runtime, path: &str) {
    rt.counters.add(&crate::metrics::name(crate::metrics::STORE_BATCHES, None, &[("path", path)]), 1);
}

/// Send what the desk has due in the background (from the root's tick):
/// applied at once in shared data, queued for the root to send to Redis.
pub fn send_due(rt: &Runtime, now: u64, drain: bool) {
    let due = rt.desk.borrow_mut().due(now, drain);
    for (tenant, ops, ticket) in due {
        send_detached(rt, &tenant, ops, ticket, now);
    }
}

fn send_detached(rt: &Runtime, tenant: &str, ops: Vec<TenantOp>, ticket: Ticket, now: u64) {
    count_batch(rt, "background");
    match rt.config.budgets {
        BudgetBackend::Local => {
            let replies = local_state::apply_ops(&rt.shared, tenant, &ops, now);
            if replies.is_none() {
                log::error!("tollgate: could not apply a batch for tenant `{tenant}` in shared data; it is retried");
            }
            let _ = rt.desk.borrow_mut().on_replies(ticket, replies, now);
        }
        BudgetBackend::Redis => {
            let work = Work::Batch { tenant: tenant.to_owned(), now, ops, ticket: Some(ticket) };
            rt.jobs.borrow_mut().push_back(Job { work, attempts: 0 });
        }
    }
}

/// Apply `ops` without waiting for them: at once in shared data (a failure
/// is logged), or queued for the root to send to Redis. With Redis, a later
/// reservation of the same request (an escalation's) may reach Redis first
/// and then sees the earlier hold still out, which errs on the side of
/// refusing it.
pub fn apply_detached(rt: &Runtime, tenant: &str, ops: Vec<TenantOp>, now: u64) {
    let routed = rt.desk.borrow_mut().route(tenant, ops, now);
    let Routed::Send { ops, ticket } = routed else { return };
    count_batch(rt, "detached");
    match rt.config.budgets {
        BudgetBackend::Local => {
            // The whole batch in as few writes as it allows: consecutive
            // records are one write of the totals and of each chunk they
            // touch, not one per record (a desk's batch holds up to 64).
            // A batch that cannot be applied is given back to the desk as
            // lost, which sends it again; the writer applies each request once.
            let replies = local_state::apply_ops(&rt.shared, tenant, &ops, now);
            if replies.is_none() {
                log::error!("tollgate: could not apply {} ops for tenant `{tenant}` in shared data", ops.len());
            }
            let _ = rt.desk.borrow_mut().on_replies(ticket, replies, now);
        }
        BudgetBackend::Redis => {
            let work = Work::Batch { tenant: tenant.to_owned(), now, ops, ticket: Some(ticket) };
            rt.jobs.borrow_mut().push_back(Job { work, attempts: 0 });
        }
    }
}

/// `first` and, if it is a record, the records right after it in `rest`
/// (taken from it): a lease desk's batch of records is one round.
fn record_run(first: OutcomeOp, rest: &mut VecDeque<TenantOp>) -> Vec<OutcomeOp> {
    let is_record = matches!(first, OutcomeOp::Record { .. });
    let mut run = vec![first];
    while is_record && matches!(rest.front(), Some(TenantOp::Outcome(OutcomeOp::Record { .. }))) {
        if let Some(TenantOp::Outcome(op)) = rest.pop_front() {
            run.push(op);
        }
    }
    run
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
/// (through the desk) when none is left.
fn next_round(
    rt: &Runtime,
    tenant: String,
    now: u64,
    mut rest: VecDeque<TenantOp>,
    replies: Vec<TenantReply>,
    ticket: Ticket,
) -> Applied {
    let Some((round, body)) = start_round(rt, &tenant, now, &mut rest) else {
        return Applied::Now(Answer::Replies(rt.desk.borrow_mut().on_replies(ticket, Some(replies), now)));
    };
    Call::Ops { tenant, now, round, rest, replies, ticket: Box::new(ticket) }.send(rt, &body)
}

/// The round for the ops at the front of `rest` (taken from it), and its
/// first webdis request; None when no op is left.
fn start_round(rt: &Runtime, tenant: &str, now: u64, rest: &mut VecDeque<TenantOp>) -> Option<(Round, Vec<u8>)> {
    let first = rest.pop_front()?;
    let prefix = &rt.config.redis.key_prefix;
    Some(match first {
        TenantOp::Budget(op) => {
            let mut cas = BudgetCas::new(tenant, budget_run(op, rest), now);
            let body = cas.start(prefix, &mut rt.board.borrow_mut());
            (Round::Budget(cas), body)
        }
        TenantOp::Outcome(op) => {
            let mut cas = OutcomeCas::run(tenant, record_run(op, rest), now);
            let body = cas.start(prefix);
            (Round::Outcome(cas), body)
        }
    })
}

/// Read webdis's answer to a round.
fn round_step(rt: &Runtime, round: &mut Round, body: Option<&[u8]>) -> RoundStep {
    let prefix = &rt.config.redis.key_prefix;
    match round {
        Round::Budget(cas) => {
            let step = cas.on_reply(prefix, body, &mut rt.board.borrow_mut());
            release_orphans(rt);
            match step {
                CasStep::Done(r) => RoundStep::Done(r.into_iter().map(TenantReply::Budget).collect()),
                CasStep::Send(next) => RoundStep::Send(next),
                CasStep::Failed => RoundStep::Failed,
            }
        }
        Round::Outcome(cas) => match cas.on_reply(prefix, body) {
            OutcomeStep::Done(replies) => RoundStep::Done(replies.into_iter().map(TenantReply::Outcome).collect()),
            OutcomeStep::Send(next) => RoundStep::Send(next),
            OutcomeStep::Failed => RoundStep::Failed,
        },
    }
}

/// Queue the releases the budget board asks for: reserves refused to their
/// requests that an attempt still out may have granted (see
/// [`redis::BudgetBoard`]). They go straight to Redis, past the lease desk,
/// which never heard of those holds.
fn release_orphans(rt: &Runtime) {
    let orphans = rt.board.borrow_mut().take_orphans();
    for (tenant, releases) in orphans {
        let ops = releases.into_iter().map(TenantOp::Budget).collect();
        let work = Work::Batch { tenant, now: host::now_secs(), ops, ticket: None };
        rt.jobs.borrow_mut().push_back(Job { work, attempts: 0 });
    }
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
            Call::Ops { tenant, now, mut round, rest, mut replies, ticket } => {
                match round_step(rt, &mut round, body.as_deref()) {
                    RoundStep::Done(done) => {
                        replies.extend(done);
                        next_round(rt, tenant, now, rest, replies, *ticket)
                    }
                    RoundStep::Send(next) => Call::Ops { tenant, now, round, rest, replies, ticket }.send(rt, &next),
                    RoundStep::Failed => {
                        Applied::Now(Answer::Replies(rt.desk.borrow_mut().on_replies(*ticket, None, now)))
                    }
                }
            }
        }
    }

    /// Nobody will read this call's answer (the stream is gone): a budget
    /// round stops waiting, so other requests stop carrying its ops.
    /// The desk hears of it as a batch that did not land (what it carried
    /// of its own goes again; the writer applies each request once).
    pub fn abandon(self, rt: &Runtime) {
        if let Call::Ops { round, ticket, now, .. } = self {
            if let Round::Budget(mut cas) = round {
                cas.leave(&mut rt.board.borrow_mut());
            }
            let _ = rt.desk.borrow_mut().on_replies(*ticket, None, now);
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
    /// A batch the lease desk routed to the writer, applied round by round
    /// like a request's ([`Call::Ops`]); its replies go back to the desk.
    Batch {
        tenant: String,
        now: u64,
        ops: Vec<TenantOp>,
        ticket: Option<Ticket>,
    },
    /// The batch under way: the round out, the ops after it, the replies.
    Rounds {
        tenant: String,
        now: u64,
        ops: Vec<TenantOp>,
        ticket: Option<Ticket>,
        round: Round,
        rest: VecDeque<TenantOp>,
        replies: Vec<TenantReply>,
    },
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
    /// The tenant whose state a batch job writes (None: a cache fill).
    pub fn tenant(&self) -> Option<&str> {
        match &self.work {
            Work::Batch { tenant, .. } | Work::Rounds { tenant, .. } => Some(tenant),
            Work::CacheFill(_) => None,
        }
    }

    /// The job's first webdis request (None: nothing to send, it is done).
    pub fn start(&mut self, rt: &Runtime) -> Option<Vec<u8>> {
        let prefix = &rt.config.redis.key_prefix;
        match &mut self.work {
            Work::Batch { tenant, now, ops, ticket } => {
                let mut rest: VecDeque<TenantOp> = ops.clone().into();
                let (round, body) = start_round(rt, tenant, *now, &mut rest)?;
                self.work = Work::Rounds {
                    tenant: std::mem::take(tenant),
                    now: *now,
                    ops: std::mem::take(ops),
                    ticket: ticket.take(),
                    round,
                    rest,
                    replies: Vec::new(),
                };
                Some(body)
            }
            Work::Rounds { .. } => None,
            Work::CacheFill(fill) => {
                let key = redis::cache_key(prefix, fill.key.as_str());
                let ttl = fill.ttl_seconds.max(1).to_string();
                Some(redis::command("SET", &[key.as_bytes(), &fill.value, b"EX", ttl.as_bytes()]))
            }
        }
    }

    /// Read webdis's answer (`body` None: the call failed).
    pub fn on_answer(&mut self, rt: &Runtime, body: Option<&[u8]>) -> JobStep {
        match &mut self.work {
            Work::Rounds { tenant, now, round, rest, replies, ticket, .. } => match round_step(rt, round, body) {
                RoundStep::Done(done) => {
                    replies.extend(done);
                    match start_round(rt, tenant, *now, rest) {
                        Some((next, body)) => {
                            *round = next;
                            JobStep::Send(body)
                        }
                        None => {
                            if let Some(ticket) = ticket.take() {
                                let _ = rt.desk.borrow_mut().on_replies(ticket, Some(std::mem::take(replies)), *now);
                            }
                            JobStep::Done
                        }
                    }
                }
                RoundStep::Send(next) => JobStep::Send(next),
                RoundStep::Failed => JobStep::Failed,
            },
            Work::Batch { .. } => JobStep::Failed,
            Work::CacheFill(_) => match body.and_then(|b| redis::reply_value("SET", b)) {
                Some(_) => JobStep::Done,
                None => JobStep::Failed,
            },
        }
    }

    /// After a failure: the job for a later tick, started afresh from its
    /// first op (budget rounds read the state again; the writer applies
    /// each settled request and each record once, so a round that did land
    /// changes nothing the second time); None when it has been tried
    /// [`JOB_ATTEMPTS`] times (dropped, with an error log, and the desk told).
    pub fn retry(mut self, rt: &Runtime) -> Option<Job> {
        self.attempts += 1;
        if let Work::Rounds { round: Round::Budget(cas), .. } = &mut self.work {
            cas.leave(&mut rt.board.borrow_mut());
        }
        if let Work::Rounds { tenant, now, ops, ticket, .. } = &mut self.work {
            self.work = Work::Batch {
                tenant: std::mem::take(tenant),
                now: *now,
                ops: std::mem::take(ops),
                ticket: ticket.take(),
            };
        }
        if self.attempts >= JOB_ATTEMPTS {
            log::error!("tollgate: gave up on a Redis write after {} attempts: {:?}", self.attempts, self.work);
            if let Work::Batch { ticket: Some(ticket), now, .. } = self.work {
                let _ = rt.desk.borrow_mut().on_replies(ticket, None, now);
            }
            return None;
        }
        Some(self)
    }
}
