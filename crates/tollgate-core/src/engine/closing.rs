//! The end of a request: what the finished response costs (the
//! settlement), whether it fills the cache, what the outcome ledger
//! records, and giving the hold back when no answer is charged.

use super::{Closing, Duty, LocalResponse, Next, Plan};
use crate::budget::{Amount, LedgerOp};
use crate::cache::{self, CacheEntry, CacheKey, NotAdmitted};
use crate::error::ApiError;
use crate::pricing::ModelPrice;
use crate::response::{ResponseSummary, Usage};
use crate::store::{self, TenantOp};
use serde::Serialize;

/// What to do with the budget hold when a request ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Settlement {
    /// Drop the hold; nothing was spent.
    Release { id: String },
    /// Replace the hold with the actual spend.
    Charge { id: String, amount: Amount },
}

impl Settlement {
    /// The ledger operation that applies this settlement.
    pub fn to_op(
        &self,
        budgets: &crate::config::Budgets,
        scopes: &crate::budget::scope::Scopes,
    ) -> crate::budget::LedgerOp {
        use crate::budget::LedgerOp;
        match self {
            Settlement::Release { id } => LedgerOp::Release { budgets: budgets.clone(), id: id.clone() },
            Settlement::Charge { id, amount } => LedgerOp::Settle {
                resent: false,
                budgets: budgets.clone(),
                id: id.clone(),
                amount: *amount,
                scopes: scopes.clone(),
            },
        }
    }
}

/// A cache write the host should perform.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheFill {
    pub key: CacheKey,
    pub value: Vec<u8>,
    pub ttl_seconds: u64,
}

/// What to do once the provider's response has ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    pub settlement: Option<Settlement>,
    pub cache_fill: Option<CacheFill>,
    pub not_cached: Option<NotAdmitted>,
    pub usage: Option<Usage>,
    pub cost_micros: u64,
}

impl Plan {
    /// The provider's response has ended (completely, or cut short by an
    /// abort or error). `summary` is what the response observer saw;
    /// `assembled` the cacheable non-streamed body, when there is one.
    pub(super) fn finish(
        &mut self,
        status: u16,
        summary: &ResponseSummary,
        assembled: Option<serde_json::Value>,
        now: u64,
    ) -> Finish {
        let target = self.current_target().cloned();
        let (usage, cost_micros) = self.attempt_cost(status, summary);
        self.trace.cost_micros = Some(cost_micros.saturating_add(self.prior.micros));
        self.trace.cost_is_estimate = false;
        let settlement = self.granted.as_ref().map(|g| match usage {
            Some(u) => Settlement::Charge {
                id: g.id.clone(),
                amount: Amount {
                    tokens: u.input_tokens.saturating_add(u.output_tokens),
                    micros: cost_micros,
                    requests: 1,
                },
            },
            None => Settlement::Release { id: g.id.clone() },
        });

        let mut not_cached = None;
        let mut cache_fill = None;
        if let (Some(key), Some(target)) = (&self.cache.key, &target) {
            let body_len = assembled.as_ref().map_or(0, |b| b.to_string().len());
            let admitted = match cache::admit(status, summary, body_len, &self.cache_settings) {
                Ok(()) if assembled.is_none() => Err(NotAdmitted::Incomplete),
                Ok(()) if !self.cache.seen_before => Err(NotAdmitted::FirstSighting),
                // A fallback model's answer (or one reached by passing over a
                // cooling first model) would go under a key that lookups
                // (made for the chain's first model) never read: a wasted write.
                Ok(()) if self.chain_index(self.attempt) > 0 => Err(NotAdmitted::Fallback),
                other => other,
            };
            let fill_key = key.clone();
            match (admitted, assembled) {
                (Ok(()), Some(body)) => {
                    let entry = CacheEntry {
                        api: self.api,
                        model: target.model.clone(),
                        stored_at: now,
                        expires_at: now + self.cache_ttl,
                        usage,
                        // What a hit avoids: every attempt this answer took.
                        cost_micros: cost_micros.saturating_add(self.prior.micros),
                        body,
                    };
                    cache_fill =
                        Some(CacheFill { key: fill_key, value: entry.to_bytes(), ttl_seconds: self.cache_ttl });
                }
                (Err(why), _) => not_cached = Some(why),
                (Ok(()), None) => not_cached = Some(NotAdmitted::Incomplete),
            }
        }
        Finish { settlement, cache_fill, not_cached, usage, cost_micros }
    }

    /// What the cost-per-resolution ledger records for this request, once it
    /// has ended: after `finish` (pass its result) or after serving a
    /// cache hit (pass None). Requests refused before routing record nothing.
    pub fn outcome(&self, finish: Option<&Finish>) -> crate::outcomes::RequestOutcome {
        let (tokens, micros) = finish
            .and_then(|f| f.usage.map(|u| (u.input_tokens.saturating_add(u.output_tokens), f.cost_micros)))
            .unwrap_or((0, 0));
        // An escalated request is one logical request: every attempt's cost.
        let (tokens, micros) = (tokens.saturating_add(self.prior.tokens), micros.saturating_add(self.prior.micros));
        // The model that answered (the one the chain is at).
        let model = self.current_target().map(|m| m.model.clone()).unwrap_or_default();
        // Always-premium's price for the same answer: the top tier's first
        // model, at list price; a request with no such price (pinned,
        // embeddings) costs the same either way. A hit is not counted here.
        let premium_micros = match (finish.and_then(|f| f.usage), self.premium_price, self.hit_saved_micros) {
            (_, _, Some(_)) => 0,
            (Some(u), Some(price), None) => price.estimate_micros(u.input_tokens, u.output_tokens).max(micros),
            _ => micros,
        };
        crate::outcomes::RequestOutcome {
            request_id: self.request_id.clone(),
            tier: self.tier.clone().unwrap_or_else(|| "pinned".to_owned()),
            attribution: crate::outcomes::Attribution {
                model,
                key: self.attribution.key.clone(),
                user: self.attribution.user.clone(),
                tags: self.attribution.tags.clone(),
            },
            tokens,
            micros,
            cache_hit: self.hit_saved_micros.is_some(),
            saved_micros: self.hit_saved_micros.unwrap_or(0),
            escalated: self.escalations > 0,
            fallbacks: self.trace.fallbacks,
            premium_micros,
        }
    }

    /// What closes the request: `settlement` (if budget was held) and the
    /// outcome record (if it was answered), with `finish`'s cache fill. A
    /// reserve still out (its answer never came) is released by id too.
    pub(super) fn closing(&mut self, settlement: Option<Settlement>, finish: Option<Finish>) -> Closing {
        if self.closed {
            return Closing::default();
        }
        self.closed = true;
        let mut ops = store::closing_ops(self, &self.budgets, settlement.as_ref(), finish.as_ref());
        if let Some(id) = self.reserve_out.take() {
            ops.push(TenantOp::Budget(LedgerOp::Release { budgets: self.budgets.clone(), id }));
        }
        let cache_fill = finish.as_ref().and_then(|f| f.cache_fill.clone());
        Closing { ops, cache_fill, settlement, finish }
    }

    /// Respond with `local`, closing the request with `settlement`.
    pub(super) fn respond(&mut self, local: LocalResponse, settlement: Option<Settlement>) -> Next {
        let closing = self.closing(settlement, None);
        Next::Respond(local, closing)
    }

    /// The ledger operation that applies `settlement`.
    pub(super) fn settlement_op(&self, settlement: &Settlement) -> TenantOp {
        TenantOp::Budget(settlement.to_op(&self.budgets, &self.scopes))
    }

    /// The client went away before any answer reached it: give the hold
    /// back (and any reserve still out). Empty once the request has closed.
    /// (Once a provider is relaying, end it with [`Plan::on_stream_end`] or
    /// [`Plan::on_json_answer`] instead, so the tokens already spent are charged.)
    pub fn cancel(&mut self) -> Closing {
        let release = self.release();
        self.closing(release, None)
    }

    /// Whether the request has closed: its [`Closing`] was handed out.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The host cannot call the provider at all (say, no base URL or key is
    /// configured for it): answer with `err` and release the hold.
    pub fn abandon(&mut self, err: &ApiError) -> Next {
        let release = self.release();
        self.respond(LocalResponse::error(err, Some(&self.trace)), release)
    }

    /// Work for the host that waits for nothing, oldest first: drain it
    /// after every call into the plan.
    pub fn poll_duty(&mut self) -> Option<Duty> {
        (!self.duties.is_empty()).then(|| self.duties.remove(0))
    }

    pub(super) fn release(&self) -> Option<Settlement> {
        self.granted.as_ref().map(|g| Settlement::Release { id: g.id.clone() })
    }

    /// The price of a model of this request's chains.
    pub(super) fn price_of(&self, model: &str) -> Option<ModelPrice> {
        self.prices.iter().find(|(name, _)| name == model).and_then(|(_, p)| *p)
    }
}
