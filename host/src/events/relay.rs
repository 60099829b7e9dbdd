//! The relay: moves a component's committed outbox rows to the log, within
//! its topic's quota, and deletes them once relayed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::log::{Envelope, EventBus, event_size};
use crate::instance::slot::Slot;
use crate::store::host_tables::{self, OutboxRow};

use super::pace::Pace;
use super::{BATCH, SAVE_EVERY};

/// How often a relay looks at its outbox even when nobody woke it.
const RELAY_SWEEP: Duration = Duration::from_secs(1);

pub(super) async fn relay(
    slot: Arc<Slot>,
    bus: Arc<dyn EventBus>,
    mut outbox: Outbox,
    linger: Duration,
    token: CancellationToken,
) {
    let mut pause = RELAY_SWEEP;
    let mut pace = Pace::new(linger);
    loop {
        match outbox.drain(&slot, bus.as_ref()).await {
            // Retention makes room soon after a full topic's consumers move.
            Ok(()) if outbox.full => pause = SAVE_EVERY,
            Ok(()) => pause = RELAY_SWEEP,
            Err(err) => {
                tracing::error!(cause = %format!("{err:#}"), "relay failed; retrying");
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
        let pending = outbox.pending();
        tokio::select! {
            _ = slot.relay.notified() => pace.wait_unless(&token).await,
            _ = tokio::time::sleep(pause) => {}
            _ = tokio::time::sleep(SAVE_EVERY), if pending => {}
            _ = token.cancelled() => {
                if let Err(err) = outbox.delete(&slot, true).await {
                    tracing::error!(cause = %format!("{err:#}"), "cannot delete relayed outbox rows");
                }
                return;
            }
        }
    }
}

/// What a relay has moved from its component's outbox.
pub(super) struct Outbox {
    /// The last outbox row appended to the log.
    relayed: i64,
    /// Rows up to here are deleted from the outbox, and when that was.
    deleted: i64,
    deleted_at: Option<Instant>,
    /// Whether the topic was full at the last batch.
    full: bool,
    /// Notified when the topic is full.
    wake_retention: Arc<Notify>,
}

impl Outbox {
    pub(super) fn new(wake_retention: Arc<Notify>) -> Outbox {
        Outbox {
            relayed: 0,
            deleted: 0,
            deleted_at: None,
            full: false,
            wake_retention,
        }
    }

    /// Moves every committed outbox row to the log. Relayed rows are
    /// deleted every `SAVE_EVERY` while busy and once the outbox is drained,
    /// in one statement instead of one per batch; after a crash the rows
    /// not yet deleted are appended again, which the log ignores.
    async fn drain(&mut self, slot: &Slot, bus: &dyn EventBus) -> anyhow::Result<()> {
        loop {
            let batch = {
                let conn = slot.db.lock().await;
                let rows = host_tables::outbox_after(&conn, self.relayed, BATCH)?;
                rows.into_iter()
                    .map(|row| (row.id, envelope(row, &slot.name)))
                    .collect::<Vec<_>>()
            };
            if batch.is_empty() {
                return self.delete(slot, false).await;
            }
            // As many as the topic's quota leaves room for.
            let mut room = slot
                .limits
                .log_bytes()
                .saturating_sub(bus.topic_bytes(&slot.name).await?);
            let fits = batch
                .iter()
                .take_while(|(_, event)| room.checked_sub(event_size(event)).map(|left| room = left).is_some())
                .count();
            self.note_full(slot, fits < batch.len());
            let Some(last) = fits.checked_sub(1).map(|at| batch[at].0) else {
                return self.delete(slot, false).await;
            };
            let events: Vec<Envelope> = batch.into_iter().take(fits).map(|(_, event)| event).collect();
            bus.append(&events).await?;
            self.relayed = last;
            tracing::debug!(events = events.len(), "relayed");
            self.delete(slot, false).await?;
            if self.full {
                return Ok(());
            }
        }
    }

    /// Says when the topic fills and when it has room again, and wakes
    /// retention while it is full.
    fn note_full(&mut self, slot: &Slot, full: bool) {
        if full && !self.full {
            tracing::warn!(
                topic = %slot.name, log_mib = slot.limits.log_mib,
                "the topic is full of undelivered events: new ones wait in the outbox until its consumers catch up"
            );
        } else if !full && self.full {
            tracing::info!(topic = %slot.name, "the topic has room again; relaying");
        }
        if full {
            self.wake_retention.notify_one();
        }
        self.full = full;
    }

    /// Rows relayed but still in the outbox.
    fn pending(&self) -> bool {
        self.relayed > self.deleted
    }

    /// Deletes the relayed rows if `SAVE_EVERY` has passed since the last
    /// time, or now if `now`.
    async fn delete(&mut self, slot: &Slot, now: bool) -> anyhow::Result<()> {
        let due = now || self.deleted_at.is_none_or(|at| at.elapsed() >= SAVE_EVERY);
        if self.pending() && due {
            let conn = slot.db.lock().await;
            host_tables::outbox_delete_through(&conn, self.relayed)?;
            (self.deleted, self.deleted_at) = (self.relayed, Some(Instant::now()));
        }
        Ok(())
    }
}

/// An outbox row as the log keeps it, published by `source`.
fn envelope(row: OutboxRow, source: &str) -> Envelope {
    Envelope {
        id: row.event_id,
        topic: row.topic,
        key: row.key,
        event_type: row.event_type,
        source: source.to_string(),
        time: row.time,
        schema_version: row.schema_version,
        payload: row.payload,
        request_id: row.request_id,
    }
}
