//! `mod(a, b)`: Postgres' name for `a % b` (the remainder with the sign of `a`), for integers
//! and numerics; division by zero fails with 22012 as `%` does.

use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::{ColumnarValue, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;

pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(Mod { signature: Signature::user_defined(Volatility::Immutable) }));
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Mod {
    signature: Signature,
}

impl ScalarUDFImpl for Mod {
    fn name(&self) -> &str {
        "mod"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Both arguments as `%` would take them.
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [a, b] = arg_types else { return plan_err!("mod() takes two arguments") };
        if !(a.is_numeric() || a.is_null()) || !(b.is_numeric() || b.is_null()) {
            return plan_err!("No function matches the given name and argument types mod({a}, {b})");
        }
        let (a, b) = BinaryTypeCoercer::new(a, &Operator::Modulo, b).get_input_types()?;
        Ok(vec![a, b])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        BinaryTypeCoercer::new(&arg_types[0], &Operator::Modulo, &arg_types[1]).get_result_type()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use ColumnarValue::{Array, Scalar};
        use arrow::compute::kernels::numeric::rem;
        let promised = args.return_field.data_type().clone();
        let result = match (&args.args[0], &args.args[1]) {
            (Array(a), Array(b)) => rem(a, b)?,
            (Array(a), Scalar(b)) => rem(a, &b.to_scalar()?)?,
            (Scalar(a), Array(b)) => rem(&a.to_scalar()?, b)?,
            (Scalar(a), Scalar(b)) => {
                let value = ScalarValue::try_from_array(&rem(&a.to_scalar()?, &b.to_scalar()?)?, 0)?;
                return Ok(Scalar(value.cast_to(&promised)?));
            }
        };
        Ok(Array(if result.data_type() == &promised { result } else { arrow::compute::cast(&result, &promised)? }))
    }
}
