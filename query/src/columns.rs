//! Reading the columns of the service's own query answers, cast to the type wanted; a column
//! the answer lacks reads as NULLs (zeros, empty strings).

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};

pub(crate) fn f64s(b: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    let Some(c) = b.column_by_name(name) else {
        return vec![None; b.num_rows()];
    };
    let c = cast(c, &DataType::Float64).expect("numeric column");
    c.as_primitive::<Float64Type>().iter().collect()
}

pub(crate) fn u64s(b: &RecordBatch, name: &str) -> Vec<u64> {
    let Some(c) = b.column_by_name(name) else {
        return vec![0; b.num_rows()];
    };
    let c = cast(c, &DataType::UInt64).expect("integer column");
    c.as_primitive::<UInt64Type>()
        .iter()
        .map(|v| v.unwrap_or(0))
        .collect()
}

pub(crate) fn i64s(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let Some(c) = b.column_by_name(name) else {
        return vec![None; b.num_rows()];
    };
    let c = cast(c, &DataType::Int64).expect("integer column");
    c.as_primitive::<Int64Type>().iter().collect()
}

pub(crate) fn strs(b: &RecordBatch, name: &str) -> Vec<String> {
    let Some(c) = b.column_by_name(name) else {
        return vec![String::new(); b.num_rows()];
    };
    let c = cast(c, &DataType::Utf8).expect("text column");
    c.as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect()
}
