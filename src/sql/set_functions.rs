//! Set-returning functions in `FROM` over another table's columns, as Postgres users write
//! them, which DataFusion cannot plan (its table functions take constants):
//!
//! ```sql
//! SELECT t.id, u.x FROM t, unnest(t.a) AS u(x)
//! SELECT t.id, e.value FROM t CROSS JOIN LATERAL jsonb_array_elements(t.j) AS e
//! SELECT t.id, kv.k, kv.v FROM t JOIN LATERAL jsonb_each(t.j) AS kv(k, v) ON true
//! SELECT x, n FROM t, unnest(t.a) WITH ORDINALITY AS u(x, n)
//! ```
//!
//! Each becomes the select-list form, which DataFusion plans and views maintain (a stateless
//! flat map): the table and the function turn into one derived table named like the table,
//! `(SELECT t.*, unnest(t.a) AS x FROM t) AS t`, and references to the function's alias
//! (`u.x`, `u.*`) read that table. `WITH ORDINALITY` unnests, in step, the numbers 1 to the
//! array's length (`unnest(range(1, cardinality(a) + 1))`): unnests of one select list run in
//! step, as set-returning functions in a Postgres 10+ select list do. A JSON function alone in
//! `FROM` (`SELECT * FROM jsonb_each('{"a": 1}')`) becomes a derived table without `FROM`.
//!
//! Rewritten when the function directly follows one table (or aliased derived table) in the
//! `FROM` list, or is the first join of one with `CROSS JOIN`, `JOIN ... ON true` or `LEFT
//! JOIN ... ON true`, and its arguments name no other table. A left join adds, with `UNION
//! ALL`, the table's rows for which the function gives no row (a NULL or empty argument), with
//! NULLs for the function's columns. Other shapes over columns (after a join of several
//! tables, a left join on another condition, ...) are refused with 0A000 naming the function
//! (see `functions::set_function_refusal`); functions over constants are left to DataFusion.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, Ident, ObjectName, ObjectNamePart, Query, Select, SelectItem, SetExpr, Statement, TableAlias,
    TableFactor, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::ast::{JoinConstraint, JoinOperator};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Tokenizer;

/// The set-returning functions rewritten.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Function {
    Unnest,
    Elements { text: bool },
    Each { text: bool },
}

impl Function {
    fn named(name: &ObjectName) -> Option<Function> {
        let [ObjectNamePart::Identifier(name)] = name.0.as_slice() else { return None };
        let lower = name.value.to_ascii_lowercase();
        let bare = lower.strip_prefix("jsonb_").or_else(|| lower.strip_prefix("json_"));
        match (lower.as_str(), bare) {
            ("unnest", _) => Some(Function::Unnest),
            (_, Some("array_elements")) => Some(Function::Elements { text: false }),
            (_, Some("array_elements_text")) => Some(Function::Elements { text: true }),
            (_, Some("each")) => Some(Function::Each { text: false }),
            (_, Some("each_text")) => Some(Function::Each { text: true }),
            _ => None,
        }
    }
}

/// A set-returning function in `FROM`.
struct SetFunction {
    function: Function,
    args: Vec<Expr>,
    ordinality: bool,
    alias: Option<TableAlias>,
}

impl SetFunction {
    fn of(factor: &TableFactor) -> Option<SetFunction> {
        let plain_args = |args: &[FunctionArg]| -> Option<Vec<Expr>> {
            args.iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                    _ => None,
                })
                .collect()
        };
        let (function, args, ordinality, alias) = match factor {
            TableFactor::UNNEST { alias, array_exprs, with_offset: false, with_offset_alias: None, with_ordinality } => {
                (Function::Unnest, array_exprs.clone(), *with_ordinality, alias.clone())
            }
            TableFactor::Table { name, alias, args: Some(args), with_ordinality, version: None, .. } if args.settings.is_none() => {
                (Function::named(name)?, plain_args(&args.args)?, *with_ordinality, alias.clone())
            }
            TableFactor::Function { name, args, with_ordinality, alias, .. } => {
                (Function::named(name)?, plain_args(args)?, *with_ordinality, alias.clone())
            }
            _ => return None,
        };
        let arity_ok = match function {
            Function::Unnest => !args.is_empty(),
            _ => args.len() == 1,
        };
        arity_ok.then_some(SetFunction { function, args, ordinality, alias })
    }

    /// The function's columns as select items (`expression AS name`), in Postgres' order and
    /// with its names (the alias' column list renames them in order).
    fn select_items(&self) -> Vec<(String, Ident)> {
        let mut items: Vec<(String, &str)> = Vec::new();
        match self.function {
            Function::Unnest => {
                let single = match (&self.alias, self.args.len()) {
                    (Some(alias), 1) => alias.name.value.clone(),
                    _ => "unnest".to_string(),
                };
                for a in &self.args {
                    items.push((format!("unnest({a})"), "unnest"));
                }
                if self.args.len() == 1 {
                    items[0].1 = "";
                    if self.ordinality {
                        items.push((format!("unnest(range(1, CAST(cardinality({}) AS BIGINT) + 1))", self.args[0]), "ordinality"));
                    }
                    return self.named(items, Some(single));
                }
                if self.ordinality {
                    let lengths: Vec<String> = self.args.iter().map(|a| format!("coalesce(CAST(cardinality({a}) AS BIGINT), 0)")).collect();
                    items.push((format!("unnest(range(1, greatest({}) + 1))", lengths.join(", ")), "ordinality"));
                }
            }
            Function::Elements { text } => {
                let suffix = if text { "_text" } else { "" };
                items.push((format!("jsonb_array_elements{suffix}({})", self.args[0]), "value"));
            }
            Function::Each { text } => {
                let suffix = if text { "_text" } else { "" };
                items.push((format!("velocity_jsonb_each_key({})", self.args[0]), "key"));
                items.push((format!("velocity_jsonb_each_value{suffix}({})", self.args[0]), "value"));
            }
        }
        if self.ordinality && self.function != Function::Unnest {
            items.push((format!("velocity_jsonb_ordinality({})", self.args[0]), "ordinality"));
        }
        self.named(items, None)
    }

    fn named(&self, items: Vec<(String, &str)>, single: Option<String>) -> Vec<(String, Ident)> {
        let renamed = self.alias.as_ref().map(|a| a.columns.as_slice()).unwrap_or_default();
        items
            .into_iter()
            .enumerate()
            .map(|(i, (e, name))| {
                let name = match renamed.get(i) {
                    Some(c) => c.name.clone(),
                    None if name.is_empty() => Ident::new(single.clone().unwrap_or_default()),
                    None => Ident::new(name),
                };
                (e, name)
            })
            .collect()
    }

    /// A condition true when the function gives no row (its argument NULL or empty). A JSON
    /// argument of the wrong kind counts as having rows (the function fails on it, if the row
    /// is read), and this condition does not fail on it: it is evaluated for rows a filter
    /// pushed into it drops, which Postgres never reads.
    fn no_rows(&self) -> String {
        let kind = match self.function {
            Function::Unnest => None,
            Function::Elements { .. } => Some("array"),
            Function::Each { .. } => Some("object"),
        };
        let empty: Vec<String> = self
            .args
            .iter()
            .map(|a| match kind {
                Some(kind) => format!("velocity_jsonb_no_rows({a}, '{kind}')"),
                None => format!("coalesce(cardinality({a}), 0) = 0"),
            })
            .collect();
        empty.join(" AND ")
    }

    /// The qualifiers (`t` of `t.a`) the arguments name.
    fn qualifiers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.args {
            let _ = datafusion::sql::sqlparser::ast::visit_expressions(a, |e| {
                if let Expr::CompoundIdentifier(parts) = e
                    && parts.len() >= 2
                {
                    out.push(parts[parts.len() - 2].value.to_ascii_lowercase());
                }
                ControlFlow::<()>::Continue(())
            });
        }
        out
    }
}

/// The name a table (or aliased derived table) is referred to by in the query.
fn qualifier(factor: &TableFactor) -> Option<Ident> {
    match factor {
        TableFactor::Table { name, alias, args: None, .. } => match alias {
            Some(a) => Some(a.name.clone()),
            None => name.0.last().and_then(|p| p.as_ident()).cloned(),
        },
        TableFactor::Derived { lateral: false, alias: Some(a), .. } => Some(a.name.clone()),
        _ => None,
    }
}

/// `(SELECT q.*, f(..) AS x, ... FROM relation) AS q`, or without `FROM` for a function alone.
/// For `LEFT JOIN LATERAL` (`left`), the rows of `relation` for which the function gives no
/// row are added once, with NULLs: `UNION ALL SELECT q.*, NULL AS x, ... FROM relation WHERE
/// <no rows>`.
fn derived(relation: Option<&TableFactor>, q: &Ident, f: &SetFunction, left: bool) -> Option<TableFactor> {
    let selected = f.select_items();
    let items: Vec<String> = selected.iter().map(|(e, name)| format!("{e} AS {name}")).collect();
    let text = match relation {
        Some(r) if left => {
            let nulls: Vec<String> = selected.iter().map(|(_, name)| format!("NULL AS {name}")).collect();
            format!(
                "SELECT {q}.*, {} FROM {r} UNION ALL SELECT {q}.*, {} FROM {r} WHERE {}",
                items.join(", "),
                nulls.join(", "),
                f.no_rows()
            )
        }
        Some(r) => format!("SELECT {q}.*, {} FROM {r}", items.join(", ")),
        None => format!("SELECT {}", items.join(", ")),
    };
    let query = Parser::new(&PostgreSqlDialect {}).try_with_sql(&text).ok()?.parse_query().ok()?;
    Some(TableFactor::Derived {
        lateral: false,
        subquery: query,
        alias: Some(TableAlias { explicit: true, name: q.clone(), columns: vec![], at: None }),
        sample: None,
    })
}

/// A function's alias and the table it now reads from, for renaming references.
struct Renamed {
    from: String,
    to: Ident,
    columns: Vec<Ident>,
}

/// Rewrite the set-returning functions in one `SELECT`'s `FROM`; refuse those over columns
/// left in it.
fn rewrite_select(select: &mut Select, renamed: &mut Vec<Renamed>) {
    rewrite_from(select, renamed);
    for table in select.from.iter_mut() {
        refuse_over_columns(&mut table.relation);
        for join in table.joins.iter_mut() {
            refuse_over_columns(&mut join.relation);
        }
    }
}

/// A set-returning function whose arguments name columns, left in `FROM`, becomes
/// `velocity_unsupported_set_function('unnest()')`, which fails planning with 0A000 naming it
/// (DataFusion would report that no such table function exists).
fn refuse_over_columns(factor: &mut TableFactor) {
    let Some(f) = SetFunction::of(factor) else { return };
    let mut names_columns = false;
    for a in &f.args {
        let _ = datafusion::sql::sqlparser::ast::visit_expressions(a, |e| {
            names_columns |= matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_));
            ControlFlow::<()>::Continue(())
        });
    }
    if !names_columns {
        return;
    }
    let what = match f.function {
        Function::Unnest => "unnest()",
        Function::Elements { text: false } => "jsonb_array_elements()",
        Function::Elements { text: true } => "jsonb_array_elements_text()",
        Function::Each { text: false } => "jsonb_each()",
        Function::Each { text: true } => "jsonb_each_text()",
    };
    let text = format!("SELECT * FROM {}('{what}')", crate::functions::set_function_refusal::NAME);
    let Ok(Statement::Query(query)) = Parser::new(&PostgreSqlDialect {}).try_with_sql(&text).and_then(|mut p| p.parse_statement()) else {
        return;
    };
    if let SetExpr::Select(select) = *query.body
        && let Some(table) = select.from.into_iter().next()
    {
        *factor = table.relation;
    }
}

fn rewrite_from(select: &mut Select, renamed: &mut Vec<Renamed>) {
    let mut i = 0;
    while i < select.from.len() {
        // `FROM t, f(t.a) AS u`
        if i > 0
            && select.from[i].joins.is_empty()
            && select.from[i - 1].joins.is_empty()
            && let Some(f) = SetFunction::of(&select.from[i].relation)
            && let Some(q) = qualifier(&select.from[i - 1].relation)
            && let Some(new) = combine(&select.from[i - 1].relation, &q, &f, false, renamed)
        {
            select.from[i - 1].relation = new;
            select.from.remove(i);
            continue;
        }
        // `FROM t CROSS JOIN [LATERAL] f(t.a) AS u`, `FROM t [LEFT] JOIN LATERAL f(t.a) AS u ON true`
        let table = &mut select.from[i];
        if let Some(join) = table.joins.first()
            && let Some(left) = lateral_join(&join.join_operator)
            && let Some(f) = SetFunction::of(&join.relation)
            && let Some(q) = qualifier(&table.relation)
            && let Some(new) = combine(&table.relation, &q, &f, left, renamed)
        {
            table.relation = new;
            table.joins.remove(0);
            continue;
        }
        i += 1;
    }
    // `SELECT * FROM jsonb_each('{"a": 1}')`, `FROM unnest(a) WITH ORDINALITY`
    if let [table] = select.from.as_mut_slice()
        && table.joins.is_empty()
        && let Some(f) = SetFunction::of(&table.relation)
        && (f.function != Function::Unnest || f.ordinality)
    {
        let q = match &f.alias {
            Some(a) => a.name.clone(),
            None => Ident::new(match f.function {
                Function::Unnest => "unnest",
                Function::Elements { .. } => "jsonb_array_elements",
                Function::Each { .. } => "jsonb_each",
            }),
        };
        if let Some(new) = derived(None, &q, &f, false) {
            table.relation = new;
        }
    }
}

/// `CROSS JOIN`, or an inner join `ON true` (`Some(false)`); a left join `ON true`
/// (`Some(true)`).
fn lateral_join(op: &JoinOperator) -> Option<bool> {
    let on_true = |c: &JoinConstraint| matches!(c, JoinConstraint::On(Expr::Value(v)) if v.value == Value::Boolean(true));
    match op {
        JoinOperator::CrossJoin(JoinConstraint::None) => Some(false),
        JoinOperator::Inner(c) | JoinOperator::Join(c) if on_true(c) => Some(false),
        JoinOperator::Left(c) | JoinOperator::LeftOuter(c) if on_true(c) => Some(true),
        _ => None,
    }
}

fn combine(relation: &TableFactor, q: &Ident, f: &SetFunction, left: bool, renamed: &mut Vec<Renamed>) -> Option<TableFactor> {
    let own = q.value.to_ascii_lowercase();
    if f.qualifiers().iter().any(|name| *name != own) {
        return None;
    }
    let new = derived(Some(relation), q, f, left)?;
    if let Some(alias) = &f.alias {
        renamed.push(Renamed {
            from: alias.name.value.to_ascii_lowercase(),
            to: q.clone(),
            columns: f.select_items().into_iter().map(|(_, name)| name).collect(),
        });
    }
    Some(new)
}

/// Renames `u.x` to `t.x` and `u.*` to `t.x, t.y` in one query.
struct Rename<'a>(&'a [Renamed]);

impl VisitorMut for Rename<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::CompoundIdentifier(parts) = expr
            && parts.len() == 2
            && let Some(r) = self.0.iter().find(|r| r.from == parts[0].value.to_ascii_lowercase())
        {
            parts[0] = r.to.clone();
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_mut() {
            let mut items = Vec::with_capacity(select.projection.len());
            for item in select.projection.drain(..) {
                let star = match &item {
                    SelectItem::QualifiedWildcard(
                        datafusion::sql::sqlparser::ast::SelectItemQualifiedWildcardKind::ObjectName(name),
                        _,
                    ) => name.0.last().and_then(|p| p.as_ident()).and_then(|i| {
                        let lower = i.value.to_ascii_lowercase();
                        self.0.iter().find(|r| r.from == lower)
                    }),
                    _ => None,
                };
                match star {
                    Some(r) => items
                        .extend(r.columns.iter().map(|c| SelectItem::UnnamedExpr(Expr::CompoundIdentifier(vec![r.to.clone(), c.clone()])))),
                    None => items.push(item),
                }
            }
            select.projection = items;
        }
        ControlFlow::Continue(())
    }
}

/// Rewrites the `SELECT`s of every query in a statement.
struct Rewrite;

impl VisitorMut for Rewrite {
    type Break = ();

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        let mut renamed = Vec::new();
        rewrite_selects(query.body.as_mut(), &mut renamed);
        if !renamed.is_empty() {
            let _ = VisitMut::visit(query, &mut Rename(&renamed));
        }
        ControlFlow::Continue(())
    }
}

fn rewrite_selects(body: &mut SetExpr, renamed: &mut Vec<Renamed>) {
    match body {
        SetExpr::Select(select) => rewrite_select(select, renamed),
        SetExpr::SetOperation { left, right, .. } => {
            rewrite_selects(left, renamed);
            rewrite_selects(right, renamed);
        }
        _ => {}
    }
}

/// [`rewrite`] on one statement's text.
fn rewrite_statement(sql: &str) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    super::rewrite_statements(tokens, |statements| {
        let mut changed = false;
        for s in statements.iter_mut() {
            let before = s.to_string();
            let _ = VisitMut::visit(s, &mut Rewrite);
            changed |= s.to_string() != before;
        }
        changed
    })
}

/// Rewrite the set-returning functions in `FROM` of every statement in `sql` (see the module
/// documentation); None when nothing changes.
pub fn rewrite(sql: &str) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    if !(lower.contains("unnest") || lower.contains("json_") || lower.contains("jsonb_")) {
        return None;
    }
    let statements = super::split_statements(sql);
    let mut changed = false;
    let out: Vec<String> = statements
        .iter()
        .map(|s| match rewrite_statement(s) {
            Some(new) => {
                changed = true;
                new
            }
            None => s.clone(),
        })
        .collect();
    changed.then(|| out.join(";\n"))
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn rewrites_set_functions_in_from_into_the_select_list() {
        assert_eq!(
            rewrite("SELECT t.id, u.x FROM t, unnest(t.a) AS u(x)").as_deref(),
            Some("SELECT t.id, t.x FROM (SELECT t.*, unnest(t.a) AS x FROM t) AS t")
        );
        assert_eq!(
            rewrite("SELECT kv.* FROM t AS s JOIN LATERAL jsonb_each(s.j) AS kv(k, v) ON true").as_deref(),
            Some(
                "SELECT s.k, s.v FROM (SELECT s.*, velocity_jsonb_each_key(s.j) AS k, velocity_jsonb_each_value(s.j) AS v FROM t AS s) AS s"
            )
        );
        assert_eq!(
            rewrite("SELECT * FROM t CROSS JOIN LATERAL unnest(a) WITH ORDINALITY AS u(x, n)").as_deref(),
            Some("SELECT * FROM (SELECT t.*, unnest(a) AS x, unnest(range(1, CAST(cardinality(a) AS BIGINT) + 1)) AS n FROM t) AS t")
        );
        assert_eq!(
            rewrite("SELECT * FROM jsonb_each('{\"a\": 1}')").as_deref(),
            Some(
                "SELECT * FROM (SELECT velocity_jsonb_each_key('{\"a\": 1}') AS key, velocity_jsonb_each_value('{\"a\": 1}') AS value) AS jsonb_each"
            )
        );
        // Arguments from another table, or a left join: refused.
        assert_eq!(
            rewrite("SELECT * FROM t, s, unnest(t.a) AS u(x)").as_deref(),
            Some("SELECT * FROM t, s, velocity_unsupported_set_function('unnest()')")
        );
        assert_eq!(
            rewrite("SELECT * FROM t LEFT JOIN LATERAL jsonb_each(t.j) AS u ON u.key = 'a'").as_deref(),
            Some("SELECT * FROM t LEFT JOIN velocity_unsupported_set_function('jsonb_each()') ON u.key = 'a'")
        );
        // A left join keeps the rows the function gives none for, with NULLs.
        assert_eq!(
            rewrite("SELECT t.id, u.x FROM t LEFT JOIN LATERAL unnest(t.a) AS u(x) ON true").as_deref(),
            Some(
                "SELECT t.id, t.x FROM (SELECT t.*, unnest(t.a) AS x FROM t UNION ALL SELECT t.*, NULL AS x FROM t WHERE coalesce(cardinality(t.a), 0) = 0) AS t"
            )
        );
        assert_eq!(rewrite("SELECT unnest(a) FROM t"), None);
        assert_eq!(rewrite("SELECT * FROM unnest(ARRAY[1, 2])"), None);
    }
}
