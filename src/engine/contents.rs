//! Relation contents in storage: the committed rows of a table or a materialized view.
//!
//! Key: `r` + relation id + row key. Tables with a primary key use the encoded key
//! columns as row key and store the row in the value; views and key-less tables use the
//! encoded row itself and store only its multiplicity.

use hashbrown::HashMap;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::dataflow::{ChangeBatch, RowCodec};
use crate::storage::{Store, TickWrites, keyspace};

use super::{EngineError, Result};

/// How to read and write one relation's contents.
pub struct Contents {
    id: u32,
    name: String,
    codec: RowCodec,
    key: Option<(Vec<usize>, RowCodec)>,
}

/// This step's not-yet-committed contents writes, read before the store. While a journal
/// is open, its writes can be rolled back: one rejected commit of a step leaves the others'
/// writes as they were, without copying the overlay per commit.
#[derive(Default)]
pub struct Overlay {
    entries: HashMap<Vec<u8>, Option<Vec<u8>>>,
    journal: Option<Vec<JournalEntry>>,
}

/// A journaled write's key and the overlay entry it replaced (`None`: there was none).
type JournalEntry = (Vec<u8>, Option<Option<Vec<u8>>>);

impl Overlay {
    pub fn new() -> Overlay {
        Overlay::default()
    }

    /// `Some(None)`: deleted in this step; `None`: not written in this step.
    fn get(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.entries.get(key)
    }

    fn insert(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        match &mut self.journal {
            Some(journal) => {
                let previous = self.entries.insert(key.clone(), value);
                journal.push((key, previous));
            }
            None => {
                self.entries.insert(key, value);
            }
        }
    }

    /// Start recording writes so that [`Overlay::rollback`] can undo them.
    pub fn begin(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// Keep the writes since [`Overlay::begin`].
    pub fn keep(&mut self) {
        self.journal = None;
    }

    /// Undo the writes since [`Overlay::begin`].
    pub fn rollback(&mut self) {
        for (key, previous) in self.journal.take().unwrap_or_default().into_iter().rev() {
            match previous {
                Some(v) => self.entries.insert(key, v),
                None => self.entries.remove(&key),
            };
        }
    }
}

impl Contents {
    pub fn new(id: u32, name: &str, schema: SchemaRef, primary_key: &[usize]) -> Result<Contents> {
        let key = if primary_key.is_empty() {
            None
        } else {
            let key_schema = std::sync::Arc::new(schema.project(primary_key)?);
            Some((primary_key.to_vec(), RowCodec::new(key_schema)?))
        };
        Ok(Contents { id, name: name.to_string(), codec: RowCodec::new(schema)?, key })
    }

    pub fn schema(&self) -> &SchemaRef {
        self.codec.schema()
    }

    pub fn prefix(id: u32) -> Vec<u8> {
        let mut p = vec![keyspace::CONTENTS];
        p.extend_from_slice(&id.to_be_bytes());
        p
    }

    fn storage_key(&self, row_key: &[u8]) -> Vec<u8> {
        let mut k = Contents::prefix(self.id);
        k.extend_from_slice(row_key);
        k
    }

    /// All rows with their multiplicities.
    pub fn scan(&self, store: &Store) -> Result<ChangeBatch> {
        let plen = Contents::prefix(self.id).len();
        let mut rows: Vec<Vec<u8>> = Vec::new();
        let mut weights = Vec::new();
        store.for_each_prefix(&Contents::prefix(self.id), |k, v| {
            let (count, row) = split_value(v);
            rows.push(if row.is_empty() { k[plen..].to_vec() } else { row.to_vec() });
            weights.push(count);
            Ok(())
        })?;
        Ok(self.codec.decode_changes(rows.iter().map(|r| r.as_slice()).zip(weights))?)
    }

    /// All rows, each repeated by its multiplicity.
    pub fn scan_rows(&self, store: &Store) -> Result<RecordBatch> {
        Ok(self.scan(store)?.expand_positive()?)
    }

    /// Rows whose primary key equals one of `keys` (the key columns' values, as a batch).
    pub fn lookup_keys(&self, store: &Store, keys: &RecordBatch) -> Result<Option<RecordBatch>> {
        let Some((_, key_codec)) = &self.key else { return Ok(None) };
        let mut rows = Vec::new();
        for k in key_codec.encode(keys)? {
            if let Some(v) = store.get(&self.storage_key(&k))? {
                rows.push(split_value(&v).1.to_vec());
            }
        }
        Ok(Some(self.codec.decode(rows.iter().map(|r| r.as_slice()))?))
    }

    /// Resolve and apply the keyed net changes of consecutive transactions of one step, in
    /// order and in one pass: their rows are encoded together and decoded as one batch,
    /// sliced per transaction. Returns each transaction's row changes with its time.
    pub fn apply_keyed_run(
        &self,
        store: &Store,
        overlay: &mut Overlay,
        run: &[(usize, &super::KeyedChanges)],
    ) -> Result<Vec<(usize, ChangeBatch)>> {
        let Some((key_cols, key_codec)) = &self.key else {
            return Err(EngineError::UndefinedObject(format!("table \"{}\" has no primary key to apply source changes by", self.name)));
        };
        let upserts = arrow::compute::concat_batches(self.schema(), run.iter().map(|(_, k)| &k.upserts))?;
        let new_rows = self.codec.encode(&upserts)?;
        let new_keys = key_codec.encode(&upserts.project(key_cols)?)?;
        let deleted_keys = match run.iter().map(|(_, k)| &k.deletes).find(|d| d.num_rows() > 0) {
            Some(first) => key_codec.encode(&arrow::compute::concat_batches(&first.schema(), run.iter().map(|(_, k)| &k.deletes))?)?,
            None => Vec::new(),
        };
        let current = |overlay: &Overlay, skey: &[u8]| -> Result<Option<Vec<u8>>> {
            let value = match overlay.get(skey) {
                Some(v) => v.clone(),
                None => store.get(skey)?,
            };
            Ok(value.map(|v| split_value(&v).1.to_vec()))
        };
        let mut rows: Vec<Vec<u8>> = Vec::new();
        let mut weights: Vec<i64> = Vec::new();
        let mut ends: Vec<(usize, usize)> = Vec::with_capacity(run.len());
        let (mut next_upsert, mut next_delete) = (new_rows.into_iter().zip(new_keys), deleted_keys.into_iter());
        for (time, keyed) in run {
            if keyed.truncate {
                for (skey, old) in self.current_rows(store, overlay)? {
                    rows.push(old);
                    weights.push(-1);
                    overlay.insert(skey, None);
                }
            }
            for (row, key) in next_upsert.by_ref().take(keyed.upserts.num_rows()) {
                let skey = self.storage_key(&key);
                let old = current(overlay, &skey)?;
                if old.as_deref() == Some(row.as_slice()) {
                    continue;
                }
                if let Some(old) = old {
                    rows.push(old);
                    weights.push(-1);
                }
                overlay.insert(skey, Some(join_value(1, &row)));
                rows.push(row);
                weights.push(1);
            }
            for key in next_delete.by_ref().take(keyed.deletes.num_rows()) {
                let skey = self.storage_key(&key);
                if let Some(old) = current(overlay, &skey)? {
                    rows.push(old);
                    weights.push(-1);
                    overlay.insert(skey, None);
                }
            }
            ends.push((*time, rows.len()));
        }
        let changes = self.codec.decode_changes(rows.iter().map(|r| r.as_slice()).zip(weights))?;
        let mut start = 0;
        let mut out = Vec::new();
        for (time, end) in ends {
            if end > start {
                out.push((time, changes.slice(start, end - start)));
            }
            start = end;
        }
        Ok(out)
    }

    /// Every row as of `overlay` over the store, with its storage key (for a TRUNCATE).
    fn current_rows(&self, store: &Store, overlay: &Overlay) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = Contents::prefix(self.id);
        let mut rows = Vec::new();
        store.for_each_prefix(&prefix, |k, v| {
            if overlay.get(k).is_none() {
                rows.push((k.to_vec(), split_value(v).1.to_vec()));
            }
            Ok(())
        })?;
        for (k, v) in &overlay.entries {
            if let Some(v) = v
                && k.starts_with(&prefix)
            {
                rows.push((k.clone(), split_value(v).1.to_vec()));
            }
        }
        Ok(rows)
    }

    pub fn key_columns(&self) -> Option<&[usize]> {
        self.key.as_ref().map(|(k, _)| k.as_slice())
    }

    /// Apply consolidated changes to the contents, checking them against the current state
    /// (store + `overlay`). Tables with a primary key reject a second row for a key
    /// (unique_violation) and retractions of rows that changed meanwhile (serialization failure).
    pub fn apply(&self, store: &Store, overlay: &mut Overlay, changes: &ChangeBatch) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let rows = self.codec.encode(&changes.rows)?;
        let read = |overlay: &Overlay, key: &[u8]| -> Result<Option<Vec<u8>>> {
            match overlay.get(key) {
                Some(v) => Ok(v.clone()),
                None => Ok(store.get(key)?),
            }
        };
        match &self.key {
            Some((key_cols, key_codec)) => {
                let key_batch = changes.rows.project(key_cols)?;
                let keys = key_codec.encode(&key_batch)?;
                // Retractions first, so that an update (-old +new) of one key is allowed.
                for pass_inserts in [false, true] {
                    for (i, (row, key)) in rows.iter().zip(&keys).enumerate() {
                        let w = changes.weights.value(i);
                        if (w > 0) != pass_inserts {
                            continue;
                        }
                        let skey = self.storage_key(key);
                        let current = read(overlay, &skey)?;
                        if w < 0 {
                            let matches = current.as_deref().map(|v| split_value(v).1 == row.as_slice());
                            if w != -1 || matches != Some(true) {
                                return Err(EngineError::SerializationFailure(format!(
                                    "a row of \"{}\" changed concurrently; retry the transaction",
                                    self.name
                                )));
                            }
                            overlay.insert(skey, None);
                        } else {
                            if w != 1 || current.is_some() {
                                return Err(EngineError::UniqueViolation(format!(
                                    "duplicate key value violates primary key of \"{}\": {}",
                                    self.name,
                                    describe_key(&key_batch, i)
                                )));
                            }
                            overlay.insert(skey, Some(join_value(1, row)));
                        }
                    }
                }
            }
            None => {
                for (i, row) in rows.iter().enumerate() {
                    let skey = self.storage_key(row);
                    let count = read(overlay, &skey)?.map(|v| split_value(&v).0).unwrap_or(0);
                    let new = count + changes.weights.value(i);
                    if new < 0 {
                        return Err(EngineError::SerializationFailure(format!(
                            "a row of \"{}\" was removed concurrently; retry the transaction",
                            self.name
                        )));
                    }
                    overlay.insert(skey, if new == 0 { None } else { Some(join_value(new, &[])) });
                }
            }
        }
        Ok(())
    }
}

/// Move an overlay into the tick's writes.
pub fn flush_overlay(overlay: Overlay, writes: &mut TickWrites) {
    for (k, v) in overlay.entries {
        match v {
            Some(v) => writes.put(&k, &v),
            None => writes.delete(&k),
        }
    }
}

fn split_value(v: &[u8]) -> (i64, &[u8]) {
    let count = v.get(..8).and_then(|b| b.try_into().ok()).map(i64::from_le_bytes).unwrap_or(0);
    (count, v.get(8..).unwrap_or(&[]))
}

fn join_value(count: i64, row: &[u8]) -> Vec<u8> {
    let mut v = count.to_le_bytes().to_vec();
    v.extend_from_slice(row);
    v
}

fn describe_key(keys: &RecordBatch, row: usize) -> String {
    let names: Vec<String> = keys.schema().fields().iter().map(|f| f.name().clone()).collect();
    let values: Vec<String> = keys
        .columns()
        .iter()
        .map(|c| datafusion::scalar::ScalarValue::try_from_array(c, row).map(|v| v.to_string()).unwrap_or_else(|_| "?".into()))
        .collect();
    format!("({})=({})", names.join(", "), values.join(", "))
}
