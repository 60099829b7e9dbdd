//! Components in other languages than Rust.
//!
//! Loyalty, the context written in Python on a key-value store: points
//! follow reservations and cancels exactly, a customer reads only their own,
//! and the context catches up after a stop, rebuilds after a reset, and is
//! swapped under load without a failed request. (Redelivery after a kill -9
//! is checked by the crash tests: `books_balance` includes loyalty.)
//!
//! hello-js, a component in JavaScript (componentize-js), is loaded, routed
//! to and configured like any other: the host's WIT is usable from a third
//! language.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Host, TOKEN, client_as, eventually, variant, wasm};

/// Waits until `customer` has `points` from `orders` reserved orders.
async fn points(host: &Host, customer: &str, points: i64, orders: i64) -> anyhow::Result<Value> {
    eventually(
        &format!("{customer} to have {points} points"),
        Duration::from_secs(20),
        || async {
            let (status, account) = host.get(&format!("/loyalty/{customer}")).await?;
            let settled = status == 200 && account["points"] == points && account["reservedOrders"] == orders;
            Ok(settled.then_some(account))
        },
    )
    .await
}

/// Places an order as `customer` and waits for it to settle.
async fn order(host: &Host, customer: &str, car: u64, qty: u32) -> anyhow::Result<Value> {
    let client = client_as(customer, &["customer"]);
    let answer = client
        .post(format!("{}/orders", host.base))
        .json(&json!({ "carId": car, "qty": qty }))
        .send()
        .await?;
    anyhow::ensure!(answer.status() == 201, "order answered {}", answer.status());
    let placed: Value = answer.json().await?;
    let id = placed["id"].as_u64().unwrap_or_default();
    eventually("the order to settle", Duration::from_secs(20), || async {
        let (_, order) = host.get(&format!("/orders/{id}")).await?;
        Ok((order["status"] != "PAID").then_some(order))
    })
    .await
}

#[tokio::test]
async fn points_follow_reservations_and_cancels_and_each_customer_reads_their_own() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("Avante", 5).await?;

    let kim = order(&host, "kim", car, 2).await?;
    assert_eq!(kim["status"], "RESERVED");
    points(&host, "kim", 200, 1).await?;
    assert_eq!(order(&host, "lee", car, 3).await?["status"], "RESERVED");
    points(&host, "lee", 300, 1).await?;
    // Over the stock: rejected, and no points.
    assert_eq!(order(&host, "lee", car, 1).await?["status"], "REJECTED");

    // A cancel takes back what the order earned.
    let cancel = client_as("kim", &["customer"])
        .post(format!("{}/orders/{}/cancel", host.base, kim["id"]))
        .send()
        .await?;
    assert_eq!(cancel.status(), 200);
    points(&host, "kim", 0, 0).await?;

    // An admin sees the top customers; a customer only themselves.
    let (status, top) = host.get("/loyalty?limit=5").await?;
    assert_eq!(status, 200, "{top}");
    assert_eq!(top["items"][0]["customer"], "lee", "{top}");
    assert_eq!(top["items"][1]["customer"], "kim", "{top}");
    let lee = client_as("lee", &["customer"]);
    let own: Value = lee.get(format!("{}/loyalty", host.base)).send().await?.json().await?;
    assert_eq!(
        own,
        json!({ "items": [{ "customer": "lee", "points": 300, "reservedOrders": 1 }] })
    );
    let other = lee.get(format!("{}/loyalty/kim", host.base)).send().await?;
    assert_eq!(other.status(), 404, "someone else's points");
    let bad = host.get("/loyalty?limit=0").await?;
    assert_eq!(bad.0, 400, "{}", bad.1);
    let anonymous = reqwest::get(format!("{}/loyalty/kim", host.base)).await?;
    assert_eq!(anonymous.status(), 401);
    let write = host.post("/loyalty/kim", json!({ "points": 1_000_000 })).await?;
    assert_eq!(write.0, 405, "points come only from events: {}", write.1);
    Ok(())
}

#[tokio::test]
async fn loyalty_stopped_during_orders_catches_up_and_a_reset_rebuilds_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("Sonata", 100).await?;

    let (status, _) = host.admin(Method::POST, "/admin/components/loyalty/stop").await?;
    assert_eq!(status, 200);
    for qty in [1, 2, 3] {
        assert_eq!(order(&host, "kim", car, qty).await?["status"], "RESERVED");
    }
    let (status, _) = host.get("/loyalty/kim").await?;
    assert_eq!(status, 503, "loyalty is stopped");
    let (status, _) = host.admin(Method::POST, "/admin/components/loyalty/start").await?;
    assert_eq!(status, 200);
    points(&host, "kim", 600, 3).await?;

    // Rebuilt from the log: the same points, not twice as many.
    let (status, body) = host.admin(Method::POST, "/admin/subscriptions/loyalty/reset").await?;
    assert_eq!(status, 202, "{body}");
    points(&host, "kim", 600, 3).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    points(&host, "kim", 600, 3).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loyalty_is_swapped_to_a_new_python_version_under_load_without_a_failed_request() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("Grandeur", 1000).await?;
    order(&host, "kim", car, 1).await?;
    points(&host, "kim", 100, 1).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (stop, base) = (stop.clone(), host.base.clone());
        load.push(tokio::spawn(async move {
            let client = client_as("kim", &["customer"]);
            let (mut done, mut failures) = (0u64, Vec::new());
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Reads of loyalty, and orders whose events loyalty applies.
                let request = if i % 4 == 0 {
                    client
                        .post(format!("{base}/orders"))
                        .json(&json!({ "carId": car, "qty": 1 }))
                } else {
                    client.get(format!("{base}/loyalty/kim"))
                };
                match request.send().await {
                    Ok(answer) if answer.status().is_success() => {}
                    Ok(answer) => failures.push(format!(
                        "{} {}",
                        answer.status(),
                        answer.text().await.unwrap_or_default()
                    )),
                    Err(err) => failures.push(err.to_string()),
                }
                done += 1;
            }
            (done, failures)
        }));
    }

    let before = version(&host).await?;
    let started = Instant::now();
    let deployed = crate::harness::client()
        .put(format!("{}/admin/components/loyalty", host.base))
        .bearer_auth(TOKEN)
        .body(variant("loyalty", "v2")?)
        .send()
        .await?;
    let status = deployed.status();
    let body: Value = deployed.json().await?;
    assert_eq!(status, 200, "{body}");
    let swap = started.elapsed();
    // Traffic on the new version too, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut done, mut failures) = (0, Vec::new());
    for worker in load {
        let (count, failed) = worker.await?;
        done += count;
        failures.extend(failed);
    }
    assert!(
        failures.is_empty(),
        "{} of {done} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(done > 0);
    assert_ne!(version(&host).await?, before, "loyalty runs its new version");
    eprintln!("loyalty swapped in {swap:?} under {done} requests, none failed");

    // The orders placed meanwhile all count, once.
    let orders = host.all("/orders?limit=1000").await?;
    eventually("every reserved order counted", Duration::from_secs(30), || async {
        let orders = host.all("/orders?limit=1000").await?;
        let reserved: i64 = orders
            .iter()
            .filter(|o| o["status"] == "RESERVED")
            .map(|o| o["qty"].as_i64().unwrap())
            .sum();
        let settled = orders.iter().all(|o| o["status"] != "PAID");
        let (_, account) = host.get("/loyalty/kim").await?;
        Ok((settled && account["points"] == 100 * reserved).then_some(()))
    })
    .await?;
    assert!(orders.len() > 1);
    Ok(())
}

/// What loyalty may hold at once, from runtime.toml (`memory_budget_mib`).
const LOYALTY_BUDGET_MIB: u64 = 320;

/// Python's instances are large (13 MiB of linear memory each, against a
/// few hundred KiB for Rust), so loyalty has fewer instances and a budget
/// that fits them: a burst of four times `max_instances` concurrent reads
/// waits its turn (no 503), and raises the host's physical memory (PSS) by
/// no more than that budget, during the burst and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_on_python_raises_the_hosts_memory_by_at_most_its_budget() -> anyhow::Result<()> {
    let toml = std::fs::read_to_string(crate::harness::runtime_toml())?;
    assert!(
        toml.contains(&format!("memory_budget_mib = {LOYALTY_BUDGET_MIB}")),
        "runtime.toml gives loyalty a budget of {LOYALTY_BUDGET_MIB} MiB"
    );
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let (status, _) = host.get("/loyalty/kim").await?;
    assert_eq!(status, 200);
    let idle = host.pss_kib().context("PSS of the host")?;

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let (client, url, stop) = (
                client_as("kim", &["customer"]),
                format!("{}/loyalty/kim", host.base),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let answer = client.get(&url).send().await?;
                    answers.push(answer.status().as_u16());
                }
                anyhow::Ok(answers)
            })
        })
        .collect();
    let mut peak = idle;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        peak = peak.max(host.pss_kib().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut served, mut refused) = (0, 0);
    for worker in workers {
        for status in worker.await?? {
            assert!(status == 200 || status == 503, "answered {status}");
            served += usize::from(status == 200);
            refused += usize::from(status == 503);
        }
    }
    let after = host.pss_kib().context("PSS of the host")?;
    let bound = idle + LOYALTY_BUDGET_MIB * 1024;
    eprintln!(
        "PSS: {} MiB idle, {} MiB at the peak, {} MiB after; {served} reads served, {refused} refused",
        idle / 1024,
        peak / 1024,
        after / 1024
    );
    assert_eq!(refused, 0, "{refused} reads were refused, {served} served");
    assert!(served > 64, "only {served} reads were served");
    assert!(
        peak <= bound,
        "PSS rose from {idle} to {peak} KiB, past the {bound} KiB bound"
    );
    assert!(after <= bound, "PSS stayed at {after} KiB, past the {bound} KiB bound");
    Ok(())
}

async fn version(host: &Host) -> anyhow::Result<String> {
    let (_, components) = host.admin(Method::GET, "/admin/components").await?;
    let loyalty = components
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == "loyalty"))
        .ok_or_else(|| anyhow::anyhow!("no loyalty in {components}"))?;
    Ok(loyalty["version"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_javascript_component_is_loaded_routed_and_configured_like_any_other() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("hello.toml");
    std::fs::write(
        &config,
        format!(
            "[components.hello]\npath = {:?}\nroutes = [\"/hello\"]\nconfig = {{ greeting = \"annyeong\" }}\n",
            wasm("hello_js")
        ),
    )?;
    let host = Host::start_with(&config, &dir.path().join("data"))?;
    let (status, body) = host.get("/hello/world").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({ "greeting": "annyeong", "from": "JavaScript", "path": "/hello/world" })
    );
    // Behind the same gateway as every component.
    let anonymous = reqwest::get(format!("{}/hello", host.base)).await?;
    assert_eq!(anonymous.status(), 401);
    Ok(())
}
