//! `--metrics`: scrape `/metrics` while writes commit and watch the counters move.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_during_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start_with(dir.path(), &["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics.expect("metrics address printed");
    let client = common::connect(server.addr).await;
    client
        .batch_execute(
            "CREATE TABLE events (id BIGINT PRIMARY KEY, kind TEXT);
             CREATE MATERIALIZED VIEW per_kind AS SELECT kind, count(*) AS n FROM events GROUP BY kind;",
        )
        .await
        .unwrap();
    let before = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
    let ticks_before = sample(&before, "velocity_ticks_total").expect("velocity_ticks_total");
    assert_eq!(sample(&before, "velocity_relation_rows{name=\"events\",kind=\"table\"}"), Some(0.0), "{before}");

    // Write in the background while scraping: the tick counter never goes back and ends higher.
    let writer = tokio::spawn(async move {
        for i in 0..40i64 {
            client.execute("INSERT INTO events VALUES ($1, $2)", &[&i, &format!("k{}", i % 3)]).await.unwrap();
        }
        client
    });
    let mut last = ticks_before;
    let mut scrapes = 0;
    while !writer.is_finished() {
        let body = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
        let ticks = sample(&body, "velocity_ticks_total").unwrap();
        assert!(ticks >= last, "ticks went back: {last} -> {ticks}");
        last = ticks;
        scrapes += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let client = writer.await.unwrap();
    client.batch_execute("FLUSH").await.unwrap();
    let after = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
    let ticks_after = sample(&after, "velocity_ticks_total").unwrap();
    assert!(ticks_after > ticks_before, "ticks moved: {ticks_before} -> {ticks_after}");
    assert_eq!(sample(&after, "velocity_relation_rows{name=\"events\",kind=\"table\"}"), Some(40.0), "{after}");
    assert_eq!(sample(&after, "velocity_relation_rows{name=\"per_kind\",kind=\"materialized view\"}"), Some(3.0), "{after}");
    let count = sample(&after, "velocity_tick_duration_seconds_count").unwrap();
    assert!(count > 0.0, "tick latency histogram has samples: {after}");
    assert!(sample(&after, "velocity_relation_last_change_tick{name=\"events\"}").unwrap() > ticks_before, "{after}");
    assert!(scrapes >= 1);
    println!("{scrapes} scrapes during writes; ticks {ticks_before} -> {ticks_after}");
}
