//! Catalog queries that known clients send verbatim and DataFusion cannot plan, rewritten
//! to equivalents it can (as datafusion-postgres does for the queries it knows).

use std::borrow::Cow;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectNamePart, Query, SelectItem, SetExpr, Statement,
    TableFactor, TableWithJoins, Value, visit_expressions, visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// `(client, exact text, replacement)`.
const REWRITES: &[(&str, &str, &str)] = &[
    // psql `\dt`, `\dm`, `\dp`: a relation's owner by name (pg_class has no owner oids).
    ("psql \\dt owner", "pg_catalog.pg_get_userbyid(c.relowner)", "velocity_relowner(c.relname)"),
    // psql `\d+`: Velocity has no storage options, so the option list is empty.
    (
        "psql \\d+",
        "pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ')",
        "''",
    ),
    // pgjdbc's type cache (`getTypeInfo`, array types): `pg_type.typinput` holds the input
    // function's name, which a `regproc` cast of a name would compare as an oid.
    ("pgjdbc TypeInfoCache", "typinput='pg_catalog.array_in'::regproc", "typinput='array_in'"),
    // DataGrip on connect: `pg_stat_ssl` unqualified (datafusion-pg-catalog qualifies only
    // the tables it knows).
    ("DataGrip ssl", "from pg_stat_ssl where", "from pg_catalog.pg_stat_ssl where"),
    // psql `\d <index>`: whether the index's constraint is deferrable or deferred, an EXISTS
    // in the select list (which DataFusion cannot execute) that is false for an immediate
    // index, as every Velocity key is.
    (
        "psql \\d index",
        "(NOT i.indimmediate) AND EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conrelid = i.indrelid AND conindid = i.indexrelid AND contype IN ('p','u','x') AND condeferrable)",
        "(NOT i.indimmediate)",
    ),
    (
        "psql \\d index",
        "(NOT i.indimmediate) AND EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conrelid = i.indrelid AND conindid = i.indexrelid AND contype IN ('p','u','x') AND condeferred)",
        "(NOT i.indimmediate)",
    ),
    // psql `\dT` and pgjdbc `getTypeInfo`: a type with a relation is a composite type only when the relation is one
    // (relkind 'c'); Velocity has no composite types. The correlated subquery in WHERE is one
    // DataFusion cannot plan.
    ("psql \\dT", "(t.typrelid = 0 OR (SELECT c.relkind = 'c' FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid))", "(t.typrelid = 0)"),
];

/// Catalogs Velocity keeps empty: role memberships, row security policies, column
/// privileges (`attacl`). psql's `\du` and `\dp` collect them with `ARRAY(subquery)`.
const EMPTY_CATALOGS: &[&str] = &["pg_auth_members", "pg_policy", "attacl"];

/// Server-wide settings `SHOW` answers from `current_setting` (datafusion-postgres answers
/// `server_version` with its own name and leaves the others empty).
const SHOWN_SETTINGS: &[&str] =
    &["server_version", "server_version_num", "client_encoding", "server_encoding", "max_identifier_length", "default_table_access_method"];

/// `sql` with every known client query fragment replaced.
pub fn rewrite(sql: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(sql);
    for (_, from, to) in REWRITES {
        if out.contains(from) {
            out = Cow::Owned(out.replace(from, to));
        }
    }
    if out.contains("pg_attribute")
        && out.contains("(SELECT")
        && let Some(rewritten) = rekey_attribute_subqueries(&out)
    {
        out = Cow::Owned(rewritten);
    }
    if out.trim().trim_end_matches(';').trim().eq_ignore_ascii_case("show timezone") {
        // Metabase's spelling; datafusion-postgres answers `SHOW TIME ZONE` only.
        out = Cow::Borrowed("SHOW TIME ZONE");
    }
    if out.contains("pg_table_is_visible")
        && let Some(rewritten) = table_visibility_by_namespace(&out)
    {
        out = Cow::Owned(rewritten);
    }
    if (out.contains("_description(") || out.contains("_DESCRIPTION("))
        && let Some(rewritten) = descriptions_are_null(&out)
    {
        out = Cow::Owned(rewritten);
    }
    if out.contains("\"$user\"")
        && out.contains("search_path")
        && let Some(rewritten) = search_path_as_array(&out)
    {
        out = Cow::Owned(rewritten);
    }
    if let Some(name) = shown_setting(&out) {
        out = Cow::Owned(format!("SELECT current_setting('{name}') AS {name}"));
    }
    if out.contains("ARRAY(")
        && EMPTY_CATALOGS.iter().any(|c| out.contains(c))
        && let Some(rewritten) = empty_catalog_arrays(&out)
    {
        out = Cow::Owned(rewritten);
    }
    if out.contains("_pg_expandarray")
        && let Some(rewritten) = expand_arrays(&out)
    {
        out = Cow::Owned(rewritten);
    }
    let lower = out.to_ascii_lowercase();
    if (lower.contains("generate_subscripts") || lower.contains("pg_get_viewdef") || lower.contains("size("))
        && let Some(rewritten) = subscripts_and_view_definitions(&out)
    {
        out = Cow::Owned(rewritten);
    }
    if out.to_ascii_lowercase().contains("escape")
        && let Some(rewritten) = like_escape_to_backslash(&out)
    {
        out = Cow::Owned(rewritten);
    }
    if let Some(rewritten) = crate::sql::keep_scalar_subqueries(&out) {
        out = Cow::Owned(rewritten);
    }
    out
}

/// Statements as SQL text again, after a rewrite.
fn to_sql(statements: &[Statement]) -> String {
    statements.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(";\n")
}

/// Alias of the copy of `pg_attribute` that `rekey_attribute_subqueries` joins into a subquery.
const ATTRIBUTE_COPY: &str = "velocity_attribute";

/// Aggregates a scalar subquery may already use; it is not wrapped in `max` again.
const AGGREGATES: &[&str] = &["max", "min", "count", "sum", "avg", "array_agg", "string_agg", "bool_and", "bool_or"];

/// Column reflection over `pg_catalog.pg_attribute` (SQLAlchemy's `get_columns`) reads the
/// default, identity and collation of each column with scalar subqueries in the select list
/// that refer to the outer `pg_attribute` row anywhere: in conditions of their own
/// (`WHERE pg_attribute.atthasdef AND ...`), inside the selected expression, in joins on
/// functions of it. DataFusion decorrelates a scalar subquery only when it is aggregated and
/// correlated by plain column equalities, so each such subquery is rewritten to the
/// equivalent that has that shape:
///
/// * the outer row is read from a copy of `pg_attribute` inside the subquery, joined on its
///   key `(attrelid, attnum)`: the only correlation left is those two equalities;
/// * the selected expression is wrapped in `max`: it matches at most one row (one default,
///   one sequence, one type per column), so `max` of it is that row's value or NULL.
///
/// None when no subquery refers to an outer `pg_attribute` or the text does not parse.
fn rekey_attribute_subqueries(sql: &str) -> Option<String> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut changed = false;
    for statement in &mut statements {
        let Statement::Query(query) = statement else { continue };
        let SetExpr::Select(select) = query.body.as_mut() else { continue };
        let Some(outer) = attribute_qualifiers(&select.from) else { continue };
        for item in &mut select.projection {
            let (SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. }) = item else { continue };
            let _ = visit_expressions_mut(expr, |e| {
                if let Expr::Subquery(subquery) = e {
                    changed |= rekey_subquery(subquery, &outer);
                }
                ControlFlow::<()>::Continue(())
            });
        }
    }
    changed.then(|| to_sql(&statements))
}

/// The names a column of `pg_attribute` in `from` is qualified with (`a`, or
/// `pg_catalog.pg_attribute` and `pg_attribute` when it has no alias).
fn attribute_qualifiers(from: &[TableWithJoins]) -> Option<Vec<Vec<String>>> {
    let tables = from.iter().flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)));
    for table in tables {
        let TableFactor::Table { name, alias, .. } = table else { continue };
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(i) => i.value.to_ascii_lowercase(),
                other => other.to_string(),
            })
            .collect();
        let is_attribute = match parts.as_slice() {
            [table] | [_, table] => table == "pg_attribute" && (parts.len() == 1 || parts[0] == "pg_catalog"),
            _ => false,
        };
        if !is_attribute {
            continue;
        }
        return Some(match alias {
            Some(a) => vec![vec![a.name.value.to_ascii_lowercase()]],
            None => vec![parts.clone(), vec!["pg_attribute".to_string()]],
        });
    }
    None
}

/// Rewrite one scalar subquery as `rekey_attribute_subqueries` describes; false (and left
/// alone) when it does not refer to the outer row or has another shape.
fn rekey_subquery(subquery: &mut Query, outer: &[Vec<String>]) -> bool {
    let SetExpr::Select(select) = subquery.body.as_mut() else { return false };
    if select.projection.len() != 1 || attribute_qualifiers(&select.from).is_some_and(|inner| inner.iter().any(|q| outer.contains(q))) {
        return false;
    }
    let mut outer_column = None;
    let mut references = 0;
    let _ = visit_expressions_mut(select, |e| {
        if let Expr::CompoundIdentifier(parts) = e {
            let (column, qualifier) = parts.split_last().expect("compound identifiers have parts");
            let qualifier: Vec<String> = qualifier.iter().map(|i| i.value.to_ascii_lowercase()).collect();
            if outer.contains(&qualifier) {
                outer_column.get_or_insert_with(|| parts[..parts.len() - 1].to_vec());
                *parts = vec![Ident::new(ATTRIBUTE_COPY), column.clone()];
                references += 1;
            }
        }
        ControlFlow::<()>::Continue(())
    });
    let Some(outer_name) = outer_column else { return false };
    let outer_name = outer_name.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(".");
    let parse_expr = |text: &str| Parser::new(&PostgreSqlDialect {}).try_with_sql(text).and_then(|mut p| p.parse_expr());
    let key = parse_expr(&format!("{ATTRIBUTE_COPY}.attrelid = {outer_name}.attrelid AND {ATTRIBUTE_COPY}.attnum = {outer_name}.attnum"));
    let copy = Parser::parse_sql(&PostgreSqlDialect {}, &format!("SELECT 1 FROM pg_catalog.pg_attribute AS {ATTRIBUTE_COPY}"));
    let (Ok(key), Ok(mut copy)) = (key, copy) else { return false };
    let Some(Statement::Query(copy)) = copy.pop() else { return false };
    let SetExpr::Select(copy) = *copy.body else { return false };
    select.from.extend(copy.from);
    select.selection = Some(match select.selection.take() {
        Some(w) => Expr::BinaryOp { left: Box::new(Expr::Nested(Box::new(w))), op: BinaryOperator::And, right: Box::new(key) },
        None => key,
    });
    if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } = &mut select.projection[0] {
        let aggregated = matches!(&*expr, Expr::Function(f) if f.name.0.last().is_some_and(|p| AGGREGATES.contains(&p.to_string().to_ascii_lowercase().as_str())));
        if !aggregated {
            match parse_expr(&format!("max({expr})")) {
                Ok(wrapped) => *expr = wrapped,
                Err(_) => return false,
            }
        }
    }
    references > 0
}

/// `pg_table_is_visible(c.oid)` as `c.relnamespace IN (<namespaces on the search path>)`.
/// datafusion-pg-catalog's `pg_table_is_visible` is true for every relation, so listings
/// filtered by it (psql `\dv`, SQLAlchemy `get_view_names`) showed `velocity_catalog`'s
/// system tables as the user's own. The argument is a `pg_class.oid` column in the queries
/// clients send; other arguments are left alone.
fn table_visibility_by_namespace(sql: &str) -> Option<String> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut changed = false;
    let _ = visit_expressions_mut(&mut statements, |e| {
        let Expr::Function(f) = e else { return ControlFlow::<()>::Continue(()) };
        if !f.name.0.last().is_some_and(|p| p.to_string().eq_ignore_ascii_case("pg_table_is_visible")) {
            return ControlFlow::Continue(());
        }
        let FunctionArguments::List(list) = &f.args else { return ControlFlow::Continue(()) };
        let [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))] = list.args.as_slice() else { return ControlFlow::Continue(()) };
        let namespace = match arg {
            Expr::Identifier(i) if i.value.eq_ignore_ascii_case("oid") => "relnamespace".to_string(),
            Expr::CompoundIdentifier(parts) if parts.last().is_some_and(|i| i.value.eq_ignore_ascii_case("oid")) => {
                let qualifier = parts[..parts.len() - 1].iter().map(|i| i.to_string()).collect::<Vec<_>>().join(".");
                format!("{qualifier}.relnamespace")
            }
            _ => return ControlFlow::Continue(()),
        };
        let visible = format!(
            "({namespace} IN (SELECT velocity_namespace.oid FROM pg_catalog.pg_namespace AS velocity_namespace \
             WHERE velocity_namespace.nspname = 'pg_catalog' OR velocity_namespace.nspname = ANY(pg_catalog.current_schemas(false))))"
        );
        if let Ok(expr) = Parser::new(&PostgreSqlDialect {}).try_with_sql(&visible).and_then(|mut p| p.parse_expr()) {
            *e = expr;
            changed = true;
        }
        ControlFlow::Continue(())
    });
    changed.then(|| to_sql(&statements))
}

/// In `col_description(x, n)` / `obj_description(x, c)`, an `x` computed by casting a
/// computed name to `regclass` becomes NULL. Velocity stores no comments, so these are NULL
/// whatever `x` is; Metabase's field sync passes `CAST(CAST(format('%I.%I', schema, table)
/// AS REGCLASS) AS OID)`, which DataFusion cannot evaluate (it resolves `'name'::regclass`
/// literals only).
fn descriptions_are_null(sql: &str) -> Option<String> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut changed = false;
    let _ = visit_expressions_mut(&mut statements, |e| {
        let Expr::Function(f) = e else { return ControlFlow::<()>::Continue(()) };
        let name = f.name.0.last().map(|p| p.to_string().to_ascii_lowercase());
        if !matches!(name.as_deref(), Some("col_description" | "obj_description")) {
            return ControlFlow::Continue(());
        }
        let FunctionArguments::List(list) = &mut f.args else { return ControlFlow::Continue(()) };
        if let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(first))) = list.args.first_mut() {
            let computed_regclass = visit_expressions(&*first, |x| match x {
                Expr::Cast { data_type, expr, .. }
                    if data_type.to_string().eq_ignore_ascii_case("regclass") && !matches!(**expr, Expr::Value(_)) =>
                {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            });
            if computed_regclass.is_break() {
                *first = Expr::value(Value::Null);
                changed = true;
            }
        }
        ControlFlow::Continue(())
    });
    changed.then(|| to_sql(&statements))
}

/// Grafana's "schema is on the search path" test (its table and column pickers),
/// `x IN (SELECT ... FROM generate_series(<array bounds>) AS i, string_to_array(
/// current_setting('search_path'), ',') s)`, uses an array as a table in FROM, which
/// DataFusion cannot plan, and sits in ORDER BY, where DataFusion takes no subqueries;
/// datafusion-postgres would replace it with `''`, matching no schema. It becomes
/// `array_has(<the search path as an array, "$user" resolved>, x)`: the same test without a
/// subquery.
fn search_path_as_array(sql: &str) -> Option<String> {
    const SCHEMAS: &str = "array_replace(string_to_array(regexp_replace(trim(current_setting('search_path')), '\\s*,\\s*', ',', 'g'), ','), '\"$user\"', current_user)";
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut changed = false;
    let _ = visit_expressions_mut(&mut statements, |e| {
        if let Expr::InSubquery { expr, subquery, negated } = e {
            let text = subquery.to_string();
            if text.contains("'\"$user\"'") && text.contains("generate_series") && text.contains("current_setting('search_path')") {
                let test = format!("{}array_has({SCHEMAS}, {expr})", if *negated { "NOT " } else { "" });
                if let Ok(replaced) = Parser::new(&PostgreSqlDialect {}).try_with_sql(&test).and_then(|mut p| p.parse_expr()) {
                    *e = Expr::Nested(Box::new(replaced));
                    changed = true;
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    changed.then(|| to_sql(&statements))
}

/// `x LIKE p ESCAPE '/'` (SQLAlchemy's schema and table name filters) as
/// `x LIKE replace(p, '/', '\')`: DataFusion accepts only the backslash as escape character.
/// None when nothing changed or the text does not parse (DataFusion then reports the error).
fn like_escape_to_backslash(sql: &str) -> Option<String> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut changed = false;
    let _ = visit_expressions_mut(&mut statements, |e| {
        if let Expr::Like { pattern, escape_char, .. } | Expr::ILike { pattern, escape_char, .. } = e {
            let escape = escape_char.as_ref().and_then(|v| match &v.value {
                Value::SingleQuotedString(c) if c.chars().count() == 1 && c != "\\" => Some(c.clone()),
                _ => None,
            });
            if let Some(c) = escape {
                let original = std::mem::replace(pattern.as_mut(), Expr::value(Value::Null));
                let replaced = format!("replace(({original}), '{}', '\\')", c.replace('\'', "''"));
                if let Ok(expr) = Parser::new(&PostgreSqlDialect {}).try_with_sql(&replaced).and_then(|mut p| p.parse_expr()) {
                    **pattern = expr;
                    *escape_char = None;
                    changed = true;
                } else {
                    **pattern = original;
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    changed.then(|| to_sql(&statements))
}

/// The setting a `SHOW name` statement asks for, when it is one of `SHOWN_SETTINGS`.
fn shown_setting(sql: &str) -> Option<&'static str> {
    let text = sql.trim().trim_end_matches(';').trim();
    let (show, name) = text.split_once(char::is_whitespace)?;
    if !show.eq_ignore_ascii_case("show") {
        return None;
    }
    let name = name.trim();
    SHOWN_SETTINGS.iter().copied().find(|s| s.eq_ignore_ascii_case(name))
}

/// `ARRAY(subquery)` over a catalog in `EMPTY_CATALOGS` as what it gives there, the empty
/// array (`'{}'`), and `array_to_string` of it as `''`.
fn empty_catalog_arrays(sql: &str) -> Option<String> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut changed = false;
    let over_empty_catalog = |e: &Expr| match e {
        Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("array") => match &f.args {
            FunctionArguments::Subquery(q) => {
                let text = q.to_string();
                EMPTY_CATALOGS.iter().any(|c| text.contains(c))
            }
            _ => false,
        },
        _ => false,
    };
    // Expressions are visited inner first, so `array_to_string(ARRAY(...))` is replaced in a
    // pass before the one that replaces the remaining `ARRAY(...)`.
    for bare in [false, true] {
        let _ = visit_expressions_mut(&mut statements, |e| {
            let replacement = match &*e {
                Expr::Function(f) if !bare && f.name.0.last().is_some_and(|p| p.to_string().eq_ignore_ascii_case("array_to_string")) => {
                    match &f.args {
                        FunctionArguments::List(list) => match list.args.first() {
                            Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(first))) if over_empty_catalog(first) => Some(""),
                            _ => None,
                        },
                        _ => None,
                    }
                }
                other if bare && over_empty_catalog(other) => Some("{}"),
                _ => None,
            };
            if let Some(text) = replacement {
                *e = Expr::value(Value::SingleQuotedString(text.to_string()));
                changed = true;
            }
            ControlFlow::<()>::Continue(())
        });
    }
    changed.then(|| to_sql(&statements))
}

/// Name of the subscript column `expand_arrays` adds to the table it unnests.
const EXPAND_SUBSCRIPT: &str = "velocity_subscript";

/// pgjdbc's `getPrimaryKeys` and `getIndexInfo` call `information_schema._pg_expandarray(
/// q.col)` in the select list: a set-returning function giving one `(x, n)` record per
/// element (element, 1-based position), read as `(_pg_expandarray(q.col)).n` or kept whole
/// and read outside as `(keys).x`. DataFusion has no set-returning functions there, so the
/// table `q` becomes `(SELECT *, unnest(<positions of col>) AS velocity_subscript FROM t) q`,
/// one row per element as the function would give, and each call becomes the record
/// `named_struct('x', q.col[q.velocity_subscript], 'n', q.velocity_subscript)`, with
/// `(record).field` read as `record['field']`. None when a call has another shape.
fn expand_arrays(sql: &str) -> Option<String> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut changed = false;
    for statement in &mut statements {
        if let Statement::Query(query) = statement {
            changed |= expand_arrays_in(query)?;
        }
    }
    if !changed {
        return None;
    }
    let _ = visit_expressions_mut(&mut statements, |e| {
        if let Expr::CompoundFieldAccess { root, access_chain } = e
            && let [datafusion::sql::sqlparser::ast::AccessExpr::Dot(Expr::Identifier(field))] = access_chain.as_slice()
        {
            let record = match root.as_ref() {
                Expr::Nested(inner) => inner.to_string(),
                other => other.to_string(),
            };
            let text = format!("{record}['{}']", field.value.to_ascii_lowercase());
            if let Ok(expr) = Parser::new(&PostgreSqlDialect {}).try_with_sql(&text).and_then(|mut p| p.parse_expr()) {
                *e = expr;
            }
        }
        ControlFlow::<()>::Continue(())
    });
    Some(to_sql(&statements))
}

/// `expand_arrays` for one query and the derived tables in it; None when a call cannot be
/// rewritten.
fn expand_arrays_in(query: &mut Query) -> Option<bool> {
    let SetExpr::Select(select) = query.body.as_mut() else { return Some(false) };
    let mut changed = false;
    for table in &mut select.from {
        for factor in std::iter::once(&mut table.relation).chain(table.joins.iter_mut().map(|j| &mut j.relation)) {
            if let TableFactor::Derived { subquery, .. } = factor {
                changed |= expand_arrays_in(subquery)?;
            }
        }
    }
    let is_expand = |f: &datafusion::sql::sqlparser::ast::Function| {
        f.name.0.last().is_some_and(|p| p.to_string().eq_ignore_ascii_case("_pg_expandarray"))
    };
    // The (table alias, column) of every call.
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut other_shape = false;
    let _ = visit_expressions(&select.projection, |e| {
        if let Expr::Function(f) = e
            && is_expand(f)
        {
            match &f.args {
                FunctionArguments::List(list) => match list.args.as_slice() {
                    [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::CompoundIdentifier(parts)))] if parts.len() == 2 => {
                        let call = (parts[0].value.to_ascii_lowercase(), parts[1].value.clone());
                        if !calls.contains(&call) {
                            calls.push(call);
                        }
                    }
                    _ => other_shape = true,
                },
                _ => other_shape = true,
            }
        }
        ControlFlow::<()>::Continue(())
    });
    if other_shape || calls.is_empty() || calls.iter().any(|(q, _)| calls.iter().filter(|(q2, _)| q2 == q).count() > 1) {
        return if other_shape || !calls.is_empty() { None } else { Some(changed) };
    }
    for (alias, column) in &calls {
        let factor = select
            .from
            .iter_mut()
            .flat_map(|t| std::iter::once(&mut t.relation).chain(t.joins.iter_mut().map(|j| &mut j.relation)))
            .find(|f| matches!(f, TableFactor::Table { alias: Some(a), .. } if a.name.value.eq_ignore_ascii_case(alias)))?;
        let TableFactor::Table { name, .. } = &*factor else { return None };
        let derived = format!(
            "SELECT 1 FROM (SELECT *, unnest(range(1, CAST(cardinality({column}) AS BIGINT) + 1)) AS {EXPAND_SUBSCRIPT} FROM {name}) AS {alias}"
        );
        let Some(Statement::Query(q)) = Parser::parse_sql(&PostgreSqlDialect {}, &derived).ok()?.pop() else { return None };
        let SetExpr::Select(mut s) = *q.body else { return None };
        *factor = s.from.pop()?.relation;
    }
    let _ = visit_expressions_mut(&mut select.projection, |e| {
        if let Expr::Function(f) = e
            && is_expand(f)
            && let FunctionArguments::List(list) = &f.args
            && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg @ Expr::CompoundIdentifier(parts)))] = list.args.as_slice()
        {
            let n = format!("{}.{EXPAND_SUBSCRIPT}", parts[0]);
            let text = format!("named_struct('x', {arg}[{n}], 'n', {n})");
            if let Ok(expr) = Parser::new(&PostgreSqlDialect {}).try_with_sql(&text).and_then(|mut p| p.parse_expr()) {
                *e = expr;
            }
        }
        ControlFlow::<()>::Continue(())
    });
    Some(true)
}

/// `generate_subscripts(a, dim)` (SQLAlchemy's key and index reflection, beside `unnest(a)`)
/// as `unnest(<1 to the length of a>)`, which DataFusion zips with the other `unnest` as
/// Postgres does; and `pg_get_viewdef(oid [, pretty])` as the definition of the view or
/// materialized view with that oid (or name), read from `pg_views` and `pg_matviews` (NULL
/// for other relations);
/// `pg_table_size(c.oid)` as the size of the relation named `c.relname`.
/// The subquery sits inside `coalesce` because datafusion-postgres replaces a correlated
/// subquery that is a whole select item with NULL.
fn subscripts_and_view_definitions(sql: &str) -> Option<String> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut changed = false;
    let _ = visit_expressions_mut(&mut statements, |e| {
        let Expr::Function(f) = e else { return ControlFlow::<()>::Continue(()) };
        let name = f.name.0.last().map(|p| p.to_string().to_ascii_lowercase());
        let FunctionArguments::List(list) = &f.args else { return ControlFlow::Continue(()) };
        let args: Vec<String> = list.args.iter().map(|a| a.to_string()).collect();
        let text = match (name.as_deref(), args.as_slice()) {
            // Velocity's arrays have one dimension, so `dim` is 1; it stays in the text (SQLAlchemy
            // binds it as a parameter, whose numbering and type must not change).
            (Some("generate_subscripts"), [array, dim]) => {
                format!("unnest(range(CAST({dim} AS BIGINT), CAST(cardinality({array}) AS BIGINT) + CAST({dim} AS BIGINT)))")
            }
            // psql `\dt+`: the size of the `pg_class` row's relation, found by its name.
            (Some("pg_table_size" | "pg_relation_size" | "pg_total_relation_size"), [oid]) if oid.ends_with(".oid") => {
                format!("velocity_relation_size({}.relname)", &oid[..oid.len() - 4])
            }
            (Some("pg_get_viewdef"), [oid, ..]) => {
                // By oid, or by name: `pg_get_viewdef('v')`, `pg_get_viewdef('v'::regclass)`.
                let regclass = oid.to_ascii_lowercase().ends_with("::regclass");
                let by_name = if regclass { &oid[..oid.len() - 10] } else { oid.as_str() };
                let literal = by_name.len() > 1 && by_name.starts_with('\'') && by_name.ends_with('\'');
                let which = if literal && (regclass || !by_name[1..by_name.len() - 1].bytes().all(|b| b.is_ascii_digit())) {
                    format!("velocity_view.relname = {by_name}")
                } else {
                    format!("velocity_view.oid = {oid}")
                };
                format!(
                    "coalesce((SELECT max(velocity_definition.definition) FROM pg_catalog.pg_class AS velocity_view \
                     JOIN (SELECT matviewname AS name, definition FROM pg_catalog.pg_matviews \
                     UNION ALL SELECT viewname AS name, definition FROM pg_catalog.pg_views) AS velocity_definition \
                     ON velocity_definition.name = velocity_view.relname WHERE {which}))"
                )
            }
            _ => return ControlFlow::Continue(()),
        };
        if let Ok(expr) = Parser::new(&PostgreSqlDialect {}).try_with_sql(&text).and_then(|mut p| p.parse_expr()) {
            *e = expr;
            changed = true;
        }
        ControlFlow::Continue(())
    });
    changed.then(|| to_sql(&statements))
}

#[cfg(test)]
mod tests {
    #[test]
    fn psql_describe_plus_options() {
        let q = "SELECT c.relispartition, pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ')\n, c.reltablespace";
        assert_eq!(super::rewrite(q), "SELECT c.relispartition, ''\n, c.reltablespace");
    }

    #[test]
    fn attribute_subqueries_read_a_keyed_copy() {
        let q = "SELECT pg_catalog.pg_attribute.attname, CASE WHEN pg_catalog.pg_attribute.atthasdef THEN (SELECT pg_catalog.pg_get_expr(pg_catalog.pg_attrdef.adbin, pg_catalog.pg_attrdef.adrelid) FROM pg_catalog.pg_attrdef WHERE pg_catalog.pg_attribute.atthasdef AND pg_catalog.pg_attrdef.adnum = pg_catalog.pg_attribute.attnum) ELSE NULL END AS d FROM pg_catalog.pg_class JOIN pg_catalog.pg_attribute ON pg_catalog.pg_class.oid = pg_catalog.pg_attribute.attrelid";
        let out = super::rewrite(q);
        assert!(
            out.contains("(SELECT max(pg_catalog.pg_get_expr(pg_catalog.pg_attrdef.adbin, pg_catalog.pg_attrdef.adrelid)) FROM pg_catalog.pg_attrdef, pg_catalog.pg_attribute AS velocity_attribute WHERE (velocity_attribute.atthasdef AND pg_catalog.pg_attrdef.adnum = velocity_attribute.attnum) AND velocity_attribute.attrelid = pg_catalog.pg_attribute.attrelid AND velocity_attribute.attnum = pg_catalog.pg_attribute.attnum)"),
            "{out}"
        );
        assert!(out.starts_with("SELECT pg_catalog.pg_attribute.attname, CASE WHEN pg_catalog.pg_attribute.atthasdef THEN"), "{out}");
        let aliased = "SELECT (SELECT t.typname FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid) FROM pg_catalog.pg_attribute a";
        assert!(super::rewrite(aliased).contains("SELECT max(t.typname) FROM pg_catalog.pg_type t, pg_catalog.pg_attribute AS velocity_attribute WHERE (t.oid = velocity_attribute.atttypid) AND velocity_attribute.attrelid = a.attrelid"), "{}", super::rewrite(aliased));
        let uncorrelated = "SELECT (SELECT count(*) FROM pg_catalog.pg_class) FROM pg_catalog.pg_attribute a";
        assert_eq!(super::rewrite(uncorrelated), uncorrelated);
    }

    #[test]
    fn table_visibility_follows_the_search_path() {
        let q = "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relkind = 'v' AND pg_catalog.pg_table_is_visible(c.oid)";
        let out = super::rewrite(q);
        assert!(
            out.contains("AND (c.relnamespace IN (SELECT velocity_namespace.oid FROM pg_catalog.pg_namespace AS velocity_namespace WHERE"),
            "{out}"
        );
        assert!(!out.contains("pg_table_is_visible"), "{out}");
    }

    #[test]
    fn metabase_comment_of_a_computed_regclass() {
        let q = r#"SELECT COL_DESCRIPTION(CAST(CAST(FORMAT('%I.%I', CAST("c"."table_schema" AS TEXT), CAST("c"."table_name" AS TEXT)) AS REGCLASS) AS OID), "c"."ordinal_position") AS "field-comment" FROM "information_schema"."columns" AS "c""#;
        assert!(
            super::rewrite(q).starts_with(r#"SELECT COL_DESCRIPTION(NULL, "c"."ordinal_position") AS "field-comment""#),
            "{}",
            super::rewrite(q)
        );
        let psql = "SELECT pg_catalog.col_description(a.attrelid, a.attnum), pg_catalog.obj_description('orders'::regclass, 'pg_class') FROM pg_catalog.pg_attribute a";
        assert_eq!(super::rewrite(psql), psql);
    }

    #[test]
    fn grafana_search_path_as_an_array() {
        let q = r#"SELECT 1 FROM information_schema.tables ORDER BY CASE WHEN quote_ident(table_schema) IN (
          SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM generate_series(array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)) as i,
            string_to_array(current_setting('search_path'),',') s) THEN 0 ELSE 1 END"#;
        let out = super::rewrite(q);
        assert!(out.contains("CASE WHEN (array_has(array_replace(string_to_array("), "{out}");
        assert!(out.contains(", quote_ident(table_schema))) THEN 0"), "{out}");
        assert!(!out.contains("generate_series"), "{out}");
    }

    #[test]
    fn pgjdbc_expandarray_becomes_an_unnested_table() {
        let q = "SELECT result.COLUMN_NAME FROM (SELECT a.attname AS COLUMN_NAME, (information_schema._pg_expandarray(i.indkey)).n AS KEY_SEQ, information_schema._pg_expandarray(i.indkey) AS KEYS, a.attnum AS A_ATTNUM FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_index i ON (a.attrelid = i.indrelid) WHERE i.indisprimary) result WHERE result.A_ATTNUM = (result.KEYS).x";
        let out = super::rewrite(q);
        assert!(!out.contains("_pg_expandarray"), "{out}");
        assert!(
            out.contains("JOIN (SELECT *, unnest(range(1, CAST(cardinality(indkey) AS BIGINT) + 1)) AS velocity_subscript FROM pg_catalog.pg_index) AS i"),
            "{out}"
        );
        assert!(out.contains("named_struct('x', i.indkey[i.velocity_subscript], 'n', i.velocity_subscript)['n'] AS KEY_SEQ"), "{out}");
        assert!(out.contains("WHERE result.A_ATTNUM = result.KEYS['x']"), "{out}");
    }

    #[test]
    fn sqlalchemy_subscripts_and_view_definition() {
        let q = "SELECT unnest(pg_catalog.pg_index.indkey) AS attnum, generate_subscripts(pg_catalog.pg_index.indkey, $1) AS ord FROM pg_catalog.pg_index";
        let out = super::rewrite(q);
        assert!(
            out.contains(
                "unnest(range(CAST($1 AS BIGINT), CAST(cardinality(pg_catalog.pg_index.indkey) AS BIGINT) + CAST($1 AS BIGINT))) AS ord"
            ),
            "{out}"
        );
        let q = "SELECT pg_catalog.pg_get_viewdef(pg_catalog.pg_class.oid) AS view_def FROM pg_catalog.pg_class";
        let out = super::rewrite(q);
        assert!(
            out.starts_with("SELECT coalesce((SELECT max(velocity_definition.definition) FROM pg_catalog.pg_class AS velocity_view"),
            "{out}"
        );
        assert!(out.contains("WHERE velocity_view.oid = pg_catalog.pg_class.oid)) AS view_def"), "{out}");
    }

    #[test]
    fn psql_table_size_by_name() {
        let q = "SELECT pg_catalog.pg_size_pretty(pg_catalog.pg_table_size(c.oid)) as \"Size\" FROM pg_catalog.pg_class c";
        assert_eq!(
            super::rewrite(q),
            "SELECT pg_catalog.pg_size_pretty(velocity_relation_size(c.relname)) AS \"Size\" FROM pg_catalog.pg_class c"
        );
    }

    #[test]
    fn show_server_settings() {
        assert_eq!(super::rewrite("SHOW server_version;"), "SELECT current_setting('server_version') AS server_version");
        assert_eq!(super::rewrite("show CLIENT_ENCODING"), "SELECT current_setting('client_encoding') AS client_encoding");
        assert_eq!(super::rewrite("SHOW search_path"), "SHOW search_path");
    }

    #[test]
    fn psql_arrays_of_empty_catalogs() {
        let q = "SELECT r.rolname, ARRAY(SELECT b.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) WHERE m.member = r.oid) as memberof FROM pg_catalog.pg_roles r";
        assert_eq!(super::rewrite(q), "SELECT r.rolname, '{}' AS memberof FROM pg_catalog.pg_roles r");
        let q = "SELECT pg_catalog.array_to_string(c.relacl, E'\\n'), pg_catalog.array_to_string(ARRAY(SELECT attname FROM pg_catalog.pg_attribute a WHERE attrelid = c.oid AND attacl IS NOT NULL), E'\\n') AS \"Column privileges\" FROM pg_catalog.pg_class c";
        let out = super::rewrite(q);
        assert!(out.contains("'' AS \"Column privileges\""), "{out}");
        assert!(out.contains("array_to_string(c.relacl"), "{out}");
    }

    #[test]
    fn like_escape_slash() {
        let q = "SELECT nspname FROM pg_namespace WHERE (nspname NOT LIKE $1::VARCHAR || '%' ESCAPE '/') ORDER BY nspname";
        let out = super::rewrite(q);
        assert!(out.contains("NOT LIKE replace(($1::VARCHAR || '%'), '/', '\\')"), "{out}");
        assert!(!out.contains("ESCAPE"), "{out}");
    }
}
