//! The endpoints besides chat: `GET /v1/usage`, `POST /v1/feedback` and
//! `GET /v1/feedback/export`, answered from the tenant's store
//! ([`crate::store`]): at once from shared data, or when webdis answers
//! (the stream passes that answer back to [`Stream::on_endpoint_answer`]).

use crate::host;
use crate::store::{self, Answer, Applied};
use crate::stream::{Pending, Stream};
use tollgate_core::endpoints;
use tollgate_core::outcomes::{self, OutcomeOp};
use tollgate_core::store::{TenantOp, TenantReply};

/// What a store call made for an endpoint answers.
#[derive(Debug)]
pub(crate) enum Awaiting {
    Usage,
    /// `/v1/feedback`, with the retries left for an id the store does not
    /// know yet (its record lands just after the answer it names).
    Feedback {
        request_id: String,
        op: OutcomeOp,
        retries: u8,
    },
    /// A short wait before asking about that id again.
    FeedbackWait {
        request_id: String,
        op: OutcomeOp,
        retries: u8,
    },
    FeedbackExport,
}

impl Stream {
    /// `GET /v1/usage`: the caller's budgets and cost per resolution.
    pub(crate) fn on_usage(&mut self) {
        let Some((_, config)) = self.tenant.clone() else { return };
        let path = host::header(proxy_wasm::types::MapType::HttpRequestHeaders, ":path").unwrap_or_default();
        match endpoints::usage_ops(&config, self.key_scope.as_deref(), &path, host::now_secs()) {
            Ok(ops) => self.apply_ops(ops, Awaiting::Usage),
            Err(e) => self.send_error(&e),
        }
    }

    /// `POST /v1/feedback {request_id, resolved}`.
    pub(crate) fn on_feedback(&mut self, body: &[u8]) {
        let fb = match outcomes::parse_feedback(body) {
            Ok(f) => f,
            Err(e) => return self.send_error(&e),
        };
        let op = OutcomeOp::Feedback { request_id: fb.request_id.clone(), resolved: fb.resolved };
        let retries = endpoints::FEEDBACK_RETRIES;
        self.apply_ops(
            vec![TenantOp::Outcome(op.clone())],
            Awaiting::Feedback { request_id: fb.request_id, op, retries },
        );
    }

    /// `GET /v1/feedback/export`: the tenant's recent requests with feedback, as NDJSON.
    pub(crate) fn on_feedback_export(&mut self) {
        self.apply_ops(endpoints::feedback_export_ops(), Awaiting::FeedbackExport);
    }

    /// Apply `ops` to the caller's store; `awaiting` takes the answer.
    fn apply_ops(&mut self, ops: Vec<TenantOp>, awaiting: Awaiting) {
        let (Some(rt), Some((tenant, _))) = (self.rt.clone(), self.tenant.clone()) else { return };
        match store::apply(&rt, &tenant, ops, host::now_secs()) {
            Applied::Now(answer) => self.on_endpoint_answer(answer, awaiting),
            Applied::Later(token, call) => self.pending = Some((token, Pending::Endpoint(call, awaiting))),
        }
    }

    /// The store answered a call made for an endpoint.
    pub(crate) fn on_endpoint_answer(&mut self, answer: Answer, awaiting: Awaiting) {
        let Some(rt) = self.rt.clone() else { return };
        match awaiting {
            Awaiting::Usage => {
                let Some((_, config)) = self.tenant.clone() else { return };
                match endpoints::usage_from_replies(&config, answer.replies(), host::now_secs()) {
                    Ok(report) => self.send_json(200, &report),
                    Err(e) => self.send_error(&e),
                }
            }
            Awaiting::Feedback { request_id, op, retries } => {
                match endpoints::feedback_from_reply(answer.first_reply()) {
                    Ok(Some(answer)) => self.send_json(200, &answer),
                    Ok(None) => {
                        let wait = if retries > 0 { store::wait(&rt, endpoints::FEEDBACK_RETRY_WAIT_MS) } else { None };
                        match wait {
                            Some((token, call)) => {
                                let awaiting = Awaiting::FeedbackWait { request_id, op, retries: retries - 1 };
                                self.pending = Some((token, Pending::Endpoint(call, awaiting)));
                            }
                            None => self.send_error(&endpoints::feedback_unknown(&request_id)),
                        }
                    }
                    Err(e) => self.send_error(&e),
                }
            }
            // Whatever the wait answered, ask again.
            Awaiting::FeedbackWait { request_id, op, retries } => {
                self.apply_ops(vec![TenantOp::Outcome(op.clone())], Awaiting::Feedback { request_id, op, retries });
            }
            Awaiting::FeedbackExport => self.answer_export(answer.first_reply()),
        }
    }

    fn answer_export(&mut self, reply: Option<TenantReply>) {
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
}
