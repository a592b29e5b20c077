//! What the host keeps: the node-wide state every VM of a [`crate::Host`]
//! shares (shared data, metrics, logs, clock, callouts), and each VM's own
//! per-stream state (header maps, body buffers, what went up- and downstream).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

/// proxy-wasm `Status` values (ABI 0.2.1).
pub(crate) mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
}

/// The root context's id in every VM (Envoy gives each VM's root context the
/// first id; streams count up from there).
pub(crate) const ROOT_CONTEXT_ID: u32 = 1;

/// A proxy-wasm log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl LogLevel {
    pub(crate) fn from_abi(level: i32) -> Option<LogLevel> {
        Some(match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }

    pub(crate) fn to_abi(self) -> i32 {
        self as i32
    }
}

/// One line the filter logged (`proxy_log`, or WASI stdout/stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
    /// Index of the VM (worker) that wrote it.
    pub worker: usize,
}

/// proxy-wasm metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone)]
pub(crate) struct Metric {
    pub name: String,
    pub kind: MetricType,
    pub value: u64,
    pub samples: Vec<u64>,
}

/// A `dispatch_http_call` the filter made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub token: u32,
    /// The VM (worker) and context that made it.
    pub worker: usize,
    pub context_id: u32,
    /// The cluster name passed as `upstream`.
    pub upstream: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub timeout_ms: u32,
}

impl HttpCall {
    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A `proxy_call_foreign_function` the filter made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignCall {
    pub worker: usize,
    pub context_id: u32,
    pub name: String,
    pub arguments: Vec<u8>,
}

/// A `proxy_send_local_response` (`send_http_response`) the filter made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub details: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub grpc_status: i32,
}

impl LocalReply {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Which way a `proxy_continue_stream` / `proxy_close_stream` went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamType {
    Request,
    Response,
    Downstream,
    Upstream,
    Other(i32),
}

impl StreamType {
    pub(crate) fn from_abi(v: i32) -> StreamType {
        match v {
            0 => StreamType::Request,
            1 => StreamType::Response,
            2 => StreamType::Downstream,
            3 => StreamType::Upstream,
            other => StreamType::Other(other),
        }
    }
}

/// The node: what every VM of one [`crate::Host`] shares, like the VMs of
/// one `vm_id` on Envoy's worker threads do.
#[derive(Debug)]
pub(crate) struct Shared {
    /// key → (value, cas). Envoy's cpp-host semantics: a set with a non-zero
    /// cas that differs from the stored one fails; a set of a missing key
    /// ignores the cas; every write takes the next cas (never 0).
    pub shared_data: BTreeMap<String, (Vec<u8>, u32)>,
    pub next_cas: u32,
    /// Successful shared-data writes so far.
    pub shared_writes: u64,
    pub metrics: Vec<Metric>,
    pub logs: Vec<LogLine>,
    pub log_level: LogLevel,
    /// Wall clock, nanoseconds since the Unix epoch.
    pub now_nanos: u64,
    /// Monotonic clock, nanoseconds; moves with the wall clock.
    pub monotonic_nanos: u64,
    pub rng_state: u64,
    pub next_token: u32,
    pub http_calls: Vec<HttpCall>,
    pub answered_calls: Vec<HttpCall>,
    pub foreign_calls: Vec<ForeignCall>,
    /// Clusters `dispatch_http_call` may name; `None` accepts any.
    pub clusters: Option<Vec<String>>,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    pub queues: Vec<(String, VecDeque<Vec<u8>>)>,
    pub tick_period_ms: u32,
    /// (worker, root context id) of root contexts whose `on_done` said
    /// "not yet": they may call `proxy_done`.
    pub draining_roots: Vec<(usize, u32)>,
    pub env: Vec<(String, String)>,
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
}

impl Shared {
    pub fn new(plugin_config: Vec<u8>, env: Vec<(String, String)>) -> Shared {
        let mut properties = HashMap::new();
        for (k, v) in [("plugin_name", "tollgate"), ("plugin_root_id", "tollgate"), ("plugin_vm_id", "tollgate")] {
            properties.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        Shared {
            shared_data: BTreeMap::new(),
            next_cas: 1,
            shared_writes: 0,
            metrics: Vec::new(),
            logs: Vec::new(),
            log_level: LogLevel::Trace,
            // 2026-11-22T12:00:00Z: a fixed, mid-month, mid-day instant.
            now_nanos: 1_795_348_800 * 1_000_000_000,
            monotonic_nanos: 1_000_000_000,
            rng_state: 0x9E37_79B9_7F4A_7C15,
            next_token: 1,
            http_calls: Vec::new(),
            answered_calls: Vec::new(),
            foreign_calls: Vec::new(),
            clusters: None,
            properties,
            queues: Vec::new(),
            tick_period_ms: 0,
            draining_roots: Vec::new(),
            env,
            plugin_config,
            vm_config: Vec::new(),
        }
    }

    pub fn take_cas(&mut self) -> u32 {
        self.shared_writes += 1;
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    /// splitmix64: deterministic per host (seeded by [`crate::Host::seed_random`]).
    pub fn random_bytes(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.rng_state = self.rng_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng_state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let bytes = z.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

pub(crate) type SharedRef = Rc<RefCell<Shared>>;

/// A header map as Envoy keeps it: ordered, keys lower-case, repeats
/// allowed, values raw bytes (HTTP allows obs-text, which is not UTF-8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HeaderMap(pub Vec<(String, Vec<u8>)>);

impl HeaderMap {
    pub fn from_pairs<V: AsRef<[u8]>>(pairs: &[(&str, V)]) -> HeaderMap {
        HeaderMap(pairs.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_ref().to_vec())).collect())
    }

    pub fn get(&self, key: &str) -> Option<&[u8]> {
        let key = key.to_ascii_lowercase();
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_slice())
    }

    pub fn add(&mut self, key: &str, value: &[u8]) {
        self.0.push((key.to_ascii_lowercase(), value.to_vec()));
    }

    /// Envoy `setCopy`: the first entry takes the value, later ones go;
    /// a missing key is added.
    pub fn replace(&mut self, key: &str, value: &[u8]) {
        let key = key.to_ascii_lowercase();
        match self.0.iter().position(|(k, _)| *k == key) {
            Some(first) => {
                self.0[first].1 = value.to_vec();
                let mut i = 0;
                self.0.retain(|(k, _)| {
                    let keep = i <= first || *k != key;
                    i += 1;
                    keep
                });
            }
            None => self.0.push((key, value.to_vec())),
        }
    }

    pub fn remove(&mut self, key: &str) {
        let key = key.to_ascii_lowercase();
        self.0.retain(|(k, _)| *k != key);
    }

    /// Lossy UTF-8 pairs, for assertions.
    pub fn to_strings(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect()
    }
}

/// Which side of the stream a map or buffer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Request,
    Response,
}

/// One direction of an HTTP stream as the filter sees it.
#[derive(Debug, Default)]
pub(crate) struct Direction {
    /// The header map; `None` before its callback.
    pub headers: Option<HeaderMap>,
    /// False once the headers callback returned Continue: Envoy drops its
    /// pointer to the map then, and reads or writes return BadArgument.
    pub headers_accessible: bool,
    pub trailers: Option<HeaderMap>,
    /// The body buffer the filter can read: the current chunk during a body
    /// callback, or everything buffered while the filter paused.
    pub body: Option<Vec<u8>>,
    /// Envoy's `buffering_*_body_`: the last body callback returned Pause.
    pub buffering: bool,
    /// Iteration is stopped (a headers or body callback returned Pause and
    /// nothing resumed it yet).
    pub paused: bool,
    pub end_of_stream_seen: bool,
    /// What passed the filter: headers as they were when iteration went on,
    /// then the body as it was released.
    pub passed_headers: Option<Vec<(String, String)>>,
    pub passed_body: Vec<u8>,
    pub passed_end: bool,
}

impl Direction {
    /// Iteration continues: headers (if not yet passed) and any buffered
    /// body go on.
    pub fn release(&mut self) {
        if self.passed_headers.is_none() {
            self.passed_headers = Some(self.headers.as_ref().map(HeaderMap::to_strings).unwrap_or_default());
        }
        if let Some(body) = self.body.take() {
            self.passed_body.extend_from_slice(&body);
        }
        self.buffering = false;
        self.paused = false;
        if self.end_of_stream_seen {
            self.passed_end = true;
        }
    }
}

/// One HTTP stream (context) inside a VM.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub request: Direction,
    pub response: Direction,
    pub local_replies: Vec<LocalReply>,
    pub continued: Vec<StreamType>,
    pub closed: Vec<StreamType>,
    pub done_called: bool,
    /// Request-header writes (each makes Envoy clear the route cache).
    pub request_header_mutations: usize,
}

impl StreamState {
    pub fn direction(&mut self, side: Side) -> &mut Direction {
        match side {
            Side::Request => &mut self.request,
            Side::Response => &mut self.response,
        }
    }
}

/// The response to an HTTP callout while `on_http_call_response` runs.
#[derive(Debug, Default)]
pub(crate) struct CallResponse {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
}

/// A VM's store data.
#[derive(Debug)]
pub(crate) struct VmState {
    pub worker: usize,
    pub shared: SharedRef,
    pub effective_context: u32,
    pub streams: HashMap<u32, StreamState>,
    pub call_response: Option<CallResponse>,
    /// Set while `on_log` runs: Envoy's access-log phase, where maps are
    /// readable even after their callbacks continued.
    pub access_log_phase: bool,
    /// Set while `on_vm_start` / `on_configure` run: the only time Envoy
    /// hands out the plugin configuration.
    pub in_configure: bool,
    /// What `proxy_get_status` reports (a failed callout: BrokenConnection).
    pub status: (u32, String),
    pub exit_code: Option<i32>,
    /// Root contexts alive in this VM, oldest first: the first one, then
    /// one per configuration change (Envoy keeps the VM and adds a root
    /// context; the old one lives until it is done).
    pub roots: Vec<u32>,
    /// Root contexts that called `proxy_done` during the current callback:
    /// the host deletes them once it returns (as Envoy defers it).
    pub roots_done: Vec<u32>,
}

impl VmState {
    pub fn log(&self, level: LogLevel, message: String) {
        self.shared.borrow_mut().logs.push(LogLine { level, message, worker: self.worker });
    }

    pub fn stream(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.effective_context)
    }
}
