"""Streamed answers, on both hosts: what is charged, what the client
sees, and what happens when the client hangs up.

Each test uses its own single-tier tenant (tenants.py: OpenAI requests go
to gpt-4o, Anthropic ones to claude-sonnet-4-5), metered by a daily limit
far above what the test spends, cache off.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx

import tenants as registry
from calls import cost_micros, micros, replayed_usage, settled_usage, upstream_calls, upstream_end
from calls import sse_events as parse_sse

ANTHROPIC_VERSION = "2023-06-01"


# ---------------------------------------------------------------- helpers


def settled(url: str, key: str) -> tuple[int, int]:
    """(spent micro-dollars, spent tokens) of the tenant's daily limit, once
    nothing is reserved any more."""
    (daily,) = settled_usage(url, key, timeout=30)["budgets"]
    return micros(daily["spent_usd"]), daily["spent_tokens"]


class TimedStream:
    """Reads an SSE response as it arrives, noting when each event landed."""

    def __init__(self, response: httpx.Response, started: float):
        self.response = response
        self.started = started
        self.buffer = ""
        self.events: list[tuple[float, str | None, str]] = []  # (seconds since start, event, data)
        self._chunks = response.iter_bytes()

    def read_events(self, count: int | None = None) -> None:
        """Read until `count` more events arrived (None: to the end)."""
        target = None if count is None else len(self.events) + count
        for chunk in self._chunks:
            now = time.monotonic() - self.started
            self.buffer += chunk.decode()
            while "\n\n" in self.buffer:
                block, self.buffer = self.buffer.split("\n\n", 1)
                for name, data in parse_sse(block + "\n\n"):
                    self.events.append((now, name, data))
            if target is not None and len(self.events) >= target:
                return

    def data(self) -> list[str]:
        return [d for _, _, d in self.events]


def openai_stream_body(marker: str, **extra) -> dict:
    return {
        "model": "tollgate/auto",
        "messages": [{"role": "user", "content": f"{marker}: tell me something about streams."}],
        "stream": True,
        **extra,
    }


def anthropic_stream_body(marker: str, **extra) -> dict:
    return {
        "model": "tollgate/auto",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": f"{marker}: tell me something about streams."}],
        "stream": True,
        **extra,
    }


def anthropic_headers(key: str) -> dict:
    return {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}


def content_of(openai_chunks: list[dict]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in openai_chunks if c.get("choices")
    )


# ---------------------------------------------------------------- OpenAI


def test_an_openai_stream_is_charged_its_real_usage_without_showing_the_injected_usage_chunk(router, clean_mock):
    key = registry.STREAM_OPENAI_KEY
    spent_before, tokens_before = settled(router.url, key)
    marker = f"stream-plain-{uuid.uuid4().hex[:10]}"
    with httpx.Client(timeout=60) as client:
        r = client.post(
            router.url + "/v1/chat/completions",
            json=openai_stream_body(marker),
            headers={"authorization": f"Bearer {key}"},
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-tollgate-model"] == "openai/gpt-4o"
    data = [d for _, d in parse_sse(r.text)]
    assert data[-1] == "[DONE]", data[-3:]
    chunks = [json.loads(d) for d in data[:-1]]
    # The router asked the provider for usage; the client did not, so the
    # usage-only chunk (choices: []) must not reach it.
    assert all(c.get("choices") for c in chunks), [c for c in chunks if not c.get("choices")]
    assert not [c for c in chunks if c.get("usage")], "a usage the client did not ask for reached it"
    assert content_of(chunks).startswith("[mock:gpt-4o] ")

    (record,) = upstream_calls(clean_mock, marker)
    assert record["stream"] is True
    assert record["body"]["stream_options"]["include_usage"] is True, record["body"]
    assert record["completed"] and not record["client_aborted"]

    usage = replayed_usage(clean_mock, record)
    spent, tokens = settled(router.url, key)
    assert spent - spent_before == cost_micros("gpt-4o", usage["prompt_tokens"], usage["completion_tokens"])
    assert tokens - tokens_before == usage["prompt_tokens"] + usage["completion_tokens"]


def test_an_openai_client_that_asks_for_usage_gets_the_usage_chunk_and_is_charged_exactly_that(
    router, clean_mock
):
    key = registry.STREAM_OPENAI_KEY
    spent_before, tokens_before = settled(router.url, key)
    marker = f"stream-usage-{uuid.uuid4().hex[:10]}"
    body = openai_stream_body(marker, stream_options={"include_usage": True}, max_tokens=20)
    r = httpx.post(
        router.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=60
    )
    assert r.status_code == 200, r.text
    data = [d for _, d in parse_sse(r.text)]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    usage_chunks = [c for c in chunks if c.get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0]["choices"] == [], usage_chunks
    usage = usage_chunks[0]["usage"]
    # max_tokens 20 caps the answer; the mock counts one token per word.
    assert usage["completion_tokens"] == len(content_of(chunks).split()) <= 20

    (record,) = upstream_calls(clean_mock, marker)
    assert record["body"]["stream_options"]["include_usage"] is True
    spent, tokens = settled(router.url, key)
    assert spent - spent_before == cost_micros("gpt-4o", usage["prompt_tokens"], usage["completion_tokens"])
    assert tokens - tokens_before == usage["total_tokens"]


def test_streamed_chunks_reach_the_client_as_the_provider_sends_them(router, clean_mock):
    delay_ms = 200
    key = registry.STREAM_PACE_KEY
    marker = f"stream-pace-{uuid.uuid4().hex[:10]}"
    clean_mock.faults(f"chunk_delay:{delay_ms}", model="gpt-4o", times=1)
    body = openai_stream_body(marker, max_tokens=8)
    with httpx.Client(timeout=60) as client:
        started = time.monotonic()
        with client.stream(
            "POST", router.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        ) as r:
            assert r.status_code == 200, r.read()
            stream = TimedStream(r, started)
            stream.read_events()
        ended = time.monotonic() - started
    (record,) = upstream_calls(clean_mock, marker)
    assert f"chunk_delay:{delay_ms}" in record["faults"], record
    times = [t for t, _, _ in stream.events]
    # role chunk, 8 words, finish chunk, [DONE] (the usage chunk is stripped).
    assert len(times) == 11, stream.data()
    first_content = next(t for t, _, d in stream.events if '"content":"[mock:' in d)
    # Delivered as it arrives: the first words came long before the end, and
    # consecutive events are spaced like the provider spaced them, not
    # bunched up at the end as a buffered answer would be.
    assert first_content < ended / 2, (first_content, ended, times)
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    median_gap = gaps[len(gaps) // 2]
    assert median_gap >= delay_ms / 1000 / 2, (gaps, times)
    assert times[-1] - times[0] >= (len(times) - 2) * delay_ms / 1000 / 2, times


# ---------------------------------------------------------------- Anthropic


def test_an_anthropic_stream_is_charged_the_usage_of_message_start_and_message_delta(router, clean_mock):
    key = registry.STREAM_ANTHROPIC_KEY
    spent_before, tokens_before = settled(router.url, key)
    marker = f"stream-anthropic-{uuid.uuid4().hex[:10]}"
    r = httpx.post(
        router.url + "/v1/messages", json=anthropic_stream_body(marker), headers=anthropic_headers(key), timeout=60
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-model"] == "anthropic/claude-sonnet-4-5"
    events = parse_sse(r.text)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    start = json.loads(events[0][1])["message"]["usage"]
    (delta,) = [json.loads(d) for n, d in events if n == "message_delta"]
    input_tokens, output_tokens = start["input_tokens"], delta["usage"]["output_tokens"]
    text = "".join(json.loads(d)["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text.startswith("[mock:claude-sonnet-4-5] ")
    assert output_tokens == len(text.split())

    (record,) = upstream_calls(clean_mock, marker)
    assert record["path"] == "/anthropic/v1/messages" and record["completed"]
    assert "stream_options" not in record["body"], "stream_options is OpenAI's; Anthropic would refuse it"
    spent, tokens = settled(router.url, key)
    assert spent - spent_before == cost_micros("claude-sonnet-4-5", input_tokens, output_tokens)
    assert tokens - tokens_before == input_tokens + output_tokens


# ---------------------------------------------------------------- client disconnect


def long_answer_marker(mock, prefix: str, path: str, body_for, min_words: int = 30) -> str:
    """A marker whose prompt the mock answers with at least `min_words`
    words (it picks 12 to 40 from a hash of the prompt), asked of the mock
    directly, whose log is then cleared.

    The router charges a stream cut short for the output it saw, estimated
    with a tokenizer, while the mock counts one token per word: its
    `[mock:<model>]` tag alone is a dozen tokens to the estimate. Against a
    12-word answer, a cut after a few words can then be charged more than
    the whole answer reports; against a long one, it cannot."""
    for _ in range(50):
        marker = f"{prefix}-{uuid.uuid4().hex[:10]}"
        body = dict(body_for(marker), stream=False)
        r = httpx.post(mock.url + path, json=body, headers={"x-api-key": "sk-mock"}, timeout=30)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        if usage.get("completion_tokens", usage.get("output_tokens", 0)) > min_words:
            mock.clear_requests()
            return marker
    raise AssertionError(f"no prompt in 50 got an answer of more than {min_words} words")


def hang_up_after(url: str, path: str, body: dict, headers: dict, events: int) -> tuple[list, float]:
    """Stream `body`, read `events` SSE events, then close the connection.
    Returns the events read and the seconds from start to hang-up."""
    started = time.monotonic()
    client = httpx.Client(timeout=60)
    try:
        with client.stream("POST", url + path, json=body, headers=headers) as r:
            assert r.status_code == 200, r.read()
            stream = TimedStream(r, started)
            stream.read_events(events)
        # Leaving the block unread closes the connection: the client is gone.
    finally:
        client.close()
    return stream.events, time.monotonic() - started


def test_a_client_that_hangs_up_mid_stream_is_charged_only_for_what_was_used_and_the_upstream_is_cancelled(
    router, clean_mock
):
    delay_ms = 300
    key = registry.STREAM_ABORT_KEY
    spent_before, _ = settled(router.url, key)
    marker = long_answer_marker(
        clean_mock, "stream-abort", "/openai/v1/chat/completions", lambda m: openai_stream_body(m, model="gpt-4o")
    )
    clean_mock.faults(f"chunk_delay:{delay_ms}", model="gpt-4o", times=1)
    seen, hung_up_at = hang_up_after(
        router.url,
        "/v1/chat/completions",
        openai_stream_body(marker),
        {"authorization": f"Bearer {key}"},
        events=3,
    )
    words_seen = content_of([json.loads(d) for _, _, d in seen if d.startswith("{")]).split()
    assert 1 <= len(words_seen) < 5, seen

    record = upstream_end(clean_mock, marker)
    full = replayed_usage(clean_mock, record)
    full_cost = cost_micros("gpt-4o", full["prompt_tokens"], full["completion_tokens"])
    # The router stopped reading and cancelled the provider's response: the
    # answer was far from done when the client left.
    assert full["completion_tokens"] > 30, full
    assert record["client_aborted"] is True and record["completed"] is False, (
        f"the {router.name} kept reading the provider's stream after its client hung up at {hung_up_at:.1f}s: {record}"
    )

    spent, _ = settled(router.url, key)
    charged = spent - spent_before
    assert charged > 0, "an aborted stream must still be charged for the prompt and the output sent"
    assert charged < full_cost, f"charged {charged} micro-dollars, as much as the full answer ({full_cost})"
    # At least the words that reached the client (one token each at the mock).
    assert charged >= cost_micros("gpt-4o", 0, len(words_seen))


def test_an_anthropic_client_that_hangs_up_mid_stream_is_charged_at_least_for_the_output_it_received(
    router, clean_mock
):
    delay_ms = 300
    key = registry.STREAM_ABORT_ANTHROPIC_KEY
    spent_before, _ = settled(router.url, key)
    marker = long_answer_marker(
        clean_mock, "stream-abort-anthropic", "/anthropic/v1/messages",
        lambda m: anthropic_stream_body(m, model="claude-sonnet-4-5"),
    )
    clean_mock.faults(f"chunk_delay:{delay_ms}", model="claude-sonnet-4-5", times=1)
    # message_start, content_block_start, ping, then 5 words.
    seen, hung_up_at = hang_up_after(
        router.url, "/v1/messages", anthropic_stream_body(marker), anthropic_headers(key), events=8
    )
    start = json.loads(next(d for _, n, d in seen if n == "message_start"))["message"]["usage"]
    words_seen = "".join(json.loads(d)["delta"]["text"] for _, n, d in seen if n == "content_block_delta").split()
    assert len(words_seen) >= 4, seen

    record = upstream_end(clean_mock, marker)
    assert record["client_aborted"] is True and record["completed"] is False, (
        f"the {router.name} kept reading the provider's stream after its client hung up at {hung_up_at:.1f}s: {record}"
    )
    full = replayed_usage(clean_mock, record)
    full_cost = cost_micros("claude-sonnet-4-5", full["input_tokens"], full["output_tokens"])
    assert full["output_tokens"] > 30, full

    spent, _ = settled(router.url, key)
    charged = spent - spent_before
    assert charged < full_cost, f"charged {charged} micro-dollars, as much as the full answer ({full_cost})"
    # The prompt plus at least every word the client received (message_start's
    # output_tokens is a placeholder 1; the real count only comes at the end).
    used = cost_micros("claude-sonnet-4-5", start["input_tokens"], len(words_seen))
    assert charged >= used, (
        f"charged {charged} micro-dollars for a stream cut after {len(words_seen)} words; the prompt "
        f"({start['input_tokens']} tokens) and those words alone cost {used}"
    )
