//! The HTTP API of the query service (every route, with its parameters, is in `/openapi.json`).
//!
//! - `GET /v1/coverage`, `/v1/deadzones`, `/v1/sensors/hexes`, `/v1/sensors/series`,
//!   `/v1/road/hexes`, `/v1/tiles/{layer}/{z}/{x}/{y}.mvt`: see [`crate::api`].
//! - `POST /v1/sql`: body = the SQL text (or JSON `{"sql": "..."}`); answer by `Accept`:
//!   `application/json` (default), `text/csv`, `application/vnd.apache.arrow.stream`.
//! - `GET /v1/epochs`: sealed epochs with their root and device count.
//! - `GET /v1/epochs/{id}/manifest`: the manifest.
//! - `GET /v1/epochs/{id}/devices`: the device summaries, JSON, CSV or Parquet (`Accept` or
//!   `?format=json|csv|parquet`); the Parquet answer is the sealed file itself, checked against the
//!   manifest's SHA-256.
//! - `GET /v1/epochs/{id}/proof/{device}`: the device's Merkle proof.
//! - `/healthz`, `/readyz`, `/metrics`.
//!
//! Errors are JSON `{"error": code, "message": ...}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use hexpulse_common::ratelimit::{Keyed, client_ip, retry_after_secs};
use hexpulse_lake::Lake;
use hexpulse_lake::epoch::{seal, sealed_ids};
use hexpulse_schemas::tables;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::auth::{Auth, Caller, Denied};
use crate::catalog::{Catalog, CatalogError};
use crate::config::QueryConfig;
use crate::sql::{self, Limits, SqlError};

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Time open requests get to finish once shutdown starts.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the per-client rate limiter forgets idle callers.
const FORGET_IDLE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("lake: {0}")]
    Lake(#[from] hexpulse_lake::LakeError),
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("auth config: {0}")]
    Auth(#[from] crate::auth::AuthConfigError),
    #[error("rules: {0}")]
    Rules(#[from] hexpulse_lake::rules::RulesError),
    #[error("query runtime: {0}")]
    Runtime(std::io::Error),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub(crate) struct AppState {
    pub(crate) cfg: QueryConfig,
    pub(crate) catalog: Catalog,
    pub(crate) auth: Auth,
    /// Runs query plans, off the runtime that serves HTTP.
    exec: tokio::runtime::Handle,
    slots: Arc<tokio::sync::Semaphore>,
    /// Plans running now (`/readyz`'s `running_queries`).
    running: Arc<std::sync::atomic::AtomicUsize>,
    /// k of the road k-anonymity rule.
    pub(crate) road_min_devices: u64,
    /// The rules' allowed lateness (an ended epoch is sealable once the watermark passes end + it).
    lateness_ms: i64,
    /// Requests per caller (token name, or `ip:<address>` without a token).
    per_client: Arc<Keyed<String>>,
}

impl AppState {
    /// Runs `sql` on the query runtime within the limits and the concurrency bound.
    ///
    /// The slot belongs to the plan, not to the request: it is released when the plan's task ends.
    /// A request that goes away (the client closed the connection, or the request timed out)
    /// aborts the task, and with it the plan.
    async fn run(
        &self,
        sql: String,
        allow_raw: bool,
        max_rows: usize,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), SqlError> {
        let wait =
            tokio::time::timeout(self.cfg.query_timeout, self.slots.clone().acquire_owned()).await;
        let Ok(Ok(slot)) = wait else {
            return Err(SqlError {
                status: 503,
                code: "busy",
                message: format!(
                    "{} queries are running and none finished within {}; retry later",
                    self.cfg.max_concurrent_queries,
                    humantime::format_duration(self.cfg.query_timeout)
                ),
            });
        };
        let ctx = self.catalog.sql_context(allow_raw);
        let limits = Limits {
            max_rows,
            max_bytes: self.cfg.max_answer_bytes,
            timeout: self.cfg.query_timeout,
        };
        let running = Running::enter(self.running.clone());
        let task = AbortOnDrop(self.exec.spawn(async move {
            let (_slot, _running) = (slot, running);
            sql::run(&ctx, &sql, limits, allow_raw).await
        }));
        match task.join().await {
            Ok(r) => r,
            Err(e) => Err(SqlError {
                status: 500,
                code: "internal",
                message: format!("the query task failed: {e}"),
            }),
        }
    }

    /// A query the service itself composed (trusted text): batches, or an error answer.
    pub(crate) async fn internal_query(&self, sql: String) -> Result<Vec<RecordBatch>, Response> {
        let max = self
            .cfg
            .max_features
            .saturating_mul(64)
            .max(self.cfg.max_rows);
        match self.run(sql, true, max).await {
            Ok((_, b)) => Ok(b),
            Err(e) => {
                if e.status >= 500 || e.code == "sql_plan" || e.code == "sql_error" {
                    tracing::warn!(code = e.code, message = %e.message, "internal query failed");
                }
                Err(sql_error(e))
            }
        }
    }
}

/// Counts a running plan while it lives.
struct Running(Arc<std::sync::atomic::AtomicUsize>);

impl Running {
    fn enter(count: Arc<std::sync::atomic::AtomicUsize>) -> Running {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Running(count)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A task that is aborted when its handle is dropped before it ended.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The runtime that executes query plans, on its own threads; it stops with `shutdown`.
fn query_runtime(
    threads: usize,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::runtime::Handle> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        threads
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("hexpulse-query-exec")
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("hexpulse-query-rt".into())
        .spawn(move || {
            rt.block_on(shutdown.cancelled());
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        })?;
    Ok(handle)
}

/// A started query service.
pub struct Query {
    pub addr: SocketAddr,
    /// The admin listener's address, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub task: tokio::task::JoinHandle<()>,
}

pub(crate) fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message.to_string()})),
    )
        .into_response()
}

/// Every error answer in the documented JSON form: axum's own rejections (a path or query that does
/// not parse, a wrong method, a body of the wrong type) and the timeout layer answer plain text or
/// nothing; their text becomes the message.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "time_limit",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "bad_body",
        s if s.is_server_error() => "internal",
        _ => "error",
    };
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        t => t.to_string(),
    };
    let mut out = error(status, code, message);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

fn sql_error(e: SqlError) -> Response {
    error(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
        e.code,
        e.message,
    )
}

impl Query {
    /// Opens the lake's catalog, binds, and serves until `shutdown`.
    pub async fn start(
        cfg: QueryConfig,
        lake: Lake,
        shutdown: CancellationToken,
    ) -> Result<Query, QueryError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(cfg.memory_limit_bytes, 1.0)
            .with_max_temp_directory_size(cfg.max_spill_bytes)
            .build_arc()?;
        let catalog = Catalog::open(lake, runtime, cfg.max_expression_bytes).await?;
        let auth = Auth::new(&cfg.auth)?;
        let rules = hexpulse_lake::rules::Rules::load(cfg.rules_path.as_deref())?;
        let exec =
            query_runtime(cfg.query_threads, shutdown.clone()).map_err(QueryError::Runtime)?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| QueryError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| QueryError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let state = Arc::new(AppState {
            slots: Arc::new(tokio::sync::Semaphore::new(
                cfg.max_concurrent_queries.max(1),
            )),
            running: Default::default(),
            catalog,
            auth,
            exec,
            road_min_devices: rules.privacy.road_min_devices,
            lateness_ms: rules.time.allowed_lateness.as_millis() as i64,
            per_client: Arc::new(Keyed::new(cfg.rate_per_client)),
            cfg,
        });
        state
            .per_client
            .spawn_cleanup(FORGET_IDLE_EVERY, shutdown.clone());
        {
            let (state, stop) = (state.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(state.cfg.refresh_interval) => {}
                    }
                    if let Err(e) = state.catalog.refresh().await {
                        tracing::warn!(error = %e, "catalog refresh failed; serving the previous one");
                    }
                }
            });
        }
        let handle = hexpulse_common::telemetry::metrics_handle();
        let max_features = state.cfg.max_features;
        let admin_addr = match state.cfg.admin_listen {
            Some(a) => Some(serve_admin(a, state.clone(), shutdown.clone()).await?),
            None => None,
        };
        let request_timeout = state.cfg.request_timeout.max(state.cfg.query_timeout);
        let max_connections = state.cfg.max_connections;
        let group =
            |g: &'static str| axum::middleware::from_fn_with_state((state.clone(), g), authorize);
        let app = Router::new()
            .route("/v1/coverage", get(api::coverage).layer(group("coverage")))
            .route(
                "/v1/deadzones",
                get(api::deadzones).layer(group("coverage")),
            )
            .route(
                "/v1/sensors/hexes",
                get(api::sensor_hexes).layer(group("sensors")),
            )
            .route(
                "/v1/sensors/series",
                get(api::sensor_series).layer(group("sensors")),
            )
            .route("/v1/road/hexes", get(api::road_hexes).layer(group("road")))
            .route(
                "/v1/tiles/{layer}/{z}/{x}/{y}",
                get(api::tile).layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    authorize_tile,
                )),
            )
            .route("/v1/sql", post(run_sql).layer(group("sql")))
            .route("/v1/epochs", get(list_epochs).layer(group("epochs")))
            .route(
                "/v1/epochs/{id}/manifest",
                get(manifest).layer(group("epochs")),
            )
            .route(
                "/v1/epochs/{id}/devices",
                get(devices).layer(group("epochs")),
            )
            .route(
                "/v1/epochs/{id}/proof/{device}",
                get(proof).layer(group("epochs")),
            )
            .route("/", get(crate::map::index).layer(group("map")))
            .route(
                "/assets/{*file}",
                get(crate::map::asset).layer(group("map")),
            )
            .route(
                "/map/config.json",
                get(crate::map::config).layer(group("map")),
            )
            .route(
                "/v1/epochs/{id}/devices/{device}/hexes",
                get(api::device_hexes).layer(group("epochs")),
            )
            .route(
                "/openapi.json",
                get(move || async move { axum::Json(crate::openapi::document(max_features)) })
                    .layer(group("meta")),
            )
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .route(
                "/metrics",
                get(move || std::future::ready(handle.render())).layer(group("metrics")),
            )
            .fallback(|| async {
                error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such endpoint; see /openapi.json",
                )
            })
            .layer(axum::middleware::from_fn(count_requests))
            .with_state(state);
        tracing::info!(%addr, "query service listening");
        let app = app
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                request_timeout,
            ))
            .layer(axum::middleware::map_response(json_errors));
        let task = tokio::spawn(async move {
            hexpulse_common::serve::serve(
                listener,
                app,
                None,
                hexpulse_common::serve::ConnLimits {
                    header_timeout: request_timeout,
                    max_connections,
                },
                shutdown,
                SHUTDOWN_GRACE,
            )
            .await;
        });
        Ok(Query {
            addr,
            admin_addr,
            task,
        })
    }
}

/// The operators' listener: metrics and health, no auth (keep it off public networks).
async fn serve_admin(
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, QueryError> {
    let handle = hexpulse_common::telemetry::metrics_handle();
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state);
    let bound = hexpulse_common::http::serve_in_background(addr, app, shutdown)
        .await
        .map_err(|source| QueryError::Bind { addr, source })?;
    tracing::info!(addr = %bound, "query admin listening");
    Ok(bound)
}

/// Runs the query service until `shutdown`.
pub async fn run(cfg: QueryConfig, shutdown: CancellationToken) -> Result<(), QueryError> {
    let lake = Lake::open(&cfg.lake_url)?;
    let q = Query::start(cfg, lake, shutdown).await?;
    let _ = q.task.await;
    Ok(())
}

/// Counts every request by endpoint (the route pattern) and status, with a latency histogram.
async fn count_requests(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics::counter!("hexpulse_query_requests_total", "endpoint" => endpoint.clone(), "status" => resp.status().as_u16().to_string())
        .increment(1);
    metrics::histogram!("hexpulse_query_seconds", "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    resp
}

fn denied(d: Denied) -> Response {
    match d {
        Denied::Unauthenticated(why) => {
            let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", why);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            r
        }
        Denied::Forbidden { role, group } => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("role {role:?} may not use the {group} endpoints"),
        ),
    }
}

/// Who the caller is, checked against the route's endpoint group; the caller rides along.
async fn authorize(
    State((st, group)): State<(Arc<AppState>, &'static str)>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // Callers without a valid token are keyed (and limited) by their address.
    let ip_key = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(
            || "ip:?".to_string(),
            |c| {
                let ip = client_ip(c.0.ip(), req.headers(), &st.cfg.trusted_proxies);
                format!("ip:{ip}")
            },
        );
    let limited = |key: &String| {
        st.per_client.check(key).err().map(|wait| {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "over {} requests/s for this caller; retry later",
                    st.cfg.rate_per_client.per_second
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs(wait).into());
            r
        })
    };
    match st.auth.check(header, group) {
        Ok(caller) => {
            let key = match &caller {
                Caller::Token { name, .. } => name.clone(),
                Caller::Anonymous => ip_key,
            };
            if let Some(r) = limited(&key) {
                return r;
            }
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        // A failed authentication spends its address's budget, so guessing tokens is as slow as
        // the per-client rate (and never spends a real token's budget).
        Err(d @ Denied::Unauthenticated(_)) => limited(&ip_key).unwrap_or_else(|| denied(d)),
        Err(d) => denied(d),
    }
}

/// Tiles belong to the group of their layer: the layer as the router decoded it (the handler's
/// `Path`), never the raw path, which may percent-encode it (`/v1/tiles/%72oad/...`).
async fn authorize_tile(
    State(st): State<Arc<AppState>>,
    Path(params): Path<HashMap<String, String>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let layer = params.get("layer").map_or("", String::as_str);
    let group = match layer {
        "air" => "sensors",
        "road" => "road",
        _ => "coverage",
    };
    authorize(State((st, group)), req, next).await
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let (_, snap) = s.catalog.context();
    let running = s.running.load(std::sync::atomic::Ordering::Relaxed);
    axum::Json(json!({"catalog": snap, "running_queries": running})).into_response()
}

/// The answer format: `?format=` first, then `Accept`. (The error is a finished answer on the cold
/// path of a refused request, as in `api`.)
#[allow(clippy::result_large_err)]
fn wanted_format(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<&'static str, Response> {
    if let Some(f) = params.get("format") {
        return match f.as_str() {
            "json" => Ok("json"),
            "csv" => Ok("csv"),
            "parquet" => Ok("parquet"),
            "arrow" => Ok("arrow"),
            other => Err(error(
                StatusCode::BAD_REQUEST,
                "bad_param",
                format!("format {other:?}: one of json, csv, parquet, arrow"),
            )),
        };
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(if accept.contains("text/csv") {
        "csv"
    } else if accept.contains(ARROW_STREAM) {
        "arrow"
    } else if accept.contains("parquet") {
        "parquet"
    } else {
        "json"
    })
}

/// An answer body that refuses to grow past `max` bytes.
struct Capped {
    out: Vec<u8>,
    max: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                ANSWER_TOO_LARGE,
            ));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const ANSWER_TOO_LARGE: &str = "the encoded answer is larger than max_answer_bytes";

fn encode(
    format: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    max: usize,
) -> Result<(&'static str, Vec<u8>), String> {
    let mut out = Capped {
        out: Vec::new(),
        max,
    };
    let content_type = match format {
        "csv" => {
            let mut w = datafusion::arrow::csv::Writer::new(&mut out);
            for b in batches {
                w.write(b).map_err(|e| e.to_string())?;
            }
            "text/csv"
        }
        "arrow" => {
            let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)
                .map_err(|e| e.to_string())?;
            for b in batches {
                w.write(b).map_err(|e| e.to_string())?;
            }
            w.finish().map_err(|e| e.to_string())?;
            ARROW_STREAM
        }
        _ => {
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut out);
            for b in batches {
                w.write(b).map_err(|e| e.to_string())?;
            }
            w.finish().map_err(|e| e.to_string())?;
            drop(w);
            if out.out.is_empty() {
                out.out.extend(b"[]");
            }
            "application/json"
        }
    };
    Ok((content_type, out.out))
}

fn respond(format: &str, schema: &SchemaRef, batches: &[RecordBatch], max: usize) -> Response {
    match encode(format, schema, batches, max) {
        Ok((ct, body)) => ([(header::CONTENT_TYPE, ct)], body).into_response(),
        Err(e) if e.contains(ANSWER_TOO_LARGE) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "answer_limit",
            format!("{ANSWER_TOO_LARGE} ({max}); select fewer rows or columns, or ask for Arrow"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "encode", e),
    }
}

async fn run_sql(
    State(s): State<Arc<AppState>>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let caller = caller.map(|axum::Extension(c)| c);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let query = match sql::request_text(content_type, &body) {
        Ok(q) => q,
        Err(e) => return sql_error(e),
    };
    let format = match wanted_format(&headers, &params) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let allow_raw = caller.as_ref().is_some_and(|c| s.auth.allows(c, "raw"));
    let resp = match s.run(query, allow_raw, s.cfg.max_rows).await {
        Ok((schema, batches)) => respond(format, &schema, &batches, s.cfg.max_answer_bytes),
        Err(e) => sql_error(e),
    };
    tracing::debug!(caller = caller.as_ref().map_or("?", |c| c.label()), status = %resp.status(), elapsed = ?started.elapsed(), "sql");
    resp
}

/// Unsealed epochs listed before the current one, at most.
const OPEN_EPOCHS_LISTED: i64 = 24;

/// `GET /v1/epochs`: sealed epochs with their roots, then the unsealed ones since the last seal
/// (at most a day's worth of epochs back) with where they stand: `open` (not ended),
/// `awaiting_watermark` (ended; some partition's watermark is not yet past end + lateness) or
/// `sealable` (the sealer will seal it on its next pass).
async fn list_epochs(State(s): State<Arc<AppState>>) -> Response {
    let lake = s.catalog.lake();
    let ids = match sealed_ids(lake).await {
        Ok(ids) => ids,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "lake", e),
    };
    let mut out = Vec::new();
    for id in &ids {
        if let Ok(Some(m)) = seal::read_manifest(lake, *id).await {
            out.push(json!({
                "epoch": id, "status": "sealed", "forced": m.forced, "start": m.start, "end": m.end,
                "devices": m.merkle_leaves, "merkle_root": m.merkle_root,
                "rules_version": m.rules_version, "sealed_at": m.sealed_at,
            }));
        }
    }
    let snap = s.catalog.context().1;
    let now = hexpulse_common::time::now_ms();
    let ecfg = &s.cfg.epoch;
    if let Ok(current) = ecfg.id_of(now) {
        let after_sealed = ids.last().map_or(i64::MIN, |l| l + 1);
        let first = after_sealed.max(current - OPEN_EPOCHS_LISTED);
        for id in first..=current {
            if ids.contains(&id) {
                continue;
            }
            let Ok((start, end)) = ecfg.bounds(id) else {
                continue;
            };
            let ready_at = end + s.lateness_ms;
            let status = if end > now {
                "open"
            } else if snap.watermark_ms.is_some_and(|w| w >= ready_at) {
                "sealable"
            } else {
                "awaiting_watermark"
            };
            out.push(json!({
                "epoch": id, "status": status,
                "start": crate::params::rfc3339(start), "end": crate::params::rfc3339(end),
                "sealable_when_watermark_reaches": crate::params::rfc3339(ready_at),
            }));
        }
    }
    axum::Json(json!({
        "epochs": out,
        "freshness": crate::api::freshness(&snap, None),
    }))
    .into_response()
}

async fn load_manifest(s: &AppState, id: i64) -> Result<seal::Manifest, Response> {
    match seal::read_manifest(s.catalog.lake(), id).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            "not_sealed",
            format!("epoch {id} is not sealed"),
        )),
        Err(e) => Err(error(StatusCode::SERVICE_UNAVAILABLE, "lake", e)),
    }
}

/// An epoch id from a path (unsigned there; ids past `i64::MAX` name no epoch).
pub(crate) fn epoch_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

async fn manifest(State(s): State<Arc<AppState>>, Path(id): Path<u64>) -> Response {
    let id = epoch_id(id);
    match load_manifest(&s, id).await {
        Ok(m) => axum::Json(m).into_response(),
        Err(r) => r,
    }
}

async fn devices(
    State(s): State<Arc<AppState>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let id = epoch_id(id);
    let m = match load_manifest(&s, id).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let format = match wanted_format(&headers, &params) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let lake = s.catalog.lake();
    if format == "parquet" {
        let Some(out) = m.output(tables::DEVICE_SUMMARY_TABLE) else {
            return error(StatusCode::NOT_FOUND, "no_file", "no device_summary file");
        };
        // Checked against the manifest first: only what the manifest lists leaves here.
        if let Err(e) = seal::read_output(lake, &m, tables::DEVICE_SUMMARY_TABLE).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "integrity", e);
        }
        return match lake.get(&out.path).await {
            Ok(Some(bytes)) => (
                [(header::CONTENT_TYPE, "application/vnd.apache.parquet")],
                bytes,
            )
                .into_response(),
            _ => error(StatusCode::NOT_FOUND, "no_file", "device_summary vanished"),
        };
    }
    match seal::read_output(lake, &m, tables::DEVICE_SUMMARY_TABLE).await {
        Ok(batch) => respond(format, &batch.schema(), &[batch], s.cfg.max_answer_bytes),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "integrity", e),
    }
}

async fn proof(
    State(s): State<Arc<AppState>>,
    Path((id, device)): Path<(u64, String)>,
) -> Response {
    let id = epoch_id(id);
    match seal::build_proof(s.catalog.lake(), id, &device.to_ascii_lowercase()).await {
        Ok(p) => axum::Json(p).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, "no_proof", e),
    }
}
