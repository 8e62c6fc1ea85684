//! Faults under load, checked by accounting: the broker is stopped (and started again) while the
//! simulator sends; ingest answers 503 meanwhile, and every reading acknowledged before and during
//! the outage is in the lake exactly once (or rejected with its reason), nothing invented.
//!
//! **Ignored (not in `make test`)**: tansu 0.6 with sqlite storage, restarted under this load, answers
//! every request with `Storage(UnableToSend)` (its log is printed below), so the processor cannot read
//! what ingest acknowledged just before the stop and the accounting reports those readings missing
//! (328 of 4,452 in one run; 0 in a run where the processor had caught up before the stop). The lighter
//! `ingest` test `broker_outage_gives_503_then_recovers` shows recovery. See ARCHITECTURE.md, tansu
//! behaviours. Run it with `cargo nextest run -p hexpulse --run-ignored all -E 'test(broker_outage)'`.

use std::process::Stdio;
use std::time::Duration;

use hexpulse_common::testenv;
use serde_json::Value;

use crate::up::{Up, accounting_layer, summary};

#[test]
#[ignore = "tansu 0.6 (sqlite) does not serve after a restart under load; see the module comment"]
fn broker_outage_under_load_loses_and_doubles_nothing() {
    if testenv::broker_or_skip("broker_outage_under_load").is_none() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let Some(broker) = testenv::OwnBroker::new(cache.path()) else {
        assert!(
            std::env::var_os(testenv::REQUIRE_ENV).is_none(),
            "make test must set HEXPULSE_BROKER_SCRIPT and HEXPULSE_TANSU_BIN"
        );
        eprintln!("*** SKIPPING: no broker script (make test sets it) ***");
        return;
    };
    broker.start();
    let brokers = broker.address();
    // Short delivery timeout, so requests during the outage get their 503 quickly.
    let layer = accounting_layer("delivery_timeout = \"3s\"");
    let up = Up::start("it-faults", &brokers, &["--no-traffic"], Some(&layer));
    let sim = up
        .simulate(
            &brokers,
            &[
                "--adversarial",
                "0.01",
                "--duration",
                "25s",
                "--rate",
                "1000",
                "--devices",
                "1000",
                "--batch-size",
                "50",
                "--settle",
                "120s",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hexpulse simulate");
    std::thread::sleep(Duration::from_secs(8));
    eprintln!("stopping the broker");
    broker.stop();
    std::thread::sleep(Duration::from_secs(10));
    eprintln!("starting the broker again");
    broker.start();
    let out = sim.wait_with_output().expect("simulate finishes");
    let log = cache.path().join(format!("run/broker-{}/log", broker.port));
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    eprintln!("broker log, last lines reversed:\n{}", tail.join("\n"));
    let summary = summary(&out);
    let acct = &summary["accounting"];
    assert_eq!(
        acct["mismatch_total"], 0,
        "mismatches: {}",
        acct["mismatches"]
    );
    assert!(out.status.success(), "simulate failed");
    let statuses = summary["requests_by_status"].as_object().unwrap();
    assert!(
        statuses.get("503").and_then(Value::as_u64).unwrap_or(0) > 0,
        "no 503 while the broker was down: {statuses:?}"
    );
    assert!(
        statuses.get("200").and_then(Value::as_u64).unwrap_or(0) > 100,
        "{statuses:?}"
    );
    // Readings were acknowledged before the outage (8 s at 1,000/s).
    assert!(acct["acknowledged"].as_u64().unwrap() > 3_000, "{acct}");
}
