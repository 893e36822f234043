//! UNION ALL: the sum of its inputs' changes. Stateless.

use arrow::datatypes::SchemaRef;

use super::{ChangeBatch, Operator, Result};
use crate::storage::TickWrites;

pub struct Union {
    schema: SchemaRef,
}

impl Union {
    pub fn new(schema: SchemaRef) -> Union {
        Union { schema }
    }
}

impl Operator for Union {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, inputs: Vec<ChangeBatch>, _writes: &mut TickWrites) -> Result<ChangeBatch> {
        // Inputs may differ in field names/nullability; rebind each to the output schema.
        let rebound = inputs
            .into_iter()
            .map(|b| {
                let rows = arrow::array::RecordBatch::try_new_with_options(
                    self.schema.clone(),
                    b.rows.columns().to_vec(),
                    &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.len())),
                )?;
                Ok(ChangeBatch::new(rows, b.weights))
            })
            .collect::<Result<Vec<_>>>()?;
        ChangeBatch::concat(&self.schema, &rebound)
    }
}
