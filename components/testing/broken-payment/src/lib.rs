//! A payment look-alike for the host's hot-swap tests, never deployed: it
//! has every export payment's links and routes need, but its `init` (the
//! schema migration) fails, so the readiness gate must refuse it.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

wit_bindgen::generate!({
    path: "../../../wit",
    world: "rentcar:host/payment",
    with: {
        "rentcar:host/sql@0.1.0": rentcar_sdk::bindings::rentcar::host::sql,
        "rentcar:host/events@0.1.0": rentcar_sdk::bindings::rentcar::host::events,
        "wasi:config/store@0.2.0-rc.1": rentcar_sdk::bindings::wasi::config::store,
    },
});

use exports::rentcar::host::event_handler::{self, Event};
use exports::rentcar::host::lifecycle;
use exports::rentcar::payment::payments::{self, CallError, Payment};

struct Component;

impl lifecycle::Guest for Component {
    fn init() -> Result<(), String> {
        Err("migration 2 failed: column `amount` cannot be added".into())
    }

    fn reset() -> Result<(), String> {
        Err("not supported".into())
    }
}

impl payments::Guest for Component {
    fn approve(_car_id: u64, _qty: u32, _customer: String) -> Result<Payment, CallError> {
        Err(CallError::Unavailable("broken".into()))
    }

    fn cancel(_payment_id: u64) -> Result<Payment, CallError> {
        Err(CallError::Unavailable("broken".into()))
    }

    fn lookup(_payment_id: u64) -> Result<Payment, CallError> {
        Err(CallError::Unavailable("broken".into()))
    }
}

impl event_handler::Guest for Component {
    fn handle(_event: Event) -> Result<(), String> {
        Err("broken".into())
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Component {
    fn handle(request: wasip2::http::types::IncomingRequest, out: wasip2::http::types::ResponseOutparam) {
        rentcar_sdk::serve(request, out, |_| rentcar_sdk::Response::internal("broken"));
    }
}

export!(Component);
wasip2::http::proxy::export!(Component);
