//! rbee-engine runs GGUF language models on this machine with candle.
//!
//! - [`store`]: the model files and their SQLite catalog; import, pull from
//!   Hugging Face, remove; the catalog rebuilds itself from the files.
//! - [`gguf`] and [`model`]: reading GGUF (weights mapped, not copied) and one
//!   decoder for gemma3, llama/mistral, qwen2, qwen3 and phi3.
//! - [`tokenizer`] and [`template`]: text in and out, chat templates.
//! - [`sampling`] and [`generate`]: choosing tokens, one streamed generation;
//!   [`constraint`]: output held to a JSON schema or grammar.
//! - [`embed`]: embedding models (BERT, Nomic BERT, pooling decoders such
//!   as Qwen3-Embedding): text in, one unit vector out.
//! - [`runtime`]: the [`Engine`] — models loaded on first use, slots, queue,
//!   idle unload.
//! - [`hardware`]: RAM, CPU, GPU adapters, usable candle devices.

mod attention;
pub mod constraint;
pub mod embed;
pub mod error;
mod float_kernels;
pub mod generate;
pub mod gguf;
pub mod hardware;
mod kernels;
pub mod model;
pub mod runtime;
pub mod sampling;
pub mod store;
pub mod template;
pub mod tokenizer;
pub mod tools;

/// Where a model runs (candle's device).
pub use candle_core::Device;
pub use constraint::Grammar;
pub use embed::{EmbedInput, Embeddings};
pub use error::{Error, Result};
pub use generate::{Event, FinishReason, Model, Prompt, Request, TokenLogprob, TopLogprob, Usage};
pub use runtime::{Config, Engine, Generation, LoadedInfo};
pub use sampling::SamplingParams;
pub use template::Message;
pub use tools::{Tool, ToolCall, ToolChoice, Tools};
