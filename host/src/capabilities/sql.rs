//! The `rentcar:host/sql` capability: statements against the component's own
//! database, inside the invocation's transaction.

use rusqlite::types::{Value as SqlValue, ValueRef};

use crate::bindings::sql::{Changes, Error, Host, Value};
use crate::instance::invocation::Invocation;
use crate::instance::memory::{Limiter, OverBudget};

impl Host for Invocation {
    #[tracing::instrument(skip_all, fields(component = %self.component))]
    async fn execute(&mut self, statement: String, params: Vec<Value>) -> wasmtime::Result<Result<Changes, Error>> {
        let changes = self
            .run(&statement, params, |stmt, params, _| {
                let rows_affected = stmt.execute(rusqlite::params_from_iter(params))? as u64;
                Ok(rows_affected)
            })
            .await?;
        Ok(changes.map(|(rows_affected, last_insert_id)| Changes {
            rows_affected,
            last_insert_id,
        }))
    }

    #[tracing::instrument(skip_all, fields(component = %self.component))]
    async fn query(
        &mut self,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<Vec<Vec<Value>>, Error>> {
        let rows = self
            .run(&statement, params, |stmt, params, limits| {
                let columns = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
                let (mut out, mut bytes) = (Vec::new(), 0);
                while let Some(row) = rows.next()? {
                    let row: Vec<Value> = (0..columns)
                        .map(|i| row.get_ref(i).map(to_guest))
                        .collect::<rusqlite::Result<_>>()?;
                    let size = row.iter().map(size).sum::<usize>();
                    bytes += size;
                    if bytes > MAX_RESULT_BYTES {
                        return Err(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_TOOBIG),
                            Some(format!("the result is over {MAX_RESULT_BYTES} bytes")),
                        ));
                    }
                    limits.hold(size)?;
                    out.push(row);
                }
                Ok(out)
            })
            .await?;
        Ok(rows.map(|(rows, _)| rows))
    }

    #[tracing::instrument(skip_all, fields(component = %self.component))]
    async fn commit(&mut self) -> wasmtime::Result<Result<(), Error>> {
        Ok(self.commit_so_far())
    }
}

impl Invocation {
    fn commit_so_far(&mut self) -> Result<(), Error> {
        if !self.may_commit {
            return Err(Error::Denied(
                "only HTTP requests and calls may commit midway; an event's effect commits with its inbox row".into(),
            ));
        }
        let published = self.txn.commit().map_err(|err| Error::Other(format!("{err:#}")))?;
        self.committed_events += published;
        Ok(())
    }

    /// Runs a guest statement in the invocation's transaction, interrupted
    /// at the invocation's deadline; `f` reserves what it builds for the
    /// guest from its memory budgets. The outer error traps the guest.
    async fn run<R>(
        &mut self,
        statement: &str,
        params: Vec<Value>,
        f: impl FnOnce(&mut rusqlite::CachedStatement<'_>, Vec<SqlValue>, &mut Held<'_>) -> rusqlite::Result<R>,
    ) -> wasmtime::Result<Result<(R, i64), Error>> {
        if let Err(reason) = self.begin_call().await? {
            return Ok(Err(Error::Other(reason)));
        }
        let (db, conn) = self.txn.parts();
        let mut held = Held::new(&mut self.limits);
        let result = db.run_guest(self.deadline, || {
            let mut stmt = db.prepare_guest(conn, statement)?;
            f(&mut stmt, params.into_iter().map(from_guest).collect(), &mut held)
        });
        held.check()?;
        let result = result.map(|rows| (rows, conn.last_insert_rowid()));
        // `INSERT OR ROLLBACK`, `RAISE(ROLLBACK)`, a full disk and some I/O
        // errors end the transaction itself: the invocation fails here.
        self.settle(&result)?;
        Ok(result.map_err(to_error))
    }
}

/// What a host call builds for the guest (rows, values), reserved from the
/// instance's memory budgets as it is built. A refusal stops the statement
/// with an error, then traps the invocation with [`OverBudget`]
/// ([`Held::check`]): an HTTP caller gets 503, an event waits.
pub(super) struct Held<'a> {
    limits: &'a mut Limiter,
    refused: Option<OverBudget>,
}

impl Held<'_> {
    pub(super) fn new(limits: &mut Limiter) -> Held<'_> {
        Held { limits, refused: None }
    }

    pub(super) fn hold(&mut self, bytes: usize) -> rusqlite::Result<()> {
        self.limits.hold(bytes).map_err(|refused| {
            self.refused = Some(refused);
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOMEM),
                Some("the memory budget is spent".into()),
            )
        })
    }

    pub(super) fn check(self) -> Result<(), OverBudget> {
        self.refused.map_or(Ok(()), Err)
    }
}

/// Most a query may return, in the host's memory before it reaches the
/// guest's.
const MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;

/// Roughly what a value takes in memory.
fn size(value: &Value) -> usize {
    16 + match value {
        Value::Text(text) => text.len(),
        Value::Blob(blob) => blob.len(),
        _ => 0,
    }
}

fn from_guest(value: Value) -> SqlValue {
    match value {
        Value::Null => SqlValue::Null,
        Value::Integer(i) => SqlValue::Integer(i),
        Value::Real(f) => SqlValue::Real(f),
        Value::Text(s) => SqlValue::Text(s),
        Value::Blob(b) => SqlValue::Blob(b),
    }
}

fn to_guest(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(s) => Value::Text(String::from_utf8_lossy(s).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn to_error(err: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    match &err {
        rusqlite::Error::SqliteFailure(cause, message) => {
            let message = message.clone().unwrap_or_else(|| cause.to_string());
            match cause.code {
                ErrorCode::ConstraintViolation => Error::Constraint(message),
                ErrorCode::AuthorizationForStatementDenied => Error::Denied(message),
                _ => Error::Other(message),
            }
        }
        rusqlite::Error::MultipleStatement => Error::Denied("one statement at a time".into()),
        _ => Error::Other(err.to_string()),
    }
}
