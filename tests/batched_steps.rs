//! Many transactions in one engine step: each keeps its own tick, so `changes()` over a
//! table and over a view report every transition, while changefeeds see the step's net change.

mod common;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use velocity::engine::{Commit, KeyedChanges};

/// A source-style transaction: shipment `id` is now in `status`.
fn set_status(table: u32, schema: &arrow::datatypes::SchemaRef, id: i64, status: &str) -> Commit {
    let upserts =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![id])), Arc::new(StringArray::from(vec![status]))])
            .unwrap();
    let key_schema = Arc::new(schema.project(&[0]).unwrap());
    let deletes = RecordBatch::new_empty(key_schema);
    Commit { keyed: vec![(table, KeyedChanges { upserts, deletes, truncate: false })], ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transitions_in_one_step_are_two_events() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE shipments (id BIGINT PRIMARY KEY, status TEXT);
             CREATE MATERIALIZED VIEW shipment_state AS SELECT id, status FROM shipments;
             CREATE MATERIALIZED VIEW table_events AS
                 SELECT before.status AS from_status, after.status AS to_status, tick FROM changes(shipments);
             CREATE MATERIALIZED VIEW view_events AS
                 SELECT before.status AS from_status, after.status AS to_status, tick FROM changes(shipment_state, 'id');
             INSERT INTO shipments VALUES (1, 'LOADING'), (2, 'PLANNED');",
        )
        .await
        .unwrap();
    let engine = server.server.engine.clone();
    let (id, schema) = {
        let catalog = engine.catalog();
        let r = catalog.get("shipments").unwrap();
        (r.id, r.schema.clone())
    };
    let mut ticks = engine.subscribe();

    // Hold the engine at the publication of a first step while two more transactions queue
    // up behind it: the engine then takes both in its next step.
    let gate = engine.read_snapshot().await;
    let first = engine.submit(set_status(id, &schema, 2, "LOADING"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let departed = engine.submit(set_status(id, &schema, 1, "DEPARTED"));
    let arrived = engine.submit(set_status(id, &schema, 1, "ARRIVED"));
    drop(gate);
    let t0 = first.await.unwrap();
    let (t1, t2) = (departed.await.unwrap(), arrived.await.unwrap());
    assert_eq!((t1, t2), (t0 + 1, t0 + 2), "each transaction has its own tick");

    // Changefeeds: one step for both, its net change stamped with the last tick.
    let mut published = Vec::new();
    loop {
        let out = ticks.recv().await.unwrap();
        published.push(out.tick);
        if out.tick == t2 {
            let net = &out.changes[&id];
            let statuses: Vec<(String, i64)> = (0..net.len())
                .map(|i| {
                    let s = net.rows.column(1).as_any().downcast_ref::<StringArray>().unwrap().value(i).to_string();
                    (s, net.weights.value(i))
                })
                .collect();
            assert_eq!(statuses.len(), 2, "net change LOADING -> ARRIVED, got {statuses:?}");
            assert!(statuses.contains(&("LOADING".into(), -1)) && statuses.contains(&("ARRIVED".into(), 1)), "{statuses:?}");
            break;
        }
    }
    assert!(!published.contains(&t1), "the two transactions were applied in one step: published {published:?}");

    // Both transitions, each at its own tick, over the table and over the view.
    for view in ["table_events", "view_events"] {
        let rows = client
            .query(&format!("SELECT from_status, to_status, tick FROM {view} WHERE from_status = 'LOADING' OR from_status = 'DEPARTED' ORDER BY tick, to_status"), &[])
            .await
            .unwrap();
        let got: Vec<(String, String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        let want =
            vec![("LOADING".to_string(), "DEPARTED".to_string(), t1 as i64), ("DEPARTED".to_string(), "ARRIVED".to_string(), t2 as i64)];
        assert_eq!(got, want, "{view}");
    }
    let state: Vec<(i64, String)> = client
        .query("SELECT id, status FROM shipment_state ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(state, vec![(1, "ARRIVED".to_string()), (2, "LOADING".to_string())]);
}
