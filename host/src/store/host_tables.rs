//! The host's own tables in every component's database, and all of their
//! SQL: the transactional outbox, the inbox of applied events, the mark
//! of a reset whose rewind is pending, and the key-value store. Guests cannot see them (see the
//! authorizer); the rest of the host reaches them only through here.

use rusqlite::{Connection, OptionalExtension as _, params};

/// Host-owned schema, applied in order and tracked by `PRAGMA user_version`.
/// The guest's own tables are migrated by its `init` export.
pub const MIGRATIONS: &[&str] = &[
    // The transactional outbox: rows written in the invocation's transaction,
    // moved to the event log by the relay once committed. AUTOINCREMENT, so
    // that a row id is never handed out twice even after the table empties.
    "CREATE TABLE _rc_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        key TEXT NOT NULL,
        type TEXT NOT NULL,
        time INTEGER NOT NULL,
        schema_version INTEGER NOT NULL,
        payload TEXT NOT NULL
    )",
    // The inbox: ids of the events whose effect committed, written in the
    // same transaction as the effect, so a redelivery has no second effect.
    "CREATE TABLE _rc_inbox (
        event_id TEXT PRIMARY KEY,
        received_at INTEGER NOT NULL
    ) WITHOUT ROWID",
    // The request that caused the event, to follow it across contexts.
    "ALTER TABLE _rc_outbox ADD COLUMN request_id TEXT",
    // A row here: the component was reset (in the same transaction) and its
    // positions in the log are not rewound yet. See `Runtime::rewind`.
    "CREATE TABLE _rc_rewind (pending INTEGER NOT NULL)",
    // The component's key-value store (`wasi:keyvalue`), in its own
    // transactions. The id orders `list-keys` pages and resumes them.
    "CREATE TABLE _rc_kv (
        id INTEGER PRIMARY KEY,
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        UNIQUE (bucket, key)
    )",
];

/// An event as a guest publishes it, before the relay moves it to the log.
pub struct OutboxEvent<'a> {
    pub event_id: &'a str,
    pub topic: &'a str,
    pub key: &'a str,
    pub event_type: &'a str,
    pub time: u64,
    pub schema_version: u32,
    pub payload: &'a str,
    pub request_id: Option<&'a str>,
}

/// A committed outbox row.
pub struct OutboxRow {
    pub id: i64,
    pub event_id: String,
    pub topic: String,
    pub key: String,
    pub event_type: String,
    pub time: u64,
    pub schema_version: u32,
    pub payload: String,
    pub request_id: Option<String>,
}

/// Inserts an event into the outbox, in the caller's transaction.
pub fn publish(conn: &Connection, event: &OutboxEvent<'_>) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO _rc_outbox (event_id, topic, key, type, time, schema_version, payload, request_id)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        event.event_id,
        event.topic,
        event.key,
        event.event_type,
        event.time,
        event.schema_version,
        event.payload,
        event.request_id
    ])
    .map(drop)
}

/// Up to `limit` outbox rows after `after`, in outbox order.
pub fn outbox_after(conn: &Connection, after: i64, limit: usize) -> rusqlite::Result<Vec<OutboxRow>> {
    conn.prepare_cached(
        "SELECT id, event_id, topic, key, type, time, schema_version, payload, request_id
         FROM _rc_outbox WHERE id > ? ORDER BY id LIMIT ?",
    )?
    .query_map(params![after, limit as i64], |row| {
        Ok(OutboxRow {
            id: row.get(0)?,
            event_id: row.get(1)?,
            topic: row.get(2)?,
            key: row.get(3)?,
            event_type: row.get(4)?,
            time: row.get(5)?,
            schema_version: row.get(6)?,
            payload: row.get(7)?,
            request_id: row.get(8)?,
        })
    })?
    .collect()
}

/// Deletes the outbox rows up to `id` (relayed).
pub fn outbox_delete_through(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM _rc_outbox WHERE id <= ?")?
        .execute([id])
        .map(drop)
}

/// Records that an event is applied, in the transaction of its effect;
/// `false` if it already was.
pub fn inbox_record(conn: &Connection, event_id: &str, at: u64) -> rusqlite::Result<bool> {
    conn.prepare_cached("INSERT OR IGNORE INTO _rc_inbox (event_id, received_at) VALUES (?, ?)")?
        .execute(params![event_id, at])
        .map(|inserted| inserted == 1)
}

/// Forgets the events applied before `before` (ms since the Unix epoch).
pub fn inbox_prune(conn: &Connection, before: u64) -> rusqlite::Result<usize> {
    conn.prepare_cached("DELETE FROM _rc_inbox WHERE received_at < ?")?
        .execute([before as i64])
}

/// A reset's first half, in its transaction: every event may be applied
/// again, and the rewind of the component's positions is pending.
pub fn forget_applied_and_mark_rewind(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("DELETE FROM _rc_inbox; INSERT INTO _rc_rewind (pending) VALUES (1)")
}

/// Whether a reset's rewind is pending (the host stopped in between).
pub fn rewind_pending(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM _rc_rewind LIMIT 1")?
        .query_row([], |_| Ok(()))
        .optional()
        .map(|row| row.is_some())
}

/// A reset's second half is done.
pub fn rewound(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM _rc_rewind", []).map(drop)
}

/// A key's value in a bucket of the key-value store.
pub fn kv_get(conn: &Connection, bucket: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT value FROM _rc_kv WHERE bucket = ? AND key = ?")?
        .query_row(params![bucket, key], |row| row.get(0))
        .optional()
}

/// Sets a key's value; a key set again keeps its place in `kv_keys_after`.
pub fn kv_set(conn: &Connection, bucket: &str, key: &str, value: &[u8]) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO _rc_kv (bucket, key, value) VALUES (?, ?, ?)
         ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![bucket, key, value])
    .map(drop)
}

pub fn kv_delete(conn: &Connection, bucket: &str, key: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM _rc_kv WHERE bucket = ? AND key = ?")?
        .execute(params![bucket, key])
        .map(drop)
}

/// Up to `limit` keys of a bucket after the one with id `after`, with
/// their ids, in id order.
pub fn kv_keys_after(
    conn: &Connection,
    bucket: &str,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, String)>> {
    conn.prepare_cached("SELECT id, key FROM _rc_kv WHERE bucket = ? AND id > ? ORDER BY id LIMIT ?")?
        .query_map(params![bucket, after, limit as i64], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect()
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;

    fn migrated() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for migration in MIGRATIONS {
            conn.execute_batch(migration).unwrap();
        }
        conn
    }

    #[test]
    fn the_key_value_store_keeps_buckets_apart_and_pages_keys_in_the_order_first_set() {
        let conn = migrated();
        kv_set(&conn, "a", "x", b"1").unwrap();
        kv_set(&conn, "a", "y", b"2").unwrap();
        kv_set(&conn, "b", "x", b"other bucket").unwrap();
        kv_set(&conn, "a", "x", b"3").unwrap();
        assert_eq!(kv_get(&conn, "a", "x").unwrap(), Some(b"3".to_vec()));
        assert_eq!(kv_get(&conn, "b", "x").unwrap(), Some(b"other bucket".to_vec()));
        assert_eq!(kv_get(&conn, "a", "z").unwrap(), None);

        // Set again, `x` keeps its place; a page resumes after its last id.
        let page = kv_keys_after(&conn, "a", 0, 1).unwrap();
        assert_eq!(page.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(), ["x"]);
        let rest = kv_keys_after(&conn, "a", page[0].0, 10).unwrap();
        assert_eq!(rest.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(), ["y"]);

        kv_delete(&conn, "a", "x").unwrap();
        assert_eq!(kv_get(&conn, "a", "x").unwrap(), None);
        assert_eq!(kv_get(&conn, "b", "x").unwrap(), Some(b"other bucket".to_vec()));
    }
}
