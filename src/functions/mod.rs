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
