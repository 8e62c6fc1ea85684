//! Answering sensor aggregates from the sealed epochs' `sensor_hex_hourly` rows.
//!
//! A sealed epoch never changes (processors reject readings whose event time falls in one, see
//! `processors::validate`), and its `sensor_hex_hourly` table holds, per cell, hour and metric, the
//! count, mean, min and max of exactly the epoch's sensor rows. So an aggregate over `sensor` that
//! only groups and filters by `metric` and only asks for `count`, `sum`, `avg`, `min` and `max` of
//! `value` can read the sealed time from those rows (about a tenth as many) and scan raw rows only
//! outside the sealed epochs:
//!
//! ```text
//! Aggregate(g; count(*), avg(value), max(value))          Projection(g, coalesce(Σn, 0), Σs / Σn, max(mx))
//!   TableScan(sensor, filters on metric)        ──►         Aggregate(g; Σn, Σs, min(mn), max(mx))
//!                                                             Union
//!                                                               sensor_hex_hourly (filters): count, mean·count, min, max
//!                                                               Aggregate(g; count, sum, min, max)
//!                                                                 sensor where event_time outside the sealed epochs
//! ```
//!
//! Anything else (another column in a filter or a group, DISTINCT, an aggregate filter, another
//! function) is left to the raw scan. `sum` and `avg` add the same values in another order, so they
//! may differ from a raw scan in the last bits; counts, minima and maxima are exact.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result};
use datafusion::datasource::{TableProvider, provider_as_source};
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, TableScan, cast, col, lit,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::prelude::coalesce;

/// The raw table, and the columns an aggregate may group or filter by to be rewritten.
const RAW: &str = "sensor";
/// The sealed epochs' hourly sensor aggregates (an epoch table).
pub const HOURLY: &str = "sensor_hex_hourly";
const KEYS: [&str; 1] = ["metric"];
const VALUE: &str = "value";

/// The rewrite rule of one catalog snapshot: its `sensor_hex_hourly` and the sealed time ranges.
#[derive(Debug)]
pub struct PreAggregated {
    hourly: Arc<dyn TableProvider>,
    /// Sealed epochs' `[start, end)` in ms, adjacent ones merged, ascending.
    sealed: Vec<(i64, i64)>,
}

/// Merges `[start, end)` ranges that touch or overlap.
pub fn merge_ranges(mut ranges: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    ranges.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

impl PreAggregated {
    /// `None` when nothing is sealed (there is nothing to read pre-aggregated).
    pub fn new(hourly: Arc<dyn TableProvider>, sealed: Vec<(i64, i64)>) -> Option<PreAggregated> {
        let sealed = merge_ranges(sealed);
        (!sealed.is_empty()).then_some(PreAggregated { hourly, sealed })
    }

    /// `event_time` outside every sealed range.
    fn unsealed(&self) -> Expr {
        let t = || col(Column::new(Some(RAW), "event_time"));
        let ts = |ms: i64| {
            Expr::Literal(
                datafusion::scalar::ScalarValue::TimestampMillisecond(Some(ms), Some("UTC".into())),
                None,
            )
        };
        self.sealed
            .iter()
            .map(|&(s, e)| t().lt(ts(s)).or(t().gt_eq(ts(e))))
            .reduce(Expr::and)
            .expect("at least one sealed range")
    }
}

/// What the rewrite needs from one aggregate expression of the original plan.
#[derive(Clone, Copy)]
enum Want {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

fn want(e: &Expr) -> Option<Want> {
    let Expr::AggregateFunction(AggregateFunction { func, params }) = e.clone().unalias() else {
        return None;
    };
    if params.distinct
        || params.filter.is_some()
        || !params.order_by.is_empty()
        || params.args.len() != 1
    {
        return None;
    }
    let on_value = matches!(&params.args[0], Expr::Column(c) if c.name == VALUE);
    let literal = matches!(&params.args[0], Expr::Literal(v, _) if !v.is_null());
    match func.name() {
        // `value` is never NULL, so count(value) = count(*).
        "count" if on_value || literal => Some(Want::Count),
        "sum" if on_value => Some(Want::Sum),
        "avg" if on_value => Some(Want::Avg),
        "min" if on_value => Some(Want::Min),
        "max" if on_value => Some(Want::Max),
        _ => None,
    }
}

/// Only the key columns of the raw table, evaluated the same for every row of a group: no
/// subquery, no volatile function (`random()` per hourly row is not `random()` per reading).
fn keys_only(e: &Expr) -> bool {
    let odd = e
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
            ))
        })
        .unwrap_or(true);
    !odd && !e.is_volatile()
        && e.column_refs()
            .iter()
            .all(|c| KEYS.contains(&c.name.as_str()))
}

/// The same expression over the pre-aggregated table's columns.
fn on_hourly(e: Expr) -> Result<Expr> {
    e.transform(|e| {
        Ok(match e {
            Expr::Column(c) => Transformed::yes(col(Column::new(Some(HOURLY), c.name))),
            other => Transformed::no(other),
        })
    })
    .map(|t| t.data)
}

impl OptimizerRule for PreAggregated {
    fn name(&self) -> &str {
        "hexpulse_sensor_pre_aggregated"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(agg) = &plan else {
            return Ok(Transformed::no(plan));
        };
        match self.try_rewrite(agg)? {
            Some(p) => Ok(Transformed::yes(p)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

impl PreAggregated {
    fn try_rewrite(&self, agg: &Aggregate) -> Result<Option<LogicalPlan>> {
        // Aggregate → (Filter | column-only Projection)* → TableScan(sensor).
        let mut filters: Vec<Expr> = vec![];
        let mut node = agg.input.as_ref();
        let scan: &TableScan = loop {
            match node {
                LogicalPlan::TableScan(s) => break s,
                LogicalPlan::Filter(f) => {
                    filters.push(f.predicate.clone());
                    node = f.input.as_ref();
                }
                LogicalPlan::Projection(p)
                    if p.expr.iter().all(|e| matches!(e, Expr::Column(_))) =>
                {
                    node = p.input.as_ref();
                }
                _ => return Ok(None),
            }
        };
        if scan.table_name.table() != RAW || scan.fetch.is_some() {
            return Ok(None);
        }
        // The key columns must have the same types in both tables (filters are reused as planned).
        let (raw_schema, pre_schema) = (scan.source.schema(), self.hourly.schema());
        for k in KEYS {
            let same = match (raw_schema.field_with_name(k), pre_schema.field_with_name(k)) {
                (Ok(a), Ok(b)) => a.data_type() == b.data_type(),
                _ => false,
            };
            if !same {
                return Ok(None);
            }
        }
        // The scan's own filters (pushed down) repeat or add to the Filter's.
        for f in &scan.filters {
            if !filters.contains(f) {
                filters.push(f.clone());
            }
        }
        let groups = &agg.group_expr;
        let groups_ok = groups
            .iter()
            .all(|g| matches!(g, Expr::Column(c) if KEYS.contains(&c.name.as_str())));
        if !groups_ok || !filters.iter().all(keys_only) {
            return Ok(None);
        }
        let Some(wants) = agg.aggr_expr.iter().map(want).collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        let names: Vec<String> = (0..groups.len()).map(|i| format!("g{i}")).collect();

        // Sealed time from the hourly rows.
        let mut pre =
            LogicalPlanBuilder::scan(HOURLY, provider_as_source(self.hourly.clone()), None)?;
        if let Some(f) = filters.iter().cloned().reduce(Expr::and) {
            pre = pre.filter(on_hourly(f)?)?;
        }
        let hourly = |name: &str| col(Column::new(Some(HOURLY), name));
        let mut pre_cols: Vec<Expr> = groups
            .iter()
            .zip(&names)
            .map(|(g, n)| Ok(on_hourly(g.clone())?.alias(n)))
            .collect::<Result<_>>()?;
        pre_cols.extend([
            cast(hourly("count"), DataType::Int64).alias("n"),
            (hourly("mean") * cast(hourly("count"), DataType::Float64)).alias("s"),
            hourly("min").alias("mn"),
            hourly("max").alias("mx"),
        ]);
        let pre = pre.project(pre_cols)?.build()?;

        // The rest from raw rows outside the sealed ranges.
        let raw_filter = filters
            .into_iter()
            .fold(self.unsealed(), |acc, f| acc.and(f));
        let value = || col(Column::new(Some(RAW), VALUE));
        let raw = LogicalPlanBuilder::scan(RAW, scan.source.clone(), None)?
            .filter(raw_filter)?
            .aggregate(
                groups.clone(),
                vec![
                    count(lit(1i64)).alias("n"),
                    sum(value()).alias("s"),
                    min(value()).alias("mn"),
                    max(value()).alias("mx"),
                ],
            )?;
        let mut raw_cols: Vec<Expr> = groups
            .iter()
            .zip(&names)
            .map(|(g, n)| g.clone().alias(n))
            .collect();
        raw_cols.extend(["n", "s", "mn", "mx"].map(|c| col(c).alias(c)));
        let raw = raw.project(raw_cols)?.build()?;

        let merged = LogicalPlanBuilder::from(pre).union(raw)?.aggregate(
            names.iter().map(|n| col(n.as_str())),
            vec![
                sum(col("n")).alias("n"),
                sum(col("s")).alias("s"),
                min(col("mn")).alias("mn"),
                max(col("mx")).alias("mx"),
            ],
        )?;
        // The original aggregate's schema: the same qualifiers, names and types, in order.
        let out = agg.schema.as_ref();
        let mut exprs = Vec::with_capacity(out.fields().len());
        for (i, n) in names.iter().enumerate() {
            let (q, f) = out.qualified_field(i);
            exprs.push(
                cast(col(n.as_str()), f.data_type().clone()).alias_qualified(q.cloned(), f.name()),
            );
        }
        for (j, w) in wants.iter().enumerate() {
            let (q, f) = out.qualified_field(groups.len() + j);
            let e = match w {
                Want::Count => coalesce(vec![col("n"), lit(0i64)]),
                Want::Sum => col("s"),
                Want::Avg => col("s") / cast(col("n"), DataType::Float64),
                Want::Min => col("mn"),
                Want::Max => col("mx"),
            };
            exprs.push(cast(e, f.data_type().clone()).alias_qualified(q.cloned(), f.name()));
        }
        Ok(Some(merged.project(exprs)?.build()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::TimestampMillisecondArray;
    use datafusion::arrow::array::{Array, Float64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    const HOUR: i64 = hexpulse_lake::HOUR_MS;
    /// Sealed: the first two days; raw rows run into a third.
    const SEALED: [(i64, i64); 2] = [(0, 24 * HOUR), (24 * HOUR, 48 * HOUR)];

    fn raw_batch() -> RecordBatch {
        let metrics = ["pm2_5", "noise_db", "humidity_pct"];
        let (mut t, mut m, mut v, mut d) = (vec![], vec![], vec![], vec![]);
        for i in 0..6_000i64 {
            t.push(i * 43_000 % (60 * HOUR));
            m.push(metrics[(i % 3) as usize]);
            v.push(((i * 7919) % 1000) as f64 / 7.0 - 20.0);
            d.push(format!("dev{}", i % 17));
        }
        let schema = Schema::new(vec![
            Field::new(
                "event_time",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("device_key", DataType::Utf8, false),
            Field::new("metric", DataType::Utf8, false),
            Field::new("value", DataType::Float64, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(TimestampMillisecondArray::from(t).with_timezone("UTC")),
                Arc::new(StringArray::from(d)),
                Arc::new(StringArray::from(m)),
                Arc::new(Float64Array::from(v)),
            ],
        )
        .unwrap()
    }

    /// A context with `sensor` and `sensor_hex_hourly` (the sealed rows' hourly aggregates), with
    /// or without the rule.
    async fn context(rule: bool) -> SessionContext {
        let ctx = SessionContext::new();
        let raw = raw_batch();
        ctx.register_table(
            RAW,
            Arc::new(MemTable::try_new(raw.schema(), vec![vec![raw]]).unwrap()),
        )
        .unwrap();
        let hourly = ctx
            .sql(&format!(
                "SELECT CAST(1 AS BIGINT) AS epoch, date_trunc('hour', event_time) AS hour, metric, \
                 CAST(count(*) AS BIGINT UNSIGNED) AS count, avg(value) AS mean, min(value) AS min, \
                 max(value) AS max FROM sensor WHERE CAST(event_time AS BIGINT) < {} GROUP BY 2, 3",
                SEALED[1].1
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let provider: Arc<dyn TableProvider> =
            Arc::new(MemTable::try_new(hourly[0].schema(), vec![hourly]).unwrap());
        ctx.register_table(HOURLY, provider.clone()).unwrap();
        if rule {
            let r = PreAggregated::new(provider, SEALED.to_vec()).unwrap();
            ctx.add_optimizer_rule(Arc::new(r));
        }
        ctx
    }

    async fn answer(ctx: &SessionContext, sql: &str) -> (Vec<RecordBatch>, String) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = format!(
            "{}",
            df.clone().into_optimized_plan().unwrap().display_indent()
        );
        (df.collect().await.unwrap(), plan)
    }

    /// Every value as text, floats rounded to 9 significant digits (sums add in another order).
    fn cells(batches: &[RecordBatch]) -> Vec<String> {
        let mut out = vec![];
        for b in batches {
            for c in b.columns() {
                for i in 0..c.len() {
                    out.push(match c.as_any().downcast_ref::<Float64Array>() {
                        Some(f) if f.is_valid(i) => format!("{:.9e}", f.value(i)),
                        _ => datafusion::arrow::util::display::array_value_to_string(c, i).unwrap(),
                    });
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn sealed_time_is_read_from_hourly_rows_with_the_same_answers() {
        let (with, without) = (context(true).await, context(false).await);
        for sql in [
            "SELECT metric, count(*) AS n, avg(value) AS mean, min(value), max(value) AS max, sum(value) \
             FROM sensor GROUP BY metric ORDER BY metric",
            "SELECT count(*), count(value), max(value) FROM sensor",
            "SELECT count(1), avg(value) FROM sensor WHERE metric = 'pm2_5'",
            "SELECT metric, min(value) FROM sensor WHERE metric IN ('noise_db', 'pm2_5') GROUP BY 1 ORDER BY 1",
            // No row matches: counts are 0, the rest NULL, as from raw rows.
            "SELECT count(*), sum(value), avg(value) FROM sensor WHERE metric = 'nothing'",
        ] {
            let (got, plan) = answer(&with, sql).await;
            let (want, raw_plan) = answer(&without, sql).await;
            assert!(plan.contains(HOURLY), "{sql}: not rewritten:\n{plan}");
            assert!(!raw_plan.contains(HOURLY));
            assert_eq!(
                cells(&got),
                cells(&want),
                "{sql}\n{}\n{}",
                pretty_format_batches(&got).unwrap(),
                pretty_format_batches(&want).unwrap()
            );
            assert!(!cells(&got).is_empty());
        }
    }

    #[tokio::test]
    async fn other_aggregates_and_filters_read_raw_rows() {
        let ctx = context(true).await;
        for sql in [
            "SELECT metric, count(*) FROM sensor WHERE value > 3 GROUP BY 1",
            "SELECT device_key, count(*) FROM sensor GROUP BY 1",
            "SELECT count(DISTINCT metric) FROM sensor",
            "SELECT metric, median(value) FROM sensor GROUP BY 1",
            "SELECT count(*) FROM sensor WHERE event_time > '1970-01-02T00:00:00Z'",
            "SELECT metric, count(*) FILTER (WHERE value > 0) FROM sensor GROUP BY 1",
            "SELECT count(*) FROM sensor WHERE random() < 0.5",
        ] {
            let (_, plan) = answer(&ctx, sql).await;
            assert!(!plan.contains(HOURLY), "{sql}: rewritten:\n{plan}");
        }
    }

    #[test]
    fn adjacent_ranges_merge() {
        assert_eq!(
            merge_ranges(vec![(10, 20), (0, 10), (30, 40), (35, 50)]),
            vec![(0, 20), (30, 50)]
        );
        assert!(merge_ranges(vec![]).is_empty());
    }
}
