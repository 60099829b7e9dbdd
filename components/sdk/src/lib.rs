//! The framework the rentcar components are written in: a component is its
//! domain and its routes, and this crate does the rest.
//!
//! - [`component`]: the [`Component`] trait (migrations, routes, events,
//!   reset) and [`export!`], which exports an implementation as the
//!   `wasi:http` handler and the `rentcar:host` lifecycle and event
//!   handler the host drives. The `generate!`/`export!` scaffolding lives
//!   here, once.
//! - [`http`]: each component exports the standard
//!   `wasi:http/incoming-handler`; this turns its streaming resources into
//!   a buffered [`Request`] and [`Response`]. The host already caps body
//!   sizes, so buffering is safe.
//! - [`caller`]: who is asking, as the host verified it from the client's
//!   token: roles and ownership are the component's rules.
//! - [`router`]: routes by method and path pattern; answers 404, 405 (with
//!   `Allow`) and bad path parameters itself. Handlers return
//!   `Result<Response, Error>`.
//! - [`error`]: the one [`Error`] of handlers, event handlers and
//!   migrations: an answer the API defines, or an internal failure (500).
//! - [`events`]: events as Rust types ([`events!`]), published and read
//!   with their type and schema version checked.
//! - [`id`] and [`page`]: what the API reads as an id (1 to 2^63 - 1), and
//!   the pages every list is read in (`?limit=`, `?after=`).
//! - [`db`]: typed helpers over the host's `rentcar:host/sql` import (rows
//!   whose getters fail rather than invent a value), and numbered schema
//!   migrations.
//! - [`bindings`]: the host's `rentcar:host/platform` world (its
//!   capabilities, `sql`, `events` and `wasi:config`, and the exports the
//!   host drives), generated once here; a component that generates
//!   bindings of its own maps the capabilities in with wit-bindgen's
//!   `with`.

pub mod caller;
pub mod component;
pub mod db;
pub mod error;
pub mod events;
pub mod http;
pub mod id;
pub mod page;
pub mod router;

pub use caller::Caller;
pub use component::Component;
pub use error::Error;
pub use events::{Envelope, Events};
pub use http::{Request, Response};
pub use id::Id;
pub use page::Page;
pub use router::{Params, Router};

pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "rentcar:host/platform",
        generate_all,
        // The exports are implemented by `crate::export!` in each
        // component, through this macro.
        pub_export_macro: true,
        export_macro_name: "export_platform",
        default_bindings_module: "rentcar_sdk::bindings",
    });
}

pub use bindings::wasi::config::store as config;

/// What the macros of this crate expand to in a component; not an API.
#[doc(hidden)]
pub mod __private {
    pub use serde_json;
    pub use wasip2;
}
