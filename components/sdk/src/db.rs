//! Typed helpers over the host's `sql` import.

use crate::bindings::rentcar::host::sql;
pub use sql::{Changes, Error, Value};

/// One row, read by column index.
pub struct Row(Vec<Value>);

impl Row {
    pub fn int(&self, index: usize) -> i64 {
        match self.0.get(index) {
            Some(Value::Integer(value)) => *value,
            _ => 0,
        }
    }

    pub fn text(&self, index: usize) -> String {
        match self.0.get(index) {
            Some(Value::Text(value)) => value.clone(),
            _ => String::new(),
        }
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Value {
        Value::Integer(value)
    }
}

impl From<u64> for Value {
    fn from(value: u64) -> Value {
        // Ids and counts are far below i64::MAX.
        Value::Integer(value as i64)
    }
}

impl From<u32> for Value {
    fn from(value: u32) -> Value {
        Value::Integer(value.into())
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value::Text(value.to_string())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Value {
        Value::Text(value)
    }
}

pub fn execute(statement: &str, params: &[Value]) -> Result<Changes, Error> {
    sql::execute(statement, params)
}

pub fn query(statement: &str, params: &[Value]) -> Result<Vec<Row>, Error> {
    Ok(sql::query(statement, params)?.into_iter().map(Row).collect())
}

/// Commits what the invocation did so far and gives up the write turn (see
/// `rentcar:host/sql.commit`); the next statement starts a new transaction.
pub fn commit() -> Result<(), Error> {
    sql::commit()
}

pub fn query_row(statement: &str, params: &[Value]) -> Result<Option<Row>, Error> {
    Ok(query(statement, params)?.into_iter().next())
}

/// Applies the numbered migrations not applied yet, in order. Meant for the
/// component's `init` export, which the host runs in a transaction at load.
pub fn migrate(migrations: &[&str]) -> Result<(), Error> {
    execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)",
        &[],
    )?;
    let applied =
        query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])?.map_or(0, |row| row.int(0));
    for (index, migration) in migrations.iter().enumerate() {
        let version = index as i64 + 1;
        if version > applied {
            execute(migration, &[])?;
            execute("INSERT INTO schema_migrations (version) VALUES (?)", &[version.into()])?;
        }
    }
    Ok(())
}
