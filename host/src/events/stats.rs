//! What the admin API shows of each subscription besides its position.

use std::collections::HashMap;
use std::sync::Mutex;

use super::log::Offsets;

/// What the admin API shows of a subscription besides its position.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionStats {
    /// Where the dispatcher stands, ahead of the positions it last saved.
    pub positions: Option<Offsets>,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
}

/// Per (consumer, topic) delivery statistics, in memory.
#[derive(Default)]
pub struct Stats(Mutex<HashMap<(String, String), SubscriptionStats>>);

impl Stats {
    pub fn get(&self, consumer: &str, topic: &str) -> SubscriptionStats {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(consumer.to_string(), topic.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    pub fn update(&self, consumer: &str, topic: &str, f: impl FnOnce(&mut SubscriptionStats)) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry((consumer.to_string(), topic.to_string())).or_default());
    }
}
