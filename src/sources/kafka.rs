//! The Kafka connector: Debezium JSON records from Kafka topics, one stream per partition.
//!
//! Exactly-once is the runner's job: it stores the next offset of every `topic/partition` in
//! RocksDB together with the state those records produced. So this connector never lets Kafka
//! decide where to read: partitions are assigned explicitly (no group rebalancing), each is
//! positioned at the resume offset it was opened with, or at its beginning, and the consumer
//! group's committed offsets are written only for Kafka tools (lag dashboards) after the runner
//! says what is durable. New partitions and topics (a table bound to a topic Debezium has not
//! created yet) are found by re-reading metadata periodically; a missing topic is waited for,
//! never an error.
//!
//! librdkafka calls block, so every call runs on a blocking thread with the consumer's state
//! moved there and back ([`Inner`]); the async side only holds what `lag` and `health` report.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Deserialize;

use super::connector::{Connector, Health, Lag, LagUnit, SourceRecord};
use super::txn::{Position, Stream, TxnBoundaries};
use super::{Result, SourceError};
use crate::sql::{OptionError, WithOptions};

/// Records returned by one `poll` at most.
const MAX_BATCH: usize = 4096;

/// How often topics and partitions are looked up again once all wanted topics exist.
const DISCOVER_EVERY: Duration = Duration::from_secs(5);

/// How often while some wanted topic does not exist yet.
const DISCOVER_MISSING_EVERY: Duration = Duration::from_secs(1);

/// Group offsets are committed at most this often (they only serve monitoring).
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Timeout of one metadata request.
const METADATA_TIMEOUT: Duration = Duration::from_secs(3);

/// `CREATE SOURCE ... WITH (connector = 'kafka', ...)`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `brokers`: bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// `group_id`: the consumer group that offsets are committed to for monitoring.
    pub group_id: String,
    /// `transaction_topic`: Debezium's transaction metadata topic; when set, transactions are
    /// delimited by its BEGIN/END markers, otherwise by `source.txId`.
    pub transaction_topic: Option<String>,
    /// `properties.<name>` options, passed to librdkafka as `<name>` (security settings, ...).
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// The connector's own `WITH (...)` options (`properties.<name>` for any name).
    pub const OPTIONS: &'static [&'static str] = &["brokers", "group_id", "transaction_topic", "properties.*"];

    /// Read the connector's options; unknown ones are left to the caller to reject.
    pub fn from_options(options: impl Into<WithOptions>) -> Result<KafkaConfig, OptionError> {
        let options = options.into();
        let get = |k: &str| options.get(k).map(str::trim).filter(|v| !v.is_empty());
        let brokers = get("brokers")
            .ok_or(OptionError::Missing { option: "brokers".into(), message: "the kafka connector needs brokers = 'host:port'".into() })?;
        let group_id = get("group_id").unwrap_or("velocity");
        let transaction_topic = get("transaction_topic");
        if let Some(t) = transaction_topic {
            valid_topic(t).map_err(|e| OptionError::invalid("transaction_topic", e))?;
        }
        let properties: Vec<(String, String)> = options.with_prefix("properties.").map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for (k, _) in &properties {
            if OWNED_PROPERTIES.contains(&k.as_str()) {
                let message = format!("properties.{k} cannot be set: the kafka connector manages it");
                return Err(OptionError::invalid(&format!("properties.{k}"), message));
            }
        }
        Ok(KafkaConfig {
            brokers: brokers.into(),
            group_id: group_id.into(),
            transaction_topic: transaction_topic.map(str::to_string),
            properties,
        })
    }

    /// How the runner must delimit transactions of this source.
    pub fn boundaries(&self) -> TxnBoundaries {
        if self.transaction_topic.is_some() { TxnBoundaries::Metadata } else { TxnBoundaries::TxId }
    }
}

/// librdkafka settings that exactly-once reading depends on.
const OWNED_PROPERTIES: &[&str] =
    &["bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store", "statistics.interval.ms"];

/// Kafka's rule for topic names: 1-249 of `[a-zA-Z0-9._-]`.
fn valid_topic(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(format!("\"{topic}\" is not a valid Kafka topic name")) }
}

/// The Debezium collection of a topic: `prefix.schema.table` -> `schema.table`.
pub fn topic_collection(topic: &str) -> String {
    let parts: Vec<&str> = topic.split('.').collect();
    if parts.len() >= 3 { parts[parts.len() - 2..].join(".") } else { topic.to_string() }
}

/// `topic/partition` back into its parts.
fn parse_stream(stream: &str) -> Option<(&str, i32)> {
    let (topic, partition) = stream.rsplit_once('/')?;
    Some((topic, partition.parse().ok()?))
}

type TopicPartition = (String, i32);

/// Partition offsets from librdkafka's statistics (emitted every second while polling).
#[derive(Debug, Default)]
struct Watermarks {
    /// (low, high) watermark per partition being fetched.
    offsets: HashMap<TopicPartition, (i64, i64)>,
}

/// Receives statistics: the only way to learn high watermarks without a request per partition.
struct KafkaContext {
    watermarks: Arc<Mutex<Watermarks>>,
}

#[derive(Deserialize)]
struct Stats {
    #[serde(default)]
    topics: HashMap<String, TopicStats>,
}

#[derive(Deserialize)]
struct TopicStats {
    #[serde(default)]
    partitions: HashMap<String, PartitionStats>,
}

#[derive(Deserialize)]
struct PartitionStats {
    #[serde(default = "invalid_offset")]
    lo_offset: i64,
    #[serde(default = "invalid_offset")]
    hi_offset: i64,
}

fn invalid_offset() -> i64 {
    -1
}

impl ClientContext for KafkaContext {
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<Stats>(statistics) else { return };
        let Ok(mut w) = self.watermarks.lock() else { return };
        for (topic, t) in stats.topics {
            for (partition, p) in t.partitions {
                // librdkafka lists an internal partition -1 (unassigned messages).
                let Ok(partition) = partition.parse::<i32>() else { continue };
                if partition >= 0 && p.hi_offset >= 0 {
                    w.offsets.insert((topic.clone(), partition), (p.lo_offset.max(0), p.hi_offset));
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker connection errors are retried by librdkafka; the state reports them.
        tracing::debug!("kafka client: {error}: {reason}");
    }
}

impl ConsumerContext for KafkaContext {}

/// The consumer and everything that changes with each librdkafka call.
struct Inner {
    consumer: BaseConsumer<KafkaContext>,
    /// Topics to read: the bound upstreams and the transaction topic.
    topics: BTreeSet<String>,
    /// Where each assigned partition started (the resume offset, or its beginning).
    start: BTreeMap<TopicPartition, Offset>,
    /// Next offset to deliver, per partition that delivered a record since `open`.
    next: HashMap<TopicPartition, i64>,
    /// Wanted topics the broker does not know yet.
    missing: Vec<String>,
    /// The last problem talking to the broker, cleared by a successful metadata request.
    problem: Option<String>,
    last_discovery: Option<Instant>,
    /// Offsets the runner reported durable, not committed to the group yet.
    to_commit: Option<HashMap<Stream, u64>>,
    last_commit: Option<Instant>,
}

impl Inner {
    /// Look up partitions of the wanted topics and assign the ones not assigned yet.
    fn discover(&mut self, resume: &HashMap<Stream, u64>) -> Result<()> {
        self.last_discovery = Some(Instant::now());
        let metadata = match self.consumer.fetch_metadata(None, METADATA_TIMEOUT) {
            Ok(m) => m,
            Err(e) => {
                // The broker may be down or not started yet: keep waiting, say why.
                self.problem = Some(format!("cannot reach brokers: {e}"));
                return Ok(());
            }
        };
        self.problem = None;
        let mut found: BTreeMap<TopicPartition, Offset> = BTreeMap::new();
        let mut missing = Vec::new();
        for topic in &self.topics {
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                .unwrap_or_default();
            if partitions.is_empty() {
                missing.push(topic.clone());
            }
            for partition in partitions {
                let tp = (topic.clone(), partition);
                if !self.start.contains_key(&tp) {
                    let offset = match resume.get(&format!("{topic}/{partition}")) {
                        Some(o) => Offset::Offset(i64::try_from(*o).unwrap_or(i64::MAX)),
                        None => Offset::Beginning,
                    };
                    found.insert(tp, offset);
                }
            }
        }
        self.missing = missing;
        if found.is_empty() {
            return Ok(());
        }
        for (tp, offset) in &found {
            tracing::info!("kafka: reading {}/{} from {offset:?}", tp.0, tp.1);
        }
        self.start.extend(found);
        self.assign()
    }

    /// Assign every known partition, each at the offset it has reached (or started from).
    fn assign(&mut self) -> Result<()> {
        let mut tpl = TopicPartitionList::with_capacity(self.start.len());
        for (tp, start) in &self.start {
            let offset = self.next.get(tp).map_or(*start, |n| Offset::Offset(*n));
            tpl.add_partition_offset(&tp.0, tp.1, offset)?;
        }
        self.consumer.assign(&tpl)?;
        Ok(())
    }

    /// Records available now, waiting up to `max_wait` for the first one.
    fn poll(&mut self, max_wait: Duration) -> Result<Vec<SourceRecord>> {
        let deadline = Instant::now() + max_wait;
        let mut out = Vec::new();
        while out.len() < MAX_BATCH {
            let wait = if out.is_empty() { deadline.saturating_duration_since(Instant::now()) } else { Duration::ZERO };
            let Some(result) = self.consumer.poll(wait) else {
                if out.is_empty() && Instant::now() < deadline {
                    continue; // an event other than a message (statistics) was served
                }
                break;
            };
            match result {
                Ok(m) => {
                    let tp = (m.topic().to_string(), m.partition());
                    let offset = m.offset();
                    // A record from before a re-assignment: already delivered.
                    if self.next.get(&tp).is_some_and(|n| offset < *n) || !self.start.contains_key(&tp) {
                        continue;
                    }
                    self.next.insert(tp.clone(), offset + 1);
                    out.push(SourceRecord {
                        position: Position::Kafka { topic: tp.0, partition: tp.1, offset },
                        payload: m.payload().map(<[u8]>::to_vec),
                    });
                }
                Err(KafkaError::PartitionEOF(_)) => {}
                Err(KafkaError::MessageConsumptionFatal(code)) => {
                    return Err(SourceError::Kafka(KafkaError::MessageConsumptionFatal(code)));
                }
                Err(e) => {
                    // Transient (broker down, leader moving, topic deleted): librdkafka retries.
                    if let KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition) = e {
                        self.last_discovery = None;
                    }
                    self.problem = Some(e.to_string());
                    if out.is_empty() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20).min(deadline.saturating_duration_since(Instant::now())));
                        continue;
                    }
                    break;
                }
            }
        }
        if !out.is_empty() {
            self.problem = None;
        }
        Ok(out)
    }

    /// Commit the latest durable offsets to the group, at most once per [`COMMIT_EVERY`].
    fn commit(&mut self, force: bool) -> Result<()> {
        if !force && self.last_commit.is_some_and(|t| t.elapsed() < COMMIT_EVERY) {
            return Ok(());
        }
        let Some(resume) = self.to_commit.take() else { return Ok(()) };
        let mut tpl = TopicPartitionList::new();
        for (stream, next) in &resume {
            let Some((topic, partition)) = parse_stream(stream) else { continue };
            if self.topics.contains(topic) {
                tpl.add_partition_offset(topic, partition, Offset::Offset(i64::try_from(*next).unwrap_or(i64::MAX)))?;
            }
        }
        self.last_commit = Some(Instant::now());
        if tpl.count() > 0 {
            // Asynchronous: the group offsets only serve monitoring, a failed commit is retried
            // with the next one.
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!("kafka: committing group offsets: {e}");
            }
        }
        Ok(())
    }

    /// Messages between each assigned partition's position and its high watermark.
    fn lag(&self, watermarks: &Mutex<Watermarks>) -> u64 {
        let Ok(w) = watermarks.lock() else { return 0 };
        self.start
            .iter()
            .map(|(tp, start)| {
                let Some((lo, hi)) = w.offsets.get(tp).copied() else { return 0 };
                let position = match (self.next.get(tp), start) {
                    (Some(n), _) => *n,
                    (None, Offset::Offset(o)) => *o,
                    _ => lo,
                };
                u64::try_from(hi - position.max(lo)).unwrap_or(0)
            })
            .sum()
    }
}

/// Reads Debezium topics from Kafka (see the module doc).
pub struct KafkaConnector {
    config: KafkaConfig,
    /// `None` only while a blocking call has it, or before the first `open`.
    inner: Option<Inner>,
    watermarks: Arc<Mutex<Watermarks>>,
    resume: HashMap<Stream, u64>,
    lag: u64,
    health: Option<Health>,
}

impl KafkaConnector {
    pub fn new(config: KafkaConfig) -> KafkaConnector {
        KafkaConnector {
            config,
            inner: None,
            watermarks: Arc::default(),
            resume: HashMap::new(),
            lag: 0,
            health: Some(Health::Waiting("connecting to the brokers".into())),
        }
    }

    fn create_consumer(&self) -> Result<BaseConsumer<KafkaContext>> {
        let mut config = ClientConfig::new();
        for (k, v) in &self.config.properties {
            config.set(k, v);
        }
        config
            .set("bootstrap.servers", &self.config.brokers)
            .set("group.id", &self.config.group_id)
            .set("client.id", "velocity")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Only used when a resume offset no longer exists (retention deleted it).
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "1000")
            .set("fetch.wait.max.ms", "100");
        let context = KafkaContext { watermarks: self.watermarks.clone() };
        Ok(config.create_with_context(context)?)
    }

    /// Run `f` on the consumer on a blocking thread.
    async fn blocking<T: Send + 'static>(&mut self, f: impl FnOnce(&mut Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let mut inner = self.inner.take().ok_or_else(|| SourceError::Internal("kafka connector is not open".into()))?;
        let (inner, result) = tokio::task::spawn_blocking(move || {
            let result = f(&mut inner);
            (inner, result)
        })
        .await
        .map_err(|e| SourceError::Internal(format!("kafka consumer thread: {e}")))?;
        self.lag = inner.lag(&self.watermarks);
        self.health = if let Some(p) = &inner.problem {
            Some(Health::Error(p.clone()))
        } else if !inner.missing.is_empty() {
            Some(Health::Waiting(format!(
                "waiting for topic{} {}",
                if inner.missing.len() > 1 { "s" } else { "" },
                inner.missing.join(", ")
            )))
        } else {
            None
        };
        self.inner = Some(inner);
        result
    }
}

#[async_trait::async_trait]
impl Connector for KafkaConnector {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn collection(&self, upstream: &str) -> String {
        topic_collection(upstream)
    }

    async fn open(&mut self, upstreams: &[String], resume: &HashMap<Stream, u64>) -> Result<()> {
        for topic in upstreams {
            valid_topic(topic).map_err(SourceError::Upstream)?;
        }
        let mut topics: BTreeSet<String> = upstreams.iter().cloned().collect();
        if topics.is_empty() {
            // Nothing bound: read nothing (not even transaction markers nobody needs).
            if let Some(inner) = self.inner.as_mut() {
                inner.consumer.unassign()?;
                inner.start.clear();
                inner.next.clear();
                inner.topics.clear();
                inner.missing.clear();
            }
            self.health = None;
            self.lag = 0;
            return Ok(());
        }
        topics.extend(self.config.transaction_topic.clone());
        if self.inner.is_none() {
            let consumer = self.create_consumer()?;
            self.inner = Some(Inner {
                consumer,
                topics: BTreeSet::new(),
                start: BTreeMap::new(),
                next: HashMap::new(),
                missing: Vec::new(),
                problem: None,
                last_discovery: None,
                to_commit: None,
                last_commit: None,
            });
        }
        self.resume = resume.clone();
        let resume = resume.clone();
        self.blocking(move |inner| {
            // Start over from the resume offsets: the runner rebuilt its assembler.
            inner.consumer.unassign()?;
            inner.topics = topics;
            inner.start.clear();
            inner.next.clear();
            inner.missing.clear();
            inner.discover(&resume)
        })
        .await
    }

    async fn poll(&mut self, max_wait: Duration) -> Result<Vec<SourceRecord>> {
        let Some(inner) = self.inner.as_ref() else {
            tokio::time::sleep(max_wait).await;
            return Ok(Vec::new());
        };
        if inner.topics.is_empty() {
            tokio::time::sleep(max_wait).await;
            return Ok(Vec::new());
        }
        let every = if inner.missing.is_empty() && inner.problem.is_none() { DISCOVER_EVERY } else { DISCOVER_MISSING_EVERY };
        let discover = inner.last_discovery.is_none_or(|t| t.elapsed() >= every);
        let resume = if discover { Some(self.resume.clone()) } else { None };
        self.blocking(move |inner| {
            if let Some(resume) = resume {
                inner.discover(&resume)?;
            }
            inner.commit(false)?;
            if inner.start.is_empty() {
                // Nothing to read yet (topics missing): wait as asked, then look again.
                std::thread::sleep(max_wait);
                return Ok(Vec::new());
            }
            inner.poll(max_wait)
        })
        .await
    }

    fn lag(&self) -> Lag {
        Lag { amount: self.lag, unit: LagUnit::Messages }
    }

    fn boundaries(&self) -> Option<TxnBoundaries> {
        Some(self.config.boundaries())
    }

    fn idle_flush(&self) -> Option<Duration> {
        // Without metadata, a partition that stopped right after a transaction's last event
        // never shows it moved on: take such a transaction as complete after a second without
        // input. With metadata, END markers say when a transaction is complete; only one that
        // can never complete (an event lost or undecodable) is released, after 5 s of silence.
        match self.config.boundaries() {
            TxnBoundaries::Metadata => Some(Duration::from_secs(5)),
            TxnBoundaries::TxId => Some(Duration::from_secs(1)),
        }
    }

    async fn committed(&mut self, resume: &HashMap<Stream, u64>) -> Result<()> {
        let Some(inner) = self.inner.as_mut() else { return Ok(()) };
        inner.to_commit = Some(resume.clone());
        // Commits are asynchronous in librdkafka: this does not block.
        inner.commit(false)
    }

    fn health(&self) -> Option<Health> {
        self.health.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn debezium_topics_name_their_collection() {
        assert_eq!(topic_collection("tms.public.shipments"), "public.shipments");
        assert_eq!(topic_collection("dc1.tms.public.shipments"), "public.shipments");
        assert_eq!(topic_collection("public.shipments"), "public.shipments");
        assert_eq!(topic_collection("shipments"), "shipments");
    }

    #[test]
    fn options_choose_transaction_boundaries() {
        let c = KafkaConfig::from_options(opts(&[("brokers", "127.0.0.1:9092"), ("transaction_topic", "tms.transaction")])).unwrap();
        assert_eq!(c.boundaries(), TxnBoundaries::Metadata);
        assert_eq!(c.group_id, "velocity");
        let c = KafkaConfig::from_options(opts(&[("brokers", "b:1"), ("group_id", "g"), ("properties.fetch.max.bytes", "1000")])).unwrap();
        assert_eq!(c.boundaries(), TxnBoundaries::TxId);
        assert_eq!(c.properties, vec![("fetch.max.bytes".to_string(), "1000".to_string())]);
        assert_eq!(KafkaConfig::from_options(opts(&[])).unwrap_err().option(), "brokers");
        assert!(KafkaConfig::from_options(opts(&[("brokers", "b:1"), ("transaction_topic", "a/b")])).is_err());
        assert!(KafkaConfig::from_options(opts(&[("brokers", "b:1"), ("properties.enable.auto.commit", "true")])).is_err());
    }

    #[test]
    fn streams_parse_back() {
        assert_eq!(parse_stream("tms.public.shipments/3"), Some(("tms.public.shipments", 3)));
        assert_eq!(parse_stream("x"), None);
        let p = Position::Kafka { topic: "t.a.b".into(), partition: 2, offset: 9 };
        assert_eq!(parse_stream(&p.stream()), Some(("t.a.b", 2)));
    }
}
