//! `pg_attribute.atttypid` and `atttypmod` of Velocity's columns as their declared types give
//! them: `varchar` (1043) with its length, `numeric(12,2)`, `timestamp(3)`, `json` (114),
//! `jsonb` (3802). datafusion-pg-catalog derives both from the Arrow type alone (text, -1);
//! the declared type lives in the field's metadata (`catalog::column_type`).

use std::sync::Arc;

use arrow::array::{Array, Int32Array};
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, JoinType, LogicalPlanBuilder, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::col;

use crate::catalog::{RelationKind, column_type};
use crate::engine::Engine;

/// Which `pg_attribute` column a [`DeclaredType`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Column {
    TypeOid,
    TypeModifier,
    NotNull,
}

/// `velocity_atttypid(nspname, relname, attname, atttypid)` and
/// `velocity_atttypmod(nspname, relname, attname, atttypmod)`: the declared type's value
/// for a column of a Velocity relation in `public`, the given one otherwise. The result keeps
/// the field (and so the `oid` wire type) of the last argument.
/// `velocity_attnotnull(nspname, relname, attname, attnotnull)`: false for a column of a
/// materialized or plain view (Postgres keeps no NOT NULL for them, whatever the query
/// guarantees), the given one otherwise.
pub struct DeclaredType {
    engine: Engine,
    column: Column,
    signature: Signature,
}

impl std::fmt::Debug for DeclaredType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeclaredType").field("column", &self.column).finish()
    }
}

impl PartialEq for DeclaredType {
    fn eq(&self, other: &DeclaredType) -> bool {
        self.column == other.column
    }
}
impl Eq for DeclaredType {}
impl std::hash::Hash for DeclaredType {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.column.hash(state)
    }
}

/// The declared type oid of `field`, if it is not what its Arrow type maps to.
fn declared_type_oid(field: &Field) -> Option<i32> {
    match column_type::pg_type_name(field) {
        Some("varchar") => Some(1043),
        Some("jsonb") => Some(3802),
        Some("uuid") => Some(2950),
        _ if crate::functions::json::is_json(field) => Some(114),
        _ => None,
    }
}

impl ScalarUDFImpl for DeclaredType {
    fn name(&self) -> &str {
        match self.column {
            Column::TypeOid => "velocity_atttypid",
            Column::TypeModifier => "velocity_atttypmod",
            Column::NotNull => "velocity_attnotnull",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(args.get(3).cloned().unwrap_or(DataType::Int32))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        args.arg_fields.get(3).cloned().ok_or_else(|| DataFusionError::Plan(format!("{} takes 4 arguments", self.name())))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let text = |i: usize| datafusion::common::cast::as_string_array(&arrays[i]).cloned();
        let (schemas, relations, names) = (text(0)?, text(1)?, text(2)?);
        let catalog = self.engine.catalog();
        let relation = |i: usize| {
            (!schemas.is_null(i) && schemas.value(i) == "public" && !relations.is_null(i))
                .then(|| catalog.get(relations.value(i)))
                .flatten()
        };
        if self.column == Column::NotNull {
            let given = datafusion::common::cast::as_boolean_array(&arrays[3])?;
            let out: arrow::array::BooleanArray = (0..given.len())
                .map(|i| {
                    let view = relation(i).is_some_and(|r| matches!(r.kind, RelationKind::MaterializedView | RelationKind::View));
                    if view { Some(false) } else { given.is_valid(i).then(|| given.value(i)) }
                })
                .collect();
            return Ok(ColumnarValue::Array(Arc::new(out)));
        }
        let given = datafusion::common::cast::as_int32_array(&arrays[3])?;
        let out: Int32Array = (0..given.len())
            .map(|i| {
                let declared =
                    relation(i).and_then(|r| r.schema.field_with_name(names.value(i)).ok().cloned()).and_then(|f| match self.column {
                        Column::TypeOid => declared_type_oid(&f),
                        Column::TypeModifier => Some(column_type::typmod(&f)).filter(|t| *t != -1),
                        Column::NotNull => None,
                    });
                declared.or_else(|| given.is_valid(i).then(|| given.value(i)))
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `velocity_atttypid`, `velocity_atttypmod` and `velocity_attnotnull`.
pub fn udfs(engine: &Engine) -> (Arc<ScalarUDF>, Arc<ScalarUDF>, Arc<ScalarUDF>) {
    let udf = |column| {
        Arc::new(ScalarUDF::from(DeclaredType { engine: engine.clone(), column, signature: Signature::any(4, Volatility::Volatile) }))
    };
    (udf(Column::TypeOid), udf(Column::TypeModifier), udf(Column::NotNull))
}

/// datafusion-pg-catalog's `pg_attribute` with `atttypid` and `atttypmod` as declared:
/// `pg_attribute a LEFT JOIN pg_class c ON a.attrelid = c.oid LEFT JOIN pg_namespace n ON
/// c.relnamespace = n.oid`, projected back to `pg_attribute`'s columns, with `attrelid` as
/// Velocity's oid of the relation (`velocity_reloid`).
pub fn declared(
    udfs: &(Arc<ScalarUDF>, Arc<ScalarUDF>, Arc<ScalarUDF>),
    reloid: &Arc<ScalarUDF>,
    pg_attribute: Arc<dyn TableProvider>,
    pg_class: Arc<dyn TableProvider>,
    pg_namespace: Arc<dyn TableProvider>,
) -> Result<LogicalPlanBuilder> {
    let schema: Arc<Schema> = pg_attribute.schema();
    let classes = super::catalog_scan("velocity_c", pg_class)?.build()?;
    let namespaces = super::catalog_scan("velocity_n", pg_namespace)?.build()?;
    let plan = super::catalog_scan("pg_attribute", pg_attribute)?
        .join_on(classes, JoinType::Left, vec![col("pg_attribute.attrelid").eq(col("velocity_c.oid"))])?
        .join_on(namespaces, JoinType::Left, vec![col("velocity_c.relnamespace").eq(col("velocity_n.oid"))])?;
    let (typid, typmod, notnull) = udfs;
    let columns: Vec<Expr> = schema
        .fields()
        .iter()
        .map(|f| {
            let own = col(format!("pg_attribute.{}", f.name()));
            let udf = match f.name().as_str() {
                "attrelid" => {
                    return reloid.call(vec![col("velocity_n.nspname"), col("velocity_c.relname"), own]).alias(f.name());
                }
                "atttypid" => typid,
                "atttypmod" => typmod,
                "attnotnull" => notnull,
                _ => return own,
            };
            udf.call(vec![col("velocity_n.nspname"), col("velocity_c.relname"), col("pg_attribute.attname"), own]).alias(f.name())
        })
        .collect();
    plan.project(columns)
}
