//! The engine: models loaded on first use, each with N slots running
//! concurrently and a bounded wait queue, unloaded after an idle timeout.
//!
//! Each slot is a thread that owns one KV cache; all slots of a model share
//! its weights. Requests reach the slots through a bounded channel; tokens
//! flow back on a bounded channel per request, and dropping its receiver
//! stops the work.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use candle_core::Device;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::generate::{self, Event, Model, Request, Slot};
use crate::gguf::Gguf;
use crate::model::Config as ModelConfig;
use crate::store::Store;

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
    pub device: Device,
}

impl Config {
    pub fn new(data_dir: PathBuf) -> Self {
        Self { data_dir, slots: 2, queue_depth: 16, idle_timeout: Duration::from_secs(300), max_context: 8192, device: Device::Cpu }
    }
}

/// Tokens-per-event channel size: a slow reader pauses generation rather
/// than letting text pile up.
const EVENT_BUFFER: usize = 64;

struct Job {
    prompt: Vec<u32>,
    request: Request,
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

struct Inner {
    store: Store,
    cfg: Config,
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
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
        let inner = Arc::new(Inner { store, cfg, loaded: Mutex::new(HashMap::new()), loading: Mutex::new(()) });
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
        let prompt = loaded.model.prompt_tokens(&request.prompt)?;
        let prompt_tokens = prompt.len();
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        *loaded.last_used.lock().expect("last_used lock") = Instant::now();
        let queued = loaded.queued.fetch_add(1, Ordering::SeqCst);
        let free_slots = self.inner.cfg.slots.saturating_sub(loaded.busy.load(Ordering::SeqCst));
        if queued >= self.inner.cfg.queue_depth + free_slots {
            loaded.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::QueueFull { model: id, slots: self.inner.cfg.slots, queued });
        }
        match loaded.jobs.try_send(Job { prompt, request, tx }) {
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
        let context = mcfg.context_length.min(cfg.max_context);
        let needed = gguf.weights_bytes() as u128 + (cfg.slots as u128) * (context as u128) * (mcfg.kv_bytes_per_token() as u128) + (64u128 << 20);
        let available = crate::hardware::available_memory();
        if needed > u128::from(available) {
            return Err(Error::OutOfMemory { model: entry.id, needed_mib: u64::try_from(needed >> 20).unwrap_or(u64::MAX), available_mib: available >> 20 });
        }
        let started = Instant::now();
        let model = Arc::new(Model::from_gguf(&gguf, &cfg.device, cfg.max_context)?);
        tracing::info!(model = %entry.id, secs = started.elapsed().as_secs_f64(), context = model.context, slots = cfg.slots, "model loaded");
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(cfg.queue_depth + cfg.slots);
        let rx = Arc::new(Mutex::new(rx));
        let busy = Arc::new(AtomicUsize::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        for i in 0..cfg.slots {
            let (model, rx, busy, queued) = (model.clone(), rx.clone(), busy.clone(), queued.clone());
            std::thread::Builder::new()
                .name(format!("rbee-slot-{}-{i}", entry.id))
                .spawn(move || slot_worker(&model, &rx, &busy, &queued))
                .map_err(Error::io("starting a slot thread"))?;
        }
        let loaded = Arc::new(Loaded { model, jobs, busy, queued, last_used: Mutex::new(Instant::now()), loaded_at: Instant::now() });
        self.inner.loaded.lock().expect("loaded lock").insert(entry.id.clone(), loaded.clone());
        Ok((entry.id, loaded))
    }

    /// Unloads `name` now; running requests finish first. Returns whether it was loaded.
    pub fn unload(&self, name: &str) -> bool {
        let id = self.inner.store.get(name).map(|e| e.id).unwrap_or_else(|_| name.to_string());
        self.inner.loaded.lock().expect("loaded lock").remove(&id).is_some()
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

fn slot_worker(model: &Model, rx: &Mutex<Receiver<Job>>, busy: &AtomicUsize, queued: &AtomicUsize) {
    let mut slot = Slot::new(model);
    loop {
        // The lock is held only while waiting; a sender dropped (model
        // unloaded) ends the thread once the queue is drained.
        let job = match rx.lock().expect("job queue lock").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        busy.fetch_add(1, Ordering::SeqCst);
        queued.fetch_sub(1, Ordering::SeqCst);
        generate::run(model, &mut slot, &job.prompt, &job.request.params, &job.tx);
        busy.fetch_sub(1, Ordering::SeqCst);
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
    }
}
