"""Runs the token-counting measurements of scripts/bench-tokens and prints
them side by side: native and wasm, this crate and tiktoken-rs."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(os.environ["ROOT"])
QUICK = "--quick" in sys.argv[1:]
NATIVE = ROOT / "target/release/examples"
WASM = ROOT / "target/wasm32-wasip1/release/examples"
TOLLGATE = ROOT / "target/release/tollgate"
CRASHED_AT_EXIT = set()
SHARED_DEV = Path(os.environ.get("TOLLGATE_SHARED_DIR", ROOT / "../shared")) / "data/routing/dev.jsonl"


def run(host, example, *args, stdin=None):
    """JSON lines printed by one run of an example, natively or under node."""
    if host == "native":
        cmd = [str(NATIVE / example), *args]
    else:
        cmd = ["node", "--no-warnings", str(ROOT / "scripts/lib/wasi-run-module.mjs"), str(WASM / f"{example}.wasm"), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, input=stdin)
    rows = [json.loads(line) for line in done.stdout.split("\n") if line.startswith("{")]
    # node 20 segfaults as the wasm build of these examples exits once
    # tiktoken-rs has run in it (after the program has printed everything
    # and returned from main); the rows are complete, so keep them and say so.
    if done.returncode == -11 and host == "wasm" and rows:
        CRASHED_AT_EXIT.add(f"{example} {' '.join(args)}")
    elif done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return rows


def median_of_fresh_processes(host, example, part, times):
    """Each start-up figure is the median over `times` fresh processes."""
    samples = {}
    for _ in range(times):
        for row in run(host, example, part):
            side = "ours" if row["ours"] is not None else "tiktoken"
            samples.setdefault(row["metric"], {"ours": [], "tiktoken": [], "unit": row["unit"]})[side].append(row[side])
    return [
        {"part": "startup", "metric": m, "ours": statistics.median(v["ours"]) if v["ours"] else None,
         "tiktoken": statistics.median(v["tiktoken"]) if v["tiktoken"] else None, "unit": v["unit"]}
        for m, v in samples.items()
    ]


def merge(rows_by_host):
    """{metric: {host: row}} in first-seen order."""
    table = {}
    for host, rows in rows_by_host.items():
        for row in rows:
            entry = table.setdefault(row["metric"], {})
            old = entry.get(host)
            if old:
                for side in ("ours", "tiktoken"):
                    if row[side] is not None:
                        old[side] = row[side]
            else:
                entry[host] = dict(row)
    return table


def fmt(value, unit):
    if value is None:
        return ""
    if unit == "µs" and value >= 10000:
        return f"{value / 1000:.1f} ms"
    if unit == "µs":
        return f"{value:.1f} µs"
    return f"{value:.1f} {unit}"


def ratio(row):
    if not row or row.get("ours") in (None, 0) or row.get("tiktoken") is None:
        return ""
    return f"{row['tiktoken'] / row['ours']:.1f}×"


def print_table(title, table, hosts):
    print(f"\n{title}")
    header = "| |" + "".join(f" {h}: ours | {h}: tiktoken-rs | {h}: ratio |" for h in hosts)
    print(header)
    print("|---|" + "---|---|---|" * len(hosts))
    for metric, by_host in table.items():
        cells = ""
        for h in hosts:
            row = by_host.get(h, {})
            unit = row.get("unit", "")
            cells += f" {fmt(row.get('ours'), unit)} | {fmt(row.get('tiktoken'), unit)} | {ratio(row)} |"
        print(f"| {metric} |{cells}")


def whole_process():
    """tollgate count --jsonl against tiktoken_count on one corpus."""
    lines = []
    if SHARED_DEV.exists():
        for line in SHARED_DEV.read_text().split("\n"):
            if line.strip():
                row = json.loads(line)
                lines.append(json.dumps({"id": f"dev-{row['id']}", "text": row["prompt"]}))
        source = f"{len(lines)} routing prompts from {SHARED_DEV} + "
    else:
        source = f"(no {SHARED_DEV}: generated texts only) "
    generated = subprocess.run([str(NATIVE / "side_by_side"), "corpus"], check=True, capture_output=True, text=True).stdout
    lines += [line for line in generated.split("\n") if line]
    corpus = "\n".join(lines) + "\n"
    size = len(corpus.encode())
    generated_count = sum(1 for line in generated.split("\n") if line)
    print(f"\nwhole processes, start-up included: {source}{generated_count} generated texts;"
          f" {len(lines)} texts, {size / 1e6:.1f} MB of JSON lines; median of 3 runs each")
    print("| encoding | tollgate count --jsonl | tiktoken-rs program | ratio | counts |")
    print("|---|---|---|---|---|")
    for encoding in ("o200k_base", "cl100k_base"):
        commands = {
            "ours": [str(TOLLGATE), "count", "--encoding", encoding, "--jsonl"],
            "tiktoken": [str(NATIVE / "tiktoken_count"), encoding],
        }
        times = {"ours": [], "tiktoken": []}
        outputs = {}
        for _ in range(3):
            for side, cmd in commands.items():
                start = time.perf_counter()
                done = subprocess.run(cmd, input=corpus, capture_output=True, text=True, check=True)
                times[side].append(time.perf_counter() - start)
                outputs[side] = [json.loads(l) for l in done.stdout.split("\n") if l.strip()]
        ours, theirs = outputs["ours"], outputs["tiktoken"]
        differ = [(a, b) for a, b in zip(ours, theirs) if a != b]
        if len(ours) != len(lines) or len(theirs) != len(lines) or differ:
            print(f"COUNTS DIFFER ({encoding}): {len(differ)} lines, first {differ[:3]}", file=sys.stderr)
            sys.exit(1)
        a, b = statistics.median(times["ours"]), statistics.median(times["tiktoken"])
        total = sum(r["tokens"] for r in ours)
        print(f"| {encoding} | {a * 1000:.0f} ms | {b * 1000:.0f} ms | {b / a:.1f}× | identical ({total} tokens) |")


def main():
    hosts = ["native"] if QUICK else ["native", "wasm"]
    results = {}
    for host in hosts:
        rows = []
        rows += median_of_fresh_processes(host, "side_by_side", "startup-ours", 5)
        rows += median_of_fresh_processes(host, "side_by_side", "startup-tiktoken", 3)
        rows += run(host, "side_by_side", "speed")
        rows += run(host, "peak_memory")
        rows += run(host, "side_by_side", "memory-tiktoken")
        rows += run(host, "side_by_side", "linear")
        results[host] = rows
    table = merge(results)
    machine = os.uname()
    print(f"machine: {machine.sysname} {machine.machine}, nproc {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}")
    print("native: release build; wasm: the same code built for wasm32-wasip1, run by node "
          f"{subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip()} (V8)")
    pick = lambda part: {m: v for m, v in table.items() if any(r.get("part") == part for r in v.values())}
    print_table("start-up: the first count in a fresh process (tiktoken-rs: building its tokenizer, then counting)", pick("startup"), hosts)
    print_table("4 KB texts (best of 7 rounds of 200 counts; identical counts asserted)", pick("speed"), hosts)
    print_table("memory (native: peak RSS of the process; wasm: the instance's linear memory)", pick("memory"), hosts)
    print_table("adversarial input, this crate (time per MiB: equal at 64 KiB and 1 MiB means linear)", pick("linear"), hosts)
    whole_process()
    if not QUICK:
        print("\nvocabulary layouts (examples/layouts.rs: native, one look-up stream of hits and near-misses)")
        subprocess.run([str(NATIVE / "layouts")], check=True)
    if CRASHED_AT_EXIT:
        print(f"\n(node segfaulted at exit, after complete output, in: {', '.join(sorted(CRASHED_AT_EXIT))})")
    # Targets, from the figures above.
    print("\ntargets")
    for host in hosts:
        start = [r[host]["ours"] for m, r in pick("startup").items() if host in r and r[host]["ours"] is not None]
        if start:
            worst = max(start) / 1000
            print(f"   start-up ≤ 5 ms ({host}): {worst:.2f} ms at worst: {'met' if worst <= 5 else 'missed'}")
        ratios = [r[host]["tiktoken"] / r[host]["ours"] for m, r in pick("speed").items() if host in r]
        if ratios:
            print(f"   4 KB ≥ 3× tiktoken-rs ({host}): {min(ratios):.1f}× to {max(ratios):.1f}×: "
                  f"{'met' if min(ratios) >= 3 else 'missed for ' + ', '.join(m for m, r in pick('speed').items() if host in r and r[host]['tiktoken'] / r[host]['ours'] < 3)}")
        mem = table.get("peak memory, 4 KB texts (both encodings)", {}).get(host, {}).get("ours")
        if mem is not None:
            print(f"   memory ≤ 8 MB ({host}, 4 KB texts): {mem:.1f} MiB: {'met' if mem * 1.048576 <= 8 else 'missed'}")


main()
