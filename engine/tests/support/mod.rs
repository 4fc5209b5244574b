//! Test support: the fixture model and tiny generated GGUF models.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

mod fixture;
pub mod hub;
#[allow(unused_imports)]
pub use fixture::{device, fixture, instruct};

/// Which vocabulary a tiny model gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vocab {
    SentencePiece,
    ByteLevel,
}

/// A tiny random-weight model of a given architecture.
#[derive(Debug, Clone)]
pub struct Tiny {
    pub arch: &'static str,
    pub vocab: Vocab,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_layer: usize,
    pub ffn: usize,
    pub sliding_window: Option<u32>,
    pub context_length: u64,
    /// How the matrices are stored (norms and biases are always F32).
    pub weights: GgmlDType,
}

pub fn tiny(arch: &'static str) -> Tiny {
    let vocab = match arch {
        "qwen2" | "qwen3" => Vocab::ByteLevel,
        _ => Vocab::SentencePiece,
    };
    Tiny { arch, vocab, n_embd: 64, n_head: 4, n_head_kv: 2, n_layer: 2, ffn: 128, sliding_window: None, context_length: 4096, weights: GgmlDType::Q8_0 }
}

/// GPT-2's reversible byte → printable character mapping.
pub fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).expect("valid char")
}

const SPECIALS: [&str; 9] = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>", "<|end|>"];

/// (tokens, scores, types, merges) of the tiny vocabulary.
pub fn vocab(kind: Vocab) -> (Vec<String>, Vec<f32>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; SPECIALS.len()];
    types[3] = 2; // <unk>
    let mut merges = Vec::new();
    match kind {
        Vocab::SentencePiece => {
            for b in 0..=255u8 {
                tokens.push(format!("<0x{b:02X}>"));
                types.push(6);
            }
            for p in [
                "▁", "a", "b", "c", "d", "e", "h", "l", "o", "t", "w", "r", "▁t", "he", "▁the", "ll", "llo", "▁h", "▁he", "▁hello", "wo", "wor", "▁w", "▁wor",
                "ld", "▁world",
            ] {
                tokens.push(p.to_string());
                types.push(1);
            }
            tokens.push("\n".into());
            types.push(4);
        }
        Vocab::ByteLevel => {
            for b in 0..=255u8 {
                tokens.push(byte_char(b).to_string());
                types.push(1);
            }
            for (a, b) in
                [("h", "e"), ("Ġ", "t"), ("Ġt", "he"), ("l", "l"), ("ll", "o"), ("he", "llo"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld")]
            {
                merges.push(format!("{a} {b}"));
                tokens.push(format!("{a}{b}"));
                types.push(1);
            }
        }
    }
    // Longer pieces score higher, as in SentencePiece vocabularies.
    let scores = tokens.iter().enumerate().map(|(i, t)| t.chars().count() as f32 - i as f32 * 1e-3).collect();
    (tokens, scores, types, merges)
}

impl Tiny {
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Writes the model to `path`.
    pub fn write(&self, path: &Path) {
        let dev = Device::Cpu;
        let (tokens, scores, types, merges) = vocab(self.vocab);
        let n_vocab = tokens.len();
        let hd = self.head_dim();
        let a = self.arch;
        let mut meta: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(a.into())),
            ("general.name".into(), Value::String(format!("tiny {a}"))),
            (format!("{a}.context_length"), Value::U64(self.context_length)),
            (format!("{a}.embedding_length"), Value::U32(self.n_embd as u32)),
            (format!("{a}.block_count"), Value::U32(self.n_layer as u32)),
            (format!("{a}.feed_forward_length"), Value::U32(self.ffn as u32)),
            (format!("{a}.attention.head_count"), Value::U32(self.n_head as u32)),
            (format!("{a}.attention.head_count_kv"), Value::U32(self.n_head_kv as u32)),
            (format!("{a}.attention.key_length"), Value::U32(hd as u32)),
            (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
            (format!("{a}.rope.freq_base"), Value::F32(10_000.0)),
            ("tokenizer.ggml.model".into(), Value::String(if self.vocab == Vocab::SentencePiece { "llama" } else { "gpt2" }.into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect())),
            ("tokenizer.ggml.token_type".into(), Value::Array(types.iter().map(|t| Value::I32(*t)).collect())),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(3)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(self.vocab == Vocab::SentencePiece)),
        ];
        if self.vocab == Vocab::SentencePiece {
            meta.push(("tokenizer.ggml.scores".into(), Value::Array(scores.iter().map(|s| Value::F32(*s)).collect())));
            meta.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(a != "gemma3")));
        } else {
            meta.push(("tokenizer.ggml.merges".into(), Value::Array(merges.iter().map(|m| Value::String(m.clone())).collect())));
            meta.push(("tokenizer.ggml.pre".into(), Value::String("qwen2".into())));
        }
        if let Some(w) = self.sliding_window {
            meta.push((format!("{a}.attention.sliding_window"), Value::U32(w)));
        }

        // Seeded per architecture: the same weights every run, so a test's
        // tolerance is judged once, not re-rolled on every run.
        let rng = std::cell::RefCell::new(rand::rngs::StdRng::seed_from_u64(a.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))));
        let uniform = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
            let mut r = rng.borrow_mut();
            (0..n).map(|_| r.random_range(lo..hi)).collect()
        };
        // Zero mean, standard deviation `sd` (uniform on ±√3·sd).
        let noise = |n: usize, sd: f32| uniform(n, -1.732 * sd, 1.732 * sd);
        let q = |shape: (usize, usize)| {
            let t = Tensor::from_vec(noise(shape.0 * shape.1, 1.0 / (shape.1 as f32).sqrt()), shape, &dev).unwrap();
            QTensor::quantize(&t, self.weights).unwrap()
        };
        let norm = |n: usize| QTensor::quantize(&Tensor::from_vec(uniform(n, 0.8, 1.2), n, &dev).unwrap(), GgmlDType::F32).unwrap();
        let bias = |n: usize| QTensor::quantize(&Tensor::from_vec(noise(n, 0.1), n, &dev).unwrap(), GgmlDType::F32).unwrap();
        let (e, f) = (self.n_embd, self.ffn);
        let (qd, kd) = (self.n_head * hd, self.n_head_kv * hd);
        let mut tensors: Vec<(String, QTensor)> = vec![("token_embd.weight".into(), q((n_vocab, e))), ("output_norm.weight".into(), norm(e))];
        if a != "gemma3" {
            tensors.push(("output.weight".into(), q((n_vocab, e))));
        }
        for i in 0..self.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            tensors.push((p("attn_norm.weight"), norm(e)));
            tensors.push((p("ffn_norm.weight"), norm(e)));
            tensors.push((p("attn_output.weight"), q((e, qd))));
            tensors.push((p("ffn_down.weight"), q((e, f))));
            if a == "phi3" {
                tensors.push((p("attn_qkv.weight"), q((qd + 2 * kd, e))));
                tensors.push((p("ffn_up.weight"), q((2 * f, e))));
            } else {
                tensors.push((p("attn_q.weight"), q((qd, e))));
                tensors.push((p("attn_k.weight"), q((kd, e))));
                tensors.push((p("attn_v.weight"), q((kd, e))));
                tensors.push((p("ffn_gate.weight"), q((f, e))));
                tensors.push((p("ffn_up.weight"), q((f, e))));
            }
            if a == "qwen2" {
                tensors.push((p("attn_q.bias"), bias(qd)));
                tensors.push((p("attn_k.bias"), bias(kd)));
                tensors.push((p("attn_v.bias"), bias(kd)));
            }
            if a == "qwen3" || a == "gemma3" {
                tensors.push((p("attn_q_norm.weight"), norm(hd)));
                tensors.push((p("attn_k_norm.weight"), norm(hd)));
            }
            if a == "gemma3" {
                tensors.push((p("post_attention_norm.weight"), norm(e)));
                tensors.push((p("post_ffw_norm.weight"), norm(e)));
            }
        }
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut file = std::fs::File::create(path).unwrap();
        gguf_file::write(&mut file, &meta_refs, &tensor_refs).unwrap();
    }

    /// Writes the model into `dir` as `<name>.gguf` and returns the path.
    pub fn write_in(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.gguf"));
        self.write(&path);
        path
    }
}

/// An engine on a fresh data dir holding `t` (with `tweak` applied to its
/// config): the dir (keep it alive), the engine and the model's id.
pub fn engine_with(t: &Tiny, tweak: impl FnOnce(&mut rbee_engine::Config)) -> (tempfile::TempDir, rbee_engine::Engine, String) {
    let dir = tempfile::tempdir().unwrap();
    let src = t.write_in(dir.path(), "src");
    let mut cfg = rbee_engine::Config::new(dir.path().join("data"));
    tweak(&mut cfg);
    let engine = rbee_engine::Engine::new(cfg).unwrap();
    let id = engine.store().import(&src, None).unwrap().id;
    (dir, engine, id)
}
