//! What issue #14 changed in the guests: a row that does not hold what the
//! code reads fails instead of reading as 0 or "".

use crate::harness::{Host, database_at_migration_2};

/// SQLite lets a column hold a value of another type than declared (text
/// in an INTEGER column, a blob in a TEXT one); a
/// component that reads it must fail (500), not show 0 or "".
#[tokio::test]
async fn a_row_that_does_not_hold_what_the_code_reads_is_an_internal_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    database_at_migration_2(
        dir.path(),
        "order",
        "CREATE TABLE orders (
             id INTEGER PRIMARY KEY,
             car_id INTEGER NOT NULL,
             qty INTEGER NOT NULL,
             customer TEXT NOT NULL,
             status TEXT NOT NULL,
             payment_id INTEGER NOT NULL,
             idempotency_key TEXT UNIQUE
         );
         CREATE TABLE abandoned (id INTEGER PRIMARY KEY);
         INSERT INTO orders VALUES (3, 1, 'two', 'lee', 'RESERVED', 3, NULL), (4, 1, 2, X'6b696d', 'RESERVED', 4, NULL);",
    )?;
    let host = Host::start(dir.path())?;
    for (path, column) in [
        ("/orders/3", "column 2"),
        ("/orders/4", "column 3"),
        ("/orders", "column 2"),
    ] {
        let (status, body) = host.get(path).await?;
        assert_eq!(
            (status, body["error"].as_str()),
            (500, Some("internal")),
            "{path}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap_or_default().contains(column),
            "{path}: {body}"
        );
    }
    Ok(())
}
