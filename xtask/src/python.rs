//! Python tools from PyPI (schemathesis, Selenium, componentize-py), each in
//! a virtual environment of its own under the cache, made once.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;

/// The virtual environment holding `package` at `version`, installed first
/// if missing: `<cache>/<package>-<version>` (see [`crate::cache_dir`]).
pub fn venv(package: &str, version: &str) -> anyhow::Result<PathBuf> {
    let venv = crate::cache_dir()?.join(format!("{package}-{version}"));
    // Written last: a half-made environment (an install cut short) is made
    // again.
    let done = venv.join(".installed");
    if !done.is_file() {
        eprintln!("xtask: installing {package} {version} into {} (once)", venv.display());
        let _ = std::fs::remove_dir_all(&venv);
        crate::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("python3 with venv is needed (Debian: python3-venv)")?;
        crate::run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(format!("{package}=={version}")),
        )?;
        std::fs::write(&done, "")?;
    }
    Ok(venv)
}
