"""Cooldowns (`routing.cooldown`, docs/config.md), on both hosts: a model
that failed `failures` times in a row is passed over for `seconds` in every
chain, and a 429's `retry-after` is honoured; the skipped model is named in
`x-tollgate-reasons` and counted in `x-tollgate-fallbacks`, and on Envoy in
`tollgate_cooldown_skips` / `tollgate_cooldowns_started`.

The table is per host instance: a Worker isolate, an Envoy wasm VM (one per
worker thread). So each test sends its requests over one keep-alive
connection, which Envoy keeps on one worker thread, and the counts are
exact. The tenant (tenants.COOLDOWN) takes 3 failures and 4 s; the host's
clock is read in whole seconds, so a cooldown can end up to a second early.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

import tenants
from calls import EASY_PROMPT, TIMEOUT, bearer, chat_body, messages_body, unique
from hosts import Mock

KEY = tenants.COOLDOWN_KEY
FIRST, SECOND = (m.split("/", 1)[1] for m in tenants.COOLDOWN_OPENAI)
FIRST_ANTHROPIC, SECOND_ANTHROPIC = (m.split("/", 1)[1] for m in tenants.COOLDOWN_ANTHROPIC)
FAILURES = tenants.COOLDOWN["routing"]["cooldown"]["failures"]
SECONDS = tenants.COOLDOWN["routing"]["cooldown"]["seconds"]
# How long to wait out a cooldown on the kept-alive connection. Not 5 s:
# wrangler dev's runtime closes a connection idle for 5 s, and a request sent
# at that moment is lost (tests/e2e/devproxy.py); after 5.75 s the client
# sees the connection closed and opens another.
WAIT_OUT = SECONDS + 1.75


@pytest.fixture
def client(router) -> Iterator[httpx.Client]:
    """One keep-alive connection: one isolate, one Envoy worker thread."""
    # httpx drops an idle connection after 5 s by default: keep it across the sleeps.
    limits = httpx.Limits(max_connections=1, keepalive_expiry=120)
    with httpx.Client(base_url=router.url, timeout=TIMEOUT, headers=bearer(KEY), limits=limits) as c:
        yield c


def ask(client: httpx.Client) -> httpx.Response:
    r = client.post("/v1/chat/completions", json=chat_body(unique(EASY_PROMPT)))
    assert r.status_code == 200, r.text
    return r


def ask_anthropic(client: httpx.Client) -> httpx.Response:
    r = client.post("/v1/messages", json=messages_body(unique(EASY_PROMPT)), headers={"x-api-key": KEY})
    assert r.status_code == 200, r.text
    return r


def models_called(mock: Mock) -> list[str | None]:
    return [r["model"] for r in mock.requests()]


def skipped(r: httpx.Response, model: str) -> bool:
    return f"cooldown:{model}" in r.headers.get("x-tollgate-reasons", "")


def prometheus_counter(router, name: str, model: str) -> float:
    """A tollgate counter's value on the Envoy of `router` (0 when absent)."""
    label = re.sub(r"[^A-Za-z0-9_-]", "_", model)
    pattern = re.compile(rf'^{name}\{{model="{re.escape(label)}"\}} (\S+)$', re.M)
    found = pattern.search(router.host.prometheus())
    return float(found.group(1)) if found else 0.0


def test_a_failing_model_is_passed_over_after_the_threshold_and_tried_again_after_the_cooldown(
    router, clean_mock, client
):
    skips_before = started_before = 0.0
    if router.name == "envoy":
        skips_before = prometheus_counter(router, "tollgate_cooldown_skips", FIRST)
        started_before = prometheus_counter(router, "tollgate_cooldowns_started", FIRST)
    clean_mock.faults("status:503", model=FIRST, times=20)

    answers = []
    tried_at = []  # when each request that still tried FIRST was sent
    for i in range(20):
        sent = time.monotonic()
        r = ask(client)
        answers.append(r)
        assert r.headers["x-tollgate-model"] == f"openai/{SECOND}", f"request {i}"
        assert r.headers["x-tollgate-fallbacks"] == "1", f"request {i}: failed or passed over, FIRST counts"
        if not skipped(r, f"openai/{FIRST}"):
            tried_at.append(sent)
    assert not any(skipped(r, f"openai/{FIRST}") for r in answers[:FAILURES]), "below the threshold: tried"
    assert all(skipped(r, f"openai/{FIRST}") for r in answers[FAILURES : FAILURES + 3]), [
        r.headers.get("x-tollgate-reasons") for r in answers
    ]
    # Once cooling, FIRST is tried again only when its cooldown has run out
    # (a slow host may get there within the 20 requests).
    for earlier, later in zip(tried_at[FAILURES - 1 :], tried_at[FAILURES:]):
        assert later - earlier >= SECONDS - 1.5, tried_at
    calls = models_called(clean_mock)
    assert calls.count(FIRST) == len(tried_at), calls
    assert calls.count(SECOND) == 20
    assert calls[: 2 * FAILURES] == [FIRST, SECOND] * FAILURES
    assert calls[2 * FAILURES : 2 * FAILURES + 3] == [SECOND] * 3, "straight to the second model"

    # After the cooldown FIRST is tried again; it still fails, which cools it at once.
    time.sleep(WAIT_OUT)
    clean_mock.clear_requests()
    again = ask(client)
    assert not skipped(again, f"openai/{FIRST}")
    assert models_called(clean_mock) == [FIRST, SECOND]
    assert skipped(ask(client), f"openai/{FIRST}")
    assert models_called(clean_mock) == [FIRST, SECOND, SECOND]

    # It recovers: the next try answers, and it stays first.
    clean_mock.clear_faults()
    time.sleep(WAIT_OUT)
    clean_mock.clear_requests()
    for _ in range(2):
        r = ask(client)
        assert r.headers["x-tollgate-model"] == f"openai/{FIRST}"
        assert "x-tollgate-fallbacks" not in r.headers
        assert not skipped(r, f"openai/{FIRST}")
    assert models_called(clean_mock) == [FIRST, FIRST]

    if router.name == "envoy":
        skips = sum(skipped(r, f"openai/{FIRST}") for r in answers) + 1
        assert prometheus_counter(router, "tollgate_cooldown_skips", FIRST) - skips_before == skips
        # The third failure, each failed retry after a cooldown within the
        # 20 requests, and the failed retry after the sleep.
        started = len(tried_at) - FAILURES + 1 + 1
        assert prometheus_counter(router, "tollgate_cooldowns_started", FIRST) - started_before == started


def test_a_429_with_retry_after_cools_the_model_until_then(router, clean_mock, client):
    # One failure is below the threshold, but the provider said when to come back.
    retry_after = 3
    clean_mock.faults(f"status:429,retry_after:{retry_after}", model=FIRST_ANTHROPIC, times=1)
    first = ask_anthropic(client)
    assert first.headers["x-tollgate-model"] == f"anthropic/{SECOND_ANTHROPIC}"
    assert not skipped(first, f"anthropic/{FIRST_ANTHROPIC}")
    second = ask_anthropic(client)
    assert skipped(second, f"anthropic/{FIRST_ANTHROPIC}"), second.headers.get("x-tollgate-reasons")
    assert second.headers["x-tollgate-fallbacks"] == "1"
    assert models_called(clean_mock) == [FIRST_ANTHROPIC, SECOND_ANTHROPIC, SECOND_ANTHROPIC]

    time.sleep(retry_after + 1)
    clean_mock.clear_requests()
    third = ask_anthropic(client)
    assert third.headers["x-tollgate-model"] == f"anthropic/{FIRST_ANTHROPIC}", "tried again when retry-after says"
    assert not skipped(third, f"anthropic/{FIRST_ANTHROPIC}")
    assert models_called(clean_mock) == [FIRST_ANTHROPIC]
