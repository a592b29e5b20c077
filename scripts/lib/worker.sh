# Cloudflare Worker toolchain and build. Source it after common.sh (which
# sets ROOT, step/note/die and ensure_rust); do not run it.
# shellcheck shell=bash

# Pinned versions. wasm-bindgen-cli has no pin here: it must equal the
# `wasm-bindgen` library version in Cargo.lock, which worker-build checks.
WORKER_BUILD_VERSION="0.8.7"
WORKER_CRATE_DIR="$ROOT/crates/tollgate-worker"
# wrangler.toml: main = "build/worker/shim.mjs"
WORKER_OUT_DIR="$ROOT/build"

# Wait while another `cargo install <crate>` runs (a concurrent script, or a
# one-off install started by hand): two installs of the same crate would
# build it twice and race on ~/.cargo/bin.
_wait_for_cargo_install() {
  local crate="$1" waited=0
  while pgrep -f "^[^ ]*cargo install ${crate}( |$)" >/dev/null 2>&1; do
    if [[ $waited -eq 0 ]]; then note "waiting for a running 'cargo install $crate' to finish"; fi
    waited=1
    sleep 5
  done
}

# The single version of the `wasm-bindgen` package in Cargo.lock.
wasm_bindgen_lock_version() {
  local versions
  versions="$(awk '
    /^\[\[package\]\]/ { name = "" }
    /^name = / { name = $3; gsub(/"/, "", name) }
    /^version = / && name == "wasm-bindgen" { v = $3; gsub(/"/, "", v); print v }
  ' "$ROOT/Cargo.lock")"
  [[ -n "$versions" ]] || die "Cargo.lock has no wasm-bindgen package (is crates/tollgate-worker a workspace member?)"
  [[ "$(wc -l <<<"$versions")" -eq 1 ]] || die "Cargo.lock has several wasm-bindgen versions: $(tr '\n' ' ' <<<"$versions")"
  printf '%s\n' "$versions"
}

# node_modules from package-lock.json (wrangler, and binaryen's wasm-opt),
# reinstalled with `npm ci` whenever the lockfile changed since the last one.
ensure_node_modules() {
  command -v npm >/dev/null || die "npm not found: install Node.js 20+"
  local stamp="$ROOT/node_modules/.tollgate-lock.sha256" want lock fd
  want="$(cat "$ROOT/package.json" "$ROOT/package-lock.json" | sha256sum | cut -d' ' -f1)"
  # Two scripts running at once must not both `npm ci` (each deletes
  # node_modules first): one waits for the other, then finds it current.
  lock="${TMPDIR:-/tmp}/tollgate-npm-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12).lock"
  exec {fd}>"$lock"
  flock "$fd"
  if [[ ! -x "$ROOT/node_modules/.bin/wrangler" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    note "npm ci (package-lock.json changed or node_modules missing)"
    (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
    printf '%s\n' "$want" >"$stamp"
  fi
  exec {fd}>&-
}

# worker-build, wasm-bindgen (the Cargo.lock version) and wasm-opt, all
# without downloads at build time: worker-build would otherwise fetch
# wasm-bindgen and wasm-opt from GitHub. Exports WASM_BINDGEN_BIN and
# WASM_OPT_BIN, which worker-build reads.
ensure_worker_toolchain() {
  ensure_node_modules

  if [[ "$(worker-build --version 2>/dev/null)" != "$WORKER_BUILD_VERSION" ]]; then
    _wait_for_cargo_install worker-build
    if [[ "$(worker-build --version 2>/dev/null)" != "$WORKER_BUILD_VERSION" ]]; then
      note "installing worker-build $WORKER_BUILD_VERSION (one-off, a few minutes)"
      cargo install worker-build --version "$WORKER_BUILD_VERSION" --quiet || die "cargo install worker-build failed"
    fi
  fi

  local bindgen
  bindgen="$(wasm_bindgen_lock_version)"
  if [[ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $bindgen" ]]; then
    _wait_for_cargo_install wasm-bindgen-cli
    if [[ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $bindgen" ]]; then
      note "installing wasm-bindgen-cli $bindgen (one-off, a few minutes)"
      # No --locked: the crates.io mirror can lack a version pinned in the
      # CLI's own lockfile, and the install then fails.
      cargo install wasm-bindgen-cli --version "$bindgen" --quiet || die "cargo install wasm-bindgen-cli failed"
    fi
  fi

  WASM_BINDGEN_BIN="$(command -v wasm-bindgen)"
  WASM_OPT_BIN="$ROOT/node_modules/.bin/wasm-opt"
  [[ -x "$WASM_OPT_BIN" ]] || die "$WASM_OPT_BIN missing: the binaryen npm package should provide it"
  export WASM_BINDGEN_BIN WASM_OPT_BIN
}

# A hash of everything the Worker bundle is built from: every file under a
# crate's src/ (include_str! and include_bytes! take any kind, e.g. the
# dashboard's HTML), its manifest, and the data files beside it.
worker_inputs_hash() {
  (
    cd "$ROOT"
    find crates/tollgate-worker crates/tollgate-core crates/tollgate-tokens -type f \
      \( -path '*/src/*' -o -name 'Cargo.toml' -o -name 'build.rs' -o -name '*.bin' -o -name '*.json' -o -name '*.txt' \) \
      -not -path '*/target/*' -print0 | sort -z | xargs -0 sha256sum
    sha256sum Cargo.toml Cargo.lock rust-toolchain.toml .cargo/config.toml package-lock.json
    printf 'worker-build %s\n' "$WORKER_BUILD_VERSION"
  ) | sha256sum | cut -d' ' -f1
}

# worker-build --release into $ROOT/build (build/index.js, build/index_bg.wasm,
# build/worker/shim.mjs), the paths wrangler.toml names.
build_worker() {
  [[ -f "$WORKER_CRATE_DIR/Cargo.toml" ]] || die "$WORKER_CRATE_DIR/Cargo.toml not found"
  [[ -n "${WASM_BINDGEN_BIN:-}" && -n "${WASM_OPT_BIN:-}" ]] || die "build_worker: run ensure_worker_toolchain first"
  # wrangler runs [build] on every `wrangler dev` and `wrangler deploy`, and
  # wasm-opt alone takes most of a minute; skip when nothing that goes into
  # the bundle changed since the last build.
  local stamp="$WORKER_OUT_DIR/.tollgate-inputs.sha256" want
  want="$(worker_inputs_hash)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$WORKER_OUT_DIR/worker/shim.mjs" && -f "$WORKER_OUT_DIR/index_bg.wasm" ]]; then
    note "build/ is up to date with the sources; not rebuilding"
    # The sources' contents match, but a file may have been touched (an
    # edit undone, a checkout): mark the bundle as new as them, or the
    # end-to-end suite's modification-time check calls it stale.
    find "$WORKER_OUT_DIR" -type f -exec touch {} +
    return 0
  fi
  (cd "$WORKER_CRATE_DIR" && worker-build --release --out-dir "$WORKER_OUT_DIR") || die "worker-build failed"
  printf '%s\n' "$want" >"$stamp"
  [[ -f "$WORKER_OUT_DIR/worker/shim.mjs" && -f "$WORKER_OUT_DIR/index_bg.wasm" ]] \
    || die "worker-build did not produce $WORKER_OUT_DIR/worker/shim.mjs and index_bg.wasm"
  note "built $(du -h "$WORKER_OUT_DIR/index_bg.wasm" | cut -f1) wasm, $(gzip -9c "$WORKER_OUT_DIR/index_bg.wasm" | wc -c | awk '{printf "%.0f KB", $1/1024}') gzipped"
}

# $ROOT/.venv with tests/requirements.txt, reinstalled only when that file
# changed (stamp file holds its hash).
ensure_test_venv() {
  command -v python3 >/dev/null || die "python3 not found: install Python 3.11+"
  local venv="$ROOT/.venv" req="$ROOT/tests/requirements.txt"
  local stamp="$venv/.tollgate-requirements.sha256" want lock fd
  lock="${TMPDIR:-/tmp}/tollgate-venv-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12).lock"
  exec {fd}>"$lock"
  flock "$fd"
  if [[ ! -x "$venv/bin/python" ]]; then
    note "creating $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  fi
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    note "pip install -r tests/requirements.txt"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" || die "pip install failed"
    printf '%s\n' "$want" >"$stamp"
  fi
  exec {fd}>&-
  export TOLLGATE_VENV="$venv"
}
