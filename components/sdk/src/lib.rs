//! Guest-side plumbing shared by the rentcar components.
//!
//! - [`http`]: each component exports the standard `wasi:http/incoming-handler`;
//!   this turns its streaming resources into a buffered [`Request`] and
//!   [`Response`], so a handler is an ordinary function from one to the other.
//!   The host already caps body sizes, so buffering is safe.
//! - [`db`]: typed helpers over the host's `rentcar:host/sql` import, and
//!   numbered schema migrations.
//! - [`bindings`]: the host capabilities (`sql`, `events`, `wasi:config`),
//!   generated once here; components map them in with wit-bindgen's `with`.

pub mod db;
pub mod http;

pub use http::{Request, Response, serve};

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
