//! TopK: the incremental "first k rows per partition" operator.
//!
//! Maintains `ROW_NUMBER() OVER (PARTITION BY p ORDER BY o) <= k` (with the row number as an
//! extra `UInt64` output column) and `DISTINCT ON (p) ... ORDER BY p, o` (k = 1, no row number
//! column). Ties in the ORDER BY are broken by the encoded full row bytes, ascending, so the
//! result is a function of the input multiset; a row with multiplicity m occupies m consecutive
//! ranks (its copies are ties of equal rows, so which copy gets which rank does not matter).
//!
//! State: one [`Arrangement`] (slot 0) keyed by the encoded partition key. Each input row is
//! stored under its partition as the entry `sort key ++ row ++ u32 BE length of the sort key`,
//! with its multiplicity:
//! - the sort key is the ORDER BY values in Arrow's row format with each column's sort options
//!   (descending, nulls first), so byte order is the ORDER BY order;
//! - the row is the full input row in Arrow's row format, which breaks ties;
//! - both encodings are prefix-free, so the entries sort by (sort key, row) and the trailing
//!   length (only needed to cut the row back out) never influences the order.
//!
//! The emitted top k of a partition is a function of its ordered multiset, so it is not stored a
//! second time: for every partition a tick touches, the operator reads the first k ranks before
//! and after applying the partition's changes and emits the difference (rows that left the top
//! k or changed rank are retracted, rows that entered it or got a new rank are inserted). A tick
//! costs O(changes × log partition size + touched partitions × k), never the size of the state.

use hashbrown::HashMap;
use hashbrown::hash_map::Entry;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};

use super::arrangement::{Arrangement, state_prefix};
use super::{ChangeBatch, DataflowError, Operator, Result, RowCodec};
use crate::storage::{Store, TickWrites};

/// Bytes of the sort-key length appended to every stored entry.
const LEN_SUFFIX: usize = 4;

pub struct TopK {
    output_schema: SchemaRef,
    keys: PartitionKeys,
    k: u64,
    emit_row_number: bool,
    /// Encodes and decodes full input rows.
    row_codec: RowCodec,
    /// Partition key -> entries (`sort key ++ row ++ sort key length`) -> multiplicity.
    rows: Arrangement,
}

/// A run of equal rows in a partition's top k: ranks `first..first + count` (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ranked {
    row: Vec<u8>,
    first: u64,
    count: u64,
}

/// Output changes collected over the partitions of one tick.
#[derive(Default)]
struct Output {
    rows: Vec<Vec<u8>>,
    ranks: Vec<u64>,
    weights: Vec<i64>,
}

impl TopK {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        input_schema: SchemaRef,
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        k: usize,
        emit_row_number: bool,
        output_schema: SchemaRef,
        dataflow: u32,
        node: u32,
    ) -> Result<TopK> {
        // Output = input columns (+ the row number).
        let expected: Vec<&DataType> = input_schema.fields().iter().map(|f| f.data_type()).collect();
        let actual: Vec<&DataType> = output_schema.fields().iter().map(|f| f.data_type()).collect();
        let width = expected.len() + usize::from(emit_row_number);
        let columns_match = actual.len() == width
            && expected.iter().zip(&actual).all(|(e, a)| e.equals_datatype(a))
            && (!emit_row_number || actual[width - 1] == &DataType::UInt64);
        if !columns_match {
            return Err(DataflowError::Internal(format!(
                "top-k output schema {output_schema:?} does not match its input {input_schema:?}{}",
                if emit_row_number { " plus a UInt64 row number" } else { "" }
            )));
        }

        let keys = PartitionKeys::new(partition_by, order_by, &input_schema)?;

        Ok(TopK {
            output_schema,
            keys,
            k: u64::try_from(k).unwrap_or(u64::MAX),
            emit_row_number,
            row_codec: RowCodec::new(input_schema)?,
            rows: Arrangement::new(state_prefix(dataflow, node, 0)),
        })
    }

    /// The first k ranks of a partition, as runs of equal rows.
    fn top(&self, partition: &[u8]) -> Result<Vec<Ranked>> {
        let mut out = Vec::new();
        let Some(entries) = self.rows.get(partition) else {
            return Ok(out);
        };
        let mut taken = 0u64;
        for (entry, mult) in entries {
            if taken >= self.k {
                break;
            }
            if mult <= 0 {
                return Err(DataflowError::Internal(format!("top-k state holds a row with multiplicity {mult}")));
            }
            let count = (mult as u64).min(self.k - taken);
            out.push(Ranked { row: row_of(entry)?.to_vec(), first: taken + 1, count });
            taken += count;
        }
        Ok(out)
    }

    /// Append the changes that turn the emitted top k `old` into `new`.
    fn diff(&self, old: &[Ranked], new: &[Ranked], out: &mut Output) {
        if old == new {
            return;
        }
        if self.emit_row_number {
            // One output row per (row, rank).
            let mut net: HashMap<(&[u8], u64), i64> = HashMap::new();
            let mut seen: Vec<(&[u8], u64)> = Vec::new();
            for (sign, runs) in [(-1i64, old), (1, new)] {
                for run in runs {
                    for rank in run.first..run.first + run.count {
                        match net.entry((run.row.as_slice(), rank)) {
                            Entry::Occupied(mut e) => *e.get_mut() += sign,
                            Entry::Vacant(e) => {
                                seen.push((run.row.as_slice(), rank));
                                e.insert(sign);
                            }
                        }
                    }
                }
            }
            for key in seen {
                let w = net.get(&key).copied().unwrap_or(0);
                if w != 0 {
                    out.rows.push(key.0.to_vec());
                    out.ranks.push(key.1);
                    out.weights.push(w);
                }
            }
        } else {
            // Output rows are the rows themselves: net their copies.
            let mut net: HashMap<&[u8], i64> = HashMap::new();
            let mut seen: Vec<&[u8]> = Vec::new();
            for (sign, runs) in [(-1i64, old), (1, new)] {
                for run in runs {
                    let d = sign * run.count as i64;
                    match net.entry(run.row.as_slice()) {
                        Entry::Occupied(mut e) => *e.get_mut() += d,
                        Entry::Vacant(e) => {
                            seen.push(run.row.as_slice());
                            e.insert(d);
                        }
                    }
                }
            }
            for row in seen {
                let w = net.get(row).copied().unwrap_or(0);
                if w != 0 {
                    out.rows.push(row.to_vec());
                    out.weights.push(w);
                }
            }
        }
    }

    /// Decode the collected output changes into a batch of the output schema.
    fn output(&self, out: Output) -> Result<ChangeBatch> {
        if out.rows.is_empty() {
            return Ok(ChangeBatch::empty(self.output_schema.clone()));
        }
        let n = out.rows.len();
        let decoded = self.row_codec.decode(out.rows.iter().map(Vec::as_slice))?;
        let mut columns: Vec<ArrayRef> = decoded.columns().to_vec();
        if self.emit_row_number {
            columns.push(Arc::new(UInt64Array::from(out.ranks)));
        }
        let columns = columns
            .into_iter()
            .zip(self.output_schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { Ok(cast(&c, f.data_type())?) })
            .collect::<Result<Vec<_>>>()?;
        let rows =
            RecordBatch::try_new_with_options(self.output_schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(n)))?;
        Ok(ChangeBatch::new(rows, out.weights.into()))
    }
}

impl Operator for TopK {
    fn schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    fn step(&mut self, inputs: Vec<ChangeBatch>, writes: &mut TickWrites) -> Result<ChangeBatch> {
        let [input] = <[ChangeBatch; 1]>::try_from(inputs)
            .map_err(|inputs| DataflowError::Internal(format!("top-k expects 1 input, got {}", inputs.len())))?;
        let delta = input.consolidate()?;
        if delta.is_empty() {
            return Ok(ChangeBatch::empty(self.output_schema.clone()));
        }
        if delta.weights.null_count() > 0 {
            return Err(DataflowError::Internal("NULL weight in top-k input".into()));
        }
        let weights = delta.weights.values();
        let partitions = self.keys.partitions(&delta.rows)?;
        let sort_keys = self.keys.sort_keys(&delta.rows)?;
        let rows = self.row_codec.encode(&delta.rows)?;

        let (order, members) = by_partition(&partitions);

        let mut out = Output::default();
        for partition in order {
            let old = self.top(partition)?;
            for &i in members.get(partition).into_iter().flatten() {
                let entry = make_entry(&sort_keys[i], &rows[i])?;
                self.rows.update(partition, &entry, weights[i], writes)?;
            }
            let new = self.top(partition)?;
            self.diff(&old, &new, &mut out);
        }
        self.output(out)
    }

    fn restore(&mut self, store: &Store) -> Result<()> {
        self.rows.restore(store)
    }
}

/// The PARTITION BY and ORDER BY of a partitioned operator (top-k, window), encoded per row.
pub(super) struct PartitionKeys {
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    order_by: Vec<PhysicalSortExpr>,
    /// Encodes partition keys; `None` without PARTITION BY (every row has the empty key).
    partition_codec: Option<RowCodec>,
    /// Encodes ORDER BY values with their sort options; `None` without ORDER BY.
    sort_converter: Option<RowConverter>,
}

impl PartitionKeys {
    pub(super) fn new(partition_by: Vec<Arc<dyn PhysicalExpr>>, order_by: Vec<PhysicalSortExpr>, input_schema: &Schema) -> Result<Self> {
        let partition_codec = if partition_by.is_empty() {
            None
        } else {
            let fields = partition_by
                .iter()
                .enumerate()
                .map(|(i, e)| Ok(Field::new(format!("p{i}"), e.data_type(input_schema)?, true)))
                .collect::<Result<Vec<_>>>()?;
            Some(RowCodec::new(Arc::new(Schema::new(fields)))?)
        };
        let sort_converter = if order_by.is_empty() {
            None
        } else {
            let fields = order_by
                .iter()
                .map(|s| Ok(SortField::new_with_options(s.expr.data_type(input_schema)?, s.options)))
                .collect::<Result<Vec<_>>>()?;
            Some(RowConverter::new(fields)?)
        };
        Ok(PartitionKeys { partition_by, order_by, partition_codec, sort_converter })
    }

    /// Encoded partition key of every row of `batch`.
    pub(super) fn partitions(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let n = batch.num_rows();
        let Some(codec) = &self.partition_codec else {
            return Ok(vec![Vec::new(); n]);
        };
        let columns = self.partition_by.iter().map(|e| Ok(e.evaluate(batch)?.into_array(n)?)).collect::<Result<Vec<ArrayRef>>>()?;
        codec.encode_columns(&columns)
    }

    /// Encoded (memcomparable, with sort options) ORDER BY key of every row of `batch`.
    pub(super) fn sort_keys(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let n = batch.num_rows();
        let Some(converter) = &self.sort_converter else {
            return Ok(vec![Vec::new(); n]);
        };
        let columns = self.order_by.iter().map(|s| Ok(s.expr.evaluate(batch)?.into_array(n)?)).collect::<Result<Vec<ArrayRef>>>()?;
        let rows = converter.convert_columns(&columns)?;
        Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
    }
}

/// Partition keys in order of first appearance, and the indexes of each one's rows.
pub(super) type ByPartition<'a> = (Vec<&'a [u8]>, HashMap<&'a [u8], Vec<usize>>);

/// Rows grouped by partition key.
pub(super) fn by_partition(partitions: &[Vec<u8>]) -> ByPartition<'_> {
    let mut order: Vec<&[u8]> = Vec::new();
    let mut members: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, p) in partitions.iter().enumerate() {
        match members.entry(p.as_slice()) {
            Entry::Occupied(mut e) => e.get_mut().push(i),
            Entry::Vacant(e) => {
                order.push(p.as_slice());
                e.insert(vec![i]);
            }
        }
    }
    (order, members)
}

/// The stored entry of a row: `sort key ++ row ++ u32 BE length of the sort key`.
pub(super) fn make_entry(sort_key: &[u8], row: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(sort_key.len()).map_err(|_| DataflowError::Internal("top-k sort key longer than 4 GiB".into()))?;
    let mut entry = Vec::with_capacity(sort_key.len() + row.len() + LEN_SUFFIX);
    entry.extend_from_slice(sort_key);
    entry.extend_from_slice(row);
    entry.extend_from_slice(&len.to_be_bytes());
    Ok(entry)
}

/// The encoded row of a stored entry.
pub(super) fn row_of(entry: &[u8]) -> Result<&[u8]> {
    let corrupt = || DataflowError::Internal(format!("corrupt top-k entry of {} bytes", entry.len()));
    let body_len = entry.len().checked_sub(LEN_SUFFIX).ok_or_else(corrupt)?;
    let (body, suffix) = entry.split_at(body_len);
    let key_len = u32::from_be_bytes(suffix.try_into().map_err(|_| corrupt())?) as usize;
    body.get(key_len..).ok_or_else(corrupt)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::compute::SortOptions;
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use datafusion::physical_expr::expressions::Column;

    use super::*;
    use crate::dataflow::testing::{IntRow, Rng, Tick, check_ticks, datafusion_answer, int_changes, multiset, random_delta};

    /// One ORDER BY column: index, descending, nulls first.
    type Order = (usize, bool, bool);

    /// One test scenario over the table `t(p, o, v)`.
    #[derive(Clone)]
    struct Case {
        /// Type of `o` (`p` and `v` are Int64).
        o_type: DataType,
        /// Values of `o` are drawn from `0..o_range` (plus NULLs).
        o_range: u64,
        partition: Vec<usize>,
        order: Vec<Order>,
        k: usize,
        emit_row_number: bool,
        /// `v` is a function of `(p, o)`, so rows tied on `o` within a partition are equal rows.
        derived_v: bool,
        /// Compare with DataFusion's `SELECT DISTINCT ON (p) *` instead of the window query.
        distinct_on: bool,
    }

    const P: usize = 0;
    const O: usize = 1;
    const V: usize = 2;

    fn case(order: Vec<Order>, k: usize) -> Case {
        Case {
            o_type: DataType::Int64,
            o_range: 6,
            partition: vec![P],
            order,
            k,
            emit_row_number: true,
            derived_v: false,
            distinct_on: false,
        }
    }

    impl Case {
        fn input_schema(&self) -> SchemaRef {
            Arc::new(Schema::new(vec![
                Field::new("p", DataType::Int64, true),
                Field::new("o", self.o_type.clone(), true),
                Field::new("v", DataType::Int64, true),
            ]))
        }

        fn output_schema(&self) -> SchemaRef {
            let mut fields: Vec<Field> = self.input_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            if self.emit_row_number {
                fields.push(Field::new("rn", DataType::UInt64, false));
            }
            Arc::new(Schema::new(fields))
        }

        fn operator(&self) -> TopK {
            let schema = self.input_schema();
            let col = |i: usize| -> Arc<dyn PhysicalExpr> { Arc::new(Column::new(schema.field(i).name(), i)) };
            let partition_by = self.partition.iter().map(|&i| col(i)).collect();
            let order_by = self
                .order
                .iter()
                .map(|&(i, descending, nulls_first)| PhysicalSortExpr::new(col(i), SortOptions { descending, nulls_first }))
                .collect();
            TopK::new(schema.clone(), partition_by, order_by, self.k, self.emit_row_number, self.output_schema(), 5, 2).unwrap()
        }

        fn order_sql(&self) -> String {
            let schema = self.input_schema();
            self.order
                .iter()
                .map(|&(i, desc, nulls_first)| {
                    format!(
                        "{} {} NULLS {}",
                        schema.field(i).name(),
                        if desc { "DESC" } else { "ASC" },
                        if nulls_first { "FIRST" } else { "LAST" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        }

        fn sql(&self) -> String {
            let schema = self.input_schema();
            let partition: Vec<&str> = self.partition.iter().map(|&i| schema.field(i).name().as_str()).collect();
            if self.distinct_on {
                assert_eq!(self.k, 1);
                return format!(
                    "SELECT DISTINCT ON ({}) * FROM t ORDER BY {}, {}",
                    partition.join(", "),
                    partition.join(", "),
                    self.order_sql()
                );
            }
            let partition = if partition.is_empty() { String::new() } else { format!("PARTITION BY {}", partition.join(", ")) };
            let window = format!("SELECT *, ROW_NUMBER() OVER ({partition} ORDER BY {}) AS rn FROM t", self.order_sql());
            let select = if self.emit_row_number { "*" } else { "p, o, v" };
            format!("SELECT {select} FROM ({window}) WHERE rn <= {}", self.k)
        }

        /// A row `(p, o, v)`.
        fn random_row(&self, rng: &mut Rng) -> IntRow {
            let p = (rng.below(6) != 0).then(|| rng.below(3) as i64);
            let o = (rng.below(6) != 0).then(|| rng.below(self.o_range) as i64);
            let v = if self.derived_v {
                Some(p.unwrap_or(9) * 1000 + o.unwrap_or(999))
            } else {
                (rng.below(6) != 0).then(|| rng.below(3) as i64)
            };
            vec![p, o, v]
        }
    }

    /// Run `steps` random ticks through the operator and compare the accumulated output with
    /// DataFusion after each one (see [`check_ticks`] for `restore_every`).
    fn run(case: &Case, seed: u64, steps: usize, restore_every: Option<usize>) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut rng = Rng::new(seed);
        let schema = case.input_schema();
        let mut contents = BTreeMap::new();
        check_ticks(
            || case.operator(),
            steps,
            restore_every,
            || {
                let changes = rng.below(6);
                let delta = random_delta(&mut rng, &mut contents, changes, |rng| case.random_row(rng));
                Tick {
                    inputs: vec![int_changes(&schema, &delta)],
                    expected: datafusion_answer(&rt, &[("t", schema.clone(), &contents)], &case.sql()),
                    context: format!("contents {contents:?}\nsql {}", case.sql()),
                }
            },
        );
    }

    /// Every combination of direction and NULL placement, for k = 1 and k = 3.
    fn order_variants() -> Vec<Vec<Order>> {
        let mut out = Vec::new();
        for desc in [false, true] {
            for nulls_first in [false, true] {
                // Order by o, then v (opposite direction) so that ties are equal rows.
                out.push(vec![(O, desc, nulls_first), (V, !desc, !nulls_first)]);
            }
        }
        out
    }

    #[test]
    fn row_number_matches_datafusion() {
        let mut seed = 0;
        for k in [1, 3] {
            for order in order_variants() {
                seed += 1;
                run(&case(order, k), seed, 40, None);
            }
        }
    }

    #[test]
    fn single_order_key_with_ties_of_equal_rows() {
        // ORDER BY o alone: rows tied on o within a partition are equal rows (v = f(p, o)),
        // so both sides agree whatever order they break ties in.
        let mut seed = 100;
        for k in [1, 3] {
            for desc in [false, true] {
                for nulls_first in [false, true] {
                    seed += 1;
                    let mut c = case(vec![(O, desc, nulls_first)], k);
                    c.derived_v = true;
                    run(&c, seed, 40, None);
                }
            }
        }
    }

    #[test]
    fn variable_length_sort_keys() {
        // Strings "0".."39": "1" is a prefix of "10", descending inverts bytes.
        let mut seed = 200;
        for desc in [false, true] {
            for nulls_first in [false, true] {
                seed += 1;
                let mut c = case(vec![(O, desc, nulls_first), (V, false, true)], 3);
                c.o_type = DataType::Utf8;
                c.o_range = 40;
                run(&c, seed, 40, None);
            }
        }
    }

    #[test]
    fn without_partition_and_with_two_partition_columns() {
        let mut c = case(vec![(O, false, false), (V, true, true)], 3);
        c.partition = vec![];
        run(&c, 300, 40, None);
        let mut c = case(vec![(O, true, false)], 2);
        c.partition = vec![P, V];
        run(&c, 301, 40, None);
    }

    #[test]
    fn distinct_on_matches_datafusion() {
        let mut seed = 400;
        for desc in [false, true] {
            for nulls_first in [false, true] {
                seed += 1;
                let mut c = case(vec![(O, desc, nulls_first)], 1);
                c.emit_row_number = false;
                c.derived_v = true;
                // Against the window query without its rn column...
                run(&c, seed, 40, None);
                // ...and against DataFusion's own DISTINCT ON.
                c.distinct_on = true;
                run(&c, seed + 10, 40, None);
            }
        }
        // k > 1 without row numbers: rows with ranks <= k.
        let mut c = case(vec![(O, false, true), (V, false, true)], 3);
        c.emit_row_number = false;
        run(&c, 420, 40, None);
    }

    #[test]
    fn restore_from_store_continues_correctly() {
        let mut seed = 500;
        for k in [1, 3] {
            for order in order_variants() {
                seed += 1;
                run(&case(order, k), seed, 25, Some(4));
            }
        }
        let mut c = case(vec![(O, true, true)], 1);
        c.emit_row_number = false;
        c.derived_v = true;
        run(&c, 550, 25, Some(3));
    }

    #[test]
    fn ties_break_by_row_bytes() {
        let c = case(vec![(O, false, false)], 1);
        let schema = c.input_schema();
        let mut op = c.operator();
        let mut w = TickWrites::default();
        let rows = BTreeMap::from([
            (vec![Some(1), Some(5), Some(30)], 1),
            (vec![Some(1), Some(5), Some(10)], 1),
            (vec![Some(1), Some(5), Some(20)], 1),
        ]);
        let out = op.step(vec![int_changes(&schema, &rows)], &mut w).unwrap();
        let s = |v: [&str; 4]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(multiset(&out), BTreeMap::from([(s(["1", "5", "10", "1"]), 1)]));
        let del = BTreeMap::from([(vec![Some(1), Some(5), Some(10)], -1)]);
        let out = op.step(vec![int_changes(&schema, &del)], &mut w).unwrap();
        assert_eq!(multiset(&out), BTreeMap::from([(s(["1", "5", "10", "1"]), -1), (s(["1", "5", "20", "1"]), 1)]));
    }

    #[test]
    fn multiplicity_occupies_ranks_and_changes_outside_top_k_emit_nothing() {
        let c = case(vec![(O, false, false)], 3);
        let schema = c.input_schema();
        let mut op = c.operator();
        let mut w = TickWrites::default();
        let ins = BTreeMap::from([(vec![Some(1), Some(1), Some(0)], 2), (vec![Some(1), Some(2), Some(0)], 5)]);
        let out = op.step(vec![int_changes(&schema, &ins)], &mut w).unwrap();
        let s = |v: [&str; 4]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            multiset(&out),
            BTreeMap::from([(s(["1", "1", "0", "1"]), 1), (s(["1", "1", "0", "2"]), 1), (s(["1", "2", "0", "3"]), 1),])
        );
        // Beyond the top 3, and in the same place: no output.
        let more = BTreeMap::from([(vec![Some(1), Some(3), Some(0)], 1), (vec![Some(1), Some(2), Some(0)], -2)]);
        let out = op.step(vec![int_changes(&schema, &more)], &mut w).unwrap();
        assert!(out.is_empty(), "{:?}", multiset(&out));
    }

    #[test]
    fn retracting_a_missing_row_is_an_error_not_a_panic() {
        let c = case(vec![(O, false, false)], 1);
        let schema = c.input_schema();
        let mut op = c.operator();
        let del = BTreeMap::from([(vec![Some(1), Some(1), Some(1)], -1)]);
        let err = op.step(vec![int_changes(&schema, &del)], &mut TickWrites::default());
        assert!(matches!(err, Err(DataflowError::Internal(_))));
        let err = op.step(vec![], &mut TickWrites::default());
        assert!(matches!(err, Err(DataflowError::Internal(_))));
    }

    #[test]
    fn k_zero_emits_nothing_and_bad_output_schema_is_rejected() {
        let c = case(vec![(O, false, false)], 0);
        let schema = c.input_schema();
        let mut op = c.operator();
        let ins = BTreeMap::from([(vec![Some(1), Some(1), Some(1)], 1)]);
        let out = op.step(vec![int_changes(&schema, &ins)], &mut TickWrites::default()).unwrap();
        assert!(out.is_empty());
        let bad = TopK::new(schema.clone(), vec![], vec![], 1, true, schema, 1, 1);
        assert!(bad.is_err());
    }
}
