//! Running the API on a listener until shut down, with the limits that keep
//! a node answering while someone floods it.
//!
//! axum's own `serve` has no read timeouts and no connection limit, so this
//! module accepts connections itself and hands each to hyper's HTTP/1
//! server:
//!
//! - **Header read timeout** (`header_timeout_secs`): a connection that has
//!   not sent a whole request head within it is closed (slowloris), and so is
//!   a keep-alive connection idle that long.
//! - **Connection limit** (`max_connections`, and never more than half the
//!   process's open-file limit): at the limit, a new connection closes the
//!   oldest one that has no request in flight (idle, or still sending its
//!   headers), so a flood of half-open connections cannot lock out `/health`
//!   or a real client; when every connection is busy the newcomer gets a 503.
//!
//! Both act before authentication: nothing here reads a key.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::api;
use crate::service::Service;

/// Serves the API on `listener` until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish for up to the configured grace
/// period, and returns.
///
/// # Errors
/// None today: a failed accept (out of file descriptors, say) is logged and
/// retried, as the node must keep serving.
pub async fn serve(listener: TcpListener, state: Service, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let grace = state.config.shutdown_grace;
    let limit = connection_limit(state.config.max_connections);
    let header_timeout = state.config.header_timeout;
    let app = api::router(state.clone());
    let conns = Arc::new(Connections::default());
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    tracing::debug!(limit, header_timeout_secs = header_timeout.as_secs_f64(), "accepting connections");
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: the node must not spin or die.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Streamed tokens are small writes that must leave at once, not wait
        // for the previous segment's ACK (Nagle).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let Some(conn) = conns.admit(limit) else {
            tracker.spawn(refuse(tcp));
            continue;
        };
        tracker.spawn(connection(tcp, peer, conn, conns.clone(), app.clone(), header_timeout, stop.clone()));
    }
    state.begin_shutdown();
    tracing::info!(grace_secs = grace.as_secs_f64(), "shutting down: no new connections; finishing requests in flight");
    drop(listener);
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("requests still running after the shutdown grace period; stopping them");
    }
    Ok(())
}

/// At most half the open-file limit: the rest is for model files, the
/// catalog, the swarm's sockets and the process itself.
fn connection_limit(configured: usize) -> usize {
    let files = open_file_limit().unwrap_or(u64::MAX);
    configured.min(usize::try_from(files / 2).unwrap_or(usize::MAX)).max(1)
}

/// The soft `RLIMIT_NOFILE` (Linux: from /proc, no libc call needed).
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// One accepted connection as the limit sees it.
#[derive(Debug)]
struct Conn {
    id: u64,
    /// Requests in flight on it (a streamed answer counts until its body ends).
    busy: Arc<AtomicUsize>,
    close: CancellationToken,
}

#[derive(Debug, Default)]
struct Connections {
    next: AtomicU64,
    /// Open connections by id.
    open: Mutex<HashMap<u64, Open>>,
}

#[derive(Debug)]
struct Open {
    accepted: Instant,
    busy: Arc<AtomicUsize>,
    close: CancellationToken,
}

impl Connections {
    /// Room for one more connection: at the limit the oldest one without a
    /// request in flight is closed to make it; `None` when all are busy.
    fn admit(&self, limit: usize) -> Option<Conn> {
        let mut open = self.open.lock().expect("connections lock");
        if open.len() >= limit {
            let idle = open.iter().filter(|(_, o)| o.busy.load(Ordering::Acquire) == 0).min_by_key(|(_, o)| o.accepted).map(|(id, _)| *id);
            let Some(id) = idle else {
                tracing::warn!(limit, "connection refused: every connection has a request in flight");
                return None;
            };
            if let Some(o) = open.remove(&id) {
                tracing::debug!(limit, "at the connection limit: closed the oldest idle connection");
                o.close.cancel();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (busy, close) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
        open.insert(id, Open { accepted: Instant::now(), busy: busy.clone(), close: close.clone() });
        Some(Conn { id, busy, close })
    }

    fn remove(&self, id: u64) {
        self.open.lock().expect("connections lock").remove(&id);
    }
}

/// Answers a connection the node has no room for, then closes it.
async fn refuse(mut tcp: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body =
        r#"{"error":{"message":"this node has too many connections open; retry shortly","type":"server_error","param":null,"code":"too_many_connections"}}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    conn: Conn,
    conns: Arc<Connections>,
    app: axum::Router,
    header_timeout: std::time::Duration,
    stop: CancellationToken,
) {
    let busy = conn.busy.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        let guard = Busy::enter(busy.clone());
        let app = app.clone();
        async move {
            let res = app.oneshot(req).await.unwrap_or_else(|e| match e {});
            // The request counts as in flight until its body has been sent.
            Ok::<_, std::convert::Infallible>(res.map(|b| Body::new(Tracked { inner: b, _busy: guard })))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    let http = builder.serve_connection(TokioIo::new(tcp), service);
    let mut http = std::pin::pin!(http);
    let mut graceful = false;
    loop {
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            () = conn.close.cancelled() => break,
            () = stop.cancelled(), if !graceful => {
                graceful = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
    conns.remove(conn.id);
}

/// Counts a request in flight on its connection until dropped.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(n: Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        Self(n)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted until it is done.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_oldest_idle_connection_makes_room() {
        let c = Connections::default();
        let a = c.admit(2).unwrap();
        let b = c.admit(2).unwrap();
        a.busy.fetch_add(1, Ordering::AcqRel);
        // a is busy: b (idle) is closed for the newcomer.
        let n = c.admit(2).unwrap();
        assert!(b.close.is_cancelled() && !a.close.is_cancelled());
        n.busy.fetch_add(1, Ordering::AcqRel);
        // Everyone busy: refused, nobody closed.
        assert!(c.admit(2).is_none());
        assert!(!a.close.is_cancelled() && !n.close.is_cancelled());
        c.remove(a.id);
        assert!(c.admit(2).is_some());
    }
}
