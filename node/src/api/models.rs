//! `GET /v1/models` and `GET /v1/models/{id}`: every model in the catalog,
//! loaded or not (a model loads on its first request), and every model the
//! swarm's sharing peers hold; `rbee.nodes` says where each one is.

use std::collections::HashSet;

use axum::Json;
use axum::extract::{Path, State};
use rbee_engine::store::Entry;

use super::AppState;
use super::error::ApiError;
use super::openai::{ModelInfo, ModelList, ModelLocation, ModelObject};

fn object(e: Entry, loaded: &HashSet<String>) -> ModelObject {
    ModelObject {
        id: e.id.clone(),
        object: "model",
        created: e.added_at,
        owned_by: "rbee",
        rbee: ModelInfo {
            loaded: loaded.contains(&e.id),
            architecture: e.architecture,
            quantization: e.quantization,
            size_bytes: e.size,
            context_length: e.context_length,
            nodes: Vec::new(),
        },
    }
}

/// Adds where each model is in the swarm, and the models only peers have.
fn with_swarm(s: &AppState, mut models: Vec<ModelObject>, loaded: &HashSet<String>) -> Vec<ModelObject> {
    let Some(client) = &s.swarm else {
        for m in &mut models {
            m.rbee.nodes.push(ModelLocation { node_id: String::new(), hostname: String::new(), local: true, loaded: m.rbee.loaded });
        }
        return models;
    };
    for p in client.peers().iter().filter(|p| p.up && (p.local || p.record.share)) {
        for d in &p.record.models_on_disk {
            let location = ModelLocation {
                node_id: p.node_id.clone(),
                hostname: p.record.hostname.clone(),
                local: p.local,
                loaded: if p.local { loaded.contains(&d.id) } else { p.record.models_loaded.iter().any(|l| l.id == d.id) },
            };
            match models.iter_mut().find(|m| m.id == d.id) {
                Some(m) => m.rbee.nodes.push(location),
                // This node's catalog is the truth about itself; the record may lag.
                None if p.local => {}
                None => models.push(ModelObject {
                    id: d.id.clone(),
                    object: "model",
                    created: 0,
                    owned_by: "rbee",
                    rbee: ModelInfo {
                        architecture: d.architecture.clone(),
                        quantization: d.quantization.clone(),
                        size_bytes: d.size_bytes,
                        context_length: 0,
                        loaded: false,
                        nodes: vec![location],
                    },
                }),
            }
        }
    }
    models
}

fn loaded(s: &AppState) -> HashSet<String> {
    s.engine.loaded().into_iter().map(|m| m.id).collect()
}

pub async fn list(State(s): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let entries = s.engine.store().list().map_err(|e| ApiError::internal(&e))?;
    let loaded = loaded(&s);
    let local = entries.into_iter().map(|e| object(e, &loaded)).collect();
    Ok(Json(ModelList { object: "list", data: with_swarm(&s, local, &loaded) }))
}

pub async fn get(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<ModelObject>, ApiError> {
    let loaded = loaded(&s);
    let all = match s.engine.store().get(&id) {
        Ok(entry) => with_swarm(&s, vec![object(entry, &loaded)], &loaded),
        Err(_) => with_swarm(&s, Vec::new(), &loaded),
    };
    all.into_iter().find(|m| m.id == id || (m.rbee.nodes.iter().any(|n| n.local) && m.id.starts_with(&id))).map(Json).ok_or_else(|| ApiError::model_not_found(&id))
}
