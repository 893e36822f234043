//! The Velocity pipeline end to end: the TMS simulator writes into a real Postgres, Velocity
//! ingests it through the postgres-cdc source and runs `queries/velocity.sql`. Afterwards
//! every table equals Postgres, every view equals DataFusion recomputing its query, and the
//! business events equal those derived independently from the simulator's history.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use velocity::sources::logistics::{RowChange, Scenario, SimTxn, Simulator, TABLES};

const TRANSACTIONS: usize = 800;

async fn text_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let messages = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

/// Float sums depend on the order of additions (the incremental sum is compensated,
/// DataFusion's is not): compare floats to 9 significant digits.
fn approximate(rows: Vec<Vec<Option<String>>>) -> Vec<Vec<Option<String>>> {
    let round = |v: String| match v.parse::<f64>() {
        Ok(f) if v.contains('.') && f.is_finite() => format!("{f:.9e}"),
        _ => v,
    };
    rows.into_iter().map(|r| r.into_iter().map(|c| c.map(round)).collect()).collect()
}

/// Events the pipeline must derive, computed from the transactions' net changes.
fn reference_events(history: &[SimTxn]) -> HashMap<&'static str, Vec<i64>> {
    let mut state: HashMap<(&str, i64), serde_json::Map<String, Value>> = HashMap::new();
    let mut events: HashMap<&'static str, Vec<i64>> = HashMap::new();
    let field = |row: Option<&serde_json::Map<String, Value>>, k: &str| row.and_then(|r| r.get(k)).cloned().unwrap_or(Value::Null);
    for txn in history {
        let before = state.clone();
        let mut touched = Vec::new();
        for change in &txn.changes {
            let (table, key, after) = match change {
                RowChange::Insert { table, row } => (*table, row["id"].as_i64().unwrap(), Some(row.clone())),
                RowChange::Update { table, after, .. } => (*table, after["id"].as_i64().unwrap(), Some(after.clone())),
                RowChange::Delete { table, row } => (*table, row["id"].as_i64().unwrap(), None),
            };
            match after {
                Some(row) => state.insert((table, key), row),
                None => state.remove(&(table, key)),
            };
            touched.push((table, key));
        }
        touched.sort();
        touched.dedup();
        for (table, key) in touched {
            let (old, new) = (before.get(&(table, key)), state.get(&(table, key)));
            let status = |r| field(r, "status");
            match table {
                "shipments" => {
                    for (kind, s) in [("shipment_departed", "DEPARTED"), ("shipment_delivered", "DELIVERED")] {
                        if status(new) == s && status(old) != s {
                            events.entry(kind).or_default().push(key);
                        }
                    }
                }
                "pickups" => {
                    let failed = Value::from("FAILED");
                    if status(new) == failed && (status(old) != failed || field(old, "attempt") != field(new, "attempt")) {
                        events.entry("pickup_failed").or_default().push(field(new, "shipment_id").as_i64().unwrap());
                    }
                }
                _ => {}
            }
        }
    }
    for v in events.values_mut() {
        v.sort();
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tms_through_postgres_cdc_equals_references() {
    let conn = common::fresh_postgres_database("velocity_pipeline").await;
    let mut pg = common::postgres_connect(&conn).await;
    velocity::tools::simulate::create_postgres_tables(&pg).await.unwrap();

    // Velocity first, so the whole history is streamed and every state transition is seen.
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let source = format!(
        "CREATE SOURCE tms WITH (connector = 'postgres-cdc', connection = '{conn}', publication = 'velocity', slot = 'velocity_pipeline')"
    );
    let pipeline = velocity::tools::demo::PIPELINE_SQL
        .replace("CREATE SOURCE tms WITH (connector = 'generator', scenario = 'logistics', scale = 200, rate = 50)", &source);
    assert!(pipeline.contains("postgres-cdc"), "the pipeline's CREATE SOURCE was replaced");
    for statement in velocity::sql::split_statements(&pipeline) {
        client.batch_execute(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e:?}"));
    }

    // Write only once the slot exists and publishes every table: what commits before is in a
    // snapshot, as rows without their history, and that history's events would not be derived.
    let started = Instant::now();
    let ready = "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'velocity_pipeline' \
                 AND (SELECT count(*) FROM pg_publication_tables WHERE pubname = 'velocity') = 8";
    while text_rows(&pg, ready).await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "the source created no replication slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut simulator = Simulator::new(Scenario { scale: 30, seed: 7 });
    let history: Vec<SimTxn> = (0..TRANSACTIONS).map(|_| simulator.next_txn()).collect();
    for txn in &history {
        velocity::tools::simulate::write_postgres_txn(&mut pg, txn).await.unwrap();
    }

    // Caught up once every table equals Postgres.
    let started = Instant::now();
    for (table, columns) in TABLES {
        let want = text_rows(&pg, &common::canonical_select(table, columns, true)).await;
        loop {
            let got = text_rows(&client, &common::canonical_select(table, columns, false)).await;
            if got == want {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "{table}: {} rows in Velocity, {} in Postgres", got.len(), want.len());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let loads = text_rows(&client, "SELECT count(*) FROM loads").await;
    assert!(loads[0][0].as_deref().unwrap().parse::<i64>().unwrap() > 20, "loads: {loads:?}");

    // Every view over tables and views equals DataFusion recomputing its query now.
    let views = text_rows(&client, "SELECT name, definition FROM velocity_catalog.relations WHERE kind = 'materialized view'").await;
    let mut checked = 0;
    for view in &views {
        let (name, definition) = (view[0].as_deref().unwrap(), view[1].as_deref().unwrap());
        if definition.contains("changes(") {
            continue;
        }
        let query = &definition[definition.find(" AS ").unwrap() + 4..];
        let mut got = approximate(text_rows(&client, &format!("SELECT * FROM {name}")).await);
        let mut want = approximate(text_rows(&client, query).await);
        got.sort();
        want.sort();
        assert_eq!(got.len(), want.len(), "{name}: row count");
        let diff: Vec<_> = got.iter().zip(&want).filter(|(a, b)| a != b).take(3).collect();
        assert!(diff.is_empty(), "{name} differs from its recompute: {diff:?}");
        checked += 1;
    }
    assert!(checked >= 10, "checked {checked} views");

    // Business events equal those derived from the history itself.
    let reference = reference_events(&history);
    for (view, column) in [("shipment_departed", "shipment_id"), ("shipment_delivered", "shipment_id"), ("pickup_failed", "shipment_id")] {
        let mut got: Vec<i64> = text_rows(&client, &format!("SELECT {column} FROM {view}"))
            .await
            .iter()
            .map(|r| r[0].as_deref().unwrap().parse().unwrap())
            .collect();
        got.sort();
        let want = reference.get(view).cloned().unwrap_or_default();
        assert!(!want.is_empty(), "the history has {view} events");
        assert_eq!(got, want, "{view}");
    }
    // Every event view feeds business_events exactly once.
    let per_kind = text_rows(&client, "SELECT kind, count(*) FROM business_events GROUP BY kind ORDER BY kind").await;
    let departed = per_kind.iter().find(|r| r[0].as_deref() == Some("shipment_departed")).unwrap();
    assert_eq!(departed[1].as_deref().unwrap(), reference["shipment_departed"].len().to_string());
}

/// Under continuous input (the generator never goes idle) the source's counters follow
/// what the engine has applied, not only what it applied by the last idle moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_counters_keep_up_under_continuous_input() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE SOURCE g WITH (connector = 'generator', scenario = 'logistics', scale = 50, rate = 200);
             CREATE TABLE shipments (id BIGINT PRIMARY KEY, trip_id BIGINT, customer_id BIGINT, reference TEXT, status TEXT,
                 weight_kg DOUBLE PRECISION, planned_delivery TIMESTAMP, delivered_at TIMESTAMP, updated_at TIMESTAMP)
                 WITH (source = 'g', upstream = 'public.shipments')",
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let row = client.query_one("SELECT transactions, events FROM velocity_catalog.sources WHERE name = 'g'", &[]).await.unwrap();
        let (transactions, events): (i64, i64) = (row.get(0), row.get(1));
        if transactions > 0 && events > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no transaction counted after 30 s of continuous input");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A table bound while its source runs makes the source read its input again for that table;
/// what it reads again was applied and counted before: `transactions` and `events` count every
/// source transaction once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_counters_count_a_transaction_once_when_a_table_is_bound_later() {
    use velocity::tools::debezium_traffic;
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traffic.jsonl");
    let file = debezium_traffic::write_file(&path, 20_000).unwrap();
    let [shipments, orders] = debezium_traffic::tables_sql("traffic");
    client
        .batch_execute(&format!(
            "CREATE SOURCE traffic WITH (connector = 'file', path = '{}', transactions = 'metadata'); {shipments}",
            path.display()
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.query_one("SELECT transactions FROM velocity_catalog.sources WHERE name = 'traffic'", &[]).await.unwrap().get::<_, i64>(0)
        == 0
    {
        assert!(Instant::now() < deadline, "nothing applied after 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.batch_execute(&format!("{orders}; FLUSH")).await.unwrap();
    let row = client.query_one("SELECT transactions, events FROM velocity_catalog.sources WHERE name = 'traffic'", &[]).await.unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (file.transactions as i64, file.events as i64));
    let orders: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    assert!(orders > 0, "the table bound later was filled from the start of the input");
}
