"""Resending the one request `wrangler dev`'s own proxy loses.

`wrangler dev` puts a proxy Worker (its "ProxyWorker") in front of the user
Worker and forwards over pooled HTTP connections. kj closes an idle pooled
connection after 5 s on both ends; a request written into a connection the
user Worker's side is closing at that moment never reaches the user Worker,
and the ProxyWorker answers a POST with a canned 503 ("Your worker restarted
mid-request ... Only GET or HEAD requests are retried automatically",
`Retry-After: 0`) although nothing restarted: workers-sdk#14641, still open,
and the 503 wording is workers-sdk#14593. A burst of concurrent POSTs that
follows an earlier burst by 4.5 to 5 s loses up to half of itself this way
(measured here with wrangler 4.86: 100 requests after 100); CI saw 6 of 100
streams lost once. Production Workers have no such proxy.

The request never reached tollgate: in that measurement every one of 1,200
requests, 258 of them resent, made exactly one provider call. So resending
it is what `Retry-After: 0` asks of a client and changes nothing the tests
assert; were one to have reached tollgate after all, the tests' exact
ledger sums would catch the double charge. Only that exact response, from
a `wrangler dev` this harness started, is resent, at most `MAX_RESENDS`
times; every resend is counted and reported at the end of the session.
"""

from __future__ import annotations

import threading

import httpx

# The ProxyWorker's body, word for word (wrangler's
# templates/startDevWorker/ProxyWorker.ts); tollgate's own 503s are
# OpenAI-shaped JSON and never match.
DROPPED_BODY = (
    b"Your worker restarted mid-request. Please try sending the request again. "
    b"Only GET or HEAD requests are retried automatically."
)
MAX_RESENDS = 3

_lock = threading.Lock()
_dev_ports: set[int] = set()
resent: list[str] = []


def serve_through_wrangler_dev(port: int) -> None:
    """Mark 127.0.0.1:`port` as a `wrangler dev` whose dropped POSTs are resent."""
    with _lock:
        _dev_ports.add(port)


def _through_wrangler_dev(request: httpx.Request) -> bool:
    with _lock:
        return request.url.host == "127.0.0.1" and request.url.port in _dev_ports


def _looks_dropped(response: httpx.Response) -> bool:
    return (
        response.status_code == 503
        and response.headers.get("retry-after") == "0"
        and response.headers.get("content-type", "").startswith("text/plain")
    )


def _decoded(response: httpx.Response, raw: bytes) -> bytes:
    # workerd gzips even this canned answer when the client accepts it.
    return httpx.Response(response.status_code, headers=response.headers, content=raw).read()


def _replayable(request: httpx.Request) -> bool:
    # A body given as bytes, str or JSON is held in memory and can be sent
    # again; a generator or file upload cannot.
    return isinstance(request.stream, httpx.ByteStream)


def _kept_or_resend(request: httpx.Request, response: httpx.Response, raw: bytes, attempt: int) -> httpx.Response | None:
    """The response to hand the caller, or None to send `request` again.
    `raw` is the body as it came (still encoded, as the headers say)."""
    if _decoded(response, raw).strip() != DROPPED_BODY or attempt == MAX_RESENDS:
        # Not the proxy's drop (or it kept dropping): the response as it
        # came, its body already read.
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=raw,
            extensions=response.extensions,
            request=request,
        )
    with _lock:
        resent.append(f"{request.method} {request.url.path}")
    return None


_original_handle_request = httpx.HTTPTransport.handle_request


def _handle_request(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
    if not _through_wrangler_dev(request) or not _replayable(request):
        return _original_handle_request(self, request)
    for attempt in range(MAX_RESENDS + 1):
        response = _original_handle_request(self, request)
        if not _looks_dropped(response):
            return response
        raw = b"".join(response.iter_raw())
        response.close()
        if (kept := _kept_or_resend(request, response, raw, attempt)) is not None:
            return kept
    raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover


_original_handle_async_request = httpx.AsyncHTTPTransport.handle_async_request


async def _handle_async_request(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
    if not _through_wrangler_dev(request) or not _replayable(request):
        return await _original_handle_async_request(self, request)
    for attempt in range(MAX_RESENDS + 1):
        response = await _original_handle_async_request(self, request)
        if not _looks_dropped(response):
            return response
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
        if (kept := _kept_or_resend(request, response, raw, attempt)) is not None:
            return kept
    raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover


def install() -> None:
    """Route every httpx client, synchronous or not (the tests' and the
    SDKs'), through the resend; idempotent."""
    httpx.HTTPTransport.handle_request = _handle_request  # type: ignore[method-assign]
    httpx.AsyncHTTPTransport.handle_async_request = _handle_async_request  # type: ignore[method-assign]


def summary() -> str | None:
    with _lock:
        if not resent:
            return None
        paths = sorted(set(resent))
        return (
            f"wrangler dev's proxy dropped {len(resent)} request(s) that never reached the Worker "
            f"(workers-sdk#14641); each was resent: {', '.join(paths)}"
        )
