//! The server under connection pressure: a connection limit refused with 53300 as Postgres
//! refuses it, and an accept loop that survives running out of file descriptors.

mod common;

use std::process::Command;
use std::time::Duration;

async fn try_connect(addr: std::net::SocketAddr) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(&common::conn_string(addr), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_with_53300() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start_with(&common::data_dir(&dir), &["--max-connections", "3"]);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(try_connect(server.addr).await.expect("within the limit"));
    }
    let e = try_connect(server.addr).await.expect_err("a fourth connection is refused");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("53300"), "{e:?}");
    // The open sessions are unaffected; a closed one frees its slot.
    assert_eq!(common::rows(&open[0], "SELECT 1").await, vec![vec![Some("1".into())]]);
    drop(open.pop());
    let mut reconnected = None;
    for _ in 0..50 {
        match try_connect(server.addr).await {
            Ok(c) => {
                reconnected = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let client = reconnected.expect("a slot is free again");
    assert_eq!(common::rows(&client, "SELECT 2").await, vec![vec![Some("2".into())]]);
}

/// Set the soft limit on open files of process `pid` (the hard limit stays: lowering it could
/// not be undone without privileges); returns the soft limit it had.
fn set_open_files_limit(pid: u32, limit: &str) -> String {
    let prlimit = |args: &[&str]| {
        let out = Command::new("prlimit").arg("--pid").arg(pid.to_string()).args(args).output().expect("prlimit");
        assert!(out.status.success(), "prlimit {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = prlimit(&["--nofile", "--output", "SOFT", "--noheadings"]);
    prlimit(&[&format!("--nofile={limit}:")]);
    before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start(&common::data_dir(&dir));
    let client = try_connect(server.addr).await.unwrap();
    client.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY); INSERT INTO t VALUES (1)").await.unwrap();
    let in_use = std::fs::read_dir(format!("/proc/{}/fd", server.pid())).unwrap().count();
    let soft = set_open_files_limit(server.pid(), &(in_use + 5).to_string());
    // Far more connections than descriptors left: accept fails with EMFILE for the rest.
    let flood: Vec<std::net::TcpStream> = (0..40).filter_map(|_| std::net::TcpStream::connect(server.addr).ok()).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The session that was open keeps working.
    assert_eq!(common::rows(&client, "SELECT id FROM t").await, vec![vec![Some("1".into())]]);
    drop(flood);
    set_open_files_limit(server.pid(), &soft);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = try_connect(server.addr).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = again.expect("the server accepts connections again");
    assert_eq!(common::rows(&again, "SELECT count(*) FROM t").await, vec![vec![Some("1".into())]]);
}

/// Frontend messages, written by hand: a client library would not send a malformed one.
mod wire {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Connect as `velocity` (trust) and read up to ReadyForQuery.
    pub async fn startup(addr: std::net::SocketAddr) -> TcpStream {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(&crate::common::startup_message(&[("user", "velocity"), ("database", "velocity")])).await.unwrap();
        read_until_ready(&mut socket).await;
        socket
    }

    /// The SQLSTATEs of the ErrorResponses read up to ReadyForQuery.
    pub async fn read_until_ready(socket: &mut TcpStream) -> Vec<String> {
        let mut codes = Vec::new();
        loop {
            let tag = socket.read_u8().await.unwrap();
            let len = socket.read_u32().await.unwrap() as usize;
            let mut body = vec![0u8; len - 4];
            socket.read_exact(&mut body).await.unwrap();
            if tag == b'E' {
                for field in body.split(|b| *b == 0) {
                    if let Some(code) = field.strip_prefix(b"C") {
                        codes.push(String::from_utf8_lossy(code).into_owned());
                    }
                }
            }
            if tag == b'Z' {
                return codes;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_array_parameter_claiming_billions_of_elements_is_refused() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start(&common::data_dir(&dir));
    let mut socket = wire::startup(server.addr).await;
    // Parse `SELECT $1::BIGINT[]` with the parameter typed int8[] (OID 1016).
    let mut parse = b"\0SELECT $1::BIGINT[]\0".to_vec();
    parse.extend_from_slice(&1i16.to_be_bytes());
    parse.extend_from_slice(&1016u32.to_be_bytes());
    // Bind it in binary: one dimension of 2^31-1 int8 elements, and no element data.
    let mut array = Vec::new();
    for v in [1i32, 0, 20, i32::MAX, 1] {
        array.extend_from_slice(&v.to_be_bytes());
    }
    let mut bind = b"\0\0".to_vec();
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&(array.len() as i32).to_be_bytes());
    bind.extend_from_slice(&array);
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut execute = b"\0".to_vec();
    execute.extend_from_slice(&0i32.to_be_bytes());
    for m in [wire::message(b'P', &parse), wire::message(b'B', &bind), wire::message(b'E', &execute), wire::message(b'S', &[])] {
        socket.write_all(&m).await.unwrap();
    }
    let codes = wire::read_until_ready(&mut socket).await;
    assert_eq!(codes, vec!["08P01".to_string()]);
    // The server is up, and so is this connection.
    let client = try_connect(server.addr).await.unwrap();
    assert_eq!(common::rows(&client, "SELECT 1").await, vec![vec![Some("1".into())]]);
}

/// statement_timeout stops a query that is still computing its rows, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_stops_a_running_query() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start(&common::data_dir(&dir));
    let client = try_connect(server.addr).await.unwrap();
    client.batch_execute("SET statement_timeout = '500ms'").await.unwrap();
    let endless = "SELECT count(*) FROM generate_series(1, 9223372036854775807)";
    let e = client.simple_query(endless).await.expect_err("stopped by the timeout");
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e:?}");
    // The extended protocol too.
    let e = client.query(endless, &[]).await.expect_err("stopped by the timeout");
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e:?}");
    client.batch_execute("SET statement_timeout = 0").await.unwrap();
    assert_eq!(common::rows(&client, "SELECT count(*) FROM generate_series(1, 1000)").await, vec![vec![Some("1000".into())]]);
}
