//! Catalog queries that known clients send verbatim and DataFusion cannot plan, rewritten
//! to equivalents it can (as datafusion-postgres does for the queries it knows).

use std::borrow::Cow;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, Value, visit_expressions_mut};
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
    if out.to_ascii_lowercase().contains("escape") {
        if let Some(rewritten) = like_escape_to_backslash(&out) {
            out = Cow::Owned(rewritten);
        }
    }
    out
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
    fn like_escape_slash() {
        let q = "SELECT nspname FROM pg_namespace WHERE (nspname NOT LIKE $1::VARCHAR || '%' ESCAPE '/') ORDER BY nspname";
        let out = super::rewrite(q);
        assert!(out.contains("NOT LIKE replace(($1::VARCHAR || '%'), '/', '\\')"), "{out}");
        assert!(!out.contains("ESCAPE"), "{out}");
    }
}
