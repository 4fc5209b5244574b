//! The engine: models loaded on first use, each with N slots and a bounded
//! wait queue, unloaded after an idle timeout.
//!
//! Each loaded model has one scheduler thread and N slots (KV caches).
//! Requests reach it through a bounded channel and take a free slot, the one
//! whose cache shares the most of their prompt; between steps requests join
//! and leave. A step runs one prompt chunk of a starting request and one
//! decode step of every generating request together, so the weights are read
//! once per step for all of them (continuous batching) and a long prompt
//! holds the others up by one chunk (of 64 tokens while they decode) at a time. Tokens flow back on a bounded
//! channel per request; a slow reader pauses only its own request, and
//! dropping the receiver ends it at the next step.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use candle_core::Device;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::constraint::Constraint;
use crate::embed::{EmbedInput, Embedder, Embeddings};
use crate::error::{Error, Result};
use crate::generate::{self, Event, Model, Need, Prompt, Request, Sequence, Slot};
use crate::gguf::Gguf;
use crate::model::Config as ModelConfig;
use crate::store::Store;
use crate::tools::{self, ToolChoice};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Concurrent sequences per loaded model.
    pub slots: usize,
    /// Requests that may wait for a slot; more are refused with [`Error::QueueFull`].
    pub queue_depth: usize,
    /// A model with no work for this long is unloaded.
    pub idle_timeout: Duration,
    /// Upper bound on the context a sequence may use (the model's trained
    /// context is often far larger than needed and KV memory scales with it).
    pub max_context: usize,
    /// Where models run: the CPU unless set (the node sets it from its
    /// `device` setting, see [`crate::hardware::device_named`]; probing GPUs
    /// here would open them for every caller that only wants the defaults).
    pub device: Device,
}

impl Config {
    pub fn new(data_dir: PathBuf) -> Self {
        Self { data_dir, slots: 4, queue_depth: 16, idle_timeout: Duration::from_secs(300), max_context: 8192, device: Device::Cpu }
    }
}

/// Tokens-per-event channel size: a slow reader pauses generation rather
/// than letting text pile up.
const EVENT_BUFFER: usize = 64;

struct Job {
    prompt: Vec<u32>,
    request: Request,
    constraint: Option<Constraint>,
    tool_calls: Option<tools::Parser>,
    tx: mpsc::Sender<Event>,
}

struct Loaded {
    model: Arc<Model>,
    jobs: SyncSender<Job>,
    busy: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
    last_used: Mutex<Instant>,
    loaded_at: Instant,
}

impl Loaded {
    fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::SeqCst) > 0 || self.queued.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(self.last_used.lock().expect("last_used lock").elapsed())
    }
}

/// A started generation.
#[derive(Debug)]
pub struct Generation {
    /// Text events, ending with [`Event::Done`] or [`Event::Error`]. Drop it to cancel.
    pub events: mpsc::Receiver<Event>,
    pub prompt_tokens: usize,
    /// The id of the model that runs it.
    pub model: String,
}

/// State of one loaded model, for status displays and the registry.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedInfo {
    pub id: String,
    pub slots: usize,
    pub busy: usize,
    pub queued: usize,
    pub context: usize,
    pub loaded_secs: f64,
}

/// A loaded embedding model. Requests run on the caller's thread: an
/// input is one forward pass, with nothing to schedule between steps.
struct LoadedEmbedder {
    embedder: Arc<Embedder>,
    last_used: Mutex<Instant>,
    /// Requests running now: a model in use is not unloaded.
    busy: AtomicUsize,
}

struct Inner {
    store: Store,
    cfg: Config,
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    embedders: Mutex<HashMap<String, Arc<LoadedEmbedder>>>,
    /// Serialises loads so two first requests do not load one model twice.
    loading: Mutex<()>,
}

/// Runs models on this machine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("data_dir", &self.inner.cfg.data_dir).finish()
    }
}

impl Engine {
    /// Opens the store in `cfg.data_dir` and starts the idle reaper.
    ///
    /// # Errors
    /// When the store cannot be opened.
    pub fn new(cfg: Config) -> Result<Self> {
        if cfg.slots == 0 {
            return Err(Error::InvalidRequest("slots must be at least 1".into()));
        }
        let store = Store::open(&cfg.data_dir)?;
        let inner = Arc::new(Inner { store, cfg, loaded: Mutex::new(HashMap::new()), embedders: Mutex::new(HashMap::new()), loading: Mutex::new(()) });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new().name("rbee-idle-reaper".into()).spawn(move || reap_idle(weak)).map_err(Error::io("starting the idle reaper"))?;
        Ok(Self { inner })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Starts generating with `model` (loading it first if needed).
    ///
    /// # Errors
    /// [`Error::ModelNotFound`], load errors, [`Error::InvalidRequest`] for a
    /// bad prompt or parameters, [`Error::QueueFull`] when every slot is busy
    /// and the queue is full.
    pub fn generate(&self, model: &str, request: Request) -> Result<Generation> {
        request.params.validate()?;
        let (id, loaded) = self.load(model)?;
        if let Some(t) = &request.params.tools {
            t.validate()?;
            if !matches!(request.prompt, Prompt::Chat(_)) && !matches!(&request.prompt, Prompt::Continue { prompt, .. } if matches!(**prompt, Prompt::Chat(_)))
            {
                return Err(Error::InvalidRequest("tools need a chat (messages), not a text prompt".into()));
            }
        }
        let format = loaded.model.template.tool_format;
        // A continuation of an answer with calls: failover writes them in
        // the Hermes form; this model continues from its own.
        let mut request = request;
        if request.params.tools.is_some()
            && let Prompt::Continue { text, .. } = &mut request.prompt
        {
            *text = tools::rewrite(text, format);
        }
        let tools = request.params.tools.as_ref();
        let prompt = loaded.model.prompt_tokens_with(&request.prompt, tools)?;
        let prompt_tokens = prompt.len();
        // The grammar is compiled here, so a schema it cannot enforce is the
        // caller's error before anything runs.
        let grammar = match (tools, &request.params.grammar) {
            (Some(t), g) if g.is_none() || t.choice != ToolChoice::None => {
                // The response format alone first, so that its faults name it.
                if let Some(g) = g {
                    loaded.model.constraint(g)?;
                }
                let special = |text: &str| loaded.model.tokenizer.control_token(text);
                Some(t.grammar(format, g.as_ref(), special, |g| loaded.model.constraint(g).map(|_| ()))?)
            }
            (_, g) => g.clone(),
        };
        let continued = match &request.prompt {
            Prompt::Continue { text, .. } => Some(text.as_str()),
            _ => None,
        };
        let tool_calls = tools.filter(|t| t.choice != ToolChoice::None).map(|_| tools::Parser::after(format, continued.unwrap_or_default()));
        let constraint = match &grammar {
            Some(g) => {
                let mut c = loaded.model.constraint(g).map_err(|e| match e {
                    // The grammar built from the tools.
                    Error::InvalidGrammar { message, .. } if tool_calls.is_some() => Error::InvalidGrammar { field: "tools", message },
                    e => e,
                })?;
                // A continuation: the text another node generated is already
                // part of the output the grammar holds.
                if let Some(text) = continued {
                    c.advance_text(text)?;
                }
                Some(c)
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        *loaded.last_used.lock().expect("last_used lock") = Instant::now();
        let queued = loaded.queued.fetch_add(1, Ordering::SeqCst);
        let free_slots = self.inner.cfg.slots.saturating_sub(loaded.busy.load(Ordering::SeqCst));
        if queued >= self.inner.cfg.queue_depth + free_slots {
            loaded.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::QueueFull { model: id, slots: self.inner.cfg.slots, queued });
        }
        match loaded.jobs.try_send(Job { prompt, request, constraint, tool_calls, tx }) {
            Ok(()) => Ok(Generation { events: rx, prompt_tokens, model: id }),
            Err(TrySendError::Full(_)) => {
                loaded.queued.fetch_sub(1, Ordering::SeqCst);
                Err(Error::QueueFull { model: id, slots: self.inner.cfg.slots, queued })
            }
            Err(TrySendError::Disconnected(_)) => {
                loaded.queued.fetch_sub(1, Ordering::SeqCst);
                Err(Error::ShuttingDown)
            }
        }
    }

    /// The loaded model `name` (loading it now if needed) and its id.
    ///
    /// # Errors
    /// [`Error::ModelNotFound`], [`Error::OutOfMemory`], model errors.
    pub fn model(&self, name: &str) -> Result<Arc<Model>> {
        Ok(self.load(name)?.1.model.clone())
    }

    fn load(&self, name: &str) -> Result<(String, Arc<Loaded>)> {
        let entry = self.inner.store.get(name)?;
        if let Some(l) = self.inner.loaded.lock().expect("loaded lock").get(&entry.id) {
            return Ok((entry.id, l.clone()));
        }
        let _guard = self.inner.loading.lock().expect("loading lock");
        if let Some(l) = self.inner.loaded.lock().expect("loaded lock").get(&entry.id) {
            return Ok((entry.id, l.clone()));
        }
        let cfg = &self.inner.cfg;
        let opened = Instant::now();
        let gguf = Gguf::open(&entry.path)?;
        tracing::debug!(secs = opened.elapsed().as_secs_f64(), "GGUF header read");
        let mcfg = ModelConfig::from_gguf(&gguf)?;
        if mcfg.pooling.is_some() {
            return Err(Error::WrongModelKind(format!("`{}` is an embedding model: it answers /v1/embeddings, not chat or completions", entry.id)));
        }
        let context = mcfg.context_length.min(cfg.max_context);
        let needed = gguf.weights_bytes() as u128 + (cfg.slots as u128) * (context as u128) * (mcfg.kv_bytes_per_token(&cfg.device) as u128) + (64u128 << 20);
        let available = crate::hardware::available_memory();
        if needed > u128::from(available) {
            return Err(Error::OutOfMemory { model: entry.id, needed_mib: u64::try_from(needed >> 20).unwrap_or(u64::MAX), available_mib: available >> 20 });
        }
        let started = Instant::now();
        let model = Arc::new(Model::from_gguf(&gguf, &cfg.device, cfg.max_context)?);
        drop(gguf);
        crate::generate::release_freed_heap();
        tracing::info!(model = %entry.id, secs = started.elapsed().as_secs_f64(), context = model.context, slots = cfg.slots, "model loaded");
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(cfg.queue_depth + cfg.slots);
        let busy = Arc::new(AtomicUsize::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        {
            let (model, busy, queued, slots) = (model.clone(), busy.clone(), queued.clone(), cfg.slots);
            std::thread::Builder::new()
                .name(format!("rbee-model-{}", entry.id))
                .spawn(move || schedule(&model, &rx, slots, &busy, &queued))
                .map_err(Error::io("starting a model's scheduler thread"))?;
        }
        let loaded = Arc::new(Loaded { model, jobs, busy, queued, last_used: Mutex::new(Instant::now()), loaded_at: Instant::now() });
        self.inner.loaded.lock().expect("loaded lock").insert(entry.id.clone(), loaded.clone());
        Ok((entry.id, loaded))
    }

    /// Embeds each of `inputs` with the embedding model `model` (loading it
    /// first if needed): unit vectors, cut to their first `dimensions` and
    /// scaled to length 1 again when that is given (as Matryoshka-trained
    /// models are meant to be used).
    ///
    /// # Errors
    /// [`Error::ModelNotFound`], [`Error::WrongModelKind`] for a chat
    /// model, [`Error::InvalidRequest`] for an empty input, a bad token id
    /// or `dimensions` out of range, [`Error::PromptTooLong`], load errors.
    pub fn embed(&self, model: &str, inputs: &[EmbedInput], dimensions: Option<usize>) -> Result<Embeddings> {
        let (id, loaded) = self.load_embedder(model)?;
        *loaded.last_used.lock().expect("last_used lock") = Instant::now();
        loaded.busy.fetch_add(1, Ordering::SeqCst);
        let result = (|| {
            let e = &loaded.embedder;
            if let Some(d) = dimensions
                && !(1..=e.dims).contains(&d)
            {
                return Err(Error::InvalidRequest(format!("dimensions must be between 1 and {} for `{id}`, got {d}", e.dims)));
            }
            // Every input is checked before any runs.
            let tokens = inputs.iter().map(|i| e.tokens(i)).collect::<Result<Vec<_>>>()?;
            let mut vectors = Vec::with_capacity(tokens.len());
            for t in &tokens {
                let mut v = e.embed(t)?;
                if let Some(d) = dimensions.filter(|&d| d < v.len()) {
                    v.truncate(d);
                    crate::embed::normalize(&mut v);
                }
                vectors.push(v);
            }
            Ok(Embeddings { vectors, prompt_tokens: tokens.iter().map(Vec::len).sum(), model: id.clone() })
        })();
        loaded.busy.fetch_sub(1, Ordering::SeqCst);
        *loaded.last_used.lock().expect("last_used lock") = Instant::now();
        result
    }

    fn load_embedder(&self, name: &str) -> Result<(String, Arc<LoadedEmbedder>)> {
        let entry = self.inner.store.get(name)?;
        if let Some(l) = self.inner.embedders.lock().expect("embedders lock").get(&entry.id) {
            return Ok((entry.id, l.clone()));
        }
        let _guard = self.inner.loading.lock().expect("loading lock");
        if let Some(l) = self.inner.embedders.lock().expect("embedders lock").get(&entry.id) {
            return Ok((entry.id, l.clone()));
        }
        let gguf = Gguf::open(&entry.path)?;
        let needed = gguf.weights_bytes() + (64 << 20);
        let available = crate::hardware::available_memory();
        if needed > available {
            return Err(Error::OutOfMemory { model: entry.id, needed_mib: needed >> 20, available_mib: available >> 20 });
        }
        let started = Instant::now();
        let embedder = Embedder::from_gguf(&gguf, &entry.id, &self.inner.cfg.device)?;
        drop(gguf);
        crate::generate::release_freed_heap();
        tracing::info!(model = %entry.id, secs = started.elapsed().as_secs_f64(), dims = embedder.dims, "embedding model loaded");
        let loaded = Arc::new(LoadedEmbedder { embedder: Arc::new(embedder), last_used: Mutex::new(Instant::now()), busy: AtomicUsize::new(0) });
        self.inner.embedders.lock().expect("embedders lock").insert(entry.id.clone(), loaded.clone());
        Ok((entry.id, loaded))
    }

    /// Unloads `name` now; running requests finish first. Returns whether it was loaded.
    pub fn unload(&self, name: &str) -> bool {
        let id = self.inner.store.get(name).map(|e| e.id).unwrap_or_else(|_| name.to_string());
        let generator = self.inner.loaded.lock().expect("loaded lock").remove(&id).is_some();
        let embedder = self.inner.embedders.lock().expect("embedders lock").remove(&id).is_some();
        generator || embedder
    }

    /// The models loaded now.
    pub fn loaded(&self) -> Vec<LoadedInfo> {
        let map = self.inner.loaded.lock().expect("loaded lock");
        let mut out: Vec<LoadedInfo> = map
            .iter()
            .map(|(id, l)| LoadedInfo {
                id: id.clone(),
                slots: self.inner.cfg.slots,
                busy: l.busy.load(Ordering::SeqCst),
                queued: l.queued.load(Ordering::SeqCst),
                context: l.model.context,
                loaded_secs: l.loaded_at.elapsed().as_secs_f64(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// A model's scheduler: admits requests into free slots and moves every
/// running one a step at a time until the model is unloaded (the job sender
/// dropped) and the last request has ended.
fn schedule(model: &Model, rx: &Receiver<Job>, n_slots: usize, busy: &AtomicUsize, queued: &AtomicUsize) {
    let mut slots: Vec<Slot> = (0..n_slots).map(|_| Slot::new(model)).collect();
    let mut free = vec![true; n_slots];
    let mut running: Vec<Sequence<'_>> = Vec::new();
    // Ended requests whose last events their readers have not taken yet.
    let mut draining: Vec<Sequence<'_>> = Vec::new();
    let mut open = true;
    loop {
        while open && running.len() < n_slots {
            let job = if running.is_empty() && draining.is_empty() {
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            } else {
                match rx.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            };
            queued.fetch_sub(1, Ordering::SeqCst);
            if job.tx.is_closed() {
                continue;
            }
            // The free slot whose cache saves this prompt the most.
            let Some(index) = (0..n_slots).filter(|&i| free[i]).max_by_key(|&i| (slots[i].reusable_for(&job.prompt), std::cmp::Reverse(i))) else {
                unreachable!("fewer running than slots")
            };
            free[index] = false;
            busy.fetch_add(1, Ordering::SeqCst);
            running.push(Sequence::new(model, index, &mut slots[index], job.prompt, job.request.params, job.constraint, job.tool_calls, job.tx));
        }
        if !open && running.is_empty() && draining.is_empty() {
            return;
        }
        for s in draining.iter_mut() {
            s.flush();
        }
        draining.retain(|s| s.has_outbox());
        let needs: Vec<Need> = running
            .iter_mut()
            .map(|s| {
                s.flush();
                let slot = s.slot;
                s.next(&mut slots[slot])
            })
            .collect();
        let mut kept = Vec::with_capacity(running.len());
        let mut batch = Vec::new();
        let mut prefill = None;
        for (s, need) in running.drain(..).zip(needs) {
            match need {
                Need::Finished => {
                    // The slot is free before the reader sees the end.
                    free[s.slot] = true;
                    busy.fetch_sub(1, Ordering::SeqCst);
                    let mut s = s;
                    s.flush();
                    if s.has_outbox() {
                        draining.push(s);
                    }
                    continue;
                }
                Need::Decode(token) => batch.push((kept.len(), token)),
                // One prompt chunk per step, the earliest request's.
                Need::Prefill if prefill.is_none() => prefill = Some(kept.len()),
                Need::Prefill | Need::Wait => {}
            }
            kept.push(s);
        }
        running = kept;
        if let Some(i) = prefill {
            let max = if batch.is_empty() { generate::PREFILL_CHUNK } else { generate::PREFILL_CHUNK_BESIDE_DECODING };
            running[i].prefill_among(&mut slots, max);
        }
        if !batch.is_empty() {
            generate::decode_step(model, &mut slots, &mut running, &batch);
        }
        if prefill.is_none() && batch.is_empty() {
            // Every request waits for its reader: look again shortly.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn reap_idle(inner: Weak<Inner>) {
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let Some(inner) = inner.upgrade() else { return };
        let timeout = inner.cfg.idle_timeout;
        let mut map = inner.loaded.lock().expect("loaded lock");
        let idle: Vec<String> = map.iter().filter(|(_, l)| l.idle_for().is_some_and(|d| d >= timeout)).map(|(id, _)| id.clone()).collect();
        for id in idle {
            map.remove(&id);
            tracing::info!(model = %id, "unloaded after idle timeout");
        }
        drop(map);
        inner.embedders.lock().expect("embedders lock").retain(|id, l| {
            let keep = l.busy.load(Ordering::SeqCst) > 0 || l.last_used.lock().expect("last_used lock").elapsed() < timeout;
            if !keep {
                tracing::info!(model = %id, "embedding model unloaded after idle timeout");
            }
            keep
        });
    }
}
