//! Velocity's own statements, parsed with sqlparser's `Parser` helpers.
//!
//! Everything Postgres already has (CREATE TABLE, CREATE MATERIALIZED VIEW, INSERT, ...)
//! is parsed by sqlparser itself; this module only adds the statements it does not know,
//! and [`WithOptions`], how their `WITH (...)` options are read.

mod character_types;
pub mod column_names;
pub mod options;
pub mod row_in_subquery;
mod set_functions;
pub mod using_joins;
mod window_close;

pub use window_close::emit_on_window_close;

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

pub use options::{OptionError, WithOptions};
pub use using_joins::{coalesce_using_keys, coalesce_using_keys_in_text};

/// Errors in statement text.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("syntax error: {0}")]
    Syntax(String),
    #[error("{0} is not supported")]
    Unsupported(String),
    /// SQLSTATE 54001, as Postgres answers when a statement would exhaust its stack.
    #[error("statement too complex: expressions nest more than {0} levels deep")]
    TooComplex(usize),
}

/// Statements whose expressions nest deeper than this are refused with 54001. Postgres, on
/// its default 2 MB stack, evaluates `SELECT 1+1+...` with 3,000 terms and refuses 5,000.
pub const MAX_EXPRESSION_DEPTH: usize = 4000;

/// Counts expression nesting; stops descending past [`MAX_EXPRESSION_DEPTH`].
#[derive(Default)]
struct ExpressionDepth {
    now: usize,
}

impl datafusion::sql::sqlparser::ast::Visitor for ExpressionDepth {
    type Break = ();

    fn pre_visit_expr(&mut self, _: &datafusion::sql::sqlparser::ast::Expr) -> std::ops::ControlFlow<()> {
        self.now += 1;
        if self.now > MAX_EXPRESSION_DEPTH { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) }
    }

    fn post_visit_expr(&mut self, _: &datafusion::sql::sqlparser::ast::Expr) -> std::ops::ControlFlow<()> {
        self.now -= 1;
        std::ops::ControlFlow::Continue(())
    }
}

/// Refuse `sql` if its expressions nest deeper than [`MAX_EXPRESSION_DEPTH`] (a chain of
/// 100,000 `+` or `OR`), before anything recursive (planning, cloning, printing) sees it.
///
/// sqlparser parses operator chains in a loop, but visiting and dropping the tree recurse
/// once per level: that happens here on a stack sized for the statement. A statement of
/// fewer tokens than the limit cannot nest deeper and is not parsed here at all. Text that
/// does not parse passes; the real parse reports it.
pub fn check_expression_depth(sql: &str) -> Result<(), SqlError> {
    use datafusion::sql::sqlparser::ast::Visit;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else { return Ok(()) };
    let significant = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).count();
    if significant <= MAX_EXPRESSION_DEPTH {
        return Ok(());
    }
    // Virtual memory: only the pages the recursion reaches are touched.
    let stack = (64usize << 20).saturating_add(significant.saturating_mul(1024)).min(1 << 30);
    stacker::grow(stack, move || {
        let Ok(statements) = Parser::new(&dialect).with_tokens(tokens).parse_statements() else { return Ok(()) };
        let too_deep = statements.visit(&mut ExpressionDepth::default()).is_break();
        drop(statements);
        if too_deep { Err(SqlError::TooComplex(MAX_EXPRESSION_DEPTH)) } else { Ok(()) }
    })
}

/// A statement that plain sqlparser does not parse.
#[derive(Debug, Clone, PartialEq)]
pub enum VelocityStatement {
    /// `SHOW MATERIALIZED VIEWS`
    ShowMaterializedViews,
    /// `SHOW CREATE MATERIALIZED VIEW name` / `SHOW CREATE TABLE name`
    ShowCreate { name: String },
    /// `FLUSH`: returns once every change accepted so far is visible in every view.
    Flush,
    /// `CREATE SOURCE name WITH (connector = '...', ...)`
    CreateSource { name: String, options: Vec<(String, String)> },
    /// `SHOW SOURCES`
    ShowSources,
    /// `DROP SOURCE [IF EXISTS] name [CASCADE]`
    DropSource { name: String, if_exists: bool, cascade: bool },
    /// `CREATE SINK name FROM relation WITH (connector = 'kafka', ...)`
    CreateSink { name: String, from: String, options: Vec<(String, String)> },
    /// `SHOW SINKS`
    ShowSinks,
    /// `DROP SINK [IF EXISTS] name`
    DropSink { name: String, if_exists: bool },
    /// `SUBSCRIBE [TO] name [WITH (SNAPSHOT = bool, PROGRESS = bool)]`
    Subscribe(Subscribe),
    /// `COPY (SUBSCRIBE ...) TO STDOUT`
    CopySubscribe(Subscribe),
    /// `DECLARE cursor CURSOR FOR SUBSCRIBE ...`
    DeclareSubscribe { cursor: String, subscribe: Subscribe },
    /// `GRANT privileges ON SOURCE|SINK names TO roles` (`grant`) or `REVOKE ... FROM ...`;
    /// privileges lower-cased (`all` for ALL [PRIVILEGES]), PUBLIC as "".
    GrantOnConnector { privileges: Vec<String>, kind: ConnectorKind, names: Vec<String>, grantees: Vec<String>, grant: bool },
    /// `GRANT role, ... TO member, ...` (`grant`) or `REVOKE role, ... FROM member, ...`.
    GrantRole { roles: Vec<String>, members: Vec<String>, grant: bool },
    /// `ALTER SOURCE|SINK name OWNER TO role`
    AlterOwner { kind: ConnectorKind, name: String, owner: String },
    /// `FETCH [n | ALL] [FROM] cursor [WITH (timeout = '1s')]`; the server decides whether
    /// `cursor` is a subscription (otherwise it is DataFusion's ordinary cursor).
    Fetch { cursor: String, count: Option<u64>, timeout: Option<std::time::Duration> },
}

/// The objects that connect to the outside, which plain sqlparser does not know.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConnectorKind {
    Source,
    Sink,
}

impl ConnectorKind {
    pub fn sql_name(self) -> &'static str {
        match self {
            ConnectorKind::Source => "SOURCE",
            ConnectorKind::Sink => "SINK",
        }
    }
}

/// A changefeed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub name: String,
    /// Start with the current contents (as inserts at the current tick).
    pub snapshot: bool,
    /// Also emit a row for every tick, so consumers know time advanced.
    pub progress: bool,
}

/// `WITH (name = value, ...)`, names lower-cased, values as written (quotes removed).
pub fn parse_with_options(p: &mut Parser) -> Result<Vec<(String, String)>, SqlError> {
    let mut out = Vec::new();
    if !p.parse_keyword(Keyword::WITH) {
        return Ok(out);
    }
    p.expect_token(&Token::LParen).map_err(syntax)?;
    loop {
        let name = p.parse_identifier().map_err(syntax)?.value.to_ascii_lowercase();
        // A bare option name means true: `WITH (PROGRESS)`.
        if matches!(p.peek_token().token, Token::Comma | Token::RParen) {
            out.push((name, "true".to_string()));
            if !p.consume_token(&Token::Comma) {
                break;
            }
            continue;
        }
        let _ = p.consume_token(&Token::Eq);
        let value = match p.next_token().token {
            Token::SingleQuotedString(s) => s,
            Token::Number(n, _) => n,
            Token::Word(w) => w.value,
            other => return Err(SqlError::Syntax(format!("unexpected {other} as the value of option {name}"))),
        };
        out.push((name, value));
        if !p.consume_token(&Token::Comma) {
            break;
        }
    }
    p.expect_token(&Token::RParen).map_err(syntax)?;
    Ok(out)
}

fn syntax(e: impl std::fmt::Display) -> SqlError {
    SqlError::Syntax(e.to_string())
}

fn parse_bool(name: &str, value: &str) -> Result<bool, SqlError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "on" | "1" | "yes" => Ok(true),
        "false" | "off" | "0" | "no" => Ok(false),
        _ => Err(SqlError::Syntax(format!("option {name} expects true or false, got {value:?}"))),
    }
}

/// Parse a duration such as `1s`, `250ms`, `2 minutes`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, SqlError> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| SqlError::Syntax(format!("invalid duration {text:?}")))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => n,
        "ms" | "millisecond" | "milliseconds" => n / 1000.0,
        "us" | "microsecond" | "microseconds" => n / 1e6,
        "m" | "min" | "mins" | "minute" | "minutes" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        other => return Err(SqlError::Syntax(format!("unknown duration unit {other:?} in {text:?}"))),
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn parse_subscribe_body(p: &mut Parser) -> Result<Subscribe, SqlError> {
    let _ = p.parse_keyword(Keyword::TO);
    let name = p.parse_object_name(false).map_err(syntax)?;
    let name = name.0.last().map(|n| n.to_string()).unwrap_or_default().trim_matches('"').to_string();
    let mut sub = Subscribe { name, snapshot: true, progress: false };
    for (k, v) in parse_with_options(p)? {
        match k.as_str() {
            "snapshot" => sub.snapshot = parse_bool(&k, &v)?,
            "progress" => sub.progress = parse_bool(&k, &v)?,
            other => return Err(SqlError::Syntax(format!("unknown SUBSCRIBE option {other}"))),
        }
    }
    Ok(sub)
}

fn is_word(p: &Parser, word: &str) -> bool {
    is_words(p, &[word])
}

/// Whether the next tokens are `words`, without consuming them.
fn is_words(p: &Parser, words: &[&str]) -> bool {
    words.iter().enumerate().all(|(i, word)| matches!(&p.peek_nth_token(i).token, Token::Word(w) if w.value.eq_ignore_ascii_case(word)))
}

/// Consume `words` if they come next.
fn parse_words(p: &mut Parser, words: &[&str]) -> bool {
    let matched = is_words(p, words);
    if matched {
        for _ in words {
            p.next_token();
        }
    }
    matched
}

/// Parse `sql` if it is one of Velocity's own statements; `None` means "not ours".
pub fn parse_velocity(sql: &str) -> Option<Result<VelocityStatement, SqlError>> {
    let dialect = PostgreSqlDialect {};
    let mut p = Parser::new(&dialect).try_with_sql(sql).ok()?;
    let stmt = if p.parse_keywords(&[Keyword::SHOW, Keyword::MATERIALIZED, Keyword::VIEWS]) {
        VelocityStatement::ShowMaterializedViews
    } else if p.parse_keywords(&[Keyword::SHOW, Keyword::CREATE, Keyword::MATERIALIZED, Keyword::VIEW])
        || p.parse_keywords(&[Keyword::SHOW, Keyword::CREATE, Keyword::TABLE])
    {
        match p.parse_object_name(false) {
            Ok(name) => VelocityStatement::ShowCreate { name: name.to_string() },
            Err(e) => return Some(Err(SqlError::Syntax(e.to_string()))),
        }
    } else if p.parse_keyword(Keyword::FLUSH) {
        VelocityStatement::Flush
    } else if parse_words(&mut p, &["show", "sources"]) {
        VelocityStatement::ShowSources
    } else if p.parse_keywords(&[Keyword::CREATE, Keyword::SOURCE]) {
        let name = match p.parse_identifier() {
            Ok(n) => n.value,
            Err(e) => return Some(Err(syntax(e))),
        };
        match parse_with_options(&mut p) {
            Ok(options) if !options.is_empty() => VelocityStatement::CreateSource { name, options },
            Ok(_) => return Some(Err(SqlError::Syntax("CREATE SOURCE needs WITH (connector = '...', ...)".into()))),
            Err(e) => return Some(Err(e)),
        }
    } else if parse_words(&mut p, &["show", "sinks"]) {
        VelocityStatement::ShowSinks
    } else if parse_words(&mut p, &["create", "sink"]) {
        let name = match p.parse_identifier() {
            Ok(n) => n.value,
            Err(e) => return Some(Err(syntax(e))),
        };
        if !p.parse_keyword(Keyword::FROM) {
            return Some(Err(SqlError::Syntax("expected CREATE SINK name FROM relation WITH (...)".into())));
        }
        let from = match p.parse_identifier() {
            Ok(n) => n.value,
            Err(e) => return Some(Err(syntax(e))),
        };
        match parse_with_options(&mut p) {
            Ok(options) if !options.is_empty() => VelocityStatement::CreateSink { name, from, options },
            Ok(_) => return Some(Err(SqlError::Syntax("CREATE SINK needs WITH (connector = 'kafka', ...)".into()))),
            Err(e) => return Some(Err(e)),
        }
    } else if parse_words(&mut p, &["drop", "sink"]) {
        let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = match p.parse_identifier() {
            Ok(n) => n.value,
            Err(e) => return Some(Err(syntax(e))),
        };
        VelocityStatement::DropSink { name, if_exists }
    } else if p.parse_keywords(&[Keyword::DROP, Keyword::SOURCE]) {
        let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = match p.parse_identifier() {
            Ok(n) => n.value,
            Err(e) => return Some(Err(syntax(e))),
        };
        let cascade = p.parse_keyword(Keyword::CASCADE);
        VelocityStatement::DropSource { name, if_exists, cascade }
    } else if is_word(&p, "subscribe") {
        p.next_token();
        match parse_subscribe_body(&mut p) {
            Ok(s) => VelocityStatement::Subscribe(s),
            Err(e) => return Some(Err(e)),
        }
    } else if p.parse_keyword(Keyword::COPY) && p.consume_token(&Token::LParen) && is_word(&p, "subscribe") {
        p.next_token();
        let sub = match parse_subscribe_body(&mut p) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        if p.expect_token(&Token::RParen).is_err() || !p.parse_keyword(Keyword::TO) || !p.parse_keyword(Keyword::STDOUT) {
            return Some(Err(SqlError::Syntax("expected COPY (SUBSCRIBE ...) TO STDOUT".into())));
        }
        // Accept (and ignore) COPY's own options such as WITH (FORMAT text).
        if p.parse_keyword(Keyword::WITH) {
            let mut depth = 0;
            loop {
                match p.next_token().token {
                    Token::LParen => depth += 1,
                    Token::RParen => {
                        depth -= 1;
                        if depth <= 0 {
                            break;
                        }
                    }
                    Token::EOF => break,
                    _ => {}
                }
            }
        }
        VelocityStatement::CopySubscribe(sub)
    } else if p.parse_keyword(Keyword::DECLARE) {
        let Ok(cursor) = p.parse_identifier() else { return None };
        if !p.parse_keywords(&[Keyword::CURSOR, Keyword::FOR]) || !is_word(&p, "subscribe") {
            return None;
        }
        p.next_token();
        match parse_subscribe_body(&mut p) {
            Ok(subscribe) => VelocityStatement::DeclareSubscribe { cursor: cursor.value, subscribe },
            Err(e) => return Some(Err(e)),
        }
    } else if is_word(&p, "grant") || is_word(&p, "revoke") {
        return parse_grant(p);
    } else if is_words(&p, &["alter", "source"]) || is_words(&p, &["alter", "sink"]) {
        p.next_token();
        let kind = if parse_words(&mut p, &["source"]) { ConnectorKind::Source } else { ConnectorKind::Sink };
        if kind == ConnectorKind::Sink {
            p.next_token();
        }
        let name = match p.parse_identifier() {
            Ok(n) => n.value,
            Err(e) => return Some(Err(syntax(e))),
        };
        if !p.parse_keywords(&[Keyword::OWNER, Keyword::TO]) {
            return Some(Err(SqlError::Unsupported(format!("ALTER {} ... other than OWNER TO", kind.sql_name()))));
        }
        match p.parse_identifier() {
            Ok(owner) => VelocityStatement::AlterOwner { kind, name, owner: owner.value },
            Err(e) => return Some(Err(syntax(e))),
        }
    } else if p.parse_keyword(Keyword::FETCH) {
        let _ = p.parse_keyword(Keyword::FORWARD) || p.parse_keyword(Keyword::NEXT);
        let count = if p.parse_keyword(Keyword::ALL) {
            None
        } else if let Token::Number(n, _) = p.peek_token().token {
            p.next_token();
            Some(n.parse().ok()?)
        } else {
            Some(1)
        };
        let _ = p.parse_keyword(Keyword::FROM) || p.parse_keyword(Keyword::IN);
        let Ok(cursor) = p.parse_identifier() else { return None };
        let timeout = match parse_with_options(&mut p).map(WithOptions::new) {
            Ok(opts) => match opts.get("timeout").map(parse_duration).transpose() {
                Ok(timeout) => timeout,
                Err(e) => return Some(Err(e)),
            },
            Err(e) => return Some(Err(e)),
        };
        VelocityStatement::Fetch { cursor: cursor.value, count, timeout }
    } else {
        return None;
    };
    let _ = p.consume_token(&Token::SemiColon);
    if p.peek_token().token != Token::EOF {
        return Some(Err(SqlError::Syntax(format!("unexpected {} after statement", p.peek_token()))));
    }
    Some(Ok(stmt))
}

/// `GRANT`/`REVOKE` on sources and sinks, and of roles (no `ON`); `None` for the forms plain
/// sqlparser parses (on tables, the database).
fn parse_grant(mut p: Parser) -> Option<Result<VelocityStatement, SqlError>> {
    let grant = parse_words(&mut p, &["grant"]);
    if !grant && !parse_words(&mut p, &["revoke"]) {
        return None;
    }
    // What comes first after the privileges or roles: ON (an object grant) or TO/FROM.
    let on = (0..).map(|i| p.peek_nth_token(i).token).find_map(|t| match t {
        Token::EOF => Some(false),
        Token::Word(w) if w.keyword == Keyword::ON => Some(true),
        Token::Word(w) if matches!(w.keyword, Keyword::TO | Keyword::FROM) => Some(false),
        _ => None,
    })?;
    let words = |p: &mut Parser, stop: &[Keyword]| -> Result<Vec<String>, SqlError> {
        let mut out = Vec::new();
        loop {
            let mut word = Vec::new();
            while let Token::Word(w) = p.peek_token().token {
                if stop.contains(&w.keyword) || (!word.is_empty() && w.quote_style.is_some()) {
                    break;
                }
                p.next_token();
                word.push(if w.quote_style.is_some() { w.value } else { w.value.to_ascii_lowercase() });
            }
            if word.is_empty() {
                return Err(SqlError::Syntax(format!("unexpected {} in GRANT/REVOKE", p.peek_token())));
            }
            out.push(word.join(" "));
            if !p.consume_token(&Token::Comma) {
                return Ok(out);
            }
        }
    };
    let to = if grant { Keyword::TO } else { Keyword::FROM };
    let parsed = (|| {
        let first = words(&mut p, &[Keyword::ON, to])?;
        let kind = if on {
            p.expect_keyword_is(Keyword::ON).map_err(syntax)?;
            if parse_words(&mut p, &["source"]) {
                Some(ConnectorKind::Source)
            } else if parse_words(&mut p, &["sink"]) {
                Some(ConnectorKind::Sink)
            } else {
                return Ok(None);
            }
        } else {
            None
        };
        let names = if kind.is_some() { words(&mut p, &[to])? } else { Vec::new() };
        p.expect_keyword_is(to).map_err(syntax)?;
        let grantees = words(&mut p, &[Keyword::WITH, Keyword::GRANTED, Keyword::CASCADE, Keyword::RESTRICT])?
            .into_iter()
            .map(|g| if g == "public" { String::new() } else { g.trim_start_matches("group ").to_string() })
            .collect();
        let _ = p.parse_keyword(Keyword::RESTRICT);
        Ok(Some(match kind {
            Some(kind) => {
                let privileges = first.into_iter().map(|w| if w == "all privileges" { "all".to_string() } else { w }).collect();
                VelocityStatement::GrantOnConnector { privileges, kind, names, grantees, grant }
            }
            None => VelocityStatement::GrantRole { roles: first, members: grantees, grant },
        }))
    })();
    let stmt = match parsed {
        Ok(Some(stmt)) => stmt,
        Ok(None) => return None,
        Err(e) => return Some(Err(e)),
    };
    let _ = p.consume_token(&Token::SemiColon);
    if p.peek_token().token != Token::EOF {
        return Some(Err(SqlError::Unsupported(format!("{} in GRANT/REVOKE", p.peek_token()))));
    }
    Some(Ok(stmt))
}

/// Resolve ordinals in `DISTINCT ON (1, ...)` to the select-list expressions they name, as
/// Postgres does (DataFusion reads `1` as a constant). Returns whether anything changed.
pub fn resolve_distinct_on_ordinals(statements: &mut [datafusion::sql::sqlparser::ast::Statement]) -> bool {
    use datafusion::sql::sqlparser::ast::{Distinct, Expr, Query, SelectItem, SetExpr, Value, VisitMut, VisitorMut};
    struct Ordinals(bool);
    impl VisitorMut for Ordinals {
        type Break = ();
        fn post_visit_query(&mut self, query: &mut Query) -> std::ops::ControlFlow<()> {
            let SetExpr::Select(select) = query.body.as_mut() else { return std::ops::ControlFlow::Continue(()) };
            let select = select.as_mut();
            let Some(Distinct::On(on)) = &mut select.distinct else { return std::ops::ControlFlow::Continue(()) };
            for e in on.iter_mut() {
                let Expr::Value(v) = e else { continue };
                let Value::Number(n, _) = &v.value else { continue };
                let Some(item) = n.parse::<usize>().ok().and_then(|i| i.checked_sub(1)).and_then(|i| select.projection.get(i)) else {
                    continue;
                };
                if let SelectItem::UnnamedExpr(x) | SelectItem::ExprWithAlias { expr: x, .. } = item {
                    *e = x.clone();
                    self.0 = true;
                }
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut ordinals = Ordinals(false);
    for statement in statements.iter_mut() {
        let _ = statement.visit(&mut ordinals);
    }
    ordinals.0
}

/// Table functions whose bare-name arguments name a relation or a column:
/// `changes(shipments)`, `TUMBLE(bid, date_time, INTERVAL '10' SECOND)`.
const NAME_TAKING_FUNCTIONS: [&str; 4] = ["changes", "tumble", "hop", "session"];

/// DataFusion plans table-function arguments as expressions, where a bare name is an unknown
/// column; quote the bare names of [`NAME_TAKING_FUNCTIONS`]' calls so they arrive as strings,
/// and spell the function in lower case as it is registered:
/// `changes('shipments')`, `tumble('bid', 'date_time', INTERVAL '10' SECOND)`.
///
/// Before that, set-returning functions in `FROM` over another table's columns become the
/// select-list form DataFusion plans (`set_functions`), and `character varying` becomes
/// `VARCHAR` (`character_types`) and `(a, b) [NOT] IN (SELECT x, y ...)` becomes `[NOT] EXISTS`
/// (`row_in_subquery`): both protocols' statements pass here before planning.
pub fn quote_name_arguments(sql: &str) -> std::borrow::Cow<'_, str> {
    let functions = set_functions::rewrite(sql);
    let types = character_types::rewrite(functions.as_deref().unwrap_or(sql)).or(functions);
    let rows = row_in_subquery::rewrite(types.as_deref().unwrap_or(sql)).or(types);
    match rows {
        Some(rewritten) => std::borrow::Cow::Owned(quote_names(&rewritten).into_owned()),
        None => quote_names(sql),
    }
}

fn quote_names(sql: &str) -> std::borrow::Cow<'_, str> {
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;
    let lower = sql.to_ascii_lowercase();
    if !NAME_TAKING_FUNCTIONS.iter().any(|f| lower.contains(f)) {
        return sql.into();
    }
    let dialect = PostgreSqlDialect {};
    let Ok(mut tokens) = Tokenizer::new(&dialect, sql).with_unescape(false).tokenize() else { return sql.into() };
    let significant = |tokens: &[Token], from: usize| (from..tokens.len()).find(|&i| !matches!(tokens[i], Token::Whitespace(_)));
    let mut changed = false;
    for i in 0..tokens.len() {
        let named = matches!(&tokens[i], Token::Word(w) if w.quote_style.is_none()
            && NAME_TAKING_FUNCTIONS.iter().any(|f| w.value.eq_ignore_ascii_case(f)));
        if !named {
            continue;
        }
        let Some(paren) = significant(&tokens, i + 1) else { continue };
        if tokens[paren] != Token::LParen {
            continue;
        }
        // DataFusion looks table functions up by the name as written.
        if let Token::Word(w) = &mut tokens[i]
            && w.value.chars().any(|c| c.is_ascii_uppercase())
        {
            w.value = w.value.to_ascii_lowercase();
            changed = true;
        }
        // Each top-level argument that is one bare word (not `INTERVAL '1' SECOND`).
        let mut at = paren;
        while let Some(arg) = significant(&tokens, at + 1) {
            let Some(after) = significant(&tokens, arg + 1) else { break };
            if let (Token::Word(w), Token::Comma | Token::RParen) = (&tokens[arg], &tokens[after]) {
                tokens[arg] = Token::SingleQuotedString(w.value.clone());
                changed = true;
            }
            // On to the next top-level comma, or out at the closing parenthesis.
            let mut depth = 0;
            let mut next = arg;
            while next < tokens.len() {
                match tokens[next] {
                    Token::LParen => depth += 1,
                    Token::RParen if depth == 0 => break,
                    Token::RParen => depth -= 1,
                    Token::Comma if depth == 0 => break,
                    _ => {}
                }
                next += 1;
            }
            if next >= tokens.len() || tokens[next] != Token::Comma {
                break;
            }
            at = next;
        }
    }
    if !changed {
        return sql.into();
    }
    tokens.iter().map(|t| t.to_string()).collect::<String>().into()
}

/// Split a simple-query string at top-level semicolons, so that Velocity statements can
/// be mixed with ordinary ones.
pub fn split_statements(sql: &str) -> Vec<String> {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = datafusion::sql::sqlparser::tokenizer::Tokenizer::new(&dialect, sql).with_unescape(false).tokenize() else {
        return vec![sql.to_string()];
    };
    let mut out = Vec::new();
    let mut current = String::new();
    for t in tokens {
        if t == Token::SemiColon {
            if !current.trim().is_empty() {
                out.push(std::mem::take(&mut current));
            }
            current.clear();
        } else {
            current.push_str(&t.to_string());
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// Keep scalar subqueries in select lists as the user wrote them: datafusion-postgres'
/// statement rewrite (`RemoveSubqueryFromProjection`, meant for client catalog queries)
/// adds `LIMIT 1` to an uncorrelated one, hiding Postgres' 21000 (more than one row), and
/// replaces one it takes for correlated with NULL, a wrong answer. Wrapped in parentheses,
/// a subquery is no longer the whole select item, so that rule leaves it to DataFusion,
/// which plans it or refuses it. Statements that read the system catalogs keep the rule:
/// clients' introspection queries rely on it. None when nothing changes.
pub fn keep_scalar_subqueries(sql: &str) -> Option<String> {
    use datafusion::sql::sqlparser::ast::{Expr, ObjectName, Query, SelectItem, SetExpr, Visit, VisitMut, Visitor, VisitorMut};
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;
    use std::ops::ControlFlow;

    /// Whether a statement names a relation of the system catalogs.
    struct ReadsSystemCatalogs(bool);
    impl Visitor for ReadsSystemCatalogs {
        type Break = ();
        fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
            let parts: Vec<String> = name.0.iter().filter_map(|p| p.as_ident()).map(|i| i.value.to_ascii_lowercase()).collect();
            let system =
                parts.iter().any(|p| p == "pg_catalog" || p == "information_schema") || parts.last().is_some_and(|p| p.starts_with("pg_"));
            self.0 |= system;
            if system { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        }
    }
    struct Parenthesize(bool);
    impl VisitorMut for Parenthesize {
        type Break = ();
        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            if let SetExpr::Select(select) = query.body.as_mut() {
                for item in select.projection.iter_mut() {
                    if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item
                        && matches!(e, Expr::Subquery(_))
                    {
                        *e = Expr::Nested(Box::new(e.clone()));
                        self.0 = true;
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }

    if !sql.to_ascii_lowercase().contains("(select") {
        return None;
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    rewrite_statements(tokens, |statements| {
        let mut system = ReadsSystemCatalogs(false);
        let _ = Visit::visit(&*statements, &mut system);
        if system.0 {
            return false;
        }
        let mut wrap = Parenthesize(false);
        let _ = VisitMut::visit(statements, &mut wrap);
        wrap.0
    })
}

/// The statements of `tokens` as `rewrite` changes them (it says whether it did), printed
/// back; None when nothing changed or the tokens do not parse. Statements of more than
/// [`MAX_EXPRESSION_DEPTH`] tokens are left alone: one that deep is refused later, as it is.
fn rewrite_statements(
    tokens: Vec<Token>,
    rewrite: impl FnOnce(&mut Vec<datafusion::sql::sqlparser::ast::Statement>) -> bool,
) -> Option<String> {
    let significant = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).count();
    if significant > MAX_EXPRESSION_DEPTH {
        return None;
    }
    let stack = (64usize << 20).saturating_add(significant.saturating_mul(1024));
    stacker::maybe_grow(stack / 2, stack, move || {
        let mut statements = Parser::new(&PostgreSqlDialect {}).with_tokens(tokens).parse_statements().ok()?;
        rewrite(&mut statements).then(|| statements.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(";\n"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_subqueries_in_select_lists_are_parenthesized_outside_system_catalogs() {
        assert_eq!(
            keep_scalar_subqueries("SELECT a, (SELECT max(v) FROM s WHERE s.k = t.a) AS m FROM t").as_deref(),
            Some("SELECT a, ((SELECT max(v) FROM s WHERE s.k = t.a)) AS m FROM t")
        );
        assert_eq!(
            keep_scalar_subqueries("CREATE VIEW v AS SELECT (SELECT 1) AS one").as_deref(),
            Some("CREATE VIEW v AS SELECT ((SELECT 1)) AS one")
        );
        // Client introspection keeps datafusion-postgres' rewrite.
        assert_eq!(keep_scalar_subqueries("SELECT (SELECT c.relname FROM pg_catalog.pg_class c LIMIT 1) AS n"), None);
        assert_eq!(keep_scalar_subqueries("SELECT (SELECT 1) FROM pg_attribute"), None);
        assert_eq!(keep_scalar_subqueries("SELECT a FROM t WHERE a > (SELECT 1)"), None);
    }

    #[test]
    fn parses_velocity_statements() {
        assert_eq!(parse_velocity("SHOW MATERIALIZED VIEWS").unwrap().unwrap(), VelocityStatement::ShowMaterializedViews);
        assert_eq!(parse_velocity("flush;").unwrap().unwrap(), VelocityStatement::Flush);
        assert_eq!(parse_velocity("SHOW CREATE MATERIALIZED VIEW v").unwrap().unwrap(), VelocityStatement::ShowCreate { name: "v".into() });
        assert!(parse_velocity("SELECT 1").is_none());
        assert!(parse_velocity("SHOW MATERIALIZED VIEWS extra").unwrap().is_err());
        assert_eq!(
            parse_velocity("COPY (SUBSCRIBE TO loads WITH (SNAPSHOT = false)) TO STDOUT").unwrap().unwrap(),
            VelocityStatement::CopySubscribe(Subscribe { name: "loads".into(), snapshot: false, progress: false })
        );
        assert_eq!(
            parse_velocity("DECLARE c CURSOR FOR SUBSCRIBE v WITH (PROGRESS)").unwrap().unwrap(),
            VelocityStatement::DeclareSubscribe {
                cursor: "c".into(),
                subscribe: Subscribe { name: "v".into(), snapshot: true, progress: true }
            }
        );
        assert_eq!(
            parse_velocity("FETCH 10 c WITH (timeout = '1s')").unwrap().unwrap(),
            VelocityStatement::Fetch { cursor: "c".into(), count: Some(10), timeout: Some(std::time::Duration::from_secs(1)) }
        );
        assert!(parse_velocity("DECLARE c CURSOR FOR SELECT 1").is_none());
        assert_eq!(
            parse_velocity("CREATE SINK s FROM v WITH (connector = 'kafka', topic = 't')").unwrap().unwrap(),
            VelocityStatement::CreateSink {
                name: "s".into(),
                from: "v".into(),
                options: vec![("connector".into(), "kafka".into()), ("topic".into(), "t".into())]
            }
        );
        assert_eq!(parse_velocity("show sinks").unwrap().unwrap(), VelocityStatement::ShowSinks);
        assert_eq!(parse_velocity("SHOW SOURCES").unwrap().unwrap(), VelocityStatement::ShowSources);
        assert_eq!(
            parse_velocity("DROP SINK IF EXISTS s").unwrap().unwrap(),
            VelocityStatement::DropSink { name: "s".into(), if_exists: true }
        );
        assert!(parse_velocity("SHOW search_path").is_none());
    }

    #[test]
    fn quotes_changes_arguments() {
        assert_eq!(
            quote_name_arguments("SELECT after.id FROM changes(shipments) WHERE x = 'changes(y)'"),
            "SELECT after.id FROM changes('shipments') WHERE x = 'changes(y)'"
        );
        assert_eq!(quote_name_arguments("SELECT 1"), "SELECT 1");
        assert_eq!(
            quote_name_arguments("SELECT * FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) JOIN changes(t, 'id')"),
            "SELECT * FROM hop('bid', 'date_time', INTERVAL '2' SECOND, INTERVAL '10' SECOND) JOIN changes('t', 'id')"
        );
        assert_eq!(quote_name_arguments("SELECT tumble(f(a, b), c)"), "SELECT tumble(f(a, b), 'c')");
    }

    #[test]
    fn refuses_expressions_nested_too_deep() {
        let chain = |n: usize, op: &str| format!("SELECT {}", vec!["1"; n].join(op));
        assert!(check_expression_depth(&chain(3000, "+")).is_ok());
        assert!(check_expression_depth(&chain(3000, " OR ")).is_ok());
        assert!(matches!(check_expression_depth(&chain(MAX_EXPRESSION_DEPTH + 2, "+")), Err(SqlError::TooComplex(_))));
        assert!(matches!(check_expression_depth(&chain(200_000, " OR ")), Err(SqlError::TooComplex(_))));
        // Wide is not deep: many rows of shallow expressions pass.
        let rows = vec!["(1 + 1, 'a')"; 5000].join(", ");
        assert!(check_expression_depth(&format!("INSERT INTO t VALUES {rows}")).is_ok());
    }

    #[test]
    fn resolves_distinct_on_ordinals() {
        let dialect = PostgreSqlDialect {};
        let mut s = Parser::parse_sql(&dialect, "SELECT DISTINCT ON (1) a + 1 AS x, b FROM t ORDER BY 1, 2").unwrap();
        assert!(resolve_distinct_on_ordinals(&mut s));
        assert_eq!(s[0].to_string(), "SELECT DISTINCT ON (a + 1) a + 1 AS x, b FROM t ORDER BY 1, 2");
        let mut s = Parser::parse_sql(&dialect, "SELECT DISTINCT ON (a) a FROM t").unwrap();
        assert!(!resolve_distinct_on_ordinals(&mut s));
    }

    #[test]
    fn splits_at_top_level_semicolons() {
        assert_eq!(split_statements("SELECT ';'; FLUSH;").len(), 2);
    }
}
