//! Cluster-wide budgets (and optionally the cache) in Redis, reached over
//! HTTP through webdis with `dispatch_http_call`.
//!
//! Why webdis: proxy-wasm filters can only make HTTP and gRPC calls out, and
//! Redis speaks neither; webdis is a small, packaged (Debian) HTTP front for
//! Redis. It disables MULTI/EXEC, so atomicity comes from Lua.
//!
//! Budgets stay the core's: Redis never reimplements budget rules. A
//! tenant's budget is a hash `{v: version, data: BudgetState JSON}`. Every
//! reserve, settle or release is one atomic Lua compare-and-set: the filter
//! applies the op with the core to the state it last saw (memoised per VM)
//! and sends the result with the version it started from. Redis writes it
//! only if the version still matches; otherwise it answers with the current
//! state and the filter applies the op again to that. Two Envoys racing
//! therefore serialise on Redis and can never both spend the same headroom;
//! an uncontended op costs one round trip.
//!
//! This module builds the webdis requests and reads the answers; it makes
//! no host call, so it is tested natively.

use std::collections::HashMap;
use tollgate_core::budget::{self, BudgetState, LedgerOp, LedgerReply};
use tollgate_core::outcomes::rollup::Rollup;
use tollgate_core::outcomes::{
    self, OutcomeLedger, OutcomeOp, OutcomeReply, OutcomeTotals, RECENT_CHUNKS, RecentChunk,
};

/// Compare-and-set of a versioned document. KEYS[1] the hash; ARGV[1] the
/// version the new data was computed from ("0" for a hash that does not
/// exist yet), ARGV[2] the new data. Returns `{1, new version}` or
/// `{0, current version, current data}`.
pub const CAS_SCRIPT: &str = "local v = redis.call('HGET', KEYS[1], 'v') or '0' \
if v ~= ARGV[1] then return {0, v, redis.call('HGET', KEYS[1], 'data') or ''} end \
local nv = redis.call('HINCRBY', KEYS[1], 'v', 1) \
redis.call('HSET', KEYS[1], 'data', ARGV[2]) \
return {1, tostring(nv)}";

/// Round trips before a budget op counts as failed (the store is then
/// unavailable, and the tenant's `store_failure` decides).
pub const CAS_ROUNDS: usize = 32;

/// Percent-encode every byte but unreserved letters and digits: webdis
/// splits arguments on `/`, decodes `+` to a space, and reads a trailing
/// `.ext` as an output format, so nothing else may pass through raw.
pub fn encode_arg(arg: &[u8]) -> String {
    let mut out = String::with_capacity(arg.len() * 3);
    for &b in arg {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// A webdis command as the body of `POST /`: `CMD/arg/arg/...`.
pub fn command(name: &str, args: &[&[u8]]) -> Vec<u8> {
    let mut out = name.to_owned();
    for a in args {
        out.push('/');
        out.push_str(&encode_arg(a));
    }
    out.into_bytes()
}

/// webdis answers `{"COMMAND": value}`; a Redis error is `[false, "ERR ..."]`.
pub fn reply_value(command: &str, body: &[u8]) -> Option<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let value = v.get_mut(command)?.take();
    let is_error = value.as_array().is_some_and(|a| a.first() == Some(&serde_json::Value::Bool(false)));
    (!is_error).then_some(value)
}

pub fn budget_key(prefix: &str, tenant: &str) -> String {
    format!("{prefix}budget:{tenant}")
}

pub fn cache_key(prefix: &str, key: &str) -> String {
    format!("{prefix}cache:{key}")
}

/// What a VM last saw of each tenant's budget: version and state.
pub type Memo = HashMap<String, (String, BudgetState)>;

/// The most ops of other requests one compare-and-set carries.
pub const CARRY_LIMIT: usize = 64;

/// One VM's view of its tenants' budgets in Redis: the memoised state, and
/// the ops of this VM's requests that are waiting on a compare-and-set.
///
/// Why the waiting ops are shared: every request's update is a
/// compare-and-set of the whole state, so N requests of one tenant racing
/// each other land one per round and the last waits N rounds (200
/// concurrent requests across two Envoys exhausted any sane round limit).
/// Instead every attempt a VM sends carries the ops of all its requests
/// that are still waiting for that tenant; whichever lands applies them all,
/// and the others find their replies here when their own attempt loses.
/// An op applied twice (once carried, once by its own request on a newer
/// version) changes nothing the second time: the core's reserve, settle
/// and release are idempotent per id.
///
/// Except a refusal: a reserve refused where it landed first is not
/// remembered, so a carrier that recomputes on a later version (after
/// other requests freed budget) may grant it. Two things keep such a hold
/// from outliving its request. A request whose own attempt and a carrier
/// both landed takes the replies of the one that landed last (the later
/// version), which is what Redis now holds. And a request that finishes
/// refused while an attempt that grants it a hold is still out (sent, its
/// answer not yet read or never to be read) has its reserve released by id
/// ([`BudgetBoard::take_orphans`]): the release frees the hold if that
/// attempt granted it, and makes any later arrival of it hold nothing.
#[derive(Debug, Default)]
pub struct BudgetBoard {
    pub memo: Memo,
    next_ticket: u64,
    waiting: HashMap<String, Vec<(u64, Vec<LedgerOp>)>>,
    /// Replies a carrier landed, with the version its landing made.
    done: HashMap<u64, (u64, Vec<LedgerReply>)>,
    /// Per waiting ticket: attempts (its own or other requests') that would
    /// newly hold one of its reserves, sent and not yet answered (a failed
    /// call counts on: it may have landed).
    carried_out: HashMap<u64, u32>,
    /// Releases for reserves refused to their requests that an attempt
    /// still out may grant, by tenant: the store queues them
    /// ([`Self::take_orphans`]).
    orphans: Vec<(String, Vec<LedgerOp>)>,
}

impl BudgetBoard {
    fn join(&mut self, tenant: &str, ops: &[LedgerOp]) -> u64 {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.waiting.entry(tenant.to_owned()).or_default().push((ticket, ops.to_vec()));
        ticket
    }

    /// Other requests' waiting ops for `tenant`, oldest first, bounded.
    /// Not carried: a lease grant, which is not idempotent (a grant applied
    /// twice grows the lease twice, and one refused where it landed and
    /// granted by a carrier makes a lease its instance never heard of, to
    /// be charged in full at its expiry). A batch with one sends its own.
    fn others(&self, tenant: &str, ticket: u64) -> Vec<(u64, Vec<LedgerOp>)> {
        let Some(list) = self.waiting.get(tenant) else { return Vec::new() };
        list.iter()
            .filter(|(t, ops)| *t != ticket && !ops.iter().any(|op| matches!(op, LedgerOp::LeaseGrant { .. })))
            .take(CARRY_LIMIT)
            .cloned()
            .collect()
    }

    /// Replies for carried ops that landed (making `version`): their
    /// requests pick them up. A request whose ops an earlier landing
    /// already answered, and which has not read that answer yet, takes the
    /// later one: it is what Redis now holds (a reserve refused there may
    /// be granted here).
    fn publish(&mut self, tenant: &str, version: u64, landed: Vec<(u64, Vec<LedgerReply>)>) {
        for (ticket, replies) in landed {
            if self.is_waiting(tenant, ticket) {
                self.remove_waiting(tenant, ticket);
                self.done.insert(ticket, (version, replies));
            } else if let Some(earlier) = self.done.get_mut(&ticket)
                && earlier.0 < version
            {
                *earlier = (version, replies);
            }
        }
    }

    /// An attempt granting reserves of `tickets` was sent.
    fn carried_sent(&mut self, tickets: &[u64]) {
        for ticket in tickets {
            *self.carried_out.entry(*ticket).or_default() += 1;
        }
    }

    /// The answer to an attempt granting reserves of `tickets` was read:
    /// it landed or lost, either way it is no longer out.
    fn carried_read(&mut self, tickets: &[u64]) {
        for ticket in tickets {
            if let Some(n) = self.carried_out.get_mut(ticket) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// A request finished with `replies` to its `ops`: when an attempt
    /// still out may grant it a hold, each of its refused reserves is
    /// released by id (see the type's doc); then it leaves.
    fn finish(&mut self, tenant: &str, ticket: u64, ops: &[LedgerOp], replies: &[LedgerReply]) {
        if self.carried_out.get(&ticket).is_some_and(|n| *n > 0) {
            let releases: Vec<LedgerOp> = ops
                .iter()
                .zip(replies)
                .filter_map(|(op, reply)| match (op, reply) {
                    (LedgerOp::Reserve { budgets, request }, LedgerReply::Refused { .. }) => {
                        Some(LedgerOp::Release { budgets: budgets.clone(), id: request.id.clone() })
                    }
                    _ => None,
                })
                .collect();
            if !releases.is_empty() {
                self.orphans.push((tenant.to_owned(), releases));
            }
        }
        self.leave(tenant, ticket);
    }

    /// Releases to send, by tenant (see [`BudgetBoard`]).
    pub fn take_orphans(&mut self) -> Vec<(String, Vec<LedgerOp>)> {
        std::mem::take(&mut self.orphans)
    }

    fn is_waiting(&self, tenant: &str, ticket: u64) -> bool {
        self.waiting.get(tenant).is_some_and(|l| l.iter().any(|(t, _)| *t == ticket))
    }

    fn remove_waiting(&mut self, tenant: &str, ticket: u64) {
        if let Some(list) = self.waiting.get_mut(tenant) {
            list.retain(|(t, _)| *t != ticket);
            if list.is_empty() {
                self.waiting.remove(tenant);
            }
        }
    }

    fn take_done(&mut self, ticket: u64) -> Option<(u64, Vec<LedgerReply>)> {
        self.done.remove(&ticket)
    }

    /// A request that stops waiting (answered, failed, or gone) leaves.
    pub fn leave(&mut self, tenant: &str, ticket: u64) {
        self.remove_waiting(tenant, ticket);
        self.done.remove(&ticket);
        self.carried_out.remove(&ticket);
    }

    /// Requests waiting, or with replies not yet picked up.
    #[cfg(test)]
    fn waiting_count(&self) -> usize {
        self.waiting.values().map(Vec::len).sum::<usize>() + self.done.len()
    }

    /// Nothing left of any request: the board's maps are bounded by the
    /// requests in flight.
    #[cfg(test)]
    fn is_clear(&self) -> bool {
        self.waiting.is_empty() && self.done.is_empty() && self.carried_out.is_empty() && self.orphans.is_empty()
    }
}

/// What the last attempt sent: the state it wrote, its own replies, and the
/// carried ops' replies by ticket.
/// The last item: the tickets (this one's own included) whose reserves it
/// newly holds.
type Sent = (BudgetState, Vec<LedgerReply>, Vec<(u64, Vec<LedgerReply>)>, Vec<u64>);

/// One budget update in flight: ops to apply, and what the last attempt sent.
#[derive(Clone, Debug)]
pub struct BudgetCas {
    pub tenant: String,
    pub ops: Vec<LedgerOp>,
    pub now: u64,
    rounds: usize,
    ticket: Option<u64>,
    /// (Boxed: a whole budget state, held only while an attempt is out.)
    sent: Option<Box<Sent>>,
}

/// The id a reserve holds under (None: not a reserve).
fn reserve_id(op: &LedgerOp) -> Option<&str> {
    match op {
        LedgerOp::Reserve { request, .. } => Some(&request.id),
        _ => None,
    }
}

/// What to do after a webdis answer.
#[derive(Clone, Debug, PartialEq)]
pub enum CasStep {
    /// Applied: the replies, one per op.
    Done(Vec<LedgerReply>),
    /// Lost a race (or started from a stale memo): send this next.
    Send(Vec<u8>),
    /// webdis or Redis failed, or too many rounds.
    Failed,
}

impl BudgetCas {
    pub fn new(tenant: &str, ops: Vec<LedgerOp>, now: u64) -> Self {
        BudgetCas { tenant: tenant.to_owned(), ops, now, rounds: 0, ticket: None, sent: None }
    }

    /// The first request, computed from the memoised state; joins the
    /// board so other requests' attempts can carry this one's ops.
    pub fn start(&mut self, prefix: &str, board: &mut BudgetBoard) -> Vec<u8> {
        if let Some(ticket) = self.ticket.take() {
            board.leave(&self.tenant, ticket);
        }
        self.rounds = 0;
        self.ticket = Some(board.join(&self.tenant, &self.ops));
        let (version, state) =
            board.memo.get(&self.tenant).cloned().unwrap_or_else(|| ("0".to_owned(), BudgetState::default()));
        self.attempt(prefix, version, state, board)
    }

    /// Stop waiting (the request went away, or gives up).
    pub fn leave(&mut self, board: &mut BudgetBoard) {
        if let Some(ticket) = self.ticket.take() {
            board.leave(&self.tenant, ticket);
        }
    }

    fn attempt(&mut self, prefix: &str, version: String, mut state: BudgetState, board: &mut BudgetBoard) -> Vec<u8> {
        self.rounds += 1;
        // The tickets whose reserves this attempt newly holds, this one's
        // own included: if it lands unread (a timeout) while the request
        // answers with an earlier refusal, the hold must be released.
        let mut granting = Vec::new();
        let mut apply_all = |state: &mut BudgetState, ticket: Option<u64>, ops: &[LedgerOp]| -> Vec<LedgerReply> {
            let mut replies = Vec::with_capacity(ops.len());
            for op in ops {
                let held =
                    |state: &BudgetState| reserve_id(op).is_some_and(|id| state.outstanding.iter().any(|o| o.id == id));
                let held_before = held(state);
                replies.push(budget::apply(state, op, self.now));
                if let Some(ticket) = ticket
                    && held(state)
                    && !held_before
                    && granting.last() != Some(&ticket)
                {
                    granting.push(ticket);
                }
            }
            replies
        };
        let replies = apply_all(&mut state, self.ticket, &self.ops);
        let mut carried = Vec::new();
        for (ticket, ops) in self.ticket.map(|ticket| board.others(&self.tenant, ticket)).unwrap_or_default() {
            carried.push((ticket, apply_all(&mut state, Some(ticket), &ops)));
        }
        let data = serde_json::to_vec(&state).unwrap_or_default();
        board.carried_sent(&granting);
        self.sent = Some(Box::new((state, replies, carried, granting)));
        let key = budget_key(prefix, &self.tenant);
        command("EVAL", &[CAS_SCRIPT.as_bytes(), b"1", key.as_bytes(), version.as_bytes(), &data])
    }

    /// Read webdis's answer (`None` for a failed call).
    pub fn on_reply(&mut self, prefix: &str, body: Option<&[u8]>, board: &mut BudgetBoard) -> CasStep {
        let step = self.read_reply(prefix, body, board);
        if let CasStep::Done(replies) = &step
            && let Some(ticket) = self.ticket.take()
        {
            board.finish(&self.tenant, ticket, &self.ops, replies);
        }
        step
    }

    fn read_reply(&mut self, prefix: &str, body: Option<&[u8]>, board: &mut BudgetBoard) -> CasStep {
        let items = body.and_then(|b| reply_value("EVAL", b)).and_then(|v| v.as_array().cloned()).unwrap_or_default();
        match (items.first().and_then(serde_json::Value::as_i64), items.get(1).and_then(|v| v.as_str())) {
            (Some(1), Some(version)) => {
                let Some((mut state, replies, carried, granting)) = self.sent.take().map(|s| *s) else {
                    return CasStep::Failed;
                };
                let landed = version.parse::<u64>().unwrap_or(0);
                // Landed: the alerts this update found (its carried ops' too) go out.
                crate::alerts::queue(&self.ops, state.take_alerts());
                board.memo.insert(self.tenant.clone(), (version.to_owned(), state));
                board.carried_read(&granting);
                board.publish(&self.tenant, landed, carried);
                // A carrier landed ours as well: the later landing is what
                // Redis holds (a reserve refused here may be granted there).
                return match self.ticket.and_then(|t| board.take_done(t)) {
                    Some((theirs, their_replies)) if theirs > landed => CasStep::Done(their_replies),
                    _ => CasStep::Done(replies),
                };
            }
            (Some(0), Some(version)) => {
                if let Some((_, _, _, granting)) = self.sent.take().map(|s| *s) {
                    board.carried_read(&granting);
                }
                let data = items.get(2).and_then(|v| v.as_str()).unwrap_or("");
                // Empty (or unreadable, after a format change) starts empty,
                // as the Durable Object does.
                let state: BudgetState = serde_json::from_str(data).unwrap_or_default();
                board.memo.insert(self.tenant.clone(), (version.to_owned(), state.clone()));
                // Another request of this VM may have carried our ops.
                if let Some((_, replies)) = self.ticket.and_then(|t| board.take_done(t)) {
                    return CasStep::Done(replies);
                }
                if self.rounds < CAS_ROUNDS {
                    return CasStep::Send(self.attempt(prefix, version.to_owned(), state, board));
                }
                log::warn!(
                    "tollgate: a budget update for tenant `{}` lost {CAS_ROUNDS} compare-and-set rounds in a row",
                    self.tenant
                );
            }
            _ => {}
        }
        // Failed, but ours may have landed with another request's attempt.
        match self.ticket.and_then(|t| board.take_done(t)) {
            Some((_, replies)) => CasStep::Done(replies),
            None => {
                self.leave(board);
                CasStep::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_encoded_so_webdis_reads_them_back_verbatim() {
        assert_eq!(encode_arg(b"a/b c+d.json%"), "a%2Fb%20c%2Bd%2Ejson%25");
        assert_eq!(command("GET", &[b"k:1"]), b"GET/k%3A1".to_vec());
    }

    #[test]
    fn webdis_errors_and_other_commands_are_not_values() {
        assert_eq!(reply_value("EVAL", br#"{"EVAL":[1,"2"]}"#), Some(serde_json::json!([1, "2"])));
        assert_eq!(reply_value("EVAL", br#"{"EVAL":[false,"ERR boom"]}"#), None);
        assert_eq!(reply_value("GET", br#"{"EVAL":[1,"2"]}"#), None);
        assert_eq!(reply_value("GET", b"<html>"), None);
    }

    fn status_op() -> LedgerOp {
        let budgets = tollgate_core::TenantConfig::example().unwrap().budgets;
        LedgerOp::Status { budgets, scopes: Default::default() }
    }

    #[test]
    fn a_lost_race_retries_on_the_state_redis_returned_and_a_win_updates_the_memo() {
        let mut board = BudgetBoard::default();
        let mut cas = BudgetCas::new("acme", vec![status_op()], 100);
        let first = String::from_utf8(cas.start("tg:", &mut board)).unwrap();
        assert!(first.starts_with("EVAL/") && first.contains("/1/tg%3Abudget%3Aacme/0/"), "{first}");
        let theirs = serde_json::to_string(&BudgetState::default()).unwrap();
        let lost = serde_json::json!({"EVAL": [0, "7", theirs]}).to_string();
        let CasStep::Send(second) = cas.on_reply("tg:", Some(lost.as_bytes()), &mut board) else { panic!("no retry") };
        assert!(String::from_utf8(second).unwrap().contains("/tg%3Abudget%3Aacme/7/"));
        let won = br#"{"EVAL":[1,"8"]}"#;
        assert!(matches!(cas.on_reply("tg:", Some(won), &mut board), CasStep::Done(r) if r.len() == 1));
        assert_eq!(board.memo["acme"].0, "8");
        assert!(board.is_clear(), "a finished request leaves the board: {board:?}");
        assert_eq!(cas.on_reply("tg:", None, &mut board), CasStep::Failed);
    }

    fn reserve_op(id: &str) -> LedgerOp {
        let budgets = tollgate_core::TenantConfig::example().unwrap().budgets;
        let request = budget::ReserveRequest {
            id: id.to_owned(),
            prompt_tokens: 10,
            output_tokens: 10,
            price: tollgate_core::pricing::ModelPrice { input: 1_000_000, cached_input: 500_000, output: 1_000_000 },
            downgrade_price: None,
            extra_micros: 0,
            scopes: Default::default(),
        };
        LedgerOp::Reserve { budgets, request }
    }

    fn held_ids(body: &[u8]) -> Vec<String> {
        // The state is the last argument of `EVAL/<script>/1/<key>/<version>/<data>`.
        let text = String::from_utf8(body.to_vec()).unwrap();
        let data = decode_arg(text.rsplit('/').next().unwrap());
        let state: BudgetState = serde_json::from_str(&data).unwrap();
        state.outstanding.iter().map(|o| o.id.clone()).collect()
    }

    #[test]
    fn an_attempt_that_lands_carries_every_waiting_op_of_the_tenant_and_the_others_pick_up_their_replies() {
        let mut board = BudgetBoard::default();
        let mut a = BudgetCas::new("acme", vec![reserve_op("req_a")], 100);
        let mut b = BudgetCas::new("acme", vec![reserve_op("req_b")], 100);
        let mut other_tenant = BudgetCas::new("zeta", vec![reserve_op("req_z")], 100);
        let _ = a.start("tg:", &mut board);
        let _ = other_tenant.start("tg:", &mut board);
        // b starts after a: its attempt carries a's reserve as well as its own.
        let b_body = b.start("tg:", &mut board);
        assert_eq!(held_ids(&b_body), ["req_b", "req_a"], "b carries a, and nothing of another tenant");
        assert!(matches!(b.on_reply("tg:", Some(br#"{"EVAL":[1,"1"]}"#), &mut board), CasStep::Done(_)));
        // a's own attempt (from version 0) lost; its reserve landed with b's.
        let theirs = serde_json::to_string(&board.memo["acme"].1).unwrap();
        let lost = serde_json::json!({"EVAL": [0, "1", theirs]}).to_string();
        let CasStep::Done(replies) = a.on_reply("tg:", Some(lost.as_bytes()), &mut board) else {
            panic!("a's carried reply was not picked up")
        };
        assert!(
            matches!(replies.as_slice(), [LedgerReply::Granted { granted }] if granted.id == "req_a"),
            "{replies:?}"
        );
        // The other tenant's request still waits for its own answer.
        assert_eq!(board.waiting_count(), 1);
        other_tenant.leave(&mut board);
        assert!(board.is_clear(), "{board:?}");
    }

    /// Redis's side of the budget compare-and-set: (version, state JSON).
    fn eval(redis: &mut (u64, String), body: &[u8]) -> Vec<u8> {
        let text = String::from_utf8(body.to_vec()).unwrap();
        let args: Vec<String> = text.split('/').map(decode_arg).collect();
        let (version, data) = (&args[4], &args[5]);
        if version.parse::<u64>().unwrap() != redis.0 {
            return serde_json::json!({"EVAL": [0, redis.0.to_string(), redis.1]}).to_string().into_bytes();
        }
        redis.0 += 1;
        redis.1.clone_from(data);
        serde_json::json!({"EVAL": [1, redis.0.to_string()]}).to_string().into_bytes()
    }

    /// A webdis argument as [`encode_arg`] wrote it, decoded.
    pub(super) fn decode_arg(arg: &str) -> String {
        let raw = arg.as_bytes();
        let mut bytes = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'%' {
                bytes.push(u8::from_str_radix(&arg[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                bytes.push(raw[i]);
                i += 1;
            }
        }
        String::from_utf8(bytes).unwrap()
    }

    /// A board whose tenant holds all but 10 of its daily 2,000,000
    /// tokens under `req_big`; Redis's side as (version, state).
    fn nearly_exhausted() -> (BudgetBoard, (u64, String)) {
        let mut redis = (0u64, String::new());
        let mut board = BudgetBoard::default();
        let mut big = reserve_op("req_big");
        if let LedgerOp::Reserve { request, .. } = &mut big {
            request.output_tokens = 1_999_980;
        }
        let mut h = BudgetCas::new("acme", vec![big], 100);
        let body = h.start("tg:", &mut board);
        let landed = eval(&mut redis, &body);
        assert!(matches!(h.on_reply("tg:", Some(&landed), &mut board), CasStep::Done(_)));
        (board, redis)
    }

    fn release_op(id: &str) -> LedgerOp {
        let budgets = tollgate_core::TenantConfig::example().unwrap().budgets;
        LedgerOp::Release { budgets, id: id.into() }
    }

    fn is_refused(step: &CasStep) -> bool {
        matches!(step, CasStep::Done(replies) if matches!(replies.as_slice(), [LedgerReply::Refused { .. }]))
    }

    fn is_granted(step: &CasStep) -> bool {
        matches!(step, CasStep::Done(replies) if matches!(replies.as_slice(), [LedgerReply::Granted { .. }]))
    }

    fn held_in(redis: &(u64, String)) -> Vec<String> {
        let state: BudgetState = serde_json::from_str(&redis.1).unwrap();
        state.outstanding.iter().map(|o| o.id.clone()).collect()
    }

    /// r (a reserve refused while the big hold is out) and s (the release
    /// of that hold) start on one version, so s's attempt carries r. Redis
    /// runs r's attempt first (it lands: r refused), then s's (lost); the
    /// VM reads s's loss first, and s tries again on the new version, still
    /// carrying r, which the release now lets through. Returns r, r's landed
    /// answer (not read yet), s, and s's second attempt.
    fn refused_then_carried(
        board: &mut BudgetBoard,
        redis: &mut (u64, String),
    ) -> (BudgetCas, Vec<u8>, BudgetCas, Vec<u8>) {
        let mut r = BudgetCas::new("acme", vec![reserve_op("req_r")], 100);
        let mut s = BudgetCas::new("acme", vec![release_op("req_big")], 100);
        let r_body = r.start("tg:", board);
        let s_body = s.start("tg:", board);
        assert_eq!(held_ids(&s_body), ["req_r"], "s carries r on the same version");
        let r_landed = eval(redis, &r_body);
        let s_lost = eval(redis, &s_body);
        let s_step = s.on_reply("tg:", Some(&s_lost), board);
        let CasStep::Send(s_again) = s_step else { panic!("s should try again: {s_step:?}") };
        assert_eq!(held_ids(&s_again), ["req_r"], "the release lets r through on version 2");
        (r, r_landed, s, s_again)
    }

    // The stuck Redis hold of the two-Envoy races: a carrier recomputing on
    // a later version carries a reserve whose own attempt already landed as
    // a refusal, and grants it after the request answered 429.
    #[test]
    fn a_reserve_refused_by_its_own_landing_and_then_granted_by_a_carrier_is_released() {
        let (mut board, mut redis) = nearly_exhausted();
        let (mut r, r_landed, mut s, s_again) = refused_then_carried(&mut board, &mut redis);
        let r_step = r.on_reply("tg:", Some(&r_landed), &mut board);
        assert!(is_refused(&r_step), "{r_step:?}");
        // s's second attempt lands, with r's hold in it; r answered 429.
        let s_landed = eval(&mut redis, &s_again);
        assert!(matches!(s.on_reply("tg:", Some(&s_landed), &mut board), CasStep::Done(_)));
        assert_eq!(held_in(&redis), ["req_r"]);
        // The board asks for r's reserve to be released; the store sends it.
        let orphans = board.take_orphans();
        assert_eq!(orphans.len(), 1, "{orphans:?}");
        let (tenant, releases) = orphans.into_iter().next().unwrap();
        let mut job = BudgetCas::new(&tenant, releases, 101);
        let mut body = job.start("tg:", &mut board);
        loop {
            let answer = eval(&mut redis, &body);
            match job.on_reply("tg:", Some(&answer), &mut board) {
                CasStep::Send(next) => body = next,
                CasStep::Done(_) => break,
                CasStep::Failed => panic!("the release failed"),
            }
        }
        assert!(held_in(&redis).is_empty(), "a request answered 429 holds budget: {:?}", held_in(&redis));
        assert!(board.is_clear(), "{board:?}");
        assert!(board.take_orphans().is_empty());
    }

    #[test]
    fn a_request_whose_own_attempt_and_a_carrier_both_landed_takes_the_later_landing_replies() {
        let (mut board, mut redis) = nearly_exhausted();
        let (mut r, r_landed, mut s, s_again) = refused_then_carried(&mut board, &mut redis);
        // This time s's second landing is read before r's first: r's reply
        // waits on the board, and r then reads its own (older) refusal.
        let s_landed = eval(&mut redis, &s_again);
        assert!(matches!(s.on_reply("tg:", Some(&s_landed), &mut board), CasStep::Done(_)));
        let r_step = r.on_reply("tg:", Some(&r_landed), &mut board);
        assert!(is_granted(&r_step), "r must take the grant Redis holds for it: {r_step:?}");
        assert_eq!(held_in(&redis), ["req_r"], "r's hold is r's, to settle");
        assert!(board.take_orphans().is_empty(), "nothing to release: r holds what it was granted");
        assert!(board.is_clear(), "{board:?}");
    }

    /// Another VM's op lands in Redis directly.
    fn other_vm_applies(redis: &mut (u64, String), op: &LedgerOp) {
        let mut state: BudgetState = serde_json::from_str(&redis.1).unwrap();
        let _ = budget::apply(&mut state, op, 100);
        redis.0 += 1;
        redis.1 = serde_json::to_string(&state).unwrap();
    }

    #[test]
    fn a_request_answered_by_two_carriers_takes_the_later_one_even_after_the_first_was_published() {
        let (mut board, mut redis) = nearly_exhausted();
        // x asks for 20 tokens; c is any other op of the tenant (it carries
        // x and refuses it); s gives the big hold back (it carries x and
        // grants it). All three start on version 1.
        let mut x = BudgetCas::new("acme", vec![reserve_op("req_x")], 100);
        let mut c = BudgetCas::new("acme", vec![status_op()], 100);
        let mut s = BudgetCas::new("acme", vec![release_op("req_big")], 100);
        let x_body = x.start("tg:", &mut board);
        let c_body = c.start("tg:", &mut board);
        let s_body = s.start("tg:", &mut board);
        // Redis lands c's attempt (x refused), then x's and s's lose.
        let c_landed = eval(&mut redis, &c_body);
        let x_lost = eval(&mut redis, &x_body);
        let s_lost = eval(&mut redis, &s_body);
        // s reads its loss first and tries again, carrying x (its refusal
        // in c's landing is not read yet), which the release lets through.
        let CasStep::Send(s_again) = s.on_reply("tg:", Some(&s_lost), &mut board) else { panic!("s should retry") };
        assert!(held_ids(&s_again).contains(&"req_x".to_owned()));
        // c's landing is read: x's refusal waits on the board for x.
        assert!(matches!(c.on_reply("tg:", Some(&c_landed), &mut board), CasStep::Done(_)));
        // s's retry lands, holding x; then x reads its own loss.
        let s_landed = eval(&mut redis, &s_again);
        assert!(matches!(s.on_reply("tg:", Some(&s_landed), &mut board), CasStep::Done(_)));
        let x_step = x.on_reply("tg:", Some(&x_lost), &mut board);
        assert!(is_granted(&x_step), "x must take the later landing, which holds budget for it: {x_step:?}");
        assert_eq!(held_in(&redis), ["req_x"]);
        assert!(board.take_orphans().is_empty());
        assert!(board.is_clear(), "{board:?}");
    }

    #[test]
    fn a_refused_request_whose_own_granting_attempt_timed_out_has_its_reserve_released() {
        let (mut board, mut redis) = nearly_exhausted();
        let mut x = BudgetCas::new("acme", vec![reserve_op("req_x")], 100);
        let mut c = BudgetCas::new("acme", vec![status_op()], 100);
        let x_body = x.start("tg:", &mut board);
        let c_body = c.start("tg:", &mut board);
        // c lands, refusing x; another VM then gives the big hold back.
        let c_landed = eval(&mut redis, &c_body);
        other_vm_applies(&mut redis, &release_op("req_big"));
        // x's attempt lost: x tries again on the freed state and holds.
        let x_lost = eval(&mut redis, &x_body);
        let CasStep::Send(x_again) = x.on_reply("tg:", Some(&x_lost), &mut board) else { panic!("x should retry") };
        let _ = eval(&mut redis, &x_again);
        assert_eq!(held_in(&redis), ["req_x"], "x's second attempt landed");
        // ...but webdis timed out on it. c's landing is read, then x's failure:
        // x answers with c's refusal, so its hold must be released.
        assert!(matches!(c.on_reply("tg:", Some(&c_landed), &mut board), CasStep::Done(_)));
        assert!(is_refused(&x.on_reply("tg:", None, &mut board)));
        let orphans = board.take_orphans();
        assert!(
            matches!(orphans.as_slice(), [(t, ops)] if t == "acme"
                && matches!(ops.as_slice(), [LedgerOp::Release { id, .. }] if id == "req_x")),
            "{orphans:?}"
        );
        other_vm_applies(&mut redis, &orphans[0].1[0]);
        assert!(held_in(&redis).is_empty());
        assert!(board.is_clear(), "{board:?}");
    }

    #[test]
    fn a_lease_grant_is_not_carried_by_another_requests_attempt() {
        let budgets = tollgate_core::TenantConfig::example().unwrap().budgets;
        let grant = LedgerOp::LeaseGrant {
            budgets,
            sizing: tollgate_core::budget::lease::LeaseSizing::default(),
            request: tollgate_core::budget::lease::LeaseRequest {
                id: "vm1-1".into(),
                want: budget::Amount { tokens: 1_000, micros: 1_000, requests: 0 },
                need: budget::Amount::default(),
                unit: budget::Amount::default(),
                have: None,
                scopes: Default::default(),
            },
        };
        let mut board = BudgetBoard::default();
        let mut desk_batch = BudgetCas::new("acme", vec![grant], 100);
        let mut request = BudgetCas::new("acme", vec![reserve_op("req_a")], 100);
        let own = desk_batch.start("tg:", &mut board);
        assert_eq!(held_ids(&own).len(), 1, "the batch's own attempt holds its lease: {:?}", held_ids(&own));
        let body = request.start("tg:", &mut board);
        assert_eq!(held_ids(&body), ["req_a"], "the request's attempt holds no lease");
        desk_batch.leave(&mut board);
        request.leave(&mut board);
        assert!(board.is_clear(), "{board:?}");
    }

    #[test]
    fn a_refusal_with_no_carrier_out_releases_nothing() {
        let (mut board, mut redis) = nearly_exhausted();
        let mut r = BudgetCas::new("acme", vec![reserve_op("req_r")], 100);
        let body = r.start("tg:", &mut board);
        let landed = eval(&mut redis, &body);
        assert!(is_refused(&r.on_reply("tg:", Some(&landed), &mut board)));
        assert!(board.take_orphans().is_empty(), "a plain 429 costs no extra write");
    }

    #[test]
    fn a_failed_call_still_answers_an_op_that_landed_with_another_request() {
        let mut board = BudgetBoard::default();
        let mut a = BudgetCas::new("acme", vec![reserve_op("req_a")], 100);
        let mut b = BudgetCas::new("acme", vec![reserve_op("req_b")], 100);
        let _ = a.start("tg:", &mut board);
        let _ = b.start("tg:", &mut board);
        assert!(matches!(b.on_reply("tg:", Some(br#"{"EVAL":[1,"1"]}"#), &mut board), CasStep::Done(_)));
        assert!(matches!(a.on_reply("tg:", None, &mut board), CasStep::Done(r) if r.len() == 1));
        assert!(board.is_clear(), "{board:?}");
    }
}

/// Compare-and-set of several fields of a versioned hash. KEYS[1] the hash;
/// ARGV[1] the version the new fields were computed from; then field,
/// value pairs. Returns `{1, new version}` or `{0, current version}`.
pub const CAS_FIELDS_SCRIPT: &str = "local v = redis.call('HGET', KEYS[1], 'v') or '0' \
if v ~= ARGV[1] then return {0, v} end \
local nv = redis.call('HINCRBY', KEYS[1], 'v', 1) \
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end \
return {1, tostring(nv)}";

pub fn outcomes_key(prefix: &str, tenant: &str) -> String {
    format!("{prefix}outcomes:{tenant}")
}

fn chunk_field(c: usize) -> String {
    format!("chunk:{c}")
}

fn rollup_field(slot: usize) -> String {
    format!("rollup:{slot}")
}

/// One outcome-ledger op (record, feedback, report) against a tenant's
/// ledger in Redis: the hash `{v, totals, chunk:<n>, rollup:<slot>}` laid out like the
/// node-local one. Reads what the op needs with HMGET, applies it with the
/// core, and writes what changed with one compare-and-set; a lost race
/// reads again (a repeated record is counted once by the core).
#[derive(Clone, Debug)]
pub struct OutcomeCas {
    pub tenant: String,
    /// One op, or a run of records (a lease desk's batch), applied together.
    pub ops: Vec<OutcomeOp>,
    pub now: u64,
    rounds: usize,
    stage: OutcomeStage,
}

#[derive(Clone, Debug)]
enum OutcomeStage {
    /// Reading the totals (to learn which chunks records land in).
    Totals,
    /// Reading the totals and these chunks, to apply the ops.
    Fields(Vec<usize>),
    /// Wrote with this version; the replies are ready once it lands.
    Writing(Vec<OutcomeReply>),
}

/// What to do after a webdis answer to outcome ops.
#[derive(Clone, Debug, PartialEq)]
pub enum OutcomeStep {
    /// Applied: one reply per op.
    Done(Vec<OutcomeReply>),
    Send(Vec<u8>),
    Failed,
}

impl OutcomeCas {
    pub fn new(tenant: &str, op: OutcomeOp, now: u64) -> Self {
        Self::run(tenant, vec![op], now)
    }

    /// `ops`: one op, or records only (they are written with one
    /// compare-and-set: the totals once, and each chunk their slots fall in).
    pub fn run(tenant: &str, ops: Vec<OutcomeOp>, now: u64) -> Self {
        let stage = match ops.first() {
            // A record's chunk depends on the totals: read those first.
            Some(OutcomeOp::Record { .. }) | None => OutcomeStage::Totals,
            Some(other) => OutcomeStage::Fields(other.chunks_read(&OutcomeTotals::default())),
        };
        OutcomeCas { tenant: tenant.to_owned(), ops, now, rounds: 0, stage }
    }

    pub fn start(&mut self, prefix: &str) -> Vec<u8> {
        self.rounds += 1;
        self.read(prefix)
    }

    /// The chunks the ops read, given the totals: for records, those the
    /// next slots fall in (a record of an id already kept takes no slot, so
    /// this may read one more than needed).
    fn chunks_for(&self, totals: &OutcomeTotals) -> Vec<usize> {
        match self.ops.first() {
            Some(OutcomeOp::Record { .. }) => {
                let mut chunks: Vec<usize> = (0..self.ops.len().min(outcomes::RECENT_CAPACITY))
                    .map(|k| (totals.next_slot + k) % outcomes::RECENT_CAPACITY / outcomes::RECENT_CHUNK)
                    .collect();
                chunks.sort_unstable();
                chunks.dedup();
                chunks
            }
            Some(other) => other.chunks_read(totals),
            None => Vec::new(),
        }
    }

    /// The rollup slots the ops read (a run of records shares one `now`).
    fn rollups_read(&self) -> Vec<usize> {
        self.ops.first().map(|op| op.rollups_read(self.now)).unwrap_or_default()
    }

    fn read(&self, prefix: &str) -> Vec<u8> {
        let key = outcomes_key(prefix, &self.tenant);
        let mut fields: Vec<String> = vec!["v".into(), "totals".into()];
        if let OutcomeStage::Fields(chunks) = &self.stage {
            fields.extend(chunks.iter().map(|c| chunk_field(*c)));
            fields.extend(self.rollups_read().into_iter().map(rollup_field));
        }
        let mut args: Vec<&[u8]> = vec![key.as_bytes()];
        args.extend(fields.iter().map(|f| f.as_bytes()));
        command("HMGET", &args)
    }

    pub fn on_reply(&mut self, prefix: &str, body: Option<&[u8]>) -> OutcomeStep {
        let stage = std::mem::replace(&mut self.stage, OutcomeStage::Totals);
        match stage {
            OutcomeStage::Writing(replies) => {
                let Some(value) = body.and_then(|b| reply_value("EVAL", b)) else { return OutcomeStep::Failed };
                match value.as_array().and_then(|a| a.first()).and_then(serde_json::Value::as_i64) {
                    Some(1) => OutcomeStep::Done(replies),
                    Some(0) if self.rounds < CAS_ROUNDS => {
                        let rounds = self.rounds + 1;
                        *self = OutcomeCas::run(&self.tenant, self.ops.clone(), self.now);
                        self.rounds = rounds;
                        OutcomeStep::Send(self.read(prefix))
                    }
                    _ => OutcomeStep::Failed,
                }
            }
            OutcomeStage::Totals => {
                let Some(values) = hmget_values(body) else { return OutcomeStep::Failed };
                let totals: OutcomeTotals = parse_field(values.get(1));
                self.stage = OutcomeStage::Fields(self.chunks_for(&totals));
                OutcomeStep::Send(self.read(prefix))
            }
            OutcomeStage::Fields(wanted) => {
                let Some(values) = hmget_values(body) else { return OutcomeStep::Failed };
                let version = values.first().and_then(|v| v.as_str()).unwrap_or("0").to_owned();
                let totals: OutcomeTotals = parse_field(values.get(1));
                if let Some(OutcomeOp::Record { .. }) = self.ops.first() {
                    // The ring moved on since the totals were read: read the right chunks.
                    let chunks = self.chunks_for(&totals);
                    if wanted != chunks {
                        self.stage = OutcomeStage::Fields(chunks);
                        return OutcomeStep::Send(self.read(prefix));
                    }
                }
                let mut chunks = vec![None; RECENT_CHUNKS];
                for (i, c) in wanted.iter().enumerate() {
                    chunks[*c] = Some(parse_field::<RecentChunk>(values.get(2 + i)));
                }
                let rollup_slots = self.rollups_read();
                let rollups: Vec<(usize, Rollup)> = rollup_slots
                    .iter()
                    .enumerate()
                    .map(|(i, slot)| (*slot, parse_field::<Rollup>(values.get(2 + wanted.len() + i))))
                    .collect();
                let mut ledger = OutcomeLedger::from_parts(totals, chunks).with_rollups(rollups.iter().cloned());
                let mut replies = Vec::with_capacity(self.ops.len());
                let mut touched_chunks: Vec<usize> = Vec::new();
                let mut touched_totals = false;
                for op in &self.ops {
                    let (reply, touched) = outcomes::apply(&mut ledger, op, self.now);
                    replies.push(reply);
                    touched_totals |= touched.totals;
                    if let Some(c) = touched.chunk.filter(|c| !touched_chunks.contains(c)) {
                        touched_chunks.push(c);
                    }
                }
                let mut writes: Vec<(String, Vec<u8>)> = Vec::new();
                for c in touched_chunks {
                    writes.push((chunk_field(c), serde_json::to_vec(&ledger.chunk(c)).unwrap_or_default()));
                }
                if touched_totals {
                    writes.push(("totals".into(), serde_json::to_vec(&ledger.totals).unwrap_or_default()));
                }
                for (slot, read) in &rollups {
                    let now = ledger.rollup(*slot);
                    if now != *read {
                        writes.push((rollup_field(*slot), serde_json::to_vec(&now).unwrap_or_default()));
                    }
                }
                if writes.is_empty() {
                    return OutcomeStep::Done(replies);
                }
                let key = outcomes_key(prefix, &self.tenant);
                let mut args: Vec<&[u8]> = vec![CAS_FIELDS_SCRIPT.as_bytes(), b"1", key.as_bytes(), version.as_bytes()];
                for (field, value) in &writes {
                    args.push(field.as_bytes());
                    args.push(value);
                }
                let body = command("EVAL", &args);
                self.stage = OutcomeStage::Writing(replies);
                OutcomeStep::Send(body)
            }
        }
    }
}

fn hmget_values(body: Option<&[u8]>) -> Option<Vec<serde_json::Value>> {
    body.and_then(|b| reply_value("HMGET", b)).and_then(|v| v.as_array().cloned())
}

/// A stored field, or empty when absent or unreadable (as the node-local
/// ledger and the Durable Object treat them).
fn parse_field<T: serde::de::DeserializeOwned + Default>(value: Option<&serde_json::Value>) -> T {
    value.and_then(|v| v.as_str()).and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default()
}

#[cfg(test)]
mod outcome_tests {
    use super::*;
    use std::collections::HashMap;
    use tollgate_core::outcomes::RequestOutcome;

    /// Redis behind webdis, for these two commands and the two scripts.
    #[derive(Default)]
    struct FakeRedis(HashMap<String, String>);

    impl FakeRedis {
        fn call(&mut self, body: &[u8]) -> Vec<u8> {
            let text = String::from_utf8(body.to_vec()).unwrap();
            let parts: Vec<String> = text.split('/').map(super::tests::decode_arg).collect();
            match parts[0].as_str() {
                "HMGET" => {
                    let values: Vec<serde_json::Value> = parts[2..]
                        .iter()
                        .map(|f| self.0.get(f).map_or(serde_json::Value::Null, |v| serde_json::Value::from(v.clone())))
                        .collect();
                    serde_json::json!({ "HMGET": values }).to_string().into_bytes()
                }
                "EVAL" => {
                    let v = self.0.get("v").cloned().unwrap_or_else(|| "0".into());
                    if v != parts[4] {
                        return serde_json::json!({"EVAL": [0, v]}).to_string().into_bytes();
                    }
                    let nv = (v.parse::<u64>().unwrap() + 1).to_string();
                    self.0.insert("v".into(), nv.clone());
                    for pair in parts[5..].chunks(2) {
                        self.0.insert(pair[0].clone(), pair[1].clone());
                    }
                    serde_json::json!({"EVAL": [1, nv]}).to_string().into_bytes()
                }
                other => panic!("unexpected command {other}"),
            }
        }

        fn run(&mut self, mut cas: OutcomeCas) -> OutcomeReply {
            let mut body = cas.start("tg:");
            loop {
                let answer = self.call(&body);
                match cas.on_reply("tg:", Some(&answer)) {
                    OutcomeStep::Send(next) => body = next,
                    OutcomeStep::Done(mut replies) => return replies.remove(0),
                    OutcomeStep::Failed => panic!("failed"),
                }
            }
        }
    }

    #[test]
    fn records_feedback_and_reports_round_trip_through_the_redis_layout() {
        let mut redis = FakeRedis::default();
        let outcome = RequestOutcome { request_id: "r1".into(), tier: "cheap".into(), ..Default::default() };
        let record = OutcomeOp::Record { outcome };
        assert_eq!(redis.run(OutcomeCas::new("acme", record.clone(), 10)), OutcomeReply::Recorded);
        assert_eq!(redis.run(OutcomeCas::new("acme", record, 10)), OutcomeReply::Recorded);
        let fb = OutcomeOp::Feedback { request_id: "r1".into(), resolved: true };
        assert!(matches!(redis.run(OutcomeCas::new("acme", fb, 11)), OutcomeReply::FeedbackRecorded { .. }));
        let unknown = OutcomeOp::Feedback { request_id: "nope".into(), resolved: true };
        assert!(matches!(redis.run(OutcomeCas::new("acme", unknown, 11)), OutcomeReply::UnknownRequest { .. }));
        let OutcomeReply::Report { tiers } = redis.run(OutcomeCas::new("acme", OutcomeOp::Report, 12)) else {
            panic!("no report")
        };
        assert_eq!((tiers[0].requests, tiers[0].resolved), (1, 1));
        // Spend by tier, from the hour's rollup the record wrote (once).
        let grouped = OutcomeOp::Recent { since: 0, group_by: Some(outcomes::Dimension::Tier), period: None };
        let OutcomeReply::Recent { groups, series, .. } = redis.run(OutcomeCas::new("acme", grouped, 12)) else {
            panic!("no grouped report")
        };
        assert_eq!(groups.iter().map(|g| (g.value.as_str(), g.requests)).collect::<Vec<_>>(), [("cheap", 1)]);
        assert_eq!(series.len(), 1);
        assert!(
            redis.0.contains_key("rollup:0")
                && redis.0.contains_key(&format!("rollup:{}", outcomes::rollup::HOUR_SLOTS))
        );
    }

    #[test]
    fn a_run_of_records_spanning_two_chunks_is_written_with_one_compare_and_set() {
        let mut redis = FakeRedis::default();
        let record = |i: usize| OutcomeOp::Record {
            outcome: RequestOutcome { request_id: format!("r{i}"), tier: "cheap".into(), ..Default::default() },
        };
        // Fill up to two slots before a chunk's end, then record five at once.
        for i in 0..outcomes::RECENT_CHUNK - 2 {
            redis.run(OutcomeCas::new("acme", record(i), 10));
        }
        let mut cas = OutcomeCas::run("acme", (100..105).map(record).collect(), 11);
        let mut body = cas.start("tg:");
        let mut evals = 0;
        let replies = loop {
            evals += usize::from(body.starts_with(b"EVAL"));
            let answer = redis.call(&body);
            match cas.on_reply("tg:", Some(&answer)) {
                OutcomeStep::Send(next) => body = next,
                OutcomeStep::Done(replies) => break replies,
                OutcomeStep::Failed => panic!("failed"),
            }
        };
        assert_eq!((replies.len(), evals), (5, 1));
        let OutcomeReply::Report { tiers } = redis.run(OutcomeCas::new("acme", OutcomeOp::Report, 12)) else {
            panic!("no report")
        };
        assert_eq!(tiers[0].requests, outcomes::RECENT_CHUNK as u64 + 3);
        let found = OutcomeOp::Feedback { request_id: "r104".into(), resolved: true };
        assert!(matches!(redis.run(OutcomeCas::new("acme", found, 13)), OutcomeReply::FeedbackRecorded { .. }));
    }

    #[test]
    fn a_write_that_lost_a_race_reads_again() {
        let mut redis = FakeRedis::default();
        let outcome = RequestOutcome { request_id: "r1".into(), tier: "cheap".into(), ..Default::default() };
        let mut cas = OutcomeCas::new("acme", OutcomeOp::Record { outcome }, 10);
        let mut body = cas.start("tg:");
        // Someone else writes between our read and our write.
        let mut raced = false;
        let reply = loop {
            if body.starts_with(b"EVAL") && !raced {
                redis.0.insert("v".into(), "41".into());
                raced = true;
            }
            let answer = redis.call(&body);
            match cas.on_reply("tg:", Some(&answer)) {
                OutcomeStep::Send(next) => body = next,
                OutcomeStep::Done(mut replies) => break replies.remove(0),
                OutcomeStep::Failed => panic!("failed"),
            }
        };
        assert_eq!(reply, OutcomeReply::Recorded);
        assert_eq!(redis.0["v"], "42");
    }
}
