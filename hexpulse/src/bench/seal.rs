//! `hexpulse bench seal`: sealing one large epoch within a memory budget.
//!
//! A temporary local lake receives a day-long epoch of `--rows` rows (half heartbeats from fixed
//! hotspots, a third sensor rows of five metrics, the rest dashcam observations over many cells),
//! one file per table and hour, committed to the Delta tables as the processors would. The epoch
//! is then sealed with `--memory-mib` as `seal_memory_bytes`. Reported: the seal's time and rows
//! per second, its buckets and spilled bytes, and the process's peak resident set size while
//! sealing (VmHWM, reset after the lake is written): what sealing added to it, against the budget.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use deltalake::kernel::Action;
use hexpulse_lake::delta::Check;
use hexpulse_lake::epoch::{EpochConfig, seal};
use hexpulse_lake::unit::add_action;
use hexpulse_lake::{Lake, date_hour};
use hexpulse_query::datafusion::arrow::array::{
    ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt64Array,
};
use hexpulse_schemas::tables;
use serde::Serialize;

#[derive(clap::Args, Debug, Clone)]
pub struct SealArgs {
    /// Rows in the epoch (all tables).
    #[arg(long, default_value_t = 50_000_000)]
    pub rows: u64,
    /// Devices (hotspots, sensors and dashcams in the ratio 10:5:1).
    #[arg(long, default_value_t = 160_000)]
    pub devices: u64,
    /// The seal's memory budget (`process.epoch.seal_memory_bytes`), MiB.
    #[arg(long, default_value_t = 512)]
    pub memory_mib: u64,
    /// Keep the lake in this directory (it must not exist yet); without it the lake is temporary.
    #[arg(long)]
    pub lake: Option<PathBuf>,
    /// Write the JSON report here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report {
    rows: u64,
    devices: u64,
    lake_mb: f64,
    write_s: f64,
    memory_mib: u64,
    seal_s: f64,
    rows_per_s: f64,
    buckets: usize,
    spilled_mb: f64,
    /// Resident before sealing (after the reset of the peak), and the peak while sealing.
    rss_before_mib: f64,
    peak_rss_mib: f64,
    /// What sealing added to the resident set, against the budget.
    seal_growth_mib: f64,
    growth_per_budget: f64,
    device_summary_rows: u64,
    hex_coverage_rows: u64,
    sensor_hex_hourly_rows: u64,
    road_hex_rows: u64,
}

/// A SplitMix64 step: the bench's data is reproducible without a dependency.
pub(super) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 44-character key, as long as a base58 Ed25519 public key.
fn key(kind: &str, i: u64) -> String {
    format!("{kind}{i:0>40}")
}

/// The cell of a fixed device: 40,000 cells (a city's worth at resolution 8).
fn home_cell(i: u64) -> u64 {
    0x0882_8300_0000_0000 | ((mix(i) % 40_000) << 12)
}

const METRICS: [&str; 5] = ["pm25", "pm10", "no2", "o3", "noise_db"];
const OBSERVATIONS: [&str; 4] = ["pothole", "sign", "construction", "traffic"];

/// One table's rows of one hour: `n` rows starting at row number `first` of that table.
fn batch(
    table: &str,
    hour_ms: i64,
    first: u64,
    n: u64,
    devices: u64,
) -> anyhow::Result<RecordBatch> {
    let res = [8u8];
    let (hotspots, sensors) = (devices * 10 / 16, devices * 5 / 16);
    let dashcams = (devices - hotspots - sensors).max(1);
    let rows = first..first + n;
    let t: Vec<i64> = rows
        .clone()
        .map(|r| hour_ms + (mix(r) % 3_600_000) as i64)
        .collect();
    // Sensor rows come five to a reading (one per metric).
    let (device, seq): (Vec<u64>, Vec<u64>) = match table {
        "heartbeat" => rows.clone().map(|r| (r % hotspots, r)).unzip(),
        "sensor" => rows.clone().map(|r| ((r / 5) % sensors, r / 5)).unzip(),
        _ => rows.clone().map(|r| (r % dashcams, r)).unzip(),
    };
    let prefix = match table {
        "heartbeat" => "hot",
        "sensor" => "sen",
        _ => "cam",
    };
    let cell: Vec<u64> = match table {
        "road" => rows.clone().map(|r| home_cell(mix(r) % 200_000)).collect(),
        _ => device.iter().map(|d| home_cell(*d)).collect(),
    };
    let f64s = |f: &dyn Fn(u64) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.clone().map(f)))
    };
    let f32s = |f: &dyn Fn(u64) -> f32| -> ArrayRef {
        Arc::new(Float32Array::from_iter_values(rows.clone().map(f)))
    };
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(t.clone()).with_timezone("UTC")),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(t.iter().map(|t| t + 150))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            device.iter().map(|d| key(prefix, *d)),
        )),
        Arc::new(UInt64Array::from(seq)),
        f64s(&|r| 48.0 + (mix(r) % 1000) as f64 / 1e4),
        f64s(&|r| 2.0 + (mix(r + 1) % 1000) as f64 / 1e4),
        f32s(&|_| 5.0),
        f64s(&|r| (mix(r + 2) % 300) as f64),
        Arc::new(UInt64Array::from(cell)),
        Arc::new(StringArray::from_iter_values(
            rows.clone().map(|_| "hexpulse.raw"),
        )),
        Arc::new(Int32Array::from_iter_values(
            rows.clone().map(|r| (r % 2) as i32),
        )),
        Arc::new(Int64Array::from_iter_values(rows.clone().map(|r| r as i64))),
        Arc::new(StringArray::from_iter_values(rows.clone().map(|_| "bench"))),
    ];
    let schema = match table {
        "heartbeat" => {
            cols.push(Arc::new(StringArray::from_iter_values(
                rows.clone().map(|_| "lte"),
            )));
            cols.push(f32s(&|r| -60.0 - (mix(r + 3) % 50) as f32));
            cols.push(f32s(&|r| (mix(r + 4) % 500) as f32));
            cols.push(f32s(&|r| (mix(r + 5) % 100) as f32));
            cols.push(f32s(&|r| (mix(r + 6) % 80) as f32));
            tables::heartbeat_schema(&res)
        }
        "sensor" => {
            let metric = |r: u64| METRICS[(r % 5) as usize];
            cols.push(Arc::new(StringArray::from_iter_values(
                rows.clone().map(metric),
            )));
            cols.push(f64s(&|r| (mix(r + 7) % 1000) as f64 / 10.0));
            cols.push(Arc::new(StringArray::from_iter_values(
                rows.clone().map(|_| "ug/m3"),
            )));
            tables::sensor_schema(&res)
        }
        _ => {
            let obs = |r: u64| OBSERVATIONS[(mix(r + 8) % 4) as usize];
            cols.push(Arc::new(StringArray::from_iter_values(
                rows.clone().map(obs),
            )));
            cols.push(f32s(&|r| (mix(r + 9) % 360) as f32));
            cols.push(f32s(&|r| (mix(r + 10) % 120) as f32));
            cols.push(f32s(&|_| 0.9));
            tables::road_schema(&res)
        }
    };
    Ok(RecordBatch::try_new(schema, cols)?)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// This process's peak resident set size (VmHWM), bytes.
fn peak_rss() -> u64 {
    hexpulse_load_tests::bench::peak_rss_bytes(std::process::id()).unwrap_or(0)
}

pub async fn seal(args: SealArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rows >= 1_000 && args.devices >= 16,
        "--rows 1000 and --devices 16 at least"
    );
    let dir = match &args.lake {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("hexpulse-bench-seal-{}", std::process::id())),
    };
    anyhow::ensure!(
        !dir.exists(),
        "{} exists: give a new directory",
        dir.display()
    );
    std::fs::create_dir_all(&dir)?;
    let lake = Lake::open(dir.to_str().context("lake path is not UTF-8")?)?;
    let cfg = EpochConfig {
        seal_memory_bytes: args.memory_mib << 20,
        ..EpochConfig::default()
    };
    // A day that has ended: two epochs before the current one.
    let id = cfg.id_of(hexpulse_common::time::now_ms())? - 2;
    let (start, _) = cfg.bounds(id)?;
    let split = [
        ("heartbeat", args.rows / 2),
        ("sensor", args.rows / 3 / 5 * 5),
        ("road", args.rows - args.rows / 2 - args.rows / 3 / 5 * 5),
    ];
    eprintln!(
        "[bench] seal: writing epoch {id} ({} rows, {} devices) into {}",
        args.rows,
        args.devices,
        dir.display()
    );
    let written = Instant::now();
    for (table, total) in split {
        let schema = match table {
            "heartbeat" => tables::heartbeat_schema(&[8]),
            "sensor" => tables::sensor_schema(&[8]),
            _ => tables::road_schema(&[8]),
        };
        lake.table(table).ensure(&schema).await?;
        let per_hour = total.div_ceil(24);
        let mut actions = Vec::new();
        for h in 0..24u64 {
            let first = h * per_hour;
            let n = per_hour.min(total.saturating_sub(first));
            if n == 0 {
                continue;
            }
            let hour_ms = start + h as i64 * 3_600_000;
            let (date, hour) = date_hour(hour_ms);
            let b = batch(table, hour_ms, first, n, args.devices)?;
            let bytes = hexpulse_lake::encode_parquet(&b, hexpulse_lake::COMPACTED_ZSTD_LEVEL)?;
            let name = format!("date={date}/hour={hour:02}/bench-{h:02}.parquet");
            lake.put(&format!("{table}/{name}"), bytes.clone()).await?;
            let stats = hexpulse_lake::stats::stats_json(&b);
            actions.push(Action::Add(add_action(
                name,
                &date,
                hour,
                bytes.len(),
                stats,
                true,
            )));
            eprint!(".");
        }
        lake.table(table)
            .commit(actions, "WRITE", serde_json::Map::new(), None, None, |_| {
                Check::Go
            })
            .await?;
        eprintln!(" {table}: {total} rows");
    }
    let write_s = written.elapsed().as_secs_f64();
    let lake_mb = dir_bytes(&dir) as f64 / 1e6;
    // The peak so far is the writing's: reset it to the current size (Linux: clear_refs 5).
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let before = peak_rss();
    let rules = hexpulse_lake::rules::Rules::load(None)?;
    eprintln!(
        "[bench] seal: {lake_mb:.0} MB written in {write_s:.0} s; sealing within {} MiB",
        args.memory_mib
    );
    let sealing = Instant::now();
    let (sealed, stats) = seal::seal_measured(seal::SealRequest {
        input: &lake,
        output: &lake,
        cfg: &cfg,
        rules: &rules,
        epoch: id,
        force: true,
        topic: "hexpulse.raw",
        partitions: 2,
    })
    .await?;
    let seal_s = sealing.elapsed().as_secs_f64();
    let peak = peak_rss();
    let m = sealed.manifest();
    let rows_of = |t: &str| m.output(t).map_or(0, |o| o.rows);
    let c = stats.context("the epoch was sealed already")?;
    let report = Report {
        rows: args.rows,
        devices: args.devices,
        lake_mb,
        write_s,
        memory_mib: args.memory_mib,
        seal_s,
        rows_per_s: args.rows as f64 / seal_s,
        buckets: c.buckets,
        spilled_mb: c.spilled_bytes as f64 / 1e6,
        rss_before_mib: before as f64 / (1 << 20) as f64,
        peak_rss_mib: peak as f64 / (1 << 20) as f64,
        seal_growth_mib: peak.saturating_sub(before) as f64 / (1 << 20) as f64,
        growth_per_budget: peak.saturating_sub(before) as f64 / (args.memory_mib << 20) as f64,
        device_summary_rows: rows_of(tables::DEVICE_SUMMARY_TABLE),
        hex_coverage_rows: rows_of("hex_coverage"),
        sensor_hex_hourly_rows: rows_of("sensor_hex_hourly"),
        road_hex_rows: rows_of("road_hex"),
    };
    if args.lake.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{json}\n"))?;
    }
    Ok(())
}
