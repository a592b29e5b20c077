//! The `budgets` section of a tenant config, in the config's two stages:
//! [`RawBudgets`] as written (unknown fields refused) and [`Budgets`]
//! validated, dollar amounts in integer micro-dollars.
//!
//! The tenant config parser ([`crate::TenantConfig`]) calls
//! [`Budgets::from_raw`] for this section; nothing here depends on it.

use super::Amount;
use super::Window;
use super::alerts::{AlertSettings, RawAlerts};
use super::lease::LeaseSizing;
use super::scope::{RawUserBudgets, UserBudgets};
use crate::pricing::usd_to_micros;
use serde::{Deserialize, Serialize};

/// Output tokens reserved when a request sets no `max_tokens`, unless the
/// tenant sets `budgets.default_output_reservation` (docs/config.md).
pub const DEFAULT_OUTPUT_RESERVATION: u64 = 4096;

// ---------------------------------------------------------------- raw stage

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawBudgets {
    #[serde(default)]
    pub limits: Vec<RawBudgetLimit>,
    /// Above this share (percent) of any limit, route to the cheapest tier.
    #[serde(default)]
    pub soft_threshold_pct: Option<f64>,
    /// What happens once a limit is reached.
    #[serde(default)]
    pub on_exhausted: Option<OnExhausted>,
    /// Lower `max_tokens` to what the remaining budget can pay for instead of refusing.
    #[serde(default)]
    pub clamp_max_tokens: Option<bool>,
    /// Output tokens reserved when a request sets no `max_tokens` (default 4096).
    #[serde(default)]
    pub default_output_reservation: Option<u64>,
    /// When the budget store cannot be reached: `closed` refuses (503), `open` serves unmetered.
    #[serde(default)]
    pub store_failure: Option<FailureMode>,
    /// Where requests reserve: `leased` (default) from a slice of the
    /// budget this host instance holds in memory, `per_request` from the
    /// tenant's single writer on every request.
    #[serde(default)]
    pub consistency: Option<Consistency>,
    /// How leases are sized (with `consistency: leased`).
    #[serde(default)]
    pub lease: Option<RawLease>,
    /// Limits for each end user, on top of the tenant's.
    #[serde(default)]
    pub users: Option<RawUserBudgets>,
    /// Alerts when a limit crosses `soft_threshold_pct` or runs out.
    #[serde(default)]
    pub alerts: Option<RawAlerts>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Consistency {
    /// Each host instance reserves from a lease carved from the limits and
    /// reports settled spend in batches (docs/config.md "Leases").
    Leased,
    /// A round trip to the tenant's writer for every reserve and settle.
    PerRequest,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawLease {
    /// Seconds a lease lives unless renewed (default 30, 5 to 300).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// A lease is at most this share (percent) of what a limit has left (default 12.5).
    #[serde(default)]
    pub share_pct: Option<f64>,
    /// A lease holds at most this many dollars (default: no cap but the share).
    #[serde(default)]
    pub max_usd: Option<f64>,
    /// A lease holds at most this many tokens (default: no cap but the share).
    #[serde(default)]
    pub max_tokens: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawBudgetLimit {
    /// A label used in messages and `/v1/usage`; defaults to the window name.
    #[serde(default)]
    pub name: Option<String>,
    pub window: Window,
    #[serde(default)]
    pub tokens: Option<u64>,
    #[serde(default)]
    pub usd: Option<f64>,
    /// Requests sent upstream (with `window: minute`, requests per minute).
    #[serde(default)]
    pub requests: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum OnExhausted {
    /// 429 for every request until the window resets.
    Reject,
    /// Serve cache hits; 429 for anything that would spend.
    CacheOnly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum FailureMode {
    Closed,
    Open,
}

// ----------------------------------------------------------- validated stage

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetLimit {
    pub name: String,
    pub window: Window,
    pub tokens: Option<u64>,
    pub usd_micros: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
}

impl BudgetLimit {
    /// `used` (spent and held, and what a request needs) is past this limit.
    pub fn exceeded_by(&self, used: super::Amount) -> bool {
        self.tokens.is_some_and(|t| used.tokens > t)
            || self.usd_micros.is_some_and(|m| used.micros > m)
            || self.requests.is_some_and(|n| used.requests > n)
    }

    /// `used` has reached this limit: nothing more fits.
    pub fn reached_by(&self, used: super::Amount) -> bool {
        self.tokens.is_some_and(|t| used.tokens >= t)
            || self.usd_micros.is_some_and(|m| used.micros >= m)
            || self.requests.is_some_and(|n| used.requests >= n)
    }
}

/// Validated budget settings. Serialisable so a host can send them with a
/// [`super::LedgerOp`] to wherever the tenant's state lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budgets {
    pub limits: Vec<BudgetLimit>,
    /// Fraction in (0, 1]; None disables the soft downgrade.
    pub soft_threshold: Option<f64>,
    pub on_exhausted: OnExhausted,
    pub clamp_max_tokens: bool,
    pub default_output_reservation: u64,
    pub store_failure: FailureMode,
    /// How leases are sized; None: every reserve goes to the writer
    /// (`consistency: per_request`, and anything stored before leases).
    #[serde(default)]
    pub leases: Option<LeaseSizing>,
    /// Limits for each end user ([`super::scope`]); boxed, as every
    /// ledger op carries the budgets and most tenants have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Box<UserBudgets>>,
    /// Alerts ([`super::alerts`]); None: none are kept or sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Box<AlertSettings>>,
}

impl Budgets {
    /// Stage two for the `budgets` section. Every problem goes to `problem`
    /// as (path within `budgets`, e.g. `limits[0].usd`, message); the
    /// settings returned mean something only if there was none.
    pub fn from_raw(raw: RawBudgets, mut problem: impl FnMut(String, String)) -> Budgets {
        let limits = validate_limits(raw.limits, "limits", &mut problem);
        let users = raw.users.map(|users| Box::new(UserBudgets::from_raw(users, &mut problem)));
        let alerts = raw.alerts.map(|alerts| Box::new(AlertSettings::from_raw(alerts, &mut problem)));
        let soft_threshold = match raw.soft_threshold_pct {
            Some(pct) if !(pct > 0.0 && pct <= 100.0) => {
                problem("soft_threshold_pct".to_owned(), "must be a percentage in (0, 100]".to_owned());
                None
            }
            Some(pct) => Some(pct / 100.0),
            None => None,
        };
        let default_output_reservation = raw.default_output_reservation.unwrap_or(DEFAULT_OUTPUT_RESERVATION);
        if default_output_reservation == 0 {
            problem("default_output_reservation".to_owned(), "must be at least 1 token".to_owned());
        }
        let leases = match raw.consistency.unwrap_or(Consistency::Leased) {
            Consistency::PerRequest => {
                if raw.lease.is_some() {
                    problem("lease".to_owned(), "leases are not used with `consistency: per_request`".to_owned());
                }
                None
            }
            Consistency::Leased => Some(lease_sizing(raw.lease.unwrap_or_default(), &mut problem)),
        };
        Budgets {
            leases,
            users,
            alerts,
            limits,
            soft_threshold,
            on_exhausted: raw.on_exhausted.unwrap_or(OnExhausted::Reject),
            clamp_max_tokens: raw.clamp_max_tokens.unwrap_or(false),
            default_output_reservation,
            store_failure: raw.store_failure.unwrap_or(FailureMode::Closed),
        }
    }
}

/// Stage two for a list of limits at `base` (`limits`, `users.limits`, a
/// key record's `limits`): amounts in micro-dollars, names distinct.
pub(super) fn validate_limits(
    raw: Vec<RawBudgetLimit>,
    base: &str,
    mut problem: impl FnMut(String, String),
) -> Vec<BudgetLimit> {
    let mut limits: Vec<BudgetLimit> = Vec::new();
    for (i, limit) in raw.into_iter().enumerate() {
        let base = format!("{base}[{i}]");
        if limit.tokens.is_none() && limit.usd.is_none() && limit.requests.is_none() {
            problem(base.clone(), "set `tokens`, `usd`, `requests`, or more than one".to_owned());
        }
        let usd_micros = match limit.usd {
            Some(usd) => match usd_to_micros(usd) {
                Some(m) => Some(m),
                None => {
                    problem(format!("{base}.usd"), "must be a finite, non-negative amount of dollars".to_owned());
                    None
                }
            },
            None => None,
        };
        let name = limit.name.unwrap_or_else(|| limit.window.as_str().to_owned());
        if limits.iter().any(|l| l.name == name) {
            problem(format!("{base}.name"), format!("duplicate budget name `{name}`; give each limit a distinct name"));
        }
        limits.push(BudgetLimit {
            name,
            window: limit.window,
            tokens: limit.tokens,
            usd_micros,
            requests: limit.requests,
        });
    }
    limits
}

fn lease_sizing(raw: RawLease, problem: &mut impl FnMut(String, String)) -> LeaseSizing {
    let defaults = LeaseSizing::default();
    let ttl_seconds = raw.ttl_seconds.unwrap_or(defaults.ttl_seconds);
    if !(5..=300).contains(&ttl_seconds) {
        problem("lease.ttl_seconds".to_owned(), "must be between 5 and 300 seconds".to_owned());
    }
    let share = match raw.share_pct {
        None => defaults.share,
        // A lease is 1/share of what is left: the percentage as a whole divisor.
        Some(pct) if pct > 0.0 && pct <= 100.0 => (100.0 / pct).round().max(1.0) as u64,
        Some(_) => {
            problem("lease.share_pct".to_owned(), "must be a percentage in (0, 100]".to_owned());
            defaults.share
        }
    };
    let micros = match raw.max_usd.map(usd_to_micros) {
        None => 0,
        Some(Some(m)) if m > 0 => m,
        Some(_) => {
            problem("lease.max_usd".to_owned(), "must be a positive amount of dollars".to_owned());
            0
        }
    };
    let tokens = match raw.max_tokens {
        Some(0) => {
            problem("lease.max_tokens".to_owned(), "must be at least 1 token".to_owned());
            0
        }
        t => t.unwrap_or(0),
    };
    LeaseSizing { share, cap: Amount { tokens, micros, requests: 0 }, ttl_seconds }
}
