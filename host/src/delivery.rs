//! Moving events: the relay (outbox -> log), the dispatchers (log ->
//! subscriber) and the log's retention.
//!
//! - One relay per component drains its committed outbox rows into the log
//!   in outbox order, then deletes them. A crash between the two appends the
//!   batch again, which the log ignores by event id.
//! - One dispatcher per subscription (component, topic) reads the log from
//!   the consumer's position in batches. A batch is split into partitions by
//!   a hash of the event key; partitions are delivered in parallel, each in
//!   log order, so events with one key keep their order. A failed delivery
//!   is retried with exponential backoff; after `max_attempts` the event
//!   goes to the dead letters and its partition moves on. The position is
//!   saved after each batch, up to the last event before which everything
//!   was delivered; the consumer's inbox makes a redelivery harmless.
//! - Retention deletes events every consumer is past, beyond the configured
//!   age or count.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use rusqlite::params;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::bindings::event_handler::Event;
use crate::bus::{DeadLetter, Envelope, EventBus};
use crate::component::{Loaded, Slot};
use crate::config::Delivery;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::telemetry;

/// Events moved or delivered per round trip to a database.
const BATCH: usize = 256;
/// How often a relay looks at its outbox even when nobody woke it.
const RELAY_SWEEP: Duration = Duration::from_secs(1);

pub fn start(runtime: &Runtime, token: &CancellationToken, tracker: &TaskTracker) {
    for loaded in runtime.registry.all() {
        let (slot, bus, token) = (loaded.slot.clone(), runtime.bus.clone(), token.clone());
        let span = tracing::info_span!("relay", component = %slot.name);
        tracker.spawn(relay(slot, bus, token).instrument(span));
    }
    for (name, settings) in &runtime.config.components {
        for topic in &settings.subscribe {
            let dispatcher = Dispatcher {
                consumer: name.clone(),
                topic: topic.clone(),
                registry: runtime.registry.clone(),
                bus: runtime.bus.clone(),
                stats: runtime.stats.clone(),
                settings: runtime.config.delivery,
                token: token.clone(),
            };
            let span = tracing::info_span!("dispatch", consumer = %name, topic = %topic);
            tracker.spawn(dispatcher.run().instrument(span));
        }
    }
    let span = tracing::info_span!("retention");
    tracker.spawn(
        retention(
            runtime.config.clone(),
            runtime.registry.clone(),
            runtime.bus.clone(),
            token.clone(),
        )
        .instrument(span),
    );
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn relay(slot: Arc<Slot>, bus: Arc<dyn EventBus>, token: CancellationToken) {
    let mut pause = RELAY_SWEEP;
    loop {
        match drain(&slot, bus.as_ref()).await {
            Ok(()) => pause = RELAY_SWEEP,
            Err(err) => {
                tracing::error!(cause = %format!("{err:#}"), "relay failed; retrying");
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
        tokio::select! {
            _ = slot.relay.notified() => {}
            _ = tokio::time::sleep(pause) => {}
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
                "SELECT id, event_id, topic, key, type, time, schema_version, payload, request_id
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
                        request_id: row.get(8)?,
                    },
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let Some(&(last, _)) = batch.last() else {
            return Ok(());
        };
        let events: Vec<Envelope> = batch.into_iter().map(|(_, event)| event).collect();
        bus.append(&events).await?;
        let conn = slot.db.lock().await;
        conn.prepare_cached("DELETE FROM _rc_outbox WHERE id <= ?")?
            .execute(params![last])?;
        tracing::debug!(events = events.len(), "relayed");
    }
}

/// What the admin API shows of a subscription besides its position.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStats {
    pub delivered: u64,
    pub dead_lettered: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
}

/// Per (consumer, topic) delivery statistics, in memory.
#[derive(Default)]
pub struct Stats(Mutex<HashMap<(String, String), SubscriptionStats>>);

impl Stats {
    pub fn get(&self, consumer: &str, topic: &str) -> SubscriptionStats {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(consumer.to_string(), topic.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    fn update(&self, consumer: &str, topic: &str, f: impl FnOnce(&mut SubscriptionStats)) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry((consumer.to_string(), topic.to_string())).or_default());
    }
}

/// How one event's delivery ended.
enum Outcome {
    /// Applied (or found in the inbox), or moved to the dead letters.
    Done,
    /// The consumer was stopped or the host is shutting down: try later.
    Interrupted,
}

struct Dispatcher {
    consumer: String,
    topic: String,
    registry: Arc<Registry>,
    bus: Arc<dyn EventBus>,
    stats: Arc<Stats>,
    settings: Delivery,
    token: CancellationToken,
}

impl Dispatcher {
    async fn run(self) {
        let Some((loaded, _)) = self.registry.entry(&self.consumer) else {
            return;
        };
        let slot = loaded.slot.clone();
        let mut resets = slot.resets.subscribe();
        let mut reset_seen = *resets.borrow();
        let mut appended = self.bus.watch();
        let mut changes = self.registry.changes();
        let mut position = None;
        tracing::info!("dispatcher started");
        loop {
            changes.borrow_and_update();
            if self.registry.get(&self.consumer).is_none() {
                tokio::select! {
                    _ = changes.changed() => continue,
                    _ = self.token.cancelled() => return,
                }
            }
            let batch_done = {
                let _turn = slot.delivery.lock().await;
                // Compared by value: waiting on `changed` below marks it seen.
                let generation = *resets.borrow_and_update();
                if generation != reset_seen {
                    reset_seen = generation;
                    position = None;
                }
                if position.is_none() {
                    match self.bus.position(&self.consumer, &self.topic).await {
                        Ok(saved) => position = Some(saved),
                        Err(err) => tracing::error!(cause = %format!("{err:#}"), "cannot read position"),
                    }
                }
                appended.borrow_and_update();
                match position {
                    Some(from) => self.batch(from, &mut position).await,
                    None => false,
                }
            };
            if self.token.is_cancelled() {
                return;
            }
            if !batch_done {
                tokio::select! {
                    _ = appended.changed() => {}
                    _ = changes.changed() => {}
                    _ = resets.changed() => {}
                    _ = tokio::time::sleep(self.settings.backoff().1) => {}
                    _ = self.token.cancelled() => return,
                }
            }
        }
    }

    /// Delivers one batch after `from`; `false` when there was nothing to do
    /// or the batch was interrupted.
    async fn batch(&self, from: u64, position: &mut Option<u64>) -> bool {
        let batch = match self.bus.read(&self.topic, from, BATCH).await {
            Ok(batch) if !batch.is_empty() => batch,
            Ok(_) => return false,
            Err(err) => {
                tracing::error!(cause = %format!("{err:#}"), "cannot read the log");
                return false;
            }
        };
        let mut partitions: BTreeMap<u64, Vec<&(u64, Envelope)>> = BTreeMap::new();
        for entry in &batch {
            partitions
                .entry(partition(&entry.1.key, self.settings.partitions))
                .or_default()
                .push(entry);
        }
        // Each partition returns the positions it finished.
        let finished = join_all(partitions.into_values().map(|events| async move {
            let mut done = Vec::new();
            for (at, event) in events {
                match self.deliver(*at, event).await {
                    Outcome::Done => done.push(*at),
                    Outcome::Interrupted => break,
                }
            }
            done
        }))
        .await;
        let mut done: Vec<u64> = finished.into_iter().flatten().collect();
        done.sort_unstable();
        // Everything up to the first gap is delivered.
        let reached = batch
            .iter()
            .zip(&done)
            .take_while(|((at, _), done)| at == *done)
            .last()
            .map(|((at, _), _)| *at);
        let Some(reached) = reached else {
            return false;
        };
        if let Err(err) = self.bus.commit(&self.consumer, &self.topic, reached).await {
            tracing::error!(cause = %format!("{err:#}"), "cannot save position");
            return false;
        }
        *position = Some(reached);
        done.len() == batch.len()
    }

    /// Delivers one event until it is applied or dead-lettered.
    async fn deliver(&self, at: u64, envelope: &Envelope) -> Outcome {
        let event = to_event(envelope);
        let (first, max) = self.settings.backoff();
        let mut backoff = first;
        let mut attempt = 1;
        loop {
            let Some(loaded) = self.registry.get(&self.consumer) else {
                return Outcome::Interrupted;
            };
            let request_id = envelope.request_id.as_deref().unwrap_or("-");
            let span = tracing::info_span!("deliver", request_id = %request_id, event_type = %event.event_type, key = %event.key);
            let outcome = deliver_once(&loaded, &event, envelope.request_id.as_deref())
                .instrument(span.clone())
                .await;
            let error = match outcome {
                Ok(applied) => {
                    telemetry::record_delivery(&self.consumer, &self.topic, "applied");
                    span.in_scope(|| tracing::debug!(event = %event.id, applied, "delivered"));
                    self.stats.update(&self.consumer, &self.topic, |s| s.delivered += 1);
                    return Outcome::Done;
                }
                Err(err) => format!("{err:#}"),
            };
            span.in_scope(|| tracing::warn!(event = %event.id, attempt, cause = %error, "delivery failed"));
            self.stats.update(&self.consumer, &self.topic, |s| {
                s.last_error = Some(error.clone());
                s.last_error_at = Some(now_ms());
            });
            telemetry::record_delivery(&self.consumer, &self.topic, "failed");
            if attempt >= self.settings.max_attempts {
                return self.dead_letter(at, envelope, attempt, error).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.token.cancelled() => return Outcome::Interrupted,
            }
            backoff = (backoff * 2).min(max);
            attempt += 1;
        }
    }

    async fn dead_letter(&self, at: u64, envelope: &Envelope, attempts: u32, last_error: String) -> Outcome {
        let letter = DeadLetter {
            id: 0,
            consumer: self.consumer.clone(),
            topic: self.topic.clone(),
            position: at,
            attempts,
            last_error,
            time: now_ms(),
            event: envelope.clone(),
        };
        match self.bus.add_dead_letter(&letter).await {
            Ok(()) => {
                tracing::error!(event = %envelope.id, event_type = %envelope.event_type, key = %envelope.key, attempts, "event moved to the dead letters");
                self.stats.update(&self.consumer, &self.topic, |s| s.dead_lettered += 1);
                Outcome::Done
            }
            Err(err) => {
                tracing::error!(cause = %format!("{err:#}"), "cannot store a dead letter");
                Outcome::Interrupted
            }
        }
    }
}

/// One delivery attempt, bounded by the consumer's deadline (plus a grace
/// for waiting on its database).
pub async fn deliver_once(loaded: &Loaded, event: &Event, request_id: Option<&str>) -> anyhow::Result<bool> {
    let deadline = loaded.slot.limits.timeout() + Duration::from_secs(1);
    let delivery = async {
        let _instance = loaded.slot.instances.acquire().await?;
        loaded.deliver(event, request_id).await
    };
    match tokio::time::timeout(deadline, delivery).await {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow::anyhow!("delivery exceeded its deadline")),
    }
}

pub fn to_event(envelope: &Envelope) -> Event {
    Event {
        id: envelope.id.clone(),
        topic: envelope.topic.clone(),
        key: envelope.key.clone(),
        event_type: envelope.event_type.clone(),
        source: envelope.source.clone(),
        time: envelope.time,
        schema_version: envelope.schema_version,
        payload: envelope.payload.clone(),
    }
}

/// The partition of a key: stable for a given key and partition count.
fn partition(key: &str, partitions: u32) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish() % u64::from(partitions.max(1))
}

async fn retention(
    config: Arc<crate::Config>,
    registry: Arc<Registry>,
    bus: Arc<dyn EventBus>,
    token: CancellationToken,
) {
    let delivery = config.delivery;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delivery.retention_interval_ms)) => {}
            _ = token.cancelled() => return,
        }
        let before = if delivery.retention_hours == 0 {
            0
        } else {
            now_ms().saturating_sub(delivery.retention_hours * 3_600_000)
        };
        for topic in crate::runtime::topics(&config) {
            let mut delivered = u64::MAX;
            for (name, settings) in &config.components {
                if settings.subscribe.iter().any(|t| t == topic) {
                    delivered = delivered.min(bus.position(name, topic).await.unwrap_or(0));
                }
            }
            match bus.prune(topic, delivered, before, delivery.retention_events).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(topic, pruned, "old events deleted from the log"),
                Err(err) => tracing::error!(topic, cause = %format!("{err:#}"), "retention failed"),
            }
        }
        // Inbox rows only guard against redelivery of events still in the log.
        if before > 0 {
            for loaded in registry.all() {
                let conn = loaded.slot.db.lock().await;
                if let Err(err) = conn.execute("DELETE FROM _rc_inbox WHERE received_at < ?", [before as i64]) {
                    tracing::error!(component = %loaded.name(), cause = %err, "inbox retention failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::partition;

    #[test]
    fn a_key_always_lands_in_the_same_partition() {
        for key in ["1", "42", "car-7", ""] {
            let first = partition(key, 4);
            assert!(first < 4);
            assert_eq!(partition(key, 4), first);
        }
        assert_eq!(partition("anything", 1), 0);
    }
}
