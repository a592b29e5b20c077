//! Prints the token counts of standard input under both encodings. Built
//! for `wasm32-wasip1` it also shows what the crate weighs in a binary (it
//! uses nothing else):
//!
//! `echo 'Hello, world!' | cargo run --release --example count_stdin`

use std::io::Read;
use tollgate_tokens::{Encoding, count};

fn main() {
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        eprintln!("cannot read standard input: {e}");
        std::process::exit(1);
    }
    for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
        match count(encoding, &text) {
            Some(n) => println!("{}: {n}", encoding.name()),
            None => println!("{}: not compiled in", encoding.name()),
        }
    }
}
