//! Differential test: random multi-row transactions against three tables feeding many view
//! shapes. After every commit, and across a restart, each view must equal DataFusion
//! re-running the view's defining query over the current tables.
//!
//! A failing case prints as SQL that can be pasted into psql.

mod common;

use std::fmt;

use proptest::prelude::*;

const TABLES: &[&str] = &["a", "b", "c"];

const SCHEMA: &[&str] = &[
    "CREATE TABLE a (id INT PRIMARY KEY, k INT, v INT)",
    "CREATE TABLE b (id INT PRIMARY KEY, k INT, v INT)",
    "CREATE TABLE c (id INT PRIMARY KEY, k INT, v INT)",
];

/// (name, defining query). Views may read earlier views.
const VIEWS: &[(&str, &str)] = &[
    ("join3", "SELECT a.id AS aid, b.id AS bid, c.id AS cid, a.v + b.v AS s FROM a JOIN b ON a.k = b.k JOIN c ON b.k = c.k"),
    ("left_join", "SELECT a.id AS aid, a.k, b.id AS bid, b.v FROM a LEFT JOIN b ON a.k = b.k"),
    ("right_join", "SELECT b.id AS bid, c.v FROM c RIGHT JOIN b ON c.k = b.k"),
    ("full_join", "SELECT a.id AS aid, c.id AS cid FROM a FULL JOIN c ON a.k = c.k"),
    ("grouped", "SELECT k, min(v) AS mn, max(v) AS mx, count(*) AS n, count(v) AS nv, sum(v) AS s FROM a GROUP BY k"),
    ("distinct_k", "SELECT DISTINCT k FROM b"),
    ("over_view", "SELECT k, n, mx FROM grouped WHERE n > 1"),
    ("union_all", "SELECT k, v FROM a UNION ALL SELECT k, v FROM c WHERE v > 2"),
    (
        "join_agg",
        "SELECT b.k, count(DISTINCT a.v) AS dv, avg(b.v) AS av, bool_or(a.v > b.v) AS bigger FROM a JOIN b ON a.k = b.k GROUP BY b.k HAVING count(*) > 1",
    ),
    ("global", "SELECT count(*) AS n, max(v) AS m, sum(k) AS s FROM c"),
    ("semi", "SELECT a.id FROM a WHERE EXISTS (SELECT 1 FROM c WHERE c.k = a.k)"),
    ("anti", "SELECT b.id, b.k FROM b WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.k = b.k)"),
    (
        "top2",
        "SELECT k, v, id, rn FROM (SELECT k, v, id, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v DESC NULLS LAST, id) AS rn FROM a) x WHERE rn <= 2",
    ),
    (
        "expr_filter",
        "SELECT id, CASE WHEN v IS NULL THEN 'none' ELSE concat('v', v) END AS label, k * 10 AS k10 FROM c WHERE k IS NULL OR k <> 1",
    ),
    ("a_times", "SELECT id, k, v, to_timestamp(v * 7) AS ts FROM a"),
    (
        "tumbled",
        "SELECT window_start, k, count(*) AS n, sum(v) AS s FROM TUMBLE(a_times, ts, INTERVAL '10' SECOND) GROUP BY window_start, k",
    ),
    (
        "hopped",
        "SELECT window_end, count(*) AS n, max(id) AS top FROM HOP(a_times, ts, INTERVAL '5' SECOND, INTERVAL '15' SECOND) GROUP BY window_end",
    ),
    ("global_top3", "SELECT id, v FROM a ORDER BY v DESC NULLS LAST, id LIMIT 3"),
    ("global_page", "SELECT id, k FROM c ORDER BY k NULLS FIRST, id LIMIT 2 OFFSET 1"),
    ("top_groups", "SELECT k, count(*) AS n FROM b GROUP BY k ORDER BY n DESC, k NULLS LAST LIMIT 2"),
    (
        "win_nav",
        "SELECT id, k, lag(v) OVER (PARTITION BY k ORDER BY v, id) AS prev, lead(id, 2) OVER (PARTITION BY k ORDER BY v, id) AS next2, \
         first_value(v) OVER (PARTITION BY k ORDER BY v DESC NULLS LAST, id) AS best, \
         last_value(id) OVER (PARTITION BY k ORDER BY v, id ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS last_id FROM b",
    ),
    (
        "win_rank",
        "SELECT id, rank() OVER (PARTITION BY k ORDER BY v) AS r, dense_rank() OVER (PARTITION BY k ORDER BY v) AS dr, \
         row_number() OVER (PARTITION BY k ORDER BY v, id) AS rn FROM c",
    ),
    (
        "win_running",
        "SELECT id, sum(v) OVER (PARTITION BY k ORDER BY id) AS s, count(*) OVER (PARTITION BY k ORDER BY v) AS n, \
         min(v) OVER (PARTITION BY k ORDER BY id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS mn, \
         max(v) OVER (PARTITION BY k ORDER BY id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS mx, \
         avg(v) OVER (PARTITION BY k ORDER BY id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS av FROM a",
    ),
    ("win_over_agg", "SELECT k, n, sum(n) OVER (ORDER BY k NULLS FIRST) AS cum, lag(k) OVER (ORDER BY n, k) AS prev_k FROM grouped"),
    ("rollup", "SELECT k, v, count(*) AS n, sum(id) AS s, grouping(k, v) AS g FROM a GROUP BY ROLLUP (k, v)"),
    ("cube", "SELECT k, v, count(*) AS n, min(id) AS m FROM c GROUP BY CUBE (k, v) HAVING count(*) > 1"),
    ("grouping_sets", "SELECT k, v, max(id) AS m FROM b GROUP BY GROUPING SETS ((k), (k, v), (), (k))"),
    ("not_in", "SELECT a.id, a.v FROM a WHERE a.v NOT IN (SELECT c.v FROM c WHERE c.k <> 0)"),
    ("not_in_rows", "SELECT a.id, a.k FROM a WHERE (a.k, a.v) NOT IN (SELECT b.k, b.v FROM b WHERE b.id <> 0)"),
    ("in_rows", "SELECT c.id FROM c WHERE (c.k, c.v) IN (SELECT a.k, a.v FROM a)"),
    (
        "outer_join_correlated",
        "SELECT a.id FROM a WHERE EXISTS (SELECT 1 FROM c LEFT JOIN b ON b.k = a.k AND b.v = c.v WHERE b.id IS NULL)",
    ),
    ("outer_join_count", "SELECT c.id, (SELECT count(b.id) FROM a LEFT JOIN b ON b.k = c.k AND b.v = a.v) AS n FROM c"),
    (
        "ordered_sets",
        "SELECT k, percentile_disc(0.5) WITHIN GROUP (ORDER BY v) AS pd, mode() WITHIN GROUP (ORDER BY v DESC) AS mo, \
         percentile_cont(0.25) WITHIN GROUP (ORDER BY v) AS pc FROM b GROUP BY k",
    ),
    ("left_lateral_unnest", "SELECT a.id, u.x FROM a LEFT JOIN LATERAL unnest(CASE WHEN a.v > 2 THEN ARRAY[a.k, a.v] END) AS u(x) ON true"),
    (
        "left_lateral_count",
        "SELECT a.id, s.n, s.m FROM a LEFT JOIN LATERAL (SELECT count(*) AS n, max(c.v) AS m FROM c WHERE c.k = a.k) AS s ON true",
    ),
    ("not_distinct", "SELECT a.id AS aid, b.id AS bid FROM a JOIN b ON a.k IS NOT DISTINCT FROM b.k"),
    ("left_cond", "SELECT a.id AS aid, b.id AS bid FROM a LEFT JOIN b ON a.k = b.k AND b.v > a.v"),
    ("full_cond", "SELECT b.id AS bid, c.id AS cid FROM b FULL JOIN c ON b.k = c.k AND c.v <> b.v"),
    ("scalar_sub", "SELECT a.id, (SELECT max(c.v) FROM c WHERE c.k = a.k) AS top FROM a"),
    ("using_full", "SELECT k, a.id AS aid, c.id AS cid FROM a FULL JOIN c USING (k)"),
    ("unnest_from", "SELECT a.id, u.x, u.n FROM a, unnest(ARRAY[a.k, a.v, a.k + a.v]) WITH ORDINALITY AS u(x, n) WHERE u.x IS NOT NULL"),
    (
        "json_each_from",
        "SELECT kv.key, count(*) AS n, max(kv.value) AS top FROM c CROSS JOIN LATERAL jsonb_each_text(jsonb_build_object('k', c.k, 'v', c.v)) AS kv GROUP BY kv.key",
    ),
    (
        "nested_entity",
        "SELECT a.k, json_agg(json_build_object('id', a.id, 'v', a.v, 'c', c.v) ORDER BY a.id, c.id) AS items, \
         string_agg(CAST(a.id AS TEXT), ',' ORDER BY a.id DESC, c.id) AS ids, array_agg(c.id ORDER BY c.id, a.id) AS cids \
         FROM a JOIN c ON a.k = c.k GROUP BY a.k",
    ),
];

#[derive(Clone)]
enum Op {
    Insert { table: usize, id: i32, k: Option<i32>, v: Option<i32> },
    Update { table: usize, id: i32, k: Option<i32>, v: Option<i32> },
    Delete { table: usize, id: i32 },
}

fn lit(x: Option<i32>) -> String {
    x.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into())
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Insert { table, id, k, v } => write!(f, "INSERT INTO {} VALUES ({id}, {}, {});", TABLES[*table], lit(*k), lit(*v)),
            Op::Update { table, id, k, v } => {
                write!(f, "UPDATE {} SET k = {}, v = {} WHERE id = {id};", TABLES[*table], lit(*k), lit(*v))
            }
            Op::Delete { table, id } => write!(f, "DELETE FROM {} WHERE id = {id};", TABLES[*table]),
        }
    }
}

#[derive(Clone)]
struct Txn(Vec<Op>);

impl fmt::Debug for Txn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BEGIN; ")?;
        for op in &self.0 {
            write!(f, "{op:?} ")?;
        }
        write!(f, "COMMIT;")
    }
}

fn op() -> impl Strategy<Value = Op> {
    let small = prop::option::weighted(0.85, 0..4i32);
    let val = prop::option::weighted(0.85, 0..6i32);
    prop_oneof![
        4 => (0..3usize, 0..8i32, small.clone(), val.clone()).prop_map(|(table, id, k, v)| Op::Insert { table, id, k, v }),
        2 => (0..3usize, 0..8i32, small, val).prop_map(|(table, id, k, v)| Op::Update { table, id, k, v }),
        2 => (0..3usize, 0..8i32).prop_map(|(table, id)| Op::Delete { table, id }),
    ]
}

fn txns() -> impl Strategy<Value = Vec<Txn>> {
    prop::collection::vec(prop::collection::vec(op(), 1..6).prop_map(Txn), 1..12)
}

async fn setup(client: &tokio_postgres::Client) {
    for s in SCHEMA {
        client.batch_execute(s).await.expect(s);
    }
    for (name, query) in VIEWS {
        let sql = format!("CREATE MATERIALIZED VIEW {name} AS {query}");
        client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
}

/// Every view equals its query recomputed by DataFusion over the current tables.
async fn check_views(client: &tokio_postgres::Client, history: &[Txn]) -> Result<(), TestCaseError> {
    for (name, query) in VIEWS {
        let view = common::rows(client, &format!("SELECT * FROM {name}")).await;
        let oracle = common::rows(client, query).await;
        prop_assert_eq!(
            &view,
            &oracle,
            "view {} diverged from its query after:\n{}\n-- view: {}",
            name,
            history.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join("\n"),
            query
        );
    }
    Ok(())
}

async fn apply(client: &tokio_postgres::Client, txn: &Txn) {
    // Constraint violations (e.g. a duplicate key) reject the whole transaction, which is
    // fine: views must then still equal the unchanged tables.
    let sql = format!("{txn:?}");
    if client.batch_execute(&sql).await.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn views_equal_recompute(history in txns(), restart_at in 0..12usize) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut server = common::ServerProcess::start(dir.path());
            let mut client = common::connect(server.addr).await;
            setup(&client).await;
            for (i, txn) in history.iter().enumerate() {
                apply(&client, txn).await;
                check_views(&client, &history[..=i]).await?;
                if i == restart_at {
                    // State must come back from storage, equal, and keep being maintained.
                    drop(client);
                    server.terminate();
                    server = common::ServerProcess::start(dir.path());
                    client = common::connect(server.addr).await;
                    check_views(&client, &history[..=i]).await?;
                }
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}
