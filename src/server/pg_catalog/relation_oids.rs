//! `pg_class.oid` of Velocity's relations: `catalog::relation_oid(id)`, not the oid
//! datafusion-pg-catalog hands out when it first lists a table. The oid is then known
//! without a catalog scan, so RowDescription can carry it (pgjdbc `getTableName`), and it
//! stays the same across restarts. `pg_class.oid` and `pg_attribute.attrelid` pass through
//! `velocity_reloid`; `pg_index` and `pg_constraint` take it from the key rows.

use std::sync::Arc;

use arrow::array::{Array, Int32Array};
use arrow::datatypes::{DataType, FieldRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

use crate::engine::Engine;

/// Name of the function.
pub const RELOID_UDF: &str = "velocity_reloid";

/// `velocity_reloid(nspname, relname, oid)`: Velocity's oid for its relation `relname` in
/// `public`, `oid` unchanged for any other relation. The result keeps the field (and so the
/// `pg.oid_alias` metadata) of `oid`.
pub struct RelationOid {
    engine: Engine,
    signature: Signature,
}

impl RelationOid {
    pub fn udf(engine: &Engine) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::from(RelationOid { engine: engine.clone(), signature: Signature::any(3, Volatility::Volatile) }))
    }
}

impl std::fmt::Debug for RelationOid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(RELOID_UDF)
    }
}

impl PartialEq for RelationOid {
    fn eq(&self, _: &RelationOid) -> bool {
        true
    }
}
impl Eq for RelationOid {}
impl std::hash::Hash for RelationOid {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        RELOID_UDF.hash(state)
    }
}

impl ScalarUDFImpl for RelationOid {
    fn name(&self) -> &str {
        RELOID_UDF
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(args.get(2).cloned().unwrap_or(DataType::Int32))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        args.arg_fields.get(2).cloned().ok_or_else(|| DataFusionError::Plan(format!("{RELOID_UDF} takes 3 arguments")))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let schemas = datafusion::common::cast::as_string_array(&arrays[0])?;
        let names = datafusion::common::cast::as_string_array(&arrays[1])?;
        let given = datafusion::common::cast::as_int32_array(&arrays[2])?;
        let catalog = self.engine.catalog();
        let out: Int32Array = (0..given.len())
            .map(|i| {
                let own = (schemas.is_valid(i) && schemas.value(i) == "public" && names.is_valid(i))
                    .then(|| catalog.get(names.value(i)))
                    .flatten()
                    .and_then(|r| i32::try_from(r.pg_oid()).ok());
                own.or_else(|| given.is_valid(i).then(|| given.value(i)))
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
