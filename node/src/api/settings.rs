//! `/api/settings`: the UI's settings page, over [`crate::settings`]. Only
//! callers on this machine may read or change them (they include the API
//! keys and the swarm's join code).
//!
//! - `GET /api/settings` — what runs now, what the config file says, and
//!   whether a restart is needed for the file to take effect
//! - `PATCH /api/settings` `{listen?, api_keys?, share?, swarm_key?}` —
//!   writes the config file; `share` also applies at once, the others at the
//!   next start; `swarm_key: null` leaves the swarm
//! - `POST /api/settings/new-swarm` — a new swarm key, saved as this node's
//! - `POST /api/restart` — restarts the node where its host can (the app)

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde_json::{Value, json};

use super::JsonBody;
use super::error::ApiError;
use crate::service::Service;
use crate::settings::{self, Change, Error, View};

/// A request from this machine; anything else is refused with 403.
#[derive(Debug)]
pub struct LocalCaller;

impl<S: Send + Sync> FromRequestParts<S> for LocalCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if super::caller(&parts.extensions).is_some_and(|a: SocketAddr| a.ip().to_canonical().is_loopback()) {
            Ok(Self)
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "permission_error", "settings can only be read and changed on the machine itself"))
        }
    }
}

fn api_error(e: Error) -> ApiError {
    match e {
        Error::Invalid { field, message } => ApiError::invalid(field, message),
        Error::Unusable(m) => ApiError::bad_body(m),
        Error::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "invalid_request_error", m),
        Error::Io { context, source } => super::error::from_io(&source, context),
    }
}

pub async fn get(_: LocalCaller, State(s): State<Service>) -> Result<Json<View>, ApiError> {
    settings::view(&s).map(Json).map_err(api_error)
}

pub async fn update(_: LocalCaller, State(s): State<Service>, JsonBody(c): JsonBody<Change>) -> Result<Json<View>, ApiError> {
    settings::change(&s, c).map(Json).map_err(api_error)
}

pub async fn new_swarm(_: LocalCaller, State(s): State<Service>) -> Result<Json<View>, ApiError> {
    settings::new_swarm(&s).map(Json).map_err(api_error)
}

pub async fn restart(_: LocalCaller, State(s): State<Service>) -> Result<(StatusCode, Json<Value>), ApiError> {
    if s.request_restart() {
        Ok((StatusCode::ACCEPTED, Json(json!({ "restarting": true }))))
    } else {
        Err(ApiError::new(StatusCode::CONFLICT, "invalid_request_error", "this node runs as `rbee serve`: restart that command to apply the new settings"))
    }
}
