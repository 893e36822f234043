//! Real Postgres clients against the real `velocity serve` binary: psycopg 3, SQLAlchemy
//! inspection (as Superset uses it), node-postgres, pgjdbc and psql's meta-commands.
//!
//! Each client script lives in `tests/clients/` and exits non-zero on its first mismatch.
//! `.ci/run` installs the clients; a missing client fails its test (it is never skipped).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(180);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The Python with psycopg and SQLAlchemy: `$VELOCITY_TEST_PYTHON` or `tests/clients/.venv`.
fn python() -> PathBuf {
    let path = std::env::var_os("VELOCITY_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| clients_dir().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: run .ci/run, or python3 -m venv tests/clients/.venv && tests/clients/.venv/bin/pip install 'psycopg[binary]' sqlalchemy pandas",
        path.display()
    );
    path
}

/// Run a client to completion (bounded by `TIMEOUT`) and return its stdout; panic with its
/// output if it fails.
fn run(name: &str, command: &mut Command) -> String {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let stdout_path = out_dir.path().join("stdout");
    let stderr_path = out_dir.path().join("stderr");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot start {command:?}: {e} (is the client installed? see .ci/run)"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => stdout,
        Some(s) => panic!("{name} failed ({s}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"),
        None => panic!("{name} timed out after {TIMEOUT:?}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"),
    }
}

fn start_server() -> (tempfile::TempDir, common::ServerProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::ServerProcess::start(dir.path());
    (dir, server)
}

fn dsn(server: &common::ServerProcess) -> String {
    format!("host={} port={} user=velocity dbname=velocity", server.addr.ip(), server.addr.port())
}

#[test]
fn psycopg3() {
    let (_dir, server) = start_server();
    let out = run("psycopg", Command::new(python()).arg(clients_dir().join("psycopg_client.py")).env("VELOCITY_DSN", dsn(&server)));
    assert!(out.contains("psycopg: all checks passed"), "{out}");
}

#[test]
fn sqlalchemy_inspection() {
    let (_dir, server) = start_server();
    let url = format!("postgresql+psycopg://velocity@{}:{}/velocity", server.addr.ip(), server.addr.port());
    let out = run("sqlalchemy", Command::new(python()).arg(clients_dir().join("sqlalchemy_inspect.py")).env("VELOCITY_URL", url));
    assert!(out.contains("sqlalchemy: all checks passed"), "{out}");
}

#[test]
fn node_postgres() {
    let node_dir = clients_dir().join("node");
    assert!(node_dir.join("node_modules/pg").exists(), "node-postgres is missing: run .ci/run, or (cd tests/clients/node && npm install)");
    let (_dir, server) = start_server();
    let out = run(
        "node-postgres",
        Command::new("node")
            .arg("test.js")
            .current_dir(&node_dir)
            .env("PGHOST", server.addr.ip().to_string())
            .env("PGPORT", server.addr.port().to_string())
            .env("PGUSER", "velocity")
            .env("PGDATABASE", "velocity"),
    );
    assert!(out.contains("node-postgres: all checks passed"), "{out}");
}

const PGJDBC: &str = "/usr/share/java/postgresql.jar";

#[test]
fn pgjdbc() {
    assert!(Path::new(PGJDBC).exists(), "{PGJDBC} is missing: apt-get install libpostgresql-jdbc-java (see .ci/run)");
    let (_dir, server) = start_server();
    let url = format!("jdbc:postgresql://{}:{}/velocity", server.addr.ip(), server.addr.port());
    let out =
        run("pgjdbc", Command::new("java").args(["-cp", PGJDBC]).arg(clients_dir().join("JdbcTest.java")).args([url.as_str(), "velocity"]));
    assert!(out.contains("pgjdbc: all checks passed"), "{out}");
}

fn psql(server: &common::ServerProcess, command: &str) -> String {
    run(
        &format!("psql {command}"),
        Command::new("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", &server.addr.ip().to_string(), "-p", &server.addr.port().to_string()])
            .args(["-U", "velocity", "velocity", "-c", command]),
    )
}

#[test]
fn psql_meta_commands() {
    let (_dir, server) = start_server();
    psql(
        &server,
        "CREATE TABLE shipments (id BIGINT PRIMARY KEY, status TEXT NOT NULL, weight DOUBLE PRECISION, due DATE);
         INSERT INTO shipments VALUES (1, 'PLANNED', 2.5, '2024-01-01'), (2, 'LOADED', NULL, NULL);
         CREATE MATERIALIZED VIEW per_status AS SELECT status, count(*) AS n FROM shipments GROUP BY status;",
    );
    let l = psql(&server, "\\l");
    assert!(l.contains("velocity"), "\\l:\n{l}");
    let dt = psql(&server, "\\dt");
    assert!(dt.contains("shipments") && !dt.contains("per_status"), "\\dt lists tables only:\n{dt}");
    let dm = psql(&server, "\\dm");
    assert!(dm.contains("per_status") && dm.contains("materialized view"), "\\dm:\n{dm}");
    let dv = psql(&server, "\\dv");
    assert!(!dv.contains("per_status"), "\\dv lists plain views, not materialized ones:\n{dv}");
    let d = psql(&server, "\\d shipments");
    assert!(d.contains("Table \"public.shipments\""), "\\d shipments:\n{d}");
    assert!(d.contains("bigint") && d.contains("text") && d.contains("double precision") && d.contains("date"), "\\d types:\n{d}");
    assert!(d.contains("not null"), "\\d shows NOT NULL:\n{d}");
    assert!(d.contains("Indexes:\n    \"shipments_pkey\" PRIMARY KEY, btree (id)"), "\\d shows the primary key's index:\n{d}");
    let d_index = psql(&server, "\\d shipments_pkey");
    assert!(
        d_index.contains("Index \"public.shipments_pkey\"") && d_index.contains("primary key, btree, for table \"public.shipments\""),
        "\\d shipments_pkey:\n{d_index}"
    );
    assert!(d_index.contains(" id     | bigint | yes  | id"), "\\d shipments_pkey lists the key column:\n{d_index}");
    let di = psql(&server, "\\di");
    assert!(di.contains("shipments_pkey") && di.contains("index"), "\\di:\n{di}");
    let d_view = psql(&server, "\\d per_status");
    assert!(d_view.contains("Materialized view \"public.per_status\""), "\\d per_status:\n{d_view}");
    assert!(d_view.contains("status") && d_view.contains("bigint"), "\\d per_status columns:\n{d_view}");
    let d_plus = psql(&server, "\\d+ shipments");
    assert!(d_plus.contains("shipments") && d_plus.contains("weight"), "\\d+ shipments:\n{d_plus}");
    let d_plus_view = psql(&server, "\\d+ per_status");
    assert!(d_plus_view.contains("per_status"), "\\d+ per_status:\n{d_plus_view}");
    assert!(
        d_plus_view.contains("View definition:\nSELECT status, count(*) AS n FROM shipments GROUP BY status;"),
        "\\d+ per_status prints the definition:\n{d_plus_view}"
    );
    // As on Postgres 15: a materialized view's columns carry no NOT NULL, its rows are heap's.
    let columns: Vec<Vec<&str>> = d_plus_view.lines().skip(3).take(2).map(|l| l.split('|').map(str::trim).collect()).collect();
    assert_eq!(
        columns,
        [["status", "text", "", "", "", "extended", "", "", ""], ["n", "bigint", "", "", "", "plain", "", "", ""]],
        "\\d+ per_status columns:\n{d_plus_view}"
    );
    assert!(d_plus_view.trim_end().ends_with("Access method: heap"), "\\d+ per_status:\n{d_plus_view}");
    psql(&server, "CREATE ROLE reader; GRANT SELECT ON shipments TO reader");
    let du = psql(&server, "\\du");
    let roles: Vec<Vec<&str>> = du.lines().skip(3).take_while(|l| !l.is_empty()).map(|l| l.split('|').map(str::trim).collect()).collect();
    assert_eq!(
        roles,
        [vec!["reader", "Cannot login", "{}"], vec!["velocity", "Superuser, Create role, Create DB, Bypass RLS", "{}"]],
        "\\du:\n{du}"
    );
    let dt_plus = psql(&server, "\\dt+");
    assert!(dt_plus.contains("Size") && dt_plus.contains("shipments") && dt_plus.contains("permanent"), "\\dt+:\n{dt_plus}");
    assert!(!dt_plus.contains("per_status"), "\\dt+ lists tables only:\n{dt_plus}");
    // Sizes are the bytes of the stored rows: two rows are more than nothing.
    let stored = |listing: &str, name: &str| -> u64 {
        let line = listing.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name} listed:\n{listing}"));
        let size = line.split('|').nth(6).unwrap_or_default().trim().to_string();
        size.strip_suffix(" bytes").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("size of {name} in bytes:\n{listing}"))
    };
    assert!(stored(&dt_plus, "shipments") > 0, "\\dt+ size:\n{dt_plus}");
    let access_method = |listing: &str, name: &str| -> String {
        let line = listing.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name} listed:\n{listing}"));
        line.split('|').nth(5).unwrap_or_default().trim().to_string()
    };
    assert_eq!(access_method(&dt_plus, "shipments"), "heap", "\\dt+ access method:\n{dt_plus}");
    let dm_plus = psql(&server, "\\dm+");
    assert!(dm_plus.contains("per_status") && dm_plus.contains("materialized view") && dm_plus.contains("Size"), "\\dm+:\n{dm_plus}");
    assert!(stored(&dm_plus, "per_status") > 0, "\\dm+ size:\n{dm_plus}");
    assert_eq!(access_method(&dm_plus, "per_status"), "heap", "\\dm+ access method:\n{dm_plus}");
    let dp = psql(&server, "\\dp");
    assert!(dp.contains("Access privileges") && dp.contains("Policies"), "\\dp:\n{dp}");
    assert!(dp.contains("shipments") && dp.contains("per_status"), "\\dp lists tables and views:\n{dp}");
    // The owner's and the grantee's privileges, one per line, as psql prints an aclitem[].
    assert!(
        dp.contains(" public | shipments  | table             | velocity=arwd/velocity+|")
            && dp.contains("|            |                   | reader=r/velocity      |"),
        "\\dp shows the grant on shipments:\n{dp}"
    );
    let d_types = psql(&server, "\\dT");
    assert!(d_types.contains("List of data types") && d_types.contains("(0 rows)"), "\\dT (no user-defined types):\n{d_types}");
    let db = psql(&server, "\\db");
    assert!(db.contains("List of tablespaces") && db.contains("pg_default"), "\\db:\n{db}");
    let df = psql(&server, "\\df");
    assert!(df.contains("List of functions"), "\\df:\n{df}");
    // Tools parse the leading number of server_version; encodings are UTF8.
    let version = psql(&server, "SHOW server_version");
    let number = version.lines().nth(2).unwrap_or_default().trim().to_string();
    let major: u32 = number.split('.').next().unwrap_or_default().parse().unwrap_or_else(|_| panic!("SHOW server_version:\n{version}"));
    assert!(major >= 15, "SHOW server_version:\n{version}");
    let version_num = psql(&server, "SHOW server_version_num");
    let num: u32 = version_num.lines().nth(2).unwrap_or_default().trim().parse().unwrap_or_default();
    assert_eq!(num / 10_000, major, "SHOW server_version_num agrees with {number}:\n{version_num}");
    let encoding = psql(&server, "SHOW client_encoding");
    assert!(encoding.contains(" UTF8"), "SHOW client_encoding:\n{encoding}");
    // Column names as Postgres gives them, through the simple protocol.
    let names = psql(&server, "SELECT count(*), max(weight), weight + 1 FROM shipments GROUP BY weight ORDER BY 2 LIMIT 1");
    assert!(names.lines().next().is_some_and(|h| h.split('|').map(str::trim).eq(["count", "max", "?column?"])), "column names:\n{names}");
    let select = psql(&server, "SELECT * FROM per_status ORDER BY status");
    assert!(select.contains("PLANNED") && select.contains("(2 rows)"), "SELECT:\n{select}");
}
