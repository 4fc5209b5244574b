//! `POST /v1/embeddings`: OpenAI's shape, run by this node's engine.
//!
//! Embedding models are small and an input is one forward pass, so requests
//! run here rather than being routed through the swarm.

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use rbee_engine::EmbedInput;
use serde::{Deserialize, Serialize};

use super::JsonBody;
use super::error::ApiError;
use crate::service::Service;

/// Most inputs one request may carry (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    #[serde(default)]
    pub model: String,
    pub input: Option<Input>,
    /// `float` (default) or `base64` (little-endian f32s, what the Python SDK asks for).
    pub encoding_format: Option<String>,
    pub dimensions: Option<i64>,
}

/// A string, a list of strings, a list of token ids, or a list of those.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

impl Input {
    fn inputs(self) -> Result<Vec<EmbedInput>, ApiError> {
        let ids = |v: Vec<i64>| -> Result<EmbedInput, ApiError> {
            v.into_iter()
                .map(|t| u32::try_from(t).map_err(|_| ApiError::invalid("input", format!("token id {t} is not a valid id"))))
                .collect::<Result<Vec<u32>, _>>()
                .map(EmbedInput::Tokens)
        };
        let inputs = match self {
            Input::One(s) => vec![EmbedInput::Text(s)],
            Input::Many(v) => v.into_iter().map(EmbedInput::Text).collect(),
            Input::Tokens(v) => vec![ids(v)?],
            Input::TokenLists(v) => v.into_iter().map(ids).collect::<Result<_, _>>()?,
        };
        if inputs.is_empty() {
            return Err(ApiError::invalid("input", "`input` is an empty list: give a string, a list of strings or token ids"));
        }
        if inputs.len() > MAX_INPUTS {
            return Err(ApiError::invalid("input", format!("`input` has {} items; at most {MAX_INPUTS} per request", inputs.len())));
        }
        Ok(inputs)
    }
}

#[derive(Debug, Serialize)]
pub struct EmbeddingList {
    pub object: &'static str,
    pub data: Vec<EmbeddingItem>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingItem {
    pub object: &'static str,
    pub index: usize,
    pub embedding: Vector,
}

/// Floats, or their bytes in base64.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

pub async fn embeddings(State(s): State<Service>, JsonBody(req): JsonBody<EmbeddingRequest>) -> Result<Json<EmbeddingList>, ApiError> {
    if req.model.trim().is_empty() {
        return Err(ApiError::invalid("model", "`model` is empty: name an embedding model from GET /v1/models"));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(ApiError::invalid("encoding_format", format!("`encoding_format` must be \"float\" or \"base64\", got {other:?}"))),
    };
    let dimensions = match req.dimensions {
        None => None,
        Some(d) => {
            Some(usize::try_from(d).ok().filter(|&d| d > 0).ok_or_else(|| ApiError::invalid("dimensions", format!("`dimensions` must be positive, got {d}")))?)
        }
    };
    let inputs = req.input.ok_or_else(|| ApiError::invalid("input", "`input` is missing: give a string, a list of strings or token ids"))?.inputs()?;
    let engine = s.engine.clone();
    let model = req.model;
    let out =
        tokio::task::spawn_blocking(move || engine.embed(&model, &inputs, dimensions)).await.map_err(|e| ApiError::internal(&e))?.map_err(|e| match e {
            rbee_engine::Error::InvalidRequest(m) if m.starts_with("dimensions") => ApiError::invalid("dimensions", m),
            e => ApiError::from_engine(&e, "input"),
        })?;
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Vector::Float(v)
            };
            EmbeddingItem { object: "embedding", index, embedding }
        })
        .collect();
    Ok(Json(EmbeddingList {
        object: "list",
        data,
        model: out.model,
        usage: EmbeddingUsage { prompt_tokens: out.prompt_tokens, total_tokens: out.prompt_tokens },
    }))
}
