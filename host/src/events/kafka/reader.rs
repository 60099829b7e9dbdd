//! What a dispatcher reads a topic with: a group member that checks that
//! each partition's records come in order.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::consumer::StreamConsumer;

use crate::events::log::{Offsets, Record};

/// A group member reading one topic.
pub(super) struct Reader {
    pub(super) consumer: Arc<StreamConsumer>,
    /// Per partition, the offset of the last record read (`None`: to be
    /// assigned anew).
    pub(super) next: Option<Offsets>,
    /// Per partition, an offset found missing and how many fetches in a row
    /// skipped it.
    pub(super) missing: HashMap<u32, (u64, u32)>,
}

/// Whether a read takes a record.
pub(super) enum Take {
    Yes,
    /// Read before (a fetch from before the last assignment): dropped.
    Seen,
    /// Past a record not read yet: the partition is fetched again.
    Refetch,
}

/// Fetches in a row that may skip an offset before it counts as missing
/// from the partition (deleted by the broker's retention, say).
const SKIPS_BEFORE_MISSING: u32 = 3;

impl Reader {
    /// Offsets of a partition follow each other (our producer is
    /// idempotent, not transactional, and topics are not compacted), and
    /// a position must never pass a record not delivered: a record out of
    /// order (seen from some brokers and after a reassignment) is dropped
    /// or makes the partition be fetched again.
    pub(super) fn take(&mut self, record: &Record) -> Take {
        let Some(next) = self.next.as_mut() else {
            return Take::Seen;
        };
        let expected = next.get(&record.partition).copied().unwrap_or(0) + 1;
        if record.offset < expected {
            return Take::Seen;
        }
        if record.offset > expected {
            let skips = self.missing.entry(record.partition).or_insert((expected, 0));
            if skips.0 != expected {
                *skips = (expected, 0);
            }
            skips.1 += 1;
            if skips.1 < SKIPS_BEFORE_MISSING {
                self.next = None;
                return Take::Refetch;
            }
            tracing::warn!(
                partition = record.partition,
                from = expected,
                to = record.offset - 1,
                "offsets missing from the partition; going on after them"
            );
        }
        self.missing.remove(&record.partition);
        next.insert(record.partition, record.offset);
        Take::Yes
    }
}
