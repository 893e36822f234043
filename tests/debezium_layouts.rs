//! CDC as Debezium's Postgres connector really writes it (the simulator's records: `txId:LSN`
//! transaction ids with each record's own LSN, BEGIN/END markers at their own LSNs,
//! tombstones after deletes, primary-key updates as delete + create, key-only `before` for
//! REPLICA IDENTITY DEFAULT tables), delivered three ways: one file holding one stream, one
//! file per topic (as Kafka delivers it), and Kafka topics per table plus the transaction
//! topic. Each time, the tables end equal to Postgres after the same history, a subscriber
//! never sees part of a transaction, and nothing stays pending.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::Client;
use velocity::sources::logistics::{RowChange, Scenario, SimTxn, Simulator, TABLES};

const TRANSACTIONS: usize = 600;
/// Transactions written at a time, while a subscriber watches.
const CHUNK: usize = 100;

fn history() -> Vec<SimTxn> {
    let mut simulator = Simulator::new(Scenario { scale: 15, seed: 11 });
    (0..TRANSACTIONS).map(|_| simulator.next_txn()).collect()
}

/// Postgres after the same history, written as SQL: the reference for the final tables.
async fn postgres_after(history: &[SimTxn], database: &str) -> Client {
    let conn = common::fresh_postgres_database(database).await;
    let mut pg = common::postgres_connect(&conn).await;
    velocity::tools::simulate::create_postgres_tables(&pg).await.unwrap();
    for txn in history {
        velocity::tools::simulate::write_postgres_txn(&mut pg, txn).await.unwrap();
    }
    pg
}

/// Legs and stops planned per trip: constant for a trip's life, so a trip seen with other
/// counts was seen in the middle of its planning or archiving transaction.
fn planned_parts(history: &[SimTxn]) -> HashMap<i64, (i64, i64)> {
    // Distinct ids: the legacy TMS writes some updates as DELETE + INSERT.
    let mut parts: HashMap<i64, (HashSet<i64>, HashSet<i64>)> = HashMap::new();
    for change in history.iter().flat_map(|t| &t.changes) {
        if let RowChange::Insert { table, row } = change {
            let (trip, id) = (row.get("trip_id").and_then(Value::as_i64), row.get("id").and_then(Value::as_i64));
            match (*table, trip, id) {
                ("legs", Some(trip), Some(id)) => parts.entry(trip).or_default().0.insert(id),
                ("stops", Some(trip), Some(id)) => parts.entry(trip).or_default().1.insert(id),
                _ => false,
            };
        }
    }
    parts.into_iter().map(|(trip, (legs, stops))| (trip, (legs.len() as i64, stops.len() as i64))).collect()
}

/// The TMS tables bound to source `tms`, `upstream` naming each table's collection.
fn create_tables(upstream: impl Fn(&str) -> String) -> String {
    let mut sql = String::new();
    for (table, columns) in TABLES {
        let cols: Vec<String> = columns.iter().map(|(c, t)| format!("{c} {t}")).collect();
        sql += &format!(
            "CREATE TABLE {table} ({}, PRIMARY KEY (id)) WITH (source = 'tms', upstream = '{}');\n",
            cols.join(", "),
            upstream(table)
        );
    }
    sql + "CREATE MATERIALIZED VIEW trip_parts AS
               SELECT t.id, count(DISTINCT l.id) AS legs, count(DISTINCT s.id) AS stops
               FROM trips t LEFT JOIN legs l ON l.trip_id = t.id LEFT JOIN stops s ON s.trip_id = t.id
               GROUP BY t.id;"
}

/// Watches `trip_parts` until told to stop; returns the rows inserted that no transaction
/// boundary could have produced.
fn watch_trip_parts(
    client: Client,
    planned: HashMap<i64, (i64, i64)>,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<(usize, Vec<String>)>) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        client.batch_execute("DECLARE parts CURSOR FOR SUBSCRIBE trip_parts WITH (PROGRESS = false)").await.unwrap();
        let (mut seen, mut partial) = (0, Vec::new());
        loop {
            let last = stopped.try_recv().is_ok();
            // (tick, diff, id, legs, stops)
            for row in common::rows(&client, "FETCH ALL parts WITH (timeout = '200ms')").await {
                let int = |i: usize| row[i].as_deref().unwrap().parse::<i64>().unwrap();
                if int(1) > 0 {
                    seen += 1;
                    if planned.get(&int(2)) != Some(&(int(3), int(4))) {
                        partial.push(format!("{row:?}"));
                    }
                }
            }
            if last {
                return (seen, partial);
            }
        }
    });
    (stop, task)
}

/// Writes the history chunk by chunk with `write`, then checks what the issue asks of every
/// layout: a subscriber saw only whole transactions, the tables equal Postgres, nothing is
/// pending.
async fn run_layout(name: &str, ddl: &str, source: &str, mut write: impl AsyncFnMut(&[SimTxn])) {
    let history = history();
    let pg = postgres_after(&history, &format!("velocity_layout_{name}")).await;
    let server = common::TestServer::start().await;
    let client = server.client().await;
    client.batch_execute(source).await.unwrap();
    client.batch_execute(ddl).await.unwrap();
    let (stop, watcher) = watch_trip_parts(server.client().await, planned_parts(&history));
    for chunk in history.chunks(CHUNK) {
        write(chunk).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let started = Instant::now();
    for (table, columns) in TABLES {
        let want = common::rows(&pg, &common::canonical_select(table, columns, true)).await;
        loop {
            client.batch_execute("FLUSH").await.unwrap();
            let got = common::rows(&client, &common::canonical_select(table, columns, false)).await;
            if got == want {
                break;
            }
            let sources = common::rows(&client, "SELECT * FROM velocity_catalog.sources").await;
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{name}: {table}: {} rows, Postgres {}; {sources:?}",
                got.len(),
                want.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let status = common::rows(&client, "SELECT status, pending_records, errors FROM velocity_catalog.sources").await;
    assert_eq!(status, vec![vec![Some("running".into()), Some("0".into()), Some("0".into())]], "{name}");
    let dead = common::rows(&client, "SELECT reason FROM velocity_catalog.dead_letters").await;
    assert!(dead.is_empty(), "{name}: {dead:?}");
    // Every collection seen is bound, and every bound one was seen.
    let unbound =
        common::rows(&client, "SELECT collection FROM velocity_catalog.source_collections WHERE table_name IS NULL OR events = 0").await;
    assert!(unbound.is_empty(), "{name}: {unbound:?}");

    stop.send(()).unwrap();
    let (seen, partial) = watcher.await.unwrap();
    assert!(seen > 50, "{name}: the subscriber saw {seen} trip rows");
    assert!(partial.is_empty(), "{name}: parts of transactions seen: {partial:?}");
}

fn append(path: &std::path::Path, lines: impl IntoIterator<Item = String>) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for line in lines {
        writeln!(f, "{line}").unwrap();
    }
}

fn file_source(path: &std::path::Path) -> String {
    format!("CREATE SOURCE tms WITH (connector = 'file', path = '{}', transactions = 'metadata')", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_in_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tms.jsonl");
    std::fs::write(&path, "").unwrap();
    let ddl = create_tables(|t| format!("public.{t}"));
    run_layout("one_file", &ddl, &file_source(&path), async |chunk: &[SimTxn]| {
        append(&path, chunk.iter().flat_map(|t| t.debezium(t.commit_us / 1000)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_file_per_topic() {
    let dir = tempfile::tempdir().unwrap();
    let topics = dir.path().join("topics");
    std::fs::create_dir(&topics).unwrap();
    let ddl = create_tables(|t| format!("public.{t}"));
    let mut files = velocity::tools::simulate::DebeziumFiles::new(&topics).unwrap();
    run_layout("per_topic", &ddl, &file_source(&topics), async |chunk: &[SimTxn]| {
        for txn in chunk {
            files.write(txn).unwrap();
        }
        files.flush().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_topic_per_table_and_transaction_topic() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let brokers = common::kafka_broker();
    let prefix = common::unique_name("layouts");
    let topic = |table: Option<&str>| match table {
        Some(table) => format!("{prefix}.public.{table}"),
        None => format!("{prefix}.transaction"),
    };
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", &brokers).set("message.timeout.ms", "10000");
    let admin: AdminClient<DefaultClientContext> = config.create().unwrap();
    let names: Vec<String> = TABLES.iter().map(|(t, _)| topic(Some(t))).chain([topic(None)]).collect();
    let new_topics: Vec<NewTopic> = names.iter().map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1))).collect();
    for created in admin.create_topics(&new_topics, &AdminOptions::new()).await.unwrap() {
        created.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    // One message per record batch: tansu returns nothing to a consumer resuming inside a batch.
    let producer: FutureProducer = config.set("linger.ms", "0").set("batch.num.messages", "1").create().unwrap();
    let source = format!(
        "CREATE SOURCE tms WITH (connector = 'kafka', brokers = '{brokers}', format = 'debezium-json', \
         transaction_topic = '{}', group_id = '{prefix}')",
        topic(None)
    );
    let ddl = create_tables(|t| topic(Some(t)));
    run_layout("kafka", &ddl, &source, async |chunk: &[SimTxn]| {
        for txn in chunk {
            let records = txn.debezium_records(txn.commit_us / 1000);
            let sends = records.iter().map(|record| {
                let topic = topic(record.table);
                let producer = &producer;
                async move {
                    let message = FutureRecord::to(&topic).key(&record.key);
                    let message = match &record.value {
                        Some(value) => message.payload(value),
                        None => message,
                    };
                    producer.send(message, Duration::from_secs(30)).await.map_err(|(e, _)| e)
                }
            });
            for sent in futures::future::join_all(sends).await {
                sent.unwrap();
            }
        }
    })
    .await;
}
