//! `velocity_catalog`: system tables computed from the engine's live state.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, Session};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use crate::engine::Engine;

type Fill = Box<dyn Fn(&Engine) -> Result<Vec<ArrayRef>> + Send + Sync>;

/// A read-only table whose rows are computed when it is scanned.
pub struct SystemTable {
    engine: Engine,
    schema: SchemaRef,
    fill: Fill,
}

impl std::fmt::Debug for SystemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemTable").field("schema", &self.schema).finish()
    }
}

#[async_trait]
impl TableProvider for SystemTable {
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
        let batch = RecordBatch::try_new(self.schema.clone(), (self.fill)(&self.engine)?)?;
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema.clone(), projection.cloned())?)
    }
}

/// Register the `velocity_catalog` schema and its tables.
pub fn register(ctx: &SessionContext, engine: &Engine) -> Result<()> {
    let schema = Arc::new(MemorySchemaProvider::new());
    let catalog = ctx.catalog(super::DATABASE).expect("default catalog exists");
    catalog.register_schema("velocity_catalog", schema.clone())?;

    // One row per table and materialized view.
    let relations: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("last_change_tick", DataType::Int64, true),
        Field::new("definition", DataType::Utf8, false),
    ]));
    let fill: Fill = Box::new(|engine: &Engine| {
        let catalog = engine.catalog.read().expect("catalog lock");
        let stats = engine.stats.read().expect("stats lock");
        let rels: Vec<_> = catalog.iter().collect();
        Ok(vec![
            Arc::new(Int64Array::from_iter_values(rels.iter().map(|r| r.id as i64))) as ArrayRef,
            Arc::new(StringArray::from_iter_values(rels.iter().map(|r| r.name.clone()))),
            Arc::new(StringArray::from_iter_values(rels.iter().map(|r| r.kind.sql_name()))),
            Arc::new(Int64Array::from_iter_values(rels.iter().map(|r| stats.view_rows.get(&r.id).copied().unwrap_or(0)))),
            Arc::new(Int64Array::from_iter(rels.iter().map(|r| stats.last_change.get(&r.id).map(|t| *t as i64)))),
            Arc::new(StringArray::from_iter_values(rels.iter().map(|r| r.create_sql.clone()))),
        ])
    });
    schema.register_table("relations".into(), Arc::new(SystemTable { engine: engine.clone(), schema: relations, fill }))?;
    Ok(())
}
