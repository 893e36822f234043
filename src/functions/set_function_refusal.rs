//! The refusal of a set-returning function in `FROM` that `sql::set_functions` does not
//! rewrite (`LEFT JOIN LATERAL unnest(t.a) ON u.x > 1`, one after a join of several tables,
//! ...): the
//! rewrite puts `velocity_unsupported_set_function('<what>')` in its place, which fails
//! planning with a not-implemented error (0A000) naming the construct, where DataFusion would
//! say that no table function `unnest` exists.

use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::{ScalarValue, not_impl_err};
use datafusion::datasource::TableProvider;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::prelude::SessionContext;

/// The table function's name, as `sql::set_functions` writes it.
pub const NAME: &str = "velocity_unsupported_set_function";

pub fn register(ctx: &SessionContext) {
    ctx.register_udtf(NAME, Arc::new(Refusal));
}

#[derive(Debug)]
struct Refusal;

impl TableFunctionImpl for Refusal {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let what = match args.exprs() {
            [Expr::Literal(ScalarValue::Utf8(Some(what)), _)] => what.clone(),
            _ => "this set-returning function".to_string(),
        };
        not_impl_err!(
            "{what} in FROM over another table's columns is supported right after one table \
             (FROM t, f(t.x) AS u; t CROSS JOIN LATERAL f(t.x); t [LEFT] JOIN LATERAL f(t.x) ON true), \
             not in a join on another condition, after a join, or over several tables' columns"
        )
    }
}
