"""`GET /v1/feedback/export`: the feedback a tenant gave, back as NDJSON,
one `{request_id, tier, escalated, resolved, at}` per request with
feedback, so `tollgate feedback labels` can join it with the tenant's own
request log (the router keeps no prompt text). On the Worker, on Envoy
with node-local state, and on two Envoys sharing Redis.

Uses tenants e2e-feedback-a and -b (tenants.py), shared with
test_worker_feedback.py: assertions look only at the request ids made here.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx

import tenants as registry

A_KEY = registry.FEEDBACK_A_KEY
B_KEY = registry.FEEDBACK_B_KEY


def auth(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


def chat(url: str, key: str, tier: str, prompt: str) -> httpx.Response:
    body = {"model": f"tollgate/{tier}", "messages": [{"role": "user", "content": prompt}]}
    r = httpx.post(url + "/v1/chat/completions", json=body, headers=auth(key), timeout=60)
    assert r.status_code == 200, r.text
    return r


def give_feedback(url: str, key: str, request_id: str, resolved: bool) -> None:
    r = httpx.post(url + "/v1/feedback", json={"request_id": request_id, "resolved": resolved},
                   headers=auth(key), timeout=30)
    assert r.status_code == 200, r.text


def export(url: str, key: str) -> tuple[httpx.Response, list[dict]]:
    r = httpx.get(url + "/v1/feedback/export", headers=auth(key), timeout=30)
    lines = [json.loads(line) for line in r.text.split("\n") if line.strip()] if r.status_code == 200 else []
    return r, lines


def unique(text: str) -> str:
    return f"{text} [{uuid.uuid4().hex[:12]}]"


def test_export_lists_the_tenants_requests_with_feedback_as_ndjson(router):
    check_export(router.url, router.url)


def test_export_through_one_envoy_lists_feedback_given_through_the_other(redis_envoys):
    a, b = redis_envoys.envoys
    check_export(a.url, b.url)


def check_export(url: str, feedback_url: str) -> None:
    """Requests through `url`, feedback through `feedback_url`, export from `url`."""
    started = int(time.time())
    responses = [
        chat(url, A_KEY, "cheap", unique("Say hello.")),
        chat(url, A_KEY, "premium", unique("Explain nothing.")),
        chat(url, A_KEY, "cheap", unique("No feedback on this one.")),
        chat(url, A_KEY, "cheap", unique("Feedback changed on this one.")),
    ]
    ids = [r.headers["x-tollgate-request-id"] for r in responses]
    give_feedback(feedback_url, A_KEY, ids[0], True)
    give_feedback(feedback_url, A_KEY, ids[1], False)
    give_feedback(feedback_url, A_KEY, ids[3], False)
    give_feedback(feedback_url, A_KEY, ids[3], True)

    r, lines = export(url, A_KEY)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson"), r.headers
    assert r.text.endswith("\n")
    ours = {line["request_id"]: line for line in lines if line["request_id"] in ids}
    assert set(ours) == {ids[0], ids[1], ids[3]}, lines
    expected = {ids[0]: ("cheap", True), ids[1]: ("premium", False), ids[3]: ("cheap", True)}
    for rid, (tier, resolved) in expected.items():
        line = ours[rid]
        assert list(line) == ["request_id", "tier", "escalated", "resolved", "at"], line
        assert (line["tier"], line["escalated"], line["resolved"]) == (tier, False, resolved), line
        assert started - 5 <= line["at"] <= int(time.time()) + 5, line
    # Only requests with feedback, oldest first, and never any prompt text.
    assert all(line["resolved"] in (True, False) for line in lines), lines
    assert [line["at"] for line in lines] == sorted(line["at"] for line in lines)
    assert [line["request_id"] for line in lines if line["request_id"] in ids] == [ids[0], ids[1], ids[3]]
    assert "Say hello" not in r.text and "Explain nothing" not in r.text


def test_export_is_the_calling_tenants_own_and_needs_its_key(router):
    r = chat(router.url, A_KEY, "cheap", unique("A's private question."))
    rid = r.headers["x-tollgate-request-id"]
    give_feedback(router.url, A_KEY, rid, True)

    b, b_lines = export(router.url, B_KEY)
    assert b.status_code == 200, b.text
    assert rid not in b.text and all(line["request_id"] != rid for line in b_lines)

    anonymous = httpx.get(router.url + "/v1/feedback/export", timeout=30)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.json()["error"]["code"] in ("missing_api_key", "invalid_api_key"), anonymous.text

    wrong_method = httpx.post(router.url + "/v1/feedback/export", headers=auth(A_KEY), timeout=30)
    assert wrong_method.status_code == 405, wrong_method.text
    assert wrong_method.headers["allow"] == "GET"
