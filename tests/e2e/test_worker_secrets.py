"""The provider keys stay inside the Worker.

The Worker holds one secret per provider (`<PROVIDER>_API_KEY`; here the
`sk-mock-…` values of hosts.worker_vars) and sends it only to that provider.
After a mix of answers and refusals, none of those values may appear in
what a client got back (status line aside: headers and bodies), in what the
Worker logged, in the cache entries it wrote to KV, or anywhere in its local
state (KV and Durable Object storage)."""

from __future__ import annotations

import httpx

import hosts
import tenants
from calls import (
    EASY_PROMPT,
    HARD_PROMPT,
    Recorded,
    chat,
    chat_body,
    messages,
    messages_body,
    unique,
)
from hosts import ACME_KEY

CACHED = tenants.CACHE_A_KEY  # doorkeeper off: the second identical request hits


def provider_secrets(mock) -> dict[str, str]:
    """Provider name → the API key the Worker was given for it."""
    return {
        provider: hosts.worker_vars(mock)[f"{provider.upper()}_API_KEY"] for provider in hosts.PROVIDERS
    }


def exposed(response: httpx.Response, secret: str) -> list[str]:
    """Where `secret` shows in a response the client got."""
    found = [f"header {name}" for name, value in response.headers.items() if secret in name or secret in value]
    if secret.encode() in response.content:
        found.append("body")
    return found


def test_the_provider_keys_reach_no_client_no_log_line_and_no_stored_state(worker, clean_mock):
    secrets = provider_secrets(clean_mock)
    ledger = Recorded(worker.url, CACHED)
    openai_cacheable = chat_body(unique(EASY_PROMPT), temperature=0)
    anthropic_cacheable = messages_body(unique(EASY_PROMPT), temperature=0)
    faulty = chat_body(unique(EASY_PROMPT), model="tollgate/cheap", temperature=0)
    first_faulty = tenants.CHEAP_OPENAI[0].split("/", 1)[1]

    answers: dict[str, httpx.Response] = {
        "openai json": chat(worker.url, ACME_KEY, chat_body(unique(EASY_PROMPT))),
        "anthropic json": messages(worker.url, ACME_KEY, messages_body(unique(HARD_PROMPT))),
        "openai stream": chat(worker.url, ACME_KEY, chat_body(unique(HARD_PROMPT), stream=True)),
        "anthropic stream": messages(worker.url, ACME_KEY, messages_body(unique(EASY_PROMPT), stream=True)),
        "google": chat(worker.url, tenants.PROVIDERS_KEY, chat_body(unique(EASY_PROMPT), model="tollgate/cheap")),
        "mistral": chat(worker.url, tenants.PROVIDERS_KEY, chat_body(unique(EASY_PROMPT), model="tollgate/premium")),
        "openai cached": chat(worker.url, CACHED, openai_cacheable),
        "anthropic cached": messages(worker.url, CACHED, anthropic_cacheable),
    }
    ledger.wait_for(2)  # both answers recorded, so both are in the cache
    answers |= {
        "openai hit": chat(worker.url, CACHED, openai_cacheable),
        "openai hit as a stream": chat(worker.url, CACHED, {**openai_cacheable, "stream": True}),
        "anthropic hit": messages(worker.url, CACHED, anthropic_cacheable),
    }
    ledger.wait_for(3)
    for name in ("openai json", "anthropic json", "openai stream", "anthropic stream", "google", "mistral",
                 "openai cached", "anthropic cached"):
        assert answers[name].status_code == 200, (name, answers[name].text[:300])
    for name in ("openai hit", "openai hit as a stream", "anthropic hit"):
        assert answers[name].headers.get("x-tollgate-cache") == "hit", (name, dict(answers[name].headers))

    answers["model not allowed"] = chat(worker.url, ACME_KEY, chat_body(unique(EASY_PROMPT), model="gpt-3.5-turbo"))
    answers["unknown key"] = chat(worker.url, "tg-e2e-nobody", chat_body(unique(EASY_PROMPT)))
    for fault, model, name in (
        ("status:400", first_faulty, "provider 400, passed through"),
        ("status:401", None, "provider 401 on every model"),
        ("status:500", None, "provider 500 on every model"),
    ):
        clean_mock.faults(fault, model=model)
        answers[name] = chat(worker.url, tenants.FAULTS_KEY, faulty)
        clean_mock.clear_faults()
    assert [answers[n].status_code for n in ("model not allowed", "unknown key", "provider 400, passed through",
                                             "provider 500 on every model")] == [400, 401, 400, 502]
    assert answers["provider 401 on every model"].status_code >= 400

    # The mock did get the keys: each provider the mix reached, its own.
    sent = " ".join(v for r in clean_mock.requests() for v in r["headers"].values())
    for provider in ("openai", "anthropic", "google", "mistral"):
        assert secrets[provider] in sent, f"no request reached {provider} with its key"

    for provider, secret in secrets.items():
        leaks = {name: where for name, r in answers.items() if (where := exposed(r, secret))}
        assert leaks == {}, f"the {provider} key reached a client: {leaks}"
        assert secret not in worker.log_text(), f"the {provider} key is in the wrangler dev log"

    cache = worker.kv.for_binding(hosts.CACHE_BINDING)
    entries = cache.bulk_get(cache.list())
    assert len(entries) >= 2, f"this test stored two answers, KV holds {len(entries)} entries"
    for provider, secret in secrets.items():
        stored = [key for key, value in entries.items() if secret in key or secret in (value or "")]
        assert stored == [], f"the {provider} key is in cache entries {stored}"
        # Anything at rest: KV blobs and metadata, Durable Object storage.
        files = [p for p in worker.state.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert files == [], f"the {provider} key is stored in {files}"
