//! `cargo xtask bench`: the host under a real load generator (oha), side by
//! side with a native baseline and, when installed, `wasmtime serve` (see
//! BENCHMARKS.md). Loopback only, bounded in time; prints a Markdown table.
//!
//! Scenarios: 1. `GET /ping`, pure dispatch to a trivial component;
//! 2. `GET /availability`, a read with SQLite; 3. `POST /orders`, order ->
//! sync payment -> two transactions and an outbox event; 4. event latency
//! from `POST /orders` returning to the view showing the reservation;
//! 5. mixed: 70% reads, 25% orders, 5% cancels. Scenario 3 also runs
//! against the native baseline doing the events' work (`--events`).

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

#[path = "../tests/e2e/broker.rs"]
#[allow(dead_code, reason = "the harness runs hosts on Kafka when asked")]
mod broker;
#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code, reason = "the bench uses part of the test harness")]
mod harness;
#[path = "common/oha.rs"]
mod oha;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use harness::{Host, root, runtime_toml, wasm};
use oha::{CONNECTIONS, Run, compare, oha};
use serde_json::{Value, json};

/// Scenario 3's target as a service level: orders started at this fixed
/// rate (open loop), with latency corrected for coordinated omission, so
/// a server falling behind shows in p99 instead of slowing the load.
const ORDER_RATE: u32 = 5_000;
/// Connections oha may use to keep that rate.
const RATED_CONNECTIONS: u32 = 64;

/// The table rows of a host-vs-native comparison (`runs` from [`compare`]),
/// and their ratio.
fn host_vs_native(rows: &mut Vec<String>, ratios: &mut Vec<String>, scenario: &str, runs: &[Run]) {
    rows.push(runs[0].row(scenario, "rentcar-host"));
    rows.push(runs[1].row(scenario, "native axum"));
    ratios.push(format!("{scenario}: host/native {:.2}", runs[0].rps / runs[1].rps));
}

/// A process that prints `listening on http://ADDR` when ready.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(command: &mut Command) -> anyhow::Result<Server> {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().context("piped")?;
        let mut lines = BufReader::new(stderr).lines();
        let started = Instant::now();
        let base = loop {
            let line = lines.next().context("server exited before ready")??;
            // `wasmtime serve` says "Serving HTTP on http://ADDR/".
            if let Some(at) = line.find("http://") {
                break line[at..].trim_end_matches('/').to_string();
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("server not ready after 60 s");
            }
        };
        // What the server says after start-up goes to the bench's stderr.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
        Ok(Server { child, base })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's runtime.toml with absolute paths, plus the ping
/// component at `/ping`; without any subscription unless `subscribers`.
fn bench_config(dir: &Path, subscribers: bool) -> anyhow::Result<std::path::PathBuf> {
    let mut config: toml::Table = std::fs::read_to_string(runtime_toml())?.parse()?;
    let components = config
        .get_mut("components")
        .and_then(toml::Value::as_table_mut)
        .context("runtime.toml has components")?;
    for (_, component) in components.iter_mut() {
        let Some(component) = component.as_table_mut() else {
            continue;
        };
        if let Some(path) = component.get("path").and_then(toml::Value::as_str) {
            let absolute = root().join(path).display().to_string();
            component.insert("path".into(), absolute.into());
        }
        if !subscribers {
            component.remove("subscribe");
        }
    }
    let mut ping = toml::Table::new();
    ping.insert("path".into(), wasm("ping").display().to_string().into());
    ping.insert("routes".into(), toml::Value::Array(vec!["/ping".into()]));
    components.insert("ping".into(), ping.into());
    let name = if subscribers {
        "bench.toml"
    } else {
        "bench-no-subscribers.toml"
    };
    let path = dir.join(name);
    std::fs::write(&path, toml::to_string(&config)?)?;
    Ok(path)
}

fn kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start_with(&bench_config(dir.path(), true)?, &dir.path().join("host"))?;
    let native = Server::start(
        Command::new(root().join("target/release/native-baseline"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("native")),
    )?;
    // The same, also doing in-process what the host's relays and consumers
    // do with each order's events: the ceiling of the host with its
    // subscribers.
    let native_events = Server::start(
        Command::new(root().join("target/release/native-baseline"))
            .args(["--events", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("native-events")),
    )?;
    let wasmtime = Command::new("wasmtime")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let serve = if wasmtime {
        Some(Server::start(
            Command::new("wasmtime")
                .args(["serve", "-Scli", "--addr", "127.0.0.1:0"])
                .arg(wasm("ping")),
        )?)
    } else {
        None
    };
    let client = harness::client();
    let mut cars = Vec::new();
    for base in [&host.base, &native.base, &native_events.base] {
        for i in 0..10 {
            let car = json!({ "name": format!("Model {i}"), "stock": 1_000_000 });
            let response: Value = client
                .post(format!("{base}/cars"))
                .json(&car)
                .send()
                .await?
                .json()
                .await?;
            cars.push(response["id"].as_u64().context("car id")?);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The host's subscriptions and the native baseline's events all
    // delivered.
    let caught_up = || async {
        let (_, subscriptions) = host.admin(reqwest::Method::GET, "/admin/subscriptions").await?;
        let host_done = subscriptions
            .as_array()
            .is_some_and(|all| all.iter().all(|s| s["lag"] == 0));
        let native: Value = client
            .get(format!("{}/lag", native_events.base))
            .send()
            .await?
            .json()
            .await?;
        Ok((host_done && native["lag"] == 0).then_some(()))
    };
    let settle = async || harness::eventually("the events to be delivered", Duration::from_secs(120), caught_up).await;

    let mut rows = vec![
        "| scenario | target | req/s | p50 ms | p99 ms | p99.9 ms | 2xx |".to_string(),
        "|---|---|---|---|---|---|---|".to_string(),
    ];
    let mut ratios = Vec::new();

    // 1. Pure dispatch.
    let mut pings = vec![
        (format!("{}/ping", host.base), Vec::new()),
        (format!("{}/ping", native.base), Vec::new()),
    ];
    if let Some(serve) = &serve {
        pings.push((format!("{}/", serve.base), Vec::new()));
    }
    let runs = compare(&pings, CONNECTIONS, &settle).await?;
    host_vs_native(&mut rows, &mut ratios, "1 GET /ping", &runs);
    if let Some(serve_ping) = runs.get(2) {
        rows.push(serve_ping.row("1 GET /ping", "wasmtime serve"));
        ratios.push(format!(
            "1 GET /ping: host/wasmtime-serve {:.2}",
            runs[0].rps / serve_ping.rps
        ));
    } else {
        ratios.push("1 GET /ping: host/wasmtime-serve not measured (wasmtime not installed)".into());
    }
    let metrics = client
        .get(format!("{}/metrics", host.base))
        .send()
        .await?
        .text()
        .await?;
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains("component=\"ping\""))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let instantiation_us =
        metric("rentcar_instantiation_seconds_sum") / metric("rentcar_instantiation_seconds_count") * 1e6;

    // 2. Read path.
    let runs = compare(
        &[
            (format!("{}/availability", host.base), Vec::new()),
            (format!("{}/availability", native.base), Vec::new()),
        ],
        CONNECTIONS,
        &settle,
    )
    .await?;
    host_vs_native(&mut rows, &mut ratios, "2 GET /availability", &runs);

    // 3. Orders.
    let order = |car: u64| json!({ "carId": car, "qty": 1, "customer": "bench" }).to_string();
    let post = |body: &str| {
        ["-m", "POST", "-H", "content-type: application/json", "-d"]
            .map(str::to_string)
            .into_iter()
            .chain([body.to_string()])
            .collect::<Vec<_>>()
    };
    let orders = [
        (format!("{}/orders", host.base), post(&order(cars[0]))),
        (format!("{}/orders", native.base), post(&order(cars[10]))),
        (format!("{}/orders", native_events.base), post(&order(cars[20]))),
    ];
    let runs = compare(&orders, CONNECTIONS, &settle).await?;
    host_vs_native(&mut rows, &mut ratios, "3 POST /orders", &runs);
    rows.push(runs[2].row("3 POST /orders", "native axum + the events in-process"));
    ratios.push(format!(
        "3 POST /orders: host/native-with-the-events {:.2}",
        runs[0].rps / runs[2].rps
    ));
    // The request path alone, on a host whose components subscribe to
    // nothing: what the native baseline does (it processes no events).
    {
        let bare = Host::start_with(&bench_config(dir.path(), false)?, &dir.path().join("bare"))?;
        let car = bare.car("Bare", 1_000_000).await?;
        let runs = compare(
            &[(format!("{}/orders", bare.base), post(&order(car))), orders[1].clone()],
            CONNECTIONS,
            &settle,
        )
        .await?;
        let scenario = "3 POST /orders, no subscribers (request path only)";
        host_vs_native(&mut rows, &mut ratios, scenario, &runs);
    }
    // The target itself: 5,000 orders/s, and the latency they get, from a
    // steady state (the events of the runs above delivered first).
    let rated: Vec<(String, Vec<String>)> = orders[..2]
        .iter()
        .map(|(url, args)| {
            let rate = ["-q".to_string(), ORDER_RATE.to_string(), "--latency-correction".into()];
            (url.clone(), rate.into_iter().chain(args.iter().cloned()).collect())
        })
        .collect();
    let runs = compare(&rated, RATED_CONNECTIONS, &settle).await?;
    let scenario = format!("3 POST /orders at a fixed {ORDER_RATE}/s");
    rows.push(runs[0].row(&scenario, "rentcar-host"));
    rows.push(runs[1].row(&scenario, "native axum"));

    // 4. Event latency: POST /orders returns -> the view shows it.
    let car = cars[1];
    let view = format!("/availability/{car}");
    let mut expected = host.get(&view).await?.1["available"].as_i64().context("available")?;
    let mut latencies = Vec::new();
    for _ in 0..300 {
        host.order(car, 1).await?;
        let placed = Instant::now();
        expected -= 1;
        while host.get(&view).await?.1["available"] != json!(expected) {}
        latencies.push(placed.elapsed());
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e3;

    // 5. Mixed, open loop at a fixed total rate: 70% reads, 25% orders, 5% cancels.
    let rate = 2_000;
    let reads = format!("{}/availability", host.base);
    let orders = format!("{}/orders", host.base);
    let cancels = format!("{}/orders/[1-9][0-9]{{0,3}}/cancel", host.base);
    let body = post(&order(cars[2]));
    let (read_q, order_q, cancel_q) = (
        (rate * 70 / 100).to_string(),
        (rate * 25 / 100).to_string(),
        (rate * 5 / 100).to_string(),
    );
    let mixed_reads = std::thread::spawn(move || oha(&reads, &["-q", &read_q]));
    let mixed_orders = std::thread::spawn(move || {
        let mut args = vec!["-q", &order_q];
        args.extend(body.iter().map(String::as_str));
        oha(&orders, &args)
    });
    let mixed_cancels = std::thread::spawn(move || oha(&cancels, &["-q", &cancel_q, "-m", "POST", "--rand-regex-url"]));
    let (reads, orders, cancels) = (
        mixed_reads.join().expect("reads thread")?,
        mixed_orders.join().expect("orders thread")?,
        mixed_cancels.join().expect("cancels thread")?,
    );
    rows.push(reads.row("5 mixed: reads (70%)", "rentcar-host"));
    rows.push(orders.row("5 mixed: orders (25%)", "rentcar-host"));
    // A cancel of a random id answers 200, 404 or 409: all handled.
    rows.push(cancels.row("5 mixed: cancels (5%, random ids)", "rentcar-host"));
    let pid = host.pid();
    let (rss, peak) = (kib(pid, "VmRSS:"), kib(pid, "VmHWM:"));

    for row in &rows {
        println!("{row}");
    }
    println!();
    println!(
        "event latency, POST /orders returned -> view updated, 300 sequential orders: p50 {:.2} ms, p99 {:.2} ms",
        at(0.5),
        at(0.99)
    );
    for ratio in ratios {
        println!("{ratio}");
    }
    println!("instantiation per request (ping, mean of scenario 1): {instantiation_us:.1} us");
    println!(
        "host RSS at the end of the mixed run: {} MiB (peak {} MiB)",
        rss / 1024,
        peak / 1024
    );
    Ok(())
}
