//! Arrangements: operator state indexed by key, each key holding a multiset of rows.
//!
//! Kept in memory for speed and written through to RocksDB in the tick's `WriteBatch`,
//! so a restart restores it with one prefix scan instead of recomputing anything.
//! Most keys hold one row (a join side indexed by primary key, a top-k partition of one):
//! such a key costs its row's bytes plus one small inline entry, not a tree node.

use std::collections::{BTreeMap, HashMap};

use smallvec::SmallVec;

use crate::storage::{Store, TickWrites, push_segment, split_segment};

use super::{DataflowError, Result};

/// Rows a multiset keeps in a sorted inline/vector form before it becomes a tree.
const SORTED_VEC_MAX: usize = 32;

/// A multiset of encoded rows, ordered by their memcomparable bytes.
#[derive(Debug, Clone)]
pub enum RowMultiset {
    /// Few rows: sorted by row, the first one stored inline.
    Sorted(SmallVec<[(Box<[u8]>, i64); 1]>),
    /// Many rows: a tree, so inserting stays logarithmic.
    Tree(BTreeMap<Box<[u8]>, i64>),
}

impl Default for RowMultiset {
    fn default() -> RowMultiset {
        RowMultiset::Sorted(SmallVec::new())
    }
}

impl RowMultiset {
    pub fn len(&self) -> usize {
        match self {
            RowMultiset::Sorted(v) => v.len(),
            RowMultiset::Tree(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The multiplicity of `row`, if present.
    pub fn get(&self, row: &[u8]) -> Option<&i64> {
        match self {
            RowMultiset::Sorted(v) => v.binary_search_by(|(r, _)| r.as_ref().cmp(row)).ok().map(|i| &v[i].1),
            RowMultiset::Tree(t) => t.get(row),
        }
    }

    /// Rows with their multiplicities, in row order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&[u8], &i64)> + '_> {
        match self {
            RowMultiset::Sorted(v) => Box::new(v.iter().map(|(r, w)| (r.as_ref(), w))),
            RowMultiset::Tree(t) => Box::new(t.iter().map(|(r, w)| (r.as_ref(), w))),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.iter().map(|(r, _)| r)
    }

    pub fn values(&self) -> impl Iterator<Item = &i64> {
        self.iter().map(|(_, w)| w)
    }

    pub fn first_key_value(&self) -> Option<(&[u8], &i64)> {
        match self {
            RowMultiset::Sorted(v) => v.first().map(|(r, w)| (r.as_ref(), w)),
            RowMultiset::Tree(t) => t.first_key_value().map(|(r, w)| (r.as_ref(), w)),
        }
    }

    pub fn last_key_value(&self) -> Option<(&[u8], &i64)> {
        match self {
            RowMultiset::Sorted(v) => v.last().map(|(r, w)| (r.as_ref(), w)),
            RowMultiset::Tree(t) => t.last_key_value().map(|(r, w)| (r.as_ref(), w)),
        }
    }

    /// Add `diff` to the multiplicity of `row`, dropping it at zero; returns the new one.
    fn add(&mut self, row: &[u8], diff: i64) -> i64 {
        match self {
            RowMultiset::Sorted(v) => match v.binary_search_by(|(r, _)| r.as_ref().cmp(row)) {
                Ok(i) => {
                    v[i].1 += diff;
                    let new = v[i].1;
                    if new == 0 {
                        v.remove(i);
                    }
                    new
                }
                Err(i) => {
                    v.insert(i, (row.into(), diff));
                    if v.len() > SORTED_VEC_MAX {
                        *self = RowMultiset::Tree(std::mem::take(v).into_iter().collect());
                    }
                    diff
                }
            },
            RowMultiset::Tree(t) => {
                let count = t.entry(row.into()).or_insert(0);
                *count += diff;
                let new = *count;
                if new == 0 {
                    t.remove(row);
                }
                new
            }
        }
    }
}

impl<'a> IntoIterator for &'a RowMultiset {
    type Item = (&'a [u8], &'a i64);
    type IntoIter = Box<dyn Iterator<Item = (&'a [u8], &'a i64)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// State indexed by key: `key -> {row -> multiplicity}`.
pub struct Arrangement {
    prefix: Vec<u8>,
    entries: HashMap<Box<[u8]>, RowMultiset>,
}

impl Arrangement {
    /// An empty arrangement whose storage keys all start with `prefix`.
    pub fn new(prefix: Vec<u8>) -> Arrangement {
        Arrangement { prefix, entries: HashMap::new() }
    }

    /// Load the committed state from storage.
    pub fn restore(&mut self, store: &Store) -> Result<()> {
        self.entries.clear();
        let plen = self.prefix.len();
        store.for_each_prefix(&self.prefix, |k, v| {
            let corrupt = || crate::storage::StorageError::Corrupt { what: "arrangement".into(), detail: format!("{} byte key", k.len()) };
            let (key, row) = split_segment(&k[plen..]).ok_or_else(corrupt)?;
            let w = i64::from_le_bytes(v.try_into().map_err(|_| corrupt())?);
            self.entries.entry(key.into()).or_default().add(row, w);
            Ok(())
        })?;
        Ok(())
    }

    pub fn get(&self, key: &[u8]) -> Option<&RowMultiset> {
        self.entries.get(key)
    }

    /// Number of distinct keys.
    pub fn key_count(&self) -> usize {
        self.entries.len()
    }

    /// Iterate over every `(key, rows)` entry.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &RowMultiset)> {
        self.entries.iter().map(|(k, rows)| (k.as_ref(), rows))
    }

    /// Add `diff` copies of `row` under `key`, in memory and in this tick's writes.
    /// Returns the new multiplicity.
    pub fn update(&mut self, key: &[u8], row: &[u8], diff: i64, writes: &mut TickWrites) -> Result<i64> {
        if diff == 0 {
            return Ok(self.entries.get(key).and_then(|m| m.get(row)).copied().unwrap_or(0));
        }
        let storage_key = self.storage_key(key, row);
        let new = match self.entries.get_mut(key) {
            Some(multiset) => multiset.add(row, diff),
            None => self.entries.entry(key.into()).or_default().add(row, diff),
        };
        if new == 0 {
            if self.entries.get(key).is_some_and(RowMultiset::is_empty) {
                self.entries.remove(key);
            }
            writes.delete(&storage_key);
        } else {
            writes.put(&storage_key, &new.to_le_bytes());
        }
        if new < 0 {
            return Err(DataflowError::Internal(format!(
                "arrangement multiplicity went negative ({new}); input retracted a row it never inserted"
            )));
        }
        Ok(new)
    }

    fn storage_key(&self, key: &[u8], row: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 4 + key.len() + row.len());
        k.extend_from_slice(&self.prefix);
        push_segment(&mut k, key);
        k.extend_from_slice(row);
        k
    }
}

/// A single value per key (e.g. an aggregate's last emitted row or accumulator state).
pub struct ValueMap {
    prefix: Vec<u8>,
    entries: HashMap<Vec<u8>, Vec<u8>>,
}

impl ValueMap {
    pub fn new(prefix: Vec<u8>) -> ValueMap {
        ValueMap { prefix, entries: HashMap::new() }
    }

    pub fn restore(&mut self, store: &Store) -> Result<()> {
        self.entries.clear();
        let plen = self.prefix.len();
        store.for_each_prefix(&self.prefix, |k, v| {
            self.entries.insert(k[plen..].to_vec(), v.to_vec());
            Ok(())
        })?;
        Ok(())
    }

    pub fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
        self.entries.iter()
    }

    /// Set (`Some`) or remove (`None`) the value of `key`.
    pub fn set(&mut self, key: &[u8], value: Option<Vec<u8>>, writes: &mut TickWrites) {
        let mut storage_key = self.prefix.clone();
        storage_key.extend_from_slice(key);
        match value {
            Some(v) => {
                writes.put(&storage_key, &v);
                self.entries.insert(key.to_vec(), v);
            }
            None => {
                writes.delete(&storage_key);
                self.entries.remove(key);
            }
        }
    }
}

/// Builds storage prefixes for the state of one operator: `s` + dataflow + node + slot.
pub fn state_prefix(dataflow: u32, node: u32, slot: u8) -> Vec<u8> {
    let mut p = vec![crate::storage::keyspace::STATE];
    p.extend_from_slice(&dataflow.to_be_bytes());
    p.extend_from_slice(&node.to_be_bytes());
    p.push(slot);
    p
}
