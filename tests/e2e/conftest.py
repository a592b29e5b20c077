"""Session fixtures for the end-to-end tests: the mock upstream and the
tollgate Worker under `wrangler dev --local`.

scripts/test builds what these start (`cargo build -p tollgate-mock`,
scripts/build-worker, `npm ci`); a missing piece fails the session with the
command to run, it never skips.

Environment:
- TOLLGATE_MOCK_BIN: the mock binary (default target/debug/tollgate-mock)
- TOLLGATE_E2E_TMP: where per-run state and logs go (default: the system tmp)
- TOLLGATE_E2E_KEEP=1: keep that directory (logs, KV/DO state) after the run
- TOLLGATE_ALLOW_STALE_BUILD=1: accept a build/ older than the Rust sources
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hosts  # noqa: E402
import tenants  # noqa: E402
from hosts import ACME_KEY, GLOBEX_KEY, ROOT, Missing, Mock, Worker  # noqa: E402, F401


def _fail_missing(problem: str) -> None:
    pytest.fail(f"end-to-end prerequisite missing: {problem}", pytrace=False)


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
    problem = None
    try:
        m = Mock.start(binary, run_dir / "mock.log")
    except Missing as e:
        problem = str(e)
    if problem:
        _fail_missing(problem)
    try:
        yield m
    finally:
        m.stop()


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
    problem = None
    try:
        w = hosts.start_worker(mock, run_dir / "worker", tenants=tenants.TENANTS, extra_entries=tenants.EXTRA_ENTRIES)
    except Missing as e:
        problem = str(e)
    if problem:
        _fail_missing(problem)
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="session")
def seed_tenant(worker: Worker):
    """`seed_tenant(tenant_config: dict, api_keys: list[str])` writes
    `tenant:<id>` and `apikey:<sha256hex(key)>` into the running Worker's KV."""
    return worker.seed_tenant


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the tail of the Worker's wrangler log."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        w = item.funcargs.get("worker") if hasattr(item, "funcargs") else None
        if isinstance(w, Worker):
            report.sections.append(("wrangler dev log (tail)", hosts.log_tail(w.dev.log, 60)))
