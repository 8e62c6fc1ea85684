//! The rules every SQL door keeps: `POST /v1/sql` ([`crate::http`]), the PostgreSQL wire protocol
//! ([`crate::pg`]) and whatever door comes next call this one gate, and no door has a copy of them.
//!
//! - **Who:** a credential (an HTTP `Authorization` value, or a bare token such as a PostgreSQL
//!   password) is checked against the hashed tokens and the endpoint group ([`Gate::admit`]).
//!   Every request spends its caller's budget (per token, or per client address without one); a
//!   failed authentication spends the address's, so guessing tokens is as slow as the rate.
//! - **What:** read-only plans only, the private tables for the `raw` group alone, checked on the
//!   plan ([`crate::sql::plan`]).
//! - **How much:** at most `max_concurrent_queries` plans at once (the others wait up to
//!   `query_timeout`, then are refused as busy); every plan runs on the query runtime, apart from
//!   the doors' I/O, stops at `query_timeout` and at `max_rows`, and draws on the runtime's memory
//!   pool. A door that holds an answer before sending it also bounds its bytes
//!   ([`Answer::collect`]); a streaming door sends batches as they come.
//! - **Cancel:** dropping an [`Answer`] stops its plan at once and frees its slot: a client that
//!   goes away, a door's cancel request, or the deadline while the client is not reading.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{ParamValues, ScalarValue};
use futures::{Stream, StreamExt};
use hexpulse_common::ratelimit::{Keyed, retry_after_secs};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, Caller, Denied};
use crate::catalog::Catalog;
use crate::sql::{self, SqlError};

/// How a caller presents itself at a door.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// An HTTP `Authorization` header value (`Bearer <token>`), or none.
    Header(Option<&'a str>),
    /// A bare token: a PostgreSQL password, a Flight basic-auth password.
    Token(&'a str),
}

/// The limits a gate keeps (from `[query]`).
#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    pub max_concurrent_queries: usize,
    pub query_timeout: Duration,
    /// Requests per second and caller, for the refusal's message.
    pub rate_per_second: u32,
}

/// The one place of the SQL doors' rules.
pub struct Gate {
    pub catalog: Catalog,
    pub auth: Auth,
    limits: GateLimits,
    /// Runs query plans, off the runtimes that serve the doors.
    exec: tokio::runtime::Handle,
    slots: Arc<tokio::sync::Semaphore>,
    /// Plans running now (`/readyz`'s `running_queries`).
    running: Arc<AtomicUsize>,
    /// Requests per caller (token name, or `ip:<address>` without a token).
    pub per_client: Arc<Keyed<String>>,
}

/// What a statement takes and gives, without running it.
#[derive(Debug, Clone)]
pub struct Described {
    /// The types of `$1`, `$2`, ... as the plan infers them (`None`: not inferred).
    pub params: Vec<Option<DataType>>,
    pub schema: SchemaRef,
}

impl Gate {
    pub fn new(
        catalog: Catalog,
        auth: Auth,
        limits: GateLimits,
        exec: tokio::runtime::Handle,
        per_client: Arc<Keyed<String>>,
    ) -> Gate {
        Gate {
            catalog,
            auth,
            exec,
            slots: Arc::new(tokio::sync::Semaphore::new(
                limits.max_concurrent_queries.max(1),
            )),
            running: Default::default(),
            per_client,
            limits,
        }
    }

    /// Plans running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Spends one request of `key`'s budget, or says how long to wait.
    fn spend_key(&self, key: &String) -> Result<(), SqlError> {
        self.per_client.check(key).map_err(|wait| {
            SqlError::new(
                429,
                "rate_limited",
                format!(
                    "over {} requests/s for this caller; retry later",
                    self.limits.rate_per_second
                ),
            )
            .retry_after(retry_after_secs(wait))
        })
    }

    /// Who the caller is, checked against `group`, with one request spent: the token's budget,
    /// or the address's (`peer`, `ip:<address>`) for an anonymous caller and for any failed
    /// authentication. Refusals: 401 `unauthorized`, 403 `forbidden`, 429 `rate_limited`.
    pub fn admit(
        &self,
        credential: Credential<'_>,
        group: &str,
        peer: &str,
    ) -> Result<Caller, SqlError> {
        let checked = match credential {
            Credential::Header(h) => self.auth.check(h, group),
            Credential::Token(t) => self.auth.check_token(t, group),
        };
        let peer = peer.to_string();
        match checked {
            Ok(caller) => {
                self.spend(&caller, &peer)?;
                Ok(caller)
            }
            Err(Denied::Unauthenticated(why)) => {
                self.spend_key(&peer)?;
                Err(SqlError::new(401, "unauthorized", why))
            }
            Err(Denied::Forbidden { role, group }) => Err(SqlError::new(
                403,
                "forbidden",
                format!("role {role:?} may not use the {group} endpoints"),
            )),
        }
    }

    /// One more request of a caller admitted before (a query on an open PostgreSQL session).
    pub fn spend(&self, caller: &Caller, peer: &str) -> Result<(), SqlError> {
        match caller {
            Caller::Token { name, .. } => self.spend_key(name),
            Caller::Anonymous => self.spend_key(&peer.to_string()),
        }
    }

    /// Whether `caller`'s SQL may read the private tables.
    pub fn allows_raw(&self, caller: &Caller) -> bool {
        self.auth.allows(caller, "raw")
    }

    /// A slot of the concurrency bound, waited for up to `query_timeout`.
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, SqlError> {
        let wait = tokio::time::timeout(
            self.limits.query_timeout,
            self.slots.clone().acquire_owned(),
        )
        .await;
        match wait {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(SqlError::new(
                503,
                "busy",
                format!(
                    "{} queries are running and none finished within {}; retry later",
                    self.limits.max_concurrent_queries,
                    humantime::format_duration(self.limits.query_timeout)
                ),
            )),
        }
    }

    /// The parameters and the answer's schema of `sql`, planned as [`Gate::query`] would plan it
    /// (so refused the same way), in a slot on the query runtime.
    pub async fn describe(&self, sql: &str, allow_raw: bool) -> Result<Described, SqlError> {
        let slot = self.slot().await?;
        let ctx = self.catalog.sql_context(allow_raw);
        let sql = sql.to_string();
        let timeout = self.limits.query_timeout;
        let task = AbortOnDrop(self.exec.spawn(async move {
            let _slot = slot;
            let work = async {
                let plan = sql::plan(&ctx, &sql, allow_raw).await?;
                let types = plan.get_parameter_types().map_err(sql::classify)?;
                let params = sql::ordered_params(types)?;
                let schema = Arc::new(plan.schema().as_arrow().clone());
                Ok(Described { params, schema })
            };
            tokio::time::timeout(timeout, work)
                .await
                .unwrap_or_else(|_| Err(time_limit(timeout)))
        }));
        task.join().await?
    }

    /// Runs `sql` (with values for its `$n` parameters, if any, each cast to the type the plan
    /// infers for it) within the limits: the answer's schema once the plan has started, then its
    /// batches as they come. The plan is made anew against the newest catalog each time, so a
    /// statement prepared long ago still reads fresh data.
    pub async fn query(
        &self,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
        allow_raw: bool,
        max_rows: usize,
    ) -> Result<Answer, SqlError> {
        let slot = self.slot().await?;
        let ctx = self.catalog.sql_context(allow_raw);
        let sql = sql.to_string();
        let timeout = self.limits.query_timeout;
        let running = Running::enter(self.running.clone());
        let (tx, rx) = mpsc::channel::<RecordBatch>(2);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let end: Arc<OnceLock<Result<(), SqlError>>> = Arc::default();
        let task_end = end.clone();
        let task = AbortOnDrop(self.exec.spawn(async move {
            let (_slot, _running) = (slot, running);
            let deadline = Instant::now() + timeout;
            let start = async {
                let mut plan = sql::plan(&ctx, &sql, allow_raw).await?;
                if let Some(values) = params {
                    let types = plan.get_parameter_types().map_err(sql::classify)?;
                    let values = bind(values, &sql::ordered_params(types)?)?;
                    plan = plan
                        .replace_params_with_values(&values)
                        .map_err(sql::classify)?;
                }
                let physical = ctx
                    .state()
                    .create_physical_plan(&plan)
                    .await
                    .map_err(sql::classify)?;
                let schema = physical.schema();
                let physical = crate::deadline::wrap(physical, timeout).map_err(sql::classify)?;
                let stream = datafusion::physical_plan::execute_stream(physical, ctx.task_ctx())
                    .map_err(sql::classify)?;
                Ok::<_, SqlError>((schema, stream))
            };
            let (schema, mut stream) = match tokio::time::timeout_at(deadline, start).await {
                Ok(Ok(started)) => started,
                Ok(Err(e)) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
                Err(_) => {
                    let _ = started_tx.send(Err(time_limit(timeout)));
                    return;
                }
            };
            if started_tx.send(Ok(schema)).is_err() {
                return;
            }
            let mut rows = 0usize;
            let result = loop {
                let next = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => break Err(time_limit(timeout)),
                };
                let batch = match next {
                    None => break Ok(()),
                    Some(Err(e)) => break Err(sql::classify(e)),
                    Some(Ok(b)) => b,
                };
                rows += batch.num_rows();
                if rows > max_rows {
                    break Err(SqlError::new(
                        413,
                        "row_limit",
                        format!(
                            "the answer has more than {max_rows} rows; add a LIMIT or aggregate"
                        ),
                    ));
                }
                // A client that does not read holds its slot until the deadline, no longer.
                match tokio::time::timeout_at(deadline, tx.send(batch)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Ok(()),
                    Err(_) => break Err(time_limit(timeout)),
                }
            };
            let _ = task_end.set(result);
        }));
        match started_rx.await {
            Ok(Ok(schema)) => Ok(Answer {
                schema,
                rx,
                end,
                done: false,
                _task: task,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(task.join().await.err().unwrap_or_else(|| {
                SqlError::new(500, "internal", "the query task ended without an answer")
            })),
        }
    }
}

/// `values` for parameters of `types` (as the plan infers them): one each, cast where the plan
/// knows the type (a door may give text, or a wider type, for any parameter).
fn bind(values: Vec<ScalarValue>, types: &[Option<DataType>]) -> Result<ParamValues, SqlError> {
    if values.len() != types.len() {
        return Err(SqlError::new(
            400,
            "bad_param",
            format!(
                "the statement has {} parameters, and {} values were given",
                types.len(),
                values.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(values.len());
    for (i, (v, t)) in values.into_iter().zip(types).enumerate() {
        let v = match t {
            Some(t) if v.data_type() != *t => v.cast_to(t).map_err(|e| {
                SqlError::new(400, "bad_param", format!("parameter ${}: {e}", i + 1))
            })?,
            _ => v,
        };
        out.push(v.into());
    }
    Ok(ParamValues::List(out))
}

fn time_limit(limit: Duration) -> SqlError {
    SqlError::new(
        408,
        "time_limit",
        crate::deadline::TimeLimit(limit).to_string(),
    )
}

/// A running query's answer: its schema, then its batches (an error ends it). Dropping it stops
/// the plan and frees its slot.
pub struct Answer {
    pub schema: SchemaRef,
    rx: mpsc::Receiver<RecordBatch>,
    end: Arc<OnceLock<Result<(), SqlError>>>,
    done: bool,
    _task: AbortOnDrop<()>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("schema", &self.schema)
            .finish()
    }
}

impl Stream for Answer {
    type Item = Result<RecordBatch, SqlError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(b))),
            Poll::Pending => Poll::Pending,
            // The producer has ended: with its result, or (aborted, panicked) without one.
            Poll::Ready(None) => {
                self.done = true;
                match self.end.get() {
                    Some(Ok(())) => Poll::Ready(None),
                    Some(Err(e)) => Poll::Ready(Some(Err(e.clone()))),
                    None => Poll::Ready(Some(Err(SqlError::new(
                        500,
                        "internal",
                        "the query task ended without its result",
                    )))),
                }
            }
        }
    }
}

impl Answer {
    /// The whole answer in memory, refused past `max_bytes` of batches (a door that encodes the
    /// answer before sending it: HTTP).
    pub async fn collect(
        mut self,
        max_bytes: usize,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), SqlError> {
        let mut batches = Vec::new();
        let mut bytes = 0u64;
        while let Some(b) = self.next().await {
            let b = b?;
            bytes += crate::bounded::batch_bytes(&b);
            if bytes > max_bytes as u64 {
                return Err(SqlError::new(
                    413,
                    "answer_limit",
                    format!(
                        "the answer is larger than {max_bytes} bytes; select fewer or shorter \
                         columns, add a LIMIT or aggregate"
                    ),
                ));
            }
            batches.push(b);
        }
        Ok((self.schema.clone(), batches))
    }

    /// This answer, ended by a `cancelled` error (499) as soon as `cancel` fires (a door's cancel
    /// request); the plan stops then, as the answer is dropped.
    pub fn until(
        self,
        cancel: CancellationToken,
    ) -> impl Stream<Item = Result<RecordBatch, SqlError>> + Send + 'static {
        futures::stream::unfold(Some((self, cancel)), |state| async move {
            let (mut answer, cancel) = state?;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Some((Err(cancelled()), None)),
                next = answer.next() => next.map(|item| (item, Some((answer, cancel)))),
            }
        })
    }
}

/// The error of a query cancelled at the client's request.
pub fn cancelled() -> SqlError {
    SqlError::new(
        499,
        "cancelled",
        "the query was cancelled at the client's request",
    )
}

/// Counts a running plan while it lives.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn enter(count: Arc<AtomicUsize>) -> Running {
        count.fetch_add(1, Ordering::Relaxed);
        Running(count)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A task that is aborted when its handle is dropped before it ended.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, SqlError> {
        (&mut self.0)
            .await
            .map_err(|e| SqlError::new(500, "internal", format!("the query task failed: {e}")))
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The runtime that executes query plans, on its own threads; it stops with `shutdown`.
pub fn query_runtime(
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
