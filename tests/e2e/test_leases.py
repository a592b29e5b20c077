"""Budget leases on both hosts (docs/config.md "Leases"): a host instance
(a Worker isolate, an Envoy worker thread's VM) reserves and settles in
memory against a slice of the budget its tenant's writer granted, so
requests stop waiting for the writer; spend still never passes a limit.

- requests of a leased tenant wait for the writer a few times in all, a
  per-request tenant's every time (counted by the host: Envoy's
  `tollgate.store_batches` by path, the Worker's `/healthz` instance
  counts);
- the tail of a budget: a request is refused only when what is left really
  cannot pay it (the instance frees its own lease's unused part first);
- two Envoys on one Redis, 500 requests at once, some streams cut by the
  client mid-answer: never over the limit, and the ledger holds exactly
  what the answers cost;
- an Envoy killed while it holds a lease: the lease is charged in full when
  it expires, and the rest of the budget is untouched.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
import uuid

import httpx
import pytest

import hosts
import tenants as registry
from calls import (
    bearer,
    chat_body,
    cost_micros,
    micros,
    settled_and_returned,
    settled_usage,
    unique,
    upstream_calls,
    usage,
)
from hosts import Mock, RedisEnvoys
from prereq import running

SEQUENTIAL = 24
PARALLEL = 6


def writer_batches_waited(router) -> int:
    """Batches the host sent to the tenant's writer and a request waited for."""
    if router.name == "worker":
        health = httpx.get(router.url + "/healthz", timeout=10).json()
        return health["instance"]["ledger_calls_waited"]
    stats = router.host.stats(r"^wasmcustom\.tollgate\.store_batches\.path\.request$")
    return sum(stats.values())


async def _send_in_waves(url: str, key: str, bodies: list[dict]) -> list[httpx.Response]:
    """`PARALLEL` at a time, so requests overlap as they do under load."""
    out: list[httpx.Response] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for start in range(0, len(bodies), PARALLEL):
            wave = bodies[start:start + PARALLEL]
            out += await asyncio.gather(
                *(client.post(url + "/v1/chat/completions", json=b, headers=bearer(key)) for b in wave)
            )
    return out


def test_a_leased_tenants_requests_rarely_wait_for_the_writer_and_a_per_request_tenants_always_do(
    router, clean_mock
):
    bodies = [chat_body(unique("Name a colour."), max_tokens=20) for _ in range(SEQUENTIAL)]
    counts = {}
    for key in (registry.LEASED_KEY, registry.PER_REQUEST_KEY):
        # A first wave: every instance that serves the tenant has served it
        # once (the first requests of an instance reserve at the writer and
        # take a lease along).
        asyncio.run(_send_in_waves(router.url, key, [chat_body(unique("Warm up."), max_tokens=5)] * PARALLEL * 2))
        before_usage = settled_usage(router.url, key)
        before = writer_batches_waited(router)
        answers = asyncio.run(_send_in_waves(router.url, key, bodies))
        counts[key] = writer_batches_waited(router) - before
        assert all(a.status_code == 200 for a in answers), [a.text[:200] for a in answers if a.status_code != 200]
        # Either way, the ledger ends up with exactly what the answers cost.
        charged = sum(micros(a.headers["x-tollgate-cost-usd"]) for a in answers)
        after = settled_usage(router.url, key)
        grown = micros(after["budgets"][0]["spent_usd"]) - micros(before_usage["budgets"][0]["spent_usd"])
        assert grown == charged, f"{key}: the ledger grew by {grown}, the answers cost {charged}"
    # Per request: every reserve waits (and nothing else counts here).
    assert counts[registry.PER_REQUEST_KEY] >= SEQUENTIAL, counts
    # Leased: in memory, but for a lease an instance returned while idle
    # (after the warm-up's settling) and asks for again, and a renewal a
    # request may catch before the background one lands.
    assert counts[registry.LEASED_KEY] <= 4, (
        f"{counts[registry.LEASED_KEY]} of {SEQUENTIAL} leased requests waited for the writer"
    )


def test_requests_charged_at_a_keys_and_an_end_users_limits_are_leased_too_and_the_ledger_has_them_at_every_level(
    router, clean_mock
):
    _, limited_key, _ = registry.LEVELS_LEASED
    user = f"leased-{uuid.uuid4().hex[:10]}"

    def body(text: str, max_tokens: int) -> dict:
        return {**chat_body(unique(text), max_tokens=max_tokens), "user": user}

    # Every instance serving the tenant has served this key and user twice
    # (the second request asks for a lease carved at all three levels).
    asyncio.run(_send_in_waves(router.url, limited_key, [body("Warm up.", 5) for _ in range(PARALLEL * 3)]))
    before_usage = settled_and_returned(router.url, limited_key)
    again = asyncio.run(_send_in_waves(router.url, limited_key, [body("Warm up again.", 5) for _ in range(PARALLEL * 2)]))
    before_batches = writer_batches_waited(router)
    answers = asyncio.run(_send_in_waves(router.url, limited_key, [body("Name a colour.", 20) for _ in range(SEQUENTIAL)]))
    waited = writer_batches_waited(router) - before_batches
    answers += again
    assert all(a.status_code == 200 for a in answers), [a.text[:200] for a in answers if a.status_code != 200]
    # Before leases for keys and users, each of these waited for the writer.
    assert waited <= 4, f"{waited} of {SEQUENTIAL} requests of a limited key and user waited for the writer"
    after = settled_and_returned(router.url, limited_key)

    def tokens_at(report: dict, section: str | None) -> int:
        if section is None:
            return report["budgets"][0]["spent_tokens"]
        entries = report.get(section, [])
        if section == "users":
            entries = [e for e in entries if e["id"] == user]
        return sum(e["budgets"][0]["spent_tokens"] for e in entries)

    # What the answers since `before_usage` used, exactly, at every level.
    served = sum(a.json()["usage"]["total_tokens"] for a in answers)
    grown = {s or "tenant": tokens_at(after, s) - tokens_at(before_usage, s) for s in (None, "keys", "users")}
    assert grown == {"tenant": served, "keys": served, "users": served}, grown


def test_near_the_end_of_a_budget_a_request_is_refused_only_when_what_is_left_cannot_pay_it(router, clean_mock):
    key = registry.LEASE_TAIL_KEY
    (limit,) = registry.LEASE_TAIL["budgets"]["limits"]
    served = 0
    refusal = None
    # One keep-alive connection: on Envoy, one worker thread serves them
    # all, so no other instance holds a lease of this tenant.
    with httpx.Client(timeout=60) as client:
        for _ in range(200):
            r = client.post(router.url + "/v1/chat/completions", headers=bearer(key),
                            json=chat_body(unique("Name a river in Europe."), max_tokens=120))
            if r.status_code == 429:
                refusal = r
                break
            assert r.status_code == 200, r.text
            served += 1
    assert refusal is not None and served > 0, f"{served} served, the limit never ran out"
    error = refusal.json()["error"]
    assert error["code"] == "budget_exceeded", refusal.text
    # "N of L tokens used or held, this request needs up to W": nothing else
    # runs on this tenant, so what was used or held is what was spent (this
    # instance's own lease was freed before the writer decided).
    m = re.search(r"(\d+) of (\d+) tokens used or held, this request needs up to (\d+)", error["message"])
    assert m, error["message"]
    used, total, needs = (int(g) for g in m.groups())
    assert total == limit["tokens"]
    assert used + needs > total, f"refused though {total - used} tokens were left for a request needing {needs}"
    report = settled_usage(router.url, key)
    (window,) = report["budgets"]
    assert used == window["spent_tokens"], (
        f"the refusal counted {used} tokens used or held, the ledger has {window['spent_tokens']} spent: "
        f"a lease was held against the request ({window})"
    )
    assert window["spent_tokens"] <= total


# ---------------------------------------------------------------- two Envoys, one Redis

RACE_REQUESTS = 500
RACE_STREAMS_CUT = 40
RACE_MAX_TOKENS = 60
RACE_MODEL = "gpt-4o"
RACE_DELAY_MS = 1500


async def _race(urls: list[str], key: str, marker: str) -> tuple[list[httpx.Response], int]:
    """Every request at once over both Envoys; the first RACE_STREAMS_CUT
    stream and are dropped by the client after their first chunk."""
    limits = httpx.Limits(max_connections=RACE_REQUESTS + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        go = asyncio.Event()

        def body(i: int, stream: bool) -> dict:
            return {"model": "tollgate/auto", "max_tokens": RACE_MAX_TOKENS, "temperature": 0, "stream": stream,
                    "messages": [{"role": "user", "content": f"{marker} #{i}: one fact about harbour {i}."}]}

        async def whole(i: int) -> httpx.Response:
            await go.wait()
            return await client.post(urls[i % 2] + "/v1/chat/completions", json=body(i, False), headers=bearer(key))

        async def cut(i: int) -> int:
            await go.wait()
            async with client.stream("POST", urls[i % 2] + "/v1/chat/completions", json=body(i, True),
                                     headers=bearer(key)) as r:
                if r.status_code != 200:
                    await r.aread()
                    return r.status_code
                async for _ in r.aiter_raw():
                    break  # the client goes away mid-answer
                return 200

        cuts = [asyncio.create_task(cut(i)) for i in range(RACE_STREAMS_CUT)]
        wholes = [asyncio.create_task(whole(i)) for i in range(RACE_STREAMS_CUT, RACE_REQUESTS)]
        await asyncio.sleep(0)
        go.set()
        cut_statuses = await asyncio.gather(*cuts)
        return await asyncio.gather(*wholes), sum(1 for s in cut_statuses if s == 200)


def test_two_envoys_with_leases_on_one_redis_never_spend_past_the_limit_under_500_requests(
    redis_envoys: RedisEnvoys, clean_mock
):
    key = registry.LEASE_RACE_KEY
    (limit,) = registry.LEASE_RACE["budgets"]["limits"]
    limit_micros = round(limit["usd"] * 1_000_000)
    urls = redis_envoys.urls
    before = settled_usage(urls[0], key, timeout=30)
    assert micros(before["budgets"][0]["spent_usd"]) == 0, f"the race tenant must start unspent: {before}"
    marker = f"lease-race-{uuid.uuid4().hex[:12]}"
    clean_mock.faults(f"chunk_delay:200,slow:{RACE_DELAY_MS}", model=RACE_MODEL)
    try:
        answers, streams_started = asyncio.run(_race(urls, key, marker))
    finally:
        clean_mock.clear_faults()
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    other = [(a.status_code, a.text[:200]) for a in answers if a.status_code not in (200, 429)]
    assert not other, f"only 200 or 429 are acceptable: {other[:5]}"
    assert served and refused, f"{len(served)} served, {len(refused)} refused: the limit should split them"
    assert all(a.json()["error"]["code"] == "budget_exceeded" for a in refused)
    charged = sum(cost_micros(RACE_MODEL, a.json()["usage"]["prompt_tokens"], a.json()["usage"]["completion_tokens"])
                  for a in served)
    assert sum(micros(a.headers["x-tollgate-cost-usd"]) for a in served) == charged

    # Every Envoy's view, once each request has settled and every batch landed.
    deadline = time.monotonic() + 60
    while True:
        reports = [settled_usage(u, key, timeout=60) for u in urls]
        spends = {micros(r["budgets"][0]["spent_usd"]) for r in reports}
        if len(spends) == 1 and not any(micros(r["budgets"][0]["leased_usd"]) for r in reports):
            break
        assert time.monotonic() < deadline, f"the Envoys never agreed, or leases stayed out: {reports}"
        time.sleep(0.25)
    (spent,) = spends
    assert spent <= limit_micros, f"spent {spent} micro-dollars of a {limit_micros} limit"
    # The cut streams are charged for what was sent before the cut (prompt
    # and output so far): at least nothing, at most their whole hold.
    worst_cut = cost_micros(RACE_MODEL, 40, RACE_MAX_TOKENS)
    assert charged <= spent <= charged + streams_started * worst_cut, (
        f"ledger {spent}, served answers {charged}, {streams_started} cut streams of at most {worst_cut}"
    )
    calls = upstream_calls(clean_mock, marker)
    assert len(calls) == len(served) + streams_started, (
        f"the provider saw {len(calls)} requests; {len(served)} answered, {streams_started} streams started"
    )


def test_an_envoy_killed_holding_a_lease_has_it_charged_in_full_when_it_expires(
    redis_envoys: RedisEnvoys, mock: Mock, clean_mock, tmp_path
):
    from conftest import REDIS_STATE

    key = registry.LEASE_SHORT_KEY
    a = redis_envoys.envoys[0]
    before = settled_usage(a.url, key, timeout=30)
    (window,) = before["budgets"]
    assert micros(window["leased_usd"]) == 0, before
    spent_before = micros(window["spent_usd"])
    model = registry.LEASE_SHORT["routing"]["tiers"][0]["models"][0].split("/", 1)[1]
    clean_mock.faults("slow:30000", model=model)
    with running(lambda: hosts.start_envoy(mock, tmp_path, name="envoy-doomed", tenants=registry.TENANTS,
                                           extra_entries=registry.EXTRA_ENTRIES, state=REDIS_STATE,
                                           webdis=redis_envoys.webdis, concurrency=1)) as doomed:
        # One request in flight on the doomed Envoy: it reserves at the
        # writer and takes a lease in the same batch.
        client = httpx.Client(timeout=60)
        pending = client.build_request("POST", doomed.url + "/v1/chat/completions", headers=bearer(key),
                                       json=chat_body(unique("Say hi."), max_tokens=20))
        threading.Thread(target=lambda: _swallow(client, pending), daemon=True).start()
        deadline = time.monotonic() + 10
        while True:
            report = usage(a.url, key)
            leased = micros(report["budgets"][0]["leased_usd"])
            if leased:
                break
            assert time.monotonic() < deadline, f"the doomed Envoy never took a lease: {report}"
            time.sleep(0.05)
        reserved = micros(report["budgets"][0]["reserved_usd"])
        os.kill(doomed.proc.pid, signal.SIGKILL)
        doomed.proc.wait(timeout=10)
    clean_mock.clear_faults()
    # The lease (15 s) expires unreported: charged in full, never returned.
    deadline = time.monotonic() + 40
    while True:
        report = usage(a.url, key)
        (window,) = report["budgets"]
        if micros(window["leased_usd"]) == 0:
            break
        assert time.monotonic() < deadline, f"the dead Envoy's lease never expired: {report}"
        time.sleep(0.25)
    assert micros(window["spent_usd"]) == spent_before + leased, (
        f"the lease of {leased} micro-dollars should be charged in full: {report}"
    )
    # The request's own hold (at the writer) stays until it expires, as without leases.
    assert micros(window["reserved_usd"]) == reserved, report


def _swallow(client: httpx.Client, request: httpx.Request) -> None:
    try:
        client.send(request)
    except httpx.HTTPError:
        pass


@pytest.fixture(autouse=True)
def _cleanup_faults(clean_mock):
    yield
    clean_mock.clear_faults()
