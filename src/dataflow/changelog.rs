//! `changes(relation)`: a relation's committed net changes as an append-only relation.
//!
//! Each transaction's consolidated changes become rows `(op, before, after, tick, committed_at)`.
//! With a key (a table's primary key, or columns named in `changes(view, 'col, ...')`)
//! a retraction and an insertion of the same key in one transaction pair up as one `update`;
//! otherwise they are a `delete` and an `insert`. A transaction that leaves a row as it was
//! consolidates to nothing, so events derived from this fire only on real state changes.

use hashbrown::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, StructArray, TimestampMicrosecondArray, UInt32Array};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use super::graph::TickInfo;
use super::{ChangeBatch, Result, RowCodec};

/// One `changes(...)` input of a dataflow.
#[derive(Clone)]
pub struct ChangelogSpec {
    /// The id under which the dataflow reads this changelog (never a real relation id).
    pub input: u32,
    /// The relation whose changes are turned into rows.
    pub relation: u32,
    /// Column indices that identify a row, for pairing updates; empty: no pairing.
    pub key: Vec<usize>,
    pub relation_schema: SchemaRef,
}

/// The schema of `changes(relation)`.
pub fn changelog_schema(relation: &Schema) -> SchemaRef {
    let fields: Fields = relation.fields().iter().map(|f| Arc::new(f.as_ref().clone().with_nullable(true))).collect();
    Arc::new(Schema::new(vec![
        Field::new("op", DataType::Utf8, false),
        Field::new("before", DataType::Struct(fields.clone()), true),
        Field::new("after", DataType::Struct(fields), true),
        Field::new("tick", DataType::Int64, false),
        Field::new("committed_at", DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), false),
    ]))
}

/// A reserved input id for a changelog of `relation` keyed by `key`: the high bit marks it,
/// so it never collides with a relation id.
pub fn changelog_input_id(relation: u32, key: &[usize]) -> u32 {
    let key_hash = key.iter().fold(17u32, |h, k| h.wrapping_mul(31).wrapping_add(*k as u32)) & 0xff;
    0x8000_0000 | ((relation & 0x7f_ffff) << 8) | key_hash
}

/// One output row of a changelog: the index of its `before` row and of its `after` row.
type Pair = (Option<u32>, Option<u32>);

/// Rows of one key: those retracted and those inserted.
type RetractedInserted = (Vec<usize>, Vec<usize>);

impl ChangelogSpec {
    /// The changelog rows of one transaction's consolidated `changes`, each with weight +1.
    pub fn rows(&self, changes: &ChangeBatch, time: TickInfo) -> Result<ChangeBatch> {
        self.rows_over(&[(time, changes)])
    }

    /// The changelog rows of several transactions at once (each transaction's consolidated
    /// changes with its time): pairs form within a transaction, never across.
    pub fn rows_over(&self, per_time: &[(TickInfo, &ChangeBatch)]) -> Result<ChangeBatch> {
        let schema = changelog_schema(&self.relation_schema);
        let concatenated;
        let changes = match per_time {
            [(_, only)] => *only,
            many => {
                let batches: Vec<ChangeBatch> = many.iter().map(|(_, c)| (*c).clone()).collect();
                concatenated = ChangeBatch::concat(&self.relation_schema, &batches)?;
                &concatenated
            }
        };
        // The time of each input row.
        let mut row_time: Vec<u32> = Vec::with_capacity(changes.len());
        for (t, (_, c)) in per_time.iter().enumerate() {
            row_time.extend(std::iter::repeat_n(t as u32, c.len()));
        }
        let mut pairs: Vec<Pair> = Vec::new();
        let unpaired = |i: usize, w: i64, pairs: &mut Vec<Pair>| {
            for _ in 0..w.unsigned_abs() {
                pairs.push(if w < 0 { (Some(i as u32), None) } else { (None, Some(i as u32)) });
            }
        };
        if self.key.is_empty() {
            for i in 0..changes.len() {
                unpaired(i, changes.weights.value(i), &mut pairs);
            }
        } else {
            let keys = changes.rows.project(&self.key)?;
            let codec = RowCodec::new(keys.schema())?;
            let encoded = codec.encode(&keys)?;
            // Per (time, key): the rows retracted and the rows inserted, one entry per unit of weight.
            let mut by_key: HashMap<(u32, &[u8]), RetractedInserted> = HashMap::new();
            let mut order: Vec<(u32, &[u8])> = Vec::new();
            for (i, k) in encoded.iter().enumerate() {
                let entry = by_key.entry((row_time[i], k.as_slice())).or_insert_with(|| {
                    order.push((row_time[i], k.as_slice()));
                    (Vec::new(), Vec::new())
                });
                let w = changes.weights.value(i);
                for _ in 0..w.unsigned_abs() {
                    if w < 0 { entry.0.push(i) } else { entry.1.push(i) }
                }
            }
            for k in order {
                let (minus, plus) = &by_key[&k];
                let n = minus.len().max(plus.len());
                for j in 0..n {
                    pairs.push((minus.get(j).map(|&i| i as u32), plus.get(j).map(|&i| i as u32)));
                }
            }
        }
        let op: StringArray = pairs
            .iter()
            .map(|p| {
                Some(match p {
                    (Some(_), Some(_)) => "update",
                    (Some(_), None) => "delete",
                    _ => "insert",
                })
            })
            .collect();
        let side = |pick: fn(&Pair) -> Option<u32>| -> Result<ArrayRef> {
            let idx: UInt32Array = pairs.iter().map(pick).collect();
            let DataType::Struct(fields) = schema.field(1).data_type().clone() else { unreachable!("struct column") };
            let columns = changes
                .rows
                .columns()
                .iter()
                .map(|c| arrow::compute::take(c.as_ref(), &idx, None))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let nulls = NullBuffer::from(idx.iter().map(|i| i.is_some()).collect::<Vec<_>>());
            Ok(Arc::new(StructArray::try_new(fields, columns, Some(nulls))?))
        };
        let before = side(|p| p.0)?;
        let after = side(|p| p.1)?;
        let time_of = |p: &(Option<u32>, Option<u32>)| per_time[row_time[p.0.or(p.1).unwrap_or(0) as usize] as usize].0;
        let ticks: Int64Array = pairs.iter().map(|p| Some(time_of(p).tick as i64)).collect();
        let committed: TimestampMicrosecondArray = pairs.iter().map(|p| Some(time_of(p).committed_at_micros)).collect();
        let columns: Vec<ArrayRef> = vec![Arc::new(op), before, after, Arc::new(ticks), Arc::new(committed.with_timezone("+00:00"))];
        let rows = RecordBatch::try_new(schema, columns)?;
        Ok(ChangeBatch::uniform(rows, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;
    use datafusion::scalar::ScalarValue;

    #[test]
    fn pairs_updates_by_key_and_keeps_inserts_and_deletes() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false), Field::new("s", DataType::Utf8, true)]));
        let row = |id: i32, s: &str| vec![ScalarValue::Int32(Some(id)), ScalarValue::Utf8(Some(s.into()))];
        let changes = super::super::change_batch::from_rows(
            schema.clone(),
            vec![(-1, row(1, "LOADING")), (1, row(1, "DEPARTED")), (1, row(2, "PLANNED")), (-1, row(3, "X"))],
        );
        let spec = ChangelogSpec { input: changelog_input_id(7, &[0]), relation: 7, key: vec![0], relation_schema: schema };
        let out = spec.rows(&changes, TickInfo { tick: 5, committed_at_micros: 1_000 }).unwrap();
        let ops = out.rows.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let ops: Vec<&str> = ops.iter().map(|o| o.unwrap()).collect();
        assert_eq!(ops, vec!["update", "insert", "delete"]);
        let before = out.rows.column(1).as_any().downcast_ref::<StructArray>().unwrap();
        assert!(before.is_valid(0) && before.is_null(1) && before.is_valid(2));
        assert!(out.weights.values().iter().all(|w| *w == 1));
    }
}
