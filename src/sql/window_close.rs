//! `CREATE MATERIALIZED VIEW v AS SELECT ... GROUP BY window_end EMIT ON WINDOW CLOSE`
//! (RisingWave's syntax), which sqlparser does not parse: the trailing clause becomes the view
//! option `WITH (emit = 'on_window_close')`, which it does, and which the stored definition
//! keeps (so a restart plans the view the same way).

use std::borrow::Cow;

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// Rewrite a trailing `EMIT ON WINDOW CLOSE` of a `CREATE [OR REPLACE] MATERIALIZED VIEW`
/// into `WITH (emit = 'on_window_close')` before its `AS`; anything else is left alone.
pub fn emit_on_window_close(sql: &str) -> Cow<'_, str> {
    if !sql.to_ascii_lowercase().contains("emit") {
        return sql.into();
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).with_unescape(false).tokenize() else { return sql.into() };
    let significant: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i], Token::Whitespace(_) | Token::EOF))
        .filter(|&i| tokens[i] != Token::SemiColon)
        .collect();
    let word = |i: usize, w: &str| matches!(&tokens[i], Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w));
    let n = significant.len();
    let words = |from: usize, ws: &[&str]| from + ws.len() <= n && ws.iter().enumerate().all(|(k, w)| word(significant[from + k], w));
    if n < 8 || !words(n - 4, &["emit", "on", "window", "close"]) || !word(significant[0], "create") {
        return sql.into();
    }
    // CREATE [OR REPLACE] MATERIALIZED VIEW name [(columns)] AS ...
    let at = if words(1, &["or", "replace"]) { 3 } else { 1 };
    if !words(at, &["materialized", "view"]) {
        return sql.into();
    }
    let mut depth = 0i32;
    let mut as_at = None;
    for &i in &significant[at + 2..n - 4] {
        match &tokens[i] {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ if depth == 0 && word(i, "as") => {
                as_at = Some(i);
                break;
            }
            _ => {}
        }
    }
    let Some(as_at) = as_at else { return sql.into() };
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let clause_start = significant[n - 4];
    for (i, t) in tokens.iter().enumerate() {
        if i == as_at {
            out.push(Token::make_keyword("WITH"));
            out.push(Token::Whitespace(Whitespace::Space));
            out.push(Token::LParen);
            out.push(Token::make_word("emit", None));
            out.push(Token::Whitespace(Whitespace::Space));
            out.push(Token::Eq);
            out.push(Token::Whitespace(Whitespace::Space));
            out.push(Token::SingleQuotedString("on_window_close".into()));
            out.push(Token::RParen);
            out.push(Token::Whitespace(Whitespace::Space));
        }
        if i >= clause_start && i <= significant[n - 1] {
            continue;
        }
        out.push(t.clone());
    }
    out.iter().map(|t| t.to_string()).collect::<String>().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_the_clause_into_view_options() {
        assert_eq!(
            emit_on_window_close(
                "CREATE MATERIALIZED VIEW v AS SELECT window_end, count(*) FROM t GROUP BY window_end EMIT ON WINDOW CLOSE;"
            ),
            "CREATE MATERIALIZED VIEW v WITH (emit = 'on_window_close') AS SELECT window_end, count(*) FROM t GROUP BY window_end ;"
        );
        assert_eq!(
            emit_on_window_close("create or replace materialized view v (a) as select 1 as emit emit on window close"),
            "create or replace materialized view v (a) WITH (emit = 'on_window_close') as select 1 as emit "
        );
        assert_eq!(emit_on_window_close("SELECT 'emit on window close'"), "SELECT 'emit on window close'");
        assert_eq!(emit_on_window_close("SELECT emit FROM t"), "SELECT emit FROM t");
    }
}
