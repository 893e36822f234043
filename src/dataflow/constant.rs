//! Constant: a fixed collection (VALUES, a FROM-less SELECT), emitted once when the view is created.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::arrangement::{ValueMap, state_prefix};
use super::{ChangeBatch, Operator, Result};
use crate::storage::{Store, TickWrites};

pub struct Constant {
    rows: RecordBatch,
    emitted: ValueMap,
}

impl Constant {
    pub fn new(rows: RecordBatch, dataflow: u32, node: u32) -> Constant {
        Constant { rows, emitted: ValueMap::new(state_prefix(dataflow, node, 0)) }
    }
}

impl Operator for Constant {
    fn schema(&self) -> SchemaRef {
        self.rows.schema()
    }

    fn step(&mut self, _inputs: Vec<ChangeBatch>, writes: &mut TickWrites) -> Result<ChangeBatch> {
        if !self.emitted.is_empty() {
            return Ok(ChangeBatch::empty(self.rows.schema()));
        }
        self.emitted.set(b"emitted", Some(&[1]), writes)?;
        Ok(ChangeBatch::uniform(self.rows.clone(), 1))
    }

    fn restore(&mut self, store: &Store) -> Result<()> {
        self.emitted.restore(store)
    }
}
