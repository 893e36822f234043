//! psql, the real client: meta-commands list Velocity's tables and views with their columns;
//! and the transaction states psql relies on.

mod common;

use std::process::Command;

fn psql(addr: std::net::SocketAddr, command: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
            "-U",
            "velocity",
            "velocity",
            "-c",
            command,
        ])
        .output()
        .expect("psql is installed (postgresql-client)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "psql {command} failed: {stderr}\n{stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_meta_commands_show_tables_and_views() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE shipments (id BIGINT PRIMARY KEY, status TEXT, weight DOUBLE);
             INSERT INTO shipments VALUES (1, 'PLANNED', 2.5);
             CREATE MATERIALIZED VIEW per_status AS SELECT status, count(*) AS n FROM shipments GROUP BY status;",
        )
        .await
        .unwrap();
    let addr = server.addr;
    let (dt, dv, d_view, select) = tokio::task::spawn_blocking(move || {
        (psql(addr, "\\dt"), psql(addr, "\\dm"), psql(addr, "\\d per_status"), psql(addr, "SELECT * FROM per_status"))
    })
    .await
    .unwrap();
    assert!(dt.contains("shipments"), "\\dt:\n{dt}");
    assert!(!dt.contains("per_status"), "\\dt lists only tables:\n{dt}");
    assert!(dv.contains("per_status"), "\\dm lists materialized views:\n{dv}");
    assert!(d_view.contains("status") && d_view.contains("n"), "\\d per_status:\n{d_view}");
    assert!(d_view.contains("bigint"), "\\d shows column types:\n{d_view}");
    assert!(select.contains("PLANNED") && select.contains("(1 row)"), "SELECT:\n{select}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_meta_commands_show_plain_views() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE legs (id BIGINT PRIMARY KEY, km INT);
             CREATE VIEW long_legs AS SELECT id, km FROM legs WHERE km > 100;
             CREATE MATERIALIZED VIEW leg_count AS SELECT count(*) AS n FROM legs;",
        )
        .await
        .unwrap();
    let addr = server.addr;
    let (dv, dm, describe) =
        tokio::task::spawn_blocking(move || (psql(addr, "\\dv"), psql(addr, "\\dm"), psql(addr, "\\d+ long_legs"))).await.unwrap();
    assert!(dv.contains("long_legs") && !dv.contains("leg_count"), "\\dv lists plain views only:\n{dv}");
    assert!(dm.contains("leg_count") && !dm.contains("long_legs"), "\\dm lists materialized views only:\n{dm}");
    assert!(describe.contains("View \"public.long_legs\""), "\\d+ of a view:\n{describe}");
    assert!(describe.contains("View definition:") && describe.contains("SELECT id, km FROM legs WHERE km > 100;"), "{describe}");
    let by_name: String = client.query_one("SELECT pg_get_viewdef('long_legs'::regclass)", &[]).await.unwrap().get(0);
    assert_eq!(by_name, "SELECT id, km FROM legs WHERE km > 100;");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_with_parameters() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    client.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT, score DOUBLE)").await.unwrap();
    let insert = client.prepare("INSERT INTO t VALUES ($1, $2, $3)").await.unwrap();
    for i in 0..5i64 {
        client.execute(&insert, &[&i, &format!("n{i}"), &(i as f64 * 1.5)]).await.unwrap();
    }
    client.execute("UPDATE t SET score = $1 WHERE id = $2", &[&100.0f64, &3i64]).await.unwrap();
    client.execute("DELETE FROM t WHERE id = $1", &[&0i64]).await.unwrap();
    client.batch_execute("CREATE MATERIALIZED VIEW high AS SELECT id, name FROM t WHERE score > 4").await.unwrap();
    let rows = client.query("SELECT id, name FROM high WHERE id >= $1 ORDER BY id", &[&1i64]).await.unwrap();
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(3, "n3".to_string()), (4, "n4".to_string())]);
    // Errors keep their SQLSTATE on the extended path too, and the session stays usable.
    let err = client.execute(&insert, &[&1i64, &"dup", &1.0f64]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("23505"), "{err:?}");
    let n: i64 = client.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_tables_views_and_contents() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start(dir.path());
    let client = common::connect(server.addr).await;
    client
        .batch_execute(
            "CREATE TABLE legs (id INT PRIMARY KEY, trip INT, km INT);
             CREATE MATERIALIZED VIEW trip_km AS SELECT trip, sum(km) AS km, count(*) AS legs FROM legs GROUP BY trip;
             CREATE VIEW short_legs AS SELECT id, km FROM legs WHERE km < 60;
             CREATE OR REPLACE VIEW short_legs AS SELECT id, km, trip FROM legs WHERE km < 60;
             CREATE MATERIALIZED VIEW short_km AS SELECT sum(km) AS km FROM short_legs;
             INSERT INTO legs VALUES (1, 1, 100), (2, 1, 50), (3, 2, 10);",
        )
        .await
        .unwrap();
    let before = common::rows(&client, "SELECT * FROM trip_km").await;
    drop(client);
    server.kill9();

    let server = common::ServerProcess::start(dir.path());
    let client = common::connect(server.addr).await;
    assert_eq!(common::rows(&client, "SELECT * FROM trip_km").await, before);
    // Maintenance continues from the restored state.
    client.batch_execute("INSERT INTO legs VALUES (4, 2, 5); DELETE FROM legs WHERE id = 1;").await.unwrap();
    let after = common::rows(&client, "SELECT trip, km, legs FROM trip_km").await;
    let expected: Vec<Vec<Option<String>>> =
        vec![vec![Some("1".into()), Some("50".into()), Some("1".into())], vec![Some("2".into()), Some("15".into()), Some("2".into())]];
    assert_eq!(after, expected);
    // The plain view is back with its replaced definition, and the materialized view over
    // it is maintained.
    let short = common::rows(&client, "SELECT id, km, trip FROM short_legs ORDER BY id").await;
    assert_eq!(
        short,
        vec![
            vec![Some("2".into()), Some("50".into()), Some("1".into())],
            vec![Some("3".into()), Some("10".into()), Some("2".into())],
            vec![Some("4".into()), Some("5".into()), Some("2".into())]
        ]
    );
    assert_eq!(common::rows(&client, "SELECT km FROM short_km").await, vec![vec![Some("65".into())]]);
    let err = client.batch_execute("DROP VIEW short_legs").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("2BP01"), "the dependency survives the restart: {err:?}");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_coalesces_the_key_of_right_using_joins() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE depots (code TEXT, city TEXT); CREATE TABLE docks (code TEXT, doors INT);
             INSERT INTO depots VALUES ('ber', 'Berlin'); INSERT INTO docks VALUES ('ber', 4), ('cdg', 9);",
        )
        .await
        .unwrap();
    // Postgres: the merged key of the right-only row is 'cdg' (not NULL).
    let rows =
        client.query("SELECT code, doors FROM depots NATURAL RIGHT JOIN docks WHERE doors > $1 ORDER BY code", &[&0i32]).await.unwrap();
    let got: Vec<(String, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![("ber".to_string(), 4), ("cdg".to_string(), 9)]);
}

/// A COMMIT that fails (a duplicate key) ends the transaction block as in Postgres: the
/// session is idle afterwards and its next statements run (it was left aborted, 25P02).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_ends_the_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start(&common::data_dir(&dir));
    let client = common::connect(server.addr).await;
    client.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY)").await.unwrap();
    client.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    // The simple protocol, as psql and psycopg's commit() send it.
    client.simple_query("BEGIN").await.unwrap();
    client.simple_query("INSERT INTO t VALUES (1)").await.unwrap();
    let e = client.simple_query("COMMIT").await.expect_err("duplicate key at COMMIT");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("23505"), "{e}");
    client.simple_query("INSERT INTO t VALUES (2)").await.expect("the session is idle, not aborted");
    let n: i64 = client.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
}

/// A frontend message: tag, length, body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// What the server answers a raw session that logs in and sends `messages`, until it closes
/// the connection or sends a second ReadyForQuery.
async fn raw_session(addr: std::net::SocketAddr, messages: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut packet = common::startup_message(&[("user", "velocity"), ("database", "velocity")]);
    packet.extend_from_slice(messages);
    socket.write_all(&packet).await.expect("send");
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), socket.read(&mut buf)).await.expect("an answer");
        match read {
            Ok(0) | Err(_) => return answer,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        if answer.windows(6).filter(|w| *w == b"Z\0\0\0\x05I").count() >= 2 {
            return answer;
        }
    }
}

/// Invalid UTF-8 in a query's text is refused with 22021 naming the bytes, as in Postgres,
/// in the simple protocol and in a Parse, instead of being stored as U+FFFD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_query_is_refused_with_22021() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start(&common::data_dir(&dir));
    let client = common::connect(server.addr).await;
    client.batch_execute("CREATE TABLE notes (id INT PRIMARY KEY, body TEXT)").await.unwrap();
    let query = message(b'Q', b"INSERT INTO notes VALUES (1, 'a\xc3\x28b')\0");
    let mut parse = b"\0INSERT INTO notes VALUES (2, 'a\xffb')\0".to_vec();
    parse.extend(0u16.to_be_bytes());
    let mut extended = message(b'P', &parse);
    extended.extend(message(b'S', &[]));
    for (messages, bytes) in [(query, "0xc3 0x28"), (extended, "0xff")] {
        let answer = String::from_utf8_lossy(&raw_session(server.addr, &messages).await).into_owned();
        assert!(answer.contains("C22021\0"), "22021: {answer:?}");
        assert!(answer.contains(&format!("Minvalid byte sequence for encoding \"UTF8\": {bytes}\0")), "message: {answer:?}");
    }
    let n: i64 = client.query_one("SELECT count(*) FROM notes", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "nothing was stored");
}
