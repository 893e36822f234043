//! The errors of the sources layer.

use crate::engine::EngineError;
use crate::sql::OptionError;
use crate::storage::StorageError;

/// What stops a source from reading (the runner reports it and retries), as opposed to
/// problems with single records, which become dead letters.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A table binding the assembler cannot work with.
    #[error("table binding for \"{collection}\": {reason}")]
    InvalidBinding { collection: String, reason: String },
    /// The source's `WITH (...)` options.
    #[error(transparent)]
    Options(#[from] OptionError),
    /// Upstream is not as the source needs it: a table or topic that does not exist or
    /// cannot be named, a replication slot of another database, a stream that ended.
    #[error("{0}")]
    Upstream(String),
    /// Reading input files.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The Kafka consumer.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A plain Postgres session (publication, slot state, snapshot).
    #[error("{context}: {source}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The logical replication session.
    #[error("{context}: {source}")]
    Replication {
        context: String,
        #[source]
        source: pgwire_replication::PgWireError,
    },
    /// A replication message that does not parse.
    #[error("pgoutput: {0}")]
    Pgoutput(String),
    /// Committing to the engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The source's stored offsets or dead letters do not decode.
    #[error("stored source state: {0}")]
    State(#[from] serde_json::Error),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// A connector used out of order or a worker thread lost: a bug, reported rather than
    /// panicking.
    #[error("internal source error: {0}")]
    Internal(String),
}

impl SourceError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> SourceError {
        SourceError::Io { context: context.into(), source }
    }

    pub fn postgres(context: impl Into<String>, source: tokio_postgres::Error) -> SourceError {
        SourceError::Postgres { context: context.into(), source }
    }

    pub fn replication(context: impl Into<String>, source: pgwire_replication::PgWireError) -> SourceError {
        SourceError::Replication { context: context.into(), source }
    }
}
