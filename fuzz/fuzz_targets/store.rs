//! The budget/outcome store wire format: every byte string a host reads
//! back and decodes. A Durable Object reads a `TenantBatch` (the Worker's
//! request) and the tenant's stored keys (`TenantState::from_stored`); the
//! Worker reads the DO's `Vec<TenantReply>`; the Envoy filter reads a
//! `BudgetState` from shared data or Redis, and the outcome ledger's
//! compact chunks and totals from shared data; both read API-key records.
//!
//! Input: `[flags][section 0][0x00][section 1][0x00]...`. Section 0 is the
//! batch (when it is not one, a batch of every op kind is used); sections
//! 1.. are the stored values of `TenantState::stored_keys()` in order
//! (`budget`, `outcomes:totals`, `outcomes:recent:0..15`); an empty or
//! missing section is an absent key. flags bit 0: globex's budgets instead
//! of acme's for the default batch; the rest moves the clock.
//!
//! Properties: nothing panics, whatever was stored (counters at their
//! maximum, timestamps in the far future, oversized chunks); after a batch,
//! reloading the stored keys overwritten by the batch's writes gives back
//! exactly the state in memory (so a DO that is evicted and reloads
//! continues where it was); replies, batches and budget states round-trip
//! through their JSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::OnceLock;
use tollgate_core::auth::ApiKeyRecord;
use tollgate_core::compact;
use tollgate_core::budget::{self, Amount, BudgetState, LedgerOp, ReserveRequest};
use tollgate_core::config::{Budgets, EXAMPLE_TENANT_JSON, TenantConfig};
use tollgate_core::outcomes::{self, OutcomeOp, RequestOutcome};
use tollgate_core::store::{self, TenantBatch, TenantOp, TenantReply, TenantState};

const NOW: u64 = 1_795_000_000;

fn budgets() -> &'static [Budgets; 2] {
    static BUDGETS: OnceLock<[Budgets; 2]> = OnceLock::new();
    BUDGETS.get_or_init(|| {
        let parse = |json: &str| TenantConfig::from_json(json.as_bytes()).expect("example tenant").budgets;
        [parse(EXAMPLE_TENANT_JSON), parse(include_str!("../../examples/tenant-globex.json"))]
    })
}

fn default_batch(budgets: &Budgets) -> TenantBatch {
    let price = TenantConfig::from_json(EXAMPLE_TENANT_JSON.as_bytes())
        .ok()
        .and_then(|c| c.price("gpt-4o-mini"))
        .expect("a built-in price");
    let b = || budgets.clone();
    let budget = |op| TenantOp::Budget(op);
    let outcome = |op| TenantOp::Outcome(op);
    let request = |id: &str| ReserveRequest {
        id: id.to_owned(),
        prompt_tokens: 1000,
        output_tokens: 500,
        price,
        downgrade_price: Some(price),
        extra_micros: 0,
        scopes: Default::default(),
    };
    let scoped = || budget::scope::Scopes {
        key: Some(Box::new(budget::scope::KeyScope {
            id: "0123456789abcdef".into(),
            label: Some("fuzz".into()),
            limits: budgets.limits.clone(),
        })),
        user: Some("fuzz-user".into()),
    };
    TenantBatch {
        ops: vec![
            budget(LedgerOp::Status { budgets: b(), scopes: Default::default() }),
            budget(LedgerOp::Reserve { budgets: b(), request: request("r1") }),
            budget(LedgerOp::Reserve { budgets: b(), request: request("r2") }),
            budget(LedgerOp::Check { budgets: b(), scopes: Default::default() }),
            // A request charged at a key's own limits and an end user's too.
            budget(LedgerOp::Reserve { budgets: b(), request: ReserveRequest { scopes: scoped(), ..request("r3") } }),
            budget(LedgerOp::Check { budgets: b(), scopes: scoped() }),
            budget(LedgerOp::Settle { budgets: b(), id: "r3".into(), amount: Amount { tokens: 900, micros: 200, requests: 1 }, scopes: scoped(), resent: false }),
            budget(LedgerOp::Settle { budgets: b(), id: "r1".into(), amount: Amount { tokens: 1200, micros: 300, requests: 0 }, scopes: Default::default(), resent: true }),
            budget(LedgerOp::Release { budgets: b(), id: "r2".into() }),
            budget(LedgerOp::LeaseGrant {
                budgets: b(),
                sizing: budget::lease::LeaseSizing::default(),
                request: budget::lease::LeaseRequest {
                    id: "l1".into(),
                    want: Amount { tokens: 5000, micros: 9000, requests: 0 },
                    need: Amount { tokens: 400, micros: 700, requests: 0 },
                    unit: Amount { tokens: 400, micros: 700, requests: 0 },
                    have: Some(Amount { tokens: 3000, micros: 5000, requests: 0 }),
                    scopes: Default::default(),
                },
            }),
            // A lease carved for a key and an end user as well.
            budget(LedgerOp::LeaseGrant {
                budgets: b(),
                sizing: budget::lease::LeaseSizing::default(),
                request: budget::lease::LeaseRequest {
                    id: "l2".into(),
                    want: Amount { tokens: 5000, micros: 9000, requests: 0 },
                    need: Amount { tokens: 400, micros: 700, requests: 0 },
                    unit: Amount { tokens: 400, micros: 700, requests: 0 },
                    have: None,
                    scopes: scoped(),
                },
            }),
            budget(LedgerOp::LeaseReport {
                budgets: b(),
                report: budget::lease::LeaseReport {
                    lease: "l2".into(),
                    settled: vec![("r5".into(), Amount { tokens: 300, micros: 500, requests: 0 })],
                    returned: true,
                    keep: None,
                    scopes: scoped(),
                },
            }),
            budget(LedgerOp::LeaseReport {
                budgets: b(),
                report: budget::lease::LeaseReport {
                    lease: "l1".into(),
                    settled: vec![("r4".into(), Amount { tokens: 300, micros: 500, requests: 0 })],
                    returned: false,
                    keep: Some(Amount { tokens: 100, micros: 200, requests: 0 }),
                    scopes: Default::default(),
                },
            }),
            outcome(OutcomeOp::Record {
                outcome: RequestOutcome {
                    request_id: "r1".into(),
                    tier: "cheap".into(),
                    tokens: 1200,
                    micros: 300,
                    ..Default::default()
                },
            }),
            outcome(OutcomeOp::Feedback { request_id: "r1".into(), resolved: true }),
            outcome(OutcomeOp::Record {
                outcome: RequestOutcome {
                    request_id: "r3".into(),
                    tier: "premium".into(),
                    cache_hit: true,
                    escalated: true,
                    fallbacks: 2,
                    ..Default::default()
                },
            }),
            outcome(OutcomeOp::Feedback { request_id: "r3".into(), resolved: false }),
            outcome(OutcomeOp::Report),
            outcome(OutcomeOp::Export),
        ],
    }
}

fn round_trips<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T, what: &str) {
    let json = serde_json::to_string(value).expect("serialises");
    let back: T = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{what} does not read back ({e}): {json}"));
    assert_eq!(&back, value, "{what} reads back different: {json}");
}

/// Seeding (fuzz/seeds.py): with `TOLLGATE_FUZZ_DUMP=<dir>`, each input
/// run writes the next input, the batch and what the host stored after it,
/// so seeds hold real host-written state. Off while fuzzing.
fn dump(flags: u8, batch: &TenantBatch, keys: &[String], stored: &HashMap<String, String>) {
    static DIR: OnceLock<Option<String>> = OnceLock::new();
    let Some(dir) = DIR.get_or_init(|| std::env::var("TOLLGATE_FUZZ_DUMP").ok()) else { return };
    let mut out = vec![flags];
    out.extend_from_slice(serde_json::to_string(batch).expect("serialises").as_bytes());
    for key in keys {
        out.push(0);
        out.extend_from_slice(stored.get(key).map_or("", String::as_str).as_bytes());
    }
    while out.last() == Some(&0) {
        out.pop();
    }
    let name = out.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    std::fs::write(format!("{dir}/state-{name:016x}"), out).expect("dump written");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let now = NOW + u64::from(flags >> 1) * 1_300_000;
    let mut sections = rest.split(|&b| b == 0);
    let first = sections.next().unwrap_or_default();
    let _ = ApiKeyRecord::from_json(first);
    let batch = match serde_json::from_slice::<TenantBatch>(first) {
        Ok(batch) => {
            round_trips(&batch, "a batch");
            batch
        }
        Err(_) => default_batch(&budgets()[usize::from(flags & 1)]),
    };
    let keys = TenantState::stored_keys();
    let mut stored: HashMap<String, String> = HashMap::new();
    for (key, value) in keys.iter().zip(sections) {
        if !value.is_empty() {
            stored.insert(key.clone(), String::from_utf8_lossy(value).into_owned());
        }
    }

    // The Durable Object: load, apply, persist the writes.
    let (mut state, _unreadable) = TenantState::from_stored(|k| stored.get(k).cloned());
    let (replies, writes) = state.apply(&batch.ops, now).expect("a state serialises");
    let written: Vec<String> = writes.iter().map(|(k, _)| k.clone()).collect();
    for (key, value) in writes {
        assert!(keys.contains(&key), "writes only its own keys: {key}");
        stored.insert(key, value);
    }
    dump(flags, &batch, &keys, &stored);
    let (reloaded, unreadable) = TenantState::from_stored(|k| stored.get(k).cloned());
    assert!(unreadable.iter().all(|k| !written.contains(k)), "the host's own writes read back: {unreadable:?}");
    assert!(reloaded == state, "reloading after the batch's writes gives another state");

    // `/v1/usage` and `/v1/feedback/export` read what was stored.
    let _ = (outcomes::report(state.outcomes.tiers()), outcomes::export_ndjson(&state.outcomes.exported(now)));
    for budgets in budgets() {
        let _ = budget::status(&mut state.budget.clone(), budgets, now);
    }

    // The Worker reads the replies back.
    round_trips(&replies, "the replies");
    for reply in &replies {
        let _ = (store::reserve_outcome(Some(reply.clone())), store::budget_check(Some(reply.clone())));
    }
    let _: Option<Vec<TenantReply>> = serde_json::from_slice(first).ok();

    // The Envoy filter: a budget state from shared data or Redis, updated in place.
    let mut budget_state: BudgetState =
        stored.get(store::BUDGET_KEY).and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
    let mut envoy: BudgetState =
        serde_json::from_slice(rest.split(|&b| b == 0).nth(1).unwrap_or_default()).unwrap_or_default();
    for op in batch.ops.iter().filter_map(|op| match op {
        TenantOp::Budget(op) => Some(op),
        TenantOp::Outcome(_) => None,
    }) {
        let _ = budget::apply(&mut budget_state, op, now);
        let reply = budget::apply(&mut envoy, op, now);
        round_trips(&reply, "a ledger reply");
    }
    round_trips(&envoy, "a budget state");

    // The Envoy filter's outcome ledger in shared data: compact chunks and
    // totals (or JSON) decode without a panic and re-encode to themselves.
    for section in rest.split(|&b| b == 0) {
        if let Some(chunk) = compact::decode_chunk(section) {
            assert_eq!(compact::decode_chunk(&compact::encode_chunk(&chunk)), Some(chunk), "a chunk round-trips");
        }
        if let Some(totals) = compact::decode_totals(section) {
            assert_eq!(compact::decode_totals(&compact::encode_totals(&totals)), Some(totals), "totals round-trip");
        }
    }
});
