//! Temporal filters: `WHERE ts > now() - INTERVAL '7 days'` in a materialized view.
//!
//! DataFusion's optimizer would fold `now()` into the time the view was created. Before
//! optimizing, [`rewrite_time_windows`] turns each such conjunct into the volatile marker
//! `velocity_within_window(ts, window)`, which the optimizer leaves alone and the planner
//! turns into a [`crate::dataflow::temporal::TemporalFilter`]: rows enter the view as usual
//! and leave it when the clock passes `ts + window`. This is how views over `changes()`
//! keep a bounded history. Any other use of `now()` in a view is rejected.
//!
//! Event-time windows close by watermark instead ([`window_close`]): `EMIT ON WINDOW CLOSE`.

use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::PlanError;

const MARKER: &str = "velocity_within_window";

/// `velocity_within_window(ts, window_micros)`: true while `ts + window > now`. Evaluated
/// by DataFusion only if someone calls it directly; views plan it as a temporal filter.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WithinWindow {
    signature: Signature,
}

impl ScalarUDFImpl for WithinWindow {
    fn name(&self) -> &str {
        MARKER
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let ts = args.args[0].to_array(rows)?;
        let ColumnarValue::Scalar(ScalarValue::Int64(Some(window))) = args.args[1] else {
            return exec_err!("{MARKER} needs a constant window");
        };
        let micros = arrow::compute::cast(&ts, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let micros = micros.as_any().downcast_ref::<arrow::array::TimestampMicrosecondArray>().expect("cast to micros");
        let now = now_micros();
        let out: arrow::array::BooleanArray = micros.iter().map(|t| t.map(|t| t + window > now)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros() as i64
}

fn marker() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(WithinWindow { signature: Signature::any(2, Volatility::Volatile) }))
}

/// A time window found in a predicate: rows stay while `time + window_micros > now`.
pub struct TimeWindow {
    pub time: Expr,
    pub window_micros: i64,
}

/// Replace `ts > now() - INTERVAL` (and `>=`, and the mirrored forms) in every filter of
/// `plan` with the marker; reject `now()` anywhere else.
pub fn rewrite_time_windows(plan: LogicalPlan) -> Result<LogicalPlan, PlanError> {
    let plan = plan
        .transform_up(|node| {
            let LogicalPlan::Filter(filter) = &node else { return Ok(Transformed::no(node)) };
            let mut changed = false;
            let conjuncts: Vec<Expr> = split_conjunction(&filter.predicate)
                .into_iter()
                .map(|c| match as_window(c) {
                    Some((time, window_micros)) => {
                        changed = true;
                        marker().call(vec![time, Expr::Literal(ScalarValue::Int64(Some(window_micros)), None)])
                    }
                    None => c.clone(),
                })
                .collect();
            if !changed {
                return Ok(Transformed::no(node));
            }
            let predicate = conjunction(conjuncts).expect("a filter has a predicate");
            let LogicalPlan::Filter(filter) = node else { unreachable!("matched above") };
            Ok(Transformed::yes(LogicalPlan::Filter(datafusion::logical_expr::Filter::try_new(predicate, filter.input)?)))
        })
        .map_err(PlanError::DataFusion)?
        .data;
    let mut stray = false;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if is_now(e) {
                    stray = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })
    .map_err(PlanError::DataFusion)?;
    if stray {
        return Err(PlanError::Unsupported("now() outside a time window (write `WHERE ts > now() - INTERVAL '...'`)".into()));
    }
    Ok(plan)
}

/// Split the time windows out of a (planned) predicate; returns the rest and the windows.
pub fn extract_time_windows(predicate: &Expr) -> (Option<Expr>, Vec<TimeWindow>) {
    let mut rest = Vec::new();
    let mut windows = Vec::new();
    for c in split_conjunction(predicate) {
        match c {
            Expr::ScalarFunction(f) if f.func.name() == MARKER => {
                let window_micros = match &f.args[1] {
                    Expr::Literal(ScalarValue::Int64(Some(w)), _) => *w,
                    _ => unreachable!("the rewrite writes a constant window"),
                };
                windows.push(TimeWindow { time: f.args[0].clone(), window_micros });
            }
            other => rest.push(other.clone()),
        }
    }
    (conjunction(rest), windows)
}

fn is_now(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if matches!(f.func.name(), "now" | "current_timestamp" | "localtimestamp"))
}

/// `ts > now() - I` / `ts >= now() - I` / `now() - I < ts` / `now() - I <= ts`: the time
/// expression and how long a row stays (one microsecond more for the inclusive forms).
fn as_window(e: &Expr) -> Option<(Expr, i64)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else { return None };
    let (time, bound, inclusive) = match op {
        Operator::Gt => (left, right, false),
        Operator::GtEq => (left, right, true),
        Operator::Lt => (right, left, false),
        Operator::LtEq => (right, left, true),
        _ => return None,
    };
    let window = now_minus(bound)?;
    Some((time.as_ref().clone(), window + i64::from(inclusive)))
}

/// `now() - INTERVAL` as the interval in microseconds (`now()` alone is a zero window).
fn now_minus(e: &Expr) -> Option<i64> {
    match e {
        Expr::Cast(c) => now_minus(&c.expr),
        Expr::TryCast(c) => now_minus(&c.expr),
        e if is_now(e) => Some(0),
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Minus, right }) if is_now(left) => interval_micros(right),
        _ => None,
    }
}

fn interval_micros(e: &Expr) -> Option<i64> {
    match e {
        Expr::Cast(c) => interval_micros(&c.expr),
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(i)), _) if i.months == 0 => {
            Some(i.days as i64 * 86_400_000_000 + i.nanoseconds / 1000)
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(i)), _) => Some(i.days as i64 * 86_400_000_000 + i.milliseconds as i64 * 1000),
        // Months have no fixed length.
        _ => None,
    }
}

/// `EMIT ON WINDOW CLOSE` of `aggregate`: the group column that is the window's end
/// (`window_end` of `TUMBLE`/`HOP`) and the tables whose watermarks close it. Every table the
/// aggregate reads needs a watermark: a table without one could change a closed window.
pub fn window_close(
    aggregate: &datafusion::logical_expr::Aggregate,
    catalog: &crate::catalog::Catalog,
) -> Result<(usize, Vec<u32>), PlanError> {
    let groups = aggregate.group_expr.len();
    let end = (0..groups)
        .find(|&i| aggregate.schema.field(i).name() == "window_end")
        .ok_or_else(|| PlanError::Unsupported("EMIT ON WINDOW CLOSE without window_end among the GROUP BY columns".into()))?;
    if !matches!(aggregate.schema.field(end).data_type(), DataType::Timestamp(..)) {
        return Err(PlanError::Unsupported("EMIT ON WINDOW CLOSE over a window_end that is not a timestamp".into()));
    }
    let mut relations = Vec::new();
    let mut missing = None;
    aggregate
        .input
        .apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                let name = scan.table_name.table();
                match catalog.get(name) {
                    Some(r) if r.watermark.is_some() => relations.push(r.id),
                    _ => {
                        missing = Some(name.to_string());
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(PlanError::DataFusion)?;
    if let Some(name) = missing {
        return Err(PlanError::NoWatermark(name));
    }
    relations.sort();
    relations.dedup();
    Ok((end, relations))
}
