//! Velocity's additions to datafusion-pg-catalog's `pg_catalog`, so clients see what Velocity
//! has: materialized views are relkind `m` in `pg_class` (psql `\dm`, SQLAlchemy
//! `get_materialized_view_names`, JDBC `MATERIALIZED VIEW`) and rows of `pg_matviews`, plain
//! views are rows of `pg_views`, and `version()` names Velocity.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::SchemaProvider;
use datafusion::common::ScalarValue;
use datafusion::datasource::{TableProvider, ViewTable, provider_as_source};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf, lit, when,
};
use datafusion::prelude::{SessionContext, col};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

use super::system::{Fill, SystemTable};

mod attributes;
mod keys;
mod relation_oids;
mod server_state;
use crate::catalog::RelationKind;
use crate::engine::Engine;

/// Name of the function that turns `pg_class.relkind` `v` into `m` for materialized views.
const RELKIND_UDF: &str = "velocity_relkind";
/// Name of the function that sets `pg_class.relhasindex` for tables with a primary key.
const RELHASINDEX_UDF: &str = "velocity_relhasindex";
/// Name of the function that fills `pg_class.relacl` from the grants on a relation.
const RELACL_UDF: &str = "velocity_relacl";

/// Replace the `pg_catalog` schema with one that reports materialized views, and register
/// `version()`.
pub fn register(ctx: &SessionContext, engine: &Engine) -> datafusion::error::Result<()> {
    let version = super::auth::version_string();
    ctx.register_udf(create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(version.clone()))))),
    ));
    // psql `\df` and `\d+` of a view call these; Velocity defines no functions of its own
    // and keeps view definitions in `pg_matviews`.
    ctx.register_udf(create_udf(
        "pg_function_is_visible",
        vec![DataType::Int64],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))),
    ));
    for name in ["pg_get_function_result", "pg_get_function_arguments"] {
        ctx.register_udf(create_udf(
            name,
            vec![DataType::Int64],
            DataType::Utf8,
            Volatility::Stable,
            Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(String::new()))))),
        ));
    }
    ctx.register_udf(create_udf(
        "pg_get_viewdef",
        vec![DataType::Int64, DataType::Boolean],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(String::new()))))),
    ));
    // Comments are not stored; types Velocity lacks (hstore, ...) resolve to NULL, which is
    // how psycopg's and SQLAlchemy's type probes learn they are absent.
    for (name, second) in [("col_description", DataType::Int64), ("obj_description", DataType::Utf8), ("shobj_description", DataType::Utf8)]
    {
        ctx.register_udf(create_udf(
            name,
            vec![DataType::Int64, second],
            DataType::Utf8,
            Volatility::Stable,
            Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))),
        ));
    }
    ctx.register_udf(create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int64,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Int64(None)))),
    ));
    // SQLAlchemy's column reflection asks for identity/serial/collation details Velocity
    // does not have; these answer NULL ("none") and visible.
    ctx.register_udf(ScalarUDF::from(NullFunction::new("json_build_object", Signature::variadic_any(Volatility::Stable), DataType::Utf8)));
    ctx.register_udf(ScalarUDF::from(NullFunction::new("pg_get_serial_sequence", Signature::any(2, Volatility::Stable), DataType::Utf8)));
    ctx.register_udf(create_udf(
        "pg_collation_is_visible",
        vec![DataType::Int64],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))),
    ));
    ctx.register_udf(ScalarUDF::from(CurrentSetting::new()));
    server_state::register_functions(ctx, engine);
    // psql `\dt+`, `\dm+`: a table's or materialized view's size is the bytes of its stored
    // rows (keys and values, before RocksDB compresses them; operator state not counted).
    // Clients pass an oid, which only `pg_class` maps to a name, so `client_queries` turns
    // `pg_table_size(c.oid)` into `velocity_relation_size(c.relname)`; other arguments are
    // unknown sizes (NULL). `pg_size_pretty` formats any size as Postgres does.
    let size_engine = engine.clone();
    ctx.register_udf(create_udf(
        "velocity_relation_size",
        vec![DataType::Utf8],
        DataType::Int64,
        Volatility::Volatile,
        Arc::new(move |args| relation_size(&size_engine, args)),
    ));
    for name in ["pg_table_size", "pg_relation_size", "pg_total_relation_size", "pg_indexes_size"] {
        ctx.register_udf(ScalarUDF::from(NullFunction::new(name, Signature::any(1, Volatility::Volatile), DataType::Int64)));
    }
    ctx.register_udf(create_udf(
        "pg_size_pretty",
        vec![DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let sizes = datafusion::common::cast::as_int64_array(&arrays[0])?;
            Ok(ColumnarValue::Array(Arc::new(sizes.iter().map(|s| s.map(size_pretty)).collect::<StringArray>())))
        }),
    ));
    // psql `\dT`: Velocity defines no types of its own, so every type is pg_catalog's.
    ctx.register_udf(create_udf(
        "pg_type_is_visible",
        vec![DataType::Int64],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))),
    ));
    // psql `\db`: the built-in tablespaces live in the data directory, reported as '' by
    // Postgres too.
    ctx.register_udf(create_udf(
        "pg_tablespace_location",
        vec![DataType::Int64],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(String::new()))))),
    ));
    let relkind_engine = engine.clone();
    let relkind_udf = Arc::new(create_udf(
        RELKIND_UDF,
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Volatile,
        Arc::new(move |args| relkind(&relkind_engine, args)),
    ));

    // psql `\dt`, `\dm` show owners with `pg_get_userbyid(c.relowner)`, which
    // `client_queries` turns into `velocity_relowner(c.relname)`.
    let owner_engine = engine.clone();
    ctx.register_udf(create_udf(
        "velocity_relowner",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Volatile,
        Arc::new(move |args| relowner(&owner_engine, args)),
    ));
    let acl_engine = engine.clone();
    let relacl_udf = Arc::new(create_udf(
        RELACL_UDF,
        vec![DataType::Utf8],
        text_array(),
        Volatility::Volatile,
        Arc::new(move |args| relacl(&acl_engine, args)),
    ));

    let catalog = ctx.catalog(super::DATABASE).ok_or_else(|| DataFusionError::Internal(format!("catalog {} missing", super::DATABASE)))?;
    let inner = catalog.schema("pg_catalog").ok_or_else(|| DataFusionError::Internal("pg_catalog schema missing".into()))?;
    ctx.register_udf(ScalarUDF::from(keys::KeyDefinition::new(engine.clone(), true)));
    ctx.register_udf(ScalarUDF::from(keys::KeyDefinition::new(engine.clone(), false)));
    let hasindex_engine = engine.clone();
    let relhasindex_udf = Arc::new(create_udf(
        RELHASINDEX_UDF,
        vec![DataType::Utf8],
        DataType::Boolean,
        Volatility::Volatile,
        Arc::new(move |args| relhasindex(&hasindex_engine, args)),
    ));
    catalog.register_schema(
        "pg_catalog",
        Arc::new(VelocityPgCatalog {
            inner,
            relkind_udf,
            relhasindex_udf,
            relacl_udf,
            matviews: matviews_table(engine),
            views: views_table(engine),
            roles: RoleSource(engine.clone()),
            keys: keys::keys_table(engine),
            key_columns: keys::key_columns_table(engine),
            attribute_udfs: attributes::udfs(engine),
            reloid_udf: relation_oids::RelationOid::udf(engine),
        }),
    )?;
    Ok(())
}

/// `velocity_relation_size(relname)`: bytes of the stored rows of a table or materialized
/// view, NULL for any other name.
fn relation_size(engine: &Engine, args: &[ColumnarValue]) -> Result<ColumnarValue> {
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let names = datafusion::common::cast::as_string_array(&arrays[0])?;
    let ids: Vec<Option<u32>> = {
        let catalog = engine.catalog();
        names
            .iter()
            .map(|n| {
                n.and_then(|n| catalog.get(n))
                    .filter(|r| matches!(r.kind, RelationKind::Table | RelationKind::MaterializedView))
                    .map(|r| r.id)
            })
            .collect()
    };
    let mut sizes = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(id) = id else {
            sizes.push(None);
            continue;
        };
        let mut bytes = 0i64;
        engine
            .store()
            .for_each_prefix(&crate::engine::contents::Contents::prefix(id), |k, v| {
                bytes += (k.len() + v.len()) as i64;
                Ok(())
            })
            .map_err(|e| DataFusionError::External(e.into()))?;
        sizes.push(Some(bytes));
    }
    Ok(ColumnarValue::Array(Arc::new(arrow::array::Int64Array::from(sizes))))
}

/// `velocity_relowner(relname)`: the owner of a Velocity relation, NULL for other names.
fn relowner(engine: &Engine, args: &[ColumnarValue]) -> Result<ColumnarValue> {
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let names = datafusion::common::cast::as_string_array(&arrays[0])?;
    let catalog = engine.catalog();
    let out: StringArray = names.iter().map(|n| n.and_then(|n| catalog.get(n)).map(|r| r.ownership.owner.clone())).collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
}

/// `velocity_relacl(relname)`: the relation's grants as `aclitem` text (`alice=r/velocity`),
/// NULL while nothing is granted, as in Postgres.
fn relacl(engine: &Engine, args: &[ColumnarValue]) -> Result<ColumnarValue> {
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let names = datafusion::common::cast::as_string_array(&arrays[0])?;
    let catalog = engine.catalog();
    let mut out = arrow::array::ListBuilder::new(arrow::array::StringBuilder::new());
    for name in names.iter() {
        match name.and_then(|n| catalog.get(n)).and_then(|r| r.ownership.acl(r.kind)) {
            Some(items) => {
                for item in items {
                    out.values().append_value(item);
                }
                out.append(true);
            }
            None => out.append(false),
        }
    }
    Ok(ColumnarValue::Array(Arc::new(out.finish())))
}

fn text_array() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// `pg_roles` and `pg_authid` (in datafusion-pg-catalog's `schema`): one row per role. No
/// password is shown: `pg_roles` masks it, as Postgres does, and `pg_authid` holds none.
fn roles_table(engine: &Engine, schema: SchemaRef) -> Arc<SystemTable> {
    let columns = schema.clone();
    let fill: Fill = Box::new(move |engine: &Engine| {
        let catalog = engine.catalog();
        let bootstrap = catalog.bootstrap_role().to_string();
        let roles: Vec<_> = catalog.roles().collect();
        let n = roles.len();
        let flags =
            |f: &dyn Fn(&crate::catalog::Role) -> bool| Arc::new(BooleanArray::from_iter(roles.iter().map(|r| Some(f(r))))) as ArrayRef;
        // Oid 10 for the bootstrap superuser, as Postgres gives its first role.
        let mut next = 16384i64;
        let oids: Vec<i64> = roles
            .iter()
            .map(|r| {
                if r.name == bootstrap {
                    10
                } else {
                    next += 1;
                    next
                }
            })
            .collect();
        columns
            .fields()
            .iter()
            .map(|f| {
                let array: ArrayRef = match f.name().as_str() {
                    "rolname" => Arc::new(StringArray::from_iter_values(roles.iter().map(|r| r.name.clone()))),
                    "rolsuper" | "rolcreaterole" | "rolcreatedb" | "rolbypassrls" => flags(&|r| r.superuser),
                    "rolinherit" => flags(&|_| true),
                    "rolcanlogin" => flags(&|r| r.login),
                    "rolreplication" => flags(&|_| false),
                    "rolconnlimit" => Arc::new(arrow::array::Int64Array::from(vec![-1i64; n])),
                    "rolpassword" if columns.field_with_name("rolconfig").is_ok() => {
                        Arc::new(StringArray::from_iter(roles.iter().map(|r| r.secret.as_ref().map(|_| "********"))))
                    }
                    "oid" => Arc::new(arrow::array::Int64Array::from(oids.clone())),
                    _ => return Ok(arrow::array::new_null_array(f.data_type(), n)),
                };
                Ok(arrow::compute::cast(&array, f.data_type())?)
            })
            .collect()
    });
    Arc::new(SystemTable::new(engine.clone(), schema, fill))
}

/// `velocity_relhasindex(relname)`: whether the relation has a primary key (and so an index).
fn relhasindex(engine: &Engine, args: &[ColumnarValue]) -> Result<ColumnarValue> {
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let names = datafusion::common::cast::as_string_array(&arrays[0])?;
    let keyed: HashSet<String> = {
        let catalog = engine.catalog();
        catalog.iter().filter(|r| !r.primary_key.is_empty()).map(|r| r.name.clone()).collect()
    };
    let out: BooleanArray = names.iter().map(|n| Some(n.is_some_and(|n| keyed.contains(n)))).collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
}

/// `velocity_relkind(relname, relkind)`: `m` for a view that is one of Velocity's
/// materialized views, otherwise `relkind` unchanged.
fn relkind(engine: &Engine, args: &[ColumnarValue]) -> Result<ColumnarValue> {
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let as_str = |a: &ArrayRef| {
        a.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| DataFusionError::Internal(format!("{RELKIND_UDF}: expected Utf8")))
    };
    let (names, kinds) = (as_str(&arrays[0])?, as_str(&arrays[1])?);
    let matviews: HashSet<String> = {
        let catalog = engine.catalog();
        catalog.iter().filter(|r| r.kind == RelationKind::MaterializedView).map(|r| r.name.clone()).collect()
    };
    let out: StringArray = (0..kinds.len())
        .map(|i| {
            if kinds.is_null(i) {
                return None;
            }
            let kind = kinds.value(i);
            Some(if kind == "v" && !names.is_null(i) && matviews.contains(names.value(i)) { "m" } else { kind })
        })
        .collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
}

/// Where `pg_roles` reads the roles from.
struct RoleSource(Engine);

impl std::fmt::Debug for RoleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoleSource")
    }
}

/// `pg_catalog` as datafusion-pg-catalog serves it, except `pg_class` (relkind `m`),
/// `pg_matviews` (Velocity's materialized views) and `pg_views` (its plain views).
#[derive(Debug)]
struct VelocityPgCatalog {
    inner: Arc<dyn SchemaProvider>,
    relkind_udf: Arc<ScalarUDF>,
    relhasindex_udf: Arc<ScalarUDF>,
    relacl_udf: Arc<ScalarUDF>,
    matviews: Arc<SystemTable>,
    views: Arc<SystemTable>,
    roles: RoleSource,
    keys: Arc<SystemTable>,
    key_columns: Arc<SystemTable>,
    /// `velocity_atttypid`, `velocity_atttypmod`, `velocity_attnotnull`: declared types and
    /// nullability in `pg_attribute`.
    attribute_udfs: (Arc<ScalarUDF>, Arc<ScalarUDF>, Arc<ScalarUDF>),
    /// `velocity_reloid`: Velocity's own `pg_class.oid` for its relations.
    reloid_udf: Arc<ScalarUDF>,
}

#[async_trait]
impl SchemaProvider for VelocityPgCatalog {
    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match name {
            "pg_class" => {
                let Some(pg_class) = self.inner.table(name).await? else { return Ok(None) };
                let Some(pg_namespace) = self.inner.table("pg_namespace").await? else { return Ok(None) };
                let mut fields: Vec<Field> = pg_class.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.extend(pg_class_added_columns());
                let indexes = keys::index_class_rows(&Schema::new(fields), &self.keys, pg_namespace.clone())?;
                let udfs = ClassUdfs {
                    relkind: &self.relkind_udf,
                    relhasindex: &self.relhasindex_udf,
                    relacl: &self.relacl_udf,
                    reloid: &self.reloid_udf,
                };
                Ok(Some(pg_class_with_matviews(pg_class, pg_namespace, &udfs, indexes)?))
            }
            "pg_attribute" => {
                let (Some(inner), Some(pg_class), Some(pg_namespace)) =
                    (self.inner.table(name).await?, self.inner.table("pg_class").await?, self.inner.table("pg_namespace").await?)
                else {
                    return Ok(None);
                };
                let schema = inner.schema();
                let indexes =
                    keys::index_attribute_rows(&schema, &self.key_columns, pg_namespace.clone(), pg_class.clone(), inner.clone())?;
                let plan =
                    attributes::declared(&self.attribute_udfs, &self.reloid_udf, inner, pg_class, pg_namespace)?.union(indexes)?.build()?;
                Ok(Some(Arc::new(ViewTable::new(plan, None))))
            }
            "pg_index" | "pg_constraint" => {
                let Some(pg_namespace) = self.inner.table("pg_namespace").await? else { return Ok(None) };
                Ok(Some(if name == "pg_index" {
                    keys::pg_index(&self.keys, pg_namespace, &keys::pg_index_schema())?
                } else {
                    keys::pg_constraint(&self.keys, pg_namespace)?
                }))
            }
            "pg_matviews" => Ok(Some(self.matviews.clone())),
            "pg_views" => Ok(Some(self.views.clone())),
            "pg_roles" | "pg_authid" => {
                let Some(inner) = self.inner.table(name).await? else { return Ok(None) };
                Ok(Some(roles_table(&self.roles.0, inner.schema())))
            }
            "pg_settings" => {
                let Some(inner) = self.inner.table(name).await? else { return Ok(None) };
                Ok(Some(pg_settings(inner.schema())?))
            }
            "pg_namespace" | "pg_tablespace" | "pg_database" => {
                let Some(inner) = self.inner.table(name).await? else { return Ok(None) };
                Ok(Some(server_state::with_xmin_and_acl(name, inner)?))
            }
            _ if server_state::TABLES.contains(&name) => server_state::table_named(name),
            _ => self.inner.table(name).await,
        }
    }

    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        names.extend(server_state::TABLES.iter().map(|t| t.to_string()));
        names
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name) || server_state::TABLES.contains(&name)
    }
}

/// A scan of a catalog table inside one of the views below, named `pg_catalog.{alias}` (columns
/// refer to it as `{alias}.column`). The schema keeps it from being taken for a user's
/// relation of the same name: the dataflow planner resolves unqualified scans by name, so a
/// bare `pg_class` or `a` here would read the user's `public.pg_class` or `public.a` when a
/// materialized view reads this view.
pub(super) fn catalog_scan(alias: &str, provider: Arc<dyn TableProvider>) -> Result<LogicalPlanBuilder> {
    LogicalPlanBuilder::scan(datafusion::common::TableReference::partial("pg_catalog", alias), provider_as_source(provider), None)
}

/// `pg_am.oid` of `heap`.
const HEAP_AM_OID: i32 = 2;

/// The functions that rewrite `pg_class` columns.
struct ClassUdfs<'a> {
    relkind: &'a Arc<ScalarUDF>,
    relhasindex: &'a Arc<ScalarUDF>,
    relacl: &'a Arc<ScalarUDF>,
    reloid: &'a Arc<ScalarUDF>,
}

/// `pg_class` with `oid` passed through `velocity_reloid`, `relkind` through
/// `velocity_relkind` and `relhasindex` through `velocity_relhasindex`, plus the rows of the
/// primary-key indexes, as a view over the original (left-joined to `pg_namespace` for the
/// schema name).
fn pg_class_with_matviews(
    pg_class: Arc<dyn TableProvider>,
    pg_namespace: Arc<dyn TableProvider>,
    udfs: &ClassUdfs,
    indexes: datafusion::logical_expr::LogicalPlan,
) -> Result<Arc<dyn TableProvider>> {
    let schema = pg_class.schema();
    let own = |name: &str| col(format!("pg_class.{name}"));
    let columns: Vec<Expr> = schema
        .fields()
        .iter()
        .map(|f| {
            Ok(match f.name().as_str() {
                "oid" => udfs.reloid.call(vec![col("velocity_n.nspname"), own("relname"), own("oid")]).alias("oid"),
                "relkind" => udfs.relkind.call(vec![own("relname"), own("relkind")]).alias("relkind"),
                "relhasindex" => udfs.relhasindex.call(vec![own("relname")]).alias("relhasindex"),
                // Tables and materialized views are stored in rows: heap's access method, as psql's
                // `\dt+`, `\dm+` and `\d+` show it.
                "relam" => {
                    let relkind = udfs.relkind.call(vec![own("relname"), own("relkind")]);
                    let heap = when(relkind.in_list(vec![lit("r"), lit("m")], false), lit(HEAP_AM_OID)).otherwise(lit(0))?;
                    datafusion::logical_expr::cast(heap, f.data_type().clone()).alias("relam")
                }
                name => own(name).alias(name),
            })
        })
        .chain(pg_class_added_columns().into_iter().map(|f| {
            if f.name() == "relacl" {
                return Ok(udfs.relacl.call(vec![own("relname")]).alias("relacl"));
            }
            let null = ScalarValue::try_from(f.data_type()).unwrap_or(ScalarValue::Null);
            Ok(lit(null).alias(f.name()))
        }))
        .collect::<Result<_>>()?;
    let namespaces = catalog_scan("velocity_n", pg_namespace)?.build()?;
    let plan = catalog_scan("pg_class", pg_class)?
        .join_on(namespaces, datafusion::logical_expr::JoinType::Left, vec![own("relnamespace").eq(col("velocity_n.oid"))])?
        .project(columns)?
        .union(indexes)?
        .build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}

/// Columns of Postgres's `pg_class` that datafusion-pg-catalog lacks and clients select:
/// `reloptions` (SQLAlchemy's `get_indexes`), NULL as in a Postgres with no storage
/// options, and `relacl` (psql `\dp`), from the grants on the relation.
fn pg_class_added_columns() -> Vec<Field> {
    vec![Field::new("reloptions", text_array(), true), Field::new("relacl", text_array(), true)]
}

/// `pg_views`: one row per plain view, with its defining query.
fn views_table(engine: &Engine) -> Arc<SystemTable> {
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("schemaname", DataType::Utf8, true),
        Field::new("viewname", DataType::Utf8, true),
        Field::new("viewowner", DataType::Utf8, true),
        Field::new("definition", DataType::Utf8, true),
    ]));
    let fill: Fill = Box::new(|engine: &Engine| {
        let catalog = engine.catalog();
        let views: Vec<_> = catalog.iter().filter(|r| r.kind == RelationKind::View).collect();
        Ok(vec![
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n("public", views.len()))) as ArrayRef,
            Arc::new(StringArray::from_iter_values(views.iter().map(|r| r.name.clone()))),
            Arc::new(StringArray::from_iter_values(views.iter().map(|r| r.ownership.owner.clone()))),
            Arc::new(StringArray::from_iter(views.iter().map(|r| view_query(&r.create_sql)))),
        ])
    });
    Arc::new(SystemTable::new(engine.clone(), schema, fill))
}

/// `pg_matviews`: one row per materialized view, with its defining query.
fn matviews_table(engine: &Engine) -> Arc<SystemTable> {
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("schemaname", DataType::Utf8, true),
        Field::new("matviewname", DataType::Utf8, true),
        Field::new("matviewowner", DataType::Utf8, true),
        Field::new("tablespace", DataType::Utf8, true),
        Field::new("hasindexes", DataType::Boolean, true),
        Field::new("ispopulated", DataType::Boolean, true),
        Field::new("definition", DataType::Utf8, true),
    ]));
    let fill: Fill = Box::new(|engine: &Engine| {
        let catalog = engine.catalog();
        let views: Vec<_> = catalog.iter().filter(|r| r.kind == RelationKind::MaterializedView).collect();
        let n = views.len();
        Ok(vec![
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n("public", n))) as ArrayRef,
            Arc::new(StringArray::from_iter_values(views.iter().map(|r| r.name.clone()))),
            Arc::new(StringArray::from_iter_values(views.iter().map(|r| r.ownership.owner.clone()))),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
            Arc::new(BooleanArray::from(vec![false; n])),
            Arc::new(BooleanArray::from(vec![true; n])),
            Arc::new(StringArray::from_iter(views.iter().map(|r| view_query(&r.create_sql)))),
        ])
    });
    Arc::new(SystemTable::new(engine.clone(), schema, fill))
}

/// The query of a stored `CREATE [MATERIALIZED] VIEW ... AS query`.
pub(super) fn view_query(create_sql: &str) -> Option<String> {
    match PostgresCompatibilityParser::new().parse(create_sql).ok()?.into_iter().next()? {
        Statement::CreateView(v) => Some(format!("{};", v.query)),
        _ => None,
    }
}

/// The settings `pg_settings` lists: those `current_setting` knows.
const SETTINGS: &[&str] = &[
    "server_version",
    "server_version_num",
    "search_path",
    "timezone",
    "datestyle",
    "client_encoding",
    "server_encoding",
    "standard_conforming_strings",
    "integer_datetimes",
    "max_identifier_length",
    "max_index_keys",
    "transaction_isolation",
    "default_transaction_isolation",
    "default_table_access_method",
];

/// `pg_settings` with one row per entry of `SETTINGS` (pgjdbc reads `max_index_keys` there
/// before `getImportedKeys`), in datafusion-pg-catalog's schema.
fn pg_settings(schema: SchemaRef) -> Result<Arc<dyn TableProvider>> {
    let rows: Vec<(&str, String)> = SETTINGS.iter().filter_map(|n| setting(n).map(|v| (*n, v))).collect();
    let columns = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "name" => Ok(Arc::new(StringArray::from_iter_values(rows.iter().map(|(n, _)| *n))) as ArrayRef),
            "setting" | "reset_val" => Ok(Arc::new(StringArray::from_iter_values(rows.iter().map(|(_, v)| v.clone()))) as ArrayRef),
            _ => Ok(arrow::array::new_null_array(f.data_type(), rows.len())),
        })
        .collect::<Result<Vec<_>>>()?;
    let batch = arrow::array::RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![vec![batch]])?))
}

/// A size in bytes as `pg_size_pretty` prints it: bytes up to 10 kB, then kB, MB, GB, TB,
/// PB, each unit used while the value stays under 10240 of it, rounded half up.
fn size_pretty(bytes: i64) -> String {
    let mut size = bytes;
    if size.abs() < 10 * 1024 {
        return format!("{size} bytes");
    }
    for unit in ["kB", "MB", "GB", "TB"] {
        // Postgres halves, rounds, and compares the rounded value against 10240 / 2.
        let half_rounded = |v: i64| (v + v.signum()) / 2;
        size /= 512;
        if half_rounded(size).abs() < 10 * 1024 {
            return format!("{} {unit}", half_rounded(size));
        }
        size /= 2;
    }
    format!("{} PB", (size / 512 + (size / 512).signum()) / 2)
}

/// `current_setting(name [, missing_ok])`: the server-wide settings clients probe (Grafana
/// reads `server_version_num` and `search_path`). Unknown names fail with 42704, or give
/// NULL with `missing_ok`, as in Postgres. Per-session values (`application_name`, a `SET
/// TIME ZONE`) are not visible to a function and report the server's.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSetting {
    signature: Signature,
}

impl CurrentSetting {
    fn new() -> CurrentSetting {
        let signature = Signature::one_of(
            vec![
                datafusion::logical_expr::TypeSignature::Exact(vec![DataType::Utf8]),
                datafusion::logical_expr::TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
            ],
            Volatility::Stable,
        );
        CurrentSetting { signature }
    }
}

/// The value of a server setting, by its case-insensitive name.
fn setting(name: &str) -> Option<String> {
    let version = super::auth::server_version();
    Some(match name.to_ascii_lowercase().as_str() {
        "server_version" => version,
        "server_version_num" => {
            let number = version.split_whitespace().next().unwrap_or_default();
            let mut parts = number.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            (major * 10_000 + minor).to_string()
        }
        "search_path" => "public".to_string(),
        "timezone" => "UTC".to_string(),
        "datestyle" => "ISO, MDY".to_string(),
        "client_encoding" | "server_encoding" => "UTF8".to_string(),
        "standard_conforming_strings" | "integer_datetimes" => "on".to_string(),
        "max_identifier_length" => "63".to_string(),
        "max_index_keys" => "32".to_string(),
        "transaction_isolation" | "default_transaction_isolation" => "read committed".to_string(),
        // SQLAlchemy names a table's access method unless it is this one.
        "default_table_access_method" => "heap".to_string(),
        _ => return None,
    })
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let names = datafusion::common::cast::as_string_array(&arrays[0])?;
        let missing_ok = match arrays.get(1) {
            Some(a) => Some(datafusion::common::cast::as_boolean_array(a)?.clone()),
            None => None,
        };
        let mut out = Vec::with_capacity(rows);
        for i in 0..names.len() {
            if names.is_null(i) {
                out.push(None);
                continue;
            }
            match setting(names.value(i)) {
                Some(v) => out.push(Some(v)),
                None if missing_ok.as_ref().is_some_and(|m| !m.is_null(i) && m.value(i)) => out.push(None),
                None => {
                    return Err(DataFusionError::Plan(format!("unrecognized configuration parameter \"{}\"", names.value(i))));
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
    }
}

/// A catalog function Velocity has nothing to report for: any arguments, always NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NullFunction {
    name: &'static str,
    signature: Signature,
    returns: DataType,
}

impl NullFunction {
    fn new(name: &'static str, signature: Signature, returns: DataType) -> NullFunction {
        NullFunction { name, signature, returns }
    }
}

impl ScalarUDFImpl for NullFunction {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(self.returns.clone())
    }
    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from(&self.returns)?))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn size_pretty_matches_postgres() {
        // Values from Postgres 15's `SELECT pg_size_pretty(n::bigint)`.
        for (bytes, text) in [
            (0, "0 bytes"),
            (10239, "10239 bytes"),
            (10240, "10 kB"),
            (10752, "11 kB"),
            (1_048_576, "1024 kB"),
            (10_485_760, "10 MB"),
            (1_073_741_824, "1024 MB"),
            (-10240, "-10 kB"),
        ] {
            assert_eq!(super::size_pretty(bytes), text, "{bytes}");
        }
    }
}
