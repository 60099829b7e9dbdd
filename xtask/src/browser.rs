//! What the browser test of the web console needs (host/tests/e2e/console.rs):
//! Debian's Chromium and chromedriver, installed with apt when missing, and
//! Selenium (PyPI) in a virtual environment in the cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

/// Pinned: the registry these machines reach does not always have the
/// newest release's dependencies yet.
const SELENIUM: &str = "4.50.0";

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Installs whatever is missing; answers the Python that has Selenium.
pub fn prepare() -> anyhow::Result<PathBuf> {
    if !Path::new(CHROMIUM).is_file() || !Path::new(CHROMEDRIVER).is_file() {
        eprintln!("xtask: installing Debian's chromium and chromium-driver (once)");
        let install = || {
            crate::run(
                Command::new("apt-get")
                    .args(["install", "-y", "chromium", "chromium-driver"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        };
        // A fresh machine may have no package lists yet.
        install()
            .or_else(|_| crate::run(Command::new("apt-get").arg("update")).and_then(|()| install()))
            .context("the console's browser test needs Chromium: apt-get install chromium chromium-driver")?;
    }
    let python = crate::python::venv("selenium", SELENIUM)?.join("bin/python");
    Ok(python)
}
