//! Peak memory of this crate alone (no tiktoken-rs in the binary): after
//! counting a 4 KB text of each common kind with both encodings, then after
//! the 1 MiB adversarial texts of `examples/side_by_side.rs`, each
//! generated, counted and dropped in turn (that peak includes the 1 MiB
//! text and the merge state of a 1 MiB piece). Natively the process's peak
//! resident set; in wasm the instance's linear memory. Prints the same JSON
//! lines as `side_by_side`.

#[path = "../tests/common/mod.rs"]
mod common;

use tollgate_tokens::{Encoding, count};

fn main() {
    let available = || [Encoding::O200kBase, Encoding::Cl100kBase].into_iter().filter(|e| e.is_available());
    for encoding in available() {
        for t in common::typical_texts() {
            std::hint::black_box(count(encoding, &t));
        }
    }
    report("peak memory, 4 KB texts (both encodings)");
    for k in 0..common::ADVERSARIAL.len() {
        let text = common::adversarial_text(k, 1 << 20);
        for encoding in available() {
            std::hint::black_box(count(encoding, &text));
        }
    }
    report("peak memory, then 1 MiB adversarial texts");
}

fn report(metric: &str) {
    let value = common::peak_memory_mib().map_or("null".to_owned(), |v| format!("{v:.3}"));
    println!("{{\"part\":\"memory\",\"metric\":\"{metric}\",\"ours\":{value},\"tiktoken\":null,\"unit\":\"MiB\"}}");
}
