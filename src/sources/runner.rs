//! Running sources: read records, assemble transactions, commit them to the engine.
//!
//! Each source runs as one task. A released transaction is committed as one engine commit
//! together with the source's new position and any dead letters, in one RocksDB batch, so
//! after a crash the source resumes exactly after the last applied transaction: nothing is
//! lost or applied twice.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::txn::{AssemblerOutput, DeadLetter, Position, TableBinding, TxnAssembler, TxnBoundaries};
use super::debezium::Decoder;
use crate::catalog::RelationKind;
use crate::engine::{Commit, Engine, KeyedChanges};
use crate::storage::keyspace;

/// What `CREATE SOURCE ... WITH (...)` declared.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub connector: Connector,
    pub boundaries: TxnBoundaries,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Connector {
    /// JSON-lines files: one file, or every `*.jsonl`/`*.json` file of a directory in name order.
    File { path: PathBuf },
}

impl SourceConfig {
    /// Validate `WITH (...)` options.
    pub fn from_options(options: &[(String, String)]) -> Result<SourceConfig, String> {
        let get = |k: &str| options.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        for (k, _) in options {
            if !["connector", "path", "format", "transactions"].contains(&k.as_str()) {
                return Err(format!("unknown source option \"{k}\""));
            }
        }
        let format = get("format").unwrap_or_else(|| "debezium-json".into());
        if format != "debezium-json" {
            return Err(format!("format \"{format}\" is not supported; use 'debezium-json'"));
        }
        let boundaries = match get("transactions").as_deref() {
            None | Some("txid") => TxnBoundaries::TxId,
            Some("metadata") => TxnBoundaries::Metadata,
            Some(other) => return Err(format!("transactions must be 'txid' or 'metadata', not \"{other}\"")),
        };
        let connector = match get("connector").as_deref() {
            Some("file") => Connector::File {
                path: get("path").ok_or("the file connector needs path = '...'")?.into(),
            },
            Some(other) => return Err(format!("connector \"{other}\" is not available yet (available: file)")),
            None => return Err("missing option connector = '...'".into()),
        };
        Ok(SourceConfig { connector, boundaries })
    }
}

/// Live counters of one source, for SHOW SOURCES and `velocity_catalog.sources`.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    pub connector: String,
    pub state: String,
    pub position: String,
    pub transactions: u64,
    pub events: u64,
    pub errors: u64,
    /// Records seen but not yet applied (waiting for their transaction to complete).
    pub pending: u64,
    /// Input not read yet, in bytes (files).
    pub lag_bytes: u64,
    /// True when everything available has been read and applied.
    pub caught_up: bool,
    /// Passes over the input so far; FLUSH waits for a pass that started after it.
    pub rounds: u64,
}

/// Status of every running source, by name.
pub type SourceRegistry = Arc<RwLock<HashMap<String, SourceStatus>>>;

/// Where a source resumes: stored with every commit it makes.
///
/// Kept per table: a table bound to a source that has already moved on starts from the
/// beginning of the input, while tables that have seen a transaction skip it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Offsets {
    /// Next line to apply, per file and table id.
    files: HashMap<String, HashMap<u32, u64>>,
}

impl Offsets {
    fn next_line(&self, file: &str, table: u32) -> u64 {
        self.files.get(file).and_then(|t| t.get(&table)).copied().unwrap_or(0)
    }

    /// Where to start reading `file` so that every table in `tables` sees what it has not.
    fn read_from(&self, file: &str, tables: &[u32]) -> u64 {
        tables.iter().map(|t| self.next_line(file, *t)).min().unwrap_or(0)
    }

    fn advance(&mut self, file: &str, tables: &[u32], next: u64) {
        let per_table = self.files.entry(file.to_string()).or_default();
        for t in tables {
            let e = per_table.entry(*t).or_insert(0);
            *e = (*e).max(next);
        }
    }
}

fn offsets_key(source_id: u32) -> Vec<u8> {
    let mut k = vec![keyspace::META];
    k.extend_from_slice(b"source-offsets/");
    k.extend_from_slice(&source_id.to_be_bytes());
    k
}

/// Dead letters: `d` + source id + position, value = JSON.
pub fn dead_letter_prefix(source_id: u32) -> Vec<u8> {
    let mut k = vec![keyspace::DEAD_LETTERS];
    k.extend_from_slice(&source_id.to_be_bytes());
    k
}

/// A stored dead letter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDeadLetter {
    pub source: String,
    pub collection: Option<String>,
    pub position: String,
    pub raw: String,
    pub reason: String,
    pub received_at_ms: i64,
}

/// Start the task that runs source `name` until the source is dropped.
pub fn spawn(engine: Engine, registry: SourceRegistry, id: u32, name: String, config: SourceConfig) {
    tokio::spawn(async move {
        let mut runner = Runner { engine, registry, id, name: name.clone(), config, offsets: Offsets::default() };
        if let Err(e) = runner.run().await {
            tracing::error!("source {name} stopped: {e}");
            if let Some(s) = runner.registry.write().expect("registry lock").get_mut(&name) {
                s.state = format!("error: {e}");
            }
        }
    });
}

struct Runner {
    engine: Engine,
    registry: SourceRegistry,
    id: u32,
    name: String,
    config: SourceConfig,
    offsets: Offsets,
}

/// Tables bound to a source: binding for the assembler, relation id for the engine.
fn bound_tables(engine: &Engine, source: &str) -> Vec<(TableBinding, u32)> {
    let catalog = engine.catalog.read().expect("catalog lock");
    catalog
        .iter()
        .filter(|r| r.kind == RelationKind::Table)
        .filter_map(|r| {
            let b = r.binding.as_ref()?;
            (b.source == source).then(|| {
                (TableBinding { collection: b.upstream.clone(), schema: r.schema.clone(), primary_key: r.primary_key.clone() }, r.id)
            })
        })
        .collect()
}

/// After this long without new input, a transaction still open at the end of the input
/// is taken as complete (a file writer that stopped mid-stream).
const IDLE_FLUSH: Duration = Duration::from_secs(1);

impl Runner {
    fn files(&self) -> Vec<PathBuf> {
        let Connector::File { path } = &self.config.connector;
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            files.retain(|p| p.extension().is_some_and(|e| e == "jsonl" || e == "json"));
            files.sort();
            files
        } else {
            vec![path.clone()]
        }
    }

    fn status(&self, f: impl FnOnce(&mut SourceStatus)) {
        let mut registry = self.registry.write().expect("registry lock");
        let s = registry.entry(self.name.clone()).or_default();
        s.connector = "file".into();
        f(s);
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        if let Some(v) = self.engine.store.get(&offsets_key(self.id))? {
            self.offsets = serde_json::from_slice(&v)?;
        }
        self.status(|s| s.state = "running".into());
        let mut decoder = Decoder::new();
        let mut bindings: Vec<(TableBinding, u32)> = Vec::new();
        let mut assembler: Option<TxnAssembler> = None;
        // Lines read but not yet applied, per file: reading restarts from the stored offsets
        // whenever the assembler is rebuilt.
        let mut read_to: HashMap<String, u64> = HashMap::new();
        let mut last_input = Instant::now();
        loop {
            if !self.engine.catalog.read().expect("catalog lock").get(&self.name).is_some_and(|r| r.kind == RelationKind::Source) {
                self.registry.write().expect("registry lock").remove(&self.name);
                return Ok(());
            }
            let current = bound_tables(&self.engine, &self.name);
            let ids = |b: &[(TableBinding, u32)]| b.iter().map(|(_, id)| *id).collect::<Vec<_>>();
            if assembler.is_none() || ids(&current) != ids(&bindings) {
                bindings = current;
                assembler = Some(TxnAssembler::new(bindings.iter().map(|(b, _)| b.clone()).collect(), self.config.boundaries)?);
                let tables = ids(&bindings);
                read_to = self.files().iter().map(|f| {
                    let key = f.display().to_string();
                    let from = self.offsets.read_from(&key, &tables);
                    (key, from)
                }).collect();
            }
            let asm = assembler.as_mut().expect("assembler built above");
            let mut outputs = Vec::new();
            let mut lag = 0u64;
            let mut read_any = false;
            if !bindings.is_empty() {
                for file in self.files() {
                    let key = file.display().to_string();
                    let Ok(text) = tokio::fs::read(&file).await else { continue };
                    let start = read_to.get(&key).copied().unwrap_or(0);
                    let mut line_no = 0u64;
                    for line in text.split_inclusive(|b| *b == b'\n') {
                        if !line.ends_with(b"\n") {
                            // A line still being written: read it next time.
                            lag += line.len() as u64;
                            break;
                        }
                        if line_no >= start {
                            let raw = line.strip_suffix(b"\n").unwrap_or(line);
                            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                            if !raw.iter().all(u8::is_ascii_whitespace) {
                                let record = decoder.decode(Some(raw));
                                outputs.extend(asm.push(Position::File { path: key.clone(), line: line_no }, raw, record));
                                read_any = true;
                            }
                        }
                        line_no += 1;
                    }
                    read_to.insert(key, line_no.max(start));
                }
            }
            if read_any {
                last_input = Instant::now();
            } else if asm.pending() > 0 && last_input.elapsed() >= IDLE_FLUSH {
                outputs.extend(asm.flush());
            }
            let pending = asm.pending() as u64;
            self.apply(outputs, &bindings, &read_to, pending == 0).await?;
            self.status(|s| {
                s.pending = pending;
                s.lag_bytes = lag;
                s.caught_up = !read_any && pending == 0;
                s.rounds += 1;
            });
            tokio::time::sleep(Duration::from_millis(if read_any { 0 } else { 50 })).await;
        }
    }

    /// Commit released transactions and dead letters, each with the source's new offsets.
    async fn apply(
        &mut self,
        outputs: Vec<AssemblerOutput>,
        bindings: &[(TableBinding, u32)],
        read_to: &HashMap<String, u64>,
        nothing_pending: bool,
    ) -> anyhow::Result<()> {
        let table_id: HashMap<&str, u32> = bindings.iter().map(|(b, id)| (b.collection.as_str(), *id)).collect();
        let mut dead: Vec<DeadLetter> = Vec::new();
        for output in outputs {
            match output {
                AssemblerOutput::DeadLetter(d) => dead.push(d),
                AssemblerOutput::CompleteTxn(txn) => {
                    let Position::File { path, line } = &txn.last_position else { continue };
                    // Tables that already applied this transaction (bound earlier) skip it.
                    let keyed = txn
                        .tables
                        .into_iter()
                        .filter_map(|(collection, net)| {
                            let id = *table_id.get(collection.as_str())?;
                            (self.offsets.next_line(path, id) <= *line)
                                .then_some((id, KeyedChanges { upserts: net.upserts, deletes: net.deletes }))
                        })
                        .collect();
                    // Resume after this transaction's last record.
                    let tables: Vec<u32> = bindings.iter().map(|(_, id)| *id).collect();
                    self.offsets.advance(path, &tables, line + 1);
                    let events = txn.events as u64;
                    // Only this transaction's end moves the offsets here, so a crash between two
                    // commits resumes right after the last one applied.
                    let commit = Commit { keyed, extra_writes: self.extra_writes(std::mem::take(&mut dead))?, ..Default::default() };
                    self.engine.commit(commit).await?;
                    let position = txn.last_position.to_string();
                    self.status(|s| {
                        s.transactions += 1;
                        s.events += events;
                        s.position = position;
                    });
                }
            }
        }
        let tables: Vec<u32> = bindings.iter().map(|(_, id)| *id).collect();
        if !dead.is_empty() || (nothing_pending && self.offsets_changed(read_to, &tables)) {
            if nothing_pending {
                // Everything read has been applied or dead-lettered: resume after all of it.
                for (file, next) in read_to {
                    self.offsets.advance(file, &tables, *next);
                }
            }
            let writes = self.extra_writes(dead)?;
            self.engine.commit(Commit { extra_writes: writes, ..Default::default() }).await?;
        }
        Ok(())
    }

    fn offsets_changed(&self, read_to: &HashMap<String, u64>, tables: &[u32]) -> bool {
        read_to.iter().any(|(k, v)| tables.iter().any(|t| self.offsets.next_line(k, *t) < *v))
    }

    /// Dead letters plus the source's offsets, as storage writes for the next commit.
    fn extra_writes(&mut self, dead: Vec<DeadLetter>) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut writes = Vec::with_capacity(dead.len() + 1);
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        let errors = dead.len() as u64;
        for d in dead {
            let position = d.position.to_string();
            let mut key = dead_letter_prefix(self.id);
            key.extend_from_slice(position.as_bytes());
            let stored = StoredDeadLetter {
                source: self.name.clone(),
                collection: d.collection,
                position,
                raw: String::from_utf8_lossy(&d.raw).into_owned(),
                reason: d.reason,
                received_at_ms: now_ms,
            };
            writes.push((key, serde_json::to_vec(&stored)?));
        }
        if errors > 0 {
            self.status(|s| s.errors += errors);
        }
        writes.push((offsets_key(self.id), serde_json::to_vec(&self.offsets)?));
        Ok(writes)
    }
}

/// Read every dead letter of every source.
pub fn dead_letters(engine: &Engine) -> anyhow::Result<Vec<StoredDeadLetter>> {
    let mut out = Vec::new();
    for (_, v) in engine.store.scan_prefix(&[keyspace::DEAD_LETTERS])? {
        out.push(serde_json::from_slice(&v)?);
    }
    Ok(out)
}
