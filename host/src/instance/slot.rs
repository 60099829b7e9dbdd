//! A loaded component: compiled once, pre-instantiated once, instantiated
//! fresh in its own `Store` for every invocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use tokio::sync::{Notify, Semaphore, watch};
use tracing::Instrument as _;
use wasmtime::component::{Component, Instance, InstancePre};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::bindings::{event_handler, lifecycle};
use crate::config::Limits;
use crate::instance::engine::EPOCH_TICK;
use crate::instance::invocation::{InFlight, Invocation};
use crate::instance::memory::{Budget, Limiter};
use crate::store::host_tables;
use crate::store::{Database, StorageFull, Transaction};

/// The least time `init` gets, whatever the component's `timeout_ms`: it
/// migrates the component's tables, which on a large database can take
/// longer than a request (rebuilding a table of ten million rows takes
/// seconds).
pub const INIT_DEADLINE: Duration = Duration::from_secs(300);

/// The trap a guest gets when its invocation outlives its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the invocation exceeded its deadline")]
pub struct DeadlineExceeded;

impl DeadlineExceeded {
    /// Whether `err` (a trap, a failed call) comes from a missed deadline.
    pub fn caused(err: &anyhow::Error) -> bool {
        err.chain().any(|cause| cause.is::<DeadlineExceeded>())
    }
}

/// What stays with a component's name across versions: its database, its
/// configuration and the relay's wake-up call.
pub struct Slot {
    pub name: Arc<str>,
    pub db: Arc<Database>,
    pub config: Arc<WasiConfigVariables>,
    pub limits: Limits,
    /// Woken after every commit that published events.
    pub relay: Notify,
    /// Shared by the component's dispatchers while each delivers a batch,
    /// and held alone by a reset, so that a reset never races a position
    /// update. Shared, so that one topic's event waiting out its retries
    /// holds up no other topic's.
    pub delivery: tokio::sync::RwLock<()>,
    /// Bumped by a reset: dispatchers then reload their positions.
    pub resets: watch::Sender<u64>,
    /// One permit per instance allowed to run at once (`max_instances`).
    pub instances: Semaphore,
    /// What its instances hold in linear memory (`memory_budget_mib`)...
    pub memory: Arc<Budget>,
    /// ...and what all of the host's do (`[server] memory_budget_mib`).
    pub host_memory: Arc<Budget>,
}

impl Slot {
    pub fn new(
        name: &str,
        db: Database,
        config: WasiConfigVariables,
        limits: Limits,
        host_memory: Arc<Budget>,
    ) -> Slot {
        Slot {
            name: name.into(),
            db: Arc::new(db),
            config: Arc::new(config),
            limits,
            relay: Notify::new(),
            delivery: tokio::sync::RwLock::new(()),
            resets: watch::Sender::new(0),
            instances: Semaphore::new(limits.max_instances as usize),
            memory: Arc::new(Budget::new(limits.memory_budget_bytes())),
            host_memory,
        }
    }
}

/// One loaded version of a component.
pub struct Loaded {
    pub slot: Arc<Slot>,
    /// Content digest (SHA-256) of the wasm the version was built from.
    pub version: String,
    /// When this version was loaded, ms since the Unix epoch.
    pub loaded_at: u64,
    /// Invocations running on this version now.
    in_flight: Arc<AtomicUsize>,
    pre: InstancePre<Invocation>,
    /// Present when the component exports `wasi:http/incoming-handler`.
    pub proxy: Option<ProxyPre<Invocation>>,
    event_handler: Option<event_handler::GuestIndices>,
    lifecycle: Option<lifecycle::GuestIndices>,
}

impl Loaded {
    pub fn new(slot: Arc<Slot>, pre: InstancePre<Invocation>, version: String) -> Loaded {
        Loaded {
            slot,
            version,
            loaded_at: crate::clock::now_ms(),
            in_flight: Arc::default(),
            proxy: ProxyPre::new(pre.clone()).ok(),
            event_handler: event_handler::GuestIndices::new(&pre).ok(),
            lifecycle: lifecycle::GuestIndices::new(&pre).ok(),
            pre,
        }
    }

    pub fn name(&self) -> &str {
        &self.slot.name
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn component(&self) -> &Component {
        self.pre.component()
    }

    pub fn handles_events(&self) -> bool {
        self.event_handler.is_some()
    }

    pub fn engine(&self) -> &Engine {
        self.pre.engine()
    }

    /// A fresh store for one invocation, with the component's memory limit
    /// and deadline. The guest yields to the runtime at every epoch tick and
    /// traps with [`DeadlineExceeded`] once the deadline has passed.
    pub fn store(&self) -> Store<Invocation> {
        let slot = &self.slot;
        let limits = Limiter::new(
            slot.limits.memory_bytes(),
            slot.memory.clone(),
            slot.host_memory.clone(),
        );
        let invocation = Invocation::new(
            slot.name.clone(),
            Transaction::new(slot.db.clone()),
            limits,
            slot.config.clone(),
            InFlight::enter(&self.in_flight),
        );
        let mut store = Store::new(self.engine(), invocation);
        store.limiter(|invocation| &mut invocation.limits);
        store.data_mut().deadline = Instant::now() + slot.limits.timeout();
        // Running one tick then pausing this long keeps the instance within
        // its share of a core.
        let percent = slot.limits.cpu_percent.clamp(1, 100);
        let pause = EPOCH_TICK * (100 - percent) / percent;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |store| {
            if Instant::now() >= store.data().deadline {
                Err(DeadlineExceeded.into())
            } else if pause.is_zero() {
                Ok(UpdateDeadline::Yield(1))
            } else {
                Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(pause))))
            }
        });
        store
    }

    pub async fn instantiate(&self, store: &mut Store<Invocation>) -> anyhow::Result<Instance> {
        let started = Instant::now();
        let instance = self.pre.instantiate_async(store).await?;
        crate::telemetry::record_instantiation(self.name(), started.elapsed());
        Ok(instance)
    }

    /// Ends an invocation: commits if `ok`, rolls back otherwise, and wakes
    /// the relay when committed events are waiting in the outbox.
    pub fn finish(&self, store: &mut Store<Invocation>, ok: bool) -> anyhow::Result<()> {
        let invocation = store.data_mut();
        let mut published = std::mem::take(&mut invocation.committed_events);
        if ok {
            published += invocation.txn.commit()?;
        } else {
            invocation.txn.rollback();
        }
        if published > 0 {
            self.slot.relay.notify_one();
        }
        Ok(())
    }

    /// The same version on another slot (a copy of the database, say).
    pub fn on(&self, slot: Arc<Slot>) -> Loaded {
        Loaded::new(slot, self.pre.clone(), self.version.clone())
    }

    /// Runs the component's `init` export, if it has one, in a transaction,
    /// within `deadline` (also in wall-clock time: the epoch deadline only
    /// stops a guest running wasm, not one waiting in a host call).
    pub async fn init(&self, deadline: Duration) -> anyhow::Result<()> {
        let Some(indices) = &self.lifecycle else {
            return Ok(());
        };
        let mut store = self.store();
        store.data_mut().deadline = Instant::now() + deadline;
        let init = async {
            let instance = self.instantiate(&mut store).await?;
            let lifecycle = indices.load(&mut store, &instance)?;
            match lifecycle.call_init(&mut store).await? {
                Ok(()) => self.finish(&mut store, true),
                Err(message) => Err(anyhow!("init failed: {message}")),
            }
        };
        tokio::time::timeout(deadline, init)
            .await
            .map_err(|_| DeadlineExceeded)?
    }

    /// `reset` gets at least [`INIT_DEADLINE`], also in wall-clock time: the
    /// epoch deadline only stops a guest running wasm, not one waiting in a
    /// host call.
    fn admin_deadline(&self, store: &mut Store<Invocation>) -> Duration {
        let deadline = self.slot.limits.timeout().max(INIT_DEADLINE);
        store.data_mut().deadline = Instant::now() + deadline;
        deadline
    }

    /// Runs the component's `reset` export and empties its inbox in one
    /// transaction, so that a replay of the log applies every event again;
    /// with `init`'s deadline. The inner error is the component's refusal.
    pub async fn reset(&self) -> anyhow::Result<Result<(), String>> {
        let Some(indices) = &self.lifecycle else {
            return Ok(Err("the component exports no lifecycle interface".into()));
        };
        let mut store = self.store();
        let deadline = self.admin_deadline(&mut store);
        let reset = async {
            let instance = self.instantiate(&mut store).await?;
            let lifecycle = indices.load(&mut store, &instance)?;
            if let Err(refusal) = lifecycle.call_reset(&mut store).await? {
                return Ok(Err(refusal));
            }
            host_tables::forget_applied_and_mark_rewind(store.data_mut().txn.conn().await?)?;
            self.finish(&mut store, true)?;
            Ok(Ok(()))
        };
        tokio::time::timeout(deadline, reset)
            .await
            .map_err(|_| DeadlineExceeded)?
    }

    /// Delivers a run of events (in log order) to the component's
    /// `event-handler` in one transaction and one instance, so that a busy
    /// consumer commits and instantiates once per run instead of once per
    /// event. Each event gets its own deadline and a savepoint, and its inbox
    /// row, which makes it idempotent; an event already in the inbox is
    /// skipped. The run stops at the first event that fails: its savepoint
    /// is rolled back, the events before it commit, and the error comes back
    /// with their count. On `Err` nothing was applied.
    pub async fn deliver(&self, events: &[(&event_handler::Event, Option<&str>)]) -> anyhow::Result<Delivered> {
        let indices = self
            .event_handler
            .as_ref()
            .context("component exports no event-handler")?;
        let mut store = self.store();
        let mut handler = None;
        let mut delivered = Delivered::default();
        for &(event, request_id) in events {
            let txn = &mut store.data_mut().txn;
            txn.savepoint().await?;
            // The inbox row goes in first and is rolled back with the
            // effect if the handler fails: a row already there means applied.
            let inserted = host_tables::inbox_record(txn.conn().await?, &event.id, crate::clock::now_ms());
            txn.check(&inserted)?;
            if !inserted? {
                txn.release()?;
                delivered.applied += 1;
                continue;
            }
            let invocation = store.data_mut();
            invocation.request_id = request_id.map(str::to_string);
            invocation.deadline = Instant::now() + self.slot.limits.timeout();
            let span = tracing::info_span!("deliver", request_id = %request_id.unwrap_or("-"), event_type = %event.event_type, key = %event.key);
            let handled = self
                .handle(&mut store, indices, &mut handler, event)
                .instrument(span.clone())
                .await;
            let txn = &mut store.data_mut().txn;
            match handled {
                Ok(()) => {
                    txn.release()?;
                    span.in_scope(|| tracing::debug!(event = %event.id, "delivered"));
                    delivered.applied += 1;
                }
                Err(err) => {
                    txn.rollback_to_savepoint()?;
                    // Not the event's fault: it waits for space.
                    let full = std::mem::take(&mut store.data_mut().storage_full);
                    delivered.failed = Some(if full { err.context(StorageFull) } else { err });
                    break;
                }
            }
        }
        if store.data_mut().txn.commit()? > 0 {
            self.slot.relay.notify_one();
        }
        Ok(delivered)
    }

    /// One event, in the run's instance (made on first use).
    async fn handle(
        &self,
        store: &mut Store<Invocation>,
        indices: &event_handler::GuestIndices,
        handler: &mut Option<event_handler::Guest>,
        event: &event_handler::Event,
    ) -> anyhow::Result<()> {
        let handler = match handler {
            Some(handler) => handler,
            None => {
                let instance = self.instantiate(store).await?;
                handler.insert(indices.load(&mut *store, &instance)?)
            }
        };
        handler
            .call_handle(&mut *store, event)
            .await?
            .map_err(|message| anyhow!("handler failed: {message}"))
    }
}

/// How a run of deliveries ended.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Events at the start of the run now applied (or found in the inbox).
    pub applied: usize,
    /// Why the next event was not.
    pub failed: Option<anyhow::Error>,
}
