//! The admin API's JSON, apart from the types the host keeps its state in,
//! so that either may change without the other.

use serde::Serialize;
use serde_json::Value;

use crate::events::SubscriptionStats;
use crate::events::log::{DeadLetter as StoredLetter, PartitionStats};
use crate::instance::registry::Status;

/// A component: `GET /admin/components`, and the answer of a deploy, a
/// rollback, a stop or a start.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    name: String,
    state: &'static str,
    version: String,
    loaded_at: u64,
    in_flight: usize,
    previous_version: Option<String>,
}

impl From<Status> for Component {
    fn from(status: Status) -> Component {
        Component {
            name: status.name,
            state: status.state,
            version: status.version,
            loaded_at: status.loaded_at,
            in_flight: status.in_flight,
            previous_version: status.previous_version,
        }
    }
}

/// One subscription: `GET /admin/subscriptions`. Its position, head, lag
/// and retained events are the sums over the topic's partitions, each of
/// which is listed too.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub consumer: String,
    pub topic: String,
    pub state: &'static str,
    /// Events delivered (each partition's position, summed).
    pub position: u64,
    /// Events ever appended (each partition's last offset, summed).
    pub head: u64,
    /// Events after the positions.
    pub lag: u64,
    /// Events of the topic still in the log, where the log says.
    pub retained: Option<u64>,
    pub partitions: Vec<Partition>,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
}

/// One partition of a subscription's topic.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Partition {
    partition: u32,
    /// Everything up to this offset is delivered.
    position: u64,
    /// The partition's last offset (0 when it never had an event).
    head: u64,
    lag: u64,
}

impl Subscription {
    pub fn new(
        consumer: String,
        topic: String,
        state: &'static str,
        partitions: &[PartitionStats],
        stats: SubscriptionStats,
    ) -> Subscription {
        let sum = |field: fn(&PartitionStats) -> u64| partitions.iter().map(field).sum();
        Subscription {
            consumer,
            topic,
            state,
            position: sum(|p| p.position),
            head: sum(|p| p.head),
            lag: sum(|p| p.lag),
            retained: partitions.iter().map(|p| p.retained).sum(),
            partitions: partitions
                .iter()
                .map(|p| Partition {
                    partition: p.partition,
                    position: p.position,
                    head: p.head,
                    lag: p.lag,
                })
                .collect(),
            delivered: stats.delivered,
            dead_lettered: stats.dead_lettered,
            last_error: stats.last_error,
            last_error_at: stats.last_error_at,
        }
    }
}

/// An event a consumer could not apply: `GET /admin/dead-letters`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    id: i64,
    consumer: String,
    topic: String,
    /// Where the event was in its topic.
    partition: u32,
    offset: u64,
    attempts: u32,
    last_error: String,
    /// When it was dead-lettered, milliseconds since the Unix epoch.
    time: u64,
    event: Event,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    id: String,
    topic: String,
    key: String,
    #[serde(rename = "type")]
    event_type: String,
    source: String,
    time: u64,
    schema_version: u32,
    payload: Value,
}

impl From<StoredLetter> for DeadLetter {
    fn from(letter: StoredLetter) -> DeadLetter {
        let event = letter.event;
        DeadLetter {
            id: letter.id,
            consumer: letter.consumer,
            topic: letter.topic,
            partition: letter.partition,
            offset: letter.offset,
            attempts: letter.attempts,
            last_error: letter.last_error,
            time: letter.time,
            event: Event {
                id: event.id,
                topic: event.topic,
                key: event.key,
                event_type: event.event_type,
                source: event.source,
                time: event.time,
                schema_version: event.schema_version,
                payload: serde_json::from_str(&event.payload).unwrap_or(Value::Null),
            },
        }
    }
}
