"""Figures for the Envoy host, printed, never asserted: timings and RSS on a
shared machine are noise-prone, so each goal is printed as pass/miss next to
its figure and a miss does not fail the script.

Two Envoys with the same bootstrap (hosts.envoy_bootstrap: one route and
cluster per provider, all the mock) differ only in the tollgate HTTP filter:
"direct" has the router alone, and its clients name the provider themselves
(`x-tollgate-provider: openai`, the provider path and key, the model the
filter picked); "filter" gets `model: tollgate/auto` with a tollgate key.
Both forward to one mock upstream, started once. A third Envoy runs the
direct requests through a filter that only buffers both bodies and copies
them into its VM and out (crates/tollgate-envoy/examples/buffering_floor.rs):
the floor under any buffering wasm filter, so the breakdown can tell what
being such a filter costs from what tollgate's own work costs.

1. Added latency: wrk against both Envoys in alternating runs (direct then
   filter, then filter then direct, ...) at three load levels: 1 connection;
   N connections as fast as each Envoy answers (throughput, filter/direct);
   and N connections paced to the same offered rate for both (by default
   half the filter's saturated throughput), where the added latency is the
   filter's time per request at a working load rather than a saturated
   queue behind it. The body is a
   4 KB chat completion, non-streamed, temperature unset (so the cache is
   bypassed: the example tenant caches only temperature 0) and different on
   every request (scripts/lib/measure_envoy.lua). Per run: p50, p99, req/s
   and Envoy's CPU time per request (/proc/<pid>/stat). Figures are medians
   over the runs; added = filter - direct. The filter's own counters
   (requests, cache hits, fallbacks, errors) are printed after the runs.
2. Memory per wasm VM: RSS of a fresh Envoy at --concurrency 1, 2, 4 and 8,
   with and without the filter, after a warm-up that reaches every worker
   (a VM per worker thread plus the main thread's). Printed as the slope of
   (filter - direct) against the VM count and as (filter - direct) / VMs.
3. Cold first request: on each fresh Envoy of step 2, new connections one
   at a time until every worker has served one (the admin stats tell which
   worker took it), timing each worker's first request; then a few more for
   the warm figure on new connections.

Run through scripts/measure-envoy, which builds the filter and the mock.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))

import hosts  # noqa: E402

BENCH_KEY = "tg-bench-key"
# The same tenant reserving per request (`budgets.consistency: per_request`)
# and without budgets: the filter's state cost is measured by difference.
BENCH_PER_REQUEST_KEY = "tg-bench-per-request-key"
BENCH_UNMETERED_KEY = "tg-bench-unmetered-key"
LUA = Path(__file__).resolve().with_name("measure_envoy.lua")
BODY_BYTES = 4096

# The goals (the budget-lease issue's for latency, throughput and CPU).
GOAL_P50_MS = 0.3
GOAL_P99_MS = 0.6
GOAL_THROUGHPUT = 0.40
GOAL_CPU_US = 200.0
GOAL_VM_MIB = 16.0

CHAT_PATH = "/v1/chat/completions"
DIRECT_PROVIDER = "openai"
DIRECT_PATH = f"/{DIRECT_PROVIDER}/v1/chat/completions"

NOTES = [
    "The migration of the billing service to the new queue finished on Tuesday; two consumers still read "
    "from the old topic and will be switched after the next release.",
    "Latency of the search endpoint went up by about ten percent after the index was rebuilt, and the team "
    "agreed to profile the tokenizer before touching the cache settings.",
    "Support asked for a way to export invoices as CSV; product wants the same export for usage reports, "
    "so the two requests are merged into one ticket for the next sprint.",
    "The on-call rotation changes in December: each engineer covers one week, handovers happen on Monday "
    "mornings, and the runbook gets a section on restoring the metrics database.",
    "Security review found that two internal tools still accept long-lived tokens; both will move to the "
    "single sign-on proxy, and the old tokens expire at the end of the month.",
    "The design for tenant-level rate limits is approved with one change: limits are counted per minute "
    "and per day, and a tenant over its limit gets a clear error with a retry hint.",
    "Nobody owns the flaky integration test for the payment webhook yet; it fails about once a week on the "
    "shared runners and passes on retry, which hides real failures.",
    "Documentation for the public API is out of date in three places: pagination, error codes and the "
    "webhook signature header, which changed its name in the last release.",
]


def bench_tenant(tenant_id: str = "bench", consistency: str | None = None, metered: bool = True) -> dict:
    """The example tenant (routing, cache settings, three budget windows) with
    limits no run can exhaust; `consistency` sets `budgets.consistency`,
    `metered=False` drops the budgets."""
    cfg = hosts.example("tenant.json")
    cfg["tenant_id"] = tenant_id
    for limit in cfg["budgets"]["limits"]:
        if "tokens" in limit:
            limit["tokens"] = 10**15
        if "usd" in limit:
            limit["usd"] = 10.0**9
    if consistency:
        cfg["budgets"]["consistency"] = consistency
    if not metered:
        cfg.pop("budgets")
    return cfg


def chat_body(model: str, size: int = BODY_BYTES) -> str:
    """A chat completion of about `size` bytes, with `@@ID@@` where the
    per-request id goes; temperature unset (so not cacheable)."""
    system = ("You are a careful assistant for an engineering team. Answer in plain prose, say which note "
              "you rely on, and say so when the notes do not cover the question.")
    head = "Request @@ID@@. Here are this week's meeting notes; summarise the decisions and list the open questions.\n\n"

    def render(text: str) -> str:
        return json.dumps({
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": head + text}],
            "max_tokens": 64,
        })

    text, i = "", 0
    while len(render(text)) < size:
        text += NOTES[i % len(NOTES)] + ("\n" if i % 2 else " ")
        i += 1
    while len(render(text)) > size:
        text = text[:-1]
    return render(text)


class DelayProxy:
    """A TCP proxy that holds every chunk from the client for `delay_ms`
    before passing it on: webdis as if Redis were far away (a round trip of
    about `delay_ms` per command). Runs in a thread of this script."""

    def __init__(self, target: tuple[str, int], delay_ms: float):
        import asyncio
        import threading

        self.target, self.delay = target, delay_ms / 1000
        self.loop = asyncio.new_event_loop()
        self.port = hosts.free_port()
        ready = threading.Event()

        async def pipe(reader, writer, delay: float) -> None:
            try:
                while data := await reader.read(65536):
                    if delay:
                        await asyncio.sleep(delay)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def handle(reader, writer) -> None:
            try:
                up_r, up_w = await asyncio.open_connection(*self.target)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, up_w, self.delay), pipe(up_r, writer, 0))

        async def serve() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", self.port)
            ready.set()
            async with server:
                await server.serve_forever()

        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(serve()), daemon=True)
        self.thread.start()
        ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def verdict(ok: bool) -> str:
    return "pass" if ok else "miss"


# ------------------------------------------------------------------ Envoy


def start_envoy(bootstrap: dict, work: Path, name: str, concurrency: int, timeout: float = 60.0) -> hosts.Envoy:
    """hosts.Envoy.start, but with production log levels (warn, no wasm
    debug) so logging costs nothing in either Envoy."""
    binary = hosts.envoy_binary()
    config_path = work / f"{name}.json"
    config_path.write_text(json.dumps(bootstrap, indent=1))
    log = work / f"{name}.log"
    listener = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]
    admin = bootstrap["admin"]["address"]["socket_address"]
    argv = [str(binary), "-c", str(config_path), "--concurrency", str(concurrency),
            "--use-dynamic-base-id", "--base-id-path", str(work / f"{name}.base-id"),
            "--log-level", "warn", "--drain-time-s", "1"]
    started = time.monotonic()
    proc = hosts._popen(argv, log, cwd=work)  # noqa: SLF001 - its own process group, dies with us
    admin_url = f"http://{admin['address']}:{admin['port_value']}"
    url = f"http://{listener['address']}:{listener['port_value']}"
    last = "no answer"
    while time.monotonic() < started + timeout:
        if proc.poll() is not None:
            last = f"envoy exited with {proc.returncode}"
            break
        try:
            conn = http.client.HTTPConnection(admin["address"], admin["port_value"], timeout=2)
            conn.request("GET", "/ready")
            r = conn.getresponse()
            text = r.read().decode(errors="replace").strip()
            conn.close()
            if r.status == 200 and text == "LIVE":
                return hosts.Envoy(name=name, url=url, admin_url=admin_url, proc=proc, log=log,
                                   access_log=work / f"{name}.access.log", config_path=config_path,
                                   plugin=None, ready_after=time.monotonic() - started)
            last = f"{r.status} {text[:200]}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.01)
    hosts.stop_group(proc)
    raise SystemExit(f"Envoy `{name}` was not LIVE within {timeout:.0f}s (last: {last}).\n{hosts.log_tail(log)}")


def cpu_times() -> list[int]:
    """The machine's CPU time counters (/proc/stat `cpu` line)."""
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def steal_share(before: list[int], after: list[int]) -> float:
    """Share of CPU time the hypervisor took (steal) between two cpu_times()."""
    delta = [b - a for a, b in zip(before, after)]
    return delta[7] / max(1, sum(delta[:8])) if len(delta) > 7 else 0.0


def rss_kib(envoy: hosts.Envoy) -> int:
    status = Path(f"/proc/{envoy.proc.pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    if not found:
        raise SystemExit(f"no VmRSS for Envoy pid {envoy.proc.pid}")
    return int(found.group(1))


def cpu_seconds(envoy: hosts.Envoy) -> float:
    fields = Path(f"/proc/{envoy.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@dataclass
class Target:
    """One Envoy and what its clients send."""

    label: str
    envoy: hosts.Envoy
    path: str
    headers: dict[str, str]
    body: str  # with @@ID@@
    body_file: Path
    headers_file: Path

    @classmethod
    def make(cls, label: str, envoy: hosts.Envoy, path: str, headers: dict[str, str], body: str, work: Path) -> Target:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-")
        body_file = work / f"{stem}.body.json"
        headers_file = work / f"{stem}.headers.txt"
        body_file.write_text(body)
        headers_file.write_text("".join(f"{k}: {v}\n" for k, v in headers.items()))
        return cls(label, envoy, path, headers, body, body_file, headers_file)

    def post(self, request_id: str) -> tuple[float, int, dict[str, str], bytes]:
        """One request on a new connection: (ms, status, headers, body)."""
        host, port = hosts.host_port(self.envoy.url)
        body = self.body.replace("@@ID@@", request_id).encode()
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            t0 = time.perf_counter()
            conn.request("POST", self.path, body=body, headers=self.headers)
            r = conn.getresponse()
            data = r.read()
            ms = (time.perf_counter() - t0) * 1000
            return ms, r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            conn.close()


# ------------------------------------------------------------------ wrk


@dataclass
class Run:
    requests: int
    seconds: float
    p50: float  # ms
    p99: float
    cpu_us: float  # Envoy CPU per request
    store_batches: float = 0.0  # batches to the tenant's store per request

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def wrk(target: Target, connections: int, seconds: float, threads: int, delay_ms: float = 0) -> Run:
    """One wrk run; `delay_ms` > 0 paces each connection (measure_envoy.lua)."""
    env = {**os.environ, "TG_PATH": target.path, "TG_BODY": str(target.body_file),
           "TG_HEADERS": str(target.headers_file), "TG_DELAY_MS": f"{delay_ms:g}"}
    argv = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
            "-s", str(LUA), target.envoy.url]
    cpu0 = cpu_seconds(target.envoy)
    tollgate = target.label.startswith("filter")
    batches0 = store_batches(target.envoy) if tollgate else 0
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60,
                          stdin=subprocess.DEVNULL)
    cpu = cpu_seconds(target.envoy) - cpu0
    batches = (store_batches(target.envoy) - batches0) if tollgate else 0
    found = re.search(r"^TGRESULT (.*)$", done.stdout, re.M)
    if done.returncode != 0 or not found:
        raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    n, dur_us, p50, _p90, p99, _p999, _mx, _mean, *errors = found.group(1).split()
    errs = dict(zip(("connect", "read", "write", "status", "timeout"), map(int, errors)))
    if any(errs.values()):
        _, status, _, body = target.post("error-sample")
        raise SystemExit(f"wrk against {target.label} had errors {errs}; a request now answers {status}: "
                         f"{body[:300]!r}\n{hosts.log_tail(target.envoy.log, 20)}")
    requests = int(n)
    return Run(requests, int(dur_us) / 1e6, int(p50) / 1000, int(p99) / 1000, cpu / max(1, requests) * 1e6,
               batches / max(1, requests))


def store_batches(envoy: hosts.Envoy) -> int:
    """Batches the filter sent to tenants' stores (`tollgate.store_batches`, every path)."""
    return sum(envoy.stats(r"tollgate\.store_batches").values())


def alternate(targets: list[Target], rounds: int, connections: int, seconds: float, threads: int,
              delay_ms: float = 0, indent: str = "     ") -> list[list[Run]]:
    """`rounds` runs per target, the order flipping every round (A B, B A, ...)
    so drift on the machine falls on both alike."""
    runs: list[list[Run]] = [[] for _ in targets]
    for r in range(rounds):
        order = list(range(len(targets)))
        if r % 2:
            order.reverse()
        for k in order:
            run = wrk(targets[k], connections, seconds, threads, delay_ms)
            runs[k].append(run)
            print(f"{indent}round {r + 1} {targets[k].label:18} p50 {run.p50:6.3f} ms  p99 {run.p99:6.3f} ms  "
                  f"{run.rps:7.0f} req/s  Envoy CPU {run.cpu_us:5.0f} µs/req  "
                  f"store batches {run.store_batches:.3f}/req", flush=True)
    return runs


@dataclass
class Summary:
    p50: float
    p99: float
    rps: float
    cpu_us: float
    store_batches: float


def summarise(runs: list[Run]) -> Summary:
    return Summary(
        p50=statistics.median(r.p50 for r in runs),
        p99=statistics.median(r.p99 for r in runs),
        rps=sum(r.requests for r in runs) / sum(r.seconds for r in runs),
        cpu_us=statistics.median(r.cpu_us for r in runs),
        store_batches=sum(r.store_batches * r.requests for r in runs) / max(1, sum(r.requests for r in runs)),
    )


def latency_block(title: str, direct: list[Run], filt: list[Run], *others: list[Run], saturating: bool = False,
                  labels: tuple[str, ...] = ()) -> tuple[Summary, Summary, float, float]:
    """Print one load level's medians and what the filter adds. The
    throughput goal applies only to a `saturating` level (wrk as fast as the
    Envoys answer); a single connection or a paced load sets the rate.
    `others`: more filter variants (named by `labels`), printed for comparison."""
    d, f = summarise(direct), summarise(filt)
    add50, add99 = f.p50 - d.p50, f.p99 - d.p99
    pairs50 = [b.p50 - a.p50 for a, b in zip(direct, filt)]
    pairs99 = [b.p99 - a.p99 for a, b in zip(direct, filt)]
    print(f"   {title}: medians over {len(direct)} runs each")
    print(f"     direct             p50 {d.p50:6.3f} ms  p99 {d.p99:6.3f} ms  {d.rps:7.0f} req/s  CPU {d.cpu_us:5.0f} µs/req")
    print(f"     filter (leased)    p50 {f.p50:6.3f} ms  p99 {f.p99:6.3f} ms  {f.rps:7.0f} req/s  CPU {f.cpu_us:5.0f} µs/req"
          f"  store batches {f.store_batches:.3f}/req")
    for label, runs in zip(labels, others):
        o = summarise(runs)
        print(f"     {label:18} p50 {o.p50:6.3f} ms  p99 {o.p99:6.3f} ms  {o.rps:7.0f} req/s  CPU {o.cpu_us:5.0f} µs/req"
              f"  store batches {o.store_batches:.3f}/req  (throughput {o.rps / d.rps:.0%} of direct)")
    print(f"     added   p50 {add50:+6.3f} ms (goal <= {GOAL_P50_MS} ms: {verdict(add50 <= GOAL_P50_MS)}; "
          f"per round {min(pairs50):+.3f}..{max(pairs50):+.3f})")
    print(f"             p99 {add99:+6.3f} ms (goal <= {GOAL_P99_MS} ms: {verdict(add99 <= GOAL_P99_MS)}; "
          f"per round {min(pairs99):+.3f}..{max(pairs99):+.3f})")
    ratio = f.rps / d.rps
    added_cpu = f.cpu_us - d.cpu_us
    if saturating:
        print(f"     throughput filter/direct {ratio:.1%} (goal >= {GOAL_THROUGHPUT:.0%}: "
              f"{verdict(ratio >= GOAL_THROUGHPUT)}); Envoy CPU added {added_cpu:+.0f} µs/req "
              f"(goal <= {GOAL_CPU_US:.0f}: {verdict(added_cpu <= GOAL_CPU_US)})")
    else:
        print(f"     Envoy CPU added {added_cpu:+.0f} µs/req")
    return d, f, add50, add99


# ------------------------------------------------------------------ memory and cold start


@dataclass
class Fresh:
    label: str
    concurrency: int
    ready_s: float
    rss_idle: int  # KiB
    rss_warm: int
    first_ms: list[float]  # each worker's first request
    warm_ms: float  # median, new connection each


def worker_of_next(envoy: hosts.Envoy, before: dict[str, int]) -> str | None:
    after = envoy.worker_connections()
    grown = [w for w, n in after.items() if n > before.get(w, 0)]
    before.clear()
    before.update(after)
    return grown[0] if len(grown) == 1 else None


def fresh_envoy(label: str, make_target, concurrency: int, warm_s: float, warm_connections: int) -> Fresh:
    target: Target = make_target(concurrency)
    envoy = target.envoy
    try:
        rss_idle = rss_kib(envoy)
        seen: dict[str, int] = envoy.worker_connections()
        first: dict[str, float] = {}
        tries = 0
        while len(first) < concurrency and tries < 40 * concurrency:
            tries += 1
            ms, status, _, body = target.post(f"cold-{tries}")
            if status != 200:
                raise SystemExit(f"{label}: {status} {body[:300]!r}")
            worker = worker_of_next(envoy, seen)
            if worker is not None and worker not in first:
                first[worker] = ms
        warm = []
        for i in range(10):
            ms, status, _, _ = target.post(f"warm-{i}")
            warm.append(ms)
        wrk(target, warm_connections, warm_s, threads=1)
        reached = envoy.worker_connections()
        if len([w for w, n in reached.items() if n > 0]) < concurrency:
            print(f"   note: the warm-up reached only {reached} of {concurrency} workers")
        time.sleep(0.5)
        return Fresh(label, concurrency, envoy.ready_after, rss_idle, rss_kib(envoy), list(first.values()),
                     statistics.median(warm))
    finally:
        envoy.stop()


def filter_counters(envoy: hosts.Envoy) -> dict[str, int]:
    """The filter's counters (`tollgate.<metric>[.label.value...]` in Envoy's
    /stats, under `wasmcustom.`), summed over their labels."""
    out: dict[str, int] = {}
    for name, value in envoy.stats(r"tollgate\.").items():
        found = re.search(r"(?:^|\.)tollgate\.([a-z_]+)", name)
        if found:
            out[found.group(1)] = out.get(found.group(1), 0) + value
    keep = ("requests", "cache_hits", "cache_misses", "fallbacks", "errors", "budget_refusals")
    return {k: out.get(k, 0) for k in keep}


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x: (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads for the latency runs (default 2)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections under load (default 32)")
    ap.add_argument("--wrk-threads", type=int, default=2, help="wrk threads under load (default 2)")
    ap.add_argument("--paced-share", type=float, default=0.5,
                    help="the paced load level offers this share of the filter's saturated throughput (default 0.5)")
    ap.add_argument("--rounds", type=int, help="alternating runs per Envoy and load level (default 5; --quick 2)")
    ap.add_argument("--seconds", type=float, help="seconds per wrk run (default 6; --quick 2)")
    ap.add_argument("--memory-concurrencies",
                    help="Envoy --concurrency values for RSS (default 1,2,4,8; --quick 1,2,4)")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 s, 1 s warm-ups (about a minute)")
    ap.add_argument("--mock-bin", default=str(hosts.ROOT / "target" / "release" / "tollgate-mock"))
    ap.add_argument("--keep", action="store_true", help="keep the run directory (configs, logs)")
    ap.add_argument("--store", choices=("local", "redis"), default="local",
                    help="where budgets live: shared data (default) or Redis through webdis")
    ap.add_argument("--store-delay-ms", type=float, default=0,
                    help="with --store redis: hold every request to webdis this long (a store far away)")
    ap.add_argument("--skip-memory", action="store_true", help="latency and throughput only")
    ap.add_argument("--compare-wasm", type=Path,
                    help="another build of the filter (e.g. before a change), run side by side with the same "
                         "config and load: its figures are printed next to this build's")
    args = ap.parse_args()
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    if args.seconds is None:
        args.seconds = 2.0 if args.quick else 6.0
    if args.memory_concurrencies is None:
        args.memory_concurrencies = "1,2,4" if args.quick else "1,2,4,8"
    warm_s = 1.0 if args.quick else 2.0
    concurrencies = sorted({int(c) for c in args.memory_concurrencies.split(",") if c.strip()})
    if not concurrencies or min(concurrencies) < 1 or args.rounds < 1 or args.seconds <= 0 or args.connections < 1:
        ap.error("--rounds, --seconds, --connections and --memory-concurrencies must be positive")
    if not 0 < args.paced_share < 1:
        ap.error("--paced-share must be between 0 and 1")
    command = " ".join(["scripts/measure-envoy", *map(shlex.quote, sys.argv[1:])])

    wasm = hosts.require_envoy_filter()
    floor_wasm = wasm.parent / "examples" / "buffering_floor.wasm"
    if not floor_wasm.is_file():
        raise SystemExit(f"{floor_wasm} is missing: scripts/measure-envoy builds it "
                         "(cargo build -p tollgate-envoy --example buffering_floor --target wasm32-wasip1 --release)")
    version = subprocess.run([str(hosts.envoy_binary()), "--version"], capture_output=True, text=True).stdout
    version = (re.search(r"\d+\.\d+\.\d+", version) or [None])[0] or "?"
    cpu_model = (re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M) or [None, "?"])[1]
    machine = f"nproc {os.cpu_count()}, {cpu_model.strip()}"
    load_before = os.getloadavg()[0]
    times_before = cpu_times()
    print(f"command: {command}")
    print(f"machine: {machine}; load average {load_before:.2f} at start")
    print(f"Envoy {version}, filter {wasm.relative_to(hosts.ROOT)} ({wasm.stat().st_size / 1024:.0f} KiB)")

    work = hosts.fresh_dir("tollgate-measure-envoy-")
    mock = hosts.Mock.start(Path(args.mock_bin), work / "mock.log")
    print(f"run directory: {work}")
    envoys: list[hosts.Envoy] = []
    stores: list = []
    webdis_url = None
    state = None
    if args.store == "redis":
        redis = hosts.Redis.start(work)
        stores.append(redis)
        webdis = hosts.Webdis.start(redis, work)
        stores.append(webdis)
        webdis_url = webdis.url
        if args.store_delay_ms:
            webdis_url = DelayProxy(hosts.host_port(webdis.url), args.store_delay_ms).url
        state = {"budgets": "redis", "cache": "off",
                 "redis": {"cluster": "webdis", "authority": "webdis", "timeout_ms": 5000}}
        print(f"budgets in Redis through webdis{f', every call held {args.store_delay_ms:g} ms' if args.store_delay_ms else ''}")
    try:
        plugin = hosts.plugin_config(mock, [
            (bench_tenant(), [BENCH_KEY]),
            (bench_tenant("bench-per-request", consistency="per_request"), [BENCH_PER_REQUEST_KEY]),
            (bench_tenant("bench-unmetered", metered=False), [BENCH_UNMETERED_KEY]),
        ], state=state)
        routed_headers = {"content-type": "application/json", "authorization": f"Bearer {BENCH_KEY}"}
        direct_headers = {"content-type": "application/json", "x-tollgate-provider": DIRECT_PROVIDER,
                          "authorization": f"Bearer {hosts.mock_provider_secrets()[hosts.provider_secret_env(DIRECT_PROVIDER)]}"}
        routed_body = chat_body("tollgate/auto")

        def bootstrap(label: str) -> dict:
            filter_wasm = {"filter": wasm, "floor": floor_wasm, "compare": args.compare_wasm}.get(label)
            return hosts.envoy_bootstrap(plugin if filter_wasm else None, port=hosts.free_port(),
                                         admin_port=hosts.free_port(), mock=mock, wasm=filter_wasm or wasm,
                                         webdis_url=webdis_url if label in ("filter", "compare") else None)

        def launch(label: str, concurrency: int) -> hosts.Envoy:
            env = start_envoy(bootstrap(label), work, f"{label}-c{concurrency}-{len(envoys)}", concurrency)
            envoys.append(env)
            return env

        # Which model does the filter pick for this body? The direct Envoy's
        # clients then ask for that model themselves.
        probe_envoy = launch("filter", 1)
        probe = Target.make("probe", probe_envoy, CHAT_PATH, routed_headers, routed_body, work)
        _, status, headers, body = probe.post("probe")
        probe_envoy.stop()
        if status != 200:
            raise SystemExit(f"the filter answered {status}: {body[:500]!r}\n{hosts.log_tail(probe_envoy.log, 30)}")
        model = headers.get("x-tollgate-model", "")
        provider, _, bare = model.partition("/")
        if provider != DIRECT_PROVIDER or not bare:
            raise SystemExit(f"the filter routed to {model!r}; this script's direct route expects {DIRECT_PROVIDER}/…")
        direct_body = chat_body(bare)
        print(f"body: {len(routed_body)} bytes (filter; routed to tier {headers.get('x-tollgate-tier')}, {model}), "
              f"{len(direct_body)} bytes (direct, model {bare}); temperature unset, a new prompt per request")

        def target(label: str, concurrency: int) -> Target:
            env = launch(label, concurrency)
            if label == "filter":
                return Target.make("filter", env, CHAT_PATH, routed_headers, routed_body, work)
            if label == "compare":
                return Target.make("compare-wasm", env, CHAT_PATH, routed_headers, routed_body, work)
            if label == "floor":
                # The direct request, through a filter that only buffers and copies.
                return Target.make("buffering floor", env, DIRECT_PATH, direct_headers, direct_body, work)
            return Target.make("direct", env, DIRECT_PATH, direct_headers, direct_body, work)

        def variant(base: Target, label: str, key: str) -> Target:
            """Another tenant on the same filter Envoy; with Redis, on an
            Envoy of its own, so one tenant's backlog of writes to a slow
            store does not queue the other's in the same connection pool."""
            headers = {**routed_headers, "authorization": f"Bearer {key}"}
            envoy = launch("filter", args.concurrency) if args.store == "redis" else base.envoy
            return Target.make(label, envoy, CHAT_PATH, headers, routed_body, work)

        # ---------------------------------------------------------- latency
        print(f"\n== added latency (Envoy --concurrency {args.concurrency}, both Envoys up side by side, "
              f"{args.rounds} alternating runs of {args.seconds:g} s each)")
        direct, filt = target("direct", args.concurrency), target("filter", args.concurrency)
        per_request = variant(filt, "filter (per_request)", BENCH_PER_REQUEST_KEY)
        unmetered = variant(filt, "filter (no budgets)", BENCH_UNMETERED_KEY)
        floor = target("floor", args.concurrency)
        pair = [direct, filt, per_request, unmetered, floor]
        variants: tuple[str, ...] = ("filter (per_request)", "filter (no budgets)", "buffering floor")
        if args.compare_wasm:
            pair.append(target("compare", args.concurrency))
            variants += ("--compare-wasm build",)
        for t in pair:
            _, status, _, body = t.post("check")
            if status != 200:
                raise SystemExit(f"{t.label}: {status} {body[:500]!r}")
            wrk(t, args.connections, warm_s, args.wrk_threads)  # warm every worker, JIT and pools
        print("   1 connection (wrk -t1 -c1):")
        one = alternate(pair, args.rounds, 1, args.seconds, 1)
        d1, f1, a50_1, a99_1 = latency_block("1 connection", *one, labels=variants)
        n = args.connections
        print(f"   {n} connections, as fast as each Envoy answers (wrk -t{args.wrk_threads} -c{n}; "
              "on a machine this small the added latency here is mostly queueing behind the filter's CPU time):")
        loaded = alternate(pair, args.rounds, n, args.seconds, args.wrk_threads)
        dn, fn, a50_n, a99_n = latency_block(f"{n} connections, saturating", *loaded, saturating=True, labels=variants)
        pr_n, free_n, floor_n = summarise(loaded[2]), summarise(loaded[3]), summarise(loaded[4])
        ratio = fn.rps / dn.rps
        # Paced: the same offered rate for both, below what either sustains,
        # so the difference is the filter's time per request plus the
        # queueing that time causes at a working load, not a saturated queue.
        rate = max(1.0, args.paced_share * fn.rps)
        delay_ms = n * 1000 / rate
        print(f"   {n} connections paced to about {rate:.0f} req/s in all ({args.paced_share:.0%} of the filter's "
              f"saturated throughput; each connection pauses {delay_ms:.0f} ms on average between requests):")
        paced = alternate(pair[:2], args.rounds, n, args.seconds, args.wrk_threads, delay_ms)
        dp, fp, a50_p, a99_p = latency_block(f"{n} connections, paced", *paced)
        # Where the filter's CPU goes, by difference (saturating runs): a
        # filter that only buffers and copies the bodies (examples/
        # buffering_floor.rs) over direct Envoy is the cost of being a
        # buffering wasm filter at all; the unmetered tenant over that floor
        # is tollgate's own work per request; budgets are what a metered
        # tenant adds over the same request unmetered.
        print("   where the filter's CPU goes (saturating, by difference, µs per request):")
        print(f"     being a buffering wasm filter (V8 calls, stream contexts, both bodies held and copied "
              f"into the VM and out; examples/buffering_floor.rs): {floor_n.cpu_us - dn.cpu_us:+.0f}")
        print(f"     tollgate's request path without budgets (parse, count, classify, route, rewrite, headers, "
              f"price, outcome records: {free_n.store_batches:.3f} store batches per request): "
              f"{free_n.cpu_us - floor_n.cpu_us:+.0f}")
        print(f"     budgets and outcomes with leases:      {fn.cpu_us - free_n.cpu_us:+.0f} "
              f"({fn.store_batches:.3f} store batches per request)")
        print(f"     budgets and outcomes per request:      {pr_n.cpu_us - free_n.cpu_us:+.0f} "
              f"({pr_n.store_batches:.3f} store batches per request)")
        if args.compare_wasm:
            cmp_1, cmp_n = summarise(one[5]), summarise(loaded[5])
            print(f"   this build vs --compare-wasm {args.compare_wasm} (same config, same runs, alternating):")
            print(f"     CPU per request (saturating): {fn.cpu_us:.0f} vs {cmp_n.cpu_us:.0f} µs "
                  f"({fn.cpu_us - cmp_n.cpu_us:+.0f}); added over no filter {fn.cpu_us - dn.cpu_us:+.0f} vs "
                  f"{cmp_n.cpu_us - dn.cpu_us:+.0f} µs")
            print(f"     throughput (saturating): {fn.rps:.0f} vs {cmp_n.rps:.0f} req/s ({fn.rps / dn.rps:.0%} vs "
                  f"{cmp_n.rps / dn.rps:.0%} of no filter)")
            print(f"     1 connection p50: {f1.p50:.3f} vs {cmp_1.p50:.3f} ms (added {f1.p50 - d1.p50:+.3f} vs "
                  f"{cmp_1.p50 - d1.p50:+.3f} ms)")
        counters = filter_counters(filt.envoy)
        sent = sum(r.requests for runs in (*one[1:], *loaded[1:], paced[1]) for r in runs)
        print(f"   the filter's counters: {', '.join(f'{k} {v}' for k, v in counters.items()) or 'none'} "
              f"(the measured runs sent it {sent} requests, plus warm-ups and checks)")
        if counters.get("cache_hits") or counters.get("errors") or counters.get("fallbacks"):
            print("   note: cache hits, errors or fallbacks above: the filter did not forward every request as is, "
                  "so the figures are not the plain routed path")
        for t in pair:
            t.envoy.stop()
        errors = [line for t in pair for line in t.envoy.log_text().splitlines() if "tollgate" in line]
        if errors:
            print("   the filter logged during the runs:\n     " + "\n     ".join(errors[:5]))

        if args.skip_memory:
            load_after = os.getloadavg()[0]
            print(f"\n== table (`{command}`; {machine}; Envoy {version} --concurrency {args.concurrency}; "
                  f"load average {load_before:.1f} before, {load_after:.1f} after)\n")
            print("| | no filter | buffering floor | leased | per_request | no budgets |")
            print("|---|---|---|---|---|---|")
            pr_1, free_1, floor_1 = summarise(one[2]), summarise(one[3]), summarise(one[4])
            print(f"| 1 connection, p50 | {d1.p50:.3f} ms | {floor_1.p50:.3f} ms | {f1.p50:.3f} ms | {pr_1.p50:.3f} ms | "
                  f"{free_1.p50:.3f} ms |")
            print(f"| 1 connection, p99 | {d1.p99:.3f} ms | {floor_1.p99:.3f} ms | {f1.p99:.3f} ms | {pr_1.p99:.3f} ms | "
                  f"{free_1.p99:.3f} ms |")
            print(f"| {n} connections saturating, throughput | {dn.rps:.0f} req/s | {floor_n.rps:.0f} req/s | "
                  f"{fn.rps:.0f} req/s | {pr_n.rps:.0f} req/s | {free_n.rps:.0f} req/s |")
            print(f"| {n} connections saturating, p50 | {dn.p50:.3f} ms | {floor_n.p50:.3f} ms | {fn.p50:.3f} ms | "
                  f"{pr_n.p50:.3f} ms | {free_n.p50:.3f} ms |")
            print(f"| Envoy CPU per request | {dn.cpu_us:.0f} µs | {floor_n.cpu_us:.0f} µs | {fn.cpu_us:.0f} µs | "
                  f"{pr_n.cpu_us:.0f} µs | {free_n.cpu_us:.0f} µs |")
            print(f"| store batches per request | | | {fn.store_batches:.3f} | {pr_n.store_batches:.3f} | "
                  f"{free_n.store_batches:.3f} |")
            return 0

        # ---------------------------------------------------------- memory, cold start
        print(f"\n== memory and cold start (a fresh Envoy per row; warm-up: wrk -c64 for {warm_s:g} s)")
        fresh: dict[tuple[str, int], Fresh] = {}
        for i, c in enumerate(concurrencies):
            for label in (("direct", "filter") if i % 2 == 0 else ("filter", "direct")):
                f = fresh_envoy(label, lambda conc, label=label: target(label, conc), c, warm_s, 64)
                fresh[(label, c)] = f
                firsts = ", ".join(f"{ms:.1f}" for ms in f.first_ms)
                print(f"   {label:6} --concurrency {c}: ready {f.ready_s:.2f} s; RSS idle {f.rss_idle / 1024:6.1f} MiB, "
                      f"warm {f.rss_warm / 1024:6.1f} MiB; first request per worker {firsts} ms, "
                      f"later {f.warm_ms:.1f} ms (new connection each)", flush=True)
        vms = [c + 1 for c in concurrencies]
        diffs = [(fresh[("filter", c)].rss_warm - fresh[("direct", c)].rss_warm) / 1024 for c in concurrencies]
        idle_diffs = [(fresh[("filter", c)].rss_idle - fresh[("direct", c)].rss_idle) / 1024 for c in concurrencies]
        per_vm = [d / v for d, v in zip(diffs, vms)]
        print("   RSS filter - direct after warm-up (VMs = workers + main thread):")
        for c, v, d, di, p in zip(concurrencies, vms, diffs, idle_diffs, per_vm):
            print(f"     --concurrency {c}: {v} VMs, {d:6.1f} MiB ({p:5.1f} MiB per VM; idle before any request {di:6.1f} MiB)")
        intercept, slope = fit(vms, diffs) if len(vms) > 1 else (0.0, per_vm[0])
        worst_avg = max(per_vm)
        print(f"   per VM, slope of (filter - direct) over VMs: {slope:.1f} MiB per added VM, plus {intercept:+.1f} MiB "
              f"once per Envoy (the intercept); goal <= {GOAL_VM_MIB:g} MiB: {verdict(slope <= GOAL_VM_MIB)}")
        print(f"   per VM, (filter - direct) / VMs: {min(per_vm):.1f}..{worst_avg:.1f} MiB; goal <= {GOAL_VM_MIB:g} MiB: "
              f"{verdict(worst_avg <= GOAL_VM_MIB)}")
        cold_f = statistics.median(ms for c in concurrencies for ms in fresh[("filter", c)].first_ms)
        cold_d = statistics.median(ms for c in concurrencies for ms in fresh[("direct", c)].first_ms)
        later_f = statistics.median(fresh[("filter", c)].warm_ms for c in concurrencies)
        later_d = statistics.median(fresh[("direct", c)].warm_ms for c in concurrencies)
        ready_f = statistics.median(fresh[("filter", c)].ready_s for c in concurrencies)
        ready_d = statistics.median(fresh[("direct", c)].ready_s for c in concurrencies)
        cold_added = (cold_f - later_f) - (cold_d - later_d)
        print(f"   cold first request per worker (median): filter {cold_f:.1f} ms vs direct {cold_d:.1f} ms "
              f"(later requests {later_f:.1f} vs {later_d:.1f} ms): a cold VM costs about {cold_added:+.1f} ms once")
        print(f"   start to /ready LIVE (median): filter {ready_f:.2f} s, direct {ready_d:.2f} s")

        # ---------------------------------------------------------- table
        load_after = os.getloadavg()[0]
        steal = steal_share(times_before, cpu_times())
        print(f"\n== table (`{command}`; {machine}; Envoy {version} --concurrency {args.concurrency}; "
              f"load average {load_before:.1f} before, {load_after:.1f} after; CPU steal {steal:.0%} during the run)\n")
        print("| | no filter | tollgate filter | added | goal | |")
        print("|---|---|---|---|---|---|")
        print(f"| 1 connection, p50 | {d1.p50:.3f} ms | {f1.p50:.3f} ms | {a50_1:+.3f} ms | ≤ {GOAL_P50_MS} ms | {verdict(a50_1 <= GOAL_P50_MS)} |")
        print(f"| 1 connection, p99 | {d1.p99:.3f} ms | {f1.p99:.3f} ms | {a99_1:+.3f} ms | ≤ {GOAL_P99_MS} ms | {verdict(a99_1 <= GOAL_P99_MS)} |")
        paced_label = f"{n} connections paced to {rate:.0f} req/s"
        print(f"| {paced_label}, p50 | {dp.p50:.3f} ms | {fp.p50:.3f} ms | {a50_p:+.3f} ms | ≤ {GOAL_P50_MS} ms | {verdict(a50_p <= GOAL_P50_MS)} |")
        print(f"| {paced_label}, p99 | {dp.p99:.3f} ms | {fp.p99:.3f} ms | {a99_p:+.3f} ms | ≤ {GOAL_P99_MS} ms | {verdict(a99_p <= GOAL_P99_MS)} |")
        print(f"| {n} connections saturating, p50 | {dn.p50:.3f} ms | {fn.p50:.3f} ms | {a50_n:+.3f} ms | ≤ {GOAL_P50_MS} ms | {verdict(a50_n <= GOAL_P50_MS)} |")
        print(f"| {n} connections saturating, p99 | {dn.p99:.3f} ms | {fn.p99:.3f} ms | {a99_n:+.3f} ms | ≤ {GOAL_P99_MS} ms | {verdict(a99_n <= GOAL_P99_MS)} |")
        print(f"| {n} connections saturating, throughput | {dn.rps:.0f} req/s | {fn.rps:.0f} req/s | {ratio:.0%} of direct | ≥ {GOAL_THROUGHPUT:.0%} | {verdict(ratio >= GOAL_THROUGHPUT)} |")
        print(f"| Envoy CPU per request (saturating) | {dn.cpu_us:.0f} µs | {fn.cpu_us:.0f} µs | {fn.cpu_us - dn.cpu_us:+.0f} µs | ≤ {GOAL_CPU_US:.0f} µs | {verdict(fn.cpu_us - dn.cpu_us <= GOAL_CPU_US)} |")
        print(f"| same, tenant `per_request` | {dn.cpu_us:.0f} µs | {pr_n.cpu_us:.0f} µs | {pr_n.cpu_us - dn.cpu_us:+.0f} µs | | |")
        print(f"| same, tenant without budgets | {dn.cpu_us:.0f} µs | {free_n.cpu_us:.0f} µs | {free_n.cpu_us - dn.cpu_us:+.0f} µs | | |")
        print(f"| same, a filter that only buffers and copies (examples/buffering_floor.rs) | {dn.cpu_us:.0f} µs | "
              f"{floor_n.cpu_us:.0f} µs | {floor_n.cpu_us - dn.cpu_us:+.0f} µs | | |")
        print(f"| throughput, tenant `per_request` | {dn.rps:.0f} req/s | {pr_n.rps:.0f} req/s | {pr_n.rps / dn.rps:.0%} of direct | | |")
        print(f"| store batches per request (leased / per_request) | | {fn.store_batches:.3f} / {pr_n.store_batches:.3f} | | | |")
        cs = "/".join(map(str, concurrencies))
        rss_d = "/".join(f"{fresh[('direct', c)].rss_warm / 1024:.0f}" for c in concurrencies)
        rss_f = "/".join(f"{fresh[('filter', c)].rss_warm / 1024:.0f}" for c in concurrencies)
        print(f"| RSS after warm-up, --concurrency {cs} | {rss_d} MiB | {rss_f} MiB | "
              f"{'/'.join(f'{d:+.0f}' for d in diffs)} MiB | | |")
        print(f"| memory per wasm VM: slope of the added RSS over VMs (workers + main) | | | "
              f"{slope:.1f} MiB per VM, plus {intercept:.0f} MiB once per Envoy | ≤ {GOAL_VM_MIB:g} MiB | "
              f"{verdict(slope <= GOAL_VM_MIB)} |")
        print(f"| memory per wasm VM: added RSS / VMs, --concurrency {cs} | | | "
              f"{'/'.join(f'{p:.1f}' for p in per_vm)} MiB | ≤ {GOAL_VM_MIB:g} MiB | {verdict(worst_avg <= GOAL_VM_MIB)} |")
        print(f"| cold first request on a worker | {cold_d:.1f} ms | {cold_f:.1f} ms | {cold_added:+.1f} ms once per VM | | |")
        print(f"| start to /ready | {ready_d:.2f} s | {ready_f:.2f} s | {ready_f - ready_d:+.2f} s | | |")
        return 0
    finally:
        for env in envoys:
            env.stop()
        for store in reversed(stores):
            store.stop()
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
