//! Spend per key, user, tag, model and tier over time: one bucket per clock
//! hour (the last [`HOUR_SLOTS`]) and per UTC day (the last [`DAY_SLOTS`]),
//! each a [`Rollup`] the host stores under its own slot key, so recording a
//! request rewrites two small documents (its hour's and its day's), never
//! the history.
//!
//! State stays bounded however many distinct values a tenant sends: a bucket
//! keeps at most [`ROLLUP_GROUPS`] values per dimension. A value new to a
//! full bucket takes the place of the cheapest one when its request costs
//! more than that value's whole bucket so far, otherwise it is counted under
//! [`OTHER`]; what a displaced value spent moves to [`OTHER`] too. Every
//! request is therefore counted exactly once per dimension and bucket, and
//! the sums stay exact; only which values are named is bounded.
//!
//! A slot holds the bucket whose start it was last written for; a bucket
//! found in a slot with an older start is an expired one and reads as empty.

use super::{Attribution, Dimension, Group, SPEND_DAYS, SPEND_HOURS};
use serde::{Deserialize, Serialize};

/// How many values of one dimension a bucket names (the rest are [`OTHER`]).
pub const ROLLUP_GROUPS: usize = 32;
/// Where the spend of values past [`ROLLUP_GROUPS`] is counted.
pub const OTHER: &str = "(other)";
/// The value of a request without a key, user, tag or model.
pub const NONE: &str = "(none)";
/// Hourly buckets kept.
pub const HOUR_SLOTS: usize = SPEND_HOURS as usize;
/// Daily buckets kept.
pub const DAY_SLOTS: usize = SPEND_DAYS as usize;
/// Slots in all: the hours first, then the days.
pub const ROLLUP_SLOTS: usize = HOUR_SLOTS + DAY_SLOTS;

/// The length of a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Hour,
    Day,
}

impl Period {
    pub fn parse(name: &str) -> Option<Period> {
        match name {
            "hour" => Some(Period::Hour),
            "day" => Some(Period::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }

    pub fn secs(self) -> u64 {
        match self {
            Period::Hour => 3600,
            Period::Day => 86_400,
        }
    }

    /// How many buckets of this length are kept.
    pub fn kept(self) -> u64 {
        match self {
            Period::Hour => SPEND_HOURS,
            Period::Day => SPEND_DAYS,
        }
    }

    /// The start of the bucket `at` falls in.
    pub fn start(self, at: u64) -> u64 {
        at - at % self.secs()
    }

    /// The slot the bucket starting at `start` is stored in.
    pub fn slot(self, start: u64) -> usize {
        let index = (start / self.secs()) % self.kept();
        // In range by construction (a remainder of `kept`).
        let index = usize::try_from(index).unwrap_or(0);
        match self {
            Period::Hour => index,
            Period::Day => HOUR_SLOTS + index,
        }
    }

    /// The starts of the buckets from the one `since` falls in to the one
    /// `now` falls in, oldest first, at most [`Period::kept`] (the newest).
    pub fn starts(self, since: u64, now: u64) -> Vec<u64> {
        let (last, step) = (self.start(now), self.secs());
        let oldest_kept = last.saturating_sub((self.kept() - 1) * step);
        let first = self.start(since.min(now)).max(oldest_kept);
        (0..).map(|k| first + k * step).take_while(|s| *s <= last).collect()
    }

    /// The bucket length for a range starting at `since`: hours while the
    /// hourly buckets still cover it, days beyond.
    pub fn for_range(since: u64, now: u64) -> Period {
        if since >= Period::Hour.start(now).saturating_sub((SPEND_HOURS - 1) * 3600) {
            Period::Hour
        } else {
            Period::Day
        }
    }
}

/// One value's spend in a bucket, stored as `[value, requests, tokens, micros]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry(pub String, pub u64, pub u64, pub u64);

impl Entry {
    fn amounts(&self) -> [u64; 3] {
        [self.1, self.2, self.3]
    }

    fn add(&mut self, [requests, tokens, micros]: [u64; 3]) {
        self.1 = self.1.saturating_add(requests);
        self.2 = self.2.saturating_add(tokens);
        self.3 = self.3.saturating_add(micros);
    }

    fn subtract(&mut self, [requests, tokens, micros]: [u64; 3]) {
        self.1 = self.1.saturating_sub(requests);
        self.2 = self.2.saturating_sub(tokens);
        self.3 = self.3.saturating_sub(micros);
    }
}

/// One bucket: spend per value of each dimension.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollup {
    /// Unix seconds the hour or day starts.
    pub start: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<Entry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user: Vec<Entry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag: Vec<Entry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model: Vec<Entry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tier: Vec<Entry>,
}

const DIMENSIONS: [Dimension; 5] = [Dimension::Key, Dimension::User, Dimension::Tag, Dimension::Model, Dimension::Tier];

/// The values a request counts under in `dimension` (a request with two
/// tags counts under each; one without a value under [`NONE`]).
pub fn values_of(dimension: Dimension, tier: &str, attribution: &Attribution) -> Vec<String> {
    let or_none = |v: Option<&String>| v.filter(|v| !v.is_empty()).cloned().unwrap_or_else(|| NONE.to_owned());
    match dimension {
        Dimension::Key => vec![or_none(attribution.key.as_ref())],
        Dimension::User => vec![or_none(attribution.user.as_ref())],
        Dimension::Model => vec![or_none(Some(&attribution.model))],
        Dimension::Tier => vec![tier.to_owned()],
        Dimension::Tag if attribution.tags.is_empty() => vec![NONE.to_owned()],
        Dimension::Tag => attribution.tags.clone(),
    }
}

impl Rollup {
    pub fn entries(&self, dimension: Dimension) -> &[Entry] {
        match dimension {
            Dimension::Key => &self.key,
            Dimension::User => &self.user,
            Dimension::Tag => &self.tag,
            Dimension::Model => &self.model,
            Dimension::Tier => &self.tier,
        }
    }

    fn entries_mut(&mut self, dimension: Dimension) -> &mut Vec<Entry> {
        match dimension {
            Dimension::Key => &mut self.key,
            Dimension::User => &mut self.user,
            Dimension::Tag => &mut self.tag,
            Dimension::Model => &mut self.model,
            Dimension::Tier => &mut self.tier,
        }
    }

    /// Count one request in every dimension.
    pub fn record(&mut self, tier: &str, attribution: &Attribution, tokens: u64, micros: u64) {
        for dimension in DIMENSIONS {
            for value in values_of(dimension, tier, attribution) {
                add(self.entries_mut(dimension), &value, [1, tokens, micros]);
            }
        }
    }

    /// `self += after - before`, value by value: how a store that lost a
    /// compare-and-swap race carries one writer's change to a bucket over
    /// to the bucket another writer changed meanwhile. A bucket of a newer
    /// period replaces an older one; a change to an older one is dropped.
    pub fn add_difference(&mut self, before: &Rollup, after: &Rollup) {
        if after.start < self.start {
            return;
        }
        if after.start > self.start {
            *self = Rollup { start: after.start, ..Rollup::default() };
        }
        let empty = Rollup::default();
        let before = if before.start == after.start { before } else { &empty };
        for dimension in DIMENSIONS {
            let (was, now) = (before.entries(dimension), after.entries(dimension));
            let values = now.iter().chain(was).map(|e| e.0.as_str());
            let mut seen: Vec<&str> = Vec::new();
            for value in values {
                if seen.contains(&value) {
                    continue;
                }
                seen.push(value);
                let find = |list: &[Entry]| list.iter().find(|e| e.0 == value).map(Entry::amounts).unwrap_or_default();
                let (old, new) = (find(was), find(now));
                let gained: [u64; 3] = std::array::from_fn(|i| new[i].saturating_sub(old[i]));
                let lost: [u64; 3] = std::array::from_fn(|i| old[i].saturating_sub(new[i]));
                let into = self.entries_mut(dimension);
                if gained != [0; 3] {
                    add(into, value, gained);
                }
                if lost != [0; 3] {
                    subtract(into, value, lost);
                }
            }
        }
    }

    /// The bucket's spend per value of `dimension`, dearest first.
    pub fn groups(&self, dimension: Dimension) -> Vec<Group> {
        let mut groups: Vec<Group> = self.entries(dimension).iter().map(group_of).collect();
        sort_groups(&mut groups);
        groups
    }
}

fn group_of(e: &Entry) -> Group {
    Group { value: e.0.clone(), requests: e.1, tokens: e.2, micros: e.3 }
}

/// Dearest first; ties by value, so the order does not depend on the store.
pub fn sort_groups(groups: &mut [Group]) {
    groups.sort_by(|a, b| b.micros.cmp(&a.micros).then(a.value.cmp(&b.value)));
}

/// Add `amounts` to `value`'s entry, making room as the module says.
fn add(list: &mut Vec<Entry>, value: &str, amounts: [u64; 3]) {
    if let Some(e) = list.iter_mut().find(|e| e.0 == value) {
        e.add(amounts);
        return;
    }
    let named = list.iter().filter(|e| e.0 != OTHER).count();
    if named < ROLLUP_GROUPS {
        list.push(Entry(value.to_owned(), amounts[0], amounts[1], amounts[2]));
        return;
    }
    let cheapest = list
        .iter()
        .enumerate()
        .filter(|(_, e)| e.0 != OTHER)
        .min_by(|(_, a), (_, b)| a.3.cmp(&b.3).then(b.0.cmp(&a.0)))
        .map(|(i, e)| (i, e.3));
    let moved = match cheapest {
        Some((at, micros)) if micros < amounts[2] => {
            let displaced =
                std::mem::replace(&mut list[at], Entry(value.to_owned(), amounts[0], amounts[1], amounts[2]));
            displaced.amounts()
        }
        _ => amounts,
    };
    match list.iter_mut().find(|e| e.0 == OTHER) {
        Some(other) => other.add(moved),
        None => list.push(Entry(OTHER.to_owned(), moved[0], moved[1], moved[2])),
    }
}

/// Take `amounts` off `value`'s entry (or off [`OTHER`] when this bucket
/// counts the value there); an entry left at zero is dropped.
fn subtract(list: &mut Vec<Entry>, value: &str, amounts: [u64; 3]) {
    let at = list.iter().position(|e| e.0 == value).or_else(|| list.iter().position(|e| e.0 == OTHER));
    if let Some(at) = at {
        list[at].subtract(amounts);
        if list[at].amounts() == [0; 3] {
            list.remove(at);
        }
    }
}

/// Spend per value of `dimension` over the buckets `rollups` (the slots of
/// one period's `starts`; a slot holding another bucket is skipped), in
/// total and per bucket.
pub fn over_range<'a>(
    rollups: impl IntoIterator<Item = &'a Rollup>,
    starts: &[u64],
    dimension: Dimension,
) -> (Vec<Group>, Vec<PeriodGroups>) {
    let mut total: Vec<Entry> = Vec::new();
    let mut series: Vec<PeriodGroups> = Vec::new();
    for rollup in rollups.into_iter().filter(|r| starts.contains(&r.start)) {
        // An empty bucket is left out; so is a slot read twice.
        if rollup.entries(dimension).is_empty() || series.iter().any(|s| s.start == rollup.start) {
            continue;
        }
        for e in rollup.entries(dimension) {
            match total.iter_mut().find(|t| t.0 == e.0) {
                Some(t) => t.add(e.amounts()),
                None => total.push(e.clone()),
            }
        }
        series.push(PeriodGroups { start: rollup.start, groups: rollup.groups(dimension) });
    }
    series.sort_by_key(|s| s.start);
    let mut groups: Vec<Group> = total.iter().map(group_of).collect();
    sort_groups(&mut groups);
    (groups, series)
}

/// One bucket's spend per value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodGroups {
    pub start: u64,
    pub groups: Vec<Group>,
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn attribution(key: &str, user: &str, tags: &[&str]) -> Attribution {
        Attribution {
            model: "m".into(),
            key: Some(key.into()),
            user: Some(user.into()),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn sum(r: &Rollup, d: Dimension) -> [u64; 3] {
        r.entries(d).iter().fold([0; 3], |mut s, e| {
            s[0] += e.1;
            s[1] += e.2;
            s[2] += e.3;
            s
        })
    }

    #[test]
    fn a_request_counts_once_per_dimension_and_twice_under_two_tags() {
        let mut r = Rollup { start: 3600, ..Rollup::default() };
        r.record("cheap", &attribution("k1", "u1", &["a", "b"]), 10, 100);
        r.record("premium", &Attribution::default(), 5, 50);
        assert_eq!(sum(&r, Dimension::Key), [2, 15, 150]);
        assert_eq!(sum(&r, Dimension::User), [2, 15, 150]);
        assert_eq!(sum(&r, Dimension::Tier), [2, 15, 150]);
        assert_eq!(sum(&r, Dimension::Tag), [3, 25, 250]);
        let users: Vec<String> = r.groups(Dimension::User).into_iter().map(|g| g.value).collect();
        assert_eq!(users, ["u1", NONE]);
    }

    #[test]
    fn a_full_bucket_keeps_exact_sums_names_the_dearest_values_and_stays_bounded() {
        let mut r = Rollup::default();
        // A flood of cheap fresh users, then one expensive one late.
        for i in 0..1000u64 {
            r.record("cheap", &attribution("k", &format!("u{i}"), &[]), 1, 10 + i % 7);
        }
        r.record("cheap", &attribution("k", "whale", &[]), 1, 5_000);
        r.record("cheap", &attribution("k", "whale", &[]), 1, 5_000);
        assert!(r.user.len() <= ROLLUP_GROUPS + 1, "{}", r.user.len());
        let expected_micros: u64 = (0..1000u64).map(|i| 10 + i % 7).sum::<u64>() + 10_000;
        assert_eq!(sum(&r, Dimension::User), [1002, 1002, expected_micros]);
        assert_eq!(r.groups(Dimension::User)[0].value, OTHER);
        assert_eq!(r.user.iter().filter(|e| e.0 != OTHER).count(), ROLLUP_GROUPS);
        let whale = r.groups(Dimension::User).into_iter().find(|g| g.value == "whale").unwrap();
        assert_eq!((whale.requests, whale.micros), (2, 10_000));
    }

    #[test]
    fn two_writers_changes_to_one_bucket_merge_and_a_newer_bucket_replaces_an_older_one() {
        let mut base = Rollup { start: 7200, ..Rollup::default() };
        base.record("cheap", &attribution("k1", "u1", &[]), 1, 10);
        let mut mine = base.clone();
        mine.record("cheap", &attribution("k1", "u2", &[]), 2, 20);
        let mut theirs = base.clone();
        theirs.record("cheap", &attribution("k2", "u1", &[]), 4, 40);
        let mut stored = theirs.clone();
        stored.add_difference(&base, &mine);
        let mut both = base.clone();
        both.record("cheap", &attribution("k2", "u1", &[]), 4, 40);
        both.record("cheap", &attribution("k1", "u2", &[]), 2, 20);
        for d in DIMENSIONS {
            assert_eq!(stored.groups(d), both.groups(d), "{d:?}");
        }
        // A change made to the next hour's bucket replaces this one.
        let next = Rollup { start: 7200 + 48 * 3600, ..Rollup::default() };
        let mut next_after = next.clone();
        next_after.record("cheap", &attribution("k9", "u9", &[]), 1, 1);
        stored.add_difference(&next, &next_after);
        assert_eq!(stored, next_after);
        // And a stale writer's change to the old bucket is dropped.
        stored.add_difference(&base, &mine);
        assert_eq!(stored, next_after);
    }

    #[test]
    fn merging_a_displacement_moves_spend_to_other_without_counting_it_twice() {
        let mut base = Rollup::default();
        for i in 0..ROLLUP_GROUPS {
            base.record("t", &attribution("k", &format!("u{i}"), &[]), 1, 10);
        }
        let mut mine = base.clone();
        mine.record("t", &attribution("k", "big", &[]), 1, 1000);
        let mut stored = base.clone();
        stored.record("t", &attribution("k", "u0", &[]), 1, 10);
        stored.add_difference(&base, &mine);
        assert_eq!(sum(&stored, Dimension::User), [ROLLUP_GROUPS as u64 + 2, ROLLUP_GROUPS as u64 + 2, 320 + 1010]);
        assert!(stored.user.iter().any(|e| e.0 == "big"));
    }

    #[test]
    fn buckets_of_a_range_are_the_kept_ones_oldest_first_in_their_own_slots() {
        let now = 100 * 86_400 + 5 * 3600 + 17;
        let hours = Period::Hour.starts(now - 3 * 3600, now);
        assert_eq!(hours.len(), 4);
        assert_eq!(hours.last(), Some(&(now - 17)));
        assert_eq!(Period::Hour.starts(0, now).len(), HOUR_SLOTS);
        assert_eq!(Period::Day.starts(0, now).len(), DAY_SLOTS);
        let slots: std::collections::BTreeSet<usize> = Period::Hour
            .starts(0, now)
            .into_iter()
            .map(|s| Period::Hour.slot(s))
            .chain(Period::Day.starts(0, now).into_iter().map(|s| Period::Day.slot(s)))
            .collect();
        assert_eq!(slots.len(), ROLLUP_SLOTS, "every kept bucket has its own slot");
        assert_eq!(Period::for_range(now - 24 * 3600, now), Period::Hour);
        assert_eq!(Period::for_range(now - 3 * 86_400, now), Period::Day);
    }
}
