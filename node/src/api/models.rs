//! `GET /v1/models` and `GET /v1/models/{id}`: every model in the catalog,
//! loaded or not (a model loads on its first request), and every model the
//! swarm's sharing peers hold; `rbee.nodes` says where each one is.
//! `DELETE /v1/models/{id}` deletes one of this machine's models.
//!
//! The UI's model management, under `/api/models`:
//! - `POST /api/models/pull` `{repo, file, revision?}` — download in the background
//! - `GET /api/models/pulls` — each download's progress
//! - `DELETE /api/models/pulls/{id}` — cancel one (or dismiss a finished one)
//! - `POST /api/models/import?filename=NAME` with the file as the body
//! - `GET /api/models/recommended` — the short list for people who do not
//!   know Hugging Face, with what fits this machine

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use rbee_engine::store::Entry;
use serde::Deserialize;

use super::JsonBody;
use super::error::ApiError;
use super::openai::{ModelList, ModelObject};
use crate::pulls::Pull;
use crate::service::{Model, Service};

/// OpenAI's model object around what the service knows of a model.
fn object(m: Model) -> ModelObject {
    ModelObject { id: m.id, object: "model", created: m.created, owned_by: "rbee", rbee: m.info }
}

pub async fn list(State(s): State<Service>) -> Result<Json<ModelList>, ApiError> {
    let models = s.models().map_err(|e| ApiError::internal(&e))?;
    Ok(Json(ModelList { object: "list", data: models.into_iter().map(object).collect() }))
}

pub async fn get(State(s): State<Service>, Path(id): Path<String>) -> Result<Json<ModelObject>, ApiError> {
    s.model(&id).map(|m| Json(object(m))).ok_or_else(|| ApiError::model_not_found(&id))
}

/// `DELETE /v1/models/{id}`: unloads the model and deletes its file and
/// catalog entry (OpenAI's shape: `{id, object: "model", deleted: true}`).
pub async fn delete(State(s): State<Service>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let removed = s.delete_model(&id).await.map_err(|e| ApiError::from_engine(&e, "model"))?;
    Ok(Json(serde_json::json!({ "id": removed.id, "object": "model", "deleted": true })))
}

#[derive(Debug, Deserialize)]
pub struct PullRequest {
    repo: String,
    file: String,
    #[serde(default)]
    revision: Option<String>,
}

/// `POST /api/models/pull` `{repo, file, revision?}`: starts a download from
/// the configured Hugging Face endpoint (202 with the pull to watch).
pub async fn pull(State(s): State<Service>, JsonBody(r): JsonBody<PullRequest>) -> Result<(StatusCode, Json<Pull>), ApiError> {
    let repo = r.repo.trim().to_string();
    let file = r.file.trim().to_string();
    let revision = r.revision.map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).unwrap_or_else(|| "main".into());
    let p = s.pull(repo, file, revision).map_err(|e| ApiError::from_engine(&e, "repo"))?;
    Ok((StatusCode::ACCEPTED, Json(p)))
}

/// `GET /api/models/recommended`: [`crate::recommended::MODELS`], each with
/// the memory it needs, whether that fits this machine's RAM, and its id
/// here when this machine has it.
pub async fn recommended(State(s): State<Service>) -> Result<Json<serde_json::Value>, ApiError> {
    let entries = s.engine.store().list().map_err(|e| ApiError::internal(&e))?;
    let have: Vec<(String, Option<(String, String)>)> = entries
        .into_iter()
        .map(|e| {
            let source = match e.source {
                rbee_engine::store::Source::HuggingFace { repo, file, .. } => Some((repo, file)),
                rbee_engine::store::Source::Import { .. } => None,
            };
            (e.id, source)
        })
        .collect();
    let memory = rbee_engine::hardware::total_memory();
    Ok(Json(serde_json::json!({ "object": "list", "memory_bytes": memory, "data": crate::recommended::offers(memory, &have) })))
}

/// `GET /api/models/pulls`: every pull since the node started, with progress.
pub async fn pulls(State(s): State<Service>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "object": "list", "data": s.pulls.list() }))
}

/// `DELETE /api/models/pulls/{id}`: cancels a running pull, or dismisses a finished one.
pub async fn cancel_pull(State(s): State<Service>, Path(id): Path<String>) -> Result<Json<Pull>, ApiError> {
    let not_found = || ApiError::not_found(format!("no pull {id}"));
    let n: u64 = id.parse().map_err(|_| not_found())?;
    s.pulls.cancel(n).map(Json).ok_or_else(not_found)
}

#[derive(Debug, Deserialize)]
pub struct ImportQuery {
    filename: Option<String>,
}

/// `POST /api/models/import?filename=NAME.gguf` with the file as the body:
/// how the UI imports a GGUF from the user's disk (a browser gives a page
/// the file's bytes, never its path). The upload is kept in the data dir's
/// `models/` until the store has checked and copied it.
pub async fn import(
    State(s): State<Service>,
    Query(q): Query<ImportQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ModelObject>), ApiError> {
    let name = q.filename.as_deref().map(|f| f.rsplit(['/', '\\']).next().unwrap_or("").trim().to_string()).unwrap_or_default();
    if name.is_empty() || name.starts_with('.') {
        return Err(ApiError::invalid("filename", "say the file's name: POST /api/models/import?filename=NAME.gguf with the file as the body"));
    }
    if name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("filename", format!("the file name must be at most {MAX_NAME} bytes with no control characters")));
    }
    let limit = s.config.max_upload;
    let declared = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    // Beside the store's files (the same disk), removed when dropped; one
    // left by a crash is swept at the next start.
    let dir = tempfile::Builder::new()
        .prefix(rbee_engine::store::UPLOAD_PREFIX)
        .tempdir_in(s.config.data_dir.join("models"))
        .map_err(|e| super::error::from_io(&e, "receiving the upload"))?;
    let entry = receive_and_import(&s, dir.path(), &name, body, limit).await?;
    tracing::info!(model = %entry.id, file = %name, "model imported");
    let model = s.model(&entry.id).ok_or_else(|| ApiError::internal(&"an imported model is not in the catalog"))?;
    Ok((StatusCode::CREATED, Json(object(model))))
}

/// Longest file name accepted for an upload, in bytes (file systems allow 255).
const MAX_NAME: usize = 200;

/// How long an upload may send nothing before it is given up.
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

fn too_large(limit: u64) -> ApiError {
    let mut e = ApiError::invalid("file", format!("the file is larger than this node accepts ({} MiB; max_upload_mib in the config file)", limit >> 20));
    e.status = StatusCode::PAYLOAD_TOO_LARGE;
    e
}

async fn receive_and_import(s: &Service, dir: &std::path::Path, name: &str, body: Body, limit: u64) -> Result<Entry, ApiError> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let path = dir.join(name);
    let file = std::fs::File::create(&path).map_err(|e| super::error::from_io(&e, "receiving the upload"))?;
    // Locked while this upload runs: what a start sweeps is what nobody holds.
    file.lock().map_err(|e| super::error::from_io(&e, "receiving the upload"))?;
    let mut f = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    loop {
        let chunk = match tokio::time::timeout(UPLOAD_IDLE, stream.next()).await {
            Ok(Some(c)) => c.map_err(|e| ApiError::bad_body(format!("the upload broke off: {e}")))?,
            Ok(None) => break,
            Err(_) => {
                let mut e = ApiError::bad_body(format!("the upload sent nothing for {} s; send the file again", UPLOAD_IDLE.as_secs()));
                e.status = StatusCode::REQUEST_TIMEOUT;
                return Err(e);
            }
        };
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large(limit));
        }
        if let Err(e) = f.write_all(&chunk).await {
            // Read (and drop) the rest first: a client still sending when
            // the answer comes and the connection closes never sees the
            // answer, only a broken pipe.
            let err = super::error::from_io(&e, "receiving the upload");
            let mut rest = size;
            while let Ok(Some(Ok(chunk))) = tokio::time::timeout(UPLOAD_IDLE, stream.next()).await {
                rest += chunk.len() as u64;
                if rest > limit {
                    break;
                }
            }
            return Err(err);
        }
    }
    f.flush().await.map_err(|e| super::error::from_io(&e, "receiving the upload"))?;
    if size == 0 {
        return Err(ApiError::bad_body("the upload is empty; send the GGUF file as the request body"));
    }
    let imported = s.import(path).await;
    // The lock is released (and the directory removed) only after the store
    // has its copy.
    drop(f);
    imported.map_err(|e| match e {
        // The upload is what is wrong, not the node.
        rbee_engine::Error::InvalidModel { reason, .. } => ApiError::invalid("file", format!("{name} is not a usable GGUF model: {reason}")),
        rbee_engine::Error::UnsupportedArchitecture(_) => ApiError::invalid("file", format!("{name}: {e}")),
        e => ApiError::from_engine(&e, "file"),
    })
}

#[derive(Debug, Deserialize)]
pub struct HubQuery {
    q: Option<String>,
    repo: Option<String>,
}

fn upstream(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "api_error", message)
}

/// `GET /api/hub/search?q=TEXT`: GGUF repositories on the hub this node
/// pulls from, most downloaded first.
pub async fn hub_search(State(s): State<Service>, Query(q): Query<HubQuery>) -> Result<Json<serde_json::Value>, ApiError> {
    let text = q.q.unwrap_or_default();
    let text = text.trim();
    if text.is_empty() || text.chars().count() > 100 {
        return Err(ApiError::invalid("q", "search for 1 to 100 characters, e.g. \"qwen coder\""));
    }
    let data = crate::hub::search(&s.config.hf_endpoint, text).await.map_err(upstream)?;
    Ok(Json(serde_json::json!({ "object": "list", "data": data })))
}

/// `GET /api/hub/files?repo=OWNER/NAME`: the repository's GGUF files with
/// size, quantization, and whether each fits this machine or another live
/// one of the swarm.
pub async fn hub_files(State(s): State<Service>, Query(q): Query<HubQuery>) -> Result<Json<serde_json::Value>, ApiError> {
    let repo = q.repo.unwrap_or_default();
    if !crate::hub::valid_repo(&repo) {
        return Err(ApiError::invalid("repo", "a repository is OWNER/NAME, e.g. unsloth/gemma-3-270m-it-GGUF"));
    }
    let peers: Vec<(String, u64)> = s
        .swarm
        .as_ref()
        .map(|c| c.peers().iter().filter(|p| p.up && !p.local).map(|p| (p.record.hostname.clone(), p.record.ram_total_bytes)).collect())
        .unwrap_or_default();
    let memory = rbee_engine::hardware::total_memory();
    let data = crate::hub::files(&s.config.hf_endpoint, &repo, memory, &peers).await.map_err(upstream)?;
    Ok(Json(serde_json::json!({ "object": "list", "repo": repo, "memory_bytes": memory, "data": data })))
}
