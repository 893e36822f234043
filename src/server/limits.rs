//! Postgres' limits on the shape of a statement, checked on its text before DataFusion plans
//! it: planning is not bounded by them (a `SELECT` of 65,535 parameters took DataFusion's
//! planner about 90 s, time quadratic in the columns, and held up other connections).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Query, SetExpr, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::error::SessionError;

/// Postgres' `MaxTupleAttributeNumber`: "target lists can have at most 1664 entries" (54011).
pub const MAX_TARGET_LIST: usize = 1664;

/// The widest `SELECT` list of a set expression (each branch of a UNION, say).
fn widest(set: &SetExpr) -> usize {
    match set {
        SetExpr::Select(select) => select.projection.len(),
        SetExpr::SetOperation { left, right, .. } => widest(left).max(widest(right)),
        SetExpr::Query(q) => widest(&q.body),
        _ => 0,
    }
}

struct TargetLists;

impl Visitor for TargetLists {
    type Break = usize;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<usize> {
        match widest(&query.body) {
            n if n > MAX_TARGET_LIST => ControlFlow::Break(n),
            _ => ControlFlow::Continue(()),
        }
    }
}

/// Refuse `sql` (54011) if a `SELECT` list has more than [`MAX_TARGET_LIST`] entries. Only a
/// statement of more tokens than that can, so shorter ones are not parsed here; text that
/// does not parse passes (the real parse reports it). Runs after the depth check, on a stack
/// sized like it.
pub fn check_target_lists(sql: &str) -> Result<(), SessionError> {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else { return Ok(()) };
    let significant = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).count();
    if significant <= MAX_TARGET_LIST {
        return Ok(());
    }
    let stack = (64usize << 20).saturating_add(significant.saturating_mul(1024)).min(1 << 30);
    stacker::grow(stack, move || {
        let Ok(statements) = Parser::new(&dialect).with_tokens(tokens).parse_statements() else { return Ok(()) };
        match statements.visit(&mut TargetLists) {
            ControlFlow::Break(_) => Err(SessionError::TargetListTooLong(MAX_TARGET_LIST)),
            ControlFlow::Continue(()) => Ok(()),
        }
    })
}
