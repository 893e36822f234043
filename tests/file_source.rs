//! A file source of Debezium JSON lines: per-transaction dedup, dead letters, resume after
//! a restart without losing or repeating a transaction.

mod common;

use std::io::Write;

fn event(table: &str, op: &str, tx: i64, before: &str, after: &str) -> String {
    format!(
        r#"{{"before":{before},"after":{after},"source":{{"db":"tms","schema":"public","table":"{table}","txId":{tx},"lsn":{tx},"ts_ms":1700000000000}},"op":"{op}","ts_ms":1700000000000}}"#
    )
}

fn append(path: &std::path::Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

const SETUP: &str = "
    CREATE TABLE shipments (id BIGINT PRIMARY KEY, status TEXT, customer TEXT) WITH (source = 'tms', upstream = 'public.shipments');
    CREATE TABLE stops (id BIGINT PRIMARY KEY, shipment_id BIGINT, city TEXT) WITH (source = 'tms', upstream = 'public.stops');
    CREATE MATERIALIZED VIEW per_status AS SELECT status, count(*) AS n FROM shipments GROUP BY status;
    CREATE MATERIALIZED VIEW shipment_changes AS SELECT op, COALESCE(after.id, before.id) AS id, tick FROM changes(shipments);
";

fn shipment(id: i64, status: &str) -> String {
    format!(r#"{{"id":{id},"status":"{status}","customer":"acme"}}"#)
}

/// A file source reading `file`, and the tables and views of `SETUP`.
async fn declare(client: &tokio_postgres::Client, file: &std::path::Path) {
    client
        .batch_execute(&format!("CREATE SOURCE tms WITH (connector = 'file', path = '{}', format = 'debezium-json')", file.display()))
        .await
        .unwrap();
    client.batch_execute(SETUP).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_dedups_transactions_and_keeps_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tms.jsonl");
    let s = shipment;
    std::fs::write(&file, "").unwrap();
    let data = dir.path().join("data");
    let server = common::ServerProcess::start(&data);
    let client = common::connect(server.addr).await;
    declare(&client, &file).await;
    // The pipeline is declared; now the change stream arrives.
    append(
        &file,
        &[
            event("shipments", "c", 100, "null", &s(1, "PLANNED")),
            event("shipments", "c", 100, "null", &s(2, "PLANNED")),
            event("stops", "c", 100, "null", r#"{"id":10,"shipment_id":1,"city":"Hamburg"}"#),
            event("notes", "c", 100, "null", r#"{"id":7,"text":"fragile"}"#),
            // One transaction: DELETE + INSERT of shipment 1 is an update; three updates of 2 are one.
            event("shipments", "d", 101, &s(1, "PLANNED"), "null"),
            "this is not json".to_string(),
            event("shipments", "c", 101, "null", &s(1, "LOADING")),
            event("shipments", "u", 101, &s(2, "PLANNED"), &s(2, "LOADING")),
            event("shipments", "u", 101, &s(2, "LOADING"), &s(2, "PLANNED")),
            event("shipments", "u", 101, &s(2, "PLANNED"), &s(2, "DEPARTED")),
            r#"{"before":null,"after":{"id":3"#.to_string(),
            event("shipments", "c", 102, "null", r#"{"id":"abc","status":"X","customer":"y"}"#),
            event("shipments", "c", 102, "null", &s(3, "PLANNED")),
            event("stops", "d", 102, r#"{"id":10,"shipment_id":1,"city":"Hamburg"}"#, "null"),
        ],
    );
    client.batch_execute("FLUSH").await.unwrap();

    let row = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    assert_eq!(
        common::rows(&client, "SELECT id, status FROM shipments").await,
        vec![row(&["1", "LOADING"]), row(&["2", "DEPARTED"]), row(&["3", "PLANNED"])]
    );
    assert!(common::rows(&client, "SELECT * FROM stops").await.is_empty());
    assert_eq!(
        common::rows(&client, "SELECT status, n FROM per_status").await,
        vec![row(&["DEPARTED", "1"]), row(&["LOADING", "1"]), row(&["PLANNED", "1"])]
    );
    // Shipment 1 was deleted and re-inserted in one transaction: the net change is one update.
    let ops = common::rows(&client, "SELECT op, id FROM shipment_changes WHERE id = 1").await;
    assert_eq!(ops, vec![row(&["insert", "1"]), row(&["update", "1"])]);
    // Three malformed records, kept with their reason and position; the good ones all arrived.
    let dead = common::rows(&client, "SELECT position, reason FROM velocity_catalog.dead_letters").await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead.iter().any(|r| r[1].as_deref().unwrap_or("").contains("id")), "{dead:?}");
    let status = common::rows(&client, "SELECT name, errors FROM velocity_catalog.sources").await;
    assert_eq!(status, vec![row(&["tms", "3"])]);
    client.batch_execute("INSERT INTO shipments VALUES (9, 'X', 'y')").await.expect_err("source tables are read-only");

    // Restart: nothing is applied twice, and new lines continue from where the source stopped.
    drop(client);
    server.kill9();
    append(
        &file,
        &[
            event("shipments", "u", 103, &s(3, "PLANNED"), &s(3, "LOADING")),
            event("stops", "c", 103, "null", r#"{"id":11,"shipment_id":3,"city":"Kiel"}"#),
        ],
    );
    let server = common::ServerProcess::start(&data);
    let client = common::connect(server.addr).await;
    client.batch_execute("FLUSH").await.unwrap();
    // A table bound after the source moved on still gets the whole history.
    client
        .batch_execute("CREATE TABLE notes (id BIGINT PRIMARY KEY, text TEXT) WITH (source = 'tms', upstream = 'public.notes'); FLUSH;")
        .await
        .unwrap();
    assert_eq!(common::rows(&client, "SELECT id, text FROM notes").await, vec![row(&["7", "fragile"])]);
    // One table per upstream table and source.
    client
        .batch_execute("CREATE TABLE notes2 (id BIGINT PRIMARY KEY, text TEXT) WITH (source = 'tms', upstream = 'public.notes')")
        .await
        .expect_err("a second table for the same upstream is refused");
    assert_eq!(
        common::rows(&client, "SELECT id, status FROM shipments").await,
        vec![row(&["1", "LOADING"]), row(&["2", "DEPARTED"]), row(&["3", "LOADING"])]
    );
    assert_eq!(common::rows(&client, "SELECT id, city FROM stops").await, vec![row(&["11", "Kiel"])]);
    let inserts = common::rows(&client, "SELECT count(*) FROM shipment_changes WHERE op = 'insert'").await;
    assert_eq!(inserts, vec![row(&["3"])], "no transaction was applied twice");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_removes_every_row_in_its_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tms.jsonl");
    let s = shipment;
    std::fs::write(&file, "").unwrap();
    let server = common::TestServer::start().await;
    let client = server.client().await;
    declare(&client, &file).await;
    append(
        &file,
        &[
            event("shipments", "c", 100, "null", &s(1, "PLANNED")),
            event("shipments", "c", 100, "null", &s(2, "PLANNED")),
            event("stops", "c", 100, "null", r#"{"id":10,"shipment_id":1,"city":"Hamburg"}"#),
            // TRUNCATE shipments, then one new row, in one transaction; stops are untouched.
            event("shipments", "u", 101, &s(2, "PLANNED"), &s(2, "LOADING")),
            event("shipments", "t", 101, "null", "null"),
            event("shipments", "c", 101, "null", &s(3, "PLANNED")),
        ],
    );
    client.batch_execute("FLUSH").await.unwrap();
    let row = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    assert_eq!(common::rows(&client, "SELECT id, status FROM shipments").await, vec![row(&["3", "PLANNED"])]);
    assert_eq!(common::rows(&client, "SELECT id FROM stops").await, vec![row(&["10"])]);
    assert_eq!(common::rows(&client, "SELECT status, n FROM per_status").await, vec![row(&["PLANNED", "1"])]);
    // changes() sees the truncate as the removal of each row, in the tick of its transaction.
    let ops = common::rows(&client, "SELECT op, id FROM shipment_changes WHERE tick = (SELECT max(tick) FROM shipment_changes)").await;
    assert_eq!(ops, vec![row(&["delete", "1"]), row(&["delete", "2"]), row(&["insert", "3"])]);
    assert!(common::rows(&client, "SELECT * FROM velocity_catalog.dead_letters").await.is_empty());
}

/// A source that cannot read as configured says so, and recovers once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_sources_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("later.jsonl");
    let server = common::TestServer::start().await;
    let client = server.client().await;
    client.batch_execute(&format!("CREATE SOURCE tms WITH (connector = 'file', path = '{}')", file.display())).await.unwrap();
    // A typo in one upstream name: the table never receives anything.
    client
        .batch_execute(
            "CREATE TABLE shipments (id BIGINT PRIMARY KEY, status TEXT, customer TEXT) WITH (source = 'tms', upstream = 'public.shipment');
             CREATE TABLE stops (id BIGINT PRIMARY KEY, shipment_id BIGINT, city TEXT) WITH (source = 'tms', upstream = 'public.stops');",
        )
        .await
        .unwrap();
    let status = "SELECT status, reason FROM velocity_catalog.sources";
    let started = std::time::Instant::now();
    let missing = loop {
        let rows = common::rows(&client, status).await;
        if rows[0][0].as_deref() == Some("error") {
            break rows[0][1].clone().unwrap_or_default();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{rows:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(missing.contains("later.jsonl"), "{missing}");
    // FLUSH does not wait for a source that cannot read.
    client.batch_execute("FLUSH").await.unwrap();

    // The file appears: the source reads it without being recreated.
    append(
        &file,
        &[
            event("shipments", "c", 100, "null", r#"{"id":1,"status":"PLANNED","customer":"acme"}"#),
            event("stops", "c", 100, "null", r#"{"id":10,"shipment_id":1,"city":"Hamburg"}"#),
        ],
    );
    let started = std::time::Instant::now();
    while common::rows(&client, status).await != vec![vec![Some("running".into()), None]] {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the source did not recover");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    client.batch_execute("FLUSH").await.unwrap();
    let row = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    assert_eq!(common::rows(&client, "SELECT id FROM stops").await, vec![row(&["10"])]);
    // The misspelt binding and the collection nobody reads both show.
    let collections =
        common::rows(&client, "SELECT collection, events, table_name, upstream FROM velocity_catalog.source_collections").await;
    assert_eq!(
        collections,
        vec![
            vec![Some("public.shipment".into()), Some("0".into()), Some("shipments".into()), Some("public.shipment".into())],
            vec![Some("public.shipments".into()), Some("1".into()), None, None],
            row(&["public.stops", "1", "stops", "public.stops"]),
        ]
    );

    // Brokers that refuse connections: an error with the reason, not `running`.
    client
        .batch_execute(
            "CREATE SOURCE down WITH (connector = 'kafka', brokers = '127.0.0.1:1', transaction_topic = 'tx');
             CREATE TABLE t (id BIGINT PRIMARY KEY) WITH (source = 'down', upstream = 'db.public.t');",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let rows = common::rows(&client, "SELECT status, reason FROM velocity_catalog.sources WHERE name = 'down'").await;
        if rows[0][0].as_deref() == Some("error") {
            assert!(rows[0][1].as_deref().unwrap_or("").contains("brokers"), "{rows:?}");
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "{rows:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// FLUSH waits while a source has input to apply, until the session's statement_timeout or a
/// cancel request ends the wait (57014); the session and the server go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_ends_on_statement_timeout_and_on_cancel() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    // An unthrottled generator: input to apply for much longer than this test runs.
    client
        .batch_execute(
            "CREATE SOURCE busy WITH (connector = 'generator', scenario = 'logistics', rate = 0, max_transactions = 100000000);
             CREATE TABLE trips (id BIGINT PRIMARY KEY, load_ref TEXT, carrier TEXT, vehicle TEXT, status TEXT,
                 planned_departure TIMESTAMP, actual_departure TIMESTAMP, updated_at TIMESTAMP)
                 WITH (source = 'busy', upstream = 'public.trips');",
        )
        .await
        .unwrap();
    client.batch_execute("SET statement_timeout = '300ms'").await.unwrap();
    let e = client.batch_execute("FLUSH").await.expect_err("FLUSH cannot finish while the generator runs");
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e:?}");
    client.batch_execute("SET statement_timeout = 0").await.unwrap();

    let cancel = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let e = client.batch_execute("FLUSH").await.expect_err("cancelled");
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e:?}");
    canceller.await.unwrap();
    let trips = common::rows(&client, "SELECT count(*) > 0 FROM trips").await;
    assert_eq!(trips, vec![vec![Some("t".into())]]);
}

/// A source transaction that makes a view fail (a division by zero) is kept as a dead letter
/// with the reason; the transactions after it apply, and a restart does not retry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_a_view_cannot_take_is_dead_lettered_and_the_source_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("items.jsonl");
    std::fs::write(&file, "").unwrap();
    let data = dir.path().join("data");
    let server = common::ServerProcess::start(&data);
    let client = common::connect(server.addr).await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE tms WITH (connector = 'file', path = '{}');
             CREATE TABLE items (id BIGINT PRIMARY KEY, qty BIGINT) WITH (source = 'tms', upstream = 'public.items');
             CREATE MATERIALIZED VIEW per_unit AS SELECT id, 100 / qty AS share FROM items;",
            file.display()
        ))
        .await
        .unwrap();
    let item = |id: i64, qty: i64| format!(r#"{{"id":{id},"qty":{qty}}}"#);
    append(
        &file,
        &[
            event("items", "c", 100, "null", &item(1, 2)),
            event("items", "c", 101, "null", &item(2, 0)),
            event("items", "u", 101, "null", &item(1, 4)),
            event("items", "c", 102, "null", &item(3, 5)),
        ],
    );
    client.batch_execute("FLUSH").await.unwrap();
    let row = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    let check = async |client: &tokio_postgres::Client| {
        assert_eq!(common::rows(client, "SELECT id, qty FROM items").await, vec![row(&["1", "2"]), row(&["3", "5"])]);
        assert_eq!(common::rows(client, "SELECT id, share FROM per_unit").await, vec![row(&["1", "50"]), row(&["3", "20"])]);
        let dead = common::rows(client, "SELECT raw, reason FROM velocity_catalog.dead_letters").await;
        assert_eq!(dead.len(), 1, "{dead:?}");
        let (raw, reason) = (dead[0][0].as_deref().unwrap(), dead[0][1].as_deref().unwrap());
        assert!(raw.contains("transaction 101") && raw.contains("public.items"), "{raw}");
        assert!(reason.contains("per_unit") && reason.to_lowercase().contains("divide by zero"), "{reason}");
        let status = common::rows(client, "SELECT status, errors FROM velocity_catalog.sources").await;
        assert_eq!(status, vec![row(&["running", "1"])]);
    };
    check(&client).await;

    // A client transaction the view cannot take fails with the view named (22012).
    client.batch_execute("CREATE TABLE stock (id BIGINT PRIMARY KEY, qty BIGINT); CREATE MATERIALIZED VIEW stock_share AS SELECT 10 / qty AS s FROM stock").await.unwrap();
    let e = client.batch_execute("INSERT INTO stock VALUES (1, 0)").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("22012"), "{e:?}");
    assert!(e.as_db_error().unwrap().message().contains("stock_share"), "{e:?}");

    drop(client);
    server.kill9();
    let server = common::ServerProcess::start(&data);
    let client = common::connect(server.addr).await;
    client.batch_execute("FLUSH").await.unwrap();
    check(&client).await;
    server.terminate();
}
