//! Join: the incremental equi-join (inner, left/right/full outer, left semi, left anti).
//!
//! DBSP rule `Δ(A⋈B) = ΔA⋈B + A⋈ΔB + ΔA⋈ΔB`, computed in two phases per tick: the left delta
//! against the right state, then the left state is updated, then the right delta against the
//! updated left state (which covers the `ΔA⋈ΔB` term).
//!
//! State: one [`Arrangement`] per side, keyed by the encoded join key and holding encoded full
//! rows. Rows with a NULL in any key column never match anything, so they are never stored: their
//! contribution (NULL-padded for a preserved side of an outer join, the row itself for an anti
//! join, nothing otherwise) is a function of the delta alone.
//!
//! Preserved sides (the outer side(s) of an outer join, the left side of a semi/anti join) need to
//! know whether each of their rows currently has a match on the other side:
//! - without a residual filter a match depends only on the key, so we keep the total multiplicity
//!   of every key of the other side (in memory, rebuilt from the arrangement on restore);
//! - with a residual filter it depends on the row, so we keep, per preserved row, the number of
//!   other-side rows that match it (an extra arrangement, slots 2 and 3), updated from the
//!   candidate pairs each delta produces.
//!
//! A preserved row's output appears/disappears when its match count crosses zero, so every tick
//! costs the delta, the candidate pairs it produces and the rows whose match status flips, never
//! the size of the state.

use hashbrown::HashMap;
use hashbrown::hash_map::Entry;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array, new_null_array};
use arrow::compute::{CastOptions, cast_with_options, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::type_coercion::binary::comparison_coercion;
use datafusion::physical_expr::PhysicalExpr;

use super::arrangement::{Arrangement, state_prefix};
use super::{ChangeBatch, DataflowError, Operator, Result, RowCodec};
use crate::storage::{Store, TickWrites};

/// The kind of join. Semi and anti joins emit left rows only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
    LeftSemi,
    LeftAnti,
}

const LEFT: usize = 0;
const RIGHT: usize = 1;

impl JoinKind {
    /// Whether matched (left, right) pairs are part of the output.
    fn emits_pairs(self) -> bool {
        matches!(self, JoinKind::Inner | JoinKind::Left | JoinKind::Right | JoinKind::Full)
    }

    /// Whether the rows of `side` appear in the output on their own (padded or not),
    /// depending on whether they have matches.
    fn preserves(self, side: usize) -> bool {
        match side {
            LEFT => matches!(self, JoinKind::Left | JoinKind::Full | JoinKind::LeftSemi | JoinKind::LeftAnti),
            _ => matches!(self, JoinKind::Right | JoinKind::Full),
        }
    }

    /// Whether a preserved row with `matches` matching rows on the other side is emitted.
    fn emits_preserved(self, matches: i64) -> bool {
        if self == JoinKind::LeftSemi { matches > 0 } else { matches <= 0 }
    }

    fn is_semi_or_anti(self) -> bool {
        matches!(self, JoinKind::LeftSemi | JoinKind::LeftAnti)
    }
}

/// The state of one input side.
struct SideState {
    /// Join key -> rows of this side with a non-NULL key. When the rows themselves are never
    /// needed (the right side of a semi/anti join without filter) every row is stored as the
    /// empty byte string, so the arrangement holds just a count per key.
    rows: Arrangement,
    store_rows: bool,
    /// Whether the total multiplicity per key (the arrangement's per-key total) is needed:
    /// when the other side is preserved and there is no filter.
    counts: bool,
    /// Key -> row -> number of matching other-side rows (absent = 0); kept when this side is
    /// preserved and there is a filter.
    matches: Option<Arrangement>,
}

impl SideState {
    fn restore(&mut self, store: &Store) -> Result<()> {
        self.rows.restore(store)?;
        if let Some(matches) = &mut self.matches {
            matches.restore(store)?;
        }
        Ok(())
    }
}

pub struct Join {
    kind: JoinKind,
    schemas: [SchemaRef; 2],
    output_schema: SchemaRef,
    /// Left fields ++ right fields: the schema the residual filter is evaluated over.
    pair_schema: SchemaRef,
    keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    /// The common type each key column is cast to before encoding.
    key_types: Vec<DataType>,
    /// Encodes key columns; `None` when there are no key columns (every row has the empty key).
    key_codec: Option<RowCodec>,
    row_codecs: [RowCodec; 2],
    filter: Option<Arc<dyn PhysicalExpr>>,
    sides: [SideState; 2],
    /// Keys compare with `IS NOT DISTINCT FROM`: a NULL key matches a NULL key.
    nulls_equal: bool,
}

impl Join {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: JoinKind,
        left_schema: SchemaRef,
        right_schema: SchemaRef,
        left_keys: Vec<Arc<dyn PhysicalExpr>>,
        right_keys: Vec<Arc<dyn PhysicalExpr>>,
        filter: Option<Arc<dyn PhysicalExpr>>,
        output_schema: SchemaRef,
        dataflow: u32,
        node: u32,
    ) -> Result<Join> {
        if left_keys.len() != right_keys.len() {
            return Err(DataflowError::Internal(format!("join has {} left keys but {} right keys", left_keys.len(), right_keys.len())));
        }
        let mut key_types = Vec::with_capacity(left_keys.len());
        for (l, r) in left_keys.iter().zip(&right_keys) {
            let lt = l.data_type(&left_schema)?;
            let rt = r.data_type(&right_schema)?;
            let common = comparison_coercion(&lt, &rt)
                .ok_or_else(|| DataflowError::Internal(format!("cannot compare join keys of types {lt} and {rt}")))?;
            key_types.push(value_type(&common));
        }
        let key_codec = if key_types.is_empty() {
            None
        } else {
            let fields: Vec<Field> = key_types.iter().enumerate().map(|(i, t)| Field::new(format!("k{i}"), t.clone(), true)).collect();
            Some(RowCodec::new(Arc::new(Schema::new(fields)))?)
        };

        let pair_fields: Vec<_> = left_schema.fields().iter().chain(right_schema.fields().iter()).cloned().collect();
        let pair_schema = Arc::new(Schema::new(pair_fields));
        let expected: Vec<&DataType> = if kind.is_semi_or_anti() {
            left_schema.fields().iter().map(|f| f.data_type()).collect()
        } else {
            pair_schema.fields().iter().map(|f| f.data_type()).collect()
        };
        let actual: Vec<&DataType> = output_schema.fields().iter().map(|f| f.data_type()).collect();
        if expected.len() != actual.len() || expected.iter().zip(&actual).any(|(e, a)| !e.equals_datatype(a)) {
            return Err(DataflowError::Internal(format!("{kind:?} join output schema {output_schema:?} does not match its inputs")));
        }

        let has_filter = filter.is_some();
        let side = |s: usize, rows_slot: u8, matches_slot: u8| SideState {
            rows: Arrangement::new(state_prefix(dataflow, node, rows_slot)),
            store_rows: kind.emits_pairs() || has_filter || kind.preserves(s),
            counts: kind.preserves(1 - s) && !has_filter,
            matches: (kind.preserves(s) && has_filter).then(|| Arrangement::new(state_prefix(dataflow, node, matches_slot))),
        };
        let sides = [side(LEFT, 0, 2), side(RIGHT, 1, 3)];

        Ok(Join {
            kind,
            row_codecs: [RowCodec::new(left_schema.clone())?, RowCodec::new(right_schema.clone())?],
            schemas: [left_schema, right_schema],
            output_schema,
            pair_schema,
            keys: [left_keys, right_keys],
            key_types,
            key_codec,
            filter,
            sides,
            nulls_equal: false,
        })
    }

    /// Match keys with `IS NOT DISTINCT FROM` (NULL equals NULL) instead of `=`.
    pub fn with_nulls_equal(mut self) -> Join {
        self.nulls_equal = true;
        self
    }

    /// Encoded join key of every row of `batch` (rows of `side`); `None` when a key column is NULL
    /// (unless NULLs are equal).
    fn encode_keys(&self, side: usize, batch: &RecordBatch) -> Result<Vec<Option<Vec<u8>>>> {
        let n = batch.num_rows();
        let Some(codec) = &self.key_codec else {
            return Ok(vec![Some(Vec::new()); n]);
        };
        let mut valid = vec![true; n];
        let mut columns = Vec::with_capacity(self.key_types.len());
        for (expr, key_type) in self.keys[side].iter().zip(&self.key_types) {
            let array = expr.evaluate(batch)?.into_array(n)?;
            let array = if array.data_type() == key_type {
                array
            } else {
                let options = CastOptions { safe: false, ..Default::default() };
                cast_with_options(&array, key_type, &options)?
            };
            if let Some(nulls) = array.logical_nulls().filter(|_| !self.nulls_equal) {
                for (i, v) in valid.iter_mut().enumerate() {
                    if nulls.is_null(i) {
                        *v = false;
                    }
                }
            }
            columns.push(array);
        }
        let encoded = codec.encode_columns(&columns)?;
        Ok(encoded.into_iter().zip(valid).map(|(k, v)| v.then_some(k)).collect())
    }

    /// Columns of the candidate pairs `(this_rows[i], other_rows[j])`, in left ++ right order.
    fn pair_columns(
        &self,
        this: usize,
        this_rows: &RecordBatch,
        other_rows: &RecordBatch,
        this_idx: &UInt32Array,
        other_idx: &UInt32Array,
    ) -> Result<Vec<ArrayRef>> {
        let this_cols = take_columns(this_rows, this_idx)?;
        let other_cols = take_columns(other_rows, other_idx)?;
        Ok(if this == LEFT { this_cols.into_iter().chain(other_cols).collect() } else { other_cols.into_iter().chain(this_cols).collect() })
    }

    /// Output rows for preserved rows `indices` of `batch` (rows of `side`): the rows themselves
    /// for semi/anti joins, padded with NULLs on the other side for outer joins.
    fn preserved_output(&self, side: usize, batch: &RecordBatch, indices: Vec<u32>, weights: Vec<i64>) -> Result<ChangeBatch> {
        let indices = UInt32Array::from(indices);
        let n = indices.len();
        let taken = take_columns(batch, &indices)?;
        let columns: Vec<ArrayRef> = if self.kind.is_semi_or_anti() {
            taken
        } else {
            let fields = self.output_schema.fields();
            let left_width = self.schemas[LEFT].fields().len();
            let nulls = |range: Range<usize>| fields[range].iter().map(|f| new_null_array(f.data_type(), n));
            if side == LEFT {
                taken.into_iter().chain(nulls(left_width..fields.len())).collect()
            } else {
                nulls(0..left_width).chain(taken).collect()
            }
        };
        Ok(ChangeBatch::new(batch_with_rows(self.output_schema.clone(), columns, n)?, weights.into()))
    }

    /// Process the changes of side `this` against the current state of the other side,
    /// then apply them to this side's state.
    fn process_delta(&mut self, this: usize, delta: &ChangeBatch, writes: &mut TickWrites, out: &mut Vec<ChangeBatch>) -> Result<()> {
        if delta.is_empty() {
            return Ok(());
        }
        if delta.weights.null_count() > 0 {
            return Err(DataflowError::Internal("NULL weight in join input".into()));
        }
        let other = 1 - this;
        let kind = self.kind;
        let n = delta.len();
        let weights = delta.weights.values();
        let keys = self.encode_keys(this, &delta.rows)?;
        let has_filter = self.filter.is_some();
        let this_preserved = kind.preserves(this);
        let other_preserved = kind.preserves(other);
        let pairs_needed = kind.emits_pairs() || (has_filter && (this_preserved || other_preserved));

        // Net change of this side's multiplicity per distinct non-NULL key.
        let mut distinct: Vec<&[u8]> = Vec::new();
        let mut key_delta: HashMap<&[u8], i64> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let Some(key) = key else { continue };
            match key_delta.entry(key.as_slice()) {
                Entry::Occupied(mut e) => *e.get_mut() = add(*e.get(), weights[i])?,
                Entry::Vacant(e) => {
                    distinct.push(key.as_slice());
                    e.insert(weights[i]);
                }
            }
        }

        // Without a filter, other-side rows are (un)matched per key: find the keys whose
        // match status flips because this side's count for the key crosses zero.
        let mut flips: Vec<(&[u8], i64)> = Vec::new();
        if other_preserved && !has_filter {
            let side = &self.sides[this];
            if !side.counts {
                return Err(missing("key counts"));
            }
            for key in &distinct {
                let old = side.rows.get(key).map_or(0, |m| m.total());
                let new = add(old, key_delta[key])?;
                let (was, is) = (kind.emits_preserved(old), kind.emits_preserved(new));
                if was != is {
                    flips.push((key, if is { 1 } else { -1 }));
                }
            }
        }

        // Decode the other side's rows under the keys we need, once per key.
        let needed: Vec<&[u8]> = if pairs_needed { distinct.clone() } else { flips.iter().map(|(k, _)| *k).collect() };
        let mut other_rows: Vec<Vec<u8>> = Vec::new();
        let mut other_mult: Vec<i64> = Vec::new();
        let mut other_key: Vec<usize> = Vec::new();
        let mut ranges: HashMap<&[u8], Range<usize>> = HashMap::new();
        for (ki, key) in needed.iter().enumerate() {
            if let Some(rows) = self.sides[other].rows.get(key) {
                let start = other_rows.len();
                for (row, w) in rows {
                    other_rows.push(row.to_vec());
                    other_mult.push(w);
                    other_key.push(ki);
                }
                ranges.insert(key, start..other_rows.len());
            }
        }
        let other_batch = if other_rows.is_empty() {
            RecordBatch::new_empty(self.schemas[other].clone())
        } else if !self.sides[other].store_rows {
            return Err(missing("stored rows"));
        } else {
            self.row_codecs[other].decode(other_rows.iter().map(Vec::as_slice))?
        };

        // Candidate pairs: every delta row with every other-side row of its key.
        let mut pair_this: Vec<u32> = Vec::new();
        let mut pair_other: Vec<u32> = Vec::new();
        let mut pair_weight: Vec<i64> = Vec::new();
        if pairs_needed {
            for (i, key) in keys.iter().enumerate() {
                let Some(range) = key.as_ref().and_then(|k| ranges.get(k.as_slice())) else {
                    continue;
                };
                for j in range.clone() {
                    pair_this.push(i as u32);
                    pair_other.push(j as u32);
                    pair_weight.push(mul(weights[i], other_mult[j])?);
                }
            }
        }
        let mut mask: Option<BooleanArray> = None;
        if !pair_this.is_empty() {
            let (this_idx, other_idx) = (UInt32Array::from(pair_this.clone()), UInt32Array::from(pair_other.clone()));
            let columns = self.pair_columns(this, &delta.rows, &other_batch, &this_idx, &other_idx)?;
            if let Some(filter) = &self.filter {
                let pairs = batch_with_rows(self.pair_schema.clone(), columns.clone(), pair_this.len())?;
                mask = Some(filter_mask(filter, &pairs)?);
            }
            if kind.emits_pairs() {
                let weights = Int64Array::from(pair_weight);
                let pairs = ChangeBatch::new(batch_with_rows(self.output_schema.clone(), columns, pair_this.len())?, weights);
                out.push(match &mask {
                    Some(mask) => pairs.filter(mask)?,
                    None => pairs,
                });
            }
        }
        let passes = |p: usize| mask.as_ref().is_none_or(|m| m.value(p));

        // This side preserved: emit delta rows according to their match count.
        let mut this_matches: Vec<i64> = Vec::new();
        if this_preserved {
            if has_filter {
                this_matches = vec![0; n];
                for p in 0..pair_this.len() {
                    if passes(p) {
                        let i = pair_this[p] as usize;
                        this_matches[i] = add(this_matches[i], other_mult[pair_other[p] as usize])?;
                    }
                }
            } else {
                let side = &self.sides[other];
                if !side.counts {
                    return Err(missing("key counts"));
                }
                this_matches = keys.iter().map(|k| k.as_ref().and_then(|k| side.rows.get(k)).map_or(0, |m| m.total())).collect();
            }
            let (idx, w): (Vec<u32>, Vec<i64>) =
                (0..n).filter(|&i| kind.emits_preserved(this_matches[i])).map(|i| (i as u32, weights[i])).unzip();
            if !idx.is_empty() {
                out.push(self.preserved_output(this, &delta.rows, idx, w)?);
            }
        }

        // Other side preserved: emit or retract other-side rows whose match status flips.
        if other_preserved {
            let (mut idx, mut w): (Vec<u32>, Vec<i64>) = (Vec::new(), Vec::new());
            if has_filter {
                let mut diff = vec![0i64; other_rows.len()];
                for p in 0..pair_this.len() {
                    if passes(p) {
                        let j = pair_other[p] as usize;
                        diff[j] = add(diff[j], weights[pair_this[p] as usize])?;
                    }
                }
                let matches = self.sides[other].matches.as_mut().ok_or_else(|| missing("match counts"))?;
                for (j, d) in diff.into_iter().enumerate() {
                    if d == 0 {
                        continue;
                    }
                    let key = needed[other_key[j]];
                    let row = &other_rows[j];
                    let old = matches.get(key).and_then(|m| m.get(row)).unwrap_or(0);
                    let new = matches.update(key, row, d, writes)?;
                    let (was, is) = (kind.emits_preserved(old), kind.emits_preserved(new));
                    if was != is {
                        idx.push(j as u32);
                        w.push(if is { other_mult[j] } else { -other_mult[j] });
                    }
                }
            } else {
                for (key, sign) in &flips {
                    if let Some(range) = ranges.get(key) {
                        for j in range.clone() {
                            idx.push(j as u32);
                            w.push(sign * other_mult[j]);
                        }
                    }
                }
            }
            if !idx.is_empty() {
                out.push(self.preserved_output(other, &other_batch, idx, w)?);
            }
        }

        // Apply the delta to this side's state.
        let store_rows = self.sides[this].store_rows;
        let encoded = if store_rows { self.row_codecs[this].encode(&delta.rows)? } else { Vec::new() };
        let side = &mut self.sides[this];
        for (i, key) in keys.iter().enumerate() {
            let Some(key) = key else { continue };
            let row: &[u8] = if store_rows { &encoded[i] } else { &[] };
            let mult = side.rows.update(key, row, weights[i], writes)?;
            if let Some(matches) = &mut side.matches {
                let target = if mult > 0 { this_matches[i] } else { 0 };
                let current = matches.get(key).and_then(|m| m.get(row)).unwrap_or(0);
                matches.update(key, row, target - current, writes)?;
            }
        }
        Ok(())
    }
}

impl Operator for Join {
    fn schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    fn step(&mut self, mut inputs: Vec<ChangeBatch>, writes: &mut TickWrites) -> Result<ChangeBatch> {
        if inputs.len() != 2 {
            return Err(DataflowError::Internal(format!("join expects 2 inputs, got {}", inputs.len())));
        }
        let right = inputs.pop().expect("two inputs").consolidate()?;
        let left = inputs.pop().expect("two inputs").consolidate()?;
        let mut out = Vec::new();
        self.process_delta(LEFT, &left, writes, &mut out)?;
        self.process_delta(RIGHT, &right, writes, &mut out)?;
        ChangeBatch::concat(&self.output_schema, &out)?.consolidate()
    }

    fn restore(&mut self, store: &Store) -> Result<()> {
        for side in &mut self.sides {
            side.restore(store)?;
        }
        Ok(())
    }
}

/// The type key values are encoded as: dictionaries and run-end encodings by their values,
/// so that equal values always produce equal bytes.
fn value_type(t: &DataType) -> DataType {
    match t {
        DataType::Dictionary(_, value) => value_type(value),
        DataType::RunEndEncoded(_, values) => value_type(values.data_type()),
        t => t.clone(),
    }
}

/// Evaluate the residual filter over candidate pairs; NULL counts as false.
fn filter_mask(filter: &Arc<dyn PhysicalExpr>, pairs: &RecordBatch) -> Result<BooleanArray> {
    let value = filter.evaluate(pairs)?.into_array(pairs.num_rows())?;
    let mask = value
        .as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| DataflowError::Internal(format!("join filter returned {}", value.data_type())))?;
    Ok(match mask.nulls() {
        Some(nulls) if nulls.null_count() > 0 => BooleanArray::new(mask.values() & nulls.inner(), None),
        _ => BooleanArray::new(mask.values().clone(), None),
    })
}

fn take_columns(batch: &RecordBatch, indices: &UInt32Array) -> Result<Vec<ArrayRef>> {
    Ok(batch.columns().iter().map(|c| take(c.as_ref(), indices, None)).collect::<std::result::Result<_, _>>()?)
}

fn batch_with_rows(schema: SchemaRef, columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new_with_options(schema, columns, &RecordBatchOptions::new().with_row_count(Some(rows)))?)
}

fn add(a: i64, b: i64) -> Result<i64> {
    a.checked_add(b).ok_or_else(|| DataflowError::Internal("join multiplicity overflow".into()))
}

fn mul(a: i64, b: i64) -> Result<i64> {
    a.checked_mul(b).ok_or_else(|| DataflowError::Internal("join multiplicity overflow".into()))
}

fn missing(what: &str) -> DataflowError {
    DataflowError::Internal(format!("join state is missing its {what}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use datafusion::logical_expr::Operator as BinOp;
    use datafusion::physical_expr::expressions::{BinaryExpr, Column};

    use super::*;
    use crate::dataflow::testing::{IntRow, Multiset, Rng, Tick, check_ticks, datafusion_answer, int_changes, multiset, random_delta};

    /// One test scenario: the tables `l` and `r` and how they are joined.
    struct Case {
        kind: JoinKind,
        left: SchemaRef,
        right: SchemaRef,
        /// Key column indices, pairwise.
        key_cols: Vec<(usize, usize)>,
        /// Residual filter `l.<left col> < r.<right col>`.
        filter: Option<(usize, usize)>,
    }

    fn schema(fields: &[(&str, DataType)]) -> SchemaRef {
        Arc::new(Schema::new(fields.iter().map(|(n, t)| Field::new(*n, t.clone(), true)).collect::<Vec<_>>()))
    }

    fn simple(kind: JoinKind, filter: bool) -> Case {
        Case {
            kind,
            left: schema(&[("k", DataType::Int64), ("v", DataType::Int64)]),
            right: schema(&[("k", DataType::Int64), ("w", DataType::Int64)]),
            key_cols: vec![(0, 0)],
            filter: filter.then_some((1, 1)),
        }
    }

    fn mixed(kind: JoinKind) -> Case {
        Case {
            kind,
            left: schema(&[("a", DataType::Int32), ("b", DataType::Int64), ("v", DataType::Int64)]),
            right: schema(&[("a", DataType::Int64), ("b", DataType::Int16), ("w", DataType::Int64)]),
            key_cols: vec![(0, 0), (1, 1)],
            filter: None,
        }
    }

    impl Case {
        fn output_schema(&self) -> SchemaRef {
            let fields: Vec<Field> = if self.kind.is_semi_or_anti() {
                self.left.fields().iter().map(|f| f.as_ref().clone()).collect()
            } else {
                let l = self.left.fields().iter().map(|f| f.as_ref().clone().with_name(format!("l_{}", f.name())));
                let r = self.right.fields().iter().map(|f| f.as_ref().clone().with_name(format!("r_{}", f.name())));
                l.chain(r).collect()
            };
            Arc::new(Schema::new(fields))
        }

        fn operator(&self) -> Join {
            let col = |s: &SchemaRef, i: usize| -> Arc<dyn PhysicalExpr> { Arc::new(Column::new(s.field(i).name(), i)) };
            let left_keys = self.key_cols.iter().map(|(l, _)| col(&self.left, *l)).collect();
            let right_keys = self.key_cols.iter().map(|(_, r)| col(&self.right, *r)).collect();
            let width = self.left.fields().len();
            let filter = self.filter.map(|(l, r)| -> Arc<dyn PhysicalExpr> {
                Arc::new(BinaryExpr::new(
                    Arc::new(Column::new(self.left.field(l).name(), l)),
                    BinOp::Lt,
                    Arc::new(Column::new(self.right.field(r).name(), width + r)),
                ))
            });
            Join::new(self.kind, self.left.clone(), self.right.clone(), left_keys, right_keys, filter, self.output_schema(), 7, 3).unwrap()
        }

        fn sql(&self) -> String {
            let mut on: Vec<String> = self
                .key_cols
                .iter()
                .map(|(l, r)| format!("l.{} = r.{}", self.left.field(*l).name(), self.right.field(*r).name()))
                .collect();
            if let Some((l, r)) = self.filter {
                on.push(format!("l.{} < r.{}", self.left.field(l).name(), self.right.field(r).name()));
            }
            if on.is_empty() {
                on.push("true".into());
            }
            let on = on.join(" AND ");
            match self.kind {
                JoinKind::Inner => format!("SELECT * FROM l INNER JOIN r ON {on}"),
                JoinKind::Left => format!("SELECT * FROM l LEFT JOIN r ON {on}"),
                JoinKind::Right => format!("SELECT * FROM l RIGHT JOIN r ON {on}"),
                JoinKind::Full => format!("SELECT * FROM l FULL JOIN r ON {on}"),
                JoinKind::LeftSemi => {
                    format!("SELECT * FROM l WHERE EXISTS (SELECT 1 FROM r WHERE {on})")
                }
                JoinKind::LeftAnti => {
                    format!("SELECT * FROM l WHERE NOT EXISTS (SELECT 1 FROM r WHERE {on})")
                }
            }
        }
    }

    /// Run `steps` random ticks through the operator and compare the accumulated output with
    /// DataFusion after each one (see [`check_ticks`] for `restore_every`).
    fn run(case: &Case, seed: u64, steps: usize, restore_every: Option<usize>) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut rng = Rng::new(seed);
        let (mut l, mut r) = (BTreeMap::new(), BTreeMap::new());
        // Small keys with some NULLs, so keys repeat and rows duplicate.
        let row = |width: usize| {
            move |rng: &mut Rng| -> IntRow {
                (0..width).map(|_| if rng.below(7) == 0 { None } else { Some(rng.below(4) as i64) }).collect()
            }
        };
        check_ticks(
            || case.operator(),
            steps,
            restore_every,
            || {
                let changes = rng.below(5);
                let dl = random_delta(&mut rng, &mut l, changes, row(case.left.fields().len()));
                let changes = rng.below(5);
                let dr = random_delta(&mut rng, &mut r, changes, row(case.right.fields().len()));
                let tables = [("l", case.left.clone(), &l), ("r", case.right.clone(), &r)];
                Tick {
                    inputs: vec![int_changes(&case.left, &dl), int_changes(&case.right, &dr)],
                    expected: datafusion_answer(&rt, &tables, &case.sql()),
                    context: format!("{:?}\nleft {l:?}\nright {r:?}\nsql {}", case.kind, case.sql()),
                }
            },
        );
    }

    const KINDS: [JoinKind; 6] = [JoinKind::Inner, JoinKind::Left, JoinKind::Right, JoinKind::Full, JoinKind::LeftSemi, JoinKind::LeftAnti];

    #[test]
    fn random_changes_match_datafusion() {
        for (i, kind) in KINDS.into_iter().enumerate() {
            for seed in 0..3 {
                run(&simple(kind, false), 100 * i as u64 + seed, 40, None);
            }
        }
    }

    #[test]
    fn residual_filter_matches_datafusion() {
        for (i, kind) in KINDS.into_iter().enumerate() {
            for seed in 0..3 {
                run(&simple(kind, true), 1000 + 100 * i as u64 + seed, 40, None);
            }
        }
    }

    #[test]
    fn two_column_key_of_mixed_int_widths() {
        for (i, kind) in KINDS.into_iter().enumerate() {
            run(&mixed(kind), 2000 + i as u64, 40, None);
        }
    }

    #[test]
    fn no_key_columns_is_a_cross_join() {
        for kind in [JoinKind::Inner, JoinKind::LeftSemi, JoinKind::LeftAnti] {
            let mut case = simple(kind, false);
            case.key_cols.clear();
            run(&case, 3000, 20, None);
        }
    }

    #[test]
    fn restore_from_store_continues_correctly() {
        for (i, kind) in KINDS.into_iter().enumerate() {
            run(&simple(kind, false), 4000 + i as u64, 25, Some(4));
            run(&simple(kind, true), 4100 + i as u64, 25, Some(5));
        }
        run(&mixed(JoinKind::Full), 4200, 25, Some(3));
    }

    #[test]
    fn weights_multiply() {
        let case = simple(JoinKind::Inner, false);
        let mut op = case.operator();
        let l: Multiset<IntRow> = BTreeMap::from([(vec![Some(1), Some(10)], 2)]);
        let r: Multiset<IntRow> = BTreeMap::from([(vec![Some(1), Some(20)], 3)]);
        let out = op.step(vec![int_changes(&case.left, &l), int_changes(&case.right, &r)], &mut TickWrites::default()).unwrap();
        let got = multiset(&out);
        assert_eq!(got, BTreeMap::from([(vec!["1".into(), "10".into(), "1".into(), "20".into()], 6)]));
    }

    #[test]
    fn null_keys_never_match_and_are_padded() {
        let case = simple(JoinKind::Full, false);
        let mut op = case.operator();
        let l: Multiset<IntRow> = BTreeMap::from([(vec![None, Some(1)], 1)]);
        let r: Multiset<IntRow> = BTreeMap::from([(vec![None, Some(2)], 1)]);
        let out = op.step(vec![int_changes(&case.left, &l), int_changes(&case.right, &r)], &mut TickWrites::default()).unwrap();
        let n = || "NULL".to_string();
        let want = BTreeMap::from([(vec![n(), "1".into(), n(), n()], 1), (vec![n(), n(), n(), "2".into()], 1)]);
        assert_eq!(multiset(&out), want);
    }
}
