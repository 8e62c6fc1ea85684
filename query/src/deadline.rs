//! The time limit of a query, enforced inside its plan.
//!
//! A `tokio::time::timeout` around a plan fires only when the plan's task yields, and a CPU-bound
//! plan (a join that filters billions of pairs, an aggregate over a generated series) may not yield
//! for as long as it runs. So every operator of the physical plan gets a [`DeadlineExec`] above it,
//! whose stream checks the deadline each time a batch is asked for: the plan stops within one
//! batch of one operator past its deadline, whatever it computes.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::Stream;

/// The error of a plan stopped at its deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the query ran longer than {} and was cancelled", humantime::format_duration(*.0))]
pub struct TimeLimit(pub Duration);

/// Puts a deadline `limit` from now above every operator of `plan`.
pub fn wrap(plan: Arc<dyn ExecutionPlan>, limit: Duration) -> Result<Arc<dyn ExecutionPlan>> {
    let deadline = Instant::now() + limit;
    Ok(plan
        .transform_up(|node| {
            Ok(Transformed::yes(Arc::new(DeadlineExec {
                input: node,
                deadline,
                limit,
            }) as Arc<dyn ExecutionPlan>))
        })?
        .data)
}

/// An operator's output, cut at the deadline. It is transparent to downcasts.
#[derive(Debug)]
pub struct DeadlineExec {
    input: Arc<dyn ExecutionPlan>,
    deadline: Instant,
    limit: Duration,
}

impl DisplayAs for DeadlineExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DeadlineExec")
    }
}

impl ExecutionPlan for DeadlineExec {
    fn name(&self) -> &str {
        "DeadlineExec"
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.input.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(input) = children.pop().filter(|_| children.is_empty()) else {
            return Err(DataFusionError::Internal(
                "DeadlineExec has one child".into(),
            ));
        };
        Ok(Arc::new(DeadlineExec {
            input,
            deadline: self.deadline,
            limit: self.limit,
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Ok(Box::pin(DeadlineStream {
            inner: self.input.execute(partition, context)?,
            deadline: self.deadline,
            limit: self.limit,
            expired: false,
        }))
    }
}

struct DeadlineStream {
    inner: SendableRecordBatchStream,
    deadline: Instant,
    limit: Duration,
    expired: bool,
}

impl Stream for DeadlineStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if Instant::now() >= self.deadline {
            self.expired = true;
            return Poll::Ready(Some(Err(DataFusionError::External(Box::new(TimeLimit(
                self.limit,
            ))))));
        }
        self.inner.as_mut().poll_next(cx)
    }
}

impl RecordBatchStream for DeadlineStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

/// Whether `e` is (or wraps) a [`TimeLimit`].
pub fn is_time_limit(e: &DataFusionError) -> bool {
    match e.find_root() {
        DataFusionError::External(inner) => inner.downcast_ref::<TimeLimit>().is_some(),
        _ => false,
    }
}
