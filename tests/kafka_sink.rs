//! Kafka sinks against a real Kafka-protocol broker (tansu on loopback, see `common::kafka_broker`):
//! what a consumer reads from the topic is every committed change, once, in order per key,
//! across a kill -9 of the server.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;

/// One message read back from a sink topic.
#[derive(Debug, Clone)]
struct Received {
    partition: i32,
    key: Option<Value>,
    value: Option<Value>,
    tick: u64,
    seq: u64,
}

/// Read `topic` from the beginning until `expected` messages arrived, then a little longer
/// so that duplicates would show.
fn consume(topic: &str, expected: usize) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_broker())
        .set("group.id", common::unique_name("sink-test"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        assignment.add_partition_offset(topic, p.id(), Offset::Beginning).expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let mut out = Vec::new();
    let started = Instant::now();
    let mut settle: Option<Instant> = None;
    while settle.is_none_or(|s| s.elapsed() < Duration::from_secs(1)) {
        assert!(started.elapsed() < Duration::from_secs(60), "only {} of {expected} messages in {topic}: {out:#?}", out.len());
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            let header = |name: &str| -> u64 {
                let h = m.headers().expect("headers").iter().find(|h| h.key == name).expect(name);
                std::str::from_utf8(h.value.unwrap()).unwrap().parse().unwrap()
            };
            let json = |b: Option<&[u8]>| b.map(|b| serde_json::from_slice::<Value>(b).expect("JSON"));
            out.push(Received {
                partition: m.partition(),
                key: json(m.key()),
                value: json(m.payload()),
                tick: header("velocity-tick"),
                seq: header("velocity-seq"),
            });
        }
        if out.len() >= expected && settle.is_none() {
            settle = Some(Instant::now());
        }
    }
    out
}

/// Messages per key in topic order; asserts each key lives in one partition with rising ticks.
fn by_key(messages: &[Received], key_field: &str) -> BTreeMap<String, Vec<Received>> {
    let mut out: BTreeMap<String, Vec<Received>> = BTreeMap::new();
    for m in messages {
        let key = m.key.as_ref().expect("keyed message")[key_field].to_string();
        out.entry(key).or_default().push(m.clone());
    }
    for (key, list) in &out {
        assert!(list.windows(2).all(|w| w[0].partition == w[1].partition), "key {key} in several partitions");
        assert!(list.windows(2).all(|w| (w[0].tick, w[0].seq) < (w[1].tick, w[1].seq)), "key {key} out of tick order: {list:?}");
    }
    out
}

async fn exec(client: &tokio_postgres::Client, sql: &str) {
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

async fn sqlstate(client: &tokio_postgres::Client, sql: &str) -> String {
    let e = client.batch_execute(sql).await.expect_err(sql);
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| panic!("{sql}: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_carry_every_change_once_in_order_per_key() {
    let brokers = common::kafka_broker();
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let (rows_topic, counts_topic) = (common::unique_name("shipments"), common::unique_name("counts"));
    exec(&client, "CREATE TABLE shipments (id BIGINT PRIMARY KEY, status TEXT, eta INT)").await;
    exec(&client, "INSERT INTO shipments VALUES (1, 'PLANNED', 10), (2, 'PLANNED', 20)").await;
    exec(&client, "CREATE MATERIALIZED VIEW status_counts AS SELECT status, count(*) AS n FROM shipments GROUP BY status").await;
    exec(
        &client,
        &format!(
            "CREATE SINK shipments_out FROM shipments WITH (connector = 'kafka', brokers = '{brokers}', topic = '{rows_topic}', \
             format = 'upsert-json', partitions = 2)"
        ),
    )
    .await;
    exec(
        &client,
        &format!(
            "CREATE SINK counts_out FROM status_counts WITH (connector = 'kafka', brokers = '{brokers}', topic = '{counts_topic}', \
             format = 'debezium-json', key = 'status')"
        ),
    )
    .await;

    // Bad definitions are refused with the right SQLSTATE, and the server keeps serving.
    let sink = |from: &str, extra: &str| {
        format!("CREATE SINK bad FROM {from} WITH (connector = 'kafka', brokers = '{brokers}', topic = 'x'{extra})")
    };
    assert_eq!(sqlstate(&client, &sink("nope", "")).await, "42P01");
    assert_eq!(sqlstate(&client, &sink("status_counts", "")).await, "22023", "upsert-json of a keyless view");
    assert_eq!(sqlstate(&client, &sink("shipments", ", key = 'missing'")).await, "42703");
    assert_eq!(sqlstate(&client, &sink("shipments", ", format = 'avro'")).await, "22023");
    assert_eq!(sqlstate(&client, "DROP MATERIALIZED VIEW status_counts").await, "2BP01", "a sink depends on it");

    exec(&client, "UPDATE shipments SET status = 'LOADING' WHERE id = 1").await;
    // DELETE+INSERT of a row in one transaction: one update.
    exec(&client, "BEGIN; DELETE FROM shipments WHERE id = 2; INSERT INTO shipments VALUES (2, 'PLANNED', 25); COMMIT").await;
    exec(&client, "UPDATE shipments SET status = 'DEPARTED' WHERE id = 1").await;
    // No change: no message.
    exec(&client, "UPDATE shipments SET eta = eta WHERE id = 2").await;
    exec(&client, "DELETE FROM shipments WHERE id = 1").await;
    exec(&client, "INSERT INTO shipments VALUES (3, 'PLANNED', 30)").await;

    let rows = by_key(&consume(&rows_topic, 7), "id");
    let states = |key: &str| -> Vec<Option<(String, i64)>> {
        rows[key]
            .iter()
            .map(|m| m.value.as_ref().map(|v| (v["status"].as_str().unwrap().to_string(), v["eta"].as_i64().unwrap())))
            .collect()
    };
    let s = |status: &str, eta: i64| Some((status.to_string(), eta));
    assert_eq!(states("1"), vec![s("PLANNED", 10), s("LOADING", 10), s("DEPARTED", 10), None]);
    assert_eq!(states("2"), vec![s("PLANNED", 20), s("PLANNED", 25)]);
    assert_eq!(states("3"), vec![s("PLANNED", 30)]);
    assert_eq!(rows.values().map(Vec::len).sum::<usize>(), 7, "{rows:#?}");

    let counts = by_key(&consume(&counts_topic, 7), "status");
    let changes = |key: &str| -> Vec<(String, Value, Value)> {
        counts[key]
            .iter()
            .map(|m| {
                let v = m.value.as_ref().unwrap();
                assert_eq!(v["source"]["tick"].as_u64(), Some(m.tick), "the envelope carries the tick");
                (v["op"].as_str().unwrap().to_string(), v["before"]["n"].clone(), v["after"]["n"].clone())
            })
            .collect()
    };
    let change = |op: &str, before: Value, after: Value| (op.to_string(), before, after);
    assert_eq!(
        changes("\"PLANNED\""),
        vec![change("c", Value::Null, 2.into()), change("u", 2.into(), 1.into()), change("u", 1.into(), 2.into())]
    );
    assert_eq!(changes("\"LOADING\""), vec![change("c", Value::Null, 1.into()), change("d", 1.into(), Value::Null)]);
    assert_eq!(changes("\"DEPARTED\""), vec![change("c", Value::Null, 1.into()), change("d", 1.into(), Value::Null)]);

    // The system table says everything was delivered.
    let status = common::rows(&client, "SELECT name, status, pending_ticks FROM velocity_catalog.sinks").await;
    assert_eq!(
        status,
        vec![
            vec![Some("counts_out".into()), Some("running".into()), Some("0".into())],
            vec![Some("shipments_out".into()), Some("running".into()), Some("0".into())],
        ]
    );
    exec(&client, "DROP SINK counts_out").await;
    exec(&client, "DROP MATERIALIZED VIEW status_counts").await;
    assert_eq!(sqlstate(&client, "DROP SINK counts_out").await, "42704");
}

/// A crash after messages reached the topic but before the sink recorded it, a second crash
/// right after the restarted sink read the topic back (both failpoints), then a kill -9 while
/// the sink is delivering: the topic holds every committed version of every key exactly once,
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_neither_loses_nor_repeats_across_kill9() {
    let brokers = common::kafka_broker();
    let topic = common::unique_name("versions");
    let dir = tempfile::tempdir().unwrap();
    let data = common::data_dir(&dir);
    const KEYS: i64 = 20;
    const WRITES: i64 = 600;
    let mut versions: BTreeMap<i64, i64> = BTreeMap::new();
    let mut server = common::ServerProcess::start_with_env(&data, &[], &[("VELOCITY_FAILPOINT", "sink-after-delivery")]);
    let mut client = common::connect(server.addr).await;
    exec(&client, "CREATE TABLE counters (id BIGINT PRIMARY KEY, version BIGINT)").await;
    exec(
        &client,
        &format!(
            "CREATE SINK counters_out FROM counters WITH (connector = 'kafka', brokers = '{brokers}', topic = '{topic}', partitions = 3)"
        ),
    )
    .await;
    exec(&client, "INSERT INTO counters VALUES (0, 1)").await;
    versions.insert(0, 1);
    let aborted = server.child.wait().expect("wait for the failpoint");
    assert!(!aborted.success(), "the server should have aborted after delivering");
    server = common::ServerProcess::start_with_env(&data, &[], &[("VELOCITY_FAILPOINT", "sink-after-readback")]);
    let aborted = server.child.wait().expect("wait for the failpoint");
    assert!(!aborted.success(), "the server should have aborted after reading the topic back");
    server = common::ServerProcess::start(&data);
    client = common::connect(server.addr).await;
    for i in 1..WRITES {
        if i == WRITES / 2 {
            server.kill9();
            server = common::ServerProcess::start(&data);
            client = common::connect(server.addr).await;
        }
        let key = i % KEYS;
        let version = versions.entry(key).or_insert(0);
        *version += 1;
        if *version == 1 {
            exec(&client, &format!("INSERT INTO counters VALUES ({key}, 1)")).await;
        } else {
            exec(&client, &format!("UPDATE counters SET version = {version} WHERE id = {key}")).await;
        }
    }
    let messages = consume(&topic, WRITES as usize);
    let text = |m: &Received| format!("{:?} {:?}", m.key, m.value);
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for m in &messages {
        *copies.entry(text(m)).or_default() += 1;
    }
    let repeated: Vec<&Received> = messages.iter().filter(|m| copies[&text(m)] > 1).collect();
    assert_eq!(messages.len(), WRITES as usize, "every commit once; repeated: {repeated:?}");
    for (key, list) in by_key(&messages, "id") {
        let got: Vec<i64> = list.iter().map(|m| m.value.as_ref().unwrap()["version"].as_i64().unwrap()).collect();
        let want: Vec<i64> = (1..=versions[&key.parse::<i64>().unwrap()]).collect();
        assert_eq!(got, want, "versions of key {key}");
    }
    server.terminate();
}
