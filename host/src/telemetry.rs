//! Metrics in Prometheus text format (`GET /metrics`) and request ids.
//!
//! Counters and histograms are recorded where things happen (requests,
//! traps, deliveries); gauges that describe the present (instances in
//! flight, circuit states, event lag) are read from the runtime at scrape
//! time, so they cannot drift.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runtime::Runtime;

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder (the `metrics` facade has one global).
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        // Setting buckets only fails for an empty list.
        let builder = builder.set_buckets(BUCKETS).expect("non-empty buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}

/// How often histogram samples are folded into their buckets.
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the recorder and, until `token` is cancelled, folds the samples
/// histograms collect into their buckets every [`UPKEEP`]. The recorder
/// keeps every sample until then: without upkeep, a host that nobody
/// scrapes grows by a dozen bytes per request.
pub fn start(token: &CancellationToken, tracker: &TaskTracker) {
    let handle = handle();
    let token = token.clone();
    tracker.spawn(async move {
        let mut ticks = tokio::time::interval(UPKEEP);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while token.run_until_cancelled(ticks.tick()).await.is_some() {
            handle.run_upkeep();
        }
    });
}

pub fn record_request(component: &str, status: u16, elapsed: Duration) {
    let labels = [("component", component.to_string()), ("status", status.to_string())];
    metrics::counter!("rentcar_requests_total", &labels).increment(1);
    metrics::histogram!("rentcar_request_duration_seconds", "component" => component.to_string())
        .record(elapsed.as_secs_f64());
}

/// Creating a fresh instance for one invocation.
pub fn record_instantiation(component: &str, elapsed: Duration) {
    metrics::histogram!("rentcar_instantiation_seconds", "component" => component.to_string())
        .record(elapsed.as_secs_f64());
}

/// A guest trapped (or ran out of its deadline).
pub fn record_trap(component: &str, deadline: bool) {
    let kind = if deadline { "deadline" } else { "trap" };
    metrics::counter!("rentcar_traps_total", "component" => component.to_string(), "kind" => kind).increment(1);
}

pub fn record_deliveries(consumer: &str, topic: &str, outcome: &'static str, count: usize) {
    let labels = [
        ("consumer", consumer.to_string()),
        ("topic", topic.to_string()),
        ("outcome", outcome.to_string()),
    ];
    metrics::counter!("rentcar_event_deliveries_total", &labels).increment(count as u64);
}

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
    if LAG_REFRESH.claim(Instant::now()) {
        for sub in runtime.subscription_logs().await.unwrap_or_default() {
            let labels = [("consumer", sub.consumer), ("topic", sub.topic)];
            metrics::gauge!("rentcar_event_lag", &labels).set(sub.log.lag as f64);
        }
    }
    handle().render()
}

/// How often a scrape counts the event lag again.
const LAG_EVERY: Duration = Duration::from_secs(1);

static LAG_REFRESH: Throttle = Throttle::new(LAG_EVERY);

/// Lets something happen at most once per period.
struct Throttle {
    period: Duration,
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    const fn new(period: Duration) -> Throttle {
        Throttle {
            period,
            last: Mutex::new(None),
        }
    }

    /// Whether it may happen at `now`; if so, the next time is a period on.
    fn claim(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|last| now < last + self.period) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// The id of a request: the caller's `x-request-id` if it is sane, else a
/// new UUIDv7. It follows the request through synchronous calls and into
/// the events it causes.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_string)
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
