//! Command-line tools around the database: benchmarks, the live demo and the TMS simulator.
//!
//! They drive Velocity from outside, the way users do (SQL over pgwire, Debezium traffic into
//! sources), so nothing in the database depends on them.

pub mod bench;
pub mod debezium_traffic;
pub mod demo;
pub mod simulate;
pub mod soak;
