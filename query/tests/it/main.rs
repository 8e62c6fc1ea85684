//! Query service tests against a lake the processors wrote from broker traffic.

mod alerts;
mod api;
mod flight;
mod limits;
mod live;
mod pg;
mod pilots;
mod preagg;
mod readers;
mod slt;
mod status;
mod tls;
use hexpulse_testkit::processing as support;

/// `POST /v1/sql` with `q`, answered as `accept`.
pub(crate) async fn sql(base: &str, q: &str, accept: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/sql"))
        .header("accept", accept)
        .body(q.to_string())
        .send()
        .await
        .unwrap()
}

/// `POST /v1/sql` with `q`: the status and the JSON answer.
pub(crate) async fn sql_json(base: &str, q: &str) -> (u16, serde_json::Value) {
    let r = sql(base, q, "application/json").await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}
