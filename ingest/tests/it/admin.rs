//! Admin endpoints edit the registry; ingest sees the change at once.

use hexpulse_common::registry::{Device, Registry};
use hexpulse_ingest::IngestConfig;
use hexpulse_schemas::wire::KindName;
use hexpulse_testkit::testenv;
use sha2::{Digest, Sha256};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_adds_and_removes_devices() {
    let Some(brokers) = testenv::broker_or_skip("admin_adds_and_removes_devices") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devices.json");
    let registry = Registry::open(&path).unwrap();
    let mut cfg = IngestConfig::for_tests();
    cfg.admin_token_sha256 = hex::encode(Sha256::digest(b"s3cret"));
    let node = Node::start("it-ingest-admin", &brokers, cfg, registry).await;
    let key = device_key(9);
    let device = Device {
        public_key: hex::encode(key.verifying_key().as_bytes()),
        kind: KindName::Heartbeat,
        lat: 1.0,
        lng: 2.0,
        owner: "bob".into(),
    };
    let admin = |req: reqwest::RequestBuilder, token: &str| req.bearer_auth(token.to_string());

    // Unknown before registration.
    let (status, _, _) = node
        .post("application/x-protobuf", batch(&[signed(&key, 1)]))
        .await;
    assert_eq!(status, 401);

    // Wrong token, then the right one.
    let r = admin(node.http.post(node.url("/v1/admin/devices")), "nope")
        .json(&device)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = node
        .http
        .post(node.url("/v1/admin/devices"))
        .json(&device)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
    let r = admin(node.http.post(node.url("/v1/admin/devices")), "s3cret")
        .json(&device)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (status, body, _) = node
        .post("application/x-protobuf", batch(&[signed(&key, 2)]))
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    // The file holds it, for the other roles.
    assert_eq!(
        Registry::open(&path).unwrap().devices(),
        vec![device.clone()]
    );

    // A weak key is refused at registration.
    let mut weak = device.clone();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    weak.public_key = hex::encode(identity);
    let r = admin(node.http.post(node.url("/v1/admin/devices")), "s3cret")
        .json(&weak)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = admin(
        node.http
            .delete(node.url(&format!("/v1/admin/devices/{}", device.public_key))),
        "s3cret",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _, _) = node
        .post("application/x-protobuf", batch(&[signed(&key, 3)]))
        .await;
    assert_eq!(status, 401);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_takes_metrics_and_admin_off_the_device_port() {
    let Some(brokers) = testenv::broker_or_skip("admin_listener_takes_metrics_and_admin") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path().join("devices.json")).unwrap();
    let mut cfg = IngestConfig::for_tests();
    cfg.admin_token_sha256 = hex::encode(Sha256::digest(b"s3cret"));
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let node = Node::start("it-ingest-admin-listener", &brokers, cfg, registry).await;
    let admin = node.admin_addr.expect("admin listener bound");
    assert_ne!(admin, node.addr);
    let get = |url: String, token: Option<&str>| {
        let mut r = node.http.get(url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    // The device-facing port: readings and health only.
    assert_eq!(get(node.url("/metrics"), None).await, 404);
    assert_eq!(
        get(node.url("/v1/admin/devices"), Some("s3cret")).await,
        404
    );
    assert_eq!(get(node.url("/healthz"), None).await, 200);
    // The admin port: metrics, and the admin API still behind its token.
    let on_admin = |p: &str| format!("http://{admin}{p}");
    assert_eq!(get(on_admin("/metrics"), None).await, 200);
    assert_eq!(get(on_admin("/v1/admin/devices"), None).await, 401);
    assert_eq!(
        get(on_admin("/v1/admin/devices"), Some("s3cret")).await,
        200
    );
    assert_eq!(get(on_admin("/readyz"), None).await, 200);
    assert_eq!(get(on_admin("/v1/readings"), None).await, 404);
    node.stop.cancel();
    let _ = node.task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_admin_authentications_spend_the_address_budget() {
    let Some(brokers) = testenv::broker_or_skip("failed_admin_authentications") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path().join("devices.json")).unwrap();
    let mut cfg = IngestConfig::for_tests();
    cfg.admin_token_sha256 = hex::encode(Sha256::digest(b"s3cret"));
    cfg.rate_per_ip = hexpulse_common::ratelimit::RateLimit {
        per_second: 1,
        burst: 3,
    };
    let node = Node::start("it-ingest-admin-guess", &brokers, cfg, registry).await;
    let get = |token: &str| {
        let r = node
            .http
            .get(node.url("/v1/admin/devices"))
            .bearer_auth(token.to_string());
        async move { r.send().await.unwrap().status().as_u16() }
    };
    let mut answers = Vec::new();
    for i in 0..8 {
        answers.push(get(&format!("guess-{i}")).await);
    }
    assert_eq!(answers[..3], [401, 401, 401], "{answers:?}");
    assert!(
        answers[3..].iter().filter(|a| **a == 429).count() >= 4,
        "guesses past the address's burst are answered 429: {answers:?}"
    );
    // The right token spends nothing and is not held back by the guesses.
    assert_eq!(get("s3cret").await, 200);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_device_port_never_serves_metrics_or_the_admin_api() {
    let Some(brokers) = testenv::broker_or_skip("a_public_device_port") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path().join("devices.json")).unwrap();
    let mut cfg = IngestConfig::for_tests();
    cfg.admin_token_sha256 = hex::encode(Sha256::digest(b"s3cret"));
    // Every address, and no admin listener: what a default config on a server would do.
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    let node = Node::start("it-ingest-public-port", &brokers, cfg, registry).await;
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", node.addr.port());
    let get = |u: String, token: Option<&str>| {
        let mut r = node.http.get(u);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(url("/metrics"), None).await, 404);
    assert_eq!(get(url("/v1/admin/devices"), Some("s3cret")).await, 404);
    assert_eq!(get(url("/healthz"), None).await, 200);
    node.shutdown().await;
}
