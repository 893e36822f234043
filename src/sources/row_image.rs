//! Row images: Debezium's `before`/`after` JSON rows converted to Arrow.
//!
//! [`rows_to_batch`] turns `before`/`after` row images into a `RecordBatch` of a declared schema,
//! column by name, and returns the rows it cannot convert separately with a reason. Debezium's
//! semantic types from the envelope schema decide how a value is read (days, milli/micro/nano
//! seconds, base64 decimals); without an envelope the column's Arrow type decides.

use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanArray, BooleanBuilder, LargeBinaryBuilder, LargeListArray, LargeStringBuilder, ListArray,
    PrimitiveBuilder, RecordBatch, RecordBatchOptions, StringBuilder, UInt32Array, new_null_array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::kernels::cast_utils::{Parser, parse_interval_month_day_nano, string_to_datetime, string_to_time_nanoseconds};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Decimal128Type, FieldRef, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, IntervalMonthDayNano, IntervalMonthDayNanoType, IntervalUnit, SchemaRef, Time32MillisecondType, Time32SecondType,
    Time64MicrosecondType, Time64NanosecondType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use super::debezium::{FieldType, FieldTypes, lenient_i64, show};

/// Build a batch of `schema` from JSON row images (columns matched by name; extra keys are
/// ignored so that a column added upstream does not break ingestion).
///
/// Rows that cannot be converted are left out of the batch and returned as
/// `(index into rows, reason)`; the reason names the column and the problem. A missing or null
/// column is NULL if the column is nullable; the `primary_key` columns (indices into `schema`)
/// must be present and non-null. `field_types` are the envelope's column types, which say how
/// Debezium encoded temporal and decimal values.
pub fn rows_to_batch(
    schema: &SchemaRef,
    rows: &[&Map<String, Value>],
    field_types: Option<&FieldTypes>,
    primary_key: &[usize],
) -> (RecordBatch, Vec<(usize, String)>) {
    let mut reasons: Vec<Option<String>> = vec![None; rows.len()];
    // Key columns first: a row without its key is reported as such, not as a type problem.
    for field in primary_key.iter().filter_map(|&k| schema.fields().get(k)) {
        let name = field.name();
        for (reason, row) in reasons.iter_mut().zip(rows) {
            if reason.is_none() {
                match row.get(name) {
                    None => *reason = Some(format!("missing primary key column \"{name}\"")),
                    Some(Value::Null) => *reason = Some(format!("primary key column \"{name}\" is null")),
                    Some(_) => {}
                }
            }
        }
    }
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let name = field.name();
        let cells: Vec<Option<&Value>> = rows.iter().map(|r| r.get(name).filter(|v| !v.is_null())).collect();
        if !field.is_nullable() {
            for ((reason, cell), row) in reasons.iter_mut().zip(&cells).zip(rows) {
                if reason.is_none() && cell.is_none() {
                    *reason = Some(if row.contains_key(name) {
                        format!("column \"{name}\": null, but the column is NOT NULL")
                    } else {
                        format!("missing column \"{name}\", which is NOT NULL")
                    });
                }
            }
        }
        let (array, failures) = build_column(field.data_type(), field_types.and_then(|t| t.get(name)), &cells);
        for (row, why) in failures {
            if reasons[row].is_none() {
                reasons[row] = Some(format!("column \"{name}\": {why}"));
            }
        }
        columns.push(array);
    }
    finish_batch(schema, columns, reasons)
}

/// Drop the failed rows from the columns and assemble the batch.
fn finish_batch(schema: &SchemaRef, columns: Vec<ArrayRef>, reasons: Vec<Option<String>>) -> (RecordBatch, Vec<(usize, String)>) {
    let good = reasons.iter().filter(|r| r.is_none()).count();
    let columns = if good == reasons.len() {
        Ok(columns)
    } else {
        let mask: BooleanArray = reasons.iter().map(|r| Some(r.is_none())).collect();
        columns.iter().map(|c| arrow::compute::filter(c, &mask)).collect::<Result<Vec<_>, _>>()
    };
    let batch = columns.and_then(|columns| {
        RecordBatch::try_new_with_options(schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(good)))
    });
    let failed: Vec<(usize, String)> = reasons.iter().enumerate().filter_map(|(i, r)| Some((i, r.clone()?))).collect();
    match batch {
        Ok(batch) => (batch, failed),
        // Every value was checked against its column above, so this means a bug here; reject
        // the rows rather than panic on a source record.
        Err(e) => {
            let all = reasons
                .into_iter()
                .enumerate()
                .map(|(i, r)| (i, r.unwrap_or_else(|| format!("cannot build a batch of the table schema: {e}"))))
                .collect();
            (RecordBatch::new_empty(schema.clone()), all)
        }
    }
}

/// Largest decimal scale accepted from a record (Postgres allows 1000 fractional digits);
/// beyond it a value is rejected rather than rendered with a million zeros.
const MAX_SCALE: i32 = 1000;

const NANOS_PER_MICRO: i128 = 1_000;
const NANOS_PER_MILLI: i128 = 1_000_000;
const NANOS_PER_SECOND: i128 = 1_000_000_000;
const NANOS_PER_DAY: i128 = 86_400 * NANOS_PER_SECOND;

/// How Debezium encoded a column's values, from its semantic type; decided once per column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// No semantic type: the target Arrow type decides.
    Plain,
    /// An integer count of units since the epoch (or since midnight, for times).
    Epoch { nanos_per_unit: i128 },
    /// `org.apache.kafka.connect.data.Decimal`: base64 big-endian two's-complement unscaled
    /// value; the scale is in the schema.
    ConnectDecimal { scale: i32 },
    /// `io.debezium.data.VariableScaleDecimal`: `{"scale": s, "value": base64}`.
    VariableScaleDecimal,
}

fn encoding_of(field_type: Option<&FieldType>) -> Encoding {
    let Some(name) = field_type.and_then(|t| t.name.as_deref()) else {
        return Encoding::Plain;
    };
    let epoch = |nanos_per_unit| Encoding::Epoch { nanos_per_unit };
    match name {
        "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" => epoch(NANOS_PER_DAY),
        "io.debezium.time.Time"
        | "io.debezium.time.Timestamp"
        | "org.apache.kafka.connect.data.Time"
        | "org.apache.kafka.connect.data.Timestamp" => epoch(NANOS_PER_MILLI),
        "io.debezium.time.MicroTime" | "io.debezium.time.MicroTimestamp" | "io.debezium.time.MicroDuration" => epoch(NANOS_PER_MICRO),
        "io.debezium.time.NanoTime" | "io.debezium.time.NanoTimestamp" | "io.debezium.time.NanoDuration" => epoch(1),
        "org.apache.kafka.connect.data.Decimal" => {
            let scale = field_type.and_then(|t| t.parameters.get("scale")).and_then(|s| s.parse::<i32>().ok());
            match scale.filter(|s| (-MAX_SCALE..=MAX_SCALE).contains(s)) {
                Some(scale) => Encoding::ConnectDecimal { scale },
                None => Encoding::Plain,
            }
        }
        "io.debezium.data.VariableScaleDecimal" => Encoding::VariableScaleDecimal,
        _ => Encoding::Plain,
    }
}

/// Failures as `(index into cells, reason)`.
type Failures = Vec<(usize, String)>;

/// Build one column from its cells (`None` = null or missing), nulls where a value fails.
fn build_column(data_type: &DataType, field_type: Option<&FieldType>, cells: &[Option<&Value>]) -> (ArrayRef, Failures) {
    let enc = encoding_of(field_type);
    match data_type {
        DataType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(cells.len());
            let mut failures = Vec::new();
            for (i, cell) in cells.iter().enumerate() {
                match cell.map(read_bool).transpose() {
                    Ok(v) => b.append_option(v),
                    Err(e) => {
                        failures.push((i, e));
                        b.append_null();
                    }
                }
            }
            (Arc::new(b.finish()), failures)
        }
        DataType::Int8 => primitive::<Int8Type>(data_type, cells, |v| read_int(v, enc, data_type)),
        DataType::Int16 => primitive::<Int16Type>(data_type, cells, |v| read_int(v, enc, data_type)),
        DataType::Int32 => primitive::<Int32Type>(data_type, cells, |v| read_int(v, enc, data_type)),
        DataType::Int64 => primitive::<Int64Type>(data_type, cells, |v| read_int(v, enc, data_type)),
        DataType::UInt8 => primitive::<UInt8Type>(data_type, cells, |v| read_int(v, enc, data_type)),
        DataType::UInt16 => primitive::<UInt16Type>(data_type, cells, |v| read_int(v, enc, data_type)),
        DataType::UInt32 => primitive::<UInt32Type>(data_type, cells, |v| read_int(v, enc, data_type)),
        DataType::UInt64 => primitive::<UInt64Type>(data_type, cells, |v| read_int(v, enc, data_type)),
        DataType::Float32 => primitive::<Float32Type>(data_type, cells, |v| read_float(v, enc).map(|f| f as f32)),
        DataType::Float64 => primitive::<Float64Type>(data_type, cells, |v| read_float(v, enc)),
        DataType::Decimal128(precision, scale) => primitive::<Decimal128Type>(data_type, cells, |v| {
            let (unscaled, from) = read_decimal(v, enc)?;
            fit_decimal(unscaled, from, *precision, *scale)
        }),
        DataType::Utf8 => {
            let mut b = StringBuilder::with_capacity(cells.len(), cells.len() * 16);
            for cell in cells {
                b.append_option(cell.map(|v| read_text(v, enc)));
            }
            (Arc::new(b.finish()), Vec::new())
        }
        DataType::LargeUtf8 => {
            let mut b = LargeStringBuilder::with_capacity(cells.len(), cells.len() * 16);
            for cell in cells {
                b.append_option(cell.map(|v| read_text(v, enc)));
            }
            (Arc::new(b.finish()), Vec::new())
        }
        DataType::Binary | DataType::LargeBinary => {
            let mut failures = Vec::new();
            let values: Vec<Option<Vec<u8>>> = cells
                .iter()
                .enumerate()
                .map(|(i, cell)| match cell.map(read_bytes).transpose() {
                    Ok(v) => v,
                    Err(e) => {
                        failures.push((i, e));
                        None
                    }
                })
                .collect();
            let array: ArrayRef = if matches!(data_type, DataType::Binary) {
                let mut b = BinaryBuilder::new();
                values.iter().for_each(|v| b.append_option(v.as_deref()));
                Arc::new(b.finish())
            } else {
                let mut b = LargeBinaryBuilder::new();
                values.iter().for_each(|v| b.append_option(v.as_deref()));
                Arc::new(b.finish())
            };
            (array, failures)
        }
        DataType::Date32 => primitive::<Date32Type>(data_type, cells, |v| {
            let nanos = read_instant(v, enc, NANOS_PER_DAY)?;
            i32::try_from(nanos.div_euclid(NANOS_PER_DAY)).map_err(|_| format!("date {} is out of range", show(v)))
        }),
        DataType::Timestamp(unit, _) => {
            let per = nanos_per(unit);
            let read = |v: &Value| {
                let nanos = read_instant(v, enc, per)?;
                i64::try_from(nanos.div_euclid(per)).map_err(|_| format!("timestamp {} is out of range", show(v)))
            };
            match unit {
                TimeUnit::Second => primitive::<TimestampSecondType>(data_type, cells, read),
                TimeUnit::Millisecond => primitive::<TimestampMillisecondType>(data_type, cells, read),
                TimeUnit::Microsecond => primitive::<TimestampMicrosecondType>(data_type, cells, read),
                TimeUnit::Nanosecond => primitive::<TimestampNanosecondType>(data_type, cells, read),
            }
        }
        DataType::Time32(unit @ (TimeUnit::Second | TimeUnit::Millisecond)) => {
            let per = nanos_per(unit);
            let read = |v: &Value| Ok((read_time_of_day(v, enc, per)? / per) as i32);
            match unit {
                TimeUnit::Second => primitive::<Time32SecondType>(data_type, cells, read),
                _ => primitive::<Time32MillisecondType>(data_type, cells, read),
            }
        }
        DataType::Time64(unit @ (TimeUnit::Microsecond | TimeUnit::Nanosecond)) => {
            let per = nanos_per(unit);
            let read = |v: &Value| Ok((read_time_of_day(v, enc, per)? / per) as i64);
            match unit {
                TimeUnit::Microsecond => primitive::<Time64MicrosecondType>(data_type, cells, read),
                _ => primitive::<Time64NanosecondType>(data_type, cells, read),
            }
        }
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            primitive::<IntervalMonthDayNanoType>(data_type, cells, |v| read_interval(v, enc))
        }
        DataType::List(item) | DataType::LargeList(item) => build_list(data_type, item, field_type.and_then(|t| t.items.as_deref()), cells),
        other => {
            let failures = cells
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_some())
                .map(|(i, _)| (i, format!("column type {other} is not supported by the Debezium source")))
                .collect();
            (new_null_array(other, cells.len()), failures)
        }
    }
}

fn primitive<T: ArrowPrimitiveType>(
    data_type: &DataType,
    cells: &[Option<&Value>],
    mut read: impl FnMut(&Value) -> Result<T::Native, String>,
) -> (ArrayRef, Failures) {
    let mut b = PrimitiveBuilder::<T>::with_capacity(cells.len()).with_data_type(data_type.clone());
    let mut failures = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        match cell.map(&mut read).transpose() {
            Ok(v) => b.append_option(v),
            Err(e) => {
                failures.push((i, e));
                b.append_null();
            }
        }
    }
    (Arc::new(b.finish()), failures)
}

/// Lists: convert all elements as one child column, then drop the elements of rows that failed
/// (a failed row becomes a null list, and is removed from the batch by the caller).
fn build_list(data_type: &DataType, item: &FieldRef, item_type: Option<&FieldType>, cells: &[Option<&Value>]) -> (ArrayRef, Failures) {
    let mut failures: Failures = Vec::new();
    let mut elements: Vec<Option<&Value>> = Vec::new();
    let mut owner: Vec<usize> = Vec::new();
    let mut spans: Vec<Option<(usize, usize)>> = Vec::with_capacity(cells.len());
    for (i, cell) in cells.iter().enumerate() {
        match cell {
            None => spans.push(None),
            Some(Value::Array(values)) => {
                let start = elements.len();
                for (k, v) in values.iter().enumerate() {
                    if v.is_null() && !item.is_nullable() {
                        failures.push((i, format!("element {k} is null, but elements are NOT NULL")));
                    }
                    elements.push(Some(v).filter(|v| !v.is_null()));
                    owner.push(i);
                }
                spans.push(Some((start, elements.len())));
            }
            Some(other) => {
                failures.push((i, format!("expected an array, got {}", show(other))));
                spans.push(None);
            }
        }
    }
    let (child, child_failures) = build_column(item.data_type(), item_type, &elements);
    for (j, why) in child_failures {
        let row = owner[j];
        let k = j - spans[row].map_or(0, |(start, _)| start);
        failures.push((row, format!("element {k}: {why}")));
    }
    let mut failed = vec![false; cells.len()];
    failures.iter().for_each(|(row, _)| failed[*row] = true);
    let mut offsets = Vec::with_capacity(cells.len() + 1);
    offsets.push(0usize);
    let mut keep: Vec<u32> = Vec::with_capacity(elements.len());
    let mut valid = Vec::with_capacity(cells.len());
    for (row, span) in spans.iter().enumerate() {
        match span {
            Some((start, end)) if !failed[row] => {
                keep.extend(*start as u32..*end as u32);
                valid.push(true);
            }
            _ => valid.push(false),
        }
        offsets.push(keep.len());
    }
    let list = if keep.len() == elements.len() { Ok(child) } else { arrow::compute::take(&child, &UInt32Array::from(keep), None) }
        .and_then(|child| {
            let nulls = Some(NullBuffer::from(valid));
            Ok(match data_type {
                DataType::LargeList(_) => {
                    let offsets = OffsetBuffer::new(offsets.iter().map(|&o| o as i64).collect());
                    Arc::new(LargeListArray::try_new(item.clone(), offsets, child, nulls)?) as ArrayRef
                }
                _ => {
                    let offsets = OffsetBuffer::new(offsets.iter().map(|&o| o as i32).collect());
                    Arc::new(ListArray::try_new(item.clone(), offsets, child, nulls)?) as ArrayRef
                }
            })
        });
    match list {
        Ok(array) => (array, failures),
        Err(e) => {
            let all = (0..cells.len()).filter(|&i| cells[i].is_some()).map(|i| (i, format!("cannot build list: {e}"))).collect();
            (new_null_array(data_type, cells.len()), all)
        }
    }
}

fn nanos_per(unit: &TimeUnit) -> i128 {
    match unit {
        TimeUnit::Second => NANOS_PER_SECOND,
        TimeUnit::Millisecond => NANOS_PER_MILLI,
        TimeUnit::Microsecond => NANOS_PER_MICRO,
        TimeUnit::Nanosecond => 1,
    }
}

fn read_bool(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(format!("expected a boolean, got {}", show(other))),
    }
}

/// An integer: JSON integers, integral floats and numeric strings (64-bit ids are often
/// written as strings because JavaScript cannot hold them); decimals must be integral.
fn read_int<N: TryFrom<i128>>(v: &Value, enc: Encoding, data_type: &DataType) -> Result<N, String> {
    let wide: i128 = match (v, enc) {
        (Value::String(_) | Value::Object(_), Encoding::ConnectDecimal { .. } | Encoding::VariableScaleDecimal) => {
            let (unscaled, scale) = read_decimal(v, enc)?;
            rescale(unscaled, scale, 0)
                .filter(|x| rescale(*x, 0, scale) == Some(unscaled))
                .ok_or_else(|| format!("expected an integer, got {}", format_decimal(unscaled, scale)))?
        }
        (Value::Number(n), _) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i as i128,
            (_, Some(u), _) => u as i128,
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e38 => f as i128,
            _ => return Err(format!("expected an integer, got {n}")),
        },
        (Value::String(s), _) => s.trim().parse::<i128>().map_err(|_| format!("expected an integer, got {}", show(v)))?,
        (other, _) => return Err(format!("expected an integer, got {}", show(other))),
    };
    N::try_from(wide).map_err(|_| format!("value {wide} is out of range for {data_type}"))
}

fn read_float(v: &Value, enc: Encoding) -> Result<f64, String> {
    match (v, enc) {
        (Value::String(_) | Value::Object(_), Encoding::ConnectDecimal { .. } | Encoding::VariableScaleDecimal) => {
            let (unscaled, scale) = read_decimal(v, enc)?;
            Ok(unscaled as f64 / 10f64.powi(scale))
        }
        (Value::Number(n), _) => n.as_f64().ok_or_else(|| format!("expected a number, got {n}")),
        // Connect writes NaN and infinities as strings; Rust parses "NaN", "inf", "Infinity".
        (Value::String(s), _) => s.trim().parse::<f64>().map_err(|_| format!("expected a number, got {}", show(v))),
        (other, _) => Err(format!("expected a number, got {}", show(other))),
    }
}

/// Text columns take strings as they are and any other JSON (json/jsonb values, numbers)
/// serialized, so nothing is lost; decimals are rendered in decimal notation.
fn read_text(v: &Value, enc: Encoding) -> String {
    match (v, enc) {
        (Value::String(_) | Value::Object(_), Encoding::ConnectDecimal { .. } | Encoding::VariableScaleDecimal) => {
            match read_decimal(v, enc) {
                Ok((unscaled, scale)) => format_decimal(unscaled, scale),
                Err(_) => v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()),
            }
        }
        (Value::String(s), _) => s.clone(),
        (other, _) => other.to_string(),
    }
}

fn read_bytes(v: &Value) -> Result<Vec<u8>, String> {
    match v {
        Value::String(s) => base64_decode(s).ok_or_else(|| format!("expected base64-encoded bytes, got {}", show(v))),
        other => Err(format!("expected base64-encoded bytes, got {}", show(other))),
    }
}

/// A decimal as `(unscaled, scale)`.
fn read_decimal(v: &Value, enc: Encoding) -> Result<(i128, i32), String> {
    match (v, enc) {
        (Value::String(s), Encoding::ConnectDecimal { scale }) => {
            let unscaled = base64_decode(s)
                .and_then(|bytes| twos_complement(&bytes))
                .ok_or_else(|| format!("expected a base64-encoded Decimal, got {}", show(v)))?;
            Ok((unscaled, scale))
        }
        // VariableScaleDecimal, recognised by shape even without an envelope schema.
        (Value::Object(o), _) => {
            let scale =
                o.get("scale").and_then(lenient_i64).and_then(|s| i32::try_from(s).ok()).filter(|s| (-MAX_SCALE..=MAX_SCALE).contains(s));
            let unscaled = o.get("value").and_then(Value::as_str).and_then(base64_decode).and_then(|b| twos_complement(&b));
            match (scale, unscaled) {
                (Some(scale), Some(unscaled)) => Ok((unscaled, scale)),
                _ => Err(format!("expected a decimal, got {}", show(v))),
            }
        }
        // decimal.handling.mode=double writes a JSON number; its shortest text form is what
        // the connector meant, so parse that rather than the binary float.
        (Value::Number(n), _) => parse_decimal(&n.to_string()).ok_or_else(|| format!("expected a decimal, got {n}")),
        // decimal.handling.mode=string, or a hand-written file.
        (Value::String(s), _) => parse_decimal(s).ok_or_else(|| format!("expected a decimal, got {}", show(v))),
        (other, _) => Err(format!("expected a decimal, got {}", show(other))),
    }
}

/// Parse `-12.345`, `1e-3`, `+7` into `(unscaled, scale)`.
fn parse_decimal(s: &str) -> Option<(i128, i32)> {
    let s = s.trim();
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(at) => (&s[..at], s[at + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (negative, digits) = match mantissa.as_bytes().first()? {
        b'-' => (true, &mantissa[1..]),
        b'+' => (false, &mantissa[1..]),
        _ => (false, mantissa),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let mut unscaled: i128 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        if !b.is_ascii_digit() {
            return None;
        }
        unscaled = unscaled.checked_mul(10)?.checked_add((b - b'0') as i128)?;
    }
    let scale = i32::try_from(frac_part.len()).ok()?.checked_sub(exponent).filter(|s| (-MAX_SCALE..=MAX_SCALE).contains(s))?;
    Some((if negative { -unscaled } else { unscaled }, scale))
}

/// Change the scale of an unscaled decimal, rounding half away from zero (as Postgres does
/// when a numeric is cast to fewer digits).
fn rescale(unscaled: i128, from: i32, to: i32) -> Option<i128> {
    if to >= from {
        let factor = 10i128.checked_pow(u32::try_from(to.checked_sub(from)?).ok()?)?;
        unscaled.checked_mul(factor)
    } else {
        let Some(divisor) = 10i128.checked_pow(u32::try_from(from.checked_sub(to)?).ok()?) else {
            return Some(0);
        };
        let (q, r) = (unscaled / divisor, unscaled % divisor);
        Some(if r.unsigned_abs() >= divisor.unsigned_abs().div_ceil(2) { q + unscaled.signum() } else { q })
    }
}

fn fit_decimal(unscaled: i128, from: i32, precision: u8, scale: i8) -> Result<i128, String> {
    let limit = 10i128.checked_pow(precision as u32).unwrap_or(i128::MAX);
    match rescale(unscaled, from, scale as i32) {
        Some(v) if v.unsigned_abs() < limit.unsigned_abs() => Ok(v),
        _ => Err(format!("value {} does not fit in Decimal128({precision}, {scale})", format_decimal(unscaled, from))),
    }
}

fn format_decimal(unscaled: i128, scale: i32) -> String {
    if scale <= 0 {
        let zeros = "0".repeat(scale.unsigned_abs() as usize);
        return if unscaled == 0 { "0".into() } else { format!("{unscaled}{zeros}") };
    }
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = if digits.len() <= scale { format!("{}{digits}", "0".repeat(scale - digits.len() + 1)) } else { digits };
    let (int_part, frac_part) = padded.split_at(padded.len() - scale);
    format!("{}{int_part}.{frac_part}", if unscaled < 0 { "-" } else { "" })
}

/// Big-endian two's complement bytes (Kafka Connect's Decimal encoding) as an i128.
fn twos_complement(bytes: &[u8]) -> Option<i128> {
    let Some(&first) = bytes.first() else {
        return Some(0);
    };
    let negative = first & 0x80 != 0;
    let mut bytes = bytes;
    if bytes.len() > 16 {
        // Longer encodings are fine if the extra leading bytes are only sign extension.
        let (head, tail) = bytes.split_at(bytes.len() - 16);
        let sign = if negative { 0xff } else { 0 };
        if head.iter().any(|&b| b != sign) || (tail[0] & 0x80 != 0) != negative {
            return None;
        }
        bytes = tail;
    }
    let mut v: i128 = if negative { -1 } else { 0 };
    for &b in bytes {
        v = (v << 8) | b as i128;
    }
    Some(v)
}

/// Base64 as Debezium and hand-written producers send it: padding optional, and bits past the
/// last byte ignored.
const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent).with_decode_allow_trailing_bits(true);

/// Standard or URL-safe base64, padding optional.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
    STANDARD.decode(s).or_else(|_| URL_SAFE.decode(s)).ok()
}

/// A point in time, in nanoseconds since the epoch. Integers are in the semantic type's unit,
/// or in `plain_unit` (the column's own unit) without one; strings are ISO-8601 dates or
/// timestamps, with an offset (ZonedTimestamp) or without (taken as UTC).
fn read_instant(v: &Value, enc: Encoding, plain_unit: i128) -> Result<i128, String> {
    match v {
        Value::Number(n) => {
            let per = match enc {
                Encoding::Epoch { nanos_per_unit } => nanos_per_unit,
                _ => plain_unit,
            };
            n.as_i64().map(|x| x as i128 * per).ok_or_else(|| format!("expected an integer time value, got {n}"))
        }
        Value::String(s) => parse_instant(s).ok_or_else(|| format!("expected an ISO-8601 date or timestamp, got {}", show(v))),
        other => Err(format!("expected a date or timestamp, got {}", show(other))),
    }
}

fn parse_instant(s: &str) -> Option<i128> {
    let s = s.trim();
    // Date32's parser also accepts a date followed by anything; only take bare dates from it.
    if s.len() <= 10
        && let Some(days) = Date32Type::parse(s)
    {
        return Some(days as i128 * NANOS_PER_DAY);
    }
    let utc: Tz = "+00:00".parse().ok()?;
    let t = string_to_datetime(&utc, s).ok()?;
    Some(t.timestamp() as i128 * NANOS_PER_SECOND + t.timestamp_subsec_nanos() as i128)
}

/// Nanoseconds since midnight: integers in the semantic type's unit (or `plain_unit`), strings
/// like `13:45:00.123456`, with an optional offset or `Z` (ZonedTime), converted to UTC.
fn read_time_of_day(v: &Value, enc: Encoding, plain_unit: i128) -> Result<i128, String> {
    let nanos = match v {
        Value::Number(_) => read_instant(v, enc, plain_unit)?,
        Value::String(s) => parse_time(s).ok_or_else(|| format!("expected a time of day, got {}", show(v)))?,
        other => return Err(format!("expected a time of day, got {}", show(other))),
    };
    // 24:00:00 is a valid Postgres time.
    if !(0..=NANOS_PER_DAY).contains(&nanos) {
        return Err(format!("time of day {} is out of range", show(v)));
    }
    Ok(nanos)
}

fn parse_time(s: &str) -> Option<i128> {
    let s = s.trim();
    let (local, offset_seconds) = if let Some(local) = s.strip_suffix(['Z', 'z']) {
        (local, 0)
    } else if let Some(at) = s.rfind(['+', '-']).filter(|&at| at >= 5) {
        let (hours, minutes) = s[at + 1..].split_once(':').unwrap_or((&s[at + 1..], "0"));
        let seconds = hours.parse::<i64>().ok()? * 3600 + minutes.parse::<i64>().ok()? * 60;
        (&s[..at], if &s[at..=at] == "-" { -seconds } else { seconds })
    } else {
        (s, 0)
    };
    let nanos = if local == "24:00:00" { NANOS_PER_DAY } else { string_to_time_nanoseconds(local).ok()? as i128 };
    if offset_seconds == 0 {
        return Some(nanos);
    }
    Some((nanos - offset_seconds as i128 * NANOS_PER_SECOND).rem_euclid(NANOS_PER_DAY))
}

/// Intervals: integers are microseconds (Debezium's MicroDuration) unless the semantic type
/// says otherwise; strings are ISO-8601 durations (`P1Y2M3DT4H5M6.78S`, Debezium's
/// interval.handling.mode=string) or Postgres-style text (`1 day 02:00:00`).
fn read_interval(v: &Value, enc: Encoding) -> Result<IntervalMonthDayNano, String> {
    match v {
        Value::Number(n) => {
            let per = match enc {
                Encoding::Epoch { nanos_per_unit } => nanos_per_unit,
                _ => NANOS_PER_MICRO,
            };
            n.as_i64()
                .and_then(|x| i64::try_from(x as i128 * per).ok())
                .map(|nanos| IntervalMonthDayNano::new(0, 0, nanos))
                .ok_or_else(|| format!("expected an interval, got {n}"))
        }
        Value::String(s) => parse_iso_duration(s)
            .or_else(|| parse_interval_month_day_nano(s).ok())
            .ok_or_else(|| format!("expected an interval, got {}", show(v))),
        other => Err(format!("expected an interval, got {}", show(other))),
    }
}

fn parse_iso_duration(s: &str) -> Option<IntervalMonthDayNano> {
    let s = s.trim();
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let body = s.strip_prefix(['P', 'p'])?;
    let (date_part, time_part) = match body.split_once(['T', 't']) {
        Some((d, t)) => (d, Some(t)),
        None => (body, None),
    };
    let (mut months, mut days, mut nanos) = (0i64, 0i64, 0i128);
    let int = |n: &str, factor: i64| n.parse::<i64>().ok()?.checked_mul(factor);
    let mut any = false;
    for (part, in_time) in [(date_part, false), (time_part.unwrap_or(""), true)] {
        let mut rest = part;
        while !rest.is_empty() {
            let end = rest.find(|c: char| c.is_ascii_alphabetic())?;
            let number = &rest[..end];
            let unit = rest.as_bytes()[end].to_ascii_uppercase();
            rest = &rest[end + 1..];
            any = true;
            match (in_time, unit) {
                (false, b'Y') => months = months.checked_add(int(number, 12)?)?,
                (false, b'M') => months = months.checked_add(int(number, 1)?)?,
                (false, b'W') => days = days.checked_add(int(number, 7)?)?,
                (false, b'D') => days = days.checked_add(int(number, 1)?)?,
                (true, b'H') => nanos = nanos.checked_add(int(number, 1)? as i128 * 3600 * NANOS_PER_SECOND)?,
                (true, b'M') => nanos = nanos.checked_add(int(number, 1)? as i128 * 60 * NANOS_PER_SECOND)?,
                (true, b'S') => {
                    let (unscaled, scale) = parse_decimal(number)?;
                    nanos = nanos.checked_add(rescale(unscaled, scale, 9)?)?;
                }
                _ => return None,
            }
        }
    }
    if !any {
        return None;
    }
    let sign = if negative { -1 } else { 1 };
    Some(IntervalMonthDayNano::new(
        i32::try_from(months * sign).ok()?,
        i32::try_from(days * sign).ok()?,
        i64::try_from(nanos * sign as i128).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Array, AsArray, BinaryArray, Date32Array, Decimal128Array, Float64Array, Int16Array, Int32Array, Int64Array,
        IntervalMonthDayNanoArray, StringArray, Time64MicrosecondArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{Field, Schema};
    use serde_json::json;

    fn schema(fields: Vec<Field>) -> SchemaRef {
        Arc::new(Schema::new(fields))
    }

    fn rows(values: &[Value]) -> Vec<&Map<String, Value>> {
        values.iter().map(|v| v.as_object().unwrap()).collect()
    }

    /// A column, its semantic type and the type's parameters.
    type Column<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

    fn types(pairs: &[Column]) -> FieldTypes {
        pairs
            .iter()
            .map(|(col, name, params)| {
                let parameters = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                (col.to_string(), FieldType { name: Some(name.to_string()), parameters, ..FieldType::default() })
            })
            .collect()
    }

    #[test]
    fn temporal_conversions_with_semantic_types() {
        let s = schema(vec![
            Field::new("d", DataType::Date32, true),
            Field::new("t_ms", DataType::Time64(TimeUnit::Microsecond), true),
            Field::new("t_us", DataType::Time64(TimeUnit::Microsecond), true),
            Field::new("t_ns", DataType::Time64(TimeUnit::Microsecond), true),
            Field::new("t_zoned", DataType::Time64(TimeUnit::Microsecond), true),
            Field::new("ts_ms", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("ts_us", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("ts_ns", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("ts_zoned", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("dur", DataType::Interval(IntervalUnit::MonthDayNano), true),
        ]);
        let ft = types(&[
            ("d", "io.debezium.time.Date", &[]),
            ("t_ms", "io.debezium.time.Time", &[]),
            ("t_us", "io.debezium.time.MicroTime", &[]),
            ("t_ns", "io.debezium.time.NanoTime", &[]),
            ("t_zoned", "io.debezium.time.ZonedTime", &[]),
            ("ts_ms", "io.debezium.time.Timestamp", &[]),
            ("ts_us", "io.debezium.time.MicroTimestamp", &[]),
            ("ts_ns", "io.debezium.time.NanoTimestamp", &[]),
            ("ts_zoned", "io.debezium.time.ZonedTimestamp", &[]),
            ("dur", "io.debezium.time.MicroDuration", &[]),
        ]);
        // 2024-03-01 12:34:56.789012 UTC
        let us = 1_709_296_496_789_012i64;
        let values = [json!({
            "d": 19783, "t_ms": 45_296_789, "t_us": 45_296_789_012i64, "t_ns": 45_296_789_012_345i64,
            "t_zoned": "12:34:56.789012Z", "ts_ms": us / 1000, "ts_us": us, "ts_ns": us * 1000 + 999,
            "ts_zoned": "2024-03-01T13:34:56.789012+01:00", "dur": 90_000_000i64
        })];
        let (batch, failed) = rows_to_batch(&s, &rows(&values), Some(&ft), &[]);
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(batch.column(0).as_primitive::<Date32Type>().value(0), 19783);
        let times: Vec<i64> = (1..5).map(|c| batch.column(c).as_primitive::<Time64MicrosecondType>().value(0)).collect();
        assert_eq!(times, vec![45_296_789_000, 45_296_789_012, 45_296_789_012, 45_296_789_012]);
        let stamps: Vec<i64> = (5..9).map(|c| batch.column(c).as_primitive::<TimestampMicrosecondType>().value(0)).collect();
        assert_eq!(stamps, vec![us / 1000 * 1000, us, us, us]);
        assert_eq!(batch.column(8).data_type(), &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())));
        let dur = batch.column(9).as_any().downcast_ref::<IntervalMonthDayNanoArray>().unwrap().value(0);
        assert_eq!(dur, IntervalMonthDayNano::new(0, 0, 90_000_000_000));
    }

    #[test]
    fn temporal_conversions_by_arrow_type() {
        let s = schema(vec![
            Field::new("d", DataType::Date32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("t", DataType::Time64(TimeUnit::Microsecond), true),
            Field::new("iv", DataType::Interval(IntervalUnit::MonthDayNano), true),
        ]);
        let values = [
            json!({"d": 19783, "ts": 1_709_296_496_789_012i64, "t": 1_000_000, "iv": "P1Y2M3DT4H5M6.5S"}),
            json!({"d": "2024-03-01", "ts": "2024-03-01T12:34:56.789012Z", "t": "12:34:56.789012", "iv": "-P1D"}),
            json!({"d": "2024-03-01T23:59:59Z", "ts": "2024-03-01 12:34:56.789012", "t": "24:00:00", "iv": "1 day"}),
            json!({"d": "1900-01-01", "ts": "1800-01-01T00:00:00Z"}),
        ];
        let (batch, failed) = rows_to_batch(&s, &rows(&values), None, &[]);
        assert!(failed.is_empty(), "{failed:?}");
        let d = batch.column(0).as_any().downcast_ref::<Date32Array>().unwrap();
        assert_eq!(d.values().to_vec(), vec![19783, 19783, 19783, -25567]);
        let ts = batch.column(1).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        assert_eq!(ts.value(0), 1_709_296_496_789_012);
        assert_eq!(ts.value(1), 1_709_296_496_789_012);
        assert_eq!(ts.value(2), 1_709_296_496_789_012);
        assert_eq!(ts.value(3), -5_364_662_400_000_000);
        let t = batch.column(2).as_any().downcast_ref::<Time64MicrosecondArray>().unwrap();
        assert_eq!((t.value(0), t.value(1), t.value(2)), (1_000_000, 45_296_789_012, 86_400_000_000));
        assert!(t.is_null(3));
        let iv = batch.column(3).as_any().downcast_ref::<IntervalMonthDayNanoArray>().unwrap();
        assert_eq!(iv.value(0), IntervalMonthDayNano::new(14, 3, (4 * 3600 + 5 * 60) * 1_000_000_000 + 6_500_000_000));
        assert_eq!(iv.value(1), IntervalMonthDayNano::new(0, -1, 0));
        assert_eq!(iv.value(2), IntervalMonthDayNano::new(0, 1, 0));

        let bad = [json!({"d": "yesterday"}), json!({"ts": true}), json!({"t": "25:00:00"})];
        let (batch, failed) = rows_to_batch(&s, &rows(&bad), None, &[]);
        assert_eq!(batch.num_rows(), 0);
        assert_eq!(failed[0], (0, "column \"d\": expected an ISO-8601 date or timestamp, got \"yesterday\"".into()));
        assert_eq!(failed[1], (1, "column \"ts\": expected a date or timestamp, got true".into()));
        assert_eq!(failed[2].0, 2);
    }

    #[test]
    fn decimal_conversions() {
        let s = schema(vec![
            Field::new("connect", DataType::Decimal128(10, 2), true),
            Field::new("variable", DataType::Decimal128(10, 2), true),
            Field::new("as_string", DataType::Decimal128(10, 2), true),
            Field::new("as_double", DataType::Decimal128(10, 2), true),
            Field::new("as_float", DataType::Float64, true),
            Field::new("as_text", DataType::Utf8, true),
        ]);
        let ft = types(&[
            ("connect", "org.apache.kafka.connect.data.Decimal", &[("scale", "2")]),
            ("variable", "io.debezium.data.VariableScaleDecimal", &[]),
            ("as_float", "org.apache.kafka.connect.data.Decimal", &[("scale", "2")]),
            ("as_text", "org.apache.kafka.connect.data.Decimal", &[("scale", "2")]),
        ]);
        // "BNI=" is 0x04D2 = 1234 -> 12.34; "+2A=" is 0xFB60 = -1184 -> -11.84.
        let values = [
            json!({"connect": "BNI=", "variable": {"scale": 3, "value": "MDk="}, "as_string": "12.345",
                   "as_double": 12.34, "as_float": "BNI=", "as_text": "+2A="}),
            json!({"connect": "+2A=", "variable": {"scale": 0, "value": "Bw=="}, "as_string": "-0.005",
                   "as_double": 1e3, "as_float": "+2A=", "as_text": "BNI="}),
        ];
        let (batch, failed) = rows_to_batch(&s, &rows(&values), Some(&ft), &[]);
        assert!(failed.is_empty(), "{failed:?}");
        let dec = |c: usize| batch.column(c).as_any().downcast_ref::<Decimal128Array>().unwrap().values().to_vec();
        assert_eq!(dec(0), vec![1234, -1184]);
        // 0x3039 = 12345 at scale 3 = 12.345 -> 12.35 (half away from zero); 7 -> 7.00
        assert_eq!(dec(1), vec![1235, 700]);
        assert_eq!(dec(2), vec![1235, -1]);
        assert_eq!(dec(3), vec![1234, 100000]);
        let f = batch.column(4).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!((f.value(0), f.value(1)), (12.34, -11.84));
        let t = batch.column(5).as_string::<i32>();
        assert_eq!((t.value(0), t.value(1)), ("-11.84", "12.34"));

        let bad = [json!({"connect": "!!"}), json!({"as_string": "abc"}), json!({"as_string": "123456789.1"})];
        let (batch, failed) = rows_to_batch(&s, &rows(&bad), Some(&ft), &[]);
        assert_eq!(batch.num_rows(), 0);
        assert_eq!(failed[0].1, "column \"connect\": expected a base64-encoded Decimal, got \"!!\"");
        assert_eq!(failed[1].1, "column \"as_string\": expected a decimal, got \"abc\"");
        assert_eq!(failed[2].1, "column \"as_string\": value 123456789.1 does not fit in Decimal128(10, 2)");
    }

    #[test]
    fn decimal_helpers() {
        assert_eq!(parse_decimal("1e-3"), Some((1, 3)));
        assert_eq!(parse_decimal("-1.5E2"), Some((-15, -1)));
        assert_eq!(parse_decimal("."), None);
        assert_eq!(parse_decimal("NaN"), None);
        assert_eq!(rescale(-15, 1, 0), Some(-2));
        assert_eq!(rescale(14, 1, 0), Some(1));
        assert_eq!(rescale(1, 0, 40), None);
        assert_eq!(format_decimal(5, 3), "0.005");
        assert_eq!(format_decimal(-5, 3), "-0.005");
        assert_eq!(format_decimal(12, -2), "1200");
        let mut long = vec![0xff; 20];
        long[19] = 0xfe;
        assert_eq!(twos_complement(&long), Some(-2));
        assert_eq!(twos_complement(&[0x01; 20]), None);
        assert_eq!(base64_decode("aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64_decode("a"), None);
        assert_eq!(base64_decode("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(base64_decode("+/8="), Some(vec![0xfb, 0xff]));
        assert_eq!(base64_decode("aGVsbG9"), Some(b"hello".to_vec()));
        // Hostile scales and exponents are rejected, not rendered or overflowed.
        assert_eq!(parse_decimal("1e-2147483648"), None);
        assert_eq!(parse_decimal("1e99999"), None);
        assert_eq!(rescale(1, i32::MIN, i32::MAX), None);
        let v = json!({"scale": -2147483648i64, "value": "AQ=="});
        assert!(read_decimal(&v, Encoding::Plain).is_err());
        assert_eq!(parse_iso_duration("P9223372036854775807Y"), None);
    }

    #[test]
    fn scalar_types_json_binary_and_lists() {
        let s = schema(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("small", DataType::Int16, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("doc", DataType::Utf8, true),
            Field::new("blob", DataType::Binary, true),
            Field::new("tags", DataType::List(Arc::new(Field::new("item", DataType::Int32, false))), true),
        ]);
        let values = [
            json!({"id": 1, "small": 7, "ok": true, "doc": "{\"a\":1}", "blob": "aGVsbG8=", "tags": [1, 2]}),
            json!({"id": "9007199254740993", "small": 7.0, "ok": "false", "doc": {"a": [1, 2]}, "tags": []}),
            json!({"id": 3, "doc": 12.5, "extra": "ignored"}),
        ];
        let (batch, failed) = rows_to_batch(&s, &rows(&values), None, &[0]);
        assert!(failed.is_empty(), "{failed:?}");
        let ids = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values().to_vec(), vec![1, 9007199254740993, 3]);
        let small = batch.column(1).as_any().downcast_ref::<Int16Array>().unwrap();
        assert_eq!((small.value(1), small.is_null(2)), (7, true));
        let doc = batch.column(3).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((doc.value(0), doc.value(1), doc.value(2)), ("{\"a\":1}", "{\"a\":[1,2]}", "12.5"));
        let blob = batch.column(4).as_any().downcast_ref::<BinaryArray>().unwrap();
        assert_eq!((blob.value(0), blob.is_null(1)), (&b"hello"[..], true));
        let tags = batch.column(5).as_list::<i32>();
        let first = tags.value(0);
        assert_eq!(first.as_any().downcast_ref::<Int32Array>().unwrap().values().to_vec(), vec![1, 2]);
        assert_eq!((tags.value_length(1), tags.is_null(2)), (0, true));
    }

    #[test]
    fn bad_rows_are_returned_with_reasons_and_left_out() {
        let s = schema(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("weight", DataType::Float64, true),
            Field::new("small", DataType::Int16, true),
            Field::new("name", DataType::Utf8, false),
            Field::new("tags", DataType::List(Arc::new(Field::new("item", DataType::Int32, false))), true),
        ]);
        let values = [
            json!({"id": 1, "weight": 1.5, "name": "a", "tags": [1]}),
            json!({"id": 2, "weight": "abc", "name": "b", "tags": [2, 3]}),
            json!({"weight": 2.0, "name": "c"}),
            json!({"id": null, "name": "d"}),
            json!({"id": 5, "small": 70000, "name": "e"}),
            json!({"id": 6, "name": null}),
            json!({"id": 7}),
            json!({"id": 8, "name": "h", "tags": [1, "x"]}),
            json!({"id": 9, "name": "i", "tags": [1, null]}),
            json!({"id": 10, "name": "j", "tags": [4, 5]}),
            json!({"id": 1.5, "name": "k"}),
        ];
        let (batch, failed) = rows_to_batch(&s, &rows(&values), None, &[0]);
        let reasons: Vec<(usize, &str)> = failed.iter().map(|(i, r)| (*i, r.as_str())).collect();
        assert_eq!(
            reasons,
            vec![
                (1, "column \"weight\": expected a number, got \"abc\""),
                (2, "missing primary key column \"id\""),
                (3, "primary key column \"id\" is null"),
                (4, "column \"small\": value 70000 is out of range for Int16"),
                (5, "column \"name\": null, but the column is NOT NULL"),
                (6, "missing column \"name\", which is NOT NULL"),
                (7, "column \"tags\": element 1: expected an integer, got \"x\""),
                (8, "column \"tags\": element 1 is null, but elements are NOT NULL"),
                (10, "column \"id\": expected an integer, got 1.5"),
            ]
        );
        assert_eq!(batch.num_rows(), 2);
        let ids = batch.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!(ids.values().to_vec(), vec![1, 10]);
        let tags = batch.column(4).as_list::<i32>();
        assert_eq!(tags.value(1).as_any().downcast_ref::<Int32Array>().unwrap().values().to_vec(), vec![4, 5]);
    }
}
