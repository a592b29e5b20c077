//! The proxy-wasm ABI's header-map encoding, and how to tell Envoy's own
//! answers from a provider's: pure functions of bytes, so they are tested
//! natively (the host-call module around them is wasm32-only).

/// The ABI's map encoding: a u32 count, then a (name length, value
/// length) u32 pair per entry, then each name and value followed by a
/// NUL. Anything out of bounds ends the list instead of panicking.
pub fn deserialize_pairs(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = u32_at(0) else { return Vec::new() };
    let mut out = Vec::new();
    let Some(mut at) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else { return out };
    for i in 0..count {
        let (Some(name_len), Some(value_len)) = (u32_at(4 + i * 8), u32_at(8 + i * 8)) else { break };
        let Some(name) = bytes.get(at..at.saturating_add(name_len)) else { break };
        at = at.saturating_add(name_len).saturating_add(1);
        let Some(value) = bytes.get(at..at.saturating_add(value_len)) else { break };
        at = at.saturating_add(value_len).saturating_add(1);
        out.push((name.to_vec(), value.to_vec()));
    }
    out
}

/// Whether the answer to a `dispatch_http_call` is Envoy's own rather than
/// the provider's (it has no `response.code_details` to tell): Envoy's
/// async client answers a timeout or a failed connection with a short
/// plain-text body of its own.
pub fn callout_made_by_envoy(status: u16, content_type: &str, body: &[u8]) -> bool {
    const ENVOY_TEXTS: [&[u8]; 3] = [b"upstream request timeout", b"upstream connect error", b"no healthy upstream"];
    matches!(status, 503 | 504)
        && content_type.starts_with("text/plain")
        && ENVOY_TEXTS.iter().any(|text| body.starts_with(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_pairs_decode_and_a_truncated_map_ends_the_list_without_a_panic() {
        let mut map = Vec::new();
        map.extend(2u32.to_le_bytes());
        for (n, v) in [(5u32, 2u32), (1, 3)] {
            map.extend(n.to_le_bytes());
            map.extend(v.to_le_bytes());
        }
        map.extend(b":path\0/x\0a\0\xe9bc\0");
        assert_eq!(
            deserialize_pairs(&map),
            vec![(b":path".to_vec(), b"/x".to_vec()), (b"a".to_vec(), b"\xe9bc".to_vec())]
        );
        for cut in 0..map.len() {
            assert!(deserialize_pairs(&map[..cut]).len() <= 2);
        }
        assert!(deserialize_pairs(&[0xff, 0xff, 0xff, 0xff]).is_empty());
    }

    #[test]
    fn envoys_own_timeout_reply_to_a_callout_is_told_apart_from_a_providers_504() {
        assert!(callout_made_by_envoy(504, "text/plain", b"upstream request timeout"));
        assert!(callout_made_by_envoy(503, "text/plain", b"upstream connect error or disconnect/reset before headers"));
        assert!(!callout_made_by_envoy(
            504,
            "application/json",
            br#"{"error":{"message":"upstream request timeout"}}"#
        ));
        assert!(!callout_made_by_envoy(500, "text/plain", b"upstream request timeout"));
    }
}
