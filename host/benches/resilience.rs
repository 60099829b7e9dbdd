//! Resilience benchmark against the real host (see BENCHMARKS.md):
//!
//! 1. isolation: throughput of a well-behaved component (`GET /probe/seen`)
//!    alone, then while a hostile component is hammered with infinite loops
//!    and unbounded allocations, then alone again; reports the ratio;
//! 2. siege: 800 ms injected into payment, 24 clients ordering for 10 s:
//!    success ratio, latencies, host memory; then the fault is removed and
//!    the same load runs again.
//!
//! Run with `cargo xtask build && cargo bench -p rentcar-host --bench resilience`.

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

#[path = "../tests/e2e/broker.rs"]
#[allow(dead_code, reason = "the harness runs hosts on Kafka when asked")]
mod broker;
#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code, reason = "the bench uses part of the test harness")]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use harness::{Host, TOKEN, wasm};
use serde_json::json;

const GOOD_CLIENTS: usize = 8;
const ATTACKERS: usize = 4;
const WINDOW: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    isolation().await?;
    siege().await
}

/// Requests/s of `GET url` from closed-loop clients during `WINDOW`.
async fn throughput(client: &reqwest::Client, url: &str) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + WINDOW;
    join_all((0..GOOD_CLIENTS).map(|_| {
        let (client, done) = (client.clone(), done.clone());
        async move {
            while Instant::now() < until {
                let response = client.get(url).send().await?;
                anyhow::ensure!(response.status() == 200, "the well-behaved component failed");
                response.bytes().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }
    }))
    .await
    .into_iter()
    .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(done.load(Ordering::Relaxed) as f64 / WINDOW.as_secs_f64())
}

async fn isolation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("isolation.toml");
    std::fs::write(
        &config,
        format!(
            "[components.hostile]\npath = {:?}\nroutes = [\"/hostile\"]\n\
             [components.hostile.limits]\nmemory_mib = 16\ntimeout_ms = 500\ncpu_percent = 10\nmax_instances = 2\n\n\
             [components.probe]\npath = {:?}\nroutes = [\"/probe\"]\nsubscribe = [\"probe\"]\n",
            wasm("hostile"),
            wasm("probe")
        ),
    )?;
    let host = Host::start_with(&config, &dir.path().join("data"))?;
    let client = harness::client();
    let good = format!("{}/probe/seen", host.base);
    throughput(&client, &good).await?; // warm-up

    // Alternate quiet and attacked windows, so drift affects both alike.
    let (mut alone, mut attacked, mut attack_requests) = (Vec::new(), Vec::new(), 0);
    for round in 0..5 {
        if round % 2 == 0 {
            alone.push(throughput(&client, &good).await?);
            continue;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let attacks = Arc::new(AtomicU64::new(0));
        let attackers: Vec<_> = (0..ATTACKERS)
            .map(|i| {
                let (client, stop, attacks) = (client.clone(), stop.clone(), attacks.clone());
                let url = format!("{}/hostile/{}", host.base, ["loop", "alloc"][i % 2]);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(response) = client.get(&url).send().await {
                            assert!(response.status().is_server_error());
                            attacks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        attacked.push(throughput(&client, &good).await?);
        stop.store(true, Ordering::Relaxed);
        for attacker in attackers {
            attacker.await?;
        }
        attack_requests += attacks.load(Ordering::Relaxed);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "isolation: well-behaved GET /probe/seen, {GOOD_CLIENTS} clients, {} s windows: alone {:.0} req/s ({:?}), \
         under attack {:.0} req/s ({:?}; {attack_requests} attack requests by {ATTACKERS} attackers, all 5xx); \
         under attack / alone = {:.2}",
        WINDOW.as_secs(),
        mean(&alone),
        alone.iter().map(|v| *v as u64).collect::<Vec<_>>(),
        mean(&attacked),
        attacked.iter().map(|v| *v as u64).collect::<Vec<_>>(),
        mean(&attacked) / mean(&alone)
    );
    Ok(())
}

struct Outcome {
    status: u16,
    took: Duration,
}

async fn order_load(host: &Host, car: u64, clients: usize, window: Duration) -> anyhow::Result<Vec<Outcome>> {
    let client = harness::client();
    let until = Instant::now() + window;
    let all = join_all((0..clients).map(|_| {
        let (client, url) = (client.clone(), format!("{}/orders", host.base));
        async move {
            let mut outcomes = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                let response = client
                    .post(&url)
                    .json(&json!({ "carId": car, "qty": 1, "customer": "siege" }))
                    .send()
                    .await?;
                let status = response.status().as_u16();
                response.bytes().await?;
                outcomes.push(Outcome {
                    status,
                    took: started.elapsed(),
                });
            }
            anyhow::Ok(outcomes)
        }
    }))
    .await;
    let mut outcomes = Vec::new();
    for result in all {
        outcomes.extend(result?);
    }
    Ok(outcomes)
}

fn report(label: &str, outcomes: &[Outcome], window: Duration) {
    let percentile = |status: u16, q: f64| {
        let mut took: Vec<Duration> = outcomes.iter().filter(|o| o.status == status).map(|o| o.took).collect();
        took.sort();
        took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
            .map_or("-".to_string(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
    };
    let created = outcomes.iter().filter(|o| o.status == 201).count();
    let refused = outcomes.iter().filter(|o| o.status == 503).count();
    println!(
        "{label}: {} requests in {:.0} s ({:.0}/s), 201: {created} ({:.1}%), 503: {refused}, other: {}; \
         201 p50 {} p99 {}; 503 p50 {} p99 {}",
        outcomes.len(),
        window.as_secs_f64(),
        outcomes.len() as f64 / window.as_secs_f64(),
        100.0 * created as f64 / outcomes.len().max(1) as f64,
        outcomes.len() - created - refused,
        percentile(201, 0.5),
        percentile(201, 0.99),
        percentile(503, 0.5),
        percentile(503, 0.99),
    );
}

async fn siege() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("Siege", 1_000_000).await?;
    let client = harness::client();
    let rss_before = host.rss_kib().unwrap_or(0);
    client
        .put(format!("{}/admin/faults/payment", host.base))
        .bearer_auth(TOKEN)
        .json(&json!({ "delayMs": 800, "jitterMs": 220 }))
        .send()
        .await?
        .error_for_status()?;
    let window = Duration::from_secs(10);
    let faulty = order_load(&host, car, 24, window).await?;
    let rss_fault = host.rss_kib().unwrap_or(0);
    report("siege, payment delayed 800-1020 ms, 24 clients", &faulty, window);

    client
        .delete(format!("{}/admin/faults/payment", host.base))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    tokio::time::sleep(Duration::from_secs(4)).await; // the circuit's cool-down
    let healthy = order_load(&host, car, 24, window).await?;
    report("after the fault is removed, 24 clients", &healthy, window);
    println!(
        "host RSS: {} MiB before, {} MiB at the end of the siege, {} MiB after the healthy run",
        rss_before / 1024,
        rss_fault / 1024,
        host.rss_kib().unwrap_or(0) / 1024
    );
    Ok(())
}
