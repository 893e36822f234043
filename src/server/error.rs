//! The one place where errors become Postgres `ErrorResponse`s with a SQLSTATE.

use arrow::error::ArrowError;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError};

use crate::dataflow::DataflowError;
use crate::engine::EngineError;
use crate::planner::PlanError;
use crate::sql::SqlError;

pub fn pg_error(code: &str, message: impl Into<String>) -> PgWireError {
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
        DataFusionError::Plan(m) => {
            let m = m.to_ascii_lowercase();
            if m.contains("table") && (m.contains("not found") || m.contains("doesn't exist") || m.contains("does not exist")) {
                "42P01"
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
            if m.contains("divide by zero") || m.contains("division by zero") {
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

pub fn from_datafusion(e: DataFusionError) -> PgWireError {
    let code = datafusion_code(&e);
    pg_error(code, e.find_root().message().to_string())
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
        EngineError::Storage(_) | EngineError::Arrow(_) | EngineError::Sink(_) | EngineError::Stopped => "XX000",
    };
    pg_error(code, e.to_string())
}

pub fn from_plan(e: PlanError) -> PgWireError {
    match e {
        PlanError::Unsupported(_) => pg_error("0A000", e.to_string()),
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
