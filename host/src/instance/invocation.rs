//! The state of one invocation: the `T` of its `Store<T>`.
//!
//! Every HTTP request, synchronous call and event delivery gets a fresh
//! instance in a fresh store with this state: an empty WASI context (no
//! files, no sockets, no environment), the component's configuration, its
//! memory limit and its database transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::instance::memory::Limiter;
use crate::store::SqlResult;
use crate::store::Transaction;

pub struct Invocation {
    /// Name of the component, the `source` of the events it publishes.
    pub component: Arc<str>,
    pub txn: Transaction,
    pub limits: Limiter,
    /// The request this invocation serves, directly or through calls and
    /// events; stamped on the events it publishes.
    pub request_id: Option<String>,
    /// Whether the guest may commit midway (`sql.commit`): in HTTP requests
    /// and calls only. An event's effect must commit with its inbox row, a
    /// reset with the emptying of the inbox.
    pub may_commit: bool,
    /// Events published in transactions the guest committed midway.
    pub committed_events: usize,
    /// When the running call traps with `DeadlineExceeded`.
    pub deadline: Instant,
    /// A statement, a publish or a call of this invocation failed for lack
    /// of storage (see `database::StorageFull`): if it fails, that is why.
    pub storage_full: bool,
    config: Arc<WasiConfigVariables>,
    _in_flight: InFlight,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl Invocation {
    pub fn new(
        component: Arc<str>,
        txn: Transaction,
        limits: Limiter,
        config: Arc<WasiConfigVariables>,
        in_flight: InFlight,
    ) -> Invocation {
        Invocation {
            component,
            txn,
            limits,
            request_id: None,
            may_commit: false,
            committed_events: 0,
            deadline: Instant::now(),
            storage_full: false,
            config,
            _in_flight: in_flight,
            // No preopened directories, no environment, no arguments, no
            // network: the sandbox grants nothing by default.
            wasi: WasiCtx::builder().allow_ip_name_lookup(false).build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
        }
    }

    /// Remembers a statement's failure for lack of storage.
    pub fn note_storage<T>(&mut self, outcome: &SqlResult<T>) {
        if outcome.as_ref().is_err_and(crate::store::is_full) {
            self.storage_full = true;
        }
    }

    pub fn config(&mut self) -> WasiConfig<'_> {
        WasiConfig::from(&*self.config)
    }

    /// The invocation's resources (key-value buckets, besides WASI's own).
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for Invocation {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Invocation {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

/// Counts an invocation as in flight on its version until dropped (it lives
/// in the invocation's store).
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn enter(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
