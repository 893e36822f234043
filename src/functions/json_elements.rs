//! Postgres' set-returning JSON functions in a select list: `jsonb_array_elements(j)` and
//! `jsonb_array_elements_text(j)` (one row per element), `jsonb_each(j)` and
//! `jsonb_each_text(j)` (one row per key, the `(key,value)` record printed as Postgres prints
//! it), and their `json_` names, as Postgres returns them. `sql::set_functions` writes the
//! same functions in `FROM` as select lists of `jsonb_array_elements`,
//! `velocity_jsonb_each_key` / `velocity_jsonb_each_value[_text]` (the `key` and `value`
//! columns) and `velocity_jsonb_ordinality` (`WITH ORDINALITY`), which run in step.
//!
//! DataFusion has one set-returning function, `unnest`. So each of these is a scalar function
//! returning the rows as a list, and [`JsonElementsToUnnest`] (an analyzer rule) rewrites
//! a projection that calls them into a projection over an `Unnest` of those lists: ad hoc
//! queries and materialized views (where unnest is a stateless flat map) alike. Several calls
//! in one select list run in step, the shorter padded with NULLs, as Postgres does. A value
//! is printed as Postgres prints `jsonb` (clients see type `text`); `_text` gives strings
//! without quotes and JSON `null` as NULL. A JSON `NULL`, empty array or empty object gives no
//! row. `json_each` reads its argument as `jsonb_each` does: of duplicate keys the last one
//! only (Postgres' `json_each` returns each). `regexp_matches` (`super::regexp_matches`) is
//! rewritten the same way.

use std::sync::Arc;

use arrow::array::{ArrayBuilder, ArrayRef, Int64Builder, ListBuilder, StringBuilder};
use arrow::datatypes::{DataType, Field};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result, UnnestOptions, exec_err, not_impl_err};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::SessionContext;
use serde_json::Value;

use super::json_access::jsonb_text;

/// Register the functions and the rewrite.
pub fn register(ctx: &SessionContext) {
    for kind in Kind::ALL {
        ctx.register_udf(ScalarUDF::from(JsonElements::new(kind, false)));
        ctx.register_udf(ScalarUDF::from(JsonElements::new(kind, true)));
    }
    ctx.register_udf(ScalarUDF::from(NoElements { signature: Signature::any(2, Volatility::Immutable) }));
    ctx.add_analyzer_rule(Arc::new(JsonElementsToUnnest));
}

/// `velocity_jsonb_no_rows(j, 'array' | 'object')`: whether a set-returning JSON function gives
/// no row for `j` (NULL, `[]`, `{}`), without failing where it would (`j` of the other kind,
/// or not JSON): false there. `sql::set_functions` writes it for `LEFT JOIN LATERAL`, where
/// it is evaluated for rows a filter drops and Postgres never reads (and DataFusion's
/// simplifier turns `CASE` into an `AND` that evaluates both sides).
#[derive(Debug, PartialEq, Eq, Hash)]
struct NoElements {
    signature: Signature,
}

impl ScalarUDFImpl for NoElements {
    fn name(&self) -> &str {
        "velocity_jsonb_no_rows"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let documents = arrow::compute::cast(&args.args[0].to_array(n)?, &DataType::Utf8)?;
        let kinds = arrow::compute::cast(&args.args[1].to_array(n)?, &DataType::Utf8)?;
        let documents = arrow::array::AsArray::as_string::<i32>(documents.as_ref());
        let kinds = arrow::array::AsArray::as_string::<i32>(kinds.as_ref());
        let out: arrow::array::BooleanArray = documents
            .iter()
            .zip(kinds.iter())
            .map(|(d, kind)| {
                let Some(d) = d else { return Some(true) };
                Some(match (serde_json::from_str::<Value>(d), kind) {
                    (Ok(Value::Array(a)), Some("array")) => a.is_empty(),
                    (Ok(Value::Object(o)), Some("object")) => o.is_empty(),
                    _ => false,
                })
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// What one row of a set-returning JSON function holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// `jsonb_array_elements[_text]`: an element of the array.
    Element { text: bool },
    /// `jsonb_each[_text]` in a select list: the `(key,value)` record, as Postgres prints it.
    Record { text: bool },
    /// The key of a `jsonb_each` row (its `key` column in `FROM`).
    Key,
    /// The value of a `jsonb_each[_text]` row (its `value` column in `FROM`).
    Value { text: bool },
    /// `WITH ORDINALITY` of an array's elements or an object's keys: 1, 2, ...
    Ordinality,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::Element { text: false },
        Kind::Element { text: true },
        Kind::Record { text: false },
        Kind::Record { text: true },
        Kind::Key,
        Kind::Value { text: false },
        Kind::Value { text: true },
        Kind::Ordinality,
    ];

    /// The name the set-returning function is called by.
    fn name(self) -> &'static str {
        match self {
            Kind::Element { text: false } => "jsonb_array_elements",
            Kind::Element { text: true } => "jsonb_array_elements_text",
            Kind::Record { text: false } => "jsonb_each",
            Kind::Record { text: true } => "jsonb_each_text",
            Kind::Key => "velocity_jsonb_each_key",
            Kind::Value { text: false } => "velocity_jsonb_each_value",
            Kind::Value { text: true } => "velocity_jsonb_each_value_text",
            Kind::Ordinality => "velocity_jsonb_ordinality",
        }
    }

    fn item_type(self) -> DataType {
        if self == Kind::Ordinality { DataType::Int64 } else { DataType::Utf8 }
    }
}

/// A set-returning JSON function as planned (one value per row), and the list of all its
/// values it is rewritten to (`velocity_list_<name>`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonElements {
    kind: Kind,
    list: bool,
    name: String,
    aliases: Vec<String>,
    signature: Signature,
}

impl JsonElements {
    fn new(kind: Kind, list: bool) -> JsonElements {
        let name = if list { format!("velocity_list_{}", kind.name()) } else { kind.name().to_string() };
        let aliases = match kind.name().strip_prefix("jsonb_") {
            Some(rest) if !list => vec![format!("json_{rest}")],
            _ => vec![],
        };
        JsonElements { kind, list, name, aliases, signature: Signature::any(1, Volatility::Immutable) }
    }

    /// The list function a call of `name` is rewritten to.
    fn list_of(name: &str) -> Option<ScalarUDF> {
        Kind::ALL.into_iter().find(|k| k.name() == name).map(|k| ScalarUDF::from(JsonElements::new(k, true)))
    }

    /// Append the rows `document` gives.
    fn append_rows(&self, document: &str, out: &mut ListBuilder<Box<dyn ArrayBuilder>>) -> Result<()> {
        let value: Value = match serde_json::from_str(document) {
            Ok(v) => v,
            Err(e) => return exec_err!("invalid input syntax for type json: {e}"),
        };
        let values = out.values();
        match (self.kind, value) {
            (Kind::Ordinality, Value::Array(items)) => append_ordinals(values, items.len()),
            (Kind::Ordinality, Value::Object(fields)) => append_ordinals(values, fields.len()),
            (Kind::Ordinality, _) => return exec_err!("cannot extract elements from a scalar"),
            (Kind::Element { text }, Value::Array(elements)) => {
                let values = string_values(values)?;
                for element in &elements {
                    match element {
                        Value::Null if text => values.append_null(),
                        Value::String(s) if text => values.append_value(s),
                        v => values.append_value(jsonb_text(v)),
                    }
                }
            }
            (Kind::Element { .. }, value) => {
                let what = if value.is_object() { "an object" } else { "a scalar" };
                return exec_err!("cannot extract elements from {what}");
            }
            (kind @ (Kind::Record { .. } | Kind::Key | Kind::Value { .. }), Value::Object(fields)) => {
                let values = string_values(values)?;
                for (key, value) in &fields {
                    let text = matches!(kind, Kind::Record { text: true } | Kind::Value { text: true });
                    let value = match value {
                        Value::Null if text => None,
                        Value::String(s) if text => Some(s.clone()),
                        v => Some(jsonb_text(v)),
                    };
                    match kind {
                        Kind::Key => values.append_value(key),
                        Kind::Value { .. } => values.append_option(value),
                        _ => values.append_value(format!(
                            "({},{})",
                            record_field(key),
                            value.as_deref().map(record_field).unwrap_or_default()
                        )),
                    }
                }
            }
            (kind, _) => {
                let function = match kind {
                    Kind::Record { text: true } | Kind::Value { text: true } => "jsonb_each_text",
                    _ => "jsonb_each",
                };
                return exec_err!("cannot call {function} on a non-object");
            }
        }
        out.append(true);
        Ok(())
    }
}

fn append_ordinals(values: &mut Box<dyn ArrayBuilder>, n: usize) {
    if let Some(values) = values.as_any_mut().downcast_mut::<Int64Builder>() {
        values.append_slice(&(1..=n as i64).collect::<Vec<_>>());
    }
}

fn string_values(values: &mut Box<dyn ArrayBuilder>) -> Result<&mut StringBuilder> {
    match values.as_any_mut().downcast_mut::<StringBuilder>() {
        Some(v) => Ok(v),
        None => exec_err!("a JSON row function built the wrong list"),
    }
}

/// A field of a record as Postgres prints it: quoted (with `"` and `\` doubled) when empty
/// or holding a quote, backslash, parenthesis, comma or white space.
fn record_field(text: &str) -> String {
    let plain = !text.is_empty() && !text.chars().any(|c| matches!(c, '"' | '\\' | '(' | ')' | ',') || c.is_whitespace());
    if plain {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The list function a set-returning function named `name` is rewritten to: a JSON one, or
/// `regexp_matches`.
fn list_function(name: &str) -> Option<ScalarUDF> {
    JsonElements::list_of(name).or_else(|| super::regexp_matches::list_of(name))
}

fn is_elements_call(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if list_function(f.func.name()).is_some())
}

impl ScalarUDFImpl for JsonElements {
    fn name(&self) -> &str {
        &self.name
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        let item = self.kind.item_type();
        Ok(if self.list { DataType::List(Arc::new(Field::new("item", item, true))) } else { item })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if !self.list {
            // Only reached where the rewrite does not apply (a set-returning function in
            // WHERE, say), which Postgres refuses too.
            return not_impl_err!("{}() outside a select list", self.name());
        }
        let array = args.args[0].to_array(args.number_rows)?;
        let array: ArrayRef = arrow::compute::cast(&array, &DataType::Utf8)?;
        let values: Box<dyn ArrayBuilder> =
            if self.kind == Kind::Ordinality { Box::new(Int64Builder::new()) } else { Box::new(StringBuilder::new()) };
        let mut out = ListBuilder::new(values).with_field(Arc::new(Field::new("item", self.kind.item_type(), true)));
        for document in arrow::array::AsArray::as_string::<i32>(array.as_ref()).iter() {
            match document {
                Some(document) => self.append_rows(document, &mut out)?,
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Rewrites `Projection(.. f(j) ..)` over `input`, `f` one of the element functions, into
/// `Projection(.. e ..)` over `Unnest(e)` over `Projection(input columns, f(j) AS e)`.
#[derive(Debug)]
pub struct JsonElementsToUnnest;

const ELEMENTS: &str = "__velocity_json_elements";

impl AnalyzerRule for JsonElementsToUnnest {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::Projection(p) = &node else { return Ok(Transformed::no(node)) };
            let mut calls: Vec<Expr> = Vec::new();
            for e in &p.expr {
                e.apply(|sub| {
                    if is_elements_call(sub) && !calls.contains(sub) {
                        calls.push(sub.clone());
                    }
                    Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                })?;
            }
            if calls.is_empty() {
                return Ok(Transformed::no(node));
            }
            let mut inner: Vec<Expr> = p.input.schema().columns().into_iter().map(Expr::Column).collect();
            let names: Vec<String> = (0..calls.len()).map(|i| format!("{ELEMENTS}_{i}")).collect();
            for (call, name) in calls.iter().zip(&names) {
                let Expr::ScalarFunction(f) = call else { continue };
                let Some(list) = list_function(f.func.name()) else { continue };
                inner.push(list.call(f.args.clone()).alias(name));
            }
            let columns: Vec<Column> = names.iter().map(|n| Column::from_name(n.clone())).collect();
            let unnested = LogicalPlanBuilder::from(p.input.as_ref().clone())
                .project(inner)?
                .unnest_columns_with_options(columns, UnnestOptions::new().with_preserve_nulls(false))?;
            let mut outer = Vec::with_capacity(p.expr.len());
            for (i, e) in p.expr.iter().enumerate() {
                let (qualifier, field) = p.schema.qualified_field(i);
                let rewritten = e
                    .clone()
                    .transform_up(|sub| match calls.iter().position(|c| *c == sub) {
                        Some(k) => Ok(Transformed::yes(Expr::Column(Column::from_name(names[k].clone())))),
                        None => Ok(Transformed::no(sub)),
                    })?
                    .data;
                outer.push(rewritten.unalias().alias_qualified(qualifier.cloned(), field.name()));
            }
            Ok(Transformed::yes(unnested.project(outer)?.build()?))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "velocity_json_elements_to_unnest"
    }
}
