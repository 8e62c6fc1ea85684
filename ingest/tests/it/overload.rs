//! Overload: concurrent batches well past the in-flight bound get 429 with Retry-After, never a crash
//! or a 5xx, and health checks keep answering.

use std::time::Duration;

use hexpulse_common::testenv;
use hexpulse_ingest::IngestConfig;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gets_429_and_health_keeps_answering() {
    let Some(brokers) = testenv::broker_or_skip("overload_gets_429") else {
        return;
    };
    let mut cfg = IngestConfig::for_tests();
    // Room for about two batches at a time.
    cfg.max_inflight_bytes = 40 << 10;
    let node =
        std::sync::Arc::new(Node::start("it-ingest-overload", &brokers, cfg, registry(4)).await);

    let mut tasks = Vec::new();
    for t in 0..48u64 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let items: Vec<_> = (0..100)
                .map(|i| signed(&device_key((i % 4) as u8), t * 1000 + i))
                .collect();
            let (status, body, headers) = node.post("application/x-protobuf", batch(&items)).await;
            if status == 429 {
                assert!(headers.contains_key("retry-after"));
                assert_eq!(body["error"]["code"], "overloaded");
            }
            (status, body["accepted"].as_u64().unwrap_or(0))
        }));
    }
    let health = node
        .http
        .get(node.url("/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "health answers under load");
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let mut accepted = 0;
    for t in tasks {
        let (status, n) = t.await.unwrap();
        *by_status.entry(status).or_default() += 1;
        accepted += n;
    }
    assert!(
        by_status.keys().all(|s| *s == 200 || *s == 429),
        "{by_status:?}"
    );
    assert!(
        by_status.get(&429).copied().unwrap_or(0) > 0,
        "overload produced no 429: {by_status:?}"
    );
    assert!(
        by_status.get(&200).copied().unwrap_or(0) > 0,
        "some work still got through: {by_status:?}"
    );
    let metrics = node
        .http
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hexpulse_ingest_requests_total"),
        "{metrics}"
    );

    let node = std::sync::Arc::into_inner(node).expect("only owner");
    let kafka = node.kafka.clone();
    node.shutdown().await;
    let got = tokio::task::spawn_blocking(move || read_all(&kafka))
        .await
        .unwrap();
    assert_eq!(
        got.len() as u64,
        accepted,
        "what was answered accepted is what Kafka holds"
    );
}
