"""Limits below the tenant, on both hosts: an API key's own limits (from its
record) and each end user's (`budgets.users`), enforced with the tenant's in
one update of the tenant's state, so no level is ever exceeded.

For each level there is a tenant where that level runs out first under 40
concurrent requests. Every refusal must be a 429 naming that level (body and
`x-tollgate-limit-level`), spend at every level must stay within its limit,
and once settled the ledger's spend at every level must equal the tokens the
served answers report. Also: one user's exhaustion never refuses another
user of the same key; a flood of fresh user ids past the tracking cap
shares one user's allowance; the SDKs raise their typed RateLimitError.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import anthropic
import httpx
import openai
import pytest

import tenants as registry
from calls import usage

CONCURRENCY = 40
MAX_TOKENS = 60
UPSTREAM_DELAY_MS = 1000
MODEL = "gpt-4o-mini"
SETTLE_SECONDS = 60.0


def body(marker: str, i: int, user: str | None = None) -> dict:
    b = {
        "model": "tollgate/auto",
        "messages": [{"role": "user", "content": f"{marker} #{i}: name one fact about lighthouse {i}."}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    if user is not None:
        b["user"] = user
    return b


async def fire(url: str, calls: list[tuple[str, dict, dict]]) -> list[httpx.Response]:
    """Send every (key, body, extra headers) at once, each on its own connection."""
    limits = httpx.Limits(max_connections=len(calls) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        start = asyncio.Event()

        async def one(key: str, b: dict, headers: dict) -> httpx.Response:
            await start.wait()
            return await client.post(
                "/v1/chat/completions", json=b, headers={"authorization": f"Bearer {key}", **headers}
            )

        tasks = [asyncio.create_task(one(*c)) for c in calls]
        await asyncio.sleep(0)
        start.set()
        return await asyncio.gather(*tasks)


def reserved_anywhere(report: dict) -> bool:
    entries = report["budgets"] + [b for e in report.get("keys", []) + report.get("users", []) for b in e["budgets"]]
    return any(b["reserved_tokens"] or b.get("leased_tokens", 0) for b in entries)


def settled(url: str, key: str) -> dict:
    """/v1/usage once nothing is held or leased at any level."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        report = usage(url, key)
        if not reserved_anywhere(report):
            return report
        assert time.monotonic() < deadline, f"still held after {SETTLE_SECONDS}s: {report}"
        time.sleep(0.1)


def spent(report: dict, section: str, entry_id: str) -> dict:
    (entry,) = [e for e in report.get(section, []) if e["id"] == entry_id]
    (window,) = entry["budgets"]
    return window


def run(router, mock, calls: list[tuple[str, dict, dict]]) -> tuple[list, list]:
    mock.faults(f"slow:{UPSTREAM_DELAY_MS}", model=MODEL)
    try:
        responses = asyncio.run(fire(router.url, calls))
    finally:
        mock.clear_faults()
    other = [(r.status_code, r.text[:300]) for r in responses if r.status_code not in (200, 429)]
    assert not other, f"only 200 or a budget 429 are acceptable: {other[:5]}"
    return responses, [r for r in responses if r.status_code == 429]


def tokens_of(responses) -> int:
    return sum(r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200)


@pytest.mark.parametrize("level", ["key", "user", "tenant"])
def test_under_concurrent_load_the_level_that_runs_out_first_refuses_and_no_level_is_exceeded(
    router, clean_mock, level
):
    config, limited_key, _ = registry.LEVELS[level]
    marker = f"levels-{level}-{uuid.uuid4().hex[:10]}"
    users = [f"{marker}-u{i % 4}" for i in range(CONCURRENCY)]
    # Half name their user in the tenant's header, half in the body's `user`.
    calls = [
        (limited_key, body(marker, i), {"x-tollgate-user": u}) if i % 2 else (limited_key, body(marker, i, u), {})
        for i, u in enumerate(users)
    ]
    responses, refused = run(router, clean_mock, calls)
    served = [r for r in responses if r.status_code == 200]
    assert served and refused, f"{len(served)} served, {len(refused)} refused: the {level} limit should bind"
    for r in refused:
        err = r.json()["error"]
        assert err["code"] == "budget_exceeded", r.text
        assert r.headers["x-tollgate-limit-level"] == level, (dict(r.headers), r.text)
        assert r.headers["x-tollgate-limit"] == f"{level}-daily", dict(r.headers)
        assert f"`{level}-daily`" in err["message"], err
        assert int(r.headers["retry-after"]) >= 1

    report = settled(router.url, limited_key)
    served_tokens = tokens_of(responses)
    (tenant_window,) = report["budgets"]
    assert tenant_window["spent_tokens"] == served_tokens, report
    assert tenant_window["spent_tokens"] <= tenant_window["limit_tokens"]
    key_window = spent(report, "keys", "" if not report.get("keys") else report["keys"][0]["id"])
    assert key_window["spent_tokens"] == served_tokens, report
    assert key_window["spent_tokens"] <= key_window["limit_tokens"], report
    by_user: dict[str, int] = {}
    for u, r in zip(users, responses):
        if r.status_code == 200:
            by_user[u] = by_user.get(u, 0) + r.json()["usage"]["total_tokens"]
    for u, tokens in by_user.items():
        window = spent(report, "users", u)
        assert window["spent_tokens"] == tokens, (u, report)
        assert window["spent_tokens"] <= window["limit_tokens"], (u, report)


def test_one_users_exhaustion_never_refuses_another_user_of_the_same_key(router, clean_mock):
    _, _, plain_key = registry.LEVELS["user"]
    marker = f"levels-two-users-{uuid.uuid4().hex[:10]}"
    alice, bob = f"{marker}-alice", f"{marker}-bob"
    calls = [(plain_key, body(marker, i), {"x-tollgate-user": alice}) for i in range(30)]
    calls += [(plain_key, body(marker, 100 + i, bob), {}) for i in range(6)]
    responses, refused = run(router, clean_mock, calls)
    assert refused, "alice's 30 requests should run out her 800 tokens"
    assert all(r.status_code == 200 for r in responses[30:]), [r.text[:200] for r in responses[30:]]
    assert all(alice in r.json()["error"]["message"] for r in refused), refused[0].text
    report = settled(router.url, plain_key)
    assert spent(report, "users", alice)["spent_tokens"] <= registry.LEVEL_TIGHT_TOKENS
    bob_tokens = sum(r.json()["usage"]["total_tokens"] for r in responses[30:])
    assert spent(report, "users", bob)["spent_tokens"] == bob_tokens, report


def test_a_flood_of_fresh_user_ids_past_the_cap_shares_one_users_allowance(router, clean_mock):
    config, _, plain_key = registry.LEVELS_FLOOD
    marker = f"levels-flood-{uuid.uuid4().hex[:10]}"
    calls = [(plain_key, body(marker, i, f"{marker}-fresh-{i}"), {}) for i in range(CONCURRENCY)]
    responses, refused = run(router, clean_mock, calls)
    assert refused, "40 fresh ids cannot all be served from 4 places and one shared allowance"
    assert all("users past the cap of 4 tracked users" in r.json()["error"]["message"] for r in refused)
    report = settled(router.url, plain_key)
    users = report.get("users", [])
    assert len(users) <= 5, f"at most 4 users and the shared entry are tracked: {[u['id'] for u in users]}"
    (user_limit,) = config["budgets"]["users"]["limits"]
    for entry in users:
        (window,) = entry["budgets"]
        assert window["spent_tokens"] <= user_limit["tokens"], entry
    assert sum(e["budgets"][0]["spent_tokens"] for e in users) == tokens_of(responses)


def test_users_of_one_tenant_never_show_in_another_tenants_usage(router, clean_mock):
    _, _, plain_key = registry.LEVELS["user"]
    marker = f"levels-private-{uuid.uuid4().hex[:10]}"
    r = httpx.post(
        f"{router.url}/v1/chat/completions",
        json=body(marker, 0, f"{marker}-mallory"),
        headers={"authorization": f"Bearer {plain_key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    _, _, other_key = registry.LEVELS["tenant"]
    assert marker not in str(usage(router.url, other_key))
    assert marker in str(settled(router.url, plain_key))


def test_the_sdks_raise_their_rate_limit_error_naming_the_user_level(router, clean_mock):
    _, limited_key, _ = registry.LEVELS_SDK
    marker = f"levels-sdk-{uuid.uuid4().hex[:10]}"
    oai = openai.OpenAI(base_url=f"{router.url}/v1", api_key=limited_key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        for i in range(10):
            oai.chat.completions.create(
                model="tollgate/auto",
                messages=[{"role": "user", "content": f"{marker} say hi {i}"}],
                max_tokens=MAX_TOKENS,
                user=f"{marker}-oai",
            )
    assert refused.value.response.headers["x-tollgate-limit-level"] == "user"
    assert f"user `{marker}-oai`" in refused.value.message

    claude = anthropic.Anthropic(base_url=router.url, api_key=limited_key, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as refused_claude:
        for i in range(10):
            claude.messages.create(
                model="tollgate/auto",
                messages=[{"role": "user", "content": f"{marker} say hi {i}"}],
                max_tokens=MAX_TOKENS,
                metadata={"user_id": f"{marker}-claude"},
            )
    assert refused_claude.value.response.headers["x-tollgate-limit-level"] == "user"
    assert f"user `{marker}-claude`" in str(refused_claude.value)


def test_a_keys_requests_per_minute_limit_refuses_the_sixth_request_of_a_minute_as_a_rate(router, clean_mock):
    key = registry.LEVELS_RPM_KEY
    marker = f"levels-rpm-{uuid.uuid4().hex[:10]}"
    for attempt in range(3):
        # Start early in a minute, so the eight requests share one.
        time.sleep((62 - time.time() % 60) % 60 if time.time() % 60 > 45 else 0)
        minute = int(time.time() // 60)
        statuses = []
        refusal = None
        for i in range(8):
            r = httpx.post(
                f"{router.url}/v1/chat/completions",
                json=body(f"{marker}-{attempt}", i),
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
            )
            statuses.append(r.status_code)
            if r.status_code == 429 and refusal is None:
                refusal = r
        if int(time.time() // 60) == minute:
            break
    assert statuses[:5] == [200] * 5 and statuses[5:] == [429] * 3, statuses
    err = refusal.json()["error"]
    assert (err["code"], err["type"]) == ("rate_limit_exceeded", "rate_limit_error"), err
    assert refusal.headers["x-tollgate-limit-level"] == "key"
    assert refusal.headers["x-tollgate-limit"] == "key-rpm"
    assert "5 of 5 requests" in err["message"], err
    assert 1 <= int(refusal.headers["retry-after"]) <= 60
