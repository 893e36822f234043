//! Postgres functions DataFusion does not have, and the window table functions of stream
//! processors, registered on every session and used by views exactly like built-in ones.

pub mod bytea;
pub mod checked_sum;
pub mod datetime;
pub mod format;
pub mod json;
pub mod json_access;
pub mod json_elements;
pub mod math;
pub mod ordered_set;
pub mod pg_typeof;
pub mod regexp_matches;
pub mod set_function_refusal;
pub mod size_limits;
pub mod uuid;
pub mod windows;

/// Register every Velocity function with `ctx`.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    bytea::register(ctx);
    datetime::register(ctx);
    format::register(ctx);
    json::register(ctx);
    json_elements::register(ctx);
    math::register(ctx);
    ordered_set::register(ctx);
    pg_typeof::register(ctx);
    regexp_matches::register(ctx);
    set_function_refusal::register(ctx);
    if let Err(e) = json_access::register(ctx) {
        tracing::error!("the JSON operators are not available: {e}");
    }
    windows::register(ctx);
    uuid::register(ctx);
    // Last: these wrap functions registered before them.
    checked_sum::register(ctx);
    size_limits::register(ctx);
}

/// `plan` with every cast to a field `function` knows (uuid, json) replaced by a call of the
/// function it gives, which checks and formats the value as Postgres' input function does;
/// expression names stay, so columns keep the names the casts gave them.
fn replace_casts(
    plan: datafusion::logical_expr::LogicalPlan,
    function: impl Fn(&arrow::datatypes::Field) -> Option<datafusion::logical_expr::ScalarUDF>,
) -> datafusion::error::Result<datafusion::logical_expr::LogicalPlan> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::Expr;
    use datafusion::logical_expr::expr::ScalarFunction;
    use datafusion::logical_expr::expr_rewriter::NamePreserver;
    plan.transform_up_with_subqueries(|node| {
        let names = NamePreserver::new(&node);
        node.map_expressions(|e| {
            let saved = names.save(&e);
            let rewritten = e.transform_up(|x| match x {
                Expr::Cast(c) => match function(&c.field) {
                    Some(udf) => {
                        Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(std::sync::Arc::new(udf), vec![*c.expr]))))
                    }
                    None => Ok(Transformed::no(Expr::Cast(c))),
                },
                other => Ok(Transformed::no(other)),
            })?;
            Ok(rewritten.update_data(|x| saved.restore(x)))
        })
    })
    .map(|t| t.data)
}
