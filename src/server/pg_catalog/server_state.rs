//! What IDEs ask about the server itself when they connect (DataGrip, DBeaver): when it
//! started, whether it is a standby, the current transaction id, locks, time zone names and
//! SSL status; and the `xmin` and ACL columns they read from `pg_namespace`,
//! `pg_tablespace` and `pg_database`. Velocity answers with what is true of it: one primary
//! server, no row locks, UTC, no per-object ACLs on these catalogs.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, IntervalMonthDayNanoArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, IntervalMonthDayNano, IntervalUnit, Schema, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::datasource::{MemTable, TableProvider, ViewTable};
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, Expr, Volatility, cast, create_udf, lit};
use datafusion::prelude::{SessionContext, col};

use crate::engine::Engine;

/// Tables of this module, by name.
pub const TABLES: &[&str] = &["pg_locks", "pg_timezone_names", "pg_timezone_abbrevs", "pg_stat_ssl"];

/// `pg_postmaster_start_time()`, `pg_is_in_recovery()`, `txid_current()` (the current tick)
/// and `age(xid)` (0: Velocity keeps no old transaction ids).
pub fn register_functions(ctx: &SessionContext, engine: &Engine) {
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or_default();
    ctx.register_udf(create_udf(
        "pg_postmaster_start_time",
        vec![],
        DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        Volatility::Stable,
        Arc::new(move |_| Ok(ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(Some(started), Some("+00:00".into()))))),
    ));
    ctx.register_udf(create_udf(
        "pg_is_in_recovery",
        vec![],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(false))))),
    ));
    let ticks = engine.clone();
    ctx.register_udf(create_udf(
        "txid_current",
        vec![],
        DataType::Int64,
        Volatility::Volatile,
        Arc::new(move |_| Ok(ColumnarValue::Scalar(ScalarValue::Int64(Some(ticks.current_tick() as i64))))),
    ));
    ctx.register_udf(create_udf(
        "age",
        vec![DataType::Int64],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Int32(Some(0))))),
    ));
}

fn table(fields: Vec<Field>, columns: impl FnOnce(&SchemaRef) -> Vec<ArrayRef>) -> Result<Arc<dyn TableProvider>> {
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let columns = columns(&schema);
    let batch = if columns.is_empty() { RecordBatch::new_empty(schema.clone()) } else { RecordBatch::try_new(schema.clone(), columns)? };
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

fn utc_offset() -> ArrayRef {
    Arc::new(IntervalMonthDayNanoArray::from(vec![IntervalMonthDayNano::new(0, 0, 0)]))
}

/// The table `name` of [`TABLES`].
pub fn table_named(name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    let interval = |n: &str| Field::new(n, DataType::Interval(IntervalUnit::MonthDayNano), true);
    let flag = |n: &str| Field::new(n, DataType::Boolean, true);
    let int = |n: &str| Field::new(n, DataType::Int32, true);
    Ok(Some(match name {
        // No row or table locks are visible: Velocity serializes writes in its engine.
        "pg_locks" => table(
            vec![
                text("locktype"),
                int("database"),
                int("relation"),
                Field::new("transactionid", DataType::Int64, true),
                int("pid"),
                text("mode"),
                flag("granted"),
            ],
            |_| Vec::new(),
        )?,
        // The server's only zone is UTC.
        "pg_timezone_names" => table(vec![text("name"), text("abbrev"), interval("utc_offset"), flag("is_dst")], |_| {
            vec![
                Arc::new(StringArray::from(vec!["UTC"])),
                Arc::new(StringArray::from(vec!["UTC"])),
                utc_offset(),
                Arc::new(BooleanArray::from(vec![false])),
            ]
        })?,
        "pg_timezone_abbrevs" => table(vec![text("abbrev"), interval("utc_offset"), flag("is_dst")], |_| {
            vec![Arc::new(StringArray::from(vec!["UTC"])), utc_offset(), Arc::new(BooleanArray::from(vec![false]))]
        })?,
        // Connections' TLS status is not tracked per backend: no rows.
        "pg_stat_ssl" => table(vec![int("pid"), flag("ssl"), text("version"), text("cipher"), int("bits")], |_| Vec::new())?,
        _ => return Ok(None),
    }))
}

/// `pg_namespace`, `pg_tablespace`, `pg_database` as datafusion-pg-catalog serves them, with
/// an `xmin` column (DataGrip's `state_number`; 1: the catalog is not versioned) and their
/// ACL column as a text array of NULLs (DataGrip unions `spcacl` with `datacl`).
pub fn with_xmin_and_acl(name: &str, inner: Arc<dyn TableProvider>) -> Result<Arc<dyn TableProvider>> {
    let schema = inner.schema();
    let acl_type = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    let mut columns: Vec<Expr> = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "nspacl" | "spcacl" | "datacl" => {
                cast(lit(ScalarValue::try_from(&acl_type).unwrap_or(ScalarValue::Null)), acl_type.clone()).alias(f.name())
            }
            other => col(format!("{name}.{other}")),
        })
        .collect();
    columns.push(lit(1i64).alias("xmin"));
    let plan = super::catalog_scan(name, inner)?.project(columns)?.build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}
