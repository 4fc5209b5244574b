//! The engine's one error type.

use std::path::PathBuf;

/// Everything the engine can fail with. Callers branch on the variant (the
/// HTTP layer maps them to status codes); the message says what went wrong and,
/// where the user can act, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not a GGUF model we can read (bad magic, truncated, corrupt).
    #[error("{path}: not a usable GGUF file: {reason}")]
    InvalidModel { path: PathBuf, reason: String },

    /// The GGUF is well formed but holds an architecture we have no code for.
    #[error("unsupported model architecture `{0}` (supported: gemma3, llama, mistral, qwen2, qwen3, phi3; for embeddings bert, nomic-bert)")]
    UnsupportedArchitecture(String),

    /// The model cannot do what was asked: a chat model asked for
    /// embeddings, an embedding model asked to generate.
    #[error("{0}")]
    WrongModelKind(String),

    /// No model with this id (or name) is in the catalog.
    #[error("model `{0}` not found; `rbee models ls` lists the models on this machine")]
    ModelNotFound(String),

    /// Loading would not fit in the memory that is free now.
    #[error("not enough memory to load `{model}`: needs about {needed_mib} MiB, {available_mib} MiB available")]
    OutOfMemory { model: String, needed_mib: u64, available_mib: u64 },

    /// Every slot is busy and the wait queue is full.
    #[error("model `{model}` is busy: all {slots} slots are in use and {queued} requests are waiting; retry later")]
    QueueFull { model: String, slots: usize, queued: usize },

    /// The request itself is invalid (bad sampling parameters, empty prompt, prompt too long).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A grammar, JSON schema or tool choice that cannot be enforced;
    /// `field` names the request field (OpenAI's name) at fault.
    #[error("{message}")]
    InvalidGrammar { field: &'static str, message: String },

    /// The prompt leaves no room in the model's context to generate.
    #[error("the prompt has {prompt_tokens} tokens but the model's context holds {context}; shorten it")]
    PromptTooLong { prompt_tokens: usize, context: usize },

    /// A chat template failed to render.
    #[error("chat template error: {0}")]
    Template(String),

    /// Constrained decoding failed mid-generation (not the request's fault:
    /// a grammar the request gave was checked when it started).
    #[error("constrained decoding failed: {0}")]
    Grammar(String),

    /// Tokenizer construction or use failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// A repository, file or revision name that cannot name a file on the
    /// hub (or would name one outside the store); `field` says which.
    #[error("{message}")]
    InvalidName { field: &'static str, message: String },

    /// Downloading a model failed.
    #[error("download failed: {0}")]
    Download(String),

    /// The checksum of a file did not match what was expected.
    #[error("checksum mismatch for {path}: expected {expected}, got {actual}")]
    Checksum { path: PathBuf, expected: String, actual: String },

    /// The engine was shut down while the request was pending.
    #[error("the engine is shutting down")]
    ShuttingDown,

    #[error("catalog database error: {0}")]
    Catalog(#[from] rusqlite::Error),

    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

/// `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
