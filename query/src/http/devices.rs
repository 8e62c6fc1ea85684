//! Device status for operators (`devices` group): `GET /v1/devices/{device}/status` (one device) and
//! `GET /v1/devices/status?bbox=` (the devices whose last location lies in a box), answered from
//! the device status cache ([`crate::status`]), never from a scan of the lake.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::{bad_param, error};
use super::state::AppState;
use crate::auth::Caller;
use crate::params::Bbox;
use crate::status::{BoxError, KINDS, State as DeviceState, parse_key};

/// 503 while the cache reads the lake for the first time.
fn loading(st: &AppState) -> Response {
    let retry = st.status.config().refresh_interval.as_secs().max(1) as u32;
    hexpulse_common::http::error_answer(
        StatusCode::SERVICE_UNAVAILABLE,
        "loading",
        "the device status cache is reading the lake; try again shortly",
        Some(retry),
    )
}

/// Whether the caller may see a device's location: road devices' locations are raw dashcam
/// positions, for the `raw` group alone (as in SQL).
fn may_locate(st: &AppState, caller: Option<&Caller>) -> impl Fn(Option<&str>) -> bool {
    let raw = caller.is_some_and(|c| st.gate.allows_raw(c));
    move |kind| raw || kind != Some("road")
}

pub(crate) async fn device_status(
    State(st): State<Arc<AppState>>,
    caller: Option<axum::Extension<Caller>>,
    Path(key): Path<String>,
) -> Response {
    let Some(k) = parse_key(&key) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_param",
            "key: a device key is 64 hexadecimal digits (its Ed25519 public key)",
        );
    };
    let caller = caller.map(|axum::Extension(c)| c);
    let now = hexpulse_common::time::now_ms();
    match st.status.device(&k, now, may_locate(&st, caller.as_ref())) {
        Err(()) => loading(&st),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "unknown_device",
            format!(
                "no reading or rejection of device {key} was received in the last {}",
                humantime::format_duration(st.status.config().window)
            ),
        ),
        Ok(Some(v)) => Json(v).into_response(),
    }
}

pub(crate) async fn devices_in_box(
    State(st): State<Arc<AppState>>,
    caller: Option<axum::Extension<Caller>>,
    QueryParams(p): QueryParams<HashMap<String, String>>,
) -> Response {
    let bbox = match Bbox::parse(p.get("bbox").map(String::as_str).unwrap_or("")) {
        Ok(b) => b,
        Err(e) => return bad_param(e),
    };
    let kind = match p.get("kind").map(String::as_str) {
        Some(k) if !KINDS.contains(&k) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_param",
                format!("kind: one of {}", KINDS.join(", ")),
            );
        }
        k => k,
    };
    let state = match p.get("state").map(String::as_str) {
        Some(s) => match DeviceState::parse(s) {
            Some(s) => Some(s),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_param",
                    "state: one of online, stale, offline",
                );
            }
        },
        None => None,
    };
    let caller = caller.map(|axum::Extension(c)| c);
    let now = hexpulse_common::time::now_ms();
    let limit = st.cfg.max_features;
    match st.status.in_box(
        &bbox,
        kind,
        state,
        now,
        limit,
        may_locate(&st, caller.as_ref()),
    ) {
        Err(BoxError::Loading) => loading(&st),
        Err(BoxError::TooMany(n)) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_devices",
            format!(
                "{n} devices match, more than {limit}; ask for a smaller bbox, a kind or a state"
            ),
        ),
        Ok((devices, meta)) => Json(json!({
            "count": devices.len(),
            "devices": devices,
            "thresholds": meta["thresholds"],
            "freshness": meta["freshness"],
        }))
        .into_response(),
    }
}
