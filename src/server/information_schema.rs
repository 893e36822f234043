//! `information_schema` as Postgres clients read it. DataFusion's own tables (`tables`,
//! `schemata`, `df_settings`, ...) are served as they are; `columns` is replaced by
//! Postgres' shape (type names such as `bigint`, `udt_name`, `is_identity`, ...),
//! `table_constraints` / `key_column_usage` list the primary keys of Velocity's tables and
//! `views` its plain views.
//! Metabase's field sync and Grafana's column picker read exactly these.
//!
//! Every table is computed from the live catalog when it is scanned.
//!
//! `columns` leaves out materialized views, as Postgres does: clients that know them
//! (Metabase, pgjdbc, SQLAlchemy) read their columns from `pg_attribute` and would otherwise
//! list each twice. `tables` lists them as views (DataFusion's table, unchanged).

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::information_schema::{INFORMATION_SCHEMA, InformationSchemaProvider};
use datafusion::catalog::{CatalogProviderList, SchemaProvider, Session};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use datafusion_postgres::arrow_pg::datatypes::field_into_pg_type;
use datafusion_postgres::pgwire::api::Type;

use crate::catalog::{RelationKind, column_type};
use crate::engine::Engine;

/// Register `information_schema` in the session's catalog. The session must be built
/// without DataFusion's built-in information schema, which would shadow this one.
pub fn register(ctx: &SessionContext, engine: &Engine) -> Result<()> {
    let catalogs = ctx.state().catalog_list().clone();
    let catalog = ctx.catalog(super::DATABASE).ok_or_else(|| DataFusionError::Internal(format!("catalog {} missing", super::DATABASE)))?;
    let provider = PgInformationSchema { datafusion: InformationSchemaProvider::new(catalogs.clone()), catalogs, engine: engine.clone() };
    catalog.register_schema(INFORMATION_SCHEMA, Arc::new(provider))?;
    Ok(())
}

/// The tables this module computes itself instead of DataFusion.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Columns,
    TableConstraints,
    KeyColumnUsage,
    Views,
}

impl Kind {
    fn named(name: &str) -> Option<Kind> {
        match name {
            "columns" => Some(Kind::Columns),
            "table_constraints" => Some(Kind::TableConstraints),
            "key_column_usage" => Some(Kind::KeyColumnUsage),
            "views" => Some(Kind::Views),
            _ => None,
        }
    }

    fn schema(self) -> SchemaRef {
        let text = |name: &str| Field::new(name, DataType::Utf8, true);
        // The fields that name a constraint and its table, first in both constraint tables.
        let constraint_fields = || {
            ["constraint_catalog", "constraint_schema", "constraint_name", "table_catalog", "table_schema", "table_name"].map(text).to_vec()
        };
        let number = |name: &str| Field::new(name, DataType::Int32, true);
        let fields = match self {
            Kind::Columns => vec![
                text("table_catalog"),
                text("table_schema"),
                text("table_name"),
                text("column_name"),
                number("ordinal_position"),
                text("column_default"),
                text("is_nullable"),
                text("data_type"),
                number("character_maximum_length"),
                number("character_octet_length"),
                number("numeric_precision"),
                number("numeric_precision_radix"),
                number("numeric_scale"),
                number("datetime_precision"),
                text("interval_type"),
                text("udt_catalog"),
                text("udt_schema"),
                text("udt_name"),
                text("is_identity"),
                text("identity_generation"),
                text("is_generated"),
                text("generation_expression"),
                text("is_updatable"),
            ],
            Kind::TableConstraints => {
                let kind = ["constraint_type", "is_deferrable", "initially_deferred", "enforced", "nulls_distinct"].map(text);
                [constraint_fields(), kind.to_vec()].concat()
            }
            Kind::Views => [
                "table_catalog",
                "table_schema",
                "table_name",
                "view_definition",
                "check_option",
                "is_updatable",
                "is_insertable_into",
                "is_trigger_updatable",
                "is_trigger_deletable",
                "is_trigger_insertable_into",
            ]
            .map(text)
            .to_vec(),
            Kind::KeyColumnUsage => {
                [constraint_fields(), vec![text("column_name"), number("ordinal_position"), number("position_in_unique_constraint")]]
                    .concat()
            }
        };
        Arc::new(Schema::new(fields))
    }
}

struct PgInformationSchema {
    datafusion: InformationSchemaProvider,
    catalogs: Arc<dyn CatalogProviderList>,
    engine: Engine,
}

impl std::fmt::Debug for PgInformationSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgInformationSchema").finish()
    }
}

#[async_trait]
impl SchemaProvider for PgInformationSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.datafusion.table_names();
        for extra in ["table_constraints", "key_column_usage"] {
            names.push(extra.to_string());
        }
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match Kind::named(&name.to_ascii_lowercase()) {
            Some(kind) => Ok(Some(Arc::new(InformationTable {
                kind,
                schema: kind.schema(),
                catalogs: self.catalogs.clone(),
                engine: self.engine.clone(),
            }))),
            None => self.datafusion.table(name).await,
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        Kind::named(&name.to_ascii_lowercase()).is_some() || self.datafusion.table_exist(name)
    }
}

/// One of `Kind`'s tables, computed at scan time.
struct InformationTable {
    kind: Kind,
    schema: SchemaRef,
    catalogs: Arc<dyn CatalogProviderList>,
    engine: Engine,
}

impl std::fmt::Debug for InformationTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InformationTable").field("kind", &self.kind).finish()
    }
}

#[async_trait]
impl TableProvider for InformationTable {
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
        let rows = match self.kind {
            Kind::Columns => self.columns().await?,
            Kind::TableConstraints | Kind::KeyColumnUsage => self.primary_keys()?,
            Kind::Views => self.views(),
        };
        let batch = RecordBatch::try_new(self.schema.clone(), rows.into_columns())?;
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema.clone(), projection.cloned())?)
    }
}

/// Rows of a table whose fields are text or Int32, built column by column.
struct Rows {
    schema: SchemaRef,
    columns: Vec<Column>,
}

enum Column {
    Text(Vec<Option<String>>),
    Number(Vec<Option<i32>>),
}

/// A value of one row, in schema order.
enum Value {
    Text(Option<String>),
    Number(Option<i32>),
}

fn text(s: impl Into<String>) -> Value {
    Value::Text(Some(s.into()))
}

impl Rows {
    fn new(schema: &SchemaRef) -> Rows {
        let columns = schema
            .fields()
            .iter()
            .map(|f| if f.data_type() == &DataType::Int32 { Column::Number(Vec::new()) } else { Column::Text(Vec::new()) })
            .collect();
        Rows { schema: schema.clone(), columns }
    }

    fn push(&mut self, row: Vec<Value>) {
        assert_eq!(row.len(), self.columns.len(), "a row of {:?}", self.schema);
        for (column, value) in self.columns.iter_mut().zip(row) {
            match (column, value) {
                (Column::Text(c), Value::Text(v)) => c.push(v),
                (Column::Number(c), Value::Number(v)) => c.push(v),
                _ => unreachable!("a value of the other type in a row of {:?}", self.schema),
            }
        }
    }

    fn into_columns(self) -> Vec<ArrayRef> {
        self.columns
            .into_iter()
            .map(|c| match c {
                Column::Text(v) => Arc::new(StringArray::from(v)) as ArrayRef,
                Column::Number(v) => Arc::new(Int32Array::from(v)) as ArrayRef,
            })
            .collect()
    }
}

impl InformationTable {
    /// One row per column of every relation outside `information_schema`, except
    /// materialized views.
    async fn columns(&self) -> Result<Rows> {
        let mut rows = Rows::new(&self.schema);
        let matviews: HashSet<String> = {
            let catalog = self.engine.catalog();
            catalog.iter().filter(|r| r.kind == RelationKind::MaterializedView).map(|r| r.name.clone()).collect()
        };
        for catalog_name in self.catalogs.catalog_names() {
            let Some(catalog) = self.catalogs.catalog(&catalog_name) else { continue };
            for schema_name in catalog.schema_names() {
                if schema_name == INFORMATION_SCHEMA {
                    continue;
                }
                let Some(schema) = catalog.schema(&schema_name) else { continue };
                for table_name in schema.table_names() {
                    if schema_name == "public" && matviews.contains(&table_name) {
                        continue;
                    }
                    let Some(table) = schema.table(&table_name).await? else { continue };
                    let updatable = if table.table_type() == TableType::Base { "YES" } else { "NO" };
                    for (i, field) in table.schema().fields().iter().enumerate() {
                        let t = described_type(field);
                        rows.push(vec![
                            text(&catalog_name),
                            text(&schema_name),
                            text(&table_name),
                            text(field.name()),
                            Value::Number(Some(i as i32 + 1)),
                            Value::Text(None),
                            text(if field.is_nullable() { "YES" } else { "NO" }),
                            text(t.data_type),
                            Value::Number(t.character_length),
                            Value::Number(t.octet_length),
                            Value::Number(t.precision),
                            Value::Number(t.radix),
                            Value::Number(t.scale),
                            Value::Number(t.datetime_precision),
                            Value::Text(None),
                            text(&catalog_name),
                            text("pg_catalog"),
                            text(t.udt_name),
                            text("NO"),
                            Value::Text(None),
                            text("NEVER"),
                            Value::Text(None),
                            text(updatable),
                        ]);
                    }
                }
            }
        }
        Ok(rows)
    }

    /// One row per plain view (materialized views are not in Postgres' `views` either).
    fn views(&self) -> Rows {
        let mut rows = Rows::new(&self.schema);
        let catalog = self.engine.catalog();
        for view in catalog.iter().filter(|r| r.kind == RelationKind::View) {
            let mut row = vec![text(super::DATABASE), text("public"), text(&view.name)];
            row.push(Value::Text(super::pg_catalog::view_query(&view.create_sql)));
            row.push(text("NONE"));
            row.extend(std::iter::repeat_with(|| text("NO")).take(5));
            rows.push(row);
        }
        rows
    }

    /// The primary keys of Velocity's tables, as `table_constraints` or `key_column_usage`
    /// rows (constraints are named `<table>_pkey`, as Postgres names them).
    fn primary_keys(&self) -> Result<Rows> {
        let mut rows = Rows::new(&self.schema);
        let catalog = self.engine.catalog();
        let database = super::DATABASE;
        for relation in catalog.iter().filter(|r| r.kind == RelationKind::Table && !r.primary_key.is_empty()) {
            let constraint = format!("{}_pkey", relation.name);
            let prefix = || vec![text(database), text("public"), text(&constraint), text(database), text("public"), text(&relation.name)];
            match self.kind {
                Kind::TableConstraints => {
                    let mut row = prefix();
                    row.extend([text("PRIMARY KEY"), text("NO"), text("NO"), text("YES"), Value::Text(None)]);
                    rows.push(row);
                }
                _ => {
                    for (position, &column) in relation.primary_key.iter().enumerate() {
                        let mut row = prefix();
                        row.extend([
                            text(relation.schema.field(column).name()),
                            Value::Number(Some(position as i32 + 1)),
                            Value::Number(None),
                        ]);
                        rows.push(row);
                    }
                }
            }
        }
        Ok(rows)
    }
}

/// How `information_schema.columns` describes an Arrow type.
struct DescribedType {
    /// The SQL name (`bigint`, `timestamp with time zone`, `ARRAY`).
    data_type: String,
    /// The Postgres type name (`int8`, `timestamptz`, `_int8`).
    udt_name: String,
    /// The `n` of `varchar(n)`.
    character_length: Option<i32>,
    octet_length: Option<i32>,
    precision: Option<i32>,
    radix: Option<i32>,
    scale: Option<i32>,
    datetime_precision: Option<i32>,
}

/// SQL names of the Postgres types Velocity's columns have.
const SQL_NAMES: &[(Type, &str)] = &[
    (Type::BOOL, "boolean"),
    (Type::INT2, "smallint"),
    (Type::INT4, "integer"),
    (Type::INT8, "bigint"),
    (Type::FLOAT4, "real"),
    (Type::FLOAT8, "double precision"),
    (Type::NUMERIC, "numeric"),
    (Type::TEXT, "text"),
    (Type::VARCHAR, "character varying"),
    (Type::BPCHAR, "character"),
    (Type::BYTEA, "bytea"),
    (Type::DATE, "date"),
    (Type::TIME, "time without time zone"),
    (Type::TIMESTAMP, "timestamp without time zone"),
    (Type::TIMESTAMPTZ, "timestamp with time zone"),
    (Type::INTERVAL, "interval"),
    (Type::JSON, "json"),
    (Type::JSONB, "jsonb"),
    (Type::UUID, "uuid"),
];

fn described_type(field: &Field) -> DescribedType {
    let data_type = field.data_type();
    let pg = field_into_pg_type(&Arc::new(field.clone())).unwrap_or(Type::TEXT);
    // Array types are named `_<element>` in Postgres.
    let sql_name = if pg.name().starts_with('_') {
        "ARRAY".to_string()
    } else {
        SQL_NAMES.iter().find(|(t, _)| *t == pg).map(|(_, n)| n.to_string()).unwrap_or_else(|| pg.name().to_string())
    };
    // The declared modifier (`numeric(12,2)`, `varchar(40)`, `timestamp(3)`), -1 if none.
    let typmod = column_type::typmod(field);
    let (precision, radix, scale) = match data_type {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => (Some(16), Some(2), Some(0)),
        DataType::Int32 | DataType::UInt16 => (Some(32), Some(2), Some(0)),
        DataType::Int64 | DataType::UInt32 => (Some(64), Some(2), Some(0)),
        DataType::Float16 | DataType::Float32 => (Some(24), Some(2), None),
        DataType::Float64 => (Some(53), Some(2), None),
        // An unconstrained numeric has neither, as in Postgres.
        DataType::Decimal128(..) if typmod == -1 => (None, Some(10), None),
        DataType::Decimal128(..) => (Some((typmod - 4) >> 16), Some(10), Some((typmod - 4) & 0x7ff)),
        _ => (None, None, None),
    };
    let datetime_precision = match data_type {
        DataType::Date32 | DataType::Date64 => Some(0),
        DataType::Timestamp(..) | DataType::Time32(_) | DataType::Time64(_) if typmod >= 0 => Some(typmod),
        DataType::Timestamp(..) | DataType::Time32(_) | DataType::Time64(_) | DataType::Interval(_) | DataType::Duration(_) => Some(6),
        _ => None,
    };
    let character_length = column_type::varchar_length(field).and_then(|n| i32::try_from(n).ok());
    // Postgres: 4 bytes per character of a varchar(n) (UTF8's longest), 1 GB otherwise.
    let octet_length = match character_length {
        Some(n) => Some(n.saturating_mul(4)),
        None => matches!(data_type, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View).then_some(1_073_741_824),
    };
    DescribedType {
        data_type: sql_name,
        udt_name: pg.name().to_string(),
        character_length,
        octet_length,
        precision,
        radix,
        scale,
        datetime_precision,
    }
}
