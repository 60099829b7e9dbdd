//! Fault injection, the way Istio does it: an operator adds a delay or an
//! abort to every call into a component (synchronous calls and HTTP
//! requests) to rehearse failures. Set with `PUT /admin/faults/{component}`.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Added before every call, in ms.
    #[serde(default)]
    pub delay_ms: u64,
    /// A random extra delay from 0 to this, in ms.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Share of calls that fail at once, 0 to 100.
    #[serde(default)]
    pub abort_percent: u8,
}

/// The faults in force, by component.
#[derive(Default)]
pub struct Faults(RwLock<BTreeMap<String, Fault>>);

impl Faults {
    pub fn all(&self) -> BTreeMap<String, Fault> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, component: &str, fault: Fault) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(component.to_string(), fault);
    }

    pub fn clear(&self, component: &str) -> bool {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(component)
            .is_some()
    }

    /// Applies the fault of `component`, if any, to one call: waits out the
    /// delay, then answers whether the call is to be aborted.
    pub async fn inject(&self, component: &str) -> bool {
        let Some(fault) = self.0.read().unwrap_or_else(|e| e.into_inner()).get(component).copied() else {
            return false;
        };
        let delay = fault.delay_ms
            + if fault.jitter_ms > 0 {
                fastrand::u64(0..=fault.jitter_ms)
            } else {
                0
            };
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        fault.abort_percent > 0 && fastrand::u8(0..100) < fault.abort_percent
    }
}
