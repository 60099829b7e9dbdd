//! Call policies of a link: bulkhead, circuit breaker and retries — what
//! Istio's destination rules gave the original system, inside the host.
//!
//! The [`Breaker`] is pure logic over explicit instants, so it is unit
//! tested without clocks; [`Policy`] combines it with a semaphore.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::{CircuitConfig, Link};

/// Why a call was refused before reaching the callee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("circuit open")]
    CircuitOpen,
    #[error("too many concurrent calls")]
    BulkheadFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe call is let through; its outcome closes or reopens.
    HalfOpen {
        probing: bool,
    },
}

/// A circuit breaker: opens after `consecutive_failures` failures in a row,
/// or when failures reach `failure_ratio` of the last `window` calls; stays
/// open for `open_ms`; then lets one probe through.
#[derive(Debug)]
pub struct Breaker {
    config: CircuitConfig,
    state: State,
    consecutive: u32,
    /// Outcomes of the last calls, `true` for a failure.
    window: VecDeque<bool>,
}

/// What [`Breaker::admit`] granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Normal,
    Probe,
}

impl Breaker {
    pub fn new(config: CircuitConfig) -> Breaker {
        Breaker {
            config,
            state: State::Closed,
            consecutive: 0,
            window: VecDeque::new(),
        }
    }

    pub fn admit(&mut self, now: Instant) -> Result<Admission, Refused> {
        match self.state {
            State::Closed => Ok(Admission::Normal),
            State::Open { until } if now < until => Err(Refused::CircuitOpen),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                Ok(Admission::Probe)
            }
            State::HalfOpen { probing: true } => Err(Refused::CircuitOpen),
        }
    }

    pub fn record(&mut self, now: Instant, admission: Admission, failed: bool) {
        if admission == Admission::Probe {
            if failed {
                self.open(now);
            } else {
                self.state = State::Closed;
                self.consecutive = 0;
                self.window.clear();
            }
            return;
        }
        self.consecutive = if failed { self.consecutive + 1 } else { 0 };
        self.window.push_back(failed);
        if self.window.len() > self.config.window as usize {
            self.window.pop_front();
        }
        let failures = self.window.iter().filter(|failed| **failed).count();
        let full = self.window.len() >= self.config.window as usize;
        let ratio_tripped = full && failures as f64 >= self.config.failure_ratio * self.window.len() as f64;
        if self.state == State::Closed && (self.consecutive >= self.config.consecutive_failures || ratio_tripped) {
            self.open(now);
        }
    }

    /// A call admitted but never recorded (refused by the bulkhead, or its
    /// caller went away) says nothing about the callee: a probe lets
    /// another one try.
    pub fn abandon(&mut self, admission: Admission) {
        if admission == Admission::Probe {
            self.state = State::HalfOpen { probing: false };
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open {
            until: now + Duration::from_millis(self.config.open_ms),
        };
        self.consecutive = 0;
        self.window.clear();
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half-open",
        }
    }
}

/// The policy of one link: a bulkhead of `max_concurrent` calls with at most
/// `max_queue` callers waiting, and a breaker.
pub struct Policy {
    pub link: Link,
    bulkhead: Semaphore,
    waiting: AtomicUsize,
    breaker: Mutex<Breaker>,
}

/// A call let through: holds its bulkhead slot until dropped.
pub struct Ticket<'a> {
    _permit: SemaphorePermit<'a>,
    admitted: Admitted<'a>,
}

/// What the breaker granted, until the call's outcome is recorded; dropped
/// unrecorded, it is abandoned ([`Breaker::abandon`]), so that the circuit
/// does not stay half-open for good.
struct Admitted<'a> {
    policy: &'a Policy,
    admission: Admission,
    recorded: bool,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.policy.breaker().abandon(self.admission);
        }
    }
}

/// A caller waiting for a bulkhead slot: leaves the queue when dropped,
/// also when the caller gives up waiting.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    /// Joins the queue, unless `max` callers are waiting already.
    fn join(waiting: &'a AtomicUsize, max: usize) -> Option<Queued<'a>> {
        let ahead = waiting.fetch_add(1, Ordering::SeqCst);
        let queued = Queued(waiting);
        (ahead < max).then_some(queued)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Policy {
    pub fn new(link: Link) -> Policy {
        Policy {
            bulkhead: Semaphore::new(link.max_concurrent as usize),
            waiting: AtomicUsize::new(0),
            breaker: Mutex::new(Breaker::new(link.circuit)),
            link,
        }
    }

    /// Admits a call, or refuses it at once: circuit open, or bulkhead and
    /// its queue full. A queued caller waits for a slot.
    pub async fn admit(&self) -> Result<Ticket<'_>, Refused> {
        let admitted = Admitted {
            policy: self,
            admission: self.breaker().admit(Instant::now())?,
            recorded: false,
        };
        let permit = match self.bulkhead.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let _queued = Queued::join(&self.waiting, self.link.max_queue as usize).ok_or(Refused::BulkheadFull)?;
                // The semaphore is never closed.
                self.bulkhead.acquire().await.expect("bulkhead semaphore is open")
            }
        };
        Ok(Ticket {
            _permit: permit,
            admitted,
        })
    }

    /// Records how an admitted call went: a failure is an error or a call
    /// slower than `slow_call_ms`.
    pub fn record(&self, ticket: Ticket<'_>, failed: bool, elapsed: Duration) {
        let mut admitted = ticket.admitted;
        admitted.recorded = true;
        let slow = elapsed >= Duration::from_millis(self.link.circuit.slow_call_ms);
        self.breaker()
            .record(Instant::now(), admitted.admission, failed || slow);
    }

    pub fn circuit_state(&self) -> &'static str {
        self.breaker().state_name()
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;

    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(CircuitConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            window: 10,
            open_ms: 1000,
            slow_call_ms: 500,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_probe() {
        let start = Instant::now();
        let mut b = breaker();
        for _ in 0..2 {
            let a = b.admit(start).unwrap();
            b.record(start, a, true);
        }
        assert_eq!(b.state_name(), "closed");
        let a = b.admit(start).unwrap();
        b.record(start, a, true);
        assert_eq!(b.admit(start), Err(Refused::CircuitOpen));

        let later = start + Duration::from_millis(1001);
        assert_eq!(b.admit(later), Ok(Admission::Probe));
        assert_eq!(b.admit(later), Err(Refused::CircuitOpen), "one probe at a time");
        b.record(later, Admission::Probe, true);
        assert_eq!(b.admit(later), Err(Refused::CircuitOpen), "a failed probe reopens");

        let abandoned = later + Duration::from_millis(1001);
        assert_eq!(b.admit(abandoned), Ok(Admission::Probe));
        b.abandon(Admission::Probe);
        assert_eq!(
            b.admit(abandoned),
            Ok(Admission::Probe),
            "an abandoned probe lets another try"
        );
        b.record(abandoned, Admission::Probe, true);

        let much_later = abandoned + Duration::from_millis(1001);
        assert_eq!(b.admit(much_later), Ok(Admission::Probe));
        b.record(much_later, Admission::Probe, false);
        assert_eq!(b.admit(much_later), Ok(Admission::Normal));
    }

    fn policy(max_concurrent: u32, max_queue: u32) -> Policy {
        let link: Link = toml::from_str(&format!(
            "from = 'order'\nto = 'payment'\ninterface = 'i'\n\
             max_concurrent = {max_concurrent}\nmax_queue = {max_queue}\n\
             [circuit]\nconsecutive_failures = 1\nopen_ms = 0"
        ))
        .unwrap();
        Policy::new(link)
    }

    #[test]
    fn a_probe_that_never_finishes_lets_another_one_try() {
        let policy = policy(1, 0);
        let ticket = policy.admit().now_or_never().unwrap().unwrap();
        policy.record(ticket, true, Duration::ZERO);
        assert_eq!(policy.circuit_state(), "open");

        // The probe's caller goes away before the call returns.
        let probe = policy.admit().now_or_never().unwrap().unwrap();
        assert_eq!(policy.circuit_state(), "half-open");
        drop(probe);
        let probe = policy.admit().now_or_never().unwrap().expect("a new probe");
        policy.record(probe, false, Duration::ZERO);
        assert_eq!(policy.circuit_state(), "closed");
    }

    #[test]
    fn a_caller_that_stops_waiting_leaves_the_queue() {
        let policy = policy(1, 1);
        let _busy = policy.admit().now_or_never().unwrap().unwrap();
        let mut waiting = Box::pin(policy.admit());
        assert!(waiting.as_mut().now_or_never().is_none(), "queued");
        assert!(matches!(
            policy.admit().now_or_never(),
            Some(Err(Refused::BulkheadFull))
        ));
        // The caller times out, dropping its wait: its place is free again.
        drop(waiting);
        assert!(policy.admit().now_or_never().is_none(), "queued again");
    }

    #[test]
    fn opens_on_the_failure_ratio_of_a_full_window() {
        let now = Instant::now();
        let mut b = breaker();
        // Alternating failures never make three in a row, but half fail.
        for i in 0..9 {
            let a = b.admit(now).unwrap();
            b.record(now, a, i % 2 == 0);
        }
        assert_eq!(b.state_name(), "closed", "the window is not full yet");
        let a = b.admit(now).unwrap();
        b.record(now, a, true);
        assert_eq!(b.state_name(), "open");
    }
}
