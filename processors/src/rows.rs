//! Turning verdicts into Arrow record batches of the lake tables (schemas in `hexpulse_schemas::tables`).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMillisecondBuilder, UInt32Array, UInt64Builder,
};
use arrow::error::ArrowError;
use hexpulse_schemas::json::{metric_name, observation_name, radio_name};
use hexpulse_schemas::tables;
use hexpulse_schemas::wire::{Kind, KindName, Metric, ObservationType, RadioTech};

use crate::validate::ValidReading;

/// Where a row came from.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub partition: i32,
    pub offset: i64,
    pub receive_ms: i64,
}

/// A valid reading with its H3 cells (one per configured resolution, same order).
#[derive(Debug, Clone)]
pub struct ValidRow {
    pub src: Source,
    pub valid: ValidReading,
    pub cells: crate::h3bin::Cells,
}

/// A rejected record.
#[derive(Debug, Clone)]
pub struct RejectedRow {
    pub src: Source,
    pub raw: bytes::Bytes,
    pub event_ms: Option<i64>,
    pub key: Option<[u8; 32]>,
    pub seq: Option<u64>,
    pub kind: Option<KindName>,
    pub reason: &'static str,
    pub message: String,
}

/// The unit of a metric, as stored in the `sensor` table.
pub fn metric_unit(m: Metric) -> &'static str {
    match m {
        Metric::Pm25 | Metric::Pm10 => "ug/m3",
        Metric::No2 | Metric::O3 => "ppb",
        Metric::Co2 => "ppm",
        Metric::NoiseDb => "dBA",
        Metric::TemperatureC => "C",
        Metric::HumidityPct => "pct",
        Metric::Unspecified => "",
    }
}

/// Column context shared by every table of one write.
pub struct Ctx<'a> {
    pub topic: &'a str,
    pub rules_version: &'a str,
    pub resolutions: &'a [u8],
}

/// The table rows a valid reading makes: one per measurement for a sensor reading, else one.
pub fn rows_of(r: &ValidRow) -> usize {
    match &r.valid.reading.kind {
        Some(Kind::Sensor(s)) => s.measurements.len(),
        _ => 1,
    }
}

/// The common leading columns for `rows` (each row repeated `repeat(row)` times, for sensor metrics).
fn common_columns(
    rows: &[&ValidRow],
    repeat: impl Fn(&ValidRow) -> usize,
    ctx: &Ctx<'_>,
) -> Vec<ArrayRef> {
    let n: usize = rows.iter().map(|r| repeat(r)).sum();
    let mut event = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut recv = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut key = StringBuilder::with_capacity(n, n * 64);
    let mut seq = UInt64Builder::with_capacity(n);
    let mut lat = Float64Builder::with_capacity(n);
    let mut lng = Float64Builder::with_capacity(n);
    let mut acc = Float32Builder::with_capacity(n);
    let mut dist = Float64Builder::with_capacity(n);
    let mut cells: Vec<UInt64Builder> = ctx
        .resolutions
        .iter()
        .map(|_| UInt64Builder::with_capacity(n))
        .collect();
    let mut topic = StringBuilder::with_capacity(n, n * ctx.topic.len());
    let mut part = Int32Builder::with_capacity(n);
    let mut off = Int64Builder::with_capacity(n);
    let mut rules = StringBuilder::with_capacity(n, n * ctx.rules_version.len());
    let mut hexbuf = [0u8; 64];
    for r in rows {
        let loc = r.valid.reading.location.unwrap_or_default();
        hex::encode_to_slice(r.valid.key, &mut hexbuf).expect("64 hex chars");
        let key_hex = std::str::from_utf8(&hexbuf).expect("hex is ascii");
        for _ in 0..repeat(r) {
            event.append_value(r.valid.reading.device_time_ms);
            recv.append_value(r.src.receive_ms);
            key.append_value(key_hex);
            seq.append_value(r.valid.reading.seq);
            lat.append_value(loc.lat);
            lng.append_value(loc.lng);
            acc.append_value(loc.accuracy_m);
            dist.append_value(r.valid.asserted_distance_m);
            for (b, c) in cells.iter_mut().zip(r.cells.iter()) {
                b.append_value(*c);
            }
            topic.append_value(ctx.topic);
            part.append_value(r.src.partition);
            off.append_value(r.src.offset);
            rules.append_value(ctx.rules_version);
        }
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(event.finish()),
        Arc::new(recv.finish()),
        Arc::new(key.finish()),
        Arc::new(seq.finish()),
        Arc::new(lat.finish()),
        Arc::new(lng.finish()),
        Arc::new(acc.finish()),
        Arc::new(dist.finish()),
    ];
    cols.extend(cells.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    cols.extend([
        Arc::new(topic.finish()) as ArrayRef,
        Arc::new(part.finish()),
        Arc::new(off.finish()),
        Arc::new(rules.finish()),
    ]);
    cols
}

/// Record batch of `table` for `rows` (all of that table's kind).
pub fn valid_batch(
    table: KindName,
    rows: &[&ValidRow],
    ctx: &Ctx<'_>,
) -> Result<RecordBatch, ArrowError> {
    match table {
        KindName::Heartbeat => {
            let mut cols = common_columns(rows, rows_of, ctx);
            let mut radio = StringBuilder::new();
            let mut signal = Float32Builder::new();
            let (mut down, mut up, mut lat) = (
                Float32Builder::new(),
                Float32Builder::new(),
                Float32Builder::new(),
            );
            for r in rows {
                let Some(Kind::Heartbeat(h)) = &r.valid.reading.kind else {
                    unreachable!("heartbeat rows")
                };
                radio.append_value(radio_name(
                    RadioTech::try_from(h.radio).unwrap_or(RadioTech::Unspecified),
                ));
                signal.append_value(h.signal_dbm);
                down.append_option(h.speed_test.map(|s| s.download_mbps));
                up.append_option(h.speed_test.map(|s| s.upload_mbps));
                lat.append_option(h.speed_test.map(|s| s.latency_ms));
            }
            cols.extend([
                Arc::new(radio.finish()) as ArrayRef,
                Arc::new(signal.finish()),
                Arc::new(down.finish()),
                Arc::new(up.finish()),
                Arc::new(lat.finish()),
            ]);
            RecordBatch::try_new(tables::heartbeat_schema(ctx.resolutions), cols)
        }
        KindName::Sensor => {
            let mut cols = common_columns(rows, rows_of, ctx);
            let (mut metric, mut value, mut unit) = (
                StringBuilder::new(),
                Float64Builder::new(),
                StringBuilder::new(),
            );
            for r in rows {
                let Some(Kind::Sensor(s)) = &r.valid.reading.kind else {
                    unreachable!("sensor rows")
                };
                for m in &s.measurements {
                    let mm = Metric::try_from(m.metric).unwrap_or(Metric::Unspecified);
                    metric.append_value(metric_name(mm));
                    value.append_value(m.value);
                    unit.append_value(metric_unit(mm));
                }
            }
            cols.extend([
                Arc::new(metric.finish()) as ArrayRef,
                Arc::new(value.finish()),
                Arc::new(unit.finish()),
            ]);
            RecordBatch::try_new(tables::sensor_schema(ctx.resolutions), cols)
        }
        KindName::Road => {
            let mut cols = common_columns(rows, rows_of, ctx);
            let (mut obs, mut heading, mut speed, mut conf) = (
                StringBuilder::new(),
                Float32Builder::new(),
                Float32Builder::new(),
                Float32Builder::new(),
            );
            for r in rows {
                let Some(Kind::Road(x)) = &r.valid.reading.kind else {
                    unreachable!("road rows")
                };
                obs.append_value(observation_name(
                    ObservationType::try_from(x.observation)
                        .unwrap_or(ObservationType::Unspecified),
                ));
                heading.append_value(x.heading_deg);
                speed.append_value(x.speed_kmh);
                conf.append_value(x.confidence);
            }
            cols.extend([
                Arc::new(obs.finish()) as ArrayRef,
                Arc::new(heading.finish()),
                Arc::new(speed.finish()),
                Arc::new(conf.finish()),
            ]);
            RecordBatch::try_new(tables::road_schema(ctx.resolutions), cols)
        }
    }
}

/// The batch of one unit file of `table`: `rows` (in arrival order) sorted by their cell at the
/// resolution `coarse` indexes, then device time, then offset, so that filters prune well. Offsets
/// are unique in a unit, so the order is total.
///
/// The columns are built in arrival order, in which the rows lie in memory, and then reordered with
/// a compact sort key; building them in sorted order read every row at random, a cache miss each.
pub fn sorted_valid_batch(
    table: KindName,
    rows: &[&ValidRow],
    coarse: usize,
    ctx: &Ctx<'_>,
) -> Result<RecordBatch, ArrowError> {
    let batch = valid_batch(table, rows, ctx)?;
    // (cell, device time, offset, first batch row, batch rows) per reading.
    let mut first = 0u32;
    let mut order: Vec<(u64, i64, i64, u32, u32)> = rows
        .iter()
        .map(|r| {
            let n = rows_of(r) as u32;
            first += n;
            (
                r.cells[coarse],
                r.valid.reading.device_time_ms,
                r.src.offset,
                first - n,
                n,
            )
        })
        .collect();
    order.sort_unstable_by_key(|o| (o.0, o.1, o.2));
    if order.windows(2).all(|w| w[0].3 < w[1].3) {
        return Ok(batch);
    }
    let indices: UInt32Array = order
        .iter()
        .flat_map(|o| o.3..o.3 + o.4)
        .collect::<Vec<u32>>()
        .into();
    arrow::compute::take_record_batch(&batch, &indices)
}

/// Record batch of the `rejected` table.
pub fn rejected_batch(rows: &[&RejectedRow], ctx: &Ctx<'_>) -> Result<RecordBatch, ArrowError> {
    let mut recv = TimestampMillisecondBuilder::new().with_timezone("UTC");
    let mut event = TimestampMillisecondBuilder::new().with_timezone("UTC");
    let (mut key, mut seq, mut kind) = (
        StringBuilder::new(),
        UInt64Builder::new(),
        StringBuilder::new(),
    );
    let (mut reason, mut message, mut raw) = (
        StringBuilder::new(),
        StringBuilder::new(),
        BinaryBuilder::new(),
    );
    let (mut topic, mut part, mut off, mut rules) = (
        StringBuilder::new(),
        Int32Builder::new(),
        Int64Builder::new(),
        StringBuilder::new(),
    );
    for r in rows {
        recv.append_value(r.src.receive_ms);
        event.append_option(r.event_ms);
        key.append_option(r.key.map(hex::encode));
        seq.append_option(r.seq);
        kind.append_option(r.kind.map(|k| k.as_str()));
        reason.append_value(r.reason);
        message.append_value(&r.message);
        raw.append_value(&r.raw);
        topic.append_value(ctx.topic);
        part.append_value(r.src.partition);
        off.append_value(r.src.offset);
        rules.append_value(ctx.rules_version);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(recv.finish()),
        Arc::new(event.finish()),
        Arc::new(key.finish()),
        Arc::new(seq.finish()),
        Arc::new(kind.finish()),
        Arc::new(reason.finish()),
        Arc::new(message.finish()),
        Arc::new(raw.finish()),
        Arc::new(topic.finish()),
        Arc::new(part.finish()),
        Arc::new(off.finish()),
        Arc::new(rules.finish()),
    ];
    RecordBatch::try_new(tables::rejected_schema(), cols)
}

#[cfg(test)]
mod tests {
    use hexpulse_schemas::wire::{Heartbeat, Location, Measurement, Reading, Sensor};
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::h3bin::Binner;

    fn row(rng: &mut impl Rng, binner: &Binner, kind: KindName, offset: i64) -> ValidRow {
        let (lat, lng) = (
            52.4 + rng.random_range(0.0..0.3),
            13.2 + rng.random_range(0.0..0.4),
        );
        let kind = match kind {
            KindName::Sensor => Kind::Sensor(Sensor {
                measurements: (0..rng.random_range(1..4))
                    .map(|m| Measurement {
                        metric: m + 1,
                        value: rng.random_range(0.0..50.0),
                    })
                    .collect(),
            }),
            _ => Kind::Heartbeat(Heartbeat {
                radio: 1,
                signal_dbm: rng.random_range(-110.0..-40.0),
                speed_test: None,
            }),
        };
        ValidRow {
            src: Source {
                partition: 0,
                offset,
                receive_ms: 1_000 + offset,
            },
            valid: ValidReading {
                key: [rng.random_range(0..8u8); 32],
                kind: if matches!(kind, Kind::Sensor(_)) {
                    KindName::Sensor
                } else {
                    KindName::Heartbeat
                },
                reading: Reading {
                    schema_version: 1,
                    // Few distinct times, so that ties fall to the offset.
                    device_time_ms: rng.random_range(0..5) * 1_000,
                    seq: offset as u64,
                    location: Some(Location {
                        lat,
                        lng,
                        accuracy_m: 5.0,
                    }),
                    kind: Some(kind),
                },
                asserted_distance_m: 1.0,
            },
            // Few distinct coarse cells too.
            cells: binner
                .cells(52.4 + rng.random_range(0..3) as f64 * 0.1, lng)
                .expect("cells"),
        }
    }

    /// The batch equals the one built from the rows sorted first (as units were written before).
    #[test]
    fn a_sorted_batch_equals_the_batch_of_sorted_rows() {
        let resolutions = [8u8, 12];
        let binner = Binner::new(&resolutions).unwrap();
        let ctx = Ctx {
            topic: "raw",
            rules_version: "v1",
            resolutions: &resolutions,
        };
        for (seed, kind) in (0..20u64).zip([KindName::Sensor, KindName::Heartbeat].iter().cycle()) {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let rows: Vec<ValidRow> = (0..rng.random_range(1..300))
                .map(|i| row(&mut rng, &binner, *kind, 100 + i))
                .collect();
            let mut refs: Vec<&ValidRow> = rows.iter().collect();
            let got = sorted_valid_batch(*kind, &refs, 0, &ctx).unwrap();
            refs.sort_by_key(|r| (r.cells[0], r.valid.reading.device_time_ms, r.src.offset));
            let want = valid_batch(*kind, &refs, &ctx).unwrap();
            assert_eq!(got, want, "seed {seed}");
        }
    }
}
