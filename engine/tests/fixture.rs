//! The real fixture model (Gemma 3 270M Q4_K_M) against golden files written
//! by llama.cpp (e2e/oracle/make_golden.py), and end-to-end generation.

mod support;

use candle_core::Device;
use rbee_engine::sampling::argmax;
use rbee_engine::{Config, Engine, Event, FinishReason, Message, Model, Prompt, Request, SamplingParams, Usage};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    model_sha256: String,
    tokenize: Vec<Tokenized>,
    greedy: Vec<Greedy>,
}

#[derive(Deserialize)]
struct Tokenized {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Greedy {
    prompt: String,
    prompt_ids: Vec<u32>,
    ids: Vec<u32>,
    text: String,
}

fn golden() -> Golden {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../e2e/oracle/golden-gemma3-270m-q4_k_m.json");
    let g: Golden = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(g.model_sha256, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818");
    g
}

fn model() -> Model {
    Model::load(&support::fixture(), &Device::Cpu, 4096).unwrap()
}

#[test]
fn tokenizer_matches_llama_cpp() {
    let m = model();
    for t in golden().tokenize {
        assert_eq!(m.tokenizer.encode(&t.text).unwrap(), t.ids, "token ids of {:?}", t.text);
        assert_eq!(m.tokenizer.decode(&t.ids).unwrap(), t.text, "decoding {:?}", t.text);
    }
}

#[test]
fn greedy_continuations_match_llama_cpp() {
    let m = model();
    for g in golden().greedy {
        assert_eq!(m.tokenizer.encode_prompt(&g.prompt).unwrap(), g.prompt_ids, "prompt ids of {:?}", g.prompt);
        let mut cache = m.weights.new_cache();
        let mut logits = m.weights.forward(&g.prompt_ids, &mut cache).unwrap().to_vec1::<f32>().unwrap();
        let mut ids = Vec::new();
        while ids.len() < g.ids.len() {
            let next = argmax(&logits);
            ids.push(next);
            logits = m.weights.forward(&[next], &mut cache).unwrap().to_vec1::<f32>().unwrap();
        }
        let same = ids.iter().zip(&g.ids).take_while(|(a, b)| a == b).count();
        eprintln!("{:4} prompt tokens: {same}/{} greedy tokens equal llama.cpp's", g.prompt_ids.len(), g.ids.len());
        assert!(
            same >= 16.min(g.ids.len()),
            "prompt {:?}: only {same} tokens agree\n ours: {:?}\n llama.cpp: {:?}",
            g.prompt.chars().take(60).collect::<String>(),
            m.tokenizer.decode(&ids).unwrap(),
            g.text
        );
    }
}

fn engine(slots: usize) -> (tempfile::TempDir, Engine, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().to_path_buf());
    cfg.slots = slots;
    let engine = Engine::new(cfg).unwrap();
    let id = engine.store().import(&support::fixture(), None).unwrap().id;
    (dir, engine, id)
}

fn run(engine: &Engine, id: &str, prompt: Prompt, params: SamplingParams) -> (Vec<String>, FinishReason, Usage) {
    let mut g = engine.generate(id, Request { prompt, params }).unwrap();
    let mut chunks = Vec::new();
    while let Some(ev) = g.events.blocking_recv() {
        match ev {
            Event::Text(t) => chunks.push(t),
            Event::Done { finish, usage } => return (chunks, finish, usage),
            Event::Error(e) => panic!("{e}"),
        }
    }
    panic!("no Done event");
}

#[test]
fn engine_generates_golden_text_seeds_repeat_and_stops_cut_cleanly() {
    let (_d, engine, id) = engine(1);
    let golden = golden();
    let france = golden.greedy.iter().find(|g| g.prompt == "The capital of France is").unwrap();
    let greedy = SamplingParams { max_tokens: Some(16), ..SamplingParams::greedy() };
    let (chunks, _, usage) = run(&engine, &id, Prompt::Text(france.prompt.clone()), greedy.clone());
    let text: String = chunks.concat();
    assert!(text.contains("Paris"), "{text:?}");
    let llama16 = engine.model(&id).unwrap().tokenizer.decode(&france.ids[..16]).unwrap();
    assert_eq!(text, llama16, "streamed text equals llama.cpp's first 16 tokens");
    assert_eq!(usage.completion_tokens, 16);

    // A stop string spanning several tokens: output ends right before it.
    let stop_at = llama16.find("Paris").unwrap() + 2;
    let stop = llama16[stop_at..stop_at + 6].to_string();
    let (chunks, finish, _) = run(&engine, &id, Prompt::Text(france.prompt.clone()), SamplingParams { stop: vec![stop.clone()], ..greedy.clone() });
    assert_eq!(finish, FinishReason::Stop);
    let expected = &llama16[..llama16.find(&stop).unwrap()];
    assert_eq!(chunks.concat(), expected, "stop string {stop:?} is never emitted");

    let sampled = |seed| SamplingParams { temperature: 1.0, seed: Some(seed), max_tokens: Some(24), ..Default::default() };
    let a = run(&engine, &id, Prompt::Text(france.prompt.clone()), sampled(42)).0.concat();
    let b = run(&engine, &id, Prompt::Text(france.prompt.clone()), sampled(42)).0.concat();
    let c = run(&engine, &id, Prompt::Text(france.prompt.clone()), sampled(43)).0.concat();
    assert_eq!(a, b, "same seed, same text");
    assert_ne!(a, c, "another seed, another text");
}

#[test]
fn multibyte_text_streams_in_whole_characters() {
    let (_d, engine, id) = engine(1);
    // Gemma writes Japanese and emoji; each chunk is a String, so valid
    // UTF-8, and none may contain a replacement character from a split.
    let (chunks, _, _) = run(
        &engine,
        &id,
        Prompt::Text("日本語の文章：東京は日本の首都です。🐝🍯".into()),
        SamplingParams { max_tokens: Some(40), ..SamplingParams::greedy() },
    );
    let text = chunks.concat();
    assert!(!text.is_empty());
    assert!(!text.contains('\u{FFFD}'), "{text:?}");
    assert!(text.chars().any(|c| c as u32 > 0x3000), "the continuation is Japanese: {text:?}");
}

#[test]
fn chat_follow_ups_reuse_the_cached_prefix_without_changing_the_answer() {
    let (_d, engine, id) = engine(1);
    let params = SamplingParams { max_tokens: Some(12), ..SamplingParams::greedy() };
    let first = vec![Message::new("user", "Name three colours.")];
    let (a, _, _) = run(&engine, &id, Prompt::Chat(first.clone()), params.clone());
    let mut second = first.clone();
    second.push(Message::new("assistant", a.concat()));
    second.push(Message::new("user", "And three animals?"));
    let (warm, _, usage) = run(&engine, &id, Prompt::Chat(second.clone()), params.clone());
    assert!(usage.cached_tokens > 5, "the first turn's tokens are reused: {usage:?}");
    let (_d2, fresh_engine, fresh_id) = engine(1);
    let (cold, _, cold_usage) = run(&fresh_engine, &fresh_id, Prompt::Chat(second), params);
    assert_eq!(cold_usage.cached_tokens, 0);
    assert_eq!(warm.concat(), cold.concat(), "reusing the cache does not change the output");
}
