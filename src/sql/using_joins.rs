//! The merged key of a `RIGHT`/`FULL` join `USING (k)` or `NATURAL`, as Postgres reads it:
//! `COALESCE(left.k, right.k)`. DataFusion 55 resolves an unqualified `k` (and `*`) to the
//! left side's column, which is NULL on rows only the right side has (apache/datafusion
//! #22881). So before DataFusion plans the statement, such a join of two relations with known
//! columns (catalog relations, or aliased subqueries whose select list names each column)
//! becomes a join `ON left.k = right.k`, and in the select that owns it every unqualified `k`
//! becomes `COALESCE(left.k, right.k)` and `*` lists the merged keys first, then the other
//! columns of each side, as Postgres does. Qualified `left.k` and `right.k` keep their own
//! values. Joins of more than two relations, or with a side of unknown columns, are left as
//! they are.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Ident, JoinConstraint, JoinOperator, ObjectName, Query, Select, SelectItem, SetExpr, Statement, TableFactor, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// Rewrite the `RIGHT`/`FULL` `USING`/`NATURAL` joins of `statements` as the module says;
/// `columns` gives a relation's column names by its catalog name. Returns whether anything
/// changed.
pub fn coalesce_using_keys(statements: &mut [Statement], columns: &dyn Fn(&str) -> Option<Vec<String>>) -> bool {
    let mut rewrite = Rewrite { columns, changed: false };
    for statement in statements.iter_mut() {
        let _ = statement.visit(&mut rewrite);
    }
    rewrite.changed
}

/// [`coalesce_using_keys`] on statement text (the extended protocol's, which DataFusion
/// parses itself); None when nothing changes.
pub fn coalesce_using_keys_in_text(sql: &str, columns: &dyn Fn(&str) -> Option<Vec<String>>) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    if !(lower.contains("natural") || lower.contains("using")) || sql.len() > 100_000 {
        return None;
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    coalesce_using_keys(&mut statements, columns).then(|| statements.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("; "))
}

struct Rewrite<'a> {
    columns: &'a dyn Fn(&str) -> Option<Vec<String>>,
    changed: bool,
}

/// A name as the catalog spells it: unquoted identifiers fold to lower case.
fn folded(ident: &Ident) -> String {
    if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_ascii_lowercase() }
}

fn quoted(name: &str) -> String {
    Ident::with_quote('"', name).to_string()
}

/// A relation in `FROM` with known columns, a catalog relation or an aliased subquery whose
/// select list names its columns: how the query refers to it, and its columns.
fn named(factor: &TableFactor, columns: &dyn Fn(&str) -> Option<Vec<String>>) -> Option<(String, Vec<String>)> {
    match factor {
        TableFactor::Table { name, alias, args: None, .. } => {
            let ObjectName(parts) = name;
            let last = parts.last()?.as_ident()?;
            let mut cols = columns(&folded(last))?;
            let qualifier = alias.as_ref().map(|a| folded(&a.name)).unwrap_or_else(|| folded(last));
            if let Some(alias) = alias.as_ref().filter(|a| !a.columns.is_empty()) {
                // `t AS x(a, b)` renames the first columns.
                for (col, renamed) in cols.iter_mut().zip(&alias.columns) {
                    *col = folded(&renamed.name);
                }
            }
            Some((qualifier, cols))
        }
        TableFactor::Derived { subquery, alias: Some(alias), .. } => {
            let mut cols = select_list_names(subquery)?;
            for (col, renamed) in cols.iter_mut().zip(&alias.columns) {
                *col = folded(&renamed.name);
            }
            Some((folded(&alias.name), cols))
        }
        _ => None,
    }
}

/// The output column names of `SELECT a, t.b, x + 1 AS c ...`; None when one is not a plain
/// name (`*`, an unnamed expression) or the query is not a plain select.
fn select_list_names(query: &Query) -> Option<Vec<String>> {
    let SetExpr::Select(select) = query.body.as_ref() else { return None };
    select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(Expr::Identifier(ident)) | SelectItem::ExprWithAlias { alias: ident, .. } => Some(folded(ident)),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => parts.last().map(folded),
            _ => None,
        })
        .collect()
}

fn expr(text: &str) -> Option<Expr> {
    Parser::new(&PostgreSqlDialect {}).try_with_sql(text).ok()?.parse_expr().ok()
}

impl VisitorMut for Rewrite<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        let SetExpr::Select(select) = query.body.as_mut() else { return ControlFlow::Continue(()) };
        let Some(keys) = self.rewrite_join(select) else { return ControlFlow::Continue(()) };
        self.changed = true;
        let mut merged = Merged { keys: &keys.merged, depth: 0 };
        let mut items = Vec::new();
        for item in std::mem::take(&mut select.projection) {
            match item {
                SelectItem::Wildcard(options) if options == Default::default() => items.extend(keys.star.iter().cloned()),
                SelectItem::UnnamedExpr(Expr::Identifier(ident)) if keys.merged.iter().any(|(k, _)| *k == folded(&ident)) => {
                    let (_, coalesced) = keys.merged.iter().find(|(k, _)| *k == folded(&ident)).expect("found above");
                    items.push(SelectItem::ExprWithAlias { expr: coalesced.clone(), alias: ident });
                }
                SelectItem::UnnamedExpr(mut e) => {
                    let _ = e.visit(&mut merged);
                    items.push(SelectItem::UnnamedExpr(e));
                }
                SelectItem::ExprWithAlias { mut expr, alias } => {
                    let _ = expr.visit(&mut merged);
                    items.push(SelectItem::ExprWithAlias { expr, alias });
                }
                other => items.push(other),
            }
        }
        select.projection = items;
        if let Some(e) = &mut select.selection {
            let _ = e.visit(&mut merged);
        }
        if let Some(e) = &mut select.having {
            let _ = e.visit(&mut merged);
        }
        let _ = select.group_by.visit(&mut merged);
        if let Some(order_by) = &mut query.order_by {
            let _ = order_by.visit(&mut merged);
        }
        ControlFlow::Continue(())
    }
}

/// What one rewritten join merges: each key with its `COALESCE`, and what `*` lists.
struct Keys {
    merged: Vec<(String, Expr)>,
    star: Vec<SelectItem>,
}

impl Rewrite<'_> {
    /// `FROM a {RIGHT | FULL} JOIN b {USING (k, ...) | NATURAL}` as `ON a.k = b.k AND ...`,
    /// with the merged keys; None (unchanged) for any other `FROM`.
    fn rewrite_join(&self, select: &mut Select) -> Option<Keys> {
        let [from] = select.from.as_mut_slice() else { return None };
        let [join] = from.joins.as_mut_slice() else { return None };
        let constraint = match &mut join.join_operator {
            JoinOperator::Right(c) | JoinOperator::RightOuter(c) | JoinOperator::FullOuter(c) => c,
            _ => return None,
        };
        let (left, left_columns) = named(&from.relation, self.columns)?;
        let (right, right_columns) = named(&join.relation, self.columns)?;
        let keys: Vec<String> = match constraint {
            JoinConstraint::Using(names) => {
                names.iter().map(|n| n.0.last().and_then(|p| p.as_ident()).map(folded)).collect::<Option<Vec<_>>>()?
            }
            JoinConstraint::Natural => left_columns.iter().filter(|c| right_columns.contains(c)).cloned().collect(),
            _ => return None,
        };
        if keys.is_empty() || keys.iter().any(|k| !left_columns.contains(k) || !right_columns.contains(k)) {
            return None;
        }
        let (l, r) = (quoted(&left), quoted(&right));
        let on = keys.iter().map(|k| format!("{l}.{q} = {r}.{q}", q = quoted(k))).collect::<Vec<_>>().join(" AND ");
        let merged: Vec<(String, Expr)> =
            keys.iter().map(|k| Some((k.clone(), expr(&format!("COALESCE({l}.{q}, {r}.{q})", q = quoted(k)))?))).collect::<Option<_>>()?;
        let mut star: Vec<SelectItem> =
            merged.iter().map(|(k, e)| SelectItem::ExprWithAlias { expr: e.clone(), alias: Ident::with_quote('"', k) }).collect();
        for (qualifier, columns) in [(&l, &left_columns), (&r, &right_columns)] {
            for c in columns.iter().filter(|c| !keys.contains(c)) {
                star.push(SelectItem::UnnamedExpr(expr(&format!("{qualifier}.{}", quoted(c)))?));
            }
        }
        let on = expr(&on)?;
        *constraint = JoinConstraint::On(on);
        Some(Keys { merged, star })
    }
}

/// Replaces unqualified merged keys with their `COALESCE`, outside subqueries (which have
/// scopes of their own).
struct Merged<'a> {
    keys: &'a [(String, Expr)],
    depth: usize,
}

impl VisitorMut for Merged<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if self.depth == 0
            && let Expr::Identifier(ident) = e
            && let Some((_, coalesced)) = self.keys.iter().find(|(k, _)| *k == folded(ident))
        {
            *e = coalesced.clone();
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        let columns = |name: &str| match name {
            "a" => Some(vec!["k".to_string(), "x".to_string()]),
            "b" => Some(vec!["y".to_string(), "k".to_string()]),
            _ => None,
        };
        coalesce_using_keys(&mut statements, &columns);
        statements[0].to_string()
    }

    #[test]
    fn the_merged_key_of_right_and_full_joins_is_coalesced() {
        assert_eq!(
            rewritten("SELECT * FROM a NATURAL RIGHT JOIN b"),
            r#"SELECT COALESCE("a"."k", "b"."k") AS "k", "a"."x", "b"."y" FROM a RIGHT JOIN b ON "a"."k" = "b"."k""#
        );
        assert_eq!(
            rewritten("SELECT k, count(*) FROM a AS p FULL JOIN b USING (k) WHERE k > 1 GROUP BY k ORDER BY k"),
            r#"SELECT COALESCE("p"."k", "b"."k") AS k, count(*) FROM a AS p FULL JOIN b ON "p"."k" = "b"."k" WHERE COALESCE("p"."k", "b"."k") > 1 GROUP BY COALESCE("p"."k", "b"."k") ORDER BY COALESCE("p"."k", "b"."k")"#
        );
        // Qualified keys keep their side's value; LEFT joins and unknown relations are left alone.
        assert!(rewritten("SELECT a.k, b.k FROM a FULL JOIN b USING (k)").starts_with("SELECT a.k, b.k FROM"));
        assert_eq!(rewritten("SELECT * FROM a LEFT JOIN b USING (k)"), "SELECT * FROM a LEFT JOIN b USING(k)");
        assert_eq!(rewritten("SELECT * FROM a RIGHT JOIN c USING (k)"), "SELECT * FROM a RIGHT JOIN c USING(k)");
    }

    #[test]
    fn subqueries_and_renamed_columns_are_merged_too() {
        assert_eq!(
            rewritten("SELECT k FROM a NATURAL RIGHT JOIN (SELECT y AS k, b.y FROM b) AS s"),
            r#"SELECT COALESCE("a"."k", "s"."k") AS k FROM a RIGHT JOIN (SELECT y AS k, b.y FROM b) AS s ON "a"."k" = "s"."k""#
        );
        assert_eq!(
            rewritten("SELECT k FROM a FULL JOIN b AS r(k) USING (k)"),
            r#"SELECT COALESCE("a"."k", "r"."k") AS k FROM a FULL JOIN b AS r (k) ON "a"."k" = "r"."k""#
        );
        // A subquery whose columns are not all named is left alone.
        assert!(rewritten("SELECT * FROM a NATURAL FULL JOIN (SELECT k + 1 FROM b) AS s").contains("NATURAL"));
    }
}
