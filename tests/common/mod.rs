//! Shared test support: a real Velocity server on a free loopback port, real clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};

use tokio_postgres::{Client, NoTls};

/// An in-process server with its own data directory.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub server: Arc<velocity::server::Server>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (addr, server) = velocity::server::spawn(dir.path(), listener).await.expect("server starts");
        TestServer { addr, dir, server }
    }

    pub async fn client(&self) -> Client {
        connect(self.addr).await
    }
}

pub fn conn_string(addr: SocketAddr) -> String {
    format!("host={} port={} user=velocity dbname=velocity", addr.ip(), addr.port())
}

pub async fn connect(addr: SocketAddr) -> Client {
    let (client, connection) = tokio_postgres::connect(&conn_string(addr), NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The binary to test: `$VELOCITY_BIN` if set (worktrees sharing one target directory
/// overwrite each other's `target/debug/velocity`; point this at `target/debug/deps/velocity-HASH`),
/// otherwise Cargo's.
pub fn velocity_bin() -> PathBuf {
    std::env::var_os("VELOCITY_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_velocity")))
}

/// A `velocity serve` child process, for restart and kill -9 tests.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when started with `--metrics`.
    pub metrics: Option<SocketAddr>,
}

impl ServerProcess {
    /// Start the real binary on `data_dir` and wait for its "listening on" line.
    pub fn start(data_dir: &Path) -> ServerProcess {
        Self::start_with(data_dir, &[])
    }

    /// Like `start`, with extra `velocity serve` arguments (`--user`, `--metrics`, ...).
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// Like `start_with`, with extra environment variables (`VELOCITY_FAILPOINT`).
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        use std::io::BufRead;
        let mut child = Command::new(velocity_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn velocity");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut metrics = None;
        let addr = loop {
            let line = lines.next().expect("velocity exited before listening").expect("read stdout");
            if let Some(rest) = line.strip_prefix("velocity: metrics on http://") {
                metrics = Some(rest.trim().trim_end_matches("/metrics").parse().expect("metrics address"));
            }
            if let Some(rest) = line.strip_prefix("velocity: listening on ") {
                break rest.trim().parse().expect("address");
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServerProcess { child, addr, metrics }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn data_dir(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data")
}

/// All rows of a query as text, sorted: an order-independent multiset.
pub async fn rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")) {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    out.sort();
    out
}

/// A TMS table's rows (`velocity::sources::logistics::TABLES`) in a form both Postgres and
/// Velocity print the same way.
pub fn canonical_select(table: &str, columns: &[(&str, &str)], postgres: bool) -> String {
    let cols: Vec<String> = columns
        .iter()
        .map(|(c, t)| match (*t, postgres) {
            ("TIMESTAMP", true) => format!("CAST(extract(epoch FROM {c}) AS BIGINT)"),
            ("TIMESTAMP", false) => format!("to_unixtime({c})"),
            ("DOUBLE PRECISION", _) => format!("CAST(round({c} * 10) AS BIGINT)"),
            _ => c.to_string(),
        })
        .collect();
    format!("SELECT {} FROM {table} ORDER BY id", cols.join(", "))
}

/// A real Postgres with `wal_level=logical`: `VELOCITY_TEST_POSTGRES`, or one started by
/// `scripts/postgres-test.sh start` (left running for the next run).
pub fn postgres() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("VELOCITY_TEST_POSTGRES") {
            return url;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres-test.sh");
        let out = std::process::Command::new(script).arg("start").output().expect("run scripts/postgres-test.sh");
        assert!(out.status.success(), "postgres-test.sh start failed: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout.lines().last().expect("connection string").trim().to_string()
    })
}

fn without_dbname(conn: &str) -> String {
    conn.split_whitespace().filter(|kv| !kv.starts_with("dbname=")).collect::<Vec<_>>().join(" ")
}

pub async fn postgres_connect(conn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await.unwrap_or_else(|e| panic!("{conn}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A fresh database `name` (dropped first, with its slots); returns its connection string.
pub async fn fresh_postgres_database(name: &str) -> String {
    let admin = postgres_connect(&format!("{} dbname=postgres", without_dbname(postgres()))).await;
    let drop_slots = format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{name}'");
    for sql in [drop_slots, format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), format!("CREATE DATABASE {name}")] {
        admin.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    format!("{} dbname={name}", without_dbname(postgres()))
}

/// A Kafka-protocol broker: `$VELOCITY_TEST_KAFKA` when set (CI starts one), otherwise a
/// tansu started through `scripts/kafka-test.sh` that stops when the test process exits.
/// Without either the test fails: a skipped Kafka test would look like a passing one.
pub fn kafka_broker() -> String {
    static BROKER: OnceLock<String> = OnceLock::new();
    BROKER
        .get_or_init(|| {
            if let Ok(b) = std::env::var("VELOCITY_TEST_KAFKA") {
                return b;
            }
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka-test.sh");
            let out = Command::new("bash")
                .args([script, "start", "--owner", &std::process::id().to_string()])
                .output()
                .expect("run scripts/kafka-test.sh");
            assert!(
                out.status.success(),
                "no Kafka broker: set VELOCITY_TEST_KAFKA=host:port or install tansu \
                 (cargo install tansu --features dynostore --locked): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).lines().last().expect("address").trim().to_string()
        })
        .clone()
}

/// A name no other test run uses: tests share one broker.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

/// A protocol 3.0 StartupMessage with these parameters (`user`, `database`, ...).
pub fn startup_message(parameters: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (name, value) in parameters {
        for s in [name, value] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    let mut packet = (body.len() as u32 + 4).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}
