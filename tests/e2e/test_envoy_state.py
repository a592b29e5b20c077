"""State the filter shares beyond one request, in real Envoy (envoy/README.md,
"State"):

- node-local (the default): budgets, the outcome ledger and the cache live
  in proxy-wasm shared data, so every worker thread of one Envoy sees the
  same ones, and concurrent threads never overspend a budget;
- cluster-wide: with `state.budgets: "redis"` two Envoys share one budget
  (and with `state.cache: "redis"` one cache) in Redis through webdis, and
  concurrent load across both never spends past the limit.

Which worker thread serves a request is the kernel's choice per
connection; `Pinned` finds one keep-alive connection on each thread (by
Envoy's per-worker listener counters) so a test can send the second request
to the other thread on purpose.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import hosts
import tenants as registry
from calls import (
    EASY_PROMPT,
    bearer,
    chat_body,
    cost_micros,
    micros,
    requests_recorded,
    settled_and_returned,
    settled_usage,
    unique,
    upstream_calls,
    usage,
)
from hosts import Envoy, Mock, RedisEnvoys
from prereq import running
from tenants import key_for, single_tier_tenant, strict_daily

CACHE_KEY = registry.CACHE_A_KEY  # doorkeeper off, metered
DOORKEEPER_KEY = registry.CACHE_DOORKEEPER_KEY  # doorkeeper on
FEEDBACK_KEY = registry.FEEDBACK_A_KEY


class Pinned:
    """One keep-alive connection to Envoy, known to be on worker thread `worker`."""

    def __init__(self, envoy: Envoy, client: httpx.Client, worker: str):
        self.envoy, self.client, self.worker = envoy, client, worker

    def post(self, path: str, key: str, body: dict) -> httpx.Response:
        before = self.envoy.worker_connections()
        r = self.client.post(path, json=body, headers=bearer(key))
        after = self.envoy.worker_connections()
        assert after == before, f"the request opened a new connection ({before} -> {after}): no longer pinned"
        return r

    def close(self) -> None:
        self.client.close()


def pinned_to_each_worker(envoy: Envoy, tries: int = 60) -> list[Pinned]:
    """A connection on each of Envoy's worker threads (the suite runs --concurrency 2)."""
    found: dict[str, Pinned] = {}
    for _ in range(tries):
        before = envoy.worker_connections()
        client = httpx.Client(base_url=envoy.url, timeout=60,
                              limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        client.get("/healthz").raise_for_status()
        after = envoy.worker_connections()
        grown = [w for w in after if after[w] != before.get(w, 0)]
        if len(grown) == 1 and grown[0] not in found:
            found[grown[0]] = Pinned(envoy, client, grown[0])
            if len(found) == 2:
                return list(found.values())
        else:
            client.close()
    for p in found.values():
        p.close()
    raise AssertionError(f"{tries} connections never reached two worker threads: {envoy.worker_connections()}")


@pytest.fixture
def threads(envoy: Envoy) -> Iterator[list[Pinned]]:
    pair = pinned_to_each_worker(envoy)
    try:
        yield pair
    finally:
        for p in pair:
            p.close()


def wait_recorded(url: str, key: str, total: int, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        report = usage(url, key)
        if requests_recorded(report) >= total:
            return report
        assert time.monotonic() < deadline, f"{requests_recorded(report)} requests recorded, waiting for {total}"
        time.sleep(0.05)


# ---------------------------------------------------------------- node-local, across worker threads


def test_an_answer_cached_on_one_worker_thread_is_a_hit_on_the_other(envoy, clean_mock, threads):
    first, other = threads
    body = chat_body(unique(EASY_PROMPT), temperature=0)
    recorded = requests_recorded(settled_usage(envoy.url, CACHE_KEY))
    miss = first.post("/v1/chat/completions", CACHE_KEY, body)
    assert miss.status_code == 200 and miss.headers["x-tollgate-cache"] == "miss", miss.text
    wait_recorded(envoy.url, CACHE_KEY, recorded + 1)
    hit = other.post("/v1/chat/completions", CACHE_KEY, body)
    assert hit.status_code == 200, hit.text
    assert hit.headers["x-tollgate-cache"] == "hit", f"{first.worker} stored it, {other.worker} did not see it"
    assert hit.json()["choices"] == miss.json()["choices"]
    assert len(clean_mock.requests()) == 1


def test_the_doorkeeper_counts_sightings_on_every_worker_thread(envoy, clean_mock, threads):
    """The doorkeeper stores an answer on its second sighting: the second
    sighting counts even when another thread had the first."""
    first, other = threads
    body = chat_body(unique(EASY_PROMPT), temperature=0)
    recorded = requests_recorded(settled_usage(envoy.url, DOORKEEPER_KEY))
    outcomes = []
    for n, thread in enumerate([first, other, first, other], start=1):
        r = thread.post("/v1/chat/completions", DOORKEEPER_KEY, body)
        assert r.status_code == 200, r.text
        outcomes.append((thread.worker, r.headers["x-tollgate-cache"]))
        wait_recorded(envoy.url, DOORKEEPER_KEY, recorded + n)
    assert [o for _, o in outcomes] == ["miss", "miss", "hit", "hit"], outcomes
    assert len(clean_mock.requests()) == 2


def test_feedback_and_usage_reach_the_same_ledger_from_either_worker_thread(envoy, clean_mock, threads):
    first, other = threads
    before = settled_usage(envoy.url, FEEDBACK_KEY)
    r = first.post("/v1/chat/completions", FEEDBACK_KEY, chat_body(unique(EASY_PROMPT), model="tollgate/cheap"))
    assert r.status_code == 200, r.text
    rid = r.headers["x-tollgate-request-id"]
    after = wait_recorded(envoy.url, FEEDBACK_KEY, requests_recorded(before) + 1)
    spent = micros(after["budgets"][0]["spent_usd"]) - micros(before["budgets"][0]["spent_usd"])
    answered = r.json()
    assert spent == cost_micros(answered["model"], answered["usage"]["prompt_tokens"],
                                answered["usage"]["completion_tokens"])
    fb = other.post("/v1/feedback", FEEDBACK_KEY, {"request_id": rid, "resolved": True})
    assert fb.status_code == 200, f"{other.worker} does not know a request {first.worker} answered: {fb.text}"
    assert fb.json()["tier"] == "cheap"


# ---------------------------------------------------------------- budget races

CONCURRENCY = 200
MAX_TOKENS = 60
UPSTREAM_DELAY_MS = 1500
RACE_MODEL = "gpt-4o"


async def fire(urls: list[str], key: str, bodies: list[dict]) -> list[tuple[str, httpx.Response]]:
    """Send every body at once, each on its own connection, to the urls in
    turn; (url, answer) per body."""
    limits = httpx.Limits(max_connections=len(bodies) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        start = asyncio.Event()

        async def one(url: str, body: dict) -> tuple[str, httpx.Response]:
            await start.wait()
            return url, await client.post(url + "/v1/chat/completions", json=body, headers=bearer(key))

        tasks = [asyncio.create_task(one(urls[i % len(urls)], b)) for i, b in enumerate(bodies)]
        await asyncio.sleep(0)
        start.set()
        return await asyncio.gather(*tasks)


def race(mock: Mock, urls: list[str], key: str, limit_usd: float) -> dict:
    """200 requests at once against a daily limit of `limit_usd` (fits about
    a third of their reservations); checks the promise and returns, per url,
    how many were served and how many refused."""
    before = settled_usage(urls[0], key, timeout=30)
    (window,) = before["budgets"]
    assert window["spent_tokens"] == 0 and micros(window["spent_usd"]) == 0, f"the race tenant must start unspent: {before}"
    marker = f"envoy-race-{uuid.uuid4().hex[:12]}"
    bodies = [
        {"model": "tollgate/auto", "max_tokens": MAX_TOKENS, "temperature": 0,
         "messages": [{"role": "user", "content": f"{marker} #{i}: name one fact about harbour number {i}."}]}
        for i in range(CONCURRENCY)
    ]
    mock.faults(f"slow:{UPSTREAM_DELAY_MS}", model=RACE_MODEL)
    try:
        answers = asyncio.run(fire(urls, key, bodies))
    finally:
        mock.clear_faults()
    served = [(u, r) for u, r in answers if r.status_code == 200]
    refused = [r for _, r in answers if r.status_code == 429]
    other = [(r.status_code, r.text[:300]) for _, r in answers if r.status_code not in (200, 429)]
    assert not other, f"only 200 or 429 budget_exceeded are acceptable, got {len(other)} others: {other[:5]}"
    assert served and refused, f"{len(served)} served, {len(refused)} refused: the limit should split them"
    for r in refused:
        assert r.json()["error"]["code"] == "budget_exceeded", r.text

    # What the served answers cost at list price, from the usage they report.
    charged = sum(cost_micros(RACE_MODEL, r.json()["usage"]["prompt_tokens"], r.json()["usage"]["completion_tokens"])
                  for _, r in served)
    upstream = upstream_calls(mock, marker)
    assert len(upstream) == len(served), f"the provider saw {len(upstream)} requests, {len(served)} were served"

    for url in urls:
        after = settled_and_returned(url, key, timeout=60)
        (window,) = after["budgets"]
        assert micros(window["spent_usd"]) <= round(limit_usd * 1_000_000), f"{url} spent past the limit: {window}"
        assert micros(window["spent_usd"]) == charged, (
            f"{url}: the budget says ${window['spent_usd']}, the served answers cost {charged} micro-dollars"
        )
        assert window["spent_tokens"] == sum(r.json()["usage"]["total_tokens"] for _, r in served)
    return {
        url: (sum(1 for u, _ in served if u == url), sum(1 for u, r in answers if u == url and r.status_code == 429))
        for url in urls
    }


RACE_KEY = key_for("e2e-envoy-race")
RACE_LIMIT_USD = 0.044


@pytest.fixture
def race_envoy(mock: Mock, run_dir: Path) -> Iterator[Envoy]:
    tenant = single_tier_tenant("e2e-envoy-race", [f"openai/{RACE_MODEL}"], budgets=strict_daily(usd=RACE_LIMIT_USD))
    with running(lambda: hosts.start_envoy(mock, run_dir / "envoy-race", name="envoy-race",
                                           tenants=[(tenant, [RACE_KEY])])) as e:
        yield e


def test_both_worker_threads_racing_for_one_budget_never_spend_past_the_limit(race_envoy, clean_mock):
    before = race_envoy.worker_connections()
    race(clean_mock, [race_envoy.url], RACE_KEY, RACE_LIMIT_USD)
    after = race_envoy.worker_connections()
    share = {w: after[w] - before.get(w, 0) for w in after}
    assert len(share) == 2 and all(n >= 20 for n in share.values()), (
        f"the race did not run on both worker threads: connections per thread {share}"
    )


# ---------------------------------------------------------------- cluster-wide, two Envoys and Redis


def test_two_envoys_sharing_redis_never_spend_past_the_limit_together(redis_envoys: RedisEnvoys, clean_mock):
    config = registry.BUDGET_RACE_USD
    (limit,) = config["budgets"]["limits"]
    assert config["routing"]["tiers"][0]["models"] == [f"openai/{RACE_MODEL}"]
    split = race(clean_mock, redis_envoys.urls, registry.BUDGET_RACE_USD_KEY, limit["usd"])
    # Both Envoys took part: each answered its half of the requests. Which
    # one spends the budget is first come, first served (one Envoy's landed
    # compare-and-set can carry all its waiting reservations), so either may
    # serve them all; race() has checked that both report the same spend.
    assert all(served + refused == CONCURRENCY // 2 for served, refused in split.values()), split
    # The budget lives in Redis, where both Envoys read it.
    keys = redis_envoys.redis.keys("tollgate:budget:*")
    assert f"tollgate:budget:{config['tenant_id']}" in keys, keys


def test_an_answer_cached_through_one_envoy_is_a_hit_through_the_other(redis_envoys: RedisEnvoys, clean_mock):
    a, b = redis_envoys.envoys
    body = chat_body(unique(EASY_PROMPT), temperature=0)
    miss = httpx.post(a.url + "/v1/chat/completions", json=body, headers=bearer(CACHE_KEY), timeout=60)
    assert miss.status_code == 200 and miss.headers["x-tollgate-cache"] == "miss", miss.text
    # The fill is written to Redis just after the answer: wait for the key.
    deadline = time.monotonic() + 10
    while not redis_envoys.redis.keys("tollgate:cache:*"):
        assert time.monotonic() < deadline, "no cache entry reached Redis"
        time.sleep(0.05)
    entries = len(redis_envoys.redis.keys("tollgate:cache:*"))
    hit = httpx.post(b.url + "/v1/chat/completions", json=body, headers=bearer(CACHE_KEY), timeout=60)
    assert hit.status_code == 200, hit.text
    assert hit.headers["x-tollgate-cache"] == "hit", f"{entries} entries in Redis, but B missed"
    assert hit.json()["choices"] == miss.json()["choices"]
    assert len(clean_mock.requests()) == 1


def test_spend_through_one_envoy_shows_in_the_other_envoys_usage(redis_envoys: RedisEnvoys, clean_mock):
    a, b = redis_envoys.envoys
    key = registry.TINY_KEY
    before_b = settled_usage(b.url, key)
    r = httpx.post(a.url + "/v1/chat/completions", json=chat_body(unique(EASY_PROMPT), max_tokens=50),
                   headers=bearer(key), timeout=60)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while True:
        after_b = settled_usage(b.url, key)
        grown = after_b["budgets"][0]["spent_tokens"] - before_b["budgets"][0]["spent_tokens"]
        if grown or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert grown == r.json()["usage"]["total_tokens"], (before_b, after_b)


def test_spend_by_user_through_one_envoy_is_grouped_in_the_other_envoys_usage(redis_envoys: RedisEnvoys, clean_mock):
    """The hourly and daily buckets live in Redis with the rest of the
    ledger: a user's request through A shows, at its exact cost, in B's
    spend grouped by user, in both bucket lengths."""
    a, b = redis_envoys.envoys
    key = registry.TINY_KEY
    user = f"redis-user-{uuid.uuid4().hex[:8]}"
    body = chat_body(unique(EASY_PROMPT), max_tokens=50)
    body["user"] = user
    r = httpx.post(a.url + "/v1/chat/completions", json=body, headers=bearer(key), timeout=60)
    assert r.status_code == 200, r.text
    cost = micros(r.headers["x-tollgate-cost-usd"])
    for bucket in ("hour", "day"):
        deadline = time.monotonic() + 10
        while True:
            report = settled_usage(b.url, key, query=f"?group_by=user&bucket={bucket}")
            found = {g["value"]: (g["requests"], micros(g["cost_usd"])) for g in report.get("groups", [])}
            if user in found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert report["groups_bucket"] == bucket
        assert found.get(user) == (1, cost), (bucket, found)
