//! The service's shared state, and the runtime its query plans run on (apart from the one serving
//! HTTP), at most `max_concurrent_queries` at once.

use std::sync::Arc;

use axum::response::Response;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use hexpulse_common::ratelimit::Keyed;
use tokio_util::sync::CancellationToken;

use super::error::sql_error;
use crate::auth::Auth;
use crate::catalog::Catalog;
use crate::config::QueryConfig;
use crate::sql::{self, Limits, SqlError};

pub(crate) struct AppState {
    pub(crate) cfg: QueryConfig,
    pub(crate) catalog: Catalog,
    pub(crate) auth: Auth,
    /// Runs query plans, off the runtime that serves HTTP.
    pub(crate) exec: tokio::runtime::Handle,
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    /// Plans running now (`/readyz`'s `running_queries`).
    pub(crate) running: Arc<std::sync::atomic::AtomicUsize>,
    /// k of the road k-anonymity rule.
    pub(crate) road_min_devices: u64,
    /// The rules' allowed lateness (an ended epoch is sealable once the watermark passes end + it).
    pub(crate) lateness_ms: i64,
    /// Requests per caller (token name, or `ip:<address>` without a token).
    pub(crate) per_client: Arc<Keyed<String>>,
    /// Readiness (`/readyz`): a background task that died takes it down.
    pub(crate) health: hexpulse_common::health::Health,
}

impl AppState {
    /// Runs `sql` on the query runtime within the limits and the concurrency bound.
    ///
    /// The slot belongs to the plan, not to the request: it is released when the plan's task ends.
    /// A request that goes away (the client closed the connection, or the request timed out)
    /// aborts the task, and with it the plan.
    pub(crate) async fn run(
        &self,
        sql: String,
        allow_raw: bool,
        max_rows: usize,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), SqlError> {
        let wait =
            tokio::time::timeout(self.cfg.query_timeout, self.slots.clone().acquire_owned()).await;
        let Ok(Ok(slot)) = wait else {
            return Err(SqlError {
                status: 503,
                code: "busy",
                message: format!(
                    "{} queries are running and none finished within {}; retry later",
                    self.cfg.max_concurrent_queries,
                    humantime::format_duration(self.cfg.query_timeout)
                ),
            });
        };
        let ctx = self.catalog.sql_context(allow_raw);
        let limits = Limits {
            max_rows,
            max_bytes: self.cfg.max_answer_bytes,
            timeout: self.cfg.query_timeout,
        };
        let running = Running::enter(self.running.clone());
        let task = AbortOnDrop(self.exec.spawn(async move {
            let (_slot, _running) = (slot, running);
            sql::run(&ctx, &sql, limits, allow_raw).await
        }));
        match task.join().await {
            Ok(r) => r,
            Err(e) => Err(SqlError {
                status: 500,
                code: "internal",
                message: format!("the query task failed: {e}"),
            }),
        }
    }

    /// A query the service itself composed (trusted text): batches, or an error answer.
    pub(crate) async fn internal_query(&self, sql: String) -> Result<Vec<RecordBatch>, Response> {
        let max = self
            .cfg
            .max_features
            .saturating_mul(64)
            .max(self.cfg.max_rows);
        match self.run(sql, true, max).await {
            Ok((_, b)) => Ok(b),
            Err(e) => {
                if e.status >= 500 || e.code == "sql_plan" || e.code == "sql_error" {
                    tracing::warn!(code = e.code, message = %e.message, "internal query failed");
                }
                Err(sql_error(e))
            }
        }
    }
}

/// Counts a running plan while it lives.
struct Running(Arc<std::sync::atomic::AtomicUsize>);

impl Running {
    fn enter(count: Arc<std::sync::atomic::AtomicUsize>) -> Running {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Running(count)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A task that is aborted when its handle is dropped before it ended.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The runtime that executes query plans, on its own threads; it stops with `shutdown`.
pub(crate) fn query_runtime(
    threads: usize,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::runtime::Handle> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        threads
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("hexpulse-query-exec")
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("hexpulse-query-rt".into())
        .spawn(move || {
            rt.block_on(shutdown.cancelled());
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        })?;
    Ok(handle)
}
