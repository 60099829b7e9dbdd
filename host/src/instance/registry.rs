//! The components, by name: the version running now, the one before it, and
//! whether the component runs at all.
//!
//! Every invocation looks its component up here when it starts and keeps
//! that version (an `Arc`) until it ends: a swap lets requests already
//! running finish on the old version while new ones start on the new.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::instance::slot::Loaded;

pub struct Registry {
    entries: RwLock<HashMap<String, Entry>>,
    /// Bumped on every change, so that waiting dispatchers look again.
    changed: watch::Sender<u64>,
}

struct Entry {
    current: Arc<Loaded>,
    previous: Option<Arc<Loaded>>,
    running: bool,
}

/// A component's state, for the admin API and the metrics.
#[derive(Debug, Clone)]
pub struct Status {
    pub name: String,
    pub state: &'static str,
    pub version: String,
    pub loaded_at: u64,
    pub in_flight: usize,
    pub previous_version: Option<String>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            entries: RwLock::default(),
            changed: watch::Sender::new(0),
        }
    }
}

impl Registry {
    /// The running version of a component; `None` if unknown or stopped.
    pub fn get(&self, name: &str) -> Option<Arc<Loaded>> {
        let entries = self.read();
        entries
            .get(name)
            .filter(|entry| entry.running)
            .map(|entry| entry.current.clone())
    }

    /// The current version of a component, running or not, and whether it runs.
    pub fn entry(&self, name: &str) -> Option<(Arc<Loaded>, bool)> {
        self.read()
            .get(name)
            .map(|entry| (entry.current.clone(), entry.running))
    }

    /// Makes `loaded` the current version of its component; the version it
    /// replaces becomes the previous one.
    pub fn install(&self, loaded: Arc<Loaded>) {
        let name = loaded.name().to_string();
        let mut entries = self.write();
        match entries.get_mut(&name) {
            Some(entry) => entry.previous = Some(std::mem::replace(&mut entry.current, loaded)),
            None => {
                entries.insert(
                    name,
                    Entry {
                        current: loaded,
                        previous: None,
                        running: true,
                    },
                );
            }
        }
        drop(entries);
        self.bump();
    }

    /// Swaps the current and the previous version; `false` if there is no
    /// previous version.
    pub fn rollback(&self, name: &str) -> bool {
        let mut entries = self.write();
        let Some(entry) = entries.get_mut(name) else {
            return false;
        };
        let Some(previous) = entry.previous.take() else {
            return false;
        };
        entry.previous = Some(std::mem::replace(&mut entry.current, previous));
        drop(entries);
        self.bump();
        true
    }

    /// The previous version of a component, if any.
    pub fn previous(&self, name: &str) -> Option<Arc<Loaded>> {
        self.read().get(name).and_then(|entry| entry.previous.clone())
    }

    /// Stops or starts a component; `false` if there is no such component.
    pub fn set_running(&self, name: &str, running: bool) -> bool {
        let mut entries = self.write();
        let Some(entry) = entries.get_mut(name) else {
            return false;
        };
        entry.running = running;
        drop(entries);
        self.bump();
        true
    }

    /// The current version of every component, running or not.
    pub fn all(&self) -> Vec<Arc<Loaded>> {
        self.read().values().map(|entry| entry.current.clone()).collect()
    }

    pub fn status(&self, name: &str) -> Option<Status> {
        self.read().get(name).map(|entry| Status {
            name: name.to_string(),
            state: if entry.running { "running" } else { "stopped" },
            version: entry.current.version.clone(),
            loaded_at: entry.current.loaded_at,
            in_flight: entry.current.in_flight() + entry.previous.as_ref().map_or(0, |p| p.in_flight()),
            previous_version: entry.previous.as_ref().map(|previous| previous.version.clone()),
        })
    }

    pub fn statuses(&self) -> Vec<Status> {
        let mut names: Vec<String> = self.read().keys().cloned().collect();
        names.sort();
        names.iter().filter_map(|name| self.status(name)).collect()
    }

    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}
