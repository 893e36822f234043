//! Velocity's statement handling, plugged into `datafusion-postgres` as a `QueryHook`:
//! transactions, DDL (tables, materialized views, DROP), DML on tables, SHOW.
//!
//! Everything else (SELECT, SET, catalog queries) falls through to DataFusion.

use std::sync::{Arc, Mutex};

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::{Constraint, DFSchema, ParamValues};
use datafusion::logical_expr::{DdlStatement, EmptyRelation, Expr, LogicalPlan, Projection, WriteOp};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{ObjectType, Statement};
use datafusion_postgres::QueryHook;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::results::{QueryResponse, Response, Tag};
use datafusion_postgres::pgwire::error::PgWireResult;
use datafusion_postgres::pgwire::messages::response::TransactionStatus;
use futures::stream;

use super::error::{from_datafusion, from_engine, from_plan, pg_error};
use super::relation_table::RelationTable;
use crate::catalog::{Relation, RelationKind, SourceBinding};
use crate::dataflow::ChangeBatch;
use crate::engine::{Commit, Engine};
use crate::planner::{RelationResolver, ResolvedScan, plan_dataflow};
use crate::sinks::kafka::{SinkRegistry, SinkStatus};
use crate::sinks::{SinkConfig, SinkEncoder, SinkError};
use crate::sources::runner::{SourceConfig, SourceRegistry};

/// A session's transaction block. Tracked here rather than read from pgwire's status,
/// which only changes once a whole multi-statement query string has run.
#[derive(Default)]
struct OpenTransaction {
    active: bool,
    /// Changes applied as one commit at COMMIT.
    changes: Vec<(u32, ChangeBatch)>,
    /// Open savepoints: name and how many of `changes` came before it.
    savepoints: Vec<(String, usize)>,
}

pub struct VelocityHook {
    engine: Engine,
    pub sources: SourceRegistry,
    pub sinks: SinkRegistry,
}

impl VelocityHook {
    pub fn new(engine: Engine) -> VelocityHook {
        VelocityHook { engine, sources: SourceRegistry::default(), sinks: SinkRegistry::default() }
    }
}

fn transaction(client: &dyn HookClient) -> Arc<Mutex<OpenTransaction>> {
    client.session_extensions().get_or_insert_with(|| Mutex::new(OpenTransaction::default()))
}

fn df_err(e: datafusion::error::DataFusionError) -> datafusion_postgres::pgwire::error::PgWireError {
    from_datafusion(e)
}

/// Plan a statement with DataFusion, unless the extended protocol already did.
async fn logical_plan(ctx: &SessionContext, stmt: &Statement, plan: Option<&LogicalPlan>) -> PgWireResult<LogicalPlan> {
    match plan {
        Some(p) => Ok(p.clone()),
        None => ctx.state().statement_to_plan(DFStatement::Statement(Box::new(stmt.clone()))).await.map_err(df_err),
    }
}

/// A one-column text result (SHOW ...).
pub fn text_rows(columns: &[&str], rows: Vec<Vec<String>>) -> PgWireResult<Response> {
    let schema: SchemaRef = Arc::new(Schema::new(columns.iter().map(|c| Field::new(*c, DataType::Utf8, true)).collect::<Vec<_>>()));
    let arrays =
        (0..columns.len()).map(|c| Arc::new(StringArray::from(rows.iter().map(|r| r[c].clone()).collect::<Vec<_>>())) as _).collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| pg_error("XX000", e.to_string()))?;
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, &Format::UnifiedText, None)?);
    let rows: Vec<_> = encode_recordbatch(fields.clone(), batch).collect();
    Ok(Response::Query(QueryResponse::new(fields, stream::iter(rows))))
}

/// The result schema of SHOW-like statements, for the extended protocol's Describe.
fn text_plan(columns: &[&str]) -> LogicalPlan {
    let schema = Schema::new(columns.iter().map(|c| Field::new(*c, DataType::Utf8, true)).collect::<Vec<_>>());
    LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(DFSchema::try_from(schema).expect("plain schema")),
    })
}

struct CatalogResolver<'a> {
    engine: &'a Engine,
    used: Mutex<Vec<String>>,
}

impl RelationResolver for CatalogResolver<'_> {
    fn resolve(&self, scan: &datafusion::logical_expr::TableScan) -> Option<ResolvedScan> {
        let catalog = self.engine.catalog.read().ok()?;
        let provider = datafusion::datasource::source_as_provider(&scan.source).ok()?;
        let provider: &dyn std::any::Any = provider.as_ref();
        if let Some(changes) = provider.downcast_ref::<super::changes::ChangesTable>() {
            let r = catalog.by_id(changes.relation)?;
            self.used.lock().ok()?.push(r.name.clone());
            return Some(ResolvedScan::Changes {
                relation: changes.relation,
                key: changes.key.clone(),
                relation_schema: changes.relation_schema.clone(),
            });
        }
        let table = &scan.table_name;
        if table.schema().is_some_and(|s| s != "public") {
            return None;
        }
        let r = catalog.get(table.table())?;
        self.used.lock().ok()?.push(r.name.clone());
        Some(ResolvedScan::Relation { id: r.id, schema: r.schema.clone() })
    }
}

impl VelocityHook {
    async fn dispatch(
        &self,
        stmt: &Statement,
        plan: Option<&LogicalPlan>,
        params: &ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let aborted = client.transaction_status() == TransactionStatus::Error;
        match stmt {
            Statement::StartTransaction { .. } => Some(self.begin(client)),
            Statement::Commit { .. } => Some(self.commit(client).await),
            Statement::Rollback { savepoint: Some(name), .. } => Some(self.rollback_to(client, &name.value, aborted)),
            Statement::Savepoint { name } if !aborted => Some(self.savepoint(client, &name.value)),
            Statement::ReleaseSavepoint { name } if !aborted => Some(self.release(client, &name.value)),
            Statement::Rollback { .. } => {
                *transaction(client).lock().expect("txn lock") = OpenTransaction::default();
                Some(Ok(Response::TransactionEnd(Tag::new("ROLLBACK"))))
            }
            _ if aborted => Some(Err(pg_error("25P02", "current transaction is aborted, commands ignored until end of transaction block"))),
            Statement::CreateTable(_) => {
                Some(self.create_table(stmt, ctx, None).await.map(|_| Response::Execution(Tag::new("CREATE TABLE"))))
            }
            Statement::CreateView(cv) if cv.materialized => {
                Some(self.create_view(stmt, ctx, None).await.map(|_| Response::Execution(Tag::new("CREATE MATERIALIZED VIEW"))))
            }
            Statement::CreateView(_) => Some(Err(pg_error("0A000", "CREATE VIEW is not supported; use CREATE MATERIALIZED VIEW"))),
            Statement::CreateFunction(_) | Statement::DropFunction(_) => {
                Some(Err(pg_error("0A000", "user-defined functions are not supported")))
            }
            Statement::CreateProcedure { .. } => Some(Err(pg_error("0A000", "procedures are not supported"))),
            Statement::CreateTrigger(_) => Some(Err(pg_error("0A000", "triggers are not supported"))),
            Statement::Drop { object_type, if_exists, names, cascade, .. } => {
                Some(self.drop(*object_type, *if_exists, names, *cascade, ctx).await)
            }
            Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) => Some(self.dml(stmt, plan, params, ctx, client).await),
            Statement::ShowTables { .. } => Some(self.show_relations(RelationKind::Table)),
            _ => None,
        }
    }

    /// `SAVEPOINT name`: remember how far the transaction's changes go.
    fn savepoint(&self, client: &mut dyn HookClient, name: &str) -> PgWireResult<Response> {
        let txn = transaction(client);
        let mut txn = txn.lock().expect("txn lock");
        if !txn.active {
            return Err(pg_error("25P01", "SAVEPOINT can only be used in transaction blocks"));
        }
        let at = txn.changes.len();
        txn.savepoints.push((name.to_string(), at));
        Ok(Response::Execution(Tag::new("SAVEPOINT")))
    }

    fn find_savepoint(txn: &OpenTransaction, name: &str) -> PgWireResult<usize> {
        txn.savepoints.iter().rposition(|(n, _)| n == name).ok_or_else(|| pg_error("3B001", format!("savepoint \"{name}\" does not exist")))
    }

    /// `RELEASE SAVEPOINT name`: forget it (and later ones); its changes stay.
    fn release(&self, client: &mut dyn HookClient, name: &str) -> PgWireResult<Response> {
        let txn = transaction(client);
        let mut txn = txn.lock().expect("txn lock");
        let i = Self::find_savepoint(&txn, name)?;
        txn.savepoints.truncate(i);
        Ok(Response::Execution(Tag::new("RELEASE")))
    }

    /// `ROLLBACK TO SAVEPOINT name`: drop the changes made since it; it stays open.
    fn rollback_to(&self, client: &mut dyn HookClient, name: &str, aborted: bool) -> PgWireResult<Response> {
        if aborted {
            // pgwire keeps a failed transaction's status until the block ends.
            return Err(pg_error("0A000", "ROLLBACK TO SAVEPOINT after an error is not supported; ROLLBACK the transaction"));
        }
        let txn = transaction(client);
        let mut txn = txn.lock().expect("txn lock");
        let i = Self::find_savepoint(&txn, name)?;
        let at = txn.savepoints[i].1;
        txn.changes.truncate(at);
        txn.savepoints.truncate(i + 1);
        Ok(Response::Execution(Tag::new("ROLLBACK")))
    }

    fn begin(&self, client: &mut dyn HookClient) -> PgWireResult<Response> {
        let txn = transaction(client);
        let mut txn = txn.lock().expect("txn lock");
        if txn.active {
            // Postgres warns and stays in the block.
            Ok(Response::Execution(Tag::new("BEGIN")))
        } else {
            *txn = OpenTransaction { active: true, changes: Vec::new(), savepoints: Vec::new() };
            Ok(Response::TransactionStart(Tag::new("BEGIN")))
        }
    }

    async fn commit(&self, client: &mut dyn HookClient) -> PgWireResult<Response> {
        let changes = std::mem::take(&mut *transaction(client).lock().expect("txn lock")).changes;
        if client.transaction_status() == TransactionStatus::Error {
            return Ok(Response::TransactionEnd(Tag::new("ROLLBACK")));
        }
        if !changes.is_empty() {
            if let Err(e) = self.engine.commit(Commit { changes, ..Default::default() }).await {
                // Like Postgres: a failed COMMIT ends the transaction block.
                client.set_transaction_status(TransactionStatus::Idle);
                return Err(from_engine(e));
            }
        }
        Ok(Response::TransactionEnd(Tag::new("COMMIT")))
    }

    /// CREATE TABLE; with `restore`, re-creates a stored table under its old id.
    pub async fn create_table(&self, stmt: &Statement, ctx: &SessionContext, restore: Option<u32>) -> PgWireResult<()> {
        use datafusion::sql::sqlparser::ast::{CreateTableOptions, SqlOption};
        let Statement::CreateTable(ct) = stmt else { unreachable!("dispatch checked the statement") };
        let options: Vec<(String, String)> = match &ct.table_options {
            CreateTableOptions::None => Vec::new(),
            CreateTableOptions::With(opts) => opts
                .iter()
                .map(|o| match o {
                    SqlOption::KeyValue { key, value } => {
                        let v = value.to_string();
                        Ok((key.value.to_ascii_lowercase(), v.trim_matches('\'').to_string()))
                    }
                    other => Err(pg_error("42601", format!("unsupported table option {other}"))),
                })
                .collect::<PgWireResult<_>>()?,
            _ => return Err(pg_error("0A000", "only WITH (...) table options are supported")),
        };
        let binding = self.table_binding(&options)?;
        // DataFusion plans the columns and constraints; the options are Velocity's.
        let mut plain = ct.clone();
        plain.table_options = CreateTableOptions::None;
        // JSON columns are text marked as JSON (see `functions::json`).
        let mut json_columns = Vec::new();
        for (i, column) in plain.columns.iter_mut().enumerate() {
            use datafusion::sql::sqlparser::ast::DataType as SqlType;
            if matches!(column.data_type, SqlType::JSON | SqlType::JSONB) {
                column.data_type = SqlType::Text;
                json_columns.push(i);
            }
        }
        let plan = logical_plan(ctx, &Statement::CreateTable(plain), None).await?;
        let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmt)) = plan else {
            return Err(pg_error("0A000", "this form of CREATE TABLE is not supported"));
        };
        if !matches!(cmt.input.as_ref(), LogicalPlan::EmptyRelation(_)) {
            return Err(pg_error("0A000", "CREATE TABLE ... AS is not supported; use CREATE MATERIALIZED VIEW"));
        }
        let name = cmt.name.table().to_string();
        if self.engine.catalog.read().expect("catalog lock").get(&name).is_some() {
            if cmt.if_not_exists {
                return Ok(());
            }
            return Err(pg_error("42P07", format!("relation \"{name}\" already exists")));
        }
        let mut primary_key = Vec::new();
        for c in cmt.constraints.iter() {
            match c {
                Constraint::PrimaryKey(cols) => primary_key = cols.clone(),
                Constraint::Unique(_) => {
                    return Err(pg_error("0A000", "UNIQUE constraints other than the primary key are not supported"));
                }
            }
        }
        if binding.is_some() && primary_key.is_empty() {
            return Err(pg_error("42P16", format!("table \"{name}\" is fed by a source and needs a PRIMARY KEY to apply changes by")));
        }
        let schema = cmt.input.schema().as_arrow();
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let f = f.as_ref().clone().with_nullable(f.is_nullable() && !primary_key.contains(&i));
                if json_columns.contains(&i) { crate::functions::json::json_field(f.name(), f.is_nullable()) } else { f }
            })
            .collect();
        let id = restore.unwrap_or_else(|| self.engine.catalog.write().expect("catalog lock").allocate_id());
        let relation = Relation {
            id,
            name: name.clone(),
            kind: RelationKind::Table,
            create_sql: stmt.to_string(),
            schema: Arc::new(Schema::new(fields)),
            primary_key,
            depends_on: binding.iter().map(|b| b.source.clone()).collect(),
            binding,
        };
        self.engine.create_table(relation.clone(), restore.is_some()).await.map_err(from_engine)?;
        // DEFAULT clauses live in the stored definition; INSERT reads them from the provider.
        let table = RelationTable::new(self.engine.clone(), relation).with_defaults(cmt.column_defaults.clone());
        ctx.register_table(name.as_str(), Arc::new(table)).map_err(df_err)?;
        Ok(())
    }

    /// `WITH (source = '...', upstream = '...')` of a table fed by a source.
    fn table_binding(&self, options: &[(String, String)]) -> PgWireResult<Option<SourceBinding>> {
        if options.is_empty() {
            return Ok(None);
        }
        let get = |k: &str| options.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if let Some((k, _)) = options.iter().find(|(k, _)| k != "source" && k != "upstream") {
            return Err(pg_error("42601", format!("unknown table option \"{k}\" (expected source, upstream)")));
        }
        let source = get("source").ok_or_else(|| pg_error("42601", "a table bound to a source needs source = '...'"))?;
        let upstream =
            get("upstream").ok_or_else(|| pg_error("42601", "a table bound to a source needs upstream = '...' (schema.table)"))?;
        let catalog = self.engine.catalog.read().expect("catalog lock");
        if !catalog.get(&source).is_some_and(|r| r.kind == RelationKind::Source) {
            return Err(pg_error("42704", format!("source \"{source}\" does not exist")));
        }
        let binding = SourceBinding { source, upstream };
        if let Some(other) = catalog.iter().find(|r| r.binding.as_ref() == Some(&binding)) {
            return Err(pg_error(
                "42710",
                format!("table \"{}\" already mirrors {} of source \"{}\"", other.name, binding.upstream, binding.source),
            ));
        }
        Ok(Some(binding))
    }

    /// CREATE SOURCE; with `restore`, re-creates a stored source under its old id. Starts it.
    pub async fn create_source(
        &self,
        name: &str,
        options: &[(String, String)],
        create_sql: &str,
        restore: Option<u32>,
    ) -> PgWireResult<()> {
        let config = SourceConfig::from_options(options).map_err(|e| pg_error("22023", e))?;
        if restore.is_none() && self.engine.catalog.read().expect("catalog lock").get(name).is_some() {
            return Err(pg_error("42710", format!("source \"{name}\" already exists")));
        }
        let id = restore.unwrap_or_else(|| self.engine.catalog.write().expect("catalog lock").allocate_id());
        let relation = Relation {
            id,
            name: name.to_string(),
            kind: RelationKind::Source,
            create_sql: create_sql.to_string(),
            schema: Arc::new(Schema::empty()),
            primary_key: vec![],
            depends_on: vec![],
            binding: None,
        };
        self.engine.create_table(relation, restore.is_some()).await.map_err(from_engine)?;
        // A restored source starts once everything after it in the catalog is restored too:
        // a view restored late would miss the transactions applied before it.
        if restore.is_none() {
            crate::sources::runner::spawn(self.engine.clone(), self.sources.clone(), id, name.to_string(), config);
        }
        Ok(())
    }

    /// Start the task of a source restored at startup.
    pub fn start_source(&self, id: u32, name: &str, options: &[(String, String)]) -> PgWireResult<()> {
        let config = SourceConfig::from_options(options).map_err(|e| pg_error("22023", e))?;
        crate::sources::runner::spawn(self.engine.clone(), self.sources.clone(), id, name.to_string(), config);
        Ok(())
    }

    /// CREATE SINK; with `restore`, re-creates a stored sink under its old id. Starts its
    /// delivery task.
    pub async fn create_sink(
        &self,
        name: &str,
        from: &str,
        options: &[(String, String)],
        create_sql: &str,
        restore: Option<u32>,
    ) -> PgWireResult<()> {
        let sink_error = |e: SinkError| match e {
            SinkError::UnknownColumn(_) => pg_error("42703", e.to_string()),
            other => pg_error("22023", other.to_string()),
        };
        let config = SinkConfig::from_options(options).map_err(sink_error)?;
        let (id, relation) = {
            let mut catalog = self.engine.catalog.write().expect("catalog lock");
            if restore.is_none() && catalog.get(name).is_some() {
                return Err(pg_error("42710", format!("relation \"{name}\" already exists")));
            }
            let relation = match catalog.get(from) {
                Some(r) if matches!(r.kind, RelationKind::Table | RelationKind::MaterializedView) => r.clone(),
                Some(r) => {
                    return Err(pg_error(
                        "42809",
                        format!("\"{from}\" is a {}; a sink reads a table or materialized view", r.kind.sql_name()),
                    ));
                }
                None => return Err(pg_error("42P01", format!("relation \"{from}\" does not exist"))),
            };
            (restore.unwrap_or_else(|| catalog.allocate_id()), relation)
        };
        let encoder = SinkEncoder::new(id, name, &relation, &config).map_err(sink_error)?;
        let sink = Relation {
            id,
            name: name.to_string(),
            kind: RelationKind::Sink,
            create_sql: create_sql.to_string(),
            schema: Arc::new(Schema::empty()),
            primary_key: vec![],
            depends_on: vec![from.to_string()],
            binding: None,
        };
        self.engine.create_sink(sink, encoder, restore.is_some()).await.map_err(from_engine)?;
        let status = SinkStatus {
            relation: from.to_string(),
            topic: config.topic.clone(),
            format: config.format.name().to_string(),
            state: "starting".into(),
            ..Default::default()
        };
        self.sinks.write().expect("registry lock").insert(name.to_string(), status);
        crate::sinks::kafka::spawn(self.engine.clone(), self.sinks.clone(), id, name.to_string(), config);
        Ok(())
    }

    /// CREATE MATERIALIZED VIEW; with `restore`, re-creates a stored view and its dataflow
    /// under the old id, restoring operator state instead of recomputing it.
    pub async fn create_view(&self, stmt: &Statement, ctx: &SessionContext, restore: Option<u32>) -> PgWireResult<()> {
        let Statement::CreateView(cv) = stmt else { unreachable!("dispatch checked the statement") };
        let name = cv.name.0.last().map(|p| p.to_string()).unwrap_or_default();
        let name = datafusion::sql::sqlparser::ast::Ident::new(name.trim_matches('"')).value;
        if self.engine.catalog.read().expect("catalog lock").get(&name).is_some() {
            if cv.if_not_exists {
                return Ok(());
            }
            return Err(pg_error("42P07", format!("relation \"{name}\" already exists")));
        }
        let state = ctx.state();
        let mut plan =
            state.statement_to_plan(DFStatement::Statement(Box::new(Statement::Query(cv.query.clone())))).await.map_err(df_err)?;
        if !cv.columns.is_empty() {
            if cv.columns.len() != plan.schema().fields().len() {
                return Err(pg_error("42601", "CREATE MATERIALIZED VIEW specifies a different number of columns than the query"));
            }
            let exprs: Vec<Expr> = plan
                .schema()
                .columns()
                .into_iter()
                .zip(&cv.columns)
                .map(|(c, alias)| Expr::Column(c).alias(alias.name.value.clone()))
                .collect();
            plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan)).map_err(df_err)?);
        }
        // `SELECT after.id FROM changes(t)` names its column `id`, as Postgres does for a field
        // of a composite; DataFusion would call it `changes().after[id]`.
        if cv.columns.is_empty() && plan.schema().fields().iter().any(|f| field_access_name(f.name()).is_some()) {
            let exprs: Vec<Expr> = plan
                .schema()
                .columns()
                .into_iter()
                .map(|c| match field_access_name(&c.name).map(str::to_string) {
                    Some(short) => Expr::Column(c).alias(short),
                    None => Expr::Column(c),
                })
                .collect();
            plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan)).map_err(df_err)?);
        }
        let mut seen = std::collections::HashSet::new();
        for f in plan.schema().fields() {
            if !seen.insert(f.name().clone()) {
                return Err(pg_error(
                    "42701",
                    format!("column \"{}\" specified more than once; give the view's columns distinct names", f.name()),
                ));
            }
        }
        let plan = crate::planner::temporal::rewrite_time_windows(plan).map_err(from_plan)?;
        let optimized = state.optimize(&plan).map_err(df_err)?;
        let id = restore.unwrap_or_else(|| self.engine.catalog.write().expect("catalog lock").allocate_id());
        let resolver = CatalogResolver { engine: &self.engine, used: Mutex::new(Vec::new()) };
        let dataflow = plan_dataflow(&optimized, id, &resolver).map_err(from_plan)?;
        let mut depends_on = resolver.used.into_inner().expect("resolver lock");
        depends_on.sort();
        depends_on.dedup();
        // Column names as the user wrote them, types as the optimized plan computes them.
        let fields: Vec<Field> = plan
            .schema()
            .fields()
            .iter()
            .zip(optimized.schema().fields())
            .map(|(named, typed)| typed.as_ref().clone().with_name(named.name()))
            .collect();
        let relation = Relation {
            id,
            name: name.clone(),
            kind: RelationKind::MaterializedView,
            create_sql: stmt.to_string(),
            schema: Arc::new(Schema::new(fields)),
            primary_key: vec![],
            depends_on,
            binding: None,
        };
        self.engine.create_view(relation.clone(), dataflow, restore.is_some()).await.map_err(from_engine)?;
        ctx.register_table(name.as_str(), Arc::new(RelationTable::new(self.engine.clone(), relation))).map_err(df_err)?;
        Ok(())
    }

    async fn drop(
        &self,
        object_type: ObjectType,
        if_exists: bool,
        names: &[datafusion::sql::sqlparser::ast::ObjectName],
        cascade: bool,
        ctx: &SessionContext,
    ) -> PgWireResult<Response> {
        let (kind, tag) = match object_type {
            ObjectType::Table => (RelationKind::Table, "DROP TABLE"),
            ObjectType::MaterializedView => (RelationKind::MaterializedView, "DROP MATERIALIZED VIEW"),
            ObjectType::View => (RelationKind::MaterializedView, "DROP VIEW"),
            other => return Err(pg_error("0A000", format!("DROP {other} is not supported"))),
        };
        let mut to_drop: Vec<String> = Vec::new();
        {
            let catalog = self.engine.catalog.read().expect("catalog lock");
            for n in names {
                let name = n.0.last().map(|p| p.to_string()).unwrap_or_default();
                let Some(rel) = catalog.get(&name) else {
                    if if_exists {
                        continue;
                    }
                    return Err(pg_error("42P01", format!("{} \"{name}\" does not exist", kind.sql_name())));
                };
                if rel.kind != kind {
                    return Err(pg_error("42809", format!("\"{name}\" is not a {}", kind.sql_name())));
                }
                let dependents = catalog.dependents(&name);
                if !dependents.is_empty() && !cascade {
                    let list: Vec<String> = dependents.iter().map(|d| format!("{} \"{}\"", d.kind.sql_name(), d.name)).collect();
                    return Err(pg_error(
                        "2BP01",
                        format!(
                            "cannot drop {} \"{name}\" because other objects depend on it: {} (use DROP ... CASCADE)",
                            kind.sql_name(),
                            list.join(", ")
                        ),
                    ));
                }
                for r in catalog.drop_order(&name) {
                    if !to_drop.contains(&r.name) {
                        to_drop.push(r.name);
                    }
                }
            }
        }
        {
            let catalog = self.engine.catalog.read().expect("catalog lock");
            to_drop.sort_by_key(|n| std::cmp::Reverse(catalog.get(n).map(|r| r.id).unwrap_or(0)));
        }
        if !to_drop.is_empty() {
            self.engine.drop(to_drop.clone()).await.map_err(from_engine)?;
        }
        for n in &to_drop {
            ctx.deregister_table(n.as_str()).map_err(df_err)?;
        }
        Ok(Response::Execution(Tag::new(tag)))
    }

    async fn dml(
        &self,
        stmt: &Statement,
        plan: Option<&LogicalPlan>,
        params: &ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> PgWireResult<Response> {
        let plan = logical_plan(ctx, stmt, plan).await?;
        let plan = plan.replace_params_with_values(params).map_err(df_err)?;
        let LogicalPlan::Dml(dml) = plan else {
            return Err(pg_error("0A000", "this form of INSERT/UPDATE/DELETE is not supported"));
        };
        let relation = {
            let catalog = self.engine.catalog.read().expect("catalog lock");
            catalog.get(dml.table_name.table()).cloned()
        }
        .ok_or_else(|| pg_error("42P01", format!("relation \"{}\" does not exist", dml.table_name)))?;
        if relation.kind != RelationKind::Table {
            return Err(pg_error("42809", format!("cannot change materialized view \"{}\"", relation.name)));
        }
        if let Some(b) = &relation.binding {
            return Err(pg_error(
                "25006",
                format!("table \"{}\" is fed by source \"{}\" and cannot be changed directly", relation.name, b.source),
            ));
        }
        let schema = relation.schema.clone();
        // This transaction's earlier writes to the table, so that its statements see them.
        let pending = {
            let txn = transaction(client);
            let txn = txn.lock().expect("txn lock");
            let mine: Vec<ChangeBatch> = txn.changes.iter().filter(|(id, _)| *id == relation.id).map(|(_, c)| c.clone()).collect();
            if mine.is_empty() || !txn.active {
                None
            } else {
                Some(ChangeBatch::concat(&schema, &mine).and_then(|c| c.consolidate()).map_err(internal)?)
            }
        };
        let (changes, tag) = match &dml.op {
            WriteOp::Insert(_) => {
                let rows = self.collect(ctx, dml.input.as_ref().clone(), &schema).await?;
                check_not_null(&relation, &rows)?;
                let rows = RecordBatch::try_new(schema.clone(), rows.columns().to_vec()).map_err(internal)?;
                let n = rows.num_rows();
                (ChangeBatch::uniform(rows, 1), Tag::new("INSERT").with_oid(0).with_rows(n))
            }
            WriteOp::Delete => {
                let old = self.evaluate(ctx, dml.input.as_ref(), &schema, &relation, pending).await?;
                let n = old.weights.values().iter().sum::<i64>() as usize;
                (old.negate(), Tag::new("DELETE").with_rows(n))
            }
            WriteOp::Update => {
                let LogicalPlan::Projection(p) = dml.input.as_ref() else {
                    return Err(pg_error("0A000", "this form of UPDATE is not supported"));
                };
                // One pass computes old and new rows side by side.
                let width = schema.fields().len();
                let old: Vec<Expr> = p.input.schema().columns().into_iter().take(width).map(Expr::Column).collect();
                let new: Vec<Expr> =
                    p.expr.iter().enumerate().map(|(i, e)| e.clone().unalias().alias(format!("__velocity_new_{i}"))).collect();
                let both =
                    LogicalPlan::Projection(Projection::try_new(old.into_iter().chain(new).collect(), p.input.clone()).map_err(df_err)?);
                let wide: SchemaRef = Arc::new(Schema::new(
                    schema
                        .fields()
                        .iter()
                        .chain(schema.fields().iter())
                        .map(|f| f.as_ref().clone().with_nullable(true))
                        .collect::<Vec<_>>(),
                ));
                let pairs = self.evaluate(ctx, &both, &wide, &relation, pending).await?;
                let n = pairs.weights.values().iter().sum::<i64>() as usize;
                let old_rows = RecordBatch::try_new(schema.clone(), pairs.rows.columns()[..width].to_vec()).map_err(internal)?;
                let new_rows = RecordBatch::try_new(schema.clone(), pairs.rows.columns()[width..].to_vec())
                    .map_err(|_| not_null_error(&relation, &pairs.rows.columns()[width..]))?;
                let changes = ChangeBatch::concat(
                    &schema,
                    &[ChangeBatch::new(old_rows, pairs.weights.clone()).negate(), ChangeBatch::new(new_rows, pairs.weights)],
                )
                .map_err(internal)?;
                (changes, Tag::new("UPDATE").with_rows(n))
            }
            other => return Err(pg_error("0A000", format!("{other} is not supported"))),
        };
        let changes = changes.consolidate().map_err(internal)?;
        let in_block = {
            let txn = transaction(client);
            let mut txn = txn.lock().expect("txn lock");
            if txn.active {
                txn.changes.push((relation.id, changes.clone()));
            }
            txn.active
        };
        if !in_block && !changes.is_empty() {
            self.engine.commit(Commit { changes: vec![(relation.id, changes)], ..Default::default() }).await.map_err(from_engine)?;
        }
        Ok(Response::Execution(tag))
    }

    /// Evaluate a plan that reads `relation` (DELETE/UPDATE input) as a Z-set over what this
    /// transaction sees: committed rows plus its own pending changes. The plan is linear in
    /// the table, so plan(committed + delta) = plan(committed) + plan(delta+) - plan(delta-).
    async fn evaluate(
        &self,
        ctx: &SessionContext,
        plan: &LogicalPlan,
        schema: &SchemaRef,
        relation: &Relation,
        pending: Option<ChangeBatch>,
    ) -> PgWireResult<ChangeBatch> {
        let committed = self.collect(ctx, plan.clone(), schema).await?;
        let mut parts = vec![ChangeBatch::uniform(committed, 1)];
        if let Some(delta) = pending {
            let inserted = delta
                .filter(&arrow::compute::kernels::cmp::gt(&delta.weights, &arrow::array::Int64Array::new_scalar(0)).map_err(internal)?)
                .map_err(internal)?;
            let removed = delta
                .filter(&arrow::compute::kernels::cmp::lt(&delta.weights, &arrow::array::Int64Array::new_scalar(0)).map_err(internal)?)
                .map_err(internal)?;
            for (rows, sign) in [(inserted, 1), (removed.negate(), -1)] {
                if rows.is_empty() {
                    continue;
                }
                let rows = rows.expand_positive().map_err(internal)?;
                let rebound = rebind_scan(plan.clone(), &relation.name, rows).map_err(df_err)?;
                let result = self.collect(ctx, rebound, schema).await?;
                parts.push(ChangeBatch::uniform(result, sign));
            }
        }
        let loose = parts[0].schema();
        ChangeBatch::concat(&loose, &parts).and_then(|c| c.consolidate()).map_err(internal)
    }

    /// Run a plan against one committed snapshot, returning rows cast to `schema`'s types.
    async fn collect(&self, ctx: &SessionContext, plan: LogicalPlan, schema: &SchemaRef) -> PgWireResult<RecordBatch> {
        let batches = {
            let _gate = self.engine.gate.read().await;
            let df = ctx.execute_logical_plan(plan).await.map_err(df_err)?;
            df.collect().await.map_err(df_err)?
        };
        let batches = batches
            .into_iter()
            .map(|b| {
                let columns = b
                    .columns()
                    .iter()
                    .zip(schema.fields())
                    .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                    .collect::<Result<Vec<_>, _>>()?;
                RecordBatch::try_new_with_options(
                    Arc::new(Schema::new(schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>())),
                    columns,
                    &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pg_error("22P02", e.to_string()))?;
        let loose = Arc::new(Schema::new(schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>()));
        // Nullability is left to the caller, which knows which columns must not be NULL.
        arrow::compute::concat_batches(&loose, &batches).map_err(internal)
    }

    fn show_relations(&self, kind: RelationKind) -> PgWireResult<Response> {
        let catalog = self.engine.catalog.read().expect("catalog lock");
        let rows = catalog.iter().filter(|r| r.kind == kind).map(|r| vec![r.name.clone()]).collect();
        text_rows(&["name"], rows)
    }

    fn show_create(&self, name: &str) -> PgWireResult<Response> {
        let catalog = self.engine.catalog.read().expect("catalog lock");
        let r = catalog.get(name).ok_or_else(|| pg_error("42P01", format!("relation \"{name}\" does not exist")))?;
        text_rows(&["name", "create_sql"], vec![vec![r.name.clone(), r.create_sql.clone()]])
    }

    /// Velocity's own statements (see `crate::sql`).
    pub async fn velocity_statement(&self, stmt: &crate::sql::VelocityStatement) -> PgWireResult<Response> {
        use crate::sql::VelocityStatement as V;
        match stmt {
            V::ShowMaterializedViews => self.show_relations(RelationKind::MaterializedView),
            V::ShowCreate { name } => self.show_create(name),
            // Client commits are applied synchronously; sources are waited for until they have
            // applied everything they can read.
            // FLUSH waits as long as sources make progress (a bulk load can be waited for)
            // and gives up after 60 s in which no waited-for source applied anything.
            V::Flush => {
                const STALLED: std::time::Duration = std::time::Duration::from_secs(60);
                let started: std::collections::HashMap<String, u64> =
                    self.sources.read().expect("registry lock").iter().map(|(n, s)| (n.clone(), s.rounds)).collect();
                let progress = |waiting: &[String]| -> Vec<(u64, u64)> {
                    let sources = self.sources.read().expect("registry lock");
                    waiting.iter().filter_map(|n| sources.get(n)).map(|s| (s.events, s.pending)).collect()
                };
                let mut last_progress = (Vec::new(), std::time::Instant::now());
                loop {
                    let waiting: Vec<String> = {
                        let sources = self.sources.read().expect("registry lock");
                        sources
                            .iter()
                            .filter(|(n, s)| {
                                // A pass that began after FLUSH, ending with nothing left to read.
                                let fresh = s.rounds >= started.get(*n).copied().unwrap_or(0) + 2;
                                s.state == "running" && !(fresh && s.caught_up)
                            })
                            .map(|(n, _)| n.clone())
                            .collect()
                    };
                    if waiting.is_empty() {
                        break;
                    }
                    let now = progress(&waiting);
                    if now != last_progress.0 {
                        last_progress = (now, std::time::Instant::now());
                    } else if last_progress.1.elapsed() > STALLED {
                        return Err(pg_error(
                            "57014",
                            format!("FLUSH gave up: sources made no progress for {} s: {}", STALLED.as_secs(), waiting.join(", ")),
                        ));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Ok(Response::Execution(Tag::new("FLUSH")))
            }
            V::CreateSource { name, options } => {
                let sql = format!("CREATE SOURCE {name} {}", with_clause(options));
                self.create_source(name, options, &sql, None).await?;
                Ok(Response::Execution(Tag::new("CREATE SOURCE")))
            }
            V::CreateSink { name, from, options } => {
                let sql = format!("CREATE SINK {name} FROM {from} {}", with_clause(options));
                self.create_sink(name, from, options, &sql, None).await?;
                Ok(Response::Execution(Tag::new("CREATE SINK")))
            }
            V::ShowSinks => {
                let catalog = self.engine.catalog.read().expect("catalog lock");
                let sinks = self.sinks.read().expect("registry lock");
                let rows = catalog
                    .iter()
                    .filter(|r| r.kind == RelationKind::Sink)
                    .map(|r| {
                        let s = sinks.get(&r.name).cloned().unwrap_or_default();
                        vec![r.name.clone(), s.relation, s.topic, s.format, s.state, s.delivered_tick.to_string(), s.messages.to_string()]
                    })
                    .collect();
                text_rows(&["name", "relation", "topic", "format", "status", "delivered_tick", "messages"], rows)
            }
            V::DropSink { name, if_exists } => {
                let exists = self.engine.catalog.read().expect("catalog lock").get(name).is_some_and(|r| r.kind == RelationKind::Sink);
                if exists {
                    self.engine.drop(vec![name.clone()]).await.map_err(from_engine)?;
                } else if !*if_exists {
                    return Err(pg_error("42704", format!("sink \"{name}\" does not exist")));
                }
                Ok(Response::Execution(Tag::new("DROP SINK")))
            }
            V::ShowSources => {
                let catalog = self.engine.catalog.read().expect("catalog lock");
                let sources = self.sources.read().expect("registry lock");
                let rows = catalog
                    .iter()
                    .filter(|r| r.kind == RelationKind::Source)
                    .map(|r| {
                        let s = sources.get(&r.name).cloned().unwrap_or_default();
                        vec![
                            r.name.clone(),
                            s.connector,
                            s.state,
                            s.position,
                            s.transactions.to_string(),
                            s.events.to_string(),
                            s.errors.to_string(),
                            format!("{} {}", s.lag, s.lag_unit),
                            s.reason,
                        ]
                    })
                    .collect();
                text_rows(&["name", "connector", "status", "position", "transactions", "events", "errors", "lag", "reason"], rows)
            }
            V::DropSource { name, if_exists, cascade } => {
                let exists = self.engine.catalog.read().expect("catalog lock").get(name).is_some_and(|r| r.kind == RelationKind::Source);
                if !exists {
                    if *if_exists {
                        return Ok(Response::Execution(Tag::new("DROP SOURCE")));
                    }
                    return Err(pg_error("42704", format!("source \"{name}\" does not exist")));
                }
                let to_drop = {
                    let catalog = self.engine.catalog.read().expect("catalog lock");
                    let dependents = catalog.dependents(name);
                    if !dependents.is_empty() && !cascade {
                        let list: Vec<String> = dependents.iter().map(|d| format!("{} \"{}\"", d.kind.sql_name(), d.name)).collect();
                        return Err(pg_error(
                            "2BP01",
                            format!(
                                "cannot drop source \"{name}\" because other objects depend on it: {} (use DROP ... CASCADE)",
                                list.join(", ")
                            ),
                        ));
                    }
                    catalog.drop_order(name).into_iter().map(|r| r.name).collect::<Vec<_>>()
                };
                self.engine.drop(to_drop.clone()).await.map_err(from_engine)?;
                Ok(Response::Execution(Tag::new("DROP SOURCE")))
            }
            other => Err(pg_error("0A000", format!("{other:?} is not supported here"))),
        }
    }
}

/// `WITH (k = 'v', ...)` as stored in a definition, values quoted.
fn with_clause(options: &[(String, String)]) -> String {
    let options: Vec<String> = options.iter().map(|(k, v)| format!("{k} = '{}'", v.replace('\'', "''"))).collect();
    format!("WITH ({})", options.join(", "))
}

fn not_null_error(relation: &Relation, columns: &[arrow::array::ArrayRef]) -> datafusion_postgres::pgwire::error::PgWireError {
    for (f, c) in relation.schema.fields().iter().zip(columns) {
        if !f.is_nullable() && c.null_count() > 0 {
            return pg_error(
                "23502",
                format!("null value in column \"{}\" of relation \"{}\" violates not-null constraint", f.name(), relation.name),
            );
        }
    }
    pg_error("23502", "null value violates not-null constraint")
}

fn check_not_null(relation: &Relation, rows: &RecordBatch) -> PgWireResult<()> {
    for (f, c) in relation.schema.fields().iter().zip(rows.columns()) {
        if !f.is_nullable() && c.null_count() > 0 {
            return Err(not_null_error(relation, rows.columns()));
        }
    }
    Ok(())
}

#[async_trait]
impl QueryHook for VelocityHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.dispatch(statement, None, &ParamValues::List(vec![]), session_context, client).await
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        match statement {
            Statement::StartTransaction { .. } | Statement::Commit { .. } | Statement::Rollback { .. } => Some(Ok(text_plan(&[]))),
            Statement::Savepoint { .. } | Statement::ReleaseSavepoint { .. } => Some(Ok(text_plan(&[]))),
            Statement::CreateTable(_) | Statement::CreateView(_) | Statement::Drop { .. } => Some(Ok(text_plan(&[]))),
            Statement::ShowTables { .. } => Some(Ok(text_plan(&["name"]))),
            _ => None,
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        logical_plan: &LogicalPlan,
        params: &ParamValues,
        session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let plan = matches!(logical_plan, LogicalPlan::Dml(_)).then_some(logical_plan);
        self.dispatch(statement, plan, params, session_context, client).await
    }
}

fn internal(e: impl std::fmt::Display) -> datafusion_postgres::pgwire::error::PgWireError {
    pg_error("XX000", e.to_string())
}

/// Replace scans of `table` in `plan` with an in-memory table holding `rows`.
fn rebind_scan(plan: LogicalPlan, table: &str, rows: RecordBatch) -> datafusion::error::Result<LogicalPlan> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    let provider = Arc::new(datafusion::datasource::MemTable::try_new(rows.schema(), vec![vec![rows]])?);
    let source = datafusion::datasource::provider_as_source(provider);
    plan.transform_up(|node| match node {
        LogicalPlan::TableScan(mut scan) if scan.table_name.table() == table => {
            scan.source = source.clone();
            scan.filters.clear();
            Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// The field name of a column DataFusion named after a field access (`expr[field]`).
fn field_access_name(name: &str) -> Option<&str> {
    let inner = name.strip_suffix(']')?;
    let (_, field) = inner.rsplit_once('[')?;
    (!field.is_empty() && field.chars().all(|c| c.is_alphanumeric() || c == '_')).then_some(field)
}
