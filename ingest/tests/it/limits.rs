//! Rate limits and slow clients: per client IP (429 before the body is read), per device (counted
//! after the signature check, so forgeries cannot spend a device's budget), and slowloris clients cut
//! off at the request timeout. Only what got an answer of "accepted" reaches Kafka.

use std::time::Duration;

use hexpulse_common::ratelimit::RateLimit;
use hexpulse_ingest::IngestConfig;
use hexpulse_testkit::testenv::{self, SlowClient};

use crate::support::*;

const PROTOBUF: &str = "application/x-protobuf";

fn codes(body: &serde_json::Value) -> Vec<String> {
    rejections(body).into_iter().map(|(_, c)| c).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_per_ip_and_per_device() {
    let Some(brokers) = testenv::broker_or_skip("rate_limits_per_ip_and_per_device") else {
        return;
    };
    let mut cfg = IngestConfig::for_tests();
    cfg.rate_per_ip = RateLimit {
        per_second: 1,
        burst: 4,
    };
    cfg.rate_per_device = RateLimit {
        per_second: 1,
        burst: 10,
    };
    let node = Node::start("it-ingest-limits", &brokers, cfg, registry(3)).await;

    // Per device: 15 items of device 0 and 5 of device 1 in one batch; device 0's burst is 10.
    let mut items: Vec<_> = (0..15).map(|i| signed(&device_key(0), i)).collect();
    items.extend((0..5).map(|i| signed(&device_key(1), i)));
    let (status, body, _) = node.post(PROTOBUF, batch(&items)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 15, "{body}");
    assert_eq!(codes(&body), vec!["rate_exceeded"; 5], "{body}");
    let indices: Vec<u64> = rejections(&body).into_iter().map(|(i, _)| i).collect();
    assert_eq!(
        indices,
        vec![10, 11, 12, 13, 14],
        "the items past the burst"
    );

    // Forged items of device 2 do not spend its budget: 20 bad signatures, then 10 good ones.
    let mut forged: Vec<_> = (0..20).map(|i| signed(&device_key(2), 100 + i)).collect();
    for f in &mut forged {
        let mut sig = f.signature.to_vec();
        sig[0] ^= 1;
        f.signature = sig.into();
    }
    let (status, body, _) = node.post(PROTOBUF, batch(&forged)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(codes(&body), vec!["bad_signature"; 20], "{body}");
    let good: Vec<_> = (0..10).map(|i| signed(&device_key(2), i)).collect();
    let (status, body, _) = node.post(PROTOBUF, batch(&good)).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(10)),
        "{body}"
    );

    // Per IP: that was 3 requests; the 4th is within the burst of 4, the 5th is not. Device 0 has
    // no budget left, so the 4th is refused as a whole: 429 with its items' reasons.
    let (status, body, headers) = node
        .post(PROTOBUF, batch(&[signed(&device_key(0), 50)]))
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(codes(&body), vec!["rate_exceeded"], "{body}");
    assert!(headers.contains_key("retry-after"));
    let (status, body, headers) = node
        .post(PROTOBUF, batch(&[signed(&device_key(1), 50)]))
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(
        body["rejected"],
        serde_json::Value::Null,
        "refused before the body: {body}"
    );
    let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&secs), "retry-after {secs}");
    // Health checks are not limited.
    for _ in 0..10 {
        let r = node.http.get(node.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // The address's budget comes back (1 per second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body, _) = node
        .post(PROTOBUF, batch(&[signed(&device_key(1), 51)]))
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(1)),
        "{body}"
    );

    let kafka = node.kafka.clone();
    node.shutdown().await;
    let records = read_all(&kafka);
    assert_eq!(
        records.len(),
        15 + 10 + 1,
        "exactly the accepted items are on Kafka"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let Some(brokers) = testenv::broker_or_skip("slow_clients_are_cut_off") else {
        return;
    };
    let mut cfg = IngestConfig::for_tests();
    cfg.request_timeout = Duration::from_secs(1);
    let node = Node::start("it-ingest-slow", &brokers, cfg, registry(1)).await;
    let every = Duration::from_millis(200);
    let give_up = Duration::from_secs(8);

    // Headers one byte at a time: the connection is closed at the header-read timeout.
    let slow_headers = testenv::slow_client(
        node.addr,
        "POST /v1/readings HTTP/1.1\r\nHost: x\r\n",
        "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        every,
        give_up,
    )
    .await;
    match slow_headers {
        SlowClient::Closed { after, .. } => {
            assert!(after < Duration::from_secs(4), "closed after {after:?}")
        }
        SlowClient::StillOpen => panic!("a client sending its headers slowly was not cut off"),
    }

    // A body one byte at a time: 408 at the request timeout, and the connection ends.
    let slow_body = testenv::slow_client(
        node.addr,
        "POST /v1/readings HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 100000\r\n\r\n",
        "z",
        every,
        give_up,
    )
    .await;
    match slow_body {
        SlowClient::Closed { after, answer } => {
            assert!(after < Duration::from_secs(4), "closed after {after:?}");
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        }
        SlowClient::StillOpen => panic!("a client sending its body slowly was not cut off"),
    }

    // Meanwhile the node answers others.
    let r = node.http.get(node.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    node.shutdown().await;
}

/// #20.7: replays of a device's captured readings from another address spend that address's
/// budget for the device, not the device's own. Before, the budget was per device alone, and one
/// captured batch replayed fast enough silenced the device at ingest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_from_elsewhere_do_not_silence_a_device() {
    let Some(brokers) = testenv::broker_or_skip("replays_do_not_silence_a_device") else {
        return;
    };
    let mut cfg = IngestConfig::for_tests();
    cfg.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    cfg.rate_per_device = RateLimit {
        per_second: 1,
        burst: 5,
    };
    let node = Node::start("it-ingest-replay", &brokers, cfg, registry(1)).await;
    // The attacker captured one of the device's batches and replays it from its own address until
    // ingest refuses it.
    let captured = batch(&[signed(&device_key(0), 1)]);
    let mut refused = false;
    for _ in 0..20 {
        let r = node.post_from("198.51.100.7", captured.clone()).await;
        if r.status().as_u16() == 429 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the replays were never limited");
    // The device itself, from its own address, is still within its budget.
    for seq in 2..5 {
        let r = node
            .post_from("203.0.113.50", batch(&[signed(&device_key(0), seq)]))
            .await;
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            (status, body["accepted"].as_u64()),
            (200, Some(1)),
            "{body}"
        );
    }
    node.shutdown().await;
}

/// #20.17: `X-Forwarded-For` is believed only from a trusted proxy. A client that reaches ingest
/// directly (its address is not in `trusted_proxies`) cannot name a fresh address per request to
/// escape the per-IP limit. Before, one switch trusted the header from any peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let Some(brokers) = testenv::broker_or_skip("forwarded_for_from_an_untrusted_peer") else {
        return;
    };
    let mut cfg = IngestConfig::for_tests();
    // The proxy lives elsewhere; the test's loopback peer is not it.
    cfg.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    cfg.rate_per_ip = RateLimit {
        per_second: 1,
        burst: 3,
    };
    let node = Node::start("it-ingest-xff", &brokers, cfg, registry(1)).await;
    let mut statuses = Vec::new();
    for seq in 1..=6u64 {
        let from = format!("198.51.100.{seq}");
        let r = node
            .post_from(&from, batch(&[signed(&device_key(0), seq)]))
            .await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429],
        "six forged addresses share the peer's budget of 3"
    );
    node.shutdown().await;
}
