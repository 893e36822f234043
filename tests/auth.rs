//! Authentication and TLS: SCRAM-SHA-256 users given at start, wrong passwords refused with
//! 28P01, nothing runs before authentication, TLS with psql (with and without channel binding).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio_postgres::NoTls;

async fn connect(addr: SocketAddr, user: &str, password: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conn = format!("host={} port={} user={user} password={password} dbname=velocity", addr.ip(), addr.port());
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// Frontend message: type byte, length, body.
fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn startup(user: &str) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for s in ["user", user, "database", "velocity", ""] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// Read one backend message: (type, body). None at end of stream.
fn read_message(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).ok()?;
    let len = i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).ok()?;
    Some((head[0], body))
}

/// The SQLSTATE field of an ErrorResponse body.
fn error_code(body: &[u8]) -> String {
    body.split(|b| *b == 0).find_map(|f| f.strip_prefix(b"C")).map(|c| String::from_utf8_lossy(c).to_string()).unwrap_or_default()
}

fn psql(addr: SocketAddr, conninfo_extra: &str, password: &str, command: &str) -> std::process::Output {
    let conninfo = format!("host={} port={} user=alice dbname=velocity {conninfo_extra}", addr.ip(), addr.port());
    Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &conninfo, "-c", command])
        .env("PGPASSWORD", password)
        .output()
        .expect("psql is installed (postgresql-client)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_passwords_are_required_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("users");
    std::fs::write(&users_file, "# name:password\nbob:pw:with:colons\n").unwrap();
    let server = common::ServerProcess::start_with(
        &dir.path().join("data"),
        &["--user", "alice:s3cret", "--users-file", users_file.to_str().unwrap()],
    );
    let addr = server.addr;

    let wrong = connect(addr, "alice", "nope").await.map(|_| ()).unwrap_err();
    assert_eq!(sqlstate(&wrong).as_deref(), Some("28P01"), "wrong password: {wrong:?}");
    let unknown = connect(addr, "mallory", "s3cret").await.map(|_| ()).unwrap_err();
    assert_eq!(sqlstate(&unknown).as_deref(), Some("28P01"), "unknown user: {unknown:?}");

    let alice = connect(addr, "alice", "s3cret").await.expect("right password");
    alice.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY); INSERT INTO t VALUES (1)").await.unwrap();
    let bob = connect(addr, "bob", "pw:with:colons").await.expect("user from --users-file");
    let n: i64 = bob.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);

    // A statement sent before authentication finishes is never run: right after the startup
    // message, and pipelined behind a wrong SCRAM proof.
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&startup("alice")).unwrap();
        s.write_all(&query("CREATE TABLE early (x INT)")).unwrap();
        let (kind, body) = read_message(&mut s).expect("authentication request");
        assert_eq!((kind, &body[..4]), (b'R', &10i32.to_be_bytes()[..]), "AuthenticationSASL first");
        drop(s);

        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&startup("alice")).unwrap();
        let (kind, _) = read_message(&mut s).expect("AuthenticationSASL");
        assert_eq!(kind, b'R');
        let client_first = b"n,,n=,r=abcdefghijklmnopqrstuvwx";
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&(client_first.len() as i32).to_be_bytes());
        body.extend_from_slice(client_first);
        s.write_all(&message(b'p', &body)).unwrap();
        let (kind, body) = read_message(&mut s).expect("SASLContinue");
        assert_eq!((kind, &body[..4]), (b'R', &11i32.to_be_bytes()[..]), "AuthenticationSASLContinue");
        let server_first = String::from_utf8_lossy(&body[4..]).to_string();
        let nonce = server_first.split(',').find_map(|p| p.strip_prefix("r=")).expect("server nonce");
        let client_final = format!("c=biws,r={nonce},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        let mut pipelined = message(b'p', client_final.as_bytes());
        pipelined.extend(query("CREATE TABLE pwned (x INT)"));
        s.write_all(&pipelined).unwrap();
        let mut codes = Vec::new();
        while let Some((kind, body)) = read_message(&mut s) {
            if kind == b'E' {
                codes.push(error_code(&body));
            }
            assert_ne!(kind, b'C', "no command may complete on an unauthenticated connection");
        }
        assert_eq!(codes.first().map(String::as_str), Some("28P01"), "bad proof refused: {codes:?}");
    })
    .await
    .unwrap();
    let names = common::rows(&alice, "SELECT name FROM velocity_catalog.relations ORDER BY name").await;
    assert_eq!(names, vec![vec![Some("t".to_string())]], "only alice's table exists");

    // psql (libpq) speaks SCRAM too.
    let out = tokio::task::spawn_blocking(move || psql(addr, "", "s3cret", "SELECT count(*) AS n FROM t")).await.unwrap();
    assert!(out.status.success(), "psql with password: {}", String::from_utf8_lossy(&out.stderr));
    let out = tokio::task::spawn_blocking(move || psql(addr, "", "bad", "SELECT 1")).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.to_lowercase().contains("password authentication failed"), "psql wrong password: {stderr}");
}

fn make_certificate(dir: &Path) -> (String, String) {
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(status.status.success(), "openssl: {}", String::from_utf8_lossy(&status.stderr));
    (cert.to_str().unwrap().to_string(), key.to_str().unwrap().to_string())
}

#[test]
fn tls_with_scram_and_channel_binding() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path());
    let server =
        common::ServerProcess::start_with(&dir.path().join("data"), &["--user", "alice:s3cret", "--tls-cert", &cert, "--tls-key", &key]);
    for extra in ["sslmode=require", "sslmode=require channel_binding=require", &format!("sslmode=verify-ca sslrootcert={cert}")] {
        let out = psql(server.addr, extra, "s3cret", "\\conninfo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "psql {extra}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("SSL connection"), "psql {extra} is encrypted: {stdout}");
    }
    let out = psql(server.addr, "sslmode=require", "wrong", "SELECT 1");
    assert!(!out.status.success(), "wrong password over TLS is refused");
    // Plain connections still work unless the client insists on TLS.
    let out = psql(server.addr, "sslmode=disable", "s3cret", "SELECT 1");
    assert!(out.status.success(), "plain: {}", String::from_utf8_lossy(&out.stderr));
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("no {name} in {text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Passwords stay off the command line others can read: `--user`'s is blanked from
/// /proc/PID/cmdline once the server starts, and `VELOCITY_USERS` never puts one there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_do_not_show_in_the_process_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start_with_env(
        &dir.path().join("data"),
        &["--user", "alice:s3cret-one", "--user=dave:s3cret-two"],
        &[("VELOCITY_USERS", "carol:s3cret-three\n# a comment\n")],
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!cmdline.contains("s3cret"), "{cmdline}");
    assert!(cmdline.contains("--user alice:") && cmdline.contains("--user=dave:"), "{cmdline}");
    for (user, password) in [("alice", "s3cret-one"), ("dave", "s3cret-two"), ("carol", "s3cret-three")] {
        let client = connect(server.addr, user, password).await.unwrap_or_else(|e| panic!("{user}: {e}"));
        let name: String = client.query_one("SELECT current_user", &[]).await.unwrap().get(0);
        assert_eq!(name, user);
    }
}

/// After failed logins, further attempts from the same address wait their turn (how long,
/// and that concurrent attempts queue, is the unit test `server::login_throttle`); a right
/// password still gets in, and a success forgets the failures. Counted in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_slow_down_further_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start_with(&dir.path().join("data"), &["--user", "alice:s3cret", "--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics.expect("metrics address");
    for _ in 0..6 {
        let e = connect(server.addr, "alice", "guess").await.map(|_| ()).unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
    }
    assert_eq!(metric(metrics, "velocity_login_failures_total"), 6.0);
    assert_eq!(metric(metrics, "velocity_logins_throttled_total"), 5.0, "every attempt after the first failure waited its turn");
    println!("waited {} s in all", metric(metrics, "velocity_login_delay_seconds_total"));
    connect(server.addr, "alice", "s3cret").await.expect("the right password still gets in");
    assert_eq!(metric(metrics, "velocity_logins_throttled_total"), 6.0);
    connect(server.addr, "alice", "s3cret").await.expect("again");
    assert_eq!(metric(metrics, "velocity_logins_throttled_total"), 6.0, "a success forgot the failures");
}
