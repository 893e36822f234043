//! `character varying` as Postgres users write it: `x::character varying`, `CAST(x AS
//! CHARACTER VARYING(10))`, `CHAR VARYING` in `CREATE TABLE`. DataFusion's planner knows
//! `VARCHAR` only, so the words become `VARCHAR`. A cast to `varchar(n)` keeps the first `n`
//! characters, as Postgres' explicit cast does (`'abcdef'::varchar(3)` is `abc`); DataFusion
//! ignores the length, so the cast becomes `CAST(left(x, n) AS VARCHAR(n))`.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{CharacterLength, DataType, Expr, VisitMut, VisitorMut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Word};

/// Rewrite `character varying` and casts to `varchar(n)` in every statement of `sql`; None
/// when nothing changes.
pub fn rewrite(sql: &str) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    if !(lower.contains("varying") || lower.contains("varchar")) {
        return None;
    }
    let words = varchar_words(sql);
    let text = words.as_deref().unwrap_or(sql);
    match truncating_casts(text) {
        Some(rewritten) => Some(rewritten),
        None => words,
    }
}

/// `CHARACTER VARYING` and `CHAR VARYING` (unquoted words) as `VARCHAR`.
fn varchar_words(sql: &str) -> Option<String> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql).with_unescape(false).tokenize().ok()?;
    let is = |t: &Token, k: Keyword| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.keyword == k);
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut changed = false;
    let mut i = 0;
    while i < tokens.len() {
        if is(&tokens[i], Keyword::CHARACTER) || is(&tokens[i], Keyword::CHAR) {
            let mut j = i + 1;
            while j < tokens.len() && matches!(tokens[j], Token::Whitespace(_)) {
                j += 1;
            }
            if j > i + 1 && j < tokens.len() && is(&tokens[j], Keyword::VARYING) {
                out.push(Token::Word(Word { value: "VARCHAR".into(), quote_style: None, keyword: Keyword::VARCHAR }));
                changed = true;
                i = j + 1;
                continue;
            }
        }
        out.push(tokens[i].clone());
        i += 1;
    }
    changed.then(|| out.iter().map(|t| t.to_string()).collect())
}

/// `CAST(x AS VARCHAR(n))` (and `x::varchar(n)`) as `CAST(left(x, n) AS VARCHAR(n))`.
fn truncating_casts(sql: &str) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let has_length =
        tokens.windows(2).any(|w| matches!(&w[0], Token::Word(v) if v.keyword == Keyword::VARCHAR) && matches!(w[1], Token::LParen));
    if !has_length {
        return None;
    }
    super::rewrite_statements(tokens, |statements| {
        let mut visitor = Truncate { changed: false };
        let _ = VisitMut::visit(statements, &mut visitor);
        visitor.changed
    })
}

struct Truncate {
    changed: bool,
}

impl VisitorMut for Truncate {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Cast { expr: inner, data_type: DataType::Varchar(Some(CharacterLength::IntegerLength { length, .. })), .. } = expr
            && !matches!(inner.as_ref(), Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("left"))
        {
            let text = format!("left(CAST({inner} AS VARCHAR), {length})");
            if let Ok(left) = Parser::new(&PostgreSqlDialect {}).try_with_sql(&text).and_then(|mut p| p.parse_expr()) {
                **inner = left;
                self.changed = true;
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn character_varying_as_varchar() {
        assert_eq!(rewrite("SELECT x::character varying FROM t").as_deref(), Some("SELECT x::VARCHAR FROM t"));
        assert_eq!(
            rewrite("SELECT CAST(x AS CHARACTER VARYING(3)) FROM t").as_deref(),
            Some("SELECT CAST(left(CAST(x AS VARCHAR), 3) AS VARCHAR(3)) FROM t")
        );
        assert_eq!(
            rewrite("CREATE TABLE t (s char  varying(10), \"character\" TEXT)").as_deref(),
            Some("CREATE TABLE t (s VARCHAR(10), \"character\" TEXT)")
        );
        assert_eq!(rewrite("SELECT 'character varying'"), None);
        assert_eq!(rewrite("SELECT x::varchar FROM t"), None);
    }
}
