//! Limits below the tenant: an API key's own limits and each end user's.
//!
//! A request is charged at every level that applies to it: the tenant's
//! limits, its API key's (from the key's record), and its end user's (the
//! tenant's default for every user, or an override for one). They live in
//! the same [`BudgetState`](super::BudgetState) as the tenant's, so one
//! atomic update of that state (a Durable Object call, a compare-and-set on
//! Envoy's shared data or Redis) reserves and settles at every level at
//! once, and no level can be exceeded.
//!
//! The number of end users tracked is capped per tenant
//! ([`UserBudgets::max_tracked`]), so a client sending fresh user ids
//! cannot grow the state without bound. Past the cap, a user not yet
//! tracked shares one overflow allowance ([`OVERFLOW_USER`]) with every
//! other such user: it has the default per-user limits, so a flood of new
//! ids can spend at most one user's allowance between them. A user with an
//! override is always tracked on its own. A user's entry is dropped once
//! its windows have reset and it holds nothing, which frees its place.

use super::config::RawBudgetLimit;
use super::{Amount, BudgetLimit, Outstanding, WindowSpend, validate_limits};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Users tracked per tenant unless `budgets.users.max_tracked` says otherwise.
pub const DEFAULT_MAX_TRACKED_USERS: usize = 1000;
/// The most `budgets.users.max_tracked` may be: each tracked user is a few
/// hundred bytes of state that every update of the tenant's state carries.
pub const MAX_TRACKED_USERS: usize = 10_000;
/// The most per-user overrides a tenant config may list.
pub const MAX_USER_OVERRIDES: usize = 1000;
/// The longest end-user id accepted (bytes); a longer one is refused (400).
pub const MAX_USER_ID_BYTES: usize = 256;
/// The shared entry of users past the cap.
pub const OVERFLOW_USER: &str = "*";

/// A level a limit belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Tenant,
    Key,
    User,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Tenant => "tenant",
            Level::Key => "key",
            Level::User => "user",
        }
    }
}

/// An API key as a budget level: its id (a prefix of its hash, never the
/// key) and its own limits, from its record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyScope {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<BudgetLimit>,
}

impl KeyScope {
    /// The key's level for a record's `limits` (validated here; each
    /// problem goes to `problem` as (path, message)). `key_hash` is the
    /// key's SHA-256 in hex; its first 16 digits name the key in the state
    /// and in messages when it has no label.
    pub fn from_record(
        key_hash: &str,
        label: Option<&str>,
        limits: &[RawBudgetLimit],
        problem: impl FnMut(String, String),
    ) -> KeyScope {
        let id = key_hash.get(..16).unwrap_or(key_hash).to_owned();
        let limits = if limits.is_empty() { Vec::new() } else { validate_limits(limits.to_vec(), "limits", problem) };
        KeyScope { id, label: label.map(str::to_owned), limits }
    }

    /// How messages name the key.
    pub fn display(&self) -> String {
        match &self.label {
            Some(label) => format!("key `{label}`"),
            None => format!("key {}…", self.id),
        }
    }
}

/// The levels below the tenant one request is charged at.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scopes {
    /// The request's API key, when its record sets limits (boxed: every
    /// ledger op carries a `Scopes`, most with no key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Box<KeyScope>>,
    /// The end user, as the client named it, when the tenant limits users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Scopes {
    pub fn is_empty(&self) -> bool {
        self.key.is_none() && self.user.is_none()
    }
}

/// `budgets.users` as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawUserBudgets {
    /// A request header naming the end user (e.g. `x-tollgate-user`); it
    /// wins over the body's `user` / `safety_identifier` (OpenAI) and
    /// `metadata.user_id` (Anthropic).
    #[serde(default)]
    pub header: Option<String>,
    /// Limits every end user gets.
    #[serde(default)]
    pub limits: Vec<RawBudgetLimit>,
    /// Limits for named users instead of the default ones.
    #[serde(default)]
    pub overrides: BTreeMap<String, Vec<RawBudgetLimit>>,
    /// The most users tracked at once (default 1000, at most 10,000); past
    /// it, users not yet tracked share one allowance of the default limits.
    #[serde(default)]
    pub max_tracked: Option<usize>,
}

/// Validated `budgets.users`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserBudgets {
    /// Lowercase header name, if the tenant names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<BudgetLimit>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, Vec<BudgetLimit>>,
    pub max_tracked: usize,
}

impl UserBudgets {
    pub(super) fn from_raw(raw: RawUserBudgets, problem: &mut impl FnMut(String, String)) -> UserBudgets {
        let header = raw.header.map(|h| h.trim().to_ascii_lowercase());
        if let Some(h) = &header
            && (h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            problem("users.header".to_owned(), "must be an HTTP header name (letters, digits, `-`, `_`)".to_owned());
        }
        let limits = validate_limits(raw.limits, "users.limits", &mut *problem);
        if raw.overrides.len() > MAX_USER_OVERRIDES {
            problem("users.overrides".to_owned(), format!("lists more than {MAX_USER_OVERRIDES} users"));
        }
        let mut overrides = BTreeMap::new();
        for (user, raw_limits) in raw.overrides {
            if user.is_empty() || user.len() > MAX_USER_ID_BYTES || user == OVERFLOW_USER {
                problem(
                    format!("users.overrides.{user}"),
                    format!("a user id is 1 to {MAX_USER_ID_BYTES} bytes, and not `{OVERFLOW_USER}`"),
                );
            }
            let limits = validate_limits(raw_limits, &format!("users.overrides.{user}"), &mut *problem);
            overrides.insert(user, limits);
        }
        let max_tracked = raw.max_tracked.unwrap_or(DEFAULT_MAX_TRACKED_USERS);
        if !(1..=MAX_TRACKED_USERS).contains(&max_tracked) {
            problem("users.max_tracked".to_owned(), format!("must be between 1 and {MAX_TRACKED_USERS}"));
        }
        UserBudgets { header, limits, overrides, max_tracked }
    }

    /// The limits `user` gets (empty: none).
    pub fn limits_for(&self, user: &str) -> &[BudgetLimit] {
        self.overrides.get(user).map_or(&self.limits, Vec::as_slice)
    }

    /// Whether any user has limits.
    pub fn limits_anyone(&self) -> bool {
        !self.limits.is_empty() || self.overrides.values().any(|l| !l.is_empty())
    }
}

/// Settled spend of one key or user, per window of its limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeSpend {
    pub level: Level,
    pub id: String,
    pub windows: Vec<WindowSpend>,
}

impl ScopeSpend {
    fn is_idle(&self) -> bool {
        self.windows.iter().all(|w| w.spent == Amount::default())
    }
}

/// Which entries a hold is charged at below the tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldScope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl HoldScope {
    pub fn is_empty(&self) -> bool {
        self.key.is_none() && self.user.is_none()
    }

    pub(crate) fn holds_at(&self, level: Level, id: &str) -> bool {
        match level {
            Level::Tenant => true,
            Level::Key => self.key.as_deref() == Some(id),
            Level::User => self.user.as_deref() == Some(id),
        }
    }
}

/// The entry a request's user is charged at: the user's own, or the
/// shared overflow entry once `max_tracked` users are tracked.
pub(super) fn user_entry<'a>(scoped: &[ScopeSpend], users: &UserBudgets, user: &'a str) -> &'a str {
    if users.overrides.contains_key(user) || scoped.iter().any(|s| s.level == Level::User && s.id == user) {
        return user;
    }
    let tracked = scoped.iter().filter(|s| s.level == Level::User && s.id != OVERFLOW_USER).count();
    if tracked < users.max_tracked { user } else { OVERFLOW_USER }
}

/// Drop the entries that hold nothing and have nothing spent in any
/// window (after the windows were brought up to date).
pub(super) fn drop_idle(scoped: &mut Vec<ScopeSpend>, outstanding: &[Outstanding]) {
    scoped.retain(|s| !s.is_idle() || outstanding.iter().any(|o| o.scope.holds_at(s.level, &s.id)));
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::*;
    use super::*;
    use crate::error::ApiError;
    use crate::pricing::ModelPrice;

    const NOW: u64 = 1_795_000_000;

    fn day(name: &str, tokens: u64) -> BudgetLimit {
        BudgetLimit { name: name.into(), window: Window::Day, tokens: Some(tokens), usd_micros: None, requests: None }
    }

    /// A tenant of 10,000 tokens a day whose users get 1,000 a day each
    /// (`vip` gets 3,000), at most `max_tracked` of them tracked.
    fn budgets(max_tracked: usize) -> Budgets {
        Budgets {
            users: Some(Box::new(UserBudgets {
                header: None,
                limits: vec![day("user-day", 1_000)],
                overrides: [("vip".to_owned(), vec![day("vip-day", 3_000)])].into_iter().collect(),
                max_tracked,
            })),
            ..super::super::tests::budgets(vec![day("tenant-day", 10_000)])
        }
    }

    fn key(id: &str, tokens: u64) -> KeyScope {
        KeyScope { id: id.into(), label: Some(format!("{id}-app")), limits: vec![day("key-day", tokens)] }
    }

    fn req(id: &str, tokens: u64, key: Option<KeyScope>, user: Option<&str>) -> ReserveRequest {
        ReserveRequest {
            id: id.into(),
            prompt_tokens: tokens / 2,
            output_tokens: tokens - tokens / 2,
            price: ModelPrice { input: 1_000_000, cached_input: 1_000_000, output: 1_000_000 },
            downgrade_price: None,
            extra_micros: 0,
            scopes: Scopes { key: key.map(Box::new), user: user.map(str::to_owned) },
        }
    }

    fn level_of(err: &BudgetError) -> (Level, String) {
        match err {
            BudgetError::Exceeded { level, limit, .. } => (*level, limit.clone()),
            other => panic!("not a budget refusal: {other:?}"),
        }
    }

    fn spent(state: &BudgetState, level: Level, id: &str) -> u64 {
        state.scoped.iter().find(|s| s.level == level && s.id == id).map_or(0, |s| s.windows[0].spent.tokens)
    }

    #[test]
    fn a_key_limit_refuses_that_key_first_and_the_refusal_names_the_key() {
        let b = budgets(10);
        let mut s = BudgetState::default();
        reserve(&mut s, &b, &req("a", 400, Some(key("k1", 500)), None), NOW).unwrap();
        let err = reserve(&mut s, &b, &req("b", 200, Some(key("k1", 500)), None), NOW).unwrap_err();
        assert_eq!(level_of(&err), (Level::Key, "key-day".to_owned()));
        assert!(err.to_string().contains("key `k1-app`"), "{err}");
        // Another key of the tenant is not refused.
        reserve(&mut s, &b, &req("c", 200, Some(key("k2", 500)), None), NOW).unwrap();
        let api = ApiError::from(err);
        assert_eq!(api.status, 429);
        assert!(api.headers().contains(&("x-tollgate-limit-level".to_owned(), "key".to_owned())));
        assert!(api.headers().contains(&("x-tollgate-limit".to_owned(), "key-day".to_owned())));
    }

    #[test]
    fn two_users_of_one_key_are_limited_apart() {
        let b = budgets(10);
        let mut s = BudgetState::default();
        let k = || Some(key("k1", 5_000));
        reserve(&mut s, &b, &req("a1", 900, k(), Some("alice")), NOW).unwrap();
        settle_at(&mut s, &b, "a1", Amount { tokens: 900, micros: 0, requests: 0 }, &Scopes::default(), NOW);
        let err = reserve(&mut s, &b, &req("a2", 200, k(), Some("alice")), NOW).unwrap_err();
        assert_eq!(level_of(&err), (Level::User, "user-day".to_owned()));
        assert!(err.to_string().contains("user `alice`"), "{err}");
        // Bob, on the same key, still has his whole allowance.
        reserve(&mut s, &b, &req("b1", 1_000, k(), Some("bob")), NOW).unwrap();
        assert_eq!(spent(&s, Level::User, "alice"), 900);
        assert_eq!(spent(&s, Level::Key, "k1"), 900);
        assert_eq!(s.windows[0].spent.tokens, 900);
    }

    #[test]
    fn a_refused_request_holds_at_no_level_and_a_granted_one_at_every_level() {
        let b = budgets(10);
        let mut s = BudgetState::default();
        // The user's limit refuses it: the tenant and the key hold nothing for it.
        let err = reserve(&mut s, &b, &req("big", 1_200, Some(key("k1", 5_000)), Some("carol")), NOW).unwrap_err();
        assert!(matches!(err, BudgetError::NeverFits { .. }), "{err:?}");
        assert!(s.outstanding.is_empty());
        let g = reserve(&mut s, &b, &req("ok", 600, Some(key("k1", 5_000)), Some("carol")), NOW).unwrap();
        // The remaining headroom is the tightest level's: the user's 1,000 less 600.
        assert_eq!(g.remaining.tokens, Some(400));
        let hold = &s.outstanding[0];
        assert_eq!((hold.scope.key.as_deref(), hold.scope.user.as_deref()), (Some("k1"), Some("carol")));
        release(&mut s, &b, "ok", NOW);
        assert_eq!(remaining(&mut s, &b, NOW).tokens, Some(10_000));
        let again = reserve(&mut s, &b, &req("ok2", 1_000, Some(key("k1", 5_000)), Some("carol")), NOW);
        assert!(again.is_ok(), "a released hold frees the user's allowance: {again:?}");
    }

    #[test]
    fn the_tenant_limit_still_binds_when_every_user_has_room() {
        let mut b = budgets(100);
        b.limits = vec![day("tenant-day", 2_500)];
        let mut s = BudgetState::default();
        for (i, user) in ["u1", "u2"].iter().enumerate() {
            reserve(&mut s, &b, &req(&format!("r{i}"), 1_000, None, Some(user)), NOW).unwrap();
        }
        let err = reserve(&mut s, &b, &req("r3", 1_000, None, Some("u3")), NOW).unwrap_err();
        assert_eq!(level_of(&err), (Level::Tenant, "tenant-day".to_owned()));
    }

    #[test]
    fn past_the_cap_new_users_share_one_allowance_and_a_place_frees_when_a_user_is_idle() {
        let b = budgets(2);
        let mut s = BudgetState::default();
        for user in ["u1", "u2"] {
            reserve(&mut s, &b, &req(&format!("r-{user}"), 100, None, Some(user)), NOW).unwrap();
        }
        // A flood of fresh ids past the cap: one 1,000-token allowance between them.
        let mut granted = 0;
        for i in 0..50 {
            if reserve(&mut s, &b, &req(&format!("f{i}"), 100, None, Some(&format!("fresh-{i}"))), NOW).is_ok() {
                granted += 1;
            }
        }
        assert_eq!(granted, 10);
        let users = s.scoped.iter().filter(|e| e.level == Level::User).count();
        assert_eq!(users, 3, "two users and the overflow entry");
        let err = reserve(&mut s, &b, &req("f-last", 100, None, Some("fresh-x")), NOW).unwrap_err();
        assert!(err.to_string().contains("users past the cap of 2 tracked users"), "{err}");
        // A user with an override is tracked on its own, past the cap.
        reserve(&mut s, &b, &req("v", 2_500, None, Some("vip")), NOW).unwrap();
        // The next day every user is idle once its request ended: places free up.
        for id in ["r-u1", "r-u2", "v"] {
            release(&mut s, &b, id, NOW);
        }
        for i in 0..10 {
            release(&mut s, &b, &format!("f{i}"), NOW);
        }
        let tomorrow = NOW + 86_400;
        reserve(&mut s, &b, &req("t", 100, None, Some("fresh-y")), tomorrow).unwrap();
        assert_eq!(s.outstanding[0].scope.user.as_deref(), Some("fresh-y"));
        assert_eq!(s.scoped.len(), 1, "idle entries were dropped: {:?}", s.scoped);
    }

    #[test]
    fn a_settle_whose_hold_expired_still_charges_the_key_and_the_user() {
        let b = budgets(10);
        let mut s = BudgetState::default();
        let scopes = Scopes { key: Some(Box::new(key("k1", 5_000))), user: Some("dave".into()) };
        let mut r = req("late", 500, None, None);
        r.scopes = scopes.clone();
        reserve(&mut s, &b, &r, NOW).unwrap();
        let later = NOW + RESERVATION_TTL_SECS + 1;
        settle_at(&mut s, &b, "late", Amount { tokens: 300, micros: 0, requests: 0 }, &scopes, later);
        assert_eq!(spent(&s, Level::User, "dave"), 300);
        assert_eq!(spent(&s, Level::Key, "k1"), 300);
        assert_eq!(s.windows[0].spent.tokens, 300);
        // Settling again changes nothing.
        settle_at(&mut s, &b, "late", Amount { tokens: 300, micros: 0, requests: 0 }, &scopes, later);
        assert_eq!(spent(&s, Level::User, "dave"), 300);
    }

    #[test]
    fn a_cache_hit_check_names_the_users_exhausted_limit() {
        let b = budgets(10);
        let mut s = BudgetState::default();
        reserve(&mut s, &b, &req("a", 1_000, None, Some("erin")), NOW).unwrap();
        let erin = Scopes { key: None, user: Some("erin".into()) };
        let err = exhausted_for(&mut s, &b, &erin, NOW).expect("erin is out");
        assert_eq!(level_of(&err), (Level::User, "user-day".to_owned()));
        assert_eq!(exhausted_for(&mut s, &b, &Scopes { key: None, user: Some("frank".into()) }, NOW), None);
        assert_eq!(exhausted(&mut s, &b, NOW), None);
    }

    #[test]
    fn a_per_minute_limit_refuses_as_a_rate_and_opens_again_next_minute() {
        let mut b = budgets(10);
        b.users = None;
        b.limits = vec![BudgetLimit {
            name: "tpm".into(),
            window: Window::Minute,
            tokens: Some(1_000),
            usd_micros: None,
            requests: None,
        }];
        let mut s = BudgetState::default();
        let start = NOW - NOW % 60;
        reserve(&mut s, &b, &req("a", 800, None, None), start + 5).unwrap();
        settle(&mut s, &b, "a", Amount { tokens: 800, micros: 0, requests: 0 }, start + 6);
        let err = reserve(&mut s, &b, &req("b", 400, None, None), start + 30).unwrap_err();
        let api = ApiError::from(err.clone());
        assert_eq!((api.status, api.code), (429, "rate_limit_exceeded"));
        assert_eq!(api.retry_after_secs, Some(30));
        reserve(&mut s, &b, &req("b", 400, None, None), start + 60).unwrap();
    }

    #[test]
    fn user_limits_validate_and_name_the_bad_field() {
        let raw: RawBudgets = serde_json::from_value(serde_json::json!({
            "limits": [{"window": "day", "usd": 5}],
            "users": {"header": "x-tollgate-user", "limits": [{"window": "day"}], "max_tracked": 0,
                      "overrides": {"*": [{"window": "day", "usd": 1}]}}
        }))
        .unwrap();
        let mut problems = Vec::new();
        Budgets::from_raw(raw, |path, _| problems.push(path));
        assert_eq!(problems, ["users.limits[0]", "users.overrides.*", "users.max_tracked"]);
        let bad_header: Result<RawBudgets, _> = serde_json::from_value(serde_json::json!({"users": {"headers": "x"}}));
        assert!(bad_header.is_err(), "unknown fields are refused");
    }

    #[test]
    fn scoped_state_round_trips_through_json_and_is_absent_when_unused() {
        let b = budgets(10);
        let mut s = BudgetState::default();
        reserve(&mut s, &b, &req("a", 100, Some(key("k1", 500)), Some("gus")), NOW).unwrap();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<BudgetState>(&text).unwrap(), s);
        let plain = serde_json::to_string(&BudgetState::default()).unwrap();
        assert!(!plain.contains("scoped"), "{plain}");
    }
}
