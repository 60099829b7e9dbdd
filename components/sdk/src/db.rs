//! Typed helpers over the host's `sql` import, and numbered migrations.
//!
//! A [`Row`] hands out its values only as the type the caller asks for:
//! a NULL where a value is required, a value of another type, an integer
//! out of the asked type's range or a column the row does not have is a
//! [`RowError`], never a made-up 0 or "". Nullable columns are read with
//! `opt_*` (or [`Row::get`] as an `Option`).

use std::fmt;

use crate::bindings::rentcar::host::sql;
use crate::id::Id;
pub use sql::{Changes, Error, Value};

/// One row, read by column index.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    /// The value of column `index` as a `T`; see [`FromValue`] for what
    /// each type accepts.
    pub fn get<T: FromValue>(&self, index: usize) -> Result<T, RowError> {
        let value = self.0.get(index).ok_or(RowError {
            index,
            expected: T::EXPECTED,
            found: Found::Missing(self.0.len()),
        })?;
        T::from_value(value).ok_or_else(|| RowError {
            index,
            expected: T::EXPECTED,
            found: Found::of(value),
        })
    }

    /// An INTEGER column that is never NULL.
    pub fn int(&self, index: usize) -> Result<i64, RowError> {
        self.get(index)
    }

    /// A TEXT column that is never NULL.
    pub fn text(&self, index: usize) -> Result<String, RowError> {
        self.get(index)
    }

    /// A nullable INTEGER column: `None` for NULL.
    pub fn opt_int(&self, index: usize) -> Result<Option<i64>, RowError> {
        self.get(index)
    }

    /// A nullable TEXT column: `None` for NULL.
    pub fn opt_text(&self, index: usize) -> Result<Option<String>, RowError> {
        self.get(index)
    }
}

/// A type a column's value can be read as.
pub trait FromValue: Sized {
    /// What the type takes, for [`RowError`]'s message.
    const EXPECTED: &'static str;

    /// The value as `Self`, or `None` if it is not one.
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    const EXPECTED: &'static str = "an integer";

    fn from_value(value: &Value) -> Option<i64> {
        match value {
            Value::Integer(value) => Some(*value),
            _ => None,
        }
    }
}

impl FromValue for u64 {
    const EXPECTED: &'static str = "a non-negative integer";

    fn from_value(value: &Value) -> Option<u64> {
        i64::from_value(value).and_then(|value| u64::try_from(value).ok())
    }
}

impl FromValue for u32 {
    const EXPECTED: &'static str = "an integer from 0 to 4294967295";

    fn from_value(value: &Value) -> Option<u32> {
        i64::from_value(value).and_then(|value| u32::try_from(value).ok())
    }
}

impl FromValue for Id {
    const EXPECTED: &'static str = crate::id::EXPECTED;

    fn from_value(value: &Value) -> Option<Id> {
        i64::from_value(value).and_then(Id::new)
    }
}

impl FromValue for String {
    const EXPECTED: &'static str = "text";

    fn from_value(value: &Value) -> Option<String> {
        match value {
            Value::Text(value) => Some(value.clone()),
            _ => None,
        }
    }
}

/// A nullable column: NULL is `None`; any other value must be a `T`.
impl<T: FromValue> FromValue for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;

    fn from_value(value: &Value) -> Option<Option<T>> {
        match value {
            Value::Null => Some(None),
            value => T::from_value(value).map(Some),
        }
    }
}

/// A column that does not hold what the component reads it as: the schema
/// and the code disagree, a bug the invocation fails for (500, rolled back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    index: usize,
    expected: &'static str,
    found: Found,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    /// The row's length: it has no such column.
    Missing(usize),
    /// What the column holds instead.
    Value(String),
}

impl Found {
    fn of(value: &Value) -> Found {
        Found::Value(match value {
            Value::Null => "NULL".into(),
            Value::Integer(value) => format!("the integer {value}"),
            Value::Real(_) => "a real".into(),
            Value::Text(_) => "text".into(),
            Value::Blob(_) => "a blob".into(),
        })
    }
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { index, expected, .. } = self;
        match &self.found {
            Found::Missing(len) => write!(f, "column {index}: expected {expected}, but the row has {len} columns"),
            Found::Value(found) => write!(f, "column {index}: expected {expected}, found {found}"),
        }
    }
}

impl std::error::Error for RowError {}

impl From<i64> for Value {
    fn from(value: i64) -> Value {
        Value::Integer(value)
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

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
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
pub fn migrate(migrations: &[&str]) -> Result<(), crate::Error> {
    execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)",
        &[],
    )?;
    let applied = query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])?
        .map(|row| row.int(0))
        .transpose()?
        .unwrap_or(0);
    for (version, migration) in (1..).zip(migrations) {
        if version > applied {
            execute(migration, &[])?;
            execute("INSERT INTO schema_migrations (version) VALUES (?)", &[version.into()])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Row, Value};
    use crate::id::Id;

    fn row() -> Row {
        Row(vec![
            Value::Integer(7),
            Value::Text("kim".into()),
            Value::Null,
            Value::Integer(-1),
            Value::Real(1.5),
            Value::Integer(i64::from(u32::MAX) + 1),
        ])
    }

    #[test]
    fn values_of_the_asked_type_are_read() {
        let row = row();
        assert_eq!(row.int(0), Ok(7));
        assert_eq!(row.text(1).as_deref(), Ok("kim"));
        assert_eq!(row.get::<u64>(0), Ok(7));
        assert_eq!(row.get::<u32>(0), Ok(7));
        assert_eq!(row.get::<Id>(0).map(Id::get), Ok(7));
        assert_eq!(row.int(3), Ok(-1));
        assert_eq!(row.int(5), Ok(i64::from(u32::MAX) + 1));
    }

    #[test]
    fn null_is_an_error_unless_the_column_is_read_as_nullable() {
        let row = row();
        assert_eq!(
            row.int(2).map_err(|err| err.to_string()),
            Err("column 2: expected an integer, found NULL".into())
        );
        assert!(row.text(2).is_err());
        assert_eq!(row.opt_int(2), Ok(None));
        assert_eq!(row.opt_text(2), Ok(None));
        assert_eq!(row.opt_int(0), Ok(Some(7)));
        assert_eq!(row.opt_text(1), Ok(Some("kim".into())));
    }

    #[test]
    fn another_type_or_range_or_a_missing_column_is_an_error() {
        let row = row();
        assert_eq!(
            row.text(0).map_err(|err| err.to_string()),
            Err("column 0: expected text, found the integer 7".into())
        );
        assert!(row.int(1).is_err(), "text is not an integer");
        assert!(row.int(4).is_err(), "a real is not an integer");
        // Nullable still means "this type or NULL".
        assert!(row.opt_int(1).is_err());
        assert!(row.opt_text(0).is_err());
        // Negative numbers are no ids, counts or u64s; u32 stops at its max.
        assert!(row.get::<u64>(3).is_err());
        assert!(row.get::<Id>(3).is_err());
        assert!(row.get::<u32>(5).is_err());
        assert_eq!(
            row.int(6).map_err(|err| err.to_string()),
            Err("column 6: expected an integer, but the row has 6 columns".into())
        );
    }
}
