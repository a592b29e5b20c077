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
use tollgate_core::outcomes::{
    self, OutcomeLedger, OutcomeOp, OutcomeReply, OutcomeTotals, RECENT_CHUNK, RECENT_CHUNKS, RecentChunk,
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
pub const CAS_ROUNDS: usize = 16;

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

/// One budget update in flight: ops to apply, and what the last attempt sent.
#[derive(Clone, Debug)]
pub struct BudgetCas {
    pub tenant: String,
    pub ops: Vec<LedgerOp>,
    pub now: u64,
    rounds: usize,
    sent: Option<(BudgetState, Vec<LedgerReply>)>,
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
        BudgetCas { tenant: tenant.to_owned(), ops, now, rounds: 0, sent: None }
    }

    /// The first request, computed from the memoised state.
    pub fn start(&mut self, prefix: &str, memo: &Memo) -> Vec<u8> {
        let (version, state) =
            memo.get(&self.tenant).cloned().unwrap_or_else(|| ("0".to_owned(), BudgetState::default()));
        self.attempt(prefix, version, state)
    }

    fn attempt(&mut self, prefix: &str, version: String, mut state: BudgetState) -> Vec<u8> {
        self.rounds += 1;
        let replies: Vec<LedgerReply> = self.ops.iter().map(|op| budget::apply(&mut state, op, self.now)).collect();
        let data = serde_json::to_vec(&state).unwrap_or_default();
        self.sent = Some((state, replies));
        let key = budget_key(prefix, &self.tenant);
        command("EVAL", &[CAS_SCRIPT.as_bytes(), b"1", key.as_bytes(), version.as_bytes(), &data])
    }

    /// Read webdis's answer (`None` for a failed call).
    pub fn on_reply(&mut self, prefix: &str, body: Option<&[u8]>, memo: &mut Memo) -> CasStep {
        let Some(value) = body.and_then(|b| reply_value("EVAL", b)) else { return CasStep::Failed };
        let Some(items) = value.as_array() else { return CasStep::Failed };
        match (items.first().and_then(serde_json::Value::as_i64), items.get(1).and_then(|v| v.as_str())) {
            (Some(1), Some(version)) => {
                let Some((state, replies)) = self.sent.take() else { return CasStep::Failed };
                memo.insert(self.tenant.clone(), (version.to_owned(), state));
                CasStep::Done(replies)
            }
            (Some(0), Some(version)) if self.rounds < CAS_ROUNDS => {
                let data = items.get(2).and_then(|v| v.as_str()).unwrap_or("");
                // Empty (or unreadable, after a format change) starts empty,
                // as the Durable Object does.
                let state: BudgetState = serde_json::from_str(data).unwrap_or_default();
                memo.insert(self.tenant.clone(), (version.to_owned(), state.clone()));
                CasStep::Send(self.attempt(prefix, version.to_owned(), state))
            }
            _ => CasStep::Failed,
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
        LedgerOp::Status { budgets }
    }

    #[test]
    fn a_lost_race_retries_on_the_state_redis_returned_and_a_win_updates_the_memo() {
        let mut memo = Memo::new();
        let mut cas = BudgetCas::new("acme", vec![status_op()], 100);
        let first = String::from_utf8(cas.start("tg:", &memo)).unwrap();
        assert!(first.starts_with("EVAL/") && first.contains("/1/tg%3Abudget%3Aacme/0/"), "{first}");
        let theirs = serde_json::to_string(&BudgetState::default()).unwrap();
        let lost = serde_json::json!({"EVAL": [0, "7", theirs]}).to_string();
        let CasStep::Send(second) = cas.on_reply("tg:", Some(lost.as_bytes()), &mut memo) else { panic!("no retry") };
        assert!(String::from_utf8(second).unwrap().contains("/tg%3Abudget%3Aacme/7/"));
        let won = br#"{"EVAL":[1,"8"]}"#;
        assert!(matches!(cas.on_reply("tg:", Some(won), &mut memo), CasStep::Done(r) if r.len() == 1));
        assert_eq!(memo["acme"].0, "8");
        assert_eq!(cas.on_reply("tg:", None, &mut memo), CasStep::Failed);
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

/// One outcome-ledger op (record, feedback, report) against a tenant's
/// ledger in Redis: the hash `{v, totals, chunk:<n>}` laid out like the
/// node-local one. Reads what the op needs with HMGET, applies it with the
/// core, and writes what changed with one compare-and-set; a lost race
/// reads again (a repeated record is counted once by the core).
#[derive(Clone, Debug)]
pub struct OutcomeCas {
    pub tenant: String,
    pub op: OutcomeOp,
    pub now: u64,
    rounds: usize,
    stage: OutcomeStage,
}

#[derive(Clone, Debug)]
enum OutcomeStage {
    /// Reading the totals (to learn which chunk a record lands in).
    Totals,
    /// Reading the totals and these chunks, to apply the op.
    Fields(Vec<usize>),
    /// Wrote with this version; the reply is ready once it lands.
    Writing(OutcomeReply),
}

/// What to do after a webdis answer to an outcome op.
#[derive(Clone, Debug, PartialEq)]
pub enum OutcomeStep {
    Done(OutcomeReply),
    Send(Vec<u8>),
    Failed,
}

impl OutcomeCas {
    pub fn new(tenant: &str, op: OutcomeOp, now: u64) -> Self {
        let stage = match &op {
            OutcomeOp::Record { .. } => OutcomeStage::Totals,
            OutcomeOp::Feedback { .. } => OutcomeStage::Fields((0..RECENT_CHUNKS).collect()),
            OutcomeOp::Report => OutcomeStage::Fields(Vec::new()),
        };
        OutcomeCas { tenant: tenant.to_owned(), op, now, rounds: 0, stage }
    }

    pub fn start(&mut self, prefix: &str) -> Vec<u8> {
        self.rounds += 1;
        self.read(prefix)
    }

    fn read(&self, prefix: &str) -> Vec<u8> {
        let key = outcomes_key(prefix, &self.tenant);
        let mut fields: Vec<String> = vec!["v".into(), "totals".into()];
        if let OutcomeStage::Fields(chunks) = &self.stage {
            fields.extend(chunks.iter().map(|c| chunk_field(*c)));
        }
        let mut args: Vec<&[u8]> = vec![key.as_bytes()];
        args.extend(fields.iter().map(|f| f.as_bytes()));
        command("HMGET", &args)
    }

    pub fn on_reply(&mut self, prefix: &str, body: Option<&[u8]>) -> OutcomeStep {
        let stage = std::mem::replace(&mut self.stage, OutcomeStage::Totals);
        match stage {
            OutcomeStage::Writing(reply) => {
                let Some(value) = body.and_then(|b| reply_value("EVAL", b)) else { return OutcomeStep::Failed };
                match value.as_array().and_then(|a| a.first()).and_then(serde_json::Value::as_i64) {
                    Some(1) => OutcomeStep::Done(reply),
                    Some(0) if self.rounds < CAS_ROUNDS => {
                        let rounds = self.rounds + 1;
                        *self = OutcomeCas::new(&self.tenant, self.op.clone(), self.now);
                        self.rounds = rounds;
                        OutcomeStep::Send(self.read(prefix))
                    }
                    _ => OutcomeStep::Failed,
                }
            }
            OutcomeStage::Totals => {
                let Some(values) = hmget_values(body) else { return OutcomeStep::Failed };
                let totals: OutcomeTotals = parse_field(values.get(1));
                let chunk = (totals.next_slot % (RECENT_CHUNK * RECENT_CHUNKS)) / RECENT_CHUNK;
                self.stage = OutcomeStage::Fields(vec![chunk]);
                OutcomeStep::Send(self.read(prefix))
            }
            OutcomeStage::Fields(wanted) => {
                let Some(values) = hmget_values(body) else { return OutcomeStep::Failed };
                let version = values.first().and_then(|v| v.as_str()).unwrap_or("0").to_owned();
                let totals: OutcomeTotals = parse_field(values.get(1));
                if let OutcomeOp::Record { .. } = self.op {
                    // The ring moved on since the totals were read: read the right chunk.
                    let chunk = (totals.next_slot % (RECENT_CHUNK * RECENT_CHUNKS)) / RECENT_CHUNK;
                    if wanted.first() != Some(&chunk) {
                        self.stage = OutcomeStage::Fields(vec![chunk]);
                        return OutcomeStep::Send(self.read(prefix));
                    }
                }
                let mut chunks = vec![None; RECENT_CHUNKS];
                for (i, c) in wanted.iter().enumerate() {
                    chunks[*c] = Some(parse_field::<RecentChunk>(values.get(2 + i)));
                }
                let mut ledger = OutcomeLedger::from_parts(totals, chunks);
                let (reply, touched) = outcomes::apply(&mut ledger, &self.op, self.now);
                let mut writes: Vec<(String, Vec<u8>)> = Vec::new();
                if let Some(c) = touched.chunk {
                    writes.push((chunk_field(c), serde_json::to_vec(&ledger.chunk(c)).unwrap_or_default()));
                }
                if touched.totals {
                    writes.push(("totals".into(), serde_json::to_vec(&ledger.totals).unwrap_or_default()));
                }
                if writes.is_empty() {
                    return OutcomeStep::Done(reply);
                }
                let key = outcomes_key(prefix, &self.tenant);
                let mut args: Vec<&[u8]> = vec![CAS_FIELDS_SCRIPT.as_bytes(), b"1", key.as_bytes(), version.as_bytes()];
                for (field, value) in &writes {
                    args.push(field.as_bytes());
                    args.push(value);
                }
                let body = command("EVAL", &args);
                self.stage = OutcomeStage::Writing(reply);
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

    fn decode(arg: &str) -> String {
        let bytes = arg.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(&arg[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    impl FakeRedis {
        fn call(&mut self, body: &[u8]) -> Vec<u8> {
            let text = String::from_utf8(body.to_vec()).unwrap();
            let parts: Vec<String> = text.split('/').map(decode).collect();
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
                    OutcomeStep::Done(reply) => return reply,
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
                OutcomeStep::Done(reply) => break reply,
                OutcomeStep::Failed => panic!("failed"),
            }
        };
        assert_eq!(reply, OutcomeReply::Recorded);
        assert_eq!(redis.0["v"], "42");
    }
}
