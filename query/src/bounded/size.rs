//! Sizes: of Arrow arrays and columnar values as the bound counts them, and the estimate of a
//! scalar function's result from its arguments, before it is called.

use super::*;

/// Human-readable bytes.
pub(super) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The bytes that the values of `a` take (its slice, not the buffers it shares).
pub fn array_bytes(a: &dyn Array) -> u64 {
    let n = a.len() as u64;
    let nulls = if a.null_count() > 0 { n.div_ceil(8) } else { 0 };
    nulls
        + match a.data_type() {
            DataType::Utf8 => {
                let o = a.as_string::<i32>().offsets();
                (o[o.len() - 1] - o[0]) as u64 + 4 * n
            }
            DataType::LargeUtf8 => {
                let o = a.as_string::<i64>().offsets();
                (o[o.len() - 1] - o[0]) as u64 + 8 * n
            }
            DataType::Binary => {
                let o = a.as_binary::<i32>().offsets();
                (o[o.len() - 1] - o[0]) as u64 + 4 * n
            }
            DataType::LargeBinary => {
                let o = a.as_binary::<i64>().offsets();
                (o[o.len() - 1] - o[0]) as u64 + 8 * n
            }
            DataType::Utf8View => {
                let v = a.as_string_view();
                v.lengths().map(u64::from).sum::<u64>() + 16 * n
            }
            DataType::BinaryView => {
                let v = a.as_binary_view();
                v.lengths().map(u64::from).sum::<u64>() + 16 * n
            }
            DataType::List(_) => {
                let l = a.as_list::<i32>();
                let o = l.offsets();
                let (first, last) = (o[0] as usize, o[o.len() - 1] as usize);
                array_bytes(l.values().slice(first, last - first).as_ref()) + 4 * n
            }
            DataType::LargeList(_) => {
                let l = a.as_list::<i64>();
                let o = l.offsets();
                let (first, last) = (o[0] as usize, o[o.len() - 1] as usize);
                array_bytes(l.values().slice(first, last - first).as_ref()) + 8 * n
            }
            DataType::FixedSizeList(_, size) => {
                let l = a.as_fixed_size_list();
                let size = (*size).max(0) as usize;
                array_bytes(l.values().slice(l.offset() * size, a.len() * size).as_ref())
            }
            DataType::Map(..) => {
                let m = a.as_map();
                let o = m.offsets();
                let (first, last) = (o[0] as usize, o[o.len() - 1] as usize);
                let entries: ArrayRef = Arc::new(m.entries().clone());
                array_bytes(entries.slice(first, last - first).as_ref()) + 4 * n
            }
            DataType::Struct(_) => a
                .as_struct()
                .columns()
                .iter()
                .map(|c| array_bytes(c.as_ref()))
                .sum(),
            t => match fixed_row_bytes(t) {
                Some(w) => w * n,
                None => a.get_array_memory_size() as u64,
            },
        }
}

/// The bytes of a batch's rows: [`array_bytes`] of each column. Not `get_array_memory_size`, which
/// counts a shared allocation (a batch decoded from one IPC message) once per buffer.
pub fn batch_bytes(b: &datafusion::arrow::array::RecordBatch) -> u64 {
    b.columns().iter().map(|c| array_bytes(c.as_ref())).sum()
}

/// The bytes of a value, counted `rows` times when it is a scalar (which stands for that many).
pub fn value_bytes(v: &ColumnarValue, rows: usize) -> u64 {
    match v {
        ColumnarValue::Array(a) => array_bytes(a.as_ref()),
        ColumnarValue::Scalar(s) => scalar_bytes(s).saturating_mul(rows as u64),
    }
}

pub(super) fn scalar_bytes(s: &ScalarValue) -> u64 {
    match s.to_array_of_size(1) {
        Ok(a) => array_bytes(a.as_ref()),
        Err(_) => s.size() as u64,
    }
}

/// The longest value of a string or binary argument, bytes (other types: their widest row).
pub(super) fn max_len(v: &ColumnarValue) -> u64 {
    let a = match v {
        ColumnarValue::Scalar(s) => return scalar_bytes(s),
        ColumnarValue::Array(a) => a,
    };
    let as_binary = cast(a, &DataType::LargeBinary);
    match as_binary {
        Ok(b) => b
            .as_binary::<i64>()
            .offsets()
            .windows(2)
            .map(|w| (w[1] - w[0]) as u64)
            .max()
            .unwrap_or(0),
        Err(_) => array_bytes(a.as_ref()) / (a.len().max(1) as u64) + 16,
    }
}

/// The shortest value of a string argument, bytes (0 when any is empty or NULL).
pub(super) fn min_len(v: &ColumnarValue) -> u64 {
    match v {
        ColumnarValue::Scalar(s) => scalar_bytes(s),
        ColumnarValue::Array(a) => match cast(a, &DataType::LargeBinary) {
            Ok(b) => b
                .as_binary::<i64>()
                .offsets()
                .windows(2)
                .map(|w| (w[1] - w[0]) as u64)
                .min()
                .unwrap_or(0),
            Err(_) => 0,
        },
    }
}

/// The values of an integer argument (a scalar stands for every row), NULLs as 0.
pub(super) fn ints(v: &ColumnarValue, rows: usize) -> Vec<i64> {
    let one = |s: &ScalarValue| {
        s.cast_to(&DataType::Int64)
            .ok()
            .and_then(|v| match v {
                ScalarValue::Int64(Some(n)) => Some(n),
                _ => None,
            })
            .unwrap_or(0)
    };
    match v {
        ColumnarValue::Scalar(s) => vec![one(s); rows.max(1)],
        ColumnarValue::Array(a) => match cast(a, &DataType::Int64) {
            Ok(c) => c
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.unwrap_or(0))
                .collect(),
            Err(_) => vec![i64::MAX; a.len()],
        },
    }
}

pub(super) fn max_int(v: &ColumnarValue, rows: usize) -> u64 {
    ints(v, rows).into_iter().max().unwrap_or(0).max(0) as u64
}

/// The elements of a list argument in all rows.
pub(super) fn list_elements(v: &ColumnarValue, rows: usize) -> u64 {
    let (a, times) = match v {
        ColumnarValue::Array(a) => (a.clone(), 1),
        ColumnarValue::Scalar(s) => match s.to_array_of_size(1) {
            Ok(a) => (a, rows.max(1) as u64),
            Err(_) => return 0,
        },
    };
    let n = match a.data_type() {
        DataType::List(_) => {
            let o = a.as_list::<i32>().offsets();
            (o[o.len() - 1] - o[0]) as u64
        }
        DataType::LargeList(_) => {
            let o = a.as_list::<i64>().offsets();
            (o[o.len() - 1] - o[0]) as u64
        }
        DataType::FixedSizeList(_, size) => a.len() as u64 * (*size).max(0) as u64,
        _ => a.len() as u64,
    };
    n.saturating_mul(times)
}

/// The elements of `range`/`generate_series` (the array function) over all rows: integers exactly,
/// dates and timestamps by their smallest possible step.
pub(super) fn series_elements(args: &[ColumnarValue], rows: usize) -> u64 {
    let ty = args[0].data_type();
    let nanos = |v: &ColumnarValue| -> Vec<i64> {
        let ts = DataType::Timestamp(TimeUnit::Nanosecond, None);
        let c = match v {
            ColumnarValue::Scalar(s) => s
                .cast_to(&ts)
                .and_then(|s| s.to_array_of_size(rows.max(1)))
                .ok(),
            ColumnarValue::Array(a) => cast(a, &ts).ok(),
        };
        match c.and_then(|c| cast(&c, &DataType::Int64).ok()) {
            Some(c) => c
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.unwrap_or(0))
                .collect(),
            None => vec![0; rows.max(1)],
        }
    };
    let (start, stop, step) = match (ty.is_integer(), args.len()) {
        (true, 1) => (
            vec![0; rows.max(1)],
            ints(&args[0], rows),
            vec![1; rows.max(1)],
        ),
        (true, 2) => (
            ints(&args[0], rows),
            ints(&args[1], rows),
            vec![1; rows.max(1)],
        ),
        (true, _) => (
            ints(&args[0], rows),
            ints(&args[1], rows),
            ints(&args[2], rows),
        ),
        (false, 3) => {
            // Steps are intervals: the shortest a step can be (a month is 28 days at least).
            let steps = match &args[2] {
                ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(i))) => {
                    let ns = i64::from(i.months) * 28 * 86_400_000_000_000
                        + i64::from(i.days) * 86_400_000_000_000
                        + i.nanoseconds;
                    vec![ns; rows.max(1)]
                }
                ColumnarValue::Scalar(ScalarValue::IntervalDayTime(Some(i))) => {
                    let ns = i64::from(i.days) * 86_400_000_000_000
                        + i64::from(i.milliseconds) * 1_000_000;
                    vec![ns; rows.max(1)]
                }
                ColumnarValue::Scalar(ScalarValue::IntervalYearMonth(Some(m))) => {
                    vec![i64::from(*m) * 28 * 86_400_000_000_000; rows.max(1)]
                }
                // A step per row, or one of another kind: assume the finest (a nanosecond).
                _ => vec![1; rows.max(1)],
            };
            (nanos(&args[0]), nanos(&args[1]), steps)
        }
        // Dates with the default step (a day).
        (false, _) => (
            nanos(&args[0]),
            nanos(&args[1]),
            vec![86_400_000_000_000; rows.max(1)],
        ),
    };
    start
        .iter()
        .zip(&stop)
        .zip(&step)
        .map(|((a, b), s)| {
            let span = i128::from(*b) - i128::from(*a);
            let s = i128::from(*s);
            if s == 0 || (span != 0 && span.signum() != s.signum()) {
                1
            } else {
                (span / s).unsigned_abs() as u64 + 1
            }
        })
        .fold(0u64, u64::saturating_add)
}

/// An upper bound of the bytes a call of `name` builds from `args` over `rows` rows.
pub(super) fn estimate(name: &str, args: &[ColumnarValue], rows: usize) -> u64 {
    let bytes = |i: usize| args.get(i).map_or(0, |a| value_bytes(a, rows));
    let longest = |i: usize| args.get(i).map_or(0, max_len);
    let count = |i: usize| args.get(i).map_or(0, |a| max_int(a, rows));
    let rows64 = rows.max(1) as u64;
    let all: u64 = (0..args.len()).map(bytes).fold(0, u64::saturating_add);
    match name {
        "repeat" => bytes(0).saturating_mul(count(1)),
        // Characters, up to 4 bytes each.
        "lpad" | "rpad" => rows64.saturating_mul(count(1)).saturating_mul(4),
        "replace" => {
            // An empty `from` matches between every two bytes.
            let from = args.get(1).map_or(0, min_len);
            let matches = bytes(0).checked_div(from).unwrap_or(bytes(0)) + rows64;
            bytes(0).saturating_add(matches.saturating_mul(longest(2)))
        }
        // Every match (at most one per byte and one more) becomes the replacement, whose group
        // references copy at most the whole input each.
        "regexp_replace" => (bytes(0) + rows64).saturating_mul(2 * longest(2) + 1),
        "array_repeat" => (bytes(0) + 8 * rows64).saturating_mul(count(1)),
        "range" | "generate_series" => {
            if args.is_empty() {
                0
            } else {
                series_elements(args, rows).saturating_mul(8) + 8 * rows64
            }
        }
        "array_resize" => {
            let per = args.get(2).map_or(8, |v| max_len(v) + 8);
            bytes(0).saturating_add(rows64.saturating_mul(count(1)).saturating_mul(per))
        }
        "array_to_string" => {
            let per = longest(1) + longest(2);
            bytes(0).saturating_add(list_elements(&args[0], rows).saturating_mul(per))
        }
        "array_replace" | "array_replace_n" | "array_replace_all" => {
            let per = longest(2) + 8;
            bytes(0).saturating_add(
                args.first()
                    .map_or(0, |a| list_elements(a, rows))
                    .saturating_mul(per),
            )
        }
        "concat_ws" => all.saturating_add((args.len() as u64).saturating_mul(bytes(0))),
        // Each byte may become an element of its own (offsets, validity).
        "string_to_array" => bytes(0).saturating_mul(9) + 8 * rows64,
        "h3_grid_disk" => {
            let k = count(1).min(crate::udf::MAX_DISK_K as u64);
            rows64.saturating_mul(3 * k * (k + 1) + 1).saturating_mul(8)
        }
        _ => all,
    }
}
