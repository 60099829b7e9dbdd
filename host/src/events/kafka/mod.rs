//! The Kafka event log: [`EventBus`] over a Kafka cluster, with rdkafka
//! (librdkafka), speaking only the Kafka protocol.
//!
//! - A topic `t` is the broker's `<prefix>t`, created at start with the
//!   configured partitions if missing. An event is one record: its key the
//!   correlation key (partitioned with `murmur2_random`, Kafka's Java
//!   default and our [`partition`](super::partition::partition)), its value
//!   the payload, the rest of its envelope in headers.
//! - The producer is idempotent (`enable.idempotence`, `acks=all`): an
//!   append returns once the broker acknowledged every event, so the relay
//!   deletes outbox rows only then. A producer the broker fenced, or that
//!   hit a fatal error, refuses every event from then on: it is replaced
//!   by a new one (a new producer id), and the relay's next try goes
//!   through that. (tansu fences a producer whose epoch librdkafka bumped
//!   after a request timed out.)
//! - Each subscribing component is the consumer group `<prefix><name>`,
//!   which each of its dispatchers joins (`subscribe`): alone, it holds
//!   every partition; beside other hosts running the component, the group
//!   splits the partitions among them, and a rebalance loses no event and
//!   applies none twice (see `reader.rs`). A dispatcher reads the
//!   partitions it holds from its positions and commits them to the group.
//!   Our offsets are Kafka's plus one, so a position (the last offset done)
//!   is Kafka's committed offset (the next to read). A host that dies
//!   holds its partitions until its session times out (6 s), so a host
//!   restarted after a crash waits that long for them.
//! - Retention is the broker's: `prune` deletes nothing and topics have no
//!   byte count here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use futures::FutureExt as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use tokio::sync::watch;

use self::reader::{Member, Reader, Take};
use self::records::{produce, to_record};
use super::log::{Appended, Envelope, EventBus, Keep, Offsets, PartitionStats, Reassigned, Record};
use crate::config::Bus;

mod reader;
mod records;

/// How long a read waits for a first event before it answers "none yet".
const FIRST_EVENT_WAIT: Duration = Duration::from_millis(250);
/// How long the broker may hold a fetch with nothing to answer: an event
/// appended meanwhile may wait for the next one.
const FETCH_WAIT_MS: &str = "50";
/// How long a group waits for a member that stopped heartbeating before it
/// hands the member's partitions to the others.
const SESSION_TIMEOUT_MS: &str = "6000";
const HEARTBEAT_MS: &str = "1000";
/// How long the host waits, when it stops, for its members to leave.
const LEAVE_WAIT: Duration = Duration::from_secs(5);
/// How long a request about metadata, offsets or watermarks may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an event may wait for the broker before its append fails (and
/// the relay, which keeps it in the outbox, tries again).
const DELIVERY_TIMEOUT_MS: &str = "10000";

pub struct KafkaBus {
    client: ClientConfig,
    /// The settings of every group member this host makes.
    consumer_config: ClientConfig,

    prefix: String,
    partitions: u32,
    /// Its settings, to make a new one after a fatal error.
    producer_config: ClientConfig,
    producer: Mutex<Arc<FutureProducer>>,
    /// Asks the broker about topics (metadata, watermarks); in no group.
    meta: Arc<BaseConsumer>,
    /// Per (consumer, topic), the consumer its dispatcher reads with.
    readers: Mutex<HashMap<(String, String), Shared<Reader>>>,
    /// Per topic, its partition count once known.
    counts: Mutex<HashMap<String, u32>>,
    /// Watched by the dispatchers; marked with the count of appends.
    appended: Appended,
    appends: AtomicU64,
    /// Whether every topic exists on the broker (see [`KafkaBus::prepare`]).
    ready: AtomicBool,
}

/// Held across awaits by one task at a time.
type Shared<T> = Arc<tokio::sync::Mutex<T>>;

impl KafkaBus {
    /// A bus on the brokers of `settings`. Nothing is asked of the broker
    /// yet: [`KafkaBus::prepare`] creates the topics.
    pub fn new(settings: &Bus) -> anyhow::Result<KafkaBus> {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", settings.brokers.as_deref().unwrap_or_default());
        let mut consumer = client.clone();
        consumer
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", FETCH_WAIT_MS)
            // A member that stops heartbeating (a host killed) has its
            // partitions handed to the others after this long.
            .set("session.timeout.ms", SESSION_TIMEOUT_MS)
            .set("heartbeat.interval.ms", HEARTBEAT_MS);
        let mut producer = client.clone();
        producer
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", DELIVERY_TIMEOUT_MS)
            .set("linger.ms", "1")
            // One record per batch: tansu answers a fetch from the middle
            // of a batch with the next batch, so a consumer resuming there
            // would skip records. `[bus.client]` may raise it for brokers
            // that do not (Apache Kafka, Redpanda).
            .set("batch.num.messages", "1");
        // Settings of `[bus.client]` go last: the operator's word wins.
        for (key, value) in &settings.client {
            client.set(key, value);
            consumer.set(key, value);
            producer.set(key, value);
        }
        let producer_config = producer;
        let producer = producer_config.create().context("cannot create the Kafka producer")?;
        let meta = client.create().context("cannot create a Kafka client")?;
        Ok(KafkaBus {
            meta: Arc::new(meta),
            client,
            consumer_config: consumer,
            prefix: settings.topic_prefix.clone(),
            partitions: settings.partitions,
            producer_config,
            producer: Mutex::new(Arc::new(producer)),
            readers: Mutex::default(),
            counts: Mutex::default(),
            appended: Appended::default(),
            appends: AtomicU64::new(0),
            ready: AtomicBool::new(false),
        })
    }

    /// The broker's name of `topic`.
    fn name(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// Replaces `failed` with a new producer if the broker fenced it or it
    /// hit a fatal error (`err` is what it answered), unless another append
    /// replaced it already.
    fn renew_if_fenced(&self, failed: &Arc<FutureProducer>, err: &anyhow::Error) -> anyhow::Result<()> {
        let fenced = err
            .downcast_ref::<KafkaError>()
            .and_then(KafkaError::rdkafka_error_code)
            .filter(|code| *code == RDKafkaErrorCode::ProducerFenced)
            .map(|code| (code, "fenced by the broker".to_string()));
        let Some((code, reason)) = fenced.or_else(|| failed.client().fatal_error()) else {
            return Ok(());
        };
        let mut producer = self.producer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if Arc::ptr_eq(&producer, failed) {
            tracing::warn!(%code, %reason, "the Kafka producer cannot go on; making a new one");
            *producer = Arc::new(
                self.producer_config
                    .create()
                    .context("cannot create the Kafka producer")?,
            );
        }
        Ok(())
    }

    /// The reader of `consumer` for `topic`: a member of the group
    /// `<prefix><consumer>`, which it joins here.
    fn reader(&self, consumer: &str, topic: &str) -> anyhow::Result<Shared<Reader>> {
        let mut readers = self.readers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (consumer.to_string(), topic.to_string());
        if let Some(reader) = readers.get(&key) {
            return Ok(reader.clone());
        }
        let reader = Arc::new(tokio::sync::Mutex::new(Reader {
            consumer: Arc::new(self.join(consumer, topic)?),
            read: Offsets::new(),
            generation: 0,
            missing: HashMap::new(),
        }));
        readers.insert(key, reader.clone());
        Ok(reader)
    }

    /// A new member of `consumer`'s group, reading `topic`.
    fn join(&self, consumer: &str, topic: &str) -> anyhow::Result<StreamConsumer<Member>> {
        let name = self.name(topic);
        let member: StreamConsumer<Member> = self
            .consumer_config
            .clone()
            .set("group.id", format!("{}{consumer}", self.prefix))
            .create_with_context(Member::new(name.clone()))
            .context("cannot create a Kafka consumer")?;
        member.subscribe(&[&name]).context("cannot join the consumer group")?;
        Ok(member)
    }

    /// How many partitions `topic` has, asked of the broker once.
    async fn count(&self, topic: &str) -> anyhow::Result<u32> {
        if let Some(&count) = self.counts.lock().unwrap_or_else(|p| p.into_inner()).get(topic) {
            return Ok(count);
        }
        let (consumer, name) = (self.meta.clone(), self.name(topic));
        let count = blocking(move || {
            let metadata = consumer.fetch_metadata(Some(&name), ASK_TIMEOUT)?;
            Ok(metadata.topics().first().map_or(0, |t| t.partitions().len() as u32))
        })
        .await?;
        if count > 0 {
            self.counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(topic.to_string(), count);
        }
        Ok(count)
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    /// Creates the `topics` that are missing, with the configured
    /// partitions; until it succeeds the bus is not ready.
    async fn prepare(&self, topics: &[String]) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> =
            self.client.create().context("cannot create the Kafka admin client")?;
        let names: Vec<String> = topics.iter().map(|topic| self.name(topic)).collect();
        let new: Vec<NewTopic<'_>> = names
            .iter()
            .map(|name| NewTopic::new(name, self.partitions as i32, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new()
            .operation_timeout(Some(ASK_TIMEOUT))
            .request_timeout(Some(ASK_TIMEOUT));
        let results = admin
            .create_topics(&new, &options)
            .await
            .context("cannot create topics")?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
            }
        }
        self.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn append(&self, events: &[Envelope]) -> anyhow::Result<()> {
        let producer = self
            .producer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let produced = produce(&producer, events, |topic| self.name(topic)).await;
        if let Err(err) = &produced {
            self.renew_if_fenced(&producer, err)?;
        }
        produced?;
        let count = self.appends.fetch_add(1, Ordering::Relaxed) + 1;
        self.appended.tell(events, count);
        Ok(())
    }

    async fn read(&self, consumer: &str, topic: &str, after: &Offsets, limit: usize) -> anyhow::Result<Vec<Record>> {
        let reader = self.reader(consumer, topic)?;
        let mut reader = reader.lock().await;
        let count = self.count(topic).await?;
        if count == 0 {
            // Not on the broker yet: `prepare` is still trying.
            return Ok(Vec::new());
        }
        if reader.consumer.context().stuck(count) {
            // Seen on tansu after the broker stalled past the session
            // timeout, and after a member of the group was killed.
            tracing::warn!(
                topic,
                partitions = count,
                "the consumer group has left this member without some partitions; joining it anew"
            );
            let stuck = std::mem::replace(&mut reader.consumer, Arc::new(self.join(consumer, topic)?));
            (reader.read, reader.generation) = (Offsets::new(), 0);
            tokio::task::spawn_blocking(move || drop(stuck));
            return Err(Reassigned.into());
        }

        let from: Offsets = (0..count)
            .map(|partition| (partition, after.get(&partition).copied().unwrap_or(0)))
            .collect();
        reader.seek(&self.name(topic), &from).await?;
        let mut records = Vec::new();
        let consumer = reader.consumer.clone();
        // The group's callbacks run within `recv`: a record received after
        // they changed the partitions held is of the new share, though
        // read in this one, and its partition is sought again.
        let reassigned = |generation| consumer.context().share().generation != generation;
        let mut astray = None;
        let mut message = match tokio::time::timeout(FIRST_EVENT_WAIT, consumer.recv()).await {
            Ok(message) => Some(message?.detach()),
            Err(_) => None,
        };
        while let Some(owned) = message.take() {
            if reassigned(reader.generation) {
                astray = Some(owned.partition() as u32);
                break;
            }
            let record = to_record(&owned, topic)?;
            match reader.take(&record) {
                Take::Yes => records.push(record),
                Take::Seen => {}
                Take::Refetch => {
                    tracing::debug!(
                        topic,
                        partition = record.partition,
                        offset = record.offset,
                        "a record out of order; fetching its partition again"
                    );
                    break;
                }
            }
            if records.len() >= limit {
                break;
            }
            message = match consumer.recv().now_or_never() {
                Some(message) => Some(message?.detach()),
                None => None,
            };
        }
        if reassigned(reader.generation) {
            // What this read took is void, and so is the dispatcher's view.
            let share = consumer.context().share();
            reader.generation = share.generation;
            reader.read = share.held.clone();
            if let Some(partition) = astray {
                reader.read.remove(&partition);
            }
            return Err(Reassigned.into());
        }
        Ok(records)
    }

    async fn committed(&self, consumer: &str, topic: &str) -> anyhow::Result<Offsets> {
        let reader = self.reader(consumer, topic)?;
        let consumer = reader.lock().await.consumer.clone();
        let count = self.count(topic).await?;
        let all: Offsets = (0..count).map(|partition| (partition, 0)).collect();
        let list = list(&self.name(topic), &all)?;
        let committed = blocking(move || Ok(consumer.committed_offsets(list, ASK_TIMEOUT)?)).await?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|element| match element.offset() {
                Offset::Offset(offset) if offset >= 0 => Some((element.partition() as u32, offset as u64)),
                _ => None,
            })
            .collect())
    }

    async fn commit(&self, consumer: &str, topic: &str, positions: &Offsets) -> anyhow::Result<()> {
        let reader = self.reader(consumer, topic)?;
        let consumer = reader.lock().await.consumer.clone();
        // Only where this member holds the partition: another member's
        // position there is newer than ours.
        let held: Offsets = {
            let mut share = consumer.context().share();
            let held: Offsets = positions
                .iter()
                .filter(|(partition, _)| share.held.contains_key(partition))
                .map(|(&partition, &position)| (partition, position))
                .collect();
            share.done.extend(&held);
            held
        };
        if held.is_empty() {
            return Ok(());
        }
        let list = list(&self.name(topic), &held)?;
        blocking(move || Ok(consumer.commit(&list, CommitMode::Sync)?)).await
    }

    /// Commits offset 0 in every partition, whoever holds it: the group
    /// starts over.
    async fn rewind(&self, consumer: &str, topic: &str) -> anyhow::Result<()> {
        let reader = self.reader(consumer, topic)?;
        let consumer = reader.lock().await.consumer.clone();
        let count = self.count(topic).await?;
        let start: Offsets = (0..count).map(|partition| (partition, 0)).collect();
        consumer.context().share().done.extend(&start);
        let list = list(&self.name(topic), &start)?;
        blocking(move || Ok(consumer.commit(&list, CommitMode::Sync)?)).await
    }

    fn watch(&self, topic: &str) -> watch::Receiver<u64> {
        self.appended.watch(topic)
    }

    async fn partitions(&self, topic: &str, positions: &Offsets) -> anyhow::Result<Vec<PartitionStats>> {
        let count = self.count(topic).await?;
        let (consumer, name, positions) = (self.meta.clone(), self.name(topic), positions.clone());
        blocking(move || {
            (0..count)
                .map(|partition| {
                    let (_, high) = consumer.fetch_watermarks(&name, partition as i32, ASK_TIMEOUT)?;
                    let head = high.max(0) as u64;
                    let position = positions.get(&partition).copied().unwrap_or(0);
                    Ok(PartitionStats {
                        partition,
                        position,
                        head,
                        lag: head.saturating_sub(position),
                        retained: None,
                    })
                })
                .collect()
        })
        .await
    }

    async fn topic_bytes(&self, _topic: &str) -> anyhow::Result<u64> {
        Ok(0)
    }

    async fn prune(&self, _topic: &str, _delivered: Option<&Offsets>, _keep: Keep) -> anyhow::Result<usize> {
        Ok(0)
    }

    fn idle_read(&self) -> Option<Duration> {
        // Other hosts append too, unseen by `watch`; `read` waits for them.
        Some(Duration::ZERO)
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Leaves every group: closing a consumer commits its positions and
    /// gives its partitions up (see [`Member`]).
    async fn close(&self) {
        let readers: Vec<Shared<Reader>> = self
            .readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .drain()
            .map(|(_, reader)| reader)
            .collect();
        let count = readers.len();
        // On a thread of its own, so that a broker that does not answer
        // delays the host's exit by LEAVE_WAIT at most.
        let (left, leaving) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            drop(readers);
            let _ = left.send(());
        });
        if tokio::time::timeout(LEAVE_WAIT, leaving).await.is_err() {
            return tracing::warn!(
                groups = count,
                "the consumer groups were not left in time; the broker will drop this host's members"
            );
        }
        tracing::info!(groups = count, "left the consumer groups");
    }
}

/// `positions` as Kafka offsets of the broker's topic `name`.
fn list(name: &str, positions: &Offsets) -> anyhow::Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for (&partition, &position) in positions {
        list.add_partition_offset(name, partition as i32, Offset::Offset(position as i64))?;
    }
    Ok(list)
}

/// Runs a blocking librdkafka call off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}
