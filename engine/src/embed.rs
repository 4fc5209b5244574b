//! Embedding models: text in, one unit vector out.
//!
//! Two kinds of network make them. Encoders (BERT and Nomic's BERT, the
//! architecture of most embedding GGUFs) attend in both directions and
//! normalise after each block; decoders with a pooling type in their file
//! (Qwen3-Embedding) are the generation model's own layers, read at the last
//! token. Either way the per-token states are pooled as the file says
//! (mean, first token, last token) and scaled to length 1.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{D, Device, Tensor};

use crate::error::{Error, Result};
use crate::generate::PREFILL_CHUNK;
use crate::gguf::Gguf;
use crate::model::{Arch, Config, Linear, Pooling, Precision, Qkv, Weights};
use crate::tokenizer::Tokenizer;

/// What to embed: a text, or token ids given as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// The vectors of one request, in input order.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens run, over every input.
    pub prompt_tokens: usize,
    /// The id of the model that ran them.
    pub model: String,
}

/// A loaded embedding model.
#[derive(Debug)]
pub struct Embedder {
    net: Net,
    pub tokenizer: Tokenizer,
    pub pooling: Pooling,
    /// Most tokens one input may have.
    pub context: usize,
    /// Length of its vectors.
    pub dims: usize,
}

#[derive(Debug)]
enum Net {
    Encoder(Box<Encoder>),
    Decoder(Box<Weights>),
}

impl Embedder {
    /// Builds the embedder in `gguf` on `device`.
    ///
    /// # Errors
    /// [`Error::WrongModelKind`] for a model that does not pool (a chat
    /// model); model errors.
    pub fn from_gguf(gguf: &Gguf, id: &str, device: &Device) -> Result<Self> {
        let cfg = Config::from_gguf(gguf)?;
        let Some(pooling) = cfg.pooling else {
            return Err(Error::WrongModelKind(format!(
                "`{id}` is a chat model, not an embedding model: /v1/embeddings needs one (nomic-embed-text, bge, all-MiniLM, Qwen3-Embedding)"
            )));
        };
        let tokenizer = Tokenizer::from_gguf(gguf)?;
        let (context, dims) = (cfg.context_length, cfg.n_embd);
        let net = if cfg.arch.is_encoder() {
            Net::Encoder(Box::new(Encoder::load(gguf, cfg, device)?))
        } else {
            Net::Decoder(Box::new(Weights::load(gguf, device)?))
        };
        Ok(Self { net, tokenizer, pooling, context, dims })
    }

    /// The token ids `input` stands for, checked against the vocabulary and context.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for an empty input or an unknown id,
    /// [`Error::PromptTooLong`] for one longer than the context.
    pub fn tokens(&self, input: &EmbedInput) -> Result<Vec<u32>> {
        let ids = match input {
            EmbedInput::Text(t) if t.is_empty() => return Err(Error::InvalidRequest("an input is empty".into())),
            EmbedInput::Text(t) => self.tokenizer.encode_to_embed(t)?,
            EmbedInput::Tokens(ids) => ids.clone(),
        };
        if ids.is_empty() {
            return Err(Error::InvalidRequest("an input has no tokens".into()));
        }
        let vocab = self.tokenizer.vocab_size() as u32;
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(Error::InvalidRequest(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        if ids.len() > self.context {
            return Err(Error::PromptTooLong { prompt_tokens: ids.len(), context: self.context });
        }
        Ok(ids)
    }

    /// The unit vector of `tokens`.
    ///
    /// # Errors
    /// On a tensor failure.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let states = match &self.net {
            Net::Encoder(e) => e.forward(tokens)?,
            Net::Decoder(w) => w.hidden_states(tokens, PREFILL_CHUNK)?,
        };
        let n = tokens.len();
        let pooled = match self.pooling {
            Pooling::Mean => states.mean(0)?,
            Pooling::Cls => states.get(0)?,
            Pooling::Last => states.get(n - 1)?,
        };
        let mut v = pooled.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        normalize(&mut v);
        Ok(v)
    }
}

/// Scales `v` to length 1 (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in v {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

/// A layer norm's weight and bias.
#[derive(Debug)]
struct Norm {
    w: Tensor,
    b: Tensor,
}

impl Norm {
    fn load(g: &Gguf, name: &str, dev: &Device) -> Result<Self> {
        Ok(Self { w: g.tensor(&format!("{name}.weight"), dev)?, b: g.tensor(&format!("{name}.bias"), dev)? })
    }

    fn forward(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(&x.contiguous()?, &self.w, &self.b, eps as f32)?)
    }
}

#[derive(Debug)]
enum EncoderFfn {
    /// BERT: up, GELU, down.
    Gelu(Linear),
    /// Nomic: SiLU(gate) · up, down.
    SwiGlu { gate: Linear, up: Linear },
}

#[derive(Debug)]
struct EncoderLayer {
    qkv: Qkv,
    wo: Linear,
    attn_norm: Norm,
    ffn: EncoderFfn,
    down: Linear,
    out_norm: Norm,
}

/// A BERT-style encoder: absolute (BERT) or rotary (Nomic) positions,
/// attention over the whole input, a layer norm after each residual add.
#[derive(Debug)]
struct Encoder {
    cfg: Config,
    embed: Arc<QTensor>,
    positions: Option<Tensor>,
    /// Row 0 of the token-type table: every token is of type 0.
    token_type: Option<Tensor>,
    embed_norm: Norm,
    layers: Vec<EncoderLayer>,
    device: Device,
}

impl Encoder {
    fn load(g: &Gguf, cfg: Config, dev: &Device) -> Result<Self> {
        let p = Precision::Quantized;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let qkv = if g.has_tensor(&n("attn_qkv.weight")) {
                Qkv::Fused(Linear::load(g, &n("attn_qkv"), dev, p)?)
            } else {
                Qkv::Separate {
                    q: Linear::load(g, &n("attn_q"), dev, p)?,
                    k: Linear::load(g, &n("attn_k"), dev, p)?,
                    v: Linear::load(g, &n("attn_v"), dev, p)?,
                }
            };
            let ffn = if g.has_tensor(&n("ffn_gate.weight")) {
                EncoderFfn::SwiGlu { gate: Linear::load(g, &n("ffn_gate"), dev, p)?, up: Linear::load(g, &n("ffn_up"), dev, p)? }
            } else {
                EncoderFfn::Gelu(Linear::load(g, &n("ffn_up"), dev, p)?)
            };
            layers.push(EncoderLayer {
                qkv,
                wo: Linear::load(g, &n("attn_output"), dev, p)?,
                attn_norm: Norm::load(g, &n("attn_output_norm"), dev)?,
                ffn,
                down: Linear::load(g, &n("ffn_down"), dev, p)?,
                out_norm: Norm::load(g, &n("layer_output_norm"), dev)?,
            });
        }
        let positions = if cfg.arch == Arch::Bert { Some(g.tensor("position_embd.weight", dev)?) } else { None };
        let token_type = if g.has_tensor("token_types.weight") { Some(g.tensor("token_types.weight", dev)?.get(0)?) } else { None };
        Ok(Self {
            embed: Arc::new(g.qtensor("token_embd.weight", dev)?),
            positions,
            token_type,
            embed_norm: Norm::load(g, "token_embd_norm", dev)?,
            layers,
            device: dev.clone(),
            cfg,
        })
    }

    /// The final state of every token, (n, d).
    fn forward(&self, tokens: &[u32]) -> Result<Tensor> {
        let c = &self.cfg;
        let n = tokens.len();
        let mut x = self.embed.embedding(&Tensor::new(tokens, &self.device)?)?;
        if let Some(p) = &self.positions {
            if n > p.dim(0)? {
                return Err(Error::PromptTooLong { prompt_tokens: n, context: p.dim(0)? });
            }
            x = (x + p.narrow(0, 0, n)?)?;
        }
        if let Some(t) = &self.token_type {
            x = x.broadcast_add(t)?;
        }
        x = self.embed_norm.forward(&x, c.eps)?;
        let rope = if c.arch == Arch::NomicBert { Some(self.rope_tables(n)?) } else { None };
        let heads = |t: Tensor| -> Result<Tensor> { Ok(t.reshape((1, n, c.n_head, c.head_dim))?.transpose(1, 2)?.contiguous()?) };
        for layer in &self.layers {
            let (q, k, v) = match &layer.qkv {
                Qkv::Separate { q, k, v } => (q.forward(&x)?, k.forward(&x)?, v.forward(&x)?),
                Qkv::Fused(w) => {
                    let qkv = w.forward(&x)?;
                    let d = c.n_head * c.head_dim;
                    (qkv.narrow(D::Minus1, 0, d)?, qkv.narrow(D::Minus1, d, d)?, qkv.narrow(D::Minus1, 2 * d, d)?)
                }
            };
            let (mut q, mut k, v) = (heads(q)?, heads(k)?, heads(v)?);
            if let Some((cos, sin)) = &rope {
                q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
                k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
            }
            let scores = (q.matmul(&k.t()?.contiguous()?)? * c.attn_scale)?;
            let attn = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
            let attn = attn.transpose(1, 2)?.reshape((n, c.n_head * c.head_dim))?;
            x = layer.attn_norm.forward(&(x + layer.wo.forward(&attn)?)?, c.eps)?;
            let hidden = match &layer.ffn {
                EncoderFfn::Gelu(up) => up.forward(&x)?.gelu()?,
                EncoderFfn::SwiGlu { gate, up } => (gate.forward(&x)?.silu()? * up.forward(&x)?)?,
            };
            x = layer.out_norm.forward(&(x.clone() + layer.down.forward(&hidden)?)?, c.eps)?;
        }
        Ok(x)
    }

    /// Rotary tables for positions `0..n` (halves rotated, as NeoX).
    fn rope_tables(&self, n: usize) -> Result<(Tensor, Tensor)> {
        let c = &self.cfg;
        let half = c.rope_dim / 2;
        let inv: Vec<f32> = (0..half).map(|i| 1.0 / c.rope_base.powf(2.0 * i as f32 / c.rope_dim as f32)).collect();
        let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
        for p in 0..n {
            for f in &inv {
                cos.push((p as f32 * f).cos());
                sin.push((p as f32 * f).sin());
            }
        }
        Ok((Tensor::from_vec(cos, (n, half), &self.device)?, Tensor::from_vec(sin, (n, half), &self.device)?))
    }
}
