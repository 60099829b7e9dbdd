//! Fault injection, the way Istio does it: an operator adds a delay or an
//! abort to every call into a component (synchronous calls and HTTP
//! requests) to rehearse failures. Set with `PUT /admin/faults/{component}`.
//! Beyond Istio, a reply delay holds the answer of a call that has run: the
//! callee's work is done, and the caller may give up on it first.

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
    /// Added after every call has run, before its answer goes back, in ms.
    #[serde(default)]
    pub reply_delay_ms: u64,
}

/// Longest delay a fault may add, in ms.
const MAX_DELAY_MS: u64 = 600_000;

impl Fault {
    /// Refuses a fault that makes no sense: the delays and the jitter add
    /// up (without overflowing) to at most 10 minutes.
    pub fn check(&self) -> Result<(), String> {
        let longest = self
            .delay_ms
            .checked_add(self.jitter_ms)
            .and_then(|ms| ms.checked_add(self.reply_delay_ms));
        if self.abort_percent > 100 || longest.is_none_or(|ms| ms > MAX_DELAY_MS) {
            return Err(format!(
                "abortPercent is 0 to 100, and delayMs + jitterMs + replyDelayMs at most {MAX_DELAY_MS}"
            ));
        }
        Ok(())
    }
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

    fn get(&self, component: &str) -> Option<Fault> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(component).copied()
    }

    /// Applies the fault of `component`, if any, to one call: waits out the
    /// delay, then answers whether the call is to be aborted.
    pub async fn inject(&self, component: &str) -> bool {
        let Some(fault) = self.get(component) else {
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

    /// Holds the answer of a call into `component` that has run for its
    /// fault's reply delay, if any.
    pub async fn delay_reply(&self, component: &str) {
        let delay = self.get(component).map_or(0, |fault| fault.reply_delay_ms);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Fault;

    #[test]
    fn delays_are_bounded_without_overflow() {
        let fault = |delay_ms, jitter_ms, abort_percent, reply_delay_ms| Fault {
            delay_ms,
            jitter_ms,
            abort_percent,
            reply_delay_ms,
        };
        assert!(fault(800, 220, 30, 0).check().is_ok());
        assert!(fault(600_000, 0, 100, 0).check().is_ok());
        assert!(fault(0, 0, 0, 600_000).check().is_ok());
        assert!(fault(1, u64::MAX, 0, 0).check().is_err());
        assert!(fault(1, 0, 0, u64::MAX).check().is_err());
        assert!(fault(600_000, 1, 0, 0).check().is_err());
        assert!(fault(300_000, 0, 0, 300_001).check().is_err());
        assert!(fault(0, 0, 101, 0).check().is_err());
    }
}
