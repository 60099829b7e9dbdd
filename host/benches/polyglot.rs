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

use harness::{Host, eventually, runtime_toml_with, wasm};
use oha::{CONNECTIONS, compare};

/// The repository's runtime.toml with absolute paths, plus ping (Rust) and
/// hello-js (JavaScript).
fn config(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let extra: String = [("ping", "ping", "/ping"), ("hello", "hello_js", "/hello")]
        .iter()
        .map(|(name, wasm_name, route)| {
            format!(
                "\n[components.{name}]\npath = {:?}\nroutes = [\"{route}\"]\n",
                wasm(wasm_name)
            )
        })
        .collect();
    runtime_toml_with(dir, &extra)
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
    let idle = Memory::of(host.pid());

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
    let after = Memory::of(host.pid());
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
    println!("host memory, idle with every component loaded: {idle}; after the runs: {after}");
    Ok(())
}

/// A process's resident memory (RSS) and its proportional share (PSS): the
/// pool's slots map the same image pages, which RSS counts once per slot.
struct Memory {
    rss_kib: u64,
    pss_kib: u64,
}

impl Memory {
    fn of(pid: u32) -> Memory {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let field = |name: &str| {
            rollup
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Memory {
            rss_kib: field("Rss:"),
            pss_kib: field("Pss:"),
        }
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSS {} MiB, PSS {} MiB", self.rss_kib / 1024, self.pss_kib / 1024)
    }
}
