//! Watermarks of append-only tables (`WITH (watermark = 'date_time - INTERVAL ''5'' SECOND')`).
//!
//! A table's watermark is the largest event time applied to it minus the delay. A row whose
//! event time is older than the watermark is late: it is taken out of its transaction before
//! the transaction reaches the table, counted, and kept as a dead letter with the reason (the
//! rest of the transaction applies). So every row a table holds was on time when it arrived,
//! and a window whose end the watermark has passed gets no more rows: views can close it.
//!
//! The check covers every row a transaction inserts (a client's INSERT and both images of its
//! UPDATE/DELETE, a source's inserted and updated rows); a source's deletes carry only keys and
//! apply as they come. The watermark and the late count persist with the step that moved them.

use std::collections::HashMap;

use arrow::array::{Array, BooleanArray, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::array_value_to_string;

use super::{Commit, EngineError, Result, meta_key};
use crate::catalog::{Relation, Watermark};
use crate::dataflow::ChangeBatch;
use crate::sources::runner::{StoredDeadLetter, dead_letter_prefix};
use crate::storage::Store;

/// A table's watermark as the engine keeps it.
#[derive(Debug, Clone)]
pub struct TableWatermark {
    spec: Watermark,
    table: String,
    /// The source feeding the table (for its dead letters), if any.
    source: Option<String>,
    primary_key: Vec<usize>,
    /// The largest event time applied (µs since the epoch).
    pub max_event: Option<i64>,
    /// Rows refused as late, ever.
    pub late: u64,
}

/// Where a table's watermark state is stored: `m` + `watermark/` + table id.
fn state_key(table: u32) -> Vec<u8> {
    let mut name = b"watermark/".to_vec();
    name.extend_from_slice(&table.to_be_bytes());
    meta_key(&name)
}

impl TableWatermark {
    /// The watermark of `relation` (which has one), as last committed.
    pub fn load(relation: &Relation, spec: Watermark, store: &Store) -> Result<TableWatermark> {
        let mut w = TableWatermark {
            spec,
            table: relation.name.clone(),
            source: relation.binding.as_ref().map(|b| b.source.clone()),
            primary_key: relation.primary_key.clone(),
            max_event: None,
            late: 0,
        };
        w.reload(relation.id, store)?;
        Ok(w)
    }

    /// Read the committed watermark and late count again.
    pub fn reload(&mut self, id: u32, store: &Store) -> Result<()> {
        let w = self;
        if let Some(v) = store.get(&state_key(id))? {
            let corrupt = || crate::storage::StorageError::Corrupt { what: "watermark".into(), detail: format!("{} bytes", v.len()) };
            let max: [u8; 8] = v.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
            let late: [u8; 8] = v.get(8..16).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
            w.max_event = Some(i64::from_le_bytes(max)).filter(|m| *m != i64::MIN);
            w.late = u64::from_le_bytes(late);
        }
        Ok(())
    }

    /// The watermark (µs): rows older than it are late.
    pub fn current(&self) -> Option<i64> {
        self.max_event.map(|m| m.saturating_sub(self.spec.delay_micros))
    }

    fn state_value(&self) -> Vec<u8> {
        let mut v = self.max_event.unwrap_or(i64::MIN).to_le_bytes().to_vec();
        v.extend_from_slice(&self.late.to_le_bytes());
        v
    }

    /// Event times of `rows` (µs; NULL stays NULL).
    fn times(&self, rows: &RecordBatch) -> Result<TimestampMicrosecondArray> {
        let column = arrow::compute::cast(rows.column(self.spec.column), &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        Ok(column.as_any().downcast_ref::<TimestampMicrosecondArray>().expect("cast to microseconds").clone())
    }

    /// Which rows of `rows` are late (a NULL time is never late: no window takes it anyway).
    fn late_rows(&self, times: &TimestampMicrosecondArray) -> Vec<bool> {
        let watermark = self.current();
        (0..times.len()).map(|i| !times.is_null(i) && watermark.is_some_and(|w| times.value(i) < w)).collect()
    }

    /// Move the watermark past the on-time rows inserted.
    fn advance(&mut self, times: &TimestampMicrosecondArray, inserted: impl Fn(usize) -> bool, late: &[bool]) {
        for (i, late) in late.iter().enumerate() {
            if !late && !times.is_null(i) && inserted(i) {
                self.max_event = Some(self.max_event.map_or(times.value(i), |m| m.max(times.value(i))));
            }
        }
    }

    /// The dead letter of one late row.
    fn dead_letter(&self, id: u32, rows: &RecordBatch, row: usize, time: i64) -> Result<(Vec<u8>, Vec<u8>)> {
        let schema = rows.schema();
        let mut raw = serde_json::Map::new();
        for (c, field) in schema.fields().iter().enumerate() {
            let column = rows.column(c);
            let value =
                if column.is_null(row) { serde_json::Value::Null } else { serde_json::Value::String(array_value_to_string(column, row)?) };
            raw.insert(field.name().clone(), value);
        }
        let show =
            |micros: i64| arrow::temporal_conversions::timestamp_us_to_datetime(micros).map_or(micros.to_string(), |t| t.to_string());
        let column = schema.field(self.spec.column).name();
        let watermark = self.current().map_or_else(String::new, show);
        let reason = if self.current().is_some_and(|w| time < w) {
            format!("late row: {column} {} is older than the watermark {watermark} of table \"{}\"", show(time), self.table)
        } else {
            format!(
                "late row: the other image of an update whose {column} is older than the watermark {watermark} of table \"{}\"",
                self.table
            )
        };
        // Numbered by the table's late count, so letters sort in arrival order.
        let position = format!("late row {:012}", self.late);
        let letter = StoredDeadLetter {
            source: self.source.clone().unwrap_or_else(|| self.table.clone()),
            collection: Some(self.table.clone()),
            position: position.clone(),
            raw: serde_json::Value::Object(raw).to_string(),
            reason,
            received_at_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64,
        };
        let mut key = dead_letter_prefix(id);
        key.extend_from_slice(position.as_bytes());
        Ok((key, serde_json::to_vec(&letter).map_err(|e| EngineError::Output(e.into()))?))
    }

    /// Take the late rows out of `changes` (a client's row changes); for a table with a primary
    /// key, an update's two images go (or stay) together.
    fn filter_changes(&mut self, id: u32, changes: &ChangeBatch, writes: &mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<Option<ChangeBatch>> {
        let times = self.times(&changes.rows)?;
        let mut late = self.late_rows(&times);
        if !late.iter().any(|l| *l) {
            self.advance(&times, |i| changes.weights.value(i) > 0, &late);
            return Ok(None);
        }
        if !self.primary_key.is_empty() {
            let codec = crate::dataflow::RowCodec::new(std::sync::Arc::new(changes.rows.schema().project(&self.primary_key)?))?;
            let keys = codec.encode(&changes.rows.project(&self.primary_key)?)?;
            let late_keys: std::collections::HashSet<&[u8]> =
                keys.iter().zip(&late).filter(|(_, l)| **l).map(|(k, _)| k.as_slice()).collect();
            for (i, k) in keys.iter().enumerate() {
                late[i] |= late_keys.contains(k.as_slice());
            }
        }
        for (i, l) in late.iter().enumerate() {
            if *l {
                self.late += 1;
                writes.push(self.dead_letter(id, &changes.rows, i, times.value(i))?);
            }
        }
        self.advance(&times, |i| changes.weights.value(i) > 0, &late);
        let keep = BooleanArray::from(late.iter().map(|l| !l).collect::<Vec<_>>());
        Ok(Some(changes.filter(&keep)?))
    }

    /// Take the late rows out of a source transaction's upserts.
    fn filter_upserts(&mut self, id: u32, upserts: &RecordBatch, writes: &mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<Option<RecordBatch>> {
        let times = self.times(upserts)?;
        let late = self.late_rows(&times);
        let any_late = late.iter().any(|l| *l);
        for (i, l) in late.iter().enumerate() {
            if *l {
                self.late += 1;
                writes.push(self.dead_letter(id, upserts, i, times.value(i))?);
            }
        }
        self.advance(&times, |_| true, &late);
        if !any_late {
            return Ok(None);
        }
        let keep = BooleanArray::from(late.iter().map(|l| !l).collect::<Vec<_>>());
        Ok(Some(arrow::compute::filter_record_batch(upserts, &keep)?))
    }
}

/// Take the late rows out of the commits of a step, in commit order, each against the
/// watermark as the commits before it left it; record each commit's late rows as dead
/// letters and the watermarks it moved, in its own writes (so only an applied commit's count).
/// Returns the watermarks as the step leaves them.
pub fn filter_late_rows<'a>(
    watermarks: &HashMap<u32, TableWatermark>,
    commits: impl Iterator<Item = &'a mut Commit>,
) -> Result<HashMap<u32, TableWatermark>> {
    let mut running = watermarks.clone();
    if running.is_empty() {
        return Ok(running);
    }
    for commit in commits {
        let mut moved: Vec<u32> = Vec::new();
        let mut writes = Vec::new();
        for (id, changes) in commit.changes.iter_mut() {
            if let Some(w) = running.get_mut(id) {
                if let Some(kept) = w.filter_changes(*id, changes, &mut writes)? {
                    *changes = kept;
                }
                moved.push(*id);
            }
        }
        for (id, keyed) in commit.keyed.iter_mut() {
            if let Some(w) = running.get_mut(id) {
                if let Some(kept) = w.filter_upserts(*id, &keyed.upserts, &mut writes)? {
                    keyed.upserts = kept;
                }
                moved.push(*id);
            }
        }
        moved.sort();
        moved.dedup();
        for id in moved {
            writes.push((state_key(id), running[&id].state_value()));
        }
        commit.extra_writes.extend(writes);
    }
    Ok(running)
}

/// The tables' watermarks (µs) as dataflows see them.
pub fn current(watermarks: &HashMap<u32, TableWatermark>) -> HashMap<u32, i64> {
    watermarks.iter().filter_map(|(id, w)| w.current().map(|c| (*id, c))).collect()
}

/// Whether a stored key is one of `id`'s watermark keys (to forget it with the table).
pub fn key(id: u32) -> Vec<u8> {
    state_key(id)
}
