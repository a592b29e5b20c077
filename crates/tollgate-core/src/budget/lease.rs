//! Budget leases (escrow): the arithmetic that takes the single writer off
//! the request path, as pure transitions with the time passed in.
//!
//! The writer (a tenant's Durable Object; its shared-data key or Redis for
//! Envoy) keeps the authoritative [`BudgetState`]. It grants a host instance
//! a **lease**: a slice of what every limit has left, with an expiry. The
//! instance reserves and settles its requests against the lease in memory
//! ([`LocalLease`]), with no round trip, and reports settled spend in
//! batches ([`LeaseReport`]); it asks for more before it runs out.
//!
//! **The invariant: spend never exceeds a limit.** In the writer, a lease's
//! unreported part is held like a request's hold, so settled spend plus
//! holds plus every live lease fit each limit; an instance spends only
//! inside its lease. A lease that expires unreported is **charged in full**:
//! conservative, never over. A report that comes after that is ignored (the
//! full charge covered it).
//!
//! **Near the end of a budget, leases shrink.** A grant is at most a share
//! of what is left ([`LeaseSizing::share`]) and at most a cap, and at least
//! the worst case of the request that asked (so near exhaustion a lease is
//! exactly one request, which is the per-request behaviour). What can sit
//! unused in other instances' leases at the end is bounded by the live
//! leases' unspent parts, for at most one lease lifetime.

use super::scope::{HoldScope, Level, ScopeSpend, Scopes};
use super::{Amount, BudgetState, Budgets, Outstanding};
use crate::error::BudgetError;
use serde::{Deserialize, Serialize};

/// How leases are sized and how long they live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSizing {
    /// A grant is at most `1/share` of what the tightest limit has left.
    pub share: u64,
    /// A grant is at most this much (0: no cap).
    pub cap: Amount,
    /// Seconds a lease lives unless renewed.
    pub ttl_seconds: u64,
}

impl Default for LeaseSizing {
    fn default() -> Self {
        LeaseSizing { share: 8, cap: Amount::default(), ttl_seconds: 30 }
    }
}

/// An instance asks the writer for a lease (or for more on its own).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The lease's id, chosen by the instance (random bytes from the host):
    /// a renewal names its current lease, so it grows rather than doubles.
    pub id: String,
    /// What the instance would like (its recent demand).
    pub want: Amount,
    /// What it needs at least: the worst case of the request waiting.
    pub need: Amount,
    /// The worst case of one of its typical requests: a lease that could
    /// not pay even one is not granted (nor grown), so near the end of a
    /// budget no instance strands a sliver another instance's request
    /// needs, and requests reserve one by one at the writer instead.
    #[serde(default)]
    pub unit: Amount,
    /// What the instance holds under this lease as far as it knows (its
    /// size after this batch's report): the writer's hold is cut to it
    /// before growing. A grant that landed but whose answer was lost (the
    /// call timed out) was never added by the instance; without this its
    /// retry would add again and the first grant would sit unusable in
    /// the writer until the lease ends. Only ever lowers the hold, so the
    /// writer still holds all the instance may spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub have: Option<Amount>,
    /// The key and end user the lease is carved for besides the tenant
    /// (none: the tenant's limits only). A scoped lease counts at every
    /// level its requests are charged at, so requests of that key and user
    /// reserve from it in memory like any other.
    #[serde(default, skip_serializing_if = "Scopes::is_empty")]
    pub scopes: Scopes,
}

/// What the writer granted: the lease's whole size now and its expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub id: String,
    /// Added by this grant.
    pub added: Amount,
    pub expires_at: u64,
    /// The writer no longer held a lease by this id (it expired, so it was
    /// charged in full, or it was returned): this grant starts it afresh,
    /// and what the instance held under it before is already paid for.
    pub fresh: bool,
    /// The writer's state as the grant left it, for the instance's own
    /// decisions (soft downgrade, clamping, remaining headroom).
    #[serde(default)]
    pub view: LeaseView,
}

/// What an instance sees of the writer's state: the windows' settled spend,
/// and what everything else holds (other instances' leases, requests
/// reserved at the writer), its own lease left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    pub windows: Vec<super::WindowSpend>,
    pub others: Amount,
    /// A scoped lease's levels below the tenant (boxed: most leases are
    /// the tenant's alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<Box<ScopedView>>,
}

/// A scoped lease's levels below the tenant: the entries it is charged at
/// (the user's may be the shared one of users past the cap), their settled
/// spend, and what everything else holds at the key and at the user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopedView {
    pub scope: HoldScope,
    pub scoped: Vec<ScopeSpend>,
    pub others_at_key: Amount,
    pub others_at_user: Amount,
}

impl LeaseView {
    /// The entries the lease is charged at below the tenant.
    pub fn scope(&self) -> Option<&HoldScope> {
        self.below.as_ref().map(|b| &b.scope)
    }
}

/// Settled spend an instance reports against its lease, and whether it
/// hands the rest back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseReport {
    pub lease: String,
    /// `(request id, actual spend)`, each applied once.
    pub settled: Vec<(String, Amount)>,
    /// The lease ends here: its unspent part is freed.
    pub returned: bool,
    /// The lease shrinks to at most this (after the settled spend above
    /// is taken off it): the instance sends a request its lease cannot pay
    /// to the writer and hands back what the lease has unused first, so the
    /// writer decides on all that is left. An absolute size rather than an
    /// amount handed back, so a report applied twice (a Redis write carried
    /// by another request's, then retried) frees it once.
    #[serde(default)]
    pub keep: Option<Amount>,
    /// The lease's key and user, as in its grant: the writer's alerts
    /// need the key's limits, which only requests carry.
    #[serde(default, skip_serializing_if = "Scopes::is_empty")]
    pub scopes: Scopes,
}

const LEASE_PREFIX: &str = "lease:";
/// No new lease is granted while the writer holds this many holds (half of
/// what it takes before refusing requests).
const MAX_LEASE_HOLDS: usize = super::MAX_OUTSTANDING / 2;

fn lease_hold_id(id: &str) -> String {
    format!("{LEASE_PREFIX}{id}")
}

/// Whether a hold in the writer's state is a lease.
pub(crate) fn is_lease(hold_id: &str) -> bool {
    hold_id.starts_with(LEASE_PREFIX)
}

/// Grant (or grow) a lease. Refused with the budget's own error when what
/// is left cannot pay the request's worst case (`need`).
pub fn grant(
    state: &mut BudgetState,
    budgets: &Budgets,
    sizing: &LeaseSizing,
    request: &LeaseRequest,
    now: u64,
) -> Result<LeaseGrant, BudgetError> {
    expire(state, budgets, now);
    let hold = lease_hold_id(&request.id);
    if let (Some(have), Some(lease)) = (request.have, state.outstanding.iter_mut().find(|o| o.id == hold)) {
        lease.amount = lease.amount.min(have);
    }
    // The levels the lease counts at: the tenant's, and for a scoped
    // lease its key's and user's, as a request's would be resolved now.
    let scope = state.prepare_scopes(budgets, &request.scopes, now);
    if let Some(i) = state.outstanding.iter().position(|o| o.id == hold && o.scope != scope) {
        // They resolve elsewhere than when the lease was granted (a user
        // past the cap has a place of its own now; a key or user gained or
        // lost limits): the old lease ends, charged in full at its levels
        // as if it had expired, and this grant starts it afresh.
        let old = state.outstanding.swap_remove(i);
        state.charge_at(&old.scope, old.amount, now);
    }
    if !state.outstanding.iter().any(|o| o.id == hold) && state.outstanding.len() >= MAX_LEASE_HOLDS {
        // Leases (one per instance, and per key and user an instance
        // serves often) never crowd out requests' own holds at the writer.
        return Err(BudgetError::TooManyInFlight { limit: MAX_LEASE_HOLDS });
    }
    let levels = state.levels(budgets, &request.scopes, &scope);
    let left = super::remaining_over(&levels);
    if let Some(refusal) = levels
        .iter()
        .find_map(|level| level.violation(request.need).map(|limit| level.exceeded(limit, request.need, now)))
    {
        return Err(refusal);
    }
    let share = sizing.share.max(1);
    let cap = |x: u64, c: u64| if c == 0 { x } else { x.min(c) };
    // Each dimension: what is wanted, within a share of what is left and
    // the cap, and never less than what is needed (which fits what is
    // left, or the grant was refused above).
    let size = |want: u64, need: u64, left: Option<u64>, limit_cap: u64| {
        let fair = left.map_or(want, |l| l / share);
        cap(want.min(fair.max(need)), limit_cap).max(need)
    };
    let mut added = Amount {
        tokens: size(request.want.tokens, request.need.tokens, left.tokens, sizing.cap.tokens),
        micros: size(request.want.micros, request.need.micros, left.micros, sizing.cap.micros),
        requests: size(request.want.requests, request.need.requests, left.requests, sizing.cap.requests),
    };
    if request.unit.exceeds(added) {
        // Too small to pay one typical request: no lease at all.
        added = request.need;
    }
    let expires_at = now.saturating_add(sizing.ttl_seconds);
    let held_by_others = |level: Level, id: Option<&String>| {
        id.map_or(Amount::default(), |id| {
            state
                .outstanding
                .iter()
                .filter(|o| o.id != hold && o.scope.holds_at(level, id))
                .fold(Amount::default(), |acc, o| acc.plus(o.amount))
        })
    };
    let below = (!scope.is_empty()).then(|| {
        Box::new(ScopedView {
            scoped: state
                .scoped
                .iter()
                .filter(|e| e.level != Level::Tenant && scope.holds_at(e.level, &e.id))
                .cloned()
                .collect(),
            others_at_key: held_by_others(Level::Key, scope.key.as_ref()),
            others_at_user: held_by_others(Level::User, scope.user.as_ref()),
            scope: scope.clone(),
        })
    });
    let view = LeaseView {
        windows: state.windows.clone(),
        others: held_by_others(Level::Tenant, Some(&String::new())),
        below,
    };
    let fresh = match state.outstanding.iter_mut().find(|o| o.id == hold) {
        Some(lease) => {
            lease.amount = lease.amount.plus(added);
            lease.expires_at = expires_at;
            false
        }
        None => {
            state.outstanding.push(Outstanding {
                id: hold,
                amount: added,
                expires_at,
                downgraded: false,
                clamped_output_tokens: None,
                scope,
            });
            true
        }
    };
    Ok(LeaseGrant { id: request.id.clone(), added, expires_at, fresh, view })
}

/// Apply an instance's report: charge each settled request once, take it
/// off the lease's hold, and free the rest if the lease is returned. A
/// report for a lease the writer no longer holds (expired, so charged in
/// full, or returned) changes nothing.
pub fn report(state: &mut BudgetState, budgets: &Budgets, report: &LeaseReport, now: u64) {
    expire(state, budgets, now);
    let hold = lease_hold_id(&report.lease);
    let Some(index) = state.outstanding.iter().position(|o| o.id == hold) else { return };
    let mut charged = Amount::default();
    for (id, amount) in &report.settled {
        let fingerprint = super::settled_fingerprint(id);
        if state.recently_settled.contains(&fingerprint) {
            continue;
        }
        charged = charged.plus(*amount);
        super::remember_finished(state, id);
    }
    // At every level the lease counts at (a scoped lease's key and user too).
    let scope = state.outstanding.get(index).map(|o| o.scope.clone()).unwrap_or_default();
    state.charge_at(&scope, charged, now);
    if let Some(lease) = state.outstanding.get_mut(index) {
        lease.amount = lease.amount.saturating_sub(charged);
        if let Some(keep) = report.keep {
            lease.amount = lease.amount.min(keep);
        }
    }
    if report.returned {
        state.outstanding.retain(|o| o.id != hold);
    }
}

/// Charge every lease that expired unreported in full, and drop it: the
/// instance may have spent all of it. (Every operation on the state does
/// this first: [`BudgetState::sync`].)
pub fn expire(state: &mut BudgetState, budgets: &Budgets, now: u64) {
    state.sync(&budgets.limits, now);
}

impl LeaseView {
    /// The state an instance decides on: the writer's windows as granted,
    /// plus what was settled here since (`unreported`), with everything
    /// else the writer holds as one hold that lasts as long as the lease,
    /// and this instance's own requests in flight (`local_holds`).
    pub fn state(&self, expires_at: u64, local_holds: Vec<Outstanding>, unreported: Amount, now: u64) -> BudgetState {
        let below = self.below.as_deref().cloned().unwrap_or_default();
        let mut state = BudgetState {
            windows: self.windows.clone(),
            outstanding: local_holds,
            scoped: below.scoped,
            ..BudgetState::default()
        };
        // Everything else as (at most) three holds: at the key, at the user,
        // and the rest at the tenant only. The key's and the user's are
        // exact; the tenant then sees at least what it held (a hold at both
        // the key and the user may be counted twice there: cautious, and
        // only a refusal here, which the writer then decides).
        let at_tenant_only = self.others.saturating_sub(below.others_at_key.plus(below.others_at_user));
        let others = [
            (OTHERS_HOLD, at_tenant_only, HoldScope::default()),
            (OTHERS_AT_KEY_HOLD, below.others_at_key, HoldScope { key: below.scope.key.clone(), user: None }),
            (OTHERS_AT_USER_HOLD, below.others_at_user, HoldScope { key: None, user: below.scope.user.clone() }),
        ];
        for (id, amount, scope) in others {
            if amount != Amount::default() {
                state.outstanding.push(Outstanding {
                    id: id.to_owned(),
                    amount,
                    expires_at,
                    downgraded: false,
                    clamped_output_tokens: None,
                    scope,
                });
            }
        }
        if unreported != Amount::default() {
            state.charge_at(&below.scope, unreported, now);
        }
        state
    }
}

/// The id of the hold that stands for everything else in an instance's view.
pub const OTHERS_HOLD: &str = "lease-view:others";
const OTHERS_AT_KEY_HOLD: &str = "lease-view:others-at-key";
const OTHERS_AT_USER_HOLD: &str = "lease-view:others-at-user";

/// An instance's side of its lease: requests reserve and settle here, in
/// memory; settled spend waits for the next report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalLease {
    pub id: String,
    /// The lease's size (every grant added up, less what was reported).
    pub size: Amount,
    /// Held by requests in flight, and settled but not yet reported.
    pub used: Amount,
    pub expires_at: u64,
    /// Bumped by a fresh grant: holds of an earlier generation were paid
    /// for when the writer charged that lease in full.
    generation: u32,
    holds: Vec<(String, Amount, u32)>,
    unreported: Vec<(String, Amount)>,
    /// A scoped lease's key and user (for its reports).
    scopes: Scopes,
}

/// Why a request could not reserve from the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalShortfall {
    /// Too little left in the lease: ask the writer for more first.
    Exhausted,
    /// The lease ends before a request could finish: renew first.
    Expiring,
}

impl LocalLease {
    pub fn new(id: String) -> Self {
        LocalLease { id, ..LocalLease::default() }
    }

    /// A lease carved for a key's and an end user's requests too.
    pub fn scoped(id: String, scopes: Scopes) -> Self {
        LocalLease { id, scopes, ..LocalLease::default() }
    }

    /// The writer granted more.
    pub fn on_grant(&mut self, grant: &LeaseGrant) {
        if grant.id != self.id {
            return;
        }
        if grant.fresh {
            self.generation = self.generation.wrapping_add(1);
            self.size = Amount::default();
            self.used = Amount::default();
            self.unreported.clear();
        }
        self.size = self.size.plus(grant.added);
        self.expires_at = self.expires_at.max(grant.expires_at);
    }

    /// Hold `amount` for request `id`, if the lease has it and lives past
    /// `now + margin` (a request must settle before the lease expires, or
    /// the writer has already charged it in full).
    pub fn reserve(&mut self, id: &str, amount: Amount, now: u64, margin: u64) -> Result<(), LocalShortfall> {
        if self.expires_at <= now.saturating_add(margin) {
            return Err(LocalShortfall::Expiring);
        }
        let after = self.used.plus(amount);
        if after.exceeds(self.size) {
            return Err(LocalShortfall::Exhausted);
        }
        self.used = after;
        self.holds.push((id.to_owned(), amount, self.generation));
        Ok(())
    }

    /// Whether request `id` holds part of this lease.
    pub fn holds(&self, id: &str) -> bool {
        self.holds.iter().any(|(h, _, _)| h == id)
    }

    /// Request `id` finished having spent `actual`. That is at most its
    /// hold when the provider honours the output cap; if it did not, the
    /// whole of it is reported all the same (it was spent), and the lease
    /// is overdrawn until the writer has it.
    pub fn settle(&mut self, id: &str, actual: Amount) {
        let Some(i) = self.holds.iter().position(|(h, _, _)| h == id) else { return };
        let (_, held, generation) = self.holds.swap_remove(i);
        if generation != self.generation {
            // Paid for by the full charge of the lease it was held under.
            return;
        }
        self.used = self.used.saturating_sub(held).plus(actual);
        self.unreported.push((id.to_owned(), actual));
    }

    /// A report that never reached the writer: its spend is reported again
    /// with the next one (the writer applies each request once).
    pub fn restore(&mut self, report: LeaseReport) {
        if report.lease != self.id {
            return;
        }
        let total = report.settled.iter().fold(Amount::default(), |acc, (_, a)| acc.plus(*a));
        self.size = self.size.plus(total);
        self.used = self.used.plus(total);
        let later = std::mem::replace(&mut self.unreported, report.settled);
        self.unreported.extend(later);
    }

    /// Start over under a new id once this lease has expired here: the
    /// writer charges (or has charged) it in full, which pays for all that
    /// was held or settled under it, so requests still in flight under it
    /// settle as paid and nothing of it is reported again.
    pub fn restart(&mut self, id: String) {
        self.id = id;
        self.generation = self.generation.wrapping_add(1);
        self.size = Amount::default();
        self.used = Amount::default();
        self.unreported.clear();
        self.expires_at = 0;
    }

    /// The key and user the lease's reports name (they may change with
    /// the key's record).
    pub fn set_scopes(&mut self, scopes: Scopes) {
        self.scopes = scopes;
    }

    /// Bumped by every fresh grant.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Settled spend waiting to be reported.
    pub fn unreported(&self) -> usize {
        self.unreported.len()
    }

    /// Spend settled here and not yet reported, added up.
    pub fn unreported_total(&self) -> Amount {
        self.unreported.iter().fold(Amount::default(), |acc, (_, a)| acc.plus(*a))
    }

    /// Request `id` ended without spending.
    pub fn release(&mut self, id: &str) {
        if let Some(i) = self.holds.iter().position(|(h, _, _)| h == id) {
            let (_, held, generation) = self.holds.swap_remove(i);
            if generation == self.generation {
                self.used = self.used.saturating_sub(held);
            }
        }
    }

    /// The settled spend to report (by count, by time, at renewal): what
    /// it reports leaves the lease's size and its use alike.
    pub fn take_report(&mut self, returned: bool) -> LeaseReport {
        let settled = std::mem::take(&mut self.unreported);
        let total = settled.iter().fold(Amount::default(), |acc, (_, a)| acc.plus(*a));
        self.size = self.size.saturating_sub(total);
        self.used = self.used.saturating_sub(total);
        LeaseReport { lease: self.id.clone(), settled, returned, keep: None, scopes: self.scopes.clone() }
    }

    /// Give up what the lease has unused: the size it keeps (for
    /// [`LeaseReport::keep`]). Not restored if the report is lost: the
    /// writer may have freed it.
    pub fn release_unused(&mut self) -> Amount {
        let unused = self.available();
        self.size = self.size.saturating_sub(unused);
        self.size
    }

    /// What is left to reserve.
    pub fn available(&self) -> Amount {
        self.size.saturating_sub(self.used)
    }

    /// What the requests in flight hold (under the current grant).
    pub fn held(&self) -> Amount {
        self.holds
            .iter()
            .filter(|(_, _, g)| *g == self.generation)
            .fold(Amount::default(), |acc, (_, a, _)| acc.plus(*a))
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.holds.len()
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn budgets(tokens: u64, micros: u64) -> Budgets {
        crate::desk::tests_support::budgets(tokens, micros, None)
    }

    fn amount(tokens: u64, micros: u64) -> Amount {
        Amount { tokens, micros, requests: 0 }
    }

    /// A small deterministic generator (no randomness is read in the core).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n.max(1)
        }
    }

    #[test]
    fn a_grant_is_a_share_of_what_is_left_but_never_less_than_the_request_needs() {
        let b = budgets(80_000, 80_000);
        let mut state = BudgetState::default();
        let sizing = LeaseSizing::default();
        let want = amount(50_000, 50_000);
        let g = grant(
            &mut state,
            &b,
            &sizing,
            &LeaseRequest {
                id: "a".into(),
                want,
                need: amount(100, 100),
                unit: Amount::default(),
                have: None,
                scopes: Default::default(),
            },
            10,
        )
        .unwrap();
        assert_eq!(g.added, amount(10_000, 10_000), "an eighth of 80,000");
        // Near the end: exactly the request's worst case.
        let mut tail = BudgetState::default();
        tail.sync(&b.limits, 10);
        tail.charge(amount(79_900, 79_900), 10);
        let g = grant(
            &mut tail,
            &b,
            &sizing,
            &LeaseRequest {
                id: "b".into(),
                want,
                need: amount(60, 60),
                unit: Amount::default(),
                have: None,
                scopes: Default::default(),
            },
            10,
        )
        .unwrap();
        assert_eq!(g.added, amount(60, 60));
        let refused = grant(
            &mut tail,
            &b,
            &sizing,
            &LeaseRequest {
                id: "c".into(),
                want,
                need: amount(60, 60),
                unit: Amount::default(),
                have: None,
                scopes: Default::default(),
            },
            10,
        );
        assert!(refused.is_err(), "40 left cannot pay a 60 worst case");
    }

    #[test]
    fn near_the_end_no_lease_smaller_than_one_typical_request_is_granted() {
        let b = budgets(1_000, 1_000_000);
        let mut state = BudgetState::default();
        let sizing = LeaseSizing::default();
        let unit = amount(143, 143);
        // An eighth of 1,000 tokens cannot pay one 143-token request: nothing is held.
        let req = LeaseRequest {
            id: "a".into(),
            want: amount(9_000, 9_000),
            need: Amount::default(),
            unit,
            have: None,
            scopes: Default::default(),
        };
        let g = grant(&mut state, &b, &sizing, &req, 10).unwrap();
        assert_eq!(g.added, Amount::default());
        assert_eq!(state.remaining(&b.limits).tokens, Some(1_000), "a request still finds all of it");
    }

    #[test]
    fn a_lease_that_expires_unreported_is_charged_in_full_and_a_late_report_changes_nothing() {
        let b = budgets(100_000, 100_000);
        let mut state = BudgetState::default();
        let sizing = LeaseSizing { ttl_seconds: 30, ..LeaseSizing::default() };
        let req = LeaseRequest {
            id: "a".into(),
            want: amount(1_000, 1_000),
            need: amount(10, 10),
            unit: Amount::default(),
            have: None,
            scopes: Default::default(),
        };
        let g = grant(&mut state, &b, &sizing, &req, 100).unwrap();
        expire(&mut state, &b, 130);
        assert_eq!(state.spent_in(&b.limits[0]), g.added);
        let late = LeaseReport {
            lease: "a".into(),
            settled: vec![("r1".into(), amount(5, 5))],
            returned: true,
            keep: None,
            scopes: Default::default(),
        };
        report(&mut state, &b, &late, 131);
        assert_eq!(state.spent_in(&b.limits[0]), g.added);
    }

    #[test]
    fn any_operation_after_a_leases_expiry_charges_it_in_full_and_the_ledger_ops_carry_leases() {
        use crate::budget::{LedgerOp, LedgerReply, apply};
        let b = budgets(100_000, 100_000);
        let mut state = BudgetState::default();
        let op = LedgerOp::LeaseGrant {
            budgets: b.clone(),
            sizing: LeaseSizing::default(),
            request: LeaseRequest {
                id: "a".into(),
                want: amount(800, 800),
                need: amount(10, 10),
                unit: Amount::default(),
                have: None,
                scopes: Default::default(),
            },
        };
        let LedgerReply::Lease { grant } = apply(&mut state, &op, 0) else { panic!("granted") };
        // A status read after the expiry, not a lease op: the lease is charged all the same.
        let _ =
            apply(&mut state, &LedgerOp::Status { budgets: b.clone(), scopes: Default::default() }, grant.expires_at);
        assert_eq!(state.spent_in(&b.limits[0]), grant.added);
        let report = LeaseReport {
            lease: "a".into(),
            settled: vec![("r".into(), amount(1, 1))],
            returned: true,
            keep: None,
            scopes: Default::default(),
        };
        let _ = apply(&mut state, &LedgerOp::LeaseReport { budgets: b.clone(), report }, grant.expires_at + 1);
        assert_eq!(state.spent_in(&b.limits[0]), grant.added, "a late report changes nothing");
    }

    #[test]
    fn a_returned_lease_frees_exactly_its_unspent_part() {
        let b = budgets(100_000, 100_000);
        let mut state = BudgetState::default();
        let sizing = LeaseSizing::default();
        let g = grant(
            &mut state,
            &b,
            &sizing,
            &LeaseRequest {
                id: "a".into(),
                want: amount(1_000, 1_000),
                need: amount(10, 10),
                unit: Amount::default(),
                have: None,
                scopes: Default::default(),
            },
            0,
        )
        .unwrap();
        let mut local = LocalLease::new("a".into());
        local.on_grant(&g);
        local.reserve("r1", amount(300, 300), 1, 5).unwrap();
        local.settle("r1", amount(120, 90));
        let r = local.take_report(true);
        report(&mut state, &b, &r, 2);
        assert_eq!(state.spent_in(&b.limits[0]), amount(120, 90));
        assert_eq!(
            state.remaining(&b.limits),
            crate::budget::Remaining { tokens: Some(99_880), micros: Some(99_910), requests: None }
        );
    }

    #[test]
    fn a_scoped_lease_is_a_share_of_its_tightest_level_and_an_unreported_one_is_charged_in_full_at_each_level() {
        use crate::budget::scope::{KeyScope, Level, UserBudgets};
        use crate::budget::{BudgetLimit, Window};
        let day = |name: &str, tokens: u64| BudgetLimit {
            name: name.into(),
            window: Window::Day,
            tokens: Some(tokens),
            usd_micros: None,
            requests: None,
        };
        let mut b = budgets(100_000, 100_000_000);
        b.users = Some(Box::new(UserBudgets {
            header: None,
            limits: vec![day("user-day", 8_000)],
            overrides: Default::default(),
            max_tracked: 10,
        }));
        let scopes = Scopes {
            key: Some(Box::new(KeyScope { id: "k1".into(), label: None, limits: vec![day("key-day", 40_000)] })),
            user: Some("ann".into()),
        };
        let mut state = BudgetState::default();
        let req = LeaseRequest {
            id: "a".into(),
            want: amount(50_000, 50_000),
            need: amount(100, 100),
            unit: Amount::default(),
            have: None,
            scopes: scopes.clone(),
        };
        let g = grant(&mut state, &b, &LeaseSizing::default(), &req, 100).unwrap();
        assert_eq!(g.added.tokens, 1_000, "an eighth of the user's 8,000, the tightest level");
        assert_eq!(g.view.scope().and_then(|s| s.user.as_deref()), Some("ann"));
        // What the lease holds counts at the key and the user too.
        let status = crate::budget::scoped_status(&mut state, &b, &scopes, 101);
        for entry in &status {
            assert_eq!(entry.limits[0].leased.tokens, 1_000, "{entry:?}");
        }
        expire(&mut state, &b, 100 + LeaseSizing::default().ttl_seconds);
        assert_eq!(state.spent_in(&b.limits[0]).tokens, 1_000);
        for level in [Level::Key, Level::User] {
            let entry = state.scoped.iter().find(|e| e.level == level).expect("an entry");
            assert_eq!(entry.windows[0].spent.tokens, 1_000, "{level:?}");
        }
    }

    fn users_budgets(user_tokens: u64, max_tracked: usize) -> Budgets {
        crate::desk::tests_support::users_budgets(None, user_tokens, max_tracked)
    }

    fn user_lease(id: &str, user: &str) -> LeaseRequest {
        LeaseRequest {
            id: id.into(),
            want: amount(4_000, 4_000),
            need: amount(100, 100),
            unit: Amount::default(),
            have: None,
            scopes: Scopes { key: None, user: Some(user.into()) },
        }
    }

    fn user_spent(state: &BudgetState, user: &str) -> u64 {
        state.scoped.iter().find(|e| e.id == user).map_or(0, |e| e.windows[0].spent.tokens)
    }

    #[test]
    fn a_lease_whose_user_now_resolves_to_another_entry_ends_charged_in_full_and_starts_afresh_there() {
        use crate::budget::scope::OVERFLOW_USER;
        let b = users_budgets(80_000, 1);
        let mut state = BudgetState::default();
        let sizing = LeaseSizing::default();
        // `first` takes the one tracked place with a request in flight.
        let first = crate::budget::ReserveRequest {
            id: "f".into(),
            prompt_tokens: 10,
            output_tokens: 10,
            price: crate::pricing::ModelPrice { input: 0, cached_input: 0, output: 0 },
            downgrade_price: None,
            extra_micros: 0,
            scopes: Scopes { key: None, user: Some("first".into()) },
        };
        crate::budget::reserve(&mut state, &b, &first, 10).unwrap();
        let g = grant(&mut state, &b, &sizing, &user_lease("a", "ann"), 10).unwrap();
        assert_eq!(g.view.scope().and_then(|s| s.user.as_deref()), Some(OVERFLOW_USER));
        // `first` is gone (nothing spent, nothing held): ann has a place of her own now.
        crate::budget::release(&mut state, &b, "f", 11);
        let again = grant(&mut state, &b, &sizing, &user_lease("a", "ann"), 12).unwrap();
        assert!(again.fresh, "a new lease, not the old one grown");
        assert_eq!(again.view.scope().and_then(|s| s.user.as_deref()), Some("ann"));
        assert_eq!(user_spent(&state, OVERFLOW_USER), g.added.tokens, "the old lease, charged in full");
        let leases: Vec<_> = state.outstanding.iter().filter(|o| is_lease(&o.id)).collect();
        assert_eq!(leases.len(), 1, "{leases:?}");
    }

    #[test]
    fn a_scoped_lease_expiring_after_midnight_is_charged_to_the_new_day_at_every_level() {
        let b = users_budgets(80_000, 10);
        let mut state = BudgetState::default();
        let midnight = 86_400 * 20_000;
        let g = grant(&mut state, &b, &LeaseSizing::default(), &user_lease("a", "ann"), midnight - 10).unwrap();
        // The first op of the new day comes after the lease expired unreported.
        expire(&mut state, &b, midnight + 30);
        assert_eq!(state.spent_in(&b.limits[0]).tokens, g.added.tokens);
        assert_eq!(user_spent(&state, "ann"), g.added.tokens, "charged to the new day at the user too");
    }

    #[test]
    fn no_new_lease_is_granted_once_holds_fill_half_of_what_the_writer_takes() {
        let b = budgets(u64::MAX / 4, u64::MAX / 4);
        let mut state = BudgetState::default();
        let sizing = LeaseSizing::default();
        for n in 0..MAX_LEASE_HOLDS {
            let req = LeaseRequest {
                id: format!("l{n}"),
                want: amount(1, 1),
                need: amount(1, 1),
                unit: Amount::default(),
                have: None,
                scopes: Default::default(),
            };
            grant(&mut state, &b, &sizing, &req, 10).unwrap();
        }
        let one_more = LeaseRequest {
            id: "late".into(),
            want: amount(1, 1),
            need: amount(1, 1),
            unit: Amount::default(),
            have: None,
            scopes: Default::default(),
        };
        assert!(matches!(grant(&mut state, &b, &sizing, &one_more, 10), Err(BudgetError::TooManyInFlight { .. })));
        // An existing lease still grows.
        let grow = LeaseRequest { id: "l0".into(), ..one_more };
        assert!(grant(&mut state, &b, &sizing, &grow, 10).is_ok());
    }

    /// N instances, random interleavings of reserve, settle, release,
    /// report, renew, return, crash (state lost) and writer outage
    /// (reports and grants lost), with the clock moving: the spend that
    /// really happened never exceeds the limit, and once every lease has
    /// ended the writer has charged at least all of it.
    #[test]
    fn random_interleavings_of_instances_never_spend_past_a_limit() {
        for seed in 1..=60u64 {
            let limit = 20_000 + seed * 311;
            let b = budgets(limit, limit * 3);
            let sizing = LeaseSizing { share: 4, cap: amount(4_000, 0), ttl_seconds: 20 };
            let mut rng = Lcg(seed);
            let mut state = BudgetState::default();
            let mut instances: Vec<Option<LocalLease>> = vec![None; 5];
            let mut spent = Amount::default();
            let mut now = 1_000u64;
            let mut next = 0u64;
            for _ in 0..3_000 {
                now += rng.next(3);
                let outage = rng.next(10) == 0;
                let i = usize::try_from(rng.next(instances.len() as u64)).unwrap();
                let slot = &mut instances[i];
                match rng.next(7) {
                    0 | 1 => {
                        next += 1;
                        let id = format!("r{next}");
                        let worst = amount(50 + rng.next(400), 150 + rng.next(1_200));
                        let ok = slot.as_mut().is_some_and(|l| l.reserve(&id, worst, now, 5).is_ok());
                        if !ok && !outage {
                            let lease_id = slot.as_ref().map_or_else(|| format!("l{i}-{next}"), |l| l.id.clone());
                            let req = LeaseRequest {
                                id: lease_id.clone(),
                                want: amount(3_000, 9_000),
                                need: worst,
                                unit: worst,
                                have: None,
                                scopes: Default::default(),
                            };
                            if let Ok(g) = grant(&mut state, &b, &sizing, &req, now) {
                                let lease = slot.get_or_insert_with(|| LocalLease::new(lease_id));
                                lease.on_grant(&g);
                                let _ = lease.reserve(&id, worst, now, 5);
                            }
                        }
                    }
                    2 => {
                        // A request finishes: spends part of its hold.
                        if let Some(l) = slot.as_mut()
                            && let Some((id, held, _)) = l.holds.first().cloned()
                        {
                            let actual = amount(rng.next(held.tokens + 1), rng.next(held.micros + 1));
                            // Spend really happens only while the writer still counts the lease.
                            if l.expires_at > now {
                                spent = spent.plus(actual);
                            }
                            l.settle(&id, actual);
                        }
                    }
                    3 => {
                        if let Some(l) = slot.as_mut()
                            && let Some((id, _, _)) = l.holds.first().cloned()
                        {
                            l.release(&id);
                        }
                    }
                    4 => {
                        if let Some(l) = slot.as_mut() {
                            let r = l.take_report(false);
                            if !outage {
                                report(&mut state, &b, &r, now);
                            }
                        }
                    }
                    5 => {
                        // Return an idle lease.
                        if slot.as_ref().is_some_and(|l| l.in_flight() == 0)
                            && let Some(mut l) = slot.take()
                        {
                            let r = l.take_report(true);
                            if !outage {
                                report(&mut state, &b, &r, now);
                            }
                        }
                    }
                    _ => {
                        // A crash: the instance's state is gone.
                        if rng.next(4) == 0 {
                            *slot = None;
                        }
                    }
                }
                expire(&mut state, &b, now);
                assert!(spent.tokens <= limit, "seed {seed}: spent {} tokens of {limit}", spent.tokens);
                assert!(spent.micros <= limit * 3, "seed {seed}: spent {} micros", spent.micros);
                let charged = state.spent_in(&b.limits[0]).plus(state.reserved());
                assert!(
                    charged.tokens <= limit && charged.micros <= limit * 3,
                    "seed {seed}: the writer over-committed"
                );
            }
            // Every lease ends: the writer has charged at least what was spent.
            expire(&mut state, &b, now + 1_000);
            let charged = state.spent_in(&b.limits[0]);
            assert!(charged.tokens >= spent.tokens && charged.micros >= spent.micros, "seed {seed}");
            assert!(state.outstanding.is_empty(), "seed {seed}: a lease outlived its expiry");
        }
    }
}
