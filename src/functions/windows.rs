//! Window table functions, in the form Flink and RisingWave share:
//! `TUMBLE(t, ts, size)` and `HOP(t, ts, slide, size)` give every row of `t` the columns
//! `window_start` and `window_end` of each window its `ts` falls in; `SESSION(t, ts, gap,
//! key...)` those of its session (see [`SessionWindow`]).
//!
//! Each call is a view over `t`: a projection (TUMBLE) or a union of `size / slide`
//! projections (HOP), windows aligned to the Unix epoch as `date_bin` aligns them. DataFusion
//! inlines it where the call is planned, so an ad hoc query runs it directly and a
//! materialized view maintains it incrementally like any projection and union.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::datatypes::{IntervalMonthDayNano, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl};
use datafusion::common::{ScalarValue, plan_datafusion_err, plan_err};
use datafusion::datasource::{TableProvider, TableType, provider_as_source};
use datafusion::error::Result;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, col, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

/// Register `tumble`, `hop` and `session`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udtf("tumble", Arc::new(WindowFunction { hop: false }));
    ctx.register_udtf("hop", Arc::new(WindowFunction { hop: true }));
    ctx.register_udtf("session", Arc::new(SessionWindow));
}

/// `SESSION(t, ts, gap [, key, ...])`: every row of `t` with the `window_start` and
/// `window_end` of its session: per key, the rows whose times are less than `gap` apart, one
/// after the other; `window_start` is the session's first time, `window_end` its last plus
/// `gap` (as Flink's session windows). Rows with a NULL time or key are in no session.
///
/// Written as a query over `t` that Velocity maintains like any other (so sessions merge
/// and split as rows come and go): a session starts at a row with no other row of its key in
/// the `gap` before it and ends at one with none in the `gap` after it; each session is its
/// start with the first end at or after it, and each row joins the session whose span holds
/// its time.
#[derive(Debug)]
struct SessionWindow;

impl TableFunctionImpl for SessionWindow {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let usage = "SESSION(table, time_column, gap [, key_column, ...])";
        let exprs = args.exprs();
        if exprs.len() < 3 {
            return plan_err!("SESSION() expects {usage}");
        }
        let names: Option<Vec<String>> = exprs.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, e)| name_arg(e)).collect();
        let Some(names) = names else { return plan_err!("SESSION() expects {usage}") };
        let (table, time, keys) = (&names[0], &names[1], &names[2..]);
        let (_, gap_nanos) = length_arg("SESSION", exprs.get(2))?;
        let state = args.session().as_any().downcast_ref::<SessionState>().ok_or_else(|| plan_datafusion_err!("SESSION(): no session"))?;
        let source = lookup(state, table)?;
        let schema = source.schema();
        for column in std::iter::once(time).chain(keys) {
            if schema.field_with_name(column).is_err() {
                return plan_err!("SESSION({table}, ...): no column named \"{column}\"");
            }
        }
        if schema.fields().iter().any(|f| f.name() == "window_start" || f.name() == "window_end") {
            return plan_err!("SESSION({table}, ...): the table has a column named window_start or window_end already");
        }
        let q = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
        let gap = format!("INTERVAL '{} microseconds'", gap_nanos / 1000);
        let same_key = |a: &str, b: &str| keys.iter().map(|k| format!(" AND {a}.{k} = {b}.{k}", k = q(k))).collect::<String>();
        let key_list = |alias: &str| keys.iter().map(|k| format!("{alias}.{}, ", q(k))).collect::<String>();
        let (t, ts) = (q(table), q(time));
        let sql = format!(
            "WITH starts AS (SELECT {xk}x.{ts} AS s FROM {t} x WHERE x.{ts} IS NOT NULL AND NOT EXISTS \
                (SELECT 1 FROM {t} y WHERE y.{ts} < x.{ts} AND y.{ts} > x.{ts} - {gap}{xy})), \
             ends AS (SELECT {xk}x.{ts} AS e FROM {t} x WHERE x.{ts} IS NOT NULL AND NOT EXISTS \
                (SELECT 1 FROM {t} y WHERE y.{ts} > x.{ts} AND y.{ts} < x.{ts} + {gap}{xy})), \
             sessions AS (SELECT {sk}st.s, min(en.e) AS e FROM starts st JOIN ends en ON en.e >= st.s{se} GROUP BY {sk}st.s) \
             SELECT r.*, ss.s AS window_start, ss.e + {gap} AS window_end \
             FROM {t} r JOIN sessions ss ON ss.s <= r.{ts} AND r.{ts} <= ss.e{rs}",
            xk = key_list("x"),
            sk = key_list("st"),
            xy = same_key("y", "x"),
            se = same_key("en", "st"),
            rs = same_key("ss", "r"),
        );
        let statement = state.sql_to_statement(&sql, &datafusion::config::Dialect::PostgreSQL)?;
        // In-memory schemas answer at once: nothing here waits.
        let plan = futures::executor::block_on(state.statement_to_plan(statement))?;
        Ok(Arc::new(WindowTable { schema: Arc::new(plan.schema().as_arrow().clone()), plan }))
    }
}

#[derive(Debug)]
struct WindowFunction {
    hop: bool,
}

impl WindowFunction {
    fn name(&self) -> &'static str {
        if self.hop { "HOP" } else { "TUMBLE" }
    }
}

/// A name passed as a string (the server quotes bare names: `TUMBLE(bid, ...)`).
fn name_arg(e: &Expr) -> Option<String> {
    match e {
        Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => Some(s.clone()),
        Expr::Column(c) => Some(c.name.clone()),
        _ => None,
    }
}

/// A window length: a positive interval of days and smaller units (a month has no fixed
/// length), in nanoseconds.
fn length_arg(function: &str, e: Option<&Expr>) -> Result<(ScalarValue, i128)> {
    let nanos = match e {
        Some(Expr::Literal(v @ ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano { months: 0, days, nanoseconds })), _)) => {
            Some((v.clone(), *days as i128 * 86_400_000_000_000 + *nanoseconds as i128))
        }
        Some(Expr::Literal(v @ ScalarValue::IntervalDayTime(Some(d)), _)) => {
            Some((v.clone(), d.days as i128 * 86_400_000_000_000 + d.milliseconds as i128 * 1_000_000))
        }
        _ => None,
    };
    match nanos {
        Some((v, n)) if n > 0 => Ok((v, n)),
        _ => plan_err!("{function}() takes window lengths as positive intervals without months, e.g. INTERVAL '10' SECOND"),
    }
}

impl TableFunctionImpl for WindowFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let name = self.name();
        let exprs = args.exprs();
        let usage = if self.hop { "HOP(table, time_column, slide, size)" } else { "TUMBLE(table, time_column, size)" };
        if exprs.len() != if self.hop { 4 } else { 3 } {
            return plan_err!("{name}() expects {usage}");
        }
        let (Some(table), Some(time)) = (name_arg(&exprs[0]), name_arg(&exprs[1])) else {
            return plan_err!("{name}() expects {usage}");
        };
        let (slide, slide_nanos) = length_arg(name, exprs.get(2))?;
        let (size, size_nanos) = if self.hop { length_arg(name, exprs.get(3))? } else { (slide.clone(), slide_nanos) };
        if size_nanos % slide_nanos != 0 {
            return plan_err!("{name}(): the window size must be a whole multiple of the slide");
        }
        let state = args.session().as_any().downcast_ref::<SessionState>().ok_or_else(|| plan_datafusion_err!("{name}(): no session"))?;
        let source = lookup(state, &table)?;
        let base = LogicalPlanBuilder::scan(table.as_str(), provider_as_source(source), None)?.build()?;
        if base.schema().field_with_unqualified_name(&time).is_err() {
            return plan_err!("{name}({table}, ...): no column named \"{time}\"");
        }
        // A row is in the `size / slide` windows that start at its slide-aligned start and at
        // the slides before it.
        let date_bin = datafusion::functions::datetime::date_bin();
        let mut plan: Option<LogicalPlanBuilder> = None;
        for back in 0..(size_nanos / slide_nanos) as i64 {
            let bin = date_bin.call(vec![lit(slide.clone()), col(time.as_str())]);
            let start = if back == 0 { bin } else { bin - lit(interval_times(&slide, back)) };
            let mut columns: Vec<Expr> = base.schema().columns().into_iter().map(Expr::Column).collect();
            columns.push(start.clone().alias("window_start"));
            columns.push((start + lit(size.clone())).alias("window_end"));
            let windows = LogicalPlanBuilder::from(base.clone()).project(columns)?;
            plan = Some(match plan {
                None => windows,
                Some(p) => p.union(windows.build()?)?,
            });
        }
        let plan = plan.expect("at least one window").build()?;
        Ok(Arc::new(WindowTable { schema: Arc::new(plan.schema().as_arrow().clone()), plan }))
    }
}

/// `interval * n`, for an interval of days and nanoseconds.
fn interval_times(interval: &ScalarValue, n: i64) -> ScalarValue {
    match interval {
        ScalarValue::IntervalMonthDayNano(Some(v)) => ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano {
            months: 0,
            days: v.days * n as i32,
            nanoseconds: v.nanoseconds * n,
        })),
        ScalarValue::IntervalDayTime(Some(v)) => ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano {
            months: 0,
            days: v.days * n as i32,
            nanoseconds: v.milliseconds as i64 * 1_000_000 * n,
        })),
        other => other.clone(),
    }
}

/// The table a window function reads, from the session's default schema.
fn lookup(state: &SessionState, table: &str) -> Result<Arc<dyn TableProvider>> {
    let options = &state.config().options().catalog;
    let schema = state
        .catalog_list()
        .catalog(&options.default_catalog)
        .and_then(|c| c.schema(&options.default_schema))
        .ok_or_else(|| plan_datafusion_err!("no default schema"))?;
    // In-memory schemas answer at once: nothing here waits.
    futures::executor::block_on(schema.table(table))?.ok_or_else(|| plan_datafusion_err!("table \"{table}\" not found"))
}

/// A window function's rows: a view, inlined wherever it is planned.
#[derive(Debug)]
struct WindowTable {
    plan: LogicalPlan,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for WindowTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        Some(Cow::Borrowed(&self.plan))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = match projection {
            Some(p) => LogicalPlanBuilder::from(self.plan.clone()).select(p.iter().copied())?.build()?,
            None => self.plan.clone(),
        };
        state.create_physical_plan(&plan).await
    }
}
