//! What a component may import: WASI without ambient authority, the types
//! of `wasi:http`, `wasi:config`, and the host's own capabilities, its
//! database (`sql`, or `wasi:keyvalue` over the same database) and its
//! outbox (`events`). All of them are added to a linker here.

pub mod events;
pub mod keyvalue;
pub mod sql;

use wasmtime::component::{HasSelf, Linker};
use wasmtime_wasi_http::{WasiHttp, WasiHttpView as _};

use crate::bindings;
use crate::instance::invocation::Invocation;
use crate::store::{SqlResult, TransactionEnded};

/// The steps every host call into the component's database takes (`sql`,
/// `events`, `wasi:keyvalue`): begin, run in the invocation's transaction,
/// settle.
impl Invocation {
    /// Begins a host call in the invocation's transaction, beginning that
    /// if it has not begun. The last call's result now sits in the guest's
    /// memory, so what the host held for it is given back. The outer error
    /// traps the guest: SQLite ended the transaction earlier, and nothing
    /// may commit on its own from then on. The inner one, a transaction
    /// that cannot begin, is the guest's to handle.
    async fn begin_call(&mut self) -> wasmtime::Result<Result<(), String>> {
        self.limits.release_buffers();
        match self.txn.conn().await {
            Ok(_) => Ok(Ok(())),
            Err(err) => match err.downcast_ref::<TransactionEnded>() {
                Some(ended) => Err(ended.clone().into()),
                None => Ok(Err(format!("{err:#}"))),
            },
        }
    }

    /// Settles what a host call ran: remembers a lack of storage, and traps
    /// if the statement made SQLite end the transaction by itself (a full
    /// disk, `INSERT OR ROLLBACK`): what the invocation did is gone, and
    /// what it would do next must not commit on its own.
    fn settle<T>(&mut self, outcome: &SqlResult<T>) -> wasmtime::Result<()> {
        self.note_storage(outcome);
        self.txn.check(outcome)?;
        Ok(())
    }
}

/// What every component may import: WASI without any ambient authority,
/// the types of `wasi:http` (but no outgoing requests), its database, its
/// key-value store, outbox and configuration.
pub fn add_to_linker(linker: &mut Linker<Invocation>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    let options = wasmtime_wasi_http::p2::bindings::LinkOptions::default();
    wasmtime_wasi_http::p2::bindings::http::types::add_to_linker::<_, WasiHttp>(
        linker,
        &options.into(),
        Invocation::http,
    )?;
    bindings::sql::add_to_linker::<_, HasSelf<Invocation>>(linker, |invocation| invocation)?;
    bindings::events::add_to_linker::<_, HasSelf<Invocation>>(linker, |invocation| invocation)?;
    bindings::keyvalue::store::add_to_linker::<_, HasSelf<Invocation>>(linker, |invocation| invocation)?;
    bindings::keyvalue::atomics::add_to_linker::<_, HasSelf<Invocation>>(linker, |invocation| invocation)?;
    bindings::keyvalue::batch::add_to_linker::<_, HasSelf<Invocation>>(linker, |invocation| invocation)?;
    wasmtime_wasi_config::add_to_linker(linker, Invocation::config)?;
    Ok(())
}
