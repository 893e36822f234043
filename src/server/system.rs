//! `velocity_catalog`: system tables computed from the engine's live state.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, Session};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use super::statement_context::StatementRole;
use crate::catalog::{Privilege, RelationKind};
use crate::engine::Engine;
use crate::sinks::kafka::{SinkRegistry, SinkStatus};
use crate::sources::runner::{SourceRegistry, SourceStatus};

/// Computes a system table's columns from the engine's current state.
pub type Fill = Box<dyn Fn(&Engine) -> Result<Vec<ArrayRef>> + Send + Sync>;

/// Keeps the rows of a system table the statement's role may see (no role: an internal
/// read, which sees none).
pub type Visible = Box<dyn Fn(&Engine, Option<&StatementRole>, RecordBatch) -> Result<RecordBatch> + Send + Sync>;

/// A read-only table whose rows are computed when it is scanned.
pub struct SystemTable {
    engine: Engine,
    schema: SchemaRef,
    fill: Fill,
    visible: Option<Visible>,
}

impl SystemTable {
    pub fn new(engine: Engine, schema: SchemaRef, fill: Fill) -> SystemTable {
        SystemTable { engine, schema, fill, visible: None }
    }

    /// Rows visible to some roles only.
    pub fn visible_to(mut self, visible: Visible) -> SystemTable {
        self.visible = Some(visible);
        self
    }
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
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut batch = RecordBatch::try_new(self.schema.clone(), (self.fill)(&self.engine)?)?;
        if let Some(visible) = &self.visible {
            batch = visible(&self.engine, state.config().get_extension::<StatementRole>().as_deref(), batch)?;
        }
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema.clone(), projection.cloned())?)
    }
}

/// Bytes of a view's operator state in storage: keys and values under its state prefix.
fn state_bytes(engine: &Engine, id: u32) -> Result<i64> {
    let mut prefix = vec![crate::storage::keyspace::STATE];
    prefix.extend_from_slice(&id.to_be_bytes());
    let mut bytes = 0i64;
    engine
        .store()
        .for_each_prefix(&prefix, |k, v| {
            bytes += (k.len() + v.len()) as i64;
            Ok(())
        })
        .map_err(|e| datafusion::error::DataFusionError::External(e.into()))?;
    Ok(bytes)
}

/// Register the `velocity_catalog` schema and its tables.
pub fn register(ctx: &SessionContext, engine: &Engine, sources: SourceRegistry, sinks: SinkRegistry) -> Result<()> {
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
        // Time from the upstream commit to the tick of the last source transaction that changed it.
        Field::new("freshness_ms", DataType::Int64, true),
        Field::new("definition", DataType::Utf8, false),
        // Tables with a watermark: the watermark, and the rows refused as late.
        Field::new("watermark", DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None), true),
        Field::new("late_rows", DataType::Int64, true),
        // Materialized views: bytes of operator state in storage (keys and values).
        Field::new("state_bytes", DataType::Int64, true),
    ]));
    let fill: Fill = Box::new(|engine: &Engine| {
        let catalog = engine.catalog();
        let stats = engine.stats();
        let rels: Vec<_> = catalog.iter().collect();
        Ok(vec![
            Arc::new(Int64Array::from_iter_values(rels.iter().map(|r| r.id as i64))) as ArrayRef,
            Arc::new(StringArray::from_iter_values(rels.iter().map(|r| r.name.clone()))),
            Arc::new(StringArray::from_iter_values(rels.iter().map(|r| r.kind.sql_name()))),
            Arc::new(Int64Array::from_iter_values(rels.iter().map(|r| stats.view_rows.get(&r.id).copied().unwrap_or(0)))),
            Arc::new(Int64Array::from_iter(rels.iter().map(|r| stats.last_change.get(&r.id).map(|t| *t as i64)))),
            Arc::new(Int64Array::from_iter(rels.iter().map(|r| stats.freshness_ms.get(&r.id).map(|t| *t as i64)))),
            Arc::new(StringArray::from_iter_values(rels.iter().map(|r| r.create_sql.clone()))),
            Arc::new(arrow::array::TimestampMicrosecondArray::from_iter(
                rels.iter().map(|r| stats.watermarks.get(&r.id).and_then(|(w, _)| *w)),
            )),
            Arc::new(Int64Array::from_iter(rels.iter().map(|r| stats.watermarks.get(&r.id).map(|(_, late)| *late as i64)))),
            Arc::new(Int64Array::from_iter(
                rels.iter()
                    .map(|r| match r.kind {
                        RelationKind::MaterializedView => state_bytes(engine, r.id).map(Some),
                        _ => Ok(None),
                    })
                    .collect::<Result<Vec<_>>>()?,
            )),
        ])
    });
    schema.register_table("relations".into(), Arc::new(SystemTable::new(engine.clone(), relations, fill)))?;

    let collections_registry = sources.clone();
    // One row per source: status, position and counters.
    let source_schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("connector", DataType::Utf8, false),
        // running, waiting or error.
        Field::new("status", DataType::Utf8, false),
        // Why it is waiting or failing (NULL while running).
        Field::new("reason", DataType::Utf8, true),
        Field::new("position", DataType::Utf8, false),
        Field::new("transactions", DataType::Int64, false),
        Field::new("events", DataType::Int64, false),
        Field::new("errors", DataType::Int64, false),
        Field::new("pending_records", DataType::Int64, false),
        Field::new("lag", DataType::Int64, false),
        Field::new("lag_unit", DataType::Utf8, false),
    ]));
    let fill: Fill = Box::new(move |engine: &Engine| {
        let catalog = engine.catalog();
        let registry = sources.read().expect("registry lock");
        let rows: Vec<(String, SourceStatus)> = catalog
            .iter()
            .filter(|r| r.kind == RelationKind::Source)
            .map(|r| (r.name.clone(), registry.get(&r.name).cloned().unwrap_or_default()))
            .collect();
        let text =
            |f: &dyn Fn(&SourceStatus) -> String| Arc::new(StringArray::from_iter_values(rows.iter().map(|(_, s)| f(s)))) as ArrayRef;
        let int =
            |f: &dyn Fn(&SourceStatus) -> u64| Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, s)| f(s) as i64))) as ArrayRef;
        Ok(vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(n, _)| n.clone()))) as ArrayRef,
            text(&|s| s.connector.clone()),
            text(&|s| s.state.clone()),
            Arc::new(StringArray::from_iter(rows.iter().map(|(_, s)| Some(s.reason.clone()).filter(|r| !r.is_empty())))),
            text(&|s| s.position.clone()),
            int(&|s| s.transactions),
            int(&|s| s.events),
            int(&|s| s.errors),
            int(&|s| s.pending),
            int(&|s| s.lag),
            text(&|s| s.lag_unit.to_string()),
        ])
    });
    schema.register_table("sources".into(), Arc::new(SystemTable::new(engine.clone(), source_schema, fill)))?;

    // One row per upstream collection a source has seen, and per bound table whose collection
    // it has not: a table bound to a misspelt upstream shows here with 0 events.
    let collection_schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("collection", DataType::Utf8, false),
        Field::new("events", DataType::Int64, false),
        // The bound table and its upstream option; NULL when no table is bound to it.
        Field::new("table_name", DataType::Utf8, true),
        Field::new("upstream", DataType::Utf8, true),
    ]));
    let fill: Fill = Box::new(move |engine: &Engine| {
        let catalog = engine.catalog();
        let registry = collections_registry.read().expect("registry lock");
        let rows: Vec<(String, crate::sources::runner::CollectionStatus)> = catalog
            .iter()
            .filter(|r| r.kind == RelationKind::Source)
            .flat_map(|r| registry.get(&r.name).into_iter().flat_map(|s| s.collections.iter().map(|c| (r.name.clone(), c.clone()))))
            .collect();
        Ok(vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(s, _)| s.clone()))) as ArrayRef,
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(_, c)| c.collection.clone()))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, c)| c.events as i64))),
            Arc::new(StringArray::from_iter(rows.iter().map(|(_, c)| c.table.as_ref().map(|t| t.0.clone())))),
            Arc::new(StringArray::from_iter(rows.iter().map(|(_, c)| c.table.as_ref().map(|t| t.1.clone())))),
        ])
    });
    schema.register_table("source_collections".into(), Arc::new(SystemTable::new(engine.clone(), collection_schema, fill)))?;

    // One row per sink: where delivery got to and what is still waiting in the outbox.
    let sink_schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("relation", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("format", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("delivered_tick", DataType::Int64, false),
        Field::new("pending_ticks", DataType::Int64, false),
        Field::new("messages", DataType::Int64, false),
    ]));
    let fill: Fill = Box::new(move |engine: &Engine| {
        let catalog = engine.catalog();
        let registry = sinks.read().expect("registry lock");
        let mut rows = Vec::new();
        for r in catalog.iter().filter(|r| r.kind == RelationKind::Sink) {
            let mut pending = 0i64;
            engine
                .store()
                .for_each_prefix(&crate::sinks::outbox_prefix(r.id), |_, _| {
                    pending += 1;
                    Ok(())
                })
                .map_err(|e| datafusion::error::DataFusionError::External(e.into()))?;
            rows.push((r.name.clone(), registry.get(&r.name).cloned().unwrap_or_default(), pending));
        }
        let text =
            |f: &dyn Fn(&SinkStatus) -> String| Arc::new(StringArray::from_iter_values(rows.iter().map(|(_, s, _)| f(s)))) as ArrayRef;
        Ok(vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(n, _, _)| n.clone()))) as ArrayRef,
            text(&|s| s.relation.clone()),
            text(&|s| s.topic.clone()),
            text(&|s| s.format.clone()),
            text(&|s| s.state.clone()),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, s, _)| s.delivered_tick as i64))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, _, p)| *p))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, s, _)| s.messages as i64))),
        ])
    });
    schema.register_table("sinks".into(), Arc::new(SystemTable::new(engine.clone(), sink_schema, fill)))?;

    // Every source record that could not be applied, kept raw with the reason.
    let dead_schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("upstream", DataType::Utf8, true),
        Field::new("position", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("received_at_ms", DataType::Int64, false),
    ]));
    let fill: Fill = Box::new(|engine: &Engine| {
        let dead = crate::sources::runner::dead_letters(engine).map_err(|e| datafusion::error::DataFusionError::External(e.into()))?;
        Ok(vec![
            Arc::new(StringArray::from_iter_values(dead.iter().map(|d| d.source.clone()))) as ArrayRef,
            Arc::new(StringArray::from_iter(dead.iter().map(|d| d.collection.clone()))),
            Arc::new(StringArray::from_iter_values(dead.iter().map(|d| d.position.clone()))),
            Arc::new(StringArray::from_iter_values(dead.iter().map(|d| d.raw.clone()))),
            Arc::new(StringArray::from_iter_values(dead.iter().map(|d| d.reason.clone()))),
            Arc::new(Int64Array::from_iter_values(dead.iter().map(|d| d.received_at_ms))),
        ])
    });
    // A source's records are its owner's data (a file source's lines, say): superusers see
    // every dead letter, other roles those of the sources they own or hold USAGE on.
    let visible: Visible = Box::new(|engine: &Engine, role: Option<&StatementRole>, batch: RecordBatch| {
        let Some(role) = role else { return Ok(batch.slice(0, 0)) };
        if role.superuser {
            return Ok(batch);
        }
        let catalog = engine.catalog();
        let sources = batch.column(0).as_any().downcast_ref::<StringArray>().expect("source is text");
        // Decided once per source, not per dead letter.
        let mut allowed = std::collections::HashMap::new();
        let owned = BooleanArray::from_iter(sources.iter().map(|s| {
            Some(s.is_some_and(|s| {
                *allowed.entry(s).or_insert_with(|| catalog.get(s).is_some_and(|r| catalog.allows(&role.name, r, Privilege::Usage)))
            }))
        }));
        Ok(arrow::compute::filter_record_batch(&batch, &owned)?)
    });
    let dead_letters = SystemTable::new(engine.clone(), dead_schema, fill).visible_to(visible);
    schema.register_table("dead_letters".into(), Arc::new(dead_letters))?;
    Ok(())
}
