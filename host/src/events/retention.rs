//! Retention: deletes delivered events beyond the configured age, count or
//! half the topic's quota, dead letters beyond their age or size, and inbox
//! rows of events no longer in the log.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::events::log::{DeadLetters, EventBus, Keep, Offsets};
use crate::instance::registry::Registry;
use crate::store::host_tables;

pub(super) async fn retention(
    config: Arc<crate::Config>,
    registry: Arc<Registry>,
    bus: Arc<dyn EventBus>,
    dead_letters: Arc<dyn DeadLetters>,
    topic_full: Arc<Notify>,
    token: CancellationToken,
) {
    let delivery = config.delivery;
    let hours_ago = |hours: u64| {
        if hours == 0 {
            0
        } else {
            now_ms().saturating_sub(hours * 3_600_000)
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delivery.retention_interval_ms)) => {}
            _ = topic_full.notified() => {}
            _ = token.cancelled() => return,
        }
        let before = hours_ago(delivery.retention_hours);
        // Every topic in the log: one per component (its own), whether or
        // not anyone subscribes to it.
        for (topic, publisher) in &config.components {
            // Per partition, what every consumer is done with (`None`:
            // nobody reads the topic).
            let mut delivered: Option<Offsets> = None;
            for (name, settings) in &config.components {
                if settings.topics().any(|t| t == topic) {
                    let committed = bus.committed(name, topic).await.unwrap_or_default();
                    delivered = Some(match delivered {
                        None => committed,
                        Some(before) => before
                            .into_iter()
                            .filter_map(|(partition, at)| Some((partition, at.min(*committed.get(&partition)?))))
                            .collect(),
                    });
                }
            }
            // Delivered events keep at most half the topic's quota, so that
            // the other half always has room for new ones.
            let keep = Keep {
                since: before,
                events: delivery.retention_events,
                bytes: publisher.limits.log_bytes() / 2,
            };
            match bus.prune(topic, delivered.as_ref(), keep).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(topic, pruned, "old events deleted from the log"),
                Err(err) => tracing::error!(topic, cause = %format!("{err:#}"), "retention failed"),
            }
        }
        let dead_before = hours_ago(delivery.dead_letter_hours);
        // 0 keeps them all, as for dead_letter_hours.
        let dead_bytes = match delivery.dead_letter_mib {
            0 => i64::MAX.unsigned_abs(),
            mib => mib.saturating_mul(1024 * 1024).min(i64::MAX.unsigned_abs()),
        };
        match dead_letters.expire(dead_before, dead_bytes).await {
            Ok(0) => {}
            Ok(pruned) => tracing::warn!(pruned, "old dead letters deleted"),
            Err(err) => tracing::error!(cause = %format!("{err:#}"), "dead-letter retention failed"),
        }
        // Inbox rows only guard against redelivery of events still in the log.
        if before > 0 {
            for loaded in registry.all() {
                let conn = loaded.slot.db.lock().await;
                if let Err(err) = host_tables::inbox_prune(&conn, before) {
                    tracing::error!(component = %loaded.name(), cause = %err, "inbox retention failed");
                }
            }
        }
    }
}
