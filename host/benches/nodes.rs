//! Nodes benchmark against the real host (see BENCHMARKS.md): `POST
//! /orders` through node a, with payment on node a (a local call) and on
//! node b (a call across nodes, over HTTP on loopback), in one run, both
//! on a Kafka broker (tansu, started here):
//!
//! 1. one client, 500 orders one after another: p50 and p99; the
//!    difference of the p50s is the cost of one remote call (an order
//!    makes one, `approve`);
//! 2. 32 clients for 10 s: orders/s, p50, p99.
//!
//! Run with `cargo xtask bench nodes`.

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

#[path = "../tests/e2e/broker.rs"]
#[allow(dead_code, reason = "the harness runs hosts on Kafka when asked")]
mod broker;
#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code, reason = "the bench uses part of the test harness")]
mod harness;

use std::time::{Duration, Instant};

use harness::{Host, two_nodes_config};
use serde_json::json;

const SEQUENTIAL: usize = 500;
const CLIENTS: usize = 32;
const LOAD: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kafka = broker::Broker::start()?;
    let placements: [(&str, &[&str], &[&str]); 2] = [
        ("payment local", &["order", "payment", "loyalty"], &["rentcar", "view"]),
        ("payment remote", &["order", "loyalty"], &["payment", "rentcar", "view"]),
    ];
    for (name, on_a, on_b) in placements {
        let dir = tempfile::tempdir()?;
        let config = two_nodes_config(dir.path(), on_a, on_b, &kafka.address, "")?;
        let _b = Host::start_with_args(&config, &dir.path().join("b"), &["--node", "b"])?;
        let a = Host::start_with_args(&config, &dir.path().join("a"), &["--node", "a"])?;
        println!("== {name}: node a runs {on_a:?}, node b {on_b:?}");
        let car = a.car("Bench", 1_000_000).await?;
        sequential(&a, car).await?;
        load(&a, car).await?;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// One order after another.
async fn sequential(host: &Host, car: u64) -> anyhow::Result<()> {
    let client = harness::client();
    let url = format!("{}/orders", host.base);
    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let sent = Instant::now();
        let response = client
            .post(&url)
            .json(&json!({ "carId": car, "qty": 1 }))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 201, "an order answered {}", response.status());
        response.bytes().await?;
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    println!(
        "one client, {SEQUENTIAL} orders: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    Ok(())
}

/// Closed-loop clients for `LOAD`.
async fn load(host: &Host, car: u64) -> anyhow::Result<()> {
    let client = harness::client();
    let until = Instant::now() + LOAD;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{}/orders", host.base));
            tokio::spawn(async move {
                let (mut latencies, mut failed) = (Vec::new(), 0u64);
                while Instant::now() < until {
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .json(&json!({ "carId": car, "qty": 1 }))
                        .send()
                        .await?;
                    let created = response.status() == 201;
                    response.bytes().await?;
                    if created {
                        latencies.push(sent.elapsed());
                    } else {
                        failed += 1;
                    }
                }
                anyhow::Ok((latencies, failed))
            })
        })
        .collect();
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for client in clients {
        let (some, more_failed) = client.await??;
        latencies.extend(some);
        failed += more_failed;
    }
    latencies.sort();
    println!(
        "{CLIENTS} clients for {} s: {} orders, {:.0} orders/s, p50 {:.2} ms, p99 {:.2} ms, {failed} not created",
        LOAD.as_secs(),
        latencies.len(),
        latencies.len() as f64 / LOAD.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    Ok(())
}
