//! Tables and materialized views as DataFusion `TableProvider`s over committed storage.
//!
//! A scan copies the committed rows when the physical plan is built; the query path
//! holds the engine's gate meanwhile, so all relations of one query come from one tick.
//! Equality filters on every primary-key column become point lookups.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{Constraint, Constraints, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use crate::catalog::{Relation, RelationKind};
use crate::engine::{Contents, Engine};

#[derive(Debug)]
pub struct RelationTable {
    pub relation: Relation,
    /// The relation's schema, with each column of a table or materialized view marked with
    /// the relation's `pg_class.oid` and its `attnum` (for RowDescription).
    schema: SchemaRef,
    constraints: Constraints,
    /// `DEFAULT` expressions of a table's columns, by column name: what INSERT fills in.
    column_defaults: std::collections::HashMap<String, Expr>,
    #[allow(dead_code)]
    engine: EngineRef,
}

/// `Engine` is not `Debug`; wrap it for the provider.
struct EngineRef(Engine);
impl std::fmt::Debug for EngineRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine")
    }
}

impl RelationTable {
    pub fn new(engine: Engine, relation: Relation) -> RelationTable {
        let constraints = if relation.primary_key.is_empty() {
            Constraints::default()
        } else {
            Constraints::new_unverified(vec![Constraint::PrimaryKey(relation.primary_key.clone())])
        };
        let schema = match relation.kind {
            RelationKind::Table | RelationKind::MaterializedView => {
                Arc::new(crate::catalog::column_type::with_origin(&relation.schema, relation.pg_oid()))
            }
            RelationKind::View | RelationKind::Source | RelationKind::Sink => relation.schema.clone(),
        };
        RelationTable { relation, schema, constraints, column_defaults: Default::default(), engine: EngineRef(engine) }
    }

    /// The table's `DEFAULT` expressions, by column name.
    pub fn with_defaults(mut self, defaults: impl IntoIterator<Item = (String, Expr)>) -> RelationTable {
        self.column_defaults = defaults.into_iter().collect();
        self
    }

    fn contents(&self) -> Result<Contents> {
        Contents::new(self.relation.id, &self.relation.name, self.relation.schema.clone(), &self.relation.primary_key)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
    }

    /// `column = literal` for a primary-key column: (key position, value).
    fn key_equality(&self, expr: &Expr) -> Option<(usize, ScalarValue)> {
        let Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) = expr else { return None };
        let (col, lit) = match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => (c, v),
            _ => return None,
        };
        let idx = self.relation.schema.index_of(&col.name).ok()?;
        let pos = self.relation.primary_key.iter().position(|&k| k == idx)?;
        Some((pos, lit.clone()))
    }

    /// If `filters` pin every primary-key column, the key values as a batch.
    fn pinned_key(&self, filters: &[Expr]) -> Option<RecordBatch> {
        let pk = &self.relation.primary_key;
        if pk.is_empty() {
            return None;
        }
        let mut values: Vec<Option<ScalarValue>> = vec![None; pk.len()];
        for f in filters {
            if let Some((pos, v)) = self.key_equality(f) {
                values[pos] = Some(v);
            }
        }
        let key_schema = Arc::new(self.relation.schema.project(pk).ok()?);
        let columns = values
            .into_iter()
            .zip(key_schema.fields())
            .map(|(v, f)| v?.cast_to(f.data_type()).ok()?.to_array().ok())
            .collect::<Option<Vec<_>>>()?;
        RecordBatch::try_new(key_schema, columns).ok()
    }
}

#[async_trait]
impl TableProvider for RelationTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn constraints(&self) -> Option<&Constraints> {
        Some(&self.constraints)
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.column_defaults.get(column)
    }

    fn table_type(&self) -> TableType {
        match self.relation.kind {
            RelationKind::Table => TableType::Base,
            RelationKind::MaterializedView | RelationKind::View | RelationKind::Source | RelationKind::Sink => TableType::View,
        }
    }

    fn get_table_definition(&self) -> Option<&str> {
        Some(&self.relation.create_sql)
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: DataFusion still applies the filter; we only use it to narrow the read.
        Ok(filters
            .iter()
            .map(|f| match self.key_equality(f) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let contents = self.contents()?;
        let store = self.engine.0.store();
        let batch = match self.pinned_key(filters) {
            Some(keys) => contents.lookup_keys(store, &keys),
            None => contents.scan_rows(store).map(Some),
        }
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
        .unwrap_or_else(|| RecordBatch::new_empty(self.relation.schema.clone()));
        // The same columns under the schema marked with the relation's oid.
        let batch = RecordBatch::try_new(self.schema(), batch.columns().to_vec())?;
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema(), projection.cloned())?)
    }
}
