//! The Kafka connector against a real Kafka-protocol broker (tansu on loopback).
//!
//! The broker is `$VELOCITY_TEST_KAFKA` when set (CI starts one), otherwise these tests start
//! tansu themselves through `scripts/kafka-test.sh` (it stops when the test process exits).
//! Without either they fail: a skipped Kafka test would look like a passing one.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use velocity::sources::Position;
use velocity::sources::connector::{Connector, Health, LagUnit, SourceRecord};
use velocity::sources::kafka::{KafkaConfig, KafkaConnector};

struct Kafka {
    brokers: String,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
}

impl Kafka {
    fn new() -> Kafka {
        let brokers = common::kafka_broker();
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &brokers).set("message.timeout.ms", "10000");
        // One message per record batch: tansu (memory storage) returns nothing when a consumer
        // resumes at an offset inside a batch, which real Kafka brokers serve.
        let producer: FutureProducer = config.clone().set("linger.ms", "0").set("batch.num.messages", "1").create().expect("producer");
        let admin = config.create().expect("admin client");
        Kafka { brokers, producer, admin }
    }

    async fn create_topic(&self, name: &str, partitions: i32) {
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let result = self.admin.create_topics([&topic], &AdminOptions::new()).await.expect("create_topics");
        for r in result {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
    }

    /// Produce one record (`None`: a tombstone); returns its offset.
    async fn send(&self, topic: &str, partition: i32, key: &str, value: Option<&str>) -> i64 {
        let mut record = FutureRecord::<str, str>::to(topic).partition(partition).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        let delivery = self.producer.send(record, Duration::from_secs(10)).await;
        delivery.unwrap_or_else(|(e, _)| panic!("produce to {topic}/{partition}: {e}")).offset
    }

    fn connector(&self, transaction_topic: Option<&str>, group: &str) -> KafkaConnector {
        let mut options = vec![("brokers".to_string(), self.brokers.clone()), ("group_id".to_string(), group.to_string())];
        if let Some(t) = transaction_topic {
            options.push(("transaction_topic".to_string(), t.to_string()));
        }
        KafkaConnector::new(KafkaConfig::from_options(&options).expect("options"))
    }
}

/// Poll until `n` records arrived (failing after `timeout`), then a little longer to catch
/// records that should not be there.
async fn read(connector: &mut KafkaConnector, n: usize, timeout: Duration) -> Vec<SourceRecord> {
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < n {
        assert!(start.elapsed() < timeout, "only {} of {n} records after {timeout:?}: {out:?}", out.len());
        out.extend(connector.poll(Duration::from_millis(200)).await.expect("poll"));
    }
    out.extend(connector.poll(Duration::from_millis(300)).await.expect("poll"));
    out
}

/// Per stream: (offset, payload) in delivery order.
fn by_stream(records: &[SourceRecord]) -> HashMap<String, Vec<(i64, Option<String>)>> {
    let mut out: HashMap<String, Vec<(i64, Option<String>)>> = HashMap::new();
    for r in records {
        let Position::Kafka { offset, .. } = &r.position else { panic!("not a Kafka position: {:?}", r.position) };
        out.entry(r.position.stream()).or_default().push((*offset, r.payload.as_ref().map(|p| String::from_utf8(p.clone()).unwrap())));
    }
    out
}

fn expected(values: &[Option<&str>]) -> Vec<(i64, Option<String>)> {
    values.iter().enumerate().map(|(i, v)| (i as i64, v.map(str::to_string))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_reads_every_partition_in_order_and_resumes_from_offsets() {
    let kafka = Kafka::new();
    let prefix = common::unique_name("t");
    let shipments = format!("{prefix}.public.shipments");
    let txns = format!("{prefix}.transaction");
    kafka.create_topic(&shipments, 2).await;
    kafka.create_topic(&txns, 1).await;
    let p0: Vec<String> = (0..10).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    for (i, v) in p0.iter().enumerate() {
        assert_eq!(kafka.send(&shipments, 0, "k", Some(v)).await, i as i64);
    }
    kafka.send(&shipments, 1, "a", Some("first")).await;
    kafka.send(&shipments, 1, "a", None).await;
    kafka.send(&shipments, 1, "b", Some("third")).await;
    kafka.send(&txns, 0, "x", Some("BEGIN")).await;

    let group = common::unique_name("g");
    let mut connector = kafka.connector(Some(&txns), &group);
    assert_eq!(connector.kind(), "kafka");
    assert_eq!(connector.collection(&shipments), "public.shipments");
    connector.open(std::slice::from_ref(&shipments), &HashMap::new()).await.expect("open");
    let records = read(&mut connector, 14, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 14, "nothing twice: {records:?}");
    let streams = by_stream(&records);
    let p0_values: Vec<Option<&str>> = p0.iter().map(|s| Some(s.as_str())).collect();
    assert_eq!(streams[&format!("{shipments}/0")], expected(&p0_values));
    assert_eq!(streams[&format!("{shipments}/1")], expected(&[Some("first"), None, Some("third")]), "a tombstone has no payload");
    assert_eq!(streams[&format!("{txns}/0")], expected(&[Some("BEGIN")]), "the transaction topic is read too");
    assert_eq!(connector.health(), None);

    // Caught up: once statistics arrived (every second), lag is zero messages.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert!(connector.poll(Duration::from_millis(200)).await.unwrap().is_empty());
    }
    assert_eq!(connector.lag().unit, LagUnit::Messages);
    assert_eq!(connector.lag().amount, 0);

    // Durable offsets reach the consumer group, for Kafka's lag tools.
    let resume: HashMap<String, u64> = [(format!("{shipments}/0"), 7u64), (format!("{shipments}/1"), 3), (format!("{txns}/0"), 1)].into();
    connector.committed(&resume).await.unwrap();
    let checker: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &kafka.brokers).set("group.id", &group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&shipments, 0);
    tpl.add_partition(&shipments, 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // Commits are asynchronous and rate-limited: polling sends the latest one.
        let _ = connector.poll(Duration::from_millis(300)).await.unwrap();
        let committed = checker.committed_offsets(tpl.clone(), Duration::from_secs(5)).unwrap().to_topic_map();
        if committed.get(&(shipments.clone(), 0)) == Some(&Offset::Offset(7))
            && committed.get(&(shipments.clone(), 1)) == Some(&Offset::Offset(3))
        {
            break;
        }
        assert!(Instant::now() < deadline, "group offsets not committed: {committed:?}");
    }

    // Reopen from resume offsets: partition 0 from 7, the others as given.
    let resume: HashMap<String, u64> = [(format!("{shipments}/0"), 7u64), (format!("{txns}/0"), 1)].into();
    connector.open(std::slice::from_ref(&shipments), &resume).await.unwrap();
    kafka.send(&shipments, 0, "k", Some("late")).await;
    let records = read(&mut connector, 7, Duration::from_secs(30)).await;
    let streams = by_stream(&records);
    assert_eq!(records.len(), 7, "{records:?}");
    assert_eq!(
        streams[&format!("{shipments}/0")],
        vec![(7, Some(p0[7].clone())), (8, Some(p0[8].clone())), (9, Some(p0[9].clone())), (10, Some("late".to_string()))]
    );
    assert_eq!(streams[&format!("{shipments}/1")].len(), 3, "no resume offset: from the beginning");
    assert!(!streams.contains_key(&format!("{txns}/0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_waits_for_topics_that_do_not_exist_yet() {
    let kafka = Kafka::new();
    let prefix = common::unique_name("w");
    let stops = format!("{prefix}.public.stops");
    let notes = format!("{prefix}.public.notes");
    let mut connector = kafka.connector(None, &common::unique_name("g"));
    connector.open(std::slice::from_ref(&stops), &HashMap::new()).await.expect("a missing topic is not an error");
    assert!(connector.poll(Duration::from_millis(300)).await.unwrap().is_empty());
    let Some(Health::Waiting(state)) = connector.health() else { panic!("{:?}", connector.health()) };
    assert!(state.contains("waiting for topic") && state.contains(&stops), "{state}");

    kafka.create_topic(&stops, 1).await;
    kafka.send(&stops, 0, "1", Some("one")).await;
    let records = read(&mut connector, 1, Duration::from_secs(30)).await;
    assert_eq!(by_stream(&records)[&format!("{stops}/0")], expected(&[Some("one")]));
    assert_eq!(connector.health(), None);

    // A second upstream appears while the first is being read; both partitions of it are
    // found and read from their beginning. (tansu cannot add partitions to a topic; new
    // partitions go through the same discovery.)
    connector.open(&[stops.clone(), notes.clone()], &[(format!("{stops}/0"), 1u64)].into()).await.unwrap();
    kafka.send(&stops, 0, "2", Some("two")).await;
    let records = read(&mut connector, 1, Duration::from_secs(30)).await;
    assert_eq!(by_stream(&records)[&format!("{stops}/0")], vec![(1, Some("two".to_string()))]);
    assert!(matches!(connector.health(), Some(Health::Waiting(w)) if w.contains(&notes)));
    kafka.create_topic(&notes, 2).await;
    kafka.send(&notes, 1, "a", Some("n1")).await;
    kafka.send(&notes, 0, "b", Some("n0")).await;
    kafka.send(&stops, 0, "3", Some("three")).await;
    let records = read(&mut connector, 3, Duration::from_secs(30)).await;
    let streams = by_stream(&records);
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(streams[&format!("{notes}/0")], expected(&[Some("n0")]));
    assert_eq!(streams[&format!("{notes}/1")], expected(&[Some("n1")]));
    assert_eq!(streams[&format!("{stops}/0")], vec![(2, Some("three".to_string()))]);
    assert_eq!(connector.health(), None);
}

// ---------------------------------------------------------------------------------------------
// Through the server: CREATE SOURCE, bound tables, materialized views. Ignored until the
// generic runner (src/sources/runner.rs driving any `Connector`) lands and builds this
// connector from `CREATE SOURCE ... WITH (connector = 'kafka', ...)`; then drop the ignores.

/// Debezium change events and transaction markers of one Postgres database, `tms`.
struct Debezium {
    prefix: String,
}

/// One change event of a transaction: table, op, before, after.
struct Event<'a> {
    table: &'a str,
    op: &'a str,
    before: Option<String>,
    after: Option<String>,
}

fn account(id: i64, balance: i64) -> Option<String> {
    Some(format!(r#"{{"id":{id},"balance":{balance}}}"#))
}

fn ev<'a>(table: &'a str, op: &'a str, before: Option<String>, after: Option<String>) -> Event<'a> {
    Event { table, op, before, after }
}

impl Debezium {
    fn topic(&self, table: &str) -> String {
        format!("{}.public.{table}", self.prefix)
    }

    fn transaction_topic(&self) -> String {
        format!("{}.transaction", self.prefix)
    }

    fn txn_id(tx: i64) -> String {
        format!("{tx}:{}", tx * 100)
    }

    /// The change events of transaction `tx`, each with its `transaction` block.
    fn events(&self, tx: i64, events: &[Event]) -> Vec<String> {
        let mut per_table: HashMap<&str, u64> = HashMap::new();
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let n = per_table.entry(e.table).or_default();
                *n += 1;
                let json = |v: &Option<String>| v.clone().unwrap_or_else(|| "null".into());
                format!(
                    r#"{{"before":{},"after":{},"source":{{"db":"tms","schema":"public","table":"{}","txId":{tx},"lsn":{},"ts_ms":1700000000000}},"op":"{}","ts_ms":1700000000000,"transaction":{{"id":"{}","total_order":{},"data_collection_order":{n}}}}}"#,
                    json(&e.before),
                    json(&e.after),
                    e.table,
                    tx * 100,
                    e.op,
                    Self::txn_id(tx),
                    i + 1
                )
            })
            .collect()
    }

    fn begin(tx: i64) -> String {
        format!(r#"{{"status":"BEGIN","id":"{}","event_count":null,"data_collections":null,"ts_ms":1700000000000}}"#, Self::txn_id(tx))
    }

    fn end(tx: i64, events: &[Event]) -> String {
        let mut per_table: Vec<(&str, u64)> = Vec::new();
        for e in events {
            match per_table.iter_mut().find(|(t, _)| *t == e.table) {
                Some((_, n)) => *n += 1,
                None => per_table.push((e.table, 1)),
            }
        }
        let dc: Vec<String> = per_table.iter().map(|(t, n)| format!(r#"{{"data_collection":"public.{t}","event_count":{n}}}"#)).collect();
        format!(
            r#"{{"status":"END","id":"{}","event_count":{},"data_collections":[{}],"ts_ms":1700000000000}}"#,
            Self::txn_id(tx),
            events.len(),
            dc.join(",")
        )
    }
}

/// Accounts live on two partitions (by id), so one transaction spans three streams.
fn account_partition(id: i64) -> i32 {
    (id % 2) as i32
}

fn event_partition(e: &Event) -> i32 {
    if e.table != "accounts" {
        return 0;
    }
    let row = e.after.as_ref().or(e.before.as_ref()).expect("a row");
    let v: serde_json::Value = serde_json::from_str(row).unwrap();
    v["id"].as_i64().map_or(0, account_partition)
}

impl Kafka {
    /// Produce a whole transaction: BEGIN, events on their tables' topics, END.
    async fn transaction(&self, db: &Debezium, tx: i64, events: &[Event<'_>]) {
        self.send(&db.transaction_topic(), 0, &tx.to_string(), Some(&Debezium::begin(tx))).await;
        for (e, json) in events.iter().zip(db.events(tx, events)) {
            self.send(&db.topic(e.table), event_partition(e), "k", Some(&json)).await;
        }
        self.send(&db.transaction_topic(), 0, &tx.to_string(), Some(&Debezium::end(tx, events))).await;
    }
}

fn row(v: &[&str]) -> Vec<Option<String>> {
    v.iter().map(|s| Some(s.to_string())).collect()
}

async fn setup_accounts(kafka: &Kafka, db: &Debezium) {
    kafka.create_topic(&db.topic("accounts"), 2).await;
    kafka.create_topic(&db.topic("transfers"), 1).await;
    kafka.create_topic(&db.transaction_topic(), 1).await;
}

fn create_source_sql(kafka: &Kafka, db: &Debezium) -> String {
    format!(
        "CREATE SOURCE tms_kafka WITH (connector = 'kafka', brokers = '{}', format = 'debezium-json', transaction_topic = '{}', group_id = '{}');
         CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT) WITH (source = 'tms_kafka', upstream = '{}');
         CREATE TABLE transfers (id BIGINT PRIMARY KEY, from_id BIGINT, to_id BIGINT, amount BIGINT) WITH (source = 'tms_kafka', upstream = '{}');
         CREATE MATERIALIZED VIEW totals AS SELECT sum(balance) AS total, count(*) AS n FROM accounts;
         CREATE MATERIALIZED VIEW transfer_log AS SELECT op, COALESCE(after.id, before.id) AS id FROM changes(transfers);",
        kafka.brokers,
        db.transaction_topic(),
        db.prefix,
        db.topic("accounts"),
        db.topic("transfers"),
    )
}

fn transfer_row(id: i64, from: i64, to: i64, amount: i64) -> Option<String> {
    Some(format!(r#"{{"id":{id},"from_id":{from},"to_id":{to},"amount":{amount}}}"#))
}

/// T1: four accounts of 250. T2: 100 from account 1 to 2, its events spread over three
/// streams, sent complete with BEGIN and END except for the event of account 1, returned.
async fn send_t1_and_t2_but_one_event(kafka: &Kafka, db: &Debezium) -> String {
    let t1: Vec<Event> = (1..=4).map(|id| ev("accounts", "c", None, account(id, 250))).collect();
    kafka.transaction(db, 1, &t1).await;
    let t2 = vec![
        ev("accounts", "u", account(1, 250), account(1, 150)),
        ev("accounts", "u", account(2, 250), account(2, 350)),
        ev("transfers", "c", None, transfer_row(1, 1, 2, 100)),
    ];
    let mut json = db.events(2, &t2);
    kafka.send(&db.transaction_topic(), 0, "2", Some(&Debezium::begin(2))).await;
    kafka.send(&db.topic("accounts"), 0, "k", Some(&json[1])).await;
    kafka.send(&db.topic("transfers"), 0, "k", Some(&json[2])).await;
    kafka.send(&db.transaction_topic(), 0, "2", Some(&Debezium::end(2, &t2))).await;
    json.swap_remove(0)
}

/// Wait until `sql` returns `want`.
async fn eventually(client: &tokio_postgres::Client, sql: &str, want: Vec<Vec<Option<String>>>) {
    let start = Instant::now();
    loop {
        let got = common::rows(client, sql).await;
        if got == want {
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let sources = common::rows(client, "SELECT * FROM velocity_catalog.sources").await;
            let ids = common::rows(client, "SELECT id FROM transfers").await;
            let ids: std::collections::BTreeSet<i64> = ids.iter().map(|r| r[0].as_deref().unwrap().parse().unwrap()).collect();
            eprintln!("missing transfers: {:?}", (1..=400).filter(|i| !ids.contains(i)).collect::<Vec<_>>());
            panic!("{sql}: {got:?}, expected {want:?}; sources: {sources:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_applies_whole_transactions_across_topics() {
    let kafka = Kafka::new();
    let db = Debezium { prefix: common::unique_name("tx") };
    setup_accounts(&kafka, &db).await;
    let server = common::TestServer::start().await;
    let client = server.client().await;
    client.batch_execute(&create_source_sql(&kafka, &db)).await.unwrap();

    // Every state of `totals` is watched: money only moves, so the sum is 1000 in every tick.
    let reader = server.client().await;
    let stream = reader.copy_out("COPY (SUBSCRIBE TO totals) TO STDOUT").await.unwrap();
    let watcher = tokio::spawn(async move {
        use futures::StreamExt;
        let mut stream = Box::pin(stream);
        let mut state: HashMap<(String, String), i64> = HashMap::new();
        let mut states = Vec::new();
        let mut tick = None;
        let mut buffered = String::new();
        while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(8), stream.next()).await {
            buffered.push_str(core::str::from_utf8(&chunk.unwrap()).unwrap());
            while let Some(nl) = buffered.find('\n') {
                let line: String = buffered.drain(..=nl).collect();
                let f: Vec<&str> = line.trim_end().split('\t').collect();
                let (t, diff) = (f[0].to_string(), f[1].parse::<i64>().unwrap());
                if tick.as_ref().is_some_and(|p| *p != t) {
                    states.push(state.iter().filter(|(_, n)| **n != 0).map(|(k, n)| (k.clone(), *n)).collect::<Vec<_>>());
                }
                tick = Some(t);
                *state.entry((f[2].to_string(), f[3].to_string())).or_default() += diff;
            }
        }
        states.push(state.into_iter().filter(|(_, n)| *n != 0).collect());
        states
    });

    // T2's END arrives before the event of account 1: nothing of T2 may show until that
    // event arrives.
    let account_1_event = send_t1_and_t2_but_one_event(&kafka, &db).await;
    eventually(&client, "SELECT total, n FROM totals", vec![row(&["1000", "4"])]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        common::rows(&client, "SELECT id, balance FROM accounts").await,
        vec![row(&["1", "250"]), row(&["2", "250"]), row(&["3", "250"]), row(&["4", "250"])],
        "T2 is incomplete: none of it is visible"
    );
    assert!(common::rows(&client, "SELECT * FROM transfers").await.is_empty());
    kafka.send(&db.topic("accounts"), 1, "k", Some(&account_1_event)).await;

    // T3: account 3 deleted and re-inserted (net: an update), account 4 updated three times
    // back and forth (net: one update), 50 moved from 3 to 4.
    let t3 = vec![
        ev("accounts", "d", account(3, 250), None),
        ev("accounts", "c", None, account(3, 200)),
        ev("accounts", "u", account(4, 250), account(4, 300)),
        ev("accounts", "u", account(4, 300), account(4, 250)),
        ev("accounts", "u", account(4, 250), account(4, 300)),
        ev("transfers", "c", None, transfer_row(2, 3, 4, 50)),
    ];
    kafka.transaction(&db, 3, &t3).await;
    // T4: a redundant update (nothing changes) and a transfer that is undone in the same
    // transaction (its row vanishes).
    let t4 = vec![
        ev("accounts", "u", account(1, 150), account(1, 150)),
        ev("transfers", "c", None, transfer_row(3, 1, 2, 1)),
        ev("transfers", "d", transfer_row(3, 1, 2, 1), None),
    ];
    kafka.transaction(&db, 4, &t4).await;

    let want_accounts = vec![row(&["1", "150"]), row(&["2", "350"]), row(&["3", "200"]), row(&["4", "300"])];
    eventually(&client, "SELECT id, balance FROM accounts", want_accounts).await;
    eventually(
        &client,
        "SELECT id, from_id, to_id, amount FROM transfers",
        vec![row(&["1", "1", "2", "100"]), row(&["2", "3", "4", "50"])],
    )
    .await;
    assert_eq!(common::rows(&client, "SELECT total, n FROM totals").await, vec![row(&["1000", "4"])]);
    // DELETE+INSERT of account 3 was one update; transfer 3 never existed.
    assert_eq!(common::rows(&client, "SELECT op, id FROM transfer_log").await, vec![row(&["insert", "1"]), row(&["insert", "2"])]);
    let status = common::rows(&client, "SELECT name, connector, errors FROM velocity_catalog.sources").await;
    assert_eq!(status, vec![row(&["tms_kafka", "kafka", "0"])]);

    let states = watcher.await.unwrap();
    for s in &states {
        assert!(
            s.is_empty() || s.iter().all(|((total, n), _)| total == "1000" && n == "4") || s.iter().all(|((_, n), _)| n == "0"),
            "a partial transaction was visible: {states:?}"
        );
    }
    assert!(states.iter().any(|s| !s.is_empty()), "the subscription saw the view: {states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_dead_letters_malformed_records() {
    let kafka = Kafka::new();
    let db = Debezium { prefix: common::unique_name("dl") };
    setup_accounts(&kafka, &db).await;
    let server = common::TestServer::start().await;
    let client = server.client().await;
    client.batch_execute(&create_source_sql(&kafka, &db)).await.unwrap();

    let t1: Vec<Event> = (1..=4).map(|id| ev("accounts", "c", None, account(id, 250))).collect();
    kafka.transaction(&db, 1, &t1).await;
    // Outside any transaction: bytes that are not JSON, and truncated JSON.
    kafka.send(&db.topic("accounts"), 0, "k", Some("\u{1}\u{2} garbage")).await;
    kafka.send(&db.topic("transfers"), 0, "k", Some(r#"{"before":null,"after":{"id":7,"#)).await;
    // Inside T2: a transfer whose id has the wrong type; the rest of T2 applies.
    let t2 = vec![
        ev("accounts", "u", account(1, 250), account(1, 200)),
        ev("accounts", "u", account(2, 250), account(2, 300)),
        ev("transfers", "c", None, Some(r#"{"id":"abc","from_id":1,"to_id":2,"amount":50}"#.to_string())),
        ev("transfers", "c", None, transfer_row(1, 1, 2, 50)),
    ];
    kafka.transaction(&db, 2, &t2).await;

    eventually(
        &client,
        "SELECT id, balance FROM accounts",
        vec![row(&["1", "200"]), row(&["2", "300"]), row(&["3", "250"]), row(&["4", "250"])],
    )
    .await;
    eventually(&client, "SELECT id, amount FROM transfers", vec![row(&["1", "50"])]).await;
    eventually(&client, "SELECT count(*) FROM velocity_catalog.dead_letters", vec![row(&["3"])]).await;
    let dead = common::rows(&client, "SELECT position, raw, reason FROM velocity_catalog.dead_letters").await;
    let accounts_p0 = format!("{}/0@", db.topic("accounts"));
    assert!(
        dead.iter().any(|r| r[0].as_deref().unwrap().starts_with(&accounts_p0) && r[1].as_deref().unwrap().contains("garbage")),
        "{dead:?}"
    );
    assert!(dead.iter().any(|r| r[1].as_deref().unwrap().contains("abc") && r[2].as_deref().unwrap().contains("id")), "{dead:?}");
    eventually(&client, "SELECT name, errors FROM velocity_catalog.sources", vec![row(&["tms_kafka", "3"])]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_resumes_after_kill9_without_applying_twice() {
    let kafka = Kafka::new();
    let db = Debezium { prefix: common::unique_name("rs") };
    setup_accounts(&kafka, &db).await;
    // 1 + 400 transactions, produced before the server reads them; a model keeps the balances.
    let mut balances = [0i64, 250, 250, 250, 250];
    let t1: Vec<Event> = (1..=4).map(|id| ev("accounts", "c", None, account(id, 250))).collect();
    kafka.transaction(&db, 1, &t1).await;
    const TRANSFERS: i64 = 400;
    let mut batches: Vec<Vec<(String, i32, String)>> = Vec::new();
    for i in 1..=TRANSFERS {
        let (from, to) = (i % 4 + 1, (i + 1) % 4 + 1);
        let amount = i % 7 + 1;
        let events = vec![
            ev("accounts", "u", account(from, balances[from as usize]), account(from, balances[from as usize] - amount)),
            ev("accounts", "u", account(to, balances[to as usize]), account(to, balances[to as usize] + amount)),
            ev("transfers", "c", None, transfer_row(i, from, to, amount)),
        ];
        balances[from as usize] -= amount;
        balances[to as usize] += amount;
        let tx = i + 1;
        let mut batch = vec![(db.transaction_topic(), 0, Debezium::begin(tx))];
        for (e, json) in events.iter().zip(db.events(tx, &events)) {
            batch.push((db.topic(e.table), event_partition(e), json));
        }
        batch.push((db.transaction_topic(), 0, Debezium::end(tx, &events)));
        batches.push(batch);
    }
    let mut sends = Vec::new();
    for batch in &batches {
        for (topic, partition, json) in batch {
            sends.push(
                kafka
                    .producer
                    .send(FutureRecord::<str, str>::to(topic).partition(*partition).key("k").payload(json), Duration::from_secs(30)),
            );
        }
    }
    for s in futures::future::join_all(sends).await {
        s.expect("produce");
    }
    drop(batches);

    let dir = tempfile::tempdir().unwrap();
    let data = common::data_dir(&dir);
    let server = common::ServerProcess::start(&data);
    let client = common::connect(server.addr).await;
    client.batch_execute(&create_source_sql(&kafka, &db)).await.unwrap();
    // Kill -9 while the source is part way through.
    let start = Instant::now();
    loop {
        let n = common::rows(&client, "SELECT count(*) FROM transfers").await;
        let n: i64 = n[0][0].as_deref().unwrap().parse().unwrap();
        if n > 0 {
            eprintln!("killed after {n} of {TRANSFERS} transfers");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the source applies nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
    server.kill9();

    let server = common::ServerProcess::start(&data);
    let client = common::connect(server.addr).await;
    let want: Vec<Vec<Option<String>>> = (1..=4).map(|id| vec![Some(id.to_string()), Some(balances[id].to_string())]).collect();
    eventually(&client, "SELECT count(*) FROM transfers", vec![row(&[&TRANSFERS.to_string()])]).await;
    eventually(&client, "SELECT id, balance FROM accounts", want).await;
    assert_eq!(common::rows(&client, "SELECT total, n FROM totals").await, vec![row(&["1000", "4"])]);
    // Each transfer was inserted exactly once: a transaction applied twice would show as an
    // update of its transfer row.
    assert_eq!(
        common::rows(&client, "SELECT op, count(*) FROM transfer_log GROUP BY op").await,
        vec![row(&["insert", &TRANSFERS.to_string()])]
    );
    let sum: i64 = (1..=TRANSFERS).map(|i| i % 7 + 1).sum();
    assert_eq!(common::rows(&client, "SELECT sum(amount) FROM transfers").await, vec![row(&[&sum.to_string()])]);
    server.terminate();
}

/// A transaction that lost an event (END counts 3, 2 arrive) must not hold up the ones after
/// it forever: under continuous input (so no idle flush) it is released incomplete after
/// `stall_timeout`, and everything after it applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_releases_a_transaction_that_lost_an_event_under_continuous_input() {
    let kafka = Kafka::new();
    let db = Debezium { prefix: common::unique_name("stall") };
    setup_accounts(&kafka, &db).await;
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let sql = create_source_sql(&kafka, &db).replacen("group_id =", "stall_timeout = '2s', group_id =", 1);
    client.batch_execute(&sql).await.unwrap();
    // The event of account 1 never comes.
    send_t1_and_t2_but_one_event(&kafka, &db).await;
    // Later transactions keep coming, each complete.
    let started = Instant::now();
    let mut tx = 3;
    loop {
        let transfer = ev("transfers", "c", None, transfer_row(tx, 3, 4, 0));
        kafka.transaction(&db, tx, &[transfer]).await;
        let applied = common::rows(&client, "SELECT count(*) FROM transfers").await;
        let account2 = common::rows(&client, "SELECT balance FROM accounts WHERE id = 2").await;
        if account2 == vec![row(&["350"])] && applied[0][0].as_deref().unwrap().parse::<i64>().unwrap() >= tx - 3 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "still held up after {tx} transactions: {applied:?} {account2:?}");
        tx += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The lost event's row kept its old value; the rest of T2 and everything after applied.
    eventually(&client, "SELECT id, balance FROM accounts WHERE id <= 2", vec![row(&["1", "250"]), row(&["2", "350"])]).await;
    eventually(&client, "SELECT count(*) FROM transfers", vec![row(&[&(tx - 1).to_string()])]).await;
}
