//! Analyzer rules that make DataFusion's plans answer as Postgres does. They run on every
//! plan of the session, after type coercion: ad hoc queries and materialized views alike.
//!
//! - [`RefuseOuterJoinCorrelation`]: a subquery whose outer join condition reads a column of
//!   the outer query is refused (0A000). DataFusion's decorrelation pulls such a condition
//!   above the outer join, which changes its meaning (too few rows).
//! - [`CompareIntervals`]: intervals compare as Postgres compares them, as one span in which
//!   a month is 30 days and a day is 24 hours (`INTERVAL '24 hours' = INTERVAL '1 day'`).
//!   Arrow compares the (months, days, nanoseconds) fields one after the other.
//! - [`CountedSetOperations`]: `INTERSECT ALL` keeps min(m, n) copies of a row and
//!   `EXCEPT ALL` max(m - n, 0), as in Postgres; DataFusion's semi and anti joins keep m or 0.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array};
use arrow::datatypes::{
    DataType, DurationNanosecondType, IntervalDayTimeType, IntervalMonthDayNanoType, IntervalUnit, IntervalYearMonthType, TimeUnit,
};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, JoinType, Result, exec_err, not_impl_err};
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    Between, BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// Every rule, in the order they run (after DataFusion's own).
pub fn rules() -> Vec<Arc<dyn AnalyzerRule + Send + Sync>> {
    vec![Arc::new(RefuseOuterJoinCorrelation), Arc::new(CompareIntervals::default()), Arc::new(CountedSetOperations)]
}

/// Numbers the copies of each row on both sides of `INTERSECT ALL` / `EXCEPT ALL` and adds
/// the copy number to the join keys: the k-th copy on the left meets the k-th on the right.
#[derive(Debug)]
pub struct CountedSetOperations;

const LEFT_COPY: &str = "__velocity_left_copy";
const RIGHT_COPY: &str = "__velocity_right_copy";

impl CountedSetOperations {
    /// `plan` plus a column numbering the copies of each distinct row.
    fn number_copies(plan: Arc<LogicalPlan>, name: &str) -> Result<LogicalPlan> {
        use datafusion::logical_expr::{ExprFunctionExt, LogicalPlanBuilder};
        let columns: Vec<Expr> = plan.schema().columns().into_iter().map(Expr::Column).collect();
        let copy = datafusion::functions_window::expr_fn::row_number().partition_by(columns).build()?.alias(name);
        LogicalPlanBuilder::from(plan).window(vec![copy])?.build()
    }
}

impl AnalyzerRule for CountedSetOperations {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        use datafusion::logical_expr::{Join, LogicalPlanBuilder, col};
        plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::Join(j) = &node else { return Ok(Transformed::no(node)) };
            // What `LogicalPlanBuilder::intersect_or_except` builds for ALL (before the
            // optimizer, semi and anti joins come from nothing else): every column a key,
            // NULLs equal, and no DISTINCT on the left.
            let set_operation = matches!(j.join_type, JoinType::LeftSemi | JoinType::LeftAnti)
                && j.null_equality == datafusion::common::NullEquality::NullEqualsNull
                && j.filter.is_none()
                && !j.on.is_empty()
                && j.on.len() == j.left.schema().fields().len()
                && !matches!(j.left.as_ref(), LogicalPlan::Distinct(_))
                && !j.left.schema().fields().iter().any(|f| f.name() == LEFT_COPY);
            if !set_operation {
                return Ok(Transformed::no(node));
            }
            let LogicalPlan::Join(j) = node else { unreachable!() };
            let output: Vec<Expr> = j.left.schema().columns().into_iter().map(Expr::Column).collect();
            let left = Self::number_copies(j.left, LEFT_COPY)?;
            let right = Self::number_copies(j.right, RIGHT_COPY)?;
            let mut on = j.on;
            on.push((col(LEFT_COPY), col(RIGHT_COPY)));
            let join =
                Join::try_new(Arc::new(left), Arc::new(right), on, None, j.join_type, j.join_constraint, j.null_equality, j.null_aware)?;
            Ok(Transformed::yes(LogicalPlanBuilder::from(LogicalPlan::Join(join)).project(output)?.build()?))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "velocity_counted_set_operations"
    }
}

/// Refuses outer references in the condition of an outer join inside a subquery.
#[derive(Debug)]
pub struct RefuseOuterJoinCorrelation;

impl AnalyzerRule for RefuseOuterJoinCorrelation {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        let mut found = false;
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::Join(j) = node
                && j.join_type != JoinType::Inner
                && (j.on.iter().any(|(l, r)| l.contains_outer() || r.contains_outer())
                    || j.filter.as_ref().is_some_and(Expr::contains_outer))
            {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if found {
            return not_impl_err!("a subquery whose outer join condition refers to a column of the enclosing query");
        }
        Ok(plan)
    }

    fn name(&self) -> &str {
        "velocity_refuse_outer_join_correlation"
    }
}

/// Rewrites comparisons of intervals into comparisons of their spans ([`IntervalSpan`]).
#[derive(Debug)]
pub struct CompareIntervals {
    span: Arc<ScalarUDF>,
}

impl Default for CompareIntervals {
    fn default() -> Self {
        CompareIntervals { span: Arc::new(ScalarUDF::from(IntervalSpan::new())) }
    }
}

fn is_interval(t: &DataType) -> bool {
    matches!(t, DataType::Interval(_))
}

impl CompareIntervals {
    fn span_of(&self, e: Expr) -> Expr {
        self.span.call(vec![e])
    }

    /// Rewrite one expression (not its children) if it compares intervals.
    fn rewrite(&self, e: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
        let interval = |x: &Expr| -> Result<bool> { Ok(is_interval(&x.get_type(schema)?)) };
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right })
                if matches!(
                    op,
                    Operator::Eq
                        | Operator::NotEq
                        | Operator::Lt
                        | Operator::LtEq
                        | Operator::Gt
                        | Operator::GtEq
                        | Operator::IsDistinctFrom
                        | Operator::IsNotDistinctFrom
                ) && (interval(&left)? || interval(&right)?) =>
            {
                let left = self.span_of(*left);
                let right = self.span_of(*right);
                Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(Box::new(left), op, Box::new(right)))))
            }
            Expr::Between(Between { expr, negated, low, high }) if interval(&expr)? => Ok(Transformed::yes(Expr::Between(Between {
                expr: Box::new(self.span_of(*expr)),
                negated,
                low: Box::new(self.span_of(*low)),
                high: Box::new(self.span_of(*high)),
            }))),
            Expr::InList(InList { expr, list, negated }) if interval(&expr)? => Ok(Transformed::yes(Expr::InList(InList {
                expr: Box::new(self.span_of(*expr)),
                list: list.into_iter().map(|x| self.span_of(x)).collect(),
                negated,
            }))),
            other => Ok(Transformed::no(other)),
        }
    }
}

impl AnalyzerRule for CompareIntervals {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            if matches!(node, LogicalPlan::TableScan(_)) {
                // Pushed-down filters are added by the optimizer, after this rule.
                return Ok(Transformed::no(node));
            }
            let schema = merge_schema(&node.inputs());
            let names = NamePreserver::new(&node);
            node.map_expressions(|e| {
                let saved = names.save(&e);
                let rewritten = e.transform_up(|x| self.rewrite(x, &schema))?;
                Ok(rewritten.update_data(|x| saved.restore(x)))
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "velocity_compare_intervals"
    }
}

const NANOS_PER_DAY: i128 = 86_400_000_000_000;
const NANOS_PER_MONTH: i128 = 30 * NANOS_PER_DAY;

/// `interval_span(i)`: an interval (or duration) as nanoseconds, with Postgres' 30-day
/// months and 24-hour days, so that spans order as Postgres orders intervals.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct IntervalSpan {
    signature: Signature,
}

impl IntervalSpan {
    pub fn new() -> Self {
        IntervalSpan { signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl Default for IntervalSpan {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for IntervalSpan {
    fn name(&self) -> &str {
        "interval_span"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Decimal128(38, 0))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        Ok(ColumnarValue::Array(interval_span(&array)?))
    }
}

/// See [`IntervalSpan`].
pub fn interval_span(array: &ArrayRef) -> Result<ArrayRef> {
    let spans: Decimal128Array = match array.data_type() {
        DataType::Interval(IntervalUnit::MonthDayNano) => array
            .as_primitive::<IntervalMonthDayNanoType>()
            .unary(|v| v.months as i128 * NANOS_PER_MONTH + v.days as i128 * NANOS_PER_DAY + v.nanoseconds as i128),
        DataType::Interval(IntervalUnit::DayTime) => {
            array.as_primitive::<IntervalDayTimeType>().unary(|v| v.days as i128 * NANOS_PER_DAY + v.milliseconds as i128 * 1_000_000)
        }
        DataType::Interval(IntervalUnit::YearMonth) => array.as_primitive::<IntervalYearMonthType>().unary(|v| v as i128 * NANOS_PER_MONTH),
        DataType::Duration(_) => {
            let nanos = arrow::compute::cast(array, &DataType::Duration(TimeUnit::Nanosecond))?;
            nanos.as_primitive::<DurationNanosecondType>().unary(|v| v as i128)
        }
        DataType::Null => Decimal128Array::new_null(array.len()),
        other => return exec_err!("interval_span() takes an interval, not {other}"),
    };
    Ok(Arc::new(spans.with_precision_and_scale(38, 0)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::IntervalMonthDayNanoArray;
    use arrow::datatypes::IntervalMonthDayNano;

    #[test]
    fn spans_order_as_postgres_intervals() {
        let a: ArrayRef = Arc::new(IntervalMonthDayNanoArray::from(vec![
            IntervalMonthDayNano::new(0, 0, 24 * 3_600_000_000_000),
            IntervalMonthDayNano::new(0, 1, 0),
            IntervalMonthDayNano::new(1, 0, 0),
            IntervalMonthDayNano::new(0, 31, 0),
            IntervalMonthDayNano::new(0, 0, -1),
        ]));
        let s = interval_span(&a).unwrap();
        let s = s.as_primitive::<arrow::datatypes::Decimal128Type>();
        assert_eq!(s.value(0), s.value(1));
        assert!(s.value(2) < s.value(3));
        assert!(s.value(4) < 0);
    }
}
