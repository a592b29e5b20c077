//! The public API under whatever features are on.

// On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use tollgate_tokens::{Encoding, count};

#[test]
fn names_round_trip() {
    for e in [Encoding::O200kBase, Encoding::Cl100kBase] {
        assert_eq!(Encoding::from_name(e.name()), Some(e));
    }
    assert_eq!(Encoding::O200kBase.name(), "o200k_base");
    assert_eq!(Encoding::Cl100kBase.name(), "cl100k_base");
    assert_eq!(Encoding::from_name("p50k_base"), None);
    assert_eq!(Encoding::from_name("O200K_BASE"), None);
    assert_eq!(Encoding::from_name(""), None);
}

#[test]
fn availability_follows_features() {
    assert_eq!(Encoding::O200kBase.is_available(), cfg!(feature = "o200k"));
    assert_eq!(Encoding::Cl100kBase.is_available(), cfg!(feature = "cl100k"));
    for e in [Encoding::O200kBase, Encoding::Cl100kBase] {
        assert_eq!(count(e, "hello world").is_some(), e.is_available());
        assert_eq!(count(e, "").is_some(), e.is_available());
    }
}

#[test]
fn small_known_counts() {
    for e in [Encoding::O200kBase, Encoding::Cl100kBase] {
        if e.is_available() {
            assert_eq!(count(e, ""), Some(0));
            assert_eq!(count(e, "hello world"), Some(2));
            // Special-token strings are ordinary text: several tokens.
            assert!(count(e, "<|endoftext|>").is_some_and(|n| n > 1));
        }
    }
}
