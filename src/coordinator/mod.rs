//! The coordinator: every DDL and DML decision in one place.
//!
//! Name checks, id allocation, dependency checks, CREATE and DROP of tables, views, sources
//! and sinks, and the restore of the catalog at startup happen here, one DDL statement at a
//! time: a check and the change it guards never interleave with another session's. The
//! engine thread then persists each change in its own step; it alone writes storage. The
//! server translates pgwire to the calls here, and the typed [`CoordinatorError`]s back to
//! SQLSTATEs.

mod dml;
mod error;
mod privileges;
pub mod relation_table;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use datafusion::common::Constraint;
use datafusion::logical_expr::{DdlStatement, Expr, LogicalPlan, Projection};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{CreateTableOptions, SqlOption, Statement};
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

pub use dml::Write;
pub use error::{CoordinatorError, Result};
pub use privileges::RoleOptions;

use crate::catalog::{Catalog, Ownership, PredefinedRole, Privilege, Relation, RelationKind, SourceBinding};
use crate::dataflow::ChangeBatch;
use crate::engine::{Commit, Engine};
use crate::planner::plan_dataflow_with;
use crate::sinks::kafka::{SinkRegistry, SinkStatus};
use crate::sinks::{SinkConfig, SinkEncoder};
use crate::sources::runner::{ConnectorConfig, SourceConfig, SourceRegistry};
use crate::sql::VelocityStatement;
use relation_table::RelationTable;

/// Decides and carries out DDL and DML against the engine and the SQL session.
pub struct Coordinator {
    engine: Engine,
    /// The DataFusion session every client shares: tables and views are registered here.
    context: Arc<SessionContext>,
    sources: SourceRegistry,
    sinks: SinkRegistry,
    /// Held by one DDL statement from its first check to its last change.
    ddl: tokio::sync::Mutex<()>,
    /// Where a new file source may read (canonical paths); `None`: anywhere the server can.
    file_source_dirs: std::sync::RwLock<Option<Vec<PathBuf>>>,
}

impl Coordinator {
    pub fn new(engine: Engine, context: Arc<SessionContext>) -> Coordinator {
        Coordinator {
            engine,
            context,
            sources: SourceRegistry::default(),
            sinks: SinkRegistry::default(),
            ddl: tokio::sync::Mutex::new(()),
            file_source_dirs: std::sync::RwLock::new(None),
        }
    }

    /// Confine new file sources to these directories (`velocity serve --file-source-dir`).
    /// Sources already in the catalog keep reading where they do.
    pub fn confine_file_sources(&self, dirs: &[PathBuf]) -> std::io::Result<()> {
        let dirs = dirs.iter().map(std::fs::canonicalize).collect::<std::io::Result<Vec<_>>>()?;
        *self.file_source_dirs.write().unwrap_or_else(|e| e.into_inner()) = Some(dirs);
        Ok(())
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The column names of a table or view, by its name.
    pub fn relation_columns(&self, name: &str) -> Option<Vec<String>> {
        let catalog = self.engine.catalog();
        let relation = catalog.get(name).filter(|r| r.kind.queryable())?;
        Some(relation.schema.fields().iter().map(|f| f.name().clone()).collect())
    }

    /// Each running source's status, by name.
    pub fn sources(&self) -> &SourceRegistry {
        &self.sources
    }

    /// Each running sink's status, by name.
    pub fn sinks(&self) -> &SinkRegistry {
        &self.sinks
    }

    /// Re-create every stored object in id order (ids grow, and an object only reads older
    /// ones, so this is a dependency order), restoring view state instead of recomputing it.
    /// Sources start only once everything is back: a view restored after a source had
    /// started would miss the transactions applied before it. Returns how many objects
    /// were restored.
    pub async fn restore(&self) -> Result<usize> {
        let _ddl = self.ddl.lock().await;
        let entries = Catalog::load_entries(self.engine.store()).map_err(crate::engine::EngineError::from)?;
        let bootstrap = self.engine.catalog().bootstrap_role().to_string();
        let mut sources = Vec::new();
        for entry in &entries {
            let origin = Origin::Restored {
                id: entry.id,
                ownership: Ownership { owner: entry.owner.clone().unwrap_or_else(|| bootstrap.clone()), grants: entry.grants.clone() },
            };
            let restoring = |e: CoordinatorError| CoordinatorError::Restore(format!("{} \"{}\": {e}", entry.kind.sql_name(), entry.name));
            let unparsable = || CoordinatorError::Restore(format!("the stored definition of \"{}\" does not parse", entry.name));
            match entry.kind {
                RelationKind::Source => {
                    let Some(Ok(VelocityStatement::CreateSource { name, options })) = crate::sql::parse_velocity(&entry.create_sql) else {
                        return Err(unparsable());
                    };
                    let (id, config) = self.create_source_as(&name, &options, &entry.create_sql, &origin).await.map_err(restoring)?;
                    sources.push((id, name, config));
                }
                RelationKind::Sink => {
                    let Some(Ok(VelocityStatement::CreateSink { name, from, options })) = crate::sql::parse_velocity(&entry.create_sql)
                    else {
                        return Err(unparsable());
                    };
                    self.create_sink_as(&name, &from, &options, &entry.create_sql, &origin).await.map_err(restoring)?;
                }
                RelationKind::Table | RelationKind::MaterializedView | RelationKind::View => {
                    let stmt = PostgresCompatibilityParser::new()
                        .parse(&entry.create_sql)
                        .ok()
                        .and_then(|mut s| (!s.is_empty()).then(|| s.remove(0)))
                        .ok_or_else(unparsable)?;
                    let restored = match entry.kind {
                        RelationKind::Table => self.create_table_as(&stmt, &origin).await,
                        _ => self.create_view_as(&stmt, &origin).await,
                    };
                    restored.map_err(restoring)?;
                }
            }
        }
        for (id, name, config) in sources {
            crate::sources::runner::spawn(self.engine.clone(), self.sources.clone(), id, name, config);
        }
        Ok(entries.len())
    }

    /// `CREATE TABLE`, plain or bound to a source with `WITH (source = '...', upstream = '...')`.
    /// `role` owns it; binding it to a source takes USAGE on the source.
    pub async fn create_table(&self, role: &str, stmt: &Statement) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        self.create_table_as(stmt, &Origin::New { role }).await
    }

    /// CREATE TABLE; restored, re-creates a stored table under its old id.
    async fn create_table_as(&self, stmt: &Statement, origin: &Origin<'_>) -> Result<()> {
        let Statement::CreateTable(ct) = stmt else { return Err(CoordinatorError::Unsupported(format!("{stmt} as a table"))) };
        let options: Vec<(String, String)> = match &ct.table_options {
            CreateTableOptions::None => Vec::new(),
            CreateTableOptions::With(opts) => opts
                .iter()
                .map(|o| match o {
                    SqlOption::KeyValue { key, value } => {
                        Ok((key.value.to_ascii_lowercase(), value.to_string().trim_matches('\'').to_string()))
                    }
                    other => Err(CoordinatorError::InvalidOption(format!("unsupported table option {other}"))),
                })
                .collect::<Result<_>>()?,
            _ => return Err(CoordinatorError::Unsupported("a table option other than WITH (...)".into())),
        };
        let binding = self.table_binding(&options)?;
        if let (Some(b), Origin::New { role }) = (&binding, origin) {
            self.require(role, &b.source, Privilege::Usage)?;
        }
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
            // A uuid column is canonical text (see `catalog::column_type`).
            if matches!(column.data_type, SqlType::Uuid) {
                column.data_type = SqlType::Text;
            }
        }
        let plan = self.context.state().statement_to_plan(DFStatement::Statement(Box::new(Statement::CreateTable(plain)))).await?;
        let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmt)) = plan else {
            return Err(CoordinatorError::Unsupported("this form of CREATE TABLE".into()));
        };
        if !matches!(cmt.input.as_ref(), LogicalPlan::EmptyRelation(_)) {
            return Err(CoordinatorError::Unsupported("CREATE TABLE ... AS (use CREATE MATERIALIZED VIEW)".into()));
        }
        let name = cmt.name.table().to_string();
        if self.engine.catalog().get(&name).is_some() {
            if cmt.if_not_exists {
                return Ok(());
            }
            return Err(CoordinatorError::DuplicateObject { kind: RelationKind::Table, name });
        }
        let mut primary_key = Vec::new();
        for c in cmt.constraints.iter() {
            match c {
                Constraint::PrimaryKey(cols) => primary_key = cols.clone(),
                Constraint::Unique(_) => {
                    return Err(CoordinatorError::Unsupported("a UNIQUE constraint other than the primary key".into()));
                }
            }
        }
        if binding.is_some() && primary_key.is_empty() {
            return Err(CoordinatorError::MissingPrimaryKey(name));
        }
        let schema = cmt.input.schema().as_arrow();
        let watermark = match options.iter().find(|(k, _)| k == "watermark") {
            Some((_, text)) => Some(self.watermark(&name, schema, text)?),
            None => None,
        };
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let f = f.as_ref().clone().with_nullable(f.is_nullable() && !primary_key.contains(&i));
                let f = if json_columns.contains(&i) { crate::functions::json::json_field(f.name(), f.is_nullable()) } else { f };
                // VARCHAR(n), NUMERIC(p,s), JSONB, ...: what the declared type adds to the Arrow type.
                match ct.columns.get(i) {
                    Some(column) => crate::catalog::column_type::with_declared_type(f, &column.data_type),
                    None => f,
                }
            })
            .collect();
        let relation = Relation {
            id: origin.id(&self.engine),
            name: name.clone(),
            kind: RelationKind::Table,
            create_sql: stmt.to_string(),
            schema: Arc::new(Schema::new(fields)),
            primary_key,
            depends_on: binding.iter().map(|b| b.source.clone()).collect(),
            binding,
            ownership: origin.ownership(),
            watermark,
        };
        self.engine.create_table(relation.clone(), origin.restoring()).await?;
        // DEFAULT clauses live in the stored definition; INSERT reads them from the provider.
        let table = RelationTable::new(self.engine.clone(), relation).with_defaults(cmt.column_defaults.clone());
        self.context.register_table(name.as_str(), Arc::new(table))?;
        Ok(())
    }

    /// `WITH (source = '...', upstream = '...')` of a table fed by a source.
    fn table_binding(&self, options: &[(String, String)]) -> Result<Option<SourceBinding>> {
        if let Some((k, _)) = options.iter().find(|(k, _)| k != "source" && k != "upstream" && k != "watermark") {
            return Err(CoordinatorError::InvalidOption(format!("unknown table option \"{k}\" (expected source, upstream, watermark)")));
        }
        if !options.iter().any(|(k, _)| k == "source" || k == "upstream") {
            return Ok(None);
        }
        let get = |k: &str| options.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let missing = |what: &str| CoordinatorError::InvalidOption(format!("a table bound to a source needs {what}"));
        let source = get("source").ok_or_else(|| missing("source = '...'"))?;
        let upstream = get("upstream").ok_or_else(|| missing("upstream = '...' (schema.table)"))?;
        let catalog = self.engine.catalog();
        match catalog.get(&source) {
            Some(r) if r.kind == RelationKind::Source => {}
            _ => return Err(CoordinatorError::UndefinedObject { kind: RelationKind::Source, name: source }),
        }
        let binding = SourceBinding { source, upstream };
        if let Some(other) = catalog.iter().find(|r| r.binding.as_ref() == Some(&binding)) {
            return Err(CoordinatorError::DuplicateBinding {
                table: other.name.clone(),
                upstream: binding.upstream,
                source_name: binding.source,
            });
        }
        Ok(Some(binding))
    }

    /// `WITH (watermark = 'time_column [- INTERVAL ''...'']')`: the table's event-time column
    /// (a timestamp) and how far behind the latest event time the watermark stays.
    fn watermark(&self, table: &str, schema: &Schema, text: &str) -> Result<crate::catalog::Watermark> {
        use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr as SqlExpr};
        let invalid = |detail: String| CoordinatorError::InvalidOption(format!("watermark of table \"{table}\": {detail}"));
        // The option's text comes back with its quotes doubled.
        let text = text.replace("''", "'");
        let usage = || invalid(format!("expected 'time_column - INTERVAL ''5'' SECOND', got '{text}'"));
        let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
        let expr = datafusion::sql::sqlparser::parser::Parser::new(&dialect)
            .try_with_sql(&text)
            .and_then(|mut p| p.parse_expr())
            .map_err(|_| usage())?;
        let (column, delay) = match &expr {
            SqlExpr::Identifier(c) => (c.value.clone(), None),
            SqlExpr::BinaryOp { left, op: BinaryOperator::Minus, right } => match left.as_ref() {
                SqlExpr::Identifier(c) => (c.value.clone(), Some(right.to_string())),
                _ => return Err(usage()),
            },
            _ => return Err(usage()),
        };
        let index = schema.index_of(&column).map_err(|_| invalid(format!("no column named \"{column}\"")))?;
        if !matches!(schema.field(index).data_type(), arrow::datatypes::DataType::Timestamp(..)) {
            return Err(invalid(format!("column \"{column}\" is not a timestamp")));
        }
        let delay_micros = match delay {
            None => 0,
            Some(delay) => {
                let empty = datafusion::common::DFSchema::empty();
                let e = self.context.state().create_logical_expr(&delay, &empty).map_err(|_| usage())?;
                match e {
                    Expr::Literal(datafusion::common::ScalarValue::IntervalMonthDayNano(Some(i)), _) if i.months == 0 => {
                        i.days as i64 * 86_400_000_000 + i.nanoseconds / 1000
                    }
                    Expr::Literal(datafusion::common::ScalarValue::IntervalDayTime(Some(i)), _) => {
                        i.days as i64 * 86_400_000_000 + i.milliseconds as i64 * 1000
                    }
                    _ => return Err(invalid(format!("the delay must be an interval without months, got {delay}"))),
                }
            }
        };
        if delay_micros < 0 {
            return Err(invalid("the delay must not be negative".into()));
        }
        Ok(crate::catalog::Watermark { column: index, delay_micros })
    }

    /// `CREATE SOURCE name WITH (connector = '...', ...)`: records it and starts reading.
    /// A source reads files and connects to hosts as the server: see `privileges`.
    pub async fn create_source(&self, role: &str, name: &str, options: &[(String, String)]) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        let sql = format!("CREATE SOURCE {name} {}", with_clause(options));
        let (id, config) = self.create_source_as(name, options, &sql, &Origin::New { role }).await?;
        crate::sources::runner::spawn(self.engine.clone(), self.sources.clone(), id, name.to_string(), config);
        Ok(())
    }

    /// Record a source (a new one, or a restored one under its old id), not yet started:
    /// its id and configuration.
    async fn create_source_as(
        &self,
        name: &str,
        options: &[(String, String)],
        create_sql: &str,
        origin: &Origin<'_>,
    ) -> Result<(u32, SourceConfig)> {
        if let Origin::New { role } = origin {
            self.require_create_on_database(role, "a source")?;
        }
        let config = SourceConfig::from_options(options).map_err(CoordinatorError::SourceOptions)?;
        if let (Origin::New { role }, ConnectorConfig::File(file)) = (origin, &config.connector) {
            self.require_predefined_role(role, PredefinedRole::ReadServerFiles, "read files on the server (a file source)")?;
            self.check_file_source_path(&file.path)?;
        }
        if !origin.restoring() && self.engine.catalog().get(name).is_some() {
            return Err(CoordinatorError::DuplicateObject { kind: RelationKind::Source, name: name.to_string() });
        }
        let id = origin.id(&self.engine);
        let relation = Relation::rowless(id, name, RelationKind::Source, create_sql, vec![]).owned(origin.ownership());
        self.engine.create_table(relation, origin.restoring()).await?;
        Ok((id, config))
    }

    /// 42501 unless `path` (after resolving `..` and symbolic links) lies under a directory
    /// the server was told file sources may read.
    fn check_file_source_path(&self, path: &Path) -> Result<()> {
        let dirs = self.file_source_dirs.read().unwrap_or_else(|e| e.into_inner());
        let Some(dirs) = dirs.as_ref() else { return Ok(()) };
        let denied = || {
            CoordinatorError::PermissionDenied(format!(
                "file source path \"{}\" is outside the directories file sources may read (velocity serve --file-source-dir)",
                path.display()
            ))
        };
        // The path may not exist yet (the source waits for it): resolve its deepest existing
        // ancestor and refuse `..` in the rest.
        let mut existing = path.to_path_buf();
        let mut rest = Vec::new();
        let resolved = loop {
            match std::fs::canonicalize(&existing) {
                Ok(p) => break p,
                Err(_) => {
                    let Some(name) = existing.file_name().map(|n| n.to_owned()) else { return Err(denied()) };
                    rest.push(name);
                    if !existing.pop() {
                        return Err(denied());
                    }
                }
            }
        };
        let full = rest.iter().rev().fold(resolved, |p, name| p.join(name));
        if dirs.iter().any(|d| full.starts_with(d)) { Ok(()) } else { Err(denied()) }
    }

    /// `CREATE SINK name FROM relation WITH (connector = 'kafka', ...)`: records it and
    /// starts delivering. A sink connects to hosts as the server: it takes a superuser or
    /// CREATE on the database, and SELECT on the relation.
    pub async fn create_sink(&self, role: &str, name: &str, from: &str, options: &[(String, String)]) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        let sql = format!("CREATE SINK {name} FROM {from} {}", with_clause(options));
        self.create_sink_as(name, from, options, &sql, &Origin::New { role }).await
    }

    /// CREATE SINK; restored, re-creates a stored sink under its old id. Starts its
    /// delivery task.
    async fn create_sink_as(
        &self,
        name: &str,
        from: &str,
        options: &[(String, String)],
        create_sql: &str,
        origin: &Origin<'_>,
    ) -> Result<()> {
        if let Origin::New { role } = origin {
            self.require_create_on_database(role, "a sink")?;
            self.require(role, from, Privilege::Select)?;
        }
        let config = SinkConfig::from_options(options)?;
        let relation = {
            let catalog = self.engine.catalog();
            if !origin.restoring() && catalog.get(name).is_some() {
                return Err(CoordinatorError::DuplicateObject { kind: RelationKind::Sink, name: name.to_string() });
            }
            match catalog.get(from) {
                Some(r) if matches!(r.kind, RelationKind::Table | RelationKind::MaterializedView) => r.clone(),
                Some(_) => {
                    return Err(CoordinatorError::WrongObjectType { name: from.to_string(), expected: "table or materialized view" });
                }
                None => return Err(CoordinatorError::UndefinedObject { kind: RelationKind::Table, name: from.to_string() }),
            }
        };
        let id = origin.id(&self.engine);
        let encoder = SinkEncoder::new(id, name, &relation, &config)?;
        let sink = Relation::rowless(id, name, RelationKind::Sink, create_sql, vec![from.to_string()]).owned(origin.ownership());
        self.engine.create_output(sink, Box::new(encoder), origin.restoring()).await?;
        let status = SinkStatus {
            relation: from.to_string(),
            topic: config.topic.clone(),
            format: config.format.name().to_string(),
            state: "starting".into(),
            ..Default::default()
        };
        self.sinks.write().expect("registry lock").insert(name.to_string(), status);
        crate::sinks::kafka::spawn(self.engine.output_handle(), self.sinks.clone(), id, name.to_string(), config);
        Ok(())
    }

    /// `CREATE [OR REPLACE] [MATERIALIZED] VIEW`. A materialized view's query is planned
    /// into a dataflow that fills and maintains it; a plain view's is inlined wherever it is
    /// read. `role` owns it and needs SELECT on everything it names: a view then reads them
    /// with its owner's rights, whoever reads the view.
    pub async fn create_view(&self, role: &str, stmt: &Statement) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        self.create_view_as(stmt, &Origin::New { role }).await
    }

    /// CREATE [MATERIALIZED] VIEW; restored, re-creates a stored view (and a materialized
    /// view's dataflow, restoring its operator state instead of recomputing it) under the
    /// old id.
    async fn create_view_as(&self, stmt: &Statement, origin: &Origin<'_>) -> Result<()> {
        let Statement::CreateView(cv) = stmt else { return Err(CoordinatorError::Unsupported(format!("{stmt} as a view"))) };
        let kind = if cv.materialized { RelationKind::MaterializedView } else { RelationKind::View };
        let name = cv.name.0.last().map(|p| p.to_string()).unwrap_or_default();
        let name = datafusion::sql::sqlparser::ast::Ident::new(name.trim_matches('"')).value;
        let replaced = match self.engine.catalog().get(&name) {
            None => None,
            Some(_) if cv.if_not_exists => return Ok(()),
            Some(existing) if cv.or_replace => {
                if existing.kind != kind {
                    return Err(CoordinatorError::WrongObjectType { name, expected: kind.sql_name() });
                }
                Some(existing.clone())
            }
            Some(_) => return Err(CoordinatorError::DuplicateObject { kind, name }),
        };
        if let (Some(old), Origin::New { role }) = (&replaced, origin) {
            self.require_owner(role, &old.name)?;
            let dependents: Vec<_> = self.engine.catalog().dependents(&name).iter().map(|d| (d.kind, d.name.clone())).collect();
            if !dependents.is_empty() {
                return Err(CoordinatorError::ReplaceWithDependents { kind, name, dependents });
            }
        }
        let state = self.context.state();
        // Columns the statement does not name are named as Postgres names them (`count`).
        let mut query = cv.query.clone();
        if cv.columns.is_empty() {
            crate::sql::column_names::name_query(&mut query);
        }
        let mut plan = state.statement_to_plan(DFStatement::Statement(Box::new(Statement::Query(query)))).await?;
        if !cv.columns.is_empty() {
            if cv.columns.len() != plan.schema().fields().len() {
                let kind = if cv.materialized { "CREATE MATERIALIZED VIEW" } else { "CREATE VIEW" };
                return Err(CoordinatorError::ColumnCount { kind });
            }
            let exprs: Vec<Expr> = plan
                .schema()
                .columns()
                .into_iter()
                .zip(&cv.columns)
                .map(|(c, alias)| Expr::Column(c).alias(alias.name.value.clone()))
                .collect();
            plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan))?);
        } else {
            plan = crate::planner::changes::name_field_accesses(plan)?;
        }
        if let Some(dup) = duplicate_name(plan.schema().fields().iter().map(|f| f.name())) {
            return Err(CoordinatorError::DuplicateColumn(dup.clone()));
        }
        // What the query names; a view it names reads its own inputs with its owner's rights.
        // A plain view's reads are checked when it is read (as in Postgres); a materialized
        // view reads at once.
        let named = self.relations_named(stmt);
        if let (Origin::New { role }, RelationKind::MaterializedView) = (origin, kind) {
            for read in &named {
                self.require_select(role, read)?;
            }
        }
        let id = origin.id(&self.engine);
        let ownership = replaced.as_ref().map(|old| old.ownership.clone()).unwrap_or_else(|| origin.ownership());
        if kind == RelationKind::View {
            let schema = Arc::new(plan.schema().as_arrow().clone());
            if let Some(old) = &replaced {
                check_view_columns(&old.schema, &schema)?;
            }
            let relation = Relation {
                id,
                name: name.clone(),
                kind,
                create_sql: stmt.to_string(),
                schema,
                primary_key: vec![],
                depends_on: named,
                binding: None,
                ownership,
                watermark: None,
            };
            self.replace(replaced.as_ref()).await?;
            let created = self.engine.create_table(relation, origin.restoring()).await;
            self.put_back_unless(created.map_err(CoordinatorError::from), replaced).await?;
            let view = datafusion::datasource::ViewTable::new(plan, Some(format!("{};", cv.query)));
            self.context.register_table(name.as_str(), Arc::new(view))?;
            return Ok(());
        }
        let emit_on_window_close = view_options(&cv.options)?;
        let plan = crate::planner::temporal::rewrite_time_windows(plan)?;
        let optimized = state.optimize(&plan)?;
        let (dataflow, reads) = plan_dataflow_with(&optimized, id, &self.engine.catalog(), emit_on_window_close)?;
        let mut depends_on = named;
        depends_on.extend(reads);
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
            ownership,
            watermark: None,
        };
        self.replace(replaced.as_ref()).await?;
        let created = self.engine.create_view(relation.clone(), dataflow, origin.restoring()).await;
        self.put_back_unless(created.map_err(CoordinatorError::from), replaced).await?;
        self.context.register_table(name.as_str(), Arc::new(RelationTable::new(self.engine.clone(), relation)))?;
        Ok(())
    }

    /// After a `CREATE OR REPLACE` whose new view failed to create (filling it failed, say),
    /// put the old one back as it was, so the statement changes nothing.
    async fn put_back_unless(&self, created: Result<()>, replaced: Option<Relation>) -> Result<()> {
        let (Err(e), Some(old)) = (&created, replaced) else { return created };
        let stmt = PostgresCompatibilityParser::new().parse(&old.create_sql).ok().and_then(|mut s| (!s.is_empty()).then(|| s.remove(0)));
        if let Some(stmt) = stmt {
            let origin = Origin::PutBack { id: old.id, ownership: old.ownership.clone() };
            if let Err(again) = Box::pin(self.create_view_as(&stmt, &origin)).await {
                tracing::error!("view \"{}\" could not be put back after a failed CREATE OR REPLACE ({e}): {again}", old.name);
            }
        }
        created
    }

    /// Drop the view a `CREATE OR REPLACE` replaces, once its new definition has planned.
    async fn replace(&self, replaced: Option<&Relation>) -> Result<()> {
        if let Some(old) = replaced {
            self.engine.drop(vec![old.name.clone()]).await?;
            self.context.deregister_table(old.name.as_str())?;
        }
        Ok(())
    }

    /// `DROP {TABLE | [MATERIALIZED] VIEW | SOURCE | SINK} [IF EXISTS] names [CASCADE]`:
    /// refuses while other objects depend on one of `names`, unless `cascade`. `role` must
    /// own each of `names` (what CASCADE drops with them is dropped whoever owns it, as in
    /// Postgres).
    pub async fn drop_objects(&self, role: &str, kind: RelationKind, names: &[String], if_exists: bool, cascade: bool) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        let mut to_drop: Vec<(u32, String)> = Vec::new();
        {
            let catalog = self.engine.catalog();
            for name in names {
                let Some(relation) = catalog.get(name) else {
                    if if_exists {
                        continue;
                    }
                    return Err(CoordinatorError::UndefinedObject { kind, name: name.clone() });
                };
                if relation.kind != kind {
                    // DROP SOURCE of a table, say: as Postgres, "does not exist" for other
                    // namespaces; for tables and views, which share one, "is not a".
                    if kind.queryable() && relation.kind.queryable() {
                        return Err(CoordinatorError::DropWrongType { name: name.clone(), expected: kind, actual: relation.kind });
                    }
                    if if_exists {
                        continue;
                    }
                    return Err(CoordinatorError::UndefinedObject { kind, name: name.clone() });
                }
                if !catalog.is_superuser(role) && relation.ownership.owner != role {
                    return Err(CoordinatorError::NotOwner { kind, name: name.clone() });
                }
                let dependents = catalog.dependents(name);
                if !dependents.is_empty() && !cascade {
                    return Err(CoordinatorError::DependentObjects {
                        kind,
                        name: name.clone(),
                        dependents: dependents.iter().map(|d| (d.kind, d.name.clone())).collect(),
                    });
                }
                for r in catalog.drop_order(name) {
                    if !to_drop.iter().any(|(id, _)| *id == r.id) {
                        to_drop.push((r.id, r.name));
                    }
                }
            }
        }
        if to_drop.is_empty() {
            return Ok(());
        }
        // Dependents first: ids grow with creation.
        to_drop.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        let names: Vec<String> = to_drop.into_iter().map(|(_, n)| n).collect();
        self.engine.drop(names.clone()).await?;
        for n in &names {
            self.context.deregister_table(n.as_str())?;
        }
        Ok(())
    }

    /// Apply a client transaction's changes as one commit.
    pub async fn commit(&self, changes: Vec<(u32, ChangeBatch)>) -> Result<()> {
        if !changes.is_empty() {
            self.engine.commit(Commit { changes, ..Default::default() }).await?;
        }
        Ok(())
    }

    /// `FLUSH`: returns once every source has applied everything it could read when FLUSH
    /// began (client commits are applied before they return). It waits as long as the
    /// sources make progress (a bulk load can be waited for) and gives up after 60 s in
    /// which no waited-for source applied anything.
    pub async fn flush(&self) -> Result<()> {
        const STALLED: std::time::Duration = std::time::Duration::from_secs(60);
        let started: std::collections::HashMap<String, u64> =
            self.sources.read().expect("registry lock").iter().map(|(n, s)| (n.clone(), s.rounds)).collect();
        let mut last_progress = (Vec::new(), std::time::Instant::now());
        loop {
            let (waiting, progress): (Vec<String>, Vec<(u64, u64)>) = {
                let sources = self.sources.read().expect("registry lock");
                sources
                    .iter()
                    .filter(|(n, s)| {
                        // A pass that began after FLUSH, ending with nothing left to read.
                        let fresh = s.rounds >= started.get(*n).copied().unwrap_or(0) + 2;
                        s.state == "running" && !(fresh && s.caught_up)
                    })
                    .map(|(n, s)| (n.clone(), (s.events, s.pending)))
                    .unzip()
            };
            if waiting.is_empty() {
                return Ok(());
            }
            if progress != last_progress.0 {
                last_progress = (progress, std::time::Instant::now());
            } else if last_progress.1.elapsed() > STALLED {
                return Err(CoordinatorError::FlushStalled { seconds: STALLED.as_secs(), sources: waiting });
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Who an object is created for: a session's role (a new object, its privileges checked),
/// a stored entry being restored (its id, owner and grants as stored; nothing checked), or
/// a view put back after a failed `CREATE OR REPLACE` (as it was, filled anew).
enum Origin<'a> {
    New { role: &'a str },
    Restored { id: u32, ownership: Ownership },
    PutBack { id: u32, ownership: Ownership },
}

impl Origin<'_> {
    fn restoring(&self) -> bool {
        matches!(self, Origin::Restored { .. })
    }

    /// The object's id: its stored one, or a new one.
    fn id(&self, engine: &Engine) -> u32 {
        match self {
            Origin::New { .. } => engine.allocate_id(),
            Origin::Restored { id, .. } | Origin::PutBack { id, .. } => *id,
        }
    }

    fn ownership(&self) -> Ownership {
        match self {
            Origin::New { role } => Ownership::new(role),
            Origin::Restored { ownership, .. } | Origin::PutBack { ownership, .. } => ownership.clone(),
        }
    }
}

/// The first name that appears twice.
fn duplicate_name<'a>(names: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let mut seen = std::collections::HashSet::new();
    names.into_iter().find(|n| !seen.insert(*n))
}

/// `CREATE OR REPLACE VIEW` keeps the old columns, in order, with their names and types,
/// and may add columns after them (as Postgres requires).
fn check_view_columns(old: &Schema, new: &Schema) -> Result<()> {
    let changed = |m: String| Err(CoordinatorError::ViewColumnsChanged(m));
    if new.fields().len() < old.fields().len() {
        return changed("cannot drop columns from view".into());
    }
    for (o, n) in old.fields().iter().zip(new.fields()) {
        if o.name() != n.name() {
            return changed(format!("cannot change name of view column \"{}\" to \"{}\"", o.name(), n.name()));
        }
        if o.data_type() != n.data_type() {
            return changed(format!("cannot change data type of view column \"{}\" from {} to {}", o.name(), o.data_type(), n.data_type()));
        }
    }
    Ok(())
}

/// `WITH (k = 'v', ...)` as stored in a definition, values quoted.
/// A materialized view's `WITH (...)` options: `emit = 'on_window_close'` (what `... EMIT ON
/// WINDOW CLOSE` after the query becomes, see `sql::emit_on_window_close`).
fn view_options(options: &CreateTableOptions) -> Result<bool> {
    let options = match options {
        CreateTableOptions::None => return Ok(false),
        CreateTableOptions::With(options) => options,
        other => return Err(CoordinatorError::InvalidOption(format!("unsupported view option {other}"))),
    };
    let mut close = false;
    for option in options {
        match option {
            SqlOption::KeyValue { key, value } if key.value.eq_ignore_ascii_case("emit") => {
                let value = value.to_string();
                match value.trim_matches('\'').to_ascii_lowercase().as_str() {
                    "on_window_close" | "on window close" => close = true,
                    "on_update" | "on update" => close = false,
                    _ => {
                        return Err(CoordinatorError::InvalidOption(format!("emit = {value} (expected 'on_window_close' or 'on_update')")));
                    }
                }
            }
            other => return Err(CoordinatorError::InvalidOption(format!("unknown view option {other} (expected emit)"))),
        }
    }
    Ok(close)
}

fn with_clause(options: &[(String, String)]) -> String {
    let options: Vec<String> = options.iter().map(|(k, v)| format!("{k} = '{}'", v.replace('\'', "''"))).collect();
    format!("WITH ({})", options.join(", "))
}
