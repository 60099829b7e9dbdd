//! Event-path benchmark against the real host (see BENCHMARKS.md):
//!
//! 1. throughput: the probe component publishes events in its handler
//!    (1,000 per request), the host relays them to the log and delivers
//!    them back to the probe, whose handler commits each with its inbox row;
//!    events/s from the first publish until the last effect is committed;
//! 2. latency: `POST /orders` returns (payment authorized, order placed) ->
//!    payment approves -> rentcar reserves -> the view shows the new
//!    availability; p50/p99 over sequential orders;
//! 3. orders: 32 clients place orders for 10 s; orders/s and p99, and how
//!    long after the last order the view shows them all.
//!
//! Each runs on the embedded log, then on a Kafka broker (tansu, started
//! here), in one run. Run with `cargo xtask bench events`.

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

#[path = "../tests/e2e/broker.rs"]
#[allow(dead_code, reason = "the harness runs hosts on Kafka when asked")]
mod broker;
#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code, reason = "the bench uses part of the test harness")]
mod harness;

use std::time::{Duration, Instant};

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use harness::{Host, probe_config, runtime_toml};
use serde_json::json;

const EVENTS: u64 = 20_000;
const PER_REQUEST: u64 = 1_000;
const ORDERS: usize = 300;
const CLIENTS: usize = 32;
const LOAD: Duration = Duration::from_secs(10);
/// How long the orders phase waits for the view to show every order.
const CATCH_UP: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kafka = broker::Broker::start()?;
    for brokers in [None, Some(kafka.address.as_str())] {
        println!(
            "== {}",
            brokers.map_or("embedded log".to_string(), |b| format!("Kafka (tansu at {b})"))
        );
        throughput(brokers).await?;
        latency(brokers).await?;
        orders(brokers).await?;
    }
    Ok(())
}

/// The host on `config`, its events on the embedded log or on `brokers`.
fn start(config: &Path, dir: &Path, brokers: Option<&str>) -> anyhow::Result<Host> {
    let data = dir.join("data");
    match brokers {
        None => Host::start_with(config, &data),
        Some(brokers) => Host::start_with(&broker::on_broker(config, &data, brokers)?, &data),
    }
}

async fn throughput(brokers: Option<&str>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = probe_config(dir.path(), "")?;
    let host = start(&config, dir.path(), brokers)?;
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

async fn latency(brokers: Option<&str>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(&runtime_toml(), dir.path(), brokers)?;
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
        "latency, order placed -> view updated, {ORDERS} orders: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3
    );
    Ok(())
}

async fn orders(brokers: Option<&str>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(&runtime_toml(), dir.path(), brokers)?;
    const STOCK: u64 = 1_000_000;
    let car = host.car("Load", STOCK as u32).await?;
    let view = format!("/availability/{car}");
    harness::wait_for(&host, &view, "available", json!(STOCK)).await?;
    let client = harness::client();
    let placed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + LOAD;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url, placed) = (client.clone(), format!("{}/orders", host.base), placed.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let sent = Instant::now();
                    let body = json!({ "carId": car, "qty": 1, "customer": "bench" });
                    let response = client.post(&url).json(&body).send().await?;
                    if response.status() == 201 {
                        latencies.push(sent.elapsed());
                        placed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await??);
    }
    let last = Instant::now();
    let placed = placed.load(Ordering::Relaxed);
    latencies.sort();
    let p99 = latencies[((latencies.len() as f64 * 0.99) as usize).min(latencies.len() - 1)];
    println!(
        "orders, {CLIENTS} clients for {} s: {placed} orders, {:.0} orders/s, p99 {:.2} ms",
        LOAD.as_secs(),
        placed as f64 / LOAD.as_secs_f64(),
        p99.as_secs_f64() * 1e3,
    );
    // How long the view takes to show them all, reported every minute
    // and given up after CATCH_UP.
    let mut reported = Instant::now();
    loop {
        let (_, availability) = host.get(&view).await?;
        let shown = STOCK - availability["available"].as_u64().unwrap_or(STOCK);
        if shown == placed {
            println!(
                "  the view showed them all {:.0} ms after the last",
                last.elapsed().as_secs_f64() * 1e3
            );
            break;
        }
        if last.elapsed() > CATCH_UP {
            println!(
                "  the view showed {shown} of {placed} after {} s; given up",
                CATCH_UP.as_secs()
            );
            break;
        }
        if reported.elapsed() > Duration::from_secs(60) {
            println!(
                "  the view shows {shown} of {placed}, {} s after the last",
                last.elapsed().as_secs()
            );
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}
