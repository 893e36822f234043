//! What a DDL or DML decision can refuse, typed, so that `server::error` picks the SQLSTATE
//! from the kind of failure and never from a message's text.

use datafusion::error::DataFusionError;

use crate::catalog::{Privilege, RelationKind};
use crate::engine::EngineError;
use crate::planner::PlanError;
use crate::sinks::SinkError;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// CREATE of a name the catalog already holds (one namespace for every kind).
    #[error("{} \"{name}\" already exists", if matches!(kind, RelationKind::Source) { "source" } else { "relation" })]
    DuplicateObject { kind: RelationKind, name: String },
    /// A name that is not in the catalog, or not as the kind the statement expects.
    #[error("{} \"{name}\" does not exist", kind.sql_name())]
    UndefinedObject { kind: RelationKind, name: String },
    #[error("\"{name}\" is not a {expected}")]
    WrongObjectType { name: String, expected: &'static str },
    /// `DROP VIEW` of a materialized view, `DROP TABLE` of a view, ...: as Postgres, with a
    /// hint naming the statement that drops it.
    #[error("\"{name}\" is not a {}", expected.sql_name())]
    DropWrongType { name: String, expected: RelationKind, actual: RelationKind },
    /// `CREATE OR REPLACE` of a view other objects read: their dataflows and plans were
    /// built from the definition it would replace.
    #[error(
        "cannot replace {} \"{name}\" because other objects depend on it: {} (drop them first)",
        kind.sql_name(),
        dependents.iter().map(|(k, n)| format!("{} \"{n}\"", k.sql_name())).collect::<Vec<_>>().join(", ")
    )]
    ReplaceWithDependents { kind: RelationKind, name: String, dependents: Vec<(RelationKind, String)> },
    /// `CREATE OR REPLACE VIEW` whose columns do not begin with the old ones, unchanged.
    #[error("{0}")]
    ViewColumnsChanged(String),
    #[error(
        "cannot drop {} \"{name}\" because other objects depend on it: {} (use DROP ... CASCADE)",
        kind.sql_name(),
        dependents.iter().map(|(k, n)| format!("{} \"{n}\"", k.sql_name())).collect::<Vec<_>>().join(", ")
    )]
    DependentObjects { kind: RelationKind, name: String, dependents: Vec<(RelationKind, String)> },
    /// Two tables may not mirror the same upstream table of one source.
    #[error("table \"{table}\" already mirrors {upstream} of source \"{source_name}\"")]
    DuplicateBinding { table: String, upstream: String, source_name: String },
    #[error("table \"{0}\" is fed by a source and needs a PRIMARY KEY to apply changes by")]
    MissingPrimaryKey(String),
    #[error("column \"{0}\" specified more than once; give the view's columns distinct names")]
    DuplicateColumn(String),
    #[error("{kind} specifies a different number of columns than the query")]
    ColumnCount { kind: &'static str },
    /// A WITH option a statement does not take, or lacks, or cannot read.
    #[error("{0}")]
    InvalidOption(String),
    /// A source's options that name no usable connector configuration.
    #[error("{0}")]
    SourceOptions(String),
    #[error("null value in column \"{column}\" of relation \"{relation}\" violates not-null constraint")]
    NotNull { relation: String, column: String },
    /// Text that is not a value of its column's type (a malformed uuid).
    #[error("invalid input syntax for type {type_name}: \"{value}\"")]
    InvalidText { type_name: &'static str, value: String },
    /// A value longer than its `VARCHAR(n)` column allows.
    #[error("value too long for type {type_name}")]
    StringTooLong { type_name: String },
    #[error("table \"{table}\" is fed by source \"{source_name}\" and cannot be changed directly")]
    ReadOnlyTable { table: String, source_name: String },
    #[error("cannot change materialized view \"{0}\"")]
    NotATable(String),
    /// INSERT, UPDATE or DELETE on a plain view (Postgres changes the table of a simple
    /// view; Velocity's views are read-only).
    #[error("cannot change view \"{0}\": views are read-only (change the tables it reads)")]
    ReadOnlyView(String),
    #[error("{0} is not supported")]
    Unsupported(String),
    /// The role lacks a privilege on an object (`permission denied for table t`).
    #[error("permission denied for {} {name}", kind.sql_name())]
    InsufficientPrivilege { privilege: Privilege, kind: RelationKind, name: String },
    /// Only the owner (or a superuser) may do this to the object.
    #[error("must be owner of {} {name}", kind.sql_name())]
    NotOwner { kind: RelationKind, name: String },
    /// What only a superuser may do: `permission denied to create role`, `must be superuser
    /// to create a source`.
    #[error("{0}")]
    PermissionDenied(String),
    /// A privilege the object does not take (`GRANT SELECT ON SOURCE s`).
    #[error("invalid privilege type {privilege} for {kind}")]
    InvalidGrant { privilege: String, kind: &'static str },
    #[error("database \"{0}\" does not exist")]
    UndefinedDatabase(String),
    #[error("role \"{0}\" already exists")]
    DuplicateRole(String),
    #[error("role \"{0}\" does not exist")]
    UndefinedRole(String),
    /// DROP ROLE of a role that owns objects or holds privileges on them.
    #[error("role \"{name}\" cannot be dropped because some objects depend on it: {}", objects.join(", "))]
    RoleHasDependents { name: String, objects: Vec<String> },
    /// DROP ROLE of a role configured at start.
    #[error("cannot drop role {0} because it is required by the database system")]
    RequiredRole(String),
    /// DROP ROLE of the session's own role.
    #[error("{0} user cannot be dropped")]
    ActiveRole(&'static str),
    /// FLUSH waited for sources that stopped making progress.
    #[error("FLUSH gave up: sources made no progress for {seconds} s: {}", sources.join(", "))]
    FlushStalled { seconds: u64, sources: Vec<String> },
    #[error("a stored definition cannot be restored: {0}")]
    Restore(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Dataflow(#[from] crate::dataflow::DataflowError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl CoordinatorError {
    /// The hint Postgres gives with this error, if any.
    pub fn hint(&self) -> Option<String> {
        match self {
            CoordinatorError::DropWrongType { actual, .. } => {
                Some(format!("Use DROP {} to remove a {}.", actual.sql_name().to_ascii_uppercase(), actual.sql_name()))
            }
            _ => None,
        }
    }
}

pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;
