//! The provider's answer: observing a stream, reading a JSON body, and
//! reviewing a complete answer, which may escalate the request to a
//! stronger tier (or return an answer held back from an earlier one).

use super::{HeldAnswer, LocalResponse, Next, Plan, Settlement, Upstream};
use crate::budget::{Amount, ReserveRequest};
use crate::config::TenantConfig;
use crate::error::UpstreamError;
use crate::escalation::{self, Signal};
use crate::response::{self, ResponseSummary, Usage};

impl Plan {
    /// The observer for a streamed answer from `upstream`: it passes bytes
    /// through (minus an injected usage chunk), reads usage on the way, and
    /// assembles a cacheable body no larger than the tenant's entry limit.
    pub fn stream_observer(&self, upstream: &Upstream) -> response::StreamObserver {
        response::StreamObserver::new(self.api, upstream.strip_usage_chunk, self.max_entry_bytes)
    }

    /// What a non-streamed answer says: its summary and, for the cache, the body.
    pub fn read_json_response(&self, body: &[u8]) -> (ResponseSummary, Option<serde_json::Value>) {
        let summary = response::summarize_json(self.api, body).unwrap_or_default();
        let assembled = if summary.complete { serde_json::from_slice(body).ok() } else { None };
        (summary, assembled)
    }

    /// Look at a complete, non-streamed provider answer before it is
    /// relayed: None to go on with [`Plan::finish`] and relay it; otherwise
    /// the step to take instead ([`Next::Escalate`], or [`Next::Respond`]
    /// with an earlier, better answer). Streamed answers are not reviewed:
    /// their first bytes are already with the client.
    pub fn review(
        &mut self,
        status: u16,
        summary: &ResponseSummary,
        body: &[u8],
        config: &TenantConfig,
    ) -> Option<Next> {
        if !(200..300).contains(&status) || !summary.complete || !self.escalation.enabled {
            return None;
        }
        let signal = escalation::judge_json(self.api, body, summary, self.wants_json, &self.escalation);
        let keep_held = self.held.as_ref().is_some_and(|h| escalation::worse(signal, Some(h.signal)));
        let can_climb = signal.is_some_and(|s| self.can_escalate(s));
        if !keep_held && !can_climb {
            return None;
        }
        // This answer is not relayed: charge what it cost to its own hold.
        let (usage, cost_micros) = self.attempt_cost(status, summary, config);
        let amount =
            Amount { tokens: usage.map_or(0, |u| u.input_tokens.saturating_add(u.output_tokens)), micros: cost_micros };
        self.prior = Amount {
            tokens: self.prior.tokens.saturating_add(amount.tokens),
            micros: self.prior.micros.saturating_add(amount.micros),
        };
        let settlement = self.granted.as_ref().map(|g| Settlement::Charge { id: g.id.clone(), amount });
        if keep_held {
            let what = signal.map_or("unresolved", Signal::as_str);
            return Some(self.respond_held(&format!("escalated answer was worse ({what})"), settlement));
        }
        let signal = signal?;
        if !self.held.as_ref().is_some_and(|h| escalation::worse(Some(signal), Some(h.signal))) {
            self.held = Some(HeldAnswer {
                status,
                body: body.to_vec(),
                signal,
                tier: self.trace.tier.clone(),
                model: self.trace.model.clone().unwrap_or_default(),
            });
        }
        self.note_escalation(signal);
        Some(Next::Escalate(settlement))
    }

    /// After [`Next::Escalate`]'s settlement is applied: reserve for (or
    /// forward to) the next tier.
    pub fn escalate(&mut self) -> Next {
        self.granted = None;
        self.attempt = 0;
        self.only_timeouts = true;
        let Some(rung) = (!self.ladder.is_empty()).then(|| self.ladder.remove(0)) else {
            return self.respond_held("no tier left to escalate to", None);
        };
        self.active_chain = rung.chain;
        self.order.clear();
        self.trace.tier = Some(rung.name);
        self.trace.model = self.active_chain.first().map(ToString::to_string);
        self.trace.fallbacks = 0;
        let reserve = rung.price.map(|price| ReserveRequest {
            id: format!("{}.e{}", self.request_id, self.escalations),
            prompt_tokens: self.prompt.tokens,
            output_tokens: self.output_cap,
            price,
            downgrade_price: None,
        });
        match (reserve, self.budgets_enforced) {
            (Some(r), true) => {
                self.reserve_request = Some(r.clone());
                Next::Reserve(r)
            }
            _ => self.forward(0),
        }
    }

    /// Whether this request may climb a tier for `signal` now.
    pub(super) fn can_escalate(&self, signal: Signal) -> bool {
        self.escalation.triggers(signal)
            && self.escalations < self.escalation.max_attempts
            && !self.trace.downgraded
            && self.ladder.iter().any(|r| !r.chain.is_empty())
    }

    pub(super) fn note_escalation(&mut self, signal: Signal) {
        // Tiers without a model for this API are skipped.
        while self.ladder.first().is_some_and(|r| r.chain.is_empty()) {
            self.ladder.remove(0);
        }
        self.escalations += 1;
        let from = self.trace.tier.clone().unwrap_or_default();
        let to = self.ladder.first().map(|r| r.name.clone()).unwrap_or_default();
        self.trace.escalations.push(format!("{from}->{to}; reason={}", signal.as_str()));
    }

    /// Answer with the held answer, applying `settlement` for the attempt
    /// that did not make it.
    pub(super) fn respond_held(&mut self, why: &str, settlement: Option<Settlement>) -> Next {
        let Some(held) = self.held.clone() else {
            let tier = self.tier.clone().unwrap_or_default();
            let err = UpstreamError::Exhausted { tier, last: why.to_owned() };
            return Next::Respond(LocalResponse::error(&err.into(), Some(&self.trace)), settlement);
        };
        self.served_held = true;
        self.trace.tier = held.tier;
        self.trace.model = Some(held.model);
        self.trace.cost_micros = Some(self.prior.micros);
        self.trace.cost_is_estimate = false;
        self.trace.reasons.push(format!("{why}: returned the {} answer", held.signal.as_str()));
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        headers.extend(self.trace.headers());
        Next::Respond(LocalResponse { status: held.status, headers, body: held.body }, settlement)
    }

    /// The usage and cost of the current attempt's answer.
    pub(super) fn attempt_cost(
        &self,
        status: u16,
        summary: &ResponseSummary,
        config: &TenantConfig,
    ) -> (Option<Usage>, u64) {
        let price = self.current_target().and_then(|t| config.price(&t.model));
        let usage = summary.usage.map(|u| {
            // A stream cut short reports usage only as far as it got:
            // Anthropic's `message_start` carries a placeholder output count
            // until `message_delta`. Charge at least the output seen.
            if summary.complete {
                u
            } else {
                Usage { output_tokens: u.output_tokens.max(summary.output_tokens_estimate), ..u }
            }
        });
        let usage = usage.or_else(|| {
            // No usage reported (aborted stream, provider omitted it): charge
            // the prompt we counted and the output seen so far, estimated.
            (summary.output_tokens_estimate > 0 || (200..300).contains(&status)).then_some(Usage {
                input_tokens: self.prompt.tokens,
                output_tokens: summary.output_tokens_estimate,
                ..Usage::default()
            })
        });
        let cost_micros = match (price, usage) {
            (Some(p), Some(u)) => p.cost_micros(&u),
            _ => 0,
        };
        (usage, cost_micros)
    }
}
