"""Budgets under contention: 200 requests in flight at once against a tenant
whose daily limit fits about a third of them.

On the Worker the tenant's TenantLedger Durable Object is the single writer
of its spend; in Envoy every worker thread updates the tenant's budget in
proxy-wasm shared data by compare-and-swap. These tests check, on both
hosts and from outside, what that promises: spend never passes the
limit, every request is either served and charged or refused up front with
an OpenAI-shaped 429, nothing reaches the provider without a grant, and the
ledger's spend is exactly the sum of what the served requests cost.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import httpx
import pytest

import tenants as registry
from calls import cost_micros, micros, settled_usage

CONCURRENCY = 200
MAX_TOKENS = 60
# The mock holds every answer this long, so the granted requests still hold
# their reservations while the rest arrive: a real race for the budget.
UPSTREAM_DELAY_MS = 2000
# Settling 200 answers takes the ledger a while.
SETTLE_SECONDS = 60.0


@dataclass(frozen=True)
class Race:
    config: dict
    key: str
    # The tenant's only model.
    model: str
    # "usd" or "tokens": which limit the tenant has.
    limit_kind: str


RACES = {
    "usd": Race(registry.BUDGET_RACE_USD, registry.BUDGET_RACE_USD_KEY, "gpt-4o", "usd"),
    "tokens": Race(registry.BUDGET_RACE_TOKENS, registry.BUDGET_RACE_TOKENS_KEY, "gpt-4o-mini", "tokens"),
}


async def fire(url: str, key: str, bodies: list[dict]) -> list[httpx.Response]:
    """Send every body at once, each on its own connection, and wait for all."""
    limits = httpx.Limits(max_connections=len(bodies) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        start = asyncio.Event()

        async def one(body: dict) -> httpx.Response:
            await start.wait()
            return await client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})

        tasks = [asyncio.create_task(one(b)) for b in bodies]
        await asyncio.sleep(0)
        start.set()
        return await asyncio.gather(*tasks)


@pytest.mark.parametrize("kind", sorted(RACES))
def test_two_hundred_concurrent_requests_never_spend_past_the_limit_and_every_served_one_is_charged(
    router, clean_mock, kind
):
    race = RACES[kind]
    (limit,) = race.config["budgets"]["limits"]
    before = settled_usage(router.url, race.key, timeout=SETTLE_SECONDS)
    (window_before,) = before["budgets"]
    assert window_before["spent_tokens"] == 0 and micros(window_before["spent_usd"]) == 0, (
        f"tenant {race.config['tenant_id']} must start unspent (it is used by this test only): {before}"
    )

    marker = f"race-{kind}-{uuid.uuid4().hex[:12]}"
    bodies = [
        {
            "model": "tollgate/auto",
            "messages": [{"role": "user", "content": f"{marker} #{i}: name one fact about harbour number {i}."}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
        for i in range(CONCURRENCY)
    ]
    clean_mock.faults(f"slow:{UPSTREAM_DELAY_MS}", model=race.model)
    try:
        responses = asyncio.run(fire(router.url, race.key, bodies))
    finally:
        clean_mock.clear_faults()

    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    other = [(r.status_code, r.text[:300]) for r in responses if r.status_code not in (200, 429)]
    assert not other, f"only 200 or 429 budget_exceeded are acceptable, got {len(other)} others: {other[:5]}"
    assert served, "no request was served: the limit should fit about a third of them"
    assert refused, f"all {len(served)} requests were served: the limit should refuse about two thirds"

    for r in refused:
        err = r.json()["error"]
        assert (err["code"], err["type"]) == ("budget_exceeded", "insufficient_quota"), r.text
        assert isinstance(err["message"], str) and "daily" in err["message"], r.text
        assert int(r.headers["retry-after"]) >= 1, dict(r.headers)

    # Each grant reports the headroom left after it. Grants are serialised in
    # the ledger, so no two see the same headroom; a lost update (two grants
    # made from the same state) would show up as a repeat.
    remaining_header = f"x-tollgate-budget-remaining-{race.limit_kind}"
    remaining = [r.headers[remaining_header] for r in served]
    repeats = sorted({v for v in remaining if remaining.count(v) > 1})
    assert not repeats, f"grants saw the same remaining budget {repeats}: reservations were not serialised"

    header_total = 0
    priced_total = 0
    token_total = 0
    for r in served:
        body = r.json()
        assert body["model"] == race.model, body
        assert r.headers["x-tollgate-request-id"].startswith("req_")
        header_total += micros(r.headers["x-tollgate-cost-usd"])
        priced_total += cost_micros(race.model, body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
        token_total += body["usage"]["total_tokens"]
    assert header_total == priced_total, "x-tollgate-cost-usd disagrees with the usage in the bodies, priced"

    # Every request the provider saw had a grant: one upstream call per 200.
    upstream = [rec for rec in clean_mock.requests() if marker in str(rec["body"].get("messages", ""))]
    assert len(upstream) == len(served), f"the mock saw {len(upstream)} requests but only {len(served)} were served"
    assert all(rec["body"]["max_tokens"] == MAX_TOKENS for rec in upstream)

    after = settled_usage(router.url, race.key, timeout=SETTLE_SECONDS)
    (window,) = after["budgets"]
    spent_tokens, spent_micros = window["spent_tokens"], micros(window["spent_usd"])
    if race.limit_kind == "usd":
        assert spent_micros <= micros(window["limit_usd"]), window
        assert micros(window["limit_usd"]) == round(limit["usd"] * 1_000_000)
    else:
        assert spent_tokens <= window["limit_tokens"] == limit["tokens"], window
    assert spent_micros == header_total, (
        f"ledger spend ${window['spent_usd']} != sum of served costs {header_total} micro-dollars"
    )
    assert spent_tokens == token_total, f"ledger tokens {spent_tokens} != sum of usage.total_tokens {token_total}"

    # The cost-per-resolution ledger recorded each served request, and only those.
    tiers = {t["tier"]: t for t in after["resolution"]["tiers"]}
    assert sum(t["requests"] for t in tiers.values()) == len(served), tiers
    assert sum(micros(t["spent_usd"]) for t in tiers.values()) == header_total, tiers
