//! One generation: prompt in, a stream of text events out.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::constraint::{Constraint, Grammar, Grammars};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::model::{Cache, Weights};
use crate::sampling::{Sampler, SamplingParams};
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;
use crate::tools::{self, Piece, Tools};

/// Prompts run through the model in chunks of at most this many tokens: this
/// bounds the memory of a long prompt's activations. Chunks can be of any
/// size: on the CPU a token's result does not depend on the chunk it ran in
/// (see [`Slot`]).
pub const PREFILL_CHUNK: usize = 256;

/// Prompt tokens run in a step that also decodes other requests: a long
/// prompt holds up the requests decoding beside it by this much per step
/// (their next token waits for the chunk), not by a whole prompt.
pub const PREFILL_CHUNK_BESIDE_DECODING: usize = 64;

/// A loaded model: weights, tokenizer and chat template.
#[derive(Debug)]
pub struct Model {
    pub weights: Arc<Weights>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// Tokens a sequence may hold: the trained context, capped by config.
    pub context: usize,
    /// The vocabulary compiled for grammars, built by the first request
    /// that needs it (most never do, and it costs a few MiB).
    grammars: std::sync::OnceLock<std::result::Result<Grammars, String>>,
}

/// Gives the heap pages that loading a model freed back to the system.
///
/// Reading a GGUF's metadata allocates every token string and merge rule
/// (a hundred thousand small strings for a 49k vocabulary), and building the
/// tokenizer more; once they are freed, glibc keeps the pages mapped between
/// live allocations for the process's lifetime (about 5 MiB for
/// SmolLM2-135M's 49 152 tokens, as much as its KV cache at 256 tokens).
pub(crate) fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Model {
    /// Loads the GGUF at `path` onto `device`.
    ///
    /// # Errors
    /// When the file is not a usable model.
    pub fn load(path: &Path, device: &Device, max_context: usize) -> Result<Self> {
        let model = Self::from_gguf(&Gguf::open(path)?, device, max_context)?;
        release_freed_heap();
        Ok(model)
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
        Ok(Self { weights: Arc::new(weights), tokenizer, template, context, grammars: std::sync::OnceLock::new() })
    }

    /// `grammar` compiled for one request on this model.
    ///
    /// # Errors
    /// [`Error::InvalidGrammar`] for a grammar or schema that cannot be
    /// enforced; [`Error::Tokenizer`] when this model's vocabulary cannot
    /// carry grammars.
    pub fn constraint(&self, grammar: &Grammar) -> Result<Constraint> {
        let grammars = self.grammars.get_or_init(|| {
            let t = Instant::now();
            let g = Grammars::new(&self.tokenizer, &self.tokenizer.end_of_generation).map_err(|e| e.to_string());
            tracing::debug!(secs = t.elapsed().as_secs_f64(), "grammar vocabulary built");
            g
        });
        grammars.as_ref().map_err(|e| Error::Tokenizer(e.clone()))?.compile(grammar)
    }

    /// Token ids for `prompt`, checked against the context.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for an empty prompt, [`Error::PromptTooLong`]
    /// for one that leaves no room to generate; template and tokenizer errors.
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        self.prompt_tokens_with(prompt, None)
    }

    /// Like [`prompt_tokens`](Self::prompt_tokens), offering `tools` in a chat.
    ///
    /// # Errors
    /// As [`prompt_tokens`](Self::prompt_tokens).
    pub fn prompt_tokens_with(&self, prompt: &Prompt, tools: Option<&Tools>) -> Result<Vec<u32>> {
        let ids = match prompt {
            Prompt::Text(t) => self.tokenizer.encode_prompt(t)?,
            Prompt::Chat(msgs) => self.tokenizer.encode_prompt(&self.template.render_with_tools(msgs, tools, true)?)?,
            Prompt::Tokens(ids) => ids.clone(),
            // The answer so far is tokenized together with the prompt's text,
            // as if this model had written it.
            Prompt::Continue { prompt, text } => match prompt.as_ref() {
                Prompt::Text(t) => self.tokenizer.encode_prompt(&format!("{t}{text}"))?,
                Prompt::Chat(msgs) => self.tokenizer.encode_prompt(&format!("{}{text}", self.template.render_with_tools(msgs, tools, true)?))?,
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
    /// The answer ended after one or more tool calls.
    ToolCalls,
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

/// A generated token's log-probability (natural log, of the model's own
/// distribution: before penalties, grammar and temperature) and the most
/// likely alternatives at its step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// What a generation stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Newly generated text (always whole UTF-8 characters) and how many
    /// tokens were generated since the previous text: a token can end
    /// mid-character or be held back while it may start a stop string, so
    /// one text can stand for several. Summed over a generation they count
    /// every token whose text was sent. With `logprobs` asked for, those
    /// tokens' log-probabilities.
    Text { text: String, tokens: usize, logprobs: Vec<TokenLogprob> },
    /// A tool call opens: its index in the answer, id and function name;
    /// `tokens` as for `Text`.
    ToolCall { index: usize, id: String, name: String, tokens: usize },
    /// More of call `index`'s arguments (JSON text; a call's pieces join
    /// to its arguments).
    ToolArguments { index: usize, text: String, tokens: usize },
    /// The last event of a successful generation.
    Done { finish: FinishReason, usage: Usage },
    /// The generation failed after it started.
    Error(String),
}

/// A sequence slot: its KV cache and the tokens it holds, kept between
/// requests so a follow-up sharing a prefix (a chat's next turn) skips it.
///
/// The whole shared prefix is reused, to the token, including tokens the
/// slot generated: on the CPU a token's keys and values do not depend on
/// whether it ran in a prompt chunk, a decode step or a batch (see
/// [`crate::attention`]), so a reused cache gives the same text as a fresh
/// prefill.
#[derive(Debug)]
pub struct Slot {
    cache: Cache,
    tokens: Vec<u32>,
}

impl Slot {
    pub fn new(model: &Model) -> Self {
        Self { cache: model.weights.new_cache(), tokens: Vec::new() }
    }

    /// Prompt tokens this slot's cache would save `prompt`: their common
    /// prefix, less the last prompt token, which runs to give the first logits.
    pub fn reusable_for(&self, prompt: &[u32]) -> usize {
        let common = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        common.min(prompt.len().saturating_sub(1))
    }

    fn clear(&mut self) {
        self.cache.truncate(0);
        self.tokens.clear();
    }
}

/// One request running in a slot: its prompt goes through in chunks, then
/// it yields one token per decode step. The runtime moves every running
/// sequence of a model one step at a time and decodes them together
/// ([`Weights::forward_batch`](crate::model::Weights::forward_batch)).
#[derive(Debug)]
pub struct Sequence<'m> {
    model: &'m Model,
    /// The slot (index into the runtime's slots) holding its cache.
    pub slot: usize,
    tx: mpsc::Sender<Event>,
    prompt: Vec<u32>,
    params: SamplingParams,
    reuse: usize,
    sampler: Sampler,
    /// The grammar the output must match, if any.
    constraint: Option<Constraint>,
    /// Reads tool calls out of the text when the request offered tools.
    tool_calls: Option<tools::Parser>,
    text: crate::tokenizer::TextStream<'m>,
    stops: StopMatcher,
    /// Logits waiting to be sampled (after the prompt or a decode step).
    logits: Option<Vec<f32>>,
    generated: usize,
    /// Tokens generated since the last text sent.
    pending: usize,
    /// Their log-probabilities, when asked for.
    pending_logprobs: Vec<TokenLogprob>,
    /// Events not yet taken by the receiver: the sequence waits (its reader
    /// is slow) until they are, without holding up the others.
    outbox: std::collections::VecDeque<Event>,
    finished: bool,
    started: Instant,
    prompt_secs: f64,
    decode_start: Option<Instant>,
}

/// What a sequence needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// More of its prompt to run.
    Prefill,
    /// A decode step with this token.
    Decode(u32),
    /// Nothing now: its reader has not taken its events yet.
    Wait,
    /// It has finished (or its receiver is gone); its slot is free once its events are out.
    Finished,
}

impl<'m> Sequence<'m> {
    /// Starts `prompt` in `slot` (number `index`), reusing what its cache
    /// shares with it; `constraint` holds the output to a grammar and
    /// `tool_calls` reads calls out of it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &'m Model,
        index: usize,
        slot: &mut Slot,
        prompt: Vec<u32>,
        params: SamplingParams,
        constraint: Option<Constraint>,
        tool_calls: Option<tools::Parser>,
        tx: mpsc::Sender<Event>,
    ) -> Self {
        let reuse = slot.reusable_for(&prompt);
        slot.cache.truncate(reuse);
        slot.tokens.truncate(reuse);
        Self {
            model,
            slot: index,
            tx,
            sampler: Sampler::new(params.clone()),
            constraint,
            tool_calls,
            stops: StopMatcher::new(&params.stop),
            text: model.tokenizer.stream(),
            prompt,
            params,
            reuse,
            logits: None,
            generated: 0,
            pending: 0,
            pending_logprobs: Vec::new(),
            outbox: std::collections::VecDeque::new(),
            finished: false,
            started: Instant::now(),
            prompt_secs: 0.0,
            decode_start: None,
        }
    }

    /// Whether its receiver is gone (the request was cancelled).
    pub fn cancelled(&self) -> bool {
        self.tx.is_closed()
    }

    /// Hands queued events to the receiver, as many as it has room for.
    pub fn flush(&mut self) {
        while let Some(e) = self.outbox.pop_front() {
            match self.tx.try_send(e) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(e)) => {
                    self.outbox.push_front(e);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.outbox.clear();
                    self.finished = true;
                    return;
                }
            }
        }
    }

    /// Whether events are still waiting for the receiver.
    pub fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// What the sequence needs next; samples a token when it has logits and
    /// its reader keeps up. `slot` is its own.
    pub fn next(&mut self, slot: &mut Slot) -> Need {
        if self.finished || self.cancelled() {
            return Need::Finished;
        }
        if slot.tokens.len() < self.prompt.len() {
            return Need::Prefill;
        }
        if !self.outbox.is_empty() {
            return Need::Wait;
        }
        let Some(mut logits) = self.logits.take() else { return Need::Wait };
        match self.sample(&mut logits, slot) {
            Ok(Some(token)) => Need::Decode(token),
            Ok(None) => Need::Finished,
            Err(e) => {
                self.fail(slot, &e);
                Need::Finished
            }
        }
    }

    /// Runs the next chunk of the prompt, at most `max` tokens, first taking
    /// from another slot the keys and values of any part of the prompt it
    /// holds beyond what this sequence's own slot has: the choices of an
    /// `n` > 1 request (and people sending the same long system prompt at
    /// once) run their shared prompt once and fork from it.
    pub fn prefill_among(&mut self, slots: &mut [Slot], max: usize) {
        let at = slots[self.slot].tokens.len();
        let (best, common) = slots
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != self.slot)
            .map(|(i, s)| (i, s.reusable_for(&self.prompt)))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))
            .unwrap_or((self.slot, 0));
        if common > at {
            let (own, other) = if best < self.slot {
                let (a, b) = slots.split_at_mut(self.slot);
                (&mut b[0], &a[best])
            } else {
                let (a, b) = slots.split_at_mut(best);
                (&mut a[self.slot], &b[0])
            };
            match own.cache.copy_from(&other.cache, at, common) {
                Ok(()) => {
                    own.tokens.extend_from_slice(&self.prompt[at..common]);
                    self.reuse = common;
                }
                Err(e) => {
                    self.fail(own, &e);
                    return;
                }
            }
        }
        self.prefill(&mut slots[self.slot], max);
    }

    /// Runs the next chunk of the prompt, at most `max` tokens.
    fn prefill(&mut self, slot: &mut Slot, max: usize) {
        let at = slot.tokens.len();
        let end = (at + max.clamp(1, PREFILL_CHUNK)).min(self.prompt.len());
        let chunk = &self.prompt[at..end];
        match self.model.weights.forward(chunk, &mut slot.cache).and_then(|l| Ok(l.to_vec1::<f32>()?)) {
            Ok(logits) => {
                slot.tokens.extend_from_slice(chunk);
                if slot.tokens.len() == self.prompt.len() {
                    self.logits = Some(logits);
                    self.prompt_secs = self.started.elapsed().as_secs_f64();
                    self.decode_start = Some(Instant::now());
                }
            }
            Err(e) => self.fail(slot, &e),
        }
    }

    /// Takes the logits of a decode step that ran `token`.
    pub fn decoded(&mut self, slot: &mut Slot, token: u32, logits: Vec<f32>) {
        slot.tokens.push(token);
        self.logits = Some(logits);
    }

    /// Ends the sequence with `e`, leaving its slot clean (its cache may be
    /// half-written). Like a normal end, its last events go out once the
    /// runtime has freed its slot.
    pub fn fail(&mut self, slot: &mut Slot, e: &Error) {
        slot.clear();
        self.outbox.push_back(Event::Error(e.to_string()));
        self.finished = true;
    }

    /// Samples the next token; `Some` when it should run through the model.
    fn sample(&mut self, logits: &mut [f32], slot: &Slot) -> Result<Option<u32>> {
        let dist = self.params.logprobs.map(|top| Distribution::of(logits, top));
        if let Some(c) = &mut self.constraint {
            c.mask(logits)?;
        }
        let token = self.sampler.sample(logits, &slot.tokens);
        let end = self.model.tokenizer.end_of_generation.contains(&token);
        if let Some(d) = dist
            && !end
        {
            let lp = d.token_logprob(&self.model.tokenizer, token);
            self.pending_logprobs.push(lp);
        }
        // A grammar allows an end of turn only where it is complete, so it
        // ends the answer even with `ignore_eos`.
        if end && (!self.params.ignore_eos || self.constraint.is_some()) {
            self.finish(FinishReason::Stop);
            return Ok(None);
        }
        if let Some(c) = &mut self.constraint {
            c.advance(&[token])?;
        }
        self.generated += 1;
        self.pending += 1;
        if let Some(piece) = self.text.step(token)? {
            let (emit, stopped) = self.stops.push(&piece);
            self.emit(emit);
            if stopped {
                self.finish(FinishReason::Stop);
                return Ok(None);
            }
        }
        // A control token that opens or closes calls (Mistral's
        // `[TOOL_CALLS]`) is not text; the call parser still needs it.
        if let Some(p) = &self.tool_calls
            && self.model.tokenizer.token_bytes(token).is_none()
            && let Some(marker) = self.model.tokenizer.token(token).filter(|t| p.is_marker(t))
        {
            let marker = format!("{}{marker}", self.stops.flush());
            self.emit(marker);
        }
        if self.constraint.as_ref().is_some_and(Constraint::done) {
            self.finish(FinishReason::Stop);
            return Ok(None);
        }
        if self.generated >= self.params.max_tokens.unwrap_or(usize::MAX) || slot.tokens.len() + 1 >= self.model.context {
            self.finish(FinishReason::Length);
            return Ok(None);
        }
        self.flush();
        Ok(Some(token))
    }

    /// Queues generated text, as text and tool calls.
    fn emit(&mut self, text: String) {
        let pieces = match &mut self.tool_calls {
            Some(p) => p.push(&text),
            None if text.is_empty() => Vec::new(),
            None => vec![Piece::Text(text)],
        };
        self.queue(pieces);
    }

    fn queue(&mut self, pieces: Vec<Piece>) {
        for p in pieces {
            let event = match p {
                Piece::Text(text) => Event::Text { text, tokens: std::mem::take(&mut self.pending), logprobs: std::mem::take(&mut self.pending_logprobs) },
                // Logprobs are reported for content only, as OpenAI's.
                Piece::Call { index, id, name } => {
                    self.pending_logprobs.clear();
                    Event::ToolCall { index, id, name, tokens: std::mem::take(&mut self.pending) }
                }
                Piece::Arguments { index, text } => {
                    self.pending_logprobs.clear();
                    Event::ToolArguments { index, text, tokens: std::mem::take(&mut self.pending) }
                }
            };
            self.outbox.push_back(event);
        }
    }

    fn finish(&mut self, mut finish: FinishReason) {
        let rest = self.stops.flush();
        self.emit(rest);
        if let Some(p) = &mut self.tool_calls {
            let rest = p.finish();
            let calls = p.calls();
            self.queue(rest);
            if calls > 0 && finish == FinishReason::Stop {
                finish = FinishReason::ToolCalls;
            }
        }
        let usage = Usage {
            prompt_tokens: self.prompt.len(),
            cached_tokens: self.reuse,
            completion_tokens: self.generated,
            prompt_secs: self.prompt_secs,
            decode_secs: self.decode_start.map_or(0.0, |t| t.elapsed().as_secs_f64()),
        };
        self.outbox.push_back(Event::Done { finish, usage });
        self.finished = true;
    }
}

/// A step's log-softmax, for reporting logprobs: the normaliser and the
/// most likely tokens.
struct Distribution {
    max: f32,
    log_sum: f32,
    top: Vec<(u32, f32)>,
    raw: Vec<f32>,
}

impl Distribution {
    fn of(logits: &[f32], top: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
        let log_sum = sum.ln() as f32;
        let mut best: Vec<(u32, f32)> = Vec::new();
        if top > 0 {
            let mut idx: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            let k = top.min(idx.len());
            idx.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            idx.truncate(k);
            idx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            best = idx;
        }
        Self { max, log_sum, top: best, raw: logits.to_vec() }
    }

    fn logprob(&self, logit: f32) -> f32 {
        logit - self.max - self.log_sum
    }

    fn token_logprob(&self, tokenizer: &Tokenizer, token: u32) -> TokenLogprob {
        let piece = |id: u32| -> (String, Vec<u8>) {
            let bytes = tokenizer.token_bytes(id).unwrap_or_else(|| tokenizer.token(id).unwrap_or_default().as_bytes().to_vec());
            (String::from_utf8_lossy(&bytes).into_owned(), bytes)
        };
        let (text, bytes) = piece(token);
        TokenLogprob {
            token: text,
            bytes,
            logprob: self.logprob(self.raw[token as usize]),
            top: self
                .top
                .iter()
                .map(|&(id, l)| {
                    let (token, bytes) = piece(id);
                    TopLogprob { token, bytes, logprob: self.logprob(l) }
                })
                .collect(),
        }
    }
}

/// One decode step of the sequences in `batch` (indices into `seqs`, each
/// with the token it sampled) in one forward pass: the weights are read once
/// for all of them. A failure ends every sequence of the step.
pub fn decode_step(model: &Model, slots: &mut [Slot], seqs: &mut [Sequence<'_>], batch: &[(usize, u32)]) {
    let mut by_slot: Vec<Option<&mut Slot>> = slots.iter_mut().map(Some).collect();
    let mut taken: Vec<&mut Slot> = batch.iter().map(|&(i, _)| by_slot[seqs[i].slot].take().expect("each sequence has a slot of its own")).collect();
    let tokens: Vec<u32> = batch.iter().map(|&(_, t)| t).collect();
    let mut caches: Vec<&mut Cache> = taken.iter_mut().map(|s| &mut s.cache).collect();
    let result = model.weights.forward_batch(&tokens, &mut caches);
    drop(caches);
    match result {
        Ok(logits) => {
            for ((&(i, token), slot), l) in batch.iter().zip(taken).zip(logits) {
                seqs[i].decoded(slot, token, l);
            }
        }
        Err(e) => {
            for (&(i, _), slot) in batch.iter().zip(taken) {
                seqs[i].fail(slot, &e);
            }
        }
    }
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
