//! Memory budgets: what all instances of a component, and all instances of
//! the host, may hold in linear memory at once.
//!
//! Each instance is bounded by its component's `memory_mib`; its growth
//! (the initial memory included) is also reserved from the component's
//! budget and the host's, and given back when the instance's store is
//! dropped. A growth that would pass a budget traps the invocation with
//! [`OverBudget`]: an HTTP caller gets 503 and retries, an event waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::ResourceLimiter;

/// Bytes that may be held at once, and those held now.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    held: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            held: AtomicUsize::new(0),
        }
    }

    /// Reserves `bytes` if they fit.
    fn reserve(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// The trap of an instance whose growth would pass a memory budget.
#[derive(Debug, thiserror::Error)]
#[error("{0} memory budget is spent")]
pub struct OverBudget(&'static str);

impl OverBudget {
    /// Whether `err` (a trap, a failed instantiation or call) comes from a
    /// spent budget.
    pub fn caused(err: &anyhow::Error) -> bool {
        err.chain().any(|cause| cause.is::<OverBudget>())
    }
}

/// The `ResourceLimiter` of one store (one instance).
pub struct Limiter {
    /// Largest linear memory of the instance.
    instance: usize,
    component: Arc<Budget>,
    host: Arc<Budget>,
    /// What this store reserved from both budgets.
    held: usize,
}

impl Limiter {
    pub fn new(instance: usize, component: Arc<Budget>, host: Arc<Budget>) -> Limiter {
        Limiter {
            instance,
            component,
            host,
            held: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.instance {
            // The guest sees a failed `memory.grow`, as with any maximum.
            return Ok(false);
        }
        let more = desired.saturating_sub(current);
        if !self.component.reserve(more) {
            return Err(OverBudget("the component's").into());
        }
        if !self.host.reserve(more) {
            self.component.release(more);
            return Err(OverBudget("the host's").into());
        }
        self.held += more;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|maximum| desired <= maximum))
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.component.release(self.held);
        self.host.release(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_reserved_from_both_budgets_and_given_back_on_drop() {
        let (component, host) = (Arc::new(Budget::new(100)), Arc::new(Budget::new(150)));
        let mut first = Limiter::new(80, component.clone(), host.clone());
        assert!(first.memory_growing(0, 60, None).unwrap());
        // Past the instance's own maximum: a failed grow, not a trap.
        assert!(!first.memory_growing(60, 90, None).unwrap());
        let mut second = Limiter::new(80, component.clone(), host.clone());
        let err = anyhow::Error::from(second.memory_growing(0, 50, None).unwrap_err());
        assert!(OverBudget::caused(&err), "the component's budget: {err}");
        assert!(second.memory_growing(0, 40, None).unwrap());
        let mut other = Limiter::new(80, Arc::new(Budget::new(100)), host.clone());
        let err = other.memory_growing(0, 60, None).unwrap_err();
        assert!(err.to_string().contains("host"), "{err}");
        assert_eq!((component.held(), host.held()), (100, 100));
        drop(first);
        drop(second);
        assert_eq!((component.held(), host.held()), (0, 0));
        assert!(other.memory_growing(0, 60, None).unwrap());
    }
}
