//! #24: the gRPC door from outside. A Python grpcio client generated from schemas/proto alone
//! (schemas/examples/grpc_device.py), signing with PyNaCl, talks to `hexpulse up`: unary and
//! streamed batches, the test vectors' verdicts, every refusal's status, idle and surplus streams
//! cut off while other clients are served. Then every reading it was answered accepted for is in
//! the lake exactly once: in a valid table, or in `rejected` with its reason.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use hexpulse_testkit::testenv;

use crate::up::{Up, accounting_layer, root};

/// Where each (device, seq) is in the lake: its (table, reason) rows in the committed Delta tables
/// (`committed.*`, without the live tier's rows not yet durable), through the query service.
fn placements(query: &str, keys: &[String]) -> BTreeMap<(String, u64), Vec<String>> {
    let list = keys
        .iter()
        .map(|k| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(",");
    // One row per Kafka record: the sensor table has one row per measurement.
    let text = format!(
        "SELECT device_key, seq, 'heartbeat' AS at FROM committed.heartbeat WHERE device_key IN ({list}) \
         UNION ALL SELECT DISTINCT device_key, seq, 'sensor' AS at FROM committed.sensor WHERE device_key IN ({list}) \
         UNION ALL SELECT device_key, seq, 'road' AS at FROM committed.road WHERE device_key IN ({list}) \
         UNION ALL SELECT device_key, seq, 'rejected:' || reason AS at FROM committed.rejected WHERE device_key IN ({list})"
    );
    let rows = crate::restart::sql(query, &text);
    let mut at: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
    for r in rows.as_array().into_iter().flatten() {
        let (Some(key), Some(seq), Some(table)) = (
            r["device_key"].as_str(),
            r["seq"].as_u64(),
            r["at"].as_str(),
        ) else {
            continue;
        };
        at.entry((key.to_string(), seq))
            .or_default()
            .push(table.to_string());
    }
    at
}

#[test]
fn a_grpc_client_from_the_proto_files_gets_every_verdict_and_its_readings_land_once() {
    let Some(brokers) = testenv::broker_or_skip("grpc_door") else {
        return;
    };
    let Some(python) = testenv::python_or_skip("grpc_door") else {
        return;
    };
    // The checks' clients stand behind a trusted proxy (X-Forwarded-For names them), so that a
    // hostile client and a good one are different addresses on one machine.
    let layer = accounting_layer(
        "trusted_proxies = [\"127.0.0.1/32\"]\n\
         rate_per_ip = { per_second = 100, burst = 200 }\n\
         grpc.stream_idle = \"3s\"\n\
         grpc.max_streams_per_client = 4\n",
    );
    let up = Up::start("it-grpc", &brokers, &["--rate", "20"], Some(&layer));
    let token = up.admin_token.clone().expect("`up` printed an admin token");
    let target = up.ingest.trim_start_matches("http://").to_string();
    let out = Command::new(&python)
        .arg(format!("{}/schemas/examples/grpc_device.py", root()))
        .args([
            "--target",
            &target,
            "--admin-url",
            &up.ingest,
            "--admin-token",
            &token,
        ])
        .args(["--devices", "6", "--batches", "4", "--batch-size", "15"])
        .args(["--stream-batches", "12", "--checks", "--stream-idle", "3"])
        .args(["--streams-per-client", "4"])
        .output()
        .expect("run the Python gRPC client");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the client's JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert!(out.status.success(), "failed checks: {}", result["failed"]);
    for name in [
        "vectors",
        "submit_accepts",
        "stream_answers_in_order",
        "stream_accepts",
        "garbage_is_invalid_argument",
        "unknown_devices_are_unauthenticated",
        "oversized_message_is_refused",
        "rate_limit_is_resource_exhausted",
        "other_addresses_are_served_meanwhile",
        "streams_past_the_client_cap_are_refused",
        "another_client_is_served_meanwhile",
        "idle_streams_are_cut_off",
    ] {
        assert_eq!(
            result["checks"][name]["ok"], true,
            "{name}: {}",
            result["checks"][name]
        );
    }
    let vectors = result["vectors"].as_array().expect("vectors");
    assert_eq!(vectors.len(), 17, "every test vector was sent");
    assert!(vectors.iter().any(|v| v["got"] == "valid"));

    // Every accepted reading, exactly once in the lake.
    let accepted: Vec<(String, u64)> = result["accepted"]
        .as_array()
        .expect("accepted")
        .iter()
        .map(|a| (a[0].as_str().unwrap().to_string(), a[1].as_u64().unwrap()))
        .collect();
    // 4 × 15 unary, 12 × 15 streamed, 5 vectors, 2 single readings.
    assert_eq!(accepted.len(), 60 + 180 + 5 + 2);
    let mut keys: Vec<String> = accepted.iter().map(|(k, _)| k.clone()).collect();
    keys.sort();
    keys.dedup();
    let started = Instant::now();
    let at = loop {
        let at = placements(&up.query, &keys);
        if accepted.iter().all(|a| at.contains_key(a))
            || started.elapsed() > Duration::from_secs(90)
        {
            break at;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    for a in &accepted {
        assert_eq!(
            at.get(a).map(Vec::len),
            Some(1),
            "{a:?} in the lake: {:?}",
            at.get(a)
        );
    }
    assert_eq!(
        at.len(),
        accepted.len(),
        "rows in the lake that were never accepted: {at:?}"
    );
    let rejected: Vec<_> = at
        .values()
        .flatten()
        .filter(|t| t.starts_with("rejected"))
        .collect();
    eprintln!(
        "grpc: {} accepted readings in the lake once each ({} of them rejected by the processors: {:?})",
        accepted.len(),
        rejected.len(),
        rejected
    );
}
