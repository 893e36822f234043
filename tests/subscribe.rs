//! SUBSCRIBE with real clients: tokio-postgres COPY OUT, psql, DECLARE/FETCH; a slow
//! subscriber never stalls writers.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;

async fn setup(server: &common::TestServer) -> tokio_postgres::Client {
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE shipments (id INT PRIMARY KEY, status TEXT);
             CREATE MATERIALIZED VIEW active AS SELECT id, status FROM shipments WHERE status <> 'DELIVERED';
             INSERT INTO shipments VALUES (1, 'PLANNED');",
        )
        .await
        .unwrap();
    client
}

/// Parse `tick\tdiff\tid\tstatus` lines.
fn parse(line: &str) -> (i64, i64, String, String) {
    let f: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
    (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].to_string(), f[3].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_out_streams_exact_diffs_in_tick_order() {
    let server = common::TestServer::start().await;
    let writer = setup(&server).await;
    let reader = server.client().await;
    let stream = reader.copy_out("COPY (SUBSCRIBE TO active) TO STDOUT").await.unwrap();
    let mut stream = Box::pin(stream);

    writer.batch_execute("INSERT INTO shipments VALUES (2, 'LOADING')").await.unwrap();
    writer.batch_execute("UPDATE shipments SET status = 'DEPARTED' WHERE id = 1").await.unwrap();
    writer.batch_execute("UPDATE shipments SET status = 'DELIVERED' WHERE id = 2").await.unwrap();
    // One transaction, one tick; a DELETE+INSERT of a key is an update.
    writer
        .batch_execute("BEGIN; INSERT INTO shipments VALUES (3, 'PLANNED'); DELETE FROM shipments WHERE id = 1; INSERT INTO shipments VALUES (1, 'ARRIVED'); COMMIT;")
        .await
        .unwrap();
    // A transaction that changes nothing visible produces no diff.
    writer.batch_execute("BEGIN; INSERT INTO shipments VALUES (9, 'X'); DELETE FROM shipments WHERE id = 9; COMMIT;").await.unwrap();

    let mut lines = Vec::new();
    while lines.len() < 8 {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.expect("rows arrive").unwrap().unwrap();
        for l in String::from_utf8(chunk.to_vec()).unwrap().lines() {
            lines.push(parse(l));
        }
    }
    // Group by tick; within a tick the order of rows is unspecified.
    type Rows = Vec<(i64, String, String)>;
    let mut ticks: Vec<(i64, Rows)> = Vec::new();
    for (tick, diff, id, status) in lines {
        match ticks.last_mut() {
            Some((t, rows)) if *t == tick => rows.push((diff, id, status)),
            _ => ticks.push((tick, vec![(diff, id, status)])),
        }
    }
    for (_, rows) in &mut ticks {
        rows.sort();
    }
    assert!(ticks.windows(2).all(|w| w[0].0 < w[1].0), "ticks increase: {ticks:?}");
    let s = |d: i64, id: &str, st: &str| (d, id.to_string(), st.to_string());
    let diffs: Vec<Vec<(i64, String, String)>> = ticks.into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        diffs,
        vec![
            vec![s(1, "1", "PLANNED")],
            vec![s(1, "2", "LOADING")],
            vec![s(-1, "1", "PLANNED"), s(1, "1", "DEPARTED")],
            vec![s(-1, "2", "LOADING")],
            vec![s(-1, "1", "DEPARTED"), s(1, "1", "ARRIVED"), s(1, "3", "PLANNED")],
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_streams_copy_subscribe_until_ctrl_c() {
    let server = common::TestServer::start().await;
    let writer = setup(&server).await;
    // psql block-buffers stdout into a pipe (a terminal gets every line at once); stdbuf
    // makes it line-buffered like a terminal.
    let mut psql = Command::new("stdbuf")
        .args(["-oL", "psql", "-X", "-h", "127.0.0.1", "-p", &server.addr.port().to_string(), "-U", "velocity", "velocity"])
        .args(["-c", "COPY (SUBSCRIBE TO active WITH (SNAPSHOT = false)) TO STDOUT"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let stdout = psql.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // psql connects asynchronously; keep writing until its first line shows up.
    let mut first = None;
    for i in 0..50 {
        writer.batch_execute(&format!("INSERT INTO shipments VALUES ({}, 'LOADING')", 100 + i)).await.unwrap();
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            first = Some(line);
            break;
        }
    }
    let line = first.expect("psql printed a changefeed row");
    let (_, diff, id, status) = parse(&line);
    assert_eq!((diff, status.as_str()), (1, "LOADING"));
    assert!(id.parse::<i64>().unwrap() >= 100, "snapshot was skipped: {line}");
    // Ctrl-C: psql sends a cancel request on a new connection and reports the server's answer.
    let interrupted = Command::new("kill").args(["-INT", &psql.id().to_string()]).status().expect("kill");
    assert!(interrupted.success());
    // Should the cancel be ignored, psql would stream forever: end it after a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = psql.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = psql.kill();
            break psql.wait().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut psql.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("canceling statement due to user request"), "psql stderr: {stderr}");
    assert!(!status.success(), "psql reports the cancelled COPY as failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_fetch_with_timeout() {
    let server = common::TestServer::start().await;
    let writer = setup(&server).await;
    let reader = server.client().await;
    reader.batch_execute("DECLARE c CURSOR FOR SUBSCRIBE active WITH (PROGRESS = false)").await.unwrap();
    let snapshot = common::rows(&reader, "FETCH ALL c WITH (timeout = '1s')").await;
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0][1..], [Some("1".into()), Some("1".into()), Some("PLANNED".into())]);
    // Nothing new: the timeout returns an empty result instead of waiting forever.
    assert!(common::rows(&reader, "FETCH 10 c WITH (timeout = '200ms')").await.is_empty());
    writer.batch_execute("INSERT INTO shipments VALUES (2, 'LOADING'), (3, 'LOADING')").await.unwrap();
    let next = common::rows(&reader, "FETCH 1 c WITH (timeout = '5s')").await;
    assert_eq!(next.len(), 1);
    let rest = common::rows(&reader, "FETCH ALL c WITH (timeout = '1s')").await;
    assert_eq!(rest.len(), 1);
    reader.batch_execute("CLOSE c").await.unwrap();
}

/// The SQLSTATE of a failed statement.
fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_ends_a_subscription_and_keeps_the_session() {
    let server = common::TestServer::start().await;
    let writer = setup(&server).await;
    let reader = server.client().await;

    // A COPY OUT of SUBSCRIBE that is streaming: the snapshot row has arrived.
    let mut stream = Box::pin(reader.copy_out("COPY (SUBSCRIBE TO active) TO STDOUT").await.unwrap());
    let first = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.expect("snapshot arrives").unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("PLANNED"), "{first:?}");
    reader.cancel_token().cancel_query(tokio_postgres::NoTls).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        }
    })
    .await
    .expect("the cancelled COPY ends");
    let e = ended.expect("the COPY ends with an error, not CopyDone");
    assert_eq!(sqlstate(&e), Some("57014"), "{e:?}");
    drop(stream);
    // The session takes the next statement.
    let n: i64 = reader.query_one("SELECT count(*) FROM active", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);

    // A FETCH that would wait a minute for rows is cancelled too; the cursor stays open.
    reader.batch_execute("DECLARE c CURSOR FOR SUBSCRIBE active WITH (SNAPSHOT = false)").await.unwrap();
    let token = reader.cancel_token();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let started = std::time::Instant::now();
    let e = reader.simple_query("FETCH ALL c WITH (timeout = '60s')").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("57014"), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "cancelled, not timed out");
    cancel.await.unwrap();
    writer.batch_execute("INSERT INTO shipments VALUES (2, 'LOADING')").await.unwrap();
    let rows = common::rows(&reader, "FETCH ALL c WITH (timeout = '5s')").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    // The same over the extended protocol (drivers such as pgjdbc and node-postgres).
    let token = reader.cancel_token();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let e = reader.query("FETCH ALL c WITH (timeout = '60s')", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("57014"), "{e:?}");
    cancel.await.unwrap();
    // A cancel with no statement running changes nothing.
    reader.cancel_token().cancel_query(tokio_postgres::NoTls).await.unwrap();
    assert_eq!(common::rows(&reader, "SELECT id FROM active").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_never_stalls_writers() {
    let server = common::TestServer::start().await;
    let writer = setup(&server).await;
    let slow = server.client().await;
    // Open a changefeed and never read it.
    let stream = slow.copy_out("COPY (SUBSCRIBE TO active) TO STDOUT").await.unwrap();
    let mut stream = Box::pin(stream);
    // Large rows, so the unread changefeed outgrows the socket buffers and really lags.
    let insert = writer.prepare("INSERT INTO shipments VALUES ($1, $2)").await.unwrap();
    let status = "x".repeat(20_000);
    tokio::time::timeout(Duration::from_secs(300), async {
        for i in 10..3000i32 {
            writer.execute(&insert, &[&i, &status]).await.unwrap();
        }
    })
    .await
    .expect("writers are not stalled by a subscriber that does not read");
    // The slow subscriber is told it fell behind.
    let mut error = None;
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
        if let Err(e) = item {
            error = Some(e);
            break;
        }
    }
    let error = error.expect("the lagging subscriber gets an error");
    assert!(error.to_string().contains("fell") || format!("{error:?}").contains("fell"), "{error:?}");
}
