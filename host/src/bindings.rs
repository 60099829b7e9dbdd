//! Host-side bindings of the `rentcar:host` package, generated from the same
//! `wit/` files the guests use. Only what the host needs is re-exported.

/// An open `wasi:keyvalue` bucket: a name within the component's own
/// store (see `capabilities::keyvalue`).
pub struct Bucket {
    pub name: String,
}

mod generated {
    pub use super::Bucket;

    wasmtime::component::bindgen!({
        path: "../wit",
        world: "rentcar:host/host",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wasi:keyvalue/store.bucket": Bucket,
        },
        require_store_data_send: true,
    });
}

pub use generated::exports::rentcar::host::event_handler;
pub use generated::exports::rentcar::host::lifecycle;
pub use generated::rentcar::host::{events, sql};
pub use generated::wasi::keyvalue;
