//! A stand-in for the Hugging Face hub's download protocol on a loopback
//! port, for tests of pulls (the engine's store and the node's pull API).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use rbee_engine::store::hash_file;

/// A stand-in for the hub: serves one file at `/{owner}/{repo}/resolve/{rev}/{file}`
/// with range requests, and can cut one transfer off halfway.
#[derive(Clone)]
pub struct Hub {
    pub bytes: Arc<Vec<u8>>,
    pub etag: String,
    pub ranges: Arc<Mutex<Vec<String>>>,
    /// The first data request starting at this byte is cut off halfway.
    pub cut_at: Arc<AtomicUsize>,
    /// Bytes per second each data response is paced at (0: as fast as it goes).
    pub pace: Arc<AtomicUsize>,
    /// Bytes of paced responses handed to the connection so far.
    pub sent: Arc<AtomicUsize>,
}

async fn resolve(State(hub): State<Hub>, UrlPath((_owner, _repo, _rev, _file)): UrlPath<(String, String, String, String)>, headers: HeaderMap) -> Response {
    let len = hub.bytes.len();
    let range = headers.get("range").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    hub.ranges.lock().unwrap().push(range.clone());
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((s, e)) => {
            let s: usize = s.parse().unwrap();
            let e: usize = if e.is_empty() { len - 1 } else { e.parse::<usize>().unwrap().min(len - 1) };
            (s, e)
        }
        None => (0, len - 1),
    };
    let body = hub.bytes[start..=end].to_vec();
    let builder = Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header("x-repo-commit", "0123456789abcdef0123456789abcdef01234567")
        .header("etag", format!("\"{}\"", hub.etag))
        .header("content-range", format!("bytes {start}-{end}/{len}"))
        .header("content-length", body.len().to_string());
    if range != "bytes=0-0" && hub.cut_at.compare_exchange(start, usize::MAX, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
        // Half the chunk, then the connection breaks.
        let half = body[..body.len() / 2].to_vec();
        let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(axum::body::Bytes::from(half)), Err(std::io::Error::other("connection cut"))]);
        return builder.body(Body::from_stream(stream)).unwrap();
    }
    let pace = hub.pace.load(Ordering::SeqCst);
    if pace > 0 && range != "bytes=0-0" {
        // 64 KiB pieces, each after its share of a second.
        let pieces: Vec<axum::body::Bytes> = body.chunks(64 << 10).map(axum::body::Bytes::copy_from_slice).collect();
        let wait = std::time::Duration::from_secs_f64((64 << 10) as f64 / pace as f64);
        let sent = hub.sent.clone();
        let stream = futures_util::stream::iter(pieces).then(move |piece| {
            let sent = sent.clone();
            async move {
                tokio::time::sleep(wait).await;
                sent.fetch_add(piece.len(), Ordering::SeqCst);
                Ok::<_, std::io::Error>(piece)
            }
        });
        return builder.body(Body::from_stream(stream)).unwrap();
    }
    builder.body(Body::from(body)).unwrap()
}

/// Serves `hub` on an ephemeral loopback port; returns its endpoint URL.
pub async fn serve(hub: Hub) -> String {
    let app = axum::Router::new().route("/{owner}/{repo}/resolve/{rev}/{*file}", axum::routing::get(resolve)).with_state(hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A hub serving the file at `path`.
pub fn hub_for(path: &std::path::Path) -> Hub {
    Hub {
        bytes: Arc::new(std::fs::read(path).unwrap()),
        etag: hash_file(path).unwrap(),
        ranges: Arc::default(),
        cut_at: Arc::new(AtomicUsize::new(usize::MAX)),
        pace: Arc::new(AtomicUsize::new(0)),
        sent: Arc::new(AtomicUsize::new(0)),
    }
}

/// A hub that has no files: every download is a 404. Returns its endpoint URL.
pub async fn serve_empty() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new()).await.unwrap() });
    format!("http://{addr}")
}
