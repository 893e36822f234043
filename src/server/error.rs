//! The one place where errors become Postgres `ErrorResponse`s with a SQLSTATE, chosen from
//! the error's type. DataFusion's planning errors are the exception: DataFusion gives most
//! of them no type (`DataFusionError::Plan(String)`), so those few are read from the text.

use arrow::error::ArrowError;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError};

use crate::catalog::RelationKind;
use crate::coordinator::CoordinatorError;
use crate::dataflow::DataflowError;
use crate::engine::EngineError;
use crate::functions::size_limits::SizeLimitError;
use crate::planner::PlanError;
use crate::sinks::SinkError;
use crate::sql::SqlError;

/// What keeps the server from starting or serving: its configuration, its data directory.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A flag or file of the server's configuration (users, TLS).
    #[error("{0}")]
    Config(String),
    /// Setting up the SQL session failed.
    #[error("starting the server: {0}")]
    Startup(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
}

/// What a session refuses on its own: its transaction block, its deadline, its changefeeds.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0} can only be used in transaction blocks")]
    NotInTransaction(&'static str),
    #[error("savepoint \"{0}\" does not exist")]
    UndefinedSavepoint(String),
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    InFailedTransaction,
    #[error("ROLLBACK TO SAVEPOINT after an error is not supported; ROLLBACK the transaction")]
    RollbackToAfterError,
    #[error("canceling statement due to statement timeout")]
    StatementTimeout,
    #[error("the connection has not authenticated")]
    NotAuthenticated,
    /// A trusted connection as a role without LOGIN.
    #[error("role \"{0}\" is not permitted to log in")]
    LoginNotPermitted(String),
    #[error("subscriber fell {0} ticks behind and was disconnected; resubscribe to continue")]
    SubscriberLagged(u64),
    #[error("{0}")]
    Syntax(String),
    /// A client encoding other than UTF8 (Velocity converts none).
    #[error("conversion between {0} and UTF8 is not supported: Velocity speaks UTF8 only")]
    UnsupportedEncoding(String),
    /// A `SELECT` list longer than Postgres takes.
    #[error("target lists can have at most {0} entries")]
    TargetListTooLong(usize),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

impl From<SessionError> for PgWireError {
    fn from(e: SessionError) -> PgWireError {
        if let SessionError::LoginNotPermitted(_) = e {
            // Ends the connection, as in Postgres.
            return PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), "28000".into(), e.to_string())));
        }
        let code = match &e {
            SessionError::NotInTransaction(_) => "25P01",
            SessionError::UndefinedSavepoint(_) => "3B001",
            SessionError::InFailedTransaction => "25P02",
            SessionError::RollbackToAfterError => "0A000",
            SessionError::StatementTimeout => "57014",
            SessionError::NotAuthenticated | SessionError::LoginNotPermitted(_) => "28000",
            SessionError::SubscriberLagged(_) => "53400",
            SessionError::Syntax(_) => "42601",
            SessionError::UnsupportedEncoding(_) => "0A000",
            SessionError::TargetListTooLong(_) => "54011",
            SessionError::Arrow(a) => arrow_code(a),
            SessionError::Storage(_) => "XX000",
        };
        pg_error(code, e.to_string())
    }
}

impl From<CoordinatorError> for PgWireError {
    fn from(e: CoordinatorError) -> PgWireError {
        use CoordinatorError as C;
        let code = match &e {
            C::DuplicateObject { kind: RelationKind::Table | RelationKind::MaterializedView | RelationKind::View, .. } => "42P07",
            C::DuplicateObject { .. } | C::DuplicateBinding { .. } => "42710",
            C::UndefinedObject { kind: RelationKind::Table | RelationKind::MaterializedView | RelationKind::View, .. } => "42P01",
            C::UndefinedObject { .. } => "42704",
            C::WrongObjectType { .. } | C::DropWrongType { .. } | C::NotATable(_) => "42809",
            C::ReplaceWithDependents { .. } => "2BP01",
            C::ViewColumnsChanged(_) => "42P16",
            C::ReadOnlyView(_) => "0A000",
            C::DependentObjects { .. } => "2BP01",
            C::MissingPrimaryKey(_) => "42P16",
            C::DuplicateColumn(_) => "42701",
            C::ColumnCount { .. } | C::InvalidOption(_) => "42601",
            C::SourceOptions(_) => "22023",
            C::NotNull { .. } => "23502",
            C::StringTooLong { .. } => "22001",
            C::InvalidText { .. } => "22P02",
            C::ReadOnlyTable { .. } => "25006",
            C::Unsupported(_) => "0A000",
            C::InsufficientPrivilege { .. } | C::NotOwner { .. } | C::PermissionDenied(_) => "42501",
            C::InvalidGrant { .. } => "0LP01",
            C::UndefinedDatabase(_) => "3D000",
            C::DuplicateRole(_) => "42710",
            C::UndefinedRole(_) => "42704",
            C::RoleHasDependents { .. } | C::RequiredRole(_) => "2BP01",
            C::ActiveRole(_) => "55006",
            C::FlushStalled { .. } => "57014",
            C::Restore(_) => "XX000",
            C::Sink(SinkError::UnknownColumn(_)) => "42703",
            C::Sink(SinkError::Options(_)) => "22023",
            C::Sink(_) => "XX000",
            C::Arrow(a) => arrow_code(a),
            C::Plan(_) | C::DataFusion(_) | C::Dataflow(_) | C::Engine(_) => {
                return match e {
                    C::Plan(p) => from_plan(p),
                    C::DataFusion(d) => from_datafusion(d),
                    C::Dataflow(d) => from_dataflow(d),
                    C::Engine(engine) => from_engine(engine),
                    _ => unreachable!("matched above"),
                };
            }
        };
        let hint = e.hint();
        let mut error = pg_error(code, e.to_string());
        if let (PgWireError::UserError(info), Some(hint)) = (&mut error, hint) {
            info.hint = Some(hint);
        }
        error
    }
}

/// An error response with `code`: only for errors this module classifies.
pub(super) fn pg_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".to_string(), code.to_string(), message.into())))
}

fn arrow_code(e: &ArrowError) -> &'static str {
    match e {
        ArrowError::DivideByZero => "22012",
        ArrowError::CastError(_) | ArrowError::ParseError(_) => "22P02",
        ArrowError::ArithmeticOverflow(_) => "22003",
        _ => "XX000",
    }
}

/// SQLSTATE for a DataFusion error, by kind and, for plan errors, by message.
pub fn datafusion_code(e: &DataFusionError) -> &'static str {
    match e.find_root() {
        DataFusionError::SQL(..) => "42601",
        DataFusionError::SchemaError(s, _) => match s.as_ref() {
            SchemaError::FieldNotFound { .. } => "42703",
            SchemaError::AmbiguousReference { .. } => "42702",
            SchemaError::DuplicateQualifiedField { .. } | SchemaError::DuplicateUnqualifiedField { .. } => "42701",
        },
        DataFusionError::ArrowError(a, _) => arrow_code(a),
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::External(e) if e.is::<SizeLimitError>() => "54000",
        DataFusionError::Plan(m) => {
            let m = m.to_ascii_lowercase();
            if m.contains("table") && (m.contains("not found") || m.contains("doesn't exist") || m.contains("does not exist")) {
                "42P01"
            } else if m.contains("correlated scalar subquery must be aggregated") {
                // Postgres evaluates it per row (21000 if a row gets two); DataFusion cannot.
                "0A000"
            } else if m.contains("unrecognized configuration parameter") {
                "42704"
            } else if m.contains("unique expression names") {
                "42701"
            } else if m.contains("invalid function") || m.contains("no function matches") {
                "42883"
            } else if m.contains("coerc") || m.contains("cannot cast") || m.contains("type") {
                "42804"
            } else {
                "42000"
            }
        }
        DataFusionError::Execution(m) => {
            let m = m.to_ascii_lowercase();
            if m.contains(SCALAR_SUBQUERY_ROWS) {
                "21000"
            } else if m.contains("invalid regular expression option") {
                "22023"
            } else if m.contains("invalid regular expression") {
                "2201B"
            } else if m.contains("cannot get array length of") {
                "22023"
            } else if m.contains("invalid input syntax for type json") || m.contains("invalid input syntax for type uuid") {
                "22P02"
            } else if m.contains("divide by zero") || m.contains("division by zero") {
                "22012"
            } else if m.contains("cast") || m.contains("parse") {
                "22P02"
            } else if m.contains("overflow") {
                "22003"
            } else {
                "XX000"
            }
        }
        _ => "XX000",
    }
}

/// DataFusion's words for a scalar subquery that returned more than one row (lower case).
const SCALAR_SUBQUERY_ROWS: &str = "scalar subquery returned more than one row";

/// The message for a DataFusion error: its root's, or Postgres' words where clients (and
/// people) know those better.
pub fn datafusion_message(e: &DataFusionError) -> String {
    let message = e.find_root().message().to_string();
    match datafusion_code(e) {
        "21000" if message.to_ascii_lowercase().contains(SCALAR_SUBQUERY_ROWS) => {
            return "more than one row returned by a subquery used as an expression".into();
        }
        // Postgres' words, with the pool's account of who held what.
        "53200" => return format!("out of memory: {message}"),
        _ => {}
    }
    message
}

pub fn from_datafusion(e: DataFusionError) -> PgWireError {
    let code = datafusion_code(&e);
    pg_error(code, datafusion_message(&e))
}

pub fn from_dataflow(e: DataflowError) -> PgWireError {
    match e {
        DataflowError::DataFusion(d) => from_datafusion(d),
        DataflowError::Arrow(a) => pg_error(arrow_code(&a), a.to_string()),
        other => pg_error("XX000", other.to_string()),
    }
}

pub fn from_engine(e: EngineError) -> PgWireError {
    let code = match &e {
        EngineError::UniqueViolation(_) => "23505",
        EngineError::NotNullViolation(_) => "23502",
        EngineError::SerializationFailure(_) => "40001",
        EngineError::DependentObjects(_) => "2BP01",
        EngineError::UndefinedObject(_) => "42P01",
        EngineError::DuplicateObject(_) => "42P07",
        EngineError::Dataflow(_) => {
            return from_dataflow(match e {
                EngineError::Dataflow(d) => d,
                _ => unreachable!(),
            });
        }
        EngineError::View { .. } => {
            let EngineError::View { view, error } = e else { unreachable!() };
            let mut e = from_dataflow(error);
            if let PgWireError::UserError(info) = &mut e {
                info.message = format!("view \"{view}\": {}", info.message);
            }
            return e;
        }
        EngineError::Storage(_) | EngineError::Arrow(_) | EngineError::Output(_) | EngineError::Stopped => "XX000",
    };
    pg_error(code, e.to_string())
}

pub fn from_plan(e: PlanError) -> PgWireError {
    match e {
        PlanError::Unsupported(_) | PlanError::NoWatermark(_) => pg_error("0A000", e.to_string()),
        PlanError::UnknownRelation(_) => pg_error("42809", e.to_string()),
        PlanError::DataFusion(d) => from_datafusion(d),
        PlanError::Dataflow(d) => from_dataflow(d),
        PlanError::Arrow(a) => pg_error(arrow_code(&a), a.to_string()),
    }
}

pub fn from_sql(e: SqlError) -> PgWireError {
    let code = match &e {
        SqlError::Syntax(_) => "42601",
        SqlError::Unsupported(_) => "0A000",
        SqlError::TooComplex(_) => "54001",
    };
    pg_error(code, e.to_string())
}
