//! The event log: a durable, ordered record of every committed event, and
//! the position of every consumer in it.
//!
//! [`EventBus`] is the seam for other backends (Kafka): components never see
//! it; the relay appends to it and the dispatchers read from it. The embedded
//! backend, [`SqliteBus`], keeps the log in one SQLite file (`bus.db`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;

/// An event as the log stores and delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique forever (UUIDv7): appending the same id twice stores it once.
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

/// An event a consumer could not apply within its attempts.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub consumer: String,
    pub topic: String,
    /// The event's position in its topic.
    pub position: u64,
    pub attempts: u32,
    pub last_error: String,
    /// When it was dead-lettered, milliseconds since the Unix epoch.
    pub time: u64,
    pub event: Envelope,
}

/// What the log holds of a topic, seen from one consumer.
#[derive(Debug, Clone, Copy)]
pub struct TopicStats {
    /// The topic's last position (0 when it never had an event).
    pub head: u64,
    /// Events after the consumer's position.
    pub lag: u64,
    /// Events of the topic still in the log (retention deletes the rest).
    pub retained: u64,
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Appends events in order; an event whose id is already in the log is
    /// skipped, so the relay may safely append a batch twice.
    async fn append(&self, events: &[Envelope]) -> anyhow::Result<()>;
    /// Up to `limit` events of `topic` after `position`, oldest first, each
    /// with its own position.
    async fn read(&self, topic: &str, position: u64, limit: usize) -> anyhow::Result<Vec<(u64, Envelope)>>;
    /// Where `consumer` stands in `topic`: everything up to it is delivered.
    async fn position(&self, consumer: &str, topic: &str) -> anyhow::Result<u64>;
    async fn commit(&self, consumer: &str, topic: &str, position: u64) -> anyhow::Result<()>;
    /// Changes whenever events of `topic` are appended.
    fn watch(&self, topic: &str) -> watch::Receiver<u64>;
    /// What the log holds of `topic` relative to a consumer at `position`.
    async fn topic_stats(&self, topic: &str, position: u64) -> anyhow::Result<TopicStats>;
    async fn add_dead_letter(&self, letter: &DeadLetter) -> anyhow::Result<()>;
    async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>>;
    async fn dead_letter(&self, id: i64) -> anyhow::Result<Option<DeadLetter>>;
    async fn remove_dead_letter(&self, id: i64) -> anyhow::Result<()>;
    /// Bytes the log holds of `topic` (see [`event_size`]).
    async fn topic_bytes(&self, topic: &str) -> anyhow::Result<u64>;
    /// Deletes events of `topic` up to `delivered` (every consumer is past
    /// them) that `keep` does not keep; returns how many went.
    async fn prune(&self, topic: &str, delivered: u64, keep: Keep) -> anyhow::Result<usize>;
    /// Deletes dead letters older than `before_time`, then the oldest until
    /// they hold at most `max_bytes`; returns how many went.
    async fn prune_dead_letters(&self, before_time: u64, max_bytes: u64) -> anyhow::Result<usize>;
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

/// What an event costs the log, in bytes: its payload, key and type, and a
/// fixed allowance for the rest of its row (the id among it) and index.
pub fn event_size(event: &Envelope) -> u64 {
    (event.key.len() + event.event_type.len() + event.payload.len()) as u64 + ROW_OVERHEAD
}

const ROW_OVERHEAD: u64 = 128;

/// [`event_size`] in SQL, over an `events` or `dead_letters` row.
const SIZE: &str = "(octet_length(payload) + octet_length(key) + octet_length(type) + 128)";

/// The log's schema, applied in order and counted in `PRAGMA user_version`.
/// The first one is written to adopt a log made before migrations were
/// numbered (which has its tables and a `user_version` of 0).
const MIGRATIONS: &[&str] = &["CREATE TABLE IF NOT EXISTS events (
            position INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            topic TEXT NOT NULL,
            key TEXT NOT NULL,
            type TEXT NOT NULL,
            source TEXT NOT NULL,
            time INTEGER NOT NULL,
            schema_version INTEGER NOT NULL,
            payload TEXT NOT NULL,
            request_id TEXT
        );
        CREATE INDEX IF NOT EXISTS events_by_topic ON events (topic, position);
        CREATE TABLE IF NOT EXISTS positions (
            consumer TEXT NOT NULL,
            topic TEXT NOT NULL,
            position INTEGER NOT NULL,
            PRIMARY KEY (consumer, topic)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            consumer TEXT NOT NULL,
            topic TEXT NOT NULL,
            position INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            last_error TEXT NOT NULL,
            time INTEGER NOT NULL,
            event_id TEXT NOT NULL,
            key TEXT NOT NULL,
            type TEXT NOT NULL,
            source TEXT NOT NULL,
            event_time INTEGER NOT NULL,
            schema_version INTEGER NOT NULL,
            payload TEXT NOT NULL
        );"];

pub struct SqliteBus {
    conn: Mutex<Connection>,
    /// Per topic, [`EventBus::topic_bytes`] (once asked), kept up to date
    /// by appends and prunes under the connection's lock.
    bytes: Mutex<HashMap<String, u64>>,
    /// Per topic, the last position appended (once someone watches it), so
    /// that an append wakes only the dispatchers of its topic.
    appended: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl SqliteBus {
    pub fn open(path: &Path) -> anyhow::Result<SqliteBus> {
        let conn = Connection::open(path).with_context(|| format!("failed to open event log {}", path.display()))?;
        conn.execute_batch(
            // 1 KiB pages, like the component databases (see `database`).
            "PRAGMA page_size = 1024;
             PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;",
        )
        .map_err(|err| crate::store::in_use(err, path))
        .with_context(|| format!("failed to prepare event log {}", path.display()))?;
        crate::store::migrate(&conn, MIGRATIONS)
            .with_context(|| format!("failed to migrate event log {}", path.display()))?;
        crate::store::stable_plans(&conn)?;
        Ok(SqliteBus {
            conn: Mutex::new(conn),
            bytes: Mutex::default(),
            appended: Mutex::default(),
        })
    }

    /// Adds `delta` to the bytes of `topic` if they are counted yet.
    fn count(&self, topic: &str, delta: i64) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(total) = bytes.get_mut(topic) {
            *total = total.saturating_add_signed(delta);
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<R>) -> anyhow::Result<R> {
        // A panic while holding this lock is a host bug; keep going with the
        // connection, which SQLite keeps consistent on its own.
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(f(&mut conn)?)
    }
}

#[async_trait]
impl EventBus for SqliteBus {
    async fn append(&self, events: &[Envelope]) -> anyhow::Result<()> {
        let last = self.with(|conn| {
            conn.prepare_cached("BEGIN")?.execute([])?;
            let appended = (|| {
                let mut insert = conn.prepare_cached(
                    "INSERT OR IGNORE INTO events (id, topic, key, type, source, time, schema_version, payload, request_id)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )?;
                let mut added = Vec::new();
                for e in events {
                    let inserted = insert.execute(params![
                        e.id,
                        e.topic,
                        e.key,
                        e.event_type,
                        e.source,
                        e.time,
                        e.schema_version,
                        e.payload,
                        e.request_id
                    ])?;
                    if inserted == 1 {
                        added.push(e);
                    }
                }
                let last: u64 = conn
                    .prepare_cached("SELECT COALESCE(MAX(position), 0) FROM events")?
                    .query_row([], |row| row.get(0))?;
                conn.prepare_cached("COMMIT")?.execute([])?;
                for e in added {
                    self.count(&e.topic, event_size(e) as i64);
                }
                Ok(last)
            })();
            if appended.is_err() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            appended
        })?;
        let watched = self.appended.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for event in events {
            if let Some(sender) = watched.get(&event.topic)
                && *sender.borrow() != last
            {
                sender.send_replace(last);
            }
        }
        Ok(())
    }

    async fn read(&self, topic: &str, position: u64, limit: usize) -> anyhow::Result<Vec<(u64, Envelope)>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT position, id, topic, key, type, source, time, schema_version, payload, request_id
                 FROM events WHERE topic = ? AND position > ? ORDER BY position LIMIT ?",
            )?;
            let rows = stmt.query_map(params![topic, position, limit as u64], |row| {
                Ok((
                    row.get(0)?,
                    Envelope {
                        id: row.get(1)?,
                        topic: row.get(2)?,
                        key: row.get(3)?,
                        event_type: row.get(4)?,
                        source: row.get(5)?,
                        time: row.get(6)?,
                        schema_version: row.get(7)?,
                        payload: row.get(8)?,
                        request_id: row.get(9)?,
                    },
                ))
            })?;
            rows.collect()
        })
    }

    async fn position(&self, consumer: &str, topic: &str) -> anyhow::Result<u64> {
        self.with(|conn| {
            conn.prepare_cached("SELECT position FROM positions WHERE consumer = ? AND topic = ?")?
                .query_row(params![consumer, topic], |row| row.get(0))
                .optional()
                .map(|position| position.unwrap_or(0))
        })
    }

    async fn commit(&self, consumer: &str, topic: &str, position: u64) -> anyhow::Result<()> {
        self.with(|conn| {
            conn.prepare_cached(
                "INSERT INTO positions (consumer, topic, position) VALUES (?, ?, ?)
                 ON CONFLICT (consumer, topic) DO UPDATE SET position = excluded.position",
            )?
            .execute(params![consumer, topic, position])
            .map(drop)
        })
    }

    fn watch(&self, topic: &str) -> watch::Receiver<u64> {
        let mut watched = self.appended.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        watched
            .entry(topic.to_string())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    async fn topic_stats(&self, topic: &str, position: u64) -> anyhow::Result<TopicStats> {
        self.with(|conn| {
            conn.prepare_cached(
                "SELECT COALESCE(MAX(position), 0), COUNT(*) FILTER (WHERE position > ?2), COUNT(*)
                 FROM events WHERE topic = ?1",
            )?
            .query_row(params![topic, position], |row| {
                Ok(TopicStats {
                    head: row.get(0)?,
                    lag: row.get(1)?,
                    retained: row.get(2)?,
                })
            })
        })
    }

    async fn add_dead_letter(&self, l: &DeadLetter) -> anyhow::Result<()> {
        let e = &l.event;
        self.with(|conn| {
            conn.prepare_cached(
                "INSERT INTO dead_letters (consumer, topic, position, attempts, last_error, time,
                     event_id, key, type, source, event_time, schema_version, payload)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                l.consumer,
                l.topic,
                l.position,
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

    async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        self.with(|conn| {
            conn.prepare_cached(&format!("{DEAD_LETTERS} ORDER BY id"))?
                .query_map([], dead_letter_from_row)?
                .collect()
        })
    }

    async fn dead_letter(&self, id: i64) -> anyhow::Result<Option<DeadLetter>> {
        self.with(|conn| {
            conn.prepare_cached(&format!("{DEAD_LETTERS} WHERE id = ?"))?
                .query_row([id], dead_letter_from_row)
                .optional()
        })
    }

    async fn remove_dead_letter(&self, id: i64) -> anyhow::Result<()> {
        self.with(|conn| {
            conn.prepare_cached("DELETE FROM dead_letters WHERE id = ?")?
                .execute([id])
                .map(drop)
        })
    }

    async fn topic_bytes(&self, topic: &str) -> anyhow::Result<u64> {
        self.with(|conn| {
            let mut bytes = self.bytes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(&total) = bytes.get(topic) {
                return Ok(total);
            }
            let total: u64 = conn
                .prepare_cached(&format!("SELECT COALESCE(SUM({SIZE}), 0) FROM events WHERE topic = ?"))?
                .query_row([topic], |row| row.get(0))?;
            bytes.insert(topic.to_string(), total);
            Ok(total)
        })
    }

    async fn prune(&self, topic: &str, delivered: u64, keep: Keep) -> anyhow::Result<usize> {
        // SQLite's integers are signed; a topic nobody hears is all delivered.
        let delivered = delivered.min(i64::MAX as u64);
        let over_bytes = self.topic_bytes(topic).await? > keep.bytes;
        let freed = self.with(|conn| {
            // The newest `keep.events` events of the topic start after this
            // position, and the newest `keep.bytes` after that one.
            let beyond_count: u64 = if keep.events == 0 {
                0
            } else {
                conn.prepare_cached(
                    "SELECT COALESCE((SELECT position FROM events WHERE topic = ?1 ORDER BY position DESC LIMIT 1 OFFSET ?2), 0)",
                )?
                .query_row(params![topic, keep.events], |row| row.get(0))?
            };
            let beyond_bytes: u64 = if !over_bytes {
                0
            } else {
                conn.prepare_cached(&format!(
                    "SELECT COALESCE(MAX(position), 0) FROM (
                         SELECT position, SUM({SIZE}) OVER (ORDER BY position DESC) AS newer
                         FROM events WHERE topic = ?1)
                     WHERE newer > ?2"
                ))?
                .query_row(params![topic, keep.bytes], |row| row.get(0))?
            };
            conn.prepare_cached(&format!(
                "DELETE FROM events WHERE topic = ?1 AND position <= ?2 AND (time < ?3 OR position <= ?4)
                 RETURNING {SIZE}"
            ))?
            .query_map(
                params![topic, delivered, keep.since, beyond_count.max(beyond_bytes)],
                |row| row.get::<_, u64>(0),
            )?
            .collect::<rusqlite::Result<Vec<u64>>>()
        })?;
        self.count(topic, -(freed.iter().sum::<u64>() as i64));
        Ok(freed.len())
    }

    async fn prune_dead_letters(&self, before_time: u64, max_bytes: u64) -> anyhow::Result<usize> {
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

const DEAD_LETTERS: &str = "SELECT id, consumer, topic, position, attempts, last_error, time,
        event_id, key, type, source, event_time, schema_version, payload
    FROM dead_letters";

fn dead_letter_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: row.get(0)?,
        consumer: row.get(1)?,
        topic: row.get(2)?,
        position: row.get(3)?,
        attempts: row.get(4)?,
        last_error: row.get(5)?,
        time: row.get(6)?,
        event: Envelope {
            id: row.get(7)?,
            topic: row.get(2)?,
            key: row.get(8)?,
            event_type: row.get(9)?,
            source: row.get(10)?,
            time: row.get(11)?,
            schema_version: row.get(12)?,
            payload: row.get(13)?,
            request_id: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, topic: &str) -> Envelope {
        Envelope {
            id: id.into(),
            topic: topic.into(),
            key: "1".into(),
            event_type: "Test".into(),
            source: "test".into(),
            time: 0,
            schema_version: 1,
            payload: "{}".into(),
            request_id: None,
        }
    }

    #[tokio::test]
    async fn appends_once_and_reads_by_topic() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let bus = SqliteBus::open(&dir.path().join("bus.db"))?;
        let (mut t, mut u) = (bus.watch("t"), bus.watch("u"));
        bus.append(&[event("a", "t"), event("b", "u"), event("c", "t")]).await?;
        assert!(t.has_changed()? && u.has_changed()?);
        t.borrow_and_update();
        u.borrow_and_update();
        bus.append(&[event("d", "t")]).await?;
        // Only the dispatchers of the appended topic wake up.
        assert!(t.has_changed()? && !u.has_changed()?);
        let read = bus.read("t", 0, 10).await?;
        assert_eq!(
            read.iter().map(|(_, e)| e.id.as_str()).collect::<Vec<_>>(),
            ["a", "c", "d"]
        );
        assert_eq!(bus.read("t", read[0].0, 10).await?.len(), 2);
        // An event id already in the log is not appended again.
        bus.append(&[event("c", "t")]).await?;
        assert_eq!(bus.read("t", 0, 10).await?.len(), 3);
        assert_eq!(bus.position("view", "t").await?, 0);
        bus.commit("view", "t", 3).await?;
        assert_eq!(bus.position("view", "t").await?, 3);
        Ok(())
    }

    #[tokio::test]
    async fn prunes_delivered_events_beyond_a_topics_bytes_and_counts_them() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bus.db");
        let bus = SqliteBus::open(&path)?;
        let big = |id: &str| Envelope {
            payload: format!("\"{}\"", "x".repeat(998)),
            ..event(id, "t")
        };
        let events: Vec<_> = (0..10).map(|i| big(&i.to_string())).collect();
        let size = event_size(&events[0]);
        bus.append(&events).await?;
        bus.append(&events[..2]).await?;
        assert_eq!(bus.topic_bytes("t").await?, 10 * size, "a repeated append counts once");

        // The newest 3 events' bytes are kept; of the rest, only what every
        // consumer is past (up to 5) goes.
        let keep = Keep {
            since: 0,
            events: 0,
            bytes: 3 * size,
        };
        assert_eq!(bus.prune("t", 5, keep).await?, 5);
        assert_eq!(bus.prune("t", u64::MAX, keep).await?, 2);
        assert_eq!(bus.topic_bytes("t").await?, 3 * size);
        drop(bus);
        assert_eq!(
            SqliteBus::open(&path)?.topic_bytes("t").await?,
            3 * size,
            "SQL and Rust agree"
        );
        Ok(())
    }
}
