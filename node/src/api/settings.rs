//! `/api/settings`: the UI's settings page. Only callers on this machine may
//! read or change them (they include the API keys and the swarm's join code).
//!
//! - `GET /api/settings` — what runs now, what the config file says, and
//!   whether a restart is needed for the file to take effect
//! - `PATCH /api/settings` `{listen?, api_keys?, share?, swarm_key?}` —
//!   writes the config file; `share` also applies at once, the others at the
//!   next start; `swarm_key: null` leaves the swarm
//! - `POST /api/settings/new-swarm` — a new swarm key, saved as this node's
//! - `POST /api/restart` — restarts the node where its host can (the app)

use std::net::SocketAddr;
use std::path::Path;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::JsonBody;
use super::error::ApiError;
use crate::config::{Config, ExposedWithoutKeys, Overrides};
use crate::service::Service;

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

pub async fn get(_: LocalCaller, State(s): State<Service>) -> Result<Json<View>, ApiError> {
    view(&s).map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    listen: Option<String>,
    api_keys: Option<Vec<String>>,
    share: Option<bool>,
    /// `Some(None)` is an explicit `null`: leave the swarm.
    #[serde(default, deserialize_with = "explicit_null")]
    swarm_key: Option<Option<String>>,
}

fn explicit_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

pub async fn update(_: LocalCaller, State(s): State<Service>, JsonBody(c): JsonBody<Change>) -> Result<Json<View>, ApiError> {
    let file = config_file(&s)?;
    let mut table = read_table(file)?;
    if let Some(listen) = c.listen {
        let listen = listen.trim().to_string();
        listen.parse::<SocketAddr>().map_err(|_| ApiError::invalid("listen", format!("{listen:?} is not IP:PORT, e.g. 127.0.0.1:7833")))?;
        table.insert("listen".into(), listen.into());
    }
    if let Some(keys) = c.api_keys {
        let keys: Vec<String> = keys.into_iter().map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
        if let Some(bad) = keys.iter().find(|k| k.len() < 8 || k.chars().any(char::is_whitespace)) {
            return Err(ApiError::invalid("api_keys", format!("{bad:?} is too weak a key: use at least 8 characters and no spaces")));
        }
        table.insert("api_keys".into(), keys.into());
    }
    if let Some(share) = c.share {
        table.insert("share".into(), share.into());
    }
    match c.swarm_key {
        Some(Some(code)) => {
            let code = code.trim().to_string();
            rbee_swarm::SwarmKey::from_join_code(&code).map_err(|e| ApiError::invalid("swarm_key", format!("{e:#}")))?;
            table.insert("swarm_key".into(), code.into());
        }
        Some(None) => {
            table.remove("swarm_key");
        }
        None => {}
    }
    // The file alone must make a node that starts (e.g. an address beyond
    // loopback needs keys). The address and the swarm key were checked above.
    let layer: Overrides = table.clone().try_into().map_err(|e| ApiError::bad_body(format!("the config file would not parse: {e}")))?;
    if let Err(e) = Config::resolve(layer) {
        return Err(match e.downcast_ref::<ExposedWithoutKeys>() {
            Some(e) => ApiError::invalid("api_keys", e.to_string()),
            None => ApiError::bad_body(format!("with this change {} would not start a node: {e:#}", file.display())),
        });
    }
    write_table(file, &table)?;
    if let Some(share) = c.share {
        s.set_sharing(share);
    }
    tracing::info!(file = %file.display(), "settings saved");
    view(&s).map(Json)
}

pub async fn new_swarm(_: LocalCaller, State(s): State<Service>) -> Result<Json<View>, ApiError> {
    let file = config_file(&s)?;
    let mut table = read_table(file)?;
    let key = rbee_swarm::SwarmKey::generate();
    table.insert("swarm_key".into(), key.join_code().into());
    write_table(file, &table)?;
    tracing::info!(swarm_key = %key.fingerprint(), "new swarm key saved; it takes effect at the next start");
    view(&s).map(Json)
}

pub async fn restart(_: LocalCaller, State(s): State<Service>) -> Result<(StatusCode, Json<Value>), ApiError> {
    if s.request_restart() {
        Ok((StatusCode::ACCEPTED, Json(json!({ "restarting": true }))))
    } else {
        Err(ApiError::new(StatusCode::CONFLICT, "invalid_request_error", "this node runs as `rbee serve`: restart that command to apply the new settings"))
    }
}

fn config_file(s: &Service) -> Result<&Path, ApiError> {
    s.config.config_file.as_deref().ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "invalid_request_error", "this node was started without a config file"))
}

fn read_table(file: &Path) -> Result<toml::Table, ApiError> {
    match std::fs::read_to_string(file) {
        Ok(text) => text.parse().map_err(|e| {
            ApiError::new(StatusCode::CONFLICT, "invalid_request_error", format!("{} does not parse ({e}); fix or remove it first", file.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml::Table::new()),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

/// Writes `table` to `file` whole (a crash never leaves half a config) and
/// readable by its owner only: it holds the API keys and the swarm key.
fn write_table(file: &Path, table: &toml::Table) -> Result<(), ApiError> {
    let text = toml::to_string(table).map_err(|e| ApiError::internal(&e))?;
    rbee_swarm::key::write_private(file, text.as_bytes()).map_err(|e| super::error::from_io(&e, "writing the config file"))
}

/// `GET /api/settings`'s body, as `ui/src/api.ts` declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub config_file: Option<String>,
    /// What runs now.
    pub listen: String,
    pub api_keys: Vec<String>,
    pub share: bool,
    pub swarm: SwarmSettings,
    /// What the config file says (takes effect at the next start).
    pub saved: Saved,
    /// The settings whose saved value differs from the running one.
    pub restart_required: Vec<String>,
    pub can_restart: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwarmSettings {
    pub enabled: bool,
    pub fingerprint: Option<String>,
    pub join_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub listen: Option<String>,
    pub api_keys: Option<Vec<String>>,
    pub swarm_fingerprint: Option<String>,
    pub swarm_join_code: Option<String>,
}

/// What runs now and what the file will change at the next start.
fn view(s: &Service) -> Result<View, ApiError> {
    let c = &s.config;
    let saved: Overrides = match &c.config_file {
        Some(f) => Overrides::from_file(f).map_err(|e| ApiError::new(StatusCode::CONFLICT, "invalid_request_error", format!("{e:#}")))?,
        None => Overrides::default(),
    };
    let running_key = c.swarm_key.map(|k| k.join_code());
    let mut pending = Vec::new();
    if saved.listen.as_deref().and_then(|l| l.parse::<SocketAddr>().ok()).is_some_and(|l| l != c.listen) {
        pending.push("listen".to_string());
    }
    if saved.api_keys.as_ref().is_some_and(|k| k.iter().filter(|k| !k.is_empty()).ne(c.api_keys.iter())) {
        pending.push("api_keys".to_string());
    }
    if saved.swarm_key != running_key && (saved.swarm_key.is_some() || running_key.is_some()) {
        pending.push("swarm_key".to_string());
    }
    let saved_swarm = saved.swarm_key.as_deref().and_then(|k| rbee_swarm::SwarmKey::from_join_code(k).ok());
    Ok(View {
        config_file: c.config_file.as_ref().map(|f| f.display().to_string()),
        listen: c.listen.to_string(),
        api_keys: c.api_keys.clone(),
        share: s.sharing(),
        swarm: SwarmSettings { enabled: c.swarm_key.is_some(), fingerprint: c.swarm_key.map(|k| k.fingerprint()), join_code: running_key },
        saved: Saved {
            listen: saved.listen,
            api_keys: saved.api_keys,
            swarm_fingerprint: saved_swarm.map(|k| k.fingerprint()),
            swarm_join_code: saved.swarm_key,
        },
        restart_required: pending,
        can_restart: s.can_restart(),
    })
}
