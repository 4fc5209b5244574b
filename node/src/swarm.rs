//! The node's part in the swarm: starting it from the config, and keeping
//! this node's record (models, load, speed, memory) current in it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use rbee_swarm::NodeRecord;
use rbee_swarm::record::{LoadedModel, ModelOnDisk};

use crate::api::AppState;
use crate::config::Config;

/// How often this node's record is rebuilt (the swarm gossips it when it changed).
const REFRESH: Duration = Duration::from_secs(1);

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

/// Keeps this node's record in the swarm current until the swarm stops.
pub fn publish(state: AppState, client: rbee_swarm::Client, api: SocketAddr) {
    tokio::spawn(async move {
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
        loop {
            tick.tick().await;
            let record = record(&state, &hostname, &devices, ram_total, api);
            if client.update(record).await.is_err() {
                return;
            }
        }
    });
}

fn record(state: &AppState, hostname: &str, devices: &[String], ram_total: u64, api: SocketAddr) -> NodeRecord {
    let models_on_disk = state
        .engine
        .store()
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|e| ModelOnDisk { id: e.id, architecture: e.architecture, quantization: e.quantization, size_bytes: e.size })
        .collect();
    let models_loaded = state
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
        .collect();
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

/// `GET /api/swarm`'s body.
pub fn view(state: &AppState) -> serde_json::Value {
    let Some(client) = &state.swarm else {
        return serde_json::json!({
            "enabled": false,
            "message": "running alone: no swarm key (create one with `rbee swarm init`, then start with --swarm-key CODE)",
            "peers": [],
        });
    };
    let peers: Vec<serde_json::Value> = client
        .peers()
        .iter()
        .map(|p| {
            let mut v = serde_json::to_value(p).unwrap_or_default();
            v["rtt_ms"] = client.rtt(&p.node_id).map_or(serde_json::Value::Null, |d| serde_json::json!(d.as_secs_f64() * 1e3));
            v
        })
        .collect();
    serde_json::json!({
        "enabled": true,
        "node_id": client.peer_id.to_string(),
        "swarm_key_fingerprint": client.fingerprint,
        "share": state.sharing(),
        "rejected_messages": client.stats.rejected.load(std::sync::atomic::Ordering::Relaxed),
        "peers": peers,
    })
}
