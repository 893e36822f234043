//! `sum(bigint)` that fails with 22003 (`bigint out of range`) where DataFusion's wraps
//! around: `SELECT sum(x)` over two maximal bigints gave -2. Postgres' sum(bigint) is
//! numeric and cannot overflow; this keeps DataFusion's bigint result and refuses what it
//! cannot hold, as views' incremental sums do (`dataflow::aggregate`). Every other input
//! type, and `sum(DISTINCT ...)`, is DataFusion's own sum.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{ArrayRef, AsArray, BooleanArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use arrow::error::ArrowError;
use datafusion::common::{Result, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator, ReversedUDAF, SetMonotonicity, Signature,
};
use datafusion::prelude::SessionContext;
use datafusion_functions_aggregate_common::aggregate::groups_accumulator::prim_op::PrimitiveGroupsAccumulator;

pub fn register(ctx: &SessionContext) {
    match ctx.udaf("sum") {
        Ok(inner) => ctx.register_udaf(AggregateUDF::new_from_impl(CheckedSum { inner })),
        Err(e) => tracing::error!("sum(bigint) is not overflow-checked: {e}"),
    }
}

fn out_of_range() -> DataFusionError {
    DataFusionError::ArrowError(Box::new(ArrowError::ArithmeticOverflow("bigint out of range".into())), None)
}

/// DataFusion's sum, with checked accumulators for bigint.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CheckedSum {
    inner: Arc<AggregateUDF>,
}

impl CheckedSum {
    fn checked(args: &AccumulatorArgs) -> bool {
        !args.is_distinct && args.return_field.data_type() == &DataType::Int64
    }
}

impl AggregateUDFImpl for CheckedSum {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if Self::checked(&args) { Ok(Box::new(CheckedSumAccumulator::default())) } else { self.inner.accumulator(args) }
    }
    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.groups_accumulator_supported(args)
    }
    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        if !Self::checked(&args) {
            return self.inner.create_groups_accumulator(args);
        }
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        let sums =
            PrimitiveGroupsAccumulator::<Int64Type, _>::new(&DataType::Int64, move |sum: &mut i64, v: i64| match sum.checked_add(v) {
                Some(s) => *sum = s,
                None => flag.store(true, Ordering::Relaxed),
            });
        Ok(Box::new(CheckedGroupSums { sums, overflowed }))
    }
    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.inner().create_sliding_accumulator(args)
    }
    fn reverse_expr(&self) -> ReversedUDAF {
        ReversedUDAF::Identical
    }
    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.inner().order_sensitivity()
    }
    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.inner().set_monotonicity(data_type)
    }
    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.default_value(data_type)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// One group's bigint sum (NULL until a non-NULL value arrives).
#[derive(Debug, Default)]
struct CheckedSumAccumulator {
    sum: Option<i64>,
}

impl Accumulator for CheckedSumAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for v in values[0].as_primitive::<Int64Type>().iter().flatten() {
            self.sum = Some(self.sum.unwrap_or(0).checked_add(v).ok_or_else(out_of_range)?);
        }
        Ok(())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Int64(self.sum)])
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(self.sum))
    }
    fn size(&self) -> usize {
        size_of_val(self)
    }
}

/// Per-group bigint sums: DataFusion's primitive accumulator, whose update cannot fail, with
/// a flag it raises on overflow, checked after every batch.
struct CheckedGroupSums<F: Fn(&mut i64, i64) + Send + Sync + 'static> {
    sums: PrimitiveGroupsAccumulator<Int64Type, F>,
    overflowed: Arc<AtomicBool>,
}

impl<F: Fn(&mut i64, i64) + Send + Sync + 'static> CheckedGroupSums<F> {
    fn check(&self) -> Result<()> {
        if self.overflowed.load(Ordering::Relaxed) { Err(out_of_range()) } else { Ok(()) }
    }
}

impl<F: Fn(&mut i64, i64) + Send + Sync + 'static> GroupsAccumulator for CheckedGroupSums<F> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.sums.update_batch(values, group_indices, opt_filter, total_num_groups)?;
        self.check()
    }
    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.sums.merge_batch(values, group_indices, total_num_groups)?;
        self.check()
    }
    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.sums.evaluate(emit_to)
    }
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.sums.state(emit_to)
    }
    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        self.sums.convert_to_state(values, opt_filter)
    }
    fn size(&self) -> usize {
        self.sums.size()
    }
}
