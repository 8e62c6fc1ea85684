//! `hexpulse bench query`: the query service against DuckDB on the same Delta tables.
//!
//! A lake of `readings` simulated readings (the simulator's fleet: 5,000 devices in five cities,
//! a week of event time) is written by the processors' own partition workers, fed directly rather
//! than through a broker (the lake is what is measured here, and the processor benchmark covers the
//! path through Kafka; signatures are placeholders, re-verification is off). Closed hours are
//! compacted, and the epochs (days) that ended are sealed, as in production (the query service
//! answers sensor aggregates over sealed days from their `sensor_hex_hourly` rows; DuckDB reads the
//! raw rows). Then each query runs `runs` times through the query service's HTTP API and `runs`
//! times in DuckDB (from PyPI, reading the same Delta tables through its delta extension's
//! `delta_scan`) with equivalent SQL, one after the other in the same run, and p50/p99 of each are
//! reported.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hexpulse_common::time::now_ms;
use hexpulse_lake::{HOUR_MS, Lake};
use hexpulse_processors::partition::{Flushed, PartitionWorker, Roll};
use hexpulse_schemas::wire::{PayloadFormat, SignedReading};
use prost::Message;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "bench-query";
const PARTITIONS: usize = 2;
/// Devices of the simulated fleet of `bench query` and `bench doors`.
pub(crate) const FLEET: usize = 5_000;

#[derive(Debug, Serialize)]
struct QueryTiming {
    name: String,
    hexpulse_p50_ms: f64,
    hexpulse_p99_ms: f64,
    duckdb_p50_ms: f64,
    duckdb_p99_ms: f64,
    /// Hexpulse p50 / DuckDB p50 (≤ 1 meets the target).
    ratio_p50: f64,
    hexpulse_rows: usize,
    duckdb_rows: usize,
    hexpulse_request: String,
    duckdb_sql: String,
}

#[derive(Debug, Serialize)]
struct QueryReport {
    readings: usize,
    lake_rows: HashMap<String, usize>,
    lake_files: HashMap<String, usize>,
    lake_bytes: u64,
    build_s: f64,
    runs: usize,
    queries: Vec<QueryTiming>,
    duckdb_version: String,
}

pub(crate) fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    s[i.min(s.len() - 1)]
}

/// Writes the lake: readings of a fleet of `devices` (each at least once, where `readings` allow) in
/// event-time order, spread over `span_ms` ending at `end_ms`.
pub(crate) async fn build_lake(
    lake: &Lake,
    devices: usize,
    readings: usize,
    end_ms: i64,
    span_ms: i64,
) -> anyhow::Result<Vec<hexpulse_common::registry::Device>> {
    let mix = hexpulse_load_tests::fleet::KindMix {
        heartbeat: 0.6,
        sensor: 0.3,
        road: 0.1,
    };
    let mut fleet = hexpulse_load_tests::fleet::Fleet::new(devices, 11, mix);
    let devices = fleet.registry_devices();
    let keys: Vec<Vec<u8>> = devices
        .iter()
        .map(|d| hex::decode(&d.public_key).expect("hex key"))
        .collect();
    let registry = hexpulse_common::registry::Registry::from_devices(devices.clone())?;
    let rules = hexpulse_lake::rules::Rules::load(None)?;
    let binner = hexpulse_processors::h3bin::Binner::new(&[12, 8])?;
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for p in 0..PARTITIONS {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(i64, Vec<u8>, i64)>>(4);
        senders.push(tx);
        let (lake, rules, registry, binner) = (
            lake.clone(),
            rules.clone(),
            registry.clone(),
            binner.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let validator =
                hexpulse_processors::validate::Validator::new(rules.clone(), registry, false);
            let mut w = PartitionWorker::init(
                TOPIC,
                p as i32,
                end_ms - span_ms,
                lake,
                validator,
                binner,
                vec![12, 8],
            )
            .await?;
            let roll = Roll {
                rows: 200_000,
                bytes: 64 << 20,
                age: Duration::from_secs(3600),
            };
            while let Some(chunk) = rx.recv().await {
                for (offset, value, recv) in chunk {
                    w.push(offset, &value, recv);
                    if w.is_full(roll) {
                        flush(&mut w, &rules.version).await?;
                    }
                }
            }
            flush(&mut w, &rules.version).await?;
            anyhow::Ok(())
        }));
    }
    let start_ms = end_ms - span_ms;
    let step = span_ms as f64 / readings as f64;
    let mut offsets = [0i64; PARTITIONS];
    let mut chunks: Vec<Vec<(i64, Vec<u8>, i64)>> = vec![Vec::new(); PARTITIONS];
    let started = Instant::now();
    let fleet_size = keys.len();
    for i in 0..readings {
        // Every device sends first, in turn (when there are readings enough), so that the lake holds
        // the whole fleet; then devices at random.
        let d = if readings >= fleet_size && i < fleet_size {
            i
        } else {
            fleet.pick()
        };
        let t = start_ms + (i as f64 * step) as i64;
        let reading = fleet.next_reading(d, t);
        let payload = reading.encode_to_vec();
        // A unique placeholder: identical signatures would be rejected as duplicates.
        let mut signature = vec![0u8; 64];
        signature[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let value = SignedReading {
            public_key: keys[d].clone().into(),
            signature: signature.into(),
            payload: payload.into(),
            format: PayloadFormat::Protobuf as i32,
        }
        .encode_to_vec();
        let p = d % PARTITIONS;
        chunks[p].push((offsets[p], value, reading.device_time_ms + 500));
        offsets[p] += 1;
        if chunks[p].len() >= 20_000 {
            senders[p]
                .send(std::mem::take(&mut chunks[p]))
                .await
                .context("partition worker stopped")?;
        }
        if i > 0 && i % 1_000_000 == 0 {
            eprintln!(
                "[bench]   {i} of {readings} readings written ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    for (p, c) in chunks.into_iter().enumerate() {
        senders[p]
            .send(c)
            .await
            .context("partition worker stopped")?;
    }
    drop(senders);
    for t in tasks {
        t.await??;
    }
    Ok(devices)
}

/// Seals the (daily) epochs that ended by `end_ms`, as a running processor would have: the query
/// service answers sensor aggregates over sealed time from their `sensor_hex_hourly` rows.
/// Forced (the lake was written without a broker, so no partition published a watermark).
async fn seal_closed_epochs(lake: &Lake, start_ms: i64, end_ms: i64) -> anyhow::Result<()> {
    use hexpulse_lake::epoch::{EpochConfig, seal};
    let cfg = EpochConfig::default();
    let rules = hexpulse_lake::rules::Rules::load(None)?;
    let mut id = cfg.id_of(start_ms)?;
    while cfg.bounds(id)?.1 <= end_ms {
        let t = Instant::now();
        let m = seal::seal_and_publish(seal::SealRequest {
            input: lake,
            output: lake,
            cfg: &cfg,
            rules: &rules,
            epoch: id,
            force: true,
            topic: TOPIC,
            partitions: PARTITIONS as i32,
        })
        .await?
        .manifest()
        .clone();
        eprintln!(
            "[bench]   sealed epoch {id} ({} to {}) in {:.0} s",
            m.start,
            m.end,
            t.elapsed().as_secs_f64()
        );
        id += 1;
    }
    Ok(())
}

async fn flush(w: &mut PartitionWorker, rules_version: &str) -> anyhow::Result<()> {
    match w.flush(rules_version).await? {
        Flushed::Fenced { .. } => bail!("fenced: another writer holds the claim"),
        Flushed::Empty | Flushed::Committed { .. } => Ok(()),
    }
}

fn sql_time(ms: i64) -> String {
    hexpulse_query::params::rfc3339(ms)
}

pub async fn query(
    readings: usize,
    runs: usize,
    python: PathBuf,
    keep: Option<PathBuf>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    if runs < 2 {
        bail!("--runs must be at least 2");
    }
    let dir = match &keep {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("hexpulse-bench-query-{}", std::process::id())),
    };
    let lake_dir = dir.join("lake");
    // The end of the lake's week is kept next to a kept lake, so a reused lake is queried over
    // the span it holds.
    let end_file = dir.join("end_ms");
    let reuse = keep.is_some() && end_file.exists();
    std::fs::create_dir_all(&lake_dir)?;
    let lake = Lake::open(lake_dir.to_str().context("lake path")?)?;
    let span_ms = 7 * 24 * HOUR_MS;
    let t = Instant::now();
    let end_ms = if reuse {
        let end_ms: i64 = std::fs::read_to_string(&end_file)?.trim().parse()?;
        eprintln!("[bench] reusing the lake in {}", lake_dir.display());
        end_ms
    } else {
        // A week of event time, ending two hours ago (so every hour is closed and compacted).
        let end_ms = (now_ms() / HOUR_MS - 2) * HOUR_MS;
        eprintln!(
            "[bench] writing {readings} simulated readings (a week, 5,000 devices) to {}",
            lake_dir.display()
        );
        build_lake(&lake, FLEET, readings, end_ms, span_ms).await?;
        eprintln!("[bench] compacting closed hours");
        let opts = hexpulse_lake::compact::CompactOptions {
            retention: Duration::ZERO,
            ..Default::default()
        };
        hexpulse_lake::compact::compact_closed(&lake, end_ms + HOUR_MS, &opts).await?;
        // A second pass deletes what the first replaced (retention zero: nobody else reads it).
        hexpulse_lake::compact::compact_closed(&lake, end_ms + HOUR_MS, &opts).await?;
        if keep.is_some() {
            std::fs::write(&end_file, end_ms.to_string())?;
        }
        end_ms
    };
    // (A reused lake's epochs are sealed already, unless it was kept before sealing was added.)
    seal_closed_epochs(&lake, end_ms - span_ms, end_ms).await?;
    let build_s = t.elapsed().as_secs_f64();

    let mut tables: HashMap<String, String> = HashMap::new();
    let mut lake_rows = HashMap::new();
    let mut lake_files = HashMap::new();
    let mut lake_bytes = 0u64;
    for table in ["heartbeat", "sensor", "road", "rejected"] {
        let valid = hexpulse_lake::compact::valid_files(&lake, table).await?;
        let mut rows = 0usize;
        for f in &valid {
            rows += lake.row_count(f).await? as usize;
            lake_bytes += std::fs::metadata(lake_dir.join(f))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        lake_rows.insert(table.to_string(), rows);
        lake_files.insert(table.to_string(), valid.len());
        if !valid.is_empty() {
            tables.insert(
                table.to_string(),
                lake_dir.join(table).display().to_string(),
            );
        }
    }
    eprintln!(
        "[bench] lake built in {build_s:.0} s: rows {lake_rows:?}, files {lake_files:?}, {:.0} MB",
        lake_bytes as f64 / 1e6
    );

    // The query service over that lake, in this process (plans on their own runtime).
    let mut qcfg = hexpulse_query::QueryConfig::for_tests(lake_dir.to_str().context("path")?);
    qcfg.max_rows = 1_000_000;
    qcfg.max_features = 1_000_000;
    qcfg.query_timeout = Duration::from_secs(300);
    qcfg.memory_limit_bytes = 8 << 30;
    qcfg.query_threads = 0;
    qcfg.refresh_interval = Duration::from_secs(3600);
    let stop = CancellationToken::new();
    let q = hexpulse_query::Query::start(qcfg, lake.clone(), stop.clone()).await?;
    let base = format!("http://{}", q.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;

    // The busiest pm2_5 cell for the series.
    let r: Value = client
        .post(format!("{base}/v1/sql"))
        .body("SELECT h3_r8 AS cell, count(*) AS n FROM sensor WHERE metric = 'pm2_5' GROUP BY 1 ORDER BY n DESC LIMIT 1")
        .send()
        .await?
        .json()
        .await?;
    let cell: u64 = r[0]["cell"].as_u64().context("a pm2_5 cell")?;
    let cell_text = h3o::CellIndex::try_from(cell)?.to_string();

    // Berlin, city-sized; the same grown box the service filters on (two res-8 edges).
    let bbox = hexpulse_query::params::Bbox {
        west: 13.1,
        south: 52.35,
        east: 13.75,
        north: 52.7,
    };
    let grown = bbox.grown(hexpulse_query::params::edge_km(8) * 2.0);
    let bb = format!("{},{},{},{}", bbox.west, bbox.south, bbox.east, bbox.north);
    let coverage_sql = |from: i64, to: i64| {
        format!(
            "SELECT h3_r8 AS cell, count(DISTINCT device_key) AS devices, count(*) AS heartbeats, \
             max(signal_dbm) AS best, approx_quantile(signal_dbm, 0.5) AS median, \
             count(download_mbps) AS speed_tests, approx_quantile(download_mbps, 0.5) AS download, \
             epoch_ms(max(event_time)) AS newest FROM heartbeat \
             WHERE lat BETWEEN {} AND {} AND lng BETWEEN {} AND {} \
             AND event_time >= TIMESTAMPTZ '{}' AND event_time < TIMESTAMPTZ '{}' GROUP BY 1",
            grown.south,
            grown.north,
            grown.west,
            grown.east,
            sql_time(from),
            sql_time(to)
        )
    };
    let week_from = end_ms - span_ms;
    let adhoc = "SELECT metric, count(*) AS n, avg(value) AS mean, max(value) AS max FROM sensor GROUP BY metric ORDER BY metric";
    // (name, GET path or POST body, DuckDB SQL)
    let queries: Vec<(&str, String, Option<&str>, String)> = vec![
        (
            "coverage, Berlin, res 8, one hour",
            format!(
                "/v1/coverage?bbox={bb}&res=8&from={}&to={end_ms}",
                end_ms - HOUR_MS
            ),
            None,
            coverage_sql(end_ms - HOUR_MS, end_ms),
        ),
        (
            "coverage, Berlin, res 8, one day",
            format!(
                "/v1/coverage?bbox={bb}&res=8&from={}&to={end_ms}",
                end_ms - 24 * HOUR_MS
            ),
            None,
            coverage_sql(end_ms - 24 * HOUR_MS, end_ms),
        ),
        (
            "pm2_5 hourly series, one res-8 cell, one week",
            format!(
                "/v1/sensors/series?metric=pm2_5&cell={cell_text}&interval=1h&from={week_from}&to={end_ms}"
            ),
            None,
            format!(
                "SELECT epoch_ms(event_time) // 3600000 * 3600000 AS t, count(*) AS n, avg(value) AS mean, \
                 min(value) AS min, max(value) AS max, epoch_ms(max(event_time)) AS newest FROM sensor \
                 WHERE metric = 'pm2_5' AND h3_r8 = {cell} AND event_time >= TIMESTAMPTZ '{}' \
                 AND event_time < TIMESTAMPTZ '{}' GROUP BY 1 ORDER BY 1",
                sql_time(week_from),
                sql_time(end_ms)
            ),
        ),
        (
            "ad-hoc SQL: per-metric count, mean, max over all sensor rows",
            "/v1/sql".into(),
            Some(adhoc),
            adhoc.to_string(),
        ),
    ];

    eprintln!("[bench] {runs} runs of each query through the query service (after one warm-up)");
    let mut ours: Vec<(Vec<f64>, usize)> = Vec::new();
    for (name, path, body, _) in &queries {
        let mut times = Vec::new();
        let mut rows = 0;
        for i in 0..=runs {
            let t = Instant::now();
            let resp = match body {
                Some(b) => {
                    client
                        .post(format!("{base}{path}"))
                        .body(b.to_string())
                        .send()
                        .await?
                }
                None => client.get(format!("{base}{path}")).send().await?,
            };
            let status = resp.status();
            let v: Value = resp.json().await?;
            let elapsed = t.elapsed().as_secs_f64() * 1000.0;
            if !status.is_success() {
                bail!("{name}: {status}: {v}");
            }
            rows = v["features"]
                .as_array()
                .or_else(|| v["points"].as_array())
                .or_else(|| v.as_array())
                .map_or(0, Vec::len);
            if i > 0 {
                times.push(elapsed);
            }
        }
        eprintln!(
            "[bench]   {name}: p50 {:.1} ms, p99 {:.1} ms, {rows} rows",
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
        ours.push((times, rows));
    }
    stop.cancel();

    eprintln!("[bench] the same queries in DuckDB over the same Delta tables (delta_scan)");
    let spec = json!({
        "runs": runs,
        "tables": tables,
        "queries": queries.iter().map(|(n, _, _, sql)| json!({"name": n, "sql": sql})).collect::<Vec<_>>(),
    });
    let duck = super::python_json(&python, "bench_duckdb.py", &spec)
        .await
        .context("DuckDB from PyPI")?;
    let mut timings = Vec::new();
    for (i, (name, path, body, sql)) in queries.iter().enumerate() {
        let d = &duck["queries"][i];
        let dt: Vec<f64> = d["times_ms"]
            .as_array()
            .context("times")?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        let (ot, orows) = &ours[i];
        let t = QueryTiming {
            name: name.to_string(),
            hexpulse_p50_ms: percentile(ot, 0.5),
            hexpulse_p99_ms: percentile(ot, 0.99),
            duckdb_p50_ms: percentile(&dt, 0.5),
            duckdb_p99_ms: percentile(&dt, 0.99),
            ratio_p50: percentile(ot, 0.5) / percentile(&dt, 0.5),
            hexpulse_rows: *orows,
            duckdb_rows: d["rows"].as_u64().unwrap_or(0) as usize,
            hexpulse_request: match body {
                Some(b) => format!("POST {path} {b}"),
                None => format!("GET {path}"),
            },
            duckdb_sql: sql.clone(),
        };
        eprintln!(
            "[bench]   {name}: hexpulse p50 {:.1} / p99 {:.1} ms, duckdb p50 {:.1} / p99 {:.1} ms, ratio {:.2} (rows {} vs {})",
            t.hexpulse_p50_ms,
            t.hexpulse_p99_ms,
            t.duckdb_p50_ms,
            t.duckdb_p99_ms,
            t.ratio_p50,
            t.hexpulse_rows,
            t.duckdb_rows
        );
        timings.push(t);
    }
    let report = QueryReport {
        readings,
        lake_rows,
        lake_files,
        lake_bytes,
        build_s,
        runs,
        queries: timings,
        duckdb_version: duck["version"].as_str().unwrap_or("").to_string(),
    };
    super::emit_report(&report, out)?;
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
