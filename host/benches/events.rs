//! Event-path benchmark against the real host (see BENCHMARKS.md):
//!
//! 1. throughput: the probe component publishes events in its handler
//!    (1,000 per request), the host relays them to the log and delivers
//!    them back to the probe, whose handler commits each with its inbox row;
//!    events/s from the first publish until the last effect is committed;
//! 2. latency: `POST /orders` returns (payment approved) -> rentcar reserves
//!    -> the view shows the new availability; p50/p99 over sequential orders.
//!
//! Run with `cargo xtask build && cargo bench -p rentcar-host --bench events`.

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

#[path = "../tests/e2e/broker.rs"]
#[allow(dead_code, reason = "the harness runs hosts on Kafka when asked")]
mod broker;
#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code, reason = "the bench uses part of the test harness")]
mod harness;

use std::time::{Duration, Instant};

use harness::{Host, probe_config};
use serde_json::json;

const EVENTS: u64 = 20_000;
const PER_REQUEST: u64 = 1_000;
const ORDERS: usize = 300;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    throughput().await?;
    latency().await
}

async fn throughput() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = probe_config(dir.path(), "")?;
    let host = Host::start_with(&config, &dir.path().join("data"))?;
    let started = Instant::now();
    for _ in 0..EVENTS / PER_REQUEST {
        let (status, _) = host
            .post("/probe/publish", json!({ "keys": 64, "count": PER_REQUEST }))
            .await?;
        anyhow::ensure!(status == 202);
    }
    let published = started.elapsed();
    loop {
        let (_, subscriptions) = host.admin(reqwest::Method::GET, "/admin/subscriptions").await?;
        if subscriptions[0]["delivered"].as_u64() >= Some(EVENTS) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "throughput: {EVENTS} events published in {:.2} s and applied by the consumer after {:.2} s: {:.0} events/s end to end",
        published.as_secs_f64(),
        elapsed.as_secs_f64(),
        EVENTS as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

async fn latency() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("Bench", 1_000_000).await?;
    let view = format!("/availability/{car}");
    harness::wait_for(&host, &view, "available", json!(1_000_000)).await?;
    let mut latencies = Vec::with_capacity(ORDERS);
    for i in 1..=ORDERS {
        host.order(car, 1).await?;
        let placed = Instant::now();
        let expected = json!(1_000_000 - i);
        loop {
            let (_, availability) = host.get(&view).await?;
            if availability["available"] == expected {
                break;
            }
        }
        latencies.push(placed.elapsed());
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "latency, payment approved -> view updated, {ORDERS} orders: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3
    );
    Ok(())
}
