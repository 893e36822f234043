//! Postgres' size limits on the values a function builds, checked from its arguments before
//! it runs. DataFusion lets one `repeat('x', 2147483647)` build a 2 GiB string, which the
//! encoder copies twice more on its way to the client (8 GiB of RSS seen); Postgres refuses
//! any value over 1 GiB and any array over 134,217,727 elements (54000). Memory that
//! operators hold (sorts, hash tables) is bounded by the statement's memory pool instead
//! (`server::statement_context`); these functions allocate outside of it.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array};
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// Postgres' `MaxAllocSize`: no value (text, bytea, array) may be larger.
pub const MAX_VALUE_BYTES: u64 = 0x3fff_ffff;
/// Postgres' `MaxArraySize`.
pub const MAX_ARRAY_ELEMENTS: u64 = 0x7ff_ffff;
/// Velocity's own bound on what one call builds for all the rows of a batch together.
pub const MAX_RESULT_BYTES: u64 = 1 << 30;
/// Bytes per character the length checks assume, as Postgres does for UTF8.
const MAX_CHAR_BYTES: u64 = 4;

/// A value a function was asked to build is over Postgres' limits (SQLSTATE 54000).
#[derive(Debug, thiserror::Error)]
pub enum SizeLimitError {
    #[error("requested length too large")]
    LengthTooLarge,
    #[error("array size exceeds the maximum allowed ({MAX_ARRAY_ELEMENTS})")]
    ArrayTooLarge,
}

fn exceeded(e: SizeLimitError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Per row, how many bytes (or array elements) a call would build, from its arguments.
type Bound = fn(&[ArrayRef]) -> Result<Vec<u64>>;

/// Replace the registered functions that build large values from small arguments with
/// checked versions of themselves.
pub fn register(ctx: &SessionContext) {
    let bounded: [(&str, Bound, Measure); 6] = [
        ("repeat", repeat_bytes, Measure::TextBytes),
        ("lpad", pad_bytes, Measure::TextBytes),
        ("rpad", pad_bytes, Measure::TextBytes),
        ("array_repeat", array_repeat_elements, Measure::ArrayElements),
        ("range", range_elements, Measure::ArrayElements),
        ("generate_series", series_elements, Measure::ArrayElements),
    ];
    for (name, bound, measure) in bounded {
        match ctx.udf(name) {
            Ok(inner) => ctx.register_udf(ScalarUDF::new_from_impl(SizeChecked { inner, bound, measure })),
            Err(e) => tracing::error!("{name}() is not size-checked: {e}"),
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
enum Measure {
    /// Bytes of one text value.
    TextBytes,
    /// Elements of one array (8 bytes each toward the result's total).
    ArrayElements,
}

/// `inner`, refusing a call whose result `bound` says is over the limits.
#[derive(Debug)]
struct SizeChecked {
    inner: Arc<ScalarUDF>,
    bound: Bound,
    measure: Measure,
}

// One checked wrapper per function: it is known by the function it wraps.
impl PartialEq for SizeChecked {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}
impl Eq for SizeChecked {}
impl std::hash::Hash for SizeChecked {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state)
    }
}

impl SizeChecked {
    fn check(&self, args: &[ColumnarValue], rows: usize) -> Result<()> {
        // A scalar argument stands for every row: one row of it is what matters.
        let rows = if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) { 1 } else { rows };
        let arrays = args.iter().map(|a| a.to_array(rows)).collect::<Result<Vec<_>>>()?;
        let sizes = (self.bound)(&arrays)?;
        let (limit, per_unit, error) = match self.measure {
            Measure::TextBytes => (MAX_VALUE_BYTES, 1, SizeLimitError::LengthTooLarge),
            Measure::ArrayElements => (MAX_ARRAY_ELEMENTS, 8, SizeLimitError::ArrayTooLarge),
        };
        if sizes.iter().any(|&s| s > limit) {
            return Err(exceeded(error));
        }
        let total = sizes.iter().fold(0u64, |sum, &s| sum.saturating_add(s.saturating_mul(per_unit)));
        if total > MAX_RESULT_BYTES {
            return Err(exceeded(SizeLimitError::LengthTooLarge));
        }
        Ok(())
    }
}

impl ScalarUDFImpl for SizeChecked {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }
    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args.args, args.number_rows)?;
        self.inner.invoke_with_args(args)
    }
}

/// An integer argument per row (NULL: 0, nothing is built).
fn integers(array: &ArrayRef) -> Result<Vec<i64>> {
    let cast = arrow::compute::cast(array, &DataType::Int64)?;
    let ints = cast.as_any().downcast_ref::<Int64Array>().expect("cast to Int64");
    Ok((0..ints.len()).map(|i| if ints.is_null(i) { 0 } else { ints.value(i) }).collect())
}

/// Byte length of a text argument per row (NULL: 0).
fn text_bytes(array: &ArrayRef) -> Result<Vec<u64>> {
    let lengths = arrow::compute::kernels::length::length(array).or_else(|_| {
        let text = arrow::compute::cast(array, &DataType::LargeUtf8)?;
        arrow::compute::kernels::length::length(&text)
    })?;
    Ok(integers(&lengths)?.into_iter().map(|n| n.max(0) as u64).collect())
}

/// `repeat(text, n)`: the text's length times `n`.
fn repeat_bytes(args: &[ArrayRef]) -> Result<Vec<u64>> {
    let [text, count] = args else { return Ok(Vec::new()) };
    Ok(text_bytes(text)?.into_iter().zip(integers(count)?).map(|(len, n)| len.saturating_mul(n.max(0) as u64)).collect())
}

/// `lpad(text, n [, fill])` / `rpad`: `n` characters, as many bytes as Postgres assumes.
fn pad_bytes(args: &[ArrayRef]) -> Result<Vec<u64>> {
    let Some(length) = args.get(1) else { return Ok(Vec::new()) };
    Ok(integers(length)?.into_iter().map(|n| (n.max(0) as u64).saturating_mul(MAX_CHAR_BYTES)).collect())
}

/// `array_repeat(x, n)`: `n` elements.
fn array_repeat_elements(args: &[ArrayRef]) -> Result<Vec<u64>> {
    let Some(count) = args.get(1) else { return Ok(Vec::new()) };
    Ok(integers(count)?.into_iter().map(|n| n.max(0) as u64).collect())
}

/// `range(stop)`, `range(start, stop [, step])` over integers: `(stop - start) / step`
/// elements, one more for `generate_series`, which includes `stop`. Dates and timestamps
/// step by intervals, which this does not bound.
fn integer_series(args: &[ArrayRef], inclusive: bool) -> Result<Vec<u64>> {
    if args.iter().any(|a| !a.data_type().is_integer()) {
        return Ok(Vec::new());
    }
    let columns = args.iter().map(integers).collect::<Result<Vec<_>>>()?;
    let rows = columns.first().map_or(0, Vec::len);
    Ok((0..rows)
        .map(|row| {
            let (start, stop, step) = match columns.as_slice() {
                [stop] => (0, stop[row], 1),
                [start, stop] => (start[row], stop[row], 1),
                [start, stop, step, ..] => (start[row], stop[row], step[row]),
                [] => (0, 0, 1),
            };
            let span = (stop as i128 - start as i128).unsigned_abs();
            let step = (step as i128).unsigned_abs().max(1);
            let count = span / step + u128::from(inclusive);
            u64::try_from(count).unwrap_or(u64::MAX)
        })
        .collect())
}

fn range_elements(args: &[ArrayRef]) -> Result<Vec<u64>> {
    integer_series(args, false)
}

fn series_elements(args: &[ArrayRef]) -> Result<Vec<u64>> {
    integer_series(args, true)
}
