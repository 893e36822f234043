//! Reading JSON the way Postgres users write it: the operators `->`, `->>`, `#>`, `#>>`,
//! `@>`, `?`, the functions `jsonb_typeof` and `jsonb_array_length` (and their `json_`
//! names), and the types `json`/`jsonb` in casts (`'{"a": 1}'::jsonb`, checked as JSON,
//! `jsonb` printed normalized).
//!
//! JSON values are text marked as JSON (see `functions::json`). A JSON result is printed as
//! Postgres prints `jsonb`: object keys ordered shortest first, then bytewise, with `", "`
//! and `": "` between items.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanBuilder, Int32Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DFSchema, Result, exec_err};
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr, TypePlanner};
use datafusion::logical_expr::{ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{BinaryOperator, DataType as SqlType};
use serde_json::Value;

use super::json::{is_jsonb, json_field_of};

/// What a JSON accessor computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Access {
    /// `j -> key` (object field or array element; a negative index counts from the end).
    Get,
    /// `j ->> key`: as text.
    GetText,
    /// `j #> '{a,b}'`: by path.
    Path,
    /// `j #>> '{a,b}'`: by path, as text.
    PathText,
    /// `a @> b`: whether `a` contains `b` (jsonb containment).
    Contains,
    /// `j ? key`: whether `key` is a top-level key (or a string element of an array).
    HasKey,
    /// `jsonb_typeof(j)`.
    TypeOf,
    /// `jsonb_array_length(j)`.
    ArrayLength,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::Get => "velocity_json_get",
            Access::GetText => "velocity_json_get_text",
            Access::Path => "velocity_json_path",
            Access::PathText => "velocity_json_path_text",
            Access::Contains => "velocity_json_contains",
            Access::HasKey => "velocity_json_has_key",
            Access::TypeOf => "jsonb_typeof",
            Access::ArrayLength => "jsonb_array_length",
        }
    }

    fn operator(op: &BinaryOperator) -> Option<Access> {
        Some(match op {
            BinaryOperator::Arrow => Access::Get,
            BinaryOperator::LongArrow => Access::GetText,
            BinaryOperator::HashArrow => Access::Path,
            BinaryOperator::HashLongArrow => Access::PathText,
            BinaryOperator::AtArrow => Access::Contains,
            BinaryOperator::Question => Access::HasKey,
            _ => return None,
        })
    }
}

/// Register the accessors, the operators that call them and the `json`/`jsonb` types.
pub fn register(ctx: &SessionContext) -> Result<()> {
    for access in [
        Access::Get,
        Access::GetText,
        Access::Path,
        Access::PathText,
        Access::Contains,
        Access::HasKey,
        Access::TypeOf,
        Access::ArrayLength,
    ] {
        ctx.register_udf(ScalarUDF::from(JsonAccess::new(access)));
    }
    use datafusion::execution::FunctionRegistry;
    use datafusion::execution::session_state::SessionStateBuilder;
    let state = ctx.state_ref();
    state.write().register_expr_planner(Arc::new(JsonOperators))?;
    // A session has one type planner (pg_catalog's, for `regclass` and the like): JSON
    // types go first, the rest to it.
    let existing = state.read().clone();
    let mut builder = SessionStateBuilder::new_from_existing(existing);
    let inner = builder.type_planner().take();
    *state.write() = builder.with_type_planner(Arc::new(JsonTypes { inner })).build();
    ctx.add_analyzer_rule(Arc::new(JsonCasts));
    Ok(())
}

/// Plans the JSON operators as calls of the accessors.
#[derive(Debug)]
struct JsonOperators;

impl ExprPlanner for JsonOperators {
    fn plan_binary_op(&self, expr: RawBinaryExpr, _schema: &DFSchema) -> Result<PlannerResult<RawBinaryExpr>> {
        let Some(access) = Access::operator(&expr.op) else { return Ok(PlannerResult::Original(expr)) };
        let udf = Arc::new(ScalarUDF::from(JsonAccess::new(access)));
        Ok(PlannerResult::Planned(Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
            udf,
            vec![expr.left, expr.right],
        ))))
    }
}

/// Field metadata of a cast to `jsonb` (rather than `json`): its text is normalized.
const JSONB_KEY: &str = "velocity.jsonb";

/// A cast to `json` or `jsonb` becomes a call of [`ToJsonText`]: the text must be JSON
/// (22P02 otherwise), and `jsonb` prints normalized, as in Postgres.
#[derive(Debug)]
struct JsonCasts;

impl datafusion::optimizer::AnalyzerRule for JsonCasts {
    fn analyze(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _: &datafusion::common::config::ConfigOptions,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        super::replace_casts(plan, |field| {
            super::json::is_json(field).then(|| ScalarUDF::from(ToJsonText::new(field.metadata().contains_key(JSONB_KEY))))
        })
    }

    fn name(&self) -> &str {
        "velocity_json_casts"
    }
}

/// `text::json` (checked) and `text::jsonb` (checked and normalized).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToJsonText {
    binary: bool,
    signature: Signature,
}

impl ToJsonText {
    fn new(binary: bool) -> ToJsonText {
        ToJsonText { binary, signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for ToJsonText {
    fn name(&self) -> &str {
        if self.binary { "velocity_to_jsonb" } else { "velocity_to_json" }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn return_field_from_args(&self, _: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(json_field_of(self.name(), true, self.binary)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        let mut out = StringBuilder::new();
        for t in text(&array)? {
            match t {
                None => out.append_null(),
                Some(t) => match serde_json::from_str::<Value>(&t) {
                    Ok(v) if self.binary => out.append_value(jsonb_text(&v)),
                    Ok(_) => out.append_value(t),
                    Err(e) => return exec_err!("invalid input syntax for type json: {e}"),
                },
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `json` and `jsonb` in casts: text marked as JSON; other types go to `inner`.
#[derive(Debug)]
struct JsonTypes {
    inner: Option<Arc<dyn TypePlanner>>,
}

impl TypePlanner for JsonTypes {
    fn plan_type_field(&self, sql_type: &SqlType) -> Result<Option<FieldRef>> {
        if matches!(sql_type, SqlType::JSON | SqlType::JSONB) {
            let mut field = json_field_of("", true, matches!(sql_type, SqlType::JSONB));
            if matches!(sql_type, SqlType::JSONB) {
                let mut metadata = field.metadata().clone();
                metadata.insert(JSONB_KEY.to_string(), "true".to_string());
                field = field.with_metadata(metadata);
            }
            return Ok(Some(Arc::new(field)));
        }
        match &self.inner {
            Some(inner) => inner.plan_type_field(sql_type),
            None => Ok(None),
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonAccess {
    access: Access,
    signature: Signature,
    aliases: Vec<String>,
}

impl JsonAccess {
    fn new(access: Access) -> JsonAccess {
        let (arity, aliases) = match access {
            Access::TypeOf => (1, vec!["json_typeof".to_string()]),
            Access::ArrayLength => (1, vec!["json_array_length".to_string()]),
            _ => (2, vec![]),
        };
        JsonAccess { access, signature: Signature::any(arity, Volatility::Immutable), aliases }
    }

    fn data_type(&self) -> DataType {
        match self.access {
            Access::Contains | Access::HasKey => DataType::Boolean,
            Access::ArrayLength => DataType::Int32,
            _ => DataType::Utf8,
        }
    }
}

impl ScalarUDFImpl for JsonAccess {
    fn name(&self) -> &str {
        self.access.name()
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(self.data_type())
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(match self.access {
            // jsonb -> key is jsonb, json -> key json (text, or anything else, is read as json).
            Access::Get | Access::Path => json_field_of(self.name(), true, args.arg_fields.first().is_some_and(|f| is_jsonb(f))),
            _ => Field::new(self.name(), self.data_type(), true),
        }))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays: Vec<ArrayRef> = args.args.iter().map(|a| a.to_array(rows)).collect::<Result<_>>()?;
        let documents = text(&arrays[0])?;
        let parsed = |row: usize| -> Result<Option<Value>> {
            match &documents[row] {
                None => Ok(None),
                Some(t) => match serde_json::from_str(t) {
                    Ok(v) => Ok(Some(v)),
                    Err(e) => exec_err!("invalid input syntax for type json: {e}"),
                },
            }
        };
        Ok(ColumnarValue::Array(match self.access {
            Access::Get | Access::GetText | Access::Path | Access::PathText => {
                let keys = keys(&arrays[1])?;
                let mut out = StringBuilder::new();
                for (row, key) in keys.iter().enumerate() {
                    let found = match (parsed(row)?, key) {
                        (Some(v), Some(key)) => match self.access {
                            Access::Get | Access::GetText => get(&v, key).cloned(),
                            _ => path(&v, key)?,
                        },
                        _ => None,
                    };
                    let text_result = matches!(self.access, Access::GetText | Access::PathText);
                    match found {
                        None => out.append_null(),
                        Some(Value::Null) if text_result => out.append_null(),
                        Some(Value::String(s)) if text_result => out.append_value(s),
                        Some(v) => out.append_value(jsonb_text(&v)),
                    }
                }
                Arc::new(out.finish()) as ArrayRef
            }
            Access::Contains => {
                let other = text(&arrays[1])?;
                let mut out = BooleanBuilder::new();
                for (row, b) in other.iter().enumerate() {
                    match (parsed(row)?, b) {
                        (Some(a), Some(b)) => match serde_json::from_str::<Value>(b) {
                            Ok(b) => out.append_value(contains(&a, &b, true)),
                            Err(e) => return exec_err!("invalid input syntax for type json: {e}"),
                        },
                        _ => out.append_null(),
                    }
                }
                Arc::new(out.finish())
            }
            Access::HasKey => {
                let keys = text(&arrays[1])?;
                let mut out = BooleanBuilder::new();
                for (row, key) in keys.iter().enumerate() {
                    match (parsed(row)?, key) {
                        (Some(Value::Object(o)), Some(k)) => out.append_value(o.contains_key(k.as_str())),
                        (Some(Value::Array(a)), Some(k)) => out.append_value(a.iter().any(|e| e.as_str() == Some(k))),
                        (Some(Value::String(s)), Some(k)) => out.append_value(&s == k),
                        (Some(_), Some(_)) => out.append_value(false),
                        _ => out.append_null(),
                    }
                }
                Arc::new(out.finish())
            }
            Access::TypeOf => {
                let mut out = StringBuilder::new();
                for row in 0..rows {
                    match parsed(row)? {
                        None => out.append_null(),
                        Some(v) => out.append_value(match v {
                            Value::Null => "null",
                            Value::Bool(_) => "boolean",
                            Value::Number(_) => "number",
                            Value::String(_) => "string",
                            Value::Array(_) => "array",
                            Value::Object(_) => "object",
                        }),
                    }
                }
                Arc::new(out.finish())
            }
            Access::ArrayLength => {
                let mut out = Int32Builder::new();
                for row in 0..rows {
                    match parsed(row)? {
                        None => out.append_null(),
                        Some(Value::Array(a)) => out.append_value(a.len() as i32),
                        Some(Value::Object(_)) => return exec_err!("cannot get array length of a non-array"),
                        Some(_) => return exec_err!("cannot get array length of a scalar"),
                    }
                }
                Arc::new(out.finish())
            }
        }))
    }
}

/// The rows of a text (or JSON) argument.
fn text(array: &ArrayRef) -> Result<Vec<Option<String>>> {
    let array = arrow::compute::cast(array, &DataType::Utf8)?;
    Ok(array.as_string::<i32>().iter().map(|s| s.map(str::to_string)).collect())
}

/// A key: an object field name, or an array index.
enum Key {
    Name(String),
    Index(i64),
}

fn keys(array: &ArrayRef) -> Result<Vec<Option<Key>>> {
    if array.data_type().is_integer() {
        let array = arrow::compute::cast(array, &DataType::Int64)?;
        return Ok(array.as_primitive::<arrow::datatypes::Int64Type>().iter().map(|i| i.map(Key::Index)).collect());
    }
    Ok(text(array)?.into_iter().map(|s| s.map(Key::Name)).collect())
}

fn get<'a>(value: &'a Value, key: &Key) -> Option<&'a Value> {
    match (value, key) {
        (Value::Object(o), Key::Name(n)) => o.get(n),
        (Value::Array(a), Key::Index(i)) => {
            let i = if *i < 0 { a.len() as i64 + i } else { *i };
            usize::try_from(i).ok().and_then(|i| a.get(i))
        }
        _ => None,
    }
}

/// `#>`: the path is a text array literal, `'{a,0,b}'`; each step an object field or, in
/// an array, an index.
fn path(value: &Value, path: &Key) -> Result<Option<Value>> {
    let Key::Name(text) = path else { return exec_err!("a JSON path is a text array such as '{{a,b}}'") };
    let Some(inner) = text.trim().strip_prefix('{').and_then(|t| t.strip_suffix('}')) else {
        return exec_err!("malformed array literal: \"{text}\"");
    };
    let mut at = value;
    if inner.trim().is_empty() {
        return Ok(Some(at.clone()));
    }
    for step in inner.split(',') {
        let step = step.trim().trim_matches('"');
        let next = match at {
            Value::Array(_) => match step.parse::<i64>() {
                Ok(i) => get(at, &Key::Index(i)),
                Err(_) => None,
            },
            _ => get(at, &Key::Name(step.to_string())),
        };
        match next {
            Some(v) => at = v,
            None => return Ok(None),
        }
    }
    Ok(Some(at.clone()))
}

/// jsonb containment: objects contain objects whose pairs they contain, arrays contain
/// arrays whose elements they contain (in any order), scalars equal scalars; at the top
/// level an array also contains a scalar it has as an element.
fn contains(a: &Value, b: &Value, top: bool) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => b.iter().all(|(k, bv)| a.get(k).is_some_and(|av| contains(av, bv, false))),
        (Value::Array(a), Value::Array(b)) => b.iter().all(|bv| a.iter().any(|av| contains(av, bv, false))),
        (Value::Array(a), b) if top && !b.is_object() => a.iter().any(|av| av == b),
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (a, b) => a == b,
    }
}

/// `value` as Postgres prints a `jsonb`.
pub fn jsonb_text(value: &Value) -> String {
    let mut out = String::new();
    write_jsonb(value, &mut out);
    out
}

fn write_jsonb(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_jsonb(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.as_bytes().cmp(b.as_bytes())));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_jsonb(v, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonb_prints_as_postgres() {
        let v: Value = serde_json::from_str(r#"{"bb": [1, {"z": null, "a": true}], "a": "x", "ccc": 1.5}"#).unwrap();
        assert_eq!(jsonb_text(&v), r#"{"a": "x", "bb": [1, {"a": true, "z": null}], "ccc": 1.5}"#);
    }

    #[test]
    fn containment_follows_jsonb() {
        let a: Value = serde_json::from_str(r#"{"tags": ["x", "y"], "n": 1, "o": {"p": 2, "q": 3}}"#).unwrap();
        let yes: Value = serde_json::from_str(r#"{"tags": ["y"], "o": {"q": 3}}"#).unwrap();
        let no: Value = serde_json::from_str(r#"{"tags": "y"}"#).unwrap();
        assert!(contains(&a, &yes, true));
        assert!(!contains(&a, &no, true));
        assert!(contains(&serde_json::json!(["a", "b"]), &serde_json::json!("a"), true));
    }
}
