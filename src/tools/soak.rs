//! `velocity bench soak`: the logistics pipeline (queries/velocity.sql on the TMS generator)
//! in a `velocity serve` process that is killed with SIGKILL every few minutes and started
//! again on its data directory, for as long as the generator has transactions to give.
//!
//! After every restart each view that is not built from `changes()` must equal its query
//! recomputed at the same tick (one statement, `EXCEPT ALL` both ways). At the end every view,
//! the `changes()` event views included, must equal the views of a reference run of the same
//! transactions that was never killed: a transition applied twice or lost shows there.
//! Commit timestamps (`committed_at`) are wall-clock and differ between the runs, so they are
//! left out of that comparison.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// What the soak was asked for.
pub struct SoakOptions {
    pub transactions: u64,
    pub rate: f64,
    pub scale: usize,
    pub kill_every: Duration,
}

/// A `velocity serve` child process.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    fn start(data_dir: &Path) -> anyhow::Result<ServerProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()?;
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let addr = loop {
            let Some(line) = lines.next() else { anyhow::bail!("velocity serve exited before listening") };
            if let Some(rest) = line?.strip_prefix("velocity: listening on ") {
                break rest.trim().parse()?;
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(ServerProcess { child, addr })
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        let conn = format!("host={} port={} user=velocity dbname=velocity", self.addr.ip(), self.addr.port());
        let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()).unwrap_or(0)
            / 1024
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pipeline's SQL with a source that stops after `transactions`.
fn pipeline_sql(options: &SoakOptions, rate: f64) -> String {
    crate::tools::demo::pipeline_sql(options.scale, rate)
        .replace(&format!("rate = {rate})"), &format!("rate = {rate}, max_transactions = {})", options.transactions))
}

/// The source's count of transactions applied by this process (it starts again at 0 after
/// a restart) and its position (`record N`, kept across restarts).
async fn source_progress(client: &Client) -> anyhow::Result<(i64, String)> {
    let row = client.query_one("SELECT transactions, position FROM velocity_catalog.sources WHERE name = 'tms'", &[]).await?;
    Ok((row.get(0), row.get(1)))
}

/// Where the source's position stands once each of the first `transactions` transactions
/// has applied: the generator numbers its records from 0 and makes the same transactions
/// every run (the wall clock only stamps them), so a position maps back to a count of
/// transactions that survives restarts.
fn transaction_ends(options: &SoakOptions) -> Vec<u64> {
    use crate::sources::logistics::{Scenario, Simulator};
    let mut simulator = Simulator::new(Scenario { scale: options.scale, ..Scenario::default() });
    let mut records = 0;
    (0..options.transactions)
        .map(|_| {
            records += simulator.next_txn().debezium(0).len() as u64;
            records
        })
        .collect()
}

/// Transactions applied at `position` (`record N`: the last record applied); "-" while a
/// restarted source has not reported one yet.
fn transactions_at(ends: &[u64], position: &str) -> String {
    match position.strip_prefix("record ").and_then(|n| n.parse::<u64>().ok()) {
        Some(last) => ends.partition_point(|&end| end <= last + 1).to_string(),
        None => "-".into(),
    }
}

/// Views whose query can be recomputed ad hoc (not built from `changes()`), with the query.
async fn recomputable_views(client: &Client) -> anyhow::Result<Vec<(String, String)>> {
    let rows = client.query("SELECT name, definition FROM velocity_catalog.relations WHERE kind = 'materialized view'", &[]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|(_, d)| !d.contains("changes("))
        .map(|(name, d)| (name, d[d.find(" AS ").map_or(0, |i| i + 4)..].trim_end_matches(';').to_string()))
        .collect())
}

/// A view's columns as compared: floating-point sums rounded to 6 decimals (an incremental
/// sum adds in another order than a recompute, 1552.1 against 1552.1000000000001), JSON as
/// text, and without the wall-clock `committed_at` where `wall_clock` is false.
async fn comparable_columns(client: &Client, view: &str, wall_clock: bool) -> anyhow::Result<String> {
    use tokio_postgres::types::Type;
    let statement = client.prepare(&format!("SELECT * FROM {view}")).await?;
    let columns: Vec<String> = statement
        .columns()
        .iter()
        .filter(|c| wall_clock || c.name() != "committed_at")
        .map(|c| match *c.type_() {
            Type::FLOAT4 | Type::FLOAT8 => format!("round(\"{0}\"::numeric, 6) AS \"{0}\"", c.name()),
            Type::JSON | Type::JSONB => format!("\"{0}\"::text AS \"{0}\"", c.name()),
            _ => format!("\"{}\"", c.name()),
        })
        .collect();
    Ok(columns.join(", "))
}

/// Rows by which each view differs from its query, all read at one tick.
async fn mismatches(client: &Client, views: &[(String, String)]) -> anyhow::Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for (name, query) in views {
        let columns = comparable_columns(client, name, true).await?;
        let (view, recomputed) = (format!("SELECT {columns} FROM {name}"), format!("SELECT {columns} FROM ({query}) AS r"));
        let sql = format!(
            "SELECT (SELECT count(*) FROM ({view} EXCEPT ALL {recomputed}) AS extra) + (SELECT count(*) FROM ({recomputed} EXCEPT ALL {view}) AS missing)"
        );
        let n: i64 = client.query_one(&sql, &[]).await?.get(0);
        if n != 0 {
            out.push((name.clone(), n));
        }
    }
    Ok(out)
}

/// Every view's rows as text, sorted, without wall-clock columns.
async fn contents(client: &Client) -> anyhow::Result<Vec<(String, Vec<Vec<Option<String>>>)>> {
    let names: Vec<String> = client
        .query("SELECT name FROM velocity_catalog.relations WHERE kind = 'materialized view' ORDER BY name", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for name in names {
        let list = comparable_columns(client, &name, false).await?;
        let mut rows: Vec<Vec<Option<String>>> = client
            .simple_query(&format!("SELECT {list} FROM {name}"))
            .await?
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
                _ => None,
            })
            .collect();
        rows.sort();
        out.push((name, rows));
    }
    Ok(out)
}

pub async fn run(options: SoakOptions) -> anyhow::Result<()> {
    println!(
        "velocity bench soak --transactions {} --rate {} --scale {} --kill-every {}",
        options.transactions,
        options.rate,
        options.scale,
        options.kill_every.as_secs()
    );
    let dir = tempfile::tempdir()?;

    // First the reference: the same transactions, never killed, as fast as they go. Its
    // source's final position is where the soak's must end.
    eprintln!("reference run of {} transactions", options.transactions);
    let reference = ServerProcess::start(&dir.path().join("reference"))?;
    let client = reference.connect().await?;
    for statement in crate::sql::split_statements(&pipeline_sql(&options, 0.0)) {
        client.batch_execute(&statement).await?;
    }
    let end = loop {
        let (applied, position) = source_progress(&client).await?;
        if applied as u64 >= options.transactions {
            break position;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    client.batch_execute("FLUSH").await?;
    let expected = contents(&client).await?;
    drop(client);
    reference.kill9();

    let data = dir.path().join("soak");
    let mut server = ServerProcess::start(&data)?;
    let client = server.connect().await?;
    for statement in crate::sql::split_statements(&pipeline_sql(&options, options.rate)) {
        client.batch_execute(&statement).await?;
    }
    let views = recomputable_views(&client).await?;
    drop(client);

    let ends = transaction_ends(&options);
    println!("\n| minute | transactions applied | source position | restarts | mismatched rows after restarts | RSS MiB |");
    println!("|---|---|---|---|---|---|");
    let started = Instant::now();
    let (mut restarts, mut mismatched, mut peak_rss) = (0u64, 0i64, 0u64);
    let mut next_kill = Instant::now() + options.kill_every;
    let mut next_row = Instant::now();
    let mut minute = 0;
    loop {
        let client = server.connect().await?;
        let (_, position) = source_progress(&client).await?;
        let rss = server.rss_mib();
        peak_rss = peak_rss.max(rss);
        if Instant::now() >= next_row {
            println!("| {minute} | {} | {position} | {restarts} | {mismatched} | {rss} |", transactions_at(&ends, &position));
            minute += 1;
            next_row += Duration::from_secs(60);
        }
        if position == end {
            break;
        }
        if Instant::now() >= next_kill {
            drop(client);
            server.kill9();
            server = ServerProcess::start(&data)?;
            restarts += 1;
            let client = server.connect().await?;
            for (view, rows) in mismatches(&client, &views).await? {
                eprintln!("after restart {restarts}: {view} differs from its query by {rows} rows");
                mismatched += rows;
            }
            next_kill = Instant::now() + options.kill_every;
            continue;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let client = server.connect().await?;
    client.batch_execute("FLUSH").await?;
    let soaked = contents(&client).await?;
    mismatched += mismatches(&client, &views).await?.iter().map(|(_, n)| n).sum::<i64>();
    let rss = server.rss_mib();
    peak_rss = peak_rss.max(rss);
    println!("| {minute} | {} | {end} | {restarts} | {mismatched} | {rss} |", transactions_at(&ends, &end));
    drop(client);
    server.kill9();

    let mut differing = Vec::new();
    for ((name, rows), (_, want)) in soaked.iter().zip(&expected) {
        if rows != want {
            let extra = rows.iter().filter(|r| !want.contains(r)).count();
            let missing = want.iter().filter(|r| !rows.contains(r)).count();
            differing.push(format!(
                "{name} ({} rows, reference {}; {extra} not in the reference, {missing} missing)",
                rows.len(),
                want.len()
            ));
        }
    }
    let rows: usize = soaked.iter().map(|(_, r)| r.len()).sum();
    println!(
        "\n{} transactions in {:.0} min with {restarts} kill -9 restarts; peak RSS {peak_rss} MiB; {} views, {rows} rows at the end",
        options.transactions,
        started.elapsed().as_secs_f64() / 60.0,
        soaked.len()
    );
    println!("mismatched rows against the views' own queries after each restart and at the end: {mismatched}");
    if differing.is_empty() {
        println!("every view (the changes() event views included) equals the reference run that was never killed");
    } else {
        println!("views that differ from the reference run: {}", differing.join("; "));
    }
    anyhow::ensure!(mismatched == 0 && differing.is_empty(), "the soak found lost or doubled changes");
    Ok(())
}
