//! Each query runs in its own DataFusion session state: a copy of the server's (catalogs,
//! functions, settings) with its own memory pool and the role it runs as. A statement's
//! sorts, hash tables and aggregates reserve from its pool (spilling where DataFusion can)
//! and fail with 53200 past it, so one statement cannot take the server's memory; system
//! tables read the role to show each role its own rows.

use std::fmt;
use std::sync::Arc;

use datafusion::error::Result;
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryLimit, MemoryPool, MemoryReservation};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionContext;

/// How much memory statements may reserve: each one, and all running at once.
#[derive(Debug, Clone)]
pub struct StatementMemory {
    pub per_statement: usize,
    server: Arc<GreedyMemoryPool>,
}

impl StatementMemory {
    pub fn new(per_statement: usize, all_statements: usize) -> StatementMemory {
        StatementMemory { per_statement, server: Arc::new(GreedyMemoryPool::new(all_statements)) }
    }

    /// A quarter of the machine's memory per statement, half for all of them together.
    pub fn machine_default() -> StatementMemory {
        let total = physical_memory().unwrap_or(4 << 30);
        StatementMemory::new(total / 4, total / 2)
    }

    /// `per_statement` each, and all together half the machine's memory (at least `per_statement`).
    pub fn with_statement_limit(per_statement: usize) -> StatementMemory {
        let total = physical_memory().unwrap_or(4 << 30);
        StatementMemory::new(per_statement, (total / 2).max(per_statement))
    }
}

/// Bytes of RAM, from /proc/meminfo.
fn physical_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: usize = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// The role a statement runs as, where its execution can read it
/// (`Session::config().get_extension::<StatementRole>()`).
#[derive(Debug, Clone)]
pub struct StatementRole {
    pub name: String,
    pub superuser: bool,
}

/// `shared` as one statement of `role` sees it, with a pool of its own.
pub fn for_statement(shared: &SessionContext, memory: &StatementMemory, role: StatementRole) -> Arc<SessionContext> {
    let state = shared.state();
    let mut runtime = (**state.runtime_env()).clone();
    runtime.memory_pool = Arc::new(StatementPool { statement: GreedyMemoryPool::new(memory.per_statement), server: memory.server.clone() });
    let config = state.config().clone().with_extension(Arc::new(role));
    let state = SessionStateBuilder::new_from_existing(state).with_runtime_env(Arc::new(runtime)).with_config(config).build();
    Arc::new(SessionContext::new_with_state(state))
}

/// A statement's share: every reservation counts against the statement's limit and the
/// server-wide one.
#[derive(Debug)]
struct StatementPool {
    statement: GreedyMemoryPool,
    server: Arc<GreedyMemoryPool>,
}

impl fmt::Display for StatementPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "statement pool ({}; all statements: {})", self.statement, self.server)
    }
}

impl MemoryPool for StatementPool {
    fn name(&self) -> &str {
        "statement"
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.statement.grow(reservation, additional);
        self.server.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.statement.shrink(reservation, shrink);
        self.server.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.statement.try_grow(reservation, additional)?;
        if let Err(e) = self.server.try_grow(reservation, additional) {
            self.statement.shrink(reservation, additional);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.statement.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.statement.memory_limit()
    }
}
