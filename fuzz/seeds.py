#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets, fuzz/corpus/<target>/, from
the project's own test data:

- request bodies: tests/vectors/decisions.json and bad_input.json, the
  example workload and request log, examples/request-hard.json;
- provider answers (JSON and SSE, both APIs, with the mock's answer faults
  and cut streams): recorded from crates/tollgate-mock, started here;
- streams: the core's SSE test fixtures (response/sse.rs), with every line
  ending;
- tenant configs: examples/, the vectors' tenants; plugin configurations:
  the ones in envoy/ (as envoy/render.py finds them) and one built from the
  vectors' tenants and keys;
- store wire format: what the store target's own host code writes after
  real batches (TOLLGATE_FUZZ_DUMP, three generations), so the seeds hold
  the exact JSON hosts persist;
- inputs that once failed a target: fuzz/regressions/<target>/.

Usage: fuzz/seeds.py [--mock PATH] [--store-bin PATH]. Replaces the
corpora it writes; seeds over a target's max_len (scripts/fuzz) are left
out. The mock binary defaults to target/debug/tollgate-mock (built by
`cargo build -p tollgate-mock`); without it, answers come from fixtures only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"

# Keep in step with MAX_LEN in scripts/fuzz.
MAX_LEN = {
    "request": 65536,
    "plan": 16384,
    "sse_stream": 8192,
    "translate": 8192,
    "json_usage": 16384,
    "replay": 16384,
    "tenant_config": 16384,
    "plugin_config": 32768,
    "store": 65536,
}

seeds: dict[str, dict[str, bytes]] = {t: {} for t in MAX_LEN}


def add(target: str, data: bytes) -> None:
    if len(data) <= MAX_LEN[target]:
        seeds[target][hashlib.sha1(data).hexdigest()[:16]] = data


def split_header(flags: int, body: bytes, cuts: int = 3) -> bytes:
    """`[flags][k][k x u16 LE][body]`: cut points spread over the body."""
    n = len(body)
    offsets = [(n * (i + 1)) // (cuts + 1) for i in range(cuts)]
    return bytes([flags, cuts]) + b"".join(struct.pack("<H", o & 0xFFFF) for o in offsets) + body


def body_bytes(spec: dict) -> bytes | None:
    if "json" in spec:
        return json.dumps(spec["json"], ensure_ascii=False).encode()
    if "text" in spec:
        return spec["text"].encode()
    if "base64" in spec:
        return base64.b64decode(spec["base64"])
    if "repeat" in spec:
        rep = spec["repeat"].encode()
        if "bytes" in spec:
            n = spec["bytes"]
            if n > 70000:
                return None
            middle = (rep * (n // max(len(rep), 1) + 1))[:n]
        else:
            if spec["times"] * len(rep) > 70000:
                return None
            middle = rep * spec["times"]
        return spec.get("prefix", "").encode() + middle + spec.get("suffix", "").encode()
    return None


def merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base.get(k), v)
        return out
    return patch


# ---- requests ------------------------------------------------------------

def requests() -> list[tuple[str, bytes]]:
    """(api, body) pairs."""
    out = []
    vectors = json.loads((ROOT / "tests/vectors/decisions.json").read_text())
    for case in vectors["cases"]:
        b = body_bytes(case["body"])
        if b is not None:
            out.append((case["api"], b))
    bad = json.loads((ROOT / "tests/vectors/bad_input.json").read_text())
    for case in bad["cases"]:
        b = body_bytes(case.get("body", {}))
        if b is not None:
            api = "anthropic" if case.get("path", "").endswith("/messages") else "openai"
            out.append((api, b))
    for name in ["workload.jsonl", "requests.jsonl"]:
        for line in (ROOT / "examples" / name).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out.append((row.get("api", "openai"), json.dumps(row["request"]).encode()))
    out.append(("openai", (ROOT / "examples/request-hard.json").read_bytes()))
    return out


def seed_requests(reqs: list[tuple[str, bytes]]) -> None:
    for i, (api, body) in enumerate(reqs):
        add("request", body)
        for direction in range(4):
            add("translate", split_header(direction, body, cuts=0))
        a = 1 if api == "anthropic" else 0
        # Vary the plan switches over the cases (no-store, tenant, fallback,
        # length, twice) so each shows up in the corpus.
        add("plan", bytes([a]) + body)
        add("plan", bytes([a | ((i * 2) & 0x3E)]) + body)


# ---- provider answers ----------------------------------------------------

def rust_string_consts(path: Path) -> dict[str, str]:
    """`const NAME: &str = concat!(...)` / `= "..."` / `= r#"..."#` in a Rust file."""
    text = path.read_text()
    out = {}
    lit = r'r#"(?:.|\n)*?"#|"(?:\\.|[^"\\])*"'
    for m in re.finditer(r'const (\w+): &str = (concat!\(((?:\s*(?:' + lit + r')\s*,?)*)\s*\)|' + lit + r');', text):
        body = m.group(3) if m.group(3) is not None else m.group(2)
        parts = re.findall(lit, body)
        out[m.group(1)] = "".join(rust_literal(p) for p in parts)
    return out


def rust_literal(p: str) -> str:
    if p.startswith('r#"'):
        return p[3:-2]
    s = p[1:-1]
    s = re.sub(r"\\u\{([0-9a-fA-F]+)\}", lambda m: chr(int(m.group(1), 16)), s)
    return s.replace("\\n", "\n").replace("\\r", "\r").replace("\\t", "\t").replace('\\"', '"').replace("\\\\", "\\")


def start_mock(path: Path):
    proc = subprocess.Popen([str(path), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening "):
        proc.kill()
        raise SystemExit(f"mock did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def call(base: str, path: str, body: dict, fault: str | None) -> tuple[int, bytes]:
    headers = {"content-type": "application/json", "authorization": "Bearer x", "x-api-key": "x"}
    if fault:
        headers["x-mock-fault"] = fault
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception:  # a cut stream ends the connection early
        return 0, b""


def mock_answers(mock: Path) -> list[tuple[str, bool, bytes]]:
    """(api, stream, body) answers recorded from the mock."""
    if not mock.exists():
        print(f"seeds: {mock} not built (cargo build -p tollgate-mock): no recorded answers", file=sys.stderr)
        return []
    proc, base = start_mock(mock)
    out = []
    prompts = [
        "What is the capital of France?",
        "Write a Python function that merges two sorted lists, then prove it runs in linear time, step by step.",
        "Résumé en français, s'il vous plaît: 😀 世界",
    ]
    faults = [None, "answer:length", "answer:empty", "answer:refusal", "answer:bad_json", "status:429", "status:500"]
    try:
        for api, path, model in [("openai", "/v1/chat/completions", "gpt-4o-mini"),
                                 ("anthropic", "/v1/messages", "claude-3-5-haiku-latest")]:
            for i, prompt in enumerate(prompts):
                for stream in [False, True]:
                    for fault in faults if i == 0 else [None]:
                        body = {"model": model, "max_tokens": 64 + 200 * i,
                                "messages": [{"role": "user", "content": prompt}]}
                        if stream:
                            body["stream"] = True
                            if api == "openai" and i != 1:
                                body["stream_options"] = {"include_usage": True}
                        status, answer = call(base, path, body, fault)
                        if answer:
                            out.append((api, stream and status == 200, answer))
            # A stream the mock cuts off part-way.
            body = {"model": model, "max_tokens": 200, "stream": True,
                    "messages": [{"role": "user", "content": prompts[1]}]}
            status, answer = call(base, path, body, "drop_after:3")
            if answer:
                out.append((api, True, answer))
    finally:
        proc.kill()
        proc.wait()
    return out


def seed_answers(answers: list[tuple[str, bool, bytes]]) -> None:
    consts = rust_string_consts(ROOT / "crates/tollgate-core/src/response/sse.rs")
    streams = [(("anthropic" if "ANTHROPIC" in k else "openai"), v.encode()) for k, v in consts.items()
               if k.endswith("STREAM")]
    for api, stream, body in answers:
        if stream:
            streams.append((api, body))
    for i, (api, s) in enumerate(streams):
        a = 1 if api == "anthropic" else 0
        variants = [s, s.replace(b"\n", b"\r\n"), s.replace(b"\n", b"\r")] if i < 4 else [s]
        for j, v in enumerate(variants):
            # bit 1: strip the usage chunk (OpenAI); bit 2: small assembly bound.
            add("sse_stream", split_header(a | (2 if (i + j) % 2 else 0) | (4 if (i + j) % 5 == 4 else 0), v))
            # bit 2: the provider's API; bits 3-4: each client API in turn; bit 5: usage asked.
            add("translate", split_header((a << 2) | (((i + j) % 3) << 3) | (32 if i % 2 else 0), v))
        if i == 0:
            add("sse_stream", split_header(a, b"\xef\xbb\xbf" + s, cuts=1))
    for api, stream, body in answers:
        if stream:
            continue
        a = 1 if api == "anthropic" else 0
        add("json_usage", bytes([a]) + body)
        add("replay", split_header(a | 2, body, cuts=2))
        try:
            value = json.loads(body)
        except ValueError:
            continue
        if isinstance(value, dict) and ("choices" in value or "content" in value):
            add("replay", split_header(a, body, cuts=2))
            usage = value.get("usage") or {}
            entry = {"api": api, "model": value.get("model", "m"), "stored_at": 1_795_000_000,
                     "expires_at": 1_795_003_600, "usage": None if not usage else {
                         "input_tokens": usage.get("prompt_tokens", usage.get("input_tokens", 0)),
                         "cached_input_tokens": 0, "cache_write_input_tokens": 0,
                         "output_tokens": usage.get("completion_tokens", usage.get("output_tokens", 0))},
                     "cost_micros": 42, "body": value}
            add("replay", split_header(a | 2, json.dumps(entry).encode(), cuts=2))


# ---- configs -------------------------------------------------------------

def seed_configs() -> None:
    tenants = [json.loads((ROOT / "examples" / n).read_text()) for n in ["tenant.json", "tenant-globex.json"]]
    vectors = json.loads((ROOT / "tests/vectors/decisions.json").read_text())
    tenants += [t["config"] for t in vectors["tenants"].values()]
    bad = json.loads((ROOT / "tests/vectors/bad_input.json").read_text())
    tenants.append(merge(json.loads((ROOT / bad["tenant"]["based_on"]).read_text()), bad["tenant"]["changes"]))
    for t in tenants:
        add("tenant_config", json.dumps(t, indent=2).encode())
    add("tenant_config", (ROOT / "examples/tenant.json").read_bytes())

    sys.path.insert(0, str(ROOT / "envoy"))
    import yaml  # noqa: PLC0415
    import render  # noqa: PLC0415
    plugins = []
    for f in sorted((ROOT / "envoy").rglob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            try:
                plugins += render.plugin_configs(doc)
            except Exception:  # noqa: BLE001
                pass
            spec = (doc or {}).get("spec", {}) if isinstance(doc, dict) else {}
            if isinstance(spec, dict) and isinstance(spec.get("pluginConfig"), dict):
                plugins.append(spec["pluginConfig"])
    keys = {}
    for tid, t in vectors["tenants"].items():
        for k in t.get("keys", []):
            keys[hashlib.sha256(k["key"].encode()).hexdigest()] = {"tenant_id": tid, "disabled": k.get("disabled", False)}
    plugins.append({"tenants": {tid: t["config"] for tid, t in vectors["tenants"].items()}, "api_keys": keys})
    plugins.append({"tenants": {tid: t["config"] for tid, t in vectors["tenants"].items()}, "api_keys": keys,
                    "providers": {"openai": {"cluster": "openai", "authority": "api.openai.com", "path_prefix": "/v1"}},
                    "state": {"budgets": "redis", "cache": "redis", "redis": {"cluster": "webdis", "timeout_ms": 250}},
                    "upstream_timeout_ms": 30000})
    for p in plugins:
        for t in p.get("tenants", {}).values():
            add("tenant_config", json.dumps(t).encode())
        add("plugin_config", json.dumps(p).encode())


# ---- store ---------------------------------------------------------------

def seed_store(store_bin: Path) -> None:
    if not store_bin.exists():
        print(f"seeds: {store_bin} not built (cargo +nightly fuzz build): no store seeds", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        gen = Path(tmp) / "in"
        gen.mkdir()
        # Generation 0: the default batch over an empty store, at a few times.
        for flags in [0, 1, 2, 3, 8, 9, 40, 41]:
            (gen / f"g0-{flags}").write_bytes(bytes([flags]) + b"not a batch")
        for g in range(3):
            out = Path(tmp) / f"out{g}"
            out.mkdir()
            files = sorted(str(p) for p in gen.iterdir())
            subprocess.run([str(store_bin), "-runs=0", *files], env={**os.environ, "TOLLGATE_FUZZ_DUMP": str(out)},
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for p in out.iterdir():
                add("store", p.read_bytes())
            gen = out
    # Regressions (crates/tollgate-core/tests/fuzz_regressions.rs): a bucket
    # at the last minute there is; outcome counters at their maximum.
    m = 2**64 - 1
    add("store", b"\x00x\x00" + json.dumps({"windows": [{"name": "hourly", "window": "rolling_hour", "period_start": 0,
        "spent": {"tokens": 1, "micros": 1}, "buckets": [{"minute": m, "spent": {"tokens": 1, "micros": 1}}]}],
        "outstanding": [], "recently_settled": []}).encode())
    add("store", b"\x00x\x00\x00" + json.dumps({"tiers": [{"tier": "cheap", "requests": m, "resolved": m,
        "unresolved": m, "tokens": m, "micros": m, "escalations": m, "fallbacks": m, "cache_hits": m,
        "cache_saved_micros": m}], "next_slot": 0}).encode())
    # Stored values that need migrating or are damaged.
    add("store", b"\x00\x00" + b'{"windows":[],"outstanding":[],"recently_settled":["req_1","req_2",7]}')
    add("store", b"\x00\x00{broken\x00{\"tiers\":[],\"next_slot\":5000}\x00[null,null]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mock", type=Path, default=ROOT / "target/debug/tollgate-mock")
    ap.add_argument("--store-bin", type=Path,
                    default=ROOT / "fuzz/target/x86_64-unknown-linux-gnu/release/store")
    args = ap.parse_args()
    seed_requests(requests())
    seed_answers(mock_answers(args.mock))
    seed_configs()
    seed_store(args.store_bin)
    # Inputs that once failed a target, kept as seeds (fuzz/regressions/<target>/).
    for f in sorted((ROOT / "fuzz/regressions").glob("*/*")):
        add(f.parent.name, f.read_bytes())
    for target, files in seeds.items():
        d = CORPUS / target
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
        print(f"{target:14} {len(files):4} seeds  {sum(map(len, files.values())):8} bytes")


if __name__ == "__main__":
    main()
