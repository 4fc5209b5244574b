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
//! - [`remote`]: running a request on the best node of the swarm, with
//!   failover, and answering other nodes' requests.
//! - [`server`]: serving on a listener with graceful shutdown.
//! - [`swarm`]: joining the swarm and keeping this node's record current in it.

pub mod api;
pub mod config;
pub mod conversations;
pub mod node;
pub mod pulls;
pub mod remote;
pub mod server;
pub mod swarm;

pub use api::{AppState, router};
pub use config::Config;
pub use server::{serve, shutdown_signal};
