//! Node-local state in proxy-wasm shared data: budgets, the outcome ledger
//! and the response cache, shared by every worker thread's VM of one Envoy
//! (shared data is keyed by `vm_id`).
//!
//! Worker threads run concurrently, so every read-modify-write is a
//! compare-and-swap loop: read a key with its CAS token, let the core apply
//! the ops, write back with the token, and start over on a mismatch. The
//! host calls sit behind [`SharedData`] so all of this runs natively in tests
//! against a fake with Envoy's semantics.

use tollgate_core::budget::{self, BudgetState, LedgerOp, LedgerReply};
use tollgate_core::cache::{CacheEntry, CacheKey};
use tollgate_core::compact;
use tollgate_core::outcomes::rollup::{ROLLUP_SLOTS, Rollup};
use tollgate_core::outcomes::{
    self, OutcomeLedger, OutcomeOp, OutcomeReply, OutcomeTotals, RECENT_CHUNK, RECENT_CHUNKS, RecentChunk,
};
use tollgate_core::store::{self, TenantOp, TenantReply};
use tollgate_core::{ApiFormat, engine::CacheFill};

/// CAS attempts before giving up (the store then counts as unavailable).
/// Each attempt is a few microseconds; losing this many in a row means
/// something is wrong, not busy.
pub const CAS_ATTEMPTS: usize = 64;

/// Why a shared-data write failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetError {
    /// Someone wrote the key since it was read.
    CasMismatch,
    /// Any other host status.
    Failed,
}

/// The shared-data calls this module makes: Envoy's `proxy_get_shared_data`
/// and `proxy_set_shared_data`. A CAS token of `None` means "absent" on
/// read and "unconditional" on write (Envoy ignores the token for a key it
/// does not have yet, which is why [`seed`] creates keys up front).
pub trait SharedData {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;
}

pub fn budget_key(tenant: &str) -> String {
    format!("tollgate:budget:{tenant}")
}

fn outcome_key(tenant: &str, stored: &str) -> String {
    format!("tollgate:outcomes:{tenant}:{stored}")
}

pub fn cache_slot_key(slot: usize) -> String {
    format!("tollgate:cache:{slot}")
}

/// Create a tenant's keys if absent, so that every later write is a real
/// compare-and-swap (a write to an absent key ignores its token, and two
/// threads racing on a first write could both win). Called from
/// `on_configure`, before the VM serves traffic.
pub fn seed(shared: &dyn SharedData, tenant: &str) {
    seed_keys(shared, [budget_key(tenant)]);
    seed_outcomes(shared, tenant);
}

/// [`seed`] for the outcome ledger.
fn seed_outcomes(shared: &dyn SharedData, tenant: &str) {
    let mut keys = vec![outcome_key(tenant, store::OUTCOME_TOTALS_KEY)];
    keys.extend((0..RECENT_CHUNKS).map(|c| outcome_key(tenant, &store::outcome_chunk_key(c))));
    keys.extend((0..ROLLUP_SLOTS).map(|slot| outcome_key(tenant, &store::outcome_rollup_key(slot))));
    seed_keys(shared, keys);
}

fn seed_keys(shared: &dyn SharedData, keys: impl IntoIterator<Item = String>) {
    for key in keys {
        if shared.get(&key).0.is_none() {
            let _ = shared.set(&key, b"", None);
        }
    }
}

/// A stored chunk of the ring (compact layout, [`compact`]); empty or
/// unreadable means never written.
fn read_chunk(bytes: Option<Vec<u8>>) -> RecentChunk {
    padded(bytes.and_then(|b| compact::decode_chunk(&b)).unwrap_or_default())
}

/// The stored totals (compact layout); empty or unreadable means none yet.
fn read_totals(bytes: Option<Vec<u8>>) -> OutcomeTotals {
    bytes.and_then(|b| compact::decode_totals(&b)).unwrap_or_default()
}

/// The rollups in `slots` as stored, each with its CAS token.
fn read_rollups(shared: &dyn SharedData, tenant: &str, slots: &[usize]) -> Vec<(usize, Rollup, Option<u32>)> {
    slots
        .iter()
        .map(|&slot| {
            let (bytes, cas) = shared.get(&outcome_key(tenant, &store::outcome_rollup_key(slot)));
            (slot, parse_or_default(bytes), cas)
        })
        .collect()
}

/// Write the rollups an apply changed, merging into another thread's
/// change to the same bucket ([`Rollup::add_difference`]). A bucket is
/// attribution, not a limit: one that cannot be written is logged, and the
/// op still counts as applied.
fn write_rollups(shared: &dyn SharedData, tenant: &str, read: &[(usize, Rollup, Option<u32>)], ledger: &OutcomeLedger) {
    for (slot, before, cas) in read {
        let after = ledger.rollup(*slot);
        if after == *before {
            continue;
        }
        let key = outcome_key(tenant, &store::outcome_rollup_key(*slot));
        let encode = |r: &Rollup| serde_json::to_vec(r).unwrap_or_default();
        let merged = write_merging(shared, &key, after.clone(), *cas, encode, |bytes| {
            let mut fresh: Rollup = parse_or_default(bytes);
            fresh.add_difference(before, &after);
            fresh
        });
        if !merged {
            log::warn!("tollgate: spend rollup {slot} for tenant `{tenant}` could not be written");
        }
    }
}

/// Empty means absent: proxy-wasm ABI 0.2.1 cannot delete a key.
fn parse_or_default<T: serde::de::DeserializeOwned + Default>(bytes: Option<Vec<u8>>) -> T {
    bytes.filter(|b| !b.is_empty()).and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Apply budget ops to a tenant's budget, atomically with respect to every
/// other worker thread. `None` when the store could not be updated.
pub fn apply_budget(shared: &dyn SharedData, tenant: &str, ops: &[LedgerOp], now: u64) -> Option<Vec<LedgerReply>> {
    let key = budget_key(tenant);
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = shared.get(&key);
        let mut state: BudgetState = parse_or_default(bytes);
        let before = state.clone();
        let replies: Vec<LedgerReply> = ops.iter().map(|op| budget::apply(&mut state, op, now)).collect();
        if state == before {
            // A read that changed nothing (a check, a status) writes nothing.
            return Some(replies);
        }
        let json = serde_json::to_vec(&state).ok()?;
        match shared.set(&key, &json, cas) {
            Ok(()) => {
                crate::alerts::queue(ops, state.take_alerts());
                return Some(replies);
            }
            Err(SetError::CasMismatch) => continue,
            Err(SetError::Failed) => return None,
        }
    }
    None
}

/// Apply a batch of tenant ops in order: consecutive budget ops in one
/// compare-and-swap ([`apply_budget`]), consecutive outcome records in one
/// ([`apply_records`]: a lease desk's batch), any other outcome op as
/// [`apply_outcome`]. `None` when any of them failed.
pub fn apply_ops(shared: &dyn SharedData, tenant: &str, ops: &[TenantOp], now: u64) -> Option<Vec<TenantReply>> {
    let mut replies = Vec::with_capacity(ops.len());
    let mut i = 0;
    while i < ops.len() {
        let run = ops[i..].iter().take_while(|op| same_run(&ops[i], op)).count();
        let slice = &ops[i..i + run];
        match &ops[i] {
            TenantOp::Budget(_) => {
                let budget_ops: Vec<LedgerOp> = slice
                    .iter()
                    .filter_map(|op| if let TenantOp::Budget(op) = op { Some(op.clone()) } else { None })
                    .collect();
                replies.extend(apply_budget(shared, tenant, &budget_ops, now)?.into_iter().map(TenantReply::Budget));
            }
            TenantOp::Outcome(OutcomeOp::Record { .. }) => {
                let records: Vec<&OutcomeOp> = slice
                    .iter()
                    .filter_map(|op| if let TenantOp::Outcome(op) = op { Some(op) } else { None })
                    .collect();
                replies.extend(apply_records(shared, tenant, &records, now)?.into_iter().map(TenantReply::Outcome));
            }
            TenantOp::Outcome(op) => replies.push(TenantReply::Outcome(apply_outcome(shared, tenant, op, now)?)),
        }
        i += run;
    }
    Some(replies)
}

/// Whether `op` is applied in one write with `first`: budget ops together,
/// outcome records together.
fn same_run(first: &TenantOp, op: &TenantOp) -> bool {
    match (first, op) {
        (TenantOp::Budget(_), TenantOp::Budget(_)) => true,
        (TenantOp::Outcome(OutcomeOp::Record { .. }), TenantOp::Outcome(OutcomeOp::Record { .. })) => true,
        _ => std::ptr::eq(first, op),
    }
}

/// Record many requests at once (a lease desk's batch): one commit on the
/// totals claims their ring slots, then each touched chunk gets just those
/// slots merged in, as [`apply_outcome`] does for one record.
pub fn apply_records(
    shared: &dyn SharedData,
    tenant: &str,
    records: &[&OutcomeOp],
    now: u64,
) -> Option<Vec<OutcomeReply>> {
    let totals_key = outcome_key(tenant, store::OUTCOME_TOTALS_KEY);
    for _ in 0..CAS_ATTEMPTS {
        let (totals_bytes, totals_cas) = shared.get(&totals_key);
        let totals = read_totals(totals_bytes);
        // The chunks the next `records.len()` slots fall in (a record of an
        // id already in the ring claims no slot, so this may read one more).
        let mut wanted: Vec<usize> = (0..records.len().min(outcomes::RECENT_CAPACITY))
            .map(|k| (totals.next_slot + k) % outcomes::RECENT_CAPACITY / RECENT_CHUNK)
            .collect();
        wanted.dedup();
        let mut chunks: Vec<Option<RecentChunk>> = vec![None; RECENT_CHUNKS];
        let mut chunk_cas = [None; RECENT_CHUNKS];
        for &c in &wanted {
            let (bytes, cas) = shared.get(&outcome_key(tenant, &store::outcome_chunk_key(c)));
            chunks[c] = Some(read_chunk(bytes));
            chunk_cas[c] = cas;
        }
        let rollups = read_rollups(shared, tenant, &records.first().map(|op| op.rollups_read(now)).unwrap_or_default());
        let mut ledger = OutcomeLedger::from_parts(totals, chunks.clone())
            .with_rollups(rollups.iter().map(|(slot, r, _)| (*slot, r.clone())));
        let mut replies = Vec::with_capacity(records.len());
        let mut touched_chunks: Vec<usize> = Vec::new();
        let mut touched_totals = false;
        for op in records {
            let (reply, touched) = outcomes::apply(&mut ledger, op, now);
            replies.push(reply);
            touched_totals |= touched.totals;
            if let Some(c) = touched.chunk.filter(|c| !touched_chunks.contains(c)) {
                touched_chunks.push(c);
            }
        }
        if touched_totals {
            match shared.set(&totals_key, &compact::encode_totals(&ledger.totals), totals_cas) {
                Ok(()) => {}
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Failed) => return None,
            }
        }
        for c in touched_chunks {
            let key = outcome_key(tenant, &store::outcome_chunk_key(c));
            let read = chunks[c].clone().unwrap_or_else(|| padded(Vec::new()));
            if !merge_chunk(shared, &key, &read, ledger.chunk(c), chunk_cas[c]) {
                log::warn!("tollgate: recent-request slots for tenant `{tenant}` could not be written");
            }
        }
        write_rollups(shared, tenant, &rollups, &ledger);
        return Some(replies);
    }
    None
}

/// One tenant op (see [`apply_ops`]).
pub fn apply_op(shared: &dyn SharedData, tenant: &str, op: &TenantOp, now: u64) -> Option<TenantReply> {
    match op {
        TenantOp::Budget(op) => {
            apply_budget(shared, tenant, std::slice::from_ref(op), now)?.pop().map(TenantReply::Budget)
        }
        TenantOp::Outcome(op) => apply_outcome(shared, tenant, op, now).map(TenantReply::Outcome),
    }
}

/// Apply one outcome op (record, feedback, report) to a tenant's ledger.
/// Reads only what the op needs: a record touches the totals and the chunk
/// its slot falls in; feedback searches the whole ring.
///
/// Two keys cannot be written atomically, so each op has one commit point,
/// a compare-and-swap that decides it, and then lands the rest as a merge
/// that cannot undo anyone else's write:
/// - a record commits on the totals (counting it and claiming the next
///   ring slot), then writes only its own slot into the chunk, re-reading
///   the chunk when another thread wrote it meanwhile (see
///   [`apply_records`], which records one or many);
/// - feedback commits on the chunk (the slot's verdict changes from what it
///   read to what it says), then adds its change to the totals as a delta.
///
/// Writing a whole chunk and then the totals, both conditionally, is not
/// enough: between the two writes another thread can read the new chunk
/// with the old totals, put its record in the same slot, and the first
/// thread's retry then finds its id gone or the slot taken.
pub fn apply_outcome(shared: &dyn SharedData, tenant: &str, op: &OutcomeOp, now: u64) -> Option<OutcomeReply> {
    if let OutcomeOp::Record { .. } = op {
        return apply_records(shared, tenant, &[op], now)?.pop();
    }
    let totals_key = outcome_key(tenant, store::OUTCOME_TOTALS_KEY);
    for _ in 0..CAS_ATTEMPTS {
        let (totals_bytes, totals_cas) = shared.get(&totals_key);
        let totals = read_totals(totals_bytes);
        let wanted = op.chunks_read(&totals);
        let mut chunks: Vec<Option<RecentChunk>> = vec![None; RECENT_CHUNKS];
        let mut chunk_cas = [None; RECENT_CHUNKS];
        for &c in &wanted {
            let (bytes, cas) = shared.get(&outcome_key(tenant, &store::outcome_chunk_key(c)));
            chunks[c] = Some(read_chunk(bytes));
            chunk_cas[c] = cas;
        }
        let read_totals = totals.clone();
        let rollups = read_rollups(shared, tenant, &op.rollups_read(now));
        let mut ledger =
            OutcomeLedger::from_parts(totals, chunks).with_rollups(rollups.into_iter().map(|(s, r, _)| (s, r)));
        let (reply, touched) = outcomes::apply(&mut ledger, op, now);
        let chunk_change = touched.chunk.map(|c| {
            let key = outcome_key(tenant, &store::outcome_chunk_key(c));
            (key, ledger.chunk(c), chunk_cas[c])
        });
        match op {
            OutcomeOp::Feedback { .. } => {
                if let Some((key, wrote, cas)) = chunk_change {
                    match shared.set(&key, &compact::encode_chunk(&wrote), cas) {
                        Ok(()) => {}
                        Err(SetError::CasMismatch) => continue,
                        Err(SetError::Failed) => return None,
                    }
                }
                if touched.totals && !merge_totals(shared, &totals_key, &read_totals, &ledger.totals, totals_cas) {
                    return None;
                }
            }
            // Records went to `apply_records` above; reads write nothing.
            OutcomeOp::Record { .. } | OutcomeOp::Report | OutcomeOp::Export | OutcomeOp::Recent { .. } => {}
        }
        return Some(reply);
    }
    None
}

/// A stored chunk (empty when never written) as exactly [`RECENT_CHUNK`] slots.
fn padded(mut chunk: RecentChunk) -> RecentChunk {
    chunk.resize(RECENT_CHUNK, None);
    chunk
}

/// Write the slots that differ between `read` and `wrote`; when another
/// thread wrote the chunk meanwhile, put just those slots into its version.
fn merge_chunk(shared: &dyn SharedData, key: &str, read: &RecentChunk, wrote: RecentChunk, cas: Option<u32>) -> bool {
    let changed: Vec<usize> = (0..wrote.len()).filter(|&i| read.get(i) != wrote.get(i)).collect();
    write_merging(shared, key, wrote.clone(), cas, compact::encode_chunk, |bytes| {
        let mut fresh = read_chunk(bytes);
        for &i in &changed {
            fresh[i].clone_from(&wrote[i]);
        }
        fresh
    })
}

/// Add what changed between `read` and `wrote` to the stored totals,
/// re-reading them when another thread wrote them meanwhile.
fn merge_totals(
    shared: &dyn SharedData,
    key: &str,
    read: &OutcomeTotals,
    wrote: &OutcomeTotals,
    cas: Option<u32>,
) -> bool {
    write_merging(shared, key, wrote.clone(), cas, compact::encode_totals, |bytes| {
        let mut fresh = read_totals(bytes);
        fresh.add_difference(read, wrote);
        fresh
    })
}

/// Write `value` with `cas`; on a mismatch, rebuild it from the key's
/// current bytes with `remerge` and try again.
fn write_merging<T>(
    shared: &dyn SharedData,
    key: &str,
    mut value: T,
    mut cas: Option<u32>,
    encode: impl Fn(&T) -> Vec<u8>,
    remerge: impl Fn(Option<Vec<u8>>) -> T,
) -> bool {
    for _ in 0..CAS_ATTEMPTS {
        match shared.set(key, &encode(&value), cas) {
            Ok(()) => return true,
            Err(SetError::Failed) => return false,
            Err(SetError::CasMismatch) => {
                let (bytes, fresh_cas) = shared.get(key);
                (value, cas) = (remerge(bytes), fresh_cas);
            }
        }
    }
    false
}

/// The node-local cache: a fixed number of slots, each one shared-data key
/// holding one entry, chosen by the cache key's hash. A new entry evicts
/// whatever held its slot, so memory is bounded by slots × the largest
/// entry a tenant admits, and the set of keys never grows past `slots`.
#[derive(Clone, Copy, Debug)]
pub struct LocalCache {
    pub slots: usize,
}

impl LocalCache {
    fn slot(&self, key: &CacheKey) -> usize {
        // The key is already a SHA-256 hex digest; its first 12 hex digits
        // are uniform enough to pick a slot.
        let prefix = key.as_str().rsplit(':').next().unwrap_or("");
        let n = u64::from_str_radix(prefix.get(..12).unwrap_or("0"), 16).unwrap_or_else(|_| fnv(key.as_str()));
        usize::try_from(n % self.slots.max(1) as u64).unwrap_or(0)
    }

    pub fn lookup(&self, shared: &dyn SharedData, key: &CacheKey, api: ApiFormat, now: u64) -> Option<CacheEntry> {
        let (bytes, _) = shared.get(&cache_slot_key(self.slot(key)));
        let bytes = bytes?;
        let split = bytes.iter().position(|b| *b == b'\n')?;
        if &bytes[..split] != key.as_str().as_bytes() {
            return None;
        }
        CacheEntry::from_bytes(&bytes[split + 1..], api, now)
    }

    /// The doorkeeper, shared by every worker thread: whether `key` was
    /// looked up before (then its answer is worth caching), remembering it
    /// for next time. A direct-mapped table of `slots` keys beside the
    /// cache; a colliding key makes it forget, which only delays a fill.
    pub fn seen_before(&self, shared: &dyn SharedData, key: &CacheKey) -> bool {
        let slot_key = format!("tollgate:seen:{}", self.slot(key));
        let (bytes, _) = shared.get(&slot_key);
        if bytes.as_deref() == Some(key.as_str().as_bytes()) {
            return true;
        }
        let _ = shared.set(&slot_key, key.as_str().as_bytes(), None);
        false
    }

    pub fn fill(&self, shared: &dyn SharedData, fill: &CacheFill) -> bool {
        let mut value = Vec::with_capacity(fill.key.as_str().len() + 1 + fill.value.len());
        value.extend_from_slice(fill.key.as_str().as_bytes());
        value.push(b'\n');
        value.extend_from_slice(&fill.value);
        shared.set(&cache_slot_key(self.slot(&fill.key)), &value, None).is_ok()
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
pub mod fake {
    //! Shared data with Envoy's semantics: a global CAS counter, a write to
    //! an absent key ignores the token.
    use super::{SetError, SharedData};
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// The last CAS token handed out, and each key's value and token.
    type Store = (u32, HashMap<String, (Vec<u8>, u32)>);

    #[derive(Debug, Default)]
    pub struct FakeShared {
        inner: Mutex<Store>,
    }

    impl SharedData for FakeShared {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            let g = self.inner.lock().unwrap();
            match g.1.get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            }
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            let mut g = self.inner.lock().unwrap();
            if let (Some(expected), Some((_, current))) = (cas, g.1.get(key))
                && expected != *current
            {
                return Err(SetError::CasMismatch);
            }
            g.0 += 1;
            let next = g.0;
            g.1.insert(key.to_owned(), (value.to_vec(), next));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeShared;
    use super::*;
    use std::sync::Arc;
    use tollgate_core::TenantConfig;
    use tollgate_core::budget::ReserveRequest;
    use tollgate_core::outcomes::RequestOutcome;
    use tollgate_core::pricing::ModelPrice;

    fn budgets() -> tollgate_core::config::Budgets {
        let mut cfg: serde_json::Value = serde_json::from_str(tollgate_core::config::EXAMPLE_TENANT_JSON).unwrap();
        cfg["budgets"] = serde_json::json!({"limits": [{"window": "day", "tokens": 100}], "on_exhausted": "reject"});
        TenantConfig::from_json(cfg.to_string().as_bytes()).unwrap().budgets
    }

    fn reserve(id: &str, prompt_tokens: u64) -> LedgerOp {
        let price = ModelPrice { input: 0, cached_input: 0, output: 0 };
        LedgerOp::Reserve {
            budgets: budgets(),
            request: ReserveRequest {
                id: id.into(),
                prompt_tokens,
                output_tokens: 0,
                price,
                downgrade_price: None,
                extra_micros: 0,
                scopes: Default::default(),
            },
        }
    }

    #[test]
    fn threads_racing_to_reserve_never_hold_more_than_the_limit() {
        let shared = Arc::new(FakeShared::default());
        seed(shared.as_ref(), "t");
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .filter(|i| {
                            let ops = [reserve(&format!("r{t}-{i}"), 10)];
                            matches!(
                                apply_budget(shared.as_ref(), "t", &ops, 100).as_deref(),
                                Some([LedgerReply::Granted { .. }])
                            )
                        })
                        .count()
                })
            })
            .collect();
        let granted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        // 100 tokens a day at 10 each: exactly ten holds fit, whatever the interleaving.
        assert_eq!(granted, 10);
    }

    #[test]
    fn a_record_then_feedback_counts_one_resolution_and_a_repeat_record_counts_once() {
        let shared = FakeShared::default();
        seed(&shared, "t");
        let record = OutcomeOp::Record {
            outcome: RequestOutcome { request_id: "r1".into(), tier: "cheap".into(), ..Default::default() },
        };
        assert_eq!(apply_outcome(&shared, "t", &record, 10), Some(OutcomeReply::Recorded));
        assert_eq!(apply_outcome(&shared, "t", &record, 10), Some(OutcomeReply::Recorded));
        let fb = OutcomeOp::Feedback { request_id: "r1".into(), resolved: true };
        assert!(matches!(apply_outcome(&shared, "t", &fb, 11), Some(OutcomeReply::FeedbackRecorded { .. })));
        let Some(OutcomeReply::Report { tiers }) = apply_outcome(&shared, "t", &OutcomeOp::Report, 12) else {
            panic!("no report")
        };
        assert_eq!((tiers[0].requests, tiers[0].resolved), (1, 1));
    }

    #[test]
    fn threads_recording_and_giving_feedback_at_once_lose_no_request_and_no_verdict() {
        let shared = Arc::new(FakeShared::default());
        seed(shared.as_ref(), "t");
        let record = |id: String, user: String| OutcomeOp::Record {
            outcome: RequestOutcome {
                request_id: id,
                tier: "cheap".into(),
                tokens: 3,
                micros: 7,
                attribution: outcomes::Attribution { user: Some(user), ..Default::default() },
                ..Default::default()
            },
        };
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    for i in 0..40 {
                        let id = format!("r{t}-{i}");
                        let user = format!("u{t}");
                        assert!(apply_outcome(shared.as_ref(), "t", &record(id.clone(), user), 10).is_some());
                        let fb = OutcomeOp::Feedback { request_id: id, resolved: i % 2 == 0 };
                        let reply = apply_outcome(shared.as_ref(), "t", &fb, 10);
                        assert!(matches!(reply, Some(OutcomeReply::FeedbackRecorded { .. })), "{reply:?}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let Some(OutcomeReply::Report { tiers }) = apply_outcome(shared.as_ref(), "t", &OutcomeOp::Report, 12) else {
            panic!("no report")
        };
        let cheap = &tiers[0];
        assert_eq!((cheap.requests, cheap.tokens), (320, 960));
        assert_eq!((cheap.resolved, cheap.unresolved), (160, 160));
        // Every thread wrote the same hour's and day's rollup: none lost a request.
        for period in [outcomes::rollup::Period::Hour, outcomes::rollup::Period::Day] {
            let grouped =
                OutcomeOp::Recent { since: 0, group_by: Some(outcomes::Dimension::User), period: Some(period) };
            let Some(OutcomeReply::Recent { groups, .. }) = apply_outcome(shared.as_ref(), "t", &grouped, 12) else {
                panic!("no grouped report")
            };
            let per_user: Vec<(String, u64, u64, u64)> =
                groups.into_iter().map(|g| (g.value, g.requests, g.tokens, g.micros)).collect();
            let expected: Vec<(String, u64, u64, u64)> = (0..8).map(|t| (format!("u{t}"), 40, 120, 280)).collect();
            assert_eq!(per_user, expected, "{period:?}");
        }
    }

    #[test]
    fn the_cache_holds_one_entry_per_slot_and_a_colliding_key_evicts_it() {
        let shared = FakeShared::default();
        let cache = LocalCache { slots: 1 };
        let entry = |model: &str| CacheEntry {
            api: ApiFormat::OpenAi,
            model: model.into(),
            stored_at: 0,
            expires_at: 100,
            usage: None,
            cost_micros: 5,
            body: serde_json::json!({"id": model}),
        };
        let (a, b) = (CacheKey("tg:a:00aa".into()), CacheKey("tg:b:00bb".into()));
        assert!(cache.fill(&shared, &CacheFill { key: a.clone(), value: entry("m1").to_bytes(), ttl_seconds: 100 }));
        assert_eq!(cache.lookup(&shared, &a, ApiFormat::OpenAi, 50).map(|e| e.model), Some("m1".into()));
        assert!(cache.lookup(&shared, &a, ApiFormat::OpenAi, 150).is_none(), "expired entries are misses");
        assert!(cache.fill(&shared, &CacheFill { key: b.clone(), value: entry("m2").to_bytes(), ttl_seconds: 100 }));
        assert!(cache.lookup(&shared, &a, ApiFormat::OpenAi, 50).is_none());
        assert_eq!(cache.lookup(&shared, &b, ApiFormat::OpenAi, 50).map(|e| e.model), Some("m2".into()));
    }

    #[test]
    fn the_doorkeeper_admits_a_key_on_its_second_sighting_from_any_thread() {
        let shared = FakeShared::default();
        let cache = LocalCache { slots: 64 };
        let key = CacheKey("0123456789abcdef".into());
        assert!(!cache.seen_before(&shared, &key));
        assert!(cache.seen_before(&shared, &key));
    }
}
