"""Envoy's own error answers (its local replies) are OpenAI-shaped JSON, and
the filter's own answers are left exactly as it sends them (envoy/README.md,
"Envoy's own errors").

Every Envoy here runs the bootstrap `hosts.envoy_bootstrap` renders, whose
`local_reply_config` is read from envoy/envoy-local.yaml (the shipped
configs carry the same one; envoy/render.py checks that they agree). The
requests Envoy refuses before the filter could read them (headers over the
limit, a body over the listener's buffer) are sent by hand on a socket that
reads while it writes: Envoy answers and closes the connection before the
client has finished sending, which an HTTP client reports as a broken pipe
rather than the answer.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import hosts
import tenants
from calls import EASY_PROMPT, assert_error, bearer, chat, chat_body, unique
from hosts import ENVOY_BUFFER_LIMIT, FILTER_UNAVAILABLE, Envoy, Mock
from prereq import started

# A tenant whose max_body_bytes is above the listener's buffer limit, so a
# body between the two reaches Envoy's limit, not the filter's: Envoy's own
# 413. (The shipped configs keep every tenant below the buffer, so there the
# filter's 413 answers first.)
KEY = tenants.key_for("e2e-local-replies")
BIG_BODY_LIMIT = 4 * ENVOY_BUFFER_LIMIT
TENANT = tenants.routed_tenant("e2e-local-replies", limits={"max_body_bytes": BIG_BODY_LIMIT})
# A small limit, for the filter's own 413.
SMALL_KEY = tenants.key_for("e2e-local-replies-small")
SMALL_BODY_LIMIT = 2048
SMALL_TENANT = tenants.routed_tenant("e2e-local-replies-small", limits={"max_body_bytes": SMALL_BODY_LIMIT})
TENANTS = [(TENANT, [KEY]), (SMALL_TENANT, [SMALL_KEY])]

# Envoy's HTTP/1 request-header limits, which the shipped configs leave at
# their defaults: max_request_headers_kb 60 and max_request_headers_count 100.
HEADERS_LIMIT_BYTES = 60 * 1024
HEADERS_LIMIT_COUNT = 100

FIRST = tenants.CHEAP_OPENAI[0].split("/", 1)[1]  # gpt-4o-mini, first of the cheap chain


@dataclass
class Envoys:
    replies: Envoy  # the filter, with the shipped local_reply_config
    defaults: Envoy  # the filter, without it: Envoy's plain-text defaults
    bare: Envoy  # no filter, with the shipped local_reply_config: the route table's 503


def _start(mock: Mock, work: Path, name: str, *, with_filter: bool, local_replies: bool) -> Envoy:
    wasm = hosts.require_envoy_filter() if with_filter else hosts.ENVOY_WASM
    plugin = hosts.plugin_config(mock, TENANTS) if with_filter else None
    bootstrap = hosts.envoy_bootstrap(
        plugin,
        port=hosts.free_port(),
        admin_port=hosts.free_port(),
        mock=mock,
        wasm=wasm,
        access_log=work / f"{name}.access.log",
        local_replies=local_replies,
    )
    return Envoy.start(bootstrap, work, name=name)


@pytest.fixture(scope="module")
def envoys(mock: Mock, run_dir: Path) -> Iterator[Envoys]:
    work = run_dir / "envoy-local-replies"
    running: list[Envoy] = []
    try:
        for name, with_filter, local_replies in (
            ("replies", True, True),
            ("defaults", True, False),
            ("bare", False, True),
        ):
            running.append(started(lambda: _start(mock, work, name, with_filter=with_filter,
                                                   local_replies=local_replies)))
        yield Envoys(*running)
    finally:
        for e in running:
            e.stop()


# ---------------------------------------------------------------- by hand


@dataclass
class Raw:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)


def _parse(data: bytes) -> Raw | None:
    """The response in `data`, or None while it is incomplete."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if len(body) < length:
        return None
    return Raw(status=status, headers=headers, body=body[:length])


def exchange(url: str, request_line: str, headers: list[tuple[str, str]], body: bytes = b"",
             timeout: float = 60.0) -> Raw:
    """Send one HTTP/1.1 request by hand, reading whenever the socket is
    readable, and stop at the first complete response: Envoy may answer
    (and close) long before the request is all sent."""
    host, port = hosts.host_port(url)
    head = request_line + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in [("host", f"{host}:{port}"), *headers])
    out = memoryview(head.encode() + b"\r\n" + body)
    received = bytearray()
    sent = 0
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.setblocking(False)
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if sent < len(out) else [], [], 0.5)
            if readable:
                try:
                    chunk = sock.recv(1 << 16)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += chunk
                if _parse(bytes(received)) is not None:
                    break
            elif writable:
                try:
                    sent += sock.send(out[sent:sent + (1 << 16)])
                except (BrokenPipeError, ConnectionResetError):
                    sent = len(out)  # Envoy stopped reading: its answer is on the way
    found = _parse(bytes(received))
    assert found is not None, f"no complete response after sending {sent} of {len(out)} bytes: {bytes(received)[:500]!r}"
    return found


def assert_envoy_error(status: int, headers: dict[str, str], body: bytes, want_status: int, code: str,
                       kind: str, detail: str) -> dict:
    """One of Envoy's own errors as the shipped local_reply_config renders it:
    JSON, the shape tollgate's errors have, Envoy's reason kept in the message."""
    assert status == want_status, (status, body[:500])
    assert headers.get("content-type") == "application/json", headers
    assert int(headers["content-length"]) == len(body)
    parsed = json.loads(body)
    assert set(parsed) == {"type", "error"} and parsed["type"] == "error", parsed
    error = parsed["error"]
    assert set(error) == {"message", "type", "param", "code"}, parsed
    assert error["code"] == code, parsed
    assert error["type"] == kind, parsed
    assert error["param"] is None, parsed
    assert detail in error["message"], parsed
    # Envoy answered, not the filter: no decision headers.
    assert "x-tollgate-request-id" not in headers, headers
    return error


# ---------------------------------------------------------------- 431


def test_headers_over_envoys_limit_get_json_431(envoys):
    pad = "a" * (64 * 1024)
    r = exchange(envoys.replies.url, "GET /healthz HTTP/1.1", [("x-pad", pad)])
    assert_envoy_error(r.status, r.headers, r.body, 431, "request_header_too_large", "invalid_request_error",
                       "http1.headers_too_large")
    # The default it replaces: plain text the SDKs cannot parse.
    plain = exchange(envoys.defaults.url, "GET /healthz HTTP/1.1", [("x-pad", pad)])
    assert plain.status == 431 and plain.headers.get("content-type") == "text/plain", plain


def test_the_header_limit_is_60_kib_in_total(envoys):
    """Just under Envoy's 60 KiB of headers the filter answers; just over, Envoy does."""
    under = exchange(envoys.replies.url, "GET /healthz HTTP/1.1", [("x-pad", "a" * (HEADERS_LIMIT_BYTES - 1024))])
    assert under.status == 200, under
    assert under.json()["status"] == "ok", under
    # Two headers, each under the limit, over it together.
    half = "a" * (HEADERS_LIMIT_BYTES // 2)
    over = exchange(envoys.replies.url, "GET /healthz HTTP/1.1", [("x-pad-1", half), ("x-pad-2", half)])
    assert_envoy_error(over.status, over.headers, over.body, 431, "request_header_too_large",
                       "invalid_request_error", "http1.headers_too_large")


def test_more_than_100_headers_get_json_431(envoys):
    few = [(f"x-h{i}", "v") for i in range(HEADERS_LIMIT_COUNT - 10)]
    assert exchange(envoys.replies.url, "GET /healthz HTTP/1.1", few).status == 200
    many = [(f"x-h{i}", "v") for i in range(HEADERS_LIMIT_COUNT + 1)]
    r = exchange(envoys.replies.url, "GET /healthz HTTP/1.1", many)
    assert_envoy_error(r.status, r.headers, r.body, 431, "request_header_too_large", "invalid_request_error",
                       "http1.too_many_headers")


# ---------------------------------------------------------------- 413


def big_chat_body(size: int) -> bytes:
    body = json.dumps(chat_body("x" * size)).encode()
    assert len(body) > size
    return body


def test_a_body_over_the_listener_buffer_gets_envoys_json_413(envoys):
    """The filter holds the body until it is whole; Envoy refuses to buffer
    more than the listener's per_connection_buffer_limit_bytes (16 MiB) and
    answers 413 itself, before the filter's own limit (64 MiB for this
    tenant) could."""
    body = big_chat_body(ENVOY_BUFFER_LIMIT + (1 << 20))
    assert ENVOY_BUFFER_LIMIT < len(body) < BIG_BODY_LIMIT
    request = ("POST /v1/chat/completions HTTP/1.1",
               [("authorization", f"Bearer {KEY}"), ("content-type", "application/json"),
                ("content-length", str(len(body)))])
    r = exchange(envoys.replies.url, *request, body)
    error = assert_envoy_error(r.status, r.headers, r.body, 413, "request_too_large", "invalid_request_error",
                               "request_payload_too_large")
    assert "Payload Too Large" in error["message"]
    plain = exchange(envoys.defaults.url, *request, body)
    assert plain.status == 413 and plain.headers.get("content-type") == "text/plain", plain


def test_a_body_under_the_buffer_but_over_the_tenants_limit_gets_the_filters_413(envoys):
    """The same status and code, from the filter: its own body, byte for byte."""
    body = big_chat_body(SMALL_BODY_LIMIT * 2)
    r = chat(envoys.replies.url, SMALL_KEY, body, headers={"content-type": "application/json"})
    assert_error(r, 413, "request_too_large")
    assert r.content == json.dumps({"type": "error", "error": {
        "message": f"request body is {len(body)} bytes; the limit is {SMALL_BODY_LIMIT} bytes",
        "type": "invalid_request_error", "param": None, "code": "request_too_large"}}, separators=(",", ":")).encode()
    assert "x-tollgate-request-id" in r.headers


# ---------------------------------------------------------------- 502


def test_a_provider_connection_cut_mid_body_gets_json_502(envoys, clean_mock):
    """The mock sends the answer's headers and half its JSON body, then
    drops the connection. The filter holds a JSON answer's headers until
    its end, so Envoy answers the broken upstream itself (envoy/README.md,
    "Differences from the Worker"): a 502, now JSON."""
    clean_mock.faults("drop_after:1", model=FIRST)
    body = chat_body(unique(EASY_PROMPT), model="tollgate/cheap", temperature=0)
    r = chat(envoys.replies.url, KEY, body)
    assert_envoy_error(r.status_code, dict(r.headers), r.content, 502, "upstream_failed", "api_error", "reset")
    assert [(m["model"], m["completed"]) for m in clean_mock.requests()] == [(FIRST, False)]
    # Envoy's default: plain text.
    clean_mock.clear_requests()
    plain = chat(envoys.defaults.url, KEY, chat_body(unique(EASY_PROMPT), model="tollgate/cheap", temperature=0))
    assert plain.status_code == 502 and plain.headers.get("content-type") == "text/plain", plain.text
    assert [(m["model"], m["completed"]) for m in clean_mock.requests()] == [(FIRST, False)]


# ---------------------------------------------------------------- left alone


def _comparable(r: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    varying = {"date", "x-tollgate-request-id"}
    return r.status_code, sorted((k, v) for k, v in r.headers.multi_items() if k not in varying), r.content


FILTER_ANSWERS = [
    # (what, method, path, key, body)
    ("health", "GET", "/healthz", None, None),
    ("models", "GET", "/v1/models", KEY, None),
    ("no key: 401", "POST", "/v1/chat/completions", None, b"{}"),
    ("not JSON: 400", "POST", "/v1/chat/completions", KEY, b"not json"),
    ("unknown endpoint: 404", "GET", "/v1/nothing-here", KEY, None),
    ("wrong method", "GET", "/v1/chat/completions", KEY, None),
    ("over the tenant's limit: 413", "POST", "/v1/chat/completions", SMALL_KEY, b"x" * (SMALL_BODY_LIMIT + 1)),
]


@pytest.mark.parametrize("what,method,path,key,body", FILTER_ANSWERS, ids=[a[0] for a in FILTER_ANSWERS])
def test_the_filters_own_answers_are_byte_identical_with_and_without_the_local_reply_config(
        envoys, what, method, path, key, body):
    def send(envoy: Envoy) -> httpx.Response:
        return httpx.request(method, envoy.url + path, content=body, headers=bearer(key) if key else {}, timeout=30)

    with_config, without = send(envoys.replies), send(envoys.defaults)
    assert "x-tollgate-request-id" in with_config.headers or what in ("health", "models"), with_config.headers
    assert with_config.headers["content-type"] == "application/json", with_config.headers
    assert _comparable(with_config) == _comparable(without)
    if with_config.status_code >= 400:
        assert with_config.json()["type"] == "error"


def test_the_route_tables_503_for_an_unrouted_request_is_left_as_it_is(envoys):
    r = httpx.post(envoys.bare.url + "/v1/chat/completions", json=chat_body(EASY_PROMPT), timeout=30)
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/json"
    assert r.content == json.dumps(FILTER_UNAVAILABLE).encode()
