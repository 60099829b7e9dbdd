//! Recording metrics: counters and histograms, recorded where things
//! happen (requests, traps, instantiations, deliveries). `http::metrics`
//! adds the gauges that describe the present and serves them.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// Everything recorded so far, in Prometheus text format.
pub fn render() -> String {
    handle().render()
}
