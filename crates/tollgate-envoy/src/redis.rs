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
