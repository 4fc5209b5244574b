//! Writes the tiny embedding models the engine's tests generate (the same
//! seeded weights) into a directory, for `e2e/oracle/make_embed_golden.py`
//! to run through llama.cpp.
//!
//! `cargo run -p rbee-engine --example tiny_embedders -- DIR`

#[path = "../tests/support/mod.rs"]
mod support;

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: tiny_embedders DIR"));
    std::fs::create_dir_all(&dir).expect("creating the directory");
    for (name, t) in support::tiny_embedders() {
        let path = t.write_in(&dir, name);
        println!("{}", path.display());
    }
}
