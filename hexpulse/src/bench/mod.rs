//! `hexpulse bench ...`: benchmarks that run a role as a child process of this binary, so that the
//! role's CPU time and peak memory can be read from /proc and charged to it alone.

use hexpulse_common::time::now_ms;
use hexpulse_schemas::sign::rates;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hexpulse_load_tests::bench;
use hexpulse_load_tests::door::{Door, Via};
use serde::Serialize;

use crate::cli::BenchCmd;
use crate::config::Config;

pub(crate) mod doors;
pub(crate) mod e2e;
pub(crate) mod lake;
pub(crate) mod query;
pub(crate) mod seal;
pub(crate) mod status;

/// Prints a benchmark's JSON report on stdout and, with `out`, writes it there too.
pub fn emit_report<T: Serialize>(report: &T, out: Option<PathBuf>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    println!("{json}");
    if let Some(p) = out {
        std::fs::write(p, json + "\n")?;
    }
    Ok(())
}

/// Runs `scripts/<script>` with `python`, `request` on its stdin (JSON); the JSON it prints. The
/// script's stderr goes to ours.
pub(crate) async fn python_json(
    python: &Path,
    script: &str,
    request: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    use tokio::io::AsyncWriteExt;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script);
    let mut child = tokio::process::Command::new(python)
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} {script}", python.display()))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(request.to_string().as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("{script} failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{script}'s answer: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Spawns `hexpulse <role>` with `env`, logging to `dir/<role>.log`.
pub(crate) fn spawn_role(role: &str, env: &[(&str, String)], dir: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{role}.log")))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg(role).stdout(log.try_clone()?).stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.spawn()?)
}

pub(crate) fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

pub(crate) async fn wait_ready(url: &str) -> bool {
    let client = reqwest::Client::new();
    for _ in 0..150 {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// The ingest benchmark over each door: HTTP and the gRPC stream to an ingest process of their
/// own, MQTT through `mqtt_broker` to a bridge process (when given). Each door's accepted readings
/// per core-second of the process behind it, over the raw batch-verify rate of the same run.
pub async fn ingest(
    cfg: Config,
    readings: usize,
    batch: usize,
    concurrency: usize,
    rounds: usize,
    mqtt_broker: Option<String>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("hexpulse-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let registry = dir.join("devices.json");
    let mut fleet = bench::bench_fleet(1000, &registry)?;
    let topic = format!("bench-ingest-{}", std::process::id());
    let common = [
        ("HEXPULSE__REGISTRY__PATH", registry.display().to_string()),
        ("HEXPULSE__KAFKA__RAW_TOPIC", topic.clone()),
        ("HEXPULSE__KAFKA__BROKERS", cfg.kafka.brokers.clone()),
        ("RUST_LOG", "warn".into()),
    ];
    let mut doors = vec![Via::Http, Via::Grpc];
    match &mqtt_broker {
        Some(_) => doors.push(Via::Mqtt),
        None => eprintln!("[bench] ingest over mqtt: skipped (no --mqtt-broker)"),
    }
    let mut runs: BTreeMap<String, Vec<bench::DoorRun>> = BTreeMap::new();
    let mut raw = Vec::new();
    for round in 1..=rounds.max(1) {
        for &via in &doors {
            let port = free_port()?;
            let mut env = common.to_vec();
            let (role, health) = match via {
                Via::Mqtt => {
                    env.push((
                        "HEXPULSE__MQTT__BROKER",
                        mqtt_broker.clone().unwrap_or_default(),
                    ));
                    env.push((
                        "HEXPULSE__MQTT__CLIENT_ID",
                        format!("hexpulse-bench-{}", std::process::id()),
                    ));
                    env.push(("HEXPULSE__MQTT__LISTEN", format!("127.0.0.1:{port}")));
                    ("mqtt", format!("http://127.0.0.1:{port}/readyz"))
                }
                _ => {
                    env.push(("HEXPULSE__INGEST__LISTEN", format!("127.0.0.1:{port}")));
                    ("ingest", format!("http://127.0.0.1:{port}/readyz"))
                }
            };
            let child = spawn_role(role, &env, &dir)?;
            if !wait_ready(&health).await {
                stop(child);
                bail!(
                    "{role} did not become ready; see {}",
                    dir.join(format!("{role}.log")).display()
                );
            }
            let door = Door::open(
                via,
                &format!("http://127.0.0.1:{port}"),
                mqtt_broker.as_deref().unwrap_or_default(),
                concurrency,
            )
            .await?;
            let now = now_ms();
            let (f, bodies) = tokio::task::spawn_blocking(move || {
                let bodies = bench::presign(&mut fleet, readings, batch, now);
                (fleet, bodies)
            })
            .await?;
            fleet = f;
            let run = bench::drive_door(&door, child.id(), bodies, batch as u64, concurrency).await;
            stop(child);
            eprintln!(
                "[bench] round {round}, {via} (`hexpulse {role}`): {:.0} accepted/s, {:.0} per core-second, {} not answered 200",
                run.accepted_per_s, run.accepted_per_ingest_core_s, run.non_200
            );
            runs.entry(via.to_string()).or_default().push(run);
        }
        let r = bench::raw_verify_now().await;
        eprintln!(
            "[bench] round {round}: raw batch verify {:.0}/s on one core",
            r.fastest_batch_per_s
        );
        raw.push(r);
    }
    let mut take = |via: Via| runs.remove(&via.to_string()).unwrap_or_default();
    let (http, grpc, mqtt) = (take(Via::Http), take(Via::Grpc), take(Via::Mqtt));
    let report =
        bench::IngestReport::new(raw, http, grpc, mqtt).context("the benchmark ran no round")?;
    eprintln!(
        "[bench] medians of {rounds} rounds: raw batch verify {:.0}/s/core; ratio to it: http {:.2} (target >= {:.2}), grpc {:.2} (target >= http's), mqtt {} (target >= 0.70)",
        report.raw_verify.fastest_batch_per_s,
        report.http.ratio_to_raw_batch_verify,
        report.http_target_ratio,
        report.grpc.ratio_to_raw_batch_verify,
        report.mqtt.as_ref().map_or("not run".into(), |m| format!(
            "{:.2}",
            m.ratio_to_raw_batch_verify
        )),
    );
    emit_report(&report, out)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One processor run.
#[derive(Debug, Serialize)]
pub struct ProcessRun {
    pub reverify: bool,
    pub readings: usize,
    pub wall_s: f64,
    pub processor_cpu_s: f64,
    pub readings_per_core_s: f64,
    /// Lake rows written (a sensor reading gives one row per metric).
    pub rows: usize,
    pub rows_per_core_s: f64,
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ProcessReport {
    pub runs: Vec<ProcessRun>,
    pub raw_verify: rates::VerifyRates,
    /// Median rows per core-second of the runs without re-verification.
    pub plain_rows_per_core_s_median: f64,
    /// Re-verification on: readings per core-second over the raw batch-verify rate of one core.
    pub reverify_ratio_to_raw_batch_verify: f64,
    /// The target of `plain_rows_per_core_s_median`: [`PROCESS_TARGET_ROWS_PER_CORE_S`].
    pub target_rows_per_core_s: f64,
}

/// The processor's target, re-verification off: lake rows per core-second (issue #26).
pub const PROCESS_TARGET_ROWS_PER_CORE_S: f64 = 500_000.0;

pub async fn process(cfg: Config, readings: usize, out: Option<PathBuf>) -> anyhow::Result<()> {
    use hexpulse_lake::Lake;
    let dir = std::env::temp_dir().join(format!("hexpulse-bench-process-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let registry = dir.join("devices.json");
    let mix = hexpulse_load_tests::fleet::KindMix {
        heartbeat: 0.6,
        sensor: 0.3,
        road: 0.1,
    };
    let mut fleet = hexpulse_load_tests::fleet::Fleet::new(5_000, 11, mix);
    hexpulse_common::registry::Registry::open(&registry)?.upsert_all(fleet.registry_devices())?;
    let topic = format!("bench-process-{}", std::process::id());
    let mut kafka = cfg.kafka.clone();
    kafka.raw_topic = topic.clone();
    kafka.partitions = 2;
    kafka.ensure_topics(&[&topic]).await?;

    eprintln!(
        "[bench] signing and producing {readings} readings from 5000 simulated devices to {topic}..."
    );
    let now = now_ms();
    let start_ms = now - 30 * 60_000;
    let step = (30 * 60_000) as f64 / readings as f64;
    let records: Vec<(Vec<u8>, Vec<u8>)> = tokio::task::spawn_blocking(move || {
        use prost::Message;
        (0..readings)
            .map(|i| {
                let d = fleet.pick();
                let s = fleet.next_signed(d, start_ms + (i as f64 * step) as i64);
                (s.public_key.to_vec(), s.encode_to_vec())
            })
            .collect()
    })
    .await?;
    produce_all(&kafka, &records, now).await?;
    drop(records);

    let mut runs = Vec::new();
    // Three runs without re-verification (the figure is their median: single runs of a few CPU
    // seconds vary by ±20% on this machine), one with.
    for (run, reverify) in [false, false, false, true].into_iter().enumerate() {
        let lake_dir = dir.join(format!("lake-{run}"));
        let port = free_port()?;
        eprintln!(
            "[bench] processor run, re-verification {}",
            if reverify { "on" } else { "off" }
        );
        let child = spawn_role(
            "process",
            &[
                ("HEXPULSE__KAFKA__BROKERS", cfg.kafka.brokers.clone()),
                ("HEXPULSE__KAFKA__RAW_TOPIC", topic.clone()),
                ("HEXPULSE__REGISTRY__PATH", registry.display().to_string()),
                (
                    "HEXPULSE__PROCESS__LAKE_URL",
                    lake_dir.display().to_string(),
                ),
                ("HEXPULSE__PROCESS__GROUP_ID", format!("{topic}-{run}")),
                ("HEXPULSE__PROCESS__LISTEN", format!("127.0.0.1:{port}")),
                (
                    "HEXPULSE__PROCESS__REVERIFY_SIGNATURES",
                    reverify.to_string(),
                ),
                ("RUST_LOG", "warn".into()),
            ],
            &dir,
        )?;
        let pid = child.id();
        if !wait_ready(&format!("http://127.0.0.1:{port}/healthz")).await {
            stop(child);
            bail!(
                "processor did not start; see {}",
                dir.join("process.log").display()
            );
        }
        let cpu0 = bench::process_cpu_seconds(pid).unwrap_or(0.0);
        let t = Instant::now();
        let lake = Lake::open(lake_dir.to_str().context("lake path")?)?;
        let (mut done, mut rows) = (0usize, 0usize);
        while done < readings {
            tokio::time::sleep(Duration::from_millis(250)).await;
            (done, rows) = committed_records(&lake, &topic, kafka.partitions).await?;
            if t.elapsed() > Duration::from_secs(600) {
                stop(child);
                bail!("processor did not finish in 600 s ({done} of {readings})");
            }
        }
        let wall = t.elapsed().as_secs_f64();
        let cpu = bench::process_cpu_seconds(pid).unwrap_or(0.0) - cpu0;
        let rss = bench::peak_rss_bytes(pid);
        stop(child);
        eprintln!(
            "[bench]   {readings} readings ({rows} rows) in {wall:.1} s wall, {cpu:.1} CPU-s: {:.0} readings, {:.0} rows per core-second",
            readings as f64 / cpu,
            rows as f64 / cpu
        );
        runs.push(ProcessRun {
            rows,
            rows_per_core_s: rows as f64 / cpu,
            reverify,
            readings,
            wall_s: wall,
            processor_cpu_s: cpu,
            readings_per_core_s: readings as f64 / cpu,
            peak_rss_bytes: rss,
        });
    }
    let raw =
        tokio::task::spawn_blocking(|| rates::raw_verify_rates(Duration::from_secs(3))).await?;
    let mut plain: Vec<f64> = runs
        .iter()
        .filter(|r| !r.reverify)
        .map(|r| r.rows_per_core_s)
        .collect();
    plain.sort_by(f64::total_cmp);
    let median_plain = plain[plain.len() / 2];
    let reverified = runs
        .iter()
        .find(|r| r.reverify)
        .context("a re-verification run")?;
    eprintln!(
        "[bench] re-verification off, median of {}: {median_plain:.0} rows per core-second ({:.2} of the {:.0}k target)",
        plain.len(),
        median_plain / PROCESS_TARGET_ROWS_PER_CORE_S,
        PROCESS_TARGET_ROWS_PER_CORE_S / 1000.0
    );
    let report = ProcessReport {
        reverify_ratio_to_raw_batch_verify: reverified.readings_per_core_s
            / raw.fastest_batch_per_s,
        plain_rows_per_core_s_median: median_plain,
        target_rows_per_core_s: PROCESS_TARGET_ROWS_PER_CORE_S,
        runs,
        raw_verify: raw,
    };
    emit_report(&report, out)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Offsets of `topic`'s partitions covered by committed units (the gate table's txn versions), and
/// the rows of the stream tables' newest snapshots.
async fn committed_records(
    lake: &hexpulse_lake::Lake,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<(usize, usize)> {
    let gate = lake.table(hexpulse_lake::unit::STREAM_TABLES[0]);
    let mut n = 0usize;
    for p in 0..partitions {
        let app = hexpulse_lake::unit::app_id(topic, p);
        n += gate.txn_version(&app).await?.map_or(0, |v| v as usize + 1);
    }
    let mut rows = 0usize;
    for t in hexpulse_lake::unit::STREAM_TABLES {
        let (_, files) = lake.table(t).files().await?;
        rows += files.iter().filter_map(|f| f.rows).sum::<u64>() as usize;
    }
    Ok((n, rows))
}

async fn produce_all(
    kafka: &hexpulse_common::kafka::KafkaConfig,
    records: &[(Vec<u8>, Vec<u8>)],
    recv_ms: i64,
) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka
        .producer_config("bench-prefill", Duration::from_secs(60))
        .create()?;
    for chunk in records.chunks(20_000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for (k, v) in chunk {
            let v = hexpulse_schemas::wire::envelope::encode(recv_ms, "bench", v, None);
            let rec = FutureRecord::to(&kafka.raw_topic).key(k).payload(&v);
            pending.push(producer.send_result(rec).map_err(|(e, _)| e)?);
        }
        for p in pending {
            p.await?.map_err(|(e, _)| e)?;
        }
    }
    Ok(())
}

pub(crate) async fn run(cfg: Config, b: BenchCmd) -> anyhow::Result<()> {
    match b {
        BenchCmd::Verify => {
            let r = tokio::task::spawn_blocking(|| rates::raw_verify_rates(Duration::from_secs(3)))
                .await?;
            eprintln!(
                "[bench] verify on curve25519-dalek's {} backend: {:.0}/s single (our rule), {:.0}/s in batches of 128 (our rule; ed25519-dalek's batch {:.0}/s), {:.0}/s ingest's verifier on batches of 200",
                r.backend,
                r.single_rule_per_s,
                r.batch128_rule_per_s,
                r.batch128_per_s,
                r.ingest200_clean_per_s
            );
            out!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        BenchCmd::Ingest {
            readings,
            batch,
            concurrency,
            rounds,
            mqtt_broker,
            out,
        } => ingest(cfg, readings, batch, concurrency, rounds, mqtt_broker, out).await,
        BenchCmd::Process { readings, out } => process(cfg, readings, out).await,
        BenchCmd::Query {
            readings,
            runs,
            python,
            lake,
            out,
        } => query::query(readings, runs, python, lake, out).await,
        BenchCmd::E2e(args) => e2e::e2e(cfg, args).await,
        BenchCmd::Lake(args) => lake::lake(args).await,
        BenchCmd::Seal(args) => seal::seal(args).await,
        BenchCmd::Doors(args) => doors::doors(args).await,
        BenchCmd::Status(args) => status::status(args).await,
    }
}
