//! Token and dollar budgets as pure state transitions.
//!
//! A host keeps one [`BudgetState`] per tenant wherever it can update it
//! atomically (a Durable Object, a CAS loop on Envoy shared data, a Redis
//! script) and calls these functions there with the current time. Nothing
//! here reads a clock.
//!
//! Spend is charged in two steps. [`reserve`] holds the worst case (prompt
//! plus the output cap, priced) before the request goes upstream, and
//! refuses up front when it does not fit; [`settle`] replaces the hold with
//! what the provider reported; [`release`] drops it on failure or abort.
//! Holds expire after [`RESERVATION_TTL_SECS`], so a host that dies
//! mid-request cannot leak budget forever, and settling is idempotent.

use crate::error::BudgetError;
use crate::pricing::{ModelPrice, format_usd};
use serde::{Deserialize, Serialize};

pub mod alerts;
mod config;
pub mod lease;
pub mod scope;

use self::config::validate_limits;
use self::scope::{HoldScope, Level, OVERFLOW_USER, ScopeSpend, Scopes};

pub use self::config::{
    BudgetLimit, Budgets, Consistency, DEFAULT_OUTPUT_RESERVATION, FailureMode, OnExhausted, RawBudgetLimit,
    RawBudgets, RawLease,
};

/// How long a reservation may stay open before it is presumed dead.
pub const RESERVATION_TTL_SECS: u64 = 3600;
/// Most reservations in flight per tenant; more is refused with 429.
pub const MAX_OUTSTANDING: usize = 4096;
/// Settled ids remembered so that a repeated settle is a no-op.
const RECENTLY_SETTLED: usize = 512;
/// Request holds that expired unsettled, remembered for a resent settle
/// (a host that lost a close: rare, so few).
const RECENTLY_EXPIRED: usize = 64;
/// Below this many output tokens a clamped request is refused instead.
pub const MIN_CLAMPED_OUTPUT: u64 = 16;

/// A budget window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Window {
    /// Calendar day, UTC.
    Day,
    /// Calendar month, UTC.
    Month,
    /// The last 60 minutes, in one-minute buckets.
    RollingHour,
    /// Calendar minute, UTC: a tokens-per-minute rate.
    Minute,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Day => "day",
            Window::Month => "month",
            Window::RollingHour => "rolling_hour",
            Window::Minute => "minute",
        }
    }

    /// Start of the calendar period containing `now` (0 for the rolling window).
    pub fn period_start(self, now: u64) -> u64 {
        match self {
            Window::Day => now - now % 86_400,
            Window::Month => {
                let (y, m, _) = civil_from_days(now / 86_400);
                days_from_civil(y, m, 1) * 86_400
            }
            Window::RollingHour => 0,
            Window::Minute => now - now % 60,
        }
    }

    /// Start of the next calendar period (for the rolling window: an hour on).
    pub fn next_reset(self, now: u64) -> u64 {
        match self {
            Window::Day => self.period_start(now) + 86_400,
            Window::Month => {
                let (y, m, _) = civil_from_days(now / 86_400);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) * 86_400
            }
            Window::RollingHour => now + 3600,
            Window::Minute => self.period_start(now) + 60,
        }
    }
}

/// Tokens, micro-dollars and requests together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    pub tokens: u64,
    pub micros: u64,
    /// Requests sent upstream: one per reservation and per settled
    /// request, for requests-per-minute limits.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requests: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Amount {
    pub fn plus(self, o: Amount) -> Amount {
        Amount {
            tokens: self.tokens.saturating_add(o.tokens),
            micros: self.micros.saturating_add(o.micros),
            requests: self.requests.saturating_add(o.requests),
        }
    }

    pub fn saturating_sub(self, o: Amount) -> Amount {
        Amount {
            tokens: self.tokens.saturating_sub(o.tokens),
            micros: self.micros.saturating_sub(o.micros),
            requests: self.requests.saturating_sub(o.requests),
        }
    }

    /// Each dimension the smaller of the two.
    pub fn min(self, o: Amount) -> Amount {
        Amount {
            tokens: self.tokens.min(o.tokens),
            micros: self.micros.min(o.micros),
            requests: self.requests.min(o.requests),
        }
    }

    /// Some dimension of `self` is larger than `o`'s.
    pub fn exceeds(self, o: Amount) -> bool {
        self.tokens > o.tokens || self.micros > o.micros || self.requests > o.requests
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteBucket {
    pub minute: u64,
    pub spent: Amount,
}

/// Settled spend in one configured window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpend {
    pub name: String,
    pub window: Window,
    pub period_start: u64,
    pub spent: Amount,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<MinuteBucket>,
}

/// A hold on budget for a request in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outstanding {
    pub id: String,
    pub amount: Amount,
    pub expires_at: u64,
    /// Remembered so a retried reserve gets the same answer.
    #[serde(default)]
    pub downgraded: bool,
    #[serde(default)]
    pub clamped_output_tokens: Option<u64>,
    /// The key and user entries the hold counts at (none: the tenant only).
    #[serde(default, skip_serializing_if = "HoldScope::is_empty")]
    pub scope: HoldScope,
}

/// Everything a host persists for one tenant's budgets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetState {
    #[serde(default)]
    pub windows: Vec<WindowSpend>,
    #[serde(default)]
    pub outstanding: Vec<Outstanding>,
    /// Fingerprints ([`settled_fingerprint`]) of the last finished ids.
    /// Numbers, not the ids: this list is most of the state's size, and
    /// hosts read and write the whole state on every reserve and settle
    /// (Envoy's shared data, Redis), so 512 ids as strings cost about 20 KB
    /// of JSON each way. Older states holding ids are read too.
    #[serde(default, deserialize_with = "settled_from_ids_or_fingerprints")]
    pub recently_settled: Vec<u64>,
    /// Fingerprints of the last request holds that expired unsettled: a
    /// settle sent again after its batch went unanswered (`resent`) is
    /// still charged for them (its first send never landed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recently_expired: Vec<u64>,
    /// Settled spend of the keys and end users with limits of their own
    /// ([`scope`]), bounded by `budgets.users.max_tracked`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scoped: Vec<ScopeSpend>,
    /// The alerts fired, per limit and period ([`alerts`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerted: Vec<alerts::AlertMark>,
    /// The tenant's dollars per clock hour over the last day, kept only
    /// for a tenant with alerts (the spend-rate alert).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hourly: Vec<alerts::HourSpend>,
    /// Alerts found by the last ops, for the host to send once it has
    /// persisted the state ([`BudgetState::take_alerts`]). Not persisted.
    #[serde(skip)]
    pub fired: Fired,
}

/// Alerts waiting to be sent, and the dollars charged to the tenant by the
/// ops applied since it was made (for the spend-rate alert): transient,
/// so not part of the state's value (two states equal in everything
/// persisted are equal).
#[derive(Clone, Debug, Default)]
pub struct Fired {
    pub alerts: Vec<alerts::Alert>,
    charged_micros: u64,
}

impl PartialEq for Fired {
    fn eq(&self, _: &Fired) -> bool {
        true
    }
}

impl Eq for Fired {}

impl BudgetState {
    /// The alerts the ops applied since the last call found, to log and
    /// post (after the state is persisted, so an alert is never sent for a
    /// change that was lost).
    pub fn take_alerts(&mut self) -> Vec<alerts::Alert> {
        std::mem::take(&mut self.fired.alerts)
    }
}

/// A finished request id as remembered: 64 bits of FNV-1a. A new id
/// matching one of the last 512 by chance (a 2^-55 event per reserve)
/// would make that reserve hold nothing.
pub fn settled_fingerprint(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn settled_from_ids_or_fingerprints<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Settled {
        Fingerprint(u64),
        Id(String),
    }
    let items: Vec<Settled> = Vec::deserialize(d)?;
    Ok(items
        .into_iter()
        .map(|s| match s {
            Settled::Fingerprint(f) => f,
            Settled::Id(id) => settled_fingerprint(&id),
        })
        .collect())
}

/// What a request asks to hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReserveRequest {
    /// Unique per request; settle and release name it.
    pub id: String,
    pub prompt_tokens: u64,
    /// Output cap: `max_tokens` × choices, or the tenant's default reservation.
    pub output_tokens: u64,
    /// Price of the routed model (the dearest of its fallback chain).
    pub price: ModelPrice,
    /// Price of the cheapest tier, used when the soft threshold is crossed.
    pub downgrade_price: Option<ModelPrice>,
    /// Dollars held beyond tokens: the most the request's metered built-in
    /// tool calls can cost (Responses API), in micro-dollars.
    #[serde(default)]
    pub extra_micros: u64,
    /// The key and end user it is charged at besides the tenant.
    #[serde(default, skip_serializing_if = "Scopes::is_empty")]
    pub scopes: Scopes,
}

impl ReserveRequest {
    /// What this request holds at the routed model's price, unclamped.
    pub fn worst_case(&self) -> Amount {
        Amount {
            requests: 1,
            tokens: self.prompt_tokens.saturating_add(self.output_tokens),
            micros: self
                .price
                .estimate_micros(self.prompt_tokens, self.output_tokens)
                .saturating_add(self.extra_micros),
        }
    }
}

/// A granted reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    pub id: String,
    pub amount: Amount,
    /// The soft threshold was crossed: route to the cheapest tier.
    pub downgraded: bool,
    /// The output cap was lowered to this to fit the budget.
    pub clamped_output_tokens: Option<u64>,
    pub remaining: Remaining,
}

/// The tightest remaining headroom across all limits, after holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remaining {
    pub tokens: Option<u64>,
    pub micros: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
}

/// One limit's state, for `/v1/usage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitStatus {
    pub name: String,
    pub window: Window,
    pub spent: Amount,
    /// Held by requests in flight (at the writer).
    pub reserved: Amount,
    /// Held by host instances' leases, unspent or not yet reported.
    #[serde(default)]
    pub leased: Amount,
    pub limit_tokens: Option<u64>,
    pub limit_micros: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_requests: Option<u64>,
    pub resets_at: u64,
}

/// The limits of one key or end user, for `/v1/usage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeStatus {
    pub level: Level,
    /// The key's id (a prefix of its hash) or the user's id
    /// ([`scope::OVERFLOW_USER`] for the users past the cap).
    pub id: String,
    pub limits: Vec<LimitStatus>,
}

impl BudgetState {
    /// Bring the state in line with the config and the clock: add or drop
    /// windows to match the limits, start new calendar periods, age out
    /// rolling buckets and expired holds, and drop key and user entries
    /// that hold nothing and have nothing spent.
    pub fn sync(&mut self, limits: &[BudgetLimit], now: u64) {
        sync_windows(&mut self.windows, limits, now);
        // Every level's windows are in the current period before anything
        // is charged to them (an expired lease at a day's turn is charged
        // to the new day at its key and user as at the tenant).
        for entry in &mut self.scoped {
            age_windows(&mut entry.windows, now);
        }
        // A lease that expired unreported is charged in full (its instance
        // may have spent all of it); a request's expired hold is dropped.
        // A scoped lease is charged at its key and user as well.
        if self.outstanding.iter().any(|o| o.expires_at <= now) {
            let expired_leases: Vec<(HoldScope, Amount)> = self
                .outstanding
                .iter()
                .filter(|o| o.expires_at <= now && lease::is_lease(&o.id) && o.amount != Amount::default())
                .map(|o| (o.scope.clone(), o.amount))
                .collect();
            for hold in self.outstanding.iter().filter(|o| o.expires_at <= now && !lease::is_lease(&o.id)) {
                self.recently_expired.push(settled_fingerprint(&hold.id));
            }
            if self.recently_expired.len() > RECENTLY_EXPIRED {
                let excess = self.recently_expired.len() - RECENTLY_EXPIRED;
                self.recently_expired.drain(..excess);
            }
            self.outstanding.retain(|o| o.expires_at > now);
            for (scope, amount) in expired_leases {
                self.charge_at(&scope, amount, now);
            }
        }
        if !self.scoped.is_empty() {
            scope::drop_idle(&mut self.scoped, &self.outstanding);
        }
    }

    /// Add spend settled elsewhere to every window (an instance's view of
    /// its writer, [`crate::desk`]).
    pub fn charge_spent(&mut self, amount: Amount, now: u64) {
        if amount != Amount::default() {
            self.charge(amount, now);
        }
    }

    fn reserved(&self) -> Amount {
        self.outstanding.iter().fold(Amount::default(), |acc, o| acc.plus(o.amount))
    }

    /// Charge the tenant's windows.
    fn charge(&mut self, amount: Amount, now: u64) {
        charge_windows(&mut self.windows, amount, now);
        self.fired.charged_micros = self.fired.charged_micros.saturating_add(amount.micros);
    }

    /// Charge the tenant's windows and those of the key and user entries in `scope`.
    fn charge_at(&mut self, scope: &HoldScope, amount: Amount, now: u64) {
        self.charge(amount, now);
        for entry in &mut self.scoped {
            if entry.level != Level::Tenant && scope.holds_at(entry.level, &entry.id) {
                charge_windows(&mut entry.windows, amount, now);
            }
        }
    }

    fn spent_in(&self, limit: &BudgetLimit) -> Amount {
        spent_in(&self.windows, limit)
    }

    fn remaining(&self, limits: &[BudgetLimit]) -> Remaining {
        self.tenant_level(limits).remaining(Remaining::default())
    }

    /// The entries a request of `scopes` is charged at below the tenant,
    /// made (and brought in line with their limits) where missing. Only
    /// levels with limits get an entry.
    fn prepare_scopes(&mut self, budgets: &Budgets, scopes: &Scopes, now: u64) -> HoldScope {
        let mut hold = HoldScope::default();
        if let Some(key) = scopes.key.as_ref().filter(|k| !k.limits.is_empty()) {
            self.entry(Level::Key, &key.id, &key.limits, now);
            hold.key = Some(key.id.clone());
        }
        if let (Some(user), Some(users)) = (&scopes.user, &budgets.users) {
            let id = scope::user_entry(&self.scoped, users, user);
            let limits = users.limits_for(id);
            if !limits.is_empty() {
                self.entry(Level::User, id, limits, now);
                hold.user = Some(id.to_owned());
            }
        }
        hold
    }

    fn entry(&mut self, level: Level, id: &str, limits: &[BudgetLimit], now: u64) {
        let entry = match self.scoped.iter().position(|s| s.level == level && s.id == id) {
            Some(i) => &mut self.scoped[i],
            None => {
                self.scoped.push(ScopeSpend { level, id: id.to_owned(), windows: Vec::new() });
                let last = self.scoped.len() - 1;
                &mut self.scoped[last]
            }
        };
        sync_windows(&mut entry.windows, limits, now);
    }

    fn tenant_level<'a>(&'a self, limits: &'a [BudgetLimit]) -> LevelView<'a> {
        LevelView { level: Level::Tenant, id: "", who: None, limits, windows: &self.windows, held: self.reserved() }
    }

    /// Every level a hold of `scope` is checked at: the tenant's, then the
    /// key's and the user's (with the limits they have in `budgets` and
    /// `scopes`).
    fn levels<'a>(&'a self, budgets: &'a Budgets, scopes: &'a Scopes, scope: &HoldScope) -> Vec<LevelView<'a>> {
        let mut levels = vec![self.tenant_level(&budgets.limits)];
        let mut below = |level: Level, id: &str, limits: &'a [BudgetLimit], who: String| {
            if let Some(entry) = self.scoped.iter().find(|s| s.level == level && s.id == id) {
                let held = self
                    .outstanding
                    .iter()
                    .filter(|o| o.scope.holds_at(level, id))
                    .fold(Amount::default(), |acc, o| acc.plus(o.amount));
                levels.push(LevelView { level, id: &entry.id, who: Some(who), limits, windows: &entry.windows, held });
            }
        };
        if let (Some(id), Some(key)) = (&scope.key, &scopes.key) {
            below(Level::Key, id, &key.limits, key.display());
        }
        if let (Some(id), Some(users)) = (&scope.user, &budgets.users) {
            let who = if id == OVERFLOW_USER {
                format!("users past the cap of {} tracked users", users.max_tracked)
            } else {
                format!("user `{id}`")
            };
            below(Level::User, id, users.limits_for(id), who);
        }
        levels
    }
}

/// One level's limits and what counts against them, for a decision.
struct LevelView<'a> {
    level: Level,
    /// How messages name the level (None: the tenant).
    who: Option<String>,
    /// The key's or user's entry id ("" for the tenant).
    id: &'a str,
    limits: &'a [BudgetLimit],
    windows: &'a [WindowSpend],
    /// Held at this level (requests in flight, and leases for the tenant).
    held: Amount,
}

impl<'a> LevelView<'a> {
    fn used(&self, limit: &BudgetLimit) -> Amount {
        spent_in(self.windows, limit).plus(self.held)
    }

    fn remaining(&self, mut r: Remaining) -> Remaining {
        let tighter = |slot: &mut Option<u64>, left: u64| *slot = Some(slot.map_or(left, |x| x.min(left)));
        for limit in self.limits {
            let used = self.used(limit);
            if let Some(t) = limit.tokens {
                tighter(&mut r.tokens, t.saturating_sub(used.tokens));
            }
            if let Some(m) = limit.usd_micros {
                tighter(&mut r.micros, m.saturating_sub(used.micros));
            }
            if let Some(n) = limit.requests {
                tighter(&mut r.requests, n.saturating_sub(used.requests));
            }
        }
        r
    }

    fn crosses(&self, threshold: f64) -> bool {
        self.limits.iter().any(|limit| {
            let used = self.used(limit);
            fraction(used.tokens, limit.tokens) >= threshold
                || fraction(used.micros, limit.usd_micros) >= threshold
                || fraction(used.requests, limit.requests) >= threshold
        })
    }

    /// The first limit `need` does not fit on top of what is used and held.
    fn violation(&self, need: Amount) -> Option<&'a BudgetLimit> {
        self.limits.iter().find(|limit| limit.exceeded_by(self.used(limit).plus(need)))
    }

    /// The first limit already used up.
    fn reached(&self) -> Option<&'a BudgetLimit> {
        self.limits.iter().find(|limit| limit.reached_by(self.used(limit)))
    }

    fn affordable_output(&self, extra: Amount, prompt: u64, price: &ModelPrice) -> u64 {
        let mut best = u64::MAX;
        for limit in self.limits {
            let used = self.used(limit).plus(extra);
            if let Some(t) = limit.tokens {
                best = best.min(t.saturating_sub(used.tokens).saturating_sub(prompt));
            }
            if let Some(m) = limit.usd_micros {
                let left = m.saturating_sub(used.micros);
                best = best.min(if price.estimate_micros(prompt, 0) > left {
                    0
                } else {
                    price.affordable_output(prompt, left)
                });
            }
        }
        best
    }

    fn exceeded(&self, limit: &BudgetLimit, need: Amount, now: u64) -> BudgetError {
        let used = self.used(limit);
        let resets_at = resets_at(self.windows, limit, now);
        let over =
            |limit: Option<u64>, used: u64, need: u64| limit.filter(|&l| used.saturating_add(need) > l || used >= l);
        let what = if let Some(n) = over(limit.requests, used.requests, need.requests) {
            format!("{} of {n} requests made or in flight", used.requests)
        } else if let Some(t) = over(limit.tokens, used.tokens, need.tokens) {
            format!("{} of {t} tokens used or held, this request needs up to {}", used.tokens, need.tokens)
        } else if let Some(m) = limit.usd_micros {
            format!(
                "${} of ${} used or held, this request needs up to ${}",
                format_usd(used.micros),
                format_usd(m),
                format_usd(need.micros)
            )
        } else {
            "limit reached".to_owned()
        };
        let when = match limit.window {
            Window::RollingHour => format!("spend ages out of the rolling hour from {}", iso8601(resets_at)),
            _ => format!("resets at {}", iso8601(resets_at)),
        };
        let of = self.who.as_ref().map(|who| format!(" of {who}")).unwrap_or_default();
        BudgetError::Exceeded {
            message: format!(
                "The `{}` budget{of} ({} window) is exhausted: {what}; {when}.",
                limit.name,
                limit.window.as_str()
            ),
            retry_after_secs: resets_at.saturating_sub(now).max(1),
            level: self.level,
            limit: limit.name.clone(),
            window: limit.window,
            scope_id: self.id.to_owned(),
        }
    }
}

/// Bring `windows` in line with `limits` and the clock.
fn sync_windows(windows: &mut Vec<WindowSpend>, limits: &[BudgetLimit], now: u64) {
    let mut synced = Vec::with_capacity(limits.len());
    for limit in limits {
        let existing = windows.iter().position(|w| w.name == limit.name && w.window == limit.window);
        let w = match existing {
            Some(i) => windows.swap_remove(i),
            None => WindowSpend {
                name: limit.name.clone(),
                window: limit.window,
                period_start: limit.window.period_start(now),
                spent: Amount::default(),
                buckets: Vec::new(),
            },
        };
        synced.push(w);
    }
    age_windows(&mut synced, now);
    *windows = synced;
}

/// Start new calendar periods and age out rolling buckets.
fn age_windows(windows: &mut [WindowSpend], now: u64) {
    for w in windows {
        match w.window {
            Window::RollingHour => {
                let minute = now / 60;
                // Buckets stamped a little ahead (a host with a fast clock) are kept.
                w.buckets.retain(|b| b.minute.saturating_add(60) > minute);
                w.spent = w.buckets.iter().fold(Amount::default(), |acc, b| acc.plus(b.spent));
            }
            calendar => {
                let start = calendar.period_start(now);
                // Only ever forward: a late settle stamped with an earlier
                // time (or a host with a slow clock) must not reopen and
                // wipe a period.
                if start > w.period_start {
                    w.period_start = start;
                    w.spent = Amount::default();
                }
            }
        }
    }
}

fn charge_windows(windows: &mut [WindowSpend], amount: Amount, now: u64) {
    for w in windows {
        w.spent = w.spent.plus(amount);
        if w.window == Window::RollingHour {
            let minute = now / 60;
            match w.buckets.iter_mut().find(|b| b.minute == minute) {
                Some(b) => b.spent = b.spent.plus(amount),
                None => w.buckets.push(MinuteBucket { minute, spent: amount }),
            }
        }
    }
}

fn spent_in(windows: &[WindowSpend], limit: &BudgetLimit) -> Amount {
    windows.iter().find(|w| w.name == limit.name).map(|w| w.spent).unwrap_or_default()
}

fn resets_at(windows: &[WindowSpend], limit: &BudgetLimit, now: u64) -> u64 {
    match limit.window {
        Window::RollingHour => windows
            .iter()
            .find(|w| w.name == limit.name)
            .and_then(|w| w.buckets.iter().map(|b| b.minute).min())
            .map_or(now + 60, |oldest| oldest.saturating_add(60).saturating_mul(60)),
        calendar => calendar.next_reset(now),
    }
}

/// Hold budget for a request, or refuse it. A request is checked at every
/// level that applies to it (the tenant's, its key's, its user's) and held
/// at all of them, or at none.
pub fn reserve(
    state: &mut BudgetState,
    budgets: &Budgets,
    req: &ReserveRequest,
    now: u64,
) -> Result<Granted, BudgetError> {
    state.sync(&budgets.limits, now);
    if let Some(existing) = state.outstanding.iter().find(|o| o.id == req.id) {
        // A retried reserve with the same id holds nothing twice.
        let scope = existing.scope.clone();
        let (amount, downgraded, clamped_output_tokens) =
            (existing.amount, existing.downgraded, existing.clamped_output_tokens);
        return Ok(Granted {
            id: req.id.clone(),
            amount,
            downgraded,
            clamped_output_tokens,
            remaining: remaining_over(&state.levels(budgets, &req.scopes, &scope)),
        });
    }
    if state.recently_settled.contains(&settled_fingerprint(&req.id)) {
        // A reserve retried after its request already settled holds nothing.
        return Ok(Granted {
            id: req.id.clone(),
            amount: Amount::default(),
            downgraded: false,
            clamped_output_tokens: None,
            remaining: state.remaining(&budgets.limits),
        });
    }
    if state.outstanding.len() >= MAX_OUTSTANDING {
        return Err(BudgetError::TooManyInFlight { limit: MAX_OUTSTANDING });
    }
    let scope = state.prepare_scopes(budgets, &req.scopes, now);
    let (amount, downgraded, clamped) = {
        let levels = state.levels(budgets, &req.scopes, &scope);
        decide(&levels, budgets, req, now)?
    };
    state.outstanding.push(Outstanding {
        id: req.id.clone(),
        amount,
        expires_at: now + RESERVATION_TTL_SECS,
        downgraded,
        clamped_output_tokens: clamped,
        scope: scope.clone(),
    });
    Ok(Granted {
        id: req.id.clone(),
        amount,
        downgraded,
        clamped_output_tokens: clamped,
        remaining: remaining_over(&state.levels(budgets, &req.scopes, &scope)),
    })
}

/// What `req` holds at these levels (amount, downgraded, clamped output),
/// or why it is refused.
fn decide(
    levels: &[LevelView<'_>],
    budgets: &Budgets,
    req: &ReserveRequest,
    now: u64,
) -> Result<(Amount, bool, Option<u64>), BudgetError> {
    let downgraded = match (budgets.soft_threshold, req.downgrade_price) {
        (Some(threshold), Some(_)) => levels.iter().any(|level| level.crosses(threshold)),
        _ => false,
    };
    let price = match (downgraded, req.downgrade_price) {
        (true, Some(p)) => p,
        _ => req.price,
    };
    let amount_for = |output: u64| Amount {
        requests: 1,
        tokens: req.prompt_tokens.saturating_add(output),
        micros: price.estimate_micros(req.prompt_tokens, output).saturating_add(req.extra_micros),
    };
    let amount = amount_for(req.output_tokens);
    let violation =
        |amount: Amount| levels.iter().find_map(|level| level.violation(amount).map(|limit| (level, limit)));
    let Some((level, limit)) = violation(amount) else {
        return Ok((amount, downgraded, None));
    };
    if budgets.clamp_max_tokens {
        let tools = Amount { micros: req.extra_micros, ..Amount::default() };
        let affordable =
            levels.iter().map(|l| l.affordable_output(tools, req.prompt_tokens, &price)).min().unwrap_or(u64::MAX);
        let output = affordable.min(req.output_tokens);
        // A lower output cap cannot make room for one more request.
        if affordable >= MIN_CLAMPED_OUTPUT && violation(amount_for(output)).is_none() {
            return Ok((amount_for(output), downgraded, Some(output)));
        }
    }
    if limit.exceeded_by(amount) {
        // Bigger than the whole limit: waiting for a reset will not help.
        let lower = if req.extra_micros > 0 {
            "lower max_tokens, or max_tool_calls (its built-in tool calls are held too)"
        } else {
            "lower max_tokens"
        };
        let of = level.who.as_ref().map(|who| format!(" of {who}")).unwrap_or_default();
        return Err(BudgetError::NeverFits {
            message: format!(
                "This request could need up to {} tokens (${}), more than the whole `{}` budget{of} allows; {lower}.",
                amount.tokens,
                format_usd(amount.micros),
                limit.name
            ),
        });
    }
    Err(level.exceeded(limit, amount, now))
}

fn remaining_over(levels: &[LevelView<'_>]) -> Remaining {
    levels.iter().fold(Remaining::default(), |r, level| level.remaining(r))
}

/// Replace a hold with the actual spend. Idempotent per id; an expired or
/// unknown hold still charges the actual spend, which really happened.
pub fn settle(state: &mut BudgetState, budgets: &Budgets, id: &str, actual: Amount, now: u64) -> Remaining {
    settle_at(state, budgets, id, actual, &Scopes::default(), now)
}

/// [`settle`] at every level the hold was made at; for a hold that is
/// gone, at the levels `scopes` names.
pub fn settle_at(
    state: &mut BudgetState,
    budgets: &Budgets,
    id: &str,
    actual: Amount,
    scopes: &Scopes,
    now: u64,
) -> Remaining {
    state.sync(&budgets.limits, now);
    if state.recently_settled.contains(&settled_fingerprint(id)) {
        return state.remaining(&budgets.limits);
    }
    let scope = match state.outstanding.iter().position(|o| o.id == id) {
        Some(i) => state.outstanding.swap_remove(i).scope,
        None => state.prepare_scopes(budgets, scopes, now),
    };
    state.charge_at(&scope, actual, now);
    remember_finished(state, id);
    remaining_over(&state.levels(budgets, scopes, &scope))
}

/// A finished id: a reserve or settle that arrives late for it (a retry, or
/// a call that timed out at the host but landed) changes nothing.
fn remember_finished(state: &mut BudgetState, id: &str) {
    state.recently_settled.push(settled_fingerprint(id));
    if state.recently_settled.len() > RECENTLY_SETTLED {
        let excess = state.recently_settled.len() - RECENTLY_SETTLED;
        state.recently_settled.drain(..excess);
    }
}

/// Drop a hold without charging (upstream failed before any usage, or the
/// request never left). Idempotent.
pub fn release(state: &mut BudgetState, budgets: &Budgets, id: &str, now: u64) -> Remaining {
    state.sync(&budgets.limits, now);
    state.outstanding.retain(|o| o.id != id);
    // Also for an id never reserved: a host releases after a reserve that
    // timed out, and that reserve may still arrive; it must then hold nothing.
    if !state.recently_settled.contains(&settled_fingerprint(id)) {
        remember_finished(state, id);
    }
    state.remaining(&budgets.limits)
}

/// The refusal a request would get right now if it needed anything at
/// all, at the tenant's limits.
pub fn exhausted(state: &mut BudgetState, budgets: &Budgets, now: u64) -> Option<BudgetError> {
    exhausted_for(state, budgets, &Scopes::default(), now)
}

/// The refusal a request of `scopes` would get right now if it needed
/// anything at all: used by `on_exhausted: reject` before serving a cache hit.
pub fn exhausted_for(state: &mut BudgetState, budgets: &Budgets, scopes: &Scopes, now: u64) -> Option<BudgetError> {
    state.sync(&budgets.limits, now);
    let scope = state.prepare_scopes(budgets, scopes, now);
    let levels = state.levels(budgets, scopes, &scope);
    levels.iter().find_map(|level| level.reached().map(|limit| level.exceeded(limit, Amount::default(), now)))
}

/// Every limit's state, for `/v1/usage`.
pub fn status(state: &mut BudgetState, budgets: &Budgets, now: u64) -> Vec<LimitStatus> {
    state.sync(&budgets.limits, now);
    let (leased, reserved) = state.outstanding.iter().fold((Amount::default(), Amount::default()), |(l, r), o| {
        if lease::is_lease(&o.id) { (l.plus(o.amount), r) } else { (l, r.plus(o.amount)) }
    });
    budgets
        .limits
        .iter()
        .map(|limit| LimitStatus {
            name: limit.name.clone(),
            window: limit.window,
            spent: state.spent_in(limit),
            reserved,
            leased,
            limit_tokens: limit.tokens,
            limit_micros: limit.usd_micros,
            limit_requests: limit.requests,
            resets_at: resets_at(&state.windows, limit, now),
        })
        .collect()
}

/// The limits below the tenant, for `/v1/usage`: the key's and the
/// user's of `scopes` (when they have limits), and every other key or user
/// entry the state tracks (their spend; limits only where `budgets` has
/// them: a user's, not another key's).
pub fn scoped_status(state: &mut BudgetState, budgets: &Budgets, scopes: &Scopes, now: u64) -> Vec<ScopeStatus> {
    state.sync(&budgets.limits, now);
    let key = scopes.key.as_ref().filter(|k| !k.limits.is_empty());
    let mut out = Vec::with_capacity(state.scoped.len());
    for entry in &state.scoped {
        let limits: &[BudgetLimit] = match entry.level {
            Level::Key => key.filter(|k| k.id == entry.id).map_or(&[], |k| k.limits.as_slice()),
            Level::User => budgets.users.as_ref().map_or(&[], |u| u.limits_for(&entry.id)),
            Level::Tenant => &[],
        };
        let (leased, reserved) = state.outstanding.iter().filter(|o| o.scope.holds_at(entry.level, &entry.id)).fold(
            (Amount::default(), Amount::default()),
            |(l, r), o| {
                if lease::is_lease(&o.id) { (l.plus(o.amount), r) } else { (l, r.plus(o.amount)) }
            },
        );
        let windows = entry
            .windows
            .iter()
            .map(|w| {
                let limit = limits.iter().find(|l| l.name == w.name && l.window == w.window);
                LimitStatus {
                    name: w.name.clone(),
                    window: w.window,
                    spent: w.spent,
                    reserved,
                    leased,
                    limit_tokens: limit.and_then(|l| l.tokens),
                    limit_micros: limit.and_then(|l| l.usd_micros),
                    limit_requests: limit.and_then(|l| l.requests),
                    resets_at: limit.map_or(w.window.next_reset(now), |l| resets_at(&entry.windows, l, now)),
                }
            })
            .collect();
        out.push(ScopeStatus { level: entry.level, id: entry.id.clone(), limits: windows });
    }
    out
}

/// The remaining headroom without changing anything.
pub fn remaining(state: &mut BudgetState, budgets: &Budgets, now: u64) -> Remaining {
    state.sync(&budgets.limits, now);
    state.remaining(&budgets.limits)
}

fn fraction(used: u64, limit: Option<u64>) -> f64 {
    match limit {
        Some(0) => 1.0,
        Some(l) => used as f64 / l as f64,
        None => 0.0,
    }
}

/// One operation on a tenant's ledger, as a host sends it to wherever the
/// state lives (a Durable Object, an Envoy shared-data CAS loop). It carries
/// the tenant's budget settings, so the state's home needs no config of its
/// own, and [`apply`] is the only code that ever changes the state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LedgerOp {
    Reserve {
        budgets: Budgets,
        request: ReserveRequest,
    },
    Settle {
        budgets: Budgets,
        id: String,
        amount: Amount,
        /// Where to charge when the hold is gone (expired, or never made).
        #[serde(default, skip_serializing_if = "Scopes::is_empty")]
        scopes: Scopes,
        /// Sent again after the batch that carried it went unanswered
        /// (a host task cancelled with it): charged only while its hold
        /// is still outstanding, since a hold that is gone means the first
        /// landed (the ids of settled requests are remembered only for a
        /// while, so they cannot tell on their own).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resent: bool,
    },
    Release {
        budgets: Budgets,
        id: String,
    },
    /// Whether a limit is reached (before serving a cache hit under `reject`).
    Check {
        budgets: Budgets,
        #[serde(default, skip_serializing_if = "Scopes::is_empty")]
        scopes: Scopes,
    },
    Status {
        budgets: Budgets,
        /// The asking key and user: their limits are shown with their spend.
        #[serde(default, skip_serializing_if = "Scopes::is_empty")]
        scopes: Scopes,
    },
    /// Grant or grow a host instance's lease ([`lease::grant`]).
    LeaseGrant {
        budgets: Budgets,
        sizing: lease::LeaseSizing,
        request: lease::LeaseRequest,
    },
    /// An instance's settled spend against its lease, and maybe its return
    /// ([`lease::report`]).
    LeaseReport {
        budgets: Budgets,
        report: lease::LeaseReport,
    },
}

/// The answer to a [`LedgerOp`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum LedgerReply {
    Granted {
        granted: Granted,
    },
    Refused {
        error: BudgetError,
    },
    Remaining {
        remaining: Remaining,
    },
    Check {
        exhausted: Option<BudgetError>,
    },
    Status {
        limits: Vec<LimitStatus>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        scoped: Vec<ScopeStatus>,
    },
    Lease {
        grant: lease::LeaseGrant,
    },
}

/// Apply one operation to a tenant's state at `now`. The caller persists
/// `state` afterwards (atomically with the read, which is the host's job).
pub fn apply(state: &mut BudgetState, op: &LedgerOp, now: u64) -> LedgerReply {
    let charged_before = state.fired.charged_micros;
    let reply = apply_op(state, op, now);
    if let Some(budgets) = budgets_with_alerts(op) {
        alerts::record_spend(state, state.fired.charged_micros.saturating_sub(charged_before), now);
        let refused = match &reply {
            LedgerReply::Refused { error: BudgetError::Exceeded { level, limit, scope_id, .. } } => {
                Some((*level, scope_id.clone(), limit.clone()))
            }
            _ => None,
        };
        let key = match op {
            LedgerOp::Reserve { request, .. } => request.scopes.key.as_deref(),
            LedgerOp::Settle { scopes, .. } | LedgerOp::Check { scopes, .. } => scopes.key.as_deref(),
            LedgerOp::LeaseGrant { request, .. } => request.scopes.key.as_deref(),
            LedgerOp::LeaseReport { report, .. } => report.scopes.key.as_deref(),
            _ => None,
        };
        alerts::scan(state, budgets, key.map(|k| (k.id.as_str(), k.limits.as_slice())), refused, now);
    }
    reply
}

fn budgets_with_alerts(op: &LedgerOp) -> Option<&Budgets> {
    let budgets = op.budgets();
    budgets.alerts.is_some().then_some(budgets)
}

impl LedgerOp {
    /// The tenant's budget settings the op carries.
    pub fn budgets(&self) -> &Budgets {
        match self {
            LedgerOp::Reserve { budgets, .. }
            | LedgerOp::Settle { budgets, .. }
            | LedgerOp::Release { budgets, .. }
            | LedgerOp::Check { budgets, .. }
            | LedgerOp::Status { budgets, .. }
            | LedgerOp::LeaseGrant { budgets, .. }
            | LedgerOp::LeaseReport { budgets, .. } => budgets,
        }
    }
}

fn apply_op(state: &mut BudgetState, op: &LedgerOp, now: u64) -> LedgerReply {
    match op {
        LedgerOp::Reserve { budgets, request } => match reserve(state, budgets, request, now) {
            Ok(granted) => LedgerReply::Granted { granted },
            Err(error) => LedgerReply::Refused { error },
        },
        LedgerOp::Settle { budgets, id, amount, scopes, resent } => {
            if *resent {
                // Sent again after an unanswered batch: its hold outstanding
                // or expired unsettled means the first send never landed; gone
                // otherwise means it did (settled ids are remembered only for
                // a while, so they cannot tell on their own).
                state.sync(&budgets.limits, now);
                let fingerprint = settled_fingerprint(id);
                let expired_unsettled = state.recently_expired.contains(&fingerprint);
                if !expired_unsettled && !state.outstanding.iter().any(|o| o.id == *id) {
                    return LedgerReply::Remaining { remaining: state.remaining(&budgets.limits) };
                }
                state.recently_expired.retain(|f| *f != fingerprint);
            }
            LedgerReply::Remaining { remaining: settle_at(state, budgets, id, *amount, scopes, now) }
        }
        LedgerOp::Release { budgets, id } => LedgerReply::Remaining { remaining: release(state, budgets, id, now) },
        LedgerOp::Check { budgets, scopes } => {
            LedgerReply::Check { exhausted: exhausted_for(state, budgets, scopes, now) }
        }
        LedgerOp::Status { budgets, scopes } => LedgerReply::Status {
            limits: status(state, budgets, now),
            scoped: scoped_status(state, budgets, scopes, now),
        },
        LedgerOp::LeaseGrant { budgets, sizing, request } => match lease::grant(state, budgets, sizing, request, now) {
            Ok(grant) => LedgerReply::Lease { grant },
            Err(error) => LedgerReply::Refused { error },
        },
        LedgerOp::LeaseReport { budgets, report } => {
            lease::report(state, budgets, report, now);
            LedgerReply::Remaining { remaining: state.remaining(&budgets.limits) }
        }
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
pub fn civil_from_days(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468).max(0) as u64
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn iso8601(secs: u64) -> String {
    let (y, mo, d) = civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
pub(super) mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn a_reserve_arriving_after_its_release_holds_nothing() {
        // The example tenant's budgets (examples/tenant.json).
        let example: serde_json::Value = serde_json::from_str(include_str!("../../../examples/tenant.json")).unwrap();
        let raw: RawBudgets = serde_json::from_value(example["budgets"].clone()).unwrap();
        let budgets = Budgets::from_raw(raw, |path, message| panic!("budgets.{path}: {message}"));
        let mut state = BudgetState::default();
        let req = ReserveRequest {
            id: "late".into(),
            prompt_tokens: 100,
            output_tokens: 100,
            price: crate::pricing::ModelPrice { input: 1, cached_input: 1, output: 1 },
            downgrade_price: None,
            extra_micros: 0,
            scopes: Default::default(),
        };
        release(&mut state, &budgets, "late", 0);
        let granted = reserve(&mut state, &budgets, &req, 0).unwrap();
        assert_eq!(granted.amount, Amount::default());
        assert!(state.outstanding.is_empty());
    }

    #[test]
    fn a_state_stored_with_settled_ids_still_knows_them_and_is_written_back_as_fingerprints() {
        let old = r#"{"windows":[],"outstanding":[],"recently_settled":["req_a","req_b"]}"#;
        let state: BudgetState = serde_json::from_str(old).unwrap();
        assert!(state.recently_settled.contains(&settled_fingerprint("req_b")));
        assert!(!state.recently_settled.contains(&settled_fingerprint("req_c")));
        let written = serde_json::to_string(&state).unwrap();
        assert!(!written.contains("req_a"), "{written}");
        assert_eq!(serde_json::from_str::<BudgetState>(&written).unwrap(), state);
    }

    const NOW: u64 = 1_795_000_000; // 2026-11-18T...

    pub(super) fn budgets(limits: Vec<BudgetLimit>) -> Budgets {
        Budgets {
            limits,
            soft_threshold: None,
            on_exhausted: OnExhausted::Reject,
            clamp_max_tokens: false,
            default_output_reservation: 100,
            store_failure: FailureMode::Closed,
            leases: None,
            users: None,
            alerts: None,
        }
    }

    fn limit(window: Window, tokens: Option<u64>, usd_micros: Option<u64>) -> BudgetLimit {
        BudgetLimit { name: window.as_str().to_owned(), window, tokens, usd_micros, requests: None }
    }

    fn price() -> ModelPrice {
        // $1 in / $2 out per million: 1 and 2 micro-dollars per token.
        ModelPrice { input: 1_000_000, cached_input: 500_000, output: 2_000_000 }
    }

    fn req(id: &str, prompt: u64, output: u64) -> ReserveRequest {
        ReserveRequest {
            id: id.into(),
            prompt_tokens: prompt,
            output_tokens: output,
            price: price(),
            downgrade_price: None,
            extra_micros: 0,
            scopes: Default::default(),
        }
    }

    #[test]
    fn calendar_arithmetic_round_trips_and_knows_month_lengths() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        for days in [0u64, 59, 365, 10_957, 20_000, 25_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        let feb = days_from_civil(2028, 2, 10) * 86_400;
        assert_eq!(iso8601(Window::Month.next_reset(feb)), "2028-03-01T00:00:00Z");
        let dec = days_from_civil(2026, 12, 31) * 86_400 + 5;
        assert_eq!(iso8601(Window::Month.next_reset(dec)), "2027-01-01T00:00:00Z");
        assert_eq!(iso8601(Window::Day.next_reset(dec)), "2027-01-01T00:00:00Z");
    }

    #[test]
    fn a_reservation_that_does_not_fit_is_refused_up_front_with_the_reset_time() {
        let b = budgets(vec![limit(Window::Day, Some(1000), None)]);
        let mut s = BudgetState::default();
        reserve(&mut s, &b, &req("a", 400, 400), NOW).unwrap();
        let err = reserve(&mut s, &b, &req("b", 100, 200), NOW).unwrap_err();
        let BudgetError::Exceeded { message, retry_after_secs, .. } = err else { panic!("{err:?}") };
        assert!(message.contains("`day` budget"), "{message}");
        assert!(message.contains("resets at"), "{message}");
        assert_eq!(retry_after_secs, Window::Day.next_reset(NOW) - NOW);
    }

    #[test]
    fn settling_replaces_the_hold_with_actual_spend() {
        let b = budgets(vec![limit(Window::Day, Some(1000), Some(10_000))]);
        let mut s = BudgetState::default();
        let g = reserve(&mut s, &b, &req("a", 100, 500), NOW).unwrap();
        assert_eq!(g.amount, Amount { tokens: 600, micros: 100 + 1000, requests: 1 });
        assert_eq!(g.remaining.tokens, Some(400));
        let r = settle(&mut s, &b, "a", Amount { tokens: 150, micros: 200, requests: 0 }, NOW + 1);
        assert_eq!(r.tokens, Some(850));
        assert_eq!(r.micros, Some(9_800));
        // Settling twice charges once.
        assert_eq!(settle(&mut s, &b, "a", Amount { tokens: 150, micros: 200, requests: 0 }, NOW + 2), r);
    }

    #[test]
    fn releasing_returns_the_hold_and_is_idempotent() {
        let b = budgets(vec![limit(Window::Day, Some(1000), None)]);
        let mut s = BudgetState::default();
        reserve(&mut s, &b, &req("a", 100, 500), NOW).unwrap();
        assert_eq!(release(&mut s, &b, "a", NOW).tokens, Some(1000));
        assert_eq!(release(&mut s, &b, "a", NOW).tokens, Some(1000));
    }

    #[test]
    fn calendar_windows_roll_over_and_rolling_hours_age_out() {
        let b = budgets(vec![limit(Window::Day, Some(1000), None), limit(Window::RollingHour, Some(500), None)]);
        let mut s = BudgetState::default();
        reserve(&mut s, &b, &req("a", 100, 100), NOW).unwrap();
        settle(&mut s, &b, "a", Amount { tokens: 400, micros: 0, requests: 0 }, NOW);
        assert_eq!(remaining(&mut s, &b, NOW + 1800).tokens, Some(100));
        // The hour has aged out (500 left of it) but the day has not (600 left).
        assert_eq!(remaining(&mut s, &b, NOW + 3661).tokens, Some(500));
        let day = b.limits[0].clone();
        assert_eq!(s.spent_in(&day).tokens, 400);
        let tomorrow = Window::Day.next_reset(NOW) + 10;
        assert_eq!(remaining(&mut s, &b, tomorrow).tokens, Some(500));
    }

    #[test]
    fn expired_holds_stop_counting_so_a_dead_host_cannot_leak_budget() {
        let b = budgets(vec![limit(Window::Month, Some(1000), None)]);
        let mut s = BudgetState::default();
        reserve(&mut s, &b, &req("a", 500, 500), NOW).unwrap();
        assert!(reserve(&mut s, &b, &req("b", 1, 1), NOW).is_err());
        assert!(reserve(&mut s, &b, &req("b", 1, 1), NOW + RESERVATION_TTL_SECS + 1).is_ok());
    }

    #[test]
    fn crossing_the_soft_threshold_downgrades_to_the_cheap_price() {
        let mut b = budgets(vec![limit(Window::Day, None, Some(10_000))]);
        b.soft_threshold = Some(0.5);
        let cheap = ModelPrice { input: 100_000, cached_input: 0, output: 100_000 };
        let mut s = BudgetState::default();
        let mut r = req("a", 1000, 1000);
        r.downgrade_price = Some(cheap);
        let first = reserve(&mut s, &b, &r, NOW).unwrap();
        assert!(!first.downgraded);
        settle(&mut s, &b, "a", Amount { tokens: 0, micros: 6_000, requests: 0 }, NOW);
        r.id = "b".into();
        let second = reserve(&mut s, &b, &r, NOW).unwrap();
        assert!(second.downgraded);
        assert_eq!(second.amount.micros, cheap.estimate_micros(1000, 1000));
    }

    #[test]
    fn clamping_lowers_the_output_cap_to_what_is_left() {
        let mut b = budgets(vec![limit(Window::Day, None, Some(1_000))]);
        b.clamp_max_tokens = true;
        let mut s = BudgetState::default();
        let g = reserve(&mut s, &b, &req("a", 100, 10_000), NOW).unwrap();
        // 1000 µ$ - 100 µ$ prompt = 900 µ$ = 450 output tokens at 2 µ$ each.
        assert_eq!(g.clamped_output_tokens, Some(450));
        assert!(g.amount.micros <= 1_000);
        assert!(reserve(&mut s, &b, &req("b", 100, 10_000), NOW).is_err(), "nothing left to clamp to");
    }

    #[test]
    fn concurrent_reservations_never_overspend() {
        let b = budgets(vec![limit(Window::Day, Some(10_000), None)]);
        let mut s = BudgetState::default();
        let granted = (0..100).filter(|i| reserve(&mut s, &b, &req(&format!("r{i}"), 100, 200), NOW).is_ok()).count();
        assert_eq!(granted, 33);
        assert_eq!(remaining(&mut s, &b, NOW).tokens, Some(100));
    }

    #[test]
    fn exhausted_reports_a_spent_budget_and_nothing_else() {
        let b = budgets(vec![limit(Window::Day, Some(100), None)]);
        let mut s = BudgetState::default();
        assert!(exhausted(&mut s, &b, NOW).is_none());
        reserve(&mut s, &b, &req("a", 50, 50), NOW).unwrap();
        settle(&mut s, &b, "a", Amount { tokens: 100, micros: 0, requests: 0 }, NOW);
        assert!(exhausted(&mut s, &b, NOW).is_some());
    }

    #[test]
    fn a_late_settle_stamped_yesterday_does_not_wipe_today() {
        let b = budgets(vec![limit(Window::Day, Some(10_000), None)]);
        let mut s = BudgetState::default();
        let yesterday = Window::Day.next_reset(NOW) - 10;
        let today = yesterday + 40;
        reserve(&mut s, &b, &req("late", 10, 10), yesterday).unwrap();
        reserve(&mut s, &b, &req("today", 10, 10), today).unwrap();
        settle(&mut s, &b, "today", Amount { tokens: 500, micros: 0, requests: 0 }, today);
        settle(&mut s, &b, "late", Amount { tokens: 100, micros: 0, requests: 0 }, yesterday);
        assert_eq!(remaining(&mut s, &b, today).tokens, Some(10_000 - 600));
    }

    #[test]
    fn a_retried_reserve_gets_the_same_answer_and_holds_once() {
        let mut b = budgets(vec![limit(Window::Day, None, Some(1_000))]);
        b.clamp_max_tokens = true;
        let mut s = BudgetState::default();
        let first = reserve(&mut s, &b, &req("a", 100, 10_000), NOW).unwrap();
        let again = reserve(&mut s, &b, &req("a", 100, 10_000), NOW).unwrap();
        assert_eq!(first.clamped_output_tokens, again.clamped_output_tokens);
        assert_eq!(s.outstanding.len(), 1);
        settle(&mut s, &b, "a", Amount { tokens: 10, micros: 10, requests: 0 }, NOW);
        let after = reserve(&mut s, &b, &req("a", 100, 10_000), NOW).unwrap();
        assert_eq!(after.amount, Amount::default());
        assert!(s.outstanding.is_empty(), "a reserve retried after its settle holds nothing");
    }

    #[test]
    fn ledger_ops_and_replies_cross_a_wire_as_json_and_apply_like_the_functions() {
        let b = budgets(vec![limit(Window::Day, Some(1000), None)]);
        let op = LedgerOp::Reserve { budgets: b.clone(), request: req("a", 100, 100) };
        let wire: LedgerOp = serde_json::from_str(&serde_json::to_string(&op).unwrap()).unwrap();
        let mut s = BudgetState::default();
        let reply = apply(&mut s, &wire, NOW);
        let reply: LedgerReply = serde_json::from_str(&serde_json::to_string(&reply).unwrap()).unwrap();
        assert!(matches!(reply, LedgerReply::Granted { ref granted } if granted.amount.tokens == 200));
        let settle_op = LedgerOp::Settle {
            resent: false,
            budgets: b.clone(),
            id: "a".into(),
            amount: Amount { tokens: 50, micros: 0, requests: 0 },
            scopes: Default::default(),
        };
        assert_eq!(
            apply(&mut s, &settle_op, NOW),
            LedgerReply::Remaining { remaining: Remaining { tokens: Some(950), micros: None, requests: None } }
        );
        let big = LedgerOp::Reserve { budgets: b, request: req("b", 900, 100) };
        assert!(matches!(apply(&mut s, &big, NOW), LedgerReply::Refused { .. }));
    }

    #[test]
    fn state_survives_a_json_round_trip() {
        let b = budgets(vec![limit(Window::RollingHour, Some(1000), Some(5))]);
        let mut s = BudgetState::default();
        reserve(&mut s, &b, &req("a", 1, 1), NOW).unwrap();
        settle(&mut s, &b, "a", Amount { tokens: 3, micros: 4, requests: 0 }, NOW);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<BudgetState>(&json).unwrap(), s);
    }
}
