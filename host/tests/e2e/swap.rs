//! Zero-downtime hot swap: new versions of payment and rentcar replace the
//! running ones again and again under steady load, and not one request
//! fails; broken versions are refused while traffic continues.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Host, TOKEN, books_balance, eventually, variant, wasm};

async fn deploy(host: &Host, name: &str, wasm: Vec<u8>) -> anyhow::Result<(u16, Value)> {
    let request = crate::harness::client()
        .put(format!("{}/admin/components/{name}", host.base))
        .bearer_auth(TOKEN)
        .body(wasm);
    host.send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swapping_under_load_fails_no_request() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let mut cars = Vec::new();
    for name in ["Avante", "Sonata", "Grandeur"] {
        cars.push(host.car(name, 1_000_000).await?);
    }
    let first = host.order(cars[0], 1).await?;
    // The view knows every car before the load reads it.
    for &car in &cars {
        eventually("the view to show the car", Duration::from_secs(20), || async {
            let (status, _) = host.get(&format!("/availability/{car}")).await?;
            Ok((status == 200).then_some(()))
        })
        .await?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = crate::harness::client();
    let mut load = Vec::new();
    for worker in 0..12u64 {
        let (stop, done, failed, client, cars) =
            (stop.clone(), done.clone(), failed.clone(), client.clone(), cars.clone());
        let (base, first_id) = (host.base.clone(), first["id"].clone());
        load.push(tokio::spawn(async move {
            let mut i = worker;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let car = cars[(i % 3) as usize];
                let request = match i % 8 {
                    0 | 1 => client
                        .post(format!("{base}/orders"))
                        .json(&json!({ "carId": car, "qty": 1, "customer": "swap" })),
                    2 | 3 => client.get(format!("{base}/availability")),
                    4 => client.get(format!("{base}/availability/{car}")),
                    5 => client.get(format!("{base}/cars/{car}")),
                    6 => client.get(format!("{base}/orders/{first_id}")),
                    _ => client.get(format!("{base}/payments?orderId={first_id}")),
                };
                match request.send().await {
                    Ok(response) if response.status().is_success() => {}
                    Ok(response) => failures.push(format!(
                        "{} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    )),
                    Err(err) => failures.push(err.to_string()),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failed.fetch_add(failures.len() as u64, Ordering::Relaxed);
            failures
        }));
    }

    let started = Instant::now();
    let mut versions = std::collections::HashSet::new();
    for round in 0..12 {
        for name in ["payment", "rentcar"] {
            let (status, body) = deploy(&host, name, variant(name, &format!("v{}", round % 2))?).await?;
            assert_eq!(status, 200, "deploy {name} round {round}: {body}");
            versions.insert(body["version"].as_str().unwrap().to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Broken versions are refused while the traffic goes on.
    let (status, body) = deploy(&host, "payment", std::fs::read(wasm("broken_payment"))?).await?;
    assert_eq!(status, 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("init failed"), "{body}");
    let (status, body) = deploy(&host, "payment", std::fs::read(wasm("probe"))?).await?;
    assert_eq!(status, 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("does not export"), "{body}");
    let (status, body) = deploy(&host, "rentcar", b"not wasm at all".to_vec()).await?;
    assert_eq!(status, 422, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for worker in load {
        failures.extend(worker.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = done.load(Ordering::Relaxed);
    eprintln!(
        "{total} requests in {elapsed:.1} s ({:.0}/s) across 24 swaps and 3 refused deploys",
        total as f64 / elapsed
    );
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert_eq!(versions.len(), 4, "two versions each of payment and rentcar");

    let (_, components) = host.admin(Method::GET, "/admin/components").await?;
    let payment = components
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "payment")
        .unwrap()
        .clone();
    assert!(payment["previousVersion"].is_string(), "{payment}");
    let (status, rolled) = host.admin(Method::POST, "/admin/components/payment/rollback").await?;
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(rolled["version"], payment["previousVersion"]);
    assert_eq!(rolled["previousVersion"], payment["version"]);

    // On tansu the orders' events go one record per produce request
    // (README, "Run it on Kafka"): their backlog takes longer there.
    let settle = Duration::from_secs(if crate::broker::on_kafka() { 120 } else { 30 });
    eventually("the books to balance after the swaps", settle, || books_balance(&host)).await?;
    Ok(())
}

#[tokio::test]
async fn watch_swaps_a_rebuilt_file_and_the_cli_deploys() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let watched = dir.path().join("payment.wasm");
    std::fs::copy(wasm("payment"), &watched)?;
    let runtime = std::fs::read_to_string(crate::harness::runtime_toml())?;
    let mut config = String::new();
    for line in runtime.lines() {
        match line.strip_prefix("path = \"target/wasm32-wasip2/release/") {
            Some("payment.wasm\"") => config.push_str(&format!("path = {watched:?}\n")),
            Some(file) => config.push_str(&format!("path = {:?}\n", wasm(file.trim_end_matches(".wasm\"")))),
            None => config.push_str(&format!("{line}\n")),
        }
    }
    let config_path = dir.path().join("runtime.toml");
    std::fs::write(&config_path, config)?;
    let host = Host::start_with_args(&config_path, &dir.path().join("data"), &["--watch"])?;
    let before = version(&host, "payment").await?;

    std::fs::write(&watched, variant("payment", "rebuilt")?)?;
    eventually("the watcher to swap payment", Duration::from_secs(20), || async {
        Ok((version(&host, "payment").await? != before).then_some(()))
    })
    .await?;
    host.logged("watch: swapped in").await?;
    let car = host.car("Watched", 5).await?;
    host.order(car, 1).await?;

    // The operator's CLI goes through the same gate.
    let deploy = |file: std::path::PathBuf| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rentcar-host"))
            .args(["deploy", "payment"])
            .arg(file)
            .args(["--url", &host.base, "--token", TOKEN])
            .env("RUST_BACKTRACE", "0")
            .output()
    };
    let cli = dir.path().join("cli.wasm");
    std::fs::write(&cli, variant("payment", "cli")?)?;
    let output = deploy(cli)?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output = deploy(wasm("broken_payment"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("422") && stderr.contains("init failed"),
        "{stderr}"
    );
    Ok(())
}

/// The running version of `name`, as `GET /admin/components` reports it.
async fn version(host: &Host, name: &str) -> anyhow::Result<Value> {
    let (_, components) = host.admin(Method::GET, "/admin/components").await?;
    let component = components.as_array().unwrap().iter().find(|c| c["name"] == name);
    Ok(component.unwrap()["version"].clone())
}

#[tokio::test]
async fn a_rollback_outlives_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut host = Host::start(dir.path())?;
    let original = version(&host, "payment").await?;

    // Back to the version of runtime.toml.
    assert_eq!(deploy(&host, "payment", variant("payment", "two")?).await?.0, 200);
    let (status, rolled) = host.admin(Method::POST, "/admin/components/payment/rollback").await?;
    assert_eq!((status, &rolled["version"]), (200, &original), "{rolled}");
    host.terminate()?;
    let mut host = Host::start(dir.path())?;
    assert_eq!(
        version(&host, "payment").await?,
        original,
        "runtime.toml's version after a restart"
    );

    // Back to a deployed version.
    assert_eq!(deploy(&host, "payment", variant("payment", "three")?).await?.0, 200);
    let three = version(&host, "payment").await?;
    assert_eq!(deploy(&host, "payment", variant("payment", "four")?).await?.0, 200);
    let (status, rolled) = host.admin(Method::POST, "/admin/components/payment/rollback").await?;
    assert_eq!((status, &rolled["version"]), (200, &three), "{rolled}");
    host.terminate()?;
    let host = Host::start(dir.path())?;
    assert_eq!(
        version(&host, "payment").await?,
        three,
        "the rolled-back-to version after a restart"
    );
    host.order(host.car("Restarted", 1).await?, 1).await?;
    Ok(())
}
