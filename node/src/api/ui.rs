//! The built UI (`ui/dist`) at `/`. Release builds carry the files inside
//! the binary; debug builds read them from `ui/dist` at run time, so
//! `npm run build` in `ui/` shows up without rebuilding the node.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

#[derive(rust_embed::RustEmbed)]
#[folder = "../ui/dist"]
#[allow_missing = true]
struct Assets;

/// The page may load only its own files and call only its own node.
const CSP: &str = "default-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

pub async fn index() -> Response {
    match Assets::get("index.html") {
        Some(f) => with_headers(f.data.into_owned(), "text/html; charset=utf-8", "no-cache"),
        None => (
            StatusCode::NOT_FOUND,
            Html("<!doctype html><title>rbee</title><p>This rbee node was built without its UI. Build it with <code>npm --prefix ui ci &amp;&amp; npm --prefix ui run build</code>; the API is at <a href=\"/v1/models\">/v1</a>.</p>"),
        )
            .into_response(),
    }
}

pub async fn asset(Path(path): Path<String>) -> Response {
    match Assets::get(&format!("assets/{path}")) {
        // File names carry a hash of their content: cache them for good.
        Some(f) => with_headers(f.data.into_owned(), f.metadata.mimetype(), "public, max-age=31536000, immutable"),
        None => super::error::ApiError::not_found(format!("no such UI file: /assets/{path}")).into_response(),
    }
}

pub async fn favicon() -> Response {
    match Assets::get("favicon.svg") {
        Some(f) => with_headers(f.data.into_owned(), "image/svg+xml", "public, max-age=86400"),
        None => super::error::ApiError::not_found("no such UI file: /favicon.svg").into_response(),
    }
}

fn with_headers(body: Vec<u8>, mime: &str, cache: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream")));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}
