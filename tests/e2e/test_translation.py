"""Translation between APIs on both hosts: a tier may list models of any
provider, and a request whose API the chosen model's provider does not
speak is said in the provider's API, its answer (JSON, or a stream event
by event) in the client's: OpenAI chat <-> Anthropic Messages, the
Responses API -> either (docs/config.md, "Translation between APIs").

Seen as apps see it, through the official OpenAI and Anthropic SDKs
(plain, streamed, and function-tool round trips), and as the provider sees
it: the mock records every upstream request, and since it checks request
shapes as strictly as the real APIs (Anthropic's required `max_tokens`, no
`system` role, every `tool_result` answering a `tool_use` of the message
before; chat's `tool` messages answering an earlier `tool_calls` id …), a
mistranslated request fails with the provider's 400. Offered function
tools, the mock calls the first one (or the one the tool choice names)
with `{"city": "mock"}` built from the schema's required properties, until
the tool's result comes back (crates/tollgate-mock/src/tools.rs).

Tenants (tenants.py): e2e-translate (cheap: Claude only, premium: gpt-4o
only, the default `when_needed`, metered, cache without the doorkeeper),
e2e-translate-off, e2e-translate-native-first (one tier: Claude then
gpt-4o-mini), e2e-translate-as-listed (tiers `claude_first`,
`openai_first`, `mistral`) and e2e-translate-claude-only."""

from __future__ import annotations

import json
import math

import anthropic
import httpx
import openai
import pytest

import tenants
from calls import (
    EASY_PROMPT,
    HARD_PROMPT,
    PRICES,
    TIMEOUT,
    Recorded,
    assert_routed_headers,
    bearer,
    chat,
    chat_body,
    messages,
    messages_body,
    micros,
    openai_stream_text,
    settled_usage,
    sse_events,
    unique,
)

KEY = tenants.TRANSLATE_KEY
CLAUDE = tenants.TRANSLATE_CLAUDE.split("/", 1)[1]
GPT = tenants.TRANSLATE_GPT.split("/", 1)[1]
MINI = tenants.TRANSLATE_MINI.split("/", 1)[1]
MISTRAL = tenants.TRANSLATE_MISTRAL.split("/", 1)[1]

# List prices in micro-dollars per million tokens (calls.PRICES), plus
# Mistral Small's ($0.10 in, $0.30 out), as tollgate-core's table has it.
LIST_PRICES = {**PRICES, MISTRAL: (100_000, 300_000)}

SYSTEM = "You are a terse weather assistant."
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city's name."},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
WEATHER_DESCRIPTION = "The current weather in a city."
OPENAI_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": WEATHER_DESCRIPTION, "parameters": WEATHER_PARAMETERS},
}
ANTHROPIC_TOOL = {"name": "get_weather", "description": WEATHER_DESCRIPTION, "input_schema": WEATHER_PARAMETERS}
RESPONSES_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": WEATHER_DESCRIPTION,
    "parameters": WEATHER_PARAMETERS,
    "strict": False,
}
# The arguments the mock calls get_weather with: its required properties.
MOCK_ARGUMENTS = {"city": "mock"}
TOOL_RESULT = "Sunny, 21 C"
WEATHER_QUESTION = "What is the weather in Paris right now?"

# Marks the requests a test sends to the mock itself, which upstream() leaves out.
REPLAY_HEADER = "x-e2e-replay"


# ---------------------------------------------------------------- helpers


def oai(router, key: str = KEY) -> openai.OpenAI:
    # No retries: a retried request would reach the mock twice.
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key=key, max_retries=0)


def claude(router, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=router.url, api_key=key, max_retries=0)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def cost(model: str, input_tokens: int, output_tokens: int) -> int:
    """What tollgate charges, in micro-dollars: list price, rounded up once."""
    price_in, price_out = LIST_PRICES[model]
    return math.ceil((input_tokens * price_in + output_tokens * price_out) / 1_000_000)


def spent(report: dict) -> int:
    [budget] = report["budgets"]
    return micros(budget["spent_usd"])


def upstream(mock) -> list[dict]:
    """The mock's records of what the host sent upstream (not the tests' own replays)."""
    return [r for r in mock.requests() if REPLAY_HEADER not in r["headers"]]


def mock_answer(mock, record: dict) -> dict:
    """The mock's JSON answer to a request it recorded, asked again directly
    and not streamed: it answers the same body the same way, so this is
    what the provider said (text, tool call, usage) even to a stream."""
    body = dict(record["body"], stream=False)
    body.pop("stream_options", None)
    r = httpx.post(mock.url + record["path"], json=body, headers={REPLAY_HEADER: "1"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def anthropic_usage(answer: dict) -> tuple[int, int]:
    return answer["usage"]["input_tokens"], answer["usage"]["output_tokens"]


def chat_usage(answer: dict) -> tuple[int, int]:
    return answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]


def text_of(content) -> str:
    """A message's text: a string, or its text blocks/parts joined."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if part.get("type") == "text")


def blocks(message: dict) -> list[dict]:
    """An Anthropic message's content as blocks."""
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def assert_translated(headers, direction: str, model: str) -> None:
    assert headers.get("x-tollgate-translated") == direction, dict(headers)
    assert headers["x-tollgate-model"] == model, dict(headers)


def assert_anthropic_request(record: dict, *, model: str = CLAUDE) -> dict:
    """A request as api.anthropic.com takes it; its body."""
    assert record["path"] == "/anthropic/v1/messages", record["path"]
    assert record["model"] == model
    assert record["status"] == 200, record
    headers = record["headers"]
    assert headers["x-api-key"] == "sk-mock-anthropic"
    assert headers.get("anthropic-version"), headers
    assert "authorization" not in headers
    body = record["body"]
    assert isinstance(body["max_tokens"], int) and body["max_tokens"] > 0, body
    assert {m["role"] for m in body["messages"]} <= {"user", "assistant"}, body
    assert "stream_options" not in body and "n" not in body, body
    return body


def assert_chat_request(record: dict, *, model: str = GPT, provider: str = "openai") -> dict:
    """A request as a chat completions API takes it; its body."""
    assert record["path"] == f"/{provider}/v1/chat/completions", record["path"]
    assert record["model"] == model
    assert record["status"] == 200, record
    assert record["headers"]["authorization"] == f"Bearer sk-mock-{provider}"
    assert "x-api-key" not in record["headers"]
    body = record["body"]
    assert "system" not in body and "stop_sequences" not in body and "top_k" not in body, body
    return body


def chat_cap(body: dict) -> int | None:
    return body.get("max_completion_tokens", body.get("max_tokens"))


def accumulate_chat_stream(chunks) -> dict:
    """What a chat app assembles from a stream: text, tool calls by index
    (id, name, arguments), the finish reason, the usage chunk, and how many
    chunks carried argument fragments."""
    text, calls, finish, usage, fragments = [], {}, None, None, 0
    for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                text.append(delta.content)
            for call in delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                if call.id:
                    entry["id"] = call.id
                if call.function and call.function.name:
                    entry["name"] += call.function.name
                if call.function and call.function.arguments:
                    entry["arguments"] += call.function.arguments
                    fragments += 1
            if choice.finish_reason:
                finish = choice.finish_reason
    return {"text": "".join(text), "calls": calls, "finish": finish, "usage": usage, "fragments": fragments}


# ---------------------------------------------------------------- OpenAI SDK chat app -> Claude


def test_an_openai_chat_app_gets_claudes_answer_translated_and_charged_at_claudes_price(router, clean_mock):
    client = oai(router)
    prompt = unique(EASY_PROMPT)
    ledger = Recorded(router.url, KEY)
    raw = client.chat.completions.with_raw_response.create(
        model="tollgate/auto", messages=user(prompt), max_tokens=200, user="u-42"
    )
    after = ledger.wait_for(1)
    completion = raw.parse()

    assert_routed_headers(raw)
    assert (raw.headers["x-tollgate-route"], raw.headers["x-tollgate-tier"]) == ("auto", "cheap")
    assert_translated(raw.headers, "openai->anthropic", f"anthropic/{CLAUDE}")
    [record] = upstream(clean_mock)
    body = assert_anthropic_request(record)
    assert [(m["role"], text_of(m["content"])) for m in body["messages"]] == [("user", prompt)]
    assert body["max_tokens"] == 200, "the client's cap"
    assert body.get("metadata") == {"user_id": "u-42"}, "`user` is Anthropic's metadata.user_id"
    assert "system" not in body and "user" not in body and body.get("stream") in (None, False)

    answer = mock_answer(clean_mock, record)
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == answer["content"][0]["text"]
    assert choice.message.content.startswith(f"[mock:{CLAUDE}] ")
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == anthropic_usage(answer)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    price = cost(CLAUDE, *anthropic_usage(answer))
    assert micros(raw.headers["x-tollgate-cost-usd"]) == price
    assert spent(after) - spent(ledger.start) == price


def test_an_openai_chat_stream_from_claude_arrives_as_chat_chunks_without_a_usage_chunk_unless_asked(
    router, clean_mock
):
    client = oai(router)
    prompt = unique(EASY_PROMPT)
    ledger = Recorded(router.url, KEY)
    raw = client.chat.completions.with_raw_response.create(model="tollgate/auto", messages=user(prompt), stream=True)
    assert raw.headers["content-type"].startswith("text/event-stream"), raw.headers
    assert_translated(raw.headers, "openai->anthropic", f"anthropic/{CLAUDE}")
    chunks = list(raw.parse())
    after = ledger.wait_for(1)

    got = accumulate_chat_stream(chunks)
    assert len(chunks) > 3, "streamed piece by piece"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert all(c.choices for c in chunks), "no usage chunk for a client that did not ask"
    assert got["usage"] is None and got["finish"] == "stop" and not got["calls"]

    [record] = upstream(clean_mock)
    body = assert_anthropic_request(record)
    assert body["stream"] is True and record["stream"] is True
    assert body["max_tokens"] == tenants.TRANSLATE_DEFAULT_OUTPUT, "no client cap: the tenant's default reservation"
    answer = mock_answer(clean_mock, record)
    assert got["text"] == answer["content"][0]["text"]
    assert spent(after) - spent(ledger.start) == cost(CLAUDE, *anthropic_usage(answer))


def test_an_openai_chat_stream_from_claude_with_include_usage_ends_with_claudes_usage(router, clean_mock):
    client = oai(router)
    ledger = Recorded(router.url, KEY)
    chunks = list(
        client.chat.completions.create(
            model="tollgate/cheap",
            messages=user(unique(EASY_PROMPT)),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    after = ledger.wait_for(1)
    *content, last = chunks
    assert last.choices == [] and last.usage is not None, last
    assert [c for c in content if c.usage] == []
    [record] = upstream(clean_mock)
    assert_anthropic_request(record)
    answer = mock_answer(clean_mock, record)
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == anthropic_usage(answer)
    assert last.usage.total_tokens == sum(anthropic_usage(answer))
    assert accumulate_chat_stream(content)["text"] == answer["content"][0]["text"]
    assert spent(after) - spent(ledger.start) == cost(CLAUDE, *anthropic_usage(answer))


def test_an_openai_chat_app_plays_a_function_tool_round_trip_with_claude(router, clean_mock):
    client = oai(router)
    ledger = Recorded(router.url, KEY)
    conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": unique(WEATHER_QUESTION)}]

    def create():
        raw = client.chat.completions.with_raw_response.create(
            model="tollgate/cheap", messages=conversation, tools=[OPENAI_TOOL], max_tokens=300
        )
        ledger.wait_for(1)
        assert_translated(raw.headers, "openai->anthropic", f"anthropic/{CLAUDE}")
        return raw

    first_raw = create()
    first = first_raw.parse()
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == MOCK_ARGUMENTS

    [record] = upstream(clean_mock)
    body = assert_anthropic_request(record)
    assert text_of(body["system"]) == SYSTEM, "the system message is Anthropic's top-level system"
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert body["max_tokens"] == 300
    [tool] = body["tools"]
    assert (tool["name"], tool["description"], tool["input_schema"]) == (
        "get_weather",
        WEATHER_DESCRIPTION,
        WEATHER_PARAMETERS,
    )
    answer = mock_answer(clean_mock, record)
    assert answer["stop_reason"] == "tool_use"
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == anthropic_usage(answer)
    assert micros(first_raw.headers["x-tollgate-cost-usd"]) == cost(CLAUDE, *anthropic_usage(answer))

    # As the OpenAI docs show: the assistant message goes back as it came,
    # followed by the tool's result.
    conversation += [choice.message, {"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT}]
    second_raw = create()
    second = second_raw.parse()
    assert second.choices[0].finish_reason == "stop"
    assert not second.choices[0].message.tool_calls
    assert second.choices[0].message.content.startswith(f"[mock:{CLAUDE}] ")

    _, record = upstream(clean_mock)
    body = assert_anthropic_request(record)
    assert text_of(body["system"]) == SYSTEM
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    [use] = [b for b in blocks(body["messages"][1]) if b["type"] == "tool_use"]
    assert (use["name"], use["input"]) == ("get_weather", MOCK_ARGUMENTS)
    [result] = blocks(body["messages"][2])
    assert result["type"] == "tool_result" and result["tool_use_id"] == use["id"], result
    assert text_of(result["content"]) == TOOL_RESULT
    assert [t["name"] for t in body["tools"]] == ["get_weather"]
    answer = mock_answer(clean_mock, record)
    assert second.choices[0].message.content == answer["content"][0]["text"]
    assert (second.usage.prompt_tokens, second.usage.completion_tokens) == anthropic_usage(answer)
    after = settled_usage(router.url, KEY)
    charged = micros(first_raw.headers["x-tollgate-cost-usd"]) + micros(second_raw.headers["x-tollgate-cost-usd"])
    assert spent(after) - spent(ledger.start) == charged


def test_an_openai_chat_app_streams_a_function_tool_round_trip_with_claude(router, clean_mock):
    client = oai(router)
    ledger = Recorded(router.url, KEY)
    conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": unique(WEATHER_QUESTION)}]

    def stream():
        raw = client.chat.completions.with_raw_response.create(
            model="tollgate/cheap",
            messages=conversation,
            tools=[OPENAI_TOOL],
            tool_choice="auto",
            stream=True,
            stream_options={"include_usage": True},
        )
        assert_translated(raw.headers, "openai->anthropic", f"anthropic/{CLAUDE}")
        got = accumulate_chat_stream(raw.parse())
        ledger.wait_for(1)
        return got

    first = stream()
    assert first["finish"] == "tool_calls"
    assert first["text"] == ""
    assert list(first["calls"]) == [0]
    call = first["calls"][0]
    assert call["id"] and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == MOCK_ARGUMENTS
    assert first["fragments"] >= 2, "the arguments arrive in several fragments, as the provider sent them"
    [record] = upstream(clean_mock)
    body = assert_anthropic_request(record)
    assert body["stream"] is True
    assert body.get("tool_choice") == {"type": "auto"}
    answer = mock_answer(clean_mock, record)
    assert (first["usage"].prompt_tokens, first["usage"].completion_tokens) == anthropic_usage(answer)

    # As streaming apps do: the assistant message rebuilt from the deltas.
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
        ],
    }
    conversation += [assistant, {"role": "tool", "tool_call_id": call["id"], "content": TOOL_RESULT}]
    second = stream()
    assert second["finish"] == "stop" and not second["calls"]
    assert second["text"].startswith(f"[mock:{CLAUDE}] ")
    _, record = upstream(clean_mock)
    body = assert_anthropic_request(record)
    [use] = [b for b in blocks(body["messages"][1]) if b["type"] == "tool_use"]
    [result] = blocks(body["messages"][2])
    assert (use["input"], result["tool_use_id"], text_of(result["content"])) == (
        MOCK_ARGUMENTS,
        use["id"],
        TOOL_RESULT,
    )
    answer = mock_answer(clean_mock, record)
    assert second["text"] == answer["content"][0]["text"]
    assert (second["usage"].prompt_tokens, second["usage"].completion_tokens) == anthropic_usage(answer)


# ---------------------------------------------------------------- Anthropic SDK app -> gpt-4o


def test_an_anthropic_app_gets_gpt_4os_answer_translated_and_charged_at_its_price(router, clean_mock):
    client = claude(router)
    prompt = unique(HARD_PROMPT)
    ledger = Recorded(router.url, KEY)
    raw = client.messages.with_raw_response.create(
        model="tollgate/auto", max_tokens=300, messages=user(prompt), stop_sequences=["THE END"]
    )
    after = ledger.wait_for(1)
    message = raw.parse()

    assert_routed_headers(raw)
    assert (raw.headers["x-tollgate-route"], raw.headers["x-tollgate-tier"]) == ("auto", "premium")
    assert_translated(raw.headers, "anthropic->openai", f"openai/{GPT}")
    [record] = upstream(clean_mock)
    body = assert_chat_request(record)
    assert [(m["role"], text_of(m["content"])) for m in body["messages"]] == [("user", prompt)]
    assert chat_cap(body) == 300
    assert body.get("stop") == ["THE END"]
    assert not body.get("stream")

    answer = mock_answer(clean_mock, record)
    assert message.type == "message" and message.role == "assistant"
    [text] = message.content
    assert text.type == "text" and text.text == answer["choices"][0]["message"]["content"]
    assert text.text.startswith(f"[mock:{GPT}] ")
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == chat_usage(answer)
    price = cost(GPT, *chat_usage(answer))
    assert micros(raw.headers["x-tollgate-cost-usd"]) == price
    assert spent(after) - spent(ledger.start) == price


def test_an_anthropic_stream_from_gpt_4o_parses_in_the_sdks_stream_helper(router, clean_mock):
    client = claude(router)
    ledger = Recorded(router.url, KEY)
    with client.messages.stream(
        model="tollgate/premium", max_tokens=300, system=SYSTEM, messages=user(unique(EASY_PROMPT))
    ) as stream:
        assert_translated(stream.response.headers, "anthropic->openai", f"openai/{GPT}")
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    after = ledger.wait_for(1)

    [record] = upstream(clean_mock)
    body = assert_chat_request(record)
    assert body["messages"][0] == {"role": "system", "content": SYSTEM}
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}, "the router asks an OpenAI stream for its usage"
    assert chat_cap(body) == 300
    answer = mock_answer(clean_mock, record)
    assert len(deltas) > 3, "streamed piece by piece"
    assert "".join(deltas) == final.content[0].text == answer["choices"][0]["message"]["content"]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == chat_usage(answer)
    assert spent(after) - spent(ledger.start) == cost(GPT, *chat_usage(answer))


def test_an_anthropic_app_plays_a_tool_use_round_trip_with_gpt_4o(router, clean_mock):
    client = claude(router)
    ledger = Recorded(router.url, KEY)
    conversation = [{"role": "user", "content": unique(WEATHER_QUESTION)}]

    def create():
        raw = client.messages.with_raw_response.create(
            model="tollgate/premium",
            max_tokens=300,
            system=SYSTEM,
            messages=conversation,
            tools=[ANTHROPIC_TOOL],
            tool_choice={"type": "auto"},
        )
        ledger.wait_for(1)
        assert_translated(raw.headers, "anthropic->openai", f"openai/{GPT}")
        return raw.parse()

    first = create()
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.id
    assert use.input == MOCK_ARGUMENTS
    [record] = upstream(clean_mock)
    body = assert_chat_request(record)
    assert [(m["role"], text_of(m["content"])) for m in body["messages"]] == [
        ("system", SYSTEM),
        ("user", conversation[0]["content"]),
    ]
    [tool] = body["tools"]
    assert tool["type"] == "function"
    assert (tool["function"]["name"], tool["function"]["parameters"]) == ("get_weather", WEATHER_PARAMETERS)
    assert tool["function"].get("description") == WEATHER_DESCRIPTION
    assert body.get("tool_choice") == "auto"
    answer = mock_answer(clean_mock, record)
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert (first.usage.input_tokens, first.usage.output_tokens) == chat_usage(answer)

    # As the Anthropic docs show: the assistant's content goes back as it came.
    conversation += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": TOOL_RESULT}]},
    ]
    second = create()
    assert second.stop_reason == "end_turn"
    assert [b.type for b in second.content] == ["text"]
    assert second.content[0].text.startswith(f"[mock:{GPT}] ")
    _, record = upstream(clean_mock)
    body = assert_chat_request(record)
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool"], body["messages"]
    [call] = body["messages"][2]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str), "chat arguments are JSON text"
    assert json.loads(call["function"]["arguments"]) == MOCK_ARGUMENTS
    assert body["messages"][3]["tool_call_id"] == call["id"]
    assert text_of(body["messages"][3]["content"]) == TOOL_RESULT
    answer = mock_answer(clean_mock, record)
    assert second.content[0].text == answer["choices"][0]["message"]["content"]
    assert (second.usage.input_tokens, second.usage.output_tokens) == chat_usage(answer)


def test_an_anthropic_app_streams_a_tool_use_round_trip_with_gpt_4o(router, clean_mock):
    client = claude(router)
    ledger = Recorded(router.url, KEY)
    conversation = [{"role": "user", "content": unique(WEATHER_QUESTION)}]

    def stream():
        with client.messages.stream(
            model="tollgate/premium", max_tokens=300, messages=conversation, tools=[ANTHROPIC_TOOL]
        ) as s:
            assert_translated(s.response.headers, "anthropic->openai", f"openai/{GPT}")
            events = list(s)
            final = s.get_final_message()
        ledger.wait_for(1)
        return events, final

    events, first = stream()
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert (use.name, use.input) == ("get_weather", MOCK_ARGUMENTS)
    fragments = [e for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert len([e for e in fragments if e.delta.partial_json]) >= 2, "the input arrives in several fragments"
    assert "".join(e.delta.partial_json for e in fragments) == json.dumps(MOCK_ARGUMENTS, separators=(",", ":"))
    [record] = upstream(clean_mock)
    body = assert_chat_request(record)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    answer = mock_answer(clean_mock, record)
    assert (first.usage.input_tokens, first.usage.output_tokens) == chat_usage(answer)

    conversation += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": TOOL_RESULT}]},
    ]
    _, second = stream()
    assert second.stop_reason == "end_turn"
    assert second.content[0].text.startswith(f"[mock:{GPT}] ")
    _, record = upstream(clean_mock)
    body = assert_chat_request(record)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool"]
    assert body["messages"][2]["tool_call_id"] == body["messages"][1]["tool_calls"][0]["id"]
    answer = mock_answer(clean_mock, record)
    assert second.content[0].text == answer["choices"][0]["message"]["content"]
    assert (second.usage.input_tokens, second.usage.output_tokens) == chat_usage(answer)


# ---------------------------------------------------------------- OpenAI SDK Responses app -> Claude / Mistral


def test_a_responses_app_gets_claudes_answer_as_a_response(router, clean_mock):
    client = oai(router)
    prompt = unique(EASY_PROMPT)
    ledger = Recorded(router.url, KEY)
    raw = client.responses.with_raw_response.create(model="tollgate/auto", input=prompt, max_output_tokens=200)
    after = ledger.wait_for(1)
    response = raw.parse()

    assert raw.headers["x-tollgate-tier"] == "cheap"
    assert_translated(raw.headers, "responses->anthropic", f"anthropic/{CLAUDE}")
    [record] = upstream(clean_mock)
    body = assert_anthropic_request(record)
    assert [(m["role"], text_of(m["content"])) for m in body["messages"]] == [("user", prompt)]
    assert body["max_tokens"] == 200, "max_output_tokens is the cap"
    answer = mock_answer(clean_mock, record)

    assert response.object == "response" and response.status == "completed"
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == answer["content"][0]["text"]
    assert response.output_text.startswith(f"[mock:{CLAUDE}] ")
    assert (response.usage.input_tokens, response.usage.output_tokens) == anthropic_usage(answer)
    assert response.usage.total_tokens == sum(anthropic_usage(answer))
    price = cost(CLAUDE, *anthropic_usage(answer))
    assert micros(raw.headers["x-tollgate-cost-usd"]) == price
    assert spent(after) - spent(ledger.start) == price


def test_a_streamed_response_from_claude_is_the_responses_event_sequence_ending_with_its_usage(router, clean_mock):
    client = oai(router)
    prompt = unique(EASY_PROMPT)
    ledger = Recorded(router.url, KEY)
    raw = client.responses.with_raw_response.create(model="tollgate/cheap", input=prompt, stream=True)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert_translated(raw.headers, "responses->anthropic", f"anthropic/{CLAUDE}")
    events = list(raw.parse())
    after = ledger.wait_for(1)

    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 3, "streamed piece by piece"
    [record] = upstream(clean_mock)
    assert assert_anthropic_request(record)["stream"] is True
    answer = mock_answer(clean_mock, record)
    final = events[-1].response
    assert "".join(deltas) == final.output_text == answer["content"][0]["text"]
    assert final.status == "completed"
    assert (final.usage.input_tokens, final.usage.output_tokens) == anthropic_usage(answer)
    assert spent(after) - spent(ledger.start) == cost(CLAUDE, *anthropic_usage(answer))

    # The SDK's streaming helper assembles the same response.
    with client.responses.stream(model="tollgate/cheap", input=prompt) as stream:
        helper = [e.delta for e in stream if e.type == "response.output_text.delta"]
        helper_final = stream.get_final_response()
    ledger.wait_for(1)
    assert "".join(helper) == helper_final.output_text == final.output_text


def test_a_responses_app_plays_a_function_tool_round_trip_with_claude(router, clean_mock):
    client = oai(router)
    ledger = Recorded(router.url, KEY)
    ask = {"role": "user", "content": unique(WEATHER_QUESTION)}

    def create(items: list):
        raw = client.responses.with_raw_response.create(
            model="tollgate/cheap", instructions=SYSTEM, input=items, tools=[RESPONSES_TOOL]
        )
        ledger.wait_for(1)
        assert_translated(raw.headers, "responses->anthropic", f"anthropic/{CLAUDE}")
        return raw.parse()

    first = create([ask])
    [call] = first.output
    assert call.type == "function_call", call
    assert call.name == "get_weather" and call.call_id
    assert json.loads(call.arguments) == MOCK_ARGUMENTS
    [record] = upstream(clean_mock)
    body = assert_anthropic_request(record)
    assert text_of(body["system"]) == SYSTEM, "instructions are the system text"
    [tool] = body["tools"]
    assert (tool["name"], tool["input_schema"]) == ("get_weather", WEATHER_PARAMETERS)
    answer = mock_answer(clean_mock, record)
    assert (first.usage.input_tokens, first.usage.output_tokens) == anthropic_usage(answer)

    # As the OpenAI docs show: the output items go back, then the call's output.
    output = {"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT}
    second = create([ask, *first.output, output])
    assert [item.type for item in second.output] == ["message"]
    assert second.output_text.startswith(f"[mock:{CLAUDE}] ")
    _, record = upstream(clean_mock)
    body = assert_anthropic_request(record)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    [use] = [b for b in blocks(body["messages"][1]) if b["type"] == "tool_use"]
    [result] = blocks(body["messages"][2])
    assert (use["name"], use["input"]) == ("get_weather", MOCK_ARGUMENTS)
    assert (result["type"], result["tool_use_id"], text_of(result["content"])) == (
        "tool_result",
        use["id"],
        TOOL_RESULT,
    )
    answer = mock_answer(clean_mock, record)
    assert second.output_text == answer["content"][0]["text"]


def test_a_responses_request_to_an_openai_compatible_provider_goes_as_chat(router, clean_mock):
    key = tenants.TRANSLATE_AS_LISTED_KEY
    client = oai(router, key)
    ledger = Recorded(router.url, key)
    raw = client.responses.with_raw_response.create(
        model="tollgate/mistral", instructions=SYSTEM, input=unique(EASY_PROMPT), max_output_tokens=100
    )
    after = ledger.wait_for(1)
    response = raw.parse()
    assert_translated(raw.headers, "responses->openai", f"mistral/{MISTRAL}")
    [record] = upstream(clean_mock)
    body = assert_chat_request(record, model=MISTRAL, provider="mistral")
    assert body["messages"][0] == {"role": "system", "content": SYSTEM}
    assert chat_cap(body) == 100
    assert "input" not in body and "instructions" not in body and "max_output_tokens" not in body
    answer = mock_answer(clean_mock, record)
    assert response.output_text == answer["choices"][0]["message"]["content"]
    assert (response.usage.input_tokens, response.usage.output_tokens) == chat_usage(answer)
    price = cost(MISTRAL, *chat_usage(answer))
    assert micros(raw.headers["x-tollgate-cost-usd"]) == price
    assert spent(after) - spent(ledger.start) == price

    # Streamed, the provider is asked for its usage chunk.
    events = list(client.responses.create(model="tollgate/mistral", input=unique(EASY_PROMPT), stream=True))
    ledger.wait_for(1)
    assert events[-1].type == "response.completed"
    _, record = upstream(clean_mock)
    body = assert_chat_request(record, model=MISTRAL, provider="mistral")
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    answer = mock_answer(clean_mock, record)
    assert (events[-1].response.usage.input_tokens, events[-1].response.usage.output_tokens) == chat_usage(answer)


# ---------------------------------------------------------------- what a model cannot express


# (path, body fields besides model and the prompt, a word the refusal names)
UNEXPRESSIBLE_FOR_CLAUDE = [
    ("/v1/chat/completions", {"logprobs": True}, "logprobs"),
    ("/v1/chat/completions", {"n": 2}, "`n`"),
    ("/v1/chat/completions", {"presence_penalty": 0.5}, "presence_penalty"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/responses", {"previous_response_id": "resp_e2e_earlier"}, "previous_response_id"),
    ("/v1/responses", {"store": True}, "store"),
    ("/v1/responses", {"tools": [{"type": "web_search"}]}, "web_search"),
]


def test_a_request_no_model_can_express_is_refused_400_no_model_for_request_and_nothing_is_sent(router, clean_mock):
    key = tenants.TRANSLATE_CLAUDE_ONLY_KEY
    before = settled_usage(router.url, key)
    for path, fields, word in UNEXPRESSIBLE_FOR_CLAUDE:
        prompt = unique(EASY_PROMPT)
        body = {"model": "tollgate/auto", **fields}
        body.update({"input": prompt} if path == "/v1/responses" else {"messages": user(prompt)})
        r = httpx.post(router.url + path, json=body, headers=bearer(key), timeout=TIMEOUT)
        assert r.status_code == 400, f"{path} {fields}: {r.status_code} {r.text[:300]}"
        error = r.json()["error"]
        assert error["code"] == "no_model_for_request", (fields, error)
        assert word in error["message"] and f"anthropic/{CLAUDE}" in error["message"], (fields, error)
    # The OpenAI SDK sees it as a BadRequestError.
    with pytest.raises(openai.BadRequestError) as refused:
        oai(router, key).chat.completions.create(model="tollgate/auto", messages=user("hi"), logprobs=True)
    assert refused.value.code == "no_model_for_request"
    assert upstream(clean_mock) == []
    assert settled_usage(router.url, key)["budgets"] == before["budgets"]


def test_a_model_that_cannot_express_a_field_is_skipped_and_the_nearest_tier_that_can_serves_it(router, clean_mock):
    # logprobs: Claude (cheap) is skipped; gpt-4o (premium) takes it natively.
    r = chat(router.url, KEY, chat_body(unique(EASY_PROMPT), model="tollgate/cheap", logprobs=True))
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-model"] == f"openai/{GPT}"
    assert r.headers["x-tollgate-tier"] == "premium"
    assert "x-tollgate-translated" not in r.headers
    reasons = r.headers.get("x-tollgate-reasons", "")
    assert f"skipped anthropic/{CLAUDE}: " in reasons and "logprobs" in reasons, reasons
    assert "served by tier premium" in reasons, reasons
    [record] = upstream(clean_mock)
    assert assert_chat_request(record)["logprobs"] is True

    # top_k: gpt-4o (premium) is skipped; Claude (cheap) takes it natively.
    r = messages(router.url, KEY, messages_body(unique(HARD_PROMPT), model="tollgate/premium", top_k=5))
    assert r.status_code == 200, r.text
    assert (r.headers["x-tollgate-model"], r.headers["x-tollgate-tier"]) == (f"anthropic/{CLAUDE}", "cheap")
    assert "x-tollgate-translated" not in r.headers
    reasons = r.headers.get("x-tollgate-reasons", "")
    assert f"skipped openai/{GPT}: " in reasons and "top_k" in reasons, reasons
    _, record = upstream(clean_mock)
    assert assert_anthropic_request(record)["top_k"] == 5

    # previous_response_id: Claude is skipped; gpt-4o answers on the Responses API.
    previous = "resp_e2e_continued"
    raw = oai(router).responses.with_raw_response.create(
        model="tollgate/cheap", input=unique(EASY_PROMPT), previous_response_id=previous
    )
    assert raw.headers["x-tollgate-model"] == f"openai/{GPT}"
    assert "x-tollgate-translated" not in raw.headers
    reasons = raw.headers.get("x-tollgate-reasons", "")
    assert f"skipped anthropic/{CLAUDE}: " in reasons and "previous_response_id" in reasons, reasons
    _, _, record = upstream(clean_mock)
    assert record["path"] == "/openai/v1/responses" and record["body"]["previous_response_id"] == previous
    settled_usage(router.url, KEY)


# ---------------------------------------------------------------- routing.translation modes


def test_translation_off_keeps_the_old_behaviour_a_tier_without_the_clients_api_is_passed_over(router, clean_mock):
    key = tenants.TRANSLATE_OFF_KEY
    r = chat(router.url, key, chat_body(unique(EASY_PROMPT)))
    assert r.status_code == 200, r.text
    assert (r.headers["x-tollgate-tier"], r.headers["x-tollgate-model"]) == ("premium", f"openai/{GPT}")
    assert "x-tollgate-translated" not in r.headers
    assert "tier cheap has no model for the openai API: served by tier premium" in r.headers["x-tollgate-reasons"]
    assert r.json()["choices"][0]["message"]["content"].startswith(f"[mock:{GPT}] ")

    r = messages(router.url, key, messages_body(unique(HARD_PROMPT)))
    assert r.status_code == 200, r.text
    assert (r.headers["x-tollgate-tier"], r.headers["x-tollgate-model"]) == ("cheap", f"anthropic/{CLAUDE}")
    assert "x-tollgate-translated" not in r.headers
    assert "tier premium has no model for the anthropic API: served by tier cheap" in r.headers["x-tollgate-reasons"]

    raw = oai(router, key).responses.with_raw_response.create(model="tollgate/auto", input=unique(EASY_PROMPT))
    assert raw.headers["x-tollgate-model"] == f"openai/{GPT}"
    assert "x-tollgate-translated" not in raw.headers
    assert "tier cheap has no model for the responses API: served by tier premium" in raw.headers["x-tollgate-reasons"]
    records = upstream(clean_mock)
    assert [(r["path"], r["model"]) for r in records] == [
        ("/openai/v1/chat/completions", GPT),
        ("/anthropic/v1/messages", CLAUDE),
        ("/openai/v1/responses", GPT),
    ]


def test_native_first_serves_each_api_natively_and_falls_back_to_the_other_provider_translated(router, clean_mock):
    key = tenants.TRANSLATE_NATIVE_FIRST_KEY
    ledger = Recorded(router.url, key)
    # Claude is listed first, but an OpenAI request goes to gpt-4o-mini.
    r = chat(router.url, key, chat_body(unique(EASY_PROMPT)))
    ledger.wait_for(1)
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-model"] == f"openai/{MINI}"
    assert "x-tollgate-translated" not in r.headers and "x-tollgate-fallbacks" not in r.headers

    # gpt-4o-mini fails: Claude answers, translated.
    clean_mock.clear_requests()
    clean_mock.faults("status:503", model=MINI, times=1)
    r = chat(router.url, key, chat_body(unique(EASY_PROMPT)))
    ledger.wait_for(1)
    assert r.status_code == 200, r.text
    assert_translated(r.headers, "openai->anthropic", f"anthropic/{CLAUDE}")
    assert r.headers.get("x-tollgate-fallbacks") == "1"
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].startswith(f"[mock:{CLAUDE}] ")
    failed, served = upstream(clean_mock)
    assert (failed["path"], failed["model"], failed["status"]) == ("/openai/v1/chat/completions", MINI, 503)
    assert_anthropic_request(served)
    assert micros(r.headers["x-tollgate-cost-usd"]) == cost(CLAUDE, *anthropic_usage(mock_answer(clean_mock, served)))

    # The same for a stream, and the other way round.
    clean_mock.clear_requests()
    clean_mock.faults("status:503", model=MINI, times=1)
    with httpx.stream(
        "POST",
        router.url + "/v1/chat/completions",
        json=chat_body(unique(EASY_PROMPT), stream=True),
        headers=bearer(key),
        timeout=TIMEOUT,
    ) as s:
        assert s.status_code == 200
        assert_translated(s.headers, "openai->anthropic", f"anthropic/{CLAUDE}")
        text = s.read().decode()
    ledger.wait_for(1)
    assert sse_events(text)[-1] == (None, "[DONE]")
    _, served = upstream(clean_mock)
    assert openai_stream_text(text) == mock_answer(clean_mock, served)["content"][0]["text"]

    clean_mock.clear_requests()
    clean_mock.faults("status:503", model=CLAUDE, times=1)
    r = messages(router.url, key, messages_body(unique(EASY_PROMPT)))
    ledger.wait_for(1)
    assert r.status_code == 200, r.text
    assert_translated(r.headers, "anthropic->openai", f"openai/{MINI}")
    assert r.json()["type"] == "message"
    assert r.json()["content"][0]["text"].startswith(f"[mock:{MINI}] ")
    failed, served = upstream(clean_mock)
    assert (failed["path"], failed["status"]) == ("/anthropic/v1/messages", 503)
    assert_chat_request(served, model=MINI)


def test_native_first_names_a_fallback_it_cannot_use_and_does_not_try_it(router, clean_mock):
    key = tenants.TRANSLATE_NATIVE_FIRST_KEY
    body = messages_body(unique(EASY_PROMPT), top_k=5)
    r = messages(router.url, key, body)
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-model"] == f"anthropic/{CLAUDE}"
    reasons = r.headers.get("x-tollgate-reasons", "")
    assert f"skipped openai/{MINI}: " in reasons and "top_k" in reasons, reasons

    # Claude fails: gpt-4o-mini cannot take top_k, so there is no fallback.
    clean_mock.clear_requests()
    clean_mock.faults("status:503", model=CLAUDE, times=1)
    r = messages(router.url, key, messages_body(unique(EASY_PROMPT), top_k=5))
    assert r.status_code >= 500, r.text
    assert [(x["path"], x["model"]) for x in upstream(clean_mock)] == [("/anthropic/v1/messages", CLAUDE)]
    settled_usage(router.url, key)


def test_as_listed_follows_the_tiers_order_translating_where_needed_and_skips_what_cannot_be_said(
    router, clean_mock
):
    key = tenants.TRANSLATE_AS_LISTED_KEY
    # Claude first, though gpt-4o-mini speaks the client's API.
    r = chat(router.url, key, chat_body(unique(EASY_PROMPT), model="tollgate/claude_first"))
    assert r.status_code == 200, r.text
    assert_translated(r.headers, "openai->anthropic", f"anthropic/{CLAUDE}")
    assert r.json()["choices"][0]["message"]["content"].startswith(f"[mock:{CLAUDE}] ")

    # logprobs: Claude is skipped, gpt-4o-mini serves natively.
    r = chat(router.url, key, chat_body(unique(EASY_PROMPT), model="tollgate/claude_first", logprobs=True))
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-model"] == f"openai/{MINI}"
    assert "x-tollgate-translated" not in r.headers
    reasons = r.headers.get("x-tollgate-reasons", "")
    assert f"skipped anthropic/{CLAUDE}: " in reasons and "logprobs" in reasons, reasons

    # gpt-4o-mini first for an Anthropic request; with top_k it is skipped.
    r = messages(router.url, key, messages_body(unique(EASY_PROMPT), model="tollgate/openai_first"))
    assert r.status_code == 200, r.text
    assert_translated(r.headers, "anthropic->openai", f"openai/{MINI}")
    assert r.json()["content"][0]["text"].startswith(f"[mock:{MINI}] ")
    r = messages(router.url, key, messages_body(unique(EASY_PROMPT), model="tollgate/openai_first", top_k=3))
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-model"] == f"anthropic/{CLAUDE}"
    assert "x-tollgate-translated" not in r.headers
    reasons = r.headers.get("x-tollgate-reasons", "")
    assert f"skipped openai/{MINI}: " in reasons and "top_k" in reasons, reasons

    records = upstream(clean_mock)
    assert [(x["path"], x["model"]) for x in records] == [
        ("/anthropic/v1/messages", CLAUDE),
        ("/openai/v1/chat/completions", MINI),
        ("/openai/v1/chat/completions", MINI),
        ("/anthropic/v1/messages", CLAUDE),
    ]
    assert_anthropic_request(records[0])
    assert_chat_request(records[2], model=MINI)
    settled_usage(router.url, key)


# ---------------------------------------------------------------- cache, budgets, provider errors


def test_a_translated_answer_is_cached_in_the_clients_api_and_never_served_to_another_api(router, clean_mock):
    prompt = unique(EASY_PROMPT)
    ledger = Recorded(router.url, KEY)
    body = chat_body(prompt, model="tollgate/cheap", temperature=0, max_tokens=256)
    first = chat(router.url, KEY, body)
    ledger.wait_for(1)
    assert first.status_code == 200, first.text
    assert first.headers["x-tollgate-cache"] == "miss"
    assert_translated(first.headers, "openai->anthropic", f"anthropic/{CLAUDE}")

    second = chat(router.url, KEY, body)
    ledger.wait_for(1)
    assert second.headers["x-tollgate-cache"] == "hit"
    assert second.json()["object"] == "chat.completion"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"] == first.json()["usage"]
    assert second.headers["x-tollgate-model"] == f"anthropic/{CLAUDE}"
    assert second.headers["x-tollgate-cost-usd"] == "0.000000"

    # A stream of the stored answer is replayed as chat chunks.
    with httpx.stream(
        "POST",
        router.url + "/v1/chat/completions",
        json={**body, "stream": True},
        headers=bearer(KEY),
        timeout=TIMEOUT,
    ) as s:
        assert s.headers["x-tollgate-cache"] == "hit"
        assert s.headers["content-type"].startswith("text/event-stream")
        replay = s.read().decode()
    ledger.wait_for(1)
    assert sse_events(replay)[-1] == (None, "[DONE]")
    assert openai_stream_text(replay) == first.json()["choices"][0]["message"]["content"]
    assert len(upstream(clean_mock)) == 1

    # The same conversation from an Anthropic client (Claude natively, the
    # very body the translation sent) and from a Responses client: each a
    # miss, answered in its own API; then a hit of its own.
    anthropic_body = messages_body(prompt, model="tollgate/cheap", temperature=0, max_tokens=256)
    native = messages(router.url, KEY, anthropic_body)
    ledger.wait_for(1)
    assert native.status_code == 200, native.text
    assert native.headers["x-tollgate-cache"] == "miss"
    assert native.json()["type"] == "message"
    responses_body = {"model": "tollgate/cheap", "input": prompt, "temperature": 0, "max_output_tokens": 256}
    response = httpx.post(router.url + "/v1/responses", json=responses_body, headers=bearer(KEY), timeout=TIMEOUT)
    ledger.wait_for(1)
    assert response.status_code == 200, response.text
    assert response.headers["x-tollgate-cache"] == "miss"
    assert response.json()["object"] == "response"
    assert [r["path"] for r in upstream(clean_mock)] == ["/anthropic/v1/messages"] * 3

    again = messages(router.url, KEY, anthropic_body)
    ledger.wait_for(1)
    assert again.headers["x-tollgate-cache"] == "hit"
    assert again.json()["type"] == "message" and again.json()["content"] == native.json()["content"]
    assert len(upstream(clean_mock)) == 3


def test_translated_requests_are_charged_what_their_cost_headers_say_and_the_ledger_adds_them_up(router, clean_mock):
    """JSON and streams, in each direction: each charge is the provider's
    usage at the provider model's list price, and /v1/usage adds up
    exactly those."""
    ledger = Recorded(router.url, KEY)
    client, anthropic_client = oai(router), claude(router)
    expected: list[int] = []

    def charged(model: str, usage: tuple[int, int], header: str | None = None) -> None:
        price = cost(model, *usage)
        if header is not None:
            assert micros(header) == price, (model, usage, header)
        expected.append(price)

    raw = client.chat.completions.with_raw_response.create(model="tollgate/cheap", messages=user(unique(EASY_PROMPT)))
    ledger.wait_for(1)
    [record] = upstream(clean_mock)
    charged(CLAUDE, anthropic_usage(mock_answer(clean_mock, record)), raw.headers["x-tollgate-cost-usd"])

    list(client.chat.completions.create(model="tollgate/cheap", messages=user(unique(EASY_PROMPT)), stream=True))
    ledger.wait_for(1)
    record = upstream(clean_mock)[-1]
    charged(CLAUDE, anthropic_usage(mock_answer(clean_mock, record)))

    raw = anthropic_client.messages.with_raw_response.create(
        model="tollgate/premium", max_tokens=200, messages=user(unique(EASY_PROMPT))
    )
    ledger.wait_for(1)
    record = upstream(clean_mock)[-1]
    charged(GPT, chat_usage(mock_answer(clean_mock, record)), raw.headers["x-tollgate-cost-usd"])

    with anthropic_client.messages.stream(
        model="tollgate/premium", max_tokens=200, messages=user(unique(EASY_PROMPT))
    ) as s:
        s.get_final_message()
    ledger.wait_for(1)
    record = upstream(clean_mock)[-1]
    charged(GPT, chat_usage(mock_answer(clean_mock, record)))

    raw = client.responses.with_raw_response.create(model="tollgate/cheap", input=unique(EASY_PROMPT))
    after = ledger.wait_for(1)
    record = upstream(clean_mock)[-1]
    charged(CLAUDE, anthropic_usage(mock_answer(clean_mock, record)), raw.headers["x-tollgate-cost-usd"])

    assert len(upstream(clean_mock)) == 5
    assert spent(after) - spent(ledger.start) == sum(expected)


def test_a_providers_error_reaches_the_client_in_its_own_apis_shape_and_costs_nothing(router, clean_mock):
    before = settled_usage(router.url, KEY)
    clean_mock.faults("status:400", model=CLAUDE, times=1)
    with pytest.raises(openai.BadRequestError) as refused:
        oai(router).chat.completions.create(model="tollgate/cheap", messages=user(unique(EASY_PROMPT)))
    assert refused.value.status_code == 400
    assert "injected by tollgate-mock" in refused.value.message, refused.value.body
    assert isinstance(refused.value.body, dict) and "injected by tollgate-mock" in refused.value.body["message"]

    clean_mock.faults("status:400", model=GPT, times=1)
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude(router).messages.create(model="tollgate/premium", max_tokens=100, messages=user(unique(EASY_PROMPT)))
    assert refused.value.status_code == 400
    body = refused.value.body
    assert body["type"] == "error" and "injected by tollgate-mock" in body["error"]["message"], body

    assert [(r["path"], r["status"]) for r in upstream(clean_mock)] == [
        ("/anthropic/v1/messages", 400),
        ("/openai/v1/chat/completions", 400),
    ]
    assert settled_usage(router.url, KEY)["budgets"][0]["spent_usd"] == before["budgets"][0]["spent_usd"]
