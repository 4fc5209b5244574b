//! rbee-node is one machine's rbee service: the engine behind an
//! OpenAI-compatible HTTP API, and the `rbee` command.
//!
//! - [`config`]: settings from the config file, `RBEE_*` variables and flags.
//! - [`api`]: the axum router — `/v1/models`, `/v1/chat/completions`,
//!   `/v1/completions`, `/health`, `/metrics` — with OpenAI's wire types and
//!   error objects, API keys and CORS.
//! - [`conversations`]: the UI's chats in SQLite, served at `/api/conversations`.
//! - [`node`]: one running node (store, swarm, API), as `rbee serve` and
//!   the desktop app run it.
//! - [`pulls`]: model downloads the UI starts, watches and cancels.
//! - [`dispatch`]: running a request on the best node of the swarm, with
//!   failover, and answering other nodes' requests; its own error type,
//!   which only [`api`] turns into HTTP answers.
//! - [`server`]: serving on a listener with read timeouts, a connection
//!   limit and graceful shutdown.
//! - [`service`]: the node below its API ([`Service`]): engine, swarm,
//!   sharing, speeds, pulls, conversations and its tasks.
//! - [`metrics`]: what `/metrics` counts.
//! - [`settings`]: the settings page's reads and changes of the config file.
//! - [`swarm`]: joining the swarm and keeping this node's record current in it.

pub mod api;
pub mod config;
pub mod conversations;
pub mod copy;
pub mod dispatch;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod pulls;
pub mod recommended;
pub mod server;
pub mod service;
pub mod settings;
pub mod swarm;

pub use api::router;
pub use config::Config;
pub use server::{serve, shutdown_signal};
pub use service::Service;
