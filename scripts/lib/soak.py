"""The soak run behind scripts/soak: mixed traffic, looped and bounded in
time and count, through the Worker (wrangler dev --local, real workerd) and
through Envoy with the filter (node-local state), each in front of its own
mock upstream, on 127.0.0.1 only; then checks that nothing was lost.

The mix, from a bounded pool of concurrent clients per host: JSON and
streams on the OpenAI and Anthropic APIs; clients that hang up mid-stream;
mock faults (5xx, 429, connections cut before or mid-answer) and slow
answers (the mock's `slow` and `chunk_delay`); repeat prompts to a cache-on
tenant; a tenant that runs out of its daily budget; and a tenant whose
config changes while the load runs (the Worker: `wrangler kv key put` into
its local KV, seen within CONFIG_CACHE_SECONDS; Envoy: the filter's plugin
configuration delivered by ECDS from a file Envoy watches, replaced
atomically, the way a control plane updates a running mesh).

Afterwards, per host, it prints and checks:

- requests by outcome (status, JSON or stream, client disconnects, cache hits);
- every 5xx, every broken stream and every transport error is attributed to a
  fault the mock injected into that very request (found by the request's
  marker in the mock's request log), else counted as unexpected;
- only the budget tenant is refused for budget, and never past its limit;
- no budget hold is left (`/v1/usage` shows nothing reserved within a few
  seconds after the load stops);
- the ledger: each tenant's spend equals the sum of the cost of its answers
  (`x-tollgate-cost-usd` of JSON answers, the usage a complete stream
  reported, priced), exactly where every answer was seen whole; a tenant with
  streams cut short (by its client or by a fault) is checked against bounds:
  at least the output its client saw, at most each request's reservation;
- the answers the tenant's outcome ledger recorded, where exact;
- the config change applied (answers after it name the new config's models);
- every upstream response ended (completed, or cancelled when its client left);
- host memory (RSS of workerd / envoy from /proc, sampled every second) at
  start and end, and its slope: Envoy's growth and second-half slope are
  bounded; workerd under `wrangler dev` grows with traffic even for a bare
  pass-through Worker (its dev inspector), so its bound is per request,
  against that baseline;
- the host processes are still running;
- the host log holds no panic, "hung", "unreachable" or RuntimeError line
  ("Uncaught …" lines are counted and printed, not failed).

`--host envoy-redis` (or `all`) adds two Envoys sharing one Redis through
webdis, both watching the same ECDS file. No answer may take longer than
REQUEST_TIMEOUT: a stalled one counts as a transport error.

Exits non-zero when a check fails, naming it; the last line is
`soak: N passed, M failed`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import os
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))

import hosts  # noqa: E402
from calls import PRICES, cost_micros, micros  # noqa: E402

ROOT = hosts.ROOT
ANTHROPIC_VERSION = "2023-06-01"
MARKER = re.compile(r"\[soak ([0-9a-f]{16})\]")
# Lines that must never appear in a host's log.
BAD_LOG_LINE = re.compile(r"panick|\bpanic\b|\bhung\b|unreachable|RuntimeError", re.I)

# ---------------------------------------------------------------- tenants
#
# Models are split so that faults stay where they are meant to be:
#   fault models (status faults, cut connections): only soak-chaos uses them;
#   slow models (a permanent chunk_delay, plus `slow` faults): soak-abort, and
#   the premium tier / config B of the exact tenants (slowness changes no cost);
#   fast models: the rest.
FAST = ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"]
SLOW = ["openai/gpt-4o", "anthropic/claude-sonnet-4-5"]
FAULTY = ["openai/gpt-4.1-nano", "openai/gpt-4.1", "anthropic/claude-3-haiku-20240307", "anthropic/claude-3-7-sonnet-latest"]
SLOW_CHUNK_MS = 40
BUDGET_DAILY_USD = 0.002


def daily(usd: float) -> dict:
    return {
        "limits": [{"name": "daily", "window": "day", "usd": usd}],
        "on_exhausted": "reject",
        "clamp_max_tokens": False,
        "store_failure": "closed",
    }


def tenant(tenant_id: str, tiers: list[dict], *, usd: float = 50.0, cache: bool = False) -> dict:
    return {
        "version": 1,
        "tenant_id": tenant_id,
        "routing": {"tiers": tiers},
        "budgets": daily(usd),
        "cache": {"enabled": True, "doorkeeper": False} if cache else {"enabled": False},
    }


TWO_TIERS = [{"name": "cheap", "up_to_score": 0.5, "models": FAST}, {"name": "premium", "models": SLOW}]
CONFIG_A = [{"name": "only", "models": FAST}]
CONFIG_B = [{"name": "only", "models": SLOW}]

TENANTS: dict[str, dict] = {
    "soak-clean": tenant("soak-clean", TWO_TIERS),
    "soak-cache": tenant("soak-cache", TWO_TIERS, cache=True),
    "soak-budget": tenant("soak-budget", [{"name": "only", "models": FAST}], usd=BUDGET_DAILY_USD),
    "soak-chaos": tenant("soak-chaos", [{"name": "only", "models": FAULTY}]),
    "soak-abort": tenant("soak-abort", [{"name": "only", "models": SLOW}]),
    "soak-config": tenant("soak-config", CONFIG_A),
}
KEYS = {t: f"tg-soak-{t.removeprefix('soak-')}-key" for t in TENANTS}
CONFIG_TENANT = "soak-config"
CONFIG_VERSIONS = [CONFIG_A, CONFIG_B]


def config_version(version: int) -> dict:
    cfg = copy.deepcopy(TENANTS[CONFIG_TENANT])
    cfg["routing"]["tiers"] = copy.deepcopy(CONFIG_VERSIONS[version % 2])
    return cfg


def models_of_version(version: int) -> set[str]:
    return {m for tier in CONFIG_VERSIONS[version % 2] for m in tier["models"]}


# ---------------------------------------------------------------- the mix

EASY = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "How many days are in a leap year?",
    "What is two plus two?",
    "Translate 'good morning' into Spanish.",
    "Which planet is closest to the sun?",
]
HARD = [
    "Prove that there are infinitely many primes, step by step, then write a Rust function implementing the "
    "Sieve of Eratosthenes and compare it with a segmented sieve. Analyze the trade-offs and derive the complexity.",
    "Design a distributed rate limiter for 100 machines, compare token bucket and sliding window approaches, "
    "prove the bound on overshoot, and write the core in Python with tests.",
]
# The cache tenant's prompts: few, fixed and deterministic, so they repeat.
CACHE_PROMPTS = [f"Give one fact about harbour number {i}." for i in range(10)]


@dataclass(frozen=True)
class Scenario:
    name: str
    tenant: str
    api: str  # "openai" | "anthropic"
    stream: bool
    weight: float
    hang_up: bool = False  # the client leaves mid-stream


SCENARIOS = [
    Scenario("clean json openai", "soak-clean", "openai", False, 8),
    Scenario("clean json anthropic", "soak-clean", "anthropic", False, 6),
    Scenario("clean stream openai", "soak-clean", "openai", True, 7),
    Scenario("clean stream anthropic", "soak-clean", "anthropic", True, 6),
    Scenario("cache json openai", "soak-cache", "openai", False, 6),
    Scenario("cache stream openai", "soak-cache", "openai", True, 3),
    Scenario("cache json anthropic", "soak-cache", "anthropic", False, 3),
    Scenario("cache stream anthropic", "soak-cache", "anthropic", True, 3),
    Scenario("budget json openai", "soak-budget", "openai", False, 3),
    Scenario("budget stream anthropic", "soak-budget", "anthropic", True, 2),
    Scenario("chaos json openai", "soak-chaos", "openai", False, 6),
    Scenario("chaos stream openai", "soak-chaos", "openai", True, 6),
    Scenario("chaos json anthropic", "soak-chaos", "anthropic", False, 4),
    Scenario("chaos stream anthropic", "soak-chaos", "anthropic", True, 4),
    Scenario("hang-up stream openai", "soak-abort", "openai", True, 7, hang_up=True),
    Scenario("hang-up stream anthropic", "soak-abort", "anthropic", True, 6, hang_up=True),
    Scenario("config json openai", "soak-config", "openai", False, 4),
    Scenario("config stream anthropic", "soak-config", "anthropic", True, 3),
]

# Fault rules the injector adds while the load runs: (model, fault, times).
# Status faults and cut connections only on soak-chaos's models; slowness anywhere.
FAULT_RULES: list[tuple[str | None, str, int]] = [
    ("gpt-4.1-nano", "status:500", 2),          # falls back to gpt-4.1
    ("gpt-4.1-nano", "status:429", 2),
    ("gpt-4.1-nano", "status:503", 1),
    ("gpt-4.1", "status:502", 2),               # with a nano fault at once: 502 to the client
    ("gpt-4.1-nano", "drop_after:4", 1),        # a stream cut mid-answer, a JSON body cut mid-body
    ("gpt-4.1-nano", "drop_after:0", 1),        # cut before the first byte
    ("gpt-4.1", "drop_after:6", 1),
    ("claude-3-haiku-20240307", "status:529", 2),
    ("claude-3-haiku-20240307", "status:500", 1),
    ("claude-3-7-sonnet-latest", "status:503", 1),
    ("claude-3-haiku-20240307", "drop_after:5", 1),
    ("claude-3-7-sonnet-latest", "drop_after:7", 1),
    (None, "slow:1200", 2),
    (None, "slow:300", 4),
    ("claude-3-haiku-20240307", "slow:800", 2),
    ("gpt-4o-mini", "chunk_delay:30", 3),
]
# Faults that make the provider's answer fail (what a 5xx may be blamed on).
WRANGLER_PROXY_503 = "Your worker restarted mid-request"
BREAKING = re.compile(r"^(status:\d+|drop_after:\d+)$")


# ---------------------------------------------------------------- one request


@dataclass
class Result:
    scenario: Scenario
    marker: str
    max_tokens: int | None
    prompt_chars: int
    started: float = 0.0
    ended: float = 0.0
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    error_code: str | None = None
    body_text: str = ""
    streamed: bool = False
    stream_done: bool = False  # [DONE] / message_stop seen
    stream_error_event: bool = False  # the router's SSE error event
    hung_up: bool = False  # we left mid-stream on purpose
    words_seen: int = 0
    usage: tuple[int, int] | None = None  # (input, output) the answer reported
    input_seen: int | None = None  # Anthropic message_start's input_tokens
    transport_error: str | None = None

    @property
    def tenant(self) -> str:
        return self.scenario.tenant

    @property
    def hit(self) -> bool:
        return self.status == 200 and self.headers.get("x-tollgate-cache", "").split(";")[0] == "hit"

    @property
    def model(self) -> str | None:
        m = self.headers.get("x-tollgate-model")
        return m.split("/", 1)[1] if m and "/" in m else m

    def outcome(self) -> str:
        if self.status == 0:
            return f"no answer ({self.transport_error.split(':')[0] if self.transport_error else '?'})"
        if self.status != 200:
            return f"{self.status} {self.error_code or 'non-JSON body'}"
        kind = "stream" if self.streamed else "json"
        if self.hit:
            kind += " cache hit"
        if self.hung_up:
            return f"200 {kind}, client hung up mid-stream"
        if self.transport_error:
            return f"200 {kind}, connection reset mid-answer"
        if self.streamed and not self.stream_done:
            return f"200 {kind}, cut (error event)" if self.stream_error_event else f"200 {kind}, ended early"
        return f"200 {kind}"

    @property
    def complete(self) -> bool:
        """An answer seen whole, whose usage the client knows."""
        if self.status != 200 or self.transport_error or self.hung_up:
            return False
        if self.streamed:
            return self.stream_done and (self.usage is not None or self.hit)
        return self.usage is not None or self.hit


def new_marker() -> str:
    return uuid.uuid4().hex[:16]


def build_request(sc: Scenario, rng: random.Random) -> tuple[str, dict, dict, str, int | None]:
    """(path, body, headers, marker, max_tokens)"""
    if sc.tenant == "soak-cache":
        i = rng.randrange(len(CACHE_PROMPTS))
        # A fixed marker per prompt (and per API/stream, so each has its own cache entry).
        marker = f"{i:04x}{int(sc.stream):04x}{0 if sc.api == 'openai' else 1:08x}"
        prompt = f"{CACHE_PROMPTS[i]} [soak {marker}]"
    else:
        marker = new_marker()
        base = rng.choice(HARD) if sc.tenant == "soak-clean" and rng.random() < 0.35 else rng.choice(EASY)
        prompt = f"{base} [soak {marker}]"
    key = KEYS[sc.tenant]
    if sc.tenant == "soak-budget":
        max_tokens = 64
    elif sc.hang_up:
        # A tight reservation: the bound a stream cut short is checked against.
        max_tokens = 128
    elif sc.api == "anthropic":
        max_tokens = 256
    else:
        max_tokens = rng.choice([None, 200])
    body: dict = {"model": "tollgate/auto", "messages": [{"role": "user", "content": prompt}]}
    if sc.tenant == "soak-cache":
        body["temperature"] = 0
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if sc.stream:
        body["stream"] = True
        if sc.api == "openai":
            body["stream_options"] = {"include_usage": True}
    if sc.api == "anthropic":
        return "/v1/messages", body, {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}, marker, max_tokens
    return "/v1/chat/completions", body, {"authorization": f"Bearer {key}"}, marker, max_tokens


class StreamReader:
    """Reads SSE from a response as it arrives, keeping what settles the cost."""

    def __init__(self, result: Result, api: str):
        self.r, self.api = result, api
        self.events = 0
        self.event: str | None = None
        self.data: list[str] = []
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None

    def line(self, line: str) -> bool:
        """Feed one line; True when an event was completed."""
        if line == "":
            if not self.data:
                self.event = None
                return False
            self.handle(self.event, "\n".join(self.data))
            self.event, self.data = None, []
            self.events += 1
            return True
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:"):
            self.data.append(line[5:].lstrip())
        return False

    def handle(self, name: str | None, data: str) -> None:
        r = self.r
        if data == "[DONE]":
            r.stream_done = True
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        if name == "error" or event.get("type") == "error" or "error" in event:
            r.stream_error_event = True
            return
        if self.api == "openai":
            for choice in event.get("choices") or []:
                r.words_seen += len(((choice.get("delta") or {}).get("content") or "").split())
            if event.get("usage"):
                u = event["usage"]
                r.usage = (u["prompt_tokens"], u["completion_tokens"])
        else:
            kind = event.get("type")
            if kind == "message_start":
                usage = event["message"].get("usage") or {}
                self.input_tokens = usage.get("input_tokens")
                r.input_seen = self.input_tokens
            elif kind == "content_block_delta":
                r.words_seen += len((event.get("delta") or {}).get("text", "").split())
            elif kind == "message_delta" and event.get("usage"):
                self.output_tokens = event["usage"].get("output_tokens")
            elif kind == "message_stop":
                r.stream_done = True
                if self.input_tokens is not None and self.output_tokens is not None:
                    r.usage = (self.input_tokens, self.output_tokens)


async def send(client: httpx.AsyncClient, url: str, sc: Scenario, rng: random.Random) -> Result:
    path, body, headers, marker, max_tokens = build_request(sc, rng)
    r = Result(scenario=sc, marker=marker, max_tokens=max_tokens,
               prompt_chars=len(body["messages"][0]["content"]))
    hang_up_after = rng.randint(2, 9) if sc.hang_up else None
    r.started = time.monotonic()
    try:
        async with client.stream("POST", url + path, json=body, headers=headers) as resp:
            r.status = resp.status_code
            r.headers = {k.lower(): v for k, v in resp.headers.items()}
            if resp.status_code == 200 and "text/event-stream" in resp.headers.get("content-type", ""):
                r.streamed = True
                reader = StreamReader(r, sc.api)
                async for line in resp.aiter_lines():
                    if reader.line(line) and hang_up_after is not None and reader.events >= hang_up_after \
                            and not r.stream_done:
                        r.hung_up = True
                        break  # leaving the block unread closes the connection
                if not r.hung_up:
                    reader.line("")
            else:
                raw = await resp.aread()
                r.body_text = raw.decode(errors="replace")[:600]
                try:
                    payload = json.loads(raw)
                except json.JSONDecodeError:
                    payload = None
                if isinstance(payload, dict):
                    if resp.status_code == 200:
                        u = payload.get("usage") or {}
                        if sc.api == "openai" and "prompt_tokens" in u:
                            r.usage = (u["prompt_tokens"], u["completion_tokens"])
                        elif "input_tokens" in u:
                            r.usage = (u["input_tokens"], u["output_tokens"])
                    else:
                        r.error_code = (payload.get("error") or {}).get("code") if isinstance(
                            payload.get("error"), dict) else None
    except httpx.HTTPError as e:
        r.transport_error = f"{type(e).__name__}: {e}"
    r.ended = time.monotonic()
    return r


# ---------------------------------------------------------------- the mock's request log


class UpstreamLog:
    """The mock's request records, polled while the load runs (the mock keeps
    only its newest 10 000), merged by seq, reduced to what the checks need."""

    def __init__(self, mock: hosts.Mock):
        self.mock = mock
        self.records: dict[int, dict] = {}
        self.by_marker: dict[str, list[int]] = defaultdict(list)
        self.lost = 0  # records pushed out of the mock's log before a poll saw them
        self.last_seq = 0

    def poll(self) -> None:
        r = httpx.get(self.mock.url + "/__mock/requests", timeout=30)
        r.raise_for_status()
        records = r.json()
        if records and records[0]["seq"] > self.last_seq + 1 and self.last_seq:
            self.lost += records[0]["seq"] - self.last_seq - 1
        for rec in records:
            seq = rec["seq"]
            found = MARKER.search(json.dumps(rec.get("body", "")))
            marker = found.group(1) if found else None
            if seq not in self.records and marker:
                self.by_marker[marker].append(seq)
            self.records[seq] = {
                "seq": seq, "model": rec.get("model"), "status": rec.get("status"), "faults": rec.get("faults") or [],
                "completed": rec.get("completed"), "client_aborted": rec.get("client_aborted"),
                "stream": rec.get("stream"), "marker": marker,
            }
            self.last_seq = max(self.last_seq, seq)

    def for_marker(self, marker: str) -> list[dict]:
        return [self.records[s] for s in self.by_marker.get(marker, [])]


def injected_breakage(records: list[dict]) -> list[str]:
    """The breaking faults the mock applied to these upstream attempts."""
    return [f for rec in records for f in rec["faults"] if BREAKING.match(f)]


# ---------------------------------------------------------------- memory


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def processes_in_group(pgid: int, comm: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...
        close = stat.rfind(")")
        name = stat[stat.find("(") + 1 : close]
        fields = stat[close + 2 :].split()
        if int(fields[2]) == pgid and name == comm:
            found.append(int(entry.name))
    return found


class MemorySampler:
    def __init__(self, pids_of):
        self.pids_of = pids_of  # () -> list[int]
        self.samples: list[tuple[float, float]] = []  # (monotonic, MB)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> float:
        mb = sum(rss_kb(p) for p in self.pids_of()) / 1024
        self.samples.append((time.monotonic(), mb))
        return mb

    def start(self, every: float = 1.0) -> None:
        def loop():
            while not self._stop.wait(every):
                self.sample()

        self.sample()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 3:
        return 0.0
    xs = [t for t, _ in samples]
    ys = [m for _, m in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 60


# ---------------------------------------------------------------- hosts


@dataclass
class HostRun:
    name: str
    label: str
    urls: list[str]  # clients pick one per request (two Envoys sharing Redis)
    mock: hosts.Mock
    host: object
    logs: list[Path]
    memory: MemorySampler
    process_name: str
    apply_config: object  # (version) -> None, blocking; returns once the host has it
    config_grace: float  # seconds after apply_config returned within which answers may still be old
    results: list[Result] = field(default_factory=list)
    flips: list[tuple[float, float, int]] = field(default_factory=list)  # (started, applied, version)
    flip_errors: list[str] = field(default_factory=list)
    faults_added: Counter = field(default_factory=Counter)
    upstream: UpstreamLog | None = None
    load_started: float = 0.0
    load_ended: float = 0.0
    settle: dict = field(default_factory=dict)
    settle_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.urls[0]


CONFIG_CACHE_SECONDS = 3
REQUEST_TIMEOUT = 20.0


def start_worker(mock: hosts.Mock, work: Path) -> HostRun:
    seed = [(cfg, [KEYS[t]]) for t, cfg in TENANTS.items()]
    w = hosts.start_worker(mock, work / "worker", tenants=seed, first_one_by_one=False,
                           variables={"CONFIG_CACHE_SECONDS": str(CONFIG_CACHE_SECONDS)})
    pgid = os.getpgid(w.dev.proc.pid)

    def apply(version: int) -> None:
        # The operator's path: `wrangler kv key put tenant:<id> --path FILE --local`.
        w.kv.put(f"tenant:{CONFIG_TENANT}", config_version(version))

    return HostRun(
        name="worker", label="Worker (wrangler dev --local, workerd)", urls=[w.url], mock=mock, host=w,
        logs=[w.dev.log], memory=MemorySampler(lambda: processes_in_group(pgid, "workerd")),
        process_name="workerd", apply_config=apply, config_grace=CONFIG_CACHE_SECONDS + 2.0,
    )


ECDS_NAME = "tollgate-ecds"
# tests/e2e/conftest.py's REDIS_STATE: budgets, outcomes and cache in Redis through webdis.
REDIS_STATE = {
    "budgets": "redis",
    "cache": "redis",
    "redis": {"cluster": "webdis", "authority": "webdis", "timeout_ms": 1000, "key_prefix": "tollgate:"},
}


@dataclass
class Stack:
    """Processes to stop together, last started first."""

    procs: list

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def start_envoy(mock: hosts.Mock, work: Path, *, redis: bool = False) -> HostRun:
    """Envoy with the filter's configuration from ECDS, a file Envoy watches:
    the bootstrap is envoy_bootstrap's (the e2e tests' own), with the wasm
    filter entry turned into a `config_discovery` one. With `redis`, two
    Envoys whose budgets, outcomes and cache live in one Redis (through
    webdis), watching the same ECDS file."""
    wasm = hosts.require_envoy_filter()
    hosts.envoy_binary()
    work = work / ("envoy-redis" if redis else "envoy")
    work.mkdir(parents=True, exist_ok=True)
    seed = [(cfg, [KEYS[t]]) for t, cfg in TENANTS.items()]
    ecds_dir = work / "ecds"
    ecds_dir.mkdir(exist_ok=True)
    ecds_file = ecds_dir / "tollgate.json"
    stack = Stack([])
    webdis = None
    if redis:
        store = hosts.Redis.start(work)
        stack.procs.append(store)
        webdis = hosts.Webdis.start(store, work)
        stack.procs.append(webdis)
    state = REDIS_STATE if redis else None
    wasm_typed: dict = {}

    def write_ecds(version: int) -> None:
        typed = copy.deepcopy(wasm_typed)
        plugin = hosts.plugin_config(mock, [(config_version(version) if t == CONFIG_TENANT else cfg, [KEYS[t]])
                                            for t, cfg in TENANTS.items()], state=state)
        typed["config"]["configuration"]["value"] = json.dumps(plugin)
        doc = {"version_info": str(version), "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": ECDS_NAME, "typed_config": typed}]}
        tmp = ecds_dir / f".tollgate.json.{version}"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, ecds_file)  # a move: what Envoy's file watch reacts to

    envoys: list[hosts.Envoy] = []
    try:
        for name in (("envoy-a", "envoy-b") if redis else ("envoy",)):
            bootstrap = hosts.envoy_bootstrap(
                hosts.plugin_config(mock, seed, state=state), port=hosts.free_port(), admin_port=hosts.free_port(),
                mock=mock, wasm=wasm, webdis_url=webdis.url if webdis else None,
                access_log=work / f"{name}.access.log",
            )
            hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            wasm_entry = hcm["http_filters"][0]
            assert wasm_entry["name"] == "envoy.filters.http.wasm", wasm_entry
            if not wasm_typed:
                wasm_typed.update(wasm_entry["typed_config"])
                write_ecds(0)
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
            bootstrap["node"] = {"id": f"tollgate-soak-{name}", "cluster": "tollgate-soak"}
            e = hosts.Envoy.start(bootstrap, work, name=name)
            stack.procs.append(e)
            envoys.append(e)
    except BaseException:
        stack.stop()
        raise
    stat = f"extension_config_discovery.http_filter.{ECDS_NAME}."

    def apply(version: int) -> None:
        before = [e.stats(re.escape(stat)).get(stat + "config_reload", 0) for e in envoys]
        write_ecds(version)
        for e, b in zip(envoys, before):
            deadline = time.monotonic() + 30
            while True:
                stats = e.stats(re.escape(stat))
                if stats.get(stat + "config_reload", 0) > b:
                    break
                if stats.get(stat + "config_fail", 0) or stats.get(stat + "update_rejected", 0):
                    raise RuntimeError(f"{e.name} refused the ECDS update: {stats}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{e.name} did not load the ECDS update within 30 s: {stats}")
                time.sleep(0.05)

    if redis:
        label = "two Envoys 1.40 + filter sharing Redis through webdis (plugin config by ECDS)"
    else:
        label = "Envoy 1.40 + filter (node-local state, plugin config by ECDS)"
    return HostRun(
        name="envoy-redis" if redis else "envoy", label=label, urls=[e.url for e in envoys], mock=mock,
        host=stack, logs=[e.log for e in envoys], memory=MemorySampler(lambda: [e.proc.pid for e in envoys]),
        process_name=" + ".join(e.name for e in envoys), apply_config=apply, config_grace=1.0,
    )


# ---------------------------------------------------------------- the load


async def run_load(run: HostRun, seconds: float, max_requests: int, concurrency: int, seed: int,
                   config_every: float, skip: str | None) -> None:
    scenarios = [s for s in SCENARIOS if not (skip and re.search(skip, s.name))]
    weights = [s.weight for s in scenarios]
    # Idle connections are dropped well before the 5 s after which the
    # Worker's local front (wrangler dev is a Node server: keepAliveTimeout
    # 5 s) closes them: at httpx's default of 5 s too, a request sent on a
    # connection the server is closing at that moment dies unsent (a
    # ReadError, "upstream never called"), which says nothing about tollgate.
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency, keepalive_expiry=2.0)
    # No answer takes more than a few seconds (the slowest fault is 1.2 s, the
    # slowest stream 40 words at 60 ms); one that stalls this long is hung.
    timeout = httpx.Timeout(REQUEST_TIMEOUT, connect=10.0)
    sent = 0
    stop = asyncio.Event()
    run.upstream = UpstreamLog(run.mock)
    # The hang-up tenant's models stream slowly, so a client leaves mid-answer.
    for model in ("gpt-4o", "claude-sonnet-4-5"):
        await asyncio.to_thread(run.mock.faults, f"chunk_delay:{SLOW_CHUNK_MS}", model=model)

    async def client_loop(n: int) -> None:
        nonlocal sent
        crng = random.Random(seed * 1000 + n)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            while not stop.is_set():
                if sent >= max_requests:
                    break
                sent += 1
                sc = crng.choices(scenarios, weights)[0]
                run.results.append(await send(client, crng.choice(run.urls), sc, crng))

    async def faults_loop() -> None:
        frng = random.Random(seed + 7)
        while not stop.is_set():
            try:
                active = await asyncio.to_thread(lambda: httpx.get(run.mock.url + "/__mock/faults", timeout=10).json())
                # At most one pending rule per model: a rule for a fallback
                # model waits for its first model to fail, and must not crowd
                # out the rest.
                pending = {rule["model"] for rule in active if rule["times"] is not None}
                choices = [rule for rule in FAULT_RULES if rule[0] not in pending]
                if choices:
                    model, fault, times = frng.choice(choices)
                    await asyncio.to_thread(run.mock.faults, fault, model=model, times=times)
                    run.faults_added[fault.split(":")[0]] += 1
            except httpx.HTTPError as e:
                run.notes.append(f"fault injector: {e!r}")
            await asyncio.sleep(0.3)

    async def config_loop() -> None:
        if config_every <= 0:
            return
        version = 0
        await asyncio.sleep(min(config_every, seconds / 4))
        while not stop.is_set():
            version += 1
            begun = time.monotonic()
            try:
                await asyncio.to_thread(run.apply_config, version)
            except Exception as e:  # noqa: BLE001 - reported as a failed check
                run.flip_errors.append(f"config version {version}: {e}")
                return
            run.flips.append((begun, time.monotonic(), version))
            try:
                await asyncio.wait_for(stop.wait(), config_every)
            except asyncio.TimeoutError:
                pass

    async def upstream_loop() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 3.0)
            except asyncio.TimeoutError:
                pass
            await asyncio.to_thread(run.upstream.poll)

    run.memory.start()
    run.load_started = time.monotonic()
    clients = [asyncio.create_task(client_loop(i)) for i in range(concurrency)]
    helpers = [asyncio.create_task(faults_loop()), asyncio.create_task(config_loop()),
               asyncio.create_task(upstream_loop())]
    deadline = run.load_started + seconds
    while time.monotonic() < deadline and not all(c.done() for c in clients):
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*clients)
    run.load_ended = time.monotonic()
    await asyncio.gather(*helpers)
    await asyncio.to_thread(run.mock.clear_faults)


def usage_report(url: str, key: str) -> dict:
    r = httpx.get(url + "/v1/usage", headers={"authorization": f"Bearer {key}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def reserved_of(report: dict) -> list[str]:
    return [f"{b['name']}: {b['reserved_tokens']} tokens, ${b['reserved_usd']}" for b in report["budgets"]
            if b["reserved_tokens"] or micros(b["reserved_usd"])]


def settle(run: HostRun, timeout: float) -> None:
    """Poll every tenant's /v1/usage until nothing is reserved (or `timeout`)."""
    deadline = run.load_ended + timeout
    pending = set(TENANTS)
    while True:
        for t in sorted(pending):
            report = usage_report(run.url, KEYS[t])
            run.settle[t] = report
            if not reserved_of(report):
                pending.discard(t)
        if not pending:
            run.settle_seconds = time.monotonic() - run.load_ended
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


# ---------------------------------------------------------------- checks


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


def usd(m: int | float) -> str:
    return f"{m / 1e6:.6f}"


def chain_models(tenant_id: str) -> list[str]:
    cfgs = [TENANTS[tenant_id]] + ([config_version(1)] if tenant_id == CONFIG_TENANT else [])
    return [m.split("/", 1)[1] for cfg in cfgs for tier in cfg["routing"]["tiers"] for m in tier["models"]]


def upper_bound(r: Result) -> int:
    """The most a request can be charged: its reservation when the router said
    it (x-tollgate-cost-estimate-usd), else its prompt (every token at least a
    character, Anthropic's estimate x1.15, framing) and its whole output
    allowance at the dearest model of the tenant's chains."""
    if "x-tollgate-cost-estimate-usd" in r.headers:
        return micros(r.headers["x-tollgate-cost-estimate-usd"])
    prompt = math.ceil((r.prompt_chars + 64) * 1.15)
    output = r.max_tokens or 4096
    return max(cost_micros(m, prompt, output) for m in chain_models(r.tenant))


def lower_bound(r: Result) -> int:
    """The least a request cut short must be charged: the output its client saw
    (one token per word at the mock; the router's estimate is never less), and
    the prompt when message_start told it."""
    if r.hit or r.status != 200 or not r.model or r.model not in PRICES:
        return 0
    return cost_micros(r.model, r.input_seen or 0, r.words_seen)


def check_host(run: HostRun, config_every: float) -> list[Check]:
    checks: list[Check] = []
    name = run.name
    results = run.results
    up = run.upstream

    # -- 5xx, broken answers and transport errors, attributed.
    injected5, unexpected5 = Counter(), []
    dev_proxy_lost = 0
    broken_injected, broken_unexpected = Counter(), []
    for r in results:
        recs = up.for_marker(r.marker)
        faults = injected_breakage(recs)
        if r.status >= 500:
            cause = f"{r.status} {r.error_code or 'non-JSON'}"
            # Injected: every upstream attempt for this request failed by a fault
            # the mock applied, or Envoy's own 502 for a connection the mock cut.
            if recs and all(injected_breakage([rec]) for rec in recs):
                injected5[f"{cause} <- {'+'.join(sorted(set(faults)))}"] += 1
            elif WRANGLER_PROXY_503 in r.body_text and not r.error_code:
                # wrangler dev's own proxy lost the request before the Worker
                # answered (tests/e2e/devproxy.py says why: workers-sdk#14641);
                # the hold and ledger checks below still prove nothing was
                # charged that no answer showed, or left reserved.
                dev_proxy_lost += 1
            else:
                unexpected5.append(f"{cause} at {r.started - run.load_started:.1f}s, {r.scenario.name} marker {r.marker}: "
                                   f"upstream {recs or 'never called'}: {r.body_text[:200]!r}")
        elif r.status == 0 or (r.status == 200 and not r.complete and not r.hung_up):
            what = r.outcome() + (f" [{r.transport_error[:120]}]" if r.transport_error else "")
            if any(f.startswith("drop_after") for f in faults):
                broken_injected[r.outcome()] += 1
            else:
                broken_unexpected.append(f"{what} at {r.started - run.load_started:.1f}s, {r.scenario.name} marker "
                                         f"{r.marker}: upstream {recs or 'never called'}")
    checks.append(Check(f"{name}: every 5xx comes from an injected fault ({sum(injected5.values())} injected, "
                        f"{len(unexpected5)} unexpected"
                        + (f", {dev_proxy_lost} lost by wrangler dev's proxy before the Worker" if dev_proxy_lost else "")
                        + ")", not unexpected5,
                        "\n".join(unexpected5[:12]) + (f"\n… {len(unexpected5)} in all" if len(unexpected5) > 12 else "")))
    checks.append(Check(f"{name}: every answer whole unless the mock cut it ({sum(broken_injected.values())} cut, "
                        f"{len(broken_unexpected)} unexpected)",
                        not broken_unexpected,
                        "\n".join(broken_unexpected[:12]) + (f"\n… {len(broken_unexpected)} in all"
                                                             if len(broken_unexpected) > 12 else "")))
    run.attributed = (injected5, broken_injected)

    # -- 4xx: only the budget tenant's budget refusals.
    odd4 = [f"{r.status} {r.error_code} {r.scenario.name}: {r.body_text[:160]!r}" for r in results
            if 400 <= r.status < 500 and not (r.status == 429 and r.error_code == "budget_exceeded"
                                              and r.tenant == "soak-budget")]
    budget = [r for r in results if r.tenant == "soak-budget"]
    refused = [r for r in budget if r.status == 429 and r.error_code == "budget_exceeded"]
    checks.append(Check(f"{name}: no 4xx but the budget tenant's 429s", not odd4, "\n".join(odd4[:12])))

    # -- holds.
    held = {t: reserved_of(rep) for t, rep in run.settle.items() if reserved_of(rep)}
    checks.append(Check(
        f"{name}: no budget hold left after the load"
        + (f" (all settled {run.settle_seconds:.1f}s after it stopped)" if run.settle_seconds is not None else ""),
        not held and len(run.settle) == len(TENANTS),
        "\n".join(f"{t}: still reserved {', '.join(v)}" for t, v in held.items())))

    # -- ledger.
    ledger_lines, ledger_bad = [], []
    cost_header_bad = []
    for t in TENANTS:
        exact = lb = ub = 0
        inexact = 0
        tokens = 0
        for r in (r for r in results if r.tenant == t):
            if r.status == 200 and r.complete:
                if not r.streamed:
                    header = r.headers.get("x-tollgate-cost-usd")
                    if header is None:
                        cost_header_bad.append(f"{t}: a JSON 200 without x-tollgate-cost-usd ({r.marker})")
                        continue
                    c = micros(header)
                    if not r.hit and r.model in PRICES and r.usage and c != cost_micros(r.model, *r.usage):
                        cost_header_bad.append(f"{t}: x-tollgate-cost-usd {header} but {r.model} usage {r.usage} "
                                               f"costs {usd(cost_micros(r.model, *r.usage))}")
                    exact += c
                else:
                    exact += 0 if r.hit else cost_micros(r.model, *r.usage)
                if not r.hit and r.usage:
                    tokens += sum(r.usage)
            elif r.status == 200 or (r.status >= 500 and not r.error_code) or r.status == 0:
                # Cut short, by the client or a fault, or Envoy's own 502: bounds.
                inexact += 1
                lb += lower_bound(r)
                ub += upper_bound(r)
            # A tollgate error answer (4xx, JSON 5xx) costs nothing.
        report = run.settle.get(t)
        if report is None:
            ledger_bad.append(f"{t}: no /v1/usage report")
            continue
        (day,) = [b for b in report["budgets"] if b["window"] == "day"]
        spent = micros(day["spent_usd"])
        if inexact == 0:
            ok = spent == exact
            tok_ok = day["spent_tokens"] == tokens
            verdict = "exact match" if ok and tok_ok else "MISMATCH"
            line = (f"{t:<12} ledger ${day['spent_usd']} ({day['spent_tokens']} tokens)   answers ${usd(exact)} "
                    f"({tokens} tokens)   {verdict}")
            if not ok:
                ledger_bad.append(f"{t}: ledger ${day['spent_usd']} != sum of its answers' costs ${usd(exact)}")
            if not tok_ok:
                ledger_bad.append(f"{t}: ledger {day['spent_tokens']} tokens != its answers' {tokens}")
        else:
            ok = exact + lb <= spent <= exact + ub
            line = (f"{t:<12} ledger ${day['spent_usd']}   answers ${usd(exact)} exact + {inexact} cut short "
                    f"in [${usd(lb)}, ${usd(ub)}]   {'within bounds' if ok else 'OUT OF BOUNDS'}")
            if not ok:
                ledger_bad.append(f"{t}: ledger ${day['spent_usd']} outside [${usd(exact + lb)}, ${usd(exact + ub)}] "
                                  f"(exact ${usd(exact)} + {inexact} requests cut short)")
        if t == "soak-budget":
            limit = micros(day["limit_usd"])
            line += f"   (limit ${day['limit_usd']})"
            if spent > limit:
                ledger_bad.append(f"{t}: spent ${day['spent_usd']} past its limit ${day['limit_usd']}")
        ledger_lines.append(line)
    run.ledger_lines = ledger_lines
    checks.append(Check(f"{name}: ledger = sum of answered costs, per tenant", not ledger_bad and not cost_header_bad,
                        "\n".join(ledger_bad + cost_header_bad[:8])))

    # -- the outcome ledger recorded each answered request (tenants with every answer whole).
    rec_bad = []
    for t in TENANTS:
        rs = [r for r in results if r.tenant == t]
        if any(not r.complete and r.status in (0, 200) for r in rs) or any(r.status >= 500 for r in rs):
            continue
        answered = sum(1 for r in rs if r.status == 200)
        report = run.settle.get(t)
        if report is None:
            continue
        deadline = time.monotonic() + 10
        recorded = sum(x["requests"] for x in report["resolution"]["tiers"])
        while recorded < answered and time.monotonic() < deadline:
            time.sleep(0.2)
            report = usage_report(run.url, KEYS[t])
            recorded = sum(x["requests"] for x in report["resolution"]["tiers"])
        if recorded != answered:
            rec_bad.append(f"{t}: the outcome ledger recorded {recorded} requests, {answered} were answered")
    checks.append(Check(f"{name}: outcome ledger recorded every answered request", not rec_bad, "\n".join(rec_bad)))

    # -- budget tenant.
    checks.append(Check(f"{name}: the budget tenant ran out and was refused ({len(refused)} × 429 budget_exceeded)",
                        bool(refused), "" if refused else f"{len(budget)} requests, none refused"))

    # -- cache.
    hits = [r for r in results if r.hit]
    bad_hits = [r for r in hits if not r.streamed and micros(r.headers.get("x-tollgate-cost-usd", "9.999999"))]
    checks.append(Check(f"{name}: cache hits served at no cost ({len(hits)} hits)", bool(hits) and not bad_hits,
                        "no cache hit" if not hits else f"{len(bad_hits)} hits with a cost"))

    # -- config changes.
    cfg_bad = list(run.flip_errors)
    served = [r for r in results if r.tenant == CONFIG_TENANT and r.status == 200 and r.model]
    for r in served:
        # Sound either way: a request that ended before a change began was
        # routed by the old config; one that started once the change was in
        # (plus the host's grace) by the new one. Anything overlapping a
        # change may be either (the client's clock is not the host's).
        applied = [(b, a, v) for b, a, v in run.flips if a + run.config_grace <= r.started]
        in_flux = [(b, a, v) for b, a, v in run.flips if b <= r.ended and r.started < a + run.config_grace]
        version = applied[-1][2] if applied else 0
        if in_flux:
            ok = r.model in {m.split("/")[1] for m in models_of_version(0) | models_of_version(1)}
        else:
            ok = r.model in {m.split("/")[1] for m in models_of_version(version)}
        if not ok:
            cfg_bad.append(f"started {r.started - run.load_started:.1f}s in, config version {version} "
                           f"applied, answered by {r.model}")
    if not run.flips and not run.flip_errors and config_every > 0:
        cfg_bad.append("no config change was made (run longer)")
    seen_versions = set()
    for b, a, v in run.flips:
        nxt = [x for x in run.flips if x[0] > b]
        until = nxt[0][0] if nxt else math.inf
        window = [r for r in served if a + run.config_grace <= r.started < until]
        if window:
            seen_versions.add(v)
    checks.append(Check(
        f"{name}: config changes applied while running ({len(run.flips)} changes, "
        f"{len(seen_versions)} observed by later answers)", not cfg_bad, "\n".join(cfg_bad[:12])))

    # -- upstream responses all ended.
    open_ = [rec for rec in up.records.values()
             if not rec["completed"] and not rec["client_aborted"] and not any(f.startswith("drop_after") for f in rec["faults"])]
    checks.append(Check(f"{name}: every upstream response ended ({len(up.records)} upstream requests"
                        + (f", {up.lost} not seen" if up.lost else "") + ")",
                        not open_, "\n".join(f"still open: {rec}" for rec in open_[:8])))

    # -- the mix happened.
    missing = [s.name for s in SCENARIOS if not any(r.scenario == s for r in results)]
    if not any(r.hung_up for r in results):
        missing.append("a client hanging up mid-stream")
    if not broken_injected and not injected5:
        missing.append("an injected fault reaching a client")
    checks.append(Check(f"{name}: the whole mix ran", not missing, "missing: " + ", ".join(missing)))

    # -- memory.
    samples = run.memory.samples
    start_mb, end_mb = samples[0][1], samples[-1][1]
    peak = max(m for _, m in samples)
    load = [s for s in samples if run.load_started <= s[0] <= run.load_ended] or samples
    second_half = [s for s in load if s[0] >= (run.load_started + run.load_ended) / 2]
    slope_all, slope_late = slope_mb_per_min(load), slope_mb_per_min(second_half)
    run.memory_line = (f"{run.process_name} RSS {start_mb:.1f} MB at start → {end_mb:.1f} MB at end (peak {peak:.1f}); "
                       f"slope {slope_all:+.1f} MB/min over the load, {slope_late:+.1f} MB/min over its second half")
    grew = end_mb - start_mb
    answered = max(1, len(results))
    if run.name == "worker":
        # workerd under `wrangler dev` grows with traffic whatever the Worker
        # does: a bare pass-through Worker (tests/passthrough) under the same
        # load grows ~0.25 MB per request (wrangler 4.86, local mode: the dev
        # inspector keeps every request), so an absolute bound says nothing.
        # What tollgate adds shows as growth per request past that baseline.
        per_request = grew / answered
        mem_ok = start_mb > 0 and per_request <= WORKERD_DEV_MB_PER_REQUEST * 2
        label = (f"{name}: memory bounded ({per_request:.3f} MB per request; a pass-through Worker under wrangler dev "
                 f"grows ~{WORKERD_DEV_MB_PER_REQUEST} MB per request)")
        limits = f"limit: {WORKERD_DEV_MB_PER_REQUEST * 2} MB per request"
    else:
        max_growth, max_slope = ENVOY_MEMORY_LIMITS[run.name]
        mem_ok = start_mb > 0 and grew <= max_growth and slope_late <= max_slope
        label = f"{name}: memory bounded (+{grew:.1f} MB; second-half slope {slope_late:+.1f} MB/min)"
        limits = f"limits: +{max_growth} MB, {max_slope} MB/min over the second half of the load"
    checks.append(Check(label, mem_ok, "" if mem_ok else limits
                        + ("" if start_mb > 0 else f"; no {run.process_name} process found")))

    # -- still up.
    procs = [run.host.dev.proc] if run.name == "worker" else [p.proc for p in run.host.procs]
    dead = [f"pid {p.pid} exited with {p.returncode}" for p in procs if p.poll() is not None]
    checks.append(Check(f"{name}: host processes still running at the end", not dead, "; ".join(dead)))

    # -- logs.
    bad_lines = []
    uncaught: Counter = Counter()
    for log in run.logs:
        for line in log.read_text(errors="replace").splitlines():
            if BAD_LOG_LINE.search(line):
                bad_lines.append(line.strip()[:240])
            elif "Uncaught" in line:
                uncaught[re.sub(r"\x1b\[[0-9;]*m", "", line).strip()[:120]] += 1
    for line, n in uncaught.most_common(3):
        run.notes.append(f"log: {n} × {line!r} (reported, not a failed check)")
    checks.append(Check(f"{name}: host log has no panic / hung / unreachable / RuntimeError line", not bad_lines,
                        f"{len(bad_lines)} lines, e.g.:\n" + "\n".join(bad_lines[:8]) if bad_lines else ""))
    return checks


# RSS growth over a run, and its slope over the load's second half (after
# warm-up), that Envoy may show: measured +8-12 MB and 0-2 MB/min (one
# Envoy), +23 MB (two) in 30-60 s runs.
ENVOY_MEMORY_LIMITS = {"envoy": (64.0, 30.0), "envoy-redis": (128.0, 60.0)}
# workerd's RSS growth per request under `wrangler dev` with a bare
# pass-through Worker (tests/passthrough), 16 clients, measured on the CI machine.
WORKERD_DEV_MB_PER_REQUEST = 0.25


def print_host(run: HostRun) -> None:
    results = run.results
    took = run.load_ended - run.load_started
    print(f"\n== {run.label}: {len(results)} requests in {took:.1f}s ({len(results) / max(took, 1e-9):.1f}/s)")
    outcomes = Counter(r.outcome() for r in results)
    print("   requests by outcome:")
    for o, n in sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"     {n:>6}  {o}")
    per = Counter(r.tenant for r in results)
    print("   per tenant: " + "  ".join(f"{t}={per[t]}" for t in TENANTS))
    print(f"   faults injected (rules): {dict(sorted(run.faults_added.items()))}   upstream requests: "
          f"{len(run.upstream.records)}")
    injected5, broken = run.attributed
    fives = [r for r in results if r.status >= 500]
    print(f"   5xx: {len(fives)}, of which {sum(injected5.values())} from injected faults:")
    for cause, n in sorted(injected5.items(), key=lambda kv: -kv[1]):
        print(f"     {n:>6}  {cause}")
    if broken:
        print("   answers cut by an injected drop_after: " + ", ".join(f"{o}={n}" for o, n in broken.items()))
    print(f"   config changes: {len(run.flips)}" + "".join(
        f"  [v{v} at {b - run.load_started:.0f}s, applied in {a - b:.1f}s]" for b, a, v in run.flips))
    hold = "none left" if run.settle_seconds is not None else "SOME LEFT"
    print(f"   holds: {hold}" + (f" ({run.settle_seconds:.1f}s after the load stopped)" if run.settle_seconds is not None else ""))
    print("   ledger (GET /v1/usage, day window) against the answers:")
    for line in run.ledger_lines:
        print(f"     {line}")
    print(f"   memory: {run.memory_line}")
    for note in run.notes[:8]:
        print(f"   note: {note}")


# ---------------------------------------------------------------- main


async def soak(runs: list[HostRun], args) -> None:
    await asyncio.gather(*(run_load(run, args.seconds, args.max_requests, args.concurrency, args.seed + i,
                                    args.config_every, args.skip) for i, run in enumerate(runs)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the load runs (default 60)")
    ap.add_argument("--minutes", type=float, help="the same in minutes")
    ap.add_argument("--host", choices=["worker", "envoy", "envoy-redis", "both", "all"], default="both",
                    help="both: the Worker and Envoy (node-local); all: also two Envoys sharing Redis")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent clients per host (default 16)")
    ap.add_argument("--max-requests", type=int, default=200_000, help="at most this many requests per host")
    ap.add_argument("--config-every", type=float, default=12.0, help="seconds between config changes (default 12; 0: none)")
    ap.add_argument("--settle-timeout", type=float, default=10.0,
                    help="seconds after the load within which every hold must be settled (default 10)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip", metavar="REGEX",
                    help="leave out the scenarios whose name matches (to narrow a failure down; the mix check then fails)")
    ap.add_argument("--mock-bin", type=Path, default=ROOT / "target" / "debug" / "tollgate-mock")
    ap.add_argument("--keep", action="store_true", help="keep logs and state")
    args = ap.parse_args()
    if args.minutes is not None:
        args.seconds = args.minutes * 60

    names = {"both": ["worker", "envoy"], "all": ["worker", "envoy", "envoy-redis"]}.get(args.host, [args.host])
    work = hosts.fresh_dir("tollgate-soak-")
    runs: list[HostRun] = []
    mocks: list[hosts.Mock] = []
    checks: list[Check] = []
    t0 = time.monotonic()
    finished = threading.Event()
    try:
        started: dict[str, HostRun | BaseException] = {}
        ready = {n: threading.Event() for n in names}

        def start(name: str) -> None:
            # The hosts start side by side, each from its own thread, which then
            # stays alive until the end: hosts.py's children die with the
            # thread that started them (PR_SET_PDEATHSIG).
            try:
                mock = hosts.Mock.start(args.mock_bin, work / f"mock-{name}.log")
                mocks.append(mock)
                if name == "worker":
                    started[name] = start_worker(mock, work)
                else:
                    started[name] = start_envoy(mock, work, redis=name == "envoy-redis")
            except BaseException as e:  # noqa: BLE001 - reported below
                started[name] = e
            ready[name].set()
            finished.wait()

        for n in names:
            threading.Thread(target=start, args=(n,), daemon=True).start()
        for n in names:
            ready[n].wait()
        for n in names:
            if isinstance(started[n], BaseException):
                raise RuntimeError(f"{n} did not start: {started[n]}")
            runs.append(started[n])
        print(f"   hosts ready in {time.monotonic() - t0:.1f}s: "
              + ", ".join(f"{r.name} {r.url} (mock {r.mock.url})" for r in runs))
        print(f"   load: {args.seconds:.0f}s, {args.concurrency} clients per host, at most {args.max_requests} "
              f"requests per host; config change every {args.config_every:.0f}s")
        asyncio.run(soak(runs, args))
        for run in runs:
            settle(run, args.settle_timeout)
            time.sleep(0.5)
            run.upstream.poll()
            run.memory.stop()
            checks += check_host(run, args.config_every)
            print_host(run)
    except (hosts.Missing, RuntimeError, httpx.HTTPError, OSError) as e:
        import traceback

        where = "".join(line for line in traceback.format_exc().splitlines(True) if "soak.py" in line or "hosts.py" in line)
        checks.append(Check("soak ran", False, f"{type(e).__name__}: {e}\n{where}"))
    finally:
        for run in runs:
            run.host.stop()
        for m in mocks:
            m.stop()
        finished.set()
    failed = [c for c in checks if not c.ok]
    print("\nchecks:")
    for c in checks:
        print(f"   {'ok  ' if c.ok else 'FAIL'}  {c.name}")
        if not c.ok and c.detail:
            for line in c.detail.splitlines():
                print(f"           {line}")
    if args.keep or failed:
        print(f"\n   logs and state kept in {work}")
    else:
        hosts.remove_dir(work)
    print(f"soak: {len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
