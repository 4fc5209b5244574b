//! The node's part in the swarm: starting it from the config, and keeping
//! this node's record (models, load, speed, memory) current in it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use rbee_swarm::record::{LoadedModel, ModelOnDisk};
use rbee_swarm::{NodeId, NodeRecord, PeerView};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::service::Service;

/// How often this node's record is rebuilt (the swarm gossips it when it changed).
const REFRESH: Duration = Duration::from_secs(1);

/// A record whose only change is load (busy and queued slots, free memory)
/// goes out at most this often: routing asks the candidates it may use for
/// their load at the time (`dispatch::LOAD_PROTOCOL`), so the records' load
/// is only what the Swarm page shows.
const LOAD_REPUBLISH: Duration = Duration::from_secs(5);

/// Starts the swarm when a key is configured; `None` (and a log line saying
/// so) when the node runs alone.
///
/// # Errors
/// When the identity key cannot be read or libp2p cannot listen.
pub fn start(cfg: &Config) -> Result<Option<rbee_swarm::Client>> {
    let Some(key) = cfg.swarm_key else {
        tracing::info!("no swarm key: running alone (create one with `rbee swarm init`, then `rbee serve --swarm-key CODE`)");
        return Ok(None);
    };
    let identity = rbee_swarm::key::load_or_create_identity(&cfg.data_dir.join("swarm").join("identity.key"))?;
    let mut sc = rbee_swarm::Config::new(identity, key);
    sc.listen = vec![cfg.swarm_listen.clone()];
    sc.bootstrap.clone_from(&cfg.peers);
    sc.mdns = cfg.mdns;
    let client = rbee_swarm::start(sc).context("starting the swarm")?;
    tracing::info!(node_id = %client.peer_id, swarm_key = %client.fingerprint, share = cfg.share, "joined the swarm");
    Ok(Some(client))
}

/// Keeps this node's record in the swarm current until the node stops.
pub fn publish(state: Service, client: rbee_swarm::Client, api: SocketAddr) {
    let stop = state.background.clone();
    state.tasks.clone().spawn(async move {
        let hw = tokio::task::spawn_blocking(rbee_engine::hardware::probe).await.ok();
        let hostname = sysinfo::System::host_name().unwrap_or_else(|_| "unknown".into());
        let devices: Vec<String> = hw
            .as_ref()
            .map(|h| {
                let mut d = h.candle_devices.clone();
                d.extend(h.adapters.iter().map(|a| format!("{} ({}, {})", a.name, a.backend, a.device_type)));
                d
            })
            .unwrap_or_else(|| vec!["cpu".into()]);
        let ram_total = hw.as_ref().map_or(0, |h| h.ram_total);
        let mut tick = tokio::time::interval(REFRESH);
        let mut sent: Option<(NodeRecord, std::time::Instant)> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let record = record(&state, &hostname, &devices, ram_total, api);
            let due = match &sent {
                None => true,
                Some((last, at)) => !without_load(last).content_eq(&without_load(&record)) || (!last.content_eq(&record) && at.elapsed() >= LOAD_REPUBLISH),
            };
            if !due {
                continue;
            }
            if client.update(record.clone()).await.is_err() {
                return;
            }
            sent = Some((record, std::time::Instant::now()));
        }
    });
}

/// `r` with its load left out: what changes with every request.
fn without_load(r: &NodeRecord) -> NodeRecord {
    let mut r = r.clone();
    r.ram_free_bytes = 0;
    for m in &mut r.models_loaded {
        m.busy = 0;
        m.queued = 0;
    }
    r
}

/// The models this node has in memory now, with their slots' load.
pub fn loaded_models(state: &Service) -> Vec<LoadedModel> {
    state
        .engine
        .loaded()
        .into_iter()
        .map(|m| LoadedModel {
            decode_tps: state.decode_speed(&m.id).unwrap_or(0.0),
            id: m.id,
            slots: u32::try_from(m.slots).unwrap_or(u32::MAX),
            busy: u32::try_from(m.busy).unwrap_or(u32::MAX),
            queued: u32::try_from(m.queued).unwrap_or(u32::MAX),
        })
        .collect()
}

fn record(state: &Service, hostname: &str, devices: &[String], ram_total: u64, api: SocketAddr) -> NodeRecord {
    let models_on_disk = state
        .engine
        .store()
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let (repo, file) = match e.source {
                rbee_engine::store::Source::HuggingFace { repo, file, .. } => (repo, file),
                rbee_engine::store::Source::Import { .. } => (String::new(), String::new()),
            };
            ModelOnDisk { id: e.id, architecture: e.architecture, quantization: e.quantization, size_bytes: e.size, sha256: e.sha256, repo, file }
        })
        .collect();
    let models_loaded = loaded_models(state);
    // Rounded to 64 MiB so that small fluctuations do not count as a change.
    let free = rbee_engine::hardware::available_memory();
    NodeRecord {
        hostname: hostname.to_string(),
        api: format!("http://{api}"),
        api_version: env!("CARGO_PKG_VERSION").to_string(),
        devices: devices.to_vec(),
        ram_total_bytes: ram_total,
        ram_free_bytes: free & !((64 << 20) - 1),
        models_on_disk,
        models_loaded,
        share: state.sharing(),
        ..NodeRecord::default()
    }
}

/// `GET /api/swarm`'s body (and each event of `/api/swarm/events`), as
/// `rbee peers` reads it back and `ui/src/api.ts` declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// Whether this node is in a swarm (it has a swarm key).
    pub enabled: bool,
    /// Why not, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm_key_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_messages: Option<u64>,
    /// Every node in the registry, this one first.
    pub peers: Vec<Peer>,
}

/// One node as the registry holds it, with the round trip measured to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    #[serde(flatten)]
    pub peer: PeerView,
    pub rtt_ms: Option<f64>,
}

/// `GET /api/swarm`'s body.
pub fn view(state: &Service) -> View {
    let Some(client) = &state.swarm else {
        return View {
            enabled: false,
            message: Some("running alone: no swarm key (create one with `rbee swarm init`, then start with --swarm-key CODE)".into()),
            node_id: None,
            swarm_key_fingerprint: None,
            share: None,
            rejected_messages: None,
            peers: Vec::new(),
        };
    };
    let peers = client.peers().iter().map(|p| Peer { rtt_ms: client.rtt(&p.node_id).map(|d| d.as_secs_f64() * 1e3), peer: p.clone() }).collect();
    View {
        enabled: true,
        message: None,
        node_id: Some(NodeId::from(client.peer_id)),
        swarm_key_fingerprint: Some(client.fingerprint.clone()),
        share: Some(state.sharing()),
        rejected_messages: Some(client.stats.rejected.load(std::sync::atomic::Ordering::Relaxed)),
        peers,
    }
}
