"""Refusals, on both hosts: bad keys, spent budgets, bad input
(tests/vectors/bad_input.json), unknown paths and methods. Each is the
documented OpenAI-shaped error, sends nothing upstream and leaves no budget
held."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

import hosts
import tenants
from calls import (
    EASY_PROMPT,
    assert_error,
    bearer,
    chat,
    chat_body,
    messages_body,
    reserved,
    settled_usage,
    spent,
    unique,
    usage,
)
from hosts import ACME_KEY, ROOT

VECTORS = json.loads((ROOT / "tests" / "vectors" / "bad_input.json").read_text())
CASES = VECTORS["cases"]
CHUNK = 64 * 1024


def vector_body(spec: dict | None) -> bytes:
    if spec is None:
        return b""
    if "text" in spec:
        return spec["text"].encode()
    if "base64" in spec:
        return base64.b64decode(spec["base64"])
    unit = spec["repeat"].encode()
    if "times" in spec:
        middle = unit * spec["times"]
    else:
        n = spec["bytes"]
        middle = (unit * (n // len(unit) + 1))[:n]
    return spec.get("prefix", "").encode() + middle + spec.get("suffix", "").encode()


def vector_request(case: dict, key: str) -> tuple[str, dict, bytes]:
    auth = case.get("auth", "tenant")
    anthropic = case["path"] == "/v1/messages"
    headers: dict[str, str] = {}
    if auth != "none":
        secret = key if auth == "tenant" else "tg-e2e-no-such-key"
        headers.update({"x-api-key": secret} if anthropic else bearer(secret))
    headers.update(case.get("headers", {}))
    return case.get("method", "POST"), headers, vector_body(case.get("body"))


def send_vector(url: str, case: dict, key: str) -> httpx.Response:
    method, headers, body = vector_request(case, key)
    if not case.get("chunked"):
        return httpx.request(method, url + case["path"], content=body, headers=headers, timeout=120)
    pieces = lambda: (body[i : i + CHUNK] for i in range(0, len(body), CHUNK))  # noqa: E731
    for _ in range(3):
        r = httpx.request(method, url + case["path"], content=pieces(), headers=headers, timeout=120)
        # wrangler dev's local proxy, not the Worker: when a Worker answers
        # before a chunked upload ends, the proxy sometimes reports the
        # reset of its connection to workerd as this 503. Try again.
        if not (r.status_code == 503 and r.text.startswith("Your worker restarted mid-request")):
            return r
    return r


def body_lost_to_reset(case: dict, r: httpx.Response) -> bool:
    """A chunked upload refused part-way ends in a TCP reset (the rest of the
    upload is never read), which can destroy the answer's body after its
    status line arrived: httpx reads only once it has sent everything. The
    status is still the Worker's; the body cannot be checked."""
    return bool(case.get("chunked")) and r.status_code == case["expect"]["status"] and r.content == b""


def test_the_vector_file_is_well_formed():
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)), "case names are unique"
    for case in CASES:
        assert case["path"] in ("/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/responses"), case["name"]
        assert case.get("auth", "tenant") in ("tenant", "none", "unknown"), case["name"]
        assert {"status", "code"} <= set(case["expect"]), case["name"]
        body = case.get("body")
        assert body is None or len(set(body) & {"text", "base64", "repeat"}) == 1, case["name"]
    assert tenants.ERRORS["limits"] == VECTORS["tenant"]["changes"]["limits"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input_is_refused_with_its_code_and_reaches_nothing(router, clean_mock, case):
    key = tenants.ERRORS_KEY
    before = usage(router.url, key)
    r = send_vector(router.url, case, key)
    expect = case["expect"]
    kw = {"param": expect["param"]} if "param" in expect else {}
    if not body_lost_to_reset(case, r):
        assert_error(r, expect["status"], expect["code"], **kw)
    assert clean_mock.requests() == []
    after = settled_usage(router.url, key, timeout=2)
    assert spent(after) == spent(before)
    assert all(tokens == 0 for tokens, _ in reserved(after))


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_an_unknown_key_gets_401_invalid_api_key(router, clean_mock, header):
    value = "Bearer tg-e2e-nobody" if header == "authorization" else "tg-e2e-nobody"
    for path, body in (("/v1/chat/completions", chat_body("hi")), ("/v1/messages", messages_body("hi"))):
        r = httpx.post(router.url + path, json=body, headers={header: value}, timeout=30)
        error = assert_error(r, 401, "invalid_api_key", param=None)
        assert error["type"] == "invalid_request_error"
        assert "tg-e2e-nobody" not in r.text, "the key is never echoed"
    assert clean_mock.requests() == []


def test_a_missing_key_gets_401_invalid_api_key(router, clean_mock):
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/v1/usage")):
        r = httpx.request(method, router.url + path, json=chat_body("hi"), timeout=30)
        assert_error(r, 401, "invalid_api_key", param=None)
    assert clean_mock.requests() == []


def test_a_disabled_key_gets_401_while_its_tenants_other_key_works(router, clean_mock):
    body = chat_body(unique(EASY_PROMPT))
    r = chat(router.url, tenants.ERRORS_DISABLED_KEY, body)
    assert_error(r, 401, "invalid_api_key")
    assert clean_mock.requests() == []
    assert chat(router.url, tenants.ERRORS_KEY, body).status_code == 200


def test_a_key_whose_tenant_has_no_config_gets_503_tenant_unavailable(router, clean_mock, run_dir):
    if router.name == "envoy":
        # Envoy: keys and tenants arrive together in one plugin config, which
        # the filter checks whole when it loads; a key naming no tenant is
        # refused there, with the config (envoy/README.md, "Differences from
        # the Worker"). So the session Envoy does not know the key at all...
        r = chat(router.url, tenants.ORPHAN_KEY, chat_body(unique(EASY_PROMPT)))
        assert_error(r, 401, "invalid_api_key")
        assert clean_mock.requests() == []
        # ...and a config that holds it does not load.
        plugin = hosts.plugin_config(clean_mock, [(tenants.ACME, [ACME_KEY])])
        orphan = hosts.sha256_hex(tenants.ORPHAN_KEY)
        plugin["api_keys"][orphan] = tenants.EXTRA_ENTRIES[f"apikey:{orphan}"]
        bootstrap = hosts.envoy_bootstrap(
            plugin, port=hosts.free_port(), admin_port=hosts.free_port(), mock=clean_mock,
            wasm=hosts.require_envoy_filter(),
        )
        done = hosts.validate_envoy_config(bootstrap, run_dir / "envoy-orphan-key", "orphan-key")
        assert done.returncode != 0, done.stdout[-2000:]
        refusal = [line for line in done.stdout.splitlines() if "plugin configuration refused" in line]
        assert refusal and f"api_keys.{orphan}.tenant_id" in refusal[0], done.stdout[-2000:]
        return
    r = chat(router.url, tenants.ORPHAN_KEY, chat_body(unique(EASY_PROMPT)))
    assert_error(r, 503, "tenant_unavailable")
    assert r.headers.get("retry-after", "").isdigit()
    assert clean_mock.requests() == []


def test_a_spent_budget_gets_429_budget_exceeded_and_nothing_reaches_the_provider(router, clean_mock):
    key = tenants.TINY_KEY
    limit = tenants.TINY["budgets"]["limits"][0]
    # Each request holds its prompt plus the 120-token cap of a 400-token day
    # and spends its prompt plus 13-41 answer words: a few fit, then not.
    answered: list[tuple[dict, httpx.Response, int]] = []  # (body, answer, tokens spent before it)
    spent_tokens = 0
    for _ in range(12):
        body = chat_body(unique(EASY_PROMPT), max_tokens=120)
        r = chat(router.url, key, body)
        if r.status_code == 429:
            break
        # Anything else but an answer is not what this test is about: say so.
        assert r.status_code == 200, f"expected an answer or the budget's 429, got {r.status_code} {r.text}"
        answered.append((body, r, spent_tokens))
        spent_tokens = settled_usage(router.url, key)["budgets"][0]["spent_tokens"]
    else:
        pytest.fail(f"a {limit['tokens']}-token day never ran out after 12 requests")
    assert answered, "the first request fits the budget"
    clean_mock.clear_requests()

    # What the last answered request held, as its grant reported it: the
    # limit, less what was spent before it, less the headroom left after it.
    last_body, last, spent_before_last = answered[-1]
    hold = limit["tokens"] - spent_before_last - int(last.headers["x-tollgate-budget-remaining-tokens"])
    assert hold > 120, f"the hold is the prompt plus the 120-token cap, not {hold}"
    # Sent again (no temperature, so never from the cache), it asks for that
    # same hold, which no longer fits.
    refused = chat(router.url, key, last_body)
    error = assert_error(refused, 429, "budget_exceeded")
    assert error["type"] == "insufficient_quota"
    assert limit["name"] in error["message"], error["message"]
    retry_after = int(refused.headers["retry-after"])
    assert 0 < retry_after <= 86400, "the daily window resets by the next UTC midnight"
    assert refused.headers["x-tollgate-request-id"].startswith("req_")
    assert clean_mock.requests() == []

    report = settled_usage(router.url, key)
    [daily] = report["budgets"]
    assert daily["reserved_tokens"] == 0
    assert daily["spent_tokens"] == sum(a.json()["usage"]["total_tokens"] for _, a, _ in answered)
    assert daily["spent_tokens"] + hold > limit["tokens"], (daily, hold)


def test_a_request_larger_than_the_whole_budget_gets_400_exceeds_budget_limit(router, clean_mock):
    limit = tenants.TINY["budgets"]["limits"][0]["tokens"]
    r = chat(router.url, tenants.TINY_KEY, chat_body(unique(EASY_PROMPT), max_tokens=limit + 1))
    assert_error(r, 400, "exceeds_budget_limit", param="max_tokens")
    assert clean_mock.requests() == []


@pytest.mark.parametrize("path", ["/", "/v1", "/v1/completions", "/v1/chat/completion", "/v2/models", "/healthz/x"])
def test_an_unknown_path_gets_404(router, clean_mock, path):
    r = httpx.get(router.url + path, headers=bearer(ACME_KEY), timeout=30)
    assert_error(r, 404, "unknown_url")
    r = httpx.post(router.url + path, json=chat_body("hi"), headers=bearer(ACME_KEY), timeout=30)
    assert_error(r, 404, "unknown_url")
    assert clean_mock.requests() == []


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/chat/completions", "POST"),
        ("GET", "/v1/messages", "POST"),
        ("DELETE", "/v1/messages", "POST"),
        ("POST", "/v1/models", "GET"),
        ("POST", "/v1/usage", "GET"),
        ("GET", "/v1/feedback", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
def test_a_wrong_method_gets_405_with_allow(router, clean_mock, method, path, allowed):
    r = httpx.request(method, router.url + path, headers=bearer(ACME_KEY), timeout=30)
    assert_error(r, 405, "method_not_allowed")
    assert r.headers.get("allow") == allowed
    assert clean_mock.requests() == []
