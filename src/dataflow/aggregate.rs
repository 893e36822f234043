//! Aggregate: the incremental GROUP BY (and DISTINCT, which is a GROUP BY over every column
//! with no aggregates).
//!
//! Every tick, the changed input rows are grouped by their encoded group key; only the groups
//! they touch are looked at. For each changed group the operator retracts the row it emitted
//! last time and emits the new one (nothing if the two are equal). A group whose input
//! multiplicity drops to zero disappears. Without group expressions (a global aggregate) there
//! is always exactly one output row, emitted on the very first step even over an empty input.
//!
//! State, all written through into the tick's `WriteBatch`:
//! - slot 0, a [`ValueMap`] `group key -> group state`: the group's input multiplicity, the
//!   scalar state of every fast-path aggregate and the encoded output row emitted last;
//! - slot 1, an [`Arrangement`] `(aggregate no, group key) -> multiset of encoded rows` for
//!   the aggregates that need their inputs (min/max, count(DISTINCT), the generic path).
//!
//! Fast paths, whose cost per change does not depend on the size of the group:
//! - `count(..)`: weighted count of the rows whose arguments are all non-NULL;
//! - `sum` over Int64/UInt64 (i128 running sum; an Int64 sum out of range fails with 22003) and over
//!   Float64 (compensated running sum, with NaN/±inf counted separately so they retract);
//! - `avg` over Float64, and over integers (the `CAST(int AS Float64)` DataFusion's coercion
//!   puts around the argument is looked through, and the integers summed exactly);
//! - `min`/`max` over primitive, string and binary types: the ordered multiset of the encoded
//!   (memcomparable) values, whose first/last key is the answer;
//! - `count(DISTINCT x)`: the multiset of values, counting its keys;
//! - `bool_and`/`bool_or`: counts of true and false values.
//!
//! Everything else (sum/avg over decimals, array_agg, string_agg, aggregates with ORDER BY,
//! other DISTINCT aggregates, UDAFs) takes the generic path: the multiset of its argument rows
//! (arguments, then ORDER BY expressions, as DataFusion's `AggregateExec` feeds them) is kept per
//! group, and a changed group's value is recomputed with a fresh DataFusion accumulator over the
//! rows repeated by multiplicity and sorted by the aggregate's ORDER BY.
//!
//! `EMIT ON WINDOW CLOSE` ([`Aggregate::emit_on_window_close`]): groups keyed by a window's end
//! are folded as above but emit nothing until the watermark of their tables passes the end;
//! then each emits its row once, final, and its state (group and multisets) is deleted. Rows
//! older than a table's watermark never reach a view (the engine takes them out as late), so a
//! closed window gets no more input.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array, UInt64Array,
    new_empty_array, new_null_array,
};
use arrow::buffer::NullBuffer;
use arrow::compute::{SortColumn, SortOptions, cast, lexsort_to_indices, take};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, Schema, SchemaRef, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};
use arrow::error::ArrowError;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Aggregate as LogicalAggregate, Expr};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::create_physical_expr;
use datafusion::physical_expr::expressions::CastExpr;
use hashbrown::HashMap;
use hashbrown::hash_map::Entry;

use super::arrangement::{Arrangement, ValueMap, state_prefix};
use super::{ChangeBatch, DataflowError, Operator, Result, RowCodec};
use crate::storage::{StorageError, Store, TickWrites};

/// Storage slot of the per-group state.
const GROUPS_SLOT: u8 = 0;
/// Storage slot of the per-(aggregate, group) multisets.
const MULTISETS_SLOT: u8 = 1;

/// One aggregate of the GROUP BY, as lowered by [`lower_aggregate`].
#[derive(Debug, Clone)]
pub struct AggregateSpec {
    pub expr: Arc<AggregateFunctionExpr>,
    /// The `FILTER (WHERE ...)` clause, evaluated over input rows.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

/// The group-by expressions of an aggregate, over its input's schema.
pub type GroupExprs = Vec<Arc<dyn PhysicalExpr>>;

/// Lower a logical `Aggregate` node into the group expressions and aggregates that
/// [`Aggregate::new`] takes, exactly as DataFusion's physical planner does. The expressions
/// are over `agg.input`'s schema. Grouping sets (ROLLUP, CUBE, GROUPING SETS) are not supported.
pub fn lower_aggregate(agg: &LogicalAggregate, props: &ExecutionProps) -> Result<(GroupExprs, Vec<AggregateSpec>)> {
    let input_dfschema = agg.input.schema();
    let input_schema = input_dfschema.as_arrow();
    let planning_ctx = PhysicalPlanningContext::default();
    let groups = agg
        .group_expr
        .iter()
        .map(|e| {
            if matches!(e, Expr::GroupingSet(_)) {
                return Err(DataflowError::DataFusion(datafusion::error::DataFusionError::NotImplemented(
                    "GROUPING SETS, ROLLUP and CUBE are not supported in materialized views".into(),
                )));
            }
            Ok(create_physical_expr(e, input_dfschema, props, &planning_ctx)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let aggs = agg
        .aggr_expr
        .iter()
        .map(|e| {
            let lowered = LoweredAggregateBuilder::new(e, input_dfschema, input_schema, props, &planning_ctx).build()?;
            Ok(AggregateSpec { expr: lowered.aggregate, filter: lowered.filter })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((groups, aggs))
}

/// How an aggregate is maintained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `count(a, ...)`: rows whose arguments are all non-NULL.
    Count,
    /// `count(DISTINCT a)`: number of distinct non-NULL values (multiset).
    CountDistinct,
    /// `sum` over Int64 (running i128 sum, wrapped to i64).
    SumInt,
    /// `sum` over UInt64 (running i128 sum, wrapped to u64).
    SumUInt,
    /// `avg` over an integer column (looked through DataFusion's cast to Float64).
    AvgInt,
    /// `sum` over Float64.
    SumFloat,
    /// `avg` over Float64.
    AvgFloat,
    /// `min` (multiset of encoded values, first key).
    Min,
    /// `max` (multiset of encoded values, last key).
    Max,
    BoolAnd,
    BoolOr,
    /// Any other aggregate: multiset of argument rows, recomputed with a DataFusion accumulator.
    Generic,
}

impl Kind {
    fn uses_multiset(self) -> bool {
        matches!(self, Kind::CountDistinct | Kind::Min | Kind::Max | Kind::Generic)
    }
}

/// An aggregate prepared for incremental maintenance.
struct AggPlan {
    kind: Kind,
    expr: Arc<AggregateFunctionExpr>,
    /// Expressions evaluated over each input batch: the arguments (for `AvgInt` the integer
    /// under the cast), then for the generic path the ORDER BY expressions.
    inputs: Vec<Arc<dyn PhysicalExpr>>,
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// Encodes the `inputs` columns (multiset kinds only).
    codec: Option<RowCodec>,
    /// Generic path: the first `n_args` inputs are the arguments, the rest are sorted by.
    n_args: usize,
    sort_options: Vec<SortOptions>,
    /// Type of the output column.
    out_type: DataType,
}

/// Scalar state of one fast-path aggregate in one group. Which fields are used (and stored)
/// depends on the aggregate's [`Kind`].
#[derive(Debug, Clone, Default)]
struct Acc {
    /// Weighted count of non-NULL values (rows, for count).
    n: i64,
    /// Integer sum.
    isum: i128,
    /// Float sum of the finite values, with its compensation term.
    fsum: f64,
    fcomp: f64,
    nan: i64,
    pinf: i64,
    ninf: i64,
    /// Boolean counts.
    t: i64,
    f: i64,
}

impl Acc {
    fn add_float(&mut self, v: f64, w: i64) {
        self.n = self.n.wrapping_add(w);
        if v.is_nan() {
            self.nan = self.nan.wrapping_add(w);
        } else if v == f64::INFINITY {
            self.pinf = self.pinf.wrapping_add(w);
        } else if v == f64::NEG_INFINITY {
            self.ninf = self.ninf.wrapping_add(w);
        } else {
            let wf = w as f64;
            let p = v * wf;
            // Exact error of the product (zero for weights of ±1).
            let e = v.mul_add(wf, -p);
            neumaier(&mut self.fsum, &mut self.fcomp, p);
            if e != 0.0 && e.is_finite() {
                neumaier(&mut self.fsum, &mut self.fcomp, e);
            }
        }
        if self.n - self.nan - self.pinf - self.ninf == 0 {
            // No finite value left: forget any accumulated rounding.
            self.fsum = 0.0;
            self.fcomp = 0.0;
        }
    }

    fn float_sum(&self) -> Option<f64> {
        if self.n <= 0 {
            None
        } else if self.nan > 0 || (self.pinf > 0 && self.ninf > 0) {
            Some(f64::NAN)
        } else if self.pinf > 0 {
            Some(f64::INFINITY)
        } else if self.ninf > 0 {
            Some(f64::NEG_INFINITY)
        } else {
            Some(self.fsum + self.fcomp)
        }
    }
}

/// Neumaier's compensated summation step.
fn neumaier(sum: &mut f64, comp: &mut f64, x: f64) {
    let t = *sum + x;
    if sum.abs() >= x.abs() {
        *comp += (*sum - t) + x;
    } else {
        *comp += (x - t) + *sum;
    }
    *sum = t;
}

/// The state of one group.
#[derive(Debug, Clone)]
struct GroupState {
    /// Input multiplicity of the group.
    count: i64,
    /// One per aggregate (unused for the multiset kinds).
    accs: Vec<Acc>,
    /// Encoded output row emitted last.
    emitted: Option<Vec<u8>>,
}

fn corrupt(detail: impl Into<String>) -> DataflowError {
    DataflowError::Storage(StorageError::Corrupt { what: "aggregate state".into(), detail: detail.into() })
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.buf.len() < N {
            return Err(corrupt(format!("truncated group state ({} bytes left, {N} wanted)", self.buf.len())));
        }
        let (head, rest) = self.buf.split_at(N);
        self.buf = rest;
        Ok(head.try_into().expect("length checked"))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.bytes::<8>()?))
    }
    fn i128(&mut self) -> Result<i128> {
        Ok(i128::from_le_bytes(self.bytes::<16>()?))
    }
    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.bytes::<8>()?))
    }
}

/// The incremental GROUP BY operator.
pub struct Aggregate {
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// Encodes the group columns (typed as in the output schema).
    group_codec: Option<RowCodec>,
    aggs: Vec<AggPlan>,
    /// Encodes output rows (the last emitted row of each group).
    out_codec: RowCodec,
    groups: ValueMap,
    multisets: Arrangement,
    close: Option<WindowClose>,
}

/// See [`Aggregate::emit_on_window_close`].
struct WindowClose {
    /// The group column holding the window's end.
    end_column: usize,
    /// The tables whose watermarks close windows: the smallest one does.
    relations: Vec<u32>,
    watermark: Option<i64>,
    /// The groups with state, by window end (µs).
    open: BTreeMap<i64, BTreeSet<Vec<u8>>>,
}

impl WindowClose {
    fn due(&self) -> bool {
        matches!((self.open.first_key_value(), self.watermark), (Some((end, _)), Some(w)) if *end <= w)
    }
}

fn is_integer(dt: &DataType) -> bool {
    dt.is_signed_integer() || dt.is_unsigned_integer()
}

/// Types whose memcomparable encoding orders like DataFusion's min/max.
fn minmax_fast_type(dt: &DataType) -> bool {
    use DataType::*;
    is_integer(dt)
        || dt.is_floating()
        || matches!(
            dt,
            Boolean
                | Utf8
                | LargeUtf8
                | Utf8View
                | Binary
                | LargeBinary
                | BinaryView
                | FixedSizeBinary(_)
                | Decimal32(..)
                | Decimal64(..)
                | Decimal128(..)
                | Decimal256(..)
                | Date32
                | Date64
                | Time32(_)
                | Time64(_)
                | Timestamp(..)
                | Duration(_)
        )
}

impl Aggregate {
    /// `output_schema` is the group columns then one column per aggregate (DataFusion's
    /// Aggregate output schema). `dataflow`/`node` name the operator's state in storage.
    pub fn new(
        input_schema: SchemaRef,
        group_exprs: Vec<Arc<dyn PhysicalExpr>>,
        aggs: Vec<AggregateSpec>,
        output_schema: SchemaRef,
        dataflow: u32,
        node: u32,
    ) -> Result<Aggregate> {
        let n_groups = group_exprs.len();
        if output_schema.fields().len() != n_groups + aggs.len() {
            return Err(DataflowError::Internal(format!(
                "aggregate output schema has {} columns, expected {} group columns and {} aggregates",
                output_schema.fields().len(),
                n_groups,
                aggs.len()
            )));
        }
        let group_codec = if n_groups == 0 {
            None
        } else {
            let fields: Vec<Field> = output_schema.fields()[..n_groups].iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
            Some(RowCodec::new(Arc::new(Schema::new(fields)))?)
        };
        let plans = aggs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let out_type = output_schema.field(n_groups + i).data_type().clone();
                Self::plan_aggregate(&input_schema, spec, out_type)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Aggregate {
            out_codec: RowCodec::new(output_schema.clone())?,
            input_schema,
            output_schema,
            group_exprs,
            group_codec,
            aggs: plans,
            groups: ValueMap::new(state_prefix(dataflow, node, GROUPS_SLOT)),
            multisets: Arrangement::new(state_prefix(dataflow, node, MULTISETS_SLOT)),
            close: None,
        })
    }

    /// `EMIT ON WINDOW CLOSE`: group column `end_column` is a window's end (a timestamp); a
    /// group's row is emitted once, when the smallest watermark of `relations` reaches it, and
    /// the group's state is freed then.
    pub fn emit_on_window_close(mut self, end_column: usize, relations: Vec<u32>) -> Result<Aggregate> {
        if end_column >= self.group_exprs.len() {
            return Err(DataflowError::Internal("EMIT ON WINDOW CLOSE needs the window end among the group columns".into()));
        }
        self.close = Some(WindowClose { end_column, relations, watermark: None, open: BTreeMap::new() });
        Ok(self)
    }

    /// Window ends (µs) of a column of window ends.
    fn window_ends(column: &ArrayRef) -> Result<arrow::array::TimestampMicrosecondArray> {
        let ends = cast(column, &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None))?;
        Ok(ends.as_primitive::<arrow::datatypes::TimestampMicrosecondType>().clone())
    }

    /// With `EMIT ON WINDOW CLOSE`: keep the touched groups' states (emitting nothing), then
    /// close the windows the watermark has passed.
    fn fold_open(
        &mut self,
        keys: &[Vec<u8>],
        states: Vec<GroupState>,
        group_columns: &[ArrayRef],
        rep: &[u32],
        writes: &mut TickWrites,
    ) -> Result<ChangeBatch> {
        let close = self.close.as_ref().expect("window close");
        let ends = Self::window_ends(&group_columns[close.end_column])?;
        for (g, state) in states.into_iter().enumerate() {
            if state.count < 0 {
                return Err(DataflowError::Internal(format!(
                    "aggregate group multiplicity went negative ({}); input retracted rows it never inserted",
                    state.count
                )));
            }
            if state.count > 0 {
                let bytes = self.encode_state(&state);
                self.groups.set(&keys[g], Some(&bytes), writes)?;
                // A group without a window end (a NULL time) never closes.
                let row = rep[g] as usize;
                if !ends.is_null(row) {
                    self.close.as_mut().expect("window close").open.entry(ends.value(row)).or_default().insert(keys[g].clone());
                }
            } else {
                self.groups.set(&keys[g], None, writes)?;
            }
        }
        self.close_windows(writes)
    }

    /// Emit the final row of every group whose window the watermark has passed, and free its
    /// state.
    fn close_windows(&mut self, writes: &mut TickWrites) -> Result<ChangeBatch> {
        let empty = ChangeBatch::empty(self.output_schema.clone());
        let Some(close) = self.close.as_mut() else { return Ok(empty) };
        let Some(watermark) = close.watermark else { return Ok(empty) };
        let mut keys: Vec<Vec<u8>> = Vec::new();
        while let Some(entry) = close.open.first_entry() {
            if *entry.key() > watermark {
                break;
            }
            keys.extend(entry.remove());
        }
        keys.retain(|k| self.groups.get(k).is_some());
        if keys.is_empty() {
            return Ok(empty);
        }
        let states = keys.iter().map(|k| self.decode_state(self.groups.get(k).expect("kept above"))).collect::<Result<Vec<_>>>()?;
        let out_groups: Vec<usize> = (0..keys.len()).collect();
        let codec = self.group_codec.as_ref().ok_or_else(|| DataflowError::Internal("window close without groups".into()))?;
        let mut columns: Vec<ArrayRef> = codec.decode(keys.iter().map(|k| k.as_slice()))?.columns().to_vec();
        for a in 0..self.aggs.len() {
            columns.push(self.output_column(a, &out_groups, &keys, &states)?);
        }
        let rows = self.output_batch(columns, keys.len())?;
        for (a, plan) in self.aggs.iter().enumerate() {
            if !plan.kind.uses_multiset() {
                continue;
            }
            for key in &keys {
                let mk = Self::multiset_key(a, key);
                let held: Vec<(Vec<u8>, i64)> =
                    self.multisets.get(&mk).into_iter().flat_map(|m| m.iter().map(|(r, c)| (r.to_vec(), c))).collect();
                for (row, count) in held {
                    self.multisets.update(&mk, &row, -count, writes)?;
                }
            }
        }
        for key in &keys {
            self.groups.set(key, None, writes)?;
        }
        Ok(ChangeBatch::uniform(rows, 1))
    }

    fn plan_aggregate(input_schema: &Schema, spec: AggregateSpec, out_type: DataType) -> Result<AggPlan> {
        let expr = spec.expr;
        let args = expr.expressions();
        let arg_types = args.iter().map(|a| a.data_type(input_schema)).collect::<Result<Vec<_>, _>>()?;
        let ret = expr.field().data_type().clone();
        let name = expr.fun().name().to_string();
        let distinct = expr.is_distinct();
        let one = |dt: &DataType| arg_types.len() == 1 && &arg_types[0] == dt;
        let mut inputs = args.clone();
        let kind = match name.as_str() {
            "count" if !distinct => Kind::Count,
            "count" if arg_types.len() == 1 => Kind::CountDistinct,
            "sum" if !distinct && one(&DataType::Int64) && ret == DataType::Int64 => Kind::SumInt,
            "sum" if !distinct && one(&DataType::UInt64) && ret == DataType::UInt64 => Kind::SumUInt,
            "sum" if !distinct && one(&DataType::Float64) && ret == DataType::Float64 => Kind::SumFloat,
            "avg" if !distinct && one(&DataType::Float64) && ret == DataType::Float64 => match args[0].downcast_ref::<CastExpr>() {
                Some(c) if is_integer(&c.expr().data_type(input_schema)?) => {
                    inputs = vec![c.expr().clone()];
                    Kind::AvgInt
                }
                _ => Kind::AvgFloat,
            },
            "min" if arg_types.len() == 1 && arg_types[0] == ret && minmax_fast_type(&ret) => Kind::Min,
            "max" if arg_types.len() == 1 && arg_types[0] == ret && minmax_fast_type(&ret) => Kind::Max,
            "bool_and" if one(&DataType::Boolean) && ret == DataType::Boolean => Kind::BoolAnd,
            "bool_or" if one(&DataType::Boolean) && ret == DataType::Boolean => Kind::BoolOr,
            _ => Kind::Generic,
        };
        let n_args = inputs.len();
        let mut sort_options = Vec::new();
        if kind == Kind::Generic {
            // Like AggregateExec: the ORDER BY expressions follow the arguments.
            for sort in expr.order_bys() {
                inputs.push(sort.expr.clone());
                sort_options.push(sort.options);
            }
        }
        let codec = if kind.uses_multiset() {
            let fields = inputs
                .iter()
                .enumerate()
                .map(|(i, e)| Ok(Field::new(format!("c{i}"), e.data_type(input_schema)?, true)))
                .collect::<Result<Vec<_>>>()?;
            Some(RowCodec::new(Arc::new(Schema::new(fields)))?)
        } else {
            None
        };
        Ok(AggPlan { kind, expr, inputs, filter: spec.filter, codec, n_args, sort_options, out_type })
    }

    fn is_global(&self) -> bool {
        self.group_exprs.is_empty()
    }

    fn new_state(&self) -> GroupState {
        GroupState { count: 0, accs: vec![Acc::default(); self.aggs.len()], emitted: None }
    }

    fn encode_state(&self, state: &GroupState) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 24 * self.aggs.len());
        out.extend_from_slice(&state.count.to_le_bytes());
        for (plan, acc) in self.aggs.iter().zip(&state.accs) {
            match plan.kind {
                Kind::Count => out.extend_from_slice(&acc.n.to_le_bytes()),
                Kind::SumInt | Kind::SumUInt | Kind::AvgInt => {
                    out.extend_from_slice(&acc.isum.to_le_bytes());
                    out.extend_from_slice(&acc.n.to_le_bytes());
                }
                Kind::SumFloat | Kind::AvgFloat => {
                    for v in [acc.fsum, acc.fcomp] {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    for v in [acc.n, acc.nan, acc.pinf, acc.ninf] {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
                Kind::BoolAnd | Kind::BoolOr => {
                    out.extend_from_slice(&acc.t.to_le_bytes());
                    out.extend_from_slice(&acc.f.to_le_bytes());
                }
                Kind::CountDistinct | Kind::Min | Kind::Max | Kind::Generic => {}
            }
        }
        match &state.emitted {
            Some(row) => {
                out.push(1);
                out.extend_from_slice(row);
            }
            None => out.push(0),
        }
        out
    }

    fn decode_state(&self, bytes: &[u8]) -> Result<GroupState> {
        let mut r = Reader { buf: bytes };
        let count = r.i64()?;
        let mut accs = Vec::with_capacity(self.aggs.len());
        for plan in &self.aggs {
            let mut acc = Acc::default();
            match plan.kind {
                Kind::Count => acc.n = r.i64()?,
                Kind::SumInt | Kind::SumUInt | Kind::AvgInt => {
                    acc.isum = r.i128()?;
                    acc.n = r.i64()?;
                }
                Kind::SumFloat | Kind::AvgFloat => {
                    acc.fsum = r.f64()?;
                    acc.fcomp = r.f64()?;
                    acc.n = r.i64()?;
                    acc.nan = r.i64()?;
                    acc.pinf = r.i64()?;
                    acc.ninf = r.i64()?;
                }
                Kind::BoolAnd | Kind::BoolOr => {
                    acc.t = r.i64()?;
                    acc.f = r.i64()?;
                }
                Kind::CountDistinct | Kind::Min | Kind::Max | Kind::Generic => {}
            }
            accs.push(acc);
        }
        let [flag] = r.bytes::<1>()?;
        let emitted = match flag {
            0 if r.buf.is_empty() => None,
            1 => Some(r.buf.to_vec()),
            _ => return Err(corrupt("bad emitted-row flag")),
        };
        Ok(GroupState { count, accs, emitted })
    }

    /// Key of the multiset of aggregate `agg` in group `group_key`.
    fn multiset_key(agg: usize, group_key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(4 + group_key.len());
        k.extend_from_slice(&(agg as u32).to_be_bytes());
        k.extend_from_slice(group_key);
        k
    }

    /// Fold the input rows of aggregate `a` into the touched groups' states, or into
    /// `pending` (the multiset changes of this tick) for the multiset kinds.
    fn apply_aggregate(
        &self,
        a: usize,
        batch: &RecordBatch,
        weights: &[i64],
        row_group: &[usize],
        states: &mut [GroupState],
        pending: &mut HashMap<(usize, usize, Vec<u8>), i64>,
    ) -> Result<()> {
        let plan = &self.aggs[a];
        let n = batch.num_rows();
        let mask = match &plan.filter {
            Some(f) => {
                let m = f.evaluate(batch)?.into_array(n)?;
                let m = m
                    .as_boolean_opt()
                    .ok_or_else(|| DataflowError::Internal(format!("aggregate filter is {}, not boolean", m.data_type())))?
                    .clone();
                Some(m)
            }
            None => None,
        };
        let included = |i: usize| mask.as_ref().is_none_or(|m| m.is_valid(i) && m.value(i));
        let values = plan.inputs.iter().map(|e| Ok(e.evaluate(batch)?.into_array(n)?)).collect::<Result<Vec<ArrayRef>>>()?;
        let nulls: Vec<Option<NullBuffer>> = values.iter().map(|v| v.logical_nulls()).collect();
        let valid = |c: usize, i: usize| nulls[c].as_ref().is_none_or(|b| b.is_valid(i));

        match plan.kind {
            Kind::Count => {
                for i in 0..n {
                    if included(i) && (0..values.len()).all(|c| valid(c, i)) {
                        let acc = &mut states[row_group[i]].accs[a];
                        acc.n = acc.n.wrapping_add(weights[i]);
                    }
                }
            }
            Kind::SumInt | Kind::SumUInt | Kind::AvgInt => {
                for_each_int(&values[0], |i, v| {
                    if included(i) {
                        let w = weights[i];
                        let acc = &mut states[row_group[i]].accs[a];
                        acc.isum = acc.isum.wrapping_add(v.wrapping_mul(w as i128));
                        acc.n = acc.n.wrapping_add(w);
                    }
                })?;
            }
            Kind::SumFloat | Kind::AvgFloat => {
                let arr = values[0]
                    .as_primitive_opt::<Float64Type>()
                    .ok_or_else(|| DataflowError::Internal("float aggregate input is not Float64".into()))?;
                for i in 0..n {
                    if included(i) && valid(0, i) {
                        states[row_group[i]].accs[a].add_float(arr.value(i), weights[i]);
                    }
                }
            }
            Kind::BoolAnd | Kind::BoolOr => {
                let arr =
                    values[0].as_boolean_opt().ok_or_else(|| DataflowError::Internal("boolean aggregate input is not Boolean".into()))?;
                for i in 0..n {
                    if included(i) && valid(0, i) {
                        let acc = &mut states[row_group[i]].accs[a];
                        if arr.value(i) {
                            acc.t = acc.t.wrapping_add(weights[i]);
                        } else {
                            acc.f = acc.f.wrapping_add(weights[i]);
                        }
                    }
                }
            }
            Kind::CountDistinct | Kind::Min | Kind::Max | Kind::Generic => {
                let codec = plan.codec.as_ref().ok_or_else(|| DataflowError::Internal("missing codec".into()))?;
                let skip_nulls = plan.kind != Kind::Generic;
                let rows = codec.encode_columns(&values)?;
                for (i, row) in rows.into_iter().enumerate() {
                    if !included(i) || (skip_nulls && !valid(0, i)) {
                        continue;
                    }
                    let d = pending.entry((a, row_group[i], row)).or_insert(0);
                    *d = d.wrapping_add(weights[i]);
                }
            }
        }
        Ok(())
    }

    /// `rows` output rows from their columns, each cast to the output schema's type.
    fn output_batch(&self, columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
        let columns = columns
            .into_iter()
            .zip(self.output_schema.fields())
            .map(|(c, f)| Ok(if c.data_type() != f.data_type() { cast(&c, f.data_type())? } else { c }))
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new_with_options(self.output_schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(rows)))?)
    }

    /// The output column of aggregate `a` for the given groups (`keys`/`states` in step order).
    fn output_column(&self, a: usize, out_groups: &[usize], keys: &[Vec<u8>], states: &[GroupState]) -> Result<ArrayRef> {
        let plan = &self.aggs[a];
        let accs = || out_groups.iter().map(|&g| &states[g].accs[a]);
        let col: ArrayRef = match plan.kind {
            Kind::Count => Arc::new(Int64Array::from_iter_values(accs().map(|acc| acc.n))),
            Kind::CountDistinct => Arc::new(Int64Array::from_iter_values(
                out_groups.iter().map(|&g| self.multisets.get(&Self::multiset_key(a, &keys[g])).map_or(0, |m| m.len() as i64)),
            )),
            // Out of range fails the tick, as Postgres' checked arithmetic fails the statement.
            Kind::SumInt => Arc::new(
                accs()
                    .map(|acc| match acc.n > 0 {
                        true => i64::try_from(acc.isum).map(Some),
                        false => Ok(None),
                    })
                    .collect::<Result<Int64Array, _>>()
                    .map_err(|_| ArrowError::ArithmeticOverflow("bigint out of range".into()))?,
            ),
            Kind::SumUInt => Arc::new(UInt64Array::from_iter(accs().map(|acc| (acc.n > 0).then_some(acc.isum as u64)))),
            Kind::AvgInt => Arc::new(Float64Array::from_iter(accs().map(|acc| (acc.n > 0).then(|| acc.isum as f64 / acc.n as f64)))),
            Kind::SumFloat => Arc::new(Float64Array::from_iter(accs().map(|acc| acc.float_sum()))),
            Kind::AvgFloat => Arc::new(Float64Array::from_iter(accs().map(|acc| acc.float_sum().map(|s| s / acc.n as f64)))),
            Kind::BoolAnd => Arc::new(BooleanArray::from_iter(accs().map(|acc| (acc.t > 0 || acc.f > 0).then_some(acc.f <= 0)))),
            Kind::BoolOr => Arc::new(BooleanArray::from_iter(accs().map(|acc| (acc.t > 0 || acc.f > 0).then_some(acc.t > 0)))),
            Kind::Min | Kind::Max => {
                let codec = plan.codec.as_ref().ok_or_else(|| DataflowError::Internal("missing codec".into()))?;
                let mut found: Vec<Vec<u8>> = Vec::new();
                let mut indices: Vec<Option<u32>> = Vec::with_capacity(out_groups.len());
                for &g in out_groups {
                    let extreme = self
                        .multisets
                        .get(&Self::multiset_key(a, &keys[g]))
                        .and_then(|m| if plan.kind == Kind::Min { m.first_key_value() } else { m.last_key_value() });
                    match extreme {
                        Some((row, _)) => {
                            indices.push(Some(found.len() as u32));
                            found.push(row.to_vec());
                        }
                        None => indices.push(None),
                    }
                }
                if found.is_empty() {
                    new_null_array(&plan.out_type, out_groups.len())
                } else {
                    let decoded = codec.decode(found.iter().map(|r| r.as_slice()))?;
                    take(decoded.column(0).as_ref(), &UInt32Array::from(indices), None)?
                }
            }
            Kind::Generic => {
                if out_groups.is_empty() {
                    new_empty_array(&plan.out_type)
                } else {
                    let values = out_groups.iter().map(|&g| self.evaluate_generic(a, &keys[g])).collect::<Result<Vec<_>>>()?;
                    ScalarValue::iter_to_array(values)?
                }
            }
        };
        Ok(if col.data_type() != &plan.out_type { cast(&col, &plan.out_type)? } else { col })
    }

    /// Recompute a generic aggregate over the current multiset of its argument rows.
    fn evaluate_generic(&self, a: usize, group_key: &[u8]) -> Result<ScalarValue> {
        let plan = &self.aggs[a];
        let mut acc = plan.expr.create_accumulator()?;
        if let Some(multiset) = self.multisets.get(&Self::multiset_key(a, group_key))
            && !multiset.is_empty()
        {
            let codec = plan.codec.as_ref().ok_or_else(|| DataflowError::Internal("missing codec".into()))?;
            let decoded = codec.decode(multiset.keys())?;
            let mut idx: Vec<u32> = Vec::new();
            for (i, m) in multiset.values().enumerate() {
                if m < 0 {
                    return Err(DataflowError::Internal(format!("negative multiplicity {m} in aggregate state")));
                }
                idx.extend(std::iter::repeat_n(i as u32, m as usize));
            }
            let mut idx = UInt32Array::from(idx);
            if !plan.sort_options.is_empty() {
                let expanded: Vec<ArrayRef> =
                    decoded.columns()[plan.n_args..].iter().map(|c| take(c.as_ref(), &idx, None)).collect::<Result<_, _>>()?;
                let sort_columns: Vec<SortColumn> = expanded
                    .into_iter()
                    .zip(&plan.sort_options)
                    .map(|(values, options)| SortColumn { values, options: Some(*options) })
                    .collect();
                let order = lexsort_to_indices(&sort_columns, None)?;
                idx = take(&idx, &order, None)?.as_primitive::<UInt32Type>().clone();
            }
            let columns: Vec<ArrayRef> = decoded.columns().iter().map(|c| take(c.as_ref(), &idx, None)).collect::<Result<_, _>>()?;
            acc.update_batch(&columns)?;
        }
        Ok(acc.evaluate()?)
    }
}

/// Call `f(row, value)` for every non-NULL value of an integer array.
fn for_each_int(arr: &ArrayRef, mut f: impl FnMut(usize, i128)) -> Result<()> {
    macro_rules! each {
        ($t:ty) => {{
            let a = arr.as_primitive::<$t>();
            for i in 0..a.len() {
                if a.is_valid(i) {
                    f(i, a.value(i) as i128);
                }
            }
        }};
    }
    match arr.data_type() {
        DataType::Int8 => each!(Int8Type),
        DataType::Int16 => each!(Int16Type),
        DataType::Int32 => each!(Int32Type),
        DataType::Int64 => each!(Int64Type),
        DataType::UInt8 => each!(UInt8Type),
        DataType::UInt16 => each!(UInt16Type),
        DataType::UInt32 => each!(UInt32Type),
        DataType::UInt64 => each!(UInt64Type),
        dt => {
            return Err(DataflowError::Internal(format!("integer aggregate over {dt}")));
        }
    }
    Ok(())
}

impl Operator for Aggregate {
    fn schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    fn step(&mut self, mut inputs: Vec<ChangeBatch>, writes: &mut TickWrites) -> Result<ChangeBatch> {
        let input = if inputs.is_empty() { ChangeBatch::empty(self.input_schema.clone()) } else { inputs.swap_remove(0) };
        let global = self.is_global();
        let first_global = global && self.groups.get(&[]).is_none();
        if input.is_empty() && !first_global {
            return self.close_windows(writes);
        }
        let n = input.len();
        let batch = &input.rows;
        let weights = input.weights.values();

        // Group the changed rows: `keys[g]` is the encoded key of the g-th touched group,
        // `rep[g]` one of its rows, `row_group[i]` the group of row i.
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut rep: Vec<u32> = Vec::new();
        let mut row_group: Vec<usize> = Vec::with_capacity(n);
        let mut group_columns: Vec<ArrayRef> = Vec::new();
        if let Some(codec) = &self.group_codec {
            group_columns = self
                .group_exprs
                .iter()
                .zip(codec.schema().fields())
                .map(|(e, f)| {
                    let c = e.evaluate(batch)?.into_array(n)?;
                    Ok(if c.data_type() != f.data_type() { cast(&c, f.data_type())? } else { c })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
            for (i, key) in codec.encode_columns(&group_columns)?.into_iter().enumerate() {
                match index.entry(key) {
                    Entry::Occupied(e) => row_group.push(*e.get()),
                    Entry::Vacant(e) => {
                        row_group.push(keys.len());
                        keys.push(e.key().clone());
                        rep.push(i as u32);
                        e.insert(keys.len() - 1);
                    }
                }
            }
        } else {
            keys.push(Vec::new());
            row_group.resize(n, 0);
        }

        // Load the touched groups' states and fold the changes in.
        let mut states = keys
            .iter()
            .map(|k| match self.groups.get(k) {
                Some(bytes) => self.decode_state(bytes),
                None => Ok(self.new_state()),
            })
            .collect::<Result<Vec<_>>>()?;
        for (i, &g) in row_group.iter().enumerate() {
            let s = &mut states[g];
            s.count = s.count.checked_add(weights[i]).ok_or_else(|| DataflowError::Internal("group multiplicity overflow".into()))?;
        }
        let mut pending: HashMap<(usize, usize, Vec<u8>), i64> = HashMap::new();
        for a in 0..self.aggs.len() {
            self.apply_aggregate(a, batch, weights, &row_group, &mut states, &mut pending)?;
        }
        for ((a, g, row), diff) in pending {
            if diff != 0 {
                self.multisets.update(&Self::multiset_key(a, &keys[g]), &row, diff, writes)?;
            }
        }
        if self.close.is_some() {
            return self.fold_open(&keys, states, &group_columns, &rep, writes);
        }

        // New output rows of the groups that still exist.
        let mut out_groups: Vec<usize> = Vec::new();
        for (g, s) in states.iter().enumerate() {
            if s.count < 0 {
                return Err(DataflowError::Internal(format!(
                    "aggregate group multiplicity went negative ({}); input retracted rows it never inserted",
                    s.count
                )));
            }
            if global || s.count > 0 {
                out_groups.push(g);
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.output_schema.fields().len());
        if !global {
            let idx = UInt32Array::from_iter_values(out_groups.iter().map(|&g| rep[g]));
            for c in &group_columns {
                columns.push(take(c.as_ref(), &idx, None)?);
            }
        }
        for a in 0..self.aggs.len() {
            columns.push(self.output_column(a, &out_groups, &keys, &states)?);
        }
        let new_rows = self.output_batch(columns, out_groups.len())?;
        let mut new_encoded: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        for (j, row) in self.out_codec.encode(&new_rows)?.into_iter().enumerate() {
            new_encoded[out_groups[j]] = Some(row);
        }

        // Diff against what was emitted, persist the states.
        let mut retractions: Vec<Vec<u8>> = Vec::new();
        let mut emit_new: Vec<bool> = Vec::with_capacity(out_groups.len());
        for (g, mut state) in states.into_iter().enumerate() {
            let old = state.emitted.take();
            let new = new_encoded[g].take();
            let changed = old != new;
            if changed && let Some(old) = old {
                retractions.push(old);
            }
            if new.is_some() {
                emit_new.push(changed);
            }
            if global || state.count > 0 {
                state.emitted = new;
                let bytes = self.encode_state(&state);
                self.groups.set(&keys[g], Some(&bytes), writes)?;
            } else {
                self.groups.set(&keys[g], None, writes)?;
            }
        }

        let retracted = self.out_codec.decode(retractions.iter().map(|r| r.as_slice()))?;
        let retracted = ChangeBatch::uniform(retracted, -1);
        let inserted = ChangeBatch::uniform(new_rows, 1).filter(&BooleanArray::from(emit_new))?;
        ChangeBatch::concat(&self.output_schema, &[retracted, inserted])
    }

    fn advance_watermarks(&mut self, watermarks: &std::collections::HashMap<u32, i64>) {
        if let Some(close) = self.close.as_mut() {
            let each: Option<Vec<i64>> = close.relations.iter().map(|r| watermarks.get(r).copied()).collect();
            close.watermark = each.and_then(|w| w.into_iter().min());
        }
    }

    fn wakeup_at(&self) -> Option<i64> {
        // Due at once: the engine runs any dataflow whose wake-up time has passed.
        self.close.as_ref().filter(|c| c.due()).map(|_| i64::MIN)
    }

    fn restore(&mut self, store: &Store) -> Result<()> {
        self.groups.restore(store)?;
        self.multisets.restore(store)?;
        if let (Some(close), Some(codec)) = (self.close.as_mut(), &self.group_codec) {
            close.open.clear();
            let keys: Vec<Vec<u8>> = self.groups.iter().map(|(k, _)| k.to_vec()).collect();
            if !keys.is_empty() {
                let groups = codec.decode(keys.iter().map(|k| k.as_slice()))?;
                let ends = Self::window_ends(groups.column(close.end_column))?;
                for (i, key) in keys.into_iter().enumerate() {
                    if !ends.is_null(i) {
                        close.open.entry(ends.value(i)).or_default().insert(key);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray};
    use arrow::util::display::array_value_to_string;
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::datasource::MemTable;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::logical_expr::LogicalPlan;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::dataflow::testing::{Multiset, Rng, random_delta};

    /// A row of `t(g, x, b, s, f)`; `f` is stored in quarters so rows stay `Ord`.
    type Row = (Option<i64>, Option<i64>, Option<bool>, Option<String>, Option<i64>);

    fn table_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int64, true),
            Field::new("x", DataType::Int64, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("f", DataType::Float64, true),
        ]))
    }

    fn to_batch(rows: &[(Row, i64)]) -> ChangeBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter(rows.iter().map(|(r, _)| r.0))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|(r, _)| r.1))),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|(r, _)| r.2))),
            Arc::new(StringArray::from_iter(rows.iter().map(|(r, _)| r.3.clone()))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|(r, _)| r.4.map(|q| q as f64 / 4.0)))),
        ];
        let batch = RecordBatch::try_new(table_schema(), columns).unwrap();
        ChangeBatch::new(batch, Int64Array::from_iter_values(rows.iter().map(|(_, w)| *w)))
    }

    fn random_row(rng: &mut Rng) -> Row {
        let g = (rng.below(6) != 0).then(|| rng.below(4) as i64);
        let x = (rng.below(5) != 0).then(|| rng.below(9) as i64 - 3);
        let b = match rng.below(3) {
            0 => None,
            1 => Some(true),
            _ => Some(false),
        };
        let s = match rng.below(4) {
            0 => None,
            k => Some(["a", "b", "c"][k as usize - 1].to_string()),
        };
        let f = (rng.below(5) != 0).then(|| rng.below(20) as i64 - 8);
        (g, x, b, s, f)
    }

    /// What the planner does: plan with DataFusion (analyzed, not optimized, so the aggregate
    /// sits right on the scan), take the Aggregate node and lower it.
    async fn plan(sql: &str) -> (SchemaRef, Vec<Arc<dyn PhysicalExpr>>, Vec<AggregateSpec>, SchemaRef) {
        let state = SessionStateBuilder::new().with_default_features().with_optimizer_rules(vec![]).build();
        let ctx = SessionContext::new_with_state(state);
        let empty = MemTable::try_new(table_schema(), vec![vec![]]).unwrap();
        ctx.register_table("t", Arc::new(empty)).unwrap();
        let plan = ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap();
        let mut found = None;
        plan.apply(|p| {
            if let LogicalPlan::Aggregate(a) = p {
                found = Some(a.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        let agg = found.unwrap_or_else(|| panic!("no aggregate in plan of {sql}:\n{plan}"));
        let input_schema: SchemaRef = Arc::new(agg.input.schema().as_arrow().clone());
        let input_types: Vec<_> = input_schema.fields().iter().map(|f| f.data_type().clone()).collect();
        let table_types: Vec<_> = table_schema().fields().iter().map(|f| f.data_type().clone()).collect();
        assert_eq!(input_types, table_types, "aggregate input is not the scan of t:\n{plan}");
        let (groups, aggs) = lower_aggregate(&agg, &ExecutionProps::new()).unwrap();
        let output_schema: SchemaRef = Arc::new(agg.schema.as_arrow().clone());
        (input_schema, groups, aggs, output_schema)
    }

    fn batch_rows(batch: &RecordBatch) -> Vec<String> {
        (0..batch.num_rows())
            .map(|i| batch.columns().iter().map(|c| array_value_to_string(c, i).unwrap()).collect::<Vec<_>>().join("|"))
            .collect()
    }

    /// DataFusion's (non-incremental) answer over the current contents.
    async fn reference(sql: &str, contents: &BTreeMap<Row, i64>) -> (Vec<DataType>, BTreeMap<String, i64>) {
        let rows: Vec<(Row, i64)> = contents.iter().map(|(r, c)| (r.clone(), *c)).collect();
        let batch = to_batch(&rows).expand_positive().unwrap();
        let ctx = SessionContext::new();
        let table = MemTable::try_new(table_schema(), vec![vec![batch]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let df = ctx.sql(sql).await.unwrap();
        let types = df.schema().fields().iter().map(|f| f.data_type().clone()).collect();
        let mut out = BTreeMap::new();
        for b in df.collect().await.unwrap() {
            for r in batch_rows(&b) {
                *out.entry(r).or_insert(0) += 1;
            }
        }
        (types, out)
    }

    fn apply_output(view: &mut BTreeMap<String, i64>, out: &ChangeBatch) {
        for (r, w) in batch_rows(&out.rows).into_iter().zip(out.weights.values()) {
            *view.entry(r).or_insert(0) += w;
        }
        view.retain(|_, c| *c != 0);
        assert!(view.values().all(|c| *c > 0), "negative view multiplicity: {view:?}");
    }

    /// Feed random deltas through the operator (restoring from storage along the way, and
    /// replaying ticks whose writes were dropped) and compare with DataFusion after every step.
    async fn check(sql: &str, reference_sql: &str, seeds: &[u64], steps: usize) {
        let (input_schema, groups, aggs, output_schema) = plan(sql).await;
        let make = || Aggregate::new(input_schema.clone(), groups.clone(), aggs.clone(), output_schema.clone(), 7, 3).unwrap();
        let out_types: Vec<DataType> = output_schema.fields().iter().map(|f| f.data_type().clone()).collect();
        for &seed in seeds {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let mut op = make();
            op.restore(&store).unwrap();
            let mut rng = Rng::new(seed);
            let mut contents: Multiset<Row> = BTreeMap::new();
            let mut view: BTreeMap<String, i64> = BTreeMap::new();
            for step in 0..steps {
                // The delta (consolidated: one entry per row).
                let delta: Multiset<Row> = if step == 0 {
                    // The engine's initial step over an empty input.
                    BTreeMap::new()
                } else if rng.below(12) == 0 {
                    // Everything deleted.
                    std::mem::take(&mut contents).into_iter().map(|(r, c)| (r, -c)).collect()
                } else {
                    let changes = 1 + rng.below(5);
                    random_delta(&mut rng, &mut contents, changes, random_row)
                };
                let rows: Vec<(Row, i64)> = delta.into_iter().collect();
                let input = to_batch(&rows);

                if step > 0 && (step % 10 == 5 || rng.below(8) == 0) {
                    // Restart: a fresh operator restored from the committed state.
                    op = make();
                    op.restore(&store).unwrap();
                }
                if rng.below(8) == 0 {
                    // A failed tick: its writes are dropped and the state restored.
                    let mut writes = TickWrites::default();
                    let _ = op.step(vec![input.clone()], &mut writes).unwrap();
                    drop(writes);
                    op.restore(&store).unwrap();
                }
                let mut writes = TickWrites::default();
                let out = op.step(vec![input], &mut writes).unwrap();
                store.commit(writes).unwrap();
                assert_eq!(out.schema(), output_schema);
                apply_output(&mut view, &out);

                let (types, expected) = reference(reference_sql, &contents).await;
                assert_eq!(types, out_types, "output types differ from DataFusion's for {sql}");
                assert_eq!(
                    view,
                    expected,
                    "{sql}: seed {seed} step {step}, contents {contents:?}, last output {:?}",
                    batch_rows(&out.rows).into_iter().zip(out.weights.values()).collect::<Vec<_>>()
                );
            }
        }
    }

    async fn check_sql(sql: &str) {
        check(sql, sql, &[1, 2, 3], 40).await;
    }

    #[tokio::test]
    async fn counts() {
        check_sql("SELECT g, count(*), count(x), count(s), count(x, s) FROM t GROUP BY g").await;
    }

    #[tokio::test]
    async fn sums_and_averages() {
        check_sql("SELECT g, sum(x), avg(x), sum(f), avg(f) FROM t GROUP BY g").await;
    }

    #[tokio::test]
    async fn min_max() {
        check_sql("SELECT g, min(x), max(x), min(s), max(s), min(f), max(f), min(b), max(b) FROM t GROUP BY g").await;
    }

    #[tokio::test]
    async fn count_distinct() {
        check_sql("SELECT g, count(DISTINCT x), count(DISTINCT s) FROM t GROUP BY g").await;
        check_sql("SELECT s, count(DISTINCT x) FROM t GROUP BY s").await;
    }

    #[tokio::test]
    async fn bool_and_or() {
        check_sql("SELECT g, bool_and(b), bool_or(b) FROM t GROUP BY g").await;
    }

    #[tokio::test]
    async fn generic_ordered_aggregates() {
        check_sql(
            "SELECT g, array_agg(x ORDER BY x DESC), string_agg(s, ',' ORDER BY s), \
             first_value(x ORDER BY x), sum(DISTINCT x), avg(DISTINCT x) FROM t GROUP BY g",
        )
        .await;
    }

    #[tokio::test]
    async fn filter_clause() {
        check_sql(
            "SELECT g, count(*) FILTER (WHERE b), sum(x) FILTER (WHERE x > 0), min(s) FILTER (WHERE x < 2), \
             count(DISTINCT s) FILTER (WHERE b), array_agg(x ORDER BY x) FILTER (WHERE NOT b) FROM t GROUP BY g",
        )
        .await;
    }

    #[tokio::test]
    async fn global_aggregate() {
        check_sql(
            "SELECT count(*), count(x), sum(x), avg(x), sum(f), min(s), max(x), count(DISTINCT x), \
             bool_or(b), array_agg(x ORDER BY x) FROM t",
        )
        .await;
    }

    #[tokio::test]
    async fn distinct_and_group_expressions() {
        check("SELECT g, s FROM t GROUP BY g, s", "SELECT DISTINCT g, s FROM t", &[1, 2, 3], 40).await;
        check_sql("SELECT g % 2, x IS NULL, count(*), sum(x) FROM t GROUP BY g % 2, x IS NULL").await;
    }

    /// The global row exists from the very first (empty) step, and survives deleting everything.
    #[tokio::test]
    async fn global_over_empty_input() {
        let (input_schema, groups, aggs, output_schema) = plan("SELECT count(*), sum(x) FROM t").await;
        let mut op = Aggregate::new(input_schema.clone(), groups, aggs, output_schema, 1, 1).unwrap();
        let mut writes = TickWrites::default();
        let out = op.step(vec![ChangeBatch::empty(input_schema.clone())], &mut writes).unwrap();
        assert_eq!(batch_rows(&out.rows), vec!["0|".to_string()]);
        assert_eq!(out.weights.values().to_vec(), vec![1]);
        let out = op.step(vec![ChangeBatch::empty(input_schema.clone())], &mut writes).unwrap();
        assert!(out.is_empty());
        let row: Row = (Some(1), Some(5), None, None, None);
        let out = op.step(vec![to_batch(&[(row.clone(), 2)])], &mut writes).unwrap();
        let got: Vec<_> = batch_rows(&out.rows).into_iter().zip(out.weights.values().to_vec()).collect();
        assert_eq!(got, vec![("0|".to_string(), -1), ("2|10".to_string(), 1)]);
        let out = op.step(vec![to_batch(&[(row, -2)])], &mut writes).unwrap();
        let got: Vec<_> = batch_rows(&out.rows).into_iter().zip(out.weights.values().to_vec()).collect();
        assert_eq!(got, vec![("2|10".to_string(), -1), ("0|".to_string(), 1)]);
    }

    /// Float sums survive cancellation: adding then removing a huge value leaves the small ones.
    #[tokio::test]
    async fn float_sum_retraction_is_stable() {
        let (input_schema, groups, aggs, output_schema) = plan("SELECT sum(f), avg(f) FROM t").await;
        let mut op = Aggregate::new(input_schema.clone(), groups, aggs, output_schema, 1, 1).unwrap();
        let mut writes = TickWrites::default();
        let mk = |f: f64, w: i64| {
            let cb = to_batch(&[((None, None, None, None, Some(0)), w)]);
            let cols = vec![
                cb.rows.column(0).clone(),
                cb.rows.column(1).clone(),
                cb.rows.column(2).clone(),
                cb.rows.column(3).clone(),
                Arc::new(Float64Array::from(vec![f])) as ArrayRef,
            ];
            ChangeBatch::new(RecordBatch::try_new(table_schema(), cols).unwrap(), cb.weights)
        };
        for (f, w) in [(1e20, 1), (1.0, 3), (f64::INFINITY, 1), (1e20, -1), (f64::INFINITY, -1), (2.5, 1)] {
            let _ = op.step(vec![mk(f, w)], &mut writes).unwrap();
        }
        let state = op.decode_state(op.groups.get(&[]).unwrap()).unwrap();
        let row = op.out_codec.decode([state.emitted.as_deref().unwrap()]).unwrap();
        assert_eq!(batch_rows(&row), vec!["5.5|1.375".to_string()]);
    }
}
