//! The node as a service, below its HTTP API: what `rbee serve`, the app
//! and the API's handlers share.

use std::sync::Arc;

use std::collections::HashSet;

use rbee_engine::Engine;
use rbee_engine::store::Entry;
use serde::Serialize;
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

/// A model this node can run, or route to a peer that has it.
#[derive(Debug, Clone)]
pub struct Model {
    pub id: String,
    /// When it was added here (seconds since the epoch; 0 when only peers have it).
    pub created: u64,
    pub info: ModelInfo,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub architecture: String,
    pub quantization: String,
    pub size_bytes: u64,
    /// 0 when only peers have the model.
    pub context_length: u64,
    /// Loaded on this node.
    pub loaded: bool,
    /// Every node that has it (this one included), from the swarm registry.
    pub nodes: Vec<ModelLocation>,
    /// Where this node's copy came from, in words ("unsloth/gemma-3-270m-it-GGUF,
    /// copied from gpu-box over the LAN at 410 MB/s"); absent for a model
    /// only peers have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelLocation {
    pub node_id: Option<rbee_swarm::NodeId>,
    pub hostname: String,
    pub local: bool,
    pub loaded: bool,
}

fn model(e: Entry, loaded: &HashSet<String>) -> Model {
    Model {
        id: e.id.clone(),
        created: e.added_at,
        info: ModelInfo {
            loaded: loaded.contains(&e.id),
            architecture: e.architecture,
            quantization: e.quantization,
            size_bytes: e.size,
            context_length: e.context_length,
            nodes: Vec::new(),
            source: Some(source_in_words(&e.source)),
        },
    }
}

/// Where a model came from, as the Models page says it.
pub fn source_in_words(source: &rbee_engine::store::Source) -> String {
    use rbee_engine::store::Source;
    match source {
        Source::Import { .. } => "imported from a file".into(),
        Source::HuggingFace { repo, copied: None, .. } => format!("{repo}, from Hugging Face"),
        Source::HuggingFace { repo, copied: Some(c), .. } => {
            #[allow(clippy::cast_precision_loss)]
            let mb_s = c.bytes_per_s as f64 / 1e6;
            format!("{repo}, copied from {} over the LAN at {mb_s:.0} MB/s", c.from.join(" and "))
        }
    }
}

/// Adds where each model is in the swarm, and the models only peers have.
fn with_swarm(s: &Service, mut models: Vec<Model>) -> Vec<Model> {
    let Some(client) = &s.swarm else {
        for m in &mut models {
            m.info.nodes.push(ModelLocation { node_id: None, hostname: String::new(), local: true, loaded: m.info.loaded });
        }
        return models;
    };
    // This node's catalog is the truth about itself (its record lags by up
    // to a second: a model just pulled is here already).
    let peers = client.peers();
    let me = peers.iter().find(|p| p.local);
    for m in &mut models {
        m.info.nodes.push(ModelLocation {
            node_id: Some(me.map_or_else(|| rbee_swarm::NodeId::from(client.peer_id), |p| p.node_id.clone())),
            hostname: me.map(|p| p.record.hostname.clone()).unwrap_or_default(),
            local: true,
            loaded: m.info.loaded,
        });
    }
    for p in peers.iter().filter(|p| p.up && !p.local && p.record.share) {
        for d in &p.record.models_on_disk {
            let location = ModelLocation {
                node_id: Some(p.node_id.clone()),
                hostname: p.record.hostname.clone(),
                local: false,
                loaded: p.record.models_loaded.iter().any(|l| l.id == d.id),
            };
            match models.iter_mut().find(|m| m.id == d.id) {
                Some(m) => m.info.nodes.push(location),
                None => models.push(Model {
                    id: d.id.clone(),
                    created: 0,
                    info: ModelInfo {
                        architecture: d.architecture.clone(),
                        quantization: d.quantization.clone(),
                        size_bytes: d.size_bytes,
                        context_length: 0,
                        loaded: false,
                        nodes: vec![location],
                        source: None,
                    },
                }),
            }
        }
    }
    models
}

fn loaded(s: &Service) -> HashSet<String> {
    s.engine.loaded().into_iter().map(|m| m.id).collect()
}

impl Service {
    /// Every model in this node's catalog, loaded or not, and every model
    /// the swarm's sharing peers hold, with where each one is.
    ///
    /// # Errors
    /// When the catalog cannot be read.
    pub fn models(&self) -> rbee_engine::Result<Vec<Model>> {
        let loaded = loaded(self);
        let local = self.engine.store().list()?.into_iter().map(|e| model(e, &loaded)).collect();
        Ok(with_swarm(self, local))
    }

    /// The model `name` means: an exact id anywhere in the swarm, or a
    /// prefix of one of this node's.
    pub fn model(&self, name: &str) -> Option<Model> {
        let loaded = loaded(self);
        let local = self.engine.store().get(name).map(|e| vec![model(e, &loaded)]).unwrap_or_default();
        with_swarm(self, local).into_iter().find(|m| m.id == name || (m.info.nodes.iter().any(|n| n.local) && m.id.starts_with(name)))
    }

    /// Unloads one of this machine's models (an exact id: a prefix that
    /// happens to be unique must not delete) and deletes its file.
    ///
    /// # Errors
    /// [`rbee_engine::Error::ModelNotFound`], or I/O errors.
    pub async fn delete_model(&self, id: &str) -> rbee_engine::Result<rbee_engine::store::Entry> {
        let entry = self.engine.store().get(id).ok().filter(|e| e.id == id).ok_or_else(|| rbee_engine::Error::ModelNotFound(id.to_string()))?;
        self.engine.unload(&entry.id);
        let engine = self.engine.clone();
        let removed = tokio::task::spawn_blocking(move || engine.store().remove(&entry.id))
            .await
            .map_err(|e| rbee_engine::Error::Io { context: "deleting the model".into(), source: std::io::Error::other(e) })??;
        tracing::info!(model = %removed.id, "model deleted");
        Ok(removed)
    }

    /// Checks and copies the GGUF at `path` into the store (off the async threads).
    ///
    /// # Errors
    /// As [`rbee_engine::store::Store::import`].
    pub async fn import(&self, path: std::path::PathBuf) -> rbee_engine::Result<rbee_engine::store::Entry> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.store().import(&path, None))
            .await
            .map_err(|e| rbee_engine::Error::Io { context: "importing the model".into(), source: std::io::Error::other(e) })?
    }

    /// Starts pulling `repo`/`file` at `revision` from the configured hub
    /// in the background.
    ///
    /// # Errors
    /// [`rbee_engine::Error::InvalidName`] for names that are not plain
    /// path segments of the hub.
    pub fn pull(&self, repo: String, file: String, revision: String) -> rbee_engine::Result<crate::pulls::Pull> {
        rbee_engine::store::check_hub_names(&repo, &file, &revision)?;
        let swarm = self.swarm.clone().map(|c| (c, self.metrics.clone()));
        Ok(self.pulls.start(self.engine.clone(), swarm, self.config.hf_endpoint.clone(), repo, file, revision))
    }
}
