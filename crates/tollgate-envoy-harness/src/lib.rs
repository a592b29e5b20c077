//! An in-process proxy-wasm host for testing the compiled tollgate Envoy
//! filter (`target/wasm32-wasip1/release/tollgate_envoy.wasm`) without
//! Envoy.
//!
//! It runs the real `.wasm` on wasmtime and implements the host side of
//! proxy-wasm ABI 0.2.1 (what proxy-wasm 0.2.5 imports) plus the WASI
//! preview1 calls Envoy provides, following Envoy's semantics wherever a
//! filter could notice: request headers are writable only while the filter
//! holds them paused, bodies buffer while it pauses, shared data has
//! Envoy's compare-and-swap rules, counters refuse non-positive increments.
//! A call into an import the host lacks traps with a message naming it.
//!
//! ```no_run
//! use tollgate_envoy_harness::{Action, Host};
//! let mut host = Host::new(r#"{"tenants":{},"api_keys":{}}"#, &[("OPENAI_API_KEY", "sk-test")]);
//! assert!(host.configure(), "{}", host.log_text());
//! let mut s = host.stream();
//! let action = s.request_headers(&[(":method", "GET"), (":path", "/healthz"), (":authority", "gw")], true);
//! assert_eq!(action, Action::Pause);
//! assert_eq!(s.local_reply().map(|r| r.status), Some(200));
//! s.finish();
//! ```
//!
//! The `.wasm` path is `$TOLLGATE_ENVOY_WASM`, else
//! `$CARGO_TARGET_DIR/wasm32-wasip1/release/tollgate_envoy.wasm` (target dir
//! default: the workspace's `target/`). A missing file panics with the
//! command that builds it.
//!
//! Everything here is test tooling: a failure panics with the filter's
//! recent log lines, because a panic is how a test fails.

// Test tooling: panicking with a clear message is the point.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

mod abi;
mod state;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::{Engine, Instance, Linker, Module, Store, WasmParams, WasmResults};

use state::{Direction, HeaderMap, ROOT_CONTEXT_ID, Shared, SharedRef, Side, StreamState, VmState};
pub use state::{ForeignCall, HttpCall, LocalReply, LogLevel, LogLine, MetricType, StreamType};

/// What a filter callback returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Stop iteration (headers: Envoy `StopIteration`, since the filter is
    /// deployed with `allow_on_headers_stop_iteration`; body:
    /// `StopIterationAndBuffer`).
    Pause,
    /// Anything else the filter returned.
    Other(i32),
}

impl Action {
    fn from_abi(v: i32) -> Action {
        match v {
            0 => Action::Continue,
            1 => Action::Pause,
            other => Action::Other(other),
        }
    }
}

/// The workspace's target directory (`$CARGO_TARGET_DIR` or `target/`).
fn target_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Where the filter is read from: `$TOLLGATE_ENVOY_WASM`, else the
/// workspace's release build for wasm32-wasip1.
pub fn wasm_path() -> PathBuf {
    match std::env::var_os("TOLLGATE_ENVOY_WASM") {
        Some(path) => PathBuf::from(path),
        None => target_dir().join("wasm32-wasip1/release/tollgate_envoy.wasm"),
    }
}

/// The engine; with `TOLLGATE_HARNESS_PERFMAP=1` it writes
/// `/tmp/perf-<pid>.map`, so `perf report` names the filter's functions
/// (examples/profile_filter.rs).
fn engine() -> Engine {
    let mut config = wasmtime::Config::new();
    if std::env::var_os("TOLLGATE_HARNESS_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Engine::new(&config).unwrap_or_else(|e| panic!("tollgate-envoy-harness: no wasmtime engine: {e:?}"))
}

/// Compiled once per process and file version (a compile takes far longer
/// than a test), and kept on disk across processes: see [`compile_cached`].
fn load_module(path: &Path) -> (Engine, Module) {
    type Cache = Mutex<HashMap<PathBuf, (SystemTime, Engine, Module)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => panic!(
            "tollgate-envoy-harness: the Envoy filter {} is missing ({e}).\n\
             Build it first: `bash scripts/build-envoy` (or `cargo build -p tollgate-envoy --target wasm32-wasip1 \
             --release --locked`), or point TOLLGATE_ENVOY_WASM at a build.",
            path.display()
        ),
    };
    let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some((when, engine, module)) = cache.get(path)
        && *when == mtime
    {
        return (engine.clone(), module.clone());
    }
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("tollgate-envoy-harness: cannot read {}: {e}", path.display()));
    let engine = engine();
    let module = compile_cached(&engine, &bytes)
        .unwrap_or_else(|e| panic!("tollgate-envoy-harness: cannot compile {}: {e:?}", path.display()));
    for export in ["proxy_abi_version_0_2_1", "_initialize", "proxy_on_context_create", "memory"] {
        assert!(
            module.get_export(export).is_some(),
            "tollgate-envoy-harness: {} does not export `{export}`: not a proxy-wasm ABI 0.2.1 reactor module \
             (built with proxy-wasm 0.2.5 `main!`, crate-type cdylib?)",
            path.display()
        );
    }
    cache.insert(path.to_owned(), (mtime, engine.clone(), module.clone()));
    (engine, module)
}

/// Compiling the filter takes tens of seconds in a debug build of
/// Cranelift, and every test runs in its own process under nextest, so the
/// machine code is kept in `<target>/tollgate-envoy-harness/<hash>.cwasm`,
/// keyed by the module's bytes and the engine's compatibility hash. A lock
/// file lets one process compile while the others wait for its result.
fn compile_cached(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Module> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let dir = target_dir().join("tollgate-envoy-harness");
    let file = dir.join(format!("{:016x}.cwasm", hasher.finish()));
    if std::fs::create_dir_all(&dir).is_err() {
        return Module::new(engine, bytes);
    }
    let lock = std::fs::File::create(dir.join("compile.lock"));
    if let Ok(lock) = &lock {
        let _ = lock.lock();
    }
    if file.exists()
        && let Ok(module) = deserialize(engine, &file)
    {
        return Ok(module);
    }
    let module = Module::new(engine, bytes)?;
    if let Ok(serialized) = module.serialize() {
        // Older builds' code is of no further use.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "cwasm") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let tmp = file.with_extension(format!("{}.tmp", std::process::id()));
        if std::fs::write(&tmp, serialized).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
    Ok(module)
}

/// Loads machine code this harness compiled and serialized earlier.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, file: &Path) -> wasmtime::Result<Module> {
    // SAFETY: wasmtime runs deserialized bytes as machine code, so they must
    // come from `Module::serialize`. This file does: only compile_cached
    // writes into this directory (whole files, by rename), named by the
    // hash of the source module and of this engine's configuration; and
    // wasmtime itself refuses a file from another version or configuration.
    unsafe { Module::deserialize_file(engine, file) }
}

/// One VM (an Envoy worker thread's copy of the filter).
struct Vm {
    store: Store<VmState>,
    instance: Instance,
    next_context_id: u32,
    /// The root context of the current configuration: new streams' parent.
    root: u32,
    /// Set once the VM trapped: Envoy then fails every stream on it.
    failed: Option<String>,
}

impl Vm {
    fn call<P: WasmParams, R: WasmResults>(&mut self, name: &str, params: P) -> Result<R, String> {
        if let Some(why) = &self.failed {
            return Err(format!("worker {} already trapped earlier: {why}", self.store.data().worker));
        }
        let func = self
            .instance
            .get_typed_func::<P, R>(&mut self.store, name)
            .map_err(|e| format!("the filter has no usable export `{name}`: {e}"))?;
        let logged = self.store.data().shared.borrow().logs.len();
        func.call(&mut self.store, params).map_err(|e| {
            // The SDK's panic hook logs the panic at Critical just before the trap.
            let worker = self.store.data().worker;
            let shared = self.store.data().shared.borrow();
            let panic = shared.logs[logged..]
                .iter()
                .filter(|l| l.worker == worker && l.level == LogLevel::Critical)
                .map(|l| l.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let why = if panic.is_empty() {
                format!("trap in {name}: {e:?}")
            } else {
                format!("trap in {name}: {panic}\n{e:?}")
            };
            drop(shared);
            self.failed = Some(why.clone());
            why
        })
    }

    /// Runs a callback for `context_id` (it becomes the effective context).
    fn callback<P: WasmParams, R: WasmResults>(&mut self, context_id: u32, name: &str, params: P) -> Result<R, String> {
        self.store.data_mut().effective_context = context_id;
        self.call(name, params)
    }

    /// Deletes the root contexts that called `proxy_done` in the callback
    /// that just returned (Envoy defers their `on_delete` to then).
    fn delete_done_roots(&mut self) -> Result<(), String> {
        let done = std::mem::take(&mut self.store.data_mut().roots_done);
        for id in done {
            self.delete_root(id)?;
        }
        Ok(())
    }

    /// `on_delete` of a root context; Envoy cancels its pending callouts.
    fn delete_root(&mut self, id: u32) -> Result<(), String> {
        let r = self.callback::<i32, ()>(id, "proxy_on_delete", id as i32);
        let worker = self.store.data().worker;
        self.store.data_mut().roots.retain(|r| *r != id);
        let mut shared = self.store.data().shared.borrow_mut();
        shared.draining_roots.retain(|d| *d != (worker, id));
        shared.http_calls.retain(|c| !(c.worker == worker && c.context_id == id));
        r
    }
}

fn fail(shared: &SharedRef, worker: usize, what: &str) -> ! {
    let logs = shared.borrow().logs.iter().filter(|l| l.worker == worker).rev().take(30).cloned().collect::<Vec<_>>();
    let mut text = String::new();
    for line in logs.iter().rev() {
        text.push_str(&format!("\n  [{:?}] {}", line.level, line.message));
    }
    panic!("tollgate-envoy-harness: worker {worker}: {what}\nlast filter log lines:{text}");
}

/// An Envoy node running the filter: one or more VMs (workers) sharing
/// shared data, metrics, logs, clock and callouts.
pub struct Host {
    engine: Engine,
    module: Module,
    shared: SharedRef,
    workers: Vec<Rc<RefCell<Vm>>>,
    configured: Option<bool>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("workers", &self.workers.len()).field("configured", &self.configured).finish()
    }
}

impl Host {
    /// Loads the filter with this plugin configuration (the StringValue
    /// Envoy passes) and these environment variables (WASI environ, like
    /// `vm_config.environment_variables`), starts one VM (worker 0) and its
    /// root context. Call [`Host::configure`] next.
    pub fn new(plugin_config: &str, env: &[(&str, &str)]) -> Host {
        Host::with_wasm(&wasm_path(), plugin_config, env)
    }

    /// [`Host::new`] with the filter read from `wasm`.
    pub fn with_wasm(wasm: &Path, plugin_config: &str, env: &[(&str, &str)]) -> Host {
        let (engine, module) = load_module(wasm);
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let shared = Rc::new(RefCell::new(Shared::new(plugin_config.as_bytes().to_vec(), env)));
        let mut host = Host { engine, module, shared, workers: Vec::new(), configured: None };
        host.start_vm();
        host
    }

    /// A configured host; panics (with the filter's log) if the filter
    /// refuses the configuration.
    pub fn configured(plugin_config: &str, env: &[(&str, &str)]) -> Host {
        let mut host = Host::new(plugin_config, env);
        if !host.configure() {
            panic!("the filter refused its plugin configuration:\n{}", host.log_text());
        }
        host
    }

    fn start_vm(&mut self) -> usize {
        let worker = self.workers.len();
        let state = VmState {
            worker,
            shared: self.shared.clone(),
            effective_context: ROOT_CONTEXT_ID,
            streams: HashMap::new(),
            call_response: None,
            access_log_phase: false,
            in_configure: false,
            status: (0, String::new()),
            exit_code: None,
            roots: vec![ROOT_CONTEXT_ID],
            roots_done: Vec::new(),
        };
        let mut store = Store::new(&self.engine, state);
        let mut linker = Linker::new(&self.engine);
        abi::link(&mut linker).expect("linking host functions");
        abi::trap_unknown_imports(&mut linker, &mut store, &self.module)
            .unwrap_or_else(|e| panic!("tollgate-envoy-harness: {e}"));
        let instance = linker
            .instantiate(&mut store, &self.module)
            .unwrap_or_else(|e| fail(&self.shared, worker, &format!("instantiation failed: {e:?}")));
        let mut vm = Vm { store, instance, next_context_id: ROOT_CONTEXT_ID + 1, root: ROOT_CONTEXT_ID, failed: None };
        if let Err(e) = vm.call::<(), ()>("_initialize", ()) {
            fail(&self.shared, worker, &e);
        }
        if let Err(e) = vm.callback::<(i32, i32), ()>(ROOT_CONTEXT_ID, "proxy_on_context_create", (1, 0)) {
            fail(&self.shared, worker, &e);
        }
        let vm_config_len = self.shared.borrow().vm_config.len() as i32;
        vm.store.data_mut().in_configure = true;
        let started = vm.callback::<(i32, i32), i32>(ROOT_CONTEXT_ID, "proxy_on_vm_start", (1, vm_config_len));
        vm.store.data_mut().in_configure = false;
        match started {
            Ok(0) => fail(&self.shared, worker, "proxy_on_vm_start returned false"),
            Ok(_) => {}
            Err(e) => fail(&self.shared, worker, &e),
        }
        self.workers.push(Rc::new(RefCell::new(vm)));
        worker
    }

    fn configure_vm(&self, worker: usize) -> bool {
        let mut vm = self.workers[worker].borrow_mut();
        let len = self.shared.borrow().plugin_config.len() as i32;
        let root = vm.root;
        vm.store.data_mut().in_configure = true;
        let result = vm.callback::<(i32, i32), i32>(root, "proxy_on_configure", (root as i32, len));
        vm.store.data_mut().in_configure = false;
        match result {
            Ok(ok) => ok != 0,
            Err(e) => {
                drop(vm);
                fail(&self.shared, worker, &e)
            }
        }
    }

    /// `proxy_on_configure` on every worker; true if all accepted. (A trap
    /// panics: Envoy would refuse the listener, but a filter should refuse,
    /// not crash.)
    pub fn configure(&mut self) -> bool {
        // Every worker is configured, even after one refuses (as Envoy does).
        let results: Vec<bool> = (0..self.workers.len()).map(|w| self.configure_vm(w)).collect();
        let ok = results.iter().all(|ok| *ok);
        self.configured = Some(ok);
        ok
    }

    /// Replaces the plugin configuration (call [`Host::configure`] after).
    pub fn set_plugin_config(&self, plugin_config: &str) {
        self.shared.borrow_mut().plugin_config = plugin_config.as_bytes().to_vec();
    }

    /// A configuration change as Envoy makes it for a listener or ECDS
    /// update of the plugin configuration (same VM configuration and code):
    /// every VM stays, and gets a new root context (`on_context_create`,
    /// `on_vm_start`, `on_configure`) for `plugin_config`; new streams are
    /// its. The old root context stays alive until [`Host::retire_root`]
    /// (Envoy: once the last stream of the old configuration has ended).
    /// True if every worker accepted the configuration.
    pub fn reconfigure(&mut self, plugin_config: &str) -> bool {
        self.set_plugin_config(plugin_config);
        let mut ok = true;
        for worker in 0..self.workers.len() {
            let mut vm = self.workers[worker].borrow_mut();
            let id = vm.next_context_id;
            vm.next_context_id += 1;
            vm.store.data_mut().roots.push(id);
            let vm_config_len = self.shared.borrow().vm_config.len() as i32;
            vm.store.data_mut().in_configure = true;
            let started = vm
                .callback::<(i32, i32), ()>(id, "proxy_on_context_create", (id as i32, 0))
                .and_then(|()| vm.callback::<(i32, i32), i32>(id, "proxy_on_vm_start", (id as i32, vm_config_len)));
            vm.store.data_mut().in_configure = false;
            match started {
                Ok(0) => ok = false,
                Ok(_) => {}
                Err(e) => {
                    drop(vm);
                    fail(&self.shared, worker, &e)
                }
            }
            vm.root = id;
            drop(vm);
            ok &= self.configure_vm(worker);
        }
        self.configured = Some(ok);
        ok
    }

    /// The root contexts alive on a worker, oldest first (the last one is
    /// the current configuration's).
    pub fn root_contexts(&self, worker: usize) -> Vec<u32> {
        self.workers[worker].borrow().store.data().roots.clone()
    }

    /// Envoy is done with root context `root` of `worker` (the last stream
    /// of its configuration ended): `on_done`; if the filter says it is
    /// done, `on_delete` at once (its pending callouts are cancelled) and
    /// true; otherwise the root context stays, keeps its ticks and callout
    /// answers, and is deleted once it calls `proxy_done`.
    pub fn retire_root(&self, worker: usize, root: u32) -> bool {
        let mut vm = self.workers[worker].borrow_mut();
        assert!(vm.store.data().roots.contains(&root), "no root context {root} on worker {worker}");
        assert_ne!(vm.root, root, "the current configuration's root context is not retired");
        let done = match vm.callback::<i32, i32>(root, "proxy_on_done", root as i32) {
            Ok(done) => done != 0,
            Err(e) => {
                drop(vm);
                fail(&self.shared, worker, &e)
            }
        };
        if done {
            if let Err(e) = vm.delete_root(root) {
                drop(vm);
                fail(&self.shared, worker, &e);
            }
        } else {
            self.shared.borrow_mut().draining_roots.push((worker, root));
        }
        done
    }

    /// Starts another VM on the same node (another Envoy worker thread:
    /// same shared data and metrics, its own memory), configured like the
    /// others. Returns its index for [`Host::stream_on`].
    pub fn add_worker(&mut self) -> usize {
        let worker = self.start_vm();
        if self.configured.is_some() && !self.configure_vm(worker) {
            fail(&self.shared, worker, "proxy_on_configure returned false on the new worker");
        }
        worker
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// A new HTTP stream on worker 0.
    pub fn stream(&self) -> Stream {
        self.stream_on(0)
    }

    /// A new HTTP stream (context) on that worker.
    pub fn stream_on(&self, worker: usize) -> Stream {
        let vm_rc = self.workers.get(worker).unwrap_or_else(|| panic!("no worker {worker}")).clone();
        let id = {
            let mut vm = vm_rc.borrow_mut();
            let id = vm.next_context_id;
            vm.next_context_id += 1;
            vm.store.data_mut().streams.insert(id, StreamState::default());
            let root = vm.root;
            if let Err(e) = vm.callback::<(i32, i32), ()>(id, "proxy_on_context_create", (id as i32, root as i32)) {
                drop(vm);
                fail(&self.shared, worker, &e);
            }
            id
        };
        Stream { vm: vm_rc, shared: self.shared.clone(), worker, id, finished: false }
    }

    /// `proxy_on_tick` on every root context of every worker (a replaced
    /// one that is not done yet too: Envoy keeps its timer).
    pub fn tick(&self) {
        for (worker, vm) in self.workers.iter().enumerate() {
            let roots = vm.borrow().store.data().roots.clone();
            for root in roots {
                let mut vm = vm.borrow_mut();
                if let Err(e) =
                    vm.callback::<i32, ()>(root, "proxy_on_tick", root as i32).and_then(|()| vm.delete_done_roots())
                {
                    drop(vm);
                    fail(&self.shared, worker, &e);
                }
            }
        }
    }

    pub fn tick_period(&self) -> Duration {
        Duration::from_millis(self.shared.borrow().tick_period_ms.into())
    }

    // ------------------------------------------------------------ logs

    /// Everything the filter logged, oldest first.
    pub fn logs(&self) -> Vec<LogLine> {
        self.shared.borrow().logs.clone()
    }

    /// The log as text, one `[Level] message` per line (for assertion messages).
    pub fn log_text(&self) -> String {
        self.shared.borrow().logs.iter().map(|l| format!("[{:?}] {}\n", l.level, l.message)).collect()
    }

    /// Log lines containing `needle`.
    pub fn logs_containing(&self, needle: &str) -> Vec<LogLine> {
        self.shared.borrow().logs.iter().filter(|l| l.message.contains(needle)).cloned().collect()
    }

    pub fn clear_logs(&self) {
        self.shared.borrow_mut().logs.clear();
    }

    /// What `proxy_get_log_level` answers (default Trace).
    pub fn set_log_level(&self, level: LogLevel) {
        self.shared.borrow_mut().log_level = level;
    }

    // ------------------------------------------------------------ metrics

    /// A counter's or gauge's value by its full name (`tollgate.requests.tier.cheap.model.gpt-4o-mini`);
    /// for a histogram, its number of samples.
    pub fn metric(&self, name: &str) -> Option<u64> {
        let shared = self.shared.borrow();
        let m = shared.metrics.iter().find(|m| m.name == name)?;
        Some(if m.kind == MetricType::Histogram { m.samples.len() as u64 } else { m.value })
    }

    /// A metric's value, 0 if never defined.
    pub fn metric_or_zero(&self, name: &str) -> u64 {
        self.metric(name).unwrap_or(0)
    }

    /// Every defined metric: name → value (histograms: sample count).
    pub fn metrics(&self) -> BTreeMap<String, u64> {
        let shared = self.shared.borrow();
        shared
            .metrics
            .iter()
            .map(|m| (m.name.clone(), if m.kind == MetricType::Histogram { m.samples.len() as u64 } else { m.value }))
            .collect()
    }

    /// Sum of every metric whose name starts with `prefix` (all label values of one metric).
    pub fn metric_sum(&self, prefix: &str) -> u64 {
        self.metrics().iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
    }

    pub fn histogram_samples(&self, name: &str) -> Vec<u64> {
        let shared = self.shared.borrow();
        shared.metrics.iter().find(|m| m.name == name).map(|m| m.samples.clone()).unwrap_or_default()
    }

    // ------------------------------------------------------------ shared data

    pub fn shared_data(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.borrow().shared_data.get(key).map(|(v, _)| v.clone())
    }

    /// A shared-data value as (lossy) UTF-8.
    pub fn shared_data_str(&self, key: &str) -> Option<String> {
        self.shared_data(key).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// Shared-data writes made so far (every successful set, by any VM).
    pub fn shared_data_writes(&self) -> u64 {
        self.shared.borrow().shared_writes
    }

    pub fn shared_data_keys(&self) -> Vec<String> {
        self.shared.borrow().shared_data.keys().cloned().collect()
    }

    /// Writes a shared-data entry as another VM would (takes a new cas).
    pub fn set_shared_data(&self, key: &str, value: &[u8]) {
        let mut shared = self.shared.borrow_mut();
        let cas = shared.take_cas();
        shared.shared_data.insert(key.to_owned(), (value.to_vec(), cas));
    }

    // ------------------------------------------------------------ callouts

    /// Callouts (`dispatch_http_call`) not answered yet, oldest first.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        self.shared.borrow().http_calls.clone()
    }

    /// Every callout answered so far.
    pub fn answered_http_calls(&self) -> Vec<HttpCall> {
        self.shared.borrow().answered_calls.clone()
    }

    /// Only these clusters exist (Envoy answers BadArgument for others).
    /// By default every name is accepted.
    pub fn set_clusters(&self, clusters: &[&str]) {
        self.shared.borrow_mut().clusters = Some(clusters.iter().map(|c| (*c).to_owned()).collect());
    }

    fn take_call(&self, token: u32) -> HttpCall {
        let mut shared = self.shared.borrow_mut();
        let Some(i) = shared.http_calls.iter().position(|c| c.token == token) else {
            panic!("no pending http call with token {token}");
        };
        let call = shared.http_calls.remove(i);
        shared.answered_calls.push(call.clone());
        call
    }

    /// Answers callout `token` with a response (`:status` plus `headers`).
    pub fn respond_http_call(&self, token: u32, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let call = self.take_call(token);
        let response = abi::call_response(status, headers, body);
        let (nh, nb) = (response.headers.0.len() as i32, response.body.len() as i32);
        self.deliver_call_response(&call, Some(response), (nh, nb, 0));
    }

    /// Fails callout `token` the way Envoy reports a reset or connect
    /// failure: `on_http_call_response(token, 0, 0, 0)` with no response
    /// available (reading its headers then is BadArgument, as in Envoy).
    pub fn fail_http_call(&self, token: u32) {
        let call = self.take_call(token);
        self.deliver_call_response(&call, None, (0, 0, 0));
    }

    fn deliver_call_response(&self, call: &HttpCall, response: Option<state::CallResponse>, sizes: (i32, i32, i32)) {
        let mut vm = self.workers[call.worker].borrow_mut();
        let failed = response.is_none();
        {
            let st = vm.store.data_mut();
            st.call_response = response;
            st.status = if failed { (abi::BROKEN_CONNECTION, "reset".to_owned()) } else { (0, String::new()) };
        }
        let result = vm.callback::<(i32, i32, i32, i32, i32), ()>(
            call.context_id,
            "proxy_on_http_call_response",
            (call.context_id as i32, call.token as i32, sizes.0, sizes.1, sizes.2),
        );
        {
            let st = vm.store.data_mut();
            st.call_response = None;
            st.status = (0, String::new());
        }
        if let Err(e) = result.and_then(|()| vm.delete_done_roots()) {
            drop(vm);
            fail(&self.shared, call.worker, &e);
        }
    }

    /// Foreign function calls (e.g. `clear_route_cache`) made so far.
    pub fn foreign_calls(&self) -> Vec<ForeignCall> {
        self.shared.borrow().foreign_calls.clone()
    }

    // ------------------------------------------------------------ clock, randomness, properties

    /// The wall clock the filter sees (`get_current_time`, WASI realtime).
    /// Default: 2026-11-22T12:00:00Z, fixed until moved.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.shared.borrow().now_nanos)
    }

    pub fn set_time(&self, when: SystemTime) {
        let nanos = when.duration_since(UNIX_EPOCH).expect("time before 1970").as_nanos() as u64;
        let mut shared = self.shared.borrow_mut();
        if nanos > shared.now_nanos {
            shared.monotonic_nanos += nanos - shared.now_nanos;
        }
        shared.now_nanos = nanos;
    }

    /// Moves both clocks forward.
    pub fn advance(&self, by: Duration) {
        let mut shared = self.shared.borrow_mut();
        shared.now_nanos += by.as_nanos() as u64;
        shared.monotonic_nanos += by.as_nanos() as u64;
    }

    /// Reseeds `random_get` (deterministic; default seed fixed).
    pub fn seed_random(&self, seed: u64) {
        self.shared.borrow_mut().rng_state = seed;
    }

    /// Sets a property `get_property(path)` returns.
    pub fn set_property(&self, path: &[&str], value: &[u8]) {
        self.shared.borrow_mut().properties.insert(path.join("\0").into_bytes(), value.to_vec());
    }
}

/// One HTTP stream through the filter. Drive it with the callback methods
/// in Envoy's order; inspect what the filter did with the others.
pub struct Stream {
    vm: Rc<RefCell<Vm>>,
    shared: SharedRef,
    worker: usize,
    id: u32,
    finished: bool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("worker", &self.worker).field("context_id", &self.id).finish()
    }
}

/// What passed the filter in one direction (what the upstream, or the
/// client, receives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The end of stream passed too.
    pub complete: bool,
}

impl Passed {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Stream {
    pub fn context_id(&self) -> u32 {
        self.id
    }

    pub fn worker(&self) -> usize {
        self.worker
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut StreamState) -> R) -> R {
        let mut vm = self.vm.borrow_mut();
        let st = vm.store.data_mut().streams.get_mut(&self.id).expect("stream state");
        f(st)
    }

    fn run<P: WasmParams, R: WasmResults>(&self, name: &str, params: P) -> Result<R, String> {
        self.vm.borrow_mut().callback(self.id, name, params)
    }

    fn or_fail<T>(&self, r: Result<T, String>) -> T {
        r.unwrap_or_else(|e| fail(&self.shared, self.worker, &e))
    }

    fn headers_call(&self, side: Side, headers: HeaderMap, end_of_stream: bool) -> Result<Action, String> {
        let n = headers.0.len() as i32;
        self.with_state(|s| {
            let d = s.direction(side);
            d.headers = Some(headers);
            d.headers_accessible = true;
            d.end_of_stream_seen = end_of_stream;
        });
        let name = if side == Side::Request { "proxy_on_request_headers" } else { "proxy_on_response_headers" };
        let action =
            Action::from_abi(self.run::<(i32, i32, i32), i32>(name, (self.id as i32, n, end_of_stream as i32))?);
        self.with_state(|s| {
            let replied = !s.local_replies.is_empty();
            let d = s.direction(side);
            match action {
                Action::Continue => {
                    // Envoy drops its pointer to the map once headers continue.
                    d.headers_accessible = false;
                    if !replied {
                        d.release();
                    }
                }
                _ => d.paused = true,
            }
        });
        Ok(action)
    }

    fn body_call(&self, side: Side, chunk: &[u8], end_of_stream: bool) -> Result<Action, String> {
        let size = self.with_state(|s| {
            let d: &mut Direction = s.direction(side);
            d.end_of_stream_seen |= end_of_stream;
            match (&mut d.body, d.buffering) {
                (Some(body), true) => body.extend_from_slice(chunk),
                (body, _) => *body = Some(chunk.to_vec()),
            }
            d.body.as_ref().map_or(0, Vec::len)
        });
        let name = if side == Side::Request { "proxy_on_request_body" } else { "proxy_on_response_body" };
        let action = Action::from_abi(
            self.run::<(i32, i32, i32), i32>(name, (self.id as i32, size as i32, end_of_stream as i32))?,
        );
        self.with_state(|s| {
            let replied = !s.local_replies.is_empty();
            let d = s.direction(side);
            match action {
                Action::Continue if !replied => d.release(),
                Action::Continue => d.body = None,
                _ => {
                    d.buffering = true;
                    d.paused = true;
                }
            }
        });
        Ok(action)
    }

    // ------------------------------------------------------------ request side

    /// `on_http_request_headers`. Include the pseudo-headers Envoy sets
    /// (`:method`, `:path`, `:authority`, `:scheme`).
    pub fn request_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Action {
        let r = self.headers_call(Side::Request, HeaderMap::from_pairs(headers), end_of_stream);
        self.or_fail(r)
    }

    /// Like [`Stream::request_headers`], values as raw bytes (not UTF-8, say).
    pub fn request_headers_bytes(&mut self, headers: &[(&str, &[u8])], end_of_stream: bool) -> Action {
        let r = self.headers_call(Side::Request, HeaderMap::from_pairs(headers), end_of_stream);
        self.or_fail(r)
    }

    /// `on_http_request_body` with the next chunk. While the filter keeps
    /// pausing, chunks accumulate and it is told the whole size (Envoy's
    /// StopIterationAndBuffer). After a local reply Envoy stops decoding:
    /// the filter is not called and this returns Pause.
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        let r = self.try_request_body(chunk, end_of_stream);
        self.or_fail(r)
    }

    /// [`Stream::request_body`], a trap returned as `Err` rather than a panic.
    pub fn try_request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, String> {
        if self.local_reply().is_some() {
            return Ok(Action::Pause);
        }
        self.body_call(Side::Request, chunk, end_of_stream)
    }

    /// [`Stream::request_headers`], a trap returned as `Err`.
    pub fn try_request_headers(&mut self, headers: &[(&str, &[u8])], end_of_stream: bool) -> Result<Action, String> {
        self.headers_call(Side::Request, HeaderMap::from_pairs(headers), end_of_stream)
    }

    /// `on_http_request_trailers` (ends the request).
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Action {
        let map = HeaderMap::from_pairs(trailers);
        let n = map.0.len() as i32;
        self.with_state(|s| {
            s.request.trailers = Some(map);
            s.request.end_of_stream_seen = true;
        });
        let r = self.run::<(i32, i32), i32>("proxy_on_request_trailers", (self.id as i32, n));
        let action = Action::from_abi(self.or_fail(r));
        if action == Action::Continue {
            self.with_state(|s| s.request.trailers = None);
        }
        action
    }

    /// Headers, then the body in one chunk (none for an empty body), as a
    /// client sends a request; stops early if the filter replies locally.
    /// Returns the last action.
    pub fn send_request(&mut self, headers: &[(&str, &str)], body: &[u8]) -> Action {
        let action = self.request_headers(headers, body.is_empty());
        if body.is_empty() || self.local_reply().is_some() {
            return action;
        }
        self.request_body(body, true)
    }

    /// [`Stream::send_request`] in `chunk`-byte pieces, traps as `Err`.
    pub fn try_send_request_chunked(
        &mut self,
        headers: &[(&str, &[u8])],
        body: &[u8],
        chunk: usize,
    ) -> Result<Action, String> {
        let mut action = self.try_request_headers(headers, body.is_empty())?;
        if body.is_empty() {
            return Ok(action);
        }
        let pieces: Vec<&[u8]> = body.chunks(chunk.max(1)).collect();
        for (i, piece) in pieces.iter().enumerate() {
            if self.local_reply().is_some() {
                break;
            }
            action = self.try_request_body(piece, i + 1 == pieces.len())?;
        }
        Ok(action)
    }

    /// The request header map as the filter left it (None before headers).
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.with_state(|s| s.request.headers.as_ref()?.get(name).map(|v| String::from_utf8_lossy(v).into_owned()))
    }

    pub fn request_header_map(&self) -> Vec<(String, String)> {
        self.with_state(|s| s.request.headers.as_ref().map(HeaderMap::to_strings).unwrap_or_default())
    }

    /// What went upstream, once the filter let the request go (headers as
    /// they were at that moment, then the body it released).
    pub fn upstream_request(&self) -> Option<Passed> {
        self.with_state(|s| passed(&s.request))
    }

    /// The request is held (a callback paused and nothing resumed it).
    pub fn request_paused(&self) -> bool {
        self.with_state(|s| s.request.paused)
    }

    /// Request-header writes the filter made (each clears Envoy's route cache).
    pub fn request_header_mutations(&self) -> usize {
        self.with_state(|s| s.request_header_mutations)
    }

    // ------------------------------------------------------------ response side

    /// `on_http_response_headers`, as the upstream's answer arrives.
    pub fn response_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Action {
        let r = self.headers_call(Side::Response, HeaderMap::from_pairs(headers), end_of_stream);
        self.or_fail(r)
    }

    /// [`Stream::response_headers`] with raw-byte values, a trap returned as `Err`.
    pub fn try_response_headers(&mut self, headers: &[(&str, &[u8])], end_of_stream: bool) -> Result<Action, String> {
        self.headers_call(Side::Response, HeaderMap::from_pairs(headers), end_of_stream)
    }

    /// `on_http_response_body` with the next chunk (buffering like the request side).
    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        let r = self.try_response_body(chunk, end_of_stream);
        self.or_fail(r)
    }

    pub fn try_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, String> {
        self.body_call(Side::Response, chunk, end_of_stream)
    }

    /// Response headers, then each chunk (the last with end of stream).
    pub fn send_response(&mut self, headers: &[(&str, &str)], chunks: &[&[u8]]) -> Action {
        let mut action = self.response_headers(headers, chunks.is_empty());
        for (i, chunk) in chunks.iter().enumerate() {
            action = self.response_body(chunk, i + 1 == chunks.len());
        }
        action
    }

    pub fn response_header(&self, name: &str) -> Option<String> {
        self.with_state(|s| s.response.headers.as_ref()?.get(name).map(|v| String::from_utf8_lossy(v).into_owned()))
    }

    /// What the client received from upstream through the filter.
    pub fn downstream_response(&self) -> Option<Passed> {
        self.with_state(|s| passed(&s.response))
    }

    pub fn response_paused(&self) -> bool {
        self.with_state(|s| s.response.paused)
    }

    // ------------------------------------------------------------ what the filter did

    /// The local reply, if the filter sent one (panics if it sent several).
    pub fn local_reply(&self) -> Option<LocalReply> {
        self.with_state(|s| {
            assert!(
                s.local_replies.len() <= 1,
                "the filter sent {} local replies: {:?}",
                s.local_replies.len(),
                s.local_replies
            );
            s.local_replies.first().cloned()
        })
    }

    pub fn local_replies(&self) -> Vec<LocalReply> {
        self.with_state(|s| s.local_replies.clone())
    }

    /// `resume_http_request` / `resume_http_response` calls, in order.
    pub fn continued(&self) -> Vec<StreamType> {
        self.with_state(|s| s.continued.clone())
    }

    /// `reset_http_request` / `close_*` calls.
    pub fn closed(&self) -> Vec<StreamType> {
        self.with_state(|s| s.closed.clone())
    }

    /// This stream's pending callouts.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        let shared = self.shared.borrow();
        shared.http_calls.iter().filter(|c| c.worker == self.worker && c.context_id == self.id).cloned().collect()
    }

    /// Foreign function calls this stream made.
    pub fn foreign_calls(&self) -> Vec<ForeignCall> {
        let shared = self.shared.borrow();
        shared.foreign_calls.iter().filter(|c| c.worker == self.worker && c.context_id == self.id).cloned().collect()
    }

    // ------------------------------------------------------------ end of stream

    /// `on_log` (Envoy's access-log phase: maps readable, even continued ones).
    pub fn log(&mut self) {
        let r = self.try_log();
        self.or_fail(r)
    }

    pub fn try_log(&mut self) -> Result<(), String> {
        self.vm.borrow_mut().store.data_mut().access_log_phase = true;
        let r = self.run::<i32, ()>("proxy_on_log", self.id as i32);
        self.vm.borrow_mut().store.data_mut().access_log_phase = false;
        r
    }

    /// `on_done`; true if the filter is done now.
    pub fn done(&mut self) -> bool {
        let r = self.run::<i32, i32>("proxy_on_done", self.id as i32);
        self.or_fail(r) != 0
    }

    /// `on_delete`: the context is gone (pending callouts of it are cancelled).
    pub fn delete(&mut self) {
        let r = self.run::<i32, ()>("proxy_on_delete", self.id as i32);
        self.or_fail(r);
        self.finished = true;
        self.shared.borrow_mut().http_calls.retain(|c| !(c.worker == self.worker && c.context_id == self.id));
    }

    /// Envoy's end of a stream: `on_log`, `on_done`, `on_delete`.
    pub fn finish(&mut self) {
        self.log();
        self.done();
        self.delete();
    }

    /// [`Stream::finish`], a trap returned as `Err`.
    pub fn try_finish(&mut self) -> Result<(), String> {
        self.try_log()?;
        self.run::<i32, i32>("proxy_on_done", self.id as i32)?;
        self.run::<i32, ()>("proxy_on_delete", self.id as i32)?;
        self.finished = true;
        Ok(())
    }

    /// The (worker, context id) its callouts carry ([`HttpCall`]).
    pub fn context(&self) -> (usize, u32) {
        (self.worker, self.id)
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

fn passed(d: &Direction) -> Option<Passed> {
    let headers = d.passed_headers.clone()?;
    Some(Passed { headers, body: d.passed_body.clone(), complete: d.passed_end })
}
