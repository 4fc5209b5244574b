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
    file("index.html", "no-cache").unwrap_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            Html("<!doctype html><title>rbee</title><p>This rbee node was built without its UI. Build it with <code>ui/build.sh</code>; the API is at <a href=\"/v1/models\">/v1</a>.</p>"),
        )
            .into_response()
    })
}

pub async fn asset(Path(path): Path<String>) -> Response {
    // File names carry a hash of their content: cache them for good.
    let name = format!("assets/{path}");
    file(&name, "public, max-age=31536000, immutable").unwrap_or_else(|| not_found(&name))
}

pub async fn favicon() -> Response {
    file("favicon.svg", "public, max-age=86400").unwrap_or_else(|| not_found("favicon.svg"))
}

fn not_found(name: &str) -> Response {
    super::error::ApiError::not_found(format!("no such UI file: /{name}")).into_response()
}

/// `name` from `ui/dist`, with its type, `cache` and the page's security headers.
fn file(name: &str, cache: &'static str) -> Option<Response> {
    let f = Assets::get(name)?;
    let mut res = f.data.into_owned().into_response();
    let h = res.headers_mut();
    let mime = f.metadata.mimetype();
    let mime = if mime.starts_with("text/") { format!("{mime}; charset=utf-8") } else { mime.to_string() };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_str(&mime).unwrap_or(HeaderValue::from_static("application/octet-stream")));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Some(res)
}
