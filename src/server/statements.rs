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
use datafusion::sql::sqlparser::ast::{
    Action, AlterRoleOperation, CreateRole, Expr, GrantObjects, Grantee, GranteeName, GranteesType, Ident, ObjectName, ObjectType,
    Password, Privileges, Reset, RoleOption, Set, SetSessionAuthorizationParamKind, Statement, Value,
};
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
use super::session;
use crate::catalog::{Privilege, RelationKind};
use crate::coordinator::{Coordinator, CoordinatorError, RoleOptions};
use crate::dataflow::ChangeBatch;
use crate::sql::{ConnectorKind, VelocityStatement};

/// What the server does with a statement sqlparser parsed.
enum Route<'a> {
    Begin,
    Commit,
    Rollback,
    Savepoint(&'a str),
    Release(&'a str),
    RollbackTo(&'a str),
    CreateTable,
    /// `CREATE [MATERIALIZED] VIEW` (true when materialized).
    CreateView(bool),
    Drop {
        kind: RelationKind,
        tag: &'static str,
        names: Vec<String>,
        if_exists: bool,
        cascade: bool,
    },
    Write,
    ShowTables,
    CreateRole(&'a CreateRole),
    AlterRole {
        name: &'a Ident,
        options: &'a [RoleOption],
    },
    DropRole {
        names: Vec<String>,
        if_exists: bool,
    },
    /// `GRANT` (true) or `REVOKE` (false).
    Grant {
        privileges: &'a Privileges,
        objects: Option<&'a GrantObjects>,
        grantees: &'a [Grantee],
        grant: bool,
    },
    /// `SET ROLE name` (Some) or `SET ROLE NONE` / `RESET ROLE`.
    SetRole(Option<String>),
    /// `SET SESSION AUTHORIZATION name` (Some) or `... DEFAULT`.
    SessionAuthorization(Option<String>),
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
        Statement::CreateView(cv) => Route::CreateView(cv.materialized),
        Statement::CreateFunction(_) | Statement::DropFunction(_) => Route::Unsupported("a user-defined function".into()),
        Statement::CreateProcedure { .. } => Route::Unsupported("a procedure".into()),
        Statement::CreateTrigger(_) => Route::Unsupported("a trigger".into()),
        Statement::Drop { object_type: ObjectType::Role | ObjectType::User, if_exists, names, .. } => {
            Route::DropRole { names: names.iter().map(object_name).collect(), if_exists: *if_exists }
        }
        Statement::Drop { object_type, if_exists, names, cascade, .. } => {
            let (kind, tag) = match object_type {
                ObjectType::Table => (RelationKind::Table, "DROP TABLE"),
                ObjectType::MaterializedView => (RelationKind::MaterializedView, "DROP MATERIALIZED VIEW"),
                ObjectType::View => (RelationKind::View, "DROP VIEW"),
                other => return Some(Route::Unsupported(format!("DROP {other}"))),
            };
            let names = names.iter().map(|n| n.0.last().map(|p| p.to_string()).unwrap_or_default()).collect();
            Route::Drop { kind, tag, names, if_exists: *if_exists, cascade: *cascade }
        }
        Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) => Route::Write,
        Statement::ShowTables { .. } => Route::ShowTables,
        Statement::CreateRole(role) => Route::CreateRole(role),
        Statement::AlterRole { name, operation: AlterRoleOperation::WithOptions { options } } => Route::AlterRole { name, options },
        Statement::AlterRole { operation, .. } => Route::Unsupported(format!("ALTER ROLE ... {operation}")),
        Statement::Grant(g) => {
            if g.with_grant_option {
                return Some(Route::Unsupported("WITH GRANT OPTION".into()));
            }
            Route::Grant { privileges: &g.privileges, objects: g.objects.as_ref(), grantees: &g.grantees, grant: true }
        }
        Statement::Revoke(r) => {
            Route::Grant { privileges: &r.privileges, objects: r.objects.as_ref(), grantees: &r.grantees, grant: false }
        }
        Statement::Set(Set::SetRole { role_name, .. }) => Route::SetRole(role_name.as_ref().map(ident_name)),
        Statement::Set(Set::SetSessionAuthorization(param)) => Route::SessionAuthorization(match &param.kind {
            SetSessionAuthorizationParamKind::Default => None,
            SetSessionAuthorizationParamKind::User(name) => Some(ident_name(name)),
        }),
        Statement::Reset(r) if matches!(&r.reset, Reset::ConfigurationParameter(n) if object_name(n) == "role") => Route::SetRole(None),
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
        let roles = session::roles(client);
        let role = roles.current();
        let role = role.as_str();
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
                coordinator.create_table(role, stmt).await?;
                done("CREATE TABLE")
            }
            Route::CreateView(materialized) => {
                coordinator.create_view(role, stmt).await?;
                done(if materialized { "CREATE MATERIALIZED VIEW" } else { "CREATE VIEW" })
            }
            Route::Drop { kind, tag, names, if_exists, cascade } => {
                coordinator.drop_objects(role, kind, &names, if_exists, cascade).await?;
                done(tag)
            }
            Route::Write => self.write(role, stmt, plan, params, client).await,
            Route::ShowTables => show_relations(coordinator, RelationKind::Table),
            Route::CreateRole(create) => {
                let name = create.names.first().map(object_name).unwrap_or_default();
                if create.names.len() != 1 {
                    return Err(CoordinatorError::Unsupported("CREATE ROLE of several roles at once".into()).into());
                }
                coordinator.create_role(role, &name, create.if_not_exists, create_role_options(create)?).await?;
                done("CREATE ROLE")
            }
            Route::AlterRole { name, options } => {
                coordinator.alter_role(role, &ident_name(name), role_options(options)?).await?;
                done("ALTER ROLE")
            }
            Route::DropRole { names, if_exists } => {
                coordinator.drop_roles(role, &roles.session_user(), &names, if_exists).await?;
                done("DROP ROLE")
            }
            Route::Grant { privileges, objects: Some(GrantObjects::Databases(databases)), grantees, grant } => {
                let create_only = match privileges {
                    Privileges::All { .. } => true,
                    Privileges::Actions(actions) => actions.iter().all(|a| matches!(a, Action::Create { obj_type: None })),
                };
                if !create_only {
                    return Err(CoordinatorError::Unsupported(format!("the privileges {privileges} on a database (CREATE is)")).into());
                }
                let grantees = grantee_names(grantees)?;
                for database in databases {
                    coordinator.grant_create_on_database(role, &object_name(database), &grantees, grant).await?;
                }
                done(if grant { "GRANT" } else { "REVOKE" })
            }
            Route::Grant { privileges, objects, grantees, grant } => {
                let parts = grant_parts(privileges, objects, grantees)?;
                coordinator.grant(role, None, &parts.privileges, &parts.objects, &parts.grantees, grant).await?;
                done(if grant { "GRANT" } else { "REVOKE" })
            }
            Route::SetRole(target) => {
                if let Some(target) = &target {
                    coordinator.authorize_set_role(&roles.session_user(), target)?;
                }
                roles.set_role(target);
                done("SET")
            }
            Route::SessionAuthorization(target) => {
                if let Some(target) = &target {
                    coordinator.authorize_session_authorization(roles.authenticated(), target)?;
                }
                roles.set_session_user(target);
                done("SET")
            }
            Route::Unsupported(what) => Err(CoordinatorError::Unsupported(what).into()),
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
        role: &str,
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
        let write = self.coordinator.write(role, stmt, plan, params, pending).await?;
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

/// SELECT privileges for a statement DataFusion runs (the statements [`route`] takes are
/// checked by the coordinator as they run).
pub fn authorize(coordinator: &Coordinator, role: &str, stmt: &Statement) -> Result<(), CoordinatorError> {
    match route(stmt) {
        Some(_) => Ok(()),
        None => coordinator.authorize_reads(role, stmt, None),
    }
}

/// A name as the catalog spells it: unquoted identifiers fold to lower case.
fn ident_name(ident: &Ident) -> String {
    if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_ascii_lowercase() }
}

/// The last part of a possibly qualified name.
fn object_name(name: &ObjectName) -> String {
    name.0.last().and_then(|p| p.as_ident()).map(ident_name).unwrap_or_default()
}

fn create_role_options(create: &CreateRole) -> Result<RoleOptions, CoordinatorError> {
    let unsupported = |what: &str| Err(CoordinatorError::Unsupported(format!("{what} in CREATE ROLE")));
    if create.create_db == Some(true)
        || create.create_role == Some(true)
        || create.replication == Some(true)
        || create.bypassrls == Some(true)
    {
        return unsupported("CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS");
    }
    if create.connection_limit.is_some() || create.valid_until.is_some() {
        return unsupported("CONNECTION LIMIT or VALID UNTIL");
    }
    if !(create.in_role.is_empty()
        && create.in_group.is_empty()
        && create.role.is_empty()
        && create.user.is_empty()
        && create.admin.is_empty())
    {
        return unsupported("role membership");
    }
    Ok(RoleOptions {
        superuser: create.superuser,
        login: create.login,
        password: create.password.as_ref().map(password_secret).transpose()?,
    })
}

fn role_options(options: &[RoleOption]) -> Result<RoleOptions, CoordinatorError> {
    let mut out = RoleOptions::default();
    for option in options {
        match option {
            RoleOption::SuperUser(v) => out.superuser = Some(*v),
            RoleOption::Login(v) => out.login = Some(*v),
            RoleOption::Password(p) => out.password = Some(password_secret(p)?),
            RoleOption::Inherit(true) | RoleOption::CreateDB(false) | RoleOption::CreateRole(false) => {}
            RoleOption::Replication(false) | RoleOption::BypassRLS(false) => {}
            other => return Err(CoordinatorError::Unsupported(format!("{other} in ALTER ROLE"))),
        }
    }
    Ok(out)
}

/// `PASSWORD 'x'` as its SCRAM secret (the text itself is not kept), `PASSWORD NULL` as none.
fn password_secret(password: &Password) -> Result<Option<crate::catalog::RoleSecret>, CoordinatorError> {
    match password {
        Password::NullPassword => Ok(None),
        Password::Password(Expr::Value(v)) => match &v.value {
            Value::SingleQuotedString(text) => Ok(Some(super::auth::scram_secret(text))),
            _ => Err(CoordinatorError::InvalidOption("PASSWORD takes a string".into())),
        },
        Password::Password(_) => Err(CoordinatorError::InvalidOption("PASSWORD takes a string".into())),
    }
}

/// What a GRANT or REVOKE names.
struct GrantParts {
    privileges: Vec<Privilege>,
    objects: Vec<String>,
    /// PUBLIC as "".
    grantees: Vec<String>,
}

fn grant_parts(privileges: &Privileges, objects: Option<&GrantObjects>, grantees: &[Grantee]) -> Result<GrantParts, CoordinatorError> {
    let unsupported = |what: String| CoordinatorError::Unsupported(what);
    let privileges = match privileges {
        Privileges::All { .. } => Privilege::ALL.to_vec(),
        Privileges::Actions(actions) => actions
            .iter()
            .map(|a| match a {
                Action::Select { columns: None } => Ok(Privilege::Select),
                Action::Insert { columns: None } => Ok(Privilege::Insert),
                Action::Update { columns: None } => Ok(Privilege::Update),
                Action::Delete => Ok(Privilege::Delete),
                other => Err(unsupported(format!("the privilege {other}"))),
            })
            .collect::<Result<_, _>>()?,
    };
    let objects = match objects {
        Some(GrantObjects::Tables(names) | GrantObjects::Views(names)) => names.iter().map(object_name).collect(),
        Some(other) => return Err(unsupported(format!("privileges on {other}"))),
        None => return Err(unsupported("GRANT without ON".into())),
    };
    Ok(GrantParts { privileges, objects, grantees: grantee_names(grantees)? })
}

/// Role names, PUBLIC as "".
fn grantee_names(grantees: &[Grantee]) -> Result<Vec<String>, CoordinatorError> {
    grantees
        .iter()
        .map(|g| match (&g.grantee_type, &g.name) {
            (GranteesType::Public, _) => Ok(String::new()),
            (_, Some(GranteeName::ObjectName(name))) => Ok(object_name(name)),
            _ => Err(CoordinatorError::Unsupported(format!("the grantee {g}"))),
        })
        .collect()
}

fn relation_kind(kind: ConnectorKind) -> RelationKind {
    match kind {
        ConnectorKind::Source => RelationKind::Source,
        ConnectorKind::Sink => RelationKind::Sink,
    }
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
pub async fn velocity(coordinator: &Coordinator, role: &str, stmt: VelocityStatement) -> PgWireResult<Response> {
    use VelocityStatement as V;
    let done = |tag: &str| Ok(Response::Execution(Tag::new(tag)));
    match stmt {
        V::ShowMaterializedViews => show_relations(coordinator, RelationKind::MaterializedView),
        V::ShowCreate { name } => {
            let catalog = coordinator.engine().catalog();
            let r = catalog.get(&name).ok_or(CoordinatorError::UndefinedObject { kind: RelationKind::Table, name: name.clone() })?;
            text_rows(&["name", "create_sql"], vec![vec![r.name.clone(), r.create_sql.clone()]])
        }
        V::Flush => {
            coordinator.flush().await?;
            done("FLUSH")
        }
        V::CreateSource { name, options } => {
            coordinator.create_source(role, &name, &options).await?;
            done("CREATE SOURCE")
        }
        V::CreateSink { name, from, options } => {
            coordinator.create_sink(role, &name, &from, &options).await?;
            done("CREATE SINK")
        }
        V::DropSource { name, if_exists, cascade } => {
            coordinator.drop_objects(role, RelationKind::Source, &[name], if_exists, cascade).await?;
            done("DROP SOURCE")
        }
        V::GrantOnConnector { privileges, kind, names, grantees, grant } => {
            let kind = relation_kind(kind);
            let mut granted = Vec::new();
            for name in &privileges {
                match name.as_str() {
                    "all" => granted.extend(Privilege::of_kind(kind)),
                    "usage" => granted.push(Privilege::Usage),
                    "select" => granted.push(Privilege::Select),
                    "insert" => granted.push(Privilege::Insert),
                    "update" => granted.push(Privilege::Update),
                    "delete" => granted.push(Privilege::Delete),
                    other => {
                        return Err(CoordinatorError::InvalidGrant { privilege: other.to_ascii_uppercase(), kind: kind.sql_name() }.into());
                    }
                }
            }
            if granted.is_empty() {
                return Err(CoordinatorError::InvalidGrant { privilege: "ALL".into(), kind: kind.sql_name() }.into());
            }
            coordinator.grant(role, Some(kind), &granted, &names, &grantees, grant).await?;
            done(if grant { "GRANT" } else { "REVOKE" })
        }
        V::GrantRole { roles, members, grant } => {
            coordinator.grant_roles(role, &roles, &members, grant).await?;
            done(if grant { "GRANT ROLE" } else { "REVOKE ROLE" })
        }
        V::AlterOwner { kind, name, owner } => {
            let kind = relation_kind(kind);
            coordinator.alter_owner(role, kind, &name, &owner).await?;
            done(&format!("ALTER {}", kind.sql_name().to_ascii_uppercase()))
        }
        V::DropSink { name, if_exists } => {
            coordinator.drop_objects(role, RelationKind::Sink, &[name], if_exists, false).await?;
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
            Err(CoordinatorError::Unsupported("a changefeed here".into()).into())
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
