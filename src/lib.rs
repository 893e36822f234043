//! Velocity: a SQL-first streaming database. See README.md for the architecture.
//!
//! Data flows `sources -> engine (tick) -> dataflow -> storage`, and `server` serves it.

pub mod catalog;
pub mod dataflow;
pub mod engine;
pub mod functions;
pub mod planner;
pub mod server;
pub mod sinks;
pub mod sources;
pub mod sql;
pub mod storage;
pub mod tools;
