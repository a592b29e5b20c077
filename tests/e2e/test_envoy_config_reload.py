"""A plugin configuration change under load loses nothing (envoy/README.md,
"Plugin configuration" and "State").

The filter's configuration comes by ECDS from a file Envoy watches, replaced
atomically (as scripts/soak does, the way a control plane updates a running
mesh). Envoy then keeps the VM of each worker thread, creates a new root
context in it for the new configuration and, once the last request of the
old configuration has ended, calls the old root context's `on_done`. With
`state.budgets: "redis"` the old root context still owns Redis writes its
requests queued as they ended (settlements, outcome records) and webdis
calls in flight: they must all land. So, with JSON answers and streams in
flight through two Envoys sharing Redis while the file is replaced three
times, afterwards:

- nothing stays reserved (within a few seconds);
- the tenant's spend is the sum of its answers' costs: `x-tollgate-cost-usd`
  of each JSON answer, and for each stream the usage the client read
  (`stream_options.include_usage`), at list price;
- the outcome ledger (`/v1/usage` resolution rows) recorded every answered
  request.

The same run against one Envoy with node-local state (shared data, no
queued writes) is the control.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

import hosts
from calls import bearer, chat_body, cost_micros, micros, requests_recorded, sse_events, unique, usage
from hosts import Envoy, Mock, Redis, Webdis
from prereq import started
from tenants import single_tier_tenant, strict_daily

TENANT_ID = "e2e-reload"
KEY = "tg-e2e-reload-key"
MODEL = "openai/gpt-4o-mini"
TENANT = single_tier_tenant(TENANT_ID, [MODEL], budgets=strict_daily(usd=50.0))
REDIS_STATE = {
    "budgets": "redis",
    "cache": "redis",
    "redis": {"cluster": "webdis", "authority": "webdis", "timeout_ms": 1000, "key_prefix": "tollgate:"},
}
ECDS_NAME = "tollgate-ecds"
ECDS_STAT = f"extension_config_discovery.http_filter.{ECDS_NAME}."
CLIENTS = 12
CHANGES = 3
# Answers slow enough that requests of the old configuration are still in
# flight when each change lands (and end on the old root context).
FAULTS = ("slow:120", "chunk_delay:25")


def plugin_for(mock: Mock, version: int, state: dict | None) -> dict:
    """Version `version` of the plugin configuration: the test tenant is the
    same in every version (its prices and budget never change); a second
    tenant named after the version makes each configuration a new one."""
    pad = single_tier_tenant(f"e2e-reload-v{version}", [MODEL], budgets=strict_daily(usd=1.0))
    return hosts.plugin_config(mock, [(TENANT, [KEY]), (pad, [f"tg-e2e-reload-v{version}-key"])], state=state)


@dataclass
class Reloadable:
    """Envoys whose tollgate filter configuration comes by ECDS from one file."""

    envoys: list[Envoy]
    ecds_dir: Path
    write: object  # (version) -> None
    procs: list = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.envoys]

    def apply(self, version: int) -> None:
        """Replace the file with `version`; return once every Envoy loaded it."""
        before = [e.stats(re.escape(ECDS_STAT)).get(ECDS_STAT + "config_reload", 0) for e in self.envoys]
        self.write(version)
        for e, b in zip(self.envoys, before):
            deadline = time.monotonic() + 30
            while True:
                stats = e.stats(re.escape(ECDS_STAT))
                if stats.get(ECDS_STAT + "config_reload", 0) > b:
                    break
                assert not stats.get(ECDS_STAT + "config_fail", 0), f"{e.name} refused the update: {stats}"
                assert time.monotonic() < deadline, f"{e.name} did not load the update: {stats}"
                time.sleep(0.05)

    def log_lines(self) -> str:
        """The filter's warnings and errors, for failure messages."""
        out = []
        for e in self.envoys:
            for line in e.log_text().splitlines():
                if "tollgate" in line and ("][warning]" in line or "][error]" in line or "][critical]" in line):
                    out.append(f"{e.name}: {line[-300:]}")
        return "\n".join(out[-40:])

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def start_reloadable(mock: Mock, work: Path, *, redis: bool) -> Reloadable:
    """One Envoy (node-local state), or Redis, webdis and two Envoys sharing
    it; each with the filter entry turned into an ECDS one (scripts/lib/soak.py
    `start_envoy`, the same shape)."""
    wasm = hosts.require_envoy_filter()
    hosts.envoy_binary()
    work.mkdir(parents=True, exist_ok=True)
    ecds_dir = work / "ecds"
    ecds_dir.mkdir(exist_ok=True)
    ecds_file = ecds_dir / "tollgate.json"
    state = REDIS_STATE if redis else None
    procs: list = []
    webdis = None
    if redis:
        store = Redis.start(work)
        procs.append(store)
        webdis = Webdis.start(store, work)
        procs.append(webdis)
    typed_config: dict = {}

    def write(version: int) -> None:
        typed = copy.deepcopy(typed_config)
        typed["config"]["configuration"]["value"] = json.dumps(plugin_for(mock, version, state))
        doc = {"version_info": str(version), "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": ECDS_NAME, "typed_config": typed}]}
        tmp = ecds_dir / f".tollgate.json.{version}"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, ecds_file)  # a move: what Envoy's file watch reacts to

    envoys: list[Envoy] = []
    try:
        for name in ("reload-a", "reload-b") if redis else ("reload",):
            bootstrap = hosts.envoy_bootstrap(
                plugin_for(mock, 0, state), port=hosts.free_port(), admin_port=hosts.free_port(), mock=mock,
                wasm=wasm, webdis_url=webdis.url if webdis else None, access_log=work / f"{name}.access.log",
            )
            hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            entry = hcm["http_filters"][0]
            assert entry["name"] == "envoy.filters.http.wasm", entry
            if not typed_config:
                typed_config.update(entry["typed_config"])
                write(0)
            hcm["http_filters"][0] = {
                "name": ECDS_NAME,
                "config_discovery": {
                    "config_source": {
                        "path_config_source": {"path": str(ecds_file), "watched_directory": {"path": str(ecds_dir)}},
                        "resource_api_version": "V3",
                    },
                    "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
                },
            }
            # A subscription (ECDS, even from a file) needs the node's id and cluster.
            bootstrap["node"] = {"id": f"tollgate-e2e-{name}", "cluster": "tollgate-e2e"}
            e = Envoy.start(bootstrap, work, name=name)
            procs.append(e)
            envoys.append(e)
    except BaseException:
        for p in reversed(procs):
            p.stop()
        raise
    return Reloadable(envoys=envoys, ecds_dir=ecds_dir, write=write, procs=procs)


@pytest.fixture(scope="module", params=["redis", "local"])
def reloadable(request, mock: Mock, run_dir: Path) -> Iterator[Reloadable]:
    redis = request.param == "redis"
    r = started(lambda: start_reloadable(mock, run_dir / f"envoy-reload-{request.param}", redis=redis))
    try:
        yield r
    finally:
        r.stop()


@dataclass
class Answer:
    stream: bool
    status: int
    cost: int = 0  # micro-dollars
    tokens: int = 0
    problem: str | None = None


def send(client: httpx.Client, url: str, stream: bool) -> Answer:
    fields: dict = {"max_tokens": 60}
    if stream:
        fields.update(stream=True, stream_options={"include_usage": True})
    r = client.post(url + "/v1/chat/completions", json=chat_body(unique("Tell me about the sea."), **fields),
                    headers=bearer(KEY))
    if r.status_code != 200:
        return Answer(stream, r.status_code, problem=r.text[:300])
    if not stream:
        body = r.json()
        return Answer(False, 200, micros(r.headers["x-tollgate-cost-usd"]), body["usage"]["total_tokens"])
    events = [data for _, data in sse_events(r.text)]
    if not events or events[-1] != "[DONE]":
        return Answer(True, 200, problem=f"stream not ended: {r.text[-300:]}")
    usages = [u for u in (json.loads(d).get("usage") for d in events[:-1]) if u]
    if len(usages) != 1:
        return Answer(True, 200, problem=f"expected one usage chunk, got {usages}")
    model = r.headers["x-tollgate-model"].split("/", 1)[1]
    prompt, output = usages[0]["prompt_tokens"], usages[0]["completion_tokens"]
    return Answer(True, 200, cost_micros(model, prompt, output), prompt + output)


def poll(url: str, done, timeout: float) -> tuple[bool, dict]:
    deadline = time.monotonic() + timeout
    while True:
        report = usage(url, KEY)
        if done(report) or time.monotonic() > deadline:
            return done(report), report
        time.sleep(0.1)


def reserved_of(report: dict) -> list[str]:
    return [f"{b['name']}: {b['reserved_tokens']} tokens, ${b['reserved_usd']}" for b in report["budgets"]
            if b["reserved_tokens"] or micros(b["reserved_usd"])]


def test_a_configuration_change_under_load_loses_no_settlement_and_no_outcome(reloadable: Reloadable, mock: Mock):
    mock.reset()
    for fault in FAULTS:
        mock.faults(fault, model=MODEL.split("/", 1)[1])
    before = usage(reloadable.urls[0], KEY)
    assert not reserved_of(before), before
    spent_before = micros(before["budgets"][0]["spent_usd"])
    tokens_before = before["budgets"][0]["spent_tokens"]
    recorded_before = requests_recorded(before)

    answers: list[Answer] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop(n: int) -> None:
        with httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0)) as client:
            i = 0
            while not stop.is_set():
                url = reloadable.urls[(n + i) % len(reloadable.urls)]
                try:
                    a = send(client, url, stream=(n + i) % 2 == 0)
                except httpx.HTTPError as e:
                    with lock:
                        errors.append(f"client {n}: {e!r}")
                    return
                with lock:
                    answers.append(a)
                i += 1

    threads = [threading.Thread(target=client_loop, args=(n,), daemon=True) for n in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        for version in range(1, CHANGES + 1):
            reloadable.apply(version)
            time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        mock.clear_faults()

    assert not errors, errors
    problems = [a for a in answers if a.problem]
    assert not problems, problems[:5]
    served = [a for a in answers if a.status == 200]
    assert len(served) == len(answers)
    streams = sum(a.stream for a in served)
    assert streams and len(served) - streams, f"{streams} streams of {len(served)} answers"

    url = reloadable.urls[0]
    settled, report = poll(url, lambda r: not reserved_of(r), 5.0)
    assert settled, (
        f"still reserved 5 s after the load ({len(served)} answers, {CHANGES} config changes): "
        f"{reserved_of(report)}\n{reloadable.log_lines()}"
    )
    expected_cost = spent_before + sum(a.cost for a in served)
    expected_tokens = tokens_before + sum(a.tokens for a in served)
    expected_recorded = recorded_before + len(served)
    # Outcome records are written just after the answers: give them a moment.
    _, report = poll(url, lambda r: requests_recorded(r) >= expected_recorded, 5.0)
    spent = micros(report["budgets"][0]["spent_usd"])
    assert (spent, report["budgets"][0]["spent_tokens"]) == (expected_cost, expected_tokens), (
        f"ledger ${spent / 1e6:.6f} ({report['budgets'][0]['spent_tokens']} tokens) != its {len(served)} answers' "
        f"${expected_cost / 1e6:.6f} ({expected_tokens} tokens)\n{reloadable.log_lines()}"
    )
    assert requests_recorded(report) == expected_recorded, (
        f"the outcome ledger recorded {requests_recorded(report) - recorded_before} of {len(served)} answered "
        f"requests\n{reloadable.log_lines()}"
    )
    # Both Envoys (or the one) reached the last version.
    for e in reloadable.envoys:
        assert e.stats(re.escape(ECDS_STAT)).get(ECDS_STAT + "config_reload", 0) >= CHANGES, e.name
