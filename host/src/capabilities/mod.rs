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
