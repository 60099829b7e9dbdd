//! Starting, stopping and restarting the host.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Host, database_at_migration_2, eventually, root, wait_for};

#[tokio::test]
async fn restart_keeps_data_and_resumes_delivery() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut host = Host::start(dir.path())?;
    let car_id = host.car("Palisade", 5).await?;
    let first = host.order(car_id, 1).await?;
    wait_for(&host, &format!("/orders/{}", first["id"]), "status", json!("RESERVED")).await?;

    // Hard kill right after a burst of orders: some of their events are
    // still in outboxes or undelivered in the log.
    let mut burst = Vec::new();
    for _ in 0..3 {
        burst.push(host.order(car_id, 1).await?);
    }
    host.kill();

    let host = Host::start(dir.path())?;
    let (_, car) = host.get(&format!("/cars/{car_id}")).await?;
    assert_eq!(car["stock"], 5);
    let orders = host.all("/orders").await?;
    assert_eq!(orders.len(), 4, "all orders survived: {orders:?}");
    for order in &burst {
        wait_for(&host, &format!("/orders/{}", order["id"]), "status", json!("RESERVED")).await?;
    }
    wait_for(&host, &format!("/availability/{car_id}"), "available", json!(1)).await?;
    wait_for(&host, &format!("/cars/{car_id}"), "available", json!(1)).await?;

    let next = host.order(car_id, 1).await?;
    assert!(next["id"].as_u64() > burst[2]["id"].as_u64(), "ids keep growing");
    wait_for(&host, &format!("/availability/{car_id}"), "available", json!(0)).await?;
    Ok(())
}

/// Payment picks each new id (its order's id too) itself, one past the
/// table's sequence: on a database that already holds payments, ids go on
/// from the last one, and what was there reads the same.
#[tokio::test]
async fn payment_ids_go_on_from_an_existing_database() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    database_at_migration_2(
        dir.path(),
        "payment",
        "CREATE TABLE payments (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             order_id INTEGER NOT NULL,
             car_id INTEGER NOT NULL,
             qty INTEGER NOT NULL,
             customer TEXT NOT NULL,
             status TEXT NOT NULL
         );
         CREATE INDEX payments_by_order ON payments (order_id);
         INSERT INTO payments VALUES (7, 7, 1, 2, 'kim', 'CANCELLED');",
    )?;
    let host = Host::start(dir.path())?;
    let (status, payment) = host.get("/payments/7").await?;
    assert_eq!(status, 200, "{payment}");
    assert_eq!(
        payment,
        json!({ "id": 7, "orderId": 7, "carId": 1, "qty": 2, "customer": "kim", "status": "CANCELLED" })
    );
    let (_, listed) = host.get("/payments?orderId=7").await?;
    assert_eq!(listed, json!({ "items": [payment], "next": null }));

    let car_id = host.car("Avante", 3).await?;
    let order = host.order(car_id, 1).await?;
    assert_eq!(order["id"], 8, "{order}");
    let paid = wait_for(&host, "/payments/8", "status", json!("APPROVED")).await?;
    assert_eq!(paid["orderId"], 8, "{paid}");
    Ok(())
}

/// An order database from before idempotency keys moved to a partial
/// index is rebuilt at start-up: its orders are still there, and a key used
/// before still answers with its order.
#[tokio::test]
async fn orders_of_an_older_schema_are_migrated() -> anyhow::Result<()> {
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
         INSERT INTO orders VALUES (3, 1, 1, 'lee', 'RESERVED', 3, 'k-3'), (4, 1, 2, 'kim', 'CANCELLED', 4, NULL);",
    )?;
    let host = Host::start(dir.path())?;
    let orders = host.all("/orders").await?;
    let ids: Vec<_> = orders.iter().map(|o| o["id"].clone()).collect();
    assert_eq!(ids, [json!(3), json!(4)], "{orders:?}");

    let lee = crate::harness::client_as("lee", &["customer"]);
    let again = lee
        .post(format!("{}/orders", host.base))
        .header("Idempotency-Key", "k-3")
        .json(&json!({ "carId": 1, "qty": 1, "customer": "lee" }));
    let (status, order) = host.send(again).await?;
    assert_eq!(
        (status, order["id"].clone(), order["status"].clone()),
        (201, json!(3), json!("RESERVED"))
    );
    let reused = lee
        .post(format!("{}/orders", host.base))
        .header("Idempotency-Key", "k-3")
        .json(&json!({ "carId": 1, "qty": 2, "customer": "lee" }));
    let (status, refused) = host.send(reused).await?;
    assert_eq!(status, 422, "{refused}");
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut host = Host::start(dir.path())?;
    host.car("Casper", 1).await?;
    let status = host.terminate()?;
    assert!(status.success(), "exit status {status}");
    host.logged("stopped").await?;
    Ok(())
}

/// Runs `rentcar-host serve` expecting it to fail, and returns its stderr.
fn serve_fails(config: &str, extra: &[&str]) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("runtime.toml");
    std::fs::write(&path, config)?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rentcar-host"))
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--data-dir"])
        .arg(dir.path().join("data"))
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "expected failure, got success:\n{stderr}");
    assert!(!stderr.contains("panicked"), "a bad config must not panic:\n{stderr}");
    Ok(stderr)
}

#[test]
fn bad_configs_fail_with_a_clear_message() -> anyhow::Result<()> {
    let wasm = |name: &str| {
        root()
            .join(format!("target/wasm32-wasip2/release/{name}.wasm"))
            .display()
            .to_string()
    };

    let stderr = serve_fails("[components.order]\npath = \"missing.wasm\"\n", &[])?;
    assert!(
        stderr.contains("component `order`") && stderr.contains("not found"),
        "{stderr}"
    );

    let stderr = serve_fails("[components.x]\npath = \"a.wasm\"\nroutez = []\n", &[])?;
    assert!(stderr.contains("unknown field `routez`"), "{stderr}");

    let not_wasm = tempfile::NamedTempFile::new()?;
    std::fs::write(not_wasm.path(), "hello")?;
    let stderr = serve_fails(&format!("[components.x]\npath = {:?}\n", not_wasm.path()), &[])?;
    assert!(stderr.contains("not a valid WebAssembly component"), "{stderr}");

    // order imports the payments interface; without the link nothing provides it.
    let stderr = serve_fails(&format!("[components.order]\npath = {:?}\n", wasm("order")), &[])?;
    assert!(
        stderr.contains("imports something the host does not provide"),
        "{stderr}"
    );

    let link_to_wrong = format!(
        "[components.order]\npath = {:?}\n[components.view]\npath = {:?}\n\
         [[links]]\nfrom = \"order\"\nto = \"view\"\ninterface = \"rentcar:payment/payments@0.1.0\"\n",
        wasm("order"),
        wasm("view")
    );
    let stderr = serve_fails(&link_to_wrong, &[])?;
    assert!(
        stderr.contains("does not export `rentcar:payment/payments@0.1.0`"),
        "{stderr}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let stderr = serve_fails(
        &format!("[components.view]\npath = {:?}\n", wasm("view")),
        &["--listen", &addr],
    )?;
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn a_second_host_on_the_same_data_dir_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rentcar-host"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(crate::harness::runtime_toml())
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_BACKTRACE", "0")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a second host started:\n{stderr}");
    assert!(
        stderr.contains("another rentcar-host is using this data directory"),
        "{stderr}"
    );
    // The first host is unharmed.
    let car = host.car("Still here", 1).await?;
    host.order(car, 1).await?;
    Ok(())
}

#[tokio::test]
async fn health_metrics_and_a_request_id_that_follows_the_events() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let client = crate::harness::client();
    let response = client.get(format!("{}/healthz", host.base)).send().await?;
    assert_eq!(
        (response.status().as_u16(), response.text().await?.as_str()),
        (200, "ok")
    );
    // Ready once the event bus is (at once on the embedded log; a broker's
    // topics are made first).
    eventually("the host to be ready", Duration::from_secs(20), || async {
        let response = client.get(format!("{}/readyz", host.base)).send().await?;
        let answer = (response.status().as_u16(), response.text().await?);
        Ok((answer == (200, "ready".to_string())).then_some(()))
    })
    .await?;

    let car = host.car("Traced", 3).await?;
    let response = client
        .post(format!("{}/orders", host.base))
        .header("x-request-id", "trace-4711")
        .json(&json!({ "carId": car, "qty": 1, "customer": "kim" }))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], "trace-4711");
    let generated = client.get(format!("{}/cars", host.base)).send().await?;
    assert_eq!(
        generated.headers()["x-request-id"].len(),
        36,
        "a UUID when the caller sends none"
    );

    // payment's events reach rentcar and order, rentcar's reach order and
    // view (payment hears only rejections): all carry the id of the request
    // that caused them.
    eventually("the request id in four deliveries", Duration::from_secs(20), || async {
        let log = host.log();
        let traced = log
            .lines()
            .filter(|l| l.contains("request_id=trace-4711") && l.contains("delivered"))
            .count();
        Ok((traced >= 4).then_some(()))
    })
    .await?;

    let metrics = client
        .get(format!("{}/metrics", host.base))
        .send()
        .await?
        .text()
        .await?;
    for expected in [
        "rentcar_requests_total{component=\"order\",status=\"201\"} 1",
        "rentcar_request_duration_seconds_bucket{component=\"rentcar\"",
        "rentcar_circuit_open{from=\"order\",to=\"payment\"} 0",
        "rentcar_event_lag{consumer=\"view\",topic=\"rentcar\"}",
        "rentcar_instances_in_flight{component=\"payment\"}",
        "rentcar_event_deliveries_total{consumer=\"rentcar\",topic=\"payment\",outcome=\"applied\"}",
    ] {
        assert!(metrics.contains(expected), "missing {expected} in\n{metrics}");
    }
    Ok(())
}

/// `cargo xtask run` serves `runtime.toml` with relative paths, from the
/// directory it is in: data and the compilation cache go under `./data`.
#[test]
fn relative_paths_in_the_config_work() -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir()?;
    std::fs::copy(
        root().join("target/wasm32-wasip2/release/view.wasm"),
        dir.path().join("view.wasm"),
    )?;
    std::fs::write(
        dir.path().join("runtime.toml"),
        "[server]\ndata_dir = \"data\"\n[components.view]\npath = \"view.wasm\"\nroutes = [\"/availability\"]\n",
    )?;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rentcar-host"))
        .args(["serve", "--config", "runtime.toml", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("RUST_BACKTRACE", "0")
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let ready = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with("listening on"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "the host did not start with relative paths");
    assert!(dir.path().join("data/view.db").exists() && dir.path().join("data/cache").is_dir());
    Ok(())
}
