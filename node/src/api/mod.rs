//! The HTTP API: OpenAI-compatible endpoints under `/v1`, the UI's under
//! `/api`, `/health` and `/metrics`, behind API-key checks (beyond
//! loopback) and CORS.
//!
//! Every failure, including a body that is not JSON, an unknown path or a
//! wrong method, is answered with OpenAI's error object.

pub mod chat;
pub mod conversations;
pub mod embeddings;
pub mod error;
pub mod guard;
pub mod models;
pub mod openai;
pub mod settings;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::metrics::RequestLabels;
use crate::service::Service;
use error::ApiError;

/// Largest request body accepted (a full 128k-token prompt fits).
pub const MAX_BODY: usize = 8 << 20;

/// The API's routes and layers.
pub fn router(state: Service) -> Router {
    let hostname = sysinfo::System::host_name().ok();
    let guard = Arc::new(guard::Guard::new(hostname.as_deref(), &state.config.allowed_hosts, &state.config.cors_origins));
    let cors = cors(guard.clone());
    Router::new()
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::get).delete(models::delete))
        .route("/api/models/pull", post(models::pull))
        .route("/api/models/pulls", get(models::pulls))
        .route("/api/models/recommended", get(models::recommended))
        .route("/api/hub/search", get(models::hub_search))
        .route("/api/hub/files", get(models::hub_files))
        .route("/api/models/pulls/{id}", delete(models::cancel_pull))
        .route("/api/models/import", post(models::import).layer(DefaultBodyLimit::disable()))
        .route("/v1/chat/completions", post(chat::chat))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/api/swarm", get(swarm_view))
        .route("/api/swarm/events", get(swarm_events))
        .route("/api/settings", get(settings::get).patch(settings::update))
        .route("/api/settings/new-swarm", post(settings::new_swarm))
        .route("/api/restart", post(settings::restart))
        .route("/api/conversations", get(conversations::list).post(conversations::create))
        .route("/api/conversations/{id}", get(conversations::get).patch(conversations::update).delete(conversations::delete))
        .route("/api/conversations/{id}/messages", post(conversations::append))
        .route("/api/conversations/{id}/messages/{message}", delete(conversations::truncate))
        .route("/", get(ui::index))
        .route("/assets/{*path}", get(ui::asset))
        .route("/favicon.svg", get(ui::favicon))
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(openai_errors))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(cors)
        .layer(middleware::from_fn_with_state(guard, guard::guard))
        .with_state(state)
}

/// A JSON body whose every failure (too large, not JSON, wrong shape) is a
/// 4xx in OpenAI's shape; the content type is not checked, as curl users
/// often leave it out.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::bad_body("the request body is empty; send a JSON object"));
        }
        parse_json(&bytes).map(Self)
    }
}

/// `Option<JsonBody<T>>`: an empty body is `None`, anything else must parse.
impl<T: DeserializeOwned, S: Send + Sync> axum::extract::OptionalFromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.is_empty() { Ok(None) } else { parse_json(&bytes).map(|t| Some(Self(t))) }
    }
}

/// How long a JSON body may take to arrive (8 MiB at a crawl still fits).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let read = tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(req, state)).await.map_err(|_| ApiError {
        code: Some("request_timeout"),
        ..ApiError::new(StatusCode::REQUEST_TIMEOUT, "invalid_request_error", format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()))
    })?;
    read.map_err(|e| {
        let status = e.status();
        let mut err = ApiError::bad_body(if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than {} MiB", MAX_BODY >> 20)
        } else {
            format!("could not read the request body: {e}")
        });
        err.status = status;
        err
    })
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = if inner.is_syntax() || inner.is_eof() { "the body is not valid JSON" } else { "the body does not match the request format" };
        let mut err = ApiError::bad_body(format!("{what}: {inner}"));
        if !matches!(path.as_str(), "." | "?" | "") {
            err.param = Some(path);
        }
        err
    })?;
    de.end().map_err(|e| ApiError::bad_body(format!("the body is not valid JSON: {e}")))?;
    Ok(parsed)
}

async fn health(State(s): State<Service>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "models_loaded": s.engine.loaded().len(),
    }))
}

async fn swarm_view(State(s): State<Service>) -> impl IntoResponse {
    axum::Json(crate::swarm::view(&s))
}

/// `GET /api/swarm/events`: the registry as server-sent events, one `data:`
/// with the same body as `GET /api/swarm` at once and whenever it changes
/// (checked as the registry changes and each second, for RTTs and ages).
/// The stream ends when the node shuts down.
async fn swarm_events(State(s): State<Service>) -> impl IntoResponse {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt;
    let watch = s.swarm.as_ref().map(rbee_swarm::Client::watch);
    let keep_alive = s.config.keep_alive;
    let stopped = s.stopped();
    let stream = futures_util::stream::unfold((s, watch, None::<String>), |(s, mut watch, last)| async move {
        loop {
            if last.is_some() {
                let tick = tokio::time::sleep(Duration::from_secs(1));
                match watch.as_mut() {
                    Some(w) => {
                        tokio::select! {
                            changed = w.changed() => if changed.is_err() { watch = None },
                            () = tick => {}
                        }
                    }
                    None => tick.await,
                }
            }
            let body = serde_json::to_string(&crate::swarm::view(&s)).unwrap_or_default();
            if last.as_deref() != Some(body.as_str()) {
                let event = Event::default().data(body.clone());
                return Some((Ok::<_, std::convert::Infallible>(event), (s, watch, Some(body))));
            }
        }
    })
    .take_until(stopped);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(keep_alive))
}

async fn render_metrics(State(s): State<Service>) -> impl IntoResponse {
    let body = s.metrics.render(&s.engine.loaded());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {method} {}; the API lives under /v1 (e.g. POST /v1/chat/completions)", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    let mut e = ApiError::bad_body(format!("{method} is not allowed on {}", uri.path()));
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e
}

/// axum's own rejections (a path that is not UTF-8, a bad query string, an
/// extractor's refusal) are plain text; clients of this API expect OpenAI's
/// error object for every failure, so they are rewrapped here.
async fn openai_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let plain = res.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return res;
    }
    let text = match axum::body::to_bytes(res.into_body(), 64 << 10).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    if status.is_server_error() {
        return ApiError::internal(&text).into_response();
    }
    let mut e = ApiError::bad_body(if text.is_empty() { status.canonical_reason().unwrap_or("bad request").to_string() } else { text });
    e.status = status;
    e.into_response()
}

/// Counts every answered request by its route and status.
async fn count(State(s): State<Service>, req: Request, next: Next) -> Response {
    let endpoint = req.extensions().get::<MatchedPath>().map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let res = next.run(req).await;
    s.metrics.requests.get_or_create(&RequestLabels { endpoint, status: res.status().as_u16() }).inc();
    res
}

/// On a loopback-only node any (or no) key is accepted: the openai SDKs
/// insist on sending one. A node that listens beyond loopback asks clients
/// on other machines for one of its keys; `/health` stays open.
async fn authorize(State(s): State<Service>, req: Request, next: Next) -> Response {
    if s.config.listen.ip().is_loopback() || req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let peer = caller(req.extensions());
    let peer_is_local = peer.is_some_and(|a| a.ip().to_canonical().is_loopback());
    if peer_is_local || key_matches(&s.key_hashes, req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    ApiError::unauthorized().into_response()
}

/// The caller's address. `MockConnectInfo` is how tests (and embedders
/// without a socket) say who is calling.
fn caller(ext: &axum::http::Extensions) -> Option<SocketAddr> {
    ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0).or_else(|| ext.get::<MockConnectInfo<SocketAddr>>().map(|c| c.0))
}

fn key_matches(hashes: &[[u8; 32]], header: Option<&HeaderValue>) -> bool {
    let Some(token) = header.and_then(|h| h.to_str().ok()).and_then(|h| {
        let (scheme, token) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
    }) else {
        return false;
    };
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    // Every key is compared, whether or not one matched already.
    hashes.iter().fold(subtle::Choice::from(0), |ok, h| ok | h.ct_eq(&digest)).into()
}

/// Browser pages may call the API from loopback origins (a local dev server,
/// the app's webview) and from the configured ones; the openai JS SDK's
/// `x-stainless-*` headers are allowed by mirroring what the preflight asks.
fn cors(guard: Arc<guard::Guard>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| origin.to_str().is_ok_and(|o| guard.origin_allowed(o))))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_configured_key_opens() {
        let hashes = vec![Sha256::digest(b"sk-one").into(), Sha256::digest(b"sk-two").into()];
        let h = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(key_matches(&hashes, Some(&h("Bearer sk-two"))));
        assert!(key_matches(&hashes, Some(&h("bearer sk-one"))));
        assert!(!key_matches(&hashes, Some(&h("Bearer sk-on"))));
        assert!(!key_matches(&hashes, Some(&h("sk-one"))));
        assert!(!key_matches(&hashes, None));
        assert!(!key_matches(&[], Some(&h("Bearer "))));
    }
}
