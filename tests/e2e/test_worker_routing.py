"""Routing, on both hosts (the Worker and the Envoy filter): which model a
request reaches, as the client sees it (decision headers, the answer) and
as the provider sees it (the mock's request log), plus the router's own
endpoints."""

from __future__ import annotations

import httpx
import pytest

import tenants
from calls import (
    EASY_PROMPT,
    HARD_PROMPT,
    REQUEST_ID,
    Recorded,
    assert_error,
    assert_routed_headers,
    bearer,
    chat,
    chat_body,
    content_of,
    leaked,
    messages,
    messages_body,
    openai_stream_text,
    unique,
)
from hosts import ACME_KEY, GLOBEX_KEY


def tier_models(config: dict, tier: str, provider_api: str) -> list[str]:
    """A tier's chain for one API, as `provider/model` (from the config, not hard-coded)."""
    chain = next(t["models"] for t in config["routing"]["tiers"] if t["name"] == tier)
    anthropic = [m for m in chain if m.startswith("anthropic/")]
    return anthropic if provider_api == "anthropic" else [m for m in chain if not m.startswith("anthropic/")]


def bare(model: str) -> str:
    return model.split("/", 1)[1]


def assert_served_by(response: httpx.Response, records: list[dict], tier: str | None, model: str, path: str) -> None:
    """Headers, answer and the provider's log agree on one model."""
    assert response.status_code == 200, response.text
    assert_routed_headers(response)
    assert response.headers.get("x-tollgate-tier") == tier
    assert response.headers["x-tollgate-model"] == model
    assert [(r["path"], r["model"]) for r in records] == [(path, bare(model))]
    assert content_of(response).startswith(f"[mock:{bare(model)}]")
    assert response.json()["model"] == bare(model)


@pytest.mark.parametrize(
    ("prompt", "tier"), [(EASY_PROMPT, "cheap"), (HARD_PROMPT, "premium")], ids=["easy", "hard"]
)
def test_an_openai_prompt_goes_to_the_first_model_of_the_tier_its_score_picks(router, clean_mock, prompt, tier):
    r = chat(router.url, ACME_KEY, chat_body(unique(prompt)))
    model = tier_models(tenants.ACME, tier, "openai")[0]
    assert_served_by(r, clean_mock.requests(), tier, model, "/openai/v1/chat/completions")
    assert r.headers["x-tollgate-route"] == "auto"
    score = float(r.headers["x-tollgate-score"])
    boundary = tenants.ACME["routing"]["tiers"][0]["up_to_score"]
    assert (score <= boundary) == (tier == "cheap"), score


@pytest.mark.parametrize(
    ("prompt", "tier"), [(EASY_PROMPT, "cheap"), (HARD_PROMPT, "premium")], ids=["easy", "hard"]
)
def test_an_anthropic_prompt_goes_to_the_tiers_first_anthropic_model(router, clean_mock, prompt, tier):
    r = messages(router.url, ACME_KEY, messages_body(unique(prompt)))
    model = tier_models(tenants.ACME, tier, "anthropic")[0]
    assert_served_by(r, clean_mock.requests(), tier, model, "/anthropic/v1/messages")
    assert r.json()["type"] == "message"


def test_an_easy_and_a_hard_prompt_are_served_by_different_models(router, clean_mock):
    easy = chat(router.url, ACME_KEY, chat_body(unique(EASY_PROMPT)))
    hard = chat(router.url, ACME_KEY, chat_body(unique(HARD_PROMPT)))
    assert easy.status_code == hard.status_code == 200
    assert float(easy.headers["x-tollgate-score"]) < float(hard.headers["x-tollgate-score"])
    assert easy.headers["x-tollgate-model"] != hard.headers["x-tollgate-model"]
    assert [r["model"] for r in clean_mock.requests()] == [
        bare(easy.headers["x-tollgate-model"]),
        bare(hard.headers["x-tollgate-model"]),
    ]


@pytest.mark.parametrize(("tier", "prompt"), [("premium", EASY_PROMPT), ("cheap", HARD_PROMPT)])
def test_a_tollgate_tier_model_name_picks_that_tier_whatever_the_score(router, clean_mock, tier, prompt):
    r = chat(router.url, ACME_KEY, chat_body(unique(prompt), model=f"tollgate/{tier}"))
    model = tier_models(tenants.ACME, tier, "openai")[0]
    assert_served_by(r, clean_mock.requests(), tier, model, "/openai/v1/chat/completions")
    assert r.headers["x-tollgate-route"] == "tier"


def test_a_pinned_model_passes_through_unrouted(router, clean_mock):
    pinned = tenants.ACME["routing"]["pinned_models"][0]  # openai/gpt-4o-2024-08-06
    r = chat(router.url, ACME_KEY, chat_body(unique(HARD_PROMPT), model=bare(pinned)))
    assert_served_by(r, clean_mock.requests(), None, pinned, "/openai/v1/chat/completions")
    assert r.headers["x-tollgate-route"] == "pinned"


def test_an_allowed_model_name_is_routed_like_auto(router, clean_mock):
    # acme allows gpt-4.1*: a client asking for gpt-4.1 with an easy prompt gets the cheap tier.
    r = chat(router.url, ACME_KEY, chat_body(unique(EASY_PROMPT), model="gpt-4.1"))
    model = tier_models(tenants.ACME, "cheap", "openai")[0]
    assert bare(model) != "gpt-4.1"
    assert_served_by(r, clean_mock.requests(), "cheap", model, "/openai/v1/chat/completions")
    assert r.headers["x-tollgate-route"] == "auto"


@pytest.mark.parametrize("model", ["gpt-3.5-turbo", "gemini-2.5-pro", "tollgate/ultra", "openai/gpt-4o"])
def test_a_model_the_tenant_does_not_allow_is_refused_and_nothing_is_sent(router, clean_mock, model):
    r = chat(router.url, ACME_KEY, chat_body(unique(EASY_PROMPT), model=model))
    error = assert_error(r, 400, "model_not_allowed", param="model")
    assert model in error["message"]
    assert REQUEST_ID.match(r.headers.get("x-tollgate-request-id", "")), dict(r.headers)
    assert clean_mock.requests() == []


def test_an_anthropic_request_to_a_tier_without_an_anthropic_model_is_translated_for_its_model(router, clean_mock):
    # e2e-providers' cheap tier has only OpenAI-compatible models (google,
    # mistral): an easy Anthropic request stays in that tier, said to its
    # first model in the chat API and answered in the Messages API.
    r = messages(router.url, tenants.PROVIDERS_KEY, messages_body(unique(EASY_PROMPT)))
    model = tier_models(tenants.PROVIDERS, "cheap", "openai")[0]
    assert_served_by(r, clean_mock.requests(), "cheap", model, "/google/v1/chat/completions")
    assert r.headers["x-tollgate-translated"] == "anthropic->openai"
    body = r.json()
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["stop_reason"] == "end_turn"
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
    assert float(r.headers["x-tollgate-score"]) <= tenants.PROVIDERS["routing"]["tiers"][0]["up_to_score"]


@pytest.mark.parametrize(
    ("model_name", "provider"),
    [("tollgate/cheap", "google"), ("tollgate/premium", "mistral")],
)
def test_openai_compatible_providers_get_their_own_base_url_and_key(router, clean_mock, model_name, provider):
    r = chat(router.url, tenants.PROVIDERS_KEY, chat_body(unique(EASY_PROMPT), model=model_name))
    tier = model_name.split("/")[1]
    model = tier_models(tenants.PROVIDERS, tier, "openai")[0]
    assert model.startswith(f"{provider}/")
    assert_served_by(r, clean_mock.requests(), tier, model, f"/{provider}/v1/chat/completions")
    [record] = clean_mock.requests()
    assert record["headers"]["authorization"] == f"Bearer sk-mock-{provider}"


def test_the_provider_gets_the_provider_key_and_never_the_tenant_key(router, clean_mock):
    extra = {"cookie": "session=tenant-cookie", "x-tollgate-tenant": "globex"}
    chat(router.url, ACME_KEY, chat_body(unique(EASY_PROMPT)), headers=extra).raise_for_status()
    messages(router.url, ACME_KEY, messages_body(unique(EASY_PROMPT)), headers=extra).raise_for_status()
    with httpx.stream(
        "POST",
        router.url + "/v1/chat/completions",
        json=chat_body(unique(HARD_PROMPT), stream=True),
        headers={**bearer(ACME_KEY), **extra},
        timeout=60,
    ) as s:
        assert s.status_code == 200
        s.read()
    openai_call, anthropic_call, stream_call = clean_mock.requests()
    assert openai_call["headers"]["authorization"] == "Bearer sk-mock-openai"
    assert stream_call["headers"]["authorization"] == "Bearer sk-mock-openai"
    assert anthropic_call["headers"]["x-api-key"] == "sk-mock-anthropic"
    assert "authorization" not in anthropic_call["headers"]
    assert anthropic_call["headers"]["anthropic-version"] == "2023-06-01"
    records = [openai_call, anthropic_call, stream_call]
    assert leaked(records, ACME_KEY) == []
    assert leaked(records, "tenant-cookie") == []
    assert all("x-tollgate-tenant" not in r["headers"] for r in records)


def test_a_clients_anthropic_version_header_is_forwarded(router, clean_mock):
    r = messages(router.url, ACME_KEY, messages_body(unique(EASY_PROMPT)), headers={"anthropic-version": "2023-01-01"})
    assert r.status_code == 200, r.text
    [record] = clean_mock.requests()
    assert record["headers"]["anthropic-version"] == "2023-01-01"


def test_the_forwarded_body_changes_only_the_model_and_the_output_cap(router, clean_mock):
    body = chat_body(unique(EASY_PROMPT), temperature=0.3, user="u-42", seed=7, metadata={"k": "v"})
    chat(router.url, ACME_KEY, body).raise_for_status()
    [record] = clean_mock.requests()
    sent = record["body"]
    # acme has budgets and no client cap: the default reservation becomes the cap.
    cap = tenants.ACME["budgets"]["default_output_reservation"]
    assert sent == {**body, "model": record["model"], "max_completion_tokens": cap}
    assert list(sent)[: len(body)] == list(body), "client field order is kept"


def test_every_routed_answer_carries_the_decision_headers(router, clean_mock):
    prompt = unique(EASY_PROMPT)
    cached = Recorded(router.url, tenants.CACHE_A_KEY)
    answers = [
        chat(router.url, ACME_KEY, chat_body(prompt)),
        chat(router.url, ACME_KEY, chat_body(prompt, stream=True)),
        messages(router.url, ACME_KEY, messages_body(prompt)),
        chat(router.url, tenants.CACHE_A_KEY, chat_body(prompt, temperature=0)),
    ]
    cached.wait_for(1)  # the miss above is recorded, so its cache entry is in place
    answers += [
        chat(router.url, tenants.CACHE_A_KEY, chat_body(prompt, temperature=0)),  # a hit
        chat(router.url, ACME_KEY, chat_body(prompt, model="gpt-3.5-turbo")),  # refused after parsing
        chat(router.url, ACME_KEY, b'{"model":"tollgate/auto","messages":[]}'),  # refused while parsing
    ]
    cached.wait_for(1)
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 200, 400, 400]
    assert [a.headers.get("x-tollgate-cache") for a in answers[:5]] == [
        "bypass; reason=sampled", "bypass; reason=sampled", "bypass; reason=sampled", "miss", "hit"
    ]
    ids = set()
    for a in answers[:5]:
        assert_routed_headers(a)
        assert a.headers["x-tollgate-tier"] == "cheap"
        ids.add(a.headers["x-tollgate-request-id"])
    for a in answers[5:]:
        assert REQUEST_ID.match(a.headers.get("x-tollgate-request-id", "")), dict(a.headers)
        ids.add(a.headers["x-tollgate-request-id"])
    assert len(ids) == len(answers), "request ids are unique"
    assert openai_stream_text(answers[1].text).startswith("[mock:")


def test_every_chat_answer_carries_a_request_id_even_when_refused_before_routing(router, clean_mock):
    """README: "Every response carries the decision"; a request id is what a
    client quotes to the operator, and refusals are what they ask about."""
    url = router.url + "/v1/chat/completions"
    answers = {
        "no key": httpx.post(url, json=chat_body("hi"), timeout=30),
        "unknown key": httpx.post(url, json=chat_body("hi"), headers=bearer("tg-e2e-nobody"), timeout=30),
        "too large": httpx.post(url, content=b"a" * (5 << 20), headers=bearer(ACME_KEY), timeout=60),
    }
    missing = {
        name: r.status_code
        for name, r in answers.items()
        if not REQUEST_ID.match(r.headers.get("x-tollgate-request-id", ""))
    }
    assert missing == {}, f"answers without x-tollgate-request-id: {missing}"


@pytest.mark.parametrize(("key", "config"), [(ACME_KEY, tenants.ACME), (GLOBEX_KEY, tenants.GLOBEX)])
def test_models_lists_the_tenants_tiers_as_tollgate_models_plus_its_pinned_models(router, clean_mock, key, config):
    r = httpx.get(router.url + "/v1/models", headers=bearer(key), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    expected = (
        ["tollgate/auto"]
        + [f"tollgate/{t['name']}" for t in config["routing"]["tiers"]]
        + [bare(m) for m in config["routing"].get("pinned_models", [])]
    )
    assert [m["id"] for m in body["data"]] == expected
    assert all(m["object"] == "model" for m in body["data"])
    assert clean_mock.requests() == []


def test_models_needs_a_key(router):
    assert_error(httpx.get(router.url + "/v1/models", timeout=30), 401, "invalid_api_key")


def test_healthz_answers_without_a_key(router, clean_mock):
    r = httpx.get(router.url + "/healthz", timeout=30)
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert httpx.head(router.url + "/healthz", timeout=30).status_code == 200
    assert clean_mock.requests() == []
