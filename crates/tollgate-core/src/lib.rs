//! tollgate-core: every routing decision tollgate makes, with no I/O.
//!
//! The hosts (a Cloudflare Worker and an Envoy proxy-wasm filter) do the
//! I/O and drive [`engine::Plan`], which parses, counts, classifies, keys,
//! prices, budgets and decides. Time and randomness come in as arguments;
//! nothing here reads a clock, a random source, a file or the network, so
//! both hosts make identical decisions and every decision is testable.
//!
//! What operators run offline (routing-quality evaluation, its charts, and
//! the in-memory host the CLI simulates with) is under [`offline`].

pub mod api;
pub mod auth;
pub mod budget;
pub mod cache;
pub mod classify;
pub mod compact;
pub mod config;
pub mod cooldown;
pub mod count;
pub mod desk;
pub mod endpoints;
pub mod engine;
pub mod error;
pub mod escalation;
pub mod learned;
pub mod offline;
pub mod outcomes;
pub mod plugin;
pub mod pricing;
pub mod provider;
pub mod request;
pub mod response;
pub mod store;
pub mod trace;
pub mod translate;
pub mod upstream;

pub use api::ApiFormat;
pub use config::TenantConfig;
pub use engine::{Inbound, Next, Plan};
pub use error::ApiError;
pub use offline::{chart, eval, sim};
