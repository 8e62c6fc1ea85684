//! Admin endpoints edit the registry; ingest sees the change at once.

use hexpulse_common::registry::{Device, Registry};
use hexpulse_common::testenv;
use hexpulse_ingest::IngestConfig;
use hexpulse_schemas::wire::KindName;
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
