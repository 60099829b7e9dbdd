//! Loading the system, and replacing a component while it runs.
//!
//! [`Runtime::load`] compiles every component, links its imports, runs its
//! `init` and installs it in the [`Registry`]; everything that can be wrong
//! with the configuration or the components is found there, before the port
//! is bound. [`Runtime::deploy`] takes a new version of one component
//! through the same steps (the readiness gate) off the request path, then
//! swaps it in atomically.

mod deploy;
pub mod watch;

pub use deploy::DeployError;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context as _, bail};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_config::WasiConfigVariables;

use crate::calls::faults::Faults;
use crate::calls::policy::Policy;
use crate::calls::remote::{self, Peers, RemoteCallee, Unverified};
use crate::calls::{self, Callee, LocalCallee};
use crate::capabilities;
use crate::config::{BusKind, ComponentConfig, Config, Link};
use crate::events::Stats;
use crate::events::embedded::SqliteBus;
use crate::events::kafka::KafkaBus;
use crate::events::log::{DeadLetters, EventBus, PartitionStats};
use crate::instance::engine::{self, EpochTicker};
use crate::instance::invocation::Invocation;
use crate::instance::memory::Budget;
use crate::instance::registry::Registry;
use crate::instance::slot::{INIT_DEADLINE, Loaded, Slot};
use crate::store::host_tables;
use crate::store::{self, Database};

pub struct Runtime {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub bus: Arc<dyn EventBus>,
    pub dead_letters: Arc<dyn DeadLetters>,
    pub stats: Arc<Stats>,
    pub faults: Arc<Faults>,
    /// The call policy of every link from a component of this node, with
    /// its circuit.
    pub policies: Vec<Arc<Policy>>,
    /// The other nodes, when there are.
    pub peers: Option<Arc<Peers>>,
    /// What all instances may hold in linear memory at once.
    memory: Arc<Budget>,
    engine: Engine,
    /// One deployment at a time: a swap must not race another.
    deploying: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    /// Drives deadlines for as long as the runtime lives.
    _ticker: EpochTicker,
}

/// A consumer's place in one topic of the log.
pub struct SubscriptionLog {
    pub consumer: String,
    pub topic: String,
    /// Per partition, where the consumer stands and what the log holds.
    pub partitions: Vec<PartitionStats>,
}

impl SubscriptionLog {
    /// Events after the consumer's positions, in all partitions.
    pub fn lag(&self) -> u64 {
        self.partitions.iter().map(|p| p.lag).sum()
    }
}

impl Runtime {
    /// Loads every component of `config`; fails with an actionable message
    /// on the first component that cannot run.
    pub async fn load(config: Config) -> anyhow::Result<Runtime> {
        let config = Arc::new(config);
        let data_dir = &config.server.data_dir;
        std::fs::create_dir_all(data_dir.join("deployed"))
            .map_err(|err| read_only(err, data_dir))
            .with_context(|| format!("failed to create data directory {}", data_dir.display()))?;
        check_writable(data_dir)?;
        let max_memory = config.local().map(|(_, c)| c.limits.memory_bytes()).max().unwrap_or(0);
        // Every component's `max_instances`, and room for the `init` of a
        // version being deployed and a reset, beside them.
        let instances = config.local().map(|(_, c)| c.limits.max_instances + 2).sum();
        let engine = engine::build(max_memory, instances, &config.cache_dir())?;
        store::limit_heap(config.server.sqlite_heap_mib * 1024 * 1024);
        let memory = host_memory_budget(&config);
        tracing::info!(
            memory_budget_mib = memory / (1024 * 1024),
            "memory budget of all instances"
        );
        // Dead letters stay on this machine whichever the bus.
        let local = Arc::new(SqliteBus::open(&data_dir.join("bus.db"), config.bus.partitions)?);
        let bus: Arc<dyn EventBus> = match config.bus.kind {
            BusKind::Embedded => local.clone(),
            BusKind::Kafka => Arc::new(KafkaBus::new(&config.bus)?),
        };
        let runtime = Runtime {
            memory: Arc::new(Budget::new(memory)),
            bus,
            dead_letters: local,
            registry: Arc::default(),
            stats: Arc::default(),
            faults: Arc::default(),
            policies: config
                .links
                .iter()
                .filter(|link| config.runs_here(&link.from))
                .map(|link| Arc::new(Policy::new(link.clone())))
                .collect(),
            peers: match config.cluster_secret() {
                Some(secret) => Some(Arc::new(Peers::new(secret)?)),
                None => None,
            },
            _ticker: EpochTicker::start(engine.clone()),
            engine,
            deploying: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            config,
        };
        for name in load_order(&runtime.config) {
            runtime
                .load_component(&name)
                .await
                .with_context(|| format!("component `{name}`"))?;
        }
        for loaded in runtime.registry.all() {
            let pending = host_tables::rewind_pending(&*loaded.slot.db.lock().await)?;
            if pending {
                tracing::warn!(component = %loaded.name(), "finishing a reset the host stopped in the middle of");
                runtime.rewind(&loaded).await?;
            }
        }
        Ok(runtime)
    }

    /// The second half of a reset (the first, `Loaded::reset`, emptied the
    /// component and its inbox and left a row in `_rc_rewind`, in one
    /// transaction): every subscription of the component starts over from
    /// the beginning of the log, then the row goes. Start-up finishes a
    /// reset that a crash interrupted, so the two commits act as one.
    pub async fn rewind(&self, loaded: &Loaded) -> anyhow::Result<()> {
        let name = loaded.name();
        for topic in self.config.components[name].topics() {
            self.bus.rewind(name, topic).await?;
            self.stats.update(name, topic, |s| s.positions = None);
        }
        host_tables::rewound(&*loaded.slot.db.lock().await)?;
        loaded.slot.resets.send_modify(|generation| *generation += 1);
        Ok(())
    }

    async fn load_component(&self, name: &str) -> anyhow::Result<()> {
        let settings = &self.config.components[name];
        // A version deployed through the admin API outlives restarts.
        let deployed = self.deployed_path(name);
        let path = if deployed.is_file() { &deployed } else { &settings.path };
        if !path.is_file() {
            bail!(
                "file {} not found; build the components with `cargo xtask build`",
                path.display()
            );
        }
        let wasm = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if path == &deployed {
            tracing::info!(component = name, path = %path.display(), "loading the deployed version");
        }
        let db_path = self.config.server.data_dir.join(format!("{name}.db"));
        let config = wasi_config(settings);
        let db = Database::open(&db_path)?;
        db.limit_size(u64::from(settings.limits.database_mib) * 1024 * 1024)?;
        let slot = Arc::new(Slot::new(name, db, config, settings.limits, self.memory.clone()));
        let loaded = self.prepare(slot, wasm.into()).await?;
        // Nothing serves yet: `init` migrates the database in place.
        loaded.init(INIT_DEADLINE).await?;
        self.registry.install(Arc::new(loaded));
        Ok(())
    }

    /// Compiles `wasm` off the request path, links it, and checks it
    /// against the routes, subscriptions and links of its component. Its
    /// `init` has not run yet; nothing is installed.
    async fn prepare(&self, slot: Arc<Slot>, wasm: Arc<[u8]>) -> anyhow::Result<Loaded> {
        let name = slot.name.to_string();
        let version = digest(&wasm);
        let component = compile(&self.engine, &name, wasm).await?;
        let mut linker = Linker::<Invocation>::new(&self.engine);
        capabilities::add_to_linker(&mut linker)?;
        for policy in self.policies.iter().filter(|policy| policy.link.from == name) {
            let (functions, target) = self.callee(&component, &policy.link).await?;
            calls::define(&mut linker, functions, policy.clone(), target, self.faults.clone())?;
        }
        for link in self.config.links.iter().filter(|link| link.to == name) {
            if let Some((caller, _)) = self.registry.entry(&link.from) {
                calls::check(&self.engine, caller.component(), &component, link)?;
            } else if let (Some(_), Some((running, _))) = (self.config.remote(&link.from), self.registry.entry(&name)) {
                remote::check_same_export(&self.engine, running.component(), &component, &link.interface)?;
            }
        }
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context(
                "it imports something the host does not provide: components may import WASI, \
             wasi:http/types, rentcar:host/sql, rentcar:host/events, wasi:config/store, \
             and the interfaces of their links in runtime.toml",
            )?;
        let loaded = Loaded::new(slot, pre, version);
        let settings = &self.config.components[&name];
        if !settings.routes.is_empty() && loaded.proxy.is_none() {
            bail!("it has routes but does not export wasi:http/incoming-handler");
        }
        if !settings.subscribe.is_empty() && !loaded.handles_events() {
            bail!("it subscribes to topics but does not export rentcar:host/event-handler");
        }
        Ok(loaded)
    }

    /// What answers the calls `caller` makes through `link`, once checked,
    /// and the functions it imports: the callee here, or on its node.
    async fn callee(&self, caller: &Component, link: &Link) -> anyhow::Result<(Vec<String>, Arc<dyn Callee>)> {
        let (Some((node_name, node)), Some(peers)) = (self.config.remote(&link.to), &self.peers) else {
            let callee = self.registry.entry(&link.to).context("callee loads first")?.0;
            let functions = calls::check(&self.engine, caller, callee.component(), link)?;
            let local = LocalCallee::new(self.registry.clone(), &link.to, &link.interface);
            return Ok((functions, Arc::new(local)));
        };
        let imported = calls::imported(&self.engine, caller, link)?;
        let remote = RemoteCallee::new(peers.clone(), node, link, &imported)?;
        match remote.verify().await {
            Ok(()) => tracing::info!(to = %link.to, node = node_name, "checked the link against the callee's node"),
            Err(Unverified::Mismatch(message)) => bail!(message),
            Err(unreachable @ Unverified::Unreachable(..)) => tracing::warn!(
                to = %link.to, node = node_name, cause = %unreachable,
                "cannot check the link yet; every call is checked by the callee's node"
            ),
        }
        let functions = imported.into_iter().map(|(name, _)| name).collect();
        Ok((functions, Arc::new(remote)))
    }

    /// Where every subscription stands in the log, for the admin API and
    /// the metrics.
    pub async fn subscription_logs(&self) -> anyhow::Result<Vec<SubscriptionLog>> {
        let mut all = Vec::new();
        for (consumer, settings) in self.config.local() {
            for topic in settings.topics() {
                let positions = match self.stats.get(consumer, topic).positions {
                    Some(positions) => positions,
                    None => self.bus.committed(consumer, topic).await?,
                };
                all.push(SubscriptionLog {
                    consumer: consumer.clone(),
                    topic: topic.to_string(),
                    partitions: self.bus.partitions(topic, &positions).await?,
                });
            }
        }
        Ok(all)
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
    let local: Vec<&String> = config.local().map(|(name, _)| name).collect();
    while order.len() < local.len() {
        for &name in &local {
            let placed = |n: &String| order.contains(n) || !config.runs_here(n);
            let ready = config.links.iter().filter(|l| &l.from == name).all(|l| placed(&l.to));
            if !placed(name) && ready {
                order.push(name.clone());
            }
        }
    }
    order
}

/// Compiles on a blocking thread; the engine's cache makes a restart with
/// unchanged components skip the work.
async fn compile(engine: &Engine, name: &str, wasm: Arc<[u8]>) -> anyhow::Result<Component> {
    let started = Instant::now();
    let size_kib = wasm.len() / 1024;
    tracing::info!(component = name, size_kib, "compiling");
    let engine = engine.clone();
    let mut compiling = tokio::task::spawn_blocking(move || Component::new(&engine, &wasm));
    // A long compilation says it is still at work.
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS, PROGRESS);
    let component = loop {
        tokio::select! {
            done = &mut compiling => break done?,
            _ = progress.tick() => {
                tracing::info!(component = name, size_kib, elapsed_s = started.elapsed().as_secs(), "still compiling");
            }
        }
    };
    let component = component
        .map_err(anyhow::Error::from)
        .context("not a valid WebAssembly component")?;
    tracing::info!(
        component = name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "compiled"
    );
    Ok(component)
}

/// How often a long compilation reports progress.
const PROGRESS: std::time::Duration = std::time::Duration::from_secs(2);

/// SHA-256 of the wasm, in hex: a version's identity.
fn digest(wasm: &[u8]) -> String {
    Sha256::digest(wasm).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Fails with a clear message when the data directory cannot be written
/// (SQLite would only say "disk I/O error" at the first write).
fn check_writable(data_dir: &Path) -> anyhow::Result<()> {
    let probe = data_dir.join(".write-test");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|err| read_only(err, data_dir))
        .with_context(|| format!("cannot write to data directory {}", data_dir.display()))
}

/// Names a read-only file system or directory as such.
fn read_only(err: std::io::Error, data_dir: &Path) -> anyhow::Error {
    match err.kind() {
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("data directory {} is read-only ({err})", data_dir.display())
        }
        _ => err.into(),
    }
}

/// What a component reads through `wasi:config/store`.
fn wasi_config(settings: &ComponentConfig) -> WasiConfigVariables {
    settings.config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// `[server] memory_budget_mib`, or the components' budgets together, at
/// most half the machine's memory.
fn host_memory_budget(config: &Config) -> usize {
    const MIB: usize = 1024 * 1024;
    if let Some(mib) = config.server.memory_budget_mib {
        return usize::try_from(mib).unwrap_or(usize::MAX / MIB) * MIB;
    }
    let components: usize = config.local().map(|(_, c)| c.limits.memory_budget_bytes()).sum();
    let info = rustix::system::sysinfo();
    let machine = (info.totalram as usize).saturating_mul(info.mem_unit.max(1) as usize);
    components.min(machine / 2).max(MIB)
}
