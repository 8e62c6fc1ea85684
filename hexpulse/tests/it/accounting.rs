//! Accounting: `hexpulse simulate --account` sends tens of thousands of readings with every
//! adversarial class to `hexpulse up` (real broker, real lake), then reads the lake back through the
//! query service's SQL and compares it with what it sent, reading by reading. Zero mismatches, every
//! class present, and a freshness figure.

use hexpulse_testkit::testenv;

use crate::up::{Up, accounted, accounting_layer};

#[test]
fn adversarial_run_accounts_for_every_reading() {
    let Some(brokers) = testenv::broker_or_skip("adversarial_run_accounts") else {
        return;
    };
    // A 256 KiB body limit, so that oversize requests stay cheap.
    let layer = accounting_layer("max_body_bytes = 262144");
    let up = Up::start("it-accounting", &brokers, &["--no-traffic"], Some(&layer));
    let out = up
        .simulate(
            &brokers,
            &[
                "--adversarial",
                "0.02",
                "--count",
                "30000",
                "--devices",
                "2000",
                "--batch-size",
                "100",
                "--concurrency",
                "4",
                "--rate",
                "0",
                "--settle",
                "90s",
                // Built and signed before sending, as `hexpulse bench e2e` does (the fault tests
                // sign as they send).
                "--presign",
            ],
        )
        .output()
        .expect("hexpulse simulate");
    let summary = accounted(&out);
    assert!(summary["presign_s"].as_f64().unwrap() > 0.0, "{summary}");
    let acct = &summary["accounting"];
    for class in [
        "valid",
        "bad_signature",
        "other_key",
        "unknown_device",
        "replay",
        "future",
        "stale",
        "teleport",
        "out_of_range",
        "oversize_body",
    ] {
        let n = acct["sent_by_class"][class].as_u64().unwrap_or(0);
        assert!(n > 0, "no {class} reading was sent");
    }
    let requests = acct["requests"].as_object().unwrap();
    assert!(requests.get("malformed_body:400").is_some(), "{requests:?}");
    assert!(requests.get("oversize_body:413").is_some(), "{requests:?}");
    assert!(acct["acknowledged"].as_u64().unwrap() > 20_000);
    assert!(acct["lake_rejected_rows"].as_u64().unwrap() > 1_000);
    let fresh = &summary["freshness"];
    // None left unseen: the polls after the first sighting (filtered on the probe's cell) keep
    // finding the probe's readings.
    assert!(fresh["samples"].as_u64().unwrap() > 0, "{fresh}");
    assert_eq!(fresh["unseen"].as_u64(), Some(0), "{fresh}");
    assert!(fresh["p50_ms"].as_f64().unwrap() > 0.0, "{fresh}");
    // The same readings seen through /v1/coverage (the probe's hexes).
    let coverage = &fresh["coverage"];
    assert!(coverage["samples"].as_u64().unwrap() > 0, "{fresh}");
    assert_eq!(coverage["unseen"].as_u64(), Some(0), "{fresh}");
}

/// The adversarial mix over another door, at a bounded rate: every reading accounted for, every
/// class sent, and the refused requests answered as HTTP would (the door's answers read by WIRE.md's
/// refusal codes).
fn adversarial_run_over(via: &str, extra: &[&str], up: &Up, brokers: &str) -> serde_json::Value {
    let mut args = vec![
        "--via",
        via,
        "--adversarial",
        "0.03",
        "--count",
        "8000",
        "--devices",
        "500",
        "--batch-size",
        "50",
        "--concurrency",
        "4",
        "--rate",
        "2000",
        "--settle",
        "90s",
    ];
    args.extend_from_slice(extra);
    let out = up
        .simulate(brokers, &args)
        .output()
        .expect("hexpulse simulate");
    let summary = accounted(&out);
    let acct = &summary["accounting"];
    for class in [
        "valid",
        "bad_signature",
        "unknown_device",
        "replay",
        "future",
        "teleport",
    ] {
        let n = acct["sent_by_class"][class].as_u64().unwrap_or(0);
        assert!(n > 0, "no {class} reading was sent over {via}");
    }
    let requests = acct["requests"].as_object().unwrap();
    assert!(
        requests.get("malformed_body:400").is_some(),
        "{via}: {requests:?}"
    );
    assert!(
        requests.get("oversize_body:413").is_some(),
        "{via}: {requests:?}"
    );
    assert!(
        acct["acknowledged"].as_u64().unwrap() > 5_000,
        "{via}: {acct}"
    );
    summary
}

#[test]
fn adversarial_run_over_the_grpc_stream_accounts_for_every_reading() {
    let Some(brokers) = testenv::broker_or_skip("adversarial_run_over_grpc") else {
        return;
    };
    let layer = accounting_layer("max_body_bytes = 262144");
    let up = Up::start("it-acct-grpc", &brokers, &["--no-traffic"], Some(&layer));
    adversarial_run_over("grpc", &[], &up, &brokers);
}

/// Over MQTT, through two bridges that share the device topics (an MQTT 5 shared subscription):
/// every reading accounted for once, and each message taken by one bridge.
#[test]
fn adversarial_run_over_mqtt_accounts_for_every_reading() {
    let Some(brokers) = testenv::broker_or_skip("adversarial_run_over_mqtt") else {
        return;
    };
    let Some(mosquitto_bin) = testenv::mosquitto_or_skip("adversarial_run_over_mqtt") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mosquitto = crate::mqtt::Mosquitto::start(&mosquitto_bin, work.path());
    let layer = accounting_layer("max_body_bytes = 262144");
    let up = Up::start("it-acct-mqtt", &brokers, &["--no-traffic"], Some(&layer));
    let log = work.path().join("bridge.log");
    let bridges: Vec<_> = ["it-acct-a", "it-acct-b"]
        .iter()
        .map(|id| crate::mqtt::bridge(&up, &brokers, &mosquitto.address(), id, "it-acct", &log))
        .collect();
    let summary = adversarial_run_over(
        "mqtt",
        &["--mqtt-broker", &mosquitto.address()],
        &up,
        &brokers,
    );
    let sent: u64 = summary["accounting"]["requests"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|n| n.as_u64())
        .sum();
    let mut taken = Vec::new();
    for (_, health) in &bridges {
        let metrics = crate::restart::block_on(async {
            reqwest::get(format!("{health}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
        let messages: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("hexpulse_mqtt_messages_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        taken.push(messages as u64);
    }
    // Shared: each message went to one bridge (two plain subscriptions would take each twice).
    assert_eq!(
        taken.iter().sum::<u64>(),
        sent,
        "messages taken per bridge: {taken:?}"
    );
    assert!(
        taken.iter().all(|n| *n >= 10),
        "each bridge takes a share: {taken:?} of {sent}"
    );
}
