//! Planner: DataFusion `LogicalPlan` -> incremental dataflow.
//!
//! DataFusion resolves names, types and subqueries and optimizes the plan; this module
//! maps each plan node onto an incremental operator. A construct that cannot be
//! maintained incrementally is rejected here, by name, never recomputed silently.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use datafusion::common::{DFSchema, JoinType, NullEquality};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan};
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr, create_physical_sort_expr};

use crate::catalog::Catalog;
use crate::dataflow::aggregate::{Aggregate, lower_aggregate};
use crate::dataflow::changelog::{ChangelogSpec, changelog_input_id, changelog_schema};
use crate::dataflow::constant::Constant;
use crate::dataflow::filter::Filter;
use crate::dataflow::graph::{Dataflow, Node, NodeInput};
use crate::dataflow::join::{Join, JoinKind};
use crate::dataflow::project::Project;
use crate::dataflow::temporal::TemporalFilter;
use crate::dataflow::topk::TopK;
use crate::dataflow::union::Union;
use crate::dataflow::unnest::Unnest;
use crate::dataflow::window::Window;
use crate::dataflow::{DataflowError, Operator};

pub mod analyzer;
pub mod changes;
pub mod temporal;

/// Errors raised while turning a query into a dataflow.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// SQLSTATE 0A000: the query uses something the engine cannot maintain incrementally.
    #[error("{0} is not supported in a materialized view")]
    Unsupported(String),
    #[error("materialized views can only read tables and materialized views; \"{0}\" is neither")]
    UnknownRelation(String),
    /// SQLSTATE 0A000 too: windows close by the watermark of every table they read.
    #[error(
        "EMIT ON WINDOW CLOSE needs a watermark on every table the view reads; \"{0}\" has none (CREATE TABLE ... WITH (watermark = 'time_column - INTERVAL ''5'' SECOND'))"
    )]
    NoWatermark(String),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Dataflow(#[from] DataflowError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

pub type Result<T, E = PlanError> = std::result::Result<T, E>;

/// What a scanned table is to the engine.
enum ResolvedScan {
    /// A table or materialized view: its id and full schema.
    Relation { id: u32, schema: SchemaRef },
    /// `changes(relation)`: the relation's changes as rows, paired by `key`.
    Changes { relation: u32, key: Vec<usize>, relation_schema: SchemaRef },
}

/// A scanned table as the catalog knows it: a relation, or `changes(relation)`.
fn resolve(catalog: &Catalog, scan: &datafusion::logical_expr::TableScan) -> Option<(ResolvedScan, String)> {
    let provider = datafusion::datasource::source_as_provider(&scan.source).ok()?;
    let provider: &dyn std::any::Any = provider.as_ref();
    if let Some(changes) = provider.downcast_ref::<changes::ChangesTable>() {
        let r = catalog.by_id(changes.relation)?;
        let scan = ResolvedScan::Changes { relation: r.id, key: changes.key.clone(), relation_schema: changes.relation_schema.clone() };
        return Some((scan, r.name.clone()));
    }
    if scan.table_name.schema().is_some_and(|s| s != "public") {
        return None;
    }
    let r = catalog.get(scan.table_name.table())?;
    if !r.kind.stores_rows() {
        // A plain view is inlined by DataFusion's analyzer before a plan gets here.
        return None;
    }
    Some((ResolvedScan::Relation { id: r.id, schema: r.schema.clone() }, r.name.clone()))
}

/// Build the dataflow that maintains `plan` (an optimized DataFusion plan) over the
/// relations of `catalog`; also returns the names of the relations it reads.
pub fn plan_dataflow(plan: &LogicalPlan, dataflow_id: u32, catalog: &Catalog) -> Result<(Dataflow, Vec<String>)> {
    plan_dataflow_with(plan, dataflow_id, catalog, false)
}

/// [`plan_dataflow`], with `EMIT ON WINDOW CLOSE` for the outermost aggregate if
/// `emit_on_window_close` (see [`temporal::window_close`]).
pub fn plan_dataflow_with(
    plan: &LogicalPlan,
    dataflow_id: u32,
    catalog: &Catalog,
    emit_on_window_close: bool,
) -> Result<(Dataflow, Vec<String>)> {
    let mut builder = Builder {
        emit_on_window_close,
        dataflow_id,
        nodes: Vec::new(),
        relation_schemas: HashMap::new(),
        changelogs: Vec::new(),
        catalog,
        reads: Vec::new(),
        props: ExecutionProps::new(),
    };
    let output = builder.plan(plan)?;
    if builder.emit_on_window_close {
        return Err(PlanError::Unsupported("EMIT ON WINDOW CLOSE without a GROUP BY".into()));
    }
    let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    let mut reads = builder.reads;
    reads.sort();
    reads.dedup();
    let dataflow = Dataflow {
        id: dataflow_id,
        nodes: builder.nodes,
        output,
        relation_schemas: builder.relation_schemas,
        changelogs: builder.changelogs,
        schema,
        timed: false,
    };
    Ok((dataflow, reads))
}

struct Builder<'a> {
    /// `EMIT ON WINDOW CLOSE`, until the outermost aggregate takes it.
    emit_on_window_close: bool,
    dataflow_id: u32,
    nodes: Vec<Node>,
    relation_schemas: HashMap<u32, SchemaRef>,
    changelogs: Vec<ChangelogSpec>,
    catalog: &'a Catalog,
    /// Names of the relations scanned so far.
    reads: Vec<String>,
    props: ExecutionProps,
}

impl Builder<'_> {
    fn add(&mut self, operator: impl Operator + 'static, inputs: Vec<NodeInput>) -> NodeInput {
        self.nodes.push(Node { operator: Box::new(operator), inputs });
        NodeInput::Node(self.nodes.len() - 1)
    }

    fn next_node_id(&self) -> u32 {
        self.nodes.len() as u32
    }

    fn physical(&self, expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        reject_unsupported_expr(expr)?;
        Ok(create_physical_expr(expr, schema, &self.props, &Default::default())?)
    }

    fn plan(&mut self, plan: &LogicalPlan) -> Result<NodeInput> {
        let out_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        match plan {
            LogicalPlan::TableScan(scan) => {
                if scan.fetch.is_some() {
                    return Err(PlanError::Unsupported("LIMIT".into()));
                }
                let (resolved, name) =
                    resolve(self.catalog, scan).ok_or_else(|| PlanError::UnknownRelation(scan.table_name.to_string()))?;
                self.reads.push(name);
                let (id, schema) = match resolved {
                    ResolvedScan::Relation { id, schema } => (id, schema),
                    ResolvedScan::Changes { relation, key, relation_schema } => {
                        let input = changelog_input_id(relation, &key);
                        let schema = changelog_schema(&relation_schema);
                        if !self.changelogs.iter().any(|c| c.input == input) {
                            self.changelogs.push(ChangelogSpec { input, relation, key, relation_schema });
                        }
                        (input, schema)
                    }
                };
                self.relation_schemas.insert(id, schema.clone());
                let mut node = NodeInput::Relation(id);
                if !scan.filters.is_empty() {
                    let full = DFSchema::try_from_qualified_schema(scan.table_name.clone(), &schema)?;
                    let predicate = scan.filters.iter().cloned().reduce(Expr::and).expect("non-empty filters");
                    let predicate = self.physical(&predicate, &full)?;
                    node = self.add(Filter::new(schema.clone(), predicate), vec![node]);
                }
                if let Some(projection) = &scan.projection {
                    let exprs: Vec<Arc<dyn PhysicalExpr>> = projection
                        .iter()
                        .map(|&i| {
                            Arc::new(datafusion::physical_expr::expressions::Column::new(schema.field(i).name(), i))
                                as Arc<dyn PhysicalExpr>
                        })
                        .collect();
                    node = self.add(Project::new(out_schema, exprs), vec![node]);
                }
                Ok(node)
            }
            LogicalPlan::Projection(p) => {
                let input = self.plan(&p.input)?;
                let exprs = p.expr.iter().map(|e| self.physical(e, p.input.schema())).collect::<Result<Vec<_>>>()?;
                Ok(self.add(Project::new(out_schema, exprs), vec![input]))
            }
            LogicalPlan::Filter(f) => {
                if let Some(node) = self.plan_top_k(f)? {
                    return Ok(node);
                }
                let mut node = self.plan(&f.input)?;
                let (rest, windows) = temporal::extract_time_windows(&f.predicate);
                if let Some(predicate) = rest {
                    let predicate = self.physical(&predicate, f.input.schema())?;
                    node = self.add(Filter::new(out_schema.clone(), predicate), vec![node]);
                }
                for window in windows {
                    let time = self.physical(&window.time, f.input.schema())?;
                    let op = TemporalFilter::new(out_schema.clone(), time, window.window_micros, self.dataflow_id, self.next_node_id())?;
                    node = self.add(op, vec![node]);
                }
                Ok(node)
            }
            LogicalPlan::SubqueryAlias(a) => self.plan(&a.input),
            LogicalPlan::Sort(s) => match s.fetch {
                Some(fetch) => self.plan_global_top_k(s, 0, fetch),
                // A view is a set; its order is chosen by the query that reads it.
                None => self.plan(&s.input),
            },
            LogicalPlan::Limit(l) => {
                use datafusion::logical_expr::{FetchType, SkipType};
                let (SkipType::Literal(skip), FetchType::Literal(Some(fetch))) = (l.get_skip_type()?, l.get_fetch_type()?) else {
                    return Err(PlanError::Unsupported("OFFSET without LIMIT, or a LIMIT that is not a constant".into()));
                };
                match l.input.as_ref() {
                    LogicalPlan::Sort(s) => {
                        let fetch = s.fetch.map_or(fetch, |f| f.min(skip.saturating_add(fetch)).saturating_sub(skip));
                        self.plan_global_top_k(s, skip, fetch)
                    }
                    _ => Err(PlanError::Unsupported("LIMIT/OFFSET without ORDER BY".into())),
                }
            }
            LogicalPlan::Union(u) => {
                let inputs = u.inputs.iter().map(|i| self.plan(i)).collect::<Result<Vec<_>>>()?;
                Ok(self.add(Union::new(out_schema), inputs))
            }
            LogicalPlan::Join(j) => self.plan_join(j, out_schema),
            LogicalPlan::Aggregate(a) if matches!(a.group_expr.as_slice(), [Expr::GroupingSet(_)]) => {
                self.plan_grouping_sets(a, out_schema)
            }
            LogicalPlan::Aggregate(a) => {
                let close = std::mem::take(&mut self.emit_on_window_close);
                let input = self.plan(&a.input)?;
                let (groups, aggs) = lower_aggregate(a, &self.props)?;
                let input_schema: SchemaRef = Arc::new(a.input.schema().as_arrow().clone());
                let node = self.next_node_id();
                let mut op = Aggregate::new(input_schema, groups, aggs, out_schema, self.dataflow_id, node)?;
                if close {
                    let (end_column, relations) = temporal::window_close(a, self.catalog)?;
                    op = op.emit_on_window_close(end_column, relations)?;
                }
                Ok(self.add(op, vec![input]))
            }
            LogicalPlan::Distinct(Distinct::All(input)) => {
                let node_input = self.plan(input)?;
                let input_schema: SchemaRef = Arc::new(input.schema().as_arrow().clone());
                let groups = (0..input_schema.fields().len())
                    .map(|i| {
                        Arc::new(datafusion::physical_expr::expressions::Column::new(input_schema.field(i).name(), i))
                            as Arc<dyn PhysicalExpr>
                    })
                    .collect();
                let node = self.next_node_id();
                let op = Aggregate::new(input_schema, groups, vec![], out_schema, self.dataflow_id, node)?;
                Ok(self.add(op, vec![node_input]))
            }
            LogicalPlan::Distinct(Distinct::On(_)) => Err(PlanError::Unsupported("DISTINCT ON".into())),
            LogicalPlan::Values(v) => {
                let empty = DFSchema::empty();
                let one_row = RecordBatch::try_new_with_options(
                    Arc::new(arrow::datatypes::Schema::empty()),
                    vec![],
                    &RecordBatchOptions::new().with_row_count(Some(1)),
                )?;
                let mut columns: Vec<Vec<arrow::array::ArrayRef>> = vec![Vec::new(); out_schema.fields().len()];
                for row in &v.values {
                    for (c, e) in row.iter().enumerate() {
                        let value = self.physical(e, &empty)?.evaluate(&one_row)?.into_array(1)?;
                        let value = arrow::compute::cast(&value, out_schema.field(c).data_type())?;
                        columns[c].push(value);
                    }
                }
                let columns = columns
                    .iter()
                    .map(|parts| arrow::compute::concat(&parts.iter().map(|a| a.as_ref()).collect::<Vec<_>>()))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let rows = RecordBatch::try_new(out_schema, columns)?;
                let node = self.next_node_id();
                Ok(self.add(Constant::new(rows, self.dataflow_id, node), vec![]))
            }
            LogicalPlan::EmptyRelation(e) => {
                // No rows (`WHERE false`), or one row of NULLs (one row of no columns, as in `SELECT 1`).
                let n = usize::from(e.produce_one_row);
                let columns = out_schema.fields().iter().map(|f| arrow::array::new_null_array(f.data_type(), n)).collect();
                let rows =
                    RecordBatch::try_new_with_options(out_schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(n)))?;
                let node = self.next_node_id();
                Ok(self.add(Constant::new(rows, self.dataflow_id, node), vec![]))
            }
            LogicalPlan::Window(w) => self.plan_window(w, out_schema),
            LogicalPlan::RecursiveQuery(_) => Err(PlanError::Unsupported("WITH RECURSIVE".into())),
            LogicalPlan::Unnest(u) => {
                let input = self.plan(&u.input)?;
                let list_columns = u
                    .list_type_columns
                    .iter()
                    .map(|(index, list)| datafusion::physical_plan::unnest::ListUnnest { index_in_input_schema: *index, depth: list.depth })
                    .collect();
                let input_schema: SchemaRef = Arc::new(u.input.schema().as_arrow().clone());
                let op = Unnest::new(input_schema, list_columns, u.struct_type_columns.clone(), u.options.clone(), out_schema)?;
                Ok(self.add(op, vec![input]))
            }
            other => Err(PlanError::Unsupported(format!("the plan node {}", other.display()))),
        }
    }

    /// `ROW_NUMBER() OVER (PARTITION BY .. ORDER BY ..)` bounded by `rn <= k` (or `< k`,
    /// `= 1`) in a filter above it, possibly through a column-only projection: TopK, then
    /// the projection and the full filter.
    fn plan_top_k(&mut self, f: &datafusion::logical_expr::Filter) -> Result<Option<NodeInput>> {
        use datafusion::logical_expr::{BinaryExpr, Operator as Op};
        let (projection, window) = match f.input.as_ref() {
            LogicalPlan::Window(w) => (None, w),
            LogicalPlan::Projection(p) if p.expr.iter().all(|e| matches!(e.clone().unalias(), Expr::Column(_))) => match p.input.as_ref() {
                LogicalPlan::Window(w) => (Some(p), w),
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        if window.window_expr.len() != 1 {
            return Ok(None);
        }
        let Expr::WindowFunction(wf) = window.window_expr[0].clone().unalias() else { return Ok(None) };
        if wf.fun.name() != "row_number" {
            return Ok(None);
        }
        let window_schema = window.schema.as_arrow();
        let rn = window_schema.field(window_schema.fields().len() - 1).name().clone();
        let is_rn = |e: &Expr| matches!(e, Expr::Column(c) if c.name == rn);
        let literal = |e: &Expr| match e {
            Expr::Literal(v, _) => v.cast_to(&arrow::datatypes::DataType::Int64).ok().and_then(|v| match v {
                datafusion::common::ScalarValue::Int64(Some(x)) => Some(x),
                _ => None,
            }),
            _ => None,
        };
        let mut k: Option<i64> = None;
        for conjunct in datafusion::logical_expr::utils::split_conjunction(&f.predicate) {
            let Expr::BinaryExpr(BinaryExpr { left, op, right }) = conjunct else { continue };
            let bound = match (is_rn(left), literal(right), is_rn(right), literal(left)) {
                (true, Some(c), _, _) => match op {
                    Op::LtEq => Some(c),
                    Op::Lt => Some(c - 1),
                    Op::Eq if c == 1 => Some(1),
                    _ => None,
                },
                (_, _, true, Some(c)) => match op {
                    Op::GtEq => Some(c),
                    Op::Gt => Some(c - 1),
                    Op::Eq if c == 1 => Some(1),
                    _ => None,
                },
                _ => None,
            };
            if let Some(b) = bound {
                k = Some(k.map_or(b, |k| k.min(b)));
            }
        }
        let Some(k) = k else { return Ok(None) };
        let input = self.plan(&window.input)?;
        let input_schema: SchemaRef = Arc::new(window.input.schema().as_arrow().clone());
        let partition_by = wf.params.partition_by.iter().map(|e| self.physical(e, window.input.schema())).collect::<Result<Vec<_>>>()?;
        let order_by = wf
            .params
            .order_by
            .iter()
            .map(|e| create_physical_sort_expr(e, window.input.schema(), &self.props, &Default::default()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let node = self.next_node_id();
        let top = TopK::new(
            input_schema,
            partition_by,
            order_by,
            k.max(0) as usize,
            true,
            Arc::new(window_schema.clone()),
            self.dataflow_id,
            node,
        )?;
        let mut out = self.add(top, vec![input]);
        if let Some(p) = projection {
            let exprs = p.expr.iter().map(|e| self.physical(e, window.schema.as_ref())).collect::<Result<Vec<_>>>()?;
            out = self.add(Project::new(Arc::new(p.schema.as_arrow().clone()), exprs), vec![out]);
        }
        let predicate = self.physical(&f.predicate, f.input.schema())?;
        Ok(Some(self.add(Filter::new(Arc::new(f.input.schema().as_arrow().clone()), predicate), vec![out])))
    }

    /// `ORDER BY ... LIMIT fetch OFFSET skip` over the whole view: the top `skip + fetch` rows
    /// of one partition (TopK with an empty key), numbered, then those past `skip`, without
    /// the number.
    fn plan_global_top_k(&mut self, sort: &datafusion::logical_expr::Sort, skip: usize, fetch: usize) -> Result<NodeInput> {
        use arrow::datatypes::{DataType, Field, Schema};
        use datafusion::logical_expr::Operator;
        use datafusion::physical_expr::expressions::{Column, binary, lit};
        let input = self.plan(&sort.input)?;
        let input_schema: SchemaRef = Arc::new(sort.input.schema().as_arrow().clone());
        let order_by = sort
            .expr
            .iter()
            .map(|e| create_physical_sort_expr(e, sort.input.schema(), &self.props, &Default::default()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut fields: Vec<Field> = input_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let width = fields.len();
        fields.push(Field::new("velocity_row_number", DataType::UInt64, false));
        let numbered: SchemaRef = Arc::new(Schema::new(fields));
        let node = self.next_node_id();
        let k = skip.saturating_add(fetch);
        let top = TopK::new(input_schema.clone(), vec![], order_by, k, true, numbered.clone(), self.dataflow_id, node)?;
        let mut out = self.add(top, vec![input]);
        if skip > 0 {
            let rn: Arc<dyn PhysicalExpr> = Arc::new(Column::new("velocity_row_number", width));
            let past = binary(rn, Operator::Gt, lit(datafusion::common::ScalarValue::UInt64(Some(skip as u64))), &numbered)?;
            out = self.add(Filter::new(numbered.clone(), past), vec![out]);
        }
        let columns = (0..width).map(|i| Arc::new(Column::new(input_schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>).collect();
        Ok(self.add(Project::new(input_schema, columns), vec![out]))
    }

    /// Window functions: one [`Window`] operator per distinct `(PARTITION BY, ORDER BY)`,
    /// chained (each appends its functions' columns), then the columns put back in the
    /// order of the plan when there is more than one.
    fn plan_window(&mut self, w: &datafusion::logical_expr::Window, out_schema: SchemaRef) -> Result<NodeInput> {
        use arrow::datatypes::Schema;
        use datafusion::logical_expr::SortExpr;
        use datafusion::physical_expr::expressions::Column;
        let mut node = self.plan(&w.input)?;
        let input = w.input.schema();
        let width = input.fields().len();
        let mut specs: Vec<(Vec<Expr>, Vec<SortExpr>, Vec<usize>)> = Vec::new();
        for (i, e) in w.window_expr.iter().enumerate() {
            let Expr::WindowFunction(wf) = e.clone().unalias_nested().data else {
                return Err(PlanError::Unsupported(format!("the window expression {e}")));
            };
            reject_unsupported_expr(e)?;
            match specs.iter_mut().find(|(p, o, _)| *p == wf.params.partition_by && *o == wf.params.order_by) {
                Some((_, _, members)) => members.push(i),
                None => specs.push((wf.params.partition_by.clone(), wf.params.order_by.clone(), vec![i])),
            }
        }
        let mut schema: SchemaRef = Arc::new(input.as_arrow().clone());
        let mut position = vec![0; w.window_expr.len()];
        for (partition_by, order_by, members) in &specs {
            let functions = members
                .iter()
                .map(|&i| datafusion::physical_planner::create_window_expr(&w.window_expr[i], input, &self.props, &Default::default()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let partition_by = partition_by.iter().map(|e| self.physical(e, input)).collect::<Result<Vec<_>>>()?;
            let order_by = order_by
                .iter()
                .map(|e| create_physical_sort_expr(e, input, &self.props, &Default::default()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
            for &i in members {
                position[i] = fields.len();
                fields.push(out_schema.fields()[width + i].clone());
            }
            let next: SchemaRef = Arc::new(Schema::new(fields));
            let op = Window::new(schema, partition_by, order_by, functions, next.clone(), self.dataflow_id, self.next_node_id())?;
            node = self.add(op, vec![node]);
            schema = next;
        }
        if specs.len() > 1 {
            let columns =
                (0..width).chain(position).map(|i| Arc::new(Column::new(schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>).collect();
            node = self.add(Project::new(out_schema, columns), vec![node]);
        }
        Ok(node)
    }

    /// `GROUPING SETS`, `ROLLUP`, `CUBE` (DataFusion enumerates the last two into grouping
    /// sets): one incremental aggregate per set over the same input, each projected onto the
    /// plan's columns (the grouping columns outside the set NULL, then `__grouping_id`: a 1
    /// bit per NULLed column, the last column lowest, above them the ordinal of a repeated
    /// set, as DataFusion numbers them), then their union.
    fn plan_grouping_sets(&mut self, a: &datafusion::logical_expr::Aggregate, out_schema: SchemaRef) -> Result<NodeInput> {
        use datafusion::common::ScalarValue;
        use datafusion::logical_expr::{GroupingSet, lit};
        let [Expr::GroupingSet(grouping)] = a.group_expr.as_slice() else {
            return Err(DataflowError::Internal("grouping sets beside other GROUP BY expressions".into()).into());
        };
        let sets: Vec<Vec<Expr>> = match grouping {
            GroupingSet::GroupingSets(sets) => sets.clone(),
            GroupingSet::Rollup(exprs) => (0..=exprs.len()).map(|i| exprs[..i].to_vec()).collect(),
            GroupingSet::Cube(exprs) => {
                if exprs.len() > 12 {
                    return Err(PlanError::Unsupported(format!("CUBE of {} expressions", exprs.len())));
                }
                (0..1u32 << exprs.len())
                    .map(|mask| exprs.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, e)| e.clone()).collect())
                    .collect()
            }
        };
        let distinct: Vec<Expr> = datafusion::logical_expr::utils::grouping_set_to_exprlist(&a.group_expr)?.into_iter().cloned().collect();
        let n = distinct.len();
        let id_type = out_schema.field(n).data_type().clone();
        let input = self.plan(&a.input)?;
        let input_schema: SchemaRef = Arc::new(a.input.schema().as_arrow().clone());
        let mut ordinals: HashMap<Vec<bool>, u64> = HashMap::new();
        let mut branches = Vec::with_capacity(sets.len());
        for set in &sets {
            let nulls: Vec<bool> = distinct.iter().map(|e| !set.contains(e)).collect();
            let ordinal = ordinals.entry(nulls.clone()).or_insert(0);
            let id = nulls.iter().fold(0u64, |acc, &null| (acc << 1) | u64::from(null)) | (*ordinal << n);
            *ordinal += 1;
            let per_set = datafusion::logical_expr::Aggregate::try_new(a.input.clone(), set.clone(), a.aggr_expr.clone())?;
            let set_schema = per_set.schema.clone();
            let (groups, aggs) = lower_aggregate(&per_set, &self.props)?;
            let node = self.next_node_id();
            let op = Aggregate::new(input_schema.clone(), groups, aggs, Arc::new(set_schema.as_arrow().clone()), self.dataflow_id, node)?;
            let aggregated = self.add(op, vec![input]);
            let columns = set_schema.columns();
            let mut exprs = Vec::with_capacity(out_schema.fields().len());
            for (i, e) in distinct.iter().enumerate() {
                let expr = match set.iter().position(|s| s == e) {
                    Some(p) => Expr::Column(columns[p].clone()),
                    None => lit(ScalarValue::try_from(out_schema.field(i).data_type())?),
                };
                exprs.push(expr);
            }
            exprs.push(lit(ScalarValue::UInt64(Some(id)).cast_to(&id_type)?));
            exprs.extend(columns[set.len()..].iter().cloned().map(Expr::Column));
            let exprs = exprs.iter().map(|e| self.physical(e, &set_schema)).collect::<Result<Vec<_>>>()?;
            branches.push(self.add(Project::new(out_schema.clone(), exprs), vec![aggregated]));
        }
        Ok(self.add(Union::new(out_schema), branches))
    }

    /// `x NOT IN (SELECT y ...)` (DataFusion's null-aware anti join) with Postgres' NULL
    /// semantics: a row is kept when the subquery is empty, or when `x` is not NULL, no `y`
    /// equals it and no `y` is NULL. The anti join on `x = y` keeps the rows without an equal
    /// `y` (a NULL `x` equals nothing); a global count over the subquery gives two flags (empty,
    /// holds a NULL), joined to every kept row and filtered on. The flags change only when the
    /// subquery becomes (non-)empty or gains or loses its last NULL; only then do all kept rows
    /// change.
    fn plan_not_in(&mut self, j: &datafusion::logical_expr::Join) -> Result<NodeInput> {
        use arrow::datatypes::{DataType, Field, Schema};
        use datafusion::common::ScalarValue;
        use datafusion::functions_aggregate::expr_fn::count;
        use datafusion::logical_expr::{col, lit};
        use datafusion::physical_expr::expressions::Column;
        let ([(left_key, right_key)], None) = (j.on.as_slice(), &j.filter) else {
            return Err(PlanError::Unsupported("NOT IN (subquery) over several columns or with a correlated condition".into()));
        };
        let left = self.plan(&j.left)?;
        let right = self.plan(&j.right)?;
        let left_schema: SchemaRef = Arc::new(j.left.schema().as_arrow().clone());
        let right_schema: SchemaRef = Arc::new(j.right.schema().as_arrow().clone());
        let lk = self.physical(left_key, j.left.schema())?;
        let rk = self.physical(right_key, j.right.schema())?;
        let node = self.next_node_id();
        let anti = Join::new(
            JoinKind::LeftAnti,
            left_schema.clone(),
            right_schema.clone(),
            vec![lk],
            vec![rk],
            None,
            left_schema.clone(),
            self.dataflow_id,
            node,
        )?;
        let anti = self.add(anti, vec![left, right]);

        let counts = datafusion::logical_expr::Aggregate::try_new(
            j.right.clone(),
            vec![],
            vec![count(lit(1i64)).alias("velocity_rows"), count(right_key.clone()).alias("velocity_non_null")],
        )?;
        let (groups, aggs) = lower_aggregate(&counts, &self.props)?;
        let node = self.next_node_id();
        let op = Aggregate::new(right_schema, groups, aggs, Arc::new(counts.schema.as_arrow().clone()), self.dataflow_id, node)?;
        let counts_node = self.add(op, vec![right]);
        let flags_schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("velocity_subquery_empty", DataType::Boolean, true),
            Field::new("velocity_subquery_has_null", DataType::Boolean, true),
        ]));
        let flags = [col("velocity_rows").eq(lit(ScalarValue::Int64(Some(0)))), col("velocity_rows").gt(col("velocity_non_null"))];
        let flags = flags.iter().map(|e| self.physical(e, &counts.schema)).collect::<Result<Vec<_>>>()?;
        let flags = self.add(Project::new(flags_schema.clone(), flags), vec![counts_node]);

        let fields: Vec<_> = left_schema.fields().iter().chain(flags_schema.fields()).cloned().collect();
        let crossed: SchemaRef = Arc::new(Schema::new(fields));
        let node = self.next_node_id();
        let cross = Join::new(
            JoinKind::Inner,
            left_schema.clone(),
            flags_schema.clone(),
            vec![],
            vec![],
            None,
            crossed.clone(),
            self.dataflow_id,
            node,
        )?;
        let cross = self.add(cross, vec![anti, flags]);
        let width = left_schema.fields().len();
        let flags_df = DFSchema::try_from(flags_schema.as_ref().clone())?;
        let keep = col("velocity_subquery_empty")
            .or(datafusion::logical_expr::not(col("velocity_subquery_has_null")).and(left_key.clone().is_not_null()));
        let keep = self.physical(&keep, &j.left.schema().join(&flags_df)?)?;
        let kept = self.add(Filter::new(crossed.clone(), keep), vec![cross]);
        let columns = (0..width).map(|i| Arc::new(Column::new(left_schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>).collect();
        Ok(self.add(Project::new(left_schema, columns), vec![kept]))
    }

    fn plan_join(&mut self, j: &datafusion::logical_expr::Join, out_schema: SchemaRef) -> Result<NodeInput> {
        let kind = match j.join_type {
            JoinType::Inner => JoinKind::Inner,
            JoinType::Left => JoinKind::Left,
            JoinType::Right => JoinKind::Right,
            JoinType::Full => JoinKind::Full,
            JoinType::LeftSemi => JoinKind::LeftSemi,
            JoinType::LeftAnti if !j.null_aware => JoinKind::LeftAnti,
            JoinType::LeftAnti => return self.plan_not_in(j),
            // The optimizer's mirror images: the same join with its inputs swapped.
            JoinType::RightSemi | JoinType::RightAnti => {
                let mut swapped = j.clone();
                std::mem::swap(&mut swapped.left, &mut swapped.right);
                swapped.on = j.on.iter().map(|(l, r)| (r.clone(), l.clone())).collect();
                swapped.join_type = j.join_type.swap();
                return self.plan_join(&swapped, out_schema);
            }
            other => return Err(PlanError::Unsupported(format!("{other} join"))),
        };
        let left = self.plan(&j.left)?;
        let right = self.plan(&j.right)?;
        let left_keys = j.on.iter().map(|(l, _)| self.physical(l, j.left.schema())).collect::<Result<Vec<_>>>()?;
        let right_keys = j.on.iter().map(|(_, r)| self.physical(r, j.right.schema())).collect::<Result<Vec<_>>>()?;
        let filter = match &j.filter {
            Some(f) => Some(self.physical(f, &j.left.schema().join(j.right.schema())?)?),
            None => None,
        };
        let left_schema: SchemaRef = Arc::new(j.left.schema().as_arrow().clone());
        let right_schema: SchemaRef = Arc::new(j.right.schema().as_arrow().clone());
        let node = self.next_node_id();
        let mut op = Join::new(kind, left_schema, right_schema, left_keys, right_keys, filter, out_schema, self.dataflow_id, node)?;
        if j.null_equality == NullEquality::NullEqualsNull {
            op = op.with_nulls_equal();
        }
        Ok(self.add(op, vec![left, right]))
    }
}

/// Expressions whose value is not a function of the row: a view over them would silently
/// freeze the value at creation time.
fn reject_unsupported_expr(expr: &Expr) -> Result<()> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut found = None;
    expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e
            && f.func.signature().volatility == datafusion::logical_expr::Volatility::Volatile
        {
            found = Some(format!("the volatile function {}()", f.func.name()));
            return Ok(TreeNodeRecursion::Stop);
        }
        if matches!(e, Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)) {
            found = Some("this form of subquery".to_string());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match found {
        Some(what) => Err(PlanError::Unsupported(what)),
        None => Ok(()),
    }
}
