"""`POST /v1/responses` (OpenAI's Responses API) on both hosts, as the
official OpenAI SDK and a plain HTTP client see it: classified and routed
like chat, to OpenAI's own models only; reserved, charged at list price
from the answer's `usage` (JSON) or its `response.completed` /
`response.incomplete` event (streamed); cached when complete, deterministic
and free of function calls; refused with the documented errors.

The mock answers a Responses request with the chat endpoints' text
(`[mock:<model>]` and a sentence chosen by the last user message, one
output token per word), cut to `max_output_tokens` (then `incomplete`), or,
when function tools are offered and the last input item is not a
`function_call_output`, with a call of the first tool
(crates/tollgate-mock/src/responses.rs)."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

import tenants
from calls import (
    EASY_PROMPT,
    TIMEOUT,
    Recorded,
    assert_error,
    assert_routed_headers,
    bearer,
    cost_micros,
    micros,
    settled_usage,
    unique,
)

KEY = tenants.RESPONSES_KEY  # cheap: mistral, gpt-4o-mini, haiku; premium: gpt-4o, sonnet; $50/day; cache
CLAMP_KEY = tenants.RESPONSES_CLAMP_KEY  # same tiers, 3,000 tokens a day, clamp_max_tokens, no cache

# The cheap tier's only model that speaks the Responses API.
CHEAP_MODEL = "gpt-4o-mini"
OPENAI_MODELS = ("gpt-4o-mini", "gpt-4o")

# A prompt whose mock answer is 37 words (tag included): longer than the
# 16-token cap the tests set (the real API's smallest `max_output_tokens`).
LONG_ANSWER_PROMPT = "Describe the sea in many words."
LONG_ANSWER_WORDS = 37

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}


def sdk(router, key: str = KEY) -> openai.OpenAI:
    # No retries: a retried request would reach the mock twice.
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key=key, max_retries=0)


def spent_micros(report: dict) -> int:
    """Micro-dollars the tenant's one budget has spent."""
    [budget] = report["budgets"]
    return micros(budget["spent_usd"])


def mock_answer(mock, record: dict) -> dict:
    """The mock's JSON answer to a request it recorded, asked again directly
    and not streamed (it answers the same body the same way)."""
    r = httpx.post(mock.url + record["path"], json={**record["body"], "stream": False}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def post_responses(url: str, key: str, body: dict | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(url + "/v1/responses", content=body, headers=bearer(key), timeout=TIMEOUT)
    return httpx.post(url + "/v1/responses", json=body, headers=bearer(key), timeout=TIMEOUT)


def test_the_openai_sdk_gets_a_response_from_the_cheap_tiers_openai_model_charged_at_its_list_price(
    router, clean_mock
):
    client = sdk(router)
    prompt = unique(EASY_PROMPT)
    ledger = Recorded(router.url, KEY)
    raw = client.responses.with_raw_response.create(model="tollgate/auto", input=prompt)
    after = ledger.wait_for(1)
    response = raw.parse()

    assert raw.status_code == 200
    assert response.status == "completed"
    assert response.output_text.startswith(f"[mock:{CHEAP_MODEL}] "), response.output_text
    assert response.model == CHEAP_MODEL
    assert_routed_headers(raw)
    assert raw.headers["x-tollgate-route"] == "auto"
    assert raw.headers["x-tollgate-tier"] == "cheap"
    # The tier lists Mistral (OpenAI-compatible) first: only OpenAI's own
    # models speak the Responses API.
    assert raw.headers["x-tollgate-model"] == f"openai/{CHEAP_MODEL}"
    # No temperature: the API's default of 1 samples, so no cache.
    assert raw.headers["x-tollgate-cache"] == "bypass; reason=sampled"

    [record] = clean_mock.requests()
    assert record["path"] == "/openai/v1/responses"
    assert record["model"] == record["body"]["model"] == CHEAP_MODEL, "the provider gets the chosen model's name"
    assert record["body"]["input"] == prompt
    assert record["stream"] is False

    usage = response.usage
    assert usage.output_tokens == len(response.output_text.split())
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    price = cost_micros(CHEAP_MODEL, usage.input_tokens, usage.output_tokens)
    assert micros(raw.headers["x-tollgate-cost-usd"]) == price
    assert spent_micros(after) - spent_micros(ledger.start) == price


def test_a_streamed_response_arrives_as_text_deltas_and_is_charged_the_usage_of_its_completed_event(
    router, clean_mock
):
    client = sdk(router)
    prompt = unique(EASY_PROMPT)
    ledger = Recorded(router.url, KEY)
    raw = client.responses.with_raw_response.create(model="tollgate/auto", input=prompt, stream=True)
    assert raw.headers["content-type"].startswith("text/event-stream"), raw.headers
    assert raw.headers["x-tollgate-model"] == f"openai/{CHEAP_MODEL}"
    events = list(raw.parse())
    after = ledger.wait_for(1)

    kinds = [event.type for event in events]
    assert kinds[0] == "response.created", kinds
    assert kinds[-1] == "response.completed", kinds
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 3, "streamed piece by piece"

    [record] = clean_mock.requests()
    assert record["path"] == "/openai/v1/responses"
    assert (record["model"], record["stream"]) == (CHEAP_MODEL, True)
    plain = mock_answer(clean_mock, record)
    assert "".join(deltas) == plain["output"][0]["content"][0]["text"]

    final = events[-1].response
    assert final.status == "completed"
    assert final.output_text == "".join(deltas)
    assert final.usage is not None, "the completed event carries the usage"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        plain["usage"]["input_tokens"],
        plain["usage"]["output_tokens"],
    )
    price = cost_micros(CHEAP_MODEL, final.usage.input_tokens, final.usage.output_tokens)
    assert spent_micros(after) - spent_micros(ledger.start) == price

    # The SDK's streaming helper assembles the same answer.
    with client.responses.stream(model="tollgate/auto", input=prompt) as stream:
        helper_deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        helper_final = stream.get_final_response()
    ledger.wait_for(1)
    assert "".join(helper_deltas) == helper_final.output_text == final.output_text
    assert helper_final.usage.output_tokens == final.usage.output_tokens


def test_a_function_tool_round_trip_gets_a_call_then_text_and_the_call_is_never_cached(router, clean_mock):
    client = sdk(router)
    ask = {"role": "user", "content": unique("What is the weather in Paris right now?")}
    ledger = Recorded(router.url, KEY)

    def create(items: list):
        raw = client.responses.with_raw_response.create(
            model="tollgate/auto", input=items, tools=[WEATHER_TOOL], temperature=0
        )
        ledger.wait_for(1)
        return raw

    first = create([ask])
    [call] = first.parse().output
    assert call.type == "function_call", call
    assert (call.name, call.arguments, call.status) == ("get_weather", "{}", "completed")
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert first.headers["x-tollgate-cache"] == "miss"
    model = first.headers["x-tollgate-model"].split("/", 1)[1]
    assert model in OPENAI_MODELS, first.headers["x-tollgate-model"]
    usage = first.parse().usage
    assert micros(first.headers["x-tollgate-cost-usd"]) == cost_micros(model, usage.input_tokens, usage.output_tokens)
    # A deterministic request, but its answer calls a function: not stored.
    again = create([ask])
    assert again.headers["x-tollgate-cache"] == "miss"
    assert len(clean_mock.requests()) == 2

    # The client sends the call back with its output, as the SDK docs do
    # (`input += response.output`), and gets text.
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}
    follow_up = [ask, *first.parse().output, output]
    second = create(follow_up)
    answer = second.parse()
    assert answer.output[0].type == "message"
    answered_by = second.headers["x-tollgate-model"].split("/", 1)[1]
    assert answer.output_text.startswith(f"[mock:{answered_by}] "), answer.output_text
    assert second.headers["x-tollgate-cache"] == "miss"
    record = clean_mock.requests()[-1]
    assert record["path"] == "/openai/v1/responses"
    sent = record["body"]["input"]
    assert [item.get("type") for item in sent[1:]] == ["function_call", "function_call_output"], sent
    assert (sent[1]["call_id"], sent[1]["name"], sent[2]["call_id"]) == (call.call_id, "get_weather", call.call_id)
    assert [tool["name"] for tool in record["body"]["tools"]] == ["get_weather"]

    # A text answer to the tool's output is stored like any other.
    repeat = create(follow_up)
    assert repeat.headers["x-tollgate-cache"] == "hit"
    assert repeat.parse().output_text == answer.output_text
    assert len(clean_mock.requests()) == 3


def test_the_same_deterministic_request_is_a_cache_hit_never_across_previous_response_ids_and_a_stream_replays_it(
    router, clean_mock
):
    client = sdk(router)
    prompt = unique(EASY_PROMPT)
    ledger = Recorded(router.url, KEY)

    def create(**fields):
        raw = client.responses.with_raw_response.create(model="tollgate/auto", input=prompt, temperature=0, **fields)
        assert raw.status_code == 200
        ledger.wait_for(1)
        return raw

    first = create()
    assert first.headers["x-tollgate-cache"] == "miss"
    second = create()
    assert second.headers["x-tollgate-cache"] == "hit"
    assert second.content == first.content
    assert second.headers["x-tollgate-model"] == first.headers["x-tollgate-model"]
    assert second.headers["x-tollgate-cost-usd"] == "0.000000"
    assert second.headers["x-tollgate-saved-usd"] == first.headers["x-tollgate-cost-usd"]
    assert len(clean_mock.requests()) == 1

    # The id of the response a request continues is part of the key.
    previous_a, previous_b = f"resp_e2e_{uuid.uuid4().hex}", f"resp_e2e_{uuid.uuid4().hex}"
    assert create(previous_response_id=previous_a).headers["x-tollgate-cache"] == "miss"
    assert create(previous_response_id=previous_b).headers["x-tollgate-cache"] == "miss"
    assert create(previous_response_id=previous_a).headers["x-tollgate-cache"] == "hit"
    records = clean_mock.requests()
    assert [r["body"].get("previous_response_id") for r in records] == [None, previous_a, previous_b]

    # A stream of a stored answer is served from it, replayed as the
    # Responses API's own events, which the SDK parses.
    raw = client.responses.with_raw_response.create(model="tollgate/auto", input=prompt, temperature=0, stream=True)
    assert raw.headers["x-tollgate-cache"] == "hit"
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = list(raw.parse())
    ledger.wait_for(1)
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == first.parse().output_text
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == first.parse().output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [r["stream"] for r in clean_mock.requests()] == [False, False, False], "the provider saw no stream"


def test_the_clients_max_output_tokens_reaches_the_provider_and_an_incomplete_answer_is_relayed_as_is(
    router, clean_mock
):
    client = sdk(router)
    ledger = Recorded(router.url, KEY)
    raw = client.responses.with_raw_response.create(
        model="tollgate/auto", input=LONG_ANSWER_PROMPT, max_output_tokens=16, temperature=0
    )
    after = ledger.wait_for(1)
    response = raw.parse()
    [record] = clean_mock.requests()
    assert record["body"]["max_output_tokens"] == 16
    plain = mock_answer(clean_mock, {**record, "body": {**record["body"], "max_output_tokens": None}})
    assert plain["usage"]["output_tokens"] == LONG_ANSWER_WORDS, "the prompt's full answer is longer than the cap"

    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    assert len(response.output_text.split()) == response.usage.output_tokens == 16
    model = raw.headers["x-tollgate-model"].split("/", 1)[1]
    price = cost_micros(model, response.usage.input_tokens, 16)
    assert micros(raw.headers["x-tollgate-cost-usd"]) == price
    assert spent_micros(after) - spent_micros(ledger.start) == price

    # An incomplete answer is not stored: the same request goes upstream again.
    again = client.responses.with_raw_response.create(
        model="tollgate/auto", input=LONG_ANSWER_PROMPT, max_output_tokens=16, temperature=0
    )
    ledger.wait_for(1)
    assert again.headers["x-tollgate-cache"] == "miss"
    assert again.content == raw.content

    # Streamed, it ends with `response.incomplete`, whose usage is charged.
    before = settled_usage(router.url, KEY)
    events = list(
        client.responses.create(model="tollgate/auto", input=LONG_ANSWER_PROMPT, max_output_tokens=16, stream=True)
    )
    after = ledger.wait_for(1)
    last = events[-1]
    assert last.type == "response.incomplete", [e.type for e in events]
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.usage.output_tokens == 16
    streamed = clean_mock.requests()[-1]
    assert (streamed["stream"], streamed["body"]["max_output_tokens"]) == (True, 16)
    assert spent_micros(after) - spent_micros(before) == cost_micros(
        streamed["model"], last.response.usage.input_tokens, 16
    )


def test_an_output_cap_larger_than_the_budget_left_is_clamped_in_what_the_provider_receives(router, clean_mock):
    client = sdk(router, CLAMP_KEY)
    raw = client.responses.with_raw_response.create(
        model="tollgate/auto", input=unique(EASY_PROMPT), max_output_tokens=100_000
    )
    settled_usage(router.url, CLAMP_KEY)
    assert raw.status_code == 200
    [record] = clean_mock.requests()
    clamped = record["body"]["max_output_tokens"]
    assert 16 <= clamped < 3000, f"the provider was sent max_output_tokens={clamped}"
    assert raw.parse().status == "completed"


# (body, code): each refused before anything goes upstream, `param` "input".
MALFORMED = [
    ({"model": "tollgate/auto"}, "missing_required_parameter"),
    ({"model": "tollgate/auto", "input": None}, "missing_required_parameter"),
    ({"model": "tollgate/auto", "input": 42}, "invalid_type"),
    ({"model": "tollgate/auto", "input": True}, "invalid_type"),
    ({"model": "tollgate/auto", "input": {"role": "user", "content": "hello"}}, "invalid_type"),
    ({"model": "tollgate/auto", "input": []}, "invalid_value"),
]


def test_a_missing_mistyped_or_empty_input_is_refused_with_openai_errors_and_costs_nothing(router, clean_mock):
    before = settled_usage(router.url, KEY)
    for body, code in MALFORMED:
        r = post_responses(router.url, KEY, body)
        try:
            assert_error(r, 400, code, param="input")
        except AssertionError as e:
            raise AssertionError(f"body {body!r}: {e}") from e
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(router).responses.create(model="tollgate/auto", input=[])
    assert refused.value.status_code == 400
    assert refused.value.param == "input"
    assert clean_mock.requests() == []
    after = settled_usage(router.url, KEY)
    assert after["budgets"] == before["budgets"]


# Built-in tools with a published per-call price are metered: $10 per 1,000
# web searches (crates/tollgate-core/src/pricing.rs). The mock reports two
# `web_search_call` items when a `web_search` tool is offered, at most
# `max_tool_calls`.
WEB_SEARCH_MICROS = 10_000


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_web_searches_are_metered_per_call_held_up_to_max_tool_calls_and_capped_upstream(router, clean_mock, stream):
    client = sdk(router)
    prompt = unique("What changed in the news today?")
    ledger = Recorded(router.url, KEY)
    tools = [{"type": "web_search"}]
    if stream:
        with client.responses.stream(model="tollgate/cheap", input=prompt, tools=tools) as events:
            for _ in events:
                pass
            response = events.get_final_response()
    else:
        raw = client.responses.with_raw_response.create(model="tollgate/cheap", input=prompt, tools=tools)
        response = raw.parse()
    after = ledger.wait_for(1)

    searches = [item for item in response.output if item.type == "web_search_call"]
    assert len(searches) == 2, response.output
    [record] = clean_mock.requests()
    # No cap from the client: the one its hold covers is written upstream.
    assert record["body"]["max_tool_calls"] == 8
    usage = response.usage
    price = cost_micros(CHEAP_MODEL, usage.input_tokens, usage.output_tokens) + 2 * WEB_SEARCH_MICROS
    assert spent_micros(after) - spent_micros(ledger.start) == price
    if not stream:
        assert micros(raw.headers["x-tollgate-cost-usd"]) == price


def test_a_clients_own_max_tool_calls_is_kept_and_bounds_the_searches_charged(router, clean_mock):
    prompt = unique("What changed in the news today?")
    ledger = Recorded(router.url, KEY)
    r = post_responses(
        router.url,
        KEY,
        {"model": "tollgate/cheap", "input": prompt, "tools": [{"type": "web_search"}], "max_tool_calls": 1},
    )
    after = ledger.wait_for(1)
    assert r.status_code == 200, r.text
    [record] = clean_mock.requests()
    assert record["body"]["max_tool_calls"] == 1
    body = r.json()
    assert [i["type"] for i in body["output"]].count("web_search_call") == 1
    usage = body["usage"]
    price = cost_micros(CHEAP_MODEL, usage["input_tokens"], usage["output_tokens"]) + WEB_SEARCH_MICROS
    assert micros(r.headers["x-tollgate-cost-usd"]) == price
    assert spent_micros(after) - spent_micros(ledger.start) == price


def test_a_built_in_tool_without_a_published_price_is_refused_by_name_and_costs_nothing(router, clean_mock):
    before = settled_usage(router.url, KEY)
    r = post_responses(
        router.url, KEY, {"model": "tollgate/auto", "input": "Open the page", "tools": [{"type": "computer_use_preview"}]}
    )
    error = assert_error(r, 400, "invalid_value", param="tools")
    assert "computer_use_preview" in error["message"]
    assert clean_mock.requests() == []
    assert settled_usage(router.url, KEY)["budgets"] == before["budgets"]
