//! The ingest HTTP API: `POST /v1/readings`, the admin device endpoints, health and metrics.

use hexpulse_common::time::now_ms;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bytes::Bytes;
use hexpulse_common::health::{Health, Report};
use hexpulse_common::http::{error_body, json_answer};
use hexpulse_common::kafka::KafkaConfig;
use hexpulse_common::ratelimit::{Keyed, client_ip, retry_after_secs};
use hexpulse_common::registry::{Device, Registry};
use hexpulse_common::tasks::Tasks;
use hexpulse_schemas::reasons::RejectReason;
use hexpulse_schemas::sign::BadShare;
use hexpulse_schemas::wire::{IngestResponse, ItemRejection};
use prost::Message;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::body::{self, BodyError, RawItem};
use crate::config::IngestConfig;
use crate::metrics as m;
use crate::pipeline::{self, Checked};
use crate::produce::{DeliveryFailure, Sink};

mod admin;
mod grpc;
pub mod mqtt;
mod readings;
mod submit;

use admin::{admin_on_device_port, admin_routes, serve_admin};
use readings::post_readings;
use submit::{Batch, Refusal, SourceShares};

/// Permits of the in-flight semaphore are KiB of request body.
const PERMIT_BYTES: usize = 1024;

/// How often the rate limiters forget idle clients and devices.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("creating topics: {0}")]
    Topics(#[from] hexpulse_common::kafka::KafkaError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] hexpulse_common::serve::TlsError),
    #[error("verify pool: {0}")]
    Pool(#[from] rayon::ThreadPoolBuildError),
}

impl hexpulse_common::fault::Classify for StartError {
    fn fault(&self) -> hexpulse_common::fault::Fault {
        use hexpulse_common::fault::Fault;
        match self {
            // Creating a producer fails on its configuration; topics, on the broker.
            StartError::Kafka(_) | StartError::Bind { .. } | StartError::Tls(_) => Fault::User,
            StartError::Topics(_) => Fault::External,
            StartError::Pool(_) => Fault::Internal,
        }
    }
}

/// Shared state of one ingest node.
pub struct Ingest {
    cfg: IngestConfig,
    registry: Registry,
    sink: Sink,
    pool: rayon::ThreadPool,
    /// Running share of bad signatures, to plan batch verification.
    /// The running share of bad signatures per source, which plans each batch's verification.
    bad_shares: SourceShares,
    inflight: Arc<Semaphore>,
    inflight_permits: usize,
    /// Readiness (`/readyz`): the broker answers, and no background task died.
    health: Health,
    per_ip: Arc<Keyed<IpAddr>>,
    /// Readings per device and source address: a replay of a device's captured readings from
    /// elsewhere spends only its own budget, never the real device's.
    per_device: Arc<Keyed<(Bytes, Option<IpAddr>)>>,
    /// The open gRPC streams, against `grpc.max_streams` and `grpc.max_streams_per_client`.
    streams: grpc::Streams,
    /// Cancelled at shutdown: gRPC streams stop reading and end once their batches are answered.
    shutdown: CancellationToken,
}

/// A started ingest node.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener's address, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// The server: it ends at shutdown, once in-flight requests are answered and the producer is
    /// flushed.
    pub task: tokio::task::JoinHandle<()>,
    /// The background tasks (the broker probe, the registry watch, the rate limiters' cleanup).
    pub tasks: Tasks,
}

impl Running {
    /// Awaits the server, then the background tasks.
    pub async fn wait(self) {
        self.tasks.join_after("ingest", self.task).await;
    }
}

/// `/readyz`'s report: whether the broker answered the last probe, and the registry's size.
fn readiness(sink: Sink, registry: Registry) -> impl Fn() -> Report + Send + Sync + 'static {
    move || {
        let broker = sink.broker_up();
        let mut r = Report::default();
        r.details.insert("broker".into(), json!(broker));
        r.details
            .insert("registry_devices".into(), json!(registry.len()));
        if !broker {
            r.failing.push((
                "broker".into(),
                "the Kafka broker did not answer the last probe (metadata request); readings get \
                 503 with Retry-After until it does"
                    .into(),
            ));
        }
        r
    }
}

impl Ingest {
    /// The node without a listener: the producer (topics created if missing, the broker probed),
    /// the verify pool, the rate limiters, and the background tasks (broker probe, registry
    /// watch). [`Ingest::start`] adds the device listener; the MQTT bridge its subscription.
    pub async fn build(
        cfg: IngestConfig,
        kafka: &KafkaConfig,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Ingest>, Tasks), StartError> {
        let sink = Sink::new(kafka, &cfg)?;
        if let Err(e) = kafka.ensure_topics(&[&kafka.raw_topic]).await {
            // Not fatal: the broker may come up later; /readyz tells.
            tracing::warn!(error = %e, "could not ensure topics at start");
        }
        sink.probe(Duration::from_secs(2)).await;
        let threads = if cfg.verify_threads == 0 {
            num_cpus()
        } else {
            cfg.verify_threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("verify-{i}"))
            .build()?;
        let permits = (cfg.max_inflight_bytes / PERMIT_BYTES).max(1);
        let health = Health::new().with_report(readiness(sink.clone(), registry.clone()));
        let mut tasks = Tasks::new(health.clone(), shutdown.clone());
        let state = Arc::new(Ingest {
            registry: registry.clone(),
            sink: sink.clone(),
            pool,
            bad_shares: SourceShares::default(),
            inflight: Arc::new(Semaphore::new(permits)),
            inflight_permits: permits,
            health,
            per_ip: Arc::new(Keyed::new(cfg.rate_per_ip)),
            per_device: Arc::new(Keyed::new(cfg.rate_per_device)),
            streams: grpc::Streams::default(),
            shutdown: shutdown.clone(),
            cfg,
        });
        state
            .per_ip
            .spawn_cleanup("forget-idle-addresses", FORGET_IDLE_EVERY, &mut tasks);
        state
            .per_device
            .spawn_cleanup("forget-idle-devices", FORGET_IDLE_EVERY, &mut tasks);
        tasks.spawn(
            "broker-probe",
            sink.clone().watch(Duration::from_secs(1), shutdown.clone()),
        );
        tasks.spawn(
            "registry-watch",
            registry.watch(Duration::from_secs(1), shutdown),
        );
        Ok((state, tasks))
    }

    /// Readiness and the background tasks' failures (`/readyz`).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Flushes the producer for at most `within` (at shutdown, once nothing produces any more).
    pub async fn flush(&self, within: Duration) {
        let sink = self.sink.clone();
        let _ = tokio::task::spawn_blocking(move || sink.flush(within)).await;
    }

    /// [`Ingest::build`], then binds the listener and serves until `shutdown`; then finishes
    /// in-flight requests, flushes the producer and returns.
    pub async fn start(
        cfg: IngestConfig,
        kafka: KafkaConfig,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<Running, StartError> {
        let tls = cfg
            .tls
            .as_ref()
            .map(|t| hexpulse_common::serve::tls_acceptor(t, hexpulse_common::serve::HTTP_ALPN))
            .transpose()?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let (state, mut tasks) = Ingest::build(cfg, &kafka, registry, shutdown.clone()).await?;
        let admin_addr = match state.cfg.admin_listen {
            Some(a) => Some(serve_admin(a, state.clone(), &mut tasks).await?),
            None => {
                if !admin_on_device_port(&state.cfg) {
                    tracing::warn!(
                        "ingest.admin_listen is unset and the device port is not on loopback: \
                         /metrics and the admin API are not served; set ingest.admin_listen"
                    );
                }
                None
            }
        };
        let router = router(state.clone());
        let limits = hexpulse_common::serve::ConnLimits {
            header_timeout: state.cfg.request_timeout,
            max_connections: state.cfg.max_connections,
        };
        let grace = state.cfg.shutdown_timeout;
        tracing::info!(%addr, tls = tls.is_some(), grpc = state.cfg.grpc.enabled, topic = %kafka.raw_topic, "ingest listening");
        let task = tokio::spawn(async move {
            let started = Instant::now();
            hexpulse_common::serve::serve(listener, router, tls, limits, shutdown, grace).await;
            let left = grace
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(1));
            state.flush(left).await;
            tracing::info!("ingest stopped");
        });
        Ok(Running {
            addr,
            admin_addr,
            task,
            tasks,
        })
    }
}

/// Runs an ingest node until `shutdown` is cancelled.
pub async fn run(
    cfg: IngestConfig,
    kafka: KafkaConfig,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    Ingest::start(cfg, kafka, registry, shutdown)
        .await?
        .wait()
        .await;
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The device-facing routes (`POST /v1/readings`, and the gRPC service where `grpc.enabled`); the
/// admin routes too where [`admin_on_device_port`].
pub fn router(state: Arc<Ingest>) -> Router {
    let devices = Router::new()
        .route("/v1/readings", post(post_readings))
        .merge(hexpulse_common::health::routes(&state.health));
    let routes = if admin_on_device_port(&state.cfg) {
        devices.merge(admin_routes(&state))
    } else {
        devices
    };
    let grpc = state.cfg.grpc.enabled.then(|| grpc::routes(state.clone()));
    let http = with_limits(routes, state);
    match grpc {
        Some(grpc) => http.merge(grpc),
        None => http,
    }
}

fn with_limits(routes: Router<Arc<Ingest>>, state: Arc<Ingest>) -> Router {
    let timeout = state.cfg.request_timeout;
    routes
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(state)
}

/// `{error: {code, message}}` with a status.
fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    hexpulse_common::http::error_answer(status, code, message, None)
}
