//! Statements and sessions at Postgres' limits, against the real binary: a 1 MB
//! `application_name`, a `SELECT` of 65,535 parameters, 30,000 prepared statements. None of
//! them stalls the server, and what a session held is given back when it ends.

mod common;

use std::time::Duration;

use common::ServerProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn code(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// Within a bound far above the time it takes: a stalled session fails the test.
async fn answered<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f).await.unwrap_or_else(|_| panic!("{what}: no answer"))
}

#[tokio::test]
async fn a_huge_application_name_is_cut_to_63_bytes_as_in_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&common::data_dir(&dir));
    let client = common::connect(server.addr).await;
    let name = "x".repeat(1 << 20);
    answered("SET", client.simple_query(&format!("SET application_name = '{name}'"))).await.expect("SET");
    let shown = answered("SHOW", client.query_one("SHOW application_name", &[])).await.expect("SHOW");
    assert_eq!(shown.get::<_, String>(0), "x".repeat(63));
    // Multi-byte characters are not split.
    client.simple_query(&format!("SET application_name = '{}'", "é".repeat(40))).await.expect("SET");
    let shown = client.query_one("SHOW application_name", &[]).await.expect("SHOW");
    assert_eq!(shown.get::<_, String>(0), "é".repeat(31));
    assert_eq!(client.query_one("SELECT 1::int", &[]).await.expect("SELECT").get::<_, i32>(0), 1);
}

#[tokio::test]
async fn show_without_a_name_is_a_syntax_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&common::data_dir(&dir));
    let client = common::connect(server.addr).await;
    let e = client.simple_query("SHOW >= <>").await.expect_err("no parameter");
    assert_eq!(code(&e).as_deref(), Some("42601"), "{e}");
    assert!(client.simple_query("SELECT 1").await.is_ok(), "the session goes on");
}

#[tokio::test]
async fn target_lists_longer_than_postgres_takes_get_54011_and_others_keep_answering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&common::data_dir(&dir));
    let client = common::connect(server.addr).await;
    let other = common::connect(server.addr).await;
    let params = (1..=65_535).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
    let wide = tokio::spawn(async move { client.prepare(&format!("SELECT {params}")).await.map(|_| ()) });
    // Another session, and a new connection, answer meanwhile.
    answered("other session", other.simple_query("SELECT 1")).await.expect("SELECT 1");
    let third = answered("new connection", common::connect(server.addr)).await;
    answered("new connection", third.simple_query("SELECT 1")).await.expect("SELECT 1");
    let e = answered("the wide Parse", wide).await.expect("task").expect_err("65,535 columns");
    assert_eq!(code(&e).as_deref(), Some("54011"), "{e}");

    let columns = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let e = third.simple_query(&format!("SELECT {}", columns(1665))).await.expect_err("1,665 columns");
    assert_eq!(code(&e).as_deref(), Some("54011"), "{e}");
    let rows = third.query(&format!("SELECT {}", columns(1664)), &[]).await.expect("1,664 columns, as Postgres takes");
    assert_eq!(rows[0].len(), 1664);
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

#[tokio::test]
async fn prepared_statements_are_given_back_when_their_session_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&common::data_dir(&dir));
    let watcher = common::connect(server.addr).await;
    watcher.simple_query("SELECT 1").await.expect("SELECT 1");
    let before = rss_kb(server.pid());

    // One raw session Parses 30,000 named statements, pipelined, then Syncs.
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let mut batch = common::startup_message(&[("user", "velocity"), ("database", "velocity")]);
    for i in 0..30_000 {
        let mut body = format!("s{i}\0SELECT {i} AS n, $1::int + 1 AS x\0").into_bytes();
        body.extend(0u16.to_be_bytes());
        batch.extend(message(b'P', &body));
    }
    batch.extend(message(b'S', &[]));
    socket.write_all(&batch).await.expect("send");
    let (mut ready, mut tail) = (0, Vec::new());
    let mut buf = vec![0u8; 1 << 16];
    // Two ReadyForQuery: after the startup and after the Sync.
    while ready < 2 {
        let n = answered("the Parses", socket.read(&mut buf)).await.expect("read");
        assert!(n > 0, "the server closed the session");
        tail.extend_from_slice(&buf[..n]);
        ready += tail.windows(6).filter(|w| *w == b"Z\0\0\0\x05I").count();
        // Keep what could begin a ReadyForQuery that the next read completes.
        tail.drain(..tail.len().saturating_sub(5));
    }
    let held = rss_kb(server.pid());
    println!("RSS before {before} kB, with 30,000 prepared statements {held} kB");
    assert!(held > before + 100_000, "the statements took memory ({before} -> {held} kB)");

    socket.write_all(&message(b'X', &[])).await.expect("terminate");
    drop(socket);
    // Back near where it started once the session has ended.
    let mut after = held;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = rss_kb(server.pid());
        if after < before + (held - before) / 4 {
            break;
        }
    }
    println!("RSS after the session ended: {after} kB");
    assert!(after < before + (held - before) / 4, "RSS stayed at {after} kB (before {before}, held {held})");
    watcher.simple_query("SELECT 1").await.expect("the server answers");
}

/// One query past its memory (`--statement-memory 64MB`) fails with 53200; its session and
/// the others go on, and RSS stays far below what the query would have taken.
#[tokio::test]
async fn a_query_past_its_memory_gets_53200_and_the_server_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(&common::data_dir(&dir), &["--statement-memory", "64MB"]);
    let client = common::connect(server.addr).await;
    let other = common::connect(server.addr).await;
    // 30 million values gathered into one array: ~240 MB of state, refused at 64 MB.
    let big = "SELECT cardinality(array_agg(x)) FROM generate_series(1, 30000000) t(x)";
    let e = answered("array_agg", client.simple_query(big)).await.expect_err("over the statement's memory");
    assert_eq!(code(&e).as_deref(), Some("53200"), "{e}");
    assert!(e.as_db_error().is_some_and(|d| d.message().starts_with("out of memory")), "{e}");
    // The extended protocol runs in a pool of its own too.
    let e = answered("prepared array_agg", client.query(big, &[])).await.expect_err("over the statement's memory");
    assert_eq!(code(&e).as_deref(), Some("53200"), "{e}");
    let n: i64 = answered("small", client.query_one("SELECT count(*) FROM generate_series(1, 3000000) t(x)", &[])).await.unwrap().get(0);
    assert_eq!(n, 3_000_000, "streaming needs no reservation and the session goes on");
    let n: i64 = answered("other", other.query_one("SELECT cardinality(array_agg(x))::bigint FROM generate_series(1, 100000) t(x)", &[]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100_000);
    let rss = rss_kb(server.pid());
    assert!(rss < 1_000_000, "RSS {rss} kB");
}

/// Values over Postgres' size limits are refused before they are built (54000): one
/// `repeat('x', 2147483647)` took RSS past 8 GB before.
#[tokio::test]
async fn values_over_postgres_size_limits_get_54000() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&common::data_dir(&dir));
    let client = common::connect(server.addr).await;
    for (sql, message) in [
        ("SELECT length(repeat('x', 2147483647))", "requested length too large"),
        ("SELECT length(lpad('x', 300000000))", "requested length too large"),
        ("SELECT length(rpad('x', 2000000000, 'ab'))", "requested length too large"),
        ("SELECT cardinality(array_repeat(1, 200000000))", "array size exceeds the maximum allowed (134217727)"),
        ("SELECT cardinality(range(1, 9223372036854775807))", "array size exceeds the maximum allowed (134217727)"),
        // Each value fits; the rows of one batch together would be 2 GB.
        ("SELECT length(repeat('x', 500000000 + x)) FROM generate_series(1, 4) t(x)", "requested length too large"),
    ] {
        let e = answered(sql, client.simple_query(sql)).await.expect_err(sql);
        assert_eq!(code(&e).as_deref(), Some("54000"), "{sql}: {e}");
        assert_eq!(e.as_db_error().map(|d| d.message()), Some(message), "{sql}");
    }
    let rss = rss_kb(server.pid());
    assert!(rss < 1_000_000, "RSS {rss} kB");
    // Within the limits they answer as before.
    let n: i32 = client.query_one("SELECT length(repeat('ab', 1000))::int", &[]).await.unwrap().get(0);
    assert_eq!(n, 2000);
    let n: i32 = client.query_one("SELECT length(lpad('x', 10, 'ab'))::int", &[]).await.unwrap().get(0);
    assert_eq!(n, 10);
}

/// `sum(bigint)` out of bigint's range is 22003 ad hoc, with and without GROUP BY, as in a
/// view (DataFusion wrapped it around: two maximal bigints summed to -2).
#[tokio::test]
async fn an_ad_hoc_bigint_sum_out_of_range_gets_22003() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&common::data_dir(&dir));
    let client = common::connect(server.addr).await;
    let values = "(VALUES (1, 9223372036854775807::bigint), (1, 9223372036854775807::bigint), (2, 5::bigint)) t(g, x)";
    for sql in [format!("SELECT sum(x) FROM {values}"), format!("SELECT g, sum(x) FROM {values} GROUP BY g")] {
        let e = client.simple_query(&sql).await.expect_err(&sql);
        assert_eq!(code(&e).as_deref(), Some("22003"), "{sql}: {e}");
    }
    let rows = client.query(&format!("SELECT g, sum(x) FROM {values} WHERE g = 2 OR x < 0 GROUP BY g"), &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(1), 5);
    let sum: i64 = client.query_one("SELECT sum(x) FROM generate_series(-5, 100) t(x)", &[]).await.unwrap().get(0);
    assert_eq!(sum, 5035);
    let sum: f64 = client.query_one("SELECT sum(x::double precision) FROM generate_series(1, 4) t(x)", &[]).await.unwrap().get(0);
    assert_eq!(sum, 10.0);
}
