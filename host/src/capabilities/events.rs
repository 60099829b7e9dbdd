//! The `rentcar:host/events` capability: publishing through the component's
//! transactional outbox.
//!
//! `publish` only inserts a row into the component's `_rc_outbox`, in the
//! invocation's transaction, so an event exists if and only if the state
//! change that caused it commits. The relay (in `delivery`) moves committed
//! rows to the event log.

use crate::bindings::events::Host;
use crate::clock::now_ms;
use crate::instance::invocation::Invocation;
use crate::store::host_tables::{self, OutboxEvent};

/// Version of the event envelope; carried by every event.
pub const SCHEMA_VERSION: u32 = 1;

/// Longest topic, key or type a component may publish.
const MAX_NAME: usize = 256;
/// Largest payload a component may publish.
const MAX_PAYLOAD: usize = 256 * 1024;

impl Host for Invocation {
    #[tracing::instrument(skip(self, payload), fields(component = %self.component))]
    async fn publish(
        &mut self,
        key: String,
        event_type: String,
        payload: String,
    ) -> wasmtime::Result<Result<(), String>> {
        if [&key, &event_type].iter().any(|s| s.is_empty() || s.len() > MAX_NAME) {
            return Ok(Err(format!("key and type must be 1 to {MAX_NAME} bytes")));
        }
        if payload.len() > MAX_PAYLOAD {
            return Ok(Err(format!("payload is over {MAX_PAYLOAD} bytes")));
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(&payload).is_err() {
            return Ok(Err("payload must be a JSON document".into()));
        }
        if let Err(reason) = self.begin_call().await? {
            return Ok(Err(reason));
        }
        let (_, conn) = self.txn.parts();
        let event_id = uuid::Uuid::now_v7().to_string();
        let event = OutboxEvent {
            event_id: &event_id,
            // A context speaks only for itself: its topic is its name, so no
            // component can forge another's events.
            topic: &self.component,
            key: &key,
            event_type: &event_type,
            time: now_ms(),
            schema_version: SCHEMA_VERSION,
            payload: &payload,
            request_id: self.request_id.as_deref(),
        };
        let inserted = host_tables::publish(conn, &event);
        // Like a statement of the guest's own, an insert that made SQLite
        // end the transaction fails the invocation.
        self.settle(&inserted)?;
        Ok(match inserted {
            Ok(_) => {
                self.txn.published += 1;
                Ok(())
            }
            Err(err) => Err(err.to_string()),
        })
    }
}
