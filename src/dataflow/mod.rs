//! Incremental dataflow: Z-set change batches flow through operators, one tick at a time.
//!
//! Each operator receives the consolidated input changes of a tick, updates its state
//! (written into the tick's `WriteBatch`) and returns its output changes. A tick is applied
//! atomically or not at all: on error the engine drops the writes and restores state.

pub mod aggregate;
pub mod arrangement;
pub mod change_batch;
pub mod changelog;
pub mod constant;
pub mod filter;
pub mod graph;
pub mod join;
pub mod project;
pub mod temporal;
#[cfg(test)]
mod testing;
pub mod topk;
pub mod union;
pub mod unnest;
pub mod window;

use arrow::datatypes::SchemaRef;

pub use change_batch::{ChangeBatch, RowCodec};

use crate::storage::{StorageError, Store, TickWrites};

/// Errors raised while maintaining views.
#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("internal dataflow error: {0}")]
    Internal(String),
}

pub type Result<T, E = DataflowError> = std::result::Result<T, E>;

/// One node of an incremental dataflow.
///
/// Sync on purpose: the engine thread owns the tick; RocksDB calls block anyway.
pub trait Operator: Send {
    /// Schema of the changes this operator emits.
    fn schema(&self) -> SchemaRef;

    /// Process one tick: `inputs[i]` holds the consolidated changes on input port `i`
    /// (possibly empty). State changes go to memory and to `writes`; returns the output changes.
    fn step(&mut self, inputs: Vec<ChangeBatch>, writes: &mut TickWrites) -> Result<ChangeBatch>;

    /// The tick's time (µs since the epoch), given before `step`, for operators that
    /// change with time alone.
    fn advance_to(&mut self, _now_micros: i64) {}

    /// The watermarks (µs since the epoch) of the tables that have one, by table id, given
    /// before each step, for operators that close event-time windows.
    fn advance_watermarks(&mut self, _watermarks: &std::collections::HashMap<u32, i64>) {}

    /// When the operator must run even without input (µs since the epoch).
    fn wakeup_at(&self) -> Option<i64> {
        None
    }

    /// Reload committed state from storage (at startup, or after a failed tick).
    fn restore(&mut self, _store: &Store) -> Result<()> {
        Ok(())
    }
}
