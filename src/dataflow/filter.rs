//! Filter: keeps the changes whose row satisfies a predicate. Stateless.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray};
use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use super::{ChangeBatch, DataflowError, Operator, Result};
use crate::storage::TickWrites;

pub struct Filter {
    schema: SchemaRef,
    predicate: Arc<dyn PhysicalExpr>,
}

impl Filter {
    pub fn new(schema: SchemaRef, predicate: Arc<dyn PhysicalExpr>) -> Filter {
        Filter { schema, predicate }
    }
}

/// Evaluate a boolean predicate over a batch; NULL counts as false (SQL WHERE semantics).
pub fn evaluate_mask(predicate: &Arc<dyn PhysicalExpr>, batch: &arrow::array::RecordBatch) -> Result<BooleanArray> {
    let value = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
    let mask = value
        .as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| DataflowError::Internal(format!("predicate returned {}", value.data_type())))?;
    Ok(if mask.null_count() > 0 { arrow::compute::prep_null_mask_filter(mask) } else { mask.clone() })
}

impl Operator for Filter {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, mut inputs: Vec<ChangeBatch>, _writes: &mut TickWrites) -> Result<ChangeBatch> {
        let input = inputs.swap_remove(0);
        if input.is_empty() {
            return Ok(input);
        }
        let mask = evaluate_mask(&self.predicate, &input.rows)?;
        input.filter(&mask)
    }
}
