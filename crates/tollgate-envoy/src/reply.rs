//! The filter's own replies (errors, the endpoints' answers, responses the
//! plan makes without a provider), sent with `send_http_response`; errors
//! are counted by code.

use crate::metrics;
use crate::stream::Stream;
use proxy_wasm::hostcalls;
use tollgate_core::ApiError;
use tollgate_core::engine::LocalResponse;

impl Stream {
    /// Send a reply of the filter's own; it is the stream's response from now on.
    pub(crate) fn send(&mut self, status: u16, headers: &[(String, String)], body: &[u8]) {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        if let Err(status) = hostcalls::send_http_response(u32::from(status), pairs, Some(body)) {
            log::error!("tollgate: could not send a local reply: {status:?}");
        }
        self.local_reply = true;
    }

    /// Send a response made without a provider, with the request id. An
    /// error counts in `tollgate.errors` by code, a budget refusal also in
    /// `tollgate.budget_refusals` by code and the level of the limit.
    pub(crate) fn send_local(&mut self, local: &LocalResponse) {
        if local.status >= 400 {
            let code = serde_json::from_slice::<serde_json::Value>(&local.body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_else(|| local.status.to_string());
            if matches!(local.status, 402 | 429) || code.starts_with("budget") {
                // The level of the limit that refused (tenant, key or user),
                // when one did: three values at most, so the series stay bounded.
                let level = local.headers.iter().find(|(n, _)| n == "x-tollgate-limit-level").map(|(_, v)| v.as_str());
                let mut labels = vec![("code", code.as_str())];
                labels.extend(level.map(|level| ("level", level)));
                self.count(metrics::BUDGET_REFUSALS, &labels, 1);
            }
            self.count(metrics::ERRORS, &[("code", &code)], 1);
        }
        let mut headers = local.headers.clone();
        if !headers.iter().any(|(n, _)| n == "x-tollgate-request-id") {
            headers.push(("x-tollgate-request-id".to_owned(), self.request_id.clone()));
        }
        self.send(local.status, &headers, &local.body);
    }

    /// An error before (or outside) a plan: OpenAI-shaped, with the id.
    pub(crate) fn send_error(&mut self, err: &ApiError) {
        self.send_local(&LocalResponse::error(err, None));
    }

    pub(crate) fn send_json(&mut self, status: u16, value: &serde_json::Value) {
        let body = serde_json::to_vec(value).unwrap_or_default();
        let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        self.send(status, &headers, &body);
    }
}
