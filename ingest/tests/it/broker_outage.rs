//! With the broker stopped, requests get 503 and nothing is claimed accepted; once it is back,
//! ingestion resumes without restarting ingest, and every accepted item is in Kafka exactly once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hexpulse_ingest::IngestConfig;
use hexpulse_testkit::testenv;
use prost::Message;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_gives_503_then_recovers() {
    // This test runs a broker of its own, so it can stop it.
    if testenv::broker_or_skip("broker_outage_gives_503_then_recovers").is_none() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let broker = testenv::OwnBroker::new(cache.path())
        .expect("HEXPULSE_BROKER_SCRIPT and HEXPULSE_TANSU_BIN are set by make test");
    broker.start();
    let mut cfg = IngestConfig::for_tests();
    cfg.delivery_timeout = Duration::from_secs(3);
    let node = Node::start(
        "it-ingest-outage",
        &format!("127.0.0.1:{}", broker.port),
        cfg,
        registry(2),
    )
    .await;

    let mut seq = 0u64;
    let mut accepted: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
    let send = async |seq: &mut u64| {
        let items: Vec<_> = (0..10)
            .map(|_| {
                *seq += 1;
                signed(&device_key((*seq % 2) as u8), *seq)
            })
            .collect();
        let (status, body, headers) = node.post("application/x-protobuf", batch(&items)).await;
        (status, body, headers, items)
    };

    let (status, body, _, items) = send(&mut seq).await;
    assert_eq!(status, 200, "{body}");
    accepted.extend(items.iter().map(|i| (i.encode_to_vec(), ())));

    broker.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "no 503 within 30 s of stopping the broker"
        );
        let (status, body, headers, items) = send(&mut seq).await;
        match status {
            200 => {
                assert_eq!(body["accepted"], 10, "{body}");
                accepted.extend(items.iter().map(|i| (i.encode_to_vec(), ())));
            }
            503 => {
                assert_eq!(body["error"]["code"], "broker_unavailable", "{body}");
                assert!(
                    body.get("accepted").is_none(),
                    "a 503 claims nothing: {body}"
                );
                assert!(headers.contains_key("retry-after"));
                break;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    // Still 503 while down, answered quickly now that the outage is known.
    let t = Instant::now();
    let (status, _, _, _) = send(&mut seq).await;
    assert_eq!(status, 503);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "known outage answered in {:?}",
        t.elapsed()
    );
    let ready = node.http.get(node.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    // The gRPC door answers the same outage UNAVAILABLE (14) with its retry delay. A refusal before
    // any answer message is a trailers-only response: the status is in the headers.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let items: Vec<_> = (0..3)
        .map(|_| {
            seq += 1;
            signed(&device_key((seq % 2) as u8), seq)
        })
        .collect();
    let message = batch(&items);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let r = h2
        .post(node.url("/hexpulse.v1.Ingest/Submit"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "gRPC answers over HTTP 200");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(
        header("grpc-status").as_deref(),
        Some("14"),
        "{:?}",
        r.headers()
    );
    assert!(header("retry-after").is_some(), "{:?}", r.headers());

    broker.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "ingest did not resume within 60 s of the broker's return"
        );
        let (status, body, _, items) = send(&mut seq).await;
        if status == 200 {
            assert_eq!(body["accepted"], 10, "{body}");
            accepted.extend(items.iter().map(|i| (i.encode_to_vec(), ())));
            break;
        }
        assert_eq!(status, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let kafka = node.kafka.clone();
    node.shutdown().await;
    let got = tokio::task::spawn_blocking(move || read_all(&kafka))
        .await
        .unwrap();
    let mut counts: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for r in got {
        *counts.entry(r.value).or_default() += 1;
    }
    for value in accepted.keys() {
        assert_eq!(
            counts.get(value),
            Some(&1),
            "an accepted item is in Kafka exactly once"
        );
    }
    assert!(counts.values().all(|c| *c == 1), "no duplicates");
}
