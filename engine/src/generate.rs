//! One generation: prompt in, a stream of text events out.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::model::{Cache, Weights};
use crate::sampling::{Sampler, SamplingParams};
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;

/// Prompts run through the model in chunks of this many tokens, aligned to
/// absolute positions; this bounds the attention scores' memory for long
/// prompts and is the unit of prefix reuse (see [`Slot`]).
pub const PREFILL_CHUNK: usize = 256;

/// A loaded model: weights, tokenizer and chat template.
#[derive(Debug)]
pub struct Model {
    pub weights: Arc<Weights>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// Tokens a sequence may hold: the trained context, capped by config.
    pub context: usize,
}

impl Model {
    /// Loads the GGUF at `path` onto `device`.
    ///
    /// # Errors
    /// When the file is not a usable model.
    pub fn load(path: &Path, device: &Device, max_context: usize) -> Result<Self> {
        let gguf = Gguf::open(path)?;
        Self::from_gguf(&gguf, device, max_context)
    }

    /// Builds the model from an open file.
    ///
    /// # Errors
    /// When the file is not a usable model.
    pub fn from_gguf(gguf: &Gguf, device: &Device, max_context: usize) -> Result<Self> {
        // The tokenizer is built (merges derived from scores) while the
        // weights are mapped: the two are independent.
        let (weights, tokenizer) = std::thread::scope(|s| {
            let tok = s.spawn(|| {
                let t = Instant::now();
                let tok = Tokenizer::from_gguf(gguf);
                tracing::debug!(secs = t.elapsed().as_secs_f64(), "tokenizer built");
                tok
            });
            let t = Instant::now();
            let weights = Weights::load(gguf, device);
            tracing::debug!(secs = t.elapsed().as_secs_f64(), "weights mapped");
            (weights, tok.join().unwrap_or_else(|_| Err(Error::Tokenizer("tokenizer construction panicked".into()))))
        });
        let weights = weights?;
        let tokenizer = tokenizer?;
        let template = ChatTemplate::from_gguf(gguf, weights.cfg.arch, &tokenizer)?;
        let context = weights.cfg.context_length.min(max_context).max(1);
        Ok(Self { weights: Arc::new(weights), tokenizer, template, context })
    }

    /// Token ids for `prompt`, checked against the context.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for an empty prompt, [`Error::PromptTooLong`]
    /// for one that leaves no room to generate; template and tokenizer errors.
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let ids = match prompt {
            Prompt::Text(t) => self.tokenizer.encode_prompt(t)?,
            Prompt::Chat(msgs) => self.tokenizer.encode_prompt(&self.template.render(msgs, true)?)?,
            Prompt::Tokens(ids) => ids.clone(),
            // The answer so far is tokenized together with the prompt's text,
            // as if this model had written it.
            Prompt::Continue { prompt, text } => match prompt.as_ref() {
                Prompt::Text(t) => self.tokenizer.encode_prompt(&format!("{t}{text}"))?,
                Prompt::Chat(msgs) => self.tokenizer.encode_prompt(&format!("{}{text}", self.template.render(msgs, true)?))?,
                Prompt::Tokens(ids) => {
                    let mut ids = ids.clone();
                    ids.extend(self.tokenizer.encode(text)?);
                    ids
                }
                Prompt::Continue { .. } => return Err(Error::InvalidRequest("a continuation cannot continue a continuation".into())),
            },
        };
        if ids.is_empty() {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        let vocab = self.tokenizer.vocab_size() as u32;
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(Error::InvalidRequest(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        if ids.len() >= self.context {
            return Err(Error::PromptTooLong { prompt_tokens: ids.len(), context: self.context });
        }
        Ok(ids)
    }
}

/// What to complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Prompt {
    /// Raw text, continued as is (BOS added when the model wants it).
    Text(String),
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<Message>),
    /// Token ids, used as given.
    Tokens(Vec<u32>),
    /// `prompt` followed by the start of an answer already given (by
    /// another node that stopped halfway): generation picks up after it.
    Continue { prompt: Box<Prompt>, text: String },
}

/// A generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub prompt: Prompt,
    pub params: SamplingParams,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of turn or a stop string.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
}

/// Counts and timings of a finished generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV cache was reused from the slot's previous request.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub prompt_secs: f64,
    pub decode_secs: f64,
}

/// What a generation stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Newly generated text (always whole UTF-8 characters) and how many
    /// tokens were generated since the previous text: a token can end
    /// mid-character or be held back while it may start a stop string, so
    /// one text can stand for several. Summed over a generation they count
    /// every token whose text was sent.
    Text { text: String, tokens: usize },
    /// The last event of a successful generation.
    Done { finish: FinishReason, usage: Usage },
    /// The generation failed after it started.
    Error(String),
}

/// A sequence slot: its KV cache and the tokens it holds, kept between
/// requests so a follow-up sharing a prefix (a chat's next turn) skips it.
///
/// Only whole prefill chunks are reused. The quantized kernels round
/// differently for different numbers of rows, so keys and values computed
/// one token at a time (decoding) or in a partial chunk differ slightly from
/// a fresh prefill's; reusing them would make the same request give
/// different text depending on what ran before. Whole aligned chunks are
/// computed exactly as a fresh prefill computes them.
#[derive(Debug)]
pub struct Slot {
    cache: Cache,
    tokens: Vec<u32>,
    /// Leading tokens whose cache came from whole aligned prefill chunks.
    reusable: usize,
}

impl Slot {
    pub fn new(model: &Model) -> Self {
        Self { cache: model.weights.new_cache(), tokens: Vec::new(), reusable: 0 }
    }
}

/// Runs one request in `slot`, sending events to `tx` until done, failed,
/// or `tx`'s receiver is dropped (then it stops within one token).
pub fn run(model: &Model, slot: &mut Slot, prompt: &[u32], params: &SamplingParams, tx: &mpsc::Sender<Event>) {
    if let Err(e) = run_inner(model, slot, prompt, params, tx) {
        // Leave the slot clean: the cache may be half-written.
        slot.cache.truncate(0);
        slot.tokens.clear();
        slot.reusable = 0;
        let _ = tx.blocking_send(Event::Error(e.to_string()));
    }
}

fn run_inner(model: &Model, slot: &mut Slot, prompt: &[u32], params: &SamplingParams, tx: &mpsc::Sender<Event>) -> Result<()> {
    let started = Instant::now();
    let common = slot.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
    // Whole chunks only, and at least the last prompt token runs, to
    // produce the first logits.
    let reuse = common.min(slot.reusable).min(prompt.len() - 1) / PREFILL_CHUNK * PREFILL_CHUNK;
    slot.cache.truncate(reuse);
    slot.tokens.truncate(reuse);
    slot.reusable = reuse;
    let mut logits = None;
    for chunk in prompt[reuse..].chunks(PREFILL_CHUNK) {
        if tx.is_closed() {
            return Ok(());
        }
        logits = Some(model.weights.forward(chunk, &mut slot.cache)?);
        slot.tokens.extend_from_slice(chunk);
        if chunk.len() == PREFILL_CHUNK && slot.reusable + PREFILL_CHUNK == slot.tokens.len() {
            slot.reusable = slot.tokens.len();
        }
    }
    let mut logits = logits.expect("at least one prompt token runs").to_vec1::<f32>()?;
    let prompt_secs = started.elapsed().as_secs_f64();
    let decode_start = Instant::now();

    let mut sampler = Sampler::new(params.clone());
    let mut text = model.tokenizer.stream();
    let mut stops = StopMatcher::new(&params.stop);
    let max_new = params.max_tokens.unwrap_or(usize::MAX);
    let mut generated = 0;
    // Tokens generated since the last text sent.
    let mut pending = 0;
    let finish = loop {
        let token = sampler.sample(&mut logits, &slot.tokens);
        if !params.ignore_eos && model.tokenizer.end_of_generation.contains(&token) {
            break FinishReason::Stop;
        }
        generated += 1;
        pending += 1;
        if let Some(piece) = text.step(token)? {
            let (emit, stopped) = stops.push(&piece);
            if !emit.is_empty() {
                if tx.blocking_send(Event::Text { text: emit, tokens: pending }).is_err() {
                    return Ok(());
                }
                pending = 0;
            }
            if stopped {
                break FinishReason::Stop;
            }
        }
        if generated >= max_new || slot.tokens.len() + 1 >= model.context {
            break FinishReason::Length;
        }
        if tx.is_closed() {
            return Ok(());
        }
        logits = model.weights.forward(&[token], &mut slot.cache)?.to_vec1::<f32>()?;
        slot.tokens.push(token);
    };
    let rest = stops.flush();
    if !rest.is_empty() && tx.blocking_send(Event::Text { text: rest, tokens: pending }).is_err() {
        return Ok(());
    }
    let usage = Usage {
        prompt_tokens: prompt.len(),
        cached_tokens: reuse,
        completion_tokens: generated,
        prompt_secs,
        decode_secs: decode_start.elapsed().as_secs_f64(),
    };
    let _ = tx.blocking_send(Event::Done { finish, usage });
    Ok(())
}

/// Finds stop strings in streamed text, also when one spans several chunks,
/// holding back any tail that could still become one.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new(), stopped: false }
    }

    /// Adds `text`; returns what may be emitted now and whether a stop string was hit.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let emit = self.pending[..at].to_string();
            self.pending.clear();
            self.stopped = true;
            return (emit, true);
        }
        // Longest tail of `pending` that is a proper prefix of a stop string.
        let hold =
            self.stops.iter().flat_map(|s| (1..s.len()).rev().filter(|&n| s.is_char_boundary(n)).find(|&n| self.pending.ends_with(&s[..n]))).max().unwrap_or(0);
        let cut = self.pending.len() - hold;
        let emit = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (emit, false)
    }

    /// Text still held back when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = String::new();
        for c in chunks {
            let (e, stopped) = m.push(c);
            out.push_str(&e);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_string_split_across_chunks_is_caught_and_not_emitted() {
        assert_eq!(run(&["\nUser:"], &["Hello", " there\nU", "se", "r: more"]), ("Hello there".into(), true));
    }

    #[test]
    fn near_miss_is_released() {
        assert_eq!(run(&["STOP"], &["ST", "OP!"]), ("".into(), true));
        assert_eq!(run(&["STOP"], &["ST", "ART"]), ("START".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins_and_multibyte_is_safe() {
        assert_eq!(run(&["é!", "b"], &["aé", "!b"]), ("a".into(), true));
        assert_eq!(run(&["日本"], &["日", "曜"]), ("日曜".into(), false));
    }
}
