//! The service's shared state: the SQL doors' gate ([`crate::gate`]) and what only HTTP needs.

use std::sync::Arc;

use axum::response::Response;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::error::sql_error;
use crate::config::QueryConfig;
use crate::gate::Gate;
use crate::sql::SqlError;

pub(crate) struct AppState {
    pub(crate) cfg: QueryConfig,
    /// Auth, rates, the catalog and the query runtime: the rules every SQL door shares.
    pub(crate) gate: Arc<Gate>,
    /// k of the road k-anonymity rule.
    pub(crate) road_min_devices: u64,
    /// The rules' allowed lateness (an ended epoch is sealable once the watermark passes end + it).
    pub(crate) lateness_ms: i64,
    /// The device status cache.
    pub(crate) status: Arc<crate::status::StatusCache>,
    /// The pilots' store.
    pub(crate) pilots: Arc<crate::pilots::Pilots>,
    /// The alert rules' store.
    pub(crate) alerts: Arc<crate::alerts::Rules>,
    /// Readiness (`/readyz`): a background task that died takes it down.
    pub(crate) health: hexpulse_common::health::Health,
}

impl AppState {
    /// Runs `sql` through the gate, the whole answer in memory (bounded by `max_answer_bytes`).
    ///
    /// A request that goes away (the client closed the connection, or the request timed out)
    /// drops the answer, and with it the plan.
    pub(crate) async fn run(
        &self,
        sql: String,
        allow_raw: bool,
        max_rows: usize,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), SqlError> {
        let answer = self.gate.query(&sql, None, allow_raw, max_rows).await?;
        answer.collect(self.cfg.max_answer_bytes).await
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
