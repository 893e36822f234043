//! The `velocity` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

mod command_line;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "velocity",
    version,
    about = "A SQL-first streaming database: CDC in, incrementally maintained views out, over the Postgres wire protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Where RocksDB keeps tables, views, operator state and offsets.
        #[arg(long, default_value = "./velocity-data")]
        data_dir: PathBuf,
        /// Address for Postgres clients.
        #[arg(long, default_value = "127.0.0.1:6875")]
        listen: SocketAddr,
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// A user allowed to connect, as NAME:PASSWORD (repeatable). With any user configured,
        /// every connection must authenticate with SCRAM-SHA-256; with none, all are trusted.
        /// The password is blanked from the process's command line at start; --users-file or
        /// the environment variable VELOCITY_USERS (NAME:PASSWORD lines) never show it.
        #[arg(long = "user", value_name = "NAME:PASSWORD")]
        users: Vec<String>,
        /// A file of NAME:PASSWORD lines (blank lines and # comments skipped), like --user.
        #[arg(long, value_name = "FILE")]
        users_file: Option<PathBuf>,
        /// PEM certificate chain: offer TLS (with --tls-key).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Client connections at once; more are refused (53300), as by Postgres.
        #[arg(long, default_value_t = velocity::server::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
        /// A directory new file sources may read from (repeatable); with none given, file
        /// sources may read any path the server can (creating sources takes a superuser).
        #[arg(long = "file-source-dir", value_name = "DIR")]
        file_source_dirs: Vec<PathBuf>,
        /// Memory one query may reserve for sorts, hash tables and aggregates, in bytes or
        /// with a Postgres unit (`512MB`, `2GB`); past it the query fails with 53200.
        /// Default: a quarter of the machine's memory (all queries together: half).
        #[arg(long, value_name = "SIZE", value_parser = parse_memory_size)]
        statement_memory: Option<usize>,
    },
    /// The logistics track-and-trace pipeline (queries/velocity.sql), live on the embedded
    /// server, fed by the built-in TMS simulator.
    Demo {
        #[arg(long, default_value = "./velocity-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:6875")]
        listen: SocketAddr,
        /// Simulated TMS transactions per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Loads in flight at once.
        #[arg(long, default_value_t = 200)]
        scale: usize,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Run the TMS simulator into a real Postgres database or a Debezium JSON-lines file
    /// (`--scenario nexmark`: the Nexmark events, to a file only).
    Simulate {
        /// `logistics` (the TMS) or `nexmark` (the generator's Nexmark events, `--events` of them).
        #[arg(long, default_value = "logistics", value_parser = ["logistics", "nexmark"])]
        scenario: String,
        /// Nexmark events to write.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// libpq connection string of the TMS database (tables are created if missing).
        #[arg(long, group = "target")]
        postgres: Option<String>,
        /// Append Debezium JSON lines (with BEGIN/END markers) to this file; to an existing
        /// directory: one file per topic (`tms.public.<table>.jsonl`, `tms.transaction.jsonl`).
        #[arg(long, group = "target")]
        file: Option<PathBuf>,
        /// Kafka brokers: Debezium topics `tms.public.<table>` and `tms.transaction`.
        #[arg(long, group = "target")]
        kafka: Option<String>,
        #[arg(long, default_value_t = 10_000)]
        transactions: u64,
        /// Loads in flight at once.
        #[arg(long, default_value_t = 200)]
        scale: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Transactions per second; 0 = as fast as possible.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Benchmarks; print a table and the command that reproduces it.
    Bench {
        #[command(subcommand)]
        bench: velocity::tools::bench::Bench,
    },
}

/// `1048576`, `64kB`, `512MB`, `2GB`, `1TB`: Postgres' memory units (powers of 1024).
fn parse_memory_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let number: usize =
        text[..digits].parse().map_err(|_| format!("{text:?}: expected a number of bytes, optionally with kB, MB, GB or TB"))?;
    let unit = match text[digits..].trim() {
        "" | "B" => 1usize,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        other => return Err(format!("{other:?}: valid units are B, kB, MB, GB and TB")),
    };
    number.checked_mul(unit).ok_or_else(|| format!("{text:?} is too large"))
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    velocity::engine::limit_malloc_arenas();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    command_line::hide_passwords();
    // Statements nested as deep as the server accepts are planned recursively.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(velocity::server::STATEMENT_STACK).build()?;
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            metrics,
            users,
            users_file,
            tls_cert,
            tls_key,
            max_connections,
            file_source_dirs,
            statement_memory,
        } => runtime.block_on(async {
            let mut user_secrets = velocity::server::auth::Users::default();
            for spec in &users {
                user_secrets.add_spec(spec)?;
            }
            if let Some(path) = &users_file {
                user_secrets.add_file(path)?;
            }
            if let Ok(text) = std::env::var("VELOCITY_USERS") {
                user_secrets.add_lines(&text).map_err(|e| anyhow::anyhow!("VELOCITY_USERS: {e}"))?;
            }
            let mut access = velocity::server::auth::Access::default().with_users(user_secrets);
            if let (Some(cert), Some(key)) = (&tls_cert, &tls_key) {
                access = access.with_tls(cert, key)?;
            }
            if !access.requires_password() && !listen.ip().is_loopback() {
                tracing::warn!("no --user configured: every client that reaches {listen} is trusted");
            }
            let listener = tokio::net::TcpListener::bind(listen).await?;
            let memory = match statement_memory {
                Some(bytes) => velocity::server::statement_context::StatementMemory::with_statement_limit(bytes),
                None => velocity::server::statement_context::StatementMemory::machine_default(),
            };
            let server = velocity::server::Server::open_with(&data_dir, access, memory).await?.with_max_connections(max_connections);
            if !file_source_dirs.is_empty() {
                server.coordinator.confine_file_sources(&file_source_dirs).map_err(|e| anyhow::anyhow!("--file-source-dir: {e}"))?;
            }
            if let Some(addr) = metrics {
                let metrics_listener = tokio::net::TcpListener::bind(addr).await?;
                println!("velocity: metrics on http://{}/metrics", metrics_listener.local_addr()?);
                tokio::spawn(velocity::server::metrics::serve(metrics_listener, server.engine.clone()));
            }
            // Tests and scripts read this line to learn the port (`--listen 127.0.0.1:0`).
            println!("velocity: listening on {}", listener.local_addr()?);
            tracing::info!("data in {}", data_dir.display());
            tokio::select! {
                r = server.serve(listener) => r?,
                _ = shutdown_signal() => tracing::info!("shutting down"),
            }
            anyhow::Ok(())
        }),
        Command::Demo { data_dir, listen, rate, scale, duration } => {
            runtime.block_on(velocity::tools::demo::run(velocity::tools::demo::DemoOptions {
                data_dir: &data_dir,
                listen,
                rate,
                scale,
                duration: duration.map(std::time::Duration::from_secs),
            }))
        }
        Command::Simulate { scenario, events, postgres, file, kafka, transactions, scale, seed, rate } => {
            use velocity::tools::simulate::{SimulateOptions, Target};
            if scenario == "nexmark" {
                let path = file.ok_or_else(|| anyhow::anyhow!("--scenario nexmark writes to a file: say --file"))?;
                return velocity::tools::simulate::nexmark_to_file(&path, events);
            }
            let target = match (postgres, file, kafka) {
                (Some(conn), _, _) => Target::Postgres(conn),
                (_, Some(path), _) => Target::File(path),
                (_, _, Some(brokers)) => Target::Kafka(brokers),
                _ => anyhow::bail!("say where to write: --postgres, --file or --kafka"),
            };
            let scenario = velocity::sources::logistics::Scenario { scale, seed };
            runtime.block_on(velocity::tools::simulate::run(SimulateOptions { target, scenario, transactions, rate }))
        }
        Command::Bench { bench } => runtime.block_on(velocity::tools::bench::run(bench)),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
