//! The rentcar host: runs the car-rental bounded contexts as sandboxed
//! WebAssembly components and serves their HTTP API.
//!
//! Start with [`runtime::Runtime::load`], which compiles and links every
//! component of a [`config::Config`], then [`serve`] it on a listener. The
//! binary (`main.rs`) and the end-to-end tests do exactly that.

mod admin;
mod bindings;
pub mod bus;
pub mod component;
pub mod config;
mod database;
mod delivery;
mod engine;
mod error;
mod faults;
mod invocation;
mod links;
mod memory;
mod outbox;
mod policy;
pub mod registry;
mod router;
pub mod runtime;
mod server;
mod sql;
mod telemetry;
mod watch;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use runtime::Runtime;

/// Serves `runtime` on `listener` until `shutdown` resolves, then lets
/// in-flight requests (within `[server] drain_ms`) and deliveries finish. With `watch`, component files
/// that change on disk are swapped in.
pub async fn serve(
    listener: TcpListener,
    runtime: Runtime,
    watch: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let runtime = Arc::new(runtime);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    telemetry::start(&token, &tracker);
    delivery::start(&runtime, &token, &tracker);
    if watch {
        watch::start(runtime.clone(), token.clone(), &tracker)?;
    }
    runtime.set_ready();

    let app = router::router(runtime.clone());
    server::serve(listener, app, &runtime.config.server, shutdown).await;

    tracing::info!("draining event delivery");
    token.cancel();
    tracker.close();
    tracker.wait().await;
    tracing::info!("stopped");
    Ok(())
}
