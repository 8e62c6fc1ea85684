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
use hexpulse_common::kafka::KafkaConfig;
use hexpulse_common::ratelimit::{Keyed, client_ip, retry_after_secs};
use hexpulse_common::registry::{Device, Registry};
use hexpulse_schemas::reasons::RejectReason;
use hexpulse_schemas::sign::BadShare;
use hexpulse_schemas::wire::{IngestResponse, ItemRejection};
use metrics_exporter_prometheus::PrometheusHandle;
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
    metrics: PrometheusHandle,
    per_ip: Arc<Keyed<IpAddr>>,
    /// Readings per device and source address: a replay of a device's captured readings from
    /// elsewhere spends only its own budget, never the real device's.
    per_device: Arc<Keyed<(Bytes, Option<IpAddr>)>>,
}

/// A started ingest node.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener's address, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Ingest {
    /// Creates topics if missing, probes the broker, binds the listener and serves until `shutdown`;
    /// then finishes in-flight requests, flushes the producer and returns.
    pub async fn start(
        cfg: IngestConfig,
        kafka: KafkaConfig,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<Running, StartError> {
        let sink = Sink::new(&kafka, &cfg)?;
        if let Err(e) = kafka.ensure_topics(&[&kafka.raw_topic]).await {
            // Not fatal: the broker may come up later; /readyz tells.
            tracing::warn!(error = %e, "could not ensure topics at start");
        }
        sink.probe(Duration::from_secs(2)).await;
        let tls = cfg
            .tls
            .as_ref()
            .map(hexpulse_common::serve::tls_acceptor)
            .transpose()?;
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
        let state = Arc::new(Ingest {
            registry: registry.clone(),
            sink: sink.clone(),
            pool,
            bad_shares: SourceShares::default(),
            inflight: Arc::new(Semaphore::new(permits)),
            inflight_permits: permits,
            metrics: hexpulse_common::telemetry::metrics_handle(),
            per_ip: Arc::new(Keyed::new(cfg.rate_per_ip)),
            per_device: Arc::new(Keyed::new(cfg.rate_per_device)),
            cfg,
        });
        state
            .per_ip
            .spawn_cleanup(FORGET_IDLE_EVERY, shutdown.clone());
        state
            .per_device
            .spawn_cleanup(FORGET_IDLE_EVERY, shutdown.clone());
        tokio::spawn(sink.clone().watch(Duration::from_secs(1), shutdown.clone()));
        tokio::spawn(registry.watch(Duration::from_secs(1), shutdown.clone()));
        let admin_addr = match state.cfg.admin_listen {
            Some(a) => Some(serve_admin(a, state.clone(), shutdown.clone()).await?),
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
        tracing::info!(%addr, tls = tls.is_some(), topic = %kafka.raw_topic, "ingest listening");
        let task = tokio::spawn(async move {
            let started = Instant::now();
            hexpulse_common::serve::serve(listener, router, tls, limits, shutdown, grace).await;
            let left = grace
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(1));
            let sink = state.sink.clone();
            let _ = tokio::task::spawn_blocking(move || sink.flush(left)).await;
            tracing::info!("ingest stopped");
        });
        Ok(Running {
            addr,
            admin_addr,
            task,
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
    let running = Ingest::start(cfg, kafka, registry, shutdown).await?;
    let _ = running.task.await;
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Binds the admin listener and serves [`admin_routes`] on it until `shutdown`.
async fn serve_admin(
    addr: SocketAddr,
    state: Arc<Ingest>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, StartError> {
    let routes = admin_routes(&state)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    let bound =
        hexpulse_common::http::serve_in_background(addr, with_limits(routes, state), shutdown)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
    tracing::info!(addr = %bound, "ingest admin listening");
    Ok(bound)
}

/// Operators' routes: metrics and the registry's admin API (bearer token).
fn admin_routes(state: &Arc<Ingest>) -> Router<Arc<Ingest>> {
    Router::new()
        .route("/v1/admin/devices", get(list_devices).post(add_device))
        .route("/v1/admin/devices/{key}", delete(remove_device))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin,
        ))
        .route(
            "/metrics",
            get(|State(s): State<Arc<Ingest>>| async move { s.metrics.render() }),
        )
}

/// Whether the device port also serves the admin routes: only without an admin listener, and only
/// on a loopback address (`make up`, a developer's machine). A public device port never serves
/// `/metrics` or the admin API.
fn admin_on_device_port(cfg: &IngestConfig) -> bool {
    cfg.admin_listen.is_none() && cfg.listen.ip().is_loopback()
}

/// The device-facing routes; the admin routes too where [`admin_on_device_port`].
pub fn router(state: Arc<Ingest>) -> Router {
    let devices = Router::new()
        .route("/v1/readings", post(post_readings))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    let routes = if admin_on_device_port(&state.cfg) {
        devices.merge(admin_routes(&state))
    } else {
        devices
    };
    with_limits(routes, state)
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
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message.to_string()}})),
    )
        .into_response()
}

fn retry_after(mut r: Response, secs: u32) -> Response {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

fn count_request(status: StatusCode) {
    metrics::counter!(m::REQUESTS, "status" => status.as_str().to_owned()).increment(1);
}

async fn post_readings(
    State(s): State<Arc<Ingest>>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let source = peer
        .map(|axum::Extension(ConnectInfo(p))| client_ip(p.ip(), &headers, &s.cfg.trusted_proxies));
    let limited = source.and_then(|ip| s.per_ip.check(&ip).err());
    let resp = match limited {
        Some(wait) => rate_limited("too many requests from this address", wait),
        None => handle_readings(&s, &headers, body, source).await,
    };
    count_request(resp.status());
    metrics::histogram!(m::REQUEST_SECONDS).record(start.elapsed().as_secs_f64());
    resp
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn handle_readings(
    s: &Arc<Ingest>,
    headers: &HeaderMap,
    body: Body,
    source: Option<IpAddr>,
) -> Response {
    let bad_share = s.bad_shares.of(source);
    let received_ms = now_ms();
    let format = match body::format_of(header_str(headers, header::CONTENT_TYPE)) {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                e,
            );
        }
    };
    let encoding = header_str(headers, header::CONTENT_ENCODING);
    let declared =
        header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > s.cfg.max_body_bytes) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("body exceeds {} bytes", s.cfg.max_body_bytes),
        );
    }
    // The body is reserved in the in-flight budget as it arrives, so a slow sender holds only what
    // it has sent (not its declared length); past the bound the request is refused, not queued.
    let (raw, permit) = match read_body(s, body, declared).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    // Decompression, parsing and the checks run on the CPU pool, off the I/O runtime. The job owns
    // the reservation: a client that goes away once it has uploaded does not free the budget while
    // its job still waits or runs, so the budget also bounds the pool's queue.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = Job {
        encoding: encoding.map(str::to_string),
        format,
        raw,
        permit,
        bad_share: bad_share.clone(),
        state: s.clone(),
    };
    s.pool.spawn(move || {
        let _ = tx.send(job.run());
    });
    let Ok((done, _permit)) = rx.await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "verification task failed",
        );
    };
    let (items, checked) = match done {
        Ok(r) => r,
        Err(JobError::Body(e)) => return body_error(e),
        Err(JobError::Overloaded) => return overloaded("too many bytes in flight"),
    };
    metrics::histogram!(m::VERIFY_BATCH_SIZE).record(checked.verify_batch_size as f64);
    metrics::histogram!(m::VERIFY_SECONDS).record(checked.verify_time.as_secs_f64());
    metrics::gauge!(m::BAD_SIGNATURE_SHARE).set(bad_share.get());
    respond(
        s,
        &headers_accept(headers),
        items,
        checked,
        received_ms,
        source,
    )
    .await
}

/// Reads a request body, reserving in-flight budget as it arrives. The budget covers the buffer's
/// capacity, not only the bytes in it, so that it bounds the memory bodies hold: the buffer grows
/// by doubling (never past `declared`, the Content-Length, when there is one), and each growth is
/// reserved before it is allocated.
async fn read_body(
    s: &Ingest,
    body: Body,
    declared: Option<usize>,
) -> Result<(Bytes, tokio::sync::OwnedSemaphorePermit), Response> {
    use futures::StreamExt;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("body exceeds {} bytes", s.cfg.max_body_bytes),
        )
    };
    let Some(mut permit) = try_reserve(s, PERMIT_BYTES) else {
        return Err(overloaded("too many bytes in flight"));
    };
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| error(StatusCode::BAD_REQUEST, "body_read_failed", e))?;
        let need = buf.len() + chunk.len();
        if need > s.cfg.max_body_bytes {
            return Err(too_large());
        }
        if need > buf.capacity() {
            let cap = (buf.capacity() * 2)
                .min(declared.unwrap_or(usize::MAX))
                .min(s.cfg.max_body_bytes)
                .max(need);
            let held = permit.num_permits() * PERMIT_BYTES;
            if cap > held {
                match try_reserve(s, cap - held) {
                    Some(more) => permit.merge(more),
                    None => return Err(overloaded("too many bytes in flight")),
                }
            }
            buf.reserve_exact(cap - buf.len());
        }
        buf.extend_from_slice(&chunk);
        publish_inflight(s);
    }
    Ok((Bytes::from(buf), permit))
}

fn publish_inflight(s: &Ingest) {
    metrics::gauge!(m::INFLIGHT_BYTES)
        .set(((s.inflight_permits - s.inflight.available_permits()) * PERMIT_BYTES) as f64);
}

/// The running share of bad signatures per source (client address, as rate limits key it), so
/// that a client sending many bad signatures makes only its own batches verify in small chunks,
/// not everyone's. A new source starts at zero. At most [`MAX_SOURCES`] are remembered; when full,
/// sources whose share has fallen to about zero are forgotten (they start again at zero), and past
/// that new sources share one estimate.
#[derive(Default)]
struct SourceShares {
    by_source: std::sync::Mutex<std::collections::HashMap<IpAddr, Arc<BadShare>>>,
    shared: Arc<BadShare>,
}

const MAX_SOURCES: usize = 65_536;

impl SourceShares {
    fn of(&self, source: Option<IpAddr>) -> Arc<BadShare> {
        let Some(ip) = source else {
            return self.shared.clone();
        };
        let mut map = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(share) = map.get(&ip) {
            return share.clone();
        }
        if map.len() >= MAX_SOURCES {
            map.retain(|_, share| share.get() > 1e-4);
            if map.len() >= MAX_SOURCES {
                return self.shared.clone();
            }
        }
        map.entry(ip).or_default().clone()
    }
}

/// The CPU-pool part of a request: decompress, parse, check. It owns the request's reservation.
struct Job {
    encoding: Option<String>,
    format: body::Format,
    raw: Bytes,
    permit: tokio::sync::OwnedSemaphorePermit,
    /// The running share of bad signatures of the request's source.
    bad_share: Arc<BadShare>,
    state: Arc<Ingest>,
}

enum JobError {
    Body(BodyError),
    Overloaded,
}

/// A batch's items and the verdicts of its checks.
type Parsed = (Vec<RawItem>, Checked);

impl Job {
    fn run(mut self) -> (Result<Parsed, JobError>, tokio::sync::OwnedSemaphorePermit) {
        let r = self.work();
        (r, self.permit)
    }

    fn work(&mut self) -> Result<Parsed, JobError> {
        let s = &self.state;
        let raw = std::mem::take(&mut self.raw);
        let raw_len = raw.len();
        let decompressed =
            body::decompress(self.encoding.as_deref(), raw, s.cfg.max_decompressed_bytes)
                .map_err(JobError::Body)?;
        if decompressed.len() > raw_len {
            let more = try_reserve(s, decompressed.len() - raw_len).ok_or(JobError::Overloaded)?;
            self.permit.merge(more);
            publish_inflight(s);
        }
        let items = body::parse_batch(self.format, decompressed, s.cfg.max_items)
            .map_err(JobError::Body)?;
        let checked = pipeline::check_batch(&items, &s.registry, &self.bad_share);
        Ok((items, checked))
    }
}

fn try_reserve(s: &Ingest, bytes: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let n = bytes.div_ceil(PERMIT_BYTES).clamp(1, s.inflight_permits) as u32;
    s.inflight.clone().try_acquire_many_owned(n).ok()
}

fn rate_limited(why: &str, wait: Duration) -> Response {
    retry_after(
        error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", why),
        retry_after_secs(wait),
    )
}

fn overloaded(why: &str) -> Response {
    retry_after(error(StatusCode::TOO_MANY_REQUESTS, "overloaded", why), 1)
}

fn body_error(e: BodyError) -> Response {
    match &e {
        BodyError::UnsupportedMediaType(_) | BodyError::UnsupportedEncoding(_) => error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e,
        ),
        BodyError::TooLarge(_) => error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e),
        BodyError::Undecodable(_) => error(StatusCode::BAD_REQUEST, "undecodable_body", e),
    }
}

fn headers_accept(h: &HeaderMap) -> bool {
    header_str(h, header::ACCEPT).is_some_and(|a| a.contains("application/x-protobuf"))
}

async fn respond(
    s: &Ingest,
    protobuf: &bool,
    items: Vec<RawItem>,
    checked: Checked,
    received_ms: i64,
    source: Option<IpAddr>,
) -> Response {
    let mut rejected: Vec<ItemRejection> = Vec::new();
    let mut to_send: Vec<(usize, (Bytes, Bytes))> = Vec::new();
    let mut device_wait: Option<Duration> = None;
    for (i, (item, verdict)) in items.into_iter().zip(&checked.verdicts).enumerate() {
        match verdict {
            Ok(()) => {
                let key = item
                    .envelope
                    .as_ref()
                    .map(|e| e.public_key.clone())
                    .unwrap_or_default();
                if let Err(wait) = s.per_device.check(&(key.clone(), source)) {
                    device_wait = Some(device_wait.map_or(wait, |w| w.min(wait)));
                    metrics::counter!(m::ITEMS, "outcome" => "rejected", "reason" => RejectReason::RateExceeded.as_str())
                        .increment(1);
                    rejected.push(ItemRejection {
                        index: i as u32,
                        code: RejectReason::RateExceeded.as_str().into(),
                        message: format!(
                            "the device is over its ingest rate ({} readings/s); retry later",
                            s.cfg.rate_per_device.per_second
                        ),
                    });
                    continue;
                }
                to_send.push((i, (key, item.value)));
            }
            Err(r) => {
                metrics::counter!(m::ITEMS, "outcome" => "rejected", "reason" => r.reason.as_str())
                    .increment(1);
                rejected.push(ItemRejection {
                    index: i as u32,
                    code: r.reason.as_str().into(),
                    message: r.message.clone(),
                });
            }
        }
    }
    if checked.all_unknown_device() {
        let body = json!({
            "error": {"code": "unknown_device", "message": "no item of the batch comes from a registered device"},
            "accepted": 0,
            "rejected": rejected.iter().map(rejection_json).collect::<Vec<_>>(),
        });
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    if let (true, Some(wait)) = (to_send.is_empty(), device_wait) {
        let body = json!({
            "error": {"code": "rate_limited", "message": "the batch's devices are over their ingest rate; nothing was accepted"},
            "accepted": 0,
            "rejected": rejected.iter().map(rejection_json).collect::<Vec<_>>(),
        });
        return retry_after(
            (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response(),
            retry_after_secs(wait),
        );
    }
    let mut accepted = 0u32;
    let mut not_delivered = Vec::new();
    if !to_send.is_empty() {
        if !s.sink.broker_up() {
            return retry_after(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_unavailable",
                    "the Kafka broker is unreachable; nothing was accepted",
                ),
                2,
            );
        }
        let records: Vec<(Bytes, Bytes)> = to_send.iter().map(|(_, r)| r.clone()).collect();
        let results = s.sink.produce_all(&records, received_ms).await;
        for ((i, _), res) in to_send.iter().zip(results) {
            match res {
                Ok(()) => accepted += 1,
                Err(f) => not_delivered.push((*i, f)),
            }
        }
        metrics::counter!(m::ITEMS, "outcome" => "accepted", "reason" => "")
            .increment(accepted.into());
        if accepted == 0 {
            let queue_full = not_delivered
                .iter()
                .all(|(_, f)| *f == DeliveryFailure::QueueFull);
            return if queue_full {
                overloaded("the producer queue is full; nothing was accepted")
            } else {
                retry_after(
                    error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "broker_unavailable",
                        "the broker did not acknowledge; nothing was accepted",
                    ),
                    2,
                )
            };
        }
        for (i, f) in not_delivered {
            metrics::counter!(m::ITEMS, "outcome" => "not_delivered", "reason" => f.code())
                .increment(1);
            rejected.push(ItemRejection {
                index: i as u32,
                code: f.code().into(),
                message: "not acknowledged by Kafka; retry this item".into(),
            });
        }
        rejected.sort_by_key(|r| r.index);
    }
    let answer = IngestResponse { accepted, rejected };
    if *protobuf {
        let mut r = (StatusCode::OK, answer.encode_to_vec()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        r
    } else {
        let body = json!({"accepted": answer.accepted, "rejected": answer.rejected.iter().map(rejection_json).collect::<Vec<_>>()});
        (StatusCode::OK, axum::Json(body)).into_response()
    }
}

fn rejection_json(r: &ItemRejection) -> serde_json::Value {
    json!({"index": r.index, "code": r.code, "message": r.message})
}

async fn readyz(State(s): State<Arc<Ingest>>) -> Response {
    let broker = s.sink.broker_up();
    let status = if broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({"broker": broker, "registry_devices": s.registry.len()});
    if !broker {
        body["reason"] = json!(
            "the Kafka broker did not answer the last probe (metadata request); readings get 503 \
             with Retry-After until it does"
        );
    }
    (status, axum::Json(body)).into_response()
}

/// The admin API's gate. A failed authentication spends its address's `rate_per_ip` budget (as
/// failed authentications do at query): 401 or 403 while it lasts, then 429.
async fn require_admin(
    State(s): State<Arc<Ingest>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(denied) = admin_auth(&s, req.headers()) else {
        return next.run(req).await;
    };
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| client_ip(c.0.ip(), req.headers(), &s.cfg.trusted_proxies));
    match ip.and_then(|ip| s.per_ip.check(&ip).err()) {
        Some(wait) => rate_limited("too many failed authentications from this address", wait),
        None => denied,
    }
}

/// Checks `Authorization: Bearer <token>` against the configured SHA-256, in constant time.
/// `None` when authorised, else the error answer.
fn admin_auth(s: &Ingest, headers: &HeaderMap) -> Option<Response> {
    if s.cfg.admin_token_sha256.is_empty() {
        return Some(error(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "no admin token is configured",
        ));
    }
    let Some(token) =
        header_str(headers, header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token",
        ));
    };
    let got = Sha256::digest(token.trim().as_bytes());
    let want = hex::decode(&s.cfg.admin_token_sha256).unwrap_or_default();
    let same = want.len() == got.len()
        && got.iter().zip(&want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    (!same).then(|| error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token"))
}

async fn list_devices(State(s): State<Arc<Ingest>>) -> Response {
    axum::Json(s.registry.devices()).into_response()
}

async fn add_device(State(s): State<Arc<Ingest>>, body: Bytes) -> Response {
    let device: Device = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_device", e),
    };
    match s.registry.upsert(device.clone()) {
        Ok(()) => (StatusCode::CREATED, axum::Json(device)).into_response(),
        Err(e @ hexpulse_common::registry::RegistryError::InvalidDevice { .. }) => {
            error(StatusCode::BAD_REQUEST, "invalid_device", e)
        }
        Err(e) => {
            tracing::error!(error = %e, "registry write failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "registry_write_failed",
                e,
            )
        }
    }
}

async fn remove_device(State(s): State<Arc<Ingest>>, Path(key): Path<String>) -> Response {
    let Ok(bytes) = hex::decode(&key) else {
        return error(StatusCode::BAD_REQUEST, "invalid_device", "key is not hex");
    };
    match s.registry.remove(&bytes) {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "not_found", "no such device"),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "registry_write_failed",
            e,
        ),
    }
}
