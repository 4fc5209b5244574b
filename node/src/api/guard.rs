//! What keeps a web page the user happens to visit from using their node.
//!
//! A node listens on the user's machine while they browse, so two browser
//! tricks are refused on every route, before authentication:
//!
//! - **DNS rebinding**: a page at `evil.example:7833` whose name is made to
//!   resolve to 127.0.0.1 is same-origin with the node, and its requests
//!   really come from loopback. Such requests carry the attacker's name in
//!   `Host`, so only names this node answers to are served: IP literals (a
//!   page cannot be served from an address the attacker does not hold),
//!   `localhost` and `*.localhost` (browsers resolve them to loopback
//!   themselves), this machine's hostname (and `NAME.local`), and the
//!   configured `allowed_hosts`.
//! - **Cross-site requests** (CSRF): a plain HTML form or a `fetch` with
//!   `mode: "no-cors"` reaches the node without a CORS preflight. A request
//!   that may change something (any method but GET, HEAD and OPTIONS) from a
//!   browser context of another origin is refused: its `Origin` must be a
//!   loopback page, a configured `cors_origins` entry, or the node's own
//!   origin; without `Origin`, `Sec-Fetch-Site` must not say `cross-site` or
//!   `same-site`. Clients that send neither (the SDKs, curl) are not
//!   browsers and pass.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The names and origins this node accepts.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Lower-case host names (no port) besides IP literals and `localhost`.
    names: Vec<String>,
    any_host: bool,
    /// Lower-case origins (`scheme://host[:port]`) allowed besides loopback pages.
    origins: Vec<String>,
    any_origin: bool,
}

impl Guard {
    /// A guard for a node on a machine called `hostname`, with the configured
    /// extra host names and browser origins (`*` in either allows any).
    pub fn new(hostname: Option<&str>, allowed_hosts: &[String], cors_origins: &[String]) -> Self {
        let mut names: Vec<String> = allowed_hosts.iter().map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
        if let Some(h) = hostname.map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase()).filter(|h| !h.is_empty()) {
            names.push(format!("{h}.local"));
            names.push(h);
        }
        Self {
            any_host: names.iter().any(|n| n == "*"),
            names,
            any_origin: cors_origins.iter().any(|o| o.trim() == "*"),
            origins: cors_origins.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).collect(),
        }
    }

    /// Whether a request naming `host` (a `Host` header's value) is for this node.
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        if name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        self.any_host || self.names.iter().any(|n| n == name)
    }

    /// Whether a browser page at `origin` may call this node (CORS uses the
    /// same answer).
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let o = origin.trim_end_matches('/').to_ascii_lowercase();
        self.any_origin || loopback_origin(&o) || self.origins.contains(&o)
    }

    /// `Err` with the reason when the request must be refused.
    fn check(&self, method: &Method, headers: &HeaderMap, authority: Option<&str>) -> Result<(), ApiError> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(authority);
        if let Some(host) = host
            && !self.host_allowed(host)
        {
            return Err(forbidden(
                "forbidden_host",
                format!(
                    "this node does not answer to the name {:?}; add it to allowed_hosts in the config file (or RBEE_ALLOWED_HOSTS) if it is really this machine",
                    host_name(host)
                ),
            ));
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        match headers.get(header::ORIGIN).map(|o| o.to_str().unwrap_or("")) {
            Some(origin) => {
                let same_origin = host.is_some_and(|h| origin_host(origin).is_some_and(|oh| oh.eq_ignore_ascii_case(h)));
                if same_origin || self.origin_allowed(origin) {
                    Ok(())
                } else {
                    Err(forbidden(
                        "cross_origin_request",
                        format!(
                            "requests from pages at {origin:?} may not change anything on this node; add the origin to cors_origins in the config file to allow it"
                        ),
                    ))
                }
            }
            None => match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
                Some(site) if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") => {
                    Err(forbidden("cross_origin_request", "requests from other sites' pages may not change anything on this node"))
                }
                _ => Ok(()),
            },
        }
    }
}

fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError { code: Some(code), ..ApiError::new(StatusCode::FORBIDDEN, "permission_error", message) }
}

/// The middleware: refuses requests for other names and cross-site changes.
pub async fn guard(State(g): State<std::sync::Arc<Guard>>, req: Request, next: Next) -> Response {
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    match g.check(req.method(), req.headers(), authority.as_deref()) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), reason = e.code.unwrap_or(""), "refused a browser request");
            e.into_response()
        }
    }
}

/// `host` without its port (`[::1]:80` → `::1`, `a.b:7833` → `a.b`).
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        // Two colons or more without brackets: a bare IPv6 address.
        Some((name, _)) if !name.contains(':') => name,
        _ => host,
    }
}

/// `host[:port]` of an origin (`http://a:1` → `a:1`).
fn origin_host(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    Some(rest.trim_end_matches('/'))
}

/// Pages on this machine: a local dev server, the desktop app's webview.
pub fn loopback_origin(origin: &str) -> bool {
    if matches!(origin, "tauri://localhost" | "http://tauri.localhost" | "https://tauri.localhost") {
        return true;
    }
    let Some(rest) = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) else { return false };
    let host = host_name(rest.trim_end_matches('/'));
    host == "localhost" || host == "::1" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn loopback_origins_only() {
        for o in ["http://localhost:5173", "http://127.0.0.1", "https://[::1]:8080", "tauri://localhost", "http://127.0.0.2:7833"] {
            assert!(loopback_origin(o), "{o}");
        }
        for o in ["http://localhost.evil.com", "http://192.168.1.5:7833", "null", "file://", "http://127.0.0.1.nip.io"] {
            assert!(!loopback_origin(o), "{o}");
        }
    }

    #[test]
    fn names_a_rebinding_page_would_use_are_refused() {
        let g = Guard::new(Some("PC-Anna"), &["rbee.office.lan".into()], &[]);
        for ok in [
            "127.0.0.1:7833",
            "localhost:7833",
            "LOCALHOST",
            "[::1]:7833",
            "10.0.0.7",
            "app.localhost:80",
            "pc-anna",
            "pc-anna.local:7833",
            "rbee.office.lan",
            "rbee.office.lan.:7833",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example:7833", "127.0.0.1.nip.io", "localhost.evil.com", "pc-anna.evil.com", "office.lan", ""] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        assert!(Guard::new(None, &["*".into()], &[]).host_allowed("anything.example"));
    }

    #[test]
    fn changes_from_other_origins_are_refused_and_sdks_pass() {
        let g = Guard::new(None, &[], &["https://webui.office.lan".into()]);
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let post = Method::POST;
        assert!(g.check(&post, &headers(&[("host", "127.0.0.1:7833")]), None).is_ok(), "curl");
        assert!(g.check(&post, &headers(&[("host", "127.0.0.1:7833"), ("origin", "http://127.0.0.1:7833")]), None).is_ok());
        assert!(g.check(&post, &headers(&[("host", "10.0.0.5:7833"), ("origin", "http://10.0.0.5:7833")]), None).is_ok(), "own page on the LAN");
        assert!(g.check(&post, &headers(&[("host", "127.0.0.1:7833"), ("origin", "https://webui.office.lan")]), None).is_ok());
        assert!(g.check(&post, &headers(&[("host", "127.0.0.1:7833"), ("origin", "https://evil.example")]), None).is_err());
        assert!(g.check(&post, &headers(&[("host", "127.0.0.1:7833"), ("origin", "null")]), None).is_err());
        assert!(g.check(&post, &headers(&[("host", "127.0.0.1:7833"), ("sec-fetch-site", "cross-site")]), None).is_err());
        assert!(
            g.check(&Method::GET, &headers(&[("host", "127.0.0.1:7833"), ("origin", "https://evil.example")]), None).is_ok(),
            "CORS decides what it may read"
        );
        assert!(g.check(&Method::GET, &headers(&[("host", "evil.example:7833")]), None).is_err());
    }
}
