//! Pass 1 of [`super::compute`] (the epoch's rows into device buckets, [`Scan`]) and the writing
//! of passes 2 and 3 ([`aggregate_buckets`]: the epoch tables, a chunk of rows at a time).

use super::outputs::*;
use super::*;

/// Pass 1: the epoch's rows, read file by file into the buckets of their devices.
pub(super) struct Scan {
    pub(super) start: i64,
    pub(super) end: i64,
    pub(super) id: i64,
    pub(super) cell_col: String,
    pub(super) devices: Buckets,
    pub(super) budget: usize,
    /// Cells of the valid rows, sampled (`CELL_SAMPLE` at most) for the cell buckets' bounds.
    pub(super) cells: Vec<u64>,
    pub(super) cells_seen: u64,
    pub(super) inputs: BTreeMap<(String, i32), (i64, i64, u64)>,
    pub(super) unattributed_rejections: u64,
}

impl Scan {
    pub(super) fn new(
        cfg: &EpochConfig,
        id: i64,
        buckets: usize,
        budget: usize,
    ) -> Result<Scan, EpochError> {
        let (start, end) = cfg.bounds(id)?;
        Ok(Scan {
            start,
            end,
            id,
            cell_col: tables::h3_column(cfg.hex_resolution),
            devices: Buckets::new(buckets, budget),
            budget,
            cells: Vec::new(),
            cells_seen: 0,
            inputs: BTreeMap::new(),
            unattributed_rejections: 0,
        })
    }

    pub(super) fn saw(&mut self, topic: &str, partition: i32, offset: i64) {
        let e = self
            .inputs
            .entry((topic.to_string(), partition))
            .or_insert((offset, offset, 0));
        e.0 = e.0.min(offset);
        e.1 = e.1.max(offset);
        e.2 += 1;
    }

    /// Keeps `cell` in the sample with the same chance as every other cell seen (reservoir
    /// sampling; the choice is a hash of the count, so a re-run samples the same).
    pub(super) fn sample(&mut self, cell: u64) {
        self.cells_seen += 1;
        if self.cells.len() < CELL_SAMPLE {
            self.cells.push(cell);
        } else {
            let j = hash_of(self.cells_seen) % self.cells_seen;
            if let Some(slot) = self.cells.get_mut(j as usize) {
                *slot = cell;
            }
        }
    }

    pub(super) fn put(
        &mut self,
        key: &str,
        write: impl FnOnce(&mut Writer),
    ) -> Result<(), EpochError> {
        let bucket = self.devices.of(hash_of(key));
        self.devices.push(bucket, write).map_err(spill_error)
    }

    /// The epoch's rows of one input file (of `table`, at `path`).
    pub(super) fn file(
        &mut self,
        table: &str,
        path: &str,
        bytes: bytes::Bytes,
    ) -> Result<(), EpochError> {
        let (start, end) = (self.start, self.end);
        for b in decode_parquet(bytes, None)? {
            if table != tables::REJECTED_TABLE && b.column_by_name(&self.cell_col).is_none() {
                return Err(EpochError::Config(format!(
                    "{path} has no column {}: the epoch hex_resolution must be one of the \
                     processors' h3_resolutions",
                    self.cell_col
                )));
            }
            let topic = column(&b, "src_topic").as_string::<i32>();
            let part = column(&b, "src_partition").as_primitive::<Int32Type>();
            let off = column(&b, "src_offset").as_primitive::<Int64Type>();
            let key = column(&b, "device_key").as_string::<i32>();
            if table == tables::REJECTED_TABLE {
                let et = column(&b, "event_time").as_primitive::<TimestampMillisecondType>();
                let rt = column(&b, "receive_time").as_primitive::<TimestampMillisecondType>();
                let reason = column(&b, "reason").as_string::<i32>();
                for i in 0..b.num_rows() {
                    let t = if et.is_null(i) {
                        rt.value(i)
                    } else {
                        et.value(i)
                    };
                    if t < start || t >= end {
                        continue;
                    }
                    self.saw(topic.value(i), part.value(i), off.value(i));
                    if key.is_null(i) {
                        self.unattributed_rejections += 1;
                    } else {
                        let k = key.value(i);
                        self.put(k, |w| {
                            w.u8(REJECTED);
                            w.str(k);
                            w.str(reason.value(i));
                        })?;
                    }
                }
                continue;
            }
            let t = column(&b, "event_time").as_primitive::<TimestampMillisecondType>();
            let cell = column(&b, &self.cell_col).as_primitive::<UInt64Type>();
            // Files written before this column existed have no distance: NaN, left out of the median.
            let dist = b
                .column_by_name("asserted_distance_m")
                .map(|c| c.as_primitive::<Float64Type>());
            let dist_at = |i: usize| dist.map_or(f64::NAN, |d| d.value(i));
            let seq = column(&b, "seq").as_primitive::<UInt64Type>();
            // An hour is active by a reading received in it, never by a claimed event time:
            // backdated readings make no hour active that the device was not heard in.
            let rt = column(&b, "receive_time").as_primitive::<TimestampMillisecondType>();
            let active = |i: usize| {
                let r = rt.value(i);
                (r >= start && r < end).then(|| r.div_euclid(HOUR_MS))
            };
            let rows = (0..b.num_rows()).filter(|i| t.value(*i) >= start && t.value(*i) < end);
            match table {
                "heartbeat" => {
                    let sig = column(&b, "signal_dbm").as_primitive::<Float32Type>();
                    let down = column(&b, "download_mbps").as_primitive::<Float32Type>();
                    let up = column(&b, "upload_mbps").as_primitive::<Float32Type>();
                    let lat = column(&b, "latency_ms").as_primitive::<Float32Type>();
                    let opt = |a: &arrow::array::Float32Array, i: usize| {
                        (!a.is_null(i)).then(|| a.value(i) as f64)
                    };
                    for i in rows {
                        self.saw(topic.value(i), part.value(i), off.value(i));
                        let h = Hb {
                            key: key.value(i).to_string(),
                            seq: seq.value(i),
                            active: active(i),
                            cell: cell.value(i),
                            dist: dist_at(i),
                            signal: sig.value(i) as f64,
                            down: opt(down, i),
                            up: opt(up, i),
                            latency: opt(lat, i),
                        };
                        self.sample(h.cell);
                        self.put(&h.key, |w| h.write(w))?;
                    }
                }
                "sensor" => {
                    let metric = column(&b, "metric").as_string::<i32>();
                    let value = column(&b, "value").as_primitive::<Float64Type>();
                    for i in rows {
                        self.saw(topic.value(i), part.value(i), off.value(i));
                        let s = Sensor {
                            key: key.value(i).to_string(),
                            t: t.value(i),
                            active: active(i),
                            seq: seq.value(i),
                            cell: cell.value(i),
                            dist: dist_at(i),
                            metric: metric.value(i).to_string(),
                            value: value.value(i),
                        };
                        self.sample(s.cell);
                        self.put(&s.key, |w| s.write(w))?;
                    }
                }
                "road" => {
                    let obs = column(&b, "observation").as_string::<i32>();
                    for i in rows {
                        self.saw(topic.value(i), part.value(i), off.value(i));
                        let o = Road {
                            key: key.value(i).to_string(),
                            seq: seq.value(i),
                            active: active(i),
                            cell: cell.value(i),
                            observation: obs.value(i).to_string(),
                        };
                        self.sample(o.cell);
                        self.put(&o.key, |w| o.write(w))?;
                    }
                }
                other => return Err(EpochError::Invalid(format!("unexpected table {other}"))),
            }
        }
        Ok(())
    }

    /// Passes 2 and 3, and the tables.
    pub(super) fn finish(self, rules: &Rules) -> Result<Computed, EpochError> {
        let buckets = self.devices.len();
        let ranges = CellRanges::from_sample(self.cells, buckets);
        let (tables, spilled_bytes) =
            aggregate_buckets(self.devices, &ranges, self.id, rules, self.budget)?;
        Ok(Computed {
            tables,
            inputs: self.inputs,
            unattributed_rejections: self.unattributed_rejections,
            buckets,
            spilled_bytes,
        })
    }
}

/// Rows per batch handed to an output's Parquet writer: a multiple of the writer's step (1,024) that
/// divides its row groups, so the file's bytes do not depend on how the rows arrived.
pub(super) const CHUNK_ROWS: usize = 8192;

/// How many cells [`Scan`] samples to place the cell buckets' bounds.
pub(super) const CELL_SAMPLE: usize = 65_536;

/// The bounds of the cell buckets: bucket `i` holds the cells from `bounds[i - 1]` up to (not
/// including) `bounds[i]`, so the buckets, taken in order, hold the cells in order.
pub(super) struct CellRanges {
    pub(super) bounds: Vec<u64>,
}

impl CellRanges {
    /// `buckets` ranges with about as many sampled cells in each.
    pub(super) fn from_sample(mut sample: Vec<u64>, buckets: usize) -> CellRanges {
        sample.sort_unstable();
        let bounds = if sample.is_empty() {
            Vec::new()
        } else {
            (1..buckets.max(1))
                .map(|i| sample[i * sample.len() / buckets])
                .collect()
        };
        CellRanges { bounds }
    }

    pub(super) fn len(&self) -> usize {
        self.bounds.len() + 1
    }

    pub(super) fn of(&self, cell: u64) -> usize {
        self.bounds.partition_point(|b| *b <= cell)
    }
}

/// One output table, written as its rows arrive (in key order) in batches of [`CHUNK_ROWS`].
pub(super) struct TableOut<R> {
    pub(super) stream: ParquetStream,
    pub(super) pending: Vec<R>,
    pub(super) batch: fn(&[R], i64) -> Result<RecordBatch, EpochError>,
    pub(super) id: i64,
}

impl<R> TableOut<R> {
    pub(super) fn new(
        schema: arrow::datatypes::SchemaRef,
        batch: fn(&[R], i64) -> Result<RecordBatch, EpochError>,
        id: i64,
        rules: &Rules,
    ) -> Result<TableOut<R>, EpochError> {
        Ok(TableOut {
            stream: ParquetStream::new(schema, COMPACTED_ZSTD_LEVEL, footer(id, rules))?,
            pending: Vec::with_capacity(CHUNK_ROWS),
            batch,
            id,
        })
    }

    pub(super) fn push(&mut self, rows: impl IntoIterator<Item = R>) -> Result<(), EpochError> {
        for r in rows {
            self.pending.push(r);
            if self.pending.len() == CHUNK_ROWS {
                self.flush()?;
            }
        }
        Ok(())
    }

    pub(super) fn flush(&mut self) -> Result<(), EpochError> {
        let b = (self.batch)(&self.pending, self.id)?;
        self.stream.write(&b)?;
        self.pending.clear();
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<Encoded, EpochError> {
        // An empty table is still a file with the table's schema (one empty batch, as before).
        if !self.pending.is_empty() || self.stream.rows() == 0 {
            self.flush()?;
        }
        let rows = self.stream.rows();
        Ok(Encoded {
            bytes: self.stream.finish()?,
            rows,
        })
    }
}

/// The footer of every output: the epoch and the rules it was computed under (also in the manifest).
pub(super) fn footer(id: i64, rules: &Rules) -> Vec<(String, String)> {
    vec![
        ("hexpulse.epoch".into(), id.to_string()),
        ("hexpulse.rules_version".into(), rules.version.clone()),
        ("hexpulse.rules_hash".into(), rules.hash.clone()),
    ]
}

/// Passes 2 and 3 over the device buckets: the epoch tables, and the bytes both passes spilled.
pub(super) fn aggregate_buckets(
    mut devices: Buckets,
    ranges: &CellRanges,
    id: i64,
    rules: &Rules,
    budget: usize,
) -> Result<(EpochTables, u64), EpochError> {
    let mut cells = Buckets::new(ranges.len(), budget);
    let mut summaries = Vec::new();
    for b in 0..devices.len() {
        let rows = EpochRows::read(&devices.take(b).map_err(spill_error)?);
        let once = Readings::of(&rows);
        summaries.extend(device_rows(&rows, &once, &rules.rewards));
        for h in &once.hb {
            cells
                .push(ranges.of(h.cell), |w| h.write(w))
                .map_err(spill_error)?;
        }
        for s in &once.sensor {
            cells
                .push(ranges.of(s.cell), |w| s.write(w))
                .map_err(spill_error)?;
        }
        for o in &once.road {
            cells
                .push(ranges.of(o.cell), |w| o.write(w))
                .map_err(spill_error)?;
        }
    }
    // The cell tables, bucket by bucket in cell order, straight into their files.
    let mut coverage = TableOut::new(tables::hex_coverage_schema(), coverage_batch, id, rules)?;
    let mut hourly = TableOut::new(tables::sensor_hex_hourly_schema(), hourly_batch, id, rules)?;
    let mut road = TableOut::new(tables::road_hex_schema(), road_batch, id, rules)?;
    let mut names = Names::default();
    for b in 0..cells.len() {
        let rows = EpochRows::read(&cells.take(b).map_err(spill_error)?);
        // One per reading already (pass 2).
        let once = Readings {
            hb: rows.hb.iter().collect(),
            sensor: rows.sensor.iter().collect(),
            road: rows.road.iter().collect(),
        };
        coverage.push(coverage_rows(&once))?;
        hourly.push(hourly_rows(&once, &mut names))?;
        road.push(road_rows(&once, rules.privacy.road_min_devices, &mut names))?;
    }
    // A row per device: sorted here, since the device buckets are by hash.
    summaries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let summary = summary_batch(&summaries, id, rules)?;
    drop(summaries);
    let leaves = (0..summary.num_rows())
        .map(|i| merkle::encode_row(&summary, i).map(|e| merkle::leaf_hash(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    let device_summary = Encoded {
        rows: summary.num_rows() as u64,
        bytes: encode_parquet_with(&summary, COMPACTED_ZSTD_LEVEL, footer(id, rules))?,
    };
    let tables = EpochTables {
        device_summary,
        hex_coverage: coverage.finish()?,
        sensor_hex_hourly: hourly.finish()?,
        road_hex: road.finish()?,
        leaves,
    };
    Ok((tables, devices.spilled + cells.spilled))
}
