//! The admin API's JSON, apart from the types the host keeps its state in,
//! so that either may change without the other.

use serde::Serialize;
use serde_json::Value;

use crate::events::SubscriptionStats;
use crate::events::log::{DeadLetter as StoredLetter, TopicStats};
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

/// One subscription: `GET /admin/subscriptions`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub consumer: String,
    pub topic: String,
    pub state: &'static str,
    /// Everything up to here is delivered.
    pub position: u64,
    /// The topic's last position (0 when it never had an event).
    pub head: u64,
    /// Events after the position.
    pub lag: u64,
    /// Events of the topic still in the log.
    pub retained: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
}

impl Subscription {
    pub fn new(
        consumer: String,
        topic: String,
        state: &'static str,
        position: u64,
        log: TopicStats,
        stats: SubscriptionStats,
    ) -> Subscription {
        Subscription {
            consumer,
            topic,
            state,
            position,
            head: log.head,
            lag: log.lag,
            retained: log.retained,
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
    /// The event's position in its topic.
    position: u64,
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
            position: letter.position,
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
