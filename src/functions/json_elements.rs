//! `jsonb_array_elements(j)` and `jsonb_array_elements_text(j)` (and their `json_` names) in a
//! select list: one row per element of the array, as Postgres returns them.
//!
//! DataFusion has one set-returning function, `unnest`. So each of these is a scalar function
//! returning the elements as a list, and [`JsonElementsToUnnest`] (an analyzer rule) rewrites
//! a projection that calls them into a projection over an `Unnest` of those lists: ad hoc
//! queries and materialized views (where unnest is a stateless flat map) alike. Several calls
//! in one select list run in step, the shorter padded with NULLs, as Postgres does. An element
//! is printed as Postgres prints `jsonb` (clients see type `text`); `_text` gives strings
//! without quotes and JSON `null` as NULL. A JSON `NULL` or empty array gives no row.

use std::sync::Arc;

use arrow::array::{ArrayRef, ListBuilder, StringBuilder};
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
    for text in [false, true] {
        ctx.register_udf(ScalarUDF::from(JsonElements::new(text, false)));
        ctx.register_udf(ScalarUDF::from(JsonElements::new(text, true)));
    }
    ctx.add_analyzer_rule(Arc::new(JsonElementsToUnnest));
}

/// `jsonb_array_elements[_text](j)` as planned (one element, text), and the list of all
/// elements it is rewritten to (`velocity_jsonb_array_element_list[_text]`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonElements {
    text: bool,
    list: bool,
    aliases: Vec<String>,
    signature: Signature,
}

impl JsonElements {
    fn new(text: bool, list: bool) -> JsonElements {
        let aliases = match (list, text) {
            (true, _) => vec![],
            (false, false) => vec!["json_array_elements".to_string()],
            (false, true) => vec!["json_array_elements_text".to_string()],
        };
        JsonElements { text, list, aliases, signature: Signature::any(1, Volatility::Immutable) }
    }

    /// The list function a call of `name` is rewritten to.
    fn list_of(name: &str) -> Option<ScalarUDF> {
        match name {
            "jsonb_array_elements" => Some(ScalarUDF::from(JsonElements::new(false, true))),
            "jsonb_array_elements_text" => Some(ScalarUDF::from(JsonElements::new(true, true))),
            _ => None,
        }
    }
}

fn is_elements_call(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if JsonElements::list_of(f.func.name()).is_some())
}

impl ScalarUDFImpl for JsonElements {
    fn name(&self) -> &str {
        match (self.list, self.text) {
            (false, false) => "jsonb_array_elements",
            (false, true) => "jsonb_array_elements_text",
            (true, false) => "velocity_jsonb_array_element_list",
            (true, true) => "velocity_jsonb_array_element_list_text",
        }
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(if self.list { DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))) } else { DataType::Utf8 })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if !self.list {
            // Only reached where the rewrite does not apply (a set-returning function in
            // WHERE, say), which Postgres refuses too.
            return not_impl_err!("{}() outside a select list", self.name());
        }
        let array = args.args[0].to_array(args.number_rows)?;
        let array: ArrayRef = arrow::compute::cast(&array, &DataType::Utf8)?;
        let mut out = ListBuilder::new(StringBuilder::new());
        for document in arrow::array::AsArray::as_string::<i32>(array.as_ref()).iter() {
            let Some(document) = document else {
                out.append_null();
                continue;
            };
            let value: Value = match serde_json::from_str(document) {
                Ok(v) => v,
                Err(e) => return exec_err!("invalid input syntax for type json: {e}"),
            };
            let Value::Array(elements) = value else {
                let what = if value.is_object() { "an object" } else { "a scalar" };
                return exec_err!("cannot extract elements from {what}");
            };
            for element in &elements {
                match element {
                    Value::Null if self.text => out.values().append_null(),
                    Value::String(s) if self.text => out.values().append_value(s),
                    v => out.values().append_value(jsonb_text(v)),
                }
            }
            out.append(true);
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
                let list = JsonElements::list_of(f.func.name()).expect("an element function");
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
