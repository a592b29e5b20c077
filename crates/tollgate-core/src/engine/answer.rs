//! The provider's answer: observing a stream, reading a JSON body, and
//! reviewing a complete answer, which may escalate the request to a
//! stronger tier (or return an answer held back from an earlier one).

use super::{
    AnswerStart, AnswerState, Closing, Duty, HeldAnswer, JsonAnswer, LocalResponse, Next, Plan, Relay, Settlement,
};
use crate::api::ApiFormat;
use crate::budget::{Amount, ReserveRequest};
use crate::cooldown::CooldownUpdate;
use crate::error::UpstreamError;
use crate::escalation::{self, Signal};
use crate::response::{self, ResponseSummary, StreamOutcome, Usage};
use crate::translate::{self, AnswerContext, Finish, StreamTranslator};
use crate::upstream;

impl Plan {
    /// The current attempt's answer has started: `status` is the provider's
    /// HTTP status (None: a timeout or a connection failure, including a
    /// reply the host's proxy made itself), `content_type` and `retry_after`
    /// its headers, `now` the host's clock. Says how to take the answer.
    pub fn on_answer_head(
        &mut self,
        status: Option<u16>,
        content_type: &str,
        retry_after: Option<&str>,
        now: u64,
    ) -> AnswerStart {
        let update = match self.current_target() {
            Some(target) => CooldownUpdate::for_attempt(self.cooldown, target, status, retry_after, now),
            None => CooldownUpdate::Nothing,
        };
        let passed = status.filter(|&s| !upstream::is_retryable(s) && upstream::can_pass_through(s));
        let Some(status) = passed else {
            self.answer = None;
            self.push_cooldown(update);
            return AnswerStart::Failed(Box::new(self.on_upstream_failure(status)));
        };
        let streamed = content_type.contains("text/event-stream") && (200..300).contains(&status);
        let provider_api = self.provider_api();
        let translating = provider_api != self.api;
        let observer = streamed.then(|| {
            let strip = !translating
                && self.api == ApiFormat::OpenAi
                && self.request.stream
                && !self.request.client_wants_usage;
            response::StreamObserver::new(provider_api, strip, self.max_entry_bytes)
        });
        let translator = if streamed && translating {
            StreamTranslator::new(provider_api, self.api, self.answer_context(now))
        } else {
            None
        };
        self.answer = Some(AnswerState {
            status,
            content_type: content_type.to_owned(),
            observer,
            translator,
            cooldown: Some(update),
        });
        if !streamed {
            return AnswerStart::ReadBody;
        }
        // A stream's headers go out with its first bytes, carrying the
        // estimate: its cost is known only at its end.
        let mut headers = vec![
            ("content-type".to_owned(), content_type.to_owned()),
            ("cache-control".to_owned(), "no-cache".to_owned()),
        ];
        headers.extend(self.trace.headers());
        AnswerStart::Stream { status, headers }
    }

    /// A chunk of the streamed answer: what to relay of it goes to `out`
    /// (the chunk, minus a usage chunk the router injected).
    pub fn on_stream_chunk(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let Some(answer) = self.answer.as_mut() else { return };
        if let Some(observer) = answer.observer.as_mut() {
            match answer.translator.as_mut() {
                // The observer reads the provider's stream (usage, the body
                // to cache); the client gets the translation.
                Some(translator) => {
                    observer.watch_only(chunk);
                    translator.feed(chunk, out);
                }
                None => observer.feed(chunk, out),
            }
        }
        // The attempt answered: its first bytes are on their way.
        if let Some(update) = answer.cooldown.take() {
            self.push_cooldown(update);
        }
    }

    /// The streamed answer ended (completely, or cut short by the provider
    /// or the client): whatever the stream held back goes to `out` (send it
    /// unless the stream broke), and the request closes.
    pub fn on_stream_end(&mut self, out: &mut Vec<u8>, now: u64) -> Closing {
        let Some(mut answer) = self.answer.take() else { return self.cancel() };
        if let Some(update) = answer.cooldown.take() {
            self.push_cooldown(update);
        }
        self.next_sequence = match (&answer.observer, &answer.translator) {
            (_, Some(translator)) => translator.next_sequence(),
            (Some(observer), None) => observer.next_sequence(),
            (None, None) => 0,
        };
        let outcome = match (answer.observer.as_mut(), answer.translator.as_mut()) {
            (Some(observer), Some(translator)) => {
                let outcome = observer.finish(&mut Vec::new());
                translator.finish(out);
                self.translated_outcome(outcome, now)
            }
            (Some(observer), None) => observer.finish(out),
            (None, _) => return self.cancel(),
        };
        let fin = self.finish(answer.status, &outcome.summary, outcome.assembled, now);
        let settlement = fin.settlement.clone();
        self.closing(settlement, Some(fin))
    }

    /// An SSE error event for a stream that broke off, in the client's API
    /// (the SDKs raise on it).
    pub fn broken_stream_event(&self, message: &str) -> Vec<u8> {
        response::StreamObserver::new(self.api, false, 0).broken_stream_event_at(message, self.next_sequence)
    }

    /// The whole non-streamed answer (None: too large to read, relayed
    /// unread): relay it, or, when it looked unresolved, replace it with
    /// [`Next::Escalate`] (or [`Next::Respond`] with an earlier, better
    /// answer). A streamed answer is never reviewed: its first bytes are
    /// already with the client.
    pub fn on_json_answer(&mut self, body: Option<&[u8]>, now: u64) -> JsonAnswer {
        let (status, content_type) = match self.answer.as_mut() {
            Some(answer) => {
                let update = answer.cooldown.take();
                let head = (answer.status, std::mem::take(&mut answer.content_type));
                if let Some(update) = update {
                    self.push_cooldown(update);
                }
                head
            }
            None => (502, String::new()),
        };
        self.answer = None;
        // The client's status may differ (an answer that cannot be
        // translated is a 502 to it); what the attempt cost follows the
        // provider's, as for an answer relayed as it is.
        let (client_status, translated) = self.translate_json(status, body, now);
        let (summary, assembled) = match translated.as_deref().or(body) {
            Some(client_body) => {
                let (mut summary, assembled) = self.read_json_response(client_body);
                if let (Some(_), Some(raw)) = (&translated, body) {
                    // Usage as the provider reported it (cache writes and all).
                    let provider = response::summarize_json(self.provider_api(), raw).unwrap_or_default();
                    summary.usage = provider.usage.or(summary.usage);
                }
                if let Some(step) = self.review(client_status, &summary, client_body) {
                    return JsonAnswer::Replace(step);
                }
                (summary, assembled)
            }
            None => (ResponseSummary::default(), None),
        };
        let fin = self.finish(status, &summary, assembled.filter(|_| client_status == status), now);
        let content_type =
            if content_type.is_empty() || translated.is_some() { "application/json".to_owned() } else { content_type };
        let mut headers = vec![("content-type".to_owned(), content_type)];
        headers.extend(self.trace.headers());
        let settlement = fin.settlement.clone();
        let closing = self.closing(settlement, Some(fin));
        JsonAnswer::Relay(Relay { status: client_status, headers, body: translated, closing })
    }

    /// The request ended early (the client left, or the connection broke),
    /// wherever it stood: an answer being relayed is charged for the prompt
    /// and the output seen; otherwise the hold (and any reserve still out)
    /// is given back. Empty once the request has closed.
    pub fn on_cut_off(&mut self, now: u64) -> Closing {
        match self.answer.as_ref().map(|a| a.observer.is_some()) {
            Some(true) => self.on_stream_end(&mut Vec::new(), now),
            // Unread: no review, so this is always a relay.
            Some(false) => match self.on_json_answer(None, now) {
                JsonAnswer::Relay(relay) => relay.closing,
                JsonAnswer::Replace(_) => self.cancel(),
            },
            None => self.cancel(),
        }
    }

    /// The attempt got no answer at all (a timeout, a connection failure):
    /// the step after it. `status` is what the host saw, if anything.
    pub fn on_no_answer(&mut self, status: Option<u16>, retry_after: Option<&str>, now: u64) -> Next {
        match self.on_answer_head(status, "", retry_after, now) {
            AnswerStart::Failed(step) => *step,
            // Not an answer the client can be given: lost, like a timeout.
            AnswerStart::Stream { .. } | AnswerStart::ReadBody => self.on_answer_lost(now),
        }
    }

    /// The answer was lost before any byte of it reached the client (its
    /// body could not be read, or a stream broke before its first chunk):
    /// a failed attempt, like a timeout.
    pub fn on_answer_lost(&mut self, now: u64) -> Next {
        self.answer = None;
        if let Some(target) = self.current_target() {
            let update = CooldownUpdate::for_attempt(self.cooldown, target, None, None, now);
            self.push_cooldown(update);
        }
        self.on_upstream_failure(None)
    }

    fn push_cooldown(&mut self, update: CooldownUpdate) {
        if update != CooldownUpdate::Nothing {
            self.duties.push(Duty::Cooldown(update));
        }
    }

    /// What a non-streamed answer says: its summary and, for the cache, the body.
    fn read_json_response(&self, body: &[u8]) -> (ResponseSummary, Option<serde_json::Value>) {
        let summary = response::summarize_json(self.api, body).unwrap_or_default();
        // The parsed body only goes into a cache entry: a request with no
        // cache key (most, e.g. any with a temperature above 0) skips that
        // second parse of the whole answer.
        let assembled =
            if summary.complete && self.cache.key.is_some() { serde_json::from_slice(body).ok() } else { None };
        (summary, assembled)
    }

    /// Look at a complete, non-streamed provider answer before it is
    /// relayed: None to relay it; otherwise the step to take instead.
    fn review(&mut self, status: u16, summary: &ResponseSummary, body: &[u8]) -> Option<Next> {
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
        let (usage, cost_micros) = self.attempt_cost(status, summary);
        let amount = Amount {
            tokens: usage.map_or(0, |u| u.input_tokens.saturating_add(u.output_tokens)),
            micros: cost_micros,
            requests: 1,
        };
        self.prior = self.prior.plus(amount);
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
        let ops = settlement.iter().map(|s| self.settlement_op(s)).collect();
        Some(Next::Escalate(ops))
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
            extra_micros: self.tool_hold_micros,
            scopes: self.scopes.clone(),
        });
        match (reserve, self.budgets_enforced) {
            (Some(r), true) => {
                self.reserve_request = Some(r.clone());
                self.reserve_op(r)
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
            return self.respond(LocalResponse::error(&err.into(), Some(&self.trace)), settlement);
        };
        self.served_held = true;
        self.trace.tier = held.tier;
        self.trace.model = Some(held.model);
        self.trace.cost_micros = Some(self.prior.micros);
        self.trace.cost_is_estimate = false;
        self.trace.reasons.push(format!("{why}: returned the {} answer", held.signal.as_str()));
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        headers.extend(self.trace.headers());
        self.respond(LocalResponse { status: held.status, headers, body: held.body }, settlement)
    }

    /// The API the current attempt's provider speaks.
    pub(super) fn provider_api(&self) -> ApiFormat {
        self.current_target().and_then(|t| translate::provider_api(self.api, t.provider)).unwrap_or(self.api)
    }

    /// Ids and times for an answer translated into the client's API.
    fn answer_context(&self, now: u64) -> AnswerContext {
        AnswerContext {
            id_seed: self.request_id.trim_start_matches("req_").to_owned(),
            created: now,
            prompt_tokens: self.prompt.tokens,
            include_usage: self.request.client_wants_usage,
            echo: self.client_echo.clone(),
        }
    }

    /// A JSON answer from a provider of another API, in the client's: the
    /// status to send and the body (None: no translation, relay as sent).
    /// A success that is no answer of the provider's API is a 502; an
    /// answer too large to read cannot be translated, so it is one too.
    fn translate_json(&self, status: u16, body: Option<&[u8]>, now: u64) -> (u16, Option<Vec<u8>>) {
        let provider = self.provider_api();
        if provider == self.api {
            return (status, None);
        }
        let Some(raw) = body else {
            let why = br#"{"error":{"message":"the provider's answer was too large to translate"}}"#;
            return (502, Some(translate::translate_error(provider, self.api, 502, why)));
        };
        if (200..300).contains(&status) {
            if let Some(answer) = translate::translate_answer(provider, self.api, raw, &self.answer_context(now)) {
                return (status, Some(answer));
            }
            let why = br#"{"error":{"message":"the provider's answer could not be read"}}"#;
            return (502, Some(translate::translate_error(provider, self.api, 502, why)));
        }
        (status, Some(translate::translate_error(provider, self.api, status, raw)))
    }

    /// A provider stream's outcome in the client's API: its finish reason
    /// in the client's words, the body to cache translated.
    fn translated_outcome(&self, outcome: StreamOutcome, now: u64) -> StreamOutcome {
        let provider = self.provider_api();
        let mut summary = outcome.summary;
        summary.finish_reason = summary.finish_reason.map(|r| Finish::read(provider, &r, None).for_summary(self.api));
        let ctx = self.answer_context(now);
        let assembled =
            outcome.assembled.and_then(|v| translate::answer::translate_answer_value(provider, self.api, &v, &ctx));
        StreamOutcome { summary, assembled }
    }

    /// The usage and cost of the current attempt's answer.
    pub(super) fn attempt_cost(&self, status: u16, summary: &ResponseSummary) -> (Option<Usage>, u64) {
        let price = self.current_target().and_then(|t| self.price_of(&t.model));
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
        // Built-in tool calls with a published price, per call.
        let tools = summary.builtin_calls.iter().fold(0u64, |sum, (tool, calls)| {
            sum.saturating_add(crate::pricing::builtin_tool_price(tool).unwrap_or(0).saturating_mul(*calls))
        });
        (usage, cost_micros.saturating_add(tools))
    }
}
