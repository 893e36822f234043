//! Postgres' ordered-set aggregates DataFusion lacks: `percentile_disc(f) WITHIN GROUP (ORDER
//! BY x)`, `percentile_disc(ARRAY[f, ...]) ...` (an array of the values at each fraction) and
//! `mode() WITHIN GROUP (ORDER BY x)` (DataFusion has `percentile_cont`).
//!
//! DataFusion's planner passes the `WITHIN GROUP` expression as the first argument and its
//! order in the accumulator's `order_bys`. Each accumulator keeps the group's non-NULL
//! values, sorts them in that order when evaluated and answers as Postgres does:
//! `percentile_disc` the first value whose position is at least `f` times the count,
//! `mode` the most frequent value (of equally frequent ones, the first in the order). In a
//! materialized view they are maintained like any other DataFusion aggregate, recomputed
//! for each changed group.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, Signature, Volatility};
use datafusion::prelude::SessionContext;

pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(AggregateUDF::from(OrderedSet::new(Kind::PercentileDisc)));
    ctx.register_udaf(AggregateUDF::from(OrderedSet::new(Kind::Mode)));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    PercentileDisc,
    Mode,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct OrderedSet {
    kind: Kind,
    signature: Signature,
}

impl OrderedSet {
    fn new(kind: Kind) -> OrderedSet {
        OrderedSet { kind, signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl AggregateUDFImpl for OrderedSet {
    fn name(&self) -> &str {
        match self.kind {
            Kind::PercentileDisc => "percentile_disc",
            Kind::Mode => "mode",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match (self.kind, arg_types) {
            (Kind::PercentileDisc, [value, DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)]) => {
                Ok(vec![value.clone(), fraction_array_type()])
            }
            (Kind::PercentileDisc, [value, _]) => Ok(vec![value.clone(), DataType::Float64]),
            (Kind::Mode, [value]) => Ok(vec![value.clone()]),
            (Kind::PercentileDisc, _) => plan_err!("percentile_disc(fraction) takes one argument and WITHIN GROUP (ORDER BY x)"),
            (Kind::Mode, _) => plan_err!("mode() takes no argument and WITHIN GROUP (ORDER BY x)"),
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.get(1) {
            Some(DataType::List(_)) => Ok(DataType::new_list(arg_types[0].clone(), true)),
            _ => Ok(arg_types[0].clone()),
        }
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let item = Field::new_list_field(args.input_fields[0].data_type().clone(), true);
        Ok(vec![Arc::new(Field::new(format_state_name(args.name, self.name()), DataType::List(Arc::new(item)), true))])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let fractions = match self.kind {
            Kind::Mode => None,
            Kind::PercentileDisc => {
                // A constant evaluates to a scalar without rows.
                let empty = arrow::array::RecordBatch::new_empty(Arc::new(arrow::datatypes::Schema::empty()));
                let Some(Ok(ColumnarValue::Scalar(value))) = args.exprs.get(1).map(|e| e.evaluate(&empty)) else {
                    return plan_err!("percentile_disc takes a constant fraction");
                };
                Some(Fractions::of(value)?)
            }
        };
        let descending = args.order_bys.first().is_some_and(|s| s.options.descending);
        Ok(Box::new(OrderedSetAccumulator {
            fractions,
            descending,
            data_type: args.expr_fields[0].data_type().clone(),
            values: Vec::new(),
        }))
    }

    fn supports_within_group_clause(&self) -> bool {
        true
    }
}

/// The type `percentile_disc(ARRAY[...])` reads its fractions as.
fn fraction_array_type() -> DataType {
    DataType::new_list(DataType::Float64, true)
}

/// `percentile_disc`'s argument, one for the whole aggregate. A NULL fraction or array
/// answers NULL, as in Postgres.
#[derive(Debug)]
enum Fractions {
    One(Option<f64>),
    /// Answered by an array of the value at each fraction.
    Array(Option<Vec<Option<f64>>>),
}

impl Fractions {
    /// The fraction(s) of the constant `value`; an error for one outside [0, 1].
    fn of(value: ScalarValue) -> Result<Fractions> {
        let checked = |v: ScalarValue| -> Result<Option<f64>> {
            let f = match v.cast_to(&DataType::Float64) {
                Ok(ScalarValue::Float64(f)) => f,
                _ => return plan_err!("percentile_disc takes a constant fraction"),
            };
            if let Some(f) = f
                && !(0.0..=1.0).contains(&f)
            {
                return exec_err!("percentile value {f} is not between 0 and 1");
            }
            Ok(f)
        };
        if !value.data_type().is_nested() {
            return Ok(Fractions::One(checked(value)?));
        }
        let ScalarValue::List(list) = value.cast_to(&fraction_array_type())? else {
            return plan_err!("percentile_disc takes a constant fraction or array of fractions");
        };
        if list.is_null(0) {
            return Ok(Fractions::Array(None));
        }
        let items = list.value(0);
        let fractions = (0..items.len()).map(|i| checked(ScalarValue::try_from_array(&items, i)?)).collect::<Result<_>>()?;
        Ok(Fractions::Array(Some(fractions)))
    }
}

/// The non-NULL values of one group.
#[derive(Debug)]
struct OrderedSetAccumulator {
    /// `percentile_disc`'s; None for `mode`.
    fractions: Option<Fractions>,
    descending: bool,
    data_type: DataType,
    values: Vec<ScalarValue>,
}

impl OrderedSetAccumulator {
    fn push(&mut self, array: &ArrayRef) -> Result<()> {
        for i in 0..array.len() {
            if array.is_valid(i) {
                self.values.push(ScalarValue::try_from_array(array, i)?);
            }
        }
        Ok(())
    }

    fn sorted(&self) -> Vec<&ScalarValue> {
        let mut sorted: Vec<&ScalarValue> = self.values.iter().collect();
        sorted.sort_by(|a, b| {
            let order = a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal);
            if self.descending { order.reverse() } else { order }
        });
        sorted
    }
}

impl Accumulator for OrderedSetAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.push(&values[0])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let sorted = self.sorted();
        let null = || ScalarValue::try_from(&self.data_type);
        // Postgres: the row numbered ceil(f * n), the first for f = 0.
        let at = |f: f64| sorted[((f * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1].clone();
        match &self.fractions {
            Some(Fractions::Array(fractions)) => match fractions {
                Some(fractions) if !sorted.is_empty() => {
                    let values = fractions.iter().map(|f| f.map_or_else(null, |f| Ok(at(f)))).collect::<Result<Vec<_>>>()?;
                    Ok(ScalarValue::List(ScalarValue::new_list_nullable(&values, &self.data_type)))
                }
                _ => ScalarValue::try_from(&DataType::new_list(self.data_type.clone(), true)),
            },
            _ if sorted.is_empty() => null(),
            Some(Fractions::One(f)) => f.map_or_else(null, |f| Ok(at(f))),
            None => {
                let (mut best, mut best_count) = (0, 0);
                let mut i = 0;
                while i < sorted.len() {
                    let run = sorted[i..].iter().take_while(|v| **v == sorted[i]).count();
                    if run > best_count {
                        (best, best_count) = (i, run);
                    }
                    i += run;
                }
                Ok(sorted[best].clone())
            }
        }
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.iter().map(ScalarValue::size).sum::<usize>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let list = ScalarValue::new_list_nullable(&self.values, &self.data_type);
        Ok(vec![ScalarValue::List(list)])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = states[0].as_list::<i32>();
        for list in lists.iter().flatten() {
            self.push(&list)?;
        }
        Ok(())
    }
}
