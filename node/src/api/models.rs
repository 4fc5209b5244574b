//! `GET /v1/models` and `GET /v1/models/{id}`: every model in the catalog,
//! loaded or not (a model loads on its first request).

use std::collections::HashSet;

use axum::Json;
use axum::extract::{Path, State};
use rbee_engine::store::Entry;

use super::AppState;
use super::error::ApiError;
use super::openai::{ModelInfo, ModelList, ModelObject};

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
        },
    }
}

fn loaded(s: &AppState) -> HashSet<String> {
    s.engine.loaded().into_iter().map(|m| m.id).collect()
}

pub async fn list(State(s): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let entries = s.engine.store().list().map_err(|e| ApiError::internal(&e))?;
    let loaded = loaded(&s);
    Ok(Json(ModelList { object: "list", data: entries.into_iter().map(|e| object(e, &loaded)).collect() }))
}

pub async fn get(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<ModelObject>, ApiError> {
    let entry = s.engine.store().get(&id).map_err(|e| ApiError::from_engine(&e, "model"))?;
    Ok(Json(object(entry, &loaded(&s))))
}
