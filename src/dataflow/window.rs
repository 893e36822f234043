//! Window: window functions (`... OVER (PARTITION BY p ORDER BY o [frame])`) maintained per
//! changed partition.
//!
//! Output = every input row plus one column per window function, as DataFusion's window
//! operator computes them: `row_number`, `rank`, `dense_rank`, `lag`, `lead`, `first_value`,
//! `last_value`, `nth_value`, `ntile`, running and framed aggregates (`sum(v) OVER (... ROWS
//! BETWEEN 10 PRECEDING AND CURRENT ROW)`), any window function DataFusion evaluates. All
//! functions of one operator share the same PARTITION BY and ORDER BY (the planner chains one
//! operator per distinct window specification).
//!
//! State: one [`Arrangement`] (slot 0) of the input, keyed by the encoded partition key, each
//! row stored as `sort key ++ row ++ u32 BE length of the sort key` (the layout of
//! [`super::topk`]), so a partition's entries come out in ORDER BY order with ties broken by
//! the row bytes: the result is a function of the input multiset even where the ORDER BY has
//! ties (Postgres leaves that order unspecified).
//!
//! A tick recomputes each partition it touches, from the arrangement, before and after
//! applying the partition's changes, and emits the difference (rows whose window values did
//! not change emit nothing). The work of a tick is bounded by the sizes of the partitions it
//! changes, not by the size of the input; a window without PARTITION BY is one partition, so
//! every change recomputes the whole input. This is the first version: a change near the end
//! of a large partition could be bounded by the frame instead.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::{cast, concat};
use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::window::WindowExpr;
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use hashbrown::HashMap;
use hashbrown::hash_map::Entry;

use super::arrangement::{Arrangement, state_prefix};
use super::topk::{PartitionKeys, by_partition, make_entry, row_of};
use super::{ChangeBatch, DataflowError, Operator, Result, RowCodec};
use crate::storage::{Store, TickWrites};

pub struct Window {
    output_schema: SchemaRef,
    keys: PartitionKeys,
    functions: Vec<Arc<dyn WindowExpr>>,
    /// Encodes and decodes input rows.
    row_codec: RowCodec,
    /// Encodes and decodes output rows (input row ++ window values).
    output_codec: RowCodec,
    /// Partition key -> entries (`sort key ++ row ++ sort key length`) -> multiplicity.
    rows: Arrangement,
}

impl Window {
    /// `functions` must all have `partition_by` and `order_by` as their window specification;
    /// the output is the input columns followed by one column per function.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        input_schema: SchemaRef,
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        functions: Vec<Arc<dyn WindowExpr>>,
        output_schema: SchemaRef,
        dataflow: u32,
        node: u32,
    ) -> Result<Window> {
        let width = input_schema.fields().len();
        let columns_match = output_schema.fields().len() == width + functions.len()
            && input_schema.fields().iter().zip(output_schema.fields()).all(|(i, o)| i.data_type().equals_datatype(o.data_type()));
        if !columns_match {
            return Err(DataflowError::Internal(format!(
                "window output schema {output_schema:?} is not its input {input_schema:?} plus {} window columns",
                functions.len()
            )));
        }
        let keys = PartitionKeys::new(partition_by, order_by, &input_schema)?;
        Ok(Window {
            keys,
            functions,
            row_codec: RowCodec::new(input_schema)?,
            output_codec: RowCodec::new(output_schema.clone())?,
            output_schema,
            rows: Arrangement::new(state_prefix(dataflow, node, 0)),
        })
    }

    /// Append the rows of `partition`, in window order, one copy per multiplicity.
    fn read_partition(&self, partition: &[u8], rows: &mut Vec<Vec<u8>>) -> Result<()> {
        let Some(entries) = self.rows.get(partition) else {
            return Ok(());
        };
        for (entry, mult) in entries.iter() {
            if mult <= 0 {
                return Err(DataflowError::Internal(format!("window state holds a row with multiplicity {mult}")));
            }
            let row = row_of(entry)?;
            for _ in 0..mult {
                rows.push(row.to_vec());
            }
        }
        Ok(())
    }

    /// Evaluate the window functions over partitions given as consecutive runs of `rows`
    /// (`ends[i]` is the end of partition `i`) and add each output row with `sign` to `net`.
    fn evaluate(&self, rows: &[Vec<u8>], ends: &[usize], sign: i64, net: &mut Net) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let batch = self.row_codec.decode(rows.iter().map(Vec::as_slice))?;
        let mut window_columns: Vec<Vec<ArrayRef>> = vec![Vec::new(); self.functions.len()];
        let mut start = 0;
        for &end in ends {
            if end > start {
                let slice = batch.slice(start, end - start);
                for (f, column) in self.functions.iter().zip(&mut window_columns) {
                    column.push(f.evaluate(&slice)?);
                }
            }
            start = end;
        }
        let width = batch.num_columns();
        let mut columns = batch.columns().to_vec();
        for (i, parts) in window_columns.iter().enumerate() {
            let column = concat(&parts.iter().map(|a| a.as_ref()).collect::<Vec<_>>())?;
            let field = self.output_schema.field(width + i);
            let column = if column.data_type() == field.data_type() { column } else { cast(&column, field.data_type())? };
            columns.push(column);
        }
        let output = RecordBatch::try_new_with_options(
            self.output_schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?;
        for row in self.output_codec.encode(&output)? {
            net.add(row, sign);
        }
        Ok(())
    }
}

/// Output rows netted over a tick, in order of first appearance.
#[derive(Default)]
struct Net {
    order: Vec<Vec<u8>>,
    weights: HashMap<Vec<u8>, i64>,
}

impl Net {
    fn add(&mut self, row: Vec<u8>, weight: i64) {
        match self.weights.entry(row) {
            Entry::Occupied(mut e) => *e.get_mut() += weight,
            Entry::Vacant(e) => {
                self.order.push(e.key().clone());
                e.insert(weight);
            }
        }
    }
}

impl Operator for Window {
    fn schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    fn step(&mut self, inputs: Vec<ChangeBatch>, writes: &mut TickWrites) -> Result<ChangeBatch> {
        let [input] = <[ChangeBatch; 1]>::try_from(inputs)
            .map_err(|inputs| DataflowError::Internal(format!("window expects 1 input, got {}", inputs.len())))?;
        let delta = input.consolidate()?;
        if delta.is_empty() {
            return Ok(ChangeBatch::empty(self.output_schema.clone()));
        }
        if delta.weights.null_count() > 0 {
            return Err(DataflowError::Internal("NULL weight in window input".into()));
        }
        let weights = delta.weights.values();
        let partitions = self.keys.partitions(&delta.rows)?;
        let sort_keys = self.keys.sort_keys(&delta.rows)?;
        let rows = self.row_codec.encode(&delta.rows)?;

        let (order, members) = by_partition(&partitions);

        // Every touched partition before and after its changes, as consecutive runs.
        let (mut old_rows, mut old_ends) = (Vec::new(), Vec::with_capacity(order.len()));
        let (mut new_rows, mut new_ends) = (Vec::new(), Vec::with_capacity(order.len()));
        for partition in order {
            self.read_partition(partition, &mut old_rows)?;
            old_ends.push(old_rows.len());
            for &i in members.get(partition).into_iter().flatten() {
                let entry = make_entry(&sort_keys[i], &rows[i])?;
                self.rows.update(partition, &entry, weights[i], writes)?;
            }
            self.read_partition(partition, &mut new_rows)?;
            new_ends.push(new_rows.len());
        }

        let mut net = Net::default();
        self.evaluate(&old_rows, &old_ends, -1, &mut net)?;
        self.evaluate(&new_rows, &new_ends, 1, &mut net)?;
        let changes: Vec<(&[u8], i64)> = net.order.iter().map(|r| (r.as_slice(), net.weights[r])).filter(|(_, w)| *w != 0).collect();
        if changes.is_empty() {
            return Ok(ChangeBatch::empty(self.output_schema.clone()));
        }
        self.output_codec.decode_changes(changes)
    }

    fn restore(&mut self, store: &Store) -> Result<()> {
        self.rows.restore(store)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::datasource::MemTable;
    use datafusion::execution::context::ExecutionProps;
    use datafusion::logical_expr::LogicalPlan;
    use datafusion::physical_expr::{create_physical_expr, create_physical_sort_expr};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::dataflow::testing::{IntRow, Rng, Tick, check_ticks, datafusion_answer, int_changes, random_delta};

    /// Window functions over `t(p, o, v)` (one query each: DataFusion may put functions of one
    /// specification into different Window nodes). `ORDER BY o, v` orders all but equal rows,
    /// so the operator and DataFusion agree row for row.
    const FUNCTIONS: &[&str] = &[
        "lag(v) OVER w AS prev, lead(v, 2, -1) OVER w AS next2",
        "rank() OVER w AS r, dense_rank() OVER w AS d, row_number() OVER w AS rn",
        "sum(v) OVER (w ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS s2",
        "first_value(v) OVER w AS f, last_value(v) OVER w AS l",
        "count(*) OVER w AS n, sum(v) OVER w AS s, min(v) OVER w AS mn, max(v) OVER w AS mx",
        "avg(v) OVER (w ROWS BETWEEN 2 PRECEDING AND 1 FOLLOWING) AS a",
    ];

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("p", DataType::Int64, true),
            Field::new("o", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
        ]))
    }

    fn sql(functions: &str, partition: bool) -> String {
        // Without PARTITION BY, p breaks the ties of (o, v) between different rows.
        let spec = if partition { "PARTITION BY p ORDER BY o, v" } else { "ORDER BY o, v, p" };
        format!("SELECT p, o, v, {functions} FROM t WINDOW w AS ({spec})")
    }

    /// The operator for [`sql`], built from the Window node DataFusion plans for it.
    fn operator(rt: &tokio::runtime::Runtime, sql: &str) -> Window {
        let ctx = SessionContext::new();
        let table = MemTable::try_new(schema(), vec![vec![]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let plan = rt.block_on(async { ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap() });
        let mut window = None;
        plan.apply(|node| {
            if let LogicalPlan::Window(w) = node {
                window = Some(w.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        let w = window.expect("a window node");
        assert_eq!(w.input.schema().fields().len(), 3, "one window node for {sql}");
        let input = w.input.schema();
        let props = ExecutionProps::new();
        let Expr::WindowFunction(first) = w.window_expr[0].clone().unalias_nested().data else { panic!("not a window function") };
        let partition_by =
            first.params.partition_by.iter().map(|e| create_physical_expr(e, input, &props, &Default::default()).unwrap()).collect();
        let order_by =
            first.params.order_by.iter().map(|e| create_physical_sort_expr(e, input, &props, &Default::default()).unwrap()).collect();
        let functions = w
            .window_expr
            .iter()
            .map(|e| datafusion::physical_planner::create_window_expr(e, input, &props, &Default::default()).unwrap())
            .collect();
        Window::new(Arc::new(input.as_arrow().clone()), partition_by, order_by, functions, Arc::new(w.schema.as_arrow().clone()), 3, 1)
            .unwrap()
    }

    use datafusion::logical_expr::Expr;

    fn run(functions: &str, partition: bool, seed: u64, steps: usize, restore_every: Option<usize>) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut rng = Rng::new(seed);
        let mut contents = BTreeMap::new();
        let sql = sql(functions, partition);
        check_ticks(
            || operator(&rt, &sql),
            steps,
            restore_every,
            || {
                let changes = rng.below(6);
                let delta = random_delta(&mut rng, &mut contents, changes, |rng| -> IntRow {
                    let mut value = |n: u64| (rng.below(6) != 0).then(|| rng.below(n) as i64);
                    vec![value(3), value(5), value(4)]
                });
                Tick {
                    inputs: vec![int_changes(&schema(), &delta)],
                    expected: datafusion_answer(&rt, &[("t", schema(), &contents)], &sql),
                    context: format!("contents {contents:?}\nsql {sql}"),
                }
            },
        );
    }

    #[test]
    fn partitioned_windows_match_datafusion() {
        for (i, functions) in FUNCTIONS.iter().enumerate() {
            for seed in 0..2 {
                run(functions, true, 10 * i as u64 + seed, 40, None);
            }
        }
    }

    #[test]
    fn one_partition_matches_datafusion() {
        for (i, functions) in FUNCTIONS.iter().enumerate() {
            run(functions, false, 100 + i as u64, 40, None);
        }
    }

    #[test]
    fn restore_from_store_continues_correctly() {
        for (i, functions) in FUNCTIONS.iter().enumerate() {
            run(functions, true, 200 + i as u64, 30, Some(4));
        }
    }

    #[test]
    fn bad_output_schema_is_rejected() {
        let bad = Window::new(schema(), vec![], vec![], vec![], Arc::new(Schema::empty()), 1, 1);
        assert!(bad.is_err());
    }
}
