//! Delivering a sink's outbox to a Kafka topic, each message exactly once.
//!
//! Every message carries the headers `velocity-tick` and `velocity-seq` (its place in the
//! tick) and goes to the partition its key hashes to (murmur2, as Kafka's Java client does),
//! so changes of one key stay in order. After a round is acknowledged the task records the
//! tick it reached and each partition's next offset, then deletes the delivered outbox
//! entries. After a crash or a broker error it reads every partition from the recorded offset
//! to the end (once the ends stand still) and skips the messages it finds there: with one
//! request in flight, what reached a partition is a prefix of what was sent to it. This needs
//! no Kafka transactions, which the test broker (tansu) does not have.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::{Result, SinkConfig, SinkError, SinkMessage, decode_outbox, outbox_key, outbox_prefix, progress_key};
use crate::engine::OutputHandle;
use crate::storage::TickWrites;

/// Outbox entries (ticks) sent per round at most.
const TICKS_PER_ROUND: usize = 256;
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the read-back waits for more messages past the partitions' reported ends.
const READBACK_QUIET: Duration = Duration::from_millis(500);
const TICK_HEADER: &str = "velocity-tick";
const SEQ_HEADER: &str = "velocity-seq";

/// Live state of every sink, for SHOW SINKS and `velocity_catalog.sinks`.
pub type SinkRegistry = Arc<RwLock<HashMap<String, SinkStatus>>>;

#[derive(Debug, Default, Clone)]
pub struct SinkStatus {
    pub relation: String,
    pub topic: String,
    pub format: String,
    /// `starting`, `running`, `waiting for the broker`, or `retrying: <error>`.
    pub state: String,
    /// Every change up to this tick is in the topic.
    pub delivered_tick: u64,
    /// Messages sent since the server started.
    pub messages: u64,
}

/// What the task has delivered for sure (stored under [`progress_key`]).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    tick: u64,
    /// Per partition, the offset after the last delivered message: where a restart reads on.
    next_offsets: BTreeMap<i32, i64>,
}

/// Start the task that delivers sink `name` until the sink is dropped. Broker errors are
/// retried with backoff; the outbox keeps every change meanwhile.
pub fn spawn(engine: OutputHandle, registry: SinkRegistry, id: u32, name: String, config: SinkConfig) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        while !dropped(&engine, &name, id) {
            let outcome = match Delivery::connect(&engine, &registry, id, &name, &config).await {
                Ok(mut delivery) => delivery.run().await,
                Err(e) => Err(e),
            };
            let Err(e) = outcome else { break };
            tracing::warn!("sink {name}: {e}; retrying in {backoff:?}");
            set_state(&registry, &name, format!("retrying: {e}"));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        registry.write().expect("registry lock").remove(&name);
    });
}

fn dropped(engine: &OutputHandle, name: &str, id: u32) -> bool {
    !engine.exists(id, name)
}

fn set_state(registry: &SinkRegistry, name: &str, state: String) {
    if let Some(s) = registry.write().expect("registry lock").get_mut(name) {
        s.state = state;
    }
}

struct Delivery<'a> {
    engine: &'a OutputHandle,
    registry: &'a SinkRegistry,
    id: u32,
    name: &'a str,
    topic: &'a str,
    producer: FutureProducer,
    partitions: i32,
    progress: Progress,
    /// Per partition, the last `(tick, seq)` found in the topic past `progress`.
    found: HashMap<i32, (u64, usize)>,
}

impl<'a> Delivery<'a> {
    async fn connect(
        engine: &'a OutputHandle,
        registry: &'a SinkRegistry,
        id: u32,
        name: &'a str,
        config: &'a SinkConfig,
    ) -> Result<Delivery<'a>> {
        let mut client = ClientConfig::new();
        for (k, v) in &config.properties {
            client.set(k, v);
        }
        client.set("bootstrap.servers", &config.brokers).set("client.id", "velocity-sink");
        let admin: AdminClient<DefaultClientContext> = client.create()?;
        let producer: FutureProducer = client
            .clone()
            .set("acks", "all")
            // One request in flight, and messages never expire: what reaches a partition is
            // a prefix of what was sent to it, so a restart can skip exactly that.
            .set("max.in.flight.requests.per.connection", "1")
            .set("message.timeout.ms", "0")
            .create()?;
        let topic = NewTopic::new(&config.topic, config.partitions, TopicReplication::Fixed(1));
        for result in admin.create_topics([&topic], &AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT))).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => return Err(SinkError::Delivery(format!("creating topic {t}: {e}"))),
            }
        }
        let (brokers, topic_name) = (config.brokers.clone(), config.topic.clone());
        let stored = engine.store().get(&progress_key(id))?;
        let (partitions, progress, found) = tokio::task::spawn_blocking(move || read_topic(&brokers, &topic_name, stored))
            .await
            .map_err(|e| SinkError::Delivery(format!("reading the topic back: {e}")))??;
        let delivery = Delivery { engine, registry, id, name, topic: &config.topic, producer, partitions, progress, found };
        tracing::info!(
            "sink {name}: resuming after tick {} at offsets {:?}; already in the topic: {:?}",
            delivery.progress.tick,
            delivery.progress.next_offsets,
            delivery.found
        );
        // A new sink records where the topic ended before it sends anything.
        delivery.save_progress(&[]).await?;
        failpoint("sink-after-readback");
        set_state(registry, name, "running".into());
        Ok(delivery)
    }

    async fn run(&mut self) -> Result<()> {
        let mut ticks = self.engine.subscribe();
        loop {
            if dropped(self.engine, self.name, self.id) {
                return Ok(());
            }
            let prefix = outbox_prefix(self.id);
            let entries = self.engine.store().scan_from(&prefix, &outbox_key(self.id, self.progress.tick + 1), TICKS_PER_ROUND)?;
            if entries.is_empty() {
                tokio::select! {
                    _ = ticks.recv() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            let mut delivered_ticks = Vec::new();
            let mut in_flight = Vec::new();
            for (key, value) in &entries {
                let tick = u64::from_be_bytes(key[prefix.len()..].try_into().map_err(|_| SinkError::CorruptOutbox(self.id))?);
                for (seq, message) in decode_outbox(self.id, value)?.into_iter().enumerate() {
                    let partition = self.partition_of(&message, tick, seq);
                    if self.found.get(&partition).is_some_and(|last| *last >= (tick, seq)) {
                        continue;
                    }
                    in_flight.push(self.send(message, partition, tick, seq).await?);
                }
                delivered_ticks.push((key.clone(), tick));
            }
            let sent = in_flight.len() as u64;
            let mut all = std::pin::pin!(futures::future::join_all(in_flight));
            let results = loop {
                tokio::select! {
                    results = &mut all => break results,
                    _ = tokio::time::sleep(BROKER_TIMEOUT) => set_state(self.registry, self.name, "waiting for the broker".into()),
                }
            };
            set_state(self.registry, self.name, "running".into());
            for delivered in results {
                let delivered = delivered.map_err(|_| SinkError::Delivery("the producer was closed".into()))?;
                let d = delivered.map_err(|(e, _)| SinkError::Kafka(e))?;
                let next = self.progress.next_offsets.entry(d.partition).or_insert(0);
                *next = (*next).max(d.offset + 1);
            }
            if dropped(self.engine, self.name, self.id) {
                return Ok(());
            }
            if sent > 0 {
                failpoint("sink-after-delivery");
            }
            self.progress.tick = delivered_ticks.last().map(|(_, t)| *t).unwrap_or(self.progress.tick);
            self.save_progress(&delivered_ticks).await?;
            tracing::debug!("sink {}: delivered up to tick {} at offsets {:?}", self.name, self.progress.tick, self.progress.next_offsets);
            if let Some(s) = self.registry.write().expect("registry lock").get_mut(self.name) {
                s.delivered_tick = self.progress.tick;
                s.messages += sent;
            }
        }
    }

    /// Enqueue one message; waits while librdkafka's queue is full (it drains as the broker
    /// acknowledges).
    async fn send(&self, message: SinkMessage, partition: i32, tick: u64, seq: usize) -> Result<rdkafka::producer::DeliveryFuture> {
        let (tick_text, seq_text) = (tick.to_string(), seq.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header { key: TICK_HEADER, value: Some(tick_text.as_bytes()) })
            .insert(Header { key: SEQ_HEADER, value: Some(seq_text.as_bytes()) });
        let mut record = FutureRecord::<[u8], [u8]>::to(self.topic).partition(partition).headers(headers);
        if let Some(k) = &message.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &message.value {
            record = record.payload(v.as_slice());
        }
        loop {
            match self.producer.send_result(record) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    fn partition_of(&self, message: &SinkMessage, tick: u64, seq: usize) -> i32 {
        let hash = match &message.key {
            Some(key) => murmur2(key) & 0x7fff_ffff,
            None => ((tick as usize + seq) % i32::MAX as usize) as i32,
        };
        hash % self.partitions
    }

    /// Record the progress and delete the delivered outbox entries, in one write by the
    /// engine thread.
    async fn save_progress(&self, delivered: &[(Vec<u8>, u64)]) -> Result<()> {
        let mut writes = TickWrites::default();
        writes.put(&progress_key(self.id), &serde_json::to_vec(&self.progress).expect("progress serializes"));
        for (key, _) in delivered {
            writes.delete(key);
        }
        self.engine.record(self.id, writes).await.map_err(|e| SinkError::Delivery(format!("recording progress: {e}")))
    }
}

/// Per partition, the last `(tick, seq)` found in the topic.
type LastInTopic = HashMap<i32, (u64, usize)>;

/// The topic's partition count, the progress to resume from (a new sink starts at the
/// topic's current end), and per partition the last `(tick, seq)` already in the topic.
fn read_topic(brokers: &str, topic: &str, stored: Option<Vec<u8>>) -> Result<(i32, Progress, LastInTopic)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "velocity-sink-readback")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), BROKER_TIMEOUT)?;
    let partitions = metadata.topics().first().map(|t| t.partitions().len() as i32).unwrap_or(0);
    if partitions == 0 {
        return Err(SinkError::Delivery(format!("topic {topic} has no partitions")));
    }
    let ends_now = || -> Result<BTreeMap<i32, i64>> {
        (0..partitions).map(|p| Ok((p, consumer.fetch_watermarks(topic, p, BROKER_TIMEOUT)?.1))).collect()
    };
    let mut ends = ends_now()?;
    // A new sink starts where the topic ends and has nothing to read back.
    let Some(stored) = stored else {
        return Ok((partitions, Progress { tick: 0, next_offsets: ends }, HashMap::new()));
    };
    let progress: Progress = serde_json::from_slice(&stored).map_err(|e| SinkError::Delivery(format!("stored sink progress: {e}")))?;
    // After a crash, the dead process's last produce requests may still be landing: read
    // back only once the partitions' ends stand still.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let again = ends_now()?;
        if again == ends {
            break;
        }
        ends = again;
    }
    // Read what was delivered after the recorded progress: at least up to the ends, and on
    // until nothing more arrives for a moment (tansu reports a partition's end before the
    // last record batch is complete).
    let mut assignment = TopicPartitionList::new();
    let mut behind: HashMap<i32, i64> = HashMap::new();
    for (&p, &end) in &ends {
        let from = progress.next_offsets.get(&p).copied().unwrap_or(0);
        assignment.add_partition_offset(topic, p, Offset::Offset(from))?;
        if end > from {
            behind.insert(p, end);
        }
    }
    let mut found = HashMap::new();
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_message = Instant::now();
    while !behind.is_empty() || last_message.elapsed() < READBACK_QUIET {
        if Instant::now() > deadline {
            return Err(SinkError::Delivery(format!("could not read back partitions {:?} of {topic}", behind.keys().collect::<Vec<_>>())));
        }
        let Some(message) = consumer.poll(Duration::from_millis(50)) else { continue };
        let message = message?;
        last_message = Instant::now();
        let header = |name: &str| -> Option<u64> {
            let headers = message.headers()?;
            headers.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
        };
        if let (Some(tick), Some(seq)) = (header(TICK_HEADER), header(SEQ_HEADER)) {
            let last = found.entry(message.partition()).or_insert((0, 0));
            *last = (*last).max((tick, seq as usize));
        }
        // The recorded offsets stay as they are: until a round is recorded, a later restart
        // must find these messages again.
        let p = message.partition();
        if behind.get(&p).is_some_and(|end| message.offset() + 1 >= *end) {
            behind.remove(&p);
        }
    }
    Ok((partitions, progress, found))
}

/// For the crash tests: abort the process at the point `VELOCITY_FAILPOINT` names. Here:
/// after a round reached the topic but before it is recorded (`sink-after-delivery`), and
/// right after a restart read the topic back (`sink-after-readback`).
fn failpoint(name: &str) {
    if std::env::var("VELOCITY_FAILPOINT").is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

/// Kafka's murmur2 (the Java client's default partitioner), so other producers of the same
/// keys agree on partitions.
fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= (*b as u32) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::murmur2;

    #[test]
    fn murmur2_matches_kafka() {
        // Test vectors of Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971);
        assert_eq!(murmur2(b"abc"), 479470107);
    }
}
