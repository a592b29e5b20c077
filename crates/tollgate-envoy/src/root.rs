//! The root context: parses the plugin configuration once per VM, owns what
//! every request of this VM shares, and sends Redis writes that must outlive
//! the request that caused them.
//!
//! Why the root sends settlements: Envoy cancels a stream context's pending
//! `dispatch_http_call`s when the stream is destroyed, and a settlement is
//! made as the stream ends. The root context lives as long as the VM, so a
//! request hands its Redis settle/release/cache write to the root's queue,
//! and the root's tick sends and retries them.
//!
//! A configuration change (a listener or ECDS update) keeps the VM: Envoy
//! creates a new root context in it for the new configuration, and once the
//! last request of the old one has ended (its settlement and outcome record
//! just queued here) calls the old root context's `on_done`. If it said yes
//! at once, Envoy would delete it with that queue unsent and cancel its
//! webdis calls in flight: holds left reserved, spend and outcome records
//! lost. So a root context with Redis writes left says "not yet", keeps
//! ticking until every write has landed (or given up), then calls
//! `proxy_done` and is deleted.

use crate::host::{Counters, EnvoyShared};
use crate::local_state::{self, LocalCache};
use crate::redis::BudgetBoard;
use crate::runtime::Runtime;
use crate::store::{self, Job, JobStep};
use crate::stream::Stream;
use log::{error, info};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;
use tollgate_core::config::Provider;
use tollgate_core::cooldown::Cooldowns;
use tollgate_core::desk::LeaseDesk;
use tollgate_core::plugin::{BudgetBackend, PluginConfig};

/// How often the root sends queued Redis writes and asks the lease desk
/// what is due (its own deadlines are in seconds; the tick only bounds how
/// late past them a batch goes).
const TICK: Duration = Duration::from_millis(20);

#[derive(Default)]
pub struct Root {
    runtime: Option<Rc<Runtime>>,
    in_flight: HashMap<u32, Job>,
    /// Envoy is done with this root context (`on_done` said "not yet"): it
    /// sends what is left, then calls `proxy_done`.
    draining: bool,
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        if let Some(rt) = self.runtime.clone() {
            // The VM's leases go back and what waits in its desk is sent,
            // before the last writes are counted.
            store::send_due(&rt, crate::host::now_secs(), true);
        }
        let queued = self.runtime.as_ref().map_or(0, |rt| rt.jobs.borrow().len());
        if queued == 0 && self.in_flight.is_empty() {
            return true;
        }
        info!(
            "tollgate: configuration replaced; sending the last {queued} queued and {} in-flight Redis write(s) first",
            self.in_flight.len()
        );
        self.draining = true;
        false
    }

    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        let Some(mut job) = self.in_flight.remove(&token) else { return };
        let Some(rt) = self.runtime.clone() else { return };
        let body = store::webdis_body(num_headers, body_size);
        match job.on_answer(&rt, body.as_deref()) {
            JobStep::Done => {}
            JobStep::Send(next) => self.send(&rt, job, &next),
            JobStep::Failed => retry_later(&rt, job),
        }
        self.done_if_drained(&rt);
    }
}

impl Root {
    /// A draining root context with nothing left to send or wait for tells
    /// Envoy it is done (Envoy then deletes it, after this callback).
    fn done_if_drained(&mut self, rt: &Runtime) {
        if self.draining && self.in_flight.is_empty() && rt.jobs.borrow().is_empty() {
            self.draining = false;
            info!("tollgate: the replaced configuration's Redis writes are done");
            if let Err(status) = proxy_wasm::hostcalls::done() {
                error!("tollgate: could not tell Envoy a replaced root context is done: {status:?}");
            }
        }
    }

    fn send(&mut self, rt: &Runtime, job: Job, body: &[u8]) {
        match store::dispatch(rt, body) {
            Some(token) => {
                self.in_flight.insert(token, job);
            }
            None => retry_later(rt, job),
        }
    }
}

/// Queue `job` again for a later tick, unless it has been tried enough.
fn retry_later(rt: &Runtime, job: Job) {
    if let Some(job) = job.retry(rt) {
        rt.jobs.borrow_mut().push_back(job);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = proxy_wasm::hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match PluginConfig::from_json(&bytes) {
            Ok(c) => c,
            Err(errors) => {
                // Returning false makes Envoy refuse the filter config (and
                // `envoy --mode validate` exit 1): better than serving with a
                // half-read config.
                error!("tollgate: plugin configuration refused: {errors}");
                return false;
            }
        };
        let mut provider_keys = BTreeMap::new();
        for provider in Provider::ALL {
            let env = config.route(provider).api_key_env;
            if let Ok(key) = std::env::var(&env)
                && !key.is_empty()
            {
                provider_keys.insert(provider, key);
            }
        }
        let shared = EnvoyShared;
        if config.budgets == BudgetBackend::Local {
            for tenant in config.tenants.keys() {
                local_state::seed(&shared, tenant);
            }
        }
        // The tick sends Redis writes and the lease desk's batches (for
        // either backend): without it, leases would never be renewed or
        // handed back and settled spend would wait for the next request.
        if let Err(status) = proxy_wasm::hostcalls::set_tick_period(TICK) {
            error!("tollgate: could not start the tick that sends budget batches and Redis writes: {status:?}");
            return false;
        }
        info!(
            "tollgate: configured {} tenant(s), {} API key(s), budgets in {:?}, cache {:?}, provider keys for {:?}",
            config.tenants.len(),
            config.api_keys.len(),
            config.budgets,
            config.cache,
            provider_keys.keys().map(|p| p.as_str()).collect::<Vec<_>>()
        );
        let cache = LocalCache { slots: config.local_cache_slots };
        let desk = match config.budgets {
            BudgetBackend::Local => LeaseDesk::new(&instance_id()).with_writer_in_process(),
            BudgetBackend::Redis => LeaseDesk::new(&instance_id()),
        };
        self.runtime = Some(Rc::new(Runtime {
            config,
            provider_keys,
            shared,
            cache,
            counters: Counters::default(),
            board: RefCell::new(BudgetBoard::default()),
            jobs: RefCell::new(VecDeque::new()),
            cooldowns: RefCell::new(Cooldowns::default()),
            desk: RefCell::new(desk),
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(rt) = self.runtime.clone() else { return };
        if !self.draining {
            store::send_due(&rt, crate::host::now_secs(), false);
        }
        send_alerts(&rt);
        // One batch per tenant out at a time: two of this VM's writes to
        // one tenant's key would only race each other's compare-and-set
        // (and retry, each attempt a round trip); the later ones wait here.
        let mut writing: std::collections::HashSet<String> =
            self.in_flight.values().filter_map(|j| j.tenant().map(str::to_owned)).collect();
        let pending: Vec<Job> = rt.jobs.borrow_mut().drain(..).collect();
        for mut job in pending {
            if let Some(tenant) = job.tenant() {
                if writing.contains(tenant) {
                    rt.jobs.borrow_mut().push_back(job);
                    continue;
                }
                writing.insert(tenant.to_owned());
            }
            if let Some(body) = job.start(&rt) {
                self.send(&rt, job, &body);
            }
        }
        self.done_if_drained(&rt);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(context_id, self.runtime.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Log the budget alerts waiting and post those with a webhook through the
/// operator's `alerts_cluster`. Fire and forget: the answer is not read
/// (its token matches no job), and the log line is the record.
fn send_alerts(rt: &Runtime) {
    for (alert, call) in crate::alerts::take(crate::host::now_secs()) {
        info!("{}", tollgate_core::store::alert_log_line(&alert));
        let (Some(call), Some(cluster)) = (call, rt.config.alerts_cluster.as_deref()) else { continue };
        let mut headers: Vec<(&str, &str)> =
            vec![(":method", "POST"), (":path", &call.path), (":authority", &call.authority)];
        headers.extend(call.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let timeout = std::time::Duration::from_secs(5);
        if let Err(status) =
            proxy_wasm::hostcalls::dispatch_http_call(cluster, headers, Some(&call.body), vec![], timeout)
        {
            log::warn!("tollgate: could not post an alert through cluster `{cluster}`: {status:?}");
        }
    }
}

/// This VM's id for its leases: random, so two VMs (or one VM before and
/// after a configuration change) never share a lease.
fn instance_id() -> String {
    let bytes: [u8; 8] = crate::host::random_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
