//! Reading the published lake back: what accounting and tests compare against what was sent.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type, UInt64Type};
use hexpulse_schemas::tables;
use hexpulse_schemas::wire::KindName;

use hexpulse_lake::{Lake, LakeError, column, decode_parquet};

/// One valid row: (table, device key hex, seq, partition, offset).
pub type ValidEntry = (String, String, u64, i32, i64);
/// One rejected row: (raw record value, reason, partition, offset).
pub type RejectedEntry = (Vec<u8>, String, i32, i64);

/// Every published row, reduced to what identifies it.
#[derive(Debug, Default, Clone)]
pub struct LakeSummary {
    pub valid: Vec<ValidEntry>,
    pub rejected: Vec<RejectedEntry>,
    pub files: usize,
}

impl LakeSummary {
    /// Distinct (partition, offset) pairs among all rows; equal to the record count when nothing is
    /// stored twice (sensor readings span several rows with the same provenance).
    pub fn distinct_records(&self) -> usize {
        let mut v: Vec<(i32, i64)> = self
            .valid
            .iter()
            .map(|v| (v.3, v.4))
            .chain(self.rejected.iter().map(|r| (r.2, r.3)))
            .collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    }
}

/// Reads every valid file (see [`hexpulse_lake::compact`]) of the valid and rejected tables.
pub async fn summarize(lake: &Lake) -> Result<LakeSummary, LakeError> {
    let mut s = LakeSummary::default();
    for table in KindName::ALL
        .map(|k| k.as_str())
        .into_iter()
        .chain([tables::REJECTED_TABLE])
    {
        for path in hexpulse_lake::compact::valid_files(lake, table).await? {
            let Some(bytes) = lake.get(&path).await? else {
                continue;
            };
            s.files += 1;
            let cols: &[&str] = if table == tables::REJECTED_TABLE {
                &["raw", "reason", "src_partition", "src_offset"]
            } else {
                &["device_key", "seq", "src_partition", "src_offset"]
            };
            for b in decode_parquet(bytes, Some(cols))? {
                let part = column(&b, "src_partition").as_primitive::<Int32Type>();
                let off = column(&b, "src_offset").as_primitive::<Int64Type>();
                if table == tables::REJECTED_TABLE {
                    let raw = column(&b, "raw").as_binary::<i32>();
                    let reason = column(&b, "reason").as_string::<i32>();
                    for i in 0..b.num_rows() {
                        s.rejected.push((
                            raw.value(i).to_vec(),
                            reason.value(i).to_string(),
                            part.value(i),
                            off.value(i),
                        ));
                    }
                } else {
                    let key = column(&b, "device_key").as_string::<i32>();
                    let seq = column(&b, "seq").as_primitive::<UInt64Type>();
                    for i in 0..b.num_rows() {
                        if !seq.is_null(i) {
                            s.valid.push((
                                table.to_string(),
                                key.value(i).to_string(),
                                seq.value(i),
                                part.value(i),
                                off.value(i),
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(s)
}
