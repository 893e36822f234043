//! Velocity: a SQL-first streaming database. See README.md for the architecture.
//!
//! Data flows `sources -> engine (tick) -> dataflow -> storage`, and `server` serves it;
//! every DDL and DML decision goes through the `coordinator`.

pub mod catalog;
pub mod coordinator;
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
