"""The shared decision vectors (tests/vectors/decisions.json), sent to every
host. crates/tollgate-core/tests/decision_vectors.rs checks the same
expectations against the core, so a host passes only if it decides exactly
as the core does: status and error code, the decision headers (route, tier,
score, model, cache, reasons) and the provider calls the mock records.

Every case is sent exactly as written (the same bytes the core test hashes),
once per host and session. The vectors make that safe: no two cases share a
cache key (the core test checks), cacheable cases expect a miss, and their
prompts appear in no other test, so no other test's cache entry can answer."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

import tenants
from calls import REQUEST_ID, TIMEOUT, assert_error
from hosts import ROOT

VECTORS = json.loads((ROOT / "tests" / "vectors" / "decisions.json").read_text())
CASES = VECTORS["cases"]
COMPARED = VECTORS["compared_headers"]


def body_bytes(spec: dict) -> bytes:
    """The bytes a case sends; the core test builds the same (serde_json
    compact output, keys in file order, non-ASCII unescaped)."""
    if "json" in spec:
        return json.dumps(spec["json"], separators=(",", ":"), ensure_ascii=False).encode()
    if "text" in spec:
        return spec["text"].encode()
    return (spec.get("prefix", "") + spec["repeat"] * spec["times"] + spec.get("suffix", "")).encode()


def request_of(case: dict) -> tuple[str, dict[str, str], bytes]:
    anthropic = case["api"] == "anthropic"
    headers = {"content-type": "application/json"}
    if case["key"] is not None:
        headers.update({"x-api-key": case["key"]} if anthropic else {"authorization": f"Bearer {case['key']}"})
    headers.update(case.get("headers", {}))
    path = {"anthropic": "/v1/messages", "embeddings": "/v1/embeddings", "responses": "/v1/responses"}.get(
        case["api"], "/v1/chat/completions"
    )
    return path, headers, body_bytes(case["body"])


def upstream_seen(records: list[dict]) -> list[dict]:
    """The mock's records as the vectors write provider calls: the mock serves
    provider `p` under /<p>/v1, the base URL every host is given for it."""
    seen = []
    for r in records:
        provider, _, rest = r["path"].lstrip("/").partition("/")
        assert rest.startswith("v1/"), r["path"]
        seen.append({"provider": provider, "path": rest[2:], "model": r["model"], "stream": bool(r["stream"])})
    return seen


def test_the_vectors_use_the_registered_tenants_and_keys():
    """The hosts run with tenants.py's registry: the configs and keys the core
    test decided with must be exactly those."""
    registry = {config["tenant_id"]: (config, keys) for config, keys in tenants.TENANTS}
    for tenant_id, embedded in VECTORS["tenants"].items():
        assert tenant_id in registry, f"{tenant_id} is not in tests/e2e/tenants.py"
        config, keys = registry[tenant_id]
        assert embedded["config"] == config, f"{tenant_id}: the vectors' config differs from tenants.py's"
        registered = {
            (k, False) if isinstance(k, str) else (k["key"], bool(k.get("disabled", False))) for k in keys
        }
        for k in embedded["keys"]:
            assert (k["key"], k["disabled"]) in registered, f"{tenant_id}: key {k} is not registered so"
    registered_keys = {k if isinstance(k, str) else k["key"] for _, ks in tenants.TENANTS for k in ks}
    for case in CASES:
        if case["tenant"] is None and case["key"] is not None:
            assert case["key"] not in registered_keys, f"{case['name']}: the key belongs to a tenant"


def test_every_case_has_its_expectations_and_body_hash():
    for case in CASES:
        assert "expect" in case, f"{case['name']}: no expectations (run the core test with TOLLGATE_WRITE_VECTORS=1)"
        digest = hashlib.sha256(body_bytes(case["body"])).hexdigest()
        assert digest == case["body_sha256"], f"{case['name']}: the bytes sent here are not the bytes the core decided on"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_the_host_decides_as_the_core(router, clean_mock, case):
    path, headers, body = request_of(case)
    expect = case["expect"]
    r = httpx.post(router.url + path, content=body, headers=headers, timeout=TIMEOUT)
    problems = []
    if r.status_code != expect["status"]:
        problems.append(f"status: expected {expect['status']}, got {r.status_code}: {r.text[:300]}")
    if expect["error"] is not None and r.status_code == expect["status"]:
        assert_error(r, expect["status"], expect["error"]["code"], param=expect["error"]["param"])
    if not REQUEST_ID.match(r.headers.get("x-tollgate-request-id", "")):
        problems.append(f"x-tollgate-request-id: {r.headers.get('x-tollgate-request-id')!r}")
    for name in COMPARED:
        want, got = expect["headers"].get(name), r.headers.get(name)
        if want != got:
            problems.append(f"{name}: expected {want!r}, got {got!r}")
    seen = upstream_seen(clean_mock.requests())
    if seen != expect["upstream"]:
        problems.append(f"provider calls: expected {expect['upstream']}, got {seen}")
    assert not problems, f"{router.name} decided {case['name']} differently from the core:\n  " + "\n  ".join(problems)
