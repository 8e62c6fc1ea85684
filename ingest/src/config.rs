//! The `[ingest]` section of the config.

use std::net::SocketAddr;
use std::time::Duration;

use hexpulse_common::ratelimit::RateLimit;
use hexpulse_common::serve::TlsConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Address of the device-facing listener.
    pub listen: SocketAddr,
    /// Name of this node, carried in the envelope of every reading on the raw topic (WIRE.md).
    pub node_name: String,
    /// Maximum request body size as sent (possibly compressed), bytes.
    pub max_body_bytes: usize,
    /// Maximum body size after decompression, bytes (zip-bomb guard).
    pub max_decompressed_bytes: usize,
    /// Maximum items per batch.
    pub max_items: usize,
    /// Maximum bytes of request bodies being processed at once; beyond it requests get 429.
    pub max_inflight_bytes: usize,
    /// Threads of the signature-verification pool (0 = one per core).
    pub verify_threads: usize,
    /// How long a request waits for the broker's acknowledgement of its records; items not
    /// acknowledged by then are answered `delivery_failed` (503 when nothing was delivered).
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// How long the producer keeps a record it could not deliver within `delivery_timeout` and
    /// retries it (librdkafka's `message.timeout.ms`; at least `delivery_timeout`). Such a record
    /// was answered as not delivered, so the device sends it again; if both copies arrive, the
    /// processors store one and reject the other as `duplicate`. Not a shorter value: a record
    /// timing out inside librdkafka makes the idempotent producer bump its epoch, which tansu 0.6
    /// cannot handle (ARCHITECTURE.md, tansu behaviours).
    #[serde(with = "humantime_serde", default = "default_retry_timeout")]
    pub producer_retry_timeout: Duration,
    /// Producer queue limit (messages); when full, requests get 429.
    pub producer_queue_messages: usize,
    /// How long a request may take end to end (also cuts off slow clients: a connection's first
    /// byte and a request's headers must arrive within it, and a connection that makes no progress
    /// for twice as long is closed).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Open connections on `listen` at most; more are closed as they arrive.
    #[serde(default = "hexpulse_common::serve::default_max_connections")]
    pub max_connections: usize,
    /// Time allowed for graceful shutdown (finish requests, flush the producer).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Requests per client IP (the TCP peer) on `POST /v1/readings`; past it: 429 `rate_limited`.
    pub rate_per_ip: RateLimit,
    /// Proxies (CIDRs) whose `X-Forwarded-For` names the client for `rate_per_ip` and the
    /// per-device budgets: only a TCP peer inside one of them is believed
    /// (`ratelimit::client_ip`). Empty: the TCP peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Readings per device and client address (counted after the signature check, so forgeries
    /// cannot use up a device's budget, and per address, so replays of a device's captured readings
    /// from elsewhere cannot either); items past it are refused with `rate_exceeded`, and a batch
    /// with nothing else to accept gets 429 `rate_limited`.
    pub rate_per_device: RateLimit,
    /// Bearer token for `/v1/admin/*`, as the lower-case hex SHA-256 of the token. Empty disables admin.
    #[serde(default)]
    pub admin_token_sha256: String,
    /// A second listener for operators: when set, `/metrics` and `/v1/admin/*` are served there
    /// (plain HTTP, with /healthz and /readyz) and no longer on the device-facing listener.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Optional TLS (rustls); plain HTTP/1.1 and h2c without it.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The gRPC door (`hexpulse.v1.Ingest`, schemas/proto/hexpulse/v1/ingest.proto) on `listen`.
    #[serde(default)]
    pub grpc: GrpcConfig,
}

/// The `[ingest.grpc]` section: gRPC on the device listener, with the limits of its streams. A
/// batch's own limits are HTTP's (`max_body_bytes` per message, `max_items`, the rate limits and the
/// in-flight budget).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Serve `hexpulse.v1.Ingest` (unary `Submit`, streaming `Stream`) next to `POST /v1/readings`.
    pub enabled: bool,
    /// `Stream` calls open at once, over all clients; more are refused (RESOURCE_EXHAUSTED).
    pub max_streams: usize,
    /// `Stream` calls open at once per client address (one client cannot take every slot).
    pub max_streams_per_client: usize,
    /// A stream that sends no batch for this long is ended (DEADLINE_EXCEEDED). The connection's
    /// own idle limit (twice `request_timeout` without traffic) also applies.
    #[serde(with = "humantime_serde")]
    pub stream_idle: Duration,
    /// Batches of one stream checked or produced at once; past it the stream is not read until
    /// answers are out, so a slow stream holds back only itself.
    pub stream_window: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            enabled: true,
            max_streams: 1024,
            max_streams_per_client: 16,
            stream_idle: Duration::from_secs(30),
            stream_window: 8,
        }
    }
}

fn default_retry_timeout() -> Duration {
    Duration::from_secs(300)
}

impl IngestConfig {
    /// Settings for tests and examples: loopback, port 0, small limits.
    pub fn for_tests() -> Self {
        IngestConfig {
            listen: "127.0.0.1:0".parse().expect("static address"),
            node_name: "test-node".into(),
            max_body_bytes: 1 << 20,
            max_decompressed_bytes: 4 << 20,
            max_items: 1000,
            max_inflight_bytes: 64 << 20,
            verify_threads: 1,
            delivery_timeout: Duration::from_secs(5),
            producer_retry_timeout: default_retry_timeout(),
            producer_queue_messages: 100_000,
            request_timeout: Duration::from_secs(15),
            max_connections: hexpulse_common::serve::default_max_connections(),
            shutdown_timeout: Duration::from_secs(10),
            rate_per_ip: RateLimit::OFF,
            trusted_proxies: Vec::new(),
            rate_per_device: RateLimit::OFF,
            admin_token_sha256: String::new(),
            admin_listen: None,
            tls: None,
            grpc: GrpcConfig::default(),
        }
    }
}

/// The `[mqtt]` section: the bridge (`hexpulse mqtt`) from an MQTT broker's device topics into
/// Kafka, with the checks and limits of `[ingest]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// The MQTT broker, `host:port` (plain MQTT over TCP).
    pub broker: String,
    /// The bridge's client id. Its session (subscription and unacknowledged messages) lives on in
    /// the broker under it for `session_expiry`: a restarted bridge with the same id gets the
    /// messages it had not acknowledged. Give each bridge its own.
    pub client_id: String,
    /// Credentials, when the broker wants them.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The topic filter devices publish to; the last level names the device.
    pub topic: String,
    /// Bridges with the same group share the messages (MQTT 5 shared subscription
    /// `$share/{group}/{topic}`); empty (the default): this bridge gets every message. Mosquitto
    /// 2.0 does not keep shared subscriptions over its own restart (WIRE.md "MQTT").
    pub share_group: String,
    /// Where each message's verdict goes; `{device}` is the last level of the message's topic.
    /// A message with an MQTT 5 response topic is answered there instead. Empty: no verdicts.
    pub answers_topic: String,
    /// Messages being bridged at once (the receive maximum the bridge announces).
    pub inflight: u16,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// How long the broker keeps the bridge's session while it is away.
    #[serde(with = "humantime_serde")]
    pub session_expiry: Duration,
    /// Health (`/healthz`, `/readyz`) and `/metrics` of the bridge.
    pub listen: SocketAddr,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: "127.0.0.1:1883".into(),
            client_id: "hexpulse-bridge-0".into(),
            username: None,
            password: None,
            topic: "hexpulse/v1/readings/+".into(),
            share_group: String::new(),
            answers_topic: "hexpulse/v1/answers/{device}".into(),
            inflight: 64,
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(3600),
            listen: "127.0.0.1:8083".parse().expect("static address"),
        }
    }
}
