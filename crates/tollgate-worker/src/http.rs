//! Small translations between core values and workers-rs requests/responses.

use futures_util::StreamExt;
use tollgate_core::ApiError;
use tollgate_core::engine::LocalResponse;
use tollgate_core::error::RequestError;
use worker::{Headers, Request, Response, Result};

/// Set `headers` (name, value) pairs on a response. `set`, not `append`:
/// the body constructors pre-set a content type that must be replaced.
pub fn with_headers(mut response: Response, headers: &[(String, String)]) -> Result<Response> {
    let h = response.headers_mut();
    for (name, value) in headers {
        h.set(name, value)?;
    }
    Ok(response)
}

/// A core [`LocalResponse`] as a Worker response.
pub fn local(local: LocalResponse) -> Result<Response> {
    let response = Response::from_bytes(local.body)?.with_status(local.status);
    with_headers(response, &local.headers)
}

/// An OpenAI-shaped error.
pub fn error_response(err: &ApiError, extra: &[(String, String)]) -> Result<Response> {
    let mut headers = err.headers();
    headers.extend_from_slice(extra);
    local(LocalResponse { status: err.status, headers, body: err.body() })
}

pub fn json_response(status: u16, value: &serde_json::Value, extra: &[(String, String)]) -> Result<Response> {
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    headers.extend_from_slice(extra);
    local(LocalResponse { status, headers, body: value.to_string().into_bytes() })
}

/// Read the request body, refusing (413) as soon as it passes `limit`: a
/// declared `content-length` over the limit is refused without reading, and
/// a chunked body is read only up to the limit, so a 10 MB upload never sits
/// in the isolate's 128 MB.
pub async fn read_body(req: &mut Request, limit: usize) -> std::result::Result<Vec<u8>, ApiError> {
    let declared = req.headers().get("content-length").ok().flatten().and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(actual) = declared.filter(|&n| n > limit) {
        return Err(RequestError::TooLarge { limit, actual }.into());
    }
    let mut stream = match req.stream() {
        Ok(s) => s,
        // No body at all: the core reports an empty body with its own message.
        Err(_) => return Ok(Vec::new()),
    };
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                400,
                "invalid_request_error",
                "body_read_failed",
                format!("the request body could not be read: {e}"),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(RequestError::TooLarge { limit, actual: body.len() + chunk.len() }.into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The request's headers as lower-case (name, value) pairs.
pub fn header_pairs(headers: &Headers) -> Vec<(String, String)> {
    headers.entries().map(|(n, v)| (n.to_ascii_lowercase(), v)).collect()
}

#[cfg(all(test, target_arch = "wasm32", target_os = "unknown"))]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test]
    fn request_headers_reach_the_core_as_lower_case_pairs() {
        let headers = Headers::new();
        headers.set("Authorization", "Bearer tg-x").unwrap_or_default();
        headers.set("X-Tollgate-Tags", "a,b").unwrap_or_default();
        let mut pairs = header_pairs(&headers);
        pairs.sort();
        assert_eq!(
            pairs,
            [("authorization".to_owned(), "Bearer tg-x".to_owned()), ("x-tollgate-tags".to_owned(), "a,b".to_owned())]
        );
    }

    #[wasm_bindgen_test]
    async fn a_core_error_becomes_a_response_with_its_status_headers_and_openai_shaped_body() {
        let err = ApiError::new(429, "rate_limit_error", "rate_limit_exceeded", "slow down").with_retry_after(7);
        let extra = [("x-tollgate-request-id".to_owned(), "req_1".to_owned())];
        let mut response =
            error_response(&err, &extra).unwrap_or_else(|_| Response::empty().unwrap_or_else(|_| unreachable!()));
        assert_eq!(response.status_code(), 429);
        let header = |name: &str| response.headers().get(name).ok().flatten();
        assert_eq!(header("retry-after").as_deref(), Some("7"));
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        assert_eq!(header("x-tollgate-request-id").as_deref(), Some("req_1"));
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap_or_default()).unwrap_or_default();
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["message"], "slow down");
    }

    #[wasm_bindgen_test]
    async fn a_local_response_replaces_the_default_content_type() {
        let headers = vec![("content-type".to_owned(), "text/html; charset=utf-8".to_owned())];
        let mut response = local(LocalResponse { status: 200, headers, body: b"<p>hi</p>".to_vec() })
            .unwrap_or_else(|_| unreachable!());
        let all = header_pairs(response.headers());
        let types: Vec<&(String, String)> = all.iter().filter(|(n, _)| n == "content-type").collect();
        assert_eq!(types.len(), 1, "{all:?}");
        assert_eq!(types[0].1, "text/html; charset=utf-8");
        assert_eq!(response.text().await.unwrap_or_default(), "<p>hi</p>");
    }
}
