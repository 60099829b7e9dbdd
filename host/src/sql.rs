//! The `rentcar:host/sql` capability: statements against the component's own
//! database, inside the invocation's transaction.

use rusqlite::types::{Value as SqlValue, ValueRef};

use crate::bindings::sql::{Changes, Error, Host, Value};
use crate::invocation::Invocation;

impl Host for Invocation {
    #[tracing::instrument(skip_all, fields(component = %self.component))]
    async fn execute(&mut self, statement: String, params: Vec<Value>) -> wasmtime::Result<Result<Changes, Error>> {
        Ok(self
            .run(&statement, params, |stmt, params| {
                let rows_affected = stmt.execute(rusqlite::params_from_iter(params))? as u64;
                Ok(rows_affected)
            })
            .await
            .map(|(rows_affected, last_insert_id)| Changes {
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
        Ok(self
            .run(&statement, params, |stmt, params| {
                let columns = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(
                        (0..columns)
                            .map(|i| row.get_ref(i).map(to_guest))
                            .collect::<rusqlite::Result<_>>()?,
                    );
                }
                Ok(out)
            })
            .await
            .map(|(rows, _)| rows))
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

    async fn run<R>(
        &mut self,
        statement: &str,
        params: Vec<Value>,
        f: impl FnOnce(&mut rusqlite::CachedStatement<'_>, Vec<SqlValue>) -> rusqlite::Result<R>,
    ) -> Result<(R, i64), Error> {
        self.txn.conn().await.map_err(to_error)?;
        let (db, conn) = self.txn.parts();
        let mut stmt = db.prepare_guest(conn, statement).map_err(to_error)?;
        let result = f(&mut stmt, params.into_iter().map(from_guest).collect()).map_err(to_error)?;
        Ok((result, conn.last_insert_rowid()))
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
