//! What every request passes: the request metrics, and the caller's token checked against the
//! route's endpoint group, with the per-caller rate ([`crate::gate::Gate::admit`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::header;
use axum::response::Response;
use hexpulse_common::ratelimit::client_ip;

use super::error::sql_error;
use super::state::AppState;
use crate::gate::Credential;

/// Counts every request by endpoint (the route pattern) and status, with a latency histogram.
pub(crate) async fn count_requests(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
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

/// Who the caller is, checked against the route's endpoint group by the gate (the same rules as
/// every SQL door: tokens, groups, per-caller rates); the caller rides along.
pub(crate) async fn authorize(
    State((st, group)): State<(Arc<AppState>, &'static str)>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // Callers without a valid token are keyed (and limited) by their address.
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(
            || "ip:?".to_string(),
            |c| {
                let ip = client_ip(c.0.ip(), req.headers(), &st.cfg.trusted_proxies);
                format!("ip:{ip}")
            },
        );
    match st.gate.admit(Credential::Header(header), group, &peer) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            let unauthorized = e.status == 401;
            let mut r = sql_error(e);
            if unauthorized {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
            }
            r
        }
    }
}

/// Tiles belong to the group of their layer: the layer as the router decoded it (the handler's
/// `Path`), never the raw path, which may percent-encode it (`/v1/tiles/%72oad/...`).
pub(crate) async fn authorize_tile(
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
