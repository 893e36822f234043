//! `velocity demo`: the logistics pipeline of `queries/velocity.sql`, live, on the embedded
//! server, fed by the built-in TMS simulator.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// The pipeline, as shipped in `queries/velocity.sql`.
pub const PIPELINE_SQL: &str = include_str!("../../queries/velocity.sql");

/// The pipeline with the simulator's source options replaced.
pub fn pipeline_sql(scale: usize, rate: f64) -> String {
    PIPELINE_SQL
        .replace("scenario = 'logistics', scale = 200, rate = 50", &format!("scenario = 'logistics', scale = {scale}, rate = {rate}"))
}

/// What `velocity demo` was asked for.
pub struct DemoOptions<'a> {
    pub data_dir: &'a Path,
    pub listen: SocketAddr,
    /// Simulated TMS transactions per second.
    pub rate: f64,
    /// Loads in flight.
    pub scale: usize,
    /// Stop after this long; run until interrupted if `None`.
    pub duration: Option<Duration>,
}

pub async fn run(options: DemoOptions<'_>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    let (addr, server) = crate::server::spawn(options.data_dir, listener).await?;
    let (client, connection) =
        tokio_postgres::connect(&format!("host={} port={} user=velocity dbname=velocity", addr.ip(), addr.port()), tokio_postgres::NoTls)
            .await?;
    tokio::spawn(connection);

    let exists = client.query("SELECT 1 FROM velocity_catalog.relations WHERE name = 'loads'", &[]).await?;
    if exists.is_empty() {
        eprintln!("loading queries/velocity.sql into {} ...", options.data_dir.display());
        for statement in crate::sql::split_statements(&pipeline_sql(options.scale, options.rate)) {
            client.batch_execute(&statement).await.map_err(|e| {
                let message = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string());
                anyhow::anyhow!("{message}\nin: {}", statement.trim())
            })?;
        }
    } else {
        eprintln!("the pipeline is already in {}; resuming it", options.data_dir.display());
    }
    let port = addr.port();
    println!("velocity demo: listening on {addr}, data in {}", options.data_dir.display());
    println!("try, in another terminal:");
    println!("  psql -h {} -p {port} -U velocity velocity -c 'SELECT * FROM loads LIMIT 5'", addr.ip());
    println!(
        "  psql -h {} -p {port} -U velocity velocity -c 'SELECT * FROM customer_kpis ORDER BY open_shipments DESC LIMIT 10'",
        addr.ip()
    );
    println!("  psql -h {} -p {port} -U velocity velocity -c 'COPY (SUBSCRIBE TO business_events) TO STDOUT'", addr.ip());
    println!("  psql -h {} -p {port} -U velocity velocity -c 'SELECT name, rows, freshness_ms FROM velocity_catalog.relations'", addr.ip());

    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = (Instant::now(), 0i64, 0i64);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let row = client.query_one("SELECT transactions, events, errors FROM velocity_catalog.sources WHERE name = 'tms'", &[]).await?;
        let (txns, events, errors): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let count = |name: &str| {
            let stats = server.engine.stats();
            let catalog = server.engine.catalog();
            catalog.get(name).and_then(|r| stats.view_rows.get(&r.id).copied()).unwrap_or(0)
        };
        let (p50, p99) = {
            let stats = server.engine.stats();
            let mut recent: Vec<u64> = stats.freshness_samples_ms.iter().rev().take(1000).copied().collect();
            recent.sort_unstable();
            let at = |p: f64| recent.get(((recent.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or(0);
            (at(0.5), at(0.99))
        };
        let secs = last.0.elapsed().as_secs_f64().max(1e-3);
        let line = format!(
            "[{:>4}s] {txns} txns ({:.0}/s), {events} events ({:.0}/s), {errors} errors | loads {} | business_events {} | delay_alerts {} | freshness p50 {p50} ms p99 {p99} ms",
            started.elapsed().as_secs(),
            (txns - last.1) as f64 / secs,
            (events - last.2) as f64 / secs,
            count("loads"),
            count("business_events"),
            count("delay_alerts"),
        );
        if tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        last = (Instant::now(), txns, events);
        if options.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    if tty {
        eprintln!();
    }
    Ok(())
}
