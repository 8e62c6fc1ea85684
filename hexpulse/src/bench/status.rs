//! `hexpulse bench status`: the device status endpoints over a lake of a large fleet (issue #25:
//! p99 <= 50 ms for one device with 100k devices in the lake).
//!
//! A lake of simulated readings from `devices` devices over the last hour is written by the
//! processors' partition workers, as for `bench query`. The query service runs in this process;
//! the figures are the cache's first read of the lake, and the latency of
//! `GET /v1/devices/{key}/status` (random devices of the lake, `concurrency` keep-alive clients on
//! loopback) and of `GET /v1/devices/status?bbox=` over a city.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures::StreamExt;
use hexpulse_common::time::now_ms;
use hexpulse_lake::{HOUR_MS, Lake};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::query::{build_lake, percentile};

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Devices of the simulated fleet.
    #[arg(long, default_value_t = 100_000)]
    pub devices: usize,
    /// Readings written to the lake (spread over the fleet at random, over the last hour).
    #[arg(long, default_value_t = 400_000)]
    pub readings: usize,
    /// Timed one-device requests.
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// Clients sending them at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Write the JSON report here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Latency {
    requests: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    per_s: f64,
}

#[derive(Debug, Serialize)]
struct StatusReport {
    fleet: usize,
    readings: usize,
    /// Devices with rows in the lake (SQL), and in the cache (its gauge).
    lake_devices: usize,
    cached_devices: usize,
    /// From the query service's start to the cache's first answer.
    first_read_s: f64,
    one_device: Latency,
    /// `?bbox=` over Berlin: every device of the fleet's Berlin share.
    city_box: Latency,
    city_box_devices: u64,
    /// The target: one device's p99, ms.
    target_p99_ms: f64,
}

fn latency(ms: &[f64], wall: Duration) -> Latency {
    Latency {
        requests: ms.len(),
        p50_ms: percentile(ms, 0.5),
        p99_ms: percentile(ms, 0.99),
        max_ms: percentile(ms, 1.0),
        per_s: ms.len() as f64 / wall.as_secs_f64(),
    }
}

/// The gauge `name` in a Prometheus text answer.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

pub(crate) async fn status(args: StatusArgs) -> anyhow::Result<()> {
    ensure!(
        args.devices > 0 && args.requests > 0 && args.concurrency > 0,
        "--devices, --requests and --concurrency must be above 0"
    );
    let dir = std::env::temp_dir().join(format!("hexpulse-bench-status-{}", std::process::id()));
    let lake_dir = dir.join("lake");
    std::fs::create_dir_all(&lake_dir)?;
    let url = lake_dir.to_str().context("lake path")?.to_string();
    let lake = Lake::open(&url)?;
    let t = Instant::now();
    eprintln!(
        "[bench] writing {} readings of {} devices to {}",
        args.readings,
        args.devices,
        lake_dir.display()
    );
    build_lake(&lake, args.devices, args.readings, now_ms(), HOUR_MS).await?;
    eprintln!("[bench] lake written in {:.0} s", t.elapsed().as_secs_f64());

    let mut qcfg = hexpulse_query::QueryConfig::for_tests(&url);
    qcfg.max_features = args.devices;
    qcfg.query_threads = 0;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let q = hexpulse_query::Query::start(qcfg, lake, stop.clone()).await?;
    let base = format!("http://{}", q.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let probe = format!("{base}/v1/devices/{}/status", "00".repeat(32));
    loop {
        let s = client.get(&probe).send().await?.status();
        if s != 503 {
            ensure!(s == 404, "the status of an unknown device answered {s}");
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the cache did not load in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_read_s = started.elapsed().as_secs_f64();
    eprintln!("[bench] the status cache read the lake in {first_read_s:.1} s");

    // The lake's devices, by SQL in this process.
    let (ctx, _) = q.gate.catalog.context();
    let sql = "SELECT DISTINCT device_key FROM (SELECT device_key FROM heartbeat UNION ALL \
               SELECT device_key FROM sensor UNION ALL SELECT device_key FROM road)";
    let mut keys = Vec::new();
    let mut stream = ctx.sql(sql).await?.execute_stream().await?;
    while let Some(b) = stream.next().await {
        let b = b?;
        let col = hexpulse_query::datafusion::arrow::compute::cast(
            b.column(0),
            &hexpulse_query::datafusion::arrow::datatypes::DataType::Utf8,
        )?;
        let col = col
            .as_any()
            .downcast_ref::<hexpulse_query::datafusion::arrow::array::StringArray>()
            .context("device keys")?;
        keys.extend(col.iter().flatten().map(str::to_string));
    }
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let cached = gauge(&metrics, hexpulse_query::status::STATUS_DEVICES).unwrap_or(0.0) as usize;
    eprintln!(
        "[bench] {} devices in the lake, {cached} in the cache",
        keys.len()
    );
    ensure!(
        cached == keys.len(),
        "the cache holds {cached} devices, the lake {}",
        keys.len()
    );

    // One device at a time, `concurrency` clients.
    let keys = std::sync::Arc::new(keys);
    let per_client = args.requests.div_ceil(args.concurrency);
    let wall = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.concurrency {
        let (client, base, keys) = (client.clone(), base.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut ms = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let pick = super::seal::mix(((c as u64) << 32) | i as u64);
                let k = &keys[(pick % keys.len() as u64) as usize];
                let t = Instant::now();
                let r = client
                    .get(format!("{base}/v1/devices/{k}/status"))
                    .send()
                    .await?;
                ensure!(r.status() == 200, "device {k}: {}", r.status());
                r.bytes().await?;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(ms)
        }));
    }
    let mut one = Vec::new();
    for t in tasks {
        one.extend(t.await??);
    }
    let one_device = latency(&one, wall.elapsed());
    eprintln!(
        "[bench] one device: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {:.0}/s (target p99 <= 50 ms)",
        one_device.p50_ms, one_device.p99_ms, one_device.max_ms, one_device.per_s
    );

    // A city's devices in one answer.
    let berlin = format!("{base}/v1/devices/status?bbox=12.9,52.3,13.9,52.7");
    let mut city = Vec::new();
    let mut city_box_devices = 0;
    let wall = Instant::now();
    for _ in 0..50 {
        let t = Instant::now();
        let r = client.get(&berlin).send().await?;
        ensure!(r.status() == 200, "the Berlin box: {}", r.status());
        let v: serde_json::Value = r.json().await?;
        city.push(t.elapsed().as_secs_f64() * 1000.0);
        city_box_devices = v["count"].as_u64().unwrap_or(0);
    }
    let city_box = latency(&city, wall.elapsed());
    eprintln!(
        "[bench] Berlin box ({city_box_devices} devices): p50 {:.1} ms, p99 {:.1} ms",
        city_box.p50_ms, city_box.p99_ms
    );
    stop.cancel();
    q.wait().await;
    let report = StatusReport {
        fleet: args.devices,
        readings: args.readings,
        lake_devices: keys.len(),
        cached_devices: cached,
        first_read_s,
        one_device,
        city_box,
        city_box_devices,
        target_p99_ms: 50.0,
    };
    super::emit_report(&report, args.out)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
