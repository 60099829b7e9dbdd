//! Guest-side plumbing shared by the rentcar components.
//!
//! - [`http`]: each component exports the standard `wasi:http/incoming-handler`;
//!   this turns its streaming resources into a buffered [`Request`] and
//!   [`Response`], so a handler is an ordinary function from one to the other.
//!   The host already caps body sizes, so buffering is safe.
//! - [`router`]: routes by method and path pattern; answers 404, 405 (with
//!   `Allow`) and bad path parameters itself. Handlers return
//!   `Result<Response, Error>` ([`error`]).
//! - [`id`] and [`page`]: what the API reads as an id (1 to 2^63 - 1), and
//!   the pages every list is read in (`?limit=`, `?after=`).
//! - [`db`]: typed helpers over the host's `rentcar:host/sql` import, and
//!   numbered schema migrations.
//! - [`bindings`]: the host capabilities (`sql`, `events`, `wasi:config`),
//!   generated once here; components map them in with wit-bindgen's `with`.

pub mod db;
pub mod error;
pub mod http;
pub mod id;
pub mod page;
pub mod router;

pub use error::Error;
pub use http::{Request, Response, serve};
pub use id::Id;
pub use page::Page;
pub use router::{Params, Router};

pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "rentcar:host/capabilities",
        generate_all,
    });
}

pub use bindings::rentcar::host::events;
pub use bindings::wasi::config::store as config;

/// Publishes an event with a JSON payload to the component's outbox, in the
/// current transaction.
pub fn publish(topic: &str, key: &str, event_type: &str, payload: &impl serde::Serialize) -> Result<(), String> {
    let payload = serde_json::to_string(payload).map_err(|err| err.to_string())?;
    events::publish(topic, key, event_type, &payload)
}
