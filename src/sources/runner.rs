//! Running sources: read records, assemble transactions, commit them to the engine.
//!
//! Each source runs as one task. A released transaction is committed as one engine commit
//! together with the source's new position and any dead letters, in one RocksDB batch, so
//! after a crash the source resumes exactly after the last applied transaction: nothing is
//! lost or applied twice. Commits are submitted without waiting for each (a bounded number
//! in flight), so the task reads and decodes ahead while the engine thread applies steps
//! of many transactions; upstream is acknowledged only up to what is durable.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::connector::{Connector, Health, LagUnit, SourceRecord};
use super::debezium::{Decoder, Record};
use super::file::{FileConfig, FileConnector};
use super::generator::{GeneratorConfig, GeneratorConnector};
use super::kafka::{KafkaConfig, KafkaConnector};
use super::postgres::{PostgresCdc, PostgresCdcConfig};
use super::txn::{AssemblerOutput, CompleteTxn, DeadLetter, Stream, TxnAssembler, TxnBoundaries, UpstreamTable};
use super::{Result, SourceError};
use crate::catalog::RelationKind;
use crate::engine::{Commit, CommitChain, Engine, KeyedChanges, RejectWrites};
use crate::sql::{OptionError, WithOptions};
use crate::storage::keyspace;

/// What `CREATE SOURCE ... WITH (...)` declared.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub connector: ConnectorConfig,
    pub boundaries: TxnBoundaries,
    /// How long transactions may be pending with none released, while input goes on, before
    /// those that cannot complete by themselves (a lost event or END) are released incomplete.
    pub stall_timeout: Duration,
}

/// One variant per connector, holding its options.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectorConfig {
    File(FileConfig),
    Generator(GeneratorConfig),
    Kafka(KafkaConfig),
    PostgresCdc(PostgresCdcConfig),
}

/// Options every connector takes.
const COMMON_OPTIONS: &[&str] = &["connector", "format", "transactions", "stall_timeout"];

impl SourceConfig {
    /// Validate `WITH (...)` options; the message names the option at fault.
    pub fn from_options(options: &[(String, String)]) -> Result<SourceConfig, String> {
        Ok(SourceConfig::parse(&WithOptions::from(options))?)
    }

    /// Validate `WITH (...)` options, with a typed error.
    pub fn parse(options: &WithOptions) -> Result<SourceConfig, OptionError> {
        let format = options.get("format").unwrap_or("debezium-json");
        if format != "debezium-json" {
            return Err(OptionError::invalid("format", format!("format \"{format}\" is not supported; use 'debezium-json'")));
        }
        let boundaries = match options.get("transactions") {
            None | Some("txid") => TxnBoundaries::TxId,
            Some("metadata") => TxnBoundaries::Metadata,
            Some(other) => {
                return Err(OptionError::invalid("transactions", format!("transactions must be 'txid' or 'metadata', not \"{other}\"")));
            }
        };
        let (connector, own_options) = match options.require("connector", "missing option connector = '...'")? {
            "file" => (ConnectorConfig::File(FileConfig::from_options(options)?), FileConfig::OPTIONS),
            "generator" => (ConnectorConfig::Generator(GeneratorConfig::from_options(options)?), GeneratorConfig::OPTIONS),
            "kafka" => (ConnectorConfig::Kafka(KafkaConfig::from_options(options)?), KafkaConfig::OPTIONS),
            "postgres-cdc" => (ConnectorConfig::PostgresCdc(PostgresCdcConfig::from_options(options)?), PostgresCdcConfig::OPTIONS),
            other => {
                let message = format!("unknown connector \"{other}\" (available: file, generator, kafka, postgres-cdc)");
                return Err(OptionError::invalid("connector", message));
            }
        };
        let allowed: Vec<&str> = COMMON_OPTIONS.iter().chain(own_options).copied().collect();
        options.reject_unknown(&format!("{} source", options.get("connector").unwrap_or_default()), &allowed)?;
        let stall_timeout = match options.get("stall_timeout") {
            Some(t) => crate::sql::parse_duration(t).map_err(|e| OptionError::invalid("stall_timeout", e.to_string()))?,
            None => Duration::from_secs(30),
        };
        Ok(SourceConfig { connector, boundaries, stall_timeout })
    }

    fn connect(&self) -> Box<dyn Connector> {
        match &self.connector {
            ConnectorConfig::File(c) => Box::new(FileConnector::new(c.clone())),
            ConnectorConfig::Generator(c) => Box::new(GeneratorConnector::new(c.clone())),
            ConnectorConfig::Kafka(c) => Box::new(KafkaConnector::new(c.clone())),
            ConnectorConfig::PostgresCdc(c) => Box::new(PostgresCdc::new(c.clone())),
        }
    }
}

/// Live counters of one source, for SHOW SOURCES and `velocity_catalog.sources`.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    pub connector: String,
    /// `running`, `waiting` (for input to appear) or `error` (see `reason`).
    pub state: String,
    /// Why the source is waiting or failing; empty while it runs.
    pub reason: String,
    pub position: String,
    pub transactions: u64,
    pub events: u64,
    pub errors: u64,
    /// Records seen but not yet applied (waiting for their transaction to complete).
    pub pending: u64,
    /// Input available upstream and not read yet, in `lag_unit`s.
    pub lag: u64,
    pub lag_unit: &'static str,
    /// True when everything available has been read and applied.
    pub caught_up: bool,
    /// Passes over the input so far; FLUSH waits for a pass that started after it.
    pub rounds: u64,
    /// Upstream collections seen since the source started, and those bound but never seen.
    pub collections: Vec<CollectionStatus>,
}

/// One upstream collection of a source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectionStatus {
    /// `schema.table` as Debezium names it.
    pub collection: String,
    /// Change events read for it since the source started (bound or not, dead-lettered too).
    pub events: u64,
    /// The table bound to it and its `upstream` option; `None` if no table is.
    pub table: Option<(String, String)>,
}

/// Status of every running source, by name.
pub type SourceRegistry = Arc<RwLock<HashMap<String, SourceStatus>>>;

/// Where a source resumes: stored with every commit it makes.
///
/// Kept per stream and table: a table bound to a source that has already moved on reads the
/// input from the beginning, while tables that have applied a transaction skip it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Offsets {
    /// Next offset not applied, per stream and table id.
    #[serde(alias = "files")]
    streams: HashMap<Stream, HashMap<u32, u64>>,
}

impl Offsets {
    fn next(&self, stream: &str, table: u32) -> u64 {
        self.streams.get(stream).and_then(|t| t.get(&table)).copied().unwrap_or(0)
    }

    /// Where to read each stream from so that every table in `tables` sees what it has not.
    fn resume(&self, tables: &[u32]) -> HashMap<Stream, u64> {
        self.streams
            .keys()
            .filter_map(|s| Some((s.clone(), tables.iter().map(|t| self.next(s, *t)).min()?)))
            .filter(|(_, next)| *next > 0)
            .collect()
    }

    /// Move `tables` forward to `to` in each stream; true if anything moved.
    fn advance(&mut self, to: &HashMap<Stream, u64>, tables: &[u32]) -> bool {
        let mut moved = false;
        for (stream, next) in to {
            let per_table = self.streams.entry(stream.clone()).or_default();
            for t in tables {
                let e = per_table.entry(*t).or_insert(0);
                if *e < *next {
                    *e = *next;
                    moved = true;
                }
            }
        }
        moved
    }

    /// Whether `table` has not applied `txn` yet. Applying a transaction moves the table's
    /// offsets past it in every stream that was read; a stream the table did not read then
    /// (its topic was not bound yet) may lag behind, so one stream past it is enough.
    fn applies(&self, txn: &CompleteTxn, table: u32) -> bool {
        txn.stream_starts.iter().all(|p| self.next(&p.stream(), table) <= p.offset())
    }
}

fn offsets_key(source_id: u32) -> Vec<u8> {
    let mut k = vec![keyspace::META];
    k.extend_from_slice(b"source-offsets/");
    k.extend_from_slice(&source_id.to_be_bytes());
    k
}

/// Dead letters: `d` + source id + position, value = JSON.
pub fn dead_letter_prefix(source_id: u32) -> Vec<u8> {
    let mut k = vec![keyspace::DEAD_LETTERS];
    k.extend_from_slice(&source_id.to_be_bytes());
    k
}

/// Where the dead letter of the record at `position` of a source is stored.
fn dead_letter_key(source_id: u32, position: &str) -> Vec<u8> {
    let mut k = dead_letter_prefix(source_id);
    k.extend_from_slice(position.as_bytes());
    k
}

/// A stored dead letter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDeadLetter {
    pub source: String,
    pub collection: Option<String>,
    pub position: String,
    pub raw: String,
    pub reason: String,
    pub received_at_ms: i64,
}

/// Start the task that runs source `name` until the source is dropped.
pub fn spawn(engine: Engine, registry: SourceRegistry, id: u32, name: String, config: SourceConfig) {
    // Registered before the task runs, so a FLUSH right after startup waits for this source.
    registry.write().expect("registry lock").entry(name.clone()).or_default().state = "running".into();
    tokio::spawn(async move {
        let connector = config.connect();
        let registry_handle = registry.clone();
        let mut runner = Runner {
            engine,
            registry,
            id,
            name: name.clone(),
            config,
            connector,
            offsets: Offsets::default(),
            chain: CommitChain::default(),
            in_flight: VecDeque::new(),
            in_flight_events: 0,
            durable: None,
            acknowledged: HashMap::new(),
            acknowledged_at: Instant::now(),
            seen: HashMap::new(),
        };
        // A bug in a connector stops its source, visibly, not the server.
        let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(runner.run())).await;
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "the source task panicked".to_string(),
        };
        tracing::error!("source {name} stopped: {error}");
        if let Some(s) = registry_handle.write().expect("registry lock").get_mut(&name) {
            s.state = "error".into();
            s.reason = format!("stopped: {error}");
        }
    });
}

struct Runner {
    engine: Engine,
    registry: SourceRegistry,
    id: u32,
    name: String,
    config: SourceConfig,
    connector: Box<dyn Connector>,
    offsets: Offsets,
    /// Orders this source's commits: after a failed one the engine refuses the rest.
    chain: CommitChain,
    /// Submitted commits, oldest first, not yet known to be durable.
    in_flight: VecDeque<InFlight>,
    in_flight_events: usize,
    /// Resume points of the newest durable commit, and what upstream was last told.
    durable: Option<HashMap<Stream, u64>>,
    acknowledged: HashMap<Stream, u64>,
    acknowledged_at: Instant,
    /// Change events read per upstream collection, since the source started.
    seen: HashMap<String, u64>,
}

/// A commit submitted to the engine and not yet durable.
struct InFlight {
    done: Pin<Box<dyn Future<Output = crate::engine::Result<u64>> + Send>>,
    transactions: u64,
    events: u64,
    position: Option<String>,
    /// Where the source resumes once this commit is durable.
    resume: HashMap<Stream, u64>,
}

/// Events submitted and not yet durable, at most: bounds memory and how far decoding runs
/// ahead of the engine.
const MAX_IN_FLIGHT_EVENTS: usize = 100_000;
/// How often upstream (Kafka offsets, the Postgres slot) hears what is durable, under load.
const ACKNOWLEDGE_EVERY: Duration = Duration::from_secs(1);

/// How the tables bound to `source` are decoded (collections named by upstream, as the file
/// and generator connectors name them), for measuring decoding apart from a running source.
pub fn upstream_tables(engine: &Engine, source: &str) -> Vec<UpstreamTable> {
    bound_tables(engine, source).into_iter().map(|t| t.table).collect()
}

struct BoundTable {
    upstream: String,
    id: u32,
    name: String,
    table: UpstreamTable,
}

/// Tables bound to a source: upstream name and relation id, in id order.
fn bound_tables(engine: &Engine, source: &str) -> Vec<BoundTable> {
    let catalog = engine.catalog();
    catalog
        .iter()
        .filter(|r| r.kind == RelationKind::Table)
        .filter_map(|r| {
            let b = r.binding.as_ref()?;
            (b.source == source).then(|| {
                let table = UpstreamTable { collection: b.upstream.clone(), schema: r.schema.clone(), primary_key: r.primary_key.clone() };
                BoundTable { upstream: b.upstream.clone(), id: r.id, name: r.name.clone(), table }
            })
        })
        .collect()
}

/// How long one poll waits for input before the runner looks at its tables again.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Waits before opening a failed connector again: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(16);

/// The assembler and what it has read, rebuilt whenever the bound tables change.
struct Reading {
    assembler: TxnAssembler,
    /// Relation id per collection.
    tables: HashMap<String, u32>,
    ids: Vec<u32>,
    /// Per bound collection: the table's name and `upstream` option.
    bound: Vec<(String, String, String)>,
    /// Per stream, the offset after the last record read.
    read_to: HashMap<Stream, u64>,
    last_input: Instant,
    /// Since when transactions have been pending with none released.
    stalled_since: Option<Instant>,
    released: u64,
}

impl Runner {
    fn status(&self, f: impl FnOnce(&mut SourceStatus)) {
        let mut registry = self.registry.write().expect("registry lock");
        let s = registry.entry(self.name.clone()).or_default();
        s.connector = self.connector.kind().into();
        f(s);
    }

    fn dropped(&self) -> bool {
        !self.engine.catalog().get(&self.name).is_some_and(|r| r.kind == RelationKind::Source)
    }

    async fn run(&mut self) -> Result<()> {
        if let Some(v) = self.engine.store().get(&offsets_key(self.id))? {
            self.offsets = serde_json::from_slice(&v)?;
        }
        let stored_errors = self.engine.store().scan_prefix(&dead_letter_prefix(self.id))?.len() as u64;
        self.status(|s| {
            s.state = "running".into();
            s.errors = stored_errors;
        });
        let mut decoder = Decoder::new();
        let mut reading: Option<Reading> = None;
        let mut retry_in = RETRY_FIRST;
        loop {
            if self.dropped() {
                self.settle_all().await?;
                self.registry.write().expect("registry lock").remove(&self.name);
                return Ok(());
            }
            let bound = bound_tables(&self.engine, &self.name);
            let ids: Vec<u32> = bound.iter().map(|t| t.id).collect();
            if reading.as_ref().is_none_or(|r| r.ids != ids) {
                self.settle_all().await?;
                match self.start_reading(bound, ids).await {
                    Ok(r) => reading = Some(r),
                    Err(e) => {
                        retry_in = self.connector_failed(&e, retry_in).await;
                        continue;
                    }
                }
            }
            let r = reading.as_mut().expect("reading started above");
            if r.ids.is_empty() {
                self.status(|s| {
                    s.caught_up = true;
                    s.rounds += 1;
                });
                tokio::time::sleep(POLL_WAIT).await;
                continue;
            }
            let records = match self.connector.poll(POLL_WAIT).await {
                Ok(records) => records,
                Err(e) => {
                    // Start over from what is applied, once the connector can read again.
                    reading = None;
                    self.settle_all().await?;
                    retry_in = self.connector_failed(&e, retry_in).await;
                    continue;
                }
            };
            retry_in = RETRY_FIRST;
            let read_any = !records.is_empty();
            let mut outputs = Vec::new();
            // Records come in runs from one stream: name the stream once per run.
            let mut stream = Stream::new();
            for SourceRecord { position, payload } in records {
                if !position.is_in(&stream) {
                    stream = position.stream();
                }
                let next = position.offset() + 1;
                match r.read_to.get_mut(&stream) {
                    Some(e) => *e = (*e).max(next),
                    None => {
                        r.read_to.insert(stream.clone(), next);
                    }
                }
                let raw = payload.as_deref().unwrap_or_default();
                let record = decoder.decode(payload.as_deref());
                let collection = match &record {
                    Ok(Record::Change(e)) => Some(&e.collection),
                    Err(e) => e.context().and_then(|c| c.collection.as_ref()),
                    Ok(_) => None,
                };
                if let Some(c) = collection {
                    match self.seen.get_mut(c) {
                        Some(n) => *n += 1,
                        None => {
                            self.seen.insert(c.clone(), 1);
                        }
                    }
                }
                outputs.extend(r.assembler.push(position, raw, record));
            }
            if read_any {
                r.last_input = Instant::now();
            } else if r.assembler.pending() > 0 && self.connector.idle_flush().is_some_and(|idle| r.last_input.elapsed() >= idle) {
                outputs.extend(r.assembler.flush());
            }
            // Under continuous input the idle flush never comes: a transaction that lost an
            // event would hold up every later one. Release what cannot complete after a while.
            let released = r.assembler.stats().released;
            if r.assembler.pending() == 0 || released != r.released {
                r.released = released;
                r.stalled_since = None;
            } else if r.stalled_since.get_or_insert_with(Instant::now).elapsed() >= self.config.stall_timeout {
                outputs.extend(r.assembler.release_stalled());
                r.stalled_since = None;
            }
            self.apply(outputs, r).await?;
            self.settle_ready()?;
            if !read_any {
                // Input is idle: wait for what is in flight, so `caught_up` means applied.
                self.settle_all().await?;
            } else if self.acknowledged_at.elapsed() >= ACKNOWLEDGE_EVERY {
                self.acknowledge().await;
            }
            let pending = r.assembler.pending() as u64;
            let lag = self.connector.lag();
            let (state, reason) = match self.connector.health() {
                None => ("running", String::new()),
                Some(Health::Waiting(reason)) => ("waiting", reason),
                Some(Health::Error(reason)) => ("error", reason),
            };
            let collections = self.collections(&r.bound);
            self.status(|s| {
                s.state = state.into();
                s.reason = reason;
                s.collections = collections;
                s.pending = pending;
                s.lag = lag.amount;
                s.lag_unit = match lag.unit {
                    LagUnit::Bytes => "bytes",
                    LagUnit::Messages => "messages",
                };
                s.caught_up = !read_any && pending == 0;
                s.rounds += 1;
            });
        }
    }

    /// The connector could not open or read: say why, wait, and let the loop try again.
    /// Returns the wait for the next failure.
    async fn connector_failed(&mut self, error: &SourceError, wait: Duration) -> Duration {
        tracing::warn!("source {}: {error:#}; retrying in {} s", self.name, wait.as_secs());
        self.status(|s| {
            s.state = "error".into();
            s.reason = format!("{error:#} (retrying)");
            s.caught_up = false;
            s.rounds += 1;
        });
        tokio::time::sleep(wait).await;
        (wait * 2).min(RETRY_MAX)
    }

    /// Collections seen, with their tables, and bound collections never seen.
    fn collections(&self, bound: &[(String, String, String)]) -> Vec<CollectionStatus> {
        let table = |c: &str| bound.iter().find(|(b, _, _)| b == c).map(|(_, name, upstream)| (name.clone(), upstream.clone()));
        let mut out: Vec<CollectionStatus> =
            self.seen.iter().map(|(c, n)| CollectionStatus { collection: c.clone(), events: *n, table: table(c) }).collect();
        for (c, name, upstream) in bound {
            if !self.seen.contains_key(c) {
                out.push(CollectionStatus { collection: c.clone(), events: 0, table: Some((name.clone(), upstream.clone())) });
            }
        }
        out.sort_by(|a, b| a.collection.cmp(&b.collection));
        out
    }

    async fn start_reading(&mut self, bound: Vec<BoundTable>, ids: Vec<u32>) -> Result<Reading> {
        let upstreams: Vec<String> = bound.iter().map(|t| t.upstream.clone()).collect();
        let mut tables = HashMap::new();
        let mut layouts = Vec::new();
        let mut names = Vec::new();
        for BoundTable { upstream, id, name, mut table } in bound {
            table.collection = self.connector.collection(&upstream);
            tables.insert(table.collection.clone(), id);
            names.push((table.collection.clone(), name, upstream));
            layouts.push(table);
        }
        let boundaries = self.connector.boundaries().unwrap_or(self.config.boundaries);
        let assembler = TxnAssembler::new(layouts, boundaries)?;
        let resume = self.offsets.resume(&ids);
        self.connector.open(&upstreams, &resume).await?;
        Ok(Reading { assembler, tables, ids, bound: names, read_to: resume, last_input: Instant::now(), stalled_since: None, released: 0 })
    }

    /// Submit released transactions one by one, each with the offsets that resume right
    /// after it, then dead letters and the offsets past everything read but not pending.
    async fn apply(&mut self, outputs: Vec<AssemblerOutput>, r: &Reading) -> Result<()> {
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut txns: Vec<CompleteTxn> = Vec::new();
        for output in outputs {
            match output {
                AssemblerOutput::DeadLetter(d) => dead.push(d),
                AssemblerOutput::CompleteTxn(txn) => txns.push(txn),
            }
        }
        // Resume points once everything released here is applied: after all that was read,
        // except where a transaction is still pending.
        let mut settled = r.read_to.clone();
        for (stream, start) in r.assembler.pending_starts() {
            settled.insert(stream, start);
        }
        // Transactions released after one are not applied with it: it resumes at them.
        let mut resumes = Vec::with_capacity(txns.len());
        let mut resume = settled.clone();
        for txn in txns.iter().rev() {
            resumes.push(resume.clone());
            for p in &txn.stream_starts {
                let e = resume.entry(p.stream()).or_insert(u64::MAX);
                *e = (*e).min(p.offset());
            }
        }
        resumes.reverse();
        for (txn, resume) in txns.into_iter().zip(resumes) {
            let keyed: Vec<(u32, KeyedChanges)> = txn
                .tables
                .iter()
                .filter_map(|(collection, net)| {
                    let id = *r.tables.get(collection.as_str())?;
                    self.offsets
                        .applies(&txn, id)
                        .then(|| (id, KeyedChanges { upserts: net.upserts.clone(), deletes: net.deletes.clone(), truncate: net.truncate }))
                })
                .collect();
            // Read again for a table bound since (reading restarted from its offsets): applied
            // and counted before for the others, so counted once.
            let replayed = r.ids.iter().any(|id| !self.offsets.applies(&txn, *id));
            self.offsets.advance(&resume, &r.ids);
            let (events, position) = (txn.events as u64, Some(txn.last_position.to_string()));
            let transactions = u64::from(!replayed);
            let commit = Commit {
                keyed,
                extra_writes: self.extra_writes(std::mem::take(&mut dead))?,
                source_ts_ms: txn.source_ts_ms,
                on_reject: Some(self.rejected_txn_letter(txn)),
                ..Default::default()
            };
            self.submit(commit, transactions, events, position, self.offsets.resume(&r.ids)).await?;
        }
        if self.offsets.advance(&settled, &r.ids) || !dead.is_empty() {
            let writes = self.extra_writes(dead)?;
            let commit = Commit { extra_writes: writes, ..Default::default() };
            self.submit(commit, 0, 0, None, self.offsets.resume(&r.ids)).await?;
        }
        Ok(())
    }

    /// Queue a commit behind the ones in flight; wait for the oldest while too many are.
    async fn submit(
        &mut self,
        mut commit: Commit,
        transactions: u64,
        events: u64,
        position: Option<String>,
        resume: HashMap<Stream, u64>,
    ) -> Result<()> {
        commit.chain = Some(self.chain.clone());
        let done = Box::pin(self.engine.submit(commit));
        self.in_flight.push_back(InFlight { done, transactions, events, position, resume });
        self.in_flight_events += events as usize;
        while self.in_flight_events > MAX_IN_FLIGHT_EVENTS {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Wait for the oldest commit in flight to be durable, and count it.
    async fn settle_one(&mut self) -> Result<bool> {
        let Some(mut entry) = self.in_flight.pop_front() else { return Ok(false) };
        (&mut entry.done).await?;
        self.settled(entry);
        Ok(true)
    }

    /// Count the commits in flight that are durable by now, without waiting: under
    /// continuous input the counters and the acknowledged position keep up with the engine.
    fn settle_ready(&mut self) -> Result<()> {
        while let Some(front) = self.in_flight.front_mut() {
            let Some(result) = futures::FutureExt::now_or_never(&mut front.done) else { break };
            let entry = self.in_flight.pop_front().expect("front exists");
            result?;
            self.settled(entry);
        }
        Ok(())
    }

    fn settled(&mut self, entry: InFlight) {
        self.in_flight_events -= entry.events as usize;
        self.status(|s| {
            // A replayed transaction (`transactions` 0) was counted when first read; its
            // events still count against the in-flight window.
            if entry.transactions > 0 {
                s.transactions += entry.transactions;
                s.events += entry.events;
            }
            if let Some(p) = entry.position {
                s.position = p;
            }
        });
        self.durable = Some(entry.resume);
    }

    /// Wait until every submitted commit is durable, then acknowledge upstream.
    async fn settle_all(&mut self) -> Result<()> {
        while self.settle_one().await? {}
        self.acknowledge().await;
        Ok(())
    }

    /// Tell upstream how far it may free input: only what is durable here.
    async fn acknowledge(&mut self) {
        self.acknowledged_at = Instant::now();
        let Some(durable) = self.durable.take() else { return };
        // Acknowledging only lets upstream free what is applied; failing to is not fatal.
        if durable != self.acknowledged {
            if let Err(e) = self.connector.committed(&durable).await {
                tracing::warn!("source {}: acknowledging upstream: {e:#}", self.name);
            }
            self.acknowledged = durable;
        }
    }

    /// The dead letter of a transaction a view cannot take, written by the engine instead of
    /// the transaction (see `Commit::on_reject`): its net changes, described, with the reason.
    /// Takes the transaction, so that nothing is copied or formatted unless it is rejected.
    fn rejected_txn_letter(&self, txn: CompleteTxn) -> RejectWrites {
        let (registry, name, id) = (self.registry.clone(), self.name.clone(), self.id);
        Box::new(move |reason: &str| {
            /// Rows shown per table: enough to find the culprit, bounded for huge transactions.
            const SHOWN: usize = 10;
            let first = txn.first_position.to_string();
            let mut raw = format!("transaction {}: {} events, {first} to {}", txn.id, txn.events, txn.last_position);
            for (collection, net) in &txn.tables {
                let (upserts, deletes) = (net.upserts.num_rows(), net.deletes.num_rows());
                raw +=
                    &format!("\n{collection}: {upserts} rows written, {deletes} deleted{}", if net.truncate { ", truncated" } else { "" });
                let shown = net.upserts.slice(0, upserts.min(SHOWN));
                if let Ok(table) = arrow::util::pretty::pretty_format_batches(&[shown]) {
                    raw += &format!("\n{table}");
                }
            }
            let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
            let letter = StoredDeadLetter {
                source: name.clone(),
                collection: None,
                position: first,
                raw,
                reason: reason.into(),
                received_at_ms: now_ms,
            };
            let key = dead_letter_key(id, &letter.position);
            if let Some(s) = registry.write().expect("registry lock").get_mut(&name) {
                s.errors += 1;
            }
            serde_json::to_vec(&letter).map(|v| vec![(key, v)]).unwrap_or_default()
        })
    }

    /// Dead letters plus the source's offsets, as storage writes for the next commit.
    fn extra_writes(&mut self, dead: Vec<DeadLetter>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut writes = Vec::with_capacity(dead.len() + 1);
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        let mut errors = 0u64;
        for d in dead {
            let position = d.position.to_string();
            let key = dead_letter_key(self.id, &position);
            // Input read again (tables bound later, a restart) dead-letters the same record
            // again: keep and count it once.
            if self.engine.store().get(&key)?.is_some() {
                continue;
            }
            errors += 1;
            let stored = StoredDeadLetter {
                source: self.name.clone(),
                collection: d.collection,
                position,
                raw: String::from_utf8_lossy(&d.raw).into_owned(),
                reason: d.reason,
                received_at_ms: now_ms,
            };
            writes.push((key, serde_json::to_vec(&stored)?));
        }
        if errors > 0 {
            self.status(|s| s.errors += errors);
        }
        writes.push((offsets_key(self.id), serde_json::to_vec(&self.offsets)?));
        Ok(writes)
    }
}

/// Read every dead letter of every source.
pub fn dead_letters(engine: &Engine) -> Result<Vec<StoredDeadLetter>> {
    let mut out = Vec::new();
    for (_, v) in engine.store().scan_prefix(&[keyspace::DEAD_LETTERS])? {
        out.push(serde_json::from_slice(&v)?);
    }
    Ok(out)
}
