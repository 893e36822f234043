//! Postgres' `format(formatstr, args...)`: `%s` (the value as text, NULL as empty), `%I` (an
//! identifier, quoted when needed), `%L` (a literal, NULL unquoted) and `%%`. Metabase's
//! field sync builds type and table names with it. Width, `-` and `n$` positions are not
//! supported and fail with 0A000.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use arrow::datatypes::DataType;
use datafusion::common::cast::as_string_array;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;

pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(Format { signature: Signature::variadic_any(Volatility::Immutable) }));
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Format {
    signature: Signature,
}

impl ScalarUDFImpl for Format {
    fn name(&self) -> &str {
        "format"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.is_empty() {
            return Err(DataFusionError::Plan("function format() requires a format string".into()));
        }
        let rows = args.number_rows;
        // Every argument as text, as Postgres formats them (`%s` of 1.5 is `1.5`).
        let texts: Vec<StringArray> = args
            .args
            .iter()
            .map(|a| {
                let array = a.to_array(rows)?;
                let text = arrow::compute::cast(&array, &DataType::Utf8)?;
                Ok(as_string_array(&text)?.clone())
            })
            .collect::<Result<_>>()?;
        let mut out = StringBuilder::new();
        for row in 0..rows {
            if texts[0].is_null(row) {
                out.append_null();
                continue;
            }
            let values: Vec<Option<&str>> = texts[1..].iter().map(|a| (!a.is_null(row)).then(|| a.value(row))).collect();
            out.append_value(format_row(texts[0].value(row), &values)?);
        }
        let array: ArrayRef = Arc::new(out.finish());
        Ok(ColumnarValue::Array(array))
    }
}

fn format_row(template: &str, values: &[Option<&str>]) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut next = values.iter();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let spec = chars.next().ok_or_else(|| DataFusionError::Execution("unterminated format() type specifier".into()))?;
        if spec == '%' {
            out.push('%');
            continue;
        }
        if !matches!(spec, 's' | 'I' | 'L') {
            return Err(DataFusionError::NotImplemented(format!("format() specifier \"%{spec}\" (only %s, %I, %L and %% are supported)")));
        }
        let value = *next.next().ok_or_else(|| DataFusionError::Execution("too few arguments for format()".into()))?;
        match (spec, value) {
            ('s', v) => out.push_str(v.unwrap_or("")),
            ('I', Some(v)) => out.push_str(&quote_ident(v)),
            ('I', None) => return Err(DataFusionError::Execution("null values cannot be formatted as an SQL identifier".into())),
            (_, Some(v)) => out.push_str(&format!("'{}'", v.replace('\'', "''"))),
            (_, None) => out.push_str("NULL"),
        }
    }
    Ok(out)
}

/// `name` as Postgres' `quote_ident` writes it: bare when it is a plain lower-case name.
fn quote_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { name.to_string() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

#[cfg(test)]
mod tests {
    use super::format_row;

    #[test]
    fn specifiers() {
        assert_eq!(format_row("%s", &[Some("int8")]).unwrap(), "int8");
        assert_eq!(format_row("\"%s\".\"%s\"", &[Some("public"), Some("t")]).unwrap(), "\"public\".\"t\"");
        assert_eq!(format_row("%I.%I", &[Some("public"), Some("Order Lines")]).unwrap(), "public.\"Order Lines\"");
        assert_eq!(format_row("%L and %L, 100%%", &[Some("it's"), None]).unwrap(), "'it''s' and NULL, 100%");
        assert_eq!(format_row("[%s]", &[None]).unwrap(), "[]");
        assert!(format_row("%s %s", &[Some("a")]).is_err());
        assert!(format_row("%5s", &[Some("a")]).is_err());
    }
}
