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

mod authorizer;
pub mod host_tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;
/// A component database's connection; capabilities pass it to the host
/// tables' SQL (`host_tables`) in an invocation's transaction.
pub use rusqlite::Connection;
use rusqlite::hooks::AuthContext;
use rusqlite::limits::Limit;
use tokio::sync::{Mutex, OwnedMutexGuard};

use authorizer::{GUEST, HOST, authorize};
use host_tables::MIGRATIONS;

/// What every statement answers; the type store's callers name.
pub type SqlResult<T> = rusqlite::Result<T>;

/// Host tables in every component database: their names start with this
/// prefix, and a guest statement that mentions it is refused.
pub const HOST_TABLE_PREFIX: &str = "_rc_";

/// Longest string or blob a statement may make (`SQLITE_LIMIT_LENGTH`).
const MAX_VALUE_BYTES: i32 = 16 * 1024 * 1024;
/// Longest statement text (`SQLITE_LIMIT_SQL_LENGTH`).
const MAX_STATEMENT_BYTES: i32 = 1024 * 1024;
/// SQLite virtual machine steps between two checks of the deadline.
const PROGRESS_STEPS: i32 = 10_000;

/// A component's database.
pub struct Database {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    /// Whose statement is being prepared (`authorizer::HOST`, `GUEST` or
    /// `GUEST_DDL`), so that the authorizer applies the guest's
    /// restrictions to the guest's statements and not to the host's own.
    guest: Arc<AtomicU8>,
    /// While a guest statement runs, when it is interrupted (ms since the
    /// Unix epoch; 0: never).
    deadline: Arc<AtomicU64>,
}

impl Database {
    pub fn open(path: &Path) -> anyhow::Result<Database> {
        let conn = Connection::open(path).with_context(|| format!("failed to open database {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA page_size = 1024;
             PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA temp_store = MEMORY;",
        )
        .map_err(|err| in_use(err, path))
        .with_context(|| format!("failed to configure database {}", path.display()))?;
        migrate(&conn, MIGRATIONS).with_context(|| format!("failed to migrate database {}", path.display()))?;
        stable_plans(&conn)?;

        // A value or a statement the host would have to hold in memory is
        // bounded (the defaults are 1 GB).
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
        conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_STATEMENT_BYTES)?;
        // A guest statement past its invocation's deadline is interrupted:
        // the epoch deadline cannot stop SQLite, which runs on the host.
        let deadline = Arc::new(AtomicU64::new(0));
        let watched = deadline.clone();
        conn.progress_handler(
            PROGRESS_STEPS,
            Some(move || {
                let at = watched.load(Ordering::Relaxed);
                at != 0 && crate::clock::now_ms() >= at
            }),
        );

        let guest = Arc::new(AtomicU8::new(HOST));
        let preparing = guest.clone();
        conn.authorizer(Some(move |context: AuthContext<'_>| authorize(&preparing, &context)));
        Ok(Database {
            path: path.to_owned(),
            conn: Arc::new(Mutex::new(conn)),
            guest,
            deadline,
        })
    }

    /// Caps the database file at `bytes` (whole pages), so that a component
    /// cannot fill the disk its neighbours and the event log share.
    pub fn limit_size(&self, bytes: u64) -> anyhow::Result<()> {
        let conn = self.conn.try_lock().context("the database is in use")?;
        let page_size: u64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let pages = (bytes / page_size).max(1);
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        Ok(())
    }

    /// Writes a consistent copy of the database to `path` (which must not
    /// exist), waiting for the write turn; a fast sequential copy.
    pub async fn copy_to(&self, path: &Path) -> anyhow::Result<()> {
        let conn = self.lock().await;
        let target = path.to_str().context("database path is not UTF-8")?;
        conn.execute("VACUUM INTO ?", [target])
            .with_context(|| format!("cannot copy {} to {}", self.path.display(), path.display()))?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the database's write turn.
    pub async fn lock(&self) -> OwnedMutexGuard<Connection> {
        self.conn.clone().lock_owned().await
    }

    /// Runs `f`, which prepares and runs one guest statement, as the guest:
    /// the authorizer judges every preparation inside it under the guest's
    /// restrictions (SQLite prepares a cached statement again when the
    /// schema changed, in the middle of running it, and compiles the
    /// triggers it fires into it), and the statement is interrupted at
    /// `deadline`.
    pub fn run_guest<R>(&self, deadline: Instant, f: impl FnOnce() -> R) -> R {
        let left = deadline.saturating_duration_since(Instant::now());
        let at = crate::clock::now_ms() + left.as_millis() as u64;
        self.deadline.store(at.max(1), Ordering::Relaxed);
        self.guest.store(GUEST, Ordering::Relaxed);
        // Back to the host's mode even if `f` panics.
        let _host_again = HostAgain(self);
        f()
    }

    /// Prepares a guest statement (cached); call it inside [`run_guest`].
    pub fn prepare_guest<'c>(
        &self,
        conn: &'c Connection,
        statement: &str,
    ) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
        if statement.to_ascii_lowercase().contains(HOST_TABLE_PREFIX) {
            return Err(host_only());
        }
        // A statement of its own starts without the last one's DDL rights.
        self.guest.store(GUEST, Ordering::Relaxed);
        conn.prepare_cached(statement)
    }
}

/// Puts a database back in the host's mode when dropped.
struct HostAgain<'a>(&'a Database);

impl Drop for HostAgain<'_> {
    fn drop(&mut self) {
        self.0.guest.store(HOST, Ordering::Relaxed);
        self.0.deadline.store(0, Ordering::Relaxed);
    }
}

fn host_only() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_AUTH),
        Some(format!("names starting with `{HOST_TABLE_PREFIX}` belong to the host")),
    )
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

/// Bounds what SQLite allocates in the whole process (`[server]
/// sqlite_heap_mib`). Every component database keeps its sorts and
/// temporary b-trees in memory (`temp_store = MEMORY`), so that no statement
/// writes temporary files, which no `database_mib` counts; this bounds them
/// instead: past it, a statement fails with "out of memory".
pub fn limit_heap(bytes: u64) {
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    // SAFETY: sets a process-wide limit; SQLite allows it at any time, from
    // any thread.
    #[allow(unsafe_code, reason = "rusqlite has no safe wrapper for the heap limit")]
    unsafe {
        rusqlite::ffi::sqlite3_hard_heap_limit64(bytes);
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

/// Applies the `migrations` a database has not had yet, each in its own
/// transaction, counting them in `PRAGMA user_version`.
pub fn migrate(conn: &Connection, migrations: &[&str]) -> rusqlite::Result<()> {
    let applied: usize = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, migration) in migrations.iter().enumerate().skip(applied) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    Ok(())
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
    /// SQLite ended the transaction by itself (a full disk, some I/O
    /// errors, `INSERT OR ROLLBACK`): what the invocation did is gone, and
    /// from then on it can neither run a statement nor commit, so that
    /// nothing it does next commits on its own.
    ended: Option<TransactionEnded>,
    /// Events published in this transaction; the relay is woken after commit.
    pub published: usize,
    /// `published` when the open savepoint was taken.
    published_at_savepoint: usize,
}

/// The error of a transaction SQLite ended by itself (see
/// [`Transaction::check`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("SQLite ended the invocation's transaction ({cause}); nothing it did is kept")]
pub struct TransactionEnded {
    cause: String,
    /// Whether it ended for lack of storage.
    full: bool,
}

/// A failure for lack of storage: the disk, or the component's
/// `database_mib`, is full. Not the component's fault: HTTP callers get 507,
/// a link's circuit does not count it, and an event waits for space instead
/// of going to the dead letters.
#[derive(Debug, thiserror::Error)]
#[error("insufficient storage: the database or the disk is full")]
pub struct StorageFull;

/// Whether SQLite failed for lack of space.
pub fn is_full(err: &rusqlite::Error) -> bool {
    err.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

/// Whether `err`, from anywhere in the host, comes from a lack of storage.
pub fn lacks_storage(err: &anyhow::Error) -> bool {
    err.downcast_ref::<StorageFull>().is_some()
        || err.chain().any(|cause| {
            cause.downcast_ref::<rusqlite::Error>().is_some_and(is_full)
                || cause.downcast_ref::<TransactionEnded>().is_some_and(|ended| ended.full)
        })
}

impl Transaction {
    pub fn new(db: Arc<Database>) -> Transaction {
        Transaction {
            db,
            conn: None,
            ended: None,
            published: 0,
            published_at_savepoint: 0,
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The connection, inside the open transaction.
    pub async fn conn(&mut self) -> anyhow::Result<&Connection> {
        if let Some(ended) = &self.ended {
            return Err(ended.clone().into());
        }
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

    /// Checks, after a statement ran in the transaction, that SQLite did not
    /// end the transaction by itself; `cause` is the statement's outcome.
    /// Once ended, it stays ended: every later statement and the commit are
    /// refused.
    pub fn check<T>(&mut self, outcome: &rusqlite::Result<T>) -> Result<(), TransactionEnded> {
        if self.ended.is_none() && self.conn.as_ref().is_some_and(|conn| conn.is_autocommit()) {
            let error = outcome.as_ref().err();
            self.ended = Some(TransactionEnded {
                cause: error.map_or_else(|| "no error".into(), |err| err.to_string()),
                full: error.is_some_and(is_full),
            });
        }
        match &self.ended {
            Some(ended) => Err(ended.clone()),
            None => Ok(()),
        }
    }

    /// Opens a savepoint, so that one event of a run can be undone alone.
    pub async fn savepoint(&mut self) -> anyhow::Result<()> {
        self.conn().await?.prepare_cached(SAVEPOINT)?.execute([])?;
        self.published_at_savepoint = self.published;
        Ok(())
    }

    /// Keeps what was done since the savepoint.
    pub fn release(&mut self) -> anyhow::Result<()> {
        let (_, conn) = self.parts();
        let released = conn.prepare_cached(RELEASE).and_then(|mut release| release.execute([]));
        self.check(&released)?;
        released?;
        Ok(())
    }

    /// Undoes what was done since the savepoint, and closes it.
    pub fn rollback_to_savepoint(&mut self) -> anyhow::Result<()> {
        let (_, conn) = self.parts();
        let undone = conn
            .prepare_cached(ROLLBACK_TO)
            .and_then(|mut undo| undo.execute([]))
            .and_then(|_| conn.prepare_cached(RELEASE)?.execute([]));
        self.check(&undone)?;
        undone?;
        self.published = self.published_at_savepoint;
        Ok(())
    }

    /// Commits what the invocation did; returns how many events it published.
    pub fn commit(&mut self) -> anyhow::Result<usize> {
        self.check(&Ok(()))?;
        if let Some(conn) = self.conn.take()
            && let Err(err) = conn.prepare_cached(COMMIT).and_then(|mut commit| commit.execute([]))
        {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            self.published = 0;
            return Err(err).with_context(|| format!("failed to commit to {}", self.db.path.display()));
        }
        Ok(std::mem::take(&mut self.published))
    }

    pub fn rollback(&mut self) {
        // (SQLite may have ended the transaction already.)
        if let Some(conn) = self.conn.take()
            && !conn.is_autocommit()
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
    use std::time::Duration;

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
        let later = Instant::now() + Duration::from_secs(5);
        let guest = |statement: &str| db.run_guest(later, || db.prepare_guest(conn, statement)?.execute([]));
        guest("CREATE TABLE cars (id INTEGER PRIMARY KEY)")?;
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
            "UPDATE sqlite_sequence SET seq = 0",
            "DELETE FROM sqlite_sequence",
            "INSERT INTO sqlite_sequence VALUES ('cars', 1)",
            "CREATE TEMP TABLE scratch (x)",
            "SELECT * FROM pragma_database_list",
        ] {
            assert!(guest(denied).is_err(), "{denied} must be denied");
        }
        // Dropping or renaming its own tables updates SQLite's bookkeeping.
        for ddl in [
            "CREATE TABLE numbered (id INTEGER PRIMARY KEY AUTOINCREMENT)",
            "CREATE INDEX numbered_by_id ON numbered (id)",
            "INSERT INTO numbered DEFAULT VALUES",
            "DROP INDEX numbered_by_id",
            "ALTER TABLE numbered RENAME TO renumbered",
            "DROP TABLE renumbered",
        ] {
            guest(ddl)?;
        }
        // A drop that cascades into a trigger of the guest's cannot take
        // the bookkeeping's licence along (issue #13, item 2).
        for setup in [
            "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE child (id INTEGER PRIMARY KEY AUTOINCREMENT, p REFERENCES parent (id) ON DELETE CASCADE)",
            "CREATE TRIGGER rewind AFTER DELETE ON child BEGIN UPDATE sqlite_sequence SET seq = 0; END",
            "INSERT INTO parent VALUES (1)",
            "INSERT INTO child (p) VALUES (1)",
            "INSERT INTO child (p) VALUES (1)",
        ] {
            guest(setup)?;
        }
        assert!(
            guest("DROP TABLE parent").is_err(),
            "the cascade's trigger must be denied"
        );
        let seq: i64 = conn.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'child'", [], |row| {
            row.get(0)
        })?;
        assert_eq!(seq, 2, "sqlite_sequence is untouched");
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
            let denied = db.run_guest(later, || db.prepare_guest(conn, host_only).map(drop));
            assert!(denied.is_err(), "{host_only} must be denied");
        }
        Ok(())
    }
}
