//! Sinks: every committed change of a relation, delivered to an external system.
//!
//! The engine encodes each tick's changes of a sink's relation into messages and writes them
//! to the sink's outbox in the tick's own WriteBatch: a committed change cannot be lost, and
//! a crash cannot deliver a change the engine did not commit. A delivery task per sink
//! (`kafka.rs`) sends the outbox in tick order and, once the broker acknowledged a round,
//! records its progress and deletes what it sent.

pub mod kafka;

use arrow::array::AsArray;
use serde_json::{Map, Value};

use crate::catalog::Relation;
use crate::dataflow::ChangeBatch;
use crate::dataflow::changelog::ChangelogSpec;
use crate::dataflow::graph::TickInfo;
use crate::sql::{OptionError, WithOptions};
use crate::storage::{StorageError, TickWrites, keyspace};

/// Errors of a sink: its definition, its encoding or its delivery.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Options(String),
    #[error("column \"{0}\" does not exist in the sink's relation")]
    UnknownColumn(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Delivery(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("encoding changes: {0}")]
    Encode(String),
    #[error("corrupt outbox entry of sink {0}")]
    CorruptOutbox(u32),
}

type Result<T, E = SinkError> = std::result::Result<T, E>;

/// How a change becomes a message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SinkFormat {
    /// Key: the key columns as a JSON object; value: the row after the change as a JSON
    /// object, or no value (a tombstone) when the row was deleted.
    UpsertJson,
    /// Key as above; value: a Debezium envelope `{before, after, op, ts_ms, source}`.
    DebeziumJson,
}

impl SinkFormat {
    /// The name `format = '...'` takes.
    pub fn name(self) -> &'static str {
        match self {
            SinkFormat::UpsertJson => "upsert-json",
            SinkFormat::DebeziumJson => "debezium-json",
        }
    }
}

/// `CREATE SINK name FROM relation WITH (...)`.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub brokers: String,
    pub topic: String,
    pub format: SinkFormat,
    /// Key columns; empty: the relation's primary key.
    pub key: Vec<String>,
    /// Partitions of the topic when the sink creates it.
    pub partitions: i32,
    /// Other librdkafka producer properties (`properties.linger.ms = '5'`).
    pub properties: Vec<(String, String)>,
}

impl SinkConfig {
    /// Validate `WITH (...)` options.
    pub fn from_options(options: &[(String, String)]) -> Result<SinkConfig> {
        SinkConfig::parse(&WithOptions::from(options)).map_err(|e| SinkError::Options(e.to_string()))
    }

    /// Validate `WITH (...)` options, with a typed error.
    pub fn parse(options: &WithOptions) -> Result<SinkConfig, OptionError> {
        match options.require("connector", "a sink needs connector = 'kafka'")? {
            "kafka" => {}
            other => return Err(OptionError::invalid("connector", format!("unknown sink connector '{other}' (expected kafka)"))),
        }
        options.reject_unknown("sink", &["connector", "brokers", "topic", "format", "key", "partitions", "properties.*"])?;
        let format = match options.get("format") {
            None => SinkFormat::UpsertJson,
            Some(name) => [SinkFormat::UpsertJson, SinkFormat::DebeziumJson].into_iter().find(|f| f.name() == name).ok_or_else(|| {
                OptionError::invalid("format", format!("unknown sink format '{name}' (expected upsert-json or debezium-json)"))
            })?,
        };
        let partitions = match options.parse::<i32>("partitions", "a positive number")? {
            None => 1,
            Some(n) if n > 0 => n,
            Some(n) => return Err(OptionError::invalid("partitions", format!("partitions must be a positive number, not \"{n}\""))),
        };
        Ok(SinkConfig {
            brokers: options.require("brokers", "a Kafka sink needs brokers = 'host:port'")?.to_string(),
            topic: options.require("topic", "a Kafka sink needs topic = '...'")?.to_string(),
            format,
            key: options
                .get("key")
                .map(|k| k.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect())
                .unwrap_or_default(),
            partitions,
            properties: options.with_prefix("properties.").map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        })
    }
}

/// One message of a sink, before it is given a partition.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkMessage {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Turns a tick's consolidated changes of the sink's relation into messages. Runs in the
/// engine thread, so its work is proportional to the change.
pub struct SinkEncoder {
    pub sink: u32,
    pub relation: u32,
    sink_name: String,
    relation_name: String,
    format: SinkFormat,
    key_names: Vec<String>,
    changelog: ChangelogSpec,
}

impl SinkEncoder {
    pub fn new(sink: u32, sink_name: &str, relation: &Relation, config: &SinkConfig) -> Result<SinkEncoder> {
        let schema = &relation.schema;
        let key: Vec<usize> = if config.key.is_empty() {
            relation.primary_key.clone()
        } else {
            config.key.iter().map(|c| schema.index_of(c).map_err(|_| SinkError::UnknownColumn(c.clone()))).collect::<Result<_>>()?
        };
        if key.is_empty() && config.format == SinkFormat::UpsertJson {
            return Err(SinkError::Options(format!(
                "format 'upsert-json' needs a key: \"{}\" has no primary key, name its key columns with key = 'col, ...'",
                relation.name
            )));
        }
        Ok(SinkEncoder {
            sink,
            relation: relation.id,
            sink_name: sink_name.to_string(),
            relation_name: relation.name.clone(),
            format: config.format,
            key_names: key.iter().map(|i| schema.field(*i).name().clone()).collect(),
            changelog: ChangelogSpec { input: 0, relation: relation.id, key, relation_schema: schema.clone() },
        })
    }

    /// Put one tick's messages for `changes` into the sink's outbox, in the tick's writes.
    pub fn write_outbox(&self, changes: &ChangeBatch, tick: TickInfo, writes: &mut TickWrites) -> Result<()> {
        let messages = self.encode(changes, tick.tick, tick.committed_at_micros)?;
        if !messages.is_empty() {
            writes.put(&outbox_key(self.sink, tick.tick), &encode_outbox(&messages));
        }
        Ok(())
    }

    /// The messages of one tick, in the order they must be delivered.
    pub fn encode(&self, changes: &ChangeBatch, tick: u64, committed_at_micros: i64) -> Result<Vec<SinkMessage>> {
        let encode_err = |e: &dyn std::fmt::Display| SinkError::Encode(e.to_string());
        let rows =
            self.changelog.rows(changes, crate::dataflow::graph::TickInfo { tick, committed_at_micros }).map_err(|e| encode_err(&e))?.rows;
        let ops = rows.column(0).as_string::<i32>();
        let side = |i: usize| -> Result<Vec<Value>> {
            crate::functions::json::to_json_values(rows.column(i), rows.schema().field(i)).map_err(|e| encode_err(&e))
        };
        let (before, after) = (side(1)?, side(2)?);
        let mut out = Vec::with_capacity(rows.num_rows());
        for (seq, op) in ops.iter().enumerate() {
            let op = op.unwrap_or("insert");
            let current = if op == "delete" { &before[seq] } else { &after[seq] };
            let key = (!self.key_names.is_empty()).then(|| {
                let object: Map<String, Value> =
                    self.key_names.iter().map(|k| (k.clone(), current.get(k).cloned().unwrap_or(Value::Null))).collect();
                Value::Object(object).to_string().into_bytes()
            });
            let value = match self.format {
                SinkFormat::UpsertJson => (op != "delete").then(|| current.to_string().into_bytes()),
                SinkFormat::DebeziumJson => Some(
                    serde_json::json!({
                        "before": before[seq],
                        "after": after[seq],
                        "op": match op { "insert" => "c", "update" => "u", _ => "d" },
                        "ts_ms": committed_at_micros / 1000,
                        "source": {
                            "connector": "velocity",
                            "name": self.sink_name,
                            "table": self.relation_name,
                            "tick": tick,
                            "seq": seq,
                        },
                    })
                    .to_string()
                    .into_bytes(),
                ),
            };
            out.push(SinkMessage { key, value });
        }
        Ok(out)
    }
}

/// `o` + sink id: the sink's undelivered messages, one entry per tick.
impl crate::engine::StepOutput for SinkEncoder {
    fn relation(&self) -> u32 {
        self.relation
    }

    fn write(&self, changes: &ChangeBatch, tick: TickInfo, writes: &mut TickWrites) -> Result<(), crate::engine::OutputError> {
        Ok(self.write_outbox(changes, tick, writes)?)
    }

    fn forget(&self, store: &crate::storage::Store, writes: &mut TickWrites) -> Result<(), StorageError> {
        writes.delete_prefix(store, &outbox_prefix(self.sink))?;
        writes.delete(&progress_key(self.sink));
        Ok(())
    }
}

pub fn outbox_prefix(sink: u32) -> Vec<u8> {
    let mut k = vec![keyspace::OUTBOX];
    k.extend_from_slice(&sink.to_be_bytes());
    k
}

pub fn outbox_key(sink: u32, tick: u64) -> Vec<u8> {
    let mut k = outbox_prefix(sink);
    k.extend_from_slice(&tick.to_be_bytes());
    k
}

/// Where the delivery task got to (see `kafka.rs`), under `m` + `sink/` + sink id.
pub fn progress_key(sink: u32) -> Vec<u8> {
    let mut k = vec![keyspace::META];
    k.extend_from_slice(b"sink/");
    k.extend_from_slice(&sink.to_be_bytes());
    k
}

/// Messages as one outbox value: per message, a length-prefixed key and value, where
/// `u32::MAX` means absent.
pub fn encode_outbox(messages: &[SinkMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        for part in [&m.key, &m.value] {
            match part {
                Some(bytes) => {
                    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                    out.extend_from_slice(bytes);
                }
                None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
            }
        }
    }
    out
}

pub fn decode_outbox(sink: u32, mut bytes: &[u8]) -> Result<Vec<SinkMessage>> {
    let part = |bytes: &mut &[u8]| -> Result<Option<Vec<u8>>> {
        let len = u32::from_be_bytes(bytes.get(..4).ok_or(SinkError::CorruptOutbox(sink))?.try_into().expect("4 bytes"));
        *bytes = &bytes[4..];
        if len == u32::MAX {
            return Ok(None);
        }
        let value = bytes.get(..len as usize).ok_or(SinkError::CorruptOutbox(sink))?.to_vec();
        *bytes = &bytes[len as usize..];
        Ok(Some(value))
    };
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = part(&mut bytes)?;
        let value = part(&mut bytes)?;
        out.push(SinkMessage { key, value });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::scalar::ScalarValue;

    use crate::catalog::RelationKind;

    fn relation() -> Relation {
        Relation {
            id: 3,
            name: "shipments".into(),
            kind: RelationKind::Table,
            create_sql: String::new(),
            schema: Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("status", DataType::Utf8, true)])),
            primary_key: vec![0],
            depends_on: vec![],
            binding: None,
            ownership: Default::default(),
            watermark: None,
        }
    }

    fn changes(rows: Vec<(i64, i64, &str)>) -> ChangeBatch {
        let rel = relation();
        crate::dataflow::change_batch::from_rows(
            rel.schema.clone(),
            rows.into_iter().map(|(w, id, s)| (w, vec![ScalarValue::Int64(Some(id)), ScalarValue::Utf8(Some(s.into()))])).collect(),
        )
    }

    fn config(options: &[(&str, &str)]) -> SinkConfig {
        let mut all = vec![("connector".to_string(), "kafka".to_string()), ("brokers".into(), "b".into()), ("topic".into(), "t".into())];
        all.extend(options.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        SinkConfig::from_options(&all).unwrap()
    }

    fn text(m: &Option<Vec<u8>>) -> Option<String> {
        m.as_ref().map(|b| String::from_utf8(b.clone()).unwrap())
    }

    #[test]
    fn upsert_json_keys_updates_and_tombstones() {
        let encoder = SinkEncoder::new(9, "s", &relation(), &config(&[])).unwrap();
        let out = encoder.encode(&changes(vec![(-1, 1, "LOADING"), (1, 1, "DEPARTED"), (-1, 2, "PLANNED")]), 4, 0).unwrap();
        let got: Vec<_> = out.iter().map(|m| (text(&m.key), text(&m.value))).collect();
        assert_eq!(
            got,
            vec![(Some(r#"{"id":1}"#.into()), Some(r#"{"id":1,"status":"DEPARTED"}"#.into())), (Some(r#"{"id":2}"#.into()), None),]
        );
        assert_eq!(decode_outbox(9, &encode_outbox(&out)).unwrap(), out);
    }

    #[test]
    fn debezium_json_has_before_after_and_the_tick() {
        let encoder = SinkEncoder::new(9, "s", &relation(), &config(&[("format", "debezium-json")])).unwrap();
        let out = encoder.encode(&changes(vec![(-1, 1, "LOADING"), (1, 1, "DEPARTED")]), 4, 2_000_000).unwrap();
        let v: Value = serde_json::from_slice(out[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(v["op"], "u");
        assert_eq!(v["before"]["status"], "LOADING");
        assert_eq!(v["after"]["status"], "DEPARTED");
        assert_eq!(v["source"]["tick"], 4);
        assert_eq!(v["ts_ms"], 2000);
    }

    #[test]
    fn rejects_bad_options() {
        let rel = relation();
        let bad_key = SinkEncoder::new(9, "s", &rel, &config(&[("key", "nope")]));
        assert!(matches!(bad_key, Err(SinkError::UnknownColumn(c)) if c == "nope"));
        let keyless = Relation { primary_key: vec![], ..rel };
        assert!(SinkEncoder::new(9, "s", &keyless, &config(&[])).is_err());
        assert!(SinkEncoder::new(9, "s", &keyless, &config(&[("format", "debezium-json")])).is_ok());
        let no_brokers = WithOptions::new([("connector".to_string(), "kafka".to_string()), ("topic".to_string(), "t".to_string())]);
        assert_eq!(SinkConfig::parse(&no_brokers).unwrap_err().option(), "brokers");
    }
}
