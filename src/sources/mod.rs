//! Sources: turn external change streams into whole transactions of net changes per table.
//!
//! A connector (Kafka topics, JSON-lines files) reads raw records and hands each one, with its
//! [`Position`](txn::Position), to [`debezium::decode`] and then to a
//! [`TxnAssembler`](txn::TxnAssembler). The assembler promises that the events of one source
//! transaction are released together, as one net change per primary key, and that a malformed
//! record never stops ingestion: it becomes a [`DeadLetter`](txn::DeadLetter) with a reason.
//! Sources know nothing about views; the engine applies what they release.

pub mod connector;
pub mod debezium;
pub mod file;
pub mod generator;
pub mod kafka;
pub mod logistics;
pub mod postgres;
pub mod runner;
pub mod txn;
mod txn_id;

pub use debezium::{
    ChangeEvent, ChangeOp, DecodeError, Decoder, EventContext, FieldType, FieldTypes, Record, SnapshotPhase, decode, rows_to_batch,
};
pub use txn::{AssemblerOutput, AssemblerStats, CompleteTxn, DeadLetter, NetChanges, Position, TableBinding, TxnAssembler, TxnBoundaries};

/// Errors of the sources layer that stop a source (as opposed to per-record problems, which
/// become dead letters).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("table binding for \"{collection}\": {reason}")]
    InvalidBinding { collection: String, reason: String },
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

pub type Result<T, E = SourceError> = std::result::Result<T, E>;
