//! One health and metrics surface for every role: `/healthz` (the process answers), `/readyz`
//! (every readiness condition holds) and `/metrics` (the process's Prometheus recorder).
//!
//! A role holds a [`Health`] and marks conditions failing or holding as it learns of them: a
//! background task that died ([`crate::tasks::Tasks`]), a sealing round that failed, a broker that
//! does not answer. A role may add a report of its own (its details on `/readyz`, and conditions
//! it computes when asked).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::{Map, Value};

/// What a role's own report adds to `/readyz`: details (top-level fields of the answer) and
/// conditions that fail now, with their reasons.
#[derive(Debug, Default)]
pub struct Report {
    /// Top-level fields of the `/readyz` answer.
    pub details: Map<String, Value>,
    /// Conditions failing now: name and reason. Any makes the role unready.
    pub failing: Vec<(String, String)>,
}

type ReportFn = Box<dyn Fn() -> Report + Send + Sync>;

#[derive(Default)]
struct Inner {
    failing: Mutex<BTreeMap<String, String>>,
    report: OnceLock<ReportFn>,
}

/// A role's readiness: the conditions failing now, by name. Clones share one state.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("failing", &self.failing())
            .finish()
    }
}

impl Health {
    /// A role with no failing condition and no report of its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the role's own report, asked on every `/readyz`. Only the first call counts.
    pub fn with_report(self, report: impl Fn() -> Report + Send + Sync + 'static) -> Self {
        let _ = self.inner.report.set(Box::new(report));
        self
    }

    /// Marks `condition` failing, for `reason`, until [`Health::clear`].
    pub fn fail(&self, condition: &str, reason: impl Into<String>) {
        self.lock().insert(condition.to_owned(), reason.into());
    }

    /// Marks `condition` holding again.
    pub fn clear(&self, condition: &str) {
        self.lock().remove(condition);
    }

    /// The conditions failing now (marked and reported), by name.
    pub fn failing(&self) -> BTreeMap<String, String> {
        self.now().0
    }

    /// The conditions failing now, and the report's details.
    fn now(&self) -> (BTreeMap<String, String>, Map<String, Value>) {
        let mut failing = self.lock().clone();
        let mut details = Map::new();
        if let Some(report) = self.inner.report.get() {
            let r = report();
            details = r.details;
            failing.extend(r.failing);
        }
        (failing, details)
    }

    /// Whether no condition fails.
    pub fn is_ready(&self) -> bool {
        self.failing().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // A panic while holding the lock leaves a map that is still whole: keep using it.
        self.inner
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `/readyz` answer: 200 with the report's details, or 503 with `failing` too.
    pub fn answer(&self) -> Response {
        let (failing, mut body) = self.now();
        let status = if failing.is_empty() {
            StatusCode::OK
        } else {
            let failing: Map<String, Value> = failing
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            body.insert("failing".into(), Value::Object(failing));
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, axum::Json(Value::Object(body))).into_response()
    }
}

/// `/healthz` and `/readyz` of `health`, on a router of any state.
pub fn routes<S: Clone + Send + Sync + 'static>(health: &Health) -> Router<S> {
    let health = health.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || std::future::ready(health.answer())))
}

/// `/metrics`: the process's Prometheus recorder ([`crate::telemetry::metrics_handle`]).
pub fn metrics<S: Clone + Send + Sync + 'static>() -> MethodRouter<S> {
    let handle = crate::telemetry::metrics_handle();
    get(move || std::future::ready(handle.render()))
}

/// A side listener's router: [`routes`] and `/metrics`.
pub fn side_router(health: &Health) -> Router {
    routes(health).route("/metrics", metrics())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn readyz(h: &Health) -> (StatusCode, Value) {
        let r = h.answer();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("json"))
    }

    #[tokio::test]
    async fn conditions_and_the_report_decide_readiness() {
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let seen = up.clone();
        let h = Health::new().with_report(move || {
            let up = seen.load(std::sync::atomic::Ordering::Relaxed);
            let mut r = Report::default();
            r.details.insert("broker".into(), Value::Bool(up));
            if !up {
                r.failing.push(("broker".into(), "no answer".into()));
            }
            r
        });
        assert_eq!(
            readyz(&h).await,
            (StatusCode::OK, serde_json::json!({"broker": true}))
        );

        h.fail("sealing", "the last round failed");
        let (status, body) = readyz(&h).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["failing"]["sealing"], "the last round failed");

        up.store(false, std::sync::atomic::Ordering::Relaxed);
        h.clear("sealing");
        let (status, body) = readyz(&h).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            serde_json::json!({"broker": false, "failing": {"broker": "no answer"}})
        );
        assert!(!h.clone().is_ready());

        up.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(h.is_ready());
    }
}
