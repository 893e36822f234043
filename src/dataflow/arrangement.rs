//! Arrangements: operator state indexed by key, each key holding a multiset of rows.
//!
//! Kept in memory for speed and written through to RocksDB in the tick's `WriteBatch`,
//! so a restart restores it with one prefix scan instead of recomputing anything.
//!
//! The memory layout is compact, with no heap allocation per row:
//! - every `(key, row, multiplicity)` is one record in an [`Arena`] of 64 KiB pages: a 16-byte
//!   header (key length, row length, multiplicity), then the key and row bytes;
//! - an index (a `hashbrown` [`HashTable`] over arena references, hashed by the key bytes it
//!   points at) maps each key to its rows: one inline reference when the key holds one row,
//!   which is the common case (a join side indexed by primary key, a top-k partition of one),
//!   otherwise a list of references sorted by row bytes, in chunks so that inserting into a
//!   large multiset stays cheap.
//!
//! A removed record's bytes are garbage until its page is evacuated: once a third of a page is
//! garbage, its live records are copied to the page being filled and the page is released, so
//! garbage stays below about a third of the arena.

use std::cmp::Ordering;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::storage::{Store, TickWrites, push_segment, split_segment};

use super::{DataflowError, Result};

/// Bytes of an arena page. Records larger than a quarter of it get a page of their own.
const PAGE_BYTES: usize = 64 << 10;
/// Record header: key length (u32, the high bit marks a removed record), row length (u32),
/// multiplicity (i64), all little-endian.
const HEADER: usize = 16;
const DEAD: u32 = 1 << 31;
/// A page is evacuated once this fraction of it is garbage: garbage then stays below about a
/// third of the arena, and evacuating copies at most two live bytes per byte reclaimed.
const EVACUATE_AT: (usize, usize) = (1, 3);
/// Row references per chunk of a large multiset.
const CHUNK: usize = 512;

/// Where a record starts: page number (high 32 bits) and offset in the page (low 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ref(u64);

impl Ref {
    fn new(page: usize, offset: usize) -> Ref {
        Ref(((page as u64) << 32) | offset as u64)
    }
    fn page(self) -> usize {
        (self.0 >> 32) as usize
    }
    fn offset(self) -> usize {
        self.0 as u32 as usize
    }
}

/// One page of records, filled front to back.
struct Page {
    bytes: Vec<u8>,
    /// Bytes of removed records.
    dead: usize,
}

/// Records in pages; see the module documentation.
#[derive(Default)]
struct Arena {
    pages: Vec<Option<Page>>,
    /// Page numbers whose slot is free.
    free: Vec<usize>,
    /// The page new records go to.
    current: Option<usize>,
    /// A released page's buffer, kept for the next page instead of freeing and allocating.
    spare: Option<Vec<u8>>,
    /// Bytes of live records.
    live: usize,
}

impl Arena {
    fn header(&self, r: Ref) -> &[u8] {
        let page = self.pages[r.page()].as_ref().expect("reference into a released page");
        &page.bytes[r.offset()..r.offset() + HEADER]
    }

    fn lens(&self, r: Ref) -> (usize, usize) {
        let h = self.header(r);
        let klen = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) & !DEAD;
        let rlen = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        (klen as usize, rlen as usize)
    }

    fn key(&self, r: Ref) -> &[u8] {
        let (klen, _) = self.lens(r);
        let page = self.pages[r.page()].as_ref().expect("reference into a released page");
        let start = r.offset() + HEADER;
        &page.bytes[start..start + klen]
    }

    fn row(&self, r: Ref) -> &[u8] {
        let (klen, rlen) = self.lens(r);
        let page = self.pages[r.page()].as_ref().expect("reference into a released page");
        let start = r.offset() + HEADER + klen;
        &page.bytes[start..start + rlen]
    }

    fn row_mut(&mut self, r: Ref) -> &mut [u8] {
        let (klen, rlen) = self.lens(r);
        let page = self.pages[r.page()].as_mut().expect("reference into a released page");
        let start = r.offset() + HEADER + klen;
        &mut page.bytes[start..start + rlen]
    }

    fn weight(&self, r: Ref) -> i64 {
        i64::from_le_bytes(self.header(r)[8..16].try_into().expect("8 bytes"))
    }

    fn set_weight(&mut self, r: Ref, w: i64) {
        let page = self.pages[r.page()].as_mut().expect("reference into a released page");
        page.bytes[r.offset() + 8..r.offset() + 16].copy_from_slice(&w.to_le_bytes());
    }

    /// A page with room for `size` more bytes: the current one or a new one.
    fn page_for(&mut self, size: usize) -> usize {
        if let Some(p) = self.current
            && let Some(page) = &self.pages[p]
            && page.bytes.capacity() - page.bytes.len() >= size
        {
            return p;
        }
        let large = size > PAGE_BYTES / 4;
        let bytes = match (large, self.spare.take()) {
            (false, Some(spare)) => spare,
            (false, None) => Vec::with_capacity(PAGE_BYTES),
            (true, spare) => {
                self.spare = spare;
                Vec::with_capacity(size)
            }
        };
        let page = Page { bytes, dead: 0 };
        let p = match self.free.pop() {
            Some(p) => {
                self.pages[p] = Some(page);
                p
            }
            None => {
                self.pages.push(Some(page));
                self.pages.len() - 1
            }
        };
        if !large {
            self.current = Some(p);
        }
        p
    }

    fn alloc(&mut self, key: &[u8], row: &[u8], w: i64) -> Result<Ref> {
        let (klen, rlen) = match (u32::try_from(key.len()), u32::try_from(row.len())) {
            (Ok(k), Ok(r)) if k < DEAD => (k, r),
            _ => return Err(DataflowError::Internal(format!("arrangement record too large ({} + {} bytes)", key.len(), row.len()))),
        };
        let size = HEADER + key.len() + row.len();
        let p = self.page_for(size);
        let page = self.pages[p].as_mut().expect("page just chosen");
        let offset = page.bytes.len();
        page.bytes.extend_from_slice(&klen.to_le_bytes());
        page.bytes.extend_from_slice(&rlen.to_le_bytes());
        page.bytes.extend_from_slice(&w.to_le_bytes());
        page.bytes.extend_from_slice(key);
        page.bytes.extend_from_slice(row);
        self.live += size;
        Ok(Ref::new(p, offset))
    }

    /// Copy a live record of another page into the current page.
    fn copy(&mut self, r: Ref) -> Ref {
        let (klen, rlen) = self.lens(r);
        let size = HEADER + klen + rlen;
        let p = self.page_for(size);
        debug_assert_ne!(p, r.page(), "a page is never evacuated into itself");
        let mut target = std::mem::take(&mut self.pages[p].as_mut().expect("page just chosen").bytes);
        let offset = target.len();
        let source = &self.pages[r.page()].as_ref().expect("reference into a released page").bytes;
        target.extend_from_slice(&source[r.offset()..r.offset() + size]);
        self.pages[p].as_mut().expect("page just chosen").bytes = target;
        Ref::new(p, offset)
    }

    /// Mark a record removed. Returns its page when that page should now be evacuated
    /// (half of it garbage); a page with no live record left is released right away.
    fn remove(&mut self, r: Ref) -> Option<usize> {
        let (klen, rlen) = self.lens(r);
        let size = HEADER + klen + rlen;
        self.live -= size;
        let p = r.page();
        let page = self.pages[p].as_mut().expect("reference into a released page");
        let flag = u32::from_le_bytes(page.bytes[r.offset()..r.offset() + 4].try_into().expect("4 bytes")) | DEAD;
        page.bytes[r.offset()..r.offset() + 4].copy_from_slice(&flag.to_le_bytes());
        page.dead += size;
        if self.current == Some(p) {
            return None;
        }
        if page.dead == page.bytes.len() {
            self.release(p);
            None
        } else {
            self.should_evacuate(p).then_some(p)
        }
    }

    /// Whether page `p` is mostly garbage (see [`EVACUATE_AT`]) and not the page being filled.
    fn should_evacuate(&self, p: usize) -> bool {
        match &self.pages[p] {
            Some(page) if self.current != Some(p) => page.dead * EVACUATE_AT.1 >= page.bytes.len() * EVACUATE_AT.0,
            _ => false,
        }
    }

    /// The live records of page `p`, in order.
    fn live_records(&self, p: usize) -> Vec<Ref> {
        let Some(page) = &self.pages[p] else { return Vec::new() };
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < page.bytes.len() {
            let r = Ref::new(p, offset);
            let flag = u32::from_le_bytes(page.bytes[offset..offset + 4].try_into().expect("4 bytes"));
            let (klen, rlen) = self.lens(r);
            if flag & DEAD == 0 {
                out.push(r);
            }
            offset += HEADER + klen + rlen;
        }
        out
    }

    fn release(&mut self, p: usize) {
        if let Some(page) = self.pages[p].take() {
            if page.bytes.capacity() == PAGE_BYTES && self.spare.is_none() {
                let mut bytes = page.bytes;
                bytes.clear();
                self.spare = Some(bytes);
            }
            if self.current == Some(p) {
                self.current = None;
            }
            self.free.push(p);
        }
    }

    fn clear(&mut self) {
        *self = Arena::default();
    }

    /// Heap bytes held (pages, live or not, and the page table).
    fn allocated_bytes(&self) -> usize {
        let pages: usize = self.pages.iter().flatten().map(|p| p.bytes.capacity()).sum();
        pages + self.spare.as_ref().map_or(0, Vec::capacity) + self.pages.capacity() * size_of::<Option<Page>>()
    }
}

/// The rows of one key in the index.
enum Slot {
    One(Ref),
    Many(Box<RowList>),
}

/// The rows of a key holding more than one, sorted by row bytes.
struct RowList {
    chunks: Vec<Vec<Ref>>,
    len: usize,
    /// Sum of the multiplicities.
    total: i64,
}

impl Slot {
    fn first(&self) -> Ref {
        match self {
            Slot::One(r) => *r,
            Slot::Many(list) => list.chunks[0][0],
        }
    }
}

impl RowList {
    /// Where `row` is (`Ok`) or would be inserted (`Err`), as (chunk, index).
    fn find(&self, arena: &Arena, row: &[u8]) -> std::result::Result<(usize, usize), (usize, usize)> {
        // The first chunk whose last row is not below `row`.
        let c = self.chunks.partition_point(|chunk| arena.row(*chunk.last().expect("chunks are never empty")) < row);
        if c == self.chunks.len() {
            let last = self.chunks.len() - 1;
            return Err((last, self.chunks[last].len()));
        }
        match self.chunks[c].binary_search_by(|r| arena.row(*r).cmp(row)) {
            Ok(i) => Ok((c, i)),
            Err(i) => Err((c, i)),
        }
    }

    fn insert(&mut self, at: (usize, usize), r: Ref) {
        let chunk = &mut self.chunks[at.0];
        chunk.insert(at.1, r);
        if chunk.len() > CHUNK {
            let tail = chunk.split_off(CHUNK / 2);
            self.chunks.insert(at.0 + 1, tail);
        }
        self.len += 1;
    }

    fn remove(&mut self, at: (usize, usize)) {
        let chunk = &mut self.chunks[at.0];
        chunk.remove(at.1);
        if chunk.is_empty() {
            self.chunks.remove(at.0);
        }
        self.len -= 1;
    }

    fn only(&self) -> Option<Ref> {
        (self.len == 1).then(|| self.chunks[0][0])
    }
}

/// The index and the arena together, in memory only: the mechanics behind [`Arrangement`],
/// [`ValueMap`] and the temporal filter's rows (which write storage in their own layout).
#[derive(Default)]
pub(super) struct Table {
    hasher: DefaultHashBuilder,
    index: HashTable<Slot>,
    arena: Arena,
}

impl Table {
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn slot(&self, key: &[u8]) -> Option<&Slot> {
        let arena = &self.arena;
        self.index.find(self.hash(key), |s| arena.key(s.first()) == key)
    }

    pub(super) fn clear(&mut self) {
        self.index = HashTable::new();
        self.arena.clear();
    }

    /// The rows of `key`.
    pub(super) fn get(&self, key: &[u8]) -> Option<RowMultiset<'_>> {
        self.slot(key).map(|slot| RowMultiset { arena: &self.arena, slot })
    }

    /// Remove `key` with all its rows.
    pub(super) fn remove_key(&mut self, key: &[u8]) {
        let hash = self.hash(key);
        let Table { index, arena, .. } = self;
        let Ok(occupied) = index.find_entry(hash, |s| arena.key(s.first()) == key) else { return };
        let refs: Vec<Ref> = match occupied.remove().0 {
            Slot::One(r) => vec![r],
            Slot::Many(list) => list.chunks.into_iter().flatten().collect(),
        };
        let mut pages: Vec<usize> = refs.into_iter().filter_map(|r| self.arena.remove(r)).collect();
        pages.dedup();
        for p in pages {
            self.evacuate(p);
        }
        self.key_removed();
    }

    /// Add `diff` to the multiplicity of `row` under `key`, dropping it at zero; returns the
    /// new multiplicity.
    pub(super) fn add(&mut self, key: &[u8], row: &[u8], diff: i64) -> Result<i64> {
        let hash = self.hash(key);
        let Table { hasher, index, arena } = self;
        let entry = index.find_entry(hash, |s| arena.key(s.first()) == key);
        let mut removed = None;
        let mut key_removed = false;
        let new = match entry {
            Err(absent) => {
                let r = arena.alloc(key, row, diff)?;
                absent.into_table().insert_unique(hash, Slot::One(r), |s| hasher.hash_one(arena.key(s.first())));
                diff
            }
            Ok(mut occupied) => match occupied.get_mut() {
                Slot::One(r) => {
                    let r = *r;
                    match arena.row(r).cmp(row) {
                        Ordering::Equal => {
                            let new = arena.weight(r) + diff;
                            if new == 0 {
                                occupied.remove();
                                removed = Some(r);
                                key_removed = true;
                            } else {
                                arena.set_weight(r, new);
                            }
                            new
                        }
                        order => {
                            let other = arena.alloc(key, row, diff)?;
                            let chunk = if order == Ordering::Less { vec![r, other] } else { vec![other, r] };
                            let total = arena.weight(r) + diff;
                            *occupied.get_mut() = Slot::Many(Box::new(RowList { chunks: vec![chunk], len: 2, total }));
                            diff
                        }
                    }
                }
                Slot::Many(list) => {
                    list.total += diff;
                    match list.find(arena, row) {
                        Ok(at) => {
                            let r = list.chunks[at.0][at.1];
                            let new = arena.weight(r) + diff;
                            if new == 0 {
                                list.remove(at);
                                removed = Some(r);
                                if let Some(only) = list.only() {
                                    *occupied.get_mut() = Slot::One(only);
                                }
                            } else {
                                arena.set_weight(r, new);
                            }
                            new
                        }
                        Err(at) => {
                            let r = arena.alloc(key, row, diff)?;
                            list.insert(at, r);
                            diff
                        }
                    }
                }
            },
        };
        if let Some(r) = removed
            && let Some(page) = self.arena.remove(r)
        {
            self.evacuate(page);
        }
        if key_removed {
            self.key_removed();
        }
        Ok(new)
    }

    /// Set the only row of `key` (`Some`), or remove the key (`None`).
    fn set(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let hash = self.hash(key);
        let Table { hasher, index, arena } = self;
        let mut removed = None;
        let mut key_removed = false;
        match (index.find_entry(hash, |s| arena.key(s.first()) == key), value) {
            (Err(_), None) => {}
            (Err(absent), Some(v)) => {
                let r = arena.alloc(key, v, 1)?;
                absent.into_table().insert_unique(hash, Slot::One(r), |s| hasher.hash_one(arena.key(s.first())));
            }
            (Ok(occupied), None) => {
                removed = Some(occupied.remove().0.first());
                key_removed = true;
            }
            (Ok(mut occupied), Some(v)) => {
                let r = occupied.get().first();
                if arena.row(r).len() == v.len() {
                    arena.row_mut(r).copy_from_slice(v);
                } else {
                    *occupied.get_mut() = Slot::One(arena.alloc(key, v, 1)?);
                    removed = Some(r);
                }
            }
        }
        if let Some(r) = removed
            && let Some(page) = self.arena.remove(r)
        {
            self.evacuate(page);
        }
        if key_removed {
            self.key_removed();
        }
        Ok(())
    }

    /// Move the live records of page `p` to the current page and release it (if it still
    /// qualifies: not the current page, enough of it garbage).
    fn evacuate(&mut self, p: usize) {
        if !self.arena.should_evacuate(p) {
            return;
        }
        for old in self.arena.live_records(p) {
            let new = self.arena.copy(old);
            let Table { hasher, index, arena } = self;
            let key = arena.key(new);
            let slot = index.find_mut(hasher.hash_one(key), |s| arena.key(s.first()) == key).expect("a live record has its key indexed");
            match slot {
                Slot::One(r) => {
                    debug_assert_eq!(*r, old);
                    *r = new;
                }
                Slot::Many(list) => {
                    let at = list.find(arena, arena.row(new)).expect("a live record is in its key's rows");
                    debug_assert_eq!(list.chunks[at.0][at.1], old);
                    list.chunks[at.0][at.1] = new;
                }
            }
        }
        self.arena.release(p);
    }

    /// After a key was removed: a table that lost most of its keys gives the memory of its
    /// index back too (amortised: it has shrunk fourfold since it last grew).
    fn key_removed(&mut self) {
        if self.index.capacity() > 64 && self.index.len() < self.index.capacity() / 4 {
            let Table { hasher, index, arena } = self;
            index.shrink_to_fit(|s| hasher.hash_one(arena.key(s.first())));
        }
    }

    pub(super) fn allocated_bytes(&self) -> usize {
        let lists: usize = self
            .index
            .iter()
            .map(|s| match s {
                Slot::One(_) => 0,
                Slot::Many(list) => {
                    size_of::<RowList>()
                        + list.chunks.capacity() * size_of::<Vec<Ref>>()
                        + list.chunks.iter().map(|c| c.capacity() * 8).sum::<usize>()
                }
            })
            .sum();
        self.index.allocation_size() + lists + self.arena.allocated_bytes()
    }
}

/// The rows of one key of an [`Arrangement`], with their multiplicities, ordered by their
/// memcomparable bytes.
#[derive(Clone, Copy)]
pub struct RowMultiset<'a> {
    arena: &'a Arena,
    slot: &'a Slot,
}

impl<'a> RowMultiset<'a> {
    pub fn len(&self) -> usize {
        match self.slot {
            Slot::One(_) => 1,
            Slot::Many(list) => list.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sum of the multiplicities.
    pub fn total(&self) -> i64 {
        match self.slot {
            Slot::One(r) => self.arena.weight(*r),
            Slot::Many(list) => list.total,
        }
    }

    /// The multiplicity of `row`, if present.
    pub fn get(&self, row: &[u8]) -> Option<i64> {
        match self.slot {
            Slot::One(r) => (self.arena.row(*r) == row).then(|| self.arena.weight(*r)),
            Slot::Many(list) => list.find(self.arena, row).ok().map(|(c, i)| self.arena.weight(list.chunks[c][i])),
        }
    }

    /// Rows with their multiplicities, in row order.
    pub fn iter(&self) -> Iter<'a> {
        let (chunks, current): (&'a [Vec<Ref>], &'a [Ref]) = match self.slot {
            Slot::One(r) => (&[], std::slice::from_ref(r)),
            Slot::Many(list) => (&list.chunks, &[]),
        };
        Iter { arena: self.arena, chunks: chunks.iter(), current: current.iter() }
    }

    pub fn keys(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter().map(|(r, _)| r)
    }

    pub fn values(&self) -> impl Iterator<Item = i64> + 'a {
        self.iter().map(|(_, w)| w)
    }

    pub fn first_key_value(&self) -> Option<(&'a [u8], i64)> {
        let r = match self.slot {
            Slot::One(r) => *r,
            Slot::Many(list) => *list.chunks.first()?.first()?,
        };
        Some((self.arena.row(r), self.arena.weight(r)))
    }

    pub fn last_key_value(&self) -> Option<(&'a [u8], i64)> {
        let r = match self.slot {
            Slot::One(r) => *r,
            Slot::Many(list) => *list.chunks.last()?.last()?,
        };
        Some((self.arena.row(r), self.arena.weight(r)))
    }
}

/// Iterator over the rows of a [`RowMultiset`].
pub struct Iter<'a> {
    arena: &'a Arena,
    chunks: std::slice::Iter<'a, Vec<Ref>>,
    current: std::slice::Iter<'a, Ref>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], i64);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.current.next() {
                return Some((self.arena.row(*r), self.arena.weight(*r)));
            }
            self.current = self.chunks.next()?.iter();
        }
    }
}

impl<'a> IntoIterator for RowMultiset<'a> {
    type Item = (&'a [u8], i64);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// State indexed by key: `key -> {row -> multiplicity}`.
pub struct Arrangement {
    prefix: Vec<u8>,
    table: Table,
    /// Reused for building storage keys.
    scratch: Vec<u8>,
}

impl Arrangement {
    /// An empty arrangement whose storage keys all start with `prefix`.
    pub fn new(prefix: Vec<u8>) -> Arrangement {
        Arrangement { prefix, table: Table::default(), scratch: Vec::new() }
    }

    /// Load the committed state from storage.
    pub fn restore(&mut self, store: &Store) -> Result<()> {
        self.table.clear();
        let plen = self.prefix.len();
        let table = &mut self.table;
        store.for_each_prefix(&self.prefix, |k, v| {
            let corrupt = || crate::storage::StorageError::Corrupt { what: "arrangement".into(), detail: format!("{} byte key", k.len()) };
            let (key, row) = split_segment(&k[plen..]).ok_or_else(corrupt)?;
            let w = i64::from_le_bytes(v.try_into().map_err(|_| corrupt())?);
            table
                .add(key, row, w)
                .map_err(|e| crate::storage::StorageError::Corrupt { what: "arrangement".into(), detail: e.to_string() })?;
            Ok(())
        })?;
        Ok(())
    }

    pub fn get(&self, key: &[u8]) -> Option<RowMultiset<'_>> {
        self.table.get(key)
    }

    /// Number of distinct keys.
    pub fn key_count(&self) -> usize {
        self.table.index.len()
    }

    /// Iterate over every `(key, rows)` entry.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], RowMultiset<'_>)> {
        let arena = &self.table.arena;
        self.table.index.iter().map(move |slot| (arena.key(slot.first()), RowMultiset { arena, slot }))
    }

    /// Heap bytes this arrangement holds.
    pub fn allocated_bytes(&self) -> usize {
        self.table.allocated_bytes() + self.scratch.capacity()
    }

    /// Add `diff` copies of `row` under `key`, in memory and in this tick's writes.
    /// Returns the new multiplicity.
    pub fn update(&mut self, key: &[u8], row: &[u8], diff: i64, writes: &mut TickWrites) -> Result<i64> {
        if diff == 0 {
            return Ok(self.get(key).and_then(|m| m.get(row)).unwrap_or(0));
        }
        let new = self.table.add(key, row, diff)?;
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.prefix);
        push_segment(&mut self.scratch, key);
        self.scratch.extend_from_slice(row);
        if new == 0 {
            writes.delete(&self.scratch);
        } else {
            writes.put(&self.scratch, &new.to_le_bytes());
        }
        if new < 0 {
            return Err(DataflowError::Internal(format!(
                "arrangement multiplicity went negative ({new}); input retracted a row it never inserted"
            )));
        }
        Ok(new)
    }
}

/// A single value per key (e.g. an aggregate's last emitted row or accumulator state), in the
/// same compact layout as an [`Arrangement`] (the value is the record's row).
pub struct ValueMap {
    prefix: Vec<u8>,
    table: Table,
    scratch: Vec<u8>,
}

impl ValueMap {
    pub fn new(prefix: Vec<u8>) -> ValueMap {
        ValueMap { prefix, table: Table::default(), scratch: Vec::new() }
    }

    pub fn restore(&mut self, store: &Store) -> Result<()> {
        self.table.clear();
        let plen = self.prefix.len();
        let table = &mut self.table;
        store.for_each_prefix(&self.prefix, |k, v| {
            table
                .add(&k[plen..], v, 1)
                .map_err(|e| crate::storage::StorageError::Corrupt { what: "operator state".into(), detail: e.to_string() })?;
            Ok(())
        })?;
        Ok(())
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.table.slot(key).map(|slot| self.table.arena.row(slot.first()))
    }

    pub fn len(&self) -> usize {
        self.table.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let arena = &self.table.arena;
        self.table.index.iter().map(move |slot| (arena.key(slot.first()), arena.row(slot.first())))
    }

    /// Heap bytes this map holds.
    pub fn allocated_bytes(&self) -> usize {
        self.table.allocated_bytes() + self.scratch.capacity()
    }

    /// Set (`Some`) or remove (`None`) the value of `key`.
    pub fn set(&mut self, key: &[u8], value: Option<&[u8]>, writes: &mut TickWrites) -> Result<()> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.prefix);
        self.scratch.extend_from_slice(key);
        match value {
            Some(v) => writes.put(&self.scratch, v),
            None => writes.delete(&self.scratch),
        }
        self.table.set(key, value)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::dataflow::testing::Rng;

    type Model = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, i64>>;

    fn check(arrangement: &Arrangement, model: &Model) {
        assert_eq!(arrangement.key_count(), model.len());
        for (key, rows) in model {
            let got = arrangement.get(key).unwrap_or_else(|| panic!("key {key:?} missing"));
            let got_rows: Vec<(Vec<u8>, i64)> = got.iter().map(|(r, w)| (r.to_vec(), w)).collect();
            let want: Vec<(Vec<u8>, i64)> = rows.iter().map(|(r, w)| (r.clone(), *w)).collect();
            assert_eq!(got_rows, want, "rows of key {key:?}");
            assert_eq!(got.len(), rows.len());
            assert_eq!(got.total(), rows.values().sum::<i64>());
            assert_eq!(got.first_key_value().map(|(r, w)| (r.to_vec(), w)), want.first().cloned());
            assert_eq!(got.last_key_value().map(|(r, w)| (r.to_vec(), w)), want.last().cloned());
            for (row, w) in rows {
                assert_eq!(got.get(row), Some(*w));
            }
        }
        let mut seen: Vec<Vec<u8>> = arrangement
            .iter()
            .map(|(k, rows)| {
                assert_eq!(rows.len(), model[k].len());
                k.to_vec()
            })
            .collect();
        seen.sort();
        assert_eq!(seen, model.keys().cloned().collect::<Vec<_>>());
    }

    /// Random inserts and retractions over a few hot keys (large multisets, split chunks) and
    /// many cold ones, with row sizes from empty to larger than a quarter page: the arrangement
    /// matches a map model throughout, after its pages are evacuated, and after a restore.
    #[test]
    fn matches_a_model_through_evacuations_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let prefix = state_prefix(1, 2, 3);
        let mut arrangement = Arrangement::new(prefix.clone());
        let mut model: Model = BTreeMap::new();
        let mut rng = Rng::new(7);
        let mut live: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for round in 0..40 {
            let mut writes = TickWrites::default();
            for _ in 0..500 {
                let retract = !live.is_empty() && rng.below(100) < 45;
                let (key, row, diff) = if retract {
                    let i = rng.below(live.len() as u64) as usize;
                    let (k, r) = live[i].clone();
                    (k, r, -1)
                } else {
                    let key =
                        if rng.below(4) == 0 { vec![b'h', rng.below(3) as u8] } else { (rng.below(3000) as u32).to_be_bytes().to_vec() };
                    let len = match rng.below(50) {
                        0 => 0,
                        1 => 20_000 + rng.below(10_000) as usize,
                        _ => 1 + rng.below(300) as usize,
                    };
                    let mut row: Vec<u8> = (0..len).map(|_| rng.below(4) as u8).collect();
                    row.truncate(len);
                    (key, row, 1 + rng.below(2) as i64)
                };
                let new = arrangement.update(&key, &row, diff, &mut writes).unwrap();
                let rows = model.entry(key.clone()).or_default();
                let w = rows.entry(row.clone()).or_insert(0);
                *w += diff;
                assert_eq!(new, *w);
                if *w == 0 {
                    rows.remove(&row);
                    if let Some(i) = live.iter().position(|(k, r)| *k == key && *r == row) {
                        live.swap_remove(i);
                    }
                } else if diff > 0 && !live.iter().any(|(k, r)| *k == key && *r == row) {
                    live.push((key.clone(), row.clone()));
                }
                if rows.is_empty() {
                    model.remove(&key);
                }
            }
            store.commit(writes).unwrap();
            check(&arrangement, &model);
            if round % 10 == 9 {
                let mut restored = Arrangement::new(prefix.clone());
                restored.restore(&store).unwrap();
                check(&restored, &model);
                arrangement = restored;
            }
        }
        // Retract everything: the arena gives its pages back.
        let mut writes = TickWrites::default();
        for (key, rows) in std::mem::take(&mut model) {
            for (row, w) in rows {
                assert_eq!(arrangement.update(&key, &row, -w, &mut writes).unwrap(), 0);
            }
        }
        check(&arrangement, &model);
        assert!(arrangement.table.arena.live == 0);
        // What is left: the page being filled, one spare page and the (shrunk) index.
        let left = arrangement.table.allocated_bytes();
        assert!(left <= 2 * PAGE_BYTES + 8192, "{left} bytes left");
    }

    #[test]
    fn value_map_sets_replaces_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let prefix = state_prefix(1, 2, 0);
        let mut map = ValueMap::new(prefix.clone());
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut rng = Rng::new(11);
        for _ in 0..20 {
            let mut writes = TickWrites::default();
            for _ in 0..400 {
                let key = (rng.below(500) as u32).to_be_bytes().to_vec();
                if rng.below(4) == 0 {
                    map.set(&key, None, &mut writes).unwrap();
                    model.remove(&key);
                } else {
                    let value: Vec<u8> = (0..rng.below(40)).map(|_| rng.below(256) as u8).collect();
                    map.set(&key, Some(&value), &mut writes).unwrap();
                    model.insert(key, value);
                }
            }
            store.commit(writes).unwrap();
            assert_eq!(map.len(), model.len());
            for (k, v) in &model {
                assert_eq!(map.get(k), Some(v.as_slice()));
            }
            let mut restored = ValueMap::new(prefix.clone());
            restored.restore(&store).unwrap();
            let mut all: Vec<(Vec<u8>, Vec<u8>)> = restored.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            all.sort();
            assert_eq!(all, model.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>());
        }
    }
}
