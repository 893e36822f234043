//! Primary keys in the catalogs clients reflect them from: one `pg_index` row, one
//! `pg_constraint` row (`contype = 'p'`) and one `pg_class` row (relkind `i`, named
//! `<table>_pkey`) per table with a primary key, and `pg_get_indexdef` /
//! `pg_get_constraintdef` to print them. SQLAlchemy's `get_pk_constraint`, pgjdbc's
//! `getPrimaryKeys` / `getIndexInfo` and psql's `\d` read these.
//!
//! The rows are views that join Velocity's keys to `pg_namespace` by name. The table, its
//! index and its constraint are Velocity's own objects: their oids are fixed offsets plus
//! the relation id (`catalog::relation_oid` for the table), so the functions can resolve
//! them without a catalog scan.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int16Builder, Int32Array, Int32Builder, ListBuilder, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::datasource::{TableProvider, ViewTable};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, JoinType, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility, cast, lit,
};
use datafusion::prelude::col;

use crate::catalog::{Relation, RelationKind};
use crate::engine::Engine;
use crate::server::system::{Fill, SystemTable};

/// `pg_class.oid` of a primary-key index is this plus the relation id.
pub const INDEX_OID_BASE: i64 = 1_000_000_000;
/// `pg_constraint.oid` of a primary key is this plus the relation id.
pub const CONSTRAINT_OID_BASE: i64 = 1_500_000_000;
/// `pg_am.oid` of `btree`, the access method the key indexes report.
const BTREE_OID: i32 = 403;

/// The relations whose primary key the catalogs show, with the key's attribute numbers.
fn keyed(engine: &Engine) -> Result<Vec<(Relation, Vec<i16>)>> {
    let catalog = engine.catalog();
    Ok(catalog
        .iter()
        .filter(|r| matches!(r.kind, RelationKind::Table | RelationKind::MaterializedView) && !r.primary_key.is_empty())
        .map(|r| (r.clone(), r.primary_key.iter().map(|i| *i as i16 + 1).collect()))
        .collect())
}

/// The name Postgres gives a table's primary key (and its index).
pub fn key_name(table: &str) -> String {
    format!("{table}_pkey")
}

/// `velocity_keys`: one row per primary key, the input of the views below.
pub fn keys_table(engine: &Engine) -> Arc<SystemTable> {
    let list = |item: DataType| DataType::List(Arc::new(Field::new("item", item, true)));
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("nspname", DataType::Utf8, false),
        Field::new("relname", DataType::Utf8, false),
        Field::new("relation_oid", DataType::Int32, false),
        Field::new("index_oid", DataType::Int32, false),
        Field::new("constraint_oid", DataType::Int32, false),
        Field::new("key_name", DataType::Utf8, false),
        Field::new("nkeys", DataType::Int16, false),
        Field::new("key", list(DataType::Int16), true),
        Field::new("opclass", list(DataType::Int32), true),
        Field::new("options", list(DataType::Int16), true),
    ]));
    let fill: Fill = Box::new(|engine: &Engine| {
        let rows = keyed(engine)?;
        let mut key = ListBuilder::new(Int16Builder::new());
        let mut opclass = ListBuilder::new(Int32Builder::new());
        let mut options = ListBuilder::new(Int16Builder::new());
        for (_, attnums) in &rows {
            key.append_value(attnums.iter().map(|a| Some(*a)));
            // No operator classes are modelled; 0 reads as "default".
            opclass.append_value(attnums.iter().map(|_| Some(0)));
            options.append_value(attnums.iter().map(|_| Some(0)));
        }
        Ok(vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "public"))) as ArrayRef,
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(r, _)| r.name.clone()))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|(r, _)| r.pg_oid() as i32))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|(r, _)| (INDEX_OID_BASE + r.id as i64) as i32))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|(r, _)| (CONSTRAINT_OID_BASE + r.id as i64) as i32))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(r, _)| key_name(&r.name)))),
            Arc::new(arrow::array::Int16Array::from_iter_values(rows.iter().map(|(_, k)| k.len() as i16))),
            Arc::new(key.finish()),
            Arc::new(opclass.finish()),
            Arc::new(options.finish()),
        ])
    });
    Arc::new(SystemTable::new(engine.clone(), schema, fill))
}

/// `velocity_key_columns`: one row per column of a primary key, with its position in the key.
pub fn key_columns_table(engine: &Engine) -> Arc<SystemTable> {
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("nspname", DataType::Utf8, false),
        Field::new("relname", DataType::Utf8, false),
        Field::new("index_oid", DataType::Int32, false),
        Field::new("position", DataType::Int16, false),
        Field::new("attnum", DataType::Int16, false),
    ]));
    let fill: Fill = Box::new(|engine: &Engine| {
        let rows: Vec<(Relation, i16, i16)> = keyed(engine)?
            .into_iter()
            .flat_map(|(r, key)| key.into_iter().enumerate().map(move |(i, a)| (r.clone(), i as i16 + 1, a)))
            .collect();
        Ok(vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "public"))) as ArrayRef,
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(r, _, _)| r.name.clone()))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|(r, _, _)| (INDEX_OID_BASE + r.id as i64) as i32))),
            Arc::new(arrow::array::Int16Array::from_iter_values(rows.iter().map(|(_, p, _)| *p))),
            Arc::new(arrow::array::Int16Array::from_iter_values(rows.iter().map(|(_, _, a)| *a))),
        ])
    });
    Arc::new(SystemTable::new(engine.clone(), schema, fill))
}

/// `pg_attribute` rows of the primary-key indexes (psql `\d t_pkey` lists them): each key
/// column's attribute, renumbered by its position in the key, under the index's oid.
pub fn index_attribute_rows(
    schema: &Schema,
    key_columns: &Arc<SystemTable>,
    pg_namespace: Arc<dyn TableProvider>,
    pg_class: Arc<dyn TableProvider>,
    pg_attribute: Arc<dyn TableProvider>,
) -> Result<LogicalPlan> {
    let plan = keys_with_oids(key_columns, pg_namespace, Some(pg_class))?;
    let attributes = super::catalog_scan("a", pg_attribute)?.build()?;
    let plan = plan.join_on(attributes, JoinType::Inner, vec![col("a.attrelid").eq(col("c.oid")), col("a.attnum").eq(col("k.attnum"))])?;
    project_as(plan, schema, |name| {
        Some(match name {
            "attrelid" => col("k.index_oid"),
            "attnum" => col("k.position"),
            other => col(format!("a.{other}")),
        })
    })
}

/// `velocity_keys k JOIN pg_namespace n ON k.nspname = n.nspname`, and `JOIN pg_class c`
/// (the keyed table) when `with_table`.
fn keys_with_oids(
    keys: &Arc<SystemTable>,
    pg_namespace: Arc<dyn TableProvider>,
    pg_class: Option<Arc<dyn TableProvider>>,
) -> Result<LogicalPlanBuilder> {
    let keys = super::catalog_scan("k", keys.clone())?;
    let namespaces = super::catalog_scan("n", pg_namespace)?.build()?;
    let mut plan = keys.join_on(namespaces, JoinType::Inner, vec![col("k.nspname").eq(col("n.nspname"))])?;
    if let Some(pg_class) = pg_class {
        let tables = super::catalog_scan("c", pg_class)?.build()?;
        plan = plan.join_on(
            tables,
            JoinType::Inner,
            vec![col("k.relname").eq(col("c.relname")), col("n.oid").eq(col("c.relnamespace")), col("c.relkind").not_eq(lit("i"))],
        )?;
    }
    Ok(plan)
}

/// A view with `schema`'s columns, each computed by `value(name)` or else a typed default
/// (0, false, '' or NULL), over `input`.
fn project_as(input: LogicalPlanBuilder, schema: &Schema, value: impl Fn(&str) -> Option<Expr>) -> Result<LogicalPlan> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let expr = value(f.name()).unwrap_or_else(|| default_value(f));
            // The column's metadata too (`pg.oid_alias`: its wire type), whatever the value's.
            let metadata = (!f.metadata().is_empty()).then(|| datafusion::common::metadata::FieldMetadata::from(f.metadata()));
            Ok(cast(expr, f.data_type().clone()).alias_with_metadata(f.name(), metadata))
        })
        .collect::<Result<Vec<_>>>()?;
    input.project(columns)?.build()
}

fn default_value(field: &Field) -> Expr {
    match field.data_type() {
        DataType::Boolean => lit(false),
        DataType::Utf8 if !field.is_nullable() => lit(""),
        DataType::Int16 | DataType::Int32 | DataType::Int64 if !field.is_nullable() => lit(0),
        DataType::Float32 | DataType::Float64 if !field.is_nullable() => lit(0.0),
        other => lit(ScalarValue::try_from(other).unwrap_or(ScalarValue::Null)),
    }
}

/// `pg_class` rows (relkind `i`) for the primary-key indexes, with `pg_class`'s schema.
pub fn index_class_rows(schema: &Schema, keys: &Arc<SystemTable>, pg_namespace: Arc<dyn TableProvider>) -> Result<LogicalPlan> {
    project_as(keys_with_oids(keys, pg_namespace, None)?, schema, |name| {
        Some(match name {
            "oid" | "relfilenode" => col("k.index_oid"),
            "relname" => col("k.key_name"),
            "relnamespace" => col("n.oid"),
            "relam" => lit(BTREE_OID),
            "relpages" => lit(1),
            "reltuples" => lit(0.0),
            "relpersistence" => lit("p"),
            "relkind" => lit("i"),
            "relnatts" => col("k.nkeys"),
            "relispopulated" => lit(true),
            "relreplident" => lit("n"),
            _ => return None,
        })
    })
}

/// `pg_index`: one row per primary key.
pub fn pg_index(keys: &Arc<SystemTable>, pg_namespace: Arc<dyn TableProvider>, schema: &Schema) -> Result<Arc<dyn TableProvider>> {
    let plan = project_as(keys_with_oids(keys, pg_namespace, None)?, schema, |name| {
        Some(match name {
            "indexrelid" => col("k.index_oid"),
            "indrelid" => col("k.relation_oid"),
            "indnatts" | "indnkeyatts" => col("k.nkeys"),
            "indisunique" | "indisprimary" | "indimmediate" | "indisvalid" | "indisready" | "indislive" => lit(true),
            "indkey" => col("k.key"),
            "indcollation" | "indclass" => col("k.opclass"),
            "indoption" => col("k.options"),
            _ => return None,
        })
    })?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}

/// The schema Velocity gives `pg_index`: Postgres's columns, with the vectors as arrays
/// (SQLAlchemy unnests `indkey`, psql and pgjdbc subscript it).
pub fn pg_index_schema() -> Schema {
    let list = |item: DataType| DataType::List(Arc::new(Field::new("item", item, true)));
    let mut fields = vec![oid_column("indexrelid"), oid_column("indrelid")];
    fields.extend(["indnatts", "indnkeyatts"].map(|n| Field::new(n, DataType::Int16, false)));
    fields.extend(
        [
            "indisunique",
            "indnullsnotdistinct",
            "indisprimary",
            "indisexclusion",
            "indimmediate",
            "indisclustered",
            "indisvalid",
            "indcheckxmin",
            "indisready",
            "indislive",
            "indisreplident",
        ]
        .map(|n| Field::new(n, DataType::Boolean, false)),
    );
    fields.push(Field::new("indkey", list(DataType::Int16), false));
    fields.push(Field::new("indcollation", list(DataType::Int32), false));
    fields.push(Field::new("indclass", list(DataType::Int32), false));
    fields.push(Field::new("indoption", list(DataType::Int16), false));
    fields.push(Field::new("indexprs", DataType::Utf8, true));
    fields.push(Field::new("indpred", DataType::Utf8, true));
    Schema::new(fields)
}

/// An `oid` column (Int32, `oid` on the wire as in Postgres).
fn oid_column(name: &str) -> Field {
    use datafusion_postgres::datafusion_pg_catalog::pg_catalog::oid_field;
    oid_field::oid_field(name, oid_field::kind::OID, false)
}

/// The schema Velocity gives `pg_constraint`: Postgres's columns, with the key columns as
/// arrays (SQLAlchemy and JDBC tools unnest and subscript `conkey`).
pub fn pg_constraint_schema() -> Schema {
    let list = |item: DataType| DataType::List(Arc::new(Field::new("item", item, true)));
    let boolean = |n: &str| Field::new(n, DataType::Boolean, false);
    let text = |n: &str| Field::new(n, DataType::Utf8, false);
    let oid = oid_column;
    Schema::new(vec![
        oid("oid"),
        text("conname"),
        oid("connamespace"),
        text("contype"),
        boolean("condeferrable"),
        boolean("condeferred"),
        boolean("convalidated"),
        oid("conrelid"),
        oid("contypid"),
        oid("conindid"),
        oid("conparentid"),
        oid("confrelid"),
        text("confupdtype"),
        text("confdeltype"),
        text("confmatchtype"),
        boolean("conislocal"),
        Field::new("coninhcount", DataType::Int16, false),
        boolean("connoinherit"),
        Field::new("conkey", list(DataType::Int16), true),
        Field::new("confkey", list(DataType::Int16), true),
        Field::new("conpfeqop", list(DataType::Int32), true),
        Field::new("conppeqop", list(DataType::Int32), true),
        Field::new("conffeqop", list(DataType::Int32), true),
        Field::new("confdelsetcols", list(DataType::Int16), true),
        Field::new("conexclop", list(DataType::Int32), true),
        Field::new("conbin", DataType::Utf8, true),
    ])
}

/// `pg_constraint`: one `contype = 'p'` row per primary key.
pub fn pg_constraint(keys: &Arc<SystemTable>, pg_namespace: Arc<dyn TableProvider>) -> Result<Arc<dyn TableProvider>> {
    let plan = project_as(keys_with_oids(keys, pg_namespace, None)?, &pg_constraint_schema(), |name| {
        Some(match name {
            "oid" => col("k.constraint_oid"),
            "conname" => col("k.key_name"),
            "connamespace" => col("n.oid"),
            "contype" => lit("p"),
            "convalidated" | "conislocal" | "connoinherit" => lit(true),
            "conrelid" => col("k.relation_oid"),
            "conindid" => col("k.index_oid"),
            "confupdtype" | "confdeltype" | "confmatchtype" => lit(" "),
            "conkey" => col("k.key"),
            _ => return None,
        })
    })?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}

/// The relation an index or constraint oid belongs to, if it is one of Velocity's keys.
fn relation_of(engine: &Engine, oid: i64, base: i64) -> Result<Option<Relation>> {
    let Some(id) = oid.checked_sub(base).filter(|id| (0..=u32::MAX as i64).contains(id)) else { return Ok(None) };
    let catalog = engine.catalog();
    Ok(catalog.by_id(id as u32).filter(|r| !r.primary_key.is_empty()).cloned())
}

/// An identifier as Postgres prints it: bare when it is lower case, quoted otherwise.
pub fn quote_ident(name: &str) -> String {
    let bare = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if bare { name.to_string() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

fn key_columns(relation: &Relation) -> Vec<String> {
    relation.primary_key.iter().map(|i| quote_ident(relation.schema.field(*i).name())).collect()
}

/// `pg_get_indexdef(index_oid [, column, pretty])` and `pg_get_constraintdef(oid [, pretty])`
/// for Velocity's primary keys; NULL for any other oid.
pub struct KeyDefinition {
    engine: Engine,
    index: bool,
    signature: Signature,
}

impl std::fmt::Debug for KeyDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDefinition").field("index", &self.index).finish()
    }
}

impl PartialEq for KeyDefinition {
    fn eq(&self, other: &KeyDefinition) -> bool {
        self.index == other.index
    }
}
impl Eq for KeyDefinition {}
impl std::hash::Hash for KeyDefinition {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.index.hash(state)
    }
}

impl KeyDefinition {
    /// `pg_get_indexdef` when `index`, else `pg_get_constraintdef`.
    pub fn new(engine: Engine, index: bool) -> KeyDefinition {
        KeyDefinition { engine, index, signature: Signature::variadic_any(Volatility::Volatile) }
    }

    fn definition(&self, oid: i64, column: i64) -> Result<Option<String>> {
        if self.index {
            let Some(r) = relation_of(&self.engine, oid, INDEX_OID_BASE)? else { return Ok(None) };
            let columns = key_columns(&r);
            if column > 0 {
                return Ok(columns.get(column as usize - 1).cloned().or(Some(String::new())));
            }
            Ok(Some(format!(
                "CREATE UNIQUE INDEX {} ON public.{} USING btree ({})",
                quote_ident(&key_name(&r.name)),
                quote_ident(&r.name),
                columns.join(", ")
            )))
        } else {
            let Some(r) = relation_of(&self.engine, oid, CONSTRAINT_OID_BASE)? else { return Ok(None) };
            Ok(Some(format!("PRIMARY KEY ({})", key_columns(&r).join(", "))))
        }
    }
}

impl ScalarUDFImpl for KeyDefinition {
    fn name(&self) -> &str {
        if self.index { "pg_get_indexdef" } else { "pg_get_constraintdef" }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = args.args.iter().map(|a| a.to_array(rows)).collect::<Result<Vec<_>>>()?;
        let as_int64 = |a: &ArrayRef| -> Result<arrow::array::Int64Array> {
            let cast = arrow::compute::cast(a, &DataType::Int64)?;
            Ok(datafusion::common::cast::as_int64_array(&cast)?.clone())
        };
        let Some(first) = arrays.first() else {
            return Err(DataFusionError::Plan(format!("{}() needs an oid", self.name())));
        };
        let oids = as_int64(first)?;
        let columns = match (self.index, arrays.get(1)) {
            (true, Some(c)) => Some(as_int64(c)?),
            _ => None,
        };
        let mut out = Vec::with_capacity(rows);
        for i in 0..rows {
            if oids.is_null(i) {
                out.push(None);
                continue;
            }
            let column = columns.as_ref().map_or(0, |c| if c.is_null(i) { 0 } else { c.value(i) });
            out.push(self.definition(oids.value(i), column)?);
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
    }
}
