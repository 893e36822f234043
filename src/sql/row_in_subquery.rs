//! `(a, b) IN (SELECT x, y ...)` and `(a, b) NOT IN (SELECT x, y ...)`, which DataFusion's
//! planner refuses (a subquery of one column only), as `EXISTS` / `NOT EXISTS` with Postgres'
//! row comparison, where only their truth matters (a conjunct of `WHERE`):
//!
//! - `IN`: some subquery row equals `(a, b)`: `EXISTS (... WHERE x = a AND y = b)`, a semi
//!   join on the columns.
//! - `NOT IN`: every subquery row is known to differ from `(a, b)` in some column where both
//!   are not NULL (a NULL on either side makes the comparison unknown, and the row is then
//!   not kept): `NOT EXISTS (... WHERE (x = a OR x IS NULL OR a IS NULL) AND ...)`. With
//!   the NULL cases in its condition this anti join has no equality keys: in a materialized
//!   view a change on either side is compared with every row of the other.
//!
//! Elsewhere (under `NOT`, `OR`, in a select list) they are left to DataFusion, which
//! refuses them. A subquery that refers to the enclosing query is refused (0A000) by
//! `planner::analyzer::RefuseCorrelatedNotIn`: DataFusion cannot decorrelate it through the
//! derived table [`ALIAS`].

/// The name of the derived table the subquery becomes.
pub const ALIAS: &str = "velocity_in";

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr, Query, SetExpr, VisitMut, VisitorMut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Tokenizer;

/// Rewrite the row `IN`/`NOT IN` subqueries of every statement in `sql`; None when nothing
/// changes.
pub fn rewrite(sql: &str) -> Option<String> {
    // A tuple, then `[NOT] IN (SELECT` or `(WITH`: checked before anything is parsed.
    static CANDIDATE: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"(?i)\)\s*(not\s+)?in\s*\(\s*(select|with)\b").ok());
    if !CANDIDATE.as_ref().is_some_and(|re| re.is_match(sql)) {
        return None;
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    super::rewrite_statements(tokens, |statements| {
        let mut rewrite = Rewrite { changed: false };
        let _ = VisitMut::visit(statements, &mut rewrite);
        rewrite.changed
    })
}

struct Rewrite {
    changed: bool,
}

impl VisitorMut for Rewrite {
    type Break = ();

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        self.rewrite_body(query.body.as_mut());
        ControlFlow::Continue(())
    }
}

impl Rewrite {
    fn rewrite_body(&mut self, body: &mut SetExpr) {
        match body {
            SetExpr::Select(select) => {
                if let Some(selection) = &mut select.selection {
                    self.rewrite_conjuncts(selection);
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.rewrite_body(left);
                self.rewrite_body(right);
            }
            _ => {}
        }
    }

    fn rewrite_conjuncts(&mut self, e: &mut Expr) {
        match e {
            Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
                self.rewrite_conjuncts(left);
                self.rewrite_conjuncts(right);
            }
            Expr::Nested(inner) => self.rewrite_conjuncts(inner),
            Expr::InSubquery { expr, subquery, negated } => {
                if let Expr::Tuple(items) = expr.as_ref()
                    && let Some(exists) = exists(items, subquery, *negated)
                {
                    *e = exists;
                    self.changed = true;
                }
            }
            _ => {}
        }
    }
}

/// `[NOT] EXISTS (SELECT 1 FROM (subquery) AS velocity_in(velocity_in_1, ...) WHERE ...)`.
fn exists(items: &[Expr], subquery: &Query, negated: bool) -> Option<Expr> {
    let columns: Vec<String> = (1..=items.len()).map(|i| format!("velocity_in_{i}")).collect();
    let conditions: Vec<String> = items
        .iter()
        .zip(&columns)
        .map(|(item, c)| {
            let c = format!("{ALIAS}.{c}");
            if negated { format!("({c} = ({item}) OR {c} IS NULL OR ({item}) IS NULL)") } else { format!("{c} = ({item})") }
        })
        .collect();
    let text = format!(
        "{}EXISTS (SELECT 1 FROM ({subquery}) AS {ALIAS}({}) WHERE {})",
        if negated { "NOT " } else { "" },
        columns.join(", "),
        conditions.join(" AND ")
    );
    Parser::new(&PostgreSqlDialect {}).try_with_sql(&text).ok()?.parse_expr().ok()
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn row_in_subqueries_as_exists() {
        assert_eq!(
            rewrite("SELECT * FROM t WHERE (a, b) IN (SELECT x, y FROM s) AND a > 1").as_deref(),
            Some(
                "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM (SELECT x, y FROM s) AS velocity_in (velocity_in_1, velocity_in_2) WHERE velocity_in.velocity_in_1 = (a) AND velocity_in.velocity_in_2 = (b)) AND a > 1"
            )
        );
        assert_eq!(
            rewrite("SELECT * FROM t WHERE (a, b) NOT IN (SELECT x, y FROM s)").as_deref(),
            Some(
                "SELECT * FROM t WHERE NOT EXISTS (SELECT 1 FROM (SELECT x, y FROM s) AS velocity_in (velocity_in_1, velocity_in_2) WHERE (velocity_in.velocity_in_1 = (a) OR velocity_in.velocity_in_1 IS NULL OR (a) IS NULL) AND (velocity_in.velocity_in_2 = (b) OR velocity_in.velocity_in_2 IS NULL OR (b) IS NULL))"
            )
        );
        // Where NULL and false differ: left to DataFusion.
        assert_eq!(rewrite("SELECT * FROM t WHERE NOT (a, b) IN (SELECT x, y FROM s)"), None);
        assert_eq!(rewrite("SELECT * FROM t WHERE a IN (SELECT x FROM s)"), None);
    }
}
