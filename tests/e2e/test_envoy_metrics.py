"""The filter's metrics in Envoy's /stats/prometheus (envoy/README.md,
"Metrics"): requests, tokens and cost by tier and model, cache hits and
misses, budget refusals and errors by code, fallbacks by tier. Labels come
from the bootstrap's stats_tags; tenant ids appear only when the plugin
config asks for them (`metrics.per_tenant`).

Each test runs its own Envoy, so every counter starts at zero and the
expected values are exact: they are worked out from what the client saw
(status, decision headers, usage), not copied from the filter.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import hosts
from calls import EASY_PROMPT, HARD_PROMPT, chat, chat_body, cost_micros, unique
from hosts import Envoy, Mock
from prereq import started
from tenants import daily_budget, key, key_for, routed_tenant

KEY = key_for("e2e-metrics")
# A key of the same tenant with a limit of its own: one request a day.
CAPPED_KEY = key_for("e2e-metrics", "capped")
TINY_KEY = key_for("e2e-metrics-tiny")
METRICS = routed_tenant("e2e-metrics", budgets=daily_budget(usd=50.0), cache={"doorkeeper": False})
METRICS_TINY = routed_tenant(
    "e2e-metrics-tiny", budgets=daily_budget(usd=None, tokens=400, on_exhausted="reject"), cache={"enabled": False}
)
TENANTS = [
    (METRICS, [KEY, key(CAPPED_KEY, limits=[{"name": "capped-daily", "window": "day", "requests": 1}])]),
    (METRICS_TINY, [TINY_KEY]),
]
CHEAP_FIRST, CHEAP_SECOND = "gpt-4o-mini", "gpt-4.1-nano"

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        found = SAMPLE.match(line)
        assert found, f"not a Prometheus sample line: {line!r}"
        name, labels, value = found.groups()
        out.append((name, dict(LABEL.findall(labels or "")), float(value)))
    return out


def tollgate_samples(envoy: Envoy) -> list[tuple[str, dict[str, str], float]]:
    return [s for s in samples(envoy.prometheus()) if s[0].startswith("tollgate_")]


def series(found: list, name: str, **labels: str) -> float:
    """The value of the one series `name{labels}` (0 when absent)."""
    matching = [v for n, ls, v in found if n == name and ls == labels]
    assert len(matching) <= 1, (name, labels, matching)
    return matching[0] if matching else 0.0


def segment(value: str) -> str:
    """A label value as the filter writes it into a metric name: every
    character outside [A-Za-z0-9_-] becomes `_` (envoy/README.md, "Metrics")."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", value) or "none"


def start(mock: Mock, run_dir: Path, name: str, **kw) -> Envoy:
    return started(lambda: hosts.start_envoy(mock, run_dir / name, name=name, tenants=TENANTS, **kw))


@dataclass
class Run:
    envoy: Envoy
    answers: list[httpx.Response]
    found: list[tuple[str, dict[str, str], float]]  # tollgate_* samples once the workload is done


@pytest.fixture(scope="module")
def run(mock: Mock, run_dir: Path) -> Iterator[Run]:
    """A fresh Envoy (default metrics settings) after `workload`."""
    e = start(mock, run_dir, "envoy-metrics")
    try:
        answers = workload(e, mock)
        yield Run(envoy=e, answers=answers, found=tollgate_samples(e))
    finally:
        e.stop()


def workload(envoy: Envoy, mock: Mock) -> list[httpx.Response]:
    """A bit of everything, each request on its own connection (so both
    worker threads, and both VMs, count)."""
    mock.reset()
    answers = []
    cached = chat_body(unique(EASY_PROMPT), temperature=0)
    answers.append(chat(envoy.url, KEY, cached))  # cheap, miss
    answers.append(chat(envoy.url, KEY, cached))  # cheap, hit
    answers.append(chat(envoy.url, KEY, chat_body(unique(HARD_PROMPT), model="tollgate/premium")))  # premium, bypass
    mock.faults("status:500", model=CHEAP_FIRST, times=1)
    answers.append(chat(envoy.url, KEY, chat_body(unique(EASY_PROMPT), temperature=0)))  # fallback to nano
    answers.append(chat(envoy.url, KEY, chat_body(unique(EASY_PROMPT), model="gpt-3.5-turbo")))  # 400
    answers.append(chat(envoy.url, "tg-e2e-nobody", chat_body(unique(EASY_PROMPT))))  # 401
    for _ in range(12):  # 400 tokens a day: a few fit, then 429
        answers.append(chat(envoy.url, TINY_KEY, chat_body(unique(EASY_PROMPT), max_tokens=120)))
        if answers[-1].status_code == 429:
            break
    for _ in range(2):  # 200, then 429: the key's own limit, not the tenant's
        answers.append(chat(envoy.url, CAPPED_KEY, chat_body(unique(EASY_PROMPT), max_tokens=40)))
    return answers


def model_label(model: str) -> str:
    """The `model` label of an answer whose x-tollgate-model is `model`: the
    model without its provider, as a name segment ("gpt-4.1-nano" → "gpt-4_1-nano")."""
    return segment(model.split("/", 1)[1])


def expected_routed(answers: list[httpx.Response]) -> dict[tuple[str, str, str], int]:
    """(metric, tier, model) → value, from the answers the provider gave
    (not cache hits): their usage, priced at list price (calls.PRICES)."""
    want: Counter = Counter()
    for r in answers:
        if r.status_code != 200 or r.headers.get("x-tollgate-cache") == "hit":
            continue
        labels = (r.headers["x-tollgate-tier"], model_label(r.headers["x-tollgate-model"]))
        usage = r.json()["usage"]
        model = r.headers["x-tollgate-model"].split("/", 1)[1]
        want[("tollgate_requests", *labels)] += 1
        want[("tollgate_input_tokens", *labels)] += usage["prompt_tokens"]
        want[("tollgate_output_tokens", *labels)] += usage["completion_tokens"]
        want[("tollgate_cost_micros", *labels)] += cost_micros(model, usage["prompt_tokens"], usage["completion_tokens"])
    return dict(want)


def test_prometheus_shows_requests_tokens_and_cost_by_tier_and_model_exactly(run):
    answers = run.answers
    statuses = [r.status_code for r in answers]
    assert statuses[:6] == [200, 200, 200, 200, 400, 401], [(r.status_code, r.text[:200]) for r in answers]
    def sent_with(key: str) -> list[httpx.Response]:
        return [r for r in answers if r.request.headers["authorization"] == f"Bearer {key}"]

    assert sent_with(TINY_KEY)[-1].status_code == 429, "the tiny budget ran out"
    assert [r.status_code for r in sent_with(CAPPED_KEY)] == [200, 429], [r.text for r in sent_with(CAPPED_KEY)]
    assert answers[3].headers.get("x-tollgate-fallbacks") == "1"
    found = run.found
    want = expected_routed(answers)
    assert {k[0] for k in want} == {"tollgate_requests", "tollgate_input_tokens", "tollgate_output_tokens",
                                    "tollgate_cost_micros"}
    got = {
        (name, labels.get("tier"), labels.get("model")): int(value)
        for name, labels, value in found
        if name in {"tollgate_requests", "tollgate_input_tokens", "tollgate_output_tokens", "tollgate_cost_micros"}
        and value
    }
    assert got == want, f"\nprometheus: {got}\nexpected:   {want}"
    # The models are labelled as they answered: the fallback under the second model.
    assert ("tollgate_requests", "cheap", model_label(f"openai/{CHEAP_SECOND}")) in got
    assert ("tollgate_requests", "premium", model_label("openai/gpt-4o")) in got


def test_prometheus_shows_cache_hits_and_misses_budget_refusals_errors_and_fallbacks(run):
    answers, found = run.answers, run.found
    cache = Counter(r.headers.get("x-tollgate-cache", "-").split(";")[0] for r in answers if r.status_code == 200)
    assert series(found, "tollgate_cache_hits") == cache["hit"] == 1
    assert series(found, "tollgate_cache_misses") == cache["miss"] == 2
    # Refusals by code and by the level of the limit, as the clients were told.
    refused = Counter(
        (r.json()["error"]["code"], r.headers.get("x-tollgate-limit-level")) for r in answers if r.status_code in (402, 429)
    )
    assert refused == {("budget_exceeded", "tenant"): 1, ("budget_exceeded", "key"): 1}, refused
    for (code, level), n in refused.items():
        assert series(found, "tollgate_budget_refusals", code=code, level=level) == n, (code, level)
    assert series(found, "tollgate_errors", code="model_not_allowed") == 1
    assert series(found, "tollgate_errors", code="invalid_api_key") == 1
    assert series(found, "tollgate_fallbacks", tier="cheap") == 1
    assert series(found, "tollgate_fallbacks", tier="premium") == 0
    text = run.envoy.prometheus()
    for metric in ("requests", "cache_hits", "cache_misses", "input_tokens", "output_tokens", "cost_micros",
                   "budget_refusals", "fallbacks", "errors"):
        assert f"# TYPE tollgate_{metric} counter" in text, f"tollgate_{metric} is not exported as a counter"


def test_no_tenant_id_appears_in_any_metric_by_default(run):
    found = run.found
    assert found, "no tollgate_ metric at all"
    with_tenant = [(n, ls) for n, ls, _ in found if "tenant" in ls]
    assert with_tenant == []
    everything = run.envoy.admin("/stats").text + run.envoy.prometheus()
    for tenant_id in ("e2e-metrics", "e2e_metrics"):
        leaked = [line for line in everything.splitlines() if tenant_id in line]
        assert leaked == [], leaked[:5]
    # Every label is one of the documented ones, so cardinality stays bounded by the config.
    assert {k for _, ls, _ in found for k in ls} <= {"tier", "model", "code", "path", "level"}


def test_per_tenant_metrics_add_a_tenant_label_when_configured(mock, run_dir):
    envoy = start(mock, run_dir, "envoy-metrics-per-tenant", metrics={"per_tenant": True})
    try:
        answers = workload(envoy, mock)
        found = tollgate_samples(envoy)
    finally:
        envoy.stop()
    served = [r for r in answers if r.status_code == 200 and r.headers.get("x-tollgate-cache") != "hit"]
    per_tenant = Counter(
        ls.get("tenant") for n, ls, v in found for _ in range(int(v)) if n == "tollgate_requests"
    )
    metrics_tenant = sum(1 for r in served if r.request.headers["authorization"].endswith((KEY, CAPPED_KEY)))
    assert per_tenant == {"e2e-metrics": metrics_tenant, "e2e-metrics-tiny": len(served) - metrics_tenant}, found
    assert series(found, "tollgate_budget_refusals", tenant="e2e-metrics-tiny", code="budget_exceeded", level="tenant") == 1
    assert series(found, "tollgate_budget_refusals", tenant="e2e-metrics", code="budget_exceeded", level="key") == 1


def test_the_grafana_dashboard_queries_only_metrics_and_labels_the_filter_exports():
    """envoy/grafana-dashboard.json: every metric it queries is one the
    filter defines (crates/tollgate-envoy/src/metrics.rs), and every label
    it groups by is one the bootstrap's stats_tags make (envoy/envoy.yaml)."""
    import json

    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "envoy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs, "the dashboard has queries"
    defined = {
        name.replace(".", "_")
        for name in re.findall(r'pub const [A-Z_]+: &str = "([a-z_.]+)";', (root / "crates/tollgate-envoy/src/metrics.rs").read_text())
    }
    queried = {name for e in exprs for name in re.findall(r"\btollgate_[a-z_]+", e)}
    assert queried and queried <= defined, f"not exported by the filter: {sorted(queried - defined)}"
    tags = set(re.findall(r"tag_name: (\w+)", (root / "envoy" / "envoy.yaml").read_text()))
    grouped = {label.strip() for e in exprs for group in re.findall(r"by \(([^)]*)\)", e) for label in group.split(",")}
    assert grouped <= tags, f"labels no stats_tags make: {sorted(grouped - tags)}"
    selected = {label for e in exprs for label in re.findall(r"\{(\w+)=~", e)}
    assert selected <= tags, sorted(selected - tags)
