//! The map page end to end: `hexpulse up` with simulated traffic, then Debian's Chromium (driven by
//! playwright-core, `web/e2e.mjs`) loads the page, waits for rendered hexes, switches layers,
//! clicks a hex and checks the popup against the API, opens the epoch view of an (early-sealed)
//! epoch and shows a device's hexes, and saves a screenshot under `test-output/`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use hexpulse_common::testenv;

struct Up(std::process::Child);

fn has_parquet(dir: &std::path::Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            has_parquet(&p)
        } else {
            p.extension().is_some_and(|x| x == "parquet")
        }
    })
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
    }
}

#[test]
fn map_page_shows_live_hexes_that_match_the_api() {
    let Some(brokers) = testenv::broker_or_skip("map_page_shows_live_hexes") else {
        return;
    };
    if std::env::var_os("HEXPULSE_E2E").is_none() {
        assert!(
            std::env::var_os(testenv::REQUIRE_ENV).is_none(),
            "make test must set HEXPULSE_E2E (Chromium and the npm packages)"
        );
        eprintln!("*** SKIPPING the browser test: HEXPULSE_E2E unset (make test sets it) ***");
        return;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let dir = tempfile::tempdir().unwrap();
    let topic = testenv::unique_topic("it-map");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hexpulse"))
        .args(["up", "--rate", "400"])
        .env("HEXPULSE_CONFIG", format!("{root}/config/demo.toml"))
        .env("HEXPULSE__KAFKA__BROKERS", &brokers)
        .env("HEXPULSE__KAFKA__RAW_TOPIC", &topic)
        .env("HEXPULSE__KAFKA__PARTITIONS", "2")
        .env("HEXPULSE__REGISTRY__PATH", dir.path().join("devices.json"))
        .env("HEXPULSE__PROCESS__LAKE_URL", dir.path().join("lake"))
        .env("HEXPULSE__PROCESS__GROUP_ID", format!("{topic}-g"))
        .env("HEXPULSE__INGEST__LISTEN", "127.0.0.1:0")
        .env("HEXPULSE__PROCESS__LISTEN", "127.0.0.1:0")
        .env("HEXPULSE__QUERY__LISTEN", "127.0.0.1:0")
        .env("HEXPULSE__SIMULATE__DEVICES", "300")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("hexpulse up");
    // `up` prints the map URL first among the query lines.
    let stdout = child.stdout.take().unwrap();
    let up = Up(child);
    let (mut base, mut epoch) = (None, None);
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim_start().strip_prefix("map") {
            base = rest
                .split_whitespace()
                .next()
                .map(|u| u.trim_end_matches('/').to_string());
        }
        if let Some((_, rest)) = line.split_once("(now epoch ") {
            epoch = rest.split(')').next().and_then(|n| n.parse::<i64>().ok());
        }
        if base.is_some() && epoch.is_some() {
            break;
        }
    }
    let base = base.expect("`hexpulse up` printed the map URL");
    let epoch = epoch.expect("`hexpulse up` printed the current epoch");
    // Keep draining `up`'s stdout, or it fails printing its summary at shutdown.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    // Once data is in the lake, seal the current epoch early so the page's epoch view has one.
    let lake = dir.path().join("lake");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !has_parquet(&lake.join("heartbeat")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no heartbeat file within 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let sealed = Command::new(env!("CARGO_BIN_EXE_hexpulse"))
        .args(["seal", "--epoch", &epoch.to_string(), "--force"])
        .env("HEXPULSE_CONFIG", format!("{root}/config/demo.toml"))
        .env("HEXPULSE__KAFKA__RAW_TOPIC", &topic)
        .env("HEXPULSE__KAFKA__PARTITIONS", "2")
        .env("HEXPULSE__PROCESS__LAKE_URL", &lake)
        .env("RUST_LOG", "warn")
        .output()
        .expect("hexpulse seal");
    assert!(
        sealed.status.success(),
        "seal: {}",
        String::from_utf8_lossy(&sealed.stderr)
    );
    let shot = format!("{root}/test-output/map.png");
    let _ = std::fs::create_dir_all(format!("{root}/test-output"));
    let out = Command::new("node")
        .arg(format!("{root}/web/e2e.mjs"))
        .arg(&base)
        .arg(&shot)
        .output()
        .expect("node web/e2e.mjs");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser test failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real screenshot"
    );
    eprintln!("screenshot kept at {shot}");
    drop(up);
}
