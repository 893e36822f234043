//! BI tools' introspection, replayed over the wire: the queries Metabase's Postgres driver
//! sends on connect and on sync, and the ones Grafana's Postgres data source sends for its
//! schema, table and column pickers. The text follows the tools' sources (Metabase
//! `src/metabase/driver/postgres.clj` as HoneySQL renders it, Grafana
//! `grafana-postgresql-datasource/postgresMetaQuery.ts`); answers are checked for a table
//! with a primary key and a materialized view; DBeaver's navigator queries likewise.

mod common;

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

async fn setup(server: &common::TestServer) -> Client {
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, amount NUMERIC(12,2), placed DATE, at TIMESTAMPTZ, paid BOOLEAN);
             INSERT INTO orders VALUES (1, 'acme', 10.50, '2024-01-02', '2024-01-02 10:00:00+00', true), (2, 'acme', 4.25, NULL, NULL, false);
             CREATE MATERIALIZED VIEW revenue AS SELECT customer, sum(amount) AS total, count(*) AS orders FROM orders GROUP BY customer;",
        )
        .await
        .unwrap();
    client
}

/// Rows of an extended-protocol query, every value as text (NULL as None), in order.
async fn text_rows(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<Vec<Option<String>>> {
    let statement = client.prepare(sql).await.unwrap_or_else(|e| panic!("prepare {sql}: {e:?}"));
    let rows = client.query(&statement, params).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    // Re-run through the simple protocol is not possible with parameters; read typed values.
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    let t = r.columns()[i].type_().clone();
                    match t {
                        tokio_postgres::types::Type::BOOL => r.get::<_, Option<bool>>(i).map(|b| b.to_string()),
                        tokio_postgres::types::Type::INT2 => r.get::<_, Option<i16>>(i).map(|v| v.to_string()),
                        tokio_postgres::types::Type::INT4 => r.get::<_, Option<i32>>(i).map(|v| v.to_string()),
                        tokio_postgres::types::Type::INT8 => r.get::<_, Option<i64>>(i).map(|v| v.to_string()),
                        _ => r.get::<_, Option<String>>(i),
                    }
                })
                .collect()
        })
        .collect()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// Every statement of `sql` runs (simple protocol) and its rows as text.
async fn simple(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")) {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    out
}

/// pgjdbc `DatabaseMetaData.getSchemas()`, which Metabase's schema filter calls.
const METABASE_SCHEMAS: &str = r#"SELECT nspname AS "TABLE_SCHEM", current_database() AS "TABLE_CATALOG" FROM pg_catalog.pg_namespace  WHERE nspname <> 'pg_toast' AND (nspname !~ '^pg_temp_'  OR nspname = (pg_catalog.current_schemas(true))[1]) AND (nspname !~ '^pg_toast_temp_'  OR nspname = replace((pg_catalog.current_schemas(true))[1], 'pg_temp_', 'pg_toast_temp_'))  ORDER BY "TABLE_SCHEM""#;

/// Metabase's table privileges (`:table-privileges`), read before a sync.
const METABASE_PRIVILEGES: &str = r#"with table_privileges as (
 select
   NULL as role,
   t.schemaname as schema,
   t.objectname as table,
   pg_catalog.has_any_column_privilege(current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'update') as update,
   pg_catalog.has_any_column_privilege(current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'select') as select,
   pg_catalog.has_any_column_privilege(current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'insert') as insert,
   pg_catalog.has_table_privilege(     current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'delete') as delete
 from (
   select schemaname, tablename as objectname from pg_catalog.pg_tables
   union
   select schemaname, viewname as objectname from pg_catalog.pg_views
   union
   select schemaname, matviewname as objectname from pg_catalog.pg_matviews
 ) t
 where t.schemaname !~ '^pg_'
   and t.schemaname <> 'information_schema'
   and pg_catalog.has_schema_privilege(current_user, t.schemaname, 'usage')
)
select t.*
from table_privileges t"#;

/// Metabase `describe-database`: the tables and views to sync (`get-tables-sql`).
const METABASE_TABLES: &str = r#"SELECT "n"."nspname" AS "schema", "c"."relname" AS "name", CASE "c"."relkind" WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'PARTITIONED TABLE' WHEN 'v' THEN 'VIEW' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE NULL END AS "type", "d"."description" AS "description", "stat"."n_live_tup" AS "estimated_row_count" FROM "pg_catalog"."pg_class" AS "c" INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "c"."relnamespace" = "n"."oid" LEFT JOIN "pg_catalog"."pg_description" AS "d" ON ("c"."oid" = "d"."objoid") AND ("d"."objsubid" = 0) AND ("d"."classoid" = 'pg_class'::regclass) LEFT JOIN "pg_stat_user_tables" AS "stat" ON ("n"."nspname" = "stat"."schemaname") AND ("c"."relname" = "stat"."relname") WHERE ("c"."relnamespace" = "n"."oid") AND ("n"."nspname" !~ '^pg_') AND ("n"."nspname" <> 'information_schema') AND c.relkind in ('r', 'p', 'v', 'f', 'm') AND ("n"."nspname" IN ($1)) ORDER BY "type" ASC, "schema" ASC, "name" ASC"#;

/// Metabase `describe-fields-sql`: columns of tables and views from information_schema, of
/// materialized views from pg_attribute, with primary keys and required flags.
const METABASE_FIELDS: &str = r#"SELECT "c"."column_name" AS "name", CASE WHEN "c"."udt_schema" IN ('public', 'pg_catalog') THEN FORMAT('%s', "c"."udt_name") ELSE FORMAT('"%s"."%s"', "c"."udt_schema", "c"."udt_name") END AS "database-type", "c"."ordinal_position" - 1 AS "database-position", "c"."table_schema" AS "table-schema", "c"."table_name" AS "table-name", "pk"."column_name" IS NOT NULL AS "pk?", COL_DESCRIPTION(CAST(CAST(FORMAT('%I.%I', CAST("c"."table_schema" AS TEXT), CAST("c"."table_name" AS TEXT)) AS REGCLASS) AS OID), "c"."ordinal_position") AS "field-comment", (("column_default" IS NULL) OR (LOWER("column_default") = 'null')) AND ("is_nullable" = 'NO') AND NOT ((("column_default" IS NOT NULL) AND ("column_default" LIKE '%nextval(%')) OR ("is_identity" <> 'NO')) AS "database-required", (("column_default" IS NOT NULL) AND ("column_default" LIKE '%nextval(%')) OR ("is_identity" <> 'NO') AS "database-is-auto-increment" FROM "information_schema"."columns" AS "c" LEFT JOIN (SELECT "tc"."table_schema", "tc"."table_name", "kc"."column_name" FROM "information_schema"."table_constraints" AS "tc" INNER JOIN "information_schema"."key_column_usage" AS "kc" ON ("tc"."constraint_name" = "kc"."constraint_name") AND ("tc"."table_schema" = "kc"."table_schema") AND ("tc"."table_name" = "kc"."table_name") WHERE "tc"."constraint_type" = 'PRIMARY KEY') AS "pk" ON ("c"."table_schema" = "pk"."table_schema") AND ("c"."table_name" = "pk"."table_name") AND ("c"."column_name" = "pk"."column_name") WHERE c.table_schema !~ '^information_schema|catalog_history|pg_' AND ("c"."table_schema" IN ($1)) AND ("c"."table_name" IN ($2, $3)) UNION ALL SELECT "pa"."attname" AS "name", CASE WHEN "ptn"."nspname" IN ('public', 'pg_catalog') THEN FORMAT('%s', "pt"."typname") ELSE FORMAT('"%s"."%s"', "ptn"."nspname", "pt"."typname") END AS "database-type", "pa"."attnum" - 1 AS "database-position", "pn"."nspname" AS "table-schema", "pc"."relname" AS "table-name", FALSE AS "pk?", NULL AS "field-comment", FALSE AS "database-required", FALSE AS "database-is-auto-increment" FROM "pg_catalog"."pg_class" AS "pc" INNER JOIN "pg_catalog"."pg_namespace" AS "pn" ON "pn"."oid" = "pc"."relnamespace" INNER JOIN "pg_catalog"."pg_attribute" AS "pa" ON "pa"."attrelid" = "pc"."oid" INNER JOIN "pg_catalog"."pg_type" AS "pt" ON "pt"."oid" = "pa"."atttypid" INNER JOIN "pg_catalog"."pg_namespace" AS "ptn" ON "ptn"."oid" = "pt"."typnamespace" WHERE ("pc"."relkind" = 'm') AND ("pa"."attnum" >= 1) AND ("pn"."nspname" IN ($4)) AND ("pc"."relname" IN ($5, $6)) ORDER BY "table-schema" ASC, "table-name" ASC, "database-position" ASC"#;

/// Metabase `enum-types`, before field sync.
const METABASE_ENUMS: &str = "SELECT nspname, typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid IN (SELECT DISTINCT enumtypid FROM pg_enum e)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metabase_connect_and_sync() {
    let server = common::TestServer::start().await;
    let client = setup(&server).await;

    // Connection setup (pgjdbc, then Metabase's connection pool).
    for statement in [
        "SET extra_float_digits = 3",
        "SET application_name = 'Metabase v0.55.1 [f8f63fdf-d8f8-4573-86ea-4fe4a9548041]'",
        "SHOW TRANSACTION ISOLATION LEVEL",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
    ] {
        simple(&client, statement).await;
    }
    assert_eq!(simple(&client, "show timezone;").await, vec![vec![s("UTC")]], "db-default-timezone");

    let schemas = simple(&client, METABASE_SCHEMAS).await;
    assert!(schemas.contains(&vec![s("public"), s("velocity")]), "{schemas:?}");

    let privileges = simple(&client, METABASE_PRIVILEGES).await;
    let mut privileged: Vec<&str> =
        privileges.iter().filter(|r| r[1].as_deref() == Some("public")).filter_map(|r| r[2].as_deref()).collect();
    privileged.sort();
    assert_eq!(privileged, ["orders", "revenue"], "{privileges:?}");
    assert!(privileges.iter().all(|r| r[4].as_deref() == Some("true") || r[4].as_deref() == Some("t")), "select privilege: {privileges:?}");

    let tables = text_rows(&client, METABASE_TABLES, &[&"public"]).await;
    let listed: Vec<(Option<String>, Option<String>)> = tables.iter().map(|r| (r[1].clone(), r[2].clone())).collect();
    assert_eq!(listed, vec![(s("revenue"), s("MATERIALIZED VIEW")), (s("orders"), s("TABLE"))], "{tables:?}");

    assert!(simple(&client, METABASE_ENUMS).await.is_empty(), "Velocity has no enum types");

    let fields = text_rows(&client, METABASE_FIELDS, &[&"public", &"orders", &"revenue", &"public", &"orders", &"revenue"]).await;
    // (name, database-type, database-position, table-name, pk?, database-required, auto-increment)
    let got: Vec<Vec<Option<String>>> = fields
        .iter()
        .map(|r| vec![r[0].clone(), r[1].clone(), r[2].clone(), r[4].clone(), r[5].clone(), r[7].clone(), r[8].clone()])
        .collect();
    let row = |name: &str, ty: &str, pos: &str, table: &str, pk: &str, required: &str| {
        vec![s(name), s(ty), s(pos), s(table), s(pk), s(required), s("false")]
    };
    assert_eq!(
        got,
        vec![
            row("id", "int8", "0", "orders", "true", "true"),
            row("customer", "text", "1", "orders", "false", "true"),
            row("amount", "numeric", "2", "orders", "false", "false"),
            row("placed", "date", "3", "orders", "false", "false"),
            row("at", "timestamptz", "4", "orders", "false", "false"),
            row("paid", "bool", "5", "orders", "false", "false"),
            // A materialized view: from pg_attribute, once per column.
            row("customer", "text", "0", "revenue", "false", "false"),
            row("total", "numeric", "1", "revenue", "false", "false"),
            row("orders", "int8", "2", "revenue", "false", "false"),
        ],
        "{fields:?}"
    );

    // Fingerprinting reads rows with a plain SELECT.
    let sample = simple(&client, r#"SELECT "public"."revenue"."customer" AS "customer", "public"."revenue"."orders" AS "orders" FROM "public"."revenue" LIMIT 10000"#).await;
    assert_eq!(sample, vec![vec![s("acme"), s("2")]]);
}

/// Grafana's test of the data source and its version probes.
const GRAFANA_VERSION: &str = "SELECT current_setting('server_version_num')::int/100 as version";
const GRAFANA_TIMESCALE: &str = "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'";

const GRAFANA_SCHEMAS: &str = r#"SELECT schema_name AS "name"
    FROM information_schema.schemata
    WHERE schema_name NOT IN ('information_schema',
                              'pg_catalog',
                              'pg_toast',
                              '_timescaledb_cache',
                              '_timescaledb_catalog',
                              '_timescaledb_internal',
                              '_timescaledb_config',
                              'timescaledb_information',
                              'timescaledb_experimental')
    ORDER BY schema_name"#;

const GRAFANA_SEARCH_PATH: &str = r#"
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )"#;

/// `showTables()` without a schema: tables on the search path by bare name.
fn grafana_tables() -> String {
    format!(
        r#"SELECT
    CASE WHEN {GRAFANA_SEARCH_PATH}
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS "table"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN {GRAFANA_SEARCH_PATH} THEN 0 ELSE 1 END, 1"#
    )
}

/// `showTables(schema)`.
fn grafana_tables_in(schema: &str) -> String {
    format!(
        r#"SELECT quote_ident(table_name) AS "table"
      FROM information_schema.tables
      WHERE quote_ident(table_schema) = '{schema}'
      ORDER BY 1"#
    )
}

/// `getSchema(table)`: the column picker.
fn grafana_columns(table: &str) -> String {
    format!(
        r#"SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('{table}'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('{table}'))[1]
          AND quote_ident(table_name) = (parse_ident('{table}'))[2]
        ELSE quote_ident(table_name) = '{table}'
          AND {GRAFANA_SEARCH_PATH}
      END"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_pickers() {
    let server = common::TestServer::start().await;
    let client = setup(&server).await;

    assert_eq!(simple(&client, GRAFANA_VERSION).await, vec![vec![s("1600")]], "server_version_num 160006 / 100, as Grafana computes it");
    assert!(simple(&client, GRAFANA_TIMESCALE).await.is_empty(), "no TimescaleDB");
    assert_eq!(simple(&client, "SELECT current_schema()").await, vec![vec![s("public")]]);
    let unknown = client.simple_query("SELECT current_setting('no_such_setting')").await.unwrap_err();
    assert_eq!(unknown.code().map(|c| c.code()), Some("42704"), "{unknown:?}");
    assert_eq!(simple(&client, "SELECT current_setting('no_such_setting', true)").await, vec![vec![None]]);

    let schemas = simple(&client, GRAFANA_SCHEMAS).await;
    assert_eq!(schemas, vec![vec![s("public")], vec![s("velocity_catalog")]], "{schemas:?}");

    // Tables on the search path come first, by bare name; the others schema-qualified.
    let tables = simple(&client, &grafana_tables()).await;
    let names: Vec<&str> = tables.iter().filter_map(|r| r[0].as_deref()).collect();
    assert_eq!(names[..2], ["orders", "revenue"], "{names:?}");
    assert!(names[2..].iter().all(|n| n.starts_with("velocity_catalog.")), "{names:?}");
    let public = simple(&client, &grafana_tables_in("public")).await;
    assert_eq!(public, vec![vec![s("orders")], vec![s("revenue")]]);

    let columns = simple(&client, &grafana_columns("orders")).await;
    assert_eq!(
        columns,
        vec![
            vec![s("id"), s("bigint")],
            vec![s("customer"), s("text")],
            vec![s("amount"), s("numeric")],
            vec![s("placed"), s("date")],
            vec![s("at"), s("timestamp with time zone")],
            vec![s("paid"), s("boolean")],
        ]
    );
    assert_eq!(simple(&client, &grafana_columns("public.orders")).await, columns, "schema-qualified");
    // As in Postgres, information_schema.columns has no materialized views: clients that
    // know them (Metabase above, pgjdbc, SQLAlchemy) read their columns from pg_attribute and
    // would list each twice. Grafana's builder therefore offers no columns for `revenue`;
    // its code editor queries it (below).
    assert!(simple(&client, &grafana_columns("revenue")).await.is_empty());

    // The query a panel built in the picker runs.
    let panel = simple(&client, "SELECT customer AS metric, total AS value FROM revenue ORDER BY 1").await;
    assert_eq!(panel, vec![vec![s("acme"), s("14.75")]]);
}

/// DBeaver's PostgreSQL navigator, written after the queries its `PostgreTableBase`,
/// `PostgreIndex` and `PostgreTableConstraint` readers send: the relations of a schema, a
/// table's indexes and its constraints, answered with the primary key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbeaver_navigator() {
    let server = common::TestServer::start().await;
    let client = setup(&server).await;
    let namespace = simple(&client, "SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'public'").await[0][0].clone().unwrap();
    let table = simple(&client, &format!("SELECT oid FROM pg_catalog.pg_class WHERE relname = 'orders' AND relnamespace = {namespace}"))
        .await[0][0]
        .clone()
        .unwrap();

    let relations = simple(
        &client,
        &format!(
            "SELECT c.oid,c.*,t.relname as tabrelname,rt.relnamespace as refnamespace,d.description \
             FROM pg_catalog.pg_class c \
             left outer join pg_catalog.pg_class t on t.oid=c.reltoastrelid \
             left outer join pg_catalog.pg_class rt on rt.oid=c.reloftype \
             left outer join pg_catalog.pg_description d on d.objoid=c.oid and d.classoid='pg_class'::regclass and d.objsubid=0 \
             WHERE c.relnamespace={namespace} AND c.relkind not in ('i','I','c')"
        ),
    )
    .await;
    let names: Vec<String> = relations.iter().map(|r| r[2].clone().unwrap_or_default()).collect();
    assert!(names.contains(&"orders".to_string()) && names.contains(&"revenue".to_string()), "{names:?}");
    assert!(!names.contains(&"orders_pkey".to_string()), "indexes are not relations of the navigator: {names:?}");

    let indexes = simple(
        &client,
        &format!(
            "SELECT c.relname, i.indisprimary, i.indisunique, i.indkey as keys, tc.relname as tabrelname, \
             pg_catalog.pg_get_expr(i.indpred, i.indrelid) as pred_expr, pg_catalog.pg_get_indexdef(i.indexrelid) as def, \
             pg_catalog.pg_relation_size(i.indexrelid) as index_rel_size \
             FROM pg_catalog.pg_index i INNER JOIN pg_catalog.pg_class c ON c.oid=i.indexrelid \
             INNER JOIN pg_catalog.pg_class tc ON tc.oid=i.indrelid \
             LEFT OUTER JOIN pg_catalog.pg_description dsc ON i.indexrelid=dsc.objoid \
             WHERE i.indrelid={table} ORDER BY tc.relname, c.relname"
        ),
    )
    .await;
    assert_eq!(indexes.len(), 1, "{indexes:?}");
    assert_eq!(indexes[0][..5], [s("orders_pkey"), s("t"), s("t"), s("{1}"), s("orders")], "{indexes:?}");
    assert_eq!(indexes[0][6], s("CREATE UNIQUE INDEX orders_pkey ON public.orders USING btree (id)"), "{indexes:?}");

    let constraints = simple(
        &client,
        &format!(
            "SELECT c.oid,c.*,t.relname as tabrelname, \
             case when c.contype='c' then substr(pg_get_constraintdef(c.oid), 7) else null end consrc_copy, \
             pg_get_constraintdef(c.oid) AS def \
             FROM pg_catalog.pg_constraint c INNER JOIN pg_catalog.pg_class t ON t.oid=c.conrelid \
             WHERE t.relnamespace={namespace} AND c.contype<>'f' AND t.relname = 'orders' ORDER BY c.oid"
        ),
    )
    .await;
    assert_eq!(constraints.len(), 1, "{constraints:?}");
    let row = &constraints[0];
    assert_eq!((row[2].as_deref(), row[4].as_deref()), (Some("orders_pkey"), Some("p")), "{row:?}");
    assert_eq!(row.last().cloned().flatten().as_deref(), Some("PRIMARY KEY (id)"), "{row:?}");
    let revenue = simple(
        &client,
        "SELECT count(*) FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class t ON t.oid = c.conrelid WHERE t.relname = 'revenue'",
    )
    .await;
    assert_eq!(revenue, vec![vec![s("0")]], "a materialized view has no key constraint");
}

/// What DBeaver (through pgjdbc) asks when it connects, before the navigator opens: the
/// session's schema and user, the schemas with their comments, an array type's element, the
/// search path, the database row, a setting and the keywords (`pg_get_keywords`).
const DBEAVER_CONNECT: &[&str] = &[
    "SET extra_float_digits = 3",
    "SET application_name = 'DBeaver - Main <velocity>'",
    "SELECT current_schema(),session_user",
    "SELECT n.oid,n.*,d.description FROM pg_catalog.pg_namespace n LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=n.oid AND d.objsubid=0 AND d.classoid='pg_namespace'::regclass ORDER BY nspname",
    "SELECT n.nspname = ANY(current_schemas(true)), n.nspname, t.typname FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON t.typnamespace = n.oid WHERE t.oid = 1007",
    "SHOW search_path",
    "SELECT db.oid,db.* FROM pg_catalog.pg_database db WHERE datname=current_database()",
    "SELECT setting FROM pg_catalog.pg_settings WHERE name='standard_conforming_strings'",
    "SELECT string_agg(word, ',') FROM pg_catalog.pg_get_keywords() WHERE word <> ALL ('{select,from,where}'::text[])",
    "SELECT * FROM pg_catalog.pg_enum WHERE 1<>1 LIMIT 1",
    "SELECT reltype FROM pg_catalog.pg_class WHERE 1<>1 LIMIT 1",
    "SELECT t.oid,t.*,c.relkind,format_type(nullif(t.typbasetype, 0), t.typtypmod) as base_type_name, d.description FROM pg_catalog.pg_type t LEFT OUTER JOIN pg_catalog.pg_type et ON et.oid=t.typelem LEFT OUTER JOIN pg_catalog.pg_class c ON c.oid=t.typrelid LEFT OUTER JOIN pg_catalog.pg_description d ON t.oid=d.objoid WHERE t.typname IS NOT NULL AND (c.relkind IS NULL OR c.relkind = 'c') AND (et.typcategory IS NULL OR et.typcategory <> 'C')",
];

/// What DataGrip asks when it connects (its introspector's first queries): server start time,
/// transaction ids, databases and schemas with `xmin` as their state number, array types,
/// time zones, roles, tablespaces and ACLs, SSL.
const DATAGRIP_CONNECT: &[&str] = &[
    "select current_database() as a, current_schemas(false) as b",
    "SHOW TRANSACTION ISOLATION LEVEL",
    "select round(extract(epoch from pg_postmaster_start_time() at time zone 'UTC')) as startup_time",
    "select L.transactionid::varchar::bigint as transaction_id from pg_catalog.pg_locks L where L.transactionid is not null order by pg_catalog.age(L.transactionid) desc limit 1",
    "select case when pg_catalog.pg_is_in_recovery() then null else (pg_catalog.txid_current() % 4294967296)::varchar::bigint end as current_txid",
    r#"select N.oid::bigint as id, datname as name, D.description, datistemplate as is_template, datallowconn as allow_connections, pg_catalog.pg_get_userbyid(N.datdba) as "owner" from pg_catalog.pg_database N left join pg_catalog.pg_shdescription D on N.oid = D.objoid order by case when datname = pg_catalog.current_database() then -1::bigint else N.oid::bigint end"#,
    r#"select N.oid::bigint as id, N.xmin as state_number, nspname as name, D.description, pg_catalog.pg_get_userbyid(N.nspowner) as "owner" from pg_catalog.pg_namespace N left join pg_catalog.pg_description D on N.oid = D.objoid order by case when nspname = pg_catalog.current_schema() then -1::bigint else N.oid::bigint end"#,
    "SELECT typinput='pg_catalog.array_in'::regproc as is_array, typtype, typname, pg_type.oid FROM pg_catalog.pg_type LEFT JOIN (select ns.oid as nspoid, ns.nspname, r.r from pg_namespace as ns join (select s.r, (current_schemas(false))[s.r] as nspname from generate_series(1, array_upper(current_schemas(false), 1)) as s(r)) as r using (nspname)) as sp ON sp.nspoid = typnamespace WHERE pg_type.oid = '1007' ORDER BY sp.r, pg_type.oid DESC",
    "show DateStyle",
    "select name, is_dst from pg_catalog.pg_timezone_names union distinct select abbrev as name, is_dst from pg_catalog.pg_timezone_abbrevs",
    "select R.oid::bigint as role_id, rolname as role_name, rolsuper is_super, rolinherit is_inherit, rolcreaterole can_createrole, rolcreatedb can_createdb, rolcanlogin can_login, rolreplication is_replication, rolconnlimit conn_limit, rolvaliduntil valid_until, rolbypassrls bypass_rls, rolconfig config, D.description from pg_catalog.pg_roles R left join pg_catalog.pg_shdescription D on D.objoid = R.oid",
    "select member id, roleid role_id, admin_option from pg_catalog.pg_auth_members order by id, roleid::text",
    "select T.oid::bigint as id, T.spcname as name, T.xmin as state_number, pg_catalog.pg_get_userbyid(T.spcowner) as owner, pg_catalog.pg_tablespace_location(T.oid) as location, T.spcoptions as options, D.description as comment from pg_catalog.pg_tablespace T left join pg_catalog.pg_shdescription D on D.objoid = T.oid",
    "select T.oid as object_id, T.spcacl as acl from pg_catalog.pg_tablespace T union all select T.oid as object_id, T.datacl as acl from pg_catalog.pg_database T",
    "SELECT e.typdelim FROM pg_catalog.pg_type t, pg_catalog.pg_type e WHERE t.oid = '1007' and t.typelem = e.oid",
    "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
];

/// DBeaver's and DataGrip's connect queries all run (each tool stops at the first error), and
/// the answers they read are Velocity's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbeaver_and_datagrip_connect() {
    let server = common::TestServer::start().await;
    let client = setup(&server).await;
    let mut answers = Vec::new();
    for sql in DBEAVER_CONNECT.iter().chain(DATAGRIP_CONNECT) {
        answers.push(simple(&client, sql).await);
    }
    let answer = |sql: &str| {
        let i = DBEAVER_CONNECT.iter().chain(DATAGRIP_CONNECT).position(|q| q.starts_with(sql)).expect("query listed");
        answers[i].clone()
    };
    assert_eq!(answer("SELECT current_schema(),session_user"), vec![vec![s("public"), s("velocity")]]);
    assert_eq!(answer("SELECT n.nspname = ANY"), vec![vec![s("t"), s("pg_catalog"), s("_int4")]]);
    let databases = answer("select N.oid::bigint as id, datname");
    assert_eq!(databases[0][1], s("velocity"), "{databases:?}");
    let schemas = answer("select N.oid::bigint as id, N.xmin");
    assert_eq!(schemas[0][2], s("public"), "the current schema first: {schemas:?}");
    assert!(schemas.iter().all(|r| r[1].is_some()), "every schema has a state number: {schemas:?}");
    let startup: i64 = answer("select round(extract(epoch from pg_postmaster_start_time()")[0][0].as_deref().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(startup > 1_600_000_000 && startup <= now + 1, "start time {startup}, now {now}");
    assert_eq!(answer("select L.transactionid"), Vec::<Vec<Option<String>>>::new(), "no locks");
    assert!(answer("select case when pg_catalog.pg_is_in_recovery()")[0][0].is_some(), "a primary has a current txid");
    assert_eq!(answer("select name, is_dst from pg_catalog.pg_timezone_names"), vec![vec![s("UTC"), s("f")]]);
    assert_eq!(answer("SELECT typinput='pg_catalog.array_in'::regproc")[0][..3], [s("t"), s("b"), s("_int4")]);
    assert_eq!(answer("select ssl from pg_stat_ssl"), Vec::<Vec<Option<String>>>::new());
}

/// User tables named like a catalog table or like the catalog views' own inner scans
/// (`pg_class`, `pg_namespace`, `a`, `n`, `c`, `k`) leave the catalog as it is: it answers from
/// the catalog, and a materialized view over a catalog table is refused with an error, the
/// session kept (the fuzz test's seed 1592590358 lost it there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_tables_named_like_catalog_tables_leave_the_catalog_alone() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE pg_class (b BOOLEAN PRIMARY KEY, a JSON);
             CREATE TABLE pg_namespace (b BOOLEAN PRIMARY KEY, a JSON);
             CREATE TABLE a (x INT PRIMARY KEY, y INT);
             CREATE TABLE n (x INT PRIMARY KEY, y INT);
             CREATE TABLE c (x INT PRIMARY KEY, y INT);
             CREATE TABLE k (x INT PRIMARY KEY, y INT);",
        )
        .await
        .unwrap();
    for table in ["pg_class", "pg_attribute", "pg_index", "pg_constraint", "pg_namespace"] {
        let sql =
            format!("CREATE MATERIALIZED VIEW m AS SELECT CAST(1 AS NUMERIC(10,2)) AS c, count(*) FROM pg_catalog.{table} GROUP BY 1");
        let error = client.batch_execute(&sql).await.expect_err("a materialized view over the catalog is refused");
        assert!(error.as_db_error().is_some(), "{sql}: {error:?}");
        assert!(!client.is_closed(), "{sql} closed the session");
    }
    // Postgres 15 answers the same.
    let classes = simple(
        &client,
        "SELECT n.nspname, c.relname, c.relnatts FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname IN ('pg_class', 'a', 'a_pkey') ORDER BY 1, 2",
    )
    .await;
    let row = |a: &str, b: &str, c: &str| vec![s(a), s(b), s(c)];
    assert_eq!(
        classes,
        vec![row("pg_catalog", "pg_class", "33"), row("public", "a", "2"), row("public", "a_pkey", "1"), row("public", "pg_class", "2")]
    );
    let attributes = simple(
        &client,
        "SELECT c.relname, a.attname, a.attnum FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
         WHERE c.relname IN ('a', 'a_pkey') AND a.attnum > 0 ORDER BY 1, 3",
    )
    .await;
    assert_eq!(attributes, vec![row("a", "x", "1"), row("a", "y", "2"), row("a_pkey", "x", "1")]);
    let indexes = simple(
        &client,
        "SELECT t.relname, i.relname FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class t ON t.oid = x.indrelid
         JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = 'a'::regclass",
    )
    .await;
    assert_eq!(indexes, vec![vec![s("a"), s("a_pkey")]]);
}

/// A materialized view's unnamed columns are named as Postgres names them (`count`, `sum`),
/// so a query written for Postgres reads them by those names. Postgres 15 names this view's
/// columns customer, count, sum, max, upper, parity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_view_columns_have_postgres_names() {
    let server = common::TestServer::start().await;
    let client = setup(&server).await;
    client
        .batch_execute(
            "CREATE MATERIALIZED VIEW per_customer AS
             SELECT customer, count(*), sum(amount), max(id), upper(customer), id % 2 AS parity FROM orders GROUP BY customer, id % 2",
        )
        .await
        .unwrap();
    let statement = client.prepare("SELECT * FROM per_customer").await.unwrap();
    let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["customer", "count", "sum", "max", "upper", "parity"]);
    let rows = simple(&client, "SELECT sum(count), max(max) FROM per_customer").await;
    assert_eq!(rows, vec![vec![s("2"), s("2")]]);
}
