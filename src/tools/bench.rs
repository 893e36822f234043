//! `velocity bench ...`: benchmarks that print a table and the command that reproduces it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;

use crate::dataflow::ChangeBatch;
use crate::engine::Commit;
use crate::server::Server;
use crate::sources::{AssemblerOutput, Decoder, TxnAssembler, TxnBoundaries};
use crate::tools::debezium_traffic;

#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// Incremental maintenance vs full recompute of a 3-table join + aggregate view,
    /// at each of the given sizes (orders rows).
    Incremental {
        /// Sizes in base rows (orders), comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
        rows: Vec<usize>,
        /// Small transactions to time per size.
        #[arg(long, default_value_t = 300)]
        transactions: usize,
        /// Full recomputes to time per size.
        #[arg(long, default_value_t = 3)]
        recomputes: usize,
    },
    /// Debezium JSON decode + transaction dedup throughput: in memory, and end to end
    /// through a file source into tables and a view.
    Source {
        /// Change events to generate (transactions of 3-10 events, two tables).
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
    },
    /// Update one stop of a load in a nested entity view over many loads; time from the
    /// UPDATE to a SUBSCRIBE client receiving the new load row.
    Subscribe {
        /// Loads (trips) in the view, 4 stops each.
        #[arg(long, default_value_t = 100_000)]
        loads: usize,
        /// Stop updates to time.
        #[arg(long, default_value_t = 300)]
        updates: usize,
    },
    /// A Kafka sink: rows through the outbox to a real broker (throughput), then single-row
    /// updates from commit to a Kafka consumer receiving them (latency).
    Sink {
        /// Bootstrap servers of a Kafka-protocol broker.
        #[arg(long)]
        brokers: String,
        /// Rows inserted, in transactions of `--batch` rows.
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Single-row updates to time.
        #[arg(long, default_value_t = 300)]
        updates: usize,
    },
    /// queries/velocity.sql fed from a Debezium JSON-lines file written by the TMS simulator,
    /// once per step limit: throughput, step latency and transactions per step, against the
    /// same binary decoding and deduplicating the same file in memory.
    Steps {
        /// Simulated TMS transactions in the file.
        #[arg(long, default_value_t = 15_000)]
        transactions: u64,
        /// Loads in flight in the simulator.
        #[arg(long, default_value_t = 1_000)]
        scale: usize,
        /// Most transactions per engine step, one run each; 0 is the adaptive default.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000,0")]
        limits: Vec<usize>,
    },
    /// The whole logistics pipeline (queries/velocity.sql) fed by the TMS simulator as fast as
    /// it goes, against recomputing every view from scratch every 5 seconds.
    Velocity {
        /// Loads in flight (about 2 shipments each).
        #[arg(long, default_value_t = 50_000)]
        scale: usize,
        /// Stop after this many change events.
        #[arg(long, default_value_t = 5_000_000)]
        events: u64,
        /// Offered load in simulated transactions per second; 0: as fast as it goes.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Seconds between full recomputes of every view (the MicroBatch way) in the same
        /// run; 0: none.
        #[arg(long, default_value_t = 5)]
        recompute_every: u64,
    },
    /// Nexmark (queries/nexmark/qN.sql) fed by the generator's `scenario = 'nexmark'` as fast
    /// as it goes: per query, events/s from creating the source to FLUSH returning with only
    /// that query's view, peak RSS, and DataFusion recomputing the query once over the final
    /// tables. Without --query, each query runs in its own process (its own peak RSS).
    Nexmark {
        /// One query of queries/nexmark (`q0` ... `q22`, `q6_group_top_n`, `q5_eowc`, `q7_eowc`); default: all of them.
        #[arg(long)]
        query: Option<String>,
        /// Nexmark events (1 person, 3 auctions, 46 bids per 50).
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Events per second the generator sends (its event time advances as fast); 0: as
        /// fast as it goes. Window-close latency means most under a rate the engine keeps up with.
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// The logistics pipeline in a server process killed with SIGKILL every few minutes:
    /// transactions, restarts, mismatched rows (0) and RSS over time, and every view at the
    /// end against a run that was never killed (see `tools::soak`).
    Soak {
        /// Simulated TMS transactions in all (at 50 per second, 180,000 is an hour).
        #[arg(long, default_value_t = 180_000)]
        transactions: u64,
        /// Offered load in simulated transactions per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Loads in flight.
        #[arg(long, default_value_t = 200)]
        scale: usize,
        /// Seconds between kills.
        #[arg(long, default_value_t = 180)]
        kill_every: u64,
    },
}

pub async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Incremental { rows, transactions, recomputes } => {
            println!(
                "velocity bench incremental --rows {} --transactions {transactions} --recomputes {recomputes}",
                rows.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",")
            );
            println!(
                "view: SELECT c.region, p.category, count(*), sum(o.qty) FROM orders o JOIN customers c ON o.customer_id = c.id JOIN products p ON o.product_id = p.id GROUP BY c.region, p.category\n"
            );
            let mut results = Vec::new();
            for n in rows {
                results.push(incremental(n, transactions, recomputes).await?);
            }
            println!(
                "\n| base rows | load s | view create s | txn p50 ms | txn p99 ms | txn max ms | recompute ms (median) | recompute / txn p50 | peak RSS MiB | RocksDB MiB |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|");
            for r in &results {
                println!(
                    "| {} | {:.1} | {:.1} | {:.3} | {:.3} | {:.3} | {:.0} | {:.0}x | {} | {} |",
                    r.rows,
                    r.load_s,
                    r.create_s,
                    r.p50_ms,
                    r.p99_ms,
                    r.max_ms,
                    r.recompute_ms,
                    r.recompute_ms / r.p50_ms,
                    r.rss_mib,
                    r.db_mib
                );
            }
            Ok(())
        }
        Bench::Source { events } => source(events).await,
        Bench::Velocity { scale, events, rate, recompute_every } => pipeline(scale, events, rate, recompute_every).await,
        Bench::Steps { transactions, scale, limits } => steps(transactions, scale, &limits).await,
        Bench::Subscribe { loads, updates } => subscribe_latency(loads, updates).await,
        Bench::Sink { brokers, rows, batch, updates } => sink(&brokers, rows, batch, updates).await,
        Bench::Nexmark { query, events, rate } => nexmark(query.as_deref(), events, rate).await,
        Bench::Soak { transactions, rate, scale, kill_every } => {
            let kill_every = Duration::from_secs(kill_every);
            crate::tools::soak::run(crate::tools::soak::SoakOptions { transactions, rate, scale, kill_every }).await
        }
    }
}

/// A server on a free loopback port over `data_dir`, a client connected to it, and its
/// connection string for more clients.
async fn local_server(data_dir: &std::path::Path) -> anyhow::Result<(Arc<Server>, tokio_postgres::Client, String)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (addr, server) = crate::server::spawn(data_dir, listener).await?;
    let conn = format!("host={} port={} user=velocity dbname=velocity", addr.ip(), addr.port());
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok((server, client, conn))
}

/// Decode + assemble throughput, in memory, on [`debezium_traffic::records`].
/// Returns (change events per second, MB of input per second).
pub fn decode_throughput(events: usize) -> (f64, f64) {
    let records = debezium_traffic::records(events);
    let bytes: usize = records.iter().map(|(_, r)| r.len()).sum();
    let change_events = records.iter().filter(|(_, r)| r.contains("\"op\":")).count();
    let bindings = debezium_traffic::bindings();
    let Ok(mut assembler) = TxnAssembler::new(bindings, TxnBoundaries::Metadata) else {
        return (0.0, 0.0);
    };
    let mut decoder = Decoder::new();
    let mut released = 0usize;
    let start = Instant::now();
    for (position, raw) in &records {
        let record = decoder.decode(Some(raw.as_bytes()));
        for output in assembler.push(position.clone(), raw.as_bytes(), record) {
            if let AssemblerOutput::CompleteTxn(txn) = output {
                released += txn.tables.len();
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    std::hint::black_box(released);
    (change_events as f64 / elapsed, bytes as f64 / 1e6 / elapsed)
}

/// `velocity bench source`: how fast Debezium traffic becomes applied transactions.
async fn source(events: usize) -> anyhow::Result<()> {
    println!("velocity bench source --events {events}");
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("traffic.jsonl");
    let debezium_traffic::TrafficFile { transactions, events, bytes } = debezium_traffic::write_file(&file, events)?;
    let (decode_eps, decode_mbps) = decode_throughput(events);
    eprintln!("in memory: {decode_eps:.0} events/s, {decode_mbps:.1} MB/s");
    let (_server, client, _) = local_server(&dir.path().join("data")).await?;
    client
        .batch_execute(&format!(
            "CREATE SOURCE traffic WITH (connector = 'file', path = '{}', transactions = 'metadata');
             {};
             CREATE MATERIALIZED VIEW by_status AS SELECT status, count(*) AS n, sum(weight) AS weight FROM shipments GROUP BY status;",
            file.display(),
            debezium_traffic::tables_sql("traffic").join(";\n")
        ))
        .await?;
    let started = Instant::now();
    loop {
        let row = client.query_one("SELECT transactions, errors FROM velocity_catalog.sources WHERE name = 'traffic'", &[]).await?;
        let (done, errors): (i64, i64) = (row.get(0), row.get(1));
        eprint!("\rapplied {done}/{transactions} transactions, {errors} dead letters, {:.0} s", started.elapsed().as_secs_f64());
        if done as usize >= transactions {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!();
    println!("\n| stage | events | transactions | MB | events/s | MB/s | transactions/s |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| decode + dedup (in memory) | {events} | {transactions} | {:.0} | {decode_eps:.0} | {decode_mbps:.1} | |",
        bytes as f64 / 1e6
    );
    println!(
        "| file source -> tables + view (one synced commit per step) | {events} | {transactions} | {:.0} | {:.0} | {:.1} | {:.0} |",
        bytes as f64 / 1e6,
        events as f64 / secs,
        bytes as f64 / 1e6 / secs,
        transactions as f64 / secs
    );
    println!("\npeak RSS {} MiB", peak_rss_mib());
    Ok(())
}

struct IncrementalResult {
    rows: usize,
    load_s: f64,
    create_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    recompute_ms: f64,
    rss_mib: u64,
    db_mib: u64,
}

/// Peak resident set size of this process, from /proc.
pub fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Deterministic pseudo-random numbers (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn sql(server: &Server, q: &str) -> anyhow::Result<Vec<RecordBatch>> {
    Ok(server.context.sql(q).await?.collect().await?)
}

async fn incremental(n: usize, transactions: usize, recomputes: usize) -> anyhow::Result<IncrementalResult> {
    let dir = tempfile::tempdir()?;
    let server = Server::open(dir.path()).await?;
    // The first superuser owns what the bench creates, as a `velocity` session would.
    let owner = server.engine.catalog().bootstrap_role().to_string();
    let customers = (n / 100).max(10);
    let products = (n / 1000).max(10);
    for ddl in [
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, region TEXT)",
        "CREATE TABLE products (id BIGINT PRIMARY KEY, category TEXT)",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT, product_id BIGINT, qty BIGINT)",
    ] {
        let stmt = datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser::new().parse(ddl)?.remove(0);
        server.coordinator.create_table(&owner, &stmt).await?;
    }
    let (ids, schemas) = {
        let catalog = server.engine.catalog();
        let r = |name: &str| catalog.get(name).map(|r| (r.id, r.schema.clone())).expect("table exists");
        let (c, o, p) = (r("customers"), r("orders"), r("products"));
        ([c.0, p.0, o.0], [c.1, p.1, o.1])
    };
    let started = Instant::now();
    let load = |id: u32, schema: SchemaRef, batch: Vec<arrow::array::ArrayRef>| {
        let rows = RecordBatch::try_new(schema, batch).expect("bench batch");
        server.engine.commit(Commit { changes: vec![(id, ChangeBatch::uniform(rows, 1))], ..Default::default() })
    };
    load(
        ids[0],
        schemas[0].clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..customers as i64)),
            Arc::new(StringArray::from_iter_values((0..customers).map(|i| format!("region-{}", i % 50)))),
        ],
    )
    .await?;
    load(
        ids[1],
        schemas[1].clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..products as i64)),
            Arc::new(StringArray::from_iter_values((0..products).map(|i| format!("category-{}", i % 20)))),
        ],
    )
    .await?;
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let mut qty = Vec::with_capacity(n);
    let mut customer_of = Vec::with_capacity(n);
    let mut product_of = Vec::with_capacity(n);
    for _ in 0..n {
        customer_of.push((rng.next() % customers as u64) as i64);
        product_of.push((rng.next() % products as u64) as i64);
        qty.push((rng.next() % 100) as i64);
    }
    let chunk = 200_000;
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        load(
            ids[2],
            schemas[2].clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(start as i64..end as i64)),
                Arc::new(Int64Array::from(customer_of[start..end].to_vec())),
                Arc::new(Int64Array::from(product_of[start..end].to_vec())),
                Arc::new(Int64Array::from(qty[start..end].to_vec())),
            ],
        )
        .await?;
        eprint!("\rloading {n} orders: {end}/{n}");
    }
    eprintln!();
    let load_s = started.elapsed().as_secs_f64();

    let query = "SELECT c.region, p.category, count(*) AS orders, sum(o.qty) AS qty FROM orders o JOIN customers c ON o.customer_id = c.id JOIN products p ON o.product_id = p.id GROUP BY c.region, p.category";
    let started = Instant::now();
    let stmt = datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser::new()
        .parse(&format!("CREATE MATERIALIZED VIEW sales AS {query}"))?
        .remove(0);
    server.coordinator.create_view(&owner, &stmt).await?;
    let create_s = started.elapsed().as_secs_f64();
    eprintln!("view created over {n} orders in {create_s:.1}s");

    // Small transactions: update one order's quantity and move another to a new customer.
    let mut latencies = Vec::with_capacity(transactions);
    let order_row = |i: usize, customer: i64, q: i64| {
        RecordBatch::try_new(
            schemas[2].clone(),
            vec![
                Arc::new(Int64Array::from(vec![i as i64])),
                Arc::new(Int64Array::from(vec![customer])),
                Arc::new(Int64Array::from(vec![product_of[i]])),
                Arc::new(Int64Array::from(vec![q])),
            ],
        )
    };
    for _ in 0..transactions {
        let i = (rng.next() % n as u64) as usize;
        let j = (rng.next() % n as u64) as usize;
        let new_q = (rng.next() % 100) as i64;
        let new_c = (rng.next() % customers as u64) as i64;
        let mut changes = vec![
            ChangeBatch::uniform(order_row(i, customer_of[i], qty[i])?, -1),
            ChangeBatch::uniform(order_row(i, customer_of[i], new_q)?, 1),
        ];
        qty[i] = new_q;
        if j != i {
            changes.push(ChangeBatch::uniform(order_row(j, customer_of[j], qty[j])?, -1));
            changes.push(ChangeBatch::uniform(order_row(j, new_c, qty[j])?, 1));
            customer_of[j] = new_c;
        }
        let changes = ChangeBatch::concat(&schemas[2], &changes)?;
        let t = Instant::now();
        server.engine.commit(Commit { changes: vec![(ids[2], changes)], ..Default::default() }).await?;
        latencies.push(t.elapsed());
    }
    latencies.sort();

    // The same view recomputed from scratch by DataFusion over the same tables.
    let mut recompute = Vec::new();
    let mut expected = None;
    for _ in 0..recomputes.max(1) {
        let t = Instant::now();
        let batches = sql(&server, query).await?;
        recompute.push(t.elapsed());
        expected = Some(batches);
    }
    recompute.sort();
    // Sanity: the maintained view equals the recompute.
    let count = |b: &[RecordBatch]| b.iter().map(|b| b.num_rows()).sum::<usize>();
    let view_rows = sql(&server, "SELECT * FROM sales").await?;
    anyhow::ensure!(count(&view_rows) == count(expected.as_deref().unwrap_or_default()), "view and recompute differ in size");
    let diff = sql(
        &server,
        &format!(
            "SELECT count(*) AS n FROM ((SELECT * FROM sales EXCEPT ALL ({query})) UNION ALL (({query}) EXCEPT ALL SELECT * FROM sales)) d"
        ),
    )
    .await?;
    let mismatches = diff[0].column(0).as_any().downcast_ref::<Int64Array>().map(|a| a.value(0)).unwrap_or(-1);
    anyhow::ensure!(mismatches == 0, "view differs from recompute in {mismatches} rows");

    Ok(IncrementalResult {
        rows: n,
        load_s,
        create_s,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: percentile(&latencies, 1.0),
        recompute_ms: percentile(&recompute, 0.5),
        rss_mib: peak_rss_mib(),
        db_mib: dir_size(dir.path()) / (1024 * 1024),
    })
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// `velocity bench velocity`: the pipeline incrementally vs. recomputed every 5 s.
async fn pipeline(scale: usize, events: u64, rate: f64, recompute_every: u64) -> anyhow::Result<()> {
    println!("velocity bench velocity --scale {scale} --events {events} --rate {rate} --recompute-every {recompute_every}");
    let dir = tempfile::tempdir()?;
    let (server, client, _) = local_server(&dir.path().join("data")).await?;
    for statement in crate::sql::split_statements(&crate::tools::demo::pipeline_sql(scale, rate)) {
        client.batch_execute(&statement).await?;
    }
    let views: Vec<(String, String)> = client
        .query("SELECT name, definition FROM velocity_catalog.relations WHERE kind = 'materialized view'", &[])
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|(_, d)| !d.contains("changes("))
        .map(|(n, d)| {
            let query = d[d.find(" AS ").map_or(0, |i| i + 4)..].to_string();
            (n, query)
        })
        .collect();

    // The old MicroBatch way, in the same run: every 5 s, recompute every view from scratch
    // over the same tables (it shares the 2 cores with ingestion, as it did in production).
    let context = server.context.clone();
    let recompute_views = views.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let recomputes = tokio::spawn(async move {
        let mut rounds: Vec<Duration> = Vec::new();
        if recompute_every == 0 {
            let _ = stop_rx.await;
            return rounds;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(recompute_every)) => {}
                _ = &mut stop_rx => return rounds,
            }
            let t = Instant::now();
            for (_, query) in &recompute_views {
                if let Ok(df) = context.sql(query).await {
                    let _ = df.collect().await;
                }
            }
            rounds.push(t.elapsed());
        }
    });

    let started = Instant::now();
    let mut last_report = Instant::now();
    let (txns, done) = loop {
        let row = client.query_one("SELECT transactions, events FROM velocity_catalog.sources WHERE name = 'tms'", &[]).await?;
        let (txns, done): (i64, i64) = (row.get(0), row.get(1));
        if last_report.elapsed() >= Duration::from_secs(2) {
            eprint!("\r{done}/{events} events, {txns} transactions, {:.0} events/s", done as f64 / started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        if done as u64 >= events {
            break (txns, done);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    eprintln!();
    // Before the checks below run every view's query in this process too.
    let pipeline_rss = peak_rss_mib();
    let _ = stop_tx.send(());
    let mut rounds = recomputes.await?;
    rounds.sort();
    let recompute_rows: usize = {
        let mut n = 0;
        for (_, query) in &views {
            n += server.context.sql(query).await?.collect().await?.iter().map(|b| b.num_rows()).sum::<usize>();
        }
        n
    };
    let mut freshness: Vec<u64> = server.engine.stats().freshness_samples_ms.clone();
    freshness.sort_unstable();
    let at = |p: f64| freshness.get(((freshness.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or(0);
    let loads = client.query_one("SELECT count(*) FROM loads", &[]).await?.get::<_, i64>(0);
    let shipments = client.query_one("SELECT count(*) FROM shipments", &[]).await?.get::<_, i64>(0);
    println!("\n{} views over 8 tables; at the end: {loads} loads, {shipments} shipments, {recompute_rows} view rows", views.len());
    println!("\n| approach | events | transactions | events/s | freshness p50 | p99 | max | peak RSS MiB | RocksDB MiB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| incremental (batched steps) | {done} | {txns} | {:.0} | {} ms | {} ms | {} ms | {} | {} |",
        done as f64 / secs,
        at(0.5),
        at(0.99),
        freshness.last().copied().unwrap_or(0),
        peak_rss_mib(),
        dir_size(dir.path()) / (1024 * 1024)
    );
    println!(
        "\npeak RSS {pipeline_rss} MiB before the view queries of the check above; RocksDB {} MiB in SST files (compressed), the rest of its directory is the WAL",
        server.engine.store().size_bytes() / (1024 * 1024)
    );
    if !rounds.is_empty() {
        // A MicroBatch view is as old as the wait for the next round plus the round itself.
        let every_ms = recompute_every as f64 * 1000.0;
        let recompute = |p: f64| percentile(&rounds, p);
        println!(
            "| recompute every {recompute_every} s (MicroBatch), {} rounds | | | | {:.0} ms (half the period + recompute p50) | {:.0} ms (period + recompute p99) | {:.0} ms | | |",
            rounds.len(),
            every_ms / 2.0 + recompute(0.5),
            every_ms + recompute(0.99),
            every_ms + recompute(1.0)
        );
        println!(
            "\none recompute of the {} views (p50 / p99 / max): {:.0} / {:.0} / {:.0} ms",
            views.len(),
            recompute(0.5),
            recompute(0.99),
            recompute(1.0)
        );
    }
    Ok(())
}

/// One run of `velocity bench steps`.
struct StepsRun {
    limit: usize,
    secs: f64,
    steps: usize,
    step_p50_ms: f64,
    step_p99_ms: f64,
    step_max_ms: f64,
}

/// `velocity bench steps`: the pipeline from a Debezium file at several step sizes.
async fn steps(transactions: u64, scale: usize, limits: &[usize]) -> anyhow::Result<()> {
    use crate::sources::logistics::{Scenario, Simulator};
    use crate::sources::txn::{AssemblerOutput, Position, TxnAssembler, TxnBoundaries};
    use std::io::Write;
    let limit_list = limits.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",");
    println!("velocity bench steps --transactions {transactions} --scale {scale} --limits {limit_list}");
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tms.jsonl");
    let mut lines = Vec::new();
    let mut simulator = Simulator::new(Scenario { scale, seed: 42 });
    let mut events = 0usize;
    for _ in 0..transactions {
        let txn = simulator.next_txn();
        events += txn.changes.len();
        lines.extend(txn.debezium(txn.commit_us / 1000));
    }
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
        for line in &lines {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
    }
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    eprintln!("{transactions} transactions, {events} events, {:.1} MB of Debezium JSON", bytes as f64 / 1e6);
    let sql = crate::tools::demo::pipeline_sql(scale, 0.0).replace(
        &format!("connector = 'generator', scenario = 'logistics', scale = {scale}, rate = 0"),
        &format!("connector = 'file', path = '{}', transactions = 'metadata'", file.display()),
    );
    anyhow::ensure!(sql.contains("connector = 'file'"), "the pipeline's CREATE SOURCE was not replaced");

    let mut runs = Vec::new();
    let mut bindings = Vec::new();
    for &limit in limits {
        let data = tempfile::tempdir_in(dir.path())?;
        let (server, client, _) = local_server(data.path()).await?;
        server.engine.set_step_limit(limit);
        // The source reads from its CREATE on, while the views are still being created: the
        // clock starts before the pipeline's statements, so none of the work goes uncounted.
        let started = Instant::now();
        for statement in crate::sql::split_statements(&sql) {
            client.batch_execute(&statement).await?;
        }
        loop {
            let row = client.query_one("SELECT transactions FROM velocity_catalog.sources WHERE name = 'tms'", &[]).await?;
            let done: i64 = row.get(0);
            eprint!("\rstep limit {limit}: {done}/{transactions} transactions, {:.0} s", started.elapsed().as_secs_f64());
            if done as u64 >= transactions {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!();
        let mut latencies: Vec<Duration> = server.engine.stats().tick_latencies_us.iter().map(|us| Duration::from_micros(*us)).collect();
        latencies.sort();
        anyhow::ensure!(!latencies.is_empty(), "no step was timed");
        runs.push(StepsRun {
            limit,
            secs,
            steps: latencies.len(),
            step_p50_ms: percentile(&latencies, 0.5),
            step_p99_ms: percentile(&latencies, 0.99),
            step_max_ms: percentile(&latencies, 1.0),
        });
        if bindings.is_empty() {
            bindings = crate::sources::runner::upstream_tables(&server.engine, "tms");
        }
        drop(client);
        drop(server);
    }

    // The same file decoded and deduplicated in memory by the same binary: the ceiling.
    let mut assembler = TxnAssembler::new(bindings, TxnBoundaries::Metadata)?;
    let mut decoder = crate::sources::debezium::Decoder::new();
    let path = file.display().to_string();
    let started = Instant::now();
    let mut released = 0usize;
    for (line, raw) in lines.iter().enumerate() {
        let record = decoder.decode(Some(raw.as_bytes()));
        let position = Position::File { path: path.clone(), line: line as u64 };
        for output in assembler.push(position, raw.as_bytes(), record) {
            if let AssemblerOutput::CompleteTxn(_) = output {
                released += 1;
            }
        }
    }
    let decode_secs = started.elapsed().as_secs_f64().max(1e-9);
    let decode_eps = events as f64 / decode_secs;
    println!("\nin memory, decode + transaction dedup of the same file: {decode_eps:.0} events/s ({released} transactions)");
    println!(
        "\n| step limit (transactions) | events/s | transactions/s | x in-memory decode | steps | transactions per step | step p50 ms | step p99 ms | step max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        let eps = events as f64 / r.secs;
        println!(
            "| {} | {:.0} | {:.0} | {:.2}x | {} | {:.1} | {:.2} | {:.2} | {:.2} |",
            if r.limit == 0 { "adaptive".to_string() } else { r.limit.to_string() },
            eps,
            transactions as f64 / r.secs,
            eps / decode_eps,
            r.steps,
            transactions as f64 / r.steps.max(1) as f64,
            r.step_p50_ms,
            r.step_p99_ms,
            r.step_max_ms,
        );
    }
    println!("\npeak RSS {} MiB (the largest run)", peak_rss_mib());
    Ok(())
}

/// `velocity bench subscribe`: commit-to-subscriber latency of one changed load row.
async fn subscribe_latency(loads: usize, updates: usize) -> anyhow::Result<()> {
    use futures::StreamExt;
    println!("velocity bench subscribe --loads {loads} --updates {updates}");
    let dir = tempfile::tempdir()?;
    let (_server, client, conn) = local_server(&dir.path().join("data")).await?;
    let stops = loads * 4;
    let started = Instant::now();
    client
        .batch_execute(&format!(
            "CREATE TABLE trips (id BIGINT PRIMARY KEY, ref TEXT, status TEXT);
             CREATE TABLE stops (id BIGINT PRIMARY KEY, trip_id BIGINT, seq BIGINT, city TEXT, arrived BOOLEAN);
             INSERT INTO trips SELECT value, 'LOAD-' || value, 'DEPARTED' FROM generate_series(0, {}) AS t;
             INSERT INTO stops SELECT value, value / 4, value % 4, 'city-' || (value % 97), false FROM generate_series(0, {}) AS t;",
            loads - 1,
            stops - 1
        ))
        .await?;
    eprintln!("loaded {loads} loads and {stops} stops in {:.1}s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    client
        .batch_execute(
            "CREATE MATERIALIZED VIEW loads AS
             SELECT t.id, t.ref, t.status,
                    json_agg(json_build_object('seq', s.seq, 'city', s.city, 'arrived', s.arrived) ORDER BY s.seq) AS stops
             FROM trips t JOIN stops s ON s.trip_id = t.id GROUP BY t.id, t.ref, t.status",
        )
        .await?;
    eprintln!("entity view over {loads} loads created in {:.1}s", started.elapsed().as_secs_f64());

    let (subscriber, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let stream = subscriber.copy_out("COPY (SUBSCRIBE TO loads WITH (SNAPSHOT = false)) TO STDOUT").await?;
    let (rows_tx, mut rows_rx) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    tokio::spawn(async move {
        let mut stream = Box::pin(stream);
        let mut buffered = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            let at = Instant::now();
            buffered.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(nl) = buffered.find('\n') {
                let line: String = buffered.drain(..=nl).collect();
                let mut fields = line.split('\t');
                let (_tick, diff, id) = (fields.next(), fields.next(), fields.next());
                if diff == Some("1")
                    && let Some(id) = id.and_then(|v| v.parse().ok())
                {
                    let _ = rows_tx.send((id, at));
                }
            }
        }
    });
    let mut rng = Rng(0x5DEECE66D);
    let mut latencies = Vec::with_capacity(updates);
    for _ in 0..updates {
        let stop = (rng.next() % stops as u64) as i64;
        let trip = stop / 4;
        let sent = Instant::now();
        client.execute("UPDATE stops SET arrived = NOT arrived WHERE id = $1", &[&stop]).await?;
        loop {
            let (id, at) = rows_rx.recv().await.ok_or_else(|| anyhow::anyhow!("the subscription ended"))?;
            if id == trip {
                latencies.push(at.duration_since(sent));
                break;
            }
        }
    }
    latencies.sort();
    println!("\n| loads in the view | updates | update -> subscriber p50 ms | p99 ms | max ms | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {loads} | {updates} | {:.2} | {:.2} | {:.2} | {} |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        peak_rss_mib()
    );
    Ok(())
}

/// `velocity bench sink`: see [`Bench::Sink`].
async fn sink(brokers: &str, rows: usize, batch: usize, updates: usize) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    println!("velocity bench sink --brokers {brokers} --rows {rows} --batch {batch} --updates {updates}");
    let dir = tempfile::tempdir()?;
    let (_server, client, _) = local_server(&dir.path().join("data")).await?;
    let topic = format!("velocity-bench-sink-{}", std::process::id());
    client
        .batch_execute(&format!(
            "CREATE TABLE counters (id BIGINT PRIMARY KEY, label TEXT, n BIGINT);
             CREATE SINK counters_out FROM counters WITH (connector = 'kafka', brokers = '{brokers}', topic = '{topic}', partitions = 3)"
        ))
        .await?;
    // Every message's (id, n) and when it arrived, read by a plain consumer.
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<((i64, i64), Instant)>();
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let started = Instant::now();
    while consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))?.topics().first().is_none_or(|t| t.partitions().len() < 3) {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the sink did not create topic {topic}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        assignment.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    std::thread::spawn(move || {
        loop {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
            let at = Instant::now();
            let Some(v) = m.payload().and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok()) else { continue };
            if let (Some(id), Some(n)) = (v["id"].as_i64(), v["n"].as_i64())
                && arrived_tx.send(((id, n), at)).is_err()
            {
                return;
            }
        }
    });

    let started = Instant::now();
    for first in (0..rows).step_by(batch) {
        let last = (first + batch).min(rows) - 1;
        client
            .batch_execute(&format!("INSERT INTO counters SELECT value, 'counter-' || value, 0 FROM generate_series({first}, {last}) AS t"))
            .await?;
    }
    let committed_s = started.elapsed().as_secs_f64();
    for _ in 0..rows {
        arrived.recv().await.ok_or_else(|| anyhow::anyhow!("the consumer stopped"))?;
    }
    let delivered_s = started.elapsed().as_secs_f64();

    let mut rng = Rng(0x5DEECE66D);
    let mut versions: HashMap<i64, i64> = HashMap::new();
    let mut latencies = Vec::with_capacity(updates);
    for _ in 0..updates {
        let id = (rng.next() % rows as u64) as i64;
        let n = versions.entry(id).or_insert(0);
        *n += 1;
        let sent = Instant::now();
        client.execute("UPDATE counters SET n = $2 WHERE id = $1", &[&id, &*n]).await?;
        loop {
            let (key, at) = arrived.recv().await.ok_or_else(|| anyhow::anyhow!("the consumer stopped"))?;
            if key == (id, *n) {
                latencies.push(at.duration_since(sent));
                break;
            }
        }
    }
    latencies.sort();
    println!(
        "\n| rows | committed in s | all in the topic after s | messages/s | update to consumer p50 ms | p99 ms | max ms | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {rows} | {committed_s:.1} | {delivered_s:.1} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
        rows as f64 / delivered_s,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        peak_rss_mib()
    );
    Ok(())
}

/// A Nexmark query: `queries/nexmark/<name>.sql`, a `CREATE MATERIALIZED VIEW nexmark_<name>`
/// statement after comments; a query Velocity cannot maintain says why in a comment starting
/// with [`NexmarkQuery::UNSUPPORTED`].
pub struct NexmarkQuery {
    pub name: &'static str,
    pub file: &'static str,
}

/// queries/nexmark/q0.sql ... q22.sql (those Velocity can express; q6_group_top_n.sql and the
/// `EMIT ON WINDOW CLOSE` variants q5_eowc.sql, q7_eowc.sql), compiled in so the benchmark runs from anywhere.
pub const NEXMARK_QUERIES: &[NexmarkQuery] = &[
    NexmarkQuery { name: "q0", file: include_str!("../../queries/nexmark/q0.sql") },
    NexmarkQuery { name: "q1", file: include_str!("../../queries/nexmark/q1.sql") },
    NexmarkQuery { name: "q2", file: include_str!("../../queries/nexmark/q2.sql") },
    NexmarkQuery { name: "q3", file: include_str!("../../queries/nexmark/q3.sql") },
    NexmarkQuery { name: "q4", file: include_str!("../../queries/nexmark/q4.sql") },
    NexmarkQuery { name: "q5", file: include_str!("../../queries/nexmark/q5.sql") },
    NexmarkQuery { name: "q6", file: include_str!("../../queries/nexmark/q6.sql") },
    NexmarkQuery { name: "q6_group_top_n", file: include_str!("../../queries/nexmark/q6_group_top_n.sql") },
    NexmarkQuery { name: "q7", file: include_str!("../../queries/nexmark/q7.sql") },
    NexmarkQuery { name: "q8", file: include_str!("../../queries/nexmark/q8.sql") },
    NexmarkQuery { name: "q9", file: include_str!("../../queries/nexmark/q9.sql") },
    NexmarkQuery { name: "q10", file: include_str!("../../queries/nexmark/q10.sql") },
    NexmarkQuery { name: "q11", file: include_str!("../../queries/nexmark/q11.sql") },
    NexmarkQuery { name: "q14", file: include_str!("../../queries/nexmark/q14.sql") },
    NexmarkQuery { name: "q15", file: include_str!("../../queries/nexmark/q15.sql") },
    NexmarkQuery { name: "q16", file: include_str!("../../queries/nexmark/q16.sql") },
    NexmarkQuery { name: "q17", file: include_str!("../../queries/nexmark/q17.sql") },
    NexmarkQuery { name: "q18", file: include_str!("../../queries/nexmark/q18.sql") },
    NexmarkQuery { name: "q19", file: include_str!("../../queries/nexmark/q19.sql") },
    NexmarkQuery { name: "q20", file: include_str!("../../queries/nexmark/q20.sql") },
    NexmarkQuery { name: "q21", file: include_str!("../../queries/nexmark/q21.sql") },
    NexmarkQuery { name: "q22", file: include_str!("../../queries/nexmark/q22.sql") },
    NexmarkQuery { name: "q5_eowc", file: include_str!("../../queries/nexmark/q5_eowc.sql") },
    NexmarkQuery { name: "q7_eowc", file: include_str!("../../queries/nexmark/q7_eowc.sql") },
];

impl NexmarkQuery {
    /// The comment that marks a query Velocity cannot maintain yet.
    pub const UNSUPPORTED: &'static str = "-- Not supported by Velocity:";

    /// The view's name, `nexmark_q5`.
    pub fn view(&self) -> String {
        format!("nexmark_{}", self.name)
    }

    /// The `CREATE MATERIALIZED VIEW` statement, without the comments before it.
    pub fn create(&self) -> &'static str {
        self.file.find("CREATE MATERIALIZED VIEW").map_or(self.file, |at| &self.file[at..]).trim().trim_end_matches(';')
    }

    /// The view's query, to run ad hoc. For an `EMIT ON WINDOW CLOSE` view: the rows of the
    /// windows bid's watermark has closed, which is what the view shows.
    pub fn query(&self) -> String {
        let create = self.create();
        let head = format!("{} AS", self.view());
        let query = create.find(&head).map_or(create, |at| create[at + head.len()..].trim());
        match query.strip_suffix(Self::EMIT_ON_WINDOW_CLOSE) {
            Some(query) => format!(
                "SELECT * FROM ({}) closing WHERE window_end <= (SELECT watermark FROM velocity_catalog.relations WHERE name = 'bid')",
                query.trim()
            ),
            None => query.to_string(),
        }
    }

    const EMIT_ON_WINDOW_CLOSE: &'static str = "EMIT ON WINDOW CLOSE";

    /// Whether the view shows final windows only (`EMIT ON WINDOW CLOSE`).
    pub fn emits_on_window_close(&self) -> bool {
        self.create().ends_with(Self::EMIT_ON_WINDOW_CLOSE)
    }

    /// Why Velocity cannot maintain it, if it cannot.
    pub fn unsupported(&self) -> Option<&'static str> {
        self.file.lines().find_map(|l| l.strip_prefix(Self::UNSUPPORTED)).map(str::trim)
    }

    pub fn find(name: &str) -> Option<&'static NexmarkQuery> {
        NEXMARK_QUERIES.iter().find(|q| q.name.eq_ignore_ascii_case(name))
    }
}

/// `CREATE SOURCE <source>` of `events` Nexmark events, unthrottled, and its three tables.
pub fn nexmark_source_sql(source: &str, events: u64, extra_options: &str) -> String {
    format!(
        "CREATE SOURCE {source} WITH (connector = 'generator', scenario = 'nexmark', events = '{events}', rate = '0'{extra_options});\n{}",
        crate::sources::nexmark::create_tables_sql(source)
    )
}

/// One query's run of `velocity bench nexmark`.
struct NexmarkRun {
    secs: f64,
    view_rows: usize,
    recompute_secs: f64,
    recompute_rows: usize,
    rss_mib: u64,
    db_mib: u64,
    /// Operator state of the view in storage at the end.
    state_kib: u64,
    /// `EMIT ON WINDOW CLOSE` views: p50 and p99 (ms) from the generation of the event that
    /// moved the watermark past a window's end to the window's final row being committed.
    close_ms: Option<(f64, f64)>,
}

const NEXMARK_HEADER: &str = "| query | events | events/s | s | view rows | DataFusion recompute s | recompute rows | incremental / recompute time | peak RSS MiB | RocksDB MiB | state KiB | window close p50 / p99 ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

/// `velocity bench nexmark`: each query alone over the same events.
async fn nexmark(query: Option<&str>, events: u64, rate: u64) -> anyhow::Result<()> {
    let Some(name) = query else {
        // Each query in its own process, so peak RSS is that query's.
        println!(
            "velocity bench nexmark --events {events} --rate {rate}   ({} build)\n",
            if cfg!(debug_assertions) { "debug" } else { "release" }
        );
        println!("{NEXMARK_HEADER}");
        let exe = std::env::current_exe()?;
        for q in NEXMARK_QUERIES {
            let out = std::process::Command::new(&exe)
                .args(["bench", "nexmark", "--query", q.name, "--events", &events.to_string(), "--rate", &rate.to_string()])
                .env("RUST_BACKTRACE", "0")
                .output()?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            eprint!("{stderr}");
            match stdout.lines().find(|l| l.starts_with(&format!("| {} |", q.name))) {
                Some(row) => println!("{row}"),
                None => println!("| {} | failed: {} |", q.name, stderr.lines().find(|l| l.starts_with("Error")).unwrap_or("no output")),
            }
        }
        return Ok(());
    };
    let q = NexmarkQuery::find(name).ok_or_else(|| {
        anyhow::anyhow!("no Nexmark query \"{name}\" (q0 ... q22 as in queries/nexmark, q6_group_top_n, q5_eowc, q7_eowc)")
    })?;
    println!(
        "velocity bench nexmark --query {} --events {events} --rate {rate}   ({} build)\n",
        q.name,
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    if let Some(why) = q.unsupported() {
        println!("{NEXMARK_HEADER}\n| {} | not supported: {why} |", q.name);
        return Ok(());
    }
    let run = nexmark_run(q, events, rate).await?;
    println!("{NEXMARK_HEADER}");
    println!(
        "| {} | {events} | {:.0} | {:.1} | {} | {:.3} | {} | {:.1}x | {} | {} | {} | {} |",
        q.name,
        events as f64 / run.secs,
        run.secs,
        run.view_rows,
        run.recompute_secs,
        run.recompute_rows,
        run.secs / run.recompute_secs.max(1e-9),
        run.rss_mib,
        run.db_mib,
        run.state_kib,
        run.close_ms.map_or("-".to_string(), |(p50, p99)| format!("{p50:.0} / {p99:.0}"))
    );
    Ok(())
}

async fn nexmark_run(q: &NexmarkQuery, events: u64, rate: u64) -> anyhow::Result<NexmarkRun> {
    let dir = tempfile::tempdir()?;
    let (server, client, _) = local_server(&dir.path().join("data")).await?;
    // The source generates from its first bound table on: the clock starts before it.
    let started = Instant::now();
    let options = if rate > 0 { format!(", rate = '{rate}'") } else { String::new() };
    let source = nexmark_source_sql("nx", events, "").replace(", rate = '0'", &options);
    for statement in crate::sql::split_statements(&source) {
        client.batch_execute(&statement).await?;
    }
    client.batch_execute(q.create()).await?;
    client.batch_execute("FLUSH").await?;
    let secs = started.elapsed().as_secs_f64();
    let applied: i64 = client.query_one("SELECT events FROM velocity_catalog.sources WHERE name = 'nx'", &[]).await?.get(0);
    anyhow::ensure!(applied as u64 >= events, "FLUSH returned after {applied} of {events} events");
    let view_rows: i64 = client.query_one(&format!("SELECT count(*) FROM {}", q.view()), &[]).await?.get(0);
    // DataFusion in this process, as the server plans a query (window functions' names quoted),
    // without the pgwire encoding of the rows.
    let recompute = Instant::now();
    let batches = sql(&server, &crate::sql::quote_name_arguments(&q.query())).await?;
    let recompute_secs = recompute.elapsed().as_secs_f64();
    let state_bytes: Option<i64> =
        client.query_one("SELECT state_bytes FROM velocity_catalog.relations WHERE name = $1", &[&q.view()]).await?.get(0);
    let close_ms = match q.emits_on_window_close() {
        false => None,
        true => {
            let id = server.engine.catalog().get(&q.view()).map(|r| r.id).ok_or_else(|| anyhow::anyhow!("no view {}", q.view()))?;
            let mut samples: Vec<Duration> = server
                .engine
                .stats()
                .freshness_by_relation_ms
                .get(&id)
                .map(|v| v.iter().map(|ms| Duration::from_millis(*ms)).collect())
                .unwrap_or_default();
            samples.sort();
            (!samples.is_empty()).then(|| (percentile(&samples, 0.5), percentile(&samples, 0.99)))
        }
    };
    Ok(NexmarkRun {
        state_kib: state_bytes.unwrap_or(0) as u64 / 1024,
        close_ms,
        secs,
        view_rows: view_rows as usize,
        recompute_secs,
        recompute_rows: batches.iter().map(|b| b.num_rows()).sum(),
        rss_mib: peak_rss_mib(),
        db_mib: dir_size(dir.path()) / (1024 * 1024),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo test --release --lib tools::bench::tests::decode_throughput_by_stage -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn decode_throughput_by_stage() {
        let events = 200_000;
        // Decode alone, for comparison with decode + assembly.
        let records = debezium_traffic::records(events);
        let bytes: usize = records.iter().map(|(_, r)| r.len()).sum();
        let mut decoder = Decoder::new();
        let start = Instant::now();
        for (_, raw) in &records {
            std::hint::black_box(decoder.decode(Some(raw.as_bytes())).is_ok());
        }
        let decode_s = start.elapsed().as_secs_f64();
        // Assembly alone, on records decoded beforehand.
        let decoded: Vec<_> = records.iter().map(|(_, raw)| decoder.decode(Some(raw.as_bytes()))).collect();
        let mut assembler = TxnAssembler::new(debezium_traffic::bindings(), TxnBoundaries::Metadata).unwrap();
        let start = Instant::now();
        for ((position, raw), record) in records.iter().zip(decoded) {
            std::hint::black_box(assembler.push(position.clone(), raw.as_bytes(), record));
        }
        let assembly_s = start.elapsed().as_secs_f64();
        let (eps, mbps) = decode_throughput(events);
        println!("cargo test --release --lib tools::bench::tests::decode_throughput_by_stage -- --ignored --nocapture");
        println!("| stage | change events | events/s | MB/s |");
        println!("|---|---|---|---|");
        println!("| decode only | {events} | {:.0} | {:.1} |", events as f64 / decode_s, bytes as f64 / 1e6 / decode_s);
        println!("| assembly only | {events} | {:.0} | {:.1} |", events as f64 / assembly_s, bytes as f64 / 1e6 / assembly_s);
        println!("| decode + assembly | {events} | {eps:.0} | {mbps:.1} |");
    }
}
