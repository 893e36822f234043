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
//! - [`RefuseCorrelatedNotIn`]: `x NOT IN (SELECT y ... WHERE <outer reference>)` is refused
//!   (0A000): DataFusion's null-aware anti join applies the NULL rules to the whole subquery,
//!   not to each row's part of it, and answers too few rows. So is a row `(a, b) [NOT] IN`
//!   whose subquery refers to the enclosing query (DataFusion fails to decorrelate it).
//! - [`InlineCorrelatedDerivedTables`]: in a correlated subquery, a projection over a derived
//!   table or CTE (`(WITH c(m) AS (SELECT max(y) FROM r WHERE r.k = l.k) SELECT m FROM c)`,
//!   `(SELECT 1 FROM (SELECT y AS v FROM r WHERE r.k = l.k) c)`) reads the derived table's
//!   expressions directly. DataFusion's decorrelation loses the columns it pulls up through
//!   the derived table's renaming projection (`No field named c.y`).
//! - [`CheckedIntegerArithmetic`]: integer `+`, `-` and `*` fail with 22003 (`bigint out of
//!   range`) on overflow, as in Postgres; DataFusion's wrap around.
//! - [`TimestampsWithoutSeconds`]: text cast to a timestamp may leave out the seconds
//!   (`'2024-01-02 10:30'::timestamp`, in comparisons and INSERT values too), as Postgres
//!   reads it; Arrow's parser wants them.
//! - [`ByteaLiterals`]: a text literal cast to `bytea` (`'\x0102'::bytea`) is read as Postgres
//!   reads bytea input (`functions::bytea::bytea_input`), not as the text's bytes; 22P02 if
//!   it is not valid bytea input.

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
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    Between, BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// Every rule, in the order they run (after DataFusion's own).
pub fn rules() -> Vec<Arc<dyn AnalyzerRule + Send + Sync>> {
    vec![
        Arc::new(RefuseOuterJoinCorrelation),
        Arc::new(RefuseCorrelatedNotIn),
        Arc::new(InlineCorrelatedDerivedTables),
        Arc::new(CompareIntervals::default()),
        Arc::new(CountedSetOperations),
        Arc::new(CheckedIntegerArithmetic::default()),
        Arc::new(TimestampsWithoutSeconds::default()),
        Arc::new(ByteaLiterals),
    ]
}

/// Reads text literals cast to `bytea` as bytea input.
#[derive(Debug)]
pub struct ByteaLiterals;

impl AnalyzerRule for ByteaLiterals {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        use datafusion::common::ScalarValue;
        use datafusion::logical_expr::Cast;
        rewrite_expressions(plan, |e, _| {
            e.transform_up(|x| {
                let Expr::Cast(Cast { expr, field }) = &x else { return Ok(Transformed::no(x)) };
                if !matches!(field.data_type(), DataType::Binary | DataType::LargeBinary | DataType::BinaryView) {
                    return Ok(Transformed::no(x));
                }
                let text = match expr.as_ref() {
                    Expr::Literal(ScalarValue::Utf8(Some(t)) | ScalarValue::LargeUtf8(Some(t)) | ScalarValue::Utf8View(Some(t)), _) => t,
                    _ => return Ok(Transformed::no(x)),
                };
                match crate::functions::bytea::bytea_input(text) {
                    Some(bytes) => Ok(Transformed::yes(Expr::Literal(ScalarValue::Binary(Some(bytes)).cast_to(field.data_type())?, None))),
                    None => Err(arrow::error::ArrowError::CastError(format!("invalid input syntax for type bytea: \"{text}\"")).into()),
                }
            })
        })
    }

    fn name(&self) -> &str {
        "velocity_bytea_literals"
    }
}

/// Wraps the text of a cast to a timestamp in [`TimestampText`], which adds the seconds a
/// `YYYY-MM-DD HH:MI` text leaves out. A literal is folded to its timestamp by the optimizer.
#[derive(Debug)]
pub struct TimestampsWithoutSeconds {
    text: Arc<ScalarUDF>,
}

impl Default for TimestampsWithoutSeconds {
    fn default() -> Self {
        TimestampsWithoutSeconds { text: Arc::new(ScalarUDF::from(TimestampText { signature: Signature::any(1, Volatility::Immutable) })) }
    }
}

impl AnalyzerRule for TimestampsWithoutSeconds {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        use datafusion::logical_expr::{Cast, TryCast};
        let is_text = |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
        let wrapped = |e: &Expr| matches!(e, Expr::ScalarFunction(f) if f.func.name() == TEXT_NAME);
        rewrite_expressions(plan, |e, schema| {
            e.transform_up(|x| match x {
                Expr::Cast(Cast { expr, field })
                    if matches!(field.data_type(), DataType::Timestamp(..)) && !wrapped(&expr) && is_text(&expr.get_type(schema)?) =>
                {
                    Ok(Transformed::yes(Expr::Cast(Cast::new_from_field(Box::new(self.text.call(vec![*expr])), field))))
                }
                Expr::TryCast(TryCast { expr, field })
                    if matches!(field.data_type(), DataType::Timestamp(..)) && !wrapped(&expr) && is_text(&expr.get_type(schema)?) =>
                {
                    Ok(Transformed::yes(Expr::TryCast(TryCast::new_from_field(Box::new(self.text.call(vec![*expr])), field))))
                }
                other => Ok(Transformed::no(other)),
            })
        })
    }

    fn name(&self) -> &str {
        "velocity_timestamps_without_seconds"
    }
}

const TEXT_NAME: &str = "velocity_timestamp_text";

/// `velocity_timestamp_text(text)`: a `YYYY-MM-DD HH:MI[...]` text with `:00` seconds added
/// (and a one-digit hour padded); any other text as it is.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TimestampText {
    signature: Signature,
}

impl ScalarUDFImpl for TimestampText {
    fn name(&self) -> &str {
        TEXT_NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::common::ScalarValue;
        match &args.args[0] {
            ColumnarValue::Scalar(v) => {
                let text = match v {
                    ScalarValue::Utf8(t) | ScalarValue::LargeUtf8(t) | ScalarValue::Utf8View(t) => t.as_deref(),
                    _ => return Ok(args.args[0].clone()),
                };
                let fixed = text.map(|t| with_seconds(t).unwrap_or_else(|| t.to_string()));
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(fixed).cast_to(&v.data_type())?))
            }
            ColumnarValue::Array(a) => {
                let text = arrow::compute::cast(a, &DataType::Utf8)?;
                let fixed: arrow::array::StringArray =
                    text.as_string::<i32>().iter().map(|t| t.map(|t| with_seconds(t).unwrap_or_else(|| t.to_string()))).collect();
                Ok(ColumnarValue::Array(arrow::compute::cast(&fixed, a.data_type())?))
            }
        }
    }
}

/// `2024-01-02 10:30[rest]` as `2024-01-02 10:30:00[rest]`; None if the text has seconds or
/// is not a date and time.
fn with_seconds(text: &str) -> Option<String> {
    let t = text.trim();
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r.clone()).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let date = digits(0..4) && b.get(4) == Some(&b'-') && digits(5..7) && b.get(7) == Some(&b'-') && digits(8..10);
    if !date || !matches!(b.get(10), Some(b' ' | b'T' | b't')) {
        return None;
    }
    let hour_len = if digits(11..13) {
        2
    } else if digits(11..12) {
        1
    } else {
        return None;
    };
    let minute = 11 + hour_len + 1;
    if b.get(11 + hour_len) != Some(&b':')
        || !digits(minute..minute + 2)
        || b.get(minute + 2).is_some_and(|c| *c == b':' || c.is_ascii_digit())
    {
        return None;
    }
    let rest = &t[minute + 2..];
    Some(format!("{} {:0>2}:{}:00{rest}", &t[..10], &t[11..11 + hour_len], &t[minute..minute + 2]))
}

/// Rewrites integer `a + b`, `a - b` and `a * b` into [`CheckedArithmetic`] calls.
#[derive(Debug)]
pub struct CheckedIntegerArithmetic {
    plus: Arc<ScalarUDF>,
    minus: Arc<ScalarUDF>,
    multiply: Arc<ScalarUDF>,
}

impl Default for CheckedIntegerArithmetic {
    fn default() -> Self {
        let udf = |op| Arc::new(ScalarUDF::from(CheckedArithmetic::new(op)));
        CheckedIntegerArithmetic { plus: udf(Operator::Plus), minus: udf(Operator::Minus), multiply: udf(Operator::Multiply) }
    }
}

impl CheckedIntegerArithmetic {
    /// Rewrites the integer arithmetic in `e`, in one bottom-up pass: the type of each
    /// arithmetic node is computed from its children's types as they are rewritten (a stack of
    /// the types known so far), so no subtree is typed twice. Typing each node from scratch
    /// costs time quadratic in the depth (cubic with the names DataFusion builds per level):
    /// minutes for a 2,000-term `1+1+...`.
    fn rewrite_expr(&self, e: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
        // One entry per visited node: its type where it came cheap, else `None` (typed on
        // demand, only where an arithmetic parent needs it).
        let mut types: Vec<Option<DataType>> = Vec::new();
        e.transform_up(|node| {
            let mut children = 0;
            node.apply_children(|_| {
                children += 1;
                Ok(TreeNodeRecursion::Continue)
            })?;
            let known: Vec<Option<DataType>> = types.split_off(types.len().saturating_sub(children));
            let (node, t) = self.rewrite_node(node, known, schema)?;
            types.push(t);
            Ok(node)
        })
    }

    /// Rewrite one node whose children are rewritten already (`known`: their types, where
    /// known); returns it with its own type where cheap.
    fn rewrite_node(&self, e: Expr, known: Vec<Option<DataType>>, schema: &DFSchema) -> Result<(Transformed<Expr>, Option<DataType>)> {
        let typed = |child: &Expr, t: Option<DataType>| -> Result<DataType> { t.map_or_else(|| child.get_type(schema), Ok) };
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) if known.len() == 2 => {
                let mut known = known.into_iter();
                let (lt, rt) = (known.next().flatten(), known.next().flatten());
                let udf = match op {
                    Operator::Plus => &self.plus,
                    Operator::Minus => &self.minus,
                    Operator::Multiply => &self.multiply,
                    _ => return Ok((Transformed::no(Expr::BinaryExpr(BinaryExpr { left, op, right })), None)),
                };
                let (lt, rt) = (typed(&left, lt)?, typed(&right, rt)?);
                if lt.is_integer() && lt == rt {
                    return Ok((Transformed::yes(udf.call(vec![*left, *right])), Some(lt)));
                }
                let t = BinaryTypeCoercer::new(&lt, &op, &rt).get_result_type().ok();
                Ok((Transformed::no(Expr::BinaryExpr(BinaryExpr { left, op, right })), t))
            }
            Expr::Negative(_) | Expr::Alias(_) if known.len() == 1 => {
                let t = known.into_iter().next().flatten();
                Ok((Transformed::no(e), t))
            }
            Expr::Column(_) | Expr::Literal(..) | Expr::Cast(_) | Expr::TryCast(_) => {
                let t = e.get_type(schema).ok();
                Ok((Transformed::no(e), t))
            }
            _ => Ok((Transformed::no(e), None)),
        }
    }
}

/// Rewrite every expression of every node (subqueries included), each against its node's
/// input schema, keeping the names the expressions had. Table scans are left alone: their
/// pushed-down filters are added by the optimizer, after the analyzer.
fn rewrite_expressions(plan: LogicalPlan, rewrite: impl Fn(Expr, &DFSchema) -> Result<Transformed<Expr>>) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        if matches!(node, LogicalPlan::TableScan(_)) {
            return Ok(Transformed::no(node));
        }
        let schema = merge_schema(&node.inputs());
        let names = NamePreserver::new(&node);
        node.map_expressions(|e| {
            let saved = names.save(&e);
            Ok(rewrite(e, &schema)?.update_data(|x| saved.restore(x)))
        })
    })
    .map(|t| t.data)
}

impl AnalyzerRule for CheckedIntegerArithmetic {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        rewrite_expressions(plan, |e, schema| self.rewrite_expr(e, schema))
    }

    fn name(&self) -> &str {
        "velocity_checked_integer_arithmetic"
    }
}

/// `a + b`, `a - b` or `a * b` of two integers of one type, failing with Postgres' 22003
/// message where the result does not fit the type.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CheckedArithmetic {
    op: Operator,
    name: String,
    signature: Signature,
}

impl CheckedArithmetic {
    fn new(op: Operator) -> Self {
        let name = format!("velocity_checked_{}", format!("{op:?}").to_ascii_lowercase());
        CheckedArithmetic { op, name, signature: Signature::any(2, Volatility::Immutable) }
    }
}

/// Postgres' name of an integer type, for its out-of-range message.
fn integer_type_name(t: &DataType) -> &'static str {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        _ => "bigint",
    }
}

impl ScalarUDFImpl for CheckedArithmetic {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(args[0].clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use arrow::compute::kernels::numeric;
        let scalars = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let (l, r) = (&arrays[0], &arrays[1]);
        let result = match self.op {
            Operator::Plus => numeric::add(l, r),
            Operator::Minus => numeric::sub(l, r),
            _ => numeric::mul(l, r),
        };
        let result = result.map_err(|e| match e {
            arrow::error::ArrowError::ArithmeticOverflow(_) => {
                arrow::error::ArrowError::ArithmeticOverflow(format!("{} out of range", integer_type_name(l.data_type())))
            }
            other => other,
        })?;
        if scalars {
            return Ok(ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&result, 0)?));
        }
        Ok(ColumnarValue::Array(result))
    }
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

/// Refuses a `NOT IN` whose subquery reads the enclosing query (see the module documentation),
/// and a row `[NOT] IN` whose subquery does.
#[derive(Debug)]
pub struct RefuseCorrelatedNotIn;

impl AnalyzerRule for RefuseCorrelatedNotIn {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        let correlated_not_in = |e: &Expr| {
            let mut found = false;
            e.apply(|sub| {
                let in_subquery = match sub {
                    Expr::InSubquery(i) if i.negated => Some(i),
                    Expr::Not(inner) => match inner.as_ref() {
                        Expr::InSubquery(i) if !i.negated => Some(i),
                        _ => None,
                    },
                    _ => None,
                };
                if in_subquery.is_some_and(|i| !i.subquery.outer_ref_columns.is_empty()) {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .map(|_| found)
        };
        let mut found = false;
        let mut row = false;
        plan.apply_with_subqueries(|node| {
            // `(a, b) [NOT] IN (SELECT ...)`, rewritten by `sql::row_in_subquery`.
            if let LogicalPlan::SubqueryAlias(a) = node
                && a.alias.table() == crate::sql::row_in_subquery::ALIAS
                && reads_outer_query(&a.input)?
            {
                row = true;
                return Ok(TreeNodeRecursion::Stop);
            }
            for e in node.expressions() {
                if correlated_not_in(&e)? {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if row {
            return not_impl_err!("(a, b) [NOT] IN (subquery) whose subquery refers to a column of the enclosing query");
        }
        if found {
            return not_impl_err!("NOT IN (subquery) whose subquery refers to a column of the enclosing query");
        }
        Ok(plan)
    }

    fn name(&self) -> &str {
        "velocity_refuse_correlated_not_in"
    }
}

/// Rewrites `Projection(P)` over `SubqueryAlias(c, Projection(Q) over X)`, where `X` reads
/// the enclosing query, into `Projection(P with c's columns replaced by Q's expressions)`
/// over `X`, with P's output names (see the module documentation).
#[derive(Debug)]
pub struct InlineCorrelatedDerivedTables;

impl AnalyzerRule for InlineCorrelatedDerivedTables {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        use datafusion::logical_expr::Projection;
        plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::Projection(outer) = &node else { return Ok(Transformed::no(node)) };
            let LogicalPlan::SubqueryAlias(alias) = outer.input.as_ref() else { return Ok(Transformed::no(node)) };
            let LogicalPlan::Projection(inner) = alias.input.as_ref() else { return Ok(Transformed::no(node)) };
            if inner.expr.iter().any(Expr::is_volatile) || !reads_outer_query(&inner.input)? {
                return Ok(Transformed::no(node));
            }
            let mut exprs = Vec::with_capacity(outer.expr.len());
            for (i, e) in outer.expr.iter().enumerate() {
                let replaced = e.clone().transform_up(|sub| {
                    let Expr::Column(c) = &sub else { return Ok(Transformed::no(sub)) };
                    match alias.schema.maybe_index_of_column(c) {
                        Some(k) => Ok(Transformed::yes(inner.expr[k].clone().unalias())),
                        None => Ok(Transformed::no(sub)),
                    }
                })?;
                let (qualifier, field) = outer.schema.qualified_field(i);
                exprs.push(replaced.data.unalias().alias_qualified(qualifier.cloned(), field.name()));
            }
            let projection = Projection::try_new(exprs, inner.input.clone())?;
            if projection.schema.as_ref() != outer.schema.as_ref() {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(LogicalPlan::Projection(projection)))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "velocity_inline_correlated_derived_tables"
    }
}

/// Whether `plan` refers to a column of an enclosing query.
fn reads_outer_query(plan: &LogicalPlan) -> Result<bool> {
    let mut found = false;
    plan.apply(|node| {
        if node.expressions().iter().any(Expr::contains_outer) {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(found)
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
        rewrite_expressions(plan, |e, schema| e.transform_up(|x| self.rewrite(x, schema)))
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
mod timestamp_tests {
    use super::with_seconds;

    #[test]
    fn adds_the_seconds_postgres_leaves_implied() {
        assert_eq!(with_seconds("2024-01-02 10:30").as_deref(), Some("2024-01-02 10:30:00"));
        assert_eq!(with_seconds(" 2024-01-02T9:05+02 ").as_deref(), Some("2024-01-02 09:05:00+02"));
        assert_eq!(with_seconds("2024-01-02 10:30:15"), None);
        assert_eq!(with_seconds("2024-01-02"), None);
        assert_eq!(with_seconds("10:30"), None);
    }
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
