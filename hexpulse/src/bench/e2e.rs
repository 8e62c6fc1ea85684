//! `hexpulse bench e2e`: the whole pipeline on this machine, each role its own process (so each has
//! its own peak RSS): ingest, processor and query service against the broker, and `hexpulse
//! simulate` driving signed readings (with a small adversarial share) at a target rate, then
//! accounting every reading through the query service and measuring freshness with its probe.
//!
//! The simulator signs every reading before the clock starts (`--presign`): devices sign on their
//! own hardware, and on this 2-core machine signing while sending took about 40% of the CPU the
//! pipeline is measured on. `--presign false` measures with signing in the run.
//!
//! The end-to-end figure is the sustained rate from simulator to queryable Parquet: readings
//! acknowledged by ingest divided by the time from the first send until the lake held every one of
//! them (the run plus the accounting's settle time). It is compared with the raw batch-verify rate
//! of one core, measured in the same run: issue #26 asks for 0.75 of it.

use hexpulse_schemas::sign::rates;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hexpulse_load_tests::bench as lt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{emit_report, free_port, spawn_role, stop, wait_ready};
use crate::config::Config;

const TOKEN: &str = "bench-e2e-accounting";

/// Issue #26's target: the end-to-end rate over one core's fastest raw batch verify.
pub const E2E_TARGET_RATIO: f64 = 0.75;

/// Settings of one end-to-end run.
#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    /// Target readings per second (above what this machine sustains, so the pipeline sets the pace;
    /// a run that sustains nearly all of it says so, and its rate is only a lower bound). 60,000 was
    /// below what a 2-core AVX-512 IFMA machine sustains (load-tests/RESULTS.md, 2026-12-06 08:20).
    #[arg(long, default_value_t = 100000.0)]
    pub rate: f64,
    /// How long to send.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Simulated devices (the rules allow each 120 readings a minute, so 100,000 devices may send
    /// 200,000 a second).
    #[arg(long, default_value_t = 100000)]
    pub devices: usize,
    /// Requests the simulator keeps in flight (each of 200 readings). 16 instead of 8 changed the
    /// rate by under 2% on a 2-core machine (load-tests/RESULTS.md): the pipeline's CPU bounds it.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Share of each adversarial class.
    #[arg(long, default_value_t = 0.005)]
    pub adversarial: f64,
    /// Sign every reading before the clock starts (devices sign on their own hardware, so the
    /// simulator's signing is not the pipeline's work); `--presign false` signs while sending.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub presign: bool,
    /// The broker's pid, for its peak RSS.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Write the JSON report here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct E2eReport {
    pub target_rate: f64,
    /// Whether the simulator signed every reading before the clock started.
    pub presigned: bool,
    pub duration_s: f64,
    pub devices: usize,
    /// Requests the simulator kept in flight.
    pub concurrency: usize,
    pub adversarial_share: f64,
    /// One core's verify rates, measured before the roles start and again after they stop (this
    /// machine's speed drifts by tens of percent within minutes).
    pub raw_verify: rates::VerifyRates,
    pub raw_verify_after: rates::VerifyRates,
    /// Readings acknowledged by ingest.
    pub acknowledged: u64,
    /// Seconds of sending, and seconds after it until the lake's rows could hold every acknowledged
    /// reading (the accounting's full read then confirmed it; that read's own time is not counted).
    pub send_s: f64,
    pub visible_s: f64,
    /// acknowledged / (send_s + visible_s).
    pub end_to_end_per_s: f64,
    /// One core's raw batch-verify rate (the faster batch verifier), the higher of the two measurements.
    pub one_core_batch_verify_per_s: f64,
    /// `end_to_end_per_s` over it.
    pub ratio: f64,
    /// The target of `ratio`: [`E2E_TARGET_RATIO`].
    pub target_ratio: f64,
    pub accounting_mismatches: u64,
    pub freshness_p50_ms: f64,
    pub freshness_p99_ms: f64,
    pub freshness_samples: u64,
    /// The same through `/v1/coverage` (the probe's hexes).
    pub freshness_coverage_p50_ms: f64,
    pub freshness_coverage_p99_ms: f64,
    /// The probe's SQL poll: how long the query service took to answer it, p99 (the part of
    /// freshness that is query latency).
    pub freshness_poll_p99_ms: f64,
    /// Peak resident set size per role, bytes (VmHWM).
    pub peak_rss_bytes: BTreeMap<String, u64>,
    /// CPU seconds used per role during the run (user + system), from its start (the simulator's
    /// includes presigning, the query service's the accounting's full read).
    pub cpu_s: BTreeMap<String, f64>,
    /// CPU seconds per role within the measured window only (from the simulator's first send for
    /// `send_s + visible_s`; sampled every half second), and the same per acknowledged reading in
    /// microseconds: where the machine's cores went while the rate was measured.
    pub window_cpu_s: BTreeMap<String, f64>,
    pub window_cpu_us_per_reading: BTreeMap<String, f64>,
    /// All roles' window CPU seconds over the window's length: the cores the run kept busy.
    pub window_cores_busy: f64,
    /// The simulator's whole JSON summary.
    pub simulate: serde_json::Value,
}

pub async fn e2e(cfg: Config, a: E2eArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("hexpulse-bench-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    eprintln!("[bench] raw Ed25519 verify rate of one core...");
    let raw =
        tokio::task::spawn_blocking(|| rates::raw_verify_rates(Duration::from_secs(3))).await?;
    let topic = format!("bench-e2e-{}", std::process::id());
    let (ingest_port, process_port, query_port) = (free_port()?, free_port()?, free_port()?);
    // The query service reads the processor's live rows, as `up` does.
    let layer = dir.join("bench.toml");
    std::fs::write(
        &layer,
        format!(
            "[query.auth]\ntokens = [{{ name = \"bench\", role = \"admin\", sha256 = \"{}\" }}]\n\
             [query.live]\nsources = [\"http://127.0.0.1:{process_port}\"]\n",
            hex::encode(Sha256::digest(TOKEN.as_bytes()))
        ),
    )?;
    let env: Vec<(&str, String)> = vec![
        ("HEXPULSE_CONFIG", layer.display().to_string()),
        ("HEXPULSE__KAFKA__BROKERS", cfg.kafka.brokers.clone()),
        ("HEXPULSE__KAFKA__RAW_TOPIC", topic.clone()),
        ("HEXPULSE__KAFKA__PARTITIONS", "2".into()),
        (
            "HEXPULSE__REGISTRY__PATH",
            dir.join("devices.json").display().to_string(),
        ),
        (
            "HEXPULSE__PROCESS__LAKE_URL",
            dir.join("lake").display().to_string(),
        ),
        (
            "HEXPULSE__QUERY__LAKE_URL",
            dir.join("lake").display().to_string(),
        ),
        ("HEXPULSE__PROCESS__GROUP_ID", format!("{topic}-g")),
        (
            "HEXPULSE__INGEST__LISTEN",
            format!("127.0.0.1:{ingest_port}"),
        ),
        (
            "HEXPULSE__PROCESS__LISTEN",
            format!("127.0.0.1:{process_port}"),
        ),
        ("HEXPULSE__QUERY__LISTEN", format!("127.0.0.1:{query_port}")),
        ("RUST_LOG", "warn".into()),
    ];
    // The registry file must exist before the roles open it; simulate --register fills it.
    std::fs::write(dir.join("devices.json"), "[]")?;
    let mut roles = Vec::new();
    for (role, health) in [
        ("ingest", format!("http://127.0.0.1:{ingest_port}/readyz")),
        (
            "process",
            format!("http://127.0.0.1:{process_port}/healthz"),
        ),
        ("query", format!("http://127.0.0.1:{query_port}/healthz")),
    ] {
        let child = spawn_role(role, &env, &dir)?;
        if !wait_ready(&health).await {
            for (_, c) in roles {
                stop(c);
            }
            stop(child);
            bail!(
                "{role} did not start; see {}",
                dir.join(format!("{role}.log")).display()
            );
        }
        roles.push((role, child));
    }
    let ingest_url = format!("http://127.0.0.1:{ingest_port}");
    let query_url = format!("http://127.0.0.1:{query_port}");
    let sim_out = dir.join("simulate.json");
    eprintln!(
        "[bench] simulate: {} readings/s for {:?} from {} devices, adversarial share {}",
        a.rate, a.duration, a.devices, a.adversarial
    );
    let mut sim = Command::new(std::env::current_exe()?);
    sim.args(["simulate", "--register", "--account", "--target-url"])
        .arg(&ingest_url)
        .args(["--query-url", &query_url])
        .args(["--rate", &a.rate.to_string()])
        .args(["--duration", &format!("{}s", a.duration.as_secs())])
        .args(["--devices", &a.devices.to_string()])
        .args(["--adversarial", &a.adversarial.to_string()])
        .args(["--batch-size", "200", "--settle", "300s"])
        .args(["--concurrency", &a.concurrency.to_string()])
        .args(a.presign.then_some("--presign"))
        .arg("--out")
        .arg(&sim_out)
        .env("HEXPULSE_QUERY_TOKEN", TOKEN)
        .stdout(std::fs::File::create(dir.join("simulate.stdout"))?)
        .stderr(std::fs::File::create(dir.join("simulate.log"))?);
    for (k, v) in &env {
        sim.env(k, v);
    }
    let mut sim = sim.spawn()?;
    let mut peak: BTreeMap<String, u64> = BTreeMap::new();
    let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
    let broker_cpu0 = a.broker_pid.and_then(|p| lt::process_cpu_seconds(p).ok());
    let sample = |peak: &mut BTreeMap<String, u64>,
                  cpu: &mut BTreeMap<String, f64>,
                  name: &str,
                  pid: u32| {
        if let Some(b) = lt::peak_rss_bytes(pid) {
            let e = peak.entry(name.to_string()).or_default();
            *e = (*e).max(b);
        }
        if let Ok(c) = lt::process_cpu_seconds(pid) {
            let c = c - if name == "broker" {
                broker_cpu0.unwrap_or(0.0)
            } else {
                0.0
            };
            cpu.insert(name.to_string(), c);
        }
    };
    // Each role's CPU seconds so far, every half second, and when the simulator started sending.
    let mut timeline: Vec<(Instant, BTreeMap<String, f64>)> = Vec::new();
    let mut sending_at = None;
    let sim_log = dir.join("simulate.log");
    let mut relay = Relay::default();
    let status = loop {
        for (role, c) in &roles {
            sample(&mut peak, &mut cpu, role, c.id());
        }
        sample(&mut peak, &mut cpu, "simulate", sim.id());
        if let Some(pid) = a.broker_pid {
            sample(&mut peak, &mut cpu, "broker", pid);
        }
        timeline.push((Instant::now(), cpu.clone()));
        let log = std::fs::read_to_string(&sim_log).unwrap_or_default();
        for line in relay.new_lines(&log) {
            if sending_at.is_none() && line == hexpulse_load_tests::sim::SENDING_MARK {
                sending_at = Some(Instant::now());
            }
            if relay.shows(line, Instant::now()) {
                eprintln!("{line}");
            }
        }
        if let Some(s) = sim.try_wait()? {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (role, c) in &roles {
        sample(&mut peak, &mut cpu, role, c.id());
    }
    for (_, c) in roles {
        stop(c);
    }
    eprintln!("[bench] raw Ed25519 verify rate of one core, again...");
    let raw_after =
        tokio::task::spawn_blocking(|| rates::raw_verify_rates(Duration::from_secs(3))).await?;
    let text = std::fs::read_to_string(&sim_out).with_context(|| {
        format!(
            "simulate wrote no summary (exit {status}); see {}",
            dir.join("simulate.log").display()
        )
    })?;
    let s: serde_json::Value = serde_json::from_str(&text)?;
    let acct = &s["accounting"];
    let acknowledged = acct["acknowledged"].as_u64().unwrap_or(0);
    let send_s = s["elapsed_s"].as_f64().unwrap_or(0.0);
    let visible_s = acct["visible_s"].as_f64().unwrap_or(f64::NAN);
    let end_to_end_per_s = acknowledged as f64 / (send_s + visible_s).max(1e-9);
    let one_core = raw.fastest_batch_per_s.max(raw_after.fastest_batch_per_s);
    let window_s = send_s + visible_s;
    let window_cpu_s = sending_at
        .filter(|_| window_s.is_finite())
        .map(|t0| window_cpu(&timeline, t0, t0 + Duration::from_secs_f64(window_s)))
        .unwrap_or_default();
    let window_cpu_us_per_reading = window_cpu_s
        .iter()
        .map(|(k, v)| (k.clone(), 1e6 * v / (acknowledged.max(1) as f64)))
        .collect();
    let window_cores_busy = window_cpu_s.values().sum::<f64>() / window_s.max(1e-9);
    let report = E2eReport {
        target_rate: a.rate,
        presigned: a.presign,
        duration_s: a.duration.as_secs_f64(),
        devices: a.devices,
        concurrency: a.concurrency,
        adversarial_share: a.adversarial,
        raw_verify: raw,
        raw_verify_after: raw_after,
        acknowledged,
        send_s,
        visible_s,
        end_to_end_per_s,
        one_core_batch_verify_per_s: one_core,
        ratio: end_to_end_per_s / one_core,
        target_ratio: E2E_TARGET_RATIO,
        accounting_mismatches: acct["mismatch_total"].as_u64().unwrap_or(u64::MAX),
        freshness_p50_ms: s["freshness"]["p50_ms"].as_f64().unwrap_or(0.0),
        freshness_p99_ms: s["freshness"]["p99_ms"].as_f64().unwrap_or(0.0),
        freshness_samples: s["freshness"]["samples"].as_u64().unwrap_or(0),
        freshness_coverage_p50_ms: s["freshness"]["coverage"]["p50_ms"].as_f64().unwrap_or(0.0),
        freshness_coverage_p99_ms: s["freshness"]["coverage"]["p99_ms"].as_f64().unwrap_or(0.0),
        freshness_poll_p99_ms: s["freshness"]["poll_p99_ms"].as_f64().unwrap_or(0.0),
        peak_rss_bytes: peak,
        cpu_s: cpu,
        window_cpu_s,
        window_cpu_us_per_reading,
        window_cores_busy,
        simulate: s.clone(),
    };
    eprintln!(
        "[bench] end to end: {:.0} readings/s sustained ({:.2} of one core's raw batch verify, {:.0}/s; target {:.2}); mismatches {}; freshness p50 {:.0} ms p99 {:.0} ms (SQL), p50 {:.0} ms p99 {:.0} ms (coverage); the SQL poll's own answer time p99 {:.0} ms",
        report.end_to_end_per_s,
        report.ratio,
        report.one_core_batch_verify_per_s,
        report.target_ratio,
        report.accounting_mismatches,
        report.freshness_p50_ms,
        report.freshness_p99_ms,
        report.freshness_coverage_p50_ms,
        report.freshness_coverage_p99_ms,
        report.freshness_poll_p99_ms
    );
    if !report.window_cpu_s.is_empty() {
        eprintln!(
            "[bench] end to end: {:.2} cores busy in the measured window; CPU µs per acknowledged reading: {}",
            report.window_cores_busy,
            report
                .window_cpu_us_per_reading
                .iter()
                .map(|(k, v)| format!("{k} {v:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if report.end_to_end_per_s >= 0.95 * a.rate {
        eprintln!(
            "[bench] end to end: the run sustained {:.0}% of its {:.0}/s target, so the simulator, not the pipeline, set the pace: the rate is a lower bound; run it again with a higher --rate",
            100.0 * report.end_to_end_per_s / a.rate,
            a.rate
        );
    }
    emit_report(&report, a.out)?;
    if report.accounting_mismatches != 0 {
        bail!(
            "accounting found mismatches; the run's files are in {}",
            dir.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Passes the simulator's progress on (it writes to a log of its own): the presigning, the start
/// of sending, the accounting's rounds, and of its once-a-second sending lines one every
/// [`Relay::EVERY`].
#[derive(Debug, Default)]
struct Relay {
    /// Bytes of the log already read (whole lines only).
    read: usize,
    last_tick: Option<Instant>,
}

impl Relay {
    const EVERY: Duration = Duration::from_secs(10);

    /// The lines completed since the last call.
    fn new_lines<'a>(&mut self, log: &'a str) -> Vec<&'a str> {
        let Some(fresh) = log.get(self.read..) else {
            return Vec::new();
        };
        let whole = fresh.rfind('\n').map_or(0, |i| i + 1);
        self.read += whole;
        fresh[..whole].lines().collect()
    }

    /// Whether to show `line` now.
    fn shows(&mut self, line: &str, now: Instant) -> bool {
        let Some(rest) = line.strip_prefix("[simulate] ") else {
            return line.starts_with("[account] ");
        };
        // "[simulate]     12s sent ...": once a second while sending.
        let tick = rest
            .trim_start()
            .split_once("s sent ")
            .is_some_and(|(secs, _)| !secs.is_empty() && secs.bytes().all(|b| b.is_ascii_digit()));
        if !tick {
            return true;
        }
        if self
            .last_tick
            .is_some_and(|t| now.duration_since(t) < Self::EVERY)
        {
            return false;
        }
        self.last_tick = Some(now);
        true
    }
}

/// Each role's CPU seconds between `from` and `to`, from the samples nearest to each (a role
/// missing from a sample counts as zero there).
fn window_cpu(
    timeline: &[(Instant, BTreeMap<String, f64>)],
    from: Instant,
    to: Instant,
) -> BTreeMap<String, f64> {
    let nearest = |t: Instant| {
        timeline.iter().min_by_key(|(at, _)| {
            if *at > t {
                at.duration_since(t)
            } else {
                t.duration_since(*at)
            }
        })
    };
    let (Some((_, a)), Some((_, b))) = (nearest(from), nearest(to)) else {
        return BTreeMap::new();
    };
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulators_progress_is_passed_on_with_its_ticks_thinned() {
        let t0 = Instant::now();
        let mut r = Relay::default();
        let mut log = String::from("[simulate] presigned 100 of 200 readings\n[simulate] pre");
        assert_eq!(
            r.new_lines(&log),
            ["[simulate] presigned 100 of 200 readings"],
            "a line still being written waits"
        );
        log.push_str("signed 200 readings in 3.0 s\n[simulate] sending\nwarn: something\n");
        let lines = r.new_lines(&log);
        assert_eq!(
            lines,
            [
                "[simulate] presigned 200 readings in 3.0 s",
                "[simulate] sending",
                "warn: something"
            ]
        );
        let shown: Vec<bool> = lines.iter().map(|l| r.shows(l, t0)).collect();
        assert_eq!(shown, [true, true, false]);
        let tick = |secs: u64| format!("[simulate] {secs:>6}s sent 10 accepted 10 (10/s)");
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert!(r.shows(&tick(1), at(1)));
        assert!(!r.shows(&tick(2), at(2)));
        assert!(!r.shows(&tick(10), at(10)));
        assert!(r.shows(&tick(11), at(11)));
        assert!(r.shows(
            "[account]    2s lake holds 10 of 20 acknowledged readings",
            at(12)
        ));
        assert!(r.new_lines(&log).is_empty(), "nothing new");
    }

    #[test]
    fn window_cpu_takes_the_samples_nearest_to_its_edges() {
        let t0 = Instant::now();
        let at = |ms: u64, ingest: f64, sim: Option<f64>| {
            let mut m = BTreeMap::from([("ingest".to_string(), ingest)]);
            if let Some(s) = sim {
                m.insert("simulate".to_string(), s);
            }
            (t0 + Duration::from_millis(ms), m)
        };
        let timeline = [
            at(0, 1.0, None),
            at(500, 1.5, Some(3.0)),
            at(1000, 2.5, Some(3.5)),
            at(1500, 4.0, Some(3.6)),
            at(2000, 9.0, Some(9.0)),
        ];
        let w = window_cpu(
            &timeline,
            t0 + Duration::from_millis(480),
            t0 + Duration::from_millis(1600),
        );
        assert_eq!(w["ingest"], 2.5);
        assert!((w["simulate"] - 0.6).abs() < 1e-9);
        let w = window_cpu(&timeline, t0, t0 + Duration::from_millis(600));
        assert_eq!(w["ingest"], 0.5);
        assert_eq!(
            w["simulate"], 3.0,
            "a role not yet sampled at the start counts from zero"
        );
    }
}
