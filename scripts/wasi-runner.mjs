// Cargo runner for wasm32-wasip1 test binaries: runs them under Node's WASI
// (preview1) so the core's unit tests execute as WebAssembly.
// Usage (set by scripts/test): CARGO_TARGET_WASM32_WASIP1_RUNNER="node scripts/wasi-runner.mjs"
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import process from "node:process";

const [, , wasmPath, ...args] = process.argv;
const wasi = new WASI({
  version: "preview1",
  args: [wasmPath, ...args],
  env: { RUST_BACKTRACE: "0" },
  // No preopened directories: tests that read ../shared skip cleanly in wasm.
  preopens: {},
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(wasmPath));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
const code = wasi.start(instance);
process.exit(code ?? 0);
