//! `bytea` as Postgres reads and measures it: [`bytea_input`] reads a literal (`'\x0102'`,
//! escape format) as Postgres' bytea input does (used by `planner::analyzer` for casts and by
//! INSERT), and `length(bytea)` / `octet_length(bytea)` count bytes, where DataFusion's
//! `length` casts bytes to text (failing on bytes that are not UTF-8) and `octet_length`
//! takes text only. Text arguments go to DataFusion's functions.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::Result;
use datafusion::logical_expr::type_coercion::functions::fields_with_udf;
use datafusion::logical_expr::{ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;

pub fn register(ctx: &SessionContext) {
    for inner in [datafusion::functions::unicode::character_length(), datafusion::functions::string::octet_length()] {
        ctx.register_udf(ScalarUDF::new_from_impl(ByteLength { inner, signature: Signature::user_defined(Volatility::Immutable) }));
    }
}

/// Postgres' bytea input: hex (`\x0102`, pairs of hex digits, blanks between pairs) or
/// escape format (`\\` a backslash, `\nnn` an octal byte, other characters as they are).
pub fn bytea_input(text: &str) -> Option<Vec<u8>> {
    if let Some(hex) = text.strip_prefix("\\x") {
        let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if !digits.len().is_multiple_of(2) {
            return None;
        }
        return digits.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()).collect();
    }
    let raw = text.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            bytes.push(raw[i]);
            i += 1;
        } else if raw.get(i + 1) == Some(&b'\\') {
            bytes.push(b'\\');
            i += 2;
        } else {
            let octal = raw.get(i + 1..i + 4).filter(|d| d[0] <= b'3' && d.iter().all(|b| (b'0'..=b'7').contains(b)))?;
            bytes.push(octal.iter().fold(0u8, |n, d| n * 8 + (d - b'0')));
            i += 4;
        }
    }
    Some(bytes)
}

fn is_binary(t: &DataType) -> bool {
    matches!(t, DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_))
}

/// `length` / `octet_length`: the number of bytes of a bytea (Postgres' `integer`), else
/// DataFusion's function.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ByteLength {
    inner: Arc<ScalarUDF>,
    signature: Signature,
}

impl ScalarUDFImpl for ByteLength {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if let [t] = arg_types
            && is_binary(t)
        {
            return Ok(vec![DataType::Binary]);
        }
        let fields: Vec<FieldRef> = arg_types.iter().map(|t| Arc::new(Field::new("f", t.clone(), true))).collect();
        Ok(fields_with_udf(&fields, self.inner.as_ref())?.iter().map(|f| f.data_type().clone()).collect())
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [t] if is_binary(t) => Ok(DataType::Int32),
            _ => self.inner.return_type(arg_types),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        match args.arg_fields {
            [f] if is_binary(f.data_type()) => Ok(Arc::new(Field::new(self.name(), DataType::Int32, true))),
            _ => self.inner.return_field_from_args(args),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if !matches!(args.arg_fields.as_slice(), [f] if is_binary(f.data_type())) {
            return self.inner.invoke_with_args(args);
        }
        let bytes = args.args[0].to_array(args.number_rows)?;
        let bytes = arrow::compute::cast(&bytes, &DataType::Binary)?;
        let lengths = arrow::compute::kernels::length::length(&bytes)?;
        Ok(match &args.args[0] {
            ColumnarValue::Scalar(_) => ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&lengths, 0)?),
            ColumnarValue::Array(_) => ColumnarValue::Array(lengths),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::bytea_input;

    #[test]
    fn bytea_input_as_postgres_reads_it() {
        // Postgres 15: '\x0102' -> \x0102, 'ab\\c\001' -> \x61625c6301, '\xDEAD beef' -> \xdeadbeef.
        assert_eq!(bytea_input("\\x0102"), Some(vec![1, 2]));
        assert_eq!(bytea_input("ab\\\\c\\001"), Some(vec![0x61, 0x62, 0x5c, 0x63, 0x01]));
        assert_eq!(bytea_input("\\xDEAD beef"), Some(vec![0xde, 0xad, 0xbe, 0xef]));
        assert_eq!(bytea_input(""), Some(vec![]));
        assert_eq!(bytea_input("\\x012"), None);
        assert_eq!(bytea_input("\\9"), None);
    }
}
