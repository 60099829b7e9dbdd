//! Building loyalty, the Python component: componentize-py (from PyPI, in
//! a virtual environment under the cache) compiles `components/loyalty/`
//! against the `rentcar:host/keyvalue-context` world of `wit/`.

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

const COMPONENTIZE_PY: &str = "0.25.1";
const WORLD: &str = "rentcar:host/keyvalue-context";
pub const OUTPUT: &str = "target/wasm32-wasip2/release/loyalty.wasm";

/// Builds loyalty.wasm unless it is newer than its sources and the WIT.
pub fn build(root: &Path) -> anyhow::Result<()> {
    let output = root.join(OUTPUT);
    let built = std::fs::metadata(&output).and_then(|m| m.modified()).ok();
    let sources = [root.join("components/loyalty"), root.join("wit")];
    if built.is_some_and(|built| sources.iter().all(|dir| newest(dir) <= built)) {
        return Ok(());
    }
    let componentize = crate::python::venv("componentize-py", COMPONENTIZE_PY)?.join("bin/componentize-py");
    eprintln!("xtask: building loyalty (Python) with componentize-py");
    crate::run(
        Command::new(componentize)
            .current_dir(root)
            .args(["--wit-path", "wit", "--world", WORLD, "componentize"])
            .args(["--python-path", "components/loyalty", "app", "--output", OUTPUT]),
    )
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
