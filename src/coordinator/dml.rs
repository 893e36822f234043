//! INSERT, UPDATE and DELETE on tables: what a statement changes, as a Z-set of rows.
//!
//! DataFusion plans the statement; its input is evaluated over one committed snapshot plus
//! the session's own uncommitted changes, and the result becomes the rows to retract and
//! insert. The session applies them at once or at COMMIT.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::logical_expr::{Expr, LogicalPlan, Projection, WriteOp};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;

use super::{Coordinator, CoordinatorError, Result};
use crate::catalog::{Privilege, Relation, RelationKind};
use crate::dataflow::ChangeBatch;

/// What one INSERT, UPDATE or DELETE changes.
pub struct Write {
    pub relation: u32,
    /// Net row changes: +1 inserted, -1 removed (an update is both).
    pub changes: ChangeBatch,
    /// `INSERT`, `UPDATE` or `DELETE`, for the command tag.
    pub command: &'static str,
    /// Rows the statement inserted, updated or deleted.
    pub rows: usize,
}

impl Coordinator {
    /// Evaluate a DML statement (planned already by the extended protocol, or planned here)
    /// against committed rows plus `pending`: the session's uncommitted changes of a table.
    /// `role` needs the statement's privilege on the table, SELECT too when an UPDATE or
    /// DELETE has a WHERE clause (it reads the rows, as in Postgres), and SELECT on whatever
    /// else the statement reads.
    pub async fn write(
        &self,
        role: &str,
        stmt: &Statement,
        planned: Option<&LogicalPlan>,
        params: &ParamValues,
        pending: impl Fn(u32) -> Vec<ChangeBatch>,
    ) -> Result<Write> {
        let plan = match planned {
            Some(p) => p.clone(),
            None => self.context.state().statement_to_plan(DFStatement::Statement(Box::new(stmt.clone()))).await?,
        };
        let LogicalPlan::Dml(mut dml) = plan.replace_params_with_values(params)? else {
            return Err(CoordinatorError::Unsupported("this form of INSERT/UPDATE/DELETE".into()));
        };
        dml.input = Arc::new(bytea_literals(dml.input.as_ref().clone())?);
        let relation = self
            .engine
            .catalog()
            .get(dml.table_name.table())
            .cloned()
            .ok_or_else(|| CoordinatorError::UndefinedObject { kind: RelationKind::Table, name: dml.table_name.to_string() })?;
        if relation.kind == RelationKind::View {
            return Err(CoordinatorError::ReadOnlyView(relation.name));
        }
        if relation.kind != RelationKind::Table {
            return Err(CoordinatorError::NotATable(relation.name));
        }
        let (privilege, reads_target) = match (&dml.op, stmt) {
            (WriteOp::Insert(_), _) => (Privilege::Insert, false),
            (WriteOp::Update, Statement::Update(u)) => (Privilege::Update, u.selection.is_some()),
            (WriteOp::Delete, Statement::Delete(d)) => (Privilege::Delete, d.selection.is_some()),
            (WriteOp::Update, _) => (Privilege::Update, false),
            _ => (Privilege::Delete, false),
        };
        self.require(role, &relation.name, privilege)?;
        if reads_target {
            self.require(role, &relation.name, Privilege::Select)?;
        }
        self.authorize_reads(role, stmt, Some(&relation.name))?;
        if let Some(b) = &relation.binding {
            return Err(CoordinatorError::ReadOnlyTable { table: relation.name, source_name: b.source.clone() });
        }
        let schema = relation.schema.clone();
        // This transaction's earlier writes to the table, so that its statements see them.
        let mine = pending(relation.id);
        let pending = if mine.is_empty() { None } else { Some(ChangeBatch::concat(&schema, &mine)?.consolidate()?) };
        let (changes, command, rows) = match &dml.op {
            WriteOp::Insert(_) => {
                let rows = self.collect(dml.input.as_ref().clone(), &schema).await?;
                check_not_null(&relation, rows.columns())?;
                check_lengths(&relation, rows.columns())?;
                let rows = RecordBatch::try_new(schema.clone(), canonical_values(&relation, rows.columns())?)?;
                let n = rows.num_rows();
                (ChangeBatch::uniform(rows, 1), "INSERT", n)
            }
            WriteOp::Delete => {
                let old = self.evaluate(dml.input.as_ref(), &schema, &relation, pending).await?;
                let n = old.weights.values().iter().sum::<i64>() as usize;
                (old.negate(), "DELETE", n)
            }
            WriteOp::Update => {
                let LogicalPlan::Projection(p) = dml.input.as_ref() else {
                    return Err(CoordinatorError::Unsupported("this form of UPDATE".into()));
                };
                // One pass computes old and new rows side by side.
                let width = schema.fields().len();
                let old: Vec<Expr> = p.input.schema().columns().into_iter().take(width).map(Expr::Column).collect();
                let new: Vec<Expr> =
                    p.expr.iter().enumerate().map(|(i, e)| e.clone().unalias().alias(format!("__velocity_new_{i}"))).collect();
                let both = LogicalPlan::Projection(Projection::try_new(old.into_iter().chain(new).collect(), p.input.clone())?);
                let wide: SchemaRef = Arc::new(Schema::new(
                    schema
                        .fields()
                        .iter()
                        .chain(schema.fields().iter())
                        .map(|f| f.as_ref().clone().with_nullable(true))
                        .collect::<Vec<_>>(),
                ));
                let pairs = self.evaluate(&both, &wide, &relation, pending).await?;
                let n = pairs.weights.values().iter().sum::<i64>() as usize;
                check_not_null(&relation, &pairs.rows.columns()[width..])?;
                check_lengths(&relation, &pairs.rows.columns()[width..])?;
                let old_rows = RecordBatch::try_new(schema.clone(), pairs.rows.columns()[..width].to_vec())?;
                let new_rows = RecordBatch::try_new(schema.clone(), canonical_values(&relation, &pairs.rows.columns()[width..])?)?;
                let changes = ChangeBatch::concat(
                    &schema,
                    &[ChangeBatch::new(old_rows, pairs.weights.clone()).negate(), ChangeBatch::new(new_rows, pairs.weights)],
                )?;
                (changes, "UPDATE", n)
            }
            other => return Err(CoordinatorError::Unsupported(other.to_string())),
        };
        Ok(Write { relation: relation.id, changes: changes.consolidate()?, command, rows })
    }

    /// Evaluate a plan that reads `relation` (DELETE/UPDATE input) as a Z-set over what this
    /// transaction sees: committed rows plus its own pending changes. The plan is linear in
    /// the table, so plan(committed + delta) = plan(committed) + plan(delta+) - plan(delta-).
    async fn evaluate(
        &self,
        plan: &LogicalPlan,
        schema: &SchemaRef,
        relation: &Relation,
        pending: Option<ChangeBatch>,
    ) -> Result<ChangeBatch> {
        let committed = self.collect(plan.clone(), schema).await?;
        let mut parts = vec![ChangeBatch::uniform(committed, 1)];
        if let Some(delta) = pending {
            let inserted = delta.filter(&arrow::compute::kernels::cmp::gt(&delta.weights, &Int64Array::new_scalar(0))?)?;
            let removed = delta.filter(&arrow::compute::kernels::cmp::lt(&delta.weights, &Int64Array::new_scalar(0))?)?;
            for (rows, sign) in [(inserted, 1), (removed.negate(), -1)] {
                if rows.is_empty() {
                    continue;
                }
                let rows = rows.expand_positive()?;
                let rebound = rebind_scan(plan.clone(), &relation.name, rows)?;
                let result = self.collect(rebound, schema).await?;
                parts.push(ChangeBatch::uniform(result, sign));
            }
        }
        let loose = parts[0].schema();
        Ok(ChangeBatch::concat(&loose, &parts)?.consolidate()?)
    }

    /// Run a plan against one committed snapshot, returning rows cast to `schema`'s types.
    /// Nullability is left to the caller, which knows which columns must not be NULL.
    async fn collect(&self, plan: LogicalPlan, schema: &SchemaRef) -> Result<RecordBatch> {
        let batches = {
            let _gate = self.engine.read_snapshot().await;
            self.context.execute_logical_plan(plan).await?.collect().await?
        };
        let loose = Arc::new(Schema::new(schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>()));
        let batches = batches
            .into_iter()
            .map(|b| {
                let columns = b
                    .columns()
                    .iter()
                    .zip(schema.fields())
                    .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                    .collect::<Result<Vec<_>, _>>()?;
                RecordBatch::try_new_with_options(
                    loose.clone(),
                    columns,
                    &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(arrow::compute::concat_batches(&loose, &batches)?)
    }
}

/// Text literals cast to `bytea` (an INSERT's `'\x0102'` into a BYTEA column) read as Postgres
/// reads bytea input, not as the text's bytes.
fn bytea_literals(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::common::ScalarValue;
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::Cast;
    let mut invalid = None;
    let plan = plan
        .transform_up(|node| {
            node.map_expressions(|e| {
                e.transform_up(|e| {
                    let text = match &e {
                        Expr::Cast(Cast { expr, field }) if field.data_type() == &DataType::Binary => match expr.as_ref() {
                            Expr::Literal(ScalarValue::Utf8(Some(text)), _) => text.clone(),
                            _ => return Ok(Transformed::no(e)),
                        },
                        _ => return Ok(Transformed::no(e)),
                    };
                    match crate::functions::bytea::bytea_input(&text) {
                        Some(bytes) => Ok(Transformed::yes(Expr::Literal(ScalarValue::Binary(Some(bytes)), None))),
                        None => {
                            invalid = Some(text);
                            Ok(Transformed::no(e))
                        }
                    }
                })
            })
        })?
        .data;
    match invalid {
        Some(_) => Err(arrow::error::ArrowError::CastError("invalid input syntax for type bytea".into()).into()),
        None => Ok(plan),
    }
}

/// 23502 for the first column of `relation` that must not be NULL and holds a NULL.
fn check_not_null(relation: &Relation, columns: &[ArrayRef]) -> Result<()> {
    match relation.schema.fields().iter().zip(columns).find(|(f, c)| !f.is_nullable() && c.null_count() > 0) {
        Some((f, _)) => Err(CoordinatorError::NotNull { relation: relation.name.clone(), column: f.name().clone() }),
        None => Ok(()),
    }
}

/// 22001 for the first value longer than its `VARCHAR(n)` column allows (in characters).
fn check_lengths(relation: &Relation, columns: &[ArrayRef]) -> Result<()> {
    for (field, column) in relation.schema.fields().iter().zip(columns) {
        let Some(max) = crate::catalog::column_type::varchar_length(field) else { continue };
        let Some(strings) = column.as_any().downcast_ref::<arrow::array::StringArray>() else { continue };
        if strings.iter().flatten().any(|s| s.len() > max && s.chars().count() > max) {
            return Err(CoordinatorError::StringTooLong { type_name: format!("character varying({max})") });
        }
    }
    Ok(())
}

/// `columns` as their columns' input functions take them, as in Postgres: `uuid` values in
/// canonical form, `json` values checked, `jsonb` values checked and normalized (`{"a": 1}`);
/// 22P02 for text that is neither.
fn canonical_values(relation: &Relation, columns: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
    use crate::catalog::column_type;
    use crate::functions::json::{is_json, is_jsonb};
    relation
        .schema
        .fields()
        .iter()
        .zip(columns)
        .map(|(field, column)| {
            let (type_name, canonical): (_, fn(&str) -> Option<String>) = if column_type::is_uuid(field) {
                ("uuid", column_type::canonical_uuid)
            } else if is_jsonb(field) {
                ("json", |s| serde_json::from_str(s).ok().map(|v| crate::functions::json_access::jsonb_text(&v)))
            } else if is_json(field) {
                ("json", |s| serde_json::from_str::<serde::de::IgnoredAny>(s).ok().map(|_| s.to_string()))
            } else {
                return Ok(column.clone());
            };
            let Some(strings) = column.as_any().downcast_ref::<arrow::array::StringArray>() else { return Ok(column.clone()) };
            let values = strings
                .iter()
                .map(|s| match s {
                    None => Ok(None),
                    Some(s) => canonical(s).map(Some).ok_or_else(|| CoordinatorError::InvalidText { type_name, value: s.to_string() }),
                })
                .collect::<Result<arrow::array::StringArray>>()?;
            Ok(Arc::new(values) as ArrayRef)
        })
        .collect()
}

/// Replace scans of `table` in `plan` with an in-memory table holding `rows`.
fn rebind_scan(plan: LogicalPlan, table: &str, rows: RecordBatch) -> datafusion::error::Result<LogicalPlan> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    let provider = Arc::new(datafusion::datasource::MemTable::try_new(rows.schema(), vec![vec![rows]])?);
    let source = datafusion::datasource::provider_as_source(provider);
    plan.transform_up(|node| match node {
        LogicalPlan::TableScan(mut scan) if scan.table_name.table() == table => {
            scan.source = source.clone();
            scan.filters.clear();
            Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}
