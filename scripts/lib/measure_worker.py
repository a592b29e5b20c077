"""Figures for the Cloudflare Worker host, printed, never asserted (timings on
a shared machine are noise-prone); the one check is the bundle size limit.

1. Bundle size: `wrangler deploy --dry-run --outdir <tmp>` and its
   "Total Upload: X KiB / gzip: Y KiB" line. The gzip figure must stay under
   the free plan's 3 MiB (wrangler's own MAX_GZIP_SIZE_BYTES).
2. Cold start: `wrangler dev` start → first routed 200, and that first
   request's own latency on a fresh isolate (client side, and as wrangler
   logs it). Same for the pass-through Worker, for reference.
3. Added latency: p50/p99 of a routed request (tollgate/auto, cache off)
   minus the same for the pass-through Worker (tests/passthrough) forwarding
   to the same mock in the same run; sequential (interleaved) and with N
   concurrent clients. The routed tenant is measured three times: leased
   (the default), leased with every request also charged at its API key's
   own limits and an end user's (`budgets.users`), and
   `budgets.consistency: per_request`.
4. Durable Object calls per routed request, counted by the Worker itself
   (`GET /healthz` reports its isolate's batches to the ledger and the
   requests it closed) over each concurrent run.

Run through scripts/measure-worker, which builds the Worker and the mock.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))

import hosts  # noqa: E402

MAX_GZIP_BYTES = 3 * 1024 * 1024
BENCH_KEY = "tg-bench-key"
BENCH_PER_REQUEST_KEY = "tg-bench-per-request-key"
BENCH_SCOPED_KEY = "tg-bench-scoped-key"
# No run can exhaust these either.
ROOMY_TOKENS = 10_000_000_000
# The budget-lease issue's goals.
GOAL_ADDED_P50_MS = 2.0
GOAL_THROUGHPUT = 0.85
GOAL_DO_CALLS = 0.2
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def bench_tenant(tenant_id: str = "bench", consistency: str = "leased") -> dict:
    """acme's routing with the cache off (every request goes upstream) and
    budgets no run can exhaust."""
    cfg = hosts.example("tenant.json")
    cfg["tenant_id"] = tenant_id
    cfg["cache"] = {"enabled": False}
    cfg["budgets"] = {"limits": [{"name": "daily", "window": "day", "usd": 1000000.0}], "consistency": consistency}
    return cfg


def scoped_bench_tenant() -> dict:
    """The bench tenant whose end users have limits of their own too."""
    cfg = bench_tenant("bench-scoped")
    cfg["budgets"]["users"] = {"limits": [{"name": "user-daily", "window": "day", "tokens": ROOMY_TOKENS}]}
    return cfg


def scoped_key() -> dict:
    """An API key whose record has limits of its own."""
    limits = [{"name": "key-daily", "window": "day", "tokens": ROOMY_TOKENS}]
    return {"key": BENCH_SCOPED_KEY, "label": "bench-app", "limits": limits}


def ledger_calls(url: str) -> tuple[int, int]:
    """(Durable Object batches, requests closed) of the isolate behind `url`."""
    instance = httpx.get(url + "/healthz", timeout=10).json().get("instance", {})
    return instance.get("ledger_calls_waited", 0) + instance.get("ledger_calls_background", 0), instance.get(
        "requests_closed", 0)


def routed_body(i: int) -> dict:
    # A different prompt each time: no two requests are alike.
    return {
        "model": "tollgate/auto",
        "messages": [{"role": "user", "content": f"Say hello to request number {i}, briefly."}],
        "max_tokens": 32,
    }


def scoped_body(i: int) -> dict:
    # One of a few end users, as an app's traffic would name them.
    return {**routed_body(i), "user": f"bench-user-{i % 4}"}


def passthrough_body(i: int) -> dict:
    return {**routed_body(i), "model": "gpt-4o-mini"}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(ms: list[float]) -> str:
    return f"p50 {pct(ms, 50):7.2f} ms  p99 {pct(ms, 99):7.2f} ms  mean {statistics.fmean(ms):7.2f} ms  (n={len(ms)})"


# ------------------------------------------------------------------ size


def bundle_size(work: Path, config: Path) -> tuple[float, float]:
    out = work / "dry-run"
    argv = [str(hosts.require_wrangler()), "deploy", "--dry-run", "--outdir", str(out), "--config", str(config)]
    done = subprocess.run(
        argv, cwd=hosts.ROOT, env={**os.environ, **hosts.wrangler_env(work)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
    )
    text = ANSI.sub("", done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"wrangler deploy --dry-run failed ({done.returncode}):\n{text}")
    m = re.search(r"Total Upload:\s*([\d.]+)\s*KiB\s*/\s*gzip:\s*([\d.]+)\s*KiB", text)
    if not m:
        raise SystemExit(f"no 'Total Upload' line in wrangler's output:\n{text}")
    return float(m.group(1)), float(m.group(2))


# ------------------------------------------------------------------ cold start


def cold_start(dev_start, url_path: str, headers: dict, body: dict, log_line: re.Pattern) -> dict:
    """Start wrangler dev (without its readiness probe), wait for its
    "Ready on" line, then send the first request the isolate sees."""
    dev: hosts.WranglerDev = dev_start()
    try:
        deadline = time.monotonic() + 90
        while "Ready on http" not in dev.log_text():
            if time.monotonic() > deadline or dev.proc.poll() is not None:
                raise SystemExit(f"wrangler dev never printed 'Ready on':\n{hosts.log_tail(dev.log)}")
            time.sleep(0.01)
        ready = time.monotonic() - dev.started
        with httpx.Client(base_url=dev.url, timeout=60) as client:
            t0 = time.monotonic()
            r = client.post(url_path, headers=headers, json=body)
            first_ms = (time.monotonic() - t0) * 1000
            if r.status_code != 200:
                raise SystemExit(f"first request: {r.status_code} {r.text[:500]}\n{hosts.log_tail(dev.log)}")
            first_200 = time.monotonic() - dev.started
        time.sleep(0.3)  # let wrangler write its request line
        logged = log_line.search(ANSI.sub("", dev.log_text()))
        return {
            "ready_s": ready,
            "first_200_s": first_200,
            "first_request_ms": first_ms,
            "first_request_logged_ms": float(logged.group(1)) if logged else None,
        }
    finally:
        dev.stop()


# ------------------------------------------------------------------ load


def one(client: httpx.Client, path: str, headers: dict, body: dict) -> float:
    t0 = time.perf_counter()
    r = client.post(path, headers=headers, json=body)
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise SystemExit(f"{client.base_url}{path}: {r.status_code} {r.text[:300]}")
    return ms


def sequential(targets: list[tuple[str, str, dict, callable]], n: int, warmup: int) -> list[list[float]]:
    """Interleaved: request i goes to every target in turn, so drift on the
    machine hits all of them alike."""
    clients = [httpx.Client(base_url=url, timeout=60) for url, *_ in targets]
    try:
        results: list[list[float]] = [[] for _ in targets]
        for i in range(warmup + n):
            for k, (client, (_, path, headers, make)) in enumerate(zip(clients, targets)):
                ms = one(client, path, headers, make(i))
                if i >= warmup:
                    results[k].append(ms)
        return results
    finally:
        for c in clients:
            c.close()


def concurrent(url: str, path: str, headers: dict, make, clients: int, per_client: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(c: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                one(client, path, headers, make(10_000_000 + c))  # connect + warm, not counted
                mine = [one(client, path, headers, make(c * per_client + i + 20_000_000)) for i in range(per_client)]
            with lock:
                latencies.extend(mine)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"concurrent load against {url}: {errors[0]!r}")
    return latencies, len(latencies) / wall


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per target (default 300)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--per-client", type=int, default=40, help="requests per concurrent client (default 40)")
    ap.add_argument("--mock-bin", default=str(hosts.ROOT / "target" / "debug" / "tollgate-mock"))
    ap.add_argument("--ledger-delay-ms", type=int, default=0,
                    help="add this delay to every Durable Object call (a writer far away; default 0)")
    ap.add_argument("--passthrough-only", action="store_true",
                    help="measure only the pass-through Worker (no tollgate build needed)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    args = ap.parse_args()

    size_ok = True
    work = hosts.fresh_dir("tollgate-measure-")
    mock = hosts.Mock.start(Path(args.mock_bin), work / "mock.log")
    print(f"run directory: {work}")
    if args.ledger_delay_ms:
        print(f"every Durable Object call waits {args.ledger_delay_ms} ms first (LEDGER_DELAY_MS): a writer far away")
    try:
        worker_config = hosts.prebuilt_config(hosts.WORKER_CONFIG, work / "worker-config")
        worker_state = work / "worker-state"
        pass_state = work / "passthrough-state"
        pass_state.mkdir()
        pass_vars = {"UPSTREAM_BASE_URL": f"{mock.url}/openai"}

        def start_pass(ready_path: str | None = "/healthz", name: str = "passthrough") -> hosts.WranglerDev:
            return hosts.WranglerDev.start(hosts.PASSTHROUGH_CONFIG, pass_state, work, name=name,
                                           variables=pass_vars, ready_path=ready_path)

        def start_worker(ready_path: str | None = "/healthz", name: str = "worker") -> hosts.WranglerDev:
            return hosts.WranglerDev.start(worker_config, worker_state, work, name=name,
                                           # The production default: configs come from isolate memory, not KV, on most requests.
                                           variables=hosts.worker_vars(mock, CONFIG_CACHE_SECONDS="30",
                                                                       LEDGER_DELAY_MS=str(args.ledger_delay_ms)),
                                           ready_path=ready_path)

        # A start that returns as soon as the process runs: cold_start waits itself.
        def no_wait(start):
            return lambda: start(ready_path=None, name=f"{start.__name__}-cold")

        routed = ("/v1/chat/completions", {"authorization": f"Bearer {BENCH_KEY}"}, routed_body)
        routed_pr = ("/v1/chat/completions", {"authorization": f"Bearer {BENCH_PER_REQUEST_KEY}"}, routed_body)
        routed_scoped = ("/v1/chat/completions", {"authorization": f"Bearer {BENCH_SCOPED_KEY}"}, scoped_body)
        passed = ("/v1/chat/completions", {"authorization": "Bearer sk-client"}, passthrough_body)
        logged = re.compile(r"POST /v1/chat/completions 200 OK \((\d+(?:\.\d+)?)ms\)")

        if not args.passthrough_only:
            hosts.require_worker_build()
            print("\n== bundle size (wrangler deploy --dry-run)")
            total_kib, gzip_kib = bundle_size(work, worker_config)
            print(f"   total {total_kib:.2f} KiB, gzip {gzip_kib:.2f} KiB ({gzip_kib / 1024:.2f} MiB; limit 3 MiB)")
            if gzip_kib * 1024 >= MAX_GZIP_BYTES:
                size_ok = False
                print("   FAIL: the gzipped bundle is over the free plan's 3 MiB (the other figures follow)")
            worker_state.mkdir()
            kv = hosts.Kv(config=worker_config, persist_to=worker_state, log_dir=work)
            hosts.seed_tenant(kv, bench_tenant(), [BENCH_KEY])
            hosts.seed_tenant(kv, bench_tenant("bench-per-request", "per_request"), [BENCH_PER_REQUEST_KEY])
            hosts.seed_tenant(kv, scoped_bench_tenant(), [scoped_key()])

        print("\n== cold start (wrangler dev start -> first 200 on a fresh isolate)")
        rows = [("pass-through", no_wait(start_pass), passed)]
        if not args.passthrough_only:
            rows.append(("tollgate (routed)", no_wait(start_worker), routed))
        for name, start, (path, headers, make) in rows:
            c = cold_start(start, path, headers, make(0), logged)
            logged_ms = f"{c['first_request_logged_ms']:.0f} ms" if c["first_request_logged_ms"] is not None else "n/a"
            print(f"   {name:18} 'Ready on' after {c['ready_s']:.2f} s, first 200 after {c['first_200_s']:.2f} s; "
                  f"first request {c['first_request_ms']:.0f} ms (wrangler log: {logged_ms})")

        print("\n== latency (warm isolates, same mock, same run)")
        devs = [("pass-through", start_pass(), passed)]
        try:
            if not args.passthrough_only:
                worker_dev = start_worker()
                devs.append(("tollgate (leased)", worker_dev, routed))
                devs.append(("tollgate (key+user)", worker_dev, routed_scoped))
                devs.append(("tollgate (per_req.)", worker_dev, routed_pr))
            targets = [(d.url, path, headers, make) for _, d, (path, headers, make) in devs]
            seq = sequential(targets, args.requests, args.warmup)
            print(f"   sequential, interleaved, {args.requests} each after {args.warmup} warm-up:")
            for (name, *_), ms in zip(devs, seq):
                print(f"     {name:19} {summary(ms)}")
            for (name, *_), ms in list(zip(devs, seq))[1:]:
                added = pct(ms, 50) - pct(seq[0], 50)
                print(f"     added, {name:12} p50 {added:+7.2f} ms  p99 {pct(ms, 99) - pct(seq[0], 99):+7.2f} ms"
                      f"  (goal p50 <= {GOAL_ADDED_P50_MS:g} ms: {'pass' if added <= GOAL_ADDED_P50_MS else 'MISS'})")
            print(f"   {args.concurrency} concurrent clients x {args.per_client} requests, one tenant:")
            conc = []
            rates = []
            for name, d, (path, headers, make) in devs:
                calls0, closed0 = ledger_calls(d.url) if name != "pass-through" else (0, 0)
                ms, rps = concurrent(d.url, path, headers, make, args.concurrency, args.per_client)
                conc.append(ms)
                rates.append(rps)
                line = f"     {name:19} {summary(ms)}  {rps:6.0f} req/s"
                if name != "pass-through":
                    # The flusher's last batch may land after the run: wait for it.
                    time.sleep(1.5)
                    calls1, closed1 = ledger_calls(d.url)
                    per = (calls1 - calls0) / max(1, closed1 - closed0)
                    line += (f"  ({rps / rates[0]:.0%} of pass-through, goal >= {GOAL_THROUGHPUT:.0%}; "
                             f"Durable Object calls {per:.3f} per request, goal <= {GOAL_DO_CALLS:g})")
                print(line)
            for (name, *_), ms in list(zip(devs, conc))[1:]:
                print(f"     added, {name:12} p50 {pct(ms, 50) - pct(conc[0], 50):+7.2f} ms  "
                      f"p99 {pct(ms, 99) - pct(conc[0], 99):+7.2f} ms")
        finally:
            for d in {id(d): d for _, d, _ in devs}.values():
                d.stop()
        upstream = mock.requests()
        print(f"\n   mock saw {len(upstream)} requests (its log keeps the most recent ones)")
        if not size_ok:
            print("\nFAIL: bundle over 3 MiB gzipped (above)")
        return 0 if size_ok else 1
    finally:
        mock.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            hosts.remove_dir(work)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except hosts.Missing as e:
        sys.exit(f"error: {e}")
