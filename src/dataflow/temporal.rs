//! TemporalFilter: a row stays while `time + window > now` (see `planner::temporal`).
//!
//! Passing rows are kept by the moment they expire (in the arrangements' compact layout, keyed
//! by expiry, with the distinct expiries ordered beside), so the clock alone can retract them:
//! the engine runs a tick when the earliest one is due. Work per tick is the change plus the
//! rows that expire in it.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, BooleanArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::physical_expr::PhysicalExpr;

use super::arrangement::{Table, state_prefix};
use super::{ChangeBatch, DataflowError, Operator, Result, RowCodec};
use crate::storage::{Store, TickWrites};

pub struct TemporalFilter {
    schema: SchemaRef,
    time: Arc<dyn PhysicalExpr>,
    window_micros: i64,
    codec: RowCodec,
    prefix: Vec<u8>,
    /// Expiry (8 bytes, big-endian) -> encoded rows -> multiplicity.
    rows: Table,
    /// The expiries in `rows`, earliest first.
    expiries: BTreeSet<i64>,
    /// Reused for building storage keys.
    scratch: Vec<u8>,
    now_micros: i64,
}

impl TemporalFilter {
    pub fn new(schema: SchemaRef, time: Arc<dyn PhysicalExpr>, window_micros: i64, dataflow: u32, node: u32) -> Result<TemporalFilter> {
        Ok(TemporalFilter {
            codec: RowCodec::new(schema.clone())?,
            schema,
            time,
            window_micros,
            prefix: state_prefix(dataflow, node, 0),
            rows: Table::default(),
            expiries: BTreeSet::new(),
            scratch: Vec::new(),
            now_micros: 0,
        })
    }

    /// Storage key: prefix, expiry (sign bit flipped, so keys sort by time), row.
    fn storage_key(scratch: &mut Vec<u8>, prefix: &[u8], expiry: i64, row: &[u8]) {
        scratch.clear();
        scratch.extend_from_slice(prefix);
        scratch.extend_from_slice(&((expiry as u64) ^ (1 << 63)).to_be_bytes());
        scratch.extend_from_slice(row);
    }

    fn update(&mut self, expiry: i64, row: &[u8], diff: i64, writes: &mut TickWrites) -> Result<()> {
        Self::storage_key(&mut self.scratch, &self.prefix, expiry, row);
        let key = expiry.to_be_bytes();
        match self.rows.add(&key, row, diff)? {
            0 => writes.delete(&self.scratch),
            n if n < 0 => return Err(DataflowError::Internal("temporal filter retracted a row it never kept".into())),
            n => writes.put(&self.scratch, &n.to_le_bytes()),
        }
        if self.rows.get(&key).is_some() {
            self.expiries.insert(expiry);
        } else {
            self.expiries.remove(&expiry);
        }
        Ok(())
    }
}

impl Operator for TemporalFilter {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn advance_to(&mut self, now_micros: i64) {
        self.now_micros = now_micros;
    }

    fn wakeup_at(&self) -> Option<i64> {
        self.expiries.first().copied()
    }

    fn step(&mut self, mut inputs: Vec<ChangeBatch>, writes: &mut TickWrites) -> Result<ChangeBatch> {
        let input = inputs.swap_remove(0);
        let mut parts = Vec::with_capacity(2);
        if !input.is_empty() {
            let time = self.time.evaluate(&input.rows)?.into_array(input.len())?;
            let time = arrow::compute::cast(&time, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
            let time = time.as_any().downcast_ref::<TimestampMicrosecondArray>().expect("cast to microseconds");
            let encoded = self.codec.encode(&input.rows)?;
            let mut keep = Vec::with_capacity(input.len());
            for (i, row) in encoded.iter().enumerate() {
                let expiry = (!time.is_null(i)).then(|| time.value(i).saturating_add(self.window_micros));
                let alive = expiry.is_some_and(|e| e > self.now_micros);
                if let (true, Some(e)) = (alive, expiry) {
                    self.update(e, row, input.weights.value(i), writes)?;
                }
                keep.push(alive);
            }
            parts.push(input.filter(&BooleanArray::from(keep))?);
        }
        // Everything whose time is up leaves the view.
        let due: Vec<i64> = self.expiries.range(..=self.now_micros).copied().collect();
        if !due.is_empty() {
            let mut expired: Vec<(&[u8], i64)> = Vec::new();
            for expiry in &due {
                for (row, count) in self.rows.get(&expiry.to_be_bytes()).into_iter().flatten() {
                    Self::storage_key(&mut self.scratch, &self.prefix, *expiry, row);
                    writes.delete(&self.scratch);
                    expired.push((row, -count));
                }
            }
            parts.push(self.codec.decode_changes(expired)?);
            for expiry in due {
                self.rows.remove_key(&expiry.to_be_bytes());
                self.expiries.remove(&expiry);
            }
        }
        ChangeBatch::concat(&self.schema, &parts)
    }

    fn restore(&mut self, store: &Store) -> Result<()> {
        self.rows.clear();
        self.expiries.clear();
        let plen = self.prefix.len();
        let (rows, expiries) = (&mut self.rows, &mut self.expiries);
        store.for_each_prefix(&self.prefix, |k, v| {
            let corrupt =
                || crate::storage::StorageError::Corrupt { what: "temporal filter".into(), detail: format!("{} byte key", k.len()) };
            let expiry = u64::from_be_bytes(k.get(plen..plen + 8).ok_or_else(corrupt)?.try_into().expect("8 bytes")) ^ (1 << 63);
            let count = i64::from_le_bytes(v.try_into().map_err(|_| corrupt())?);
            let expiry = expiry as i64;
            rows.add(&expiry.to_be_bytes(), &k[plen + 8..], count)
                .map_err(|e| crate::storage::StorageError::Corrupt { what: "temporal filter".into(), detail: e.to_string() })?;
            expiries.insert(expiry);
            Ok(())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::Column;
    use datafusion::scalar::ScalarValue;

    #[test]
    fn rows_leave_when_their_window_closes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let mut op = TemporalFilter::new(schema.clone(), Arc::new(Column::new("at", 1)), 100, 1, 0).unwrap();
        let row = |id: i64, at: Option<i64>| vec![ScalarValue::Int64(Some(id)), ScalarValue::TimestampMicrosecond(at, None)];
        let batch = super::super::change_batch::from_rows(
            schema.clone(),
            vec![(1, row(1, Some(1_000))), (1, row(2, Some(950))), (1, row(3, None)), (1, row(4, Some(1_050)))],
        );
        let mut writes = TickWrites::default();
        op.advance_to(1_060);
        let out = op.step(vec![batch], &mut writes).unwrap();
        // Row 2 (expires at 1050) is already out, row 3 has no time.
        assert_eq!(out.weights.values().iter().sum::<i64>(), 2);
        assert_eq!(op.wakeup_at(), Some(1_100));
        op.advance_to(1_100);
        let out = op.step(vec![ChangeBatch::empty(schema.clone())], &mut writes).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out.weights.value(0), -1);
        assert_eq!(op.wakeup_at(), Some(1_150));
    }
}
