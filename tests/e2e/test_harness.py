"""The harness itself: the mock's control API, and tenants seeded with the
wrangler CLI (before start, and while wrangler dev runs) reaching the Worker."""

from __future__ import annotations

import asyncio
import gzip

import httpx

import devproxy
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


class _DroppingProxy:
    """A stand-in for wrangler dev's proxy: it answers the first `drops`
    POSTs with its canned 503 (gzipped, as workerd sends it to a client that
    accepts gzip), then echoes the body with 200; POSTs to /other-503 get a
    503 that is not the proxy's."""

    def __init__(self, drops: int):
        import http.server
        import threading

        self.drops, self.seen = drops, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.seen.append(body)
                if self.path == "/other-503":
                    status, payload, kind = 503, b'{"error":{"code":"upstream_unavailable"}}', "application/json"
                elif outer.drops > 0:
                    outer.drops -= 1
                    status, payload, kind = 503, gzip.compress(devproxy.DROPPED_BODY), "text/plain;charset=UTF-8"
                else:
                    status, payload, kind = 200, body, "application/json"
                self.send_response(status)
                if kind.startswith("text/plain"):
                    self.send_header("content-encoding", "gzip")
                self.send_header("content-type", kind)
                self.send_header("retry-after", "0")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", hosts.free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_a_post_wrangler_dev_s_proxy_dropped_is_resent_and_counted_but_nothing_else_is():
    proxy = _DroppingProxy(drops=2)
    before = len(devproxy.resent)
    try:
        url = f"http://127.0.0.1:{proxy.port}"
        # Not (yet) a wrangler dev this harness started: the 503 comes through.
        assert httpx.post(url + "/v1/chat/completions", json={"n": 0}).status_code == 503
        devproxy.serve_through_wrangler_dev(proxy.port)
        r = httpx.post(url + "/v1/chat/completions", json={"n": 1})
        assert (r.status_code, r.json()) == (200, {"n": 1})
        assert proxy.seen[-2:] == [b'{"n":1}', b'{"n":1}'] and len(devproxy.resent) == before + 1

        async def async_post():
            async with httpx.AsyncClient() as client:
                return await client.post(url + "/v1/responses", json={"n": 2})

        proxy.drops = 1
        r = asyncio.run(async_post())
        assert (r.status_code, r.json()) == (200, {"n": 2}) and len(devproxy.resent) == before + 2
        # tollgate's own 503 (JSON) is the caller's to see, sent once.
        sent = len(proxy.seen)
        r = httpx.post(url + "/other-503", json={"n": 3})
        assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable"
        assert len(proxy.seen) == sent + 1
        # A proxy that keeps dropping gets the 503 after MAX_RESENDS resends.
        proxy.drops = devproxy.MAX_RESENDS + 1
        r = httpx.post(url + "/v1/chat/completions", json={"n": 4})
        assert r.status_code == 503 and r.text == devproxy.DROPPED_BODY.decode()
    finally:
        proxy.close()
        # The session's summary counts wrangler dev's drops, not these.
        del devproxy.resent[before:]
