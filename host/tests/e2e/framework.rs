//! What issue #14 changed in the guests: payment's own failures are its
//! own answer, not "unavailable", and a row that does not hold what the
//! code reads fails instead of reading as 0 or "".

use serde_json::{Value, json};

use crate::harness::{Host, database_at_migration_2, wait_for};

/// Payment's schema at its second migration, with triggers that make its
/// database refuse a payment for `mallory` and any cancel of `stuck`'s:
/// payment failing on its own, as a bug or a broken migration would.
const PAYMENTS_THAT_FAIL: &str = "
    CREATE TABLE payments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        order_id INTEGER NOT NULL,
        car_id INTEGER NOT NULL,
        qty INTEGER NOT NULL,
        customer TEXT NOT NULL,
        status TEXT NOT NULL
    );
    CREATE INDEX payments_by_order ON payments (order_id);
    CREATE TRIGGER refuse_mallory BEFORE INSERT ON payments WHEN NEW.customer = 'mallory'
    BEGIN SELECT RAISE(ABORT, 'payments refuses mallory'); END;
    CREATE TRIGGER keep_stuck BEFORE UPDATE OF status ON payments
        WHEN OLD.customer = 'stuck' AND NEW.status = 'CANCELLED'
    BEGIN SELECT RAISE(ABORT, 'payments keeps stuck'); END;";

fn order_for(host: &Host, car_id: u64, customer: &str, key: &str) -> reqwest::RequestBuilder {
    crate::harness::client_as(customer, &["customer"])
        .post(format!("{}/orders", host.base))
        .header("Idempotency-Key", key)
        .json(&json!({ "carId": car_id, "qty": 1, "customer": customer }))
}

fn assert_payment_failed(status: u16, body: &Value, what: &str) {
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("payment-failed")),
        "{what}: {body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("payments refuses mallory")
            || body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("payments keeps stuck"),
        "{what}: payment's reason: {body}"
    );
}

#[tokio::test]
async fn payment_failing_on_its_own_is_502_payment_failed_and_charges_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    database_at_migration_2(dir.path(), "payment", PAYMENTS_THAT_FAIL)?;
    let host = Host::start(dir.path())?;
    let car_id = host.car("Tivoli", 5).await?;

    // Not "unavailable, retry shortly": payment ran and failed. No order,
    // no payment, and the key is free again (a retry fails the same way
    // instead of finding the placement in progress).
    let request = order_for(&host, car_id, "mallory", "m-1");
    let response = request.send().await?;
    assert!(response.headers().get("retry-after").is_none(), "{response:?}");
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    assert_payment_failed(status, &body, "placing");
    let (status, body) = host.send(order_for(&host, car_id, "mallory", "m-1")).await?;
    assert_payment_failed(status, &body, "the retry");
    assert!(host.all("/orders").await?.is_empty(), "no order without a payment");
    assert!(host.all("/payments").await?.is_empty(), "nothing charged");

    // Payment's failures are answers, not a payment that is down: others
    // are served as before.
    let order = host.order(car_id, 1).await?;
    wait_for(&host, &format!("/orders/{}", order["id"]), "status", json!("RESERVED")).await?;

    // A cancel that payment fails on leaves the order and its payment as
    // they were.
    let (status, stuck) = host.send(order_for(&host, car_id, "stuck", "s-1")).await?;
    assert_eq!(status, 201, "{stuck}");
    let path = format!("/orders/{}", stuck["id"]);
    wait_for(&host, &path, "status", json!("RESERVED")).await?;
    let (status, body) = host.post(&format!("{path}/cancel"), json!({})).await?;
    assert_payment_failed(status, &body, "cancelling");
    let (_, still) = host.get(&path).await?;
    assert_eq!(still["status"], "RESERVED", "{still}");
    let (_, payment) = host.get(&format!("/payments/{}", stuck["paymentId"])).await?;
    assert_eq!(payment["status"], "APPROVED", "{payment}");
    Ok(())
}

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
