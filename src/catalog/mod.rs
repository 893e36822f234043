//! The catalog: tables, views and materialized views, their schemas and dependencies.
//!
//! Each object is persisted as its `CREATE` statement; at startup the statements are
//! replayed in id order (ids grow, and an object only depends on older ones), which
//! rebuilds schemas and dataflows, while view contents and operator state are restored
//! from storage rather than recomputed.
//!
//! Roles and privileges live here too, in Postgres' shape: every object has an owner and
//! the grants its owner made (`relowner`, `relacl`); roles are stored next to the objects
//! (`c` + 0xFF + `role/` + name) except those configured at start (`--user`), which are
//! superusers for as long as the server runs with them.

pub mod column_type;

use std::collections::BTreeMap;

use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::storage::{StorageError, Store, TickWrites, keyspace};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelationKind {
    Table,
    MaterializedView,
    /// A plain view (`CREATE VIEW`): no rows of its own; its query is inlined wherever it
    /// is read.
    View,
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
            RelationKind::View => "view",
            RelationKind::Source => "source",
            RelationKind::Sink => "sink",
        }
    }

    /// Tables and views: what SELECT reads (they share one namespace in Postgres' error
    /// messages).
    pub fn queryable(self) -> bool {
        matches!(self, RelationKind::Table | RelationKind::MaterializedView | RelationKind::View)
    }

    /// Tables and materialized views: the relations whose rows the engine stores.
    pub fn stores_rows(self) -> bool {
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
    /// Absent in entries stored before objects had owners: those belong to the first
    /// superuser (see [`Catalog::bootstrap_role`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<Grant>,
}

/// What a role may do with an object, as `GRANT` names it: the first four on tables and
/// views, USAGE on sources (binding tables to one, reading its dead letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Privilege {
    Select,
    Insert,
    Update,
    Delete,
    Usage,
}

impl Privilege {
    pub const ALL: [Privilege; 4] = [Privilege::Insert, Privilege::Select, Privilege::Update, Privilege::Delete];

    /// The privileges an object of `kind` takes (`GRANT ALL` grants them); sinks take none:
    /// only their owner (or a superuser) drops one.
    pub fn of_kind(kind: RelationKind) -> &'static [Privilege] {
        match kind {
            RelationKind::Source => &[Privilege::Usage],
            RelationKind::Sink => &[],
            _ => &Privilege::ALL,
        }
    }

    pub fn sql_name(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Usage => "USAGE",
        }
    }

    /// Its letter in an `aclitem` (`alice=r/velocity`).
    fn letter(self) -> char {
        match self {
            Privilege::Select => 'r',
            Privilege::Insert => 'a',
            Privilege::Update => 'w',
            Privilege::Delete => 'd',
            Privilege::Usage => 'U',
        }
    }
}

/// Privileges granted to one role (or, with an empty grantee, to PUBLIC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub grantee: String,
    pub privileges: Vec<Privilege>,
}

/// Who owns an object and what its owner granted to others.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ownership {
    pub owner: String,
    pub grants: Vec<Grant>,
}

impl Ownership {
    pub fn new(owner: &str) -> Ownership {
        Ownership { owner: owner.to_string(), grants: Vec::new() }
    }

    /// Whether `role` was granted `privilege` (directly or through PUBLIC); owners and
    /// superusers are checked by [`Catalog::allows`].
    fn granted(&self, role: &str, privilege: Privilege) -> bool {
        self.grants.iter().any(|g| (g.grantee == role || g.grantee.is_empty()) && g.privileges.contains(&privilege))
    }

    /// Add (`grant`) or remove privileges of `grantee`.
    pub fn change(&mut self, grantee: &str, privileges: &[Privilege], grant: bool) {
        let at = match self.grants.iter().position(|g| g.grantee == grantee) {
            Some(i) => i,
            None if grant => {
                self.grants.push(Grant { grantee: grantee.to_string(), privileges: Vec::new() });
                self.grants.len() - 1
            }
            None => return,
        };
        let held = &mut self.grants[at].privileges;
        if grant {
            held.extend_from_slice(privileges);
            held.sort();
            held.dedup();
        } else {
            held.retain(|p| !privileges.contains(p));
        }
        if held.is_empty() {
            self.grants.remove(at);
        }
    }

    /// `relacl` as Postgres shows it: NULL (None) until something is granted, then the
    /// owner's own item and one per grantee, as `grantee=letters/grantor`.
    pub fn acl(&self, kind: RelationKind) -> Option<Vec<String>> {
        if self.grants.is_empty() {
            return None;
        }
        let all = Privilege::of_kind(kind);
        let letters = |ps: &[Privilege]| -> String { all.iter().filter(|p| ps.contains(p)).map(|p| p.letter()).collect() };
        let mut items = vec![format!("{0}={1}/{0}", self.owner, letters(all))];
        items.extend(self.grants.iter().map(|g| format!("{}={}/{}", g.grantee, letters(&g.privileges), self.owner)));
        Some(items)
    }
}

/// A role: who may connect, and as whom privileges are checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub superuser: bool,
    pub login: bool,
    /// The SCRAM-SHA-256 secret of its password; the password itself is never kept.
    pub secret: Option<RoleSecret>,
    /// Configured at start (`--user`, or the trusted default `velocity`): a superuser that
    /// is not stored and cannot be altered or dropped.
    #[serde(skip)]
    pub configured: bool,
    /// `GRANT CREATE ON DATABASE velocity TO role`: may create sources and sinks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_on_database: bool,
    /// The predefined roles it was granted (`GRANT pg_read_server_files TO role`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_of: Vec<PredefinedRole>,
}

/// Postgres' predefined roles that Velocity gives meaning to; membership is granted by
/// superusers, as in Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PredefinedRole {
    /// Reads files on the server: file sources, `COPY ... FROM` a file.
    #[serde(rename = "pg_read_server_files")]
    ReadServerFiles,
    /// Writes files on the server: `COPY ... TO` a file.
    #[serde(rename = "pg_write_server_files")]
    WriteServerFiles,
}

impl PredefinedRole {
    pub const ALL: [PredefinedRole; 2] = [PredefinedRole::ReadServerFiles, PredefinedRole::WriteServerFiles];

    pub fn name(self) -> &'static str {
        match self {
            PredefinedRole::ReadServerFiles => "pg_read_server_files",
            PredefinedRole::WriteServerFiles => "pg_write_server_files",
        }
    }

    pub fn named(name: &str) -> Option<PredefinedRole> {
        PredefinedRole::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// A SCRAM salted password and its salt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleSecret {
    pub salt: Vec<u8>,
    pub salted_password: Vec<u8>,
}

/// A change to the catalog that is not a CREATE or DROP of an object: the engine thread
/// applies it and stores it in a step of its own.
#[derive(Debug, Clone)]
pub enum CatalogUpdate {
    /// The roles configured at start (not stored); the first owns objects stored before
    /// objects had owners.
    Configure(Vec<Role>),
    /// Create or replace a role.
    PutRole(Role),
    DropRole(String),
    /// Replace an object's owner and grants.
    SetOwnership {
        name: String,
        ownership: Ownership,
    },
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
    /// Its owner and the privileges granted on it.
    pub ownership: Ownership,
    /// For an append-only table with `WITH (watermark = '...')`: its event time.
    pub watermark: Option<Watermark>,
}

/// A table's watermark (`WITH (watermark = 'date_time - INTERVAL ''5'' SECOND')`): the
/// largest event time applied minus `delay_micros`. Rows older than it are late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// The event-time column (a timestamp).
    pub column: usize,
    pub delay_micros: i64,
}

/// The `pg_class.oid` of the relation with this id.
pub fn relation_oid(id: u32) -> u32 {
    RELATION_OID_BASE.saturating_add(id)
}

/// `pg_class.oid` of a relation is this plus its id. Velocity owns these oids, so the table
/// OID in RowDescription (pgjdbc `getTableName`), `pg_class`, `pg_attribute.attrelid` and
/// `pg_index.indrelid` agree without asking datafusion-pg-catalog, whose oids for other
/// objects count up from 16384.
pub const RELATION_OID_BASE: u32 = 500_000_000;

impl Relation {
    /// The relation's `pg_class.oid`.
    pub fn pg_oid(&self) -> u32 {
        relation_oid(self.id)
    }

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
            ownership: Ownership::default(),
            watermark: None,
        }
    }

    /// The same object, owned by `ownership`.
    pub fn owned(mut self, ownership: Ownership) -> Relation {
        self.ownership = ownership;
        self
    }

    fn stored(&self) -> StoredEntry {
        StoredEntry {
            id: self.id,
            name: self.name.clone(),
            kind: self.kind,
            create_sql: self.create_sql.clone(),
            owner: Some(self.ownership.owner.clone()),
            grants: self.ownership.grants.clone(),
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
    roles: BTreeMap<String, Role>,
    /// The first configured role.
    bootstrap: String,
}

/// Keys of stored roles: after every object's (`c` + id), which they never collide with.
const ROLE_PREFIX: &[u8] = &[keyspace::CATALOG, 0xFF, b'r', b'o', b'l', b'e', b'/'];

fn role_key(name: &str) -> Vec<u8> {
    let mut k = ROLE_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

impl Catalog {
    /// The catalog as stored: its roles (objects are replayed from [`Catalog::load_entries`]).
    pub fn open(store: &Store) -> Result<Catalog, StorageError> {
        let mut catalog = Catalog::default();
        for (k, v) in store.scan_prefix(ROLE_PREFIX)? {
            let role: Role = serde_json::from_slice(&v).map_err(|e| StorageError::Corrupt {
                what: format!("role {:?}", String::from_utf8_lossy(&k[ROLE_PREFIX.len()..])),
                detail: e.to_string(),
            })?;
            catalog.roles.insert(role.name.clone(), role);
        }
        Ok(catalog)
    }

    /// Read the persisted entries, in id order.
    pub fn load_entries(store: &Store) -> Result<Vec<StoredEntry>, StorageError> {
        let mut out = Vec::new();
        for (k, v) in store.scan_prefix(&[keyspace::CATALOG])? {
            if k.starts_with(ROLE_PREFIX) {
                continue;
            }
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
            let value = serde_json::to_vec(&relation.stored()).expect("catalog entries serialize");
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

impl Catalog {
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    /// The first role configured at start: owner of objects stored before objects had
    /// owners, and who a trusted connection under an unknown name acts as.
    pub fn bootstrap_role(&self) -> &str {
        &self.bootstrap
    }

    pub fn is_superuser(&self, role: &str) -> bool {
        self.roles.get(role).is_some_and(|r| r.superuser)
    }

    /// Superusers, and roles granted CREATE on the database: may create sources and sinks.
    pub fn may_create_connectors(&self, role: &str) -> bool {
        self.roles.get(role).is_some_and(|r| r.superuser || r.create_on_database)
    }

    /// Superusers, and members of `predefined`.
    pub fn has_predefined_role(&self, role: &str, predefined: PredefinedRole) -> bool {
        self.roles.get(role).is_some_and(|r| r.superuser || r.member_of.contains(&predefined))
    }

    /// Whether `role` may use `privilege` on `relation`: superusers and the owner always,
    /// others when granted.
    pub fn allows(&self, role: &str, relation: &Relation, privilege: Privilege) -> bool {
        self.is_superuser(role) || relation.ownership.owner == role || relation.ownership.granted(role, privilege)
    }

    /// Objects `role` owns or holds privileges on, as Postgres lists them when it refuses
    /// to drop the role (`owner of table t`, `privileges for table u`).
    pub fn dependencies_of_role(&self, role: &str) -> Vec<String> {
        let owned =
            self.relations.values().filter(|r| r.ownership.owner == role).map(|r| format!("owner of {} {}", r.kind.sql_name(), r.name));
        let granted = self
            .relations
            .values()
            .filter(|r| r.ownership.grants.iter().any(|g| g.grantee == role))
            .map(|r| format!("privileges for {} {}", r.kind.sql_name(), r.name));
        owned.chain(granted).collect()
    }

    /// Apply `update` in memory, adding what must be stored to `writes`.
    pub fn apply(&mut self, update: CatalogUpdate, writes: &mut TickWrites) {
        match update {
            CatalogUpdate::Configure(roles) => {
                self.roles.retain(|_, r| !r.configured);
                self.bootstrap = roles.first().map(|r| r.name.clone()).unwrap_or_default();
                for role in roles {
                    self.roles.insert(role.name.clone(), Role { configured: true, superuser: true, ..role });
                }
            }
            CatalogUpdate::PutRole(role) => {
                if !role.configured {
                    writes.put(&role_key(&role.name), &serde_json::to_vec(&role).expect("roles serialize"));
                }
                self.roles.insert(role.name.clone(), role);
            }
            CatalogUpdate::DropRole(name) => {
                writes.delete(&role_key(&name));
                self.roles.remove(&name);
            }
            CatalogUpdate::SetOwnership { name, ownership } => {
                if let Some(relation) = self.relations.get_mut(&name) {
                    relation.ownership = ownership;
                    let value = serde_json::to_vec(&relation.stored()).expect("catalog entries serialize");
                    writes.put(&entry_key(relation.id), &value);
                }
            }
        }
    }
}

fn entry_key(id: u32) -> Vec<u8> {
    let mut k = vec![keyspace::CATALOG];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stored_before_owners_still_load() {
        let old = r#"{"id":3,"name":"t","kind":"Table","create_sql":"CREATE TABLE t (id BIGINT)"}"#;
        let entry: StoredEntry = serde_json::from_str(old).expect("an old entry loads");
        assert_eq!((entry.owner, entry.grants), (None, vec![]));
    }

    #[test]
    fn grants_show_as_postgres_aclitems() {
        let mut ownership = Ownership::new("alice");
        assert_eq!(ownership.acl(RelationKind::Table), None);
        ownership.change("bob", &[Privilege::Select, Privilege::Insert], true);
        ownership.change("", &[Privilege::Select], true);
        ownership.change("bob", &[Privilege::Insert], false);
        assert_eq!(ownership.acl(RelationKind::Table).unwrap(), ["alice=arwd/alice", "bob=r/alice", "=r/alice"]);
        ownership.change("bob", &[Privilege::Select], false);
        ownership.change("", &Privilege::ALL, false);
        assert_eq!(ownership.acl(RelationKind::Table), None);
    }
}
