//! `velocity simulate`: run the TMS simulator against a real Postgres database (so the
//! postgres-cdc path is exercised end to end) or into a Debezium JSON-lines file.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::sources::logistics::{DEFAULT_REPLICA_IDENTITY, Scenario, SimTxn, Simulator, postgres_ddl};

/// Where simulated transactions go.
pub enum Target {
    /// A libpq connection string; the TMS tables are created if missing.
    Postgres(String),
    /// Debezium JSON lines with BEGIN/END markers (read it with `CREATE SOURCE ... WITH
    /// (connector = 'file', path = '...', transactions = 'metadata')`): one stream in a file,
    /// or, given a directory, one file per topic as Kafka would deliver them.
    File(PathBuf),
    /// Debezium JSON on Kafka, as Debezium's Postgres connector writes it: one topic per table
    /// (`tms.public.<table>`, keyed by id, a tombstone after each delete) and BEGIN/END markers
    /// on `tms.transaction`.
    Kafka(String),
}

pub struct SimulateOptions {
    pub target: Target,
    pub scenario: Scenario,
    pub transactions: u64,
    /// Transactions per second; 0 = as fast as possible.
    pub rate: f64,
}

/// Create the TMS tables in Postgres (if missing), with the replica identity the simulated
/// Debezium output assumes (`FULL` but for [`DEFAULT_REPLICA_IDENTITY`]).
pub async fn create_postgres_tables(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    for statement in postgres_ddl().lines().filter(|l| !l.trim().is_empty()) {
        let statement = statement.replacen("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1);
        client.batch_execute(&statement).await?;
    }
    for (table, _) in crate::sources::logistics::TABLES {
        let identity = if DEFAULT_REPLICA_IDENTITY.contains(table) { "DEFAULT" } else { "FULL" };
        client.batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY {identity}")).await?;
    }
    Ok(())
}

/// Write one simulated transaction to Postgres as one database transaction.
pub async fn write_postgres_txn(client: &mut tokio_postgres::Client, txn: &SimTxn) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    for statement in txn.sql() {
        tx.batch_execute(&statement).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn run(options: SimulateOptions) -> anyhow::Result<()> {
    let mut simulator = Simulator::new(options.scenario.clone());
    let started = Instant::now();
    let pace = |done: u64| async move {
        if options.rate > 0.0 {
            let due = Duration::from_secs_f64(done as f64 / options.rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    };
    let report = |done: u64, events: u64| {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        eprint!("\r{done}/{} transactions, {events} row changes, {:.0} txn/s", options.transactions, done as f64 / secs);
    };
    let mut events = 0u64;
    match &options.target {
        Target::Postgres(conn) => {
            let (mut client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            create_postgres_tables(&client).await?;
            for done in 1..=options.transactions {
                let txn = simulator.next_txn();
                events += txn.changes.len() as u64;
                write_postgres_txn(&mut client, &txn).await?;
                if done % 100 == 0 {
                    report(done, events);
                }
                pace(done).await;
            }
        }
        Target::Kafka(brokers) => {
            use rdkafka::producer::{FutureProducer, FutureRecord};
            let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create()?;
            for done in 1..=options.transactions {
                let txn = simulator.next_txn();
                events += txn.changes.len() as u64;
                let records = txn.debezium_records(txn.commit_us / 1000);
                let producer = &producer;
                let mut sends = Vec::with_capacity(records.len());
                for record in &records {
                    let topic = match record.table {
                        Some(table) => format!("tms.public.{table}"),
                        None => "tms.transaction".to_string(),
                    };
                    sends.push(async move {
                        let message = FutureRecord::to(&topic).key(&record.key);
                        let message = match &record.value {
                            Some(value) => message.payload(value),
                            None => message,
                        };
                        producer.send(message, Duration::from_secs(30)).await
                    });
                }
                for sent in futures::future::join_all(sends).await {
                    sent.map_err(|(e, _)| anyhow::anyhow!("producing to kafka: {e}"))?;
                }
                if done % 100 == 0 {
                    report(done, events);
                }
                pace(done).await;
            }
        }
        Target::File(path) => {
            let mut files = DebeziumFiles::new(path)?;
            for done in 1..=options.transactions {
                let txn = simulator.next_txn();
                events += txn.changes.len() as u64;
                files.write(&txn)?;
                if options.rate > 0.0 {
                    files.flush()?;
                }
                if done % 1000 == 0 {
                    report(done, events);
                }
                pace(done).await;
            }
            files.flush()?;
        }
    }
    report(options.transactions, events);
    eprintln!();
    Ok(())
}

/// The Nexmark scenario's `events` events as Debezium JSON lines (BEGIN/END markers, one
/// transaction per 50 events), exactly what `connector = 'generator', scenario = 'nexmark'`
/// applies: `scripts/nexmark-flink.py` feeds the same events to Flink.
pub fn nexmark_to_file(path: &std::path::Path, events: u64) -> anyhow::Result<()> {
    use crate::sources::nexmark::{Generator, Workload};
    let mut generator = Generator::new(Workload { events: Some(events), ..Workload::default() });
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut transactions = 0u64;
    while let Some(txn) = generator.next_txn(0) {
        for record in txn {
            writeln!(out, "{record}")?;
        }
        transactions += 1;
        if transactions.is_multiple_of(2000) {
            eprint!("\r{transactions} transactions");
        }
    }
    out.flush()?;
    eprintln!("\r{transactions} transactions, {events} events: {}", path.display());
    Ok(())
}

/// Simulated Debezium records as JSON-lines files: all in one file, or one file per topic in
/// a directory (`tms.public.<table>.jsonl`, `tms.transaction.jsonl`). Tombstones are `null`.
pub struct DebeziumFiles {
    dir: Option<PathBuf>,
    /// Open files by topic (`""` for the single file).
    files: std::collections::HashMap<String, std::io::BufWriter<std::fs::File>>,
    single: PathBuf,
}

impl DebeziumFiles {
    pub fn new(path: &std::path::Path) -> std::io::Result<DebeziumFiles> {
        let dir = path.is_dir().then(|| path.to_path_buf());
        Ok(DebeziumFiles { dir, files: Default::default(), single: path.to_path_buf() })
    }

    pub fn write(&mut self, txn: &SimTxn) -> std::io::Result<()> {
        for record in txn.debezium_records(txn.commit_us / 1000) {
            let path = match (&self.dir, record.table) {
                (None, _) => self.single.clone(),
                (Some(dir), Some(table)) => dir.join(format!("tms.public.{table}.jsonl")),
                (Some(dir), None) => dir.join("tms.transaction.jsonl"),
            };
            let out = match self.files.entry(path.display().to_string()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(std::io::BufWriter::new(std::fs::OpenOptions::new().create(true).append(true).open(&path)?))
                }
            };
            writeln!(out, "{}", record.value.as_deref().unwrap_or("null"))?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.files.values_mut().try_for_each(std::io::Write::flush)
    }
}
