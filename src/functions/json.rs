//! Postgres JSON functions over DataFusion: `json_build_object`/`jsonb_build_object`,
//! `to_json`/`to_jsonb`, and the aggregates `json_agg`/`jsonb_agg` (which take `ORDER BY`).
//!
//! JSON values are Utf8 text whose field carries the canonical Arrow extension name
//! `arrow.json`; the server reports such columns as `json`/`jsonb` to clients. A JSON
//! argument nests as JSON, anything else is converted the way Postgres' `to_json` does
//! (numbers stay numbers, timestamps become ISO-8601 strings, lists arrays, structs objects).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, FieldRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use serde_json::Value;

/// Arrow's canonical extension name for JSON text.
pub const JSON_EXTENSION: &str = "arrow.json";
const EXTENSION_KEY: &str = "ARROW:extension:name";

/// A Utf8 field marked as JSON.
pub fn json_field(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable).with_metadata(HashMap::from([(EXTENSION_KEY.to_string(), JSON_EXTENSION.to_string())]))
}

/// A Utf8 field marked as JSON, typed `jsonb` for clients when `jsonb` (field metadata
/// `pg.type`, which RowDescription and `pg_attribute` read, as for a `JSONB` column).
pub fn json_field_of(name: &str, nullable: bool, jsonb: bool) -> Field {
    let field = json_field(name, nullable);
    if !jsonb {
        return field;
    }
    let mut metadata = field.metadata().clone();
    metadata.insert(crate::catalog::column_type::PG_TYPE_KEY.to_string(), "jsonb".to_string());
    field.with_metadata(metadata)
}

/// Whether `field` is JSON typed `jsonb` (a `JSONB` column, a `::jsonb` cast, a `jsonb_`
/// function's result).
pub fn is_jsonb(field: &Field) -> bool {
    is_json(field) && field.metadata().get(crate::catalog::column_type::PG_TYPE_KEY).is_some_and(|t| t == "jsonb")
}

pub fn is_json(field: &Field) -> bool {
    field.metadata().get(EXTENSION_KEY).is_some_and(|n| n == JSON_EXTENSION)
}

/// Register every JSON function with `ctx`.
pub fn register(ctx: &SessionContext) {
    for jsonb in [false, true] {
        ctx.register_udf(ScalarUDF::from(BuildObject::new(jsonb)));
        ctx.register_udf(ScalarUDF::from(ToJson::new(jsonb)));
        ctx.register_udaf(AggregateUDF::from(JsonAgg::new(jsonb)));
    }
}

/// Values of `array` (of `field`) as JSON, row by row.
pub(crate) fn to_json_values(array: &ArrayRef, field: &Field) -> Result<Vec<Value>> {
    if is_json(field)
        && let Some(strings) = array.as_string_opt::<i32>()
    {
        return Ok(strings
            .iter()
            .map(|s| s.map_or(Value::Null, |s| serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))))
            .collect());
    }
    let n = array.len();
    let null = |i: usize| array.is_null(i);
    Ok(match array.data_type() {
        DataType::Null => vec![Value::Null; n],
        DataType::Boolean => {
            let a = array.as_boolean();
            (0..n).map(|i| if null(i) { Value::Null } else { Value::Bool(a.value(i)) }).collect()
        }
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            let a = arrow::compute::cast(array, &DataType::Int64)?;
            let a = a.as_primitive::<arrow::datatypes::Int64Type>();
            (0..n).map(|i| if null(i) { Value::Null } else { Value::from(a.value(i)) }).collect()
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            let a = arrow::compute::cast(array, &DataType::UInt64)?;
            let a = a.as_primitive::<arrow::datatypes::UInt64Type>();
            (0..n).map(|i| if null(i) { Value::Null } else { Value::from(a.value(i)) }).collect()
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let a = arrow::compute::cast(array, &DataType::Float64)?;
            let a = a.as_primitive::<arrow::datatypes::Float64Type>();
            (0..n)
                .map(|i| if null(i) { Value::Null } else { serde_json::Number::from_f64(a.value(i)).map_or(Value::Null, Value::Number) })
                .collect()
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let a = arrow::compute::cast(array, &DataType::Utf8)?;
            a.as_string::<i32>().iter().map(|s| s.map_or(Value::Null, |s| Value::String(s.to_string()))).collect()
        }
        DataType::Decimal128(..) | DataType::Decimal256(..) => {
            // Exact digits, as a JSON number.
            let f = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
            (0..n)
                .map(|i| if null(i) { Value::Null } else { serde_json::from_str(&f.value(i).to_string()).unwrap_or(Value::Null) })
                .collect()
        }
        DataType::List(item) | DataType::LargeList(item) => {
            let list = arrow::compute::cast(array, &DataType::List(item.clone()))?;
            let list: &ListArray = list.as_list::<i32>();
            (0..n)
                .map(|i| {
                    if null(i) {
                        return Ok(Value::Null);
                    }
                    Ok(Value::Array(to_json_values(&list.value(i), item)?))
                })
                .collect::<Result<_>>()?
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let columns: Vec<Vec<Value>> = fields.iter().zip(s.columns()).map(|(f, c)| to_json_values(c, f)).collect::<Result<_>>()?;
            (0..n)
                .map(|i| {
                    if null(i) {
                        return Value::Null;
                    }
                    Value::Object(fields.iter().zip(&columns).map(|(f, c)| (f.name().clone(), c[i].clone())).collect())
                })
                .collect()
        }
        _ => {
            // Dates, times, timestamps, intervals: their ISO-8601 text, as Postgres writes them.
            let f = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
            (0..n).map(|i| if null(i) { Value::Null } else { Value::String(f.value(i).to_string()) }).collect()
        }
    })
}

fn arrays(args: &[ColumnarValue], rows: usize) -> Result<Vec<ArrayRef>> {
    args.iter().map(|a| a.to_array(rows)).collect()
}

/// `json_build_object(key, value, ...)`, or `jsonb_build_object` (typed `jsonb`) when `jsonb`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct BuildObject {
    jsonb: bool,
    signature: Signature,
    aliases: Vec<String>,
}

impl BuildObject {
    fn new(jsonb: bool) -> BuildObject {
        BuildObject {
            jsonb,
            signature: Signature::variadic_any(Volatility::Immutable),
            aliases: if jsonb { vec![] } else { vec!["json_object".into()] },
        }
    }
}

impl ScalarUDFImpl for BuildObject {
    fn name(&self) -> &str {
        if self.jsonb { "jsonb_build_object" } else { "json_build_object" }
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        if !args.arg_fields.len().is_multiple_of(2) {
            return exec_err!("{} takes key/value pairs: an even number of arguments", self.name());
        }
        Ok(Arc::new(json_field_of(self.name(), false, self.jsonb)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let columns = arrays(&args.args, rows)?;
        let values: Vec<Vec<Value>> = columns.iter().zip(&args.arg_fields).map(|(c, f)| to_json_values(c, f)).collect::<Result<_>>()?;
        let mut out = StringBuilder::new();
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in values.chunks(2) {
                let key = match &pair[0][row] {
                    Value::String(s) => s.clone(),
                    Value::Null => return exec_err!("json_build_object: a key is NULL"),
                    other => other.to_string(),
                };
                object.insert(key, pair[1][row].clone());
            }
            out.append_value(Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `to_json(value)`, or `to_jsonb` (typed `jsonb`) when `jsonb`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToJson {
    jsonb: bool,
    signature: Signature,
}

impl ToJson {
    fn new(jsonb: bool) -> ToJson {
        ToJson { jsonb, signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for ToJson {
    fn name(&self) -> &str {
        if self.jsonb { "to_jsonb" } else { "to_json" }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(json_field_of(self.name(), args.arg_fields.iter().any(|f| f.is_nullable()), self.jsonb)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let columns = arrays(&args.args, args.number_rows)?;
        let values = to_json_values(&columns[0], &args.arg_fields[0])?;
        let out: StringArray = values.iter().map(|v| (!v.is_null()).then(|| v.to_string())).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `json_agg(value [ORDER BY ...])` and `jsonb_agg` (typed `jsonb`): a JSON array of the group's values,
/// NULLs included, in the aggregate's order; NULL for an empty group. DataFusion's
/// `array_agg` does the collecting and the ordering (so it behaves exactly like
/// `array_agg(... ORDER BY ...)`); the result is rendered as JSON.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonAgg {
    jsonb: bool,
    signature: Signature,
    array_agg: AggregateUDF,
}

impl JsonAgg {
    fn new(jsonb: bool) -> JsonAgg {
        JsonAgg::around(datafusion::functions_aggregate::array_agg::array_agg_udaf().as_ref().clone(), jsonb)
    }

    fn around(array_agg: AggregateUDF, jsonb: bool) -> JsonAgg {
        JsonAgg { jsonb, signature: Signature::any(1, Volatility::Immutable), array_agg }
    }
}

impl AggregateUDFImpl for JsonAgg {
    fn name(&self) -> &str {
        if self.jsonb { "jsonb_agg" } else { "json_agg" }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn return_field(&self, _: &[FieldRef]) -> Result<FieldRef> {
        Ok(Arc::new(json_field_of(self.name(), true, self.jsonb)))
    }
    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.array_agg.inner().order_sensitivity()
    }
    fn with_beneficial_ordering(self: Arc<Self>, beneficial: bool) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        let inner = self.array_agg.inner().clone().with_beneficial_ordering(beneficial)?;
        Ok(inner.map(|i| Arc::new(JsonAgg::around(AggregateUDF::new_from_shared_impl(i), self.jsonb)) as _))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.array_agg.inner().state_fields(args)
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let item = args.expr_fields[0].clone();
        Ok(Box::new(JsonAggAccumulator { item, array_agg: self.array_agg.inner().accumulator(args)? }))
    }
}

/// `array_agg`'s accumulator, rendering its list as a JSON array.
#[derive(Debug)]
struct JsonAggAccumulator {
    item: FieldRef,
    array_agg: Box<dyn Accumulator>,
}

impl Accumulator for JsonAggAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.array_agg.update_batch(values)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.array_agg.merge_batch(states)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.array_agg.state()
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let ScalarValue::List(list) = self.array_agg.evaluate()? else {
            return exec_err!("json_agg: array_agg returned something other than a list");
        };
        if list.is_null(0) || list.value_length(0) == 0 {
            return Ok(ScalarValue::Utf8(None));
        }
        let items = to_json_values(&list.value(0), &self.item)?;
        Ok(ScalarValue::Utf8(Some(Value::Array(items).to_string())))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.array_agg.size()
    }
}
