//! The swarm's error type.

/// Everything the swarm can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A join code that is not one.
    #[error("invalid swarm join code: {0}")]
    InvalidKey(String),
    /// The identity key file could not be read or written.
    #[error("node identity: {0}")]
    Identity(String),
    /// A listen or peer address that libp2p cannot use.
    #[error("address {addr}: {reason}")]
    Address { addr: String, reason: String },
    /// Setting up libp2p failed.
    #[error("starting the swarm: {0}")]
    Start(String),
    /// A received message that is not a valid record (malformed, oversized,
    /// wrongly signed); counted and dropped, never a panic.
    #[error("rejected message: {0}")]
    Rejected(String),
    /// A stream to another node could not be opened or accepted.
    #[error("stream: {0}")]
    Stream(String),
    /// The swarm's event loop has stopped.
    #[error("the swarm has stopped")]
    Stopped,
}

/// `Result` with the swarm's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
