//! GROUP BY (and DISTINCT): per-group accumulators maintained from weighted changes.
//!
//! Per group the operator keeps the input multiplicity, one accumulator per aggregate and
//! the output row it last emitted; for each group a tick touches it retracts that row and
//! emits the new one. count/sum/avg/bool_and/bool_or are running values (O(1) per change);
//! min/max and count(DISTINCT) keep an ordered multiset of values (O(log n)); every other
//! aggregate keeps the multiset of its argument rows and is re-evaluated with DataFusion's
//! own accumulator for the groups that changed (O(group size)), so its semantics are
//! DataFusion's exactly.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::{Expr, GroupingSet};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use super::arrangement::{Arrangement, ValueMap, state_prefix};
use super::filter::evaluate_mask;
use super::{ChangeBatch, DataflowError, Operator, Result, RowCodec};
use crate::storage::{Store, TickWrites};

/// One aggregate call: DataFusion's physical aggregate plus its FILTER clause.
pub struct AggregateSpec {
    pub expr: Arc<AggregateFunctionExpr>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

/// Lower a logical Aggregate's group and aggregate expressions to physical ones.
pub fn lower_aggregate(
    agg: &datafusion::logical_expr::Aggregate,
    props: &ExecutionProps,
) -> Result<(Vec<Arc<dyn PhysicalExpr>>, Vec<AggregateSpec>)> {
    if agg.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(GroupingSet::Cube(_) | GroupingSet::Rollup(_) | GroupingSet::GroupingSets(_)))) {
        return Err(DataflowError::Unsupported("GROUPING SETS, CUBE and ROLLUP".into()));
    }
    let input = agg.input.schema();
    let groups = agg
        .group_expr
        .iter()
        .map(|e| create_physical_expr(e, input, props, &Default::default()).map_err(DataflowError::from))
        .collect::<Result<Vec<_>>>()?;
    let aggs = agg
        .aggr_expr
        .iter()
        .map(|e| {
            #[allow(deprecated)]
            let (expr, filter, _) =
                datafusion::physical_planner::create_aggregate_expr_and_maybe_filter(e, input, input.as_arrow(), props)?;
            Ok(AggregateSpec { expr, filter })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((groups, aggs))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Count,
    SumInt,
    SumFloat,
    AvgInt,
    AvgFloat,
    Min,
    Max,
    CountDistinct,
    BoolAnd,
    BoolOr,
    Generic,
}

impl Kind {
    fn of(expr: &AggregateFunctionExpr) -> Kind {
        let name = expr.fun().name().to_ascii_lowercase();
        let args = expr.expressions();
        let ordered = !expr.order_bys().is_empty();
        match (name.as_str(), expr.is_distinct(), ordered) {
            ("count", false, _) => Kind::Count,
            ("count", true, _) if args.len() == 1 => Kind::CountDistinct,
            ("min", _, _) => Kind::Min,
            ("max", _, _) => Kind::Max,
            ("bool_and", false, _) => Kind::BoolAnd,
            ("bool_or", false, _) => Kind::BoolOr,
            ("sum", false, false) => Kind::SumInt,
            ("avg" | "mean", false, false) => Kind::AvgInt,
            _ => Kind::Generic,
        }
    }

    /// Sum/avg fast paths hold for plain ints and floats; anything else is generic.
    fn refine(self, arg: Option<&DataType>) -> Kind {
        match (self, arg) {
            (Kind::SumInt | Kind::AvgInt, Some(t)) if t.is_integer() => self,
            (Kind::SumInt, Some(DataType::Float32 | DataType::Float64)) => Kind::SumFloat,
            (Kind::AvgInt, Some(DataType::Float32 | DataType::Float64)) => Kind::AvgFloat,
            (Kind::SumInt | Kind::AvgInt, _) => Kind::Generic,
            (k, _) => k,
        }
    }

    fn uses_multiset(self) -> bool {
        matches!(self, Kind::Min | Kind::Max | Kind::CountDistinct | Kind::Generic)
    }
}

/// Running value of one aggregate in one group.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Acc {
    int: i128,
    float: f64,
    /// Non-null inputs (or `true`s for bool aggregates).
    n: i64,
    /// `false`s for bool aggregates.
    m: i64,
}

const ACC_BYTES: usize = 16 + 8 + 8 + 8;

#[derive(Debug, Clone, Default)]
struct GroupState {
    rows: i64,
    accs: Vec<Acc>,
}

impl GroupState {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.accs.len() * ACC_BYTES);
        v.extend_from_slice(&self.rows.to_le_bytes());
        for a in &self.accs {
            v.extend_from_slice(&a.int.to_le_bytes());
            v.extend_from_slice(&a.float.to_le_bytes());
            v.extend_from_slice(&a.n.to_le_bytes());
            v.extend_from_slice(&a.m.to_le_bytes());
        }
        v
    }

    fn decode(bytes: &[u8], n_aggs: usize) -> Option<GroupState> {
        let take = |at: usize, len: usize| bytes.get(at..at + len);
        let rows = i64::from_le_bytes(take(0, 8)?.try_into().ok()?);
        let mut accs = Vec::with_capacity(n_aggs);
        for i in 0..n_aggs {
            let base = 8 + i * ACC_BYTES;
            accs.push(Acc {
                int: i128::from_le_bytes(take(base, 16)?.try_into().ok()?),
                float: f64::from_le_bytes(take(base + 16, 8)?.try_into().ok()?),
                n: i64::from_le_bytes(take(base + 24, 8)?.try_into().ok()?),
                m: i64::from_le_bytes(take(base + 32, 8)?.try_into().ok()?),
            });
        }
        Some(GroupState { rows, accs })
    }
}

struct AggSlot {
    spec: AggregateSpec,
    kind: Kind,
    /// Arguments (plus ORDER BY expressions for generic aggregates) kept in the multiset.
    inputs: Vec<Arc<dyn PhysicalExpr>>,
    /// Encodes multiset entries; for generic aggregates rebuilds the accumulator's input.
    codec: Option<RowCodec>,
    output_type: DataType,
}

pub struct Aggregate {
    schema: SchemaRef,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    group_codec: RowCodec,
    output_codec: RowCodec,
    slots: Vec<AggSlot>,
    states: HashMap<Vec<u8>, GroupState>,
    state_store: ValueMap,
    multisets: Arrangement,
    emitted: ValueMap,
}

impl Aggregate {
    pub fn new(
        input_schema: SchemaRef,
        group_exprs: Vec<Arc<dyn PhysicalExpr>>,
        aggs: Vec<AggregateSpec>,
        output_schema: SchemaRef,
        dataflow: u32,
        node: u32,
    ) -> Result<Aggregate> {
        let group_fields = group_exprs
            .iter()
            .zip(output_schema.fields())
            .map(|(_, f)| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<Field>>();
        let group_codec = RowCodec::new(Arc::new(Schema::new(group_fields)))?;
        let mut slots = Vec::with_capacity(aggs.len());
        for (i, spec) in aggs.into_iter().enumerate() {
            let arg_type = spec.expr.expressions().first().map(|a| a.data_type(&input_schema)).transpose()?;
            let kind = Kind::of(&spec.expr).refine(arg_type.as_ref());
            let inputs = match kind {
                Kind::Generic => {
                    let all = spec.expr.all_expressions();
                    all.args.into_iter().chain(all.order_by_exprs).collect()
                }
                _ => spec.expr.expressions().into_iter().take(1).collect::<Vec<_>>(),
            };
            let codec = if kind.uses_multiset() {
                let fields = inputs
                    .iter()
                    .enumerate()
                    .map(|(j, e)| Ok(Field::new(format!("a{j}"), e.data_type(&input_schema)?, true)))
                    .collect::<Result<Vec<_>>>()?;
                Some(RowCodec::new(Arc::new(Schema::new(fields)))?)
            } else {
                None
            };
            let output_type = output_schema.field(group_exprs.len() + i).data_type().clone();
            slots.push(AggSlot { spec, kind, inputs, codec, output_type });
        }
        Ok(Aggregate {
            output_codec: RowCodec::new(output_schema.clone())?,
            schema: output_schema,
            group_exprs,
            group_codec,
            slots,
            states: HashMap::new(),
            state_store: ValueMap::new(state_prefix(dataflow, node, 0)),
            multisets: Arrangement::new(state_prefix(dataflow, node, 1)),
            emitted: ValueMap::new(state_prefix(dataflow, node, 2)),
        })
    }

    fn multiset_key(group: &[u8], slot: usize) -> Vec<u8> {
        let mut k = Vec::with_capacity(group.len() + 2);
        k.extend_from_slice(&(slot as u16).to_be_bytes());
        k.extend_from_slice(group);
        k
    }

    /// Fold one batch of changes into the group states; returns the groups it touched.
    fn absorb(&mut self, input: &ChangeBatch, writes: &mut TickWrites, touched: &mut HashSet<Vec<u8>>) -> Result<()> {
        let rows = &input.rows;
        let n = rows.num_rows();
        let group_columns = self
            .group_exprs
            .iter()
            .map(|e| Ok(e.evaluate(rows)?.into_array(n)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let group_columns = group_columns
            .iter()
            .zip(self.group_codec.schema().fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { Ok(arrow::compute::cast(c, f.data_type())?) })
            .collect::<Result<Vec<_>>>()?;
        let keys = if self.group_exprs.is_empty() { vec![Vec::new(); n] } else { self.group_codec.encode_columns(&group_columns)? };
        let n_aggs = self.slots.len();
        for (i, key) in keys.iter().enumerate() {
            let state = self.states.entry(key.clone()).or_insert_with(|| GroupState { rows: 0, accs: vec![Acc::default(); n_aggs] });
            state.rows += input.weights.value(i);
            touched.insert(key.clone());
        }
        for (s, slot) in self.slots.iter().enumerate() {
            let mask = match &slot.spec.filter {
                Some(f) => Some(evaluate_mask(f, rows)?),
                None => None,
            };
            let values = slot.inputs.iter().map(|e| Ok(e.evaluate(rows)?.into_array(n)?)).collect::<Result<Vec<ArrayRef>>>()?;
            let included = |i: usize| mask.as_ref().is_none_or(|m| m.value(i));
            if let Some(codec) = &slot.codec {
                // Min/max/count(DISTINCT) ignore NULLs; generic aggregates see every row.
                let skip_nulls = slot.kind != Kind::Generic;
                let encoded = codec.encode_columns(&values)?;
                for (i, key) in keys.iter().enumerate() {
                    if !included(i) || (skip_nulls && values[0].is_null(i)) {
                        continue;
                    }
                    self.multisets.update(&Self::multiset_key(key, s), &encoded[i], input.weights.value(i), writes)?;
                }
                continue;
            }
            let value = values.first().cloned().unwrap_or_else(|| Arc::new(Int64Array::from(vec![1; n])));
            let as_i128 = |i: usize| -> i128 {
                ScalarValue::try_from_array(&value, i)
                    .ok()
                    .and_then(|v| v.cast_to(&DataType::Int64).ok())
                    .and_then(|v| if let ScalarValue::Int64(Some(x)) = v { Some(x as i128) } else { None })
                    .unwrap_or(0)
            };
            let floats = match slot.kind {
                Kind::SumFloat | Kind::AvgFloat => Some(arrow::compute::cast(&value, &DataType::Float64)?),
                _ => None,
            };
            let ints = match slot.kind {
                Kind::SumInt | Kind::AvgInt if !matches!(value.data_type(), DataType::UInt64) => {
                    Some(arrow::compute::cast(&value, &DataType::Int64)?)
                }
                _ => None,
            };
            let bools = value.as_any().downcast_ref::<BooleanArray>();
            for (i, key) in keys.iter().enumerate() {
                if !included(i) || value.is_null(i) {
                    continue;
                }
                let w = input.weights.value(i);
                let acc = &mut self.states.get_mut(key).expect("group state exists").accs[s];
                match slot.kind {
                    Kind::Count => acc.n += w,
                    Kind::SumInt | Kind::AvgInt => {
                        let x = match &ints {
                            Some(a) => a.as_any().downcast_ref::<Int64Array>().map(|a| a.value(i) as i128).unwrap_or(0),
                            None => as_i128(i),
                        };
                        acc.int += x * w as i128;
                        acc.n += w;
                    }
                    Kind::SumFloat | Kind::AvgFloat => {
                        let f = floats.as_ref().and_then(|a| a.as_any().downcast_ref::<arrow::array::Float64Array>()).map(|a| a.value(i)).unwrap_or(0.0);
                        acc.float += f * w as f64;
                        acc.n += w;
                    }
                    Kind::BoolAnd | Kind::BoolOr => match bools.map(|b| b.value(i)) {
                        Some(true) => acc.n += w,
                        Some(false) => acc.m += w,
                        None => {}
                    },
                    Kind::Min | Kind::Max | Kind::CountDistinct | Kind::Generic => unreachable!("multiset kinds handled above"),
                }
            }
        }
        Ok(())
    }

    /// The value of aggregate `s` for a group, as DataFusion would compute it.
    fn value(&self, group: &[u8], state: &GroupState, s: usize) -> Result<ScalarValue> {
        let slot = &self.slots[s];
        let acc = state.accs[s];
        let multiset = || self.multisets.get(&Self::multiset_key(group, s));
        let value = match slot.kind {
            Kind::Count => ScalarValue::Int64(Some(acc.n)),
            Kind::SumInt if acc.n == 0 => ScalarValue::Null,
            Kind::SumInt => ScalarValue::Int64(Some(acc.int as i64)),
            Kind::SumFloat if acc.n == 0 => ScalarValue::Null,
            Kind::SumFloat => ScalarValue::Float64(Some(acc.float)),
            Kind::AvgInt | Kind::AvgFloat if acc.n == 0 => ScalarValue::Null,
            Kind::AvgInt => ScalarValue::Float64(Some(acc.int as f64 / acc.n as f64)),
            Kind::AvgFloat => ScalarValue::Float64(Some(acc.float / acc.n as f64)),
            Kind::BoolAnd if acc.n + acc.m == 0 => ScalarValue::Boolean(None),
            Kind::BoolAnd => ScalarValue::Boolean(Some(acc.m == 0)),
            Kind::BoolOr if acc.n + acc.m == 0 => ScalarValue::Boolean(None),
            Kind::BoolOr => ScalarValue::Boolean(Some(acc.n > 0)),
            Kind::CountDistinct => ScalarValue::Int64(Some(multiset().map(|m| m.len() as i64).unwrap_or(0))),
            Kind::Min | Kind::Max => {
                let entry = multiset().and_then(|m| if slot.kind == Kind::Min { m.keys().next() } else { m.keys().next_back() });
                match entry {
                    Some(bytes) => {
                        let codec = slot.codec.as_ref().expect("multiset codec");
                        let batch = codec.decode([bytes.as_slice()])?;
                        ScalarValue::try_from_array(batch.column(0), 0)?
                    }
                    None => ScalarValue::Null,
                }
            }
            Kind::Generic => {
                let mut accumulator = slot.spec.expr.create_accumulator()?;
                if let Some(m) = multiset() {
                    let codec = slot.codec.as_ref().expect("multiset codec");
                    let distinct = codec.decode(m.keys().map(|k| k.as_slice()))?;
                    let repeat: UInt32Array = m.values().enumerate().flat_map(|(i, c)| std::iter::repeat_n(i as u32, (*c).max(0) as usize)).collect();
                    let columns = distinct
                        .columns()
                        .iter()
                        .map(|c| arrow::compute::take(c.as_ref(), &repeat, None))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    accumulator.update_batch(&columns)?;
                }
                accumulator.evaluate()?
            }
        };
        if value.data_type() == slot.output_type {
            Ok(value)
        } else if value.is_null() {
            Ok(ScalarValue::try_from(&slot.output_type)?)
        } else {
            Ok(value.cast_to(&slot.output_type)?)
        }
    }

    /// Output rows for the given groups (groups that no longer exist are skipped).
    fn output_rows(&self, groups: &[Vec<u8>]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let live: Vec<&Vec<u8>> = groups
            .iter()
            .filter(|g| self.group_exprs.is_empty() || self.states.get(*g).is_some_and(|s| s.rows > 0))
            .collect();
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let mut columns: Vec<ArrayRef> = if self.group_exprs.is_empty() {
            Vec::new()
        } else {
            self.group_codec.decode(live.iter().map(|g| g.as_slice()))?.columns().to_vec()
        };
        let empty = GroupState { rows: 0, accs: vec![Acc::default(); self.slots.len()] };
        for s in 0..self.slots.len() {
            let values = live
                .iter()
                .map(|g| self.value(g, self.states.get(*g).unwrap_or(&empty), s))
                .collect::<Result<Vec<_>>>()?;
            columns.push(ScalarValue::iter_to_array(values)?);
        }
        let columns = columns
            .into_iter()
            .zip(self.schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { Ok(arrow::compute::cast(&c, f.data_type())?) })
            .collect::<Result<Vec<_>>>()?;
        let loose = Arc::new(Schema::new(self.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>()));
        let batch = RecordBatch::try_new(loose, columns)?;
        let encoded = self.output_codec.encode(&batch)?;
        Ok(live.into_iter().cloned().zip(encoded).collect())
    }
}

impl Operator for Aggregate {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, mut inputs: Vec<ChangeBatch>, writes: &mut TickWrites) -> Result<ChangeBatch> {
        let input = inputs.swap_remove(0);
        let mut touched = HashSet::new();
        if !input.is_empty() {
            self.absorb(&input, writes, &mut touched)?;
        }
        if self.group_exprs.is_empty() && self.emitted.is_empty() {
            // A global aggregate has exactly one row, even over no input.
            touched.insert(Vec::new());
        }
        let touched: Vec<Vec<u8>> = touched.into_iter().collect();
        let new_rows: HashMap<Vec<u8>, Vec<u8>> = self.output_rows(&touched)?.into_iter().collect();
        let mut changes: Vec<(Vec<u8>, i64)> = Vec::new();
        for group in &touched {
            let old = self.emitted.get(group).cloned();
            let new = new_rows.get(group).cloned();
            if old == new {
                continue;
            }
            if let Some(o) = old {
                changes.push((o, -1));
            }
            if let Some(n) = &new {
                changes.push((n.clone(), 1));
            }
            self.emitted.set(group, new, writes);
        }
        for group in &touched {
            match self.states.get(group) {
                Some(s) if s.rows > 0 => self.state_store.set(group, Some(s.encode()), writes),
                Some(s) if s.rows < 0 => {
                    return Err(DataflowError::Internal("a group's multiplicity went negative".into()));
                }
                _ => {
                    self.states.remove(group);
                    self.state_store.set(group, None, writes);
                }
            }
        }
        self.output_codec.decode_changes(changes.iter().map(|(r, w)| (r.as_slice(), *w)))
    }

    fn restore(&mut self, store: &Store) -> Result<()> {
        self.state_store.restore(store)?;
        self.multisets.restore(store)?;
        self.emitted.restore(store)?;
        let n = self.slots.len();
        self.states = self
            .state_store
            .iter()
            .map(|(k, v)| {
                GroupState::decode(v, n)
                    .map(|s| (k.clone(), s))
                    .ok_or_else(|| DataflowError::Internal("corrupt aggregate state".into()))
            })
            .collect::<Result<_>>()?;
        Ok(())
    }
}
