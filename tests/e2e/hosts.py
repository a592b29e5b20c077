"""Processes the end-to-end tests and scripts/measure-worker run: the mock
upstream (`tollgate-mock`), `wrangler dev` (the Worker, or the pass-through
Worker in tests/passthrough), and the wrangler KV commands that seed tenant
configs and API keys exactly as the README tells a user to.

Nothing here skips: a missing prerequisite raises `Missing` with what to run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
WRANGLER = ROOT / "node_modules" / ".bin" / "wrangler"
WORKER_CONFIG = ROOT / "wrangler.toml"
WORKER_BUILD = ROOT / "build"
PASSTHROUGH_CONFIG = ROOT / "tests" / "passthrough" / "wrangler.toml"
CONFIG_BINDING = "TOLLGATE_CONFIG"
CACHE_BINDING = "TOLLGATE_CACHE"

# The mock stands in for every provider; each gets its own path prefix so
# the mock's request log shows which base URL the Worker used.
PROVIDERS = ("openai", "anthropic", "google", "mistral", "workers_ai")

# Tenants seeded before the Worker starts. acme (examples/tenant.json) is
# written with `wrangler kv key put`, the command the README documents; the
# rest go in one `wrangler kv bulk put` (each wrangler call takes ~3 s).
ACME_KEY = "tg-e2e-acme-key"
GLOBEX_KEY = "tg-e2e-globex-key"


class Missing(RuntimeError):
    """A prerequisite (a build, a binary, node_modules) is not there."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def example(name: str) -> dict:
    return json.loads((ROOT / "examples" / name).read_text())


def log_tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the test process dies, even
    by SIGKILL, so no wrangler dev outlives a killed pytest (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _popen(argv: list[str], log: Path, *, cwd: Path = ROOT, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start `argv` in its own process group (so stop() reaches wrangler's
    workerd and esbuild children), stdout+stderr to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def stop_group(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    if proc is None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        proc.wait()
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; children (workerd) may linger a moment.
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
    proc.wait()


# ---------------------------------------------------------------- mock


@dataclass
class Mock:
    """The mock upstream process and a client for its /__mock/ control API."""

    url: str
    proc: subprocess.Popen
    log: Path
    client: httpx.Client = field(repr=False)

    @classmethod
    def start(cls, binary: Path, log: Path, *, latency_ms: int = 0, timeout: float = 15.0) -> Mock:
        if not binary.is_file():
            raise Missing(f"mock binary {binary} not found: run `cargo build -p tollgate-mock` (scripts/test does)")
        argv = [str(binary), "--listen", "127.0.0.1:0"]
        if latency_ms:
            argv += ["--latency-ms", str(latency_ms)]
        proc = _popen(argv, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"^listening (http://\S+)$", log.read_text(errors="replace"), re.M)
            if found:
                url = found.group(1)
                return cls(url=url, proc=proc, log=log, client=httpx.Client(base_url=url, timeout=10))
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        stop_group(proc)
        raise RuntimeError(f"tollgate-mock did not print its `listening` line:\n{log_tail(log)}")

    def base_url(self, provider: str) -> str:
        """The base URL the Worker gets for `provider`, e.g. <mock>/openai/v1."""
        return f"{self.url}/{provider}/v1"

    def faults(self, fault: str, *, model: str | None = None, times: int | None = None) -> None:
        """Add a fault rule: `status:429`, `status:500`, `status:503`, `slow:<ms>`,
        `chunk_delay:<ms>`, `drop_after:<n>`; `model` None = any model,
        `times` None = forever."""
        r = self.client.post("/__mock/faults", json={"model": model, "fault": fault, "times": times})
        r.raise_for_status()

    def clear_faults(self) -> None:
        self.client.delete("/__mock/faults").raise_for_status()

    def requests(self) -> list[dict]:
        """Recorded API requests: {seq, path, model, stream, headers, body,
        completed, client_aborted}."""
        r = self.client.get("/__mock/requests")
        r.raise_for_status()
        return r.json()

    def clear_requests(self) -> None:
        self.client.delete("/__mock/requests").raise_for_status()

    def reset(self) -> None:
        self.clear_faults()
        self.clear_requests()

    def stop(self) -> None:
        self.client.close()
        stop_group(self.proc)


# ---------------------------------------------------------------- wrangler


def wrangler_env(log_dir: Path) -> dict[str, str]:
    return {
        "WRANGLER_SEND_METRICS": "false",
        "WRANGLER_SEND_ERROR_REPORTS": "false",
        # wrangler's own debug logs, kept with the test run's logs instead of
        # ~/.config/.wrangler/logs.
        "WRANGLER_LOG_PATH": str(log_dir),
        "NO_COLOR": "1",
        "FORCE_COLOR": "0",
    }


def require_wrangler() -> Path:
    if not os.access(WRANGLER, os.X_OK):
        raise Missing(f"{WRANGLER} not found: run `npm ci` in {ROOT} (scripts/test does)")
    return WRANGLER


def require_worker_build() -> None:
    """The Worker bundle wrangler.toml points at must exist and be newer than
    the Rust sources it is built from (a stale bundle tests old code)."""
    wasm = WORKER_BUILD / "index_bg.wasm"
    shim = WORKER_BUILD / "worker" / "shim.mjs"
    for path in (wasm, shim):
        if not path.is_file():
            raise Missing(f"{path} not found: run scripts/build-worker (scripts/test does)")
    if os.environ.get("TOLLGATE_ALLOW_STALE_BUILD") == "1":
        return
    built = wasm.stat().st_mtime
    sources = [ROOT / "Cargo.lock"]
    # The Worker's crates (a test-only edit under tests/ does not count).
    for crate in ("tollgate-worker", "tollgate-core", "tollgate-tokens"):
        sources += (ROOT / "crates" / crate / "src").rglob("*")
        sources.append(ROOT / "crates" / crate / "Cargo.toml")
    newer = [p for p in sources if p.is_file() and p.stat().st_mtime > built]
    if newer:
        names = ", ".join(str(p.relative_to(ROOT)) for p in newer[:5])
        raise Missing(
            f"build/ is older than {names}: run scripts/build-worker "
            "(or set TOLLGATE_ALLOW_STALE_BUILD=1 to test the old bundle)"
        )


def prebuilt_config(config: Path, out_dir: Path) -> Path:
    """`config` as `wrangler dev`/`deploy` should see it when the Worker is
    already built: the same file without its `[build]` table (wrangler dev
    would run that custom build twice, ~30 s, on every start) and with `main`
    made absolute, written into `out_dir`. A config without `[build]` comes
    back unchanged."""
    text = config.read_text()
    parsed = tomllib.loads(text)
    if "build" not in parsed:
        return config
    if "main" not in parsed:
        raise RuntimeError(f"{config} has no `main`")
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        header = re.match(r"\s*\[\[?\s*([A-Za-z0-9_.\-\"]+)\s*\]\]?", line)
        if header:
            name = header.group(1).strip('"')
            skipping = name == "build" or name.startswith("build.")
        if skipping:
            continue
        if not header and re.match(r"\s*main\s*=", line) and not kept_has_table(kept):
            line = f"main = {json.dumps(str((config.parent / parsed['main']).resolve()))}"
        kept.append(line)
    derived = "\n".join(kept) + "\n"
    check = tomllib.loads(derived)
    if "build" in check or check.get("main") != str((config.parent / parsed["main"]).resolve()):
        raise RuntimeError(f"could not derive a build-less config from {config}")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "wrangler.toml"
    out.write_text(
        f"# Derived from {config} by tests/e2e/hosts.py: no [build], absolute main.\n" + derived
    )
    return out


def kept_has_table(lines: list[str]) -> bool:
    """Whether a table header came before: `main` is a top-level key only."""
    return any(re.match(r"\s*\[", line) for line in lines)


@dataclass
class Kv:
    """`wrangler kv` against the local state `wrangler dev --persist-to <dir>` uses.

    Works before and while `wrangler dev` runs: a put is visible to the
    Worker's next request (with CONFIG_CACHE_SECONDS=0, also past its memo).
    Each call starts wrangler (~3 s), so batch with bulk_put."""

    config: Path
    persist_to: Path
    log_dir: Path
    binding: str = CONFIG_BINDING

    def _run(self, *args: str) -> str:
        argv = [
            str(require_wrangler()),
            "kv",
            *args,
            "--binding",
            self.binding,
            "--local",
            "--persist-to",
            str(self.persist_to),
            "--config",
            str(self.config),
        ]
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env={**os.environ, **wrangler_env(self.log_dir)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def put(self, key: str, value: str | dict) -> None:
        """`wrangler kv key put KEY VALUE`; a long value (a tenant config) goes
        through `--path FILE`, as the README shows for examples/tenant.json."""
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) <= 512:
            self._run("key", "put", key, text)
            return
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir=self.log_dir, delete=False) as f:
            f.write(text)
        try:
            self._run("key", "put", key, "--path", f.name)
        finally:
            os.unlink(f.name)

    def bulk_put(self, entries: Mapping[str, str | dict]) -> None:
        """`wrangler kv bulk put FILE` with [{"key":..., "value": "<string>"}]."""
        if not entries:
            return
        items = [{"key": k, "value": v if isinstance(v, str) else json.dumps(v)} for k, v in entries.items()]
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir=self.log_dir, delete=False) as f:
            json.dump(items, f)
        try:
            self._run("bulk", "put", f.name)
        finally:
            os.unlink(f.name)

    def get(self, key: str) -> str | None:
        """`wrangler kv key get KEY`: the stored text, None when absent (wrangler
        prints "Value not found" and exits 0)."""
        out = self._run("key", "get", key)
        return None if out.rstrip("\n") == "Value not found" else out

    def delete(self, key: str) -> None:
        self._run("key", "delete", key)

    def list(self, prefix: str | None = None) -> list[str]:
        """`wrangler kv key list [--prefix PREFIX]`: every key name, in order."""
        out = self._run("key", "list", *(["--prefix", prefix] if prefix else []))
        return [entry["name"] for entry in json.loads(out)]

    def bulk_get(self, keys: Iterable[str]) -> dict[str, str | None]:
        """`wrangler kv bulk get FILE`, 100 keys per call: each key's stored
        text, None for a key that is not there."""
        keys = list(keys)
        found: dict[str, str | None] = {}
        for start in range(0, len(keys), 100):
            with tempfile.NamedTemporaryFile("w", suffix=".json", dir=self.log_dir, delete=False) as f:
                json.dump(keys[start : start + 100], f)
            try:
                # The JSON object, then wrangler's "Success!" line.
                out, _ = json.JSONDecoder().raw_decode(self._run("bulk", "get", f.name).lstrip())
            finally:
                os.unlink(f.name)
            for key in keys[start : start + 100]:
                entry = out.get(key)
                found[key] = entry["value"] if isinstance(entry, dict) else entry
        return found

    def for_binding(self, binding: str) -> Kv:
        """The same local state, another KV namespace of the Worker (e.g. CACHE_BINDING)."""
        return dataclasses.replace(self, binding=binding)


def tenant_entries(
    tenant_config: dict, api_keys: Iterable[str | Mapping], *, label: str | None = None
) -> dict[str, dict]:
    """KV entries for one tenant: `tenant:<id>` and one `apikey:<sha256 hex>`
    record per key. A key is its secret, or a mapping `{"key": secret,
    "disabled": bool, "label": str | None}` (tests/e2e/tenants.py `key()`)."""
    tenant_id = tenant_config["tenant_id"]
    entries: dict[str, dict] = {f"tenant:{tenant_id}": tenant_config}
    for key in api_keys:
        spec = {"key": key} if isinstance(key, str) else key
        entries[f"apikey:{sha256_hex(spec['key'])}"] = {
            "tenant_id": tenant_id,
            "label": spec.get("label") or label or f"e2e {tenant_id}",
            "disabled": bool(spec.get("disabled", False)),
        }
    return entries


def seed_tenant(
    kv: Kv, tenant_config: dict, api_keys: list[str | Mapping], *, label: str | None = None, one_by_one: bool = False
) -> None:
    """Write a tenant's config and API-key records. `one_by_one` uses
    `wrangler kv key put` per key (the README's path); otherwise one
    `wrangler kv bulk put`."""
    entries = tenant_entries(tenant_config, api_keys, label=label)
    if one_by_one:
        for key, value in entries.items():
            kv.put(key, value)
    else:
        kv.bulk_put(entries)


# ---------------------------------------------------------------- wrangler dev


@dataclass
class WranglerDev:
    """`wrangler dev --local` on a free port, with local KV/DO state in `persist_to`."""

    url: str
    port: int
    proc: subprocess.Popen
    log: Path
    started: float  # time.monotonic() when the process was started
    ready_after: float  # seconds from start to the first 200 from the ready path

    @classmethod
    def start(
        cls,
        config: Path,
        persist_to: Path,
        log_dir: Path,
        *,
        name: str = "wrangler",
        variables: Mapping[str, str] | None = None,
        ready_path: str | None = "/healthz",
        timeout: float = 90.0,
    ) -> WranglerDev:
        """Start and wait for a 200 on `ready_path`; with `ready_path=None`
        return at once (the caller times its own first request)."""
        wrangler = require_wrangler()
        port = free_port()
        argv = [
            str(wrangler),
            "dev",
            "--config",
            str(config),
            "--local",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            # Explicit, so two wrangler devs (Worker and pass-through) never
            # race for the default 9229.
            "--inspector-port",
            str(free_port()),
            "--persist-to",
            str(persist_to),
            "--show-interactive-dev-session=false",
            "--log-level",
            "info",
        ]
        for k, v in (variables or {}).items():
            argv += ["--var", f"{k}:{v}"]
        log = log_dir / f"{name}.log"
        started = time.monotonic()
        proc = _popen(argv, log, cwd=config.parent, env=wrangler_env(log_dir))
        url = f"http://127.0.0.1:{port}"
        if ready_path is None:
            return cls(url=url, port=port, proc=proc, log=log, started=started, ready_after=float("nan"))
        deadline = started + timeout
        last = "no answer"
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    last = f"wrangler exited with {proc.returncode}"
                    break
                try:
                    r = client.get(url + ready_path)
                    if r.status_code == 200:
                        return cls(url=url, port=port, proc=proc, log=log, started=started,
                                   ready_after=time.monotonic() - started)
                    last = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    last = repr(e)
                time.sleep(0.05)
        stop_group(proc)
        raise RuntimeError(
            f"wrangler dev ({config}) gave no 200 on {ready_path} within {timeout:.0f}s (last: {last}).\n"
            f"--- {log} (tail) ---\n{log_tail(log)}"
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_group(self.proc)


def worker_vars(mock: Mock, **overrides: str) -> dict[str, str]:
    """The Worker's vars and provider secrets for a run against `mock`."""
    env: dict[str, str] = {}
    for provider in PROVIDERS:
        env[f"{provider.upper()}_BASE_URL"] = mock.base_url(provider)
        env[f"{provider.upper()}_API_KEY"] = f"sk-mock-{provider.replace('_', '-')}"
    env["CONFIG_CACHE_SECONDS"] = "0"
    env.update(overrides)
    return env


@dataclass
class Worker:
    """The tollgate Worker under `wrangler dev`, its local state and its KV."""

    dev: WranglerDev
    kv: Kv
    state: Path

    @property
    def url(self) -> str:
        return self.dev.url

    def seed_tenant(self, tenant_config: dict, api_keys: list[str], **kw) -> None:
        seed_tenant(self.kv, tenant_config, api_keys, **kw)

    def log_text(self) -> str:
        return self.dev.log_text()

    def stop(self) -> None:
        self.dev.stop()


def default_tenants() -> list[tuple[dict, list[str]]]:
    return [(example("tenant.json"), [ACME_KEY]), (example("tenant-globex.json"), [GLOBEX_KEY])]


def start_worker(
    mock: Mock,
    work_dir: Path,
    *,
    tenants: list[tuple[dict, list[str | Mapping]]] | None = None,
    extra_entries: Mapping[str, dict] | None = None,
    first_one_by_one: bool = True,
    variables: Mapping[str, str] | None = None,
    config: Path = WORKER_CONFIG,
) -> Worker:
    """Seed KV in a fresh state dir, then start the Worker with the mock as
    every provider. With `first_one_by_one` the first tenant is written with
    `wrangler kv key put` (one command per key, as the README shows); the
    others, and `extra_entries` (raw TOLLGATE_CONFIG records), with one bulk
    put. wrangler runs on `prebuilt_config(config)`: build/ is already there."""
    require_worker_build()
    require_wrangler()
    state = work_dir / "state"
    state.mkdir(parents=True, exist_ok=True)
    config = prebuilt_config(config, work_dir / "config")
    kv = Kv(config=config, persist_to=state, log_dir=work_dir)
    tenants = default_tenants() if tenants is None else tenants
    rest = list(tenants)
    if rest and first_one_by_one:
        first = rest.pop(0)
        seed_tenant(kv, first[0], first[1], one_by_one=True)
    bulk: dict[str, dict] = {}
    for cfg, keys in rest:
        bulk.update(tenant_entries(cfg, keys))
    bulk.update(extra_entries or {})
    kv.bulk_put(bulk)
    dev = WranglerDev.start(config, state, work_dir, name="worker", variables={**worker_vars(mock), **(variables or {})})
    return Worker(dev=dev, kv=kv, state=state)


def fresh_dir(prefix: str) -> Path:
    base = Path(os.environ.get("TOLLGATE_E2E_TMP") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
