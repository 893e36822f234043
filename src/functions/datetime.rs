//! `to_char(timestamp, pattern)` and `to_timestamp(text, pattern)` with Postgres patterns
//! (`YYYY-MM-DD HH24:MI:SS`). DataFusion's functions take chrono patterns (`%Y-%m-%d`):
//! these wrap them and translate the pattern argument; everything else is DataFusion's.
//!
//! Translated: `YYYY YY MM DD DDD HH24 HH12 HH MI SS MS US AM PM am pm Mon Month Dy Day TZ`,
//! the `FM` prefix (no padding) and `"quoted text"`. Other characters are copied. `Month`
//! and `Day` are not blank-padded to 9 characters as Postgres pads them.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature};
use datafusion::prelude::SessionContext;

pub fn register(ctx: &SessionContext) {
    let state = ctx.state();
    let config = state.config_options();
    for inner in [datafusion::functions::datetime::to_char(), datafusion::functions::datetime::to_timestamp(config)] {
        ctx.register_udf(ScalarUDF::new_from_impl(PostgresPattern { inner }));
    }
}

/// A DataFusion function whose pattern arguments (all but the first) are Postgres patterns.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PostgresPattern {
    inner: Arc<ScalarUDF>,
}

impl ScalarUDFImpl for PostgresPattern {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
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

    fn with_updated_config(&self, config: &datafusion::common::config::ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(PostgresPattern { inner: Arc::new(inner) }))
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        for arg in args.args.iter_mut().skip(1) {
            *arg = translate_argument(arg)?;
        }
        let promised = args.return_field.data_type().clone();
        // DataFusion's to_timestamp plans the session's zone but returns a plain timestamp
        // when given a pattern: give back what was promised (the zone is UTC).
        match self.inner.inner().invoke_with_args(args)? {
            ColumnarValue::Array(a) if a.data_type() != &promised => Ok(ColumnarValue::Array(arrow::compute::cast(&a, &promised)?)),
            ColumnarValue::Scalar(v) if v.data_type() != promised => Ok(ColumnarValue::Scalar(v.cast_to(&promised)?)),
            other => Ok(other),
        }
    }
}

fn translate_argument(arg: &ColumnarValue) -> Result<ColumnarValue> {
    Ok(match arg {
        ColumnarValue::Scalar(ScalarValue::Utf8(p)) => ColumnarValue::Scalar(ScalarValue::Utf8(p.as_deref().map(to_chrono))),
        ColumnarValue::Scalar(ScalarValue::LargeUtf8(p)) => ColumnarValue::Scalar(ScalarValue::LargeUtf8(p.as_deref().map(to_chrono))),
        ColumnarValue::Scalar(ScalarValue::Utf8View(p)) => ColumnarValue::Scalar(ScalarValue::Utf8View(p.as_deref().map(to_chrono))),
        ColumnarValue::Array(a) if matches!(a.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
            let text = arrow::compute::cast(a, &DataType::Utf8)?;
            let text = text.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
            let translated: StringArray = text.iter().map(|p| p.map(to_chrono)).collect();
            let translated: ArrayRef = Arc::new(translated);
            ColumnarValue::Array(arrow::compute::cast(&translated, a.data_type())?)
        }
        other => other.clone(),
    })
}

/// A Postgres date/time pattern as a chrono format string.
pub fn to_chrono(pattern: &str) -> String {
    // Longest first, so `HH24` is not read as `HH` then `24`.
    const CODES: &[(&str, &str, &str)] = &[
        // (Postgres, chrono, chrono without padding for FM)
        ("HH24", "%H", "%-H"),
        ("HH12", "%I", "%-I"),
        ("YYYY", "%Y", "%Y"),
        ("Month", "%B", "%B"),
        ("Day", "%A", "%A"),
        ("DDD", "%j", "%-j"),
        ("Mon", "%b", "%b"),
        ("HH", "%I", "%-I"),
        ("MI", "%M", "%-M"),
        ("SS", "%S", "%-S"),
        ("MS", "%3f", "%3f"),
        ("US", "%6f", "%6f"),
        ("YY", "%y", "%y"),
        ("MM", "%m", "%-m"),
        ("DD", "%d", "%-d"),
        ("Dy", "%a", "%a"),
        ("AM", "%p", "%p"),
        ("PM", "%p", "%p"),
        ("am", "%P", "%P"),
        ("pm", "%P", "%P"),
        ("TZ", "%Z", "%Z"),
    ];
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut rest = pattern;
    let mut fill_mode = false;
    while let Some(c) = rest.chars().next() {
        if let Some(r) = rest.strip_prefix("FM") {
            fill_mode = true;
            rest = r;
            continue;
        }
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            out.push_str(&quoted[..end].replace('%', "%%"));
            rest = quoted.get(end + 1..).unwrap_or("");
            continue;
        }
        if let Some((code, padded, unpadded)) = CODES.iter().find(|(code, _, _)| rest.starts_with(code)) {
            out.push_str(if fill_mode { unpadded } else { padded });
            fill_mode = false;
            rest = &rest[code.len()..];
            continue;
        }
        if c == '%' {
            out.push_str("%%");
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_chrono;

    #[test]
    fn postgres_patterns_as_chrono() {
        assert_eq!(to_chrono("YYYY-MM-DD HH24:MI"), "%Y-%m-%d %H:%M");
        assert_eq!(to_chrono("YYYY-MM-DD\"T\"HH24:MI:SS.MS"), "%Y-%m-%dT%H:%M:%S.%3f");
        assert_eq!(to_chrono("FMDD Mon YYYY, HH12:MI AM"), "%-d %b %Y, %I:%M %p");
        assert_eq!(to_chrono("100% DDD"), "100%% %j");
    }
}
