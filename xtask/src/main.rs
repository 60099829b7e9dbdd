//! `cargo xtask`: the project's build, run and test commands.
//!
//! - `cargo xtask build`: the release host and every component (wasm32-wasip2):
//!   the Rust ones with cargo, loyalty (Python) with componentize-py and the
//!   JavaScript test component with componentize-js, each installed into
//!   the cache first if missing (module [`polyglot`]).
//! - `cargo xtask run`: builds, then serves `runtime.toml` on 127.0.0.1:8080
//!   with data under `./data` (`cargo xtask serve`: the same without the
//!   build). The host replaces the xtask process (module [`serve`]), so a
//!   SIGTERM to the process `cargo xtask run` started stops the host.
//! - `cargo xtask test`: builds, installs tansu (a Kafka-protocol broker)
//!   and Selenium into a cache and Chromium with apt if missing, runs every
//!   test against the real host (the console's in a headless browser), then
//!   the contract tests (schemathesis, installed into the cache if missing,
//!   against `host/openapi.json`), and the end-to-end suite again with
//!   every host's events on tansu, then once more with every host split
//!   into two nodes.
//! - `cargo xtask contract`: builds, then the contract tests alone.
//! - `cargo xtask bench`: builds, installs the load generator (oha) if
//!   missing, and runs the load benchmark against the host, the native
//!   baseline and, when installed, `wasmtime serve`.
//!
//! Everything uses the release profile, so one build serves all three.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

mod browser;
mod contract;
mod kafka;
mod polyglot;
mod python;
mod serve;

/// The guest crates, each built into `target/wasm32-wasip2/release/NAME.wasm`:
/// the four bounded contexts, and the components only the tests and the
/// benchmarks load.
const COMPONENTS: &[&str] = &[
    "order",
    "payment",
    "rentcar",
    "view",
    "probe",
    "hostile",
    "broken-payment",
    "changed-payment",
    "ping",
];
const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() -> anyhow::Result<()> {
    // Before anything else: `serve` checks that this parent is still there
    // when it hands over to the host.
    let parent = serve::Parent::current();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = args.split_first().map_or(("help", &[][..]), |(t, r)| (t.as_str(), r));
    match task {
        "build" => build(),
        "run" => {
            build()?;
            serve::exec(&root(), rest, &parent)
        }
        "serve" => serve::exec(&root(), rest, &parent),
        "contract" => {
            build()?;
            contract::run(&root(), &contract::schemathesis()?)
        }
        "bench" => {
            build()?;
            run(cargo().args(["build", "--release", "-p", "native-baseline"]))?;
            ensure_tool("oha", &["install", "oha", "--locked", "--version", "1.16.0"])?;
            let mut bench = cargo();
            bench
                .args(["bench", "-p", "rentcar-host", "--bench"])
                .arg(rest.first().map_or("load", String::as_str));
            // The events benchmark compares the embedded log with Kafka;
            // the nodes benchmark runs on Kafka.
            if matches!(rest.first().map(String::as_str), Some("events" | "nodes")) {
                bench.env("RENTCAR_TANSU", kafka::tansu()?);
            }
            // Every Store drop would capture a backtrace (~15% per request).
            run(bench.env("RUST_BACKTRACE", "0").env("RENTCAR_HOST_LOG", "warn"))
        }
        "test" => {
            build()?;
            let tansu = kafka::tansu()?;
            let selenium = browser::prepare()?;
            // The default members: the host, xtask and the SDK (its unit
            // tests run natively), not the guests.
            run(cargo()
                .args(["test", "--release"])
                .args(rest)
                .env("RENTCAR_TANSU", &tansu)
                .env("RENTCAR_SELENIUM_PYTHON", &selenium))?;
            if !rest.is_empty() {
                return Ok(());
            }
            eprintln!("xtask: contract tests (schemathesis against host/openapi.json)");
            contract::run(&root(), &contract::schemathesis()?)?;
            // The end-to-end suite again, every host's events on a Kafka
            // broker (retention there is the broker's, not the host's).
            eprintln!("xtask: the end-to-end suite on Kafka");
            let broker = kafka::Broker::start(&tansu)?;
            run(cargo()
                .args(["test", "--release", "-p", "rentcar-host", "--test", "e2e", "--"])
                .args(["--skip", "events::retention_bounds_the_log_once_events_are_delivered"])
                .env("RENTCAR_TANSU", &tansu)
                .env("RENTCAR_SELENIUM_PYTHON", &selenium)
                .env("RENTCAR_TEST_BUS", "kafka")
                .env("RENTCAR_TEST_BROKERS", &broker.address))?;
            // And on two nodes: rentcar and view on one, the rest on the
            // other, every request through the first. Skipped: what looks
            // at one process's own state (its database files, its metrics).
            eprintln!("xtask: the end-to-end suite on two nodes (Kafka)");
            let mut two = cargo();
            two.args(["test", "--release", "-p", "rentcar-host", "--test", "e2e", "--"]);
            for one_process in [
                "events::retention_bounds_the_log_once_events_are_delivered",
                "events::a_reset_cut_short_by_a_crash_is_finished_at_start_up",
                "lifecycle::health_metrics_and_a_request_id_that_follows_the_events",
            ] {
                two.args(["--skip", one_process]);
            }
            run(two
                .env("RENTCAR_TANSU", &tansu)
                .env("RENTCAR_SELENIUM_PYTHON", &selenium)
                .env("RENTCAR_TEST_BUS", "kafka")
                .env("RENTCAR_TEST_NODES", "2")
                .env("RENTCAR_TEST_BROKERS", &broker.address))
        }
        _ => {
            eprintln!("usage: cargo xtask <build|run|serve|test|contract|bench> [args...]");
            Ok(())
        }
    }
}

fn build() -> anyhow::Result<()> {
    ensure_guest_target()?;
    let mut guests = cargo();
    guests.args(["build", "--release", "--target", GUEST_TARGET]);
    // Whole-program optimization for the guests alone (the host would
    // build for many minutes): a sixth less code for wasmtime to compile
    // at a cold start (BENCHMARKS.md). Profile overrides per package
    // cannot set `lto`, hence here.
    guests.args([
        "--config",
        "profile.release.lto=true",
        "--config",
        "profile.release.codegen-units=1",
    ]);
    for component in COMPONENTS {
        guests.args(["-p", component]);
    }
    // Flags meant for the host (e.g. `-C target-cpu=native`) must not leak
    // into the guests.
    guests.env_remove("CARGO_ENCODED_RUSTFLAGS").env_remove("RUSTFLAGS");
    run(&mut guests)?;
    polyglot::build(&root())?;
    run(cargo().args(["build", "--release", "-p", "rentcar-host"]))
}

/// Installs the guest target when rustup has not yet (a fresh machine with
/// `RUSTUP_AUTO_INSTALL=0` does not install it from rust-toolchain.toml).
fn ensure_guest_target() -> anyhow::Result<()> {
    let output = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()?;
    let libdir = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() && Path::new(&libdir).is_dir() {
        return Ok(());
    }
    eprintln!("xtask: installing the {GUEST_TARGET} target with rustup");
    run(Command::new("rustup").args(["target", "add", GUEST_TARGET]))
        .context("the wasm32-wasip2 target is missing and rustup could not add it")
}

/// Installs a cargo tool when it is not on the PATH yet.
fn ensure_tool(tool: &str, install: &[&str]) -> anyhow::Result<()> {
    let present = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("xtask: installing {tool} (a few minutes, once)");
        run(cargo().args(install))?;
    }
    Ok(())
}

/// Where slow installs live, outside the clone: `$XDG_CACHE_HOME/rentcar`,
/// else `~/.cache/rentcar`.
fn cache_dir() -> anyhow::Result<PathBuf> {
    let cache = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(cache.join("rentcar"))
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("failed to run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
