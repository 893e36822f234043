//! Net change: a transaction's events of one table, reduced to one change per primary key.
//!
//! Per table and primary key, the last event (in `total_order`, else arrival order) decides:
//! the `after` row of a create, read or update is an upsert; a delete (key from `before`) is a
//! delete. So DELETE+INSERT of a key becomes an upsert of the final row, and many updates
//! become one. A key whose first event in the transaction was an insert (`c`, so it did not
//! exist before) and whose last is a delete vanishes; a key that existed and was updated, then
//! deleted, is a delete. An update whose `before` carries a different key (REPLICA IDENTITY FULL
//! and a changed key) also deletes the old key.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use serde_json::{Map, Value};

use super::Result;
use super::debezium::{ChangeEvent, ChangeOp, FieldTypes};
use super::row_image::rows_to_batch;
use super::txn::UpstreamTable;

/// The net effect of a transaction on one table.
#[derive(Debug, Clone)]
pub struct NetChanges {
    /// Final rows of inserted or updated keys (table schema).
    pub upserts: RecordBatch,
    /// Keys deleted (schema = table schema projected to the primary key).
    pub deletes: RecordBatch,
    /// The table was truncated: every row it had before the transaction is removed, then
    /// `upserts` and `deletes` apply (they hold only what followed the last TRUNCATE).
    pub truncate: bool,
}

impl NetChanges {
    pub fn is_empty(&self) -> bool {
        !self.truncate && self.upserts.num_rows() + self.deletes.num_rows() == 0
    }
}

/// A bound table prepared for net change: its key columns, and an encoder of their values to
/// comparable bytes, to find the events of one key.
pub(super) struct KeyedTable {
    pub(super) collection: String,
    schema: SchemaRef,
    primary_key: Vec<usize>,
    key_schema: SchemaRef,
    keys: RowConverter,
}

impl KeyedTable {
    /// Fails if the key's columns cannot be projected or their types encoded (the caller
    /// checks that the key is not empty and its indices are in range).
    pub(super) fn new(table: UpstreamTable) -> Result<KeyedTable> {
        let key_schema = Arc::new(table.schema.project(&table.primary_key)?);
        let keys = RowConverter::new(key_schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())?;
        Ok(KeyedTable { collection: table.collection, schema: table.schema, primary_key: table.primary_key, key_schema, keys })
    }
}

/// A row image with the column types of its event's envelope.
type RowImage<'a> = (&'a Map<String, Value>, Option<&'a Arc<FieldTypes>>);

/// One step of a key's history within a transaction.
#[derive(Clone, Copy)]
enum Image {
    /// Row `i` of the converted `after` images.
    Upsert(usize),
    /// Row `i` of the converted key images (from `before`).
    Delete(usize),
}

struct Step {
    event: usize,
    image: Image,
    /// A create: the key did not exist before this event.
    insert: bool,
}

/// Net change of one table's events (in order). Returns the changes and the events that could
/// not be converted, as `(index into events, reason)`; those do not take part.
pub(super) fn net_changes(table: &KeyedTable, events: &[&ChangeEvent]) -> (NetChanges, Vec<(usize, String)>) {
    // What came before the last TRUNCATE is gone with it.
    let truncated_at = events.iter().rposition(|e| e.op == ChangeOp::Truncate);
    let (skipped, events) = match truncated_at {
        Some(t) => (t + 1, &events[t + 1..]),
        None => (0, events),
    };
    let (mut changes, mut failed) = net_changes_of_rows(table, events);
    changes.truncate = truncated_at.is_some();
    for (i, _) in &mut failed {
        *i += skipped;
    }
    (changes, failed)
}

/// [`net_changes`] of events without a TRUNCATE.
fn net_changes_of_rows(table: &KeyedTable, events: &[&ChangeEvent]) -> (NetChanges, Vec<(usize, String)>) {
    let mut upserts: Vec<RowImage> = Vec::with_capacity(events.len());
    let mut deletes: Vec<RowImage> = Vec::new();
    // Whether a delete image must convert (a delete) or is only a hint (an update's `before`).
    let mut delete_required: Vec<bool> = Vec::new();
    let mut steps: Vec<Step> = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let ft = e.field_types.as_ref();
        match (e.op, &e.before, &e.after) {
            (ChangeOp::Delete, Some(before), _) => {
                steps.push(Step { event: i, image: Image::Delete(deletes.len()), insert: false });
                deletes.push((before, ft));
                delete_required.push(true);
            }
            (ChangeOp::Create | ChangeOp::Read | ChangeOp::Update, _, Some(after)) => {
                if let (ChangeOp::Update, Some(before)) = (e.op, &e.before)
                    && has_key(table, before)
                {
                    steps.push(Step { event: i, image: Image::Delete(deletes.len()), insert: false });
                    deletes.push((before, ft));
                    delete_required.push(false);
                }
                steps.push(Step { event: i, image: Image::Upsert(upserts.len()), insert: e.op == ChangeOp::Create });
                upserts.push((after, ft));
            }
            // decode() guarantees the images an op needs.
            _ => {}
        }
    }
    let all_key_columns: Vec<usize> = (0..table.key_schema.fields().len()).collect();
    let upsert_rows = convert(&table.schema, &table.primary_key, &upserts);
    let delete_rows = convert(&table.key_schema, &all_key_columns, &deletes);

    let mut failed: Vec<(usize, String)> = Vec::new();
    let mut event_failed = vec![false; events.len()];
    for step in &steps {
        let reason = match step.image {
            Image::Upsert(i) => upsert_rows.failures.get(&i),
            Image::Delete(i) if delete_required[i] => delete_rows.failures.get(&i),
            Image::Delete(_) => None,
        };
        if let Some(reason) = reason
            && !event_failed[step.event]
        {
            event_failed[step.event] = true;
            failed.push((step.event, reason.clone()));
        }
    }

    let key_columns: Vec<ArrayRef> = table.primary_key.iter().map(|&k| upsert_rows.batch.column(k).clone()).collect();
    let keys = (table.keys.convert_columns(&key_columns), table.keys.convert_columns(delete_rows.batch.columns()));
    let (upsert_keys, delete_keys) = match keys {
        (Ok(u), Ok(d)) => (u, d),
        (Err(e), _) | (_, Err(e)) => {
            // Cannot happen for a converter built from this schema; reject rather than panic.
            let reason = format!("cannot encode primary key: {e}");
            let failed = (0..events.len()).map(|i| (i, reason.clone())).collect();
            return (empty_changes(table), failed);
        }
    };

    /// Where a key stands after the transaction's events so far.
    struct KeyState {
        first_was_insert: bool,
        last: Image,
    }
    let mut slots: HashMap<&[u8], usize> = HashMap::with_capacity(steps.len());
    let mut states: Vec<KeyState> = Vec::with_capacity(steps.len());
    for step in steps.iter().filter(|s| !event_failed[s.event]) {
        let (key, image) = match step.image {
            Image::Upsert(i) => match upsert_rows.rows[i] {
                Some(row) => (upsert_keys.row(row).data(), Image::Upsert(row)),
                None => continue,
            },
            Image::Delete(i) => match delete_rows.rows[i] {
                Some(row) => (delete_keys.row(row).data(), Image::Delete(row)),
                None => continue,
            },
        };
        match slots.get(key) {
            Some(&slot) => states[slot].last = image,
            None => {
                slots.insert(key, states.len());
                states.push(KeyState { first_was_insert: step.insert, last: image });
            }
        }
    }
    let mut upsert_take: Vec<u32> = Vec::new();
    let mut delete_take: Vec<u32> = Vec::new();
    for state in &states {
        match state.last {
            Image::Upsert(row) => upsert_take.push(row as u32),
            // Inserted and deleted within the transaction: it never existed outside it.
            Image::Delete(_) if state.first_was_insert => {}
            Image::Delete(row) => delete_take.push(row as u32),
        }
    }
    match (take_rows(&upsert_rows.batch, upsert_take), take_rows(&delete_rows.batch, delete_take)) {
        (Ok(upserts), Ok(deletes)) => (NetChanges { upserts, deletes, truncate: false }, failed),
        (Err(e), _) | (_, Err(e)) => {
            let reason = format!("cannot assemble net changes: {e}");
            let failed = (0..events.len()).map(|i| (i, reason.clone())).collect();
            (empty_changes(table), failed)
        }
    }
}

fn has_key(table: &KeyedTable, row: &Map<String, Value>) -> bool {
    table.primary_key.iter().all(|&k| row.get(table.schema.field(k).name()).is_some_and(|v| !v.is_null()))
}

fn empty_changes(table: &KeyedTable) -> NetChanges {
    NetChanges {
        upserts: RecordBatch::new_empty(table.schema.clone()),
        deletes: RecordBatch::new_empty(table.key_schema.clone()),
        truncate: false,
    }
}

fn take_rows(batch: &RecordBatch, rows: Vec<u32>) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    if rows.len() == batch.num_rows() && rows.iter().enumerate().all(|(i, &r)| i as u32 == r) {
        return Ok(batch.clone());
    }
    let indices = UInt32Array::from(rows);
    let columns = batch.columns().iter().map(|c| take(c.as_ref(), &indices, None)).collect::<std::result::Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(batch.schema(), columns, &arrow::array::RecordBatchOptions::new().with_row_count(Some(indices.len())))
}

/// Row images converted to one batch.
struct Converted {
    batch: RecordBatch,
    /// Input row -> batch row (None if it failed).
    rows: Vec<Option<usize>>,
    /// Input row -> reason, for the rows that failed.
    failures: HashMap<usize, String>,
}

/// Convert row images with [`rows_to_batch`], one call per distinct envelope schema (almost
/// always one per transaction: a schema changes only with DDL).
fn convert(schema: &SchemaRef, primary_key: &[usize], images: &[RowImage]) -> Converted {
    let same = |a: Option<&Arc<FieldTypes>>, b: Option<&Arc<FieldTypes>>| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        _ => false,
    };
    let mut groups: Vec<(Option<&Arc<FieldTypes>>, Vec<usize>)> = Vec::new();
    for (i, (_, ft)) in images.iter().enumerate() {
        match groups.iter_mut().find(|(g, _)| same(*g, *ft)) {
            Some((_, members)) => members.push(i),
            None => groups.push((*ft, vec![i])),
        }
    }
    let mut rows = vec![None; images.len()];
    let mut failures = HashMap::new();
    let mut batches = Vec::with_capacity(groups.len());
    let mut next_row = 0;
    for (ft, members) in &groups {
        let group_rows: Vec<&Map<String, Value>> = members.iter().map(|&i| images[i].0).collect();
        let (batch, failed) = rows_to_batch(schema, &group_rows, ft.map(|f| f.as_ref()), primary_key);
        let mut failed = failed.into_iter().peekable();
        for (local, &i) in members.iter().enumerate() {
            match failed.peek() {
                Some((f, _)) if *f == local => {
                    if let Some((_, reason)) = failed.next() {
                        failures.insert(i, reason);
                    }
                }
                _ => {
                    rows[i] = Some(next_row);
                    next_row += 1;
                }
            }
        }
        batches.push(batch);
    }
    let batch = match batches.len() {
        0 => Ok(RecordBatch::new_empty(schema.clone())),
        1 => Ok(batches.remove(0)),
        _ => concat_batches(schema, &batches),
    };
    match batch {
        Ok(batch) => Converted { batch, rows, failures },
        Err(e) => Converted {
            batch: RecordBatch::new_empty(schema.clone()),
            rows: vec![None; images.len()],
            failures: (0..images.len()).map(|i| (i, format!("cannot combine row batches: {e}"))).collect(),
        },
    }
}
