//! Embedding models on tiny generated GGUFs against llama.cpp's answers
//! (e2e/oracle/golden-embeddings.json, written by make_embed_golden.py from
//! the same files), and the engine's embedding API.

mod support;

use rbee_engine::gguf::Gguf;
use rbee_engine::tokenizer::Tokenizer;
use rbee_engine::{EmbedInput, Error, Prompt, Request, SamplingParams};
use serde::Deserialize;
use support::{engine_with, tiny, tiny_embedders};

#[derive(Deserialize)]
struct Golden {
    models: std::collections::HashMap<String, Vec<Case>>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn golden() -> Golden {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../e2e/oracle/golden-embeddings.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn bert_nomic_bert_and_a_pooling_qwen3_tokenize_and_embed_as_llama_cpp_does() {
    let golden = golden();
    for (name, t) in tiny_embedders() {
        let cases = &golden.models[name];
        let (dir, engine, id) = engine_with(&t, |_| {});
        let tokenizer = Tokenizer::from_gguf(&Gguf::open(&dir.path().join("src.gguf")).unwrap()).unwrap();
        let inputs: Vec<EmbedInput> = cases.iter().map(|c| EmbedInput::Text(c.text.clone())).collect();
        let out = engine.embed(&id, &inputs, None).unwrap();
        assert_eq!(out.vectors.len(), cases.len());
        for (case, v) in cases.iter().zip(&out.vectors) {
            assert_eq!(tokenizer.encode_to_embed(&case.text).unwrap(), case.ids, "{name}: tokens of {:?}", case.text);
            assert_eq!(v.len(), t.n_embd);
            let norm: f64 = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{name}: unit length, got {norm}");
            let worst = v.iter().zip(&case.embedding).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(cosine(v, &case.embedding) > 0.9999 && worst < 5e-3, "{name} {:?}: cosine {} worst {worst}", case.text, cosine(v, &case.embedding));
        }
        assert_eq!(out.prompt_tokens, cases.iter().map(|c| c.ids.len()).sum::<usize>());
        // Token ids give the same vector as their text.
        let by_ids = engine.embed(&id, &[EmbedInput::Tokens(cases[0].ids.clone())], None).unwrap();
        assert_eq!(by_ids.vectors[0], out.vectors[0], "{name}");
    }
}

#[test]
fn dimensions_cut_and_renormalise_and_bad_inputs_are_refused_without_harm() {
    let (_d, engine, id) = engine_with(&tiny("nomic-bert"), |_| {});
    let full = engine.embed(&id, &[EmbedInput::Text("the hive".into())], None).unwrap().vectors.remove(0);
    let cut = engine.embed(&id, &[EmbedInput::Text("the hive".into())], Some(16)).unwrap().vectors.remove(0);
    assert_eq!(cut.len(), 16);
    let scale = cut[0] / full[0];
    assert!(cut.iter().zip(&full).all(|(c, f)| (c - f * scale).abs() < 1e-5), "the first 16, rescaled");
    assert!((cut.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
    for (inputs, dims, what) in [
        (vec![EmbedInput::Text(String::new())], None, "empty"),
        (vec![EmbedInput::Tokens(vec![9999])], None, "vocabulary"),
        (vec![EmbedInput::Text("x".into())], Some(65), "dimensions"),
        (vec![EmbedInput::Text("x".into())], Some(0), "dimensions"),
    ] {
        match engine.embed(&id, &inputs, dims) {
            Err(Error::InvalidRequest(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    let long = "the ".repeat(600);
    assert!(matches!(engine.embed(&id, &[EmbedInput::Text(long)], None), Err(Error::PromptTooLong { .. })));
    // The model still answers, and an embedding model does not chat.
    assert_eq!(engine.embed(&id, &[EmbedInput::Text("the hive".into())], None).unwrap().vectors[0], full);
    let chat = engine.generate(&id, Request { prompt: Prompt::Text("hello".into()), params: SamplingParams::greedy() });
    assert!(matches!(chat, Err(Error::WrongModelKind(ref m)) if m.contains("embedding model")), "{chat:?}");
}

#[test]
fn a_chat_model_asked_for_embeddings_says_so() {
    let (_d, engine, id) = engine_with(&tiny("llama"), |_| {});
    match engine.embed(&id, &[EmbedInput::Text("hello".into())], None) {
        Err(Error::WrongModelKind(m)) => assert!(m.contains("chat model") && m.contains(&id), "{m}"),
        other => panic!("{other:?}"),
    }
    // And it still chats.
    assert!(
        engine
            .generate(&id, Request { prompt: Prompt::Text("hello".into()), params: SamplingParams { max_tokens: Some(2), ..SamplingParams::greedy() } })
            .is_ok()
    );
}
