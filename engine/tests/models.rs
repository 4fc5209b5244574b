//! Every supported architecture, on tiny generated GGUFs: loads, and the KV
//! cache, chunked prefill and sliding windows compute what a one-shot
//! forward pass computes.

mod support;

use candle_core::Device;
use rbee_engine::Model;
use rbee_engine::error::Error;
use support::{Tiny, tiny};

const ARCHS: [&str; 5] = ["llama", "qwen2", "qwen3", "gemma3", "phi3"];

fn load(t: &Tiny) -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().unwrap();
    let path = t.write_in(dir.path(), t.arch);
    let model = Model::load(&path, &support::device(), 4096).unwrap_or_else(|e| panic!("{}: {e}", t.arch));
    (dir, model)
}

fn tokens(model: &Model, n: usize) -> Vec<u32> {
    let v = model.tokenizer.vocab_size() as u32;
    (0..n as u32).map(|i| (i * 37 + 11) % v).collect()
}

/// Logits after feeding `toks` in chunks of the given sizes.
fn logits_in_chunks(model: &Model, toks: &[u32], chunks: &[usize]) -> Vec<f32> {
    let mut cache = model.weights.new_cache();
    let mut at = 0;
    let mut last = None;
    for &c in chunks {
        last = Some(model.weights.forward(&toks[at..at + c], &mut cache).unwrap());
        at += c;
    }
    assert_eq!(at, toks.len());
    assert_eq!(cache.len(), toks.len());
    last.unwrap().to_vec1::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check_consistency(t: &Tiny) {
    let (_dir, model) = load(t);
    let toks = tokens(&model, 13);
    let whole = logits_in_chunks(&model, &toks, &[13]);
    assert_eq!(whole.len(), model.tokenizer.vocab_size(), "{}: one logit per vocabulary entry", t.arch);
    assert!(whole.iter().all(|x| x.is_finite()), "{}: finite logits", t.arch);
    let chunked = logits_in_chunks(&model, &toks, &[5, 4, 1, 3]);
    let stepwise = logits_in_chunks(&model, &toks, &[1; 13]);
    // Bit for bit: on the CPU a token's result does not depend on what ran
    // with it, which is what makes reusing a cache to the token exact.
    assert!(whole == chunked, "{}: chunked prefill differs by {}", t.arch, max_diff(&whole, &chunked));
    assert!(whole == stepwise, "{}: token-by-token differs by {}", t.arch, max_diff(&whole, &stepwise));
}

#[test]
fn every_architecture_agrees_with_itself_across_chunkings() {
    for arch in ARCHS {
        check_consistency(&tiny(arch));
    }
}

/// Weights stored as F16, BF16 or F32 run in place through rbee's float
/// kernels: every token's result is the same however the prompt is split,
/// and the logits are the exact model's (weights widened to f32 and f32
/// activations, as `Precision::Exact` computes with candle's matrix
/// product) but for the f16 rounding of the KV cache (~1e-3 relative).
#[test]
fn float_weights_agree_with_themselves_and_with_the_exact_model() {
    use candle_core::quantized::GgmlDType;
    use rbee_engine::gguf::Gguf;
    use rbee_engine::model::{Precision, Weights};
    for weights in [GgmlDType::F16, GgmlDType::BF16, GgmlDType::F32] {
        for arch in ["llama", "gemma3", "phi3"] {
            let t = Tiny { weights, ..tiny(arch) };
            check_consistency(&t);
            let (dir, model) = load(&t);
            let toks = tokens(&model, 13);
            let ours = logits_in_chunks(&model, &toks, &[13]);
            let exact = Weights::load_with(&Gguf::open(&dir.path().join(format!("{arch}.gguf"))).unwrap(), &Device::Cpu, Precision::Exact).unwrap();
            let mut cache = exact.new_cache();
            let want = exact.forward(&toks, &mut cache).unwrap().to_vec1::<f32>().unwrap();
            let spread = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = max_diff(&ours, &want);
            assert!(diff < 2e-3 * spread, "{weights:?} {arch}: differs from the exact model by {diff} (logits up to {spread})");
        }
    }
}

#[test]
fn sliding_window_models_agree_across_chunkings() {
    for arch in ["gemma3", "phi3"] {
        check_consistency(&Tiny { sliding_window: Some(4), ..tiny(arch) });
    }
}

#[test]
fn sliding_window_limits_what_the_last_token_sees() {
    // phi3 with a window of 4 on every layer, 2 layers: the last of 13
    // tokens can only be reached from positions >= 13 - 1 - 2*3 = 6.
    let t = Tiny { sliding_window: Some(4), ..tiny("phi3") };
    let (_dir, model) = load(&t);
    let toks = tokens(&model, 13);
    let mut changed_far = toks.clone();
    changed_far[0] = (changed_far[0] + 1) % model.tokenizer.vocab_size() as u32;
    let mut changed_near = toks.clone();
    changed_near[9] = (changed_near[9] + 1) % model.tokenizer.vocab_size() as u32;
    let base = logits_in_chunks(&model, &toks, &[13]);
    assert!(max_diff(&base, &logits_in_chunks(&model, &changed_far, &[13])) < 1e-6, "a token outside the window must not matter");
    assert!(max_diff(&base, &logits_in_chunks(&model, &changed_far, &[1; 13])) < 1e-3, "nor when decoding token by token");
    assert!(max_diff(&base, &logits_in_chunks(&model, &changed_near, &[13])) > 1e-4, "a token inside the window must matter");

    // Without a window the first token reaches the last.
    let (_dir, full) = load(&tiny("phi3"));
    let base = logits_in_chunks(&full, &toks, &[13]);
    assert!(max_diff(&base, &logits_in_chunks(&full, &changed_far, &[13])) > 1e-4);
}

#[test]
fn gemma3_global_layers_see_past_the_window() {
    // Gemma 3 interleaves 5 windowed layers with 1 global one: with 6
    // layers, information from far back still arrives through layer 6.
    let t = Tiny { sliding_window: Some(4), n_layer: 6, ..tiny("gemma3") };
    let (_dir, model) = load(&t);
    let toks = tokens(&model, 13);
    let mut changed = toks.clone();
    changed[0] = (changed[0] + 1) % model.tokenizer.vocab_size() as u32;
    let base = logits_in_chunks(&model, &toks, &[13]);
    assert!(max_diff(&base, &logits_in_chunks(&model, &changed, &[13])) > 1e-4);
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny("mamba").write_in(dir.path(), "mamba");
    let err = Model::load(&path, &Device::Cpu, 4096).unwrap_err();
    assert!(matches!(err, Error::UnsupportedArchitecture(ref a) if a == "mamba"), "{err}");
    assert!(err.to_string().contains("mamba") && err.to_string().contains("supported"), "{err}");
}

#[test]
fn truncated_and_garbage_files_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny("llama").write_in(dir.path(), "whole");
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = Model::load(&cut, &Device::Cpu, 4096).unwrap_err();
    assert!(matches!(err, Error::InvalidModel { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");

    let header_cut = dir.path().join("header.gguf");
    std::fs::write(&header_cut, &bytes[..100]).unwrap();
    let err = Model::load(&header_cut, &Device::Cpu, 4096).unwrap_err();
    assert!(err.to_string().contains("truncated or corrupt"), "{err}");

    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model at all, just some text").unwrap();
    let err = Model::load(&garbage, &Device::Cpu, 4096).unwrap_err();
    assert!(err.to_string().contains("GGUF magic"), "{err}");
}

#[test]
fn a_file_in_a_quantization_rbee_cannot_run_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny("llama").write_in(dir.path(), "llama");
    let mut bytes = std::fs::read(&path).unwrap();
    // The tensor description of `token_embd.weight`: name length (u64), name,
    // dimension count (u32), two dimensions (u64 each), then its type (u32).
    let name = b"token_embd.weight";
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name);
    let at = bytes.windows(key.len()).position(|w| w == key).expect("the tensor's description");
    let dims = u32::from_le_bytes(bytes[at + key.len()..at + key.len() + 4].try_into().unwrap()) as usize;
    let ty = at + key.len() + 4 + 8 * dims;
    bytes[ty..ty + 4].copy_from_slice(&16u32.to_le_bytes()); // IQ2_XXS
    let iq = dir.path().join("iq.gguf");
    std::fs::write(&iq, &bytes).unwrap();
    let err = Model::load(&iq, &Device::Cpu, 4096).unwrap_err();
    assert!(matches!(err, Error::InvalidModel { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("token_embd.weight") && text.contains("IQ2_XXS") && text.contains("Q4_K"), "{text}");
    assert!(!text.contains("corrupt"), "{text}");
}
