//! What a bounded context implements, and [`export!`](crate::export!),
//! which makes it a component the host can run.
//!
//! ```text
//! struct Fleet;
//!
//! impl rentcar_sdk::Component for Fleet {
//!     const MIGRATIONS: &'static [&'static str] = &["CREATE TABLE cars (...)"];
//!
//!     fn routes() -> Router {
//!         Router::new().post("/cars", register).get("/cars/:id", get)
//!     }
//!
//!     fn on_event(event: &Envelope) -> Result<(), Error> {
//!         match Heard::read(event)? { ... }
//!     }
//! }
//!
//! rentcar_sdk::export!(Fleet);
//! ```
//!
//! The macro implements the exports the host drives — `wasi:http`'s
//! incoming handler, `rentcar:host/lifecycle` and
//! `rentcar:host/event-handler` — on top of the trait. A component that
//! exports an interface of its own (payment's `payments`) generates its
//! bindings for that interface alone, beside it.

use crate::db;
use crate::error::Error;
use crate::events::Envelope;
use crate::router::Router;

/// A bounded context: its schema, its HTTP API and what it does with the
/// events it hears.
pub trait Component {
    /// The numbered schema migrations, applied in order by
    /// [`Component::init`]. Append; never change one that has shipped.
    const MIGRATIONS: &'static [&'static str];

    /// The HTTP API: routes to handlers (see [`Router`]).
    fn routes() -> Router;

    /// Applies a delivered event (read it with [`Events::read`]). The
    /// event's effect commits with its inbox row; an error rolls it back
    /// and the host delivers the event again later. By default every event
    /// is refused: a component that subscribes to nothing hears nothing.
    ///
    /// [`Events::read`]: crate::events::Events::read
    fn on_event(event: &Envelope) -> Result<(), Error> {
        Err(Error::internal(format!(
            "this component handles no events; {} delivered",
            event.event_type
        )))
    }

    /// `lifecycle.init`, run in a transaction when the component (or a new
    /// version of it) is loaded: the migrations, by default.
    fn init() -> Result<(), Error> {
        db::migrate(Self::MIGRATIONS)
    }

    /// `lifecycle.reset`: drops the state built from events, so that a
    /// replay of the log rebuilds it. Refused by default: a component's
    /// state is its own source of truth unless it says otherwise.
    fn reset() -> Result<(), Error> {
        Err(Error::internal(
            "this component's state is its own source of truth, not built from events",
        ))
    }
}

/// What [`export!`](crate::export!) expands to calls; not for components.
#[doc(hidden)]
pub mod glue {
    use wasip2::http::types::{IncomingRequest, ResponseOutparam};

    use super::Component;
    use crate::events::Envelope;

    pub fn init<C: Component>() -> Result<(), String> {
        C::init().map_err(|err| err.to_string())
    }

    pub fn reset<C: Component>() -> Result<(), String> {
        C::reset().map_err(|err| err.to_string())
    }

    pub fn handle<C: Component>(event: &Envelope) -> Result<(), String> {
        C::on_event(event).map_err(|err| err.to_string())
    }

    pub fn serve<C: Component>(request: IncomingRequest, out: ResponseOutparam) {
        crate::http::serve(request, out, |request| C::routes().handle(&request));
    }
}

/// Exports a [`Component`] implementation as the component's `wasi:http`
/// incoming handler, `rentcar:host/lifecycle` and
/// `rentcar:host/event-handler`. Invoke once, at the crate's root.
#[macro_export]
macro_rules! export {
    ($component:ident) => {
        impl $crate::bindings::exports::rentcar::host::lifecycle::Guest for $component {
            fn init() -> ::core::result::Result<(), ::std::string::String> {
                $crate::component::glue::init::<$component>()
            }

            fn reset() -> ::core::result::Result<(), ::std::string::String> {
                $crate::component::glue::reset::<$component>()
            }
        }

        impl $crate::bindings::exports::rentcar::host::event_handler::Guest for $component {
            fn handle(event: $crate::events::Envelope) -> ::core::result::Result<(), ::std::string::String> {
                $crate::component::glue::handle::<$component>(&event)
            }
        }

        impl $crate::__private::wasip2::exports::http::incoming_handler::Guest for $component {
            fn handle(
                request: $crate::__private::wasip2::http::types::IncomingRequest,
                out: $crate::__private::wasip2::http::types::ResponseOutparam,
            ) {
                $crate::component::glue::serve::<$component>(request, out)
            }
        }

        $crate::bindings::export_platform!($component with_types_in $crate::bindings);
        $crate::__private::wasip2::http::proxy::export!($component);
    };
}
