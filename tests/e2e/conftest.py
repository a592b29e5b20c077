"""Session fixtures for the end-to-end tests: the mock upstream, the
tollgate Worker under `wrangler dev --local`, and the Envoy filter in real
Envoy (node-local state, and two Envoys sharing Redis through webdis).

Tests that hold for both hosts take `router` (parametrised over "worker"
and "envoy": `.url`, `.name`, `.host`); Worker-only ones take `worker`,
Envoy-only ones `envoy` or `redis_envoys`.

scripts/test builds what these start (`cargo build -p tollgate-mock`,
scripts/build-worker, scripts/build-envoy, `npm ci`, the .venv with Envoy,
apt's redis-server and webdis); a missing piece fails the session with the
command to run, it never skips.

Environment:
- TOLLGATE_MOCK_BIN: the mock binary (default target/debug/tollgate-mock)
- TOLLGATE_E2E_TMP: where per-run state and logs go (default: the system tmp)
- TOLLGATE_E2E_KEEP=1: keep that directory (logs, KV/DO state) after the run
- TOLLGATE_ALLOW_STALE_BUILD=1: accept a build/ (or filter .wasm) older than the Rust sources
- TOLLGATE_ENVOY_BIN: the Envoy binary (default .venv/bin/envoy)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import devproxy  # noqa: E402
import hosts  # noqa: E402
import tenants  # noqa: E402
from hosts import HOSTS, ACME_KEY, GLOBEX_KEY, ROOT, Envoy, Missing, Mock, Redis, RedisEnvoys, Router, Webdis, Worker  # noqa: E402, F401

from prereq import running, started  # noqa: E402

# wrangler dev's proxy loses the odd POST to its own keep-alive race; the
# module says why resending exactly those is sound.
devproxy.install()


@pytest.fixture(scope="session")
def run_dir() -> Iterator[Path]:
    """One directory per test session for logs and local state."""
    path = hosts.fresh_dir("tollgate-e2e-")
    yield path
    if os.environ.get("TOLLGATE_E2E_KEEP") == "1":
        print(f"\nend-to-end logs and state kept in {path}")
    else:
        hosts.remove_dir(path)


@pytest.fixture(scope="session")
def mock(run_dir: Path) -> Iterator[Mock]:
    binary = Path(os.environ.get("TOLLGATE_MOCK_BIN") or ROOT / "target" / "debug" / "tollgate-mock")
    with running(lambda: Mock.start(binary, run_dir / "mock.log")) as m:
        yield m


@pytest.fixture
def clean_mock(mock: Mock) -> Mock:
    """The session mock with no fault rules and an empty request log."""
    mock.reset()
    return mock


@pytest.fixture(scope="session")
def worker(mock: Mock, run_dir: Path) -> Iterator[Worker]:
    """The Worker (build/, root wrangler.toml) under `wrangler dev --local`,
    every provider pointed at the mock, CONFIG_CACHE_SECONDS=0, fresh local
    KV/DO state seeded with every tenant and key in tenants.py (acme,
    examples/tenant.json with ACME_KEY, first, through `wrangler kv key put`;
    the rest in one bulk put).

    `worker.seed_tenant(config, keys)` adds tenants while it runs: the next
    request sees them. It costs seconds; add tenants to tenants.py instead."""
    with running(lambda: hosts.start_worker(mock, run_dir / "worker", tenants=tenants.TENANTS,
                                            extra_entries=tenants.EXTRA_ENTRIES)) as w:
        yield w


@pytest.fixture(scope="session")
def seed_tenant(worker: Worker):
    """`seed_tenant(tenant_config: dict, api_keys: list[str])` writes
    `tenant:<id>` and `apikey:<sha256hex(key)>` into the running Worker's KV."""
    return worker.seed_tenant


# ---------------------------------------------------------------- Envoy


@pytest.fixture(scope="session")
def envoy(mock: Mock, run_dir: Path) -> Iterator[Envoy]:
    """Envoy (--concurrency 2) with the filter, node-local state (budgets and
    cache in proxy-wasm shared data), every tenant and key of tenants.py in
    its plugin config, every provider pointed at the mock."""
    e = started(
        lambda: hosts.start_envoy(
            mock, run_dir / "envoy", name="envoy", tenants=tenants.TENANTS, extra_entries=tenants.EXTRA_ENTRIES
        )
    )
    try:
        yield e
    finally:
        e.stop()


REDIS_STATE = {
    "budgets": "redis",
    "cache": "redis",
    "redis": {"cluster": "webdis", "authority": "webdis", "timeout_ms": 1000, "key_prefix": "tollgate:"},
}


@pytest.fixture(scope="session")
def redis_envoys(mock: Mock, run_dir: Path) -> Iterator[RedisEnvoys]:
    """Redis, webdis in front of it, and two Envoys (A and B) with
    `state.budgets` and `state.cache` "redis" sharing it: what a mesh with
    many Envoys runs. Same tenants as `envoy`."""
    work = run_dir / "redis-envoys"
    redis = started(lambda: Redis.start(work))
    stack: list = [redis]
    try:
        webdis = started(lambda: Webdis.start(redis, work))
        stack.append(webdis)
        pair = []
        for name in ("envoy-a", "envoy-b"):
            e = started(
                lambda name=name: hosts.start_envoy(
                    mock, work, name=name, tenants=tenants.TENANTS, extra_entries=tenants.EXTRA_ENTRIES,
                    state=REDIS_STATE, webdis=webdis,
                )
            )
            stack.append(e)
            pair.append(e)
        yield RedisEnvoys(redis=redis, webdis=webdis, envoys=(pair[0], pair[1]))
    finally:
        for proc in reversed(stack):
            proc.stop()


# ---------------------------------------------------------------- both hosts




@pytest.fixture(scope="session", params=HOSTS)
def router(request) -> Router:
    """The Worker, then the Envoy filter: for tests whose promise holds on
    both hosts. Where a behaviour legitimately differs, the test branches on
    `router.name` and names the envoy/README.md section that says so."""
    return Router(name=request.param, host=request.getfixturevalue(request.param))


def _log_sections(item) -> list[tuple[str, str]]:
    funcargs = getattr(item, "funcargs", {}) or {}
    sections = []
    seen = set()
    for value in funcargs.values():
        if isinstance(value, Router):
            value = value.host
        hosts_here = list(value.envoys) if isinstance(value, RedisEnvoys) else [value]
        for h in hosts_here:
            if id(h) in seen:
                continue
            seen.add(id(h))
            if isinstance(h, Worker):
                sections.append(("wrangler dev log (tail)", hosts.log_tail(h.dev.log, 60)))
            elif isinstance(h, Envoy):
                sections.append((f"{h.name} log (tail)", hosts.log_tail(h.log, 60)))
                sections.append((f"{h.name} access log (tail)", hosts.log_tail(h.access_log, 20)))
    return sections


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the tail of the host's log (wrangler dev's, or
    Envoy's log and access log)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for name, text in _log_sections(item):
            report.sections.append((name, text))


def pytest_terminal_summary(terminalreporter):
    """Say how often wrangler dev's proxy dropped a request that was resent,
    so a rise shows in CI (pytest's own count stays the last line)."""
    said = devproxy.summary()
    if said:
        terminalreporter.write_line(said)
