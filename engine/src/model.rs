//! The transformer: one decoder that covers every supported architecture,
//! configured from GGUF metadata.
//!
//! The supported families differ only in a handful of switches (rotary
//! layout, activation, extra norms, biases, fused projections, sliding-window
//! layers), so they share one forward pass instead of a copy per family.
//! Written on candle-core ops rather than candle-transformers' per-family
//! models because those allocate rotary tables for the whole trained context,
//! copy embeddings to f32, cannot prefill a chunk at a non-zero position, and
//! (gemma3) use SiLU where the model was trained with GELU-tanh.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// Model families the engine runs, by GGUF `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `llama` (also Mistral-style files, which GGUF tags `llama`).
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    Phi3,
    /// BERT encoders (all-MiniLM, bge, e5 and most embedding GGUFs).
    Bert,
    /// Nomic's BERT with rotary positions and a SwiGLU feed-forward (nomic-embed-text).
    NomicBert,
}

impl Arch {
    /// Maps a GGUF architecture name.
    ///
    /// # Errors
    /// [`Error::UnsupportedArchitecture`] for any other name.
    pub fn from_gguf(name: &str) -> Result<Self> {
        Ok(match name {
            "llama" | "mistral" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "gemma3" => Self::Gemma3,
            "phi3" => Self::Phi3,
            "bert" => Self::Bert,
            "nomic-bert" => Self::NomicBert,
            other => return Err(Error::UnsupportedArchitecture(other.to_string())),
        })
    }

    /// The name used in GGUF metadata keys and in the catalog.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
            Self::Phi3 => "phi3",
            Self::Bert => "bert",
            Self::NomicBert => "nomic-bert",
        }
    }

    /// An encoder: bidirectional attention, no text generation.
    pub fn is_encoder(self) -> bool {
        matches!(self, Self::Bert | Self::NomicBert)
    }
}

/// How an embedding model turns its per-token states into one vector
/// (GGUF `{arch}.pooling_type`, llama.cpp's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of every token's state.
    Mean,
    /// The first token's (`[CLS]`).
    Cls,
    /// The last token's (the EOS the tokenizer appends).
    Last,
}

impl Pooling {
    fn from_gguf(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Mean),
            2 => Some(Self::Cls),
            3 => Some(Self::Last),
            _ => None,
        }
    }
}

/// Hyper-parameters read from the GGUF header.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub context_length: usize,
    pub eps: f64,
    pub rope_base: f32,
    /// Rotary base of the sliding-window layers (Gemma 3 uses 10 000 there).
    pub rope_base_local: f32,
    pub sliding_window: Option<usize>,
    pub attn_scale: f64,
    pub final_softcap: Option<f64>,
    /// Set for an embedding model: how it pools (encoders always have one,
    /// mean unless the file says otherwise; a decoder has one only when
    /// the file asks for pooling, as Qwen3-Embedding's does).
    pub pooling: Option<Pooling>,
}

impl Config {
    /// Reads the hyper-parameters of `gguf`.
    ///
    /// # Errors
    /// When a required key is missing or the architecture is unsupported.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let arch = Arch::from_gguf(gguf.architecture()?)?;
        let key = |k: &str| format!("{}.{k}", gguf.architecture().unwrap_or_default());
        let n_embd = gguf.get_u32(&key("embedding_length"))? as usize;
        let n_head = gguf.get_u32(&key("attention.head_count"))? as usize;
        let n_head_kv = gguf.get_u32(&key("attention.head_count_kv")).map(|v| v as usize).unwrap_or(n_head);
        let head_dim = gguf.get_u32(&key("attention.key_length")).map(|v| v as usize).unwrap_or(n_embd / n_head.max(1));
        let n_layer = gguf.get_u32(&key("block_count"))? as usize;
        let invalid = |reason: String| Error::InvalidModel { path: gguf.path().to_path_buf(), reason };
        if n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) || n_layer == 0 || head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(invalid(format!("inconsistent attention shape: {n_head} heads, {n_head_kv} kv heads, head dim {head_dim}, {n_layer} layers")));
        }
        let rope_dim = gguf.get_u32(&key("rope.dimension_count")).map(|v| v as usize).unwrap_or(head_dim);
        let sliding_window = gguf.get_u32(&key("attention.sliding_window")).ok().map(|v| v as usize).filter(|w| *w > 0);
        let attn_scale = match arch {
            // Gemma 3 scales queries by query_pre_attn_scalar, which is
            // n_embd / n_head for the 27B model and the head dim otherwise.
            Arch::Gemma3 if n_layer == 62 => 1.0 / ((n_embd / n_head) as f64).sqrt(),
            _ => 1.0 / (head_dim as f64).sqrt(),
        };
        let rope_base = gguf.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0);
        Ok(Self {
            arch,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            rope_dim,
            context_length: gguf.get_u64(&key("context_length")).map(|v| usize::try_from(v).unwrap_or(usize::MAX)).unwrap_or(4096),
            eps: f64::from(
                gguf.get_f32(&key("attention.layer_norm_rms_epsilon")).or_else(|_| gguf.get_f32(&key("attention.layer_norm_epsilon"))).unwrap_or(1e-5),
            ),
            rope_base,
            rope_base_local: if arch == Arch::Gemma3 { 10_000.0 } else { rope_base },
            sliding_window,
            attn_scale,
            final_softcap: gguf.get_f32(&key("final_logit_softcapping")).ok().map(f64::from).filter(|c| *c > 0.0),
            pooling: match gguf.get_u32(&key("pooling_type")).ok().and_then(Pooling::from_gguf) {
                None if arch.is_encoder() => Some(Pooling::Mean),
                p => p,
            },
        })
    }

    /// Whether layer `i` attends through the sliding window only.
    pub fn is_sliding(&self, i: usize) -> bool {
        match (self.arch, self.sliding_window) {
            (_, None) => false,
            // Gemma 3: five local layers, then one global, repeating.
            (Arch::Gemma3, Some(_)) => !(i + 1).is_multiple_of(6),
            (_, Some(_)) => true,
        }
    }

    /// Bytes of KV cache one token needs on `device` (keys and values of
    /// every layer, in the element type the cache holds there).
    pub fn kv_bytes_per_token(&self, device: &Device) -> usize {
        2 * self.n_layer * self.n_head_kv * self.head_dim * kv_dtype(device, Precision::Quantized).size_in_bytes()
    }
}

/// A linear layer over quantized weights with an optional bias.
#[derive(Debug)]
pub(crate) struct Linear {
    w: QMatMul,
    b: Option<Tensor>,
}

/// How weights are used in matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// As stored (quantized); activations are quantized to 8 bits on the
    /// fly, as llama.cpp does. Fast, and what the engine runs.
    #[default]
    Quantized,
    /// Weights dequantized to f32 and f32 activations: the exact function of
    /// the stored weights, several times larger and slower. A reference for
    /// testing numerics.
    Exact,
}

impl Linear {
    pub(crate) fn load(g: &Gguf, name: &str, dev: &Device, precision: Precision) -> Result<Self> {
        let qt = g.qtensor(&format!("{name}.weight"), dev)?;
        let w = match precision {
            Precision::Quantized => as_stored(Arc::new(qt))?,
            Precision::Exact => QMatMul::Tensor(qt.dequantize(dev)?),
        };
        let bias = format!("{name}.bias");
        let b = if g.has_tensor(&bias) { Some(g.tensor(&bias, dev)?) } else { None };
        Ok(Self { w, b })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = matmul(&self.w, x)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

#[derive(Debug)]
pub(crate) enum Qkv {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

#[derive(Debug)]
enum Ffn {
    Gated {
        gate: Linear,
        up: Linear,
    },
    /// Phi-3: gate and up stacked in one matrix, gate first.
    FusedGateUp(Linear),
}

#[derive(Debug)]
struct Layer {
    attn_norm: Tensor,
    qkv: Qkv,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    wo: Linear,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    ffn: Ffn,
    down: Linear,
    post_ffn_norm: Option<Tensor>,
    sliding: bool,
}

/// Loaded weights; shared (read-only) by every slot of a model.
#[derive(Debug)]
pub struct Weights {
    pub cfg: Config,
    embed: Arc<QTensor>,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: QMatMul,
    device: Device,
    /// Per-dimension divisors of the rotary frequencies (Llama 3.1 `rope_freqs`).
    rope_factors: Option<Vec<f32>>,
    /// What the KV cache holds ([`kv_dtype`]).
    kv_dtype: DType,
}

/// The KV cache's element type: f16 on the CPU (as llama.cpp; half the
/// memory and reads), f32 for [`Precision::Exact`] and on GPUs, where
/// attention runs as candle's f32 matrix products.
fn kv_dtype(device: &Device, precision: Precision) -> DType {
    if device.is_cpu() && precision == Precision::Quantized { DType::F16 } else { DType::F32 }
}

fn optional(g: &Gguf, name: &str, dev: &Device) -> Result<Option<Tensor>> {
    if g.has_tensor(name) { Ok(Some(g.tensor(name, dev)?)) } else { Ok(None) }
}

impl Weights {
    /// Builds the model from an open GGUF on `device`.
    ///
    /// # Errors
    /// When a tensor is missing or has the wrong shape for the header.
    pub fn load(g: &Gguf, device: &Device) -> Result<Self> {
        Self::load_with(g, device, Precision::Quantized)
    }

    /// Like [`load`](Self::load), with the given [`Precision`].
    ///
    /// # Errors
    /// When a tensor is missing or has the wrong shape for the header.
    pub fn load_with(g: &Gguf, device: &Device, precision: Precision) -> Result<Self> {
        let cfg = Config::from_gguf(g)?;
        let embed = Arc::new(g.qtensor("token_embd.weight", device)?);
        let (_, embd_width) = embed.shape().dims2()?;
        if embd_width != cfg.n_embd {
            return Err(Error::InvalidModel {
                path: g.path().to_path_buf(),
                reason: format!("token_embd width {embd_width} does not match embedding_length {}", cfg.n_embd),
            });
        }
        let output = match (g.has_tensor("output.weight"), precision) {
            (true, Precision::Quantized) => as_stored(Arc::new(g.qtensor("output.weight", device)?))?,
            (true, Precision::Exact) => QMatMul::Tensor(g.tensor("output.weight", device)?),
            (false, Precision::Quantized) => as_stored(embed.clone())?,
            (false, Precision::Exact) => QMatMul::Tensor(embed.dequantize(device)?),
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            let qkv = if g.has_tensor(&p("attn_qkv.weight")) {
                Qkv::Fused(Linear::load(g, &p("attn_qkv"), device, precision)?)
            } else {
                Qkv::Separate {
                    q: Linear::load(g, &p("attn_q"), device, precision)?,
                    k: Linear::load(g, &p("attn_k"), device, precision)?,
                    v: Linear::load(g, &p("attn_v"), device, precision)?,
                }
            };
            let ffn = if g.has_tensor(&p("ffn_gate.weight")) {
                Ffn::Gated { gate: Linear::load(g, &p("ffn_gate"), device, precision)?, up: Linear::load(g, &p("ffn_up"), device, precision)? }
            } else {
                Ffn::FusedGateUp(Linear::load(g, &p("ffn_up"), device, precision)?)
            };
            layers.push(Layer {
                attn_norm: g.tensor(&p("attn_norm.weight"), device)?,
                qkv,
                q_norm: optional(g, &p("attn_q_norm.weight"), device)?,
                k_norm: optional(g, &p("attn_k_norm.weight"), device)?,
                wo: Linear::load(g, &p("attn_output"), device, precision)?,
                post_attn_norm: optional(g, &p("post_attention_norm.weight"), device)?,
                ffn_norm: g.tensor(&p("ffn_norm.weight"), device)?,
                ffn,
                down: Linear::load(g, &p("ffn_down"), device, precision)?,
                post_ffn_norm: optional(g, &p("post_ffw_norm.weight"), device)?,
                sliding: cfg.is_sliding(i),
            });
        }
        let rope_factors = if g.has_tensor("rope_freqs.weight") { Some(g.tensor("rope_freqs.weight", &Device::Cpu)?.to_vec1::<f32>()?) } else { None };
        let kv_dtype = kv_dtype(device, precision);
        Ok(Self { output_norm: g.tensor("output_norm.weight", device)?, cfg, embed, layers, output, device: device.clone(), rope_factors, kv_dtype })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh, empty KV cache for one sequence.
    pub fn new_cache(&self) -> Cache {
        Cache { layers: (0..self.cfg.n_layer).map(|_| LayerKv::default()).collect(), len: 0, dtype: self.kv_dtype }
    }

    fn rope_tables(&self, base: f32, pos: usize, n: usize) -> Result<(Tensor, Tensor)> {
        let half = self.cfg.rope_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| {
                let f = 1.0 / base.powf(2.0 * i as f32 / self.cfg.rope_dim as f32);
                match &self.rope_factors {
                    Some(fs) if i < fs.len() => f / fs[i],
                    _ => f,
                }
            })
            .collect();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in pos..pos + n {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok((Tensor::from_vec(cos, (n, half), &self.device)?, Tensor::from_vec(sin, (n, half), &self.device)?))
    }

    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let rot = |x: &Tensor| -> Result<Tensor> {
            let x = x.contiguous()?;
            Ok(if self.cfg.arch == Arch::Llama { candle_nn::rotary_emb::rope_i(&x, cos, sin)? } else { candle_nn::rotary_emb::rope(&x, cos, sin)? })
        };
        let hd = self.cfg.head_dim;
        let rd = self.cfg.rope_dim;
        if rd == hd {
            rot(x)
        } else {
            let head = rot(&x.narrow(D::Minus1, 0, rd)?)?;
            Ok(Tensor::cat(&[&head, &x.narrow(D::Minus1, rd, hd - rd)?], D::Minus1)?)
        }
    }

    /// Runs `tokens` at positions `cache.len()..` and returns the logits of
    /// the last one as a `(vocab,)` f32 tensor. Works for a whole prompt, a
    /// chunk of one at any position, or a single decode step.
    ///
    /// # Errors
    /// On an out-of-range token id or a tensor failure.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(Error::InvalidRequest("nothing to run: empty token list".into()));
        }
        let x = self.run(tokens, &mut [cache], tokens.len())?;
        let last = x.narrow(0, tokens.len() - 1, 1)?;
        Ok(self.head(&last)?.flatten_all()?)
    }

    /// One decode step of several sequences at once: `tokens[i]` is the next
    /// token of the sequence in `caches[i]`. Returns each sequence's logits.
    ///
    /// The weights are read once for all of them. On the CPU each sequence's
    /// logits are bit for bit what a step of it alone gives, and what a prompt
    /// chunk ending with that token gives: matrix rows and attention queries
    /// are each computed the same way whatever runs with them (see
    /// [`matmul`] and [`crate::attention`]).
    ///
    /// # Errors
    /// On an out-of-range token id, mismatched lengths or a tensor failure.
    pub fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut Cache]) -> Result<Vec<Vec<f32>>> {
        if tokens.is_empty() || tokens.len() != caches.len() {
            return Err(Error::InvalidRequest(format!("{} tokens for {} sequences", tokens.len(), caches.len())));
        }
        let x = self.run(tokens, caches, 1)?;
        Ok(self.head(&x)?.to_vec2::<f32>()?)
    }

    /// The final hidden states (after the output norm) of `tokens` as one
    /// new sequence, (n, d), run `chunk` tokens at a time: what an embedding
    /// model built on this decoder pools.
    ///
    /// # Errors
    /// On an out-of-range token id or a tensor failure.
    pub(crate) fn hidden_states(&self, tokens: &[u32], chunk: usize) -> Result<Tensor> {
        let mut cache = self.new_cache();
        let mut rows = Vec::new();
        for part in tokens.chunks(chunk.max(1)) {
            rows.push(self.run(part, &mut [&mut cache], part.len())?);
        }
        let x = if rows.len() == 1 { rows.pop().expect("one chunk") } else { Tensor::cat(&rows, 0)? };
        Ok(candle_nn::ops::rms_norm(&x, &self.output_norm, self.cfg.eps as f32)?)
    }

    /// Final norm, output projection and soft-capping of the rows of `x` (rows, d).
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let x = candle_nn::ops::rms_norm(x, &self.output_norm, c.eps as f32)?;
        let mut logits = matmul(&self.output, &x)?;
        if let Some(cap) = c.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// Runs `per_seq` tokens of each sequence (`tokens` holds them in order)
    /// through every layer, appending their keys and values to the caches,
    /// and returns the final hidden states, one row per token.
    fn run(&self, tokens: &[u32], caches: &mut [&mut Cache], per_seq: usize) -> Result<Tensor> {
        let c = &self.cfg;
        let n = per_seq;
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.embedding(&ids)?; // (rows, d)
        if c.arch == Arch::Gemma3 {
            x = (x * (c.n_embd as f64).sqrt())?;
        }
        let places = caches.iter().map(|cache| self.place(cache.len, n)).collect::<Result<Vec<_>>>()?;
        let g = c.n_head / c.n_head_kv;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, c.eps as f32)?;
            let (q, k, v) = match &layer.qkv {
                Qkv::Separate { q, k, v } => (q.forward(&h)?, k.forward(&h)?, v.forward(&h)?),
                Qkv::Fused(w) => {
                    let qkv = w.forward(&h)?;
                    let (qd, kd) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
                    (qkv.narrow(D::Minus1, 0, qd)?, qkv.narrow(D::Minus1, qd, kd)?, qkv.narrow(D::Minus1, qd + kd, kd)?)
                }
            };
            let mut outs = Vec::with_capacity(caches.len());
            for (s, (cache, place)) in caches.iter_mut().zip(&places).enumerate() {
                let rows = |t: &Tensor, heads: usize| -> Result<Tensor> { Ok(t.narrow(0, s * n, n)?.reshape((1, n, heads, c.head_dim))?.transpose(1, 2)?) };
                let q = rows(&q, c.n_head)?;
                let k = rows(&k, c.n_head_kv)?;
                let v = rows(&v, c.n_head_kv)?.contiguous()?;
                let q = match &layer.q_norm {
                    Some(w) => candle_nn::ops::rms_norm(&q.contiguous()?, w, c.eps as f32)?,
                    None => q,
                };
                let k = match &layer.k_norm {
                    Some(w) => candle_nn::ops::rms_norm(&k.contiguous()?, w, c.eps as f32)?,
                    None => k,
                };
                let (cos, sin) = match (&place.local_rope, layer.sliding) {
                    (Some(t), true) => (&t.0, &t.1),
                    _ => (&place.global_rope.0, &place.global_rope.1),
                };
                let q = (self.rope(&q, cos, sin)? * c.attn_scale)?;
                let k = self.rope(&k, cos, sin)?;
                let (pos, total) = (place.pos, place.pos + n);
                let (k_all, v_all) = cache.layers[i].append(&k.to_dtype(cache.dtype)?, &v.to_dtype(cache.dtype)?, pos)?;
                if self.device.is_cpu() {
                    outs.push(self.attend_cpu(&q, &k_all, &v_all, pos, n, if layer.sliding { c.sliding_window.unwrap_or(usize::MAX) } else { usize::MAX })?);
                    continue;
                }
                let (start, mask) = if layer.sliding { (place.local_start, place.local_mask.as_ref()) } else { (0, place.global_mask.as_ref()) };
                let k_all = k_all.narrow(2, start, total - start)?;
                let v_all = v_all.narrow(2, start, total - start)?;
                // Grouped-query attention without repeating K/V: the g query heads
                // that share a KV head become g*n rows of one matmul.
                let q = q.contiguous()?.reshape((1, c.n_head_kv, g * n, c.head_dim))?;
                let scores = q.matmul(&k_all.t()?)?; // (1, kv, g*n, L)
                let scores = match mask {
                    Some(m) => scores.reshape((c.n_head_kv, g, n, total - start))?.broadcast_add(m)?.reshape((1, c.n_head_kv, g * n, total - start))?,
                    None => scores,
                };
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                let attn = probs.matmul(&v_all)?; // (1, kv, g*n, hd)
                outs.push(attn.reshape((1, c.n_head, n, c.head_dim))?.transpose(1, 2)?.reshape((n, c.n_head * c.head_dim))?);
            }
            let attn = if outs.len() == 1 { outs.pop().expect("one sequence") } else { Tensor::cat(&outs, 0)? };
            let mut o = layer.wo.forward(&attn)?;
            if let Some(w) = &layer.post_attn_norm {
                o = candle_nn::ops::rms_norm(&o, w, c.eps as f32)?;
            }
            x = (x + o)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, c.eps as f32)?;
            let act = |t: Tensor| -> Result<Tensor> {
                Ok(match c.arch {
                    Arch::Gemma3 if t.device().is_cpu() && t.dtype() == DType::F32 && crate::kernels::AVAILABLE => {
                        t.contiguous()?.apply_op1_no_bwd(&crate::kernels::GeluTanh)?
                    }
                    Arch::Gemma3 => t.gelu()?,
                    _ => t.silu()?,
                })
            };
            let hidden = match &layer.ffn {
                Ffn::Gated { gate, up } => (act(gate.forward(&h)?)? * up.forward(&h)?)?,
                Ffn::FusedGateUp(w) => {
                    let gu = w.forward(&h)?;
                    let half = gu.dim(D::Minus1)? / 2;
                    (act(gu.narrow(D::Minus1, 0, half)?)? * gu.narrow(D::Minus1, half, half)?)?
                }
            };
            let mut f = layer.down.forward(&hidden)?;
            if let Some(w) = &layer.post_ffn_norm {
                f = candle_nn::ops::rms_norm(&f, w, c.eps as f32)?;
            }
            x = (x + f)?;
        }
        for cache in caches.iter_mut() {
            cache.len += n;
        }
        Ok(x)
    }

    /// [`crate::attention::attend`] over this sequence's cache buffers
    /// (1, kv, cap, hd): `q` is (1, heads, n, hd); returns (n, heads·hd).
    fn attend_cpu(&self, q: &Tensor, k: &Tensor, v: &Tensor, pos: usize, n: usize, window: usize) -> Result<Tensor> {
        let c = &self.cfg;
        let q = q.flatten_all()?.to_vec1::<f32>()?;
        let cap = k.dim(2)?;
        let shape = crate::attention::Shape { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: c.head_dim, n, pos, cap, window };
        let mut out = vec![0f32; n * c.n_head * c.head_dim];
        {
            let (ks, kl) = k.storage_and_layout();
            let (vs, vl) = v.storage_and_layout();
            let (candle_core::Storage::Cpu(ks), candle_core::Storage::Cpu(vs)) = (&*ks, &*vs) else {
                return Err(Error::InvalidRequest("CPU attention on a tensor that is not on the CPU".into()));
            };
            let len = c.n_head_kv * cap * c.head_dim;
            let (kr, vr) = (kl.start_offset()..kl.start_offset() + len, vl.start_offset()..vl.start_offset() + len);
            match k.dtype() {
                DType::F16 => crate::attention::attend(shape, &q, &ks.as_slice::<half::f16>()?[kr], &vs.as_slice::<half::f16>()?[vr], &mut out),
                _ => crate::attention::attend(shape, &q, &ks.as_slice::<f32>()?[kr], &vs.as_slice::<f32>()?[vr], &mut out),
            }
        }
        Ok(Tensor::from_vec(out, (n, c.n_head * c.head_dim), &self.device)?)
    }

    /// Rotary tables and masks for `n` tokens of one sequence from `pos`.
    fn place(&self, pos: usize, n: usize) -> Result<Place> {
        let c = &self.cfg;
        let total = pos + n;
        let window = c.sliding_window.unwrap_or(usize::MAX);
        let local_start = (pos + 1).saturating_sub(window);
        Ok(Place {
            pos,
            local_start,
            global_rope: self.rope_tables(c.rope_base, pos, n)?,
            local_rope: if c.rope_base_local != c.rope_base { Some(self.rope_tables(c.rope_base_local, pos, n)?) } else { None },
            global_mask: if n > 1 && !self.device.is_cpu() { Some(self.mask(pos, n, 0, total, usize::MAX)?) } else { None },
            local_mask: match c.sliding_window {
                Some(w) if n > 1 && !self.device.is_cpu() => Some(self.mask(pos, n, local_start, total, w)?),
                _ => None,
            },
        })
    }

    /// Additive mask for queries at `pos..pos+n` over keys `start..total`:
    /// causal, and within `window` positions.
    fn mask(&self, pos: usize, n: usize, start: usize, total: usize, window: usize) -> Result<Tensor> {
        let l = total - start;
        let mut m = vec![0f32; n * l];
        for j in 0..n {
            let qp = pos + j;
            for (ki, slot) in m[j * l..(j + 1) * l].iter_mut().enumerate() {
                let kp = start + ki;
                if kp > qp || qp - kp >= window {
                    *slot = f32::NEG_INFINITY;
                }
            }
        }
        Ok(Tensor::from_vec(m, (n, l), &self.device)?)
    }
}

/// Where a run of tokens of one sequence sits: its rotary tables and masks.
struct Place {
    pos: usize,
    local_start: usize,
    global_rope: (Tensor, Tensor),
    local_rope: Option<(Tensor, Tensor)>,
    global_mask: Option<Tensor>,
    local_mask: Option<Tensor>,
}

/// A weight to multiply as stored. candle would turn F16, BF16 and F32
/// weights into an f32 copy; on the CPU rbee's float kernels read them in
/// place from the mapped file.
fn as_stored(qt: Arc<QTensor>) -> Result<QMatMul> {
    if qt.device().is_cpu() && crate::float_kernels::covers(qt.dtype()) {
        return Ok(QMatMul::QTensor(qt));
    }
    Ok(QMatMul::from_arc(qt)?)
}

/// `w · xᵀ` for the rows of `x` (rows, k), each row's result the same
/// whatever the row count.
///
/// rbee's kernels compute a row alike for any row count (see
/// `kernels::dot_ref` and `float_kernels::dot_ref`). Where they are not built, candle's are used, and
/// they pick kernels by the row count ([`candle_rows`]): the rows are padded
/// with zero rows to a count that always takes the same kernel.
fn matmul(w: &QMatMul, x: &Tensor) -> Result<Tensor> {
    // rbee's kernels, for the types they cover: they read the mapped file in
    // place, where candle's repacked ones would keep a second copy.
    if let QMatMul::QTensor(t) = w
        && t.device().is_cpu()
        && x.dtype() == DType::F32
        && crate::kernels::covers(t.dtype())
    {
        return Ok(x.contiguous()?.apply_op1_no_bwd(&crate::kernels::QuantMatmul(t.clone()))?);
    }
    if let QMatMul::QTensor(t) = w
        && t.device().is_cpu()
        && x.dtype() == DType::F32
        && crate::float_kernels::covers(t.dtype())
    {
        return Ok(x.contiguous()?.apply_op1_no_bwd(&crate::float_kernels::FloatMatmul(t.clone()))?);
    }
    let rows: usize = x.dims().iter().rev().skip(1).product();
    let padded = match w {
        QMatMul::QTensor(t) if t.device().is_cpu() => candle_rows(t.dtype(), rows),
        _ => rows,
    };
    if padded == rows {
        return Ok(w.forward(x)?);
    }
    let k = x.dim(D::Minus1)?;
    let pad = Tensor::zeros((padded - rows, k), x.dtype(), x.device())?;
    let y = w.forward(&Tensor::cat(&[&x.reshape((rows, k))?, &pad], 0)?)?.narrow(0, 0, rows)?;
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank 2 or more") = y.dim(1)?;
    Ok(y.reshape(dims)?)
}

/// How many rows to give candle's CPU kernels for `rows` rows of
/// activations against a weight of `dtype`, so that each row is computed
/// the same way whatever else runs with it.
///
/// On x86-64 candle multiplies one row of a Q6_K weight with a compact
/// kernel and several with repacked tiles, which round differently: a
/// single row goes in as two. On aarch64 with the dot-product or int8
/// matrix instructions it repacks Q4_0, Q8_0, Q4_K, Q5_K and Q6_K weights and
/// multiplies row counts that are multiples of four with tiled kernels and
/// other rows one at a time with another kernel: every count goes in as a
/// multiple of four.
fn candle_rows(dtype: GgmlDType, rows: usize) -> usize {
    #[cfg(target_arch = "aarch64")]
    {
        let repacked = matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q8_0 | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K);
        if repacked && (std::arch::is_aarch64_feature_detected!("dotprod") || std::arch::is_aarch64_feature_detected!("i8mm")) {
            return rows.next_multiple_of(4);
        }
    }
    if cfg!(target_arch = "x86_64") && dtype == GgmlDType::Q6K && rows == 1 {
        return 2;
    }
    rows
}

/// One sequence's keys and values for every layer.
#[derive(Debug)]
pub struct Cache {
    layers: Vec<LayerKv>,
    len: usize,
    dtype: DType,
}

impl Cache {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets everything past the first `len` tokens (keeps a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Copies positions `from..to` of `other`'s keys and values into this
    /// cache, which holds exactly `from` tokens that are the same as
    /// `other`'s: a sequence starting with a prompt another has run takes
    /// its cache instead of running it again.
    ///
    /// # Errors
    /// When the tensors cannot be copied (e.g. out of memory).
    pub fn copy_from(&mut self, other: &Cache, from: usize, to: usize) -> Result<()> {
        debug_assert!(from == self.len && to <= other.len && from <= to);
        if to <= from {
            return Ok(());
        }
        for (dst, src) in self.layers.iter_mut().zip(&other.layers) {
            let (Some(k), Some(v)) = (&src.k, &src.v) else { return Ok(()) };
            dst.append(&k.narrow(2, from, to - from)?, &v.narrow(2, from, to - from)?, from)?;
        }
        self.len = to;
        Ok(())
    }

    /// Bytes allocated for keys and values.
    pub fn allocated_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.k.as_ref().map_or(0, |k| 2 * k.elem_count() * k.dtype().size_in_bytes())).sum()
    }
}

/// Keys and values of one layer in a buffer that doubles when full, so the
/// cache is sized to the context in use, not the model's trained maximum.
#[derive(Debug, Default)]
struct LayerKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl LayerKv {
    /// Writes `k`, `v` (1, kv, n, hd) at `pos` and returns the buffers.
    fn append(&mut self, k: &Tensor, v: &Tensor, pos: usize) -> Result<(Tensor, Tensor)> {
        let (_, kv, n, hd) = k.dims4()?;
        let need = pos + n;
        let cap = self.k.as_ref().map_or(0, |t| t.dim(2).unwrap_or(0));
        if need > cap {
            let new_cap = need.next_power_of_two().max(256);
            let nk = Tensor::zeros((1, kv, new_cap, hd), k.dtype(), k.device())?;
            let nv = Tensor::zeros((1, kv, new_cap, hd), v.dtype(), v.device())?;
            if let (Some(ok), Some(ov)) = (&self.k, &self.v)
                && pos > 0
            {
                nk.slice_set(&ok.narrow(2, 0, pos)?.contiguous()?, 2, 0)?;
                nv.slice_set(&ov.narrow(2, 0, pos)?.contiguous()?, 2, 0)?;
            }
            self.k = Some(nk);
            self.v = Some(nv);
        }
        let (kb, vb) = (self.k.as_ref().expect("allocated above"), self.v.as_ref().expect("allocated above"));
        kb.slice_set(&k.contiguous()?, 2, pos)?;
        vb.slice_set(&v.contiguous()?, 2, pos)?;
        Ok((kb.clone(), vb.clone()))
    }
}
