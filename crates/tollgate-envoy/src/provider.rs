//! Calling a provider: the first attempt is the client's own request,
//! rewritten and sent on to Envoy's router (the route table picks the
//! provider's cluster); every later attempt is a `dispatch_http_call` to
//! the provider's cluster, whose answer comes back whole.

use crate::host;
use crate::runtime::Runtime;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::time::Duration;
use tollgate_core::engine::Upstream;
use tollgate_core::upstream;

/// Set the provider's headers and the rewritten body on the paused
/// request; the route table then sends it to the provider's cluster.
/// `streamed`: the client asked for a stream.
pub fn rewrite_request(rt: &Runtime, up: &Upstream, key: &str, client_headers: &[(String, String)], streamed: bool) {
    let route = rt.config.route(up.target.provider);
    let path = route.path(up.api);
    let provider_headers = upstream::provider_headers(up.target.provider, key, client_headers);
    let length = up.body.len().to_string();
    let mut set: Vec<(&str, &str)> = vec![
        (":authority", route.authority.as_str()),
        (":path", path.as_str()),
        ("x-tollgate-provider", up.target.provider.as_str()),
        ("content-length", length.as_str()),
    ];
    set.extend(provider_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    // A JSON answer gets the configured deadline, as a fallback call
    // does; a stream is bounded by the route's timeouts instead (a
    // whole-response deadline would cut long answers off).
    let deadline = rt.config.upstream_timeout_ms.to_string();
    if !streamed {
        set.push(("x-envoy-upstream-rq-timeout-ms", deadline.as_str()));
    }
    // Everything else the client sent stays behind: above all its
    // tollgate key (the provider gets the provider's key), cookies and
    // any x-tollgate-provider it tried to set. Pseudo-headers and
    // Envoy's own x-forwarded-*/x-request-id stay.
    for (name, _) in host::headers(MapType::HttpRequestHeaders) {
        let lower = name.to_ascii_lowercase();
        let keep = lower.starts_with(':')
            || lower.starts_with("x-forwarded-")
            || lower == "x-request-id"
            || set.iter().any(|(n, _)| *n == lower);
        if !keep {
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, &name);
        }
    }
    for (name, value) in set {
        if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)) {
            log::error!("tollgate: could not set request header `{name}`: {status:?}");
        }
    }
    if let Err(status) = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, usize::MAX, &up.body) {
        log::error!("tollgate: could not rewrite the request body: {status:?}");
    }
    // Replacing headers already clears Envoy's route cache; ask again
    // explicitly in case a host version does not.
    let _ = hostcalls::call_foreign_function("clear_route_cache", None);
}

/// Send a later attempt to the provider's cluster, from the current
/// stream: its answer comes to the stream's `on_http_call_response` with
/// the token. None: the call could not be made.
pub fn call(rt: &Runtime, up: &Upstream, key: &str, client_headers: &[(String, String)]) -> Option<u32> {
    let route = rt.config.route(up.target.provider);
    let path = route.path(up.api);
    let provider_headers = upstream::provider_headers(up.target.provider, key, client_headers);
    let mut headers: Vec<(&str, &str)> =
        vec![(":method", "POST"), (":path", path.as_str()), (":authority", route.authority.as_str())];
    headers.extend(provider_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let timeout = Duration::from_millis(rt.config.upstream_timeout_ms);
    match hostcalls::dispatch_http_call(&route.cluster, headers, Some(&up.body), vec![], timeout) {
        Ok(token) => Some(token),
        Err(status) => {
            log::warn!("tollgate: could not call cluster `{}` for {}: {status:?}", route.cluster, up.target);
            None
        }
    }
}
