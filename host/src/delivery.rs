//! Moving events: the relay (outbox -> log), the dispatchers (log ->
//! subscriber) and the log's retention.
//!
//! - One relay per component drains its committed outbox rows into the log
//!   in outbox order, then deletes them. A crash between the two appends the
//!   batch again, which the log ignores by event id.
//! - One dispatcher per subscription (component, topic) reads the log from
//!   the consumer's position in batches. A batch is delivered in log order,
//!   in runs of events that share one transaction and one instance. From a
//!   failed event on, the rest of the batch is split into partitions by a
//!   hash of the event key, delivered in parallel, each in log order, so
//!   events with one key keep their order and one key's retries hold up no
//!   other partition of the batch (the next batch waits for all of them).
//!   A failed delivery is retried with exponential backoff; after
//!   `max_attempts` the event goes to the dead letters and its partition
//!   moves on. The position is saved (at most every `SAVE_EVERY`) up to the
//!   last event before which everything was delivered; the consumer's
//!   inbox makes a redelivery harmless.
//! - Retention deletes events every consumer is past, beyond the configured
//!   age or count or half the topic's `log_mib`, and dead letters beyond their
//!   age or total size. A relay whose topic is full of undelivered events
//!   leaves the rest in the outbox (which counts against the component's
//!   `database_mib`) and wakes retention.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use rusqlite::params;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::bindings::event_handler::Event;
use crate::bus::{DeadLetter, Envelope, EventBus, Keep, event_size};
use crate::component::{Delivered, Loaded, Slot};
use crate::config::{Delivery, Subscription};
use crate::database::lacks_storage;
use crate::memory::OverBudget;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::telemetry;

/// Events moved or read per round trip to a database.
const BATCH: usize = 256;
/// Most events delivered to a consumer in one transaction.
const RUN: usize = 32;
/// How often a busy dispatcher saves its position, and a busy relay
/// deletes relayed rows from its outbox.
const SAVE_EVERY: Duration = Duration::from_millis(100);
/// How often a relay looks at its outbox even when nobody woke it.
const RELAY_SWEEP: Duration = Duration::from_secs(1);

pub fn start(runtime: &Runtime, token: &CancellationToken, tracker: &TaskTracker) {
    // A relay whose topic is full wakes retention before its time.
    let full = Arc::new(Notify::new());
    for loaded in runtime.registry.all() {
        let (slot, bus, token) = (loaded.slot.clone(), runtime.bus.clone(), token.clone());
        let linger = runtime.config.delivery.linger();
        let span = tracing::info_span!("relay", component = %slot.name);
        let outbox = Outbox::new(full.clone());
        tracker.spawn(relay(slot, bus, outbox, linger, token).instrument(span));
    }
    for (name, settings) in &runtime.config.components {
        for subscription in &settings.subscribe {
            let topic = subscription.topic();
            let dispatcher = Dispatcher {
                consumer: name.clone(),
                topic: topic.to_string(),
                subscription: subscription.clone(),
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
            full,
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

async fn relay(
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

/// Spaces the batches that wake-ups start at least `linger` apart, so that
/// under load a batch carries the events of a whole `linger` instead of
/// one commit's: fewer, larger transactions. The first wake-up after a
/// quiet `linger` goes at once.
struct Pace {
    linger: Duration,
    last: Option<Instant>,
}

impl Pace {
    fn new(linger: Duration) -> Pace {
        Pace { linger, last: None }
    }

    /// Waits until the batch of a wake-up may start, or the host stops.
    async fn wait_unless(&mut self, stop: &CancellationToken) {
        let now = Instant::now();
        let start = self.start(now);
        if start > now {
            tokio::select! {
                _ = tokio::time::sleep_until(start.into()) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    /// When the batch of a wake-up at `now` starts.
    fn start(&mut self, now: Instant) -> Instant {
        let start = self.last.map_or(now, |last| now.max(last + self.linger));
        self.last = Some(start);
        start
    }
}

/// What a relay has moved from its component's outbox.
struct Outbox {
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
    fn new(wake_retention: Arc<Notify>) -> Outbox {
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
                let mut stmt = conn.prepare_cached(
                    "SELECT id, event_id, topic, key, type, time, schema_version, payload, request_id
                     FROM _rc_outbox WHERE id > ? ORDER BY id LIMIT ?",
                )?;
                let rows = stmt.query_map(params![self.relayed, BATCH as i64], |row| {
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
            conn.prepare_cached("DELETE FROM _rc_outbox WHERE id <= ?")?
                .execute(params![self.relayed])?;
            (self.deleted, self.deleted_at) = (self.relayed, Some(Instant::now()));
        }
        Ok(())
    }
}

/// What the admin API shows of a subscription besides its position.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStats {
    /// Where the dispatcher stands, ahead of the position it last saved.
    #[serde(skip)]
    pub position: Option<u64>,
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

    pub fn update(&self, consumer: &str, topic: &str, f: impl FnOnce(&mut SubscriptionStats)) {
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
    subscription: Subscription,
    registry: Arc<Registry>,
    bus: Arc<dyn EventBus>,
    stats: Arc<Stats>,
    settings: Delivery,
    token: CancellationToken,
}

/// Where a dispatcher stands in its topic.
#[derive(Default)]
struct Cursor {
    /// Everything up to it is delivered (`None`: not read from the log yet).
    position: Option<u64>,
    /// The position last saved in the log, and when.
    saved: Option<u64>,
    saved_at: Option<Instant>,
}

impl Dispatcher {
    async fn run(self) {
        let Some((loaded, _)) = self.registry.entry(&self.consumer) else {
            return;
        };
        let slot = loaded.slot.clone();
        let mut resets = slot.resets.subscribe();
        let mut reset_seen = *resets.borrow();
        let mut appended = self.bus.watch(&self.topic);
        let mut changes = self.registry.changes();
        let mut cursor = Cursor::default();
        let mut pace = Pace::new(self.settings.linger());
        tracing::info!("dispatcher started");
        loop {
            changes.borrow_and_update();
            let stopped = self.registry.get(&self.consumer).is_none();
            let batch_done = {
                let _turn = slot.delivery.lock().await;
                // Compared by value: waiting on `changed` below marks it seen.
                let generation = *resets.borrow_and_update();
                if generation != reset_seen {
                    // The reset saved position 0; what was not saved is void.
                    reset_seen = generation;
                    cursor = Cursor::default();
                }
                if cursor.position.is_none() {
                    match self.bus.position(&self.consumer, &self.topic).await {
                        Ok(saved) => (cursor.position, cursor.saved) = (Some(saved), Some(saved)),
                        Err(err) => tracing::error!(cause = %format!("{err:#}"), "cannot read position"),
                    }
                }
                appended.borrow_and_update();
                let done = match cursor.position {
                    Some(from) if !stopped => self.batch(from, &mut cursor.position).await,
                    _ => false,
                };
                // Saved at most every SAVE_EVERY (an event delivered again
                // after a crash finds its inbox row), and at shutdown.
                let due = cursor.saved_at.is_none_or(|at| at.elapsed() >= SAVE_EVERY);
                if due || self.token.is_cancelled() {
                    self.save(&mut cursor).await;
                }
                self.stats
                    .update(&self.consumer, &self.topic, |s| s.position = cursor.position);
                done
            };
            let unsaved = cursor.saved != cursor.position;
            if self.token.is_cancelled() {
                return;
            }
            if !batch_done {
                tokio::select! {
                    _ = appended.changed(), if !stopped => pace.wait_unless(&self.token).await,
                    _ = changes.changed() => {}
                    _ = resets.changed() => {}
                    _ = tokio::time::sleep(self.settings.backoff().1), if !stopped => {}
                    _ = tokio::time::sleep(SAVE_EVERY), if unsaved => {}
                    _ = self.token.cancelled() => {
                        let _turn = slot.delivery.lock().await;
                        if *resets.borrow() == reset_seen {
                            self.save(&mut cursor).await;
                        }
                        return;
                    }
                }
            }
        }
    }

    async fn save(&self, cursor: &mut Cursor) {
        let Some(position) = cursor.position else {
            return;
        };
        if cursor.saved == Some(position) {
            return;
        }
        match self.bus.commit(&self.consumer, &self.topic, position).await {
            Ok(()) => (cursor.saved, cursor.saved_at) = (Some(position), Some(Instant::now())),
            Err(err) => tracing::error!(cause = %format!("{err:#}"), "cannot save position"),
        }
    }

    /// Delivers one batch after `from` and moves `position` past what it
    /// delivered; `false` when there was nothing to do or the batch was
    /// interrupted.
    async fn batch(&self, from: u64, position: &mut Option<u64>) -> bool {
        let batch = match self.bus.read(&self.topic, from, BATCH).await {
            Ok(batch) if !batch.is_empty() => batch,
            Ok(_) => return false,
            Err(err) => {
                tracing::error!(cause = %format!("{err:#}"), "cannot read the log");
                return false;
            }
        };
        // Events of types the consumer does not want are done at once.
        let (wanted, skipped): (Vec<_>, Vec<_>) = batch
            .iter()
            .partition(|entry| self.subscription.wants(&entry.1.event_type));
        // While all goes well the whole batch goes in runs, in log order
        // (so each key's events keep their order): one transaction per run
        // whatever the partitions. From a failed event on, partitions go
        // their own ways, so that one key's retries hold up only its own
        // partition of the batch.
        let (mut done, failure) = self.runs(&wanted).await;
        let rest = &wanted[done.len()..];
        // (Events left without a failure: the consumer was stopped.)
        if let (Some((_, first)), Some(failure)) = (rest.first(), failure) {
            let failed_partition = partition(&first.key, self.settings.partitions);
            let mut failure = Some(failure);
            let mut partitions: BTreeMap<u64, Vec<&(u64, Envelope)>> = BTreeMap::new();
            for &entry in rest {
                partitions
                    .entry(partition(&entry.1.key, self.settings.partitions))
                    .or_default()
                    .push(entry);
            }
            // Each partition returns the positions it finished; the failed
            // event's partition starts with its failure.
            let finished = join_all(partitions.into_iter().map(|(index, events)| {
                let failure = if index == failed_partition {
                    failure.take()
                } else {
                    None
                };
                self.partition(events, failure)
            }))
            .await;
            done.extend(finished.into_iter().flatten());
        }
        done.extend(skipped.iter().map(|(at, _)| *at));
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
        *position = Some(reached);
        done.len() == batch.len()
    }

    /// Delivers events in order, in runs of up to `RUN` per transaction,
    /// until one fails; returns the positions delivered and the failure.
    /// Fewer positions than events and no failure: the consumer was
    /// stopped.
    async fn runs(&self, events: &[&(u64, Envelope)]) -> (Vec<u64>, Option<anyhow::Error>) {
        let mut done = Vec::with_capacity(events.len());
        for run in events.chunks(RUN) {
            let Some(loaded) = self.registry.get(&self.consumer) else {
                break;
            };
            let envelopes: Vec<&Envelope> = run.iter().map(|(_, envelope)| envelope).collect();
            let delivered = deliver_run(&loaded, &envelopes).await.unwrap_or_else(|err| Delivered {
                applied: 0,
                failed: Some(err),
            });
            if delivered.applied > 0 {
                telemetry::record_deliveries(&self.consumer, &self.topic, "applied", delivered.applied);
                self.stats
                    .update(&self.consumer, &self.topic, |s| s.delivered += delivered.applied as u64);
            }
            done.extend(run[..delivered.applied].iter().map(|(at, _)| *at));
            if delivered.failed.is_some() {
                return (done, delivered.failed);
            }
        }
        (done, None)
    }

    /// Delivers one partition's events in order: in runs, except that an
    /// event that fails goes on alone, with retries (its first attempt is
    /// `failure`, when the partition starts with a failed event). Returns
    /// the positions delivered.
    async fn partition(&self, events: Vec<&(u64, Envelope)>, mut failure: Option<anyhow::Error>) -> Vec<u64> {
        let mut done = Vec::new();
        let mut rest = &events[..];
        while let Some(&&(at, ref envelope)) = rest.first() {
            if let Some(failure) = failure.take() {
                match self.deliver(at, envelope, failure).await {
                    Outcome::Done => done.push(at),
                    Outcome::Interrupted => break,
                }
                rest = &rest[1..];
                continue;
            }
            let (delivered, failed) = self.runs(rest).await;
            let stopped = failed.is_none() && delivered.len() < rest.len();
            rest = &rest[delivered.len()..];
            done.extend(delivered);
            if stopped {
                break;
            }
            failure = failed;
        }
        done
    }

    /// Retries an event whose first attempt failed with `failure` until it
    /// is applied or dead-lettered.
    async fn deliver(&self, at: u64, envelope: &Envelope, failure: anyhow::Error) -> Outcome {
        let (first, max) = self.settings.backoff();
        let mut backoff = first;
        let mut attempt = 1;
        let mut failure = Some(failure);
        loop {
            let Some(loaded) = self.registry.get(&self.consumer) else {
                return Outcome::Interrupted;
            };
            let request_id = envelope.request_id.as_deref().unwrap_or("-");
            let span = tracing::info_span!("deliver", request_id = %request_id, event_type = %envelope.event_type, key = %envelope.key);
            let outcome = match failure.take() {
                Some(failure) => Err(failure),
                None => deliver_once(&loaded, envelope).instrument(span.clone()).await,
            };
            let (error, host_full) = match outcome {
                Ok(()) => {
                    telemetry::record_deliveries(&self.consumer, &self.topic, "applied", 1);
                    self.stats.update(&self.consumer, &self.topic, |s| s.delivered += 1);
                    return Outcome::Done;
                }
                Err(err) => (format!("{err:#}"), lacks_storage(&err) || OverBudget::caused(&err)),
            };
            // A full disk or a spent memory budget is not the event's fault:
            // it waits for room, at the longest backoff, without using up
            // its attempts.
            let last = !host_full && attempt >= self.settings.max_attempts;
            span.in_scope(|| {
                if host_full {
                    tracing::warn!(event = %envelope.id, cause = %error, "delivery waits for room (storage or memory)");
                } else if last {
                    tracing::warn!(event = %envelope.id, attempt, cause = %error, "delivery failed");
                } else if attempt == 1 {
                    tracing::info!(event = %envelope.id, attempt, cause = %error, "delivery failed; retrying");
                } else {
                    tracing::warn!(event = %envelope.id, attempt, cause = %error, "delivery failed; retrying");
                }
            });
            self.stats.update(&self.consumer, &self.topic, |s| {
                s.last_error = Some(error.clone());
                s.last_error_at = Some(now_ms());
            });
            telemetry::record_deliveries(&self.consumer, &self.topic, "failed", 1);
            if last {
                return self.dead_letter(at, envelope, attempt, error).await;
            }
            let pause = if host_full { max } else { backoff };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.token.cancelled() => return Outcome::Interrupted,
            }
            if !host_full {
                backoff = (backoff * 2).min(max);
                attempt += 1;
            }
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

/// Delivers a run of events to the consumer in one transaction (see
/// [`Loaded::deliver`]), bounded by the consumer's deadline per event plus
/// a grace for waiting on an instance and on its database.
async fn deliver_run(loaded: &Loaded, envelopes: &[&Envelope]) -> anyhow::Result<Delivered> {
    let events: Vec<Event> = envelopes.iter().map(|envelope| to_event(envelope)).collect();
    let run: Vec<(&Event, Option<&str>)> = events
        .iter()
        .zip(envelopes)
        .map(|(event, envelope)| (event, envelope.request_id.as_deref()))
        .collect();
    let deadline = loaded.slot.limits.timeout() * run.len() as u32 + Duration::from_secs(1);
    let delivery = async {
        let _instance = loaded.slot.instances.acquire().await?;
        loaded.deliver(&run).await
    };
    match tokio::time::timeout(deadline, delivery).await {
        Ok(delivered) => delivered,
        Err(_) => Err(anyhow::anyhow!("delivery exceeded its deadline")),
    }
}

/// Delivers one event, in its own transaction.
pub async fn deliver_once(loaded: &Loaded, envelope: &Envelope) -> anyhow::Result<()> {
    match deliver_run(loaded, &[envelope]).await?.failed {
        Some(failure) => Err(failure),
        None => Ok(()),
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
    topic_full: Arc<Notify>,
    token: CancellationToken,
) {
    let delivery = config.delivery;
    let hours_ago = |hours: u64| {
        if hours == 0 {
            0
        } else {
            now_ms().saturating_sub(hours * 3_600_000)
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delivery.retention_interval_ms)) => {}
            _ = topic_full.notified() => {}
            _ = token.cancelled() => return,
        }
        let before = hours_ago(delivery.retention_hours);
        // Every topic in the log: one per component (its own), whether or
        // not anyone subscribes to it.
        for (topic, publisher) in &config.components {
            let mut delivered = u64::MAX;
            for (name, settings) in &config.components {
                if settings.topics().any(|t| t == topic) {
                    delivered = delivered.min(bus.position(name, topic).await.unwrap_or(0));
                }
            }
            // Delivered events keep at most half the topic's quota, so that
            // the other half always has room for new ones.
            let keep = Keep {
                since: before,
                events: delivery.retention_events,
                bytes: publisher.limits.log_bytes() / 2,
            };
            match bus.prune(topic, delivered, keep).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(topic, pruned, "old events deleted from the log"),
                Err(err) => tracing::error!(topic, cause = %format!("{err:#}"), "retention failed"),
            }
        }
        let dead_before = hours_ago(delivery.dead_letter_hours);
        match bus
            .prune_dead_letters(dead_before, delivery.dead_letter_mib * 1024 * 1024)
            .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::warn!(pruned, "old dead letters deleted"),
            Err(err) => tracing::error!(cause = %format!("{err:#}"), "dead-letter retention failed"),
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
    use std::time::{Duration, Instant};

    use super::{Pace, partition};

    #[test]
    fn batches_of_wake_ups_are_spaced_by_the_linger_and_an_idle_one_goes_at_once() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut pace = Pace::new(ms(2));
        assert_eq!(pace.start(t0), t0, "the first wake-up");
        assert_eq!(pace.start(t0 + ms(1)), t0 + ms(2), "one a millisecond later waits");
        assert_eq!(pace.start(t0 + ms(2)), t0 + ms(4), "...and so does the next");
        assert_eq!(pace.start(t0 + ms(10)), t0 + ms(10), "after a quiet linger, at once");

        let mut never = Pace::new(Duration::ZERO);
        assert_eq!(never.start(t0), t0);
        assert_eq!(never.start(t0), t0);
    }

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
