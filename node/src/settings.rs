//! The node's settings as the UI's settings page changes them: what runs
//! now, what the config file says, and changes written to that file (checked
//! first: the file alone must start a node).

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ExposedWithoutKeys, Overrides};
use crate::service::Service;

/// Why a change was not saved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value that cannot be saved; `field` names it.
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    /// The change as a whole would leave a config file no node starts with.
    #[error("{0}")]
    Unusable(String),
    /// The node has no config file, or its file does not parse.
    #[error("{0}")]
    Conflict(String),
    /// Writing the file failed.
    #[error("{context}: {source}")]
    Io { context: &'static str, source: std::io::Error },
}

fn invalid(field: &'static str, message: String) -> Error {
    Error::Invalid { field, message }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub listen: Option<String>,
    pub api_keys: Option<Vec<String>>,
    pub share: Option<bool>,
    /// `Some(None)` is an explicit `null`: leave the swarm.
    #[serde(default, deserialize_with = "explicit_null")]
    pub swarm_key: Option<Option<String>>,
}

fn explicit_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Writes `c` to the config file; `share` also applies at once, the rest at
/// the next start.
///
/// # Errors
/// [`Error::Invalid`] naming the field at fault, [`Error::Unusable`] when no
/// node would start from the file, [`Error::Conflict`] without a usable
/// file, [`Error::Io`] when it cannot be written.
pub fn change(s: &Service, c: Change) -> Result<View, Error> {
    let file = config_file(s)?;
    let mut table = read_table(file)?;
    if let Some(listen) = c.listen {
        let listen = listen.trim().to_string();
        listen.parse::<SocketAddr>().map_err(|_| invalid("listen", format!("{listen:?} is not IP:PORT, e.g. 127.0.0.1:7833")))?;
        table.insert("listen".into(), listen.into());
    }
    if let Some(keys) = c.api_keys {
        let keys: Vec<String> = keys.into_iter().map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
        if let Some(bad) = keys.iter().find(|k| k.len() < 8 || k.chars().any(char::is_whitespace)) {
            return Err(invalid("api_keys", format!("{bad:?} is too weak a key: use at least 8 characters and no spaces")));
        }
        table.insert("api_keys".into(), keys.into());
    }
    if let Some(share) = c.share {
        table.insert("share".into(), share.into());
    }
    match c.swarm_key {
        Some(Some(code)) => {
            let code = code.trim().to_string();
            rbee_swarm::SwarmKey::from_join_code(&code).map_err(|e| invalid("swarm_key", format!("{e:#}")))?;
            table.insert("swarm_key".into(), code.into());
        }
        Some(None) => {
            table.remove("swarm_key");
        }
        None => {}
    }
    // The file alone must make a node that starts (e.g. an address beyond
    // loopback needs keys). The address and the swarm key were checked above.
    let layer: Overrides = table.clone().try_into().map_err(|e| Error::Unusable(format!("the config file would not parse: {e}")))?;
    if let Err(e) = Config::resolve(layer) {
        return Err(match e.downcast_ref::<ExposedWithoutKeys>() {
            Some(e) => invalid("api_keys", e.to_string()),
            None => Error::Unusable(format!("with this change {} would not start a node: {e:#}", file.display())),
        });
    }
    write_table(file, &table)?;
    if let Some(share) = c.share {
        s.set_sharing(share);
    }
    tracing::info!(file = %file.display(), "settings saved");
    view(s)
}

/// Saves a new swarm key as this node's (it takes effect at the next start).
///
/// # Errors
/// As [`change`].
pub fn new_swarm(s: &Service) -> Result<View, Error> {
    let file = config_file(s)?;
    let mut table = read_table(file)?;
    let key = rbee_swarm::SwarmKey::generate();
    table.insert("swarm_key".into(), key.join_code().into());
    write_table(file, &table)?;
    tracing::info!(swarm_key = %key.fingerprint(), "new swarm key saved; it takes effect at the next start");
    view(s)
}

fn config_file(s: &Service) -> Result<&Path, Error> {
    s.config.config_file.as_deref().ok_or_else(|| Error::Conflict("this node was started without a config file".into()))
}

fn read_table(file: &Path) -> Result<toml::Table, Error> {
    match std::fs::read_to_string(file) {
        Ok(text) => text.parse().map_err(|e| Error::Conflict(format!("{} does not parse ({e}); fix or remove it first", file.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml::Table::new()),
        Err(source) => Err(Error::Io { context: "reading the config file", source }),
    }
}

/// Writes `table` to `file` whole (a crash never leaves half a config) and
/// readable by its owner only: it holds the API keys and the swarm key.
fn write_table(file: &Path, table: &toml::Table) -> Result<(), Error> {
    let text = toml::to_string(table).map_err(|e| Error::Unusable(format!("the settings cannot be written as TOML: {e}")))?;
    rbee_swarm::key::write_private(file, text.as_bytes()).map_err(|source| Error::Io { context: "writing the config file", source })
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
    /// The settings saved since this run started: the next start applies
    /// them.
    pub restart_required: Vec<String>,
    /// Settings saved since this run started that a flag or `RBEE_*`
    /// variable of this run overrides: a start made the same way keeps them
    /// as they are.
    pub overridden: Vec<String>,
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
/// What runs now and what the config file says.
///
/// # Errors
/// [`Error::Conflict`] when the file does not parse.
pub fn view(s: &Service) -> Result<View, Error> {
    let c = &s.config;
    let saved: Overrides = match &c.config_file {
        Some(f) => Overrides::from_file(f).map_err(|e| Error::Conflict(format!("{e:#}")))?,
        None => Overrides::default(),
    };
    let running_key = c.swarm_key.map(|k| k.join_code());
    // What the next start makes of the file, against what runs. A setting
    // that a flag or `RBEE_*` variable gives this run is not the file's to
    // change (a node started with `--swarm-key` and nothing saved has nothing
    // to apply); one saved since the start anyway is said to be overridden.
    let start = &c.file_at_start;
    let next_listen = saved.listen.as_deref().unwrap_or(crate::config::DEFAULT_LISTEN).parse::<SocketAddr>().ok();
    let settings = [
        ("listen", next_listen.is_some_and(|l| l != c.listen), saved.listen != start.listen),
        ("api_keys", saved.api_keys.clone().unwrap_or_default().iter().filter(|k| !k.is_empty()).ne(c.api_keys.iter()), saved.api_keys != start.api_keys),
        ("swarm_key", saved.swarm_key != running_key, saved.swarm_key != start.swarm_key),
    ];
    let (mut pending, mut overridden) = (Vec::new(), Vec::new());
    for (name, differs, saved_since) in settings {
        if !c.fixed.contains(&name) && differs {
            pending.push(name.to_string());
        } else if c.fixed.contains(&name) && saved_since {
            overridden.push(name.to_string());
        }
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
        overridden,
        can_restart: s.can_restart(),
    })
}
