//! Z-set change batches: Arrow rows plus an `Int64` weight per row.

use hashbrown::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, RecordBatchOptions};
use arrow::compute::{concat_batches, filter_record_batch, take};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};

use super::{DataflowError, Result};

/// Row changes: `weights[i]` is how many copies of row `i` are inserted (> 0) or retracted (< 0).
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    pub rows: RecordBatch,
    pub weights: Int64Array,
}

impl ChangeBatch {
    pub fn new(rows: RecordBatch, weights: Int64Array) -> ChangeBatch {
        debug_assert_eq!(rows.num_rows(), weights.len());
        ChangeBatch { rows, weights }
    }

    pub fn empty(schema: SchemaRef) -> ChangeBatch {
        ChangeBatch::new(RecordBatch::new_empty(schema), Int64Array::from(Vec::<i64>::new()))
    }

    /// Every row of `rows` with the same weight (+1 inserts a batch, -1 retracts it).
    pub fn uniform(rows: RecordBatch, weight: i64) -> ChangeBatch {
        let weights = Int64Array::from(vec![weight; rows.num_rows()]);
        ChangeBatch::new(rows, weights)
    }

    pub fn schema(&self) -> SchemaRef {
        self.rows.schema()
    }

    pub fn len(&self) -> usize {
        self.rows.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.num_rows() == 0
    }

    /// The same changes with every weight negated.
    pub fn negate(&self) -> ChangeBatch {
        let weights: Int64Array = self.weights.iter().map(|w| w.map(|w| -w)).collect();
        ChangeBatch::new(self.rows.clone(), weights)
    }

    /// Concatenate batches of one schema.
    pub fn concat(schema: &SchemaRef, batches: &[ChangeBatch]) -> Result<ChangeBatch> {
        let batches: Vec<&ChangeBatch> = batches.iter().filter(|b| !b.is_empty()).collect();
        match batches.len() {
            0 => return Ok(ChangeBatch::empty(schema.clone())),
            1 => return Ok(batches[0].clone()),
            _ => {}
        }
        let rows = concat_batches(schema, batches.iter().map(|b| &b.rows))?;
        let weights: Int64Array = batches.iter().flat_map(|b| b.weights.values().iter().copied()).map(Some).collect();
        Ok(ChangeBatch::new(rows, weights))
    }

    /// Rows `offset..offset + len`, without copying.
    pub fn slice(&self, offset: usize, len: usize) -> ChangeBatch {
        ChangeBatch { rows: self.rows.slice(offset, len), weights: self.weights.slice(offset, len) }
    }

    /// Keep the rows where `mask` is true.
    pub fn filter(&self, mask: &arrow::array::BooleanArray) -> Result<ChangeBatch> {
        let rows = filter_record_batch(&self.rows, mask)?;
        let weights = arrow::compute::filter(&self.weights, mask)?;
        let weights = weights
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .ok_or_else(|| DataflowError::Internal("weight column is not Int64".into()))?;
        Ok(ChangeBatch::new(rows, weights))
    }

    /// Take rows by index, with the given weights.
    pub fn take_rows(&self, indices: &arrow::array::UInt32Array, weights: Int64Array) -> Result<ChangeBatch> {
        let columns =
            self.rows.columns().iter().map(|c| take(c.as_ref(), indices, None)).collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
        let rows =
            RecordBatch::try_new_with_options(self.rows.schema(), columns, &RecordBatchOptions::new().with_row_count(Some(indices.len())))?;
        Ok(ChangeBatch::new(rows, weights))
    }

    /// Sum the weights of equal rows and drop rows whose weight sums to zero.
    /// This is the one primitive behind transaction dedup, DISTINCT and view diffs.
    pub fn consolidate(&self) -> Result<ChangeBatch> {
        if self.is_empty() {
            return Ok(self.clone());
        }
        if self.rows.num_columns() == 0 {
            // Rows of no columns are all equal (`SELECT 1 FROM t` reads none of t's); Arrow's
            // row format cannot count them.
            let total = self.weights.values().iter().try_fold(0i64, |sum, w| sum.checked_add(*w));
            let total = total.ok_or_else(|| DataflowError::Internal("weight overflow".into()))?;
            let (idx, w): (Vec<u32>, Vec<i64>) = if total == 0 { (vec![], vec![]) } else { (vec![0], vec![total]) };
            return self.take_rows(&idx.into(), w.into());
        }
        let codec = RowCodec::new(self.schema())?;
        let encoded = codec.converter.convert_columns(self.rows.columns())?;
        let mut first_index: HashMap<arrow::row::Row<'_>, usize> = HashMap::with_capacity(self.len());
        let mut order: Vec<(u32, i64)> = Vec::with_capacity(self.len());
        for i in 0..self.len() {
            let w = self.weights.value(i);
            match first_index.get(&encoded.row(i)) {
                Some(&slot) => order[slot].1 += w,
                None => {
                    first_index.insert(encoded.row(i), order.len());
                    order.push((i as u32, w));
                }
            }
        }
        let (idx, w): (Vec<u32>, Vec<i64>) = order.into_iter().filter(|(_, w)| *w != 0).unzip();
        self.take_rows(&idx.into(), w.into())
    }

    /// Rows with positive weight repeated `weight` times; a collection's contents as a batch.
    /// Errors if any weight is negative (a collection cannot hold negative copies).
    pub fn expand_positive(&self) -> Result<RecordBatch> {
        let mut idx = Vec::with_capacity(self.len());
        for i in 0..self.len() {
            let w = self.weights.value(i);
            if w < 0 {
                return Err(DataflowError::Internal(format!("negative multiplicity {w}")));
            }
            idx.extend(std::iter::repeat_n(i as u32, w as usize));
        }
        let n = idx.len();
        Ok(self.take_rows(&idx.into(), Int64Array::from(vec![1; n]))?.rows)
    }
}

/// Encodes rows of one schema to memcomparable bytes and back (Arrow's row format).
/// The bytes are the keys of arrangements and relation contents in storage.
pub struct RowCodec {
    schema: SchemaRef,
    converter: RowConverter,
}

impl RowCodec {
    pub fn new(schema: SchemaRef) -> Result<RowCodec> {
        let fields = schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
        Ok(RowCodec { converter: RowConverter::new(fields)?, schema })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Encode the given columns (which must match the codec's schema), one `Vec<u8>` per row.
    pub fn encode_columns(&self, columns: &[ArrayRef]) -> Result<Vec<Vec<u8>>> {
        let rows = self.converter.convert_columns(columns)?;
        Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
    }

    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        if batch.num_columns() == 0 {
            // Arrow's row format cannot count rows of no columns.
            return Ok(vec![Vec::new(); batch.num_rows()]);
        }
        self.encode_columns(batch.columns())
    }

    /// Decode encoded rows back into a batch of the codec's schema.
    pub fn decode<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> Result<RecordBatch> {
        let parser = self.converter.parser();
        let rows: Vec<_> = rows.into_iter().map(|r| parser.parse(r)).collect();
        let n = rows.len();
        let columns = self.converter.convert_rows(rows)?;
        let columns = columns
            .into_iter()
            .zip(self.schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { arrow::compute::cast(&c, f.data_type()) })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new_with_options(self.schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(n)))?)
    }

    /// Decode `(row, weight)` pairs into a change batch.
    pub fn decode_changes<'a>(&self, changes: impl IntoIterator<Item = (&'a [u8], i64)>) -> Result<ChangeBatch> {
        let (rows, weights): (Vec<&[u8]>, Vec<i64>) = changes.into_iter().unzip();
        Ok(ChangeBatch::new(self.decode(rows)?, weights.into()))
    }
}

/// Build a text changelog batch for tests: `pretty(schema, &[(+1, row), ...])`.
#[cfg(test)]
pub fn from_rows(schema: SchemaRef, rows: Vec<(i64, Vec<datafusion::scalar::ScalarValue>)>) -> ChangeBatch {
    let weights: Int64Array = rows.iter().map(|(w, _)| Some(*w)).collect();
    let columns: Vec<ArrayRef> = (0..schema.fields().len())
        .map(|c| {
            let vals: Vec<_> = rows.iter().map(|(_, r)| r[c].clone()).collect();
            if vals.is_empty() {
                arrow::array::new_empty_array(schema.field(c).data_type())
            } else {
                datafusion::scalar::ScalarValue::iter_to_array(vals).unwrap()
            }
        })
        .collect();
    ChangeBatch::new(RecordBatch::try_new(schema, columns).unwrap(), weights)
}

/// `Arc`-wrapped helper used across operators.
pub fn schema_ref(fields: Vec<arrow::datatypes::Field>) -> SchemaRef {
    Arc::new(arrow::datatypes::Schema::new(fields))
}
