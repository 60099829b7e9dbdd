//! The dispatcher of one subscription: reads the log from the consumer's
//! positions and delivers runs of events, retrying, going partition by
//! partition after a failure, and moving what cannot be applied to the dead
//! letters.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::bindings::event_handler::Event;
use crate::clock::now_ms;
use crate::config::{Delivery, Subscription};
use crate::events::log::{DeadLetter, DeadLetters, Envelope, EventBus, Offsets, Reassigned, Record};
use crate::instance::memory::OverBudget;
use crate::instance::registry::Registry;
use crate::instance::slot::{Delivered, Loaded};
use crate::store::lacks_storage;
use crate::telemetry;

use super::pace::Pace;
use super::stats::Stats;
use super::{BATCH, SAVE_EVERY};

/// Most events delivered to a consumer in one transaction.
const RUN: usize = 32;

/// How a batch ended.
enum Progress {
    /// Every event of it delivered: there may be more.
    Delivered,
    /// Nothing to read, or the batch was interrupted.
    Idle,
    /// The log gave this consumer other partitions: its positions are stale.
    Reassigned,
}

/// How one event's delivery ended.
enum Outcome {
    /// Applied (or found in the inbox), or moved to the dead letters.
    Done,
    /// The consumer was stopped or the host is shutting down: try later.
    Interrupted,
}

pub(super) struct Dispatcher {
    pub(super) consumer: String,
    pub(super) topic: String,
    pub(super) subscription: Subscription,
    pub(super) registry: Arc<Registry>,
    pub(super) bus: Arc<dyn EventBus>,
    pub(super) dead_letters: Arc<dyn DeadLetters>,
    pub(super) stats: Arc<Stats>,
    pub(super) settings: Delivery,
    pub(super) token: CancellationToken,
}

/// Where a dispatcher stands in its topic.
#[derive(Default)]
struct Cursor {
    /// Per partition, everything up to it is delivered (`None`: not read
    /// from the log yet).
    positions: Option<Offsets>,
    /// The positions last committed to the log, and when.
    saved: Option<Offsets>,
    saved_at: Option<Instant>,
}

impl Dispatcher {
    pub(super) async fn run(self) {
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
                let _turn = slot.delivery.read().await;
                // Compared by value: waiting on `changed` below marks it seen.
                let generation = *resets.borrow_and_update();
                if generation != reset_seen {
                    // The reset rewound the positions; what was not saved is void.
                    reset_seen = generation;
                    cursor = Cursor::default();
                }
                if cursor.positions.is_none() {
                    match self.bus.committed(&self.consumer, &self.topic).await {
                        Ok(saved) => {
                            tracing::debug!(positions = ?saved, "positions read");
                            (cursor.positions, cursor.saved) = (Some(saved.clone()), Some(saved));
                        }
                        Err(err) => tracing::error!(cause = %format!("{err:#}"), "cannot read positions"),
                    }
                }
                appended.borrow_and_update();
                let progress = match &mut cursor.positions {
                    Some(positions) if !stopped => self.batch(positions).await,
                    _ => Progress::Idle,
                };
                if let Progress::Reassigned = progress {
                    // Read again from the log before anything is saved.
                    tracing::info!("partitions reassigned; reading positions again");
                    cursor = Cursor::default();
                }
                // Saved at most every SAVE_EVERY (an event delivered again
                // after a crash finds its inbox row), and at shutdown.
                let due = cursor.saved_at.is_none_or(|at| at.elapsed() >= SAVE_EVERY);
                if due || self.token.is_cancelled() {
                    self.save(&mut cursor).await;
                }
                self.stats.update(&self.consumer, &self.topic, |s| {
                    s.positions.clone_from(&cursor.positions)
                });
                matches!(progress, Progress::Delivered)
            };
            let unsaved = cursor.saved != cursor.positions;
            if self.token.is_cancelled() {
                return;
            }
            if !batch_done {
                tokio::select! {
                    _ = appended.changed(), if !stopped => pace.wait_unless(&self.token).await,
                    _ = changes.changed() => {}
                    _ = resets.changed() => {}
                    _ = tokio::time::sleep(self.bus.idle_read().unwrap_or(self.settings.backoff().1)), if !stopped => {}
                    _ = tokio::time::sleep(SAVE_EVERY), if unsaved => {}
                    _ = self.token.cancelled() => {
                        let _turn = slot.delivery.read().await;
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
        let Some(positions) = &cursor.positions else {
            return;
        };
        if cursor.saved.as_ref() == Some(positions) {
            return;
        }
        match self.bus.commit(&self.consumer, &self.topic, positions).await {
            Ok(()) => (cursor.saved, cursor.saved_at) = (Some(positions.clone()), Some(Instant::now())),
            Err(err) => tracing::error!(cause = %format!("{err:#}"), "cannot save positions"),
        }
    }

    /// Delivers one batch after `positions` and moves each partition's
    /// position past what it delivered.
    async fn batch(&self, positions: &mut Offsets) -> Progress {
        let batch = match self.bus.read(&self.consumer, &self.topic, positions, BATCH).await {
            Ok(batch) if !batch.is_empty() => batch,
            Ok(_) => return Progress::Idle,
            Err(err) if err.is::<Reassigned>() => return Progress::Reassigned,
            Err(err) => {
                tracing::error!(cause = %format!("{err:#}"), "cannot read the log");
                return Progress::Idle;
            }
        };
        // Events of types the consumer does not want are done at once.
        let (wanted, skipped): (Vec<_>, Vec<_>) = batch
            .iter()
            .partition(|record| self.subscription.wants(&record.event.event_type));
        // While all goes well the whole batch goes in runs, in log order
        // (so each key's events keep their order): one transaction per run
        // whatever the partitions. From a failed event on, partitions go
        // their own ways, so that one key's retries hold up only its own
        // partition of the batch.
        let (mut done, failure) = self.runs(&wanted).await;
        let rest = &wanted[done.len()..];
        // (Events left without a failure: the consumer was stopped.)
        if let (Some(first), Some(failure)) = (rest.first(), failure) {
            let mut failure = Some(failure);
            let mut partitions: BTreeMap<u32, Vec<&Record>> = BTreeMap::new();
            for &record in rest {
                partitions.entry(record.partition).or_default().push(record);
            }
            // Each partition returns the events it finished; the failed
            // event's partition starts with its failure.
            let finished = join_all(partitions.into_iter().map(|(partition, records)| {
                let failure = if partition == first.partition {
                    failure.take()
                } else {
                    None
                };
                self.partition(records, failure)
            }))
            .await;
            done.extend(finished.into_iter().flatten());
        }
        done.extend(skipped);
        let finished = done.len() == batch.len();
        advance(positions, &batch, &done);
        if finished { Progress::Delivered } else { Progress::Idle }
    }

    /// Delivers events in order, in runs of up to `RUN` per transaction,
    /// until one fails; returns the events delivered and the failure.
    /// Fewer of them than events and no failure: the consumer was
    /// stopped.
    async fn runs<'a>(&self, events: &[&'a Record]) -> (Vec<&'a Record>, Option<anyhow::Error>) {
        let mut done = Vec::with_capacity(events.len());
        for run in events.chunks(RUN) {
            let Some(loaded) = self.registry.get(&self.consumer) else {
                break;
            };
            let envelopes: Vec<&Envelope> = run.iter().map(|record| &record.event).collect();
            let delivered = deliver_run(&loaded, &envelopes).await.unwrap_or_else(|err| Delivered {
                applied: 0,
                failed: Some(err),
            });
            if delivered.applied > 0 {
                telemetry::record_deliveries(&self.consumer, &self.topic, "applied", delivered.applied);
                self.stats
                    .update(&self.consumer, &self.topic, |s| s.delivered += delivered.applied as u64);
            }
            done.extend(&run[..delivered.applied]);
            if delivered.failed.is_some() {
                return (done, delivered.failed);
            }
        }
        (done, None)
    }

    /// Delivers one partition's events in order: in runs, except that an
    /// event that fails goes on alone, with retries (its first attempt is
    /// `failure`, when the partition starts with a failed event). Returns
    /// the events delivered.
    async fn partition<'a>(&self, records: Vec<&'a Record>, mut failure: Option<anyhow::Error>) -> Vec<&'a Record> {
        let mut done = Vec::new();
        let mut rest = &records[..];
        while let Some(&record) = rest.first() {
            if let Some(failure) = failure.take() {
                match self.deliver(record, failure).await {
                    Outcome::Done => done.push(record),
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
    async fn deliver(&self, record: &Record, failure: anyhow::Error) -> Outcome {
        let envelope = &record.event;
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
                return self.dead_letter(record, attempt, error).await;
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

    async fn dead_letter(&self, record: &Record, attempts: u32, last_error: String) -> Outcome {
        let envelope = &record.event;
        let letter = DeadLetter {
            id: 0,
            consumer: self.consumer.clone(),
            topic: self.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            attempts,
            last_error,
            time: now_ms(),
            event: envelope.clone(),
        };
        match self.dead_letters.add(&letter).await {
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

/// Moves each partition's position up to (not past) its first event in
/// `batch` that is not among `done`.
fn advance(positions: &mut Offsets, batch: &[Record], done: &[&Record]) {
    let done: HashSet<(u32, u64)> = done.iter().map(|record| (record.partition, record.offset)).collect();
    let mut held = HashSet::new();
    for record in batch {
        if held.contains(&record.partition) {
            continue;
        }
        if done.contains(&(record.partition, record.offset)) {
            positions.insert(record.partition, record.offset);
        } else {
            held.insert(record.partition);
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
