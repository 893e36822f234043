//! Result column names as Postgres gives them (`FigureColname`): an unnamed `count(*)` is
//! `count`, `upper(s)` is `upper`, `t.x::int` is `x`, `'a'::text` is `text`, `CASE ...` is
//! `case`, any other expression `?column?`. DataFusion names them by their text
//! (`count(*)`, `t.x + Int64(1)`); the top-level select list gets the Postgres name as an
//! alias, unless another output column has that name already (Postgres allows two columns
//! named `count`, DataFusion does not).

use std::collections::HashSet;

use datafusion::sql::sqlparser::ast::{DataType, Expr, Ident, Query, SelectItem, SetExpr, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// The name Postgres gives an unnamed select-list expression; `None` for a column reference
/// (DataFusion names it the same) or a form left as DataFusion names it.
fn figure_name(expr: &Expr) -> Option<String> {
    Some(match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => return None,
        Expr::Function(f) => match f.name.0.last()?.as_ident() {
            Some(ident) => folded(ident),
            None => return None,
        },
        Expr::Nested(inner) => return figure_name(inner),
        // A cast keeps its operand's name (DataFusion names `x::int` `t.x`).
        Expr::Cast { expr, data_type, .. } => match unnested(expr) {
            Expr::Identifier(ident) => folded(ident),
            Expr::CompoundIdentifier(parts) => folded(parts.last()?),
            inner @ (Expr::Function(_) | Expr::Cast { .. } | Expr::Case { .. }) => return figure_name(inner),
            _ => type_name(data_type)?.to_string(),
        },
        Expr::Case { .. } => "case".to_string(),
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::Array(_) => return None,
        _ => "?column?".to_string(),
    })
}

/// `expr` without the parentheses around it (Postgres' parse tree keeps none: `(x)::int` is
/// named `x`).
fn unnested(mut expr: &Expr) -> &Expr {
    while let Expr::Nested(inner) = expr {
        expr = inner;
    }
    expr
}

/// Postgres' internal name of the common types a literal is cast to (`'a'::text` is `text`).
fn type_name(data_type: &DataType) -> Option<&'static str> {
    Some(match data_type {
        DataType::Int(_) | DataType::Integer(_) | DataType::Int4(_) => "int4",
        DataType::BigInt(_) | DataType::Int8(_) => "int8",
        DataType::SmallInt(_) | DataType::Int2(_) => "int2",
        DataType::Text => "text",
        DataType::Varchar(_) | DataType::CharacterVarying(_) => "varchar",
        DataType::Boolean | DataType::Bool => "bool",
        DataType::DoublePrecision | DataType::Float8 => "float8",
        DataType::Real | DataType::Float4 => "float4",
        DataType::Numeric(_) | DataType::Decimal(_) => "numeric",
        DataType::Date => "date",
        DataType::JSON => "json",
        DataType::JSONB => "jsonb",
        DataType::Bytea => "bytea",
        _ => return None,
    })
}

/// An identifier as the catalog spells it: unquoted ones fold to lower case.
fn folded(ident: &Ident) -> String {
    if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() }
}

/// Alias the unnamed expressions of each top-level SELECT list of `statements`; whether any
/// changed.
pub fn name_columns(statements: &mut [Statement]) -> bool {
    let mut changed = false;
    for statement in statements {
        if let Statement::Query(query) = statement {
            changed |= name_query(query);
        }
    }
    changed
}

/// Alias the unnamed expressions of `query`'s top-level select list (a view's columns are
/// named as Postgres names them too).
pub fn name_query(query: &mut Query) -> bool {
    let SetExpr::Select(select) = query.body.as_mut() else { return false };
    // Names the list has already: aliases and column references.
    let mut taken: HashSet<String> = select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(folded(alias)),
            SelectItem::UnnamedExpr(Expr::Identifier(i)) => Some(folded(i)),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => parts.last().map(folded),
            _ => None,
        })
        .collect();
    let mut changed = false;
    for item in select.projection.iter_mut() {
        let SelectItem::UnnamedExpr(expr) = item else { continue };
        let Some(name) = figure_name(expr) else { continue };
        if !taken.insert(name.clone()) {
            continue;
        }
        *item = SelectItem::ExprWithAlias { expr: expr.clone(), alias: Ident::with_quote('"', name) };
        changed = true;
    }
    changed
}

/// [`name_columns`] on SQL text: the rewritten text, or `None` when nothing changes.
pub fn name_columns_in_text(sql: &str) -> Option<String> {
    if sql.len() > 100_000 || !sql.trim_start().get(..6).is_some_and(|s| s.eq_ignore_ascii_case("select")) {
        return None;
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    name_columns(&mut statements).then(|| statements.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_postgres() {
        // Postgres 15: count | sum | ?column? | text | upper | case | int4 | coalesce | count | x | y | x | w | v
        // (DataFusion cannot name two columns alike: the second count and x keep their names.)
        let sql = "SELECT count(*), sum(1), 1 + 1, 'a'::text, upper('x'), CASE WHEN true THEN 1 END, (1)::int, coalesce(1, 2), count(*), x, t.y, x::int, z AS w, t.v::bigint FROM t";
        let named = name_columns_in_text(sql).expect("renamed");
        assert_eq!(
            named,
            "SELECT count(*) AS \"count\", sum(1) AS \"sum\", 1 + 1 AS \"?column?\", 'a'::TEXT AS \"text\", upper('x') AS \"upper\", \
             CASE WHEN true THEN 1 END AS \"case\", (1)::INT AS \"int4\", coalesce(1, 2) AS \"coalesce\", count(*), x, t.y, x::INT, z AS w, \
             t.v::BIGINT AS \"v\" FROM t"
        );
        // Postgres 15: x | y | int4
        assert_eq!(
            name_columns_in_text("SELECT (x)::int, ((t.y))::text, (1)::int FROM t").expect("renamed"),
            "SELECT (x)::INT AS \"x\", ((t.y))::TEXT AS \"y\", (1)::INT AS \"int4\" FROM t"
        );
        assert_eq!(name_columns_in_text("SELECT x, y AS z FROM t"), None);
        assert_eq!(name_columns_in_text("INSERT INTO t SELECT count(*) FROM u"), None);
    }
}
