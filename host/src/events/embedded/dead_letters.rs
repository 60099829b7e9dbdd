//! The embedded log's dead letters: a table of `bus.db`.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{SIZE, SqliteBus};
use crate::events::log::{DeadLetter, DeadLetters, Envelope};

#[async_trait]
impl DeadLetters for SqliteBus {
    async fn add(&self, l: &DeadLetter) -> anyhow::Result<()> {
        let e = &l.event;
        self.with(|conn| {
            conn.prepare_cached(
                "INSERT INTO dead_letters (consumer, topic, partition, offset, attempts, last_error, time,
                     event_id, key, type, source, event_time, schema_version, payload)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                l.consumer,
                l.topic,
                l.partition,
                l.offset,
                l.attempts,
                l.last_error,
                l.time,
                e.id,
                e.key,
                e.event_type,
                e.source,
                e.time,
                e.schema_version,
                e.payload
            ])
            .map(drop)
        })
    }

    async fn all(&self) -> anyhow::Result<Vec<DeadLetter>> {
        self.with(|conn| {
            conn.prepare_cached(&format!("{DEAD_LETTERS} ORDER BY id"))?
                .query_map([], dead_letter_from_row)?
                .collect()
        })
    }

    async fn get(&self, id: i64) -> anyhow::Result<Option<DeadLetter>> {
        self.with(|conn| {
            conn.prepare_cached(&format!("{DEAD_LETTERS} WHERE id = ?"))?
                .query_row([id], dead_letter_from_row)
                .optional()
        })
    }

    async fn remove(&self, id: i64) -> anyhow::Result<()> {
        self.with(|conn| {
            conn.prepare_cached("DELETE FROM dead_letters WHERE id = ?")?
                .execute([id])
                .map(drop)
        })
    }

    async fn expire(&self, before_time: u64, max_bytes: u64) -> anyhow::Result<usize> {
        self.with(|conn| {
            let beyond_bytes: i64 = conn
                .prepare_cached(&format!(
                    "SELECT COALESCE(MAX(id), 0) FROM (
                         SELECT id, SUM({SIZE} + octet_length(last_error)) OVER (ORDER BY id DESC) AS newer
                         FROM dead_letters)
                     WHERE newer > ?1"
                ))?
                .query_row([max_bytes], |row| row.get(0))?;
            conn.prepare_cached("DELETE FROM dead_letters WHERE time < ?1 OR id <= ?2")?
                .execute(params![before_time, beyond_bytes])
        })
    }
}

const DEAD_LETTERS: &str = "SELECT id, consumer, topic, partition, offset, attempts, last_error, time,
        event_id, key, type, source, event_time, schema_version, payload
    FROM dead_letters";

fn dead_letter_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: row.get(0)?,
        consumer: row.get(1)?,
        topic: row.get(2)?,
        partition: row.get(3)?,
        offset: row.get(4)?,
        attempts: row.get(5)?,
        last_error: row.get(6)?,
        time: row.get(7)?,
        event: Envelope {
            id: row.get(8)?,
            topic: row.get(2)?,
            key: row.get(9)?,
            event_type: row.get(10)?,
            source: row.get(11)?,
            time: row.get(12)?,
            schema_version: row.get(13)?,
            payload: row.get(14)?,
            request_id: None,
        },
    })
}
