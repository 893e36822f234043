//! Postgres functions DataFusion does not have, registered on every session and used by
//! views exactly like built-in ones.

pub mod datetime;
pub mod format;
pub mod json;

/// Register every Velocity function with `ctx`.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    datetime::register(ctx);
    format::register(ctx);
    json::register(ctx);
}
