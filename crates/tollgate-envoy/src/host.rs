//! The host calls the filter makes, wrapped so that an unexpected status is
//! a value, never a panic (the SDK's trait methods unwrap).

use crate::local_state::{SetError, SharedData};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use std::cell::RefCell;
use std::collections::HashMap;

/// Envoy's shared data for this `vm_id`.
#[derive(Debug, Default)]
pub struct EnvoyShared;

impl SharedData for EnvoyShared {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(_) => Err(SetError::Failed),
        }
    }
}

/// One header's value. Envoy passes header values through as bytes (obs-text
/// such as `0xE9` is legal HTTP), and the SDK's `String` getters unwrap the
/// UTF-8 conversion, so a client could trap the filter with one byte: read
/// bytes, and let a value that is not UTF-8 arrive lossily (it then fails
/// whatever check it is for, e.g. authentication, instead of trapping).
pub fn header(map: MapType, name: &str) -> Option<String> {
    let bytes = hostcalls::get_map_value_bytes(map, name).ok().flatten()?;
    Some(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// All headers whose values are UTF-8 (see [`header`]). Header names are
/// HTTP tokens, ASCII by Envoy's own validation. A header whose value is not
/// UTF-8 is left out: these lists feed re-issued requests (fallbacks, Redis),
/// where passing it on mangled would be worse than not passing it on.
pub fn headers(map: MapType) -> Vec<(String, String)> {
    hostcalls::get_map_bytes(map)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, value)| String::from_utf8(value).ok().map(|value| (name, value)))
        .collect()
}

pub fn buffer(kind: BufferType, size: usize) -> Vec<u8> {
    hostcalls::get_buffer(kind, 0, size).ok().flatten().unwrap_or_default()
}

pub fn now_secs() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Random bytes from WASI `random_get` (Envoy: BoringSSL's RAND_bytes).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if getrandom::fill(&mut bytes).is_err() {
        // Only a request id or a Bloom filter seed: a clock-derived fallback
        // is weaker but never wrong. Envoy always provides random_get.
        let nanos = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
    bytes
}

/// Counters by full name, defined on first use. Names are bounded by the
/// configuration (see `metrics`), so the map is too.
#[derive(Debug, Default)]
pub struct Counters {
    ids: RefCell<HashMap<String, u32>>,
}

impl Counters {
    pub fn add(&self, name: &str, by: u64) {
        if by == 0 {
            return;
        }
        let id = match self.ids.borrow().get(name).copied() {
            Some(id) => Some(id),
            None => hostcalls::define_metric(MetricType::Counter, name).ok(),
        };
        if let Some(id) = id {
            self.ids.borrow_mut().insert(name.to_owned(), id);
            let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
        }
    }
}
