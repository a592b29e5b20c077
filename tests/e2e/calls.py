"""Requests the end-to-end tests send to the Worker, and checks on what
comes back: chat bodies, SSE parsing, the error shape, prices, /v1/usage
polling and the barrier that waits for what the Worker does after an answer."""

from __future__ import annotations

import json
import math
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

# (input, output) list prices, in micro-dollars per million tokens, of the
# OpenAI and Anthropic models in the test tenants' chains, as the providers
# publish them (https://openai.com/api/pricing/ and
# https://www.anthropic.com/pricing#api; e.g. gpt-4o $2.50 in, $10 out per
# million tokens). tollgate-core's built-in table holds the same figures
# (crates/tollgate-core/src/pricing.rs, checked as of PRICES_AS_OF), and no
# test tenant overrides a price, so the Worker must charge exactly these.
PRICES: dict[str, tuple[int, int]] = {
    "gpt-4o": (2_500_000, 10_000_000),
    "gpt-4o-mini": (150_000, 600_000),
    "gpt-4.1": (2_000_000, 8_000_000),
    "gpt-4.1-nano": (100_000, 400_000),
    "claude-sonnet-4-5": (3_000_000, 15_000_000),
    "claude-3-7-sonnet-latest": (3_000_000, 15_000_000),
    "claude-3-5-haiku-latest": (800_000, 4_000_000),
    "claude-3-haiku-20240307": (250_000, 1_250_000),
}

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


def micros(usd: str) -> int:
    """A dollar string as tollgate writes it ("0.001250") as integer micro-dollars, exactly."""
    whole, _, frac = usd.partition(".")
    assert len(frac) == 6, usd
    return int(whole) * 1_000_000 + int(frac)


def cost_micros(model: str, input_tokens: int, output_tokens: int) -> int:
    """What tollgate charges for this usage of `model` (bare id, e.g.
    "gpt-4o"): list price, rounded up once to the micro-dollar."""
    input_price, output_price = PRICES[model]
    return math.ceil((input_tokens * input_price + output_tokens * output_price) / 1_000_000)


def usage(url: str, key: str, query: str = "") -> dict:
    """GET /v1/usage (with `query`, e.g. "?group_by=tag") with the tenant's key, as read right now."""
    r = httpx.get(url + "/v1/usage" + query, headers=bearer(key), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def reserved(report: dict) -> list[tuple[int, str]]:
    return [(b["reserved_tokens"], b["reserved_usd"]) for b in report["budgets"]]


def spent(report: dict) -> list[tuple[int, str]]:
    return [(b["spent_tokens"], b["spent_usd"]) for b in report["budgets"]]


def nothing_reserved(report: dict) -> bool:
    return all(tokens == 0 and micros(usd) == 0 for tokens, usd in reserved(report))


def requests_recorded(report: dict) -> int:
    """Requests the tenant's outcome ledger has recorded, over all tiers:
    every answered request (cache hits included); refusals are not."""
    return sum(t["requests"] for t in report["resolution"]["tiers"])


def _poll_usage(url: str, key: str, done, timeout: float, waiting_for: str, query: str = "") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        report = usage(url, key, query)
        if done(report):
            return report
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{waiting_for}, still not so after {timeout:.1f}s: budgets {report['budgets']}, "
                f"requests recorded {requests_recorded(report)}"
            )
        time.sleep(0.05)


def settled_usage(url: str, key: str, *, timeout: float = 10.0, query: str = "") -> dict:
    """/v1/usage once no budget holds a reservation. The Worker settles after
    the client has its answer, so a report read at once may still show the
    hold; a hold that stays past `timeout` fails the test."""
    return _poll_usage(url, key, nothing_reserved, timeout, "waiting for every reservation to be settled", query=query)


def nothing_reserved_or_leased(report: dict) -> bool:
    return nothing_reserved(report) and all(micros(b.get("leased_usd", "0")) == 0 for b in report["budgets"])


def settled_and_returned(url: str, key: str, *, timeout: float = 30.0, query: str = "") -> dict:
    """/v1/usage once no request holds budget and every host instance has
    handed its lease back. A lease's settled spend reaches the writer in
    batches (by count, by time, at renewal and return), so only then does
    the ledger's spend equal the sum of what was charged."""
    waiting_for = "waiting for every reservation settled and every lease returned"
    return _poll_usage(url, key, nothing_reserved_or_leased, timeout, waiting_for, query=query)


def wait_until_recorded(url: str, key: str, total: int, *, timeout: float = 20.0) -> dict:
    """/v1/usage once the tenant's ledger has recorded `total` requests and
    holds no reservation: the barrier for what the Worker does after an answer.

    After answering, the Worker first fills the cache (awaited), then writes
    the settlement and the outcome record to the tenant's ledger. So once a
    request is counted here, its cache entry, if it was given one, is in KV: a
    repeat sent now must hit, and an answer not stored by now never will be.
    `total` is the count before the test's requests (read once nothing was
    reserved, as `Recorded` does) plus the answers they got. More than
    `total` fails: the ledger recorded a request that was not sent (or a
    previous test's record landed after that count was read)."""
    report = _poll_usage(
        url,
        key,
        lambda r: requests_recorded(r) >= total and nothing_reserved(r),
        timeout,
        f"waiting for {total} recorded requests and no reservation",
    )
    assert requests_recorded(report) == total, f"{requests_recorded(report)} requests recorded, {total} expected"
    return report


class Recorded:
    """One tenant's recorded-request count during a test, for
    `wait_until_recorded`: read once nothing is reserved, then moved on by the
    answers the test gets.

        ledger = Recorded(worker.url, key)
        first = chat(worker.url, key, body)
        ledger.wait_for(1)  # recorded, so its cache fill (if any) has landed
        second = chat(worker.url, key, body)
    """

    def __init__(self, url: str, key: str):
        self.url, self.key = url, key
        # /v1/usage before the test's requests.
        self.start = settled_usage(url, key)
        self.total = requests_recorded(self.start)

    def wait_for(self, answers: int = 1) -> dict:
        """Wait until the `answers` answered since the last call are recorded;
        the /v1/usage report then."""
        self.total += answers
        return wait_until_recorded(self.url, self.key, self.total)


def replayed_usage(mock, record: dict) -> dict:
    """The usage of the full answer to a request the mock recorded, asked of
    the mock directly and not streamed (it answers the same body the same
    way): what a streamed answer the test could not read whole would report."""
    body = dict(record["body"], stream=False)
    body.pop("stream_options", None)
    r = httpx.post(mock.url + record["path"], json=body, headers={"x-api-key": "sk-mock"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def upstream_calls(mock, marker: str) -> list[dict]:
    """The mock's records of the requests whose body contains `marker` (a
    test's unique prompt), oldest first."""
    return [r for r in mock.requests() if marker in json.dumps(r["body"])]


def upstream_end(mock, marker: str, timeout: float = 30.0) -> dict:
    """The mock's record of the one request naming `marker`, once its
    response has ended: completed, or cut off by the caller (the Worker)
    going away."""
    deadline = time.monotonic() + timeout
    while True:
        records = upstream_calls(mock, marker)
        assert len(records) == 1, records
        if records[0]["completed"] or records[0]["client_aborted"]:
            return records[0]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the upstream response neither completed nor was aborted in {timeout:.0f}s: {records[0]}"
            )
        time.sleep(0.05)


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
