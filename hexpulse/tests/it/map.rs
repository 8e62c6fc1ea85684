//! The map page end to end: `hexpulse up` with simulated traffic, then Debian's Chromium (driven by
//! playwright-core, `web/e2e.mjs`) loads the page, waits for rendered hexes, switches layers,
//! clicks a hex and checks the popup against the API, and saves a screenshot under `test-output/`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use hexpulse_common::testenv;

struct Up(std::process::Child);

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
    let mut base = None;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim_start().strip_prefix("map") {
            base = rest
                .split_whitespace()
                .next()
                .map(|u| u.trim_end_matches('/').to_string());
            break;
        }
    }
    let base = base.expect("`hexpulse up` printed the map URL");
    // Keep draining `up`'s stdout, or it fails printing its summary at shutdown.
    std::thread::spawn(move || for _ in lines.by_ref() {});
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
