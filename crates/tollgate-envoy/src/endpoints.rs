//! The endpoints besides chat: `GET /v1/usage`, `POST /v1/feedback` and
//! `GET /v1/feedback/export`, answered locally from shared data or, in
//! Redis mode, through webdis (the callouts' answers come back through
//! [`Stream::on_webdis_answer`]).

use crate::host;
use crate::local_state;
use crate::redis::{BudgetCas, OutcomeCas};
use crate::runtime::Runtime;
use crate::stream::{FEEDBACK_RETRIES, Pending, Stream, first_budget_reply};
use std::rc::Rc;
use tollgate_core::budget::LedgerOp;
use tollgate_core::endpoints;
use tollgate_core::outcomes::{self, OutcomeOp};
use tollgate_core::store::TenantReply;

impl Stream {
    pub(crate) fn on_usage(&mut self, rt: &Rc<Runtime>) {
        let Some((tenant, config)) = self.tenant.clone() else { return };
        let status = LedgerOp::Status { budgets: config.budgets.clone() };
        if rt.redis_budgets() {
            let mut cas = BudgetCas::new(&tenant, vec![status], host::now_secs());
            let body = cas.start(&rt.config.redis.key_prefix, &mut rt.board.borrow_mut());
            if let Err(p) = self.call_webdis(rt, &body, Pending::Usage(cas)) {
                self.on_webdis_answer(rt, *p, None);
            }
            return;
        }
        let now = host::now_secs();
        let budget = first_budget_reply(local_state::apply_budget(&rt.shared, &tenant, &[status], now));
        let report = local_state::apply_outcome(&rt.shared, &tenant, &OutcomeOp::Report, now);
        self.answer_usage(budget, report);
    }

    /// Redis mode: the budget status is in; now the outcome report.
    pub(crate) fn usage_report(&mut self, rt: &Runtime, budget: Option<TenantReply>) {
        let Some((tenant, _)) = self.tenant.clone() else { return };
        let mut cas = OutcomeCas::new(&tenant, OutcomeOp::Report, host::now_secs());
        let first = cas.start(&rt.config.redis.key_prefix);
        if self.call_webdis(rt, &first, Pending::UsageReport(budget, cas)).is_err() {
            self.answer_usage(None, None);
        }
    }

    pub(crate) fn answer_usage(&mut self, budget: Option<TenantReply>, report: Option<outcomes::OutcomeReply>) {
        let Some((_, config)) = self.tenant.clone() else { return };
        let now = host::now_secs();
        let replies = match (budget, report) {
            (Some(b), Some(r)) => Some(vec![b, TenantReply::Outcome(r)]),
            _ => None,
        };
        match endpoints::usage_from_replies(&config, replies, now) {
            Ok(report) => self.send_json(200, &report),
            Err(e) => self.send_error(&e),
        }
    }

    pub(crate) fn on_feedback(&mut self, rt: &Rc<Runtime>, body: &[u8]) {
        let Some((tenant, _)) = self.tenant.clone() else { return };
        let fb = match outcomes::parse_feedback(body) {
            Ok(f) => f,
            Err(e) => return self.send_error(&e),
        };
        let op = OutcomeOp::Feedback { request_id: fb.request_id.clone(), resolved: fb.resolved };
        if rt.redis_budgets() {
            let mut cas = OutcomeCas::new(&tenant, op.clone(), host::now_secs());
            let first = cas.start(&rt.config.redis.key_prefix);
            if self.call_webdis(rt, &first, Pending::Feedback(cas, FEEDBACK_RETRIES)).is_err() {
                self.answer_feedback(None, &op);
            }
            return;
        }
        // Node-local: the outcome is recorded before the answer's last byte
        // is passed on, so an unknown id is unknown (no retry needed).
        let reply = local_state::apply_outcome(&rt.shared, &tenant, &op, host::now_secs()).map(TenantReply::Outcome);
        self.answer_feedback(reply, &op);
    }

    /// `GET /v1/feedback/export`: the tenant's recent requests with feedback, as NDJSON.
    pub(crate) fn on_feedback_export(&mut self, rt: &Rc<Runtime>) {
        let Some((tenant, _)) = self.tenant.clone() else { return };
        if rt.redis_budgets() {
            let mut cas = OutcomeCas::new(&tenant, OutcomeOp::Export, host::now_secs());
            let first = cas.start(&rt.config.redis.key_prefix);
            if self.call_webdis(rt, &first, Pending::FeedbackExport(cas)).is_err() {
                self.answer_export(None);
            }
            return;
        }
        let reply = local_state::apply_outcome(&rt.shared, &tenant, &OutcomeOp::Export, host::now_secs());
        self.answer_export(reply.map(TenantReply::Outcome));
    }

    pub(crate) fn answer_export(&mut self, reply: Option<TenantReply>) {
        match endpoints::feedback_export_from_reply(reply) {
            Ok(body) => {
                let headers = vec![
                    ("content-type".to_owned(), endpoints::NDJSON.to_owned()),
                    ("cache-control".to_owned(), "no-store".to_owned()),
                ];
                self.send(200, &headers, body.as_bytes());
            }
            Err(e) => self.send_error(&e),
        }
    }

    pub(crate) fn answer_feedback(&mut self, reply: Option<TenantReply>, op: &OutcomeOp) {
        let request_id = match op {
            OutcomeOp::Feedback { request_id, .. } => request_id.clone(),
            _ => String::new(),
        };
        match endpoints::feedback_from_reply(reply) {
            Ok(Some(answer)) => self.send_json(200, &answer),
            Ok(None) => self.send_error(&endpoints::feedback_unknown(&request_id)),
            Err(e) => self.send_error(&e),
        }
    }
}
