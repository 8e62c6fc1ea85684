//! Turning verdicts into Arrow record batches of the lake tables (schemas in `hexpulse_schemas::tables`).

use std::sync::Arc;

use arrow::array::AsArray;
use arrow::array::{
    ArrayRef, BinaryBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, StringArray, StringBuilder, TimestampMillisecondBuilder, UInt32Array,
    UInt64Builder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{Int64Type, TimestampMillisecondType, UInt64Type};
use arrow::error::ArrowError;
use hexpulse_lake::HOUR_MS;
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
    // The key's 64 hex characters per row: one buffer, offsets by arithmetic (a builder checked
    // capacity and pushed an offset per row).
    let mut key_hex_values = Vec::with_capacity(n * 64);
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
    let mut part = Int32Builder::with_capacity(n);
    let mut off = Int64Builder::with_capacity(n);
    let mut hexbuf = [0u8; 64];
    for r in rows {
        let loc = r.valid.reading.location.unwrap_or_default();
        hex::encode_to_slice(r.valid.key, &mut hexbuf).expect("64 hex chars");
        for _ in 0..repeat(r) {
            event.append_value(r.valid.reading.device_time_ms);
            recv.append_value(r.src.receive_ms);
            key_hex_values.extend_from_slice(&hexbuf);
            seq.append_value(r.valid.reading.seq);
            lat.append_value(loc.lat);
            lng.append_value(loc.lng);
            acc.append_value(loc.accuracy_m);
            dist.append_value(r.valid.asserted_distance_m);
            for (b, c) in cells.iter_mut().zip(r.cells.iter()) {
                b.append_value(*c);
            }
            part.append_value(r.src.partition);
            off.append_value(r.src.offset);
        }
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(event.finish()),
        Arc::new(recv.finish()),
        Arc::new(fixed_width_strings(key_hex_values, 64, n)),
        Arc::new(seq.finish()),
        Arc::new(lat.finish()),
        Arc::new(lng.finish()),
        Arc::new(acc.finish()),
        Arc::new(dist.finish()),
    ];
    cols.extend(cells.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    cols.extend([
        Arc::new(fixed_width_strings(
            ctx.topic.repeat(n).into_bytes(),
            ctx.topic.len(),
            n,
        )) as ArrayRef,
        Arc::new(part.finish()),
        Arc::new(off.finish()),
        Arc::new(fixed_width_strings(
            ctx.rules_version.repeat(n).into_bytes(),
            ctx.rules_version.len(),
            n,
        )),
    ]);
    cols
}

/// A string column of `n` values of `width` bytes each, laid end to end in `values` (UTF-8, every
/// value whole: hex, or one string repeated).
fn fixed_width_strings(values: Vec<u8>, width: usize, n: usize) -> StringArray {
    debug_assert_eq!(values.len(), width * n);
    StringArray::new(
        OffsetBuffer::from_lengths(std::iter::repeat_n(width, n)),
        values.into(),
        None,
    )
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
            let n = rows.len();
            let mut radio = StringBuilder::with_capacity(n, n * 4);
            let mut signal = Float32Builder::with_capacity(n);
            let (mut down, mut up, mut lat) = (
                Float32Builder::with_capacity(n),
                Float32Builder::with_capacity(n),
                Float32Builder::with_capacity(n),
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
            let n: usize = rows.iter().map(|r| rows_of(r)).sum();
            let (mut metric, mut value, mut unit) = (
                StringBuilder::with_capacity(n, n * 12),
                Float64Builder::with_capacity(n),
                StringBuilder::with_capacity(n, n * 5),
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
            let n = rows.len();
            let (mut obs, mut heading, mut speed, mut conf) = (
                StringBuilder::with_capacity(n, n * 12),
                Float32Builder::with_capacity(n),
                Float32Builder::with_capacity(n),
                Float32Builder::with_capacity(n),
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

/// The batches of a unit's files of one table, from the table's rows in arrival order (`pieces`:
/// built once, whole or in the pieces the live tier published): one per event hour, in hour order,
/// its rows sorted by the cell of `coarse_column`, then device time, then offset, so that filters
/// prune well. Offsets are unique in a unit, and the rows of one reading (a sensor's metrics) keep
/// their order.
///
/// The order comes from the pieces' own columns, and the rows move once per file, gathered from
/// the pieces (`take` from one, `interleave` from several): building the columns in sorted order
/// read every row at random, a cache miss each, and concatenating the pieces first copied every
/// row twice.
pub fn hour_batches(
    pieces: &[RecordBatch],
    coarse_column: &str,
) -> Result<Vec<(i64, RecordBatch)>, ArrowError> {
    let rows: usize = pieces.iter().map(RecordBatch::num_rows).sum();
    // (hour, cell, time, offset, piece, row): offsets are unique, so the last two never decide.
    let mut order: Vec<(i64, u64, i64, i64, u32, u32)> = Vec::with_capacity(rows);
    for (p, batch) in pieces.iter().enumerate() {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| ArrowError::SchemaError(format!("no column {name}")))
        };
        let event = column("event_time")?.as_primitive::<TimestampMillisecondType>();
        let cell = column(coarse_column)?.as_primitive::<UInt64Type>();
        let offset = column("src_offset")?.as_primitive::<Int64Type>();
        order.extend((0..batch.num_rows()).map(|i| {
            let t = event.value(i);
            (
                t.div_euclid(HOUR_MS),
                cell.value(i),
                t,
                offset.value(i),
                p as u32,
                i as u32,
            )
        }));
    }
    order.sort_unstable();
    let mut out = Vec::new();
    for group in order.chunk_by(|a, b| a.0 == b.0) {
        let file = match pieces {
            [batch] if group.len() == rows && group.windows(2).all(|w| w[0].5 < w[1].5) => {
                batch.clone()
            }
            [batch] => {
                let indices: UInt32Array = group.iter().map(|o| o.5).collect::<Vec<u32>>().into();
                arrow::compute::take_record_batch(batch, &indices)?
            }
            _ => {
                let refs: Vec<&RecordBatch> = pieces.iter().collect();
                let indices: Vec<(usize, usize)> =
                    group.iter().map(|o| (o.4 as usize, o.5 as usize)).collect();
                arrow::compute::interleave_record_batch(&refs, &indices)?
            }
        };
        out.push((group[0].0, file));
    }
    Ok(out)
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
pub(crate) mod tests {
    use hexpulse_schemas::wire::{Heartbeat, Location, Measurement, Reading, Sensor};
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::h3bin::Binner;

    /// The H3 resolutions of the tests' rows.
    pub(crate) const RESOLUTIONS: &[u8] = &[8, 12];

    /// The context of the tests' batches.
    pub(crate) fn ctx() -> Ctx<'static> {
        Ctx {
            topic: "raw",
            rules_version: "v1",
            resolutions: RESOLUTIONS,
        }
    }

    /// `rows` of `kind` built into batches of random sizes, in order, as the live tier publishes.
    pub(crate) fn in_pieces(
        rng: &mut impl Rng,
        kind: KindName,
        rows: &[&ValidRow],
        ctx: &Ctx<'_>,
    ) -> Vec<RecordBatch> {
        let mut pieces = Vec::new();
        let mut rest = rows;
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(rng.random_range(1..=rest.len()));
            pieces.push(valid_batch(kind, piece, ctx).unwrap());
            rest = tail;
        }
        pieces
    }

    /// A valid reading of `kind` at `offset`, near Berlin, with few distinct times and cells.
    pub(crate) fn row(
        rng: &mut impl Rng,
        binner: &Binner,
        kind: KindName,
        offset: i64,
    ) -> ValidRow {
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

    /// The files' batches equal the batches of each hour's rows sorted first (as units were written
    /// before), whether the table's batch was built whole or in pieces (as the live tier publishes).
    #[test]
    fn hour_batches_equal_the_batches_of_sorted_rows() {
        let (binner, ctx) = (Binner::new(RESOLUTIONS).unwrap(), ctx());
        let coarse = tables::h3_column(8);
        for (seed, kind) in (0..20u64).zip([KindName::Sensor, KindName::Heartbeat].iter().cycle()) {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let rows: Vec<ValidRow> = (0..rng.random_range(1..300))
                .map(|i| {
                    let mut r = row(&mut rng, &binner, *kind, 100 + i);
                    // Up to three hours.
                    r.valid.reading.device_time_ms += rng.random_range(0..3) * HOUR_MS;
                    r
                })
                .collect();
            let refs: Vec<&ValidRow> = rows.iter().collect();
            let whole = valid_batch(*kind, &refs, &ctx).unwrap();
            let pieces = in_pieces(&mut rng, *kind, &refs, &ctx);
            let got = hour_batches(std::slice::from_ref(&whole), &coarse).unwrap();
            assert_eq!(got, hour_batches(&pieces, &coarse).unwrap(), "seed {seed}");
            let mut want = std::collections::BTreeMap::<i64, Vec<&ValidRow>>::new();
            for r in &refs {
                want.entry(r.valid.reading.device_time_ms.div_euclid(HOUR_MS))
                    .or_default()
                    .push(r);
            }
            let want: Vec<(i64, RecordBatch)> = want
                .into_iter()
                .map(|(hour, mut rows)| {
                    rows.sort_by_key(|r| {
                        (r.cells[0], r.valid.reading.device_time_ms, r.src.offset)
                    });
                    (hour, valid_batch(*kind, &rows, &ctx).unwrap())
                })
                .collect();
            assert_eq!(got, want, "seed {seed}");
        }
    }
}
