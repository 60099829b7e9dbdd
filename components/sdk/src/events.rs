//! Events as Rust types.
//!
//! A component lists the events it publishes, and those it hears, as enums
//! made with [`events!`](crate::events!): a variant per event type, named
//! as the envelope names the type, holding the payload, which travels as
//! its JSON (serde).
//!
//! ```text
//! rentcar_sdk::events! {
//!     /// What rentcar hears on the `payment` topic.
//!     enum Heard {
//!         PaymentApproved(PaymentEvent),
//!         PaymentCancelled(PaymentEvent),
//!     }
//! }
//!
//! match Heard::read(event)? {
//!     Some(Heard::PaymentApproved(payment)) => reserve(payment),
//!     Some(Heard::PaymentCancelled(payment)) => release(payment),
//!     // Other types on the topic are not for this component.
//!     None => Ok(()),
//! }
//! ```
//!
//! Reading is explicit about what it does not know: an event of a type the
//! enum does not list is `None`, for the component to ignore (a publisher
//! may add types) or refuse; an event of a known type in a schema version
//! other than [`SCHEMA_VERSION`], or whose payload does not parse, is an
//! error, so the host delivers it again later and finally keeps it as a
//! dead letter instead of letting it be misread.

use std::fmt::Display;

use crate::bindings::rentcar::host::events;
use crate::error::Error;

/// An event as the host delivers it: id, topic, key, type, source, time,
/// schema version and JSON payload.
pub use crate::bindings::exports::rentcar::host::event_handler::Event as Envelope;

/// The schema version the host stamps on every event today, the only one
/// the components read.
pub const SCHEMA_VERSION: u32 = 1;

/// A set of event types with their payloads; made by [`events!`](crate::events!).
pub trait Events: Sized {
    /// The event's type, as the envelope carries it.
    fn event_type(&self) -> &'static str;

    /// The payload as JSON.
    fn to_payload(&self) -> Result<String, serde_json::Error>;

    /// The event of type `event_type` with `payload`; `None` for a type the
    /// set does not have.
    fn from_payload(event_type: &str, payload: &str) -> Option<Result<Self, serde_json::Error>>;

    /// The delivered event as one of the set, `None` for a type the set does
    /// not have; an error for an unknown schema version or a payload that
    /// does not parse (module docs).
    fn read(envelope: &Envelope) -> Result<Option<Self>, Error> {
        let Envelope {
            event_type,
            schema_version,
            payload,
            ..
        } = envelope;
        let Some(parsed) = Self::from_payload(event_type, payload) else {
            return Ok(None);
        };
        if *schema_version != SCHEMA_VERSION {
            return Err(Error::internal(format!(
                "{event_type} has schema version {schema_version}; this component reads version {SCHEMA_VERSION}"
            )));
        }
        parsed
            .map(Some)
            .map_err(|err| Error::internal(format!("bad {event_type} payload: {err}")))
    }
}

/// Publishes `event` with the correlation key `key` (events with the same
/// key are delivered in the order they were published) to the component's
/// outbox, in the current transaction: it exists if and only if the
/// invocation commits. It goes to the component's own topic, its name.
pub fn publish(key: impl Display, event: &impl Events) -> Result<(), Error> {
    let event_type = event.event_type();
    let payload = event
        .to_payload()
        .map_err(|err| Error::internal(format!("cannot serialize {event_type}: {err}")))?;
    events::publish(&key.to_string(), event_type, &payload)
        .map_err(|err| Error::internal(format!("cannot publish {event_type}: {err}")))
}

/// Declares an enum of event types (see the [module docs](crate::events)):
/// each variant is an event type of the same name, holding its payload
/// (a type that is `Serialize` and `Deserialize`).
#[macro_export]
macro_rules! events {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident($payload:ty) ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        // Not every set fires the lint, so `expect` would not do.
        #[allow(clippy::enum_variant_names, reason = "the variants are the event types' names")]
        $vis enum $name {
            $( $(#[$variant_meta])* $variant($payload), )*
        }

        impl $crate::events::Events for $name {
            fn event_type(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => ::core::stringify!($variant), )*
                }
            }

            fn to_payload(&self) -> ::core::result::Result<::std::string::String, $crate::__private::serde_json::Error> {
                match self {
                    $( Self::$variant(payload) => $crate::__private::serde_json::to_string(payload), )*
                }
            }

            fn from_payload(
                event_type: &str,
                payload: &str,
            ) -> ::core::option::Option<::core::result::Result<Self, $crate::__private::serde_json::Error>> {
                match event_type {
                    $( ::core::stringify!($variant) => ::core::option::Option::Some(
                        $crate::__private::serde_json::from_str(payload).map(Self::$variant),
                    ), )*
                    _ => ::core::option::Option::None,
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::{Envelope, Events, SCHEMA_VERSION};
    use crate::id::Id;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Paid {
        order_id: Id,
    }

    crate::events! {
        #[derive(Debug, PartialEq)]
        enum Heard {
            PaymentApproved(Paid),
            PaymentRefunded(Paid),
        }
    }

    fn envelope(event_type: &str, schema_version: u32, payload: &str) -> Envelope {
        Envelope {
            id: "0".into(),
            topic: "payment".into(),
            key: "7".into(),
            event_type: event_type.into(),
            source: "payment".into(),
            time: 0,
            schema_version,
            payload: payload.into(),
        }
    }

    fn paid(order_id: i64) -> Paid {
        Paid {
            order_id: Id::new(order_id).unwrap(),
        }
    }

    #[test]
    fn a_variant_is_its_event_type_and_its_payload_is_json() {
        let event = Heard::PaymentRefunded(paid(7));
        assert_eq!(event.event_type(), "PaymentRefunded");
        assert_eq!(event.to_payload().unwrap(), r#"{"orderId":7}"#);
        let read = Heard::read(&envelope(
            "PaymentRefunded",
            SCHEMA_VERSION,
            r#"{"orderId":7,"more":1}"#,
        ));
        assert_eq!(read, Ok(Some(event)));
    }

    #[test]
    fn unknown_types_are_none_and_unknown_versions_or_bad_payloads_errors() {
        assert_eq!(Heard::read(&envelope("CarRegistered", SCHEMA_VERSION, "{}")), Ok(None));
        // Even a type the component does not know in a version it does not
        // know is simply not its business.
        assert_eq!(Heard::read(&envelope("CarRegistered", 2, "{}")), Ok(None));
        let err = Heard::read(&envelope("PaymentApproved", 2, r#"{"orderId":7}"#)).unwrap_err();
        assert!(err.to_string().contains("schema version 2"), "{err}");
        for bad in ["{}", r#"{"orderId":0}"#, r#"{"orderId":"7"}"#, "not json"] {
            let err = Heard::read(&envelope("PaymentApproved", SCHEMA_VERSION, bad)).unwrap_err();
            assert!(
                err.to_string().starts_with("bad PaymentApproved payload"),
                "{bad}: {err}"
            );
        }
    }
}
