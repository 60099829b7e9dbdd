//! `cargo xtask bench polyglot`: what a request costs in a component
//! written in Python (loyalty, componentize-py) or JavaScript (hello-js,
//! componentize-js) against one in Rust, in one host and one run: a
//! trivial answer (Rust `GET /ping` vs JavaScript `GET /hello`) and a read
//! from the component's store (Rust `GET /availability/1` on SQL vs Python
//! `GET /loyalty/kim` on wasi:keyvalue). Targets alternate (`oha::compare`);
//! medians are reported, with each component's mean instantiation time and
//! the host's RSS after its runs. Results in BENCHMARKS.md.

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

#[path = "../tests/e2e/broker.rs"]
#[allow(dead_code, reason = "the harness runs hosts on Kafka when asked")]
mod broker;
#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code, reason = "the bench uses part of the test harness")]
mod harness;
#[path = "common/oha.rs"]
#[allow(dead_code, reason = "the bench uses part of the oha module")]
mod oha;

use std::collections::BTreeMap;
use std::time::Duration;

use harness::{Host, eventually, root, runtime_toml, wasm};
use oha::{CONNECTIONS, compare};

/// The repository's runtime.toml with absolute paths, plus ping (Rust) and
/// hello-js (JavaScript).
fn config(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let mut config = std::fs::read_to_string(runtime_toml())?
        .replace("path = \"target/", &format!("path = \"{}/target/", root().display()));
    for (name, wasm_name, route) in [("ping", "ping", "/ping"), ("hello", "hello_js", "/hello")] {
        config.push_str(&format!(
            "\n[components.{name}]\npath = {:?}\nroutes = [\"{route}\"]\n",
            wasm(wasm_name)
        ));
    }
    let path = dir.join("polyglot.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// Mean instantiation time per component, in ms, from `/metrics`.
async fn instantiation_ms(host: &Host) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = reqwest::get(format!("{}/metrics", host.base)).await?.text().await?;
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("rentcar_instantiation_seconds_") else {
            continue;
        };
        let Some((kind, rest)) = rest.split_once("{component=\"") else {
            continue;
        };
        let Some((component, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        let entry = sums.entry(component.to_string()).or_default();
        match kind {
            "sum" => entry.0 = value,
            "count" => entry.1 = value,
            _ => {}
        }
    }
    Ok(sums
        .into_iter()
        .filter(|(_, (_, count))| *count > 0.0)
        .map(|(component, (sum, count))| (component, sum / count * 1e3))
        .collect())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start_with(&config(dir.path())?, &dir.path().join("data"))?;
    let car = host.car("Avante", 1_000_000).await?;
    host.order(car, 2).await?;
    eventually("kim's points", Duration::from_secs(30), || async {
        let (_, account) = host.get("/loyalty/kim").await?;
        Ok((account["points"] == 200).then_some(()))
    })
    .await?;
    let rss_idle = kib(host.pid());

    let targets = [
        ("trivial answer", "Rust (ping)", "/ping"),
        ("trivial answer", "JavaScript (hello-js)", "/hello"),
        (
            "read from its store",
            "Rust (view, SQL)",
            &*format!("/availability/{car}"),
        ),
        ("read from its store", "Python (loyalty, wasi:keyvalue)", "/loyalty/kim"),
    ];
    let urls: Vec<(String, Vec<String>)> = targets
        .iter()
        .map(|(_, _, path)| (format!("{}{path}", host.base), Vec::new()))
        .collect();
    let runs = compare(&urls, CONNECTIONS, &async || Ok(())).await?;
    let rss_after = kib(host.pid());
    let instantiation = instantiation_ms(&host).await?;

    println!("| scenario | component | req/s | p50 ms | p99 ms | p99.9 ms | 2xx |");
    println!("|---|---|---|---|---|---|---|");
    for ((scenario, target, _), run) in targets.iter().zip(&runs) {
        println!("{}", run.row(scenario, target));
    }
    println!();
    println!(
        "ratios (req/s): JavaScript / Rust {:.3}, Python / Rust {:.3}",
        runs[1].rps / runs[0].rps,
        runs[3].rps / runs[2].rps
    );
    println!("mean instantiation, ms: {instantiation:.3?}");
    println!(
        "host RSS: {} MiB idle with every component loaded, {} MiB after the runs",
        rss_idle / 1024,
        rss_after / 1024
    );
    Ok(())
}

fn kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}
