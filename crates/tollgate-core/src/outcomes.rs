//! The cost-per-resolution ledger: what each tier spent, and how often the
//! client said its answer resolved the task.
//!
//! Every routed request is recorded when it settles ([`OutcomeOp::Record`]);
//! `POST /v1/feedback {request_id, resolved}` later marks it resolved or not
//! ([`OutcomeOp::Feedback`]). Per tier the ledger keeps requests, resolutions,
//! tokens, dollars, escalations, fallbacks, cache hits and the dollars those
//! hits avoided, so `/v1/usage` can report cost per resolution.
//!
//! Like [`crate::budget`], this is pure: the host persists an
//! [`OutcomeLedger`] per tenant next to its budget state and changes it only
//! through [`apply`]. Memory is bounded: the ledger remembers the last
//! [`RECENT_CAPACITY`] requests (and none older than [`FEEDBACK_WINDOW_SECS`])
//! for matching feedback, in a ring persisted as small chunks; the per-tier
//! totals are a fixed handful of numbers.
//!
//! [`OutcomeOp::Export`] hands the recent requests that got feedback back to
//! the tenant (`GET /v1/feedback/export`): id, tier, escalated, resolved and
//! time, never prompt text, which the router does not keep. Joined with the
//! tenant's own request log by [`training_label`], they become labelled
//! prompts for `tollgate train`.

pub mod rollup;

use crate::error::ApiError;
use crate::pricing::format_usd;
use rollup::{Period, PeriodGroups, ROLLUP_SLOTS, Rollup};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How many recent requests feedback can still name.
pub const RECENT_CAPACITY: usize = 1024;

/// Recent requests are persisted in chunks of this many slots, so recording
/// one request rewrites a few kilobytes, not the whole list.
pub const RECENT_CHUNK: usize = 64;

/// Number of chunks.
pub const RECENT_CHUNKS: usize = RECENT_CAPACITY / RECENT_CHUNK;

/// Feedback older than this (7 days) no longer counts.
pub const FEEDBACK_WINDOW_SECS: u64 = 7 * 24 * 3600;

/// One request's outcome, as the host records it once the request has ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestOutcome {
    pub request_id: String,
    /// The tier that served it, or `pinned` for unrouted models.
    pub tier: String,
    /// Who and what it is attributed to (never its text).
    #[serde(default, flatten)]
    pub attribution: Attribution,
    pub tokens: u64,
    pub micros: u64,
    #[serde(default)]
    pub cache_hit: bool,
    /// For a cache hit: what the original answer cost, i.e. what the hit avoided.
    #[serde(default)]
    pub saved_micros: u64,
    #[serde(default)]
    pub escalated: bool,
    #[serde(default)]
    pub fallbacks: u32,
    /// What the answer would have cost from the top tier ([`TierTotals::premium_micros`]).
    #[serde(default)]
    pub premium_micros: u64,
}

/// Running totals for one tier.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierTotals {
    pub tier: String,
    pub requests: u64,
    pub resolved: u64,
    pub unresolved: u64,
    pub tokens: u64,
    pub micros: u64,
    pub escalations: u64,
    pub fallbacks: u64,
    pub cache_hits: u64,
    pub cache_saved_micros: u64,
    /// What the same answers would have cost from the top tier's first
    /// model, at list price (provider answers only; a hit counts in
    /// `cache_saved_micros`): the baseline of "always premium".
    #[serde(default)]
    pub premium_micros: u64,
}

/// The tenant's spend in one clock hour or UTC day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendBucket {
    /// Unix seconds the hour or day starts.
    pub start: u64,
    pub requests: u64,
    pub tokens: u64,
    pub micros: u64,
}

/// Hourly buckets kept: two days.
pub const SPEND_HOURS: u64 = 48;
/// Daily buckets kept: five weeks (a month's window and then some).
pub const SPEND_DAYS: u64 = 35;

fn add_to_bucket(buckets: &mut Vec<SpendBucket>, start: u64, requests: u64, tokens: u64, micros: u64) {
    let at = match buckets.iter().position(|b| b.start == start) {
        Some(i) => i,
        None => {
            buckets.push(SpendBucket { start, ..SpendBucket::default() });
            buckets.sort_by_key(|b| b.start);
            buckets.iter().position(|b| b.start == start).unwrap_or(0)
        }
    };
    if let Some(b) = buckets.get_mut(at) {
        b.requests = b.requests.saturating_add(requests);
        b.tokens = b.tokens.saturating_add(tokens);
        b.micros = b.micros.saturating_add(micros);
    }
}

/// Drop the buckets that start before `oldest`.
fn prune(buckets: &mut Vec<SpendBucket>, oldest: u64) {
    buckets.retain(|b| b.start >= oldest);
}

impl TierTotals {
    /// Every counter, listed once, here: a store that merges totals field by
    /// field goes through this, so a counter added to the struct reaches every
    /// store as soon as it is added to this list (a test fails until it is).
    pub(crate) fn counters_mut(&mut self) -> [&mut u64; 10] {
        [
            &mut self.requests,
            &mut self.resolved,
            &mut self.unresolved,
            &mut self.tokens,
            &mut self.micros,
            &mut self.escalations,
            &mut self.fallbacks,
            &mut self.cache_hits,
            &mut self.cache_saved_micros,
            &mut self.premium_micros,
        ]
    }

    /// The counters' values, in [`TierTotals::counters_mut`]'s order.
    pub(crate) fn counters(&self) -> [u64; 10] {
        let mut copy = self.clone();
        copy.counters_mut().map(|c| *c)
    }

    /// `self += after - before`, counter by counter (saturating): how a store
    /// that lost a compare-and-swap race carries one writer's change over to
    /// totals another writer changed meanwhile.
    pub fn add_difference(&mut self, before: &TierTotals, after: &TierTotals) {
        let (mut before, mut after) = (before.clone(), after.clone());
        for ((into, was), now) in self.counters_mut().into_iter().zip(before.counters_mut()).zip(after.counters_mut()) {
            *into = into.saturating_add(now.saturating_sub(*was)).saturating_sub(was.saturating_sub(*now));
        }
    }
}

impl OutcomeTotals {
    /// `self += after - before`, tier by tier (a tier new in `after` is
    /// added): how a store that lost a compare-and-swap race carries one
    /// writer's change over to totals another writer changed meanwhile.
    /// Counters only; `next_slot` stays `self`'s.
    pub fn add_difference(&mut self, before: &OutcomeTotals, after: &OutcomeTotals) {
        for changed in &after.tiers {
            let was = before.tiers.iter().find(|t| t.tier == changed.tier).cloned().unwrap_or_default();
            let at = match self.tiers.iter().position(|t| t.tier == changed.tier) {
                Some(at) => at,
                None => {
                    self.tiers.push(TierTotals { tier: changed.tier.clone(), ..TierTotals::default() });
                    self.tiers.len() - 1
                }
            };
            if let Some(into) = self.tiers.get_mut(at) {
                into.add_difference(&was, changed);
            }
        }
        // Buckets by their start: what one writer added to each goes onto
        // the other's (buckets it pruned are not taken away).
        for (mine, theirs_before, theirs_after) in
            [(&mut self.hours, &before.hours, &after.hours), (&mut self.days, &before.days, &after.days)]
        {
            for b in theirs_after {
                let was = theirs_before.iter().find(|x| x.start == b.start).cloned().unwrap_or_default();
                add_to_bucket(
                    mine,
                    b.start,
                    b.requests.saturating_sub(was.requests),
                    b.tokens.saturating_sub(was.tokens),
                    b.micros.saturating_sub(was.micros),
                );
            }
        }
        if let (Some(hour), Some(day)) = (self.hours.last().map(|b| b.start), self.days.last().map(|b| b.start)) {
            prune(&mut self.hours, hour.saturating_sub((SPEND_HOURS - 1) * 3600));
            prune(&mut self.days, day.saturating_sub((SPEND_DAYS - 1) * 86_400));
        }
    }

    /// The chunk of the ring the next recorded request goes into.
    pub fn next_chunk(&self) -> usize {
        (self.next_slot % RECENT_CAPACITY) / RECENT_CHUNK
    }
}

impl OutcomeOp {
    /// The chunks of the ring `self` reads, given the current totals: the
    /// layout a store follows to read no more than an op needs.
    pub fn chunks_read(&self, totals: &OutcomeTotals) -> Vec<usize> {
        match self {
            OutcomeOp::Record { .. } => vec![totals.next_chunk()],
            OutcomeOp::Feedback { .. } | OutcomeOp::Export | OutcomeOp::Recent { .. } => (0..RECENT_CHUNKS).collect(),
            OutcomeOp::Report => Vec::new(),
        }
    }

    /// The rollup slots `self` reads when applied at `now`: a record's hour
    /// and day, or the buckets a grouped report sums.
    pub fn rollups_read(&self, now: u64) -> Vec<usize> {
        match self {
            OutcomeOp::Record { .. } => {
                vec![Period::Hour.slot(Period::Hour.start(now)), Period::Day.slot(Period::Day.start(now))]
            }
            OutcomeOp::Recent { since, group_by: Some(_), period } => {
                let period = period.unwrap_or_else(|| Period::for_range(*since, now));
                period.starts(*since, now).into_iter().map(|s| period.slot(s)).collect()
            }
            OutcomeOp::Recent { group_by: None, .. }
            | OutcomeOp::Feedback { .. }
            | OutcomeOp::Export
            | OutcomeOp::Report => Vec::new(),
        }
    }
}

/// What a request is attributed to: the model that answered, its API key
/// (the first 16 hex digits of the key's SHA-256), its end user and its
/// tags. Never any of its text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// A recent request: what feedback can still name, and what the most
/// expensive recent requests and the recent attribution are read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentRequest {
    pub id: String,
    pub tier: String,
    pub at: u64,
    #[serde(default, flatten)]
    pub attribution: Attribution,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub micros: u64,
    /// The feedback given so far, if any (it can be changed).
    #[serde(default)]
    pub resolved: Option<bool>,
    /// The answer of the tier the router chose (`tier`) was judged
    /// unresolved and the next tier was asked. Written only when set, so
    /// the chunks stay small and older ones read back as `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escalated: bool,
}

/// The small, often-written part of the ledger: per-tier totals and where
/// the next recent request goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeTotals {
    #[serde(default)]
    pub tiers: Vec<TierTotals>,
    #[serde(default)]
    pub next_slot: usize,
    /// Spend per clock hour, the last [`SPEND_HOURS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hours: Vec<SpendBucket>,
    /// Spend per UTC day, the last [`SPEND_DAYS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<SpendBucket>,
}

/// [`RECENT_CHUNK`] slots of the ring of recent requests.
pub type RecentChunk = Vec<Option<RecentRequest>>;

/// Everything a host persists for one tenant's outcomes: the totals under
/// one key and the ring of recent requests as [`RECENT_CHUNKS`] chunks, so
/// that a record rewrites only the totals and one chunk (see [`Touched`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutcomeLedger {
    pub totals: OutcomeTotals,
    recent: Vec<Option<RecentRequest>>,
    /// Spend per value in hourly and daily buckets, by slot ([`rollup`]).
    rollups: Vec<Rollup>,
}

impl Default for OutcomeLedger {
    fn default() -> Self {
        OutcomeLedger {
            totals: OutcomeTotals::default(),
            recent: vec![None; RECENT_CAPACITY],
            rollups: vec![Rollup::default(); ROLLUP_SLOTS],
        }
    }
}

/// What an [`apply`] changed, so the host writes only that.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub totals: bool,
    /// The index of the chunk that changed, if one did.
    pub chunk: Option<usize>,
    /// The rollup slots that changed (a record's hour and day).
    pub rollups: [Option<usize>; 2],
}

/// One operation on the outcome ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OutcomeOp {
    Record {
        outcome: RequestOutcome,
    },
    Feedback {
        request_id: String,
        resolved: bool,
    },
    Report,
    /// The recent requests that have feedback, oldest first.
    Export,
    /// The most expensive requests of the ring recorded at or after
    /// `since`, and their spend grouped by `group_by` ([`recent_report`]).
    Recent {
        since: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group_by: Option<Dimension>,
        /// The buckets `group_by` is summed over; by default hours while
        /// they cover `since`, days beyond ([`Period::for_range`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        period: Option<Period>,
    },
}

/// What recent spend can be grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Key,
    User,
    Tag,
    Model,
    Tier,
}

impl Dimension {
    pub fn parse(name: &str) -> Option<Dimension> {
        Some(match name {
            "key" => Dimension::Key,
            "user" => Dimension::User,
            "tag" => Dimension::Tag,
            "model" => Dimension::Model,
            "tier" => Dimension::Tier,
            _ => return None,
        })
    }
}

/// Recent spend of one value of a [`Dimension`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The key, user, tag, model or tier; `(none)` for requests without one.
    pub value: String,
    pub requests: u64,
    pub tokens: u64,
    pub micros: u64,
}

/// How many of the most expensive recent requests a report lists.
pub const TOP_REQUESTS: usize = 10;
/// How many groups a report lists (the most expensive first).
pub const TOP_GROUPS: usize = 50;

/// The answer to an [`OutcomeOp`]. Tag values differ from
/// [`crate::budget::LedgerReply`]'s so both can share one wire format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum OutcomeReply {
    Recorded,
    FeedbackRecorded {
        request_id: String,
        tier: String,
        resolved: bool,
    },
    UnknownRequest {
        request_id: String,
    },
    Report {
        tiers: Vec<TierTotals>,
    },
    Export {
        requests: Vec<RecentRequest>,
    },
    Recent {
        top: Vec<RecentRequest>,
        groups: Vec<Group>,
        oldest: Option<u64>,
        /// The tenant's spend per hour and per day ([`OutcomeTotals::hours`], `days`).
        #[serde(default)]
        hours: Vec<SpendBucket>,
        #[serde(default)]
        days: Vec<SpendBucket>,
        /// What `groups` is summed over: buckets of this length, one per
        /// entry of `series` (empty buckets left out), from `groups_since`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        period: Option<Period>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        groups_since: Option<u64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        series: Vec<PeriodGroups>,
    },
}

impl OutcomeLedger {
    /// Rebuild from what the host stored; missing or short chunks are empty slots.
    pub fn from_parts(totals: OutcomeTotals, chunks: Vec<Option<RecentChunk>>) -> OutcomeLedger {
        let mut ledger = OutcomeLedger { totals, ..OutcomeLedger::default() };
        ledger.totals.next_slot %= RECENT_CAPACITY;
        for (c, chunk) in chunks.into_iter().take(RECENT_CHUNKS).enumerate() {
            for (i, slot) in chunk.unwrap_or_default().into_iter().take(RECENT_CHUNK).enumerate() {
                ledger.recent[c * RECENT_CHUNK + i] = slot;
            }
        }
        ledger
    }

    /// Put in the rollups the host read (`(slot, bucket)`; the others stay empty).
    pub fn with_rollups(mut self, read: impl IntoIterator<Item = (usize, Rollup)>) -> OutcomeLedger {
        for (slot, rollup) in read {
            if let Some(into) = self.rollups.get_mut(slot) {
                *into = rollup;
            }
        }
        self
    }

    /// The rollup in `slot` as stored.
    pub fn rollup(&self, slot: usize) -> Rollup {
        self.rollups.get(slot).cloned().unwrap_or_default()
    }

    /// Chunk `index` as stored.
    pub fn chunk(&self, index: usize) -> RecentChunk {
        let start = (index % RECENT_CHUNKS) * RECENT_CHUNK;
        self.recent[start..start + RECENT_CHUNK].to_vec()
    }

    pub fn tiers(&self) -> &[TierTotals] {
        &self.totals.tiers
    }

    fn tier_totals(&mut self, tier: &str) -> &mut TierTotals {
        let tiers = &mut self.totals.tiers;
        let at = match tiers.iter().position(|t| t.tier == tier) {
            Some(i) => i,
            None => {
                tiers.push(TierTotals { tier: tier.to_owned(), ..TierTotals::default() });
                tiers.len() - 1
            }
        };
        &mut tiers[at]
    }

    /// The recent requests with feedback still inside the feedback window,
    /// oldest first (the ring read from the slot written next).
    pub fn exported(&self, now: u64) -> Vec<RecentRequest> {
        let start = self.totals.next_slot % RECENT_CAPACITY;
        let (newer, older) = self.recent.split_at(start);
        older
            .iter()
            .chain(newer)
            .flatten()
            .filter(|r| r.resolved.is_some() && r.at.saturating_add(FEEDBACK_WINDOW_SECS) >= now)
            .cloned()
            .collect()
    }

    fn find(&self, id: &str, now: u64) -> Option<usize> {
        self.recent
            .iter()
            .position(|r| r.as_ref().is_some_and(|r| r.id == id && r.at.saturating_add(FEEDBACK_WINDOW_SECS) >= now))
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The ring's requests recorded at or after `since`: the
/// [`TOP_REQUESTS`] most expensive, and `oldest`, the time of the oldest
/// request the ring still holds (what "recent" covers: the last
/// [`RECENT_CAPACITY`] requests). With `group_by`: spend per value over
/// the hourly or daily buckets from the one `since` falls in to now
/// ([`rollup::over_range`]), the [`TOP_GROUPS`] most expensive first.
pub fn recent_report(
    ledger: &OutcomeLedger,
    since: u64,
    group_by: Option<Dimension>,
    period: Option<Period>,
    now: u64,
) -> OutcomeReply {
    let recent: Vec<&RecentRequest> = ledger.recent.iter().flatten().filter(|r| r.at >= since).collect();
    let oldest = ledger.recent.iter().flatten().map(|r| r.at).min();
    let mut top: Vec<RecentRequest> = recent.iter().map(|r| (*r).clone()).collect();
    top.sort_by(|a, b| b.micros.cmp(&a.micros).then(b.at.cmp(&a.at)).then(a.id.cmp(&b.id)));
    top.truncate(TOP_REQUESTS);
    let (mut groups, mut series, mut grouped_over, mut groups_since) = (Vec::new(), Vec::new(), None, None);
    if let Some(dimension) = group_by {
        let period = period.unwrap_or_else(|| Period::for_range(since, now));
        let starts = period.starts(since, now);
        let buckets = starts.iter().filter_map(|start| ledger.rollups.get(period.slot(*start)));
        (groups, series) = rollup::over_range(buckets, &starts, dimension);
        groups.truncate(TOP_GROUPS);
        grouped_over = Some(period);
        groups_since = starts.first().copied();
    }
    OutcomeReply::Recent {
        top,
        groups,
        oldest,
        hours: ledger.totals.hours.clone(),
        days: ledger.totals.days.clone(),
        period: grouped_over,
        groups_since,
        series: std::mem::take(&mut series),
    }
}

/// Apply one operation at `now`. The caller persists what [`Touched`] names.
pub fn apply(ledger: &mut OutcomeLedger, op: &OutcomeOp, now: u64) -> (OutcomeReply, Touched) {
    match op {
        OutcomeOp::Record { outcome } => {
            // A retried record (the host's call timed out after it landed) must not double-count.
            if ledger.find(&outcome.request_id, now).is_some() {
                return (OutcomeReply::Recorded, Touched::default());
            }
            let t = ledger.tier_totals(&outcome.tier);
            t.requests = t.requests.saturating_add(1);
            t.tokens = t.tokens.saturating_add(outcome.tokens);
            t.micros = t.micros.saturating_add(outcome.micros);
            t.escalations = t.escalations.saturating_add(u64::from(outcome.escalated));
            t.premium_micros = t.premium_micros.saturating_add(outcome.premium_micros);
            t.fallbacks = t.fallbacks.saturating_add(u64::from(outcome.fallbacks));
            if outcome.cache_hit {
                t.cache_hits = t.cache_hits.saturating_add(1);
                t.cache_saved_micros = t.cache_saved_micros.saturating_add(outcome.saved_micros);
            }
            let (hour, day) = (now - now % 3600, now - now % 86_400);
            let mut rollups_touched = [None; 2];
            for (touched, period) in rollups_touched.iter_mut().zip([Period::Hour, Period::Day]) {
                let (start, slot) = (period.start(now), period.slot(period.start(now)));
                let Some(bucket) = ledger.rollups.get_mut(slot) else { continue };
                // A slot holding an older bucket holds an expired one (see
                // `rollup`); one holding a newer bucket is left alone.
                if bucket.start < start {
                    *bucket = Rollup { start, ..Rollup::default() };
                }
                if bucket.start == start {
                    bucket.record(&outcome.tier, &outcome.attribution, outcome.tokens, outcome.micros);
                    *touched = Some(slot);
                }
            }
            add_to_bucket(&mut ledger.totals.hours, hour, 1, outcome.tokens, outcome.micros);
            add_to_bucket(&mut ledger.totals.days, day, 1, outcome.tokens, outcome.micros);
            prune(&mut ledger.totals.hours, hour.saturating_sub((SPEND_HOURS - 1) * 3600));
            prune(&mut ledger.totals.days, day.saturating_sub((SPEND_DAYS - 1) * 86_400));
            // The ring overwrites the oldest slot.
            let slot = ledger.totals.next_slot % RECENT_CAPACITY;
            ledger.recent[slot] = Some(RecentRequest {
                id: outcome.request_id.clone(),
                tier: outcome.tier.clone(),
                at: now,
                attribution: outcome.attribution.clone(),
                tokens: outcome.tokens,
                micros: outcome.micros,
                resolved: None,
                escalated: outcome.escalated,
            });
            ledger.totals.next_slot = (slot + 1) % RECENT_CAPACITY;
            (
                OutcomeReply::Recorded,
                Touched { totals: true, chunk: Some(slot / RECENT_CHUNK), rollups: rollups_touched },
            )
        }
        OutcomeOp::Feedback { request_id, resolved } => {
            let Some(slot) = ledger.find(request_id, now) else {
                return (OutcomeReply::UnknownRequest { request_id: request_id.clone() }, Touched::default());
            };
            let Some(recent) = ledger.recent[slot].as_mut() else {
                return (OutcomeReply::UnknownRequest { request_id: request_id.clone() }, Touched::default());
            };
            let before = recent.resolved.replace(*resolved);
            let tier = recent.tier.clone();
            let t = ledger.tier_totals(&tier);
            // Changed feedback moves the request between the two counts.
            match before {
                Some(true) => t.resolved = t.resolved.saturating_sub(1),
                Some(false) => t.unresolved = t.unresolved.saturating_sub(1),
                None => {}
            }
            if *resolved {
                t.resolved = t.resolved.saturating_add(1);
            } else {
                t.unresolved = t.unresolved.saturating_add(1);
            }
            let reply = OutcomeReply::FeedbackRecorded { request_id: request_id.clone(), tier, resolved: *resolved };
            (reply, Touched { totals: true, chunk: Some(slot / RECENT_CHUNK), rollups: [None; 2] })
        }
        OutcomeOp::Report => (OutcomeReply::Report { tiers: ledger.totals.tiers.clone() }, Touched::default()),
        OutcomeOp::Export => (OutcomeReply::Export { requests: ledger.exported(now) }, Touched::default()),
        OutcomeOp::Recent { since, group_by, period } => {
            (recent_report(ledger, *since, *group_by, *period, now), Touched::default())
        }
    }
}

/// One line of `GET /v1/feedback/export` (served as `application/x-ndjson`).
pub fn export_line(r: &RecentRequest) -> Value {
    json!({"request_id": r.id, "tier": r.tier, "escalated": r.escalated, "resolved": r.resolved, "at": r.at})
}

/// The whole `GET /v1/feedback/export` body: one JSON object per line.
pub fn export_ndjson(requests: &[RecentRequest]) -> String {
    requests.iter().map(|r| format!("{}\n", export_line(r))).collect()
}

/// What one exported request says about a weak and a strong model, as a
/// row of `tollgate train`'s labels (`weak`, `strong` in `{0, 1}`), or why
/// it says nothing. `tiers` are the tenant's tier names, cheapest first;
/// `tier` is the one the router chose (an escalated request is recorded
/// there, with `escalated` set).
///
/// - not escalated, on the cheapest tier: resolved → weak 1, strong 1;
///   unresolved → weak 0, strong 1 (the strong model is assumed to manage);
/// - escalated (the chosen tier's answer was judged unresolved): resolved
///   → weak 0, strong 1; unresolved after escalating to the premium tier
///   (the chosen tier is the one below it) → weak 0, strong 0;
/// - anything else is skipped: above the cheapest tier without escalating,
///   the weak model's score is unknown.
pub fn training_label(tier: &str, escalated: bool, resolved: bool, tiers: &[String]) -> Result<(f64, f64), SkipReason> {
    if tier == "pinned" {
        return Err(SkipReason::Pinned);
    }
    let index = tiers.iter().position(|t| t == tier).ok_or(SkipReason::UnknownTier)?;
    let below_premium = index + 2 == tiers.len();
    match (escalated, resolved) {
        (true, true) => Ok((0.0, 1.0)),
        (true, false) if below_premium => Ok((0.0, 0.0)),
        (true, false) => Err(SkipReason::EscalatedUnresolvedBelowPremium),
        (false, _) if index == 0 => Ok(if resolved { (1.0, 1.0) } else { (0.0, 1.0) }),
        (false, _) => Err(SkipReason::NotOnTheCheapestTier),
    }
}

/// Why an exported request gives no training label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SkipReason {
    /// Served above the cheapest tier without escalating: the weak model's score is unknown.
    NotOnTheCheapestTier,
    /// Escalated, still unresolved, but not known to have reached the premium tier.
    EscalatedUnresolvedBelowPremium,
    /// A pinned model, not routed.
    Pinned,
    /// A tier the tenant's config does not have (renamed since?).
    UnknownTier,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotOnTheCheapestTier => "served above the cheapest tier (the weak model's score is unknown)",
            SkipReason::EscalatedUnresolvedBelowPremium => {
                "escalated and unresolved, not from the tier below the premium one (the strong model's score is unknown)"
            }
            SkipReason::Pinned => "a pinned model (not routed)",
            SkipReason::UnknownTier => "a tier the tenant's config does not have",
        }
    }
}

/// A validated `POST /v1/feedback` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feedback {
    pub request_id: String,
    pub resolved: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeedback {
    request_id: String,
    resolved: bool,
}

/// Parse `{request_id, resolved}`; 400 with the reason otherwise.
pub fn parse_feedback(body: &[u8]) -> Result<Feedback, ApiError> {
    // Through a Value first: serde would also read a struct from a JSON array.
    let parsed = serde_json::from_slice::<serde_json::Value>(body)
        .map_err(|e| e.to_string())
        .and_then(|v| if v.is_object() { Ok(v) } else { Err("the body must be a JSON object".to_owned()) })
        .and_then(|v| serde_json::from_value::<RawFeedback>(v).map_err(|e| e.to_string()));
    let raw: RawFeedback = parsed.map_err(|e| {
        ApiError::new(
            400,
            "invalid_request_error",
            "invalid_feedback",
            format!("feedback must be {{\"request_id\": \"req_…\", \"resolved\": true|false}}: {e}"),
        )
    })?;
    let well_formed = raw.request_id.len() == 36
        && raw.request_id.starts_with("req_")
        && raw.request_id[4..].bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(ApiError::new(
            400,
            "invalid_request_error",
            "invalid_feedback",
            "`request_id` must be the x-tollgate-request-id of a response (req_ and 32 hex digits)",
        )
        .with_param("request_id"));
    }
    Ok(Feedback { request_id: raw.request_id, resolved: raw.resolved })
}

/// The tenant's ledger could not be read (for `/v1/usage` and `/v1/feedback`,
/// which no fail-open setting applies to).
pub fn ledger_unavailable() -> ApiError {
    ApiError::new(
        503,
        "api_error",
        "budget_store_unavailable",
        "the tenant's ledger (budgets and outcomes) is unreachable; retry shortly",
    )
    .with_retry_after(5)
}

/// The error for feedback naming a request the ledger does not know.
pub fn unknown_request(request_id: &str) -> ApiError {
    ApiError::new(
        404,
        "invalid_request_error",
        "unknown_request_id",
        format!(
            "no routed request `{request_id}` in the last {RECENT_CAPACITY} requests or 7 days for this tenant; \
             feedback can only name this tenant's recent requests"
        ),
    )
    .with_param("request_id")
}

/// The `resolution` section of `/v1/usage`: per tier, and cost per resolution.
pub fn report(tiers: &[TierTotals]) -> Value {
    let rows: Vec<Value> = tiers
        .iter()
        .map(|t| {
            json!({
                "tier": t.tier,
                "requests": t.requests,
                "resolved": t.resolved,
                "unresolved": t.unresolved,
                "tokens": t.tokens,
                "spent_usd": format_usd(t.micros),
                "escalations": t.escalations,
                "fallbacks": t.fallbacks,
                "cache_hits": t.cache_hits,
                "cache_saved_usd": format_usd(t.cache_saved_micros),
                "cost_per_resolution_usd": (t.resolved > 0).then(|| format_usd(t.micros / t.resolved)),
                "premium_equivalent_usd": format_usd(t.premium_micros),
            })
        })
        .collect();
    // Against always-premium: what the provider answers would have cost
    // from the top tier, less what they cost (hits are in `cache_saved_usd`).
    let answered: u64 = tiers.iter().map(|t| t.micros).sum();
    let premium: u64 = tiers.iter().map(|t| t.premium_micros).sum();
    json!({ "tiers": rows, "saved_vs_premium_usd": format_usd(premium.saturating_sub(answered)) })
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn every_counter_of_tier_totals_is_merged_by_add_difference() {
        // Give every numeric field a distinct value through serde, so a field
        // added to the struct but not to `counters_mut` is caught here.
        let serialized = serde_json::to_value(TierTotals::default()).unwrap();
        let fields: Vec<String> =
            serialized.as_object().unwrap().iter().filter(|(_, v)| v.is_u64()).map(|(k, _)| k.clone()).collect();
        let with = |base: u64| -> TierTotals {
            let mut map = serialized.as_object().unwrap().clone();
            for (i, name) in fields.iter().enumerate() {
                map.insert(name.clone(), serde_json::json!(base + i as u64));
            }
            serde_json::from_value(serde_json::Value::Object(map)).unwrap()
        };
        let (before, after, mut into) = (with(10), with(15), with(100));
        into.add_difference(&before, &after);
        assert_eq!(into, with(105), "a counter is not merged: add it to TierTotals::counters_mut");
        assert_eq!(TierTotals::default().counters_mut().len(), fields.len());
    }

    #[test]
    fn totals_merge_tier_by_tier_and_a_tier_new_to_the_store_is_added() {
        let tier = |name: &str, requests: u64| TierTotals { tier: name.into(), requests, ..TierTotals::default() };
        let before = OutcomeTotals { tiers: vec![tier("cheap", 2)], next_slot: 2, ..OutcomeTotals::default() };
        let after = OutcomeTotals {
            tiers: vec![tier("cheap", 3), tier("premium", 1)],
            next_slot: 4,
            ..OutcomeTotals::default()
        };
        // Another writer recorded 5 cheap requests meanwhile.
        let mut stored = OutcomeTotals { tiers: vec![tier("cheap", 7)], next_slot: 7, ..OutcomeTotals::default() };
        stored.add_difference(&before, &after);
        assert_eq!(stored.tiers, vec![tier("cheap", 8), tier("premium", 1)]);
        assert_eq!(stored.next_slot, 7);
    }

    #[test]
    fn a_record_reads_the_chunk_of_the_next_slot_and_feedback_reads_them_all() {
        let totals = OutcomeTotals { tiers: Vec::new(), next_slot: RECENT_CHUNK * 3 + 5, ..OutcomeTotals::default() };
        let record = OutcomeOp::Record { outcome: RequestOutcome::default() };
        assert_eq!(record.chunks_read(&totals), vec![3]);
        let wrapped = OutcomeTotals { next_slot: RECENT_CAPACITY + 1, ..OutcomeTotals::default() };
        assert_eq!(record.chunks_read(&wrapped), vec![0]);
        let feedback = OutcomeOp::Feedback { request_id: "x".into(), resolved: true };
        assert_eq!(feedback.chunks_read(&totals).len(), RECENT_CHUNKS);
        assert!(OutcomeOp::Report.chunks_read(&totals).is_empty());
    }

    use super::*;

    fn apply_(l: &mut OutcomeLedger, op: &OutcomeOp, now: u64) -> OutcomeReply {
        apply(l, op, now).0
    }

    fn outcome(id: &str, tier: &str, micros: u64) -> RequestOutcome {
        RequestOutcome {
            request_id: id.to_owned(),
            tier: tier.to_owned(),
            tokens: 100,
            micros,
            ..RequestOutcome::default()
        }
    }

    fn attributed(id: &str, micros: u64, key: &str, user: Option<&str>, tags: &[&str]) -> OutcomeOp {
        let mut o = outcome(id, "cheap", micros);
        o.attribution = Attribution {
            model: if micros > 500 { "gpt-4o".into() } else { "gpt-4o-mini".into() },
            key: Some(key.into()),
            user: user.map(str::to_owned),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        };
        OutcomeOp::Record { outcome: o }
    }

    #[test]
    fn recent_spend_groups_by_tag_user_and_model_and_lists_the_dearest_requests_first() {
        let mut l = OutcomeLedger::default();
        apply(&mut l, &attributed("old", 9_000, "k1", Some("ann"), &["search"]), 100);
        apply(&mut l, &attributed("a", 300, "k1", Some("ann"), &["search", "beta"]), 7_300);
        apply(&mut l, &attributed("b", 700, "k2", Some("bob"), &["chat"]), 7_301);
        apply(&mut l, &attributed("c", 200, "k2", None, &[]), 7_302);
        let now = 7_302;
        let OutcomeReply::Recent { top, groups, oldest, period, groups_since, series, .. } =
            recent_report(&l, 7_300, Some(Dimension::Tag), None, now)
        else {
            panic!()
        };
        assert_eq!(oldest, Some(100));
        assert_eq!(top.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["b", "a", "c"], "since 7300, dearest first");
        assert_eq!(top[0].attribution.model, "gpt-4o");
        // Grouped over the buckets the range falls in: the hour from 7200.
        assert_eq!((period, groups_since, series.len()), (Some(Period::Hour), Some(7_200), 1));
        let by_tag: Vec<(&str, u64, u64)> = groups.iter().map(|g| (g.value.as_str(), g.requests, g.micros)).collect();
        assert_eq!(by_tag, [("chat", 1, 700), ("beta", 1, 300), ("search", 1, 300), ("(none)", 1, 200)]);
        let OutcomeReply::Recent { groups, series, .. } = recent_report(&l, 0, Some(Dimension::User), None, now) else {
            panic!()
        };
        let by_user: Vec<(&str, u64)> = groups.iter().map(|g| (g.value.as_str(), g.micros)).collect();
        assert_eq!(by_user, [("ann", 9_300), ("bob", 700), ("(none)", 200)]);
        assert_eq!(series.iter().map(|s| s.start).collect::<Vec<_>>(), [0, 7_200], "empty hours are left out");
        let OutcomeReply::Recent { groups, .. } = recent_report(&l, 0, Some(Dimension::Key), Some(Period::Day), now)
        else {
            panic!()
        };
        assert_eq!(groups.iter().map(|g| g.requests).sum::<u64>(), 4);
    }

    #[test]
    fn grouped_spend_covers_more_than_the_ring_in_days_and_forgets_buckets_past_what_is_kept() {
        let mut l = OutcomeLedger::default();
        let day = 86_400;
        let start = 20_000 * day;
        // Three requests a day for 40 days: far more than a range of the
        // ring's size would need, and past the 35 days kept.
        let mut n = 0;
        for d in 0..40u64 {
            for k in 0..3u64 {
                n += 1;
                let user = if d % 2 == 0 { "even" } else { "odd" };
                apply(&mut l, &attributed(&format!("r{n}"), 10 + k, "k", Some(user), &[]), start + d * day + k);
            }
        }
        let now = start + 39 * day + 10;
        let OutcomeReply::Recent { groups, period, groups_since, series, .. } =
            recent_report(&l, now - 10 * day, Some(Dimension::User), None, now)
        else {
            panic!()
        };
        assert_eq!((period, groups_since), (Some(Period::Day), Some(start + 29 * day)));
        assert_eq!(series.len(), 11);
        assert_eq!(groups.iter().map(|g| g.requests).sum::<u64>(), 33);
        assert_eq!(groups.iter().map(|g| g.micros).sum::<u64>(), 33 * 11);
        let OutcomeReply::Recent { series, groups_since, .. } =
            recent_report(&l, 0, Some(Dimension::User), Some(Period::Day), now)
        else {
            panic!()
        };
        assert_eq!(series.len(), rollup::DAY_SLOTS);
        assert_eq!(groups_since, Some(start + 5 * day));
        // Hours: only the last day's requests are in the kept hours.
        let OutcomeReply::Recent { groups, .. } = recent_report(&l, 0, Some(Dimension::Tier), Some(Period::Hour), now)
        else {
            panic!()
        };
        assert_eq!(groups.iter().map(|g| g.requests).sum::<u64>(), 3 + 3);
    }

    #[test]
    fn spend_is_kept_per_hour_and_per_day_and_two_writers_buckets_merge() {
        let mut l = OutcomeLedger::default();
        let day = 20_000 * 86_400;
        apply(&mut l, &attributed("a", 300, "k", None, &[]), day + 10);
        apply(&mut l, &attributed("b", 700, "k", None, &[]), day + 3_700);
        apply(&mut l, &attributed("c", 100, "k", None, &[]), day + 86_400 + 5);
        let starts = |b: &[SpendBucket]| b.iter().map(|b| (b.start - day, b.micros)).collect::<Vec<_>>();
        assert_eq!(starts(&l.totals.hours), [(0, 300), (3_600, 700), (86_400, 100)]);
        assert_eq!(starts(&l.totals.days), [(0, 1_000), (86_400, 100)]);
        // Two days later the hours of the first day are gone; the days stay.
        apply(&mut l, &attributed("d", 1, "k", None, &[]), day + 3 * 86_400);
        assert_eq!(l.totals.hours.first().map(|b| b.start), Some(day + 3 * 86_400));
        assert_eq!(l.totals.days.len(), 3);
        // Another writer recorded one request in the same hour meanwhile.
        let before = l.totals.clone();
        let mut theirs = l.clone();
        apply(&mut theirs, &attributed("e", 50, "k", None, &[]), day + 3 * 86_400 + 60);
        apply(&mut l, &attributed("f", 20, "k", None, &[]), day + 3 * 86_400 + 90);
        let mut merged = l.totals.clone();
        merged.add_difference(&before, &theirs.totals);
        assert_eq!(merged.hours.last().map(|b| (b.requests, b.micros)), Some((3, 71)));
    }

    #[test]
    fn the_saving_against_always_premium_is_what_premium_would_have_cost_less_what_was_paid() {
        let mut l = OutcomeLedger::default();
        let mut o = outcome("a", "cheap", 100);
        o.premium_micros = 1_600;
        apply(&mut l, &OutcomeOp::Record { outcome: o }, 10);
        let mut o = outcome("b", "premium", 900);
        o.premium_micros = 900;
        apply(&mut l, &OutcomeOp::Record { outcome: o }, 11);
        let r = report(&l.totals.tiers);
        assert_eq!(r["saved_vs_premium_usd"], "0.001500");
        assert_eq!(r["tiers"][0]["premium_equivalent_usd"], "0.001600");
    }

    #[test]
    fn the_dearest_requests_are_at_most_ten_and_a_report_without_grouping_has_no_groups() {
        let mut l = OutcomeLedger::default();
        for i in 0..30u64 {
            apply(&mut l, &attributed(&format!("r{i}"), i * 10, "k", None, &[]), 1_000 + i);
        }
        let OutcomeReply::Recent { top, groups, .. } = recent_report(&l, 0, None, None, 5) else { panic!() };
        assert_eq!(top.len(), TOP_REQUESTS);
        assert_eq!(top[0].id, "r29");
        assert!(groups.is_empty());
    }

    #[test]
    fn feedback_counts_resolutions_per_tier_and_cost_per_resolution_follows() {
        let mut l = OutcomeLedger::default();
        apply_(&mut l, &OutcomeOp::Record { outcome: outcome("a", "cheap", 300) }, 10);
        apply_(&mut l, &OutcomeOp::Record { outcome: outcome("b", "cheap", 300) }, 10);
        apply_(&mut l, &OutcomeOp::Record { outcome: outcome("c", "premium", 5000) }, 10);
        let r = apply_(&mut l, &OutcomeOp::Feedback { request_id: "a".into(), resolved: true }, 11);
        assert_eq!(r, OutcomeReply::FeedbackRecorded { request_id: "a".into(), tier: "cheap".into(), resolved: true });
        apply_(&mut l, &OutcomeOp::Feedback { request_id: "b".into(), resolved: false }, 11);
        let cheap = &l.totals.tiers[0];
        assert_eq!((cheap.requests, cheap.resolved, cheap.unresolved, cheap.micros), (2, 1, 1, 600));
        let report = report(l.tiers());
        assert_eq!(report["tiers"][0]["cost_per_resolution_usd"], "0.000600");
        assert_eq!(report["tiers"][1]["cost_per_resolution_usd"], Value::Null);
    }

    #[test]
    fn changed_feedback_moves_the_request_rather_than_counting_it_twice() {
        let mut l = OutcomeLedger::default();
        apply_(&mut l, &OutcomeOp::Record { outcome: outcome("a", "cheap", 1) }, 0);
        for resolved in [true, true, false] {
            apply_(&mut l, &OutcomeOp::Feedback { request_id: "a".into(), resolved }, 1);
        }
        assert_eq!((l.totals.tiers[0].resolved, l.totals.tiers[0].unresolved), (0, 1));
    }

    #[test]
    fn a_retried_record_is_counted_once() {
        let mut l = OutcomeLedger::default();
        for _ in 0..2 {
            apply_(&mut l, &OutcomeOp::Record { outcome: outcome("a", "cheap", 7) }, 0);
        }
        assert_eq!((l.totals.tiers[0].requests, l.totals.tiers[0].micros), (1, 7));
    }

    #[test]
    fn feedback_for_unknown_or_forgotten_requests_is_refused() {
        let mut l = OutcomeLedger::default();
        apply_(&mut l, &OutcomeOp::Record { outcome: outcome("old", "cheap", 1) }, 0);
        let later = FEEDBACK_WINDOW_SECS + 10;
        let r = apply_(&mut l, &OutcomeOp::Feedback { request_id: "old".into(), resolved: true }, later);
        assert_eq!(r, OutcomeReply::UnknownRequest { request_id: "old".into() });
        let r = apply_(&mut l, &OutcomeOp::Feedback { request_id: "never".into(), resolved: true }, 0);
        assert!(matches!(r, OutcomeReply::UnknownRequest { .. }));
    }

    #[test]
    fn the_ring_stays_bounded_and_each_record_touches_one_small_chunk() {
        let mut l = OutcomeLedger::default();
        for i in 0..(RECENT_CAPACITY + 50) {
            let (_, touched) = apply(&mut l, &OutcomeOp::Record { outcome: outcome(&format!("r{i}"), "cheap", 1) }, 5);
            let rollups = [Some(0), Some(rollup::HOUR_SLOTS)];
            assert_eq!(touched, Touched { totals: true, chunk: Some((i % RECENT_CAPACITY) / RECENT_CHUNK), rollups });
        }
        assert_eq!(l.totals.tiers[0].requests, (RECENT_CAPACITY + 50) as u64);
        // The oldest 50 were overwritten; the rest can still take feedback.
        assert!(matches!(
            apply_(&mut l, &OutcomeOp::Feedback { request_id: "r10".into(), resolved: true }, 6),
            OutcomeReply::UnknownRequest { .. }
        ));
        assert!(matches!(
            apply_(&mut l, &OutcomeOp::Feedback { request_id: "r60".into(), resolved: true }, 6),
            OutcomeReply::FeedbackRecorded { .. }
        ));
        let chunk = serde_json::to_vec(&l.chunk(0)).unwrap_or_default();
        assert!(chunk.len() < 8 * 1024, "a chunk serialises to {} bytes", chunk.len());
    }

    #[test]
    fn a_ledger_rebuilt_from_its_stored_parts_is_the_same_ledger() {
        let mut l = OutcomeLedger::default();
        for i in 0..100 {
            apply_(&mut l, &OutcomeOp::Record { outcome: outcome(&format!("r{i}"), "cheap", 1) }, 5);
        }
        let chunks = (0..RECENT_CHUNKS).map(|c| Some(l.chunk(c))).collect();
        let rollups = (0..ROLLUP_SLOTS).map(|slot| (slot, l.rollup(slot)));
        assert_eq!(OutcomeLedger::from_parts(l.totals.clone(), chunks).with_rollups(rollups), l);
        let mut partial = OutcomeLedger::from_parts(l.totals.clone(), vec![]);
        assert!(matches!(
            apply_(&mut partial, &OutcomeOp::Feedback { request_id: "r1".into(), resolved: true }, 6),
            OutcomeReply::UnknownRequest { .. }
        ));
    }

    #[test]
    fn export_returns_requests_with_feedback_oldest_first_with_tier_and_escalation() {
        let mut l = OutcomeLedger::default();
        // Wrap the ring so the oldest slot is not slot 0.
        for i in 0..(RECENT_CAPACITY - 1) {
            apply_(&mut l, &OutcomeOp::Record { outcome: outcome(&format!("f{i}"), "cheap", 1) }, 0);
        }
        let escalated = RequestOutcome { escalated: true, ..outcome("b", "premium", 9) };
        apply_(&mut l, &OutcomeOp::Record { outcome: outcome("a", "cheap", 1) }, 100);
        apply_(&mut l, &OutcomeOp::Record { outcome: escalated }, 101);
        apply_(&mut l, &OutcomeOp::Record { outcome: outcome("c", "premium", 5) }, 102);
        apply_(&mut l, &OutcomeOp::Record { outcome: outcome("no-feedback", "cheap", 1) }, 103);
        for (id, resolved) in [("c", true), ("b", true), ("a", false), ("a", true)] {
            apply_(&mut l, &OutcomeOp::Feedback { request_id: id.into(), resolved }, 110);
        }
        let (reply, touched) = apply(&mut l, &OutcomeOp::Export, 120);
        assert_eq!(touched, Touched::default(), "an export writes nothing");
        let OutcomeReply::Export { requests } = reply else { panic!("{reply:?}") };
        let got: Vec<(&str, &str, bool, Option<bool>, u64)> =
            requests.iter().map(|r| (r.id.as_str(), r.tier.as_str(), r.escalated, r.resolved, r.at)).collect();
        assert_eq!(
            got,
            [
                ("a", "cheap", false, Some(true), 100),
                ("b", "premium", true, Some(true), 101),
                ("c", "premium", false, Some(true), 102)
            ]
        );
        let ndjson = export_ndjson(&requests);
        assert_eq!(ndjson.lines().count(), 3);
        assert_eq!(
            ndjson.lines().nth(1),
            Some(r#"{"request_id":"b","tier":"premium","escalated":true,"resolved":true,"at":101}"#)
        );
        // Past the feedback window nothing is exported.
        let (late, _) = apply(&mut l, &OutcomeOp::Export, 102 + FEEDBACK_WINDOW_SECS + 1);
        assert_eq!(late, OutcomeReply::Export { requests: vec![] });
    }

    #[test]
    fn the_escalated_flag_round_trips_through_a_chunk_and_older_chunks_read_as_not_escalated() {
        let mut l = OutcomeLedger::default();
        apply_(
            &mut l,
            &OutcomeOp::Record { outcome: RequestOutcome { escalated: true, ..outcome("e", "premium", 1) } },
            0,
        );
        apply_(&mut l, &OutcomeOp::Record { outcome: outcome("n", "cheap", 1) }, 0);
        let json = serde_json::to_string(&l.chunk(0)).unwrap_or_default();
        assert_eq!(json.matches("escalated").count(), 1, "{json}");
        let old: RecentChunk = serde_json::from_str(r#"[{"id":"x","tier":"cheap","at":1}]"#).unwrap_or_default();
        assert_eq!(old[0].as_ref().map(|r| r.escalated), Some(false));
        let back = OutcomeLedger::from_parts(l.totals.clone(), vec![Some(l.chunk(0))]);
        assert_eq!(back.chunk(0), l.chunk(0));
        assert_eq!(back.totals, l.totals);
    }

    #[test]
    fn export_ops_and_replies_keep_their_wire_names() {
        assert_eq!(serde_json::to_string(&OutcomeOp::Export).unwrap_or_default(), r#"{"op":"export"}"#);
        let reply: OutcomeReply =
            serde_json::from_str(r#"{"result":"export","requests":[]}"#).unwrap_or(OutcomeReply::Recorded);
        assert_eq!(reply, OutcomeReply::Export { requests: vec![] });
    }

    #[test]
    fn training_labels_follow_the_documented_rule() {
        let two: Vec<String> = vec!["cheap".into(), "premium".into()];
        let label = |tier: &str, escalated: bool, resolved: bool| training_label(tier, escalated, resolved, &two);
        assert_eq!(label("cheap", false, true), Ok((1.0, 1.0)));
        assert_eq!(label("cheap", false, false), Ok((0.0, 1.0)));
        assert_eq!(label("cheap", true, true), Ok((0.0, 1.0)));
        assert_eq!(label("cheap", true, false), Ok((0.0, 0.0)));
        assert_eq!(label("premium", false, true), Err(SkipReason::NotOnTheCheapestTier));
        assert_eq!(label("pinned", false, true), Err(SkipReason::Pinned));
        assert_eq!(label("gone", false, true), Err(SkipReason::UnknownTier));
        let three: Vec<String> = vec!["cheap".into(), "balanced".into(), "premium".into()];
        let label = |tier: &str, escalated: bool, resolved: bool| training_label(tier, escalated, resolved, &three);
        assert_eq!(label("cheap", true, false), Err(SkipReason::EscalatedUnresolvedBelowPremium));
        assert_eq!(label("balanced", true, false), Ok((0.0, 0.0)));
        assert_eq!(label("balanced", true, true), Ok((0.0, 1.0)));
        assert_eq!(label("balanced", false, false), Err(SkipReason::NotOnTheCheapestTier));
    }

    #[test]
    fn cache_hits_record_the_dollars_they_avoided() {
        let mut l = OutcomeLedger::default();
        let hit = RequestOutcome { cache_hit: true, saved_micros: 900, ..outcome("h", "premium", 0) };
        apply_(&mut l, &OutcomeOp::Record { outcome: hit }, 0);
        assert_eq!((l.totals.tiers[0].cache_hits, l.totals.tiers[0].cache_saved_micros), (1, 900));
    }

    #[test]
    fn feedback_bodies_are_validated() {
        let ok = parse_feedback(br#"{"request_id":"req_0123456789abcdef0123456789abcdef","resolved":true}"#);
        assert!(ok.is_ok());
        for bad in [
            &br#"{"request_id":"nope","resolved":true}"#[..],
            br#"{"request_id":"req_0123456789abcdef0123456789abcdef"}"#,
            br#"{"request_id":"req_0123456789abcdef0123456789abcdef","resolved":"yes"}"#,
            br#"["req_0123456789abcdef0123456789abcdef",true]"#,
            b"not json",
        ] {
            let err = parse_feedback(bad).err().map(|e| (e.status, e.code));
            assert_eq!(err, Some((400, "invalid_feedback")), "{}", String::from_utf8_lossy(bad));
        }
    }
}
