//! The listener: accepts connections and serves each with HTTP/1.1 within
//! bounds that neither a careless nor a hostile client can stretch.
//!
//! - A connection that sends nothing for `idle_timeout` while the host
//!   waits for it, new or kept alive after an answer, is closed
//!   (`idle.rs`).
//! - A connection must send a request's headers within `header_timeout`
//!   of the host starting to wait for them: slowloris connections, which
//!   drip bytes, are closed too (bodies are bounded by the router, within
//!   the invocation's deadline).
//! - A write that makes no progress for `header_timeout` (a client that
//!   does not read its answer) closes the connection too.
//! - At most `max_connections` are open at once, fewer if the process may
//!   not open that many files; beyond, new connections wait in the
//!   kernel's backlog, and the host says so in its log.
//! - At shutdown, idle connections close at once and requests in flight
//!   get `drain` to finish; then the rest are dropped.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_io_timeout::TimeoutStream;

use axum::Extension;
use tower::Layer as _;

use super::gateway::ClientAddr;
use super::idle::IdleTimeout;
use super::metrics::Throttle;
use crate::config::Server;

/// Files the host keeps for itself beside its connections: databases and
/// their journals, component files, outgoing connections, the log.
const RESERVED_FILES: u64 = 256;

/// How often "connection limit reached" may be logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let header_timeout = Duration::from_millis(config.header_timeout_ms);
    let idle_timeout = Duration::from_millis(config.idle_timeout_ms);
    let max_connections = connection_cap(config.max_connections);
    tracing::info!(
        max_connections,
        header_timeout_ms = config.header_timeout_ms,
        idle_timeout_ms = config.idle_timeout_ms,
        "accepting connections"
    );
    let slots = Arc::new(Semaphore::new(max_connections));
    let warned = Throttle::new(WARN_EVERY);
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);

    tokio::pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if warned.claim(Instant::now()) {
                    tracing::warn!(
                        max_connections,
                        "connection limit reached: new connections wait until one closes"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(err) => {
                    // Out of files, say: wait instead of spinning.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(header_timeout));
        let io = TokioIo::new(IdleTimeout::new(Box::pin(stream), idle_timeout));
        let app = Extension(ClientAddr(peer)).layer(app.clone());
        let connection = builder.serve_connection(io, TowerToHyperService::new(app));
        let connection = graceful.watch(connection);
        tokio::spawn(serve_connection(connection, slot));
    }
    drop(listener);

    let drain = Duration::from_millis(config.drain_ms);
    tracing::info!(drain_ms = config.drain_ms, "closing connections");
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            open = max_connections - slots.available_permits(),
            "requests still in flight after the drain; dropping their connections"
        );
    }
}

async fn serve_connection(connection: impl Future<Output = hyper::Result<()>>, _slot: OwnedSemaphorePermit) {
    if let Err(err) = connection.await {
        // Timeouts, resets and malformed requests: the client's doing.
        tracing::debug!(error = %err, "connection closed");
    }
}

/// `configured`, or fewer if the process may not open that many files
/// besides its own (after raising its soft limit as far as it may).
fn connection_cap(configured: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut files = getrlimit(Resource::Nofile);
    if files.current < files.maximum {
        files.current = files.maximum;
        let _ = setrlimit(Resource::Nofile, files);
        files = getrlimit(Resource::Nofile);
    }
    let Some(open_files) = files.current else {
        return configured;
    };
    let affordable = open_files.saturating_sub(RESERVED_FILES).max(1);
    if (configured as u64) > affordable {
        tracing::warn!(
            configured,
            open_files,
            "the file limit allows only {affordable} connections; serving at most that many"
        );
        return affordable as usize;
    }
    configured
}
