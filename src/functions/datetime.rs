//! `to_char(timestamp, pattern)` and `to_timestamp(text, pattern)` with Postgres patterns
//! (`YYYY-MM-DD HH24:MI:SS`). DataFusion's functions take chrono patterns (`%Y-%m-%d`):
//! these wrap them and translate the pattern argument; everything else is DataFusion's.
//!
//! Translated: `YYYY YY MM DD DDD HH24 HH12 HH MI SS MS US AM PM am pm Mon Month Dy Day TZ`,
//! the `FM` prefix (no padding) and `"quoted text"`. Other characters are copied. `Month`
//! and `Day` are not blank-padded to 9 characters as Postgres pads them.
//!
//! Also `make_timestamptz(year, month, day, hour, min, sec [, timezone])`, which DataFusion
//! lacks: the time in the session's zone (UTC) or in `timezone` (`+02:00`, `Europe/Berlin`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::{DataType, FieldRef, TimeUnit};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;

pub fn register(ctx: &SessionContext) {
    let state = ctx.state();
    let config = state.config_options();
    for inner in [datafusion::functions::datetime::to_char(), datafusion::functions::datetime::to_timestamp(config)] {
        ctx.register_udf(ScalarUDF::new_from_impl(PostgresPattern { inner }));
    }
    ctx.register_udf(ScalarUDF::new_from_impl(MakeTimestamptz { signature: Signature::user_defined(Volatility::Immutable) }));
}

/// `make_timestamptz(year, month, day, hour, min, sec [, timezone])`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct MakeTimestamptz {
    signature: Signature,
}

impl ScalarUDFImpl for MakeTimestamptz {
    fn name(&self) -> &str {
        "make_timestamptz"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if !(6..=7).contains(&arg_types.len()) {
            return datafusion::common::plan_err!(
                "No function matches the given name and argument types make_timestamptz() with {} arguments",
                arg_types.len()
            );
        }
        let mut types = vec![DataType::Int64; 5];
        types.push(DataType::Float64);
        if arg_types.len() == 7 {
            types.push(DataType::Utf8);
        }
        Ok(types)
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use arrow::array::{AsArray, TimestampMicrosecondBuilder};
        use arrow::datatypes::{Float64Type, Int64Type};
        let n = args.number_rows;
        let columns = args.args.iter().map(|a| a.to_array(n)).collect::<Result<Vec<ArrayRef>>>()?;
        let ints: Vec<_> = columns[..5].iter().map(|c| c.as_primitive::<Int64Type>()).collect();
        let seconds = columns[5].as_primitive::<Float64Type>();
        let zones = columns.get(6).map(|z| z.as_string::<i32>());
        let mut out = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
        for row in 0..n {
            let zone = match zones {
                Some(z) if z.is_null(row) => None,
                Some(z) => Some(Some(z.value(row))),
                None => Some(None),
            };
            if ints.iter().any(|c| c.is_null(row)) || seconds.is_null(row) {
                out.append_null();
                continue;
            }
            let Some(zone) = zone else {
                out.append_null();
                continue;
            };
            let [y, mo, d, h, mi] = [0, 1, 2, 3, 4].map(|i| ints[i].value(row));
            out.append_value(make_timestamp_micros(y, mo, d, h, mi, seconds.value(row), zone)?);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Microseconds since the epoch of the local time given in `zone` (UTC if None).
fn make_timestamp_micros(year: i64, month: i64, day: i64, hour: i64, min: i64, sec: f64, zone: Option<&str>) -> Result<i64> {
    use chrono::{NaiveDate, TimeZone};
    let date = i32::try_from(year)
        .ok()
        .zip(u32::try_from(month).ok())
        .zip(u32::try_from(day).ok())
        .and_then(|((y, m), d)| NaiveDate::from_ymd_opt(y, m, d));
    let Some(date) = date else {
        return datafusion::common::exec_err!("date field value out of range: {year}-{month:02}-{day:02}");
    };
    let valid_time =
        (0..24).contains(&hour) && (0..60).contains(&min) && (0.0..60.0).contains(&sec) || (hour == 24 && min == 0 && sec == 0.0);
    if !valid_time {
        return datafusion::common::exec_err!("time field value out of range: {hour}:{min:02}:{sec:02}");
    }
    let local = date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc().timestamp_micros()
        + (hour * 3600 + min * 60) * 1_000_000
        + (sec * 1e6).round() as i64;
    let Some(zone) = zone else { return Ok(local) };
    let tz: arrow::array::timezone::Tz = match zone.parse() {
        Ok(tz) => tz,
        Err(_) => return datafusion::common::exec_err!("time zone \"{zone}\" not recognized"),
    };
    let naive = chrono::DateTime::from_timestamp_micros(local).unwrap_or_default().naive_utc();
    match tz.from_local_datetime(&naive).earliest() {
        Some(t) => Ok(t.timestamp_micros()),
        None => datafusion::common::exec_err!("time zone \"{zone}\" has no time {naive}"),
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
