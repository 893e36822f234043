//! Who a session is, as Postgres keeps it: the role it authenticated as, its session user
//! (`SET SESSION AUTHORIZATION`) and its current role (`SET ROLE`), which privileges are
//! checked against. `current_user` and `session_user` in a query answer from here.

use std::borrow::Cow;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use datafusion::sql::sqlparser::ast::{Expr, FunctionArguments, Ident, Query, SelectItem, SetExpr, Statement, Value, VisitMut, VisitorMut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_postgres::pgwire::api::ClientInfo;

/// A session's roles, kept in its session extensions from authentication on.
#[derive(Debug)]
pub struct SessionRoles {
    authenticated: String,
    /// Session user, and the role `SET ROLE` chose (None: the session user).
    state: Mutex<(String, Option<String>)>,
}

impl SessionRoles {
    pub fn new(authenticated: &str) -> SessionRoles {
        SessionRoles { authenticated: authenticated.to_string(), state: Mutex::new((authenticated.to_string(), None)) }
    }

    /// The role privileges are checked against.
    pub fn current(&self) -> String {
        let state = self.state.lock().expect("session roles lock");
        state.1.clone().unwrap_or_else(|| state.0.clone())
    }

    pub fn session_user(&self) -> String {
        self.state.lock().expect("session roles lock").0.clone()
    }

    /// The role the connection authenticated as.
    pub fn authenticated(&self) -> &str {
        &self.authenticated
    }

    /// `SET ROLE name` (Some) or `SET ROLE NONE` / `RESET ROLE` (None).
    pub fn set_role(&self, role: Option<String>) {
        self.state.lock().expect("session roles lock").1 = role;
    }

    /// `SET SESSION AUTHORIZATION name` (Some) or `... DEFAULT` (None); resets the role.
    pub fn set_session_user(&self, user: Option<String>) {
        *self.state.lock().expect("session roles lock") = (user.unwrap_or_else(|| self.authenticated.clone()), None);
    }
}

/// The session's roles (set at authentication; a session without them, which cannot run
/// statements anyway, gets its startup user's).
pub fn roles(client: &(impl ClientInfo + ?Sized)) -> Arc<SessionRoles> {
    client.session_extensions().get_or_insert_with(|| {
        SessionRoles::new(client.metadata().get(datafusion_postgres::pgwire::api::METADATA_USER).map_or("", String::as_str))
    })
}

/// `current_user`, `current_role`, `user` and `session_user` in `statements` replaced by
/// the session's names as literals; true when something was replaced.
fn bind_user_functions(statements: &mut [Statement], roles: &SessionRoles) -> bool {
    struct Bind {
        current: String,
        session: String,
        replaced: bool,
    }
    impl VisitorMut for Bind {
        type Break = ();
        /// `SELECT current_user` names its column `current_user`, as in Postgres.
        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            if let SetExpr::Select(select) = query.body.as_mut() {
                for item in select.projection.iter_mut() {
                    if let SelectItem::UnnamedExpr(Expr::Function(f)) = item
                        && matches!(&f.args, FunctionArguments::None)
                        && let Some(name) = user_function(&f.name.to_string())
                    {
                        let expr = Expr::Function(f.clone());
                        *item = SelectItem::ExprWithAlias { expr, alias: Ident::new(name) };
                    }
                }
            }
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = expr
                && matches!(&f.args, FunctionArguments::None)
                && f.name.0.len() == 1
            {
                let value = match user_function(&f.name.to_string()) {
                    Some("session_user") => &self.session,
                    Some(_) => &self.current,
                    None => return ControlFlow::Continue(()),
                };
                *expr = Expr::value(Value::SingleQuotedString(value.clone()));
                self.replaced = true;
            }
            ControlFlow::Continue(())
        }
    }
    let mut bind = Bind { current: roles.current(), session: roles.session_user(), replaced: false };
    for statement in statements.iter_mut() {
        let _ = statement.visit(&mut bind);
    }
    bind.replaced
}

/// The name of a function without parentheses that answers a user name.
fn user_function(name: &str) -> Option<&'static str> {
    ["current_user", "current_role", "user", "session_user"].into_iter().find(|f| name.eq_ignore_ascii_case(f))
}

/// `current_user`, `current_role`, `user` and `session_user` in `sql` replaced by the
/// session's names as literals: the rewritten text, if it names one.
pub fn bind_user_text(sql: &str, roles: &SessionRoles) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    if !lower.contains("user") && !lower.contains("current_role") {
        return None;
    }
    // sqlparser itself: the compatibility parser renames `current_user` to `session_user`.
    let mut parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    bind_user_functions(&mut parsed, roles).then(|| parsed.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("; "))
}

/// `CREATE USER` as `CREATE ROLE ... LOGIN`, `ALTER USER` and `DROP USER` as their `ROLE`
/// forms, which is what they are in Postgres (sqlparser reads `CREATE USER` as Snowflake's).
pub fn user_statements(sql: &str) -> Cow<'_, str> {
    let trimmed = sql.trim_start();
    let words: Vec<&str> = trimmed.splitn(3, char::is_whitespace).collect();
    let [verb, noun, rest] = words.as_slice() else { return Cow::Borrowed(sql) };
    if !noun.eq_ignore_ascii_case("user") || !["create", "alter", "drop"].iter().any(|v| verb.eq_ignore_ascii_case(v)) {
        return Cow::Borrowed(sql);
    }
    let mut out = format!("{verb} ROLE {rest}");
    let says_login =
        rest.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w.eq_ignore_ascii_case("login") || w.eq_ignore_ascii_case("nologin"));
    if verb.eq_ignore_ascii_case("create") && !says_login {
        let body = out.trim_end().trim_end_matches(';').to_string();
        out = format!("{body} LOGIN");
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_statements_are_role_statements() {
        assert_eq!(user_statements("CREATE USER bob PASSWORD 'x'"), "CREATE ROLE bob PASSWORD 'x' LOGIN");
        assert_eq!(user_statements("create user bob nologin;"), "create ROLE bob nologin;");
        assert_eq!(user_statements("DROP USER IF EXISTS bob"), "DROP ROLE IF EXISTS bob");
        assert_eq!(user_statements("SELECT user"), "SELECT user");
    }

    #[test]
    fn user_functions_answer_the_session() {
        let roles = SessionRoles::new("admin");
        roles.set_role(Some("alice".into()));
        let sql = bind_user_text("SELECT current_user, session_user", &roles).expect("rewritten");
        assert_eq!(sql, "SELECT 'alice' AS current_user, 'admin' AS session_user");
    }
}
