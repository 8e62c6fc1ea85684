//! The operators' routes of ingest: the device registry's admin API behind a bearer token, and
//! the listener that serves it apart from the device port.

use super::readings::{header_str, refusal_answer};
use super::submit::Refusal;
use super::*;

/// Binds the admin listener and serves [`admin_routes`] on it as one of `tasks`.
pub(super) async fn serve_admin(
    addr: SocketAddr,
    state: Arc<Ingest>,
    tasks: &mut Tasks,
) -> Result<SocketAddr, StartError> {
    let routes = admin_routes(&state).merge(hexpulse_common::health::routes(&state.health));
    let app = with_limits(routes, state);
    let bound = hexpulse_common::http::serve_in_background(addr, app, "admin-listener", tasks)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    tracing::info!(addr = %bound, "ingest admin listening");
    Ok(bound)
}

/// Operators' routes: metrics and the registry's admin API (bearer token).
pub(super) fn admin_routes(state: &Arc<Ingest>) -> Router<Arc<Ingest>> {
    Router::new()
        .route("/v1/admin/devices", get(list_devices).post(add_device))
        .route("/v1/admin/devices/{key}", delete(remove_device))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin,
        ))
        .route("/metrics", hexpulse_common::health::metrics())
}

/// Whether the device port also serves the admin routes: only without an admin listener, and only
/// on a loopback address (`make up`, a developer's machine). A public device port never serves
/// `/metrics` or the admin API.
pub(super) fn admin_on_device_port(cfg: &IngestConfig) -> bool {
    cfg.admin_listen.is_none() && cfg.listen.ip().is_loopback()
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
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let ip = s.client_of(peer, req.headers());
    match ip.and_then(|ip| s.per_ip.check(&ip).err()) {
        Some(wait) => refusal_answer(Refusal::RateLimited {
            why: "too many failed authentications from this address",
            wait,
        }),
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
