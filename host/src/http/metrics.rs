//! `GET /metrics`: what telemetry recorded, and gauges that describe the
//! present (instances in flight, circuit states, event lag), read from the
//! runtime at scrape time so they cannot drift.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::runtime::Runtime;
use crate::telemetry;

/// The text of `GET /metrics`.
pub async fn render(runtime: &Runtime) -> String {
    for status in runtime.registry.statuses() {
        let component = status.name.clone();
        metrics::gauge!("rentcar_instances_in_flight", "component" => component.clone()).set(status.in_flight as f64);
        let running = if status.state == "running" { 1.0 } else { 0.0 };
        metrics::gauge!("rentcar_component_running", "component" => component).set(running);
    }
    for policy in &runtime.policies {
        let state = match policy.circuit_state() {
            "closed" => 0.0,
            "half-open" => 0.5,
            _ => 1.0,
        };
        let link = &policy.link;
        metrics::gauge!("rentcar_circuit_open", "from" => link.from.clone(), "to" => link.to.clone()).set(state);
    }
    // Lag is counted in the log, which costs more the longer the log: at
    // most once per LAG_EVERY, however often (or by how many) it is scraped.
    // Scrapes that arrive during a count wait for it, so none answers
    // without the gauges.
    let mut counted = LAG_COUNTED.lock().await;
    if counted.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
        for sub in runtime.subscription_logs().await.unwrap_or_default() {
            let lag = sub.lag() as f64;
            let labels = [("consumer", sub.consumer), ("topic", sub.topic)];
            metrics::gauge!("rentcar_event_lag", &labels).set(lag);
        }
        *counted = Some(Instant::now());
    }
    drop(counted);
    telemetry::render()
}

/// How often a scrape counts the event lag again.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// When the lag was last counted.
static LAG_COUNTED: tokio::sync::Mutex<Option<Instant>> = tokio::sync::Mutex::const_new(None);

/// Lets something happen at most once per period.
pub(super) struct Throttle {
    period: Duration,
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    pub(super) const fn new(period: Duration) -> Throttle {
        Throttle {
            period,
            last: Mutex::new(None),
        }
    }

    /// Whether it may happen at `now`; if so, the next time is a period on.
    pub(super) fn claim(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|last| now < last + self.period) {
            return false;
        }
        *last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Throttle;

    #[test]
    fn a_throttle_lets_one_through_per_period() {
        let throttle = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(throttle.claim(t0));
        assert!(!throttle.claim(t0), "a second scrape at once");
        assert!(!throttle.claim(t0 + Duration::from_millis(999)));
        assert!(throttle.claim(t0 + Duration::from_secs(1)));
    }
}
