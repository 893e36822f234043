//! `uuid` in casts: `'...'::uuid` is text in the uuid's canonical form, checked (22P02 for
//! a malformed uuid) and marked `uuid` so the wire type is `uuid` (OID 2950). A uuid column
//! is text in the same form (see `catalog::column_type`).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, StringBuilder};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::error::Result;
use datafusion::logical_expr::planner::TypePlanner;
use datafusion::logical_expr::{ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::sql::sqlparser::ast::DataType as SqlType;

use crate::catalog::column_type;

/// A nullable text field marked as a uuid.
fn uuid_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true).with_metadata(HashMap::from([(column_type::PG_TYPE_KEY.to_string(), "uuid".to_string())]))
}

/// Register the `uuid` type for casts with `ctx`.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    use datafusion::execution::session_state::SessionStateBuilder;
    let state = ctx.state_ref();
    let existing = state.read().clone();
    let mut builder = SessionStateBuilder::new_from_existing(existing);
    let inner = builder.type_planner().take();
    *state.write() = builder.with_type_planner(Arc::new(UuidType { inner })).build();
    ctx.add_analyzer_rule(Arc::new(UuidCasts));
}

/// `uuid` in casts: text marked as a uuid; other types go to `inner`.
#[derive(Debug)]
struct UuidType {
    inner: Option<Arc<dyn TypePlanner>>,
}

impl TypePlanner for UuidType {
    fn plan_type_field(&self, sql_type: &SqlType) -> Result<Option<FieldRef>> {
        if matches!(sql_type, SqlType::Uuid) {
            return Ok(Some(Arc::new(uuid_field(""))));
        }
        match &self.inner {
            Some(inner) => inner.plan_type_field(sql_type),
            None => Ok(None),
        }
    }
}

/// A cast to `uuid` becomes a call of [`ToUuid`].
#[derive(Debug)]
struct UuidCasts;

impl datafusion::optimizer::AnalyzerRule for UuidCasts {
    fn analyze(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _: &datafusion::common::config::ConfigOptions,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        super::replace_casts(plan, |field| column_type::is_uuid(field).then(|| ScalarUDF::from(ToUuid::new())))
    }

    fn name(&self) -> &str {
        "velocity_uuid_casts"
    }
}

/// `text::uuid`: the uuid's canonical text, 22P02 for text that is not one.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToUuid {
    signature: Signature,
}

impl ToUuid {
    fn new() -> ToUuid {
        ToUuid { signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for ToUuid {
    fn name(&self) -> &str {
        "velocity_to_uuid"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn return_field_from_args(&self, _: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(uuid_field(self.name())))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        let array = arrow::compute::cast(&array, &DataType::Utf8)?;
        let texts = datafusion::common::cast::as_string_array(&array)?;
        let mut out = StringBuilder::new();
        for i in 0..texts.len() {
            if texts.is_null(i) {
                out.append_null();
                continue;
            }
            match column_type::canonical_uuid(texts.value(i)) {
                Some(u) => out.append_value(u),
                None => {
                    return datafusion::common::exec_err!("invalid input syntax for type uuid: \"{}\"", texts.value(i));
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
