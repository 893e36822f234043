//! The postgres-cdc connector against a real Postgres 15 with `wal_level=logical`.
//!
//! `VELOCITY_TEST_POSTGRES` (a libpq connection string of a superuser) names the server; if it
//! is unset, `scripts/postgres-test.sh start` starts one on 127.0.0.1:54329 (and leaves it
//! running for the next run; `scripts/postgres-test.sh stop` removes it). Each test works in a
//! database of its own, so tests can run in parallel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use tokio_postgres::Client;

mod common;
use velocity::sources::connector::Connector;
use velocity::sources::postgres::{PostgresCdc, PostgresCdcConfig};
use velocity::sources::{AssemblerOutput, CompleteTxn, Decoder, Position, TxnAssembler, TxnBoundaries, UpstreamTable};

use common::{fresh_postgres_database as fresh_database, postgres_connect as connect};

/// Slot names are cluster-wide: each test's slot is named after its database.
fn config(conn: &str) -> PostgresCdcConfig {
    let db = conn.split_whitespace().find_map(|kv| kv.strip_prefix("dbname=")).unwrap();
    PostgresCdcConfig { connection: conn.into(), publication: "velocity".into(), slot: db.into() }
}

fn shipments() -> UpstreamTable {
    UpstreamTable {
        collection: "public.shipments".into(),
        schema: Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("status", DataType::Utf8, true),
            Field::new("weight", DataType::Decimal128(10, 2), true),
            Field::new("due", DataType::Date32, true),
            Field::new("updated_at", DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), true),
            Field::new("fragile", DataType::Boolean, true),
            Field::new("score", DataType::Float64, true),
        ])),
        primary_key: vec![0],
    }
}

fn orders() -> UpstreamTable {
    UpstreamTable {
        collection: "public.orders".into(),
        schema: Arc::new(Schema::new(vec![
            Field::new("region", DataType::Utf8, false),
            Field::new("id", DataType::Int64, false),
            Field::new("total", DataType::Int64, true),
        ])),
        primary_key: vec![0, 1],
    }
}

const TABLES: &str = "
    CREATE TABLE shipments (id bigint PRIMARY KEY, status text, weight numeric(10,2), due date,
                            updated_at timestamptz, fragile boolean, score float8);
    CREATE TABLE orders (region text, id int, total bigint, PRIMARY KEY (region, id));
    CREATE TABLE audit (id serial PRIMARY KEY, note text);";

/// Drives a connector through the decoder and the assembler, as the source runner does.
struct Pipeline {
    connector: PostgresCdc,
    decoder: Decoder,
    assembler: TxnAssembler,
    txns: Vec<CompleteTxn>,
    dead: Vec<String>,
}

impl Pipeline {
    async fn open(conn: &str, bindings: Vec<UpstreamTable>, resume: &HashMap<String, u64>) -> Pipeline {
        let mut connector = PostgresCdc::new(config(conn));
        let upstreams: Vec<String> = bindings.iter().map(|b| b.collection.clone()).collect();
        connector.open(&upstreams, resume).await.expect("open");
        assert_eq!(connector.idle_flush(), None);
        Pipeline {
            connector,
            decoder: Decoder::new(),
            assembler: TxnAssembler::new(bindings, TxnBoundaries::Metadata).unwrap(),
            txns: Vec::new(),
            dead: Vec::new(),
        }
    }

    /// Poll until `n` more transactions have been released (panics after 20 s).
    async fn released(&mut self, n: usize) -> Vec<CompleteTxn> {
        let start = self.txns.len();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.txns.len() < start + n {
            assert!(Instant::now() < deadline, "only {} of {n} transactions released", self.txns.len() - start);
            for record in self.connector.poll(Duration::from_millis(200)).await.expect("poll") {
                let decoded = self.decoder.decode(record.payload.as_deref());
                let raw = record.payload.clone().unwrap_or_default();
                for out in self.assembler.push(record.position, &raw, decoded) {
                    match out {
                        AssemblerOutput::CompleteTxn(t) => self.txns.push(t),
                        AssemblerOutput::DeadLetter(d) => self.dead.push(d.reason),
                    }
                }
            }
        }
        assert!(self.dead.is_empty(), "dead letters: {:?}", self.dead);
        self.txns[start..].to_vec()
    }

    /// Nothing more is released for a while.
    async fn quiet(&mut self) {
        for _ in 0..5 {
            for record in self.connector.poll(Duration::from_millis(100)).await.expect("poll") {
                let decoded = self.decoder.decode(record.payload.as_deref());
                let outs = self.assembler.push(record.position, record.payload.as_deref().unwrap_or_default(), decoded);
                assert!(outs.is_empty(), "unexpected output: {outs:?}");
            }
        }
    }
}

fn lsn(t: &CompleteTxn) -> u64 {
    match t.last_position {
        Position::Postgres { lsn } => lsn,
        ref other => panic!("not a Postgres position: {other:?}"),
    }
}

fn table<'a>(t: &'a CompleteTxn, name: &str) -> Option<&'a velocity::sources::NetChanges> {
    t.tables.iter().find(|(c, _)| c == name).map(|(_, n)| n)
}

/// Rows of a batch as text, sorted.
fn rows(batch: &RecordBatch) -> Vec<String> {
    let options = arrow::util::display::FormatOptions::default().with_null("NULL");
    let formatters: Vec<_> =
        batch.columns().iter().map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
    let mut out: Vec<String> =
        (0..batch.num_rows()).map(|r| formatters.iter().map(|f| f.value(r).to_string()).collect::<Vec<_>>().join("|")).collect();
    out.sort();
    out
}

fn ids(batch: &RecordBatch) -> Vec<i64> {
    let mut v: Vec<i64> = batch.column_by_name("id").unwrap().as_primitive::<Int64Type>().values().to_vec();
    v.sort();
    v
}

async fn confirmed_flush(db: &Client) -> u64 {
    let row =
        db.query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = current_database()", &[]).await.unwrap();
    let text: String = row.get(0);
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

async fn wait_confirmed(db: &Client, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = confirmed_flush(db).await;
        if now == expected {
            return;
        }
        assert!(Instant::now() < deadline, "confirmed_flush_lsn is {now:X}, expected {expected:X}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_whole_transactions_as_net_changes_and_exact_resume() {
    let conn = fresh_database("cdc_connector").await;
    let db = connect(&conn).await;
    db.batch_execute(TABLES).await.unwrap();
    db.batch_execute(
        "INSERT INTO shipments VALUES
            (1, 'LOADING', 12.50, '2024-03-01', '2024-03-01 10:00:00.25+02', true, 0.5),
            (2, 'LOADING', NULL, NULL, NULL, NULL, NULL);
         INSERT INTO orders VALUES ('eu', 1, 100);
         INSERT INTO audit (note) VALUES ('before the snapshot');",
    )
    .await
    .unwrap();

    let mut p = Pipeline::open(&conn, vec![shipments(), orders()], &HashMap::new()).await;
    // The publication was created for the bound tables only.
    let published = common_rows(&db, "SELECT tablename FROM pg_publication_tables WHERE pubname = 'velocity'").await;
    assert_eq!(published, vec!["orders", "shipments"]);
    let consistent_point = confirmed_flush(&db).await;

    // Written after the slot exists: streamed, not in the snapshot.
    db.batch_execute("INSERT INTO shipments (id, status) VALUES (3, 'NEW')").await.unwrap();

    let snapshot = p.released(1).await;
    assert!(snapshot[0].id.starts_with("snapshot-"), "{}", snapshot[0].id);
    let s = table(&snapshot[0], "public.shipments").unwrap();
    assert_eq!(
        rows(&s.upserts),
        vec!["1|LOADING|12.50|2024-03-01|2024-03-01T08:00:00.250Z|true|0.5", "2|LOADING|NULL|NULL|NULL|NULL|NULL",]
    );
    assert_eq!(rows(&table(&snapshot[0], "public.orders").unwrap().upserts), vec!["eu|1|100"]);
    // Positioned so that, once applied, the resume position is the slot's consistent point.
    assert_eq!(lsn(&snapshot[0]) + 1, consistent_point);

    let t0 = &p.released(1).await[0];
    assert_eq!(ids(&table(t0, "public.shipments").unwrap().upserts), vec![3]);
    assert!(lsn(t0) >= consistent_point);

    // One transaction over two tables: DELETE+INSERT of a key, redundant updates, an insert
    // that is deleted again, a delete, and an unbound table.
    db.batch_execute(
        "BEGIN;
         UPDATE shipments SET status = 'DEPARTED' WHERE id = 1;
         UPDATE shipments SET status = 'LOADING' WHERE id = 1;
         UPDATE shipments SET status = 'DEPARTED', weight = 13 WHERE id = 1;
         DELETE FROM shipments WHERE id = 2;
         INSERT INTO shipments (id, status) VALUES (2, 'REPLACED');
         INSERT INTO shipments (id, status) VALUES (4, 'GONE');
         DELETE FROM shipments WHERE id = 4;
         INSERT INTO orders VALUES ('us', 5, 7);
         DELETE FROM orders WHERE region = 'eu' AND id = 1;
         INSERT INTO audit (note) VALUES ('unbound');
         COMMIT;",
    )
    .await
    .unwrap();
    // A transaction that touches only an unbound table releases nothing.
    db.batch_execute("INSERT INTO audit (note) VALUES ('only unbound')").await.unwrap();
    db.batch_execute("BEGIN; UPDATE shipments SET score = 2.25 WHERE id = 3; UPDATE orders SET total = 8; COMMIT;").await.unwrap();

    let txns = p.released(2).await;
    let (t1, t2) = (&txns[0], &txns[1]);
    assert_eq!(t1.events, 9);
    let s1 = table(t1, "public.shipments").unwrap();
    assert_eq!(
        rows(&s1.upserts),
        vec!["1|DEPARTED|13.00|2024-03-01|2024-03-01T08:00:00.250Z|true|0.5", "2|REPLACED|NULL|NULL|NULL|NULL|NULL"]
    );
    assert_eq!(s1.deletes.num_rows(), 0);
    let o1 = table(t1, "public.orders").unwrap();
    assert_eq!(rows(&o1.upserts), vec!["us|5|7"]);
    assert_eq!(rows(&o1.deletes), vec!["eu|1"]);
    assert_eq!(rows(&table(t2, "public.shipments").unwrap().upserts), vec!["3|NEW|NULL|NULL|NULL|NULL|2.25"]);
    assert_eq!(rows(&table(t2, "public.orders").unwrap().upserts), vec!["us|5|8"]);
    assert!(lsn(t0) < lsn(t1) && lsn(t1) < lsn(t2));
    // Every record of a transaction has the same position.
    assert_eq!(t1.first_position, t1.last_position);
    p.quiet().await;

    // Nothing was confirmed yet: the slot stays at its consistent point.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(confirmed_flush(&db).await, consistent_point);
    // The runner committed everything up to t1: confirm exactly that.
    let after_t1 = HashMap::from([("wal".to_string(), lsn(t1) + 1)]);
    p.connector.committed(&after_t1).await.unwrap();
    wait_confirmed(&db, lsn(t1) + 1).await;
    drop(p);

    // Resume after t1 (as after a crash): no snapshot, t2 again, then new transactions.
    db.batch_execute("UPDATE shipments SET status = 'ARRIVED' WHERE id = 1").await.unwrap();
    let mut p = Pipeline::open(&conn, vec![shipments(), orders()], &after_t1).await;
    let again = p.released(2).await;
    assert_eq!(again[0].id, t2.id);
    assert_eq!(rows(&table(&again[0], "public.orders").unwrap().upserts), vec!["us|5|8"]);
    assert_eq!(strings(&table(&again[1], "public.shipments").unwrap().upserts, "status"), vec!["ARRIVED"]);
    p.quiet().await;
    // A resume position beyond t2 skips it even though the slot was confirmed only up to t1.
    drop(p);
    let after_t2 = HashMap::from([("wal".to_string(), lsn(t2) + 1)]);
    let mut p = Pipeline::open(&conn, vec![shipments(), orders()], &after_t2).await;
    let next = p.released(1).await;
    assert_eq!(next[0].id, again[1].id);
    p.quiet().await;
}

fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
    let a = batch.column_by_name(column).unwrap().as_string::<i32>();
    (0..a.len()).map(|i| a.value(i).to_string()).collect()
}

async fn common_rows(db: &Client, sql: &str) -> Vec<String> {
    let mut v: Vec<String> = db.query(sql, &[]).await.unwrap().iter().map(|r| r.get::<_, String>(0)).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_bound_later_is_snapshotted_at_its_own_point_in_the_stream() {
    let conn = fresh_database("cdc_bound_later").await;
    let db = connect(&conn).await;
    db.batch_execute(TABLES).await.unwrap();
    db.batch_execute("INSERT INTO shipments (id, status) VALUES (1, 'a'); INSERT INTO orders VALUES ('eu', 1, 1)").await.unwrap();
    let mut p = Pipeline::open(&conn, vec![shipments()], &HashMap::new()).await;
    assert_eq!(ids(&table(&p.released(1).await[0], "public.shipments").unwrap().upserts), vec![1]);
    // Orders change while unbound (and unpublished).
    db.batch_execute("BEGIN; INSERT INTO shipments (id, status) VALUES (2, 'b'); UPDATE orders SET total = 2; COMMIT").await.unwrap();
    let t1 = p.released(1).await.remove(0);
    assert!(table(&t1, "public.orders").is_none());

    // Bind orders: the runner rebuilds its assembler and reopens at its resume position.
    let resume = HashMap::from([("wal".to_string(), lsn(&t1) + 1)]);
    let upstreams = vec!["public.shipments".to_string(), "public.orders".to_string()];
    p.connector.open(&upstreams, &resume).await.unwrap();
    p.assembler = TxnAssembler::new(vec![shipments(), orders()], TxnBoundaries::Metadata).unwrap();
    db.batch_execute("BEGIN; UPDATE orders SET total = 3; INSERT INTO shipments (id, status) VALUES (3, 'c'); COMMIT").await.unwrap();
    let txns = p.released(2).await;
    let snapshot = &txns[0];
    assert!(snapshot.id.starts_with("snapshot-"), "{}", snapshot.id);
    assert_eq!(rows(&table(snapshot, "public.orders").unwrap().upserts), vec!["eu|1|2"]);
    assert!(table(snapshot, "public.shipments").is_none());
    assert_eq!(rows(&table(&txns[1], "public.orders").unwrap().upserts), vec!["eu|1|3"]);
    assert_eq!(ids(&table(&txns[1], "public.shipments").unwrap().upserts), vec![3]);
    assert!(lsn(&t1) < lsn(snapshot) && lsn(snapshot) < lsn(&txns[1]));
    p.quiet().await;
}

/// Poll `sql` on Velocity until it returns `expected` (sorted rows), for up to 20 s.
async fn eventually(client: &Client, sql: &str, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<String> = common::rows(client, sql)
            .await
            .into_iter()
            .map(|r| r.into_iter().map(|c| c.unwrap_or_else(|| "NULL".into())).collect::<Vec<_>>().join("|"))
            .collect();
        if got == expected {
            return;
        }
        if Instant::now() > deadline {
            let sources = common::rows(client, "SELECT * FROM velocity_catalog.sources").await;
            panic!("{sql}: got {got:?}, expected {expected:?}; sources: {sources:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn current_lsn(db: &Client) -> u64 {
    let text: String = db.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_applies_postgres_transactions_once_across_a_kill() {
    let conn = fresh_database("cdc_server").await;
    let db = connect(&conn).await;
    db.batch_execute(TABLES).await.unwrap();
    db.batch_execute("INSERT INTO shipments (id, status) VALUES (1, 'PLANNED'), (2, 'PLANNED'); INSERT INTO orders VALUES ('eu', 1, 10)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = common::data_dir(&dir);
    let server = common::ServerProcess::start(&data);
    let v = common::connect(server.addr).await;
    v.batch_execute(&format!(
        "CREATE SOURCE tms WITH (connector = 'postgres-cdc', connection = '{conn}', publication = 'velocity', slot = 'cdc_server');
         CREATE TABLE shipments (id BIGINT PRIMARY KEY, status TEXT) WITH (source = 'tms', upstream = 'public.shipments');
         CREATE TABLE orders (region TEXT, id BIGINT, total BIGINT, PRIMARY KEY (region, id)) WITH (source = 'tms', upstream = 'public.orders');
         CREATE MATERIALIZED VIEW per_status AS SELECT status, count(*) AS n FROM shipments GROUP BY status;
         CREATE MATERIALIZED VIEW shipment_events AS SELECT op, COALESCE(after.id, before.id) AS id, after.status AS status FROM changes(shipments);"
    ))
    .await
    .unwrap();
    eventually(&v, "SELECT status, n FROM per_status", &["PLANNED|2"]).await;
    eventually(&v, "SELECT region, id, total FROM orders", &["eu|1|10"]).await;

    let before_txn = current_lsn(&db).await;
    db.batch_execute(
        "BEGIN;
         DELETE FROM shipments WHERE id = 1; INSERT INTO shipments VALUES (1, 'LOADING');
         UPDATE shipments SET status = 'X' WHERE id = 2; UPDATE shipments SET status = 'PLANNED' WHERE id = 2;
         UPDATE orders SET total = 11;
         COMMIT;",
    )
    .await
    .unwrap();
    eventually(&v, "SELECT status, n FROM per_status", &["LOADING|1", "PLANNED|1"]).await;
    eventually(&v, "SELECT region, id, total FROM orders", &["eu|1|11"]).await;
    // The snapshot inserted 1 and 2; shipment 2 was changed and changed back in one
    // transaction: no event for it.
    eventually(&v, "SELECT op, id, status FROM shipment_events", &["insert|1|PLANNED", "insert|2|PLANNED", "update|1|LOADING"]).await;
    // The slot is confirmed past that transaction once Velocity has committed it, never
    // beyond what Postgres has written.
    let deadline = Instant::now() + Duration::from_secs(10);
    while confirmed_flush_of(&db, "cdc_server").await <= before_txn {
        assert!(Instant::now() < deadline, "slot not confirmed after the commit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(confirmed_flush_of(&db, "cdc_server").await <= current_lsn(&db).await);

    // kill -9, write while Velocity is down, restart: each transaction applies exactly once.
    server.kill9();
    db.batch_execute("UPDATE shipments SET status = 'DEPARTED' WHERE id = 1; INSERT INTO shipments VALUES (3, 'PLANNED')").await.unwrap();
    let server = common::ServerProcess::start(&data);
    let v = common::connect(server.addr).await;
    eventually(&v, "SELECT status, n FROM per_status", &["DEPARTED|1", "PLANNED|2"]).await;
    db.batch_execute("UPDATE orders SET total = 12").await.unwrap();
    eventually(&v, "SELECT region, id, total FROM orders", &["eu|1|12"]).await;
    eventually(
        &v,
        "SELECT op, id, status FROM shipment_events",
        &["insert|1|PLANNED", "insert|2|PLANNED", "insert|3|PLANNED", "update|1|DEPARTED", "update|1|LOADING"],
    )
    .await;
    server.terminate();
}

async fn confirmed_flush_of(db: &Client, slot: &str) -> u64 {
    let text: String =
        db.query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap().get(0);
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_in_postgres_empties_the_table_in_its_transaction() {
    let conn = fresh_database("cdc_truncate").await;
    let db = connect(&conn).await;
    db.batch_execute(TABLES).await.unwrap();
    db.batch_execute("INSERT INTO shipments (id, status) VALUES (1, 'PLANNED'), (2, 'PLANNED'); INSERT INTO orders VALUES ('eu', 1, 10)")
        .await
        .unwrap();
    let server = common::TestServer::start().await;
    let v = server.client().await;
    v.batch_execute(&format!(
        "CREATE SOURCE tms WITH (connector = 'postgres-cdc', connection = '{conn}', publication = 'velocity', slot = 'cdc_truncate');
         CREATE TABLE shipments (id BIGINT PRIMARY KEY, status TEXT) WITH (source = 'tms', upstream = 'public.shipments');
         CREATE TABLE orders (region TEXT, id BIGINT, total BIGINT, PRIMARY KEY (region, id)) WITH (source = 'tms', upstream = 'public.orders');
         CREATE MATERIALIZED VIEW per_status AS SELECT status, count(*) AS n FROM shipments GROUP BY status;
         CREATE MATERIALIZED VIEW shipment_events AS SELECT op, COALESCE(after.id, before.id) AS id FROM changes(shipments);"
    ))
    .await
    .unwrap();
    eventually(&v, "SELECT status, n FROM per_status", &["PLANNED|2"]).await;
    db.batch_execute("INSERT INTO shipments (id, status) VALUES (3, 'LOADING')").await.unwrap();
    db.batch_execute(
        "BEGIN; TRUNCATE shipments; INSERT INTO shipments (id, status) VALUES (4, 'NEW'); UPDATE orders SET total = 11; COMMIT",
    )
    .await
    .unwrap();
    eventually(&v, "SELECT id, status FROM shipments", &["4|NEW"]).await;
    eventually(&v, "SELECT status, n FROM per_status", &["NEW|1"]).await;
    eventually(&v, "SELECT region, id, total FROM orders", &["eu|1|11"]).await;
    eventually(
        &v,
        "SELECT op, id FROM shipment_events",
        &["delete|1", "delete|2", "delete|3", "insert|1", "insert|2", "insert|3", "insert|4"],
    )
    .await;
    assert!(common::rows(&v, "SELECT * FROM velocity_catalog.dead_letters").await.is_empty());
}
