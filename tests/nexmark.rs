//! Nexmark, differentially: the generator's `scenario = 'nexmark'` feeds person, auction and
//! bid; every query of queries/nexmark that Velocity supports is created as a view, and after
//! FLUSH each view must equal DataFusion running the view's query ad hoc over the same tables.
//! Queries marked unsupported must still be refused (so the marks stay true).

mod common;

use velocity::tools::bench::{NEXMARK_QUERIES, nexmark_source_sql};

/// Events: 60 epochs of 50 (120 people, 360 auctions, 5,520 bids). At 200 events/s of event
/// time they span 30 s: three 10-second tumbling windows, 15 hopping ones.
const EVENTS: u64 = 6_000;

/// A cell as compared: floats to 9 significant digits, since an incrementally maintained
/// average and a recomputed one may sum in different orders.
fn canonical(cell: Option<String>) -> Option<String> {
    cell.map(|c| match c.parse::<f64>() {
        Ok(x) if c.contains(['.', 'e']) => format!("{x:.9e}"),
        _ => c,
    })
}

async fn sorted_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut rows: Vec<Vec<Option<String>>> =
        common::rows(client, sql).await.into_iter().map(|r| r.into_iter().map(canonical).collect()).collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_views_equal_their_queries_recomputed() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    for statement in velocity::sql::split_statements(&nexmark_source_sql("nx", EVENTS, ", event_rate = '200'")) {
        client.batch_execute(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e:?}"));
    }
    let mut supported = Vec::new();
    for q in NEXMARK_QUERIES {
        let created = client.batch_execute(q.create()).await;
        match (q.unsupported(), created) {
            (None, Ok(())) => supported.push(q),
            (None, Err(e)) => panic!("{}: {e:?}\n{}", q.name, q.create()),
            (Some(why), Ok(())) => panic!("{} is marked unsupported ({why}) but its view was created", q.name),
            (Some(_), Err(_)) => {}
        }
    }
    client.batch_execute("FLUSH").await.expect("FLUSH");

    // The tables hold every event, in the reference proportions.
    let count = |table: &str| format!("SELECT count(*) FROM {table}");
    for (table, n) in [("person", EVENTS / 50), ("auction", EVENTS / 50 * 3), ("bid", EVENTS / 50 * 46)] {
        assert_eq!(common::rows(&client, &count(table)).await, vec![vec![Some(n.to_string())]], "{table}");
    }
    let span = common::rows(&client, "SELECT to_unixtime(max(date_time)) - to_unixtime(min(date_time)) FROM bid").await;
    assert_eq!(span, vec![vec![Some("29".to_string())]], "event time spans 30 s");

    for q in &supported {
        let view = sorted_rows(&client, &format!("SELECT * FROM {}", q.view())).await;
        let recomputed = sorted_rows(&client, &q.query()).await;
        assert!(!view.is_empty(), "{}: the view is empty, so the check proves little", q.name);
        assert_eq!(view.len(), recomputed.len(), "{}: row counts differ", q.name);
        for (v, r) in view.iter().zip(&recomputed) {
            assert_eq!(v, r, "{}: first differing row", q.name);
        }
        eprintln!("{}: {} rows equal", q.name, view.len());
    }
    let names: Vec<&str> = supported.iter().map(|q| q.name).collect();
    eprintln!("checked: {names:?}");
}

/// `EMIT ON WINDOW CLOSE` frees the state of closed windows: over 40 s of bids in one-second
/// windows, the view's operator state (`velocity_catalog.relations.state_bytes`, read while the
/// source runs and at the end) stays the size of the few windows bid's 4-second watermark has
/// not closed, while the same aggregate emitting updates keeps every window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_windows_free_their_state() {
    const EVENTS: u64 = 40_000;
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let view = |name: &str, emit: &str| {
        format!(
            "CREATE MATERIALIZED VIEW {name} AS SELECT auction, window_end, count(*) AS bids, max(price) AS top \
             FROM TUMBLE(bid, date_time, INTERVAL '1' SECOND) GROUP BY auction, window_end {emit}"
        )
    };
    for statement in velocity::sql::split_statements(&nexmark_source_sql("nx", EVENTS, ", event_rate = '1000'")) {
        client.batch_execute(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e:?}"));
    }
    client.batch_execute(&view("final_windows", "EMIT ON WINDOW CLOSE")).await.expect("final_windows");
    client.batch_execute(&view("open_windows", "")).await.expect("open_windows");
    let state = |name: &'static str| {
        let client = &client;
        async move {
            let sql = format!("SELECT state_bytes FROM velocity_catalog.relations WHERE name = '{name}'");
            client.query_one(&sql, &[]).await.expect("state_bytes").get::<_, Option<i64>>(0).expect("a view has state")
        }
    };
    // Samples while the events arrive.
    let mut samples = Vec::new();
    loop {
        let events: i64 = client.query_one("SELECT events FROM velocity_catalog.sources WHERE name = 'nx'", &[]).await.unwrap().get(0);
        samples.push(state("final_windows").await);
        if events as u64 >= EVENTS {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    client.batch_execute("FLUSH").await.expect("FLUSH");
    let (last, open) = (state("final_windows").await, state("open_windows").await);
    let closed: i64 = client.query_one("SELECT count(DISTINCT window_end) FROM final_windows", &[]).await.unwrap().get(0);
    let open_windows: i64 = client.query_one("SELECT count(DISTINCT window_end) FROM open_windows", &[]).await.unwrap().get(0);
    eprintln!(
        "{} samples of final_windows' state, max {} bytes; at the end {last} bytes ({closed} windows closed), \
         the view that updates {open} bytes ({open_windows} windows)",
        samples.len(),
        samples.iter().max().unwrap()
    );
    assert_eq!(open_windows, 40, "40 s of one-second windows");
    assert!(closed >= 35, "the watermark, 4 s behind, closed all but the last windows: {closed}");
    // The open windows are the last 4 or 5 of 40: their state is a small part of all windows'.
    assert!(last * 4 < open, "closed windows' state is freed: {last} bytes against {open} for every window");
    let max = *samples.iter().max().unwrap();
    assert!(max <= last * 3, "state stays flat while events arrive: up to {max} bytes, {last} at the end");
}
