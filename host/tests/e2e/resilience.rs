//! Protection against failing and hostile components: call policies, fault
//! injection, and the sandbox's limits.

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Host, eventually, runtime_toml_with, wait_for, wasm};

/// The hostile component beside the well-behaved probe, with tight limits.
fn hostile_config(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("hostile.toml");
    let config = format!(
        "[components.hostile]\npath = {:?}\nroutes = [\"/hostile\"]\n\
         [components.hostile.limits]\nmemory_mib = 16\ntimeout_ms = 500\ncpu_percent = 25\nmax_instances = 4\n\
         database_mib = 1\n\
         max_response_bytes = 1048576\n\n\
         [components.probe]\npath = {:?}\nroutes = [\"/probe\"]\nsubscribe = [\"probe\"]\n",
        wasm("hostile"),
        wasm("probe")
    );
    std::fs::write(&path, config)?;
    Ok(path)
}

#[tokio::test]
async fn hostile_components_get_clear_errors_and_the_host_keeps_serving() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start_with(&hostile_config(dir.path())?, &dir.path().join("data"))?;
    let attacks = [
        ("/hostile/loop", 504, "deadline-exceeded"),
        ("/hostile/alloc", 500, "component-failed"),
        ("/hostile/recurse", 500, "component-failed"),
        ("/hostile/huge", 500, "component-failed"),
        ("/hostile/trap", 500, "component-failed"),
    ];
    for (path, status, code) in attacks {
        let started = Instant::now();
        let (got, body) = host.get(path).await?;
        assert_eq!((got, body["error"].as_str()), (status, Some(code)), "{path}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} took {:?}",
            started.elapsed()
        );
        let (status, _) = host.get("/probe/seen").await?;
        assert_eq!(status, 200, "the neighbour still serves after {path}");
    }

    // Many attacks at once: the neighbour keeps answering meanwhile.
    let attack = join_all((0..8).map(|i| host.get(["/hostile/loop", "/hostile/alloc"][i % 2])));
    let neighbour = async {
        for _ in 0..20 {
            let (status, _) = host.get("/probe/seen").await?;
            anyhow::ensure!(status == 200);
        }
        anyhow::Ok(())
    };
    let (attacks, neighbour) = tokio::join!(attack, neighbour);
    neighbour?;
    for result in attacks {
        let (status, body) = result?;
        assert!(status >= 500 && body["error"].is_string(), "{status} {body}");
    }

    let (status, escape) = host.get("/hostile/escape").await?;
    assert_eq!(status, 200);
    assert_eq!(escape["env"], 0, "no environment: {escape}");
    for what in ["file", "dir", "net"] {
        assert!(
            escape[what].as_str().unwrap().starts_with("Err"),
            "{what} must be denied: {escape}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn sql_cannot_escape_the_invocations_transaction_or_deadline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start_with(&hostile_config(dir.path())?, &dir.path().join("data"))?;
    let result = |body: &Value| body["result"].as_str().unwrap_or_default().to_string();

    // `INSERT OR ROLLBACK` ends the host's transaction: the invocation fails
    // there, and its next write does not commit on its own.
    let (status, body) = host.get("/hostile/sql/rollback").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("component-failed")),
        "{body}"
    );
    let (status, body) = host.get("/hostile/sql/count").await?;
    assert_eq!((status, result(&body)), (200, "Ok(Some(0))".into()), "{body}");

    // SQLite's bookkeeping (which numbers the host's outbox) is read-only.
    let (status, body) = host.get("/hostile/sql/sequence").await?;
    assert!(status == 200 && result(&body).contains("Denied"), "{status} {body}");

    // A statement that never ends is interrupted at the deadline (500 ms),
    // and the component's database is free again afterwards.
    let started = Instant::now();
    let (status, body) = host.get("/hostile/sql/forever").await?;
    assert!(status == 504 || result(&body).contains("interrupt"), "{status} {body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let (status, body) = host.get("/hostile/sql/count").await?;
    assert_eq!(status, 200, "{body}");

    // The database stops at its `database_mib` (1 MiB here), and the
    // neighbour keeps serving.
    let (status, body) = host.get("/hostile/sql/fill").await?;
    assert!(status == 507 || result(&body).contains("full"), "{status} {body}");
    assert!(std::fs::metadata(dir.path().join("data/hostile.db"))?.len() <= 1024 * 1024);
    let (status, _) = host.get("/probe/seen").await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn injected_delay_opens_the_circuit_and_removing_it_closes_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("Staria", 100_000).await?;
    let (status, body) = host.fault("payment", json!({ "delayMs": 800 })).await?;
    assert_eq!(status, 200, "{body}");

    // 24 clients, each ordering for a few seconds.
    let client = crate::harness::client();
    let results = join_all((0..24).map(|_| {
        let (client, base) = (client.clone(), host.base.clone());
        async move {
            let mut seen = Vec::new();
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                let started = Instant::now();
                let response = client
                    .post(format!("{base}/orders"))
                    .json(&json!({ "carId": car, "qty": 1, "customer": "siege" }))
                    .send()
                    .await?;
                let retry_after = response.headers().contains_key("retry-after");
                let status = response.status().as_u16();
                let body: Value = response.json().await?;
                seen.push((status, started.elapsed(), retry_after, body));
            }
            anyhow::Ok(seen)
        }
    }))
    .await;
    let mut all = Vec::new();
    for result in results {
        all.extend(result?);
    }
    let created = all.iter().filter(|(status, ..)| *status == 201).count();
    let mut fast_fails: Vec<Duration> = all
        .iter()
        .filter(|(s, ..)| *s == 503)
        .map(|(_, took, ..)| *took)
        .collect();
    assert!(created >= 1, "slow calls still succeed until the circuit opens");
    assert!(
        fast_fails.len() > all.len() / 2,
        "most callers are turned away: {} of {}",
        fast_fails.len(),
        all.len()
    );
    for (status, _, retry_after, body) in &all {
        assert!(*status == 201 || *status == 503, "{status} {body}");
        if *status == 503 {
            assert!(*retry_after && body["error"] == "payment-unavailable", "{body}");
        }
    }
    fast_fails.sort();
    let median = fast_fails[fast_fails.len() / 2];
    assert!(median < Duration::from_millis(400), "503s come fast, median {median:?}");
    let (_, links) = host.admin(Method::GET, "/admin/links").await?;
    assert_ne!(links[0]["circuit"], "closed", "{links}");
    assert_eq!(
        host.all("/orders").await?.len(),
        created,
        "a 503 leaves no order behind"
    );

    let (status, _) = host.admin(Method::DELETE, "/admin/faults/payment").await?;
    assert_eq!(status, 204);
    eventually("orders to succeed again", Duration::from_secs(15), || async {
        let (status, _) = host
            .post("/orders", json!({ "carId": car, "qty": 1, "customer": "after" }))
            .await?;
        Ok((status == 201).then_some(()))
    })
    .await?;
    let (_, links) = host.admin(Method::GET, "/admin/links").await?;
    assert_eq!(links[0]["circuit"], "closed", "{links}");
    Ok(())
}

#[tokio::test]
async fn a_callee_whose_disk_is_full_is_507_and_does_not_open_the_circuit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = runtime_toml_with(dir.path(), "[components.payment.limits]\ndatabase_mib = 1\n")?;
    let data = dir.path().join("data");
    let host = Host::start_with(&config, &data)?;
    let car = host.car("Ray", 100).await?;
    host.order(car, 1).await?;
    drop(host);

    // Something else takes the room payment's database had left.
    let payment = rusqlite::Connection::open(data.join("payment.db"))?;
    payment.execute_batch("CREATE TABLE filler (b BLOB); INSERT INTO filler VALUES (zeroblob(2097152));")?;
    drop(payment);
    let host = Host::start_with(&config, &data)?;

    // Orders fill the room left in its pages, and in those its outbox frees
    // as events are relayed, until payment cannot write: from then on each
    // is 507, never 503 "circuit open", past the five failures in a row that
    // open the circuit.
    let (mut streak, mut sent) = (0, 0);
    while streak < 8 {
        let (status, body) = host.post("/orders", json!({ "carId": car, "qty": 1 })).await?;
        match (status, body["error"].as_str()) {
            (201, _) => streak = 0,
            (507, Some("insufficient-storage")) => streak += 1,
            _ => panic!("order answered {status}: {body}"),
        }
        sent += 1;
        assert!(sent < 3000, "payment's database never filled up");
    }
    let (_, links) = host.admin(Method::GET, "/admin/links").await?;
    assert_eq!(links[0]["circuit"], "closed", "{links}");

    Ok(())
}

#[tokio::test]
async fn aborts_fail_calls_and_requests_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("Bongo", 10).await?;
    let (status, _) = host.fault("payment", json!({ "abortPercent": 100 })).await?;
    assert_eq!(status, 200);
    let (status, body) = host
        .post("/orders", json!({ "carId": car, "qty": 1, "customer": "a" }))
        .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("payment-unavailable")),
        "{body}"
    );
    let (status, body) = host.get("/payments").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("fault-injected")),
        "{body}"
    );
    let (_, faults) = host.admin(Method::GET, "/admin/faults").await?;
    assert_eq!(faults["payment"]["abortPercent"], 100);

    let (status, _) = host.fault("payment", json!({ "abortPercent": 101 })).await?;
    assert_eq!(status, 400);
    let (status, _) = host.fault("payment", json!({ "delay": 1 })).await?;
    assert_eq!(status, 400, "unknown fields are refused");
    let (status, _) = host.fault("nobody", json!({})).await?;
    assert_eq!(status, 404);

    host.admin(Method::DELETE, "/admin/faults/payment").await?;
    host.order(car, 1).await?;
    let (status, _) = host.admin(Method::DELETE, "/admin/faults/payment").await?;
    assert_eq!(status, 404, "no fault left to remove");
    Ok(())
}

#[tokio::test]
async fn idempotent_calls_are_retried_and_others_are_not() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("Kona", 5).await?;
    let order = host.order(car, 1).await?;
    wait_for(&host, &format!("/orders/{}", order["id"]), "status", json!("RESERVED")).await?;
    let path = format!("/orders/{}/payment", order["id"]);
    let (status, payment) = host.get(&path).await?;
    assert_eq!(status, 200, "{payment}");
    assert_eq!(payment["status"], "APPROVED");

    host.fault("payment", json!({ "abortPercent": 100 })).await?;
    let (status, body) = host.get(&path).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("payment-unavailable")),
        "{body}"
    );
    let (status, _) = host
        .post("/orders", json!({ "carId": car, "qty": 1, "customer": "x" }))
        .await?;
    assert_eq!(status, 503);
    let retried = |function: &str| {
        host.log()
            .lines()
            .filter(|l| l.contains("retrying an idempotent call") && l.contains(function))
            .count()
    };
    assert_eq!(retried("function=lookup"), 2, "lookup is retried `retries` times");
    assert_eq!(retried("function=approve"), 0, "approve is not idempotent");
    Ok(())
}
