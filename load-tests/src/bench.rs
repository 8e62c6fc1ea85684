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

use crate::adversary::{Class, Outgoing};
use crate::door::{Door, Via};
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

/// One door's run of the ingest benchmark: what the process behind the door (ingest, or the MQTT
/// bridge) accepted per core-second it spent.
#[derive(Debug, Clone, Serialize)]
pub struct DoorRun {
    pub via: Via,
    pub readings: u64,
    pub accepted: u64,
    /// Requests (messages) not answered 200.
    pub non_200: u64,
    pub wall_s: f64,
    pub accepted_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub ingest_cpu_s: f64,
    pub accepted_per_ingest_core_s: f64,
    pub ingest_peak_rss_bytes: Option<u64>,
    /// accepted_per_ingest_core_s / the median raw batch-verify rate of one core (same run).
    pub ratio_to_raw_batch_verify: f64,
    /// Every round's accepted_per_ingest_core_s; this run is their median.
    pub per_core_rounds: Vec<f64>,
}

/// The ingest benchmark: the doors in turn, round after round (the machine's speed drifts by
/// tens of percent within minutes, so each door's figure is its median round), and one core's raw
/// verify rate measured after each round.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    /// The target of the HTTP door's `ratio_to_raw_batch_verify`: [`INGEST_TARGET_RATIO`].
    pub http_target_ratio: f64,
    /// The round of median batch-verify rate.
    pub raw_verify: sign::rates::VerifyRates,
    pub raw_batch_verify_rounds: Vec<f64>,
    pub http: DoorRun,
    pub grpc: DoorRun,
    /// Absent without an MQTT broker to run it through.
    pub mqtt: Option<DoorRun>,
}

/// Issue #26's target for ingest (HTTP): accepted readings per ingest core-second over one core's
/// fastest raw batch verify.
pub const INGEST_TARGET_RATIO: f64 = 0.90;

/// One core's raw verify rates, measured now (3 s).
pub async fn raw_verify_now() -> sign::rates::VerifyRates {
    tokio::task::spawn_blocking(|| sign::rates::raw_verify_rates(Duration::from_secs(3)))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

impl IngestReport {
    /// Each door's median round against the median raw verify rate; `None` when a door other
    /// than MQTT, or the raw rate, has no round.
    pub fn new(
        raw: Vec<sign::rates::VerifyRates>,
        http: Vec<DoorRun>,
        grpc: Vec<DoorRun>,
        mqtt: Vec<DoorRun>,
    ) -> Option<IngestReport> {
        let raw_rounds: Vec<f64> = raw.iter().map(|r| r.fastest_batch_per_s).collect();
        let raw = median_by(raw, |r| r.fastest_batch_per_s)?;
        let door = |runs: Vec<DoorRun>| {
            let rounds: Vec<f64> = runs.iter().map(|r| r.accepted_per_ingest_core_s).collect();
            let mut r = median_by(runs, |r| r.accepted_per_ingest_core_s)?;
            r.ratio_to_raw_batch_verify = r.accepted_per_ingest_core_s / raw.fastest_batch_per_s;
            r.per_core_rounds = rounds;
            Some(r)
        };
        Some(IngestReport {
            http_target_ratio: INGEST_TARGET_RATIO,
            http: door(http)?,
            grpc: door(grpc)?,
            mqtt: door(mqtt),
            raw_verify: raw,
            raw_batch_verify_rounds: raw_rounds,
        })
    }
}

/// The item of median `key` (the upper one of an even count).
fn median_by<T>(mut items: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = items.len() / 2;
    items.into_iter().nth(mid)
}

/// Sends `bodies` through `door` as fast as `concurrency` senders can, charging the CPU time of the
/// process `pid` (the one behind the door).
pub async fn drive_door(
    door: &Door,
    pid: u32,
    bodies: Vec<Vec<u8>>,
    per_body: u64,
    concurrency: usize,
) -> DoorRun {
    let total = bodies.len() as u64 * per_body;
    let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies));
    let cpu0 = process_cpu_seconds(pid).unwrap_or(0.0);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (mut sender, queue) = (door.sender(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut accepted, mut non_200) = (0u64, 0u64);
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some(body) = next else {
                    break;
                };
                let out = Outgoing {
                    body,
                    content_type: "application/x-protobuf",
                    n: per_body,
                    request_class: Class::Valid,
                    first: None,
                };
                let t = Instant::now();
                let reply = sender.send(&out).await;
                if reply.status == 200 {
                    accepted += reply.body["accepted"].as_u64().unwrap_or(0);
                } else {
                    non_200 += 1;
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            (lat, accepted, non_200)
        }));
    }
    let (mut lat, mut accepted, mut non_200) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, a, n) = t
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
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
    DoorRun {
        via: door.via(),
        readings: total,
        accepted,
        non_200,
        wall_s: wall,
        accepted_per_s: accepted as f64 / wall,
        latency_p50_ms: pct(0.5),
        latency_p99_ms: pct(0.99),
        ingest_cpu_s: cpu,
        accepted_per_ingest_core_s: accepted as f64 / cpu.max(1e-9),
        ingest_peak_rss_bytes: peak_rss_bytes(pid),
        ratio_to_raw_batch_verify: 0.0,
        per_core_rounds: Vec::new(),
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
