# Shared helpers for scripts/*. Source it; do not run it.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export ROOT
cd "$ROOT"

# Where evaluation data lives in CI and on developers' machines. A user's
# clone has no ../shared; checks that need it say so and skip.
export TOLLGATE_SHARED_DIR="${TOLLGATE_SHARED_DIR:-$ROOT/../shared}"

# Each step header carries the minutes and seconds since the script began
# (bash's SECONDS), so a slow CI run shows where its time went.
step() { printf '\n\033[1m== %s\033[0m  [%dm%02ds]\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }
note() { printf '   %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The toolchain and wasm targets pinned in rust-toolchain.toml. rustup
# installs the pinned toolchain on first use; the targets are added
# explicitly because a fresh machine has only the host target.
ensure_rust() {
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
  local have
  have="$(rustup target list --installed 2>/dev/null || true)"
  if ! grep -q wasm32-unknown-unknown <<<"$have" || ! grep -q wasm32-wasip1 <<<"$have"; then
    note "adding wasm targets"
    rustup target add wasm32-unknown-unknown wasm32-wasip1 >/dev/null
  fi
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null
}

ensure_nextest() {
  if ! cargo nextest --version >/dev/null 2>&1; then
    note "installing cargo-nextest (one-off)"
    cargo install cargo-nextest --locked >/dev/null
  fi
}

# Node runs the wasm32-wasip1 test binaries (node:wasi), so the core's
# unit tests also run as wasm.
ensure_node() {
  command -v node >/dev/null || die "node not found: install Node.js 20+"
}
