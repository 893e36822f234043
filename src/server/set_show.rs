//! `SET` and `SHOW` of session parameters: datafusion-postgres' [`SetShowHook`], behind
//! Postgres' limits. `application_name` is cut to 63 bytes (NAMEDATALEN - 1), as Postgres
//! does, so a 1 MB name neither bloats the session nor makes a ParameterStatus too large to
//! send; `SHOW` with no name is a syntax error (the hook indexed an empty name list and
//! panicked).

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Expr, Set, Statement, Value};
use datafusion_postgres::QueryHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::error::PgWireResult;

use super::error::SessionError;

/// Postgres keeps names to NAMEDATALEN - 1 bytes.
pub const MAX_NAME_BYTES: usize = 63;

/// Refuse a client encoding other than UTF8 (or SQL_ASCII, which Postgres does not convert
/// either, and which psql asks for under the C locale): Velocity converts none, and text in
/// another encoding would be stored wrongly.
pub fn check_client_encoding(name: &str) -> Result<(), SessionError> {
    let normalized: String = name.chars().filter(|c| *c != '_' && *c != '-').collect::<String>().to_ascii_uppercase();
    match normalized.as_str() {
        "UTF8" | "UNICODE" | "SQLASCII" | "DEFAULT" => Ok(()),
        _ => Err(SessionError::UnsupportedEncoding(name.to_ascii_uppercase())),
    }
}

/// The `client_encoding` a client asked for in its startup packet (`PGCLIENTENCODING`),
/// checked by [`check_client_encoding`] before each of its statements.
pub fn check_startup_encoding<C: ClientInfo>(client: &C) -> Result<(), SessionError> {
    match client.metadata().get("client_encoding") {
        Some(name) => check_client_encoding(name),
        None => Ok(()),
    }
}

/// [`SetShowHook`] with Postgres' limits in front.
pub struct SetShow(pub SetShowHook);

/// The statement to hand on: `None` as it is, `Some` rewritten; or the error it gets.
fn within_limits(statement: &Statement) -> PgWireResult<Option<Statement>> {
    match statement {
        Statement::ShowVariable { variable } if variable.is_empty() => {
            Err(SessionError::Syntax("syntax error: SHOW needs a parameter name".into()).into())
        }
        Statement::Set(Set::SingleAssignment { variable, values, .. }) if variable.to_string().eq_ignore_ascii_case("client_encoding") => {
            let encoding = match values.first() {
                Some(Expr::Value(v)) => match &v.value {
                    Value::SingleQuotedString(s) => s.clone(),
                    other => other.to_string(),
                },
                Some(Expr::Identifier(i)) => i.value.clone(),
                _ => return Ok(None),
            };
            check_client_encoding(&encoding)?;
            Ok(None)
        }
        Statement::Set(Set::SetNames { charset_name, .. }) => {
            check_client_encoding(&charset_name.value)?;
            Ok(None)
        }
        Statement::Set(Set::SingleAssignment { scope, hivevar, variable, values })
            if variable.to_string().eq_ignore_ascii_case("application_name") =>
        {
            let Some(Expr::Value(v)) = values.first() else { return Ok(None) };
            let Value::SingleQuotedString(name) = &v.value else { return Ok(None) };
            if name.len() <= MAX_NAME_BYTES {
                return Ok(None);
            }
            let mut end = MAX_NAME_BYTES;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            let mut cut = v.clone();
            cut.value = Value::SingleQuotedString(name[..end].to_string());
            Ok(Some(Statement::Set(Set::SingleAssignment {
                scope: *scope,
                hivevar: *hivevar,
                variable: variable.clone(),
                values: vec![Expr::Value(cut)],
            })))
        }
        _ => Ok(None),
    }
}

#[async_trait]
impl QueryHook for SetShow {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match within_limits(statement) {
            Err(e) => Some(Err(e)),
            Ok(rewritten) => self.0.handle_simple_query(rewritten.as_ref().unwrap_or(statement), session_context, client).await,
        }
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        match within_limits(statement) {
            Err(e) => Some(Err(e)),
            Ok(rewritten) => self.0.handle_extended_parse_query(rewritten.as_ref().unwrap_or(statement), session_context, client).await,
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        logical_plan: &LogicalPlan,
        params: &ParamValues,
        session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match within_limits(statement) {
            Err(e) => Some(Err(e)),
            Ok(rewritten) => {
                let statement = rewritten.as_ref().unwrap_or(statement);
                self.0.handle_extended_query(statement, logical_plan, params, session_context, client).await
            }
        }
    }
}
