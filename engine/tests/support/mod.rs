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
    /// BERT's, as GGUF stores it (word starts with `▁`, continuations bare).
    WordPiece,
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
    /// `{arch}.pooling_type` (1 mean, 2 CLS, 3 last): an embedding model.
    pub pooling: Option<u32>,
    /// Control tokens added at the end of the vocabulary (`[TOOL_CALLS]`).
    pub extra_specials: Vec<&'static str>,
    /// `tokenizer.chat_template`, when the file has one.
    pub template: Option<String>,
}

pub fn tiny(arch: &'static str) -> Tiny {
    let vocab = match arch {
        "qwen2" | "qwen3" => Vocab::ByteLevel,
        "bert" | "nomic-bert" => Vocab::WordPiece,
        _ => Vocab::SentencePiece,
    };
    let encoder = vocab == Vocab::WordPiece;
    Tiny {
        arch,
        vocab,
        n_embd: 64,
        n_head: 4,
        n_head_kv: if encoder { 4 } else { 2 },
        n_layer: 2,
        ffn: 128,
        sliding_window: None,
        context_length: if encoder { 512 } else { 4096 },
        weights: GgmlDType::Q8_0,
        pooling: encoder.then_some(1),
        extra_specials: Vec::new(),
        template: None,
    }
}

/// The tiny embedding models the golden file (e2e/oracle/golden-embeddings.json)
/// was computed from, by name: BERT pooled by mean and by `[CLS]`, Nomic's
/// BERT, and a Qwen3 decoder pooled on its last token. F16 weights: the
/// llama.cpp build that wrote the file crashes in its AMX kernel on Q8_0
/// matrices this small.
pub fn tiny_embedders() -> Vec<(&'static str, Tiny)> {
    vec![
        ("bert-mean", Tiny { weights: GgmlDType::F16, ..tiny("bert") }),
        ("bert-cls", Tiny { weights: GgmlDType::F16, pooling: Some(2), ..tiny("bert") }),
        ("nomic-bert", Tiny { weights: GgmlDType::F16, ..tiny("nomic-bert") }),
        ("qwen3-last", Tiny { weights: GgmlDType::F16, pooling: Some(3), ..tiny("qwen3") }),
    ]
}

/// WordPiece pieces of the tiny BERT vocabulary after its five specials.
const WORD_PIECES: [&str; 23] = [
    "▁the", "▁hello", "▁world", "▁bee", "▁honey", "▁hive", "▁sea", "ing", "ed", "▁a", "▁b", "▁e", "▁h", "▁s", "▁t", "▁w", "▁.", "▁,", "▁!", "▁?", "▁'", "▁1",
    "▁2",
];

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
    if kind == Vocab::WordPiece {
        let mut tokens: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
        let mut types = vec![3, 2, 3, 3, 3];
        for p in WORD_PIECES {
            tokens.push(p.to_string());
            types.push(1);
        }
        // Every letter as a continuation, so any ASCII word can be spelled.
        for c in 'a'..='z' {
            tokens.push(c.to_string());
            types.push(1);
        }
        let scores = vec![0.0; tokens.len()];
        return (tokens, scores, types, merges);
    }
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
        Vocab::WordPiece => unreachable!("returned above"),
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

/// Seeded random values for a tiny model's tensors.
struct Random {
    rng: std::cell::RefCell<rand::rngs::StdRng>,
    dtype: GgmlDType,
}

impl Random {
    /// Seeded by the architecture's name and `salt`; matrices stored as `dtype`.
    fn new(arch: &str, salt: u64, dtype: GgmlDType) -> Self {
        let seed = arch.bytes().fold(salt, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        Self { rng: std::cell::RefCell::new(rand::rngs::StdRng::seed_from_u64(seed)), dtype }
    }

    fn uniform(&self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        let mut r = self.rng.borrow_mut();
        (0..n).map(|_| r.random_range(lo..hi)).collect()
    }

    /// Zero mean, standard deviation `sd` (uniform on ±√3·sd).
    fn noise(&self, n: usize, sd: f32) -> Vec<f32> {
        self.uniform(n, -1.732 * sd, 1.732 * sd)
    }

    /// A (rows, cols) matrix scaled for unit-variance outputs.
    fn matrix(&self, shape: (usize, usize)) -> QTensor {
        let t = Tensor::from_vec(self.noise(shape.0 * shape.1, 1.0 / (shape.1 as f32).sqrt()), shape, &Device::Cpu).unwrap();
        QTensor::quantize(&t, self.dtype).unwrap()
    }
}

impl Tiny {
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Writes the model to `path`.
    pub fn write(&self, path: &Path) {
        if self.vocab == Vocab::WordPiece {
            return self.write_encoder(path);
        }
        let dev = Device::Cpu;
        let (mut tokens, mut scores, mut types, merges) = vocab(self.vocab);
        for t in &self.extra_specials {
            tokens.push(t.to_string());
            scores.push(0.0);
            types.push(3);
        }
        let n_vocab = tokens.len();
        let hd = self.head_dim();
        let a = self.arch;
        let mut meta: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(a.into())),
            ("general.name".into(), Value::String(format!("tiny {a}"))),
            // u32 as llama.cpp reads it, where it fits.
            (format!("{a}.context_length"), u32::try_from(self.context_length).map_or(Value::U64(self.context_length), Value::U32)),
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
        if let Some(t) = &self.template {
            meta.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
        }
        if let Some(p) = self.pooling {
            // As Qwen3-Embedding's file: pool on the EOS appended to each input.
            meta.push((format!("{a}.pooling_type"), Value::U32(p)));
            meta.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(true)));
        }

        // Seeded per architecture: the same weights every run, so a test's
        // tolerance is judged once, not re-rolled on every run.
        let r = Random::new(a, 7, self.weights);
        let (uniform, noise, q) = (|n, lo, hi| r.uniform(n, lo, hi), |n, sd| r.noise(n, sd), |shape| r.matrix(shape));
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

    /// Writes a BERT-family encoder (`bert`: absolute positions, GELU;
    /// `nomic-bert`: rotary, fused QKV, SwiGLU) with F32 norms and biases.
    fn write_encoder(&self, path: &Path) {
        let dev = Device::Cpu;
        let (tokens, scores, types, _) = vocab(Vocab::WordPiece);
        let n_vocab = tokens.len();
        let a = self.arch;
        let nomic = a == "nomic-bert";
        let mut meta: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(a.into())),
            ("general.name".into(), Value::String(format!("tiny {a}"))),
            (format!("{a}.context_length"), Value::U32(self.context_length as u32)),
            (format!("{a}.embedding_length"), Value::U32(self.n_embd as u32)),
            (format!("{a}.block_count"), Value::U32(self.n_layer as u32)),
            (format!("{a}.feed_forward_length"), Value::U32(self.ffn as u32)),
            (format!("{a}.attention.head_count"), Value::U32(self.n_head as u32)),
            (format!("{a}.attention.layer_norm_epsilon"), Value::F32(1e-12)),
            (format!("{a}.attention.causal"), Value::Bool(false)),
            (format!("{a}.pooling_type"), Value::U32(self.pooling.unwrap_or(1))),
            ("tokenizer.ggml.model".into(), Value::String("bert".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect())),
            ("tokenizer.ggml.scores".into(), Value::Array(scores.iter().map(|s| Value::F32(*s)).collect())),
            ("tokenizer.ggml.token_type".into(), Value::Array(types.iter().map(|t| Value::I32(*t)).collect())),
            ("tokenizer.ggml.token_type_count".into(), Value::U32(2)),
            ("tokenizer.ggml.padding_token_id".into(), Value::U32(0)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.cls_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.seperator_token_id".into(), Value::U32(3)),
            ("tokenizer.ggml.mask_token_id".into(), Value::U32(4)),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(3)),
        ];
        if nomic {
            meta.push((format!("{a}.rope.freq_base"), Value::F32(1000.0)));
        }
        let r = Random::new(a, 11, self.weights);
        let (uniform, noise, q) = (|n, lo, hi| r.uniform(n, lo, hi), |n, sd| r.noise(n, sd), |shape| r.matrix(shape));
        let f32s = |v: Vec<f32>, shape: &[usize]| QTensor::quantize(&Tensor::from_vec(v, shape, &dev).unwrap(), GgmlDType::F32).unwrap();
        let (e, f) = (self.n_embd, self.ffn);
        let mut tensors: Vec<(String, QTensor)> = vec![
            ("token_embd.weight".into(), q((n_vocab, e))),
            ("token_types.weight".into(), f32s(noise(2 * e, 0.1), &[2, e])),
            ("token_embd_norm.weight".into(), f32s(uniform(e, 0.8, 1.2), &[e])),
            ("token_embd_norm.bias".into(), f32s(noise(e, 0.1), &[e])),
        ];
        if !nomic {
            let ctx = self.context_length as usize;
            tensors.push(("position_embd.weight".into(), f32s(noise(ctx * e, 0.3), &[ctx, e])));
        }
        for i in 0..self.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            let mut norm = |name: &str| {
                tensors.push((p(&format!("{name}.weight")), f32s(uniform(e, 0.8, 1.2), &[e])));
                tensors.push((p(&format!("{name}.bias")), f32s(noise(e, 0.1), &[e])));
            };
            norm("attn_output_norm");
            norm("layer_output_norm");
            tensors.push((p("attn_output.weight"), q((e, e))));
            tensors.push((p("ffn_up.weight"), q((f, e))));
            tensors.push((p("ffn_down.weight"), q((e, f))));
            if nomic {
                tensors.push((p("attn_qkv.weight"), q((3 * e, e))));
                tensors.push((p("ffn_gate.weight"), q((f, e))));
            } else {
                for (name, n) in [("attn_q", e), ("attn_k", e), ("attn_v", e), ("attn_output", e), ("ffn_up", f), ("ffn_down", e)] {
                    tensors.push((p(&format!("{name}.bias")), f32s(noise(n, 0.1), &[n])));
                }
                tensors.push((p("attn_q.weight"), q((e, e))));
                tensors.push((p("attn_k.weight"), q((e, e))));
                tensors.push((p("attn_v.weight"), q((e, e))));
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
