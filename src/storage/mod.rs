//! RocksDB storage: relation contents, operator state, catalog and offsets in one database.
//!
//! Every tick's writes go into one [`TickWrites`] (a RocksDB `WriteBatch`) that commits
//! atomically: after a crash the database holds either all of a tick or none of it.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("storage: corrupt record under {what}: {detail}")]
    Corrupt { what: String, detail: String },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Key spaces, one leading byte each, so a prefix scan never crosses them.
pub mod keyspace {
    /// Catalog entries: `c` + object name.
    pub const CATALOG: u8 = b'c';
    /// Relation contents (tables and views): `r` + relation id + row key.
    pub const CONTENTS: u8 = b'r';
    /// Operator state: `s` + dataflow id + node id + arrangement no + key.
    pub const STATE: u8 = b's';
    /// Engine metadata (tick counter, row counts, source offsets): `m` + name.
    pub const META: u8 = b'm';
    /// Source records that could not be applied: `d` + source id + position.
    pub const DEAD_LETTERS: u8 = b'd';
    /// Sink messages not yet delivered: `o` + sink id + tick.
    pub const OUTBOX: u8 = b'o';
}

/// The database handle, shared by the engine (writer) and readers.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.increase_parallelism(2);
        // At most two 32 MiB memtables (RocksDB's default is two of 64 MiB): operator state
        // is read from memory, so the memtables only buffer writes until they are flushed.
        opts.set_write_buffer_size(32 << 20);
        opts.set_max_write_buffer_number(2);
        let db = DB::open(&opts, dir)?;
        Ok(Store { db: Arc::new(db) })
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key)?)
    }

    /// All `(key, value)` pairs whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan_from(prefix, prefix, usize::MAX)
    }

    /// Up to `limit` pairs under `prefix` whose key is at least `from`, in key order.
    pub fn scan_from(&self, prefix: &[u8], from: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.db.iterator(IteratorMode::From(from, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Visit every pair under `prefix` without collecting them.
    pub fn for_each_prefix(&self, prefix: &[u8], mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        let iter = self.db.iterator(IteratorMode::From(prefix, Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            f(&k, &v)?;
        }
        Ok(())
    }

    /// Commit one tick. Synced to the WAL: an acknowledged commit survives `kill -9`.
    pub fn commit(&self, writes: TickWrites) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(writes.batch, &opts)?;
        Ok(())
    }

    /// Approximate on-disk size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.db.property_int_value("rocksdb.total-sst-files-size").ok().flatten().unwrap_or(0)
    }
}

/// The writes of one tick, committed together by [`Store::commit`].
#[derive(Default)]
pub struct TickWrites {
    batch: WriteBatch,
}

impl TickWrites {
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put(key, value);
    }
    pub fn delete(&mut self, key: &[u8]) {
        self.batch.delete(key);
    }
    pub fn delete_prefix(&mut self, store: &Store, prefix: &[u8]) -> Result<()> {
        store.for_each_prefix(prefix, |k, _| {
            self.batch.delete(k);
            Ok(())
        })
    }
    pub fn len(&self) -> usize {
        self.batch.len()
    }
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

/// Append a length-prefixed segment, so that concatenated keys stay unambiguous.
pub fn push_segment(key: &mut Vec<u8>, segment: &[u8]) {
    key.extend_from_slice(&(segment.len() as u32).to_be_bytes());
    key.extend_from_slice(segment);
}

/// Split a length-prefixed segment off the front of `bytes`.
pub fn split_segment(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let seg = bytes.get(4..4 + len)?;
    Some((seg, &bytes[4 + len..]))
}
