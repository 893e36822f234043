//! Transaction assembly: group decoded Debezium events into source transactions and release
//! each one, whole, as one net change per primary key and table.
//!
//! # When a transaction is complete
//!
//! * [`TxnBoundaries::Metadata`] (the connector runs with `provide.transaction.metadata=true`):
//!   events carry `transaction.id`, and the metadata topic carries an END marker with the
//!   number of events per table. Events and markers are grouped by the part of the id that
//!   names the transaction (the txId of Postgres' `"txId:LSN"`, see the `txn_id` module). A
//!   transaction is complete once its END has been seen and every bound table has received as
//!   many distinct events (by `transaction.total_order`) as END announced for it; tables with
//!   no binding are not waited for, since their topics are usually not consumed. (Without `data_collections`, END's total `event_count` is compared
//!   with all events received.) Events and END may arrive in any order, from any topic. A
//!   redelivered event (same `total_order`) is counted once; an event of a transaction already
//!   released is ignored if that transaction was complete, and dead-lettered otherwise.
//! * [`TxnBoundaries::TxId`] (no metadata): events are grouped by `source.txId`. A stream (one
//!   Kafka partition, or one file) carries a transaction's events contiguously, in commit order,
//!   so a transaction is complete once *every stream that carried it has delivered a record of
//!   something else after it* (another txId, a snapshot read), or on [`TxnAssembler::flush`] at
//!   the end of input. This is exact for a single stream. Across several streams a transaction
//!   is released when the streams that carried it moved on, so events still lagging in another
//!   stream arrive later as a transaction of their own: use `Metadata` for multi-topic sources.
//!
//! # Release order
//!
//! Transactions are released in commit order: in `Metadata` mode the order of their END
//! markers (the metadata topic has one partition), so a complete transaction waits behind an
//! earlier one that still misses events (otherwise two transactions writing the same key could
//! be applied in the wrong order). In `TxId` mode, the order in which they complete.
//!
//! # Events outside transactions
//!
//! Snapshot reads (op `r`, or `source.snapshot` other than `false`) without a `transaction`
//! block belong to no streamed transaction. They are gathered into batches released as one unit (id `snapshot-N`) when a
//! streamed record arrives, when the batch holds [`DEFAULT_SNAPSHOT_BATCH`] events, at the last
//! snapshot record, or on `flush`: one batch per event would make loading a table slow, and a
//! snapshot has no transactions to keep apart anyway. A streamed event without transaction
//! information (no `transaction` block in `Metadata` mode, no `source.txId` in `TxId` mode) is
//! released on its own right away (id `untracked-N`).
//!
//! # Net change
//!
//! A released transaction holds one net change per primary key and table (see the
//! `net_change` module): DELETE+INSERT of a key is one upsert, many updates are one.
//!
//! # Malformed records
//!
//! A record that fails to decode, or whose row fails to convert to the table's schema, becomes
//! a [`DeadLetter`] with a reason; the rest of its transaction still applies. The event still
//! counts towards END's `event_count` whenever its transaction can be read from it (any JSON
//! with a `transaction` block). Bytes that are not JSON at all cannot name their transaction:
//! such an orphan is assigned to a transaction only when the records around it in its stream
//! pin it down (between records of transactions T and U, with exactly one transaction from T to
//! U in commit order still short of events), and never in a Kafka partition: there a
//! transaction short of events may merely be waiting for another partition, so pinning would
//! release it early. Otherwise that transaction waits until
//! [`TxnAssembler::release_stalled`] (for the source driver to call when it has caught up and
//! waited long enough) or `flush`, which release it with `missing` set.

use std::collections::{HashMap, HashSet, VecDeque};

use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use super::debezium::{ChangeEvent, DecodeError, Record, SnapshotPhase};
use super::net_change::{KeyedTable, NetChanges, net_changes};
use super::txn_id::{TxnKeys, postgres_tx_part};
use super::{Result, SourceError};

/// Snapshot reads released as one unit, at most (see the module doc).
pub const DEFAULT_SNAPSHOT_BATCH: usize = 4096;

/// Released transactions whose ids are remembered, to recognise late and duplicate events.
const REMEMBERED_RELEASED: usize = 65_536;

/// Unresolved orphans kept at most; beyond that the oldest is given up.
const MAX_ORPHANS: usize = 10_000;

/// A table that events are applied to: its Debezium collection (`"schema.table"`), declared
/// schema and primary key (indices into `schema`).
#[derive(Debug, Clone)]
pub struct UpstreamTable {
    pub collection: String,
    pub schema: SchemaRef,
    pub primary_key: Vec<usize>,
}

/// How the assembler finds where a source transaction ends (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnBoundaries {
    /// Transaction metadata: `transaction.id` on events plus BEGIN/END markers.
    Metadata,
    /// Group by `source.txId`; complete when each stream moves on to another transaction.
    TxId,
}

/// Where a record came from: a stream and an offset in it, to resume from or to report.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Position {
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
    File {
        path: String,
        line: u64,
    },
    /// Postgres logical replication: the commit LSN of the record's transaction, shared by
    /// all its records (one stream: the slot).
    Postgres {
        lsn: u64,
    },
    /// The load generator: the record's number (one stream).
    Generator {
        record: u64,
    },
}

/// An ordered stream of records (a topic partition, a file, a replication slot), by name.
pub type Stream = String;

impl Position {
    /// The stream this position is in: `topic/partition`, the file's path, or `wal`.
    pub fn stream(&self) -> Stream {
        match self {
            Position::Kafka { topic, partition, .. } => format!("{topic}/{partition}"),
            Position::File { path, .. } => path.clone(),
            Position::Postgres { .. } => "wal".into(),
            Position::Generator { .. } => "generator".into(),
        }
    }

    /// Whether this position is in `stream` (without building the stream's name).
    pub fn is_in(&self, stream: &str) -> bool {
        match self {
            Position::Kafka { topic, partition, .. } => {
                stream.strip_prefix(topic.as_str()).and_then(|rest| rest.strip_prefix('/')).is_some_and(|p| p.parse() == Ok(*partition))
            }
            Position::File { path, .. } => path == stream,
            Position::Postgres { .. } => stream == "wal",
            Position::Generator { .. } => stream == "generator",
        }
    }

    /// Offset within the stream; records of a stream arrive in non-decreasing offset order.
    pub fn offset(&self) -> u64 {
        match self {
            Position::Kafka { offset, .. } => u64::try_from(*offset).unwrap_or(0),
            Position::File { line, .. } => *line,
            Position::Postgres { lsn } => *lsn,
            Position::Generator { record } => *record,
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Kafka { topic, partition, offset } => write!(f, "{topic}/{partition}@{offset}"),
            Position::File { path, line } => write!(f, "{path}:{line}"),
            Position::Postgres { lsn } => write!(f, "{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff),
            Position::Generator { record } => write!(f, "record {record}"),
        }
    }
}

/// Index of a stream in [`TxnAssembler::streams`].
type StreamId = usize;

/// What the assembler hands to the engine, in order.
#[derive(Debug, Clone)]
pub enum AssemblerOutput {
    CompleteTxn(CompleteTxn),
    DeadLetter(DeadLetter),
}

/// A whole source transaction, as net changes per table.
#[derive(Debug, Clone)]
pub struct CompleteTxn {
    /// `transaction.id` (Metadata mode: the END marker's, else the first event's), `source.txId`
    /// (TxId mode), `snapshot-N` or `untracked-N`.
    pub id: String,
    /// First and last record of the transaction to arrive (events and markers).
    pub first_position: Position,
    pub last_position: Position,
    /// The first record of the transaction in each stream that carried it.
    pub stream_starts: Vec<Position>,
    /// When the upstream committed it (`ts_ms` of its events), ms since the epoch.
    pub source_ts_ms: Option<i64>,
    /// Change events received for it, bound or not, including dead-lettered ones.
    pub events: usize,
    /// Events END announced for bound tables that never arrived; non-zero only for a
    /// transaction forced out by `release_stalled` or `flush`.
    pub missing: u64,
    /// Bound tables with a non-empty net change, in binding order.
    pub tables: Vec<(String, NetChanges)>,
}

/// A record that could not be applied, kept with its bytes and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub position: Position,
    pub raw: Vec<u8>,
    pub reason: String,
    pub collection: Option<String>,
}

/// Counters for monitoring a source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Change events of bound tables accepted.
    pub events: u64,
    /// Change events of collections with no binding.
    pub ignored: u64,
    pub tombstones: u64,
    /// BEGIN/END markers.
    pub markers: u64,
    /// Events and markers seen twice (same `total_order` in a transaction, or after release).
    pub duplicates: u64,
    pub dead_letters: u64,
    /// Transactions released (including snapshot batches).
    pub released: u64,
    /// Transactions released incomplete by `release_stalled` or `flush`.
    pub forced: u64,
    /// Orphans (undecodable records) assigned to a transaction.
    pub orphans_assigned: u64,
}

struct PendingEvent {
    position: Position,
    raw: Vec<u8>,
    event: ChangeEvent,
    table: usize,
}

struct End {
    /// Order of the END marker: commit order.
    seq: u64,
    event_count: u64,
    /// Events announced per bound table (binding index), or `None` when END listed no
    /// data collections and only the total can be checked.
    expected: Option<Vec<(usize, u64)>>,
}

/// A transaction being assembled.
struct PendingTxn {
    /// What it is grouped by (see the `txn_id` module).
    key: String,
    /// The id to report: the END marker's `transaction.id`, else the first one seen.
    id: String,
    /// The id of its BEGIN or END marker, if one was seen.
    marker_id: Option<String>,
    /// Arrival number of its first record, to release END-less transactions in arrival order.
    first_seen: u64,
    first_position: Position,
    last_position: Position,
    /// First record per stream: where to resume reading while it is pending.
    stream_starts: Vec<Position>,
    events: Vec<PendingEvent>,
    /// Distinct change events counted (bound, ignored, dead-lettered).
    received: u64,
    /// `total_order`s seen, so a redelivered event is not counted twice.
    orders: HashSet<u64>,
    /// Distinct events counted per bound table (binding index).
    per_table: HashMap<usize, u64>,
    /// Events counted whose table is unknown (they failed to decode).
    unknown_table: u64,
    /// Undecodable records assigned to this transaction (not in `received`).
    orphans: u64,
    end: Option<End>,
    /// Streams that carried this transaction, and whether each has since moved past it.
    streams: Vec<(StreamId, bool)>,
}

impl PendingTxn {
    fn new(key: String, id: String, position: &Position, first_seen: u64) -> PendingTxn {
        PendingTxn {
            key,
            id,
            marker_id: None,
            first_seen,
            first_position: position.clone(),
            last_position: position.clone(),
            stream_starts: vec![position.clone()],
            events: Vec::new(),
            received: 0,
            orders: HashSet::new(),
            per_table: HashMap::new(),
            unknown_table: 0,
            orphans: 0,
            end: None,
            streams: Vec::new(),
        }
    }

    /// A record of this transaction arrived at `position`.
    fn saw(&mut self, position: &Position) {
        self.last_position = position.clone();
        let stream = position.stream();
        if !self.stream_starts.iter().any(|p| p.is_in(&stream)) {
            self.stream_starts.push(position.clone());
        }
    }

    /// `stream` carries this transaction (again).
    fn carried_by(&mut self, stream: StreamId) {
        match self.streams.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, moved)) => *moved = false,
            None => self.streams.push((stream, false)),
        }
    }

    /// Count one change event; false if it is a redelivery of one already counted.
    fn count(&mut self, total_order: Option<u64>, table: Counted) -> bool {
        if let Some(order) = total_order
            && !self.orders.insert(order)
        {
            return false;
        }
        self.received += 1;
        match table {
            Counted::Bound(t) => *self.per_table.entry(t).or_default() += 1,
            Counted::Unbound => {}
            Counted::Unknown => self.unknown_table += 1,
        }
        true
    }

    /// Events still expected for bound tables, once END is known.
    fn missing(&self) -> Option<u64> {
        let end = self.end.as_ref()?;
        Some(match &end.expected {
            None => end.event_count.saturating_sub(self.received + self.orphans),
            Some(expected) => expected
                .iter()
                .map(|(t, n)| n.saturating_sub(self.per_table.get(t).copied().unwrap_or(0)))
                .sum::<u64>()
                .saturating_sub(self.unknown_table + self.orphans),
        })
    }
}

/// Which table a counted event belongs to.
#[derive(Clone, Copy)]
enum Counted {
    Bound(usize),
    Unbound,
    /// It failed to decode before its table could be read.
    Unknown,
}

impl Counted {
    fn of(table: Option<usize>, collection_known: bool) -> Counted {
        match (table, collection_known) {
            (Some(t), _) => Counted::Bound(t),
            (None, true) => Counted::Unbound,
            (None, false) => Counted::Unknown,
        }
    }
}

/// The last record of a stream, as far as transactions are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cursor {
    Txn(String),
    /// A snapshot read or an event without transaction information.
    Untracked,
}

/// An undecodable record, waiting for the records around it to tell its transaction.
struct Orphan {
    stream: StreamId,
    /// False in a Kafka partition (see `orphan_owner`).
    pinnable: bool,
    prev: Option<Cursor>,
    next: Option<Cursor>,
}

enum Queued {
    /// A transaction whose END was seen (Metadata mode), released once complete.
    Waiting(String),
    Ready(Box<PendingTxn>),
}

/// Which unit an event belongs to.
enum Route {
    Snapshot,
    Untracked,
    Txn(String),
}

/// Groups decoded records into transactions and releases their net changes (see module doc).
pub struct TxnAssembler {
    mode: TxnBoundaries,
    bindings: Vec<KeyedTable>,
    by_collection: HashMap<String, usize>,
    open: HashMap<String, PendingTxn>,
    /// Units in release order.
    queue: VecDeque<Queued>,
    snapshot: Option<PendingTxn>,
    snapshot_batch: usize,
    /// Every stream seen, with its last record (`None` before any transaction-related one).
    streams: Vec<(Stream, Option<Cursor>)>,
    stream_ids: HashMap<Stream, StreamId>,
    /// The stream of the previous record: records mostly come in runs from one stream.
    last_stream: Option<StreamId>,
    orphans: VecDeque<Orphan>,
    /// Released transaction ids -> whether they were complete.
    released: HashMap<String, bool>,
    released_order: VecDeque<String>,
    keys: TxnKeys,
    next_end_seq: u64,
    arrivals: u64,
    next_group: u64,
    stats: AssemblerStats,
}

impl TxnAssembler {
    /// An assembler for `bindings`; fails if a binding has no primary key, a key index out of
    /// range, a key type the row format cannot encode, or names a collection bound already.
    pub fn new(bindings: Vec<UpstreamTable>, mode: TxnBoundaries) -> Result<TxnAssembler> {
        let mut by_collection = HashMap::new();
        let mut bound = Vec::with_capacity(bindings.len());
        for b in bindings {
            let problem = |reason: &str| SourceError::InvalidBinding { collection: b.collection.clone(), reason: reason.into() };
            if b.primary_key.is_empty() {
                return Err(problem("a primary key is required to compute net changes"));
            }
            if b.primary_key.iter().any(|&k| k >= b.schema.fields().len()) {
                return Err(problem("primary key column index out of range"));
            }
            if by_collection.insert(b.collection.clone(), bound.len()).is_some() {
                return Err(problem("bound twice"));
            }
            bound.push(KeyedTable::new(b)?);
        }
        Ok(TxnAssembler {
            mode,
            bindings: bound,
            by_collection,
            open: HashMap::new(),
            queue: VecDeque::new(),
            snapshot: None,
            snapshot_batch: DEFAULT_SNAPSHOT_BATCH,
            streams: Vec::new(),
            stream_ids: HashMap::new(),
            last_stream: None,
            orphans: VecDeque::new(),
            released: HashMap::new(),
            released_order: VecDeque::new(),
            keys: TxnKeys::default(),
            next_end_seq: 0,
            arrivals: 0,
            next_group: 0,
            stats: AssemblerStats::default(),
        })
    }

    /// Release snapshot reads in units of at most `events` (default [`DEFAULT_SNAPSHOT_BATCH`]).
    pub fn with_snapshot_batch(mut self, events: usize) -> TxnAssembler {
        self.snapshot_batch = events.max(1);
        self
    }

    /// Take one record: `raw` is its bytes (kept for dead letters), `record` its decoding.
    /// Returns what became ready, in order: dead letters as soon as they are known, complete
    /// transactions in commit order.
    pub fn push(&mut self, position: Position, raw: &[u8], record: Result<Record, DecodeError>) -> Vec<AssemblerOutput> {
        let mut out = Vec::new();
        self.arrivals += 1;
        match record {
            Ok(Record::Change(event)) => self.on_event(position, raw, event, &mut out),
            Ok(Record::Tombstone) => self.stats.tombstones += 1,
            Ok(Record::TxnBegin { id }) => self.on_marker(&position, id, None),
            Ok(Record::TxnEnd { id, event_count, data_collections }) => {
                self.on_marker(&position, id, Some((event_count, data_collections)))
            }
            Err(e) => self.on_error(position, raw, e, &mut out),
        }
        self.resolve_orphans();
        self.release_ready(&mut out);
        out
    }

    /// Transactions (and snapshot batches) received but not yet released.
    pub fn pending(&self) -> usize {
        self.open.len() + self.queue.iter().filter(|q| matches!(q, Queued::Ready(_))).count() + usize::from(self.snapshot.is_some())
    }

    /// The first record, per stream, of everything received but not released: a reader that
    /// resumes each stream there (or after its last record, if absent here) loses nothing.
    pub fn pending_starts(&self) -> HashMap<Stream, u64> {
        let queued = self.queue.iter().filter_map(|q| match q {
            Queued::Ready(t) => Some(t.as_ref()),
            Queued::Waiting(_) => None,
        });
        let mut starts: HashMap<Stream, u64> = HashMap::new();
        for txn in self.open.values().chain(queued).chain(self.snapshot.as_ref()) {
            for p in &txn.stream_starts {
                let e = starts.entry(p.stream()).or_insert(u64::MAX);
                *e = (*e).min(p.offset());
            }
        }
        starts
    }

    /// Counters since the assembler was built.
    pub fn stats(&self) -> &AssemblerStats {
        &self.stats
    }

    /// Release, in commit order, transactions that cannot complete by themselves: those whose
    /// END was seen but that still miss events (an undecodable record, a lost event), and in
    /// Metadata mode those without END whose every stream has moved past them (a lost END).
    /// For the source driver to call once it has caught up and waited long enough.
    pub fn release_stalled(&mut self) -> Vec<AssemblerOutput> {
        let mut out = Vec::new();
        self.close_snapshot();
        self.force_queued(&mut out);
        if self.mode == TxnBoundaries::Metadata {
            let mut abandoned: Vec<(u64, String)> = self
                .open
                .values()
                .filter(|t| t.end.is_none() && !t.streams.is_empty() && t.streams.iter().all(|(_, moved)| *moved))
                .map(|t| (t.first_seen, t.key.clone()))
                .collect();
            abandoned.sort();
            for (_, id) in abandoned {
                if let Some(txn) = self.open.remove(&id) {
                    self.stats.forced += 1;
                    self.release(txn, 0, &mut out);
                }
            }
        }
        out
    }

    /// End of input: release everything that can no longer grow. In TxId mode every open
    /// transaction; in Metadata mode what [`release_stalled`](Self::release_stalled) releases
    /// (a transaction whose END never came stays pending: it may be incomplete).
    pub fn flush(&mut self) -> Vec<AssemblerOutput> {
        match self.mode {
            TxnBoundaries::Metadata => self.release_stalled(),
            TxnBoundaries::TxId => {
                let mut out = Vec::new();
                self.close_snapshot();
                let mut open: Vec<PendingTxn> = self.open.drain().map(|(_, t)| t).collect();
                open.sort_by_key(|t| t.first_seen);
                self.queue.extend(open.into_iter().map(|t| Queued::Ready(Box::new(t))));
                self.release_ready(&mut out);
                out
            }
        }
    }

    fn route(&mut self, snapshot: bool, txn_id: Option<&str>, connector: Option<&str>, source_tx_id: Option<i64>) -> Route {
        match self.mode {
            // An event with a transaction block is counted by its END, whatever else it says.
            TxnBoundaries::Metadata => match txn_id {
                Some(id) => Route::Txn(self.event_key(id, connector, source_tx_id)),
                None if snapshot => Route::Snapshot,
                None => Route::Untracked,
            },
            // Snapshot reads carry the snapshot's txId: they must not become one huge transaction.
            TxnBoundaries::TxId if snapshot => Route::Snapshot,
            TxnBoundaries::TxId => source_tx_id.map_or(Route::Untracked, |tx| Route::Txn(tx.to_string())),
        }
    }

    /// The key of an event's transaction in Metadata mode.
    fn event_key(&mut self, id: &str, connector: Option<&str>, source_tx_id: Option<i64>) -> String {
        let key = self.keys.of_event(id, connector, source_tx_id);
        // A marker that came before any event was keyed the Postgres way; an event of another
        // connector with that very id belongs to it all the same.
        if key == id
            && !self.open.contains_key(id)
            && let Some(tx) = postgres_tx_part(id)
            && self.open.get(tx).is_some_and(|t| t.marker_id.as_deref() == Some(id))
        {
            return tx.to_string();
        }
        key.to_string()
    }

    /// The id to report for a transaction first seen in an event: its `transaction.id` in
    /// Metadata mode, the txId in TxId mode.
    fn reported_id<'a>(&self, txn_id: Option<&'a str>, key: &'a str) -> &'a str {
        match self.mode {
            TxnBoundaries::Metadata => txn_id.unwrap_or(key),
            TxnBoundaries::TxId => key,
        }
    }

    fn on_event(&mut self, position: Position, raw: &[u8], event: ChangeEvent, out: &mut Vec<AssemblerOutput>) {
        let route =
            self.route(event.snapshot != SnapshotPhase::Streaming, event.txn_id.as_deref(), event.connector.as_deref(), event.source_tx_id);
        let table = self.by_collection.get(&event.collection).copied();
        match route {
            Route::Snapshot => {
                self.advance_stream(&position, Cursor::Untracked);
                let Some(table) = table else {
                    self.stats.ignored += 1;
                    return;
                };
                self.stats.events += 1;
                let last = event.snapshot == SnapshotPhase::Last;
                if self.snapshot.is_none() {
                    self.next_group += 1;
                    let id = format!("snapshot-{}", self.next_group);
                    self.snapshot = Some(PendingTxn::new(id.clone(), id, &position, self.arrivals));
                }
                let Some(group) = self.snapshot.as_mut() else {
                    return;
                };
                group.saw(&position);
                group.received += 1;
                group.events.push(PendingEvent { position, raw: raw.to_vec(), event, table });
                if last || group.events.len() >= self.snapshot_batch {
                    self.close_snapshot();
                }
            }
            Route::Untracked => {
                self.close_snapshot();
                self.advance_stream(&position, Cursor::Untracked);
                let Some(table) = table else {
                    self.stats.ignored += 1;
                    return;
                };
                self.stats.events += 1;
                self.next_group += 1;
                let id = format!("untracked-{}", self.next_group);
                let mut txn = PendingTxn::new(id.clone(), id, &position, self.arrivals);
                txn.received = 1;
                txn.events.push(PendingEvent { position, raw: raw.to_vec(), event, table });
                self.queue.push_back(Queued::Ready(Box::new(txn)));
            }
            Route::Txn(key) => {
                self.close_snapshot();
                let stream = self.advance_stream(&position, Cursor::Txn(key.clone()));
                let id = event.txn_id.as_deref().unwrap_or(&key);
                if self.is_late(&key, id, &position, raw, Some(event.collection.as_str()), out) {
                    return;
                }
                let arrivals = self.arrivals;
                let id = self.reported_id(event.txn_id.as_deref(), &key).to_string();
                let txn = self.open.entry(key).or_insert_with_key(|key| PendingTxn::new(key.clone(), id, &position, arrivals));
                txn.saw(&position);
                txn.carried_by(stream);
                if !txn.count(event.total_order, Counted::of(table, true)) {
                    self.stats.duplicates += 1;
                    return;
                }
                match table {
                    Some(table) => {
                        self.stats.events += 1;
                        txn.events.push(PendingEvent { position, raw: raw.to_vec(), event, table });
                    }
                    None => self.stats.ignored += 1,
                }
            }
        }
    }

    fn on_marker(&mut self, position: &Position, id: String, end: Option<(u64, Vec<(String, u64)>)>) {
        self.stats.markers += 1;
        // Markers name `transaction.id`, which TxId mode does not group by.
        if self.mode == TxnBoundaries::TxId {
            return;
        }
        self.close_snapshot();
        let key = self.keys.of_marker(&id).to_string();
        self.advance_stream(position, Cursor::Txn(key.clone()));
        if self.released.contains_key(&key) {
            self.stats.duplicates += u64::from(end.is_some());
            return;
        }
        let expected = end
            .as_ref()
            .filter(|(_, dc)| !dc.is_empty())
            .map(|(_, dc)| dc.iter().filter_map(|(c, n)| Some((self.binding_for_data_collection(c)?, *n))).collect::<Vec<_>>());
        let arrivals = self.arrivals;
        let txn = self.open.entry(key.clone()).or_insert_with_key(|key| PendingTxn::new(key.clone(), id.clone(), position, arrivals));
        txn.saw(position);
        txn.marker_id.get_or_insert_with(|| id.clone());
        if let Some((event_count, _)) = end {
            if txn.end.is_some() {
                self.stats.duplicates += 1;
                return;
            }
            txn.id = id;
            txn.end = Some(End { seq: self.next_end_seq, event_count, expected });
            self.next_end_seq += 1;
            self.queue.push_back(Queued::Waiting(key));
        }
    }

    /// The binding of an END marker's data collection. Connectors name it as they name the
    /// table's topic: `schema.table` for Postgres, `db.schema.table` for SQL Server, so a
    /// binding also matches a name that ends with `.` and its collection.
    fn binding_for_data_collection(&self, name: &str) -> Option<usize> {
        self.by_collection.get(name).copied().or_else(|| {
            self.bindings.iter().position(|b| {
                name.len() > b.collection.len()
                    && name.ends_with(b.collection.as_str())
                    && name.as_bytes()[name.len() - b.collection.len() - 1] == b'.'
            })
        })
    }

    fn on_error(&mut self, position: Position, raw: &[u8], error: DecodeError, out: &mut Vec<AssemblerOutput>) {
        let Some(context) = error.context() else {
            // Nothing readable: in Metadata mode the records around it may still tell which
            // transaction it belonged to.
            if self.mode == TxnBoundaries::Metadata {
                let stream = self.stream_id(&position);
                let prev = self.streams[stream].1.clone();
                if self.orphans.len() == MAX_ORPHANS {
                    self.orphans.pop_front();
                }
                let pinnable = !matches!(position, Position::Kafka { .. });
                self.orphans.push_back(Orphan { stream, prev, next: None, pinnable });
            }
            self.dead_letter(position, raw, error.to_string(), None, out);
            return;
        };
        let unbound = context.collection.as_ref().is_some_and(|c| !self.by_collection.contains_key(c));
        let route = self.route(context.snapshot, context.txn_id.as_deref(), context.connector.as_deref(), context.source_tx_id);
        let collection = context.collection.clone();
        match route {
            Route::Snapshot | Route::Untracked => {
                self.advance_stream(&position, Cursor::Untracked);
            }
            Route::Txn(key) => {
                let stream = self.advance_stream(&position, Cursor::Txn(key.clone()));
                if !self.released.contains_key(&key) {
                    let arrivals = self.arrivals;
                    let id = self.reported_id(context.txn_id.as_deref(), &key).to_string();
                    let txn = self.open.entry(key).or_insert_with_key(|key| PendingTxn::new(key.clone(), id, &position, arrivals));
                    txn.saw(&position);
                    txn.carried_by(stream);
                    let table = collection.as_ref().and_then(|c| self.by_collection.get(c).copied());
                    if !txn.count(context.total_order, Counted::of(table, collection.is_some())) {
                        self.stats.duplicates += 1;
                        return;
                    }
                }
            }
        }
        if unbound {
            self.stats.ignored += 1;
        } else {
            self.dead_letter(position, raw, error.to_string(), collection, out);
        }
    }

    fn dead_letter(&mut self, position: Position, raw: &[u8], reason: String, collection: Option<String>, out: &mut Vec<AssemblerOutput>) {
        self.stats.dead_letters += 1;
        out.push(AssemblerOutput::DeadLetter(DeadLetter { position, raw: raw.to_vec(), reason, collection }));
    }

    /// An event of a transaction already released: a redelivery if the transaction was
    /// complete, otherwise an event that came too late to be applied with it.
    fn is_late(
        &mut self,
        key: &str,
        id: &str,
        position: &Position,
        raw: &[u8],
        collection: Option<&str>,
        out: &mut Vec<AssemblerOutput>,
    ) -> bool {
        if self.mode != TxnBoundaries::Metadata {
            return false;
        }
        match self.released.get(key) {
            None => false,
            Some(true) => {
                self.stats.duplicates += 1;
                true
            }
            Some(false) => {
                let reason = format!("transaction {id} was already released without this event");
                self.dead_letter(position.clone(), raw, reason, collection.map(str::to_string), out);
                true
            }
        }
    }

    fn stream_id(&mut self, position: &Position) -> StreamId {
        if let Some(id) = self.last_stream
            && position.is_in(&self.streams[id].0)
        {
            return id;
        }
        let stream = position.stream();
        let id = match self.stream_ids.get(&stream) {
            Some(&id) => id,
            None => {
                self.streams.push((stream.clone(), None));
                self.stream_ids.insert(stream, self.streams.len() - 1);
                self.streams.len() - 1
            }
        };
        self.last_stream = Some(id);
        id
    }

    /// A record of `cursor` arrived in `position`'s stream: whatever the stream carried before
    /// is behind it now (TxId completion), and orphans waiting for their successor have it.
    fn advance_stream(&mut self, position: &Position, cursor: Cursor) -> StreamId {
        let stream = self.stream_id(position);
        for orphan in self.orphans.iter_mut().filter(|o| o.next.is_none() && o.stream == stream) {
            orphan.next = Some(cursor.clone());
        }
        let current = &mut self.streams[stream].1;
        if current.as_ref() == Some(&cursor) {
            return stream;
        }
        let Some(Cursor::Txn(previous)) = current.replace(cursor) else {
            return stream;
        };
        let Some(txn) = self.open.get_mut(&previous) else {
            return stream;
        };
        if let Some((_, moved)) = txn.streams.iter_mut().find(|(s, _)| *s == stream) {
            *moved = true;
        }
        if self.mode == TxnBoundaries::TxId
            && txn.streams.iter().all(|(_, moved)| *moved)
            && let Some(txn) = self.open.remove(&previous)
        {
            self.queue.push_back(Queued::Ready(Box::new(txn)));
        }
        stream
    }

    fn close_snapshot(&mut self) {
        if let Some(group) = self.snapshot.take() {
            self.queue.push_back(Queued::Ready(Box::new(group)));
        }
    }

    /// Assign orphans whose neighbours in their stream pin down one transaction short of events.
    fn resolve_orphans(&mut self) {
        let mut i = 0;
        while i < self.orphans.len() {
            match self.orphan_owner(&self.orphans[i]) {
                OrphanOwner::Unknown => i += 1,
                OrphanOwner::Nobody => {
                    self.orphans.remove(i);
                }
                OrphanOwner::Txn(id) => {
                    if let Some(txn) = self.open.get_mut(&id) {
                        txn.orphans += 1;
                        self.stats.orphans_assigned += 1;
                    }
                    self.orphans.remove(i);
                }
            }
        }
    }

    fn orphan_owner(&self, orphan: &Orphan) -> OrphanOwner {
        // A Kafka partition is one of several streams of a transaction: one short of events
        // may just be waiting for another partition, so the orphan cannot be pinned to it.
        if !orphan.pinnable {
            return OrphanOwner::Nobody;
        }
        let end_seq = |id: &str| self.open.get(id).map(|t| t.end.as_ref().map(|e| e.seq));
        let Some(next) = &orphan.next else {
            return OrphanOwner::Unknown;
        };
        let hi = match next {
            Cursor::Untracked => return OrphanOwner::Nobody,
            Cursor::Txn(id) => match end_seq(id) {
                // Released: so is everything before it in commit order.
                None => return OrphanOwner::Nobody,
                Some(None) => return OrphanOwner::Unknown,
                Some(Some(seq)) => seq,
            },
        };
        let lo = match &orphan.prev {
            Some(Cursor::Txn(id)) => match end_seq(id) {
                None => 0,
                Some(None) => return OrphanOwner::Unknown,
                Some(Some(seq)) => seq,
            },
            _ => 0,
        };
        let mut short =
            self.open.values().filter(|t| t.end.as_ref().is_some_and(|e| (lo..=hi).contains(&e.seq)) && t.missing().is_some_and(|m| m > 0));
        match (short.next(), short.next()) {
            (None, _) => OrphanOwner::Nobody,
            (Some(t), None) => OrphanOwner::Txn(t.key.clone()),
            _ => OrphanOwner::Unknown,
        }
    }

    fn release_ready(&mut self, out: &mut Vec<AssemblerOutput>) {
        while let Some(front) = self.queue.front() {
            let txn = match front {
                Queued::Ready(_) => match self.queue.pop_front() {
                    Some(Queued::Ready(txn)) => *txn,
                    _ => break,
                },
                Queued::Waiting(id) => {
                    let complete = self.open.get(id).map(|t| t.missing() == Some(0));
                    match complete {
                        Some(false) => break,
                        Some(true) => {
                            let id = id.clone();
                            self.queue.pop_front();
                            match self.open.remove(&id) {
                                Some(txn) => txn,
                                None => continue,
                            }
                        }
                        None => {
                            self.queue.pop_front();
                            continue;
                        }
                    }
                }
            };
            self.release(txn, 0, out);
        }
    }

    /// Release every queued unit, complete or not.
    fn force_queued(&mut self, out: &mut Vec<AssemblerOutput>) {
        while let Some(queued) = self.queue.pop_front() {
            match queued {
                Queued::Ready(txn) => self.release(*txn, 0, out),
                Queued::Waiting(id) => {
                    if let Some(txn) = self.open.remove(&id) {
                        let missing = txn.missing().unwrap_or(0);
                        if missing > 0 {
                            self.stats.forced += 1;
                        }
                        self.release(txn, missing, out);
                    }
                }
            }
        }
    }

    fn release(&mut self, mut txn: PendingTxn, missing: u64, out: &mut Vec<AssemblerOutput>) {
        self.stats.released += 1;
        if self.mode == TxnBoundaries::Metadata && txn.end.is_some() {
            if self.released_order.len() == REMEMBERED_RELEASED
                && let Some(oldest) = self.released_order.pop_front()
            {
                self.released.remove(&oldest);
            }
            self.released.insert(txn.key.clone(), missing == 0);
            self.released_order.push_back(txn.key.clone());
        }
        let events = std::mem::take(&mut txn.events);
        let source_ts_ms = events.iter().filter_map(|e| e.event.ts_ms).max();
        let mut events: Vec<Option<PendingEvent>> = if events.iter().all(|e| e.event.total_order.is_some()) {
            let mut events = events;
            events.sort_by_key(|e| e.event.total_order);
            events.into_iter().map(Some).collect()
        } else {
            events.into_iter().map(Some).collect()
        };
        let mut by_table: Vec<Vec<usize>> = vec![Vec::new(); self.bindings.len()];
        for (i, e) in events.iter().enumerate() {
            if let Some(e) = e {
                by_table[e.table].push(i);
            }
        }
        let mut tables = Vec::new();
        let mut dead: Vec<(usize, String)> = Vec::new();
        for (table, indices) in by_table.iter().enumerate() {
            if indices.is_empty() {
                continue;
            }
            let binding = &self.bindings[table];
            let table_events: Vec<&ChangeEvent> = indices.iter().filter_map(|&i| events[i].as_ref().map(|e| &e.event)).collect();
            let (changes, failed) = net_changes(binding, &table_events);
            dead.extend(failed.into_iter().map(|(k, reason)| (indices[k], reason)));
            if !changes.is_empty() {
                tables.push((binding.collection.clone(), changes));
            }
        }
        dead.sort_by_key(|(i, _)| *i);
        for (i, reason) in dead {
            if let Some(e) = events[i].take() {
                self.stats.dead_letters += 1;
                out.push(AssemblerOutput::DeadLetter(DeadLetter {
                    position: e.position,
                    raw: e.raw,
                    reason,
                    collection: Some(e.event.collection),
                }));
            }
        }
        let received = usize::try_from(txn.received).unwrap_or(usize::MAX);
        out.push(AssemblerOutput::CompleteTxn(CompleteTxn {
            id: txn.id,
            first_position: txn.first_position,
            last_position: txn.last_position,
            stream_starts: txn.stream_starts,
            source_ts_ms,
            events: received,
            missing,
            tables,
        }));
    }
}

enum OrphanOwner {
    /// Not decidable yet.
    Unknown,
    /// It belongs to no transaction still waiting (or it cannot be known): give up on it.
    Nobody,
    Txn(String),
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use serde_json::{Value, json};

    use super::*;
    use crate::sources::debezium::decode;

    fn bindings() -> Vec<UpstreamTable> {
        let shipments = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("status", DataType::Utf8, true),
            Field::new("weight", DataType::Float64, true),
        ]);
        let orders = Schema::new(vec![
            Field::new("region", DataType::Utf8, false),
            Field::new("id", DataType::Int64, false),
            Field::new("total", DataType::Int64, true),
        ]);
        vec![
            UpstreamTable { collection: "public.shipments".into(), schema: Arc::new(shipments), primary_key: vec![0] },
            UpstreamTable { collection: "public.orders".into(), schema: Arc::new(orders), primary_key: vec![0, 1] },
        ]
    }

    fn file(line: u64) -> Position {
        Position::File { path: "events.jsonl".into(), line }
    }

    fn kafka(topic: &str, offset: i64) -> Position {
        Position::Kafka { topic: topic.into(), partition: 0, offset }
    }

    /// A change event as Debezium writes it (plain payload).
    fn event(table: &str, op: &str, before: Value, after: Value, txn: Option<(&str, u64)>, tx_id: i64) -> String {
        let transaction = match txn {
            Some((id, order)) => json!({"id": id, "total_order": order, "data_collection_order": order}),
            None => Value::Null,
        };
        json!({"before": before, "after": after, "op": op, "ts_ms": 1,
               "source": {"connector": "postgresql", "db": "app", "schema": "public", "table": table,
                          "txId": tx_id, "lsn": 100 + tx_id, "snapshot": if op == "r" { "true" } else { "false" }},
               "transaction": transaction})
        .to_string()
    }

    fn end(id: &str, collections: &[(&str, u64)]) -> String {
        let total: u64 = collections.iter().map(|(_, n)| n).sum();
        let dc: Vec<Value> = collections.iter().map(|(c, n)| json!({"data_collection": c, "event_count": n})).collect();
        json!({"status": "END", "id": id, "event_count": total, "data_collections": dc, "ts_ms": 1}).to_string()
    }

    fn begin(id: &str) -> String {
        json!({"status": "BEGIN", "id": id, "event_count": null, "data_collections": null}).to_string()
    }

    struct Harness {
        assembler: TxnAssembler,
        txns: Vec<CompleteTxn>,
        dead: Vec<DeadLetter>,
    }

    impl Harness {
        fn new(mode: TxnBoundaries) -> Harness {
            Harness { assembler: TxnAssembler::new(bindings(), mode).unwrap(), txns: vec![], dead: vec![] }
        }

        fn push(&mut self, position: Position, raw: &str) -> usize {
            let out = self.assembler.push(position, raw.as_bytes(), decode(Some(raw.as_bytes())));
            self.collect(out)
        }

        fn collect(&mut self, out: Vec<AssemblerOutput>) -> usize {
            let before = self.txns.len();
            for o in out {
                match o {
                    AssemblerOutput::CompleteTxn(t) => self.txns.push(t),
                    AssemblerOutput::DeadLetter(d) => self.dead.push(d),
                }
            }
            self.txns.len() - before
        }

        fn flush(&mut self) -> usize {
            let out = self.assembler.flush();
            self.collect(out)
        }
    }

    fn table<'a>(txn: &'a CompleteTxn, name: &str) -> &'a NetChanges {
        &txn.tables.iter().find(|(c, _)| c == name).unwrap_or_else(|| panic!("no changes for {name}: {txn:?}")).1
    }

    fn ids(batch: &RecordBatch, column: &str) -> Vec<i64> {
        batch.column_by_name(column).unwrap().as_primitive::<Int64Type>().values().to_vec()
    }

    fn strings(batch: &RecordBatch, column: &str) -> Vec<Option<String>> {
        let c = batch.column_by_name(column).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        c.iter().map(|s| s.map(str::to_string)).collect()
    }

    #[test]
    fn two_table_transaction_with_end_after_the_events() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        h.push(kafka("txn", 1), &begin("571:5001"));
        let with = |o: u64| Some(("571:5001", o));
        assert_eq!(
            h.push(kafka("shipments", 1), &event("shipments", "c", Value::Null, json!({"id": 1, "status": "new"}), with(1), 571)),
            0
        );
        assert_eq!(
            h.push(kafka("orders", 1), &event("orders", "c", Value::Null, json!({"region": "eu", "id": 9, "total": 5}), with(2), 571)),
            0
        );
        assert_eq!(h.push(kafka("shipments", 2), &event("shipments", "u", Value::Null, json!({"id": 2, "status": "x"}), with(3), 571)), 0);
        assert_eq!(h.assembler.pending(), 1);
        assert_eq!(h.push(kafka("txn", 2), &end("571:5001", &[("public.shipments", 2), ("public.orders", 1)])), 1);
        assert_eq!(h.assembler.pending(), 0);
        let txn = &h.txns[0];
        assert_eq!((txn.id.as_str(), txn.events, txn.missing), ("571:5001", 3, 0));
        assert_eq!((&txn.first_position, &txn.last_position), (&kafka("txn", 1), &kafka("txn", 2)));
        assert_eq!(ids(&table(txn, "public.shipments").upserts, "id"), vec![1, 2]);
        let orders = table(txn, "public.orders");
        assert_eq!(ids(&orders.upserts, "total"), vec![5]);
        assert_eq!(orders.deletes.num_rows(), 0);
        assert_eq!(orders.deletes.schema().fields().len(), 2);
        assert!(h.dead.is_empty());
    }

    #[test]
    fn end_before_the_events_and_out_of_order_arrival() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        assert_eq!(h.push(kafka("txn", 1), &end("600:1", &[("public.shipments", 2), ("public.orders", 1)])), 0);
        assert_eq!(
            h.push(kafka("orders", 1), &event("orders", "c", Value::Null, json!({"region": "eu", "id": 1}), Some(("600:1", 3)), 600)),
            0
        );
        assert_eq!(
            h.push(kafka("shipments", 1), &event("shipments", "c", Value::Null, json!({"id": 1, "status": "a"}), Some(("600:1", 2)), 600)),
            0
        );
        // A redelivered event (same total_order) does not count twice.
        assert_eq!(
            h.push(kafka("shipments", 2), &event("shipments", "c", Value::Null, json!({"id": 1, "status": "a"}), Some(("600:1", 2)), 600)),
            0
        );
        assert_eq!(h.assembler.stats().duplicates, 1);
        assert_eq!(
            h.push(kafka("shipments", 3), &event("shipments", "u", Value::Null, json!({"id": 1, "status": "b"}), Some(("600:1", 1)), 600)),
            1
        );
        // total_order decides the final state, not arrival: order 2 ("a") comes after order 1 ("b").
        let s = table(&h.txns[0], "public.shipments");
        assert_eq!(strings(&s.upserts, "status"), vec![Some("a".into())]);
    }

    #[test]
    fn transactions_are_released_in_end_order() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        h.push(kafka("txn", 1), &end("1:1", &[("public.shipments", 1)]));
        h.push(kafka("txn", 2), &end("2:2", &[("public.shipments", 1)]));
        // The later transaction is complete first, but waits for the earlier one.
        assert_eq!(
            h.push(kafka("s", 1), &event("shipments", "u", Value::Null, json!({"id": 1, "status": "second"}), Some(("2:2", 1)), 2)),
            0
        );
        assert_eq!(
            h.push(kafka("s", 2), &event("shipments", "u", Value::Null, json!({"id": 1, "status": "first"}), Some(("1:1", 1)), 1)),
            2
        );
        assert_eq!(h.txns.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec!["1:1", "2:2"]);
    }

    #[test]
    fn delete_insert_of_a_key_collapses_to_one_upsert() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        let id = "700:1";
        h.push(file(1), &event("shipments", "d", json!({"id": 5, "status": null}), Value::Null, Some((id, 1)), 700));
        h.push(file(2), "");
        h.push(file(3), &event("shipments", "c", Value::Null, json!({"id": 5, "status": "re-inserted"}), Some((id, 2)), 700));
        h.push(file(4), &event("shipments", "d", json!({"id": 6}), Value::Null, Some((id, 3)), 700));
        assert_eq!(h.push(file(5), &end(id, &[("public.shipments", 3)])), 1);
        let s = table(&h.txns[0], "public.shipments");
        assert_eq!(ids(&s.upserts, "id"), vec![5]);
        assert_eq!(strings(&s.upserts, "status"), vec![Some("re-inserted".into())]);
        assert_eq!(ids(&s.deletes, "id"), vec![6]);
        assert_eq!(h.assembler.stats().tombstones, 1);
    }

    #[test]
    fn truncate_removes_what_came_before_it_in_the_transaction() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        let id = "710:1";
        h.push(file(1), &event("shipments", "c", Value::Null, json!({"id": 1, "status": "gone"}), Some((id, 1)), 710));
        h.push(file(2), &event("shipments", "t", Value::Null, Value::Null, Some((id, 2)), 710));
        h.push(file(3), &event("shipments", "c", Value::Null, json!({"id": 2, "status": "after"}), Some((id, 3)), 710));
        h.push(file(4), &event("orders", "c", Value::Null, json!({"region": "eu", "id": 1, "total": 3}), Some((id, 4)), 710));
        assert_eq!(h.push(file(5), &end(id, &[("public.shipments", 3), ("public.orders", 1)])), 1);
        let s = table(&h.txns[0], "public.shipments");
        assert!(s.truncate);
        assert_eq!(ids(&s.upserts, "id"), vec![2]);
        assert!(!table(&h.txns[0], "public.orders").truncate);
        // A truncate alone is a change of its table.
        let id = "711:1";
        h.push(file(6), &event("shipments", "t", Value::Null, Value::Null, Some((id, 1)), 711));
        assert_eq!(h.push(file(7), &end(id, &[("public.shipments", 1)])), 1);
        let s = table(&h.txns[1], "public.shipments");
        assert!(s.truncate && s.upserts.num_rows() == 0 && s.deletes.num_rows() == 0);
    }

    /// What Debezium's Postgres connector writes (the simulator's records: `txId:LSN` ids,
    /// BEGIN/END at their own LSNs, tombstones, primary-key updates, key-only `before`)
    /// assembles into exactly the simulated transactions, read as one stream or one stream per
    /// topic.
    #[test]
    fn simulated_debezium_postgres_output_assembles_one_to_one() {
        use crate::sources::logistics::{Scenario, Simulator, TABLES};
        let bindings = || -> Vec<UpstreamTable> {
            TABLES
                .iter()
                .map(|(table, columns)| {
                    let fields: Vec<Field> = columns
                        .iter()
                        .map(|(c, t)| {
                            let ty = match *t {
                                "BIGINT" => DataType::Int64,
                                "DOUBLE PRECISION" => DataType::Float64,
                                "INT" | "INTEGER" => DataType::Int32,
                                _ => DataType::Utf8,
                            };
                            Field::new(*c, ty, *c != "id")
                        })
                        .collect();
                    UpstreamTable { collection: format!("public.{table}"), schema: Arc::new(Schema::new(fields)), primary_key: vec![0] }
                })
                .collect()
        };
        let mut sim = Simulator::new(Scenario { scale: 10, seed: 3 });
        let history: Vec<_> = (0..400).map(|_| sim.next_txn()).collect();
        for per_topic in [false, true] {
            let mut assembler = TxnAssembler::new(bindings(), TxnBoundaries::Metadata).unwrap();
            let mut released = Vec::new();
            let mut lines: HashMap<String, u64> = HashMap::new();
            let mut pending_topics: Vec<(String, Option<String>)> = Vec::new();
            for txn in &history {
                for record in txn.debezium_records(txn.commit_us / 1000) {
                    let topic = if per_topic { record.table.unwrap_or("transaction").to_string() } else { "all".into() };
                    pending_topics.push((topic, record.value));
                }
                // Per topic, deliver the transaction topic first: END before the events.
                if per_topic {
                    pending_topics.sort_by_key(|(t, _)| t != "transaction");
                }
                for (topic, value) in pending_topics.drain(..) {
                    let line = lines.entry(topic.clone()).or_default();
                    *line += 1;
                    let position = Position::File { path: topic, line: *line };
                    let raw = value.unwrap_or_default();
                    let out = assembler.push(position, raw.as_bytes(), decode(Some(raw.as_bytes())));
                    for o in out {
                        match o {
                            AssemblerOutput::CompleteTxn(t) => released.push(t),
                            AssemblerOutput::DeadLetter(d) => panic!("dead letter: {d:?}"),
                        }
                    }
                }
            }
            assert_eq!(released.len(), history.len(), "per topic: {per_topic}");
            assert_eq!(assembler.pending(), 0);
            for (txn, sim) in released.iter().zip(&history) {
                assert_eq!(txn.id, format!("{}:{}", sim.xid, sim.commit_lsn()));
                assert_eq!(txn.missing, 0);
            }
            assert!(assembler.stats().tombstones > 0);
        }
    }

    #[test]
    fn insert_then_delete_vanishes_but_update_then_delete_is_a_delete() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        let id = "800:1";
        h.push(file(1), &event("shipments", "c", Value::Null, json!({"id": 1, "status": "tmp"}), Some((id, 1)), 800));
        h.push(file(2), &event("shipments", "d", json!({"id": 1}), Value::Null, Some((id, 2)), 800));
        h.push(file(3), &event("shipments", "u", Value::Null, json!({"id": 2, "status": "x"}), Some((id, 3)), 800));
        h.push(file(4), &event("shipments", "d", json!({"id": 2}), Value::Null, Some((id, 4)), 800));
        // Delete, insert, delete again: the key existed before, so it is a delete.
        h.push(file(5), &event("shipments", "d", json!({"id": 3}), Value::Null, Some((id, 5)), 800));
        h.push(file(6), &event("shipments", "c", Value::Null, json!({"id": 3, "status": "y"}), Some((id, 6)), 800));
        h.push(file(7), &event("shipments", "d", json!({"id": 3}), Value::Null, Some((id, 7)), 800));
        assert_eq!(h.push(file(8), &end(id, &[("public.shipments", 7)])), 1);
        let s = table(&h.txns[0], "public.shipments");
        assert_eq!(s.upserts.num_rows(), 0);
        assert_eq!(ids(&s.deletes, "id"), vec![2, 3]);

        // A transaction whose only key vanished has no table changes, but is still released.
        h.push(file(9), &event("shipments", "c", Value::Null, json!({"id": 4}), Some(("801:1", 1)), 801));
        h.push(file(10), &event("shipments", "d", json!({"id": 4}), Value::Null, Some(("801:1", 2)), 801));
        assert_eq!(h.push(file(11), &end("801:1", &[("public.shipments", 2)])), 1);
        assert!(h.txns[1].tables.is_empty());
    }

    #[test]
    fn redundant_updates_collapse_and_key_changes_delete_the_old_key() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        let id = "900:1";
        for (order, status) in [(1, "a"), (2, "b"), (3, "c")] {
            h.push(file(order), &event("shipments", "u", Value::Null, json!({"id": 1, "status": status}), Some((id, order)), 900));
        }
        // REPLICA IDENTITY FULL update that changes the key from 7 to 8.
        h.push(
            file(4),
            &event("shipments", "u", json!({"id": 7, "status": "old"}), json!({"id": 8, "status": "moved"}), Some((id, 4)), 900),
        );
        // ... and one that keeps its key: the before image does not delete it.
        h.push(file(5), &event("shipments", "u", json!({"id": 9, "status": "p"}), json!({"id": 9, "status": "q"}), Some((id, 5)), 900));
        assert_eq!(h.push(file(6), &end(id, &[("public.shipments", 5)])), 1);
        let s = table(&h.txns[0], "public.shipments");
        assert_eq!(ids(&s.upserts, "id"), vec![1, 8, 9]);
        assert_eq!(strings(&s.upserts, "status"), vec![Some("c".into()), Some("moved".into()), Some("q".into())]);
        assert_eq!(ids(&s.deletes, "id"), vec![7]);
    }

    #[test]
    fn composite_keys_and_unbound_collections() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        let id = "950:1";
        h.push(file(1), &event("orders", "c", Value::Null, json!({"region": "eu", "id": 1, "total": 1}), Some((id, 1)), 950));
        h.push(file(2), &event("orders", "c", Value::Null, json!({"region": "us", "id": 1, "total": 2}), Some((id, 2)), 950));
        h.push(file(3), &event("orders", "u", Value::Null, json!({"region": "eu", "id": 1, "total": 3}), Some((id, 3)), 950));
        h.push(file(4), &event("audit_log", "c", Value::Null, json!({"id": 1}), Some((id, 4)), 950));
        // END counts the unbound table too; it is not waited for.
        assert_eq!(h.push(file(5), &end(id, &[("public.orders", 3), ("public.audit_log", 2)])), 1);
        let o = table(&h.txns[0], "public.orders");
        assert_eq!(ids(&o.upserts, "total"), vec![3, 2]);
        assert_eq!(h.assembler.stats().ignored, 1);
        assert_eq!(h.txns[0].events, 4);
    }

    #[test]
    fn data_collections_named_with_a_database_prefix_are_waited_for() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        h.push(file(1), &end("1400:1", &[("app.public.shipments", 2), ("app.public.orders", 0)]));
        assert_eq!(h.push(file(2), &event("shipments", "c", Value::Null, json!({"id": 1}), Some(("1400:1", 1)), 1400)), 0);
        assert_eq!(h.push(file(3), &event("shipments", "c", Value::Null, json!({"id": 2}), Some(("1400:1", 2)), 1400)), 1);
    }

    #[test]
    fn txid_mode_completes_on_a_later_txid_and_on_flush() {
        let mut h = Harness::new(TxnBoundaries::TxId);
        assert_eq!(h.push(file(1), &event("shipments", "c", Value::Null, json!({"id": 1, "status": "a"}), None, 10)), 0);
        assert_eq!(h.push(file(2), &event("orders", "c", Value::Null, json!({"region": "eu", "id": 1}), None, 10)), 0);
        assert_eq!(h.push(file(3), &event("shipments", "u", Value::Null, json!({"id": 1, "status": "b"}), None, 10)), 0);
        // Transaction markers do not matter in TxId mode.
        assert_eq!(h.push(file(4), &end("10:1", &[("public.shipments", 9)])), 0);
        assert_eq!(h.push(file(5), &event("shipments", "d", json!({"id": 1}), Value::Null, None, 11)), 1);
        let first = &h.txns[0];
        assert_eq!((first.id.as_str(), first.events), ("10", 3));
        assert_eq!(strings(&table(first, "public.shipments").upserts, "status"), vec![Some("b".into())]);
        assert_eq!(table(first, "public.orders").upserts.num_rows(), 1);
        assert_eq!(h.assembler.pending(), 1);
        assert_eq!(h.flush(), 1);
        assert_eq!(ids(&table(&h.txns[1], "public.shipments").deletes, "id"), vec![1]);
        assert_eq!(h.assembler.pending(), 0);
    }

    #[test]
    fn txid_mode_waits_for_every_stream_that_carried_the_transaction() {
        let mut h = Harness::new(TxnBoundaries::TxId);
        h.push(kafka("shipments", 1), &event("shipments", "c", Value::Null, json!({"id": 1}), None, 20));
        h.push(kafka("orders", 1), &event("orders", "c", Value::Null, json!({"region": "eu", "id": 1}), None, 20));
        assert_eq!(h.push(kafka("shipments", 2), &event("shipments", "c", Value::Null, json!({"id": 2}), None, 21)), 0);
        assert_eq!(h.push(kafka("orders", 2), &event("orders", "c", Value::Null, json!({"region": "eu", "id": 2}), None, 21)), 1);
        assert_eq!(h.txns[0].id, "20");
        assert_eq!(h.txns[0].tables.len(), 2);
    }

    #[test]
    fn snapshot_reads_are_batched_and_untracked_events_released_alone() {
        let mut h = Harness {
            assembler: TxnAssembler::new(bindings(), TxnBoundaries::Metadata).unwrap().with_snapshot_batch(2),
            txns: vec![],
            dead: vec![],
        };
        assert_eq!(h.push(file(1), &event("shipments", "r", Value::Null, json!({"id": 1}), None, 5)), 0);
        assert_eq!(h.push(file(2), &event("shipments", "r", Value::Null, json!({"id": 2}), None, 5)), 1);
        assert_eq!(h.push(file(3), &event("shipments", "r", Value::Null, json!({"id": 3}), None, 5)), 0);
        // A streamed event without a transaction block closes the batch and goes on its own.
        assert_eq!(h.push(file(4), &event("shipments", "u", Value::Null, json!({"id": 3, "status": "s"}), None, 6)), 2);
        let ids_of = |t: &CompleteTxn| ids(&table(t, "public.shipments").upserts, "id");
        assert_eq!(h.txns.iter().map(ids_of).collect::<Vec<_>>(), vec![vec![1, 2], vec![3], vec![3]]);
        assert_eq!(h.txns[0].id, "snapshot-1");
        assert!(h.txns[2].id.starts_with("untracked-"));
        // The last snapshot record closes the batch at once.
        let mut last: Value = serde_json::from_str(&event("shipments", "r", Value::Null, json!({"id": 4}), None, 5)).unwrap();
        last["source"]["snapshot"] = json!("last");
        assert_eq!(h.push(file(5), &last.to_string()), 1);
    }

    #[test]
    fn malformed_records_become_dead_letters_while_good_records_arrive() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        let id = "1000:1";
        h.push(file(1), &begin(id));
        h.push(file(2), &event("shipments", "c", Value::Null, json!({"id": 1, "status": "ok"}), Some((id, 1)), 1000));
        // Wrong type: decodes, fails to convert at release.
        h.push(file(3), &event("shipments", "c", Value::Null, json!({"id": 2, "weight": "abc"}), Some((id, 2)), 1000));
        // Missing key column.
        h.push(file(4), &event("shipments", "c", Value::Null, json!({"status": "no id"}), Some((id, 3)), 1000));
        // Delete without the key in its before image.
        h.push(file(5), &event("shipments", "d", json!({"status": "?"}), Value::Null, Some((id, 4)), 1000));
        // Structurally invalid, but its transaction is readable: counted, dead-lettered now.
        let bad_op = event("shipments", "z", Value::Null, json!({"id": 3}), Some((id, 5)), 1000);
        h.push(file(6), &bad_op);
        assert_eq!(h.dead.len(), 1);
        assert_eq!(h.dead[0].reason, "unknown op \"z\"");
        assert_eq!(h.dead[0].collection.as_deref(), Some("public.shipments"));
        assert_eq!(h.push(file(7), &end(id, &[("public.shipments", 5)])), 1);
        let s = table(&h.txns[0], "public.shipments");
        assert_eq!(ids(&s.upserts, "id"), vec![1]);
        let reasons: Vec<(&Position, &str)> = h.dead.iter().map(|d| (&d.position, d.reason.as_str())).collect();
        assert_eq!(
            reasons,
            vec![
                (&file(6), "unknown op \"z\""),
                (&file(3), "column \"weight\": expected a number, got \"abc\""),
                (&file(4), "missing primary key column \"id\""),
                (&file(5), "missing primary key column \"id\""),
            ]
        );
        assert_eq!(
            h.dead[1].raw,
            event("shipments", "c", Value::Null, json!({"id": 2, "weight": "abc"}), Some((id, 2)), 1000).into_bytes()
        );
        assert_eq!(h.txns[0].events, 5);
    }

    #[test]
    fn garbage_between_events_is_assigned_to_its_transaction() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        let id = "1100:1";
        h.push(file(1), &begin(id));
        h.push(file(2), &event("shipments", "c", Value::Null, json!({"id": 1}), Some((id, 1)), 1100));
        h.push(file(3), "\u{0}\u{1}garbage");
        let full = event("shipments", "c", Value::Null, json!({"id": 3}), Some((id, 3)), 1100);
        h.push(file(4), &full[..full.len() / 2]);
        h.push(file(5), &event("shipments", "c", Value::Null, json!({"id": 4}), Some((id, 4)), 1100));
        assert_eq!(h.dead.len(), 2);
        assert!(h.dead[0].reason.starts_with("not valid JSON"), "{}", h.dead[0].reason);
        assert_eq!(h.dead[1].position, file(4));
        assert_eq!(h.push(file(6), &end(id, &[("public.shipments", 4)])), 1);
        assert_eq!(ids(&table(&h.txns[0], "public.shipments").upserts, "id"), vec![1, 4]);
        assert_eq!(h.assembler.stats().orphans_assigned, 2);

        // In a Kafka partition, garbage between T and U cannot be pinned to T, which may be
        // waiting for an event of another partition: T waits for it (or for release_stalled).
        let mut h = Harness::new(TxnBoundaries::Metadata);
        h.push(kafka("a", 1), &event("shipments", "c", Value::Null, json!({"id": 1}), Some(("1103:1", 1)), 1103));
        h.push(kafka("a", 2), "garbage");
        h.push(kafka("a", 3), &event("shipments", "c", Value::Null, json!({"id": 2}), Some(("1104:1", 1)), 1104));
        h.push(kafka("txn", 1), &end("1103:1", &[("public.shipments", 2)]));
        h.push(kafka("txn", 2), &end("1104:1", &[("public.shipments", 1)]));
        assert_eq!(h.txns.len(), 0, "1103 waits for its second event");
        h.push(kafka("b", 1), &event("shipments", "c", Value::Null, json!({"id": 3}), Some(("1103:1", 2)), 1103));
        assert_eq!(h.txns.len(), 2);
        assert_eq!(ids(&table(&h.txns[0], "public.shipments").upserts, "id"), vec![1, 3]);
    }

    #[test]
    fn stalled_transactions_are_released_on_request_and_late_events_dead_lettered() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        h.push(kafka("s", 1), &event("shipments", "c", Value::Null, json!({"id": 1}), Some(("1200:1", 1)), 1200));
        h.push(kafka("txn", 1), &end("1200:1", &[("public.shipments", 2)]));
        h.push(kafka("s", 2), &event("shipments", "c", Value::Null, json!({"id": 7}), Some(("1201:1", 1)), 1201));
        h.push(kafka("txn", 2), &end("1201:1", &[("public.shipments", 1)]));
        // 1201 is complete but waits behind 1200, which misses an event.
        assert_eq!(h.txns.len(), 0);
        assert_eq!(h.assembler.pending(), 2);
        let out = h.assembler.release_stalled();
        assert_eq!(h.collect(out), 2);
        assert_eq!((h.txns[0].id.as_str(), h.txns[0].missing), ("1200:1", 1));
        assert_eq!(h.txns[1].missing, 0);
        assert_eq!(h.assembler.stats().forced, 1);
        // The missing event shows up after all.
        h.push(kafka("s", 3), &event("shipments", "c", Value::Null, json!({"id": 2}), Some(("1200:1", 2)), 1200));
        assert_eq!(h.dead.len(), 1);
        assert!(h.dead[0].reason.contains("already released"), "{}", h.dead[0].reason);
        // A redelivery of a complete transaction's event is only counted.
        h.push(kafka("s", 4), &event("shipments", "c", Value::Null, json!({"id": 7}), Some(("1201:1", 1)), 1201));
        assert_eq!(h.dead.len(), 1);
        assert_eq!(h.assembler.stats().duplicates, 1);
    }

    #[test]
    fn flush_in_metadata_mode_keeps_transactions_without_end() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        h.push(file(1), &event("shipments", "c", Value::Null, json!({"id": 1}), Some(("1300:1", 1)), 1300));
        assert_eq!(h.flush(), 0);
        assert_eq!(h.assembler.pending(), 1);
    }

    #[test]
    fn invalid_bindings_are_rejected() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let bind = |pk: Vec<usize>| vec![UpstreamTable { collection: "public.t".into(), schema: schema.clone(), primary_key: pk }];
        assert!(TxnAssembler::new(bind(vec![]), TxnBoundaries::Metadata).is_err());
        assert!(TxnAssembler::new(bind(vec![3]), TxnBoundaries::Metadata).is_err());
        let mut twice = bind(vec![0]);
        twice.extend(bind(vec![0]));
        let err = TxnAssembler::new(twice, TxnBoundaries::Metadata).err().unwrap();
        assert_eq!(err.to_string(), "table binding for \"public.t\": bound twice");
    }

    /// A change event exactly as Debezium's Postgres connector writes it: `transaction.id` is
    /// `"txId:LSN"` with the event's own LSN, also in `source.lsn` and `source.sequence`.
    fn pg_event(table: &str, op: &str, row: Value, tx: i64, lsn: i64, orders: (u64, u64)) -> String {
        let (before, after) = if op == "d" { (row, Value::Null) } else { (Value::Null, row) };
        json!({"before": before, "after": after,
               "source": {"version": "2.5.0.Final", "connector": "postgresql", "name": "app", "ts_ms": 1700000000000i64,
                          "snapshot": "false", "db": "app", "sequence": format!("[\"{}\",\"{lsn}\"]", lsn - 8),
                          "schema": "public", "table": table, "txId": tx, "lsn": lsn, "xmin": null},
               "op": op, "ts_ms": 1700000000100i64,
               "transaction": {"id": format!("{tx}:{lsn}"), "total_order": orders.0, "data_collection_order": orders.1}})
        .to_string()
    }

    /// A Postgres transaction as the connector emits it: BEGIN at 33000, events at increasing
    /// LSNs, END at 34000, every record with its own `transaction.id`.
    fn pg_transaction() -> (String, Vec<(&'static str, String)>, String) {
        let begin = json!({"status": "BEGIN", "id": "571:33000", "event_count": null, "data_collections": null,
                           "ts_ms": 1700000000000i64})
        .to_string();
        let events = vec![
            ("shipments", pg_event("shipments", "d", json!({"id": 5, "status": "old"}), 571, 33100, (1, 1))),
            ("shipments", pg_event("shipments", "c", json!({"id": 5, "status": "new"}), 571, 33200, (2, 2))),
            ("orders", pg_event("orders", "u", json!({"region": "eu", "id": 9, "total": 7}), 571, 33300, (3, 1))),
            ("shipments", pg_event("shipments", "u", json!({"id": 6, "status": "a"}), 571, 33400, (4, 3))),
            ("shipments", pg_event("shipments", "u", json!({"id": 6, "status": "b"}), 571, 33500, (5, 4))),
            ("shipments", pg_event("shipments", "d", json!({"id": 8}), 571, 33600, (6, 5))),
        ];
        let end = json!({"status": "END", "id": "571:34000", "event_count": 6, "ts_ms": 1700000000000i64,
                         "data_collections": [{"data_collection": "public.shipments", "event_count": 5},
                                              {"data_collection": "public.orders", "event_count": 1}]})
        .to_string();
        (begin, events, end)
    }

    fn assert_pg_transaction(txn: &CompleteTxn) {
        assert_eq!((txn.id.as_str(), txn.events, txn.missing), ("571:34000", 6, 0));
        let s = table(txn, "public.shipments");
        assert_eq!(ids(&s.upserts, "id"), vec![5, 6]);
        assert_eq!(strings(&s.upserts, "status"), vec![Some("new".into()), Some("b".into())]);
        assert_eq!(ids(&s.deletes, "id"), vec![8]);
        let o = table(txn, "public.orders");
        assert_eq!(ids(&o.upserts, "total"), vec![7]);
        assert_eq!(o.deletes.num_rows(), 0);
    }

    #[test]
    fn postgres_transaction_ids_with_a_lsn_per_event_in_one_stream() {
        let mut h = Harness::new(TxnBoundaries::Metadata);
        let (begin, events, end) = pg_transaction();
        let mut line = 0;
        let mut next = || {
            line += 1;
            file(line)
        };
        assert_eq!(h.push(next(), &begin), 0);
        for (_, event) in &events {
            assert_eq!(h.push(next(), event), 0);
        }
        assert_eq!(h.assembler.pending(), 1);
        assert_eq!(h.push(next(), &end), 1);
        assert_eq!(h.assembler.pending(), 0);
        assert_pg_transaction(&h.txns[0]);
        assert_eq!(h.txns[0].first_position, file(1));
        // The next transaction is one of its own, and a redelivered event of the first is
        // recognised as such (keyed by txId 571, whatever its LSN).
        assert_eq!(h.push(next(), &pg_event("shipments", "c", json!({"id": 1}), 572, 35100, (1, 1))), 0);
        assert_eq!(h.push(next(), &events[2].1), 0);
        let end2 = json!({"status": "END", "id": "572:35200", "event_count": 1,
                          "data_collections": [{"data_collection": "public.shipments", "event_count": 1}]});
        assert_eq!(h.push(next(), &end2.to_string()), 1);
        assert_eq!((h.txns[1].id.as_str(), h.txns[1].events), ("572:35200", 1));
        assert_eq!(h.assembler.stats().duplicates, 1);
        assert!(h.dead.is_empty(), "{:?}", h.dead);
    }

    #[test]
    fn postgres_transaction_ids_with_the_end_marker_in_its_own_stream() {
        let (begin, events, end) = pg_transaction();
        // END first, then the table topics; and events first, END last.
        for end_first in [true, false] {
            let mut h = Harness::new(TxnBoundaries::Metadata);
            let mut offsets: HashMap<&str, i64> = HashMap::new();
            let mut at = |topic: &'static str| {
                let o = offsets.entry(topic).or_default();
                *o += 1;
                kafka(topic, *o)
            };
            assert_eq!(h.push(at("app.transaction"), &begin), 0);
            if end_first {
                assert_eq!(h.push(at("app.transaction"), &end), 0);
            }
            for (topic, event) in &events {
                let topic = if *topic == "shipments" { "app.public.shipments" } else { "app.public.orders" };
                h.push(at(topic), event);
            }
            if !end_first {
                assert_eq!(h.txns.len(), 0);
                assert_eq!(h.push(at("app.transaction"), &end), 1);
            }
            assert_eq!((h.txns.len(), h.assembler.pending()), (1, 0), "end first: {end_first}");
            assert_pg_transaction(&h.txns[0]);
            let mut starts: Vec<String> = h.txns[0].stream_starts.iter().map(Position::stream).collect();
            starts.sort();
            assert_eq!(starts, vec!["app.public.orders/0", "app.public.shipments/0", "app.transaction/0"]);
            assert!(h.dead.is_empty(), "{:?}", h.dead);
        }
    }

    #[test]
    fn postgres_end_marker_still_checks_the_event_counts() {
        let (begin, events, end) = pg_transaction();
        let mut h = Harness::new(TxnBoundaries::Metadata);
        h.push(kafka("txn", 1), &begin);
        h.push(kafka("txn", 2), &end);
        // One shipments event short: END's data_collections hold the transaction back.
        for (i, (_, event)) in events.iter().enumerate().skip(1) {
            h.push(kafka("s", i as i64), event);
        }
        assert_eq!((h.txns.len(), h.assembler.pending()), (0, 1));
        h.push(kafka("s", 9), &events[0].1);
        assert_eq!(h.txns.len(), 1);
        assert_pg_transaction(&h.txns[0]);
    }

    #[test]
    fn stable_transaction_ids_of_other_connectors_are_used_as_they_are() {
        /// A MySQL event: `source.db` names the table's namespace, no txId, and the same
        /// `transaction.id` on every event of the transaction.
        fn mysql_event(id: &str, row: Value, order: u64) -> String {
            json!({"before": null, "after": row, "op": "c", "ts_ms": 1,
                   "source": {"version": "2.5.0.Final", "connector": "mysql", "name": "app", "ts_ms": 1,
                              "snapshot": "false", "db": "public", "table": "shipments", "server_id": 223344,
                              "gtid": null, "file": "file.000003", "pos": 1234, "row": 0, "thread": 7},
                   "transaction": {"id": id, "total_order": order, "data_collection_order": order}})
            .to_string()
        }
        for id in ["file.000003:1234", "3E11FA47-71CA-11E1-9E33-C80AA9429562:23", "77:88"] {
            for end_first in [true, false] {
                let mut h = Harness::new(TxnBoundaries::Metadata);
                let end = end(id, &[("public.shipments", 2)]);
                if end_first {
                    assert_eq!(h.push(kafka("txn", 1), &end), 0);
                }
                assert_eq!(h.push(kafka("s", 1), &mysql_event(id, json!({"id": 1}), 1)), 0);
                // Another transaction of the same binlog file is not mistaken for this one.
                let other = if id == "77:88" { "77:99".to_string() } else { format!("{id}0") };
                assert_eq!(h.push(kafka("s", 2), &mysql_event(&other, json!({"id": 3}), 1)), 0);
                let released = h.push(kafka("s", 3), &mysql_event(id, json!({"id": 2}), 2));
                if !end_first {
                    assert_eq!(released, 0);
                    assert_eq!(h.push(kafka("txn", 1), &end), 1);
                }
                assert_eq!(h.txns.len(), 1, "{id}, end first: {end_first}");
                assert_eq!((h.txns[0].id.as_str(), h.txns[0].events), (id, 2));
                assert_eq!(ids(&table(&h.txns[0], "public.shipments").upserts, "id"), vec![1, 2]);
                assert_eq!(h.assembler.pending(), 1, "{other} is still open");
            }
        }
    }
}
