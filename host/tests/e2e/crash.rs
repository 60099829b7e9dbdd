//! kill -9 of the real host, again and again, under a load of orders and
//! cancels: nothing committed is lost, no effect is duplicated, and after
//! the last restart delivery resumes by itself until the books balance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::json;

use crate::harness::{Host, books_balance, eventually};

/// A tiny deterministic generator, so a failing run can be reasoned about.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_nothing_and_duplicates_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut host = Host::start(dir.path())?;
    let mut cars = Vec::new();
    for (name, stock) in [("Avante", 6), ("Sonata", 4), ("Tucson", 8)] {
        cars.push(host.car(name, stock).await?);
    }
    let base = Arc::new(RwLock::new(host.base.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let placed = Arc::new(Mutex::new(Vec::<u64>::new()));
    let client = crate::harness::client_builder()
        .timeout(Duration::from_secs(5))
        .build()?;

    // tansu takes events one record per produce request (README, "Run it
    // on Kafka"), a few hundred a second: on Kafka the load is paced so
    // that what it leaves behind is delivered in seconds, not minutes.
    let (pause, settle) = if crate::broker::on_kafka() {
        (Duration::from_millis(20), Duration::from_secs(120))
    } else {
        (Duration::ZERO, Duration::from_secs(90))
    };
    let mut load = Vec::new();
    for worker in 0..6u64 {
        let (base, stop, placed, client, cars) =
            (base.clone(), stop.clone(), placed.clone(), client.clone(), cars.clone());
        load.push(tokio::spawn(async move {
            let mut rng = Lcg(worker + 1);
            let mut attempts = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let url = base.read().unwrap().clone();
                attempts += 1;
                let cancel = rng.next(4) == 0;
                let target = placed.lock().unwrap().get(rng.next(1_000) as usize).copied();
                let request = match (cancel, target) {
                    (true, Some(id)) => client.post(format!("{url}/orders/{id}/cancel")),
                    _ => client
                        .post(format!("{url}/orders"))
                        .header("Idempotency-Key", format!("w{worker}-{attempts}"))
                        .json(
                            &json!({ "carId": cars[rng.next(3) as usize], "qty": 1 + rng.next(2), "customer": "load" }),
                        ),
                };
                match request.send().await {
                    Ok(response) if response.status() == 201 => {
                        if let Ok(order) = response.json::<serde_json::Value>().await {
                            placed.lock().unwrap().push(order["id"].as_u64().unwrap_or(0));
                        }
                    }
                    Ok(response) => assert!(
                        response.status().as_u16() < 500 || response.status() == 503,
                        "{response:?}"
                    ),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                tokio::time::sleep(pause).await;
            }
        }));
    }

    for round in 0..6u64 {
        tokio::time::sleep(Duration::from_millis(700 + 150 * round)).await;
        host.kill();
        host = Host::start(dir.path())?;
        *base.write().unwrap() = host.base.clone();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await?;
    }
    let placed = placed.lock().unwrap().len();
    assert!(placed > 20, "the load placed only {placed} orders");

    let balanced = eventually("the books to balance after 6 kills", settle, || books_balance(&host)).await;
    let summary = match balanced {
        Ok(summary) => summary,
        Err(err) => {
            let (orders, payments) = (host.all("/orders").await?, host.all("/payments").await?);
            let open = |items: &[serde_json::Value], settled: &[&str]| {
                items
                    .iter()
                    .filter(|item| !settled.contains(&item["status"].as_str().unwrap_or("")))
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let (subscriptions, dead) = (
                host.admin(reqwest::Method::GET, "/admin/subscriptions").await?.1,
                host.admin(reqwest::Method::GET, "/admin/dead-letters").await?.1,
            );
            anyhow::bail!(
                "{err}: orders not settled {:?}; payments not settled {:?}; subscriptions {subscriptions}; dead letters {dead}",
                open(&orders, &["RESERVED", "REJECTED", "CANCELLED"]),
                open(&payments, &["APPROVED", "REFUNDED", "CANCELLED"])
            );
        }
    };
    eprintln!("after 6 kills: {summary}");
    let orders = host.all("/orders").await?;
    assert!(orders.len() >= placed, "every 201 order survived");
    Ok(())
}
