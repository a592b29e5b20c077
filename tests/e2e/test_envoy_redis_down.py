"""Cluster-wide budgets with the store gone (envoy/README.md, "Redis"):
Envoy with `state.budgets: "redis"`, then Redis stopped behind a running
webdis, or webdis itself stopped. A fail-closed tenant (the default,
`budgets.store_failure: "closed"`) gets 503 budget_store_unavailable and
nothing reaches the provider; a fail-open tenant is served, unmetered.
These tenants reserve `per_request`; a leased tenant (docs/config.md,
"Leases") first spends the lease it holds, then fails the same way once
the lease has expired.

One Redis, webdis and Envoy with everything up; one more for each part
that is then taken away.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import hosts
from calls import assert_error, bearer, settled_usage, upstream_calls
from hosts import Envoy, Mock, Redis, Webdis
from tenants import daily_budget, key_for, routed_tenant

CLOSED_KEY = key_for("e2e-redis-closed")
OPEN_KEY = key_for("e2e-redis-open")
LEASED_KEY = key_for("e2e-redis-leased")
LEASE_TTL = 10
TENANTS = [
    (routed_tenant("e2e-redis-closed", budgets=daily_budget(usd=50.0, store_failure="closed",
                                                            consistency="per_request"),
                   cache={"enabled": False}), [CLOSED_KEY]),
    (routed_tenant("e2e-redis-open", budgets=daily_budget(usd=50.0, store_failure="open", consistency="per_request"),
                   cache={"enabled": False}), [OPEN_KEY]),
    (routed_tenant("e2e-redis-leased", budgets=daily_budget(usd=50.0, store_failure="closed",
                                                            lease={"ttl_seconds": LEASE_TTL}),
                   cache={"enabled": False}), [LEASED_KEY]),
]
STATE = {"budgets": "redis", "cache": "off", "redis": {"cluster": "webdis", "timeout_ms": 300}}


@dataclass
class Stack:
    redis: Redis
    webdis: Webdis
    envoy: Envoy


def start_stack(mock: Mock, work: Path, *, concurrency: int = 2) -> Stack:
    parts: list = []
    problem = None
    try:
        redis = Redis.start(work)
        parts.append(redis)
        webdis = Webdis.start(redis, work)
        parts.append(webdis)
        envoy = hosts.start_envoy(mock, work, name="envoy-redis-down", tenants=TENANTS, state=STATE, webdis=webdis,
                                  concurrency=concurrency)
        return Stack(redis=redis, webdis=webdis, envoy=envoy)
    except hosts.Missing as e:
        problem = str(e)
    finally:
        if problem:
            for p in reversed(parts):
                p.stop()
    pytest.fail(f"end-to-end prerequisite missing: {problem}", pytrace=False)


def stop_stack(stack: Stack) -> None:
    for p in (stack.envoy, stack.webdis, stack.redis):
        p.stop()


@pytest.fixture(scope="module")
def stack(mock: Mock, run_dir: Path) -> Iterator[Stack]:
    """Everything up."""
    s = start_stack(mock, run_dir / "redis-up")
    try:
        yield s
    finally:
        stop_stack(s)


@pytest.fixture(scope="module", params=["redis", "webdis"], ids=["redis-down", "webdis-down"])
def broken(request, mock: Mock, run_dir: Path) -> Iterator[Stack]:
    """A stack that served one metered request per tenant, then lost Redis
    (webdis answers 503) or webdis (Envoy cannot connect)."""
    s = start_stack(mock, run_dir / f"{request.param}-down")
    try:
        for key in (CLOSED_KEY, OPEN_KEY):
            _, warm = send(s.envoy, key)
            assert warm.status_code == 200, warm.text
            settled_usage(s.envoy.url, key)
        (s.redis if request.param == "redis" else s.webdis).stop()
        yield s
    finally:
        stop_stack(s)


def send(envoy: Envoy, key: str, *, stream: bool = False, anthropic: bool = False) -> tuple[str, httpx.Response]:
    mark = f"redis-down-{uuid.uuid4().hex[:12]}"
    body = {"model": "tollgate/auto", "max_tokens": 40, "stream": stream,
            "messages": [{"role": "user", "content": f"{mark}: what is two plus two?"}]}
    if anthropic:
        r = httpx.post(envoy.url + "/v1/messages", json=body,
                       headers={"x-api-key": key, "anthropic-version": "2023-06-01"}, timeout=60)
    else:
        r = httpx.post(envoy.url + "/v1/chat/completions", json=body, headers=bearer(key), timeout=60)
    return mark, r


def assert_store_unavailable(r: httpx.Response) -> None:
    error = assert_error(r, 503, "budget_store_unavailable")
    assert error["type"] == "api_error", error
    assert int(r.headers["retry-after"]) >= 1, dict(r.headers)
    assert r.headers["x-tollgate-request-id"].startswith("req_")


def test_with_redis_up_both_tenants_are_served_and_metered(stack, clean_mock):
    for key in (CLOSED_KEY, OPEN_KEY):
        _, r = send(stack.envoy, key)
        assert r.status_code == 200, r.text
        spent = settled_usage(stack.envoy.url, key)["budgets"][0]["spent_tokens"]
        assert spent == r.json()["usage"]["total_tokens"]
    assert sorted(stack.redis.keys("tollgate:budget:*")) == ["tollgate:budget:e2e-redis-closed",
                                                              "tollgate:budget:e2e-redis-open"]


@pytest.mark.parametrize(("api", "stream"), [("openai", False), ("openai", True), ("anthropic", False)],
                         ids=["openai", "openai-stream", "anthropic"])
def test_a_fail_closed_tenant_gets_503_budget_store_unavailable_and_nothing_reaches_the_provider(
    broken, clean_mock, api, stream
):
    mark, r = send(broken.envoy, CLOSED_KEY, stream=stream, anthropic=api == "anthropic")
    assert_store_unavailable(r)
    assert upstream_calls(clean_mock, mark) == [], "a request went upstream without a budget grant"


def test_a_fail_open_tenant_is_served_unmetered_while_the_store_is_down(broken, clean_mock):
    mark, r = send(broken.envoy, OPEN_KEY)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].startswith("[mock:")
    assert len(upstream_calls(clean_mock, mark)) == 1
    # docs/config.md, store_failure: "open serves the request unmetered and says so in x-tollgate-reasons".
    assert "fail-open" in r.headers.get("x-tollgate-reasons", ""), dict(r.headers)
    # The closed tenant, on the same Envoy at the same moment, is refused.
    mark, closed = send(broken.envoy, CLOSED_KEY)
    assert_store_unavailable(closed)
    assert upstream_calls(clean_mock, mark) == []


def test_usage_says_the_store_is_unavailable_rather_than_reporting_zero_spend(broken):
    for key in (CLOSED_KEY, OPEN_KEY):
        report = httpx.get(broken.envoy.url + "/v1/usage", headers=bearer(key), timeout=30)
        assert_store_unavailable(report)


def test_a_leased_tenant_spends_its_lease_while_the_store_is_down_then_gets_503_once_it_expires(
    mock: Mock, run_dir: Path, clean_mock
):
    # One worker thread, so the lease taken by the first request is the one
    # every later request finds.
    s = start_stack(mock, run_dir / "leased-redis-down", concurrency=1)
    try:
        with httpx.Client(timeout=60) as client:
            def one() -> tuple[str, httpx.Response]:
                mark = f"redis-down-{uuid.uuid4().hex[:12]}"
                body = {"model": "tollgate/auto", "max_tokens": 40,
                        "messages": [{"role": "user", "content": f"{mark}: what is two plus two?"}]}
                return mark, client.post(s.envoy.url + "/v1/chat/completions", json=body, headers=bearer(LEASED_KEY))

            _, warm = one()
            assert warm.status_code == 200, warm.text  # reserved at Redis, with a lease taken alongside
            s.redis.stop()
            down_at = time.monotonic()
            outcomes = []
            while time.monotonic() - down_at < LEASE_TTL + 5:
                mark, r = one()
                outcomes.append((round(time.monotonic() - down_at, 1), r.status_code))
                if r.status_code == 503:
                    assert_store_unavailable(r)
                    assert upstream_calls(clean_mock, mark) == [], "a request went upstream without a budget grant"
                else:
                    assert r.status_code == 200, r.text
                    assert "fail-open" not in r.headers.get("x-tollgate-reasons", ""), "served from the lease, metered"
                time.sleep(0.4)
    finally:
        stop_stack(s)
    statuses = [status for _, status in outcomes]
    assert statuses[0] == 200, f"the lease should serve while the store is down: {outcomes}"
    assert 503 in statuses, f"still served {LEASE_TTL + 5} s after the store went down: {outcomes}"
    first_refusal = statuses.index(503)
    assert set(statuses[first_refusal:]) == {503}, f"served again after the lease ran out: {outcomes}"
    assert outcomes[first_refusal][0] <= LEASE_TTL + 1, f"refused later than the lease could live: {outcomes}"
