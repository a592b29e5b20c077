"""The Worker with its stores unreachable.

Two more `wrangler dev` instances of the same build, each with one store
taken away (tests/e2e/wrangler/):
- degraded.toml: the TenantLedger binding points at a Worker that is never
  started (every ledger call fails, as an unreachable Durable Object does)
  and there is no cache namespace;
- no-config-store.toml: no config namespace, so API keys cannot be checked.

A fail-closed tenant must get 503 budget_store_unavailable and nothing may
reach the provider; a fail-open tenant is served, unmetered; a missing cache
is a miss; a missing key store is 503 auth_store_unavailable, never 401.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import hosts
from calls import upstream_calls
from hosts import ROOT, Mock, Worker
from prereq import started
from tenants import daily_budget, key_for, routed_tenant

WRANGLER_DIR = ROOT / "tests" / "e2e" / "wrangler"

CLOSED_KEY = key_for("e2e-degraded-closed")
OPEN_KEY = key_for("e2e-degraded-open")
UNMETERED_KEY = key_for("e2e-degraded-unmetered")
NO_CONFIG_KEY = key_for("e2e-no-config-store")

CACHE = {"doorkeeper": False}
DEGRADED_TENANTS = [
    (
        routed_tenant("e2e-degraded-closed", budgets=daily_budget(usd=50.0, store_failure="closed"), cache=CACHE),
        [CLOSED_KEY],
    ),
    (
        routed_tenant("e2e-degraded-open", budgets=daily_budget(usd=50.0, store_failure="open"), cache=CACHE),
        [OPEN_KEY],
    ),
    # No limits: nothing to reserve, so only the cache (and the outcome
    # record after the answer) touch a store.
    (routed_tenant("e2e-degraded-unmetered", cache=CACHE), [UNMETERED_KEY]),
]


def start(mock: Mock, work_dir: Path, config: str, tenants: list) -> Worker:
    return started(lambda: hosts.start_worker(mock, work_dir, tenants=tenants, config=WRANGLER_DIR / config))


@pytest.fixture(scope="module")
def degraded(mock: Mock, run_dir: Path) -> Iterator[Worker]:
    """The Worker with an unreachable ledger and no cache namespace."""
    w = start(mock, run_dir / "worker-degraded", "degraded.toml", DEGRADED_TENANTS)
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def no_config_store(mock: Mock, run_dir: Path) -> Iterator[Worker]:
    """The Worker without its config namespace (nothing can be seeded)."""
    w = start(mock, run_dir / "worker-no-config-store", "no-config-store.toml", [])
    try:
        yield w
    finally:
        w.stop()


def marker() -> str:
    return f"degraded-{uuid.uuid4().hex[:12]}"


def after_answer_work_ended(worker: Worker, tenant_id: str) -> int:
    """How many answers to `tenant_id` the Worker has finished with, by its
    log: after an answer it fills the cache, then writes the settlement and
    outcome to the tenant's ledger, which here never answers; it logs giving
    up on that write after its retries."""
    log = re.sub(r"\x1b\[[0-9;]*m", "", worker.log_text())
    return log.count(f"gave up settling for `{tenant_id}`")


def wait_for_after_answer_work(worker: Worker, tenant_id: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while after_answer_work_ended(worker, tenant_id) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the Worker did not finish with {count} answers to {tenant_id} in {timeout:.0f}s:\n"
                + hosts.log_tail(worker.dev.log, 30)
            )
        time.sleep(0.05)


def send(worker: Worker, api: str, key: str, mark: str, *, stream: bool = False) -> httpx.Response:
    """One request in `api`'s shape ("openai" or "anthropic"), cacheable
    (temperature 0), naming `mark` in its prompt."""
    body = {
        "model": "tollgate/auto",
        "temperature": 0,
        "max_tokens": 50,
        "stream": stream,
        "messages": [{"role": "user", "content": f"{mark}: what is two plus two?"}],
    }
    if api == "openai":
        path, headers = "/v1/chat/completions", {"authorization": f"Bearer {key}"}
    else:
        path, headers = "/v1/messages", {"x-api-key": key, "anthropic-version": "2023-06-01"}
    return httpx.post(worker.url + path, json=body, headers=headers, timeout=60)


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), dict(r.headers)
    body = r.json()
    err = body["error"]
    assert (err["code"], err["type"]) == (code, "api_error"), body
    assert isinstance(err["message"], str) and err["message"], body
    assert int(r.headers["retry-after"]) >= 1, dict(r.headers)
    return err


API_CASES = [("openai", False), ("openai", True), ("anthropic", False), ("anthropic", True)]
API_IDS = ["openai", "openai-stream", "anthropic", "anthropic-stream"]


# ---------------------------------------------------------------- ledger unreachable


@pytest.mark.parametrize(("api", "stream"), API_CASES, ids=API_IDS)
def test_a_fail_closed_tenant_gets_503_budget_store_unavailable_and_nothing_reaches_the_provider(
    degraded, clean_mock, api, stream
):
    mark = marker()
    r = send(degraded, api, CLOSED_KEY, mark, stream=stream)
    assert_error(r, 503, "budget_store_unavailable")
    assert r.headers["x-tollgate-request-id"].startswith("req_")
    assert upstream_calls(clean_mock, mark) == [], "a request went upstream without a budget grant"


@pytest.mark.parametrize(("api", "stream"), API_CASES, ids=API_IDS)
def test_a_fail_open_tenant_is_served_by_the_provider_unmetered_and_told_so(degraded, clean_mock, api, stream):
    mark = marker()
    r = send(degraded, api, OPEN_KEY, mark, stream=stream)
    assert r.status_code == 200, r.text
    assert "[mock:" in r.text, r.text[:300]
    assert "fail-open" in r.headers.get("x-tollgate-reasons", ""), dict(r.headers)
    assert r.headers["x-tollgate-cache"] == "miss"
    (call,) = upstream_calls(clean_mock, mark)
    assert call["stream"] is stream


def test_usage_and_feedback_answer_503_when_the_ledger_is_unreachable(degraded):
    for key in (CLOSED_KEY, OPEN_KEY):
        r = httpx.get(degraded.url + "/v1/usage", headers={"authorization": f"Bearer {key}"}, timeout=30)
        assert_error(r, 503, "budget_store_unavailable")
        fb = httpx.post(
            degraded.url + "/v1/feedback",
            json={"request_id": "req_" + uuid.uuid4().hex, "resolved": True},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert_error(fb, 503, "budget_store_unavailable")


# ---------------------------------------------------------------- cache namespace missing


def test_without_the_cache_namespace_repeated_requests_are_served_as_misses(degraded, clean_mock):
    mark = marker()
    ended = after_answer_work_ended(degraded, "e2e-degraded-unmetered")
    answers = []
    for n in range(1, 4):
        answers.append(send(degraded, "openai", UNMETERED_KEY, mark))
        # Done with this answer, cache fill attempt included, before the repeat.
        wait_for_after_answer_work(degraded, "e2e-degraded-unmetered", ended + n)
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.headers["x-tollgate-cache"] == "miss", dict(r.headers)
    assert len({r.json()["choices"][0]["message"]["content"] for r in answers}) == 1
    # Each was answered by the provider, since there is nowhere to cache.
    assert len(upstream_calls(clean_mock, mark)) == 3


# ---------------------------------------------------------------- config namespace missing


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/v1/chat/completions", {"authorization": f"Bearer {NO_CONFIG_KEY}"}),
        ("POST", "/v1/messages", {"x-api-key": NO_CONFIG_KEY, "anthropic-version": "2023-06-01"}),
        ("GET", "/v1/models", {"authorization": f"Bearer {NO_CONFIG_KEY}"}),
        ("GET", "/v1/usage", {"authorization": f"Bearer {NO_CONFIG_KEY}"}),
        ("POST", "/v1/feedback", {"authorization": f"Bearer {NO_CONFIG_KEY}"}),
    ],
    ids=["chat", "messages", "models", "usage", "feedback"],
)
def test_without_the_config_namespace_keyed_requests_get_503_auth_store_unavailable_not_401(
    no_config_store, clean_mock, method, path, headers
):
    mark = marker()
    if path == "/v1/feedback":
        body = {"request_id": "req_" + uuid.uuid4().hex, "resolved": True}
    else:
        body = {"model": "tollgate/auto", "max_tokens": 20, "messages": [{"role": "user", "content": mark}]}
    kwargs = {"json": body} if method == "POST" else {}
    r = httpx.request(method, no_config_store.url + path, headers=headers, timeout=30, **kwargs)
    assert_error(r, 503, "auth_store_unavailable")
    assert upstream_calls(clean_mock, mark) == []


def test_without_the_config_namespace_a_request_with_no_key_is_still_401(no_config_store):
    r = httpx.get(no_config_store.url + "/v1/models", timeout=30)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_healthz_is_200_while_the_stores_are_unreachable(degraded, no_config_store):
    for w in (degraded, no_config_store):
        r = httpx.get(w.url + "/healthz", timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ok"
