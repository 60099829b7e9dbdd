//! The embedded event log: `EventBus` and `DeadLetters` (in
//! `dead_letters.rs`) in one SQLite file (`bus.db`), for one machine and no
//! broker.
//!
//! Events are rows in append order (`position`, the log's own order across
//! partitions), each with its partition and its offset there; `partitions`
//! holds each topic's partitions and their last offsets, so an offset is
//! never reused even once retention has deleted every event; `offsets`
//! holds each consumer's positions.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use async_trait::async_trait;
use rusqlite::{Connection, params};
use tokio::sync::watch;

use super::log::{Appended, Envelope, EventBus, Keep, Offsets, PartitionStats, Record, event_size};
use super::partition::partition;

mod dead_letters;

/// [`event_size`] in SQL, over an `events` or `dead_letters` row.
const SIZE: &str = "(octet_length(payload) + octet_length(key) + octet_length(type) + 128)";

/// The log's schema, applied in order and counted in `PRAGMA user_version`.
/// The first one adopts a log made before migrations were numbered (which
/// has its tables and a `user_version` of 0). The second gives topics
/// partitions: the topics already there keep one, whose offsets are the
/// old positions, so every consumer stays where it was.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS events (
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
    );",
    "ALTER TABLE events ADD COLUMN partition INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE events ADD COLUMN offset INTEGER NOT NULL DEFAULT 0;
    UPDATE events SET offset = position;
    CREATE INDEX events_by_partition ON events (topic, partition, offset);
    CREATE TABLE partitions (
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        head INTEGER NOT NULL,
        PRIMARY KEY (topic, partition)
    ) WITHOUT ROWID;
    INSERT INTO partitions SELECT topic, 0, MAX(position) FROM events GROUP BY topic;
    INSERT OR IGNORE INTO partitions SELECT topic, 0, MAX(position) FROM positions GROUP BY topic;
    CREATE TABLE offsets (
        consumer TEXT NOT NULL,
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (consumer, topic, partition)
    ) WITHOUT ROWID;
    INSERT INTO offsets SELECT consumer, topic, 0, position FROM positions;
    DROP TABLE positions;
    ALTER TABLE dead_letters ADD COLUMN partition INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE dead_letters RENAME COLUMN position TO offset;",
];

pub struct SqliteBus {
    conn: Mutex<Connection>,
    /// How many partitions a topic gets when its first event comes.
    new_partitions: u32,
    /// Per topic, its partition count (once known).
    partitions: Mutex<HashMap<String, u32>>,
    /// Per topic, [`EventBus::topic_bytes`] (once asked), kept up to date
    /// by appends and prunes under the connection's lock.
    bytes: Mutex<HashMap<String, u64>>,
    /// Watched by the dispatchers; marked with the last position appended.
    appended: Appended,
}

impl SqliteBus {
    /// Opens (or creates) the log at `path`; topics it creates get
    /// `partitions` partitions.
    pub fn open(path: &Path, partitions: u32) -> anyhow::Result<SqliteBus> {
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
            new_partitions: partitions.max(1),
            partitions: Mutex::default(),
            bytes: Mutex::default(),
            appended: Appended::default(),
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

    /// How many partitions `topic` has (0: it never had an event), under
    /// the connection's lock.
    fn partition_count(&self, conn: &Connection, topic: &str) -> rusqlite::Result<u32> {
        let mut known = self.partitions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(&count) = known.get(topic) {
            return Ok(count);
        }
        let count: u32 = conn
            .prepare_cached("SELECT COUNT(*) FROM partitions WHERE topic = ?")?
            .query_row([topic], |row| row.get(0))?;
        if count > 0 {
            known.insert(topic.to_string(), count);
        }
        Ok(count)
    }

    /// Creates `topic` with its partitions if it has none, inside the
    /// append's transaction; returns its partition count.
    fn create_topic(&self, conn: &Connection, topic: &str) -> rusqlite::Result<u32> {
        let count = self.partition_count(conn, topic)?;
        if count > 0 {
            return Ok(count);
        }
        let mut insert = conn.prepare_cached("INSERT INTO partitions (topic, partition, head) VALUES (?, ?, 0)")?;
        for partition in 0..self.new_partitions {
            insert.execute(params![topic, partition])?;
        }
        Ok(self.new_partitions)
    }
}

#[async_trait]
impl EventBus for SqliteBus {
    async fn append(&self, events: &[Envelope]) -> anyhow::Result<()> {
        let last = self.with(|conn| {
            conn.prepare_cached("BEGIN")?.execute([])?;
            let appended = (|| {
                let mut insert = conn.prepare_cached(
                    "INSERT OR IGNORE INTO events
                         (id, topic, partition, offset, key, type, source, time, schema_version, payload, request_id)
                     VALUES (?1, ?2, ?3, (SELECT head + 1 FROM partitions WHERE topic = ?2 AND partition = ?3),
                             ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                let mut advance =
                    conn.prepare_cached("UPDATE partitions SET head = head + 1 WHERE topic = ? AND partition = ?")?;
                let mut added = Vec::new();
                for e in events {
                    let partition = partition(&e.key, self.create_topic(conn, &e.topic)?);
                    let inserted = insert.execute(params![
                        e.id,
                        e.topic,
                        partition,
                        e.key,
                        e.event_type,
                        e.source,
                        e.time,
                        e.schema_version,
                        e.payload,
                        e.request_id
                    ])?;
                    // An id already in the log is skipped: a relay's retry.
                    if inserted == 1 {
                        advance.execute(params![e.topic, partition])?;
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
                // Topics it created are gone with it.
                self.partitions
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clear();
            }
            appended
        })?;
        self.appended.tell(events, last);
        Ok(())
    }

    async fn read(&self, _consumer: &str, topic: &str, after: &Offsets, limit: usize) -> anyhow::Result<Vec<Record>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT position, partition, offset, id, key, type, source, time, schema_version, payload, request_id
                 FROM events WHERE topic = ? AND partition = ? AND offset > ? ORDER BY offset LIMIT ?",
            )?;
            // The first `limit` events of the log are among the first
            // `limit` of each partition.
            let mut read: Vec<(u64, Record)> = Vec::new();
            for partition in 0..self.partition_count(conn, topic)? {
                let from = after.get(&partition).copied().unwrap_or(0);
                let rows = stmt.query_map(params![topic, partition, from, limit as u64], |row| {
                    let record = Record {
                        partition: row.get(1)?,
                        offset: row.get(2)?,
                        event: Envelope {
                            id: row.get(3)?,
                            topic: topic.to_string(),
                            key: row.get(4)?,
                            event_type: row.get(5)?,
                            source: row.get(6)?,
                            time: row.get(7)?,
                            schema_version: row.get(8)?,
                            payload: row.get(9)?,
                            request_id: row.get(10)?,
                        },
                    };
                    Ok((row.get(0)?, record))
                })?;
                for row in rows {
                    read.push(row?);
                }
            }
            read.sort_unstable_by_key(|(position, _)| *position);
            read.truncate(limit);
            Ok(read.into_iter().map(|(_, record)| record).collect())
        })
    }

    async fn committed(&self, consumer: &str, topic: &str) -> anyhow::Result<Offsets> {
        self.with(|conn| {
            conn.prepare_cached("SELECT partition, position FROM offsets WHERE consumer = ? AND topic = ?")?
                .query_map(params![consumer, topic], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
    }

    async fn commit(&self, consumer: &str, topic: &str, positions: &Offsets) -> anyhow::Result<()> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO offsets (consumer, topic, partition, position) VALUES (?, ?, ?, ?)
                     ON CONFLICT (consumer, topic, partition) DO UPDATE SET position = excluded.position",
                )?;
                for (partition, position) in positions {
                    upsert.execute(params![consumer, topic, partition, position])?;
                }
            }
            tx.commit()
        })
    }

    async fn rewind(&self, consumer: &str, topic: &str) -> anyhow::Result<()> {
        self.with(|conn| {
            conn.prepare_cached("DELETE FROM offsets WHERE consumer = ? AND topic = ?")?
                .execute(params![consumer, topic])
                .map(drop)
        })
    }

    fn watch(&self, topic: &str) -> watch::Receiver<u64> {
        self.appended.watch(topic)
    }

    async fn partitions(&self, topic: &str, positions: &Offsets) -> anyhow::Result<Vec<PartitionStats>> {
        self.with(|conn| {
            let heads: Vec<(u32, u64)> = conn
                .prepare_cached("SELECT partition, head FROM partitions WHERE topic = ? ORDER BY partition")?
                .query_map([topic], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut count = conn.prepare_cached(
                "SELECT COUNT(*) FILTER (WHERE offset > ?3), COUNT(*)
                 FROM events WHERE topic = ?1 AND partition = ?2",
            )?;
            heads
                .into_iter()
                .map(|(partition, head)| {
                    let position = positions.get(&partition).copied().unwrap_or(0);
                    count.query_row(params![topic, partition, position], |row| {
                        Ok(PartitionStats {
                            partition,
                            position,
                            head,
                            lag: row.get(0)?,
                            retained: Some(row.get(1)?),
                        })
                    })
                })
                .collect()
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

    async fn prune(&self, topic: &str, delivered: Option<&Offsets>, keep: Keep) -> anyhow::Result<usize> {
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
            let mut delete = conn.prepare_cached(&format!(
                "DELETE FROM events
                 WHERE topic = ?1 AND partition = ?2 AND offset <= ?3 AND (time < ?4 OR position <= ?5)
                 RETURNING {SIZE}"
            ))?;
            let mut freed = Vec::new();
            for partition in 0..self.partition_count(conn, topic)? {
                // SQLite's integers are signed; a topic nobody reads is all
                // delivered.
                let done = match delivered {
                    Some(delivered) => delivered.get(&partition).copied().unwrap_or(0),
                    None => i64::MAX as u64,
                };
                let rows = delete.query_map(
                    params![topic, partition, done, keep.since, beyond_count.max(beyond_bytes)],
                    |row| row.get::<_, u64>(0),
                )?;
                for size in rows {
                    freed.push(size?);
                }
            }
            Ok(freed)
        })?;
        self.count(topic, -(freed.iter().sum::<u64>() as i64));
        Ok(freed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::log::DeadLetters;

    fn event(id: &str, topic: &str, key: &str) -> Envelope {
        Envelope {
            id: id.into(),
            topic: topic.into(),
            key: key.into(),
            event_type: "Test".into(),
            source: "test".into(),
            time: 0,
            schema_version: 1,
            payload: "{}".into(),
            request_id: None,
        }
    }

    fn ids(records: &[Record]) -> Vec<&str> {
        records.iter().map(|r| r.event.id.as_str()).collect()
    }

    #[tokio::test]
    async fn appends_once_and_reads_by_topic_and_partition() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let bus = SqliteBus::open(&dir.path().join("bus.db"), 4)?;
        let (mut t, mut u) = (bus.watch("t"), bus.watch("u"));
        bus.append(&[event("a", "t", "1"), event("b", "u", "1"), event("c", "t", "2")])
            .await?;
        assert!(t.has_changed()? && u.has_changed()?);
        t.borrow_and_update();
        u.borrow_and_update();
        bus.append(&[event("d", "t", "1")]).await?;
        // Only the dispatchers of the appended topic wake up.
        assert!(t.has_changed()? && !u.has_changed()?);
        let all = bus.read("view", "t", &Offsets::new(), 10).await?;
        assert_eq!(ids(&all), ["a", "c", "d"], "in append order");
        // Each key has its partition, with offsets from 1 up.
        let (one, two) = (partition("1", 4), partition("2", 4));
        assert_ne!(one, two, "the test needs keys in two partitions");
        let places: Vec<(u32, u64)> = all.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(places, [(one, 1), (two, 1), (one, 2)]);
        // Read from positions per partition.
        let after = Offsets::from([(one, 1)]);
        assert_eq!(ids(&bus.read("view", "t", &after, 10).await?), ["c", "d"]);
        assert_eq!(ids(&bus.read("view", "t", &after, 1).await?), ["c"]);
        // An event id already in the log is not appended again.
        bus.append(&[event("c", "t", "2")]).await?;
        assert_eq!(bus.read("view", "t", &Offsets::new(), 10).await?.len(), 3);

        assert!(bus.committed("view", "t").await?.is_empty());
        bus.commit("view", "t", &Offsets::from([(one, 2)])).await?;
        bus.commit("view", "t", &Offsets::from([(two, 1)])).await?;
        assert_eq!(bus.committed("view", "t").await?, Offsets::from([(one, 2), (two, 1)]));
        let stats = bus.partitions("t", &Offsets::from([(one, 1)])).await?;
        assert_eq!(stats.len(), 4);
        assert_eq!((stats[one as usize].head, stats[one as usize].lag), (2, 1));
        assert_eq!((stats[two as usize].head, stats[two as usize].lag), (1, 1));
        bus.rewind("view", "t").await?;
        assert!(bus.committed("view", "t").await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn prunes_delivered_events_beyond_a_topics_bytes_and_counts_them() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bus.db");
        let bus = SqliteBus::open(&path, 1)?;
        let big = |id: &str| Envelope {
            payload: format!("\"{}\"", "x".repeat(998)),
            ..event(id, "t", "1")
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
        assert_eq!(bus.prune("t", Some(&Offsets::from([(0, 5)])), keep).await?, 5);
        assert_eq!(bus.prune("t", None, keep).await?, 2);
        assert_eq!(bus.topic_bytes("t").await?, 3 * size);
        drop(bus);
        let bus = SqliteBus::open(&path, 1)?;
        assert_eq!(bus.topic_bytes("t").await?, 3 * size, "SQL and Rust agree");
        // Offsets go on where they were, though events were deleted.
        bus.append(&[big("10")]).await?;
        let last = bus.read("view", "t", &Offsets::from([(0, 10)]), 10).await?;
        assert_eq!(last[0].offset, 11);
        Ok(())
    }

    #[tokio::test]
    async fn a_log_from_before_partitions_keeps_every_consumer_where_it_was() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bus.db");
        {
            let conn = Connection::open(&path)?;
            conn.execute_batch(MIGRATIONS[0])?;
            conn.execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO events (id, topic, key, type, source, time, schema_version, payload)
                 VALUES ('a', 't', '1', 'T', 's', 0, 1, '{}'), ('b', 'u', '1', 'T', 's', 0, 1, '{}'),
                        ('c', 't', '2', 'T', 's', 0, 1, '{}');
                 INSERT INTO positions VALUES ('view', 't', 1);
                 INSERT INTO dead_letters (consumer, topic, position, attempts, last_error, time,
                     event_id, key, type, source, event_time, schema_version, payload)
                 VALUES ('view', 't', 1, 5, 'boom', 0, 'a', '1', 'T', 's', 0, 1, '{}');",
            )?;
        }
        let bus = SqliteBus::open(&path, 4)?;
        let positions = bus.committed("view", "t").await?;
        assert_eq!(positions, Offsets::from([(0, 1)]));
        assert_eq!(ids(&bus.read("view", "t", &positions, 10).await?), ["c"]);
        // The topic keeps its one partition: new events follow in it.
        bus.append(&[event("d", "t", "3")]).await?;
        let read = bus.read("view", "t", &positions, 10).await?;
        assert_eq!(ids(&read), ["c", "d"]);
        assert_eq!((read[1].partition, read[1].offset), (0, 4));
        let letters = DeadLetters::all(&bus).await?;
        assert_eq!((letters[0].partition, letters[0].offset), (0, 1));
        Ok(())
    }
}
