// Runs one wasm32-wasip1 program under Node's WASI (preview1); used by
// scripts/wasi-runner.mjs, which runs it as a child process. Kept at the
// top level of its own module: the same code inside a block of the runner
// made node 20 crash mid-run on the token counter's tests.
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
