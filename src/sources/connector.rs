//! The connector interface: what the source runner needs from Kafka, Postgres or files.
//!
//! A connector only moves bytes: it reads records of the upstream collections, in order per
//! stream, each with its [`Position`]. The runner decodes them, assembles transactions,
//! commits them with the positions to resume from, and then tells the connector what is
//! durable so it can acknowledge upstream (confirm a replication slot, commit group offsets).

use std::collections::HashMap;
use std::time::Duration;

use super::Result;
use super::txn::{Position, Stream, TxnBoundaries};

/// One raw record: Debezium JSON bytes, or `None` for a tombstone (a Kafka record without value).
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub position: Position,
    pub payload: Option<Vec<u8>>,
}

/// What a connector can say about how far behind the upstream it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// Bytes (files, WAL) or messages (Kafka) available upstream but not read yet.
    pub amount: u64,
    pub unit: LagUnit,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LagUnit {
    #[default]
    Bytes,
    Messages,
}

#[async_trait::async_trait]
pub trait Connector: Send {
    /// `file`, `kafka`, `postgres-cdc`.
    fn kind(&self) -> &'static str;

    /// The Debezium collection (`schema.table`) whose events feed a table bound with
    /// `upstream = '...'`: the upstream itself, or for Kafka the topic's last two parts.
    fn collection(&self, upstream: &str) -> String {
        upstream.to_string()
    }

    /// How transactions end in this connector's records, when the connector decides it (it
    /// writes END markers itself) rather than the source's `transactions` option.
    fn boundaries(&self) -> Option<TxnBoundaries> {
        None
    }

    /// (Re)start reading for tables bound to `upstreams`. `resume` has, per stream, the next
    /// offset not yet applied; a stream absent from it is read from its beginning (which for
    /// Postgres means: take a snapshot of tables not seen before). Called again whenever the
    /// bound tables change.
    async fn open(&mut self, upstreams: &[String], resume: &HashMap<Stream, u64>) -> Result<()>;

    /// The next records in stream order, waiting at most `max_wait` when none are available.
    /// An empty result means nothing new right now.
    async fn poll(&mut self, max_wait: Duration) -> Result<Vec<SourceRecord>>;

    /// Input known to be available but not read yet.
    fn lag(&self) -> Lag {
        Lag::default()
    }

    /// After this long without input, transactions still open are taken as complete (a file
    /// writer that stopped mid-transaction). `None` when the connector always marks the end
    /// of a transaction (Postgres commits).
    fn idle_flush(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }

    /// Everything before `resume` (per stream, the next offset not yet applied) is durably
    /// committed: acknowledge it upstream. Never called with offsets that were not committed.
    async fn committed(&mut self, _resume: &HashMap<Stream, u64>) -> Result<()> {
        Ok(())
    }

    /// What the connector is waiting for or struggling with, for the source's status; `None`
    /// when all is well.
    fn health(&self) -> Option<Health> {
        None
    }
}

/// A connector's state when it is not simply reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Configured right, waiting for input to appear (a topic not created yet).
    Waiting(String),
    /// Cannot read as configured (a path that does not exist, brokers that refuse
    /// connections); the connector keeps trying.
    Error(String),
}
