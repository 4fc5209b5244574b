//! Running the API on a listener until shut down.

use std::future::Future;
use std::net::SocketAddr;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::api::{self, AppState};

/// Serves the API on `listener` until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish for up to the configured grace
/// period, and returns.
///
/// # Errors
/// When accepting connections fails.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let grace = state.config.shutdown_grace;
    let stopping = state.clone();
    let app = api::router(state);
    // Streamed tokens are small writes that must leave at once, not wait
    // for the previous segment's ACK (Nagle).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let begun = stopping.stopped();
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(async move {
        shutdown.await;
        stopping.begin_shutdown();
        tracing::info!(grace_secs = grace.as_secs_f64(), "shutting down: no new connections; finishing requests in flight");
    });
    let deadline = async {
        begun.await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = server.into_future() => r,
        () = deadline => {
            tracing::warn!("requests still running after the shutdown grace period; stopping them");
            Ok(())
        }
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
