//! The components not written in Rust, each built by its language's tool,
//! installed once into the cache:
//!
//! - loyalty (Python): componentize-py (PyPI) compiles
//!   `components/loyalty/` against the `rentcar:host/keyvalue-context`
//!   world of `wit/`.
//! - hello-js (JavaScript, tests only): componentize-js (npm) compiles
//!   `components/testing/hello-js/`. Its engine speaks wasi 0.2.10, so its
//!   world is resolved against the vendored wasi packages renumbered to
//!   0.2.10, in `target/wit-wasi-0.2.10/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::Context as _;

const COMPONENTIZE_PY: &str = "0.25.1";
const COMPONENTIZE_JS: &str = "0.23.0";
const RELEASE: &str = "target/wasm32-wasip2/release";

pub fn build(root: &Path) -> anyhow::Result<()> {
    let loyalty = root.join(RELEASE).join("loyalty.wasm");
    if stale(&loyalty, &[root.join("components/loyalty"), root.join("wit")]) {
        let componentize = crate::python::venv("componentize-py", COMPONENTIZE_PY)?.join("bin/componentize-py");
        eprintln!("xtask: building loyalty (Python) with componentize-py");
        crate::run(
            Command::new(componentize)
                .current_dir(root)
                .args(["--wit-path", "wit", "--world", "rentcar:host/keyvalue-context"])
                .args(["componentize", "--python-path", "components/loyalty", "app", "--output"])
                .arg(&loyalty),
        )?;
    }
    let hello = root.join(RELEASE).join("hello_js.wasm");
    let source = root.join("components/testing/hello-js");
    if stale(&hello, &[source.clone(), root.join("wit")]) {
        let componentize = componentize_js()?;
        let wit = wasi_0_2_10(root, &source)?;
        eprintln!("xtask: building hello-js (JavaScript) with componentize-js");
        crate::run(
            Command::new(componentize)
                .arg(source.join("hello.js"))
                .arg("--wit")
                .arg(&wit)
                .args(["--world-name", "rentcar:testing/hello"])
                // No outgoing HTTP: the host gives components none.
                .args(["--disable", "http", "--out"])
                .arg(&hello),
        )?;
    }
    Ok(())
}

/// componentize-js, installed with npm into the cache first if missing.
fn componentize_js() -> anyhow::Result<PathBuf> {
    let dir = crate::cache_dir()?.join(format!("componentize-js-{COMPONENTIZE_JS}"));
    let bin = dir.join("node_modules/.bin/componentize-js");
    let done = dir.join(".installed");
    if !done.is_file() {
        eprintln!(
            "xtask: installing componentize-js {COMPONENTIZE_JS} into {} (once)",
            dir.display()
        );
        // A half-made install (cut short) is made again from scratch.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        crate::run(
            Command::new("npm")
                .current_dir(&dir)
                .args(["install", "--silent", "--no-audit", "--no-fund"])
                .arg(format!("@bytecodealliance/componentize-js@{COMPONENTIZE_JS}")),
        )
        .context("Node.js and npm are needed to build the JavaScript test component")?;
        std::fs::write(&done, "")?;
    }
    Ok(bin)
}

/// A WIT directory for the JavaScript world: the vendored wasi packages
/// renumbered from 0.2.12 to 0.2.10 (dropping `exit-with-code`, which
/// 0.2.12 added), `wasi:config`, and the world itself.
fn wasi_0_2_10(root: &Path, source: &Path) -> anyhow::Result<PathBuf> {
    let wit = root.join("target/wit-wasi-0.2.10");
    let _ = std::fs::remove_dir_all(&wit);
    for package in [
        "cli",
        "clocks",
        "filesystem",
        "http",
        "io",
        "random",
        "sockets",
        "config",
    ] {
        let from = root.join("wit/deps").join(package);
        let to = wit.join("deps").join(package);
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(&from)? {
            let entry = entry?;
            let text = std::fs::read_to_string(entry.path())?.replace("@0.2.12", "@0.2.10");
            let text = text.replace(
                "  @since(version = 0.2.12)\n  exit-with-code: func(status-code: u8);\n",
                "",
            );
            std::fs::write(to.join(entry.file_name()), text)?;
        }
    }
    std::fs::copy(source.join("hello.wit"), wit.join("hello.wit"))?;
    Ok(wit)
}

/// Whether `output` is missing or older than anything under `sources`.
fn stale(output: &Path, sources: &[PathBuf]) -> bool {
    let built = std::fs::metadata(output).and_then(|m| m.modified()).ok();
    !built.is_some_and(|built| sources.iter().all(|dir| newest(dir) <= built))
}

/// When anything under `dir` last changed.
fn newest(dir: &Path) -> SystemTime {
    let mut latest = SystemTime::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return latest;
    };
    // Python's own byte-code cache changes when componentize-py runs.
    for entry in entries.flatten().filter(|entry| entry.file_name() != "__pycache__") {
        let path = entry.path();
        let modified = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).unwrap_or(latest)
        };
        latest = latest.max(modified);
    }
    latest
}
