//! A payment look-alike for the host's hot-swap tests, never deployed: it
//! has every export payment's links and routes need, but its `init` (the
//! schema migration) fails, so the readiness gate must refuse it.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use rentcar_sdk::{Component, Envelope, Error, Params, Request, Response, Router};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "rentcar:payment/callee",
});

use exports::rentcar::payment::payments::{self, CallError, Payment};

struct Broken;

impl Component for Broken {
    const MIGRATIONS: &'static [&'static str] = &[];

    fn routes() -> Router {
        Router::new().get("/payments", broken).get("/payments/:id", broken)
    }

    fn on_event(_: &Envelope) -> Result<(), Error> {
        Err(Error::internal("broken"))
    }

    fn init() -> Result<(), Error> {
        Err(Error::internal("migration 2 failed: column `amount` cannot be added"))
    }
}

rentcar_sdk::export!(Broken);
export!(Broken);

fn broken(_: &Request, _: &Params) -> Result<Response, Error> {
    Err(Error::internal("broken"))
}

impl payments::Guest for Broken {
    fn approve(_car_id: u64, _qty: u32, _customer: String) -> Result<Payment, CallError> {
        Err(CallError::Failed("broken".into()))
    }

    fn cancel(_payment_id: u64) -> Result<Payment, CallError> {
        Err(CallError::Failed("broken".into()))
    }

    fn lookup(_payment_id: u64) -> Result<Payment, CallError> {
        Err(CallError::Failed("broken".into()))
    }
}
