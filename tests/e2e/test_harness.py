"""The harness itself: the mock's control API, and tenants seeded with the
wrangler CLI (before start, and while wrangler dev runs) reaching the Worker."""

from __future__ import annotations

import httpx

import hosts
from hosts import ACME_KEY, GLOBEX_KEY


def test_the_mock_injects_a_fault_records_requests_and_forgets_them_on_clear(clean_mock):
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    clean_mock.faults("status:503", model="gpt-4o", times=1)
    assert httpx.post(clean_mock.base_url("openai") + "/chat/completions", json=body).status_code == 503
    ok = httpx.post(clean_mock.base_url("openai") + "/chat/completions", json=body)
    assert ok.status_code == 200
    assert ok.json()["choices"][0]["message"]["content"].startswith("[mock:gpt-4o]")
    seen = clean_mock.requests()
    assert [r["path"] for r in seen] == ["/openai/v1/chat/completions"] * 2
    clean_mock.clear_requests()
    assert clean_mock.requests() == []


def test_the_worker_answers_healthz(worker):
    r = httpx.get(worker.url + "/healthz")
    assert r.status_code == 200


def test_tenants_seeded_before_the_worker_starts_are_known_to_it(worker):
    assert worker.kv.get("tenant:acme") is not None
    for key in (ACME_KEY, GLOBEX_KEY):
        r = httpx.get(worker.url + "/v1/models", headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
    r = httpx.get(worker.url + "/v1/models", headers={"authorization": "Bearer tg-nobody"})
    assert r.status_code == 401, r.text


def test_a_tenant_seeded_while_the_worker_runs_is_known_on_the_next_request(worker, seed_tenant):
    config = dict(hosts.example("tenant.json"), tenant_id="initech")
    key = "tg-e2e-initech-key"
    before = httpx.get(worker.url + "/v1/models", headers={"authorization": f"Bearer {key}"})
    assert before.status_code == 401, before.text
    seed_tenant(config, [key])
    after = httpx.get(worker.url + "/v1/models", headers={"x-api-key": key})
    assert after.status_code == 200, after.text
    assert "tollgate/auto" in [m["id"] for m in after.json()["data"]]
