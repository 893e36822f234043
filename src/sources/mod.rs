//! Sources: turn external change streams into whole transactions of net changes per table.
//!
//! A connector (Kafka topics, JSON-lines files) reads raw records and hands each one, with its
//! [`Position`](txn::Position), to [`debezium::decode`] and then to a
//! [`TxnAssembler`](txn::TxnAssembler), which reduces each transaction to net changes
//! ([`net_change`]) of rows converted to Arrow ([`row_image`]). The assembler promises that the
//! events of one source transaction are released together, as one net change per primary key,
//! and that a malformed record never stops ingestion: it becomes a
//! [`DeadLetter`](txn::DeadLetter) with a reason.
//! Sources know nothing about views; the engine applies what they release.

pub mod connector;
pub mod debezium;
mod error;
pub mod file;
pub mod generator;
pub mod kafka;
pub mod logistics;
pub mod net_change;
pub mod nexmark;
pub mod postgres;
pub mod row_image;
pub mod runner;
pub mod txn;
mod txn_id;

pub use debezium::{ChangeEvent, ChangeOp, DecodeError, Decoder, EventContext, FieldType, FieldTypes, Record, SnapshotPhase, decode};
pub use error::SourceError;
pub use net_change::NetChanges;
pub use row_image::rows_to_batch;
pub use txn::{AssemblerOutput, AssemblerStats, CompleteTxn, DeadLetter, Position, TxnAssembler, TxnBoundaries, UpstreamTable};

pub type Result<T, E = SourceError> = std::result::Result<T, E>;
