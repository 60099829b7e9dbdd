//! Deploys and rollbacks: a new version passes the readiness gate (see
//! `Runtime::prepare`), its `init` is rehearsed on a copy of the database,
//! and only then does it replace the running one, which serves throughout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{Runtime, wasi_config};
use crate::instance::registry::Status;
use crate::instance::slot::{INIT_DEADLINE, Loaded, Slot};
use crate::store::Database;

/// Why a new version was refused; the old one keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("no component `{0}`")]
    Unknown(String),
    #[error("{0:#}")]
    Refused(anyhow::Error),
}

impl Runtime {
    /// Runs the `init` of a version about to replace the running one while
    /// the running one serves on. `init` runs first on a copy of the
    /// database, which the running version never waits for: a migration
    /// that fails, never ends, or takes longer than `migration_ms` is
    /// refused without having touched the live database. Then it runs on
    /// the live database, where it holds the write turn for as long as the
    /// migration takes, bounded by twice its time on the copy plus a
    /// second: the running version waits at most that long.
    async fn init_beside(&self, loaded: &Loaded) -> anyhow::Result<()> {
        let name = loaded.name();
        let dir = self.config.server.data_dir.join("deploying");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let copy_path = dir.join(format!("{name}.db"));
        remove_database(&copy_path)?;
        let rehearsal = async {
            loaded.slot.db.copy_to(&copy_path).await?;
            let copy = Database::open(&copy_path)?;
            copy.limit_size(u64::from(loaded.slot.limits.database_mib) * 1024 * 1024)?;
            let slot = Arc::new(Slot::new(
                name,
                copy,
                wasi_config(&self.config.components[name]),
                loaded.slot.limits,
                self.memory.clone(),
            ));
            let started = Instant::now();
            loaded.on(slot).init(INIT_DEADLINE).await?;
            anyhow::Ok(started.elapsed())
        };
        let rehearsed = rehearsal.await;
        remove_database(&copy_path)?;
        let took = rehearsed.context("init failed on a copy of the database")?;
        let allowed = Duration::from_millis(loaded.slot.limits.migration_ms);
        if took > allowed {
            anyhow::bail!(
                "init took {} ms on a copy of the database, longer than migration_ms ({} ms) lets \
                 the running version wait for it on the live one; raise migration_ms, or deploy \
                 it with a restart",
                took.as_millis(),
                allowed.as_millis()
            );
        }
        let bound = (took * 2 + Duration::from_secs(1)).min(INIT_DEADLINE);
        loaded.init(bound).await.with_context(|| {
            format!(
                "init on the live database did not finish within {} ms (it took {} ms on a copy)",
                bound.as_millis(),
                took.as_millis()
            )
        })
    }

    /// Replaces the running version of `name` with `wasm` once it passed the
    /// readiness gate. Invocations already running finish on the old
    /// version; new ones start on the new one. The new version is kept on
    /// disk, so a restart keeps it.
    pub async fn deploy(&self, name: &str, wasm: Vec<u8>) -> Result<Status, DeployError> {
        let _one_at_a_time = self.deploying.lock().await;
        let (current, _) = self
            .registry
            .entry(name)
            .ok_or_else(|| DeployError::Unknown(name.into()))?;
        let started = Instant::now();
        let wasm: Arc<[u8]> = wasm.into();
        let loaded = self
            .prepare(current.slot.clone(), wasm.clone())
            .await
            .map_err(DeployError::Refused)?;
        self.init_beside(&loaded).await.map_err(DeployError::Refused)?;
        if loaded.version == current.version {
            tracing::info!(component = name, version = %loaded.version, "deployed version is already running");
        } else {
            self.persist(name, &wasm).map_err(DeployError::Refused)?;
            let version = loaded.version.clone();
            self.registry.install(Arc::new(loaded));
            tracing::info!(
                component = name, version = %version, previous = %current.version,
                elapsed_ms = started.elapsed().as_millis() as u64, "new version swapped in"
            );
        }
        Ok(self.registry.status(name).expect("installed above"))
    }

    /// Goes back to the previous version of `name`.
    pub async fn rollback(&self, name: &str) -> Result<Status, DeployError> {
        let _one_at_a_time = self.deploying.lock().await;
        if self.registry.entry(name).is_none() {
            return Err(DeployError::Unknown(name.into()));
        }
        let previous = self.registry.previous(name);
        let Some(previous) = previous else {
            return Err(DeployError::Refused(anyhow::anyhow!(
                "`{name}` has no previous version"
            )));
        };
        self.swap_deployed(name).map_err(DeployError::Refused)?;
        self.registry.rollback(name);
        tracing::info!(component = name, version = %previous.version, "rolled back");
        Ok(self.registry.status(name).expect("rolled back above"))
    }

    pub(super) fn deployed_path(&self, name: &str) -> PathBuf {
        self.config
            .server
            .data_dir
            .join("deployed")
            .join(format!("{name}.wasm"))
    }

    /// The previous version's wasm, kept so that a rollback outlives a
    /// restart; absent while the previous version is the one at the
    /// component's `path` in runtime.toml.
    fn previous_path(&self, name: &str) -> PathBuf {
        self.deployed_path(name).with_extension("previous.wasm")
    }

    /// Keeps `wasm` as the version to load at start-up; the one kept so far
    /// becomes the previous one.
    fn persist(&self, name: &str, wasm: &[u8]) -> anyhow::Result<()> {
        let path = self.deployed_path(name);
        let temporary = path.with_extension("wasm.tmp");
        std::fs::write(&temporary, wasm).with_context(|| format!("cannot write {}", temporary.display()))?;
        let previous = self.previous_path(name);
        if !rename_if_present(&path, &previous)? {
            remove_if_present(&previous)?;
        }
        std::fs::rename(&temporary, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// After a rollback, start-up loads the previous version, and the one
    /// rolled back from becomes the previous one, as in the registry.
    fn swap_deployed(&self, name: &str) -> anyhow::Result<()> {
        let (current, previous) = (self.deployed_path(name), self.previous_path(name));
        let swapping = current.with_extension("wasm.swap");
        rename_if_present(&current, &swapping)?;
        rename_if_present(&previous, &current)?;
        rename_if_present(&swapping, &previous)?;
        Ok(())
    }
}

/// Removes a database file and what SQLite keeps beside it.
fn remove_database(path: &Path) -> anyhow::Result<()> {
    remove_if_present(path)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut beside = path.as_os_str().to_owned();
        beside.push(suffix);
        remove_if_present(Path::new(&beside))?;
    }
    Ok(())
}

/// Renames `from` to `to`; `false` if there was no `from`.
fn rename_if_present(from: &Path, to: &Path) -> anyhow::Result<bool> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("cannot rename {} to {}", from.display(), to.display())),
    }
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}
