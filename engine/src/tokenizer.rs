//! Tokenizers rebuilt from GGUF metadata with the `tokenizers` crate.
//!
//! Two vocabulary kinds occur in GGUF files:
//! - `llama` (SentencePiece): tokens with scores and byte-fallback tokens
//!   `<0xNN>`, no merges. llama.cpp tokenizes these by repeatedly merging the
//!   adjacent pair whose merged token scores highest. A BPE whose merge ranks
//!   follow those scores does the same, so we derive merges from the scores.
//! - `gpt2` (byte-level BPE): tokens and merges, plus a pre-tokenizer regex
//!   named by `tokenizer.ggml.pre`.
//!
//! Control tokens (type 3) become special added tokens and user-defined ones
//! (type 4) plain added tokens, both matched in raw text before the model
//! runs, as llama.cpp does.

use std::collections::HashSet;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::gguf::Gguf;

const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_BYTE: i32 = 6;

/// A model's tokenizer with the special ids generation needs.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    tokens: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    /// Every id that ends a turn (EOS, end-of-turn markers).
    pub end_of_generation: HashSet<u32>,
}

fn strings(values: &[Value]) -> Result<Vec<String>> {
    values
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| Error::Tokenizer(format!("expected a string: {e}"))))
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer described by `gguf`'s `tokenizer.ggml.*` keys.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] for a missing or unknown vocabulary.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let kind = gguf.get_str("tokenizer.ggml.model").map_err(|_| Error::Tokenizer("the GGUF has no tokenizer (tokenizer.ggml.model)".into()))?;
        let tokens = strings(gguf.get_array("tokenizer.ggml.tokens")?)?;
        let types: Vec<i32> = match gguf.get_array("tokenizer.ggml.token_type") {
            Ok(v) => v.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
            Err(_) => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(Error::Tokenizer(format!("{} tokens but {} token types", tokens.len(), types.len())));
        }
        let opt_id = |k: &str| gguf.get_u32(k).ok().filter(|id| (*id as usize) < tokens.len());
        let bos = opt_id("tokenizer.ggml.bos_token_id");
        let eos = opt_id("tokenizer.ggml.eos_token_id");
        let add_space_prefix = gguf.get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(kind == "llama");
        let mut inner = match kind {
            "llama" => {
                let scores: Vec<f32> = match gguf.get_array("tokenizer.ggml.scores") {
                    Ok(v) => v.iter().map(|s| s.to_f32().unwrap_or(0.0)).collect(),
                    Err(_) => (0..tokens.len()).map(|i| -(i as f32)).collect(),
                };
                let unk = opt_id("tokenizer.ggml.unknown_token_id").map(|i| tokens[i as usize].clone());
                spm(&tokens, &types, &scores, unk, add_space_prefix)?
            }
            "gpt2" => {
                let merges = strings(gguf.get_array("tokenizer.ggml.merges")?)?;
                let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
                byte_level_bpe(&tokens, &merges, pre)?
            }
            other => return Err(Error::Tokenizer(format!("unsupported tokenizer model `{other}` (supported: llama, gpt2)"))),
        };
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == TOKEN_CONTROL || **t == TOKEN_USER_DEFINED)
            .map(|(s, t)| AddedToken::from(s.clone(), *t == TOKEN_CONTROL).normalized(false))
            .collect();
        inner.add_tokens(added).map_err(|e| Error::Tokenizer(e.to_string()))?;
        // Ends of turn: EOS, the explicit EOT key, and the markers chat
        // templates close turns with.
        let mut end_of_generation: HashSet<u32> = eos.into_iter().collect();
        if let Some(eot) = opt_id("tokenizer.ggml.eot_token_id") {
            end_of_generation.insert(eot);
        }
        for marker in ["<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>"] {
            if let Some(id) = tokens.iter().position(|t| t == marker)
                && types[id] == TOKEN_CONTROL {
                    end_of_generation.insert(id as u32);
                }
        }
        Ok(Self {
            inner,
            bos,
            eos,
            add_bos: gguf.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(kind == "llama"),
            end_of_generation,
            tokens,
        })
    }

    /// Token ids of `text`. Special tokens written in the text (`<bos>`,
    /// `<start_of_turn>`) are recognised; no BOS is added.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Like [`encode`](Self::encode), with BOS in front when the model wants one.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        if let (true, Some(bos)) = (self.add_bos, self.bos)
            && ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        Ok(ids)
    }

    /// Text of `ids`, skipping special tokens.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// A decoder for a stream of ids that yields only whole UTF-8 characters.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream { tokenizer: self, ids: Vec::new(), prefix: 0, read: 0 }
    }

    /// The vocabulary entry of `id`.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}

/// Incremental decoding: a character split across tokens is held back until
/// its last byte arrives, so every chunk is valid UTF-8.
///
/// Each step decodes the ids since the last emitted text twice (without and
/// with the new id) and emits the difference; decoding a short window rather
/// than one id at a time keeps the decoder's context (leading-space rules,
/// byte fallback) right. Bytes that never form a character (a model can emit
/// them) are released as U+FFFD after four tokens instead of being held
/// forever.
#[derive(Debug)]
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix: usize,
    /// End of the text already emitted.
    read: usize,
}

/// A UTF-8 character is at most four bytes, so at most four byte tokens.
const MAX_HELD: usize = 4;

impl TextStream<'_> {
    /// Feeds one id; returns the text it completes, if any.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let after = self.tokenizer.decode(&self.ids[self.prefix..])?;
        let held = self.ids.len() - self.read;
        let incomplete = after.len() <= before.len() || after.ends_with('\u{FFFD}');
        if incomplete && held < MAX_HELD {
            return Ok(None);
        }
        let mut common = before.bytes().zip(after.bytes()).take_while(|(a, b)| a == b).count();
        while !after.is_char_boundary(common) {
            common -= 1;
        }
        let text = after[common..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(if text.is_empty() { None } else { Some(text) })
    }
}

fn spm(tokens: &[String], types: &[i32], scores: &[f32], unk: Option<String>, add_space_prefix: bool) -> Result<tokenizers::Tokenizer> {
    let vocab: ahash::AHashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    // A pair (left, right) may merge when both halves and their concatenation
    // are tokens; it ranks by the concatenation's score, higher first, ties
    // by id as SentencePiece orders its pieces.
    let mut merges: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        let ty = types[id];
        if ty == TOKEN_CONTROL || ty == TOKEN_BYTE || piece.chars().nth(1).is_none() {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                merges.push((scores[id], id as u32, li, ri));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<(String, String)> =
        merges.into_iter().map(|(_, _, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone())).collect();
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let mut norms: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        norms.push(Prepend::new("▁".into()).into());
    }
    norms.push(Replace::new(" ", "▁").map_err(|e| Error::Tokenizer(e.to_string()))?.into());
    tk.with_normalizer(Some(NormalizerSequence::new(norms))).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(|e| Error::Tokenizer(e.to_string()))?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tk.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tk)
}

/// Pre-tokenizer regexes by `tokenizer.ggml.pre`, as published with each
/// model family's tokenizer.
fn pre_tokenizer_regex(pre: &str) -> &'static str {
    match pre {
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => {
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        }
        "qwen2" | "deepseek-r1-qwen" => {
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        }
        _ => r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    }
}

fn byte_level_bpe(tokens: &[String], merges: &[String], pre: &str) -> Result<tokenizers::Tokenizer> {
    let vocab: ahash::AHashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::Tokenizer(format!("merge `{m}` is not two tokens separated by a space")))
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let split = Split::new(SplitPattern::Regex(pre_tokenizer_regex(pre).into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    tk.with_pre_tokenizer(Some(PreSequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()])));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tk)
}
