//! Analyzer rules that make DataFusion's plans answer as Postgres does. They run on every
//! plan of the session, after type coercion: ad hoc queries and materialized views alike.
//!
//! - [`DecorrelateOuterJoinConditions`]: a subquery whose outer join condition reads a column
//!   of the enclosing query (`EXISTS (SELECT 1 FROM x LEFT JOIN y ON o.a = y.b)`) reads a
//!   DISTINCT domain of those values instead, joined to the outer join's preserved side, and
//!   is correlated on the domain in a filter above the join. DataFusion's decorrelation would
//!   pull the condition itself above the outer join, which changes its meaning (too few rows).
//! - [`RefuseOuterJoinCorrelation`]: such a subquery that the rule before could not rewrite is
//!   refused (0A000).
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

use std::collections::HashSet;
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
        Arc::new(DecorrelateOuterJoinConditions),
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

/// Rewrites each outer join in a subquery whose condition reads the enclosing query, where
/// a filter above the join is decorrelated correctly ([`PullUp`]): `x LEFT JOIN y ON c(o.a)`
/// becomes
///
/// ```text
/// SELECT <x's and y's columns>
/// FROM (x CROSS JOIN (SELECT DISTINCT o.a AS value_0 FROM o) AS __velocity_domain)
///      LEFT JOIN y ON c(__velocity_domain.value_0)
/// WHERE __velocity_domain.value_0 IS NOT DISTINCT FROM o.a   -- spelled as two equalities
/// ```
///
/// For an outer row, the rows of its value are the outer join it asked for: the domain is
/// on the preserved side (both sides of a FULL join, which then match only within one
/// value), so no row is NULL-extended away from its value. The correlation left is a plain
/// filter, which DataFusion pulls up into the join with the enclosing query.
#[derive(Debug)]
pub struct DecorrelateOuterJoinConditions;

const DOMAIN: &str = "__velocity_domain";
const RIGHT_DOMAIN: &str = "__velocity_right_domain";

impl AnalyzerRule for DecorrelateOuterJoinConditions {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        use datafusion::logical_expr::expr::{Exists, InSubquery};
        plan.transform_up_with_subqueries(|node| {
            // The subqueries' outer references are columns of this one input.
            let outer = match &node {
                LogicalPlan::Filter(f) => f.input.clone(),
                LogicalPlan::Projection(p) => p.input.clone(),
                _ => return Ok(Transformed::no(node)),
            };
            if !has_subqueries(&node)? || reads_outer_query(&outer)? {
                return Ok(Transformed::no(node));
            }
            node.map_expressions(|e| {
                e.transform_up(|x| match x {
                    Expr::Exists(Exists { subquery, negated }) => Ok(decorrelate_subquery(subquery, &outer, PullUp::Rows)?
                        .update_data(|subquery| Expr::Exists(Exists { subquery, negated }))),
                    Expr::InSubquery(InSubquery { expr, subquery, negated }) => Ok(decorrelate_subquery(subquery, &outer, PullUp::Rows)?
                        .update_data(|subquery| Expr::InSubquery(InSubquery { expr, subquery, negated }))),
                    Expr::ScalarSubquery(subquery) => {
                        Ok(decorrelate_subquery(subquery, &outer, PullUp::ScalarTop)?.update_data(Expr::ScalarSubquery))
                    }
                    other => Ok(Transformed::no(other)),
                })
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "velocity_decorrelate_outer_join_conditions"
    }
}

/// Whether DataFusion decorrelates a filter at a node of a subquery correctly: it pulls the
/// filter up to the subquery's root, through projections, filters, inner joins, the preserved
/// side of outer joins and aggregates (adding the filter's columns to the grouping).
#[derive(Debug, Clone, Copy, PartialEq)]
enum PullUp {
    /// Not past this node: a filter would leave the NULL-extended side of an outer join, or a
    /// node DataFusion does not pull through (limits, windows, unions, ...).
    Blocked,
    /// Through grouped aggregates: a domain value without rows has no group, as it has none
    /// in the original subquery.
    Rows,
    /// Through an aggregate without GROUP BY too: the top of a scalar subquery, whose
    /// decorrelation gives an outer row without a group the aggregate of no rows (count 0).
    ScalarTop,
}

impl PullUp {
    /// How a filter in each input of `node` is pulled up to the subquery's root, given how a
    /// filter at `node` is.
    fn inputs(self, node: &LogicalPlan) -> Vec<PullUp> {
        use PullUp::*;
        let rows = if self == Blocked { Blocked } else { Rows };
        match node {
            // A subquery of its own would be decorrelated first, around the filter.
            _ if self == Blocked || has_subqueries(node).unwrap_or(true) => vec![Blocked; node.inputs().len()],
            LogicalPlan::Projection(_) => vec![self],
            LogicalPlan::Filter(_) => vec![rows],
            // DataFusion loses the pulled-up columns at a derived table's alias (`No field named
            // x.__velocity_domain_key_0`).
            LogicalPlan::SubqueryAlias(_) => vec![Blocked],
            LogicalPlan::Aggregate(a) if a.group_expr.is_empty() && self != ScalarTop => vec![Blocked],
            LogicalPlan::Aggregate(_) => vec![rows],
            LogicalPlan::Join(j) => match j.join_type {
                JoinType::Inner => vec![rows, rows],
                JoinType::Left => vec![rows, Blocked],
                JoinType::Right => vec![Blocked, rows],
                _ => vec![Blocked, Blocked],
            },
            _ => vec![Blocked; node.inputs().len()],
        }
    }
}

/// `subquery` with [`decorrelate_outer_joins`] applied to its plan; first, for a subquery that
/// asks only whether rows exist (EXISTS, IN: `PullUp::Rows` at its root), with
/// [`drop_unread_outer_join_sides`], which needs no domain.
fn decorrelate_subquery(
    subquery: datafusion::logical_expr::Subquery,
    outer: &Arc<LogicalPlan>,
    pull_up: PullUp,
) -> Result<Transformed<datafusion::logical_expr::Subquery>> {
    let plan = Arc::unwrap_or_clone(subquery.subquery.clone());
    let plan = if pull_up == PullUp::Rows { drop_unread_outer_join_sides(plan, &HashSet::new())? } else { Transformed::no(plan) };
    Ok(plan
        .transform_data(|plan| decorrelate_outer_joins(plan, outer, pull_up))?
        .update_data(|plan| datafusion::logical_expr::Subquery { subquery: Arc::new(plan), ..subquery }))
}

/// In a subquery that asks only whether rows exist, `x LEFT JOIN y ON c(o.a)` where nothing
/// above reads a column of y is x with NULLs for y's columns: every x row stays, once or
/// more, whatever c says (likewise y in `x RIGHT JOIN y`). `read_above` holds the names of
/// the columns the nodes above `plan` read; the search goes down through the nodes that keep
/// whether a row exists (not aggregates, which count).
fn drop_unread_outer_join_sides(plan: LogicalPlan, read_above: &HashSet<String>) -> Result<Transformed<LogicalPlan>> {
    use datafusion::common::ScalarValue;
    if let LogicalPlan::Join(join) = &plan
        && condition_reads_outer_query(join)
    {
        let left_width = join.left.schema().fields().len();
        let (kept, dropped) = match join.join_type {
            JoinType::Left => (0..left_width, &join.right),
            JoinType::Right => (left_width..join.schema.fields().len(), &join.left),
            _ => return Ok(Transformed::no(plan)),
        };
        if dropped.schema().fields().iter().any(|f| read_above.contains(f.name())) {
            return Ok(Transformed::no(plan));
        }
        let mut columns = Vec::with_capacity(join.schema.fields().len());
        for (i, (qualifier, field)) in join.schema.iter().enumerate() {
            columns.push(if kept.contains(&i) {
                Expr::Column(datafusion::common::Column::new(qualifier.cloned(), field.name()))
            } else {
                Expr::Literal(ScalarValue::try_from(field.data_type())?, None).alias_qualified(qualifier.cloned(), field.name())
            });
        }
        let preserved = if kept.start == 0 { join.left.clone() } else { join.right.clone() };
        let alone = LogicalPlan::Projection(datafusion::logical_expr::Projection::try_new(columns, preserved)?);
        if !alone.schema().logically_equivalent_names_and_types(&join.schema) {
            return Ok(Transformed::no(plan));
        }
        return Ok(Transformed::yes(alone));
    }
    let descend: Vec<bool> = match &plan {
        // A subquery of its own may read y's columns as outer references.
        _ if has_subqueries(&plan)? => return Ok(Transformed::no(plan)),
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) | LogicalPlan::Distinct(_) => vec![true],
        LogicalPlan::Join(j) => {
            vec![matches!(j.join_type, JoinType::Inner | JoinType::Left), matches!(j.join_type, JoinType::Inner | JoinType::Right)]
        }
        _ => return Ok(Transformed::no(plan)),
    };
    let mut read = read_above.clone();
    for e in plan.expressions() {
        read.extend(e.column_refs().into_iter().map(|c| c.name.clone()));
    }
    let mut descend = descend.into_iter();
    let plan = plan.map_children(|child| {
        if descend.next().unwrap_or(false) { drop_unread_outer_join_sides(child, &read) } else { Ok(Transformed::no(child)) }
    })?;
    if plan.transformed { plan.map_data(LogicalPlan::recompute_schema) } else { Ok(plan) }
}

/// `plan` (a subquery's, or one of its nodes at `pull_up`) with every outer join whose
/// condition reads `outer` rewritten by [`read_domain_in_outer_join`] where the correlation
/// filter it adds is pulled up correctly. Nested subqueries are left to their own pass.
fn decorrelate_outer_joins(plan: LogicalPlan, outer: &Arc<LogicalPlan>, pull_up: PullUp) -> Result<Transformed<LogicalPlan>> {
    if pull_up == PullUp::Blocked {
        return Ok(Transformed::no(plan));
    }
    let mut inputs = pull_up.inputs(&plan).into_iter();
    let plan = plan.map_children(|child| decorrelate_outer_joins(child, outer, inputs.next().unwrap_or(PullUp::Blocked)))?;
    // The rewritten inputs have the columns they had; the node's schema is rebuilt all the same.
    let plan = if plan.transformed { plan.map_data(LogicalPlan::recompute_schema)? } else { plan };
    plan.transform_data(|node| {
        let LogicalPlan::Join(join) = &node else { return Ok(Transformed::no(node)) };
        match read_domain_in_outer_join(join, outer)? {
            Some(rewritten) => Ok(Transformed::yes(rewritten)),
            None => Ok(Transformed::no(node)),
        }
    })
}

/// The outer join `join`, whose condition reads `outer` (the enclosing query's input), as
/// [`DecorrelateOuterJoinConditions`] rewrites it, with `join`'s columns; None if it is not
/// such a join or does not fit the rewrite.
fn read_domain_in_outer_join(join: &datafusion::logical_expr::Join, outer: &Arc<LogicalPlan>) -> Result<Option<LogicalPlan>> {
    use datafusion::common::{Column, NullEquality, ScalarValue};
    use datafusion::functions::core::expr_fn::coalesce;
    use datafusion::logical_expr::utils::conjunction;
    use datafusion::logical_expr::{LogicalPlanBuilder, binary_expr, lit};
    if !matches!(join.join_type, JoinType::Left | JoinType::Right | JoinType::Full) || join.null_equality != NullEquality::NullEqualsNothing
    {
        return Ok(None);
    }
    let equalities = join.on.iter().map(|(l, r)| l.clone().eq(r.clone()));
    let Some(condition) = conjunction(equalities.chain(join.filter.clone())) else { return Ok(None) };
    // Each outer column the condition reads, once, with its field.
    let mut references = Vec::new();
    condition.apply(|e| {
        if let Expr::OuterReferenceColumn(field, column) = e
            && !references.iter().any(|(_, c)| c == column)
        {
            references.push((field.clone(), column.clone()));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if references.is_empty() || !references.iter().all(|(_, c)| outer.schema().has_column(c)) {
        return Ok(None);
    }
    let value = |domain: &str, i: usize| Expr::Column(Column::new(Some(domain), format!("value_{i}")));
    let domain = |alias: &str| {
        let values = references.iter().enumerate().map(|(i, (_, c))| Expr::Column(c.clone()).alias(format!("value_{i}")));
        LogicalPlanBuilder::from(outer.clone()).project(values)?.distinct()?.alias(alias)?.build()
    };
    let condition = condition
        .transform_up(|e| match e {
            Expr::OuterReferenceColumn(_, column) => {
                let i = references.iter().position(|(_, c)| *c == column).expect("collected above");
                Ok(Transformed::yes(value(DOMAIN, i)))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data;
    let (left, right) = (LogicalPlanBuilder::from(join.left.clone()), LogicalPlanBuilder::from(join.right.clone()));
    let joined = match join.join_type {
        JoinType::Left => left.cross_join(domain(DOMAIN)?)?.join_on(right.build()?, JoinType::Left, [condition])?,
        JoinType::Right => left.join_on(right.cross_join(domain(DOMAIN)?)?.build()?, JoinType::Right, [condition])?,
        _ => {
            // Both sides carry the domain and match only within one value.
            let same_value =
                (0..references.len()).map(|i| binary_expr(value(DOMAIN, i), Operator::IsNotDistinctFrom, value(RIGHT_DOMAIN, i)));
            let right = right.cross_join(domain(RIGHT_DOMAIN)?)?.build()?;
            left.cross_join(domain(DOMAIN)?)?.join_on(right, JoinType::Full, std::iter::once(condition).chain(same_value))?
        }
    };
    // A row's value; after a FULL join, on whichever side is not NULL-extended.
    let values = (0..references.len()).map(|i| match join.join_type {
        JoinType::Full => coalesce(vec![value(DOMAIN, i), value(RIGHT_DOMAIN, i)]),
        _ => value(DOMAIN, i),
    });
    // `value IS NOT DISTINCT FROM o.a` as `key = coalesce(o.a, placeholder) AND null = (o.a IS
    // NULL)` over columns: DataFusion pulls only equalities of a column up through aggregates.
    let columns: Vec<Expr> = join.schema.columns().into_iter().map(Expr::Column).collect();
    let mut keyed = columns.clone();
    let mut correlation = Vec::new();
    for (i, (value, (field, column))) in values.zip(&references).enumerate() {
        let Ok(placeholder) = ScalarValue::new_default(field.data_type()) else { return Ok(None) };
        let outer_value = Expr::OuterReferenceColumn(field.clone(), column.clone());
        let (key, null) = (format!("{DOMAIN}_key_{i}"), format!("{DOMAIN}_null_{i}"));
        keyed.push(coalesce(vec![value.clone(), lit(placeholder.clone())]).alias(&key));
        keyed.push(value.is_null().alias(&null));
        correlation.push(Expr::Column(Column::new_unqualified(key)).eq(coalesce(vec![outer_value.clone(), lit(placeholder)])));
        correlation.push(Expr::Column(Column::new_unqualified(null)).eq(outer_value.is_null()));
    }
    let correlation = conjunction(correlation).expect("one reference at least");
    let rewritten = joined.project(keyed)?.filter(correlation)?.project(columns)?.build()?;
    if !rewritten.schema().logically_equivalent_names_and_types(&join.schema) {
        return Ok(None);
    }
    Ok(Some(rewritten))
}

/// Whether an expression of `node` holds a subquery.
fn has_subqueries(node: &LogicalPlan) -> Result<bool> {
    let mut found = false;
    node.apply_subqueries(|_| {
        found = true;
        Ok(TreeNodeRecursion::Stop)
    })?;
    Ok(found)
}

/// Whether `join`'s condition refers to a column of an enclosing query.
fn condition_reads_outer_query(join: &datafusion::logical_expr::Join) -> bool {
    join.on.iter().any(|(l, r)| l.contains_outer() || r.contains_outer()) || join.filter.as_ref().is_some_and(Expr::contains_outer)
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
                && condition_reads_outer_query(j)
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
