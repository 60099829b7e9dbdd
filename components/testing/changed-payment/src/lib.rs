//! A payment whose exported interface changed: `approve` takes the
//! quantity as a `u64`, under the same package and version. It starts and
//! serves, so only the interface checks can tell: a caller on the same
//! node, the deploy on payment's node, and the caller's node asking
//! payment's node must each refuse it.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use rentcar_sdk::{Component, Envelope, Error, Params, Request, Response, Router};

wit_bindgen::generate!({
    inline: r#"
        package rentcar:payment@0.1.0;

        interface payments {
            variant call-error {
                unavailable(string),
                not-found,
                conflict(string),
                invalid(string),
                failed(string),
            }
            approve: func(car-id: u64, qty: u64, customer: string) -> result<u64, call-error>;
            cancel: func(payment-id: u64) -> result<u64, call-error>;
            lookup: func(payment-id: u64) -> result<u64, call-error>;
        }

        world callee {
            export payments;
        }
    "#,
    world: "rentcar:payment/callee",
});

use exports::rentcar::payment::payments::{self, CallError};

struct Changed;

impl Component for Changed {
    const MIGRATIONS: &'static [&'static str] = &[];

    fn routes() -> Router {
        Router::new().get("/payments", nothing)
    }

    fn on_event(_: &Envelope) -> Result<(), Error> {
        Ok(())
    }
}

rentcar_sdk::export!(Changed);
export!(Changed);

fn nothing(_: &Request, _: &Params) -> Result<Response, Error> {
    Ok(Response::json(200, &Vec::<u64>::new()))
}

impl payments::Guest for Changed {
    fn approve(_car_id: u64, _qty: u64, _customer: String) -> Result<u64, CallError> {
        Err(CallError::Failed("changed".into()))
    }

    fn cancel(_payment_id: u64) -> Result<u64, CallError> {
        Err(CallError::Failed("changed".into()))
    }

    fn lookup(_payment_id: u64) -> Result<u64, CallError> {
        Err(CallError::Failed("changed".into()))
    }
}
