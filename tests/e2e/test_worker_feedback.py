"""Feedback and cost per resolution, on both hosts.

Every routed answer carries `x-tollgate-request-id`; a client later says
whether it resolved the task (`POST /v1/feedback`), and `GET /v1/usage`
reports, per tier, requests, resolutions, spend and cost per resolution.
Tenants e2e-feedback-a and -b (tenants.py) have the same two tiers (cheap:
gpt-4o-mini / claude-3-5-haiku, premium: gpt-4o / claude-sonnet-4-5), a
daily limit far above what these tests spend, and a cache without the
doorkeeper. Tests share tenant A, so each compares before/after snapshots.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

import tenants as registry
from calls import Recorded, cost_micros, micros, replayed_usage, upstream_calls, usage

A_KEY = registry.FEEDBACK_A_KEY
B_KEY = registry.FEEDBACK_B_KEY


def auth(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


def tiers(report: dict) -> dict[str, dict]:
    return {t["tier"]: t for t in report["resolution"]["tiers"]}


def tier_row(report: dict, tier: str) -> dict:
    """A tier's row, or zeros when the tier has no requests yet."""
    zero = {
        "requests": 0,
        "resolved": 0,
        "unresolved": 0,
        "tokens": 0,
        "spent_usd": "0.000000",
        "cache_hits": 0,
        "cache_saved_usd": "0.000000",
        "cost_per_resolution_usd": None,
    }
    return tiers(report).get(tier, zero)


def chat(url: str, key: str, tier: str, prompt: str, **extra) -> httpx.Response:
    body = {"model": f"tollgate/{tier}", "messages": [{"role": "user", "content": prompt}], **extra}
    r = httpx.post(url + "/v1/chat/completions", json=body, headers=auth(key), timeout=60)
    assert r.status_code == 200, r.text
    return r


def feedback(url: str, key: str, body) -> httpx.Response:
    kwargs = {"content": body} if isinstance(body, (str, bytes)) else {"json": body}
    headers = {**auth(key), "content-type": "application/json"}
    return httpx.post(url + "/v1/feedback", headers=headers, timeout=30, **kwargs)


def unique(text: str) -> str:
    return f"{text} [{uuid.uuid4().hex[:12]}]"


def assert_openai_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"], err
    return err


def test_every_routed_response_carries_a_request_id_and_feedback_is_counted_per_tier(router, clean_mock):
    ledger = Recorded(router.url, A_KEY)
    before = ledger.start
    cheap = [chat(router.url, A_KEY, "cheap", unique("Say hello.")) for _ in range(2)]
    premium = chat(router.url, A_KEY, "premium", unique("Say hello."))
    stream_prompt = unique("Hi.")
    streamed = httpx.post(
        router.url + "/v1/chat/completions",
        json={"model": "tollgate/premium", "stream": True, "messages": [{"role": "user", "content": stream_prompt}]},
        headers=auth(A_KEY),
        timeout=60,
    )
    anthropic = httpx.post(
        router.url + "/v1/messages",
        json={"model": "tollgate/cheap", "max_tokens": 64, "messages": [{"role": "user", "content": unique("Hi.")}]},
        headers={"x-api-key": A_KEY, "anthropic-version": "2023-06-01"},
        timeout=60,
    )
    responses = [*cheap, premium, streamed, anthropic]
    ids = [r.headers.get("x-tollgate-request-id", "") for r in responses]
    assert all(r.status_code == 200 for r in responses), [(r.status_code, r.text[:200]) for r in responses]
    assert all(len(i) == 36 and i.startswith("req_") for i in ids), ids
    assert len(set(ids)) == len(ids), f"request ids repeat: {ids}"
    assert [r.headers["x-tollgate-tier"] for r in responses] == ["cheap", "cheap", "premium", "premium", "cheap"]

    # Feedback right after the answer, as a client would give it.
    answers = {ids[0]: True, ids[1]: False, ids[2]: True, ids[3]: True, ids[4]: True}
    for rid, resolved in answers.items():
        r = feedback(router.url, A_KEY, {"request_id": rid, "resolved": resolved})
        assert r.status_code == 200, r.text
        tier = responses[ids.index(rid)].headers["x-tollgate-tier"]
        assert r.json() == {"object": "feedback", "request_id": rid, "tier": tier, "resolved": resolved}

    after = ledger.wait_for(len(responses))
    expected = {"cheap": (3, 2, 1), "premium": (2, 2, 0)}  # requests, resolved, unresolved
    # Non-streamed answers carry their actual cost. A stream's header is the
    # estimate made before it started; its cost is the usage of the answer
    # the provider streamed, which the mock gives again for the same body.
    (stream_record,) = upstream_calls(clean_mock, stream_prompt)
    assert stream_record["stream"] is True and stream_record["completed"], stream_record
    stream_usage = replayed_usage(clean_mock, stream_record)
    stream_cost = cost_micros(stream_record["model"], stream_usage["prompt_tokens"], stream_usage["completion_tokens"])
    assert streamed.headers["x-tollgate-model"] == f"openai/{stream_record['model']}"
    known_costs = {"cheap": [cheap[0], cheap[1], anthropic], "premium": [premium]}
    for tier, (requests, resolved, unresolved) in expected.items():
        old, new = tier_row(before, tier), tier_row(after, tier)
        assert new["requests"] - old["requests"] == requests, (tier, old, new)
        assert new["resolved"] - old["resolved"] == resolved, (tier, old, new)
        assert new["unresolved"] - old["unresolved"] == unresolved, (tier, old, new)
        spent = micros(new["spent_usd"]) - micros(old["spent_usd"])
        expected_cost = sum(micros(r.headers["x-tollgate-cost-usd"]) for r in known_costs[tier])
        if tier == "premium":
            expected_cost += stream_cost
        assert spent == expected_cost, (tier, spent, expected_cost)
        # Cost per resolution: the tier's spend over its resolutions.
        assert new["cost_per_resolution_usd"] is not None
        assert micros(new["cost_per_resolution_usd"]) == micros(new["spent_usd"]) // new["resolved"], new
    total_tier_spend = sum(micros(t["spent_usd"]) for t in tiers(after).values())
    (daily,) = after["budgets"]
    assert total_tier_spend == micros(daily["spent_usd"]), (tiers(after), daily)


def test_changed_feedback_moves_a_request_between_resolved_and_unresolved(router):
    ledger = Recorded(router.url, A_KEY)
    r = chat(router.url, A_KEY, "premium", unique("Explain nothing."))
    rid = r.headers["x-tollgate-request-id"]
    row = tier_row(ledger.wait_for(1), "premium")

    def counts() -> tuple[int, int]:
        now = tier_row(usage(router.url, A_KEY), "premium")
        return now["resolved"] - row["resolved"], now["unresolved"] - row["unresolved"]

    steps = [(True, (1, 0)), (True, (1, 0)), (False, (0, 1)), (True, (1, 0))]
    for resolved, expected in steps:
        fb = feedback(router.url, A_KEY, {"request_id": rid, "resolved": resolved})
        assert fb.status_code == 200, fb.text
        assert counts() == expected, f"after resolved={resolved}"
    assert tier_row(usage(router.url, A_KEY), "premium")["requests"] == row["requests"], "feedback counted a request"


def test_feedback_for_a_request_id_never_issued_is_404_unknown_request_id(router):
    rid = "req_" + uuid.uuid4().hex
    r = feedback(router.url, A_KEY, {"request_id": rid, "resolved": True})
    err = assert_openai_error(r, 404, "unknown_request_id")
    assert err["param"] == "request_id"


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "",
        {"request_id": "req_" + "0" * 32},
        {"resolved": True},
        {"request_id": "req_" + "0" * 32, "resolved": "yes"},
        {"request_id": "nope", "resolved": True},
        {"request_id": "req_" + "g" * 32, "resolved": True},
        {"request_id": "req_" + "0" * 32, "resolved": True, "tenant_id": "e2e-feedback-b"},
        ["req_" + "0" * 32, True],
    ],
    ids=["not-json", "empty", "no-resolved", "no-request-id", "resolved-not-bool", "short-id", "non-hex-id",
         "unknown-field", "array"],
)
def test_malformed_feedback_is_400_invalid_feedback(router, body):
    assert_openai_error(feedback(router.url, A_KEY, body), 400, "invalid_feedback")


def test_one_tenant_can_neither_give_feedback_on_nor_see_another_tenants_requests(router):
    ledger = Recorded(router.url, A_KEY)
    r = chat(router.url, A_KEY, "cheap", unique("A's private question."))
    rid = r.headers["x-tollgate-request-id"]
    a_before = ledger.wait_for(1)

    refused = feedback(router.url, B_KEY, {"request_id": rid, "resolved": False})
    assert_openai_error(refused, 404, "unknown_request_id")
    a_after = usage(router.url, A_KEY)
    assert tiers(a_after) == tiers(a_before), "B's feedback changed A's ledger"

    b = usage(router.url, B_KEY)
    assert b["tenant_id"] == "e2e-feedback-b"
    assert all(t["requests"] == 0 for t in b["resolution"]["tiers"]), b
    (b_daily,) = b["budgets"]
    assert (b_daily["spent_tokens"], micros(b_daily["spent_usd"])) == (0, 0), b
    assert rid not in str(b)

    # A itself can still give it.
    assert feedback(router.url, A_KEY, {"request_id": rid, "resolved": True}).status_code == 200


def test_cache_hits_are_counted_per_tier_with_the_dollars_they_saved(router):
    prompt = unique("What is the capital of France?")
    ledger = Recorded(router.url, A_KEY)
    first = chat(router.url, A_KEY, "cheap", prompt, temperature=0)
    assert first.headers["x-tollgate-cache"] == "miss"
    original_cost = micros(first.headers["x-tollgate-cost-usd"])
    assert original_cost > 0
    # Recorded, so the cache fill made before the record has landed.
    before = ledger.wait_for(1)

    hit = chat(router.url, A_KEY, "cheap", prompt, temperature=0)
    assert hit.headers["x-tollgate-cache"] == "hit"
    assert hit.json()["choices"] == first.json()["choices"]
    assert micros(hit.headers["x-tollgate-saved-usd"]) == original_cost
    assert micros(hit.headers["x-tollgate-cost-usd"]) == 0

    after = ledger.wait_for(1)
    old, new = tier_row(before, "cheap"), tier_row(after, "cheap")
    assert new["cache_hits"] - old["cache_hits"] == 1, (old, new)
    assert micros(new["cache_saved_usd"]) - micros(old["cache_saved_usd"]) == original_cost, (old, new)
    assert new["requests"] - old["requests"] == 1

    # A hit is a routed answer like any other: feedback can name it.
    fb = feedback(router.url, A_KEY, {"request_id": hit.headers["x-tollgate-request-id"], "resolved": True})
    assert fb.status_code == 200, fb.text
    assert fb.json()["tier"] == "cheap"
