//! The pilot scenario end to end (issue #25): `hexpulse up` with the simulator's pilot scenario
//! (few devices in an area, new hotspots there after a start) creates its pilot; a closed pilot over
//! the same cells and times, with its epochs sealed, gets a report whose numbers equal those DuckDB
//! computes from the lake's Delta tables (`scripts/pilot_report.py`, schemas/PILOTS.md).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hexpulse_testkit::testenv;
use serde_json::{Value, json};

use crate::restart::block_on;
use crate::up::{ADMIN_TOKEN, Up, accounting_layer, root};

/// Epochs of 20 s from 2026-01-01T00:00:00Z.
const EPOCH_MS: i64 = 20_000;
const ORIGIN_MS: i64 = 1_767_225_600_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    block_on(async {
        let client = reqwest::Client::new();
        let mut rb = if method == "POST" {
            client.post(url)
        } else {
            client.get(url)
        }
        .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    })
}

fn ms(rfc3339: &Value) -> i64 {
    let t = humantime::parse_rfc3339_weak(rfc3339.as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-3 * y.abs().max(1.0),
        _ => a.is_null() && b.is_null(),
    }
}

#[test]
fn pilot_scenario_report_matches_duckdb() {
    let Some(brokers) = testenv::broker_or_skip("pilot_scenario_report_matches_duckdb") else {
        return;
    };
    let Some(python) = testenv::python_or_skip("pilot_scenario_report_matches_duckdb") else {
        return;
    };
    // Epochs of 20 s, so that the pilot's can be sealed within the test; no live tier, so that the
    // report and DuckDB read the same committed rows; the new hotspots start 30 s in.
    let layer = format!(
        "{}\n[process.epoch]\nlength = \"20s\"\n\n[process.live]\ninterval = \"0s\"\n\n\
         [simulate.pilot]\nname = \"it pilot\"\narea = [13.15, 52.50, 13.26, 52.57]\n\
         start_after = \"30s\"\nnew_hotspots = 20\n",
        accounting_layer("")
    );
    let up = Up::start("it-pilot", &brokers, &["--rate", "300"], Some(&layer));
    let base = up.query.clone();

    // `up` made the scenario's pilot, starting when its hotspots do.
    let (s, list) = call("GET", &format!("{base}/v1/pilots"), None);
    assert_eq!(s, 200, "{list}");
    let demo = list["pilots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "it pilot")
        .unwrap_or_else(|| panic!("up made no pilot: {list}"))
        .clone();
    let (_, demo) = call(
        "GET",
        &format!("{base}/v1/pilots/{}", demo["id"].as_str().unwrap()),
        None,
    );
    let start = ms(&demo["start"]);
    assert!(demo["cells"].as_array().unwrap().len() > 20, "{demo}");

    // A closed pilot over the same cells: 40 s of the scenario, ended 10 s ago.
    while now_ms() < start + 50_000 {
        std::thread::sleep(Duration::from_millis(500));
    }
    let end = now_ms() - 10_000;
    let (s, closed) = call(
        "POST",
        &format!("{base}/v1/pilots"),
        Some(json!({
            "name": "it pilot, closed", "cells": demo["cells"], "start": demo["start"],
            "end": hexpulse_query::params::rfc3339(end),
        })),
    );
    assert_eq!(s, 201, "{closed}");
    let id = closed["id"].as_str().unwrap();

    // Seal (forced: the lateness has not passed) every epoch that overlaps the pilot.
    let first = (start - ORIGIN_MS).div_euclid(EPOCH_MS);
    let last = (end - 1 - ORIGIN_MS).div_euclid(EPOCH_MS);
    let mut epochs = Vec::new();
    for epoch in first..=last {
        while now_ms() < ORIGIN_MS + (epoch + 1) * EPOCH_MS + 2_000 {
            std::thread::sleep(Duration::from_millis(200));
        }
        up.seal_forced(&brokers, epoch);
        epochs.push(epoch);
    }
    // The query service sees the sealed epochs once its catalog is refreshed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let (s, r) = call("GET", &format!("{base}/v1/pilots/{id}/report"), None);
        assert_eq!(s, 200, "{r}");
        if r["cost"]["rests_on"]["epochs"].as_array().unwrap().len() == epochs.len() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the report never rested on {epochs:?}: {r}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(report["status"], "ended");

    // DuckDB's numbers, from the lake alone.
    let cells: Vec<u64> = demo["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| u64::from_str_radix(c.as_str().unwrap(), 16).unwrap())
        .collect();
    let spec = json!({
        "cells": cells,
        "before_from_ms": ms(&report["windows"]["before"]["from"]),
        "start_ms": ms(&report["windows"]["during"]["from"]),
        "end_ms": ms(&report["windows"]["during"]["to"]),
        "epochs": epochs,
        "price_per_point_usd": report["cost"]["price_per_point_usd"],
    });
    let mut child = Command::new(&python)
        .arg(format!("{}/scripts/pilot_report.py", root()))
        .arg(up.lake())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "pilot_report.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let duck: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("report: {report}\nduckdb: {duck}");

    let (cov, dep, cost) = (&report["coverage"], &report["deployment"], &report["cost"]);
    // The scenario: few devices before, the new hotspots during.
    assert!(
        duck["during"]["cells"].as_u64() > duck["before"]["cells"].as_u64(),
        "{duck}"
    );
    assert!(duck["during"]["devices"].as_u64().unwrap() >= 10, "{duck}");
    assert_eq!(cov["covered_cells_before"], duck["before"]["cells"]);
    assert_eq!(cov["covered_cells_during"], duck["during"]["cells"]);
    assert_eq!(
        cov["dead_to_covered"].as_array().unwrap().len() as u64,
        duck["dead_to_covered"].as_u64().unwrap()
    );
    assert_eq!(dep["active_devices_before"], duck["before"]["devices"]);
    assert_eq!(dep["active_devices_during"], duck["during"]["devices"]);
    for k in ["hours_to_50pct_coverage", "hours_to_90pct_coverage"] {
        assert!(close(&dep[k], &duck[k]), "{k}: {} vs {}", dep[k], duck[k]);
    }
    for phase in ["before", "during"] {
        let q = &report["quality"][phase];
        assert_eq!(q["speed_tests"], duck[phase]["speed_tests"], "{phase}");
        for metric in ["download_mbps", "upload_mbps", "latency_ms", "signal_dbm"] {
            for p in ["p10", "p50", "p90"] {
                let (a, b) = (&q[metric][p], &duck[phase]["quality"][metric][p]);
                assert!(close(a, b), "{phase} {metric} {p}: {a} vs {b}");
            }
        }
    }
    assert!(duck["points"].as_u64().unwrap() > 0, "{duck}");
    assert_eq!(cost["points"], duck["points"]);
    assert!(close(&cost["rewards_usd"], &duck["rewards_usd"]));
}
