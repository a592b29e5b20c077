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
        Settings::from_vars(|name| env.var(name).ok().map(|v| v.to_string()))
    }

    /// From the deployment's vars by name: a missing or unreadable value
    /// takes its default, and each is kept within what the runtime can use
    /// (a zero timeout would fire at once; the stand-in writer delay is capped).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Settings {
        let num = |name: &str, default: u64| -> u64 {
            var(name).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(default)
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

#[cfg(all(test, target_arch = "wasm32", target_os = "unknown"))]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn settings(vars: &[(&str, &str)]) -> Settings {
        Settings::from_vars(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned()))
    }

    #[wasm_bindgen_test]
    fn missing_vars_take_the_documented_defaults() {
        let s = settings(&[]);
        assert_eq!(s.config_cache_ms, 30_000.0);
        assert_eq!(
            (s.upstream_timeout_ms, s.stream_idle_timeout_ms, s.ledger_timeout_ms, s.client_stall_timeout_ms),
            (60_000, 120_000, 5_000, 2_000)
        );
        assert_eq!(s.ledger_delay_ms, 0);
    }

    #[wasm_bindgen_test]
    fn vars_are_read_trimmed_and_junk_falls_back_to_the_default() {
        let s = settings(&[
            ("CONFIG_CACHE_SECONDS", " 0 "),
            ("UPSTREAM_TIMEOUT_MS", "1500"),
            ("LEDGER_TIMEOUT_MS", "soon"),
        ]);
        assert_eq!((s.config_cache_ms, s.upstream_timeout_ms, s.ledger_timeout_ms), (0.0, 1_500, 5_000));
        let s = settings(&[("STREAM_IDLE_TIMEOUT_MS", "-5"), ("CLIENT_STALL_TIMEOUT_MS", "1e3")]);
        assert_eq!((s.stream_idle_timeout_ms, s.client_stall_timeout_ms), (120_000, 2_000));
    }

    #[wasm_bindgen_test]
    fn a_zero_timeout_is_raised_to_one_ms_and_the_writer_delay_is_capped() {
        let s = settings(&[("UPSTREAM_TIMEOUT_MS", "0"), ("LEDGER_TIMEOUT_MS", "0"), ("LEDGER_DELAY_MS", "999999")]);
        assert_eq!((s.upstream_timeout_ms, s.ledger_timeout_ms, s.ledger_delay_ms), (1, 1, 10_000));
    }

    #[wasm_bindgen_test]
    fn the_clock_and_random_bytes_come_from_the_js_runtime() {
        let now = now_secs();
        assert!(now > 1_700_000_000, "{now}");
        assert!((now_ms() / 1000.0 - now as f64).abs() < 2.0);
        let (a, b) = (random_bytes::<16>(), random_bytes::<16>());
        assert_ne!(a, [0; 16], "crypto.getRandomValues gave nothing");
        assert_ne!(a, b);
    }
}
