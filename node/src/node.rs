//! One running node: the engine, the swarm and the API on a listener. `rbee
//! serve` runs one; so does the desktop app, in its own process.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use rbee_engine::Engine;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::service::Service;

/// A node that has opened its model store, bound its API address and joined
/// its swarm (when it has a key), and is ready to [`serve`](Node::serve).
#[derive(Debug)]
pub struct Node {
    /// What the API's handlers share: the engine, the swarm, the settings.
    pub state: Service,
    /// The address the API is bound to (the configured port, or the one the
    /// system chose for port 0).
    pub addr: SocketAddr,
    listener: TcpListener,
}

/// Opens the store, binds the API address and joins the swarm.
///
/// # Errors
/// When the store cannot be opened, the address is taken, or the swarm
/// cannot start.
pub async fn start(cfg: Config) -> Result<Node> {
    let engine = Engine::new(cfg.engine()).with_context(|| format!("opening the model store in {}", cfg.data_dir.display()))?;
    for w in engine.store().warnings() {
        tracing::warn!("{w}");
    }
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("listening on {} (is another rbee running?)", cfg.listen))?;
    let addr = listener.local_addr()?;
    let swarm = crate::swarm::start(&cfg)?;
    let state = Service::new(engine, cfg).with_swarm(swarm.clone());
    if let Some(client) = swarm {
        crate::dispatch::serve(state.clone(), &client)?;
        crate::copy::serve(state.clone(), &client)?;
        crate::swarm::publish(state.clone(), client, addr);
    }
    let models = state.engine.store().list()?.len();
    tracing::info!(data_dir = %state.config.data_dir.display(), %addr, models, keys = state.config.api_keys.len(), "node ready");
    Ok(Node { state, addr, listener })
}

impl Node {
    /// The UI's address: `http://ADDR/` (loopback when bound to every interface).
    pub fn url(&self) -> String {
        let mut a = self.addr;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{a}/")
    }

    /// Serves the API until `shutdown` completes and requests in flight have
    /// finished (or the grace period ran out).
    ///
    /// # Errors
    /// When accepting connections fails.
    ///
    /// Then, in order: the background tasks (record publisher, peers'
    /// requests, pulls) stop, the node leaves its swarm (peers mark it down at
    /// once), and every task it started has ended before this returns (or a
    /// few seconds passed, which is logged).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let state = self.state.clone();
        crate::server::serve(self.listener, self.state, shutdown).await?;
        state.background.cancel();
        if let Some(client) = &state.swarm {
            client.leave().await;
            tracing::info!("left the swarm");
        }
        state.tasks.close();
        if tokio::time::timeout(std::time::Duration::from_secs(5), state.tasks.wait()).await.is_err() {
            tracing::warn!(tasks = state.tasks.len(), "tasks still running after the node stopped");
        }
        tracing::info!("stopped");
        Ok(())
    }
}
