//! What a dispatcher reads a topic with: a member of the component's
//! consumer group, holding the partitions the group gave it, checking that
//! each partition's records come in order.
//!
//! A rebalance loses no event and applies none twice:
//! - the group's callbacks run only inside a read, while the dispatcher
//!   applies nothing; before giving partitions up, the member commits the
//!   dispatcher's positions in them (everything before is applied);
//! - a member given partitions starts each at the group's committed offset,
//!   and the read that saw the change answers [`Reassigned`](crate::events::log::Reassigned), so that the
//!   dispatcher drops what it holds and reads its positions again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, RebalanceProtocol, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::{ASK_TIMEOUT, blocking, list};
use crate::events::log::{Offsets, Record};

/// A group member reading one topic.
pub(super) struct Reader {
    pub(super) consumer: Arc<StreamConsumer<Member>>,
    /// Per partition held, the offset of the last record read (missing: to
    /// be sought to the dispatcher's position).
    pub(super) read: Offsets,
    /// The member's generation this reader last answered for.
    pub(super) generation: u64,
    /// Per partition, an offset found missing and how many fetches in a row
    /// skipped it.
    pub(super) missing: HashMap<u32, (u64, u32)>,
}

/// Whether a read takes a record.
pub(super) enum Take {
    Yes,
    /// Read before (a fetch from before the last seek), or of a partition
    /// no longer held: dropped.
    Seen,
    /// Past a record not read yet: the partition is fetched again.
    Refetch,
}

/// Fetches in a row that may skip an offset before it counts as missing
/// from the partition (deleted by the broker's retention, say).
const SKIPS_BEFORE_MISSING: u32 = 3;

impl Reader {
    /// Puts the reader where the dispatcher stands: each partition it holds
    /// whose next record is not the one after `from` is sought there (after
    /// a failure held a partition back, a rewind, a record out of order).
    pub(super) async fn seek(&mut self, name: &str, from: &Offsets) -> anyhow::Result<()> {
        let consumer = self.consumer.clone();
        let held: Vec<u32> = {
            let mut share = consumer.context().share();
            share.done.clone_from(from);
            share.held.keys().copied().collect()
        };
        let astray: Offsets = held
            .into_iter()
            .map(|partition| (partition, from.get(&partition).copied().unwrap_or(0)))
            .filter(|(partition, at)| self.read.get(partition) != Some(at))
            .collect();
        if astray.is_empty() {
            return Ok(());
        }
        let list = list(name, &astray)?;
        let sought = blocking(move || Ok(consumer.seek_partitions(list, ASK_TIMEOUT)?)).await?;
        for element in sought.elements() {
            let partition = element.partition() as u32;
            match element.error() {
                Ok(()) => {
                    self.read.insert(partition, astray[&partition]);
                }
                Err(err) => {
                    tracing::debug!(topic = name, partition, cause = %err, "cannot seek yet; trying at the next read")
                }
            }
        }
        Ok(())
    }

    /// Offsets of a partition follow each other (our producer is
    /// idempotent, not transactional, and topics are not compacted), and
    /// a position must never pass a record not delivered: a record out of
    /// order (seen from some brokers and after a seek) is dropped or makes
    /// the partition be fetched again.
    pub(super) fn take(&mut self, record: &Record) -> Take {
        let Some(&last) = self.read.get(&record.partition) else {
            return Take::Seen;
        };
        let expected = last + 1;
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
                self.read.remove(&record.partition);
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
        self.read.insert(record.partition, record.offset);
        Take::Yes
    }
}

/// A member's share of its group, kept by the group's callbacks.
pub(super) struct Member {
    /// The broker's name of the topic.
    topic: String,
    share: Mutex<Share>,
}

pub(super) struct Share {
    /// Per partition held, the offset it started from when given.
    pub(super) held: Offsets,
    /// Changes at every assignment and revocation.
    pub(super) generation: u64,
    /// The dispatcher's positions: everything up to them is applied.
    pub(super) done: Offsets,
    /// When the member joined, or the group last gave or took partitions.
    changed_at: Instant,
}

impl Share {
    /// Holds no partition, and waits for the group to give some.
    fn hold_nothing(&mut self) {
        self.held.clear();
        self.changed_at = Instant::now();
    }
}

/// How long a member may go without all the topic's partitions before it
/// counts as stuck: well above the session timeout (6 s), so that a killed
/// member, or one this host replaced and whose leave tansu has not taken,
/// is out of the group by the time a new one joins.
const JOIN_PATIENCE: Duration = Duration::from_secs(20);

impl Member {
    pub(super) fn new(topic: String) -> Member {
        Member {
            topic,
            share: Mutex::new(Share {
                held: Offsets::new(),
                generation: 0,
                done: Offsets::new(),
                changed_at: Instant::now(),
            }),
        }
    }

    /// Whether the group has left this member without some of the
    /// topic's `partitions` for too long: a new member should join instead.
    /// On tansu the partitions of a member that died (a host killed and
    /// restarted) are never given to the others when its session ends;
    /// a join makes the group assign them anew. (Members that share a
    /// group, each with part of the partitions, thus rejoin every
    /// `JOIN_PATIENCE`.)
    pub(super) fn stuck(&self, partitions: u32) -> bool {
        let share = self.share();
        share.held.len() < partitions as usize && share.changed_at.elapsed() > JOIN_PATIENCE
    }

    pub(super) fn share(&self) -> MutexGuard<'_, Share> {
        self.share.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Commits the dispatcher's positions in `partitions` before they go.
    fn commit_done(&self, consumer: &BaseConsumer<Member>, partitions: &TopicPartitionList) {
        let mut done = TopicPartitionList::new();
        {
            let share = self.share();
            for element in partitions.elements() {
                let partition = element.partition() as u32;
                if let Some(&position) = share.done.get(&partition) {
                    let _ = done.add_partition_offset(&self.topic, partition as i32, Offset::Offset(position as i64));
                }
            }
        }
        if done.count() == 0 {
            return;
        }
        match consumer.commit(&done, CommitMode::Sync) {
            Ok(()) => {
                tracing::info!(topic = %self.topic, positions = ?offsets(&done), "positions committed before giving partitions up")
            }
            Err(err) => {
                tracing::warn!(topic = %self.topic, cause = %err, "cannot commit positions before giving partitions up; the next owner may apply their events again")
            }
        }
    }

    /// Starts `given` at their committed offsets (the beginning where none).
    fn start(&self, consumer: &BaseConsumer<Member>, given: &TopicPartitionList) -> KafkaResult<TopicPartitionList> {
        let committed = consumer.committed_offsets(given.clone(), ASK_TIMEOUT)?;
        let mut start = TopicPartitionList::new();
        for element in committed.elements() {
            let offset = match element.offset() {
                Offset::Offset(offset) if offset >= 0 => offset,
                _ => 0,
            };
            start.add_partition_offset(element.topic(), element.partition(), Offset::Offset(offset))?;
        }
        Ok(start)
    }
}

impl ClientContext for Member {}

impl ConsumerContext for Member {
    /// The group's default handling, except that positions are committed
    /// before partitions go and given ones start at their committed
    /// offsets, known to the member.
    fn rebalance(&self, consumer: &BaseConsumer<Member>, err: RDKafkaRespErr, partitions: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.start(consumer, partitions).and_then(|start| {
                    if cooperative {
                        consumer.incremental_assign(&start)?;
                    } else {
                        consumer.assign(&start)?;
                    }
                    let mut share = self.share();
                    if !cooperative {
                        share.held.clear();
                    }
                    share.held.extend(offsets(&start));
                    share.changed_at = Instant::now();
                    tracing::info!(topic = %self.topic, held = ?share.held, "partitions given to this member");
                    Ok(())
                })
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.commit_done(consumer, partitions);
                let gone = if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                };
                let mut share = self.share();
                for partition in offsets(partitions).keys() {
                    share.held.remove(partition);
                }
                share.changed_at = Instant::now();
                tracing::info!(topic = %self.topic, held = ?share.held, "partitions taken from this member");
                gone
            }
            other => {
                tracing::warn!(topic = %self.topic, cause = ?other, "the consumer group failed to rebalance");
                self.share().hold_nothing();
                consumer.unassign()
            }
        };
        if let Err(err) = outcome {
            tracing::error!(topic = %self.topic, cause = %err, "cannot take the consumer group's assignment");
            self.share().hold_nothing();
        }
        self.share().generation += 1;
    }
}

/// A list's partitions and offsets in our terms.
fn offsets(list: &TopicPartitionList) -> Offsets {
    list.elements()
        .iter()
        .map(|element| {
            let offset = match element.offset() {
                Offset::Offset(offset) if offset >= 0 => offset as u64,
                _ => 0,
            };
            (element.partition() as u32, offset)
        })
        .collect()
}
