//! Side listeners (health, metrics, admin): bind, serve in the background until shutdown.

use std::net::SocketAddr;

use crate::tasks::Tasks;

/// Side listeners answer small requests: a client gets this long to send its headers.
const SIDE_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Side listeners serve a few scrapers and probes.
const SIDE_MAX_CONNECTIONS: usize = 256;
/// Open requests get this long to finish at shutdown.
const SIDE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Binds `addr` and serves `app` as the task `name` of `tasks` until their shutdown. Returns the
/// bound address (port 0 picks a free one); a bind failure is returned, not logged.
pub async fn serve_in_background(
    addr: SocketAddr,
    app: axum::Router,
    name: &str,
    tasks: &mut Tasks,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let stop = tasks.stop().clone();
    tasks.spawn(
        name,
        crate::serve::serve(
            listener,
            app,
            None,
            crate::serve::ConnLimits {
                header_timeout: SIDE_HEADER_TIMEOUT,
                max_connections: SIDE_MAX_CONNECTIONS,
            },
            stop,
            SIDE_GRACE,
        ),
    );
    Ok(bound)
}

/// The one error shape of every service: `{"error": {"code", "message", "retry_after_s"?}}`.
/// Answers may add fields beside `error` (ingest's per-item `rejected`).
pub fn error_body(code: &str, message: &str, retry_after_s: Option<u32>) -> serde_json::Value {
    let mut error = serde_json::json!({"code": code, "message": message});
    if let Some(s) = retry_after_s {
        error["retry_after_s"] = s.into();
    }
    serde_json::json!({ "error": error })
}

/// An error answer: `status`, [`error_body`], and with `retry_after_s` a `Retry-After` header that
/// says the same.
pub fn error_answer(
    status: axum::http::StatusCode,
    code: &str,
    message: impl std::fmt::Display,
    retry_after_s: Option<u32>,
) -> axum::response::Response {
    json_answer(
        status,
        error_body(code, &message.to_string(), retry_after_s),
        retry_after_s,
    )
}

/// `body` as JSON with `status`, and a `Retry-After` header of `retry_after_s`.
pub fn json_answer(
    status: axum::http::StatusCode,
    body: serde_json::Value,
    retry_after_s: Option<u32>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut r = (status, axum::Json(body)).into_response();
    if let Some(s) = retry_after_s {
        r.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, s.into());
    }
    r
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn an_error_answer_says_its_retry_delay_in_the_header_and_the_body() {
        let r = super::error_answer(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "slow down",
            Some(3),
        );
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "3");
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "rate_limited", "message": "slow down", "retry_after_s": 3}})
        );
        let plain = super::error_body("not_found", "no such thing", None);
        assert_eq!(
            plain,
            serde_json::json!({"error": {"code": "not_found", "message": "no such thing"}})
        );
    }
}
