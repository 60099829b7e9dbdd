//! Loading the system: compile every component, link its imports, run its
//! `init`, and keep the result in the [`Registry`].
//!
//! Everything that can be wrong with the configuration or the components is
//! found here, before the port is bound.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context as _, bail};
use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::{WasiHttp, WasiHttpView};

use crate::bindings;
use crate::bus::{EventBus, SqliteBus};
use crate::component::{Loaded, Registry, Slot};
use crate::config::Config;
use crate::database::Database;
use crate::delivery::Stats;
use crate::engine::{self, EpochTicker};
use crate::faults::Faults;
use crate::invocation::Invocation;
use crate::links;
use crate::policy::Policy;

pub struct Runtime {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub bus: Arc<dyn EventBus>,
    pub stats: Arc<Stats>,
    pub faults: Arc<Faults>,
    /// The call policy of every link, with its circuit.
    pub policies: Vec<Arc<Policy>>,
    ready: AtomicBool,
    /// Drives deadlines for as long as the runtime lives.
    _ticker: EpochTicker,
}

impl Runtime {
    /// Loads every component of `config`; fails with an actionable message
    /// on the first component that cannot run.
    pub async fn load(config: Config) -> anyhow::Result<Runtime> {
        let config = Arc::new(config);
        let data_dir = &config.server.data_dir;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("failed to create data directory {}", data_dir.display()))?;
        let max_memory = config
            .components
            .values()
            .map(|c| c.limits.memory_bytes())
            .max()
            .unwrap_or(0);
        let engine = engine::build(max_memory, &config.cache_dir())?;
        let ticker = EpochTicker::start(engine.clone());
        let bus = Arc::new(SqliteBus::open(&data_dir.join("bus.db"))?);
        let registry = Arc::new(Registry::default());
        let faults = Arc::new(Faults::default());
        let mut policies = Vec::new();

        for name in load_order(&config) {
            let shared = Shared {
                registry: &registry,
                faults: &faults,
                policies: &mut policies,
            };
            let loaded = load_component(&engine, &config, &name, shared)
                .await
                .with_context(|| format!("component `{name}`"))?;
            registry.insert(Arc::new(loaded));
        }
        Ok(Runtime {
            config,
            registry,
            bus,
            stats: Arc::default(),
            faults,
            policies,
            ready: AtomicBool::new(false),
            _ticker: ticker,
        })
    }

    /// The admin API's bearer token: `RENTCAR_ADMIN_TOKEN`, else the
    /// config's `[admin] token`.
    pub fn admin_token(&self) -> Option<&str> {
        self.config.admin.token.as_deref().filter(|token| !token.is_empty())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }
}

/// Callees before their callers, so that a caller's link can be checked
/// against the callee's exports. The config has no cycles.
fn load_order(config: &Config) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    while order.len() < config.components.len() {
        for name in config.components.keys() {
            let placed = |n: &String| order.contains(n);
            let ready = config.links.iter().filter(|l| &l.from == name).all(|l| placed(&l.to));
            if !placed(name) && ready {
                order.push(name.clone());
            }
        }
    }
    order
}

/// What a component's links need from the runtime.
struct Shared<'a> {
    registry: &'a Arc<Registry>,
    faults: &'a Arc<Faults>,
    policies: &'a mut Vec<Arc<Policy>>,
}

async fn load_component(engine: &Engine, config: &Config, name: &str, shared: Shared<'_>) -> anyhow::Result<Loaded> {
    let registry = shared.registry;
    let settings = &config.components[name];
    let component = compile(engine, &settings.path).await?;
    let mut linker = Linker::<Invocation>::new(engine);
    add_capabilities(&mut linker)?;
    for link in config.links.iter().filter(|link| link.from == name) {
        let callee = registry.get(&link.to).context("callee loads first")?;
        let policy = Arc::new(Policy::new(link.clone()));
        shared.policies.push(policy.clone());
        let (registry, faults) = (registry.clone(), shared.faults.clone());
        links::define(
            &mut linker,
            engine,
            &component,
            callee.component(),
            policy,
            registry,
            faults,
        )?;
    }
    let pre = linker
        .instantiate_pre(&component)
        .map_err(anyhow::Error::from)
        .context(
            "it imports something the host does not provide: components may import WASI, \
         wasi:http/types, rentcar:host/sql, rentcar:host/events, wasi:config/store, \
         and the interfaces of their links in runtime.toml",
        )?;

    let db_path = config.server.data_dir.join(format!("{name}.db"));
    let config: WasiConfigVariables = settings.config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let slot = Arc::new(Slot::new(name, Database::open(&db_path)?, config, settings.limits));
    let loaded = Loaded::new(slot, pre);
    if !settings.routes.is_empty() && loaded.proxy.is_none() {
        bail!("it has routes but does not export wasi:http/incoming-handler");
    }
    if !settings.subscribe.is_empty() && !loaded.handles_events() {
        bail!("it subscribes to topics but does not export rentcar:host/event-handler");
    }
    loaded.init().await?;
    Ok(loaded)
}

/// What every component may import: WASI without any ambient authority,
/// the types of `wasi:http` (but no outgoing requests), its database, its
/// outbox and its configuration.
fn add_capabilities(linker: &mut Linker<Invocation>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    let options = wasmtime_wasi_http::p2::bindings::LinkOptions::default();
    wasmtime_wasi_http::p2::bindings::http::types::add_to_linker::<_, WasiHttp>(
        linker,
        &options.into(),
        Invocation::http,
    )?;
    bindings::sql::add_to_linker::<_, HasSelf<Invocation>>(linker, |invocation| invocation)?;
    bindings::events::add_to_linker::<_, HasSelf<Invocation>>(linker, |invocation| invocation)?;
    wasmtime_wasi_config::add_to_linker(linker, Invocation::config)?;
    Ok(())
}

async fn compile(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    if !path.is_file() {
        bail!(
            "file {} not found; build the components with `cargo xtask build`",
            path.display()
        );
    }
    let started = Instant::now();
    let (engine, owned) = (engine.clone(), path.to_owned());
    let component = tokio::task::spawn_blocking(move || Component::from_file(&engine, &owned))
        .await?
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{} is not a valid WebAssembly component", path.display()))?;
    tracing::info!(path = %path.display(), elapsed_ms = started.elapsed().as_millis() as u64, "compiled");
    Ok(component)
}

/// The distinct topics some component subscribes to.
pub fn topics(config: &Config) -> BTreeSet<&str> {
    config
        .components
        .values()
        .flat_map(|c| c.subscribe.iter().map(String::as_str))
        .collect()
}
