"""Provider failures, on both hosts: the fallback chain, what the client gets
when it runs out, budget holds released, fallback or broken answers never
cached, and a client that gives up while the provider is still thinking.

Timeouts need an upstream timeout far below the session hosts' (60 s), so
those tests share one extra host started with 1 s (the Worker's
UPSTREAM_TIMEOUT_MS, the filter's `upstream_timeout_ms`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import httpx2 as httpx_sdk  # the HTTP client the anthropic SDK uses
import openai
import pytest

import hosts
import tenants
from calls import (
    EASY_PROMPT,
    cost_micros,
    micros,
    replayed_usage,
    Recorded,
    assert_error,
    bearer,
    chat,
    chat_body,
    content_of,
    messages,
    messages_body,
    openai_stream_text,
    settled_usage,
    spent,
    sse_events,
    unique,
    upstream_calls,
    upstream_end,
)
from hosts import HOSTS, Router
from hosts import Mock
from prereq import running

KEY = tenants.FAULTS_KEY
FIRST, SECOND = (m.split("/", 1)[1] for m in tenants.CHEAP_OPENAI)  # gpt-4o-mini, gpt-4.1-nano
FIRST_ANTHROPIC, SECOND_ANTHROPIC = (m.split("/", 1)[1] for m in tenants.CHEAP_ANTHROPIC)
UPSTREAM_TIMEOUT_MS = 1000


def cheap(prompt: str | None = None, **fields) -> dict:
    """A deterministic (cacheable) request for the cheap tier's chain."""
    return chat_body(prompt or unique(EASY_PROMPT), model="tollgate/cheap", temperature=0, **fields)


def calls(mock: Mock) -> list[tuple[str | None, int]]:
    return [(r["model"], r["status"]) for r in mock.requests()]


def stream(url: str, body: dict) -> httpx.Response:
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, headers=bearer(KEY),
                      timeout=60) as r:
        r.read()
    return r


@pytest.fixture(scope="module", params=HOSTS)
def slow_router(request, mock: Mock, run_dir: Path) -> Iterator[Router]:
    """A second host of the same kind as `router`, with a 1 s upstream
    timeout and only the faults tenant."""
    def start():
        if request.param == "worker":
            return hosts.start_worker(
                mock,
                run_dir / "worker-upstream-timeout",
                tenants=[(tenants.FAULTS, [KEY])],
                first_one_by_one=False,
                variables={"UPSTREAM_TIMEOUT_MS": str(UPSTREAM_TIMEOUT_MS)},
            )
        return hosts.start_envoy(
            mock,
            run_dir / "envoy-upstream-timeout",
            name="envoy-upstream-timeout",
            tenants=[(tenants.FAULTS, [KEY])],
            upstream_timeout_ms=UPSTREAM_TIMEOUT_MS,
        )

    with running(start) as host:
        yield Router(name=request.param, host=host)


# 401/403 too: they are about the router's key for that provider, which the
# client can neither see nor fix, so they count as a failed attempt.
@pytest.mark.parametrize("status", [429, 500, 503, 408, 401, 403])
def test_a_retryable_error_from_the_first_model_falls_back_to_the_next(router, clean_mock, status):
    clean_mock.faults(f"status:{status}", model=FIRST)
    before = settled_usage(router.url, KEY)
    r = chat(router.url, KEY, cheap())
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-fallbacks"] == "1"
    assert r.headers["x-tollgate-model"] == f"openai/{SECOND}"
    assert content_of(r).startswith(f"[mock:{SECOND}]")
    assert calls(clean_mock) == [(FIRST, status), (SECOND, 200)]
    first, second = clean_mock.requests()
    assert {**first["body"], "model": SECOND} == second["body"], "the fallback gets the same request"
    after = settled_usage(router.url, KEY)
    assert after["budgets"][0]["spent_tokens"] - before["budgets"][0]["spent_tokens"] == r.json()["usage"][
        "total_tokens"
    ], "charged once, for the answer that came back"


def test_an_anthropic_request_falls_back_along_its_anthropic_chain(router, clean_mock):
    clean_mock.faults("status:529", model=FIRST_ANTHROPIC)
    r = messages(router.url, KEY, messages_body(unique(EASY_PROMPT), model="tollgate/cheap", temperature=0))
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-fallbacks"] == "1"
    assert r.headers["x-tollgate-model"] == f"anthropic/{SECOND_ANTHROPIC}"
    assert content_of(r).startswith(f"[mock:{SECOND_ANTHROPIC}]")
    assert calls(clean_mock) == [(FIRST_ANTHROPIC, 529), (SECOND_ANTHROPIC, 200)]
    assert all(r["path"] == "/anthropic/v1/messages" for r in clean_mock.requests())


def test_a_non_retryable_provider_error_is_passed_through_without_fallback(router, clean_mock):
    clean_mock.faults("status:400", model=FIRST)
    before = settled_usage(router.url, KEY)
    r = chat(router.url, KEY, cheap())
    assert r.status_code == 400
    assert calls(clean_mock) == [(FIRST, 400)]
    # What the provider said, as it said it.
    direct = httpx.post(clean_mock.base_url("openai") + "/chat/completions", json=cheap(), timeout=30,
                        headers={"x-mock-fault": "status:400"})
    assert r.json() == direct.json()
    assert "x-tollgate-fallbacks" not in r.headers
    assert r.headers["x-tollgate-model"] == f"openai/{FIRST}"
    assert spent(settled_usage(router.url, KEY)) == spent(before), "a refused request costs nothing"


def test_when_every_model_fails_the_client_gets_502_and_the_hold_is_released(router, clean_mock):
    clean_mock.faults("status:500")
    before = settled_usage(router.url, KEY)
    r = chat(router.url, KEY, cheap())
    error = assert_error(r, 502, "upstream_failed")
    assert "cheap" in error["message"]
    assert r.headers["x-tollgate-fallbacks"] == "1"
    assert calls(clean_mock) == [(FIRST, 500), (SECOND, 500)]
    after = settled_usage(router.url, KEY)
    assert spent(after) == spent(before)


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_when_every_provider_refuses_the_routers_credential_the_client_gets_502_not_the_providers_401(
    router, clean_mock, api
):
    clean_mock.faults("status:401")
    before = settled_usage(router.url, KEY)
    if api == "openai":
        r = chat(router.url, KEY, cheap())
        models = [FIRST, SECOND]
    else:
        r = messages(router.url, KEY, messages_body(unique(EASY_PROMPT), model="tollgate/cheap", temperature=0))
        models = [FIRST_ANTHROPIC, SECOND_ANTHROPIC]
    assert calls(clean_mock) == [(m, 401) for m in models]
    error = assert_error(r, 502, "upstream_failed")
    assert error["message"].endswith("HTTP 401"), error["message"]
    assert r.headers["x-tollgate-fallbacks"] == "1"
    # Nothing of the provider's own 401 answer reaches the client.
    path = "/chat/completions" if api == "openai" else "/messages"
    direct = httpx.post(clean_mock.base_url(api) + path, json={"model": models[0], "max_tokens": 8,
                        "messages": [{"role": "user", "content": "hi"}]}, headers={"x-mock-fault": "status:401"},
                        timeout=30)
    assert direct.status_code == 401
    provider_message = direct.json()["error"]["message"]
    assert provider_message not in r.text and "tollgate-mock" not in r.text, r.text
    assert spent(settled_usage(router.url, KEY)) == spent(before), "a request nobody answered costs nothing"


def test_a_fallback_answer_is_never_cached(router, clean_mock):
    body = cheap()
    ledger = Recorded(router.url, KEY)
    clean_mock.faults("status:500", model=FIRST, times=1)
    fallback = chat(router.url, KEY, body)
    assert fallback.headers["x-tollgate-model"] == f"openai/{SECOND}"
    ledger.wait_for(1)  # recorded: a cache fill for it would have landed
    repeat = chat(router.url, KEY, body)
    assert repeat.headers["x-tollgate-cache"] == "miss"
    assert content_of(repeat).startswith(f"[mock:{FIRST}]")
    assert calls(clean_mock) == [(FIRST, 500), (SECOND, 200), (FIRST, 200)]
    # The first model's own answer is cached as usual.
    ledger.wait_for(1)
    assert chat(router.url, KEY, body).headers["x-tollgate-cache"] == "hit"
    assert len(clean_mock.requests()) == 3
    ledger.wait_for(1)


def broken_before_the_client_saw_it_on_envoy(router, clean_mock, r) -> bool:
    """Envoy: once a provider's answer headers reached the filter, Envoy
    answers a broken provider connection itself, straight to the client and
    past the filters, so there is no fallback (envoy/README.md, "Differences
    from the Worker"). Checks what the client gets then: a 502, one provider
    call, and no hold left behind."""
    if router.name != "envoy":
        return False
    assert r.status_code == 502, r.text
    assert "reset" in r.text, r.text
    assert [(m["model"], m["completed"]) for m in clean_mock.requests()] == [(FIRST, False)]
    settled_usage(router.url, KEY)
    return True


def test_a_json_answer_cut_off_mid_body_falls_back(router, clean_mock):
    clean_mock.faults("drop_after:1", model=FIRST)
    r = chat(router.url, KEY, cheap())
    if broken_before_the_client_saw_it_on_envoy(router, clean_mock, r):
        return
    assert r.status_code == 200, r.text
    assert content_of(r).startswith(f"[mock:{SECOND}]")
    assert r.headers["x-tollgate-fallbacks"] == "1"
    assert [(m["model"], m["completed"]) for m in clean_mock.requests()] == [(FIRST, False), (SECOND, True)]
    settled_usage(router.url, KEY)


def test_a_stream_dropped_before_its_first_byte_falls_back(router, clean_mock):
    clean_mock.faults("drop_after:0", model=FIRST)
    r = stream(router.url, cheap())
    if broken_before_the_client_saw_it_on_envoy(router, clean_mock, r):
        return
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-fallbacks"] == "1"
    assert r.headers["x-tollgate-model"] == f"openai/{SECOND}"
    assert openai_stream_text(r.text).startswith(f"[mock:{SECOND}]")
    assert sse_events(r.text)[-1] == (None, "[DONE]")
    assert [(m["model"], m["completed"]) for m in clean_mock.requests()] == [(FIRST, False), (SECOND, True)]
    settled_usage(router.url, KEY)


def test_a_stream_dropped_midway_is_not_cached_and_its_hold_is_settled(router, clean_mock):
    body = cheap()
    ledger = Recorded(router.url, KEY)
    clean_mock.faults("drop_after:5", model=FIRST, times=1)
    broken = httpx.Client(timeout=60)
    try:
        with broken.stream("POST", router.url + "/v1/chat/completions", json={**body, "stream": True},
                           headers=bearer(KEY)) as r:
            assert r.status_code == 200
            try:
                text = r.read().decode()
            except httpx.TransportError:
                text = ""
    finally:
        broken.close()
    assert "[DONE]" not in text, "a broken stream must not look finished"
    assert [(m["model"], m["completed"]) for m in clean_mock.requests()] == [(FIRST, False)]
    ledger.wait_for(1)  # settled and recorded: a cache fill for it would have landed
    repeat = chat(router.url, KEY, body)
    assert repeat.headers["x-tollgate-cache"] == "miss"
    assert len(clean_mock.requests()) == 2


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_a_stream_dropped_midway_ends_in_an_error_for_the_client(router, clean_mock, api):
    """The router cannot fall back once bytes reached the client; it must
    then make the client see a failure, not a clean but short answer."""
    prompt = unique(EASY_PROMPT)
    if api == "openai":
        clean_mock.faults("drop_after:5", model=FIRST)
        client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.APIError):
            chunks = client.chat.completions.create(
                model="tollgate/cheap", messages=[{"role": "user", "content": prompt}], stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            print(f"the client got a clean end after {text!r}")
    else:
        clean_mock.faults("drop_after:5", model=FIRST_ANTHROPIC)
        client = anthropic.Anthropic(base_url=router.url, api_key=KEY, max_retries=0)
        failure: tuple[type[BaseException], ...] = (anthropic.APIError,)
        if router.name == "envoy":
            # Envoy resets the client's stream when the provider's breaks
            # after the answer started, before the filter can add the SSE
            # error event the Worker sends; the Anthropic SDK then raises the
            # transport error itself (envoy/README.md, "Differences from the
            # Worker"). Still a failure, never a clean short answer.
            failure += (httpx_sdk.TransportError,)
        with pytest.raises(failure):
            with client.messages.stream(
                model="tollgate/cheap", max_tokens=256, messages=[{"role": "user", "content": prompt}]
            ) as s:
                message = s.get_final_message()
                print(f"the client got a clean end: {message!r}")
    assert [m["completed"] for m in clean_mock.requests()] == [False]


def test_a_client_that_gives_up_on_a_json_answer_leaves_no_hold_and_is_charged_what_the_provider_generated(
    router, clean_mock
):
    """The client hangs up while the provider is still silent (it answers
    after 3 s); what matters is that the hold is then settled at once, not
    left out for the hold's hour-long lifetime.

    Worker: workerd does not tell a Worker that its client left before the
    response headers (checked under wrangler dev, also past its proxy), so
    the call runs on inside waitUntil and is charged what the provider
    really generated. Envoy: the client's reset cancels the provider call
    (envoy/README.md, "Differences from the Worker"), so the provider never
    finishes the answer and the hold is settled with no more than it would
    have cost."""
    body = cheap()
    marker = body["messages"][0]["content"]
    before = settled_usage(router.url, KEY)
    clean_mock.faults("slow:3000", model=FIRST, times=1)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(router.url + "/v1/chat/completions", json=body, headers=bearer(KEY),
                   timeout=httpx.Timeout(0.5, connect=10))
    (record,) = upstream_calls(clean_mock, marker)
    assert record["model"] == FIRST, "the request reached the provider, so a hold was taken"
    after = settled_usage(router.url, KEY, timeout=10)
    record = upstream_end(clean_mock, marker)
    answered = replayed_usage(clean_mock, record)
    charged_tokens = after["budgets"][0]["spent_tokens"] - before["budgets"][0]["spent_tokens"]
    charged_micros = micros(after["budgets"][0]["spent_usd"]) - micros(before["budgets"][0]["spent_usd"])
    full_micros = cost_micros(FIRST, answered["prompt_tokens"], answered["completion_tokens"])
    if router.name == "envoy":
        assert record["client_aborted"] is True and record["completed"] is False, (
            f"Envoy kept the provider call after its client left: {record}"
        )
        assert 0 <= charged_tokens <= answered["prompt_tokens"] + answered["completion_tokens"], (before, after)
        assert 0 <= charged_micros <= full_micros, (before, after, answered)
        return
    assert charged_tokens == answered["prompt_tokens"] + answered["completion_tokens"], (before, after, answered)
    assert charged_micros == full_micros


# ---------------------------------------------------------------- timeouts (their own host)


def test_a_provider_slower_than_the_timeout_is_abandoned_for_the_next_model(slow_router, clean_mock):
    clean_mock.faults("slow:6000", model=FIRST)
    started = time.monotonic()
    r = chat(slow_router.url, KEY, cheap())
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert content_of(r).startswith(f"[mock:{SECOND}]")
    assert r.headers["x-tollgate-fallbacks"] == "1"
    # Gave up on the first model at the timeout, not after its 6 s.
    assert UPSTREAM_TIMEOUT_MS / 1000 <= took < 6, took
    assert calls(clean_mock) == [(FIRST, 200), (SECOND, 200)]
    assert [m["completed"] for m in clean_mock.requests()] == [False, True]
    settled_usage(slow_router.url, KEY)


def test_a_provider_slow_but_within_the_timeout_is_waited_for(slow_router, clean_mock):
    clean_mock.faults("slow:300", model=FIRST)
    r = chat(slow_router.url, KEY, cheap())
    assert r.status_code == 200, r.text
    assert content_of(r).startswith(f"[mock:{FIRST}]")
    assert "x-tollgate-fallbacks" not in r.headers
    assert calls(clean_mock) == [(FIRST, 200)]


def test_when_every_model_times_out_the_client_gets_503_and_the_hold_is_released(slow_router, clean_mock):
    clean_mock.faults("slow:6000")
    before = settled_usage(slow_router.url, KEY)
    started = time.monotonic()
    r = chat(slow_router.url, KEY, cheap())
    took = time.monotonic() - started
    error = assert_error(r, 503, "upstream_timeout")
    assert "cheap" in error["message"]
    assert r.headers.get("retry-after", "").isdigit()
    # One timeout per model, without waiting out either 6 s fault.
    assert 2 * UPSTREAM_TIMEOUT_MS / 1000 <= took < 6, took
    assert [m["model"] for m in clean_mock.requests()] == [FIRST, SECOND]
    assert spent(settled_usage(slow_router.url, KEY)) == spent(before)


def test_a_timeout_then_a_server_error_is_502_not_503(slow_router, clean_mock):
    clean_mock.faults("slow:6000", model=FIRST)
    clean_mock.faults("status:500", model=SECOND)
    r = chat(slow_router.url, KEY, cheap())
    assert_error(r, 502, "upstream_failed")
    assert json.loads(r.text)["error"]["message"].endswith("HTTP 500")
