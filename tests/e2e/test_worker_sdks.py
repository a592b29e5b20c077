"""The official OpenAI and Anthropic Python SDKs, pointed at each host the
way the README tells users to: plain and streamed answers, model lists and
errors all parse."""

from __future__ import annotations

import anthropic
import openai
import pytest

import tenants
from calls import EASY_PROMPT, HARD_PROMPT, settled_usage, unique
from hosts import ACME_KEY


@pytest.fixture
def oai(router) -> openai.OpenAI:
    # No retries: a retried request would reach the mock twice.
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key=ACME_KEY, max_retries=0)


@pytest.fixture
def claude(router) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=router.url, api_key=ACME_KEY, max_retries=0)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_the_openai_sdk_parses_a_chat_completion_with_its_usage(oai, clean_mock):
    raw = oai.chat.completions.with_raw_response.create(model="tollgate/auto", messages=user(unique(EASY_PROMPT)))
    completion = raw.parse()
    [record] = clean_mock.requests()
    assert completion.model == record["model"]
    assert raw.headers["x-tollgate-model"] == f"openai/{record['model']}"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content.startswith(f"[mock:{record['model']}] ")
    assert completion.choices[0].finish_reason == "stop"
    words = len(completion.choices[0].message.content.split())
    assert completion.usage.completion_tokens == words
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + words


def test_openai_sdk_stream_assembles_the_same_answer_and_hides_the_injected_usage_chunk(oai, clean_mock):
    prompt = unique(HARD_PROMPT)
    plain = oai.chat.completions.create(model="tollgate/premium", messages=user(prompt))
    chunks = list(oai.chat.completions.create(model="tollgate/premium", messages=user(prompt), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert len(chunks) > 3, "streamed piece by piece"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices for c in chunks), "no choices-less usage chunk reaches a client that did not ask"
    assert all(c.usage is None for c in chunks)
    # The router asked the provider for usage (to meter the stream) all the same.
    _, streamed = clean_mock.requests()
    assert streamed["stream"] is True
    assert streamed["body"]["stream_options"] == {"include_usage": True}


def test_openai_sdk_stream_with_include_usage_gets_the_usage_chunk(oai, clean_mock):
    prompt = unique(EASY_PROMPT)
    chunks = list(
        oai.chat.completions.create(
            model="tollgate/auto", messages=user(prompt), stream=True, stream_options={"include_usage": True}
        )
    )
    *content, last = chunks
    assert last.choices == [] and last.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in content if c.choices)
    assert last.usage.completion_tokens == len(text.split())
    assert [c for c in content if c.usage] == []
    [record] = clean_mock.requests()
    assert record["body"]["stream_options"] == {"include_usage": True}


def test_the_openai_sdk_lists_the_tenants_models(oai, clean_mock):
    ids = [m.id for m in oai.models.list()]
    routing = tenants.ACME["routing"]
    assert ids == ["tollgate/auto"] + [f"tollgate/{t['name']}" for t in routing["tiers"]] + [
        m.split("/", 1)[1] for m in routing["pinned_models"]
    ]
    assert clean_mock.requests() == []


def test_openai_sdk_raises_typed_errors(router, oai, clean_mock):
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model="gpt-3.5-turbo", messages=user("hi"))
    assert bad.value.code == "model_not_allowed"
    assert bad.value.param == "model"
    stranger = openai.OpenAI(base_url=f"{router.url}/v1", api_key="tg-e2e-nobody", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        stranger.chat.completions.create(model="tollgate/auto", messages=user("hi"))
    assert denied.value.code == "invalid_api_key"
    assert clean_mock.requests() == []


def test_openai_sdk_sees_a_spent_budget_as_a_rate_limit_error(router, clean_mock):
    # e2e-tiny-sdk has 400 tokens a day; each request holds ~170 and spends ~60.
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=tenants.TINY_SDK_KEY, max_retries=0)
    answered = 0
    with pytest.raises(openai.APIStatusError) as refused:
        for _ in range(12):
            client.chat.completions.create(model="tollgate/auto", messages=user(unique(EASY_PROMPT)), max_tokens=150)
            answered += 1
            settled_usage(router.url, tenants.TINY_SDK_KEY)
    assert answered > 0
    assert isinstance(refused.value, openai.RateLimitError), refused.value
    assert refused.value.code == "budget_exceeded"
    assert refused.value.type == "insufficient_quota"
    assert refused.value.response.headers["retry-after"].isdigit()
    assert len(clean_mock.requests()) == answered


def test_the_anthropic_sdk_parses_a_message_with_its_usage(claude, clean_mock):
    message = claude.messages.create(model="tollgate/auto", max_tokens=256, messages=user(unique(EASY_PROMPT)))
    [record] = clean_mock.requests()
    assert record["path"] == "/anthropic/v1/messages"
    assert message.model == record["model"]
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith(f"[mock:{record['model']}] ")
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == len(message.content[0].text.split())


def test_anthropic_sdk_stream_final_message_matches_the_plain_answer(claude, clean_mock):
    prompt = unique(HARD_PROMPT)
    plain = claude.messages.create(model="tollgate/auto", max_tokens=256, messages=user(prompt))
    with claude.messages.stream(model="tollgate/auto", max_tokens=256, messages=user(prompt)) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(deltas) > 3
    assert "".join(deltas) == final.content[0].text == plain.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert [r["stream"] for r in clean_mock.requests()] == [False, True]


def test_anthropic_sdk_raises_typed_errors(router, claude, clean_mock):
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model="gpt-3.5-turbo", max_tokens=16, messages=user("hi"))
    assert bad.value.body["error"]["code"] == "model_not_allowed"
    stranger = anthropic.Anthropic(base_url=router.url, api_key="tg-e2e-nobody", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        stranger.messages.create(model="tollgate/auto", max_tokens=16, messages=user("hi"))
    assert clean_mock.requests() == []
