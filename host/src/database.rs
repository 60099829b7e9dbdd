//! Each component's private SQLite database, and the transaction every
//! invocation runs in.
//!
//! A database has exactly one connection, owned by an async mutex. An
//! invocation takes the mutex on its first statement and keeps it until it
//! commits or rolls back, so invocations of one component wait for their
//! write turn asynchronously and no worker thread ever sits in SQLite's
//! `busy_timeout`. Statements run inline on the worker that holds the mutex:
//! they are short, and in WAL mode with `synchronous=NORMAL` a commit does
//! not wait for the disk.
//!
//! New databases use 1 KiB pages instead of SQLite's 4 KiB: a commit writes
//! every page it touched to the write-ahead log, and a small transaction
//! (an order, a payment, an event) touches a handful of pages, so the log,
//! the checkpoints and their `fsync`s shrink about fourfold (the figures are
//! in BENCHMARKS.md). A database created before keeps its page size.
//!
//! The connection runs in exclusive locking mode: it takes the file lock once
//! and keeps it, so no transaction pays for `fcntl` locks or a shared-memory
//! index, and a second host pointed at the same data directory is refused
//! instead of sharing the files. (Inspect a database with `sqlite3` while the
//! host is stopped.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Host tables in every component database: their names start with this
/// prefix, and a guest statement that mentions it is refused.
pub const HOST_TABLE_PREFIX: &str = "_rc_";

/// Host-owned schema, applied in order and tracked by `PRAGMA user_version`.
/// The guest's own tables are migrated by its `init` export.
const MIGRATIONS: &[&str] = &[
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
];

/// A component's database.
pub struct Database {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    /// Set while a guest statement is being prepared, so that the authorizer
    /// applies the guest's restrictions to it and not to the host's own.
    guest: Arc<AtomicBool>,
}

impl Database {
    pub fn open(path: &Path) -> anyhow::Result<Database> {
        let conn = Connection::open(path).with_context(|| format!("failed to open database {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA page_size = 1024;
             PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;",
        )
        .map_err(|err| in_use(err, path))
        .with_context(|| format!("failed to configure database {}", path.display()))?;
        migrate(&conn).with_context(|| format!("failed to migrate database {}", path.display()))?;
        stable_plans(&conn)?;

        let guest = Arc::new(AtomicBool::new(false));
        let flag = guest.clone();
        conn.authorizer(Some(move |context: AuthContext<'_>| {
            if flag.load(Ordering::Relaxed) {
                authorize_guest(&context)
            } else {
                Authorization::Allow
            }
        }));
        Ok(Database {
            path: path.to_owned(),
            conn: Arc::new(Mutex::new(conn)),
            guest,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the database's write turn.
    pub async fn lock(&self) -> OwnedMutexGuard<Connection> {
        self.conn.clone().lock_owned().await
    }

    /// Prepares a guest statement (cached) under the guest's restrictions.
    pub fn prepare_guest<'c>(
        &self,
        conn: &'c Connection,
        statement: &str,
    ) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
        if statement.to_ascii_lowercase().contains(HOST_TABLE_PREFIX) {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_AUTH),
                Some(format!("names starting with `{HOST_TABLE_PREFIX}` belong to the host")),
            ));
        }
        self.guest.store(true, Ordering::Relaxed);
        let prepared = conn.prepare_cached(statement);
        self.guest.store(false, Ordering::Relaxed);
        prepared
    }
}

/// The error of a database another process holds: in exclusive locking
/// mode the first host to touch a file keeps it until it exits.
pub fn in_use(err: rusqlite::Error, path: &Path) -> anyhow::Error {
    if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
        anyhow::anyhow!(
            "{} is locked: another rentcar-host is using this data directory",
            path.display()
        )
    } else {
        err.into()
    }
}

/// Keeps cached statements prepared. Without the query planner stability
/// guarantee SQLite plans some statements for the values bound to them
/// (`LIMIT ?`, `LIKE ?`) and prepares them again at every new binding,
/// which cost the relay a tenth of the host's CPU under load.
pub fn stable_plans(conn: &Connection) -> anyhow::Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .context("failed to enable the query planner stability guarantee")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let applied: usize = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// What a guest statement may not do: reach another database, change the
/// connection's settings, or take over the host's transaction.
fn authorize_guest(context: &AuthContext<'_>) -> Authorization {
    match context.action {
        AuthAction::Attach { .. }
        | AuthAction::Detach { .. }
        | AuthAction::Pragma { .. }
        | AuthAction::Transaction { .. }
        | AuthAction::Savepoint { .. }
        | AuthAction::CreateVtable { .. }
        | AuthAction::DropVtable { .. } => Authorization::Deny,
        AuthAction::Function { function_name } if function_name.eq_ignore_ascii_case("load_extension") => {
            Authorization::Deny
        }
        _ => Authorization::Allow,
    }
}

// The host's transaction control, prepared once and cached on the
// connection it shares with the guest. Each names the host prefix, so no
// guest statement (refused when it does) can reach these cache entries.
const BEGIN: &str = "BEGIN /* _rc_ */";
const COMMIT: &str = "COMMIT /* _rc_ */";
const ROLLBACK: &str = "ROLLBACK /* _rc_ */";
const SAVEPOINT: &str = "SAVEPOINT _rc_event";
const RELEASE: &str = "RELEASE _rc_event";
const ROLLBACK_TO: &str = "ROLLBACK TO _rc_event";

/// The transaction of one invocation. It begins lazily on the first
/// statement, and rolls back unless [`Transaction::commit`] is called, also
/// when the invocation is dropped midway (trap, deadline, cancellation).
pub struct Transaction {
    db: Arc<Database>,
    conn: Option<OwnedMutexGuard<Connection>>,
    /// Events published in this transaction; the relay is woken after commit.
    pub published: usize,
    /// `published` when the open savepoint was taken.
    published_at_savepoint: usize,
}

impl Transaction {
    pub fn new(db: Arc<Database>) -> Transaction {
        Transaction {
            db,
            conn: None,
            published: 0,
            published_at_savepoint: 0,
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The connection, inside the open transaction.
    pub async fn conn(&mut self) -> rusqlite::Result<&Connection> {
        if self.conn.is_none() {
            let conn = self.db.lock().await;
            conn.prepare_cached(BEGIN)?.execute([])?;
            self.conn = Some(conn);
        }
        // Set just above when it was empty.
        Ok(self.conn.as_deref().expect("transaction is open"))
    }

    /// The database and the connection of a transaction already begun.
    pub fn parts(&self) -> (&Database, &Connection) {
        // Callers begin the transaction with `conn` first.
        (&self.db, self.conn.as_deref().expect("transaction has begun"))
    }

    /// Opens a savepoint, so that one event of a run can be undone alone.
    pub async fn savepoint(&mut self) -> rusqlite::Result<()> {
        self.conn().await?.prepare_cached(SAVEPOINT)?.execute([])?;
        self.published_at_savepoint = self.published;
        Ok(())
    }

    /// Keeps what was done since the savepoint.
    pub fn release(&mut self) -> rusqlite::Result<()> {
        let (_, conn) = self.parts();
        conn.prepare_cached(RELEASE)?.execute([])?;
        Ok(())
    }

    /// Undoes what was done since the savepoint, and closes it.
    pub fn rollback_to_savepoint(&mut self) -> rusqlite::Result<()> {
        let (_, conn) = self.parts();
        conn.prepare_cached(ROLLBACK_TO)?.execute([])?;
        conn.prepare_cached(RELEASE)?.execute([])?;
        self.published = self.published_at_savepoint;
        Ok(())
    }

    /// Commits what the invocation did; returns how many events it published.
    pub fn commit(&mut self) -> anyhow::Result<usize> {
        if let Some(conn) = self.conn.take()
            && let Err(err) = conn.prepare_cached(COMMIT).and_then(|mut commit| commit.execute([]))
        {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(err).with_context(|| format!("failed to commit to {}", self.db.path.display()));
        }
        Ok(std::mem::take(&mut self.published))
    }

    pub fn rollback(&mut self) {
        if let Some(conn) = self.conn.take()
            && let Err(err) = conn
                .prepare_cached(ROLLBACK)
                .and_then(|mut rollback| rollback.execute([]))
        {
            tracing::error!(cause = %err, database = %self.db.path.display(), "rollback failed");
        }
        self.published = 0;
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        self.rollback();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_databases_use_small_pages() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = Database::open(&dir.path().join("a.db"))?;
        let conn = db.conn.try_lock()?;
        let page_size: u32 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        assert_eq!(page_size, 1024);
        Ok(())
    }

    #[tokio::test]
    async fn guests_cannot_escape_their_database() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = Arc::new(Database::open(&dir.path().join("a.db"))?);
        let mut txn = Transaction::new(db.clone());
        txn.conn().await?;
        let (db, conn) = txn.parts();
        db.prepare_guest(conn, "CREATE TABLE cars (id INTEGER PRIMARY KEY)")?
            .execute([])?;
        for denied in [
            "ATTACH DATABASE 'other.db' AS other",
            "DETACH DATABASE main",
            "PRAGMA journal_mode = DELETE",
            "COMMIT",
            "BEGIN",
            "SAVEPOINT s",
            "RELEASE _rc_event",
            "SELECT * FROM _rc_outbox",
            "DELETE FROM _RC_INBOX",
            "SELECT load_extension('x')",
        ] {
            assert!(db.prepare_guest(conn, denied).is_err(), "{denied} must be denied");
        }
        // The host's own statements still run on the same connection...
        conn.execute_batch("SELECT COUNT(*) FROM _rc_outbox")?;
        txn.commit()?;
        // ...and what it prepared for itself stays out of the guest's reach.
        let mut txn = Transaction::new(txn.db.clone());
        txn.savepoint().await?;
        txn.release()?;
        let (db, conn) = txn.parts();
        for host_only in [
            BEGIN,
            COMMIT,
            ROLLBACK,
            SAVEPOINT,
            RELEASE,
            ROLLBACK_TO,
            "COMMIT",
            "BEGIN",
        ] {
            assert!(db.prepare_guest(conn, host_only).is_err(), "{host_only} must be denied");
        }
        Ok(())
    }
}
