//! The catalog: tables and materialized views, their schemas and dependencies.
//!
//! Each object is persisted as its `CREATE` statement; at startup the statements are
//! replayed in id order (ids grow, and an object only depends on older ones), which
//! rebuilds schemas and dataflows, while view contents and operator state are restored
//! from storage rather than recomputed.

use std::collections::BTreeMap;

use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::storage::{StorageError, Store, TickWrites, keyspace};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelationKind {
    Table,
    MaterializedView,
    /// A source: a connection whose changes feed the tables bound to it. Not queryable.
    Source,
    /// A sink: delivers every change of the relation it depends on. Not queryable.
    Sink,
}

impl RelationKind {
    pub fn sql_name(self) -> &'static str {
        match self {
            RelationKind::Table => "table",
            RelationKind::MaterializedView => "materialized view",
            RelationKind::Source => "source",
            RelationKind::Sink => "sink",
        }
    }

    /// Tables and materialized views: what SELECT reads (they share one namespace in
    /// Postgres' error messages).
    pub fn queryable(self) -> bool {
        matches!(self, RelationKind::Table | RelationKind::MaterializedView)
    }
}

/// What is persisted per object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEntry {
    pub id: u32,
    pub name: String,
    pub kind: RelationKind,
    pub create_sql: String,
}

/// A live catalog object.
#[derive(Debug, Clone)]
pub struct Relation {
    pub id: u32,
    pub name: String,
    pub kind: RelationKind,
    pub create_sql: String,
    pub schema: SchemaRef,
    /// Primary key column indices; empty for views and key-less tables.
    pub primary_key: Vec<usize>,
    /// Names of the relations this one reads (for a bound table: its source).
    pub depends_on: Vec<String>,
    /// For a table fed by a source: which source, and the upstream table it mirrors.
    pub binding: Option<SourceBinding>,
}

impl Relation {
    /// A source or sink: an object without rows of its own.
    pub fn rowless(id: u32, name: &str, kind: RelationKind, create_sql: &str, depends_on: Vec<String>) -> Relation {
        Relation {
            id,
            name: name.to_string(),
            kind,
            create_sql: create_sql.to_string(),
            schema: std::sync::Arc::new(arrow::datatypes::Schema::empty()),
            primary_key: vec![],
            depends_on,
            binding: None,
        }
    }
}

/// `CREATE TABLE ... WITH (source = 'tms', upstream = 'public.shipments')`.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceBinding {
    pub source: String,
    pub upstream: String,
}

#[derive(Debug, Default, Clone)]
pub struct Catalog {
    relations: BTreeMap<String, Relation>,
    next_id: u32,
}

impl Catalog {
    /// Read the persisted entries, in id order.
    pub fn load_entries(store: &Store) -> Result<Vec<StoredEntry>, StorageError> {
        let mut out = Vec::new();
        for (k, v) in store.scan_prefix(&[keyspace::CATALOG])? {
            let entry: StoredEntry = serde_json::from_slice(&v).map_err(|e| StorageError::Corrupt {
                what: format!("catalog entry {:?}", String::from_utf8_lossy(&k)),
                detail: e.to_string(),
            })?;
            out.push(entry);
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    pub fn allocate_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// Ensure future ids are above `id` (after replaying stored entries).
    pub fn observe_id(&mut self, id: u32) {
        self.next_id = self.next_id.max(id);
    }

    pub fn get(&self, name: &str) -> Option<&Relation> {
        self.relations.get(name)
    }

    pub fn by_id(&self, id: u32) -> Option<&Relation> {
        self.relations.values().find(|r| r.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Relation> {
        self.relations.values()
    }

    /// Objects that read `name` directly.
    pub fn dependents(&self, name: &str) -> Vec<&Relation> {
        self.relations.values().filter(|r| r.depends_on.iter().any(|d| d == name)).collect()
    }

    /// `name` and everything that depends on it transitively, dependents first.
    pub fn drop_order(&self, name: &str) -> Vec<Relation> {
        let mut order: Vec<Relation> = Vec::new();
        self.collect_dependents(name, &mut order);
        order.sort_by_key(|r| std::cmp::Reverse(r.id));
        order.dedup_by_key(|r| r.id);
        order
    }

    fn collect_dependents(&self, name: &str, out: &mut Vec<Relation>) {
        if let Some(r) = self.relations.get(name) {
            out.push(r.clone());
            for d in self.dependents(name) {
                self.collect_dependents(&d.name.clone(), out);
            }
        }
    }

    pub fn insert(&mut self, relation: Relation, writes: Option<&mut TickWrites>) {
        if let Some(writes) = writes {
            let entry =
                StoredEntry { id: relation.id, name: relation.name.clone(), kind: relation.kind, create_sql: relation.create_sql.clone() };
            let value = serde_json::to_vec(&entry).expect("catalog entries serialize");
            writes.put(&entry_key(relation.id), &value);
        }
        self.observe_id(relation.id);
        self.relations.insert(relation.name.clone(), relation);
    }

    pub fn remove(&mut self, name: &str, writes: &mut TickWrites) -> Option<Relation> {
        let r = self.relations.remove(name)?;
        writes.delete(&entry_key(r.id));
        Some(r)
    }
}

fn entry_key(id: u32) -> Vec<u8> {
    let mut k = vec![keyspace::CATALOG];
    k.extend_from_slice(&id.to_be_bytes());
    k
}
