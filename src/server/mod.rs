//! The pgwire server: `datafusion-postgres` serving a DataFusion session whose tables are
//! Velocity relations, with Velocity's statements plugged in as a query hook.
//!
//! SELECTs run in DataFusion while holding the engine's gate for reading, so every
//! relation a query reads comes from the same committed tick.

pub mod auth;
pub mod client_queries;
pub mod error;
pub mod information_schema;
pub mod limits;
pub mod login_throttle;
pub mod metrics;
pub mod pg_catalog;
pub mod session;
pub mod set_show;
pub mod statement_context;
pub mod statements;
pub mod subscribe;
pub mod system;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{CloseCursor, Statement};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::QueryHook;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::pgwire::api::Type;
use datafusion_postgres::pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{FieldInfo, Response, Tag};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore, ErrorHandler, PgWireServerHandlers};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::{DfSessionService, Parser};
use tokio::net::TcpListener;

use crate::coordinator::Coordinator;
use crate::engine::Engine;
use crate::planner::changes::ChangesFunction;
pub use error::ServerError;
use error::{SessionError, from_sql, pg_error};
use statements::StatementHook;

/// Name of the database (DataFusion catalog) clients connect to.
pub const DATABASE: &str = "velocity";

/// A running Velocity instance: engine plus SQL session, ready to accept connections.
pub struct Server {
    pub engine: Engine,
    pub context: Arc<SessionContext>,
    pub coordinator: Arc<Coordinator>,
    handlers: Arc<Handlers>,
    max_connections: usize,
}

impl Server {
    /// Open the data directory, replay the catalog and prepare the SQL session, trusting
    /// every connection.
    pub async fn open(data_dir: &Path) -> Result<Server, ServerError> {
        Server::open_with(data_dir, auth::Access::default(), statement_context::StatementMemory::machine_default()).await
    }

    /// Like [`Server::open`], accepting connections as `access` says (passwords, TLS), its
    /// users the superusers, and queries' memory bounded by `memory`.
    pub async fn open_with(
        data_dir: &Path,
        access: auth::Access,
        memory: statement_context::StatementMemory,
    ) -> Result<Server, ServerError> {
        let engine = Engine::open(data_dir)?;
        // Before the restore: objects stored without an owner belong to the first of them.
        engine.update_catalog(crate::catalog::CatalogUpdate::Configure(access.configured_roles())).await?;
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(DATABASE, "public")
            // Off: `information_schema::register` serves it in Postgres' shape instead.
            .with_information_schema(false);
        // TEXT/VARCHAR columns as plain Utf8: what sources decode into and clients expect.
        config.options_mut().sql_parser.map_string_types_to_utf8view = false;
        // `1.005` is the exact numeric Postgres reads, not the nearest float64 (which would
        // store 1.00 into a NUMERIC(12,2) column).
        config.options_mut().sql_parser.parse_float_as_decimal = true;
        // datafusion-postgres hands DataFusion the statement as text again: parse it as
        // Postgres does (`SELECT top FROM t` names a column; there is no `SELECT TOP n`).
        config.options_mut().sql_parser.dialect = datafusion::common::config::Dialect::PostgreSQL;
        // TIMESTAMPTZ columns keep their zone (UTC), so clients receive timestamptz, not timestamp.
        config.options_mut().execution.time_zone = Some("+00:00".to_string());
        let context = Arc::new(SessionContext::new_with_config(config));
        for rule in crate::planner::analyzer::rules() {
            context.add_analyzer_rule(rule);
        }
        setup_pg_catalog(&context, DATABASE, EmptyContextProvider).map_err(|e| ServerError::Startup(e.to_string()))?;
        pg_catalog::register(&context, &engine)?;
        information_schema::register(&context, &engine)?;
        let coordinator = Arc::new(Coordinator::new(engine.clone(), context.clone()));
        system::register(&context, &engine, coordinator.sources().clone(), coordinator.sinks().clone())?;
        crate::functions::register(&context);
        context.register_udtf("changes", Arc::new(ChangesFunction { engine: engine.clone() }));
        let restored = coordinator.restore().await?;
        if restored > 0 {
            tracing::info!("restored {restored} relations at tick {}", engine.current_tick());
        }

        let statements = Arc::new(StatementHook::new(coordinator.clone()));
        let hooks: Vec<Arc<dyn QueryHook>> = vec![statements, Arc::new(CursorStatementHook), Arc::new(set_show::SetShow(SetShowHook))];
        let inner = Arc::new(DfSessionService::new_with_hooks(context.clone(), hooks.clone()));
        let service = Arc::new(VelocityService {
            inner,
            context: context.clone(),
            hooks,
            memory,
            coordinator: coordinator.clone(),
            engine: engine.clone(),
        });
        let handlers = Arc::new(Handlers { service, access: access.with_catalog(engine.clone()) });
        Ok(Server { engine, context, coordinator, handlers, max_connections: DEFAULT_MAX_CONNECTIONS })
    }

    /// At most `n` client connections at once (default [`DEFAULT_MAX_CONNECTIONS`]); more are
    /// refused with 53300, as Postgres does.
    pub fn with_max_connections(mut self, n: usize) -> Server {
        self.max_connections = n;
        self
    }

    /// Accept connections for ever. A failed accept (out of file descriptors, say) is logged
    /// and retried: the connections already open go on, and new ones are accepted again once
    /// descriptors are free.
    pub async fn serve(&self, listener: TcpListener) -> Result<(), ServerError> {
        let tls = self.handlers.access.tls();
        let slots = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        loop {
            let (socket, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tokio::spawn(refuse_connection(socket, "53300", "sorry, too many clients already"));
                continue;
            };
            let handlers = self.handlers.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = datafusion_postgres::pgwire::tokio::process_socket(socket, tls, handlers).await {
                    tracing::debug!("connection {addr}: {e}");
                }
                release_freed_memory();
            });
        }
    }
}

/// Hand the memory freed so far back to the system, once a session has ended. What a session
/// held (its prepared statements, say: 100,000 of them took 1.7 GB) is freed with it, but
/// glibc keeps freed memory in its per-thread arenas, so the server's RSS would stay at its
/// peak. One trim at a time, off the async workers.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        static TRIMMING: AtomicBool = AtomicBool::new(false);
        if TRIMMING.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::task::spawn_blocking(|| {
            // SAFETY: malloc_trim only walks and releases the allocator's free memory.
            unsafe { libc::malloc_trim(0) };
            TRIMMING.store(false, Ordering::Release);
        });
    }
}

/// Postgres' default `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100;

/// Answer a connection's startup packet with a FATAL error and close it, as Postgres does when
/// it cannot take a client (SSL and GSS requests are declined first, so clients read the error).
async fn refuse_connection(mut socket: tokio::net::TcpStream, code: &str, message: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SSL_REQUEST: u32 = 80_877_103;
    const GSSENC_REQUEST: u32 = 80_877_104;
    let startup = async {
        loop {
            let len = socket.read_u32().await? as usize;
            // A startup packet is small; anything else is not a client worth reading.
            let mut body = vec![0u8; len.clamp(4, 10_000) - 4];
            socket.read_exact(&mut body).await?;
            let request = body.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            if !matches!(request, Some(SSL_REQUEST | GSSENC_REQUEST)) {
                return std::io::Result::Ok(());
            }
            socket.write_all(b"N").await?;
        }
    };
    if !matches!(tokio::time::timeout(std::time::Duration::from_secs(5), startup).await, Ok(Ok(()))) {
        return;
    }
    let mut fields = Vec::new();
    for (tag, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', message)] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut packet = vec![b'E'];
    packet.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    packet.extend_from_slice(&fields);
    let _ = socket.write_all(&packet).await;
    let _ = socket.shutdown().await;
}

/// Start a server on an already-bound listener (tests bind `127.0.0.1:0`).
pub async fn spawn(data_dir: &Path, listener: TcpListener) -> Result<(SocketAddr, Arc<Server>), ServerError> {
    let addr = listener.local_addr()?;
    let server = Arc::new(Server::open(data_dir).await?);
    let s = server.clone();
    tokio::spawn(async move {
        if let Err(e) = s.serve(listener).await {
            tracing::error!("server stopped: {e}");
        }
    });
    Ok((addr, server))
}

struct Handlers {
    service: Arc<VelocityService>,
    access: auth::Access,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }
    // Called once per connection: SCRAM keeps per-connection state.
    fn startup_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::auth::StartupHandler> {
        Arc::new(self.access.startup())
    }
    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(SqlStateErrors)
    }
    // pgwire races each statement against its connection's cancel signal and answers 57014;
    // this matches a CancelRequest's key to that connection.
    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.access.connections()))
    }
}

/// Gives DataFusion errors that reach the wire without a SQLSTATE their proper one.
struct SqlStateErrors;
impl ErrorHandler for SqlStateErrors {
    fn on_error<C: ClientInfo>(&self, _client: &C, error: &mut PgWireError) {
        assign_sqlstate(error);
    }
}

fn assign_sqlstate(error: &mut PgWireError) {
    if let PgWireError::ApiError(e) = error
        && let Some(df) = e.downcast_ref::<datafusion::error::DataFusionError>()
    {
        let code = error::datafusion_code(df);
        *error = pg_error(code, error::datafusion_message(df));
    }
}

/// Stack that every thread running statements should have: planning a statement at the
/// deepest nesting `sql::check_expression_depth` lets through recurses (clones, rewrites,
/// prints its expression trees) once per level. `velocity serve` gives its threads this much.
pub const STATEMENT_STACK: usize = 64 << 20;

/// Polls a statement's future with at least half of [`STATEMENT_STACK`] free, switching to a
/// fresh stack when the thread has less (a test runtime's 2 MB workers). Only long
/// statements, which alone can nest deeply, are wrapped.
struct LargeStack<F> {
    inner: std::pin::Pin<Box<F>>,
    wrap: bool,
}

impl<F: std::future::Future> LargeStack<F> {
    fn new(sql: &str, inner: F) -> Self {
        LargeStack { inner: Box::pin(inner), wrap: sql.len() > 256 }
    }
}

impl<F: std::future::Future> std::future::Future for LargeStack<F> {
    type Output = F::Output;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.get_mut();
        if this.wrap {
            stacker::maybe_grow(STATEMENT_STACK / 2, STATEMENT_STACK, || this.inner.as_mut().poll(cx))
        } else {
            this.inner.as_mut().poll(cx)
        }
    }
}

/// The session's open `DECLARE ... CURSOR FOR SUBSCRIBE` cursors.
#[derive(Default)]
struct SubscribeCursors(tokio::sync::Mutex<std::collections::HashMap<String, subscribe::SubscribeCursor>>);

/// Simple-query front: Velocity's own statements, syntax errors with SQLSTATE 42601,
/// snapshot-consistent SELECTs; the rest goes to `DfSessionService` (and its hooks).
struct VelocityService {
    inner: Arc<DfSessionService>,
    /// `inner`'s session and hooks, for the per-query services.
    context: Arc<SessionContext>,
    hooks: Vec<Arc<dyn QueryHook>>,
    memory: statement_context::StatementMemory,
    coordinator: Arc<Coordinator>,
    engine: Engine,
}

/// The session's `statement_timeout`, as datafusion-postgres keeps it in the client's metadata
/// (its `SET` hook stores milliseconds under this key; 0 or absent: none).
fn statement_timeout<C: ClientInfo>(client: &C) -> Option<std::time::Duration> {
    let ms: u64 = client.metadata().get("statement_timeout_ms")?.parse().ok()?;
    (ms > 0).then(|| std::time::Duration::from_millis(ms))
}

/// A query's rows, ended with 57014 once `deadline` passes: DataFusion computes rows as they
/// are pulled, so dropping the stream stops the execution (datafusion-postgres applies the
/// timeout to planning only).
fn until_deadline(response: Response, deadline: Option<tokio::time::Instant>) -> Response {
    let (mut query, deadline) = match (response, deadline) {
        (Response::Query(query), Some(deadline)) => (query, deadline),
        (other, _) => return other,
    };
    let rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
    let state = (Some(rows), Box::pin(tokio::time::sleep_until(deadline)));
    query.data_rows = Box::pin(futures::stream::unfold(state, |(rows, mut expired)| async move {
        let mut rows = rows?;
        tokio::select! {
            biased;
            next = futures::StreamExt::next(&mut rows) => next.map(|row| (row, (Some(rows), expired))),
            _ = &mut expired => Some((Err(SessionError::StatementTimeout.into()), (None, expired))),
        }
    }));
    Response::Query(query)
}

fn error_info(mut e: PgWireError) -> ErrorInfo {
    assign_sqlstate(&mut e);
    e.into()
}

impl VelocityService {
    /// The service one query of `role` runs in: `inner` over a session state of its own
    /// (its memory pool, its role; see `statement_context`).
    fn for_query(&self, role: &str) -> DfSessionService {
        let role = statement_context::StatementRole { name: role.to_string(), superuser: self.engine.catalog().is_superuser(role) };
        let context = statement_context::for_statement(&self.context, &self.memory, role);
        DfSessionService::new_with_hooks(context, self.hooks.clone())
    }

    async fn one<C>(&self, client: &mut C, sql: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + futures::Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        use crate::sql::VelocityStatement as V;
        if client.session_extensions().get::<auth::Authenticated>().is_none() {
            return Err(auth::not_authenticated());
        }
        set_show::check_startup_encoding(client)?;
        crate::sql::check_expression_depth(sql).map_err(from_sql)?;
        limits::check_target_lists(sql)?;
        let roles = session::roles(client);
        let role = roles.current();
        let sql_with_roles = session::user_statements(sql);
        let sql_with_roles = session::bind_user_text(&sql_with_roles, &roles).map(std::borrow::Cow::Owned).unwrap_or(sql_with_roles);
        let sql = &*sql_with_roles;
        if let Some(stmt) = crate::sql::parse_velocity(sql) {
            let cursors = client.session_extensions().get_or_insert_with(SubscribeCursors::default);
            let stmt = stmt.map_err(from_sql)?;
            if let V::Subscribe(s) | V::CopySubscribe(s) | V::DeclareSubscribe { subscribe: s, .. } = &stmt {
                self.coordinator.authorize_read(&role, &s.name)?;
            }
            let response = match stmt {
                V::Subscribe(s) => subscribe::stream_query(client, subscribe::open(&self.engine, &s).await?).await?,
                V::CopySubscribe(s) => subscribe::stream_copy(client, subscribe::open(&self.engine, &s).await?).await?,
                V::DeclareSubscribe { cursor, subscribe: s } => {
                    let feed = subscribe::open(&self.engine, &s).await?;
                    cursors.0.lock().await.insert(cursor, subscribe::SubscribeCursor::new(feed));
                    Response::Execution(Tag::new("DECLARE CURSOR"))
                }
                V::Fetch { cursor, count, timeout } => {
                    let mut open = cursors.0.lock().await;
                    match open.get_mut(&cursor) {
                        Some(c) => c.fetch(count, timeout).await?,
                        // An ordinary cursor: DataFusion's cursor hook serves it.
                        None => return SimpleQueryHandler::do_query(&*self.inner, client, sql).await,
                    }
                }
                // FLUSH waits for the sources as long as they progress: the session's
                // statement_timeout (or a cancel request) ends the wait with 57014.
                V::Flush => match statement_timeout(client) {
                    Some(limit) => tokio::time::timeout(limit, statements::velocity(&self.coordinator, &role, V::Flush))
                        .await
                        .map_err(|_| SessionError::StatementTimeout)??,
                    None => statements::velocity(&self.coordinator, &role, V::Flush).await?,
                },
                other => statements::velocity(&self.coordinator, &role, other).await?,
            };
            return Ok(vec![response]);
        }
        let mut parsed = PostgresCompatibilityParser::new().parse(sql).map_err(|e| SessionError::Syntax(e.to_string()))?;
        for stmt in &parsed {
            statements::authorize(&self.coordinator, &role, stmt)?;
        }
        // DataFusion plans the text again: hand it the statement with DISTINCT ON ordinals
        // resolved and the merged keys of RIGHT/FULL USING joins coalesced.
        let distinct_on = crate::sql::resolve_distinct_on_ordinals(&mut parsed);
        let using_keys = crate::sql::coalesce_using_keys(&mut parsed, &|name| self.coordinator.relation_columns(name));
        let named = crate::sql::column_names::name_columns(&mut parsed);
        let resolved = (distinct_on || using_keys || named).then(|| parsed.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("; "));
        let sql = resolved.as_deref().unwrap_or(sql);
        if let [Statement::Close { cursor: CloseCursor::Specific { name } }] = parsed.as_slice() {
            let cursors = client.session_extensions().get_or_insert_with(SubscribeCursors::default);
            if cursors.0.lock().await.remove(&name.value).is_some() {
                return Ok(vec![Response::Execution(Tag::new("CLOSE CURSOR"))]);
            }
        }
        if parsed.iter().any(|s| matches!(s, Statement::Query(_))) {
            let deadline = statement_timeout(client).map(|t| tokio::time::Instant::now() + t);
            let _gate = self.engine.read_snapshot().await;
            let responses = SimpleQueryHandler::do_query(&self.for_query(&role), client, sql).await?;
            Ok(responses.into_iter().map(|r| until_deadline(r, deadline)).collect())
        } else {
            SimpleQueryHandler::do_query(&*self.inner, client, sql).await
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for VelocityService {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + futures::Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let mut out = Vec::new();
        let query = client_queries::rewrite(query);
        for sql in crate::sql::split_statements(&crate::sql::quote_name_arguments(&query)) {
            let sql = crate::sql::emit_on_window_close(&sql).into_owned();
            match LargeStack::new(&sql, self.one(client, &sql)).await {
                Ok(mut responses) => {
                    let failed = responses.iter().any(|r| matches!(r, Response::Error(_)));
                    out.append(&mut responses);
                    if failed {
                        break;
                    }
                }
                Err(e) => {
                    out.push(Response::Error(Box::new(error_info(e))));
                    break;
                }
            }
        }
        Ok(out)
    }
}

type ExtendedStatement = <DfSessionService as ExtendedQueryHandler>::Statement;

/// Extended-protocol parser: Velocity's own statements are kept as text (no plan) and
/// executed by `VelocityService`; everything else is DataFusion's.
struct VelocityParser {
    inner: Arc<Parser>,
    engine: Engine,
}

/// Stands in for a Velocity statement whose rows are described by `rows_plan`; the SQL text
/// next to it is what runs.
fn rows_placeholder() -> Statement {
    PostgresCompatibilityParser::new().parse("SELECT NULL").expect("constant parses").remove(0)
}

/// A plan with no rows and `schema`: only its schema is used, for the row description.
fn rows_plan(schema: &arrow::datatypes::SchemaRef) -> PgWireResult<datafusion::logical_expr::LogicalPlan> {
    let schema = datafusion::common::DFSchema::try_from(schema.as_ref().clone()).map_err(error::from_datafusion)?;
    Ok(datafusion::logical_expr::LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(schema),
    }))
}

#[async_trait]
impl QueryParser for VelocityParser {
    type Statement = ExtendedStatement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if let Some(parsed) = crate::sql::parse_velocity(sql) {
            // Rows of a subscription or a subscribe cursor get a row description at Describe
            // time (drivers such as pgjdbc need one before the rows arrive).
            use crate::sql::VelocityStatement as V;
            let schema = match parsed {
                Ok(V::Subscribe(s)) => subscribe::schema_of(&self.engine, &s),
                Ok(V::Fetch { cursor, .. }) => match client.session_extensions().get::<SubscribeCursors>() {
                    Some(cursors) => cursors.0.lock().await.get(&cursor).map(|c| c.schema()),
                    None => None,
                },
                _ => None,
            };
            let described = match schema {
                Some(schema) => Some((rows_placeholder(), rows_plan(&schema)?)),
                None => None,
            };
            return Ok(Some((sql.to_string(), described)));
        }
        let sql = client_queries::rewrite(sql);
        crate::sql::check_expression_depth(&sql).map_err(from_sql)?;
        limits::check_target_lists(&sql)?;
        let sql = session::user_statements(&sql);
        let sql = crate::sql::quote_name_arguments(&sql);
        let sql: std::borrow::Cow<'_, str> = crate::sql::emit_on_window_close(&sql).into_owned().into();
        let sql = session::bind_user_text(&sql, &session::roles(client)).map(std::borrow::Cow::Owned).unwrap_or(sql);
        let columns = |name: &str| {
            let catalog = self.engine.catalog();
            let relation = catalog.get(name).filter(|r| r.kind.queryable())?;
            Some(relation.schema.fields().iter().map(|f| f.name().clone()).collect())
        };
        let sql = crate::sql::coalesce_using_keys_in_text(&sql, &columns).map(std::borrow::Cow::Owned).unwrap_or(sql);
        let sql = crate::sql::column_names::name_columns_in_text(&sql).map(std::borrow::Cow::Owned).unwrap_or(sql);
        LargeStack::new(&sql, self.inner.parse_sql(client, &sql, types)).await
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(stmt)
    }

    fn get_result_schema(&self, stmt: &Self::Statement, column_format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        self.inner.get_result_schema(stmt, column_format)
    }
}

#[async_trait]
impl ExtendedQueryHandler for VelocityService {
    type Statement = ExtendedStatement;
    type QueryParser = VelocityParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::new(VelocityParser { inner: self.inner.query_parser(), engine: self.engine.clone() })
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Self::Statement>, max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + futures::Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        if client.session_extensions().get::<auth::Authenticated>().is_none() {
            return Err(auth::not_authenticated());
        }
        set_show::check_startup_encoding(client)?;
        let velocity_statement = match &portal.statement.statement.1 {
            None => true,
            Some((_, datafusion::logical_expr::LogicalPlan::EmptyRelation(_))) => true,
            Some(_) => false,
        };
        if velocity_statement && crate::sql::parse_velocity(&portal.statement.statement.0).is_some() {
            // Velocity's statements take no parameters: run them as the simple protocol would.
            let mut responses = self.one(client, &portal.statement.statement.0).await?;
            return Ok(responses.pop().unwrap_or(Response::EmptyQuery));
        }
        let role = session::roles(client).current();
        if let Some((stmt, _)) = &portal.statement.statement.1 {
            statements::authorize(&self.coordinator, &role, stmt)?;
        }
        let is_query = matches!(&portal.statement.statement.1, Some((Statement::Query(_), _)));
        let deadline = statement_timeout(client).map(|t| tokio::time::Instant::now() + t);
        let run = async {
            if is_query {
                let _gate = self.engine.read_snapshot().await;
                Ok(until_deadline(ExtendedQueryHandler::do_query(&self.for_query(&role), client, portal, max_rows).await?, deadline))
            } else {
                ExtendedQueryHandler::do_query(&*self.inner, client, portal, max_rows).await
            }
        };
        LargeStack::new(&portal.statement.statement.0, run).await
    }
}
