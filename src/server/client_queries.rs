//! Catalog queries that known clients send verbatim and DataFusion cannot plan, rewritten
//! to equivalents it can (as datafusion-postgres does for the queries it knows).

use std::borrow::Cow;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr, SelectItem, SetExpr, Value, visit_expressions_mut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// `(client, exact text, replacement)`.
const REWRITES: &[(&str, &str, &str)] = &[
    // psql `\d+`: Velocity has no storage options, so the option list is empty.
    (
        "psql \\d+",
        "pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ')",
        "''",
    ),
];

/// `sql` with every known client query fragment replaced.
pub fn rewrite(sql: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(sql);
    for (_, from, to) in REWRITES {
        if out.contains(from) {
            out = Cow::Owned(out.replace(from, to));
        }
    }
    if out.contains("pg_catalog.") && out.contains("(SELECT ") {
        if let Some(rewritten) = aggregate_scalar_subqueries(&out) {
            out = Cow::Owned(rewritten);
        }
    }
    if out.to_ascii_lowercase().contains("escape") {
        if let Some(rewritten) = like_escape_to_backslash(&out) {
            out = Cow::Owned(rewritten);
        }
    }
    out
}

/// Catalog queries (SQLAlchemy's column reflection) use correlated scalar subqueries that
/// return at most one row by construction; DataFusion plans them only when aggregated, so
/// `(SELECT e FROM ...)` becomes `(SELECT max(e) FROM ...)`. Applied to queries that name
/// `pg_catalog.` only.
fn aggregate_scalar_subqueries(sql: &str) -> Option<String> {
    const AGGREGATES: &[&str] = &["max", "min", "count", "sum", "avg", "array_agg", "string_agg", "bool_and", "bool_or"];
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut changed = false;
    let _ = visit_expressions_mut(&mut statements, |e| {
        if let Expr::Subquery(query) = e {
            if let SetExpr::Select(select) = query.body.as_mut() {
                let grouped = !matches!(&select.group_by, datafusion::sql::sqlparser::ast::GroupByExpr::Expressions(g, _) if g.is_empty());
                if select.projection.len() == 1 && !grouped && select.having.is_none() {
                    let item = &mut select.projection[0];
                    let expr = match item {
                        SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => Some(expr),
                        _ => None,
                    };
                    if let Some(expr) = expr {
                        let aggregated = matches!(&*expr, Expr::Function(f) if f.name.0.last().map(|p| p.to_string().to_ascii_lowercase()).is_some_and(|n| AGGREGATES.contains(&n.as_str())));
                        if !aggregated {
                            if let Ok(wrapped) = Parser::new(&PostgreSqlDialect {}).try_with_sql(&format!("max({expr})")).and_then(|mut p| p.parse_expr()) {
                                *expr = wrapped;
                                changed = true;
                            }
                        }
                    }
                }
            }
        }
        // `CASE WHEN c THEN (SELECT max(e) ... WHERE w) ELSE NULL END` is
        // `(SELECT max(e) ... WHERE (c) AND (w))`: DataFusion cannot run a subquery inside CASE.
        if let Expr::Case { operand: None, conditions, else_result, .. } = e {
            let else_null = else_result.as_deref().is_none_or(|x| matches!(x, Expr::Value(v) if v.value == Value::Null));
            if conditions.len() == 1 && else_null && matches!(conditions[0].result, Expr::Subquery(_)) {
                let Expr::Subquery(mut query) = conditions[0].result.clone() else { unreachable!() };
                if let SetExpr::Select(select) = query.body.as_mut() {
                    let condition = Expr::Nested(Box::new(conditions[0].condition.clone()));
                    select.selection = Some(match select.selection.take() {
                        Some(w) => Expr::BinaryOp { left: Box::new(condition), op: BinaryOperator::And, right: Box::new(Expr::Nested(Box::new(w))) },
                        None => condition,
                    });
                    *e = Expr::Subquery(query);
                    changed = true;
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    changed.then(|| statements.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(";\n"))
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
    changed.then(|| statements.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(";\n"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn psql_describe_plus_options() {
        let q = "SELECT c.relispartition, pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ')\n, c.reltablespace";
        assert_eq!(super::rewrite(q), "SELECT c.relispartition, ''\n, c.reltablespace");
    }

    #[test]
    fn catalog_scalar_subqueries_are_aggregated() {
        let q = "SELECT a.attname, (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS e FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) AS def, (SELECT count(*) FROM pg_catalog.pg_class) AS n FROM pg_catalog.pg_attribute a";
        let out = super::rewrite(q);
        assert!(out.contains("(SELECT max(pg_catalog.pg_get_expr(d.adbin, d.adrelid)) AS e FROM"), "{out}");
        assert!(out.contains("(SELECT count(*) FROM pg_catalog.pg_class)"), "{out}");
        let q = "SELECT CASE WHEN a.atthasdef THEN (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d WHERE d.adnum = a.attnum) ELSE NULL END AS def FROM pg_catalog.pg_attribute a";
        let out = super::rewrite(q);
        assert!(out.contains("SELECT (SELECT max(pg_catalog.pg_get_expr(d.adbin, d.adrelid)) FROM pg_catalog.pg_attrdef d WHERE (a.atthasdef) AND (d.adnum = a.attnum)) AS def"), "{out}");
        assert_eq!(super::rewrite("SELECT (SELECT x FROM t) FROM u"), "SELECT (SELECT x FROM t) FROM u", "user queries are left alone");
    }

    #[test]
    fn like_escape_slash() {
        let q = "SELECT nspname FROM pg_namespace WHERE (nspname NOT LIKE $1::VARCHAR || '%' ESCAPE '/') ORDER BY nspname";
        let out = super::rewrite(q);
        assert!(out.contains("NOT LIKE replace(($1::VARCHAR || '%'), '/', '\\')"), "{out}");
        assert!(!out.contains("ESCAPE"), "{out}");
    }
}
