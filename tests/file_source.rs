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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_dedups_transactions_and_keeps_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tms.jsonl");
    let s = |id: i64, status: &str| format!(r#"{{"id":{id},"status":"{status}","customer":"acme"}}"#);
    std::fs::write(&file, "").unwrap();
    let data = dir.path().join("data");
    let server = common::ServerProcess::start(&data);
    let client = common::connect(server.addr).await;
    client
        .batch_execute(&format!("CREATE SOURCE tms WITH (connector = 'file', path = '{}', format = 'debezium-json')", file.display()))
        .await
        .unwrap();
    client.batch_execute(SETUP).await.unwrap();
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
