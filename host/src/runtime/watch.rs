//! `serve --watch`, for development: when a component's wasm file changes
//! on disk (say, after `cargo xtask build`), the new version goes through
//! the same readiness gate as a deploy and is swapped in.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runtime::{DeployError, Runtime};

/// A build writes a file in several steps: wait for it to settle.
const SETTLE: Duration = Duration::from_millis(300);

pub fn start(runtime: Arc<Runtime>, token: CancellationToken, tracker: &TaskTracker) -> anyhow::Result<()> {
    // (directory, file name) -> component; directories are canonical.
    let mut files: HashMap<(PathBuf, std::ffi::OsString), String> = HashMap::new();
    for (name, settings) in runtime.config.local() {
        let path = settings
            .path
            .canonicalize()
            .with_context(|| format!("cannot watch {}", settings.path.display()))?;
        let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
            continue;
        };
        files.insert((dir.to_owned(), file.to_owned()), name.clone());
    }
    let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_))
        {
            for path in event.paths {
                let _ = changed.send(path);
            }
        }
    })
    .context("cannot start the file watcher")?;
    for dir in files.keys().map(|(dir, _)| dir.clone()).collect::<BTreeSet<_>>() {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), "watching for new component builds");
    }
    let component_of = move |path: &PathBuf| {
        let dir = path.parent()?.canonicalize().ok()?;
        files.get(&(dir, path.file_name()?.to_owned())).cloned()
    };
    tracker.spawn(async move {
        let _watcher = watcher;
        loop {
            let first = tokio::select! {
                path = changes.recv() => match path { Some(path) => path, None => return },
                _ = token.cancelled() => return,
            };
            let mut pending: BTreeSet<String> = component_of(&first).into_iter().collect();
            let settle = tokio::time::sleep(SETTLE);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    Some(path) = changes.recv() => pending.extend(component_of(&path)),
                    _ = &mut settle => break,
                }
            }
            for name in pending {
                swap(&runtime, &name).await;
            }
        }
    });
    Ok(())
}

async fn swap(runtime: &Runtime, name: &str) {
    let path = &runtime.config.components[name].path;
    let wasm = match std::fs::read(path) {
        Ok(wasm) => wasm,
        Err(err) => return tracing::warn!(component = name, cause = %err, "changed file unreadable"),
    };
    tracing::info!(component = name, path = %path.display(), "file changed; deploying");
    match runtime.deploy(name, wasm).await {
        Ok(status) => tracing::info!(component = name, version = %status.version, "watch: swapped in"),
        Err(DeployError::Refused(reason)) => {
            tracing::warn!(component = name, reason = %format!("{reason:#}"), "watch: new version refused; the old one keeps serving")
        }
        Err(err) => tracing::warn!(component = name, cause = %err, "watch: deploy failed"),
    }
}
