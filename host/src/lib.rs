//! The rentcar host: runs the car-rental bounded contexts as sandboxed
//! WebAssembly components and serves their HTTP API.
//!
//! Start with [`runtime::Runtime::load`], which compiles and links every
//! component of a [`config::Config`], and [`Gateway::load`], which reads
//! the keys tokens are checked with; then [`serve`] them on a listener. The
//! binary (`main.rs`) and the end-to-end tests do exactly that.

// The layers, each importing only those below it (checked by
// `tests/layers.rs`); ARCHITECTURE.md has the map.
mod bindings;
mod calls;
mod capabilities;
mod clock;
pub mod config;
mod events;
mod http;
mod instance;
pub mod runtime;
mod store;
mod telemetry;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use http::gateway::{Gateway, parse_ttl};
pub use runtime::Runtime;

/// A token for `sub` with `roles`, valid for `ttl`, signed with the HS256
/// secret of `config` (configured, or generated in its data directory).
pub fn token(config: &Config, sub: &str, roles: &[String], ttl: std::time::Duration) -> anyhow::Result<String> {
    http::gateway::token(config, sub, roles, ttl)
}

/// Serves `runtime` on `listener` until `shutdown` resolves, then lets
/// in-flight requests (within `[server] drain_ms`) and deliveries finish. With `watch`, component files
/// that change on disk are swapped in.
pub async fn serve(
    listener: TcpListener,
    runtime: Runtime,
    gateway: Gateway,
    watch: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let runtime = Arc::new(runtime);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    telemetry::start(&token, &tracker);
    let pipeline = events::Pipeline {
        config: runtime.config.clone(),
        registry: runtime.registry.clone(),
        bus: runtime.bus.clone(),
        dead_letters: runtime.dead_letters.clone(),
        stats: runtime.stats.clone(),
    };
    events::start(&pipeline, &token, &tracker);
    if watch {
        runtime::watch::start(runtime.clone(), token.clone(), &tracker)?;
    }
    runtime.set_ready();

    let app = http::router::router(runtime.clone(), Arc::new(gateway));
    http::server::serve(listener, app, &runtime.config.server, shutdown).await;

    tracing::info!("draining event delivery");
    token.cancel();
    tracker.close();
    tracker.wait().await;
    runtime.bus.close().await;
    tracing::info!("stopped");
    Ok(())
}
