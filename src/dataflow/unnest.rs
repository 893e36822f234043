//! Unnest: `UNNEST(list)` (and struct columns expanded into their fields), a row-by-row flat
//! map, so it keeps no state: each changed input row becomes its unnested rows with the input
//! row's weight.
//!
//! The unnesting itself is DataFusion's (`UnnestExec`, run over the tick's changes in memory):
//! the weights travel through it as one more column, which unnest repeats like any column it
//! does not unnest.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::UnnestOptions;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::unnest::{ListUnnest, UnnestExec};

use super::{ChangeBatch, DataflowError, Operator, Result};
use crate::storage::TickWrites;

/// The name of the weight column carried through unnest.
const WEIGHT: &str = "velocity_weight";

pub struct Unnest {
    output_schema: SchemaRef,
    /// Input columns + the weight column.
    weighted_input: SchemaRef,
    /// Output columns + the weight column.
    weighted_output: SchemaRef,
    list_columns: Vec<ListUnnest>,
    struct_columns: Vec<usize>,
    options: UnnestOptions,
}

impl Unnest {
    pub fn new(
        input_schema: SchemaRef,
        list_columns: Vec<ListUnnest>,
        struct_columns: Vec<usize>,
        options: UnnestOptions,
        output_schema: SchemaRef,
    ) -> Result<Unnest> {
        let with_weight = |schema: &SchemaRef| -> SchemaRef {
            let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
            fields.push(Arc::new(Field::new(WEIGHT, DataType::Int64, false)));
            Arc::new(Schema::new(fields))
        };
        Ok(Unnest {
            weighted_input: with_weight(&input_schema),
            weighted_output: with_weight(&output_schema),
            output_schema,
            list_columns,
            struct_columns,
            options,
        })
    }
}

impl Operator for Unnest {
    fn schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    fn step(&mut self, inputs: Vec<ChangeBatch>, _writes: &mut TickWrites) -> Result<ChangeBatch> {
        let [input] = <[ChangeBatch; 1]>::try_from(inputs)
            .map_err(|inputs| DataflowError::Internal(format!("unnest expects 1 input, got {}", inputs.len())))?;
        if input.is_empty() {
            return Ok(ChangeBatch::empty(self.output_schema.clone()));
        }
        let mut columns = input.rows.columns().to_vec();
        columns.push(Arc::new(input.weights.clone()));
        let batch = RecordBatch::try_new(self.weighted_input.clone(), columns)?;
        let source = MemorySourceConfig::try_new_exec(&[vec![batch]], self.weighted_input.clone(), None)?;
        let exec = UnnestExec::new(
            source,
            self.list_columns.clone(),
            self.struct_columns.clone(),
            self.weighted_output.clone(),
            self.options.clone(),
        )?;
        // Runs in memory without any I/O or task spawning, so it completes on this thread.
        let stream = exec.execute(0, Arc::new(TaskContext::default()))?;
        let batches = futures::executor::block_on(datafusion::physical_plan::common::collect(stream))?;
        let out = concat_batches(&self.weighted_output, &batches)?;
        let width = self.output_schema.fields().len();
        let weights = out
            .column(width)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataflowError::Internal("unnest lost the weight column".into()))?
            .clone();
        if weights.null_count() > 0 {
            return Err(DataflowError::Internal("unnest produced a NULL weight".into()));
        }
        let rows = RecordBatch::try_new(self.output_schema.clone(), out.columns()[..width].to_vec())?;
        Ok(ChangeBatch::new(rows, weights))
    }
}
