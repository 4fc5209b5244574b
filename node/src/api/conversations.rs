//! `/api/conversations`: the UI's chats, kept by the node (see
//! [`crate::conversations`]). Errors use the same OpenAI-shaped object as
//! the rest of the API.
//!
//! - `GET /api/conversations[?q=TEXT]` — newest first; `q` searches titles
//!   and message text
//! - `POST /api/conversations` `{title?, model?}` — start one
//! - `GET /api/conversations/{id}` — one, with its messages
//! - `PATCH /api/conversations/{id}` `{title?, model?}` — rename, or record the model
//! - `DELETE /api/conversations/{id}`
//! - `POST /api/conversations/{id}/messages` `{role, content, model?, node_id?, tokens_per_sec?, note?}`
//! - `DELETE /api/conversations/{id}/messages/{message_id}` — that message
//!   and every later one (regenerate, edit and resend)

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::JsonBody;
use super::error::ApiError;
use crate::conversations::{Error, NewMessage, SettingsChange};
use crate::service::Service;

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(_) | Error::NoMessage(..) => ApiError::not_found(e.to_string()),
            Error::Invalid(param, m) => ApiError::invalid(param, m),
            Error::Sql(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull => {
                super::error::from_io(&std::io::Error::from(std::io::ErrorKind::StorageFull), "saving the conversation")
            }
            Error::Sql(e) => ApiError::internal(&e),
            Error::Damaged(m) => ApiError::internal(&m),
            Error::Io(e) => super::error::from_io(&e, "saving the conversation"),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Search {
    q: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Fields {
    title: Option<String>,
    model: Option<String>,
    /// Present and `null`: cleared; absent: unchanged.
    #[serde(default, deserialize_with = "present")]
    instructions: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    temperature: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    max_tokens: Option<Option<u32>>,
}

/// A field that is present (`null` included) is `Some`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

pub async fn list(State(s): State<Service>, Query(q): Query<Search>) -> Result<impl IntoResponse, ApiError> {
    let data = s.conversations.list(q.q.as_deref())?;
    Ok(Json(json!({ "object": "list", "data": data })))
}

pub async fn create(State(s): State<Service>, body: Option<JsonBody<Fields>>) -> Result<impl IntoResponse, ApiError> {
    let f = body.map(|b| b.0).unwrap_or_default();
    let c = s.conversations.create(f.title.as_deref().unwrap_or(""), f.model.as_deref().unwrap_or(""))?;
    Ok((StatusCode::CREATED, Json(c)))
}

pub async fn get(State(s): State<Service>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(s.conversations.get(&id)?))
}

pub async fn update(State(s): State<Service>, Path(id): Path<String>, JsonBody(f): JsonBody<Fields>) -> Result<impl IntoResponse, ApiError> {
    let settings = SettingsChange { instructions: f.instructions, temperature: f.temperature, max_tokens: f.max_tokens };
    Ok(Json(s.conversations.update(&id, f.title.as_deref(), f.model.as_deref(), &settings)?))
}

pub async fn delete(State(s): State<Service>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    s.conversations.delete(&id)?;
    Ok(Json(json!({ "id": id, "object": "conversation", "deleted": true })))
}

pub async fn append(State(s): State<Service>, Path(id): Path<String>, JsonBody(m): JsonBody<NewMessage>) -> Result<impl IntoResponse, ApiError> {
    Ok((StatusCode::CREATED, Json(s.conversations.append(&id, &m)?)))
}

pub async fn truncate(State(s): State<Service>, Path((id, from)): Path<(String, i64)>) -> Result<impl IntoResponse, ApiError> {
    let removed = s.conversations.truncate(&id, from)?;
    Ok(Json(json!({ "id": id, "removed": removed })))
}
