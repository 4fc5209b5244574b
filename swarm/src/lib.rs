//! rbee-swarm lets the rbee nodes of one office find each other and share
//! one registry of who has which model, device and load, with no central
//! server.
//!
//! - [`key`]: the swarm key (pre-shared, a join code people paste) and the
//!   node's persistent identity.
//! - [`record`]: a node's [`NodeRecord`] and the signed [`Envelope`] it
//!   travels in.
//! - [`registry`]: the merge rules (newest incarnation and seq win), each
//!   node's liveness as the membership protocol says, a digest of it all.
//! - [`swim`]: membership and failure detection (SWIM with Lifeguard), a
//!   state machine without I/O.
//! - [`routing`]: ranking the nodes that can run a request.
//! - [`frame`]: length-prefixed JSON frames for request streams.
//! - [`node`]: the libp2p event loop (TCP + pnet + Noise + Yamux, mDNS,
//!   gossipsub, identify, membership streams, snapshot exchange) and its
//!   [`Client`].

pub mod error;
pub mod frame;
pub mod key;
pub mod node;
pub mod record;
pub mod registry;
pub mod routing;
pub mod swim;

pub use error::{Error, Result};
pub use key::SwarmKey;
pub use libp2p::{Multiaddr, Stream};
pub use node::{Client, Config, start};
pub use record::{Envelope, NodeId, NodeRecord};
pub use registry::PeerView;
