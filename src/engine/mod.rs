//! The engine: owns storage, the catalog and every dataflow, and advances in ticks.
//!
//! A step takes the pending commits (many source and client transactions under load),
//! applies them to table contents in order, pushes the changes through every dataflow in
//! dependency order and commits contents, operator state, source offsets and catalog
//! changes in one RocksDB `WriteBatch` with one fsync (group commit). Each transaction keeps
//! its own tick number (its logical time) inside the step, so `changes()` sees each one's
//! own before and after. Readers hold the [`Engine::gate`] while they copy data, so they
//! never observe part of a step.

pub mod contents;
pub mod watermark;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::catalog::{Catalog, CatalogUpdate, Relation, RelationKind};
use crate::dataflow::graph::{Dataflow, StepChanges, TickInfo};
use crate::dataflow::{ChangeBatch, DataflowError};
use crate::storage::{StorageError, Store, TickWrites, keyspace};

pub use contents::Contents;

/// Errors the engine reports for a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    UniqueViolation(String),
    #[error("{0}")]
    NotNullViolation(String),
    #[error("{0}")]
    SerializationFailure(String),
    #[error("{0}")]
    DependentObjects(String),
    #[error("{0}")]
    UndefinedObject(String),
    /// A catalog name taken already: the coordinator checks first, this is the backstop.
    #[error("relation \"{0}\" already exists")]
    DuplicateObject(String),
    #[error("error maintaining views: {0}")]
    Dataflow(#[from] DataflowError),
    /// A view cannot take the step's data: its expression failed on a row (division by zero,
    /// an invalid cast, an overflow).
    #[error("view \"{view}\": {error}")]
    View { view: String, error: DataflowError },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// A step output (a sink's encoder) could not write the step's changes.
    #[error("{0}")]
    Output(Box<dyn std::error::Error + Send + Sync>),
    #[error("the engine has stopped")]
    Stopped,
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Changes to apply atomically: one source or client transaction.
#[derive(Default)]
pub struct Commit {
    /// Row changes (a client's INSERT/UPDATE/DELETE), by relation id.
    pub changes: Vec<(u32, ChangeBatch)>,
    /// Net changes by primary key (a CDC transaction), resolved against the table's
    /// current rows when the tick runs.
    pub keyed: Vec<(u32, KeyedChanges)>,
    /// Storage writes that must commit with these changes (source offsets, dead letters).
    pub extra_writes: Vec<(Vec<u8>, Vec<u8>)>,
    /// When the upstream committed this transaction (ms since the epoch), for freshness.
    pub source_ts_ms: Option<i64>,
    /// The ordered commits of one source: once one fails, the engine refuses the rest, so a
    /// source's stored offsets never move past a transaction that was not applied.
    pub chain: Option<CommitChain>,
    /// For a source transaction a view cannot take ([`EngineError::View`]): the writes that
    /// record it as a dead letter, given the reason. The engine then commits those and
    /// `extra_writes` instead of the transaction, so the source goes on past it.
    pub on_reject: Option<RejectWrites>,
}

/// See [`Commit::on_reject`].
pub type RejectWrites = Box<dyn FnOnce(&str) -> Vec<(Vec<u8>, Vec<u8>)> + Send>;

impl Commit {
    /// Rows this commit changes, for sizing steps.
    fn rows(&self) -> usize {
        let keyed: usize = self.keyed.iter().map(|(_, k)| k.upserts.num_rows() + k.deletes.num_rows()).sum();
        let changes: usize = self.changes.iter().map(|(_, c)| c.len()).sum();
        keyed + changes + 1
    }
}

/// Shared by the commits of one source, in submission order (see [`Commit::chain`]).
#[derive(Clone, Default)]
pub struct CommitChain(Arc<AtomicBool>);

impl CommitChain {
    fn broken(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn break_off(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Rows one step takes at most (with at least one commit): big enough to amortise a step's
/// fixed cost, small enough to keep a step's latency and memory bounded.
const STEP_ROW_BUDGET: usize = 200_000;
/// Commits one step takes at most.
const STEP_COMMIT_BUDGET: usize = 8192;

/// Final rows and deleted keys of one table in one source transaction.
pub struct KeyedChanges {
    /// Rows as they are after the transaction (table schema).
    pub upserts: arrow::array::RecordBatch,
    /// Keys deleted by the transaction (primary-key columns only).
    pub deletes: arrow::array::RecordBatch,
    /// Remove every row the table had before `upserts` and `deletes` (a TRUNCATE).
    pub truncate: bool,
}

/// What a committed step produced, for changefeeds: the net change of every relation over
/// all the step's transactions, stamped with the tick of its last one.
#[derive(Clone)]
pub struct TickOutput {
    pub tick: u64,
    pub committed_at: SystemTime,
    /// Consolidated changes of every relation that changed, by relation id.
    pub changes: Arc<HashMap<u32, ChangeBatch>>,
}

/// Fed inside every step with the changes of one relation, to write what must commit with
/// them (a sink's outbox), in the step's own WriteBatch.
pub trait StepOutput: Send {
    /// The relation whose changes it takes.
    fn relation(&self) -> u32;
    /// Write the step's net `changes` of the relation, stamped with `tick`.
    fn write(&self, changes: &ChangeBatch, tick: TickInfo, writes: &mut TickWrites) -> Result<(), OutputError>;
    /// Delete everything it keeps in storage: it is being dropped.
    fn forget(&self, store: &Store, writes: &mut TickWrites) -> Result<(), StorageError>;
}

/// What a [`StepOutput`] reports when it cannot write a step.
pub type OutputError = Box<dyn std::error::Error + Send + Sync>;

enum Request {
    Commit(Commit, oneshot::Sender<Result<u64>>),
    CreateTable {
        relation: Relation,
        restore: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    CreateView {
        relation: Relation,
        dataflow: Box<Dataflow>,
        restore: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    CreateOutput {
        relation: Relation,
        output: Box<dyn StepOutput>,
        restore: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Storage writes of an output's delivery task (its progress), applied while the output
    /// exists.
    RecordOutput {
        id: u32,
        writes: TickWrites,
        reply: oneshot::Sender<Result<()>>,
    },
    Drop {
        names: Vec<String>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Roles, owners and grants: applied to the catalog and stored in a step of their own.
    UpdateCatalog {
        update: CatalogUpdate,
        reply: oneshot::Sender<Result<()>>,
    },
    /// The clock ticked: run the dataflows whose operators are due (temporal filters).
    Wake,
}

/// Counters readable while the engine runs.
#[derive(Default, Debug, Clone)]
pub struct EngineStats {
    pub tick: u64,
    pub last_tick_at: Option<SystemTime>,
    /// Rows per relation (tables and views), kept up to date by every tick.
    pub view_rows: HashMap<u32, i64>,
    /// The last tick that changed each relation.
    pub last_change: HashMap<u32, u64>,
    pub tick_latencies_us: Vec<u64>,
    /// Per relation, the freshness of its last change made by a source transaction: time
    /// from the upstream commit to the tick that applied it.
    pub freshness_ms: HashMap<u32, u64>,
    /// Recent freshness of every tick that applied source transactions.
    pub freshness_samples_ms: Vec<u64>,
    /// Per table with a watermark: the watermark (µs) and the rows refused as late.
    pub watermarks: HashMap<u32, (Option<i64>, u64)>,
    /// Per relation, the recent freshness of the ticks that changed it (as `freshness_ms`).
    /// For a view that emits on window close every change is windows closing, so this is the
    /// time from the event that moved the watermark past a window's end to its final row.
    pub freshness_by_relation_ms: HashMap<u32, Vec<u64>>,
}

/// A cloneable handle: send requests to the engine thread, read the catalog.
#[derive(Clone)]
pub struct Engine {
    requests: mpsc::UnboundedSender<Request>,
    store: Store,
    catalog: Arc<RwLock<Catalog>>,
    /// Held for writing while a tick commits; readers hold it while they copy a snapshot.
    gate: Arc<tokio::sync::RwLock<()>>,
    ticks: tokio::sync::broadcast::Sender<TickOutput>,
    stats: Arc<RwLock<EngineStats>>,
    /// Most commits per step; 0: the default budget.
    step_limit: Arc<AtomicUsize>,
}

impl Engine {
    /// Open the data directory and start the engine thread.
    pub fn open(dir: &Path) -> Result<Engine> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::Corrupt { what: dir.display().to_string(), detail: e.to_string() })?;
        let store = Store::open(dir)?;
        let tick = store.get(&meta_key(b"tick"))?.and_then(|v| v.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ticks, _) = tokio::sync::broadcast::channel(1024);
        let engine = Engine {
            requests: tx,
            store: store.clone(),
            catalog: Arc::new(RwLock::new(Catalog::open(&store)?)),
            gate: Arc::new(tokio::sync::RwLock::new(())),
            ticks,
            stats: Arc::new(RwLock::new(EngineStats { tick, ..Default::default() })),
            step_limit: Arc::new(AtomicUsize::new(0)),
        };
        let state = EngineThread {
            store,
            catalog: engine.catalog.clone(),
            gate: engine.gate.clone(),
            ticks: engine.ticks.clone(),
            stats: engine.stats.clone(),
            contents: HashMap::new(),
            dataflows: BTreeMap::new(),
            outputs: BTreeMap::new(),
            tick,
            step_limit: engine.step_limit.clone(),
            watermarks: HashMap::new(),
            step_watermarks: HashMap::new(),
        };
        // Weak, so the engine still stops once every handle is gone.
        let clock = engine.requests.downgrade();
        std::thread::Builder::new()
            .name("velocity-clock".into())
            .spawn(move || {
                while clock.upgrade().is_some_and(|tx| tx.send(Request::Wake).is_ok()) {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            })
            .map_err(|e| StorageError::Corrupt { what: "clock thread".into(), detail: e.to_string() })?;
        std::thread::Builder::new()
            .name("velocity-engine".into())
            // Views' expressions evaluate recursively, up to `sql::MAX_EXPRESSION_DEPTH` levels.
            .stack_size(64 << 20)
            .spawn(move || state.run(rx))
            .map_err(|e| StorageError::Corrupt { what: "engine thread".into(), detail: e.to_string() })?;
        Ok(engine)
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(make(tx)).map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Apply a transaction; returns the tick it was committed in.
    pub async fn commit(&self, commit: Commit) -> Result<u64> {
        self.call(|reply| Request::Commit(commit, reply)).await
    }

    /// Queue a transaction without waiting for it: commits are applied in submission order,
    /// and the returned future resolves once this one is durable. Lets a source decode the
    /// next transactions while the engine applies these.
    pub fn submit(&self, commit: Commit) -> impl Future<Output = Result<u64>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.requests.send(Request::Commit(commit, tx)).is_ok();
        async move {
            if !sent {
                return Err(EngineError::Stopped);
            }
            rx.await.map_err(|_| EngineError::Stopped)?
        }
    }

    pub async fn create_table(&self, relation: Relation, restore: bool) -> Result<()> {
        self.call(|reply| Request::CreateTable { relation, restore, reply }).await
    }

    pub async fn create_view(&self, relation: Relation, dataflow: Dataflow, restore: bool) -> Result<()> {
        self.call(|reply| Request::CreateView { relation, dataflow: Box::new(dataflow), restore, reply }).await
    }

    /// Create an object with a step output (a sink): from the next step on, every change of
    /// the output's relation is written to it; a new one starts with the relation's current
    /// rows.
    pub async fn create_output(&self, relation: Relation, output: Box<dyn StepOutput>, restore: bool) -> Result<()> {
        self.call(|reply| Request::CreateOutput { relation, output, restore, reply }).await
    }

    /// What a delivery task needs of the engine, and no more.
    pub fn output_handle(&self) -> OutputHandle {
        OutputHandle {
            requests: self.requests.clone(),
            store: self.store.clone(),
            ticks: self.ticks.clone(),
            catalog: self.catalog.clone(),
        }
    }

    /// The storage, for reading (only the engine thread writes it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The catalog as of now.
    pub fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().expect("catalog lock")
    }

    /// A new catalog id (the coordinator asks, one DDL statement at a time).
    pub fn allocate_id(&self) -> u32 {
        self.catalog.write().expect("catalog lock").allocate_id()
    }

    /// While held, no step commits: everything read meanwhile is one committed tick.
    pub async fn read_snapshot(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Every committed step from now on. Subscribe while holding [`Engine::read_snapshot`] to
    /// continue a snapshot without a gap.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<TickOutput> {
        self.ticks.subscribe()
    }

    /// Counters and latencies.
    pub fn stats(&self) -> std::sync::RwLockReadGuard<'_, EngineStats> {
        self.stats.read().expect("stats lock")
    }

    /// Drop relations, given dependents first.
    pub async fn drop(&self, names: Vec<String>) -> Result<()> {
        self.call(|reply| Request::Drop { names, reply }).await
    }

    /// Change roles, owners or grants (see [`CatalogUpdate`]); returns once it is durable.
    pub async fn update_catalog(&self, update: CatalogUpdate) -> Result<()> {
        self.call(|reply| Request::UpdateCatalog { update, reply }).await
    }

    /// Cap the commits one step takes (0: the default budget), for measuring batch sizes.
    pub fn set_step_limit(&self, commits: usize) {
        self.step_limit.store(commits, Ordering::Relaxed);
    }

    pub fn current_tick(&self) -> u64 {
        self.stats.read().map(|s| s.tick).unwrap_or(0)
    }
}

struct EngineThread {
    store: Store,
    catalog: Arc<RwLock<Catalog>>,
    gate: Arc<tokio::sync::RwLock<()>>,
    ticks: tokio::sync::broadcast::Sender<TickOutput>,
    stats: Arc<RwLock<EngineStats>>,
    contents: HashMap<u32, Contents>,
    /// By view id: ids grow with creation, so this order is a dependency order.
    dataflows: BTreeMap<u32, Dataflow>,
    /// Step outputs (sinks), by the id of their catalog object.
    outputs: BTreeMap<u32, Box<dyn StepOutput>>,
    tick: u64,
    step_limit: Arc<AtomicUsize>,
    /// Tables with a watermark, as committed.
    watermarks: HashMap<u32, watermark::TableWatermark>,
    /// The tables' watermarks as the step being run leaves them, for its dataflows.
    step_watermarks: HashMap<u32, i64>,
}

impl EngineThread {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            // Group the commits already waiting into one step, up to the step's budget: the
            // more is waiting, the larger the step (latency stays near one step's work).
            let mut commits = Vec::new();
            let mut rows = 0;
            let limit = match self.step_limit.load(Ordering::Relaxed) {
                0 => STEP_COMMIT_BUDGET,
                n => n,
            };
            let mut woken = false;
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Request::Commit(c, reply) => {
                        rows += c.rows();
                        commits.push((c, reply));
                    }
                    Request::Wake => woken = true,
                    // Independent of the commits around it: no reason to end the step.
                    record @ Request::RecordOutput { .. } => self.guarded(|engine| engine.handle_ddl(record)),
                    other => {
                        let pending = std::mem::take(&mut commits);
                        rows = 0;
                        self.guarded(|engine| engine.run_commits(pending));
                        self.guarded(|engine| engine.handle_ddl(other));
                    }
                }
                if commits.len() < limit && rows < STEP_ROW_BUDGET {
                    next = rx.try_recv().ok();
                }
            }
            self.guarded(|engine| engine.run_commits(commits));
            if woken {
                self.guarded(|engine| engine.run_due());
            }
        }
    }

    /// A tick without input for the dataflows whose time-dependent operators are due.
    fn run_due(&mut self) {
        let now = self.next_tick_info().committed_at_micros;
        if self.dataflows.values().any(|d| d.wakeup_at().is_some_and(|t| t <= now)) {
            let step = StepChanges::new(vec![self.next_tick_info()]);
            if let Err(e) = self.propagate(step, contents::Overlay::new(), Vec::new()) {
                tracing::error!("expiring rows of temporal filters: {e}");
            }
        }
    }

    /// A bug must not take the engine down: a panicking request is dropped (its waiters
    /// get an error) and every dataflow goes back to its committed state.
    fn guarded(&mut self, f: impl FnOnce(&mut Self)) {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))).is_err() {
            tracing::error!("engine request panicked; restoring committed state");
            let ids: Vec<u32> = self.dataflows.keys().copied().collect();
            self.restore_dataflows(&ids);
        }
    }

    fn handle_ddl(&mut self, req: Request) {
        match req {
            Request::CreateTable { relation, restore, reply } => {
                let _ = reply.send(self.create_table(relation, restore));
            }
            Request::CreateView { relation, dataflow, restore, reply } => {
                let _ = reply.send(self.create_view(relation, *dataflow, restore));
            }
            Request::CreateOutput { relation, output, restore, reply } => {
                let _ = reply.send(self.create_output(relation, output, restore));
            }
            Request::RecordOutput { id, writes, reply } => {
                // A write that arrives after its output was dropped would bring its state back.
                let result = if self.outputs.contains_key(&id) { self.store.commit(writes).map_err(EngineError::from) } else { Ok(()) };
                let _ = reply.send(result);
            }
            Request::Drop { names, reply } => {
                let _ = reply.send(self.drop(names));
            }
            Request::UpdateCatalog { update, reply } => {
                let _ = reply.send(self.update_catalog(update));
            }
            Request::Commit(..) | Request::Wake => unreachable!("commits and wake-ups are batched by run()"),
        }
    }

    /// The backstop behind the coordinator's name check: a name is taken once.
    fn check_new_name(&self, relation: &Relation, restore: bool) -> Result<()> {
        match self.catalog.read().expect("catalog lock").get(&relation.name) {
            Some(_) if !restore => Err(EngineError::DuplicateObject(relation.name.clone())),
            _ => Ok(()),
        }
    }

    fn create_table(&mut self, relation: Relation, restore: bool) -> Result<()> {
        self.check_new_name(&relation, restore)?;
        let contents = match relation.kind.stores_rows() {
            true => Some(Contents::new(relation.id, &relation.name, relation.schema.clone(), &relation.primary_key)?),
            false => None,
        };
        let mut writes = TickWrites::default();
        let mut catalog = self.catalog.write().expect("catalog lock");
        if !restore {
            catalog.insert(relation.clone(), Some(&mut writes));
            drop(catalog);
            self.commit_writes(writes, HashMap::new(), 1)?;
        } else {
            catalog.insert(relation.clone(), None);
            drop(catalog);
        }
        self.restore_row_count(relation.id)?;
        if let Some(spec) = relation.watermark {
            self.watermarks.insert(relation.id, watermark::TableWatermark::load(&relation, spec, &self.store)?);
            self.publish_watermarks();
        }
        if let Some(contents) = contents {
            self.contents.insert(relation.id, contents);
        }
        Ok(())
    }

    fn restore_row_count(&self, id: u32) -> Result<()> {
        if let Some(v) = self.store.get(&rows_key(id))? {
            let n = v.try_into().map(i64::from_le_bytes).unwrap_or(0);
            self.stats.write().expect("stats lock").view_rows.insert(id, n);
        }
        Ok(())
    }

    fn create_view(&mut self, relation: Relation, mut dataflow: Dataflow, restore: bool) -> Result<()> {
        self.check_new_name(&relation, restore)?;
        let contents = Contents::new(relation.id, &relation.name, relation.schema.clone(), &[])?;
        if restore {
            dataflow.restore(&self.store)?;
            self.catalog.write().expect("catalog lock").insert(relation.clone(), None);
        } else {
            // Hydrate: the current contents of every input, as one insertion.
            let mut inputs = HashMap::new();
            for id in dataflow.inputs().collect::<Vec<_>>() {
                let c = self.contents.get(&id).ok_or_else(|| EngineError::UndefinedObject(format!("relation {id}")))?;
                inputs.insert(id, c.scan(&self.store)?);
            }
            let mut writes = TickWrites::default();
            dataflow.advance_watermarks(&self.step_watermarks);
            let out = dataflow.hydrate(&inputs, self.next_tick_info(), &mut writes)?;
            let mut overlay = contents::Overlay::new();
            contents.apply(&self.store, &mut overlay, &out)?;
            contents::flush_overlay(overlay, &mut writes);
            self.catalog.write().expect("catalog lock").insert(relation.clone(), Some(&mut writes));
            let mut changed = HashMap::new();
            changed.insert(relation.id, out);
            if let Err(e) = self.commit_writes(writes, changed, 1) {
                self.catalog.write().expect("catalog lock").remove(&relation.name, &mut TickWrites::default());
                return Err(e);
            }
        }
        self.restore_row_count(relation.id)?;
        self.contents.insert(relation.id, contents);
        self.dataflows.insert(relation.id, dataflow);
        self.mark_timed();
        Ok(())
    }

    /// A view read by `changes(...)`, and every view it reads, must run once per transaction
    /// time; the others run once per step. Ids grow with creation, so a view's inputs have
    /// smaller ids: one pass from the newest view settles every flag.
    fn mark_timed(&mut self) {
        let mut needed: HashSet<u32> = self.dataflows.values().flat_map(|d| d.changelog_relations()).collect();
        for (id, dataflow) in self.dataflows.iter_mut().rev() {
            dataflow.timed = needed.contains(id);
            if dataflow.timed {
                needed.extend(dataflow.inputs());
            }
        }
    }

    fn create_output(&mut self, relation: Relation, output: Box<dyn StepOutput>, restore: bool) -> Result<()> {
        self.check_new_name(&relation, restore)?;
        if !restore {
            let contents = self
                .contents
                .get(&output.relation())
                .ok_or_else(|| EngineError::UndefinedObject(format!("relation {}", output.relation())))?;
            let snapshot = contents.scan(&self.store)?;
            let mut writes = TickWrites::default();
            output.write(&snapshot, self.next_tick_info(), &mut writes).map_err(EngineError::Output)?;
            self.catalog.write().expect("catalog lock").insert(relation.clone(), Some(&mut writes));
            if let Err(e) = self.commit_writes(writes, HashMap::new(), 1) {
                self.catalog.write().expect("catalog lock").remove(&relation.name, &mut TickWrites::default());
                return Err(e);
            }
        } else {
            self.catalog.write().expect("catalog lock").insert(relation.clone(), None);
        }
        self.outputs.insert(relation.id, output);
        Ok(())
    }

    /// Apply a catalog update; what it stores commits as one step (an update that stores
    /// nothing, the configured roles, takes none). A failed commit leaves the catalog as it was.
    fn update_catalog(&mut self, update: CatalogUpdate) -> Result<()> {
        let mut writes = TickWrites::default();
        let before = {
            let mut catalog = self.catalog.write().expect("catalog lock");
            let before = catalog.clone();
            catalog.apply(update, &mut writes);
            before
        };
        if writes.is_empty() {
            return Ok(());
        }
        let committed = self.commit_writes(writes, HashMap::new(), 1);
        if committed.is_err() {
            *self.catalog.write().expect("catalog lock") = before;
        }
        committed
    }

    fn drop(&mut self, names: Vec<String>) -> Result<()> {
        let mut writes = TickWrites::default();
        let mut catalog = self.catalog.write().expect("catalog lock");
        for name in &names {
            let Some(rel) = catalog.remove(name, &mut writes) else {
                return Err(EngineError::UndefinedObject(format!("relation \"{name}\" does not exist")));
            };
            writes.delete_prefix(&self.store, &Contents::prefix(rel.id))?;
            writes.delete(&rows_key(rel.id));
            if rel.kind == RelationKind::MaterializedView {
                let mut p = vec![keyspace::STATE];
                p.extend_from_slice(&rel.id.to_be_bytes());
                writes.delete_prefix(&self.store, &p)?;
            }
            if let Some(output) = self.outputs.remove(&rel.id) {
                output.forget(&self.store, &mut writes)?;
            }
            self.contents.remove(&rel.id);
            self.dataflows.remove(&rel.id);
            if self.watermarks.remove(&rel.id).is_some() {
                writes.delete(&watermark::key(rel.id));
                writes.delete_prefix(&self.store, &crate::sources::runner::dead_letter_prefix(rel.id))?;
            }
        }
        drop(catalog);
        self.mark_timed();
        self.commit_writes(writes, HashMap::new(), 1)
    }

    /// Run a group of commits as one step; if the step fails, retry them one by one so
    /// that only the offending transaction is rejected.
    fn run_commits(&mut self, mut commits: Vec<(Commit, oneshot::Sender<Result<u64>>)>) {
        if commits.is_empty() {
            return;
        }
        let started = Instant::now();
        if !self.watermarks.is_empty() {
            match watermark::filter_late_rows(&self.watermarks, commits.iter_mut().map(|(c, _)| c)) {
                Ok(running) => self.step_watermarks = watermark::current(&running),
                Err(e) => {
                    let message = e.to_string();
                    for (_, tx) in commits {
                        let _ = tx.send(Err(EngineError::Dataflow(DataflowError::Internal(message.clone()))));
                    }
                    return;
                }
            }
        }
        self.run_commits_filtered(commits, started);
        // A failed step leaves the committed watermarks.
        self.publish_watermarks();
    }

    fn publish_watermarks(&mut self) {
        self.step_watermarks = watermark::current(&self.watermarks);
        if let Ok(mut s) = self.stats.write() {
            s.watermarks = self.watermarks.iter().map(|(id, w)| (*id, (w.current(), w.late))).collect();
        }
    }

    fn run_commits_filtered(&mut self, commits: Vec<(Commit, oneshot::Sender<Result<u64>>)>, started: Instant) {
        let reply = |commit: &Commit, reply: oneshot::Sender<Result<u64>>, result: Result<u64>| {
            if let (Err(_), Some(chain)) = (&result, &commit.chain) {
                chain.break_off();
            }
            let _ = reply.send(result);
        };
        match self.try_step(commits.iter().map(|(c, _)| c).collect()) {
            Ok(results) => {
                let source_ts_ms = commits.iter().zip(&results).filter(|(_, r)| r.is_ok()).filter_map(|((c, _), _)| c.source_ts_ms).min();
                if let Some(ts) = source_ts_ms {
                    self.record_freshness(self.tick, ts);
                }
                for ((commit, tx), result) in commits.into_iter().zip(results) {
                    reply(&commit, tx, result);
                }
            }
            Err(e) if commits.len() == 1 => {
                let (mut commit, tx) = commits.into_iter().next().expect("one commit");
                let result = self.reject_or_fail(&mut commit, e);
                reply(&commit, tx, result);
            }
            Err(_) => {
                for (mut commit, tx) in commits {
                    let result = match self.try_step(vec![&commit]).and_then(|mut r| r.pop().unwrap_or(Err(EngineError::Stopped))) {
                        Err(e) => self.reject_or_fail(&mut commit, e),
                        ok => ok,
                    };
                    reply(&commit, tx, result);
                }
            }
        }
        if let Ok(mut s) = self.stats.write() {
            s.tick_latencies_us.push(started.elapsed().as_micros() as u64);
            if s.tick_latencies_us.len() > 100_000 {
                s.tick_latencies_us.drain(..50_000);
            }
        }
    }

    /// A commit that failed alone: a source transaction a view cannot take is recorded as a
    /// dead letter (with the source's offsets, so the source goes on); anything else fails.
    fn reject_or_fail(&mut self, commit: &mut Commit, error: EngineError) -> Result<u64> {
        let (EngineError::View { .. }, Some(on_reject)) = (&error, commit.on_reject.take()) else {
            return Err(error);
        };
        let reason = format!("transaction not applied: {error}");
        tracing::warn!("{reason}");
        let mut writes = TickWrites::default();
        for (k, v) in on_reject(&reason).iter().chain(&commit.extra_writes) {
            writes.put(k, v);
        }
        self.commit_writes(writes, HashMap::new(), 1)?;
        Ok(self.tick)
    }

    /// Time from the upstream commit of a source transaction to the tick that applied it,
    /// for every relation the tick changed.
    fn record_freshness(&self, tick: u64, source_ts_ms: i64) {
        let now_ms = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        let freshness_ms = (now_ms - source_ts_ms).max(0) as u64;
        if let Ok(mut s) = self.stats.write() {
            let changed: Vec<u32> = s.last_change.iter().filter(|(_, t)| **t == tick).map(|(id, _)| *id).collect();
            for id in changed {
                s.freshness_ms.insert(id, freshness_ms);
                let samples = s.freshness_by_relation_ms.entry(id).or_default();
                samples.push(freshness_ms);
                if samples.len() > 20_000 {
                    samples.drain(..10_000);
                }
            }
            s.freshness_samples_ms.push(freshness_ms);
            if s.freshness_samples_ms.len() > 100_000 {
                s.freshness_samples_ms.drain(..50_000);
            }
        }
    }

    /// Apply commits as one step, each at its own time (tick), in order. Commits that
    /// violate table constraints, and later commits of their source, are rejected
    /// individually (the per-commit results); an error in a dataflow fails the whole step.
    fn try_step(&mut self, commits: Vec<&Commit>) -> Result<Vec<Result<u64>>> {
        let mut results = Vec::with_capacity(commits.len());
        let mut overlay = contents::Overlay::new();
        // Each accepted commit's table changes, by time; source commits are resolved in runs.
        let mut table_changes: Vec<(u32, usize, ChangeBatch)> = Vec::new();
        let mut run: Vec<(usize, &Commit)> = Vec::new();
        let mut times = 0usize;
        let mut extra_writes = HashMap::new();
        let first_tick = self.tick + 1;
        for commit in commits {
            if commit.chain.as_ref().is_some_and(CommitChain::broken) {
                results.push(Err(EngineError::SerializationFailure("an earlier transaction of this source was not applied".into())));
                continue;
            }
            let refuse = |e: EngineError| {
                if let Some(chain) = &commit.chain {
                    chain.break_off();
                }
                Err(e)
            };
            if let Some((id, _)) = commit.keyed.iter().find(|(id, _)| !self.contents.contains_key(id)) {
                results.push(refuse(EngineError::UndefinedObject(format!("relation {id} was dropped"))));
                continue;
            }
            if commit.changes.is_empty() {
                // A source transaction: net changes by key never conflict, so it is accepted
                // now and resolved with the run it belongs to.
                results.push(Ok(first_tick + times as u64));
                run.push((times, commit));
                times += 1;
                extra_writes.extend(commit.extra_writes.iter().cloned());
                continue;
            }
            self.apply_keyed_run(std::mem::take(&mut run), &mut overlay, &mut table_changes)?;
            overlay.begin();
            let applied = commit.changes.iter().try_for_each(|(id, changes)| {
                let c = self.contents.get(id).ok_or_else(|| EngineError::UndefinedObject(format!("relation {id} was dropped")))?;
                c.apply(&self.store, &mut overlay, changes)
            });
            match applied.and_then(|()| self.apply_keyed_run(vec![(times, commit)], &mut overlay, &mut table_changes)) {
                Ok(()) => {
                    overlay.keep();
                    let mut by_relation: BTreeMap<u32, Vec<ChangeBatch>> = BTreeMap::new();
                    for (id, c) in &commit.changes {
                        by_relation.entry(*id).or_default().push(c.clone());
                    }
                    for (id, batches) in by_relation {
                        table_changes.push((id, times, ChangeBatch::concat(&batches[0].schema(), &batches)?.consolidate()?));
                    }
                    results.push(Ok(first_tick + times as u64));
                    times += 1;
                    // Later writes of a key (a source's offsets) replace earlier ones.
                    extra_writes.extend(commit.extra_writes.iter().cloned());
                }
                Err(e) => {
                    overlay.rollback();
                    results.push(refuse(e));
                }
            }
        }
        self.apply_keyed_run(run, &mut overlay, &mut table_changes)?;
        if table_changes.is_empty() && extra_writes.is_empty() {
            // Nothing to write: no tick.
            return Ok(results.into_iter().map(|r| r.map(|_| self.tick)).collect());
        }
        let committed_at = self.next_tick_info().committed_at_micros;
        let mut step = StepChanges::new(
            (0..times.max(1)).map(|k| TickInfo { tick: first_tick + k as u64, committed_at_micros: committed_at }).collect(),
        );
        // Per relation, times must arrive in order: runs and client commits were resolved in
        // commit order, but a run's tables come out one after another.
        table_changes.sort_by_key(|(id, time, _)| (*id, *time));
        for (id, time, changes) in table_changes {
            step.push(id, time, changes);
        }
        self.propagate(step, overlay, extra_writes.into_iter().collect())?;
        Ok(results)
    }

    /// Resolve a run of source transactions (time, commit) against the tables, table by table.
    fn apply_keyed_run(
        &self,
        run: Vec<(usize, &Commit)>,
        overlay: &mut contents::Overlay,
        table_changes: &mut Vec<(u32, usize, ChangeBatch)>,
    ) -> Result<()> {
        let mut by_table: BTreeMap<u32, Vec<(usize, &KeyedChanges)>> = BTreeMap::new();
        for (time, commit) in run {
            for (id, keyed) in &commit.keyed {
                by_table.entry(*id).or_default().push((time, keyed));
            }
        }
        for (id, keyed) in by_table {
            let c = self.contents.get(&id).ok_or_else(|| EngineError::UndefinedObject(format!("relation {id} was dropped")))?;
            for (time, changes) in c.apply_keyed_run(&self.store, overlay, &keyed)? {
                table_changes.push((id, time, changes));
            }
        }
        Ok(())
    }

    fn propagate(&mut self, mut step: StepChanges, mut overlay: contents::Overlay, extra_writes: Vec<(Vec<u8>, Vec<u8>)>) -> Result<u64> {
        let mut writes = TickWrites::default();
        let mut stepped = Vec::new();
        let mut failure = None;
        let last = *step.times.last().expect("a step has a time");
        // Where a step's time goes, per view (RUST_LOG=velocity::engine=debug).
        let mut timings: Vec<(u32, bool, std::time::Duration)> = Vec::new();
        for (id, dataflow) in self.dataflows.iter_mut() {
            dataflow.advance_watermarks(&self.step_watermarks);
            let due = dataflow.wakeup_at().is_some_and(|t| t <= last.committed_at_micros);
            if !due && !dataflow.inputs().any(|i| step.changed(i)) {
                continue;
            }
            stepped.push(*id);
            let started = Instant::now();
            let outputs = dataflow.step(&mut step, &mut writes).map_err(EngineError::from).and_then(|outputs| {
                for (_, out) in &outputs {
                    self.contents[id].apply(&self.store, &mut overlay, out)?;
                }
                Ok(outputs)
            });
            timings.push((*id, dataflow.timed, started.elapsed()));
            match outputs {
                Ok(outputs) => {
                    for (time, out) in outputs {
                        step.push(*id, time, out);
                    }
                }
                Err(EngineError::Dataflow(error @ (DataflowError::Arrow(_) | DataflowError::DataFusion(_)))) => {
                    let view = self.catalog.read().expect("catalog lock").iter().find(|r| r.id == *id).map(|r| r.name.clone());
                    failure = Some(EngineError::View { view: view.unwrap_or_else(|| id.to_string()), error });
                    break;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let times = step.times.len() as u64;
        if tracing::enabled!(tracing::Level::DEBUG) {
            timings.sort_by_key(|(_, _, d)| std::cmp::Reverse(*d));
            let catalog = self.catalog.read().expect("catalog lock");
            let slowest: Vec<String> = timings
                .iter()
                .take(5)
                .map(|(id, timed, d)| {
                    let name = catalog.iter().find(|r| r.id == *id).map_or("?", |r| r.name.as_str());
                    format!("{name}{} {:.1} ms", if *timed { " (timed)" } else { "" }, d.as_secs_f64() * 1e3)
                })
                .collect();
            tracing::debug!("step of {times} transactions: views {}", slowest.join(", "));
        }
        let changed = match failure {
            None => step.into_merged().map_err(EngineError::from),
            Some(e) => Err(e),
        };
        // Outputs (sinks' messages) commit with the changes they carry.
        let changed = changed.and_then(|changed| {
            for output in self.outputs.values() {
                if let Some(changes) = changed.get(&output.relation()) {
                    output.write(changes, last, &mut writes).map_err(EngineError::Output)?;
                }
            }
            Ok(changed)
        });
        let committed = changed.and_then(|changed| {
            contents::flush_overlay(overlay, &mut writes);
            for (k, v) in &extra_writes {
                writes.put(k, v);
            }
            self.commit_writes(writes, changed, times)
        });
        if let Err(e) = committed {
            self.restore_dataflows(&stepped);
            return Err(e);
        }
        Ok(self.tick)
    }

    fn next_tick_info(&self) -> TickInfo {
        let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        TickInfo { tick: self.tick + 1, committed_at_micros: now.as_micros() as i64 }
    }

    /// Operators mutate their in-memory state during a tick; a failed tick reloads the
    /// committed state of every dataflow it touched.
    fn restore_dataflows(&mut self, ids: &[u32]) {
        for id in ids {
            if let Some(d) = self.dataflows.get_mut(id)
                && let Err(e) = d.restore(&self.store)
            {
                tracing::error!("restoring dataflow {id} after a failed tick: {e}");
            }
        }
    }

    /// Commit a step of `times` transactions (DDL: one) and publish it.
    fn commit_writes(&mut self, mut writes: TickWrites, changed: HashMap<u32, ChangeBatch>, times: u64) -> Result<()> {
        let tick = self.tick + times;
        writes.put(&meta_key(b"tick"), &tick.to_le_bytes());
        // Row counts persist with the tick, so system tables are right after a restart.
        let counts: Vec<(u32, i64)> = {
            let stats = self.stats.read().expect("stats lock");
            changed
                .iter()
                .map(|(id, c)| (*id, stats.view_rows.get(id).copied().unwrap_or(0) + c.weights.values().iter().sum::<i64>()))
                .collect()
        };
        for (id, n) in &counts {
            writes.put(&rows_key(*id), &n.to_le_bytes());
        }
        // Commit, publish the tick number and notify changefeeds under the gate, so a reader
        // that snapshots and subscribes under the gate sees every tick exactly once.
        let _gate = self.gate.blocking_write();
        self.store.commit(writes)?;
        // The committed watermarks (what the step's applied commits wrote), in memory again,
        // before any client hears of the step.
        for (id, w) in self.watermarks.iter_mut() {
            if let Err(e) = w.reload(*id, &self.store) {
                tracing::error!("reading the watermark of relation {id}: {e}");
            }
        }
        if !self.watermarks.is_empty() {
            self.step_watermarks = watermark::current(&self.watermarks);
            if let Ok(mut s) = self.stats.write() {
                s.watermarks = self.watermarks.iter().map(|(id, w)| (*id, (w.current(), w.late))).collect();
            }
        }
        self.tick = tick;
        let committed_at = SystemTime::now();
        if let Ok(mut s) = self.stats.write() {
            s.tick = tick;
            s.last_tick_at = Some(committed_at);
            for (id, n) in counts {
                s.view_rows.insert(id, n);
                s.last_change.insert(id, tick);
            }
        }
        let _ = self.ticks.send(TickOutput { tick, committed_at, changes: Arc::new(changed) });
        Ok(())
    }
}

/// A delivery task's view of the engine (see [`Engine::output_handle`]): it reads what its
/// output wrote, hears of new steps, checks that its object still exists, and has the engine
/// thread record its progress.
#[derive(Clone)]
pub struct OutputHandle {
    requests: mpsc::UnboundedSender<Request>,
    store: Store,
    ticks: tokio::sync::broadcast::Sender<TickOutput>,
    catalog: Arc<RwLock<Catalog>>,
}

impl OutputHandle {
    /// The storage, for reading.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every committed step from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<TickOutput> {
        self.ticks.subscribe()
    }

    /// Whether catalog object `id` (the output's own) still exists under `name`.
    pub fn exists(&self, id: u32, name: &str) -> bool {
        self.catalog.read().expect("catalog lock").get(name).is_some_and(|r| r.id == id)
    }

    /// Commit `writes` on the engine thread, unless output `id` was dropped meanwhile.
    pub async fn record(&self, id: u32, writes: TickWrites) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.requests.send(Request::RecordOutput { id, writes, reply }).map_err(|_| EngineError::Stopped)?;
        done.await.map_err(|_| EngineError::Stopped)?
    }
}

fn rows_key(id: u32) -> Vec<u8> {
    let mut k = meta_key(b"rows/");
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn meta_key(name: &[u8]) -> Vec<u8> {
    let mut k = vec![keyspace::META];
    k.extend_from_slice(name);
    k
}

/// Cap glibc's malloc arenas at two. By default every thread that meets contention gets an
/// arena of its own (up to 8 per core), and memory freed into one arena serves only the
/// threads using that arena: with sources decoding on tokio threads and the engine freeing
/// those batches on its own thread, that cost about 75 MiB of peak RSS in
/// `velocity bench velocity`. Call it first thing in `main`, before any thread starts.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
