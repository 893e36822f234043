//! The `postgres-cdc` connector: Postgres logical replication (pgoutput) as Debezium JSON.
//!
//! ```sql
//! CREATE SOURCE tms WITH (connector = 'postgres-cdc',
//!     connection = 'host=127.0.0.1 port=5432 user=tms dbname=tms',
//!     publication = 'velocity', slot = 'velocity');
//! ```
//!
//! What it promises:
//!
//! * **Snapshot consistent with the slot.** Without a resume position the connector creates the
//!   replication slot with `CREATE_REPLICATION_SLOT ... LOGICAL pgoutput (SNAPSHOT 'export')` on
//!   a replication session (pgwire-replication's gated session), imports the exported snapshot
//!   into a `REPEATABLE READ` transaction on a plain session, and only then starts streaming.
//!   So the snapshot holds exactly the transactions that committed before the slot's
//!   consistent point, and the stream exactly those after it. Snapshot rows are op `r` records
//!   (`source.snapshot` `true`, the very last one `last`).
//! * **One transaction in, one transaction out.** Every change carries a `transaction` block
//!   (`id` = `xid:commit_lsn`, `total_order`, `data_collection_order`) and each pgoutput Commit
//!   becomes a Debezium END marker with per-table event counts, so the source runs in the
//!   assembler's `Metadata` mode and a Postgres transaction is released whole at its commit.
//! * **Exact resume.** Every record of a transaction has `Position::Postgres { lsn }` with the
//!   transaction's commit LSN (the start of its commit record). Postgres sends, from a
//!   confirmed position `C`, exactly the transactions whose commit LSN is `>= C`, so "the next
//!   offset not yet applied" is directly the LSN to start from and to confirm: [`open`] starts
//!   at `resume["wal"]` (and drops anything older the server still sends), [`committed`]
//!   confirms it, never more. Snapshot rows have positions just below the consistent point
//!   (`cp - 2`, the last one `cp - 1`), so once the snapshot is applied the resume position is
//!   the consistent point itself; a resume position of `cp - 1` means a snapshot interrupted
//!   between two batches, which is taken again from a new slot.
//!
//! Values arrive as pgoutput text and are converted per column type OID into the JSON the
//! Debezium decoder reads (see [`text_to_json`]).
//!
//! # A table bound to a running source
//!
//! When [`open`] is called again with an upstream it has not read before, the table is added to
//! the publication and snapshotted on its own, consistently: a temporary slot exports a snapshot
//! at consistent point `cp2`; the table's streamed changes of transactions committed before
//! `cp2` are dropped (the snapshot has them), its rows are emitted as op `r` records at the point
//! of the stream where commits reach `cp2`, and its later changes stream normally.
//!
//! The runner reopens with the oldest resume position of any bound table, which for the new
//! table is none; the connector then replays from the slot's confirmed position (the runner
//! applies to each table only what it has not applied) and snapshots the new table as above.
//! A snapshot that was still being read when [`open`] is called again is taken again.
//!
//! Limitations: this needs the connector instance that ran before the new binding (after a
//! restart, a resume position without `wal` means a new slot and a snapshot of every table);
//! a crash in the middle of a later-bound table's snapshot is not detected; rows deleted
//! upstream between an interrupted snapshot and its retake stay in Velocity. Unchanged TOASTed values
//! of an UPDATE (pgoutput sends no value for them) are taken from the old tuple when the table
//! has `REPLICA IDENTITY FULL` and are otherwise missing from `after` (the column becomes
//! NULL); array columns arrive as their Postgres text. TRUNCATE becomes an op `t` record, which
//! the decoder dead-letters.
//!
//! [`open`]: Connector::open
//! [`committed`]: Connector::committed

use std::collections::{HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use serde_json::{Map, Value, json};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::connector::{Connector, Lag, LagUnit, SourceRecord};
use super::txn::{Position, Stream, TxnBoundaries};
use super::{Result, SourceError};
use crate::sql::{OptionError, WithOptions};

/// The resume stream of a Postgres source: the replication slot's WAL.
pub const WAL_STREAM: &str = "wal";

/// Rows fetched from a snapshot cursor per round trip.
const SNAPSHOT_FETCH: usize = 2048;

/// Records handed out by one `poll` at most.
const MAX_POLL_RECORDS: usize = 4096;

/// Session settings that make values render the same on every session: UTC timestamps with
/// ISO dates, Postgres-style intervals, floats that round-trip.
const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres -c extra_float_digits=3";

/// Milliseconds between the Unix epoch and the Postgres epoch (2000-01-01).
const PG_EPOCH_MS: i64 = 946_684_800_000;

/// `CREATE SOURCE ... WITH (connector = 'postgres-cdc', ...)` options.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresCdcConfig {
    /// libpq `key=value` connection string.
    pub connection: String,
    pub publication: String,
    pub slot: String,
}

impl PostgresCdcConfig {
    /// The connector's own `WITH (...)` options.
    pub const OPTIONS: &'static [&'static str] = &["connection", "publication", "slot"];

    /// Read and check the options (`connection` is required).
    pub fn from_options(options: impl Into<WithOptions>) -> Result<PostgresCdcConfig, OptionError> {
        let options = options.into();
        let connection = options.require("connection", "the postgres-cdc connector needs connection = '...'")?;
        tokio_postgres::Config::from_str(connection).map_err(|e| OptionError::invalid("connection", format!("connection: {e}")))?;
        let publication = options.get("publication").unwrap_or("velocity");
        let slot = options.get("slot").unwrap_or("velocity");
        if !is_plain_name(slot) {
            return Err(OptionError::invalid("slot", format!("slot \"{slot}\": use lower-case letters, digits and underscores")));
        }
        if publication.is_empty() || publication.contains('\'') {
            return Err(OptionError::invalid("publication", format!("publication \"{publication}\" is not a valid name")));
        }
        Ok(PostgresCdcConfig { connection: connection.into(), publication: publication.into(), slot: slot.into() })
    }
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A table of a pgoutput Relation message.
#[derive(Debug, Clone)]
struct Relation {
    schema: String,
    table: String,
    /// Column names and type OIDs.
    columns: Vec<(String, u32)>,
}

/// The transaction being streamed.
struct OpenTxn {
    id: String,
    xid: u32,
    commit_lsn: u64,
    ts_ms: i64,
    /// Already applied (before the resume position): its records are dropped.
    skip: bool,
    total: u64,
    per_table: Vec<(String, u64)>,
}

/// A snapshot being read: an imported exported snapshot in a REPEATABLE READ transaction.
struct Snapshot {
    client: Client,
    /// Tables still to read, `(schema, table)`; the first one has an open cursor if `open`.
    tables: VecDeque<(String, String)>,
    /// Every table of the snapshot, as `schema.table`.
    all_tables: Vec<String>,
    cursor_open: bool,
    /// Column type OIDs of the table being read.
    columns: Vec<(String, u32)>,
    /// The consistent point: rows are emitted once the stream has delivered every commit below it.
    consistent_point: u64,
    /// The row read last, held back so that the very last one can be marked `last`.
    held: Option<(String, String, Map<String, Value>)>,
}

/// Reads a Postgres database's changes through a logical replication slot.
pub struct PostgresCdc {
    config: PostgresCdcConfig,
    pg: tokio_postgres::Config,
    database: String,
    /// Bound upstreams (`schema.table`) of the last `open`.
    upstreams: HashSet<String>,
    repl: Option<ReplicationClient>,
    relations: HashMap<u32, Relation>,
    txn: Option<OpenTxn>,
    /// Transactions with a commit LSN below this were applied already.
    resume_from: u64,
    /// Snapshots to emit, in consistent-point order.
    snapshots: VecDeque<Snapshot>,
    /// Changes of a table (collection) in transactions committed before an LSN are in a
    /// snapshot taken at that LSN.
    covered: HashMap<String, u64>,
    /// An event received but not handled yet (a Begin waiting behind a snapshot).
    held_event: Option<ReplicationEvent>,
    /// Highest WAL position the server reported, and the commit LSN of the last transaction.
    server_wal_end: u64,
    /// Highest keepalive position: the server has sent every commit below it.
    sent_up_to: u64,
    last_commit: u64,
    /// Highest position confirmed to the slot.
    confirmed: u64,
}

impl PostgresCdc {
    /// A connector for `config` (checked by [`PostgresCdcConfig::from_options`]; a connection
    /// string that does not parse fails at `open`).
    pub fn new(config: PostgresCdcConfig) -> PostgresCdc {
        let pg = tokio_postgres::Config::from_str(&config.connection).unwrap_or_else(|_| tokio_postgres::Config::new());
        let database = pg.get_dbname().or(pg.get_user()).unwrap_or("postgres").to_string();
        PostgresCdc {
            config,
            pg,
            database,
            upstreams: HashSet::new(),
            repl: None,
            relations: HashMap::new(),
            txn: None,
            resume_from: 0,
            snapshots: VecDeque::new(),
            covered: HashMap::new(),
            held_event: None,
            server_wal_end: 0,
            sent_up_to: 0,
            last_commit: 0,
            confirmed: 0,
        }
    }

    /// A plain session with the connector's session settings.
    async fn connect_plain(&self) -> Result<Client> {
        let mut cfg = self.pg.clone();
        cfg.options(SESSION_OPTIONS);
        cfg.application_name("velocity");
        let (client, connection) = cfg
            .connect(NoTls)
            .await
            .map_err(|e| SourceError::postgres(format!("cannot connect to Postgres ({})", self.config.connection), e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("postgres-cdc session ended: {e}");
            }
        });
        Ok(client)
    }

    fn replication_config(&self, slot: &str) -> Result<ReplicationConfig> {
        let host = match self.pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.pg.get_ports().first().copied().unwrap_or(5432);
        let user = self.pg.get_user().unwrap_or("postgres");
        let password = self.pg.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
        Ok(ReplicationConfig::new(host, user, password, self.database.clone(), slot, self.config.publication.clone())
            .with_port(port)
            .with_tls(TlsConfig::disabled())
            .with_options(SESSION_OPTIONS)
            .with_application_name(format!("velocity-{slot}"))
            .with_status_interval(Duration::from_secs(1))
            .with_wakeup_interval(Duration::from_secs(5)))
    }

    /// Make the publication include every upstream: create it, or add missing tables.
    async fn ensure_publication(&self, client: &Client, upstreams: &[String]) -> Result<()> {
        let publication = &self.config.publication;
        let row = client
            .query_opt("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[publication])
            .await
            .map_err(|e| SourceError::postgres("reading pg_publication", e))?;
        let tables: Vec<String> = upstreams.iter().map(|u| qualified(u)).collect::<Result<_>>()?;
        let Some(row) = row else {
            let sql = format!("CREATE PUBLICATION {} FOR TABLE {}", quote_ident(publication), tables.join(", "));
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| SourceError::postgres(format!("publication \"{publication}\" is missing and cannot be created"), e))?;
            return Ok(());
        };
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        let present: HashSet<String> = client
            .query("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1", &[publication])
            .await
            .map_err(|e| SourceError::postgres("reading pg_publication_tables", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<&String> = upstreams.iter().filter(|u| !present.contains(*u)).collect();
        for upstream in missing {
            let sql = format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(publication), qualified(upstream)?);
            client.batch_execute(&sql).await.map_err(|e| {
                SourceError::postgres(format!("publication \"{publication}\" does not include {upstream}, and it cannot be added"), e)
            })?;
        }
        Ok(())
    }

    /// Create a slot (temporary or not) with an exported snapshot, import the snapshot into a
    /// new REPEATABLE READ transaction, and return the gated session, the consistent point and
    /// the snapshot reader for `tables`.
    async fn export_snapshot(&self, slot: &str, temporary: bool, tables: Vec<(String, String)>) -> Result<(ReplicationClient, Snapshot)> {
        let mut repl = ReplicationClient::connect_gated(self.replication_config(slot)?)
            .await
            .map_err(|e| SourceError::replication("connecting for replication", e))?;
        let temp = if temporary { " TEMPORARY" } else { "" };
        let rows = repl
            .simple_query(&format!("CREATE_REPLICATION_SLOT {slot}{temp} LOGICAL pgoutput (SNAPSHOT 'export')"))
            .await
            .map_err(|e| SourceError::replication(format!("creating replication slot \"{slot}\""), e))?;
        let text = |i: usize| -> Result<String> {
            let cell = rows.first().and_then(|r| r.get(i)).and_then(|c| c.as_ref());
            let cell = cell.ok_or_else(|| SourceError::Upstream(format!("CREATE_REPLICATION_SLOT: no column {i}")))?;
            Ok(String::from_utf8_lossy(cell).into_owned())
        };
        let consistent_point = Lsn::parse(&text(1)?).map_err(|e| SourceError::Upstream(format!("consistent point: {e}")))?.as_u64();
        let snapshot_name = text(2)?;
        let client = self.connect_plain().await?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT '{}'; SELECT 1",
                snapshot_name.replace('\'', "''")
            ))
            .await
            .map_err(|e| SourceError::postgres("importing the slot's snapshot", e))?;
        let snapshot = Snapshot {
            client,
            all_tables: tables.iter().map(|(s, t)| format!("{s}.{t}")).collect(),
            tables: tables.into(),
            cursor_open: false,
            columns: Vec::new(),
            consistent_point,
            held: None,
        };
        Ok((repl, snapshot))
    }

    /// The slot's database and confirmed position, if it exists.
    async fn slot_state(&self, client: &Client) -> Result<Option<(String, u64)>> {
        let row = client
            .query_opt("SELECT database, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&self.config.slot])
            .await
            .map_err(|e| SourceError::postgres("reading pg_replication_slots", e))?;
        Ok(row.map(|r| {
            let db: Option<String> = r.get(0);
            let lsn: Option<String> = r.get(1);
            (db.unwrap_or_default(), lsn.and_then(|l| Lsn::parse(&l).ok()).map_or(0, |l| l.as_u64()))
        }))
    }

    async fn drop_slot(&self) -> Result<()> {
        let mut repl = ReplicationClient::connect_gated(self.replication_config(&self.config.slot)?)
            .await
            .map_err(|e| SourceError::replication("connecting for replication", e))?;
        repl.simple_query(&format!("DROP_REPLICATION_SLOT {} WAIT", self.config.slot))
            .await
            .map_err(|e| SourceError::replication(format!("dropping replication slot \"{}\"", self.config.slot), e))?;
        Ok(())
    }

    /// Start streaming from the slot at `start` (0: its confirmed position), retrying while a
    /// previous session (a process killed a moment ago) still holds the slot.
    async fn start_streaming(&self, start: u64) -> Result<ReplicationClient> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut cfg = self.replication_config(&self.config.slot)?;
            if start > 0 {
                cfg = cfg.with_start_lsn(Lsn::from_u64(start)).with_ack_lsn(Lsn::from_u64(start));
            }
            let mut client =
                ReplicationClient::connect(cfg).await.map_err(|e| SourceError::replication("connecting for replication", e))?;
            match client.wait_started().await {
                Ok(()) => return Ok(client),
                Err(e) if e.to_string().contains("is active") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(SourceError::replication(format!("starting replication from slot \"{}\"", self.config.slot), e)),
            }
        }
    }

    /// Records of the snapshot at the head of the queue, up to `limit`; pops it when done.
    async fn read_snapshot(&mut self, limit: usize) -> Result<Vec<SourceRecord>> {
        let database = self.database.clone();
        let Some(snap) = self.snapshots.front_mut() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        while out.len() < limit {
            let Some((schema, table)) = snap.tables.front().cloned() else {
                break;
            };
            if !snap.cursor_open {
                snap.columns = table_columns(&snap.client, &schema, &table).await?;
                let list: Vec<String> = snap.columns.iter().map(|(c, _)| quote_ident(c)).collect();
                let sql = format!(
                    "DECLARE velocity_snapshot NO SCROLL CURSOR FOR SELECT {} FROM ONLY {}.{}",
                    if list.is_empty() { "NULL".into() } else { list.join(", ") },
                    quote_ident(&schema),
                    quote_ident(&table)
                );
                snap.client.batch_execute(&sql).await.map_err(|e| SourceError::postgres(format!("snapshot of {schema}.{table}"), e))?;
                snap.cursor_open = true;
            }
            let messages = snap
                .client
                .simple_query(&format!("FETCH {SNAPSHOT_FETCH} FROM velocity_snapshot"))
                .await
                .map_err(|e| SourceError::postgres(format!("snapshot of {schema}.{table}"), e))?;
            let mut fetched = 0;
            for message in messages {
                if let SimpleQueryMessage::Row(row) = message {
                    fetched += 1;
                    let mut image = Map::new();
                    for (i, (name, oid)) in snap.columns.iter().enumerate() {
                        image.insert(name.clone(), row.get(i).map_or(Value::Null, |t| text_to_json(*oid, t)));
                    }
                    if let Some((s, t, held)) = snap.held.replace((schema.clone(), table.clone(), image)) {
                        out.push(snapshot_record(&database, &s, &t, held, snap.consistent_point, "true"));
                    }
                }
            }
            if fetched < SNAPSHOT_FETCH {
                snap.client
                    .batch_execute("CLOSE velocity_snapshot")
                    .await
                    .map_err(|e| SourceError::postgres(format!("snapshot of {schema}.{table}"), e))?;
                snap.cursor_open = false;
                snap.tables.pop_front();
            }
        }
        if snap.tables.is_empty() {
            if let Some((s, t, held)) = snap.held.take() {
                out.push(snapshot_record(&database, &s, &t, held, snap.consistent_point, "last"));
            }
            let _ = snap.client.batch_execute("COMMIT").await;
            self.snapshots.pop_front();
        }
        Ok(out)
    }

    /// Turn one replication event into records; `false` if the event must wait (it was held).
    fn handle_event(&mut self, event: ReplicationEvent, out: &mut Vec<SourceRecord>) -> Result<bool> {
        match event {
            ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                let commit_lsn = final_lsn.as_u64();
                if self.snapshots.front().is_some_and(|s| s.consistent_point <= commit_lsn) {
                    self.held_event = Some(ReplicationEvent::Begin { final_lsn, xid, commit_time_micros });
                    return Ok(false);
                }
                self.txn = Some(OpenTxn {
                    id: format!("{xid}:{commit_lsn}"),
                    xid,
                    commit_lsn,
                    ts_ms: commit_time_micros.div_euclid(1000) + PG_EPOCH_MS,
                    skip: commit_lsn < self.resume_from,
                    total: 0,
                    per_table: Vec::new(),
                });
            }
            ReplicationEvent::XLogData { wal_end, data, .. } => {
                self.server_wal_end = self.server_wal_end.max(wal_end.as_u64());
                self.handle_pgoutput(&data, out)?;
            }
            ReplicationEvent::Commit { .. } => {
                if let Some(txn) = self.txn.take() {
                    self.last_commit = txn.commit_lsn;
                    if !txn.skip && txn.total > 0 {
                        let collections: Vec<Value> =
                            txn.per_table.iter().map(|(c, n)| json!({"data_collection": c, "event_count": n})).collect();
                        let end = json!({
                            "status": "END",
                            "id": txn.id,
                            "event_count": txn.total,
                            "data_collections": collections,
                            "ts_ms": txn.ts_ms,
                        });
                        out.push(record(txn.commit_lsn, &end));
                    }
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                self.server_wal_end = self.server_wal_end.max(wal_end.as_u64());
                if self.txn.is_none() {
                    self.sent_up_to = self.sent_up_to.max(wal_end.as_u64());
                }
            }
            ReplicationEvent::Message { .. } => {}
            ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(true)
    }

    /// Decode one pgoutput message (Begin, Commit and Message come as events of their own).
    fn handle_pgoutput(&mut self, data: &[u8], out: &mut Vec<SourceRecord>) -> Result<()> {
        let mut r = Reader(data);
        let tag = r.u8()?;
        match tag {
            b'R' => {
                let id = r.u32()?;
                let schema = r.cstr()?;
                let table = r.cstr()?;
                let _identity = r.u8()?;
                let n = r.u16()?;
                let mut columns = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let _flags = r.u8()?;
                    let name = r.cstr()?;
                    let oid = r.u32()?;
                    let _typmod = r.u32()?;
                    columns.push((name, oid));
                }
                self.relations.insert(id, Relation { schema, table, columns });
            }
            b'I' | b'U' | b'D' => {
                let id = r.u32()?;
                let relation = self.relations.get(&id).ok_or_else(|| SourceError::Pgoutput(format!("change of unknown relation {id}")))?;
                let mut old = None;
                let mut new = None;
                while !r.0.is_empty() {
                    match r.u8()? {
                        b'K' | b'O' => old = Some(r.tuple(relation, None)?),
                        b'N' => new = Some(r.tuple(relation, old.as_ref())?),
                        other => return Err(SourceError::Pgoutput(format!("unexpected tuple kind {:?}", other as char))),
                    }
                }
                let op = match tag {
                    b'I' => "c",
                    b'U' => "u",
                    _ => "d",
                };
                let (schema, table) = (relation.schema.clone(), relation.table.clone());
                let before = old.map_or(Value::Null, Value::Object);
                let after = new.map_or(Value::Null, Value::Object);
                self.change(&schema, &table, op, before, after, out);
            }
            b'T' => {
                let n = r.u32()?;
                let _options = r.u8()?;
                for _ in 0..n {
                    let id = r.u32()?;
                    if let Some(rel) = self.relations.get(&id) {
                        let (schema, table) = (rel.schema.clone(), rel.table.clone());
                        self.change(&schema, &table, "t", Value::Null, Value::Null, out);
                    }
                }
            }
            // Type, Origin, logical messages: nothing to apply.
            _ => {}
        }
        Ok(())
    }

    /// Emit a change of `schema.table` in the open transaction, unless it is not bound,
    /// already applied, or covered by a snapshot.
    fn change(&mut self, schema: &str, table: &str, op: &str, before: Value, after: Value, out: &mut Vec<SourceRecord>) {
        let collection = format!("{schema}.{table}");
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        if txn.skip || !self.upstreams.contains(&collection) {
            return;
        }
        if self.covered.get(&collection).is_some_and(|&cp| txn.commit_lsn < cp) {
            return;
        }
        txn.total += 1;
        let in_table = match txn.per_table.iter_mut().find(|(c, _)| *c == collection) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                txn.per_table.push((collection, 1));
                1
            }
        };
        let payload = json!({
            "before": before,
            "after": after,
            "source": {
                "connector": "postgresql",
                "db": self.database,
                "schema": schema,
                "table": table,
                "txId": txn.xid,
                "lsn": txn.commit_lsn,
                "ts_ms": txn.ts_ms,
                "snapshot": "false",
            },
            "op": op,
            "ts_ms": txn.ts_ms,
            "transaction": {"id": txn.id, "total_order": txn.total, "data_collection_order": in_table},
        });
        out.push(record(txn.commit_lsn, &payload));
    }
}

#[async_trait::async_trait]
impl Connector for PostgresCdc {
    fn kind(&self) -> &'static str {
        "postgres-cdc"
    }

    fn boundaries(&self) -> Option<TxnBoundaries> {
        Some(TxnBoundaries::Metadata)
    }

    async fn open(&mut self, upstreams: &[String], resume: &HashMap<Stream, u64>) -> Result<()> {
        if let Some(mut old) = self.repl.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), old.shutdown()).await;
        }
        self.txn = None;
        self.held_event = None;
        if upstreams.is_empty() {
            // Nothing bound (yet): leave the slot and publication as they are.
            self.upstreams.clear();
            self.snapshots.clear();
            return Ok(());
        }
        self.sent_up_to = 0;
        self.relations.clear();
        let client = self.connect_plain().await?;
        self.ensure_publication(&client, upstreams).await?;
        let slot = self.slot_state(&client).await?;
        if let Some((db, _)) = &slot
            && db != &self.database
        {
            return Err(SourceError::Upstream(format!(
                "replication slot \"{}\" belongs to database \"{db}\", not \"{}\"",
                self.config.slot, self.database
            )));
        }
        tokio_postgres::Config::from_str(&self.config.connection).map_err(|e| SourceError::postgres("connection", e))?;
        let mut resume_from = resume.get(WAL_STREAM).copied();
        // Tables bound to a running source: the runner resumes at the oldest position of any
        // bound table, which for a new table is "from the beginning". Replay from the slot
        // (the runner applies to each table only what it has not seen) and snapshot the new
        // tables on their own.
        // (A snapshot still being read was partly lost with the runner's assembler: start over.)
        let bound_later = !self.upstreams.is_empty() && self.snapshots.is_empty() && upstreams.iter().any(|u| !self.upstreams.contains(u));
        if resume_from.is_none()
            && bound_later
            && let Some((_, confirmed)) = &slot
        {
            resume_from = Some(*confirmed);
        }
        // A resume position right below the slot's start: a snapshot interrupted between batches.
        if let (Some(r), Some((_, confirmed))) = (resume_from, &slot)
            && r + 1 == *confirmed
        {
            tracing::warn!("source snapshot was interrupted; taking it again from a new slot");
            resume_from = None;
        }
        let split = |u: &String| -> Result<(String, String)> {
            let (s, t) = u.split_once('.').ok_or_else(|| SourceError::Upstream(format!("upstream \"{u}\" must be schema.table")))?;
            Ok((s.to_string(), t.to_string()))
        };
        match resume_from {
            None => {
                // Start over: a new slot and a snapshot of every bound table, consistent with it.
                self.snapshots.clear();
                self.covered.clear();
                if slot.is_some() {
                    self.drop_slot().await?;
                }
                let tables = upstreams.iter().map(split).collect::<Result<Vec<_>>>()?;
                let (mut repl, snapshot) = self.export_snapshot(&self.config.slot.clone(), false, tables).await?;
                self.resume_from = snapshot.consistent_point;
                self.snapshots.push_back(snapshot);
                repl.start().await.map_err(|e| SourceError::replication("starting replication", e))?;
                repl.wait_started().await.map_err(|e| SourceError::replication("starting replication", e))?;
                self.repl = Some(repl);
            }
            Some(r) => {
                if slot.is_none() {
                    return Err(SourceError::Upstream(format!(
                        "replication slot \"{}\" is missing, but the source has applied changes up to {}: \
                         drop and recreate the source to take a new snapshot",
                        self.config.slot,
                        Position::Postgres { lsn: r }
                    )));
                }
                // Tables bound since the last open of this instance: snapshot them on their own.
                let mut new: Vec<String> = if self.upstreams.is_empty() {
                    Vec::new()
                } else {
                    upstreams.iter().filter(|u| !self.upstreams.contains(*u)).cloned().collect()
                };
                // A snapshot still being read lost its records with the runner's assembler:
                // take its tables again, at a new point.
                for snapshot in self.snapshots.drain(..) {
                    let _ = snapshot.client.batch_execute("ROLLBACK").await;
                    for table in snapshot.all_tables {
                        if upstreams.contains(&table) && !new.contains(&table) {
                            new.push(table);
                        }
                    }
                }
                if !new.is_empty() {
                    let tables = new.iter().map(split).collect::<Result<Vec<_>>>()?;
                    let temp = format!("{}_add_{}", self.config.slot, std::process::id());
                    let (tmp, snapshot) = self.export_snapshot(&temp, true, tables).await?;
                    drop(tmp); // the temporary slot goes with its session; the snapshot is imported
                    for u in &new {
                        self.covered.insert(u.clone(), snapshot.consistent_point);
                    }
                    self.snapshots.push_back(snapshot);
                }
                self.resume_from = r;
                self.repl = Some(self.start_streaming(r).await?);
            }
        }
        self.upstreams = upstreams.iter().cloned().collect();
        Ok(())
    }

    async fn poll(&mut self, max_wait: Duration) -> Result<Vec<SourceRecord>> {
        let mut out = Vec::new();
        // A snapshot whose consistent point the stream has reached goes first.
        if self.snapshots.front().is_some_and(|s| s.consistent_point <= self.resume_from.max(self.sent_up_to)) {
            return self.read_snapshot(MAX_POLL_RECORDS).await;
        }
        if let Some(event) = self.held_event.take()
            && !self.handle_event(event, &mut out)?
        {
            return self.read_snapshot(MAX_POLL_RECORDS).await;
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        while out.len() < MAX_POLL_RECORDS {
            // Wait for the first record; then take only what has already arrived.
            let wait = if out.is_empty() { deadline } else { tokio::time::Instant::now() };
            let repl = self.repl.as_mut().ok_or_else(|| SourceError::Internal("postgres-cdc source polled before open".into()))?;
            let event = match tokio::time::timeout_at(wait, repl.recv()).await {
                Err(_) => break,
                Ok(Ok(Some(event))) => event,
                Ok(Ok(None)) => return Err(SourceError::Upstream("replication stream ended".into())),
                Ok(Err(e)) => return Err(SourceError::replication("replication stream", e)),
            };
            let keepalive = matches!(event, ReplicationEvent::KeepAlive { .. });
            if !self.handle_event(event, &mut out)? {
                break;
            }
            // The stream passed a snapshot's consistent point: emit the snapshot next.
            if keepalive && self.snapshots.front().is_some_and(|s| s.consistent_point <= self.sent_up_to) {
                break;
            }
        }
        Ok(out)
    }

    fn lag(&self) -> Lag {
        Lag {
            amount: self.server_wal_end.saturating_sub(self.last_commit.max(self.resume_from).max(self.sent_up_to)),
            unit: LagUnit::Bytes,
        }
    }

    fn idle_flush(&self) -> Option<Duration> {
        None
    }

    async fn committed(&mut self, resume: &HashMap<Stream, u64>) -> Result<()> {
        if let (Some(&lsn), Some(repl)) = (resume.get(WAL_STREAM), self.repl.as_ref())
            && lsn > self.confirmed
        {
            repl.update_applied_lsn(Lsn::from_u64(lsn));
            self.confirmed = lsn;
        }
        Ok(())
    }
}

fn record(lsn: u64, payload: &Value) -> SourceRecord {
    SourceRecord { position: Position::Postgres { lsn }, payload: Some(payload.to_string().into_bytes()) }
}

/// A snapshot row: op `r`, positioned just below the consistent point (the last row at
/// `cp - 1`, the others at `cp - 2`; see the module doc).
fn snapshot_record(
    database: &str,
    schema: &str,
    table: &str,
    row: Map<String, Value>,
    consistent_point: u64,
    marker: &str,
) -> SourceRecord {
    let lsn = consistent_point.saturating_sub(if marker == "last" { 1 } else { 2 });
    let payload = json!({
        "before": Value::Null,
        "after": row,
        "source": {
            "connector": "postgresql",
            "db": database,
            "schema": schema,
            "table": table,
            "lsn": consistent_point,
            "snapshot": marker,
        },
        "op": "r",
    });
    record(lsn, &payload)
}

/// Columns of a table in attribute order, with their type OIDs (base types for domains).
async fn table_columns(client: &Client, schema: &str, table: &str) -> Result<Vec<(String, u32)>> {
    let rows = client
        .query(
            "SELECT a.attname::text, CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&schema, &table],
        )
        .await
        .map_err(|e| SourceError::postgres(format!("reading the columns of {schema}.{table}"), e))?;
    if rows.is_empty() {
        return Err(SourceError::Upstream(format!("upstream table {schema}.{table} does not exist")));
    }
    Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, u32>(1))).collect())
}

/// Big-endian pgoutput fields.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            return Err(SourceError::Pgoutput("message truncated".into()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    /// The next `N` bytes.
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn cstr(&mut self) -> Result<String> {
        let end = self.0.iter().position(|&b| b == 0).ok_or_else(|| SourceError::Pgoutput("unterminated string".into()))?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    /// TupleData as a JSON row image. Unchanged TOASTed values (`u`) are taken from `old`
    /// when it has them, and left out otherwise.
    fn tuple(&mut self, relation: &Relation, old: Option<&Map<String, Value>>) -> Result<Map<String, Value>> {
        let n = self.u16()? as usize;
        let mut row = Map::new();
        for i in 0..n {
            let (name, oid) = relation.columns.get(i).ok_or_else(|| SourceError::Pgoutput("more columns than the relation".into()))?;
            match self.u8()? {
                b'n' => {
                    row.insert(name.clone(), Value::Null);
                }
                b'u' => {
                    if let Some(v) = old.and_then(|o| o.get(name)) {
                        row.insert(name.clone(), v.clone());
                    }
                }
                b't' => {
                    let len = self.u32()? as usize;
                    let text = String::from_utf8_lossy(self.take(len)?).into_owned();
                    row.insert(name.clone(), text_to_json(*oid, &text));
                }
                other => return Err(SourceError::Pgoutput(format!("unexpected column kind {:?}", other as char))),
            }
        }
        Ok(row)
    }
}

/// A Postgres text value of type `oid` as the JSON the Debezium decoder reads for it: numbers
/// for integers and floats, booleans, base64 for bytea, ISO offsets `+hh:mm` for timestamptz,
/// and the text itself otherwise (numeric as a decimal string, dates, times, intervals, uuid,
/// json, arrays).
pub fn text_to_json(oid: u32, text: &str) -> Value {
    match oid {
        // bool
        16 => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => Value::String(text.into()),
        },
        // int8, int2, int4, oid, xid
        20 | 21 | 23 | 26 | 28 => text.parse::<i64>().map_or_else(|_| Value::String(text.into()), Value::from),
        // float4, float8: NaN and infinities stay strings
        700 | 701 => {
            text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or_else(|| Value::String(text.into()), Value::Number)
        }
        // bytea, hex format
        17 => match text.strip_prefix("\\x").and_then(hex_decode) {
            Some(bytes) => Value::String(STANDARD.encode(&bytes)),
            None => Value::String(text.into()),
        },
        // timestamptz, timetz: `+05` -> `+05:00`
        1184 | 1266 => Value::String(full_offset(text)),
        _ => Value::String(text.into()),
    }
}

/// Postgres writes whole-hour offsets as `+hh`; ISO-8601 parsers want `+hh:mm`.
fn full_offset(text: &str) -> String {
    let bytes = text.as_bytes();
    let n = bytes.len();
    if n >= 3
        && matches!(bytes[n - 3], b'+' | b'-')
        && bytes[n - 2].is_ascii_digit()
        && bytes[n - 1].is_ascii_digit()
        && text[..n - 3].contains(':')
    {
        format!("{text}:00")
    } else {
        text.to_string()
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A SQL identifier, quoted.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `schema.table` as a quoted qualified name.
fn qualified(upstream: &str) -> Result<String> {
    let (s, t) = upstream.split_once('.').ok_or_else(|| SourceError::Upstream(format!("upstream \"{upstream}\" must be schema.table")))?;
    Ok(format!("{}.{}", quote_ident(s), quote_ident(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_values_become_the_json_the_decoder_reads() {
        assert_eq!(text_to_json(16, "t"), json!(true));
        assert_eq!(text_to_json(20, "-9007199254740993"), json!(-9007199254740993i64));
        assert_eq!(text_to_json(701, "1.5"), json!(1.5));
        assert_eq!(text_to_json(701, "NaN"), json!("NaN"));
        assert_eq!(text_to_json(1700, "12345678901234567890.123"), json!("12345678901234567890.123"));
        assert_eq!(text_to_json(1184, "2024-03-01 10:00:00.5+00"), json!("2024-03-01 10:00:00.5+00:00"));
        assert_eq!(text_to_json(1184, "2024-03-01 10:00:00+05:30"), json!("2024-03-01 10:00:00+05:30"));
        assert_eq!(text_to_json(17, "\\x00ff10"), json!("AP8Q"));
        assert_eq!(text_to_json(17, "\\x6162"), json!("YWI="));
        assert_eq!(text_to_json(1082, "2024-03-01"), json!("2024-03-01"));
    }

    #[test]
    fn options_are_checked() {
        let opts = |pairs: &[(&str, &str)]| WithOptions::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let c = PostgresCdcConfig::from_options(opts(&[("connection", "host=h user=u dbname=d")])).unwrap();
        assert_eq!((c.publication.as_str(), c.slot.as_str()), ("velocity", "velocity"));
        assert!(PostgresCdcConfig::from_options(opts(&[])).is_err());
        assert!(PostgresCdcConfig::from_options(opts(&[("connection", "host=h"), ("slot", "Bad-Slot")])).is_err());
    }
}
