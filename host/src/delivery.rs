//! Moving events: the relay (outbox -> log) and the dispatchers
//! (log -> subscriber).
//!
//! - One relay per component drains its committed outbox rows into the log
//!   in outbox order, then deletes them. A crash between the two appends the
//!   batch again, which the log ignores by event id.
//! - One dispatcher per subscription (component, topic) reads the log from
//!   the consumer's position and delivers each event in order, retrying with
//!   backoff until the consumer's transaction commits it. The consumer's
//!   inbox makes a redelivery harmless, so the position is saved after each
//!   batch rather than each event.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::params;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::bindings::event_handler::Event;
use crate::bus::{Envelope, EventBus};
use crate::component::{Registry, Slot};
use crate::runtime::Runtime;

/// Events moved or delivered per round trip to a database.
const BATCH: usize = 256;
/// Redelivery backoff: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));
/// How often a relay looks at its outbox even when nobody woke it (events
/// left over by a crash are moved at start-up anyway).
const RELAY_SWEEP: Duration = Duration::from_secs(1);

pub fn start(runtime: &Runtime, token: &CancellationToken, tracker: &TaskTracker) {
    for loaded in runtime.registry.all() {
        let (slot, bus, token) = (loaded.slot.clone(), runtime.bus.clone(), token.clone());
        let span = tracing::info_span!("relay", component = %slot.name);
        tracker.spawn(relay(slot, bus, token).instrument(span));
    }
    for (name, settings) in &runtime.config.components {
        for topic in &settings.subscribe {
            let (registry, bus, token) =
                (runtime.registry.clone(), runtime.bus.clone(), token.clone());
            let span = tracing::info_span!("dispatch", consumer = %name, topic = %topic);
            tracker.spawn(
                dispatch(name.clone(), topic.clone(), registry, bus, token).instrument(span),
            );
        }
    }
}

async fn relay(slot: Arc<Slot>, bus: Arc<dyn EventBus>, token: CancellationToken) {
    let mut backoff = BACKOFF.0;
    loop {
        match drain(&slot, bus.as_ref()).await {
            Ok(_) => backoff = BACKOFF.0,
            Err(err) => {
                tracing::error!(cause = %format!("{err:#}"), "relay failed; retrying");
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
        tokio::select! {
            _ = slot.relay.notified() => {}
            _ = tokio::time::sleep(RELAY_SWEEP.max(backoff)) => {}
            _ = token.cancelled() => return,
        }
    }
}

/// Moves every committed outbox row to the log.
async fn drain(slot: &Slot, bus: &dyn EventBus) -> anyhow::Result<()> {
    loop {
        let batch = {
            let conn = slot.db.lock().await;
            let mut stmt = conn.prepare_cached(
                "SELECT id, event_id, topic, key, type, time, schema_version, payload
                 FROM _rc_outbox ORDER BY id LIMIT ?",
            )?;
            let rows = stmt.query_map([BATCH as i64], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    Envelope {
                        id: row.get(1)?,
                        topic: row.get(2)?,
                        key: row.get(3)?,
                        event_type: row.get(4)?,
                        source: slot.name.to_string(),
                        time: row.get(5)?,
                        schema_version: row.get(6)?,
                        payload: row.get(7)?,
                    },
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let Some((last, _)) = batch.last() else {
            return Ok(());
        };
        let last = *last;
        let events: Vec<Envelope> = batch.into_iter().map(|(_, event)| event).collect();
        bus.append(&events).await?;
        let conn = slot.db.lock().await;
        conn.prepare_cached("DELETE FROM _rc_outbox WHERE id <= ?")?
            .execute(params![last])?;
        tracing::debug!(events = events.len(), "relayed");
    }
}

async fn dispatch(
    consumer: String,
    topic: String,
    registry: Arc<Registry>,
    bus: Arc<dyn EventBus>,
    token: CancellationToken,
) {
    let mut appended = bus.watch();
    let mut position = loop {
        match bus.position(&consumer, &topic).await {
            Ok(position) => break position,
            Err(err) => {
                tracing::error!(cause = %format!("{err:#}"), "cannot read position; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(BACKOFF.1) => {}
                    _ = token.cancelled() => return,
                }
            }
        }
    };
    tracing::info!(position, "dispatcher started");
    loop {
        appended.borrow_and_update();
        let batch = match bus.read(&topic, position, BATCH).await {
            Ok(batch) => batch,
            Err(err) => {
                tracing::error!(cause = %format!("{err:#}"), "cannot read the log; retrying");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = appended.changed() => continue,
                _ = token.cancelled() => return,
            }
        }
        let start = position;
        for (at, envelope) in batch {
            if !deliver(&consumer, &registry, &envelope, &token).await {
                break;
            }
            position = at;
        }
        if position > start
            && let Err(err) = bus.commit(&consumer, &topic, position).await
        {
            tracing::error!(cause = %format!("{err:#}"), "cannot save position");
        }
        if token.is_cancelled() {
            return;
        }
    }
}

/// Delivers one event until it commits; `false` if cancelled first.
async fn deliver(
    consumer: &str,
    registry: &Registry,
    envelope: &Envelope,
    token: &CancellationToken,
) -> bool {
    let event = Event {
        id: envelope.id.clone(),
        topic: envelope.topic.clone(),
        key: envelope.key.clone(),
        event_type: envelope.event_type.clone(),
        source: envelope.source.clone(),
        time: envelope.time,
        schema_version: envelope.schema_version,
        payload: envelope.payload.clone(),
    };
    let mut backoff = BACKOFF.0;
    let mut attempt = 1u32;
    let mut changes = registry.changes();
    loop {
        changes.borrow_and_update();
        let Some(loaded) = registry.get(consumer) else {
            // Stopped: the event waits, without using up attempts, until
            // the consumer is started again.
            tokio::select! {
                _ = changes.changed() => continue,
                _ = token.cancelled() => return false,
            }
        };
        let deadline = loaded.slot.limits.timeout() + Duration::from_secs(1);
        let outcome = match tokio::time::timeout(deadline, loaded.deliver(&event)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(anyhow::anyhow!("delivery exceeded its deadline")),
        };
        match outcome {
            Ok(applied) => {
                tracing::debug!(event = %event.id, event_type = %event.event_type, key = %event.key, applied, "delivered");
                return true;
            }
            Err(err) => tracing::warn!(
                event = %event.id, event_type = %event.event_type, key = %event.key, attempt,
                cause = %format!("{err:#}"), "delivery failed; will retry"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = token.cancelled() => return false,
        }
        backoff = (backoff * 2).min(BACKOFF.1);
        attempt += 1;
    }
}
