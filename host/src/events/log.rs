//! The event log's seam: what the relay appends to and the dispatchers
//! read from, shaped like Kafka so that a broker can stand behind it.
//!
//! A topic has partitions; an event goes to the partition of its key
//! (`partition.rs`: Kafka's own partitioner),
//! and within a partition every event has an offset, from 1 up in append
//! order, never reused. A consumer's place in a topic is one position per
//! partition: the offset of the last event it is done with (0: none).
//! Events of one key are therefore read in the order they were appended.
//!
//! The embedded backend, `SqliteBus` (`embedded/`), keeps the log in one
//! SQLite file (`bus.db`). Components never see the seam.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

/// Per partition of a topic, an offset in it.
pub type Offsets = BTreeMap<u32, u64>;

/// An event as the log stores and delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique forever (UUIDv7): consumers drop an event they have seen.
    pub id: String,
    pub topic: String,
    /// Correlation key; events with one key are delivered in log order.
    pub key: String,
    pub event_type: String,
    /// The publishing component.
    pub source: String,
    /// Milliseconds since the Unix epoch.
    pub time: u64,
    pub schema_version: u32,
    /// JSON document.
    pub payload: String,
    /// The request that caused it, if any.
    pub request_id: Option<String>,
}

/// An event read from the log, with its place there.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
    pub event: Envelope,
}

/// One partition of a topic, seen from one consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStats {
    pub partition: u32,
    /// The consumer is done with everything up to here.
    pub position: u64,
    /// The partition's last offset (0 when it never had an event).
    pub head: u64,
    /// Events after the consumer's position.
    pub lag: u64,
    /// Events of the partition still in the log (retention deletes the
    /// rest); `None` where the log does not say.
    pub retained: Option<u64>,
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Appends events in order, each to its topic's partition for its key.
    /// A retried append may store an event again: consumers drop an event
    /// whose id they have seen (their inbox).
    async fn append(&self, events: &[Envelope]) -> anyhow::Result<()>;
    /// Up to `limit` events of `topic` for `consumer`, after `after` in
    /// each partition (from its beginning where `after` has no entry), each
    /// partition's in offset order. A log shared by a group of consumers
    /// (a broker) reads only the partitions this one holds, and fails with
    /// [`Reassigned`] when they changed.
    async fn read(&self, consumer: &str, topic: &str, after: &Offsets, limit: usize) -> anyhow::Result<Vec<Record>>;
    /// Where `consumer` stands in `topic`, as last committed.
    async fn committed(&self, consumer: &str, topic: &str) -> anyhow::Result<Offsets>;
    /// Records that `consumer` is done with `topic` up to `positions`
    /// (partitions it does not name, or another member of its group holds,
    /// keep theirs).
    async fn commit(&self, consumer: &str, topic: &str, positions: &Offsets) -> anyhow::Result<()>;
    /// Moves `consumer` back to the beginning of `topic`.
    async fn rewind(&self, consumer: &str, topic: &str) -> anyhow::Result<()>;
    /// Changes whenever events of `topic` are appended.
    fn watch(&self, topic: &str) -> watch::Receiver<u64>;
    /// Every partition of `topic`, relative to a consumer at `positions`.
    async fn partitions(&self, topic: &str, positions: &Offsets) -> anyhow::Result<Vec<PartitionStats>>;
    /// Bytes the log holds of `topic` (see [`event_size`]).
    async fn topic_bytes(&self, topic: &str) -> anyhow::Result<u64>;
    /// Deletes events of `topic` that every consumer is done with
    /// (`delivered`, per partition; `None`: nobody reads the topic) and
    /// that `keep` does not keep; returns how many went. A log whose
    /// retention is its own (a broker's) deletes nothing.
    async fn prune(&self, topic: &str, delivered: Option<&Offsets>, keep: Keep) -> anyhow::Result<usize>;
    /// Makes sure `topics` exist (a broker's are created with the
    /// configured partitions; the embedded log makes a topic at its first
    /// event).
    async fn prepare(&self, _topics: &[String]) -> anyhow::Result<()> {
        Ok(())
    }
    /// How soon a dispatcher that read nothing reads again unless
    /// [`watch`](EventBus::watch) wakes it first: `None` for a log whose
    /// every append the watch tells (then a slow sweep will do); a
    /// broker's reads wait for events themselves.
    fn idle_read(&self) -> Option<Duration> {
        None
    }
    /// Whether the log can be used now (a broker reached, its topics made).
    fn ready(&self) -> bool {
        true
    }
    /// Leaves the log once the dispatchers are done: a broker's groups
    /// then hand this host's partitions to their other members at once.
    async fn close(&self) {}
}

/// What [`EventBus::read`] fails with when the consumer's share of the
/// topic's partitions changed (a group rebalance): its positions in them
/// are stale, and it reads them again ([`EventBus::committed`]).
#[derive(Debug)]
pub struct Reassigned;

impl std::fmt::Display for Reassigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the consumer group gave this member other partitions")
    }
}

impl std::error::Error for Reassigned {}

/// Per topic, a watch that changes when events of the topic are appended
/// (once someone watches it), so that an append wakes only the dispatchers
/// of its topics: what [`EventBus::watch`] hands out.
#[derive(Default)]
pub struct Appended(Mutex<HashMap<String, watch::Sender<u64>>>);

impl Appended {
    pub fn watch(&self, topic: &str) -> watch::Receiver<u64> {
        let mut watched = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        watched
            .entry(topic.to_string())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Tells the watchers of every topic of `events` that the log is now
    /// at `mark` (a value that grows with every append).
    pub fn tell(&self, events: &[Envelope], mark: u64) {
        let watched = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for event in events {
            if let Some(sender) = watched.get(&event.topic)
                && *sender.borrow() != mark
            {
                sender.send_replace(mark);
            }
        }
    }
}

/// What retention keeps of a topic: events at least as new as `since`
/// (milliseconds since the epoch), among the newest `events`, and within
/// the newest `bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    pub since: u64,
    pub events: u64,
    pub bytes: u64,
}

/// An event a consumer could not apply within its attempts.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub consumer: String,
    pub topic: String,
    /// Where the event was in its topic.
    pub partition: u32,
    pub offset: u64,
    pub attempts: u32,
    pub last_error: String,
    /// When it was dead-lettered, milliseconds since the Unix epoch.
    pub time: u64,
    pub event: Envelope,
}

/// Where dead letters wait for an operator, whichever log the events came
/// from.
#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    async fn add(&self, letter: &DeadLetter) -> anyhow::Result<()>;
    async fn all(&self) -> anyhow::Result<Vec<DeadLetter>>;
    async fn get(&self, id: i64) -> anyhow::Result<Option<DeadLetter>>;
    async fn remove(&self, id: i64) -> anyhow::Result<()>;
    /// Deletes dead letters older than `before_time`, then the oldest until
    /// they hold at most `max_bytes`; returns how many went.
    async fn expire(&self, before_time: u64, max_bytes: u64) -> anyhow::Result<usize>;
}

/// What an event costs the log, in bytes: its payload, key and type, and a
/// fixed allowance for the rest of its row (the id among it) and index.
pub fn event_size(event: &Envelope) -> u64 {
    (event.key.len() + event.event_type.len() + event.payload.len()) as u64 + ROW_OVERHEAD
}

pub(super) const ROW_OVERHEAD: u64 = 128;
