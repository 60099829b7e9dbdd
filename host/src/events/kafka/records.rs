//! Events as Kafka records: the key is the event's key, the value its
//! payload, and the rest of its envelope goes in headers.

use std::collections::HashMap;

use anyhow::Context as _;
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::events::log::{Envelope, Record};

/// Produces `events` (to the broker's `name` of their topics) and waits
/// until the broker acknowledged every one: enqueued in order (one key's
/// events keep theirs), then awaited.
pub(super) async fn produce(
    producer: &FutureProducer,
    events: &[Envelope],
    name: impl Fn(&str) -> String,
) -> anyhow::Result<()> {
    let mut deliveries = Vec::with_capacity(events.len());
    for event in events {
        let name = name(&event.topic);
        let record = FutureRecord::to(&name)
            .key(&event.key)
            .payload(&event.payload)
            .timestamp(event.time as i64)
            .headers(headers(event));
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push(delivery),
            Err((err, _)) => return Err(err).context("cannot hand an event to the Kafka producer"),
        }
    }
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((err, _))) => return Err(err).context("the broker did not take an event"),
            Err(_) => anyhow::bail!("the Kafka producer went away"),
        }
    }
    Ok(())
}

fn headers(event: &Envelope) -> OwnedHeaders {
    let time = event.time.to_string();
    let version = event.schema_version.to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: "id",
            value: Some(&event.id),
        })
        .insert(Header {
            key: "type",
            value: Some(&event.event_type),
        })
        .insert(Header {
            key: "source",
            value: Some(&event.source),
        })
        .insert(Header {
            key: "time",
            value: Some(&time),
        })
        .insert(Header {
            key: "schema-version",
            value: Some(&version),
        });
    if let Some(request_id) = &event.request_id {
        headers = headers.insert(Header {
            key: "request-id",
            value: Some(request_id),
        });
    }
    headers
}

/// A record as an event of `topic` (its name without the prefix).
pub(super) fn to_record(message: &OwnedMessage, topic: &str) -> anyhow::Result<Record> {
    let mut fields: HashMap<&str, String> = HashMap::new();
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let value = header.value.map(String::from_utf8_lossy).unwrap_or_default();
            fields.insert(header.key, value.into_owned());
        }
    }
    let mut field = |name: &str| {
        fields
            .remove(name)
            .with_context(|| format!("a record of {topic} without the header `{name}`"))
    };
    let text = |bytes: Option<&[u8]>| String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned();
    let event = Envelope {
        id: field("id")?,
        topic: topic.to_string(),
        key: text(message.key()),
        event_type: field("type")?,
        source: field("source")?,
        time: field("time")?.parse().context("a record's time is not a number")?,
        schema_version: field("schema-version")?
            .parse()
            .context("a record's schema version is not a number")?,
        payload: text(message.payload()),
        request_id: field("request-id").ok(),
    };
    Ok(Record {
        partition: message.partition() as u32,
        // Ours count from 1: a position is then Kafka's committed offset.
        offset: message.offset() as u64 + 1,
        event,
    })
}
