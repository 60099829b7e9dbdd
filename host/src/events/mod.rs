//! Moving events: the relay (outbox -> log), the dispatchers (log ->
//! subscriber) and the log's retention.
//!
//! - One relay per component drains its committed outbox rows into the log
//!   in outbox order, then deletes them. A crash between the two appends the
//!   batch again, which the log ignores by event id.
//! - One dispatcher per subscription (component, topic) reads the log from
//!   the consumer's position in batches. A batch is delivered in log order,
//!   in runs of events that share one transaction and one instance. From a
//!   failed event on, the rest of the batch is split into partitions by a
//!   hash of the event key, delivered in parallel, each in log order, so
//!   events with one key keep their order and one key's retries hold up no
//!   other partition of the batch (the next batch waits for all of them).
//!   A failed delivery is retried with exponential backoff; after
//!   `max_attempts` the event goes to the dead letters and its partition
//!   moves on. The position is saved (at most every `SAVE_EVERY`) up to the
//!   last event before which everything was delivered; the consumer's
//!   inbox makes a redelivery harmless.
//! - Retention deletes events every consumer is past, beyond the configured
//!   age or count or half the topic's `log_mib`, and dead letters beyond their
//!   age or total size. A relay whose topic is full of undelivered events
//!   leaves the rest in the outbox (which counts against the component's
//!   `database_mib`) and wakes retention.

mod dispatcher;
pub mod embedded;
pub mod kafka;
pub mod log;
mod pace;
mod partition;
mod relay;
mod retention;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::Config;
use crate::instance::registry::Registry;
use log::{DeadLetters, EventBus};

use dispatcher::Dispatcher;
pub use dispatcher::deliver_once;
use relay::{Outbox, relay};
use retention::retention;
pub use stats::{Stats, SubscriptionStats};

/// Makes the topics of every component on the bus, retrying until the bus
/// can be reached (meanwhile events wait in the outboxes and `/readyz`
/// says the bus is down).
async fn prepare(bus: Arc<dyn EventBus>, topics: Vec<String>, token: CancellationToken) {
    let mut pause = Duration::from_millis(500);
    loop {
        match bus.prepare(&topics).await {
            Ok(()) => return tracing::info!(topics = topics.len(), "event bus ready"),
            Err(err) => tracing::error!(cause = %format!("{err:#}"), "cannot reach the event bus; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = token.cancelled() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// Events moved or read per round trip to a database.
const BATCH: usize = 256;
/// How often a busy dispatcher saves its position, and a busy relay
/// deletes relayed rows from its outbox.
const SAVE_EVERY: Duration = Duration::from_millis(100);

/// What moves events: the components (through the registry, so a swap is
/// seen), the log, and the counters the admin API shows.
pub struct Pipeline {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub bus: Arc<dyn EventBus>,
    pub dead_letters: Arc<dyn DeadLetters>,
    pub stats: Arc<Stats>,
}

/// Starts a relay per component, a dispatcher per subscription and the
/// retention task, until `token` is cancelled.
pub fn start(pipeline: &Pipeline, token: &CancellationToken, tracker: &TaskTracker) {
    let topics: Vec<String> = pipeline.config.components.keys().cloned().collect();
    let span = tracing::info_span!("bus");
    tracker.spawn(prepare(pipeline.bus.clone(), topics, token.clone()).instrument(span));
    // A relay whose topic is full wakes retention before its time.
    let full = Arc::new(Notify::new());
    for loaded in pipeline.registry.all() {
        let (slot, bus, token) = (loaded.slot.clone(), pipeline.bus.clone(), token.clone());
        let linger = pipeline.config.delivery.linger();
        let span = tracing::info_span!("relay", component = %slot.name);
        let outbox = Outbox::new(full.clone());
        tracker.spawn(relay(slot, bus, outbox, linger, token).instrument(span));
    }
    for (name, settings) in pipeline.config.local() {
        for subscription in &settings.subscribe {
            let topic = subscription.topic();
            let dispatcher = Dispatcher {
                consumer: name.clone(),
                topic: topic.to_string(),
                subscription: subscription.clone(),
                registry: pipeline.registry.clone(),
                bus: pipeline.bus.clone(),
                dead_letters: pipeline.dead_letters.clone(),
                stats: pipeline.stats.clone(),
                settings: pipeline.config.delivery,
                token: token.clone(),
            };
            let span = tracing::info_span!("dispatch", consumer = %name, topic = %topic);
            tracker.spawn(dispatcher.run().instrument(span));
        }
    }
    let span = tracing::info_span!("retention");
    tracker.spawn(
        retention(
            pipeline.config.clone(),
            pipeline.registry.clone(),
            pipeline.bus.clone(),
            pipeline.dead_letters.clone(),
            full,
            token.clone(),
        )
        .instrument(span),
    );
}
