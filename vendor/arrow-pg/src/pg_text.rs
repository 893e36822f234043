//! Velocity: Postgres' text output for floats, times and timestamps (`3`, not `3.0`;
//! `19:00:00`, not `19:00:00.000000`), so text-format results read as on Postgres. Checked
//! by Velocity's `tests/slt/text_formats.slt` (answers from Postgres 15).

use std::sync::Arc;

#[cfg(not(feature = "datafusion"))]
use arrow::{array::*, datatypes::*};
use chrono::{NaiveDateTime, NaiveTime, Offset, TimeZone, Timelike};
#[cfg(feature = "datafusion")]
use datafusion::arrow::{array::*, datatypes::*};

/// A float as Postgres' `float8out`/`float4out` prints it: the shortest text that reads back
/// the same value, in exponent form when the decimal exponent is below -4 or at least
/// `digits` (15 for float8, 6 for float4).
pub fn float(value: f64, shortest: String, shortest_exp: String, digits: i32) -> String {
    if value.is_nan() {
        return "NaN".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    let (mantissa, exp) = shortest_exp.split_once('e').unwrap_or((&shortest_exp, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if value != 0.0 && (exp < -4 || exp >= digits) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        shortest
    }
}

fn f64_text(v: f64) -> String {
    float(v, format!("{v}"), format!("{v:e}"), 15)
}

fn f32_text(v: f32) -> String {
    float(v as f64, format!("{v}"), format!("{v:e}"), 6)
}

/// `.fraction` with trailing zeros dropped, or nothing for whole seconds.
fn fraction(micros: u32) -> String {
    if micros == 0 {
        return String::new();
    }
    let digits = format!(".{micros:06}");
    digits.trim_end_matches('0').to_string()
}

/// A time of day as Postgres prints it: `19:00:00`, `19:00:00.5`.
pub fn time(t: NaiveTime) -> String {
    format!("{}{}", t.format("%H:%M:%S"), fraction(t.nanosecond() / 1000))
}

/// A timestamp as Postgres prints it (ISO DateStyle): `2024-01-01 10:00:00.12`.
pub fn timestamp(t: NaiveDateTime) -> String {
    format!("{}{}", t.format("%Y-%m-%d %H:%M:%S"), fraction(t.nanosecond() / 1000))
}

/// A timestamptz in the session's zone: `2024-01-01 10:00:00+00`, `...+05:30`.
pub fn timestamptz<Tz: TimeZone>(t: chrono::DateTime<Tz>) -> String {
    let offset = t.offset().fix().local_minus_utc();
    let sign = if offset < 0 { '-' } else { '+' };
    let (h, m, s) = (offset.abs() / 3600, offset.abs() / 60 % 60, offset.abs() % 60);
    let zone = match (m, s) {
        (0, 0) => format!("{sign}{h:02}"),
        (_, 0) => format!("{sign}{h:02}:{m:02}"),
        _ => format!("{sign}{h:02}:{m:02}:{s:02}"),
    };
    format!("{}{zone}", timestamp(t.naive_local()))
}

/// The Postgres text of `arr[idx]` for the types whose text differs from pgwire's, `None`
/// for other types; `Some(None)` is NULL.
pub fn value(arr: &Arc<dyn Array>, idx: usize, arrow_type: &DataType) -> Option<Option<String>> {
    let known = matches!(
        arrow_type,
        DataType::Float32 | DataType::Float64 | DataType::Time32(_) | DataType::Time64(_) | DataType::Timestamp(_, _)
    );
    if !known {
        return None;
    }
    if arr.is_null(idx) {
        return Some(None);
    }
    let any = arr.as_any();
    let text = match arrow_type {
        DataType::Float64 => f64_text(any.downcast_ref::<Float64Array>()?.value(idx)),
        DataType::Float32 => f32_text(any.downcast_ref::<Float32Array>()?.value(idx)),
        DataType::Time32(TimeUnit::Second) => time(any.downcast_ref::<Time32SecondArray>()?.value_as_time(idx)?),
        DataType::Time32(TimeUnit::Millisecond) => time(any.downcast_ref::<Time32MillisecondArray>()?.value_as_time(idx)?),
        DataType::Time64(TimeUnit::Microsecond) => time(any.downcast_ref::<Time64MicrosecondArray>()?.value_as_time(idx)?),
        DataType::Time64(TimeUnit::Nanosecond) => time(any.downcast_ref::<Time64NanosecondArray>()?.value_as_time(idx)?),
        DataType::Timestamp(unit, zone) => {
            let naive = match unit {
                TimeUnit::Second => any.downcast_ref::<TimestampSecondArray>()?.value_as_datetime(idx)?,
                TimeUnit::Millisecond => any.downcast_ref::<TimestampMillisecondArray>()?.value_as_datetime(idx)?,
                TimeUnit::Microsecond => any.downcast_ref::<TimestampMicrosecondArray>()?.value_as_datetime(idx)?,
                TimeUnit::Nanosecond => any.downcast_ref::<TimestampNanosecondArray>()?.value_as_datetime(idx)?,
            };
            // Years before 1 print with BC in Postgres: leave those to the default path.
            if naive.format("%Y").to_string().starts_with('-') || naive.format("%Y").to_string() == "0000" {
                return None;
            }
            match zone {
                None => timestamp(naive),
                Some(zone) => {
                    let tz: timezone::Tz = zone.parse().ok()?;
                    timestamptz(tz.from_utc_datetime(&naive))
                }
            }
        }
        _ => return None,
    };
    Some(Some(text))
}
