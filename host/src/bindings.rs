//! Host-side bindings of the `rentcar:host` package, generated from the same
//! `wit/` files the guests use. Only what the host needs is re-exported.

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "rentcar:host/platform",
        imports: { default: async | trappable },
        exports: { default: async },
        require_store_data_send: true,
    });
}

pub use generated::exports::rentcar::host::event_handler;
pub use generated::exports::rentcar::host::lifecycle;
pub use generated::rentcar::host::{events, sql};
