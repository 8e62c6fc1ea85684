//! Alert rules (`alerts` group to read, `alerts_write` to create and delete):
//! `GET`/`POST /v1/alerts/rules`, `GET`/`DELETE /v1/alerts/rules/{id}` over the store of
//! [`crate::alerts`]. The webhook's secret is taken on creation and never answered back.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::{error, json_body, object_error};
use super::state::AppState;
use crate::alerts::NewRule;
use crate::auth::Caller;

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown_rule",
        format!("no alert rule {id:?} (GET /v1/alerts/rules lists them)"),
    )
}

pub(crate) async fn list(State(st): State<Arc<AppState>>) -> Response {
    match st.alerts.list().await {
        Ok(all) => Json(json!({
            "rules": all.iter().map(|r| r.public()).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => object_error(e),
    }
}

pub(crate) async fn get(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match st.alerts.get(&id).await {
        Ok(Some(r)) => Json(r.public()).into_response(),
        Ok(None) => not_found(&id),
        Err(e) => object_error(e),
    }
}

pub(crate) async fn create(
    State(st): State<Arc<AppState>>,
    caller: Option<axum::Extension<Caller>>,
    body: Bytes,
) -> Response {
    let new: NewRule = match json_body(
        &body,
        "bad_rule",
        "a JSON alert rule: {\"name\", \"condition\" (kind device_offline, hex_metric or \
         pilot_coverage_drop, schemas/ALERTS.md), \"webhook\": {\"url\", \"secret\"}}",
    ) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let by = caller.map_or_else(
        || "anonymous".to_string(),
        |axum::Extension(c)| c.label().to_string(),
    );
    let now = hexpulse_common::time::now_ms();
    match st.alerts.create(new, &by, now, &st.pilots).await {
        Ok(r) => {
            tracing::info!(id = %r.id, name = %r.name, kind = r.condition.kind(), by = %by, "alert rule created");
            (StatusCode::CREATED, Json(r.public())).into_response()
        }
        Err(e) => object_error(e),
    }
}

pub(crate) async fn delete(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match st.alerts.delete(&id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(&id),
        Err(e) => object_error(e),
    }
}
