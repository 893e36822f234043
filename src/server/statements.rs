//! Statements, from pgwire to the coordinator: [`route`] is the dispatch table for the
//! statements sqlparser parses (and [`velocity`] for Velocity's own), each kind with one
//! small handler. Decisions are the coordinator's; this module keeps only what belongs to
//! a session (its transaction block) and turns results into pgwire responses.
//!
//! Statements no route takes (SELECT, SET, catalog queries) fall through to DataFusion.

use std::sync::{Arc, Mutex};

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::{DFSchema, ParamValues};
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
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

use super::error::SessionError;
use crate::catalog::RelationKind;
use crate::coordinator::Coordinator;
use crate::dataflow::ChangeBatch;
use crate::sql::VelocityStatement;

/// What the server does with a statement sqlparser parsed.
enum Route<'a> {
    Begin,
    Commit,
    Rollback,
    Savepoint(&'a str),
    Release(&'a str),
    RollbackTo(&'a str),
    CreateTable,
    CreateView,
    Drop {
        kind: RelationKind,
        tag: &'static str,
        names: Vec<String>,
        if_exists: bool,
        cascade: bool,
    },
    Write,
    ShowTables,
    /// Refused with 0A000: what is not supported.
    Unsupported(String),
}

/// The dispatch table: which statements Velocity handles, and how.
fn route(stmt: &Statement) -> Option<Route<'_>> {
    Some(match stmt {
        Statement::StartTransaction { .. } => Route::Begin,
        Statement::Commit { .. } => Route::Commit,
        Statement::Rollback { savepoint: Some(name), .. } => Route::RollbackTo(&name.value),
        Statement::Rollback { .. } => Route::Rollback,
        Statement::Savepoint { name } => Route::Savepoint(&name.value),
        Statement::ReleaseSavepoint { name } => Route::Release(&name.value),
        Statement::CreateTable(_) => Route::CreateTable,
        Statement::CreateView(_) => Route::CreateView,
        Statement::CreateFunction(_) | Statement::DropFunction(_) => Route::Unsupported("a user-defined function".into()),
        Statement::CreateProcedure { .. } => Route::Unsupported("a procedure".into()),
        Statement::CreateTrigger(_) => Route::Unsupported("a trigger".into()),
        Statement::Drop { object_type, if_exists, names, cascade, .. } => {
            let (kind, tag) = match object_type {
                ObjectType::Table => (RelationKind::Table, "DROP TABLE"),
                ObjectType::MaterializedView => (RelationKind::MaterializedView, "DROP MATERIALIZED VIEW"),
                ObjectType::View => (RelationKind::MaterializedView, "DROP VIEW"),
                other => return Some(Route::Unsupported(format!("DROP {other}"))),
            };
            let names = names.iter().map(|n| n.0.last().map(|p| p.to_string()).unwrap_or_default()).collect();
            Route::Drop { kind, tag, names, if_exists: *if_exists, cascade: *cascade }
        }
        Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) => Route::Write,
        Statement::ShowTables { .. } => Route::ShowTables,
        _ => return None,
    })
}

impl Route<'_> {
    /// The columns of the rows it answers with, for the extended protocol's Describe.
    fn columns(&self) -> &'static [&'static str] {
        match self {
            Route::ShowTables => &["name"],
            _ => &[],
        }
    }

    /// Runs even in a failed transaction block.
    fn ends_transaction(&self) -> bool {
        matches!(self, Route::Commit | Route::Rollback | Route::RollbackTo(_))
    }
}

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

impl OpenTransaction {
    fn savepoint(&self, name: &str) -> Result<usize, SessionError> {
        self.savepoints.iter().rposition(|(n, _)| n == name).ok_or_else(|| SessionError::UndefinedSavepoint(name.to_string()))
    }
}

fn transaction(client: &dyn HookClient) -> Arc<Mutex<OpenTransaction>> {
    client.session_extensions().get_or_insert_with(|| Mutex::new(OpenTransaction::default()))
}

/// Velocity's handlers for the statements [`route`] takes, as a `datafusion-postgres` hook.
pub struct StatementHook {
    coordinator: Arc<Coordinator>,
}

impl StatementHook {
    pub fn new(coordinator: Arc<Coordinator>) -> StatementHook {
        StatementHook { coordinator }
    }

    async fn execute(
        &self,
        route: Route<'_>,
        stmt: &Statement,
        plan: Option<&LogicalPlan>,
        params: &ParamValues,
        client: &mut dyn HookClient,
    ) -> PgWireResult<Response> {
        let aborted = client.transaction_status() == TransactionStatus::Error;
        if aborted && !route.ends_transaction() {
            return Err(SessionError::InFailedTransaction.into());
        }
        let done = |tag: &str| Ok(Response::Execution(Tag::new(tag)));
        let coordinator = &self.coordinator;
        match route {
            Route::Begin => begin(client),
            Route::Commit => self.commit(client).await,
            Route::Rollback => {
                *transaction(client).lock().expect("txn lock") = OpenTransaction::default();
                Ok(Response::TransactionEnd(Tag::new("ROLLBACK")))
            }
            Route::Savepoint(name) => savepoint(client, name),
            Route::Release(name) => release(client, name),
            Route::RollbackTo(name) => rollback_to(client, name, aborted),
            Route::CreateTable => {
                coordinator.create_table(stmt).await?;
                done("CREATE TABLE")
            }
            Route::CreateView => {
                coordinator.create_view(stmt).await?;
                done("CREATE MATERIALIZED VIEW")
            }
            Route::Drop { kind, tag, names, if_exists, cascade } => {
                coordinator.drop_objects(kind, &names, if_exists, cascade).await?;
                done(tag)
            }
            Route::Write => self.write(stmt, plan, params, client).await,
            Route::ShowTables => show_relations(coordinator, RelationKind::Table),
            Route::Unsupported(what) => Err(crate::coordinator::CoordinatorError::Unsupported(what).into()),
        }
    }

    async fn commit(&self, client: &mut dyn HookClient) -> PgWireResult<Response> {
        let changes = std::mem::take(&mut *transaction(client).lock().expect("txn lock")).changes;
        if client.transaction_status() == TransactionStatus::Error {
            return Ok(Response::TransactionEnd(Tag::new("ROLLBACK")));
        }
        if let Err(e) = self.coordinator.commit(changes).await {
            // Like Postgres: a failed COMMIT ends the transaction block.
            client.set_transaction_status(TransactionStatus::Idle);
            return Err(e.into());
        }
        Ok(Response::TransactionEnd(Tag::new("COMMIT")))
    }

    /// INSERT, UPDATE, DELETE: applied at once, or at COMMIT inside a transaction block.
    async fn write(
        &self,
        stmt: &Statement,
        plan: Option<&LogicalPlan>,
        params: &ParamValues,
        client: &mut dyn HookClient,
    ) -> PgWireResult<Response> {
        let txn = transaction(client);
        let pending = |relation: u32| -> Vec<ChangeBatch> {
            let txn = txn.lock().expect("txn lock");
            if !txn.active {
                return Vec::new();
            }
            txn.changes.iter().filter(|(id, _)| *id == relation).map(|(_, c)| c.clone()).collect()
        };
        let write = self.coordinator.write(stmt, plan, params, pending).await?;
        let tag = match write.command {
            "INSERT" => Tag::new("INSERT").with_oid(0).with_rows(write.rows),
            command => Tag::new(command).with_rows(write.rows),
        };
        let in_block = {
            let mut txn = txn.lock().expect("txn lock");
            if txn.active {
                txn.changes.push((write.relation, write.changes.clone()));
            }
            txn.active
        };
        if !in_block && !write.changes.is_empty() {
            self.coordinator.commit(vec![(write.relation, write.changes)]).await?;
        }
        Ok(Response::Execution(tag))
    }
}

fn begin(client: &mut dyn HookClient) -> PgWireResult<Response> {
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

/// `SAVEPOINT name`: remember how far the transaction's changes go.
fn savepoint(client: &mut dyn HookClient, name: &str) -> PgWireResult<Response> {
    let txn = transaction(client);
    let mut txn = txn.lock().expect("txn lock");
    if !txn.active {
        return Err(SessionError::NotInTransaction("SAVEPOINT").into());
    }
    let at = txn.changes.len();
    txn.savepoints.push((name.to_string(), at));
    Ok(Response::Execution(Tag::new("SAVEPOINT")))
}

/// `RELEASE SAVEPOINT name`: forget it (and later ones); its changes stay.
fn release(client: &mut dyn HookClient, name: &str) -> PgWireResult<Response> {
    let txn = transaction(client);
    let mut txn = txn.lock().expect("txn lock");
    let i = txn.savepoint(name)?;
    txn.savepoints.truncate(i);
    Ok(Response::Execution(Tag::new("RELEASE")))
}

/// `ROLLBACK TO SAVEPOINT name`: drop the changes made since it; it stays open.
fn rollback_to(client: &mut dyn HookClient, name: &str, aborted: bool) -> PgWireResult<Response> {
    if aborted {
        // pgwire keeps a failed transaction's status until the block ends.
        return Err(SessionError::RollbackToAfterError.into());
    }
    let txn = transaction(client);
    let mut txn = txn.lock().expect("txn lock");
    let i = txn.savepoint(name)?;
    let at = txn.savepoints[i].1;
    txn.changes.truncate(at);
    txn.savepoints.truncate(i + 1);
    Ok(Response::Execution(Tag::new("ROLLBACK")))
}

/// Rows of text columns (SHOW ...).
pub fn text_rows(columns: &[&str], rows: Vec<Vec<String>>) -> PgWireResult<Response> {
    let schema: SchemaRef = Arc::new(Schema::new(columns.iter().map(|c| Field::new(*c, DataType::Utf8, true)).collect::<Vec<_>>()));
    let arrays =
        (0..columns.len()).map(|c| Arc::new(StringArray::from(rows.iter().map(|r| r[c].clone()).collect::<Vec<_>>())) as _).collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(SessionError::from)?;
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, &Format::UnifiedText, None)?);
    let rows: Vec<_> = encode_recordbatch(fields.clone(), batch).collect();
    Ok(Response::Query(QueryResponse::new(fields, stream::iter(rows))))
}

/// The result schema of a routed statement, for the extended protocol's Describe.
fn text_plan(columns: &[&str]) -> LogicalPlan {
    let schema = Schema::new(columns.iter().map(|c| Field::new(*c, DataType::Utf8, true)).collect::<Vec<_>>());
    LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(DFSchema::try_from(schema).expect("plain schema")),
    })
}

fn show_relations(coordinator: &Coordinator, kind: RelationKind) -> PgWireResult<Response> {
    let rows = coordinator.engine().catalog().iter().filter(|r| r.kind == kind).map(|r| vec![r.name.clone()]).collect();
    text_rows(&["name"], rows)
}

/// Velocity's own statements (see `crate::sql`), but for the changefeeds, which stream to
/// the client and are served in `server::subscribe`.
pub async fn velocity(coordinator: &Coordinator, stmt: VelocityStatement) -> PgWireResult<Response> {
    use VelocityStatement as V;
    let done = |tag: &str| Ok(Response::Execution(Tag::new(tag)));
    match stmt {
        V::ShowMaterializedViews => show_relations(coordinator, RelationKind::MaterializedView),
        V::ShowCreate { name } => {
            let catalog = coordinator.engine().catalog();
            let r = catalog
                .get(&name)
                .ok_or(crate::coordinator::CoordinatorError::UndefinedObject { kind: RelationKind::Table, name: name.clone() })?;
            text_rows(&["name", "create_sql"], vec![vec![r.name.clone(), r.create_sql.clone()]])
        }
        V::Flush => {
            coordinator.flush().await?;
            done("FLUSH")
        }
        V::CreateSource { name, options } => {
            coordinator.create_source(&name, &options).await?;
            done("CREATE SOURCE")
        }
        V::CreateSink { name, from, options } => {
            coordinator.create_sink(&name, &from, &options).await?;
            done("CREATE SINK")
        }
        V::DropSource { name, if_exists, cascade } => {
            coordinator.drop_objects(RelationKind::Source, &[name], if_exists, cascade).await?;
            done("DROP SOURCE")
        }
        V::DropSink { name, if_exists } => {
            coordinator.drop_objects(RelationKind::Sink, &[name], if_exists, false).await?;
            done("DROP SINK")
        }
        V::ShowSinks => {
            let catalog = coordinator.engine().catalog();
            let sinks = coordinator.sinks().read().expect("registry lock");
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
        V::ShowSources => {
            let catalog = coordinator.engine().catalog();
            let sources = coordinator.sources().read().expect("registry lock");
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
        V::Subscribe(_) | V::CopySubscribe(_) | V::DeclareSubscribe { .. } | V::Fetch { .. } => {
            Err(crate::coordinator::CoordinatorError::Unsupported("a changefeed here".into()).into())
        }
    }
}

#[async_trait]
impl QueryHook for StatementHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let route = route(statement)?;
        Some(self.execute(route, statement, None, &ParamValues::List(vec![]), client).await)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        // DataFusion plans INSERT/UPDATE/DELETE (their parameters' types come from it).
        match route(statement)? {
            Route::Write => None,
            route => Some(Ok(text_plan(route.columns()))),
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        logical_plan: &LogicalPlan,
        params: &ParamValues,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let route = route(statement)?;
        let plan = matches!(logical_plan, LogicalPlan::Dml(_)).then_some(logical_plan);
        Some(self.execute(route, statement, plan, params, client).await)
    }
}
