//! The node as a service, below its HTTP API: what `rbee serve`, the app
//! and the API's handlers share.

use std::sync::Arc;

use rbee_engine::Engine;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::metrics::Metrics;

/// One machine's node as a service: the engine, the swarm, sharing, measured
/// speeds, pulls, conversations, and the tasks it runs. The HTTP layer
/// ([`crate::api`]) maps requests to it; the app's tray asks it for its
/// [`status`](Service::status). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Service {
    pub engine: Engine,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// The swarm, when this node is in one.
    pub swarm: Option<rbee_swarm::Client>,
    /// Model downloads started from the UI.
    pub pulls: Arc<crate::pulls::Pulls>,
    /// The UI's chats.
    pub conversations: Arc<crate::conversations::Conversations>,
    /// Whether this node runs requests for the rest of the swarm now
    /// (starts as configured; the app's tray and the settings page flip it).
    sharing: Arc<std::sync::atomic::AtomicBool>,
    /// Turns true when the node begins to shut down: endless streams (the
    /// swarm page's events) end then, so they do not hold the shutdown up.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// Every task the node runs beside its HTTP connections (the record
    /// publisher, the swarm's inbound requests, pulls, streamed answers):
    /// the node waits for them all when it stops.
    pub tasks: tokio_util::task::TaskTracker,
    /// Cancelled once HTTP has drained: the background tasks end.
    pub background: tokio_util::sync::CancellationToken,
    /// How the process hosting this node restarts it (the app sets one;
    /// `rbee serve` has none).
    restart: Arc<std::sync::OnceLock<RestartHook>>,
    /// Measured decode speed per model (tokens/s, smoothed).
    speeds: Arc<std::sync::Mutex<std::collections::HashMap<String, f32>>>,
    /// SHA-256 of each configured API key: compared in constant time, and
    /// the keys themselves are not kept where a log or a dump could show them.
    pub(crate) key_hashes: Arc<Vec<[u8; 32]>>,
}

impl Service {
    pub fn new(engine: Engine, config: Config) -> Self {
        let key_hashes = config.api_keys.iter().map(|k| Sha256::digest(k.as_bytes()).into()).collect();
        let path = config.data_dir.join(crate::conversations::FILE);
        let conversations = crate::conversations::Conversations::open(&path).unwrap_or_else(|e| {
            tracing::error!(error = %e, file = %path.display(), "cannot keep conversations in the data dir; this run keeps them in memory only");
            crate::conversations::Conversations::in_memory()
        });
        let tasks = tokio_util::task::TaskTracker::new();
        let background = tokio_util::sync::CancellationToken::new();
        Self {
            sharing: Arc::new(config.share.into()),
            pulls: Arc::new(crate::pulls::Pulls::new(tasks.clone(), background.clone())),
            tasks,
            background,
            restart: Arc::default(),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
            conversations: Arc::new(conversations),
            engine,
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()),
            swarm: None,
            speeds: Arc::default(),
            key_hashes: Arc::new(key_hashes),
        }
    }

    /// The same state, in the swarm `client` belongs to.
    #[must_use]
    pub fn with_swarm(mut self, client: Option<rbee_swarm::Client>) -> Self {
        self.swarm = client;
        self
    }

    /// Whether this node runs requests for other nodes now.
    pub fn sharing(&self) -> bool {
        self.sharing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts or stops running requests for other nodes (the next record
    /// gossiped says so; requests already running finish).
    pub fn set_sharing(&self, on: bool) {
        if self.sharing.swap(on, std::sync::atomic::Ordering::Relaxed) != on {
            tracing::info!(share = on, "sharing this machine with the swarm {}", if on { "resumed" } else { "paused" });
        }
    }

    /// Says the node is shutting down (the server calls it when it stops accepting).
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Completes once the node has begun to shut down.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut rx = self.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }

    /// Lets `POST /api/restart` restart the node by calling `hook` (once set,
    /// it stays).
    pub fn set_restart_hook(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.restart.set(RestartHook(Box::new(hook)));
    }

    /// Whether this node's host can restart it.
    pub fn can_restart(&self) -> bool {
        self.restart.get().is_some()
    }

    /// Asks the host to restart the node; `false` when it cannot.
    pub fn request_restart(&self) -> bool {
        self.restart.get().map(|h| (h.0)()).is_some()
    }

    /// Adds one generation's decode speed to `model`'s running estimate.
    pub fn record_decode_speed(&self, model: &str, tokens_per_sec: f64) {
        if !(tokens_per_sec.is_finite() && tokens_per_sec > 0.0) {
            return;
        }
        let mut s = self.speeds.lock().expect("speeds lock");
        let e = s.entry(model.to_string()).or_insert(tokens_per_sec as f32);
        *e = 0.7 * *e + 0.3 * tokens_per_sec as f32;
    }

    /// `model`'s measured decode speed, tokens/s.
    pub fn decode_speed(&self, model: &str) -> Option<f32> {
        self.speeds.lock().expect("speeds lock").get(model).copied()
    }
}

/// A host's way to restart its node.
struct RestartHook(Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for RestartHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestartHook")
    }
}

/// What the app's tray shows: "3 peers · gemma-3-270m ready", "alone · 2
/// models", "… · sharing paused".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Peers up besides this node; `None` when the node runs alone.
    pub peers: Option<usize>,
    /// Models loaded now.
    pub loaded: Vec<String>,
    /// Models in this machine's store.
    pub on_disk: usize,
    /// In a swarm with sharing switched off.
    pub sharing_paused: bool,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.peers {
            None => f.write_str("alone")?,
            Some(1) => f.write_str("1 peer")?,
            Some(n) => write!(f, "{n} peers")?,
        }
        match (self.loaded.as_slice(), self.on_disk) {
            ([one], _) => write!(f, " · {one} ready")?,
            ([], 0) => f.write_str(" · no models yet")?,
            ([], 1) => f.write_str(" · 1 model")?,
            ([], n) => write!(f, " · {n} models")?,
            (many, _) => write!(f, " · {} models ready", many.len())?,
        }
        if self.sharing_paused {
            f.write_str(" · sharing paused")?;
        }
        Ok(())
    }
}

impl Service {
    /// How this node stands now, for the tray.
    pub fn status(&self) -> Status {
        Status {
            peers: self.swarm.as_ref().map(|c| c.peers().iter().filter(|p| p.up && !p.local).count()),
            loaded: self.engine.loaded().into_iter().map(|m| m.id).collect(),
            on_disk: self.engine.store().list().map(|l| l.len()).unwrap_or(0),
            sharing_paused: self.swarm.is_some() && !self.sharing(),
        }
    }
}
