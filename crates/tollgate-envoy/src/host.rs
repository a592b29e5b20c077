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
    let bytes = raw::header_value(map as u32, name)?;
    Some(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// All headers whose values are UTF-8 (see [`header`]). Header names are
/// HTTP tokens, ASCII by Envoy's own validation. A header whose value is not
/// UTF-8 is left out: these lists feed re-issued requests (fallbacks, Redis),
/// where passing it on mangled would be worse than not passing it on.
pub fn headers(map: MapType) -> Vec<(String, String)> {
    let Some(serialized) = raw::header_pairs(map as u32) else {
        return Vec::new();
    };
    crate::header_map::deserialize_pairs(&serialized)
        .into_iter()
        .filter_map(|(name, value)| Some((String::from_utf8(name).ok()?, String::from_utf8(value).ok()?)))
        .collect()
}

/// Whether the response passing the filter now is Envoy's own reply to an
/// upstream failure (route timeout, reset, refused connection, no healthy
/// host, no route) rather than the provider's: Envoy records why it made a
/// response in `response.code_details`, and "via_upstream" means the
/// provider sent it. A provider's own 504 is a provider status; Envoy's is
/// a timeout.
pub fn response_made_by_envoy() -> bool {
    let path = b"response\0code_details";
    let Some(details) = raw::property(path) else {
        return false;
    };
    // The router's names for them (`response_timeout` is the route timeout).
    details.starts_with(b"upstream_")
        || matches!(
            &details[..],
            b"response_timeout"
                | b"no_healthy_upstream"
                | b"cluster_not_found"
                | b"route_not_found"
                | b"maintenance_mode"
        )
}

pub fn buffer(kind: BufferType, size: usize) -> Vec<u8> {
    raw::buffer(kind as u32, size).unwrap_or_default()
}

/// The reads whose status depends on where Envoy is in a stream (a failed
/// callout has no response headers or body; a property may be missing),
/// made directly: the SDK's wrappers panic on any status they do not
/// expect, such as `BadArgument` for the headers of a callout that got no
/// answer, and a panic traps the VM. Here every failure is `None`.
///
/// The only unsafe code in the filter: four host imports with the SDK's own
/// signatures, and taking back the bytes the host allocated.
#[allow(unsafe_code)]
mod raw {
    /// `Status::Ok` in the proxy-wasm ABI.
    const OK: u32 = 0;

    #[cfg(target_arch = "wasm32")]
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
        fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
        fn proxy_get_buffer_bytes(kind: u32, start: usize, max: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    }

    // Native builds (unit tests) have no host: every read finds nothing.
    #[cfg(not(target_arch = "wasm32"))]
    mod native {
        pub unsafe fn proxy_get_header_map_value(
            _: u32,
            _: *const u8,
            _: usize,
            _: *mut *mut u8,
            _: *mut usize,
        ) -> u32 {
            1
        }
        pub unsafe fn proxy_get_header_map_pairs(_: u32, _: *mut *mut u8, _: *mut usize) -> u32 {
            1
        }
        pub unsafe fn proxy_get_property(_: *const u8, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 {
            1
        }
        pub unsafe fn proxy_get_buffer_bytes(_: u32, _: usize, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 {
            1
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    pub use native::*;

    pub fn header_value(map: u32, name: &str) -> Option<Vec<u8>> {
        // SAFETY: `name` outlives the call; the host writes the out-pointers.
        get(|data, size| unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), data, size) })
    }

    pub fn header_pairs(map: u32) -> Option<Vec<u8>> {
        // SAFETY: the host writes the out-pointers.
        get(|data, size| unsafe { proxy_get_header_map_pairs(map, data, size) })
    }

    /// `path`: the segments joined by NUL, as the ABI takes them.
    pub fn property(path: &[u8]) -> Option<Vec<u8>> {
        // SAFETY: `path` outlives the call; the host writes the out-pointers.
        get(|data, size| unsafe { proxy_get_property(path.as_ptr(), path.len(), data, size) })
    }

    pub fn buffer(kind: u32, max: usize) -> Option<Vec<u8>> {
        // SAFETY: the host writes the out-pointers.
        get(|data, size| unsafe { proxy_get_buffer_bytes(kind, 0, max, data, size) })
    }

    /// Run one read; the bytes the host returned, if it returned any. The
    /// host allocates them with the module's `proxy_on_memory_allocate`
    /// (the SDK's, a `Vec` allocation), so they are taken back as a `Vec`.
    fn get(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Option<Vec<u8>> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        if call(&mut data, &mut size) != OK {
            return None;
        }
        if data.is_null() {
            return Some(Vec::new());
        }
        // SAFETY: on Ok the host handed over `size` bytes it allocated
        // through proxy_on_memory_allocate, which is Vec::with_capacity(size).
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }
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
        let known = self.ids.borrow().get(name).copied();
        let id = match known {
            Some(id) => id,
            None => {
                let Ok(id) = hostcalls::define_metric(MetricType::Counter, name) else { return };
                self.ids.borrow_mut().insert(name.to_owned(), id);
                id
            }
        };
        let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
    }
}
