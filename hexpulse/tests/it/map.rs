//! The map page end to end: `hexpulse up` with simulated traffic, then Debian's Chromium (driven by
//! playwright-core, `web/e2e.mjs`) loads the page, waits for rendered hexes, switches layers,
//! clicks a hex and checks the popup against the API, opens the epoch view of an (early-sealed)
//! epoch and shows a device's hexes, and saves a screenshot under `test-output/`; draws a pilot's
//! area, creates it and checks its report and charts (`test-output/pilot.png`); without WebGL
//! (plain headless Chromium) the page lists the hexes in a table and says what to enable.

use std::process::Command;
use std::time::Duration;

use hexpulse_testkit::testenv;

use crate::up::{Up, root};

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
    let root = root();
    // Epochs of 20 s (origin 2026-01-01T00:00:00Z), so that the epoch current at start ends soon:
    // only an ended epoch can be sealed, forced or not.
    let up = Up::start(
        "it-map",
        &brokers,
        &["--rate", "400"],
        Some("[process.epoch]\nlength = \"20s\"\n"),
    );
    let (base, epoch) = (up.query.clone(), up.epoch);
    let epoch_end_ms = 1_767_225_600_000 + (epoch + 1) * 20_000;
    // Once data is in the lake and the epoch has ended, seal it early (before its lateness has
    // passed) so the page's epoch view has one.
    let lake = up.lake();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !has_parquet(&lake.join("heartbeat")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no heartbeat file within 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    while now() < epoch_end_ms + 500 {
        std::thread::sleep(Duration::from_millis(200));
    }
    up.seal_forced(&brokers, epoch);
    let shot = format!("{root}/test-output/map.png");
    let _ = std::fs::create_dir_all(format!("{root}/test-output"));
    let out = Command::new("node")
        .arg(format!("{root}/web/e2e.mjs"))
        .arg(&base)
        .arg(&shot)
        .arg(
            up.admin_token
                .as_deref()
                .expect("up printed an admin token"),
        )
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
