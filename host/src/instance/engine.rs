//! The wasmtime `Engine` every component shares, and the epoch ticker that
//! drives deadlines and cooperative yielding.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. A running guest yields to the async runtime
/// at every tick, and its deadline is checked at every tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Dirty bytes of each freed linear memory reset in place (copied back from
/// the image, found by `PAGEMAP_SCAN`) rather than decommitted, so that the
/// next instance in the slot does not fault them in again. A Rust instance
/// dirties well under 1 MiB; a Python one (componentize-py) several MiB of
/// its 13 MiB image on every request, and keeping them took loyalty from
/// 166 to 199 reads/s at one connection. What a free slot keeps is bounded:
/// slots are reused by the same component first, so a component's slots
/// number at most its peak concurrent instances, each keeping at most what
/// it dirtied.
const KEEP_RESIDENT: usize = 32 * 1024 * 1024;
/// The same for tables (a Python interpreter's function table is large).
const TABLE_KEEP_RESIDENT: usize = 1024 * 1024;
/// Freed slots decommitted together, in one round of TLB flushes.
const DECOMMIT_BATCH: usize = 32;

/// Builds the engine: async (guests run on fibers, so a slow guest never
/// blocks a host thread), epoch interruption, the pooling allocator, and an
/// on-disk cache of compiled code keyed by content digest.
///
/// The pool holds `instances` component instances at once (each request,
/// call and delivery has its own). A Rust component is three core
/// instances (the guest, and the shim and fixup modules that wire its
/// imports), one of them with a memory.
pub fn build(max_memory_bytes: usize, instances: u32, cache_dir: &Path) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);

    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(instances)
        .total_core_instances(instances * 4)
        .total_memories(instances * 2)
        .total_tables(instances * 4)
        .total_stacks(instances)
        .max_memory_size(max_memory_bytes)
        // Reset a freed instance's dirty pages by copying instead of with
        // madvise, and batch the decommits that remain: every madvise makes
        // the kernel flush the TLB of every core (IPIs), which dominated a
        // profile of small requests. Memory is still wiped between instances.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .decommit_batch_size(DECOMMIT_BATCH)
        .pagemap_scan(Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));

    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("failed to create cache directory {}", cache_dir.display()))?;
    // wasmtime's cache wants an absolute path; the config's may be relative.
    let cache_dir = std::path::absolute(cache_dir)
        .with_context(|| format!("failed to resolve cache directory {}", cache_dir.display()))?;
    let mut cache = CacheConfig::new();
    cache.with_directory(&cache_dir);
    config.cache(Some(
        Cache::new(cache)
            .map_err(anyhow::Error::from)
            .context("failed to open the compilation cache")?,
    ));

    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("failed to create the wasmtime engine")
}

/// Increments the engine's epoch every [`EPOCH_TICK`] on a thread of its own;
/// stops and joins the thread when dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            // Spawning a thread only fails when the OS is out of resources
            // at start-up, where there is nothing better to do than stop.
            .expect("failed to spawn the epoch ticker thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
