//! Budget alerts: a limit crossing the tenant's soft threshold, or running
//! out, at any level (tenant, key, end user), once per event and window.
//!
//! Alerts are found where the spend changes: the tenant's single writer,
//! after it applies an op ([`super::apply`]), so every host finds the same
//! ones and each fires once however many instances serve the tenant. The
//! writer remembers which it fired ([`AlertMark`]) in the budget state, per
//! limit and period: a calendar limit alerts once per day or month, a
//! rolling-hour or per-minute limit at most once an hour. The alerts of an
//! apply wait in [`BudgetState::fired`] (not persisted) for the host to
//! take after it has persisted the state: it logs each as a structured
//! line and, when the tenant names a webhook, posts it signed
//! ([`webhook`]: HMAC-SHA256 over the timestamp and the body).

use super::scope::Level;
use super::{Amount, BudgetLimit, BudgetState, Budgets, Window, iso8601};
use crate::pricing::format_usd;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Marks older than this are forgotten (the longest window is a month).
const MARK_TTL_SECS: u64 = 32 * 86_400;
/// The most marks kept; the oldest go first.
const MAX_MARKS: usize = 2048;

/// `budgets.alerts` as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawAlerts {
    /// An `https://` (or, for testing, `http://`) URL each alert is POSTed to, as JSON.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// The key the webhook's `x-tollgate-signature` is computed with (at least 16 characters).
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

/// Validated `budgets.alerts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertSettings {
    /// The tenant the alerts are about (set from the config's `tenant_id`).
    #[serde(default)]
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    pub secret: String,
}

impl std::fmt::Debug for Webhook {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url).finish_non_exhaustive()
    }
}

impl AlertSettings {
    pub(super) fn from_raw(raw: RawAlerts, problem: &mut impl FnMut(String, String)) -> AlertSettings {
        let webhook = match (raw.webhook_url, raw.webhook_secret) {
            (None, None) => None,
            (Some(url), Some(secret)) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) || url_parts(&url).is_none() {
                    problem("alerts.webhook_url".to_owned(), "must be an http(s) URL with a host".to_owned());
                }
                if secret.len() < 16 {
                    problem("alerts.webhook_secret".to_owned(), "must be at least 16 characters".to_owned());
                }
                Some(Webhook { url, secret })
            }
            _ => {
                problem("alerts".to_owned(), "set both `webhook_url` and `webhook_secret`, or neither".to_owned());
                None
            }
        };
        AlertSettings { tenant_id: String::new(), webhook }
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// Settled spend crossed `budgets.soft_threshold_pct` of the limit.
    SoftThreshold,
    /// The limit is used up, or a request was refused by it.
    Exhausted,
    /// The tenant's spend in the current clock hour is more than
    /// [`SPIKE_FACTOR`] times its hourly average over the day before.
    SpendSpike,
}

/// A spend spike is this many times the trailing day's hourly average...
pub const SPIKE_FACTOR: u64 = 4;
/// ...over at least this many hours of history...
const SPIKE_MIN_HISTORY_HOURS: u64 = 6;
/// ...and at least this much in the hour (a cent), so a quiet tenant's
/// first few requests are not a spike.
const SPIKE_MIN_MICROS: u64 = 10_000;

/// The tenant's dollars charged in one clock hour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourSpend {
    pub hour: u64,
    pub micros: u64,
}

/// Add `micros` charged at `now` to the tenant's hourly history (the last
/// 25 clock hours are kept).
pub(super) fn record_spend(state: &mut BudgetState, micros: u64, now: u64) {
    let hour = now / 3600;
    state.hourly.retain(|h| h.hour.saturating_add(25) > hour);
    if micros == 0 {
        return;
    }
    match state.hourly.iter_mut().find(|h| h.hour == hour) {
        Some(h) => h.micros = h.micros.saturating_add(micros),
        None => state.hourly.push(HourSpend { hour, micros }),
    }
}

/// Whether the current hour's spend is a spike: (this hour, the hourly average).
fn spike(state: &BudgetState, now: u64) -> Option<(u64, u64)> {
    let hour = now / 3600;
    let current = state.hourly.iter().find(|h| h.hour == hour).map_or(0, |h| h.micros);
    let oldest = state.hourly.iter().map(|h| h.hour).min()?;
    let span = hour.saturating_sub(oldest).min(24);
    if span < SPIKE_MIN_HISTORY_HOURS || current < SPIKE_MIN_MICROS {
        return None;
    }
    let before: u64 =
        state.hourly.iter().filter(|h| h.hour < hour && h.hour.saturating_add(24) >= hour).map(|h| h.micros).sum();
    let average = before / span;
    (current > average.saturating_mul(SPIKE_FACTOR)).then_some((current, average))
}

/// One alert, as logged and posted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    #[serde(rename = "type")]
    pub kind: String,
    pub event: AlertEvent,
    pub tenant_id: String,
    pub level: Level,
    /// The key's id or the user's (empty for the tenant).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub limit: String,
    pub window: Window,
    pub spent_tokens: u64,
    pub spent_usd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_usd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_requests: Option<u64>,
    pub at: String,
}

/// An alert fired (event, level, id, limit) in a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertMark {
    pub what: u64,
    pub period: u64,
    pub at: u64,
}

/// The period an alert is deduplicated in: the calendar period, or the
/// hour for rolling and per-minute limits.
fn period(window: Window, now: u64) -> u64 {
    match window {
        Window::Day | Window::Month => window.period_start(now),
        Window::RollingHour | Window::Minute => now - now % 3600,
    }
}

fn fingerprint(event: AlertEvent, level: Level, id: &str, limit: &str) -> u64 {
    let text = format!("{event:?}\u{0}{level:?}\u{0}{id}\u{0}{limit}");
    super::settled_fingerprint(&text)
}

/// Find the alerts the state calls for at `now` (after an op), fire the
/// ones not fired yet in their period (into `state.fired`) and remember
/// them. `refused`: the limit (level, id, name) a reserve was just refused
/// by, which counts as exhausted even while holds, not spend, fill it.
pub(super) fn scan(
    state: &mut BudgetState,
    budgets: &Budgets,
    key_limits: Option<(&str, &[BudgetLimit])>,
    refused: Option<(Level, String, String)>,
    now: u64,
) {
    let Some(settings) = budgets.alerts.as_deref() else { return };
    let mut found: Vec<(AlertEvent, Level, String, BudgetLimit, Amount)> = Vec::new();
    if let Some((current, average)) = spike(state, now) {
        // Reported against a pseudo-limit `spend_rate`: the hour's dollars
        // against four times the hourly average, once a day.
        let limit = BudgetLimit {
            name: "spend_rate".to_owned(),
            window: Window::Day,
            tokens: None,
            usd_micros: Some(average.saturating_mul(SPIKE_FACTOR)),
            requests: None,
        };
        let spent = Amount { micros: current, ..Amount::default() };
        found.push((AlertEvent::SpendSpike, Level::Tenant, String::new(), limit, spent));
    }
    let mut check = |level: Level, id: &str, limits: &[BudgetLimit], windows: &[super::WindowSpend]| {
        for limit in limits {
            let spent = super::spent_in(windows, limit);
            let refused_here =
                refused.as_ref().is_some_and(|(l, i, name)| *l == level && i == id && *name == limit.name);
            if refused_here || limit.reached_by(spent) {
                found.push((AlertEvent::Exhausted, level, id.to_owned(), limit.clone(), spent));
            } else if let Some(threshold) = budgets.soft_threshold
                && crossed(spent, limit, threshold)
            {
                found.push((AlertEvent::SoftThreshold, level, id.to_owned(), limit.clone(), spent));
            }
        }
    };
    check(Level::Tenant, "", &budgets.limits, &state.windows);
    for entry in &state.scoped {
        let limits: &[BudgetLimit] = match entry.level {
            Level::User => budgets.users.as_ref().map_or(&[], |u| u.limits_for(&entry.id)),
            Level::Key => key_limits.filter(|(id, _)| *id == entry.id).map_or(&[], |(_, l)| l),
            Level::Tenant => &[],
        };
        check(entry.level, &entry.id, limits, &entry.windows);
    }
    state.alerted.retain(|m| m.at.saturating_add(MARK_TTL_SECS) > now);
    for (event, level, id, limit, spent) in found {
        let what = fingerprint(event, level, &id, &limit.name);
        let period = period(limit.window, now);
        if state.alerted.iter().any(|m| m.what == what && m.period == period) {
            continue;
        }
        if event == AlertEvent::Exhausted {
            // Running out says more than nearing the end: the threshold
            // alert of the same period is not sent after it.
            let soft = fingerprint(AlertEvent::SoftThreshold, level, &id, &limit.name);
            state.alerted.push(AlertMark { what: soft, period, at: now });
        }
        state.alerted.push(AlertMark { what, period, at: now });
        state.fired.alerts.push(Alert {
            kind: "tollgate.budget_alert".to_owned(),
            event,
            tenant_id: settings.tenant_id.clone(),
            level,
            id,
            limit: limit.name.clone(),
            window: limit.window,
            spent_tokens: spent.tokens,
            spent_usd: format_usd(spent.micros),
            limit_tokens: limit.tokens,
            limit_usd: limit.usd_micros.map(format_usd),
            limit_requests: limit.requests,
            at: iso8601(now),
        });
    }
    if state.alerted.len() > MAX_MARKS {
        let excess = state.alerted.len() - MAX_MARKS;
        state.alerted.drain(..excess);
    }
}

fn crossed(spent: Amount, limit: &BudgetLimit, threshold: f64) -> bool {
    let over = |used: u64, of: Option<u64>| of.is_some_and(|l| l > 0 && used as f64 >= l as f64 * threshold);
    over(spent.tokens, limit.tokens) || over(spent.micros, limit.usd_micros) || over(spent.requests, limit.requests)
}

/// A webhook call for one alert: POST `body` to `url` with `headers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookCall {
    pub url: String,
    /// Scheme, `host[:port]` and path of `url`, for a host that needs them apart.
    pub authority: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The signed webhook call for `alert`, if the tenant names a webhook.
/// `x-tollgate-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
/// keyed with the tenant's secret; a receiver recomputes it, compares in
/// constant time and refuses an old `t`.
pub fn webhook(settings: &AlertSettings, alert: &Alert, now: u64) -> Option<WebhookCall> {
    let hook = settings.webhook.as_ref()?;
    let (_, authority, path) = url_parts(&hook.url)?;
    let body = serde_json::to_vec(alert).ok()?;
    let mut signed = format!("{now}.").into_bytes();
    signed.extend_from_slice(&body);
    let mac = crate::cache::hex(&hmac_sha256(hook.secret.as_bytes(), &signed));
    Some(WebhookCall {
        url: hook.url.clone(),
        authority: authority.to_owned(),
        path: path.to_owned(),
        headers: vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("x-tollgate-signature".to_owned(), format!("t={now},v1={mac}")),
            ("user-agent".to_owned(), "tollgate-alerts/1".to_owned()),
        ],
        body,
    })
}

/// (scheme, authority, path) of an http(s) URL; the path is `/` when absent.
fn url_parts(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (!authority.is_empty() && !authority.contains(['@', ' '])).then_some((scheme, authority, path))
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::scope::{Scopes, UserBudgets};
    use super::super::*;
    use super::*;
    use crate::pricing::ModelPrice;

    const NOW: u64 = 1_795_000_000;

    fn day(name: &str, tokens: u64) -> BudgetLimit {
        BudgetLimit { name: name.into(), window: Window::Day, tokens: Some(tokens), usd_micros: None, requests: None }
    }

    fn budgets() -> Budgets {
        Budgets {
            soft_threshold: Some(0.8),
            users: Some(Box::new(UserBudgets {
                header: None,
                limits: vec![day("user-day", 1_000)],
                overrides: Default::default(),
                max_tracked: 10,
            })),
            alerts: Some(Box::new(AlertSettings {
                tenant_id: "acme".into(),
                webhook: Some(Webhook { url: "https://hooks.example.com/tollgate?x=1".into(), secret: "s".repeat(20) }),
            })),
            ..super::super::tests::budgets(vec![day("tenant-day", 100_000)])
        }
    }

    fn reserve_op(b: &Budgets, id: &str, tokens: u64, user: &str) -> LedgerOp {
        LedgerOp::Reserve {
            budgets: b.clone(),
            request: ReserveRequest {
                id: id.into(),
                prompt_tokens: tokens,
                output_tokens: 0,
                price: ModelPrice { input: 1_000_000, cached_input: 1_000_000, output: 1_000_000 },
                downgrade_price: None,
                extra_micros: 0,
                scopes: Scopes { key: None, user: Some(user.into()) },
            },
        }
    }

    fn settle_op(b: &Budgets, id: &str, tokens: u64, user: &str) -> LedgerOp {
        LedgerOp::Settle {
            resent: false,
            budgets: b.clone(),
            id: id.into(),
            amount: Amount { tokens, micros: tokens, requests: 1 },
            scopes: Scopes { key: None, user: Some(user.into()) },
        }
    }

    fn events(state: &mut BudgetState) -> Vec<(AlertEvent, Level, String, String)> {
        state.take_alerts().into_iter().map(|a| (a.event, a.level, a.id, a.limit)).collect()
    }

    #[test]
    fn a_user_crossing_the_soft_threshold_and_then_running_out_alerts_once_each() {
        let b = budgets();
        let mut s = BudgetState::default();
        for (i, tokens) in [500u64, 350, 50].into_iter().enumerate() {
            let id = format!("r{i}");
            apply(&mut s, &reserve_op(&b, &id, tokens, "alice"), NOW);
            apply(&mut s, &settle_op(&b, &id, tokens, "alice"), NOW);
            let fired = events(&mut s);
            match i {
                0 => assert!(fired.is_empty(), "{fired:?}"),
                1 => assert_eq!(fired, [(AlertEvent::SoftThreshold, Level::User, "alice".into(), "user-day".into())]),
                _ => assert!(fired.is_empty(), "already sent this period: {fired:?}"),
            }
        }
        // Refused: the user's limit is out (900 spent, 200 more do not fit).
        let refused = apply(&mut s, &reserve_op(&b, "r3", 200, "alice"), NOW);
        assert!(matches!(refused, LedgerReply::Refused { .. }), "{refused:?}");
        assert_eq!(events(&mut s), [(AlertEvent::Exhausted, Level::User, "alice".into(), "user-day".into())]);
        apply(&mut s, &reserve_op(&b, "r4", 200, "alice"), NOW + 60);
        assert!(events(&mut s).is_empty(), "one exhaustion alert per day");
        // Another user, and the next day, alert afresh.
        apply(&mut s, &reserve_op(&b, "b1", 900, "bob"), NOW);
        apply(&mut s, &settle_op(&b, "b1", 900, "bob"), NOW);
        assert_eq!(events(&mut s), [(AlertEvent::SoftThreshold, Level::User, "bob".into(), "user-day".into())]);
        let tomorrow = NOW + 86_400;
        apply(&mut s, &reserve_op(&b, "a5", 1_000, "alice"), tomorrow);
        apply(&mut s, &settle_op(&b, "a5", 1_000, "alice"), tomorrow);
        assert_eq!(events(&mut s), [(AlertEvent::Exhausted, Level::User, "alice".into(), "user-day".into())]);
    }

    #[test]
    fn the_marks_survive_a_json_round_trip_so_a_reloaded_writer_does_not_alert_again() {
        let b = budgets();
        let mut s = BudgetState::default();
        apply(&mut s, &reserve_op(&b, "r", 850, "carol"), NOW);
        apply(&mut s, &settle_op(&b, "r", 850, "carol"), NOW);
        assert_eq!(events(&mut s).len(), 1);
        let mut reloaded: BudgetState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        apply(&mut reloaded, &reserve_op(&b, "r2", 10, "carol"), NOW);
        apply(&mut reloaded, &settle_op(&b, "r2", 10, "carol"), NOW);
        assert!(events(&mut reloaded).is_empty());
    }

    #[test]
    fn a_tenant_without_alerts_keeps_no_marks() {
        let mut b = budgets();
        b.alerts = None;
        let mut s = BudgetState::default();
        apply(&mut s, &reserve_op(&b, "r", 1_000, "dan"), NOW);
        apply(&mut s, &settle_op(&b, "r", 1_000, "dan"), NOW);
        assert!(s.take_alerts().is_empty() && s.alerted.is_empty());
    }

    fn settle_usd(b: &Budgets, s: &mut BudgetState, id: &str, micros: u64, now: u64) {
        let amount = Amount { tokens: 10, micros, requests: 1 };
        apply(
            s,
            &LedgerOp::Settle { resent: false, budgets: b.clone(), id: id.into(), amount, scopes: Scopes::default() },
            now,
        );
    }

    #[test]
    fn spend_far_above_the_days_hourly_average_alerts_once_a_day() {
        let mut b = budgets();
        b.soft_threshold = None;
        let mut s = BudgetState::default();
        let start = NOW - NOW % 3600 - 10 * 3600;
        // Ten quiet hours: a cent an hour.
        for h in 0..10 {
            settle_usd(&b, &mut s, &format!("q{h}"), 10_000, start + h * 3600 + 60);
        }
        assert!(s.take_alerts().is_empty(), "a steady rate is no spike");
        let now = start + 10 * 3600 + 60;
        settle_usd(&b, &mut s, "burst-1", 30_000, now);
        assert!(s.take_alerts().is_empty(), "three times the average is not yet a spike");
        settle_usd(&b, &mut s, "burst-2", 30_000, now + 1);
        let fired: Vec<_> = s.take_alerts().into_iter().map(|a| (a.event, a.limit, a.spent_usd)).collect();
        assert_eq!(fired, [(AlertEvent::SpendSpike, "spend_rate".to_owned(), "0.060000".to_owned())]);
        settle_usd(&b, &mut s, "burst-3", 90_000, now + 3600);
        assert!(s.take_alerts().is_empty(), "once a day");
        assert!(s.hourly.len() <= 25);
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // RFC 4231, test case 2, and test case 6 (a key longer than a block).
        let mac = crate::cache::hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?"));
        assert_eq!(mac, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let long =
            crate::cache::hex(&hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First"));
        assert_eq!(long, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn a_webhook_call_is_signed_over_its_timestamp_and_body() {
        let b = budgets();
        let mut s = BudgetState::default();
        apply(&mut s, &reserve_op(&b, "r", 1_000, "erin"), NOW);
        apply(&mut s, &settle_op(&b, "r", 1_000, "erin"), NOW);
        let [alert] = s.take_alerts().try_into().unwrap();
        let settings = b.alerts.as_deref().unwrap();
        let call = webhook(settings, &alert, NOW).unwrap();
        assert_eq!((call.authority.as_str(), call.path.as_str()), ("hooks.example.com", "/tollgate?x=1"));
        let signature = call.headers.iter().find(|(n, _)| n == "x-tollgate-signature").unwrap().1.clone();
        let mut signed = format!("{NOW}.").into_bytes();
        signed.extend_from_slice(&call.body);
        let expected = crate::cache::hex(&hmac_sha256("s".repeat(20).as_bytes(), &signed));
        assert_eq!(signature, format!("t={NOW},v1={expected}"));
        let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(body["event"], "exhausted");
        assert_eq!(
            (body["tenant_id"].as_str(), body["level"].as_str(), body["id"].as_str()),
            (Some("acme"), Some("user"), Some("erin"))
        );
        assert!(!format!("{settings:?}").contains("sssss"), "the secret is never in a debug line");
    }

    #[test]
    fn alert_settings_validate() {
        let mut problems = Vec::new();
        let raw = RawAlerts { webhook_url: Some("ftp://x".into()), webhook_secret: Some("short".into()) };
        AlertSettings::from_raw(raw, &mut |path, _| problems.push(path));
        let raw = RawAlerts { webhook_url: Some("https://x.example/a".into()), webhook_secret: None };
        AlertSettings::from_raw(raw, &mut |path, _| problems.push(path));
        assert_eq!(problems, ["alerts.webhook_url", "alerts.webhook_secret", "alerts"]);
    }
}
