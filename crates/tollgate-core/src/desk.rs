//! A host instance's lease desk: the budget ops of a request answered in
//! memory, from a lease, instead of by the tenant's single writer.
//!
//! A host keeps one [`LeaseDesk`] per instance (a Worker isolate; an Envoy
//! VM) and hands it every batch of [`TenantOp`]s the plan asks for, before
//! the writer sees them ([`LeaseDesk::route`]). For a tenant whose budgets
//! are leased (`budgets.consistency: leased`, the default):
//!
//! - a **reserve** is decided here, by the same [`budget::reserve`] the writer
//!   runs, on the instance's view of the writer's state, and held in the
//!   lease; a reserve the lease cannot pay (none yet, too small, about to
//!   expire, or a refusal here) goes to the writer as before, which
//!   decides it exactly, and the desk asks for a lease in the same batch;
//! - a **settle** or **release** of a request held here stays here; its
//!   spend is reported to the writer in batches ([`LeaseReport`]);
//! - an **outcome record** waits for the next batch;
//! - a **read** (usage, feedback, report, export) goes to the writer with
//!   everything waiting here in front of it, so an instance reads its own
//!   writes.
//!
//! [`LeaseDesk::due`] says what to send in the background: waiting reports
//! and records (by count and by time), a renewal before the lease runs out
//! or expires while the instance is busy, and the lease handed back once
//! the instance is idle. The host sends those batches off the request path
//! (the Worker in `ctx.waitUntil`, Envoy from its tick) and hands every
//! reply to [`LeaseDesk::on_replies`].
//!
//! Tenants with `consistency: per_request` pass through untouched: every op
//! goes to the writer, as it did before leases.
//!
//! Nothing here reads a clock or does I/O: the time comes in with each call,
//! and the lease ids are made from the instance id the host draws at random.

use crate::budget::lease::{LeaseReport, LeaseRequest, LocalLease};
use crate::budget::scope::{Level, OVERFLOW_USER, Scopes};
use crate::budget::{
    self, Amount, BudgetState, Budgets, Granted, LedgerOp, LedgerReply, Outstanding, RESERVATION_TTL_SECS,
};
use crate::outcomes::{OutcomeOp, OutcomeReply};
use crate::store::{TenantOp, TenantReply};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A first lease is asked for this many requests like the one waiting.
const LEASE_REQUESTS: u64 = 64;
/// Settled spend and outcome records wait at most this long for a batch...
pub const FLUSH_AFTER_SECS: u64 = 1;
/// ...or until this many have gathered.
pub const FLUSH_AT_COUNT: usize = 64;
/// A batch unanswered this long is taken as lost.
const LOST_BATCH_SECS: u64 = 30;
/// Records kept while the writer cannot be reached; older ones are dropped.
const MAX_WAITING_RECORDS: usize = 1024;
/// A request reserves from a lease only if the lease outlives it by this
/// much unrenewed: a request that outlives its lease is paid for by the
/// lease's full charge, which is safe but wastes the lease's unspent part.
const RESERVE_MARGIN_SECS: u64 = 2;
/// An instance with nothing in flight for this long hands its lease back
/// (at most a third of the lease's life, so an idle lease is returned
/// before it expires and is charged in full).
const IDLE_AFTER_SECS: u64 = 5;
/// Desks one instance keeps at most: one per tenant it serves, and one per
/// key and end user with limits of their own that it serves repeatedly.
/// Past it, a new key's or user's requests reserve at the writer one by
/// one, as they would without leases.
const MAX_DESKS: usize = 1024;
/// Separates a tenant from a key and user in a scoped desk's name.
const SCOPE_SEPARATOR: char = '\u{1f}';

/// One instance's leases and waiting batches, for every tenant it serves.
#[derive(Debug)]
pub struct LeaseDesk {
    instance: String,
    leases_made: u64,
    /// Batches sent so far, numbering each: one count for every desk, so
    /// a desk forgotten and made again never reuses a number a late answer
    /// may still carry.
    batches_sent: u64,
    tenants: BTreeMap<String, TenantDesk>,
    /// The writer is in this process ([`LeaseDesk::with_writer_in_process`]).
    writer_in_process: bool,
}

/// A request of this instance reserved at the writer.
#[derive(Debug)]
struct WriterHold {
    id: String,
    /// What the writer granted (None until it answered).
    amount: Option<Amount>,
    /// Counted in the view's hold for everything else (it was held at the
    /// writer when the view was granted): its close takes it out there.
    in_view: bool,
    /// When the writer lets the hold go if its close never arrives (a
    /// host that lost the request): the desk forgets it then too, so a
    /// lost close cannot keep a desk, or its tenant's "nothing in flight",
    /// pinned for the instance's life.
    expires_at: u64,
}

#[derive(Debug, Default)]
struct TenantDesk {
    /// For a desk of one key and end user's requests (a tenant's requests
    /// charged at a key's or a user's own limits too): the tenant, and the
    /// key and user its lease is carved for, at those levels as well as
    /// the tenant's. None: the tenant's desk.
    scoped: Option<(String, Scopes)>,
    /// When the last reserve came through this desk: a key and user's desk
    /// asks for a lease only for a second request within
    /// [`IDLE_AFTER_SECS`] of the one before (a one-off user costs the
    /// writer no lease to grant and take back).
    last_reserve: Option<u64>,
    /// The tenant's budgets as last seen in an op; None until one is seen.
    budgets: Option<Budgets>,
    lease: Option<LocalLease>,
    /// The writer's state as of the last grant, with this instance's
    /// holds and unreported spend in it: what reserves here decide on.
    view: BudgetState,
    /// The writer's view as granted (kept to rebuild `view`).
    granted_view: budget::lease::LeaseView,
    /// A batch carrying this desk's report or lease request is out: send
    /// no other until it is answered, so reports are never reordered.
    busy: bool,
    records: Vec<TenantOp>,
    oldest_waiting: Option<u64>,
    last_active: u64,
    /// Worst cases reserved here since the last grant: the next lease's size.
    demand: Amount,
    /// What the last lease request asked for.
    last_want: Amount,
    /// The worst case of the last request that asked for a lease: a lease
    /// smaller than that is not worth holding.
    unit: Amount,
    /// Requests of this instance holding at the writer (reserved there,
    /// not yet closed): with the lease's holds, what is in flight here.
    at_writer: Vec<WriterHold>,
    /// Requests of the tenant in flight on this instance, as the host says
    /// ([`LeaseDesk::request_started`]); 0 for a host that does not say.
    requests: u32,
    /// The tenant's budgets say `per_request`: nothing is batched.
    per_request: bool,
    /// Batches carrying this desk's own ops (reports, lease requests,
    /// records) sent and not yet answered: (number, when sent). A close or
    /// a flush waits while one is out, so a slow writer gets one batch at a
    /// time, not a queue. One unanswered for [`LOST_BATCH_SECS`] is taken
    /// as lost (a host task cancelled with it), each by its own age, so the
    /// desk does not wait for it for ever, however many batches follow it.
    out: Vec<(u64, u64)>,
    /// The batch out whose report or lease request makes the desk `busy`.
    busy_batch: u64,
    /// The report of the batch out, kept to send again if it is lost.
    report_out: Option<(LeaseReport, u32)>,
    /// The settles and releases (of requests reserved at the writer) in
    /// the batches out, kept to send again if those are lost: nothing else
    /// would ever charge that spend (the writer frees an expired hold), and
    /// the writer applies each close once, so one that did land costs
    /// nothing the second time. Outcome records are not kept: they are
    /// statistics, and one sent twice would count twice.
    closes_out: Vec<CloseOut>,
}

/// A settle or release out in a batch (see `TenantDesk::closes_out`).
#[derive(Debug)]
struct CloseOut {
    batch: u64,
    op: TenantOp,
}

/// What [`LeaseDesk::route`] made of a batch.
#[derive(Debug)]
pub enum Routed {
    /// Every op was answered here: the replies, in order.
    Answered(Vec<TenantReply>),
    /// Send `ops` to the tenant's writer and hand its replies (or None) to
    /// [`LeaseDesk::on_replies`] with the ticket.
    Send { ops: Vec<TenantOp>, ticket: Ticket },
}

/// What a batch sent to the writer carries, to read its replies by.
#[derive(Debug)]
pub struct Ticket {
    tenant: String,
    /// The plan's ops' replies: answered here, or the writer's at an index.
    slots: Vec<Slot>,
    /// (Boxed: most batches carry none, and a ticket waits in every host call.)
    report: Option<Box<(LeaseReport, u32)>>,
    grant: Option<usize>,
    records: Vec<TenantOp>,
    /// The reserves sent to the writer: (index in the batch, request id).
    reserves: Vec<(usize, String)>,
    /// What the tenant's key and user desks sent in front of a read.
    siblings: Vec<SiblingPart>,
    /// Its number among the desk's batches (0: it carries nothing of the desk's own).
    batch: u64,
}

/// A key and user desk's waiting spend and records, sent in another
/// desk's batch.
#[derive(Debug)]
struct SiblingPart {
    desk: String,
    report: Option<(LeaseReport, u32)>,
    records: Vec<TenantOp>,
    batch: u64,
}

#[derive(Debug)]
enum Slot {
    Here(TenantReply),
    Writer(usize),
}

impl Ticket {
    /// Whether the plan waits for this batch (false: the desk's own).
    pub fn answers_a_request(&self) -> bool {
        !self.slots.is_empty()
    }
}

impl LeaseDesk {
    /// `instance`: random bytes from the host, as text, so that the leases
    /// of two instances (or of one instance before and after a restart)
    /// never share an id.
    pub fn new(instance: &str) -> LeaseDesk {
        LeaseDesk {
            instance: instance.to_owned(),
            leases_made: 0,
            batches_sent: 0,
            tenants: BTreeMap::new(),
            writer_in_process: false,
        }
    }

    /// For a writer in this process (Envoy's shared data): a batch there is
    /// a few memory writes, not a round trip, so what waits goes out at
    /// every [`LeaseDesk::due`] (each host tick) instead of after
    /// [`FLUSH_AFTER_SECS`]. Other instances then see a request's outcome
    /// record (feedback on it may reach any of them) and its spend within a
    /// tick, and under load the batches are as large as before.
    pub fn with_writer_in_process(mut self) -> LeaseDesk {
        self.writer_in_process = true;
        self
    }

    /// Take a batch the plan wants applied in `tenant`'s store.
    pub fn route(&mut self, tenant: &str, ops: Vec<TenantOp>, now: u64) -> Routed {
        let name = self.desk_for(tenant, &ops);
        let desk = self.tenants.entry(name.clone()).or_default();
        desk.forget_lost_batches(now);
        let scoped = desk.scoped.is_some();
        for op in &ops {
            if let TenantOp::Budget(op) = op {
                desk.per_request = budgets_of(op).is_some_and(|b| b.leases.is_none());
                desk.budgets =
                    budgets_of(op).filter(|b| b.leases.is_some() && (scoped || !b.limits.is_empty())).cloned();
                if desk.budgets.is_none() {
                    // Per-request (or unlimited) tenant: what was leased goes back.
                    desk.lease_gone();
                }
            }
        }
        let mut slots = Vec::with_capacity(ops.len());
        let mut to_writer: Vec<TenantOp> = Vec::new();
        let mut reserves: Vec<(usize, String)> = Vec::new();
        let mut lease_need: Option<Amount> = None;
        for op in ops {
            let here = match &op {
                TenantOp::Budget(LedgerOp::Reserve { budgets, request })
                    if desk.budgets.is_some() && charged_below(budgets, &request.scopes) && !scoped =>
                {
                    // Charged at a key's or an end user's limits too, and
                    // this instance has no desk for them (past
                    // [`MAX_DESKS`]): the writer decides, as with
                    // `per_request`. Its close waits for a batch.
                    desk.last_active = now;
                    if desk.at_writer.len() < budget::MAX_OUTSTANDING {
                        desk.at_writer.push(WriterHold {
                            id: request.id.clone(),
                            amount: None,
                            in_view: false,
                            expires_at: now + RESERVATION_TTL_SECS,
                        });
                    }
                    None
                }
                TenantOp::Budget(LedgerOp::Reserve { budgets, request }) if desk.budgets.is_some() => {
                    let again = desk.last_reserve.is_some_and(|t| now < t.saturating_add(desk.idle_after()));
                    desk.last_reserve = Some(now);
                    desk.last_active = now;
                    desk.demand = desk.demand.plus(request.worst_case());
                    let local = desk.reserve_here(budgets, request, now);
                    if local.is_none() {
                        // (A desk holding a lease asks again whatever the
                        // gap, and frees the lease's unused part first.)
                        if !scoped || again || desk.lease.is_some() {
                            lease_need = Some(lease_need.unwrap_or_default().plus(request.worst_case()));
                        }
                        if desk.at_writer.len() < budget::MAX_OUTSTANDING {
                            desk.at_writer.push(WriterHold {
                                id: request.id.clone(),
                                amount: None,
                                in_view: false,
                                expires_at: now + RESERVATION_TTL_SECS,
                            });
                        }
                    }
                    local.map(|granted| TenantReply::Budget(LedgerReply::Granted { granted }))
                }
                TenantOp::Budget(LedgerOp::Settle { budgets, id, amount, .. }) if desk.holds(id) => {
                    desk.last_active = now;
                    Some(desk.settle_here(budgets, id, Some(*amount), now))
                }
                TenantOp::Budget(LedgerOp::Release { budgets, id }) if desk.holds(id) => {
                    desk.last_active = now;
                    Some(desk.settle_here(budgets, id, None, now))
                }
                TenantOp::Budget(LedgerOp::Check { budgets, scopes })
                    if desk.lease_live(now) && (scoped || !charged_below(budgets, scopes)) =>
                {
                    // Not exhausted in the view means not exhausted at the
                    // writer as of the grant; exhausted may be the view's
                    // caution (other leases counted in full): ask.
                    let mut view = desk.view.clone();
                    let scopes = desk.as_granted(scopes);
                    budget::exhausted_for(&mut view, budgets, &scopes, now)
                        .is_none()
                        .then_some(TenantReply::Budget(LedgerReply::Check { exhausted: None }))
                }
                TenantOp::Outcome(OutcomeOp::Record { .. }) if desk.batches_records() => {
                    desk.wait(op.clone(), now);
                    Some(TenantReply::Outcome(OutcomeReply::Recorded))
                }
                TenantOp::Budget(LedgerOp::Settle { budgets, .. } | LedgerOp::Release { budgets, .. })
                    if desk.budgets.is_some() =>
                {
                    // Held at the writer (the request that asked for the
                    // lease, or one the lease could not pay): its hold
                    // stays there until the next batch, which errs on the
                    // side of holding too much for a second.
                    desk.writer_hold_closed(&op, now);
                    desk.wait(op.clone(), now);
                    let mut view = desk.view.clone();
                    Some(TenantReply::Budget(LedgerReply::Remaining {
                        remaining: budget::remaining(&mut view, budgets, now),
                    }))
                }
                TenantOp::Budget(LedgerOp::Status { .. })
                | TenantOp::Outcome(
                    OutcomeOp::Feedback { .. } | OutcomeOp::Report | OutcomeOp::Export | OutcomeOp::Recent { .. },
                ) => {
                    // To the writer, behind everything waiting here.
                    None
                }
                _ => None,
            };
            match here {
                Some(reply) => slots.push(Slot::Here(reply)),
                None => {
                    if let TenantOp::Budget(LedgerOp::Reserve { request, .. }) = &op {
                        reserves.push((to_writer.len(), request.id.clone()));
                    }
                    slots.push(Slot::Writer(to_writer.len()));
                    to_writer.push(op);
                }
            }
        }
        // Closes answered here wait for the host's background step
        // (`due`), which sends them as soon as nothing of the tenant is in
        // flight here: a lone request's spend reaches the writer straight
        // after it closes, and back-to-back requests share a batch instead
        // of each paying a write of its own next to the next request.
        if to_writer.is_empty() {
            return Routed::Answered(
                slots
                    .into_iter()
                    .filter_map(|s| match s {
                        Slot::Here(reply) => Some(reply),
                        Slot::Writer(_) => None,
                    })
                    .collect(),
            );
        }
        // The writer is asked anyway: what waits here goes with it (in
        // front, so a read sees it), and a lease is asked for after the
        // plan's ops (so near the end of a budget the request waiting is
        // served before a lease takes a share).
        let decision = to_writer
            .iter()
            .any(|op| matches!(op, TenantOp::Budget(LedgerOp::Reserve { .. } | LedgerOp::Check { .. })));
        let mut batch = desk.take_waiting(now, !decision);
        if lease_need.is_some() {
            // A reserve the lease could not pay goes to the writer: free
            // what the lease has unused first, so the writer decides on
            // everything that is left, not less.
            batch.release_unused(desk);
        }
        let reads = to_writer.iter().any(|op| {
            matches!(
                op,
                TenantOp::Budget(LedgerOp::Status { .. })
                    | TenantOp::Outcome(
                        OutcomeOp::Feedback { .. } | OutcomeOp::Report | OutcomeOp::Export | OutcomeOp::Recent { .. }
                    )
            )
        });
        // A read also sees what waits in the tenant's key and user desks.
        let siblings =
            if reads && !scoped { self.take_scoped_waiting(tenant, now, &mut batch.ops) } else { Vec::new() };
        let offset = batch.ops.len();
        for slot in &mut slots {
            if let Slot::Writer(i) = slot {
                *i += offset;
            }
        }
        for (i, _) in &mut reserves {
            *i += offset;
        }
        batch.ops.extend(to_writer);
        if let Some(need) = lease_need {
            self.leases_made += 1;
            let fallback = format!("{}-{}", self.instance, self.leases_made);
            let desk = self.tenants.entry(name.clone()).or_default();
            batch.ask_lease(desk, fallback, need, now);
        }
        let Batch { ops, report, grant, records } = batch;
        let desk = self.tenants.entry(name.clone()).or_default();
        let busy = report.is_some() || grant.is_some();
        let batch = if busy || !records.is_empty() {
            self.batches_sent += 1;
            desk.batch_sent(self.batches_sent, &records, busy, now)
        } else {
            0
        };
        let report = report.map(Box::new);
        Routed::Send { ops, ticket: Ticket { tenant: name, slots, report, grant, records, reserves, siblings, batch } }
    }

    /// What waits in `tenant`'s key and user desks, added to `ops`, and
    /// what each of them must remember of it.
    fn take_scoped_waiting(&mut self, tenant: &str, now: u64, ops: &mut Vec<TenantOp>) -> Vec<SiblingPart> {
        let prefix = format!("{tenant}{SCOPE_SEPARATOR}");
        let mut parts = Vec::new();
        for (name, desk) in self.tenants.range_mut(prefix.clone()..).take_while(|(name, _)| name.starts_with(&prefix)) {
            desk.forget_lost_batches(now);
            if !desk.out.is_empty() {
                // One batch of its own at a time; it is on its way.
                continue;
            }
            let Batch { ops: waiting, report, records, .. } = desk.take_waiting(now, true);
            if report.is_none() && records.is_empty() {
                continue;
            }
            self.batches_sent += 1;
            let batch = desk.batch_sent(self.batches_sent, &records, report.is_some(), now);
            ops.extend(waiting);
            parts.push(SiblingPart { desk: name.clone(), report, records, batch });
        }
        parts
    }

    /// The desk a batch goes through: for a reserve charged at a key's or
    /// an end user's own limits, that key and user's desk (made if there is
    /// room); for a close, the desk holding the request; else the tenant's.
    fn desk_for(&mut self, tenant: &str, ops: &[TenantOp]) -> String {
        for op in ops {
            match op {
                TenantOp::Budget(LedgerOp::Reserve { budgets, request })
                    if charged_below(budgets, &request.scopes) && budgets.leases.is_some() =>
                {
                    let name = scoped_desk_name(tenant, &request.scopes);
                    let room = self.tenants.len() < MAX_DESKS;
                    match self.tenants.get_mut(&name) {
                        Some(desk) => {
                            // The key's limits may have changed with its record.
                            if desk.scoped.as_ref().is_none_or(|(_, s)| *s != request.scopes) {
                                desk.scoped = Some((tenant.to_owned(), request.scopes.clone()));
                            }
                        }
                        None if room => {
                            let desk = TenantDesk {
                                scoped: Some((tenant.to_owned(), request.scopes.clone())),
                                ..TenantDesk::default()
                            };
                            self.tenants.insert(name.clone(), desk);
                        }
                        None => return tenant.to_owned(),
                    }
                    return name;
                }
                TenantOp::Budget(LedgerOp::Settle { id, .. } | LedgerOp::Release { id, .. }) => {
                    let prefix = format!("{tenant}{SCOPE_SEPARATOR}");
                    let holder = self
                        .tenants
                        .range(prefix.clone()..)
                        .take_while(|(name, _)| name.starts_with(&prefix))
                        .find(|(_, desk)| desk.holds(id) || desk.at_writer.iter().any(|w| w.id == *id));
                    if let Some((name, _)) = holder {
                        return name.clone();
                    }
                }
                TenantOp::Budget(LedgerOp::Check { budgets, scopes }) if charged_below(budgets, scopes) => {
                    let name = scoped_desk_name(tenant, scopes);
                    if self.tenants.contains_key(&name) {
                        return name;
                    }
                }
                _ => {}
            }
        }
        tenant.to_owned()
    }

    /// A request of `tenant` has started on this instance (it has a plan).
    /// With [`LeaseDesk::request_ended`], this tells the desk when nothing
    /// of the tenant is in flight, so a close then goes to the writer at
    /// once rather than waiting for a batch.
    pub fn request_started(&mut self, tenant: &str) {
        let desk = self.tenants.entry(tenant.to_owned()).or_default();
        desk.requests = desk.requests.saturating_add(1);
    }

    /// A request [`LeaseDesk::request_started`] has ended (before its
    /// closing ops are routed).
    pub fn request_ended(&mut self, tenant: &str) {
        if let Some(desk) = self.tenants.get_mut(tenant) {
            desk.requests = desk.requests.saturating_sub(1);
        }
    }

    /// The writer answered a batch (None: it could not be reached, or
    /// failed): the plan's replies, in order (None if the plan's ops went
    /// unanswered).
    pub fn on_replies(
        &mut self,
        ticket: Ticket,
        replies: Option<Vec<TenantReply>>,
        now: u64,
    ) -> Option<Vec<TenantReply>> {
        let expected =
            ticket.slots.iter().filter_map(|s| if let Slot::Writer(i) = s { Some(*i + 1) } else { None }).max();
        let expected = expected.max(ticket.grant.map(|g| g + 1)).unwrap_or(0);
        let landed = replies.as_ref().is_some_and(|r| r.len() >= expected);
        for part in ticket.siblings {
            // (A desk forgotten since is made again to send what did not land.)
            let desk = self.tenants.entry(part.desk).or_default();
            desk.own_batch_answered(part.report, part.records, part.batch, landed, now);
        }
        let tenant = store_of(&ticket.tenant).to_owned();
        let desk = self.tenants.entry(ticket.tenant).or_default();
        // (False for a late answer to a batch given up: what it carried
        // was sent again then.)
        let was_out = desk.batch_answered(ticket.batch);
        let replies = replies.filter(|_| landed);
        let Some(replies) = replies else {
            // Nothing of it landed, as far as this instance can tell: the
            // report and records go again with the next batch (the writer
            // applies each settled request once).
            if let (true, Some((report, generation)), Some(lease)) =
                (was_out, ticket.report.map(|r| *r), desk.lease.as_mut())
                && lease.generation() == generation
            {
                lease.restore(report);
                desk.oldest_waiting.get_or_insert(now);
            }
            if was_out && !ticket.records.is_empty() {
                desk.oldest_waiting.get_or_insert(now);
                let later = std::mem::replace(&mut desk.records, ticket.records.into_iter().map(resent).collect());
                for op in later {
                    desk.wait(op, now);
                }
            }
            let writer_answers = ticket.slots.iter().any(|s| matches!(s, Slot::Writer(_)));
            return (!writer_answers).then(|| {
                ticket.slots.into_iter().filter_map(|s| if let Slot::Here(r) = s { Some(r) } else { None }).collect()
            });
        };
        for (i, id) in &ticket.reserves {
            if let Some(TenantReply::Budget(LedgerReply::Granted { granted })) = replies.get(*i)
                && let Some(hold) = desk.at_writer.iter_mut().find(|w| w.id == *id)
            {
                hold.amount = Some(granted.amount);
            }
        }
        if let Some(TenantReply::Budget(LedgerReply::Lease { grant })) = ticket.grant.and_then(|i| replies.get(i)) {
            desk.on_grant(grant, now);
        }
        for slot in &ticket.slots {
            if let Slot::Writer(i) = slot
                && let Some(TenantReply::Budget(LedgerReply::Refused { .. })) = replies.get(*i)
            {
                // A refused reserve holds nothing: it is not in flight.
                if let Some((_, id)) = ticket.reserves.iter().find(|(at, _)| at == i) {
                    desk.at_writer.retain(|w| w.id != *id);
                }
            }
        }
        let in_flight_here = self.held_here(&tenant, now);
        Some(
            ticket
                .slots
                .into_iter()
                .map(|s| match s {
                    Slot::Here(reply) => reply,
                    Slot::Writer(i) => with_local_holds(replies[i].clone(), &in_flight_here),
                })
                .collect(),
        )
    }

    /// What this instance's requests in flight hold of `tenant`'s leases:
    /// in all (every lease is held at the tenant), and at each key and
    /// user level a key and user's lease is held at.
    fn held_here(&self, tenant: &str, now: u64) -> HeldHere {
        // (A lease expired here the writer has charged in full: not leased there.)
        let in_flight = |desk: &TenantDesk| {
            desk.lease.as_ref().filter(|l| l.expires_at > now).map(LocalLease::held).unwrap_or_default()
        };
        let mut held =
            HeldHere { tenant: self.tenants.get(tenant).map(in_flight).unwrap_or_default(), below: Vec::new() };
        let prefix = format!("{tenant}{SCOPE_SEPARATOR}");
        for (_, desk) in self.tenants.range(prefix.clone()..).take_while(|(name, _)| name.starts_with(&prefix)) {
            let in_flight = in_flight(desk);
            if in_flight == Amount::default() {
                continue;
            }
            held.tenant = held.tenant.plus(in_flight);
            if let Some(scope) = desk.granted_view.scope() {
                for (level, id) in [(Level::Key, &scope.key), (Level::User, &scope.user)] {
                    if let Some(id) = id {
                        held.below.push((level, id.clone(), in_flight));
                    }
                }
            }
        }
        held
    }

    /// The batches to send in the background at `now`: waiting spend and
    /// records, renewals and returns, one batch per tenant at most. With
    /// `drain` (the instance is going away), everything waiting goes and
    /// every lease with nothing in flight is handed back.
    pub fn due(&mut self, now: u64, drain: bool) -> Vec<(String, Vec<TenantOp>, Ticket)> {
        let mut out = Vec::new();
        let at_once = self.writer_in_process;
        for (tenant, desk) in &mut self.tenants {
            desk.forget_lost_batches(now);
            desk.expire_writer_holds(now);
            if desk.busy {
                continue;
            }
            // A batch of records out blocks more records (one batch at a
            // time for a slow writer), not a renewal: that goes on its own.
            let records_out = !desk.out.is_empty() && !drain;
            let idle = !records_out
                && desk.lease.as_ref().is_some_and(|l| l.in_flight() == 0)
                && (drain || now >= desk.last_active.saturating_add(desk.idle_after()));
            let waiting = desk.records.len() + desk.lease.as_ref().map_or(0, LocalLease::unreported);
            // Nothing of the tenant in flight here: what waits cannot grow
            // into a batch soon, so it goes now.
            let quiet = desk.requests == 0
                && desk.at_writer.is_empty()
                && desk.lease.as_ref().is_none_or(|l| l.in_flight() == 0);
            let flush_due = !records_out
                && (waiting >= FLUSH_AT_COUNT
                    || (waiting > 0 && (drain || at_once || quiet))
                    || (waiting > 0 && desk.oldest_waiting.is_some_and(|t| now >= t.saturating_add(FLUSH_AFTER_SECS))));
            let renew_due = !idle && desk.renewal_due(now);
            if !(idle || flush_due || renew_due) {
                continue;
            }
            let mut batch = Batch::default();
            if idle && desk.lease.as_ref().is_some_and(|l| l.expires_at <= now) {
                // Expired while idle: the writer charged it in full; nothing to hand back.
                desk.lease_gone();
                batch.records = std::mem::take(&mut desk.records);
                batch.ops.extend(batch.records.iter().cloned());
                desk.oldest_waiting = None;
            } else if idle {
                batch = desk.take_waiting(now, true);
                if let (Some(lease), Some(budgets)) = (desk.lease.as_mut(), desk.budgets.as_ref()) {
                    let mut report = lease.take_report(true);
                    if let Some((earlier, _)) = batch.report.take() {
                        // One report: what was waiting, and the return.
                        report.settled.splice(0..0, earlier.settled);
                        batch.ops.retain(|op| !matches!(op, TenantOp::Budget(LedgerOp::LeaseReport { .. })));
                    }
                    batch.ops.push(TenantOp::Budget(LedgerOp::LeaseReport { budgets: budgets.clone(), report }));
                }
                // A returned lease's spend is applied or, if the batch is
                // lost, covered by the lease's full charge at its expiry.
                batch.report = None;
                desk.lease_gone();
                desk.busy = false;
            } else {
                if flush_due || !records_out {
                    batch = desk.take_waiting(now, true);
                }
                if renew_due {
                    // The id a lease that has expired here is renewed under (see `ask_lease`).
                    self.leases_made += 1;
                    let fallback = format!("{}-{}", self.instance, self.leases_made);
                    batch.ask_lease(desk, fallback, Amount::default(), now);
                }
            }
            if batch.ops.is_empty() {
                continue;
            }
            desk.busy |= batch.report.is_some() || batch.grant.is_some();
            let Batch { ops, report, grant, records } = batch;
            let busy = report.is_some() || grant.is_some();
            let batch = if busy || !records.is_empty() {
                self.batches_sent += 1;
                desk.batch_sent(self.batches_sent, &records, busy, now)
            } else {
                0
            };
            let ticket = Ticket {
                tenant: tenant.clone(),
                slots: Vec::new(),
                report: report.map(Box::new),
                grant,
                records,
                reserves: Vec::new(),
                siblings: Vec::new(),
                batch,
            };
            out.push((store_of(tenant).to_owned(), ops, ticket));
        }
        // A key and user's desk with nothing left in it is forgotten (an
        // instance may see any number of end users over its life).
        self.tenants.retain(|name, desk| !name.contains(SCOPE_SEPARATOR) || !desk.forgettable(now));
        out
    }

    /// Whether anything waits or is leased: a host with no timer of its
    /// own keeps calling [`LeaseDesk::due`] while this holds.
    pub fn has_work(&self) -> bool {
        self.tenants.values().any(|d| d.lease.is_some() || !d.records.is_empty() || !d.closes_out.is_empty())
    }
}

/// A usage read answered by the writer, with this instance's requests in
/// flight moved from its lease (`leased`) to `reserved`, where they would
/// be without leases.
fn with_local_holds(reply: TenantReply, held: &HeldHere) -> TenantReply {
    fn move_to_reserved(limits: &mut [budget::LimitStatus], held: Amount) {
        for limit in limits {
            let moved = held.min(limit.leased);
            limit.leased = limit.leased.saturating_sub(moved);
            limit.reserved = limit.reserved.plus(moved);
        }
    }
    match reply {
        TenantReply::Budget(LedgerReply::Status { mut limits, mut scoped }) if held.tenant != Amount::default() => {
            move_to_reserved(&mut limits, held.tenant);
            for entry in &mut scoped {
                let at = held
                    .below
                    .iter()
                    .filter(|(level, id, _)| *level == entry.level && *id == entry.id)
                    .fold(Amount::default(), |sum, (_, _, amount)| sum.plus(*amount));
                move_to_reserved(&mut entry.limits, at);
            }
            TenantReply::Budget(LedgerReply::Status { limits, scoped })
        }
        other => other,
    }
}

/// See [`LeaseDesk::held_here`].
struct HeldHere {
    tenant: Amount,
    below: Vec<(Level, String, Amount)>,
}

#[cfg(test)]
impl LeaseDesk {
    /// The user entry a request held in a scoped lease here is charged at.
    fn user_charged_for(&self, id: &str) -> Option<String> {
        self.tenants.values().find(|d| d.holds(id)).and_then(|d| d.granted_view.scope()?.user.clone())
    }
}

/// A request's settle or release, which the writer must see once.
fn is_close(op: &TenantOp) -> bool {
    matches!(op, TenantOp::Budget(LedgerOp::Settle { .. } | LedgerOp::Release { .. }))
}

/// `op` to send again after a batch that carried it went unanswered: a
/// settle then charges only while its hold is outstanding (it may have
/// landed). A release is idempotent as it is.
fn resent(op: TenantOp) -> TenantOp {
    match op {
        TenantOp::Budget(LedgerOp::Settle { budgets, id, amount, scopes, .. }) => {
            TenantOp::Budget(LedgerOp::Settle { budgets, id, amount, scopes, resent: true })
        }
        other => other,
    }
}

/// Whether a request of `scopes` is charged at a key's or a user's own
/// limits (a key's record with limits; a user with limits of their own or
/// the default ones). One that is not is the tenant's alone.
fn charged_below(budgets: &Budgets, scopes: &Scopes) -> bool {
    scopes.key.as_ref().is_some_and(|k| !k.limits.is_empty())
        || scopes
            .user
            .as_deref()
            .zip(budgets.users.as_deref())
            .is_some_and(|(user, users)| !users.limits_for(user).is_empty())
}

/// The tenant whose writer a desk's batches go to (a key and user's desk
/// is named after its tenant, then the key and user).
fn store_of(desk: &str) -> &str {
    desk.split(SCOPE_SEPARATOR).next().unwrap_or(desk)
}

/// The desk of one tenant's requests of one key and end user.
fn scoped_desk_name(tenant: &str, scopes: &Scopes) -> String {
    let key = scopes.key.as_ref().map_or("", |k| k.id.as_str());
    let user = scopes.user.as_deref().unwrap_or("");
    format!("{tenant}{SCOPE_SEPARATOR}{key}{SCOPE_SEPARATOR}{user}")
}

fn budgets_of(op: &LedgerOp) -> Option<&Budgets> {
    Some(op.budgets())
}

/// Ops the desk adds to a batch, and what it must remember of them.
#[derive(Debug, Default)]
struct Batch {
    ops: Vec<TenantOp>,
    report: Option<(LeaseReport, u32)>,
    grant: Option<usize>,
    records: Vec<TenantOp>,
}

impl Batch {
    /// Put the lease's unused part into this batch's report (adding one if
    /// none is being sent and none is out).
    fn release_unused(&mut self, desk: &mut TenantDesk) {
        let (Some(lease), Some(budgets)) = (desk.lease.as_mut(), desk.budgets.as_ref()) else { return };
        if self.report.is_none() {
            if desk.busy || lease.expires_at == 0 {
                return;
            }
            let generation = lease.generation();
            let report = lease.take_report(false);
            self.ops.push(TenantOp::Budget(LedgerOp::LeaseReport { budgets: budgets.clone(), report: report.clone() }));
            desk.report_out = Some((report.clone(), generation));
            self.report = Some((report, generation));
            desk.busy = true;
        }
        let keep = Some(lease.release_unused());
        if let Some((report, _)) = self.report.as_mut() {
            report.keep = keep;
        }
        if let Some(TenantOp::Budget(LedgerOp::LeaseReport { report, .. })) =
            self.ops.iter_mut().rev().find(|op| matches!(op, TenantOp::Budget(LedgerOp::LeaseReport { .. })))
        {
            report.keep = keep;
        }
    }

    /// Ask for a lease (or more of it) at the end of the batch, unless one
    /// is being asked for already.
    fn ask_lease(&mut self, desk: &mut TenantDesk, fallback_id: String, need: Amount, now: u64) {
        let Some(budgets) = desk.budgets.clone() else { return };
        let Some(sizing) = budgets.leases else { return };
        if desk.busy && self.report.is_none() {
            return;
        }
        // A lease past its expiry here has been (or will be) charged in full
        // by the writer: it is never renewed under the same id. Were an
        // answer lost, the writer could have started that id afresh while
        // this instance still counted the old size and reported the old
        // spend against it; a new id starts clean on both sides, and the
        // requests still in flight under the old one settle as paid.
        if let Some(lease) = desk.lease.as_mut().filter(|l| l.expires_at <= now) {
            lease.restart(fallback_id.clone());
            desk.report_out = None;
        }
        let id = desk.lease.as_ref().map_or(fallback_id, |l| l.id.clone());
        // Four times what the instance used since its last grant (a busy
        // instance's lease grows fast, so it renews well before it runs out
        // even when the writer is far away), and at least a burst of
        // requests like the one waiting. The writer cuts it to a share of
        // what is left and the cap, so asking generously starves no one.
        // Renewals come often (at half-life, or half used), so a short
        // spell since the last one says little: at least half the last ask.
        let ask = |demand: u64, need: u64, last_want: u64| {
            demand.saturating_mul(4).max(need.saturating_mul(LEASE_REQUESTS)).max(last_want / 2)
        };
        let (demand, last) = (desk.demand, desk.last_want);
        let want = Amount {
            tokens: ask(demand.tokens, need.tokens, last.tokens),
            micros: ask(demand.micros, need.micros, last.micros),
            requests: ask(demand.requests, need.requests, last.requests),
        };
        desk.demand = Amount::default();
        desk.last_want = want;
        self.grant = Some(self.ops.len());
        // `need` is nothing: the request waiting is reserved at the writer
        // in this batch; the lease is for the requests after it.
        if need != Amount::default() {
            desk.unit = need;
        }
        // This batch's report (if any) is already taken off the size, and
        // no other grant or report is out (`busy`): the size is what the
        // writer holds for this lease, unless a grant landed unseen.
        let have = desk.lease.as_ref().filter(|l| l.id == id).map(|l| l.size);
        let scopes = desk.scoped.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
        let request = LeaseRequest { id, want, need: Amount::default(), unit: desk.unit, have, scopes };
        self.ops.push(TenantOp::Budget(LedgerOp::LeaseGrant { budgets, sizing, request }));
        desk.busy = true;
    }
}

impl TenantDesk {
    fn ttl(&self) -> u64 {
        self.budgets.as_ref().and_then(|b| b.leases).map_or(30, |s| s.ttl_seconds)
    }

    fn idle_after(&self) -> u64 {
        IDLE_AFTER_SECS.min(self.ttl() / 3).max(1)
    }

    /// Batches out for longer than [`LOST_BATCH_SECS`] will not be
    /// answered (the host's task that sent them is gone): stop waiting.
    /// A report's spend and the closes of requests reserved at the writer
    /// go again (a close only charges while its hold is outstanding, see
    /// [`resent`]); outcome records are statistics and do not.
    fn forget_lost_batches(&mut self, now: u64) {
        let lost = |sent_at: u64| now >= sent_at.saturating_add(LOST_BATCH_SECS);
        let Some(oldest) = self.out.iter().map(|&(_, sent_at)| sent_at).min().filter(|&t| lost(t)) else {
            return;
        };
        let gone: Vec<u64> = self.out.iter().filter(|&&(_, sent_at)| lost(sent_at)).map(|&(batch, _)| batch).collect();
        self.out.retain(|&(_, sent_at)| !lost(sent_at));
        if self.busy && gone.contains(&self.busy_batch) {
            self.busy = false;
            self.busy_batch = 0;
            // Its spend goes again with the next report (the writer applies
            // each request once, so a report that did land costs nothing).
            if let (Some((report, generation)), Some(lease)) = (self.report_out.take(), self.lease.as_mut())
                && lease.generation() == generation
            {
                lease.restore(report);
            }
        }
        let (lost_closes, still_out): (Vec<CloseOut>, Vec<CloseOut>) =
            std::mem::take(&mut self.closes_out).into_iter().partition(|c| gone.contains(&c.batch));
        self.closes_out = still_out;
        for close in lost_closes {
            self.wait(resent(close.op), now);
        }
        // What it carried is due at once.
        self.oldest_waiting = Some(oldest);
    }

    /// A batch carrying `records` (and perhaps a report or a lease
    /// request) of this desk's was sent at `now`: its number.
    fn batch_sent(&mut self, batch: u64, records: &[TenantOp], makes_busy: bool, now: u64) -> u64 {
        self.out.push((batch, now));
        if makes_busy {
            self.busy_batch = batch;
        }
        self.closes_out.extend(records.iter().filter(|op| is_close(op)).map(|op| CloseOut { batch, op: op.clone() }));
        batch
    }

    /// Batch `batch` (0: none of this desk's) was answered, or not: it is
    /// no longer out, nor are its closes (if it did not land, they wait
    /// again with its records). False if it was not out: a late answer to
    /// a batch given up, whose report and closes went again then.
    fn batch_answered(&mut self, batch: u64) -> bool {
        let Some(i) = self.out.iter().position(|&(b, _)| b == batch).filter(|_| batch != 0) else {
            return false;
        };
        self.out.swap_remove(i);
        self.closes_out.retain(|c| c.batch != batch);
        if self.busy_batch == batch {
            self.busy = false;
            self.busy_batch = 0;
            self.report_out = None;
        }
        true
    }

    /// A batch carrying only this desk's waiting report and records (in
    /// another desk's batch) was answered, or not (`landed` false): what
    /// it carried goes again with the next one.
    fn own_batch_answered(
        &mut self,
        report: Option<(LeaseReport, u32)>,
        records: Vec<TenantOp>,
        batch: u64,
        landed: bool,
        now: u64,
    ) {
        let was_out = self.batch_answered(batch);
        if landed || !was_out {
            return;
        }
        if let (Some((report, generation)), Some(lease)) = (report, self.lease.as_mut())
            && lease.generation() == generation
        {
            lease.restore(report);
            self.oldest_waiting.get_or_insert(now);
        }
        if !records.is_empty() {
            self.oldest_waiting.get_or_insert(now);
            let later = std::mem::replace(&mut self.records, records.into_iter().map(resent).collect());
            for op in later {
                self.wait(op, now);
            }
        }
    }

    /// A request reserved at the writer closes (`op`: its settle or
    /// release): it is no longer in flight, and if the view counted its
    /// hold, the view now counts its spend instead.
    fn writer_hold_closed(&mut self, op: &TenantOp, now: u64) {
        let (id, spent) = match op {
            TenantOp::Budget(LedgerOp::Settle { id, amount, .. }) => (id, *amount),
            TenantOp::Budget(LedgerOp::Release { id, .. }) => (id, Amount::default()),
            _ => return,
        };
        let Some(i) = self.at_writer.iter().position(|w| w.id == *id) else { return };
        let hold = self.at_writer.swap_remove(i);
        if let (true, Some(amount)) = (hold.in_view, hold.amount)
            && let Some(others) = self.view.outstanding.iter_mut().find(|o| o.id == budget::lease::OTHERS_HOLD)
        {
            others.amount = others.amount.saturating_sub(amount);
            self.view.charge_spent(spent, now);
        }
    }

    /// Requests reserved at the writer whose hold the writer has let go
    /// by now (their close never came): no longer in flight here, and
    /// nothing charged for them, as at the writer.
    fn expire_writer_holds(&mut self, now: u64) {
        if self.at_writer.iter().all(|w| w.expires_at > now) {
            return;
        }
        let mut freed = Amount::default();
        self.at_writer.retain(|hold| {
            let live = hold.expires_at > now;
            if !live && hold.in_view {
                freed = freed.plus(hold.amount.unwrap_or_default());
            }
            live
        });
        if let Some(others) = self.view.outstanding.iter_mut().find(|o| o.id == budget::lease::OTHERS_HOLD) {
            others.amount = others.amount.saturating_sub(freed);
        }
    }

    /// An op for the next batch.
    fn wait(&mut self, op: TenantOp, now: u64) {
        self.oldest_waiting.get_or_insert(now);
        self.records.push(op);
        if self.records.len() > MAX_WAITING_RECORDS {
            // Only records go: a settle dropped would leave its hold to expire.
            if let Some(i) = self.records.iter().position(|o| matches!(o, TenantOp::Outcome(_))) {
                self.records.remove(i);
            }
        }
    }

    fn batches_records(&self) -> bool {
        // Per-request tenants get what they asked for: the writer sees
        // every request as it closes. Leased and unmetered ones batch.
        !self.per_request
    }

    fn holds(&self, id: &str) -> bool {
        self.lease.as_ref().is_some_and(|l| l.holds(id))
    }

    fn lease_live(&self, now: u64) -> bool {
        self.budgets.is_some() && self.lease.as_ref().is_some_and(|l| l.expires_at > now)
    }

    /// Nothing held, leased, waiting or out, and idle.
    fn forgettable(&self, now: u64) -> bool {
        self.lease.is_none()
            && self.records.is_empty()
            && self.at_writer.is_empty()
            && self.closes_out.is_empty()
            && !self.busy
            && self.out.is_empty()
            && now >= self.last_active.saturating_add(self.idle_after())
    }

    /// `scopes` as the lease's grant resolved them: a user past the cap
    /// of tracked users is charged at the shared entry of such users, so
    /// the view decides at that entry, as the writer does.
    fn as_granted<'a>(&self, scopes: &'a Scopes) -> Cow<'a, Scopes> {
        let overflow = self.granted_view.scope().and_then(|s| s.user.as_deref()) == Some(OVERFLOW_USER)
            && scopes.user.as_deref().is_some_and(|u| u != OVERFLOW_USER);
        if overflow {
            Cow::Owned(Scopes { key: scopes.key.clone(), user: Some(OVERFLOW_USER.to_owned()) })
        } else {
            Cow::Borrowed(scopes)
        }
    }

    fn lease_gone(&mut self) {
        self.lease = None;
        self.report_out = None;
        self.view = BudgetState::default();
        self.granted_view = budget::lease::LeaseView::default();
    }

    /// Decide a reserve here, if the lease can pay it.
    fn reserve_here(&mut self, budgets: &Budgets, request: &budget::ReserveRequest, now: u64) -> Option<Granted> {
        if self.lease.as_ref()?.expires_at <= now.saturating_add(RESERVE_MARGIN_SECS) {
            return None;
        }
        // A refusal is the writer's to make: this view counts other
        // instances' leases in full, the writer knows what they spent.
        let scopes = self.as_granted(&request.scopes);
        let granted = match scopes {
            Cow::Borrowed(_) => budget::reserve(&mut self.view, budgets, request, now).ok()?,
            Cow::Owned(scopes) => {
                let request = budget::ReserveRequest { scopes, ..request.clone() };
                budget::reserve(&mut self.view, budgets, &request, now).ok()?
            }
        };
        let lease = self.lease.as_mut()?;
        if lease.reserve(&request.id, granted.amount, now, RESERVE_MARGIN_SECS).is_err() {
            self.view.outstanding.retain(|o| o.id != request.id);
            return None;
        }
        Some(granted)
    }

    /// Settle (`Some(spend)`) or release (`None`) a request held here.
    fn settle_here(&mut self, budgets: &Budgets, id: &str, spent: Option<Amount>, now: u64) -> TenantReply {
        let remaining = match spent {
            Some(amount) => {
                if let Some(lease) = self.lease.as_mut() {
                    lease.settle(id, amount);
                }
                budget::settle(&mut self.view, budgets, id, amount, now)
            }
            None => {
                if let Some(lease) = self.lease.as_mut() {
                    lease.release(id);
                }
                budget::release(&mut self.view, budgets, id, now)
            }
        };
        self.oldest_waiting.get_or_insert(now);
        TenantReply::Budget(LedgerReply::Remaining { remaining })
    }

    /// Renew when the lease is more than half through its life or half
    /// used (so requests keep reserving here while the grant is out).
    fn renewal_due(&self, now: u64) -> bool {
        let Some(lease) = &self.lease else { return false };
        let half_life = lease.expires_at <= now.saturating_add(self.ttl() / 2);
        let size = lease.size;
        let left = lease.available();
        let low = left.tokens.saturating_mul(2) < size.tokens || left.micros.saturating_mul(2) < size.micros;
        half_life || low
    }

    /// What waits here, as ops for the front of a batch.
    /// What waits here, as ops for the front of a batch. `with_records`
    /// false (a batch a request waits for a decision on): only the budget
    /// ops, which join the same write as the request's own; outcome records
    /// stay for a batch nobody waits on (in Redis each is a round trip).
    fn take_waiting(&mut self, now: u64, with_records: bool) -> Batch {
        let mut batch = Batch::default();
        let oldest = self.oldest_waiting.take();
        // The report first, then the records: in a store that applies them
        // as separate writes (Envoy's shared data, Redis), a reader that
        // sees a request recorded also sees its spend.
        if !self.busy
            && let (Some(lease), Some(budgets)) = (self.lease.as_mut(), self.budgets.as_ref())
            && lease.unreported() > 0
        {
            let generation = lease.generation();
            let report = lease.take_report(false);
            batch
                .ops
                .push(TenantOp::Budget(LedgerOp::LeaseReport { budgets: budgets.clone(), report: report.clone() }));
            self.report_out = Some((report.clone(), generation));
            batch.report = Some((report, generation));
            self.busy = true;
        }
        if with_records {
            batch.records = std::mem::take(&mut self.records);
        } else {
            let (budget, outcome): (Vec<TenantOp>, Vec<TenantOp>) =
                std::mem::take(&mut self.records).into_iter().partition(|op| matches!(op, TenantOp::Budget(_)));
            batch.records = budget;
            if !outcome.is_empty() {
                self.records = outcome;
                self.oldest_waiting = oldest.or(Some(now));
            }
        }
        batch.ops.extend(batch.records.iter().cloned());
        if self.lease.as_ref().is_some_and(|l| l.unreported() > 0) {
            // Held back behind the report that is out: the next batch.
            self.oldest_waiting = self.oldest_waiting.or(oldest).or(Some(now));
        }
        batch
    }

    fn on_grant(&mut self, grant: &budget::lease::LeaseGrant, now: u64) {
        let scopes = self.scoped.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
        let lease = self.lease.get_or_insert_with(|| LocalLease::scoped(grant.id.clone(), scopes.clone()));
        if lease.id != grant.id {
            return;
        }
        lease.set_scopes(scopes);
        lease.on_grant(grant);
        self.granted_view = grant.view.clone();
        // The requests held here stay in the view (a fresh grant's older
        // ones were paid for by the writer's full charge, and their settles
        // change nothing but the view).
        let local: Vec<Outstanding> = self
            .view
            .outstanding
            .iter()
            .filter(|o| o.id != budget::lease::OTHERS_HOLD && lease.holds(&o.id))
            .cloned()
            .map(|mut o| {
                o.expires_at = o.expires_at.max(now + RESERVATION_TTL_SECS);
                o
            })
            .collect();
        self.view = self.granted_view.state(lease.expires_at, local, lease.unreported_total(), now);
        for hold in &mut self.at_writer {
            // Held at the writer as it granted: in the view's other holds.
            hold.in_view = hold.amount.is_some();
        }
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::tests_support::{budgets, reserve_op};
    use super::*;
    use crate::budget::lease::LeaseSizing;
    use crate::budget::{BudgetLimit, Window};
    use crate::outcomes::{OutcomeLedger, RequestOutcome};

    /// The writer: one tenant's state, applied the way every host applies it.
    #[derive(Default)]
    struct Writer {
        budget: BudgetState,
        outcomes: OutcomeLedger,
        /// Batches a request waited for, and batches sent in the background.
        batches: usize,
        background: usize,
        /// A reachable writer applies the batch but its answer is lost (the
        /// host's call timed out after it landed).
        lose_answers: bool,
    }

    impl Writer {
        fn ask(
            &mut self,
            desk: &mut LeaseDesk,
            ops: Vec<TenantOp>,
            now: u64,
            reachable: bool,
        ) -> Option<Vec<TenantReply>> {
            match desk.route("t", ops, now) {
                Routed::Answered(replies) => Some(replies),
                Routed::Send { ops, ticket } => {
                    let replies = reachable.then(|| {
                        self.batches += 1;
                        crate::store::apply(&mut self.budget, &mut self.outcomes, &ops, now).0
                    });
                    desk.on_replies(ticket, replies.filter(|_| !self.lose_answers), now)
                }
            }
        }

        fn background(&mut self, desk: &mut LeaseDesk, now: u64, reachable: bool) {
            for (_, ops, ticket) in desk.due(now, false) {
                let replies = reachable.then(|| {
                    self.background += 1;
                    crate::store::apply(&mut self.budget, &mut self.outcomes, &ops, now).0
                });
                let _ = desk.on_replies(ticket, replies.filter(|_| !self.lose_answers), now);
            }
        }

        /// The host's task that sent the background batches dies with
        /// them: no answer ever comes to the desk (the writer applied them
        /// first when `applied`).
        fn background_lost(&mut self, desk: &mut LeaseDesk, now: u64, applied: bool) {
            for (_, ops, ticket) in desk.due(now, false) {
                if applied {
                    crate::store::apply(&mut self.budget, &mut self.outcomes, &ops, now);
                }
                drop(ticket);
            }
        }
    }

    fn granted(reply: &TenantReply) -> Option<Amount> {
        match reply {
            TenantReply::Budget(LedgerReply::Granted { granted }) => Some(granted.amount),
            _ => None,
        }
    }

    fn record(id: &str) -> TenantOp {
        TenantOp::Outcome(OutcomeOp::Record {
            outcome: RequestOutcome { request_id: id.into(), tier: "cheap".into(), ..Default::default() },
        })
    }

    #[test]
    fn under_load_an_instance_reserves_and_settles_without_the_writer_and_reports_in_batches() {
        let b = budgets(1_000_000, 1_000_000_000, Some(LeaseSizing::default()));
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        let mut spent = Amount::default();
        // A long answer stays in flight throughout: the instance is busy.
        writer.ask(&mut desk, vec![reserve_op(&b, "long", 100, 200)], 10, true);
        assert_eq!(writer.batches, 1, "the first reserve (and the lease asked with it) went to the writer");
        for n in 0..50 {
            let id = format!("r{n}");
            let reply = writer.ask(&mut desk, vec![reserve_op(&b, &id, 100, 200)], 10, true);
            assert!(granted(&reply.unwrap()[0]).is_some());
            let actual = Amount { tokens: 150, micros: 250, requests: 0 };
            spent = spent.plus(actual);
            let close = vec![
                TenantOp::Budget(LedgerOp::Settle {
                    resent: false,
                    budgets: b.clone(),
                    id: id.clone(),
                    amount: actual,
                    scopes: Default::default(),
                }),
                record(&id),
            ];
            let replies = writer.ask(&mut desk, close, 10, true).unwrap();
            assert_eq!(replies.len(), 2);
            // The host's background step after every request: renewals
            // ahead of need; spend and records wait for a second or 64.
            writer.background(&mut desk, 10, true);
        }
        assert_eq!(writer.batches, 1, "no reserve and no close waited for the writer");
        assert!(writer.background <= 3, "renewed and flushed by count {} times", writer.background);
        let before = writer.background;
        writer.background(&mut desk, 11, true);
        assert_eq!(writer.background, before + 1, "after a second, the spend and the records went in one batch");
        assert_eq!(writer.budget.windows[0].spent, spent);
        assert_eq!(writer.outcomes.totals.tiers.iter().map(|t| t.requests).sum::<u64>(), 50);
        // The long answer ends; nothing else is in flight, so its close goes
        // with the next background step, not a second later.
        let close = vec![TenantOp::Budget(LedgerOp::Settle {
            resent: false,
            budgets: b.clone(),
            id: "long".into(),
            amount: Amount { tokens: 1, micros: 1, requests: 0 },
            scopes: Default::default(),
        })];
        writer.ask(&mut desk, close, 11, true);
        let before = writer.background;
        writer.background(&mut desk, 11, true);
        assert_eq!((writer.batches, writer.background), (1, before + 1));
        assert_eq!(writer.budget.windows[0].spent, spent.plus(Amount { tokens: 1, micros: 1, requests: 0 }));
        // Idle: the lease goes back, and nothing is held any more.
        writer.background(&mut desk, 11 + IDLE_AFTER_SECS + 1, true);
        assert!(writer.budget.outstanding.is_empty(), "{:?}", writer.budget.outstanding);
    }

    #[test]
    fn a_lone_close_goes_at_the_next_background_step_and_back_to_back_closes_share_one_batch() {
        let b = budgets(1_000_000, 1_000_000_000, Some(LeaseSizing::default()));
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        let close = |id: &str| {
            vec![
                TenantOp::Budget(LedgerOp::Settle {
                    resent: false,
                    budgets: b.clone(),
                    id: id.into(),
                    amount: Amount { tokens: 10, micros: 10, requests: 0 },
                    scopes: Default::default(),
                }),
                record(id),
            ]
        };
        let spent = |n: u64| Amount { tokens: 10 * n, micros: 10 * n, requests: 0 };
        // One request at a time: each close is answered here, and the host's
        // background step right after it (the Worker's flusher, Envoy's
        // tick) finds nothing in flight and sends it.
        for n in 0..3 {
            let id = format!("r{n}");
            desk.request_started("t");
            writer.ask(&mut desk, vec![reserve_op(&b, &id, 100, 200)], 10, true);
            desk.request_ended("t");
            let batches = writer.batches;
            writer.ask(&mut desk, close(&id), 10, true);
            assert_eq!(writer.batches, batches, "the close itself waits for no writer");
            writer.background(&mut desk, 10, true);
            assert_eq!(writer.budget.windows[0].spent, spent(n + 1), "request {n}'s spend is at the writer");
            assert_eq!(writer.outcomes.totals.tiers.iter().map(|t| t.requests).sum::<u64>(), n + 1);
        }
        assert_eq!(writer.batches, 1, "one reserve (and a lease); no close paid a write on its own path");
        assert_eq!(writer.background, 3);
        // Back to back: while the next request is in flight, a close waits
        // (within the same second, under 64 records); the last one out
        // takes both in one batch.
        desk.request_started("t");
        writer.ask(&mut desk, vec![reserve_op(&b, "a", 100, 200)], 10, true);
        desk.request_started("t");
        writer.ask(&mut desk, vec![reserve_op(&b, "b", 100, 200)], 10, true);
        desk.request_ended("t");
        writer.ask(&mut desk, close("a"), 10, true);
        writer.background(&mut desk, 10, true);
        assert_eq!(writer.background, 3, "b is still in flight: a's close waits");
        desk.request_ended("t");
        writer.ask(&mut desk, close("b"), 10, true);
        writer.background(&mut desk, 10, true);
        assert_eq!(writer.background, 4, "both closes in one batch");
        assert_eq!(writer.budget.windows[0].spent, spent(5));
        assert_eq!(writer.outcomes.totals.tiers.iter().map(|t| t.requests).sum::<u64>(), 5);
    }

    fn remaining_of(reply: &TenantReply) -> budget::Remaining {
        match reply {
            TenantReply::Budget(LedgerReply::Granted { granted }) => granted.remaining,
            other => panic!("not granted: {other:?}"),
        }
    }

    #[test]
    fn a_request_reserved_from_the_lease_reports_the_headroom_the_writer_would() {
        let leased = budgets(1_000_000, 1_000_000_000, Some(LeaseSizing::default()));
        let strict = budgets(1_000_000, 1_000_000_000, None);
        let (mut desk, mut writer) = (LeaseDesk::new("i1"), Writer::default());
        let (mut strict_desk, mut strict_writer) = (LeaseDesk::new("i2"), Writer::default());
        for n in 0..4 {
            let id = format!("r{n}");
            let a = writer.ask(&mut desk, vec![reserve_op(&leased, &id, 100 + n, 200)], 10, true).unwrap();
            let b =
                strict_writer.ask(&mut strict_desk, vec![reserve_op(&strict, &id, 100 + n, 200)], 10, true).unwrap();
            assert_eq!(remaining_of(&a[0]), remaining_of(&b[0]), "request {n}");
            let spent = Amount { tokens: 150 + n, micros: 170 + n, requests: 0 };
            let settle = |b: &Budgets| {
                TenantOp::Budget(LedgerOp::Settle {
                    resent: false,
                    budgets: b.clone(),
                    id: id.clone(),
                    amount: spent,
                    scopes: Default::default(),
                })
            };
            writer.ask(&mut desk, vec![settle(&leased)], 10, true);
            strict_writer.ask(&mut strict_desk, vec![settle(&strict)], 10, true);
        }
    }

    #[test]
    fn a_usage_read_counts_this_instances_requests_in_flight_as_reserved() {
        let b = budgets(1_000_000, 1_000_000_000, Some(LeaseSizing::default()));
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        writer.ask(&mut desk, vec![reserve_op(&b, "first", 10, 10)], 10, true);
        let held = writer.ask(&mut desk, vec![reserve_op(&b, "second", 100, 200)], 10, true).unwrap();
        let TenantReply::Budget(LedgerReply::Granted { granted }) = &held[0] else { panic!() };
        assert_eq!(writer.batches, 1, "the second request was held in memory");
        let status = TenantOp::Budget(LedgerOp::Status { budgets: b.clone(), scopes: Default::default() });
        let replies = writer.ask(&mut desk, vec![status], 10, true).unwrap();
        let [TenantReply::Budget(LedgerReply::Status { limits, .. })] = replies.as_slice() else {
            panic!("{replies:?}")
        };
        let first = Amount { tokens: 20, micros: 30, requests: 1 };
        assert_eq!(limits[0].reserved, first.plus(granted.amount), "both requests in flight, wherever they hold");
    }

    #[test]
    fn an_unmetered_tenants_records_wait_while_its_requests_overlap_and_go_when_the_last_one_ends() {
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        for n in 0..3 {
            desk.request_started("t");
            if n == 0 {
                desk.request_started("t"); // one more stays in flight throughout
            }
            desk.request_ended("t");
            writer.ask(&mut desk, vec![record(&format!("r{n}"))], 10, true);
            writer.background(&mut desk, 10, true);
        }
        assert_eq!((writer.batches, writer.background), (0, 0), "overlapping requests' records wait");
        desk.request_ended("t");
        writer.ask(&mut desk, vec![record("last")], 10, true);
        writer.background(&mut desk, 10, true);
        assert_eq!((writer.batches, writer.background), (0, 1), "the last one out takes them all");
        assert_eq!(writer.outcomes.totals.tiers.iter().map(|t| t.requests).sum::<u64>(), 4);
    }

    #[test]
    fn a_batch_never_answered_is_given_up_after_a_while_and_its_spend_reported_again() {
        let b = budgets(1_000_000, 1_000_000_000, Some(LeaseSizing { ttl_seconds: 300, ..LeaseSizing::default() }));
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        writer.ask(&mut desk, vec![reserve_op(&b, "a", 10, 10)], 10, true);
        writer.ask(&mut desk, vec![reserve_op(&b, "long", 10, 10)], 10, true);
        writer.ask(&mut desk, vec![reserve_op(&b, "b", 10, 10)], 10, true);
        let spent = Amount { tokens: 7, micros: 7, requests: 0 };
        writer.ask(
            &mut desk,
            vec![TenantOp::Budget(LedgerOp::Settle {
                resent: false,
                budgets: b.clone(),
                id: "b".into(),
                amount: spent,
                scopes: Default::default(),
            })],
            10,
            true,
        );
        // The flush goes out and its answer never comes (the host's task died).
        let lost = desk.due(12, false);
        assert_eq!(lost.len(), 1);
        drop(lost);
        assert!(desk.due(20, false).is_empty(), "one batch out at a time");
        writer.background(&mut desk, 12 + LOST_BATCH_SECS, true);
        assert_eq!(writer.budget.windows[0].spent, spent, "the lost report's spend went again");
    }

    #[test]
    fn a_renewal_that_landed_but_whose_answer_was_lost_strands_nothing_in_the_writer() {
        let b = budgets(1_000_000, 1_000_000_000, Some(LeaseSizing::default()));
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        writer.ask(&mut desk, vec![reserve_op(&b, "a", 10, 10)], 10, true);
        // Held in the lease and still in flight at the renewal, so the lease is not idle.
        writer.ask(&mut desk, vec![reserve_op(&b, "b", 10, 10)], 10, true);
        let lease_hold = |writer: &Writer| {
            writer.budget.outstanding.iter().find(|o| crate::budget::lease::is_lease(&o.id)).map(|o| o.amount)
        };
        let local_size = |desk: &LeaseDesk| desk.tenants.get("t").and_then(|t| t.lease.as_ref()).map(|l| l.size);
        assert!(local_size(&desk).is_some() && lease_hold(&writer) == local_size(&desk));
        // At half-life the renewal goes out and lands; its answer is lost
        // (the host's call timed out).
        let renewal_at = 10 + LeaseSizing::default().ttl_seconds / 2;
        let sent = desk.due(renewal_at, false);
        assert_eq!(sent.len(), 1);
        for (_, ops, ticket) in sent {
            assert!(ops.iter().any(|op| matches!(op, TenantOp::Budget(LedgerOp::LeaseGrant { .. }))));
            crate::store::apply(&mut writer.budget, &mut writer.outcomes, &ops, renewal_at);
            assert!(desk.on_replies(ticket, None, renewal_at).is_none_or(|r| r.is_empty()));
        }
        let (held, known) = (lease_hold(&writer).unwrap_or_default(), local_size(&desk).unwrap_or_default());
        assert!(held.exceeds(known), "the writer grew the lease; the instance does not know: {held:?} vs {known:?}");
        // The next renewal carries what the instance holds: the writer cuts
        // the lost grant before growing, so both agree again.
        writer.background(&mut desk, renewal_at + 1, true);
        assert_eq!(lease_hold(&writer), local_size(&desk));
    }

    #[test]
    fn a_lease_expired_here_is_renewed_under_a_new_id_so_a_lost_answer_cannot_leave_it_counting_a_stale_size() {
        let b = budgets(1_000_000, 1_000_000_000, Some(LeaseSizing::default()));
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        writer.ask(&mut desk, vec![reserve_op(&b, "a", 10, 10)], 10, true);
        writer.ask(&mut desk, vec![reserve_op(&b, "b", 10, 10)], 10, true);
        let first = desk.tenants.get("t").and_then(|t| t.lease.as_ref()).map(|l| l.id.clone()).unwrap_or_default();
        // Past the lease's expiry the writer has charged it in full; the
        // renewal that goes out now lands, and its answer is lost.
        let late = 10 + LeaseSizing::default().ttl_seconds + 5;
        writer.lose_answers = true;
        writer.background(&mut desk, late, true);
        writer.lose_answers = false;
        writer.background(&mut desk, late + 1, true);
        let lease = desk.tenants.get("t").and_then(|t| t.lease.as_ref()).cloned().unwrap_or_default();
        assert_ne!(lease.id, first, "an expired lease is not renewed under its id");
        let held = writer
            .budget
            .outstanding
            .iter()
            .find(|o| o.id == format!("lease:{}", lease.id))
            .map(|o| o.amount)
            .unwrap_or_default();
        assert!(!lease.size.exceeds(held), "the instance counts {:?}, the writer holds {held:?}", lease.size);
        // "b", in flight under the expired lease, settles as paid (by the full charge).
        let spent_before = writer.budget.windows[0].spent;
        let settle = LedgerOp::Settle {
            resent: false,
            budgets: b.clone(),
            id: "b".into(),
            amount: Amount { tokens: 5, micros: 5, requests: 0 },
            scopes: Default::default(),
        };
        writer.ask(&mut desk, vec![TenantOp::Budget(settle)], late + 2, true);
        writer.background(&mut desk, late + 2 + FLUSH_AFTER_SECS + 1, true);
        assert_eq!(writer.budget.windows[0].spent.tokens, spent_before.tokens, "charged again");
    }

    #[test]
    fn a_per_request_tenant_sends_every_op_to_the_writer() {
        let b = budgets(1_000_000, 1_000_000_000, None);
        let mut desk = LeaseDesk::new("i1");
        for n in 0..3 {
            let routed = desk.route("t", vec![reserve_op(&b, &format!("r{n}"), 10, 10), record("x")], 10);
            let Routed::Send { ops, .. } = routed else { panic!("answered here") };
            assert_eq!(ops.len(), 2, "the ops as they were, nothing added");
        }
        assert!(desk.due(1_000, false).is_empty());
    }

    #[test]
    fn a_usage_read_carries_what_waits_here_in_front_of_it() {
        let b = budgets(1_000_000, 1_000_000_000, Some(LeaseSizing::default()));
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        for n in 0..3 {
            let id = format!("r{n}");
            writer.ask(&mut desk, vec![reserve_op(&b, &id, 100, 200)], 10, true);
            let settle = TenantOp::Budget(LedgerOp::Settle {
                resent: false,
                budgets: b.clone(),
                id,
                amount: Amount { tokens: 7, micros: 9, requests: 0 },
                scopes: Default::default(),
            });
            writer.ask(&mut desk, vec![settle], 10, true);
        }
        let status = TenantOp::Budget(LedgerOp::Status { budgets: b.clone(), scopes: Default::default() });
        let replies = writer.ask(&mut desk, vec![status], 10, true).unwrap();
        let [TenantReply::Budget(LedgerReply::Status { limits, .. })] = replies.as_slice() else {
            panic!("{replies:?}")
        };
        assert_eq!(limits[0].spent, Amount { tokens: 21, micros: 27, requests: 0 });
    }

    #[test]
    fn a_lost_report_is_sent_again_and_applied_once() {
        let b = budgets(1_000_000, 1_000_000_000, Some(LeaseSizing::default()));
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        writer.ask(&mut desk, vec![reserve_op(&b, "a", 10, 10)], 10, true);
        writer.ask(&mut desk, vec![reserve_op(&b, "b", 10, 10)], 10, true);
        let settle = |id: &str| {
            TenantOp::Budget(LedgerOp::Settle {
                resent: false,
                budgets: b.clone(),
                id: id.into(),
                amount: Amount { tokens: 5, micros: 5, requests: 0 },
                scopes: Default::default(),
            })
        };
        writer.ask(&mut desk, vec![settle("b")], 10, true);
        writer.background(&mut desk, 12, false);
        writer.background(&mut desk, 13, true);
        assert_eq!(writer.budget.windows[0].spent, Amount { tokens: 5, micros: 5, requests: 0 });
    }

    /// N instances share one writer; requests reserve, finish (spending part
    /// of their hold), or are abandoned; instances crash (their memory is
    /// gone) and the writer is sometimes unreachable, or applies a batch
    /// whose answer is then lost (a call that timed out after it landed);
    /// the clock moves. The
    /// spend that really happened never exceeds the limit, no lease
    /// outlives its expiry, and once everything has ended the writer has
    /// charged at least what was spent, and exactly that when nothing was
    /// lost.
    #[test]
    fn random_interleavings_of_desks_never_spend_past_a_limit() {
        for seed in 1..=40u64 {
            for lossy in [false, true] {
                run_interleaving(seed, lossy, false);
            }
        }
    }

    /// The same, with half the requests charged at a key's limit and an
    /// end user's too (those reserve at the writer; the rest from leases):
    /// no key, no user and not the tenant ever spends or commits past its
    /// limit.
    #[test]
    fn random_interleavings_with_key_and_user_limits_never_spend_past_any_level() {
        for seed in 1..=40u64 {
            for lossy in [false, true] {
                run_interleaving(seed, lossy, true);
            }
        }
    }

    /// A requests-per-minute limit with leases: four instances reserve 200
    /// requests within one minute from their leases; at most the limit is
    /// granted, and the writer never commits more requests than it allows.
    #[test]
    fn a_requests_per_minute_limit_holds_across_instances_with_leases() {
        let mut b = budgets(1_000_000_000, 1_000_000_000, Some(LeaseSizing::default()));
        b.limits.push(BudgetLimit {
            name: "rpm".into(),
            window: Window::Minute,
            tokens: None,
            usd_micros: None,
            requests: Some(50),
        });
        let mut writer = Writer::default();
        let mut desks: Vec<LeaseDesk> = (0..4).map(|i| LeaseDesk::new(&format!("i{i}"))).collect();
        let start = 6_000u64;
        let mut granted_ids = Vec::new();
        for n in 0..200usize {
            let i = n % desks.len();
            let id = format!("r{n}");
            let replies = writer.ask(&mut desks[i], vec![reserve_op(&b, &id, 10, 10)], start + 1, true);
            if replies.as_ref().and_then(|r| r.first()).and_then(granted).is_some() {
                granted_ids.push((i, id));
            }
            let mut state = writer.budget.clone();
            state.sync(&b.limits, start + 1);
            let rpm = state.windows.iter().find(|w| w.name == "rpm").map_or(0, |w| w.spent.requests);
            let held: u64 = state.outstanding.iter().map(|o| o.amount.requests).sum();
            assert!(rpm + held <= 50, "after {n}: {rpm} made and {held} held of 50 a minute");
        }
        assert!(granted_ids.len() <= 50 && granted_ids.len() >= 40, "{} granted", granted_ids.len());
        for (i, id) in granted_ids {
            let spent = Amount { tokens: 15, micros: 20, requests: 1 };
            let settle =
                LedgerOp::Settle { resent: false, budgets: b.clone(), id, amount: spent, scopes: Default::default() };
            writer.ask(&mut desks[i], vec![TenantOp::Budget(settle)], start + 2, true);
        }
        // Each instance's background step sends what its closes left waiting.
        for desk in &mut desks {
            writer.background(desk, start + 2, true);
        }
        // The next minute opens again.
        let next = writer.ask(&mut desks[0], vec![reserve_op(&b, "later", 10, 10)], start + 61, true);
        assert!(next.as_ref().and_then(|r| r.first()).and_then(granted).is_some(), "{next:?}");
    }

    /// A tenant of a million tokens a day, leased, whose users get
    /// `user_tokens` a day each.
    fn scoped_budgets(user_tokens: u64) -> Budgets {
        super::tests_support::users_budgets(Some(LeaseSizing::default()), user_tokens, 100)
    }

    fn scoped_reserve(b: &Budgets, id: &str, key_tokens: u64, user: &str) -> TenantOp {
        use crate::budget::scope::{KeyScope, Scopes};
        let mut op = reserve_op(b, id, 100, 200);
        if let TenantOp::Budget(LedgerOp::Reserve { request, .. }) = &mut op {
            let limit = BudgetLimit {
                name: "key-day".into(),
                window: Window::Day,
                tokens: Some(key_tokens),
                usd_micros: None,
                requests: None,
            };
            let key = KeyScope { id: "k1".into(), label: None, limits: vec![limit] };
            request.scopes = Scopes { key: Some(Box::new(key)), user: Some(user.to_owned()) };
        }
        op
    }

    fn scoped_settle(op: &TenantOp, tokens: u64) -> TenantOp {
        let TenantOp::Budget(LedgerOp::Reserve { budgets, request }) = op else { panic!("a reserve") };
        TenantOp::Budget(LedgerOp::Settle {
            resent: false,
            budgets: budgets.clone(),
            id: request.id.clone(),
            amount: Amount { tokens, micros: tokens, requests: 1 },
            scopes: request.scopes.clone(),
        })
    }

    fn spent_at(state: &BudgetState, level: crate::budget::scope::Level, id: &str) -> u64 {
        state.scoped.iter().find(|e| e.level == level && e.id == id).map_or(0, |e| e.windows[0].spent.tokens)
    }

    #[test]
    fn a_key_and_users_repeated_requests_reserve_from_a_lease_carved_at_every_level_and_are_charged_at_each() {
        use crate::budget::scope::Level;
        let b = scoped_budgets(50_000);
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        for n in 0..40 {
            let op = scoped_reserve(&b, &format!("r{n}"), 100_000, "ann");
            let reply = writer.ask(&mut desk, vec![op.clone()], 10, true).unwrap();
            assert!(granted(&reply[0]).is_some(), "request {n}: {reply:?}");
            writer.ask(&mut desk, vec![scoped_settle(&op, 120)], 10, true);
        }
        // The first goes to the writer on its own; the second asks for a
        // lease with it; every later one is answered in memory.
        assert_eq!(writer.batches, 2, "{} batches a request waited for", writer.batches);
        let lease = writer.budget.outstanding.iter().find(|o| budget::lease::is_lease(&o.id)).expect("a lease");
        assert_eq!(lease.scope.key.as_deref(), Some("k1"), "the lease counts at the key");
        assert_eq!(lease.scope.user.as_deref(), Some("ann"), "and at the user");
        // Idle: what was settled is reported and the lease handed back.
        writer.background(&mut desk, 10 + IDLE_AFTER_SECS + 1, true);
        let state = &writer.budget;
        assert!(state.outstanding.is_empty(), "{:?}", state.outstanding);
        assert_eq!(state.windows[0].spent.tokens, 40 * 120);
        assert_eq!(spent_at(state, Level::Key, "k1"), 40 * 120);
        assert_eq!(spent_at(state, Level::User, "ann"), 40 * 120);
    }

    #[test]
    fn a_users_lease_never_lets_it_spend_past_its_limit_and_the_last_refusal_names_the_user() {
        use crate::budget::scope::Level;
        // 3,000 tokens a day for the user; each request may need 300.
        let b = scoped_budgets(3_000);
        let mut desks = [LeaseDesk::new("i1"), LeaseDesk::new("i2")];
        let mut writer = Writer::default();
        let mut spent = 0;
        let mut refusals = Vec::new();
        for n in 0..60 {
            let desk = &mut desks[n % 2];
            let op = scoped_reserve(&b, &format!("r{n}"), 1_000_000, "bo");
            let reply = writer.ask(desk, vec![op.clone()], 10, true).unwrap();
            match &reply[0] {
                TenantReply::Budget(LedgerReply::Granted { .. }) => {
                    spent += 290;
                    writer.ask(desk, vec![scoped_settle(&op, 290)], 10, true);
                }
                TenantReply::Budget(LedgerReply::Refused { error }) => refusals.push(error.clone()),
                other => panic!("{other:?}"),
            }
            assert!(spent <= 3_000, "after {n}: {spent} spent");
        }
        for desk in &mut desks {
            writer.background(desk, 10 + IDLE_AFTER_SECS + 1, true);
        }
        assert_eq!(spent_at(&writer.budget, Level::User, "bo"), spent);
        // 3,000 pays ten 290-token requests once their holds of 300 are settled.
        assert!(spent >= 2_600, "refused with room left: {spent} spent");
        match refusals.last() {
            Some(crate::error::BudgetError::Exceeded { level, .. }) => assert_eq!(*level, Level::User),
            other => panic!("the last refusal: {other:?}"),
        }
    }

    #[test]
    fn a_user_past_the_soft_threshold_is_downgraded_from_its_lease_as_at_the_writer_and_another_user_is_not() {
        let mut b = scoped_budgets(30_000);
        b.soft_threshold = Some(0.8);
        let with_downgrade = |mut op: TenantOp| {
            if let TenantOp::Budget(LedgerOp::Reserve { request, .. }) = &mut op {
                request.downgrade_price = Some(request.price);
            }
            op
        };
        let downgraded = |reply: &TenantReply| match reply {
            TenantReply::Budget(LedgerReply::Granted { granted }) => granted.downgraded,
            other => panic!("{other:?}"),
        };
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        // Ann spends 24,000 of her 30,000: her next request finds 80% used (the tenant is barely touched).
        let mut answers = Vec::new();
        for n in 0..80 {
            let op = with_downgrade(scoped_reserve(&b, &format!("a{n}"), 1_000_000, "ann"));
            let reply = writer.ask(&mut desk, vec![op.clone()], 10, true).unwrap();
            answers.push(downgraded(&reply[0]));
            writer.ask(&mut desk, vec![scoped_settle(&op, 300)], 10, true);
            // The host's background step: reports, and renews the lease.
            writer.background(&mut desk, 10, true);
        }
        assert!(writer.batches <= 12, "{} of 80 waited: ann's requests are leased", writer.batches);
        assert_eq!(answers.iter().filter(|d| **d).count(), 0, "below the threshold: {answers:?}");
        let before = writer.batches;
        let op = with_downgrade(scoped_reserve(&b, "a-late", 1_000_000, "ann"));
        let reply = writer.ask(&mut desk, vec![op], 10, true).unwrap();
        assert!(downgraded(&reply[0]), "past 80% of her limit: {reply:?}");
        assert_eq!(writer.batches, before, "decided from the lease");
        // Bob, on the same key, is not.
        let op = with_downgrade(scoped_reserve(&b, "b1", 1_000_000, "bob"));
        let reply = writer.ask(&mut desk, vec![op], 10, true).unwrap();
        assert!(!downgraded(&reply[0]), "{reply:?}");
        // Once everything has reached the writer, it decides Ann's the same way.
        writer.background(&mut desk, 10 + IDLE_AFTER_SECS + 1, true);
        let TenantOp::Budget(LedgerOp::Reserve { request, .. }) =
            with_downgrade(scoped_reserve(&b, "a-writer", 1_000_000, "ann"))
        else {
            unreachable!()
        };
        assert!(budget::reserve(&mut writer.budget, &b, &request, 20).is_ok_and(|g| g.downgraded));
    }

    #[test]
    fn a_usage_read_sees_the_spend_waiting_in_a_key_and_users_desk() {
        let b = scoped_budgets(50_000);
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        for n in 0..5 {
            let op = scoped_reserve(&b, &format!("r{n}"), 100_000, "ann");
            writer.ask(&mut desk, vec![op.clone()], 10, true).unwrap();
            writer.ask(&mut desk, vec![scoped_settle(&op, 120)], 10, true);
        }
        // A key and user's desk sends to its tenant's writer.
        let due = desk.due(10, false);
        assert!(due.iter().all(|(tenant, _, _)| tenant == "t"), "{:?}", due.iter().map(|d| &d.0).collect::<Vec<_>>());
        for (_, ops, ticket) in due {
            let _ = desk.on_replies(ticket, None, 10);
            drop(ops);
        }
        let status = TenantOp::Budget(LedgerOp::Status { budgets: b.clone(), scopes: Default::default() });
        let replies = writer.ask(&mut desk, vec![status.clone()], 10, true).unwrap();
        let TenantReply::Budget(LedgerReply::Status { limits, .. }) = &replies[0] else { panic!("{replies:?}") };
        assert_eq!(limits[0].spent.tokens, 5 * 120, "{limits:?}");
        // A read whose answer is lost leaves it to go again.
        let op = scoped_reserve(&b, "r5", 100_000, "ann");
        writer.ask(&mut desk, vec![op.clone()], 11, true).unwrap();
        writer.ask(&mut desk, vec![scoped_settle(&op, 120)], 11, true);
        assert!(writer.ask(&mut desk, vec![status.clone()], 11, false).is_none());
        let replies = writer.ask(&mut desk, vec![status], 11, true).unwrap();
        let TenantReply::Budget(LedgerReply::Status { limits, .. }) = &replies[0] else { panic!("{replies:?}") };
        assert_eq!(limits[0].spent.tokens, 6 * 120, "{limits:?}");
    }

    #[test]
    fn a_usage_read_shows_a_key_and_users_requests_in_flight_here_as_reserved_at_every_level_not_leased() {
        use crate::budget::scope::Level;
        let b = scoped_budgets(50_000);
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        let ops: Vec<TenantOp> = (0..4).map(|n| scoped_reserve(&b, &format!("r{n}"), 100_000, "ann")).collect();
        for op in &ops {
            assert!(granted(&writer.ask(&mut desk, vec![op.clone()], 10, true).unwrap()[0]).is_some());
        }
        let held =
            desk.tenants.values().filter_map(|d| d.lease.as_ref()).fold(Amount::default(), |a, l| a.plus(l.held()));
        assert!(held.tokens > 0, "some of ann's requests are in flight in a lease here");
        let TenantOp::Budget(LedgerOp::Reserve { request, .. }) = &ops[0] else { panic!("a reserve") };
        let status = TenantOp::Budget(LedgerOp::Status { budgets: b.clone(), scopes: request.scopes.clone() });
        let replies = writer.ask(&mut desk, vec![status.clone()], 10, true).unwrap();
        let TenantReply::Budget(LedgerReply::Status { limits, scoped }) = &replies[0] else { panic!("{replies:?}") };
        // What the writer alone would say: the lease's part in flight here is `leased` there.
        let (mut state, mut outcomes) = (writer.budget.clone(), writer.outcomes.clone());
        let direct = crate::store::apply(&mut state, &mut outcomes, &[status], 10).0;
        let TenantReply::Budget(LedgerReply::Status { limits: w_limits, scoped: w_scoped }) = &direct[0] else {
            panic!("{direct:?}")
        };
        assert_eq!(limits[0].reserved.tokens, w_limits[0].reserved.tokens + held.tokens, "{limits:?}");
        assert_eq!(limits[0].leased.tokens, w_limits[0].leased.tokens - held.tokens, "{limits:?}");
        for (level, id) in [(Level::Key, "k1"), (Level::User, "ann")] {
            let at = |entries: &[crate::budget::ScopeStatus]| {
                entries.iter().find(|e| e.level == level && e.id == id).map(|e| e.limits[0].clone()).unwrap()
            };
            let (here, there) = (at(scoped), at(w_scoped));
            assert_eq!(here.reserved.tokens, there.reserved.tokens + held.tokens, "{level:?} {here:?}");
            assert_eq!(here.leased.tokens, there.leased.tokens - held.tokens, "{level:?} {here:?}");
        }
    }

    #[test]
    fn a_one_off_users_request_costs_the_writer_no_lease() {
        let b = scoped_budgets(50_000);
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        for n in 0..5 {
            let op = scoped_reserve(&b, &format!("r{n}"), 100_000, &format!("user-{n}"));
            writer.ask(&mut desk, vec![op.clone()], 10 + n * 10, true).unwrap();
            writer.ask(&mut desk, vec![scoped_settle(&op, 120)], 10 + n * 10, true);
            writer.background(&mut desk, 10 + n * 10, true);
        }
        assert!(!writer.budget.outstanding.iter().any(|o| budget::lease::is_lease(&o.id)), "no lease was granted");
        // Their desks are forgotten once idle.
        writer.background(&mut desk, 100, true);
        assert_eq!(desk.tenants.len(), 0, "{:?}", desk.tenants.keys().collect::<Vec<_>>());
    }

    #[test]
    fn a_close_in_a_batch_that_is_never_answered_goes_again_so_a_request_reserved_at_the_writer_is_still_charged() {
        use crate::budget::scope::Level;
        let b = scoped_budgets(50_000);
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        // A one-off user's request reserves at the writer; its close waits for a batch.
        let op = scoped_reserve(&b, "r", 100_000, "once");
        assert!(granted(&writer.ask(&mut desk, vec![op.clone()], 10, true).unwrap()[0]).is_some());
        writer.ask(&mut desk, vec![scoped_settle(&op, 120)], 10, true);
        assert_eq!(spent_at(&writer.budget, Level::User, "once"), 0, "the close waits for a batch");
        // The batch goes out and its answer never comes (the host's task died).
        let lost = desk.due(12, false);
        assert_eq!(lost.len(), 1);
        drop(lost);
        writer.background(&mut desk, 20, true);
        assert_eq!(spent_at(&writer.budget, Level::User, "once"), 0, "still out");
        // Given up: the close goes again, and the writer charges it once.
        writer.background(&mut desk, 12 + LOST_BATCH_SECS, true);
        writer.background(&mut desk, 13 + LOST_BATCH_SECS, true);
        assert_eq!(spent_at(&writer.budget, Level::User, "once"), 120);
        assert_eq!(writer.budget.windows[0].spent.tokens, 120);
        assert!(writer.budget.outstanding.is_empty(), "{:?}", writer.budget.outstanding);
    }

    #[test]
    fn a_close_sent_again_after_its_batch_landed_unanswered_is_charged_once_even_after_the_writer_forgot_its_id() {
        use crate::budget::scope::Level;
        let b = scoped_budgets(50_000);
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        let op = scoped_reserve(&b, "r", 100_000, "once");
        assert!(granted(&writer.ask(&mut desk, vec![op.clone()], 10, true).unwrap()[0]).is_some());
        writer.ask(&mut desk, vec![scoped_settle(&op, 120)], 10, true);
        // The batch lands, and the task that sent it dies before its answer.
        writer.background_lost(&mut desk, 12, true);
        assert_eq!(spent_at(&writer.budget, Level::User, "once"), 120);
        // Many requests settle at the writer meanwhile: it remembers only
        // the most recent settled ids.
        for n in 0..600 {
            let other = reserve_op(&b, &format!("other-{n}"), 1, 1);
            let settle = TenantOp::Budget(LedgerOp::Settle {
                budgets: b.clone(),
                id: format!("other-{n}"),
                amount: Amount { tokens: 1, micros: 1, requests: 1 },
                scopes: Default::default(),
                resent: false,
            });
            crate::store::apply(&mut writer.budget, &mut writer.outcomes, &[other, settle], 13);
        }
        // The batch is given up and its close goes again: charged once.
        let sent = writer.background;
        writer.background(&mut desk, 12 + LOST_BATCH_SECS, true);
        writer.background(&mut desk, 13 + LOST_BATCH_SECS, true);
        assert!(writer.background > sent, "the close went again");
        assert!(desk.tenants.values().all(|d| d.closes_out.is_empty() && d.records.is_empty()), "nothing left to send");
        assert_eq!(spent_at(&writer.budget, Level::User, "once"), 120);
        assert_eq!(writer.budget.windows[0].spent.tokens, 120 + 600);
    }

    #[test]
    fn a_late_answer_to_a_forgotten_desks_batch_never_passes_for_the_answer_to_a_new_desks_batch() {
        use crate::budget::scope::Level;
        let b = scoped_budgets(50_000);
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        let first = scoped_reserve(&b, "r1", 100_000, "once");
        writer.ask(&mut desk, vec![first.clone()], 10, true).unwrap();
        writer.ask(&mut desk, vec![scoped_settle(&first, 120)], 10, true);
        let (_, _, late) = desk.due(12, false).pop().unwrap();
        // Given up, sent again and answered; the desk goes idle and is forgotten.
        writer.background(&mut desk, 12 + LOST_BATCH_SECS, true);
        writer.background(&mut desk, 100, true);
        assert_eq!(desk.tenants.len(), 0);
        // The same user again: a new desk, whose batch is lost too.
        let second = scoped_reserve(&b, "r2", 100_000, "once");
        writer.ask(&mut desk, vec![second.clone()], 101, true).unwrap();
        writer.ask(&mut desk, vec![scoped_settle(&second, 130)], 101, true);
        let lost = desk.due(102, false);
        assert_eq!(lost.len(), 1);
        drop(lost);
        // The first desk's batch is answered at last (unanswered).
        let _ = desk.on_replies(late, None, 103);
        writer.background(&mut desk, 103 + LOST_BATCH_SECS, true);
        writer.background(&mut desk, 104 + LOST_BATCH_SECS, true);
        assert_eq!(spent_at(&writer.budget, Level::User, "once"), 120 + 130);
    }

    #[test]
    fn a_close_sent_again_only_after_its_hold_expired_at_the_writer_is_still_charged() {
        use crate::budget::scope::Level;
        let b = scoped_budgets(50_000);
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        let op = scoped_reserve(&b, "r", 100_000, "once");
        assert!(granted(&writer.ask(&mut desk, vec![op.clone()], 10, true).unwrap()[0]).is_some());
        writer.ask(&mut desk, vec![scoped_settle(&op, 120)], 10, true);
        // The writer cannot be reached for longer than the hold lives.
        writer.background(&mut desk, 12, false);
        writer.background(&mut desk, 12 + RESERVATION_TTL_SECS / 2, false);
        // Another instance's op meets the hold expired first.
        let status = TenantOp::Budget(LedgerOp::Status { budgets: b.clone(), scopes: Default::default() });
        crate::store::apply(&mut writer.budget, &mut writer.outcomes, &[status], 11 + RESERVATION_TTL_SECS);
        assert!(writer.budget.outstanding.is_empty());
        writer.background(&mut desk, 20 + RESERVATION_TTL_SECS, true);
        assert_eq!(spent_at(&writer.budget, Level::User, "once"), 120, "its spend was never charged");
        // Sent again once more, it is not charged twice.
        let again = TenantOp::Budget(LedgerOp::Settle {
            budgets: b.clone(),
            id: "r".into(),
            amount: Amount { tokens: 120, micros: 120, requests: 1 },
            scopes: Default::default(),
            resent: true,
        });
        crate::store::apply(&mut writer.budget, &mut writer.outcomes, &[again], 21 + RESERVATION_TTL_SECS);
        assert_eq!(writer.budget.windows[0].spent.tokens, 120);
    }

    #[test]
    fn a_lost_batchs_close_goes_again_while_the_desk_keeps_sending_other_batches() {
        let b = scoped_budgets(50_000);
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        let first = scoped_reserve(&b, "r0", 100_000, "ann");
        assert!(granted(&writer.ask(&mut desk, vec![first.clone()], 10, true).unwrap()[0]).is_some());
        writer.ask(&mut desk, vec![scoped_settle(&first, 120)], 10, true);
        writer.background_lost(&mut desk, 11, false);
        // Ann keeps sending requests: her desk leases, reports and renews,
        // so batches of its own keep going out and being answered.
        for n in 1..40u64 {
            let now = 11 + n * 2;
            let op = scoped_reserve(&b, &format!("r{n}"), 100_000, "ann");
            writer.ask(&mut desk, vec![op.clone()], now, true);
            writer.ask(&mut desk, vec![scoped_settle(&op, 10)], now, true);
            writer.background(&mut desk, now, true);
        }
        assert!(
            !writer.budget.outstanding.iter().any(|o| o.id == "r0"),
            "r0's close never reached the writer: {:?}",
            writer.budget.outstanding
        );
        assert!(writer.budget.recently_settled.contains(&budget::settled_fingerprint("r0")));
    }

    #[test]
    fn a_request_reserved_at_the_writer_whose_close_never_comes_stops_pinning_its_desk_once_its_hold_has_expired() {
        let b = scoped_budgets(50_000);
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        let op = scoped_reserve(&b, "lost", 100_000, "once");
        assert!(granted(&writer.ask(&mut desk, vec![op], 10, true).unwrap()[0]).is_some());
        // The host never closes it. While the writer may still hold it,
        // the desk keeps it in flight.
        writer.background(&mut desk, 10 + RESERVATION_TTL_SECS - 1, true);
        assert_eq!(desk.tenants.len(), 1, "forgotten while its hold may still be held");
        // Once the writer has let the hold go, the desk does too.
        writer.background(&mut desk, 10 + RESERVATION_TTL_SECS, true);
        assert_eq!(desk.tenants.len(), 0, "{:?}", desk.tenants.keys().collect::<Vec<_>>());
    }

    #[test]
    fn a_user_past_the_cap_is_leased_at_the_shared_entry_and_decided_there() {
        use crate::budget::scope::{Level, OVERFLOW_USER};
        let mut b = scoped_budgets(2_000);
        if let Some(users) = b.users.as_mut() {
            users.max_tracked = 1;
        }
        let mut desk = LeaseDesk::new("i1");
        let mut writer = Writer::default();
        // `first` takes the one tracked place (its request in flight keeps it).
        let first = scoped_reserve(&b, "f", 100_000, "first");
        writer.ask(&mut desk, vec![first.clone()], 10, true).unwrap();
        let mut spent = 0;
        for n in 0..20 {
            let op = scoped_reserve(&b, &format!("r{n}"), 100_000, "late");
            let reply = writer.ask(&mut desk, vec![op.clone()], 10, true).unwrap();
            if granted(&reply[0]).is_some() {
                spent += 250;
                writer.ask(&mut desk, vec![scoped_settle(&op, 250)], 10, true);
            }
        }
        writer.ask(&mut desk, vec![scoped_settle(&first, 0)], 10, true);
        writer.background(&mut desk, 10 + IDLE_AFTER_SECS + 1, true);
        assert!((1_500..=2_000).contains(&spent), "{spent} spent of the shared 2,000");
        assert_eq!(spent_at(&writer.budget, Level::User, OVERFLOW_USER), spent);
        assert_eq!(spent_at(&writer.budget, Level::User, "late"), 0, "never tracked on its own");
    }

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n.max(1)
        }
    }

    fn run_interleaving(seed: u64, lossy: bool, scoped: bool) {
        use crate::budget::scope::{KeyScope, Level, Scopes, UserBudgets};
        use crate::budget::{BudgetLimit, Window};
        let limit_tokens = 40_000 + seed * 977;
        let limit_micros = limit_tokens * 2;
        let sizing = LeaseSizing { share: 4, cap: Amount { tokens: 6_000, micros: 0, requests: 0 }, ttl_seconds: 20 };
        let mut b = budgets(limit_tokens, limit_micros, Some(sizing));
        let (user_limit, key_limit) = (limit_tokens / 20, limit_tokens / 3);
        // One busy user with more of its own (so its requests come often
        // enough, on each instance, to be leased), among occasional ones.
        let busy_limit = limit_tokens / 4;
        let user_limit_of = |id: &str| if id == "u0" { busy_limit } else { user_limit };
        let day = |tokens: u64| BudgetLimit {
            name: "day".into(),
            window: Window::Day,
            tokens: Some(tokens),
            usd_micros: None,
            requests: None,
        };
        if scoped {
            b.users = Some(Box::new(UserBudgets {
                header: None,
                limits: vec![day(user_limit)],
                overrides: [("u0".to_owned(), vec![day(busy_limit)])].into_iter().collect(),
                max_tracked: 3,
            }));
        }
        let key = KeyScope { id: "k1".into(), label: None, limits: vec![day(key_limit)] };
        // Settled spend per (level, id), and what each request was charged at.
        let mut spent_at: BTreeMap<(Level, String), u64> = BTreeMap::new();
        let mut scopes_of: BTreeMap<String, Scopes> = BTreeMap::new();
        let mut rng = Lcg(seed * 7919 + u64::from(lossy));
        let mut writer = Writer::default();
        let mut desks: Vec<LeaseDesk> = (0..4).map(|i| LeaseDesk::new(&format!("i{i}-0"))).collect();
        let mut restarts = 0;
        let mut reserves = 0usize;
        let mut early_waits = 0usize;
        let (mut scoped_granted, mut scoped_waits) = (0usize, 0usize);
        // In flight: (instance, id, held).
        let mut flight: Vec<(usize, String, Amount)> = Vec::new();
        let mut spent = Amount::default();
        let mut now = 1_000u64;
        for step in 0..4_000u64 {
            // (Scoped runs pack their requests closer in time, so that the
            // busy user's come within a lease's idle time on each instance.)
            if rng.next(if scoped { 8 } else { 4 }) == 0 {
                now += 1;
            }
            let reachable = !(lossy && rng.next(8) == 0);
            // Lossy runs also lose some answers of batches that landed.
            writer.lose_answers = lossy && rng.next(12) == 0;
            let i = usize::try_from(rng.next(desks.len() as u64)).unwrap_or(0);
            match rng.next(10) {
                0..=3 => {
                    let id = format!("r{step}");
                    let mut op = reserve_op(&b, &id, 20 + rng.next(200), 50 + rng.next(400));
                    let with_scopes = scoped && rng.next(2) == 0;
                    if let (true, TenantOp::Budget(LedgerOp::Reserve { request, .. })) = (with_scopes, &mut op) {
                        // Mostly the busy user, always with the limited key.
                        let busy = rng.next(10) < 7;
                        request.scopes = Scopes {
                            key: (busy || rng.next(2) == 0).then(|| Box::new(key.clone())),
                            user: Some(if busy { "u0".to_owned() } else { format!("u{}", 1 + rng.next(4)) }),
                        };
                        scopes_of.insert(id.clone(), request.scopes.clone());
                    }
                    let ops = vec![op];
                    let early =
                        !with_scopes && writer.budget.windows.first().is_none_or(|w| w.spent.tokens * 2 < limit_tokens);
                    let before = writer.batches;
                    if let Some(replies) = writer.ask(&mut desks[i], ops, now, reachable)
                        && let Some(held) = replies.first().and_then(granted)
                    {
                        flight.push((i, id, held));
                        if with_scopes {
                            scoped_granted += 1;
                            scoped_waits += writer.batches - before;
                        }
                    }
                    if early && !with_scopes {
                        // While half the budget is left, count how often a reserve waited.
                        reserves += 1;
                        early_waits += writer.batches - before;
                    }
                }
                4..=6 => {
                    if let Some(k) = flight.iter().position(|f| f.0 == i) {
                        let (_, id, held) = flight.swap_remove(k);
                        let actual = Amount {
                            tokens: rng.next(held.tokens + 1),
                            micros: rng.next(held.micros + 1),
                            requests: 0,
                        };
                        spent = spent.plus(actual);
                        let scopes = scopes_of.get(&id).cloned().unwrap_or_default();
                        if let Some(k) = &scopes.key {
                            *spent_at.entry((Level::Key, k.id.clone())).or_default() += actual.tokens;
                        }
                        if let Some(u) = &scopes.user {
                            // Past the cap of 3 tracked users, a user is charged at the shared entry.
                            let at = writer
                                .budget
                                .outstanding
                                .iter()
                                .find(|o| o.id == id)
                                .and_then(|o| o.scope.user.clone())
                                .or_else(|| desks[i].user_charged_for(&id))
                                .unwrap_or_else(|| u.clone());
                            *spent_at.entry((Level::User, at)).or_default() += actual.tokens;
                        }
                        let ops = vec![
                            TenantOp::Budget(LedgerOp::Settle {
                                resent: false,
                                budgets: b.clone(),
                                id: id.clone(),
                                amount: actual,
                                scopes,
                            }),
                            record(&id),
                        ];
                        writer.ask(&mut desks[i], ops, now, reachable);
                    }
                }
                7 => {
                    if let Some(k) = flight.iter().position(|f| f.0 == i) {
                        let (_, id, _) = flight.swap_remove(k);
                        let ops = vec![TenantOp::Budget(LedgerOp::Release { budgets: b.clone(), id })];
                        writer.ask(&mut desks[i], ops, now, reachable);
                    }
                }
                // Lossy runs also lose some background batches with the
                // host task that sent them.
                8 if lossy && rng.next(16) == 0 => writer.background_lost(&mut desks[i], now, rng.next(2) == 0),
                8 => writer.background(&mut desks[i], now, reachable),
                _ => {
                    if rng.next(30) == 0 {
                        // A crash: memory gone; its requests in flight spend
                        // nothing more (their provider calls die with it).
                        restarts += 1;
                        desks[i] = LeaseDesk::new(&format!("i{i}-{restarts}"));
                        flight.retain(|f| f.0 != i);
                    }
                }
            }
            assert!(spent.tokens <= limit_tokens && spent.micros <= limit_micros, "seed {seed}: spent {spent:?}");
            let mut state = writer.budget.clone();
            state.sync(&b.limits, now);
            let committed =
                state.windows[0].spent.plus(state.outstanding.iter().fold(Amount::default(), |a, o| a.plus(o.amount)));
            assert!(
                committed.tokens <= limit_tokens && committed.micros <= limit_micros,
                "seed {seed}: over-committed {committed:?}"
            );
            assert!(state.outstanding.iter().all(|o| o.expires_at > now), "seed {seed}: a hold outlived its expiry");
            for ((level, id), tokens) in &spent_at {
                let limit = if *level == Level::Key { key_limit } else { user_limit_of(id) };
                assert!(*tokens <= limit, "seed {seed}: {level:?} {id} spent {tokens} of {limit}");
            }
            for entry in &state.scoped {
                let limit = if entry.level == Level::Key { key_limit } else { user_limit_of(&entry.id) };
                let held = state
                    .outstanding
                    .iter()
                    .filter(|o| o.scope.holds_at(entry.level, &entry.id))
                    .fold(0, |a, o| a + o.amount.tokens);
                let committed = entry.windows[0].spent.tokens + held;
                assert!(committed <= limit, "seed {seed}: {:?} {} over-committed {committed}", entry.level, entry.id);
            }
            if scoped {
                // At most 3 tracked, the busy user (an override, always
                // tracked on its own) and the shared entry.
                assert!(state.scoped.iter().filter(|e| e.level == Level::User).count() <= 5, "seed {seed}: the cap");
            }
        }
        assert!(
            early_waits * 2 < reserves,
            "seed {seed}: most reserves are answered in memory ({early_waits} of {reserves} waited for the writer)"
        );
        // Requests of a key and user are leased too: here most are near the
        // end of the key's or the user's limits, where a lease is at most a
        // share of what is left, so a good part of them still wait.
        assert!(
            !scoped || scoped_waits * 10 < scoped_granted * 9,
            "seed {seed}: {scoped_waits} of {scoped_granted} granted scoped reserves waited for the writer"
        );
        // Everything in flight ends; every desk flushes and goes idle.
        writer.lose_answers = false;
        for (i, id, _) in std::mem::take(&mut flight) {
            let ops = vec![TenantOp::Budget(LedgerOp::Release { budgets: b.clone(), id })];
            writer.ask(&mut desks[i], ops, now, true);
        }
        for round in 0..4 {
            // (The first waits until batches lost with their task are given up.)
            now += if round == 0 { LOST_BATCH_SECS } else { IDLE_AFTER_SECS + 1 };
            for desk in &mut desks {
                writer.background(desk, now, true);
            }
        }
        let mut state = writer.budget.clone();
        state.sync(&b.limits, now + RESERVATION_TTL_SECS + 1);
        let charged = state.windows[0].spent;
        assert!(
            charged.tokens >= spent.tokens && charged.micros >= spent.micros,
            "seed {seed}: charged {charged:?} < spent {spent:?}"
        );
        if !lossy && restarts == 0 {
            assert_eq!(charged, spent, "seed {seed}: nothing was lost, so the writer charged exactly what was spent");
        }
    }
}

#[cfg(test)]
mod slow_writer {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::tests_support::*;
    use super::*;

    /// One client after another while the writer answers each batch only
    /// after the next request has started (a writer far away): requests
    /// after the first still reserve here.
    #[test]
    fn sequential_requests_against_a_slow_writer_reserve_here() {
        let b = budgets_for_tests();
        let mut desk = LeaseDesk::new("i1");
        let mut writer = WriterState::default();
        let mut out: Vec<(Vec<TenantOp>, Ticket)> = Vec::new();
        let mut waited = 0;
        let now = 100;
        for n in 0..200 {
            // Answers of batches sent before this request arrive now.
            for (ops, ticket) in std::mem::take(&mut out) {
                land(&mut desk, &mut writer, &ops, ticket, now);
            }
            let id = format!("r{n}");
            desk.request_started("t");
            match desk.route("t", vec![reserve_for_tests(&b, &id)], now) {
                Routed::Answered(_) => {}
                Routed::Send { ops, ticket } => {
                    waited += 1;
                    land(&mut desk, &mut writer, &ops, ticket, now);
                }
            }
            desk.request_ended("t");
            let settle = TenantOp::Budget(LedgerOp::Settle {
                resent: false,
                budgets: b.clone(),
                id,
                amount: Amount { tokens: 50, micros: 50, requests: 0 },
                scopes: Default::default(),
            });
            if let Routed::Send { ops, ticket } = desk.route("t", vec![settle], now) {
                out.push((ops, ticket));
            }
            for (_, ops, ticket) in desk.due(now, false) {
                out.push((ops, ticket));
            }
        }
        assert!(waited <= 5, "{waited} of 200 reserves waited for the writer");
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::budget::lease::LeaseSizing;
    use crate::budget::{BudgetLimit, ReserveRequest, Window};
    use crate::outcomes::OutcomeLedger;
    use crate::pricing::ModelPrice;

    /// One daily limit of `tokens` and `micros`, refused when spent.
    pub(crate) fn budgets(tokens: u64, micros: u64, leases: Option<LeaseSizing>) -> Budgets {
        Budgets {
            limits: vec![BudgetLimit {
                name: "day".into(),
                window: Window::Day,
                tokens: Some(tokens),
                usd_micros: Some(micros),
                requests: None,
            }],
            soft_threshold: None,
            on_exhausted: crate::config::OnExhausted::Reject,
            clamp_max_tokens: false,
            default_output_reservation: 1_000,
            store_failure: crate::config::FailureMode::Closed,
            leases,
            users: None,
            alerts: None,
        }
    }

    /// A million tokens a day for the tenant, and `user_tokens` a day for
    /// each of at most `max_tracked` users.
    pub(crate) fn users_budgets(leases: Option<LeaseSizing>, user_tokens: u64, max_tracked: usize) -> Budgets {
        let mut b = budgets(1_000_000, 1_000_000_000, leases);
        b.users = Some(Box::new(crate::budget::scope::UserBudgets {
            header: None,
            limits: vec![BudgetLimit {
                name: "user-day".into(),
                window: Window::Day,
                tokens: Some(user_tokens),
                usd_micros: None,
                requests: None,
            }],
            overrides: Default::default(),
            max_tracked,
        }));
        b
    }

    /// Limits no test exhausts, leased.
    pub(crate) fn budgets_for_tests() -> Budgets {
        budgets(1_000_000_000, 1_000_000_000, Some(LeaseSizing::default()))
    }

    /// A reserve at 1 µ$ per prompt token and 2 per output token.
    pub(crate) fn reserve_op(b: &Budgets, id: &str, prompt: u64, output: u64) -> TenantOp {
        TenantOp::Budget(LedgerOp::Reserve {
            budgets: b.clone(),
            request: ReserveRequest {
                id: id.into(),
                prompt_tokens: prompt,
                output_tokens: output,
                price: ModelPrice { input: 1_000_000, cached_input: 1_000_000, output: 2_000_000 },
                downgrade_price: None,
                extra_micros: 0,
                scopes: Default::default(),
            },
        })
    }

    pub(crate) fn reserve_for_tests(b: &Budgets, id: &str) -> TenantOp {
        reserve_op(b, id, 100, 200)
    }

    /// A tenant's writer: its state, applied the way every host applies it.
    pub(crate) type WriterState = (BudgetState, OutcomeLedger);

    /// The writer applies `ops` and the desk reads the replies.
    pub(crate) fn land(desk: &mut LeaseDesk, writer: &mut WriterState, ops: &[TenantOp], ticket: Ticket, now: u64) {
        let replies = crate::store::apply(&mut writer.0, &mut writer.1, ops, now).0;
        let _ = desk.on_replies(ticket, Some(replies), now);
    }
}

#[cfg(test)]
mod renewals {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::tests_support::*;
    use super::*;

    /// A busy instance renews often; its lease must keep up with its
    /// requests, not shrink to what arrived since the last renewal.
    #[test]
    fn frequent_renewals_keep_a_busy_instances_lease_large_enough() {
        let b = budgets_for_tests();
        let mut desk = LeaseDesk::new("i1");
        let mut writer = WriterState::default();
        let mut waited = 0;
        for n in 0..2_000u64 {
            let now = 100 + n / 50;
            let id = format!("r{n}");
            // Another request in flight throughout: closes wait for batches.
            if n == 0 {
                desk.request_started("t");
            }
            match desk.route("t", vec![reserve_for_tests(&b, &id)], now) {
                Routed::Answered(_) => {}
                Routed::Send { ops, ticket } => {
                    waited += 1;
                    land(&mut desk, &mut writer, &ops, ticket, now);
                }
            }
            let settle = TenantOp::Budget(LedgerOp::Settle {
                resent: false,
                budgets: b.clone(),
                id,
                amount: Amount { tokens: 300, micros: 500, requests: 0 },
                scopes: Default::default(),
            });
            if let Routed::Send { ops, ticket } = desk.route("t", vec![settle], now) {
                land(&mut desk, &mut writer, &ops, ticket, now);
            }
            // The host's tick, several times a request.
            for _ in 0..5 {
                for (_, ops, ticket) in desk.due(now, false) {
                    land(&mut desk, &mut writer, &ops, ticket, now);
                }
            }
        }
        assert!(waited <= 3, "{waited} of 2000 reserves waited for the writer");
    }

    /// The wants of the lease asks in `ops`.
    fn asked(ops: &[TenantOp]) -> Vec<Amount> {
        ops.iter()
            .filter_map(|op| match op {
                TenantOp::Budget(LedgerOp::LeaseGrant { request, .. }) => Some(request.want),
                _ => None,
            })
            .collect()
    }

    /// Renewals come at half-life even when few requests arrived since the
    /// last one: a quiet spell between two bursts must not shrink the lease
    /// to that spell's demand, or the next burst waits for the writer.
    #[test]
    fn a_renewal_after_a_quiet_spell_asks_for_at_least_half_the_last_ask() {
        let b = budgets_for_tests();
        let mut desk = LeaseDesk::new("i1");
        let mut writer = WriterState::default();
        let mut wants = Vec::new();
        let mut now = 100;
        desk.request_started("t");
        let serve = |desk: &mut LeaseDesk, writer: &mut WriterState, wants: &mut Vec<Amount>, id: &str, now| {
            let settle = TenantOp::Budget(LedgerOp::Settle {
                resent: false,
                budgets: b.clone(),
                id: id.to_owned(),
                amount: Amount { tokens: 300, micros: 500, requests: 0 },
                scopes: Default::default(),
            });
            for ops in [vec![reserve_for_tests(&b, id)], vec![settle]] {
                if let Routed::Send { ops, ticket } = desk.route("t", ops, now) {
                    wants.extend(asked(&ops));
                    land(desk, writer, &ops, ticket, now);
                }
            }
            for (_, ops, ticket) in desk.due(now, false) {
                wants.extend(asked(&ops));
                land(desk, writer, &ops, ticket, now);
            }
        };
        // A burst: 400 requests in 4 seconds.
        for n in 0..400u64 {
            now = 100 + n / 100;
            serve(&mut desk, &mut writer, &mut wants, &format!("burst{n}"), now);
        }
        let asks = wants.len();
        assert!(asks > 0, "the burst asked for a lease");
        // Then one request a second for a minute: the lease renews at
        // half-life, each time on the few requests since the last renewal.
        for n in 0..60u64 {
            now += 1;
            serve(&mut desk, &mut writer, &mut wants, &format!("quiet{n}"), now);
        }
        assert!(wants.len() >= asks + 3, "the lease kept being renewed: {wants:?}");
        for pair in wants[asks - 1..].windows(2) {
            let (before, after) = (pair[0], pair[1]);
            assert!(
                after.tokens >= before.tokens / 2 && after.micros >= before.micros / 2,
                "after asking for {before:?}, a renewal in a quiet spell asked for only {after:?}: {wants:?}"
            );
        }
    }
}
