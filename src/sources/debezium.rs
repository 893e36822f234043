//! Debezium change events: decode JSON records into events, markers and tombstones.
//!
//! [`decode`] reads one Kafka record value (or one JSON line) as Kafka Connect's `JsonConverter`
//! writes it, with or without the `{"schema": ..., "payload": ...}` envelope. It understands
//! data change events (ops `c`, `u`, `d`, `r`), tombstones, and the records of the transaction
//! metadata topic (`BEGIN` / `END`). It never panics on input: anything it cannot make sense of
//! is a [`DecodeError`] that carries whatever could still be read (table, transaction), so the
//! transaction assembler can count the event and dead-letter it.
//!
//! Two transaction identities appear in Postgres events and must not be confused:
//! `source.txId` is the server's transaction number (`555`), while `transaction.id` is the
//! string Debezium uses for the transaction metadata topic (`"555:24023128"`, txId and LSN).
//! Markers on the metadata topic carry `transaction.id`, never `source.txId`. Postgres puts
//! each record's own LSN in `transaction.id`, so the assembler groups by its txId part (see
//! the `txn_id` module); events keep the id as written, with `source.connector`.
//!
//! The row images of an event stay JSON here; the `row_image` module converts them to Arrow.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde_json::{Map, Value};

/// One decoded record of a Debezium source.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A row change of one table.
    Change(ChangeEvent),
    /// A Kafka tombstone (null value): Debezium follows each delete with one so that log
    /// compaction can drop the key. The delete event itself carries the change.
    Tombstone,
    /// Start of a transaction on the transaction metadata topic.
    TxnBegin { id: String },
    /// End of a transaction: how many change events it produced, in total and per table
    /// (`"schema.table"` for Postgres).
    TxnEnd { id: String, event_count: u64, data_collections: Vec<(String, u64)> },
}

/// The kind of row change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeOp {
    /// `c`: INSERT; the key did not exist just before.
    Create,
    /// `u`: UPDATE.
    Update,
    /// `d`: DELETE; `before` holds at least the key columns.
    Delete,
    /// `r`: a row read by a snapshot.
    Read,
    /// `t`: TRUNCATE; every row of the table is removed (no row images).
    Truncate,
}

/// Where an event stands with respect to the connector's snapshot (`source.snapshot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotPhase {
    /// Streamed from the log (`"false"` or absent).
    Streaming,
    /// Read by the initial snapshot (`"true"`, `"first"`, `"first_in_data_collection"`, ...).
    Snapshot,
    /// The last record of the initial snapshot (`"last"`).
    Last,
    /// Read by an incremental (signal-driven) snapshot chunk (`"incremental"`).
    Incremental,
}

/// A decoded data change event.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// `"schema.table"` from the source block (`"db.table"` for connectors without schemas).
    pub collection: String,
    pub op: ChangeOp,
    pub before: Option<Map<String, Value>>,
    pub after: Option<Map<String, Value>>,
    /// `transaction.id`, matching the `id` of the metadata topic's BEGIN/END records.
    pub txn_id: Option<String>,
    /// `transaction.total_order`: 1-based position of the event in its transaction.
    pub total_order: Option<u64>,
    /// `transaction.data_collection_order`: 1-based position among the transaction's events
    /// of the same table.
    pub data_collection_order: Option<u64>,
    /// `source.txId`: the server's transaction number (not `transaction.id`).
    pub source_tx_id: Option<i64>,
    /// `source.connector` (`postgresql`, `mysql`, ...): it says how to read `transaction.id`.
    pub connector: Option<String>,
    /// `source.lsn`.
    pub lsn: Option<i64>,
    /// `source.ts_ms` (commit time at the server), or the envelope's `ts_ms` if absent.
    pub ts_ms: Option<i64>,
    pub snapshot: SnapshotPhase,
    /// Column types from the envelope schema, if the record had one. Shared between the
    /// events of one schema, since the envelope repeats it on every record.
    pub field_types: Option<Arc<FieldTypes>>,
}

/// Per-column types of a table's row images, from the envelope schema: column name -> type.
pub type FieldTypes = BTreeMap<String, FieldType>;

/// A Kafka Connect field type with its Debezium semantic name, e.g. `int64` named
/// `io.debezium.time.MicroTimestamp`, or `bytes` named `org.apache.kafka.connect.data.Decimal`
/// with parameter `scale`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldType {
    /// `int8` .. `int64`, `float32`, `float64`, `boolean`, `string`, `bytes`, `array`, `struct`, ...
    pub connect_type: String,
    /// Semantic type name, if any.
    pub name: Option<String>,
    /// Schema parameters (all values as strings, as Connect writes them).
    pub parameters: BTreeMap<String, String>,
    /// Element type of an `array`.
    pub items: Option<Box<FieldType>>,
}

/// What could still be read from a record that failed to decode, so that it can be counted in
/// its transaction and attributed to its table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventContext {
    pub collection: Option<String>,
    pub txn_id: Option<String>,
    pub total_order: Option<u64>,
    pub data_collection_order: Option<u64>,
    pub source_tx_id: Option<i64>,
    /// `source.connector`.
    pub connector: Option<String>,
    /// True when the record was part of a snapshot (it belongs to no streamed transaction).
    pub snapshot: bool,
}

/// Why a record could not be decoded. The message is the dead letter's reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not a JSON document at all (garbage bytes, truncated record): nothing can be read.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not a well-formed Debezium record.
    #[error("{reason}")]
    Invalid { reason: String, context: Box<EventContext> },
    /// A well-formed event of a kind Velocity does not apply (truncate, logical messages).
    #[error("{what} events are not supported")]
    Unsupported { what: String, context: Box<EventContext> },
}

impl DecodeError {
    /// What could be read of the record before it failed (nothing for [`DecodeError::NotJson`]).
    pub fn context(&self) -> Option<&EventContext> {
        match self {
            DecodeError::NotJson(_) => None,
            DecodeError::Invalid { context, .. } | DecodeError::Unsupported { context, .. } => Some(context.as_ref()),
        }
    }
}

/// Decode one record value; `None` or an empty value is a Kafka tombstone.
///
/// Prefer a long-lived [`Decoder`] on hot paths: it parses each distinct envelope schema once.
pub fn decode(value: Option<&[u8]>) -> Result<Record, DecodeError> {
    Decoder::new().decode(value)
}

/// How many distinct envelope schemas a [`Decoder`] remembers (one per table and schema version).
const SCHEMA_CACHE_SIZE: usize = 32;

/// Decodes records, remembering the column types of recently seen envelope schemas.
///
/// `JsonConverter` repeats the full schema (often more than half of the bytes) on every record;
/// parsing it once per distinct schema instead of once per record is most of the decode cost.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Raw schema bytes -> column types, most recently inserted last.
    schemas: Vec<(Vec<u8>, Option<Arc<FieldTypes>>)>,
}

impl Decoder {
    /// A decoder with an empty schema cache.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Decode one record value; `None` or an empty value is a Kafka tombstone.
    pub fn decode(&mut self, value: Option<&[u8]>) -> Result<Record, DecodeError> {
        let Some(bytes) = value else {
            return Ok(Record::Tombstone);
        };
        let bytes = bytes.trim_ascii();
        if bytes.is_empty() || bytes == b"null" {
            return Ok(Record::Tombstone);
        }
        // Fast paths; anything unexpected takes the general path below, which reports errors.
        let (field_types, payload) = match self.envelope(bytes) {
            Some((field_types, payload)) => (field_types, payload),
            None => (None, bytes),
        };
        if let Ok(fast) = serde_json::from_slice::<FastPayload<'_>>(payload)
            && let Some(event) = fast.into_event(&field_types)
        {
            return Ok(Record::Change(event));
        }
        if payload.len() < bytes.len()
            && let Ok(payload) = serde_json::from_slice::<Value>(payload)
        {
            if payload.is_null() {
                return Ok(Record::Tombstone);
            }
            return decode_payload(payload, field_types);
        }
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        match doc {
            Value::Object(mut map) if is_envelope(&map) => {
                let schema = map.remove("schema").unwrap_or(Value::Null);
                let payload = map.remove("payload").unwrap_or(Value::Null);
                if payload.is_null() {
                    return Ok(Record::Tombstone);
                }
                decode_payload(payload, parse_field_types(&schema).map(Arc::new))
            }
            doc @ Value::Object(_) => decode_payload(doc, None),
            other => Err(invalid(format!("expected a JSON object, got {}", show(&other)), EventContext::default())),
        }
    }

    /// `{"schema": S, "payload": P}` in the order `JsonConverter` writes it: the column types
    /// of `S` and the bytes of `P`, found without parsing `S` when it was seen before (it is
    /// the same on every record of a table). `None` for any other shape.
    fn envelope<'a>(&mut self, bytes: &'a [u8]) -> Option<(Option<Arc<FieldTypes>>, &'a [u8])> {
        let i = expect(bytes, skip_ws(bytes, 0), b"{")?;
        let i = expect(bytes, skip_ws(bytes, i), b"\"schema\"")?;
        let schema_start = skip_ws(bytes, expect(bytes, skip_ws(bytes, i), b":")?);
        let rest = &bytes[schema_start..];
        // A cached schema is a complete JSON value, so if the record starts with it, it is it.
        let (schema_end, field_types) = match self.schemas.iter().rev().find(|(raw, _)| rest.starts_with(raw)) {
            Some((raw, types)) => (schema_start + raw.len(), types.clone()),
            None => {
                let end = skip_value(bytes, schema_start)?;
                let schema: Value = serde_json::from_slice(&bytes[schema_start..end]).ok()?;
                let types = parse_field_types(&schema).map(Arc::new);
                if self.schemas.len() == SCHEMA_CACHE_SIZE {
                    self.schemas.remove(0);
                }
                self.schemas.push((bytes[schema_start..end].to_vec(), types.clone()));
                (end, types)
            }
        };
        let i = expect(bytes, skip_ws(bytes, schema_end), b",")?;
        let i = expect(bytes, skip_ws(bytes, i), b"\"payload\"")?;
        let payload_start = skip_ws(bytes, expect(bytes, skip_ws(bytes, i), b":")?);
        // The payload runs to the closing brace; the JSON parser checks it is one value.
        let payload = bytes.get(payload_start..)?.strip_suffix(b"}")?;
        Some((field_types, payload))
    }
}

fn is_envelope(map: &Map<String, Value>) -> bool {
    map.contains_key("payload") && map.contains_key("schema") && !map.contains_key("op") && !map.contains_key("status")
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn expect(bytes: &[u8], i: usize, token: &[u8]) -> Option<usize> {
    bytes.get(i..)?.starts_with(token).then_some(i + token.len())
}

/// End of the JSON value starting at `i`: balanced brackets, strings with escapes, or a scalar.
fn skip_value(bytes: &[u8], i: usize) -> Option<usize> {
    match *bytes.get(i)? {
        b'"' => skip_string(bytes, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *bytes.get(j)? {
                    b'"' => {
                        j = skip_string(bytes, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let end =
                bytes[i..].iter().position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace()).map_or(bytes.len(), |n| i + n);
            (end > i).then_some(end)
        }
    }
}

/// End of the JSON string whose opening quote is at `i`.
fn skip_string(bytes: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match *bytes.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

fn invalid(reason: String, context: EventContext) -> DecodeError {
    DecodeError::Invalid { reason, context: Box::new(context) }
}

/// A JSON value for an error message, shortened so that one bad blob cannot flood the log.
pub(super) fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 64 {
        return s;
    }
    let mut end = 60;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// An integer that Connect may write as a number or as a string (as the docs' examples do).
pub(super) fn lenient_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn lenient_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A transaction id: a string, though some connectors write a bare number.
fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn decode_payload(payload: Value, field_types: Option<Arc<FieldTypes>>) -> Result<Record, DecodeError> {
    let Value::Object(mut p) = payload else {
        return Err(invalid(format!("payload is not a JSON object: {}", show(&payload)), EventContext::default()));
    };
    if !p.contains_key("op") && p.contains_key("status") {
        return decode_marker(&p);
    }
    let context = event_context(&p);
    let op = match p.get("op") {
        Some(Value::String(op)) => match op.as_str() {
            "c" => ChangeOp::Create,
            "u" => ChangeOp::Update,
            "d" => ChangeOp::Delete,
            "r" => ChangeOp::Read,
            "t" => ChangeOp::Truncate,
            "m" => return Err(DecodeError::Unsupported { what: "logical decoding message".into(), context: Box::new(context) }),
            other => return Err(invalid(format!("unknown op \"{other}\""), context)),
        },
        Some(other) => return Err(invalid(format!("field \"op\": expected a string, got {}", show(other)), context)),
        None => return Err(invalid("no \"op\" field: not a Debezium change event".into(), context)),
    };
    let source = match p.get("source") {
        Some(Value::Object(source)) => source,
        Some(other) => {
            return Err(invalid(format!("field \"source\": expected an object, got {}", show(other)), context));
        }
        None => return Err(invalid("no \"source\" block: cannot tell which table changed".into(), context)),
    };
    let Some(collection) = context.collection.clone() else {
        return Err(invalid("source block names no table".into(), context));
    };
    let (txn_id, total_order, data_collection_order) = match p.get("transaction") {
        None | Some(Value::Null) => (None, None, None),
        Some(Value::Object(t)) => match t.get("id").and_then(id_string) {
            Some(id) => (Some(id), t.get("total_order").and_then(lenient_u64), t.get("data_collection_order").and_then(lenient_u64)),
            None => return Err(invalid("transaction block has no \"id\"".into(), context)),
        },
        Some(other) => {
            return Err(invalid(format!("field \"transaction\": expected an object, got {}", show(other)), context));
        }
    };
    let source_tx_id = source.get("txId").and_then(lenient_i64);
    let connector = context.connector.clone();
    let lsn = source.get("lsn").and_then(lenient_i64);
    let ts_ms = source.get("ts_ms").and_then(lenient_i64).or_else(|| p.get("ts_ms").and_then(lenient_i64));
    let mut snapshot = snapshot_phase(source.get("snapshot"));
    if op == ChangeOp::Read && snapshot == SnapshotPhase::Streaming {
        snapshot = SnapshotPhase::Snapshot;
    }
    let before = take_image(&mut p, "before", &context)?;
    let after = take_image(&mut p, "after", &context)?;
    match op {
        ChangeOp::Create | ChangeOp::Update | ChangeOp::Read if after.is_none() => {
            return Err(invalid(format!("{op:?} event without an \"after\" row image"), context));
        }
        ChangeOp::Delete if before.is_none() => {
            return Err(invalid("delete event without a \"before\" row image: cannot tell which key to delete".into(), context));
        }
        _ => {}
    }
    Ok(Record::Change(ChangeEvent {
        collection,
        op,
        before,
        after,
        txn_id,
        total_order,
        data_collection_order,
        source_tx_id,
        connector,
        lsn,
        ts_ms,
        snapshot,
        field_types,
    }))
}

/// Read what identifies an event's table and transaction, tolerating any malformation, so that
/// even an event that fails to decode can be counted in its transaction.
fn event_context(p: &Map<String, Value>) -> EventContext {
    let source = p.get("source").and_then(Value::as_object);
    let text = |key: &str| source.and_then(|s| s.get(key)).and_then(Value::as_str).filter(|s| !s.is_empty());
    let collection = text("table").and_then(|table| text("schema").or_else(|| text("db")).map(|ns| format!("{ns}.{table}")));
    let transaction = p.get("transaction").and_then(Value::as_object);
    let snapshot = snapshot_phase(source.and_then(|s| s.get("snapshot"))) != SnapshotPhase::Streaming
        || p.get("op").and_then(Value::as_str) == Some("r");
    EventContext {
        collection,
        txn_id: transaction.and_then(|t| t.get("id")).and_then(id_string),
        total_order: transaction.and_then(|t| t.get("total_order")).and_then(lenient_u64),
        data_collection_order: transaction.and_then(|t| t.get("data_collection_order")).and_then(lenient_u64),
        source_tx_id: source.and_then(|s| s.get("txId")).and_then(lenient_i64),
        connector: text("connector").map(str::to_string),
        snapshot,
    }
}

fn snapshot_phase(v: Option<&Value>) -> SnapshotPhase {
    match v {
        Some(Value::String(s)) => snapshot_phase_of(s),
        Some(Value::Bool(true)) => SnapshotPhase::Snapshot,
        _ => SnapshotPhase::Streaming,
    }
}

fn snapshot_phase_of(s: &str) -> SnapshotPhase {
    match s {
        "false" | "" => SnapshotPhase::Streaming,
        "last" => SnapshotPhase::Last,
        "incremental" => SnapshotPhase::Incremental,
        _ => SnapshotPhase::Snapshot,
    }
}

/// The usual shape of a change event payload, read without building JSON values for the
/// source and transaction blocks (most of a payload's keys). Anything else, including every
/// malformed record, goes to [`decode_payload`], the one place that explains errors.
#[derive(serde::Deserialize)]
struct FastPayload<'a> {
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    before: Option<Map<String, Value>>,
    after: Option<Map<String, Value>>,
    #[serde(borrow)]
    source: Option<FastSource<'a>>,
    #[serde(borrow)]
    transaction: Option<FastTransaction<'a>>,
    ts_ms: Option<i64>,
    status: Option<IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct FastSource<'a> {
    #[serde(borrow)]
    connector: Option<Cow<'a, str>>,
    #[serde(borrow)]
    db: Option<Cow<'a, str>>,
    #[serde(borrow)]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow)]
    table: Option<Cow<'a, str>>,
    #[serde(rename = "txId")]
    tx_id: Option<i64>,
    lsn: Option<i64>,
    ts_ms: Option<i64>,
    #[serde(borrow)]
    snapshot: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct FastTransaction<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    total_order: Option<u64>,
    data_collection_order: Option<u64>,
}

impl FastPayload<'_> {
    /// The event, if this is a well-formed change event; `None` sends it to the general path.
    fn into_event(self, field_types: &Option<Arc<FieldTypes>>) -> Option<ChangeEvent> {
        if self.status.is_some() {
            return None;
        }
        let op = match self.op?.as_ref() {
            "c" => ChangeOp::Create,
            "u" => ChangeOp::Update,
            "d" => ChangeOp::Delete,
            "r" => ChangeOp::Read,
            _ => return None,
        };
        match op {
            ChangeOp::Delete if self.before.is_none() => return None,
            ChangeOp::Create | ChangeOp::Update | ChangeOp::Read if self.after.is_none() => return None,
            _ => {}
        }
        let source = self.source?;
        let table = source.table.filter(|t| !t.is_empty())?;
        let namespace = source.schema.filter(|s| !s.is_empty()).or(source.db.filter(|d| !d.is_empty()))?;
        let (txn_id, total_order, data_collection_order) = match self.transaction {
            Some(t) if t.id.is_empty() => return None,
            Some(t) => (Some(t.id.into_owned()), t.total_order, t.data_collection_order),
            None => (None, None, None),
        };
        let mut snapshot = source.snapshot.as_deref().map_or(SnapshotPhase::Streaming, snapshot_phase_of);
        if op == ChangeOp::Read && snapshot == SnapshotPhase::Streaming {
            snapshot = SnapshotPhase::Snapshot;
        }
        Some(ChangeEvent {
            collection: format!("{namespace}.{table}"),
            op,
            before: self.before,
            after: self.after,
            txn_id,
            total_order,
            data_collection_order,
            source_tx_id: source.tx_id,
            connector: source.connector.map(Cow::into_owned),
            lsn: source.lsn,
            ts_ms: source.ts_ms.or(self.ts_ms),
            snapshot,
            field_types: field_types.clone(),
        })
    }
}

fn take_image(p: &mut Map<String, Value>, key: &str, context: &EventContext) -> Result<Option<Map<String, Value>>, DecodeError> {
    match p.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(row)) => Ok(Some(row)),
        Some(other) => Err(invalid(format!("field \"{key}\": expected an object or null, got {}", show(&other)), context.clone())),
    }
}

fn decode_marker(p: &Map<String, Value>) -> Result<Record, DecodeError> {
    let id = p.get("id").and_then(id_string);
    let context = EventContext { txn_id: id.clone(), ..EventContext::default() };
    let Some(id) = id else {
        return Err(invalid("transaction marker without an \"id\"".into(), context));
    };
    match p.get("status").and_then(Value::as_str) {
        Some("BEGIN") => Ok(Record::TxnBegin { id }),
        Some("END") => {
            let Some(event_count) = p.get("event_count").and_then(lenient_u64) else {
                return Err(invalid(format!("END marker of transaction {id} without an \"event_count\""), context));
            };
            let mut data_collections = Vec::new();
            match p.get("data_collections") {
                None | Some(Value::Null) => {}
                Some(Value::Array(entries)) => {
                    for entry in entries {
                        let name = entry.get("data_collection").and_then(Value::as_str);
                        let count = entry.get("event_count").and_then(lenient_u64);
                        match (name, count) {
                            (Some(name), Some(count)) => data_collections.push((name.to_string(), count)),
                            _ => {
                                return Err(invalid(
                                    format!("END marker of transaction {id}: malformed data_collections entry {}", show(entry)),
                                    context,
                                ));
                            }
                        }
                    }
                }
                Some(other) => {
                    return Err(invalid(
                        format!("END marker of transaction {id}: data_collections is not an array: {}", show(other)),
                        context,
                    ));
                }
            }
            Ok(Record::TxnEnd { id, event_count, data_collections })
        }
        Some(other) => Err(invalid(format!("unknown transaction status \"{other}\""), context)),
        None => Err(invalid("transaction marker without a string \"status\"".into(), context)),
    }
}

/// Column types of the row images (`after`, else `before`) described by an envelope schema.
/// A schema of another shape yields `None`: values are then read by the columns' Arrow types.
fn parse_field_types(schema: &Value) -> Option<FieldTypes> {
    let fields = schema.get("fields")?.as_array()?;
    let image =
        ["after", "before"].iter().find_map(|name| fields.iter().find(|f| f.get("field").and_then(Value::as_str) == Some(*name)))?;
    let columns = image.get("fields")?.as_array()?;
    Some(columns.iter().filter_map(|c| Some((c.get("field")?.as_str()?.to_string(), parse_field_type(c)))).collect())
}

fn parse_field_type(v: &Value) -> FieldType {
    let parameters = v
        .get("parameters")
        .and_then(Value::as_object)
        .map(|params| params.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))).collect())
        .unwrap_or_default();
    FieldType {
        connect_type: v.get("type").and_then(Value::as_str).unwrap_or_default().to_string(),
        name: v.get("name").and_then(Value::as_str).map(str::to_string),
        parameters,
        items: v.get("items").map(|items| Box::new(parse_field_type(items))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(value: &Value) -> ChangeEvent {
        match decode(Some(value.to_string().as_bytes())) {
            Ok(Record::Change(e)) => e,
            other => panic!("expected a change event, got {other:?}"),
        }
    }

    fn source() -> Value {
        json!({"version": "2.5.0.Final", "connector": "postgresql", "name": "fulfillment", "ts_ms": 1559033904863i64,
               "snapshot": "false", "db": "postgres", "sequence": "[\"24023119\",\"24023128\"]", "schema": "public",
               "table": "shipments", "txId": 555, "lsn": 24023128, "xmin": null})
    }

    /// Envelope schema of public.shipments with Debezium's semantic types.
    fn shipments_schema() -> Value {
        let row = json!({"type": "struct", "optional": true, "name": "fulfillment.public.shipments.Value", "fields": [
            {"type": "int64", "optional": false, "field": "id"},
            {"type": "bytes", "optional": true, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
             "parameters": {"scale": "2", "connect.decimal.precision": "10"}, "field": "weight"},
            {"type": "int64", "optional": true, "name": "io.debezium.time.MicroTimestamp", "version": 1, "field": "shipped_at"},
            {"type": "int32", "optional": true, "name": "io.debezium.time.Date", "version": 1, "field": "due"},
            {"type": "array", "optional": true, "items": {"type": "string"}, "field": "tags"}
        ]});
        let mut before = row.clone();
        before["field"] = json!("before");
        let mut after = row;
        after["field"] = json!("after");
        json!({"type": "struct", "optional": false, "name": "fulfillment.public.shipments.Envelope", "fields": [
            before, after,
            {"type": "struct", "optional": false, "name": "io.debezium.connector.postgresql.Source", "field": "source",
             "fields": [{"type": "string", "optional": false, "field": "version"}]},
            {"type": "string", "optional": false, "field": "op"},
            {"type": "int64", "optional": true, "field": "ts_ms"},
            {"type": "struct", "optional": true, "name": "event.block", "field": "transaction", "fields": [
                {"type": "string", "optional": false, "field": "id"},
                {"type": "int64", "optional": false, "field": "total_order"},
                {"type": "int64", "optional": false, "field": "data_collection_order"}]}
        ]})
    }

    #[test]
    fn plain_payload_with_source_and_transaction_blocks() {
        let e = change(&json!({
            "before": null,
            "after": {"id": 1, "weight": "12.50"},
            "source": source(),
            "op": "c",
            "ts_ms": 1559033904999i64,
            "transaction": {"id": "555:24023128", "total_order": 1, "data_collection_order": "1"}
        }));
        assert_eq!(e.collection, "public.shipments");
        assert_eq!(e.op, ChangeOp::Create);
        assert_eq!(e.before, None);
        assert_eq!(e.after.as_ref().and_then(|a| a.get("id")), Some(&json!(1)));
        // transaction.id and source.txId are different identities.
        assert_eq!(e.txn_id.as_deref(), Some("555:24023128"));
        assert_eq!(e.source_tx_id, Some(555));
        assert_eq!((e.total_order, e.data_collection_order), (Some(1), Some(1)));
        assert_eq!(e.lsn, Some(24023128));
        assert_eq!(e.ts_ms, Some(1559033904863));
        assert_eq!(e.snapshot, SnapshotPhase::Streaming);
        assert_eq!(e.field_types, None);
    }

    #[test]
    fn envelope_payload_carries_field_types() {
        let payload = json!({"before": null, "after": {"id": 7, "weight": "BNI=", "shipped_at": 1700000000123456i64},
                             "source": source(), "op": "c", "ts_ms": 1, "transaction": null});
        // As JsonConverter writes it: schema first (json! would sort the keys).
        let record = format!("{{\"schema\":{},\"payload\":{}}}", shipments_schema(), payload);
        let mut decoder = Decoder::new();
        for _ in 0..2 {
            // The second decode takes the schema from the cache.
            let Ok(Record::Change(e)) = decoder.decode(Some(record.as_bytes())) else { panic!() };
            let types = e.field_types.expect("field types");
            assert_eq!(types["weight"].name.as_deref(), Some("org.apache.kafka.connect.data.Decimal"));
            assert_eq!(types["weight"].parameters["scale"], "2");
            assert_eq!(types["shipped_at"].name.as_deref(), Some("io.debezium.time.MicroTimestamp"));
            assert_eq!(types["tags"].items.as_ref().map(|i| i.connect_type.as_str()), Some("string"));
            assert_eq!(e.txn_id, None);
        }
        assert_eq!(decoder.schemas.len(), 1);
        // Pretty-printed, and with the keys in the other order: the general path.
        let reordered = json!({"schema": shipments_schema(), "payload": payload}).to_string();
        assert!(reordered.starts_with("{\"payload\""));
        let Ok(Record::Change(e)) = decode(Some(reordered.as_bytes())) else { panic!() };
        assert!(e.field_types.is_some());
        let pretty = serde_json::to_string_pretty(&json!({"schema": shipments_schema(), "payload": payload})).unwrap();
        let Ok(Record::Change(e)) = decode(Some(pretty.as_bytes())) else { panic!() };
        assert!(e.field_types.is_some());
    }

    #[test]
    fn every_op() {
        let row = json!({"id": 1});
        let base =
            |op: &str, before: Value, after: Value| json!({"before": before, "after": after, "source": source(), "op": op, "ts_ms": 1});
        assert_eq!(change(&base("c", Value::Null, row.clone())).op, ChangeOp::Create);
        let u = change(&base("u", row.clone(), row.clone()));
        assert_eq!(u.op, ChangeOp::Update);
        assert!(u.before.is_some() && u.after.is_some());
        let d = change(&base("d", row.clone(), Value::Null));
        assert_eq!((d.op, d.after.is_none()), (ChangeOp::Delete, true));
        let mut read = base("r", Value::Null, row.clone());
        read["source"]["snapshot"] = json!("last");
        let r = change(&read);
        assert_eq!((r.op, r.snapshot), (ChangeOp::Read, SnapshotPhase::Last));
        read["source"]["snapshot"] = json!("true");
        assert_eq!(change(&read).snapshot, SnapshotPhase::Snapshot);

        let mut truncate = base("t", Value::Null, Value::Null);
        truncate["transaction"] = json!({"id": "600:1", "total_order": 1, "data_collection_order": 1});
        let t = change(&truncate);
        assert_eq!((t.op, t.collection.as_str(), t.txn_id.as_deref()), (ChangeOp::Truncate, "public.shipments", Some("600:1")));
        assert!(t.before.is_none() && t.after.is_none());

        let err = decode(Some(base("x", Value::Null, row.clone()).to_string().as_bytes())).unwrap_err();
        assert_eq!(err.to_string(), "unknown op \"x\"");
        let err = decode(Some(base("c", Value::Null, Value::Null).to_string().as_bytes())).unwrap_err();
        assert!(err.to_string().contains("without an \"after\""), "{err}");
        let err = decode(Some(base("d", Value::Null, Value::Null).to_string().as_bytes())).unwrap_err();
        assert!(err.to_string().contains("without a \"before\""), "{err}");
        let err = decode(Some(base("c", Value::Null, json!([1])).to_string().as_bytes())).unwrap_err();
        assert!(err.to_string().contains("field \"after\": expected an object"), "{err}");
    }

    #[test]
    fn fast_and_general_paths_agree() {
        let samples = [
            json!({"before": null, "after": {"id": 1}, "source": source(), "op": "c", "ts_ms": 5,
                   "transaction": {"id": "555:1", "total_order": 2, "data_collection_order": 1}}),
            json!({"before": {"id": 1}, "after": null, "source": source(), "op": "d"}),
            json!({"after": {"id": 1}, "op": "r", "source": {"db": "inventory", "table": "t", "snapshot": "last"}}),
            json!({"after": {"id": 1}, "op": "u", "source": {"schema": "s", "table": "t", "snapshot": true, "txId": "7"}}),
        ];
        for sample in samples {
            let payload = sample.as_object().unwrap().clone();
            let fast = serde_json::from_str::<FastPayload<'_>>(&sample.to_string()).ok().and_then(|f| f.into_event(&None));
            let general = decode_payload(Value::Object(payload), None).unwrap();
            match fast {
                Some(fast) => assert_eq!(Record::Change(fast), general),
                // Shapes the fast path does not take (a boolean snapshot flag, a string txId).
                None => assert!(sample["source"]["snapshot"].is_boolean()),
            }
        }
    }

    #[test]
    fn mysql_style_source_without_schema_uses_db() {
        let e = change(&json!({"after": {"id": 1}, "op": "c",
                               "source": {"db": "inventory", "table": "customers", "snapshot": "false"}}));
        assert_eq!(e.collection, "inventory.customers");
    }

    #[test]
    fn tombstones() {
        assert_eq!(decode(None), Ok(Record::Tombstone));
        assert_eq!(decode(Some(b"")), Ok(Record::Tombstone));
        assert_eq!(decode(Some(b"  \n")), Ok(Record::Tombstone));
        assert_eq!(decode(Some(b"null")), Ok(Record::Tombstone));
        assert_eq!(decode(Some(br#"{"schema": null, "payload": null}"#)), Ok(Record::Tombstone));
    }

    #[test]
    fn transaction_markers_plain_and_enveloped() {
        assert_eq!(
            decode(Some(br#"{"status":"BEGIN","id":"571:53195829","event_count":null,"data_collections":null,"ts_ms":1}"#)),
            Ok(Record::TxnBegin { id: "571:53195829".into() })
        );
        let end = json!({"status": "END", "id": "571:53195832", "event_count": 3, "ts_ms": 2,
                         "data_collections": [{"data_collection": "public.shipments", "event_count": 2},
                                              {"data_collection": "public.orders", "event_count": "1"}]});
        let expected = Record::TxnEnd {
            id: "571:53195832".into(),
            event_count: 3,
            data_collections: vec![("public.shipments".into(), 2), ("public.orders".into(), 1)],
        };
        assert_eq!(decode(Some(end.to_string().as_bytes())), Ok(expected.clone()));
        let schema = json!({"type": "struct", "name": "io.debezium.connector.common.TransactionMetadataValue", "fields": [
            {"type": "string", "field": "status"}, {"type": "string", "field": "id"}]});
        let enveloped = json!({"schema": schema, "payload": end});
        assert_eq!(decode(Some(enveloped.to_string().as_bytes())), Ok(expected));

        let err = decode(Some(br#"{"status":"END","id":"9:1"}"#)).unwrap_err();
        assert_eq!(err.context().and_then(|c| c.txn_id.as_deref()), Some("9:1"));
        assert!(decode(Some(br#"{"status":"COMMIT","id":"9:1"}"#)).is_err());
    }

    #[test]
    fn garbage_and_truncated_records() {
        assert!(matches!(decode(Some(b"\x00\x01garbage")), Err(DecodeError::NotJson(_))));
        let full = json!({"after": {"id": 1}, "source": source(), "op": "c"}).to_string();
        assert!(matches!(decode(Some(&full.as_bytes()[..full.len() / 2])), Err(DecodeError::NotJson(_))));
        let truncated_envelope = format!("{{\"schema\":{},\"payload\":{{\"op\":", shipments_schema());
        assert!(matches!(decode(Some(truncated_envelope.as_bytes())), Err(DecodeError::NotJson(_))));
        let err = decode(Some(b"[1,2]")).unwrap_err();
        assert!(err.to_string().contains("expected a JSON object"), "{err}");
        let err = decode(Some(json!({"op": 5, "source": source()}).to_string().as_bytes())).unwrap_err();
        assert_eq!(err.to_string(), "field \"op\": expected a string, got 5");
        assert_eq!(err.context().and_then(|c| c.source_tx_id), Some(555));
        let err = decode(Some(br#"{"op":"c","after":{"id":1}}"#)).unwrap_err();
        assert!(err.to_string().contains("no \"source\" block"), "{err}");
    }

    #[test]
    fn envelope_fast_path_and_its_fallbacks() {
        let mut decoder = Decoder::new();
        let payload = json!({"after": {"id": 1}, "source": source(), "op": "c"});
        let schema = json!({"fields": [{"field": "after", "fields": [{"field": "id", "type": "int64", "name": "x.Y"}]}]});
        // Strings in the schema that look like structure, and whitespace around the parts.
        let tricky = json!({"doc": "}\"{[", "fields": schema["fields"].clone()});
        let record = format!(" {{ \"schema\" : {tricky} ,\n \"payload\" : {payload} }} ");
        for _ in 0..2 {
            let Ok(Record::Change(e)) = decoder.decode(Some(record.as_bytes())) else { panic!() };
            assert_eq!(e.field_types.unwrap()["id"].name.as_deref(), Some("x.Y"));
        }
        assert_eq!(decoder.schemas.len(), 1);
        // Trailing fields after the payload: not the fast shape, decoded by the general path.
        let extra = format!("{{\"schema\":{schema},\"payload\":{payload},\"extra\":1}}");
        assert!(matches!(decoder.decode(Some(extra.as_bytes())), Ok(Record::Change(_))));
        // A cached schema followed by a truncated payload is still an error.
        let truncated = format!("{{\"schema\":{tricky},\"payload\":{{\"op\":\"c\"");
        assert!(matches!(decoder.decode(Some(truncated.as_bytes())), Err(DecodeError::NotJson(_))));
        let mut fresh = Decoder::new();
        assert!(matches!(fresh.decode(Some(truncated.as_bytes())), Err(DecodeError::NotJson(_))));
        let nulls = br#"{"schema":null,"payload":null}"#;
        assert_eq!(decoder.decode(Some(nulls)), Ok(Record::Tombstone));
    }
}
