"""Requests the end-to-end tests send to the Worker, and checks on what
comes back: chat bodies, SSE parsing, the error shape, /v1/usage polling."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable

import httpx

REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")

# Scored by the default classifier (`tollgate classify`): well under and
# well over the 0.5 boundary of the test tenants' cheap tier.
EASY_PROMPT = "What is the capital of France?"
HARD_PROMPT = (
    "Prove that there are infinitely many primes, step by step, then write a Rust function implementing the "
    "Sieve of Eratosthenes with O(n log log n) complexity and compare it with a segmented sieve. Design a "
    "distributed architecture for computing primes across 100 machines, analyze the trade-offs, and derive "
    "the communication complexity."
)

# Decision headers every routed answer carries (README, "Decision headers").
ROUTED_HEADERS = ("x-tollgate-request-id", "x-tollgate-route", "x-tollgate-score", "x-tollgate-model")

# The Worker writes a cache entry after the client has its answer
# (ctx.waitUntil); a repeat sent sooner may legitimately miss.
CACHE_FILL_GRACE = 0.3

TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def unique(text: str) -> str:
    """`text` with a nonce, so no other test (or earlier run) has sent it:
    cache entries and doorkeeper sightings are per prompt."""
    return f"{text} [{uuid.uuid4().hex[:12]}]"


def chat_body(prompt: str, *, model: str = "tollgate/auto", **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **fields}


def messages_body(prompt: str, *, model: str = "tollgate/auto", max_tokens: int = 256, **fields) -> dict:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}], **fields}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(url: str, key: str | None, body: dict | bytes, headers: dict | None = None) -> httpx.Response:
    """POST /v1/chat/completions (non-streamed, or a stream read to the end)."""
    return _post(url + "/v1/chat/completions", key, body, headers, bearer_auth=True)


def messages(url: str, key: str | None, body: dict | bytes, headers: dict | None = None) -> httpx.Response:
    """POST /v1/messages with the key as `x-api-key`, as Anthropic SDKs send it."""
    return _post(url + "/v1/messages", key, body, headers, bearer_auth=False)


def _post(url: str, key: str | None, body: dict | bytes, headers: dict | None, *, bearer_auth: bool) -> httpx.Response:
    h: dict[str, str] = {}
    if key is not None:
        h.update(bearer(key) if bearer_auth else {"x-api-key": key})
    h.update(headers or {})
    if isinstance(body, bytes):
        return httpx.post(url, content=body, headers=h, timeout=TIMEOUT)
    return httpx.post(url, json=body, headers=h, timeout=TIMEOUT)


def content_of(response: httpx.Response) -> str:
    """The answer text of a JSON response, OpenAI or Anthropic shaped."""
    body = response.json()
    if "choices" in body:
        return body["choices"][0]["message"]["content"]
    return "".join(block.get("text", "") for block in body["content"])


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) per SSE event, in order."""
    events = []
    for block in re.split(r"\r?\n\r?\n", text):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            events.append((name, "\n".join(data)))
    return events


def openai_stream_text(text: str) -> str:
    """The content an OpenAI SSE body assembles to."""
    out = []
    for _, data in sse_events(text):
        if data == "[DONE]":
            continue
        for choice in json.loads(data).get("choices", []):
            out.append(choice.get("delta", {}).get("content") or "")
    return "".join(out)


def anthropic_stream_text(text: str) -> str:
    out = []
    for _, data in sse_events(text):
        event = json.loads(data)
        if event.get("type") == "content_block_delta":
            out.append(event["delta"].get("text", ""))
    return "".join(out)


def assert_error(response: httpx.Response, status: int, code: str, *, param: object = ...) -> dict:
    """`response` is the documented error: `status`, and the body both SDKs
    parse, `{"type":"error","error":{"message","type","param","code"}}`."""
    assert response.status_code == status, f"{response.status_code} {response.text[:500]}"
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert body.get("type") == "error", body
    error = body.get("error")
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, body
    assert error["code"] == code, body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    if param is not ...:
        assert error["param"] == param, body
    return error


def assert_routed_headers(response: httpx.Response) -> None:
    """The decision headers of an answer that went through routing."""
    for name in ROUTED_HEADERS:
        assert name in response.headers, f"{name} missing: {dict(response.headers)}"
    assert REQUEST_ID.match(response.headers["x-tollgate-request-id"]), response.headers["x-tollgate-request-id"]
    assert response.headers["x-tollgate-route"] in ("auto", "tier", "pinned")
    score = float(response.headers["x-tollgate-score"])
    assert 0.0 <= score <= 1.0


def usage(url: str, key: str) -> dict:
    r = httpx.get(url + "/v1/usage", headers=bearer(key), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def reserved(report: dict) -> list[tuple[int, str]]:
    return [(b["reserved_tokens"], b["reserved_usd"]) for b in report["budgets"]]


def spent(report: dict) -> list[tuple[int, str]]:
    return [(b["spent_tokens"], b["spent_usd"]) for b in report["budgets"]]


def settled_usage(url: str, key: str, *, timeout: float = 10.0) -> dict:
    """/v1/usage once no budget holds a reservation. The Worker settles after
    the client has its answer, so a report read at once may still show the
    hold; a hold that stays past `timeout` fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        report = usage(url, key)
        if all(tokens == 0 and usd == "0.000000" for tokens, usd in reserved(report)):
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"a reservation is still held after {timeout}s: {report['budgets']}")
        time.sleep(0.1)


def models_called(records: Iterable[dict]) -> list[str | None]:
    return [r["model"] for r in records]


def leaked(records: Iterable[dict], secret: str) -> list[str]:
    """Where `secret` appears in recorded upstream requests (headers or body)."""
    found = []
    for r in records:
        for name, value in r["headers"].items():
            if secret in value or secret in name:
                found.append(f"seq {r['seq']} header {name}")
        if secret in json.dumps(r["body"]):
            found.append(f"seq {r['seq']} body")
    return found
