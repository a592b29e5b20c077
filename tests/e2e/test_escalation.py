"""Escalation, on both hosts: an unresolved cheap answer (cut at the output
limit, empty, a refusal, not the JSON asked for) or a cheap tier whose every
model failed is retried once on the premium tier; the client gets the better
answer, both attempts are charged to one logical request, and the decision
headers say what happened. Tenant e2e-escalation (tenants.py): the usual two
tiers, metered, escalation on for every signal. The mock spoils answers per
model with `answer:<kind>` faults."""

from __future__ import annotations

import httpx

import tenants
from calls import (
    EASY_PROMPT,
    Recorded,
    bearer,
    chat,
    chat_body,
    content_of,
    cost_micros,
    micros,
    openai_stream_text,
    replayed_usage,
    spent,
    unique,
    upstream_calls,
)

KEY = tenants.ESCALATION_KEY
CHEAP, CHEAP_SECOND = (m.split("/", 1)[1] for m in tenants.CHEAP_OPENAI)  # gpt-4o-mini, gpt-4.1-nano
PREMIUM, PREMIUM_SECOND = (m.split("/", 1)[1] for m in tenants.PREMIUM_OPENAI)  # gpt-4o, gpt-4.1


def tier_row(report: dict, tier: str) -> dict:
    rows = {t["tier"]: t for t in report["resolution"]["tiers"]}
    return rows.get(tier, {"requests": 0, "escalations": 0, "spent_usd": "0.000000"})


def daily_spent(report: dict) -> int:
    ((_, usd),) = spent(report)
    return micros(usd)


def charged(mock, records: list[dict]) -> int:
    """What the answers the mock gave for `records` cost, at list price."""
    total = 0
    for record in records:
        u = replayed_usage(mock, record)
        total += cost_micros(record["model"], u["prompt_tokens"], u["completion_tokens"])
    return total


def test_a_cut_cheap_answer_is_retried_on_premium_and_both_attempts_are_one_charged_request(router, clean_mock):
    ledger = Recorded(router.url, KEY)
    clean_mock.faults("answer:length", model=CHEAP)
    prompt = unique(EASY_PROMPT)
    r = chat(router.url, KEY, chat_body(prompt, temperature=0))
    assert r.status_code == 200, r.text
    records = upstream_calls(clean_mock, prompt)
    assert [x["model"] for x in records] == [CHEAP, PREMIUM], records
    assert r.headers["x-tollgate-escalated"] == "cheap->premium; reason=length"
    assert r.headers["x-tollgate-tier"] == "premium"
    assert r.headers["x-tollgate-model"] == f"openai/{PREMIUM}"
    assert content_of(r).startswith(f"[mock:{PREMIUM}]"), content_of(r)
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    both = charged(clean_mock, records)
    assert micros(r.headers["x-tollgate-cost-usd"]) == both
    after = ledger.wait_for(1)
    before = ledger.start
    # One logical request, recorded on the tier the router chose, with both costs.
    assert tier_row(after, "cheap")["requests"] - tier_row(before, "cheap")["requests"] == 1
    assert tier_row(after, "cheap")["escalations"] - tier_row(before, "cheap")["escalations"] == 1
    assert micros(tier_row(after, "cheap")["spent_usd"]) - micros(tier_row(before, "cheap")["spent_usd"]) == both
    assert tier_row(after, "premium")["requests"] == tier_row(before, "premium")["requests"]
    assert daily_spent(after) - daily_spent(before) == both


def test_when_the_premium_tier_fails_the_client_gets_the_cheap_answer_and_pays_only_for_it(router, clean_mock):
    ledger = Recorded(router.url, KEY)
    clean_mock.faults("answer:empty", model=CHEAP)
    clean_mock.faults("status:503", model=PREMIUM)
    clean_mock.faults("status:503", model=PREMIUM_SECOND)
    prompt = unique(EASY_PROMPT)
    r = chat(router.url, KEY, chat_body(prompt, temperature=0))
    assert r.status_code == 200, r.text
    records = upstream_calls(clean_mock, prompt)
    assert [(x["model"], x["status"]) for x in records] == [(CHEAP, 200), (PREMIUM, 503), (PREMIUM_SECOND, 503)]
    assert content_of(r) == ""
    assert r.headers["x-tollgate-tier"] == "cheap"
    assert "escalated tier failed" in r.headers["x-tollgate-reasons"], r.headers
    cheap_cost = charged(clean_mock, records[:1])
    after = ledger.wait_for(1)
    assert daily_spent(after) - daily_spent(ledger.start) == cheap_cost
    assert micros(r.headers["x-tollgate-cost-usd"]) == cheap_cost


def test_a_refusal_and_json_that_does_not_parse_escalate_but_a_named_tier_never_does(router, clean_mock):
    clean_mock.faults("answer:refusal", model=CHEAP, times=1)
    prompt = unique(EASY_PROMPT)
    r = chat(router.url, KEY, chat_body(prompt, temperature=0))
    assert r.headers.get("x-tollgate-escalated") == "cheap->premium; reason=refusal", r.headers

    clean_mock.faults("answer:bad_json", model=CHEAP, times=1)
    prompt = unique(EASY_PROMPT)
    r = chat(router.url, KEY, chat_body(prompt, temperature=0, response_format={"type": "json_object"}))
    assert r.headers.get("x-tollgate-escalated") == "cheap->premium; reason=malformed_json", r.headers
    assert [x["model"] for x in upstream_calls(clean_mock, prompt)] == [CHEAP, PREMIUM]

    clean_mock.faults("answer:length", model=CHEAP, times=1)
    prompt = unique(EASY_PROMPT)
    r = chat(router.url, KEY, chat_body(prompt, model="tollgate/cheap", temperature=0))
    assert r.status_code == 200
    assert "x-tollgate-escalated" not in r.headers
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert [x["model"] for x in upstream_calls(clean_mock, prompt)] == [CHEAP]


def test_a_stream_escalates_when_the_cheap_tier_fails_before_its_first_byte(router, clean_mock):
    ledger = Recorded(router.url, KEY)
    clean_mock.faults("status:500", model=CHEAP)
    clean_mock.faults("status:500", model=CHEAP_SECOND)
    prompt = unique(EASY_PROMPT)
    body = {**chat_body(prompt, temperature=0), "stream": True}
    with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, headers=bearer(KEY), timeout=60) as r:
        r.read()
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-escalated"] == "cheap->premium; reason=upstream_error"
    assert openai_stream_text(r.text).startswith(f"[mock:{PREMIUM}]")
    records = upstream_calls(clean_mock, prompt)
    assert [(x["model"], x["status"]) for x in records] == [(CHEAP, 500), (CHEAP_SECOND, 500), (PREMIUM, 200)]
    after = ledger.wait_for(1)
    assert daily_spent(after) - daily_spent(ledger.start) == charged(clean_mock, records[2:])


def test_a_stream_is_not_escalated_for_what_it_says(router, clean_mock):
    clean_mock.faults("answer:length", model=CHEAP, times=1)
    prompt = unique(EASY_PROMPT)
    body = {**chat_body(prompt, temperature=0), "stream": True}
    with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, headers=bearer(KEY), timeout=60) as r:
        r.read()
    assert r.status_code == 200
    assert "x-tollgate-escalated" not in r.headers
    assert [x["model"] for x in upstream_calls(clean_mock, prompt)] == [CHEAP]
