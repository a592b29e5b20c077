//! Cooldowns: a model that keeps failing is passed over for a while.
//!
//! Without them every request would try the first model of its chain again,
//! even during an outage: a failed round trip added to every request, and a
//! provider that is rate-limiting us asked again at once. A host keeps one
//! [`Cooldowns`] table per instance (a Worker isolate, an Envoy wasm VM) and
//! feeds it every attempt's outcome; a [`crate::engine::Plan`] consults it
//! when it orders its chain.
//!
//! The table holds facts, the tenant's `routing.cooldown` decides: a model is
//! cooling down for a tenant while
//! - it has failed at least `failures` times in a row (a failed attempt is
//!   what the plan falls back on: 401, 403, 408, 429, 5xx, a status that is
//!   no answer, a timeout or a broken connection) and its last failure was
//!   less than `seconds` ago; or
//! - a failure carried a `retry-after` (seconds or an HTTP date) that has
//!   not passed yet, capped at [`MAX_RETRY_AFTER_SECONDS`].
//!
//! Any answer that is not a failure removes the model from the table. Once
//! `seconds` have passed the model is tried again; one more failure cools
//! it again at once, a success clears it. Only tenants that turn cooldowns
//! on record into the table and read from it; the failures they see are
//! shared, because provider keys belong to the host, not to a tenant.
//!
//! Nothing here reads a clock: every time is passed in, in Unix seconds.

use crate::provider::ModelRef;
use crate::upstream;
use serde::{Deserialize, Serialize};

/// Default consecutive failures that start a cooldown.
pub const DEFAULT_FAILURES: u32 = 3;
/// Default seconds a model is passed over after its last failure.
pub const DEFAULT_SECONDS: u64 = 30;
/// Bounds of `routing.cooldown.failures` and `routing.cooldown.seconds`.
pub const MAX_FAILURES: u32 = 100;
pub const MAX_SECONDS: u64 = 3600;
/// The longest `retry-after` honoured: a provider (or anything between us
/// and it) cannot take a model out for longer than this with one header.
pub const MAX_RETRY_AFTER_SECONDS: u64 = 300;
/// Models a table tracks at most. Only failing models are in it (an answer
/// removes its model), so this is reached only when more distinct models
/// fail than any sane configuration names; then the entry whose last
/// failure is oldest makes room.
pub const DEFAULT_CAPACITY: usize = 256;

/// `routing.cooldown` as written. Present: cooldowns are on for the tenant.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawCooldown {
    /// Failed attempts in a row (429, 5xx, 401/403/408, timeout or connection
    /// failure) after which a model is passed over (1-100; default 3).
    #[serde(default)]
    pub failures: Option<u32>,
    /// How long after its last failure the model is passed over, in seconds
    /// (1-3600; default 30).
    #[serde(default)]
    pub seconds: Option<u64>,
}

/// Validated cooldown settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CooldownSettings {
    pub failures: u32,
    pub seconds: u64,
}

impl Default for CooldownSettings {
    fn default() -> Self {
        CooldownSettings { failures: DEFAULT_FAILURES, seconds: DEFAULT_SECONDS }
    }
}

impl CooldownSettings {
    /// Validate; errors are `(path under routing.cooldown, message)`.
    pub fn from_raw(raw: RawCooldown) -> Result<CooldownSettings, (String, String)> {
        let failures = raw.failures.unwrap_or(DEFAULT_FAILURES);
        if !(1..=MAX_FAILURES).contains(&failures) {
            return Err(("failures".into(), format!("must be between 1 and {MAX_FAILURES}")));
        }
        let seconds = raw.seconds.unwrap_or(DEFAULT_SECONDS);
        if !(1..=MAX_SECONDS).contains(&seconds) {
            return Err(("seconds".into(), format!("must be between 1 and {MAX_SECONDS}")));
        }
        Ok(CooldownSettings { failures, seconds })
    }
}

/// What one attempt tells a host's [`Cooldowns`]: made by
/// [`crate::engine::Plan::attempt_ended`], applied with [`Cooldowns::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CooldownUpdate {
    /// The tenant does not use cooldowns: nothing to record.
    Nothing,
    /// The attempt failed at `at`; `retry_after` seconds from then, if the
    /// provider said so (already capped).
    Failed { model: ModelRef, at: u64, retry_after: Option<u64>, settings: CooldownSettings },
    /// The provider answered: the model's failures are forgotten.
    Answered { model: ModelRef },
}

impl CooldownUpdate {
    /// The update for an attempt at `model` that ended with `status` (None:
    /// timeout or connection failure) and the `retry-after` header value
    /// `retry_after`, for a tenant whose settings are `settings`.
    pub fn for_attempt(
        settings: Option<CooldownSettings>,
        model: &ModelRef,
        status: Option<u16>,
        retry_after: Option<&str>,
        now: u64,
    ) -> CooldownUpdate {
        let Some(settings) = settings else { return CooldownUpdate::Nothing };
        let failed = status.is_none_or(|s| upstream::is_retryable(s) || !upstream::can_pass_through(s));
        if failed {
            let retry_after =
                retry_after.and_then(|v| parse_retry_after(v, now)).map(|s| s.min(MAX_RETRY_AFTER_SECONDS));
            CooldownUpdate::Failed { model: model.clone(), at: now, retry_after, settings }
        } else {
            CooldownUpdate::Answered { model: model.clone() }
        }
    }
}

/// One failing model.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    model: ModelRef,
    /// Failed attempts since its last answer (saturating).
    failures: u32,
    last_failure: u64,
    /// Not before this time, said a `retry-after` (0: none).
    retry_until: u64,
}

/// A host instance's table of failing models. Bounded: at most its capacity
/// of entries, whatever the configurations and traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cooldowns {
    entries: Vec<Entry>,
    capacity: usize,
}

impl Default for Cooldowns {
    fn default() -> Self {
        Cooldowns::with_capacity(DEFAULT_CAPACITY)
    }
}

impl Cooldowns {
    pub fn new() -> Cooldowns {
        Cooldowns::default()
    }

    /// A table that tracks at most `capacity` models (at least one).
    pub fn with_capacity(capacity: usize) -> Cooldowns {
        Cooldowns { entries: Vec::new(), capacity: capacity.max(1) }
    }

    /// Models tracked (each has failed since its last answer).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entry(&self, model: &ModelRef) -> Option<&Entry> {
        self.entries.iter().find(|e| e.model == *model)
    }

    /// An attempt at `model` failed at `now`; `retry_after` is the wait the
    /// provider asked for, in seconds (capped at [`MAX_RETRY_AFTER_SECONDS`]).
    pub fn record_failure(&mut self, model: &ModelRef, now: u64, retry_after: Option<u64>) {
        let retry_until =
            retry_after.filter(|&s| s > 0).map_or(0, |s| now.saturating_add(s.min(MAX_RETRY_AFTER_SECONDS)));
        if let Some(e) = self.entries.iter_mut().find(|e| e.model == *model) {
            e.failures = e.failures.saturating_add(1);
            e.last_failure = e.last_failure.max(now);
            e.retry_until = e.retry_until.max(retry_until);
            return;
        }
        let entry = Entry { model: model.clone(), failures: 1, last_failure: now, retry_until };
        if self.entries.len() < self.capacity {
            self.entries.push(entry);
        } else if let Some(oldest) = self.entries.iter_mut().min_by_key(|e| e.last_failure.max(e.retry_until)) {
            *oldest = entry;
        }
    }

    /// `model` answered: forget its failures.
    pub fn record_success(&mut self, model: &ModelRef) {
        self.entries.retain(|e| e.model != *model);
    }

    /// Until when `model` is passed over by a tenant with `settings` (None:
    /// it is not cooling down at `now`).
    pub fn cooling_until(&self, model: &ModelRef, now: u64, settings: &CooldownSettings) -> Option<u64> {
        let e = self.entry(model)?;
        let by_count =
            if e.failures >= settings.failures { e.last_failure.saturating_add(settings.seconds) } else { 0 };
        let until = by_count.max(e.retry_until);
        (now < until).then_some(until)
    }

    /// Apply what an attempt said. Returns true when this update started a
    /// cooldown (for the settings of the tenant whose attempt it was): the
    /// model was not cooling down before it and is now.
    pub fn apply(&mut self, update: &CooldownUpdate) -> bool {
        match update {
            CooldownUpdate::Nothing => false,
            CooldownUpdate::Answered { model } => {
                self.record_success(model);
                false
            }
            CooldownUpdate::Failed { model, at, retry_after, settings } => {
                let before = self.cooling_until(model, *at, settings).is_some();
                self.record_failure(model, *at, *retry_after);
                !before && self.cooling_until(model, *at, settings).is_some()
            }
        }
    }
}

/// A `retry-after` header value as seconds from `now`: delta-seconds (a
/// fraction is rounded up) or an HTTP date (IMF-fixdate, `Sun, 06 Nov 1994
/// 08:49:37 GMT`; a date already past is 0). None if it is neither.
pub fn parse_retry_after(value: &str, now: u64) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(value.parse::<u64>().unwrap_or(u64::MAX));
    }
    if value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = value.parse().ok()?;
        // Bounded above by the caller's cap; `as` saturates.
        return (secs.is_finite() && secs >= 0.0).then(|| secs.ceil() as u64);
    }
    http_date(value).map(|at| at.saturating_sub(now))
}

/// IMF-fixdate (RFC 9110 §5.6.7) as Unix seconds.
fn http_date(value: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let mut parts = value.split_ascii_whitespace();
    let _weekday = parts.next()?.strip_suffix(',')?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month_name)? as u64 + 1;
    let year: u64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || !(1970..=9999).contains(&year) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn model(name: &str) -> ModelRef {
        ModelRef::parse(name).unwrap()
    }

    const N3_T30: CooldownSettings = CooldownSettings { failures: 3, seconds: 30 };

    #[test]
    fn a_model_cools_down_after_the_threshold_and_only_then() {
        let mut t = Cooldowns::new();
        let a = model("openai/gpt-4o");
        t.record_failure(&a, 100, None);
        t.record_failure(&a, 101, None);
        assert_eq!(t.cooling_until(&a, 102, &N3_T30), None);
        t.record_failure(&a, 102, None);
        assert_eq!(t.cooling_until(&a, 102, &N3_T30), Some(132));
        // Another tenant's threshold reads the same facts its own way.
        assert_eq!(t.cooling_until(&a, 102, &CooldownSettings { failures: 4, seconds: 30 }), None);
        assert_eq!(t.cooling_until(&model("openai/gpt-4o-mini"), 102, &N3_T30), None);
    }

    #[test]
    fn a_cooldown_expires_and_one_more_failure_starts_the_next() {
        let mut t = Cooldowns::new();
        let a = model("openai/gpt-4o");
        for at in [100, 100, 100] {
            t.record_failure(&a, at, None);
        }
        assert!(t.cooling_until(&a, 129, &N3_T30).is_some());
        assert_eq!(t.cooling_until(&a, 130, &N3_T30), None, "tried again after `seconds`");
        t.record_failure(&a, 130, None);
        assert_eq!(t.cooling_until(&a, 130, &N3_T30), Some(160));
    }

    #[test]
    fn an_answer_forgets_the_failures() {
        let mut t = Cooldowns::new();
        let a = model("openai/gpt-4o");
        for _ in 0..5 {
            t.record_failure(&a, 100, Some(60));
        }
        t.record_success(&a);
        assert!(t.is_empty());
        assert_eq!(t.cooling_until(&a, 100, &N3_T30), None);
        t.record_failure(&a, 101, None);
        t.record_failure(&a, 101, None);
        assert_eq!(t.cooling_until(&a, 101, &N3_T30), None, "the count starts again from zero");
    }

    #[test]
    fn retry_after_cools_at_once_and_is_capped() {
        let mut t = Cooldowns::new();
        let a = model("openai/gpt-4o");
        t.record_failure(&a, 100, Some(10));
        assert_eq!(t.cooling_until(&a, 100, &N3_T30), Some(110), "one 429 with retry-after is enough");
        assert_eq!(t.cooling_until(&a, 110, &N3_T30), None);
        let b = model("openai/gpt-4o-mini");
        t.record_failure(&b, 100, Some(86_400));
        assert_eq!(t.cooling_until(&b, 100, &N3_T30), Some(100 + MAX_RETRY_AFTER_SECONDS));
        // The longer of the two reasons wins.
        let c = model("openai/gpt-4.1");
        for _ in 0..3 {
            t.record_failure(&c, 100, Some(5));
        }
        assert_eq!(t.cooling_until(&c, 100, &N3_T30), Some(130));
        t.record_failure(&c, 100, Some(0));
        assert_eq!(t.cooling_until(&c, 100, &N3_T30), Some(130), "retry-after: 0 adds nothing");
    }

    #[test]
    fn the_table_is_bounded_and_keeps_the_freshest_failures() {
        let mut t = Cooldowns::with_capacity(4);
        for i in 0..100u64 {
            t.record_failure(&model(&format!("openai/m{i}")), 1000 + i, None);
        }
        assert_eq!(t.len(), 4);
        assert!(t.entry(&model("openai/m99")).is_some());
        assert!(t.entry(&model("openai/m0")).is_none());
        let d = Cooldowns::default();
        assert_eq!(d.capacity, DEFAULT_CAPACITY);
    }

    #[test]
    fn updates_say_when_a_cooldown_starts() {
        let mut t = Cooldowns::new();
        let a = model("openai/gpt-4o");
        let fail = |at| CooldownUpdate::for_attempt(Some(N3_T30), &a, Some(503), None, at);
        assert!(!t.apply(&fail(100)));
        assert!(!t.apply(&fail(100)));
        assert!(t.apply(&fail(100)), "the third failure starts it");
        assert!(!t.apply(&fail(101)), "already cooling");
        assert!(t.apply(&fail(140)), "a failed retry after expiry starts the next one");
        assert!(!t.apply(&CooldownUpdate::for_attempt(Some(N3_T30), &a, Some(200), None, 141)));
        assert!(t.is_empty());
        // A tenant without cooldowns records nothing.
        assert_eq!(CooldownUpdate::for_attempt(None, &a, Some(503), None, 1), CooldownUpdate::Nothing);
    }

    #[test]
    fn attempts_are_classified_as_the_plan_does() {
        let a = model("openai/gpt-4o");
        let failed = |status| {
            matches!(CooldownUpdate::for_attempt(Some(N3_T30), &a, status, None, 1), CooldownUpdate::Failed { .. })
        };
        for s in
            [None, Some(401), Some(403), Some(408), Some(429), Some(500), Some(529), Some(204), Some(304), Some(600)]
        {
            assert!(failed(s), "{s:?}");
        }
        for s in [Some(200), Some(302), Some(400), Some(404), Some(422)] {
            assert!(!failed(s), "{s:?}");
        }
        let u = CooldownUpdate::for_attempt(Some(N3_T30), &a, Some(429), Some("999999"), 1);
        assert!(matches!(u, CooldownUpdate::Failed { retry_after: Some(MAX_RETRY_AFTER_SECONDS), .. }));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("7", 0), Some(7));
        assert_eq!(parse_retry_after(" 0 ", 0), Some(0));
        assert_eq!(parse_retry_after("1.2", 0), Some(2));
        assert_eq!(parse_retry_after("99999999999999999999999", 0), Some(u64::MAX));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_700), Some(77));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_800), Some(0));
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(http_date("Tue, 29 Feb 2028 12:00:00 GMT"), Some(1_835_438_400));
        for bad in [
            "",
            "soon",
            "-1",
            "1e3",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun 06 Nov 1994",
        ] {
            assert_eq!(parse_retry_after(bad, 0), None, "{bad:?}");
        }
    }

    #[test]
    fn settings_validate_with_their_path() {
        assert_eq!(CooldownSettings::from_raw(RawCooldown::default()).unwrap(), CooldownSettings::default());
        let bad = CooldownSettings::from_raw(RawCooldown { failures: Some(0), seconds: None }).unwrap_err();
        assert_eq!(bad.0, "failures");
        let bad = CooldownSettings::from_raw(RawCooldown { failures: None, seconds: Some(3601) }).unwrap_err();
        assert_eq!(bad.0, "seconds");
    }
}
