//! Hot-swap and start-up benchmark against the real host (see BENCHMARKS.md):
//!
//! 1. start-up time with a cold and a warm compilation cache;
//! 2. time from upload to serving a new version, never compiled before
//!    (cold) and compiled before (warm cache);
//! 3. request latency while payment and rentcar are swapped every 200 ms,
//!    against the same load without swaps, in alternating windows.
//!
//! Run with `cargo xtask build && cargo bench -p rentcar-host --bench swap`.

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

#[path = "../tests/e2e/broker.rs"]
#[allow(dead_code, reason = "the harness runs hosts on Kafka when asked")]
mod broker;
#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code, reason = "the bench uses part of the test harness")]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use harness::{Host, TOKEN, variant};
use serde_json::json;

const CLIENTS: usize = 8;
const WINDOW: Duration = Duration::from_secs(4);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let mut host = Host::start(dir.path())?;
    let cold = started.elapsed();
    host.kill();
    let started = Instant::now();
    let host = Host::start(dir.path())?;
    let warm = started.elapsed();
    println!(
        "start-up to ready: cold cache {:.0} ms, warm cache {:.0} ms",
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3
    );

    let client = harness::client();
    let base = host.base.clone();
    let mut cold_deploys = Vec::new();
    let mut warm_deploys = Vec::new();
    for round in 0..3 {
        cold_deploys.push(deploy(&client, &base, "payment", format!("cold-{round}")).await?);
        warm_deploys.push(deploy(&client, &base, "payment", "warm".into()).await?);
    }
    let ms = |d: &[Duration]| {
        d.iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "upload to serving the new payment: never compiled [{}] ms; compiled before (warm cache) [{}] ms",
        ms(&cold_deploys),
        ms(&warm_deploys[1..])
    );

    let car = host.car("Swap", 1_000_000).await?;
    let (mut quiet, mut swapping) = (Vec::new(), Vec::new());
    for round in 0..4 {
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = (round % 2 == 1).then(|| {
            let (stop, client, base) = (stop.clone(), client.clone(), base.clone());
            tokio::spawn(async move {
                let mut swaps = 0;
                while !stop.load(Ordering::Relaxed) {
                    for name in ["payment", "rentcar"] {
                        deploy(&client, &base, name, format!("s{}", swaps % 2)).await?;
                    }
                    swaps += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                anyhow::Ok(swaps)
            })
        });
        let latencies = load(&client, &host.base, car).await?;
        stop.store(true, Ordering::Relaxed);
        match swapper {
            Some(swapper) => {
                let swaps = swapper.await??;
                swapping.push((latencies, swaps));
            }
            None => quiet.push(latencies),
        }
    }
    let summary = |mut all: Vec<Duration>| {
        all.sort();
        let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)].as_secs_f64() * 1e3;
        format!(
            "{} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            all.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        )
    };
    let swaps: usize = swapping.iter().map(|(_, swaps)| swaps * 2).sum();
    println!("without swaps: {}", summary(quiet.into_iter().flatten().collect()));
    println!(
        "while swapping ({swaps} swaps): {}",
        summary(swapping.into_iter().flat_map(|(latencies, _)| latencies).collect())
    );
    Ok(())
}

/// Uploads a variant of a component; returns how long until it serves.
async fn deploy(client: &reqwest::Client, base: &str, name: &str, tag: String) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response = client
        .put(format!("{base}/admin/components/{name}"))
        .bearer_auth(TOKEN)
        .body(variant(name, &tag)?)
        .send()
        .await?;
    anyhow::ensure!(response.status() == 200, "deploy failed: {}", response.text().await?);
    Ok(started.elapsed())
}

/// Closed-loop clients for `WINDOW`: orders and availability reads, every
/// one of which must succeed; returns each request's latency.
async fn load(client: &reqwest::Client, base: &str, car: u64) -> anyhow::Result<Vec<Duration>> {
    let until = Instant::now() + WINDOW;
    let all = join_all((0..CLIENTS).map(|worker| {
        let (client, base) = (client.clone(), base.to_string());
        async move {
            let mut latencies = Vec::new();
            let mut i = worker;
            while Instant::now() < until {
                i += 1;
                let request = if i % 4 == 0 {
                    client
                        .post(format!("{base}/orders"))
                        .json(&json!({ "carId": car, "qty": 1, "customer": "b" }))
                } else {
                    client.get(format!("{base}/availability/{car}"))
                };
                let started = Instant::now();
                let response = request.send().await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "a request failed: {}",
                    response.status()
                );
                response.bytes().await?;
                latencies.push(started.elapsed());
            }
            anyhow::Ok(latencies)
        }
    }))
    .await;
    let mut latencies = Vec::new();
    for result in all {
        latencies.extend(result?);
    }
    Ok(latencies)
}
