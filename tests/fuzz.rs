//! Bounded fuzzing of the real server: generated SQL statements and mutated protocol messages
//! (raw TCP). Whatever a client sends, the server stays up, never panics, a second session
//! keeps answering `SELECT 1` throughout, and its resident memory stays under a bound.
//!
//! Reproducible: one fixed seed (printed; `VELOCITY_FUZZ_SEED` overrides it), a fixed number
//! of cases (`VELOCITY_FUZZ_CASES` scales them).

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

/// Resident memory the server may reach during the run.
const RSS_BOUND_KB: u64 = 2 * 1024 * 1024;

/// xorshift64*: small, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// A `velocity serve` child whose stderr goes to a file, so the test can look for panics.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: std::path::PathBuf,
}

impl Server {
    fn start(dir: &tempfile::TempDir, extra: &[&str]) -> Server {
        use std::io::BufRead;
        let stderr = dir.path().join("stderr.log");
        let mut child = Command::new(common::velocity_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn velocity");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = loop {
            let line = lines.next().expect("velocity exited before listening").expect("read stdout");
            if let Some(rest) = line.strip_prefix("velocity: listening on ") {
                break rest.trim().parse().expect("address");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server { child, addr, stderr }
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
    }

    /// Up (not exited) and nothing in its log says a thread panicked.
    fn check_alive(&mut self) {
        self.check_alive_after("");
    }

    fn check_alive_after(&mut self, what: &str) {
        let mut log = String::new();
        std::fs::File::open(&self.stderr).and_then(|mut f| f.read_to_string(&mut log)).expect("stderr log");
        let exited = self.child.try_wait().expect("try_wait");
        assert!(exited.is_none(), "the server exited ({exited:?}) after {what}:\n{log}");
        assert!(!log.contains("panicked"), "the server panicked (after {what}):\n{log}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn seed() -> u64 {
    std::env::var("VELOCITY_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_0016)
}

fn cases(n: usize) -> usize {
    let scale: f64 = std::env::var("VELOCITY_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    ((n as f64) * scale) as usize
}

/// The watching session answers `SELECT 1` (within a generous bound: a stalled server fails).
async fn watcher_answers(watcher: &tokio_postgres::Client) {
    let answer = tokio::time::timeout(Duration::from_secs(60), watcher.simple_query("SELECT 1")).await;
    assert!(matches!(answer, Ok(Ok(_))), "the watching session got no answer: {answer:?}");
}

const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "ORDER BY",
    "LIMIT",
    "OFFSET",
    "JOIN",
    "LEFT JOIN",
    "ON",
    "UNION ALL",
    "EXCEPT",
    "INTERSECT",
    "CREATE TABLE",
    "CREATE MATERIALIZED VIEW",
    "CREATE VIEW",
    "DROP TABLE",
    "DROP VIEW",
    "INSERT INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE FROM",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IS NULL",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "CAST",
    "::",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SHOW",
    "EXPLAIN",
    "WITH",
    "DISTINCT",
    "HAVING",
    "OVER",
    "PARTITION BY",
    "PRIMARY KEY",
    "IN",
    "EXISTS",
    "BETWEEN",
    "LIKE",
    "COPY",
    "GRANT",
    "REVOKE",
    "CREATE ROLE",
    "SET ROLE",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "SUBSCRIBE",
    "FLUSH",
    "CREATE SOURCE",
    "CREATE SINK",
    "TABLE",
];
const IDENTS: &[&str] =
    &["t", "u", "v", "a", "b", "id", "x", "pg_catalog.pg_class", "information_schema.tables", "velocity_catalog.dead_letters", "\"q\""];
const TYPES: &[&str] = &[
    "INT",
    "BIGINT",
    "SMALLINT",
    "TEXT",
    "BOOLEAN",
    "DOUBLE PRECISION",
    "NUMERIC(10,2)",
    "DATE",
    "TIMESTAMP",
    "INTERVAL",
    "INT[]",
    "JSON",
    "BYTEA",
];
const LITERALS: &[&str] = &[
    "0",
    "1",
    "-1",
    "9223372036854775807",
    "-9223372036854775808",
    "2147483647",
    "1e308",
    "'NaN'",
    "NULL",
    "TRUE",
    "''",
    "'x'",
    "'2024-02-30'",
    "'1 day'",
    "'{1,2,3}'",
    "E'\\\\x00'",
    "$1",
    "0.1",
    "'\u{1F600}'",
    "ARRAY[1,2]",
    "repeat('x', 1000)",
];
const FUNCTIONS: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "abs",
    "length",
    "upper",
    "coalesce",
    "generate_series",
    "now",
    "date_trunc",
    "array_agg",
    "string_agg",
    "row_number",
];
const PUNCT: &[&str] = &["(", ")", ",", ";", "*", "+", "-", "/", "%", "=", "<>", "<", ">=", "||", ".", "[", "]", "'", "\""];

/// A grammar-ish statement: either a shape that parses (with random parts), or a token soup.
fn statement(rng: &mut Rng) -> String {
    let lit = |rng: &mut Rng| rng.pick(LITERALS).to_string();
    let ident = |rng: &mut Rng| rng.pick(IDENTS).to_string();
    let expr = |rng: &mut Rng| -> String {
        let mut e = if rng.chance(50) { lit(rng) } else { ident(rng) };
        for _ in 0..rng.below(4) {
            let op = *rng.pick(&["+", "-", "*", "/", "%", "=", "<", "AND", "OR", "||", "IS DISTINCT FROM"]);
            let rhs = if rng.chance(50) { lit(rng) } else { ident(rng) };
            e = format!("{e} {op} {rhs}");
        }
        if rng.chance(30) {
            e = format!("{}({e})", rng.pick(FUNCTIONS));
        }
        if rng.chance(20) {
            e = format!("CAST({e} AS {})", rng.pick(TYPES));
        }
        e
    };
    match rng.below(8) {
        0 => format!("SELECT {}, {} FROM {} WHERE {}", expr(rng), expr(rng), ident(rng), expr(rng)),
        1 => format!("SELECT {}", expr(rng)),
        2 => format!("CREATE TABLE {} ({} {} PRIMARY KEY, {} {})", ident(rng), ident(rng), rng.pick(TYPES), ident(rng), rng.pick(TYPES)),
        3 => format!("INSERT INTO {} VALUES ({}, {})", ident(rng), lit(rng), lit(rng)),
        4 => format!("CREATE MATERIALIZED VIEW {} AS SELECT {} AS c, count(*) FROM {} GROUP BY 1", ident(rng), expr(rng), ident(rng)),
        5 => format!("UPDATE {} SET {} = {} WHERE {}", ident(rng), ident(rng), expr(rng), expr(rng)),
        6 => format!("DROP {} {}", rng.pick(&["TABLE", "VIEW", "MATERIALIZED VIEW", "SOURCE", "ROLE"]), ident(rng)),
        _ => {
            let mut s = String::new();
            for _ in 0..1 + rng.below(20) {
                let token = match rng.below(5) {
                    0 => rng.pick(KEYWORDS).to_string(),
                    1 => ident(rng),
                    2 => lit(rng),
                    3 => rng.pick(PUNCT).to_string(),
                    _ => rng.pick(TYPES).to_string(),
                };
                s.push_str(&token);
                s.push(' ');
            }
            s
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_sql_and_mutated_messages_do_not_take_the_server_down() {
    let seed = seed();
    println!("fuzz seed: {seed} (VELOCITY_FUZZ_SEED={seed} reproduces this run)");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&dir, &[]);
    let watcher = common::connect(server.addr).await;
    watcher.batch_execute("CREATE TABLE t (id INT PRIMARY KEY, x BIGINT); INSERT INTO t VALUES (1, 1), (2, 2)").await.expect("setup");
    let mut rng = Rng(seed | 1);
    let mut max_rss = 0;

    // Generated SQL, simple and extended protocol, on one session that none of it may end.
    let client = common::connect(server.addr).await;
    let (mut ok, mut errors, mut client_side) = (0, 0, 0);
    for i in 0..cases(1500) {
        let sql = statement(&mut rng);
        let result = match rng.below(2) {
            0 => client.simple_query(&sql).await.map(|_| ()),
            _ => client.query(sql.as_str(), &[]).await.map(|_| ()),
        };
        match result {
            Ok(()) => ok += 1,
            Err(e) if e.as_db_error().is_some() => errors += 1,
            // The client's own refusal (a parameter with no value, say).
            Err(_) if !client.is_closed() => client_side += 1,
            Err(e) => {
                let log = std::fs::read_to_string(&server.stderr).unwrap_or_default();
                panic!("statement {i} {sql:?} lost the session: {e}\nserver log:\n{log}")
            }
        }
        if i % 100 == 0 {
            watcher_answers(&watcher).await;
            server.check_alive();
            max_rss = max_rss.max(server.rss_kb());
        }
    }
    println!("generated SQL: {ok} ran, {errors} Postgres errors, {client_side} refused by the client");

    // Mutated protocol messages, each case on a new raw connection.
    let mut answered = 0;
    for i in 0..cases(600) {
        let bytes = protocol_case(&mut rng);
        if answer_of(server.addr, &bytes).await {
            answered += 1;
        }
        if server.child.try_wait().expect("try_wait").is_some() {
            server.check_alive_after(&format!("protocol case {i}: {bytes:?}"));
        }
        if i % 50 == 0 {
            watcher_answers(&watcher).await;
            server.check_alive();
            max_rss = max_rss.max(server.rss_kb());
        }
    }
    println!("mutated messages: {answered} of {} answered before the close", cases(600));

    watcher_answers(&watcher).await;
    server.check_alive();
    max_rss = max_rss.max(server.rss_kb());
    println!("server RSS at most {max_rss} kB (bound {RSS_BOUND_KB} kB)");
    assert!(max_rss < RSS_BOUND_KB, "server RSS {max_rss} kB over {RSS_BOUND_KB} kB");
}

/// One frontend message: type byte, length, body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Startup, then extended-protocol messages, one of them (or the startup) mutated.
fn protocol_case(rng: &mut Rng) -> Vec<u8> {
    let sql =
        *rng.pick(&["SELECT $1::int8 + 1", "SELECT $1, $2", "SELECT x FROM t WHERE id = $1", "INSERT INTO t VALUES ($1, $2)", "SELECT 1"]);
    let params: u16 = rng.below(3) as u16;
    let mut parse = cstr("s");
    parse.extend(cstr(sql));
    parse.extend(params.to_be_bytes());
    for _ in 0..params {
        parse.extend(rng.pick(&[20u32, 23, 25, 1016, 0]).to_be_bytes());
    }
    let mut bind = cstr("");
    bind.extend(cstr("s"));
    bind.extend(1u16.to_be_bytes());
    bind.extend(rng.pick(&[0i16, 1]).to_be_bytes());
    bind.extend(params.to_be_bytes());
    for _ in 0..params {
        let int8 = 8i64.to_be_bytes();
        // A binary int8[] header claiming 2^31-1 elements.
        let huge_array = [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 20, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1];
        let values: [&[u8]; 3] = [b"1", &int8, &huge_array];
        let value = *rng.pick(&values);
        bind.extend((value.len() as i32).to_be_bytes());
        bind.extend(value);
    }
    bind.extend(0u16.to_be_bytes());
    let mut execute = cstr("");
    execute.extend(0i32.to_be_bytes());
    let mut messages = vec![
        common::startup_message(&[("user", "velocity"), ("database", "velocity")]),
        message(b'P', &parse),
        message(b'B', &bind),
        message(b'D', &[b'P', 0]),
        message(b'E', &execute),
        message(b'S', &[]),
        message(b'Q', &cstr("SELECT 1")),
        message(b'C', &[b'S', b's', 0]),
        message(b'p', &cstr("password")),
        message(b'd', b"copy data"),
        message(b'H', &[]),
        message(b'F', &[0, 0, 0, 1, 0, 0]),
    ];
    let victim = rng.below(messages.len());
    let m = &mut messages[victim];
    match rng.below(7) {
        // A length field that lies (small, negative, huge, off by a few).
        0 => {
            let at = if victim == 0 { 0 } else { 1 };
            let lie: i32 = *rng.pick(&[0, 1, 3, 4, 5, -1, i32::MAX, 0x4000_0000, m.len() as i32 + 7, m.len() as i32 - 6]);
            m[at..at + 4].copy_from_slice(&lie.to_be_bytes());
        }
        // Random bytes flipped (counts, type oids, format codes, lengths inside the body).
        1 | 2 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(m.len());
                m[at] = rng.next() as u8;
            }
        }
        // A count or length inside the body set to an extreme.
        3 => {
            if m.len() > 8 {
                let at = 5 + rng.below(m.len() - 6);
                let extreme: [u8; 2] = *rng.pick(&[[0xff, 0xff], [0x7f, 0xff], [0x80, 0x00], [0, 0]]);
                m[at] = extreme[0];
                m[at + 1] = extreme[1];
            }
        }
        // Truncated.
        4 => {
            let keep = rng.below(m.len());
            m.truncate(keep);
        }
        // Garbage appended (the declared length now lies the other way).
        5 => {
            for _ in 0..rng.below(64) {
                m.push(rng.next() as u8);
            }
        }
        // An unknown message type.
        _ => {
            if victim > 0 {
                m[0] = rng.next() as u8;
            }
        }
    }
    let keep = 1 + rng.below(messages.len());
    messages.truncate(keep.max(victim + 1));
    // Terminate, so the server closes the connection once it has read everything.
    messages.push(message(b'X', &[]));
    messages.concat()
}

/// Send `bytes` on a new connection, read until the server closes it or stops answering for a
/// moment; true if it answered anything.
async fn answer_of(addr: SocketAddr, bytes: &[u8]) -> bool {
    let Ok(mut socket) = TcpStream::connect(addr).await else { return false };
    let _ = socket.write_all(bytes).await;
    let mut buf = vec![0u8; 64 * 1024];
    let mut answered = false;
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        answered = true;
    }
    answered
}

/// The error fields of the first ErrorResponse in `bytes`, if any.
fn error_code(bytes: &[u8]) -> Option<String> {
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let tag = bytes[at];
        let len = u32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]]) as usize;
        let end = (at + 1 + len).min(bytes.len());
        if tag == b'E' {
            let body = &bytes[at + 5..end];
            return body.split(|b| *b == 0).find_map(|f| f.strip_prefix(b"C")).map(|c| String::from_utf8_lossy(c).into_owned());
        }
        at = at + 1 + len.max(4);
    }
    None
}

/// A cleartext password message where SCRAM was asked, before login: 08P01, not a panic.
#[tokio::test]
async fn a_cleartext_password_where_scram_was_asked_gets_08p01() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&dir, &["--user", "alice:secret"]);
    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    socket.write_all(&common::startup_message(&[("user", "alice")])).await.expect("startup");
    let mut buf = vec![0u8; 1024];
    let n = socket.read(&mut buf).await.expect("read");
    assert_eq!(buf[0], b'R', "the server asks for authentication: {:?}", &buf[..n]);
    socket.write_all(&message(b'p', &cstr("secret"))).await.expect("password");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut answer)).await;
    assert_eq!(error_code(&answer).as_deref(), Some("08P01"), "answer: {:?}", String::from_utf8_lossy(&answer));
    server.check_alive();

    // And the server still logs users in.
    let conn = format!("host=127.0.0.1 port={} user=alice password=secret dbname=velocity", server.addr.port());
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.expect("alice logs in");
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.expect("SELECT 1");
    server.check_alive();
}
