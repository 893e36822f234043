//! DDL goes through one coordinator: concurrent statements that create one name cannot both
//! succeed, and what they leave behind restores cleanly.

mod common;

use futures::future::join_all;

/// Run `sql` on `n` connections at once; the SQLSTATE of each (None: it succeeded).
async fn race(addr: std::net::SocketAddr, n: usize, sql: &str) -> Vec<Option<String>> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(common::connect(addr).await);
    }
    // Every connection is open before any sends: the statements really overlap.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let runs = clients.into_iter().map(|client| {
        let barrier = barrier.clone();
        let sql = sql.to_string();
        tokio::spawn(async move {
            barrier.wait().await;
            client.batch_execute(&sql).await.err().map(|e| e.code().map(|c| c.code().to_string()).unwrap_or_else(|| e.to_string()))
        })
    });
    join_all(runs).await.into_iter().map(|r| r.expect("task")).collect()
}

fn exactly_one_succeeds(outcomes: &[Option<String>], code: &str, what: &str) {
    let ok = outcomes.iter().filter(|o| o.is_none()).count();
    assert_eq!(ok, 1, "{what}: exactly one CREATE succeeds, got {outcomes:?}");
    assert!(outcomes.iter().flatten().all(|c| c == code), "{what}: the others fail with {code}, got {outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicate_creates_one_wins_and_restart_restores() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::data_dir(&dir);
    let server = common::ServerProcess::start(&data);
    const SESSIONS: usize = 8;

    let tables = race(server.addr, SESSIONS, "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)").await;
    exactly_one_succeeds(&tables, "42P07", "CREATE TABLE t");

    let client = common::connect(server.addr).await;
    client.batch_execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')").await.unwrap();
    let views = race(server.addr, SESSIONS, "CREATE MATERIALIZED VIEW v AS SELECT v, count(*) AS n FROM t GROUP BY v").await;
    exactly_one_succeeds(&views, "42P07", "CREATE MATERIALIZED VIEW v");

    // A table and a view of one name, at once: one namespace.
    let (a, b) = (common::connect(server.addr).await, common::connect(server.addr).await);
    let (table, view) = tokio::join!(
        a.batch_execute("CREATE TABLE w (id BIGINT PRIMARY KEY)"),
        b.batch_execute("CREATE MATERIALIZED VIEW w AS SELECT id FROM t")
    );
    let loser = table.as_ref().err().or(view.as_ref().err()).and_then(|e| e.code()).map(|c| c.code().to_string());
    assert!(table.is_ok() != view.is_ok() && loser.as_deref() == Some("42P07"), "CREATE TABLE w: {table:?}, CREATE ... VIEW w: {view:?}");

    let path = dir.path().join("tms.jsonl");
    std::fs::write(&path, "").unwrap();
    let sources = race(
        server.addr,
        SESSIONS,
        &format!("CREATE SOURCE tms WITH (connector = 'file', path = '{}', format = 'debezium-json')", path.display()),
    )
    .await;
    exactly_one_succeeds(&sources, "42710", "CREATE SOURCE tms");

    // DROP racing CREATE of a view over the dropped table: either the view exists over a
    // live table, or the drop won and the CREATE failed.
    client.batch_execute("CREATE TABLE d (id BIGINT PRIMARY KEY)").await.unwrap();
    let drop = common::connect(server.addr).await;
    let create = common::connect(server.addr).await;
    let (dropped, created) =
        tokio::join!(drop.batch_execute("DROP TABLE d"), create.batch_execute("CREATE MATERIALIZED VIEW over_d AS SELECT id FROM d"));
    let relations = common::rows(&client, "SELECT name FROM velocity_catalog.relations WHERE name IN ('d', 'over_d') ORDER BY name").await;
    match (dropped.is_ok(), created.is_ok()) {
        // The view came first: DROP without CASCADE refuses (2BP01).
        (false, true) => assert_eq!(relations, vec![vec![Some("d".into())], vec![Some("over_d".into())]]),
        // The drop came first: the view's table does not exist (42P01).
        (true, false) => assert!(relations.is_empty(), "{relations:?}"),
        other => panic!("DROP TABLE d and CREATE ... over_d both {other:?}"),
    }

    let before = common::rows(&client, "SELECT name, kind FROM velocity_catalog.relations ORDER BY name").await;
    server.kill9();

    let server = common::ServerProcess::start(&data);
    let client = common::connect(server.addr).await;
    let after = common::rows(&client, "SELECT name, kind FROM velocity_catalog.relations ORDER BY name").await;
    assert_eq!(after, before, "the catalog after a restart");
    assert_eq!(
        common::rows(&client, "SELECT v, n FROM v ORDER BY v").await,
        vec![vec![Some("a".into()), Some("1".into())], vec![Some("b".into()), Some("1".into())]]
    );
    client.batch_execute("INSERT INTO t VALUES (3, 'a')").await.unwrap();
    assert_eq!(common::rows(&client, "SELECT n FROM v WHERE v = 'a'").await, vec![vec![Some("2".into())]]);
    let again = race(server.addr, 4, "CREATE TABLE t (id BIGINT PRIMARY KEY)").await;
    assert!(again.iter().all(|o| o.as_deref() == Some("42P07")), "t exists after the restart: {again:?}");
    server.terminate();
}
