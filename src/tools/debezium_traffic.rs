//! Generated Debezium traffic for the source benchmark and tests: two Postgres tables of ten
//! columns (decimals, timestamps, dates, text) in `JsonConverter`'s schema envelope,
//! transactions of 3-10 events with DELETE+INSERT pairs and updates, a tombstone after each
//! delete, and an END marker per transaction on the metadata topic.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::sources::{Position, UpstreamTable};

/// The tables that [`records`] fills: `public.shipments` and `public.orders`.
pub fn bindings() -> Vec<UpstreamTable> {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
    let shipments = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("order_id", DataType::Int64, false),
        Field::new("carrier", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("weight", DataType::Decimal128(10, 2), true),
        Field::new("shipped_at", ts.clone(), true),
        Field::new("updated_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("due", DataType::Date32, true),
        Field::new("fragile", DataType::Boolean, true),
        Field::new("address", DataType::Utf8, true),
    ]);
    let orders = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("total", DataType::Decimal128(12, 2), true),
        Field::new("currency", DataType::Utf8, true),
        Field::new("placed_at", ts, true),
        Field::new("quantity", DataType::Int32, true),
        Field::new("discount", DataType::Float64, true),
        Field::new("note", DataType::Utf8, true),
        Field::new("paid", DataType::Boolean, true),
        Field::new("region", DataType::Utf8, true),
    ]);
    vec![
        UpstreamTable { collection: "public.shipments".into(), schema: Arc::new(shipments), primary_key: vec![0] },
        UpstreamTable { collection: "public.orders".into(), schema: Arc::new(orders), primary_key: vec![0] },
    ]
}

/// `CREATE TABLE shipments ...` and `CREATE TABLE orders ...`, bound to `source`: the tables
/// of [`bindings`] in SQL, for a source reading [`write_file`]'s output.
pub fn tables_sql(source: &str) -> [String; 2] {
    [
        format!(
            "CREATE TABLE shipments (id BIGINT PRIMARY KEY, order_id BIGINT NOT NULL, carrier TEXT, status TEXT,
                weight DECIMAL(10, 2), shipped_at TIMESTAMP, updated_at TIMESTAMPTZ, due DATE, fragile BOOLEAN, address TEXT)
                WITH (source = '{source}', upstream = 'public.shipments')"
        ),
        format!(
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT NOT NULL, total DECIMAL(12, 2), currency TEXT,
                placed_at TIMESTAMP, quantity INT, discount DOUBLE PRECISION, note TEXT, paid BOOLEAN, region TEXT)
                WITH (source = '{source}', upstream = 'public.orders')"
        ),
    ]
}

/// What [`write_file`] wrote.
pub struct TrafficFile {
    /// Source transactions (END markers).
    pub transactions: usize,
    /// Change events.
    pub events: usize,
    pub bytes: usize,
}

/// [`records`] of about `events` events as one JSON-lines file (read it with
/// `connector = 'file', transactions = 'metadata'`).
pub fn write_file(path: &std::path::Path, events: usize) -> std::io::Result<TrafficFile> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut file = TrafficFile { transactions: 0, events: 0, bytes: 0 };
    for (_, record) in records(events) {
        writeln!(out, "{record}")?;
        file.bytes += record.len() + 1;
        file.transactions += usize::from(record.contains("\"END\""));
        file.events += usize::from(record.contains("\"op\":"));
    }
    out.flush()?;
    Ok(file)
}

/// The envelope schema `JsonConverter` writes for a table, from (column, connect type,
/// semantic name, parameters).
fn envelope_schema(table: &str, columns: &[(&str, &str, Option<&str>, Option<Value>)]) -> Value {
    let fields: Vec<Value> = columns
        .iter()
        .map(|(name, ty, semantic, params)| {
            let mut f = serde_json::json!({"type": ty, "optional": *name != "id", "field": name});
            if let Some(semantic) = semantic {
                f["name"] = Value::from(*semantic);
                f["version"] = Value::from(1);
            }
            if let Some(params) = params {
                f["parameters"] = params.clone();
            }
            f
        })
        .collect();
    let image = |field: &str| {
        serde_json::json!({"type": "struct", "fields": fields, "optional": true,
                           "name": format!("fulfillment.public.{table}.Value"), "field": field})
    };
    let source_fields: Vec<Value> = [
        ("version", "string"),
        ("connector", "string"),
        ("name", "string"),
        ("ts_ms", "int64"),
        ("snapshot", "string"),
        ("db", "string"),
        ("sequence", "string"),
        ("schema", "string"),
        ("table", "string"),
        ("txId", "int64"),
        ("lsn", "int64"),
        ("xmin", "int64"),
    ]
    .iter()
    .map(|(f, t)| serde_json::json!({"type": t, "optional": true, "field": f}))
    .collect();
    serde_json::json!({"type": "struct", "fields": [
        image("before"), image("after"),
        {"type": "struct", "fields": source_fields, "optional": false, "name": "io.debezium.connector.postgresql.Source", "field": "source"},
        {"type": "string", "optional": false, "field": "op"},
        {"type": "int64", "optional": true, "field": "ts_ms"},
        {"type": "struct", "fields": [
            {"type": "string", "optional": false, "field": "id"},
            {"type": "int64", "optional": false, "field": "total_order"},
            {"type": "int64", "optional": false, "field": "data_collection_order"}],
         "optional": true, "name": "event.block", "version": 1, "field": "transaction"}
    ], "optional": false, "name": format!("fulfillment.public.{table}.Envelope"), "version": 1})
}

/// Generated records with their positions: two table topics and a metadata topic. Ids are
/// Postgres' `"txId:LSN"`, with each record's own LSN.
pub fn records(events: usize) -> Vec<(Position, String)> {
    let decimal = |scale: &str| Some(serde_json::json!({"scale": scale, "connect.decimal.precision": "10"}));
    let shipments_schema = envelope_schema(
        "shipments",
        &[
            ("id", "int64", None, None),
            ("order_id", "int64", None, None),
            ("carrier", "string", None, None),
            ("status", "string", None, None),
            ("weight", "bytes", Some("org.apache.kafka.connect.data.Decimal"), decimal("2")),
            ("shipped_at", "int64", Some("io.debezium.time.MicroTimestamp"), None),
            ("updated_at", "string", Some("io.debezium.time.ZonedTimestamp"), None),
            ("due", "int32", Some("io.debezium.time.Date"), None),
            ("fragile", "boolean", None, None),
            ("address", "string", None, None),
        ],
    )
    .to_string();
    let orders_schema = envelope_schema(
        "orders",
        &[
            ("id", "int64", None, None),
            ("customer_id", "int64", None, None),
            ("total", "bytes", Some("org.apache.kafka.connect.data.Decimal"), decimal("2")),
            ("currency", "string", None, None),
            ("placed_at", "int64", Some("io.debezium.time.MicroTimestamp"), None),
            ("quantity", "int32", None, None),
            ("discount", "double", None, None),
            ("note", "string", None, None),
            ("paid", "boolean", None, None),
            ("region", "string", None, None),
        ],
    )
    .to_string();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    // A positive unscaled decimal below 2^23 as 3 big-endian bytes, base64.
    let decimal_b64 = |v: u64| STANDARD.encode(&((v & 0x7f_ffff) as u32).to_be_bytes()[1..]);
    let mut offsets = [0i64; 3];
    let mut position = |topic: usize| {
        offsets[topic] += 1;
        let names = ["fulfillment.public.shipments", "fulfillment.public.orders", "fulfillment.transaction"];
        Position::Kafka { topic: names[topic].to_string(), partition: 0, offset: offsets[topic] }
    };
    let mut records = Vec::with_capacity(events + events / 3);
    let (mut produced, mut tx_id, mut lsn) = (0usize, 1000i64, 24_000_000i64);
    while produced < events {
        tx_id += 1;
        // (table, key, op): DELETE+INSERT pairs of one key, updates and inserts.
        let size = 3 + next(8) as usize;
        let mut plan: Vec<(usize, u64, &str)> = Vec::with_capacity(size + 1);
        while plan.len() < size {
            let (table, key) = (next(2) as usize, 1 + next(5_000));
            match next(4) {
                0 => {
                    plan.push((table, key, "d"));
                    plan.push((table, key, "c"));
                }
                1 => plan.push((table, key, "c")),
                _ => plan.push((table, key, "u")),
            }
        }
        let mut per_table = [0u64; 2];
        for (order, &(table, key, op)) in plan.iter().enumerate() {
            lsn += 1 + next(64) as i64;
            per_table[table] += 1;
            let row = if table == 0 {
                format!(
                    r#"{{"id":{key},"order_id":{},"carrier":"{}","status":"{}","weight":"{}","shipped_at":{},"updated_at":"2024-03-{:02}T10:{:02}:{:02}.123456Z","due":{},"fragile":{},"address":"{} Harbour Road, Unit {}"}}"#,
                    key * 7,
                    ["DHL", "UPS", "FedEx", "PostNL"][next(4) as usize],
                    ["pending", "shipped", "delivered"][next(3) as usize],
                    decimal_b64(next(1_000_000)),
                    1_709_000_000_000_000 + next(1_000_000_000_000) as i64,
                    1 + next(28),
                    next(60),
                    next(60),
                    19_700 + next(200),
                    next(2) == 0,
                    next(999),
                    next(99),
                )
            } else {
                format!(
                    r#"{{"id":{key},"customer_id":{},"total":"{}","currency":"EUR","placed_at":{},"quantity":{},"discount":{}.5,"note":"gift wrap please, leave at door {}","paid":{},"region":"{}"}}"#,
                    next(100_000),
                    decimal_b64(next(5_000_000)),
                    1_709_000_000_000_000 + next(1_000_000_000_000) as i64,
                    1 + next(20),
                    next(30),
                    next(1000),
                    next(2) == 0,
                    ["eu-west", "eu-central", "us-east"][next(3) as usize],
                )
            };
            let (before, after) = if op == "d" { (row.as_str(), "null") } else { ("null", row.as_str()) };
            let table_name = ["shipments", "orders"][table];
            let payload = format!(
                r#"{{"before":{before},"after":{after},"source":{{"version":"2.5.0.Final","connector":"postgresql","name":"fulfillment","ts_ms":1709280000000,"snapshot":"false","db":"fulfillment","sequence":"[\"{lsn}\",\"{lsn}\"]","schema":"public","table":"{table_name}","txId":{tx_id},"lsn":{lsn},"xmin":null}},"op":"{op}","ts_ms":1709280000123,"transaction":{{"id":"{tx_id}:{lsn}","total_order":{},"data_collection_order":{}}}}}"#,
                order + 1,
                per_table[table]
            );
            let schema = if table == 0 { &shipments_schema } else { &orders_schema };
            records.push((position(table), format!(r#"{{"schema":{schema},"payload":{payload}}}"#)));
            if op == "d" {
                // The tombstone Debezium writes after each delete.
                records.push((position(table), String::new()));
            }
            produced += 1;
        }
        // As Debezium's Postgres connector does, every record has its own LSN in its id.
        lsn += 1;
        let end = format!(
            r#"{{"status":"END","id":"{tx_id}:{lsn}","event_count":{},"data_collections":[{{"data_collection":"public.shipments","event_count":{}}},{{"data_collection":"public.orders","event_count":{}}}],"ts_ms":1709280000123}}"#,
            plan.len(),
            per_table[0],
            per_table[1]
        );
        records.push((position(2), end));
    }
    records
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray, RecordBatch};
    use arrow::compute::concat_batches;

    use super::*;
    use crate::sources::{AssemblerOutput, Decoder, TxnAssembler, TxnBoundaries};

    #[test]
    fn generated_traffic_assembles_with_semantic_types() {
        let records = records(300);
        let mut assembler = TxnAssembler::new(bindings(), TxnBoundaries::Metadata).unwrap();
        let mut decoder = Decoder::new();
        let mut txns = Vec::new();
        for (position, raw) in &records {
            for out in assembler.push(position.clone(), raw.as_bytes(), decoder.decode(Some(raw.as_bytes()))) {
                match out {
                    AssemblerOutput::CompleteTxn(t) => txns.push(t),
                    AssemblerOutput::DeadLetter(d) => panic!("unexpected dead letter: {}", d.reason),
                }
            }
        }
        let ends = records.iter().filter(|(_, r)| r.contains("\"END\"")).count();
        assert_eq!((txns.len(), assembler.pending()), (ends, 0));
        assert!(assembler.stats().tombstones > 0);
        let shipments: Vec<&RecordBatch> =
            txns.iter().flat_map(|t| &t.tables).filter(|(c, _)| c == "public.shipments").map(|(_, n)| &n.upserts).collect();
        let batch = concat_batches(&shipments[0].schema(), shipments.iter().copied()).unwrap();
        assert!(batch.num_rows() > 50);
        assert_eq!(batch.column_by_name("weight").unwrap().null_count(), 0);
        let due = batch.column_by_name("due").unwrap().as_primitive::<arrow::datatypes::Date32Type>();
        assert!(due.values().iter().all(|d| (19_700..19_900).contains(d)));
        let at = batch.column_by_name("updated_at").unwrap().as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert!(at.values().iter().all(|t| (1_709_251_200_000_000..1_711_929_600_000_000).contains(t)));
    }
}
