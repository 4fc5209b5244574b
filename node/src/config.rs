//! The node's settings: a TOML file in the platform config dir, overridden by
//! `RBEE_*` environment variables, overridden by command-line flags.
//!
//! The binary gathers the three layers into [`Overrides`] values and calls
//! [`Config::resolve`]; the library only ever sees the resolved [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The API's default address (loopback: only this machine can reach it).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7833";

/// Where models are pulled from unless `hf_endpoint` says otherwise.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";

/// The swarm's default TCP port (on every interface: the swarm is for the LAN).
pub const DEFAULT_SWARM_PORT: u16 = 7834;

/// One layer of settings; `None` means "not set here".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Overrides {
    /// Address the HTTP API listens on.
    pub listen: Option<String>,
    /// Where models and the catalog live.
    pub data_dir: Option<PathBuf>,
    /// Bearer keys accepted from other machines (required beyond loopback).
    pub api_keys: Option<Vec<String>>,
    /// Browser origins allowed to call the API besides loopback pages (`*` = any).
    pub cors_origins: Option<Vec<String>>,
    /// Host names the API answers to besides IP addresses, `localhost` and
    /// this machine's hostname (`*` = any, e.g. behind a reverse proxy).
    pub allowed_hosts: Option<Vec<String>>,
    /// Concurrent sequences per loaded model.
    pub slots: Option<usize>,
    /// Requests that may wait for a busy model.
    pub queue_depth: Option<usize>,
    /// Seconds a model stays loaded with no work.
    pub idle_timeout_secs: Option<f64>,
    /// Upper bound on the context a sequence may use.
    pub max_context: Option<usize>,
    /// Where models run: `auto` (the first GPU this build can use), `cpu`,
    /// `cuda`, `cuda:N` or `metal`.
    pub device: Option<String>,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C.
    pub shutdown_grace_secs: Option<f64>,
    /// Seconds without an event after which a stream carries a keep-alive comment.
    pub keep_alive_secs: Option<f64>,
    /// Seconds a connection may take to send a request's headers (and may
    /// sit idle between requests).
    pub header_timeout_secs: Option<f64>,
    /// Connections served at once (at most half the open-file limit).
    pub max_connections: Option<usize>,
    /// Largest model file accepted by `POST /api/models/import`, in MiB.
    pub max_upload_mib: Option<u64>,
    /// The swarm's join code; without one the node runs alone.
    pub swarm_key: Option<String>,
    /// Peers to dial besides those mDNS finds (multiaddrs).
    pub peers: Option<Vec<String>>,
    /// Whether this node runs requests for the rest of the swarm.
    pub share: Option<bool>,
    /// The swarm's listen address (a multiaddr).
    pub swarm_listen: Option<String>,
    /// Whether to find peers by mDNS.
    pub mdns: Option<bool>,
    /// Where models are pulled from (Hugging Face or a mirror of its paths).
    pub hf_endpoint: Option<String>,
}

impl Overrides {
    /// Reads the TOML file at `path`; a missing file is an empty layer.
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed (unknown keys included).
    pub fn from_file(path: &Path) -> Result<Self> {
        restrict(path);
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("parsing the config file {}", path.display()))
    }

    /// The `RBEE_*` variables from `get` (the process environment in the binary).
    ///
    /// # Errors
    /// When a variable holds a value of the wrong kind.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        fn parse<T: std::str::FromStr>(name: &str, v: Option<String>) -> Result<Option<T>>
        where
            T::Err: std::fmt::Display,
        {
            v.filter(|v| !v.is_empty()).map(|v| v.parse::<T>().map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}"))).transpose()
        }
        let list = |v: Option<String>| -> Option<Vec<String>> { v.map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()) };
        Ok(Self {
            listen: get("RBEE_LISTEN").filter(|v| !v.is_empty()),
            data_dir: get("RBEE_DATA_DIR").filter(|v| !v.is_empty()).map(PathBuf::from),
            api_keys: list(get("RBEE_API_KEYS")),
            cors_origins: list(get("RBEE_CORS_ORIGINS")),
            allowed_hosts: list(get("RBEE_ALLOWED_HOSTS")),
            slots: parse("RBEE_SLOTS", get("RBEE_SLOTS"))?,
            queue_depth: parse("RBEE_QUEUE_DEPTH", get("RBEE_QUEUE_DEPTH"))?,
            idle_timeout_secs: parse("RBEE_IDLE_TIMEOUT_SECS", get("RBEE_IDLE_TIMEOUT_SECS"))?,
            max_context: parse("RBEE_MAX_CONTEXT", get("RBEE_MAX_CONTEXT"))?,
            device: get("RBEE_DEVICE").filter(|v| !v.is_empty()),
            shutdown_grace_secs: parse("RBEE_SHUTDOWN_GRACE_SECS", get("RBEE_SHUTDOWN_GRACE_SECS"))?,
            keep_alive_secs: parse("RBEE_KEEP_ALIVE_SECS", get("RBEE_KEEP_ALIVE_SECS"))?,
            header_timeout_secs: parse("RBEE_HEADER_TIMEOUT_SECS", get("RBEE_HEADER_TIMEOUT_SECS"))?,
            max_connections: parse("RBEE_MAX_CONNECTIONS", get("RBEE_MAX_CONNECTIONS"))?,
            max_upload_mib: parse("RBEE_MAX_UPLOAD_MIB", get("RBEE_MAX_UPLOAD_MIB"))?,
            swarm_key: get("RBEE_SWARM_KEY").filter(|v| !v.is_empty()),
            peers: list(get("RBEE_PEERS")),
            share: parse("RBEE_SHARE", get("RBEE_SHARE"))?,
            swarm_listen: get("RBEE_SWARM_LISTEN").filter(|v| !v.is_empty()),
            mdns: parse("RBEE_MDNS", get("RBEE_MDNS"))?,
            // Hugging Face's own variable, as its tools read it.
            hf_endpoint: get("HF_ENDPOINT").filter(|v| !v.is_empty()),
        })
    }

    /// `self` with every field that `over` sets replaced.
    #[must_use]
    pub fn then(self, over: Self) -> Self {
        Self {
            listen: over.listen.or(self.listen),
            data_dir: over.data_dir.or(self.data_dir),
            api_keys: over.api_keys.or(self.api_keys),
            cors_origins: over.cors_origins.or(self.cors_origins),
            allowed_hosts: over.allowed_hosts.or(self.allowed_hosts),
            slots: over.slots.or(self.slots),
            queue_depth: over.queue_depth.or(self.queue_depth),
            idle_timeout_secs: over.idle_timeout_secs.or(self.idle_timeout_secs),
            max_context: over.max_context.or(self.max_context),
            device: over.device.or(self.device),
            shutdown_grace_secs: over.shutdown_grace_secs.or(self.shutdown_grace_secs),
            keep_alive_secs: over.keep_alive_secs.or(self.keep_alive_secs),
            header_timeout_secs: over.header_timeout_secs.or(self.header_timeout_secs),
            max_connections: over.max_connections.or(self.max_connections),
            max_upload_mib: over.max_upload_mib.or(self.max_upload_mib),
            swarm_key: over.swarm_key.or(self.swarm_key),
            peers: over.peers.or(self.peers),
            share: over.share.or(self.share),
            swarm_listen: over.swarm_listen.or(self.swarm_listen),
            mdns: over.mdns.or(self.mdns),
            hf_endpoint: over.hf_endpoint.or(self.hf_endpoint),
        }
    }
}

/// Resolved settings of one node.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub api_keys: Vec<String>,
    pub cors_origins: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub slots: usize,
    pub queue_depth: usize,
    pub idle_timeout: Duration,
    pub max_context: usize,
    pub device: rbee_engine::Device,
    pub shutdown_grace: Duration,
    pub keep_alive: Duration,
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// Largest upload, in bytes.
    pub max_upload: u64,
    pub swarm_key: Option<rbee_swarm::SwarmKey>,
    pub peers: Vec<rbee_swarm::Multiaddr>,
    pub share: bool,
    pub swarm_listen: rbee_swarm::Multiaddr,
    pub mdns: bool,
    pub hf_endpoint: String,
    /// The file these settings were read from, where the UI's settings page
    /// writes its changes; `None` for a node built without one (tests).
    pub config_file: Option<PathBuf>,
    /// What that file said when the node started: a setting saved since
    /// differs from it, and the next start applies it.
    pub file_at_start: Overrides,
    /// The settings the UI can save (`listen`, `api_keys`, `swarm_key`)
    /// that an `RBEE_*` variable or a flag set for this run: a value saved in
    /// the file would not change them at a start made the same way.
    pub fixed: Vec<&'static str>,
}

/// The one rule that spans two settings: an address beyond loopback needs
/// API keys. Its own type, so that callers can tell which setting to blame.
#[derive(Debug)]
pub struct ExposedWithoutKeys {
    pub listen: SocketAddr,
}

impl std::fmt::Display for ExposedWithoutKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "listening on {} makes the API reachable from other machines, which requires API keys: \
             set api_keys in the config file or RBEE_API_KEYS (comma-separated)",
            self.listen
        )
    }
}

impl std::error::Error for ExposedWithoutKeys {}

impl Config {
    /// Fills unset fields with defaults and checks the result.
    ///
    /// # Errors
    /// An unparsable address, a zero slot count, a negative duration, or a
    /// non-loopback address without API keys.
    pub fn resolve(o: Overrides) -> Result<Self> {
        let listen_text = o.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr =
            listen_text.parse().with_context(|| format!("listen address {listen_text:?} is not IP:PORT (e.g. {DEFAULT_LISTEN} or 0.0.0.0:7833)"))?;
        let secs = |name: &str, v: Option<f64>, default: f64| -> Result<Duration> {
            let v = v.unwrap_or(default);
            if !v.is_finite() || v < 0.0 {
                bail!("{name} must be a non-negative number of seconds, got {v}");
            }
            Ok(Duration::from_secs_f64(v))
        };
        let api_keys: Vec<String> = o.api_keys.unwrap_or_default().into_iter().filter(|k| !k.is_empty()).collect();
        if !listen.ip().is_loopback() && api_keys.is_empty() {
            return Err(ExposedWithoutKeys { listen }.into());
        }
        // The engine's own defaults for the engine's settings: one place.
        let engine = rbee_engine::Config::new(PathBuf::new());
        let slots = o.slots.unwrap_or(engine.slots);
        if slots == 0 {
            bail!("slots must be at least 1");
        }
        let keep_alive = secs("keep_alive_secs", o.keep_alive_secs, 5.0)?;
        if keep_alive.is_zero() {
            bail!("keep_alive_secs must be greater than 0");
        }
        let header_timeout = secs("header_timeout_secs", o.header_timeout_secs, 10.0)?;
        if header_timeout.is_zero() {
            bail!("header_timeout_secs must be greater than 0");
        }
        let max_connections = o.max_connections.unwrap_or(256);
        if max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        let device = rbee_engine::hardware::device_named(o.device.as_deref().unwrap_or("auto")).map_err(|e| anyhow::anyhow!("device: {e}"))?;
        let swarm_key = o.swarm_key.as_deref().map(rbee_swarm::SwarmKey::from_join_code).transpose()?;
        let multiaddr = |what: &str, a: &str| -> Result<rbee_swarm::Multiaddr> {
            a.parse().with_context(|| format!("{what} {a:?} is not a multiaddr (e.g. /ip4/192.168.1.20/tcp/{DEFAULT_SWARM_PORT})"))
        };
        let peers = o.peers.unwrap_or_default().iter().map(|p| multiaddr("peer", p)).collect::<Result<Vec<_>>>()?;
        let swarm_listen = multiaddr("swarm_listen", o.swarm_listen.as_deref().unwrap_or(&format!("/ip4/0.0.0.0/tcp/{DEFAULT_SWARM_PORT}")))?;
        Ok(Self {
            swarm_key,
            peers,
            share: o.share.unwrap_or(true),
            swarm_listen,
            mdns: o.mdns.unwrap_or(true),
            hf_endpoint: o.hf_endpoint.unwrap_or_else(|| DEFAULT_HF_ENDPOINT.to_string()).trim_end_matches('/').to_string(),
            config_file: None,
            file_at_start: Overrides::default(),
            fixed: Vec::new(),
            listen,
            data_dir: o.data_dir.unwrap_or_else(default_data_dir),
            api_keys,
            cors_origins: o.cors_origins.unwrap_or_default(),
            allowed_hosts: o.allowed_hosts.unwrap_or_default(),
            slots,
            queue_depth: o.queue_depth.unwrap_or(engine.queue_depth),
            idle_timeout: secs("idle_timeout_secs", o.idle_timeout_secs, engine.idle_timeout.as_secs_f64())?,
            max_context: o.max_context.unwrap_or(engine.max_context).max(16),
            device,
            shutdown_grace: secs("shutdown_grace_secs", o.shutdown_grace_secs, 30.0)?,
            keep_alive,
            header_timeout,
            max_connections,
            max_upload: o.max_upload_mib.unwrap_or(64 << 10).saturating_mul(1 << 20),
        })
    }

    /// The engine's settings from these.
    pub fn engine(&self) -> rbee_engine::Config {
        let mut c = rbee_engine::Config::new(self.data_dir.clone());
        c.slots = self.slots;
        c.queue_depth = self.queue_depth;
        c.idle_timeout = self.idle_timeout;
        c.max_context = self.max_context;
        c.device = self.device.clone();
        c
    }
}

/// The settings of a node: the config `file` (the default one when `None`),
/// then the `RBEE_*` variables, then `flags`.
///
/// # Errors
/// When the file cannot be parsed or a setting is invalid.
pub fn load(file: Option<PathBuf>, flags: Overrides) -> Result<Config> {
    let file = file.unwrap_or_else(default_config_file);
    let in_file = Overrides::from_file(&file)?;
    let given = Overrides::from_env(|k| std::env::var(k).ok())?.then(flags);
    let fixed = [("listen", given.listen.is_some()), ("api_keys", given.api_keys.is_some()), ("swarm_key", given.swarm_key.is_some())]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
    let mut cfg = Config::resolve(in_file.clone().then(given))?;
    cfg.config_file = Some(file);
    cfg.file_at_start = in_file;
    cfg.fixed = fixed;
    Ok(cfg)
}

/// A config file others may read (written by hand, or by an older rbee)
/// holds the API keys and the swarm key: it is made owner-only, with a warning.
fn restrict(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => {
                    tracing::warn!(file = %path.display(), "the config file was readable by others; it holds secrets, so it is now readable by its owner only")
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "the config file is readable by others and could not be restricted; it holds secrets")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// `rbee/` in the platform's data dir (`~/.local/share/rbee` on Linux).
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("rbee")
}

/// `rbee/config.toml` in the platform's config dir (`~/.config/rbee/config.toml` on Linux).
pub fn default_config_file() -> PathBuf {
    dirs::config_dir().unwrap_or_else(|| PathBuf::from(".")).join("rbee").join("config.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9001\"\nslots = 3\nqueue_depth = 5\n").unwrap();
        let env = Overrides::from_env(|k| match k {
            "RBEE_SLOTS" => Some("4".into()),
            "RBEE_API_KEYS" => Some("a, b,,".into()),
            _ => None,
        })
        .unwrap();
        let flags = Overrides { slots: Some(6), ..Overrides::default() };
        let c = Config::resolve(Overrides::from_file(&file).unwrap().then(env).then(flags)).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9001");
        assert_eq!(c.slots, 6);
        assert_eq!(c.queue_depth, 5);
        assert_eq!(c.api_keys, ["a", "b"]);
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
    }

    #[test]
    fn bad_settings_are_refused_with_what_to_do() {
        let err = |o: Overrides| format!("{:#}", Config::resolve(o).unwrap_err());
        assert!(err(Overrides { listen: Some("0.0.0.0:7833".into()), ..Default::default() }).contains("requires API keys"));
        assert!(err(Overrides { listen: Some("localhost".into()), ..Default::default() }).contains("is not IP:PORT"));
        assert!(err(Overrides { slots: Some(0), ..Default::default() }).contains("at least 1"));
        assert!(err(Overrides { device: Some("tpu".into()), ..Default::default() }).contains("device: unknown device \"tpu\""));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listn = \"x\"").unwrap();
        assert!(format!("{:#}", Overrides::from_file(&file).unwrap_err()).contains("unknown field `listn`"));
        assert!(format!("{:#}", Overrides::from_env(|k| (k == "RBEE_SLOTS").then(|| "two".into())).unwrap_err()).contains("RBEE_SLOTS"));
        assert!(err(Overrides { swarm_key: Some("hello".into()), ..Default::default() }).contains("join code"));
        assert!(err(Overrides { peers: Some(vec!["10.0.0.2:7834".into()]), ..Default::default() }).contains("not a multiaddr"));
        // Beyond loopback with a key is fine.
        let c = Config::resolve(Overrides { listen: Some("0.0.0.0:0".into()), api_keys: Some(vec!["k".into()]), ..Default::default() });
        assert!(c.is_ok());
    }
}
