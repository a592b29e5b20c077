//! The tenant config parser: `TenantConfig::from_json` on any bytes (what
//! the Worker reads from KV, what `tollgate config validate` checks).
//!
//! Properties: a refusal names at least one problem and renders; a config
//! that validates, re-serialised from its raw form, validates again to an
//! equal config (what the CLI writes back, the hosts read the same).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::config::{RawTenantConfig, TenantConfig, parse_raw};

fuzz_target!(|data: &[u8]| {
    match TenantConfig::from_json(data) {
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refusal names a problem");
            let _ = errors.to_string();
        }
        Ok(config) => {
            let raw: RawTenantConfig = parse_raw(data).expect("validated, so it parses");
            let again = serde_json::to_vec(&raw).expect("serialises");
            match TenantConfig::from_json(&again) {
                Ok(back) => assert_eq!(back, config, "re-serialised config differs"),
                Err(e) => panic!(
                    "re-serialised config refused: {e}\n in:  {}\n out: {}",
                    String::from_utf8_lossy(data),
                    String::from_utf8_lossy(&again)
                ),
            }
        }
    }
});
