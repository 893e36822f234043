//! kill -9 during ingestion: after a restart every view equals its oracle, and no source
//! transaction is lost or applied twice.

mod common;

use std::collections::BTreeMap;
use std::io::Write;

/// A deterministic generator of TMS-like transactions (xorshift, so no dependency).
struct History {
    rng: u64,
    shipments: BTreeMap<i64, (String, i64)>,
    stops: BTreeMap<i64, (i64, String)>,
    versions: BTreeMap<i64, i64>,
    /// Net row changes of shipments that leave a row behind (insert or update), per transaction.
    expected_after_rows: usize,
}

const STATUSES: [&str; 4] = ["PLANNED", "LOADING", "DEPARTED", "DELIVERED"];

impl History {
    fn next(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }

    fn shipment(id: i64, row: &(String, i64)) -> String {
        format!(r#"{{"id":{id},"status":"{}","version":{}}}"#, row.0, row.1)
    }

    fn stop(id: i64, row: &(i64, String)) -> String {
        format!(r#"{{"id":{id},"shipment_id":{},"status":"{}"}}"#, row.0, row.1)
    }

    /// One source transaction as Debezium lines: DELETE+INSERT pairs, redundant updates,
    /// deletes and re-creates, across two tables.
    fn transaction(&mut self, tx: i64) -> Vec<String> {
        let mut lines = Vec::new();
        let ev = |table: &str, op: &str, before: String, after: String| {
            format!(
                r#"{{"before":{before},"after":{after},"source":{{"schema":"public","table":"{table}","txId":{tx},"lsn":{tx},"ts_ms":1700000000000}},"op":"{op}"}}"#
            )
        };
        for _ in 0..3 {
            let id = self.next(200) as i64;
            let before = self.shipments.get(&id).cloned();
            match (before, self.next(10)) {
                (None, _) => {
                    // Versions keep growing across a delete and re-create: (id, version) is unique.
                    let version = self.versions.entry(id).or_insert(0);
                    *version += 1;
                    let row = (STATUSES[0].to_string(), *version);
                    lines.push(ev("shipments", "c", "null".into(), Self::shipment(id, &row)));
                    self.shipments.insert(id, row);
                }
                (Some(old), 0) => {
                    lines.push(ev("shipments", "d", Self::shipment(id, &old), "null".into()));
                    self.shipments.remove(&id);
                }
                (Some(old), k) => {
                    // UPDATE written as DELETE + INSERT, then a redundant update back and forth.
                    let version = self.versions.entry(id).or_insert(0);
                    *version += 1;
                    let new = (STATUSES[(k as usize) % 4].to_string(), *version);
                    lines.push(ev("shipments", "d", Self::shipment(id, &old), "null".into()));
                    lines.push(ev("shipments", "c", "null".into(), Self::shipment(id, &new)));
                    let detour = ("DETOUR".to_string(), new.1);
                    lines.push(ev("shipments", "u", Self::shipment(id, &new), Self::shipment(id, &detour)));
                    lines.push(ev("shipments", "u", Self::shipment(id, &detour), Self::shipment(id, &new)));
                    self.shipments.insert(id, new);
                }
            }
        }
        let stop = self.next(400) as i64;
        let row = (self.next(200) as i64, STATUSES[self.next(4) as usize].to_string());
        let op = if self.stops.contains_key(&stop) { "u" } else { "c" };
        let before = self.stops.get(&stop).map(|r| Self::stop(stop, r)).unwrap_or_else(|| "null".into());
        lines.push(ev("stops", op, before, Self::stop(stop, &row)));
        self.stops.insert(stop, row);
        lines
    }

    /// Transactions `from..to`, counting the expected net changes of shipments.
    fn write(&mut self, file: &std::path::Path, from: i64, to: i64) {
        let mut out = std::io::BufWriter::new(std::fs::OpenOptions::new().create(true).append(true).open(file).unwrap());
        for tx in from..to {
            let before = self.shipments.clone();
            for line in self.transaction(tx) {
                writeln!(out, "{line}").unwrap();
            }
            self.expected_after_rows += self.shipments.iter().filter(|(id, row)| before.get(id) != Some(row)).count();
        }
    }
}

const PIPELINE: &str = "
    CREATE TABLE shipments (id BIGINT PRIMARY KEY, status TEXT, version BIGINT) WITH (source = 'tms', upstream = 'public.shipments');
    CREATE TABLE stops (id BIGINT PRIMARY KEY, shipment_id BIGINT, status TEXT) WITH (source = 'tms', upstream = 'public.stops');
    CREATE MATERIALIZED VIEW per_status AS SELECT status, count(*) AS n, sum(version) AS versions FROM shipments GROUP BY status;
    CREATE MATERIALIZED VIEW stops_per_shipment AS
        SELECT s.id, s.status, count(st.id) AS stops FROM shipments s JOIN stops st ON st.shipment_id = s.id GROUP BY s.id, s.status;
    CREATE MATERIALIZED VIEW shipment_rows AS SELECT after.id, after.version FROM changes(shipments) WHERE after.id IS NOT NULL;
";

/// Each view, and the same query for DataFusion to recompute from the tables.
const ORACLES: &[(&str, &str)] = &[
    ("SELECT * FROM per_status", "SELECT status, count(*) AS n, sum(version) AS versions FROM shipments GROUP BY status"),
    (
        "SELECT * FROM stops_per_shipment",
        "SELECT s.id, s.status, count(st.id) AS stops FROM shipments s JOIN stops st ON st.shipment_id = s.id GROUP BY s.id, s.status",
    ),
];

async fn applied(client: &tokio_postgres::Client) -> i64 {
    let rows = common::rows(client, "SELECT transactions FROM velocity_catalog.sources WHERE name = 'tms'").await;
    rows[0][0].as_deref().unwrap_or("0").parse().unwrap()
}

async fn sorted(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut rows = common::rows(client, sql).await;
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_ingestion_loses_and_repeats_nothing() {
    const FIRST: i64 = 6_000;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tms.jsonl");
    let data = dir.path().join("data");
    let mut history = History {
        rng: 0x9E37_79B9_7F4A_7C15,
        shipments: BTreeMap::new(),
        stops: BTreeMap::new(),
        versions: BTreeMap::new(),
        expected_after_rows: 0,
    };
    std::fs::write(&file, "").unwrap();

    let server = common::ServerProcess::start(&data);
    let client = common::connect(server.addr).await;
    client.batch_execute(&format!("CREATE SOURCE tms WITH (connector = 'file', path = '{}')", file.display())).await.unwrap();
    client.batch_execute(PIPELINE).await.unwrap();
    history.write(&file, 0, FIRST);

    // Kill it in the middle of the backlog.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let at_kill = loop {
        let n = applied(&client).await;
        if n >= 500 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    drop(client);
    server.kill9();
    assert!((500..FIRST).contains(&at_kill), "killed mid-ingestion (after {at_kill} of {FIRST} transactions)");

    // More arrives while it is down; then it restarts and catches up.
    history.write(&file, FIRST, FIRST + 500);
    let server = common::ServerProcess::start(&data);
    let client = common::connect(server.addr).await;
    client.batch_execute("FLUSH").await.unwrap();

    let mut expected: Vec<Vec<Option<String>>> = history
        .shipments
        .iter()
        .map(|(id, (status, version))| vec![Some(id.to_string()), Some(status.clone()), Some(version.to_string())])
        .collect();
    expected.sort();
    assert_eq!(sorted(&client, "SELECT id, status, version FROM shipments").await, expected);
    assert_eq!(common::rows(&client, "SELECT count(*) FROM stops").await[0][0], Some(history.stops.len().to_string()));
    for (view, query) in ORACLES {
        assert_eq!(sorted(&client, view).await, sorted(&client, query).await, "{view} equals its recompute");
    }
    // Every net change of a shipment shows up in changes() exactly once.
    let n = Some(history.expected_after_rows.to_string());
    let all = common::rows(&client, "SELECT count(*) FROM shipment_rows").await;
    let distinct = common::rows(&client, "SELECT count(*) FROM (SELECT DISTINCT id, version FROM shipment_rows) d").await;
    assert_eq!((&all[0][0], &distinct[0][0]), (&n, &n), "no change lost or applied twice");
    server.terminate();
}

/// Views of several shapes over the source's tables, each with the query DataFusion
/// recomputes it from: aggregates, joins, a view over a view, and `changes()` events.
fn many_views(partitions: i64) -> Vec<(String, String)> {
    let mut views = Vec::new();
    for i in 0..partitions {
        views.push((
            format!("agg_{i}"),
            format!("SELECT status, count(*) AS n, sum(version) AS versions FROM shipments WHERE id % {partitions} = {i} GROUP BY status"),
        ));
        views.push((
            format!("joined_{i}"),
            format!("SELECT s.id, s.status, st.id AS stop_id, st.status AS stop_status FROM shipments s JOIN stops st ON st.shipment_id = s.id WHERE s.id % {partitions} = {i}"),
        ));
        views.push((format!("over_{i}"), format!("SELECT status, n * 2 AS twice FROM agg_{i} WHERE n > 1")));
        views.push((
            format!("events_{i}"),
            format!("SELECT after.id, after.version FROM changes(shipments) WHERE after.id IS NOT NULL AND after.id % {partitions} = {i}"),
        ));
    }
    views
}

/// Stop (SIGTERM, then kill -9) with thousands of transactions unread and many views: at
/// startup every view is restored before the source applies anything, so none misses a
/// transaction, and `changes()` holds every transition exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_with_a_backlog_restore_every_view_before_the_source_runs() {
    const PARTITIONS: i64 = 8;
    const BACKLOG: i64 = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tms.jsonl");
    let data = dir.path().join("data");
    let mut history = History {
        rng: 0x2545_F491_4F6C_DD1D,
        shipments: BTreeMap::new(),
        stops: BTreeMap::new(),
        versions: BTreeMap::new(),
        expected_after_rows: 0,
    };
    history.write(&file, 0, BACKLOG);
    let views = many_views(PARTITIONS);

    let server = common::ServerProcess::start(&data);
    let client = common::connect(server.addr).await;
    client.batch_execute(&format!("CREATE SOURCE tms WITH (connector = 'file', path = '{}')", file.display())).await.unwrap();
    client.batch_execute(&PIPELINE.lines().take(3).collect::<Vec<_>>().join("\n")).await.unwrap();
    for (name, query) in &views {
        client.batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {query}")).await.unwrap();
    }

    let mut server = Some(server);
    let mut client = client;
    for stop in ["SIGTERM", "kill -9"] {
        let before = applied(&client).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let at_stop = loop {
            let n = applied(&client).await;
            if n >= before + 200 || std::time::Instant::now() > deadline {
                break n;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        let lag = common::rows(&client, "SELECT lag FROM velocity_catalog.sources WHERE name = 'tms'").await;
        drop(client);
        match stop {
            "SIGTERM" => server.take().unwrap().terminate(),
            _ => server.take().unwrap().kill9(),
        }
        let lag: u64 = lag[0][0].as_deref().unwrap_or("0").parse().unwrap();
        eprintln!("{stop} after {at_stop} transactions applied since the start, {lag} bytes unread");
        assert!(lag > 0, "{stop} came with transactions still unread");
        let restarted = common::ServerProcess::start(&data);
        client = common::connect(restarted.addr).await;
        server = Some(restarted);
    }
    client.batch_execute("FLUSH").await.unwrap();
    for (name, query) in &views {
        if name.starts_with("events_") {
            continue;
        }
        assert_eq!(sorted(&client, &format!("SELECT * FROM {name}")).await, sorted(&client, query).await, "{name} equals its recompute");
    }
    let union_all = (0..PARTITIONS).map(|i| format!("SELECT id, version FROM events_{i}")).collect::<Vec<_>>().join(" UNION ALL ");
    let n = Some(history.expected_after_rows.to_string());
    let all = common::rows(&client, &format!("SELECT count(*) FROM ({union_all}) e")).await;
    let distinct = common::rows(&client, &format!("SELECT count(*) FROM (SELECT DISTINCT id, version FROM ({union_all}) e) d")).await;
    assert_eq!((&all[0][0], &distinct[0][0]), (&n, &n), "every transition once, none lost or repeated");
    server.take().unwrap().terminate();
}
