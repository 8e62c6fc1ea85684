//! What every request passes: the request metrics, and the caller's token checked against the
//! route's endpoint group, with the per-caller rate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use hexpulse_common::ratelimit::{client_ip, retry_after_secs};

use super::error::error;
use super::state::AppState;
use crate::auth::{Caller, Denied};

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
            hexpulse_common::http::error_answer(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "over {} requests/s for this caller; retry later",
                    st.cfg.rate_per_client.per_second
                ),
                Some(retry_after_secs(wait)),
            )
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
