//! The ingest benchmark: ingest throughput per core it spends, against the raw Ed25519 batch-verify
//! rate of one core, measured in the same run.
//!
//! The ingest node runs as a separate process (the same `hexpulse` binary), so its CPU time can be
//! read from `/proc/<pid>/stat` and charged to it alone. The load is pre-signed before the clock starts,
//! so the load generator's signing does not compete with ingest during the timed part.

use std::path::Path;
use std::time::{Duration, Instant};

use hexpulse_schemas::sign;
use hexpulse_schemas::wire::ReadingBatch;
use prost::Message;
use serde::Serialize;

use crate::fleet::{Fleet, KindMix};

/// CPU seconds (user + system, all threads) a process has used so far.
pub fn process_cpu_seconds(pid: u32) -> std::io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((ticks(11) + ticks(12)) / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak resident set size of a process, bytes (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Pre-signed request bodies: `total` heartbeats from `fleet`, `batch` per body.
pub fn presign(fleet: &mut Fleet, total: usize, batch: usize, now_ms: i64) -> Vec<Vec<u8>> {
    (0..total.div_ceil(batch))
        .map(|b| {
            let readings = (0..batch.min(total - b * batch))
                .map(|_| {
                    let i = fleet.pick();
                    fleet.next_signed(i, now_ms)
                })
                .collect();
            ReadingBatch { readings }.encode_to_vec()
        })
        .collect()
}

/// Result of one ingest benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub readings: u64,
    pub accepted: u64,
    pub non_200: u64,
    pub wall_s: f64,
    pub accepted_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub ingest_cpu_s: f64,
    pub accepted_per_ingest_core_s: f64,
    pub ingest_peak_rss_bytes: Option<u64>,
    pub raw_verify: sign::rates::VerifyRates,
    /// accepted_per_ingest_core_s / raw_verify.batch128_per_s; the target is >= 0.7.
    pub ratio_to_raw_batch_verify: f64,
}

/// Drives the ingest process `pid` at `url` flat out with `bodies`, `concurrency` requests at a time.
pub async fn drive_ingest(
    url: &str,
    pid: u32,
    bodies: Vec<Vec<u8>>,
    per_body: u64,
    concurrency: usize,
) -> IngestReport {
    let client = reqwest::Client::new();
    let endpoint = format!("{}/v1/readings", url.trim_end_matches('/'));
    let total = bodies.len() as u64 * per_body;
    let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies));
    let cpu0 = process_cpu_seconds(pid).unwrap_or(0.0);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, endpoint, queue) = (client.clone(), endpoint.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut accepted, mut non_200) = (0u64, 0u64);
            loop {
                let Some(body) = queue.lock().expect("lock").pop() else {
                    break;
                };
                let t = Instant::now();
                match client
                    .post(&endpoint)
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        accepted += v["accepted"].as_u64().unwrap_or(0);
                    }
                    _ => non_200 += 1,
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            (lat, accepted, non_200)
        }));
    }
    let (mut lat, mut accepted, mut non_200) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, a, n) = t.await.expect("sender task");
        lat.extend(l);
        accepted += a;
        non_200 += n;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    // Measured after the load, on this process's thread, with the ingest process idle.
    let raw = tokio::task::spawn_blocking(|| sign::rates::raw_verify_rates(Duration::from_secs(3)))
        .await
        .expect("verify bench");
    let per_core = accepted as f64 / cpu.max(1e-9);
    IngestReport {
        readings: total,
        accepted,
        non_200,
        wall_s: wall,
        accepted_per_s: accepted as f64 / wall,
        latency_p50_ms: pct(0.5),
        latency_p99_ms: pct(0.99),
        ingest_cpu_s: cpu,
        accepted_per_ingest_core_s: per_core,
        ingest_peak_rss_bytes: peak_rss_bytes(pid),
        raw_verify: raw,
        ratio_to_raw_batch_verify: per_core / raw.batch128_per_s,
    }
}

/// A fleet of heartbeat-only devices for the ingest benchmark, written to `registry_path`.
pub fn bench_fleet(
    devices: usize,
    registry_path: &Path,
) -> Result<Fleet, hexpulse_common::registry::RegistryError> {
    let fleet = Fleet::new(
        devices,
        7,
        KindMix {
            heartbeat: 1.0,
            sensor: 0.0,
            road: 0.0,
        },
    );
    let reg = hexpulse_common::registry::Registry::open(registry_path)?;
    reg.upsert_all(fleet.registry_devices())?;
    Ok(fleet)
}
