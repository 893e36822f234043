//! The `changes(relation [, 'key columns'])` table function.
//!
//! In a materialized view it reads the relation's committed net changes (see
//! `dataflow::changelog`); queried ad hoc it is empty, because changes are not kept
//! as history, only delivered as they commit.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, LogicalPlan, Projection};
use datafusion::physical_plan::ExecutionPlan;

use crate::catalog::RelationKind;
use crate::dataflow::changelog::changelog_schema;
use crate::engine::Engine;

pub struct ChangesFunction {
    pub engine: Engine,
}

impl std::fmt::Debug for ChangesFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("changes()")
    }
}

/// The relation a `changes(...)` call reads.
#[derive(Debug)]
pub struct ChangesTable {
    pub relation: u32,
    pub key: Vec<usize>,
    pub relation_schema: SchemaRef,
    schema: SchemaRef,
}

fn string_arg(e: &Expr) -> Option<String> {
    match e {
        Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => Some(s.clone()),
        Expr::Column(c) => Some(c.name.clone()),
        _ => None,
    }
}

impl TableFunctionImpl for ChangesFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let Some(name) = exprs.first().and_then(string_arg) else {
            return plan_err!("changes() expects a table or materialized view name, e.g. changes(shipments)");
        };
        let catalog = self.engine.catalog();
        let Some(relation) = catalog.get(&name) else {
            return plan_err!("table \"{name}\" not found");
        };
        if !relation.kind.stores_rows() {
            return plan_err!("changes({name}) reads a table or materialized view; \"{name}\" is a {}", relation.kind.sql_name());
        }
        let key = match exprs.get(1) {
            Some(e) => {
                let Some(list) = string_arg(e) else {
                    return plan_err!("changes({name}, ...) expects key columns as a string, e.g. 'id'");
                };
                list.split(',')
                    .map(|c| {
                        let c = c.trim();
                        relation.schema.index_of(c).or_else(|_| plan_err!("changes({name}, ...): no column named \"{c}\""))
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            None if relation.kind == RelationKind::Table => relation.primary_key.clone(),
            None => Vec::new(),
        };
        Ok(Arc::new(ChangesTable {
            relation: relation.id,
            key,
            relation_schema: relation.schema.clone(),
            schema: changelog_schema(&relation.schema),
        }))
    }
}

#[async_trait]
impl TableProvider for ChangesTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(MemorySourceConfig::try_new_exec(&[vec![]], self.schema.clone(), projection.cloned())?)
    }
}

/// `SELECT after.id FROM changes(t)` names its column `id`, as Postgres does for a field of a
/// composite; DataFusion would call it `changes().after[id]`.
pub fn name_field_accesses(plan: LogicalPlan) -> Result<LogicalPlan> {
    if !plan.schema().fields().iter().any(|f| field_access_name(f.name()).is_some()) {
        return Ok(plan);
    }
    let exprs: Vec<Expr> = plan
        .schema()
        .columns()
        .into_iter()
        .map(|c| match field_access_name(&c.name).map(str::to_string) {
            Some(short) => Expr::Column(c).alias(short),
            None => Expr::Column(c),
        })
        .collect();
    Ok(LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan))?))
}

/// The field name of a column DataFusion named after a field access (`expr[field]`).
fn field_access_name(name: &str) -> Option<&str> {
    let inner = name.strip_suffix(']')?;
    let (_, field) = inner.rsplit_once('[')?;
    (!field.is_empty() && field.chars().all(|c| c.is_alphanumeric() || c == '_')).then_some(field)
}
