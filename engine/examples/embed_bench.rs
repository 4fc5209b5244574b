//! Embeddings per second on the tiny embedding models (the tests' ones):
//! `cargo run --release -p rbee-engine --example embed_bench -- DIR N`
//! writes them into DIR and embeds N sentences with each, one request of
//! one input at a time and one request of all N. Prints one JSON line per
//! model; e2e/bench/embeddings.py runs llama.cpp on the same files.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use rbee_engine::{EmbedInput, Engine};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: embed_bench DIR N"));
    let n: usize = args.next().map_or(200, |s| s.parse().expect("N is a number"));
    std::fs::create_dir_all(&dir).expect("creating the directory");
    let engine = Engine::new(rbee_engine::Config::new(dir.join("data"))).expect("engine");
    let sentences: Vec<String> = (0..n).map(|i| format!("the bee {i} flew to the hive, the sea and the world; hello honey {}", i * 7)).collect();
    for (name, t) in support::tiny_embedders() {
        let path = t.write_in(&dir, name);
        let id = engine.store().import(&path, None).expect("import").id;
        engine.embed(&id, &[EmbedInput::Text("warm up".into())], None).expect("load");
        let start = Instant::now();
        let mut tokens = 0;
        for s in &sentences {
            tokens += engine.embed(&id, &[EmbedInput::Text(s.clone())], None).expect("embed").prompt_tokens;
        }
        let one_by_one = start.elapsed().as_secs_f64();
        let inputs: Vec<EmbedInput> = sentences.iter().cloned().map(EmbedInput::Text).collect();
        let start = Instant::now();
        engine.embed(&id, &inputs, None).expect("embed");
        let batch = start.elapsed().as_secs_f64();
        println!(
            "{{\"model\": \"{name}\", \"file\": \"{}\", \"inputs\": {n}, \"tokens\": {tokens}, \"per_sec_one_by_one\": {:.1}, \"per_sec_one_request\": {:.1}}}",
            path.display(),
            n as f64 / one_by_one,
            n as f64 / batch
        );
    }
}
