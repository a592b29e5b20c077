"""The exact-match response cache, on both hosts (the Worker: Workers KV;
the Envoy filter: proxy-wasm shared data), as a client and the provider see
it: what hits, what is replayed how, what is never stored or never shared
(docs/config.md, `cache`).

Both hosts fill the cache after the client has its answer, then record
the request in the tenant's ledger. Every repeat here is sent once the
earlier answers are recorded (`Recorded.wait_for`), so a fill that was going
to happen has happened: a repeat that should hit must hit, and one that
misses shows the answer was never stored, not stored late."""

from __future__ import annotations

import json

import httpx
import pytest

import tenants
from calls import (
    EASY_PROMPT,
    Recorded,
    anthropic_stream_text,
    bearer,
    chat,
    chat_body,
    content_of,
    messages,
    messages_body,
    openai_stream_text,
    spent,
    sse_events,
    unique,
)

A = tenants.CACHE_A_KEY  # doorkeeper off, metered
B = tenants.CACHE_B_KEY  # doorkeeper off, same routing as A
DK = tenants.CACHE_DOORKEEPER_KEY  # doorkeeper on


def deterministic(prompt: str | None = None, **fields) -> dict:
    return chat_body(prompt or unique(EASY_PROMPT), temperature=0, **fields)


def stream(url: str, key: str, body: dict, path: str = "/v1/chat/completions", **headers) -> httpx.Response:
    auth = bearer(key) if path.endswith("completions") else {"x-api-key": key}
    with httpx.stream("POST", url + path, json={**body, "stream": True}, headers={**auth, **headers}, timeout=60) as r:
        r.read()
    return r


def test_a_repeated_deterministic_request_is_a_hit_and_the_provider_is_not_called_again(router, clean_mock):
    body = deterministic()
    ledger = Recorded(router.url, A)
    first = chat(router.url, A, body)
    assert first.status_code == 200, first.text
    assert first.headers["x-tollgate-cache"] == "miss"
    ledger.wait_for(1)
    second = chat(router.url, A, body)
    assert second.status_code == 200, second.text
    assert second.headers["x-tollgate-cache"] == "hit"
    assert second.content == first.content
    assert len(clean_mock.requests()) == 1
    assert second.headers["x-tollgate-cost-usd"] == "0.000000"
    assert second.headers["x-tollgate-saved-usd"] == first.headers["x-tollgate-cost-usd"]
    assert second.headers["x-tollgate-model"] == first.headers["x-tollgate-model"]
    assert second.headers["x-tollgate-request-id"] != first.headers["x-tollgate-request-id"]
    ledger.wait_for(1)


def test_a_cache_hit_spends_no_budget(router, clean_mock):
    body = deterministic()
    ledger = Recorded(router.url, A)
    assert chat(router.url, A, body).status_code == 200
    before = ledger.wait_for(1)
    assert chat(router.url, A, body).headers["x-tollgate-cache"] == "hit"
    # The hit's own outcome record has landed: whatever it was going to
    # charge would be in this report.
    after = ledger.wait_for(1)
    assert spent(after) == spent(before)
    assert len(clean_mock.requests()) == 1


def test_fields_that_do_not_change_the_answer_share_the_cache_entry(router, clean_mock):
    prompt = unique(EASY_PROMPT)
    ledger = Recorded(router.url, A)
    assert chat(router.url, A, deterministic(prompt, user="alice")).headers["x-tollgate-cache"] == "miss"
    ledger.wait_for(1)
    other = chat(router.url, A, deterministic(prompt, user="bob", metadata={"run": "2"}))
    assert other.headers["x-tollgate-cache"] == "hit"
    assert len(clean_mock.requests()) == 1
    ledger.wait_for(1)


def test_a_field_that_changes_the_answer_is_a_different_entry(router, clean_mock):
    prompt = unique(EASY_PROMPT)
    ledger = Recorded(router.url, A)
    assert chat(router.url, A, deterministic(prompt)).headers["x-tollgate-cache"] == "miss"
    ledger.wait_for(1)
    other = chat(router.url, A, deterministic(prompt, seed=7))
    assert other.headers["x-tollgate-cache"] == "miss"
    assert [r["body"].get("seed") for r in clean_mock.requests()] == [None, 7]


@pytest.mark.parametrize("include_usage", [False, True], ids=["plain", "include_usage"])
def test_a_stream_after_a_cached_json_answer_is_replayed_as_sse(router, clean_mock, include_usage):
    body = deterministic()
    ledger = Recorded(router.url, A)
    first = chat(router.url, A, body)
    assert first.status_code == 200, first.text
    ledger.wait_for(1)
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    replay = stream(router.url, A, {**body, **extra})
    assert replay.status_code == 200, replay.text
    assert replay.headers["x-tollgate-cache"] == "hit"
    assert replay.headers["content-type"].startswith("text/event-stream")
    events = sse_events(replay.text)
    assert events[-1] == (None, "[DONE]")
    assert openai_stream_text(replay.text) == content_of(first)
    chunks = [json.loads(d) for _, d in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    usage_chunks = [c for c in chunks if c.get("usage")]
    if include_usage:
        assert [c["choices"] for c in usage_chunks] == [[]]
        assert usage_chunks[0]["usage"] == first.json()["usage"]
    else:
        assert usage_chunks == []
    assert len(clean_mock.requests()) == 1
    ledger.wait_for(1)


def test_a_json_request_after_a_cached_stream_is_served_the_assembled_answer(router, clean_mock):
    body = deterministic()
    ledger = Recorded(router.url, A)
    streamed = stream(router.url, A, body)
    assert streamed.status_code == 200 and streamed.headers["x-tollgate-cache"] == "miss"
    ledger.wait_for(1)
    replay = chat(router.url, A, body)
    assert replay.status_code == 200, replay.text
    assert replay.headers["x-tollgate-cache"] == "hit"
    assert content_of(replay) == openai_stream_text(streamed.text)
    assert replay.json()["choices"][0]["finish_reason"] == "stop"
    assert len(clean_mock.requests()) == 1
    ledger.wait_for(1)


def test_an_anthropic_answer_is_cached_and_replayed_as_json_and_as_sse(router, clean_mock):
    body = messages_body(unique(EASY_PROMPT), temperature=0)
    ledger = Recorded(router.url, A)
    first = messages(router.url, A, body)
    assert first.status_code == 200 and first.headers["x-tollgate-cache"] == "miss", first.text
    ledger.wait_for(1)
    again = messages(router.url, A, body)
    assert again.headers["x-tollgate-cache"] == "hit"
    assert again.json() == first.json()
    replay = stream(router.url, A, body, path="/v1/messages")
    assert replay.headers["x-tollgate-cache"] == "hit"
    names = [name for name, _ in sse_events(replay.text)]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    assert anthropic_stream_text(replay.text) == content_of(first)
    assert len(clean_mock.requests()) == 1
    ledger.wait_for(2)


def test_another_tenant_sending_the_same_request_never_gets_the_first_tenants_entry(router, clean_mock):
    body = deterministic()
    ledger_a, ledger_b = Recorded(router.url, A), Recorded(router.url, B)
    a = chat(router.url, A, body)
    assert a.headers["x-tollgate-cache"] == "miss"
    ledger_a.wait_for(1)
    assert chat(router.url, A, body).headers["x-tollgate-cache"] == "hit"
    ledger_a.wait_for(1)
    b = chat(router.url, B, body)
    assert b.status_code == 200, b.text
    assert b.headers["x-tollgate-cache"] == "miss"
    assert b.headers["x-tollgate-model"] == a.headers["x-tollgate-model"], "same model, so the same key but for the tenant"
    assert len(clean_mock.requests()) == 2, "the provider answered B itself"
    # B's own cache works: its miss above was isolation, not a broken cache.
    ledger_b.wait_for(1)
    assert chat(router.url, B, body).headers["x-tollgate-cache"] == "hit"
    assert len(clean_mock.requests()) == 2
    ledger_b.wait_for(1)


def test_with_the_doorkeeper_an_answer_is_stored_on_the_second_sighting_and_hits_on_the_third(router, clean_mock):
    body = deterministic()
    ledger = Recorded(router.url, DK)
    outcomes = []
    for _ in range(4):
        outcomes.append(chat(router.url, DK, body).headers["x-tollgate-cache"])
        ledger.wait_for(1)
    assert outcomes == ["miss", "miss", "hit", "hit"]
    assert len(clean_mock.requests()) == 2


@pytest.mark.parametrize("temperature", [0.7, None], ids=["temperature_0.7", "no_temperature"])
def test_a_sampled_request_bypasses_the_cache(router, clean_mock, temperature):
    prompt = unique(EASY_PROMPT)
    body = chat_body(prompt) if temperature is None else chat_body(prompt, temperature=temperature)
    ledger = Recorded(router.url, A)
    answers = [chat(router.url, A, body)]
    ledger.wait_for(1)
    answers.append(chat(router.url, A, body))
    assert [a.headers["x-tollgate-cache"] for a in answers] == ["bypass; reason=sampled"] * 2
    assert len(clean_mock.requests()) == 2


def test_no_store_neither_reads_nor_writes_the_cache(router, clean_mock):
    body = deterministic()
    no_store = {"cache-control": "no-store"}
    ledger = Recorded(router.url, A)
    first = chat(router.url, A, body, headers=no_store)
    assert first.headers["x-tollgate-cache"] == "bypass; reason=no_store"
    ledger.wait_for(1)
    plain = chat(router.url, A, body)
    assert plain.headers["x-tollgate-cache"] == "miss", "the no-store answer was not stored"
    ledger.wait_for(1)
    again = chat(router.url, A, body, headers=no_store)
    assert again.headers["x-tollgate-cache"] == "bypass; reason=no_store", "the stored answer is not served"
    assert len(clean_mock.requests()) == 3


def test_no_cache_skips_the_read_but_stores_the_fresh_answer(router, clean_mock):
    body = deterministic()
    ledger = Recorded(router.url, A)
    assert chat(router.url, A, body).headers["x-tollgate-cache"] == "miss"
    ledger.wait_for(1)
    fresh = chat(router.url, A, body, headers={"cache-control": "no-cache"})
    assert fresh.status_code == 200
    assert fresh.headers["x-tollgate-cache"] == "bypass; reason=no_cache"
    assert len(clean_mock.requests()) == 2, "no-cache went to the provider although an entry existed"
    ledger.wait_for(1)
    assert chat(router.url, A, body).headers["x-tollgate-cache"] == "hit"
    assert len(clean_mock.requests()) == 2
    ledger.wait_for(1)


def test_no_cache_stores_without_waiting_for_the_doorkeepers_second_sighting(router, clean_mock):
    body = deterministic()
    ledger = Recorded(router.url, DK)
    first = chat(router.url, DK, body, headers={"cache-control": "max-age=0, no-cache"})
    assert first.headers["x-tollgate-cache"] == "bypass; reason=no_cache"
    ledger.wait_for(1)
    assert chat(router.url, DK, body).headers["x-tollgate-cache"] == "hit"
    assert len(clean_mock.requests()) == 1
    ledger.wait_for(1)


def test_a_truncated_answer_is_not_stored(router, clean_mock):
    body = deterministic(max_tokens=3)
    ledger = Recorded(router.url, A)
    first = chat(router.url, A, body)
    assert first.json()["choices"][0]["finish_reason"] == "length"
    ledger.wait_for(1)
    assert chat(router.url, A, body).headers["x-tollgate-cache"] == "miss"
    assert len(clean_mock.requests()) == 2
