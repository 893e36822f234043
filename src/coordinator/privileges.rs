//! Roles and privileges, in Postgres' shape: who may read, change, create and drop what.
//!
//! Superusers may do everything; an object's owner everything with it; other roles what its
//! owner granted them (USAGE on a source binds tables to it). Sources and sinks read files
//! and connect to hosts as the server: creating one takes a superuser or CREATE on the
//! database, a file source also membership in `pg_read_server_files`. Superusers manage roles. A materialized view reads its inputs with its
//! owner's rights, checked when it is created, so granting SELECT on a view does not grant
//! its inputs; a plain view reads them with its owner's rights too, checked at every read.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    CopySource, CopyTarget, Expr, FunctionArg, FunctionArgExpr, ObjectName, Query, Statement, TableFactor, Value, Visit, Visitor,
};

use super::{Coordinator, CoordinatorError, Result};
use crate::catalog::{CatalogUpdate, Ownership, PredefinedRole, Privilege, Relation, RelationKind, Role, RoleSecret};

/// `CREATE ROLE` / `ALTER ROLE` options; unset ones keep their value (or default to off).
#[derive(Debug, Default, Clone)]
pub struct RoleOptions {
    pub superuser: Option<bool>,
    pub login: Option<bool>,
    /// `PASSWORD 'x'` as its SCRAM secret, or `PASSWORD NULL` (no password).
    pub password: Option<Option<RoleSecret>>,
}

/// Schemas of the system catalogs: readable by every role.
const SYSTEM_SCHEMAS: &[&str] = &["pg_catalog", "information_schema", "velocity_catalog"];

impl Coordinator {
    /// SELECT, INSERT, UPDATE or DELETE on `name` for `role`. A name the catalog does not
    /// hold passes: the statement then fails on it as it would without privileges.
    pub(super) fn require(&self, role: &str, name: &str, privilege: Privilege) -> Result<()> {
        let catalog = self.engine.catalog();
        match catalog.get(name) {
            Some(r) if !catalog.allows(role, r, privilege) => {
                Err(CoordinatorError::InsufficientPrivilege { privilege, kind: r.kind, name: r.name.clone() })
            }
            _ => Ok(()),
        }
    }

    pub(super) fn require_owner(&self, role: &str, name: &str) -> Result<()> {
        let catalog = self.engine.catalog();
        match catalog.get(name) {
            Some(r) if !catalog.is_superuser(role) && r.ownership.owner != role => {
                Err(CoordinatorError::NotOwner { kind: r.kind, name: r.name.clone() })
            }
            _ => Ok(()),
        }
    }

    pub(super) fn require_superuser(&self, role: &str, what: &str) -> Result<()> {
        if self.engine.catalog().is_superuser(role) {
            Ok(())
        } else {
            Err(CoordinatorError::PermissionDenied(format!("must be superuser to {what}")))
        }
    }

    /// SELECT on every table and materialized view `stmt` reads (`FROM`, joins, subqueries,
    /// `changes('t')`), but for `except` (a DML statement's target, checked on its own).
    /// System catalogs are readable by all.
    /// `COPY ... TO/FROM` a server file or program also takes a superuser, as in Postgres.
    pub fn authorize_reads(&self, role: &str, stmt: &Statement, except: Option<&str>) -> Result<()> {
        if let Statement::Copy { source, to, target, .. } = stmt {
            match (target, *to) {
                (CopyTarget::Program { .. }, _) => self.require_superuser(role, "COPY to or from an external program")?,
                (CopyTarget::File { .. }, false) => {
                    self.require_predefined_role(role, PredefinedRole::ReadServerFiles, "COPY from a file")?
                }
                (CopyTarget::File { .. }, true) => {
                    self.require_predefined_role(role, PredefinedRole::WriteServerFiles, "COPY to a file")?
                }
                _ => {}
            }
            if let CopySource::Table { table_name, .. } = source
                && let Some(name) = catalog_name(table_name)
            {
                self.require(role, &name, if *to { Privilege::Select } else { Privilege::Insert })?;
            }
        }
        for name in self.relations_named(stmt).iter().filter(|n| Some(n.as_str()) != except) {
            self.require_select(role, name)?;
        }
        Ok(())
    }

    /// The tables and views of the catalog that `stmt` names (`FROM`, joins, subqueries,
    /// `changes('t')`), but its CTEs: what it reads directly. What a view it names reads is
    /// not among them.
    pub(super) fn relations_named(&self, stmt: &Statement) -> Vec<String> {
        let mut reads = Reads::default();
        let _ = stmt.visit(&mut reads);
        let catalog = self.engine.catalog();
        let mut names: Vec<String> =
            reads.names.into_iter().filter(|n| !reads.ctes.contains(n) && catalog.get(n).is_some_and(|r| r.kind.queryable())).collect();
        names.sort();
        names.dedup();
        names
    }

    /// SELECT on `name` for `role`. A plain view reads what it names with its owner's
    /// rights, as in Postgres: checked at every read, since its owner's grants may change.
    pub(super) fn require_select(&self, role: &str, name: &str) -> Result<()> {
        self.require(role, name, Privilege::Select)?;
        let view = {
            let catalog = self.engine.catalog();
            catalog.get(name).filter(|r| r.kind == RelationKind::View).map(|r| (r.ownership.owner.clone(), r.depends_on.clone()))
        };
        if let Some((owner, reads)) = view {
            for read in &reads {
                self.require_select(&owner, read)?;
            }
        }
        Ok(())
    }

    /// `SUBSCRIBE` and other reads of one relation by name.
    pub fn authorize_read(&self, role: &str, name: &str) -> Result<()> {
        self.require_select(role, name)
    }

    /// `GRANT privileges ON objects TO grantees` (`grant`) or `REVOKE ... FROM ...`: by the
    /// objects' owner or a superuser. `kind` is the class the statement names: tables and
    /// views (`None`), or sources or sinks. An empty grantee is PUBLIC.
    pub async fn grant(
        &self,
        role: &str,
        kind: Option<RelationKind>,
        privileges: &[Privilege],
        objects: &[String],
        grantees: &[String],
        grant: bool,
    ) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        let mut updates = Vec::new();
        {
            let catalog = self.engine.catalog();
            for grantee in grantees.iter().filter(|g| !g.is_empty()) {
                if catalog.role(grantee).is_none() {
                    return Err(CoordinatorError::UndefinedRole(grantee.clone()));
                }
            }
            let named = |r: &Relation| match kind {
                None => r.kind.queryable(),
                Some(kind) => r.kind == kind,
            };
            let expected = kind.unwrap_or(RelationKind::Table);
            for name in objects {
                let relation = match catalog.get(name) {
                    Some(r) if named(r) => r,
                    Some(r) => return Err(CoordinatorError::WrongObjectType { name: r.name.clone(), expected: expected.sql_name() }),
                    None => return Err(CoordinatorError::UndefinedObject { kind: expected, name: name.clone() }),
                };
                if let Some(p) = privileges.iter().find(|p| !Privilege::of_kind(relation.kind).contains(p)) {
                    return Err(CoordinatorError::InvalidGrant { privilege: p.sql_name().into(), kind: expected.sql_name() });
                }
                if !catalog.is_superuser(role) && relation.ownership.owner != role {
                    let privilege = privileges.first().copied().unwrap_or(Privilege::Select);
                    return Err(CoordinatorError::InsufficientPrivilege { privilege, kind: relation.kind, name: name.clone() });
                }
                let mut ownership = relation.ownership.clone();
                for grantee in grantees {
                    ownership.change(grantee, privileges, grant);
                }
                updates.push(CatalogUpdate::SetOwnership { name: name.clone(), ownership });
            }
        }
        for update in updates {
            self.engine.update_catalog(update).await?;
        }
        Ok(())
    }

    /// `GRANT CREATE ON DATABASE velocity TO roles` (or REVOKE): the right to create sources
    /// and sinks. Granted by superusers, who own the database.
    pub async fn grant_create_on_database(&self, role: &str, database: &str, grantees: &[String], grant: bool) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        if database != crate::server::DATABASE {
            return Err(CoordinatorError::UndefinedDatabase(database.to_string()));
        }
        let changed = {
            let catalog = self.engine.catalog();
            if !catalog.is_superuser(role) {
                return Err(CoordinatorError::PermissionDenied(format!("permission denied for database {database}")));
            }
            grantees
                .iter()
                .map(|g| {
                    let Some(target) = catalog.role(g) else {
                        return Err(if g.is_empty() {
                            CoordinatorError::Unsupported("CREATE on the database for PUBLIC".into())
                        } else {
                            CoordinatorError::UndefinedRole(g.clone())
                        });
                    };
                    Ok(Role { create_on_database: grant, ..target.clone() })
                })
                .collect::<Result<Vec<_>>>()?
        };
        for role in changed {
            self.engine.update_catalog(CatalogUpdate::PutRole(role)).await?;
        }
        Ok(())
    }

    /// `GRANT pg_read_server_files TO roles` (or REVOKE): membership in Postgres' predefined
    /// roles, by superusers. Other role membership is not supported.
    pub async fn grant_roles(&self, role: &str, roles: &[String], members: &[String], grant: bool) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        let changed = {
            let catalog = self.engine.catalog();
            let mut granted = Vec::new();
            for name in roles {
                match PredefinedRole::named(name) {
                    Some(predefined) => granted.push(predefined),
                    None if catalog.role(name).is_some() => {
                        return Err(CoordinatorError::Unsupported(format!(
                            "membership in role \"{name}\" (only the predefined roles pg_read_server_files and pg_write_server_files are granted)"
                        )));
                    }
                    None => return Err(CoordinatorError::UndefinedRole(name.clone())),
                }
            }
            if !catalog.is_superuser(role) {
                return Err(CoordinatorError::PermissionDenied(format!("must have admin option on role \"{}\"", roles[0])));
            }
            members
                .iter()
                .map(|m| {
                    let mut target = catalog.role(m).cloned().ok_or_else(|| CoordinatorError::UndefinedRole(m.clone()))?;
                    target.member_of.retain(|r| !granted.contains(r));
                    if grant {
                        target.member_of.extend(&granted);
                    }
                    Ok(target)
                })
                .collect::<Result<Vec<_>>>()?
        };
        for role in changed {
            self.engine.update_catalog(CatalogUpdate::PutRole(role)).await?;
        }
        Ok(())
    }

    /// `ALTER SOURCE|SINK name OWNER TO new_owner`: by superusers (Velocity has no role
    /// membership through which an owner could hand an object to another role). The
    /// grants stay.
    pub async fn alter_owner(&self, role: &str, kind: RelationKind, name: &str, new_owner: &str) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        let ownership = {
            let catalog = self.engine.catalog();
            let relation = match catalog.get(name) {
                Some(r) if r.kind == kind => r,
                Some(r) => return Err(CoordinatorError::WrongObjectType { name: r.name.clone(), expected: kind.sql_name() }),
                None => return Err(CoordinatorError::UndefinedObject { kind, name: name.to_string() }),
            };
            if catalog.role(new_owner).is_none() {
                return Err(CoordinatorError::UndefinedRole(new_owner.to_string()));
            }
            if !catalog.is_superuser(role) {
                return Err(if relation.ownership.owner == role {
                    CoordinatorError::PermissionDenied(format!("must be able to SET ROLE \"{new_owner}\""))
                } else {
                    CoordinatorError::NotOwner { kind, name: name.to_string() }
                });
            }
            Ownership { owner: new_owner.to_string(), grants: relation.ownership.grants.clone() }
        };
        Ok(self.engine.update_catalog(CatalogUpdate::SetOwnership { name: name.to_string(), ownership }).await?)
    }

    /// Superusers, or roles granted CREATE on the database, may create a source or sink.
    pub(super) fn require_create_on_database(&self, role: &str, what: &str) -> Result<()> {
        if self.engine.catalog().may_create_connectors(role) {
            Ok(())
        } else {
            Err(CoordinatorError::PermissionDenied(format!(
                "permission denied to create {what}: needs a superuser or CREATE on database {}",
                crate::server::DATABASE
            )))
        }
    }

    /// Superusers, or members of `predefined`, may `what` (reading or writing server files).
    pub(super) fn require_predefined_role(&self, role: &str, predefined: PredefinedRole, what: &str) -> Result<()> {
        if self.engine.catalog().has_predefined_role(role, predefined) {
            Ok(())
        } else {
            Err(CoordinatorError::PermissionDenied(format!("must be superuser or a member of the {} role to {what}", predefined.name())))
        }
    }

    /// `CREATE ROLE name [WITH] [LOGIN] [SUPERUSER] [PASSWORD 'x']`: superusers only.
    pub async fn create_role(&self, role: &str, name: &str, if_not_exists: bool, options: RoleOptions) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        if !self.engine.catalog().is_superuser(role) {
            return Err(CoordinatorError::PermissionDenied("permission denied to create role".into()));
        }
        if self.engine.catalog().role(name).is_some() {
            return if if_not_exists { Ok(()) } else { Err(CoordinatorError::DuplicateRole(name.to_string())) };
        }
        let new = Role {
            name: name.to_string(),
            superuser: options.superuser.unwrap_or(false),
            login: options.login.unwrap_or(false),
            secret: options.password.flatten(),
            ..Role::default()
        };
        Ok(self.engine.update_catalog(CatalogUpdate::PutRole(new)).await?)
    }

    /// `ALTER ROLE name [WITH] options`: superusers, or a role changing its own password.
    pub async fn alter_role(&self, role: &str, name: &str, options: RoleOptions) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        let existing = {
            let catalog = self.engine.catalog();
            let own_password = role == name && options.superuser.is_none() && options.login.is_none();
            if !catalog.is_superuser(role) && !own_password {
                return Err(CoordinatorError::PermissionDenied("permission denied to alter role".into()));
            }
            catalog.role(name).cloned().ok_or_else(|| CoordinatorError::UndefinedRole(name.to_string()))?
        };
        if existing.configured {
            return Err(CoordinatorError::Unsupported(format!("changing role \"{name}\", which is configured at start (--user)")));
        }
        let changed = Role {
            superuser: options.superuser.unwrap_or(existing.superuser),
            login: options.login.unwrap_or(existing.login),
            secret: options.password.unwrap_or(existing.secret.clone()),
            ..existing
        };
        Ok(self.engine.update_catalog(CatalogUpdate::PutRole(changed)).await?)
    }

    /// `DROP ROLE [IF EXISTS] names`: superusers only; refused while a role owns objects
    /// or holds privileges on them, and for the session's own roles and configured ones.
    pub async fn drop_roles(&self, role: &str, session_user: &str, names: &[String], if_exists: bool) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        let mut dropped = Vec::new();
        {
            let catalog = self.engine.catalog();
            if !catalog.is_superuser(role) {
                return Err(CoordinatorError::PermissionDenied("permission denied to drop role".into()));
            }
            for name in names {
                let Some(target) = catalog.role(name) else {
                    if if_exists {
                        continue;
                    }
                    return Err(CoordinatorError::UndefinedRole(name.clone()));
                };
                if name == session_user {
                    return Err(CoordinatorError::ActiveRole("session"));
                }
                if name == role {
                    return Err(CoordinatorError::ActiveRole("current"));
                }
                if target.configured {
                    return Err(CoordinatorError::RequiredRole(name.clone()));
                }
                let objects = catalog.dependencies_of_role(name);
                if !objects.is_empty() {
                    return Err(CoordinatorError::RoleHasDependents { name: name.clone(), objects });
                }
                dropped.push(name.clone());
            }
        }
        for name in dropped {
            self.engine.update_catalog(CatalogUpdate::DropRole(name)).await?;
        }
        Ok(())
    }

    /// `SET ROLE target` by a session of `session_user`: a superuser may become any role,
    /// others only themselves (Velocity has no role membership).
    pub fn authorize_set_role(&self, session_user: &str, target: &str) -> Result<()> {
        self.authorize_acting_as(session_user, target, || format!("permission denied to set role \"{target}\""))
    }

    /// `SET SESSION AUTHORIZATION target` by a session that authenticated as `authenticated`:
    /// superusers only (or to itself).
    pub fn authorize_session_authorization(&self, authenticated: &str, target: &str) -> Result<()> {
        self.authorize_acting_as(authenticated, target, || "permission denied to set session authorization".into())
    }

    /// `user` may act as `target`: a superuser as anyone, others only as themselves.
    fn authorize_acting_as(&self, user: &str, target: &str, denied: impl FnOnce() -> String) -> Result<()> {
        let catalog = self.engine.catalog();
        if catalog.role(target).is_none() {
            return Err(CoordinatorError::UndefinedRole(target.to_string()));
        }
        if catalog.is_superuser(user) || user == target { Ok(()) } else { Err(CoordinatorError::PermissionDenied(denied())) }
    }
}

/// The relations a statement names, as the catalog spells them, and its CTEs' names.
#[derive(Default)]
struct Reads {
    names: Vec<String>,
    ctes: HashSet<String>,
}

/// The catalog name of `name`, unless it is qualified with a schema other than `public`
/// (a system catalog, or nothing Velocity holds).
fn catalog_name(name: &ObjectName) -> Option<String> {
    let parts: Vec<_> = name.0.iter().filter_map(|p| p.as_ident()).collect();
    let (last, schema) = match parts.as_slice() {
        [.., schema, last] => (last, Some(schema.value.to_ascii_lowercase())),
        [last] => (last, None),
        [] => return None,
    };
    if schema.is_some_and(|s| s != "public" || SYSTEM_SCHEMAS.contains(&s.as_str())) {
        return None;
    }
    Some(if last.quote_style.is_some() { last.value.clone() } else { last.value.to_ascii_lowercase() })
}

impl Visitor for Reads {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            self.ctes.extend(with.cte_tables.iter().map(|c| c.alias.name.value.to_ascii_lowercase()));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.names.extend(catalog_name(relation));
        ControlFlow::Continue(())
    }

    /// `changes('t')` reads `t`.
    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table { name, args: Some(args), .. } = factor
            && catalog_name(name).as_deref() == Some("changes")
            && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) = args.args.first()
            && let Value::SingleQuotedString(read) = &v.value
        {
            self.names.push(read.clone());
        }
        ControlFlow::Continue(())
    }
}
