//! Operator settings from `wrangler.toml` `[vars]`, and the host's clock and
//! random source (the core reads neither; they come in as arguments).

use worker::{Date, Env};

/// Knobs an operator sets per deployment (not per tenant).
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long an isolate reuses a tenant's config and key records before
    /// reading KV again. KV itself is eventually consistent (a write can take
    /// up to 60 s to reach every location), so a change takes effect within
    /// KV's propagation delay plus this.
    pub config_cache_ms: f64,
    /// Time allowed for a provider's response headers (or, streaming, the
    /// first chunk) before the next model of the chain is tried.
    pub upstream_timeout_ms: u64,
    /// Longest gap between two chunks of a streamed answer before it is cut.
    pub stream_idle_timeout_ms: u64,
    /// Time allowed for one call to the tenant's Durable Object.
    pub ledger_timeout_ms: u64,
    /// How long a streamed answer waits on a client that takes nothing more
    /// (the runtime stopped pulling its body, so its queue stays full) before
    /// treating it as gone: the provider call is cancelled and the output seen
    /// so far is charged. The runtime's own buffers sit in front of that
    /// queue, so a client still reading never gets near it; one that went away
    /// behind a proxy that does not pass the disconnect on (wrangler dev's own
    /// proxy, under load) would otherwise hold its budget until the proxy gives up.
    pub client_stall_timeout_ms: u64,
    /// A delay added before every call to a tenant's Durable Object: a
    /// stand-in for a writer far away (another continent), for measuring
    /// what leases save (`scripts/measure-worker --ledger-delay-ms`). 0 in
    /// production.
    pub ledger_delay_ms: u64,
}

impl Settings {
    pub fn from_env(env: &Env) -> Settings {
        let num = |name: &str, default: u64| -> u64 {
            env.var(name).ok().and_then(|v| v.to_string().trim().parse::<u64>().ok()).unwrap_or(default)
        };
        Settings {
            config_cache_ms: (num("CONFIG_CACHE_SECONDS", 30) * 1000) as f64,
            upstream_timeout_ms: num("UPSTREAM_TIMEOUT_MS", 60_000).max(1),
            stream_idle_timeout_ms: num("STREAM_IDLE_TIMEOUT_MS", 120_000).max(1),
            ledger_timeout_ms: num("LEDGER_TIMEOUT_MS", 5_000).max(1),
            client_stall_timeout_ms: num("CLIENT_STALL_TIMEOUT_MS", 2_000).max(1),
            ledger_delay_ms: num("LEDGER_DELAY_MS", 0).min(10_000),
        }
    }
}

/// Milliseconds since the epoch, from the Workers clock. (Inside a request
/// the clock advances only across I/O, a Workers timing-attack mitigation;
/// whole seconds are all the core needs.)
pub fn now_ms() -> f64 {
    Date::now().as_millis() as f64
}

pub fn now_secs() -> u64 {
    Date::now().as_millis() / 1000
}

/// Random bytes from `crypto.getRandomValues`. If that ever failed the bytes
/// stay zero; ids would then collide, which the ledger tolerates (it keys
/// holds by id and a duplicate reserve is answered idempotently), so this
/// degrades rather than failing the request.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if getrandom::fill(&mut out).is_err() {
        worker::console_error!("tollgate: crypto.getRandomValues failed");
    }
    out
}
