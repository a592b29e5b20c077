"""The tenant's Durable Object keeps its whole ledger across a restart of
the runtime: `wrangler dev` stopped and started again on the same local
state reads back the budget, the per-tier totals, the ring of recent
requests and the hourly and daily spend buckets, and `/v1/usage` says
exactly what it said before."""

from __future__ import annotations

import uuid

import httpx

import hosts
import tenants as registry
from calls import micros, settled_and_returned
from prereq import started

KEY = registry.ROLLUP_KEY


def usage_without_clock(report: dict) -> dict:
    """The report less what moves with the clock alone."""
    return {k: v for k, v in report.items() if k not in ("as_of",)}


def test_a_restarted_worker_reads_back_the_whole_ledger_and_reports_the_same_usage(clean_mock, run_dir):
    work = run_dir / f"worker-restart-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    tenant = registry.ROLLUP
    worker = started(lambda: hosts.start_worker(clean_mock, work, tenants=[(tenant, [KEY])]))
    try:
        marker = uuid.uuid4().hex[:8]
        cost = 0
        for i in range(6):
            r = httpx.post(
                f"{worker.url}/v1/chat/completions",
                json={"model": "tollgate/auto", "messages": [{"role": "user", "content": f"{marker} {i}: hello"}],
                      "max_tokens": 20, "user": f"u{i % 3}-{marker}"},
                headers={"authorization": f"Bearer {KEY}", "x-tollgate-tags": f"t{i % 2}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            cost += micros(r.headers["x-tollgate-cost-usd"])
        before = {q: settled_and_returned(worker.url, KEY, query=q) for q in ("?group_by=user", "?group_by=tag&bucket=day")}
        assert sum(micros(g["cost_usd"]) for g in before["?group_by=user"]["groups"]) == cost
    finally:
        worker.stop()

    config = hosts.prebuilt_config(hosts.WORKER_CONFIG, work / "config-again")
    again = started(lambda: hosts.WranglerDev.start(config, worker.state, work, name="worker-again",
                                                    variables=hosts.worker_vars(clean_mock)))
    try:
        for query, was in before.items():
            now = settled_and_returned(again.url, KEY, query=query)
            assert usage_without_clock(now) == usage_without_clock(was), query
    finally:
        again.stop()
