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
        self.db.write_opt(writes.into_batch(), &opts)?;
        Ok(())
    }

    /// Approximate on-disk size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.db.property_int_value("rocksdb.total-sst-files-size").ok().flatten().unwrap_or(0)
    }
}

/// The writes of one tick, committed together by [`Store::commit`].
///
/// Buffered in one byte arena and handed to RocksDB sorted by key, the last write of each key
/// only: a step of many transactions rewrites the same state keys (a group's accumulator, a
/// join key's count) once per transaction, and a memtable takes keys in order far faster than
/// in random order (its skip list reuses the previous insert's position).
#[derive(Default)]
pub struct TickWrites {
    bytes: Vec<u8>,
    writes: Vec<BufferedWrite>,
}

/// One buffered put (`value` set) or delete, as ranges of [`TickWrites::bytes`].
struct BufferedWrite {
    key: std::ops::Range<usize>,
    value: Option<std::ops::Range<usize>>,
}

impl TickWrites {
    fn append(&mut self, bytes: &[u8]) -> std::ops::Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        let (key, value) = (self.append(key), self.append(value));
        self.writes.push(BufferedWrite { key, value: Some(value) });
    }
    pub fn delete(&mut self, key: &[u8]) {
        let key = self.append(key);
        self.writes.push(BufferedWrite { key, value: None });
    }
    pub fn delete_prefix(&mut self, store: &Store, prefix: &[u8]) -> Result<()> {
        store.for_each_prefix(prefix, |k, _| {
            self.delete(k);
            Ok(())
        })
    }
    /// Writes buffered, a rewritten key counted each time.
    pub fn len(&self) -> usize {
        self.writes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The RocksDB batch: keys in order, each with its last write.
    fn into_batch(self) -> WriteBatch {
        let TickWrites { bytes, mut writes } = self;
        // Stable: of equal keys, the last buffered stays last.
        writes.sort_by(|a, b| bytes[a.key.clone()].cmp(&bytes[b.key.clone()]));
        let mut batch = WriteBatch::default();
        for (i, w) in writes.iter().enumerate() {
            if writes.get(i + 1).is_some_and(|next| bytes[next.key.clone()] == bytes[w.key.clone()]) {
                continue;
            }
            match &w.value {
                Some(v) => batch.put(&bytes[w.key.clone()], &bytes[v.clone()]),
                None => batch.delete(&bytes[w.key.clone()]),
            }
        }
        batch
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_write_of_a_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut first = TickWrites::default();
        first.put(b"a", b"old");
        first.put(b"gone", b"x");
        store.commit(first).unwrap();

        let mut writes = TickWrites::default();
        writes.put(b"c", b"1");
        writes.delete(b"a");
        writes.put(b"b", b"2");
        writes.put(b"a", b"new");
        writes.delete(b"c");
        writes.put(b"gone", b"y");
        writes.delete(b"gone");
        assert_eq!(writes.len(), 7);
        store.commit(writes).unwrap();

        let all = store.scan_prefix(b"").unwrap();
        assert_eq!(all, vec![(b"a".to_vec(), b"new".to_vec()), (b"b".to_vec(), b"2".to_vec())]);
    }
}
