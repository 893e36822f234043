//! `velocity simulate`: run the TMS simulator against a real Postgres database (so the
//! postgres-cdc path is exercised end to end) or into a Debezium JSON-lines file.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::sources::logistics::{Scenario, SimTxn, Simulator, postgres_ddl};

/// Where simulated transactions go.
pub enum Target {
    /// A libpq connection string; the TMS tables are created if missing.
    Postgres(String),
    /// Debezium JSON lines with transaction END markers (read it with
    /// `CREATE SOURCE ... WITH (connector = 'file', path = '...', transactions = 'metadata')`).
    File(PathBuf),
    /// Debezium JSON on Kafka, as Debezium's Postgres connector writes it: one topic per table
    /// (`tms.public.<table>`, keyed by id) and END markers on `tms.transaction`.
    Kafka(String),
}

pub struct SimulateOptions {
    pub target: Target,
    pub scenario: Scenario,
    pub transactions: u64,
    /// Transactions per second; 0 = as fast as possible.
    pub rate: f64,
}

/// Create the TMS tables in Postgres (if missing), with full replica identity so deletes and
/// updates carry whole rows.
pub async fn create_postgres_tables(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    for statement in postgres_ddl().lines().filter(|l| !l.trim().is_empty()) {
        let statement = statement.replacen("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1);
        client.batch_execute(&statement).await?;
    }
    for (table, _) in crate::sources::logistics::TABLES {
        client.batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY FULL")).await?;
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
                let lines = txn.debezium(txn.commit_us / 1000);
                let producer = &producer;
                let mut sends = Vec::with_capacity(lines.len());
                for (i, line) in lines.iter().enumerate() {
                    let (topic, key) = match txn.changes.get(i) {
                        Some(change) => (format!("tms.public.{}", change.table()), change.key().to_string()),
                        None => ("tms.transaction".to_string(), txn.xid.to_string()),
                    };
                    sends.push(
                        async move { producer.send(FutureRecord::to(&topic).key(&key).payload(line), Duration::from_secs(30)).await },
                    );
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
            let mut out = std::io::BufWriter::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?);
            for done in 1..=options.transactions {
                let txn = simulator.next_txn();
                events += txn.changes.len() as u64;
                for line in txn.debezium(txn.commit_us / 1000) {
                    writeln!(out, "{line}")?;
                }
                if options.rate > 0.0 {
                    out.flush()?;
                }
                if done % 1000 == 0 {
                    report(done, events);
                }
                pace(done).await;
            }
            out.flush()?;
        }
    }
    report(options.transactions, events);
    eprintln!();
    Ok(())
}
