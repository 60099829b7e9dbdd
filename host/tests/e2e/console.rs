//! The web console in a real browser: `console.py` drives headless Chromium
//! through Selenium against the real host, as a customer and then as an
//! operator, and leaves screenshots in `target/console/`.
//!
//! `cargo xtask test` installs Chromium and chromedriver (Debian's
//! packages) when they are missing, and Selenium into a virtual environment
//! in the cache, which it names in `RENTCAR_SELENIUM_PYTHON`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::harness::{Host, TOKEN, root, runtime_toml_with, token, wasm};

#[tokio::test(flavor = "multi_thread")]
async fn customers_and_operators_use_the_console_in_a_browser() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start_with(&config_with_probe(dir.path())?, &dir.path().join("data"))?;
    let car = host.car("Avante", 2).await?;

    // The page and its assets need no token, and may load nothing from
    // elsewhere.
    for (path, content_type) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let answer = reqwest::get(format!("{}{path}", host.base)).await?;
        assert_eq!(answer.status(), 200, "{path}");
        let header = |name: &str| answer.headers()[name].to_str().unwrap_or_default().to_string();
        assert!(
            header("content-type").starts_with(content_type),
            "{path}: {}",
            header("content-type")
        );
        assert!(
            header("content-security-policy").starts_with("default-src 'none'"),
            "{path}"
        );
    }
    let out = root().join("target/console");
    let output = Command::new(selenium_python()?)
        .arg(root().join("host/tests/e2e/console.py"))
        .env("CONSOLE_URL", format!("{}/console", host.base))
        .env("CUSTOMER_TOKEN", token("lee", &["customer"]))
        .env("OPERATOR_TOKEN", token("ops", &["admin"]))
        .env("BROKEN_WASM", wasm("broken_payment"))
        .env("PAYMENT_WASM", wasm("payment"))
        .env("CAR_ID", car.to_string())
        .env("ADMIN_TOKEN", TOKEN)
        .env("OUT_DIR", &out)
        .output()
        .context("cannot run the browser test")?;
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    if !output.status.success() {
        bail!(
            "the browser test failed ({}; screenshots in {}):\n{}\n---- host log ----\n{}",
            output.status,
            out.display(),
            String::from_utf8_lossy(&output.stderr),
            host.log()
        );
    }
    Ok(())
}

/// The repository's runtime.toml plus the probe component, whose poison
/// events give the console a dead letter to show and replay.
fn config_with_probe(dir: &Path) -> anyhow::Result<PathBuf> {
    let probe = format!(
        "[components.probe]\npath = {:?}\nroutes = [\"/probe\"]\nsubscribe = [\"probe\"]\n\n\
         [delivery]\nmax_attempts = 3\nbackoff_ms = 10\nmax_backoff_ms = 20\n",
        wasm("probe")
    );
    runtime_toml_with(dir, &probe)
}

/// Python with Selenium: `RENTCAR_SELENIUM_PYTHON`, else where `cargo
/// xtask test` installs it.
fn selenium_python() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("RENTCAR_SELENIUM_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => crate::broker::dirs_cache().join("rentcar/selenium-4.50.0/bin/python"),
    };
    if !path.is_file() {
        bail!(
            "{} is missing: run the tests with `cargo xtask test`, which installs Selenium and Chromium",
            path.display()
        );
    }
    Ok(path)
}
