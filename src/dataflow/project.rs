//! Project: computes the output columns from each changed row. Stateless.

use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use super::{ChangeBatch, Operator, Result};
use crate::storage::TickWrites;

pub struct Project {
    schema: SchemaRef,
    exprs: Vec<Arc<dyn PhysicalExpr>>,
}

impl Project {
    pub fn new(schema: SchemaRef, exprs: Vec<Arc<dyn PhysicalExpr>>) -> Project {
        Project { schema, exprs }
    }
}

/// Evaluate expressions over a batch into a batch of `schema`.
pub fn evaluate_exprs(schema: &SchemaRef, exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let columns = exprs
        .iter()
        .zip(schema.fields())
        .map(|(e, f)| {
            let col = e.evaluate(batch)?.into_array(n)?;
            Ok(if col.data_type() != f.data_type() { arrow::compute::cast(&col, f.data_type())? } else { col })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(n)))?)
}

impl Operator for Project {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, mut inputs: Vec<ChangeBatch>, _writes: &mut TickWrites) -> Result<ChangeBatch> {
        let input = inputs.swap_remove(0);
        if input.is_empty() {
            return Ok(ChangeBatch::empty(self.schema.clone()));
        }
        let rows = evaluate_exprs(&self.schema, &self.exprs, &input.rows)?;
        Ok(ChangeBatch::new(rows, input.weights))
    }
}
