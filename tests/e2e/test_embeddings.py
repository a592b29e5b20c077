"""`POST /v1/embeddings` on both hosts, as the official OpenAI SDK and a
plain HTTP client see it: routed down the tenant's `routing.embeddings`
chain (or to a pinned embedding model), reserved and charged on input
tokens only, cached at the first sighting even with the doorkeeper on, and
refused with the documented errors.

The mock answers an embeddings request with one deterministic vector per
input item and `usage.prompt_tokens` = ceil(chars / 4) per text item, the
length of each token-id array (crates/tollgate-mock/src/embeddings.rs). A
text of `" the" * n` is n tokens by that rule, by cl100k_base (what OpenAI's
embedding models use) and by o200k_base, so with such inputs the
reservation can be checked against the provider's count."""

from __future__ import annotations

import base64
import math
import random
import struct

import httpx
import openai
import pytest

import tenants
from calls import TIMEOUT, Recorded, assert_error, assert_routed_headers, bearer, micros, settled_usage, unique

KEY = tenants.EMBEDDINGS_KEY  # chain 3-small -> 3-large, ada-002 pinned, cache + doorkeeper on, metered
NO_CHAIN_KEY = tenants.EMBEDDINGS_NONE_KEY  # no routing.embeddings
TINY_KEY = tenants.EMBEDDINGS_TINY_KEY  # $0.0001 a day, 3-small only, no cache

FIRST, SECOND = (m.split("/", 1)[1] for m in tenants.EMBEDDING_CHAIN)

# Input list prices in micro-dollars per million tokens
# (https://openai.com/api/pricing/), as tollgate-core's built-in table has them.
EMBEDDING_PRICES = {
    "text-embedding-3-small": 20_000,
    "text-embedding-3-large": 130_000,
    "text-embedding-ada-002": 100_000,
}


def cost(model: str, tokens: int) -> int:
    """What tollgate charges for `tokens` input tokens of `model`, rounded up
    once to the micro-dollar, as calls.cost_micros does for chat."""
    return math.ceil(tokens * EMBEDDING_PRICES[model] / 1_000_000)


def mock_tokens(items: list) -> int:
    """The mock's `usage.prompt_tokens` for these input items."""
    return sum(len(item) if isinstance(item, list) else math.ceil(len(item) / 4) for item in items)


def the_words(n: int) -> str:
    """A text of exactly n tokens, by the mock's rule, cl100k_base and o200k_base."""
    return " the" * n


def text_estimates(tokens: int) -> set[int]:
    """What a host may reserve for texts of `tokens` tokens: exactly that
    with cl100k_base compiled in, else the o200k_base count × 1.1, rounded
    up (tollgate-core count.rs, `method_for`). The shipped hosts build only
    o200k_base."""
    return {tokens, math.ceil(tokens * 1.1)}


def embed(url: str, key: str, body: dict | bytes, headers: dict | None = None) -> httpx.Response:
    h = {**bearer(key), **(headers or {})}
    if isinstance(body, bytes):
        return httpx.post(url + "/v1/embeddings", content=body, headers=h, timeout=TIMEOUT)
    return httpx.post(url + "/v1/embeddings", json=body, headers=h, timeout=TIMEOUT)


def vectors(body: dict) -> list[list[float]]:
    """The vectors of an embeddings body, base64 (little-endian float32) or floats."""
    out = []
    for entry in body["data"]:
        value = entry["embedding"]
        if isinstance(value, str):
            raw = base64.b64decode(value)
            value = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        out.append(value)
    return out


def ledger_spent(report: dict) -> tuple[int, int]:
    """(tokens, micro-dollars) the tenant's one budget has spent."""
    [budget] = report["budgets"]
    return budget["spent_tokens"], micros(budget["spent_usd"])


def held_by(before: dict, response) -> tuple[int, int]:
    """(tokens, micro-dollars) the request behind `response` reserved: its
    limit, less what was spent before it (`before`, read with nothing
    reserved), less the headroom its answer reports after its own hold."""
    [budget] = before["budgets"]
    left_tokens = int(response.headers["x-tollgate-budget-remaining-tokens"])
    left_micros = micros(response.headers["x-tollgate-budget-remaining-usd"])
    return (
        budget["limit_tokens"] - budget["spent_tokens"] - left_tokens,
        micros(budget["limit_usd"]) - micros(budget["spent_usd"]) - left_micros,
    )


def sdk(router, key: str = KEY) -> openai.OpenAI:
    # No retries: a retried request would reach the mock twice.
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key=key, max_retries=0)


def test_the_openai_sdk_embeds_and_the_same_call_again_is_a_free_cache_hit(router, clean_mock):
    client = sdk(router)
    items = [unique("The router caches embeddings"), unique("Budgets are charged on input tokens"), the_words(250)]
    ledger = Recorded(router.url, KEY)

    first = client.embeddings.with_raw_response.create(model="tollgate/auto", input=items)
    after_first = ledger.wait_for(1)
    second = client.embeddings.with_raw_response.create(model="tollgate/auto", input=items)
    after_second = ledger.wait_for(1)

    # The SDK asked for base64 (its default) and decoded the vectors itself.
    [record] = clean_mock.requests()
    assert record["path"] == "/openai/v1/embeddings"
    assert record["model"] == FIRST
    assert record["body"] == {"model": FIRST, "input": items, "encoding_format": "base64"}
    one, two = first.parse(), second.parse()
    assert [len(d.embedding) for d in one.data] == [8, 8, 8]
    assert [d.index for d in one.data] == [0, 1, 2]
    assert [d.embedding for d in two.data] == [d.embedding for d in one.data]
    assert one.model == two.model == FIRST
    tokens = mock_tokens(items)
    assert one.usage.prompt_tokens == one.usage.total_tokens == tokens

    assert_routed_headers(first)
    assert first.headers["x-tollgate-route"] == "auto"
    assert first.headers["x-tollgate-model"] == f"openai/{FIRST}"
    assert first.headers["x-tollgate-cache"] == "miss"
    assert micros(first.headers["x-tollgate-cost-usd"]) == cost(FIRST, tokens)
    spent_before, spent_first = ledger_spent(ledger.start), ledger_spent(after_first)
    assert (spent_first[0] - spent_before[0], spent_first[1] - spent_before[1]) == (tokens, cost(FIRST, tokens))

    assert_routed_headers(second)
    assert second.headers["x-tollgate-cache"] == "hit"
    assert second.headers["x-tollgate-model"] == first.headers["x-tollgate-model"]
    assert second.headers["x-tollgate-cost-usd"] == "0.000000"
    assert second.headers["x-tollgate-saved-usd"] == first.headers["x-tollgate-cost-usd"]
    assert second.headers["x-tollgate-request-id"] != first.headers["x-tollgate-request-id"]
    assert ledger_spent(after_second) == spent_first


def test_the_cache_key_is_model_input_encoding_and_dimensions_but_not_user(router, clean_mock):
    items = [unique("cache key"), unique("another chunk")]
    base = {"model": "tollgate/auto", "input": items, "encoding_format": "float"}
    ledger = Recorded(router.url, KEY)

    def send(body: dict, expected: str) -> dict:
        r = embed(router.url, KEY, body)
        assert r.status_code == 200, r.text
        assert r.headers["x-tollgate-cache"] == expected, body
        ledger.wait_for(1)
        return r.json()

    floats = send(base, "miss")
    assert vectors(send({**base, "user": "alice"}, "hit")) == vectors(floats)
    packed = send({**base, "encoding_format": "base64"}, "miss")
    assert all(isinstance(d["embedding"], str) for d in packed["data"])
    assert vectors(packed) == vectors(floats), "the same float32 values either way"
    short = send({**base, "dimensions": 4}, "miss")
    assert [len(v) for v in vectors(short)] == [4, 4]
    assert vectors(send({**base, "dimensions": 4, "user": "bob"}, "hit")) == vectors(short)
    assert [r["body"].get("encoding_format") for r in clean_mock.requests()] == ["float", "base64", "float"]
    assert [r["body"].get("dimensions") for r in clean_mock.requests()] == [None, None, 4]


def test_a_batch_is_reserved_and_charged_per_item_at_the_providers_count(router, clean_mock):
    texts = [the_words(n) for n in random.sample(range(50, 400), 3)]
    ids = [[(7 * i + n) % 50_000 for i in range(n)] for n in random.sample(range(50, 400), 3)]
    ledger = Recorded(router.url, KEY)
    before = ledger.start
    for items in (texts, ids):
        r = embed(router.url, KEY, {"model": "tollgate/auto", "input": items})
        assert r.status_code == 200, r.text
        after = ledger.wait_for(1)
        record = clean_mock.requests()[-1]
        assert record["model"] == FIRST, "the provider gets the chosen model's name"
        assert record["body"] == {"model": FIRST, "input": items}
        body = r.json()
        tokens = mock_tokens(items)
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        assert len({tuple(v) for v in vectors(body)}) == 3
        # Counted item by item: the JSON text of the array (brackets,
        # quotes, commas) would count more. Token ids need no tokenizer.
        held_tokens, held_micros = held_by(before, r)
        allowed = text_estimates(tokens) if items is texts else {tokens}
        assert held_tokens in allowed, f"reserved {held_tokens} tokens for {tokens} (provider's count) in {items!r:.80}"
        assert held_micros >= cost(FIRST, tokens)
        spent_from, spent_to = ledger_spent(before), ledger_spent(after)
        assert (spent_to[0] - spent_from[0], spent_to[1] - spent_from[1]) == (tokens, cost(FIRST, tokens))
        assert micros(r.headers["x-tollgate-cost-usd"]) == cost(FIRST, tokens)
        before = after
    assert len(clean_mock.requests()) == 2


@pytest.mark.parametrize("name", ["tollgate/auto", "tollgate", "auto"])
def test_every_virtual_model_name_takes_the_embedding_chain(router, clean_mock, name):
    ledger = Recorded(router.url, KEY)
    r = embed(router.url, KEY, {"model": name, "input": unique("virtual name")})
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-model"] == f"openai/{FIRST}"
    assert r.headers["x-tollgate-route"] == "auto"
    assert [rec["model"] for rec in clean_mock.requests()] == [FIRST]
    ledger.wait_for(1)


def test_a_pinned_embedding_model_named_by_the_client_is_used_as_is(router, clean_mock):
    client = sdk(router)
    items = [unique("pinned"), the_words(120)]
    ledger = Recorded(router.url, KEY)
    raw = client.embeddings.with_raw_response.create(
        model="text-embedding-ada-002", input=items, encoding_format="float"
    )
    after = ledger.wait_for(1)
    result = raw.parse()
    assert result.model == "text-embedding-ada-002"
    assert raw.headers["x-tollgate-route"] == "pinned"
    assert raw.headers["x-tollgate-model"] == "openai/text-embedding-ada-002"
    [record] = clean_mock.requests()
    assert record["body"] == {"model": "text-embedding-ada-002", "input": items, "encoding_format": "float"}
    tokens = mock_tokens(items)
    assert result.usage.prompt_tokens == tokens
    assert micros(raw.headers["x-tollgate-cost-usd"]) == cost("text-embedding-ada-002", tokens)
    assert ledger_spent(after)[1] - ledger_spent(ledger.start)[1] == cost("text-embedding-ada-002", tokens)


def test_a_model_neither_virtual_nor_pinned_is_refused(router, clean_mock):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(router).embeddings.create(model="text-embedding-unknown", input="hello")
    assert refused.value.status_code == 400
    assert refused.value.param == "model"
    assert refused.value.code == "model_not_allowed"
    assert clean_mock.requests() == []


def test_a_tenant_without_an_embedding_chain_is_refused_tollgate_auto(router, clean_mock):
    before = settled_usage(router.url, NO_CHAIN_KEY)
    r = embed(router.url, NO_CHAIN_KEY, {"model": "tollgate/auto", "input": "hello"})
    error = assert_error(r, 400, "invalid_value", param="model")
    assert "embedding" in error["message"], error
    with pytest.raises(openai.BadRequestError):
        sdk(router, NO_CHAIN_KEY).embeddings.create(model="tollgate/auto", input=["hello"])
    assert clean_mock.requests() == []
    assert settled_usage(router.url, NO_CHAIN_KEY)["budgets"] == before["budgets"]


# (body, code, param): each refused before anything goes upstream.
MALFORMED = [
    ({"model": "tollgate/auto"}, "missing_required_parameter", "input"),
    ({"model": "tollgate/auto", "input": None}, "missing_required_parameter", "input"),
    ({"input": "hello"}, "missing_required_parameter", "model"),
    ({"model": "tollgate/auto", "input": 42}, "invalid_type", "input"),
    ({"model": "tollgate/auto", "input": {"text": "hello"}}, "invalid_type", "input"),
    ({"model": "tollgate/auto", "input": ["hello", 3]}, "invalid_type", "input"),
    ({"model": "tollgate/auto", "input": [[1, 2], "hello"]}, "invalid_type", "input"),
    ({"model": "tollgate/auto", "input": [1, "two"]}, "invalid_type", "input"),
    ({"model": "tollgate/auto", "input": []}, "invalid_value", "input"),
    ({"model": "tollgate/auto", "input": ""}, "invalid_value", "input"),
    ({"model": "tollgate/auto", "input": ["hello", ""]}, "invalid_value", "input"),
    ({"model": "tollgate/auto", "input": [[1, 2], []]}, "invalid_value", "input"),
    ({"model": "tollgate/auto", "input": "hello", "encoding_format": "int8"}, "invalid_value", "encoding_format"),
    ({"model": "tollgate/auto", "input": "hello", "dimensions": 0}, "invalid_value", "dimensions"),
    ({"model": "tollgate/auto", "input": "hello", "dimensions": "8"}, "invalid_type", "dimensions"),
    (b'{"model": "tollgate/auto", "input": ["hello"', "invalid_json", None),
    (b"input=hello", "invalid_json", None),
    (b"", "empty_body", None),
]


def test_malformed_bodies_are_refused_with_openai_errors_and_cost_nothing(router, clean_mock):
    before = settled_usage(router.url, KEY)
    for body, code, param in MALFORMED:
        r = embed(router.url, KEY, body)
        try:
            assert_error(r, 400, code, param=param)
        except AssertionError as e:
            raise AssertionError(f"body {body!r}: {e}") from e
    assert clean_mock.requests() == []
    after = settled_usage(router.url, KEY)
    assert after["budgets"] == before["budgets"]


def test_a_503_from_the_first_model_falls_back_to_the_second(router, clean_mock):
    clean_mock.faults("status:503", model=FIRST, times=1)
    items = [unique("fallback"), the_words(300)]
    ledger = Recorded(router.url, KEY)
    r = embed(router.url, KEY, {"model": "tollgate/auto", "input": items})
    assert r.status_code == 200, r.text
    after = ledger.wait_for(1)
    assert r.headers["x-tollgate-model"] == f"openai/{SECOND}"
    assert r.headers["x-tollgate-fallbacks"] == "1"
    body = r.json()
    assert body["model"] == SECOND
    assert len(body["data"]) == 2
    records = clean_mock.requests()
    assert [(rec["model"], rec["status"]) for rec in records] == [(FIRST, 503), (SECOND, 200)]
    assert records[1]["body"] == {**records[0]["body"], "model": SECOND}
    tokens = mock_tokens(items)
    assert micros(r.headers["x-tollgate-cost-usd"]) == cost(SECOND, tokens)
    spent_from, spent_to = ledger_spent(ledger.start), ledger_spent(after)
    assert (spent_to[0] - spent_from[0], spent_to[1] - spent_from[1]) == (tokens, cost(SECOND, tokens))


def test_a_spent_budget_refuses_embeddings_with_budget_exceeded(router, clean_mock):
    # 2,000 token ids at $0.02 per million: 40 micro-dollars reserved and
    # charged each; the tenant's $0.0001 a day holds two.
    client = sdk(router, TINY_KEY)
    start = ledger_spent(settled_usage(router.url, TINY_KEY))
    answered = 0
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(4):
            client.embeddings.create(model="tollgate/auto", input=list(range(2000)))
            answered += 1
            settled_usage(router.url, TINY_KEY)
    assert answered == 2
    assert refused.value.code == "budget_exceeded"
    assert refused.value.response.headers["retry-after"].isdigit()
    assert len(clean_mock.requests()) == answered
    end = ledger_spent(settled_usage(router.url, TINY_KEY))
    assert (end[0] - start[0], end[1] - start[1]) == (4000, 80)



def test_a_cached_embedding_is_never_served_to_another_tenant(router, clean_mock):
    body = {"model": "tollgate/auto", "input": [unique("isolated chunk")], "encoding_format": "float"}
    ledger = Recorded(router.url, KEY)
    first = embed(router.url, KEY, body)
    assert (first.status_code, first.headers["x-tollgate-cache"]) == (200, "miss"), first.text
    ledger.wait_for(1)
    assert embed(router.url, KEY, body).headers["x-tollgate-cache"] == "hit"
    # acme (examples/tenant.json: the same first embedding model, its cache
    # on) sends the same body: its own miss, answered by the provider.
    other = embed(router.url, tenants.ACME_KEY, body)
    assert (other.status_code, other.headers["x-tollgate-cache"]) == (200, "miss"), other.text
    assert len(clean_mock.requests()) == 2
