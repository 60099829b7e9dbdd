//! Memory budgets: what all instances of a component, and all instances of
//! the host, may hold in linear memory at once.
//!
//! Each instance is bounded by its component's `memory_mib`; its growth
//! (the initial memory included) is also reserved from the component's
//! budget and the host's, and given back when the instance's store is
//! dropped. A growth that would pass a budget traps the invocation with
//! [`OverBudget`]: an HTTP caller gets 503 and retries, an event waits.
//!
//! What the host holds for an instance on its way into it (the rows of a
//! query, the values of a key-value read) is reserved from the same
//! budgets while it is built, and given back at the instance's next host
//! call (by then it sits in the guest's memory, counted there) or at its
//! end.

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
    /// What this store reserved from both budgets: its linear memory...
    held: usize,
    /// ...and what the host holds for it (see [`Limiter::hold`]).
    buffers: usize,
}

impl Limiter {
    pub fn new(instance: usize, component: Arc<Budget>, host: Arc<Budget>) -> Limiter {
        Limiter {
            instance,
            component,
            host,
            held: 0,
            buffers: 0,
        }
    }

    /// Reserves `bytes` from both budgets, or says which one is spent.
    fn reserve(&self, bytes: usize) -> Result<(), OverBudget> {
        if !self.component.reserve(bytes) {
            return Err(OverBudget("the component's"));
        }
        if !self.host.reserve(bytes) {
            self.component.release(bytes);
            return Err(OverBudget("the host's"));
        }
        Ok(())
    }

    /// Reserves `bytes` the host holds for the instance, a result on its
    /// way into it, until [`Limiter::release_buffers`] or the end.
    pub fn hold(&mut self, bytes: usize) -> Result<(), OverBudget> {
        self.reserve(bytes)?;
        self.buffers += bytes;
        Ok(())
    }

    /// Gives back what [`Limiter::hold`] reserved: at the instance's next
    /// host call, the last one's result is in the guest's memory.
    pub fn release_buffers(&mut self) {
        self.component.release(self.buffers);
        self.host.release(self.buffers);
        self.buffers = 0;
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.instance {
            // The guest sees a failed `memory.grow`, as with any maximum.
            return Ok(false);
        }
        let more = desired.saturating_sub(current);
        self.reserve(more)?;
        self.held += more;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|maximum| desired <= maximum))
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.release_buffers();
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

    #[test]
    fn what_the_host_holds_for_an_instance_is_reserved_until_its_next_call() {
        let (component, host) = (Arc::new(Budget::new(100)), Arc::new(Budget::new(1000)));
        let mut limiter = Limiter::new(80, component.clone(), host.clone());
        assert!(limiter.memory_growing(0, 50, None).unwrap());
        limiter.hold(30).unwrap();
        assert!(limiter.hold(30).is_err(), "50 + 30 + 30 is over 100");
        assert_eq!((component.held(), host.held()), (80, 80));
        limiter.release_buffers();
        assert_eq!((component.held(), host.held()), (50, 50));
        limiter.hold(50).unwrap();
        drop(limiter);
        assert_eq!((component.held(), host.held()), (0, 0));
    }
}
