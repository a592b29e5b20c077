"""The learned router, on both hosts: a tenant whose classifier is
`{"router": "learned"}` is routed by the compiled-in model, and one with a
`model_key` by its own model (from KV on the Worker, from the plugin
config's `models` in the filter). The score a host routes by is exactly the
one `tollgate classify --jsonl` prints offline for the same config and
model: that is the contract routing quality is measured through."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import hosts
import tenants
from calls import EASY_PROMPT, HARD_PROMPT, chat, chat_body

PROMPTS = [
    EASY_PROMPT,
    HARD_PROMPT,
    "Write a haiku about autumn.",
    "Compare three approaches to consensus in distributed databases and recommend one for a bank.",
]


@pytest.fixture(scope="module")
def cli() -> Path:
    subprocess.run(["cargo", "build", "-q", "-p", "tollgate-cli"], cwd=hosts.ROOT, check=True)
    return hosts.ROOT / "target" / "debug" / "tollgate"


def offline_scores(cli: Path, tmp: Path, config: dict, model: dict | None) -> dict[str, float]:
    """`tollgate classify --jsonl` for `config`, its model file beside it."""
    (tmp / "tenant.json").write_text(json.dumps(config))
    if model is not None:
        (tmp / config["classifier"]["model_key"]).write_text(json.dumps(model))
    lines = "".join(json.dumps({"id": str(i), "prompt": p}) + "\n" for i, p in enumerate(PROMPTS))
    out = subprocess.run(
        [str(cli), "classify", "--jsonl", "--config", str(tmp / "tenant.json")],
        input=lines, capture_output=True, text=True, check=True,
    ).stdout
    return {PROMPTS[int(v["id"])]: v["score"] for v in map(json.loads, out.splitlines())}


@pytest.mark.parametrize(
    "tenant, key, model",
    [
        (tenants.LEARNED_BUILTIN, tenants.LEARNED_BUILTIN_KEY, None),
        (tenants.LEARNED_OWN, tenants.LEARNED_OWN_KEY, tenants.OWN_ROUTER_MODEL),
    ],
    ids=["compiled-in model", "own model"],
)
def test_a_learned_tenant_is_routed_by_the_score_the_cli_prints(router, cli, tmp_path, tenant, key, model):
    expected = offline_scores(cli, tmp_path, tenant, model)
    for prompt in PROMPTS:
        # The score is of the prompt as sent; a unique suffix would change it.
        r = chat(router.url, key, chat_body(prompt, temperature=0.7))
        assert r.status_code == 200, r.text
        assert r.headers["x-tollgate-score"] == f"{expected[prompt]:.3f}", (prompt, dict(r.headers))
        assert r.headers["x-tollgate-reasons"].startswith("learned router ("), r.headers["x-tollgate-reasons"]
        wanted = "cheap" if expected[prompt] <= 0.5 else "premium"
        assert r.headers["x-tollgate-tier"] == wanted, (prompt, expected[prompt])


def test_the_two_models_score_differently(cli, tmp_path):
    builtin = offline_scores(cli, tmp_path, tenants.LEARNED_BUILTIN, None)
    own = offline_scores(cli, tmp_path, tenants.LEARNED_OWN, tenants.OWN_ROUTER_MODEL)
    assert all(own[p] > builtin[p] for p in PROMPTS), (builtin, own)
