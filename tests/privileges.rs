//! Roles and privileges, one test per rule, over real connections as different users of a
//! server that requires passwords (`--user admin:secret`, a superuser): who may read,
//! change, create and drop what, and that grants and roles survive a kill -9.

mod common;

use std::net::SocketAddr;

use common::ServerProcess;
use tokio_postgres::{Client, NoTls};

async fn connect(addr: SocketAddr, user: &str, password: &str) -> Result<Client, tokio_postgres::Error> {
    let conn = format!("host={} port={} user={user} password={password} dbname=velocity", addr.ip(), addr.port());
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A server with the superuser `admin` and the login roles `alice` and `bob`, and a
/// connection as each.
struct Setup {
    _dir: tempfile::TempDir,
    server: ServerProcess,
    admin: Client,
    alice: Client,
    bob: Client,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(&common::data_dir(&dir), &["--user", "admin:secret"]);
    let admin = connect(server.addr, "admin", "secret").await.expect("admin connects");
    admin.batch_execute("CREATE ROLE alice WITH LOGIN PASSWORD 'alice-pw'; CREATE USER bob PASSWORD 'bob-pw'").await.unwrap();
    let alice = connect(server.addr, "alice", "alice-pw").await.expect("alice connects");
    let bob = connect(server.addr, "bob", "bob-pw").await.expect("bob connects");
    Setup { _dir: dir, server, admin, alice, bob }
}

/// The SQLSTATE and message of a statement that must fail.
async fn refused(client: &Client, sql: &str) -> (String, String) {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("{sql} should have been refused"),
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
            (db.code().code().to_string(), db.message().to_string())
        }
    }
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn another_roles_table_needs_a_grant_to_read_and_write() {
    let s = setup().await;
    s.alice.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a')").await.unwrap();

    assert_eq!(refused(&s.bob, "SELECT * FROM t").await, ("42501".into(), "permission denied for table t".into()));
    // The extended protocol, a subquery and changes() are checked too.
    let e = s.bob.query("SELECT v FROM t WHERE id = $1", &[&1i64]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42501");
    assert_eq!(refused(&s.bob, "SELECT 1 WHERE EXISTS (SELECT 1 FROM public.t)").await.0, "42501");
    assert_eq!(refused(&s.bob, "SELECT * FROM changes('t')").await.0, "42501");
    assert_eq!(refused(&s.bob, "INSERT INTO t VALUES (2, 'b')").await, ("42501".into(), "permission denied for table t".into()));
    assert_eq!(refused(&s.bob, "DELETE FROM t WHERE id = 1").await.0, "42501");
    assert_eq!(refused(&s.bob, "CREATE MATERIALIZED VIEW v AS SELECT count(*) AS n FROM t").await.0, "42501");
    // COPY reads the table, and writing a server file takes a superuser.
    let out = s._dir.path().join("copied.csv");
    let copy = format!("COPY t TO '{}'", out.display());
    assert_eq!(refused(&s.bob, &copy).await.0, "42501");
    let denied = "must be superuser or a member of the pg_write_server_files role to COPY to a file";
    assert_eq!(refused(&s.alice, &copy).await, ("42501".into(), denied.into()));
    assert!(!out.exists());
    // System catalogs stay readable.
    assert!(count(&s.bob, "SELECT count(*) FROM pg_catalog.pg_class").await > 0);

    s.alice.batch_execute("GRANT SELECT ON t TO bob").await.unwrap();
    assert_eq!(count(&s.bob, "SELECT count(*) FROM t").await, 1);
    let rows = s.bob.query("SELECT v FROM t WHERE id = $1", &[&1i64]).await.unwrap();
    assert_eq!(rows.len(), 1);
    // SELECT alone does not allow writing.
    assert_eq!(refused(&s.bob, "INSERT INTO t VALUES (2, 'b')").await.0, "42501");
    // A view bob owns reads t with bob's rights, checked when he creates it.
    s.bob.batch_execute("CREATE MATERIALIZED VIEW v AS SELECT count(*) AS n FROM t").await.unwrap();

    s.alice.batch_execute("GRANT INSERT, UPDATE ON TABLE t TO bob").await.unwrap();
    s.bob.batch_execute("INSERT INTO t VALUES (2, 'b'); UPDATE t SET v = 'c' WHERE id = 2").await.unwrap();
    assert_eq!(count(&s.alice, "SELECT count(*) FROM t WHERE v = 'c'").await, 1);
    let acl: Vec<String> = s.admin.query_one("SELECT relacl FROM pg_catalog.pg_class WHERE relname = 't'", &[]).await.unwrap().get(0);
    assert_eq!(acl, vec!["alice=arwd/alice".to_string(), "bob=arw/alice".to_string()]);

    s.alice.batch_execute("REVOKE SELECT ON t FROM bob").await.unwrap();
    assert_eq!(refused(&s.bob, "SELECT * FROM t").await.0, "42501");
    // Reading rows to update them takes SELECT, as in Postgres; inserting does not.
    assert_eq!(refused(&s.bob, "UPDATE t SET v = 'd' WHERE id = 2").await.0, "42501");
    s.bob.batch_execute("INSERT INTO t VALUES (3, 'e')").await.unwrap();
    // Only the owner (or a superuser) grants.
    assert_eq!(refused(&s.bob, "GRANT SELECT ON t TO bob").await.0, "42501");
    // Granting SELECT on bob's view does not open t.
    s.bob.batch_execute("GRANT SELECT ON v TO PUBLIC").await.unwrap();
    let stranger_sql = "CREATE ROLE carol LOGIN PASSWORD 'carol-pw'";
    s.admin.batch_execute(stranger_sql).await.unwrap();
    let carol = connect(s.server.addr, "carol", "carol-pw").await.unwrap();
    assert_eq!(count(&carol, "SELECT n FROM v").await, 3);
    assert_eq!(refused(&carol, "SELECT * FROM t").await.0, "42501");
}

#[tokio::test]
async fn only_the_owner_or_a_superuser_drops() {
    let s = setup().await;
    s.alice.batch_execute("CREATE TABLE mine (id BIGINT)").await.unwrap();
    assert_eq!(refused(&s.bob, "DROP TABLE mine").await, ("42501".into(), "must be owner of table mine".into()));
    // Not even with every privilege granted.
    s.alice.batch_execute("GRANT ALL PRIVILEGES ON mine TO bob").await.unwrap();
    assert_eq!(refused(&s.bob, "DROP TABLE mine").await.0, "42501");
    // The owner creates and drops its own table; a superuser drops anyone's.
    s.bob.batch_execute("CREATE TABLE own (id BIGINT); INSERT INTO own VALUES (1); DROP TABLE own").await.unwrap();
    s.admin.batch_execute("DROP TABLE mine").await.unwrap();
    let owner: String = {
        s.bob.batch_execute("CREATE TABLE again (id BIGINT)").await.unwrap();
        s.admin.query_one("SELECT velocity_relowner('again')", &[]).await.unwrap().get(0)
    };
    assert_eq!(owner, "bob");
}

/// Sources and sinks connect to hosts and read files as the server: creating one takes a
/// superuser or CREATE on the database, a file source also `pg_read_server_files`.
#[tokio::test]
async fn sources_and_sinks_take_create_on_the_database() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let generator = "CREATE SOURCE gen WITH (connector = 'generator', scenario = 'logistics', max_transactions = '1')";
    let file_source = format!("CREATE SOURCE lines WITH (connector = 'file', path = '{}/tms.jsonl')", dir.path().display());
    let create_denied = |what: &str| format!("permission denied to create {what}: needs a superuser or CREATE on database velocity");
    assert_eq!(refused(&s.alice, generator).await, ("42501".into(), create_denied("a source")));
    assert_eq!(refused(&s.alice, &file_source).await.0, "42501");
    s.alice.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY)").await.unwrap();
    let sink = "CREATE SINK out FROM t WITH (connector = 'kafka', brokers = '127.0.0.1:1', topic = 'x')";
    assert_eq!(refused(&s.alice, sink).await, ("42501".into(), create_denied("a sink")));

    // Only superusers grant it, and only on this database.
    assert_eq!(refused(&s.bob, "GRANT CREATE ON DATABASE velocity TO bob").await.0, "42501");
    assert_eq!(refused(&s.admin, "GRANT CREATE ON DATABASE other TO alice").await.0, "3D000");
    s.admin.batch_execute("GRANT CREATE ON DATABASE velocity TO alice").await.unwrap();
    s.alice.batch_execute(generator).await.unwrap();
    s.alice.batch_execute(sink).await.unwrap();
    // Reading server files takes pg_read_server_files besides.
    let files_denied = "must be superuser or a member of the pg_read_server_files role to read files on the server (a file source)";
    assert_eq!(refused(&s.alice, &file_source).await, ("42501".into(), files_denied.into()));
    assert_eq!(refused(&s.bob, "GRANT pg_read_server_files TO alice").await.0, "42501");
    assert_eq!(refused(&s.admin, "GRANT bob TO alice").await.0, "0A000");
    assert_eq!(refused(&s.admin, "GRANT nobody TO alice").await.0, "42704");
    s.admin.batch_execute("GRANT pg_read_server_files TO alice").await.unwrap();
    s.alice.batch_execute(&file_source).await.unwrap();
    assert_eq!(count(&s.admin, "SELECT count(*) FROM velocity_catalog.sources WHERE velocity_relowner(name) = 'alice'").await, 2);

    s.admin.batch_execute("REVOKE pg_read_server_files FROM alice; REVOKE CREATE ON DATABASE velocity FROM alice").await.unwrap();
    let again = "CREATE SOURCE gen2 WITH (connector = 'generator', scenario = 'logistics', max_transactions = '1')";
    assert_eq!(refused(&s.alice, again).await.0, "42501");
    // What she created stays hers.
    s.alice.batch_execute("DROP SINK out; DROP SOURCE gen; DROP SOURCE lines").await.unwrap();
}

/// USAGE on a source binds tables to it and shows its dead letters; the owner (or a
/// superuser) grants it, and ownership moves with ALTER SOURCE ... OWNER TO.
#[tokio::test]
async fn usage_on_a_source_binds_tables_to_it() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tms.jsonl");
    std::fs::write(&file, "a malformed record\n").unwrap();
    s.admin
        .batch_execute(&format!(
            "CREATE SOURCE tms WITH (connector = 'file', path = '{}');
             CREATE TABLE stops (id BIGINT PRIMARY KEY) WITH (source = 'tms', upstream = 'public.stops'); FLUSH",
            file.display()
        ))
        .await
        .unwrap();
    let bind = |table: &str| {
        format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, status TEXT) WITH (source = 'tms', upstream = 'public.{table}')")
    };
    let dead = "SELECT count(*) FROM velocity_catalog.dead_letters";
    assert_eq!(refused(&s.alice, &bind("shipments")).await, ("42501".into(), "permission denied for source tms".into()));
    assert_eq!(count(&s.alice, dead).await, 0);

    assert_eq!(refused(&s.bob, "GRANT USAGE ON SOURCE tms TO bob").await.0, "42501");
    assert_eq!(
        refused(&s.admin, "GRANT SELECT ON SOURCE tms TO alice").await,
        ("0LP01".into(), "invalid privilege type SELECT for source".into())
    );
    assert_eq!(refused(&s.admin, "GRANT USAGE ON SOURCE stops TO alice").await.0, "42809");
    assert_eq!(refused(&s.admin, "GRANT USAGE ON SOURCE nothing TO alice").await.0, "42704");
    s.admin.batch_execute("GRANT USAGE ON SOURCE tms TO alice").await.unwrap();
    s.alice.batch_execute(&bind("shipments")).await.unwrap();
    assert_eq!(count(&s.alice, dead).await, 1);
    assert_eq!(count(&s.bob, dead).await, 0);
    s.admin.batch_execute("REVOKE ALL ON SOURCE tms FROM alice").await.unwrap();
    assert_eq!(count(&s.alice, dead).await, 0);
    assert_eq!(refused(&s.alice, &bind("legs")).await.0, "42501");

    // A new owner may grant it; only superusers hand a source over.
    assert_eq!(refused(&s.alice, "ALTER SOURCE tms OWNER TO alice").await, ("42501".into(), "must be owner of source tms".into()));
    s.admin.batch_execute("ALTER SOURCE tms OWNER TO bob").await.unwrap();
    let owner: String = s.admin.query_one("SELECT velocity_relowner('tms')", &[]).await.unwrap().get(0);
    assert_eq!(owner, "bob");
    assert_eq!(count(&s.bob, dead).await, 1);
    s.bob.batch_execute("GRANT USAGE ON SOURCE tms TO PUBLIC").await.unwrap();
    s.alice.batch_execute(&bind("legs")).await.unwrap();

    // Sinks take no privileges: only their owner or a superuser drops one.
    s.admin.batch_execute("CREATE SINK out FROM stops WITH (connector = 'kafka', brokers = '127.0.0.1:1', topic = 'x')").await.unwrap();
    assert_eq!(refused(&s.admin, "GRANT ALL ON SINK out TO alice").await, ("0LP01".into(), "invalid privilege type ALL for sink".into()));
    assert_eq!(refused(&s.alice, "DROP SINK out").await.0, "42501");
    s.admin.batch_execute("ALTER SINK out OWNER TO alice").await.unwrap();
    s.alice.batch_execute("DROP SINK out").await.unwrap();
}

#[tokio::test]
async fn only_superusers_manage_roles() {
    let s = setup().await;
    assert_eq!(refused(&s.alice, "CREATE ROLE mallory SUPERUSER LOGIN PASSWORD 'x'").await.0, "42501");
    assert_eq!(refused(&s.alice, "ALTER ROLE alice SUPERUSER").await.0, "42501");
    assert_eq!(refused(&s.alice, "ALTER ROLE bob PASSWORD 'mine'").await.0, "42501");
    assert_eq!(refused(&s.alice, "DROP ROLE bob").await.0, "42501");
    // A role changes its own password.
    s.alice.batch_execute("ALTER ROLE alice PASSWORD 'new-pw'").await.unwrap();
    assert!(connect(s.server.addr, "alice", "new-pw").await.is_ok());

    // A superuser role may; a role that owns something cannot be dropped until it owns nothing.
    s.admin.batch_execute("CREATE ROLE ops SUPERUSER LOGIN PASSWORD 'ops-pw'").await.unwrap();
    let ops = connect(s.server.addr, "ops", "ops-pw").await.unwrap();
    ops.batch_execute("CREATE ROLE temp; ALTER ROLE temp WITH LOGIN; DROP ROLE temp").await.unwrap();
    s.bob.batch_execute("CREATE TABLE b (id BIGINT)").await.unwrap();
    let (code, message) = refused(&s.admin, "DROP ROLE bob").await;
    assert_eq!(code, "2BP01");
    assert!(message.contains("owner of table b"), "{message}");
    assert_eq!(refused(&s.admin, "CREATE ROLE bob").await.0, "42710");
    assert_eq!(refused(&s.admin, "DROP ROLE nobody").await.0, "42704");
    assert_eq!(refused(&s.admin, "DROP ROLE admin").await.0, "55006");
    s.admin.batch_execute("DROP TABLE b; DROP ROLE bob; DROP ROLE IF EXISTS nobody").await.unwrap();
    assert!(connect(s.server.addr, "bob", "bob-pw").await.is_err());

    let roles = s.admin.query("SELECT rolname, rolsuper, rolcanlogin FROM pg_catalog.pg_roles ORDER BY rolname", &[]).await.unwrap();
    let roles: Vec<(String, bool, bool)> = roles.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let expected = [("admin", true, true), ("alice", false, true), ("ops", true, true)];
    assert_eq!(roles, expected.map(|(n, s, l)| (n.to_string(), s, l)));
}

#[tokio::test]
async fn a_login_role_connects_with_its_password_only() {
    let s = setup().await;
    let Err(e) = connect(s.server.addr, "alice", "wrong").await else { panic!("a wrong password is refused") };
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28P01"));
    s.admin.batch_execute("CREATE ROLE quiet PASSWORD 'quiet-pw'").await.unwrap();
    assert!(connect(s.server.addr, "quiet", "quiet-pw").await.is_err(), "a role without LOGIN cannot connect");
    s.admin.batch_execute("ALTER ROLE quiet LOGIN").await.unwrap();
    let quiet = connect(s.server.addr, "quiet", "quiet-pw").await.unwrap();
    let me: String = quiet.query_one("SELECT current_user", &[]).await.unwrap().get(0);
    assert_eq!(me, "quiet");
    // The password is kept as a SCRAM secret only.
    let shown: Option<String> =
        s.admin.query_one("SELECT rolpassword FROM pg_catalog.pg_roles WHERE rolname = 'quiet'", &[]).await.unwrap().get(0);
    assert_eq!(shown.as_deref(), Some("********"));
}

#[tokio::test]
async fn set_role_changes_what_is_allowed() {
    let s = setup().await;
    s.admin.batch_execute("CREATE TABLE admins (id BIGINT)").await.unwrap();
    s.admin.batch_execute("SET ROLE alice").await.unwrap();
    let (current, session): (String, String) = {
        let row = s.admin.query_one("SELECT current_user, session_user", &[]).await.unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((current.as_str(), session.as_str()), ("alice", "admin"));
    assert_eq!(refused(&s.admin, "SELECT * FROM admins").await.0, "42501");
    assert_eq!(refused(&s.admin, "CREATE ROLE x").await.0, "42501");
    s.admin.batch_execute("CREATE TABLE by_alice (id BIGINT)").await.unwrap();
    s.admin.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(count(&s.admin, "SELECT count(*) FROM admins").await, 0);
    let owner: String = s.admin.query_one("SELECT velocity_relowner('by_alice')", &[]).await.unwrap().get(0);
    assert_eq!(owner, "alice");

    // A role that is not a superuser may not become another.
    let (code, message) = refused(&s.alice, "SET ROLE bob").await;
    assert_eq!((code.as_str(), message.as_str()), ("42501", "permission denied to set role \"bob\""));
    assert_eq!(refused(&s.alice, "SET SESSION AUTHORIZATION admin").await.0, "42501");
    assert_eq!(refused(&s.admin, "SET ROLE nobody").await.0, "42704");
    s.admin.batch_execute("SET SESSION AUTHORIZATION bob").await.unwrap();
    assert_eq!(refused(&s.admin, "SELECT * FROM admins").await.0, "42501");
    s.admin.batch_execute("SET SESSION AUTHORIZATION DEFAULT").await.unwrap();
    assert_eq!(count(&s.admin, "SELECT count(*) FROM admins").await, 0);
}

#[tokio::test]
async fn roles_owners_and_grants_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::data_dir(&dir);
    let server = ServerProcess::start_with(&data, &["--user", "admin:secret"]);
    let admin = connect(server.addr, "admin", "secret").await.unwrap();
    admin.batch_execute("CREATE ROLE alice LOGIN PASSWORD 'alice-pw'; CREATE ROLE bob LOGIN PASSWORD 'bob-pw'").await.unwrap();
    let alice = connect(server.addr, "alice", "alice-pw").await.unwrap();
    alice.batch_execute("CREATE TABLE t (id BIGINT); INSERT INTO t VALUES (1); GRANT SELECT ON t TO bob").await.unwrap();
    alice.batch_execute("CREATE TABLE private (id BIGINT)").await.unwrap();
    admin.batch_execute("GRANT CREATE ON DATABASE velocity TO alice; GRANT pg_read_server_files TO alice").await.unwrap();
    let source = format!("CREATE SOURCE tms WITH (connector = 'file', path = '{}/tms.jsonl')", dir.path().display());
    alice.batch_execute(&format!("{source}; GRANT USAGE ON SOURCE tms TO bob")).await.unwrap();
    server.kill9();

    let server = ServerProcess::start_with(&data, &["--user", "admin:secret"]);
    let bob = connect(server.addr, "bob", "bob-pw").await.expect("bob's role and password survive");
    assert_eq!(count(&bob, "SELECT count(*) FROM t").await, 1);
    assert_eq!(refused(&bob, "SELECT * FROM private").await.0, "42501");
    assert_eq!(refused(&bob, "DROP TABLE t").await.0, "42501");
    bob.batch_execute("CREATE TABLE stops (id BIGINT PRIMARY KEY) WITH (source = 'tms', upstream = 'public.stops')").await.unwrap();
    let alice = connect(server.addr, "alice", "alice-pw").await.unwrap();
    alice.batch_execute("DROP TABLE private").await.unwrap();
    let again = format!("CREATE SOURCE again WITH (connector = 'file', path = '{}/again.jsonl')", dir.path().display());
    alice.batch_execute(&again).await.expect("CREATE on the database and pg_read_server_files survive");
}

#[tokio::test]
async fn a_plain_view_reads_with_its_owners_rights() {
    let s = setup().await;
    s.alice.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b')").await.unwrap();
    // As in Postgres, creating a view checks nothing; reading it checks its owner's rights.
    s.bob.batch_execute("CREATE VIEW bv AS SELECT id FROM t WHERE id > 1").await.unwrap();
    assert_eq!(refused(&s.bob, "SELECT * FROM bv").await, ("42501".into(), "permission denied for table t".into()));
    s.alice.batch_execute("GRANT SELECT ON t TO bob").await.unwrap();
    assert_eq!(count(&s.bob, "SELECT count(*) FROM bv").await, 1);

    // Others need SELECT on the view only, not on what it reads.
    s.admin.batch_execute("CREATE ROLE carol LOGIN PASSWORD 'carol-pw'").await.unwrap();
    let carol = connect(s.server.addr, "carol", "carol-pw").await.unwrap();
    assert_eq!(refused(&carol, "SELECT * FROM bv").await, ("42501".into(), "permission denied for view bv".into()));
    s.bob.batch_execute("GRANT SELECT ON bv TO carol").await.unwrap();
    assert_eq!(count(&carol, "SELECT count(*) FROM bv").await, 1);
    assert_eq!(refused(&carol, "SELECT * FROM t").await.0, "42501");
    // A materialized view over the view needs SELECT on the view; it reads t as bob.
    carol.batch_execute("CREATE MATERIALIZED VIEW cm AS SELECT count(*) AS n FROM bv").await.unwrap();
    assert_eq!(count(&carol, "SELECT n FROM cm").await, 1);

    // The owner's rights are checked at every read: revoking bob's SELECT on t closes bv.
    s.alice.batch_execute("REVOKE SELECT ON t FROM bob").await.unwrap();
    assert_eq!(refused(&carol, "SELECT * FROM bv").await.0, "42501");

    // Only the owner replaces a view, and replacing keeps its grants.
    s.bob.batch_execute("CREATE VIEW bw AS SELECT 1 AS one; GRANT SELECT ON bw TO carol").await.unwrap();
    assert_eq!(refused(&carol, "CREATE OR REPLACE VIEW bw AS SELECT 2 AS one").await, ("42501".into(), "must be owner of view bw".into()));
    s.bob.batch_execute("CREATE OR REPLACE VIEW bw AS SELECT 2 AS one").await.unwrap();
    assert_eq!(count(&carol, "SELECT one FROM bw").await, 2);
    let acl: Vec<String> = s.admin.query_one("SELECT relacl FROM pg_catalog.pg_class WHERE relname = 'bw'", &[]).await.unwrap().get(0);
    assert_eq!(acl, vec!["bob=arwd/bob".to_string(), "carol=r/bob".to_string()]);
    // So does replacing a materialized view; a superuser may replace anyone's, and the owner stays.
    s.bob.batch_execute("CREATE MATERIALIZED VIEW bm AS SELECT 1 AS one; GRANT SELECT ON bm TO carol").await.unwrap();
    assert_eq!(
        refused(&carol, "CREATE OR REPLACE MATERIALIZED VIEW bm AS SELECT 2 AS one").await,
        ("42501".into(), "must be owner of materialized view bm".into())
    );
    s.admin.batch_execute("CREATE OR REPLACE MATERIALIZED VIEW bm AS SELECT 3 AS one").await.unwrap();
    assert_eq!(count(&carol, "SELECT one::BIGINT FROM bm").await, 3);
    let owner: String = s.admin.query_one("SELECT velocity_relowner('bm')", &[]).await.unwrap().get(0);
    assert_eq!(owner, "bob");
    let acl: Vec<String> = s.admin.query_one("SELECT relacl FROM pg_catalog.pg_class WHERE relname = 'bm'", &[]).await.unwrap().get(0);
    assert_eq!(acl, vec!["bob=arwd/bob".to_string(), "carol=r/bob".to_string()]);
}

/// With `--file-source-dir`, a file source reads only below those directories: a path
/// outside, or one that climbs out with `..` or through a symbolic link, is 42501 even for a
/// superuser; a path inside (existing or not yet) is accepted.
#[tokio::test]
async fn file_sources_read_only_below_the_allowed_directories() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("incoming");
    std::fs::create_dir(&allowed).unwrap();
    std::os::unix::fs::symlink("/etc", allowed.join("etc")).unwrap();
    let server =
        ServerProcess::start_with(&common::data_dir(&dir), &["--user", "admin:secret", "--file-source-dir", allowed.to_str().unwrap()]);
    let admin = connect(server.addr, "admin", "secret").await.expect("admin connects");
    let outside = [
        "/etc/passwd".to_string(),
        format!("{}/../secret.jsonl", allowed.display()),
        format!("{}/etc/passwd", allowed.display()),
        format!("{}/not-yet/../../x.jsonl", allowed.display()),
    ];
    for (i, path) in outside.iter().enumerate() {
        let (code, message) = refused(&admin, &format!("CREATE SOURCE s{i} WITH (connector = 'file', path = '{path}')")).await;
        assert_eq!(code, "42501", "{path}: {message}");
        assert!(message.contains("--file-source-dir"), "{message}");
    }
    admin
        .batch_execute(&format!("CREATE SOURCE inside WITH (connector = 'file', path = '{}/orders.jsonl')", allowed.display()))
        .await
        .unwrap();
    admin.batch_execute(&format!("CREATE SOURCE later WITH (connector = 'file', path = '{}/later/')", allowed.display())).await.unwrap();
    assert_eq!(count(&admin, "SELECT count(*) FROM velocity_catalog.sources").await, 2);
}

/// A source's dead letters hold its raw records: superusers see all of them, other roles
/// only those of the sources they own. carol creates a source while a superuser and is then
/// demoted, so she owns a source without being one.
#[tokio::test]
async fn dead_letters_are_visible_to_their_sources_owner_only() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tms.jsonl");
    std::fs::write(&file, "carol's malformed record\n").unwrap();
    s.admin.batch_execute("CREATE ROLE carol WITH LOGIN SUPERUSER PASSWORD 'carol-pw'").await.unwrap();
    let carol = connect(s.server.addr, "carol", "carol-pw").await.expect("carol connects");
    carol
        .batch_execute(&format!(
            "CREATE SOURCE mine WITH (connector = 'file', path = '{}', format = 'debezium-json');
             CREATE TABLE shipments (id BIGINT PRIMARY KEY, status TEXT) WITH (source = 'mine', upstream = 'public.shipments');
             FLUSH",
            file.display()
        ))
        .await
        .unwrap();
    s.admin.batch_execute("ALTER ROLE carol NOSUPERUSER").await.unwrap();

    let dead = "SELECT count(*) FROM velocity_catalog.dead_letters";
    assert_eq!(count(&s.admin, dead).await, 1, "a superuser sees every dead letter");
    assert_eq!(count(&carol, dead).await, 1, "the source's owner sees its dead letters");
    assert_eq!(count(&s.alice, dead).await, 0, "another role sees none");
    let raw: String = carol.query_one("SELECT raw FROM velocity_catalog.dead_letters", &[]).await.unwrap().get(0);
    assert_eq!(raw, "carol's malformed record");
    // The extended protocol (a prepared statement) filters the same way.
    let statement = s.alice.prepare(dead).await.unwrap();
    assert_eq!(s.alice.query_one(&statement, &[]).await.unwrap().get::<_, i64>(0), 0);
}
