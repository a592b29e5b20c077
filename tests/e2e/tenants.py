"""Every tenant and API key the end-to-end tests use, as data.

The session `worker` fixture (conftest.py) writes all of them into KV
*before* `wrangler dev` starts: acme (the first entry) with `wrangler kv key
put`, as the README tells a user to, everything else in one `wrangler kv bulk
put`. Seeding at runtime (`seed_tenant`) costs 2-4 s per call, so only the
test of that path uses it.

Adding a tenant: build its config (`routed_tenant`, `like_example`), then
`register(config, [key, ...])`. Ids and keys must be unique across the
registry; `register` refuses duplicates at import time. A key is a string,
or `key(secret, disabled=True)` for a key record that exists but is off.
Raw KV records that are no tenant's (a key whose tenant has no config)
go in `EXTRA_ENTRIES`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import hosts
from hosts import ACME_KEY, GLOBEX_KEY

Key = str | dict[str, Any]

# (tenant config, its API keys). Seeded in this order; the first one goes
# through `wrangler kv key put` (the README's path), so keep acme first.
TENANTS: list[tuple[dict, list[Key]]] = []

# KV records in TOLLGATE_CONFIG that belong to no registered tenant.
EXTRA_ENTRIES: dict[str, dict] = {}


def key(
    secret: str, *, disabled: bool = False, label: str | None = None, limits: list[dict] | None = None
) -> dict[str, Any]:
    """An API key with a record other than the default (enabled, "e2e
    <tenant>", no limits of its own)."""
    return {"key": secret, "disabled": disabled, "label": label, "limits": limits}


def key_for(tenant_id: str, suffix: str = "key") -> str:
    return f"tg-e2e-{tenant_id}-{suffix}"


def register(config: dict, keys: list[Key]) -> dict:
    """Add a tenant to the registry; returns `config` for use in tests."""
    tenant_id = config["tenant_id"]
    if any(c["tenant_id"] == tenant_id for c, _ in TENANTS):
        raise ValueError(f"tenant `{tenant_id}` registered twice")
    known = {k if isinstance(k, str) else k["key"] for _, ks in TENANTS for k in ks}
    for k in keys:
        secret = k if isinstance(k, str) else k["key"]
        if secret in known:
            raise ValueError(f"API key `{secret}` registered twice")
    TENANTS.append((config, list(keys)))
    return config


def like_example(name: str, tenant_id: str, **changes: Any) -> dict:
    """An examples/ config under another tenant id, with top-level sections replaced."""
    config = copy.deepcopy(hosts.example(name))
    config["tenant_id"] = tenant_id
    config.update(copy.deepcopy(changes))
    return config


CHEAP_OPENAI = ["openai/gpt-4o-mini", "openai/gpt-4.1-nano"]
CHEAP_ANTHROPIC = ["anthropic/claude-3-5-haiku-latest", "anthropic/claude-3-haiku-20240307"]
PREMIUM_OPENAI = ["openai/gpt-4o", "openai/gpt-4.1"]
PREMIUM_ANTHROPIC = ["anthropic/claude-sonnet-4-5", "anthropic/claude-3-7-sonnet-latest"]


def routed_tenant(
    tenant_id: str,
    *,
    cheap: list[str] | None = None,
    premium: list[str] | None = None,
    up_to_score: float = 0.5,
    pinned: list[str] | None = None,
    allowed: list[str] | None = None,
    budgets: dict | None = None,
    cache: dict | None = None,
    limits: dict | None = None,
    pricing: dict | None = None,
    escalation: dict | None = None,
) -> dict:
    """A two-tier tenant (cheap up to `up_to_score`, then premium), each tier
    with OpenAI and Anthropic fallback chains. Sections left None are omitted,
    so the documented defaults apply (no budgets: nothing metered)."""
    config: dict[str, Any] = {
        "version": 1,
        "tenant_id": tenant_id,
        "routing": {
            "tiers": [
                {"name": "cheap", "up_to_score": up_to_score, "models": cheap or CHEAP_OPENAI + CHEAP_ANTHROPIC},
                {"name": "premium", "models": premium or PREMIUM_OPENAI + PREMIUM_ANTHROPIC},
            ],
            "pinned_models": pinned or [],
            "allowed_models": allowed or [],
        },
    }
    sections = (
        ("budgets", budgets),
        ("cache", cache),
        ("limits", limits),
        ("pricing", pricing),
        ("escalation", escalation),
    )
    for name, section in sections:
        if section is not None:
            config[name] = section
    return config


def daily_budget(*, usd: float | None = 50.0, tokens: int | None = None, **rest: Any) -> dict:
    """A `budgets` section with one daily limit (plus any other budget fields)."""
    limit: dict[str, Any] = {"name": "daily", "window": "day"}
    if usd is not None:
        limit["usd"] = usd
    if tokens is not None:
        limit["tokens"] = tokens
    return {"limits": [limit], **rest}


# ---------------------------------------------------------------- the examples

ACME = register(hosts.example("tenant.json"), [ACME_KEY])
GLOBEX = register(hosts.example("tenant-globex.json"), [GLOBEX_KEY])

# ---------------------------------------------------------------- routing, cache, errors, faults

PROVIDERS_KEY = key_for("e2e-providers")
CACHE_A_KEY = key_for("e2e-cache-a")
CACHE_B_KEY = key_for("e2e-cache-b")
CACHE_DOORKEEPER_KEY = key_for("e2e-cache-dk")
ERRORS_KEY = key_for("e2e-errors")
ERRORS_DISABLED_KEY = key_for("e2e-errors", "disabled")
TINY_KEY = key_for("e2e-tiny")
TINY_SDK_KEY = key_for("e2e-tiny-sdk")
FAULTS_KEY = key_for("e2e-faults")

# Routing to providers other than OpenAI and Anthropic: each must reach its
# own base URL with its own key.
PROVIDERS = register(
    routed_tenant(
        "e2e-providers",
        cheap=["google/gemini-2.5-flash-lite", "mistral/mistral-small"],
        premium=["mistral/mistral-large", "anthropic/claude-sonnet-4-5"],
    ),
    [PROVIDERS_KEY],
)

# Cache: the doorkeeper off, so a second identical request hits. Two tenants
# with identical routing, to show one never reads the other's entries.
CACHE_A = register(
    routed_tenant("e2e-cache-a", budgets=daily_budget(usd=50.0), cache={"doorkeeper": False}),
    [CACHE_A_KEY],
)
CACHE_B = register(
    routed_tenant("e2e-cache-b", cache={"doorkeeper": False}),
    [CACHE_B_KEY],
)
# The doorkeeper on (the default): stored on the second sighting, hit on the third.
CACHE_DOORKEEPER = register(routed_tenant("e2e-cache-dk"), [CACHE_DOORKEEPER_KEY])

# Errors: the tenant tests/vectors/bad_input.json is written for (acme's
# routing and budgets, a prompt-token limit) under its own id, so /v1/usage
# shows what bad requests leave behind; plus a disabled key.
BAD_INPUT = json.loads((hosts.ROOT / "tests" / "vectors" / "bad_input.json").read_text())
ERRORS = register(
    like_example(
        Path(BAD_INPUT["tenant"]["based_on"]).name, "e2e-errors", **BAD_INPUT["tenant"].get("changes", {})
    ),
    [ERRORS_KEY, key(ERRORS_DISABLED_KEY, disabled=True)],
)
# A daily budget of a few hundred tokens, refused once spent; one per test
# that spends it, so no test depends on another having run.
TINY = register(
    routed_tenant("e2e-tiny", budgets=daily_budget(usd=None, tokens=400, on_exhausted="reject")),
    [TINY_KEY],
)
TINY_SDK = register(
    routed_tenant("e2e-tiny-sdk", budgets=daily_budget(usd=None, tokens=400, on_exhausted="reject")),
    [TINY_SDK_KEY],
)
# A key whose record names a tenant with no config.
ORPHAN_KEY = key_for("e2e-orphan")
EXTRA_ENTRIES[f"apikey:{hosts.sha256_hex(ORPHAN_KEY)}"] = {
    "tenant_id": "e2e-no-such-tenant",
    "label": "e2e orphan",
    "disabled": False,
}

# Faults: fallback chains of two models per API, metered, cache without the
# doorkeeper (so a cacheable answer would be stored on first sight).
FAULTS = register(
    routed_tenant("e2e-faults", budgets=daily_budget(usd=50.0), cache={"doorkeeper": False}),
    [FAULTS_KEY],
)


# Escalation (test_escalation.py): metered, cache without the doorkeeper, every signal on.
ESCALATION_KEY = key_for("e2e-escalation")
ESCALATION = register(
    routed_tenant(
        "e2e-escalation",
        budgets=daily_budget(usd=50.0),
        cache={"doorkeeper": False},
        escalation={"enabled": True, "max_attempts": 1},
    ),
    [ESCALATION_KEY],
)


# The learned router (test_learned_routing.py): one tenant on the
# compiled-in model, one on its own model stored under a key (in KV for the
# Worker, under `models` in the filter's plugin config): the shipped model
# with its bias moved, so its scores differ from the compiled-in one's.
DEFAULT_ROUTER_MODEL = json.loads((hosts.ROOT / "crates" / "tollgate-core" / "models" / "default-router.json").read_text())
OWN_ROUTER_MODEL = {**DEFAULT_ROUTER_MODEL, "bias": DEFAULT_ROUTER_MODEL["bias"] + 2.0}
OWN_MODEL_KEY = "model:e2e-learned-own"
EXTRA_ENTRIES[OWN_MODEL_KEY] = OWN_ROUTER_MODEL
LEARNED_BUILTIN_KEY = key_for("e2e-learned-builtin")
LEARNED_BUILTIN = register(
    {**routed_tenant("e2e-learned-builtin"), "classifier": {"router": "learned"}},
    [LEARNED_BUILTIN_KEY],
)
LEARNED_OWN_KEY = key_for("e2e-learned-own")
LEARNED_OWN = register(
    {**routed_tenant("e2e-learned-own"), "classifier": {"router": "learned", "model_key": OWN_MODEL_KEY}},
    [LEARNED_OWN_KEY],
)


# ---------------------------------------------------------------- budgets under load, streaming, feedback
# (test_worker_budget_concurrency.py, test_worker_streaming.py, test_worker_feedback.py)


def single_tier_tenant(tenant_id: str, models: list[str], *, budgets: dict, cache: dict | None = None) -> dict:
    """One tier (`only`) holding `models`, so every request's model and price
    are known in advance; the cache off unless `cache` says otherwise."""
    return {
        "version": 1,
        "tenant_id": tenant_id,
        "routing": {"tiers": [{"name": "only", "models": models}]},
        "budgets": budgets,
        "cache": cache or {"enabled": False},
    }


def strict_daily(*, usd: float | None = None, tokens: int | None = None) -> dict:
    """One daily limit, refused (never clamped) when a request does not fit."""
    return daily_budget(usd=usd, tokens=tokens, on_exhausted="reject", clamp_max_tokens=False, store_failure="closed")


# 200 requests at once (max_tokens 60, prompts of ~20 tokens) against a daily
# limit that holds about a third of their reservations.
BUDGET_RACE_USD_KEY = key_for("e2e-race-usd")
BUDGET_RACE_USD = register(
    single_tier_tenant("e2e-race-usd", ["openai/gpt-4o"], budgets=strict_daily(usd=0.044)),
    [BUDGET_RACE_USD_KEY],
)
BUDGET_RACE_TOKENS_KEY = key_for("e2e-race-tokens")
BUDGET_RACE_TOKENS = register(
    single_tier_tenant("e2e-race-tokens", ["openai/gpt-4o-mini"], budgets=strict_daily(tokens=5600)),
    [BUDGET_RACE_TOKENS_KEY],
)

# Leases (docs/config.md "Leases"): the same tenant leased (the default)
# and per request; a race over two Envoys sharing Redis (500 requests, max
# 60 output tokens, fits about a third of their reservations); a tail
# tenant whose small token limit runs out within a few dozen requests; and
# short leases (15 s) for the expiry test.
LEASED_KEY = key_for("e2e-leased")
LEASED = register(single_tier_tenant("e2e-leased", ["openai/gpt-4o-mini"], budgets=strict_daily(usd=50.0)),
                  [LEASED_KEY])
PER_REQUEST_KEY = key_for("e2e-per-request")
PER_REQUEST = register(
    single_tier_tenant("e2e-per-request", ["openai/gpt-4o-mini"],
                       budgets={**strict_daily(usd=50.0), "consistency": "per_request"}),
    [PER_REQUEST_KEY],
)
LEASE_RACE_KEY = key_for("e2e-lease-race")
LEASE_RACE = register(
    single_tier_tenant("e2e-lease-race", ["openai/gpt-4o"], budgets=strict_daily(usd=0.11)),
    [LEASE_RACE_KEY],
)
LEASE_TAIL_KEY = key_for("e2e-lease-tail")
LEASE_TAIL = register(
    single_tier_tenant("e2e-lease-tail", ["openai/gpt-4o-mini"], budgets=strict_daily(tokens=4000)),
    [LEASE_TAIL_KEY],
)
LEASE_SHORT_KEY = key_for("e2e-lease-short")
LEASE_SHORT = register(
    single_tier_tenant("e2e-lease-short", ["openai/gpt-4.1-nano"],
                       budgets={**strict_daily(usd=5.0), "lease": {"ttl_seconds": 15}}),
    [LEASE_SHORT_KEY],
)

# Streaming: one OpenAI and one Anthropic model, metered, no cache; one
# tenant per test so each sees only its own spend.
STREAM_MODELS = ["openai/gpt-4o", "anthropic/claude-sonnet-4-5"]
STREAM_OPENAI_KEY = key_for("e2e-stream-openai")
STREAM_OPENAI = register(
    single_tier_tenant("e2e-stream-openai", STREAM_MODELS, budgets=strict_daily(usd=50.0)), [STREAM_OPENAI_KEY]
)
STREAM_ANTHROPIC_KEY = key_for("e2e-stream-anthropic")
STREAM_ANTHROPIC = register(
    single_tier_tenant("e2e-stream-anthropic", STREAM_MODELS, budgets=strict_daily(usd=50.0)),
    [STREAM_ANTHROPIC_KEY],
)
STREAM_PACE_KEY = key_for("e2e-stream-pace")
STREAM_PACE = register(
    single_tier_tenant("e2e-stream-pace", STREAM_MODELS, budgets=strict_daily(usd=50.0)), [STREAM_PACE_KEY]
)
STREAM_ABORT_KEY = key_for("e2e-stream-abort")
STREAM_ABORT = register(
    single_tier_tenant("e2e-stream-abort", STREAM_MODELS, budgets=strict_daily(usd=50.0)), [STREAM_ABORT_KEY]
)
STREAM_ABORT_ANTHROPIC_KEY = key_for("e2e-stream-abort-anthropic")
STREAM_ABORT_ANTHROPIC = register(
    single_tier_tenant("e2e-stream-abort-anthropic", STREAM_MODELS, budgets=strict_daily(usd=50.0)),
    [STREAM_ABORT_ANTHROPIC_KEY],
)
# 100 concurrent streams, half of whose clients hang up mid-stream
# (test_stream_disconnects.py): its own tenant, so nothing else's holds or
# spend mix in.
STREAM_DISCONNECT_KEY = key_for("e2e-stream-disconnect")
STREAM_DISCONNECT = register(
    single_tier_tenant("e2e-stream-disconnect", STREAM_MODELS, budgets=strict_daily(usd=50.0)),
    [STREAM_DISCONNECT_KEY],
)

# Feedback and cost per resolution: two tiers, metered, cache without the
# doorkeeper (the second identical request hits). Two tenants of the same
# shape, to show neither sees the other's requests or usage.
FEEDBACK_A_KEY = key_for("e2e-feedback-a")
FEEDBACK_A = register(
    routed_tenant(
        "e2e-feedback-a",
        cheap=["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"],
        premium=["openai/gpt-4o", "anthropic/claude-sonnet-4-5"],
        budgets=daily_budget(usd=50.0),
        cache={"doorkeeper": False},
    ),
    [FEEDBACK_A_KEY],
)
FEEDBACK_B_KEY = key_for("e2e-feedback-b")
FEEDBACK_B = register(
    routed_tenant(
        "e2e-feedback-b",
        cheap=["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"],
        premium=["openai/gpt-4o", "anthropic/claude-sonnet-4-5"],
        budgets=daily_budget(usd=50.0),
        cache={"doorkeeper": False},
    ),
    [FEEDBACK_B_KEY],
)


# Cooldowns (test_cooldown.py): one tier whose OpenAI chain and Anthropic
# chain are two models each; a model failing 3 times in a row is passed over
# for 4 s. No budgets, no cache: every request reaches a provider.
COOLDOWN_KEY = key_for("e2e-cooldown")
COOLDOWN_OPENAI = ["openai/gpt-4.1-mini", "openai/gpt-4.1-nano"]
COOLDOWN_ANTHROPIC = ["anthropic/claude-3-5-haiku-latest", "anthropic/claude-3-haiku-20240307"]
COOLDOWN = register(
    {
        "version": 1,
        "tenant_id": "e2e-cooldown",
        "routing": {
            "tiers": [{"name": "only", "models": COOLDOWN_OPENAI + COOLDOWN_ANTHROPIC}],
            "cooldown": {"failures": 3, "seconds": 4},
        },
        "cache": {"enabled": False},
    },
    [COOLDOWN_KEY],
)


# ---------------------------------------------------------------- embeddings (test_embeddings.py)
# POST /v1/embeddings: `tollgate/auto` goes down `routing.embeddings.models`;
# an embedding model in `pinned_models` may be named directly.

EMBEDDING_CHAIN = ["openai/text-embedding-3-small", "openai/text-embedding-3-large"]


def embeddings_tenant(tenant_id: str, models: list[str] | None, **rest: Any) -> dict:
    """`routed_tenant` with `routing.embeddings` (left out when `models` is None)."""
    config = routed_tenant(tenant_id, **rest)
    if models is not None:
        config["routing"]["embeddings"] = {"models": list(models)}
    return config


# The chain, ada-002 pinned, metered in dollars and tokens (the token limit
# makes `x-tollgate-budget-remaining-tokens` show each reservation), the
# cache on with its doorkeeper (the default): embeddings are stored at once
# all the same. Reserved per request: the tests read each request's hold
# from the headroom header, which is exact only at the writer (with leases
# it is an instance's view, docs/config.md "Leases").
EMBEDDINGS_KEY = key_for("e2e-embeddings")
EMBEDDINGS = register(
    embeddings_tenant(
        "e2e-embeddings",
        EMBEDDING_CHAIN,
        pinned=["openai/text-embedding-ada-002"],
        budgets=daily_budget(usd=50.0, tokens=50_000_000, consistency="per_request"),
        cache={"enabled": True, "doorkeeper": True},
    ),
    [EMBEDDINGS_KEY],
)
# No `routing.embeddings`: `tollgate/auto` on /v1/embeddings is refused.
EMBEDDINGS_NONE_KEY = key_for("e2e-embeddings-none")
EMBEDDINGS_NONE = register(embeddings_tenant("e2e-embeddings-none", None), [EMBEDDINGS_NONE_KEY])
# $0.0001 a day, refused once spent: two 2,000-token embeddings at $0.02 per
# million fit, a third does not. No cache, so every request is charged.
EMBEDDINGS_TINY_KEY = key_for("e2e-embeddings-tiny")
EMBEDDINGS_TINY = register(
    embeddings_tenant(
        "e2e-embeddings-tiny",
        ["openai/text-embedding-3-small"],
        budgets=strict_daily(usd=0.0001),
        cache={"enabled": False},
    ),
    [EMBEDDINGS_TINY_KEY],
)


# ---------------------------------------------------------------- the Responses API (test_responses.py)
# POST /v1/responses goes only to OpenAI's own models: the cheap tier lists
# an OpenAI-compatible Mistral model first and an Anthropic one last, which
# chat and messages requests would use but a Responses request must pass
# over. Metered in dollars, cache without the doorkeeper (a second identical
# request hits).
RESPONSES_CHEAP = ["mistral/mistral-small", "openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"]
RESPONSES_PREMIUM = ["openai/gpt-4o", "anthropic/claude-sonnet-4-5"]
RESPONSES_KEY = key_for("e2e-responses")
RESPONSES = register(
    routed_tenant(
        "e2e-responses",
        cheap=RESPONSES_CHEAP,
        premium=RESPONSES_PREMIUM,
        budgets=daily_budget(usd=50.0),
        cache={"doorkeeper": False},
    ),
    [RESPONSES_KEY],
)
# 3,000 tokens a day with `clamp_max_tokens`: an output cap that does not
# fit is lowered to what is left rather than refused.
RESPONSES_CLAMP_KEY = key_for("e2e-responses-clamp")
RESPONSES_CLAMP = register(
    routed_tenant(
        "e2e-responses-clamp",
        cheap=RESPONSES_CHEAP,
        premium=RESPONSES_PREMIUM,
        budgets=daily_budget(usd=None, tokens=3000, clamp_max_tokens=True),
        cache={"enabled": False},
    ),
    [RESPONSES_CLAMP_KEY],
)


# ---------------------------------------------------------------- translation between APIs (test_translation.py)
# A tier may list models of any provider; a request whose client API the
# chosen model's provider does not speak is translated (OpenAI chat <->
# Anthropic Messages, Responses -> either), under `routing.translation`.

TRANSLATE_CLAUDE = "anthropic/claude-3-5-haiku-latest"
TRANSLATE_GPT = "openai/gpt-4o"
TRANSLATE_MINI = "openai/gpt-4o-mini"
TRANSLATE_MISTRAL = "mistral/mistral-small"
# What an Anthropic request is given as `max_tokens` when the client set no cap.
TRANSLATE_DEFAULT_OUTPUT = 1000


def with_translation(config: dict, mode: str | None) -> dict:
    """`config` with `routing.translation` set (left out when `mode` is None: the default)."""
    if mode is not None:
        config["routing"]["translation"] = mode
    return config


# The default mode (`when_needed`, not written): the cheap tier is Claude
# only and the premium tier gpt-4o only, so an easy OpenAI-SDK prompt goes
# to Claude translated and a hard Anthropic-SDK prompt to gpt-4o. Metered in
# dollars, cache without the doorkeeper (a second identical request hits).
TRANSLATE_KEY = key_for("e2e-translate")
TRANSLATE = register(
    routed_tenant(
        "e2e-translate",
        cheap=[TRANSLATE_CLAUDE],
        premium=[TRANSLATE_GPT],
        budgets=daily_budget(usd=50.0, default_output_reservation=TRANSLATE_DEFAULT_OUTPUT),
        cache={"doorkeeper": False},
    ),
    [TRANSLATE_KEY],
)
# The same tiers, `translation: "off"`: the old behaviour (a tier without a
# model of the client's API is passed over).
TRANSLATE_OFF_KEY = key_for("e2e-translate-off")
TRANSLATE_OFF = register(
    with_translation(
        routed_tenant("e2e-translate-off", cheap=[TRANSLATE_CLAUDE], premium=[TRANSLATE_GPT], cache={"enabled": False}),
        "off",
    ),
    [TRANSLATE_OFF_KEY],
)
# `native_first`: one tier listing Claude before gpt-4o-mini; each API's
# own model serves first, the other one, translated, is its fallback.
TRANSLATE_NATIVE_FIRST_KEY = key_for("e2e-translate-native-first")
TRANSLATE_NATIVE_FIRST = register(
    with_translation(
        single_tier_tenant(
            "e2e-translate-native-first", [TRANSLATE_CLAUDE, TRANSLATE_MINI], budgets=daily_budget(usd=50.0)
        ),
        "native_first",
    ),
    [TRANSLATE_NATIVE_FIRST_KEY],
)
# `as_listed`: tiers in both orders, and one of an OpenAI-compatible
# provider only (Mistral: the Responses API reaches it as chat), asked for
# by name (`tollgate/<tier>`).
TRANSLATE_AS_LISTED_KEY = key_for("e2e-translate-as-listed")
TRANSLATE_AS_LISTED = register(
    with_translation(
        {
            "version": 1,
            "tenant_id": "e2e-translate-as-listed",
            "routing": {
                "tiers": [
                    {"name": "claude_first", "up_to_score": 0.4, "models": [TRANSLATE_CLAUDE, TRANSLATE_MINI]},
                    {"name": "openai_first", "up_to_score": 0.7, "models": [TRANSLATE_MINI, TRANSLATE_CLAUDE]},
                    {"name": "mistral", "models": [TRANSLATE_MISTRAL]},
                ]
            },
            "budgets": daily_budget(usd=50.0),
            "cache": {"enabled": False},
        },
        "as_listed",
    ),
    [TRANSLATE_AS_LISTED_KEY],
)
# Claude only: a request Claude cannot express has no model at all.
TRANSLATE_CLAUDE_ONLY_KEY = key_for("e2e-translate-claude-only")
# `web_search` is enabled, so only translation stands in a Responses
# request's way that declares it.
TRANSLATE_CLAUDE_ONLY = single_tier_tenant(
    "e2e-translate-claude-only", [TRANSLATE_CLAUDE], budgets=daily_budget(usd=50.0)
)
TRANSLATE_CLAUDE_ONLY["routing"]["builtin_tools"] = ["web_search"]
register(TRANSLATE_CLAUDE_ONLY, [TRANSLATE_CLAUDE_ONLY_KEY])


# Limits below the tenant (docs/config.md "Keys and end users"): one tenant
# per level that runs out first, each with a key whose record has limits of
# its own, and end users limited per `budgets.users` (named by the
# `x-tollgate-user` header or the body's `user` / `metadata.user_id`).
# Tokens, with about 80 held per request (a short prompt, max_tokens 60).
ROOMY_TOKENS = 1_000_000
LEVEL_TIGHT_TOKENS = 800


def levels_budgets(*, tenant: int, user: int, max_tracked: int | None = None) -> dict:
    users: dict[str, Any] = {"header": "x-tollgate-user", "limits": [{"name": "user-daily", "window": "day", "tokens": user}]}
    if max_tracked is not None:
        users["max_tracked"] = max_tracked
    return {
        "limits": [{"name": "tenant-daily", "window": "day", "tokens": tenant}],
        "on_exhausted": "reject",
        "clamp_max_tokens": False,
        "store_failure": "closed",
        "users": users,
    }


def levels_tenant(level: str, *, key_tokens: int, tenant: int, user: int, max_tracked: int | None = None) -> tuple:
    """(config, limited key, plain key) for the tenant whose `level` runs out first."""
    tenant_id = f"e2e-levels-{level}"
    limited = key_for(tenant_id, "limited")
    plain = key_for(tenant_id, "plain")
    config = register(
        single_tier_tenant(
            tenant_id,
            ["openai/gpt-4o-mini"],
            budgets=levels_budgets(tenant=tenant, user=user, max_tracked=max_tracked),
        ),
        [
            key(limited, label=f"{level}-app", limits=[{"name": "key-daily", "window": "day", "tokens": key_tokens}]),
            plain,
        ],
    )
    return config, limited, plain


LEVELS = {
    "key": levels_tenant("key", key_tokens=LEVEL_TIGHT_TOKENS, tenant=ROOMY_TOKENS, user=ROOMY_TOKENS),
    "user": levels_tenant("user", key_tokens=ROOMY_TOKENS, tenant=ROOMY_TOKENS, user=LEVEL_TIGHT_TOKENS),
    "tenant": levels_tenant("tenant", key_tokens=ROOMY_TOKENS, tenant=LEVEL_TIGHT_TOKENS, user=ROOMY_TOKENS),
}
# Fresh user ids past a cap of 4 tracked users share one user's allowance.
LEVELS_FLOOD = levels_tenant("flood", key_tokens=ROOMY_TOKENS, tenant=ROOMY_TOKENS, user=400, max_tracked=4)
# Leases carved for a key and an end user (test_leases.py): no level binds.
LEVELS_LEASED = levels_tenant("leased", key_tokens=ROOMY_TOKENS, tenant=ROOMY_TOKENS, user=ROOMY_TOKENS)
# The SDKs' typed errors for a user out of budget.
LEVELS_SDK = levels_tenant("sdk", key_tokens=ROOMY_TOKENS, tenant=ROOMY_TOKENS, user=150)
# A key allowed 5 requests a minute (a rate at the key level).
LEVELS_RPM_KEY = key_for("e2e-levels-rpm", "limited")
LEVELS_RPM = register(
    single_tier_tenant("e2e-levels-rpm", ["openai/gpt-4o-mini"], budgets=levels_budgets(tenant=ROOMY_TOKENS, user=ROOMY_TOKENS)),
    [key(LEVELS_RPM_KEY, label="rpm-app", limits=[{"name": "key-rpm", "window": "minute", "requests": 5}])],
)

# Budget alerts (docs/config.md "Alerts"): users of 600 tokens a day, a soft
# threshold at 50%, alerts posted signed to the mock's /__mock/webhooks.
ALERTS_SECRET = "e2e-alerts-webhook-secret"
ALERTS_KEY = key_for("e2e-alerts")
ALERTS = register(
    single_tier_tenant(
        "e2e-alerts",
        ["openai/gpt-4o-mini"],
        budgets={
            **levels_budgets(tenant=ROOMY_TOKENS, user=600),
            "soft_threshold_pct": 50,
            "alerts": {"webhook_url": f"{hosts.MOCK_URL_PLACEHOLDER}/__mock/webhooks", "webhook_secret": ALERTS_SECRET},
        },
    ),
    [ALERTS_KEY],
)

# Attribution (docs/config.md "Attribution"): two keys, tags and users, no limits that bind.
ATTRIBUTION_KEYS = [key_for("e2e-attribution", "web"), key_for("e2e-attribution", "batch")]
ATTRIBUTION = register(
    single_tier_tenant("e2e-attribution", ["openai/gpt-4o-mini"], budgets=strict_daily(tokens=ROOMY_TOKENS)),
    ATTRIBUTION_KEYS,
)

# Grouped spend over time (docs/config.md "Attribution"): a tenant of its own,
# because its test sends more requests than the ring of recent ones holds.
ROLLUP_KEY = key_for("e2e-rollup", "app")
ROLLUP = register(
    single_tier_tenant("e2e-rollup", ["openai/gpt-4o-mini"], budgets=strict_daily(tokens=ROOMY_TOKENS * 10)),
    [ROLLUP_KEY],
)
