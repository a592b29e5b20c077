//! tollgate as an Envoy proxy-wasm HTTP filter.
//!
//! A thin adapter: every decision is `tollgate-core`'s. This crate does the
//! filter's I/O and translates to and from the core:
//! - tenants, hashed API keys and provider routes come from the plugin
//!   configuration, parsed once per VM in `on_configure` ([`root`]);
//! - each request's stream takes the core's steps in the core's order
//!   (`stream`), and answers the other endpoints (`endpoints`);
//! - budgets, the outcome ledger and the cache live in proxy-wasm shared
//!   data ([`local_state`]) or, for budgets and optionally the cache, in
//!   Redis through webdis ([`redis`]), behind one seam (`store`);
//! - the first attempt goes through Envoy's own router (the filter sets
//!   `x-tollgate-provider` and the route table picks the cluster);
//!   fallbacks are sent with `dispatch_http_call` (`provider`);
//! - metrics are proxy-wasm counters ([`metrics`]).
//!
//! Envoy runs one VM per worker thread. A panic traps the VM and fails every
//! later request on that thread, so nothing here unwraps (the workspace
//! denies it), and host calls whose SDK wrappers panic on an unexpected
//! status are made through `proxy_wasm::hostcalls` instead.

pub mod alerts;
pub mod header_map;
pub mod local_state;
pub mod metrics;
pub mod redis;

#[cfg(target_arch = "wasm32")]
mod endpoints;
#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
mod provider;
#[cfg(target_arch = "wasm32")]
mod reply;
#[cfg(target_arch = "wasm32")]
mod root;
#[cfg(target_arch = "wasm32")]
mod runtime;
#[cfg(target_arch = "wasm32")]
mod store;
#[cfg(target_arch = "wasm32")]
mod stream;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::Root::default()) });
}}
