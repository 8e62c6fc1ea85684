//! Error answers: every one is the services' JSON error shape
//! (`hexpulse_common::http::error_body`: `{"error": {"code", "message", "retry_after_s"?}}`) with
//! its status.

use axum::http::{StatusCode, header};
use axum::response::Response;

use crate::objects::ObjectError;
use crate::params;
use crate::sql::SqlError;

/// A refused request or a failed query, already an HTTP answer.
pub type ApiResult<T> = Result<T, Response>;

pub(crate) fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    hexpulse_common::http::error_answer(status, code, message, None)
}

/// Every error answer in the documented JSON form: axum's own rejections (a path or query that does
/// not parse, a wrong method, a body of the wrong type) and the timeout layer answer plain text or
/// nothing; their text becomes the message.
pub(crate) async fn json_errors(resp: Response) -> Response {
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

/// A pilot's or an alert rule's refusal (400 or 409 with its code) or its store's failure (503,
/// retry in 5 s; logged).
pub(crate) fn object_error(e: ObjectError) -> Response {
    let (status, code, retry) = match &e {
        ObjectError::Invalid { code, .. } => (StatusCode::BAD_REQUEST, *code, None),
        ObjectError::Full { code, .. } => (StatusCode::CONFLICT, *code, None),
        ObjectError::Store(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            Some(5),
        ),
    };
    if retry.is_some() {
        tracing::warn!(error = %e, "pilot or alert rule store failed");
    }
    hexpulse_common::http::error_answer(status, code, e, retry)
}

pub(crate) fn sql_error(e: SqlError) -> Response {
    hexpulse_common::http::error_answer(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
        e.code,
        e.message,
        e.retry_after_s,
    )
}

/// A request body as JSON of type `T`, or a 400 `code` that says what the body must be (`shape`)
/// and what was wrong with it.
// The error is the answer itself, built once per bad request: boxing it would buy nothing.
#[allow(clippy::result_large_err)]
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    code: &str,
    shape: &str,
) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            code,
            format!("the body must be {shape}: {e}"),
        )
    })
}

pub(crate) fn bad_param(e: params::BadParam) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "bad_param",
        format!("{}: {}", e.param, e.message),
    )
}

pub(crate) fn too_many(n: usize, max: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_hexes",
        format!(
            "the answer has {n} hexes, more than {max}; ask for a smaller bbox or a coarser res"
        ),
    )
}
