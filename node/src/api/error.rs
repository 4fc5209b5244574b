//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
//!
//! 4xx messages say what was wrong and how to fix it. 5xx bodies name the
//! failure without internals; the detail is logged once here.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rbee_engine::Error as EngineError;
use serde::Serialize;

/// An error answered to an API client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Sent as `x-should-retry`, which the openai SDKs obey instead of their own retry policy.
    pub should_retry: Option<bool>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: ErrorObject<'a>,
}

/// The inner object, also sent as a stream's `error` event.
#[derive(Debug, Serialize)]
pub struct ErrorObject<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None, should_retry: None }
    }

    /// 400 about one request field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self { param: Some(param.to_string()), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    /// 400 about the body as a whole (not JSON, wrong shape).
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self { code: Some("not_found"), ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message) }
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist. GET /v1/models lists the models you can use."),
            )
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Missing or incorrect API key. This node listens beyond loopback: send `Authorization: Bearer KEY` with one of its configured api_keys.",
            )
        }
    }

    /// 500 whose detail goes to the log, not to the client.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "The server failed while running the model; its log has the details.")
    }

    /// Maps an engine failure; `prompt_param` names the request field holding the prompt.
    pub fn from_engine(e: &EngineError, prompt_param: &str) -> Self {
        match e {
            EngineError::ModelNotFound(m) => Self::model_not_found(m),
            EngineError::InvalidRequest(m) => Self::invalid(prompt_param, m.clone()),
            EngineError::WrongModelKind(m) => Self { code: Some("model_not_supported"), ..Self::invalid("model", m.clone()) },
            EngineError::InvalidGrammar { field, message } => Self::invalid(field, message.clone()),
            EngineError::InvalidName { field, message } => Self::invalid(field, message.clone()),
            EngineError::Template(m) => Self::invalid(prompt_param, format!("the chat template rejected these messages: {m}")),
            EngineError::PromptTooLong { .. } => Self { code: Some("context_length_exceeded"), ..Self::invalid(prompt_param, e.to_string()) },
            EngineError::QueueFull { .. } => {
                Self { code: Some("queue_full"), should_retry: Some(false), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", e.to_string()) }
            }
            EngineError::OutOfMemory { .. } => {
                Self { code: Some("insufficient_memory"), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", e.to_string()) }
            }
            EngineError::ShuttingDown => {
                Self { code: Some("shutting_down"), should_retry: Some(true), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", e.to_string()) }
            }
            EngineError::Io { context, source } if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) => {
                from_io(source, context)
            }
            // The model's own file is unusable: the admin must act, and the
            // message (which names the file) is what they need (dispatch
            // logs it where the load failed).
            EngineError::InvalidModel { .. } | EngineError::UnsupportedArchitecture(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string())
            }
            _ => Self::internal(e),
        }
    }

    /// Maps a failure to start a request anywhere in the swarm;
    /// `prompt_param` names the request field holding the prompt.
    pub fn from_dispatch(e: &crate::dispatch::Error, prompt_param: &str) -> Self {
        use crate::dispatch::Error as D;
        match e {
            D::Engine(e) => Self::from_engine(e, prompt_param),
            D::NotFound(model) => Self::model_not_found(model),
            D::Peer { status, message, code, param } => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut e = if status == StatusCode::NOT_FOUND {
                    Self::new(status, "invalid_request_error", message.clone())
                } else {
                    Self::invalid(param.as_deref().map_or(prompt_param, |p| if p == "prompt" { prompt_param } else { p }), message.clone())
                };
                e.status = status;
                if status.is_server_error() {
                    e.kind = "server_error";
                    e.param = None;
                }
                if status == StatusCode::NOT_FOUND {
                    e.param = Some("model".into());
                }
                e.code = code.as_deref().and_then(|c| crate::dispatch::KNOWN_CODES.iter().copied().find(|k| *k == c));
                e
            }
            D::Unreachable(m) => Self { status: StatusCode::BAD_GATEWAY, ..Self::internal(m) },
            D::Internal(m) => Self::internal(m),
        }
    }

    pub fn object(&self) -> ErrorObject<'_> {
        ErrorObject { message: &self.message, kind: self.kind, param: self.param.as_deref(), code: self.code }
    }
}

/// An I/O failure while `doing` something: a full disk is the machine's
/// state, not a bug (507, saying so); anything else is a 500 with the
/// detail logged.
pub fn from_io(e: &std::io::Error, doing: &str) -> ApiError {
    if matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) {
        tracing::warn!(error = %e, "{doing}: the disk is full");
        return ApiError {
            code: Some("insufficient_storage"),
            ..ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "server_error",
                format!("{doing} failed: the disk of this node's data dir is full; free some space and retry"),
            )
        };
    }
    ApiError::internal(&format_args!("{doing}: {e}"))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(Body { error: self.object() })).into_response();
        if let Some(r) = self.should_retry {
            res.headers_mut().insert("x-should-retry", HeaderValue::from_static(if r { "true" } else { "false" }));
        }
        res
    }
}
