//! Crash test: `hexpulse process` is killed with SIGKILL at random points while a stream with every
//! invalid class flows in, and restarted each time. The lake ends with exactly the expected rows.
//! Then an independent reader (DuckDB) opens the files with the documented schema.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hexpulse_common::registry::Registry;
use hexpulse_lake::Lake;
use hexpulse_testkit::scenario;
use hexpulse_testkit::testenv;
use rand::{Rng, SeedableRng};

use crate::support::*;

struct Proc {
    cmd: Command,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) {
        self.child = Some(self.cmd.spawn().expect("spawn hexpulse process"));
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().unwrap();
        }
    }
    fn term(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status()
                .unwrap();
            let status = c.wait().unwrap();
            assert!(status.success(), "graceful shutdown exits 0: {status}");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_and_doubles_nothing() {
    let Some(brokers) = testenv::broker_or_skip("sigkill_at_random_points") else {
        return;
    };
    let seed: u64 = std::env::var("HEXPULSE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (set HEXPULSE_CRASH_SEED to repeat)");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);

    let now = now_ms();
    let sc = scenario::build(now, 300);
    let kafka = kafka(&brokers, "it-crash", 3);
    kafka.ensure_topics(&[&kafka.raw_topic]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    // HEXPULSE_CRASH_KEEP=1 keeps the lake for a post-mortem.
    let _dir = if std::env::var_os("HEXPULSE_CRASH_KEEP").is_some() {
        eprintln!("keeping {}", dir.keep().display());
        None
    } else {
        Some(dir)
    };
    let lake_dir = root.join("lake");
    let reg_path = root.join("devices.json");
    Registry::open(&reg_path)
        .unwrap()
        .upsert_all(sc.devices.clone())
        .unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hexpulse"));
    cmd.arg("process")
        .env("HEXPULSE__KAFKA__BROKERS", &brokers)
        .env("HEXPULSE__KAFKA__RAW_TOPIC", &kafka.raw_topic)
        .env("HEXPULSE__KAFKA__PARTITIONS", "3")
        .env("HEXPULSE__REGISTRY__PATH", &reg_path)
        .env("HEXPULSE__PROCESS__LAKE_URL", &lake_dir)
        .env(
            "HEXPULSE__PROCESS__GROUP_ID",
            format!("{}-g", kafka.raw_topic),
        )
        .env("HEXPULSE__PROCESS__LISTEN", "127.0.0.1:0")
        .env("HEXPULSE__PROCESS__ROLL_ROWS", "150")
        .env("HEXPULSE__PROCESS__ROLL_AGE", "50ms")
        .env("HEXPULSE__PROCESS__REVERIFY_SIGNATURES", "true")
        .env("HEXPULSE__PROCESS__SESSION_TIMEOUT", "6s")
        .env(
            "RUST_LOG",
            std::env::var("HEXPULSE_CRASH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null());
    let mut p = Proc { cmd, child: None };
    p.start();

    // Produce the stream in chunks (order kept) while killing the processor at random moments.
    let chunks: Vec<scenario::Scenario> = sc
        .records
        .chunks(sc.records.len().div_ceil(4))
        .map(|c| scenario::Scenario {
            devices: sc.devices.clone(),
            records: c.to_vec(),
        })
        .collect();
    let mut kills = 0;
    let producer = producer(&kafka).await;
    for chunk in &chunks {
        produce_with(&producer, &kafka, chunk, now).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..900))).await;
        p.kill9();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        p.start();
    }
    // One more kill while it catches up.
    for _ in 0..1 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1200))).await;
        p.kill9();
        kills += 1;
        p.start();
    }
    let lake = Lake::open(lake_dir.to_str().unwrap()).unwrap();
    // Liveness after repeated SIGKILLs depends on the broker's group coordinator: with tansu 0.6 the
    // group sometimes stops assigning or fetching after a crash (see the issue notes). Correctness is
    // what this test is about, so a stalled processor is restarted (as a supervisor would) and the
    // restarts are reported; the lake must still end exactly right.
    let mut summary = wait_for(&lake, sc.records.len(), Duration::from_secs(60)).await;
    let mut liveness_restarts = 0;
    while summary.distinct_records() < sc.records.len() && liveness_restarts < 3 {
        liveness_restarts += 1;
        eprintln!(
            "processor stalled at {} of {} records; restarting it",
            summary.distinct_records(),
            sc.records.len()
        );
        p.kill9();
        p.start();
        summary = wait_for(&lake, sc.records.len(), Duration::from_secs(60)).await;
    }
    p.term();
    eprintln!(
        "{kills} kills, {liveness_restarts} liveness restarts; {} files",
        summary.files
    );
    assert_matches(&summary, &sc);

    independent_reader(&lake_dir, &summary);
}

/// DuckDB's `delta_scan` and deltalake (from PyPI, installed by `make test`) read the same Delta
/// tables with the documented schema.
fn independent_reader(
    lake_dir: &std::path::Path,
    summary: &hexpulse_testkit::inspect::LakeSummary,
) {
    let Some(python) = testenv::python_or_skip("the outside readers' check") else {
        return;
    };
    let script = hexpulse_testkit::testenv::repo_root().join("scripts/read_lake.py");
    let out = Command::new(python)
        .arg(script)
        .arg(lake_dir)
        .output()
        .expect("run read_lake.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "read_lake.py: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON report");
    let rows = |t: &str| report["tables"][t]["rows"].as_u64().unwrap_or(0) as usize;
    let valid_rows = rows("heartbeat") + rows("sensor") + rows("road");
    assert_eq!(
        valid_rows,
        summary.valid.len(),
        "DuckDB sees the same valid rows"
    );
    assert_eq!(
        rows("rejected"),
        summary.rejected.len(),
        "DuckDB sees the same rejected rows"
    );
    assert_eq!(
        report["tables"]["heartbeat"]["types"]["event_time"],
        "TIMESTAMP WITH TIME ZONE"
    );
    // Delta has no unsigned types: the table schema says `long` for the cells.
    assert_eq!(report["tables"]["heartbeat"]["types"]["h3_r12"], "BIGINT");
}
