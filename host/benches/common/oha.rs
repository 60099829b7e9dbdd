//! oha, the load generator of the benchmarks: one run, and the median of
//! alternating runs against several targets.

use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// Seconds per oha run, and its connections.
pub const SECONDS: u64 = 5;
pub const CONNECTIONS: u32 = 32;

/// Runs per target in a comparison, alternating between the targets so
/// that a noisy stretch of the machine hits them alike; medians reported.
pub const ROUNDS: usize = 3;

/// What one oha run measured.
pub struct Run {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub success: f64,
}

impl Run {
    pub fn row(&self, scenario: &str, target: &str) -> String {
        format!(
            "| {scenario} | {target} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1}% |",
            self.rps,
            self.p50 * 1e3,
            self.p99 * 1e3,
            self.p999 * 1e3,
            self.success * 100.0
        )
    }
}

impl Run {
    /// Field by field, the median of the runs.
    pub fn median(runs: Vec<Run>) -> Run {
        let median = |field: fn(&Run) -> f64| {
            let mut values: Vec<f64> = runs.iter().map(field).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        Run {
            rps: median(|r| r.rps),
            p50: median(|r| r.p50),
            p99: median(|r| r.p99),
            p999: median(|r| r.p999),
            success: median(|r| r.success),
        }
    }
}

/// Each target's median run over `ROUNDS` alternating rounds of the same
/// load: `targets` are (url, extra oha arguments). After each run, `settle`
/// waits until the events it left behind are delivered, so that this work
/// does not run in the next target's window.
pub async fn compare(
    targets: &[(String, Vec<String>)],
    connections: u32,
    settle: impl AsyncFn() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Run>> {
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for ((url, extra), runs) in targets.iter().zip(&mut runs) {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            runs.push(oha_with(url, &extra, connections)?);
            settle().await?;
        }
    }
    Ok(runs.into_iter().map(Run::median).collect())
}

pub fn oha(url: &str, extra: &[&str]) -> anyhow::Result<Run> {
    oha_with(url, extra, CONNECTIONS)
}

pub fn oha_with(url: &str, extra: &[&str], connections: u32) -> anyhow::Result<Run> {
    let output = Command::new("oha")
        .args([
            "-z",
            &format!("{SECONDS}s"),
            "-c",
            &connections.to_string(),
            "--no-tui",
            "--output-format",
            "json",
            // The host checks it (the gateway's cost is part of every
            // request); the native baselines ignore it.
            "-H",
            &format!(
                "authorization: Bearer {}",
                crate::harness::token("bench", &["customer", "admin"])
            ),
        ])
        .args(extra)
        .arg(url)
        .output()
        .context("oha is missing: `cargo xtask bench` installs it")?;
    if !output.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let report: Value = serde_json::from_slice(&output.stdout)?;
    let percentile = |p: &str| report["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN);
    let total: u64 = report["statusCodeDistribution"]
        .as_object()
        .map_or(0, |codes| codes.values().filter_map(Value::as_u64).sum());
    let good: u64 = report["statusCodeDistribution"].as_object().map_or(0, |codes| {
        codes
            .iter()
            .filter(|(code, _)| code.starts_with('2'))
            .filter_map(|(_, n)| n.as_u64())
            .sum()
    });
    Ok(Run {
        rps: report["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50: percentile("p50"),
        p99: percentile("p99"),
        p999: percentile("p99.9"),
        success: good as f64 / total.max(1) as f64,
    })
}
