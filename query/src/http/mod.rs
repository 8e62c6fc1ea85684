//! The HTTP API of the query service (every route, with its parameters, is in `/openapi.json`).
//!
//! - `GET /v1/coverage`, `/v1/deadzones`, `/v1/sensors/hexes`, `/v1/sensors/series`,
//!   `/v1/road/hexes`, `/v1/tiles/{layer}/{z}/{x}/{y}.mvt`: [`hexes`], [`sensors`], [`road`],
//!   [`tiles`], over the hexes of [`crate::geo`].
//! - `POST /v1/sql`: body = the SQL text (or JSON `{"sql": "..."}`); answer by `Accept`:
//!   `application/json` (default), `text/csv`, `application/vnd.apache.arrow.stream`.
//! - `GET /v1/devices/{device}/status`, `/v1/devices/status?bbox=`: device status from a cache that
//!   follows the lake ([`devices`], [`crate::status`]).
//! - `GET`/`POST /v1/pilots`, `GET`/`PATCH`/`DELETE /v1/pilots/{id}`, `GET /v1/pilots/{id}/report`:
//!   pilots and their reports ([`pilots`], [`crate::pilots`]).
//! - `GET`/`POST /v1/alerts/rules`, `GET`/`DELETE /v1/alerts/rules/{id}`: alert rules
//!   ([`alerts`], [`crate::alerts`]; the alerts role evaluates them).
//! - `GET /v1/epochs`: sealed epochs with their root and device count.
//! - `GET /v1/epochs/{id}/manifest`: the manifest.
//! - `GET /v1/epochs/{id}/devices`: the device summaries, JSON, CSV or Parquet (`Accept` or
//!   `?format=json|csv|parquet`); the Parquet answer is the sealed file itself, checked against the
//!   manifest's SHA-256.
//! - `GET /v1/epochs/{id}/proof/{device}`: the device's Merkle proof.
//! - `/healthz`, `/readyz`, `/metrics`.
//!
//! - `/`, `/assets/*`, `/map/config.json`: the map page ([`assets`]).
//!
//! The router and the start are here; [`state`] holds what handlers share, [`guard`] the
//! middleware (metrics, auth, rates), [`error`] the error answers: JSON
//! `{"error": code, "message": ...}`.

mod alerts;
mod area;
pub mod assets;
mod devices;
mod epochs;
mod error;
mod guard;
mod hexes;
mod pilots;
mod road;
mod sensors;
mod sql;
mod state;
mod tiles;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use hexpulse_common::health::{Health, Report};
use hexpulse_common::ratelimit::Keyed;
use hexpulse_common::tasks::Tasks;
use hexpulse_lake::Lake;
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use area::freshness;
pub use hexes::rank_dead_zones;
pub use road::{ROAD_TIME_GRAIN_MS, road_window};

use crate::auth::Auth;
use crate::catalog::{Catalog, CatalogError};
use crate::config::QueryConfig;
use crate::gate::{Gate, GateLimits};
use error::error;
use state::AppState;

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
    #[error("[query.live]: {0}")]
    Live(#[from] crate::live::LiveError),
    #[error("TLS: {0}")]
    Tls(#[from] hexpulse_common::serve::TlsError),
    #[error("[query.status]: {0}")]
    Status(String),
    #[error("{0}")]
    Pilots(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl hexpulse_common::fault::Classify for QueryError {
    fn fault(&self) -> hexpulse_common::fault::Fault {
        use hexpulse_common::fault::Fault;
        match self {
            QueryError::Lake(e) => e.fault(),
            QueryError::Catalog(_) | QueryError::DataFusion(_) => Fault::External,
            QueryError::Auth(_)
            | QueryError::Rules(_)
            | QueryError::Live(_)
            | QueryError::Tls(_)
            | QueryError::Status(_)
            | QueryError::Pilots(_)
            | QueryError::Bind { .. } => Fault::User,
            QueryError::Runtime(_) => Fault::Internal,
        }
    }
}

/// A started query service.
pub struct Query {
    pub addr: SocketAddr,
    /// The admin listener's address, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// The PostgreSQL door's address, when `pg_listen` is set.
    pub pg_addr: Option<SocketAddr>,
    /// The Flight SQL door's address, when `flight_listen` is set.
    pub flight_addr: Option<SocketAddr>,
    /// The rules and the catalog every door answers through.
    pub gate: Arc<Gate>,
    /// The server: it ends at shutdown, once open requests are answered.
    pub task: tokio::task::JoinHandle<()>,
    /// The background tasks (catalog refresh, the live tier's poll, the rate limiter's cleanup).
    pub tasks: Tasks,
}

impl Query {
    /// Awaits the server, then the background tasks.
    pub async fn wait(self) {
        self.tasks.join_after("query", self.task).await;
    }

    /// Opens the lake's catalog, binds, and serves until `shutdown`.
    pub async fn start(
        cfg: QueryConfig,
        lake: Lake,
        shutdown: CancellationToken,
    ) -> Result<Query, QueryError> {
        let health = Health::new();
        let mut tasks = Tasks::new(health.clone(), shutdown.clone());
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(cfg.memory_limit_bytes, 1.0)
            .with_max_temp_directory_size(cfg.max_spill_bytes)
            .build_arc()?;
        let live = if cfg.live.sources.is_empty() {
            None
        } else {
            let live = Arc::new(crate::live::LiveTier::new(
                &cfg.live.sources,
                cfg.live.memory_bytes,
            )?);
            // Once before the first catalog, which then knows the partitions with live rows.
            live.poll().await;
            tasks.spawn(
                "live-poll",
                live.clone().run(cfg.live.poll_interval, shutdown.clone()),
            );
            Some(live)
        };
        cfg.status.check().map_err(QueryError::Status)?;
        let rules = hexpulse_lake::rules::Rules::load(cfg.rules_path.as_deref())?;
        let lateness_ms = rules.time.allowed_lateness.as_millis() as i64;
        let status = Arc::new(crate::status::StatusCache::new(
            cfg.status.clone(),
            lake.clone(),
            lateness_ms,
        ));
        let pilots = Arc::new(
            crate::pilots::Pilots::new(lake.clone(), cfg.pilots.clone())
                .map_err(QueryError::Pilots)?,
        );
        cfg.alerts.check().map_err(QueryError::Pilots)?;
        let alerts = Arc::new(crate::alerts::Rules::new(
            lake.clone(),
            cfg.alerts.clone(),
            rules.ranges.keys().cloned().collect(),
        ));
        let catalog = Catalog::open(lake, runtime, cfg.max_expression_bytes, live).await?;
        let auth = Auth::new(&cfg.auth)?;
        let exec = crate::gate::query_runtime(cfg.query_threads, shutdown.clone())
            .map_err(QueryError::Runtime)?;
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
        let gate = Arc::new(Gate::new(
            catalog,
            auth,
            GateLimits {
                max_concurrent_queries: cfg.max_concurrent_queries,
                query_timeout: cfg.query_timeout,
                rate_per_second: cfg.rate_per_client.per_second,
            },
            exec,
            Arc::new(Keyed::new(cfg.rate_per_client)),
        ));
        let state = Arc::new(AppState {
            gate: gate.clone(),
            road_min_devices: rules.privacy.road_min_devices,
            lateness_ms,
            status,
            pilots,
            alerts,
            health: health.clone(),
            cfg,
        });
        // The report holds the state weakly: the state holds the health.
        let weak = Arc::downgrade(&state);
        let _ = health.with_report(move || readiness(weak.upgrade().as_deref()));
        gate.per_client
            .spawn_cleanup("forget-idle-callers", FORGET_IDLE_EVERY, &mut tasks);
        tasks.spawn("device-status", state.status.clone().run(shutdown.clone()));
        {
            let state = state.clone();
            tasks.spawn_every("catalog-refresh", state.cfg.refresh_interval, move || {
                let state = state.clone();
                async move {
                    if let Err(e) = state.gate.catalog.refresh().await {
                        tracing::warn!(error = %e, "catalog refresh failed; serving the previous one");
                    }
                }
            });
        }
        let max_features = state.cfg.max_features;
        let admin_addr = match state.cfg.admin_listen {
            Some(a) => Some(serve_admin(a, &state, &mut tasks).await?),
            None => None,
        };
        let pg_addr = match state.cfg.pg_listen {
            Some(a) => Some(
                crate::pg::serve(
                    a,
                    state.cfg.pg_tls.as_ref().map(crate::pg::tls).transpose()?,
                    gate.clone(),
                    state.cfg.max_rows,
                    state.cfg.max_connections,
                    &mut tasks,
                    shutdown.clone(),
                )
                .await
                .map_err(|source| QueryError::Bind { addr: a, source })?,
            ),
            None => None,
        };
        let request_timeout = state.cfg.request_timeout.max(state.cfg.query_timeout);
        let flight_addr = match state.cfg.flight_listen {
            Some(a) => {
                let listener = tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(|source| QueryError::Bind { addr: a, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| QueryError::Bind { addr: a, source })?;
                let router = crate::flight::router(gate.clone(), state.cfg.max_rows);
                let tls = (state.cfg.flight_tls.as_ref())
                    .map(|t| {
                        hexpulse_common::serve::tls_acceptor(t, hexpulse_common::serve::HTTP_ALPN)
                    })
                    .transpose()?;
                let limits = hexpulse_common::serve::ConnLimits {
                    header_timeout: request_timeout,
                    max_connections: state.cfg.max_connections,
                };
                let stop = shutdown.clone();
                tasks.spawn("flight-door", async move {
                    hexpulse_common::serve::serve(
                        listener,
                        router,
                        tls,
                        limits,
                        stop,
                        SHUTDOWN_GRACE,
                    )
                    .await;
                });
                tracing::info!(addr = %bound, tls = state.cfg.flight_tls.is_some(), "flight sql door listening");
                Some(bound)
            }
            None => None,
        };
        let max_connections = state.cfg.max_connections;
        let group = |g: &'static str| {
            axum::middleware::from_fn_with_state((state.clone(), g), guard::authorize)
        };
        let app = Router::new()
            .route(
                "/v1/coverage",
                get(hexes::coverage).layer(group("coverage")),
            )
            .route(
                "/v1/deadzones",
                get(hexes::deadzones).layer(group("coverage")),
            )
            .route(
                "/v1/sensors/hexes",
                get(sensors::sensor_hexes).layer(group("sensors")),
            )
            .route(
                "/v1/sensors/series",
                get(sensors::sensor_series).layer(group("sensors")),
            )
            .route("/v1/road/hexes", get(road::road_hexes).layer(group("road")))
            .route(
                "/v1/devices/status",
                get(devices::devices_in_box).layer(group("devices")),
            )
            .route(
                "/v1/devices/{device}/status",
                get(devices::device_status).layer(group("devices")),
            )
            .route(
                "/v1/pilots",
                get(pilots::list)
                    .layer(group("pilots"))
                    .merge(post(pilots::create).layer(group("pilots_write"))),
            )
            .route(
                "/v1/pilots/{id}",
                get(pilots::get).layer(group("pilots")).merge(
                    delete(pilots::delete)
                        .patch(pilots::edit)
                        .layer(group("pilots_write")),
                ),
            )
            .route(
                "/v1/alerts/rules",
                get(alerts::list)
                    .layer(group("alerts"))
                    .merge(post(alerts::create).layer(group("alerts_write"))),
            )
            .route(
                "/v1/alerts/rules/{id}",
                get(alerts::get)
                    .layer(group("alerts"))
                    .merge(delete(alerts::delete).layer(group("alerts_write"))),
            )
            .route(
                "/v1/pilots/{id}/report",
                get(pilots::report).layer(group("pilots")),
            )
            .route(
                "/v1/tiles/{layer}/{z}/{x}/{y}",
                get(tiles::tile).layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    guard::authorize_tile,
                )),
            )
            .route("/v1/sql", post(sql::run_sql).layer(group("sql")))
            .route(
                "/v1/epochs",
                get(epochs::list_epochs).layer(group("epochs")),
            )
            .route(
                "/v1/epochs/{id}/manifest",
                get(epochs::manifest).layer(group("epochs")),
            )
            .route(
                "/v1/epochs/{id}/devices",
                get(epochs::devices).layer(group("epochs")),
            )
            .route(
                "/v1/epochs/{id}/proof/{device}",
                get(epochs::proof).layer(group("epochs")),
            )
            .route("/", get(assets::index).layer(group("map")))
            .route("/assets/{*file}", get(assets::asset).layer(group("map")))
            .route("/map/config.json", get(assets::config).layer(group("map")))
            .route(
                "/v1/epochs/{id}/devices/{device}/hexes",
                get(epochs::device_hexes).layer(group("epochs")),
            )
            .route(
                "/openapi.json",
                get(move || async move { axum::Json(crate::openapi::document(max_features)) })
                    .layer(group("meta")),
            )
            .merge(hexpulse_common::health::routes(&state.health))
            .route(
                "/metrics",
                hexpulse_common::health::metrics().layer(group("metrics")),
            )
            .fallback(|| async {
                error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such endpoint; see /openapi.json",
                )
            })
            .layer(axum::middleware::from_fn(guard::count_requests))
            .with_state(state);
        tracing::info!(%addr, "query service listening");
        let app = app
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                request_timeout,
            ))
            .layer(axum::middleware::map_response(error::json_errors));
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
            pg_addr,
            flight_addr,
            gate,
            task,
            tasks,
        })
    }
}

/// The operators' listener: metrics and health, no auth (keep it off public networks).
async fn serve_admin(
    addr: SocketAddr,
    state: &AppState,
    tasks: &mut Tasks,
) -> Result<SocketAddr, QueryError> {
    let app = hexpulse_common::health::side_router(&state.health);
    let bound = hexpulse_common::http::serve_in_background(addr, app, "admin-listener", tasks)
        .await
        .map_err(|source| QueryError::Bind { addr, source })?;
    tracing::info!(addr = %bound, "query admin listening");
    Ok(bound)
}

/// Runs the query service until `shutdown`.
pub async fn run(cfg: QueryConfig, shutdown: CancellationToken) -> Result<(), QueryError> {
    let lake = Lake::open(&cfg.lake_url)?;
    Query::start(cfg, lake, shutdown).await?.wait().await;
    Ok(())
}

/// `/readyz`'s report: the catalog's snapshot and the plans running now.
fn readiness(s: Option<&AppState>) -> Report {
    let mut r = Report::default();
    if let Some(s) = s {
        let (_, snap) = s.gate.catalog.context();
        let running = s.gate.running();
        r.details.insert("catalog".into(), json!(snap));
        r.details.insert("running_queries".into(), json!(running));
    }
    r
}
